//! docs/SCENARIOS.md "Copy-up" line 30 and what open files see across a copy-up: fds opened
//! before it, random I/O through two fds, threads racing copy-up with renames and listings.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::sync::Arc;
use std::time::Duration;

use super::copyup::{append, pattern};
use crate::common::*;

#[test]
fn s30_fd_open_before_copy_up_keeps_reading_valid_data() {
    let old = pattern(1 << 20, 30);
    let new = pattern(1 << 20, 31);
    let stack = Stack::new().lower([file("f", &old)]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };

    let ro = fs::File::open(u.m("f")).unwrap();
    let mut first = vec![0u8; 4096];
    ro.read_exact_at(&mut first, 0).unwrap();
    assert_eq!(first, old[..4096]);
    {
        let mut w = fs::OpenOptions::new()
            .write(true)
            .custom_flags(0)
            .open(u.m("f"))
            .unwrap();
        w.write_all(&new).unwrap();
    }
    // Either snapshot is valid (the kernel keeps the lower open); a mix or an error is not.
    let mut all = vec![0u8; 1 << 20];
    ro.read_exact_at(&mut all, 0).unwrap();
    assert!(
        all == old || all == new,
        "old fd reads neither the old nor the new content"
    );
    assert!(u.read("f") == new);
    drop(ro);
    assert!(fs::read(u.u("f")).unwrap() == new);
    u.check_upper_is_layer_diff();
}

/// Opens `f` read-only and reads a little of it, then writes `NEW12` at offset 0 and appends
/// ` more` through a second fd (the copy-up), and returns the first fd.
fn reader_then_copy_up(u: &Union, f: &str) -> fs::File {
    let ro = fs::File::open(u.m(f)).unwrap();
    let mut first = [0u8; 3];
    ro.read_exact_at(&mut first, 0).unwrap();
    assert_eq!(&first, b"old");
    let w = fs::OpenOptions::new().write(true).open(u.m(f)).unwrap();
    w.write_all_at(b"NEW12", 0).unwrap();
    drop(w);
    u.append(f, " more");
    ro
}

#[test]
fn s30_without_passthrough_an_fd_opened_before_copy_up_reads_the_copy() {
    // Like kernel overlayfs since 4.19: data, size, times through the old fd, and what the
    // kernel learns through it (GETATTR with its handle at EOF), are the file as it is now.
    for opts in [
        &["passthrough=off"][..],
        &["passthrough=off", "metacopy=on"],
    ] {
        let mut stack = Stack::new().lower([
            file("f", "old data").mtime(1_000_000_000, 0),
            file("meta", "old meta").mtime(1_000_000_000, 0),
        ]);
        for o in opts {
            stack = stack.unionfs_opt(o);
        }
        let Some(mut u) = Union::mount(stack) else {
            return;
        };
        let mut ro = reader_then_copy_up(&u, "f");
        let mut all = String::new();
        ro.read_to_string(&mut all).unwrap();
        assert_eq!(all, "NEW12ata more", "{opts:?}: old fd after the copy-up");
        let upper_mtime = fs::metadata(u.u("f")).unwrap().mtime();
        assert_ne!(upper_mtime, 1_000_000_000);
        assert_eq!(
            u.stat("f").mtime(),
            upper_mtime,
            "{opts:?}: stat after the old fd's EOF"
        );
        assert_eq!(
            ro.metadata().unwrap().len(),
            13,
            "{opts:?}: fstat of the old fd"
        );
        assert_eq!(ro.seek(SeekFrom::End(0)).unwrap(), 13);
        // A metadata-only copy-up (with metacopy=on a stub whose data stays below) does not
        // take the data away from a reader that opened the lower file.
        let meta = fs::File::open(u.m("meta")).unwrap();
        fs::set_permissions(u.m("meta"), fs::Permissions::from_mode(0o600)).unwrap();
        let mut got = vec![0u8; 8];
        meta.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(got, b"old meta", "{opts:?}");
        assert_eq!(meta.metadata().unwrap().mode() & 0o7777, 0o600, "{opts:?}");
        drop((ro, meta));
        u.remount();
        assert_eq!(u.read_str("f"), "NEW12ata more");
        assert_eq!(fs::read_to_string(u.l(0, "f")).unwrap(), "old data");
        if !opts.contains(&"metacopy=on") {
            u.check_upper_is_layer_diff();
        }
    }
}

