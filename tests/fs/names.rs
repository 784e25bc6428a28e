//! Name and path length limits: every call that takes a name works for names up to NAME_MAX
//! (255 bytes), including deletes of lower names too long for a `.wh.NAME` whiteout (252-255),
//! and fails with ENAMETOOLONG beyond it; paths through the mount work up to PATH_MAX while
//! the same paths under a layer root are longer.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::common::*;
use nix::sys::stat::{mknod, Mode, SFlag};

/// A name of `len` bytes made of `c`.
fn n(c: char, len: usize) -> String {
    std::iter::repeat_n(c, len).collect()
}

const LENGTHS: [usize; 4] = [251, 252, 254, 255];

/// Lower entries every length gets: files and directories for each operation on lower names.
fn lower_entries() -> Vec<E> {
    let mut v = vec![file("keep", "keep")];
    for len in LENGTHS {
        for c in ['o', 'm', 'w', 't', 'x', 'u', 'a', 'l', 'y'] {
            v.push(file(&n(c, len), format!("lower {c}{len}")));
        }
        v.push(file(&format!("{}/child", n('v', len)), "child"));
        v.push(file(&format!("{}/child", n('g', len)), "child"));
    }
    v
}

#[test]
fn every_call_works_on_names_up_to_name_max() {
    let Some(mut u) = Union::mount(Stack::new().lower(lower_entries())) else {
        return;
    };
    for len in LENGTHS {
        // New names.
        let c = n('c', len);
        fs::File::create(u.m(&c))
            .unwrap()
            .write_all(b"created")
            .unwrap();
        assert_eq!(u.read_str(&c), "created");
        fs::create_dir(u.m(&n('k', len))).unwrap();
        fs::write(u.m(&format!("{}/inner", n('k', len))), "in").unwrap();
        mknod(
            &u.m(&n('q', len)),
            SFlag::S_IFREG,
            Mode::from_bits_truncate(0o640),
            0,
        )
        .unwrap();
        nix::unistd::mkfifo(&u.m(&n('p', len)), Mode::from_bits_truncate(0o600)).unwrap();
        symlink(n('T', len), u.m(&n('s', len))).unwrap();
        assert_eq!(
            fs::read_link(u.m(&n('s', len))).unwrap(),
            Path::new(&n('T', len))
        );
        fs::hard_link(u.m(&c), u.m(&n('h', len))).unwrap();
        assert_eq!(u.stat(&c).nlink(), 2);
        fs::rename(u.m(&n('q', len)), u.m(&n('r', len))).unwrap();
        u.assert_enoent(&n('q', len));

        // Lower names: read, chmod, chown, truncate, xattrs (each copies up).
        assert_eq!(u.read_str(&n('o', len)), format!("lower o{len}"));
        fs::set_permissions(u.m(&n('m', len)), fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(u.stat(&n('m', len)).mode() & 0o7777, 0o600);
        std::os::unix::fs::chown(u.m(&n('w', len)), Some(4242), Some(4343)).unwrap();
        assert_eq!(
            (u.stat(&n('w', len)).uid(), u.stat(&n('w', len)).gid()),
            (4242, 4343)
        );
        nix::unistd::truncate(&u.m(&n('t', len)), 3).unwrap();
        assert_eq!(u.read_str(&n('t', len)), "low");
        let x = u.m(&n('x', len));
        lsetxattr(&x, "user.long", b"v").unwrap();
        assert_eq!(lgetxattr(&x, "user.long").unwrap(), b"v");
        assert!(llistxattr(&x).unwrap().contains(&"user.long".to_string()));
        lremovexattr(&x, "user.long").unwrap();
        assert!(!llistxattr(&x).unwrap().contains(&"user.long".to_string()));
        for c in ['m', 'w', 't', 'x'] {
            assert!(u.u(&n(c, len)).is_file(), "{c}{len} not copied up");
        }

        // Deletes of lower names: a whiteout of the form the name allows.
        fs::remove_file(u.m(&n('u', len))).unwrap();
        u.assert_enoent(&n('u', len));
        u.assert_upper_whiteout(&n('u', len));
        fs::remove_file(u.m(&format!("{}/child", n('v', len)))).unwrap();
        fs::remove_dir(u.m(&n('v', len))).unwrap();
        u.assert_enoent(&n('v', len));
        u.assert_upper_whiteout(&n('v', len));
        // Rename of a lower file: the old name gets a whiteout.
        fs::rename(u.m(&n('a', len)), u.m(&n('b', len))).unwrap();
        u.assert_enoent(&n('a', len));
        u.assert_upper_whiteout(&n('a', len));
        assert_eq!(u.read_str(&n('b', len)), format!("lower a{len}"));
        // Delete of a lower name that was copied up first: the upper entry goes, and the
        // whiteout takes its place.
        fs::set_permissions(u.m(&n('l', len)), fs::Permissions::from_mode(0o640)).unwrap();
        fs::remove_file(u.m(&n('l', len))).unwrap();
        u.assert_enoent(&n('l', len));
        u.assert_upper_whiteout(&n('l', len));
        // A merged directory that is in the upper too, removed whole.
        fs::write(u.m(&format!("{}/new", n('g', len))), "n").unwrap();
        fs::remove_file(u.m(&format!("{}/new", n('g', len)))).unwrap();
        fs::remove_file(u.m(&format!("{}/child", n('g', len)))).unwrap();
        fs::remove_dir(u.m(&n('g', len))).unwrap();
        u.assert_enoent(&n('g', len));
        u.assert_upper_whiteout(&n('g', len));
    }
    u.remount();
    let check_after = |u: &Union| {
        for len in LENGTHS {
            assert_eq!(u.read_str(&n('c', len)), "created");
            assert_eq!(u.read_str(&format!("{}/inner", n('k', len))), "in");
            assert!(u.stat(&n('p', len)).file_type_is_fifo());
            assert_eq!(u.stat(&n('r', len)).mode() & 0o7777, 0o640);
            assert_eq!(u.stat(&n('h', len)).ino(), u.stat(&n('c', len)).ino());
            for c in ['u', 'v', 'a', 'l', 'g', 'q'] {
                u.assert_enoent(&n(c, len));
            }
            assert!(!u.names("").contains(&n('u', len)));
            assert_eq!(u.read_str(&n('b', len)), format!("lower a{len}"));
            assert_eq!(u.read_str(&n('y', len)), format!("lower y{len}"));
        }
    };
    check_after(&u);
    u.check_upper_is_layer_diff();
    check_after(&u);
}

#[test]
fn a_deleted_long_name_can_be_created_again_by_every_call() {
    let mut entries = Vec::new();
    for len in LENGTHS {
        for c in ['f', 'd', 'r', 'R', 'l', 's'] {
            entries.push(file(&format!("{}/old", n(c, len)), "old child"));
        }
    }
    let Some(mut u) = Union::mount(Stack::new().lower(entries)) else {
        return;
    };
    fs::write(u.m("src-file"), "moved file").unwrap();
    for len in LENGTHS {
        // Each name is a lower directory: delete it, then make something new in its place.
        for c in ['f', 'd', 'r', 'R', 'l', 's'] {
            fs::remove_file(u.m(&format!("{}/old", n(c, len)))).unwrap();
            fs::remove_dir(u.m(&n(c, len))).unwrap();
            u.assert_upper_whiteout(&n(c, len));
        }
        fs::write(u.m(&n('f', len)), "new file").unwrap();
        fs::create_dir(u.m(&n('d', len))).unwrap();
        fs::write(u.m(&format!("src-{len}")), "renamed file").unwrap();
        fs::rename(u.m(&format!("src-{len}")), u.m(&n('r', len))).unwrap();
        fs::create_dir(u.m(&format!("srcdir-{len}"))).unwrap();
        fs::write(u.m(&format!("srcdir-{len}/x")), "x").unwrap();
        fs::rename(u.m(&format!("srcdir-{len}")), u.m(&n('R', len))).unwrap();
        fs::hard_link(u.m("src-file"), u.m(&n('l', len))).unwrap();
        symlink("target", u.m(&n('s', len))).unwrap();
    }
    let check = |u: &Union| {
        for len in LENGTHS {
            assert_eq!(u.read_str(&n('f', len)), "new file");
            assert_eq!(
                u.names(&n('d', len)),
                set(&[]),
                "old children shine through"
            );
            assert_eq!(u.read_str(&n('r', len)), "renamed file");
            assert_eq!(u.names(&n('R', len)), set(&["x"]));
            assert_eq!(u.read_str(&n('l', len)), "moved file");
            assert_eq!(
                fs::read_link(u.m(&n('s', len))).unwrap(),
                Path::new("target")
            );
            for c in ['f', 'd', 'r', 'R', 'l', 's'] {
                u.assert_no_upper_whiteout(&n(c, len));
            }
        }
        assert_eq!(u.stat("src-file").nlink(), 1 + LENGTHS.len() as u64);
    };
    check(&u);
    u.remount();
    check(&u);
    u.check_upper_is_layer_diff();
}

#[test]
fn rename_noreplace_onto_a_deleted_long_name_succeeds() {
    let len = 255;
    let Some(u) = Union::mount(Stack::new().lower([file(&n('z', len), "lower")])) else {
        return;
    };
    fs::remove_file(u.m(&n('z', len))).unwrap();
    fs::write(u.m("a"), "a").unwrap();
    rename2(&u.m("a"), &u.m(&n('z', len)), libc::RENAME_NOREPLACE).unwrap();
    assert_eq!(u.read_str(&n('z', len)), "a");
    fs::write(u.m("b"), "b").unwrap();
    assert_errno(
        rename2(&u.m("b"), &u.m(&n('z', len)), libc::RENAME_NOREPLACE),
        libc::EEXIST,
        "rename noreplace onto an existing long name",
    );
}

#[test]
fn every_call_refuses_names_beyond_name_max() {
    let Some(mut u) = Union::mount(Stack::new().lower([file("f", "f"), dir("d")])) else {
        return;
    };
    let long = n('z', 256);
    let p = u.m(&long);
    let e = libc::ENAMETOOLONG;
    assert_errno(fs::File::create(&p), e, "create");
    assert_errno(fs::File::open(&p), e, "open");
    assert_errno(fs::symlink_metadata(&p), e, "stat");
    assert_errno(fs::create_dir(&p), e, "mkdir");
    assert_errno(
        mknod(&p, SFlag::S_IFREG, Mode::from_bits_truncate(0o600), 0).map_err(io_err),
        e,
        "mknod",
    );
    assert_errno(
        nix::unistd::mkfifo(&p, Mode::from_bits_truncate(0o600)).map_err(io_err),
        e,
        "mkfifo",
    );
    assert_errno(symlink("t", &p), e, "symlink");
    assert_errno(fs::hard_link(u.m("f"), &p), e, "link");
    assert_errno(fs::rename(u.m("f"), &p), e, "rename to");
    assert_errno(fs::rename(&p, u.m("g")), e, "rename from");
    assert_errno(fs::remove_file(&p), e, "unlink");
    assert_errno(fs::remove_dir(&p), e, "rmdir");
    assert_errno(
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)),
        e,
        "chmod",
    );
    assert_errno(std::os::unix::fs::chown(&p, Some(1), Some(1)), e, "chown");
    assert_errno(nix::unistd::truncate(&p, 0).map_err(io_err), e, "truncate");
    assert_errno(lsetxattr(&p, "user.x", b"v"), e, "setxattr");
    assert_errno(lgetxattr(&p, "user.x"), e, "getxattr");
    assert_errno(llistxattr(&p), e, "listxattr");
    assert_errno(lremovexattr(&p, "user.x"), e, "removexattr");
    // Nothing of it reached the upper.
    assert_eq!(u.upper_names(""), set(&[]));
    u.remount();
    assert_eq!(u.names(""), set(&["d", "f"]));
}

