//! Operations on names: MKNOD, MKDIR, SYMLINK, LINK, UNLINK, RMDIR and RENAME. The layer
//! model makes each change in the upper (`layer::ops`); here the inode table follows it.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use fuser::FileAttr;

use super::{name_bytes, Caller, SeqGuard, UnionFs};
use crate::layer::ops::{self, NewKind, Owner, RenameMode};
use crate::layer::resolve::{self, DirSet, Found};
use crate::sys::{self, Errno, SysResult};

impl UnionFs {
    /// MKNOD of `name` in `parent` (`mode` carries the type; a regular file is created too).
    pub fn mknod(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> SysResult<FileAttr> {
        let kind = if mode & libc::S_IFMT == libc::S_IFREG {
            NewKind::File {
                flags: libc::O_WRONLY,
            }
        } else {
            NewKind::Node { rdev: rdev as u64 }
        };
        self.make(caller, parent, name_bytes(name), kind, mode, umask)
    }

    /// MKDIR of `name` in `parent`.
    pub fn mkdir(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> SysResult<FileAttr> {
        let name = name_bytes(name);
        self.make(caller, parent, name, NewKind::Dir, mode, umask)
    }

    /// SYMLINK `name` in `parent`, pointing at `target`.
    pub fn symlink(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
    ) -> SysResult<FileAttr> {
        let kind = NewKind::Symlink(target.as_bytes().to_vec());
        let mode = libc::S_IFLNK | 0o777;
        self.make(caller, parent, name_bytes(name), kind, mode, 0)
    }

    /// LINK: a new name `newname` in `newparent` for node `ino`.
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> SysResult<FileAttr> {
        // A record names its copy by one place (see `behind`): flushed before a second name.
        self.behind.settle(ino)?;
        let newname = name_bytes(newname);
        let node = self.inodes.get(ino)?;
        let c = self.ctx(ino)?;
        let (sparent, sname) = self.inodes.primary(ino)?;
        let sprel = self.inodes.rel_path(sparent)?;
        let (dp, dset) = self.dir_ctx(newparent)?;
        let src = Found {
            layer: c.layer,
            st: {
                let fd = self.stack.open_rel(c.layer, &c.rel, libc::O_PATH)?;
                sys::fstat(fd.as_fd())?
            },
            ino,
            dir_layers: Vec::new(),
        };
        let guard = node.copy_lock.lock();
        ops::link(&self.stack, &sprel, &sname, &src, &dp.rel, &dset, newname)?;
        drop(guard);
        if self.links_joined(&src) {
            self.inodes.bump_epoch();
        }
        self.inodes.mark_upper_chain(ino);
        self.inodes.mark_upper_chain(newparent);
        let set = DirSet::open(&self.stack, &dp.rel, &[0])?;
        let mut f = resolve::lookup(&self.stack, &set, newname)?.ok_or(Errno::ENOENT)?;
        f.ino = ino; // one inode, whatever number the layer gives the new name
        self.remember(newparent, &dp.rel, newname, &f)
    }

    /// UNLINK of the non-directory `name` in `parent`.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> SysResult<()> {
        self.remove(parent, name_bytes(name), false)
    }

    /// RMDIR of the (merged-empty) directory `name` in `parent`.
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> SysResult<()> {
        self.remove(parent, name_bytes(name), true)
    }

    /// RENAME (and RENAME2 with `flags`: `RENAME_NOREPLACE`, `RENAME_EXCHANGE`) of `name` in
    /// `parent` to `newname` in `newparent`. `RENAME_WHITEOUT` is the layer format's business
    /// and refused.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> SysResult<()> {
        if flags & libc::RENAME_WHITEOUT != 0 {
            return Err(Errno::EINVAL);
        }
        let mode = RenameMode {
            noreplace: flags & libc::RENAME_NOREPLACE != 0,
            exchange: flags & libc::RENAME_EXCHANGE != 0,
        };
        let (name, newname) = (name_bytes(name), name_bytes(newname));
        let (sp, sset) = self.dir_ctx(parent)?;
        let (dp, dset) = self.dir_ctx(newparent)?;
        // Records name their copies by place (see `behind`): none may be moved unflushed.
        self.behind.settle_name(&sp.rel, name);
        self.behind.settle_name(&dp.rel, newname);
        let _seq = SeqGuard::enter(&self.rename_seq);
        let renamed = ops::rename(
            &self.stack,
            &sp.rel,
            &sset,
            name,
            &dp.rel,
            &dset,
            newname,
            mode,
        );
        let (src, dst) = match renamed {
            Ok(r) => r,
            Err(e) => {
                // A directory rename that failed late (a full upper) may already have copied
                // its tree into the upper and made it opaque: nodes below it that still say
                // "lower" would no longer be found once the rename is retried and succeeds.
                let is_dir = |set: &DirSet, n: &[u8]| {
                    resolve::lookup(&self.stack, set, n)
                        .is_ok_and(|f| f.is_some_and(|f| f.is_dir()))
                };
                if is_dir(&sset, name) || (mode.exchange && is_dir(&dset, newname)) {
                    self.inodes.bump_epoch();
                }
                return Err(e);
            }
        };
        let moved_tree = |f: &Found| f.is_dir() && f.dir_layers.iter().any(|l| *l != 0);
        let exchanged = dst.as_ref().filter(|_| mode.exchange);
        if moved_tree(&src)
            || dst.as_ref().is_some_and(moved_tree)
            || self.links_joined(&src)
            || exchanged.is_some_and(|d| self.links_joined(d))
        {
            // Whole trees, or the other names of a lower hard link, moved into the upper:
            // every node re-resolves on next use.
            self.inodes.bump_epoch();
        }
        self.inodes.mark_upper_chain(parent);
        self.inodes.mark_upper_chain(newparent);
        if mode.exchange {
            if let Some(d) = &dst {
                self.inodes
                    .move_alias(self.map_ino(d.ino), newparent, newname, parent, name);
            }
        } else if let Some(d) = &dst {
            if d.is_dir() {
                self.dir_removed(self.map_ino(d.ino), &d.st);
            }
            if self.map_ino(d.ino) != self.map_ino(src.ino) {
                self.inodes
                    .drop_alias(self.map_ino(d.ino), newparent, newname);
                if !d.is_dir() {
                    self.release_closed_backing(self.map_ino(d.ino));
                }
            }
        }
        if dst
            .as_ref()
            .is_none_or(|d| self.map_ino(d.ino) != self.map_ino(src.ino))
            || mode.exchange
        {
            self.inodes
                .move_alias(self.map_ino(src.ino), parent, name, newparent, newname);
        }
        if let Ok(n) = self.inodes.get(self.map_ino(src.ino)) {
            let mut st = n.state.write();
            st.layer = 0;
            if n.is_dir() {
                st.dir_layers = Box::new([0]);
            }
        }
        if let Some(d) = &dst {
            if mode.exchange {
                if let Ok(n) = self.inodes.get(self.map_ino(d.ino)) {
                    let mut st = n.state.write();
                    st.layer = 0;
                    if n.is_dir() {
                        st.dir_layers = Box::new([0]);
                    }
                }
            }
        }
        self.inodes.invalidate_nlink(parent);
        self.inodes.invalidate_nlink(newparent);
        Ok(())
    }

