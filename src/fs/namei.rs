//! Names to nodes: LOOKUP and FORGET, and registering every entry the kernel learns of (by
//! lookup, creation or readdirplus) in the inode table.

use std::ffi::OsStr;
use std::sync::atomic::Ordering;

use fuser::FileAttr;

use super::op::Op;
use super::{name_bytes, UnionFs};
use crate::layer::ops;
use crate::layer::readdir as layer_readdir;
use crate::layer::resolve::{self, DirSet, Found};
use crate::layer::stack::join;
use crate::layer::whiteout;
use crate::sys::{self, SysResult};

impl UnionFs {
    /// LOOKUP of `name` in directory `parent`: its attributes, or `None` when the union has no
    /// such name (answered as a negative entry, so repeated stats of it stay in the kernel).
    pub fn lookup(&self, parent: u64, name: &OsStr) -> SysResult<Option<FileAttr>> {
        let found = self.retry(|| self.do_lookup(parent, name_bytes(name)))?;
        if found.is_some() {
            self.listing.found_in(parent);
        }
        Ok(found)
    }

    /// FORGET: the kernel dropped `nlookup` references to node `ino`.
    pub fn forget(&self, ino: u64, nlookup: u64) {
        self.stats.count(Op::Forget);
        self.inodes.forget(ino, nlookup);
        if self.inodes.get(ino).is_err() {
            self.dirsets.remove(&ino);
            self.orphans.remove(&ino);
            let held = self.inodes.len() as u64;
            self.stats.inodes.store(held, Ordering::Relaxed);
            // After the kernel drops a large part of its cache, hand the memory back: the
            // allocator keeps freed nodes otherwise, and RSS would not fall.
            if self.freed.fetch_add(1, Ordering::Relaxed) % 16384 == 16383 {
                sys::trim_heap();
            }
        }
    }

    /// Registers a found entry as a kernel-referenced node and builds its attributes.
    pub(super) fn remember(
        &self,
        parent: u64,
        prel: &[u8],
        name: &[u8],
        f: &Found,
    ) -> SysResult<FileAttr> {
        let adopted = ops::adopt_indexed(&self.stack, prel, name, f)?;
        if adopted.is_some() {
            self.inodes.mark_upper_chain(parent);
        }
        let f = adopted.as_ref().unwrap_or(f);
        let kind = f.st.st_mode & libc::S_IFMT;
        let mut ino = self.map_ino(f.ino);
        if self.orphans.contains_key(&ino) {
            ino = self.synthetic_ino();
            self.redirect.insert(f.ino, ino);
        }
        let node = self
            .inodes
            .upsert(ino, kind, parent, name, f.layer, f.dir_layers.clone(), 1);
        if node.lookups.load(Ordering::Relaxed) == 1 {
            let held = self.inodes.len();
            self.stats.inodes.store(held as u64, Ordering::Relaxed);
            self.over_limit(held);
        }
        if f.is_dir() && f.dir_layers.len() > 1 {
            // Merged directory: 2 + subdirectories, counted once and kept until they change.
            let cached = node.state.read().nlink;
            let n = match cached {
                Some(n) => n,
                None => {
                    let set = DirSet::open(&self.stack, &join(prel, name), &f.dir_layers)?;
                    let n = 2 + layer_readdir::count_subdirs(&self.stack, &set, false)?;
                    node.state.write().nlink = Some(n);
                    n
                }
            };
            return Ok(self.attr(ino, &f.st, Some(n)));
        }
        Ok(self.attr(ino, &f.st, None))
    }

    fn do_lookup(&self, parent: u64, name: &[u8]) -> SysResult<Option<FileAttr>> {
        if whiteout::is_hidden(name) {
            return Ok(None);
        }
        let (p, set) = self.dir_ctx(parent)?;
        match resolve::lookup(&self.stack, &set, name)? {
            Some(f) => self.remember(parent, &p.rel, name, &f).map(Some),
            None => Ok(None),
        }
    }

    /// After directory node `ino` (last seen as `st`) lost its name: its inode number may come
    /// back for a new file (its layer fd goes, so the layer can reuse it) while the kernel
    /// still holds it.
    pub(super) fn dir_removed(&self, ino: u64, st: &libc::stat) {
        self.dirsets.remove(&ino);
        if self.inodes.get(ino).is_ok() {
            self.orphans.insert(ino, *st);
        }
    }
}
