//! Directory trees thousands of levels deep: walked, copied up, re-resolved and renamed.

use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstatat, mkdirat, Mode};

use crate::common::*;

/// Opens `name` in `dir` as a directory (`O_PATH` when `path_only`).
fn sub(dir: impl AsFd, name: &str, path_only: bool) -> nix::Result<OwnedFd> {
    let extra = if path_only {
        OFlag::O_PATH
    } else {
        OFlag::O_RDONLY
    };
    // CLOEXEC: a process another test starts meanwhile must not keep the mount busy.
    openat(
        dir,
        name,
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | extra,
        Mode::empty(),
    )
}

/// Walks `depth` levels of `d` below `root`; returns the deepest directory.
fn walk_down(root: &Path, depth: usize) -> nix::Result<OwnedFd> {
    let mut cur = sub(nix::fcntl::AT_FDCWD, root.to_str().unwrap(), true)?;
    for _ in 0..depth {
        cur = sub(&cur, "d", true)?;
    }
    Ok(cur)
}

/// Removes a tree of any depth (GNU rm walks it without a path or a stack per level).
fn rm_rf(p: &Path) {
    let _ = Command::new("rm").arg("-rf").arg(p).status();
}

/// Removes these trees when the test ends, passing or not (deep ones before the union's own
/// cleanup, whose recursive remove is not made for 10,000 levels).
pub(super) struct Deep(pub(super) Vec<PathBuf>);

impl Drop for Deep {
    fn drop(&mut self) {
        for p in &self.0 {
            rm_rf(p);
        }
    }
}

