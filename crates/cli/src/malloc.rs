//! One glibc malloc setting, made before anything allocates much.
//!
//! glibc raises its mmap threshold to the size of the largest block freed so far (up to
//! 32 MiB). After the first 1 MiB snapshot block is freed, every later one is carved from the
//! allocating thread's arena instead of being mapped, and each arena (one per thread, up to
//! eight per core) keeps what was freed in it. A full snapshot of 1 GiB then peaked at 70-90 MiB
//! of RSS with 23 MiB of live heap. A fixed threshold maps large blocks and unmaps them on
//! free, so RSS follows the live heap (36 MiB in the same run) for a few page faults per MiB.
#![allow(unsafe_code)]

/// Blocks at least this large are mapped, and unmapped when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 256 * 1024;

/// Fixes glibc's mmap threshold (see the module docs); a no-op on other C libraries.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called at the start of main,
    // before the runtime's threads exist, and its failure (return 0) leaves glibc's defaults.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}
