//! General matrix multiply: the one function every product in kiln goes through.
//!
//! `gemm` runs the single-threaded kernel of [`Float::gemm_raw`] (any strides, so a transposed
//! or sliced operand is read in place, never copied first) and splits large products across
//! kiln's thread pool (see [`crate::parallel`]). The kernel is kiln's own AVX-512 one for `f32`
//! where the CPU has AVX-512F (`sgemm.rs`), its AVX2 + FMA one for matrix-vector products
//! where it has those (`sgemm_avx2.rs`; `KILN_SGEMM` selects kernels for comparisons), and
//! matrixmultiply's `sgemm`/`dgemm` otherwise; swapping in another kernel means changing
//! `gemm_raw` only.

use crate::element::Float;
use crate::parallel;

/// A read-only strided matrix operand: a base pointer plus row and column strides in elements.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<E> {
    /// Address of element (0, 0).
    pub ptr: *const E,
    /// Row stride in elements.
    pub rs: isize,
    /// Column stride in elements.
    pub cs: isize,
}

// SAFETY: MatRef is only read through, and the caller of `gemm` guarantees the memory outlives
// the call; sharing the address between the pool's threads is what the kernel needs.
unsafe impl<E: Sync> Send for MatRef<E> {}
unsafe impl<E: Sync> Sync for MatRef<E> {}

#[derive(Clone, Copy)]
struct MatMut<E> {
    ptr: *mut E,
    rs: isize,
    cs: isize,
}
// SAFETY: the blocks each thread writes are disjoint (see `gemm`).
unsafe impl<E: Send> Send for MatMut<E> {}
unsafe impl<E: Send> Sync for MatMut<E> {}

/// `C = alpha * A·B + beta * C` where A is `m x k`, B is `k x n` and C is `m x n`.
///
/// Runs on kiln's pool when the product is large enough (`m*n*k >= 2^18` multiply-adds),
/// splitting C into row blocks (or column blocks when C is wide and short).
///
/// # Safety
/// `a` and `b` must address valid `m x k` and `k x n` matrices under their strides for the
/// duration of the call; `c` must address a valid `m x n` matrix under `(rsc, csc)` whose
/// elements are distinct (no zero strides when the dimension exceeds 1) and which does not
/// alias `a` or `b`.
pub unsafe fn gemm<E: Float>(
    m: usize,
    k: usize,
    n: usize,
    alpha: E,
    a: MatRef<E>,
    b: MatRef<E>,
    beta: E,
    c: *mut E,
    rsc: isize,
    csc: isize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let cm = MatMut { ptr: c, rs: rsc, cs: csc };
    let work = m.saturating_mul(n).saturating_mul(k.max(1));
    if work < parallel::gemm_min_flops() || parallel::get_num_threads() == 1 {
        // SAFETY: caller's contract.
        unsafe { E::gemm_raw(m, k, n, alpha, a.ptr, a.rs, a.cs, b.ptr, b.rs, b.cs, beta, c, rsc, csc) };
        return;
    }
    parallel::install(|threads| {
        // Split the longer side of C; block edges on multiples of 16 keep the kernel's
        // micro-tiles whole.
        let split_rows = m >= n || n < 32;
        let len = if split_rows { m } else { n };
        let parts = threads.min(len.div_ceil(16)).max(1);
        let step = len.div_ceil(parts).div_ceil(16) * 16;
        rayon::scope(|s| {
            let mut start = 0;
            while start < len {
                let end = (start + step).min(len);
                s.spawn(move |_| {
                    // Name the whole structs so the closure captures them (they are Send),
                    // not their raw-pointer fields.
                    let (a, b, cm) = (a, b, cm);
                    let sz = end - start;
                    // SAFETY: each block writes a disjoint set of rows (or columns) of C.
                    unsafe {
                        if split_rows {
                            E::gemm_raw(
                                sz,
                                k,
                                n,
                                alpha,
                                a.ptr.offset(start as isize * a.rs),
                                a.rs,
                                a.cs,
                                b.ptr,
                                b.rs,
                                b.cs,
                                beta,
                                cm.ptr.offset(start as isize * cm.rs),
                                cm.rs,
                                cm.cs,
                            );
                        } else {
                            E::gemm_raw(
                                m,
                                k,
                                sz,
                                alpha,
                                a.ptr,
                                a.rs,
                                a.cs,
                                b.ptr.offset(start as isize * b.cs),
                                b.rs,
                                b.cs,
                                beta,
                                cm.ptr.offset(start as isize * cm.cs),
                                cm.rs,
                                cm.cs,
                            );
                        }
                    }
                });
                start = end;
            }
        });
    });
}

