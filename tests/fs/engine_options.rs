//! fuse-overlayfs's options that podman and its users pass, as fuse-overlayfs defines them:
//! `uidmapping=`/`gidmapping=` (the layers hold container ids, the union shows host ids and
//! writes container ids), `squash_to_root`/`squash_to_uid=`/`squash_to_gid=`, `static_nlink`,
//! `noacl` and `volatile` (no flushes). unionfs only: kernel overlayfs has none of them.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use crate::common::*;

/// A union of `lowers` with the unionfs options `opts`; `None` on kernel overlayfs or a
/// machine that cannot mount.
fn union(opts: &[&str], lowers: Vec<E>) -> Option<Union> {
    if is_kernel() {
        eprintln!("skip: fuse-overlayfs options are unionfs's own");
        return None;
    }
    let mut stack = Stack::new().lower(lowers);
    for o in opts {
        stack = stack.unionfs_opt(o);
    }
    Union::mount(stack)
}

fn owner(p: &std::path::Path) -> (u32, u32) {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.gid())
}

fn overflow_ids() -> (u32, u32) {
    let read = |f| fs::read_to_string(f).unwrap().trim().parse().unwrap();
    (
        read("/proc/sys/kernel/overflowuid"),
        read("/proc/sys/kernel/overflowgid"),
    )
}

#[track_caller]
fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `getfacl -n` of `path`, without its comment lines.
fn getfacl(path: &std::path::Path) -> Vec<String> {
    let out = ok(Command::new("getfacl")
        .args(["-n", "-p"])
        .arg(path)
        .output()
        .expect("getfacl (Debian package acl) is needed"));
    out.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(String::from)
        .collect()
}

// Container ids 0 and 1..65536 are host ids 100000 and 200000.. (uids), 300000 and 400000..
// (gids): the shape of a rootless user's map.
const UIDS: &str = "uidmapping=0:100000:1:1:200000:65536";
const GIDS: &str = "gidmapping=0:300000:1:1:400000:65536";

#[test]
fn uidmapping_shows_host_ids_and_writes_container_ids() {
    let Some(u) = union(
        &[UIDS, GIDS],
        vec![
            file("f0", "0"),
            file("f1000", "x").owner(1000, 1000),
            file("far", "far").owner(70000, 70000),
            dir("pub").mode(0o1777),
        ],
    ) else {
        return;
    };
    assert_eq!(owner(&u.m("")), (100000, 300000));
    assert_eq!(owner(&u.m("f0")), (100000, 300000));
    assert_eq!(owner(&u.m("f1000")), (200999, 400999));
    // Stored ids without a mapping show as the overflow ids, as in a user namespace.
    assert_eq!(owner(&u.m("far")), overflow_ids());

    // Host user 200999 is container user 1000: it owns f1000 and writes 1000 to the layer.
    let m = u.m("").display().to_string();
    ok(as_user(
        200999,
        400999,
        &format!(
            "set -e; echo more >> {m}/f1000; echo n > {m}/pub/new; mkdir {m}/pub/d; \
             ln -s new {m}/pub/l; mkfifo {m}/pub/p"
        ),
    ));
    for rel in ["pub/new", "pub/d", "pub/l", "pub/p", "f1000"] {
        assert_eq!(owner(&u.m(rel)), (200999, 400999), "view of {rel}");
        assert_eq!(owner(&u.u(rel)), (1000, 1000), "upper {rel}");
    }
    assert_eq!(u.read_str("f1000"), "xmore\n");
    // Host uid 1000 is not container uid 1000: the view's permission checks use host ids.
    let out = as_user(1000, 1000, &format!("echo y >> {m}/f1000"));
    assert!(
        !out.status.success(),
        "uid 1000 wrote to 200999's 0644 file"
    );

    // What root (host 0, unmapped) creates is stored as the overflow ids.
    fs::write(u.m("pub/g"), "g").unwrap();
    assert_eq!(owner(&u.u("pub/g")), overflow_ids());
    // chown through the view writes container ids; an unmapped id becomes the overflow id.
    std::os::unix::fs::chown(u.m("f0"), Some(200005), Some(400007)).unwrap();
    assert_eq!(owner(&u.u("f0")), (6, 8));
    assert_eq!(owner(&u.m("f0")), (200005, 400007));
    std::os::unix::fs::chown(u.m("f0"), Some(5), Some(7)).unwrap();
    assert_eq!(owner(&u.u("f0")), overflow_ids());

    // Named users and groups of ACLs are ids too: host ids in the view, container ids stored.
    ok(Command::new("setfacl")
        .args(["-m", "u:200999:r,g:400999:r"])
        .arg(u.m("pub/new"))
        .output()
        .expect("setfacl (Debian package acl) is needed"));
    let view = getfacl(&u.m("pub/new"));
    assert!(
        view.contains(&"user:200999:r--".to_string())
            && view.contains(&"group:400999:r--".to_string()),
        "{view:?}"
    );
    let stored = getfacl(&u.u("pub/new"));
    assert!(
        stored.contains(&"user:1000:r--".to_string())
            && stored.contains(&"group:1000:r--".to_string()),
        "{stored:?}"
    );
    // The kernel enforces the mapped ACL: host user 200998 (container 999) is not named.
    fs::set_permissions(
        u.m("pub/new"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    ok(Command::new("setfacl")
        .args(["-m", "u:200000:r,m:r"])
        .arg(u.m("pub/new"))
        .output()
        .unwrap());
    assert_eq!(
        ok(as_user(200000, 400000, &format!("cat {m}/pub/new"))),
        "n\n"
    );
    assert!(!as_user(200998, 400998, &format!("cat {m}/pub/new"))
        .status
        .success());
}

#[test]
fn squash_shows_one_owner_and_chown_still_writes() {
    let lowers = || {
        vec![
            file("a", "a").owner(1000, 1000),
            dir("d").owner(5, 6),
            dir("pub").mode(0o1777),
        ]
    };
    let Some(u) = union(&["squash_to_root"], lowers()) else {
        return;
    };
    for rel in ["", "a", "d", "pub"] {
        assert_eq!(owner(&u.m(rel)), (0, 0), "view of {rel:?}");
    }
    std::os::unix::fs::chown(u.m("a"), Some(1234), Some(1234)).unwrap();
    assert_eq!(owner(&u.m("a")), (0, 0));
    assert_eq!(owner(&u.u("a")), (1234, 1234), "the chown is written");
    let m = u.m("").display().to_string();
    ok(as_user(42, 43, &format!("echo x > {m}/pub/x")));
    assert_eq!(owner(&u.m("pub/x")), (0, 0));
    assert_eq!(owner(&u.u("pub/x")), (42, 43), "the creator is written");
    drop(u);

    // squash_to_uid= and squash_to_gid= take precedence over squash_to_root.
    let Some(u) = union(
        &["squash_to_root", "squash_to_uid=1234", "squash_to_gid=99"],
        lowers(),
    ) else {
        return;
    };
    assert_eq!(owner(&u.m("a")), (1234, 99));
    let Some(u2) = union(&["squash_to_gid=99"], lowers()) else {
        return;
    };
    assert_eq!(owner(&u2.m("a")), (1000, 99));
    drop(u);
}

#[test]
fn static_nlink_shows_one_link_for_every_directory() {
    let lowers = || {
        vec![
            dir("d/a"),
            dir("d/b"),
            dir("d/c"),
            file("f", "f"),
            hardlink("g", "f"),
        ]
    };
    let Some(u) = union(&["static_nlink"], lowers()) else {
        return;
    };
    fs::create_dir(u.m("d/new")).unwrap();
    for rel in ["", "d", "d/a", "d/new"] {
        assert_eq!(u.stat(rel).nlink(), 1, "{rel:?}");
    }
    assert_eq!(u.stat("f").nlink(), 2, "files keep their link count");
    assert_eq!(u.names("d").len(), 4);
    drop(u);
    let Some(u) = union(&[], lowers()) else {
        return;
    };
    assert_eq!(u.stat("d").nlink(), 5);
}

/// A `system.posix_acl_access` value: owner rw, user `uid` read, group and others nothing.
fn acl_granting_read(uid: u32) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, u32::MAX),
        (0x02, 4, uid),
        (0x04, 0, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ] {
        v.extend(tag.to_le_bytes());
        v.extend(perm.to_le_bytes());
        v.extend(id.to_le_bytes());
    }
    v
}

