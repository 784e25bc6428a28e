//! Lower files deleted behind the daemon's back, and a daemon out of file descriptors.

use std::fs;
use std::io::{self, Read};
use std::time::{Duration, Instant};

use super::io::{errno_of, read_all, LIMIT};
use crate::common::*;

#[test]
fn lower_files_deleted_behind_the_daemons_back() {
    let stack = Stack::new().lower([
        file("f", "file data"),
        file("g", "g data"),
        file("d/x", "x"),
        file("d/y", "y"),
        file("tree/a/b", "b"),
        file("keep", "keep"),
    ]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };
    // The kernel and the daemon know every entry, and a file is open.
    let names = view_snapshot(&u.mnt);
    assert!(names.nodes.len() > 6);
    let mut open = fs::File::open(u.m("f")).unwrap();
    // Gone from the lower, behind the daemon's back.
    let l = u.l(0, "");
    fs::remove_file(l.join("f")).unwrap();
    fs::remove_file(l.join("g")).unwrap();
    fs::remove_file(l.join("d/x")).unwrap();
    fs::remove_dir_all(l.join("tree")).unwrap();
    u.resnapshot();

    // The open file still reads what it opened.
    let mut s = String::new();
    open.read_to_string(&mut s).unwrap();
    assert_eq!(s, "file data");
    drop(open);
    let vanished = |e: Option<i32>| matches!(e, Some(libc::ENOENT) | Some(libc::ESTALE));
    let mut answered = 0;
    let mut check = |what: &str, e: Option<i32>, may_succeed: bool| {
        assert!(
            vanished(e) || (may_succeed && e.is_none()),
            "{what}: expected ENOENT or ESTALE, got {:?}",
            e.map(io::Error::from_raw_os_error)
        );
        answered += 1;
    };
    for rel in ["f", "g", "d/x"] {
        let p = u.m(rel);
        // `f` was open a moment ago: its RELEASE may not have reached the daemon yet, which
        // then reopens the file it still holds (the data it had).
        let r = within(LIMIT, "open", move || read_all(p));
        match r {
            Ok(data) if rel == "f" => assert_eq!(data, b"file data"),
            r => check(rel, r.err().and_then(|e| e.raw_os_error()), false),
        }
        let p = u.m(rel);
        check(
            &format!("copy-up of {rel}"),
            errno_of("copy-up", move || {
                fs::OpenOptions::new().append(true).open(p).map(drop)
            }),
            false,
        );
        let p = u.m(rel);
        check(
            &format!("chmod {rel}"),
            errno_of("chmod", move || {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(p, fs::Permissions::from_mode(0o600))
            }),
            false,
        );
        let p = u.m(rel);
        check(
            &format!("rename {rel}"),
            errno_of("rename", move || fs::rename(&p, p.with_extension("moved"))),
            false,
        );
        let p = u.m(rel);
        // A stat may be answered from the kernel's attribute cache.
        check(
            &format!("lstat {rel}"),
            errno_of("lstat", move || fs::symlink_metadata(p)),
            true,
        );
        let p = u.m(rel);
        // Removing a name that is already gone: nothing to do, or ENOENT.
        check(
            &format!("unlink {rel}"),
            errno_of("unlink", move || fs::remove_file(p)),
            true,
        );
    }
    for rel in ["tree", "tree/a"] {
        let p = u.m(rel);
        // A directory fd the daemon still holds lists a removed directory as empty.
        let r = within(LIMIT, "readdir", move || {
            fs::read_dir(p).and_then(|d| d.collect::<io::Result<Vec<_>>>())
        });
        match r {
            Ok(names) => assert!(
                names.is_empty(),
                "{rel} lists {names:?} after it was removed"
            ),
            Err(e) => check(&format!("listing {rel}"), e.raw_os_error(), false),
        }
    }
    let p = u.m("tree/a/b");
    check(
        "open tree/a/b",
        errno_of("open", move || read_all(p)),
        false,
    );
    let p = u.m("tree");
    check(
        "rename dir",
        errno_of("rename dir", move || {
            fs::rename(&p, p.with_file_name("tree2"))
        }),
        false,
    );
    eprintln!("{answered} requests on vanished entries answered ENOENT/ESTALE (or were served from the kernel's cache)");
    // The rest of the union works and the view is what the layers now hold.
    assert_eq!(u.names("d"), set(&["y"]));
    u.append("keep", b"+");
    u.remount();
    assert_eq!(u.names(""), set(&["d", "keep"]));
    assert_eq!(u.read_str("keep"), "keep+");
    let log = u.daemon_log();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
}

