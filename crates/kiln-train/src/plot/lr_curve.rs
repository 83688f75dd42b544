//! The learning-rate finder's picture: loss against learning rate on a logarithmic axis.

use std::path::Path;

use plotters::backend::BitMapBackend;
use plotters::drawing::IntoDrawingArea;
use plotters::element::{Circle, PathElement, Rectangle};
use plotters::style::{Color, RGBColor, ShapeStyle, BLACK};

use super::{
    draw_text, format_tick, nice_ticks, plot_error, text_width, write_png, GRID_COLOR, PANEL_HEIGHT, PLOT_WIDTH, SCALE,
    TEXT_COLOR, TRAIN_COLOR,
};
use crate::error::TrainError;

const SUGGESTION_COLOR: RGBColor = RGBColor(214, 39, 40);

/// Draws `losses` against `lrs` (log scale) as a PNG at `path`, with a red dot and a label at
/// index `suggestion` when there is one. Non-finite losses are left out.
pub(crate) fn plot_lr_curve(
    path: &Path,
    lrs: &[f64],
    losses: &[f64],
    suggestion: Option<usize>,
) -> Result<(), TrainError> {
    assert!(
        !lrs.is_empty() && lrs.len() == losses.len(),
        "plot_lr_curve: {} rates, {} losses",
        lrs.len(),
        losses.len()
    );
    let (w, h) = (PLOT_WIDTH, PANEL_HEIGHT + 60);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let e = |r: Result<(), _>| r.map_err(|e: plotters::drawing::DrawingAreaErrorKind<_>| plot_error(path, e));
        let (left, right) = (96, PLOT_WIDTH as i32 - 24);
        let (ptop, pbottom) = (44, h as i32 - 48);

        let points: Vec<(f64, f64)> = lrs
            .iter()
            .zip(losses)
            .filter(|(lr, l)| l.is_finite() && lr.is_finite() && **lr > 0.0)
            .map(|(lr, l)| (lr.log10(), *l))
            .collect();
        let (mut x0, mut x1) =
            points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (mut lo, mut hi) =
            points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
        if points.is_empty() {
            (x0, x1, lo, hi) = (-1.0, 0.0, 0.0, 1.0);
        }
        if x1 - x0 < 1e-9 {
            (x0, x1) = (x0 - 0.5, x1 + 0.5);
        }
        if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
            let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
            (lo, hi) = (lo - pad, hi + pad);
        }
        let yticks = nice_ticks(lo, hi, 5);
        lo = lo.min(yticks[0]);
        hi = hi.max(*yticks.last().expect("ticks"));
        let px = |x: f64| left + ((x - x0) / (x1 - x0) * (right - left) as f64).round() as i32;
        let py = |v: f64| pbottom - ((v - lo) / (hi - lo) * (pbottom - ptop) as f64).round() as i32;
        let text_h = 7 * SCALE;

        for &t in &yticks {
            let y = py(t);
            e(root.draw(&PathElement::new(vec![(left, y), (right, y)], GRID_COLOR)))?;
            let s = format_tick(t, &yticks);
            draw_text(&root, &s, left - 8 - text_width(&s), y - text_h / 2, &TEXT_COLOR)
                .map_err(|m| plot_error(path, m))?;
        }
        // a tick at every power of ten in range
        let decades = (x0.ceil() as i32)..=(x1.floor() as i32);
        let every = (decades.clone().count() / 8).max(1);
        for d in decades.step_by(every) {
            let x = px(d as f64);
            e(root.draw(&PathElement::new(vec![(x, ptop), (x, pbottom)], GRID_COLOR)))?;
            let s = format!("1E{d}");
            draw_text(&root, &s, x - text_width(&s) / 2, pbottom + 8, &TEXT_COLOR).map_err(|m| plot_error(path, m))?;
        }
        e(root.draw(&Rectangle::new([(left, ptop), (right, pbottom)], ShapeStyle::from(&BLACK).stroke_width(1))))?;
        let label = "LEARNING RATE (LOG SCALE)";
        draw_text(&root, label, right - text_width(label), pbottom + 12 + text_h, &TEXT_COLOR)
            .map_err(|m| plot_error(path, m))?;

        let run: Vec<(i32, i32)> = points.iter().map(|&(x, l)| (px(x), py(l))).collect();
        if run.len() > 1 {
            e(root.draw(&PathElement::new(run, TRAIN_COLOR.stroke_width(2))))?;
        }
        let mut title = "LOSS (SMOOTHED)".to_string();
        if let Some(i) = suggestion.filter(|&i| i < lrs.len() && losses[i].is_finite()) {
            let p = (px(lrs[i].log10()), py(losses[i]));
            e(root.draw(&Circle::new(p, 5, SUGGESTION_COLOR.filled())))?;
            title.push_str(&format!("  SUGGESTED LR {:.2E}", lrs[i]));
        }
        draw_text(&root, &title, left, 14, &BLACK).map_err(|m| plot_error(path, m))?;
        root.present().map_err(|m| plot_error(path, m))?;
    }
    write_png(path, &buf, w, h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png_with_and_without_a_suggestion() {
        let dir = std::env::temp_dir();
        let lrs: Vec<f64> = (0..30).map(|i| 1e-5 * 10f64.powf(i as f64 / 6.0)).collect();
        let losses: Vec<f64> =
            (0..30).map(|i| 2.0 - (i as f64 / 10.0).sin() + if i == 29 { f64::NAN } else { 0.0 }).collect();
        for (k, s) in [Some(12), None].into_iter().enumerate() {
            let path = dir.join(format!("kiln-lr-curve-{}-{k}.png", std::process::id()));
            plot_lr_curve(&path, &lrs, &losses, s).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(&bytes[1..4], b"PNG");
            std::fs::remove_file(&path).unwrap();
        }
    }
}
