//! Deletes: the whiteouts that record them in the upper (`.wh.NAME` files, or 0/0 character
//! devices for names too long for that form) and removing entries through the union.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering::Relaxed;

use super::upper::{chardev_whiteout_at, cname, upper_dir, whiteout_name};
use crate::layer::readdir;
use crate::layer::resolve::{self, DirSet, Found};
use crate::layer::stack::{join, remove_tree, Stack};
use crate::layer::whiteout;
use crate::sys::{self, Errno, SysResult};

/// Name of the shared empty file in the work dir that whiteouts are hard links of.
const SHARED_WHITEOUT: &CStr = c"whiteout";

/// Writes a whiteout for `name` in an upper directory that has no entry of that name
/// (idempotent). `.wh.NAME` whiteouts are hard links of one empty file in the work dir: a link
/// costs no inode allocation, which on ext4 is most of the price of deleting a lower file
/// (overlayfs shares its whiteout inode the same way). Each is still an ordinary empty
/// `.wh.NAME` file to anything reading the upper. Names too long for that form get a 0/0
/// character device of their own name.
pub fn write_whiteout(stack: &Stack, upper_dir: BorrowedFd<'_>, name: &[u8]) -> SysResult<()> {
    if !whiteout::has_file_form(name) {
        let c = cname(name)?;
        return match sys::mknodat(upper_dir, &c, whiteout::CHARDEV_WHITEOUT_MODE, 0) {
            Ok(()) => {
                stack.counters.whiteouts.fetch_add(1, Relaxed);
                Ok(())
            }
            Err(Errno::EEXIST) if chardev_whiteout_at(upper_dir, &c) => Ok(()),
            Err(e) => Err(e),
        };
    }
    let wh = whiteout_name(name)?;
    if let Ok(work) = stack.work() {
        for _ in 0..3 {
            match sys::linkat(work, SHARED_WHITEOUT, upper_dir, &wh) {
                Ok(()) => {
                    stack.counters.whiteouts.fetch_add(1, Relaxed);
                    return Ok(());
                }
                Err(Errno::EEXIST) => return Ok(()),
                Err(Errno::ENOENT) => {
                    let _ = sys::openat(
                        work,
                        SHARED_WHITEOUT,
                        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                        0o600,
                    );
                }
                // Too many links (ext4 allows 65000): start a fresh shared file.
                Err(Errno::EMLINK) => {
                    let _ = sys::unlinkat(work, SHARED_WHITEOUT, false);
                }
                Err(_) => break,
            }
        }
    }
    match sys::openat(
        upper_dir,
        &wh,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
        0o600,
    ) {
        Ok(_) => {
            stack.counters.whiteouts.fetch_add(1, Relaxed);
            Ok(())
        }
        Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Replaces the upper entry `name` of `dir` by a 0/0 character-device whiteout in one step
/// (`RENAME_WHITEOUT`, as kernel overlayfs does) and removes the entry where nobody sees it.
/// For names whose delete cannot be recorded beside the entry (`.wh.NAME` does not fit).
fn whiteout_over(stack: &Stack, dir: BorrowedFd<'_>, name: &CStr) -> SysResult<()> {
    let work = stack.work()?;
    let stage = stack.stage_name();
    match sys::renameat2(dir, name, work, &stage, libc::RENAME_WHITEOUT) {
        Ok(()) => {}
        // A filesystem without RENAME_WHITEOUT: two steps, the entry put back if the second
        // fails (a crash between them shows the lower entry again).
        Err(Errno::EINVAL) => {
            sys::renameat2(dir, name, work, &stage, libc::RENAME_NOREPLACE)?;
            if let Err(e) = sys::mknodat(dir, name, whiteout::CHARDEV_WHITEOUT_MODE, 0) {
                let _ = sys::renameat2(work, &stage, dir, name, libc::RENAME_NOREPLACE);
                return Err(e);
            }
        }
        Err(e) => return Err(e),
    }
    stack.counters.whiteouts.fetch_add(1, Relaxed);
    let _ = remove_tree(work, &stage);
    Ok(())
}

/// Removes a `.wh.NAME` whiteout from an upper directory if there is one. (A char-device
/// whiteout holds the name itself: whoever takes the name replaces it, see `take_whiteout`.)
pub fn drop_whiteout(upper_dir: BorrowedFd<'_>, name: &[u8]) -> SysResult<()> {
    if !whiteout::has_file_form(name) {
        return Ok(());
    }
    let wh = whiteout_name(name)?;
    match sys::unlinkat(upper_dir, &wh, false) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        // A whiteout that is a directory (a hand-made or corrupt upper) is read as one too;
        // `.wh.` names are ours, so it goes with what it holds.
        Err(Errno::EISDIR) => remove_tree(upper_dir, &wh),
        Err(e) => Err(e),
    }
}

/// Removes `name` (a directory when `dir`) from the merged directory: the upper entry goes, and
/// a whiteout is left where a lower layer still has the name.
pub fn remove(
    stack: &Stack,
    parent_rel: &[u8],
    parent: &DirSet,
    name: &[u8],
    dir: bool,
) -> SysResult<Found> {
    if !stack.has_upper {
        return Err(Errno::EROFS);
    }
    let f = resolve::lookup(stack, parent, name)?.ok_or(Errno::ENOENT)?;
    if dir && !f.is_dir() {
        return Err(Errno::ENOTDIR);
    }
    if !dir && f.is_dir() {
        return Err(Errno::EISDIR);
    }
    let rel = join(parent_rel, name);
    if dir {
        let set = DirSet::open(stack, &rel, &f.dir_layers)?;
        if !readdir::is_empty(stack, &set, false)? {
            return Err(Errno::ENOTEMPTY);
        }
    }
    // Found in a lower layer: no need to look there again.
    let need_whiteout = !stack.is_upper(f.layer) || resolve::lower_has(stack, parent, name)?;
    // A name of a lower multi-link file goes: the other names now show one link less.
    let tracked = !dir && stack.has_upper && stack.tracks_nlink(f.ino, f.layer, &f.st);
    let view_links = stack.view_nlink(f.ino, &f.st);
    let up = upper_dir(stack, parent_rel, parent)?;
    let in_upper = stack.is_upper(f.layer);
    if need_whiteout && in_upper && !whiteout::has_file_form(name) {
        // Only the char-device form fits, and it takes the entry's own name.
        whiteout_over(stack, up.as_fd(), &cname(name)?)?;
    } else if need_whiteout {
        // Written first: beside the upper entry it changes nothing until that entry goes.
        write_whiteout(stack, up.as_fd(), name)?;
    }
    if in_upper && (!need_whiteout || whiteout::has_file_form(name)) {
        let c = cname(name)?;
        if dir {
            // Move it out in one step, then clean it up where nobody sees it.
            let work = stack.work()?;
            let stage = stack.stage_name();
            sys::renameat2(up.as_fd(), &c, work, &stage, libc::RENAME_NOREPLACE)?;
            let _ = remove_tree(work, &stage);
        } else {
            sys::unlinkat(up.as_fd(), &c, false)?;
        }
    }
    if tracked {
        stack.set_nlink_record(f.ino, view_links.saturating_sub(1))?;
    }
    Ok(f)
}
