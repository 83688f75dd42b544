//! Heat maps: attributions in a red/blue diverging colormap over the grayscale input, as PNG.

use std::path::Path;

use kiln_tensor::{Float, Tensor};

use crate::error::ExplainError;

/// Options of [`render_heatmap`] and [`save_heatmap_png_with`].
#[derive(Clone, Debug, PartialEq)]
pub struct HeatmapOptions {
    /// Each pixel becomes a `scale × scale` block; `None` picks the smallest factor that makes
    /// the longer side at least 256 pixels (1 for large images). Default `None`.
    pub scale: Option<usize>,
    /// Attributions are divided by this percentile of their absolute values and clipped to
    /// [−1, 1], so that a few extreme pixels do not wash out the rest (default 99, as Captum's
    /// `outlier_perc = 1`); 100 divides by the maximum.
    pub clip_percentile: f64,
    /// Opacity of the colour at a full-strength attribution (default 0.85); weaker attributions
    /// are proportionally more transparent, so the input shows through.
    pub opacity: f64,
}

impl Default for HeatmapOptions {
    fn default() -> Self {
        HeatmapOptions { scale: None, clip_percentile: 99.0, opacity: 0.85 }
    }
}

/// A rendered heat map: 8-bit RGB, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heatmap {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height * 3` bytes, `rgb[(y * width + x) * 3 + channel]`.
    pub rgb: Vec<u8>,
}

impl Heatmap {
    /// The colour of pixel `(x, y)`.
    ///
    /// **Panics** if the pixel is outside the image.
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        assert!(x < self.width && y < self.height, "Heatmap::pixel: ({x}, {y}) outside {}x{}", self.width, self.height);
        let i = (y * self.width + x) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }

    /// The maps side by side, left to right, `gap` white pixels apart (a panel comparing
    /// methods); shorter maps are padded with white at the bottom.
    ///
    /// **Panics** if `maps` is empty.
    ///
    /// ```
    /// use kiln_explain::Heatmap;
    /// let red = Heatmap { width: 1, height: 2, rgb: vec![255, 0, 0, 255, 0, 0] };
    /// let panel = Heatmap::hstack(&[red.clone(), red], 1);
    /// assert_eq!((panel.width, panel.height), (3, 2));
    /// assert_eq!(panel.pixel(1, 0), [255, 255, 255]); // the gap
    /// assert_eq!(panel.pixel(2, 1), [255, 0, 0]);
    /// ```
    #[must_use]
    pub fn hstack(maps: &[Heatmap], gap: usize) -> Heatmap {
        assert!(!maps.is_empty(), "Heatmap::hstack: no maps");
        let height = maps.iter().map(|m| m.height).max().unwrap_or(0);
        let width = maps.iter().map(|m| m.width).sum::<usize>() + gap * (maps.len() - 1);
        let mut rgb = vec![255u8; width * height * 3];
        let mut left = 0;
        for m in maps {
            for y in 0..m.height {
                let src = &m.rgb[y * m.width * 3..(y + 1) * m.width * 3];
                let at = (y * width + left) * 3;
                rgb[at..at + src.len()].copy_from_slice(src);
            }
            left += m.width + gap;
        }
        Heatmap { width, height, rgb }
    }

    /// Writes the heat map as a PNG file, atomically (a temporary file in the same folder,
    /// synced, then renamed over `path`). The folder must exist.
    ///
    /// # Errors
    /// [`ExplainError::Encode`] if the encoder fails, [`ExplainError::Io`] naming the file and
    /// the step when writing fails.
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<(), ExplainError> {
        let path = path.as_ref();
        let img = image::RgbImage::from_raw(self.width as u32, self.height as u32, self.rgb.clone())
            .expect("Heatmap: rgb holds width * height * 3 bytes");
        let mut bytes = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
            .map_err(|e| ExplainError::Encode { path: path.to_path_buf(), message: e.to_string() })?;
        write_atomic(path, &bytes)
    }
}

/// Writes `bytes` to `path` through kiln's one atomic writer ([`kiln_tensor::fs::write_atomic`]).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ExplainError> {
    kiln_tensor::fs::write_atomic(path, |w| w.write_all(bytes)).map_err(|e| ExplainError::Io {
        path: e.path,
        action: "writing the file atomically",
        source: std::io::Error::new(e.source.kind(), format!("{}: {}", e.action, e.source)),
    })
}