fn io_err(e: nix::errno::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

/// Components of 200 bytes: `depth` of them joined with '/'.
fn deep_rel(depth: usize, last: &str) -> String {
    let mut parts: Vec<String> = (0..depth)
        .map(|i| format!("{i:03}{}", n('p', 197)))
        .collect();
    parts.push(last.to_string());
    parts.join("/")
}

/// Creates the directory chain `rel` below `root` one level at a time (relative to an open
/// directory), so that paths longer than PATH_MAX can be built on disk.
fn mkdir_deep(root: &Path, rel: &str) {
    let mut cur = fs::File::open(root).unwrap();
    for comp in rel.split('/') {
        let dirfd = std::os::fd::AsFd::as_fd(&cur);
        match nix::sys::stat::mkdirat(dirfd, comp, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => panic!("mkdirat {comp}: {e}"),
        }
        let fd = nix::fcntl::openat(
            dirfd,
            comp,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        cur = fs::File::from(fd);
    }
}

/// A relative path of exactly `len` bytes: 200-byte directory names, then one last name.
fn rel_of_len(len: usize) -> String {
    let mut rel = String::new();
    let mut left = len;
    let mut i = 0;
    while left > 255 {
        rel.push_str(&format!("{i:03}{}/", n('p', 197)));
        left -= 201;
        i += 1;
    }
    rel.push_str(&n('f', left));
    rel
}

/// Stat of `rel` below `root`, walked one component at a time (the whole path may be longer
/// than PATH_MAX).
fn stat_below(root: &Path, rel: &str) -> Option<nix::sys::stat::FileStat> {
    let mut cur = fs::File::open(root).ok()?;
    let comps: Vec<&str> = rel.split('/').collect();
    let (last, dirs) = comps.split_last()?;
    for comp in dirs {
        let fd = nix::fcntl::openat(
            std::os::fd::AsFd::as_fd(&cur),
            *comp,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .ok()?;
        cur = fs::File::from(fd);
    }
    nix::sys::stat::fstatat(
        std::os::fd::AsFd::as_fd(&cur),
        *last,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .ok()
}

#[test]
fn paths_up_to_path_max_work_and_longer_ones_are_refused() {
    let Some(mut u) = Union::build(Stack::new().lower([file("top", "t")])) else {
        return;
    };
    // A lower tree whose paths, under the layer root, are longer than PATH_MAX.
    let lower_rel = deep_rel(21, "deep");
    mkdir_deep(&u.l(0, ""), &lower_rel);
    u.resnapshot();
    u.do_mount();
    // The longest path a call takes: PATH_MAX - 1 bytes (PATH_MAX counts the NUL).
    let mnt_len = u.m("").as_os_str().len() + 1;
    let rel = rel_of_len(4095 - mnt_len);
    let p: PathBuf = u.m(&rel);
    assert_eq!(p.as_os_str().len(), 4095);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, "at PATH_MAX").unwrap();
    assert_eq!(fs::read_to_string(&p).unwrap(), "at PATH_MAX");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    lsetxattr(&p, "user.deep", b"1").unwrap();
    assert_eq!(lgetxattr(&p, "user.deep").unwrap(), b"1");
    let on_disk = stat_below(&u.u(""), &rel).expect("the file is not in the upper");
    assert_eq!(on_disk.st_mode & 0o7777, 0o600);
    assert!(u.u("").as_os_str().len() + 1 + rel.len() > 4096);
    fs::rename(&p, p.with_file_name("renamed")).unwrap();
    fs::rename(p.with_file_name("renamed"), &p).unwrap();
    fs::remove_file(&p).unwrap();
    assert!(fs::symlink_metadata(&p).is_err());
    assert!(stat_below(&u.u(""), &rel).is_none());
    fs::create_dir(&p).unwrap();
    fs::remove_dir(&p).unwrap();
    // One byte more is the kernel's ENAMETOOLONG, before any request reaches the daemon.
    let longer = PathBuf::from(format!("{}x", p.display()));
    assert_errno(
        fs::write(&longer, "x"),
        libc::ENAMETOOLONG,
        "path of PATH_MAX bytes",
    );
    // The lower's deep tree is reachable, and changes to it land in the upper, from a working
    // directory inside it.
    let half = deep_rel(10, "");
    let half = half.trim_end_matches('/');
    let rest = &lower_rel[half.len() + 1..];
    let out = std::process::Command::new("sh")
        .current_dir(u.m(half))
        .arg("-c")
        .arg(format!(
            "test -d '{rest}' && echo data > '{rest}/new' && cat '{rest}/new' && rm -r '{rest}'"
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deep lower path: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "data\n");
    let deep_parent = &lower_rel[..lower_rel.rfind('/').unwrap()];
    let deep_name = "deep";
    // unionfs writes `.wh.NAME`; kernel overlayfs a 0/0 char device named NAME.
    let file_wh = stat_below(&u.u(""), &format!("{deep_parent}/.wh.{deep_name}"));
    let dev_wh = stat_below(&u.u(""), &format!("{deep_parent}/{deep_name}"))
        .filter(|st| st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0);
    assert!(
        file_wh.is_some() || dev_wh.is_some(),
        "no whiteout for the removed deep lower directory"
    );
    u.remount();
    let again = std::process::Command::new("sh")
        .current_dir(u.m(half))
        .arg("-c")
        .arg(format!("test ! -e '{rest}'"))
        .status()
        .unwrap();
    assert!(again.success(), "the removed deep lower tree came back");
}

trait FifoCheck {
    fn file_type_is_fifo(&self) -> bool;
}

impl FifoCheck for fs::Metadata {
    fn file_type_is_fifo(&self) -> bool {
        std::os::unix::fs::FileTypeExt::is_fifo(&self.file_type())
    }
}
