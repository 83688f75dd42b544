//! The workloads of `../shared/bench/workloads.md` that kiln implements, one file each.
//! Adding one means a file here and a line in [`all`].

use crate::bench::{Figure, Timer};

mod loader;
mod w10_bf16_gemm;
mod w11_autocast;
mod w12_inference;
pub mod w13_ddp;
mod w1_gemm;
pub mod w2_mlp;
mod w3_cnn;
mod w4_lstm;
mod w5_transformer;
mod w6_autoencoder;
mod w7_op_overhead;
mod w8_conv_fwd;
pub mod w9_epoch;

/// One benchmark workload.
pub struct Workload {
    /// `W1` .. `W9`.
    pub id: &'static str,
    /// The short name (`gemm`, `conv-fwd`, ...).
    pub name: &'static str,
    /// Runs every variant at the current thread count.
    pub run: fn(&Timer) -> Vec<Figure>,
}

/// The extra workloads of workloads.md (lower precision, ...): they run only when named in
/// `--workloads`, as on the PyTorch side.
pub const EXTRA: &[&str] = &["W10", "W11", "W13"];

/// Every workload kiln implements, in id order (the extra ones last).
pub fn all() -> &'static [Workload] {
    &[
        Workload { id: "W1", name: "gemm", run: w1_gemm::run },
        Workload { id: "W2", name: "mlp-mnist", run: w2_mlp::run },
        Workload { id: "W3", name: "cnn-mnist", run: w3_cnn::run },
        Workload { id: "W4", name: "lstm-imdb", run: w4_lstm::run },
        Workload { id: "W5", name: "transformer", run: w5_transformer::run },
        Workload { id: "W6", name: "autoencoder", run: w6_autoencoder::run },
        Workload { id: "W7", name: "op-overhead", run: w7_op_overhead::run },
        Workload { id: "W8", name: "conv-fwd", run: w8_conv_fwd::run },
        Workload { id: "W9", name: "mnist-epoch", run: w9_epoch::run },
        Workload { id: "W12", name: "inference", run: w12_inference::run },
        Workload { id: "LOADER", name: "loader-throughput", run: loader::run },
        Workload { id: "W10", name: "bf16-gemm", run: w10_bf16_gemm::run },
        Workload { id: "W11", name: "autocast-training", run: w11_autocast::run },
        Workload { id: "W13", name: "data-parallel", run: w13_ddp::run },
    ]
}
