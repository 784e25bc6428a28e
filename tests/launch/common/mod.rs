//! Shared helpers for the launcher's integration tests: privilege checks, example layers,
//! running `unionfs-run` with a timeout, and cleanup guards.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub mod oci_image;

/// The launcher binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_unionfs-run");

/// Whether requirements are mandatory (CI): then a missing one fails instead of skipping.
pub fn required() -> bool {
    std::env::var("UNIONFS_REQUIRE_FUSE").is_ok_and(|v| v == "1")
}

/// Skip (return false, with a printed reason) or fail when `ok` is false.
pub fn require(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if required() {
        panic!("UNIONFS_REQUIRE_FUSE=1 but {what}");
    }
    eprintln!("SKIPPED: {what} (set UNIONFS_REQUIRE_FUSE=1 to make this a failure)");
    false
}

/// Root with /dev/fuse and a cgroup v1 memory hierarchy: what these tests need.
pub fn require_root() -> bool {
    require(nix::unistd::geteuid().is_root(), "this test needs root")
        && require(Path::new("/dev/fuse").exists(), "this test needs /dev/fuse")
}

/// A scratch directory removed on drop (after unmounting nothing: launches clean up).
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new empty directory under the cargo test tmpdir, world-traversable.
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("launch-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(p)
    }

    /// A path inside.
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The example layers (built once per machine by scripts/make-example-layers.sh, cached under
/// the cargo target dir). Returns the directory holding base/, app/ and whiteout/.
pub fn example_layers() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("launch-example-layers");
        let lock = std::fs::File::create(dir.with_extension("lock")).unwrap();
        // Test binaries may run in parallel (nextest): one builds, the others wait.
        let _l = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
        if !dir.join("base/bin/busybox").exists() {
            let script = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/make-example-layers.sh"
            );
            let out = Command::new("sh").arg(script).arg(&dir).output().unwrap();
            assert!(
                out.status.success(),
                "building example layers failed (needs apt-get download busybox-static): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Leave them world-readable for the rootless tests.
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
        dir
    })
    .clone()
}

/// A private copy of the base layer (for tests that use the bind stand-in and write).
pub fn base_lower() -> PathBuf {
    example_layers().join("base")
}

/// Arguments choosing the container root: none, i.e. the FUSE union (the product).
///
/// `--root-source bind` (a plain bind of the topmost lower) exists for development only; tests
/// that are about cgroups as an unprivileged user use it so they need no /dev/fuse access.
pub fn root_args() -> Vec<String> {
    Vec::new()
}

/// Fail (CI) or skip when the FUSE union cannot serve a container root here.
pub fn require_union() -> bool {
    require(
        Path::new("/dev/fuse").exists(),
        "the FUSE union needs /dev/fuse",
    )
}

/// First subordinate id of the unprivileged user in [`Ranges`].
pub const SUBID: u32 = 200000;

/// Launches as uid 65534 with subordinate id ranges (through the setuid helpers newuidmap and
/// newgidmap): `SUBID..SUBID+65536` in /etc/subuid and /etc/subgid, and a 0666 /dev/fuse,
/// all bind-mounted in a private mount namespace, so the host's files stay untouched.
pub struct Ranges {
    dir: TempDir,
    node: TempDir,
}

impl Ranges {
    /// `None` (after printing why, or failing under `UNIONFS_REQUIRE_FUSE=1`) when this
    /// machine lacks root, /dev/fuse, newuidmap/newgidmap or /etc/subuid and /etc/subgid
    /// (bind mounts need existing targets; creating them would change the host's /etc).
    pub fn new(tag: &str) -> Option<Ranges> {
        let helpers = Command::new("newuidmap").output().is_ok()
            && Command::new("newgidmap").output().is_ok();
        let files = Path::new("/etc/subuid").exists() && Path::new("/etc/subgid").exists();
        if !require_root()
            || !require_union()
            || !require(
                helpers,
                "newuidmap/newgidmap are needed (Debian package uidmap)",
            )
            || !require(
                files,
                "/etc/subuid and /etc/subgid must exist (Debian: installed with uidmap/login)",
            )
        {
            return None;
        }
        let dir = TempDir::new(&format!("subid-{tag}"));
        let line = |names: &[&str]| {
            names
                .iter()
                .map(|n| format!("{n}:{SUBID}:65536\n"))
                .collect::<String>()
        };
        std::fs::write(dir.join("subuid"), line(&["nobody", "65534"])).unwrap();
        std::fs::write(dir.join("subgid"), line(&["nogroup", "nobody", "65534"])).unwrap();
        // mknod needs a file system without nodev: the system temp dir.
        let node =
            std::env::temp_dir().join(format!("unionfs-fuse-node-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&node);
        std::fs::create_dir_all(&node).unwrap();
        Some(Ranges {
            dir,
            node: TempDir(node),
        })
    }

    /// The id map arguments of the user: container root is the user, 1.. its subordinate ids.
    pub fn map_args() -> Vec<String> {
        args(&[
            "--uid-map",
            "0:65534:1",
            "--uid-map",
            &format!("1:{SUBID}:65536"),
            "--gid-map",
            "0:65534:1",
            "--gid-map",
            &format!("1:{SUBID}:65536"),
        ])
    }

    /// `unionfs-run ARGS` as uid 65534 (30 s at most).
    pub fn run(&self, a: &[String]) -> Outcome {
        self.run_env(&[], a)
    }

    /// [`Ranges::run`] with the variables `env` set for the launcher.
    pub fn run_env(&self, env: &[(&str, &Path)], a: &[String]) -> Outcome {
        let script = "set -e; mount --bind \"$T/subuid\" /etc/subuid; \
                      mount --bind \"$T/subgid\" /etc/subgid; \
                      rm -f \"$NODE/fuse\"; mknod -m 0666 \"$NODE/fuse\" c 10 229; \
                      mount --bind \"$NODE/fuse\" /dev/fuse; \
                      exec setpriv --reuid=65534 --regid=65534 --clear-groups \"$@\"";
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            BIN,
        ])
        .args(a)
        .env("T", &self.dir.0)
        .env("NODE", &self.node.0)
        .envs(env.iter().map(|(k, v)| (k, v.as_os_str())));
        spawn_cmd(&mut cmd).finish(Duration::from_secs(30))
    }
}

