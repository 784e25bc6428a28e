//! Renames and hard links through the union: sources and targets are brought fully into the
//! upper first, and the old name gets its whiteout in the same step where it can.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering::Relaxed;

use super::delete::{drop_whiteout, write_whiteout};
use super::upper::{
    chardev_whiteout_at, check_new_name, cname, copy_up, exchange, has_entry, take_whiteout,
    whiteout_name,
};
use crate::layer::copyup::{self, CopyData};
use crate::layer::readdir;
use crate::layer::resolve::{self, DirSet, Found};
use crate::layer::stack::{join, open_subdir, Stack};
use crate::layer::whiteout;
use crate::sys::{self, Errno, SysResult};

/// Flags of [`rename`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RenameMode {
    /// RENAME_NOREPLACE.
    pub noreplace: bool,
    /// RENAME_EXCHANGE.
    pub exchange: bool,
}

/// Brings a rename source or target fully into the upper. Directories with lower parts are
/// materialized (copied whole and made opaque): that is what lets a lower directory be renamed
/// without EXDEV while the upper stays a plain OCI diff. Cost: proportional to the tree size.
fn bring_up(stack: &Stack, parent_rel: &[u8], name: &[u8], f: &Found) -> SysResult<()> {
    if f.is_dir() {
        if f.dir_layers.iter().any(|l| !stack.is_upper(*l)) {
            copyup::materialize_dir(stack, &join(parent_rel, name), &f.dir_layers)?;
        }
        Ok(())
    } else {
        copy_up(stack, parent_rel, name, f.layer, false, CopyData::MetaOnly).map(drop)
    }
}

/// Renames `sname` in `sp_rel` to `dname` in `dp_rel`.
#[allow(clippy::too_many_arguments)]
pub fn rename(
    stack: &Stack,
    sp_rel: &[u8],
    sp: &DirSet,
    sname: &[u8],
    dp_rel: &[u8],
    dp: &DirSet,
    dname: &[u8],
    mode: RenameMode,
) -> SysResult<(Found, Option<Found>)> {
    if !stack.has_upper {
        return Err(Errno::EROFS);
    }
    check_new_name(dname)?;
    check_new_name(sname)?;
    let src = resolve::lookup(stack, sp, sname)?.ok_or(Errno::ENOENT)?;
    let dst = resolve::lookup(stack, dp, dname)?;
    if mode.noreplace && dst.is_some() {
        return Err(Errno::EEXIST);
    }
    if mode.exchange && dst.is_none() {
        return Err(Errno::ENOENT);
    }
    if let Some(d) = &dst {
        if !mode.exchange {
            if d.ino == src.ino && !src.is_dir() {
                return Ok((src, dst)); // POSIX: both names are links to one file: nothing to do
            }
            match (src.is_dir(), d.is_dir()) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) => {
                    let set = DirSet::open(stack, &join(dp_rel, dname), &d.dir_layers)?;
                    if !readdir::is_empty(stack, &set, false)? {
                        return Err(Errno::ENOTEMPTY);
                    }
                }
                _ => {}
            }
        }
    }
    bring_up(stack, sp_rel, sname, &src)?;
    if mode.exchange {
        if let Some(d) = &dst {
            bring_up(stack, dp_rel, dname, d)?;
        }
    }
    let sp_up = copyup::ensure_upper_dir(stack, sp_rel)?;
    let dp_up = copyup::ensure_upper_dir(stack, dp_rel)?;
    let src_lower = resolve::lower_has(stack, sp, sname)?;
    let dst_lower = resolve::lower_has(stack, dp, dname)?;
    let sc = cname(sname)?;
    let dc = cname(dname)?;
    if mode.exchange {
        let d = dst.as_ref().ok_or(Errno::ENOENT)?;
        if src.is_dir() && dst_lower {
            opaque_child(stack, sp_up.as_fd(), &sc)?;
        }
        if d.is_dir() && src_lower {
            opaque_child(stack, dp_up.as_fd(), &dc)?;
        }
        exchange(sp_up.as_fd(), &sc, dp_up.as_fd(), &dc)?;
        return Ok((src, dst));
    }
    if let Some(d) = &dst {
        if d.is_dir() && stack.is_upper(d.layer) {
            // Merged-empty, so only whiteouts (and maybe an opaque marker) are left in it.
            clear_whiteouts(dp_up.as_fd(), &dc)?;
        }
    }
    if src.is_dir() && dst_lower {
        opaque_child(stack, sp_up.as_fd(), &sc)?;
    }
    // A replaced target that is a name of a lower multi-link file: the others lose a link.
    let replaced = dst
        .as_ref()
        .filter(|d| d.ino != src.ino && stack.tracks_nlink(d.ino, d.layer, &d.st))
        .map(|d| (d.ino, stack.view_nlink(d.ino, &d.st)));
    // The old name needs a whiteout when a lower layer still has it: `.wh.NAME` is written
    // first (beside the entry it changes nothing yet); a name too long for that form gets the
    // char-device form from the rename itself, which leaves it behind in one step.
    let src_wh_file = src_lower && whiteout::has_file_form(sname);
    let src_wh_dev = src_lower && !src_wh_file;
    let wrote_whiteout = src_wh_file && !has_entry(sp_up.as_fd(), &whiteout_name(sname)?);
    if src_wh_file {
        write_whiteout(stack, sp_up.as_fd(), sname)?;
    }
    // A char-device whiteout where the view shows no target: the rename replaces it.
    let over_dev = dst.is_none() && chardev_whiteout_at(dp_up.as_fd(), &dc);
    let moved = if over_dev && src.is_dir() {
        // rename(2) cannot put a directory over a non-directory: swap the two. The whiteout
        // then stands at the old name, which keeps it if a lower layer has that name.
        exchange(sp_up.as_fd(), &sc, dp_up.as_fd(), &dc).map(|()| {
            if !src_wh_dev {
                let _ = sys::unlinkat(sp_up.as_fd(), &sc, false);
            }
        })
    } else {
        let flags = if mode.noreplace && !over_dev {
            libc::RENAME_NOREPLACE
        } else {
            0
        };
        rename_leaving_whiteout(
            stack,
            sp_up.as_fd(),
            &sc,
            dp_up.as_fd(),
            &dc,
            flags,
            src_wh_dev,
        )
    };
    if let Err(e) = moved {
        if wrote_whiteout {
            let _ = drop_whiteout(sp_up.as_fd(), sname);
        }
        return Err(e);
    }
    drop_whiteout(dp_up.as_fd(), dname)?;
    if let Some((ino, links)) = replaced {
        stack.set_nlink_record(ino, links.saturating_sub(1))?;
    }
    Ok((src, dst))
}

