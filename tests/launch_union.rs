//! The container root is the union: writes land in UPPER, deletes become `.wh.` files, lowers
//! never change; whiteout layers hide what is below; read-only and tmpfs uppers.

mod launch_common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use launch_common::*;

/// Path → (mode, size, content) of every entry of a layer.
type Snapshot = BTreeMap<PathBuf, (u32, u64, Vec<u8>)>;

/// Every entry under `dir` with type, mode, size and (for files) content.
fn snapshot(dir: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let content = if m.is_file() {
                std::fs::read(&p).unwrap()
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                Vec::new()
            };
            if m.is_dir() {
                todo.push(p.clone());
            }
            out.insert(
                p.strip_prefix(dir).unwrap().to_path_buf(),
                (m.mode(), m.size(), content),
            );
        }
    }
    out
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

fn lowers_snapshot() -> Vec<Snapshot> {
    let l = example_layers();
    ["whiteout", "app", "base"]
        .iter()
        .map(|n| snapshot(&l.join(n)))
        .collect()
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
    assert_eq!(lowers_snapshot(), before, "a lower layer changed");
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
    assert_eq!(lowers_snapshot(), before);
}
