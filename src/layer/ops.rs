//! The changes a union makes to its upper layer: create, remove, rename, link, each written so
//! that the upper stays a valid OCI layer diff and a crash leaves the old or the new view.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::layer::copyup::{self, CopyData};
use crate::layer::readdir;
use crate::layer::resolve::{self, DirSet, Found};
use crate::layer::stack::{join, open_subdir, remove_tree, Stack};
use crate::layer::whiteout;
use crate::sys::{self, Errno, SysResult};
use std::sync::atomic::Ordering::Relaxed;

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

fn cname(name: &[u8]) -> SysResult<CString> {
    CString::new(name).map_err(|_| Errno::EINVAL)
}

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
}

/// The `.wh.NAME` file name; only for names that have that form (`whiteout::has_file_form`).
fn whiteout_name(name: &[u8]) -> SysResult<CString> {
    cname(&whiteout::whiteout_for(name))
}

fn has_entry(dir: BorrowedFd<'_>, name: &CString) -> bool {
    sys::fstatat(dir, name).is_ok()
}

/// True when `name` in the upper directory `dir` is a 0/0 character-device whiteout.
fn chardev_whiteout_at(dir: BorrowedFd<'_>, name: &CStr) -> bool {
    sys::fstatat(dir, name).is_ok_and(|st| whiteout::is_chardev_whiteout(&st))
}

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

/// Moves the entry made as `temp` in `dir` to `name`, where a char-device whiteout is, in one
/// step: the delete it recorded ends exactly when the new entry appears.
fn take_whiteout(dir: BorrowedFd<'_>, temp: &CStr, name: &CStr, is_dir: bool) -> SysResult<()> {
    if is_dir {
        // rename(2) cannot put a directory over a non-directory: swap, then drop the whiteout.
        exchange(dir, temp, dir, name)?;
        let _ = sys::unlinkat(dir, temp, false);
        Ok(())
    } else {
        sys::renameat2(dir, temp, dir, name, 0)
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
    let acl = has_default_acl(up.as_fd());
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

/// Swaps two names in one step (`RENAME_EXCHANGE`).
fn exchange(a_dir: BorrowedFd<'_>, a: &CStr, b_dir: BorrowedFd<'_>, b: &CStr) -> SysResult<()> {
    sys::renameat2(a_dir, a, b_dir, b, libc::RENAME_EXCHANGE)
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
