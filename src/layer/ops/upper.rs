//! Names and entries in an upper directory, shared by creating, deleting and renaming: the
//! upper directory of a merged one, the names the union refuses, the whiteout forms an entry
//! meets there, and bringing an entry up before it changes.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::layer::copyup::{self, CopyData};
use crate::layer::resolve::DirSet;
use crate::layer::stack::{join, Stack};
use crate::layer::whiteout;
use crate::sys::{self, Errno, SysResult};

/// Refuses names the union reserves (`.wh.*`) or the kernel cannot hold.
pub fn check_new_name(name: &[u8]) -> SysResult<()> {
    if whiteout::is_hidden(name) {
        return Err(Errno::EINVAL);
    }
    if name.len() > 255 {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

pub(super) fn cname(name: &[u8]) -> SysResult<CString> {
    CString::new(name).map_err(|_| Errno::EINVAL)
}

/// Brings an entry of the union into the upper: a file is copied (without data for a
/// truncate-to-zero), a directory gets its ancestors and itself created there.
pub fn copy_up(
    stack: &Stack,
    parent_rel: &[u8],
    name: &[u8],
    layer: crate::layer::LayerIdx,
    is_dir: bool,
    data: CopyData,
) -> SysResult<bool> {
    if stack.is_upper(layer) {
        return Ok(false);
    }
    if !stack.has_upper {
        return Err(Errno::EROFS);
    }
    if is_dir {
        copyup::ensure_upper_dir(stack, &join(parent_rel, name)).map(|_| false)
    } else {
        copyup::copy_up_entry(stack, parent_rel, name, layer, data)
    }
}

/// The upper directory of a merged directory: the one `set` already holds open when the
/// directory exists in the upper, else opened (and created) now.
pub enum UpperDir<'a> {
    /// Borrowed from the directory set.
    Held(BorrowedFd<'a>),
    /// Opened for this call.
    Opened(OwnedFd),
}

impl AsFd for UpperDir<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            UpperDir::Held(fd) => *fd,
            UpperDir::Opened(fd) => fd.as_fd(),
        }
    }
}

/// The upper directory of merged directory `parent_rel` whose layers `set` holds open.
pub fn upper_dir<'a>(stack: &Stack, parent_rel: &[u8], set: &'a DirSet) -> SysResult<UpperDir<'a>> {
    match set.dirs.first() {
        Some((l, fd)) if stack.is_upper(*l) => Ok(UpperDir::Held(fd.as_fd())),
        _ => copyup::ensure_upper_dir(stack, parent_rel).map(UpperDir::Opened),
    }
}

/// The `.wh.NAME` file name; only for names that have that form (`whiteout::has_file_form`).
pub(super) fn whiteout_name(name: &[u8]) -> SysResult<CString> {
    cname(&whiteout::whiteout_for(name))
}

pub(super) fn has_entry(dir: BorrowedFd<'_>, name: &CString) -> bool {
    sys::fstatat(dir, name).is_ok()
}

/// True when `name` in the upper directory `dir` is a 0/0 character-device whiteout.
pub(super) fn chardev_whiteout_at(dir: BorrowedFd<'_>, name: &CStr) -> bool {
    sys::fstatat(dir, name).is_ok_and(|st| whiteout::is_chardev_whiteout(&st))
}

/// Moves the entry made as `temp` in `dir` to `name`, where a char-device whiteout is, in one
/// step: the delete it recorded ends exactly when the new entry appears.
pub(super) fn take_whiteout(
    dir: BorrowedFd<'_>,
    temp: &CStr,
    name: &CStr,
    is_dir: bool,
) -> SysResult<()> {
    if is_dir {
        // rename(2) cannot put a directory over a non-directory: swap, then drop the whiteout.
        exchange(dir, temp, dir, name)?;
        let _ = sys::unlinkat(dir, temp, false);
        Ok(())
    } else {
        sys::renameat2(dir, temp, dir, name, 0)
    }
}

/// Swaps two names in one step (`RENAME_EXCHANGE`).
pub(super) fn exchange(
    a_dir: BorrowedFd<'_>,
    a: &CStr,
    b_dir: BorrowedFd<'_>,
    b: &CStr,
) -> SysResult<()> {
    sys::renameat2(a_dir, a, b_dir, b, libc::RENAME_EXCHANGE)
}
