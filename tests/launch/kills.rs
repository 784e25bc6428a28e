//! `kill -9` of the launcher at any moment (start-up, running, exit): within 2 s nothing of it
//! is left (no process, cgroup in any v1 hierarchy or the v2 tree, staging directory or host
//! mount), without another launch cleaning up. 50 kills at random delays between 0 and 1 s,
//! spread over root and rootless runs, v1 (auto on this hybrid host) and v2 (`unified`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const NOBODY: u32 = 65534;
const V1: [&str; 4] = ["memory", "pids", "cpu", "freezer"];

/// Cgroups delegated to uid 65534 (v1: one per controller; v2: one in the unified tree),
/// emptied and removed on drop.
struct Delegation {
    v1: Vec<PathBuf>,
    v2: Option<PathBuf>,
}

impl Delegation {
    fn new() -> Delegation {
        let name = format!("unionfs-kills-{}", std::process::id());
        let root = Path::new("/sys/fs/cgroup");
        let chown = |d: &Path, files: &[&str]| {
            std::fs::create_dir(d).unwrap();
            for f in files {
                nix::unistd::chown(&d.join(f), Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
            }
        };
        let v1: Vec<PathBuf> = V1.iter().map(|c| root.join(c).join(&name)).collect();
        for d in &v1 {
            chown(d, &["", "cgroup.procs", "tasks"]);
        }
        let v2 = root.join("unified");
        let v2 = v2.join("cgroup.procs").exists().then(|| {
            let d = v2.join(&name);
            chown(
                &d,
                &[
                    "",
                    "cgroup.procs",
                    "cgroup.subtree_control",
                    "cgroup.threads",
                ],
            );
            d
        });
        Delegation { v1, v2 }
    }

    fn dirs(&self) -> Vec<PathBuf> {
        self.v1.iter().chain(&self.v2).cloned().collect()
    }
}

impl Drop for Delegation {
    fn drop(&mut self) {
        for d in self.dirs() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    let _ = std::fs::write(e.path().join("cgroup.kill"), "1");
                    let _ = std::fs::remove_dir(e.path());
                }
            }
            // The wrapper shells that moved in are gone; the procs file may still list zombies.
            let _ = wait_for(Duration::from_secs(5), || {
                std::fs::remove_dir(&d).is_ok() || !d.exists()
            });
        }
    }
}

fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut b).unwrap();
    u64::from_le_bytes(b) % n
}

/// Live processes whose command line holds `marker` (a zombie has exited: not counted).
fn marked(marker: &str) -> Vec<Pid> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(marker) && alive(Pid::from_raw(pid)) {
            out.push(Pid::from_raw(pid));
        }
    }
    out
}

/// Everything of launcher `pid` still on the host.
fn leftovers(pid: Pid, marker: &str, delegated: &[PathBuf]) -> Vec<String> {
    let prefix = format!("unionfs-run.{pid}.");
    let mut dirs: Vec<PathBuf> = V1
        .iter()
        .chain(&["unified"])
        .map(|c| Path::new("/sys/fs/cgroup").join(c))
        .collect();
    dirs.extend(delegated.iter().cloned());
    dirs.push(std::env::temp_dir());
    let mut out: Vec<String> = dirs
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path().display().to_string())
        .collect();
    out.extend(marked(marker).iter().map(|p| format!("process {p}")));
    out.extend(leftover_mounts());
    out
}

fn launch(config: usize, marker: &str, deleg: &Delegation, node: &Path) -> Running {
    let base = base_lower().to_string_lossy().into_owned();
    let mut a: Vec<String> = match config % 2 {
        0 => args(&["--memory", "64M", "--pids", "64"]),
        _ => args(&["--cgroup", "v2"]),
    };
    a.extend(args(&[
        "--hostname",
        marker,
        "--tmp-upper",
        &base,
        "--",
        "/bin/sh",
        "-c",
    ]));
    // Odd runs end by themselves after 0.4 s, so later kills land in the launcher's exit.
    a.push(if config % 2 == 1 {
        "sleep 0.4".into()
    } else {
        "while :; do sleep 1; done".into()
    });
    a.push(marker.into());
    if config < 2 {
        return spawn(&a);
    }
    // Rootless: uid 65534 in its delegated cgroups, with a usable /dev/fuse of its own.
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "set -e; for d in $DIRS; do echo $$ > $d/cgroup.procs; done; \
             mknod -m 0666 \"$NODE/fuse-$MARK\" c 10 229; mount --bind \"$NODE/fuse-$MARK\" /dev/fuse; \
             exec setpriv --reuid=65534 --regid=65534 --clear-groups \"$@\"",
        )
        .arg("sh")
        .arg(BIN)
        .args(&a)
        .env("NODE", node)
        .env("MARK", marker)
        .env(
            "DIRS",
            deleg
                .dirs()
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(" "),
        );
    spawn_cmd(&mut cmd)
}

#[test]
fn fifty_kills_at_random_moments_leave_nothing_within_two_seconds() {
    if !require_root() || !require_union() {
        return;
    }
    let have = V1.iter().all(|c| {
        Path::new("/sys/fs/cgroup")
            .join(c)
            .join("cgroup.procs")
            .exists()
    });
    if !require(
        have,
        "this test needs the v1 memory, pids, cpu and freezer hierarchies",
    ) {
        return;
    }
    let deleg = Delegation::new();
    // mknod needs a file system without nodev: the system temp dir.
    let node =
        TempDir(std::env::temp_dir().join(format!("unionfs-kills-node-{}", std::process::id())));
    std::fs::create_dir_all(&node.0).unwrap();
    let started = Instant::now();
    let (mut running_when_killed, mut before_running) = (0, 0);
    for i in 0..50 {
        let config = i % 4;
        let marker = format!("k{i}x{}", std::process::id());
        let r = launch(config, &marker, &deleg, &node.0);
        let pid = r.pid();
        // The first kills land in start-up (before the container runs), the rest anywhere.
        let delay = if i < 6 {
            random_below(40)
        } else {
            random_below(1000)
        };
        std::thread::sleep(Duration::from_millis(delay));
        // Running: the container's shell (argv holds the marker) is up.
        match marked(&marker).len() {
            0 | 1 => before_running += 1,
            _ => running_when_killed += 1,
        }
        kill(pid, Signal::SIGKILL).unwrap();
        let killed = Instant::now();
        let o = r.finish(Duration::from_secs(5));
        assert!(matches!(o.code, 137 | 0), "kill {i}: {o:?}");
        let clean = wait_for(Duration::from_secs(2), || {
            leftovers(pid, &marker, &deleg.dirs()).is_empty()
        });
        assert!(
            clean,
            "kill {i} (config {config}) at {:?}: left after {:?}: {:?}\n{o:?}",
            killed.duration_since(started),
            killed.elapsed(),
            leftovers(pid, &marker, &deleg.dirs())
        );
        let _ = std::fs::remove_file(node.join(&format!("fuse-{marker}")));
    }
    eprintln!(
        "50 kills in {:?}: {running_when_killed} with the container running, {before_running} \
         before it ran or after it ended",
        started.elapsed()
    );
    assert!(
        running_when_killed >= 10,
        "too few kills hit a running container"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}
