//! Copying file data with its holes kept: a reflink where the filesystem can, else
//! copy_file_range over the data extents, else sendfile, else read/write. Used by copy-up and
//! by filling a metadata-only copy.
//!
//! The copy goes in chunks, and where the copy will be flushed, each chunk's writeback to disk
//! starts as soon as it is copied: copy-up flushes the copy before it publishes it (a crash must not leave a
//! published file with missing data), and that flush then waits only for the last chunks
//! instead of the whole file. fuse-overlayfs copies without flushing, which is faster by the
//! time of that flush but can leave a truncated or empty file under the name after a crash.
//! Without the flush (`-o volatile`) the early writeback would only compete with the copy
//! for the disk, so the copy leaves writeback to the kernel as fuse-overlayfs does.

use std::os::fd::BorrowedFd;

use crate::sys::{self, Errno, SysResult};

/// Copies file data keeping holes: reflink if the filesystem can, else copy_file_range over the
/// data extents, else read/write. `flushed`: the caller flushes the copy afterwards, so its
/// writeback starts chunk by chunk.
pub fn copy_data(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    size: u64,
    flushed: bool,
) -> SysResult<()> {
    if size == 0 {
        return Ok(());
    }
    if sys::ficlone(dst, src).is_ok() {
        return Ok(());
    }
    let mut off: i64 = 0;
    let end = size as i64;
    while off < end {
        let data = match sys::lseek(src, off, libc::SEEK_DATA) {
            Ok(d) => d,
            Err(Errno::ENXIO) => break,
            Err(Errno::EINVAL) | Err(Errno::EOPNOTSUPP) => off,
            Err(e) => return Err(e),
        };
        let hole = match sys::lseek(src, data, libc::SEEK_HOLE) {
            Ok(h) => h.min(end),
            Err(_) => end,
        };
        copy_range(src, dst, data, hole, flushed)?;
        off = hole;
    }
    sys::ftruncate(dst, size)
}

/// How much is copied before its writeback is started.
const CHUNK: usize = 8 << 20;

/// Starts the writeback of what was just copied; where the filesystem cannot, the flush at
/// the end does it all.
fn written(dst: BorrowedFd<'_>, from: i64, to: i64, flushed: bool) {
    if flushed {
        let _ = sys::start_writeback(dst, from, to - from);
    }
}

fn copy_range(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    from: i64,
    to: i64,
    flushed: bool,
) -> SysResult<()> {
    let mut off_in = from;
    let mut off_out = from;
    while off_in < to {
        let want = ((to - off_in) as usize).min(CHUNK);
        let at = off_out;
        match sys::copy_file_range(src, &mut off_in, dst, &mut off_out, want) {
            Ok(0) => return Ok(()),
            Ok(_) => written(dst, at, off_out, flushed),
            // Between filesystems: the kernel still copies with sendfile.
            Err(Errno::EXDEV)
            | Err(Errno::EINVAL)
            | Err(Errno::ENOSYS)
            | Err(Errno::EOPNOTSUPP) => {
                return copy_range_sendfile(src, dst, off_in, to, flushed);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn copy_range_sendfile(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    from: i64,
    to: i64,
    flushed: bool,
) -> SysResult<()> {
    sys::lseek(dst, from, libc::SEEK_SET)?;
    let mut off = from;
    while off < to {
        let want = ((to - off) as usize).min(CHUNK);
        let at = off;
        match sys::sendfile(dst, src, &mut off, want) {
            Ok(0) => return Ok(()),
            Ok(_) => written(dst, at, off, flushed),
            Err(Errno::EINVAL) | Err(Errno::ENOSYS) => return copy_range_rw(src, dst, off, to),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn copy_range_rw(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, from: i64, to: i64) -> SysResult<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut off = from as u64;
    while off < to as u64 {
        let want = ((to as u64 - off) as usize).min(buf.len());
        let n = sys::pread(src, &mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        let mut w = 0;
        while w < n {
            w += sys::pwrite(dst, &buf[w..n], off + w as u64)?;
        }
        off += n as u64;
    }
    Ok(())
}
