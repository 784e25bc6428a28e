//! Directory entries: creating, linking, renaming and removing names, reading symlinks, and
//! listing a directory.
//!
//! Every call takes a directory fd and one name, never a path, so that the union's layer
//! operations cannot be redirected out of a layer by a symlink or a concurrent rename, and no
//! call is limited by PATH_MAX however deep the entry is.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use super::{check, check_size, openat, Errno, SysResult};

/// mkdirat(2).
pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> SysResult<()> {
    // SAFETY: `name` is a valid C string.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) }).map(drop)
}

/// mknodat(2).
pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> SysResult<()> {
    // SAFETY: `name` is a valid C string.
    check(unsafe {
        libc::mknodat(
            dir.as_raw_fd(),
            name.as_ptr(),
            mode as libc::mode_t,
            rdev as libc::dev_t,
        )
    })
    .map(drop)
}

/// symlinkat(2): creates `name` in `dir` pointing at `target`.
pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> SysResult<()> {
    // SAFETY: both strings are valid C strings.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// linkat(2) without following symlinks.
pub fn linkat(
    olddir: BorrowedFd<'_>,
    oldname: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
) -> SysResult<()> {
    // SAFETY: both strings are valid C strings.
    check(unsafe {
        libc::linkat(
            olddir.as_raw_fd(),
            oldname.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            0,
        )
    })
    .map(drop)
}

/// unlinkat(2); `dir_flag` removes a directory.
pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, dir_flag: bool) -> SysResult<()> {
    let flags = if dir_flag { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: `name` is a valid C string.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

/// renameat2(2) with `RENAME_*` flags.
pub fn renameat2(
    olddir: BorrowedFd<'_>,
    oldname: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
    flags: u32,
) -> SysResult<()> {
    // SAFETY: both strings are valid C strings.
    check(unsafe {
        libc::renameat2(
            olddir.as_raw_fd(),
            oldname.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// readlinkat(2) of one name, or of the symlink an `O_PATH` fd refers to (empty name).
pub fn readlinkat(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: the buffer is writable for its whole length, which is what we pass.
    let n = check_size(unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// One entry of a directory listing.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// The name (never `.` or `..`).
    pub name: Vec<u8>,
    /// `d_ino` as the layer reports it.
    pub ino: u64,
    /// `d_type` (`DT_*`), `DT_UNKNOWN` on filesystems that do not fill it.
    pub dtype: u8,
}

/// Lists a directory given an fd of it (the fd is duplicated; the caller keeps its own).
pub fn read_dir(dir: BorrowedFd<'_>) -> SysResult<Vec<DirEntry>> {
    // O_NOATIME: listing a layer directory, for the union's own bookkeeping or for a reader,
    // must not change it (lower layers are never modified, their atimes included). Only the
    // owner or CAP_FOWNER may ask for it.
    let flags = libc::O_RDONLY | libc::O_DIRECTORY;
    let fd = match openat(dir, c".", flags | libc::O_NOATIME, 0) {
        Err(Errno::EPERM) => openat(dir, c".", flags, 0)?,
        r => r?,
    };
    let raw: RawFd = std::os::fd::IntoRawFd::into_raw_fd(fd);
    // SAFETY: `raw` is an open directory fd whose ownership passes to the DIR stream.
    let dirp = unsafe { libc::fdopendir(raw) };
    if dirp.is_null() {
        let e = Errno::last();
        // SAFETY: fdopendir failed, so `raw` is still ours to close.
        unsafe { libc::close(raw) };
        return Err(e);
    }
    let mut out = Vec::new();
    loop {
        Errno::clear();
        // SAFETY: `dirp` is a valid DIR stream until closedir below.
        let ent = unsafe { libc::readdir64(dirp) };
        if ent.is_null() {
            let e = Errno::last_raw();
            // SAFETY: `dirp` is valid and closed exactly once.
            unsafe { libc::closedir(dirp) };
            if e != 0 {
                return Err(Errno::from_raw(e));
            }
            return Ok(out);
        }
        // SAFETY: a non-null dirent from readdir64 is valid until the next readdir64 call, and
        // d_name is NUL-terminated.
        let (name, ino, dtype) = unsafe {
            let e = &*ent;
            (
                CStr::from_ptr(e.d_name.as_ptr()).to_bytes().to_vec(),
                e.d_ino,
                e.d_type,
            )
        };
        if name == b"." || name == b".." {
            continue;
        }
        out.push(DirEntry { name, ino, dtype });
    }
}
