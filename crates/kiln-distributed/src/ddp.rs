//! [`DistributedDataParallel`]: a model whose gradients are averaged over every rank during
//! backward, in buckets, as PyTorch's `torch.nn.parallel.DistributedDataParallel` does.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kiln_autograd::{is_grad_enabled, no_grad, queue_callback, HookHandle, Var};
use kiln_nn::{Forward, Module, TensorKind};
use kiln_tensor::Tensor;

use crate::error::DistributedError;
use crate::process_group::{Pending, ProcessGroup};

/// Options of [`DistributedDataParallel`] (PyTorch's defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct DdpConfig {
    /// The size of a gradient bucket in MiB (default 25). The first bucket (the last layers,
    /// whose gradients are ready first) is capped at 1 MiB so communication starts early, as
    /// in PyTorch.
    pub bucket_cap_mb: f64,
    /// Whether a parameter may receive no gradient in a backward pass (default false: such a
    /// pass panics, naming the parameters, because the ranks' gradients could not be
    /// averaged). When true, a parameter unused on this rank contributes zero, and one unused
    /// on every rank keeps no gradient (the optimiser skips it).
    pub find_unused_parameters: bool,
    /// Whether buffers (BatchNorm's running statistics) are broadcast from rank 0 at every
    /// training forward (default true), so every rank evaluates with the same statistics.
    pub broadcast_buffers: bool,
}

impl Default for DdpConfig {
    fn default() -> Self {
        DdpConfig { bucket_cap_mb: 25.0, find_unused_parameters: false, broadcast_buffers: true }
    }
}

/// PyTorch's `_DEFAULT_FIRST_BUCKET_BYTES`.
const FIRST_BUCKET_BYTES: usize = 1024 * 1024;

/// Data-parallel training: every rank holds a replica of `module` and trains it on its own
/// share of each batch; gradients are averaged over the ranks during backward, so every
/// replica takes the same optimiser step and stays identical, as PyTorch's
/// `DistributedDataParallel` does.
///
/// * At construction, every rank's parameters and buffers must have the same shapes (it is
///   refused otherwise, naming the tensor and both ranks' shapes), and rank 0's values are
///   broadcast to every rank.
/// * The parameters that require grad are grouped in **buckets** of about
///   [`bucket_cap_mb`](DdpConfig::bucket_cap_mb), in reverse registration order (roughly the
///   order in which backward produces their gradients). A hook on each parameter
///   ([`Var::register_post_accumulate_grad_hook`]) notes when its gradient is final; when a
///   bucket is complete its all-reduce starts on the communication thread while backward goes
///   on. At the end of backward ([`queue_callback`]) every bucket is waited for and each
///   gradient is replaced by the average over the ranks. Buckets start in bucket order on
///   every rank, as MPI requires.
/// * [`no_sync`](Self::no_sync) skips the averaging (gradient accumulation); the next
///   backward outside it averages the accumulated gradients.
/// * In training mode, buffers are broadcast from rank 0 before each forward
///   ([`broadcast_buffers`](DdpConfig::broadcast_buffers)); use
///   [`SyncBatchNorm`](crate::SyncBatchNorm) for batch statistics over every rank.
///
/// `DistributedDataParallel` is itself a [`Module`] and a [`Forward`] with the wrapped
/// model's parameter names (it does not add PyTorch's `module.` prefix, so a checkpoint loads
/// into the plain model), so [`Trainer::fit`](kiln_train::Trainer::fit) trains it unchanged;
/// build the optimiser over its [`parameters`](Module::parameters).
///
/// ```no_run
/// use kiln_distributed::{init, DdpConfig, DistributedDataParallel};
/// use kiln_nn::{Linear, Module, Forward};
/// use kiln_optim::{Optimizer, SGD, SGDConfig};
/// # fn main() -> Result<(), kiln_distributed::DistributedError> {
/// let pg = init()?; // run under `mpirun -np 2 ...`
/// let model = DistributedDataParallel::new(Linear::new(4, 1), &pg, DdpConfig::default())?;
/// let mut opt = SGD::new(model.parameters(), SGDConfig { lr: 0.1, ..Default::default() });
/// // ... forward this rank's share of the batch, backward (gradients are averaged), then:
/// opt.step();
/// # Ok(()) }
/// ```
pub struct DistributedDataParallel<M> {
    module: M,
    pg: Arc<ProcessGroup>,
    reducer: Arc<Reducer>,
    hooks: Vec<HookHandle<f32>>,
    config: DdpConfig,
}

