//! [`SyncBatchNorm`]: batch normalisation whose statistics cover every rank's batch, and
//! [`all_reduce_sum`], the differentiable all-reduce it is built from.

use std::fmt;
use std::sync::Arc;

use kiln_autograd::{no_grad, Backward, Grads, Inputs, Var};
use kiln_nn::{visit_buffer, visit_param, BatchNorm, BatchNormConfig, Forward, Module, TensorKind};
use kiln_tensor::Tensor;

use crate::process_group::ProcessGroup;

struct AllReduceSum {
    pg: Arc<ProcessGroup>,
}

impl Backward<f32> for AllReduceSum {
    fn name(&self) -> &'static str {
        "all_reduce_sum"
    }
    // y_r = sum_s x_s on every rank r, and the ranks' losses are averaged by
    // DistributedDataParallel, so d L / d x_s = sum_r d L_r / d y_r: the same all-reduce.
    fn backward(&self, grad: &Var<f32>, _inputs: &[Var<f32>], _output: &Var<f32>) -> Grads<f32> {
        let g = grad.value();
        let sum = self.pg.all_reduce_sum_f32(g.to_vec());
        let mut out = Grads::new();
        out.push(Some(Var::constant(Tensor::from_vec(sum, g.shape()))));
        out
    }
}

/// The element-wise sum of `x` over every rank, differentiable (its backward all-reduces the
/// gradient), like `torch.distributed.nn.functional.all_reduce`. Every rank must call it with
/// the same shape. Its backward is not itself differentiable (no higher-order gradients).
pub fn all_reduce_sum(x: &Var<f32>, pg: &Arc<ProcessGroup>) -> Var<f32> {
    let shape = x.shape();
    let sum = pg.all_reduce_sum_f32(x.with_value(|v| v.to_vec()));
    let inputs: Inputs<f32> = std::iter::once(x.clone()).collect();
    Var::from_op(Tensor::from_vec(sum, shape.as_slice()), inputs, AllReduceSum { pg: pg.clone() })
}

/// Batch normalisation with the batch statistics taken over every rank's batch, like
/// `torch.nn.SyncBatchNorm`: in training, a data-parallel run with a per-rank batch of `b`
/// normalises exactly as one process would with the global batch of `b * world_size`.
///
/// `y = (x - E[x]) / sqrt(Var[x] + eps) * γ + β`, with `E` and `Var` (biased) over `N` and the
/// spatial dims of every rank's input: two differentiable all-reduces per forward ([`all_reduce_sum`]
/// of the per-channel sums, then of the squared deviations) and their two in backward. The
/// running statistics (unbiased variance over the global count) and evaluation mode are
/// [`BatchNorm`]'s, with the same parameter and buffer names, so a `BatchNorm2d`'s state dict
/// loads into it and back.
///
/// # Shapes
/// Input `[N, C, *]`, output the same.
///
/// # Parameters
/// `weight` `[C]` (ones), `bias` `[C]` (zeros) when affine; buffers `running_mean` `[C]`,
/// `running_var` `[C]`, `num_batches_tracked` `[]`.
pub struct SyncBatchNorm {
    /// The configuration (PyTorch's defaults).
    pub config: BatchNormConfig,
    /// γ, `[C]`, when `affine`.
    pub weight: Option<Var<f32>>,
    /// β, `[C]`, when `affine`.
    pub bias: Option<Var<f32>>,
    /// `[C]`, when tracking running statistics.
    pub running_mean: Option<Var<f32>>,
    /// `[C]`, when tracking running statistics.
    pub running_var: Option<Var<f32>>,
    /// `[]`, when tracking running statistics.
    pub num_batches_tracked: Option<Var<f32>>,
    pg: Arc<ProcessGroup>,
    training: bool,
}

impl SyncBatchNorm {
    /// A layer with PyTorch's defaults for `num_features` channels over the ranks of `pg`.
    ///
    /// **Panics** if `num_features` is zero.
    pub fn new(num_features: usize, pg: &Arc<ProcessGroup>) -> Self {
        let bn: kiln_nn::BatchNorm2d = BatchNorm::new(num_features);
        Self::from_batch_norm(bn, pg)
    }

