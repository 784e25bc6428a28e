//! Building layers and capturing trees on plain directories (no mount): what the root
//! package's tests rely on to prove that lowers never change and that views agree.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::is_root;
use unionfs_harness::build::{build_layer, Format};
use unionfs_harness::entries::*;
use unionfs_harness::impls::{drop_internal_entries, escape_layer_path, is_mounted};
use unionfs_harness::ops::{lgetxattr, lsetxattr};
use unionfs_harness::scenario::{Kind, Layer};
use unionfs_harness::view::{self, capture, changes, ReadAs};

/// A fresh directory under the temp dir, removed (with anything mounted below it detached)
/// when the test ends, passing or not.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("unionfs-capture-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0.join("a b"), nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn layer(entries: impl IntoIterator<Item = unionfs_harness::scenario::Entry>) -> Layer {
    Layer {
        from: None,
        entries: entries.into_iter().collect(),
    }
}

#[test]
fn capture_reaches_past_path_max_with_one_fd_at_a_time() {
    let d = Dir::new("deep");
    // 3,000 levels (more than the fds a process may hold by default) and names that take the
    // paths past PATH_MAX, walked by fds as no path can name the bottom.
    let mut cur = std::fs::File::open(&d.0).unwrap();
    let long = "n".repeat(250);
    for i in 0..3000 {
        let name = if i % 100 == 0 { long.as_str() } else { "d" };
        nix::sys::stat::mkdirat(&cur, name, nix::sys::stat::Mode::from_bits_truncate(0o755))
            .unwrap();
        let fd = nix::fcntl::openat(
            &cur,
            name,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        cur = std::fs::File::from(fd);
    }
    let leaf = nix::fcntl::openat(
        &cur,
        "leaf",
        nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CREAT,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    std::fs::File::from(leaf)
        .write_all_at(b"bottom", 0)
        .unwrap();
    drop(cur);
    let t = capture(&d.0, ReadAs::Raw).unwrap();
    assert_eq!(t.nodes.len(), 1 + 3000 + 1);
    let (path, n) = t.nodes.iter().find(|(p, _)| p.ends_with("/leaf")).unwrap();
    assert!(path.len() > 4096 + 2000, "{}", path.len());
    assert_eq!(n.data.as_deref(), Some(&b"bottom"[..]));
    assert!(t.ghosts.is_empty());
    // The tree is removed the same way (std's remove_dir_all walks by fds too).
}

#[test]
fn capture_leaves_atimes_alone_and_sees_ctime_nanoseconds() {
    if !is_root() {
        return;
    }
    let d = Dir::new("atime");
    let l = layer([
        file("f", "data")
            .atime(1_000_000_000, 0)
            .mtime(1_000_000_001, 0),
        dir("sub").atime(1_000_000_000, 5),
    ]);
    build_layer(&d.0, &l, Format::Oci).unwrap();
    let before = capture(&d.0, ReadAs::Raw).unwrap();
    for p in ["f", "sub"] {
        let m = std::fs::symlink_metadata(d.0.join(p)).unwrap();
        assert_eq!(m.atime(), 1_000_000_000, "{p}: reading it moved its atime");
    }
    assert_eq!(before.nodes["f"].mtime, 1_000_000_001);
    // A change that moves only the ctime (by nanoseconds, within the same second) shows.
    lsetxattr(&d.0.join("f"), "user.x", b"1").unwrap();
    lgetxattr(&d.0.join("f"), "user.x").unwrap();
    let mut after = capture(&d.0, ReadAs::Raw).unwrap();
    assert!(!changes("t", &before, &after).is_empty());
    after.nodes.get_mut("f").unwrap().xattrs.clear();
    let c = changes("t", &before, &after);
    assert!(c.iter().any(|m| m.contains("ctime")), "{c:?}");
}

#[test]
fn digest_depends_on_content_only_and_sees_one_byte() {
    let d = Dir::new("digest");
    let size = 3 << 20;
    let sparse_path = d.0.join("sparse");
    let f = std::fs::File::create(&sparse_path).unwrap();
    f.set_len(size).unwrap();
    f.write_all_at(b"end", size - 3).unwrap();
    let mut dense = vec![0u8; size as usize];
    dense[size as usize - 3..].copy_from_slice(b"end");
    std::fs::write(d.0.join("dense"), &dense).unwrap();
    let t = capture(&d.0, ReadAs::View).unwrap();
    let (s, de) = (&t.nodes["sparse"], &t.nodes["dense"]);
    assert!(s.alloc < de.alloc, "the sparse file is not sparse here");
    assert_eq!(s.digest, de.digest);
    assert_eq!(s.digest, view::digest_bytes(&dense));
    dense[1 << 20] = 1;
    std::fs::write(d.0.join("dense"), &dense).unwrap();
    let t = capture(&d.0, ReadAs::View).unwrap();
    assert_ne!(t.nodes["sparse"].digest, t.nodes["dense"].digest);
}

#[test]
fn binary_xattrs_are_built_after_the_owner_and_compared_exactly() {
    if !is_root() {
        return;
    }
    let d = Dir::new("xattrs");
    // vfs_cap_data revision 2, CAP_NET_RAW: a chown would clear it, so it is set last.
    let cap: [u8; 20] = [
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let l = layer([
        file("capped", "x")
            .owner(1000, 1000)
            .mode(0o4755)
            .xattr("security.capability", cap),
        file("a", "x").xattr("user.bin", [0xff, 0xfe]),
        file("b", "x").xattr("user.bin", [0xff, 0xfd]),
    ]);
    build_layer(&d.0, &l, Format::Oci).unwrap();
    assert_eq!(
        lgetxattr(&d.0.join("capped"), "security.capability").unwrap(),
        cap
    );
    let m = std::fs::metadata(d.0.join("capped")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o4755, 1000));
    let t = capture(&d.0, ReadAs::View).unwrap();
    assert_eq!(t.nodes["a"].xattrs["user.bin"], [0xff, 0xfe]);
    let (mut a, mut b) = (t.clone(), t.clone());
    a.nodes.retain(|p, _| p == "a");
    b.nodes.retain(|p, _| p == "b");
    b.nodes.insert("a".into(), b.nodes["b"].clone());
    b.nodes.remove("b");
    let d = view::diff(&a, &b, view::Fields::SEMANTIC);
    assert!(d.iter().any(|x| x.field == "xattrs"), "{d:?}");
    assert_eq!(view::xattr_text(&[0xff, 0xfe]), "0xfffe");
}

#[test]
fn long_names_are_deleted_by_char_devices_and_odd_names_are_captured() {
    if !is_root() {
        return;
    }
    let d = Dir::new("names");
    let long = "x".repeat(252);
    let l = layer([
        wh(&long),
        wh("short"),
        char_wh("dev"),
        opq("o"),
        file("o/f", "f"),
    ]);
    build_layer(&d.0, &l, Format::Oci).unwrap();
    let m = std::fs::symlink_metadata(d.0.join(&long)).unwrap();
    assert_eq!((m.mode() & libc::S_IFMT, m.rdev()), (libc::S_IFCHR, 0));
    assert!(d.0.join(".wh.short").is_file());
    // A name that is not UTF-8 is captured, not taken for a lookup failure.
    std::fs::write(d.0.join(OsStr::from_bytes(b"bad\xffname")), "b").unwrap();
    let t = capture(&d.0, ReadAs::Layer).unwrap();
    let want: Vec<&str> = vec!["dev", "short", long.as_str()];
    assert_eq!(
        t.whiteouts.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        {
            let mut w = want.clone();
            w.sort();
            w
        }
    );
    assert!(t.nodes["o"].opaque);
    assert_eq!(t.nodes[r"bad\xffname"].kind, Kind::File);
    assert!(t.ghosts.is_empty());
}

#[test]
fn mount_points_with_escaped_names_and_layer_paths_with_colons() {
    if !is_root() {
        return;
    }
    let d = Dir::new("mnt");
    let m = d.0.join("a b");
    std::fs::create_dir(&m).unwrap();
    assert!(!is_mounted(&m));
    nix::mount::mount(
        Some("tmpfs"),
        &m,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    assert!(is_mounted(&m), "mountinfo writes the space as \\040");
    nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH).unwrap();
    assert_eq!(escape_layer_path(Path::new("/l:a\\b")), "/l\\:a\\\\b");
    // An upper made into a layer keeps its opaque marker, not our work dir.
    for n in [".wh..wh.unionfs", ".wh..wh.other"] {
        std::fs::create_dir(d.0.join(n)).unwrap();
    }
    std::fs::write(d.0.join(".wh..wh..opq"), "").unwrap();
    drop_internal_entries(&d.0).unwrap();
    let mut left: Vec<_> = std::fs::read_dir(&d.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, [".wh..wh..opq", "a b"]);
}
