//! The thread pool every parallel kernel of kiln runs on.
//!
//! kiln owns one rayon pool, sized by [`set_num_threads`] or, before the first call, by the
//! `KILN_NUM_THREADS` environment variable (default: the number of logical CPUs). GEMM does not
//! bring threads of its own: it splits its output into blocks and runs the single-threaded
//! kernel on this pool, so rayon and GEMM never oversubscribe the cores.

use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

use crate::element::Float;
use std::sync::{Arc, OnceLock, RwLock};

struct PoolState {
    threads: usize,
    pool: Arc<rayon::ThreadPool>,
    /// The pool of callers inside [`autocast`](crate::autocast) (its threads are in bfloat16
    /// mode for good), made on first use.
    bf16_pool: Option<Arc<rayon::ThreadPool>>,
}

fn state() -> &'static RwLock<PoolState> {
    static STATE: OnceLock<RwLock<PoolState>> = OnceLock::new();
    STATE.get_or_init(|| {
        let threads = match threads_from_env() {
            Ok(Some(n)) => n,
            Ok(None) => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            // A setting that is silently ignored is worse than none: stop, naming it.
            Err(e) => panic!("{e}"),
        };
        RwLock::new(PoolState { threads, pool: Arc::new(build(threads)), bf16_pool: None })
    })
}

/// `KILN_NUM_THREADS` holds something other than a whole number of threads >= 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadThreadsSetting {
    /// The variable's value, as set.
    pub value: String,
}

impl std::fmt::Display for BadThreadsSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KILN_NUM_THREADS={:?}: expected a whole number of threads >= 1 (or leave it unset for one per CPU)",
            self.value
        )
    }
}

impl std::error::Error for BadThreadsSetting {}

/// The thread count `KILN_NUM_THREADS` asks for: `Ok(None)` when unset or empty.
///
/// The pool reads it once, at its first use, and **panics** with this error's message when the
/// value is not a whole number >= 1, rather than ignoring a setting the user made; call this
/// first to report it your own way.
///
/// # Errors
/// [`BadThreadsSetting`] naming the value.
pub fn threads_from_env() -> Result<Option<usize>, BadThreadsSetting> {
    parse_threads(std::env::var_os("KILN_NUM_THREADS").map(|v| v.to_string_lossy().into_owned()))
}

fn parse_threads(value: Option<String>) -> Result<Option<usize>, BadThreadsSetting> {
    match value {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Ok(None),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(BadThreadsSetting { value: v }),
        },
    }
}

fn build(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("kiln-{i}"))
        .build()
        .expect("kiln: cannot start the thread pool")
}

/// The pool for autocast callers: the same size, its threads inside `autocast(BF16)`, so that
/// work split off an autocast thread computes as that thread would, while other callers'
/// work on the main pool is untouched.
fn build_bf16(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("kiln-bf16-{i}"))
        .start_handler(|_| std::mem::forget(crate::autocast::set_autocast(Some(crate::DType::BF16))))
        .build()
        .expect("kiln: cannot start the autocast thread pool")
}

/// Sets the number of threads every parallel kernel (GEMM included) uses.
///
/// Like `torch.set_num_threads`. Takes effect for kernels started after the call.
///
/// **Panics** if `n == 0`.
///
/// ```
/// kiln_tensor::set_num_threads(1);
/// assert_eq!(kiln_tensor::get_num_threads(), 1);
/// ```
pub fn set_num_threads(n: usize) {
    assert!(n > 0, "set_num_threads: the number of threads must be > 0, got 0");
    let mut s = state().write().unwrap_or_else(|e| e.into_inner());
    if s.threads != n {
        s.threads = n;
        s.pool = Arc::new(build(n));
        s.bf16_pool = None;
    }
}

/// The number of threads parallel kernels use.
pub fn get_num_threads() -> usize {
    state().read().unwrap_or_else(|e| e.into_inner()).threads
}

/// Runs `f` on kiln's pool with the pool's thread count; rayon calls inside it use that pool.
///
/// When called from a thread of the pool already, `f` runs in place.
pub fn install<R: Send>(f: impl FnOnce(usize) -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        // Already inside a pool (ours, or a caller's): don't nest.
        return f(rayon::current_num_threads());
    }
    let (threads, pool) = {
        let s = state().read().unwrap_or_else(|e| e.into_inner());
        (s.threads, s.pool.clone())
    };
    if threads == 1 {
        return f(1);
    }
    if crate::autocast::bf16_gemm() {
        let made = state().read().unwrap_or_else(|e| e.into_inner()).bf16_pool.clone();
        let pool = made.unwrap_or_else(|| {
            let mut s = state().write().unwrap_or_else(|e| e.into_inner());
            let threads = s.threads;
            s.bf16_pool.get_or_insert_with(|| Arc::new(build_bf16(threads))).clone()
        });
        return pool.install(|| f(threads));
    }
    pool.install(|| f(threads))
}

