//! The backward engine: topological order, gradient accumulation, graph release, and
//! [`grad`] for higher-order derivatives.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kiln_tensor::Float;
use smallvec::smallvec;

use crate::mode::{anomaly_enabled, check_finite, set_grad_enabled};
use crate::ops::OpFn;
use crate::var::{Grads, Node, Var};

static PASS: AtomicU64 = AtomicU64::new(1);

fn lock_inputs<E: Float>(n: &Node<E>) -> std::sync::MutexGuard<'_, crate::var::Inputs<E>> {
    n.inputs.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs one backward pass from `roots` seeded with `seeds`.
///
/// With `capture`, gradients reaching those `Var`s are returned instead of being accumulated
/// into leaves (the [`grad`] function); otherwise leaves accumulate into `.grad()`. With
/// `stop_at_capture` as well, the pass ends at the captured `Var`s: it neither visits nor runs
/// the backward of anything below them (see [`composed_vjp`]).
pub(crate) fn run<E: Float>(
    roots: &[Var<E>],
    seeds: Vec<Var<E>>,
    retain_graph: bool,
    create_graph: bool,
    capture: Option<&[Var<E>]>,
    stop_at_capture: bool,
) -> Vec<Option<Var<E>>> {
    let is_target = |n: &Arc<Node<E>>| capture.is_some_and(|c| c.iter().any(|t| Arc::ptr_eq(&t.node, n)));
    let pass = PASS.fetch_add(1, Ordering::Relaxed) & 0xFFFF_FFFF;
    let mark = |slot: usize| (pass << 32) | slot as u64;
    let visited = |n: &Node<E>| n.mark.load(Ordering::Relaxed) >> 32 == pass;

    // Post-order DFS: every node comes after all of its inputs.
    let mut order: Vec<Arc<Node<E>>> = Vec::new();
    let mut stack: Vec<(Arc<Node<E>>, bool)> = Vec::new();
    for r in roots {
        assert!(
            r.requires_grad(),
            "backward: the output (made by `{}`) does not require grad and has no graph",
            r.op_name()
        );
        stack.push((r.node.clone(), false));
    }
    while let Some((n, expanded)) = stack.pop() {
        if expanded {
            n.mark.store(mark(order.len()), Ordering::Relaxed);
            order.push(n);
            continue;
        }
        if visited(&n) {
            continue;
        }
        n.mark.store(mark(u32::MAX as usize), Ordering::Relaxed);
        if stop_at_capture && is_target(&n) {
            stack.push((n, true));
            continue;
        }
        let inputs = lock_inputs(&n).clone();
        stack.push((n, true));
        for i in inputs.iter().rev() {
            if i.requires_grad() && !visited(&i.node) {
                stack.push((i.node.clone(), false));
            }
        }
    }
    let slot_of = |n: &Arc<Node<E>>, order: &[Arc<Node<E>>]| -> usize {
        let m = n.mark.load(Ordering::Relaxed);
        let s = (m & 0xFFFF_FFFF) as usize;
        if m >> 32 == pass && s < order.len() && Arc::ptr_eq(&order[s], n) {
            s
        } else {
            // Another thread's pass re-marked a shared node: find it by identity.
            order.iter().position(|o| Arc::ptr_eq(o, n)).expect("node is in this pass")
        }
    };

    let callbacks = crate::hooks::PassCallbacks::open();
    let _mode = set_grad_enabled(create_graph);
    let mut grads: Vec<Option<Var<E>>> = vec![None; order.len()];
    for (r, s) in roots.iter().zip(seeds) {
        let slot = slot_of(&r.node, &order);
        grads[slot] = Some(match grads[slot].take() {
            Some(g) => g.add(&s),
            None => s,
        });
    }
    let mut captured: Vec<Option<Var<E>>> = vec![None; capture.map_or(0, |c| c.len())];

    for i in (0..order.len()).rev() {
        let Some(g) = grads[i].take() else { continue };
        let node = order[i].clone();
        if let Some(targets) = capture {
            for (k, t) in targets.iter().enumerate() {
                if Arc::ptr_eq(&t.node, &node) {
                    captured[k] = Some(g.clone());
                }
            }
            if stop_at_capture && is_target(&node) {
                continue;
            }
        }
        if node.is_leaf {
            if capture.is_none() {
                let gv = g.value();
                {
                    let mut slot = node.grad.lock().unwrap_or_else(|e| e.into_inner());
                    *slot = Some(match slot.take() {
                        Some(old) => old.add(&gv),
                        None => gv.contiguous(),
                    });
                }
                // Every consumer of the leaf came later in `order`, so this gradient is final.
                Var { node: node.clone() }.run_grad_hooks();
            }
            continue;
        }
        assert!(
            !node.freed.load(Ordering::Relaxed),
            "backward: the graph through `{}` was already freed by an earlier backward; \
             pass retain_graph = true to the first one",
            node.op.name()
        );
        let inputs = lock_inputs(&node).clone();
        let output = Var { node: node.clone() };
        let mode = kiln_tensor::set_autocast(node.autocast);
        let in_grads = if anomaly_enabled() {
            crate::mode::in_backward_of(node.op.name(), || node.op.backward(&g, &inputs, &output))
        } else {
            node.op.backward(&g, &inputs, &output)
        };
        drop(mode);
        debug_assert_eq!(
            in_grads.len(),
            inputs.len(),
            "{}: backward returned a wrong number of gradients",
            node.op.name()
        );
        for (inp, gi) in inputs.iter().zip(in_grads) {
            let Some(gi) = gi else { continue };
            if !inp.requires_grad() {
                continue;
            }
            let (gs, is) = (gi.shape(), inp.shape());
            assert!(
                gs == is,
                "backward of `{}`: gradient of shape {:?} for an input of shape {:?}",
                node.op.name(),
                gs.as_slice(),
                is.as_slice()
            );
            if anomaly_enabled() {
                gi.with_value(|v| check_finite(v, node.op.name(), "backward", &inputs));
            }
            let s = slot_of(&inp.node, &order);
            grads[s] = Some(match grads[s].take() {
                Some(old) => old.add(&gi),
                None => gi,
            });
        }
        if !retain_graph {
            lock_inputs(&node).clear();
            node.freed.store(true, Ordering::Relaxed);
        }
    }
    callbacks.finish();
    captured
}

