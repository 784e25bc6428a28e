//! Issue 17, "Faults and bad input": hostile and corrupt layers that `hostile_layers.rs` does not
//! cover yet: symlink loops and long chains, whiteouts and opaque markers of the wrong file
//! type, a layer path that is a file or a symlink loop, owners beyond any id map (also inside
//! a user namespace), a 10,000-deep directory chain, and hostile tarball entries given to
//! `unionfs-layer import`. Each must give a clear error or a consistent view: no escape from a
//! layer, no crash, no hang, lowers unchanged.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::deep::Deep;
use crate::common::*;

#[test]
fn symlink_loops_and_long_chains_in_a_lower() {
    let mut l = vec![
        symlink("loop1", "loop2"),
        symlink("loop2", "loop1"),
        symlink("self", "self"),
        symlink("d/up", "../d/up"),
        symlink("d/dirloop", "."),
        file("target", "end of the chain"),
    ];
    // 45 links in a row: more than the kernel's 40 for one path walk.
    for i in 0..45 {
        l.push(symlink(&format!("c{i}"), &format!("c{}", i + 1)));
    }
    l.push(symlink("c45", "target"));
    let Some(mut u) = Union::mount(Stack::new().lower(l)) else {
        return;
    };
    let m = |r: &str| u.m(r);
    for name in ["loop1", "loop2", "self", "d/up"] {
        assert!(u.stat(name).file_type().is_symlink(), "{name}");
        assert_errno(fs::metadata(m(name)), libc::ELOOP, name);
        assert_errno(fs::File::open(m(name)).map(drop), libc::ELOOP, name);
        assert_errno(fs::write(m(name), "x"), libc::ELOOP, name);
    }
    assert_eq!(fs::read_link(m("loop1")).unwrap(), Path::new("loop2"));
    // A link to `.` is a directory you can walk into forever; the union just answers.
    assert_eq!(
        u.read_str("d/dirloop/dirloop/dirloop/../target"),
        "end of the chain"
    );
    assert_errno(fs::read(m("c0")), libc::ELOOP, "a chain of 46 links");
    assert_eq!(u.read_str("c10"), "end of the chain");
    // Changes to the links themselves work: they are copied up as links.
    fs::rename(m("loop1"), m("loop3")).unwrap();
    std::os::unix::fs::lchown(m("self"), Some(7), Some(7)).unwrap();
    fs::remove_file(m("loop2")).unwrap();
    std::os::unix::fs::symlink("loop3", m("loop4")).unwrap();
    let r = within(Duration::from_secs(30), "find over the loops", {
        let mnt = u.mnt.clone();
        move || Command::new("find").arg(&mnt).arg("-follow").output()
    });
    let out = r.unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    u.remount();
    assert_eq!(fs::read_link(u.m("loop3")).unwrap(), Path::new("loop2"));
    assert!(!u.exists("loop1") && !u.exists("loop2"));
    assert_eq!(u.stat("self").uid(), 7);
    assert!(fs::symlink_metadata(u.u("self"))
        .unwrap()
        .file_type()
        .is_symlink());
    u.check_upper_is_layer_diff();
}

#[test]
fn whiteouts_and_opaque_markers_of_the_wrong_type() {
    // `.wh.NAME` and `.wh..wh..opq` are read by name, whatever their file type (as OCI tools
    // apply them): a directory whiteout hides NAME and shows nothing of its own contents; an
    // opaque marker that is a directory makes its directory opaque; the opaque xattr on a
    // regular file changes nothing (a file hides what is below it anyway).
    if is_kernel() {
        eprintln!("SKIP on kernel: OCI whiteout names");
        return;
    }
    let stack = Stack::new()
        .lower([
            dir(".wh.x"),
            file(".wh.x/inside", "never shown"),
            symlink(".wh.y", "/etc/passwd"),
            dir("d/.wh..wh..opq"),
            file("d/.wh..wh..opq/inside", "never shown"),
            file("d/a", "top a"),
            file("e", "a file marked opaque").xattr("user.overlay.opaque", "y"),
            dir("f"),
            file("f/.wh..wh..opq", "opaque marker with data"),
            file("f/mine", "mine"),
        ])
        .lower([
            file("x", "hidden"),
            file("y", "hidden"),
            file("d/b", "below"),
            file("e/under", "below a file"),
            file("f/below", "below"),
            file("z", "z"),
        ]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };
    assert_eq!(u.names(""), set(&["d", "e", "f", "z"]));
    u.assert_enoent("x");
    u.assert_enoent("y");
    u.assert_enoent(".wh.x");
    u.assert_enoent(".wh.x/inside");
    assert_eq!(u.names("d"), set(&["a"]));
    u.assert_enoent("d/.wh..wh..opq");
    assert!(u.stat("e").is_file());
    assert_eq!(u.read_str("e"), "a file marked opaque");
    assert_eq!(u.names("f"), set(&["mine"]));
    // Over the corrupt entries the union still works, and the upper stays a layer diff.
    u.write("x", "new x");
    fs::create_dir(u.m("y")).unwrap();
    u.write("d/b", "new b");
    fs::remove_file(u.m("d/a")).unwrap();
    u.remount();
    assert_eq!(u.names(""), set(&["d", "e", "f", "x", "y", "z"]));
    assert_eq!(u.read_str("x"), "new x");
    assert_eq!(u.names("y"), set(&[]));
    assert_eq!(u.names("d"), set(&["b"]));
    u.check_upper_is_layer_diff();
}

