//! Every `unsafe` system call wrapper of the crate lives here, each with a safe signature.
//!
//! The rest of the crate works with `OwnedFd`/`BorrowedFd`, `CStr` names and `Errno` results,
//! and names every wrapper `crate::sys::NAME`: the files are split by syscall family for their
//! readers and re-exported here, so callers never depend on the split. Each unsafe block says
//! why it is sound. Wrappers retry `EINTR` where the call is restartable.
//!
//! - `fd.rs`: openat2/openat, re-opening `O_PATH` fds, pipes, the stat family
//! - `dir.rs`: directory entries (mkdirat ... renameat2, readlinkat, listing)
//! - `attr.rs`: owner, mode and times, by name or through an `O_PATH` fd
//! - `xattr.rs`: extended attributes, with the *xattrat-or-/proc fallback in one place
//! - `io.rs`: file data (read/write, in-kernel copies, holes, sync, mmap)
//! - `mount.rs`: mount(2) and the lazy unmount
//! - `process.rs`: fork, clone, exit_now, daemonising; `signal.rs`: masks and dispositions
//! - `ids.rs`: effective ids and umask; `net.rs`: bringing `lo` up in a new network namespace
//! - [`uring`]: FUSE over io_uring (ring, registered buffers, passthrough backing ioctls)

mod attr;
mod dir;
mod fd;
mod ids;
mod io;
mod mount;
mod net;
mod process;
mod signal;
pub mod uring;
mod xattr;

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

pub use nix::errno::Errno;

pub use attr::*;
pub use dir::*;
pub use fd::*;
pub use ids::*;
pub use io::*;
pub use mount::*;
pub use net::*;
pub use process::*;
pub use signal::*;
pub use xattr::*;

/// Result of a system call wrapper.
pub type SysResult<T> = Result<T, Errno>;

/// A NUL-terminated copy of `name`; names with an inner NUL cannot exist on Linux.
pub fn cstr(name: &OsStr) -> SysResult<CString> {
    CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)
}

/// Borrow helper so callers can write `sys::fd(&owned)`.
pub fn fd<F: AsFd>(f: &F) -> BorrowedFd<'_> {
    f.as_fd()
}

/// The errno of a failed call that returns an int (most of them), or its value.
fn check(ret: libc::c_int) -> SysResult<libc::c_int> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

/// As [`check`], for calls that return a byte count.
fn check_size(ret: libc::ssize_t) -> SysResult<usize> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret as usize)
    }
}

/// Runs a restartable call again while it is interrupted by a signal.
fn retry<T>(mut f: impl FnMut() -> SysResult<T>) -> SysResult<T> {
    loop {
        match f() {
            Err(Errno::EINTR) => continue,
            r => return r,
        }
    }
}

fn owned(fd: libc::c_int) -> OwnedFd {
    // SAFETY: callers pass a descriptor just returned by the kernel, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The /proc/self/fd path of `fd`, for calls that have no fd form for `O_PATH` descriptors.
fn proc_fd_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}
