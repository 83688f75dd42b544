//! Random erasing (Zhong et al. 2017, "Random Erasing Data Augmentation").

use kiln_tensor::Rng;

use super::{uniform, Transform};
use crate::image::Image;

/// With probability `p`, sets a random rectangle to `value`, like
/// `torchvision.transforms.RandomErasing` (same sampling: area fraction in `scale`, aspect ratio
/// log-uniform in `ratio`, 10 tries).
#[derive(Clone, Copy, Debug)]
pub struct RandomErasing {
    p: f64,
    scale: (f64, f64),
    ratio: (f64, f64),
    value: f32,
}

impl Default for RandomErasing {
    fn default() -> Self {
        RandomErasing { p: 0.5, scale: (0.02, 0.33), ratio: (0.3, 3.3), value: 0.0 }
    }
}

impl RandomErasing {
    /// Erasing with probability `p` and torchvision's other defaults.
    ///
    /// **Panics** if `p` is not in `[0, 1]`.
    pub fn new(p: f64) -> Self {
        assert!((0.0..=1.0).contains(&p), "RandomErasing: p must be in [0, 1], got {p}");
        RandomErasing { p, ..Default::default() }
    }

    /// Range of the erased area as a fraction of the image.
    #[must_use]
    pub fn scale(mut self, low: f64, high: f64) -> Self {
        assert!(0.0 <= low && low <= high && high <= 1.0, "RandomErasing: bad scale ({low}, {high})");
        self.scale = (low, high);
        self
    }

    /// Range of the rectangle's aspect ratio.
    #[must_use]
    pub fn ratio(mut self, low: f64, high: f64) -> Self {
        assert!(0.0 < low && low <= high, "RandomErasing: bad ratio ({low}, {high})");
        self.ratio = (low, high);
        self
    }

    /// The value written (default 0).
    #[must_use]
    pub fn value(mut self, value: f32) -> Self {
        self.value = value;
        self
    }
}

impl Transform<Image> for RandomErasing {
    type Output = Image;
    fn apply(&self, mut img: Image, rng: &mut Rng) -> Image {
        if rng.next_f64() >= self.p {
            return img;
        }
        let (h, w) = (img.height, img.width);
        let area = (h * w) as f64;
        let (lr0, lr1) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target = area * uniform(rng, self.scale.0, self.scale.1);
            let aspect = uniform(rng, lr0, lr1).exp();
            let eh = (target * aspect).sqrt().round() as usize;
            let ew = (target / aspect).sqrt().round() as usize;
            if eh == 0 || ew == 0 || eh >= h || ew >= w {
                continue;
            }
            let top = rng.below((h - eh + 1) as u64) as usize;
            let left = rng.below((w - ew + 1) as u64) as usize;
            for c in 0..img.channels {
                for y in top..top + eh {
                    for x in left..left + ew {
                        img.set(c, y, x, self.value);
                    }
                }
            }
            break;
        }
        img
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erases_a_rectangle_of_bounded_area() {
        let img = Image::new(vec![1.0; 2 * 20 * 20], 2, 20, 20);
        let t = RandomErasing::new(1.0).value(0.0);
        let mut rng = Rng::new(0);
        for _ in 0..20 {
            let out = t.apply(img.clone(), &mut rng);
            let zeros = out.plane(0).iter().filter(|&&v| v == 0.0).count();
            assert!(zeros > 0 && zeros <= (0.33 * 400.0 * 1.3) as usize, "{zeros}");
            assert_eq!(out.plane(0), out.plane(1));
        }
        assert_eq!(RandomErasing::new(0.0).apply(img.clone(), &mut rng), img);
    }
}
