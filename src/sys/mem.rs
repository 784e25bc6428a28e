//! Large buffers as anonymous mappings: their pages cost memory only once written, and go back
//! to the system when the buffer drops, whichever thread allocated it (a 1 MiB request buffer
//! from `calloc` in a thread's malloc arena is zeroed page by page and stays resident there
//! after the thread exits).

use std::ops::{Deref, DerefMut};

use super::{Errno, SysResult};

/// A zeroed byte buffer backed by its own private anonymous mapping.
#[derive(Debug)]
pub struct Region {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by this value alone; moving it between threads moves the only
// handle to it.
unsafe impl Send for Region {}

impl Region {
    /// A buffer of `len` zero bytes (none of them resident until written).
    pub fn new(len: usize) -> SysResult<Region> {
        let len = len.max(1);
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        Ok(Region {
            ptr: ptr.cast(),
            len,
        })
    }

    /// The mapping's address, for handing the buffer to the kernel (an io_uring entry).
    pub fn addr(&self) -> *mut u8 {
        self.ptr
    }

    /// Hands the buffer's pages back to the system, keeping the mapping: it reads as zeroes.
    pub fn discard(&mut self) {
        // SAFETY: the range is this mapping; MADV_DONTNEED on private anonymous memory only
        // makes its next read see zeroes, and `&mut self` rules out borrows of the old bytes.
        unsafe { libc::madvise(self.ptr.cast(), self.len, libc::MADV_DONTNEED) };
    }
}

impl Deref for Region {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len` bytes were mapped readable and stay mapped while `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl DerefMut for Region {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, writable, and `&mut self` makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
