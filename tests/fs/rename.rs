//! docs/SCENARIOS.md "Rename", lines 31–36.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;

use crate::common::*;

#[test]
fn s31_rename_lower_file_whiteouts_old_name() {
    let stack = Stack::new().lower([file("f", "lower f"), dir("d")]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };

    // An fd opened before the renames keeps writing to the file it opened.
    let fd = fs::OpenOptions::new().read(true).open(u.m("f")).unwrap();
    let mut wfd = fs::OpenOptions::new().append(true).open(u.m("f")).unwrap();
    fs::rename(u.m("f"), u.m("g")).unwrap();
    fs::rename(u.m("g"), u.m("d/h")).unwrap();
    wfd.write_all(b"!").unwrap();
    drop(wfd);
    let mut got = String::new();
    (&fd).read_to_string(&mut got).unwrap();
    assert!(got.starts_with("lower f"), "old read fd reads {got:?}");
    drop(fd);
    for _ in 0..2 {
        u.assert_enoent("f");
        u.assert_enoent("g");
        assert_eq!(u.read_str("d/h"), "lower f!");
        assert_eq!(u.names(""), set(&["d"]));
        u.assert_upper_whiteout("f");
        u.assert_upper_absent("g");
        u.assert_upper_file("d/h", "lower f!");
        u.remount();
    }
    u.check_upper_is_layer_diff();
}

#[test]
fn s32_rename_lower_dir_moves_all_children() {
    // The kernel returns EXDEV here unless `redirect_dir=on`; with it the kernel is a faithful
    // reference for the rest of the expectations, so it is turned on for this test.
    let stack = Stack::new()
        .lower([file("d/a", "L1"), file("d/s/x", "L1"), file("d/both", "L1")])
        .lower([file("d/b", "L2"), file("d/both", "L2"), file("d/s/y", "L2")])
        .upper([file("d/c", "U")])
        .kernel_opt("redirect_dir=on");
    let Some(mut u) = Union::mount(stack) else {
        return;
    };

    let kids = ["a", "b", "both", "c", "s", "s/x", "s/y"];
    let inos: Vec<u64> = kids
        .iter()
        .map(|k| u.stat(&format!("d/{k}")).ino())
        .collect();
    fs::rename(u.m("d"), u.m("e")).unwrap();
    for round in 0..2 {
        // Identity survives the move: same st_ino, and d_ino agrees.
        for (k, ino) in kids.iter().zip(&inos) {
            assert_eq!(u.stat(&format!("e/{k}")).ino(), *ino, "st_ino of e/{k}");
        }
        for (name, d_ino) in readdir_inos(&u.m("e")) {
            assert_eq!(
                d_ino,
                u.stat(&format!("e/{name}")).ino(),
                "d_ino of e/{name}"
            );
        }
        u.assert_enoent("d");
        assert_eq!(u.names(""), set(&["e"]), "round {round}");
        assert_eq!(u.names("e"), set(&["a", "b", "both", "c", "s"]));
        assert_eq!(u.names("e/s"), set(&["x", "y"]));
        assert_eq!(u.read_str("e/a"), "L1");
        assert_eq!(u.read_str("e/b"), "L2");
        assert_eq!(u.read_str("e/both"), "L1");
        assert_eq!(u.read_str("e/c"), "U");
        assert_eq!(u.read_str("e/s/y"), "L2");
        u.assert_upper_whiteout("d");
        u.remount();
    }
    // The renamed dir behaves like any merged dir afterwards.
    fs::remove_file(u.m("e/b")).unwrap();
    u.write("e/new", "n");
    fs::create_dir(u.m("d")).unwrap();
    u.remount();
    assert_eq!(u.names("e"), set(&["a", "both", "c", "new", "s"]));
    assert_eq!(u.names("d"), set(&[]));
    u.check_upper_is_layer_diff();
}

