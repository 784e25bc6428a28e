//! Signals: which ones are forwarded, how a wait status becomes an exit code, and the pid-1
//! reaper used with `--init`.

use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Signals the launcher (and the `--init` reaper) pass on to the command.
pub const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// The forwarded signals plus SIGCHLD: what a forwarding loop blocks and waits for.
pub fn wait_set() -> SigSet {
    let mut s = SigSet::empty();
    for sig in FORWARDED {
        s.add(sig);
    }
    s.add(Signal::SIGCHLD);
    s
}

/// Block `set`, returning the previous mask (to restore in children before exec).
pub fn block(set: &SigSet) -> nix::Result<SigSet> {
    let mut old = SigSet::empty();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(set), Some(&mut old))?;
    Ok(old)
}

/// Replace the signal mask with `mask`.
pub fn set_mask(mask: &SigSet) -> nix::Result<()> {
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(mask), None)
}

/// The shell convention: exit code, or 128 + signal number.
pub fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, c) => Some(c),
        WaitStatus::Signaled(_, s, _) => Some(128 + s as i32),
        _ => None,
    }
}

/// Run as pid 1 of the container: forward signals to `child`, reap every zombie, and return
/// the child's exit code once it is gone.
///
/// The caller must have installed handlers for [`FORWARDED`] (a pid-1 without a handler
/// never sees signals sent from outside) and blocked [`wait_set`] before forking `child`.
pub fn reap_and_forward(child: Pid) -> i32 {
    let set = wait_set();
    let mut code = None;
    loop {
        // Reap first: a SIGCHLD may have arrived before we started waiting.
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(st) => {
                    if st.pid() == Some(child) {
                        code = exit_code(st);
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(_) => break, // ECHILD: nothing left
            }
        }
        if let Some(c) = code {
            return c;
        }
        match set.wait() {
            Ok(Signal::SIGCHLD) => {}
            Ok(sig) => {
                let _ = kill(child, sig);
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let p = Pid::from_raw(1);
        assert_eq!(exit_code(WaitStatus::Exited(p, 42)), Some(42));
        assert_eq!(
            exit_code(WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            Some(137)
        );
        assert_eq!(exit_code(WaitStatus::StillAlive), None);
    }
}