    /// The synchronised form of a [`BatchNorm`] layer, keeping its parameters, buffers,
    /// configuration and mode (PyTorch's `convert_sync_batchnorm`, one layer at a time).
    pub fn from_batch_norm<const D: usize>(bn: BatchNorm<f32, D>, pg: &Arc<ProcessGroup>) -> Self {
        let training = bn.is_training();
        SyncBatchNorm {
            config: bn.config,
            weight: bn.weight,
            bias: bn.bias,
            running_mean: bn.running_mean,
            running_var: bn.running_var,
            num_batches_tracked: bn.num_batches_tracked,
            pg: pg.clone(),
            training,
        }
    }

    fn update_running_stats(&self, mean: &Tensor<f32>, var: &Tensor<f32>, count: f64) {
        let (Some(rm), Some(rv), Some(nbt)) = (&self.running_mean, &self.running_var, &self.num_batches_tracked) else {
            return;
        };
        let c = self.config.num_features;
        no_grad(|| {
            nbt.update_value(|n| *n = n.add_scalar(1.0));
            let factor = match self.config.momentum {
                Some(m) => m,
                None => 1.0 / nbt.item() as f64,
            };
            let (keep, new) = ((1.0 - factor) as f32, factor as f32);
            let unbiased = var.reshape(&[c]).mul_scalar((count / (count - 1.0)) as f32);
            rm.update_value(|r| *r = r.mul_scalar(keep).add(&mean.reshape(&[c]).mul_scalar(new)));
            rv.update_value(|r| *r = r.mul_scalar(keep).add(&unbiased.mul_scalar(new)));
        });
    }
}

impl Forward<f32> for SyncBatchNorm {
    fn forward(&self, x: &Var<f32>) -> Var<f32> {
        let shape = x.shape();
        let c = self.config.num_features;
        assert!(
            shape.len() >= 2 && shape[1] == c,
            "SyncBatchNorm: expected input [N, {c}, *], got {:?}",
            shape.as_slice()
        );
        let mut cs = vec![1usize; shape.len()];
        cs[1] = c;
        let eps = self.config.eps as f32;
        let mut y = if self.training || self.running_mean.is_none() {
            let axes: Vec<isize> = (0..shape.len()).filter(|&d| d != 1).map(|d| d as isize).collect();
            let local = (shape.iter().product::<usize>() / c) as f64;
            let count = self.pg.all_reduce_sum_f64(vec![local])[0];
            assert!(
                count > 1.0,
                "SyncBatchNorm: expected more than 1 value per channel over all ranks when training, got input {:?}",
                shape.as_slice()
            );
            let n = count as f32;
            let mean = all_reduce_sum(&x.sum(&axes, true), &self.pg).div_scalar(n);
            let d = x.sub(&mean);
            let var = all_reduce_sum(&d.mul(&d).sum(&axes, true), &self.pg).div_scalar(n);
            if self.training {
                self.update_running_stats(&mean.value(), &var.value(), count);
            }
            d.mul(&var.add_scalar(eps).rsqrt())
        } else {
            let rm = self.running_mean.as_ref().map(|m| m.reshape(&cs)).expect("tracked");
            let rv = self.running_var.as_ref().map(|v| v.reshape(&cs)).expect("tracked");
            x.sub(&rm).mul(&rv.add_scalar(eps).rsqrt())
        };
        if let Some(w) = &self.weight {
            y = y.mul(&w.reshape(&cs));
        }
        if let Some(b) = &self.bias {
            y = y.add(&b.reshape(&cs));
        }
        y
    }
}

impl Module<f32> for SyncBatchNorm {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<f32>, TensorKind)) {
        if let Some(w) = &self.weight {
            visit_param(prefix, "weight", w, f);
        }
        if let Some(b) = &self.bias {
            visit_param(prefix, "bias", b, f);
        }
        if let Some(m) = &self.running_mean {
            visit_buffer(prefix, "running_mean", m, f);
        }
        if let Some(v) = &self.running_var {
            visit_buffer(prefix, "running_var", v, f);
        }
        if let Some(n) = &self.num_batches_tracked {
            visit_buffer(prefix, "num_batches_tracked", n, f);
        }
    }
    fn set_training(&mut self, training: bool) {
        self.training = training;
    }
    fn is_training(&self) -> bool {
        self.training
    }
}

impl fmt::Display for SyncBatchNorm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let momentum = c.momentum.map_or("None".to_string(), |m| format!("{m:?}"));
        write!(
            f,
            "SyncBatchNorm({}, eps={:?}, momentum={momentum}, affine={}, track_running_stats={}, world_size={}) [{} parameters]",
            c.num_features,
            c.eps,
            c.affine,
            c.track_running_stats,
            self.pg.world_size(),
            self.num_parameters()
        )
    }
}