struct Reducer {
    pg: Arc<ProcessGroup>,
    params: Vec<Var<f32>>,
    names: Vec<String>,
    buckets: Vec<Vec<usize>>,
    bucket_of: Vec<usize>,
    find_unused: bool,
    no_sync: AtomicBool,
    pass: Mutex<PassState>,
}

#[derive(Default)]
struct PassState {
    active: bool,
    ready: Vec<bool>,
    remaining: Vec<usize>,
    next: usize,
    pending: Vec<Pending<Vec<f32>>>,
    /// Buckets of the last synchronised pass started before backward ended.
    last_started_early: usize,
    /// The flat buffers of the last pass's buckets, reused by the next (a bucket of a few
    /// MiB allocated afresh each step costs a page fault per page).
    spare: Vec<Vec<f32>>,
}

impl<M: Module<f32>> DistributedDataParallel<M> {
    /// Wraps `module`: checks that every rank's model has the same tensors, broadcasts rank
    /// 0's parameters and buffers, builds the gradient buckets and registers the hooks.
    /// Every rank must call it (it is collective).
    ///
    /// # Errors
    /// [`DistributedError::TensorCount`] or [`DistributedError::ShapeMismatch`] (naming the
    /// tensor and both ranks' shapes) when the ranks' models differ; every rank returns the
    /// same error.
    pub fn new(module: M, pg: &Arc<ProcessGroup>, config: DdpConfig) -> Result<Self, DistributedError> {
        assert!(
            config.bucket_cap_mb > 0.0 && config.bucket_cap_mb.is_finite(),
            "DistributedDataParallel: bucket_cap_mb must be > 0, got {}",
            config.bucket_cap_mb
        );
        let mut tensors: Vec<(String, Var<f32>)> = Vec::new();
        module.visit("", &mut |n, v, _| tensors.push((n.to_string(), v.clone())));
        check_same_shapes(pg, &tensors)?;
        broadcast_values(pg, tensors.iter().map(|(_, v)| v));

        let (names, params): (Vec<String>, Vec<Var<f32>>) =
            module.named_parameters().into_iter().filter(|(_, p)| p.requires_grad()).unzip();
        let buckets = make_buckets(&params, config.bucket_cap_mb);
        let mut bucket_of = vec![0; params.len()];
        for (b, idx) in buckets.iter().enumerate() {
            for &i in idx {
                bucket_of[i] = b;
            }
        }
        let reducer = Arc::new(Reducer {
            pg: pg.clone(),
            params,
            names,
            buckets,
            bucket_of,
            find_unused: config.find_unused_parameters,
            no_sync: AtomicBool::new(false),
            pass: Mutex::new(PassState::default()),
        });
        reducer.reset(&mut reducer.pass.lock().unwrap_or_else(|e| e.into_inner()));
        let hooks = reducer
            .params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                // Weak: the hook (owned by the parameter) must not keep the reducer (which
                // holds the parameter) alive; once the wrapper is gone the hook does nothing.
                let r = Arc::downgrade(&reducer);
                p.register_post_accumulate_grad_hook(move |_| {
                    if let Some(r) = r.upgrade() {
                        Reducer::grad_ready(&r, i)
                    }
                })
            })
            .collect();
        Ok(DistributedDataParallel { module, pg: pg.clone(), reducer, hooks, config })
    }

    /// The wrapped model.
    pub fn module(&self) -> &M {
        &self.module
    }

    /// The wrapped model, mutably.
    pub fn module_mut(&mut self) -> &mut M {
        &mut self.module
    }

    /// The wrapped model, unwrapped (the gradient hooks are removed; dropping the wrapper
    /// instead leaves them in place but inert).
    pub fn into_inner(mut self) -> M {
        for h in self.hooks.drain(..) {
            h.remove();
        }
        self.module
    }

    /// The process group.
    pub fn process_group(&self) -> &Arc<ProcessGroup> {
        &self.pg
    }

    /// The options it was built with.
    pub fn config(&self) -> &DdpConfig {
        &self.config
    }

    /// The gradient buckets as parameter names, in the order they are reduced.
    pub fn bucket_names(&self) -> Vec<Vec<String>> {
        self.reducer.buckets.iter().map(|b| b.iter().map(|&i| self.reducer.names[i].clone()).collect()).collect()
    }

    /// How many of the buckets of the last synchronised backward pass started their
    /// all-reduce while backward was still running (the others started when it ended): a
    /// measure of how much communication could overlap computation (the last bucket starts
    /// when the first layer's gradients are done; buckets left waiting for unused
    /// parameters start at the end).
    pub fn buckets_started_during_backward(&self) -> usize {
        self.reducer.pass.lock().unwrap_or_else(|e| e.into_inner()).last_started_early
    }

    /// Runs `f` (forwards and backwards) without averaging gradients, which accumulate
    /// locally; the first backward after it averages the accumulated gradients. Like
    /// PyTorch's `with ddp.no_sync():`, for gradient accumulation without communication.
    ///
    /// Every rank must use it for the same passes.
    pub fn no_sync<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore<'a>(&'a AtomicBool, bool);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                self.0.store(self.1, Ordering::SeqCst);
            }
        }
        let _restore = Restore(&self.reducer.no_sync, self.reducer.no_sync.swap(true, Ordering::SeqCst));
        f()
    }

    /// Broadcasts rank 0's buffers to every rank (what each training forward does when
    /// [`broadcast_buffers`](DdpConfig::broadcast_buffers) is on).
    pub fn sync_buffers(&self) {
        let buffers: Vec<Var<f32>> = self.module.named_buffers().into_iter().map(|(_, b)| b).collect();
        if !buffers.is_empty() {
            broadcast_values(&self.pg, buffers.iter());
        }
    }
}

