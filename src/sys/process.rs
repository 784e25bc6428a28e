//! Making and ending processes: fork, the immediate exit of a forked child, and what a daemon
//! does to itself (new session, stdio on /dev/null, no inherited fds, limits, heap).

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use super::{fstat, open_path, Errno, SysResult};

/// fork(2). Only called before any thread is started (daemonising, the watchdog).
pub fn fork() -> SysResult<libc::pid_t> {
    // SAFETY: the callers are single-threaded at this point, so the child inherits no lock
    // held by another thread.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        Err(Errno::last())
    } else {
        Ok(pid)
    }
}

/// Ends the process at once, without running destructors (a forked child must not unwind
/// into its parent's state).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// setsid(2).
pub fn setsid() {
    // SAFETY: no memory is involved; failure (already a group leader) is harmless.
    unsafe { libc::setsid() };
}

/// Points stdin, stdout and stderr at /dev/null (a daemon must not hold the caller's terminal
/// or pipe). A stderr redirected to a regular file stays: that is where its errors are wanted,
/// and a file holds nobody up.
pub fn stdio_to_null() {
    // SAFETY: fd 2 is only inspected; the BorrowedFd does not outlive this statement.
    let err_to_file = fstat(unsafe { BorrowedFd::borrow_raw(2) })
        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG);
    if let Ok(null) = open_path(std::path::Path::new("/dev/null"), libc::O_RDWR) {
        for target in 0..if err_to_file { 2 } else { 3 } {
            // SAFETY: dup2 onto the standard descriptors; `null` stays open across the calls.
            unsafe { libc::dup2(null.as_raw_fd(), target) };
        }
    }
}

/// Closes every descriptor except `keep` (a forked helper must not hold the parent's pipes).
pub fn close_all_except(keep: RawFd) {
    // SAFETY: close_range on ranges that do not include `keep`; we own every fd in this process
    // at this point (single-threaded child right after fork).
    unsafe {
        if keep > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, (keep - 1) as u32, 0u32);
        }
        libc::syscall(libc::SYS_close_range, (keep + 1) as u32, u32::MAX, 0u32);
    }
}

/// Raises the soft open-file limit to the hard limit (a daemon holding layer and directory fds
/// for many users should not stop at the usual 1024); returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we pass; setrlimit only reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
    }
    rl.rlim_cur
}

/// Returns free heap memory to the system (glibc's malloc_trim); a no-op elsewhere.
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists; no memory we hold moves.
    unsafe {
        libc::malloc_trim(0);
    }
}
