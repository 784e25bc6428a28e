//! The container root is the union: writes land in UPPER, deletes become `.wh.` files, lowers
//! never change; whiteout layers hide what is below; read-only and tmpfs uppers.

use std::path::Path;

use crate::common::*;
use unionfs_harness::view::{capture, changes, ReadAs, Tree};

/// Every entry of a layer as the harness captures it (everything but atimes).
fn snapshot(dir: &Path) -> Tree {
    capture(dir, ReadAs::Raw).unwrap_or_else(|e| panic!("{e}"))
}

fn stack() -> String {
    let l = example_layers();
    format!(
        "{}:{}:{}",
        l.join("whiteout").display(),
        l.join("app").display(),
        l.join("base").display()
    )
}

fn lowers_snapshot() -> Vec<Tree> {
    let l = example_layers();
    ["whiteout", "app", "base"]
        .iter()
        .map(|n| snapshot(&l.join(n)))
        .collect()
}

#[track_caller]
fn assert_lowers_unchanged(before: &[Tree]) {
    let now = lowers_snapshot();
    let diff: Vec<String> = ["whiteout", "app", "base"]
        .iter()
        .zip(before.iter().zip(&now))
        .flat_map(|(name, (b, n))| changes(&format!("lower {name}"), b, n))
        .collect();
    assert!(
        diff.is_empty(),
        "a lower layer changed:\n{}",
        diff.join("\n")
    );
}

#[test]
fn writes_land_in_upper_deletes_become_whiteouts_lowers_unchanged() {
    if !require_root() || !require_union() {
        return;
    }
    let before = lowers_snapshot();
    let upper = TempDir::new("upper");
    let a = args(&[
        &stack(),
        &upper.0.to_string_lossy(),
        "--",
        "/bin/sh",
        "-c",
        "set -e; echo new > /newfile; echo changed > /etc/hostname; rm /etc/passwd; \
         rm -r /app; mkdir -p /var/lib/x; echo y > /var/lib/x/y; \
         cat /etc/hostname; test ! -e /etc/passwd; test ! -e /app/hello.sh",
    ]);
    let o = run(&a);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout.trim(), "changed");
    let u = &upper.0;
    assert_eq!(std::fs::read_to_string(u.join("newfile")).unwrap(), "new\n");
    assert_eq!(
        std::fs::read_to_string(u.join("etc/hostname")).unwrap(),
        "changed\n"
    );
    assert_eq!(
        std::fs::read_to_string(u.join("var/lib/x/y")).unwrap(),
        "y\n"
    );
    for wh in ["etc/.wh.passwd", ".wh.app"] {
        let m =
            std::fs::symlink_metadata(u.join(wh)).unwrap_or_else(|_| panic!("no {wh} in upper"));
        assert!(m.is_file(), "{wh} is not a plain whiteout file");
    }
    assert_lowers_unchanged(&before);
    // The upper is a layer: a second run over it sees the same view.
    let a = args(&[
        &stack(),
        &upper.0.to_string_lossy(),
        "--",
        "/bin/sh",
        "-c",
        "cat /newfile /etc/hostname; test ! -e /etc/passwd && echo gone",
    ]);
    let o = run(&a);
    assert_eq!(o.stdout, "new\nchanged\ngone\n", "{o:?}");
}

#[test]
fn whiteout_layer_hides_and_app_layer_overrides() {
    if !require_root() || !require_union() {
        return;
    }
    let a = args(&[
        "--read-only",
        &stack(),
        "--",
        "/bin/sh",
        "-c",
        "cat /etc/hostname; test -e /etc/motd || echo motd-gone; test -e /usr/share/doc || echo doc-gone; \
         ls -a /etc | grep -c '^.wh.' ; /app/hello.sh",
    ]);
    let o = run(&a);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(
        o.stdout,
        "app\nmotd-gone\ndoc-gone\n0\nhello from the app layer on container\n"
    );
}

#[test]
fn read_only_root_refuses_writes_and_tmp_upper_leaves_nothing() {
    if !require_root() || !require_union() {
        return;
    }
    let before = lowers_snapshot();
    let a = args(&[
        "--read-only",
        &stack(),
        "--",
        "/bin/sh",
        "-c",
        "echo x > /f",
    ]);
    let o = run(&a);
    assert_ne!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains("Read-only file system"), "{o:?}");
    let a = args(&[
        "--tmp-upper",
        &stack(),
        "--",
        "/bin/sh",
        "-c",
        "echo x > /f; rm /bin/ls; cat /f",
    ]);
    let o = run(&a);
    assert_eq!(o.stdout, "x\n", "{o:?}");
    assert_lowers_unchanged(&before);
}

#[test]
fn a_second_container_on_a_used_upper_is_refused_naming_the_holder() {
    if !require_root() || !require_union() {
        return;
    }
    let before = lowers_snapshot();
    let upper = TempDir::new("owner");
    let up = upper.0.to_string_lossy().into_owned();
    let mut first = spawn(&args(&[
        &stack(),
        &up,
        "--",
        "/bin/sh",
        "-c",
        "echo one > /f; echo up; read x",
    ]));
    assert_eq!(first.read_line(), "up");
    // The holder (the launcher's child outside the container, serving the root with its
    // threads; the other such child is the single-threaded reaper) holds the upper.
    let threads = |p: nix::unistd::Pid| {
        std::fs::read_dir(format!("/proc/{p}/task"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let holder = children(first.pid())
        .into_iter()
        .find(|p| ns_of(*p, "pid") == ns_of(first.pid(), "pid") && threads(*p) > 1)
        .expect("no holder process");
    let upper_before: usize = std::fs::read_dir(&upper.0).unwrap().flatten().count();
    let t = std::time::Instant::now();
    let o = run(&args(&[
        &stack(),
        &up,
        "--",
        "/bin/sh",
        "-c",
        "echo two > /f",
    ]));
    assert_eq!(o.code, 125, "{o:?}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        t.elapsed()
    );
    assert!(
        o.stderr.contains("in use by another union")
            && o.stderr.contains(&format!("pid {holder} ")),
        "holder {holder} not named: {}",
        o.stderr
    );
    assert_eq!(std::fs::read_to_string(upper.join("f")).unwrap(), "one\n");
    let upper_after: usize = std::fs::read_dir(&upper.0).unwrap().flatten().count();
    assert_eq!(upper_after, upper_before);
    // kill -9 of the first launcher: its holder dies with it and the upper is free at once.
    first.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = first.finish(std::time::Duration::from_secs(10));
    assert!(wait_for(std::time::Duration::from_secs(2), || !alive(
        holder
    )));
    let o = run(&args(&[
        &stack(),
        &up,
        "--",
        "/bin/sh",
        "-c",
        "cat /f; echo two > /f",
    ]));
    assert_eq!((o.code, o.stdout.as_str()), (0, "one\n"), "{o:?}");
    assert_eq!(std::fs::read_to_string(upper.join("f")).unwrap(), "two\n");
    assert_lowers_unchanged(&before);
}