/// The `[H, W]` plane of a tensor of shape `[H, W]`, `[1, H, W]` or `[1, 1, H, W]`, as f64.
fn plane<E: Float>(t: &Tensor<E>, what: &str) -> (usize, usize, Vec<f64>) {
    let shape = t.shape();
    let nd = shape.len();
    assert!(
        nd >= 2 && shape[..nd - 2].iter().all(|&d| d == 1),
        "heat map: the {what} must be [H, W] (or [1, H, W]), got {shape:?}"
    );
    (shape[nd - 2], shape[nd - 1], t.to_vec().into_iter().map(|v| v.to_f64()).collect())
}

/// The `p`-th percentile (0..=100, nearest rank) of `values`.
fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values[rank.min(values.len() - 1)]
}

/// Renders `attribution` over `input` (both `[H, W]`, or `[1, H, W]`): the input in grayscale
/// (min–max scaled), blended with red where the attribution is positive and blue where it is
/// negative, more opaque the stronger it is: a red/blue diverging colormap whose middle is the
/// input itself rather than white.
///
/// Sum a `[C, H, W]` attribution over its channels first (`attr.sum(&[0], false)`).
///
/// **Panics** if the shapes are not `[H, W]` / `[1, H, W]` or differ.
///
/// ```
/// use kiln_explain::{render_heatmap, HeatmapOptions};
/// use kiln_tensor::Tensor;
/// let input: Tensor = Tensor::zeros(&[2, 2]);
/// let attr = Tensor::from_vec(vec![1.0, -1.0, 0.0, 0.0], &[2, 2]);
/// let opts = HeatmapOptions { scale: Some(1), clip_percentile: 100.0, opacity: 1.0 };
/// let map = render_heatmap(&input, &attr, &opts);
/// assert_eq!(map.pixel(0, 0), [255, 0, 0]); // positive: red
/// assert_eq!(map.pixel(1, 0), [0, 0, 255]); // negative: blue
/// assert_eq!(map.pixel(0, 1), [0, 0, 0]); // none: the input
/// ```
#[must_use]
pub fn render_heatmap<E: Float>(input: &Tensor<E>, attribution: &Tensor<E>, options: &HeatmapOptions) -> Heatmap {
    let (h, w, img) = plane(input, "input");
    let (ah, aw, attr) = plane(attribution, "attribution");
    assert!(
        (h, w) == (ah, aw),
        "heat map: input {:?} and attribution {:?} differ in size",
        input.shape(),
        attribution.shape()
    );
    let (lo, hi) = img.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
    let gray: Vec<f64> = img.iter().map(|&v| if hi > lo { (v - lo) / (hi - lo) } else { 0.0 }).collect();
    let clip = percentile(attr.iter().map(|a| a.abs()).filter(|a| a.is_finite()).collect(), options.clip_percentile);
    let scale = options.scale.unwrap_or_else(|| 256usize.div_ceil(h.max(w).max(1)).max(1)).max(1);
    let (width, height) = (w * scale, h * scale);
    let mut rgb = vec![0u8; width * height * 3];
    for y in 0..h {
        for x in 0..w {
            let g = gray[y * w + x];
            let v = if clip > 0.0 { (attr[y * w + x] / clip).clamp(-1.0, 1.0) } else { 0.0 };
            let v = if v.is_nan() { 0.0 } else { v };
            let m = v.abs();
            // Transparent at 0, red at +1, blue at -1: weak attributions leave the input visible
            // (a white-centred colormap would whiten the digit's strokes instead).
            let color = if v >= 0.0 { [1.0, 0.0, 0.0] } else { [0.0, 0.0, 1.0] };
            let alpha = options.opacity.clamp(0.0, 1.0) * m;
            let px: [u8; 3] = std::array::from_fn(|c| {
                ((g * (1.0 - alpha) + color[c] * alpha) * 255.0).round().clamp(0.0, 255.0) as u8
            });
            for dy in 0..scale {
                for dx in 0..scale {
                    let i = ((y * scale + dy) * width + x * scale + dx) * 3;
                    rgb[i..i + 3].copy_from_slice(&px);
                }
            }
        }
    }
    Heatmap { width, height, rgb }
}