#[test]
fn s30_with_passthrough_an_fd_opened_before_copy_up_keeps_the_lower_copy() {
    // The documented difference (README, "Data path"): the kernel reads a passthrough file
    // itself, from the backing file registered at open, so an fd opened on the lower copy
    // goes on reading it; every open after the copy-up gets the upper copy. Kernel overlayfs
    // switches the old fd to the copy.
    let stack = Stack::new().lower([file("f", "old data")]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };
    let kernel = is_kernel();
    assert!(
        kernel || u.passthrough_on(),
        "passthrough is off on this machine"
    );
    let mut ro = reader_then_copy_up(&u, "f");
    let mut all = String::new();
    ro.read_to_string(&mut all).unwrap();
    let (want, len) = if kernel {
        ("NEW12ata more", 13)
    } else {
        ("old data", 8)
    };
    assert_eq!(all, want, "old fd after the copy-up");
    assert_eq!(ro.metadata().unwrap().len(), len, "fstat of the old fd");
    assert_eq!(u.read_str("f"), "NEW12ata more", "a new open");
    assert_eq!(u.stat("f").len(), 13);
    drop(ro);
    assert_eq!(fs::read_to_string(u.u("f")).unwrap(), "NEW12ata more");
    assert_eq!(fs::read_to_string(u.l(0, "f")).unwrap(), "old data");
    u.check_upper_is_layer_diff();
}

/// Small deterministic PRNG (xorshift64*), so a failure replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn s20_random_io_on_copied_up_file_matches_model() {
    // fsx in miniature: writes, truncates, hole punches and reads through two fds of a file that
    // is copied up by the first write, checked against an in-memory model after every read.
    let old = pattern(3 << 20, 2020);
    let stack = Stack::new().lower([file("f", &old)]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };
    let mut model = old.clone();
    let mut rng = Rng(0x5EED_2020);
    let rw = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(u.m("f"))
        .unwrap();
    // Copy up now, so that the second fd opens the upper file and must see every change.
    rw.write_all_at(b"first", 10).unwrap();
    model[10..15].copy_from_slice(b"first");
    let mut ro = fs::File::open(u.m("f")).unwrap();
    for op in 0..1500 {
        let max = 4 << 20;
        match rng.below(11) {
            0..=3 => {
                let off = rng.below(max) as usize;
                let len = 1 + rng.below(256 << 10) as usize;
                let data = pattern(len, op);
                rw.write_all_at(&data, off as u64).unwrap();
                if model.len() < off + len {
                    model.resize(off + len, 0);
                }
                model[off..off + len].copy_from_slice(&data);
            }
            4 => {
                let len = rng.below(max) as usize;
                rw.set_len(len as u64).unwrap();
                model.resize(len, 0);
            }
            5 => {
                let off = rng.below(max) as i64;
                let len = 1 + rng.below(512 << 10) as i64;
                let fd = std::os::fd::AsRawFd::as_raw_fd(&rw);
                // SAFETY: fallocate on an fd we own.
                let r = unsafe {
                    libc::fallocate(
                        fd,
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        off,
                        len,
                    )
                };
                assert_eq!(r, 0, "punch hole: {}", std::io::Error::last_os_error());
                let end = ((off + len) as usize).min(model.len());
                if (off as usize) < end {
                    model[off as usize..end].fill(0);
                }
            }
            6 if !model.is_empty() => {
                // A shared writable mapping, as fsx does: stores reach the file at msync.
                let off = rng.below(model.len() as u64) as usize;
                let len = (1 + rng.below(64 << 10) as usize).min(model.len() - off);
                let data = pattern(len, op + 7);
                let fd = std::os::fd::AsRawFd::as_raw_fd(&rw);
                let page = off & !4095;
                let maplen = off + len - page;
                // SAFETY: a fresh shared mapping of `maplen` bytes of our fd, inside its size,
                // written only within bounds and unmapped before anything else touches it.
                unsafe {
                    let p = libc::mmap(
                        std::ptr::null_mut(),
                        maplen,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED,
                        fd,
                        page as i64,
                    );
                    assert_ne!(
                        p,
                        libc::MAP_FAILED,
                        "mmap: {}",
                        std::io::Error::last_os_error()
                    );
                    let dst = std::slice::from_raw_parts_mut(p.cast::<u8>(), maplen);
                    dst[off - page..].copy_from_slice(&data);
                    assert_eq!(libc::msync(p, maplen, libc::MS_SYNC), 0);
                    libc::munmap(p, maplen);
                }
                model[off..off + len].copy_from_slice(&data);
            }
            _ => {
                let off = rng.below(model.len() as u64 + 1) as usize;
                let len = rng.below(300 << 10) as usize;
                let want = &model[off..(off + len).min(model.len())];
                let mut got = vec![0u8; len];
                let fd = if op % 2 == 0 { &rw } else { &ro };
                let mut n = 0;
                while n < len {
                    let k = fd.read_at(&mut got[n..], (off + n) as u64).unwrap();
                    if k == 0 {
                        break;
                    }
                    n += k;
                }
                assert_eq!(n, want.len(), "op {op}: short read at {off}");
                assert!(got[..n] == *want, "op {op}: data differs at {off}+{len}");
            }
        }
    }
    drop(rw);
    ro.seek(SeekFrom::Start(0)).unwrap();
    drop(ro);
    assert!(u.read("f") == model, "final content differs");
    u.remount();
    assert!(u.read("f") == model, "content differs after remount");
    assert!(
        fs::read(u.u("f")).unwrap() == model,
        "upper content differs"
    );
    u.check_upper_is_layer_diff();
}

