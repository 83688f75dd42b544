//! # kiln-distributed
//!
//! Data-parallel training of kiln models over MPI, from one machine to many: start the
//! program with `mpirun -np N` (or a cluster scheduler), call [`init`], wrap the model in
//! [`DistributedDataParallel`], feed each rank its share of the data with
//! [`DistributedDataLoader`] / [`DistributedSampler`], and train with
//! [`kiln_train::Trainer`] made [`distributed`](DistributedTrainer::distributed).
//!
//! * [`ProcessGroup`]: rank, world size and the collectives, run on a communication thread
//!   (Open MPI through the `mpi` crate) so that gradient all-reduces overlap backward.
//! * [`DistributedDataParallel`]: PyTorch's DDP — rank 0's weights broadcast at the start,
//!   gradients averaged in buckets as backward produces them, `no_sync`, unused parameters,
//!   buffers broadcast each step.
//! * [`SyncBatchNorm`]: batch normalisation with statistics over every rank's batch.
//! * [`DistributedSampler`]: PyTorch's sharding (padding or `drop_last`, `set_epoch`).
//! * [`DistributedLogs`], [`RankZero`], [`all_reduce_logs`]: figures averaged over ranks,
//!   files written by rank 0.
//!
//! Failure: [`init`] installs a panic hook that aborts the whole job (`MPI_Abort`); a killed
//! rank makes `mpirun` end the others; a collective that does not complete within
//! `KILN_DIST_TIMEOUT_SECS` (default 30 min) aborts the job. No rank waits forever.

mod ddp;
mod error;
mod process_group;
mod sampler;
mod sync_batchnorm;
mod trainer;

pub use ddp::{DdpConfig, DistributedDataParallel};
pub use error::DistributedError;
pub use process_group::{abort_job, init, Pending, ProcessGroup, DEFAULT_TIMEOUT, TIMEOUT_ENV};
pub use sampler::{DistributedDataLoader, DistributedSampler, SharedCollate, SharedDataset};
pub use sync_batchnorm::{all_reduce_sum, SyncBatchNorm};
pub use trainer::{all_reduce_logs, DistributedLogs, DistributedTrainer, RankZero};

/// The README's example, compiled as a doctest (it needs `mpirun` to run).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
