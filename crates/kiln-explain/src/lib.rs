//! # kiln-explain
//!
//! Explaining a kiln model's predictions, one input and one output at a time.
//!
//! - **Gradient methods**, through kiln's own autograd: [`saliency`] (the vanilla gradient),
//!   [`gradient_x_input`], [`smooth_grad`], [`integrated_gradients`] (with its completeness
//!   check), and the perturbation method [`occlusion`].
//! - **Model-agnostic methods** over [`Segments`] of the input — tabular features, image
//!   patches or superpixels, text tokens, built by the adapters of [`Segmented`]:
//!   [`kernel_shap`] (Shapley values, exact up to 12 segments) and [`lime`].
//! - **Output**: attribution tensors with the input's shape, PNG heat maps over the grayscale
//!   input ([`save_heatmap_png`]), and [`TokenScores`] for text.
//!
//! A model is a closure `Fn(&Var<E>) -> Var<E>` or any `Forward` module, called on batches
//! `[N, ...x.shape()]` and returning `[N, classes]` (see [`Model`]).
//!
//! ```
//! use kiln_autograd::Var;
//! use kiln_explain::{integrated_gradients, kernel_shap, KernelShapConfig, Segmented};
//! use kiln_tensor::Tensor;
//! let w = Var::constant(Tensor::from_vec(vec![1.0f64, -2.0, 0.5], &[3, 1]));
//! let model = |x: &Var<f64>| x.matmul(&w).tanh();
//! let x = Tensor::from_vec(vec![0.5, 0.25, 1.0], &[3]);
//! let zero = Tensor::zeros(&[3]);
//! let ig = integrated_gradients(&model, &x, 0, &zero, 64);
//! assert!(ig.relative_error() < 1e-3);
//! let shap = kernel_shap(&model, &Segmented::tabular(&x, &zero), 0, &KernelShapConfig::default());
//! assert!(shap.efficiency_error() < 1e-12);
//! // Both put the first feature on top.
//! assert!(shap.values[0] > shap.values[1].abs() && ig.attributions.get(&[0]) > 0.0);
//! ```

mod error;
mod gradient;
mod heatmap;
mod lime;
mod linalg;
mod model;
mod occlusion;
mod segments;
mod shap;
mod text;

pub use error::ExplainError;
pub use gradient::{gradient_x_input, integrated_gradients, saliency, smooth_grad, IntegratedGradients};
pub use heatmap::{render_heatmap, save_heatmap_png, save_heatmap_png_with, Heatmap, HeatmapOptions};
pub use lime::{lime, LimeConfig, LimeExplanation};
pub use model::{Model, ViaFn, ViaForward, DEFAULT_BATCH_SIZE};
pub use occlusion::occlusion;
pub use segments::{Segmented, Segments};
pub use shap::{kernel_shap, KernelShapConfig, ShapValues};
pub use text::TokenScores;

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
