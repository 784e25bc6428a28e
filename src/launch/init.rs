//! The container init I, cloned by the holder into the container's namespaces (with
//! CLONE_PARENT, so the launcher is its parent): it waits for the launcher's go, builds the
//! container's root (mounts, pivot_root), drops to the command's identity and capabilities, and
//! execs the command (or, with `--init`, forks it and reaps as pid 1).

use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::{ForkResult, Gid, Uid};

use super::config::{LaunchConfig, NetMode};
use super::exit::{Failure, EXIT_CANNOT_EXEC, EXIT_LAUNCHER, EXIT_NOT_FOUND};
use super::idmap::MapPlan;
use super::protocol::{recv, send, send_with_fd, Msg};
use super::rootfs::Plan;
use super::seccomp::Filter;
use super::{capabilities, signals, terminal, Context, Error};
use crate::sys;

/// The init's life: it execs the command or exits with the launcher's code for the failure.
pub(super) fn init_main(
    cfg: &LaunchConfig,
    root: &Path,
    mut sock: UnixStream,
    maps: Option<&MapPlan>,
    own_userns: bool,
    old_mask: SigSet,
    filter: Option<&Filter>,
) -> isize {
    let (code, e) = match init_run(cfg, root, &mut sock, maps, own_userns, old_mask, filter) {
        Ok(never) => match never {},
        Err(f) => (f.code, f.error),
    };
    let failed = Msg::Failed {
        code,
        msg: e.to_string(),
    };
    let _ = send(&mut sock, &failed);
    sys::exit_now(code)
}

fn init_run(
    cfg: &LaunchConfig,
    root: &Path,
    sock: &mut UnixStream,
    maps: Option<&MapPlan>,
    own_userns: bool,
    old_mask: SigSet,
    filter: Option<&Filter>,
) -> Result<std::convert::Infallible, Failure> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).ctx(|| "prctl(PR_SET_PDEATHSIG)".into())?;
    match recv(sock) {
        Some(Msg::Go) => {}
        // The launcher is gone (or changed its mind): nothing to do.
        _ => sys::exit_now(EXIT_LAUNCHER),
    }
    if own_userns {
        // Our host uid is not mapped in our own namespace, and the kernel refuses to create
        // files (mount points, /dev entries) for an unmapped fsuid: become its root first.
        nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
            .ctx(|| "setresgid(0) in the container's user namespace".into())?;
        nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
            .ctx(|| "setresuid(0) in the container's user namespace".into())?;
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).ctx(|| "prctl(PR_SET_PDEATHSIG)".into())?;
    }
    // The launcher has put us in our cgroup: make it the root of our cgroup view.
    nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
        .ctx(|| "creating a cgroup namespace".into())?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .ctx(|| "making / private in the container".into())?;
    Plan::new(root, cfg.net, &cfg.binds)
        .unmasked(cfg.privileged)
        .apply()?;
    nix::unistd::sethostname(&cfg.hostname).ctx(|| "sethostname".into())?;
    if cfg.net == NetMode::None {
        sys::interface_up(c"lo").ctx(|| "bringing up lo".into())?;
    }
    nix::unistd::setsid().ctx(|| "setsid".into())?;
    // The root is in place: names resolve against the container's own files.
    let user = cfg
        .user
        .resolve(
            read_small("/etc/passwd").as_deref(),
            read_small("/etc/group").as_deref(),
        )
        .map_err(|e| e.context(format!("{} {}", cfg.user_origin, cfg.user)))?;
    if let Some(m) = maps {
        super::user::check_mapped(m, user.uid, user.gid, cfg.user_origin)?;
    }
    if cfg.create_cwd {
        make_workdir(&cfg.cwd, user.uid, user.gid)?;
    }
    if cfg.tty {
        let master = terminal::container_terminal(user.uid, user.gid)?;
        send_with_fd(sock, &Msg::Console, master.as_fd())?;
    }

    let env = environment(cfg, &user);
    capabilities::drop_bounding(&cfg.caps)?;
    let (uid, gid) = (Uid::from_raw(user.uid), Gid::from_raw(user.gid));
    if maps.is_none_or(|m| m.setgroups_allowed()) {
        let groups: Vec<Gid> = user.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        nix::unistd::setgroups(&groups).ctx(|| "setgroups".into())?;
    }
    nix::unistd::setresgid(gid, gid, gid).ctx(|| format!("setresgid({gid})"))?;
    nix::unistd::setresuid(uid, uid, uid).ctx(|| format!("setresuid({uid})"))?;
    if uid.is_root() {
        capabilities::restrict_to(&cfg.caps)?;
    }
    nix::unistd::chdir(&cfg.cwd).ctx(|| {
        format!(
            "working directory {}: cannot change into it (--workdir must name a directory \
                 the container has)",
            cfg.cwd.display()
        )
    })?;
    nix::sys::prctl::set_no_new_privs().ctx(|| "prctl(PR_SET_NO_NEW_PRIVS)".into())?;
    // setresuid cleared it; the launcher may have died meanwhile, in which case we must go.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).ctx(|| "prctl(PR_SET_PDEATHSIG)".into())?;
    if nix::unistd::getppid().as_raw() != 0 {
        // Our parent is outside our pid namespace, so getppid() is 0 while it lives; anything
        // else means we were reparented.
        sys::exit_now(EXIT_LAUNCHER);
    }

    // Last: from here on the command's rules apply to every call, ours included.
    if let Some(f) = filter {
        f.load()?;
    }
    // Dispositions set to "ignore" survive exec; a launcher started in the background (or under
    // nohup) would otherwise hand the command signals it cannot even trap.
    for s in signals::FORWARDED.into_iter().chain([
        Signal::SIGPIPE,
        Signal::SIGTSTP,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
    ]) {
        let _ = sys::default_signal(s);
    }
    let argv: Vec<CString> = cfg.command.iter().map(cstring).collect::<Result<_, _>>()?;
    if cfg.init {
        sys::install_noop_handlers(&signals::FORWARDED)
            .ctx(|| "installing signal handlers".into())?;
        signals::block(&signals::wait_set()).ctx(|| "blocking signals".into())?;
        match sys::fork().ctx(|| "fork".into())? {
            ForkResult::Child => {
                for s in signals::FORWARDED {
                    let _ = sys::default_signal(s);
                }
                Err(exec(&argv, &env, &old_mask))
            }
            ForkResult::Parent { child } => {
                // The child's copy reports exec errors; ours must not hold the launcher's read.
                let _ = nix::unistd::close(sock.as_raw_fd());
                sys::exit_now(signals::reap_and_forward(child))
            }
        }
    } else {
        Err(exec(&argv, &env, &old_mask))
    }
}

