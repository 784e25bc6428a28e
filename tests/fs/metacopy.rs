//! `-o metacopy=on`: metadata changes to lower files copy up no data; the data follows on the
//! first write, and `unionfs-layer export --lowers` fills it into the tarball.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use crate::common::*;

const SIZE: usize = 4 << 20;

fn data() -> Vec<u8> {
    (0..SIZE).map(|i| (i * 7 % 251) as u8).collect()
}

/// A mount with metacopy on over one lower holding `d/big` (4 MiB of real data).
fn union() -> Option<Union> {
    if is_kernel() {
        eprintln!("skip: metacopy stubs are unionfs's own upper format");
        return None;
    }
    Union::mount(
        Stack::new()
            .lower([
                dir("d"),
                file("d/big", data()).mode(0o644),
                file("d/small", "s"),
            ])
            .unionfs_opt("metacopy=on"),
    )
}

/// The upper copy holds no data blocks and carries the stub record.
fn assert_stub(u: &Union, rel: &str) {
    let m = fs::symlink_metadata(u.u(rel)).unwrap();
    assert_eq!(m.len() as usize, SIZE, "{rel}: the stub keeps the size");
    assert!(
        m.blocks() < 64,
        "{rel}: a metadata-only copy-up wrote {} blocks of data",
        m.blocks()
    );
    assert!(
        lgetxattr(&u.u(rel), "trusted.unionfs.metacopy").is_ok(),
        "{rel}: no stub record"
    );
}

/// The upper copy is a whole file: all data blocks, no stub record.
fn assert_full(u: &Union, rel: &str, want: &[u8]) {
    let m = fs::symlink_metadata(u.u(rel)).unwrap();
    assert!(
        m.blocks() as usize * 512 >= want.len(),
        "{rel}: data missing in the upper"
    );
    assert!(
        lgetxattr(&u.u(rel), "trusted.unionfs.metacopy").is_err(),
        "{rel}: stub record left after the data came up"
    );
    assert!(
        fs::read(u.u(rel)).unwrap() == want,
        "{rel}: upper data differs"
    );
}

/// Appends `tail` to the stub `rel` through the mount; checks the upper then holds all the
/// data, and returns it.
fn append(u: &Union, rel: &str, tail: &[u8]) -> Vec<u8> {
    u.append(rel, tail);
    let mut want = data();
    want.extend_from_slice(tail);
    assert_full(u, rel, &want);
    want
}

