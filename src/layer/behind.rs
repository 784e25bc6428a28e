//! Copies flushed behind: a large file's copy-up is renamed into the upper as soon as its data
//! is copied, and flushed in the background, so the writer does not wait for the disk (kernel
//! overlayfs makes it wait) and the upper shows the file at once, to the mount and to anyone
//! reading the upper directory (fuse-overlayfs does the same, but a crash can then leave a
//! short or empty file under the name, for good).
//!
//! What keeps a crash from doing that here is a record of the copy not yet flushed, made
//! before the rename and on disk no later than it (see [`write_record`]): its boot, the lower
//! layer it was copied from, its place. The flush drops it, and anything that moves the name
//! flushes first (`fs::behind`). The next mount reads what records are left. A record from this boot is a
//! daemon that died (`kill -9`): the page cache still holds the copy and every write to it,
//! which are flushed now. A record from an earlier boot is a machine crash: the copy may have
//! lost data, so it is made again from its lower file (which never changes) and flushed: the
//! file is what it was right after the copy-up, the state of a file whose later writes had not
//! reached the disk, as unflushed writes may not have. The upper is whole again before the
//! mount serves anything. Until that mount, a crashed upper read directly (not through
//! unionfs) may show such a file short; `-o flush_behind=off` keeps the kernel's order
//! (flushed, then renamed) where that matters.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, OwnedFd};

use crate::layer::copyup::{self, CopyData};
use crate::layer::stack::{remove_tree, LayerIdx, Stack};
use crate::sys::{self, Errno, SysResult};

/// Names of records in the work dir.
pub const BEHIND_PREFIX: &str = "#unionfs-behind-";

/// Where a record keeps its body, in the namespace the stack's own xattrs use.
const RECORD_XATTRS: [&CStr; 2] = [c"trusted.unionfs.behind", c"user.unionfs.behind"];

fn record_xattr(stack: &Stack) -> &'static CStr {
    if stack.origin_xattr.as_c_str() == crate::layer::whiteout::ORIGIN_XATTRS[0] {
        RECORD_XATTRS[0]
    } else {
        RECORD_XATTRS[1]
    }
}

/// A copy-up in the upper whose data may not be on disk yet.
#[derive(Debug)]
pub struct Unflushed {
    /// The copy (what the flush needs).
    pub file: OwnedFd,
    /// Its record's name in the work dir.
    pub record: CString,
}

/// This boot's id: a record made in another boot means the machine went down meanwhile.
fn boot_id() -> Vec<u8> {
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
    let base = stack.stage_name();
    let n = base
        .to_bytes()
        .strip_prefix(super::stack::STAGE_PREFIX.as_bytes());
    let mut name = BEHIND_PREFIX.as_bytes().to_vec();
    name.extend_from_slice(n.unwrap_or(base.to_bytes()));
    let rec = CString::new(name).map_err(|_| Errno::EINVAL)?;
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
    let done = match sys::setxattr(sys::At::new(work, &rec), record_xattr(stack), &body, 0) {
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
fn flush_work_dir(stack: &Stack) -> SysResult<()> {
    let dir = sys::reopen(stack.work()?, libc::O_RDONLY | libc::O_DIRECTORY)?;
    sys::fsync(dir.as_fd(), false)
}

impl Stack {
    /// Makes whole the copies that earlier mounts published unflushed and did not flush (see
    /// the module doc). Runs at mount, before anything is served.
    pub(super) fn recover_behind(&self) {
        let Ok(work) = self.work() else { return };
        let Ok(entries) = sys::read_dir(work) else {
            return;
        };
        let boot = boot_id();
        let mut any = false;
        for e in entries {
            if !e.name.starts_with(BEHIND_PREFIX.as_bytes()) {
                continue;
            }
            any = true;
            let Ok(rec) = CString::new(e.name) else {
                continue;
            };
            if let Err(err) = self.recover_one(&rec, &boot) {
                log::warn!(
                    "a copy-up the last mount had not flushed ({}) could not be made whole \
                     ({err}): check that file; its lower layer may have changed",
                    String::from_utf8_lossy(rec.to_bytes())
                );
            }
            let _ = remove_tree(work, &rec);
        }
        if any {
            let _ = flush_work_dir(self);
        }
    }

    fn recover_one(&self, rec: &CStr, boot: &[u8]) -> SysResult<()> {
        let work = self.work()?;
        let mut body = vec![0u8; libc::PATH_MAX as usize + 128];
        let n = match sys::getxattr(sys::At::new(work, rec), record_xattr(self), &mut body) {
            Ok(n) => n,
            Err(Errno::ENODATA) | Err(Errno::EOPNOTSUPP) => {
                let fd = sys::openat(work, rec, libc::O_RDONLY | libc::O_NOFOLLOW, 0)?;
                sys::pread(fd.as_fd(), &mut body, 0)?
            }
            Err(e) => return Err(e),
        };
        body.truncate(n);
        let mut parts = body.splitn(3, |b| *b == b'\n');
        let (Some(rec_boot), Some(layer), Some(rel)) = (parts.next(), parts.next(), parts.next())
        else {
            // Written and flushed before its copy was renamed: a short record is one whose
            // copy never reached the upper.
            return Ok(());
        };
        let (parent_rel, name) = match rel.iter().rposition(|b| *b == b'/') {
            Some(i) => (&rel[..i], &rel[i + 1..]),
            None => (&rel[..0], rel),
        };
        let cname = CString::new(name).map_err(|_| Errno::EINVAL)?;
        let Ok(parent) = self.open_rel(0, parent_rel, libc::O_PATH | libc::O_DIRECTORY) else {
            return Ok(()); // never published
        };
        if !boot.is_empty() && rec_boot == boot {
            // The daemon died, the machine did not: the page cache has it all.
            return match sys::openat(parent.as_fd(), &cname, libc::O_RDONLY | libc::O_NOFOLLOW, 0) {
                Ok(f) => self.flush(f.as_fd()),
                Err(Errno::ENOENT) => Ok(()),
                Err(e) => Err(e),
            };
        }
        let src: LayerIdx = std::str::from_utf8(layer)
            .ok()
            .and_then(|l| l.parse().ok())
            .filter(|l| *l > 0 && *l < self.layers.len())
            .ok_or(Errno::EINVAL)?;
        // The lower file must still be there before the suspect copy goes.
        let src_dir = self.open_rel(src, parent_rel, libc::O_PATH | libc::O_DIRECTORY)?;
        sys::fstatat(src_dir.as_fd(), &cname)?;
        let before = sys::fstat(parent.as_fd())?;
        match sys::unlinkat(parent.as_fd(), &cname, false) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
        copyup::copy_up_entry(self, parent_rel, name, src, CopyData::Full)?;
        sys::restore_times(parent.as_fd(), &before);
        Ok(())
    }
}
