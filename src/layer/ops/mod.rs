//! The changes a union makes to its upper layer: create, remove, rename, link, each written so
//! that the upper stays a valid OCI layer diff and a crash leaves the old or the new view.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

mod delete;
mod rename;
mod upper;

pub use delete::{drop_whiteout, remove, write_whiteout};
pub use rename::{link, rename, RenameMode};
pub use upper::{check_new_name, copy_up, upper_dir, UpperDir};

use upper::{chardev_whiteout_at, cname, has_entry, take_whiteout, whiteout_name};

use crate::layer::copyup::{self};
use crate::layer::resolve::{self, DirSet, Found};
use crate::layer::stack::{remove_tree, Stack};
use crate::layer::whiteout;
use crate::sys::{self, Errno, SysResult};

/// What kind of entry to create.
#[derive(Debug, Clone)]
pub enum NewKind {
    /// A regular file, opened with these flags.
    File {
        /// open(2) flags for the returned fd.
        flags: i32,
    },
    /// A directory.
    Dir,
    /// A symlink to this target.
    Symlink(Vec<u8>),
    /// A fifo, socket or device node (`mode` carries the type).
    Node {
        /// Device number for character and block devices.
        rdev: u64,
    },
}

/// Owner of a new entry, and the creating process's umask.
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id (replaced by the parent's group when the parent is set-group-id).
    pub gid: u32,
    /// The creator's umask: applied unless the parent has a default ACL, which then decides
    /// (POSIX.1e semantics; the kernel leaves this to us with FUSE_DONT_MASK).
    pub umask: u32,
    /// Whether ACLs count: without (`noacl`) the umask applies whatever the parent holds.
    pub acl: bool,
}

fn has_default_acl(dir: BorrowedFd<'_>) -> bool {
    sys::getxattr(sys::At::dir(dir), c"system.posix_acl_default", &mut []).is_ok()
}

