//! The SIGUSR1 counters against real workloads, and the requests a workload costs.

use std::fs;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::fixture::*;
use crate::common::can_mount as fuse_available;

/// The names in `dir` with their d_ino.
fn list_inos(dir: &Path) -> Vec<(String, u64)> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().into_string().unwrap(), e.ino())
        })
        .collect()
}

#[test]
fn sigusr1_reports_counters_that_match_the_workload() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("stats");
    let l = fx.dir("l");
    for i in 0..3 {
        fs::write(l.join(format!("f{i}")), vec![7u8; 1000]).unwrap();
    }
    let (pid, stats, _, mnt) = mount_counting(&mut fx, &l, &[]);
    // Workload: two copy-ups of 1000-byte files, two deletes of lower files (two
    // whiteouts), one held-open file.
    fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("f0"))
        .unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("f1"))
        .unwrap();
    fs::remove_file(mnt.join("f1")).unwrap();
    fs::remove_file(mnt.join("f2")).unwrap();
    let held = fs::File::open(mnt.join("f0")).unwrap();
    // close() does not wait for the daemon to see RELEASE: give the two earlier ones time.
    let mut s = read_stats(pid, &stats);
    let until = Instant::now() + Duration::from_secs(5);
    while s["open_handles"] != "1" && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
        s = read_stats(pid, &stats);
    }
    assert_eq!(s["copy_ups"], "2", "{s:?}");
    assert_eq!(s["bytes_copied"], "2000", "{s:?}");
    assert_eq!(s["whiteouts"], "2", "{s:?}");
    assert_eq!(s["open_handles"], "1", "{s:?}");
    assert_eq!(s["requests.unlink"], "2", "{s:?}");
    assert!(s["requests.open"].parse::<u64>().unwrap() >= 3, "{s:?}");
    assert!(["on", "off"].contains(&s["passthrough"].as_str()), "{s:?}");
    drop(held);
}

#[test]
fn small_writes_do_not_each_ask_for_file_capabilities() {
    // Without FUSE_HANDLE_KILLPRIV_V2 the kernel sends GETXATTR security.capability before
    // every write(2), even to a passthrough file: one round trip per write.
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("killpriv");
    let l = fx.dir("l");
    let (pid, stats, u, mnt) = mount_counting(&mut fx, &l, &[]);
    let mut f = fs::File::create(mnt.join("log")).unwrap();
    for i in 0..200 {
        std::io::Write::write_all(&mut f, format!("line {i}\n").as_bytes()).unwrap();
    }
    drop(f);
    let s = read_stats(pid, &stats);
    let asks: u64 = s.get("requests.getxattr").map_or(0, |n| n.parse().unwrap());
    assert!(asks <= 2, "{asks} GETXATTRs for 200 writes: {s:?}");
    let text = fs::read_to_string(u.join("log")).unwrap();
    assert_eq!(text.lines().count(), 200);
}

#[test]
fn a_listing_carries_attributes_only_for_callers_that_stat_what_they_list() {
    // The first batch of a listing goes without attributes (no stat in the daemon, no inode
    // in the kernel) until a name of a directory the caller was sent bare is looked up; on
    // either transport (the test command runs this file over each).
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("listing");
    let l = fx.dir("l");
    const N: usize = 60;
    for d in ["a", "b", "c", "d", "e", "f"] {
        fs::create_dir_all(l.join(d).join("sub")).unwrap();
        for i in 0..N {
            fs::write(l.join(d).join(format!("f{i}")), vec![b'x'; i]).unwrap();
        }
    }
    let (pid, stats, u, mnt) = mount_counting(&mut fx, &l, &[]);
    let count = |s: &std::collections::HashMap<String, String>, k: &str| -> u64 {
        s.get(k).map_or(0, |v| v.parse().unwrap())
    };
    let nodes0 = count(&read_stats(pid, &stats), "inodes");

    // A thread of ours lists `a`: the names and their d_ino, no inodes for the files.
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (res_tx, res_rx) = std::sync::mpsc::channel();
    let lister = std::thread::spawn({
        let mnt = mnt.clone();
        move || {
            res_tx.send(list_inos(&mnt.join("a"))).unwrap();
            go_rx.recv().unwrap();
            res_tx.send(list_inos(&mnt.join("e"))).unwrap();
        }
    });
    let listed = res_rx.recv().unwrap();
    assert_eq!(listed.len(), N + 1);
    let s = read_stats(pid, &stats);
    let made = count(&s, "inodes") - nodes0;
    assert!(made <= 2, "listing made {made} inodes: {s:?}");
    // A bare entry's d_ino is the st_ino a lookup then reports.
    for (name, d_ino) in &listed {
        let m = fs::symlink_metadata(mnt.join("a").join(name)).unwrap();
        assert_eq!(m.ino(), *d_ino, "d_ino of a/{name}");
        if let Some(i) = name.strip_prefix('f') {
            assert_eq!(m.len(), i.parse::<u64>().unwrap(), "size of a/{name}");
        }
    }

    // Another thread used the names the lister was sent bare: its next listing has attributes.
    let nodes1 = count(&read_stats(pid, &stats), "inodes");
    go_tx.send(()).unwrap();
    assert_eq!(res_rx.recv().unwrap().len(), N + 1);
    lister.join().unwrap();
    let made = count(&read_stats(pid, &stats), "inodes") - nodes1;
    assert!(made > N as u64, "second listing made {made} inodes");

    // `ls -l b c`, a new process: it pays lookups for b's first batch, then gets attributes.
    let lookups0 = count(&read_stats(pid, &stats), "requests.lookup");
    let o = Command::new("ls")
        .arg("-ln")
        .arg(mnt.join("b"))
        .arg(mnt.join("c"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    for i in 0..N {
        let line = format!(" {i} ");
        let name = format!(" f{i}\n");
        let hits = out
            .lines()
            .filter(|x| format!("{x}\n").ends_with(&name) && x.contains(&line))
            .count();
        assert_eq!(hits, 2, "f{i} with size {i} in b and c:\n{out}");
    }
    let lookups = count(&read_stats(pid, &stats), "requests.lookup") - lookups0;
    assert!(
        (N as u64..=N as u64 + 4).contains(&lookups),
        "ls -l b c took {lookups} lookups"
    );

    // `find`, a new process that never stats: no inodes for d's files.
    let nodes1 = count(&read_stats(pid, &stats), "inodes");
    let o = Command::new("find").arg(mnt.join("d")).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), N + 2);
    let made = count(&read_stats(pid, &stats), "inodes") - nodes1;
    assert!(made <= 2, "find made {made} inodes");

    // `ls -l f`, the next process of a program known to use what it lists: no lookups.
    let lookups0 = count(&read_stats(pid, &stats), "requests.lookup");
    let o = Command::new("ls")
        .arg("-ln")
        .arg(mnt.join("f"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), N + 2);
    let lookups = count(&read_stats(pid, &stats), "requests.lookup") - lookups0;
    assert!(lookups <= 4, "a second ls -l took {lookups} lookups");

    // Listings change nothing on disk (the upper holds only our work dir).
    let upper = names_but(&u, ".wh..wh.unionfs");
    assert!(upper.is_empty(), "{upper:?}");
    assert_eq!(fs::read(l.join("a/f3")).unwrap(), b"xxx");
}