/// Groups parameters (by index) into buckets in reverse registration order: the first
/// bucket up to 1 MiB, the others up to `cap_mb` MiB (a larger parameter gets a bucket of
/// its own).
fn make_buckets(params: &[Var<f32>], cap_mb: f64) -> Vec<Vec<usize>> {
    let cap = (cap_mb * 1024.0 * 1024.0) as usize;
    let mut buckets: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut bytes = 0usize;
    for i in (0..params.len()).rev() {
        let limit = if buckets.is_empty() { FIRST_BUCKET_BYTES.min(cap) } else { cap };
        let b = params[i].numel() * std::mem::size_of::<f32>();
        if !current.is_empty() && bytes + b > limit {
            buckets.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push(i);
        bytes += b;
    }
    if !current.is_empty() {
        buckets.push(current);
    }
    buckets
}

fn check_same_shapes(pg: &ProcessGroup, tensors: &[(String, Var<f32>)]) -> Result<(), DistributedError> {
    // Each rank describes its tensors as [ndim, dims...] per tensor.
    let mut desc: Vec<u64> = Vec::new();
    let shapes: Vec<Vec<usize>> = tensors.iter().map(|(_, v)| v.shape().to_vec()).collect();
    for s in &shapes {
        desc.push(s.len() as u64);
        desc.extend(s.iter().map(|&d| d as u64));
    }
    let all = pg.all_gather_varlen_u64(&desc);
    let parse = |d: &[u64]| -> Vec<Vec<usize>> {
        let mut out = Vec::new();
        let mut k = 0;
        while k < d.len() {
            let n = d[k] as usize;
            out.push(d[k + 1..k + 1 + n].iter().map(|&x| x as usize).collect());
            k += 1 + n;
        }
        out
    };
    let rank0 = parse(&all[0]);
    for (r, d) in all.iter().enumerate().skip(1) {
        let other = parse(d);
        for (i, (a, b)) in rank0.iter().zip(&other).enumerate() {
            if a != b {
                // Named as this rank knows the tensor (the names agree when the counts do).
                let name = tensors.get(i).map_or_else(|| format!("tensor #{i}"), |(n, _)| n.clone());
                return Err(DistributedError::ShapeMismatch {
                    name,
                    rank0_shape: a.clone(),
                    rank: r,
                    other_shape: b.clone(),
                });
            }
        }
        if other.len() != rank0.len() {
            return Err(DistributedError::TensorCount { rank0: rank0.len(), rank: r, other: other.len() });
        }
    }
    Ok(())
}

/// Rank 0's values of `vars` on every rank (one broadcast of their concatenation).
fn broadcast_values<'a>(pg: &ProcessGroup, vars: impl Iterator<Item = &'a Var<f32>> + Clone) {
    if pg.world_size() == 1 {
        return;
    }
    let flat: Vec<f32> = vars.clone().flat_map(|v| v.with_value(|t| t.to_vec())).collect();
    let flat = pg.broadcast_f32(flat, 0);
    let mut k = 0;
    no_grad(|| {
        for v in vars {
            let shape = v.shape();
            let n = v.numel();
            v.set_value(Tensor::from_vec(flat[k..k + n].to_vec(), shape.as_slice()));
            k += n;
        }
    });
}

