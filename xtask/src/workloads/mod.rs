//! The workloads of `../shared/bench/workloads.md` that kiln implements, one file each.
//! Adding one means a file here and a line in [`all`].

use crate::bench::{Figure, Timer};

mod w1_gemm;
mod w7_op_overhead;
mod w8_conv_fwd;

/// One benchmark workload.
pub struct Workload {
    /// `W1` .. `W9`.
    pub id: &'static str,
    /// The short name (`gemm`, `conv-fwd`, ...).
    pub name: &'static str,
    /// Runs every variant at the current thread count.
    pub run: fn(&Timer) -> Vec<Figure>,
}

/// Every workload kiln implements, in id order.
pub fn all() -> &'static [Workload] {
    &[
        Workload { id: "W1", name: "gemm", run: w1_gemm::run },
        Workload { id: "W7", name: "op-overhead", run: w7_op_overhead::run },
        Workload { id: "W8", name: "conv-fwd", run: w8_conv_fwd::run },
    ]
}
