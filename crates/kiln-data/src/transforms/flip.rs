//! Random flips.

use kiln_tensor::Rng;

use super::Transform;
use crate::image::Image;

/// Mirrors the image left-right with probability `p` (default 0.5), like torchvision's.
#[derive(Clone, Copy, Debug)]
pub struct RandomHorizontalFlip {
    p: f64,
}

impl RandomHorizontalFlip {
    /// A flip with probability `p`.
    ///
    /// **Panics** if `p` is not in `[0, 1]`.
    pub fn new(p: f64) -> Self {
        assert!((0.0..=1.0).contains(&p), "RandomHorizontalFlip: p must be in [0, 1], got {p}");
        RandomHorizontalFlip { p }
    }
}

impl Default for RandomHorizontalFlip {
    fn default() -> Self {
        RandomHorizontalFlip { p: 0.5 }
    }
}

impl Transform<Image> for RandomHorizontalFlip {
    type Output = Image;
    fn apply(&self, mut img: Image, rng: &mut Rng) -> Image {
        if rng.next_f64() < self.p {
            let w = img.width;
            for row in img.data.chunks_mut(w) {
                row.reverse();
            }
        }
        img
    }
}

/// Mirrors the image top-bottom with probability `p` (default 0.5), like torchvision's.
#[derive(Clone, Copy, Debug)]
pub struct RandomVerticalFlip {
    p: f64,
}

impl RandomVerticalFlip {
    /// A flip with probability `p`.
    ///
    /// **Panics** if `p` is not in `[0, 1]`.
    pub fn new(p: f64) -> Self {
        assert!((0.0..=1.0).contains(&p), "RandomVerticalFlip: p must be in [0, 1], got {p}");
        RandomVerticalFlip { p }
    }
}

impl Default for RandomVerticalFlip {
    fn default() -> Self {
        RandomVerticalFlip { p: 0.5 }
    }
}

impl Transform<Image> for RandomVerticalFlip {
    type Output = Image;
    fn apply(&self, mut img: Image, rng: &mut Rng) -> Image {
        if rng.next_f64() < self.p {
            let (h, w) = (img.height, img.width);
            for c in 0..img.channels {
                let plane = img.plane_mut(c);
                for y in 0..h / 2 {
                    let (top, bottom) = plane.split_at_mut((h - 1 - y) * w);
                    top[y * w..(y + 1) * w].swap_with_slice(&mut bottom[..w]);
                }
            }
        }
        img
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_mirror_and_p_zero_is_identity() {
        let img = Image::new((0..6).map(|v| v as f32).collect(), 1, 3, 2);
        let mut rng = Rng::new(0);
        assert_eq!(RandomHorizontalFlip::new(1.0).apply(img.clone(), &mut rng).data, vec![1., 0., 3., 2., 5., 4.]);
        assert_eq!(RandomVerticalFlip::new(1.0).apply(img.clone(), &mut rng).data, vec![4., 5., 2., 3., 0., 1.]);
        assert_eq!(RandomVerticalFlip::new(0.0).apply(img.clone(), &mut rng), img);
        let flips = (0..1000).filter(|_| RandomHorizontalFlip::default().apply(img.clone(), &mut rng) != img).count();
        assert!((400..600).contains(&flips), "{flips}");
    }
}
