//! docs/SCENARIOS.md "Xattrs and ownership", lines 43–46.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::common::*;

/// Prefixes of the implementation's own xattrs, which the view must never show.
fn internal_prefixes() -> &'static [&'static str] {
    if is_kernel() {
        &["trusted.overlay."]
    } else {
        &["trusted.unionfs.", "user.unionfs."]
    }
}

#[test]
fn s43_internal_xattrs_are_invisible_and_unsettable() {
    let stack = Stack::new()
        .lower([
            file("f", "x").xattr("user.mine", "1"),
            file("d/g", "y"),
            file("d/h", "z"),
            hardlink("d/h2", "d/h"),
            dir("e"),
        ])
        .lower([file("d/old", "o"), file("e/old", "o")]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };

    // Operations after which implementations record state in xattrs: copy-up, rename of a
    // merged dir's child, whiteouts, opaque dirs, hard-link copy-up.
    u.append("f", b"+");
    fs::rename(u.m("d/g"), u.m("d/g2")).unwrap();
    fs::remove_file(u.m("d/old")).unwrap();
    fs::remove_dir_all(u.m("e")).unwrap();
    fs::create_dir(u.m("e")).unwrap();
    u.append("d/h", b"+");
    u.remount();

    for rel in ["", "f", "d", "d/g2", "d/h", "d/h2", "e"] {
        let names = llistxattr(&u.m(rel)).unwrap();
        for n in &names {
            assert!(
                !internal_prefixes().iter().any(|p| n.starts_with(p)),
                "{rel:?} lists internal xattr {n}"
            );
        }
        if is_kernel() {
            // Kernel >= 6.7 escapes its own namespace for nested overlays: a trusted.overlay.*
            // set through the mount is stored as user data, not as state, so it may succeed.
            continue;
        }
        for p in internal_prefixes() {
            let name = format!("{p}opaque");
            assert!(
                lsetxattr(&u.m(rel), &name, b"y").is_err(),
                "setting {name} on {rel:?} through the mount succeeded"
            );
            assert!(lgetxattr(&u.m(rel), &name).is_err(), "{name} readable");
        }
    }
    assert_eq!(
        llistxattr(&u.m("f")).unwrap(),
        vec!["user.mine".to_string()]
    );
    // The refused sets must not have marked anything opaque.
    assert_eq!(u.names("d"), set(&["g2", "h", "h2"]));
    u.check_upper_is_layer_diff();
}

#[test]
fn s44_64k_xattr_round_trips_and_survives_copy_up() {
    // ext4 without ea_inode caps values at one block; tmpfs takes the VFS maximum (64 KiB).
    let big: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
    let stack = Stack::new()
        .on_tmpfs()
        .lower([file("lo", "x").xattr("user.big", &big)]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };

    assert!(lgetxattr(&u.m("lo"), "user.big").unwrap() == big);
    // Copy-up of a file that carries one, then a new one set through the mount.
    u.append("lo", b"+");
    u.write("new", "n");
    let mut other = big.clone();
    other.reverse();
    lsetxattr(&u.m("new"), "user.big", &other).unwrap();
    u.remount();
    assert!(lgetxattr(&u.m("lo"), "user.big").unwrap() == big);
    assert!(lgetxattr(&u.u("lo"), "user.big").unwrap() == big);
    assert!(lgetxattr(&u.m("new"), "user.big").unwrap() == other);
    assert!(lgetxattr(&u.u("new"), "user.big").unwrap() == other);
    u.check_upper_is_layer_diff();
}

