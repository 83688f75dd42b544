//! How freed tensor buffers go back to the system.
//!
//! A training step allocates and frees the same large buffers (activations, gradients, GEMM
//! outputs) over and over. With glibc's default settings a freed buffer of a few megabytes is
//! unmapped (or the heap top trimmed) and the next step maps it again, page by page: every page
//! costs a kernel page fault and a zeroing, which measured 20–30 % of a Transformer training
//! step (`cargo xtask bench --workloads W5`: 385 → 306 ms per step, page faults 230k → 56k).
//! PyTorch's CPU guides recommend swapping in jemalloc or tcmalloc for the same reason.
//!
//! kiln therefore asks glibc, once, when the first tensor is created, to keep freed memory for
//! reuse: blocks below 32 MiB come from the heap rather than from fresh mappings
//! (`M_MMAP_THRESHOLD`) and the heap is not trimmed below 2 GiB of free space
//! (`M_TRIM_THRESHOLD`). The cost is that the process keeps its peak heap mapped, as a caching
//! allocator does. Nothing is changed when
//! - the variable `KILN_KEEP_FREED_MEMORY=0` is set,
//! - the user tuned malloc already (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`,
//!   `GLIBC_TUNABLES` set in the environment),
//! - or the program is not linked against glibc (another libc, or a `#[global_allocator]`
//!   such as jemalloc, which manages its own reuse; glibc's settings then have no effect).

use std::sync::Once;

static CONFIGURE: Once = Once::new();

/// Applies kiln's malloc settings once per process (see the module docs); later calls are a
/// single atomic load.
#[inline]
pub(crate) fn keep_freed_memory_once() {
    CONFIGURE.call_once(|| {
        if wanted(|k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned())) {
            configure();
        }
    });
}

/// Whether kiln should tune malloc, given a way to read environment variables.
fn wanted(env: impl Fn(&str) -> Option<String>) -> bool {
    if env("KILN_KEEP_FREED_MEMORY").is_some_and(|v| matches!(v.trim(), "0" | "false" | "off" | "no")) {
        return false;
    }
    !["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"].iter().any(|k| env(k).is_some())
}

/// Whether kiln's malloc settings were applied in this process.
///
/// `false` before the first tensor is created, when they were turned off (see the module
/// docs), and on platforms other than Linux with glibc.
pub fn keeps_freed_memory() -> bool {
    keep_freed_memory_once();
    APPLIED.load(std::sync::atomic::Ordering::Relaxed)
}

static APPLIED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn configure() {
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
    let ok = unsafe { mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, c_int::MAX) == 1 };
    APPLIED.store(ok, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn configure() {}

#[cfg(test)]
mod tests {
    use super::wanted;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn tuning_is_on_by_default_and_yields_to_the_user() {
        assert!(wanted(env(&[])));
        assert!(wanted(env(&[("KILN_KEEP_FREED_MEMORY", "1")])));
        assert!(!wanted(env(&[("KILN_KEEP_FREED_MEMORY", "0")])));
        assert!(!wanted(env(&[("KILN_KEEP_FREED_MEMORY", " off ")])));
        assert!(!wanted(env(&[("MALLOC_MMAP_THRESHOLD_", "65536")])));
        assert!(!wanted(env(&[("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1")])));
    }

    #[test]
    fn settings_are_applied_on_glibc() {
        let _ = crate::Tensor::<f32>::zeros(&[4]);
        let expected = cfg!(all(target_os = "linux", target_env = "gnu"))
            && wanted(|k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned()));
        assert_eq!(super::keeps_freed_memory(), expected);
    }
}