#[test]
fn noacl_leaves_acls_unenforced() {
    let lowers = || {
        vec![file("secret", "s")
            .mode(0o600)
            .xattr("system.posix_acl_access", acl_granting_read(1000))]
    };
    let Some(u) = union(&[], lowers()) else {
        return;
    };
    let cat = |u: &Union| as_user(1000, 1000, &format!("cat {}", u.m("secret").display()));
    assert_eq!(ok(cat(&u)), "s", "the ACL grants uid 1000 read access");
    drop(u);
    let Some(u) = union(&["noacl"], lowers()) else {
        return;
    };
    let out = cat(&u);
    assert!(!out.status.success(), "noacl: the kernel checked the ACL");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
}

#[test]
fn volatile_never_flushes_and_marks_the_work_dir_until_a_clean_end() {
    let lowers = || vec![file("f", "lower"), file("g", "g")];
    // Without it: a copy-up waits for its data, an fsync flushes.
    let Some(u) = union(&[], lowers()) else {
        return;
    };
    u.append("f", "+");
    ok(Command::new("sync").arg(u.m("f")).output().unwrap());
    assert_eq!(u.report_value("flushes"), "2");
    assert!(!u.work_dir().join("incompat").exists());
    drop(u);

    let Some(mut u) = union(&["volatile"], lowers()) else {
        return;
    };
    let marker = u.work_dir().join("incompat/volatile");
    assert!(marker.is_dir(), "no marker while mounted volatile");
    u.append("f", "+");
    u.append("g", "+");
    for _ in 0..3 {
        ok(Command::new("sync").arg(u.m("f")).output().unwrap());
    }
    assert_eq!(u.report_value("flushes"), "0");
    assert_eq!(u.read_str("f"), "lower+");
    // A clean end writes the upper back and removes the marker: the next mount takes it.
    u.unmount();
    assert!(!marker.exists() && !u.work_dir().join("incompat").exists());
    u.do_mount();
    assert_eq!(u.read_str("f"), "lower+");
    assert_eq!(fs::read_to_string(u.u("g")).unwrap(), "g+");
}
