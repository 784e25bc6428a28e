//! The holder H, forked by the launcher: it owns the user namespace of a rootless run and a
//! private mount namespace, clones the container init while it is still single-threaded (see
//! `process`), then mounts the container root and serves it until the launcher closes their
//! socket.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use nix::mount::{mount, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Gid, Pid, Uid};

use nix::sys::signal::SigSet;

use super::bind_targets::BindTargets;
use super::config::LaunchConfig;
use super::exit::EXIT_LAUNCHER;
use super::idmap::MapPlan;
use super::init::init_main;
use super::namespaces::{self, UsernsOwner};
use super::protocol::{recv, send, Msg};
use super::root::RootProvider;
use super::seccomp::Filter;
use super::staging::Staging;
use super::{signals, Context, Error};
use crate::sys;

/// What the holder takes from the launcher's preparation (its copy of the launcher's memory).
pub(super) struct HolderJob<'a> {
    /// The run's configuration.
    pub cfg: &'a LaunchConfig,
    /// Mounts the container root.
    pub provider: &'a dyn RootProvider,
    /// The id maps of the user namespace, when there is one.
    pub maps: Option<&'a MapPlan>,
    /// Who creates the user namespace.
    pub userns: Option<UsernsOwner>,
    /// Where the root is mounted.
    pub staging: &'a Staging,
    /// The signal mask to restore before exec.
    pub old_mask: SigSet,
    /// The container's seccomp filter, compiled by the launcher.
    pub filter: Option<&'a Filter>,
    /// The launcher's end of the reaper's pipe, which only the launcher may hold.
    pub reaper_fd: i32,
}

/// The holder's life: set up, serve, exit (never returns to the launcher's code).
pub(super) fn holder_main(
    p: &HolderJob<'_>,
    launcher: Pid,
    mut to_p: UnixStream,
    init_sock: OwnedFd,
) -> ! {
    let code = match holder_run(p, launcher, &mut to_p, init_sock) {
        Ok(()) => 0,
        Err(e) => {
            let failed = Msg::Failed {
                code: EXIT_LAUNCHER,
                msg: e.to_string(),
            };
            let _ = send(&mut to_p, &failed);
            1
        }
    };
    sys::exit_now(code)
}

