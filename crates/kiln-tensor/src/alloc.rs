//! How kiln reuses the memory of large tensor buffers: its own buffer pool (on by default), and
//! an opt-in retuning of glibc's malloc.
//!
//! A training step allocates and frees the same large buffers (activations, gradients, GEMM
//! outputs, im2col matrices) over and over. With glibc's default settings a freed buffer of a
//! few megabytes is unmapped (or the heap top trimmed) and the next step maps it again, page by
//! page: every page costs a kernel page fault and a zeroing, which measured 20–30 % of a
//! Transformer training step (`cargo xtask bench --workloads W5`: 385 → 306 ms per step, page
//! faults 230k → 56k). PyTorch's CPU guides recommend swapping in jemalloc or tcmalloc for the
//! same reason.
//!
//! # The buffer pool (default)
//!
//! kiln keeps the large buffers it frees itself, without touching the process's allocator
//! settings:
//! - **What is pooled**: element buffers of at least [`POOL_MIN_BYTES`] (64 KiB) — a tensor's
//!   storage when its last owner drops it, and the scratch buffers of the kernels (im2col
//!   matrices, LSTM tapes). Smaller blocks are left to malloc, whose bins already reuse them.
//!   Buffers are binned by size class (eight classes per power of two, so a buffer serves
//!   requests up to 12.5 % smaller than it) and by element layout (`f32` and `f64` buffers do not
//!   mix).
//! - **Who takes from it**: the ops and kernels that make new tensors (elementwise results,
//!   matmul and convolution outputs, reductions, pooling, attention, normalisation, gradients),
//!   on any thread (rayon workers free and take buffers too; the pool is one `Mutex`, held for a
//!   few instructions). A reused buffer is never handed out with old contents where zeros are
//!   due: buffers come back with length 0, and every taker writes each element before the
//!   tensor exists (zeros, a fill value, or the op's result).
//! - **The cap**: the pool holds at most [`pool_limit`] bytes, [`DEFAULT_POOL_LIMIT`] (1 GiB)
//!   unless changed; when a returned buffer would exceed it, the buffers held longest are freed
//!   first (a buffer larger than the cap is freed at once). Set it with [`set_pool_limit`] or the
//!   environment variable `KILN_POOL_LIMIT` (bytes, or with a `K`, `M` or `G` suffix in powers
//!   of 1024: `KILN_POOL_LIMIT=256M`), read when the first tensor is created; an invalid value
//!   panics then, naming it ([`pool_limit_from_env`] reports it as an error instead).
//! - **Disabling**: `set_pool_limit(0)` or `KILN_POOL_LIMIT=0` (every buffer goes back to
//!   malloc, as before the pool existed); [`empty_pool`] frees what the pool holds now (say,
//!   after training, before a long idle phase), like `torch.cuda.empty_cache`.
//! - **The cost**: between steps the process keeps up to the cap in freed buffers, so its
//!   resident memory does not drop after a large step; [`pool_stats`] tells how much is held.
//!
//! # Retuning malloc (opt-in)
//!
//! Before the pool, the fix was to retune glibc itself; it still helps the allocations the
//! pool does not see (small blocks, buffers of other libraries). Retuning the allocator changes
//! the whole host process, so kiln does not do it unless the application asks (STYLE: no hidden
//! process-wide state), in one of two ways:
//! - calling [`tune_allocator`] (say, first thing in `main` of a training program), or
//! - setting the environment variable `KILN_TUNE_MALLOC=1` (read once, when the first tensor is
//!   created), which lets a program be measured with and without tuning unchanged:
//!   `KILN_TUNE_MALLOC=1 cargo xtask bench --workloads W3,W5`.
//!
//! The tuning asks glibc to keep freed memory for reuse: blocks below 32 MiB come from the heap
//! rather than from fresh mappings (`M_MMAP_THRESHOLD`) and the heap is not trimmed below 2 GiB
//! of free space (`M_TRIM_THRESHOLD`). The trade-off: steps get faster (fewer page faults), but
//! the process keeps its peak heap mapped, as a caching allocator does, so its resident memory
//! does not shrink after a large step; a library embedded in a larger program should leave that
//! decision to the program. Nothing is changed when the user tuned malloc already
//! (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` or `GLIBC_TUNABLES` set in the
//! environment), or when the program is not linked against glibc (another libc, or a
//! `#[global_allocator]` such as jemalloc, which manages its own reuse).

