//! The launcher's processes and the order of operations (DESIGN.md §5), with each phase a type:
//! [`Prepared`] → [`HolderReady`] → [`Running`] → exit code.
//!
//! Processes: the launcher P (this process), the holder H (forked from P; owns the user
//! namespace when rootless and a private mount namespace; mounts and serves the root), and the
//! container init I (cloned by H into new mount/pid/uts/ipc(/net) namespaces, but with
//! CLONE_PARENT so P is its parent: P reaps it and its parent-death signal follows P).
//!
//! Why I is cloned *before* the root is mounted: serving FUSE starts threads in H, and a process
//! that clones after threads exist may only run raw syscalls in the child (another thread may
//! hold the allocator's lock). I's setup is long (mounts, pivot_root, capabilities, exec with an
//! environment), so H clones I while still single-threaded. H first mounts a tmpfs on the
//! staging directory and makes it a *shared* mount; I's mount namespace is a copy, so its
//! staging mount is a peer and the root mounted later by H propagates into it. I waits on a
//! socket until P says "go" (after the root is live and I sits in its cgroup).

use std::ffi::{CString, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Gid, Pid, Uid};

use super::cgroup::{self, CgroupGuard};
use super::config::{LaunchConfig, NetMode};
use super::idmap::{IdKind, MapPlan};
use super::namespaces::UsernsOwner;
use super::root::{provider_for, RootProvider};
use super::rootfs::Plan;
use super::{capabilities, instance, namespaces, signals, Context, Error};
use crate::sys::launch as sys;

/// Exit code for a failure of the launcher itself (as docker/podman use it).
pub const EXIT_LAUNCHER: i32 = 125;
/// Exit code when the command exists but cannot be executed.
pub const EXIT_CANNOT_EXEC: i32 = 126;
/// Exit code when the command is not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// Run `cfg` to completion and return the exit code for the launcher (errors are printed).
pub fn run(cfg: LaunchConfig) -> i32 {
    let result = Prepared::new(cfg)
        .and_then(Prepared::start_holder)
        .and_then(HolderReady::release);
    match result {
        Ok(running) => running.wait(),
        Err(Failure { code, error }) => {
            eprintln!("unionfs-run: {error}");
            code
        }
    }
}

/// An error together with the exit code the launcher should give for it.
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: i32,
    /// What went wrong.
    pub error: Error,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure {
            code: EXIT_LAUNCHER,
            error,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small pieces shared by the phases.

/// A child process that is killed (by pid) and reaped if dropped before it was waited for.
#[derive(Debug)]
struct ChildGuard {
    pid: Pid,
    reaped: bool,
}

impl ChildGuard {
    fn new(pid: Pid) -> Self {
        ChildGuard { pid, reaped: false }
    }

    /// Wait up to `timeout` for the child to exit on its own, then SIGKILL it.
    fn finish(&mut self, timeout: Duration) -> Option<WaitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Ok(WaitStatus::StillAlive) => {
                    let _ = kill(self.pid, Signal::SIGKILL);
                    let st = waitpid(self.pid, None).ok();
                    self.reaped = true;
                    return st;
                }
                Ok(st) => {
                    self.reaped = true;
                    return Some(st);
                }
                Err(Errno::EINTR) => {}
                Err(_) => {
                    self.reaped = true;
                    return None;
                }
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = kill(self.pid, Signal::SIGKILL);
            let _ = waitpid(self.pid, None);
        }
    }
}

/// The per-run staging directory on the host: an empty directory the holder mounts a tmpfs on
/// in its private mount namespace. Removed on drop; leftovers of killed launchers are removed
/// by the next run.
#[derive(Debug)]
struct Staging(PathBuf);

impl Staging {
    fn base() -> PathBuf {
        std::env::temp_dir()
    }