#[test]
fn s45_posix_acls_work_and_default_acl_is_inherited() {
    let stack = Stack::new().lower([file("f", "x").mode(0o640), dir("d")]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };
    let nobody = "65534";

    run(
        "setfacl",
        &[
            "-m".as_ref(),
            format!("u:{nobody}:r").as_ref(),
            u.m("f").as_os_str(),
        ],
    );
    run(
        "setfacl",
        &[
            "-d".as_ref(),
            "-m".as_ref(),
            format!("u:{nobody}:rx").as_ref(),
            u.m("d").as_os_str(),
        ],
    );
    u.write("d/new", "n");
    fs::create_dir(u.m("d/sub")).unwrap();
    u.remount();

    let get = |p: &std::path::Path| run("getfacl", &["-n".as_ref(), p.as_os_str()]);
    assert!(get(&u.m("f")).contains(&format!("user:{nobody}:r--")));
    assert!(get(&u.u("f")).contains(&format!("user:{nobody}:r--")));
    assert!(get(&u.m("d")).contains(&format!("default:user:{nobody}:r-x")));
    // Inherited: an access entry on the new file (masked by its create mode), and both an access
    // and a default entry on the new subdirectory.
    assert!(get(&u.m("d/new")).contains(&format!("user:{nobody}:r-x")));
    let sub = get(&u.m("d/sub"));
    assert!(sub.contains(&format!("default:user:{nobody}:r-x")), "{sub}");
    assert!(get(&u.u("d/new")).contains(&format!("user:{nobody}:r-x")));
    // The ACL is enforced through the mount: nobody can read f (group/other cannot).
    assert_eq!(as_nobody("cat \"$1\"", &u.m("f")), "x");
    u.check_upper_is_layer_diff();
}

#[test]
fn s46_setuid_kept_after_fchown_fchmod_and_cleared_by_unprivileged_write() {
    let stack = Stack::new().lower([dir("d").mode(0o777), file("d/lo", "lower").mode(0o644)]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };

    for name in ["d/new", "d/lo"] {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(u.m(name))
            .unwrap();
        f.write_all(b"#!/bin/sh\n").unwrap();
        std::os::unix::fs::fchown(&f, Some(65534), Some(65534)).unwrap();
        f.set_permissions(fs::Permissions::from_mode(0o4755))
            .unwrap();
        drop(f);
        assert_eq!(u.stat(name).mode() & 0o7777, 0o4755, "{name}");
    }
    u.remount();
    for name in ["d/new", "d/lo"] {
        assert_eq!(u.stat(name).mode() & 0o7777, 0o4755, "{name} after remount");
        assert_eq!(
            fs::metadata(u.u(name)).unwrap().mode() & 0o7777,
            0o4755,
            "upper {name}"
        );
        as_nobody("echo more >> \"$1\"", &u.m(name));
        assert_eq!(
            u.stat(name).mode() & 0o7777,
            0o755,
            "{name}: S_ISUID not cleared by an unprivileged write"
        );
    }
    u.remount();
    assert_eq!(u.stat("d/new").mode() & 0o7777, 0o755);
    assert_eq!(u.read_str("d/lo"), "#!/bin/sh\nmore\n");
    u.check_upper_is_layer_diff();
}

#[test]
fn unprivileged_write_to_a_set_id_file_open_for_reading_clears_the_bits() {
    // The reader's open passes through; the kernel fails an open that does not while it does,
    // so the writer shares the backing file and its writes never reach the daemon: the bits
    // go when the unprivileged writer opens. Once in the upper (copied up by a root write
    // before the reader opened), and once with the reader on the lower copy.
    let stack = Stack::new().lower([
        file("up", "u").mode(0o4755).owner(65534, 65534),
        file("low", "l").mode(0o6775).owner(65534, 65534),
    ]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };
    u.append("up", b"+");
    assert_eq!(
        u.stat("up").mode() & 0o7777,
        0o4755,
        "root's write keeps S_ISUID"
    );
    for (name, was, left) in [("up", "u+", 0o755), ("low", "l", 0o775)] {
        let reader = fs::File::open(u.m(name)).unwrap();
        as_nobody("printf more >> \"$1\"", &u.m(name));
        let want = format!("{was}more");
        assert_eq!(u.read_str(name), want, "{name}");
        assert_eq!(u.stat(name).mode() & 0o7777, left, "{name}: merged view");
        assert_eq!(
            fs::metadata(u.u(name)).unwrap().mode() & 0o7777,
            left,
            "{name}: upper"
        );
        assert_eq!(fs::read_to_string(u.u(name)).unwrap(), want);
        drop(reader);
    }
    assert_eq!(fs::metadata(u.l(0, "low")).unwrap().mode() & 0o7777, 0o6775);
    assert_eq!(fs::read_to_string(u.l(0, "low")).unwrap(), "l");
    u.check_upper_is_layer_diff();
}

