//! docs/SCENARIOS.md "Deletion", lines 12–19.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};

use std::time::Instant;

use crate::common::*;

#[test]
fn s12_rm_lower_file_writes_whiteout() {
    let stack = Stack::new().lower([file("f", "L1"), file("d/g", "L1")]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };

    fs::remove_file(u.m("f")).unwrap();
    fs::remove_file(u.m("d/g")).unwrap();
    u.assert_enoent("f");
    u.assert_enoent("d/g");
    assert_eq!(u.names(""), set(&["d"]));
    assert_eq!(u.names("d"), set(&[]));
    u.assert_upper_whiteout("f");
    u.assert_upper_whiteout("d/g");
    u.remount();
    u.assert_enoent("f");
    u.assert_enoent("d/g");
    u.check_upper_is_layer_diff();
}

#[test]
fn s13_rm_upper_only_file_leaves_no_whiteout() {
    let stack = Stack::new()
        .lower([file("other", "L1"), dir("d")])
        .upper([file("pre", "U")]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };

    u.write("new", "x");
    u.write("d/new", "x");
    for f in ["pre", "new", "d/new"] {
        fs::remove_file(u.m(f)).unwrap();
        u.assert_enoent(f);
        u.assert_upper_absent(f);
    }
    assert_eq!(u.names(""), set(&["d", "other"]));
    u.check_upper_is_layer_diff();
}

#[test]
fn s14_rmdir_merged_dir_needs_all_children_removed() {
    let stack = Stack::new()
        .lower([file("d/a", "L1")])
        .lower([file("d/b", "L2"), dir("d/sub")]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };

    assert_errno(fs::remove_dir(u.m("d")), libc::ENOTEMPTY, "rmdir d");
    fs::remove_file(u.m("d/a")).unwrap();
    assert_errno(fs::remove_dir(u.m("d")), libc::ENOTEMPTY, "rmdir d");
    fs::remove_file(u.m("d/b")).unwrap();
    fs::remove_dir(u.m("d/sub")).unwrap();
    fs::remove_dir(u.m("d")).unwrap();
    u.assert_enoent("d");
    u.assert_upper_whiteout("d");
    u.remount();
    u.assert_enoent("d");
    assert_eq!(u.names(""), set(&[]));
    u.check_upper_is_layer_diff();
}

#[test]
fn s15_mkdir_over_whited_out_dir_is_empty() {
    let stack = Stack::new()
        .lower([file("d/a", "L1"), file("e/b", "L1")])
        .upper([wh("e")]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };

    fs::remove_dir_all(u.m("d")).unwrap();
    fs::create_dir(u.m("d")).unwrap();
    fs::create_dir(u.m("e")).unwrap();
    for _ in 0..2 {
        for d in ["d", "e"] {
            assert!(u.stat(d).is_dir());
            assert_eq!(u.names(d), set(&[]));
            u.assert_upper_opaque(d);
            u.assert_no_upper_whiteout(d);
        }
        u.assert_enoent("d/a");
        u.assert_enoent("e/b");
        u.remount();
    }
    // Removing the recreated dir must hide the lower one again.
    fs::remove_dir(u.m("e")).unwrap();
    u.remount();
    u.assert_enoent("e");
    u.assert_upper_whiteout("e");
    u.check_upper_is_layer_diff();
}