/// Safe form of [`gemm`] for contiguous row-major slices, with optional transposition of
/// either operand (`trans_a`: `a` holds A stored as `k x m`).
///
/// **Panics** if a slice is shorter than its matrix.
pub fn gemm_slices<E: Float>(
    m: usize,
    k: usize,
    n: usize,
    alpha: E,
    a: &[E],
    trans_a: bool,
    b: &[E],
    trans_b: bool,
    beta: E,
    c: &mut [E],
) {
    assert!(a.len() >= m * k, "gemm: A holds {} elements, needs {m} x {k}", a.len());
    assert!(b.len() >= k * n, "gemm: B holds {} elements, needs {k} x {n}", b.len());
    assert!(c.len() >= m * n, "gemm: C holds {} elements, needs {m} x {n}", c.len());
    let ar = if trans_a {
        MatRef { ptr: a.as_ptr(), rs: 1, cs: m as isize }
    } else {
        MatRef { ptr: a.as_ptr(), rs: k as isize, cs: 1 }
    };
    let br = if trans_b {
        MatRef { ptr: b.as_ptr(), rs: 1, cs: k as isize }
    } else {
        MatRef { ptr: b.as_ptr(), rs: n as isize, cs: 1 }
    };
    // SAFETY: lengths checked above; `c` is a distinct &mut slice.
    unsafe { gemm(m, k, n, alpha, ar, br, beta, c.as_mut_ptr(), n as isize, 1) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(m: usize, k: usize, n: usize, a: &[f64], ta: bool, b: &[f64], tb: bool) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for p in 0..k {
                    let av = if ta { a[p * m + i] } else { a[i * k + p] };
                    let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                    s += av * bv;
                }
                c[i * n + j] = s;
            }
        }
        c
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn gemm_slices_matches_naive(m in 1usize..40, k in 0usize..40, n in 1usize..70, ta: bool, tb: bool, threads in 1usize..3, seed in 0u64..1000) {
            crate::set_num_threads(threads);
            let mut rng = crate::Rng::new(seed);
            let a: Vec<f64> = (0..m * k).map(|_| rng.next_f64() - 0.5).collect();
            let b: Vec<f64> = (0..k * n).map(|_| rng.next_f64() - 0.5).collect();
            let mut c = vec![1.0; m * n];
            gemm_slices(m, k, n, 1.0, &a, ta, &b, tb, 0.0, &mut c);
            let want = naive(m, k, n, &a, ta, &b, tb);
            for (x, y) in c.iter().zip(&want) {
                prop_assert!((x - y).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn large_product_split_across_threads_matches() {
        // big enough to take the parallel path, with a ragged edge
        let (m, k, n) = (97, 64, 131);
        let mut rng = crate::Rng::new(3);
        let a: Vec<f64> = (0..m * k).map(|_| rng.next_f64()).collect();
        let b: Vec<f64> = (0..k * n).map(|_| rng.next_f64()).collect();
        for threads in [1, 2, 3] {
            crate::set_num_threads(threads);
            for (ta, tb) in [(false, false), (true, false), (false, true)] {
                let mut c = vec![0.0; m * n];
                gemm_slices(m, k, n, 1.0, &a, ta, &b, tb, 0.0, &mut c);
                let want = naive(m, k, n, &a, ta, &b, tb);
                for (x, y) in c.iter().zip(&want) {
                    assert!((x - y).abs() < 1e-10);
                }
            }
            // wide and short takes the column split
            let (m2, n2) = (4, 2000);
            let a2: Vec<f64> = (0..m2 * k).map(|_| rng.next_f64()).collect();
            let b2: Vec<f64> = (0..k * n2).map(|_| rng.next_f64()).collect();
            let mut c2 = vec![0.0; m2 * n2];
            gemm_slices(m2, k, n2, 1.0, &a2, false, &b2, false, 0.0, &mut c2);
            let want2 = naive(m2, k, n2, &a2, false, &b2, false);
            for (x, y) in c2.iter().zip(&want2) {
                assert!((x - y).abs() < 1e-10);
            }
        }
    }
}