#[test]
fn corrupt_upper_with_a_directory_whiteout() {
    // A directory named `.wh.x` in the upper (a corrupt or hand-made upper) hides `x` like a
    // whiteout file. Creating `x` or a directory `w` over it through the union replaces it,
    // with what it held; nothing is left half made.
    if is_kernel() {
        eprintln!("SKIP on kernel: OCI whiteout names");
        return;
    }
    let stack = Stack::new()
        .lower([file("x", "lower x"), file("w", "lower w")])
        .upper([dir(".wh.x"), file(".wh.x/junk", "junk"), dir(".wh.w")]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };
    assert_eq!(u.names(""), set(&[]));
    fs::write(u.m("x"), "new x").expect("create over a directory whiteout");
    fs::create_dir(u.m("w")).expect("mkdir over a directory whiteout");
    u.remount();
    assert_eq!(u.names(""), set(&["w", "x"]));
    assert_eq!(u.read_str("x"), "new x");
    assert_eq!(u.names("w"), set(&[]));
    u.assert_upper_opaque("w");
    assert!(!u.u(".wh.x").exists() && !u.u(".wh.w").exists());
    u.check_upper_is_layer_diff();
}

#[test]
fn a_layer_that_is_not_a_directory_is_refused_clearly() {
    if is_kernel() {
        eprintln!("SKIP on kernel: unionfs-mount's messages");
        return;
    }
    let Some(u) = Union::build(Stack::new().lower([file("f", "f")])) else {
        return;
    };
    let file_layer = u.root.join("layer-file");
    fs::write(&file_layer, "not a dir").unwrap();
    let loop_layer = u.root.join("layer-loop");
    std::os::unix::fs::symlink(&loop_layer, &loop_layer).unwrap();
    let up = u.u("");
    let l = u.l(0, "");
    let p = |p: &Path| p.to_str().unwrap().to_string();
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "lower is a file",
            vec![format!("{}:{}", p(&l), p(&file_layer)), p(&up)],
            "a layer must be a directory",
        ),
        (
            "upper is a file",
            vec![p(&l), p(&file_layer)],
            "a layer must be a directory",
        ),
        (
            "lower is a symlink loop",
            vec![p(&loop_layer), p(&up)],
            "symbolic links",
        ),
        (
            "workdir is a file",
            vec![
                "-o".into(),
                format!(
                    "lowerdir={},upperdir={},workdir={}",
                    p(&l),
                    p(&up),
                    p(&file_layer)
                ),
            ],
            "workdir",
        ),
        (
            "mount point is a file",
            vec![p(&l), p(&up)],
            "not a directory",
        ),
    ];
    for (what, mut args, says) in cases {
        let mnt = if what == "mount point is a file" {
            file_layer.clone()
        } else {
            u.mnt.clone()
        };
        args.push(p(&mnt));
        let out = within(Duration::from_secs(20), what, move || {
            Command::new(bin()).args(&args).output().unwrap()
        });
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: mounted");
        assert!(
            err.contains(says),
            "{what}: the message does not say {says:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert!(!is_mountpoint(&u.mnt), "{what}: left a mount");
    }
    assert_eq!(fs::read_to_string(&file_layer).unwrap(), "not a dir");
}

