//! Copies flushed behind: a large file's copy-up is staged in the work dir, data and metadata
//! complete, and the writer goes on at once while the flush runs in the background; only a
//! flushed copy is renamed into the upper. The upper therefore never holds a copy whose data
//! may be missing after a crash (what kernel overlayfs guarantees by flushing before the
//! rename, and fuse-overlayfs does not), yet the writer does not wait for the disk.
//!
//! Until it is published the copy is the file: the FUSE side serves opens and attributes from
//! it (`fs::behind`). A record beside it in the work dir names its place and the boot it was
//! made in. The next mount publishes a copy left by a daemon that died (`kill -9`) in the same
//! boot, where the page cache still holds everything written to it, after flushing it; after a
//! machine crash it throws the copy away, so the file shows what it showed before the copy-up:
//! the state of a file whose writes had not reached the disk, as an unflushed write may be.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;

use crate::layer::stack::{remove_tree, Stack};
use crate::sys::{self, Errno, SysResult};

/// Names of staged copies and their records in the work dir (`clean_work` leaves them to
/// [`Stack::recover_behind`]).
pub const BEHIND_PREFIX: &str = "#unionfs-behind-";
/// What a record's name adds to its copy's.
const RECORD_SUFFIX: &str = ".to";

/// A regular file's copy in the work dir with all its data and metadata, not yet flushed or
/// published.
#[derive(Debug)]
pub struct Staged {
    /// Its name in the work dir.
    pub stage: CString,
    /// The copy, open (what the flush needs).
    pub file: OwnedFd,
    /// The upper directory it goes into (`O_PATH`).
    pub parent: OwnedFd,
    /// Its name there.
    pub name: CString,
    /// Bytes copied (for the counters).
    pub size: u64,
}

/// This boot's id: a copy staged in another boot may have lost data in a crash.
fn boot_id() -> Vec<u8> {
    let mut id = std::fs::read("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    id.retain(|b| !b.is_ascii_whitespace());
    id
}

fn record_name(stage: &CStr) -> SysResult<CString> {
    let mut n = stage.to_bytes().to_vec();
    n.extend_from_slice(RECORD_SUFFIX.as_bytes());
    CString::new(n).map_err(|_| Errno::EINVAL)
}

/// A fresh staging name for a copy flushed behind.
pub fn stage_name(stack: &Stack) -> CString {
    let base = stack.stage_name();
    let n = base
        .to_bytes()
        .strip_prefix(super::stack::STAGE_PREFIX.as_bytes());
    let mut name = BEHIND_PREFIX.as_bytes().to_vec();
    name.extend_from_slice(n.unwrap_or(base.to_bytes()));
    CString::new(name).unwrap_or(base)
}

/// Writes the record of staged copy `stage`, whose place in the view is `rel`. Not flushed:
/// after a crash the copy is thrown away whether or not its record survived.
pub fn write_record(stack: &Stack, stage: &CStr, rel: &[u8]) -> SysResult<()> {
    let work = stack.work()?;
    let rec = record_name(stage)?;
    let fd = sys::openat(
        work,
        &rec,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
        0o600,
    )?;
    let mut body = boot_id();
    body.push(b'\n');
    body.extend_from_slice(rel);
    let written = sys::pwrite(fd.as_fd(), &body, 0);
    if written != Ok(body.len()) {
        let _ = sys::unlinkat(work, &rec, false);
        return Err(written.err().unwrap_or(Errno::ENOSPC));
    }
    Ok(())
}

/// Drops the record of `stage` (published, or never to be).
fn drop_record(stack: &Stack, stage: &CStr) {
    if let (Ok(work), Ok(rec)) = (stack.work(), record_name(stage)) {
        let _ = sys::unlinkat(work, &rec, false);
    }
}

/// Flushes a staged copy and publishes it. On failure the copy stays unpublished and loses its
/// record, so no later mount publishes it either.
pub fn publish(stack: &Stack, s: &Staged) -> SysResult<()> {
    let done = stack.flush(s.file.as_fd()).and_then(|()| {
        match super::copyup::publish(stack, &s.stage, s.parent.as_fd(), &s.name) {
            Ok(true) => Ok(()),
            // Nothing in the union gives the name an upper entry while the copy is pending
            // (the FUSE side settles it first): something wrote the upper behind the daemon's
            // back, and what it wrote stays. To the writer it is a failed write-back.
            Ok(false) => {
                log::warn!(
                    "{:?} appeared in the upper behind the daemon's back while its copy-up was \
                     being flushed: the copy is dropped, and the file's next fsync fails",
                    s.name
                );
                Err(Errno::EIO)
            }
            Err(e) => Err(e),
        }
    });
    drop_record(stack, &s.stage);
    if done.is_ok() {
        stack.counters.copy_ups.fetch_add(1, Relaxed);
        stack.counters.bytes_copied.fetch_add(s.size, Relaxed);
    }
    done
}

impl Stack {
    /// Publishes (flushed) the copies a daemon killed in this boot left staged, and throws away
    /// those of an earlier boot. Runs at mount, before the work dir's leftovers go.
    pub(super) fn recover_behind(&self) {
        let Ok(work) = self.work() else { return };
        let Ok(entries) = sys::read_dir(work) else {
            return;
        };
        let boot = boot_id();
        for e in &entries {
            let Some(stage) = e
                .name
                .strip_suffix(RECORD_SUFFIX.as_bytes())
                .filter(|_| e.name.starts_with(BEHIND_PREFIX.as_bytes()))
            else {
                continue;
            };
            let (Ok(stage), Ok(rec)) = (CString::new(stage), CString::new(e.name.clone())) else {
                continue;
            };
            if let Err(err) = self.recover_one(&stage, &rec, &boot) {
                log::warn!(
                    "a copy-up staged before the last daemon ended ({}) could not be published \
                     ({err}): the file shows its content from before that copy-up",
                    String::from_utf8_lossy(stage.to_bytes())
                );
            }
        }
        for e in entries {
            if e.name.starts_with(BEHIND_PREFIX.as_bytes()) {
                if let Ok(name) = CString::new(e.name) {
                    let _ = remove_tree(work, &name);
                }
            }
        }
    }

    fn recover_one(&self, stage: &CStr, rec: &CStr, boot: &[u8]) -> SysResult<()> {
        let work = self.work()?;
        let fd = sys::openat(work, rec, libc::O_RDONLY | libc::O_NOFOLLOW, 0)?;
        let mut body = vec![0u8; 4096 + 64];
        let n = sys::pread(fd.as_fd(), &mut body, 0)?;
        body.truncate(n);
        let Some(nl) = body.iter().position(|b| *b == b'\n') else {
            return Err(Errno::EINVAL);
        };
        if boot.is_empty() || body[..nl] != *boot {
            return Ok(()); // another boot: the copy may lack data, and goes
        }
        let rel = &body[nl + 1..];
        let (parent_rel, name) = match rel.iter().rposition(|b| *b == b'/') {
            Some(i) => (&rel[..i], &rel[i + 1..]),
            None => (&rel[..0], rel),
        };
        let name = CString::new(name).map_err(|_| Errno::EINVAL)?;
        // Read-only is enough to flush it, and its mode may allow no more.
        let file = sys::openat(work, stage, libc::O_RDONLY | libc::O_NOFOLLOW, 0)?;
        let parent = self.open_rel(0, parent_rel, libc::O_PATH | libc::O_DIRECTORY)?;
        let size = sys::fstat(file.as_fd())?.st_size as u64;
        publish(
            self,
            &Staged {
                stage: stage.to_owned(),
                file,
                parent,
                name,
                size,
            },
        )
    }
}