/// Default element count from which elementwise kernels split their work across threads.
///
/// Placed by measurement on the 2-core development machine (AMD EPYC, 2 vCPUs): `cargo bench
/// -p kiln-tensor --bench kernels -- threshold` forces the split (threshold 0) and times `add`
/// at 1 and 2 threads from 2^12 to 2^20 elements. A forced split costs about 15 µs of fan-out,
/// and in that isolated loop 2 threads never beat 1 (2^17: 17.7 against 24.1 µs; 2^20: 155
/// against 191 µs), so the bench gives only a lower bound. Inside training steps, where the
/// pool's threads are already awake, the workloads decided: with the threshold at 2^15,
/// 2^17 and 2^20, W2 (MLP, largest elementwise op 32k elements) ran 1.53, 1.03 and 1.03 ms per
/// step at 2 threads and W6 (autoencoder, 200k elements) 6.66, 6.75 and 8.55 ms; 2^17 keeps
/// both fast. [`with_elementwise_threshold`] changes it at run time.
pub const PAR_ELEMENTWISE_MIN: usize = 1 << 17;

/// Default multiply-add count from which GEMM (and convolution) split their output across
/// threads. The same bench times square products from n = 32 to 256 with the split forced:
/// 2 threads start to win between n = 96 (884,736 multiply-adds: 20.2 µs at 1 thread, 24.2
/// µs at 2) and n = 128 (2,097,152: 44.6 against 33.3 µs), hence 2^20.
pub const PAR_GEMM_MIN_FLOPS: usize = 1 << 20;

static ELEMENTWISE_MIN: AtomicUsize = AtomicUsize::new(PAR_ELEMENTWISE_MIN);
static GEMM_MIN_FLOPS: AtomicUsize = AtomicUsize::new(PAR_GEMM_MIN_FLOPS);

/// The current elementwise threshold (see [`PAR_ELEMENTWISE_MIN`]).
#[inline]
pub fn elementwise_min() -> usize {
    ELEMENTWISE_MIN.load(Ordering::Relaxed)
}

/// The current GEMM threshold (see [`PAR_GEMM_MIN_FLOPS`]).
#[inline]
pub fn gemm_min_flops() -> usize {
    GEMM_MIN_FLOPS.load(Ordering::Relaxed)
}

fn with_threshold<R>(cell: &AtomicUsize, value: usize, f: impl FnOnce() -> R) -> R {
    let prev = cell.swap(value, Ordering::Relaxed);
    struct Restore<'a>(&'a AtomicUsize, usize);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            self.0.store(self.1, Ordering::Relaxed);
        }
    }
    let _r = Restore(cell, prev);
    f()
}

/// Runs `f` with another elementwise threshold (process-wide; for measuring the threshold).
pub fn with_elementwise_threshold<R>(value: usize, f: impl FnOnce() -> R) -> R {
    with_threshold(&ELEMENTWISE_MIN, value, f)
}

/// Runs `f` with another GEMM threshold (process-wide; for measuring the threshold).
pub fn with_gemm_threshold<R>(value: usize, f: impl FnOnce() -> R) -> R {
    with_threshold(&GEMM_MIN_FLOPS, value, f)
}

/// A new vector of `n` elements written chunk by chunk: `fill(i, chunk)` for the `i`-th run of
/// `chunk` elements (the last may be shorter), on kiln's pool when `parallel` is true.
///
/// Each chunk is zeroed right before `fill` sees it, by the thread that fills it, while it is in
/// cache: a large buffer is not zero-filled up front by the calling thread alone (a serial
/// `memset` of every activation, 3 % of W5's step at 2 threads).
///
/// **Panics** if `chunk == 0` while `n > 0`.
pub(crate) fn filled<E: Float>(
    n: usize,
    chunk: usize,
    parallel: bool,
    fill: impl Fn(usize, &mut [E]) + Sync + Send,
) -> Vec<E> {
    if n == 0 {
        return Vec::new();
    }
    assert!(chunk > 0, "filled: chunk size 0 for {n} elements");
    let mut v: Vec<E> = crate::alloc::take(n);
    let init = |(i, c): (usize, &mut [std::mem::MaybeUninit<E>])| {
        for x in c.iter_mut() {
            x.write(E::zero());
        }
        // SAFETY: every element of `c` was initialised just above.
        let c = unsafe { &mut *(std::ptr::from_mut(c) as *mut [E]) };
        fill(i, c);
    };
    let spare = &mut v.spare_capacity_mut()[..n];
    if parallel {
        install(|_| spare.par_chunks_mut(chunk).enumerate().for_each(init));
    } else {
        spare.chunks_mut(chunk).enumerate().for_each(init);
    }
    // SAFETY: the chunks cover the first `n` elements, all initialised above.
    unsafe { v.set_len(n) };
    v
}

#[cfg(test)]
mod env_tests {
    use super::*;

    #[test]
    fn kiln_num_threads_is_read_strictly() {
        assert_eq!(parse_threads(None), Ok(None));
        assert_eq!(parse_threads(Some(" ".into())), Ok(None));
        assert_eq!(parse_threads(Some("3".into())), Ok(Some(3)));
        assert_eq!(parse_threads(Some(" 2 ".into())), Ok(Some(2)));
        for bad in ["two", "0", "-1", "1.5"] {
            let e = parse_threads(Some(bad.into())).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("KILN_NUM_THREADS={bad:?}: expected a whole number of threads >= 1 (or leave it unset for one per CPU)")
            );
        }
    }
}
