//! Colour jitter.

use kiln_tensor::Rng;

use super::{uniform, Transform};
use crate::image::Image;

/// Random brightness, contrast and saturation changes, applied in a random order, like
/// `torchvision.transforms.ColorJitter` (no hue). Values are clamped to `[0, 1]`.
///
/// - brightness: multiply by a factor in `[max(0, 1 - b), 1 + b]`;
/// - contrast: blend with the mean grey level (ITU-R 601-2 luma: 0.299 R + 0.587 G + 0.114 B);
/// - saturation: blend with the grey image (RGB only).
#[derive(Clone, Copy, Debug, Default)]
pub struct ColorJitter {
    brightness: Option<(f64, f64)>,
    contrast: Option<(f64, f64)>,
    saturation: Option<(f64, f64)>,
}

fn factor_range(name: &str, v: f64) -> Option<(f64, f64)> {
    assert!(v >= 0.0, "ColorJitter: {name} must be >= 0, got {v}");
    (v > 0.0).then(|| ((1.0 - v).max(0.0), 1.0 + v))
}

impl ColorJitter {
    /// Jitter with the given strengths (0 turns one off), as torchvision's arguments.
    pub fn new(brightness: f64, contrast: f64, saturation: f64) -> Self {
        ColorJitter {
            brightness: factor_range("brightness", brightness),
            contrast: factor_range("contrast", contrast),
            saturation: factor_range("saturation", saturation),
        }
    }
}

fn grey(img: &Image) -> Vec<f32> {
    if img.channels == 3 {
        let (r, g, b) = (img.plane(0), img.plane(1), img.plane(2));
        (0..r.len()).map(|i| 0.299 * r[i] + 0.587 * g[i] + 0.114 * b[i]).collect()
    } else {
        img.plane(0).to_vec()
    }
}

fn blend(v: f32, other: f32, factor: f32) -> f32 {
    (factor * v + (1.0 - factor) * other).clamp(0.0, 1.0)
}

impl Transform<Image> for ColorJitter {
    type Output = Image;
    fn apply(&self, mut img: Image, rng: &mut Rng) -> Image {
        let order = rng.permutation(3);
        let factors: Vec<Option<f32>> = [self.brightness, self.contrast, self.saturation]
            .iter()
            .map(|r| r.map(|(lo, hi)| uniform(rng, lo, hi) as f32))
            .collect();
        for k in order {
            let Some(f) = factors[k] else { continue };
            match k {
                0 => img.data.iter_mut().for_each(|v| *v = blend(*v, 0.0, f)),
                1 => {
                    let g = grey(&img);
                    let mean = g.iter().sum::<f32>() / g.len().max(1) as f32;
                    img.data.iter_mut().for_each(|v| *v = blend(*v, mean, f));
                }
                _ if img.channels == 3 => {
                    let g = grey(&img);
                    for c in 0..3 {
                        for (v, &gv) in img.plane_mut(c).iter_mut().zip(&g) {
                            *v = blend(*v, gv, f);
                        }
                    }
                }
                _ => {}
            }
        }
        img
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_range_and_brightness_scales() {
        let img = Image::new((0..3 * 16).map(|v| (v as f32) / 48.0).collect(), 3, 4, 4);
        let t = ColorJitter::new(0.5, 0.5, 0.5);
        let mut rng = Rng::new(0);
        for _ in 0..20 {
            let out = t.apply(img.clone(), &mut rng);
            assert!(out.data.iter().all(|v| (0.0..=1.0).contains(v)));
        }
        let out = ColorJitter::new(0.5, 0.0, 0.0).apply(img.clone(), &mut Rng::new(4));
        let ratio = out.data[10] / img.data[10];
        assert!((0.5..=1.5).contains(&ratio));
        assert!(out.data.iter().zip(&img.data).all(|(o, i)| (o - (i * ratio).min(1.0)).abs() < 1e-5));
        assert_eq!(ColorJitter::new(0.0, 0.0, 0.0).apply(img.clone(), &mut rng), img);
    }
}
