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

/// Types for which all-zero bytes are a valid value.
///
/// # Safety
/// Implement only for plain data (integers, floats, arrays and `repr(C)`
/// structs of them).
pub unsafe trait ZeroValid {}

// SAFETY: 0.0.
unsafe impl ZeroValid for f32 {}

/// A zero-initialised vector of `n` values. `alloc_zeroed` hands back
/// untouched pages for large sizes, so nothing is written twice and memory
/// becomes resident only as it is used. Failure is an error, never an abort.
pub fn zeroed_vec<T: ZeroValid>(n: usize) -> std::io::Result<Vec<T>> {
    use std::io;
    if n == 0 || std::mem::size_of::<T>() == 0 {
        return Ok(Vec::new());
    }
    let layout = std::alloc::Layout::array::<T>(n)
        .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "allocation too large"))?;
    // SAFETY: the layout has non-zero size; all-zero bytes are a valid `T`
    // (`ZeroValid`); `Vec::from_raw_parts` gets the global allocator's
    // pointer with the same layout, length and capacity `n`.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout).cast::<T>();
        if ptr.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("cannot allocate {} bytes", layout.size()),
            ));
        }
        Ok(Vec::from_raw_parts(ptr, n, n))
    }
}
