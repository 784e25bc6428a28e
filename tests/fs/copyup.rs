//! docs/SCENARIOS.md "Copy-up", lines 20–30.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::common::*;

/// Deterministic non-repeating-looking bytes, so a misplaced block is detected.
pub(super) fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub(super) fn append(p: &Path, data: &[u8]) {
    let mut f = fs::OpenOptions::new().append(true).open(p).unwrap();
    f.write_all(data).unwrap();
}

#[test]
fn s20_append_to_lower_file_keeps_old_bytes() {
    let old = pattern(1 << 20, 20);
    let stack = Stack::new().lower([file("f", &old)]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };

    append(&u.m("f"), b"tail");
    let mut want = old.clone();
    want.extend_from_slice(b"tail");
    assert!(u.read("f") == want, "merged content differs after append");
    u.remount();
    assert!(u.read("f") == want, "content differs after remount");
    assert!(fs::read(u.u("f")).unwrap() == want, "upper content differs");
    u.check_upper_is_layer_diff();
}

fn assert_same_meta(a: &fs::Metadata, b: &fs::Metadata, what: &str) {
    assert_eq!(a.mode(), b.mode(), "{what}: mode");
    assert_eq!((a.uid(), a.gid()), (b.uid(), b.gid()), "{what}: owner");
    assert_eq!(
        (a.mtime(), a.mtime_nsec()),
        (b.mtime(), b.mtime_nsec()),
        "{what}: mtime"
    );
}

#[test]
fn s20_truncate_lower_file_keeps_prefix() {
    let old = pattern(1 << 20, 201);
    let stack = Stack::new().lower([file("f", &old), file("g", "short")]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };

    fs::OpenOptions::new()
        .write(true)
        .open(u.m("f"))
        .unwrap()
        .set_len(1000)
        .unwrap();
    // Growing by truncate leaves a zero-filled tail after the old bytes.
    fs::OpenOptions::new()
        .write(true)
        .open(u.m("g"))
        .unwrap()
        .set_len(10)
        .unwrap();
    u.remount();
    assert!(u.read("f") == old[..1000], "truncated content differs");
    assert_eq!(u.read("g"), b"short\0\0\0\0\0");
    assert!(fs::read(u.u("f")).unwrap() == old[..1000]);
    u.check_upper_is_layer_diff();
}

#[test]
fn s21_copy_up_keeps_metadata_xattrs_and_special_files() {
    let t = (1_500_000_000, 123_456_789);
    let stack = Stack::new().lower([
        file("f", "data")
            .mode(0o640)
            .owner(1000, 1001)
            .mtime(t.0, t.1)
            .atime(t.0 - 100, 987_654_321)
            .xattr("user.color", "blue")
            .xattr("security.test", "sec"),
        symlink("l", "some/target").owner(1002, 1003).mtime(t.0, 5),
        fifo("p").mode(0o610).owner(1004, 1005).mtime(t.0, 6),
        chardev("c", 1, 3)
            .mode(0o620)
            .owner(1006, 1007)
            .mtime(t.0, 7),
        blockdev("b", 7, 200).mode(0o600).mtime(t.0, 8),
        file("suid", "s")
            .mode(0o6755)
            .owner(1000, 1000)
            .mtime(t.0, 9),
        dir("sgid").mode(0o2775).owner(1000, 1000).mtime(t.0, 10),
    ]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };
    let before: Vec<_> = ["f", "l", "p", "c", "b", "suid", "sgid"]
        .iter()
        .map(|n| fs::symlink_metadata(u.m(n)).unwrap())
        .collect();

    // Changes that touch neither times nor the checked mode/owner, but force a copy-up.
    lsetxattr(&u.m("f"), "user.new", b"1").unwrap();
    // Set-id bits must survive a copy-up that is not a chown or a write.
    lsetxattr(&u.m("suid"), "user.new", b"1").unwrap();
    lsetxattr(&u.m("sgid"), "user.new", b"1").unwrap();
    std::os::unix::fs::lchown(u.m("l"), Some(1002), Some(1003)).unwrap();
    for n in ["p", "c", "b"] {
        let md = u.stat(n);
        std::os::unix::fs::lchown(u.m(n), Some(md.uid()), Some(md.gid())).unwrap();
    }
    u.remount();

    for (n, b) in ["f", "l", "p", "c", "b", "suid", "sgid"]
        .iter()
        .zip(&before)
    {
        let up = fs::symlink_metadata(u.u(n)).unwrap_or_else(|e| panic!("upper {n}: {e}"));
        assert_same_meta(&up, b, &format!("upper {n}"));
        assert_same_meta(&u.stat(n), b, &format!("merged {n}"));
    }
    let up = fs::symlink_metadata(u.u("f")).unwrap();
    assert_eq!((up.atime(), up.atime_nsec()), (t.0 - 100, 987_654_321));
    assert_eq!(fs::read(u.u("f")).unwrap(), b"data");
    assert_eq!(lgetxattr(&u.u("f"), "user.color").unwrap(), b"blue");
    assert_eq!(lgetxattr(&u.u("f"), "security.test").unwrap(), b"sec");
    assert_eq!(lgetxattr(&u.u("f"), "user.new").unwrap(), b"1");
    assert_eq!(lgetxattr(&u.m("f"), "user.color").unwrap(), b"blue");
    assert_eq!(lgetxattr(&u.m("f"), "security.test").unwrap(), b"sec");
    assert_eq!(
        fs::read_link(u.u("l")).unwrap().to_str().unwrap(),
        "some/target"
    );
    assert!(fs::symlink_metadata(u.u("p"))
        .unwrap()
        .file_type()
        .is_fifo());
    let c = fs::symlink_metadata(u.u("c")).unwrap();
    assert!(c.file_type().is_char_device());
    assert_eq!(c.rdev(), nix::sys::stat::makedev(1, 3));
    let b = fs::symlink_metadata(u.u("b")).unwrap();
    assert!(b.file_type().is_block_device());
    assert_eq!(b.rdev(), nix::sys::stat::makedev(7, 200));
    assert_eq!(u.stat("b").rdev(), nix::sys::stat::makedev(7, 200));
    // Removing an xattr is a change too: copied up, gone, and the lower keeps it.
    lremovexattr(&u.m("f"), "user.color").unwrap();
    u.remount();
    assert_errno(
        lgetxattr(&u.m("f"), "user.color"),
        libc::ENODATA,
        "removed xattr",
    );
    assert_errno(
        lgetxattr(&u.u("f"), "user.color"),
        libc::ENODATA,
        "removed xattr in upper",
    );
    assert_eq!(lgetxattr(&u.l(0, "f"), "user.color").unwrap(), b"blue");
    u.check_upper_is_layer_diff();
}

