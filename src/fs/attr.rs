//! Attributes: GETATTR, SETATTR, READLINK and STATFS, the conversion of layer `stat` results
//! into the attributes the union reports, and the set-id rules of writes.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo, TimeOrNow};

use super::handle::OpenFile;
use super::reply::Statfs;
use super::UnionFs;
use crate::layer::copyup::CopyData;
use crate::layer::metacopy;
use crate::sys::{self, Errno, SysResult};

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::new((-sec) as u64, 0) + Duration::from_nanos(nsec as u64)
    }
}

/// The fuser file type of an `st_mode`.
pub fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// The attributes of a file with layer stat `st`, union inode `ino` and (for merged
/// directories) a computed link count.
pub fn from_stat(ino: u64, st: &libc::stat, nlink: Option<u32>) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: file_type(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: nlink.unwrap_or(st.st_nlink as u32),
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

/// The attributes of a name the union does not have: a negative entry the kernel caches.
pub fn negative() -> FileAttr {
    let mut a = from_stat(0, &sys::zeroed_stat(), None);
    a.ino = INodeNo(0);
    a
}

/// A `timespec` for utimensat from a fuser time (`None` leaves the time alone).
pub fn timespec(t: Option<fuser::TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(fuser::TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(fuser::TimeOrNow::SpecificTime(t)) => {
            let (sec, nsec) = match t.duration_since(UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
                Err(e) => {
                    let d = e.duration();
                    let mut sec = -(d.as_secs() as i64);
                    let mut nsec = -(d.subsec_nanos() as i64);
                    if nsec < 0 {
                        sec -= 1;
                        nsec += 1_000_000_000;
                    }
                    (sec, nsec)
                }
            };
            libc::timespec {
                tv_sec: sec as libc::time_t,
                tv_nsec: nsec as _,
            }
        }
    }
}

/// The changes of one SETATTR: each `Some` is set, the rest left alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    /// New permission bits (and set-id bits).
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<TimeOrNow>,
    /// New modification time.
    pub mtime: Option<TimeOrNow>,
    /// The open file it came through (ftruncate, fchmod, ...).
    pub fh: Option<u64>,
    /// The caller lacks CAP_FSETID: set-id bits go with a size change or chown.
    pub kill_setid: bool,
}

impl UnionFs {
    /// GETATTR of node `ino` (through open file `fh` for fstat and friends).
    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> SysResult<FileAttr> {
        // The file as it is now, by name, even when asked through a handle: a handle opened
        // before a copy-up holds the lower copy, whose attributes are old.
        match self.retry(|| self.ctx(ino).and_then(|c| self.stat_of(&c))) {
            Err(Errno::ENOENT) => {
                // Removed but still held: an open file, or a directory (no links left).
                if let Some(st) = self.orphans.get(&ino).map(|s| *s) {
                    return Ok(self.attr(ino, &st, Some(0)));
                }
                let f = fh
                    .and_then(|f| self.handles.file(f))
                    .or_else(|| self.any_open(ino))
                    .ok_or(Errno::ENOENT)?;
                let st = sys::fstat(self.current_fd(&f))?;
                Ok(self.attr(ino, &st, None))
            }
            r => r,
        }
    }

    /// SETATTR of node `ino`: copies it up first (without data for a truncate to zero).
    pub fn setattr(&self, ino: u64, change: &SetAttr) -> SysResult<FileAttr> {
        self.retry(|| self.do_setattr(ino, change))
    }

    /// READLINK of node `ino`.
    pub fn readlink(&self, ino: u64) -> SysResult<Vec<u8>> {
        self.retry(|| {
            let c = self.ctx(ino)?;
            let fd = self.stack.open_rel(c.layer, &c.rel, libc::O_PATH)?;
            sys::readlinkat(fd.as_fd(), c"")
        })
    }

    /// STATFS: the numbers of the upper's filesystem (or the top lower's without an upper).
    pub fn statfs(&self) -> SysResult<Statfs> {
        let s = sys::fstatvfs(self.stack.layers[0].fd.as_fd())?;
        Ok(Statfs {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: s.f_bsize as u32,
            namelen: s.f_namemax as u32,
            frsize: s.f_frsize as u32,
        })
    }