/// A union whose second lower holds `deep/d/d/.../d/leaf` (`depth` levels of `d`) beside a
/// lower directory `x`, outside the fixture's snapshots (their paths would pass PATH_MAX; the
/// test checks the deep lower itself). The guard removes the deep trees, passing or not.
fn deep_union(depth: usize) -> Option<(Union, Deep, PathBuf)> {
    let mut u = Union::build(Stack::new().lower([file("top", "t"), file("x/f", "x")]))?;
    let deep_lower = u.root.join("deep-lower");
    let guard = Deep(vec![deep_lower.clone(), u.u("deep"), u.u("deep2")]);
    fs::create_dir(&deep_lower).unwrap();
    let mut cur = sub(nix::fcntl::AT_FDCWD, deep_lower.to_str().unwrap(), false).unwrap();
    mkdirat(&cur, "deep", Mode::from_bits_truncate(0o755)).unwrap();
    cur = sub(&cur, "deep", false).unwrap();
    for _ in 0..depth {
        mkdirat(&cur, "d", Mode::from_bits_truncate(0o755)).unwrap();
        cur = sub(&cur, "d", false).unwrap();
    }
    let f = openat(
        &cur,
        "leaf",
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    fs::File::from(f).write_all(b"at the bottom").unwrap();
    u.lowers.push(deep_lower.clone());
    u.do_mount();
    Some((u, guard, deep_lower))
}

/// The content of `leaf` below `depth` levels of `root/NAME`.
fn read_leaf(root: &Path, name: &str, depth: usize) -> nix::Result<String> {
    let bottom = walk_down(&root.join(name), depth)?;
    let f = openat(
        &bottom,
        "leaf",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut s = String::new();
    std::io::Read::read_to_string(&mut fs::File::from(f), &mut s).map_err(|_| nix::Error::EIO)?;
    Ok(s)
}

fn daemon_alive(u: &Union) -> bool {
    Path::new(&format!("/proc/{}", u.daemon_pid().unwrap())).exists()
}

#[test]
fn ten_thousand_deep_directories() {
    // Each level is looked up by itself: the daemon names a node by its chain of names, which
    // here is far longer than PATH_MAX (20,000 bytes) and deeper than its old cycle guard
    // (8,192 levels, answered ELOOP). Every request at depth N costs the daemon a walk of N
    // components: this walk takes most of the test's time.
    const DEPTH: usize = 10_000;
    if is_kernel() {
        eprintln!("SKIP on kernel: checks the daemon's inode table");
        return;
    }
    let Some((mut u, _cleanup, deep_lower)) = deep_union(DEPTH) else {
        return;
    };
    let t = Instant::now();
    let mnt = u.mnt.clone();
    let got = within(
        Duration::from_secs(120),
        "walking 10,000 levels",
        move || read_leaf(&mnt, "deep", DEPTH),
    );
    assert_eq!(got.unwrap(), "at the bottom");
    eprintln!("walked and read at depth {DEPTH} in {:?}", t.elapsed());
    // A path that long fails with ENAMETOOLONG, not worse.
    let long = u.m("deep").join("d/".repeat(DEPTH)).join("leaf");
    assert_errno(
        fs::metadata(&long),
        libc::ENAMETOOLONG,
        "a path of 20,000 bytes",
    );
    assert!(daemon_alive(&u), "the daemon died: {}", u.daemon_log());
    let log = u.daemon_log();
    assert!(
        !log.contains("panicked") && !log.contains("overflow"),
        "{log}"
    );
    u.unmount();
    assert_eq!(
        read_leaf(&deep_lower, "deep", DEPTH).unwrap(),
        "at the bottom"
    );
}

#[test]
fn deep_directories_copy_up_re_resolve_and_rename() {
    // 3,000 levels: one stack frame per level in the daemon overflowed a worker thread here
    // (re-resolving stale nodes at 3,000, copying a tree for a rename at 2,000: both crashed
    // the daemon); shallow enough to keep the test short.
    const DEPTH: usize = 3_000;
    if is_kernel() {
        eprintln!("SKIP on kernel: checks the daemon");
        return;
    }
    let Some((mut u, _cleanup, deep_lower)) = deep_union(DEPTH) else {
        return;
    };
    let t = Instant::now();
    let limit = Duration::from_secs(60);
    // Copy-up of the leaf: 3,000 ancestors into the upper. The walk's last directory stays
    // open for the next step.
    let mnt = u.mnt.clone();
    let bottom = within(
        limit,
        "copy-up at depth 3,000",
        move || -> nix::Result<OwnedFd> {
            let bottom = walk_down(&mnt.join("deep"), DEPTH)?;
            let f = openat(
                &bottom,
                "leaf",
                OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            fs::File::from(f)
                .write_all(b"+")
                .map_err(|_| nix::Error::EIO)?;
            Ok(bottom)
        },
    )
    .unwrap();
    eprintln!("copied up at depth {DEPTH} after {:?}", t.elapsed());
    assert_eq!(
        read_leaf(&u.u(""), "deep", DEPTH).unwrap(),
        "at the bottom+"
    );
    // Renaming a lower directory elsewhere makes every node the kernel holds re-resolve its
    // layers on next use, all 3,000 ancestors of the leaf included.
    fs::rename(u.m("x"), u.m("x2")).unwrap();
    let r = within(
        limit,
        "a lookup at depth 3,000 after the nodes went stale",
        move || {
            let f = openat(
                &bottom,
                "leaf",
                OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            fstatat(&f, "", nix::fcntl::AtFlags::AT_EMPTY_PATH).map(|s| s.st_size)
        },
    );
    assert!(daemon_alive(&u), "the daemon died: {}", u.daemon_log());
    assert_eq!(r.unwrap(), 14);
    eprintln!("re-resolved {DEPTH} levels after {:?}", t.elapsed());
    // Renaming the tree copies all of it into the upper.
    let mnt = u.mnt.clone();
    let r = within(limit, "renaming a 3,000-deep tree", move || {
        fs::rename(mnt.join("deep"), mnt.join("deep2"))
    });
    assert!(daemon_alive(&u), "the daemon died: {}", u.daemon_log());
    r.unwrap();
    eprintln!("renamed after {:?}", t.elapsed());
    let log = u.daemon_log();
    assert!(
        !log.contains("panicked") && !log.contains("overflow"),
        "{log}"
    );
    u.unmount();
    // The upper holds the whole tree under its new name, opaque at every level, and a
    // whiteout for the old one; the lower is as it was.
    assert_eq!(
        read_leaf(&u.u(""), "deep2", DEPTH).unwrap(),
        "at the bottom+"
    );
    assert!(u.u(".wh.deep").exists());
    assert!(u.u("deep2/d/d/.wh..wh..opq").exists());
    assert_eq!(
        read_leaf(&deep_lower, "deep", DEPTH).unwrap(),
        "at the bottom"
    );
}
