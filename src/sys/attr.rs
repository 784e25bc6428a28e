//! Changing an inode's owner, mode and times, by name or through an fd (`O_PATH` included).
//!
//! Copy-up and setattr change these on objects the union holds as `O_PATH` descriptors, which
//! the plain f-calls refuse; these wrappers reach the object anyway and never follow a symlink
//! (a symlink in a layer belongs to the layer, not to what it points at).

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::{check, proc_fd_path, Errno, SysResult};

const SYS_FCHMODAT2: libc::c_long = 452;

fn ts(sec: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec as _,
    }
}

/// atime and mtime of a stat, as utimensat wants them.
pub fn times_of(st: &libc::stat) -> [libc::timespec; 2] {
    [
        ts(st.st_atime, st.st_atime_nsec),
        ts(st.st_mtime, st.st_mtime_nsec),
    ]
}

/// Puts a directory's atime/mtime back after we changed its entries for internal reasons.
pub fn restore_times(dir: BorrowedFd<'_>, before: &libc::stat) {
    let _ = utimens_fd(dir, &times_of(before));
}

/// fchownat(2) on the object an fd (`O_PATH` included) refers to.
pub fn fchown_fd(fd: BorrowedFd<'_>, uid: Option<u32>, gid: Option<u32>) -> SysResult<()> {
    let u = uid.unwrap_or(u32::MAX);
    let g = gid.unwrap_or(u32::MAX);
    // SAFETY: the empty string is a valid C string; AT_EMPTY_PATH makes the call act on `fd`.
    check(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            u,
            g,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// chmod of the object an fd refers to; `EOPNOTSUPP` for a symlink (their mode is fixed).
pub fn fchmod_fd(fd: BorrowedFd<'_>, mode: u32) -> SysResult<()> {
    // SAFETY: the empty string is a valid C string; AT_EMPTY_PATH makes the call act on `fd`.
    let r = unsafe {
        libc::syscall(
            SYS_FCHMODAT2,
            fd.as_raw_fd(),
            c"".as_ptr(),
            mode as libc::mode_t,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        return Ok(());
    }
    match Errno::last() {
        Errno::ENOSYS | Errno::EINVAL => {
            // Kernels before 6.6 lack fchmodat2: go through /proc (the fd is never a symlink
            // here, callers check the type first).
            let p = proc_fd_path(fd);
            // SAFETY: `p` is a valid C string.
            check(unsafe { libc::chmod(p.as_ptr(), mode as libc::mode_t) }).map(drop)
        }
        e => Err(e),
    }
}

/// Sets atime/mtime (`UTIME_OMIT`/`UTIME_NOW` allowed) of `name` in `dir` without following it.
pub fn utimensat(dir: BorrowedFd<'_>, name: &CStr, times: &[libc::timespec; 2]) -> SysResult<()> {
    // SAFETY: `name` and `times` are valid for the duration of the call.
    check(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// Sets atime/mtime of what an fd (`O_PATH` included) refers to; never used on symlinks.
pub fn utimens_fd(fd: BorrowedFd<'_>, times: &[libc::timespec; 2]) -> SysResult<()> {
    let p = proc_fd_path(fd);
    // SAFETY: `p` and `times` are valid for the duration of the call.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), 0) }).map(drop)
}