fn cstring(s: &OsString) -> Result<CString, Failure> {
    CString::new(s.as_bytes()).map_err(|_| Error::msg(format!("{s:?} contains a NUL byte")).into())
}

/// The text of a small regular file of the container (`None` when missing or not a plain
/// file: a fifo planted at /etc/passwd must not block the init).
fn read_small(path: &str) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut s = String::new();
    f.take(16 << 20).read_to_string(&mut s).ok()?;
    Some(s)
}

/// Creates an image's working directory when the root lacks it, owned by the command's user,
/// as podman does.
fn make_workdir(dir: &Path, uid: u32, gid: u32) -> Result<(), Failure> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(Error::msg(format!(
                "the image's working directory {} exists in the root but is not a directory",
                dir.display()
            ))
            .into())
        }
        Err(_) => {}
    }
    std::fs::create_dir_all(dir)
        .and_then(|()| std::os::unix::fs::chown(dir, Some(uid), Some(gid)))
        .map_err(|e| {
            Error::msg(format!(
                "creating the image's working directory {}: {e} (a --read-only root cannot \
                 get it: give --workdir DIR of a directory the image has)",
                dir.display()
            ))
            .into()
        })
}

fn environment(cfg: &LaunchConfig, user: &super::user::Resolved) -> Vec<CString> {
    let fallback = if user.uid == 0 { "/root" } else { "/" };
    let home = user.home.as_deref().unwrap_or(fallback);
    let mut vars: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOME".into(), home.into()),
        ("HOSTNAME".into(), cfg.hostname.clone()),
        ("container".into(), "unionfs-run".into()),
    ];
    if let Ok(t) = std::env::var("TERM") {
        vars.push(("TERM".into(), t));
    }
    for (k, v) in &cfg.env {
        vars.retain(|(kk, _)| kk != k);
        vars.push((k.clone(), v.clone()));
    }
    vars.into_iter()
        .filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok())
        .collect()
}

/// Exec the command with `env`, searching the container's PATH; returns only on failure.
fn exec(argv: &[CString], env: &[CString], mask: &SigSet) -> Failure {
    if let Err(e) = signals::set_mask(mask) {
        return Error::msg(format!("restoring the signal mask: {}", e.desc())).into();
    }
    let path = env
        .iter()
        .find_map(|e| e.to_bytes().strip_prefix(b"PATH=").map(|p| p.to_vec()))
        .unwrap_or_default();
    let name = argv[0].to_bytes();
    let candidates: Vec<CString> = if name.contains(&b'/') {
        vec![argv[0].clone()]
    } else {
        path.split(|b| *b == b':')
            .filter(|d| !d.is_empty())
            .filter_map(|d| CString::new([d, b"/", name].concat()).ok())
            .collect()
    };
    let mut last = Errno::ENOENT;
    for c in &candidates {
        match nix::unistd::execve(c, argv, env) {
            Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => {}
            Err(e) => last = e,
            Ok(never) => match never {},
        }
    }
    let cmd = argv[0].to_string_lossy();
    if last == Errno::ENOENT {
        Failure {
            code: EXIT_NOT_FOUND,
            error: Error::msg(format!(
                "{cmd}: command not found in the container (searched PATH of the container root)"
            )),
        }
    } else {
        Failure {
            code: EXIT_CANNOT_EXEC,
            error: Error::msg(format!("{cmd}: cannot execute: {}", last.desc())),
        }
    }
}