    fn do_setattr(&self, ino: u64, ch: &SetAttr) -> SysResult<FileAttr> {
        let SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh,
            kill_setid,
        } = *ch;
        let node = self.inodes.get(ino)?;
        let open = fh.and_then(|f| self.handles.file(f));
        // A file opened for writing already lives in the upper: use its fd (it may be unlinked).
        let mut via_fd = open.filter(|f| f.writable);
        let target: OwnedFd = match &via_fd {
            Some(f) => f.fd.try_clone().map_err(|_| Errno::EMFILE)?,
            None => {
                let data = match size {
                    Some(0) => CopyData::Empty,
                    Some(_) => CopyData::Full,
                    None => CopyData::MetaOnly,
                };
                let by_path = self
                    .ensure_upper(&node, data)
                    .and_then(|_| self.ctx(ino))
                    .and_then(|c| self.stack.open_rel(0, &c.rel, libc::O_PATH));
                match by_path {
                    Ok(fd) => fd,
                    // All names gone: an open handle is the file (fchmod on an unlinked file).
                    Err(Errno::ENOENT) => {
                        let f = self
                            .any_open(ino)
                            .filter(|f| f.in_upper)
                            .ok_or(Errno::ENOENT)?;
                        let fd = f.fd.try_clone().map_err(|_| Errno::EMFILE)?;
                        if f.writable {
                            via_fd = Some(f);
                        }
                        fd
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let is_link = node.kind == libc::S_IFLNK;
        if uid.is_some() || gid.is_some() {
            let o = &self.opts.owners;
            let (u, g) = (uid.map(|u| o.stored_uid(u)), gid.map(|g| o.stored_gid(g)));
            match sys::fchown_fd(target.as_fd(), u, g) {
                // A squashed view shows one owner whatever is stored: like fuse-overlayfs, a
                // chown the layer refuses is not reported.
                Err(_) if o.squashes() => {}
                r => r?,
            }
        }
        if let Some(m) = mode {
            if !is_link {
                sys::fchmod_fd(target.as_fd(), m & 0o7777)?;
            }
        }
        // A stub's data must be its own before its size changes (none needed for size 0).
        let stub = match size {
            Some(_) if node.kind == libc::S_IFREG && via_fd.is_none() => {
                metacopy::read(&self.stack, target.as_fd())?
            }
            _ => None,
        };
        if let (Some(stub), Some(sz)) = (&stub, size) {
            if sz != 0 {
                let _guard = node.copy_lock.lock();
                metacopy::fill(&self.stack, target.as_fd(), stub)?;
            }
        }
        if let Some(sz) = size {
            match &via_fd {
                Some(f) => sys::ftruncate(f.fd.as_fd(), sz)?,
                None => {
                    let w = sys::reopen(target.as_fd(), libc::O_WRONLY)?;
                    sys::ftruncate(w.as_fd(), sz)?;
                }
            }
            if stub.is_some() && sz == 0 {
                metacopy::drop_record(&self.stack, target.as_fd())?;
            }
        }
        if kill_setid && mode.is_none() && !is_link {
            drop_setid(target.as_fd())?;
        }
        if atime.is_some() || mtime.is_some() {
            let times = [timespec(atime), timespec(mtime)];
            if is_link {
                let (parent, name) = self.inodes.primary(ino)?;
                let prel = self.inodes.rel_path(parent)?;
                let pfd = self
                    .stack
                    .open_rel(0, &prel, libc::O_PATH | libc::O_DIRECTORY)?;
                let cname = std::ffi::CString::new(name).map_err(|_| Errno::EINVAL)?;
                sys::utimensat(pfd.as_fd(), &cname, &times)?;
            } else {
                sys::utimens_fd(target.as_fd(), &times)?;
            }
        }
        let st = sys::fstat(target.as_fd())?;
        let nlink = if node.is_dir() {
            let c = self.ctx(ino)?;
            Some(self.dir_nlink(&c, &st)?)
        } else {
            None
        };
        Ok(self.attr(ino, &st, nlink))
    }

    /// Clears the set-id bits of an open file (see `drop_setid`) and, when there were any, has
    /// the kernel drop its cached attributes: OPEN and WRITE answer none, so it would show
    /// the old mode for its attribute TTL.
    pub(super) fn drop_setid_of(&self, f: &OpenFile) -> SysResult<()> {
        if drop_setid(f.fd.as_fd())? {
            self.tell_attrs_changed(f.ino);
        }
        Ok(())
    }
}

/// Clears set-user-ID, and set-group-ID on a group-executable file, as a write, truncate or
/// chown by a caller without CAP_FSETID must: with FUSE_HANDLE_KILLPRIV_V2 the kernel leaves
/// that to us (our own writes, as a privileged process, would keep them). Returns whether the
/// mode changed.
pub(super) fn drop_setid(fd: std::os::fd::BorrowedFd<'_>) -> SysResult<bool> {
    let mode = sys::fstat(fd)?.st_mode;
    let kill = setid_bits(mode);
    if kill == 0 {
        return Ok(false);
    }
    sys::fchmod_fd(fd, mode & 0o7777 & !kill)?;
    Ok(true)
}

/// The set-id bits a write by an unprivileged caller removes from `mode`.
pub(super) fn setid_bits(mode: u32) -> u32 {
    let mut kill = mode & libc::S_ISUID;
    if mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP {
        kill |= libc::S_ISGID;
    }
    kill
}
