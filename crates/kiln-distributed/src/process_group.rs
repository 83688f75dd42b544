//! [`ProcessGroup`]: the MPI job this process belongs to, and the collectives kiln needs, run
//! on one communication thread so that they overlap computation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use mpi::collective::SystemOperation;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};

use crate::error::DistributedError;

static INITIALISED: AtomicBool = AtomicBool::new(false);

/// The default time a collective may take before the job is aborted (PyTorch's default
/// process-group timeout is 30 minutes too).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The environment variable that sets the collective timeout, in seconds.
pub const TIMEOUT_ENV: &str = "KILN_DIST_TIMEOUT_SECS";

enum Job {
    AllReduceF32(Vec<f32>, Sender<Vec<f32>>),
    AllReduceF64(Vec<f64>, Sender<Vec<f64>>),
    BroadcastF32(Vec<f32>, i32, Sender<Vec<f32>>),
    AllGatherU64(Vec<u64>, Sender<Vec<u64>>),
    Barrier(Sender<Vec<u8>>),
}

/// The processes of one MPI job (`MPI_COMM_WORLD`) as kiln uses them: this process's
/// [`rank`](Self::rank), the [`world_size`](Self::world_size), and the collectives
/// (all-reduce, broadcast, all-gather, barrier).
///
/// Every MPI call runs on one communication thread that this group owns, in the order the
/// collectives were started; so a collective started with an `_async` method proceeds while
/// the caller computes (this is how [`DistributedDataParallel`](crate::DistributedDataParallel)
/// overlaps gradient all-reduces with backward), and every rank must start the same
/// collectives in the same order, as MPI requires.
///
/// Made by [`init`]; MPI is finalised when the last `Arc<ProcessGroup>` drops, which must
/// happen before the process exits (keep it in `main`; `std::process::exit` skips it and
/// `mpirun` then reports that the process did not finalise).
pub struct ProcessGroup {
    rank: usize,
    world_size: usize,
    timeout: Duration,
    jobs: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Starts MPI (with `MPI_THREAD_MULTIPLE`), returns this process's [`ProcessGroup`], and
/// installs a panic hook that aborts the whole MPI job (`MPI_Abort`) after the usual panic
/// message, so that a rank that panics never leaves the others waiting in a collective.
///
/// Run the program under `mpirun -np N ...` (or Slurm's `srun`); without a launcher it is a
/// job of one process. The collective timeout is [`DEFAULT_TIMEOUT`] unless
/// `KILN_DIST_TIMEOUT_SECS` says otherwise: a collective that has not completed by then
/// aborts the job with a message naming it (a rank that stopped without dying).
///
/// # Errors
/// [`DistributedError::AlreadyInitialized`] on a second call, [`DistributedError::Init`]
/// when MPI cannot start, [`DistributedError::Env`] for a bad `KILN_DIST_TIMEOUT_SECS`.
pub fn init() -> Result<Arc<ProcessGroup>, DistributedError> {
    let timeout = match std::env::var(TIMEOUT_ENV) {
        Err(_) => DEFAULT_TIMEOUT,
        Ok(s) => match s.trim().parse::<f64>() {
            Ok(v) if v > 0.0 && v.is_finite() => Duration::from_secs_f64(v),
            _ => {
                return Err(DistributedError::Env {
                    name: TIMEOUT_ENV,
                    expected: "a positive number of seconds",
                    found: s,
                })
            }
        },
    };
    if INITIALISED.swap(true, Ordering::SeqCst) {
        return Err(DistributedError::AlreadyInitialized);
    }
    let (tx, rx) = channel::<Job>();
    let (ready_tx, ready_rx) = channel::<Result<(usize, usize), String>>();
    let thread = std::thread::Builder::new()
        .name("kiln-mpi".into())
        .spawn(move || communication_thread(rx, ready_tx))
        .map_err(|e| DistributedError::Init(format!("cannot start the communication thread: {e}")))?;
    let (rank, world_size) = match ready_rx.recv() {
        Ok(Ok(rw)) => rw,
        Ok(Err(e)) => return Err(DistributedError::Init(e)),
        Err(_) => return Err(DistributedError::Init("the communication thread ended during MPI_Init".into())),
    };
    install_abort_on_panic(rank);
    Ok(Arc::new(ProcessGroup {
        rank,
        world_size,
        timeout,
        jobs: Mutex::new(Some(tx)),
        thread: Mutex::new(Some(thread)),
    }))
}

fn communication_thread(rx: Receiver<Job>, ready: Sender<Result<(usize, usize), String>>) {
    let Some((universe, _threading)) = mpi::initialize_with_threading(mpi::Threading::Multiple) else {
        let _ = ready.send(Err("MPI was already initialised in this process".into()));
        return;
    };
    let world = universe.world();
    let _ = ready.send(Ok((world.rank() as usize, world.size() as usize)));
    let sum = SystemOperation::sum;
    // The receive buffer of the f32 all-reduces, kept across jobs; the result goes back in the
    // caller's buffer.
    let mut recv_f32: Vec<f32> = Vec::new();
    // A receiver that hung up (a caller gave up) is not an error of the collective: every
    // rank still runs it, so the job stays in step.
    while let Ok(job) = rx.recv() {
        match job {
            Job::AllReduceF32(mut buf, reply) => {
                recv_f32.resize(buf.len(), 0.0);
                world.all_reduce_into(&buf[..], &mut recv_f32[..], sum());
                buf.copy_from_slice(&recv_f32);
                let _ = reply.send(buf);
            }
            Job::AllReduceF64(send, reply) => {
                let mut recv = vec![0f64; send.len()];
                world.all_reduce_into(&send[..], &mut recv[..], sum());
                let _ = reply.send(recv);
            }
            Job::BroadcastF32(mut buf, root, reply) => {
                world.process_at_rank(root).broadcast_into(&mut buf[..]);
                let _ = reply.send(buf);
            }
            Job::AllGatherU64(send, reply) => {
                let mut recv = vec![0u64; send.len() * world.size() as usize];
                world.all_gather_into(&send[..], &mut recv[..]);
                let _ = reply.send(recv);
            }
            Job::Barrier(reply) => {
                world.barrier();
                let _ = reply.send(Vec::new());
            }
        }
    }
    // Dropping the universe calls MPI_Finalize.
    drop(world);
    drop(universe);
}

/// Aborts every process of the MPI job with exit code `code` (`MPI_Abort` on
/// `MPI_COMM_WORLD`), after printing `reason` on stderr. Never returns.
pub fn abort_job(rank: usize, reason: &str, code: i32) -> ! {
    eprintln!("kiln-distributed: rank {rank}: {reason}; aborting the MPI job");
    // SAFETY: MPI was initialised with MPI_THREAD_MULTIPLE (init runs before any
    // ProcessGroup exists), so any thread may call MPI_Abort; the world communicator is a
    // predefined handle.
    unsafe {
        mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, code);
    }
    std::process::abort()
}