/// Open fds of process `pid`.
fn fd_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn daemon_out_of_file_descriptors_fails_requests_and_recovers() {
    if is_kernel() {
        eprintln!("SKIP on kernel: no daemon");
        return;
    }
    const FILES: usize = 200;
    let mut lower = vec![dir("d")];
    for i in 0..FILES {
        lower.push(file(&format!("d/f{i}"), format!("{i}")));
    }
    // 64 descriptors: the daemon needs about 20 to run (layers, /dev/fuse per worker, the
    // watchdog pipe); each open file through the union holds one more.
    let stack = Stack::new()
        .lower(lower)
        .daemon_prefix(&["prlimit", "--nofile=64:64", "--"]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };
    let pid = u.daemon_pid().unwrap();
    let limit = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        limit
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains(" 64 ")),
        "the daemon does not run with 64 fds: {limit}"
    );
    eprintln!("daemon fds at start: {}", fd_count(pid));
    // Hold files open through the union until the daemon cannot open more.
    let mut held = vec![];
    let mut errors = std::collections::BTreeMap::new();
    for round in 0..2 {
        for i in 0..FILES {
            let p = u.m(&format!("d/f{i}"));
            match within(LIMIT, "open", move || fs::File::open(p)) {
                Ok(f) => held.push(f),
                Err(e) => *errors.entry(e.raw_os_error().unwrap_or(-1)).or_insert(0) += 1,
            }
        }
        assert!(
            !errors.is_empty(),
            "round {round}: {FILES} files held open through a daemon limited to 64 fds, no error"
        );
        for e in errors.keys() {
            assert!(
                *e == libc::EMFILE || *e == libc::ENFILE,
                "open failed with {} (expected EMFILE or ENFILE)",
                io::Error::from_raw_os_error(*e)
            );
        }
        // Creating, listing and copying up fail the same way, and answer.
        let p = u.m("d/new");
        let r = within(LIMIT, "create", move || fs::write(p, "x"));
        if let Err(e) = r {
            assert!(
                matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)),
                "create: {e}"
            );
        }
        eprintln!(
            "round {round}: {} opens held, failures {errors:?}",
            held.len()
        );
        // Free the descriptors: the daemon must serve again.
        held.clear();
        errors.clear();
        let deadline = Instant::now() + LIMIT;
        loop {
            let r = fs::read_to_string(u.m("d/f7"));
            match r {
                Ok(s) => {
                    assert_eq!(s, "7");
                    break;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("after closing: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("the daemon did not recover after the files were closed: {e}"),
            }
        }
        u.write(&format!("d/after{round}"), "ok");
        u.append("d/f3", b"+");
        assert_eq!(
            u.names("d").len(),
            FILES + 1 + round + usize::from(u.exists("d/new"))
        );
    }
    // One file at a time, each closed before the next: every open must succeed, however
    // many closed files the daemon keeps registered for a quick reopen.
    for i in 0..FILES {
        let p = u.m(&format!("d/f{i}"));
        let r = within(LIMIT, "open", move || fs::read_to_string(p));
        match r {
            Ok(s) => assert!(s.starts_with(&i.to_string())),
            Err(e) => panic!(
                "reading d/f{i} with no other file open: {e} (daemon fds: {})",
                fd_count(pid)
            ),
        }
    }
    // What the daemon keeps open by itself (cached directories, registrations of closed
    // files) must leave room to work under its limit.
    let kept = fd_count(pid);
    eprintln!("daemon fds with no file open: {kept}");
    assert!(
        kept <= 48,
        "the daemon keeps {kept} of its 64 fds with no file open"
    );
    u.remount();
    assert_eq!(u.read_str("d/f3"), "3++");
    let log = u.daemon_log();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
}
