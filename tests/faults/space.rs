//! Issue 17, "Faults and bad input": a full upper filesystem (ENOSPC), a quota (EDQUOT) and a
//! read-only upper (EROFS: mounted read-only with a warning, or turned read-only under us).
//!
//! The upper and work dir sit on a small private tmpfs. Filler beside the upper uses up its
//! inodes (`nr_inodes=`: creates, mkdir, whiteouts, hard links and xattrs need them) or its
//! pages (`size=`: file data), then frees 0, 1, 2, ... units again: each operation is tried at
//! every amount of free space until it fits, so every step inside it (ancestor copy-up,
//! staging, origin xattr, whiteout, rename) meets the full disk once. Each failed try must
//! answer ENOSPC, leave the view exactly as it was, leave no staging entry, and the lower
//! unchanged (checked when the union drops); the try that fits must do the whole operation,
//! and a remount must show the same view.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::common::*;

/// Tries `op` with the upper's filesystem full but for 0, `step`, 2 `step`, ... free units of
/// `fill` until it succeeds; returns how many tries failed (with ENOSPC, changing nothing).
fn until_it_fits(
    u: &Union,
    fill: Fill,
    step: usize,
    what: &str,
    op: impl Fn(&Union) -> io::Result<()>,
) -> usize {
    let before = view_snapshot(&u.mnt);
    let inos = view_inos(&u.mnt);
    let mut free = 0;
    let mut failed = 0;
    loop {
        u.fill_upper_fs(fill, free);
        match op(u) {
            Ok(()) => break,
            Err(e) => {
                assert_eq!(
                    e.raw_os_error(),
                    Some(libc::ENOSPC),
                    "{what} with {free} free {fill:?}: expected ENOSPC, got {e}"
                );
                failed += 1;
                let diff = diff_snapshots(&before, &view_snapshot(&u.mnt));
                assert!(
                    diff.is_empty(),
                    "{what} failed with {free} free {fill:?} but changed the view:\n{}",
                    diff.join("\n")
                );
                assert_eq!(
                    inos,
                    view_inos(&u.mnt),
                    "{what} failed with {free} free {fill:?} but changed inode numbers"
                );
                let left = u.stage_leftovers();
                assert!(
                    left.is_empty(),
                    "{what} failed with {free} free {fill:?} and left staging entries: {left:?}"
                );
            }
        }
        free += step;
        assert!(free < 2000, "{what} never fit");
    }
    u.free_upper_fs();
    assert!(
        failed > 0,
        "{what} succeeded on a full upper: the test did not produce the fault"
    );
    eprintln!("{what}: {failed} tries failed with ENOSPC before it fit");
    failed
}

/// st_ino of every entry of the view: a failed change must not change any (the kernel keeps
/// its inodes, so a copy that lost its origin would no longer match them).
fn view_inos(root: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {p:?}: {e}"));
            if md.is_dir() {
                todo.push(p.clone());
            }
            out.insert(p.strip_prefix(root).unwrap().to_path_buf(), md.ino());
        }
    }
    out
}

/// The view now, a remount, and the view again: they must be the same, inode numbers
/// included (nothing the kernel cached hid a state the upper on disk does not hold).
fn remount_keeps_view(u: &mut Union) {
    // A directory's st_size is its filesystem's business: a lower directory copied into the
    // tmpfs upper reports another size once the kernel asks again.
    let view = |u: &Union| {
        let mut s = view_snapshot(&u.mnt);
        for n in s.nodes.values_mut().filter(|n| n.kind == Kind::Dir) {
            n.size = 0;
        }
        s
    };
    let before = view(u);
    let inos = view_inos(&u.mnt);
    u.remount();
    let diff = diff_snapshots(&before, &view(u));
    assert!(
        diff.is_empty(),
        "the view changed across a remount:\n{}",
        diff.join("\n")
    );
    assert_eq!(
        inos,
        view_inos(&u.mnt),
        "inode numbers changed across a remount"
    );
    assert!(u.stage_leftovers().is_empty());
}

