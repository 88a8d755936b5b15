//! Host memory the C allocator holds after device copies on the CPU backend are dropped.
//!
//! glibc's malloc serves allocations under its (adaptive, up to 32 MiB) mmap threshold from its
//! heaps, and keeps the pages of freed chunks. After an offload on the CPU backend those pages
//! are the old device copies: `malloc_trim(0)` hands them back to the OS, so that anonymous RSS
//! after offload shows what is really still allocated.
#![allow(unsafe_code)]

/// Returns the C allocator's free pages to the OS (glibc); a no-op elsewhere.
pub(crate) fn return_free_pages_to_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory that malloc holds free; it takes no pointers and
    // is thread-safe (it locks every arena).
    unsafe {
        libc::malloc_trim(0);
    }
}