#[test]
fn s26_threads_mixing_copy_up_rename_unlink_and_readdir_stay_consistent() {
    // Each writer owns one lower directory, so the end state is known exactly; readers walk all
    // of them at the same time. A deadlock shows up as a timeout, not a hung suite.
    const DIRS: usize = 6;
    const FILES: usize = 40;
    let mut l1 = vec![];
    let mut l2 = vec![];
    for d in 0..DIRS {
        for f in 0..FILES {
            let e = file(&format!("d{d}/f{f}"), format!("{d}/{f}"));
            if f % 2 == 0 {
                l1.push(e);
            } else {
                l2.push(e);
            }
        }
    }
    let stack = Stack::new().lower(l1).lower(l2);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };

    let (tx, rx) = std::sync::mpsc::channel();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut handles = vec![];
    for d in 0..DIRS {
        let dir = u.m(&format!("d{d}"));
        let tx = tx.clone();
        handles.push(std::thread::spawn(move || {
            for f in 0..FILES {
                let p = dir.join(format!("f{f}"));
                match f % 4 {
                    0 => append(&p, b"+"),
                    1 => fs::rename(&p, dir.join(format!("r{f}"))).unwrap(),
                    2 => fs::remove_file(&p).unwrap(),
                    _ => fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap(),
                }
                fs::write(dir.join(format!("n{f}")), b"new").unwrap();
            }
            tx.send(()).unwrap();
        }));
    }
    for _ in 0..2 {
        let root = u.m("");
        let stop = stop.clone();
        handles.push(std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for d in 0..DIRS {
                    let Ok(rd) = fs::read_dir(root.join(format!("d{d}"))) else {
                        continue;
                    };
                    for e in rd.flatten() {
                        // A name may vanish between readdir and stat; any other error is a bug.
                        if let Err(err) = fs::symlink_metadata(e.path()) {
                            assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
                        }
                    }
                }
            }
        }));
    }
    for _ in 0..DIRS {
        rx.recv_timeout(Duration::from_secs(60))
            .expect("writers did not finish in 60 s (deadlock?)");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }

    let check = |u: &Union| {
        for d in 0..DIRS {
            let mut want = std::collections::BTreeSet::new();
            for f in 0..FILES {
                want.insert(format!("n{f}"));
                match f % 4 {
                    0 | 3 => {
                        want.insert(format!("f{f}"));
                    }
                    1 => {
                        want.insert(format!("r{f}"));
                    }
                    _ => {}
                }
            }
            assert_eq!(u.names(&format!("d{d}")), want, "d{d}");
            for f in 0..FILES {
                match f % 4 {
                    0 => assert_eq!(u.read_str(&format!("d{d}/f{f}")), format!("{d}/{f}+")),
                    1 => assert_eq!(u.read_str(&format!("d{d}/r{f}")), format!("{d}/{f}")),
                    3 => assert_eq!(u.stat(&format!("d{d}/f{f}")).mode() & 0o777, 0o600),
                    _ => {}
                }
            }
        }
    };
    check(&u);
    u.remount();
    check(&u);
    u.assert_upper_whiteout("d0/f2");
    u.assert_upper_whiteout("d0/f1");
    u.check_upper_is_layer_diff();
}

