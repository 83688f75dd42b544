//! Pictures of training: [`History::plot`] (loss and metric curves) and
//! [`plot_confusion_matrix`] (a heat map), as PNG files.
//!
//! Drawn with plotters' bitmap backend into memory, encoded with `png` and written atomically.
//! Text is drawn with a small built-in 5×7 pixel font (upper-case letters, digits and common
//! punctuation), so nothing depends on the system's fonts: the plots come out the same on a
//! headless CI machine.

pub(crate) mod lr_curve;

use std::path::Path;

use num_traits::ToPrimitive;
use plotters::backend::BitMapBackend;
use plotters::coord::Shift;
use plotters::drawing::{DrawingArea, IntoDrawingArea};
use plotters::element::{Circle, PathElement, Rectangle};
use plotters::style::{Color, RGBColor, ShapeStyle, BLACK, WHITE};

use crate::checkpoint::write_atomic_with;
use crate::error::TrainError;
use crate::history::History;

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
const VAL_COLOR: RGBColor = RGBColor(255, 127, 14);
const GRID_COLOR: RGBColor = RGBColor(225, 225, 225);
const TEXT_COLOR: RGBColor = RGBColor(40, 40, 40);

/// Width of a history plot (pixels).
const PLOT_WIDTH: u32 = 760;
/// Height of each panel of a history plot (pixels).
const PANEL_HEIGHT: u32 = 280;
/// Text scale: each font pixel is a `SCALE`×`SCALE` square.
const SCALE: i32 = 2;

impl History {
    /// Draws the training curves as a PNG at `path`: one panel per figure — `loss` first, then
    /// each metric in name order, and the learning rate when it changed — with the training
    /// curve in blue and the validation curve (`val_<name>`) in orange, epochs (1-based) along
    /// the x axis. Non-finite values are left out of the curves.
    ///
    /// # Errors
    /// [`TrainError::Plot`] if drawing fails, [`TrainError::Io`] if the file cannot be written.
    ///
    /// **Panics** if the history is empty.
    ///
    /// ```
    /// use kiln_train::History;
    /// let mut h = History::default();
    /// for (l, v) in [(1.0, 1.1), (0.5, 0.7), (0.3, 0.6)] {
    ///     h.epochs.push([("loss".to_string(), l), ("val_loss".to_string(), v)].into_iter().collect());
    /// }
    /// let path = std::env::temp_dir().join(format!("kiln-history-{}.png", std::process::id()));
    /// h.plot(&path).unwrap();
    /// assert_eq!(&std::fs::read(&path).unwrap()[1..4], b"PNG");
    /// # std::fs::remove_file(&path).unwrap();
    /// ```
    pub fn plot(&self, path: impl AsRef<Path>) -> Result<(), TrainError> {
        assert!(!self.is_empty(), "History::plot: the history has no epoch");
        let path = path.as_ref();
        let panels = self.panels();
        let (w, h) = (PLOT_WIDTH, PANEL_HEIGHT * panels.len() as u32);
        let mut buf = vec![255u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            for (i, name) in panels.iter().enumerate() {
                let top = i as i32 * PANEL_HEIGHT as i32;
                self.draw_panel(&root, name, top).map_err(|e| plot_error(path, e))?;
            }
            root.present().map_err(|e| plot_error(path, e))?;
        }
        write_png(path, &buf, w, h)
    }

    /// The figures to draw, one per panel.
    fn panels(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .keys()
            .into_iter()
            .filter(|k| k != "time_s" && k != "lr")
            .map(|k| k.strip_prefix("val_").map_or(k.clone(), str::to_string))
            .collect();
        names.sort_by_key(|k| (k != "loss", k.clone()));
        names.dedup();
        let lr = self.get("lr");
        if lr.iter().filter(|v| v.is_finite()).any(|&v| v != lr[0]) {
            names.push("lr".to_string());
        }
        names
    }

