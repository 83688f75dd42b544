//! Rotations and affine maps, sampled bilinearly.

use kiln_tensor::Rng;

use super::{uniform, Transform};
use crate::image::Image;

/// Warps `img` by rotating it `angle` degrees counter-clockwise about its centre, scaling by
/// `scale` and translating by `(tx, ty)` pixels; each output pixel samples the input bilinearly at
/// the inverse-mapped point, and points outside read `fill`.
#[must_use]
pub fn affine(img: &Image, angle: f64, tx: f64, ty: f64, scale: f64, fill: f32) -> Image {
    let (cy, cx) = ((img.height as f64 - 1.0) / 2.0, (img.width as f64 - 1.0) / 2.0);
    let (sin, cos) = angle.to_radians().sin_cos();
    let mut out = Image::zeros(img.channels, img.height, img.width);
    for y in 0..img.height {
        for x in 0..img.width {
            // Inverse map: undo the translation, the scale, then the rotation (image y points down,
            // so a counter-clockwise turn on screen is the matrix below).
            let ox = (x as f64 - cx - tx) / scale;
            let oy = (y as f64 - cy - ty) / scale;
            let sx = ox * cos - oy * sin + cx;
            let sy = ox * sin + oy * cos + cy;
            for c in 0..img.channels {
                out.set(c, y, x, img.sample_bilinear(c, sy as f32, sx as f32, fill));
            }
        }
    }
    out
}

/// Rotates by an angle drawn uniformly from `[-degrees, degrees]` (or a given range), bilinear,
/// like `torchvision.transforms.RandomRotation(degrees, interpolation=BILINEAR)`.
#[derive(Clone, Copy, Debug)]
pub struct RandomRotation {
    degrees: (f64, f64),
    fill: f32,
}

impl RandomRotation {
    /// Angles in `[-degrees, degrees]`.
    ///
    /// **Panics** if `degrees < 0`.
    pub fn new(degrees: f64) -> Self {
        assert!(degrees >= 0.0, "RandomRotation: degrees must be >= 0, got {degrees}");
        RandomRotation { degrees: (-degrees, degrees), fill: 0.0 }
    }

    /// Angles in `[low, high]`.
    pub fn range(low: f64, high: f64) -> Self {
        assert!(low <= high, "RandomRotation: empty range ({low}, {high})");
        RandomRotation { degrees: (low, high), fill: 0.0 }
    }

    /// The value of pixels rotated in from outside (default 0).
    #[must_use]
    pub fn fill(mut self, fill: f32) -> Self {
        self.fill = fill;
        self
    }
}

impl Transform<Image> for RandomRotation {
    type Output = Image;
    fn apply(&self, img: Image, rng: &mut Rng) -> Image {
        let angle = uniform(rng, self.degrees.0, self.degrees.1);
        affine(&img, angle, 0.0, 0.0, 1.0, self.fill)
    }
}

/// A random rotation, translation and scale, like `torchvision.transforms.RandomAffine`
/// (`degrees`, `translate` as fractions of the size, `scale` range; no shear).
#[derive(Clone, Copy, Debug)]
pub struct RandomAffine {
    degrees: (f64, f64),
    translate: Option<(f64, f64)>,
    scale: Option<(f64, f64)>,
    fill: f32,
}

impl RandomAffine {
    /// Rotation angles in `[-degrees, degrees]`, no translation or scaling.
    ///
    /// **Panics** if `degrees < 0`.
    pub fn new(degrees: f64) -> Self {
        assert!(degrees >= 0.0, "RandomAffine: degrees must be >= 0, got {degrees}");
        RandomAffine { degrees: (-degrees, degrees), translate: None, scale: None, fill: 0.0 }
    }

    /// Shifts of up to `a * width` horizontally and `b * height` vertically (rounded to pixels, as
    /// torchvision does).
    #[must_use]
    pub fn translate(mut self, a: f64, b: f64) -> Self {
        assert!((0.0..=1.0).contains(&a) && (0.0..=1.0).contains(&b), "RandomAffine: translate must be in [0, 1]");
        self.translate = Some((a, b));
        self
    }

    /// Scale factors drawn from `[low, high]`.
    #[must_use]
    pub fn scale(mut self, low: f64, high: f64) -> Self {
        assert!(0.0 < low && low <= high, "RandomAffine: bad scale range ({low}, {high})");
        self.scale = Some((low, high));
        self
    }

    /// The value of pixels moved in from outside (default 0).
    #[must_use]
    pub fn fill(mut self, fill: f32) -> Self {
        self.fill = fill;
        self
    }
}

impl Transform<Image> for RandomAffine {
    type Output = Image;
    fn apply(&self, img: Image, rng: &mut Rng) -> Image {
        let angle = uniform(rng, self.degrees.0, self.degrees.1);
        let (tx, ty) = match self.translate {
            Some((a, b)) => {
                let (mx, my) = (a * img.width as f64, b * img.height as f64);
                (uniform(rng, -mx, mx).round(), uniform(rng, -my, my).round())
            }
            None => (0.0, 0.0),
        };
        let s = self.scale.map_or(1.0, |(lo, hi)| uniform(rng, lo, hi));
        affine(&img, angle, tx, ty, s, self.fill)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarter_turn_is_exact_and_counter_clockwise() {
        // 0 1
        // 2 3   turned 90 degrees counter-clockwise is   1 3 / 0 2
        let img = Image::new(vec![0., 1., 2., 3.], 1, 2, 2);
        let out = affine(&img, 90.0, 0.0, 0.0, 1.0, -1.0);
        let rounded: Vec<f32> = out.data.iter().map(|v| (v * 1e4).round() / 1e4).collect();
        assert_eq!(rounded, vec![1., 3., 0., 2.]);
        assert_eq!(affine(&img, 0.0, 0.0, 0.0, 1.0, 0.0), img);
        // A one-pixel shift right brings in the fill on the left.
        assert_eq!(affine(&img, 0.0, 1.0, 0.0, 1.0, 9.0).data, vec![9., 0., 9., 2.]);
    }

    #[test]
    fn random_versions_keep_size_and_are_seeded() {
        let img = Image::new((0..3 * 8 * 8).map(|v| v as f32).collect(), 3, 8, 8);
        let t = RandomAffine::new(30.0).translate(0.1, 0.1).scale(0.9, 1.1);
        let a = t.apply(img.clone(), &mut Rng::new(1));
        assert_eq!(a, t.apply(img.clone(), &mut Rng::new(1)));
        assert_eq!(a.shape(), [3, 8, 8]);
        let r = RandomRotation::new(10.0).apply(img.clone(), &mut Rng::new(2));
        assert_eq!(r.shape(), [3, 8, 8]);
        assert_ne!(r, img);
    }
}
