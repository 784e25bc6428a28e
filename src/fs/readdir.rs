//! Directory streams: OPENDIR, READDIR, READDIRPLUS, RELEASEDIR. Each open directory lists a
//! snapshot of the merged directory (taken at the first read and again on rewind), so
//! offsets are stable however the reader seeks.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use fuser::{FileType, FopenFlags, INodeNo};
use log::debug;

use super::attr;
use super::handle::OpenDir;
use super::reply::{DirOut, DirPlusOut, Opened};
use super::{Caller, UnionFs};
use crate::layer::readdir::{self as layer_readdir, MergedEntry};
use crate::layer::resolve;
use crate::sys::{Errno, SysResult};

impl UnionFs {
    /// OPENDIR of node `ino`.
    pub fn opendir(&self, ino: u64) -> SysResult<Opened> {
        let n = self.inodes.get(ino)?;
        if !n.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let fh = self.handles.next_id();
        self.handles.dirs.insert(fh, Arc::new(OpenDir::default()));
        Ok(Opened {
            fh,
            // The kernel may cache listings: every change to a directory passes through it.
            flags: FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            backing: None,
        })
    }

    /// READDIR of open directory `fh` (node `ino`) from `offset` into `out`, until it is
    /// full. Offsets: 1 is ".", 2 is "..", 3 + i is entry i of the stream's snapshot.
    pub fn readdir(&self, ino: u64, fh: u64, offset: u64, out: &mut impl DirOut) -> SysResult<()> {
        let entries = self.dir_entries(ino, fh, offset)?;
        let mut off = offset;
        if off == 0 {
            if out.add(ino, 1, FileType::Directory, OsStr::new(".")) {
                return Ok(());
            }
            off = 1;
        }
        if off == 1 {
            let p = self.parent_of(ino);
            if out.add(p, 2, FileType::Directory, OsStr::new("..")) {
                return Ok(());
            }
            off = 2;
        }
        let (_, set) = self.dir_ctx(ino)?;
        for (i, e) in entries.iter().enumerate().skip((off - 2) as usize) {
            let kind = attr::file_type(dtype_mode(e.dtype));
            let d_ino = self.map_ino(e.union_ino(&self.stack, &set));
            if out.add(d_ino, 3 + i as u64, kind, OsStr::from_bytes(&e.name)) {
                break;
            }
        }
        Ok(())
    }

    /// READDIRPLUS: READDIR with each entry's attributes (and a lookup counted for it),
    /// except for callers that do not use them (see `listing`).
    pub fn readdirplus(
        &self,
        caller: Caller,
        ino: u64,
        fh: u64,
        offset: u64,
        out: &mut impl DirPlusOut,
    ) -> SysResult<()> {
        let entries = self.dir_entries(ino, fh, offset)?;
        let (c, set) = self.dir_ctx(ino)?;
        let ttl = self.opts.ttl;
        // Same offsets as readdir (the kernel may switch between the two on one stream).
        let mut off = offset;
        if off < 2 {
            let dir_attr = self.stat_of(&c)?;
            let dots = [(ino, 1u64, "."), (self.parent_of(ino), 2, "..")];
            for (dino, doff, dname) in dots.into_iter().skip(off as usize) {
                let mut a = dir_attr;
                a.ino = INodeNo(dino);
                // The kernel does not instantiate "." and "..": no lookup is counted for them.
                if out.add(dino, doff, OsStr::new(dname), &ttl, &a) {
                    return Ok(());
                }
            }
            off = 2;
        }
        // Later batches come as READDIRPLUS only when the kernel saw names of this directory
        // looked up: the reader wants attributes. The first comes so regardless (see listing).
        let bare = offset == 0 && self.listing.send_bare(caller.pid, ino);
        for (i, e) in entries.iter().enumerate().skip((off - 2) as usize) {
            // Directories keep their attributes: a walk descends into them, which needs the
            // inode, and there are few of them.
            if bare && e.dtype != libc::DT_DIR {
                let d_ino = self.map_ino(e.union_ino(&self.stack, &set));
                let kind = attr::file_type(dtype_mode(e.dtype));
                if out.add_bare(d_ino, 3 + i as u64, kind, OsStr::from_bytes(&e.name)) {
                    break;
                }
                continue;
            }
            // Every entry sent here counts as a lookup for the kernel: register it as one.
            let found = match resolve::lookup(&self.stack, &set, &e.name) {
                Ok(Some(f)) => f,
                Ok(None) => continue, // removed since the listing was taken
                Err(err) => {
                    debug!("readdirplus: {:?}: {err}", OsStr::from_bytes(&e.name));
                    continue;
                }
            };
            let a = match self.remember(ino, &c.rel, &e.name, &found) {
                Ok(a) => a,
                Err(err) => {
                    debug!("readdirplus: {:?}: {err}", OsStr::from_bytes(&e.name));
                    continue;
                }
            };
            let name = OsStr::from_bytes(&e.name);
            if out.add(self.map_ino(found.ino), 3 + i as u64, name, &ttl, &a) {
                // Not sent: take the lookup back.
                self.inodes.forget(self.map_ino(found.ino), 1);
                break;
            }
        }
        Ok(())
    }

    /// The merged listing: names, types and layers only. Attributes are looked up lazily for
    /// the entries readdirplus actually sends, so `find` on a cold tree never stats files.
    /// RELEASEDIR of open directory `fh`.
    pub fn releasedir(&self, fh: u64) {
        self.handles.dirs.remove(&fh);
    }

    /// FSYNCDIR: nothing of ours to flush (the layer filesystems sync their directories).
    pub fn fsyncdir(&self) -> SysResult<()> {
        Ok(())
    }

    fn snapshot(&self, ino: u64) -> SysResult<Vec<MergedEntry>> {
        let (c, set) = self.dir_ctx(ino)?;
        layer_readdir::list(&self.stack, &set, c.rel.is_empty())
    }

    fn dir_entries(&self, ino: u64, fh: u64, offset: u64) -> SysResult<Arc<Vec<MergedEntry>>> {
        let d = self.handles.dir(fh).ok_or(Errno::EBADF)?;
        let mut guard = d.entries.lock();
        // A read from offset 0 is a (re)wind: take a fresh snapshot.
        if offset == 0 || guard.is_none() {
            *guard = Some(Arc::new(self.snapshot(ino)?));
        }
        guard.as_ref().map(Arc::clone).ok_or(Errno::EIO)
    }
}

/// An `st_mode` type for a `DT_*` value.
fn dtype_mode(dtype: u8) -> u32 {
    match dtype {
        libc::DT_DIR => libc::S_IFDIR,
        libc::DT_LNK => libc::S_IFLNK,
        libc::DT_FIFO => libc::S_IFIFO,
        libc::DT_SOCK => libc::S_IFSOCK,
        libc::DT_CHR => libc::S_IFCHR,
        libc::DT_BLK => libc::S_IFBLK,
        _ => libc::S_IFREG,
    }
}
