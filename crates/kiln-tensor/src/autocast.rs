//! Automatic mixed precision (`torch.autocast("cpu", dtype=torch.bfloat16)`): a scope under
//! which every `f32` matrix product runs in bfloat16 with `f32` sums.
//!
//! Inside [`autocast`]`(DType::BF16, ..)`, the `f32` GEMM behind [`Tensor::matmul`], linear
//! layers, convolution (im2col + GEMM, forward and both gradients), the LSTM's gate products and
//! attention's products rounds its operands to bfloat16 (to nearest even) and accumulates in
//! `f32` ([`kernels::bf16_gemm`](crate::kernels::bf16_gemm), `vdpbf16ps` where the CPU has
//! AVX-512 BF16). Everything else — elementwise ops, reductions, softmax, normalisation
//! statistics, losses — keeps computing in `f32`, as PyTorch's CPU autocast keeps its "fp32"
//! op list in `f32`. Parameters, gradients and optimiser state stay `f32`; `f64` tensors
//! are never affected (gradient checks stay in `f64`).
//!
//! Differs from PyTorch: a product's result stays `f32` instead of being rounded to bfloat16,
//! so the ops that follow it see the `f32` sums (the GEMM is where bfloat16 saves time on a
//! CPU; rounding its output would only lose accuracy).
//!
//! The mode is per thread, like `no_grad`; kiln's parallel kernels started from an autocast
//! thread run on a second pool whose threads are in the same mode, so that a concurrent
//! caller outside autocast is never affected.
//!
//! [`Tensor::matmul`]: crate::Tensor::matmul

use std::cell::Cell;

use crate::element::DType;

thread_local! {
    /// The lower-precision type of this thread's autocast scope (`None`: off).
    static AUTOCAST: Cell<Option<DType>> = const { Cell::new(None) };
}

/// The lower-precision type `f32` products use on this thread, or `None` outside autocast.
#[must_use]
pub fn autocast_dtype() -> Option<DType> {
    AUTOCAST.with(Cell::get)
}

/// Whether this thread is inside an autocast scope (`torch.is_autocast_enabled()`).
#[must_use]
pub fn is_autocast_enabled() -> bool {
    autocast_dtype().is_some()
}

/// Whether `f32` GEMMs on this thread run in bfloat16.
#[inline]
pub(crate) fn bf16_gemm() -> bool {
    AUTOCAST.with(Cell::get) == Some(DType::BF16)
}

/// Restores the previous autocast mode when dropped. Made by [`set_autocast`].
#[must_use = "the mode is restored when the guard drops"]
pub struct AutocastGuard {
    prev: Option<DType>,
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        AUTOCAST.with(|c| c.set(self.prev));
    }
}

/// Sets this thread's autocast mode: `Some(DType::BF16)` turns it on, `None` (or
/// `Some(DType::F32)`, full precision) off. The guard restores the previous mode.
///
/// **Panics** for `Some(DType::F64)`: autocast lowers `f32` products only.
pub fn set_autocast(dtype: Option<DType>) -> AutocastGuard {
    let mode = match dtype {
        Some(DType::BF16) => Some(DType::BF16),
        None | Some(DType::F32) => None,
        Some(d) => panic!(
            "autocast: {d} is not a lower precision for f32 products; use DType::BF16 (or F32 to turn autocast off)"
        ),
    };
    AutocastGuard { prev: AUTOCAST.with(|c| c.replace(mode)) }
}

/// Runs `f` with `f32` matrix products in `dtype` (`DType::BF16`; `DType::F32` runs `f` in
/// full precision, like `torch.autocast(..., enabled=False)` inside an autocast region).
///
/// **Panics** if `dtype` is `DType::F64`.
///
/// ```
/// use kiln_tensor::{autocast, DType, Tensor};
/// let a = Tensor::from_vec(vec![1.0f32 + 1.0 / 512.0, 2.0], &[1, 2]);
/// let b = Tensor::from_vec(vec![1.0f32, 1.0], &[2, 1]);
/// // 1 + 2^-9 is not a bfloat16: it rounds to 1 under autocast
/// assert_eq!(autocast(DType::BF16, || a.matmul(&b)).item(), 3.0);
/// assert_eq!(a.matmul(&b).item(), 3.0 + 1.0 / 512.0);
/// ```
pub fn autocast<R>(dtype: DType, f: impl FnOnce() -> R) -> R {
    let _g = set_autocast(Some(dtype));
    f()
}

/// An environment variable that names no autocast precision (see [`autocast_from_env`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutocastEnvError {
    /// The variable's name.
    pub var: String,
    /// The value it holds.
    pub value: String,
}

impl std::fmt::Display for AutocastEnvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: `{}` is not an autocast precision (expected `bf16`, or `f32` / `off` for none)",
            self.var, self.value
        )
    }
}

