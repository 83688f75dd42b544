//! The state and steps the per-channel normalisations share: `BatchNorm`, `InstanceNorm` and
//! kiln-distributed's `SyncBatchNorm` keep the same optional `weight`/`bias` parameters and
//! `running_mean`/`running_var`/`num_batches_tracked` buffers (PyTorch's `_NormBase`), visit,
//! reset and apply them the same way, and differ only in the axes of their statistics.

use kiln_autograd::{no_grad, Var};
use kiln_tensor::{Float, Tensor};
use serde_json::Value;

use crate::error::NnError;
use crate::init;
use crate::module::{visit_buffer, visit_param, TensorKind};
use crate::registry::Args;

/// PyTorch's keys of a channel normalisation's state, in visit order: two parameters, then
/// three buffers.
const KEYS: [&str; 5] = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"];

/// Visits a channel normalisation's optional state, `[weight, bias, running_mean,
/// running_var, num_batches_tracked]`, under PyTorch's keys: the first two as parameters, the
/// rest as buffers, skipping the absent ones. It is the `Module::visit` of [`BatchNorm`],
/// [`InstanceNorm`] and kiln-distributed's `SyncBatchNorm`.
///
/// [`BatchNorm`]: crate::BatchNorm
/// [`InstanceNorm`]: crate::InstanceNorm
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_nn::{visit_channel_norm, TensorKind};
/// use kiln_tensor::Tensor;
/// let w = Some(Var::param(Tensor::<f32>::ones(&[2])));
/// let mean = Some(Var::constant(Tensor::<f32>::zeros(&[2])));
/// let mut seen = Vec::new();
/// visit_channel_norm("bn.", [&w, &None, &mean, &None, &None], &mut |k, _, kind| seen.push((k.to_string(), kind)));
/// assert_eq!(seen, [("bn.weight".to_string(), TensorKind::Parameter), ("bn.running_mean".into(), TensorKind::Buffer)]);
/// ```
pub fn visit_channel_norm<E: Float>(
    prefix: &str,
    state: [&Option<Var<E>>; 5],
    f: &mut dyn FnMut(&str, &Var<E>, TensorKind),
) {
    for (i, (key, v)) in KEYS.into_iter().zip(state).enumerate() {
        match v {
            Some(v) if i < 2 => visit_param(prefix, key, v, f),
            Some(v) => visit_buffer(prefix, key, v, f),
            None => {}
        }
    }
}

/// `x` normalised with running statistics, `(x - running_mean) / √(running_var + ε)`, then
/// scaled by `weight` and shifted by `bias` where present; `cs` is the `[1, C, 1, ..]` shape
/// the per-channel vectors broadcast as. The evaluation-mode forward of the channel
/// normalisations (and, with `running = None`, the affine step of their training forward).
pub fn channel_norm_output<E: Float>(
    normalized: Option<Var<E>>,
    x: &Var<E>,
    [weight, bias, running_mean, running_var, _]: [&Option<Var<E>>; 5],
    eps: f64,
    cs: &[usize],
) -> Var<E> {
    let mut y = normalized.unwrap_or_else(|| {
        let rm = running_mean.as_ref().map(|m| m.reshape(cs)).expect("tracked");
        let rv = running_var.as_ref().map(|v| v.reshape(cs)).expect("tracked");
        x.sub(&rm).mul(&rv.add_scalar(E::from_f64(eps)).rsqrt())
    });
    if let Some(w) = weight {
        y = y.mul(&w.reshape(cs));
    }
    if let Some(b) = bias {
        y = y.add(&b.reshape(cs));
    }
    y
}