impl Reducer {
    fn reset(&self, s: &mut PassState) {
        s.active = false;
        s.ready = vec![false; self.params.len()];
        s.remaining = self.buckets.iter().map(Vec::len).collect();
        s.next = 0;
        s.pending.clear();
    }

    /// The hook of parameter `i`: its gradient for this pass is final.
    fn grad_ready(this: &Arc<Reducer>, i: usize) {
        if this.no_sync.load(Ordering::SeqCst) {
            return;
        }
        let mut s = this.pass.lock().unwrap_or_else(|e| e.into_inner());
        if !s.active {
            s.active = true;
            let r = this.clone();
            queue_callback(move || r.finish_pass());
        }
        if !s.ready[i] {
            s.ready[i] = true;
            s.remaining[this.bucket_of[i]] -= 1;
        }
        this.launch_ready(&mut s);
    }

    /// Starts the all-reduce of every complete bucket, in bucket order.
    fn launch_ready(&self, s: &mut PassState) {
        while s.next < self.buckets.len() && s.remaining[s.next] == 0 {
            // One copy of each gradient into the bucket (a contiguous gradient by slice, not
            // element by element).
            let bucket = &self.buckets[s.next];
            let mut flat = s.spare.pop().unwrap_or_default();
            flat.clear();
            flat.reserve(bucket.iter().map(|&i| self.params[i].numel()).sum());
            for &i in bucket {
                match self.params[i].grad() {
                    Some(g) => match g.as_slice() {
                        Some(v) => flat.extend_from_slice(v),
                        None => flat.extend(g.to_vec()),
                    },
                    None => flat.resize(flat.len() + self.params[i].numel(), 0.0),
                }
            }
            s.pending.push(self.pg.all_reduce_sum_f32_async(flat));
            s.next += 1;
        }
    }

