//! Every `unsafe` system call wrapper of the crate lives here, each with a safe signature.
//!
//! The crate root and every binary deny `unsafe_code`, and only this module is allowed it, so
//! the compiler keeps unsafe code here (the test below keeps the allowance from spreading).
//! Here, clippy refuses an unsafe block without a `// SAFETY:` comment saying why it is sound.
//!
//! The rest of the crate works with `OwnedFd`/`BorrowedFd`, `CStr` names and `Errno` results,
//! and names every wrapper `crate::sys::NAME`: the files are split by syscall family for their
//! readers and re-exported here, so callers never depend on the split. Wrappers retry `EINTR`
//! where the call is restartable.
//!
//! - `fd.rs`: openat2/openat, re-opening `O_PATH` fds, pipes, the stat family
//! - `dir.rs`: directory entries (mkdirat ... renameat2, readlinkat, listing)
//! - `attr.rs`: owner, mode and times, by name or through an `O_PATH` fd
//! - `xattr.rs`: extended attributes, with the *xattrat-or-/proc fallback in one place
//! - `io.rs`: file data (read/write, in-kernel copies, holes, sync, mmap)
//! - `event.rs`: epoll sets of once-firing entries, eventfds, non-blocking fds
//! - `mem.rs`: large buffers as anonymous mappings (resident only where written)
//! - `mount.rs`: mount(2) and the lazy unmount; `lock.rs`: flock and who holds one
//! - `process.rs`: fork, clone, exit_now, daemonising; `signal.rs`: masks and dispositions
//! - `ids.rs`: effective ids and umask; `net.rs`: bringing `lo` up in a new network namespace,
//!   descriptors passed over a socket; `tty.rs`: window sizes, the controlling terminal
//! - [`uring`]: FUSE over io_uring (ring, registered buffers, passthrough backing ioctls)

#![deny(clippy::undocumented_unsafe_blocks)]

mod attr;
mod dir;
mod event;
mod fd;
mod ids;
mod io;
mod lock;
mod mem;
mod mount;
mod net;
mod process;
mod signal;
mod tty;
pub mod uring;
mod xattr;

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

pub use nix::errno::Errno;

pub use attr::*;
pub use dir::*;
pub use event::*;
pub use fd::*;
pub use ids::*;
pub use io::*;
pub use lock::*;
pub use mem::*;
pub use mount::*;
pub use net::*;
pub use process::*;
pub use signal::*;
pub use tty::*;
pub use xattr::*;

/// Result of a system call wrapper.
pub type SysResult<T> = Result<T, Errno>;

/// The errno of an `std::io::Error` from a library call (EIO when it carries none).
pub(crate) fn errno_of(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

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

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// `#![deny(unsafe_code)]` only works while nothing else re-allows it: the one allowance is
    /// the `sys` module's, and every binary (a crate of its own) denies it too.
    #[test]
    fn unsafe_is_allowed_in_sys_only() {
        let lint = concat!("unsafe", "_code");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        assert!(files.len() > 20, "no sources found under {}", src.display());
        let mut allowances = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            let lines: Vec<&str> = text.lines().map(str::trim).collect();
            let name = f.strip_prefix(&src).unwrap().display().to_string();
            for (i, l) in lines.iter().enumerate() {
                if l.contains(lint) && !l.starts_with("//") && !l.contains("deny(") {
                    let next = lines.get(i + 1).copied().unwrap_or("");
                    allowances.push(format!("{name}: {l} {next}"));
                }
            }
            if name.starts_with("bin/") {
                let deny = format!("#![deny({lint})]");
                assert!(lines.contains(&deny.as_str()), "{name} lacks {deny}");
            }
        }
        let sys_only = format!("lib.rs: #[allow({lint})] pub mod sys;");
        assert_eq!(allowances, [sys_only]);
    }
}
