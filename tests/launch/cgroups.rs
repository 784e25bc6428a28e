//! cgroups for real: v1 limits (memory OOM → 137, pids), v2 placement and kill in the
//! controller-less `unified` tree of this hybrid host, and the backends' teardown.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use nix::unistd::Pid;
use unionfs::launch::cgroup::{self, v1::V1, v2::V2, Backend, CgroupGuard, Layout};
use unionfs::launch::config::Limits;

fn v1_mounts() -> Option<BTreeMap<String, PathBuf>> {
    match cgroup::detect() {
        Layout::V1(m) | Layout::Hybrid { v1: m, .. } => Some(m),
        _ => None,
    }
}

fn v2_mount() -> Option<PathBuf> {
    match cgroup::detect() {
        Layout::V2(p) | Layout::Hybrid { unified: p, .. } => Some(p),
        _ => None,
    }
}

fn require_v1() -> Option<BTreeMap<String, PathBuf>> {
    let m = v1_mounts().filter(|m| m.contains_key("memory") && m.contains_key("pids"));
    require(
        m.is_some(),
        "this test needs cgroup v1 memory and pids hierarchies",
    )
    .then(|| m.unwrap())
}

fn require_v2() -> Option<PathBuf> {
    let m = v2_mount();
    require(m.is_some(), "this test needs a cgroup2 tree").then(|| m.unwrap())
}

fn launch(extra: &[&str], cmd: &str) -> Running {
    let mut a = root_args();
    a.extend(args(extra));
    a.push("--tmp-upper".into());
    a.push(base_lower().to_string_lossy().into_owned());
    a.extend(args(&["--", "/bin/sh", "-c", cmd]));
    spawn(&a)
}

/// The cgroup directories (under `root`) that contain `pid`.
fn cgroup_of(root: &Path, pid: Pid) -> Option<PathBuf> {
    std::fs::read_dir(root)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|d| {
            d.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("unionfs-run.")
                && std::fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .any(|l| l.trim() == pid.to_string())
        })
}

#[test]
fn memory_hog_is_oom_killed_with_137_and_launcher_survives() {
    if !require_root() {
        return;
    }
    let Some(m) = require_v1() else { return };
    let mut r = launch(
        &["--memory", "64M"],
        "echo up; read go; x=aaaaaaaaaaaaaaaa; while true; do x=\"$x$x\"; done",
    );
    assert_eq!(r.read_line(), "up");
    let init = r.init_pid();
    let cg = cgroup_of(&m["memory"], init).expect("init not in a memory cgroup");
    let limit = std::fs::read_to_string(cg.join("memory.limit_in_bytes")).unwrap();
    assert_eq!(limit.trim(), (64u64 << 20).to_string());
    r.write_line("go");
    let o = r.finish(Duration::from_secs(60));
    assert_eq!(o.code, 137, "{o:?}");
    assert!(
        o.stderr
            .contains("killed by the memory limit (--memory 64 MiB)")
            && o.stderr.contains("larger --memory"),
        "exit 137 not explained: {}",
        o.stderr
    );
    assert!(!cg.exists(), "cgroup {} left behind", cg.display());
    // The host side (this test process) is unaffected and can still allocate.
    let v = vec![1u8; 128 << 20];
    assert_eq!(v.iter().map(|b| *b as usize).sum::<usize>(), 128 << 20);
}

#[test]
fn fork_loop_is_contained_by_pids_limit() {
    if !require_root() {
        return;
    }
    let Some(m) = require_v1() else { return };
    // The inner shell starts sleeps until a fork fails (ash then exits with 2); the outer one,
    // pid 1, reports how far it got and kills the rest, using builtins only.
    let mut r = launch(
        &["--pids", "32"],
        "echo up; read x; sh -c 'i=0; while [ $i -lt 200 ]; do sleep 5 & i=$((i+1)); echo $i > /tmp/count; done' \
         2>/dev/null; echo inner=$?; read c < /tmp/count; echo count=$c; kill -9 -1; wait; echo done",
    );
    assert_eq!(r.read_line(), "up");
    let init = r.init_pid();
    let cg = cgroup_of(&m["pids"], init).expect("init not in a pids cgroup");
    assert_eq!(
        std::fs::read_to_string(cg.join("pids.max")).unwrap().trim(),
        "32"
    );
    r.write_line("go");
    let o = r.finish(Duration::from_secs(60));
    assert_eq!(o.code, 0, "{o:?}");
    let l: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(
        l[0], "inner=2",
        "the fork loop did not hit the limit: {o:?}"
    );
    let count: usize = l[1].strip_prefix("count=").unwrap().parse().unwrap();
    assert!(
        (20..32).contains(&count),
        "{count} sleeps under --pids 32: {o:?}"
    );
    assert_eq!(l[2], "done");
    assert!(!cg.exists());
}

