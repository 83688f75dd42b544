//! # kiln-quant
//!
//! Post-training int8 quantisation for kiln, after `torch.ao.quantization`, and bfloat16
//! inference after `model.to(torch.bfloat16)` ([`bf16`]).
//!
//! int8:
//!
//! - **Weights** of `Linear`, `Conv2d` and `LSTM`: int8, per-output-channel symmetric scales.
//! - **Activations**: per-tensor affine `quint8` or `qint8`, either calibrated once on sample
//!   batches with a [`MinMaxObserver`] or a [`PercentileObserver`] ([`quantize_sequential`],
//!   static quantisation), or computed from each batch on the fly ([`quantize_dynamic`],
//!   [`QuantLSTM::dynamic`], dynamic quantisation).
//! - **Kernels**: an exact int8 × int8 → int32 GEMM ([`gemm`]) with AVX-512 VNNI, AVX2 and
//!   portable micro-kernels chosen at run time, weights packed once, requantisation to `f32`
//!   with per-channel scales and bias fused into its output loop; a quantised conv2d as
//!   channels-last byte im2col + that GEMM (stride, padding, dilation; `groups = 1`); between
//!   quantised layers activations stay int8 codes (ReLU, max-pool and flatten run on them).
//! - **Modules** [`QuantLinear`], [`QuantConv2d`], [`QuantLSTM`], [`QuantSequential`]: kiln-nn
//!   [`Module`](kiln_nn::Module)s and [`Forward`](kiln_nn::Forward)s, inference only.
//! - **Conversion** by type: [`quantize_sequential`] takes a `Sequential` by value, downcasts
//!   each layer (`Linear`, `Conv2d`) and moves every other layer into the result unchanged.
//! - **Files**: [`QuantSequential::save`] / [`QuantSequential::load`], safetensors with `I8`
//!   weights (see [`serialize`] for the float layers a file can hold); [`QuantLSTM::save`] /
//!   [`QuantLSTM::load`] for a quantised LSTM.
//!
//! bfloat16 ([`bf16`]): [`bf16_sequential`] converts a `Sequential` to a [`Bf16Sequential`]
//! whose weights, biases and activations are stored as bfloat16, products summed in `f32`
//! by kiln's bfloat16 GEMM ([`Bf16Linear`], [`Bf16Conv2d`], [`Bf16Embedding`]; [`Bf16LSTM`]
//! on its own); [`Bf16Sequential::param_bytes`] shows the halving.
//!
//! ```
//! use kiln_nn::{Flatten, Forward, Linear, ReLU, Sequential};
//! use kiln_quant::{quantize_sequential, ObserverKind, QuantConfig, QuantDtype, QuantSequential};
//! use kiln_tensor::{Rng, Tensor};
//!
//! let model: Sequential = Sequential::new().add(Flatten::default()).add(Linear::new(64, 32)).add(ReLU).add(Linear::new(32, 10));
//! let mut rng = Rng::new(0);
//! let calibration: Vec<Tensor> = (0..4).map(|_| Tensor::uniform(&[16, 8, 8], 0.0, 1.0, &mut rng)).collect();
//! let x = Tensor::uniform(&[4, 8, 8], 0.0, 1.0, &mut rng);
//! let want = model.forward(&kiln_autograd::Var::constant(x.clone())).value();
//!
//! // the model is taken by value: layers that stay f32 move into the quantised one
//! let config = QuantConfig { activation_dtype: QuantDtype::UInt8, observer: ObserverKind::Percentile(99.99) };
//! let int8 = quantize_sequential(model, &calibration, config).unwrap();
//! let got = int8.forward_tensor(&x);
//! assert!(want.sub(&got).abs().max_all() < 0.05 * want.abs().max_all());
//!
//! let path = std::env::temp_dir().join(format!("kiln-quant-lib-doc-{}.safetensors", std::process::id()));
//! int8.save(&path).unwrap();
//! assert_eq!(QuantSequential::load(&path).unwrap().forward_tensor(&x).to_vec(), got.to_vec());
//! # std::fs::remove_file(&path).unwrap();
//! ```

pub mod bf16;
mod codes;
mod conv;
mod error;
pub mod gemm;
mod linear;
mod lstm;
pub mod observer;
mod sequential;
pub mod serialize;

pub use bf16::{bf16_sequential, Bf16Conv2d, Bf16Embedding, Bf16LSTM, Bf16Layer, Bf16Linear, Bf16Sequential};
pub use conv::{im2col_nhwc, ConvGeometry, QuantConv2d};
pub use error::QuantError;
pub use linear::{ActQuant, QuantLinear};
pub use lstm::QuantLSTM;
pub use observer::{MinMaxObserver, Observer, ObserverKind, PercentileObserver, QParams, QuantDtype};
pub use sequential::{quantize_dynamic, quantize_sequential, FloatLayer, QuantConfig, QuantLayer, QuantSequential};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
