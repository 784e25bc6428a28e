//! Making and ending processes: fork and clone, the immediate exit of a forked child, and what a
//! daemon does to itself (new session, stdio on /dev/null, no inherited fds, limits, heap).
//!
//! The daemon (backgrounding, the watchdog) and the launcher (holder, container init, pid-1
//! reaper) fork through the same [`fork`], and every forked child leaves through [`exit_now`].
//! Callers rely on fork and clone refusing (`EDEADLK`) in a multi-threaded process: the child of
//! such a fork could inherit a lock held by a thread that does not exist in it.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use nix::sched::CloneFlags;
use nix::unistd::Pid;

pub use nix::unistd::ForkResult;

use super::{fstat, open_path, Errno, SysResult};

/// How many threads this process has (from /proc/self/task); `usize::MAX` if it cannot tell.
fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(usize::MAX)
}

/// fork(2), refused unless the process is single-threaded (so the child may allocate freely).
pub fn fork() -> SysResult<ForkResult> {
    if thread_count() != 1 {
        return Err(Errno::EDEADLK);
    }
    // SAFETY: the process has exactly one thread, so no lock can be held by another thread at
    // the moment of the fork and the child may run arbitrary Rust code (allocate, lock).
    unsafe { nix::unistd::fork() }
}

/// clone(2) a child running `child` on `stack` with `flags`, exit signal SIGCHLD.
///
/// Refused unless the process is single-threaded: the child gets a copy of this address space
/// and runs ordinary Rust code (allocation, locks), which is only sound with no other thread.
pub fn clone_single_threaded(
    flags: CloneFlags,
    stack: &mut [u8],
    child: Box<dyn FnMut() -> isize + '_>,
) -> SysResult<Pid> {
    if thread_count() != 1 {
        return Err(Errno::EDEADLK);
    }
    // With CLONE_PARENT the kernel takes the exit signal from our own (SIGCHLD) and rejects
    // any other value, so only pass one without it.
    let sig = if flags.contains(CloneFlags::CLONE_PARENT) {
        None
    } else {
        Some(libc::SIGCHLD)
    };
    // SAFETY: single-threaded (checked above); no CLONE_VM, so the child runs on `stack` in its
    // own copy of the address space and cannot corrupt ours; `stack` outlives the call.
    unsafe { nix::sched::clone(child, stack, flags, sig) }
}

/// Ends the process at once, without running destructors or atexit handlers (a forked child
/// must not flush or drop state that belongs to its parent).
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

/// Makes every allocation of 256 KiB or more a mapping of its own (glibc's M_MMAP_THRESHOLD,
/// which also stops its dynamic threshold); a no-op elsewhere.
///
/// Why: glibc raises the threshold to the size of the largest mapping freed, up to 32 MiB, and
/// from then on serves such sizes from a thread's arena, where `calloc` zeroes every page and
/// a free keeps them resident. fuser's 16 MiB receive buffer for the FUSE_INIT of each mount
/// made every third union of a server cost 16 MiB that way; as a mapping of its own it costs
/// the page INIT writes, and nothing once freed.
pub fn big_allocations_as_mappings() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes the allocator's tuning for later allocations.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}
