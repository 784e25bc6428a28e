//! containerd (Debian's 1.6) with runc and unionfs-snapshotter as its proxy snapshotter
//! `unionfs`: a private containerd (config, root, state and sockets in a temp dir) imports an
//! OCI archive built from the example busybox layers, `ctr run --snapshotter unionfs` runs
//! containers on unionfs unions, and `ctr snapshots` commit/ls/info/label/usage/rm behave;
//! metadata survives restarts of the snapshotter and of containerd.
//!
//! containerd mounts a `fuse3.unionfs-mount` snapshot through `mount.fuse3`, which runs the
//! program `unionfs-mount` from its own fixed PATH: containerd, its shims and `ctr` (which
//! mounts an image's root to read its /etc/group) run in a private mount namespace where a
//! temp dir holding `unionfs-mount` is bind-mounted over /usr/local/bin, so the host is never
//! changed. A holder process keeps that namespace while containerd restarts; on drop every
//! process in it (containerd, shims, containers, the unionfs-mount server) is killed by pid,
//! which also unmounts everything mounted there, and containerd's cgroups are removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::common::{diff_snapshots, snapshot, Snapshot};
use crate::image::{busybox_archive, require_umoci};
use crate::launch_common::{alive, descendants, require, require_root, wait_for, TempDir};

const MOUNT_PROGRAM: &str = env!("CARGO_BIN_EXE_unionfs-mount");
const IMAGE: &str = "localhost/busybox:busybox";
/// Containers kept running at once to count what their unions cost.
const RUNNING: usize = 3;