#[test]
fn removing_an_xattr_a_lower_file_lacks_copies_nothing_up() {
    // As kernel overlayfs: ENODATA, and the upper stays without the file (a copy-up there
    // would also split the file from its lower hard links: fuzz seed 11072).
    let stack = Stack::new().lower([
        file("d/f", "data").xattr("user.color", "blue"),
        hardlink("d/g", "d/f"),
    ]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };
    assert_errno(
        lremovexattr(&u.m("d/f"), "user.none"),
        libc::ENODATA,
        "missing name",
    );
    assert!(
        !u.u("d").exists(),
        "removexattr of a missing name copied d/f up"
    );
    assert_eq!(u.stat("d/g").nlink(), 2);
    // A name the file has is a change: copied up (with its hard link), removed there.
    lremovexattr(&u.m("d/f"), "user.color").unwrap();
    assert!(u.u("d/f").exists());
    assert_errno(
        lgetxattr(&u.m("d/g"), "user.color"),
        libc::ENODATA,
        "other name",
    );
    assert_eq!(lgetxattr(&u.l(0, "d/f"), "user.color").unwrap(), b"blue");
    u.check_upper_is_layer_diff();
}

#[test]
fn s22_copy_up_creates_ancestors_with_their_metadata() {
    let stack = Stack::new().lower([
        dir("a")
            .mode(0o750)
            .owner(1000, 1000)
            .mtime(1_400_000_000, 111),
        dir("a/b")
            .mode(0o711)
            .owner(2000, 2001)
            .mtime(1_400_000_001, 222),
        dir("a/b/c")
            .mode(0o1777)
            .owner(3000, 3001)
            .mtime(1_400_000_002, 333),
        file("a/b/c/f", "old").mtime(1_400_000_003, 444),
        file("a/b/sibling", "s"),
    ]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };
    let before: Vec<_> = ["a", "a/b", "a/b/c"].iter().map(|d| u.stat(d)).collect();

    append(&u.m("a/b/c/f"), b"+new");
    assert_eq!(u.read_str("a/b/c/f"), "old+new");
    u.remount();
    for (d, b) in ["a", "a/b", "a/b/c"].iter().zip(&before) {
        let up = fs::symlink_metadata(u.u(d)).unwrap_or_else(|e| panic!("upper {d}: {e}"));
        assert!(up.is_dir());
        assert_same_meta(&up, b, &format!("upper {d}"));
        // Copy-up is invisible: the merged dirs' times did not change either.
        assert_same_meta(&u.stat(d), b, &format!("merged {d}"));
    }
    assert_eq!(u.upper_names("a/b"), set(&["c"]));
    assert_eq!(u.upper_names("a/b/c"), set(&["f"]));
    u.check_upper_is_layer_diff();
}

