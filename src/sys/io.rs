//! File data: reads and writes, in-kernel copies (copy_file_range, sendfile, FICLONE), sizes and
//! holes, syncing, and the harness's mmap write.
//!
//! The FUSE data path and copy-up move file contents through these. Callers rely on plain
//! syscall semantics: short reads and writes are returned as such (never retried here, because
//! the caller knows whether a short count is an end), while `EINTR` is retried.

use std::os::fd::{AsRawFd, BorrowedFd};

use super::{check, check_size, retry, Errno, SysResult};

const FICLONE: libc::c_ulong = 0x4004_9409;

/// read(2) into `buf`.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> SysResult<usize> {
    retry(|| {
        // SAFETY: `buf` is writable for its length.
        check_size(unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        })
    })
}

/// write(2) of `buf`.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> SysResult<usize> {
    retry(|| {
        // SAFETY: `buf` is readable for its length.
        check_size(unsafe {
            libc::write(
                fd.as_raw_fd(),
                buf.as_ptr() as *const libc::c_void,
                buf.len(),
            )
        })
    })
}

/// One writev(2) of `a` then `b` (a FUSE reply must reach the device in one call).
pub fn write2(fd: BorrowedFd<'_>, a: &[u8], b: &[u8]) -> SysResult<usize> {
    let iov = [
        libc::iovec {
            iov_base: a.as_ptr() as *mut libc::c_void,
            iov_len: a.len(),
        },
        libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        },
    ];
    retry(|| {
        // SAFETY: both iovecs point at live slices of their lengths, only read by the kernel.
        check_size(unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), 2) })
    })
}

/// pread(2) into `buf`; returns the number of bytes read.
pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], off: u64) -> SysResult<usize> {
    retry(|| {
        // SAFETY: `buf` is writable for its length.
        check_size(unsafe {
            libc::pread(
                fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                off as libc::off_t,
            )
        })
    })
}

/// pwrite(2) of `buf`; returns the number of bytes written.
pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], off: u64) -> SysResult<usize> {
    retry(|| {
        // SAFETY: `buf` is readable for its length.
        check_size(unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
                buf.as_ptr() as *const libc::c_void,
                buf.len(),
                off as libc::off_t,
            )
        })
    })
}

/// copy_file_range(2) with explicit offsets (updated in place).
pub fn copy_file_range(
    src: BorrowedFd<'_>,
    off_in: &mut i64,
    dst: BorrowedFd<'_>,
    off_out: &mut i64,
    len: usize,
) -> SysResult<usize> {
    retry(|| {
        // SAFETY: the offsets are valid, exclusively borrowed integers.
        check_size(unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                off_in as *mut i64,
                dst.as_raw_fd(),
                off_out as *mut i64,
                len,
                0,
            )
        })
    })
}

/// sendfile(2) from `src` at `*off_in` (updated) to `dst` at its file position: an in-kernel
/// copy that also works between filesystems, where copy_file_range refuses.
pub fn sendfile(
    dst: BorrowedFd<'_>,
    src: BorrowedFd<'_>,
    off_in: &mut i64,
    len: usize,
) -> SysResult<usize> {
    retry(|| {
        // SAFETY: `off_in` is a valid, exclusively borrowed integer.
        check_size(unsafe {
            libc::sendfile(dst.as_raw_fd(), src.as_raw_fd(), off_in as *mut i64, len)
        })
    })
}

/// FICLONE: make `dst` share `src`'s extents (reflink) where the filesystem can.
pub fn ficlone(dst: BorrowedFd<'_>, src: BorrowedFd<'_>) -> SysResult<()> {
    // SAFETY: FICLONE takes the source descriptor by value; no memory is passed.
    check(unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) }).map(drop)
}

/// lseek(2); `ENXIO` tells SEEK_DATA/SEEK_HOLE callers there is no more data.
pub fn lseek(fd: BorrowedFd<'_>, off: i64, whence: i32) -> SysResult<i64> {
    // SAFETY: plain integer arguments.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), off as libc::off_t, whence) };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r as i64)
    }
}

/// ftruncate(2).
pub fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> SysResult<()> {
    retry(|| {
        // SAFETY: plain integer arguments.
        check(unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) }).map(drop)
    })
}

/// fallocate(2).
pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, off: u64, len: u64) -> SysResult<()> {
    retry(|| {
        // SAFETY: plain integer arguments.
        check(unsafe {
            libc::fallocate(fd.as_raw_fd(), mode, off as libc::off_t, len as libc::off_t)
        })
        .map(drop)
    })
}

/// Starts writing `len` bytes at `off` of `fd` back to disk without waiting for it
/// (sync_file_range with SYNC_FILE_RANGE_WRITE): a later fsync then waits only for what is
/// still in flight.
pub fn start_writeback(fd: BorrowedFd<'_>, off: i64, len: i64) -> SysResult<()> {
    // SAFETY: plain integer arguments.
    let r = unsafe { libc::sync_file_range(fd.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE) };
    check(r).map(drop)
}

/// fsync(2) or fdatasync(2).
pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> SysResult<()> {
    retry(|| {
        // SAFETY: plain integer argument.
        let r = unsafe {
            if datasync {
                libc::fdatasync(fd.as_raw_fd())
            } else {
                libc::fsync(fd.as_raw_fd())
            }
        };
        check(r).map(drop)
    })
}

/// syncfs(2): writes back everything of the filesystem `fd` is on.
pub fn syncfs(fd: BorrowedFd<'_>) -> SysResult<()> {
    // SAFETY: plain integer argument.
    retry(|| check(unsafe { libc::syncfs(fd.as_raw_fd()) }).map(drop))
}

/// Writes `data` at `off` of `file` through a shared memory mapping (the harness's mmap step).
pub fn mmap_write(file: &std::fs::File, off: usize, data: &[u8]) -> std::io::Result<()> {
    // SAFETY: the caller opened `file` read-write just now and nothing truncates it while the
    // mapping lives (it is dropped at the end of this function), so the mapping stays valid.
    let mut m = unsafe { memmap2::MmapMut::map_mut(file)? };
    if off + data.len() > m.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "mmap write past the end of the file",
        ));
    }
    m[off..off + data.len()].copy_from_slice(data);
    m.flush()
}
