//! Extended attributes: get, set, list and remove, on a name in a directory or through an fd.
//!
//! The union reads and copies xattrs of every kind of entry, symlinks and device nodes included,
//! which it must neither follow nor open. The *xattrat family (Linux 6.13) names such an object
//! as (directory fd, name) with `AT_SYMLINK_NOFOLLOW`; older kernels get the same call on the
//! entry's /proc path with the l*xattr form, and [`at_or_by_path`] is the one place that chooses.
//! Callers see the same results and errnos either way.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd};

use super::{check, check_size, proc_fd_path, Errno, SysResult};

// The *xattrat calls do not accept an O_PATH fd with an empty name, hence (dir, name) pairs.
const SYS_SETXATTRAT: libc::c_long = 463;
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;
const SYS_REMOVEXATTRAT: libc::c_long = 466;

/// `struct xattr_args` of the *xattrat calls.
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// An object named relative to a directory fd (`.` for the directory itself).
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    /// The directory.
    pub dir: BorrowedFd<'a>,
    /// One name in it, never followed if it is a symlink.
    pub name: &'a CStr,
}

impl<'a> At<'a> {
    /// `name` in `dir`.
    pub fn new(dir: BorrowedFd<'a>, name: &'a CStr) -> Self {
        At { dir, name }
    }

    /// The directory `dir` itself.
    pub fn dir(dir: BorrowedFd<'a>) -> Self {
        At { dir, name: c"." }
    }

    /// Path form for kernels without the *xattrat calls: /proc/self/fd/DIR/NAME.
    fn proc_path(&self) -> CString {
        let mut v = format!("/proc/self/fd/{}/", self.dir.as_raw_fd()).into_bytes();
        v.extend_from_slice(self.name.to_bytes());
        CString::new(v).unwrap_or_default()
    }
}

/// Runs `xattrat` (one *xattrat system call on `at`) and, only where the kernel lacks it, its
/// l*xattr twin `by_path` on `at`'s /proc path; either returns a count or -1 with errno set.
fn at_or_by_path(
    at: At<'_>,
    xattrat: impl FnOnce() -> libc::c_long,
    by_path: impl FnOnce(&CStr) -> libc::ssize_t,
) -> SysResult<usize> {
    let r = xattrat();
    if r >= 0 {
        return Ok(r as usize);
    }
    match Errno::last() {
        Errno::ENOSYS => check_size(by_path(&at.proc_path())),
        e => Err(e),
    }
}

/// getxattr without following symlinks; returns the value length (empty `buf` asks the size).
pub fn getxattr(at: At<'_>, xname: &CStr, buf: &mut [u8]) -> SysResult<usize> {
    let (ptr, len) = (buf.as_mut_ptr(), buf.len());
    let mut args = XattrArgs {
        value: ptr as u64,
        size: len as u32,
        flags: 0,
    };
    at_or_by_path(
        at,
        || {
            // SAFETY: `args.value` points at `buf`, writable for `args.size` bytes; strings are
            // valid.
            unsafe {
                libc::syscall(
                    SYS_GETXATTRAT,
                    at.dir.as_raw_fd(),
                    at.name.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                    xname.as_ptr(),
                    &mut args as *mut XattrArgs,
                    std::mem::size_of::<XattrArgs>(),
                )
            }
        },
        |p| {
            // SAFETY: `buf` is writable for its length; strings are valid.
            unsafe { libc::lgetxattr(p.as_ptr(), xname.as_ptr(), ptr.cast(), len) }
        },
    )
}

/// setxattr without following symlinks.
pub fn setxattr(at: At<'_>, xname: &CStr, value: &[u8], flags: i32) -> SysResult<()> {
    let args = XattrArgs {
        value: value.as_ptr() as u64,
        size: value.len() as u32,
        flags: flags as u32,
    };
    at_or_by_path(
        at,
        || {
            // SAFETY: `args.value` points at `value`, readable for `args.size` bytes; strings
            // are valid.
            unsafe {
                libc::syscall(
                    SYS_SETXATTRAT,
                    at.dir.as_raw_fd(),
                    at.name.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                    xname.as_ptr(),
                    &args as *const XattrArgs,
                    std::mem::size_of::<XattrArgs>(),
                )
            }
        },
        |p| {
            // SAFETY: `value` is readable for its length; strings are valid.
            let r = unsafe {
                libc::lsetxattr(
                    p.as_ptr(),
                    xname.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    flags,
                )
            };
            r as libc::ssize_t
        },
    )
    .map(drop)
}

/// listxattr without following symlinks (NUL-separated names).
pub fn listxattr(at: At<'_>, buf: &mut [u8]) -> SysResult<usize> {
    let (ptr, len) = (buf.as_mut_ptr().cast::<libc::c_char>(), buf.len());
    at_or_by_path(
        at,
        || {
            // SAFETY: `buf` is writable for its length; strings are valid.
            unsafe {
                libc::syscall(
                    SYS_LISTXATTRAT,
                    at.dir.as_raw_fd(),
                    at.name.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                    ptr,
                    len,
                )
            }
        },
        |p| {
            // SAFETY: `buf` is writable for its length; `p` is a valid C string.
            unsafe { libc::llistxattr(p.as_ptr(), ptr, len) }
        },
    )
}

/// removexattr without following symlinks.
pub fn removexattr(at: At<'_>, xname: &CStr) -> SysResult<()> {
    at_or_by_path(
        at,
        || {
            // SAFETY: strings are valid C strings.
            unsafe {
                libc::syscall(
                    SYS_REMOVEXATTRAT,
                    at.dir.as_raw_fd(),
                    at.name.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                    xname.as_ptr(),
                )
            }
        },
        |p| {
            // SAFETY: strings are valid C strings.
            let r = unsafe { libc::lremovexattr(p.as_ptr(), xname.as_ptr()) };
            r as libc::ssize_t
        },
    )
    .map(drop)
}

/// getxattr of the file an fd (`O_PATH` included) refers to; never used on symlinks.
pub fn fd_getxattr(fd: BorrowedFd<'_>, xname: &CStr, buf: &mut [u8]) -> SysResult<usize> {
    let p = proc_fd_path(fd);
    // SAFETY: `buf` is writable for its length; strings are valid. The /proc link resolves to
    // the file itself, whatever its open mode.
    check_size(unsafe {
        libc::getxattr(
            p.as_ptr(),
            xname.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    })
}

/// fgetxattr(2): for an fd opened for reading or writing (not `O_PATH`: EBADF).
pub fn fgetxattr(fd: BorrowedFd<'_>, xname: &CStr, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: `buf` is writable for its length; `xname` is a valid C string.
    check_size(unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            xname.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    })
}

/// removexattr of the file an fd (`O_PATH` included) refers to; never used on symlinks.
pub fn fd_removexattr(fd: BorrowedFd<'_>, xname: &CStr) -> SysResult<()> {
    let p = proc_fd_path(fd);
    // SAFETY: strings are valid C strings.
    check(unsafe { libc::removexattr(p.as_ptr(), xname.as_ptr()) }).map(drop)
}
