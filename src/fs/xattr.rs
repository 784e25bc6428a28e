//! Extended attributes: SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR. Our own and the layer
//! format's xattrs (`trusted.overlay.*`, `*.unionfs.*`) are never shown nor set through the
//! mount; a change copies the node up first.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;

use super::inode::{ROOT, XATTRS_NONE, XATTRS_SOME, XATTRS_UNKNOWN};
use super::{name_bytes, UnionFs};
use crate::layer::copyup::CopyData;
use crate::layer::whiteout;
use crate::sys::{self, Errno, SysResult};

impl UnionFs {
    /// SETXATTR `name` = `value` on node `ino` (setxattr(2) `flags`).
    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> SysResult<()> {
        let o = &self.opts.owners;
        let mapped;
        let value = if o.is_identity() {
            value
        } else {
            let mut v = value.to_vec();
            o.map_acl(name_bytes(name), &mut v, false);
            mapped = v;
            &mapped
        };
        self.change_xattr(ino, name, |at, c| sys::setxattr(at, c, value, flags))
    }

    /// GETXATTR `name` of node `ino`: the value.
    pub fn getxattr(&self, ino: u64, name: &OsStr) -> SysResult<Vec<u8>> {
        let r = (|| {
            let n = name_bytes(name);
            if whiteout::is_internal_xattr(n) {
                return Err(Errno::ENODATA);
            }
            let node = self.inodes.get(ino)?;
            if node.xattrs.load(Ordering::Acquire) == XATTRS_NONE {
                return Err(Errno::ENODATA);
            }
            let t = self.xattr_target(ino)?;
            let c = CString::new(n).map_err(|_| Errno::EINVAL)?;
            let r = read_xattr(&t, &c);
            if r == Err(Errno::ENODATA) && node.xattrs.load(Ordering::Acquire) == XATTRS_UNKNOWN {
                // One listing now saves a layer access for every later miss on this node.
                let state = match list_xattrs(&t) {
                    Ok(l) if l.is_empty() => XATTRS_NONE,
                    _ => XATTRS_SOME,
                };
                node.xattrs.store(state, Ordering::Release);
            }
            r
        })();
        let o = &self.opts.owners;
        unlabelled(name, r).map(|mut v| {
            if !o.is_identity() {
                o.map_acl(name_bytes(name), &mut v, true);
            }
            v
        })
    }

    /// LISTXATTR of node `ino`: NUL-terminated names.
    pub fn listxattr(&self, ino: u64) -> SysResult<Vec<u8>> {
        let node = self.inodes.get(ino)?;
        if node.xattrs.load(Ordering::Acquire) == XATTRS_NONE {
            return Ok(Vec::new());
        }
        let l = list_xattrs(&self.xattr_target(ino)?)?;
        let state = if l.is_empty() {
            XATTRS_NONE
        } else {
            XATTRS_SOME
        };
        node.xattrs.store(state, Ordering::Release);
        Ok(l)
    }

    /// REMOVEXATTR `name` of node `ino`.
    pub fn removexattr(&self, ino: u64, name: &OsStr) -> SysResult<()> {
        let n = name_bytes(name);
        if !whiteout::is_internal_xattr(n) {
            // Removing a name the file does not have changes nothing: no copy-up (the upper
            // would carry a needless entry, split from its lower hard links).
            let c = CString::new(n).map_err(|_| Errno::EINVAL)?;
            if read_xattr(&self.xattr_target(ino)?, &c) == Err(Errno::ENODATA) {
                return Err(Errno::ENODATA);
            }
        }
        self.change_xattr(ino, name, |at, c| sys::removexattr(at, c))
    }

    /// Copies a node up and applies an xattr change to its upper copy.
    fn change_xattr(
        &self,
        ino: u64,
        name: &OsStr,
        f: impl FnOnce(sys::At<'_>, &CString) -> SysResult<()>,
    ) -> SysResult<()> {
        let n = name_bytes(name);
        if whiteout::is_internal_xattr(n) {
            return Err(Errno::EPERM);
        }
        let node = self.inodes.get(ino)?;
        self.ensure_upper(&node, CopyData::MetaOnly)?;
        let t = self.xattr_target(ino)?;
        let c = CString::new(n).map_err(|_| Errno::EINVAL)?;
        let r = f(t.at(), &c);
        node.xattrs.store(XATTRS_UNKNOWN, Ordering::Release);
        r
    }

    /// Where a node's xattrs live: (its parent dir in its layer, its name), or the root itself.
    fn xattr_target(&self, ino: u64) -> SysResult<XTarget> {
        self.retry(|| self.xattr_target_once(ino))
    }

    fn xattr_target_once(&self, ino: u64) -> SysResult<XTarget> {
        let c = self.ctx(ino)?;
        if ino == ROOT {
            let dir = self
                .stack
                .open_rel(c.layer, b"", libc::O_PATH | libc::O_DIRECTORY)?;
            return Ok(XTarget {
                dir,
                name: c".".to_owned(),
            });
        }
        let (parent, name) = self.inodes.primary(ino)?;
        let prel = self.inodes.rel_path(parent)?;
        let dir = self
            .stack
            .open_rel(c.layer, &prel, libc::O_PATH | libc::O_DIRECTORY)?;
        Ok(XTarget {
            dir,
            name: CString::new(name).map_err(|_| Errno::EINVAL)?,
        })
    }
}

/// An object for xattr calls: a directory fd and a name in it.
struct XTarget {
    dir: OwnedFd,
    name: CString,
}

impl XTarget {
    fn at(&self) -> sys::At<'_> {
        sys::At::new(self.dir.as_fd(), &self.name)
    }
}

/// A missing SELinux label is reported as "not supported" rather than "no such attribute".
///
/// `ls -l` asks for `security.selinux` on every file it lists, and FUSE caches no xattrs, so
/// each ask is a round trip to the daemon (50,000 of them for `ls -lR` over 50,000 files, all
/// of its warm time). ENOTSUP is what `ls` (and libselinux users) take as "this filesystem has
/// no labels", and remember per device, so they stop asking. The answer is true where we can
/// see the request at all: when SELinux is active it answers `security.selinux` inside the
/// kernel and the request never reaches a FUSE daemon. A label a layer does hold is returned.
fn unlabelled(name: &OsStr, r: SysResult<Vec<u8>>) -> SysResult<Vec<u8>> {
    match r {
        Err(Errno::ENODATA) if name.as_bytes() == b"security.selinux" => Err(Errno::EOPNOTSUPP),
        r => r,
    }
}

fn read_xattr(t: &XTarget, name: &CString) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    loop {
        match sys::getxattr(t.at(), name, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::ERANGE) if buf.len() < (1 << 20) => {
                let need = sys::getxattr(t.at(), name, &mut [])?;
                buf.resize(need.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e),
        }
    }
}

fn list_xattrs(t: &XTarget) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    let n = loop {
        match sys::listxattr(t.at(), &mut buf) {
            Ok(n) => break n,
            Err(Errno::ERANGE) if buf.len() < (1 << 20) => {
                let need = sys::listxattr(t.at(), &mut [])?;
                buf.resize(need.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e),
        }
    };
    let mut out = Vec::with_capacity(n);
    for name in buf[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if !whiteout::is_internal_xattr(name) {
            out.extend_from_slice(name);
            out.push(0);
        }
    }
    Ok(out)
}
