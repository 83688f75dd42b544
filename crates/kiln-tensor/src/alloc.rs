//! Opt-in tuning of how freed tensor buffers go back to the system.
//!
//! A training step allocates and frees the same large buffers (activations, gradients, GEMM
//! outputs) over and over. With glibc's default settings a freed buffer of a few megabytes is
//! unmapped (or the heap top trimmed) and the next step maps it again, page by page: every page
//! costs a kernel page fault and a zeroing, which measured 20–30 % of a Transformer training
//! step (`cargo xtask bench --workloads W5`: 385 → 306 ms per step, page faults 230k → 56k).
//! PyTorch's CPU guides recommend swapping in jemalloc or tcmalloc for the same reason.
//!
//! Retuning the allocator changes the whole host process, so kiln does not do it unless the
//! application asks (STYLE: no hidden process-wide state), in one of two ways:
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

use std::sync::atomic::{AtomicBool, Ordering};
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