fn layers() -> Stack {
    Stack::new()
        .upper_tmpfs("size=4m,nr_inodes=400")
        .lower([
            file("a", "lower a"),
            file("b", "lower b"),
            file("x/y/z/deep", "deep"),
            file("x/y/other", "other"),
            dir("empty"),
            file("r", "renamed"),
            file("rd/one", "1"),
            file("rd/sub/two", "2"),
            file("attr", "xattr me"),
            file("mode", "chmod me"),
            file("link", "link me"),
            file("gone", "deleted then created"),
        ])
        .upper([file("up", "upper file"), wh("gone")])
}

#[test]
fn enospc_out_of_inodes_every_namespace_change() {
    if is_kernel() {
        eprintln!("SKIP on kernel: the sweep checks the daemon's staging");
        return;
    }
    let Some(mut u) = Union::mount(layers()) else {
        return;
    };
    let i = Fill::Inodes;
    let mut tries = 0;
    tries += until_it_fits(&u, i, 1, "create", |u| {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(u.m("new"))?
            .write_all(b"n")
    });
    tries += until_it_fits(&u, i, 1, "create over a whiteout", |u| {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(u.m("gone"))
            .map(drop)
    });
    tries += until_it_fits(&u, i, 1, "mkdir in a lower dir", |u| {
        fs::create_dir(u.m("x/y/nd"))
    });
    tries += until_it_fits(&u, i, 1, "symlink", |u| {
        std::os::unix::fs::symlink("a", u.m("sl"))
    });
    tries += until_it_fits(&u, i, 1, "mkfifo", |u| {
        nix::unistd::mkfifo(&u.m("ff"), nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(io::Error::from)
    });
    tries += until_it_fits(&u, i, 1, "hard link of a lower file", |u| {
        fs::hard_link(u.m("link"), u.m("link2"))
    });
    tries += until_it_fits(&u, i, 1, "unlink (whiteout)", |u| fs::remove_file(u.m("a")));
    tries += until_it_fits(&u, i, 1, "unlink deep (ancestors + whiteout)", |u| {
        fs::remove_file(u.m("x/y/z/deep"))
    });
    tries += until_it_fits(&u, i, 1, "rmdir", |u| fs::remove_dir(u.m("empty")));
    tries += until_it_fits(&u, i, 1, "rename of a lower file", |u| {
        fs::rename(u.m("r"), u.m("x/r2"))
    });
    tries += until_it_fits(&u, i, 1, "rename of a lower dir", |u| {
        fs::rename(u.m("rd"), u.m("rd2"))
    });
    tries += until_it_fits(&u, i, 1, "setxattr on a lower file", |u| {
        lsetxattr(&u.m("attr"), "user.k", &[7u8; 300])
    });
    tries += until_it_fits(&u, i, 1, "setxattr on an upper file", |u| {
        lsetxattr(&u.m("up"), "user.k", &[8u8; 300])
    });
    tries += until_it_fits(&u, i, 1, "chmod of a lower file", |u| {
        fs::set_permissions(u.m("mode"), fs::Permissions::from_mode(0o600))
    });
    eprintln!("out of inodes: {tries} failed tries in all");

    // Every operation, once it fit, did all it should: in the view...
    let names = u.names("");
    for n in ["new", "gone", "sl", "ff", "link2", "rd2", "up"] {
        assert!(names.contains(n), "{n} missing from {names:?}");
    }
    for n in ["a", "empty", "r", "rd"] {
        assert!(!names.contains(n), "{n} still in {names:?}");
    }
    assert_eq!(u.read_str("new"), "n");
    assert_eq!(u.read("gone"), b"");
    assert_eq!(u.names("x/y"), set(&["nd", "other", "z"]));
    assert_eq!(u.names("x/y/z"), set(&[]));
    assert_eq!(u.read_str("x/r2"), "renamed");
    assert_eq!(u.names("rd2"), set(&["one", "sub"]));
    assert_eq!(u.read_str("rd2/sub/two"), "2");
    assert_eq!(lgetxattr(&u.m("attr"), "user.k").unwrap(), [7u8; 300]);
    assert_eq!(lgetxattr(&u.m("up"), "user.k").unwrap(), [8u8; 300]);
    assert_eq!(u.stat("mode").mode() & 0o777, 0o600);
    assert_eq!(u.stat("link").ino(), u.stat("link2").ino());
    // ... and in the upper on disk.
    for n in ["a", "x/y/z/deep", "empty", "r", "rd"] {
        u.assert_upper_whiteout(n);
    }
    u.assert_no_upper_whiteout("gone");
    u.assert_upper_file("x/r2", "renamed");
    remount_keeps_view(&mut u);
    u.check_upper_is_layer_diff();
}

#[test]
fn enospc_full_data_copy_up_and_write() {
    if is_kernel() {
        eprintln!("SKIP on kernel: the sweep checks the daemon's staging");
        return;
    }
    const BIG: usize = 512 << 10;
    let big: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
    let stack = Stack::new().upper_tmpfs("size=2m,nr_inodes=400").lower([
        file("d/big", &big),
        file("d/big2", &big),
        file("keep", "k"),
    ]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };
    let b = Fill::Blocks;
    // A copy-up needs room for the whole file: 128 pages; tried every 16.
    // (The open copies up; the write after it is tried on its own below: a write that fails
    // for want of space still sets the file's mtime, on every filesystem.)
    let mut tries = until_it_fits(&u, b, 16, "open a lower file for writing (copy-up)", |u| {
        fs::OpenOptions::new()
            .append(true)
            .open(u.m("d/big"))
            .map(drop)
    });
    // The copy may have taken the last free page (it fits with 0-15 to spare): the append's
    // new page must not depend on that.
    u.free_upper_fs();
    u.append("d/big", b"+tail");
    let mut want = big.clone();
    want.extend_from_slice(b"+tail");
    assert_eq!(u.read("d/big"), want);
    u.assert_upper_file("d/big", &want);
    tries += until_it_fits(&u, b, 16, "rename of a lower file (copy-up)", |u| {
        fs::rename(u.m("d/big2"), u.m("moved"))
    });
    assert_eq!(u.read("moved"), big);
    u.assert_upper_whiteout("d/big2");

    // Writes to an upper file: with the disk full the write fails, the file keeps what it had.
    u.write("w", "start");
    u.fill_upper_fs(b, 0);
    let r = fs::OpenOptions::new()
        .write(true)
        .open(u.m("w"))
        .and_then(|f| f.write_all_at(&big, 0).and_then(|()| f.sync_all()));
    assert_errno(r, libc::ENOSPC, "write to a full upper");
    let len = u.stat("w").len();
    assert_eq!(
        len,
        fs::metadata(u.u("w")).unwrap().len(),
        "view and upper disagree on the size"
    );
    u.free_upper_fs();
    fs::OpenOptions::new()
        .write(true)
        .open(u.m("w"))
        .and_then(|f| f.write_all_at(&big, 0))
        .unwrap();
    assert_eq!(u.read("w"), big);
    tries += 1;
    eprintln!("full data: {tries} failed tries in all");
    remount_keeps_view(&mut u);
    assert_eq!(u.read("d/big"), want);
    u.check_upper_is_layer_diff();
}

#[test]
fn enospc_write_through_the_daemon() {
    // Without passthrough every write is a request the daemon answers: its errno must be the
    // filesystem's, and a copy-up through a write fd too.
    if is_kernel() {
        eprintln!("SKIP on kernel: no daemon");
        return;
    }
    let big: Vec<u8> = vec![0x33; 256 << 10];
    let stack = Stack::new()
        .upper_tmpfs("size=1m,nr_inodes=100")
        .unionfs_opt("passthrough=off")
        .lower([file("l", &big)]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };
    u.write("f", "x");
    u.fill_upper_fs(Fill::Blocks, 0);
    let r = fs::OpenOptions::new()
        .write(true)
        .open(u.m("f"))
        .and_then(|f| f.write_all_at(&big, 0));
    assert_errno(r, libc::ENOSPC, "write through the daemon");
    assert_errno(
        fs::OpenOptions::new().write(true).open(u.m("l")).map(drop),
        libc::ENOSPC,
        "copy-up on open",
    );
    assert_eq!(u.read("l"), big);
    assert!(u.stage_leftovers().is_empty());
    u.free_upper_fs();
    fs::OpenOptions::new()
        .write(true)
        .open(u.m("f"))
        .and_then(|f| f.write_all_at(&big, 0))
        .unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(u.m("l"))
        .and_then(|f| f.write_all_at(b"Y", 0))
        .unwrap();
    assert_eq!(u.read("l")[..2], *b"Y3");
    remount_keeps_view(&mut u);
}

#[test]
fn edquot_from_a_quota_on_the_upper() {
    // This kernel has no tmpfs quotas and no quota format for ext4 (CONFIG_TMPFS_QUOTA and
    // CONFIG_QFMT_V2 are off), so the quota is a btrfs quota group on the upper's subvolume:
    // it binds root too, so the daemon runs as it always does.
    if is_kernel() {
        eprintln!("SKIP on kernel: checks the daemon's staging");
        return;
    }
    let big: Vec<u8> = (0..2 << 20).map(|i| (i % 249) as u8).collect();
    let stack = Stack::new().upper_btrfs_quota("1M").lower([
        file("big", &big),
        file("d/small", "s"),
        file("gone", "g"),
    ]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };
    let before = view_snapshot(&u.mnt);
    // Copy-up of a 2 MiB file into a 1 MiB quota.
    let r = fs::OpenOptions::new()
        .append(true)
        .open(u.m("big"))
        .map(drop);
    assert_errno(r, libc::EDQUOT, "copy-up past the quota");
    assert!(
        fs::symlink_metadata(u.u("big")).is_err(),
        "a partial copy is in the upper"
    );
    assert!(u.stage_leftovers().is_empty(), "{:?}", u.stage_leftovers());
    // A new file written past the quota: the write fails, with EDQUOT.
    let r = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(u.m("new"))
        .and_then(|mut f| f.write_all(&big).and_then(|()| f.sync_all()));
    assert_errno(r, libc::EDQUOT, "write past the quota");
    fs::remove_file(u.m("new")).unwrap();
    // btrfs gives a removed file's space back to its quota group when the transaction commits.
    run("sync", &["-f".as_ref(), u.upper_fs().as_os_str()]);
    // Nothing else changed; the lowers did not either (checked when `u` drops).
    let diff = diff_snapshots(&before, &view_snapshot(&u.mnt));
    assert!(diff.is_empty(), "{}", diff.join("\n"));
    // Within the quota small changes work: copy-up, whiteout, create.
    u.append("d/small", b"+");
    fs::remove_file(u.m("gone")).unwrap();
    u.write("ok", "fits");
    // Raise the quota: the same copy-up succeeds.
    let sv = u.upper_fs();
    run(
        "btrfs",
        &[
            "qgroup".as_ref(),
            "limit".as_ref(),
            "none".as_ref(),
            sv.as_os_str(),
        ],
    );
    u.append("big", b"+");
    assert_eq!(u.stat("big").len(), big.len() as u64 + 1);
    remount_keeps_view(&mut u);
    assert_eq!(u.read_str("d/small"), "s+");
    u.assert_upper_whiteout("gone");
    u.check_upper_is_layer_diff();
}

#[test]
fn deleting_through_the_union_makes_room() {
    // On a full upper a user makes room by deleting through the union: the space must come
    // back at once, also when the daemon kept the deleted file's passthrough registration
    // (which holds the file open) after its last close.
    if is_kernel() {
        eprintln!("SKIP on kernel: checks the daemon's open files");
        return;
    }
    let big: Vec<u8> = vec![0x44; 700 << 10];
    let stack = Stack::new()
        .upper_tmpfs("size=2m,nr_inodes=100")
        .lower([file("l", &big), file("l2", &big)]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };
    // 2048 KiB: 800 + 900 KiB of files leave too little for a 700 KiB copy-up.
    u.write("hog", vec![0x55u8; 800 << 10]);
    u.write("hog2", vec![0x66u8; 900 << 10]);
    assert_eq!(u.read("hog2").len(), 900 << 10);
    let copy_up = |u: &Union, name: &str| {
        fs::OpenOptions::new()
            .append(true)
            .open(u.m(name))
            .map(drop)
    };
    assert_errno(copy_up(&u, "l"), libc::ENOSPC, "copy-up on a full upper");
    fs::remove_file(u.m("hog")).unwrap();
    copy_up(&u, "l").expect("copy-up after deleting 800 KiB through the union");
    assert_errno(
        copy_up(&u, "l2"),
        libc::ENOSPC,
        "second copy-up on a full upper",
    );
    // Renaming over a file frees the replaced one the same way.
    u.write("small", "s");
    fs::rename(u.m("small"), u.m("hog2")).unwrap();
    copy_up(&u, "l2").expect("copy-up after renaming over a 900 KiB file");
    assert!(u.stage_leftovers().is_empty());
    remount_keeps_view(&mut u);
    assert_eq!(u.names(""), set(&["hog2", "l", "l2"]));
}

#[test]
fn read_only_upper_mounts_read_only_with_a_warning() {
    if is_kernel() {
        eprintln!("SKIP on kernel: unionfs's own fallback");
        return;
    }
    let stack = Stack::new()
        .upper_tmpfs("size=1m")
        .lower([file("a", "lower a"), file("b", "lower b")])
        .upper([file("a", "upper a"), file("c", "upper c"), wh("b")]);
    let Some(mut u) = Union::build(stack) else {
        return;
    };
    // The upper's filesystem is read-only before the daemon starts.
    run(
        "mount",
        &[
            "-o".as_ref(),
            "remount,ro".as_ref(),
            u.upper_fs_mount().as_os_str(),
        ],
    );
    u.do_mount();
    let log = u.daemon_log();
    assert!(
        log.contains("read-only") && log.contains("warning"),
        "no warning about the read-only upper: {log}"
    );
    // The upper still shows, read-only, over the lowers.
    assert_eq!(u.names(""), set(&["a", "c"]));
    assert_eq!(u.read_str("a"), "upper a");
    assert_errno(fs::write(u.m("c"), "x"), libc::EROFS, "write");
    assert_errno(fs::write(u.m("new"), "x"), libc::EROFS, "create");
    assert_errno(fs::remove_file(u.m("a")), libc::EROFS, "unlink");
    assert!(fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.contains(u.mnt.to_str().unwrap()) && l.contains(" ro,")));
    u.unmount();
    run(
        "mount",
        &[
            "-o".as_ref(),
            "remount,rw".as_ref(),
            u.upper_fs_mount().as_os_str(),
        ],
    );
    u.do_mount();
    u.write("c", "writable again");
    assert_eq!(u.read_str("c"), "writable again");
}