    /// The end of backward: starts the buckets still waiting for unused parameters, waits for
    /// every bucket and writes the averaged gradients back.
    fn finish_pass(&self) {
        let mut s = self.pass.lock().unwrap_or_else(|e| e.into_inner());
        s.last_started_early = s.next;
        let missing: Vec<usize> = (0..self.params.len()).filter(|&i| !s.ready[i]).collect();
        if !missing.is_empty() && !self.find_unused {
            let names: Vec<&str> = missing.iter().map(|&i| self.names[i].as_str()).collect();
            panic!(
                "DistributedDataParallel: these parameters received no gradient in this backward pass: {}; \
                 build it with DdpConfig {{ find_unused_parameters: true, .. }} if the model does not use \
                 every parameter in every forward (or freeze them with requires_grad_(false))",
                names.join(", ")
            );
        }
        // Parameters unused in this pass may still hold a gradient accumulated under no_sync.
        let had_grad: Vec<bool> = self.params.iter().map(|p| p.grad().is_some()).collect();
        for &i in &missing {
            s.ready[i] = true;
            s.remaining[self.bucket_of[i]] -= 1;
        }
        self.launch_ready(&mut s);
        let used = if self.find_unused {
            let flags = had_grad.iter().map(|&u| if u { 1.0 } else { 0.0 }).collect();
            Some(self.pg.all_reduce_sum_f32_async(flags))
        } else {
            None
        };
        let world = self.pg.world_size() as f32;
        let pending = std::mem::take(&mut s.pending);
        for (b, p) in pending.into_iter().enumerate() {
            let sum = p.wait();
            let mut k = 0;
            for &i in &self.buckets[b] {
                let shape = self.params[i].shape();
                let n = self.params[i].numel();
                // from_slice and map take their buffers from kiln's pool
                let avg = Tensor::from_slice(&sum[k..k + n], shape.as_slice()).map(|x| x / world);
                self.params[i].set_grad(Some(avg));
                k += n;
            }
            s.spare.push(sum);
        }
        if let Some(u) = used {
            for (i, count) in u.wait().into_iter().enumerate() {
                if count == 0.0 {
                    self.params[i].set_grad(None);
                }
            }
        }
        self.reset(&mut s);
    }
}

impl<M: Module<f32>> Module<f32> for DistributedDataParallel<M> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<f32>, TensorKind)) {
        self.module.visit(prefix, f)
    }
    fn set_training(&mut self, training: bool) {
        self.module.set_training(training)
    }
    fn is_training(&self) -> bool {
        self.module.is_training()
    }
}

impl<M: Module<f32> + Forward<f32>> Forward<f32> for DistributedDataParallel<M> {
    /// The wrapped model's forward, after broadcasting rank 0's buffers when training with
    /// gradients on and [`broadcast_buffers`](DdpConfig::broadcast_buffers) set.
    fn forward(&self, x: &Var<f32>) -> Var<f32> {
        if self.config.broadcast_buffers && self.module.is_training() && is_grad_enabled() {
            self.sync_buffers();
        }
        self.module.forward(x)
    }
}

impl<M: fmt::Display> fmt::Display for DistributedDataParallel<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DistributedDataParallel(rank {} of {}, {} buckets)\n{}",
            self.pg.rank(),
            self.pg.world_size(),
            self.reducer.buckets.len(),
            self.module
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: usize) -> Var<f32> {
        Var::param(Tensor::zeros(&[n]))
    }

    #[test]
    fn buckets_follow_reverse_registration_order_and_the_caps() {
        // 1 MiB first bucket = 262144 f32; later buckets 2 MiB = 524288 f32.
        let params = vec![p(300_000), p(200_000), p(100_000), p(200_000), p(10)];
        let b = make_buckets(&params, 2.0);
        assert_eq!(b, vec![vec![4, 3], vec![2, 1], vec![0]]);
        // A parameter larger than the cap gets its own bucket.
        let b = make_buckets(&[p(10), p(2_000_000), p(10)], 1.0);
        assert_eq!(b, vec![vec![2], vec![1], vec![0]]);
    }
}