#[test]
fn chmod_chown_touch_xattr_copy_no_data_then_write_fills_it() {
    let Some(mut u) = union() else { return };
    let big = u.m("d/big");
    fs::set_permissions(&big, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::lchown(&big, Some(1234), Some(5678)).unwrap();
    lsetxattr(&big, "user.note", b"kept").unwrap();
    // -h: utimensat on the name; plain touch opens the file for writing first.
    let touch = ["-h", "-m", "-d", "@981173106"].map(OsStr::new);
    run("touch", &[&touch[..], &[big.as_os_str()]].concat());
    assert_stub(&u, "d/big");
    let m = u.stat("d/big");
    assert_eq!(m.mode() & 0o7777, 0o600);
    assert_eq!((m.uid(), m.gid()), (1234, 5678));
    assert_eq!(lgetxattr(&big, "user.note").unwrap(), b"kept");
    assert_eq!(m.mtime(), 981_173_106, "touch -h");
    assert!(
        u.read("d/big") == data(),
        "the view reads the lower data through the stub"
    );
    // The record is ours: the view never lists or reads it.
    assert!(!llistxattr(&big)
        .unwrap()
        .iter()
        .any(|x| x.contains("unionfs")));

    // Survives a remount.
    u.remount();
    assert_stub(&u, "d/big");
    assert!(u.read("d/big") == data());

    // The first write brings the data up, under the metadata set before.
    let want = append(&u, "d/big", b"TAIL");
    assert!(u.read("d/big") == want);
    let m = fs::symlink_metadata(u.u("d/big")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o600);
    assert_eq!((m.uid(), m.gid()), (1234, 5678));
    assert_eq!(lgetxattr(&u.u("d/big"), "user.note").unwrap(), b"kept");
    u.remount();
    assert!(u.read("d/big") == want);
}

#[test]
fn rename_and_link_copy_no_data() {
    let Some(mut u) = union() else { return };
    fs::rename(u.m("d/big"), u.m("moved")).unwrap();
    assert_stub(&u, "moved");
    u.assert_upper_whiteout("d/big");
    fs::hard_link(u.m("d/small"), u.m("d/small2")).unwrap();
    assert_eq!(u.read("d/small2"), b"s");
    u.remount();
    assert!(
        u.read("moved") == data(),
        "a renamed stub reads from its old lower path"
    );
    u.assert_enoent("d/big");
}

#[test]
fn truncate_of_a_stub() {
    let Some(u) = union() else { return };
    fs::set_permissions(u.m("d/big"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_stub(&u, "d/big");
    // To a non-zero size: the data comes up first, then is cut.
    fs::OpenOptions::new()
        .write(true)
        .open(u.m("d/big"))
        .unwrap()
        .set_len(100)
        .unwrap();
    assert!(u.read("d/big") == data()[..100]);
    assert_full(&u, "d/big", &data()[..100]);

    let Some(u2) = union() else { return };
    fs::set_permissions(u2.m("d/big"), fs::Permissions::from_mode(0o640)).unwrap();
    // An O_TRUNC open: nothing to copy, the record goes.
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(u2.m("d/big"))
        .unwrap();
    assert_eq!(u2.stat("d/big").len(), 0);
    assert_full(&u2, "d/big", b"");
    assert_eq!(u2.stat("d/big").mode() & 0o7777, 0o640);
}

#[test]
fn reader_of_a_stub_keeps_reading_while_a_writer_fills_it() {
    let Some(u) = union() else { return };
    fs::set_permissions(u.m("d/big"), fs::Permissions::from_mode(0o666)).unwrap();
    let mut reader = fs::File::open(u.m("d/big")).unwrap();
    let mut head = vec![0u8; 1000];
    reader.read_exact(&mut head).unwrap();
    let mut w = fs::OpenOptions::new()
        .write(true)
        .open(u.m("d/big"))
        .unwrap();
    w.write_all(b"NEWHEAD").unwrap();
    drop(w);
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    assert_eq!(
        rest.len(),
        SIZE - 1000,
        "the reader's file ends where it did"
    );
    let now = u.read("d/big");
    assert_eq!(&now[..7], b"NEWHEAD");
    assert!(now[7..] == data()[7..]);
}

#[test]
fn metacopy_off_copies_data_on_chmod() {
    if is_kernel() {
        return;
    }
    let Some(u) = Union::mount(Stack::new().lower([file("big", data())])) else {
        return;
    };
    fs::set_permissions(u.m("big"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_full(&u, "big", &data());
}

#[test]
fn stub_whose_lower_changed_reports_eio_and_names_the_file() {
    let Some(mut u) = union() else { return };
    fs::set_permissions(u.m("d/big"), fs::Permissions::from_mode(0o600)).unwrap();
    u.unmount();
    // Someone replaced the lower file behind the union's back.
    fs::write(u.l(0, "d/big"), b"other").unwrap();
    u.resnapshot();
    u.do_mount();
    let e = fs::read(u.m("d/big")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let log = u.daemon_log();
    assert!(
        log.contains("d/big") && log.contains("no lower layer"),
        "the daemon log does not say which file lost its data: {log}"
    );
}

#[test]
fn export_fills_stub_data_from_the_lowers_and_refuses_without_them() {
    let Some(mut u) = union() else { return };
    fs::set_permissions(u.m("d/big"), fs::Permissions::from_mode(0o600)).unwrap();
    u.unmount();
    let upper = u.upper.clone().unwrap();
    let layer_bin = env!("CARGO_BIN_EXE_unionfs-layer");
    let tar = u.root.join("layer.tar");

    let layer = |args: &[&OsStr]| Command::new(layer_bin).args(args).output().unwrap();
    let export = [
        OsStr::new("export"),
        upper.as_os_str(),
        "-o".as_ref(),
        tar.as_os_str(),
    ];

    let out = layer(&export);
    assert!(
        !out.status.success(),
        "export of a stub without --lowers succeeded"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("d/big") && err.contains("--lowers"),
        "unclear error: {err}"
    );
    assert!(!tar.exists(), "a failed export left a partial tarball");

    let lowers = u.lowers[0].as_os_str().to_owned();
    let out = layer(&[&export[..], &["--lowers".as_ref(), lowers.as_os_str()]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let into = u.root.join("unpacked");
    let out = layer(&["import".as_ref(), tar.as_os_str(), into.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        fs::read(into.join("d/big")).unwrap() == data(),
        "exported data differs"
    );
    let m = fs::metadata(into.join("d/big")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o600);
    assert!(lgetxattr(&into.join("d/big"), "trusted.unionfs.metacopy").is_err());
}

#[test]
fn an_upper_with_stubs_works_as_a_lower_and_fill_makes_it_plain() {
    let Some(mut u) = union() else { return };
    fs::set_permissions(u.m("d/big"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_stub(&u, "d/big");
    // The upper becomes a lower (how images are built); its stub still reads the data.
    u.rotate();
    assert!(
        u.read("d/big") == data(),
        "a stub in a lower layer reads its source"
    );
    // A metadata change copies the stub up as a stub of the same source (chmod keeps size and
    // mtime, so the lower stub itself must not be taken for the data).
    fs::set_permissions(u.m("d/big"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_stub(&u, "d/big");
    assert!(u.read("d/big") == data());
    append(&u, "d/big", b"!");
    u.unmount();

    // `unionfs-layer fill` turns the rotated layer (a former upper) into a plain layer.
    let rotated = u.lowers[0].clone();
    let below = u.lowers[1].clone();
    let out = Command::new(env!("CARGO_BIN_EXE_unionfs-layer"))
        .args([OsStr::new("fill"), rotated.as_os_str()])
        .args([OsStr::new("--lowers"), below.as_os_str()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = rotated.join("d/big");
    assert!(
        fs::read(&p).unwrap() == data(),
        "fill left the stub without its data"
    );
    assert!(lgetxattr(&p, "trusted.unionfs.metacopy").is_err());
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
    u.resnapshot();
}

#[test]
fn stub_of_a_long_path_reads_and_fills() {
    if is_kernel() {
        return;
    }
    // A record longer than the first buffer the daemon reads it into.
    let dir_name = "d".repeat(200);
    let rel = format!("{dir_name}/{}", "f".repeat(200));
    let Some(u) = Union::mount(
        Stack::new()
            .lower([dir(&dir_name), file(&rel, data())])
            .unionfs_opt("metacopy=on"),
    ) else {
        return;
    };
    fs::set_permissions(u.m(&rel), fs::Permissions::from_mode(0o600)).unwrap();
    assert_stub(&u, &rel);
    assert!(u.read(&rel) == data());
    append(&u, &rel, b"end");
}