#[test]
fn s16_create_over_whiteout_removes_it() {
    let stack = Stack::new()
        .lower([
            file("f", "L1"),
            symlink("l", "old-target"),
            file("w", "L1"),
            file("ln", "L1"),
            file("nod", "L1"),
        ])
        .upper([wh("w")]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };

    fs::remove_file(u.m("f")).unwrap();
    fs::remove_file(u.m("l")).unwrap();
    u.write("f", "new");
    std::os::unix::fs::symlink("new-target", u.m("l")).unwrap();
    u.write("w", "new w");
    // Hard link and mknod over whited-out names, too.
    fs::remove_file(u.m("ln")).unwrap();
    fs::hard_link(u.m("w"), u.m("ln")).unwrap();
    fs::remove_file(u.m("nod")).unwrap();
    nix::unistd::mkfifo(&u.m("nod"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for _ in 0..2 {
        assert_eq!(u.read_str("f"), "new");
        assert_eq!(u.read_str("w"), "new w");
        assert_eq!(
            fs::read_link(u.m("l")).unwrap().to_str().unwrap(),
            "new-target"
        );
        assert_eq!(u.read_str("ln"), "new w");
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(
            &u.stat("nod").file_type()
        ));
        for n in ["f", "l", "w", "ln", "nod"] {
            u.assert_no_upper_whiteout(n);
        }
        u.assert_upper_file("f", "new");
        u.remount();
    }
    u.check_upper_is_layer_diff();
}

fn open_unlink_rw(u: &Union, name: &str, old: &str) {
    let mut fd = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(u.m(name))
        .unwrap();
    fs::remove_file(u.m(name)).unwrap();
    u.assert_enoent(name);
    let mut s = String::new();
    fd.read_to_string(&mut s).unwrap();
    assert_eq!(s, old);
    fd.write_all(b"+more").unwrap();
    fd.seek(SeekFrom::Start(0)).unwrap();
    s.clear();
    fd.read_to_string(&mut s).unwrap();
    assert_eq!(s, format!("{old}+more"));
    let names = u.names("");
    assert!(!names.contains(name), "{name} still listed: {names:?}");
    assert!(
        names.iter().all(|n| !n.starts_with(".fuse_hidden")),
        "helper file visible: {names:?}"
    );
    // Keep fd open while checking: the helper must not be visible in the meantime.
    drop(fd);
}

#[test]
fn s17_open_unlinked_file_keeps_working() {
    let stack = Stack::new()
        .lower([file("lo", "lower"), file("keep", "k")])
        .upper([file("up", "upper")]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };

    open_unlink_rw(&u, "lo", "lower");
    open_unlink_rw(&u, "up", "upper");
    assert_eq!(u.names(""), set(&["keep"]));
    u.assert_upper_whiteout("lo");
    u.assert_upper_absent("up");
    u.remount();
    assert_eq!(u.names(""), set(&["keep"]));
    let leaked: Vec<_> = u
        .upper_tree()
        .into_iter()
        .filter(|p| !p.as_os_str().is_empty() && p.to_str() != Some(".wh.lo"))
        .filter(|p| !(is_kernel() && p.to_str() == Some("lo")))
        .collect();
    assert!(leaked.is_empty(), "leftovers in the upper: {leaked:?}");
    u.check_upper_is_layer_diff();
}

#[test]
fn s18_rm_rf_10000_entries_across_layers() {
    // 100 directories of 100 files; each directory exists in both lowers and the upper, and the
    // files are spread across them.
    let (mut l1, mut l2, mut up) = (vec![], vec![], vec![]);
    for d in 0..100 {
        for f in 0..100 {
            let p = format!("t/d{d}/f{f}");
            match f % 3 {
                0 => l1.push(file(&p, "")),
                1 => l2.push(file(&p, "")),
                _ => up.push(file(&p, "")),
            }
        }
    }
    let stack = Stack::new().lower(l1).lower(l2).upper(up);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };

    let t = Instant::now();
    let out = std::process::Command::new("rm")
        .arg("-rf")
        .arg(u.m("t"))
        .status()
        .unwrap();
    assert!(out.success());
    eprintln!("rm -rf of 10,000 entries: {:?}", t.elapsed());
    u.assert_enoent("t");
    assert_eq!(u.names(""), set(&[]));
    u.assert_upper_whiteout("t");
    u.remount();
    u.assert_enoent("t");
    assert_eq!(u.names(""), set(&[]));
    u.check_upper_is_layer_diff();
}

#[test]
fn s19_no_whiteout_inside_opaque_dir() {
    let stack = Stack::new()
        .lower([file("d/a", "L1"), file("d/b", "L1")])
        .upper([opq("o"), file("o/x", "U")])
        .lower([file("o/x", "L2"), file("o/y", "L2")]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };

    // An upper dir made opaque through the mount.
    fs::remove_dir_all(u.m("d")).unwrap();
    fs::create_dir(u.m("d")).unwrap();
    u.write("d/a", "new");
    u.write("d/c", "new");
    fs::remove_file(u.m("d/a")).unwrap();
    fs::rename(u.m("d/c"), u.m("d/b")).unwrap();
    fs::remove_file(u.m("d/b")).unwrap();
    // An opaque upper dir from the layers.
    fs::remove_file(u.m("o/x")).unwrap();

    for _ in 0..2 {
        assert_eq!(u.names("d"), set(&[]));
        assert_eq!(u.names("o"), set(&[]));
        for p in ["d/a", "d/b", "d/c", "o/x", "o/y"] {
            u.assert_upper_absent(p);
        }
        let marker: &[&str] = if is_kernel() { &[] } else { &[".wh..wh..opq"] };
        assert_eq!(u.upper_names("d"), set(marker));
        assert_eq!(u.upper_names("o"), set(marker));
        u.remount();
    }
    u.check_upper_is_layer_diff();
}