/// The result of one launch.
#[derive(Debug)]
pub struct Outcome {
    /// Exit code (128+signal if the launcher itself was killed).
    pub code: i32,
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
}

/// A running launcher, killed by pid (SIGKILL) and reaped if dropped while alive.
pub struct Running {
    /// The launcher process.
    pub child: Child,
    done: bool,
}

impl Running {
    /// The launcher's pid.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// The container init's pid (a child of the launcher), waiting for it to exist.
    pub fn init_pid(&self) -> Pid {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for p in children(self.pid()) {
                // The holder runs our binary too; the init is the one in another pid namespace.
                if ns_of(p, "pid") != ns_of(self.pid(), "pid") {
                    return p;
                }
            }
            assert!(Instant::now() < deadline, "container init never appeared");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Read one line of the command's stdout (without the newline); panics at EOF.
    pub fn read_line(&mut self) -> String {
        let out = self.child.stdout.as_mut().expect("stdout taken");
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        loop {
            // A missing line must fail the test, not hang it.
            use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
            use std::os::fd::AsFd;
            let mut fds = [PollFd::new(out.as_fd(), PollFlags::POLLIN)];
            let ready = poll(&mut fds, PollTimeout::from(20_000u16)).unwrap();
            assert!(
                ready == 1,
                "no output from the command for 20 s after {:?}",
                String::from_utf8_lossy(&line)
            );
            let n = out.read(&mut b).unwrap();
            assert!(
                n == 1,
                "EOF from the command after {:?}",
                String::from_utf8_lossy(&line)
            );
            if b[0] == b'\n' {
                return String::from_utf8_lossy(&line).into_owned();
            }
            line.push(b[0]);
        }
    }

    /// Write one line to the command's stdin.
    pub fn write_line(&mut self, l: &str) {
        use std::io::Write;
        let i = self.child.stdin.as_mut().expect("stdin taken");
        i.write_all(format!("{l}\n").as_bytes()).unwrap();
    }

    /// Send a signal to the launcher.
    pub fn signal(&self, s: Signal) {
        kill(self.pid(), s).unwrap();
    }

    /// Wait (with a timeout) and collect output.
    pub fn finish(mut self, timeout: Duration) -> Outcome {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = kill(self.pid(), Signal::SIGKILL);
                let _ = self.child.wait();
                self.done = true;
                panic!("launcher did not finish within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        self.done = true;
        let mut stdout = String::new();
        let mut stderr = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            o.read_to_string(&mut stdout).unwrap();
        }
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut stderr).unwrap();
        }
        use std::os::unix::process::ExitStatusExt;
        let code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        Outcome {
            code,
            stdout,
            stderr,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.done {
            let _ = kill(self.pid(), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Start `unionfs-run ARGS` with output captured and stdin a pipe.
pub fn spawn(args: &[String]) -> Running {
    spawn_cmd(Command::new(BIN).args(args))
}

/// Start a prepared command with output captured and stdin a pipe.
pub fn spawn_cmd(cmd: &mut Command) -> Running {
    let child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Running { child, done: false }
}

/// Run `unionfs-run ARGS` to completion (30 s limit).
pub fn run(args: &[String]) -> Outcome {
    spawn(args).finish(Duration::from_secs(30))
}

/// Build an argument vector from string slices.
pub fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Direct children of `pid`.
pub fn children(pid: Pid) -> Vec<Pid> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            let c = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(
                c.split_whitespace()
                    .filter_map(|s| s.parse().ok())
                    .map(Pid::from_raw),
            );
        }
    }
    out
}

/// All descendants of `pid`.
pub fn descendants(pid: Pid) -> Vec<Pid> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children(p) {
            out.push(c);
            todo.push(c);
        }
    }
    out
}

/// The namespace link of `pid` for `ns` (e.g. "pid:[4026531836]").
pub fn ns_of(pid: Pid, ns: &str) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).ok()
}

/// Whether `pid` is alive (and not a zombie).
pub fn alive(pid: Pid) -> bool {
    unionfs_harness::impls::alive(pid.as_raw())
}

/// Mount points on the host that a launcher run could have left (staging dirs, unions).
pub fn leftover_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("unionfs-run"))
        .map(String::from)
        .collect()
}

/// Cgroups of dead launchers (our naming scheme) in every hierarchy.
pub fn stale_cgroups() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for ctrl in ["memory", "pids", "cpu", "freezer", "unified"] {
        let d = Path::new("/sys/fs/cgroup").join(ctrl);
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if unionfs::launch::instance::is_stale(&n) {
                    out.push(e.path());
                }
            }
        }
    }
    out
}

/// Staging directories of dead launchers.
pub fn stale_staging() -> Vec<PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .map(|rd| {
            rd.flatten()
                .filter(|e| unionfs::launch::instance::is_stale(&e.file_name().to_string_lossy()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Wait until `f` holds (or `timeout` passes); returns whether it held.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}