#[test]
fn s23_open_trunc_of_large_lower_file_copies_no_data() {
    // Any read of the lower's data raises IN_ACCESS on it, whatever the reader's flags (O_NOATIME
    // hides a read from atime, not from inotify): that shows whether the data was copied.
    let big = pattern(1 << 20, 23).repeat(256);
    let stack = Stack::new().lower([file("big", &big)
        .mtime(1_100_000_000, 0)
        .atime(1_000_000_000, 0)]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };
    drop(big);
    let watch = AccessWatch::new(&u.l(0, "big"));

    let t = Instant::now();
    let f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(u.m("big"))
        .unwrap();
    let took = t.elapsed();
    assert_eq!(f.metadata().unwrap().len(), 0);
    drop(f);
    assert_eq!(u.stat("big").len(), 0);
    let up = fs::metadata(u.u("big")).unwrap();
    assert_eq!(up.len(), 0);
    assert_eq!(up.blocks(), 0);
    assert!(
        !watch.was_read(),
        "the lower's data was read by an O_TRUNC open (took {took:?})"
    );
    let lo = fs::metadata(u.l(0, "big")).unwrap();
    assert_eq!(lo.atime(), 1_000_000_000, "the lower's atime moved");
    // Positive control: the watch does see a read (with O_NOATIME, like a careful daemon).
    let mut one = [0u8; 1];
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(u.l(0, "big"))
        .unwrap()
        .read_exact(&mut one)
        .unwrap();
    assert!(
        watch.was_read(),
        "inotify missed a read: the check above proves nothing"
    );
    assert!(
        took < Duration::from_secs(2),
        "open(O_TRUNC) of 256 MiB took {took:?}"
    );
    u.check_upper_is_layer_diff();
}

/// An inotify watch for data reads (IN_ACCESS) of one file.
struct AccessWatch(std::os::fd::OwnedFd);