#[test]
fn missing_selinux_label_reads_as_unsupported_and_a_present_one_reads_back() {
    // `ls -l` asks every file for security.selinux; ENOTSUP makes it stop asking (see
    // fs::unlabelled), so only a missing label changes its answer.
    let label = "system_u:object_r:etc_t:s0";
    let stack = Stack::new().on_tmpfs().lower([
        file("plain", "p"),
        file("labelled", "l").xattr("security.selinux", label),
    ]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };
    let errno = |p: &std::path::Path, name: &str| lgetxattr(p, name).unwrap_err().raw_os_error();
    assert_eq!(
        errno(&u.m("plain"), "security.selinux"),
        Some(libc::EOPNOTSUPP)
    );
    assert_eq!(errno(&u.m("plain"), "security.other"), Some(libc::ENODATA));
    assert_eq!(errno(&u.m("plain"), "user.missing"), Some(libc::ENODATA));
    assert_eq!(
        lgetxattr(&u.m("labelled"), "security.selinux").unwrap(),
        label.as_bytes()
    );
    // The label survives a copy-up, and a label set through the mount reads back.
    u.write("labelled", "changed");
    lsetxattr(&u.m("plain"), "security.selinux", label.as_bytes()).unwrap();
    u.remount();
    for n in ["labelled", "plain"] {
        assert_eq!(
            lgetxattr(&u.m(n), "security.selinux").unwrap(),
            label.as_bytes(),
            "{n}"
        );
        assert_eq!(
            lgetxattr(&u.u(n), "security.selinux").unwrap(),
            label.as_bytes(),
            "{n}"
        );
    }
    u.check_upper_is_layer_diff();
}

/// Runs `sh -c script file` as uid/gid 65534 with no groups (no CAP_FSETID); its output.
fn as_nobody(script: &str, file: &std::path::Path) -> String {
    let id = [
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "sh",
        "-c",
        script,
        "sh",
    ];
    let mut args: Vec<&std::ffi::OsStr> = id.iter().map(std::ffi::OsStr::new).collect();
    args.push(file.as_os_str());
    run("setpriv", &args)
}

#[test]
fn set_id_bits_follow_cap_fsetid_not_the_uid_on_truncate_and_o_trunc() {
    // The kernel says per request whether the caller lacks CAP_FSETID; root without it
    // clears the bits like anyone, root with it keeps them (once, over /dev/fuse, the uid
    // stood in for the flag, and root kept them either way).
    let stack = Stack::new().lower([
        file("trunc", "data").mode(0o4755),
        file("otrunc", "data").mode(0o2775),
        file("kept", "data").mode(0o4755),
    ]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };
    let no_fsetid = |script: &str, f: &std::path::Path| {
        let args = [
            "--inh-caps=-fsetid",
            "--bounding-set=-fsetid",
            "sh",
            "-c",
            script,
            "sh",
        ];
        let mut a: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        a.push(f.as_os_str());
        run("setpriv", &a)
    };
    no_fsetid("truncate -s 2 \"$1\"", &u.m("trunc"));
    no_fsetid(": > \"$1\"", &u.m("otrunc"));
    run(
        "truncate",
        &[std::ffi::OsStr::new("-s2"), u.m("kept").as_os_str()],
    );
    for (name, mode) in [("trunc", 0o755), ("otrunc", 0o775), ("kept", 0o4755)] {
        assert_eq!(
            u.stat(name).mode() & 0o7777,
            mode,
            "{name} in the merged view"
        );
        assert_eq!(
            fs::metadata(u.u(name)).unwrap().mode() & 0o7777,
            mode,
            "upper {name}"
        );
    }
    assert_eq!(fs::metadata(u.l(0, "kept")).unwrap().len(), 4);
    u.check_upper_is_layer_diff();
}