/// renameat2 with `flags`, leaving a char-device whiteout at the old name when `whiteout`
/// (`RENAME_WHITEOUT`; on filesystems without it, made right after the rename).
fn rename_leaving_whiteout(
    stack: &Stack,
    from_dir: BorrowedFd<'_>,
    from: &CStr,
    to_dir: BorrowedFd<'_>,
    to: &CStr,
    flags: u32,
    whiteout: bool,
) -> SysResult<()> {
    if !whiteout {
        return sys::renameat2(from_dir, from, to_dir, to, flags);
    }
    match sys::renameat2(from_dir, from, to_dir, to, flags | libc::RENAME_WHITEOUT) {
        Err(Errno::EINVAL) => {
            sys::renameat2(from_dir, from, to_dir, to, flags)?;
            sys::mknodat(from_dir, from, whiteout::CHARDEV_WHITEOUT_MODE, 0)?;
        }
        r => r?,
    }
    stack.counters.whiteouts.fetch_add(1, Relaxed);
    Ok(())
}

fn opaque_child(stack: &Stack, dir: BorrowedFd<'_>, name: &CString) -> SysResult<()> {
    let fd = open_subdir(dir, name)?;
    copyup::make_opaque(stack, fd.as_fd())
}

fn clear_whiteouts(dir: BorrowedFd<'_>, name: &CString) -> SysResult<()> {
    let fd = open_subdir(dir, name)?;
    for e in sys::read_dir(fd.as_fd())? {
        let c = cname(&e.name)?;
        if whiteout::is_hidden(&e.name) || chardev_whiteout_at(fd.as_fd(), &c) {
            sys::unlinkat(fd.as_fd(), &c, false)?;
        } else {
            return Err(Errno::ENOTEMPTY);
        }
    }
    Ok(())
}

/// Hard-links the union entry `sname` (in `sp_rel`, found as `src`) as `dname` in `dp_rel`.
#[allow(clippy::too_many_arguments)]
pub fn link(
    stack: &Stack,
    sp_rel: &[u8],
    sname: &[u8],
    src: &Found,
    dp_rel: &[u8],
    dp: &DirSet,
    dname: &[u8],
) -> SysResult<()> {
    check_new_name(dname)?;
    if !stack.has_upper {
        return Err(Errno::EROFS);
    }
    if src.is_dir() {
        return Err(Errno::EPERM);
    }
    if resolve::lookup(stack, dp, dname)?.is_some() {
        return Err(Errno::EEXIST);
    }
    let tracked = stack.tracks_nlink(src.ino, src.layer, &src.st);
    let view_links = stack.view_nlink(src.ino, &src.st);
    copy_up(stack, sp_rel, sname, src.layer, false, CopyData::MetaOnly)?;
    let sp_up = copyup::ensure_upper_dir(stack, sp_rel)?;
    let dp_up = copyup::ensure_upper_dir(stack, dp_rel)?;
    let (sc, dc) = (cname(sname)?, cname(dname)?);
    match sys::linkat(sp_up.as_fd(), &sc, dp_up.as_fd(), &dc) {
        Err(Errno::EEXIST) if chardev_whiteout_at(dp_up.as_fd(), &dc) => {
            let temp = stack.temp_name();
            sys::linkat(sp_up.as_fd(), &sc, dp_up.as_fd(), &temp)?;
            take_whiteout(dp_up.as_fd(), &temp, &dc, false).inspect_err(|_| {
                let _ = sys::unlinkat(dp_up.as_fd(), &temp, false);
            })?;
        }
        r => r?,
    }
    if tracked {
        stack.set_nlink_record(src.ino, view_links + 1)?;
    }
    drop_whiteout(dp_up.as_fd(), dname)
}
