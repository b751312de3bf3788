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

/// A zeroed byte buffer aligned for direct I/O (4096 bytes), reused across
/// tokens by the disk tier. Failure to allocate is an error.
pub struct AlignedBytes {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

/// Alignment of [`AlignedBytes`]: the largest logical block size of common
/// devices, as `O_DIRECT` requires for buffers, offsets and lengths.
pub const DIRECT_ALIGN: usize = 4096;

// SAFETY: a uniquely owned heap buffer, like `Vec<u8>`.
unsafe impl Send for AlignedBytes {}
unsafe impl Sync for AlignedBytes {}

impl AlignedBytes {
    /// `len` rounded up to [`DIRECT_ALIGN`].
    pub fn new(len: usize) -> std::io::Result<Self> {
        use std::io;
        let len = len.max(1).next_multiple_of(DIRECT_ALIGN);
        let layout = std::alloc::Layout::from_size_align(len, DIRECT_ALIGN)
            .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "allocation too large"))?;
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(ptr).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("cannot allocate {len} bytes"),
            )
        })?;
        Ok(AlignedBytes { ptr, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` initialised (zeroed, then written) bytes we own.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBytes {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this size and alignment.
        unsafe {
            std::alloc::dealloc(
                self.ptr.as_ptr(),
                std::alloc::Layout::from_size_align_unchecked(self.len, DIRECT_ALIGN),
            )
        }
    }
}

impl std::fmt::Debug for AlignedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBytes({} bytes)", self.len)
    }
}