impl std::error::Error for AutocastEnvError {}

/// Reads the autocast precision a program is asked for from the environment variable `var`
/// (`KILN_AUTOCAST=bf16`): `Some(DType::BF16)` for `bf16` / `bfloat16`, `None` when the
/// variable is unset, empty, `f32` or `off` (any case).
///
/// # Errors
/// [`AutocastEnvError`], naming the variable and its value, for anything else (a value that
/// is not Unicode included).
///
/// ```
/// use kiln_tensor::autocast::autocast_from_env;
/// std::env::set_var("MY_AUTOCAST", "bf16");
/// assert_eq!(autocast_from_env("MY_AUTOCAST"), Ok(Some(kiln_tensor::DType::BF16)));
/// std::env::set_var("MY_AUTOCAST", "fp8");
/// assert_eq!(autocast_from_env("MY_AUTOCAST").unwrap_err().to_string(),
///     "MY_AUTOCAST: `fp8` is not an autocast precision (expected `bf16`, or `f32` / `off` for none)");
/// ```
pub fn autocast_from_env(var: &str) -> Result<Option<DType>, AutocastEnvError> {
    match std::env::var(var) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(v)) => {
            Err(AutocastEnvError { var: var.into(), value: v.to_string_lossy().into_owned() })
        }
        Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
            "bf16" | "bfloat16" => Ok(Some(DType::BF16)),
            "" | "f32" | "off" => Ok(None),
            _ => Err(AutocastEnvError { var: var.into(), value: v }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Rng, Tensor};

    #[test]
    fn scope_nests_and_restores() {
        assert!(!is_autocast_enabled());
        autocast(DType::BF16, || {
            assert_eq!(autocast_dtype(), Some(DType::BF16));
            autocast(DType::F32, || assert!(!is_autocast_enabled()));
            assert!(is_autocast_enabled());
        });
        assert!(!is_autocast_enabled());
        // restored even when the scope panics
        let r = std::panic::catch_unwind(|| autocast(DType::BF16, || panic!("inside")));
        assert!(r.is_err());
        assert!(!is_autocast_enabled());
    }

    #[test]
    #[should_panic(expected = "autocast: f64 is not a lower precision")]
    fn f64_is_refused() {
        autocast(DType::F64, || ());
    }

    #[test]
    fn products_round_operands_on_every_thread_count() {
        // Large enough for the parallel path: the pool's threads must be in autocast too.
        let mut rng = Rng::new(1);
        let a: Tensor = Tensor::randn(&[96, 80], &mut rng);
        let b: Tensor = Tensor::randn(&[80, 120], &mut rng);
        let round = |t: &Tensor| t.map(|x| half::bf16::from_f32(x).to_f32());
        let want = round(&a).matmul(&round(&b));
        for threads in [1, 2] {
            crate::set_num_threads(threads);
            crate::parallel::with_gemm_threshold(0, || {
                let got = autocast(DType::BF16, || a.matmul(&b));
                let full = a.matmul(&b);
                let (mut d_bf16, mut d_full) = (0.0f32, 0.0f32);
                for ((g, w), f) in got.to_vec().iter().zip(want.to_vec()).zip(full.to_vec()) {
                    d_bf16 = d_bf16.max((g - w).abs());
                    d_full = d_full.max((g - f).abs());
                }
                // the same as the product of the rounded operands, up to f32 sum order
                assert!(d_bf16 < 1e-4, "{threads} threads: {d_bf16}");
                // and visibly not the f32 product
                assert!(d_full > 1e-3, "{threads} threads: autocast changed nothing ({d_full})");
            });
        }
    }

    #[test]
    fn env_values_are_validated() {
        let var = "KILN_AUTOCAST_TEST_ENV_VALUES";
        assert_eq!(autocast_from_env(var), Ok(None));
        for (v, want) in [("bf16", Some(DType::BF16)), ("BFloat16", Some(DType::BF16)), ("off", None), ("f32", None)] {
            std::env::set_var(var, v);
            assert_eq!(autocast_from_env(var), Ok(want), "{v}");
        }
        std::env::set_var(var, "f16");
        let e = autocast_from_env(var).unwrap_err();
        assert_eq!((e.var.as_str(), e.value.as_str()), (var, "f16"));
        assert!(e.to_string().starts_with("KILN_AUTOCAST_TEST_ENV_VALUES: `f16`"));
        std::env::remove_var(var);
    }

    #[test]
    fn f64_products_are_unaffected() {
        let mut rng = Rng::new(2);
        let a: Tensor<f64> = Tensor::randn(&[8, 9], &mut rng);
        let b: Tensor<f64> = Tensor::randn(&[9, 7], &mut rng);
        assert_eq!(autocast(DType::BF16, || a.matmul(&b)), a.matmul(&b));
    }
}