use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, Once, PoisonError};

/// Guards the one read of `KILN_TUNE_MALLOC`.
static FROM_ENV: Once = Once::new();
/// Serialises [`tune_allocator`] calls.
static TUNING: Mutex<()> = Mutex::new(());
static APPLIED: AtomicBool = AtomicBool::new(false);

/// Applies the tuning if `KILN_TUNE_MALLOC` asks for it, once per process; later calls are a
/// single atomic load. Called when a tensor is created.
#[inline]
pub(crate) fn tune_from_env_once() {
    FROM_ENV.call_once(|| {
        if env_asks(std::env::var("KILN_TUNE_MALLOC").ok().as_deref()) {
            tune_allocator();
        }
    });
}

/// Whether a value of `KILN_TUNE_MALLOC` turns the tuning on (`1`, `true`, `on`, `yes`).
fn env_asks(value: Option<&str>) -> bool {
    value.is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "on" | "yes"))
}

/// Whether the user's own malloc settings are in the environment (they take precedence).
fn user_tuned(env: impl Fn(&str) -> bool) -> bool {
    ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"].iter().any(|k| env(k))
}

/// Asks glibc's malloc to keep freed memory for reuse (see the module docs for what changes and
/// what it costs). Idempotent; returns whether the settings are in effect, which is `false`
/// when the environment already tunes malloc, and on platforms other than Linux with glibc.
///
/// ```
/// let applied = kiln_tensor::alloc::tune_allocator();
/// assert_eq!(applied, kiln_tensor::alloc::allocator_tuned());
/// ```
pub fn tune_allocator() -> bool {
    let _once = TUNING.lock().unwrap_or_else(PoisonError::into_inner);
    if !APPLIED.load(Ordering::Relaxed) && !user_tuned(|k| std::env::var_os(k).is_some()) {
        APPLIED.store(configure(), Ordering::Relaxed);
    }
    APPLIED.load(Ordering::Relaxed)
}

/// Whether kiln's malloc settings are in effect in this process: `false` unless
/// [`tune_allocator`] was called or `KILN_TUNE_MALLOC=1` is set (and they could be applied).
pub fn allocator_tuned() -> bool {
    tune_from_env_once();
    APPLIED.load(Ordering::Relaxed)
}

/// Applies the settings; whether glibc accepted them.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn configure() -> bool {
    use std::os::raw::c_int;
    extern "C" {
        fn mallopt(param: c_int, value: c_int) -> c_int;
    }
    // <malloc.h>: M_TRIM_THRESHOLD = -1, M_MMAP_THRESHOLD = -3. glibc caps the mmap threshold
    // at 32 MiB on 64-bit targets (HEAP_MAX_SIZE / 2); larger blocks are still mapped and
    // returned at once.
    const M_TRIM_THRESHOLD: c_int = -1;
    const M_MMAP_THRESHOLD: c_int = -3;
    // SAFETY: mallopt only changes allocator parameters; it is thread-safe (it takes the arena
    // locks) and these values are within the documented ranges.
    unsafe { mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, c_int::MAX) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn configure() -> bool {
    false
}

// ------------------------------------------------------------------------- the buffer pool

/// Buffers smaller than this many bytes are not pooled (malloc's bins reuse small blocks).
pub const POOL_MIN_BYTES: usize = 64 << 10;

/// The pool's cap when neither [`set_pool_limit`] nor `KILN_POOL_LIMIT` sets one: 1 GiB.
pub const DEFAULT_POOL_LIMIT: usize = 1 << 30;