#[test]
fn set_id_bits_go_on_unprivileged_truncate_or_o_trunc_and_capabilities_on_any_write() {
    // Under FUSE_HANDLE_KILLPRIV_V2 the kernel leaves both to the daemon or the layer
    // filesystem; the lower copies keep theirs.
    // vfs_cap_data revision 2, effective, CAP_NET_RAW permitted.
    let cap: [u8; 20] = [
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let stack = Stack::new().lower([
        file("sgid", "data").mode(0o6775).owner(65534, 65534),
        file("otrunc", "data").mode(0o4755).owner(65534, 65534),
        file("capped", "data").xattr("security.capability", cap),
    ]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };
    as_nobody("truncate -s 2 \"$1\"", &u.m("sgid"));
    assert_eq!(u.stat("sgid").mode() & 0o7777, 0o775, "merged view");
    assert_eq!(fs::metadata(u.u("sgid")).unwrap().mode() & 0o7777, 0o775);
    assert_eq!(
        fs::metadata(u.l(0, "sgid")).unwrap().mode() & 0o7777,
        0o6775
    );
    // The same for an O_TRUNC open.
    as_nobody(": > \"$1\"", &u.m("otrunc"));
    assert_eq!(u.stat("otrunc").mode() & 0o7777, 0o755, "merged view");
    assert_eq!(fs::metadata(u.u("otrunc")).unwrap().len(), 0);
    assert_eq!(fs::metadata(u.u("otrunc")).unwrap().mode() & 0o7777, 0o755);

    assert_eq!(
        lgetxattr(&u.m("capped"), "security.capability").unwrap(),
        cap
    );
    u.append("capped", b"+");
    u.remount();
    assert_eq!(u.read_str("capped"), "data+");
    for p in [u.m("capped"), u.u("capped")] {
        let e = lgetxattr(&p, "security.capability").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODATA), "{p:?}");
    }
    assert_eq!(
        lgetxattr(&u.l(0, "capped"), "security.capability").unwrap(),
        cap
    );
    u.check_upper_is_layer_diff();
}

/// Maps `len` bytes of `f` shared and writable, writes `data` at 0 through the mapping and
/// syncs it.
fn write_through_shared_map(f: &fs::File, data: &[u8]) -> std::io::Result<()> {
    let mut map = shared_map(f, data.len())?;
    map[..data.len()].copy_from_slice(data);
    map.flush()
}

fn shared_map(f: &fs::File, len: usize) -> std::io::Result<memmap2::MmapMut> {
    // SAFETY: the file is private to this test while the map lives.
    unsafe { memmap2::MmapOptions::new().len(len).map_mut(f) }
}

#[test]
fn set_id_files_map_shared_and_writable_and_unprivileged_writes_still_clear_the_bits() {
    // Set-id files opened for writing are served with direct I/O (their writes must reach
    // the daemon, which clears the bits); the kernel allowed no shared writable mapping of
    // such a file (ENODEV) until the INIT reply asked for FUSE_DIRECT_IO_ALLOW_MMAP.
    let stack = Stack::new().lower([
        file("suid", "hello world").mode(0o4755),
        file("sgid", "hello world").mode(0o2775),
        file("plain", "hello world").mode(0o755),
        file("nobody", "hello world").mode(0o4777),
    ]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };
    for name in ["suid", "sgid", "plain"] {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(u.m(name))
            .unwrap();
        write_through_shared_map(&f, b"HELLO")
            .unwrap_or_else(|e| panic!("{name}: shared writable mmap: {e}"));
        // Another open while the mapping lives (the inode is in caching mode meanwhile).
        assert_eq!(
            u.read_str(name),
            "HELLO world",
            "{name}: read beside the map"
        );
        drop(f);
        assert_eq!(u.read_str(name), "HELLO world", "{name}");
        assert_eq!(fs::read_to_string(u.u(name)).unwrap(), "HELLO world");
        assert_eq!(fs::read_to_string(u.l(0, name)).unwrap(), "hello world");
    }
    // Root writing through a mapping keeps the bits, as on the kernel's filesystems.
    assert_eq!(u.stat("suid").mode() & 0o7777, 0o4755);
    assert_eq!(u.stat("sgid").mode() & 0o7777, 0o2775);
    // An unprivileged write() to a set-id file still clears them, mapping or not.
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(u.m("nobody"))
        .unwrap();
    write_through_shared_map(&f, b"HELLO").unwrap();
    as_nobody("printf X >> \"$1\"", &u.m("nobody"));
    drop(f);
    assert_eq!(u.read_str("nobody"), "HELLO worldX");
    assert_eq!(u.stat("nobody").mode() & 0o7777, 0o777);
    assert_eq!(fs::metadata(u.u("nobody")).unwrap().mode() & 0o7777, 0o777);
    assert_eq!(
        fs::metadata(u.l(0, "nobody")).unwrap().mode() & 0o7777,
        0o4777
    );
    u.remount();
    assert_eq!(u.read_str("suid"), "HELLO world");
    u.check_upper_is_layer_diff();
}