fn install_abort_on_panic(rank: usize) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        abort_job(rank, "a thread panicked", 1);
    }));
}

/// A collective started with an `_async` method of [`ProcessGroup`]: [`wait`](Self::wait)
/// for its result.
#[must_use = "a started collective must be waited for"]
pub struct Pending<T> {
    rx: Receiver<T>,
    what: &'static str,
    rank: usize,
    timeout: Duration,
}

impl<T> Pending<T> {
    /// Blocks until the collective has completed on this rank and returns its result.
    ///
    /// A collective that takes longer than the group's timeout aborts the MPI job (another
    /// rank stopped taking part without dying); never returns in that case.
    pub fn wait(self) -> T {
        match self.rx.recv_timeout(self.timeout) {
            Ok(v) => v,
            Err(RecvTimeoutError::Timeout) => abort_job(
                self.rank,
                &format!(
                    "{} did not complete within {:.1} s (a rank stopped or is stuck; set {TIMEOUT_ENV} to wait longer)",
                    self.what,
                    self.timeout.as_secs_f64()
                ),
                2,
            ),
            Err(RecvTimeoutError::Disconnected) => {
                abort_job(self.rank, &format!("the communication thread ended during {}", self.what), 3)
            }
        }
    }
}

impl ProcessGroup {
    /// This process's rank, `0..world_size`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of processes in the job.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Whether this is rank 0 (the one that logs and writes checkpoints).
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// How long a collective may take before the job is aborted.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn submit<T>(&self, what: &'static str, make: impl FnOnce(Sender<T>) -> Job) -> Pending<T> {
        let (tx, rx) = channel();
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let sender = jobs.as_ref().expect("ProcessGroup: used after shutdown");
        if sender.send(make(tx)).is_err() {
            abort_job(self.rank, &format!("the communication thread ended before {what}"), 3);
        }
        Pending { rx, what, rank: self.rank, timeout: self.timeout }
    }

    /// Starts an element-wise sum of `data` over every rank (`MPI_Allreduce`, `MPI_SUM`);
    /// every rank must pass the same length.
    pub fn all_reduce_sum_f32_async(&self, data: Vec<f32>) -> Pending<Vec<f32>> {
        self.submit("all-reduce (f32)", |tx| Job::AllReduceF32(data, tx))
    }

    /// The element-wise sum of `data` over every rank.
    pub fn all_reduce_sum_f32(&self, data: Vec<f32>) -> Vec<f32> {
        self.all_reduce_sum_f32_async(data).wait()
    }

    /// The element-wise sum of `data` over every rank, in f64 (figures, counts).
    pub fn all_reduce_sum_f64(&self, data: Vec<f64>) -> Vec<f64> {
        self.submit("all-reduce (f64)", |tx| Job::AllReduceF64(data, tx)).wait()
    }

    /// Rank `root`'s `data` on every rank (`MPI_Bcast`); every rank passes a buffer of the
    /// same length, whose contents are ignored except on `root`.
    pub fn broadcast_f32(&self, data: Vec<f32>, root: usize) -> Vec<f32> {
        assert!(root < self.world_size, "broadcast_f32: root {root} out of range for {} ranks", self.world_size);
        self.submit("broadcast", |tx| Job::BroadcastF32(data, root as i32, tx)).wait()
    }

    /// Every rank's `data` concatenated in rank order (`MPI_Allgather`); every rank must
    /// pass the same length.
    pub fn all_gather_u64(&self, data: Vec<u64>) -> Vec<u64> {
        self.submit("all-gather", |tx| Job::AllGatherU64(data, tx)).wait()
    }

    /// Every rank's variable-length `data`, one `Vec` per rank in rank order (two
    /// all-gathers: the lengths, then the padded values).
    pub fn all_gather_varlen_u64(&self, data: &[u64]) -> Vec<Vec<u64>> {
        let lens = self.all_gather_u64(vec![data.len() as u64]);
        let max = lens.iter().copied().max().unwrap_or(0) as usize;
        if max == 0 {
            return vec![Vec::new(); self.world_size];
        }
        let mut padded = data.to_vec();
        padded.resize(max, 0);
        let all = self.all_gather_u64(padded);
        all.chunks(max).zip(&lens).map(|(c, &l)| c[..l as usize].to_vec()).take(self.world_size).collect()
    }

    /// Waits until every rank has reached this call (`MPI_Barrier`).
    pub fn barrier(&self) {
        self.submit("barrier", Job::Barrier).wait();
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // Closing the queue ends the thread, which finalises MPI after the last collective.
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProcessGroup(rank {} of {})", self.rank, self.world_size)
    }
}