/// `LIMIT` before the first tensor reads `KILN_POOL_LIMIT`.
const UNSET: usize = usize::MAX;
/// The cap in bytes (0: the pool is off).
static LIMIT: AtomicUsize = AtomicUsize::new(UNSET);
/// The process's pool.
static POOL: Mutex<Pool> = Mutex::new(Pool::new());

/// `KILN_POOL_LIMIT` holds something other than a byte count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadPoolLimit {
    /// The variable's value, as set.
    pub value: String,
}

impl std::fmt::Display for BadPoolLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KILN_POOL_LIMIT={:?}: expected a byte count such as 1073741824, 512M or 2G (K, M, G in \
             powers of 1024), or 0 to turn kiln's buffer pool off",
            self.value
        )
    }
}

impl std::error::Error for BadPoolLimit {}

/// The pool cap `KILN_POOL_LIMIT` asks for, in bytes: `Ok(None)` when unset or empty.
///
/// The pool reads it once, when the first tensor is created, and **panics** with this error's
/// message when the value is not a byte count, rather than ignoring a setting the user made;
/// call this first to report it your own way.
///
/// # Errors
/// [`BadPoolLimit`] naming the value.
pub fn pool_limit_from_env() -> Result<Option<usize>, BadPoolLimit> {
    parse_limit(std::env::var_os("KILN_POOL_LIMIT").map(|v| v.to_string_lossy().into_owned()))
}

fn parse_limit(value: Option<String>) -> Result<Option<usize>, BadPoolLimit> {
    let Some(raw) = value else { return Ok(None) };
    let v = raw.trim().to_ascii_lowercase();
    if v.is_empty() {
        return Ok(None);
    }
    if v == "off" {
        return Ok(Some(0));
    }
    let bad = || BadPoolLimit { value: raw.clone() };
    let digits = v.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let shift = match &v[digits.len()..] {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(bad()),
    };
    let n: usize = digits.trim().parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).filter(|&b| b != UNSET).map(Some).ok_or_else(bad)
}

/// The pool's cap in bytes (0: off), reading `KILN_POOL_LIMIT` the first time.
fn limit() -> usize {
    let l = LIMIT.load(Ordering::Acquire);
    if l != UNSET {
        return l;
    }
    let from_env = match pool_limit_from_env() {
        Ok(v) => v.unwrap_or(DEFAULT_POOL_LIMIT),
        // A setting that is silently ignored is worse than none: stop, naming it.
        Err(e) => panic!("{e}"),
    };
    match LIMIT.compare_exchange(UNSET, from_env, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => from_env,
        Err(set_meanwhile) => set_meanwhile,
    }
}

/// The most bytes kiln's buffer pool holds (0 when the pool is off): [`DEFAULT_POOL_LIMIT`]
/// unless [`set_pool_limit`] or `KILN_POOL_LIMIT` changed it.
///
/// **Panics** if `KILN_POOL_LIMIT` is invalid (see [`pool_limit_from_env`]).
pub fn pool_limit() -> usize {
    limit()
}

/// Sets the most bytes kiln's buffer pool holds; `0` turns the pool off. Buffers held beyond
/// the new cap are freed at once (oldest first). Takes precedence over `KILN_POOL_LIMIT`.
///
/// ```
/// use kiln_tensor::alloc;
/// let before = alloc::pool_limit();
/// alloc::set_pool_limit(256 << 20);
/// assert_eq!(alloc::pool_limit(), 256 << 20);
/// assert!(alloc::pool_stats().held_bytes <= 256 << 20);
/// alloc::set_pool_limit(before);
/// ```
pub fn set_pool_limit(bytes: usize) {
    // (usize::MAX is the "not read yet" mark; one byte less is as unlimited)
    let bytes = bytes.min(UNSET - 1);
    LIMIT.store(bytes, Ordering::Release);
    let evicted = lock_pool().shrink_to(bytes);
    drop(evicted);
}

