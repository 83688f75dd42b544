//! Matrix products with PyTorch's `matmul` rules.

use rayon::prelude::*;

use crate::element::Float;
use crate::elementwise::broadcast_shapes;
use crate::kernels::gemm::{gemm, MatRef};
use crate::parallel;
use crate::tensor::{Shape, Tensor};

struct SendPtr<E>(*mut E);
struct SendConst<E>(*const E);
// SAFETY: the operands are only read.
unsafe impl<E: Sync> Send for SendConst<E> {}
unsafe impl<E: Sync> Sync for SendConst<E> {}
// SAFETY: every batch writes its own disjoint `m x n` block of the output.
unsafe impl<E: Send> Send for SendPtr<E> {}
unsafe impl<E: Send> Sync for SendPtr<E> {}

impl<E: Float> Tensor<E> {
    /// Matrix product with PyTorch's rules (`torch.matmul`):
    /// 1-D · 1-D is a dot product (0-d result); 2-D · 2-D is a matrix product; a 1-D operand is
    /// treated as a row (left) or column (right) vector and that dimension removed from the
    /// result; otherwise batch dimensions broadcast.
    ///
    /// Operands are read through their strides (a transposed or sliced operand is never copied),
    /// and large products run on kiln's thread pool.
    ///
    /// **Panics** with both shapes if the inner dimensions differ, the batch dimensions do not
    /// broadcast, or an operand is 0-d.
    ///
    /// ```
    /// use kiln_tensor::Tensor;
    /// let a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    /// let b = Tensor::from_vec(vec![1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0], &[3, 2]);
    /// assert_eq!(a.matmul(&b).to_vec(), vec![4.0, 5.0, 10.0, 11.0]);
    /// // a transposed view is used in place
    /// assert_eq!(a.t().matmul(&a).shape(), &[3, 3]);
    /// ```
    #[must_use]
    pub fn matmul(&self, other: &Tensor<E>) -> Tensor<E> {
        let (sa, sb) = (self.shape(), other.shape());
        assert!(
            !sa.is_empty() && !sb.is_empty(),
            "matmul: {sa:?} x {sb:?}: both arguments need at least one dimension"
        );
        let a = if sa.len() == 1 { self.unsqueeze(0) } else { self.clone() };
        let b = if sb.len() == 1 { other.unsqueeze(-1) } else { other.clone() };
        let (na, nb) = (a.ndim(), b.ndim());
        let (m, k) = (a.shape[na - 2], a.shape[na - 1]);
        let (k2, n) = (b.shape[nb - 2], b.shape[nb - 1]);
        assert!(k == k2, "matmul: {sa:?} x {sb:?}: inner dimensions {k} and {k2} differ");
        let (ba, bb) = (&a.shape[..na - 2], &b.shape[..nb - 2]);
        let compatible = (0..ba.len().max(bb.len())).all(|i| {
            let x = if i < ba.len() { ba[ba.len() - 1 - i] } else { 1 };
            let y = if i < bb.len() { bb[bb.len() - 1 - i] } else { 1 };
            x == y || x == 1 || y == 1
        });
        assert!(compatible, "matmul: {sa:?} x {sb:?}: batch dimensions {ba:?} and {bb:?} cannot be broadcast");
        let batch = broadcast_shapes(ba, bb, "matmul");
        let mut full_a: Shape = batch.clone();
        full_a.extend_from_slice(&[m, k]);
        let mut full_b: Shape = batch.clone();
        full_b.extend_from_slice(&[k, n]);
        let a = a.expand(&full_a);
        let b = b.expand(&full_b);
        let nbatch: usize = batch.iter().product();
        let total = nbatch * m * n;
        let mut out: Vec<E> = crate::alloc::take(total);
        let nd = batch.len();
        let (rsa, csa) = (a.strides[nd], a.strides[nd + 1]);
        let (rsb, csb) = (b.strides[nd], b.strides[nd + 1]);
        // Offsets of every batch's matrices.
        let offsets: Vec<(isize, isize)> = {
            let mut v = Vec::with_capacity(nbatch);
            let mut idx: Shape = smallvec::smallvec![0; nd];
            for _ in 0..nbatch {
                let mut oa = a.offset as isize;
                let mut ob = b.offset as isize;
                for d in 0..nd {
                    oa += idx[d] as isize * a.strides[d];
                    ob += idx[d] as isize * b.strides[d];
                }
                v.push((oa, ob));
                for d in (0..nd).rev() {
                    idx[d] += 1;
                    if idx[d] < batch[d] {
                        break;
                    }
                    idx[d] = 0;
                }
            }
            v
        };
        let pa = SendConst(a.storage.as_ptr());
        let pb = SendConst(b.storage.as_ptr());
        let pc = SendPtr(out.as_mut_ptr());
        let zero_k = k == 0;
        let run = |i: usize, (oa, ob): (isize, isize)| {
            let (pa, pb, pc) = (&pa, &pb, &pc);
            // SAFETY: offsets and strides address elements inside the storages (the
            // tensors' invariant); each batch writes its own m x n block of `out`, whose
            // capacity is `total`; with beta = 0 the kernel never reads C.
            unsafe {
                let c = pc.0.add(i * m * n);
                if zero_k {
                    for j in 0..m * n {
                        c.add(j).write(E::zero());
                    }
                } else {
                    gemm(
                        m,
                        k,
                        n,
                        E::one(),
                        MatRef { ptr: pa.0.offset(oa), rs: rsa, cs: csa },
                        MatRef { ptr: pb.0.offset(ob), rs: rsb, cs: csb },
                        E::zero(),
                        c,
                        n as isize,
                        1,
                    );
                }
            }
        };
        let work = total.saturating_mul(k.max(1));
        if nbatch > 1 && work >= parallel::gemm_min_flops() && parallel::get_num_threads() > 1 {
            parallel::install(|_| offsets.par_iter().enumerate().for_each(|(i, &o)| run(i, o)));
        } else {
            for (i, &o) in offsets.iter().enumerate() {
                run(i, o);
            }
        }
        // SAFETY: every one of the `total` elements was written above.
        unsafe { out.set_len(total) };
        let mut shape: Shape = batch;
        if sa.len() > 1 {
            shape.push(m);
        }
        if sb.len() > 1 {
            shape.push(n);
        }
        Tensor::from_vec(out, &shape)
    }
}