#[test]
fn owners_beyond_any_id_map() {
    // uid/gid 4000000000 and 4294967294 (the largest valid id) in a lower: shown, kept across
    // copy-up and remount, also written into the upper as they are.
    const BIG: u32 = 4_000_000_000;
    const MAX: u32 = u32::MAX - 1;
    let stack = Stack::new().lower([
        file("big", "b").owner(BIG, BIG + 1),
        file("max", "m").owner(MAX, MAX),
        dir("d").owner(BIG, BIG),
        file("d/inner", "i").owner(BIG, BIG),
    ]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };
    assert_eq!((u.stat("big").uid(), u.stat("big").gid()), (BIG, BIG + 1));
    assert_eq!(u.stat("max").uid(), MAX);
    u.append("big", b"+");
    u.append("max", b"+");
    u.append("d/inner", b"+");
    std::os::unix::fs::lchown(u.m("d"), Some(BIG + 5), None).unwrap();
    u.remount();
    assert_eq!((u.stat("big").uid(), u.stat("big").gid()), (BIG, BIG + 1));
    assert_eq!(u.stat("max").gid(), MAX);
    assert_eq!(u.stat("d").uid(), BIG + 5);
    assert_eq!(u.stat("d/inner").uid(), BIG);
    let md = fs::metadata(u.u("big")).unwrap();
    assert_eq!((md.uid(), md.gid()), (BIG, BIG + 1));
    assert_eq!(u.read_str("big"), "b+");
    u.check_upper_is_layer_diff();
}