/// Creates `name` in the merged directory `parent_rel`, over a whiteout if there is one. Returns
/// the new entry as the union sees it, and for files the open fd.
pub fn create(
    stack: &Stack,
    parent_rel: &[u8],
    parent: &DirSet,
    name: &[u8],
    kind: &NewKind,
    mode: u32,
    owner: Owner,
) -> SysResult<(Found, Option<OwnedFd>)> {
    check_new_name(name)?;
    if resolve::lookup(stack, parent, name)?.is_some() {
        return Err(Errno::EEXIST);
    }
    let up = upper_dir(stack, parent_rel, parent)?;
    let c = cname(name)?;
    let mut over_whiteout =
        whiteout::has_file_form(name) && has_entry(up.as_fd(), &whiteout_name(name)?);
    let acl = owner.acl && has_default_acl(up.as_fd());
    let perm = if acl {
        mode & 0o7777
    } else {
        mode & 0o7777 & !owner.umask
    };
    let is_dir = matches!(kind, NewKind::Dir);
    let make = |at: &CStr| -> SysResult<Option<OwnedFd>> {
        match kind {
            NewKind::File { flags } => {
                // Read-write whatever the caller asked: the fd may become the passthrough
                // backing file that later readers share, and a file being created is never
                // refused to its creator. The kernel still enforces the caller's access mode.
                let flags = (flags & !(libc::O_TRUNC | libc::O_ACCMODE)) | libc::O_RDWR;
                let f = sys::openat(
                    up.as_fd(),
                    at,
                    flags | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                    perm,
                )?;
                Ok(Some(f))
            }
            NewKind::Dir => sys::mkdirat(up.as_fd(), at, perm).map(|()| None),
            NewKind::Symlink(target) => {
                sys::symlinkat(&cname(target)?, up.as_fd(), at).map(|()| None)
            }
            NewKind::Node { rdev } => sys::mknodat(up.as_fd(), at, mode, *rdev).map(|()| None),
        }
    };
    // A char-device whiteout holds the name itself: the entry is made under a temporary name
    // in the same directory (so it gets what the directory gives new entries: default ACL,
    // set-group-id group) and takes the whiteout's place with one rename at the end.
    let mut temp = None;
    let file = match make(&c) {
        Err(Errno::EEXIST) if chardev_whiteout_at(up.as_fd(), &c) => {
            let t = stack.temp_name();
            let f = make(&t)?;
            temp = Some(t);
            over_whiteout = true;
            f
        }
        r => r?,
    };
    let at: &CStr = temp.as_deref().unwrap_or(&c);
    let undo = |e: Errno| {
        let _ = sys::unlinkat(up.as_fd(), at, is_dir);
        e
    };
    // A file is fixed up through its open fd; other kinds through an O_PATH one.
    let path_fd;
    let fd = match &file {
        Some(f) => f.as_fd(),
        None => {
            path_fd =
                sys::openat(up.as_fd(), at, libc::O_PATH | libc::O_NOFOLLOW, 0).map_err(undo)?;
            path_fd.as_fd()
        }
    };
    let mut st = sys::fstat(fd).map_err(undo)?;
    let gid = if st.st_gid != owner.gid {
        // The kernel gave the parent's group only if the parent is set-group-id.
        let pst = sys::fstat(up.as_fd()).map_err(undo)?;
        if pst.st_mode & libc::S_ISGID != 0 {
            pst.st_gid
        } else {
            owner.gid
        }
    } else {
        owner.gid
    };
    if st.st_uid != owner.uid || st.st_gid != gid {
        sys::fchown_fd(fd, Some(owner.uid), Some(gid)).map_err(undo)?;
        st = sys::fstat(fd).map_err(undo)?;
    }
    let is_link = matches!(kind, NewKind::Symlink(_));
    if !is_link && st.st_mode & 0o7777 != perm && !acl {
        // chown clears set-id bits and our own umask may have masked the mode: put back what
        // the caller asked for, unless a default ACL decided the mode.
        let mut want = perm;
        if is_dir {
            want |= st.st_mode & libc::S_ISGID; // inherited from a set-group-id parent
        }
        if st.st_mode & 0o7777 != want {
            sys::fchmod_fd(fd, want).map_err(undo)?;
            st = sys::fstat(fd).map_err(undo)?;
        }
    }
    if over_whiteout {
        if is_dir {
            // The old directory below must not shine through the new one.
            copyup::make_opaque(stack, fd).map_err(undo)?;
        }
        match &temp {
            Some(t) => take_whiteout(up.as_fd(), t, &c, is_dir).inspect_err(|_| {
                let _ = remove_tree(up.as_fd(), t);
            })?,
            None => drop_whiteout(up.as_fd(), name).map_err(undo)?,
        }
        st = sys::fstat(fd)?;
    }
    // New in the upper: no copy-up origin to look for.
    let ino = stack.union_ino(st.st_dev, st.st_ino);
    let dir_layers = if matches!(kind, NewKind::Dir) {
        vec![0]
    } else {
        Vec::new()
    };
    Ok((
        Found {
            layer: 0,
            st,
            ino,
            dir_layers,
        },
        file,
    ))
}

/// If `found` is a lower file whose inode was already copied up under another of its names,
/// gives this name the same upper inode and returns the upper entry: every name of one lower
/// inode must show the same data once any of them was written.
pub fn adopt_indexed(
    stack: &Stack,
    parent_rel: &[u8],
    name: &[u8],
    found: &Found,
) -> SysResult<Option<Found>> {
    let reg = found.st.st_mode & libc::S_IFMT != libc::S_IFDIR;
    if stack.is_upper(found.layer) || !reg || found.st.st_nlink < 2 || !stack.is_indexed(found.ino)
    {
        return Ok(None);
    }
    let up = copyup::ensure_upper_dir(stack, parent_rel)?;
    let c = cname(name)?;
    copyup::link_from_index(stack, up.as_fd(), &c, found.ino)?;
    let mut st = sys::fstatat(up.as_fd(), &c)?;
    if st.st_nlink > found.st.st_nlink {
        // Every lower name now has its upper link: the index entry has done its job, and
        // dropping it keeps the upper's link counts right when it becomes a lower layer.
        if let Some(index) = &stack.index {
            if sys::unlinkat(index.as_fd(), &Stack::index_key(found.ino), false).is_ok() {
                stack.drop_nlink_record(found.ino);
                st = sys::fstatat(up.as_fd(), &c)?;
            }
        }
    }
    Ok(Some(Found {
        layer: 0,
        st,
        ino: found.ino,
        dir_layers: Vec::new(),
    }))
}
