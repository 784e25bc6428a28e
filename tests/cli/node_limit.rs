//! `-o max_nodes=N`: past N cached inodes the daemon has the kernel drop unused ones, so a
//! walk of a huge tree keeps the node table bounded, while what is in use (an open file, a
//! working directory, a mount point on a name in the union) stays and works.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use super::fixture::*;
use crate::common::can_mount as fuse_available;

const DIRS: usize = 12;
const PER_DIR: usize = 500;
const LIMIT: u64 = 1000;

fn size_of(d: usize, i: usize) -> u64 {
    ((d * 7 + i) % 13) as u64
}

fn inodes(pid: i32, stats: &Path) -> u64 {
    read_stats(pid, stats)
        .get("inodes")
        .map_or(0, |v| v.parse().unwrap())
}

/// Every file of the tree but `except` (a mount point), stat-ed through the union: (files
/// seen, the first wrong size).
fn walk(mnt: &Path, except: &Path) -> (usize, Option<String>) {
    let mut seen = 0;
    for d in 0..DIRS {
        for i in 0..PER_DIR {
            let p = mnt.join(format!("d{d}/f{i}"));
            if p == except {
                continue;
            }
            let m = fs::symlink_metadata(&p).unwrap();
            if m.len() != size_of(d, i) {
                return (seen, Some(format!("{}: {} bytes", p.display(), m.len())));
            }
            seen += 1;
        }
    }
    (seen, None)
}

#[test]
fn a_walk_past_the_limit_keeps_the_table_bounded_and_what_is_in_use() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("maxnodes");
    let l = fx.dir("l");
    for d in 0..DIRS {
        fs::create_dir_all(l.join(format!("d{d}"))).unwrap();
        for i in 0..PER_DIR {
            fs::write(
                l.join(format!("d{d}/f{i}")),
                vec![b'a' + (i % 26) as u8; size_of(d, i) as usize],
            )
            .unwrap();
        }
    }
    let lower_before = crate::common::snapshot(&l);
    let limit = format!("max_nodes={LIMIT}");
    let (pid, stats, u, mnt) = mount_counting(&mut fx, &l, &["-o", &limit]);

    // In use before the walk: an open file, a working directory, and a file with another
    // file bind-mounted over it (what containers do with /etc/hosts).
    let mut held = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(mnt.join("d0/f12"))
        .unwrap();
    let ino_before = held.metadata().unwrap().ino();
    let cwd_child = Command::new("sh")
        .arg("-c")
        .arg("read line; ls f3; cat f3")
        .current_dir(mnt.join("d1"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let hosts = fx.root.join("hosts");
    fs::write(&hosts, "bound over the union\n").unwrap();
    let target = mnt.join("d2/f5");
    let bound = Command::new("mount")
        .arg("--bind")
        .arg(&hosts)
        .arg(&target)
        .status()
        .unwrap();
    assert!(bound.success(), "bind mount over {}", target.display());
    let _unbind = Unbind(target.clone());

    // Two walks: the second finds every name dropped by the first and looks it up again.
    for round in 0..2 {
        let (seen, wrong) = walk(&mnt, &target);
        assert!(wrong.is_none(), "walk {round}: {}", wrong.unwrap());
        assert_eq!(seen, DIRS * PER_DIR - 1);
    }
    wait_until("the node table back under the limit", || {
        inodes(pid, &stats) <= LIMIT
    });
    let forgets: u64 = read_stats(pid, &stats)
        .get("requests.forget")
        .map_or(0, |v| v.parse().unwrap());
    assert!(
        forgets as usize >= DIRS * PER_DIR - LIMIT as usize,
        "only {forgets} FORGETs: the kernel was not asked to drop inodes"
    );

    // What was in use still works.
    assert!(
        is_mounted(&target),
        "the bind mount over {} went",
        target.display()
    );
    assert_eq!(
        fs::read_to_string(&target).unwrap(),
        "bound over the union\n"
    );
    let mut cwd_child = cwd_child;
    cwd_child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = cwd_child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("f3\n{}", "d".repeat(size_of(1, 3) as usize))
    );
    let mut data = String::new();
    held.read_to_string(&mut data).unwrap();
    assert_eq!(data, "m".repeat(size_of(0, 12) as usize));
    // A write through the file opened before the walk copies it up.
    held.seek(SeekFrom::Start(0)).unwrap();
    held.write_all(b"written").unwrap();
    drop(held);
    let want = format!("written{}", "m".repeat(size_of(0, 12) as usize - 7));
    assert_eq!(fs::read_to_string(mnt.join("d0/f12")).unwrap(), want);
    assert_eq!(fs::read_to_string(u.join("d0/f12")).unwrap(), want);
    assert_eq!(
        fs::metadata(mnt.join("d0/f12")).unwrap().ino(),
        ino_before,
        "st_ino of d0/f12 changed with its copy-up"
    );
    // The upper holds that copy only (and our work dir); the lower never changed.
    let upper: Vec<_> = names_but(&u, ".wh..wh.unionfs");
    assert_eq!(upper, vec![std::ffi::OsString::from("d0")]);
    assert_eq!(names_but(&u.join("d0"), ""), vec!["f12"]);
    assert!(
        crate::common::snapshot(&l) == lower_before,
        "the lower changed"
    );
}

/// Unmounts a bind mount when dropped (before the union goes, even on failure).
struct Unbind(std::path::PathBuf);

impl Drop for Unbind {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn without_a_limit_the_table_follows_the_kernel() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("nolimit");
    let l = fx.dir("l");
    fs::create_dir_all(l.join("d")).unwrap();
    for i in 0..3000 {
        fs::write(l.join(format!("d/f{i}")), b"x").unwrap();
    }
    let (pid, stats, _, mnt) = mount_counting(&mut fx, &l, &["-o", "max_nodes=0"]);
    for i in 0..3000 {
        fs::symlink_metadata(mnt.join(format!("d/f{i}"))).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let held = inodes(pid, &stats);
    assert!(held > 3000, "only {held} nodes held without a limit");
}
