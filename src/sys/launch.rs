//! The launcher's unsafe system calls: fork, clone, signal handlers, and the loopback ioctl.
//!
//! Everything else in `launch/` goes through nix's safe wrappers.

use std::ffi::CStr;

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::{ForkResult, Pid};

/// How many threads this process has (from /proc/self/task).
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(usize::MAX)
}

/// fork(2), refused unless the process is single-threaded (so the child may allocate freely).
pub fn fork_single_threaded() -> nix::Result<ForkResult> {
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
) -> nix::Result<Pid> {
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

extern "C" fn noop_handler(_: libc::c_int) {}

/// Install a handler that does nothing for each signal in `set`.
///
/// A pid-namespace init discards signals from outside for which it has no handler; a no-op
/// handler plus a blocked mask and `sigwait` lets it receive them.
pub fn install_noop_handlers(set: &[Signal]) -> nix::Result<()> {
    let act = SigAction::new(
        SigHandler::Handler(noop_handler),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in set {
        // SAFETY: the handler is async-signal-safe (it does nothing) and replaces no handler that
        // other code relies on: this runs in the launcher's own processes before exec.
        unsafe { sigaction(*s, &act) }?;
    }
    Ok(())
}

/// Set a signal's disposition to ignore.
pub fn ignore_signal(sig: Signal) -> nix::Result<()> {
    let act = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_IGN installs no code; nothing in this process depends on the old disposition.
    unsafe { sigaction(sig, &act) }.map(|_| ())
}

/// Reset a signal's disposition to the default (dispositions set to ignore survive exec).
pub fn default_signal(sig: Signal) -> nix::Result<()> {
    let act = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_DFL installs no code.
    unsafe { sigaction(sig, &act) }.map(|_| ())
}

/// Bring a network interface (e.g. `lo`) up in the current network namespace.
pub fn interface_up(name: &CStr) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let bytes = name.to_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ {
        return Err(Errno::EINVAL);
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name from and writes the flags into `req`, which we own
    // and which lives across the call; the socket fd is valid.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    Errno::result(r)?;
    // SAFETY: after SIOCGIFFLAGS the flags member of the union is the initialised one.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    Errno::result(r).map(|_| ())
}

/// Terminate the calling process at once, without running destructors or atexit handlers.
///
/// Used by forked children, which must not flush or drop state that belongs to the parent.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is always safe to call; it never returns.
    unsafe { libc::_exit(code) }
}
