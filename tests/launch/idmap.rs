//! Id maps for real: root with `--uid-map/--gid-map` ranges (written directly), and an
//! unprivileged user with ranges through the setuid helpers newuidmap/newgidmap, whose
//! /etc/subuid and /etc/subgid come from a private mount namespace (the host's stay untouched).

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

#[test]
fn root_with_id_ranges_shifts_the_container_ids() {
    if !require_root() || !require_union() {
        return;
    }
    let upper = TempDir::new("idmap-upper");
    // The upper's root must belong to the container's root (host uid 100000).
    nix::unistd::chown(&upper.0, Some(100000.into()), Some(100000.into())).unwrap();
    let mut a = args(&["--uid-map", "0:100000:65536", "--gid-map", "0:100000:65536"]);
    a.push(base_lower().to_string_lossy().into_owned());
    a.push(upper.0.to_string_lossy().into_owned());
    a.extend(args(&[
        "--",
        "/bin/sh",
        "-c",
        "id -u; tr -s ' ' < /proc/self/uid_map; echo hi > /f; mkdir /d; chown 1000:1000 /d",
    ]));
    let o = run(&a);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout, "0\n 0 100000 65536\n", "{o:?}");
    let f = std::fs::metadata(upper.join("f")).unwrap();
    assert_eq!((f.uid(), f.gid()), (100000, 100000));
    let d = std::fs::metadata(upper.join("d")).unwrap();
    assert_eq!((d.uid(), d.gid()), (101000, 101000));
    // A user inside the range.
    let mut a = args(&[
        "--uid-map",
        "0:100000:65536",
        "--gid-map",
        "0:100000:65536",
        "--user",
        "1000:1000",
    ]);
    a.push(base_lower().to_string_lossy().into_owned());
    a.push(upper.0.to_string_lossy().into_owned());
    a.extend(args(&[
        "--",
        "/bin/sh",
        "-c",
        "id -u; id -g; echo x > /d/x",
    ]));
    let o = run(&a);
    assert_eq!(o.stdout, "1000\n1000\n", "{o:?}");
    assert_eq!(std::fs::metadata(upper.join("d/x")).unwrap().uid(), 101000);
}

#[test]
fn unmapped_user_is_refused_with_advice() {
    if !require_root() {
        return;
    }
    let a = args(&[
        "--uid-map",
        "0:100000:10",
        "--gid-map",
        "0:100000:10",
        "--user",
        "1000",
        "--tmp-upper",
        &base_lower().to_string_lossy(),
        "--",
        "/bin/true",
    ]);
    let o = run(&a);
    assert_eq!(o.code, 125, "{o:?}");
    assert!(o.stderr.contains("--user 1000:1000 is not mapped"), "{o:?}");
}

#[test]
fn rootless_ranges_go_through_newuidmap() {
    if !require_root() || !require_union() {
        return;
    }
    let have =
        Command::new("newuidmap").output().is_ok() && Command::new("newgidmap").output().is_ok();
    if !require(
        have,
        "newuidmap/newgidmap are needed (Debian package uidmap)",
    ) {
        return;
    }
    let t = TempDir::new("subid");
    std::fs::write(
        t.join("subuid"),
        "nobody:200000:65536\n65534:200000:65536\n",
    )
    .unwrap();
    std::fs::write(
        t.join("subgid"),
        "nogroup:200000:65536\nnobody:200000:65536\n65534:200000:65536\n",
    )
    .unwrap();
    std::fs::create_dir(t.join("upper")).unwrap();
    nix::unistd::chown(&t.join("upper"), Some(65534.into()), Some(65534.into())).unwrap();
    std::fs::create_dir(t.join("dev")).unwrap();
    // Bind mounts need existing targets; creating them would change the host's /etc.
    let files = std::path::Path::new("/etc/subuid").exists()
        && std::path::Path::new("/etc/subgid").exists();
    if !require(
        files,
        "/etc/subuid and /etc/subgid must exist (Debian: installed with uidmap/login)",
    ) {
        return;
    }
    let script =
        "set -e; mount --bind \"$T/subuid\" /etc/subuid; mount --bind \"$T/subgid\" /etc/subgid; \
                  mknod -m 0666 \"$NODE/fuse\" c 10 229; mount --bind \"$NODE/fuse\" /dev/fuse; \
                  exec setpriv --reuid=65534 --regid=65534 --clear-groups \"$@\"";
    let node = std::env::temp_dir().join(format!("unionfs-fuse-node-idmap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&node);
    std::fs::create_dir_all(&node).unwrap();
    let _node_guard = TempDir(node.clone());
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        BIN,
    ])
    .args([
        "--uid-map",
        "0:65534:1",
        "--uid-map",
        "1:200000:65536",
        "--gid-map",
        "0:65534:1",
        "--gid-map",
        "1:200000:65536",
        "--user",
        "1000:1000",
    ])
    .arg(base_lower())
    .arg(t.join("upper"))
    .args([
        "--",
        "/bin/sh",
        "-c",
        "id -u; tr -s ' ' < /proc/self/uid_map; mkdir -p /tmp/ok",
    ])
    .env("T", &t.0)
    .env("NODE", &node);
    let o = spawn_cmd(&mut cmd).finish(Duration::from_secs(30));
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout, "1000\n 0 65534 1\n 1 200000 65536\n", "{o:?}");
}
