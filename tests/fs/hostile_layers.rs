//! Hostile lower layers (issue 2, "Tests"): symlinks to `/`, `/etc`, `..` chains and absolute
//! paths, placed where the same path component is a directory in another layer. Every union
//! operation through them must leave everything outside the upper untouched: the daemon resolves
//! names inside layers itself and must never follow a symlink it finds there.
//!
//! Writes are aimed at a temp "victim" directory (never at the real `/etc`); `/` and `/etc` are
//! only used for read checks.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::common::*;

struct Victim(PathBuf);

impl Victim {
    fn new() -> Victim {
        let p = PathBuf::from(format!(
            "/tmp/unionfs-victim-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&p);
        for d in ["y", "sub", "etc", "o", "q"] {
            fs::create_dir_all(p.join(d)).unwrap();
        }
        for f in ["f", "y/secret", "sub/g", "etc/passwd", "o/old", "q/z", "x"] {
            fs::write(p.join(f), format!("victim {f}")).unwrap();
        }
        Victim(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
    fn dotdot(&self) -> String {
        format!("../../../../../../../../../../../..{}", self.0.display())
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn no_file(u: &Union, rel: &str) {
    assert!(
        !u.exists(rel),
        "{rel} is visible: the daemon followed a layer symlink"
    );
}

#[test]
fn hostile_symlinks_under_directories_are_never_followed() {
    let victim = Victim::new();
    let v = victim.path().to_str().unwrap().to_string();
    let vdd = victim.dotdot();
    let stack = Stack::new()
        .lower([
            // Directories in the top lower, each shadowing a symlink of the same name below.
            file("a/f", "L1 a/f"),
            file("a/sub/g", "L1 g"),
            dir("x/y"),
            file("up/f", "L1 up/f"),
            file("w/f", "L1 w/f"),
            opq("o"),
            file("o/mine", "L1 o"),
            file("etc/passwd", "fake passwd"),
            dir("root/mine"),
            dir("p/q"),
            file("p/q/k", "L1 k"),
            file("dd/mine", "L1 dd"),
            file("ff", "L1 ff"),
            dir("loop"),
        ])
        .lower([
            symlink("a", &v),
            symlink("x", &v),
            symlink("up", &vdd),
            symlink("w", &v),
            symlink("o", &format!("{v}/o")),
            symlink("etc", "/etc"),
            symlink("root", "/"),
            dir("p"),
            symlink("p/q", &format!("{v}/q")),
            // `..` relative to the layer: the union's temp dir, with every layer in it.
            symlink("dd", ".."),
            symlink("ff", &format!("{v}/x")),
            symlink("loop", "loop"),
        ])
        .lower([
            file("a/h", "L3 a/h"),
            file("x/y/also", "L3"),
            file("p/q/bottom", "L3"),
        ]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };
    u.add_sentinel(victim.path());

    // Reads: names that exist only behind the symlinks must not resolve or be listed.
    assert_eq!(u.names("a"), set(&["f", "sub"]));
    no_file(&u, "a/h");
    no_file(&u, "a/x");
    no_file(&u, "x/y/secret");
    no_file(&u, "x/y/also");
    assert_eq!(u.names("x/y"), set(&[]));
    assert_eq!(u.names("up"), set(&["f"]));
    no_file(&u, "up/x");
    no_file(&u, "o/old");
    assert_eq!(u.names("o"), set(&["mine"]));
    assert_eq!(u.read_str("etc/passwd"), "fake passwd");
    assert_eq!(u.names("etc"), set(&["passwd"]));
    assert_eq!(u.names("root"), set(&["mine"]));
    no_file(&u, "root/etc");
    no_file(&u, "root/proc");
    assert_eq!(u.names("p/q"), set(&["k"]));
    no_file(&u, "p/q/z");
    no_file(&u, "p/q/bottom");
    assert_eq!(u.names("dd"), set(&["mine"]));
    no_file(&u, "dd/l1");
    no_file(&u, "dd/upper");
    assert_eq!(u.names("loop"), set(&[]));

    // Every kind of write, through each hostile spot.
    u.write("a/new", "n");
    u.append("a/f", b"+");
    fs::create_dir(u.m("a/nd")).unwrap();
    fs::rename(u.m("a/f"), u.m("a/f2")).unwrap();
    fs::set_permissions(u.m("a/sub"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::remove_file(u.m("a/sub/g")).unwrap();
    lsetxattr(&u.m("a/new"), "user.k", b"v").unwrap();
    lsetxattr(&u.m("a"), "user.k", b"v").unwrap();
    std::os::unix::fs::symlink("t", u.m("a/sl")).unwrap();
    fs::hard_link(u.m("a/new"), u.m("a/hl")).unwrap();
    u.write("x/y/secret", "mine");
    u.write("x/f", "mine");
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(u.m("up/f"))
        .unwrap();
    u.write("up/x", "mine");
    fs::remove_file(u.m("w/f")).unwrap();
    u.write("w/f", "again");
    fs::remove_file(u.m("w/f")).unwrap();
    fs::remove_dir(u.m("w")).unwrap();
    u.write("o/old", "mine");
    fs::remove_file(u.m("o/mine")).unwrap();
    u.write("etc/passwd", "changed fake");
    u.write("dd/l1", "mine");
    u.write("ff", "mine");
    fs::create_dir(u.m("loop/inner")).unwrap();
    nix::unistd::mkfifo(
        &u.m("a/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    fs::create_dir(u.m("root/etc")).unwrap();
    std::os::unix::fs::chown(u.m("p/q"), Some(99), Some(99)).unwrap();
    u.write("p/q/z", "mine");
    fs::rename(u.m("p/q/k"), u.m("p/q/k2")).unwrap();
    // Across hostile spots: rename, hard link, exchange.
    u.write("a/mv", "moving");
    fs::rename(u.m("a/mv"), u.m("x/y/moved")).unwrap();
    fs::hard_link(u.m("x/y/moved"), u.m("up/linked")).unwrap();
    rename2(&u.m("up/linked"), &u.m("dd/mine"), libc::RENAME_EXCHANGE).unwrap();
    fs::rename(u.m("p"), u.m("p2"))
        .or_else(|e| {
            // The kernel refuses to rename a lower dir without redirect_dir; that is fine here.
            if is_kernel() && e.raw_os_error() == Some(libc::EXDEV) {
                Ok(())
            } else {
                Err(e)
            }
        })
        .unwrap();

    u.remount();
    // The results are in the view...
    assert_eq!(
        u.names("a"),
        set(&["f2", "fifo", "hl", "nd", "new", "sl", "sub"])
    );
    assert_eq!(u.read_str("a/f2"), "L1 a/f+");
    assert_eq!(u.read_str("x/y/secret"), "mine");
    assert_eq!(u.read_str("x/y/moved"), "moving");
    assert_eq!(u.read_str("dd/mine"), "moving");
    assert_eq!(u.read_str("up/linked"), "L1 dd");
    assert_eq!(u.read_str("up/x"), "mine");
    assert_eq!(u.stat("up/f").len(), 0);
    no_file(&u, "w");
    assert_eq!(u.read_str("o/old"), "mine");
    assert_eq!(u.read_str("etc/passwd"), "changed fake");
    assert_eq!(u.names("root"), set(&["etc", "mine"]));
    assert_eq!(u.names("dd"), set(&["l1", "mine"]));
    assert_eq!(u.read_str("ff"), "mine");
    assert_eq!(u.names("loop"), set(&["inner"]));
    // ... and in the upper, as real directories (never symlinks).
    for d in [
        "a", "a/sub", "x", "x/y", "up", "o", "etc", "root", "dd", "loop",
    ] {
        let md = fs::symlink_metadata(u.u(d)).unwrap_or_else(|e| panic!("upper {d}: {e}"));
        assert!(md.is_dir(), "upper {d} is not a directory");
    }
    assert_eq!(fs::read_to_string(u.u("x/y/secret")).unwrap(), "mine");
    assert_eq!(u.stat("a/sub").mode() & 0o777, 0o700);
    // Host `/` and `/etc` were only read; the victim dir is checked when `u` drops.
    assert!(Path::new("/etc/passwd").exists());
    assert_ne!(
        fs::read_to_string("/etc/passwd").unwrap(),
        "changed fake",
        "host /etc/passwd was written"
    );
    assert!(!Path::new("/etc/.wh.passwd").exists());
    assert!(fs::symlink_metadata(u.u("w"))
        .map(|m| !m.is_symlink())
        .unwrap_or(true));
    u.check_upper_is_layer_diff();
}

#[test]
fn hostile_symlinked_parent_in_lower_for_copy_up_of_deep_file() {
    // The file to copy up lives under a directory chain that, in a *lower* layer below it, is a
    // symlink to the victim: ancestors must be copied from the layer that provides them.
    let victim = Victim::new();
    let v = victim.path().to_str().unwrap().to_string();
    let stack = Stack::new()
        .lower([file("d/e/f", "top"), dir("d/e").mode(0o711)])
        .lower([symlink("d", &v)])
        .lower([dir("d/e").mode(0o700), file("d/e/g", "bottom")]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };
    u.add_sentinel(victim.path());

    u.append("d/e/f", b"+");
    u.write("d/sub", "x");
    fs::remove_dir_all(u.m("d")).unwrap();
    fs::create_dir(u.m("d")).unwrap();
    u.write("d/y", "mine");
    u.remount();
    assert_eq!(u.names("d"), set(&["y"]));
    assert!(fs::symlink_metadata(u.u("d")).unwrap().is_dir());
    u.assert_upper_opaque("d");
    u.check_upper_is_layer_diff();
}