    /// mknod, mkdir and symlink: make the entry, and the kernel learns of it.
    fn make(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
        kind: NewKind,
        mode: u32,
        umask: u32,
    ) -> SysResult<FileAttr> {
        let is_dir = matches!(kind, NewKind::Dir);
        let r = self
            .do_create(caller, parent, name, kind, mode, umask)
            .map(|(a, _)| a);
        if is_dir {
            // After the new subdirectory exists, before the kernel asks for the parent again.
            self.inodes.invalidate_nlink(parent);
        }
        r
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn do_create(
        &self,
        req: &Caller,
        parent: u64,
        name: &[u8],
        kind: NewKind,
        mode: u32,
        umask: u32,
    ) -> SysResult<(FileAttr, Option<OwnedFd>)> {
        let o = &self.opts.owners;
        let owner = Owner {
            uid: o.stored_uid(req.uid),
            gid: o.stored_gid(req.gid),
            umask,
            acl: self.opts.acl,
        };
        let (p, found, fd) = self.retry(|| {
            let (p, set) = self.dir_ctx(parent)?;
            // A create may replace a name whose copy has a record (a CREATE the kernel sends
            // for a name it has no dentry for): that copy is flushed first (see `behind`).
            self.behind.settle_name(&p.rel, name);
            let (found, fd) = ops::create(&self.stack, &p.rel, &set, name, &kind, mode, owner)?;
            Ok((p, found, fd))
        })?;
        self.inodes.mark_upper_chain(parent);
        let a = self.remember(parent, &p.rel, name, &found)?;
        Ok((a, fd))
    }

    fn remove(&self, parent: u64, name: &[u8], dir: bool) -> SysResult<()> {
        self.retry(|| {
            let (p, set) = self.dir_ctx(parent)?;
            // A record must not outlive its copy's name (see `behind`).
            self.behind.settle_name(&p.rel, name);
            let f = ops::remove(&self.stack, &p.rel, &set, name, dir)?;
            self.inodes.mark_upper_chain(parent);
            self.inodes.drop_alias(self.map_ino(f.ino), parent, name);
            if dir {
                self.inodes.invalidate_nlink(parent);
                self.dir_removed(self.map_ino(f.ino), &f.st);
            } else {
                self.release_closed_backing(self.map_ino(f.ino));
            }
            Ok(())
        })
    }

    /// Drops the kept passthrough registration of file `ino`, which lost a name, unless a
    /// handle still uses it: the registration holds the file open, and the space of a deleted
    /// file comes back only when nothing does (on a full upper, deleting must make room).
    fn release_closed_backing(&self, ino: u64) {
        self.pts.remove_if(&ino, |_, pt| pt.opens == 0);
    }

    /// Whether bringing `f` into the upper also linked its other names there (the rule of
    /// `copyup::joins_links`), so that nodes resolved before may be stale.
    fn links_joined(&self, f: &Found) -> bool {
        !self.stack.is_upper(f.layer) && crate::layer::copyup::joins_links(&f.st)
    }
}