#[test]
fn owners_not_mapped_in_a_user_namespace() {
    // The daemon and its callers in a user namespace that maps only uid/gid 0: the lower's
    // 4000000000 is not mapped there. The file shows the overflow id (65534) and reads. The
    // kernel itself refuses to write (EACCES), rename or remove (EOVERFLOW) a file whose
    // owner it cannot name there, before the daemon is asked. Renaming its directory makes
    // the daemon copy it up: the copy belongs to the namespace's root, the only owner the
    // daemon can give it there (it does not fail on the chown).
    if is_kernel() {
        eprintln!("SKIP on kernel: unionfs in a user namespace");
        return;
    }
    const BIG: u32 = 4_000_000_000;
    let stack = Stack::new().lower([
        dir("d"),
        file("d/f", "data").owner(BIG, BIG).mode(0o666),
        file("g", "g"),
    ]);
    let Some(u) = Union::build(stack) else {
        return;
    };
    let script = r#"
        "$1" "$2" "$3" "$4" || exit 1
        m="$4"
        stat -c '%u %g' "$m/d/f"
        cat "$m/d/f"; echo
        (echo more >> "$m/d/f") 2>/dev/null && echo wrote || echo write refused
        mv "$m/d/f" "$m/d/f2" 2>/dev/null && echo moved || echo rename refused
        rm -f "$m/d/f" 2>/dev/null && echo removed || echo unlink refused
        mv "$m/d" "$m/d2" && cat "$m/d2/f"; echo
        umount "$m"
    "#;
    let out = within(Duration::from_secs(30), "union in a user namespace", {
        let args: Vec<PathBuf> = vec![bin().into(), u.l(0, ""), u.u(""), u.mnt.clone()];
        move || {
            Command::new("unshare")
                .args(["-Urm", "--propagation", "private", "sh", "-c", script, "sh"])
                .args(&args)
                .output()
                .unwrap()
        }
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout, "65534 65534\ndata\nwrite refused\nrename refused\nunlink refused\ndata\n",
        "inside the namespace"
    );
    // Outside, the upper copy belongs to the namespace's root (real root here); the lower
    // keeps its owner (checked when `u` drops).
    let md = fs::metadata(u.u("d2/f")).unwrap();
    assert_eq!((md.uid(), md.gid()), (0, 0));
    assert_eq!(fs::read_to_string(u.u("d2/f")).unwrap(), "data");
    assert!(u.u(".wh.d").exists());
}

/// Bytes of one tar header block plus its data blocks.
fn tar_entry(name: &[u8], kind: u8, data: &[u8], link: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// One PAX extended-header record: `LEN key=value\n`, LEN counting itself.
fn pax(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut n = body.len() + 1;
    while body.len() + n.to_string().len() != n {
        n = body.len() + n.to_string().len();
    }
    format!("{n}{body}").into_bytes()
}

#[test]
fn hostile_tarball_entries_through_the_cli() {
    let root = PathBuf::from(format!("/tmp/unionfs-faults-tar-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let _cleanup = Deep(vec![root.clone()]);
    fs::create_dir_all(root.join("victim")).unwrap();
    fs::write(root.join("victim/file"), "precious").unwrap();
    let ok = tar_entry(b"fine", b'0', b"fine", b"");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "PAX path with ..",
            [
                tar_entry(b"PaxHeaders/x", b'x', &pax("path", "../evil"), b""),
                tar_entry(b"innocent", b'0', b"evil", b""),
            ]
            .concat(),
        ),
        (
            "PAX path absolute",
            [
                tar_entry(
                    b"PaxHeaders/x",
                    b'x',
                    &pax("path", "/tmp/unionfs-faults-evil"),
                    b"",
                ),
                tar_entry(b"innocent", b'0', b"evil", b""),
            ]
            .concat(),
        ),
        (
            "GNU long name with ..",
            [
                tar_entry(b"././@LongLink", b'L', b"a/../../evil\0", b""),
                tar_entry(b"innocent", b'0', b"evil", b""),
            ]
            .concat(),
        ),
        (
            "GNU long link name out",
            [
                tar_entry(b"././@LongLink", b'K', b"../victim/file\0", b""),
                tar_entry(b"h", b'1', b"", b"fine"),
            ]
            .concat(),
        ),
        (
            "PAX linkpath out",
            [
                tar_entry(
                    b"PaxHeaders/x",
                    b'x',
                    &pax("linkpath", "../victim/file"),
                    b"",
                ),
                tar_entry(b"h", b'1', b"", b"fine"),
            ]
            .concat(),
        ),
        (
            "file then directory through it",
            [
                tar_entry(b"f", b'0', b"x", b""),
                tar_entry(b"f/evil", b'0', b"evil", b""),
            ]
            .concat(),
        ),
    ];
    let layer_tool = env!("CARGO_BIN_EXE_unionfs-layer");
    let mut refused = 0;
    for (what, body) in cases {
        let tarball = root.join("in.tar");
        let mut all = ok.clone();
        all.extend_from_slice(&body);
        all.extend_from_slice(&[0u8; 1024]);
        fs::write(&tarball, &all).unwrap();
        let dir = root.join(format!("out-{refused}"));
        let out = within(Duration::from_secs(20), what, {
            let (t, d) = (tarball.clone(), dir.clone());
            move || {
                Command::new(layer_tool)
                    .arg("import")
                    .arg(&t)
                    .arg(&d)
                    .output()
                    .unwrap()
            }
        });
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: imported");
        assert!(
            err.contains("refused") && err.contains("entry"),
            "{what}: {err}"
        );
        assert_eq!(
            fs::read_to_string(root.join("victim/file")).unwrap(),
            "precious",
            "{what}"
        );
        assert_eq!(
            fs::metadata(root.join("victim/file")).unwrap().nlink(),
            1,
            "{what}"
        );
        assert!(
            !root.join("evil").exists() && !Path::new("/tmp/unionfs-faults-evil").exists(),
            "{what}"
        );
        refused += 1;
    }
    eprintln!("{refused} hostile tarballs refused");
    // The same long-name records in an honest layer: link targets longer than the header's
    // 100 bytes come through whole (they are what real layers use for deep paths).
    let long_dir = "l".repeat(60) + "/" + &"o".repeat(60);
    let long_file = format!("{long_dir}/target");
    let target = format!("../{long_file}");
    let honest = [
        tar_entry(
            b"././@LongLink",
            b'L',
            format!("{long_file}\0").as_bytes(),
            b"",
        ),
        tar_entry(b"truncated-name", b'0', b"data", b""),
        tar_entry(
            b"././@LongLink",
            b'K',
            format!("{target}\0").as_bytes(),
            b"",
        ),
        tar_entry(b"d/gnu-symlink", b'2', b"", b"truncated"),
        tar_entry(b"PaxHeaders/s", b'x', &pax("linkpath", &target), b""),
        tar_entry(b"d/pax-symlink", b'2', b"", b"truncated"),
        tar_entry(
            b"././@LongLink",
            b'K',
            format!("{long_file}\0").as_bytes(),
            b"",
        ),
        tar_entry(b"hardlink", b'1', b"", b"truncated"),
        vec![0u8; 1024],
    ]
    .concat();
    let tarball = root.join("honest.tar");
    fs::write(&tarball, honest).unwrap();
    let dir = root.join("honest");
    let out = Command::new(layer_tool)
        .arg("import")
        .arg(&tarball)
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read_to_string(dir.join(&long_file)).unwrap(), "data");
    for l in ["d/gnu-symlink", "d/pax-symlink"] {
        assert_eq!(
            fs::read_link(dir.join(l)).unwrap(),
            Path::new(&target),
            "{l}"
        );
        assert_eq!(fs::read_to_string(dir.join(l)).unwrap(), "data", "{l}");
    }
    let md = fs::metadata(dir.join("hardlink")).unwrap();
    assert_eq!(md.ino(), fs::metadata(dir.join(&long_file)).unwrap().ino());
}
