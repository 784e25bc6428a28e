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

use std::path::PathBuf;
use std::time::Duration;

use crate::containerd_engine::*;
use crate::launch_common::wait_for;

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