    fn draw_panel(&self, root: &Area<'_>, name: &str, top: i32) -> Result<(), String> {
        let train = self.get(name);
        let val = if name == "lr" { vec![f64::NAN; train.len()] } else { self.get(&format!("val_{name}")) };
        let n = train.len();
        let (left, right) = (96, PLOT_WIDTH as i32 - 24);
        let (ptop, pbottom) = (top + 44, top + PANEL_HEIGHT as i32 - 40);

        let finite: Vec<f64> = train.iter().chain(&val).copied().filter(|v| v.is_finite()).collect();
        let (mut lo, mut hi) =
            finite.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        if finite.is_empty() {
            (lo, hi) = (0.0, 1.0);
        } else if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
            let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
            (lo, hi) = (lo - pad, hi + pad);
        }
        let yticks = nice_ticks(lo, hi, 5);
        lo = lo.min(yticks[0]);
        hi = hi.max(*yticks.last().expect("ticks"));
        let (x0, x1) = if n == 1 { (0.5, 1.5) } else { (1.0, n as f64) };
        let px = |e: f64| left + ((e - x0) / (x1 - x0) * (right - left) as f64).round() as i32;
        let py = |v: f64| pbottom - ((v - lo) / (hi - lo) * (pbottom - ptop) as f64).round() as i32;
        let e = |r: Result<(), _>| r.map_err(|e: plotters::drawing::DrawingAreaErrorKind<_>| e.to_string());

        // grid, ticks and frame
        let text_h = 7 * SCALE;
        for &t in &yticks {
            let y = py(t);
            e(root.draw(&PathElement::new(vec![(left, y), (right, y)], GRID_COLOR)))?;
            let s = format_tick(t, &yticks);
            draw_text(root, &s, left - 8 - text_width(&s), y - text_h / 2, &TEXT_COLOR)?;
        }
        let xstep = nice_step((n as f64 - 1.0).max(1.0) / 8.0).max(1.0) as usize;
        let mut xt: Vec<usize> = (1..=n).step_by(xstep).collect();
        if let Some(&last) = xt.last() {
            // label the last epoch too, unless its label would touch the previous one
            if last != n && px(n as f64) - px(last as f64) >= text_width(&n.to_string()) + 2 * 6 * SCALE {
                xt.push(n);
            }
        }
        for &ep in &xt {
            let x = px(ep as f64);
            e(root.draw(&PathElement::new(vec![(x, ptop), (x, pbottom)], GRID_COLOR)))?;
            let s = ep.to_string();
            draw_text(root, &s, x - text_width(&s) / 2, pbottom + 8, &TEXT_COLOR)?;
        }
        e(root.draw(&Rectangle::new([(left, ptop), (right, pbottom)], ShapeStyle::from(&BLACK).stroke_width(1))))?;
        draw_text(root, "EPOCH", right - text_width("EPOCH"), pbottom + 10 + text_h, &TEXT_COLOR)?;

        // curves
        for (series, color) in [(&train, TRAIN_COLOR), (&val, VAL_COLOR)] {
            let mut run: Vec<(i32, i32)> = Vec::new();
            for (i, &v) in series.iter().enumerate() {
                if v.is_finite() {
                    let p = (px(i as f64 + 1.0), py(v));
                    run.push(p);
                    e(root.draw(&Circle::new(p, 3, color.filled())))?;
                } else {
                    if run.len() > 1 {
                        e(root.draw(&PathElement::new(std::mem::take(&mut run), color.stroke_width(2))))?;
                    }
                    run.clear();
                }
            }
            if run.len() > 1 {
                e(root.draw(&PathElement::new(run, color.stroke_width(2))))?;
            }
        }

        // title and legend
        draw_text(root, name, left, top + 12, &BLACK)?;
        let mut x = right;
        let legend = [("VAL", VAL_COLOR, val.iter().any(|v| v.is_finite())), ("TRAIN", TRAIN_COLOR, name != "lr")];
        for (label, color, present) in legend {
            if !present {
                continue;
            }
            x -= text_width(label);
            draw_text(root, label, x, top + 12, &TEXT_COLOR)?;
            x -= 30;
            let y = top + 12 + text_h / 2;
            e(root.draw(&PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(3))))?;
            x -= 20;
        }
        Ok(())
    }
}

