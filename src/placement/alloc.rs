//! Allocator policy for a streaming tier store.
//!
//! Disk-tier layers are allocated and freed every token. glibc's malloc
//! raises its mmap threshold after the first large free, after which such
//! buffers come from per-thread heaps that rarely shrink: freed layers would
//! stay in the resident set, breaking the promise that a disk layer's bytes
//! leave memory once used. A fixed threshold keeps every buffer of 1 MiB or
//! more in its own mapping, returned to the system on free.

/// Buffers at least this large get their own mapping.
const MMAP_THRESHOLD_BYTES: i32 = 1 << 20;

/// Applies the policy; call before loading. A no-op off glibc.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
    }
}

/// Returns freed heap memory to the system (after loading, which leaves
/// tokenizer-construction garbage behind). A no-op off glibc.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory malloc no longer uses.
    unsafe {
        libc::malloc_trim(0);
    }
}