/// Gradients of `outputs` with respect to `inputs`, like `torch.autograd.grad`.
///
/// `grad_outputs` seeds each output (ones for one-element outputs when `None`). With
/// `create_graph`, the returned gradients are themselves differentiable (their graph is
/// recorded), which gives second and higher derivatives. Leaves' `.grad()` are not touched.
/// An input that the outputs do not depend on gets `None`.
///
/// **Panics** if an output does not require grad, or a `grad_outputs` shape differs.
///
/// ```
/// use kiln_autograd::{grad, Var};
/// use kiln_tensor::Tensor;
/// let x = Var::param(Tensor::from_vec(vec![2.0f64], &[1]));
/// let y = x.mul(&x).mul(&x); // x^3
/// let dy = grad(&[y], &[x.clone()], None, true)[0].clone().unwrap(); // 3x^2 = 12
/// assert_eq!(dy.item(), 12.0);
/// let d2y = grad(&[dy], &[x], None, false)[0].clone().unwrap(); // 6x = 12
/// assert_eq!(d2y.item(), 12.0);
/// ```
pub fn grad<E: Float>(
    outputs: &[Var<E>],
    inputs: &[Var<E>],
    grad_outputs: Option<&[Var<E>]>,
    create_graph: bool,
) -> Vec<Option<Var<E>>> {
    let seeds: Vec<Var<E>> = match grad_outputs {
        Some(g) => {
            assert_eq!(g.len(), outputs.len(), "grad: {} grad_outputs for {} outputs", g.len(), outputs.len());
            for (o, go) in outputs.iter().zip(g) {
                assert!(
                    o.shape() == go.shape(),
                    "grad: grad_output of shape {:?} for an output of shape {:?}",
                    go.shape().as_slice(),
                    o.shape().as_slice()
                );
            }
            g.to_vec()
        }
        None => outputs
            .iter()
            .map(|o| {
                assert_eq!(
                    o.numel(),
                    1,
                    "grad: grad_outputs needed for the output of shape {:?}",
                    o.shape().as_slice()
                );
                Var::constant(o.with_value(|v| v.ones_like()))
            })
            .collect(),
    };
    run(outputs, seeds, create_graph, create_graph, Some(inputs), false)
}

/// The backward of a fused op when the backward itself is recorded (`create_graph`): the
/// vector-Jacobian product `gradᵀ · ∂composed(inputs)/∂inputs`, differentiated by the engine
/// through `composed`, the same function written with primitive ops. The gradients it returns
/// are recorded `Var` expressions of the inputs and `grad`, so second and higher orders work
/// through a fused op whose own (kernel) backward is first-order only.
///
/// Each input that requires grad is seen through its own identity node and the pass stops at
/// those nodes: it does not walk the graph below the inputs, an input given twice gets each
/// slot's own gradient, and inputs that depend on one another keep their partial gradients
/// (the enclosing pass adds the paths between them, as for any op).
///
/// **Panics** if `composed`'s output has a shape other than `grad`'s.
pub(crate) fn composed_vjp<E: Float>(
    composed: impl FnOnce(&[Var<E>]) -> Var<E>,
    inputs: &[Var<E>],
    grad: &Var<E>,
) -> Grads<E> {
    debug_assert!(crate::mode::is_grad_enabled(), "composed_vjp: called with recording off");
    let proxies: Vec<Var<E>> = inputs
        .iter()
        .map(|x| {
            if !x.requires_grad() {
                return x.clone();
            }
            // d x/dx = 1
            let identity = |g: &Var<E>, _: &[Var<E>], _: &Var<E>| -> Grads<E> { smallvec![Some(g.clone())] };
            Var::from_op(x.value(), smallvec![x.clone()], OpFn { name: "fused_input", f: identity })
        })
        .collect();
    let y = composed(&proxies);
    if !y.requires_grad() {
        return inputs.iter().map(|_| None).collect();
    }
    assert!(
        y.shape() == grad.shape(),
        "composed_vjp: the composition gives shape {:?}, the gradient has shape {:?}",
        y.shape().as_slice(),
        grad.shape().as_slice()
    );
    let got = run(&[y], vec![grad.clone()], true, true, Some(&proxies), true);
    got.into_iter().zip(inputs).map(|(g, x)| g.filter(|_| x.requires_grad())).collect()
}
