//! The launcher's processes and the order of operations (docs/ARCHITECTURE.md, "One launch"), with each phase a type:
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

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use super::cgroup::{self, CgroupGuard};
use super::config::LaunchConfig;
use super::exit::{Failure, EXIT_LAUNCHER};
use super::holder::{holder_main, HolderJob};
use super::idmap::MapPlan;
use super::namespaces::UsernsOwner;
use super::protocol::{recv, recv_with_fd, send, Msg};
use super::reaper::Reaper;
use super::root::{provider_for, RootProvider};
use super::seccomp::{Filter, Profile};
use super::staging::Staging;
use super::terminal::{self, RawTerminal, Relay};
use super::{instance, namespaces, signals, Context, Error};

pub use super::exit::{EXIT_CANNOT_EXEC, EXIT_NOT_FOUND};
use crate::sys;

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

// ---------------------------------------------------------------------------------------------
// Small pieces shared by the phases.

/// A child process that is killed (by pid) and reaped if dropped before it was waited for.
#[derive(Debug)]
pub(super) struct ChildGuard {
    pid: Pid,
    reaped: bool,
}

impl ChildGuard {
    fn new(pid: Pid) -> Self {
        ChildGuard { pid, reaped: false }
    }

    /// Wait up to `timeout` for the child to exit on its own, then SIGKILL it.
    fn finish(&mut self, timeout: Duration) -> Option<WaitStatus> {
        let start = Instant::now();
        let deadline = start + timeout;
        loop {
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                // A holder ends within a few ms of being told: look often at first (each 5 ms
                // sleep was a fifth of a launch's wall time), then back off.
                Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                    std::thread::sleep(if start.elapsed() < Duration::from_millis(50) {
                        Duration::from_micros(200)
                    } else {
                        Duration::from_millis(5)
                    })
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

/// Says so when a SIGKILLed command was killed by the memory limit: a bare exit 137 looks like
/// a crash or an outside `kill -9`, and the fix (a larger `--memory`) is not obvious from it.
fn explain_oom_kill(p: &Prepared) {
    let (Some(limit), Some(cg)) = (p.cfg.limits.memory, &p.cgroup) else {
        return;
    };
    if cg.backend().oom_kills(cg.name()) > 0 {
        eprintln!(
            "unionfs-run: the command was killed by the memory limit (--memory {} MiB): the \
             kernel's out-of-memory killer ended it (exit 137); give it more with a larger \
             --memory",
            limit >> 20
        );
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
    filter: Option<Filter>,
    reaper: Reaper,
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
        // Read and compiled now: a broken profile stops the launch before anything exists.
        let filter = match Profile::for_choice(&cfg.seccomp)? {
            Some(p) => Some(p.compile(&cfg.caps)?),
            None => None,
        };

        let maps = cfg.needs_userns().then(|| {
            MapPlan::decide(
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
                &cfg.uid_maps,
                &cfg.gid_maps,
            )
        });
        if let (Some(m), Some((uid, gid))) = (&maps, cfg.user.numeric()) {
            // Known without the root's files: refuse before anything starts.
            super::user::check_mapped(m, uid, gid, cfg.user_origin)?;
        }

        Staging::remove_stale();
        let name = instance::own_name();
        let backend = Self::cgroup_backend(&cfg)?;
        // Before the cgroup and the staging dir exist: whenever the launcher dies from here
        // on, the reaper removes them.
        let reaper = Reaper::start(backend.as_deref(), &name, &Staging::path(&name))?;
        let cgroup = match backend {
            Some(b) => Some(CgroupGuard::create(b, &name, &cfg.limits)?),
            None => None,
        };
        let staging = Staging::create(&name)?;
        // Block the signals we forward before any child exists, so none is lost between the
        // fork and the forwarding loop; children restore the old mask before they exec.
        let mut blocked = signals::wait_set();
        if cfg.tty {
            // Window size changes of the host terminal are passed on, not taken by default.
            blocked.add(Signal::SIGWINCH);
        }
        let old_mask = signals::block(&blocked).ctx(|| "blocking signals".into())?;
        let userns = namespaces::userns_owner(&cfg);
        Ok(Prepared {
            cfg,
            provider,
            maps,
            userns,
            cgroup,
            staging,
            old_mask,
            filter,
            reaper,
        })
    }

    /// The cgroup backend to use, after the warnings about limits it cannot enforce.
    fn cgroup_backend(cfg: &LaunchConfig) -> Result<Option<Box<dyn cgroup::Backend>>, Error> {
        let layout = cgroup::detect();
        let Some(backend) = cgroup::backend_for(cfg.cgroup, &layout)? else {
            if cfg.limits.any() {
                eprintln!(
                    "unionfs-run: warning: no cgroup hierarchy is usable here, so --memory/--pids/--cpus are not enforced"
                );
            }
            return Ok(None);
        };
        if let Some(why) = backend.unusable_reason(&cfg.limits) {
            if cfg.rootless {
                if cfg.limits.any() {
                    eprintln!(
                        "unionfs-run: warning: running WITHOUT resource limits: {why}. {}",
                        backend.fix_hint()
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
        Ok(Some(backend))
    }

    /// Fork the holder, write its id maps, and wait until it has cloned the init and mounted
    /// the root.
    pub fn start_holder(self) -> Result<HolderReady, Failure> {
        let (mut p_h, h_h) = UnixStream::pair().ctx(|| "socketpair".into())?;
        let (p_i, i_i) = UnixStream::pair().ctx(|| "socketpair".into())?;
        let launcher = nix::unistd::getpid();
        match sys::fork().ctx(|| "fork".into())? {
            ForkResult::Child => {
                drop(p_h);
                drop(p_i);
                let job = HolderJob {
                    cfg: &self.cfg,
                    provider: self.provider.as_ref(),
                    maps: self.maps.as_ref(),
                    userns: self.userns,
                    staging: &self.staging,
                    old_mask: self.old_mask,
                    filter: self.filter.as_ref(),
                    reaper_fd: self.reaper.raw_fd(),
                };
                holder_main(&job, launcher, h_h, i_i.into())
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
                    match recv(&mut p_h) {
                        Some(Msg::Unshared) => {}
                        Some(m) => return Err(m.unexpected("the holder's user namespace").into()),
                        None => return Err(holder_gone(&mut holder)),
                    }
                    plan.apply(child)
                        .map_err(|e| e.context("writing the user namespace id maps"))?;
                    send(&mut p_h, &Msg::Mapped)?;
                }
                let init = match recv(&mut p_h) {
                    Some(Msg::Ready(pid)) => ChildGuard::new(Pid::from_raw(pid)),
                    Some(m) => return Err(m.unexpected("the container root").into()),
                    None => return Err(holder_gone(&mut holder)),
                };
                Ok(HolderReady {
                    prepared: self,
                    holder,
                    init,
                    to_holder: p_h,
                    to_init: p_i,
                    console: None,
                    raw: None,
                })
            }
        }
    }
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
    /// `-t`: the master of the container's terminal.
    console: Option<OwnedFd>,
    /// `-t`: the host terminal in raw mode, restored when this is dropped (every way out).
    raw: Option<RawTerminal>,
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
        send(&mut self.to_init, &Msg::Go)?;
        if self.prepared.cfg.tty {
            match recv_with_fd(&mut self.to_init) {
                Some((Msg::Console, Some(master))) => {
                    terminal::copy_window_size(master.as_fd());
                    self.console = Some(master);
                    self.raw = RawTerminal::enter()?;
                }
                Some((m, _)) => {
                    let (code, error) = match m {
                        Msg::Failed { code, msg } => (code, Error::msg(msg)),
                        other => (EXIT_LAUNCHER, other.unexpected("the container's terminal")),
                    };
                    self.init.finish(Duration::from_secs(5));
                    return Err(Failure { code, error });
                }
                None => {
                    let st = self.init.finish(Duration::from_secs(5));
                    return Err(Error::msg(format!(
                        "the container init exited before its terminal was set up ({st:?})"
                    ))
                    .into());
                }
            }
        }
        // The init's socket end is close-on-exec: EOF means the exec happened.
        if let Some(m) = recv(&mut self.to_init) {
            let (code, error) = match m {
                Msg::Failed { code, msg } => (code, Error::msg(msg)),
                other => (EXIT_LAUNCHER, other.unexpected("the command's exec")),
            };
            self.init.finish(Duration::from_secs(5));
            return Err(Failure { code, error });
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
        let mut relay = r
            .console
            .as_ref()
            .map(|_| Relay::new(r.prepared.cfg.interactive));
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
            let sigs = match &mut relay {
                Some(relay) => relay.wait(r.console.as_ref()),
                None => set.wait().into_iter().collect(),
            };
            for sig in sigs {
                match sig {
                    Signal::SIGCHLD => {}
                    Signal::SIGWINCH => {
                        if let Some(m) = &r.console {
                            terminal::copy_window_size(m.as_fd());
                        }
                    }
                    sig => {
                        let _ = kill(r.init.pid, sig);
                    }
                }
            }
        };
        if let (Some(relay), Some(m)) = (&mut relay, &r.console) {
            relay.drain(m.as_fd());
        }
        if code == 128 + Signal::SIGKILL as i32 {
            explain_oom_kill(&r.prepared);
        }
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
            console,
            raw,
        } = self.ready;
        drop(console);
        drop(raw);
        let cg = prepared.cgroup.take().map(|c| c.teardown());
        // Closing the socket tells the holder to unmount and exit.
        drop(to_holder);
        holder.finish(Duration::from_secs(10));
        let _ = signals::set_mask(&prepared.old_mask);
        cg.unwrap_or(Ok(()))
    }
}