/// Draws a confusion matrix as a heat map PNG at `path`: row `i`, column `j` is the number (or
/// fraction) of samples of true class `i` predicted as class `j`, as
/// [`ConfusionMatrix`](kiln_metrics::ConfusionMatrix) computes it; darker is more. Rows are
/// labelled with `class_names`; columns too when every name fits its cell, else with the class
/// numbers (which then also prefix the row labels). Each cell shows its
/// value when it fits (whole numbers as such, others with two decimals). A colour bar on the
/// right runs from 0 to the largest value.
///
/// # Errors
/// [`TrainError::Plot`] if drawing fails, [`TrainError::Io`] if the file cannot be written.
///
/// **Panics** if the matrix is empty or not square, if `class_names` does not have one name
/// per class, or a value is not representable as `f64`.
///
/// ```
/// let cm: Vec<Vec<u64>> = vec![vec![5, 1], vec![2, 7]];
/// let path = std::env::temp_dir().join(format!("kiln-cm-{}.png", std::process::id()));
/// kiln_train::plot_confusion_matrix(&cm, &["cat", "dog"], &path).unwrap();
/// assert_eq!(&std::fs::read(&path).unwrap()[1..4], b"PNG");
/// # std::fs::remove_file(&path).unwrap();
/// ```
pub fn plot_confusion_matrix<T: ToPrimitive, S: AsRef<str>>(
    matrix: &[Vec<T>],
    class_names: &[S],
    path: impl AsRef<Path>,
) -> Result<(), TrainError> {
    let path = path.as_ref();
    let k = matrix.len();
    assert!(k > 0, "plot_confusion_matrix: the matrix is empty");
    for (i, row) in matrix.iter().enumerate() {
        assert_eq!(row.len(), k, "plot_confusion_matrix: row {i} has {} values, the matrix has {k} rows", row.len());
    }
    assert_eq!(class_names.len(), k, "plot_confusion_matrix: {} class names for a {k}x{k} matrix", class_names.len());
    let values: Vec<Vec<f64>> = matrix
        .iter()
        .map(|r| {
            r.iter().map(|v| v.to_f64().expect("plot_confusion_matrix: a value is not representable as f64")).collect()
        })
        .collect();
    let max = values.iter().flatten().copied().filter(|v| v.is_finite()).fold(0.0f64, f64::max);
    let integral = values.iter().flatten().all(|v| v.fract() == 0.0);
    let cell: i32 = (560 / k as i32).clamp(14, 72);
    // Columns are labelled with the names when every name fits its cell, else with the class
    // numbers, which then also prefix the row labels.
    let fits = class_names.iter().all(|s| text_width(s.as_ref()) <= cell - 4);
    let columns: Vec<String> = if fits {
        class_names.iter().map(|s| s.as_ref().to_string()).collect()
    } else {
        (0..k).map(|i| i.to_string()).collect()
    };
    let rows: Vec<String> = class_names
        .iter()
        .enumerate()
        .map(|(i, s)| truncate(&if fits { s.as_ref().to_string() } else { format!("{i}: {}", s.as_ref()) }, 20))
        .collect();
    let label_w = rows.iter().map(|s| text_width(s)).max().unwrap_or(0);
    let (left, top) = (label_w + 24, 64 + 7 * SCALE);
    let grid = cell * k as i32;
    let bar_x = left + grid + 24;
    let max_label = format_value(max, integral);
    let w = (bar_x + 20 + 8 + text_width(&max_label) + 16)
        .max(left + grid + 16)
        .max(text_width("TRUE (ROWS) / PREDICTED (COLUMNS)") + 32);
    let h = top + grid + 24;
    let (w, h) = (w as u32, h as u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let e = |r: Result<(), plotters::drawing::DrawingAreaErrorKind<_>>| r.map_err(|e| plot_error(path, e));
        let t = |r: Result<(), String>| r.map_err(|reason| TrainError::Plot { path: path.to_path_buf(), reason });
        t(draw_text(&root, "TRUE (ROWS) / PREDICTED (COLUMNS)", 16, 12, &BLACK))?;
        for i in 0..k {
            let y = top + i as i32 * cell;
            let label = &rows[i];
            t(draw_text(&root, label, left - 10 - text_width(label), y + (cell - 7 * SCALE) / 2, &TEXT_COLOR))?;
            let col = &columns[i];
            let x = left + i as i32 * cell;
            t(draw_text(&root, col, x + (cell - text_width(col)) / 2, top - 8 - 7 * SCALE, &TEXT_COLOR))?;
            for j in 0..k {
                let v = values[i][j];
                let frac = if max > 0.0 && v.is_finite() { (v / max).clamp(0.0, 1.0) } else { 0.0 };
                let x = left + j as i32 * cell;
                e(root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], heat(frac).filled())))?;
                let s = format_value(v, integral);
                let fg = if frac > 0.5 { WHITE } else { BLACK };
                if text_width(&s) <= cell - 4 && cell >= 7 * SCALE + 4 {
                    t(draw_text(&root, &s, x + (cell - text_width(&s)) / 2, y + (cell - 7 * SCALE) / 2, &fg))?;
                }
            }
        }
        let thin = ShapeStyle::from(&RGBColor(160, 160, 160)).stroke_width(1);
        e(root.draw(&Rectangle::new([(left, top), (left + grid, top + grid)], thin)))?;
        // colour bar: 0 at the bottom, the largest value at the top
        for py in 0..grid {
            let frac = 1.0 - py as f64 / (grid - 1).max(1) as f64;
            e(root.draw(&PathElement::new(vec![(bar_x, top + py), (bar_x + 20, top + py)], heat(frac))))?;
        }
        e(root.draw(&Rectangle::new([(bar_x, top), (bar_x + 20, top + grid)], thin)))?;
        t(draw_text(&root, &max_label, bar_x + 28, top, &TEXT_COLOR))?;
        t(draw_text(&root, "0", bar_x + 28, top + grid - 7 * SCALE, &TEXT_COLOR))?;
        root.present().map_err(|e| plot_error(path, e))?;
    }
    write_png(path, &buf, w, h)
}

