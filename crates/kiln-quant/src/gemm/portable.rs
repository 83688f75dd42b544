//! The portable micro-kernel: plain Rust over the packed layout, for every CPU (and the
//! oracle the vector kernels are tested against, together with [`super::reference`]).

use super::NR_PORTABLE as NR;

/// `out[r][j] = Σ_k a[r, k] · b[k, j]` for `R` rows of `a` and one packed panel of `NR`
/// columns (layout `[k][NR]`, `kgroup` 1).
///
/// # Safety
/// `a` must address `R` rows of `k` readable bytes `lda` apart; `panel` must address `k * NR`
/// bytes; `out` must have room for `R * NR` values.
pub(super) unsafe fn tile<const R: usize, const SIGNED: bool>(
    a: *const u8,
    lda: usize,
    k: usize,
    panel: *const i8,
    out: &mut [i32],
) {
    let mut acc = [[0i32; NR]; R];
    for kk in 0..k {
        // SAFETY: in bounds by the contract.
        let b: &[i8; NR] = unsafe { &*(panel.add(kk * NR) as *const [i8; NR]) };
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: in bounds by the contract.
            let byte = unsafe { *a.add(r * lda + kk) };
            let av = if SIGNED { byte as i8 as i32 } else { byte as i32 };
            for j in 0..NR {
                row[j] = row[j].wrapping_add(av * b[j] as i32);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        out[r * NR..(r + 1) * NR].copy_from_slice(row);
    }
}