#[test]
fn cpu_quota_is_written() {
    if !require_root() {
        return;
    }
    let Some(m) = require_v1() else { return };
    if !require(
        m.contains_key("cpu"),
        "this test needs the v1 cpu hierarchy",
    ) {
        return;
    }
    let mut r = launch(&["--cpus", "0.5"], "echo up; sleep 30");
    assert_eq!(r.read_line(), "up");
    let init = r.init_pid();
    let cg = cgroup_of(&m["cpu"], init).expect("init not in a cpu cgroup");
    assert_eq!(
        std::fs::read_to_string(cg.join("cpu.cfs_quota_us"))
            .unwrap()
            .trim(),
        "50000"
    );
    nix::sys::signal::kill(init, nix::sys::signal::Signal::SIGKILL).unwrap();
    assert_eq!(r.finish(Duration::from_secs(20)).code, 137);
    assert!(!cg.exists());
}

#[test]
fn v2_places_the_container_and_removes_its_cgroup() {
    if !require_root() {
        return;
    }
    let Some(u) = require_v2() else { return };
    let mut r = launch(
        &["--cgroup", "v2"],
        "cat /proc/self/cgroup; echo up; sleep 30",
    );
    let mut seen = Vec::new();
    loop {
        let l = r.read_line();
        if l == "up" {
            break;
        }
        seen.push(l);
    }
    let init = r.init_pid();
    let cg = cgroup_of(&u, init).expect("init not placed in a v2 cgroup");
    nix::sys::signal::kill(init, nix::sys::signal::Signal::SIGKILL).unwrap();
    let o = r.finish(Duration::from_secs(20));
    assert_eq!(o.code, 137, "{o:?}");
    // With a cgroup namespace the container sees itself at the root.
    assert!(seen.iter().any(|l| l == "0::/"), "{seen:?}");
    assert!(!cg.exists(), "{} left behind", cg.display());
}

/// A shell that waits for a line on stdin, then starts a bounded process tree; killed (by
/// pid) on drop if still there.
struct Tree(std::process::Child);