#[test]
fn upper_turning_read_only_while_mounted_gives_erofs() {
    if is_kernel() {
        eprintln!("SKIP on kernel: checks the daemon's errno");
        return;
    }
    // Without passthrough the daemon keeps no writable file open after a close (with it, the
    // cache of recently closed passthrough files holds some, and a read-only remount of the
    // upper's filesystem fails with EBUSY while the union is mounted).
    let stack = Stack::new()
        .upper_tmpfs("size=1m")
        .unionfs_opt("passthrough=off")
        .lower([file("a", "lower a"), file("d/x", "x")]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };
    u.write("before", "b");
    // The kernel sends RELEASE after close(2) returns: until the daemon has it, the upper file
    // is still open for writing and a read-only remount fails with EBUSY.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let out = std::process::Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(u.upper_fs_mount())
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("busy") && std::time::Instant::now() < end,
            "remount,ro of the upper: {err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let m = |r: &str| u.m(r);
    let tries: Vec<(&str, io::Result<()>)> = vec![
        (
            "copy-up",
            fs::OpenOptions::new().append(true).open(m("a")).map(drop),
        ),
        ("create", fs::write(m("new"), "x")),
        ("unlink", fs::remove_file(m("d/x"))),
        ("mkdir", fs::create_dir(m("nd"))),
        ("rename", fs::rename(m("before"), m("after"))),
        ("setxattr", lsetxattr(&m("before"), "user.k", b"v")),
        (
            "chmod",
            fs::set_permissions(m("a"), fs::Permissions::from_mode(0o600)),
        ),
    ];
    for (what, r) in tries {
        assert_errno(r, libc::EROFS, what);
    }
    assert_eq!(u.names(""), set(&["a", "before", "d"]));
    assert_eq!(u.read_str("a"), "lower a");
    run(
        "mount",
        &[
            "-o".as_ref(),
            "remount,rw".as_ref(),
            u.upper_fs_mount().as_os_str(),
        ],
    );
    fs::remove_file(u.m("d/x")).unwrap();
    fs::rename(u.m("before"), u.m("after")).unwrap();
    remount_keeps_view(&mut u);
    assert_eq!(u.names(""), set(&["a", "after", "d"]));
    u.assert_upper_whiteout("d/x");
}