/// White to dark blue (matplotlib's "Blues" end points).
fn heat(frac: f64) -> RGBColor {
    let lerp = |a: f64, b: f64| (a + (b - a) * frac).round() as u8;
    RGBColor(lerp(247.0, 8.0), lerp(251.0, 48.0), lerp(255.0, 107.0))
}

fn format_value(v: f64, integral: bool) -> String {
    if integral && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.2}")
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

fn plot_error(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Plot { path: path.to_path_buf(), reason: e.to_string() }
}

/// Encodes an RGB buffer as PNG and writes it atomically.
fn write_png(path: &Path, rgb: &[u8], w: u32, h: u32) -> Result<(), TrainError> {
    write_atomic_with(path, |out| {
        let mut enc = png::Encoder::new(out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(std::io::Error::other)?;
        writer.write_image_data(rgb).map_err(std::io::Error::other)?;
        writer.finish().map_err(std::io::Error::other)
    })
}

/// About `count` round tick values (1, 2 or 5 times a power of ten) covering `[lo, hi]`.
fn nice_ticks(lo: f64, hi: f64, count: usize) -> Vec<f64> {
    let step = nice_step((hi - lo) / count.max(1) as f64);
    let first = (lo / step).floor();
    let last = (hi / step).ceil();
    let n = ((last - first) as usize).min(50);
    (0..=n).map(|i| (first + i as f64) * step).collect()
}

fn nice_step(raw: f64) -> f64 {
    if raw.is_nan() || raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// A tick label with as many decimals as the tick spacing needs.
fn format_tick(v: f64, ticks: &[f64]) -> String {
    let step = if ticks.len() > 1 { (ticks[1] - ticks[0]).abs() } else { 1.0 };
    let big = ticks.iter().fold(0.0f64, |m, t| m.max(t.abs()));
    if big >= 1e5 || (step < 1e-4 && step > 0.0) {
        let s = format!("{v:.1e}");
        return if v == 0.0 { "0".into() } else { s };
    }
    let decimals = (-step.log10().floor()).clamp(0.0, 6.0) as usize;
    let s = format!("{v:.decimals$}");
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string()
    } else {
        s
    }
}

// --- a 5x7 pixel font -------------------------------------------------------------------

/// Width in pixels of `s` drawn by [`draw_text`].
fn text_width(s: &str) -> i32 {
    let n = s.chars().count() as i32;
    if n == 0 {
        0
    } else {
        n * 6 * SCALE - SCALE
    }
}

/// Draws `s` with its top-left corner at `(x, y)` (lower-case drawn as upper-case; characters
/// the font lacks as `?`).
fn draw_text(area: &Area<'_>, s: &str, x: i32, y: i32, color: &RGBColor) -> Result<(), String> {
    let (w, h) = area.dim_in_pixel();
    for (i, c) in s.chars().enumerate() {
        let rows = glyph(c);
        let gx = x + i as i32 * 6 * SCALE;
        for (r, row) in rows.iter().enumerate() {
            for (col, b) in row.bytes().enumerate() {
                if b != b'#' {
                    continue;
                }
                for dy in 0..SCALE {
                    for dx in 0..SCALE {
                        let (px, py) = (gx + col as i32 * SCALE + dx, y + r as i32 * SCALE + dy);
                        if px >= 0 && py >= 0 && (px as u32) < w && (py as u32) < h {
                            area.draw_pixel((px, py), color).map_err(|e| e.to_string())?;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// The rows of a glyph, `#` for ink.
fn glyph(c: char) -> [&'static str; 7] {
    match c.to_ascii_uppercase() {
        '0' => [".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."],
        '1' => ["..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."],
        '2' => [".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"],
        '3' => ["#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."],
        '4' => ["...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."],
        '5' => ["#####", "#....", "####.", "....#", "....#", "#...#", ".###."],
        '6' => ["..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."],
        '7' => ["#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."],
        '8' => [".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."],
        '9' => [".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."],
        'A' => [".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"],
        'B' => ["####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."],
        'C' => [".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."],
        'D' => ["###..", "#..#.", "#...#", "#...#", "#...#", "#..#.", "###.."],
        'E' => ["#####", "#....", "#....", "####.", "#....", "#....", "#####"],
        'F' => ["#####", "#....", "#....", "####.", "#....", "#....", "#...."],
        'G' => [".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"],
        'H' => ["#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"],
        'I' => [".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."],
        'J' => ["..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."],
        'K' => ["#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"],
        'L' => ["#....", "#....", "#....", "#....", "#....", "#....", "#####"],
        'M' => ["#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"],
        'N' => ["#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"],
        'O' => [".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."],
        'P' => ["####.", "#...#", "#...#", "####.", "#....", "#....", "#...."],
        'Q' => [".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"],
        'R' => ["####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"],
        'S' => [".####", "#....", "#....", ".###.", "....#", "....#", "####."],
        'T' => ["#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."],
        'U' => ["#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."],
        'V' => ["#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."],
        'W' => ["#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."],
        'X' => ["#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"],
        'Y' => ["#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."],
        'Z' => ["#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"],
        ' ' => [".....", ".....", ".....", ".....", ".....", ".....", "....."],
        '.' => [".....", ".....", ".....", ".....", ".....", ".##..", ".##.."],
        ',' => [".....", ".....", ".....", ".....", ".##..", "..#..", ".#..."],
        '-' => [".....", ".....", ".....", "#####", ".....", ".....", "....."],
        '+' => [".....", "..#..", "..#..", "#####", "..#..", "..#..", "....."],
        '_' => [".....", ".....", ".....", ".....", ".....", ".....", "#####"],
        ':' => [".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."],
        '/' => [".....", "....#", "...#.", "..#..", ".#...", "#....", "....."],
        '\\' => [".....", "#....", ".#...", "..#..", "...#.", "....#", "....."],
        '(' => ["...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#."],
        ')' => [".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#..."],
        '[' => [".###.", ".#...", ".#...", ".#...", ".#...", ".#...", ".###."],
        ']' => [".###.", "...#.", "...#.", "...#.", "...#.", "...#.", ".###."],
        '%' => ["##...", "##..#", "...#.", "..#..", ".#...", "#..##", "...##"],
        '=' => [".....", ".....", "#####", ".....", "#####", ".....", "....."],
        '<' => ["...#.", "..#..", ".#...", "#....", ".#...", "..#..", "...#."],
        '>' => [".#...", "..#..", "...#.", "....#", "...#.", "..#..", ".#..."],
        '!' => ["..#..", "..#..", "..#..", "..#..", "..#..", ".....", "..#.."],
        '\'' => ["..#..", "..#..", ".#...", ".....", ".....", ".....", "....."],
        '#' => [".#.#.", ".#.#.", "#####", ".#.#.", "#####", ".#.#.", ".#.#."],
        '*' => [".....", "..#..", "#.#.#", ".###.", "#.#.#", "..#..", "....."],
        '±' => ["..#..", "..#..", "#####", "..#..", "..#..", ".....", "#####"],
        _ => [".###.", "#...#", "....#", "...#.", "..#..", ".....", "..#.."],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let t = nice_ticks(0.13, 0.87, 5);
        assert!(t[0] <= 0.13 && *t.last().unwrap() >= 0.87);
        assert!((t[1] - t[0] - 0.2).abs() < 1e-12);
        assert_eq!(format_tick(0.4, &t), "0.4");
        assert_eq!(format_tick(-0.0, &[-0.0, 1.0]), "0");
        assert_eq!(nice_step(0.03), 0.05);
    }

    #[test]
    fn every_glyph_is_five_wide() {
        let chars = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ .,-+_:/\\()[]%=<>!'#*±?";
        for c in chars.chars() {
            assert!(glyph(c).iter().all(|r| r.len() == 5), "{c}");
        }
    }
}