    fn create(name: &str) -> Result<Self, Error> {
        use std::os::unix::fs::DirBuilderExt;
        let p = Self::base().join(name);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&p)
            .ctx(|| format!("creating staging directory {}", p.display()))?;
        Ok(Staging(p))
    }

    fn remove_stale() {
        let Ok(rd) = std::fs::read_dir(Self::base()) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(instance::PREFIX) && instance::is_stale(&name) {
                // Only empty directories go: anything mounted there lived in a dead namespace.
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }

    fn root(&self) -> PathBuf {
        self.0.join("root")
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Send one line on a sync socket.
fn send(sock: &mut UnixStream, msg: &str) -> Result<(), Error> {
    let mut line = msg.replace('\n', " ");
    line.push('\n');
    sock.write_all(line.as_bytes())
        .ctx(|| "talking to a launcher process".to_string())
}

/// Read one line from a sync socket; `None` on EOF (the peer exited or exec'd).
fn recv(sock: &mut UnixStream) -> Option<String> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match sock.read(&mut b) {
            Ok(0) => {
                return if out.is_empty() {
                    None
                } else {
                    Some(String::from_utf8_lossy(&out).into())
                }
            }
            Ok(_) if b[0] == b'\n' => return Some(String::from_utf8_lossy(&out).into()),
            Ok(_) => out.push(b[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Phase 1: the launcher validated everything and created the host-side objects.

/// Validated configuration, staging directory, cgroup, id-map plan; signals blocked.
#[derive(Debug)]
pub struct Prepared {
    cfg: LaunchConfig,
    provider: Box<dyn RootProvider>,
    maps: Option<MapPlan>,
    userns: Option<UsernsOwner>,
    cgroup: Option<CgroupGuard>,
    staging: Staging,
    old_mask: SigSet,
}

impl Prepared {
    /// Check the configuration and the host; create the staging dir and the cgroup.
    pub fn new(mut cfg: LaunchConfig) -> Result<Self, Failure> {
        if !nix::unistd::geteuid().is_root() {
            cfg.rootless = true;
        }
        cfg.validate()?;
        for l in &cfg.lowers {
            if !l.is_dir() {
                return Err(Error::msg(format!(
                    "lower layer {} is not a directory (check the path; lowers are listed topmost first, separated by ':')",
                    l.display()
                ))
                .into());
            }
        }
        if let Some(u) = &cfg.upper {
            if !u.is_dir() {
                return Err(Error::msg(format!(
                    "upper layer {} is not a directory: create it (mkdir -p) or use --tmp-upper",
                    u.display()
                ))
                .into());
            }
        }
        for b in &cfg.binds {
            if std::fs::metadata(&b.src).is_err() {
                return Err(Error::msg(format!(
                    "--bind source {} does not exist",
                    b.src.display()
                ))
                .into());
            }
        }
        let provider = provider_for(&cfg);
        provider.preflight()?;

        let maps = cfg.needs_userns().then(|| {
            MapPlan::decide(
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
                &cfg.uid_maps,
                &cfg.gid_maps,
            )
        });
        if let Some(m) = &maps {
            if !m.maps(IdKind::Uid, cfg.user.uid) || !m.maps(IdKind::Gid, cfg.user.gid) {
                return Err(Error::msg(format!(
                    "--user {}:{} is not mapped in the container's user namespace (rootless runs map only \
                     container id 0 by default); add ranges, e.g. --uid-map 0:{}:1 --uid-map 1:100000:65536 \
                     (and the same for --gid-map), with ranges granted in /etc/subuid and /etc/subgid",
                    cfg.user.uid,
                    cfg.user.gid,
                    nix::unistd::geteuid()
                ))
                .into());
            }
        }

        Staging::remove_stale();
        let name = instance::own_name();
        let cgroup = Self::make_cgroup(&cfg, &name)?;
        let staging = Staging::create(&name)?;
        // Block the signals we forward before any child exists, so none is lost between the
        // fork and the forwarding loop; children restore the old mask before they exec.
        let old_mask = signals::block(&signals::wait_set()).ctx(|| "blocking signals".into())?;
        let userns = namespaces::userns_owner(&cfg);
        Ok(Prepared {
            cfg,
            provider,
            maps,
            userns,
            cgroup,
            staging,
            old_mask,
        })
    }

    fn make_cgroup(cfg: &LaunchConfig, name: &str) -> Result<Option<CgroupGuard>, Error> {
        let layout = cgroup::detect();
        let Some(backend) = cgroup::backend_for(cfg.cgroup, &layout)? else {
            if cfg.limits.any() {
                eprintln!(
                    "unionfs-run: warning: no cgroup hierarchy is usable here, so --memory/--pids/--cpus are not enforced"
                );
            }
            return Ok(None);
        };
        if let Some(why) = backend.unusable_reason() {
            if cfg.rootless {
                if cfg.limits.any() {
                    eprintln!(
                        "unionfs-run: warning: running WITHOUT resource limits: {why}. Rootless limits need a \
                         cgroup subtree delegated to your user (e.g. systemd `Delegate=yes`, or run inside \
                         `systemd-run --user --scope -p Delegate=yes`)."
                    );
                }
                return Ok(None);
            }
            return Err(Error::msg(format!(
                "cannot create cgroups with {}: {why}",
                backend.describe()
            )));
        }
        let missing = backend.unsupported(&cfg.limits);
        if !missing.is_empty() {
            eprintln!(
                "unionfs-run: warning: {} cannot enforce {} on this host; running without {}",
                backend.describe(),
                missing.join(", "),
                if missing.len() == 1 { "it" } else { "them" }
            );
        }
        cgroup::remove_stale(backend.as_ref());
        CgroupGuard::create(backend, name, &cfg.limits).map(Some)
    }

    /// Fork the holder, write its id maps, and wait until it has cloned the init and mounted
    /// the root.
    pub fn start_holder(self) -> Result<HolderReady, Failure> {
        let (mut p_h, h_h) = UnixStream::pair().ctx(|| "socketpair".into())?;
        let (p_i, i_i) = UnixStream::pair().ctx(|| "socketpair".into())?;
        let launcher = nix::unistd::getpid();
        match sys::fork_single_threaded().ctx(|| "fork".into())? {
            ForkResult::Child => {
                drop(p_h);
                drop(p_i);
                holder_main(&self, launcher, h_h, i_i.into())
            }
            ForkResult::Parent { child } => {
                drop(h_h);
                drop(i_i);
                let mut holder = ChildGuard::new(child);
                let holder_gone = |holder: &mut ChildGuard| -> Failure {
                    let st = holder.finish(Duration::from_secs(1));
                    Error::msg(format!("the holder process exited during setup ({st:?})")).into()
                };
                if let (Some(plan), Some(UsernsOwner::Holder)) = (&self.maps, self.userns) {
                    match recv(&mut p_h).as_deref() {
                        Some("unshared") => {}
                        Some(m) => return Err(holder_error(m)),
                        None => return Err(holder_gone(&mut holder)),
                    }
                    plan.apply(child)
                        .map_err(|e| e.context("writing the user namespace id maps"))?;
                    send(&mut p_h, "mapped")?;
                }
                let init = match recv(&mut p_h) {
                    Some(m) => match m.strip_prefix("ready ").and_then(|p| p.parse().ok()) {
                        Some(pid) => ChildGuard::new(Pid::from_raw(pid)),
                        None => return Err(holder_error(&m)),
                    },
                    None => return Err(holder_gone(&mut holder)),
                };
                Ok(HolderReady {
                    prepared: self,
                    holder,
                    init,
                    to_holder: p_h,
                    to_init: p_i,
                })
            }
        }
    }
}

fn holder_error(m: &str) -> Failure {
    Error::msg(m.strip_prefix("error ").unwrap_or(m).to_string()).into()
}

// ---------------------------------------------------------------------------------------------
// Phase 2: the holder serves the root; the init waits to be released.

/// The root is mounted and the init exists, parked before any container setup.
#[derive(Debug)]
pub struct HolderReady {
    prepared: Prepared,
    holder: ChildGuard,
    init: ChildGuard,
    to_holder: UnixStream,
    to_init: UnixStream,
}

impl HolderReady {
    /// Put the init in its cgroup, let it set up the container and exec the command.
    pub fn release(mut self) -> Result<Running, Failure> {
        if let (Some(plan), Some(UsernsOwner::Init)) = (&self.prepared.maps, self.prepared.userns) {
            plan.apply(self.init.pid)
                .map_err(|e| e.context("writing the container's id maps"))?;
        }
        if let Some(cg) = &self.prepared.cgroup {
            cg.add(self.init.pid)
                .map_err(|e| e.context("placing the container in its cgroup"))?;
        }
        send(&mut self.to_init, "go")?;
        // The init's socket end is close-on-exec: EOF means the exec happened.
        if let Some(m) = recv(&mut self.to_init) {
            let (code, msg) = m
                .strip_prefix("error ")
                .and_then(|r| r.split_once(' '))
                .and_then(|(c, msg)| Some((c.parse().ok()?, msg.to_string())))
                .unwrap_or((EXIT_LAUNCHER, m.clone()));
            self.init.finish(Duration::from_secs(5));
            return Err(Failure {
                code,
                error: Error::msg(msg),
            });
        }
        Ok(Running { ready: self })
    }
}

// ---------------------------------------------------------------------------------------------
// Phase 3: the command runs; the launcher forwards signals and waits.

/// The command is running.
#[derive(Debug)]
pub struct Running {
    ready: HolderReady,
}

impl Running {
    /// Forward signals until the command ends, tear everything down, return its exit code.
    pub fn wait(mut self) -> i32 {
        let r = &mut self.ready;
        let set = signals::wait_set();
        let code = 'outer: loop {
            loop {
                match waitpid(
                    Pid::from_raw(-1),
                    Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
                ) {
                    Ok(WaitStatus::StillAlive) => break,
                    Ok(st) if st.pid() == Some(r.init.pid) => {
                        r.init.reaped = true;
                        if let Some(c) = signals::exit_code(st) {
                            break 'outer c;
                        }
                    }
                    Ok(st) if st.pid() == Some(r.holder.pid) => {
                        r.holder.reaped = true;
                        eprintln!(
                            "unionfs-run: the holder process serving the container root exited ({st:?}); stopping the container"
                        );
                        let _ = kill(r.init.pid, Signal::SIGKILL);
                    }
                    Ok(_) => {}
                    Err(Errno::EINTR) => {}
                    Err(_) => break,
                }
            }
            match set.wait() {
                Ok(Signal::SIGCHLD) | Err(_) => {}
                Ok(sig) => {
                    let _ = kill(r.init.pid, sig);
                }
            }
        };
        if let Err(e) = self.teardown() {
            eprintln!("unionfs-run: cleanup: {e}");
        }
        code
    }

    fn teardown(self) -> Result<(), Error> {
        let HolderReady {
            mut prepared,
            mut holder,
            init: _,
            to_holder,
            to_init: _,
        } = self.ready;
        let cg = prepared.cgroup.take().map(|c| c.teardown());
        // Closing the socket tells the holder to unmount and exit.
        drop(to_holder);
        holder.finish(Duration::from_secs(10));
        let _ = signals::set_mask(&prepared.old_mask);
        cg.unwrap_or(Ok(()))
    }
}

// ---------------------------------------------------------------------------------------------
// The holder (child of the launcher).

fn holder_main(p: &Prepared, launcher: Pid, mut to_p: UnixStream, init_sock: OwnedFd) -> ! {
    let code = match holder_run(p, launcher, &mut to_p, init_sock) {
        Ok(()) => 0,
        Err(e) => {
            let _ = send(&mut to_p, &format!("error {e}"));
            1
        }
    };
    sys::exit_now(code)
}

fn holder_run(
    p: &Prepared,
    launcher: Pid,
    to_p: &mut UnixStream,
    init_sock: OwnedFd,
) -> Result<(), Error> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).ctx(|| "prctl(PR_SET_PDEATHSIG)".into())?;
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
        send(to_p, "unshared")?;
        match recv(to_p).as_deref() {
            Some("mapped") => {}
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
            init_main(cfg, &root, sock, p.maps.as_ref(), own_userns, old_mask)
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
    send(to_p, &format!("ready {init_pid}"))?;
    // Serve until the launcher closes the socket (or dies: then pdeathsig ends us).
    while recv(to_p).is_some() {}
    drop(guard);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The container init (cloned by the holder, child of the launcher).

fn init_main(
    cfg: &LaunchConfig,
    root: &Path,
    mut sock: UnixStream,
    maps: Option<&MapPlan>,
    own_userns: bool,
    old_mask: SigSet,
) -> isize {
    let (code, e) = match init_run(cfg, root, &mut sock, maps, own_userns, old_mask) {
        Ok(never) => match never {},
        Err(f) => (f.code, f.error),
    };
    let _ = send(&mut sock, &format!("error {code} {e}"));
    sys::exit_now(code)
}

fn init_run(
    cfg: &LaunchConfig,
    root: &Path,
    sock: &mut UnixStream,
    maps: Option<&MapPlan>,
    own_userns: bool,
    old_mask: SigSet,
) -> Result<std::convert::Infallible, Failure> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).ctx(|| "prctl(PR_SET_PDEATHSIG)".into())?;
    match recv(sock).as_deref() {
        Some("go") => {}
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
    Plan::new(root, cfg.net, &cfg.binds).apply()?;
    nix::unistd::sethostname(&cfg.hostname).ctx(|| "sethostname".into())?;
    if cfg.net == NetMode::None {
        sys::interface_up(c"lo").ctx(|| "bringing up lo".into())?;
    }
    nix::unistd::setsid().ctx(|| "setsid".into())?;

    let env = environment(cfg);
    capabilities::drop_bounding()?;
    let (uid, gid) = (Uid::from_raw(cfg.user.uid), Gid::from_raw(cfg.user.gid));
    if maps.is_none_or(|m| m.setgroups_allowed()) {
        nix::unistd::setgroups(&[gid]).ctx(|| "setgroups".into())?;
    }
    nix::unistd::setresgid(gid, gid, gid).ctx(|| format!("setresgid({gid})"))?;
    nix::unistd::setresuid(uid, uid, uid).ctx(|| format!("setresuid({uid})"))?;
    if uid.is_root() {
        capabilities::restrict_to_default()?;
    }
    nix::unistd::chdir(&cfg.cwd)
        .ctx(|| format!("--cwd {}: cannot change into it", cfg.cwd.display()))?;
    nix::sys::prctl::set_no_new_privs().ctx(|| "prctl(PR_SET_NO_NEW_PRIVS)".into())?;
    // setresuid cleared it; the launcher may have died meanwhile, in which case we must go.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).ctx(|| "prctl(PR_SET_PDEATHSIG)".into())?;
    if nix::unistd::getppid().as_raw() != 0 {
        // Our parent is outside our pid namespace, so getppid() is 0 while it lives; anything
        // else means we were reparented.
        sys::exit_now(EXIT_LAUNCHER);
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
        match sys::fork_single_threaded().ctx(|| "fork".into())? {
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

fn environment(cfg: &LaunchConfig) -> Vec<CString> {
    let home = if cfg.user.uid == 0 { "/root" } else { "/" };
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