#[test]
fn s22_real_changes_still_move_parent_times() {
    // Copy-up hides its own traces; it must not hide the traces of real changes.
    let old = (1_400_000_000, 0);
    let stack = Stack::new().lower([
        dir("a").mtime(old.0, old.1),
        dir("a/b").mtime(old.0, old.1),
        file("a/b/f", "x").mtime(old.0, old.1),
        file("a/b/g", "y"),
        dir("c").mtime(old.0, old.1),
    ]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };
    let mt = |u: &Union, p: &str| {
        let m = u.stat(p);
        (m.mtime(), m.mtime_nsec())
    };

    append(&u.m("a/b/f"), b"+");
    assert_eq!(mt(&u, "a/b"), old, "copy-up moved a/b's mtime");
    assert!(mt(&u, "a/b/f") > old, "a write did not move f's mtime");
    u.write("a/b/new", "n");
    assert!(
        mt(&u, "a/b") > old,
        "creating a/b/new did not move a/b's mtime"
    );
    fs::remove_file(u.m("a/b/g")).unwrap();
    fs::create_dir(u.m("c/sub")).unwrap();
    assert!(mt(&u, "c") > old, "mkdir did not move c's mtime");
    assert_eq!(mt(&u, "a"), old, "a changed though only a/b's content did");
    u.remount();
    assert!(mt(&u, "a/b") > old);
    assert!(mt(&u, "c") > old);
    assert_eq!(mt(&u, "a"), old);
    u.check_upper_is_layer_diff();
}

/// Passthrough registrations outlive the last close (a cache of recently closed files): every
/// reopen must still read the file the name shows now, through copy-up, rename-over, and
/// delete-and-recreate.
#[test]
fn reopen_after_close_reads_what_the_name_shows_now() {
    let Some(u) = Union::mount(Stack::new().lower([dir("d"), file("d/f", "lower")])) else {
        return;
    };
    let p = u.m("d/f");
    for _ in 0..3 {
        assert_eq!(fs::read(&p).unwrap(), b"lower");
    }
    fs::write(&p, "copied up").unwrap();
    for _ in 0..3 {
        assert_eq!(fs::read(&p).unwrap(), b"copied up");
    }
    fs::write(u.m("d/g"), "renamed over").unwrap();
    fs::rename(u.m("d/g"), &p).unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"renamed over");
    fs::remove_file(&p).unwrap();
    fs::write(&p, "recreated").unwrap();
    for _ in 0..3 {
        assert_eq!(fs::read(&p).unwrap(), b"recreated");
    }
    u.assert_upper_file("d/f", "recreated");
}