/// Writes the heat map of `attribution` over the grayscale `input` (both `[H, W]`, or
/// `[1, H, W]`) to a PNG file with the default [`HeatmapOptions`] (small images are scaled up
/// to at least 256 pixels).
///
/// # Errors
/// As [`Heatmap::save_png`].
///
/// **Panics** as [`render_heatmap`].
///
/// ```
/// use kiln_tensor::Tensor;
/// let input: Tensor = Tensor::rand(&[28, 28], &mut kiln_tensor::Rng::new(0));
/// let attr = input.sub_scalar(0.5);
/// let path = std::env::temp_dir().join(format!("kiln_explain_doc_{}.png", std::process::id()));
/// kiln_explain::save_heatmap_png(&input, &attr, &path)?;
/// assert!(std::fs::metadata(&path)?.len() > 0);
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn save_heatmap_png<E: Float>(
    input: &Tensor<E>,
    attribution: &Tensor<E>,
    path: impl AsRef<Path>,
) -> Result<(), ExplainError> {
    save_heatmap_png_with(input, attribution, path, &HeatmapOptions::default())
}

/// [`save_heatmap_png`] with options.
///
/// # Errors
/// As [`Heatmap::save_png`].
///
/// **Panics** as [`render_heatmap`].
pub fn save_heatmap_png_with<E: Float>(
    input: &Tensor<E>,
    attribution: &Tensor<E>,
    path: impl AsRef<Path>,
    options: &HeatmapOptions,
) -> Result<(), ExplainError> {
    render_heatmap(input, attribution, options).save_png(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_png_is_written_and_decodes_to_the_rendered_colours() {
        let input = Tensor::from_vec((0..12).map(|i| i as f32).collect(), &[1, 3, 4]);
        let attr = Tensor::from_vec(vec![0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, -2.0, 0.0, 0.0, 1.0], &[3, 4]);
        let dir = std::env::temp_dir().join(format!("kiln_explain_test_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("map.png");
        let opts = HeatmapOptions { scale: Some(3), clip_percentile: 100.0, opacity: 1.0 };
        save_heatmap_png_with(&input, &attr, &path, &opts).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (12, 9));
        assert_eq!(img.get_pixel(3 * 3 + 1, 1).0, [255, 0, 0]); // (3, 0): +2, full red
        assert_eq!(img.get_pixel(0, 2 * 3).0, [0, 0, 255]); // (0, 2): -2, full blue
        assert_eq!(img.get_pixel(3 * 3, 2 * 3).0, [255, 128, 128]); // (3, 2): +1, half-opaque red over white
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 0]); // the darkest input pixel, no attribution
        let gray = img.get_pixel(3, 3).0; // (1, 1): input 5 of 0..11
        assert_eq!(gray, [116, 116, 116]);
        // The write is atomic: no temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("map.png")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn small_images_are_scaled_up_and_outliers_clipped() {
        let input: Tensor = Tensor::zeros(&[28, 28]);
        let mut a = vec![0.01f32; 784];
        a[0] = 100.0;
        let map = render_heatmap(&input, &Tensor::from_vec(a, &[28, 28]), &HeatmapOptions::default());
        assert_eq!((map.width, map.height), (280, 280));
        // With the 99th percentile as the scale, the ordinary pixels are fully red too.
        assert_eq!(map.pixel(279, 279)[0], 217);
    }

    #[test]
    fn writing_into_a_missing_folder_names_the_file() {
        let t: Tensor = Tensor::zeros(&[2, 2]);
        let err = save_heatmap_png(&t, &t, "/nonexistent-kiln-folder/x.png").unwrap_err();
        assert!(err.to_string().contains("/nonexistent-kiln-folder/"), "{err}");
    }

    #[test]
    #[should_panic(expected = "must be [H, W]")]
    fn a_three_channel_attribution_panics() {
        let t: Tensor = Tensor::zeros(&[3, 2, 2]);
        let _ = render_heatmap(&t, &t, &HeatmapOptions::default());
    }
}