/// Frees every buffer kiln's pool holds (the pool stays on and fills again as tensors are
/// dropped), like `torch.cuda.empty_cache`.
///
/// ```
/// kiln_tensor::alloc::empty_pool();
/// // (other threads may return buffers at any time; here none do)
/// assert_eq!(kiln_tensor::alloc::pool_stats().held_bytes, 0);
/// ```
pub fn empty_pool() {
    let evicted = lock_pool().shrink_to(0);
    drop(evicted);
}

/// What kiln's buffer pool holds and how often it served a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes of the buffers held for reuse.
    pub held_bytes: usize,
    /// Number of buffers held for reuse.
    pub held_buffers: usize,
    /// Requests served by a held buffer.
    pub hits: u64,
    /// Requests of pooled size that found no buffer (and went to malloc).
    pub misses: u64,
    /// Buffers freed to keep the pool under its cap (or by [`empty_pool`]).
    pub evictions: u64,
}

/// A snapshot of kiln's buffer pool: bytes held, hits and misses since the process started.
pub fn pool_stats() -> PoolStats {
    lock_pool().stats
}

fn lock_pool() -> std::sync::MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Bins: (element size, element alignment, size class).
type Key = (usize, usize, u32);

/// A held allocation: a `Vec<T>`'s pointer and capacity, with the function that frees it as
/// that `Vec<T>`.
struct Block {
    seq: u64,
    ptr: NonNull<u8>,
    cap: usize,
    free: unsafe fn(NonNull<u8>, usize),
}

// SAFETY: a block is an allocation nobody else points to (its Vec was given up to the pool),
// so it may be freed or handed out on any thread.
unsafe impl Send for Block {}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`cap` came from a `Vec<T>` given up by `recycle::<T>` and `free` is
        // `free_vec::<T>`; the block owns the allocation (it was not handed out).
        unsafe { (self.free)(self.ptr, self.cap) }
    }
}

/// Frees an allocation of `cap` elements of `T` made by a `Vec<T>`.
///
/// # Safety
/// `ptr` and `cap` must be the pointer and capacity of a `Vec<T>` whose ownership the caller
/// holds (the `Vec` itself was forgotten).
unsafe fn free_vec<T>(ptr: NonNull<u8>, cap: usize) {
    // SAFETY: the caller's contract; length 0, so no element is dropped.
    drop(unsafe { Vec::from_raw_parts(ptr.as_ptr().cast::<T>(), 0, cap) });
}

/// The size-class bins: buffers held, newest last in each bin, and the order they came in.
struct Pool {
    bins: BTreeMap<Key, Vec<Block>>,
    /// Every held block's sequence number and bin, oldest first (for eviction).
    order: BTreeMap<u64, Key>,
    next_seq: u64,
    stats: PoolStats,
}

impl Pool {
    const fn new() -> Self {
        Pool {
            bins: BTreeMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            stats: PoolStats { held_bytes: 0, held_buffers: 0, hits: 0, misses: 0, evictions: 0 },
        }
    }

    /// The newest block of a bin, if any.
    fn take(&mut self, key: Key) -> Option<Block> {
        let bin = self.bins.get_mut(&key)?;
        let b = bin.pop()?;
        if bin.is_empty() {
            self.bins.remove(&key);
        }
        self.order.remove(&b.seq);
        self.stats.held_bytes -= b.cap * key.0;
        self.stats.held_buffers -= 1;
        self.stats.hits += 1;
        Some(b)
    }

    /// Keeps a block, then frees the oldest ones until at most `limit` bytes are held; returns
    /// the blocks to free (outside the lock).
    fn put(
        &mut self,
        key: Key,
        ptr: NonNull<u8>,
        cap: usize,
        free: unsafe fn(NonNull<u8>, usize),
        limit: usize,
    ) -> Vec<Block> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bins.entry(key).or_default().push(Block { seq, ptr, cap, free });
        self.order.insert(seq, key);
        self.stats.held_bytes += cap * key.0;
        self.stats.held_buffers += 1;
        self.shrink_to(limit)
    }

    /// Removes the oldest blocks until at most `limit` bytes are held; returns them.
    fn shrink_to(&mut self, limit: usize) -> Vec<Block> {
        let mut evicted = Vec::new();
        while self.stats.held_bytes > limit {
            let Some((seq, key)) = self.order.pop_first() else { break };
            let bin = self.bins.get_mut(&key).expect("every ordered block has a bin");
            // a bin's blocks are in sequence order (pushed in order, taken from the end)
            let at = bin.iter().position(|b| b.seq == seq).expect("the block is in its bin");
            let b = bin.remove(at);
            if bin.is_empty() {
                self.bins.remove(&key);
            }
            self.stats.held_bytes -= b.cap * key.0;
            self.stats.held_buffers -= 1;
            self.stats.evictions += 1;
            evicted.push(b);
        }
        evicted
    }
}

