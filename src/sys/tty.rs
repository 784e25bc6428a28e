//! Terminals: window sizes, the controlling terminal, a terminal on the standard descriptors.
//!
//! The launcher's `-t` gives the container a pseudo-terminal of its own devpts instance: the
//! container init makes the slave its controlling terminal and standard descriptors, and the
//! launcher relays between the host terminal and the master, passing window sizes on.

use std::os::fd::{AsRawFd, BorrowedFd};

use super::{check, retry, SysResult};

/// The window size of terminal `fd` (TIOCGWINSZ).
pub fn window_size(fd: BorrowedFd<'_>) -> SysResult<libc::winsize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` into `ws`, which outlives the call.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) })?;
    Ok(ws)
}

/// Sets the window size of terminal `fd` (TIOCSWINSZ); the kernel sends SIGWINCH to its
/// foreground process group when it changes.
pub fn set_window_size(fd: BorrowedFd<'_>, ws: &libc::winsize) -> SysResult<()> {
    // SAFETY: TIOCSWINSZ reads one `struct winsize` from `ws`.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, ws) }).map(drop)
}

/// Makes terminal `fd` the controlling terminal of the calling session leader (TIOCSCTTY).
pub fn set_controlling_terminal(fd: BorrowedFd<'_>) -> SysResult<()> {
    // SAFETY: TIOCSCTTY takes an int argument (0: do not steal it from another session).
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) }).map(drop)
}

/// Puts `fd` on stdin, stdout and stderr (dup2 onto 0, 1 and 2).
pub fn dup_to_stdio(fd: BorrowedFd<'_>) -> SysResult<()> {
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors, which this process owns; `fd` stays open.
        retry(|| check(unsafe { libc::dup2(fd.as_raw_fd(), target) }))?;
    }
    Ok(())
}
