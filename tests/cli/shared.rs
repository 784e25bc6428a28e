//! Many unions in one server process (`-o shared`): what a hundred idle unions cost together,
//! that each still is a union of its own, and what a killed server or a caller in another
//! mount namespace gets.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use super::fixture::*;
use crate::common::can_mount as fuse_available;

/// `unionfs-mount -o shared=SOCKET ...`, with a server that leaves 2 s after its last union.
fn shared(fx: &mut Fixture, socket: &Path, args: &[&str]) -> Output {
    let pidfile = fx.root.join(format!("pid-{}", fx.mounts.len()));
    let out = Command::new(BIN)
        .env("UNIONFS_SERVE_IDLE_SECS", "2")
        .arg("--pid-file")
        .arg(&pidfile)
        .arg("-o")
        .arg(format!("shared={}", socket.display()))
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        fx.mounts.push(PathBuf::from(args.last().unwrap()));
        if let Ok(p) = fs::read_to_string(&pidfile) {
            let pid: i32 = p.trim().parse().unwrap();
            if !fx.pids.contains(&pid) {
                fx.pids.push(pid);
            }
        }
    }
    out
}

/// A union of `lower` over a new upper `u{tag}` on a new mount point `m{tag}`, through the
/// server at `socket`.
fn shared_union(fx: &mut Fixture, socket: &Path, lower: &Path, tag: &str) -> Output {
    let (u, m) = (fx.dir(&format!("u{tag}")), fx.dir(&format!("m{tag}")));
    let args = [lower, &u, &m].map(|p| p.to_str().unwrap().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    shared(fx, socket, &args)
}

/// A `/proc/PID/status` field's first number.
fn status_field(pid: i32, key: &str) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The processes `pid` forked (its watchdog).
fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let kids = fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            kids.split_whitespace()
                .filter_map(|k| k.parse::<i32>().ok()),
        );
    }
    out
}

#[test]
fn a_hundred_unions_in_one_server_cost_a_few_threads_and_little_memory() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("shared100");
    let l = fx.dir("l");
    fs::write(l.join("base"), "lower").unwrap();
    let socket = fx.root.join("server.sock");
    const N: usize = 100;
    for i in 0..N {
        let o = shared_union(&mut fx, &socket, &l, &i.to_string());
        assert!(o.status.success(), "union {i}: {}", stderr(&o));
    }
    assert_eq!(
        fx.pids.len(),
        1,
        "every union went to one server: {:?}",
        fx.pids
    );
    let server = fx.pids[0];
    // Each is a union of its own: its changes land in its own upper only.
    for i in 0..N {
        let m = fx.root.join(format!("m{i}"));
        assert_eq!(fs::read_to_string(m.join("base")).unwrap(), "lower");
        fs::write(m.join("mine"), format!("{i}")).unwrap();
    }
    for i in 0..N {
        let u = fx.root.join(format!("u{i}"));
        assert_eq!(fs::read_to_string(u.join("mine")).unwrap(), format!("{i}"));
    }
    assert_eq!(fs::read_dir(&l).unwrap().count(), 1, "the lower changed");
    // Idle again: what the hundred cost together.
    std::thread::sleep(Duration::from_millis(500));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let mut procs = vec![server];
    procs.extend(children(server));
    let threads: u64 = procs.iter().map(|p| status_field(*p, "Threads:")).sum();
    let rss_kib: u64 = procs.iter().map(|p| status_field(*p, "VmRSS:")).sum();
    eprintln!(
        "{N} idle unions: {} processes, {threads} threads, {} KiB RSS ({} KiB a union)",
        procs.len(),
        rss_kib,
        rss_kib / N as u64
    );
    assert!(
        threads <= 4 * cpus + 100,
        "{threads} threads for {N} unions on {cpus} CPUs"
    );
    assert!(rss_kib <= 150 << 10, "{rss_kib} KiB for {N} unions");
    // Unmounted, every union leaves the server, which then exits by itself.
    for i in 0..N {
        let m = fx.root.join(format!("m{i}"));
        let out = Command::new("umount").arg(&m).output().unwrap();
        assert!(
            out.status.success(),
            "umount {}: {}",
            m.display(),
            stderr(&out)
        );
    }
    fx.mounts.clear();
    wait_within("the idle server to exit", Duration::from_secs(15), || {
        !alive(server)
    });
    assert!(!socket.exists(), "the server left its socket behind");
}

#[test]
fn killing_the_server_unmounts_every_union_it_hosts() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("sharedkill");
    let l = fx.dir("l");
    let socket = fx.root.join("server.sock");
    for i in 0..3 {
        let o = shared_union(&mut fx, &socket, &l, &i.to_string());
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let server = fx.pids[0];
    signal(server, nix::sys::signal::Signal::SIGKILL);
    let mounts = fx.mounts.clone();
    wait_until("the watchdog to unmount", || {
        mounts.iter().all(|m| !is_mounted(m))
    });
    // And a new union on the same socket starts a new server.
    let o = shared_union(&mut fx, &socket, &l, "-again");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(*fx.pids.last().unwrap(), server);
}

#[test]
fn the_server_names_a_bad_union_and_goes_on_serving_the_others() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("sharedbad");
    let l = fx.dir("l");
    fs::write(l.join("f"), "f").unwrap();
    let socket = fx.root.join("server.sock");
    assert!(shared_union(&mut fx, &socket, &l, "").status.success());
    let missing = fx.root.join("nosuch");
    let o = shared_union(&mut fx, &socket, &missing, "2");
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
    assert!(!is_mounted(&fx.root.join("m2")));
    assert_eq!(fs::read_to_string(fx.root.join("m/f")).unwrap(), "f");
}

#[test]
fn a_caller_in_another_mount_namespace_is_refused_a_server_that_cannot_see_its_paths() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("sharedns");
    let l = fx.dir("l");
    let socket = fx.root.join("server.sock");
    let o = shared_union(&mut fx, &socket, &l, "");
    assert!(o.status.success(), "{}", stderr(&o));
    let (u2, m2) = (fx.dir("u2"), fx.dir("m2"));
    let o = Command::new("unshare")
        .arg("-m")
        .arg(BIN)
        .arg("-o")
        .arg(format!("shared={}", socket.display()))
        .args([
            l.to_str().unwrap(),
            u2.to_str().unwrap(),
            m2.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("another mnt namespace") && err.contains("-o shared=PATH"),
        "{err}"
    );
}