/// The size class of a byte count of at least [`POOL_MIN_BYTES`] and that class's size: eight
/// classes per power of two, `(8 + j) · 2^(k-3)` bytes. `up` rounds to the class at or above
/// `bytes` (the class a request is served from), otherwise at or below (the class a buffer
/// can serve).
fn size_class(bytes: usize, up: bool) -> (u32, usize) {
    debug_assert!(bytes >= POOL_MIN_BYTES);
    let k = usize::BITS - 1 - bytes.leading_zeros(); // 2^k <= bytes
    let unit = 1usize << (k - 3);
    let mut j = (bytes >> (k - 3)) - 8; // 0..8
    let mut size = (8 + j) << (k - 3);
    if up && size < bytes {
        j += 1;
        size += unit;
    }
    // (j == 8 is class 0 of the next power: the same index and size)
    (k * 8 + j as u32, size)
}

/// Whether a request of this many bytes is served from the pool (it is on, and the buffer is
/// neither small nor larger than the cap).
fn poolable(bytes: usize) -> bool {
    bytes >= POOL_MIN_BYTES && bytes <= limit()
}

/// An empty vector with room for at least `n` elements, reusing a pooled buffer when one of the
/// right size class is held. Its spare capacity holds stale data of earlier tensors: write
/// every element before reading it (`extend`, `resize`, or `spare_capacity_mut` + `set_len`).
pub(crate) fn take<T: Copy>(n: usize) -> Vec<T> {
    let size = size_of::<T>();
    let bytes = n.saturating_mul(size);
    if !poolable(bytes) {
        return Vec::with_capacity(n);
    }
    let (class, class_bytes) = size_class(bytes, true);
    let key = (size, align_of::<T>(), class);
    let block = {
        let mut pool = lock_pool();
        let b = pool.take(key);
        if b.is_none() {
            pool.stats.misses += 1;
        }
        b
    };
    match block {
        Some(b) => {
            let b = std::mem::ManuallyDrop::new(b);
            debug_assert!(b.cap >= n);
            // SAFETY: the block holds a `Vec` allocation of `b.cap` elements of the same size
            // and alignment as `T` (its bin's key), which the pool owned; `ManuallyDrop` keeps
            // the block from freeing it. Length 0: nothing stale is readable.
            unsafe { Vec::from_raw_parts(b.ptr.as_ptr().cast::<T>(), 0, b.cap) }
        }
        // the whole class, so that the buffer serves this size again when it comes back
        None => Vec::with_capacity(class_bytes / size),
    }
}

/// A vector of `n` copies of `value` (zeros for `E::zero()`), in a pooled buffer when one fits.
pub(crate) fn take_filled<T: Copy>(n: usize, value: T) -> Vec<T> {
    if !poolable(n.saturating_mul(size_of::<T>())) {
        // as before the pool: zeros come from `calloc`, whose fresh pages need no writing
        return vec![value; n];
    }
    let mut v = take(n);
    v.resize(n, value);
    v
}

/// A vector of the items of `iter`, in a pooled buffer when one fits `n` of them (`n` should
/// be the iterator's length; more items still fit, the vector grows).
pub(crate) fn take_collect<T: Copy>(n: usize, iter: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut v = take(n);
    v.extend(iter);
    v
}