#[test]
fn s33_rename_noreplace() {
    let stack = Stack::new()
        .lower([file("a", "A"), file("b", "B"), file("c", "C")])
        .upper([wh("c")]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };

    assert_errno(
        rename2(&u.m("a"), &u.m("b"), libc::RENAME_NOREPLACE),
        libc::EEXIST,
        "a -> b",
    );
    assert_eq!(u.read_str("a"), "A");
    assert_eq!(u.read_str("b"), "B");
    rename2(&u.m("a"), &u.m("c"), libc::RENAME_NOREPLACE).unwrap();
    u.remount();
    u.assert_enoent("a");
    assert_eq!(u.read_str("c"), "A");
    assert_eq!(u.names(""), set(&["b", "c"]));
    u.assert_upper_whiteout("a");
    u.assert_upper_file("c", "A");
    u.assert_no_upper_whiteout("c");
    u.check_upper_is_layer_diff();
}

#[test]
fn s34_rename_exchange_files_and_dirs() {
    // Exchanging lower directories needs `redirect_dir=on` on the kernel (EXDEV otherwise).
    let stack = Stack::new()
        .lower([file("a", "A"), file("x/one", "1")])
        .lower([file("b", "B"), file("y/two", "2"), file("x/three", "3")])
        .kernel_opt("redirect_dir=on");
    let Some(mut u) = Union::mount(stack) else {
        return;
    };

    rename2(&u.m("a"), &u.m("b"), libc::RENAME_EXCHANGE).unwrap();
    rename2(&u.m("x"), &u.m("y"), libc::RENAME_EXCHANGE).unwrap();
    for _ in 0..2 {
        assert_eq!(u.read_str("a"), "B");
        assert_eq!(u.read_str("b"), "A");
        assert_eq!(u.names("y"), set(&["one", "three"]));
        assert_eq!(u.names("x"), set(&["two"]));
        assert_eq!(u.read_str("x/two"), "2");
        assert_eq!(u.read_str("y/three"), "3");
        u.assert_upper_file("a", "B");
        u.assert_upper_file("b", "A");
        u.remount();
    }
    u.check_upper_is_layer_diff();
}

#[test]
fn s35_rename_over_nonempty_dir_fails_over_whiteout_only_dir_works() {
    let stack = Stack::new()
        .lower([file("full/a", "L1"), file("w/a", "L1"), file("w/b", "L1")])
        .upper([wh("w/a")]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };

    // w holds only a whiteout in the upper and one lower child; remove that through the mount.
    fs::remove_file(u.m("w/b")).unwrap();
    assert_eq!(u.names("w"), set(&[]));
    fs::create_dir(u.m("src")).unwrap();
    u.write("src/new", "n");

    assert_errno(
        fs::rename(u.m("src"), u.m("full")),
        libc::ENOTEMPTY,
        "rename over non-empty dir",
    );
    fs::rename(u.m("src"), u.m("w")).unwrap();
    for _ in 0..2 {
        u.assert_enoent("src");
        assert_eq!(u.names("w"), set(&["new"]));
        assert_eq!(u.read_str("w/new"), "n");
        u.assert_enoent("w/a");
        u.assert_enoent("w/b");
        assert_eq!(u.names("full"), set(&["a"]));
        u.assert_upper_opaque("w");
        u.remount();
    }
    u.check_upper_is_layer_diff();
}

#[test]
fn s36_rename_onto_hard_link_of_same_inode_is_noop() {
    // The kernel treats lower hard links as one inode only with `index=on`.
    let stack = Stack::new()
        .lower([file("a", "same"), hardlink("b", "a")])
        .kernel_opt("index=on");
    let Some(mut u) = Union::mount(stack) else {
        return;
    };

    fs::rename(u.m("a"), u.m("b")).unwrap();
    assert_eq!(u.read_str("a"), "same");
    assert_eq!(u.read_str("b"), "same");
    u.write("c", "up");
    fs::hard_link(u.m("c"), u.m("d")).unwrap();
    fs::rename(u.m("c"), u.m("d")).unwrap();
    u.remount();
    assert_eq!(u.names(""), set(&["a", "b", "c", "d"]));
    assert_eq!(u.read_str("a"), "same");
    assert_eq!(u.stat("c").ino(), u.stat("d").ino());
    assert_eq!(u.stat("c").nlink(), 2);
    u.assert_no_upper_whiteout("a");
    u.assert_no_upper_whiteout("b");
    u.check_upper_is_layer_diff();
}