/// Folds one training batch's per-channel statistics (`mean` and biased `var`, any shape of
/// `C` values, over `count` values per channel) into `[running_mean, running_var,
/// num_batches_tracked]` as `torch.nn.BatchNorm` does: the count goes up by one and
/// `running = (1 - m) running + m batch` with the **unbiased** variance, `m` the momentum or,
/// for `None`, `1 / num_batches_tracked`. Does nothing when the statistics are not tracked.
pub fn update_batch_norm_stats<E: Float>(
    [running_mean, running_var, num_batches_tracked]: [&Option<Var<E>>; 3],
    momentum: Option<f64>,
    mean: &Tensor<E>,
    var: &Tensor<E>,
    count: f64,
) {
    let (Some(rm), Some(rv), Some(nbt)) = (running_mean, running_var, num_batches_tracked) else {
        return;
    };
    let c = rm.shape()[0];
    no_grad(|| {
        nbt.update_value(|n| *n = n.add_scalar(E::one()));
        let factor = match momentum {
            Some(m) => m,
            None => 1.0 / <E as Float>::to_f64(nbt.item()),
        };
        let (keep, new) = (E::from_f64(1.0 - factor), E::from_f64(factor));
        let unbiased = var.reshape(&[c]).mul_scalar(E::from_f64(count / (count - 1.0)));
        rm.update_value(|r| *r = r.mul_scalar(keep).add(&mean.reshape(&[c]).mul_scalar(new)));
        rv.update_value(|r| *r = r.mul_scalar(keep).add(&unbiased.mul_scalar(new)));
    });
}

/// The optional state of `c` channels, `[weight, bias, running_mean, running_var,
/// num_batches_tracked]`: parameters with `affine`, buffers with `track`, all zeros (the
/// layers' `reset_parameters` then sets them).
pub(crate) fn channel_norm_state<E: Float>(c: usize, affine: bool, track: bool) -> [Option<Var<E>>; 5] {
    let vec = || Var::param(Tensor::zeros(&[c]));
    let buf = |shape: &[usize]| Var::constant(Tensor::zeros(shape));
    [affine.then(vec), affine.then(vec), track.then(|| buf(&[c])), track.then(|| buf(&[c])), track.then(|| buf(&[]))]
}

/// Running mean 0, running variance 1, no batches tracked (where present).
pub(crate) fn reset_running_stats<E: Float>([mean, var, count]: [&Option<Var<E>>; 3]) {
    no_grad(|| {
        for (v, one) in [(mean, false), (var, true), (count, false)] {
            match v {
                Some(v) if one => init::ones_(v),
                Some(v) => init::zeros_(v),
                None => {}
            }
        }
    })
}

/// γ to ones and β to zeros (where present), as PyTorch resets them.
pub(crate) fn reset_affine<E: Float>([weight, bias]: [&Option<Var<E>>; 2]) {
    if let Some(w) = weight {
        init::ones_(w);
    }
    if let Some(b) = bias {
        init::zeros_(b);
    }
}

/// The configuration checks of `BatchNorm` and `InstanceNorm` (`name` starts the message).
pub(crate) fn check_channel_norm_config(
    name: &str,
    num_features: usize,
    eps: f64,
    momentum: Option<f64>,
) -> Result<(), NnError> {
    if num_features == 0 {
        return Err(NnError::Config(format!("{name}: num_features must be > 0, got 0")));
    }
    if !(eps >= 0.0 && eps.is_finite()) {
        return Err(NnError::Config(format!("{name}: eps must be finite and >= 0, got {eps}")));
    }
    if let Some(m) = momentum {
        if !(0.0..=1.0).contains(&m) {
            return Err(NnError::Config(format!("{name}: momentum must be in [0, 1], got {m}")));
        }
    }
    Ok(())
}

/// `Name(C, eps=.., momentum=.., affine=.., track_running_stats=..` (without the closing
/// parenthesis, for callers that add fields), the start of the layers' `Display`.
pub(crate) fn describe_channel_norm(
    name: &str,
    num_features: usize,
    eps: f64,
    momentum: Option<f64>,
    affine: bool,
    track: bool,
) -> String {
    let momentum = momentum.map_or("None".to_string(), |m| format!("{m:?}"));
    format!("{name}({num_features}, eps={eps:?}, momentum={momentum}, affine={affine}, track_running_stats={track}")
}

/// The `momentum` of an architecture file: absent is PyTorch's 0.1, `null` is `None`.
pub(crate) fn momentum_arg(a: &mut Args) -> Result<Option<f64>, NnError> {
    match a.take_raw("momentum") {
        None => Ok(Some(0.1)),
        Some(Value::Null) => Ok(None),
        Some(v) => Ok(Some(a.as_f64("momentum", &v)?)),
    }
}