/// A copy of a slice, in a pooled buffer when one fits.
pub(crate) fn take_copy<T: Copy>(s: &[T]) -> Vec<T> {
    let mut v = take(s.len());
    v.extend_from_slice(s);
    v
}

/// Gives a vector's buffer to the pool (or to malloc, when it is small, larger than the cap, or
/// the pool is off).
pub(crate) fn recycle<T: Copy>(v: Vec<T>) {
    let size = size_of::<T>();
    let bytes = v.capacity().saturating_mul(size);
    if bytes < POOL_MIN_BYTES {
        return;
    }
    // Never reads the environment here (this runs in `Drop`): the limit was read when the
    // buffer's tensor or kernel took it; a vector kiln never saw before then is just freed.
    let limit = LIMIT.load(Ordering::Acquire);
    if limit == UNSET || bytes > limit {
        return;
    }
    let (class, _) = size_class(bytes, false);
    let mut v = std::mem::ManuallyDrop::new(v);
    let ptr = NonNull::new(v.as_mut_ptr().cast::<u8>()).expect("a vector with capacity has a pointer");
    let evicted = lock_pool().put((size, align_of::<T>(), class), ptr, v.capacity(), free_vec::<T>, limit);
    drop(evicted);
}

/// A tensor's element buffer: a `Vec` that goes back to the pool (see the module docs) when its
/// last owner drops it.
pub(crate) struct Buffer<T: Copy>(Vec<T>);

impl<T: Copy> Buffer<T> {
    /// Wraps a vector (reading the pool's cap from the environment the first time).
    pub(crate) fn new(v: Vec<T>) -> Self {
        limit();
        Buffer(v)
    }

    /// The vector, which leaves the pool's care.
    pub(crate) fn into_vec(mut self) -> Vec<T> {
        std::mem::take(&mut self.0)
    }
}

impl<T: Copy> std::ops::Deref for Buffer<T> {
    type Target = Vec<T>;
    fn deref(&self) -> &Vec<T> {
        &self.0
    }
}

impl<T: Copy> std::ops::DerefMut for Buffer<T> {
    fn deref_mut(&mut self) -> &mut Vec<T> {
        &mut self.0
    }
}

