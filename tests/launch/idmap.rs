//! Id maps for real: root with `--uid-map/--gid-map` ranges (written directly), and an
//! unprivileged user with ranges through the setuid helpers newuidmap/newgidmap, whose
//! /etc/subuid and /etc/subgid come from a private mount namespace (the host's stay untouched).

use std::os::unix::fs::MetadataExt;
use std::process::Command;

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
    let Some(r) = Ranges::new("idmap") else {
        return;
    };
    let upper = TempDir::new("idmap-ranges-upper");
    nix::unistd::chown(&upper.0, Some(65534.into()), Some(65534.into())).unwrap();
    let mut a = Ranges::map_args();
    a.extend(args(&["--user", "1000:1000"]));
    a.push(base_lower().to_string_lossy().into_owned());
    a.push(upper.0.to_string_lossy().into_owned());
    a.extend(args(&[
        "--",
        "/bin/sh",
        "-c",
        "id -u; tr -s ' ' < /proc/self/uid_map; mkdir -p /tmp/ok",
    ]));
    let o = r.run(&a);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(
        o.stdout,
        format!("1000\n 0 65534 1\n 1 {SUBID} 65536\n"),
        "{o:?}"
    );
}

fn owner(p: &std::path::Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.gid())
}

/// `unionfs-layer ARGS`.
fn layer_tool(a: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_unionfs-layer"))
        .args(a)
        .output()
        .unwrap()
}

/// The owners of a tarball's entries, by path (without a trailing `/`).
fn tar_owners(tar: &std::path::Path) -> std::collections::BTreeMap<String, (u64, u64)> {
    let mut ar = tar::Archive::new(std::fs::File::open(tar).unwrap());
    ar.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            let p = e
                .path()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string();
            (p, (h.uid().unwrap(), h.gid().unwrap()))
        })
        .collect()
}

/// A layer's life in a rootless setup: a container writes as root and as uid 1000 (host ids on
/// disk, through its user namespace), `unionfs-layer export` writes container ids (with the
/// map the launcher recorded), `import --uid-map` writes host ids again, and the next
/// rootless container on the imported layer sees 0 and 1000 as the first did.
#[test]
fn a_rootless_upper_leaves_and_comes_back_with_container_owners() {
    let Some(r) = Ranges::new("layer-owners") else {
        return;
    };
    let t = TempDir::new("layer-owners");
    let (u1, u2, l2) = (t.join("u1"), t.join("u2"), t.join("l2"));
    for u in [&u1, &u2] {
        std::fs::create_dir(u).unwrap();
        nix::unistd::chown(u, Some(65534.into()), Some(65534.into())).unwrap();
    }
    let launch = |user: &[&str], lowers: &str, upper: &std::path::Path, script: &str| {
        let mut a = Ranges::map_args();
        a.extend(args(user));
        a.extend([lowers.to_string(), upper.display().to_string()]);
        a.extend(args(&["--", "/bin/sh", "-c", script]));
        let o = r.run(&a);
        assert_eq!(o.code, 0, "{o:?}");
        o.stdout
    };
    let base = base_lower().display().to_string();
    let out = launch(
        &[],
        &base,
        &u1,
        "echo r > /byroot; mkdir -p /home/u; chown 1000:1000 /home/u; \
         stat -c %u:%g /byroot /home/u /home",
    );
    // The base layer's /home belongs to host root, which this namespace does not map: the
    // container sees the overflow id, and its copy-up keeps what the container sees.
    assert_eq!(out, "0:0\n1000:1000\n65534:65534\n");
    let out = launch(
        &["--user", "1000:1000"],
        &base,
        &u1,
        "echo u > /home/u/byuser; stat -c %u:%g /home/u/byuser",
    );
    assert_eq!(out, "1000:1000\n");
    // On disk the upper holds host ids: the user for root, subordinate ids for the rest.
    let sub1000 = SUBID + 999;
    assert_eq!(owner(&u1.join("byroot")), (65534, 65534));
    assert_eq!(owner(&u1.join("home/u/byuser")), (sub1000, sub1000));
    let record = std::fs::read_to_string(u1.join(".wh..wh.unionfs/idmap")).unwrap();
    let map = format!("0:65534:1:1:{SUBID}:65536");
    assert!(
        record.contains(&format!("uid {map}")) && record.contains(&format!("gid {map}")),
        "{record}"
    );

    let (u1s, tar) = (u1.to_str().unwrap(), t.join("layer.tar"));
    let ok = |o: std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    ok(layer_tool(&["export", u1s, "-o", tar.to_str().unwrap()]));
    let owners = tar_owners(&tar);
    for (p, want) in [
        ("byroot", (0, 0)),
        ("home", (65534, 65534)),
        ("home/u", (1000, 1000)),
        ("home/u/byuser", (1000, 1000)),
    ] {
        assert_eq!(owners.get(p), Some(&want), "{p} in {owners:?}");
    }
    assert!(!owners.keys().any(|p| p.contains("unionfs")), "{owners:?}");
    // --no-map keeps the ids on disk; --uid-map/--gid-map replace the recorded maps.
    let raw = t.join("raw.tar");
    ok(layer_tool(&[
        "export",
        "--no-map",
        u1s,
        "-o",
        raw.to_str().unwrap(),
    ]));
    let s = u64::from(sub1000);
    assert_eq!(tar_owners(&raw).get("home/u/byuser"), Some(&(s, s)));
    let shifted = t.join("shifted.tar");
    let sub = format!("6:{SUBID}:65536");
    ok(layer_tool(&[
        "export",
        u1s,
        "--uid-map",
        "5:65534:1",
        "--uid-map",
        &sub,
        "--gid-map",
        &map,
        "-o",
        shifted.to_str().unwrap(),
    ]));
    let o = tar_owners(&shifted);
    assert_eq!(o.get("byroot"), Some(&(5, 0)));
    assert_eq!(o.get("home/u/byuser"), Some(&(1005, 1000)));
    // A map that misses an owner stops the export, naming the file, and leaves no tarball.
    let bad = t.join("bad.tar");
    let o = layer_tool(&[
        "export",
        u1s,
        "--uid-map",
        "0:65534:1",
        "-o",
        bad.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    let first = format!(
        "{u1s}/home: host uid {} is not in the id map 0:65534:1",
        SUBID + 65533
    );
    assert!(err.contains(&first) && err.contains("--no-map"), "{err}");
    assert!(!bad.exists());

    // Imported for the same rootless user: container ids become its host ids again.
    ok(layer_tool(&[
        "import",
        tar.to_str().unwrap(),
        l2.to_str().unwrap(),
        "--uid-map",
        "0:65534:1",
        "--uid-map",
        &format!("1:{SUBID}:65536"),
        "--gid-map",
        &map,
    ]));
    assert_eq!(owner(&l2.join("byroot")), (65534, 65534));
    assert_eq!(owner(&l2.join("home/u/byuser")), (sub1000, sub1000));
    let out = launch(
        &[],
        &format!("{}:{base}", l2.display()),
        &u2,
        "stat -c %u:%g /byroot /home/u /home/u/byuser; cat /home/u/byuser",
    );
    assert_eq!(out, "0:0\n1000:1000\n1000:1000\nu\n");
}
