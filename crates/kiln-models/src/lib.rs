//! # kiln-models
//!
//! Reference models whose parameters carry torchvision's `state_dict` keys, so that weights
//! saved by torchvision (`.pth`, read by kiln-nn's PyTorch reader, or safetensors) load by name:
//!
//! - [`ResNet`]: ResNet-18 and ResNet-34 (He et al. 2016) as `torchvision.models.resnet18/34`,
//!   with [`ResNetConfig`] for the number of classes and a reduced width;
//! - [`VisionTransformer`]: the ViT of Dosovitskiy et al. 2021 in `torchvision.models.vit_b_16`'s
//!   layout, every size configurable ([`VitConfig`]).
//!
//! Their `forward` applies every sub-module with [`Layer::call`](kiln_nn::Layer::call), so
//! forward hooks and [`kiln_nn::summary`] see each layer.
//!
//! ```
//! use kiln_models::{ResNet, ResNetConfig};
//! use kiln_nn::{Forward, Module, Tensor, Var};
//! let mut model: ResNet = ResNetConfig { width: 8, num_classes: 10, ..ResNetConfig::resnet18() }.build()?;
//! model.eval();
//! let y = model.forward(&Var::constant(Tensor::zeros(&[2, 3, 32, 32])));
//! assert_eq!(y.shape().as_slice(), &[2, 10]);
//! assert!(model.state_dict().contains_key("layer2.0.downsample.0.weight"));
//! # Ok::<(), kiln_models::ModelsError>(())
//! ```

mod error;
mod resnet;
mod vit;

pub use error::ModelsError;
pub use resnet::{BasicBlock, ResNet, ResNetConfig};
pub use vit::{EncoderBlock, VisionTransformer, VitConfig};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