impl<T: Copy> Drop for Buffer<T> {
    fn drop(&mut self) {
        recycle(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::{env_asks, user_tuned};

    #[test]
    fn tuning_is_off_unless_asked_for() {
        assert!(!env_asks(None));
        assert!(!env_asks(Some("")));
        assert!(!env_asks(Some("0")));
        assert!(!env_asks(Some("off")));
        assert!(env_asks(Some("1")));
        assert!(env_asks(Some(" TRUE ")));
        assert!(user_tuned(|k| k == "GLIBC_TUNABLES"));
        assert!(!user_tuned(|_| false));
    }

    #[test]
    fn creating_tensors_does_not_tune_by_default() {
        let _ = crate::Tensor::<f32>::zeros(&[4]);
        if !env_asks(std::env::var("KILN_TUNE_MALLOC").ok().as_deref()) {
            // (no test in this crate calls tune_allocator: it would change this process)
            assert!(!super::allocator_tuned());
        }
    }
}

#[cfg(test)]
mod pool_tests {
    use super::*;
    use crate::Tensor;
    use rayon::prelude::*;

    /// A local pool's block for a fresh `Vec<f32>` of `cap` elements.
    fn put_vec(pool: &mut Pool, cap: usize, limit: usize) -> (Key, usize) {
        let v: Vec<f32> = Vec::with_capacity(cap);
        let mut v = std::mem::ManuallyDrop::new(v);
        let bytes = v.capacity() * 4;
        let key = (4, 4, size_class(bytes, false).0);
        let ptr = NonNull::new(v.as_mut_ptr().cast::<u8>()).unwrap();
        drop(pool.put(key, ptr, v.capacity(), free_vec::<f32>, limit));
        (key, ptr.as_ptr() as usize)
    }

    #[test]
    fn size_classes_round_both_ways() {
        for bytes in [POOL_MIN_BYTES, POOL_MIN_BYTES + 1, 100_000, 1 << 20, (1 << 20) + 4, 3 << 20, 123_456_789] {
            let (lo_i, lo) = size_class(bytes, false);
            let (hi_i, hi) = size_class(bytes, true);
            assert!(lo <= bytes && bytes <= hi, "{bytes}: {lo} {hi}");
            assert!(hi - lo <= bytes / 8, "{bytes}: classes are at most 12.5 % apart");
            assert_eq!(lo_i == hi_i, lo == hi);
            // a buffer allocated for a request's class serves that request when it comes back
            assert_eq!(size_class(hi, false), (hi_i, hi));
            assert_eq!(hi % 8192, 0);
        }
        // the ninth step of an octave is the next octave's first class
        assert_eq!(size_class((1 << 20) + 1, true).0, size_class((1 << 20) * 9 / 8, false).0);
        assert_eq!(size_class((15 << 16) + 1, true), size_class(1 << 20, false));
    }

    #[test]
    fn a_local_pool_reuses_newest_first_and_evicts_oldest() {
        let mut pool = Pool::new();
        let limit = 3 << 20;
        let (key, a) = put_vec(&mut pool, 256 << 10, limit); // 1 MiB each
        let (_, b) = put_vec(&mut pool, 256 << 10, limit);
        assert_eq!(pool.stats.held_buffers, 2);
        assert_eq!(pool.stats.held_bytes, 2 << 20);
        // newest first (warm in cache)
        let got = pool.take(key).unwrap();
        assert_eq!(got.ptr.as_ptr() as usize, b);
        assert_eq!(pool.stats.hits, 1);
        drop(got); // frees it (the block owns its allocation)
        let (_, c) = put_vec(&mut pool, 256 << 10, limit);
        let (_, d) = put_vec(&mut pool, 256 << 10, limit);
        assert_eq!(pool.stats.held_bytes, 3 << 20);
        // a fourth MiB exceeds the cap: the oldest (a) goes
        let (_, e) = put_vec(&mut pool, 256 << 10, limit);
        assert_eq!((pool.stats.held_bytes, pool.stats.evictions), (3 << 20, 1));
        let mut left = Vec::new();
        while let Some(blk) = pool.take(key) {
            left.push(blk.ptr.as_ptr() as usize);
        }
        assert_eq!(left, vec![e, d, c]);
        assert!(!left.contains(&a));
        assert_eq!((pool.stats.held_bytes, pool.stats.held_buffers), (0, 0));
        assert!(pool.bins.is_empty() && pool.order.is_empty());
    }

    #[test]
    fn a_local_pool_shrinks_to_a_new_cap_and_keeps_kinds_apart() {
        let mut pool = Pool::new();
        let (k1, _) = put_vec(&mut pool, 64 << 10, usize::MAX); // 256 KiB
        let (k2, _) = put_vec(&mut pool, 512 << 10, usize::MAX); // 2 MiB
        assert_ne!(k1, k2);
        // f64 buffers of the same bytes are another bin
        assert!(pool.take((8, 8, k2.2)).is_none());
        let evicted = pool.shrink_to(2 << 20);
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0].cap, 64 << 10);
        drop(evicted);
        assert!(pool.take(k1).is_none());
        assert!(pool.take(k2).is_some());
        drop(pool.shrink_to(0));
    }

    #[test]
    fn kiln_pool_limit_is_read_strictly() {
        assert_eq!(parse_limit(None), Ok(None));
        assert_eq!(parse_limit(Some(" ".into())), Ok(None));
        assert_eq!(parse_limit(Some("0".into())), Ok(Some(0)));
        assert_eq!(parse_limit(Some("off".into())), Ok(Some(0)));
        assert_eq!(parse_limit(Some("4096".into())), Ok(Some(4096)));
        assert_eq!(parse_limit(Some("512M".into())), Ok(Some(512 << 20)));
        assert_eq!(parse_limit(Some(" 2g ".into())), Ok(Some(2 << 30)));
        assert_eq!(parse_limit(Some("64KiB".into())), Ok(Some(64 << 10)));
        for bad in ["lots", "-1", "1.5G", "12T", "M", "99999999999999999999G"] {
            let e = parse_limit(Some(bad.into())).unwrap_err();
            assert!(e.to_string().starts_with(&format!("KILN_POOL_LIMIT={bad:?}: expected a byte count")), "{e}");
        }
    }

