//! Gradient checkpointing (`torch.utils.checkpoint`, non-reentrant semantics): a segment's
//! forward runs without recording its graph, only its inputs are kept, and backward recomputes
//! the segment with recording on before differentiating through it.

use std::sync::Arc;

use kiln_tensor::{Float, Rng};

use crate::mode::{no_grad, set_grad_enabled};
use crate::ops::OpFn;
use crate::var::{Grads, Var};

/// Runs `f(inputs, rng)` keeping only the inputs: the intermediate activations of the
/// segment are not stored, and the forward is run again during backward to differentiate it,
/// trading compute for memory as `torch.utils.checkpoint.checkpoint(f, *inputs,
/// use_reentrant=False)` does.
///
/// kiln has no global random generator: the randomness of the segment (dropout masks) is drawn
/// from the `rng` handed to `f`. Its state is saved before the forward and the recomputation
/// starts again from that state, so the masks match those of the forward
/// (`preserve_rng_state=True`); `rng` itself advances exactly as a plain call of `f` would
/// advance it.
///
/// Gradients flow to every input that requires grad and to the parameters `f` captures (they
/// are leaves of the recomputed graph and accumulate their `.grad()` there). The result is a
/// first-order gradient: differentiating the checkpoint's backward again (`create_graph`)
/// reaches the recomputed graph's leaves, not `inputs`.
///
/// ```
/// use kiln_autograd::{checkpoint, Var};
/// use kiln_tensor::{Rng, Tensor};
/// let w = Var::param(Tensor::from_vec(vec![0.5f64, -1.0, 2.0], &[3]));
/// let x = Var::param(Tensor::from_vec(vec![1.0f64, 2.0, 3.0], &[3]));
/// let w2 = w.clone();
/// let seg = move |xs: &[Var<f64>], rng: &mut Rng| xs[0].mul(&w2).tanh().dropout(0.5, true, rng);
/// let y = checkpoint(seg.clone(), &[x.clone()], &mut Rng::new(7));
/// y.sum_all().backward();
/// let (gx, gw) = (x.grad().unwrap(), w.grad().unwrap());
/// x.zero_grad();
/// w.zero_grad();
/// seg(&[x.clone()], &mut Rng::new(7)).sum_all().backward(); // the plain run
/// assert_eq!(x.grad().unwrap().to_vec(), gx.to_vec());
/// assert_eq!(w.grad().unwrap().to_vec(), gw.to_vec());
/// ```
pub fn checkpoint<E: Float, F>(f: F, inputs: &[Var<E>], rng: &mut Rng) -> Var<E>
where
    F: Fn(&[Var<E>], &mut Rng) -> Var<E> + Send + Sync + 'static,
{
    let saved_rng = rng.clone();
    let detached: Vec<Var<E>> = inputs.iter().map(Var::detach).collect();
    let out = no_grad(|| f(&detached, rng));
    let value = out.value();
    if !crate::mode::is_grad_enabled() {
        return Var::constant(value);
    }
    let f = Arc::new(f);
    let n = inputs.len();
    // A hidden leaf that requires grad, so that parameters captured by `f` receive gradients
    // even when no input requires grad (as with non-reentrant `torch.utils.checkpoint`).
    let mut recorded: crate::var::Inputs<E> = inputs.iter().cloned().collect();
    recorded.push(Var::param(kiln_tensor::Tensor::zeros(&[])));
    Var::from_op(
        value,
        recorded,
        OpFn {
            name: "checkpoint",
            f: move |g: &Var<E>, ins: &[Var<E>], _out: &Var<E>| -> Grads<E> {
                // Recompute the segment with recording on, from fresh leaves holding the inputs'
                // values, and the generator as it was at the forward.
                let leaves: Vec<Var<E>> = ins[..n].iter().map(|i| Var::new(i.value(), i.requires_grad())).collect();
                let _on = set_grad_enabled(true);
                let mut r = saved_rng.clone();
                let y = f(&leaves, &mut r);
                if !y.requires_grad() {
                    return ins.iter().map(|_| None).collect();
                }
                // Backward through the recomputed graph: captured parameters accumulate their
                // gradients as in a plain run; the leaves' gradients are returned to the engine.
                let seed = Var::constant(g.value());
                let wanted: Vec<Var<E>> = leaves.iter().filter(|l| l.requires_grad()).cloned().collect();
                y.backward_with(&seed.value());
                let mut it = wanted.iter();
                let mut grads: Grads<E> = leaves
                    .iter()
                    .map(|l| if l.requires_grad() { it.next().and_then(Var::grad).map(Var::constant) } else { None })
                    .collect();
                grads.push(None);
                grads
            },
        },
    )
}

