//! Signal masks and dispositions.
//!
//! The daemon blocks its termination signals before any worker thread starts and takes them
//! with `sigwait` on one thread, so no handler ever runs inside a FUSE request. The launcher
//! sets dispositions in its own processes before exec: a pid-namespace init needs a handler to
//! receive signals from outside at all, and dispositions set to ignore survive exec, so the
//! container's command gets the defaults back.

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

use super::SysResult;

/// A `sigset_t` holding `signals`.
fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain old data; sigemptyset initialises it before sigaddset reads it.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
        set
    }
}

/// Blocks `signals` in the calling thread (threads spawned later inherit the mask).
pub fn block_signals(signals: &[i32]) {
    let set = sigset(signals);
    // SAFETY: `set` is an initialised sigset; a null old-mask pointer is allowed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Waits for one of `signals` (which must be blocked) and returns it.
pub fn wait_signal(signals: &[i32]) -> i32 {
    let set = sigset(signals);
    let mut sig = 0;
    // SAFETY: `set` is an initialised sigset; sigwait writes one int into `sig`.
    unsafe { libc::sigwait(&set, &mut sig) };
    sig
}

extern "C" fn noop_handler(_: libc::c_int) {}

/// Install a handler that does nothing for each signal in `set`.
///
/// A pid-namespace init discards signals from outside for which it has no handler; a no-op
/// handler plus a blocked mask and `sigwait` lets it receive them.
pub fn install_noop_handlers(set: &[Signal]) -> SysResult<()> {
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
pub fn ignore_signal(sig: Signal) -> SysResult<()> {
    let act = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_IGN installs no code; nothing in this process depends on the old disposition.
    unsafe { sigaction(sig, &act) }.map(|_| ())
}

/// Reset a signal's disposition to the default (dispositions set to ignore survive exec).
pub fn default_signal(sig: Signal) -> SysResult<()> {
    let act = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_DFL installs no code.
    unsafe { sigaction(sig, &act) }.map(|_| ())
}