impl AccessWatch {
    fn new(p: &Path) -> AccessWatch {
        use std::os::fd::FromRawFd;
        // SAFETY: plain syscalls; the fd is owned right away.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(
            fd >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let c =
            std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str())).unwrap();
        // SAFETY: valid fd and C string.
        let w = unsafe {
            libc::inotify_add_watch(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                c.as_ptr(),
                libc::IN_ACCESS,
            )
        };
        assert!(
            w >= 0,
            "inotify_add_watch: {}",
            std::io::Error::last_os_error()
        );
        AccessWatch(fd)
    }

    fn was_read(&self) -> bool {
        let mut buf = [0u8; 4096];
        // SAFETY: reading into a local buffer of the given size.
        let n = unsafe {
            libc::read(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        n > 0
    }
}

#[test]
fn s24_metadata_change_on_lower_dir_copies_only_that_dir() {
    let stack = Stack::new().lower([
        file("d/f", "x"),
        file("d/sub/g", "y"),
        file("e/f", "x"),
        file("t/f", "x"),
    ]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };

    fs::set_permissions(u.m("d"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(u.m("e"), Some(1234), Some(4321)).unwrap();
    let f = fs::File::open(u.m("t")).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + Duration::new(1_300_000_000, 42))
        .unwrap();
    drop(f);
    u.remount();

    assert_eq!(u.stat("d").mode() & 0o7777, 0o700);
    assert_eq!((u.stat("e").uid(), u.stat("e").gid()), (1234, 4321));
    assert_eq!(
        (u.stat("t").mtime(), u.stat("t").mtime_nsec()),
        (1_300_000_000, 42)
    );
    assert_eq!(
        fs::metadata(u.u("d")).unwrap().mode() & 0o7777,
        0o700,
        "upper d"
    );
    for d in ["d", "e", "t"] {
        assert_eq!(u.upper_names(d), set(&[]), "children of {d} were copied up");
    }
    assert_eq!(u.read_str("d/sub/g"), "y");
    assert_eq!(u.read_str("e/f"), "x");
    u.check_upper_is_layer_diff();
}

#[test]
fn s26_concurrent_copy_up_of_one_file_makes_one_copy() {
    const N: usize = 8;
    let old = pattern(8 << 20, 26);
    let stack = Stack::new().lower([file("f", &old)]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };

    let barrier = Arc::new(Barrier::new(N));
    let handles: Vec<_> = (0..N)
        .map(|i| {
            let p = u.m("f");
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                let f = fs::OpenOptions::new().write(true).open(p).unwrap();
                // Each thread owns one block: if two copies were made, some writes are lost.
                f.write_all_at(&[b'A' + i as u8; 4096], (i * 4096 * 3) as u64)
                    .unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut want = old.clone();
    for i in 0..N {
        want[i * 4096 * 3..i * 4096 * 3 + 4096].fill(b'A' + i as u8);
    }
    assert!(u.read("f") == want, "merged content is wrong");
    u.remount();
    assert!(u.read("f") == want, "merged content is wrong after remount");
    assert!(
        fs::read(u.u("f")).unwrap() == want,
        "upper content is wrong"
    );
    let tree: Vec<_> = u
        .upper_tree()
        .into_iter()
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    assert_eq!(tree, vec![std::path::PathBuf::from("f")]);
    u.check_upper_is_layer_diff();
}

#[test]
fn s27_sed_in_place_on_lower_file() {
    let stack = Stack::new().lower([file("d/conf", "alpha\nbeta\n"), file("d/other", "o")]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };

    run(
        "sed",
        &[
            "-i".as_ref(),
            "s/beta/gamma/".as_ref(),
            u.m("d/conf").as_os_str(),
        ],
    );
    assert_eq!(u.read_str("d/conf"), "alpha\ngamma\n");
    assert_eq!(u.names("d"), set(&["conf", "other"]));
    u.remount();
    assert_eq!(u.read_str("d/conf"), "alpha\ngamma\n");
    u.assert_upper_file("d/conf", "alpha\ngamma\n");
    u.assert_no_upper_whiteout("d/conf");
    assert_eq!(u.upper_names("d"), set(&["conf"]));
    u.check_upper_is_layer_diff();
}

#[test]
fn s28_sparse_lower_file_stays_sparse() {
    let stack = Stack::new().lower([sparse("s", 1 << 30)]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };

    let f = fs::OpenOptions::new().write(true).open(u.m("s")).unwrap();
    f.write_all_at(b"end", (1 << 30) - 3).unwrap();
    drop(f);
    u.remount();
    let up = fs::metadata(u.u("s")).unwrap();
    assert_eq!(up.len(), 1 << 30);
    assert!(
        up.blocks() * 512 < 1 << 20,
        "upper copy allocates {} bytes",
        up.blocks() * 512
    );
    let mut f = fs::File::open(u.m("s")).unwrap();
    let mut buf = vec![1u8; 4096];
    f.read_exact(&mut buf).unwrap();
    assert!(buf.iter().all(|b| *b == 0));
    f.seek(SeekFrom::Start((1 << 30) - 3)).unwrap();
    let mut end = vec![];
    f.read_to_end(&mut end).unwrap();
    assert_eq!(end, b"end");
}

#[test]
fn s29_owner_can_chmod_and_remove_readonly_lower_file() {
    let stack = Stack::new().lower([
        dir("d").owner(1000, 1000),
        file("d/f", "x").mode(0o444).owner(1000, 1000),
        file("d/g", "y").mode(0o444).owner(1000, 1000),
        file("d/other", "o").mode(0o644).owner(2000, 2000),
        file("r/h", "h").mode(0o666),
    ]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };

    // Permissions are still enforced: not the owner, not a writable directory.
    for (what, script) in [
        (
            "chmod of another user's file",
            format!("chmod 777 '{}'", u.m("d/other").display()),
        ),
        (
            "write to a 0444 file",
            format!("echo z >> '{}'", u.m("d/f").display()),
        ),
        (
            "unlink in a root-owned dir",
            format!("rm -f '{}'", u.m("r/h").display()),
        ),
    ] {
        let out = as_user(1000, 1000, &script);
        assert!(!out.status.success(), "uid 1000 could do a {what}");
    }
    assert_eq!(u.read_str("d/f"), "x");
    assert!(u.exists("r/h"));
    assert_eq!(u.stat("d/other").mode() & 0o7777, 0o644);

    let d = u.m("d");
    let out = as_user(
        1000,
        1000,
        &format!("chmod 644 '{0}/f' && rm -f '{0}/g'", d.display()),
    );
    assert!(
        out.status.success(),
        "as uid 1000: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    u.remount();
    assert_eq!(u.stat("d/f").mode() & 0o7777, 0o644);
    assert_eq!(u.read_str("d/f"), "x");
    u.assert_enoent("d/g");
    assert_eq!(
        fs::metadata(u.u("d/f")).unwrap().mode() & 0o7777,
        0o644,
        "upper mode"
    );
    u.assert_upper_whiteout("d/g");
    u.check_upper_is_layer_diff();
}