/// One step of a [`checkpoint_sequential`] chain: a function of the running activation that
/// draws any randomness it needs from the generator it is given.
pub type SequentialLayer<E> = Arc<dyn Fn(&Var<E>, &mut Rng) -> Var<E> + Send + Sync>;

/// Splits `layers` (a sequence of functions applied in turn, like an `nn.Sequential`) into
/// `segments` consecutive chunks and checkpoints each chunk but the last, as
/// `torch.utils.checkpoint.checkpoint_sequential(functions, segments, input,
/// use_reentrant=False)` does (its last segment runs normally, as its output is needed
/// anyway).
///
/// **Panics** if `segments` is 0 or larger than the number of layers.
///
/// ```
/// use std::sync::Arc;
/// use kiln_autograd::{checkpoint_sequential, SequentialLayer, Var};
/// use kiln_tensor::{Rng, Tensor};
/// let layers: Vec<SequentialLayer<f64>> = vec![Arc::new(|x, _| x.tanh()), Arc::new(|x, _| x.mul(x)), Arc::new(|x, _| x.exp())];
/// let x = Var::param(Tensor::from_vec(vec![0.1f64, 0.2], &[2]));
/// let y = checkpoint_sequential(&layers, 2, &x, &mut Rng::new(0));
/// let want = x.tanh().mul(&x.tanh()).exp();
/// assert_eq!(y.value().to_vec(), want.value().to_vec());
/// ```
pub fn checkpoint_sequential<E: Float>(
    layers: &[SequentialLayer<E>],
    segments: usize,
    input: &Var<E>,
    rng: &mut Rng,
) -> Var<E> {
    assert!(
        segments > 0 && segments <= layers.len(),
        "checkpoint_sequential: segments must be in 1..={}, got {segments}",
        layers.len()
    );
    // torch: segment_size = len // segments, the remainder going to the last segment.
    let size = layers.len() / segments;
    let mut x = input.clone();
    let mut start = 0;
    for s in 0..segments {
        let end = if s + 1 == segments { layers.len() } else { start + size };
        let chunk: Vec<_> = layers[start..end].to_vec();
        let run = move |xs: &[Var<E>], r: &mut Rng| chunk.iter().fold(xs[0].clone(), |h, l| l(&h, r));
        x = if s + 1 == segments { run(&[x], rng) } else { checkpoint(run, &[x], rng) };
        start = end;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::{checkpoint, checkpoint_sequential, no_grad, Arc, Var};
    use crate::testing::check;
    use kiln_tensor::{Rng, Tensor};
    use proptest::prelude::*;

    type Layer = super::SequentialLayer<f64>;

    /// A small MLP with dropout between the layers, as closures over its parameters.
    fn mlp(params: &[Var<f64>]) -> Vec<Layer> {
        let mut layers: Vec<Layer> = Vec::new();
        for pair in params.chunks(2) {
            let (w, b) = (pair[0].clone(), pair[1].clone());
            layers.push(Arc::new(move |x: &Var<f64>, _: &mut Rng| x.linear(&w, Some(&b)).tanh()));
            layers.push(Arc::new(|x: &Var<f64>, r: &mut Rng| x.dropout(0.3, true, r)));
        }
        layers
    }

    fn params(seed: u64, width: usize, depth: usize) -> Vec<Var<f64>> {
        let mut rng = Rng::new(seed);
        (0..depth)
            .flat_map(|_| {
                [
                    Var::param(Tensor::uniform(&[width, width], -0.5, 0.5, &mut rng)),
                    Var::param(Tensor::uniform(&[width], -0.5, 0.5, &mut rng)),
                ]
            })
            .collect()
    }

    fn grads_of(ps: &[Var<f64>], x: &Var<f64>) -> Vec<Vec<f64>> {
        let mut out: Vec<Vec<f64>> = ps.iter().map(|p| p.grad().unwrap().to_vec()).collect();
        out.push(x.grad().unwrap().to_vec());
        for p in ps {
            p.zero_grad();
        }
        x.zero_grad();
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        #[test]
        fn checkpointed_gradients_equal_the_plain_run_with_dropout(seed: u64, depth in 1usize..=4, segs in 1usize..=8) {
            let ps = params(seed, 4, depth);
            let layers = mlp(&ps);
            let segments = 1 + segs % layers.len();
            let x = Var::param(Tensor::uniform(&[3, 4], -1.0, 1.0, &mut Rng::new(seed ^ 1)));
            let mut r1 = Rng::new(seed ^ 2);
            let plain = layers.iter().fold(x.clone(), |h, l| l(&h, &mut r1));
            plain.sum_all().backward();
            let want = grads_of(&ps, &x);
            let mut r2 = Rng::new(seed ^ 2);
            let y = checkpoint_sequential(&layers, segments, &x, &mut r2);
            prop_assert_eq!(y.value().to_vec(), plain.value().to_vec());
            prop_assert_eq!(&r1, &r2, "the generator advances as in the plain run");
            y.sum_all().backward();
            let got = grads_of(&ps, &x);
            prop_assert_eq!(got, want, "bit-identical gradients");
        }
    }

    #[test]
    fn gradcheck_through_a_checkpoint() {
        let x = Tensor::from_vec(vec![0.3, -0.7, 1.1, 0.2], &[2, 2]);
        let w = Tensor::from_vec(vec![0.5, -1.5, 0.25, 1.0], &[2, 2]);
        let r = check(
            |v| {
                checkpoint(
                    |xs: &[Var<f64>], _: &mut Rng| xs[0].matmul(&xs[1]).sin(),
                    &[v[0].clone(), v[1].clone()],
                    &mut Rng::new(0),
                )
            },
            &[x, w],
        );
        assert!(r.is_ok(), "{}", r.unwrap_err());
    }

    #[test]
    fn captured_parameters_get_gradients_when_inputs_are_constants() {
        let w = Var::param(Tensor::from_vec(vec![0.5f64, -2.0], &[2]));
        let x = Var::constant(Tensor::from_vec(vec![1.5f64, 3.0], &[2]));
        let w2 = w.clone();
        let y = checkpoint(
            move |xs: &[Var<f64>], _: &mut Rng| xs[0].mul(&w2).exp(),
            std::slice::from_ref(&x),
            &mut Rng::new(0),
        );
        y.sum_all().backward();
        let got = w.grad().unwrap().to_vec();
        w.zero_grad();
        x.mul(&w).exp().sum_all().backward();
        assert_eq!(got, w.grad().unwrap().to_vec());
    }

    #[test]
    fn forward_keeps_no_graph_of_the_segment() {
        let x = Var::param(Tensor::from_vec(vec![1.0f64, 2.0], &[2]));
        let y = checkpoint(
            |xs: &[Var<f64>], _: &mut Rng| xs[0].exp().mul(&xs[0]),
            std::slice::from_ref(&x),
            &mut Rng::new(0),
        );
        assert_eq!(y.op_name(), "checkpoint");
        // under no_grad the result is a constant
        let z = no_grad(|| {
            checkpoint(|xs: &[Var<f64>], _: &mut Rng| xs[0].exp(), std::slice::from_ref(&x), &mut Rng::new(0))
        });
        assert!(!z.requires_grad());
    }

    #[test]
    #[should_panic(expected = "checkpoint_sequential: segments must be in 1..=2, got 3")]
    fn too_many_segments() {
        let layers: Vec<Layer> = vec![Arc::new(|x, _| x.tanh()), Arc::new(|x, _| x.exp())];
        let _ = checkpoint_sequential(&layers, 3, &Var::param(Tensor::zeros(&[1])), &mut Rng::new(0));
    }
}
