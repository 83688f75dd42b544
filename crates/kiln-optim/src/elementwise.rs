//! The fused per-element loops the update rules run, and their small shared steps (gradient
//! sign and L2 weight decay, `lerp`).
//!
//! An update rule reads the gradient and writes the parameter and its state buffers in one pass
//! over their slices: no temporary tensor per step. Long tensors (from the threshold the tensor
//! kernels use) are split across kiln's thread pool by halving with `rayon::join`. Flags that
//! hold for a whole step (weight decay on, Nesterov, which `lerp` form) are const generics
//! chosen once per step by [`dispatch!`], so the loops have no branches and vectorise (a
//! branch per element made Adam five times slower).

use kiln_tensor::{parallel, Float, Tensor};

/// Elements per leaf of the parallel split.
const CHUNK: usize = 1 << 13;

/// Calls `f` with the tensor's elements as a row-major slice, copying only when it is not
/// contiguous.
pub(crate) fn with_slice<E: Float, R>(t: &Tensor<E>, f: impl FnOnce(&[E]) -> R) -> R {
    match t.as_slice() {
        Some(s) => f(s),
        None => {
            let owned = t.contiguous();
            f(owned.as_slice().expect("contiguous"))
        }
    }
}

/// `f([a, b, ...], g)` over matching chunks of the buffers and the gradient (all of them at
/// once for short tensors): the rule writes its own loop over the chunk, with zipped iterators,
/// which the compiler vectorises.
///
/// **Panics** if a buffer's length differs from `g`'s.
pub(crate) fn for_chunks<E: Float, const M: usize, F>(bufs: [&mut [E]; M], g: &[E], f: &F)
where
    F: Fn([&mut [E]; M], &[E]) + Sync,
{
    for b in &bufs {
        assert_eq!(
            b.len(),
            g.len(),
            "optimizer step: a state buffer has {} elements, the gradient {}",
            b.len(),
            g.len()
        );
    }
    if g.len() >= parallel::elementwise_min() && parallel::get_num_threads() > 1 {
        parallel::install(|_| split_chunks(bufs, g, f));
    } else {
        f(bufs, g);
    }
}

fn split_chunks<E: Float, const M: usize, F>(bufs: [&mut [E]; M], g: &[E], f: &F)
where
    F: Fn([&mut [E]; M], &[E]) + Sync,
{
    if g.len() <= CHUNK {
        return f(bufs, g);
    }
    let mid = g.len() / 2;
    let mut halves = bufs.map(|b| b.split_at_mut(mid));
    let left = halves.each_mut().map(|(l, _)| std::mem::take(l));
    let right = halves.map(|(_, r)| r);
    let (gl, gr) = g.split_at(mid);
    rayon::join(|| split_chunks(left, gl, f), || split_chunks(right, gr, f));
}

/// The gradient a rule works with: `sign · g` (`sign = -1` when maximising), plus the L2
/// penalty's gradient `weight_decay · param` when `L2` (PyTorch's `grad = grad.add(param,
/// alpha=weight_decay)`, which it skips when the decay is zero).
///
/// The flags are const generics, chosen once per step with [`dispatch!`], so that the
/// per-element loops have no branches and vectorise.
#[inline(always)]
pub(crate) fn grad_of<E: Float, const L2: bool>(g: E, p: E, sign: E, weight_decay: E) -> E {
    let g = g * sign;
    if L2 {
        g + weight_decay * p
    } else {
        g
    }
}

/// `a + w (b - a)`, computed as PyTorch's `lerp` kernel does: from `a` when `|w| < 0.5`
/// (`SMALL`), else from `b`.
#[inline(always)]
pub(crate) fn lerp<E: Float, const SMALL: bool>(a: E, b: E, w: E) -> E {
    if SMALL {
        a + w * (b - a)
    } else {
        b - (b - a) * (E::one() - w)
    }
}

/// Whether [`lerp`] with weight `w` takes PyTorch's "small weight" form.
pub(crate) fn lerp_small(w: f64) -> bool {
    w.abs() < 0.5
}

/// `-1` when maximising, else `1`.
pub(crate) fn sign<E: Float>(maximize: bool) -> E {
    if maximize {
        -E::one()
    } else {
        E::one()
    }
}

/// Calls `f::<..>(args)` with each runtime `bool` of the list turned into a const generic
/// argument, in order: `dispatch!(f(a, b); [x, y])` is `f::<x, y>(a, b)` for the values `x`,
/// `y` have.
macro_rules! dispatch {
    ($f:ident($($arg:expr),*); [] [$($c:tt)*]) => {
        $f::<_, $($c)*>($($arg),*)
    };
    ($f:ident($($arg:expr),*); [$b:expr $(, $rest:expr)*] [$($c:tt)*]) => {
        if $b {
            dispatch!($f($($arg),*); [$($rest),*] [$($c)* true,])
        } else {
            dispatch!($f($($arg),*); [$($rest),*] [$($c)* false,])
        }
    };
    ($f:ident($($arg:expr),*); [$($b:expr),*]) => {
        dispatch!($f($($arg),*); [$($b),*] [])
    };
}
pub(crate) use dispatch;

/// NaN-propagating maximum, like `torch.maximum`.
#[inline(always)]
pub(crate) fn maximum<E: Float>(a: E, b: E) -> E {
    if a.is_nan() || b.is_nan() {
        E::nan()
    } else if a > b {
        a
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn for_chunks_covers_every_element_serial_and_parallel() {
        for n in [0usize, 1, 7, CHUNK * 5 + 3] {
            let g: Vec<f64> = (0..n).map(|i| i as f64).collect();
            let mut a = vec![1.0f64; n];
            let mut b = vec![0.0f64; n];
            parallel::with_elementwise_threshold(16, || {
                for_chunks([&mut a[..], &mut b[..]], &g, &|[a, b], g| {
                    for ((a, b), &g) in a.iter_mut().zip(b).zip(g) {
                        *a += g;
                        *b = 2.0 * g;
                    }
                })
            });
            for i in 0..n {
                assert_eq!(a[i], 1.0 + i as f64);
                assert_eq!(b[i], 2.0 * i as f64);
            }
        }
    }

    #[test]
    fn lerp_matches_both_forms() {
        assert!(lerp_small(0.25) && !lerp_small(0.75));
        assert_eq!(lerp::<f64, true>(1.0, 3.0, 0.25), 1.5);
        assert_eq!(lerp::<f64, false>(1.0, 3.0, 0.75), 2.5);
        assert_eq!(lerp::<f64, false>(1.0, 3.0, 1.0), 3.0);
    }

    #[test]
    fn grad_of_negates_then_decays() {
        assert_eq!(grad_of::<f64, false>(2.0, 10.0, sign(false), 0.0), 2.0);
        assert_eq!(grad_of::<f64, false>(2.0, f64::INFINITY, sign(true), 0.0), -2.0);
        assert_eq!(grad_of::<f64, true>(2.0, 10.0, sign(true), 0.5), 3.0);
    }

    fn pick<E: Float, const A: bool, const B: bool>(x: E) -> (E, bool, bool) {
        (x, A, B)
    }

    #[test]
    fn dispatch_turns_bools_into_const_generics() {
        for (a, b) in [(false, false), (false, true), (true, false), (true, true)] {
            assert_eq!(dispatch!(pick(1.0f64); [a, b]), (1.0, a, b));
        }
    }
}
