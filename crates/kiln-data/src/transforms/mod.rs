//! Transforms: seeded, composable functions applied to samples, like torchvision's.
//!
//! A [`Transform`] takes its input by value and the sample's random generator; every random
//! choice is drawn from that generator, which the [`crate::DataLoader`] seeds from
//! `(seed, epoch, sample index)`, so a run is reproducible whatever the number of workers.
//! Closures `Fn(I, &mut Rng) -> O` are transforms too.
//!
//! Image transforms work on [`Image`] (CHW, `f32`); [`ToTensor`] turns the result into a
//! `Tensor<f32>` of shape `[C, H, W]`.
//!
//! ```
//! use kiln_data::transforms::{Compose, Normalize, RandomHorizontalFlip, Transform};
//! use kiln_data::Image;
//! use kiln_tensor::Rng;
//! let t = Compose::new(RandomHorizontalFlip::new(1.0), Normalize::new(vec![0.5], vec![0.5]));
//! let out = t.apply(Image::new(vec![0.0, 1.0], 1, 1, 2), &mut Rng::new(0));
//! assert_eq!(out.data, vec![1.0, -1.0]);
//! ```

use kiln_tensor::{Rng, Tensor};

use crate::image::Image;

mod affine;
mod color;
mod crop;
mod erase;
mod flip;

pub use affine::{RandomAffine, RandomRotation};
pub use color::ColorJitter;
pub use crop::{CenterCrop, RandomCrop, RandomResizedCrop, Resize};
pub use erase::RandomErasing;
pub use flip::{RandomHorizontalFlip, RandomVerticalFlip};

/// A function of one sample, possibly random (drawing only from `rng`).
pub trait Transform<I>: Send + Sync {
    /// What the transform returns.
    type Output: Send;
    /// Applies the transform to `input`.
    fn apply(&self, input: I, rng: &mut Rng) -> Self::Output;
}

impl<I, O: Send, F: Fn(I, &mut Rng) -> O + Send + Sync> Transform<I> for F {
    type Output = O;
    fn apply(&self, input: I, rng: &mut Rng) -> O {
        self(input, rng)
    }
}

/// Two transforms one after the other (nest it, or use [`Compose::then`], for longer chains),
/// like `torchvision.transforms.Compose`.
#[derive(Clone, Debug)]
pub struct Compose<A, B> {
    first: A,
    second: B,
}

impl<A, B> Compose<A, B> {
    /// `first`, then `second`.
    pub fn new(first: A, second: B) -> Self {
        Compose { first, second }
    }

    /// This chain, then `next`.
    pub fn then<C>(self, next: C) -> Compose<Self, C> {
        Compose { first: self, second: next }
    }
}

impl<I, A: Transform<I>, B: Transform<A::Output>> Transform<I> for Compose<A, B> {
    type Output = B::Output;
    fn apply(&self, input: I, rng: &mut Rng) -> B::Output {
        let mid = self.first.apply(input, rng);
        self.second.apply(mid, rng)
    }
}

/// [`Image`] to `Tensor<f32>` of shape `[C, H, W]` (the values are kept: the loaders already
/// scale bytes to `[0, 1]`, which is what torchvision's `ToTensor` does).
#[derive(Clone, Copy, Debug, Default)]
pub struct ToTensor;

impl Transform<Image> for ToTensor {
    type Output = Tensor<f32>;
    fn apply(&self, input: Image, _rng: &mut Rng) -> Tensor<f32> {
        let shape = input.shape();
        Tensor::from_vec(input.data, &shape)
    }
}

/// Per-channel `(x - mean[c]) / std[c]`, like `torchvision.transforms.Normalize`.
#[derive(Clone, Debug)]
pub struct Normalize {
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Normalize {
    /// Normalisation with one mean and standard deviation per channel (or one for all).
    ///
    /// **Panics** if the lengths differ, are 0, or a standard deviation is not positive.
    pub fn new(mean: Vec<f32>, std: Vec<f32>) -> Self {
        assert!(
            !mean.is_empty() && mean.len() == std.len(),
            "Normalize: mean has {} values and std {}; need the same positive number",
            mean.len(),
            std.len()
        );
        assert!(std.iter().all(|&s| s > 0.0), "Normalize: std must be > 0, got {std:?}");
        Normalize { mean, std }
    }
}

impl Transform<Image> for Normalize {
    type Output = Image;
    fn apply(&self, mut input: Image, _rng: &mut Rng) -> Image {
        let k = self.mean.len();
        assert!(k == 1 || k == input.channels, "Normalize: {k} means for an image of {} channels", input.channels);
        for c in 0..input.channels {
            let (m, s) = if k == 1 { (self.mean[0], self.std[0]) } else { (self.mean[c], self.std[c]) };
            for v in input.plane_mut(c) {
                *v = (*v - m) / s;
            }
        }
        input
    }
}

/// Applies a transform with probability `p`, otherwise passes the input through.
#[derive(Clone, Debug)]
pub struct RandomApply<T> {
    transform: T,
    p: f64,
}

impl<T> RandomApply<T> {
    /// `transform` with probability `p`.
    ///
    /// **Panics** if `p` is not in `[0, 1]`.
    pub fn new(transform: T, p: f64) -> Self {
        assert!((0.0..=1.0).contains(&p), "RandomApply: p must be in [0, 1], got {p}");
        RandomApply { transform, p }
    }
}

impl<I: Send, T: Transform<I, Output = I>> Transform<I> for RandomApply<T> {
    type Output = I;
    fn apply(&self, input: I, rng: &mut Rng) -> I {
        if rng.next_f64() < self.p {
            self.transform.apply(input, rng)
        } else {
            input
        }
    }
}

/// A uniform draw in `[low, high)`.
pub(crate) fn uniform(rng: &mut Rng, low: f64, high: f64) -> f64 {
    low + (high - low) * rng.next_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_chains_and_to_tensor_keeps_shape() {
        let t = Compose::new(Normalize::new(vec![0.5, 0.0], vec![0.5, 2.0]), ToTensor);
        let out = t.apply(Image::new(vec![1.0, 0.0, 4.0, 2.0], 2, 1, 2), &mut Rng::new(0));
        assert_eq!(out.shape(), &[2, 1, 2]);
        assert_eq!(out.to_vec(), vec![1.0, -1.0, 2.0, 1.0]);
        let twice =
            Compose::new(|x: i32, _: &mut Rng| x + 1, |x: i32, _: &mut Rng| x * 10).then(|x: i32, _: &mut Rng| x - 1);
        assert_eq!(twice.apply(1, &mut Rng::new(0)), 19);
        let never = RandomApply::new(|x: i32, _: &mut Rng| x + 1, 0.0);
        assert_eq!(never.apply(1, &mut Rng::new(0)), 1);
    }
}