    /// An element count no other test of this crate asks for (its own size class).
    const ODD: usize = 777_777;

    #[test]
    fn a_dropped_tensor_buffer_serves_the_next_one_and_zeros_stay_zeros() {
        if pool_limit() < 64 << 20 {
            eprintln!("skipped: KILN_POOL_LIMIT is below this test's buffers");
            return;
        }
        let filled: Tensor<f64> = Tensor::full(&[ODD], 7.5);
        let p = filled.storage.as_ptr() as usize;
        let before = pool_stats();
        drop(filled);
        let z: Tensor<f64> = Tensor::zeros(&[ODD]);
        assert_eq!(z.storage.as_ptr() as usize, p, "the buffer was reused");
        assert!(pool_stats().hits > before.hits);
        assert!(z.as_slice().unwrap().iter().all(|&v| v == 0.0), "no stale values in zeros");
        assert_eq!(z.storage.len(), ODD);
        // an op's result in a reused buffer holds exactly the op's values
        let q = z.add_scalar(1.0);
        drop(z);
        let r = q.mul_scalar(3.0);
        assert!(r.as_slice().unwrap().iter().all(|&v| v == 3.0));
        // `into_vec` takes the buffer out of the pool's care: a plain Vec, dropped by malloc
        let v = r.into_vec();
        assert_eq!(v.len(), ODD);
        assert!(v.capacity() >= ODD);
        drop(v);
        // a smaller request in the same class still gets zeros only
        drop(Tensor::<f64>::full(&[ODD], f64::NAN));
        let z2: Tensor<f64> = Tensor::zeros(&[ODD - 1000]);
        assert!(z2.as_slice().unwrap().iter().all(|&v| v == 0.0));
        assert_eq!(z2.numel(), ODD - 1000);
    }

    #[test]
    fn small_buffers_are_left_to_malloc() {
        let t: Tensor<f32> = Tensor::ones(&[1000]); // 4 KB
        drop(t);
        let v: Vec<f32> = take(1000);
        assert_eq!(v.capacity(), 1000, "an exact allocation, not a size class");
        let mut big: Vec<f32> = take(POOL_MIN_BYTES / 4 + 1);
        assert!(big.capacity() > POOL_MIN_BYTES / 4 + 1, "pooled sizes are rounded up to their class");
        big.push(1.0);
        assert_eq!(big.len(), 1, "a taken buffer starts empty");
    }

    #[test]
    fn rayon_threads_return_and_take_buffers_concurrently() {
        if pool_limit() < 64 << 20 {
            eprintln!("skipped: KILN_POOL_LIMIT is below this test's buffers");
            return;
        }
        let n = 20_000; // 80 KB per f32 tensor: pooled
        crate::parallel::install(|_| {
            for round in 0..4 {
                let ts: Vec<Tensor<f32>> =
                    (0..32).into_par_iter().map(|i| Tensor::full(&[n + i * 100], (round * 100 + i) as f32)).collect();
                // drop on the workers, in parallel
                ts.into_par_iter().for_each(|t| {
                    let want = t.as_slice().unwrap()[0];
                    assert!(t.as_slice().unwrap().iter().all(|&v| v == want));
                    drop(t);
                });
                let zs: Vec<Tensor<f32>> = (0..32).into_par_iter().map(|i| Tensor::zeros(&[n + i * 100])).collect();
                assert!(zs.par_iter().all(|z| z.as_slice().unwrap().iter().all(|&v| v == 0.0)));
            }
        });
        let s = pool_stats();
        assert!(s.held_bytes <= pool_limit());
        assert!(s.hits > 0);
    }
}
