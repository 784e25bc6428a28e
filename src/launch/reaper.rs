//! The reaper: a small process that outlives a killed launcher and removes what the launcher
//! made on the host (its cgroups, its staging directory).
//!
//! Everything else ends with the launcher by itself: the container init and the holder have
//! it as parent-death target (the holder, once serving, ends on its socket's EOF), the pid
//! namespace dies with its init, and the mounts live in namespaces that die with their last
//! process. A cgroup directory and a staging directory are host objects, though, and SIGKILL
//! gives the launcher no chance to remove them. The launcher forks the reaper before it makes
//! either; the reaper waits for the end of a pipe whose write end only the launcher holds, and
//! then kills what is left in the cgroup and removes both, whether the launcher exited
//! normally (nothing left to do) or was killed at any point.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::sys::signal::Signal;

use super::cgroup::{self, Backend};
use super::{Context, Error};
use crate::sys;

/// The launcher's end of the reaper's pipe: the reaper acts when the launcher, and with it this
/// descriptor, is gone.
#[derive(Debug)]
pub(super) struct Reaper {
    pipe: OwnedFd,
}

impl Reaper {
    /// Forks the reaper for cgroup `name` in `backend` (if any) and staging directory
    /// `staging`, neither of which needs to exist yet.
    pub(super) fn start(
        backend: Option<&dyn Backend>,
        name: &str,
        staging: &Path,
    ) -> Result<Reaper, Error> {
        let (r, w) = sys::pipe().ctx(|| "pipe".into())?;
        match sys::fork().ctx(|| "fork (reaper)".into())? {
            sys::ForkResult::Parent { .. } => Ok(Reaper { pipe: w }),
            sys::ForkResult::Child => {
                drop(w);
                reaper_main(r, backend, name, staging)
            }
        }
    }

    /// The descriptor a forked child must close so that only the launcher keeps the reaper
    /// waiting.
    pub(super) fn raw_fd(&self) -> i32 {
        self.pipe.as_raw_fd()
    }
}

fn reaper_main(pipe: OwnedFd, backend: Option<&dyn Backend>, name: &str, staging: &Path) -> ! {
    // Nothing of the launcher's may stay open here (its stdout pipe, the terminal), and the
    // terminal's signals (Ctrl-C, hangup) must not end the reaper before its work.
    sys::close_all_except(pipe.as_raw_fd());
    sys::setsid();
    for s in [
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGHUP,
        Signal::SIGTERM,
        Signal::SIGTSTP,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
        Signal::SIGPIPE,
    ] {
        let _ = sys::ignore_signal(s);
    }
    let mut b = [0u8; 1];
    loop {
        match nix::unistd::read(pipe.as_fd(), &mut b) {
            Ok(0) => break,
            Err(nix::errno::Errno::EINTR) | Ok(_) => {}
            Err(_) => break,
        }
    }
    if let Some(backend) = backend {
        if !backend.procs(name).is_empty() || backend.list_ours().iter().any(|n| n == name) {
            let _ = cgroup::teardown(backend, name);
        }
    }
    // Empty by now: whatever was mounted on it lived in the holder's namespace.
    let _ = std::fs::remove_dir(staging);
    sys::exit_now(0)
}
