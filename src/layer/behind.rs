//! Copies flushed behind: a large file's copy-up is renamed into the upper as soon as its data
//! is copied, and flushed in the background, so the writer does not wait for the disk (kernel
//! overlayfs makes it wait) and the upper shows the file at once, to the mount and to anyone
//! reading the upper directory (fuse-overlayfs does the same, but a crash can then leave a
//! short or empty file under the name, for good).
//!
//! What keeps a crash from doing that here is a record of the copy not yet flushed, made
//! before the rename and on disk no later than it (see [`write_record`]): its boot, the lower
//! layer it was copied from, its place. The flush drops it, and anything that moves the name
//! flushes first (`fs::behind`). The next mount makes whole the files of the records left
//! (`repair`) before it serves anything. Until then, a crashed upper read directly (not
//! through unionfs) may show such a file short; `-o flush_behind=off` keeps the kernel's
//! order (flushed, then renamed) where that matters.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, OwnedFd};

use crate::layer::stack::{LayerIdx, Stack};
use crate::sys::{self, Errno, SysResult};

/// Names of records in the work dir.
pub const BEHIND_PREFIX: &str = "#unionfs-behind-";

/// A copy-up in the upper whose data may not be on disk yet.
#[derive(Debug)]
pub struct Unflushed {
    /// The copy (what the flush needs).
    pub file: OwnedFd,
    /// Its record's name in the work dir.
    pub record: CString,
}

/// This boot's id: a record made in another boot means the machine went down meanwhile.
pub fn boot_id() -> Vec<u8> {
    let mut id = std::fs::read("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    id.retain(|b| !b.is_ascii_whitespace());
    id
}

/// Writes the record of a copy of `rel` from layer `src` about to be published unflushed.
/// Returns the record's name.
///
/// The record is metadata only (an empty file and an xattr), so the journal of ext4, xfs or
/// btrfs has it on disk no later than the rename that follows: a crash that kept the rename
/// kept the record, with no flush of its own. (A flush of a record written as data cost a
/// journal commit, 1 ms per copy-up here: 16 MiB copy-ups took 7 ms instead of 6.) Where the
/// work dir takes no xattrs (or the body is too long for one), it is written as data and
/// flushed.
pub fn write_record(stack: &Stack, rel: &[u8], src: LayerIdx) -> SysResult<CString> {
    let work = stack.work()?;
    let rec = stack.unique_name(BEHIND_PREFIX);
    let fd = sys::openat(
        work,
        &rec,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
        0o600,
    )?;
    let mut body = boot_id();
    body.push(b'\n');
    body.extend_from_slice(src.to_string().as_bytes());
    body.push(b'\n');
    body.extend_from_slice(rel);
    let done = match sys::setxattr(sys::At::new(work, &rec), &stack.behind_xattr, &body, 0) {
        Ok(()) => Ok(()),
        // No xattrs there, or a body too long for one (a path near PATH_MAX).
        Err(_) => match sys::pwrite(fd.as_fd(), &body, 0) {
            Ok(n) if n == body.len() => sys::fsync(fd.as_fd(), false),
            Ok(_) => Err(Errno::ENOSPC),
            Err(e) => Err(e),
        },
    };
    if let Err(e) = done {
        let _ = sys::unlinkat(work, &rec, false);
        return Err(e);
    }
    Ok(rec)
}

/// Drops record `rec` (its copy is flushed, or was never published).
pub fn drop_record(stack: &Stack, rec: &CStr) {
    if let Ok(work) = stack.work() {
        let _ = sys::unlinkat(work, rec, false);
    }
}

/// Flushes a copy published unflushed and drops its record, for good: a record that came
/// back after a crash would have the next mount copy the file again and lose writes that an
/// fsync had put on disk. (ext4 commits the record's removal with the next fsync of anything;
/// btrfs's and ext4 fast-commit's fsync log only the file fsynced, so the work dir is flushed
/// too.) On failure the record stays: the next mount after a crash makes the copy again.
pub fn flush(stack: &Stack, u: &Unflushed) -> SysResult<()> {
    stack.flush(u.file.as_fd())?;
    drop_record(stack, &u.record);
    flush_work_dir(stack)
}

/// Puts the work dir's entries on disk (records made or dropped).
pub fn flush_work_dir(stack: &Stack) -> SysResult<()> {
    let dir = sys::reopen(stack.work()?, libc::O_RDONLY | libc::O_DIRECTORY)?;
    sys::fsync(dir.as_fd(), false)
}

/// What a record says of its copy.
#[derive(Debug)]
pub struct Record {
    /// The boot the copy was made in.
    pub boot: Vec<u8>,
    /// The lower layer it was copied from.
    pub layer: LayerIdx,
    /// Its place in the view.
    pub rel: Vec<u8>,
}

/// Names of the records in the work dir.
pub fn record_names(stack: &Stack) -> Vec<CString> {
    let Ok(entries) = stack.work().and_then(sys::read_dir) else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter(|e| e.name.starts_with(BEHIND_PREFIX.as_bytes()))
        .filter_map(|e| CString::new(e.name).ok())
        .collect()
}

/// Reads record `rec`; `None` for one cut short (written before its copy was renamed in, so
/// that copy never reached the upper).
pub fn read_record(stack: &Stack, rec: &CStr) -> SysResult<Option<Record>> {
    let work = stack.work()?;
    let mut body = vec![0u8; libc::PATH_MAX as usize + 128];
    let n = match sys::getxattr(sys::At::new(work, rec), &stack.behind_xattr, &mut body) {
        Ok(n) => n,
        Err(Errno::ENODATA) | Err(Errno::EOPNOTSUPP) => {
            let fd = sys::openat(work, rec, libc::O_RDONLY | libc::O_NOFOLLOW, 0)?;
            sys::pread(fd.as_fd(), &mut body, 0)?
        }
        Err(e) => return Err(e),
    };
    body.truncate(n);
    let mut parts = body.splitn(3, |b| *b == b'\n');
    let (Some(boot), Some(layer), Some(rel)) = (parts.next(), parts.next(), parts.next()) else {
        return Ok(None);
    };
    let layer = std::str::from_utf8(layer)
        .ok()
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0 && *l < stack.layers.len())
        .ok_or(Errno::EINVAL)?;
    Ok(Some(Record {
        boot: boot.to_vec(),
        layer,
        rel: rel.to_vec(),
    }))
}