fn holder_run(
    p: &HolderJob<'_>,
    launcher: Pid,
    to_p: &mut UnixStream,
    init_sock: OwnedFd,
) -> Result<(), Error> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).ctx(|| "prctl(PR_SET_PDEATHSIG)".into())?;
    let _ = nix::unistd::close(p.reaper_fd);
    if nix::unistd::getppid() != launcher {
        return Err(Error::msg("the launcher exited during setup"));
    }
    // Terminal signals go to the launcher, which forwards them; the holder must outlive the
    // container's root users, so it leaves the foreground process group and ignores them.
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    for s in [
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGHUP,
        Signal::SIGTSTP,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
        Signal::SIGPIPE,
    ] {
        let _ = sys::ignore_signal(s);
    }
    signals::set_mask(&p.old_mask).ctx(|| "restoring the signal mask".into())?;

    if p.userns == Some(UsernsOwner::Holder) {
        nix::sched::unshare(CloneFlags::CLONE_NEWUSER).ctx(|| {
            "creating a user namespace (unshare CLONE_NEWUSER; check sysctl user.max_user_namespaces \
             and kernel.unprivileged_userns_clone)"
                .into()
        })?;
        send(to_p, &Msg::Unshared)?;
        match recv(to_p) {
            Some(Msg::Mapped) => {}
            _ => return Err(Error::msg("the launcher did not write the id maps")),
        }
        // With the maps written we are uid 0 in the namespace and hold its full capabilities.
        nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
            .ctx(|| "setresgid(0) in the user namespace".into())?;
        nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
            .ctx(|| "setresuid(0) in the user namespace".into())?;
        // setresuid clears the parent-death signal.
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).ctx(|| "prctl(PR_SET_PDEATHSIG)".into())?;
    }
    let flags = namespaces::holder_flags(false);
    nix::sched::unshare(flags).ctx(|| "creating a mount namespace".into())?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .ctx(|| "making / private in the holder".into())?;

    let st = &p.staging.0;
    mount(
        Some("tmpfs"),
        st,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
    .ctx(|| format!("mounting a tmpfs on {}", st.display()))?;
    let root = p.staging.root();
    std::fs::create_dir(&root).ctx(|| format!("mkdir {}", root.display()))?;
    let (upper, work) = if p.cfg.tmp_upper {
        let (u, w) = (st.join("upper"), st.join("work"));
        std::fs::create_dir(&u).ctx(|| "creating the tmpfs upper".into())?;
        std::fs::create_dir(&w).ctx(|| "creating the tmpfs work dir".into())?;
        (Some(u), Some(w))
    } else {
        (None, None)
    };
    mount(
        None::<&str>,
        st,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .ctx(|| "making the staging mount shared".into())?;

    // Clone the init now, while this process is single-threaded (see the module comment).
    let mut stack = vec![0u8; 1 << 20];
    let to_p_fd = to_p.as_raw_fd();
    let mut init_sock = Some(init_sock);
    let cfg = &p.cfg;
    let old_mask = p.old_mask;
    let init_pid = sys::clone_single_threaded(
        namespaces::container_flags(cfg.net, p.userns == Some(UsernsOwner::Init)),
        &mut stack,
        Box::new(|| {
            // The holder's socket must not stay open here: if the holder dies during setup the
            // launcher waits for EOF on it.
            let _ = nix::unistd::close(to_p_fd);
            let Some(fd) = init_sock.take() else {
                // The kernel runs this closure once per clone; nothing to talk to otherwise.
                sys::exit_now(EXIT_LAUNCHER)
            };
            let sock = UnixStream::from(fd);
            let own_userns = p.userns == Some(UsernsOwner::Init);
            init_main(cfg, &root, sock, p.maps, own_userns, old_mask, p.filter)
        }),
    )
    .ctx(|| "creating the container's namespaces (clone)".into())?;
    drop(init_sock);
    drop(stack);

    let guard = match p
        .provider
        .mount(&p.staging.root(), upper.as_deref(), work.as_deref())
    {
        Ok(g) => g,
        Err(e) => {
            let _ = kill(init_pid, Signal::SIGKILL);
            return Err(e.context("mounting the container root"));
        }
    };
    let targets = BindTargets::create(&p.staging.root(), &p.cfg.binds);
    send(to_p, &Msg::Ready(init_pid.as_raw()))?;
    // From here the socket's EOF tells us the launcher is done, or dead (the container init
    // dies with it): we outlive it just long enough to take the bind targets out of the upper
    // and unmount.
    nix::sys::prctl::set_pdeathsig(None).ctx(|| "prctl(PR_SET_PDEATHSIG)".into())?;
    while recv(to_p).is_some() {}
    wait_gone(init_pid);
    targets.remove();
    if nix::unistd::getppid() != launcher {
        // The launcher was killed: the container init it would have reaped stays a zombie
        // until the host's init reaps it, and until then the kernel keeps the union's
        // connection (seen here: 10 s of workers waiting for requests that never come).
        // Nothing uses the union any more: detach it and end now, which ends the connection.
        let _ = sys::umount_lazy(&p.staging.root());
        sys::exit_now(0);
    }
    drop(guard);
    Ok(())
}

/// Waits (up to a second) until the container init has exited, so nothing of the container
/// still uses the bind targets; its exit status belongs to the launcher, so only look.
fn wait_gone(pid: Pid) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while std::time::Instant::now() < deadline {
        let gone = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(st) => st
                .rsplit(')')
                .next()
                .is_none_or(|r| r.trim_start().starts_with(['Z', 'X'])),
            Err(_) => true,
        };
        if gone {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