/// unionfs-snapshotter, built by `cargo test --workspace` (or `cargo build --workspace`) next
/// to this test's own binary (another package's binary has no CARGO_BIN_EXE_ here).
fn snapshotter_bin() -> PathBuf {
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

fn have(prog: &str, arg: &str) -> bool {
    Command::new(prog)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn require_containerd() -> bool {
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
fn all_processes() -> Vec<(i32, i32)> {
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

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn status_field(pid: i32, field: &str) -> u64 {
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
struct Cost {
    /// unionfs-mount processes: servers, daemons and their watchdogs.
    processes: usize,
    /// Of those, the ones serving unions (not a watchdog: a child of another unionfs-mount).
    serving: usize,
    /// Of the serving ones, `--serve` servers.
    servers: usize,
    threads: u64,
    rss_kib: u64,
}

/// A private containerd with unionfs-snapshotter, torn down on drop.
struct Engine {
    dir: TempDir,
    ns: String,
    shared: bool,
    holder: Child,
    containerd: Option<Child>,
    snapshotter: Option<Child>,
}

impl Engine {
    fn start(tag: &str, shared: bool) -> Engine {
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

    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    fn start_snapshotter(&mut self) {
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

    fn start_containerd(&mut self) {
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

    fn wait_socket(&self, sock: &str, log: &str) {
        let ok = wait_for(Duration::from_secs(30), || {
            std::os::unix::net::UnixStream::connect(self.path(sock)).is_ok()
        });
        assert!(ok, "{sock} never answered: {}", self.log(log));
    }

    fn log(&self, name: &str) -> String {
        let s = std::fs::read(self.path(name)).unwrap_or_default();
        let tail = &s[s.len().saturating_sub(4000)..];
        String::from_utf8_lossy(tail).into_owned()
    }

    /// SIGTERM to a child, then wait for it.
    fn terminate(child: Option<Child>) {
        if let Some(mut c) = child {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    /// Restarts the snapshotter and waits until containerd has reconnected (gRPC retries a
    /// refused connection after a backoff of a second or more).
    fn restart_snapshotter(&mut self) {
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

    fn restart_containerd(&mut self) {
        Self::terminate(self.containerd.take());
        self.start_containerd();
    }

    /// `ctr` talking to our containerd, in its mount namespace.
    fn ctr(&self, args: &[&str]) -> Output {
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
    fn ctr_ok(&self, args: &[&str]) -> String {
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
    fn snap(&self, args: &[&str]) -> String {
        let mut a = vec!["snapshots", "--snapshotter", "unionfs"];
        a.extend_from_slice(args);
        self.ctr_ok(&a)
    }

    /// `ctr snapshots` straight to unionfs-snapshotter's socket (it serves the same gRPC
    /// service as containerd): the backend's own keys, as containerd stored them.
    fn backend(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("-a")
            .arg(self.path("s.sock"))
            .args(["snapshots", "--snapshotter", "unionfs"])
            .args(args)
            .output()
            .unwrap()
    }

    /// The backend's snapshots: key -> (kind, parent).
    fn backend_ls(&self) -> BTreeMap<String, (String, String)> {
        let o = self.backend(&["ls"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        parse_ls(&String::from_utf8_lossy(&o.stdout))
    }

    /// containerd's view of the unionfs snapshots: key -> (kind, parent).
    fn snapshots(&self) -> BTreeMap<String, (String, String)> {
        parse_ls(&self.ctr_ok(&["snapshots", "--snapshotter", "unionfs", "ls"]))
    }

    fn import(&self) {
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
    fn mount_options(&self, key: &str) -> (String, Vec<String>) {
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
    fn mnt_ns(&self) -> PathBuf {
        std::fs::read_link(format!("/proc/{}/ns/mnt", self.holder.id())).unwrap()
    }

    /// Every process of this engine: members of its mount namespace and their descendants
    /// (containers have namespaces of their own).
    fn processes(&self) -> Vec<i32> {
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

    fn union_cost(&self) -> Cost {
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
    fn wait_backend_gone(&self, suffix: &str) {
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
fn config(dir: &Path) -> String {
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
fn parse_ls(out: &str) -> BTreeMap<String, (String, String)> {
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

fn opt<'a>(opts: &'a [String], key: &str) -> Option<&'a str> {
    opts.iter().find_map(|o| o.strip_prefix(key))
}

/// Snapshots of every committed layer directory, to check nothing ever changes them.
fn layers(e: &Engine) -> BTreeMap<PathBuf, Snapshot> {
    let snaps = e.path("snap/snapshots");
    let mut out = BTreeMap::new();
    for ent in std::fs::read_dir(&snaps).unwrap().flatten() {
        out.insert(ent.path(), snapshot(&ent.path().join("fs")));
    }
    out
}

fn assert_unchanged(before: &BTreeMap<PathBuf, Snapshot>, after: &BTreeMap<PathBuf, Snapshot>) {
    for (dir, snap) in before {
        let now = after
            .get(dir)
            .unwrap_or_else(|| panic!("layer {} vanished", dir.display()));
        let d = diff_snapshots(snap, now);
        assert!(d.is_empty(), "layer {} changed: {d:?}", dir.display());
    }
}

/// Starts `RUNNING` containers that sleep, returns what their unions cost, and stops them.
fn running_cost(e: &Engine, tag: &str) -> Cost {
    let ids: Vec<String> = (0..RUNNING).map(|i| format!("{tag}{i}")).collect();
    for id in &ids {
        e.ctr_ok(&[
            "run",
            "-d",
            "--snapshotter",
            "unionfs",
            IMAGE,
            id,
            "sleep",
            "600",
        ]);
    }
    let ok = wait_for(Duration::from_secs(20), || {
        let out = String::from_utf8_lossy(&e.ctr(&["task", "ls"]).stdout).into_owned();
        ids.iter().all(|id| {
            out.lines()
                .any(|l| l.starts_with(id.as_str()) && l.contains("RUNNING"))
        })
    });
    assert!(
        ok,
        "containers did not start: {}",
        e.ctr_ok(&["task", "ls"])
    );
    // Each container's root is a union.
    for id in &ids {
        let (ty, _) = e.mount_options(id);
        assert_eq!(ty, "fuse3.unionfs-mount", "{id}");
    }
    let cost = e.union_cost();
    eprintln!(
        "{RUNNING} running containers, shared={}: {} unionfs-mount processes ({} serving, \
         {} of them servers), {} threads, {} KiB RSS",
        e.shared, cost.processes, cost.serving, cost.servers, cost.threads, cost.rss_kib
    );
    for id in &ids {
        e.ctr_ok(&["task", "kill", "-s", "KILL", id]);
    }
    for id in &ids {
        wait_for(Duration::from_secs(20), || {
            e.ctr(&["task", "rm", id]).status.success()
        });
        e.ctr_ok(&["containers", "rm", id]);
    }
    for id in &ids {
        e.wait_backend_gone(id);
    }
    cost
}

/// The container writes, deletes and prints; its upper on disk holds exactly that.
fn run_writes_into_the_active_snapshot(e: &Engine) {
    let before = layers(e);
    let out = e.ctr_ok(&[
        "run",
        "--snapshotter",
        "unionfs",
        IMAGE,
        "c1",
        "/bin/sh",
        "-c",
        "cat /etc/hostname /d/old; echo new > /new; rm /etc/motd; rm -r /d/sub; \
         grep ' / ' /proc/mounts | cut -d' ' -f3",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(&lines[..2], ["app", "old"], "{out}");
    assert!(
        lines[2].starts_with("fuse"),
        "the root is a FUSE union: {out}"
    );
    let (ty, opts) = e.mount_options("c1");
    assert_eq!(ty, "fuse3.unionfs-mount");
    assert_eq!(opt(&opts, "shared=").is_some(), e.shared, "{opts:?}");
    let upper = PathBuf::from(opt(&opts, "upperdir=").unwrap());
    assert_eq!(std::fs::read_to_string(upper.join("new")).unwrap(), "new\n");
    assert!(upper.join("etc/.wh.motd").exists(), "whiteout of /etc/motd");
    assert!(upper.join("d/.wh.sub").exists(), "whiteout of /d/sub");
    assert!(
        !upper.join("etc/hostname").exists(),
        "read-only use copies nothing up"
    );
    let lowers = opt(&opts, "lowerdir=").unwrap();
    assert_eq!(lowers.split(':').count(), 2, "{lowers}");
    let after = layers(e);
    assert_unchanged(&before, &after);
    e.ctr_ok(&["containers", "rm", "c1"]);
    e.wait_backend_gone("c1");
    assert!(!upper.exists(), "the removed snapshot's directory is gone");
}

#[test]
fn containerd_runs_containers_on_unionfs_snapshots_served_by_one_process() {
    if !require_containerd() {
        return;
    }
    let mut e = Engine::start("sh", true);
    e.import();
    let layers_ls = e.snapshots();
    assert_eq!(layers_ls.len(), 2, "{layers_ls:?}");
    assert!(layers_ls.values().all(|(k, _)| k == "Committed"));
    let (top, _) = layers_ls
        .iter()
        .find(|(_, (_, parent))| !parent.is_empty())
        .unwrap();
    let top = top.clone();

    run_writes_into_the_active_snapshot(&e);

    // Several running containers: one unionfs-mount server hosts all their unions.
    let cost = running_cost(&e, "run");
    assert_eq!(cost.servers, 1, "{cost:?}");
    assert_eq!(
        cost.serving, 1,
        "no union has a daemon of its own: {cost:?}"
    );

    // ctr snapshots: prepare, commit, ls, info, label, usage, rm.
    e.snap(&["prepare", "s1", &top]);
    let (_, opts) = e.mount_options("s1");
    let upper = PathBuf::from(opt(&opts, "upperdir=").unwrap());
    std::fs::write(upper.join("added"), vec![b'x'; 100_000]).unwrap();
    e.snap(&["commit", "s1c", "s1"]);
    let ls = e.snapshots();
    assert_eq!(
        ls.get("s1c"),
        Some(&("Committed".to_string(), top.clone())),
        "{ls:?}"
    );
    assert!(!ls.contains_key("s1"), "{ls:?}");
    let info = e.snap(&["info", "s1c"]);
    assert!(info.contains("\"Kind\": \"Committed\""), "{info}");
    let usage = e.snap(&["usage", "s1c"]);
    let row = usage.lines().find(|l| l.starts_with("s1c")).unwrap();
    let inodes: u64 = row.split_whitespace().last().unwrap().parse().unwrap();
    assert!(inodes >= 2, "{usage}");
    assert!(!row.contains(" 0.0 B"), "{usage}");
    // Labels under containerd.io/snapshot/ reach the backend.
    e.snap(&["label", "s1c", "containerd.io/snapshot/unionfs-test=yes"]);
    let info = e.snap(&["info", "s1c"]);
    assert!(
        info.contains("\"containerd.io/snapshot/unionfs-test\": \"yes\""),
        "{info}"
    );
    let o = e.backend(&["ls"]);
    let backend_key = parse_ls(&String::from_utf8_lossy(&o.stdout))
        .into_keys()
        .find(|k| k.ends_with("/s1c"))
        .unwrap();
    let o = e.backend(&["info", &backend_key]);
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains("\"containerd.io/snapshot/unionfs-test\": \"yes\""),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // Children keep their parent: containerd refuses, and so does the backend itself.
    e.snap(&["prepare", "s2", "s1c"]);
    let o = e.ctr(&["snapshots", "--snapshotter", "unionfs", "rm", "s1c"]);
    assert!(!o.status.success(), "rm of a parent must fail");
    let o = e.backend(&["rm", &backend_key]);
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && msg.contains("it has children")
            && msg.contains("failed precondition"),
        "{msg}"
    );

    // Restarts keep the metadata: snapshotter, then containerd, then both.
    let ls = e.snapshots();
    let backend = e.backend_ls();
    e.restart_snapshotter();
    assert_eq!(e.backend_ls(), backend);
    assert_eq!(e.snapshots(), ls);
    e.restart_containerd();
    assert_eq!(e.snapshots(), ls);
    assert_eq!(e.backend_ls(), backend);
    let out = e.ctr_ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "unionfs",
        IMAGE,
        "c2",
        "cat",
        "/etc/hostname",
    ]);
    assert_eq!(out, "app\n");

    e.snap(&["rm", "s2"]);
    e.snap(&["rm", "s1c"]);
    e.wait_backend_gone("s1c");
    assert!(!upper.exists());
    assert_eq!(e.snapshots(), layers_ls);
}

#[test]
fn without_shared_every_union_has_a_daemon_of_its_own() {
    if !require_containerd() {
        return;
    }
    let e = Engine::start("ns", false);
    e.import();
    run_writes_into_the_active_snapshot(&e);
    let cost = running_cost(&e, "own");
    assert_eq!(cost.servers, 0, "{cost:?}");
    assert_eq!(cost.serving, RUNNING, "one daemon per union: {cost:?}");
}