/// Unmounts a bind mount the test made, also when it fails.
struct Bind(std::path::PathBuf);

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The mount options /proc/self/mounts shows for `mnt`.
fn mount_opts(mnt: &Path) -> String {
    fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(1) == mnt.to_str())
        .and_then(|l| l.split(' ').nth(3).map(str::to_string))
        .unwrap_or_else(|| panic!("{mnt:?} is not mounted"))
}

#[test]
fn read_only_bind_mounted_upper_and_o_ro_show_the_upper() {
    if is_kernel() {
        eprintln!("SKIP on kernel: unionfs's own fallback");
        return;
    }
    let stack = Stack::new()
        .lower([file("a", "lower a"), file("b", "lower b"), file("d/x", "x")])
        .upper([
            file("a", "upper a"),
            file("c", "upper c"),
            wh("b"),
            opq("d"),
        ]);
    let Some(mut u) = Union::build(stack) else {
        return;
    };
    let up = u.u("");
    let o = |s: &'static str| -> &std::ffi::OsStr { s.as_ref() };
    run("mount", &[o("--bind"), up.as_os_str(), up.as_os_str()]);
    let bind = Bind(up.clone());
    run("mount", &[o("-o"), o("remount,bind,ro"), up.as_os_str()]);
    u.do_mount();
    assert!(
        u.daemon_log().contains("warning: upper layer"),
        "no warning: {}",
        u.daemon_log()
    );
    assert!(
        mount_opts(&u.mnt).starts_with("ro"),
        "{}",
        mount_opts(&u.mnt)
    );
    assert_eq!(u.names(""), set(&["a", "c", "d"]));
    assert_eq!(u.names("d"), set(&[]));
    assert_errno(fs::write(u.m("a"), "x"), libc::EROFS, "write");
    assert_errno(fs::create_dir(u.m("nd")), libc::EROFS, "mkdir");
    u.unmount();
    drop(bind);
    u.assert_upper_unchanged();

    // `-o ro` on a writable upper: the same view, read-only, and the upper untouched (not
    // even the work dir is made).
    u.stack.unionfs_opts.push("ro".into());
    u.do_mount();
    assert!(
        mount_opts(&u.mnt).starts_with("ro"),
        "{}",
        mount_opts(&u.mnt)
    );
    assert_eq!(u.names(""), set(&["a", "c", "d"]));
    assert_eq!(u.read_str("c"), "upper c");
    assert_errno(fs::remove_file(u.m("c")), libc::EROFS, "unlink");
    assert!(
        !u.u(".wh..wh.unionfs").exists(),
        "a read-only mount made the work dir"
    );
    u.assert_upper_unchanged();
}
