//! Crops and resizing.

use kiln_tensor::Rng;

use super::{uniform, Transform};
use crate::image::Image;

/// Resizes to `height` x `width` by bilinear interpolation.
#[derive(Clone, Copy, Debug)]
pub struct Resize {
    height: usize,
    width: usize,
}

impl Resize {
    /// Resize to `height` x `width`.
    ///
    /// **Panics** if a size is 0.
    pub fn new(height: usize, width: usize) -> Self {
        assert!(height > 0 && width > 0, "Resize: size must be > 0, got {height}x{width}");
        Resize { height, width }
    }
}

impl Transform<Image> for Resize {
    type Output = Image;
    fn apply(&self, img: Image, _rng: &mut Rng) -> Image {
        img.resize(self.height, self.width)
    }
}

/// The centre `height` x `width` window (zero-padded if the image is smaller).
#[derive(Clone, Copy, Debug)]
pub struct CenterCrop {
    height: usize,
    width: usize,
}

impl CenterCrop {
    /// Centre crop to `height` x `width`.
    pub fn new(height: usize, width: usize) -> Self {
        CenterCrop { height, width }
    }
}

impl Transform<Image> for CenterCrop {
    type Output = Image;
    fn apply(&self, img: Image, _rng: &mut Rng) -> Image {
        // torchvision rounds the offset: int(round((H - h) / 2)).
        let top = ((img.height as f64 - self.height as f64) / 2.0).round() as isize;
        let left = ((img.width as f64 - self.width as f64) / 2.0).round() as isize;
        img.crop(top, left, self.height, self.width, 0.0)
    }
}

/// A random `height` x `width` window, after padding each side by `padding` pixels of `fill`,
/// like `torchvision.transforms.RandomCrop(size, padding)` (CIFAR's `RandomCrop(32, padding=4)`).
#[derive(Clone, Copy, Debug)]
pub struct RandomCrop {
    height: usize,
    width: usize,
    padding: usize,
    fill: f32,
}

impl RandomCrop {
    /// A random crop of `height` x `width` with no padding.
    pub fn new(height: usize, width: usize) -> Self {
        RandomCrop { height, width, padding: 0, fill: 0.0 }
    }

    /// Pads each side by `padding` pixels first.
    #[must_use]
    pub fn padding(mut self, padding: usize) -> Self {
        self.padding = padding;
        self
    }

    /// The value of padded pixels (default 0).
    #[must_use]
    pub fn fill(mut self, fill: f32) -> Self {
        self.fill = fill;
        self
    }
}

impl Transform<Image> for RandomCrop {
    type Output = Image;
    /// **Panics** if the padded image is smaller than the crop.
    fn apply(&self, img: Image, rng: &mut Rng) -> Image {
        let (ph, pw) = (img.height + 2 * self.padding, img.width + 2 * self.padding);
        assert!(
            ph >= self.height && pw >= self.width,
            "RandomCrop: crop {}x{} larger than the padded image {ph}x{pw}",
            self.height,
            self.width
        );
        let top = rng.below((ph - self.height + 1) as u64) as isize - self.padding as isize;
        let left = rng.below((pw - self.width + 1) as u64) as isize - self.padding as isize;
        img.crop(top, left, self.height, self.width, self.fill)
    }
}

/// A random window of random area and aspect ratio, resized to `height` x `width`, like
/// `torchvision.transforms.RandomResizedCrop` (same sampling: 10 tries, then a centre crop).
#[derive(Clone, Copy, Debug)]
pub struct RandomResizedCrop {
    height: usize,
    width: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
}

impl RandomResizedCrop {
    /// Output `height` x `width`, with torchvision's defaults `scale = (0.08, 1)`,
    /// `ratio = (3/4, 4/3)`.
    pub fn new(height: usize, width: usize) -> Self {
        RandomResizedCrop { height, width, scale: (0.08, 1.0), ratio: (3.0 / 4.0, 4.0 / 3.0) }
    }

    /// Range of the crop's area as a fraction of the image's.
    #[must_use]
    pub fn scale(mut self, low: f64, high: f64) -> Self {
        assert!(0.0 < low && low <= high, "RandomResizedCrop: bad scale range ({low}, {high})");
        self.scale = (low, high);
        self
    }

    /// Range of the crop's aspect ratio (width / height).
    #[must_use]
    pub fn ratio(mut self, low: f64, high: f64) -> Self {
        assert!(0.0 < low && low <= high, "RandomResizedCrop: bad ratio range ({low}, {high})");
        self.ratio = (low, high);
        self
    }

    fn window(&self, h: usize, w: usize, rng: &mut Rng) -> (usize, usize, usize, usize) {
        let area = (h * w) as f64;
        let (lr0, lr1) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target = area * uniform(rng, self.scale.0, self.scale.1);
            let aspect = uniform(rng, lr0, lr1).exp();
            let cw = (target * aspect).sqrt().round() as usize;
            let ch = (target / aspect).sqrt().round() as usize;
            if 0 < cw && cw <= w && 0 < ch && ch <= h {
                let top = rng.below((h - ch + 1) as u64) as usize;
                let left = rng.below((w - cw + 1) as u64) as usize;
                return (top, left, ch, cw);
            }
        }
        // Fallback to a central crop of the nearest allowed ratio.
        let in_ratio = w as f64 / h as f64;
        let (ch, cw) = if in_ratio < self.ratio.0 {
            ((w as f64 / self.ratio.0).round() as usize, w)
        } else if in_ratio > self.ratio.1 {
            (h, (h as f64 * self.ratio.1).round() as usize)
        } else {
            (h, w)
        };
        ((h - ch) / 2, (w - cw) / 2, ch, cw)
    }
}

impl Transform<Image> for RandomResizedCrop {
    type Output = Image;
    fn apply(&self, img: Image, rng: &mut Rng) -> Image {
        let (top, left, ch, cw) = self.window(img.height, img.width, rng);
        img.crop(top as isize, left as isize, ch, cw, 0.0).resize(self.height, self.width)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(h: usize, w: usize) -> Image {
        Image::new((0..h * w).map(|v| v as f32).collect(), 1, h, w)
    }

    #[test]
    fn random_crop_with_padding_covers_all_offsets() {
        let img = ramp(4, 4);
        let t = RandomCrop::new(4, 4).padding(1).fill(-1.0);
        let mut rng = Rng::new(3);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let out = t.apply(img.clone(), &mut rng);
            assert_eq!(out.shape(), [1, 4, 4]);
            seen.insert(out.data.iter().filter(|&&v| v == -1.0).count());
        }
        // 0 padded pixels (centre), 4 (one side), 7 (a corner).
        assert!(seen.contains(&0) && seen.contains(&4) && seen.contains(&7), "{seen:?}");
        assert_eq!(CenterCrop::new(2, 2).apply(img, &mut rng).data, vec![5., 6., 9., 10.]);
    }

    #[test]
    fn random_resized_crop_has_the_output_size() {
        let t = RandomResizedCrop::new(8, 6);
        let mut rng = Rng::new(0);
        for _ in 0..20 {
            let out = t.apply(ramp(20, 30), &mut rng);
            assert_eq!(out.shape(), [1, 8, 6]);
            assert!(out.data.iter().all(|&v| (0.0..600.0).contains(&v)));
        }
        assert_eq!(Resize::new(3, 3).apply(ramp(6, 6), &mut rng).shape(), [1, 3, 3]);
    }
}
