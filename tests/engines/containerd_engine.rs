//! A private containerd with unionfs-snapshotter as its proxy snapshotter `unionfs`, for the
//! tests in `containerd.rs`: its configuration, processes, namespace, `ctr` and what its
//! unions cost; everything it started is killed by pid and unmounted when it is dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::common::{diff_snapshots, snapshot, Snapshot};
use crate::image::{busybox_archive, require_umoci};
use crate::launch_common::{alive, descendants, require, require_root, wait_for, TempDir};

pub(crate) const MOUNT_PROGRAM: &str = env!("CARGO_BIN_EXE_unionfs-mount");
pub(crate) const IMAGE: &str = "localhost/busybox:busybox";
/// Containers kept running at once to count what their unions cost.
pub(crate) const RUNNING: usize = 3;

/// unionfs-snapshotter, built by `cargo test --workspace` (or `cargo build --workspace`) next
/// to this test's own binary (another package's binary has no CARGO_BIN_EXE_ here).
pub(crate) fn snapshotter_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("unionfs-snapshotter"))
        .unwrap();
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p unionfs-snapshotter` \
         (scripts/test.sh builds every binary of the workspace first)",
        bin.display()
    );
    bin
}

pub(crate) fn have(prog: &str, arg: &str) -> bool {
    Command::new(prog)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

pub(crate) fn require_containerd() -> bool {
    require_root()
        && require(
            have("containerd", "--version") && have("ctr", "--version"),
            "containerd and ctr are needed (Debian package containerd)",
        )
        && require(
            have("runc", "--version"),
            "runc is needed (Debian package runc)",
        )
        && require(
            Path::new("/sbin/mount.fuse3").exists(),
            "mount.fuse3 is needed (Debian package fuse3)",
        )
        && require_umoci()
}

/// Pids of `/proc`, with their parent.
pub(crate) fn all_processes() -> Vec<(i32, i32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // The command name may hold spaces and parentheses: the fields follow the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        out.push((pid, ppid));
    }
    out
}

pub(crate) fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

pub(crate) fn status_field(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What the unionfs-mount processes in the engine's namespace cost.
#[derive(Debug, Default)]
pub(crate) struct Cost {
    /// unionfs-mount processes: servers, daemons and their watchdogs.
    pub(crate) processes: usize,
    /// Of those, the ones serving unions (not a watchdog: a child of another unionfs-mount).
    pub(crate) serving: usize,
    /// Of the serving ones, `--serve` servers.
    pub(crate) servers: usize,
    pub(crate) threads: u64,
    pub(crate) rss_kib: u64,
}

/// A private containerd with unionfs-snapshotter, torn down on drop.
pub(crate) struct Engine {
    pub(crate) dir: TempDir,
    pub(crate) ns: String,
    pub(crate) shared: bool,
    pub(crate) holder: Child,
    pub(crate) containerd: Option<Child>,
    pub(crate) snapshotter: Option<Child>,
}

impl Engine {
    pub(crate) fn start(tag: &str, shared: bool) -> Engine {
        // Short paths: containerd's and the snapshotter's sockets live here.
        let p = std::env::temp_dir().join(format!("ucd-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.join("bin")).unwrap();
        let dir = TempDir(p);
        std::os::unix::fs::symlink(MOUNT_PROGRAM, dir.join("bin/unionfs-mount")).unwrap();
        std::fs::write(dir.join("config.toml"), config(&dir.0)).unwrap();
        // The holder: a private mount namespace with our unionfs-mount on mount.fuse3's PATH.
        // Copies of other tests' FUSE mounts are dropped at once, so that this namespace does
        // not keep their connections alive after they unmount.
        let script = format!(
            "awk '$3 ~ /^fuse/ {{print $2}}' /proc/self/mounts | while read -r m; do \
               umount -l \"$m\" 2>/dev/null; done; \
             mount --bind {bin} /usr/local/bin && echo ready && exec sleep infinity",
            bin = dir.join("bin").display()
        );
        let mut holder = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let mut e = Engine {
            ns: format!("ut-{tag}-{}", std::process::id()),
            dir,
            shared,
            holder,
            containerd: None,
            snapshotter: None,
        };
        assert_eq!(line.trim(), "ready", "the mount namespace was not set up");
        e.start_snapshotter();
        e.start_containerd();
        e
    }

    pub(crate) fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    pub(crate) fn start_snapshotter(&mut self) {
        let mut c = Command::new(snapshotter_bin());
        c.arg("--address")
            .arg(self.path("s.sock"))
            .arg("--root")
            .arg(self.path("snap"))
            .stderr(std::fs::File::create(self.path("snapshotter.log")).unwrap());
        if !self.shared {
            c.arg("--no-shared");
        }
        self.snapshotter = Some(c.spawn().unwrap());
        self.wait_socket("s.sock", "snapshotter.log");
    }

    pub(crate) fn start_containerd(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("containerd.log"))
            .unwrap();
        let c = Command::new("nsenter")
            .arg("-t")
            .arg(self.holder.id().to_string())
            .arg("-m")
            .arg("containerd")
            .arg("--config")
            .arg(self.path("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.containerd = Some(c);
        self.wait_socket("c.sock", "containerd.log");
    }

    pub(crate) fn wait_socket(&self, sock: &str, log: &str) {
        let ok = wait_for(Duration::from_secs(30), || {
            std::os::unix::net::UnixStream::connect(self.path(sock)).is_ok()
        });
        assert!(ok, "{sock} never answered: {}", self.log(log));
    }

    pub(crate) fn log(&self, name: &str) -> String {
        let s = std::fs::read(self.path(name)).unwrap_or_default();
        let tail = &s[s.len().saturating_sub(4000)..];
        String::from_utf8_lossy(tail).into_owned()
    }

    /// SIGTERM to a child, then wait for it.
    pub(crate) fn terminate(child: Option<Child>) {
        if let Some(mut c) = child {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    /// Restarts the snapshotter and waits until containerd has reconnected (gRPC retries a
    /// refused connection after a backoff of a second or more).
    pub(crate) fn restart_snapshotter(&mut self) {
        Self::terminate(self.snapshotter.take());
        self.start_snapshotter();
        let ok = wait_for(Duration::from_secs(30), || {
            self.ctr(&["snapshots", "--snapshotter", "unionfs", "ls"])
                .status
                .success()
        });
        assert!(
            ok,
            "containerd did not reconnect: {}",
            self.log("containerd.log")
        );
    }

    pub(crate) fn restart_containerd(&mut self) {
        Self::terminate(self.containerd.take());
        self.start_containerd();
    }

    /// `ctr` talking to our containerd, in its mount namespace.
    pub(crate) fn ctr(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg("-t")
            .arg(self.holder.id().to_string())
            .arg("-m")
            .arg("ctr")
            .arg("-a")
            .arg(self.path("c.sock"))
            .arg("-n")
            .arg(&self.ns)
            .args(args)
            .output()
            .unwrap()
    }

    /// [`Engine::ctr`] that must succeed; its stdout.
    pub(crate) fn ctr_ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        assert!(
            o.status.success(),
            "ctr {args:?} failed: {}\n{}\ncontainerd: {}\nsnapshotter: {}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout),
            self.log("containerd.log"),
            self.log("snapshotter.log")
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `ctr snapshots --snapshotter unionfs ARGS` through containerd, which must succeed.
    pub(crate) fn snap(&self, args: &[&str]) -> String {
        let mut a = vec!["snapshots", "--snapshotter", "unionfs"];
        a.extend_from_slice(args);
        self.ctr_ok(&a)
    }

    /// `ctr snapshots` straight to unionfs-snapshotter's socket (it serves the same gRPC
    /// service as containerd): the backend's own keys, as containerd stored them.
    pub(crate) fn backend(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("-a")
            .arg(self.path("s.sock"))
            .args(["snapshots", "--snapshotter", "unionfs"])
            .args(args)
            .output()
            .unwrap()
    }

    /// The backend's snapshots: key -> (kind, parent).
    pub(crate) fn backend_ls(&self) -> BTreeMap<String, (String, String)> {
        let o = self.backend(&["ls"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        parse_ls(&String::from_utf8_lossy(&o.stdout))
    }

    /// containerd's view of the unionfs snapshots: key -> (kind, parent).
    pub(crate) fn snapshots(&self) -> BTreeMap<String, (String, String)> {
        parse_ls(&self.ctr_ok(&["snapshots", "--snapshotter", "unionfs", "ls"]))
    }

    pub(crate) fn import(&self) {
        let tar = busybox_archive();
        let out = self.ctr_ok(&[
            "images",
            "import",
            "--snapshotter",
            "unionfs",
            "--base-name",
            "localhost/busybox",
            tar.to_str().unwrap(),
        ]);
        assert!(out.contains(IMAGE), "{out}");
    }

    /// The options of snapshot `key`'s mount, as containerd hands it out.
    pub(crate) fn mount_options(&self, key: &str) -> (String, Vec<String>) {
        let out = self.ctr_ok(&["snapshots", "--snapshotter", "unionfs", "mounts", "/x", key]);
        // "mount -t TYPE SOURCE /x -o A,B,C"
        let words: Vec<&str> = out.split_whitespace().collect();
        let ty = words[2].to_string();
        let opts = words
            .iter()
            .position(|w| *w == "-o")
            .map(|i| words[i + 1].split(',').map(String::from).collect())
            .unwrap_or_default();
        (ty, opts)
    }

    /// The mount namespace everything of this engine runs in.
    pub(crate) fn mnt_ns(&self) -> PathBuf {
        std::fs::read_link(format!("/proc/{}/ns/mnt", self.holder.id())).unwrap()
    }

    /// Every process of this engine: members of its mount namespace and their descendants
    /// (containers have namespaces of their own).
    pub(crate) fn processes(&self) -> Vec<i32> {
        let ns = self.mnt_ns();
        let mut out: Vec<i32> = all_processes()
            .into_iter()
            .filter(|(pid, _)| {
                std::fs::read_link(format!("/proc/{pid}/ns/mnt")).is_ok_and(|l| l == ns)
            })
            .map(|(pid, _)| pid)
            .collect();
        for p in out.clone() {
            out.extend(
                descendants(Pid::from_raw(p))
                    .into_iter()
                    .map(|p| p.as_raw()),
            );
        }
        out.sort();
        out.dedup();
        out
    }

    pub(crate) fn union_cost(&self) -> Cost {
        let procs = all_processes();
        let parent_of: BTreeMap<i32, i32> = procs.iter().copied().collect();
        let is_unionfs = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "unionfs-mount")
        };
        let mut cost = Cost::default();
        for pid in self.processes() {
            if !is_unionfs(pid) || !alive(Pid::from_raw(pid)) {
                continue;
            }
            cost.processes += 1;
            cost.threads += status_field(pid, "Threads:");
            cost.rss_kib += status_field(pid, "VmRSS:");
            let parent = parent_of.get(&pid).copied().unwrap_or(0);
            if !is_unionfs(parent) {
                cost.serving += 1;
                if cmdline(pid).contains("--serve") {
                    cost.servers += 1;
                }
            }
        }
        cost
    }

    /// Waits until the backend no longer has a key ending in `/suffix` (containerd removes
    /// backend snapshots in its garbage collection, after the command returned).
    pub(crate) fn wait_backend_gone(&self, suffix: &str) {
        let ok = wait_for(Duration::from_secs(30), || {
            !self
                .backend_ls()
                .keys()
                .any(|k| k.ends_with(&format!("/{suffix}")))
        });
        assert!(
            ok,
            "{suffix} stayed in the backend: {:?}",
            self.backend_ls()
        );
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Everything in the namespace, by pid: containerd, shims, containers, unionfs-mount.
        for _ in 0..3 {
            let pids = self.processes();
            for p in &pids {
                if *p as u32 != self.holder.id() {
                    let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
                }
            }
            wait_for(Duration::from_secs(5), || {
                pids.iter()
                    .all(|p| *p as u32 == self.holder.id() || !alive(Pid::from_raw(*p)))
            });
        }
        for c in [self.containerd.take(), self.snapshotter.take()]
            .into_iter()
            .flatten()
        {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
        // The holder last: with it the namespace and every mount in it go.
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        // containerd's cgroups: /sys/fs/cgroup/CONTROLLER/NAMESPACE/CONTAINER.
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for ctrl in rd.flatten() {
                let d = ctrl.path().join(&self.ns);
                if let Ok(kids) = std::fs::read_dir(&d) {
                    for k in kids.flatten().filter(|k| k.path().is_dir()) {
                        let _ = std::fs::remove_dir(k.path());
                    }
                    let _ = std::fs::remove_dir(&d);
                }
            }
        }
    }
}

/// containerd's configuration: everything under `dir`, the proxy snapshotter `unionfs`, and
/// a garbage collection that runs at every deletion (so removed snapshots leave the backend
/// while the test waits).
pub(crate) fn config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{d}/c.sock"
[ttrpc]
  address = "{d}/c.sock.ttrpc"

[plugins."io.containerd.gc.v1.scheduler"]
  deletion_threshold = 1
  schedule_delay = "0s"

[proxy_plugins]
  [proxy_plugins.unionfs]
    type = "snapshot"
    address = "{d}/s.sock"
"#
    )
}

/// `ctr snapshots ls` output: key -> (kind, parent).
pub(crate) fn parse_ls(out: &str) -> BTreeMap<String, (String, String)> {
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.as_slice() {
                [key, kind] => Some((key.to_string(), (kind.to_string(), String::new()))),
                [key, parent, kind] => {
                    Some((key.to_string(), (kind.to_string(), parent.to_string())))
                }
                _ => None,
            }
        })
        .collect()
}

pub(crate) fn opt<'a>(opts: &'a [String], key: &str) -> Option<&'a str> {
    opts.iter().find_map(|o| o.strip_prefix(key))
}

/// Snapshots of every committed layer directory, to check nothing ever changes them.
pub(crate) fn layers(e: &Engine) -> BTreeMap<PathBuf, Snapshot> {
    let snaps = e.path("snap/snapshots");
    let mut out = BTreeMap::new();
    for ent in std::fs::read_dir(&snaps).unwrap().flatten() {
        out.insert(ent.path(), snapshot(&ent.path().join("fs")));
    }
    out
}

pub(crate) fn assert_unchanged(
    before: &BTreeMap<PathBuf, Snapshot>,
    after: &BTreeMap<PathBuf, Snapshot>,
) {
    for (dir, snap) in before {
        let now = after
            .get(dir)
            .unwrap_or_else(|| panic!("layer {} vanished", dir.display()));
        let d = diff_snapshots(snap, now);
        assert!(d.is_empty(), "layer {} changed: {d:?}", dir.display());
    }
}