impl Tree {
    fn spawn() -> Tree {
        Tree(
            Command::new("sh")
                .args([
                    "-c",
                    "read go; sleep 100 & sleep 100 & \
                     (i=0; while [ $i -lt 300 ]; do sleep 100 & i=$((i+1)); sleep 0.01; done) & wait",
                ])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        )
    }
    fn pid(&self) -> Pid {
        Pid::from_raw(self.0.id() as i32)
    }
    fn go(&mut self) {
        use std::io::Write;
        self.0.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn teardown_kills_everything(backend: Box<dyn Backend>) {
    let name = format!("unionfs-run.test{}.0", std::process::id());
    let limits = Limits::default();
    let guard = CgroupGuard::create(backend, &name, &limits).unwrap();
    let mut tree = Tree::spawn();
    // Placed before it forks anything, so the whole tree is inside.
    guard.add(tree.pid()).unwrap();
    tree.go();
    assert!(wait_for(Duration::from_secs(5), || guard
        .backend()
        .procs(&name)
        .len()
        >= 6));
    let inside = guard.backend().procs(&name);
    guard.teardown().unwrap();
    for p in inside {
        assert!(!alive(p), "{p} survived teardown");
    }
}

#[test]
fn v2_backend_kills_the_whole_tree_atomically() {
    if !require_root() {
        return;
    }
    let Some(u) = require_v2() else { return };
    let b = V2::with_parent(u);
    assert!(b.unusable_reason(&Limits::default()).is_none());
    teardown_kills_everything(Box::new(b));
}

#[test]
fn v1_backend_freezes_and_kills_the_whole_tree() {
    if !require_root() {
        return;
    }
    let Some(m) = require_v1() else { return };
    teardown_kills_everything(Box::new(V1::new(m)));
}

#[test]
fn rootless_without_delegation_warns_once_and_runs() {
    if !require_root() {
        return;
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
        .args(root_args_bind())
        .args(["--memory", "64M", "--pids", "20", "--tmp-upper"])
        .arg(base_lower())
        .args(["--", "/bin/sh", "-c", "echo ran"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ran",
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr.matches("warning").count(), 1, "{stderr}");
    assert!(stderr.contains("WITHOUT resource limits"), "{stderr}");
    // It names the controllers that are missing and the fix for this host's cgroup mode.
    match cgroup::detect() {
        layout @ (Layout::V1(_) | Layout::Hybrid { .. }) => {
            for c in [
                "v1 memory controller",
                "needed for --memory",
                "v1 pids controller",
            ] {
                assert!(stderr.contains(c), "{c:?} missing: {stderr}");
            }
            assert!(
                !stderr.contains("v1 cpu controller"),
                "--cpus was not asked: {stderr}"
            );
            assert!(
                !stderr.contains("systemd-run"),
                "v2 advice on a v1 host: {stderr}"
            );
            assert!(stderr.contains("chown -R 65534"), "{stderr}");
            if matches!(layout, Layout::Hybrid { .. }) {
                assert!(stderr.contains("This host is hybrid"), "{stderr}");
            }
        }
        Layout::V2(_) => {
            assert!(stderr.contains("cgroup v2 tree"), "{stderr}");
            assert!(stderr.contains("Delegate=yes"), "{stderr}");
        }
        Layout::None => {}
    }
}

/// The bind stand-in (this test is about cgroups, not FUSE access for uid 65534).
fn root_args_bind() -> Vec<String> {
    args(&["--root-source", "bind"])
}

/// A v2 cgroup delegated to uid 65534 (as systemd's `Delegate=yes` would), removed on drop.
struct Delegated(PathBuf);

impl Drop for Delegated {
    fn drop(&mut self) {
        if let Ok(rd) = std::fs::read_dir(&self.0) {
            for e in rd.flatten().filter(|e| e.path().is_dir()) {
                let _ = std::fs::write(e.path().join("cgroup.kill"), "1");
                let _ = wait_for(Duration::from_secs(5), || {
                    std::fs::remove_dir(e.path()).is_ok()
                });
            }
        }
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        let _ = wait_for(Duration::from_secs(5), || {
            std::fs::remove_dir(&self.0).is_ok()
        });
    }
}

#[test]
fn rootless_uses_a_delegated_v2_subtree() {
    if !require_root() {
        return;
    }
    let Some(u) = require_v2() else { return };
    let d = Delegated(u.join(format!("unionfs-deleg-test-{}", std::process::id())));
    std::fs::create_dir(&d.0).unwrap();
    for f in [
        "",
        "cgroup.procs",
        "cgroup.subtree_control",
        "cgroup.threads",
    ] {
        nix::unistd::chown(&d.0.join(f), Some(65534.into()), Some(65534.into())).unwrap();
    }
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "echo $$ > \"$D/cgroup.procs\" && exec setpriv --reuid=65534 --regid=65534 --clear-groups \"$@\"",
        "sh",
        BIN,
        "--root-source",
        "bind",
        "--cgroup",
        "v2",
        "--tmp-upper",
    ])
    .arg(base_lower())
    .args(["--", "/bin/sh", "-c", "echo up; read x; echo done"])
    .env("D", &d.0);
    let mut r = spawn_cmd(&mut cmd);
    assert_eq!(r.read_line(), "up");
    let init = r.init_pid();
    let cg = cgroup_of(&d.0, init).expect("init not placed in the delegated subtree");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&cg).unwrap().uid(), 65534);
    r.write_line("go");
    let o = r.finish(Duration::from_secs(20));
    assert_eq!(o.code, 0, "{o:?}");
    assert!(!o.stderr.contains("warning"), "{o:?}");
    assert!(!cg.exists(), "{} left behind", cg.display());
}
