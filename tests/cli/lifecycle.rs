//! The daemon's life: both argument forms, read-only unions, SIGTERM, a killed daemon and its
//! watchdog, the library guard, a full disk, exec beside a reader.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use super::fixture::*;
use crate::common::can_mount as fuse_available;

#[test]
fn podman_form_mounts_ignores_unknown_options_and_umount_ends_the_daemon() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("podman");
    let l1 = fx.dir("l1");
    let l2 = fx.dir("l2");
    fs::write(l2.join("f"), "low").unwrap();
    let u = fx.dir("u");
    let w = fx.dir("w");
    let mnt = fx.dir("mnt");
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={},,volatile,frobnicate",
        l1.display(),
        l2.display(),
        u.display(),
        w.display()
    );
    let o = fx.run(&["-o", &opts, mnt.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("ignoring unknown mount option 'frobnicate'") && !e.contains("volatile"),
        "{e}"
    );
    assert!(w.join("incompat/volatile").is_dir(), "no volatile marker");
    assert_eq!(fs::read_to_string(mnt.join("f")).unwrap(), "low");
    fs::write(mnt.join("g"), "new").unwrap();
    assert_eq!(fs::read_to_string(u.join("g")).unwrap(), "new");
    let pid = *fx.pids.last().unwrap();
    // Other tests of this binary fork children at any time, and a child holds the fds of the
    // whole process until its exec closes them: a file of ours open then keeps the mount busy
    // for that moment (seen once on a loaded run). Plain umount, retried on "busy" only.
    let mut tries = 0;
    loop {
        let o = Command::new("umount").arg(&mnt).output().unwrap();
        if o.status.success() {
            break;
        }
        tries += 1;
        assert!(
            tries < 50 && stderr(&o).contains("busy"),
            "umount: {}",
            stderr(&o)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_until("daemon exit after umount", || !alive(pid));
    assert!(!is_mounted(&mnt));
    assert!(!w.join("incompat").exists(), "a clean end left the marker");
}

#[test]
fn a_volatile_union_that_did_not_end_cleanly_is_refused_until_its_marker_goes() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("volatile-kill");
    let (l, u, mnt, pid) = fx.mount_simple(&["-o", "volatile"]);
    fs::write(mnt.join("new"), "unflushed").unwrap();
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    wait_until("watchdog unmount", || !is_mounted(&mnt));
    let marker = u.join(".wh..wh.unionfs/incompat");
    assert!(marker.join("volatile").is_dir());
    let (ls, us, ms) = (
        l.to_str().unwrap(),
        u.to_str().unwrap(),
        mnt.to_str().unwrap(),
    );
    for opts in [&[][..], &["-o", "volatile"][..]] {
        let o = fx.run(&[opts, &[ls, us, ms]].concat());
        assert!(
            !o.status.success(),
            "mounted an upper a crash may have broken"
        );
        let e = stderr(&o);
        assert!(
            e.contains("did not end cleanly") && e.contains("incompat/volatile"),
            "{e}"
        );
        assert!(!is_mounted(&mnt));
    }
    // Whoever knows the machine did not crash removes the marker.
    fs::remove_dir_all(&marker).unwrap();
    let o = fx.run(&[ls, us, ms]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(fs::read_to_string(mnt.join("new")).unwrap(), "unflushed");
    unmount_and_wait(&mnt, *fx.pids.last().unwrap());
}

#[test]
fn read_only_union_gives_erofs_and_reads_work() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("ro");
    let l = fx.dir("l");
    fs::write(l.join("f"), "data").unwrap();
    let mnt = fx.dir("mnt");
    let o = fx.run(&[l.to_str().unwrap(), mnt.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(fs::read_to_string(mnt.join("f")).unwrap(), "data");
    for r in [
        fs::write(mnt.join("f"), "x"),
        fs::write(mnt.join("new"), "x"),
        fs::remove_file(mnt.join("f")),
        fs::create_dir(mnt.join("d")),
    ] {
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EROFS));
    }
    assert_eq!(fs::read_to_string(l.join("f")).unwrap(), "data");
    assert_eq!(fs::read_dir(&l).unwrap().count(), 1);
}

#[test]
fn sigterm_unmounts_cleanly() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("term");
    let (_, _, mnt, pid) = fx.mount_simple(&[]);
    signal(pid, nix::sys::signal::Signal::SIGTERM);
    wait_until("daemon exit after SIGTERM", || !alive(pid));
    assert!(!is_mounted(&mnt));
}

#[test]
fn killed_daemon_is_unmounted_by_the_watchdog_or_cleanup() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("kill");
    let (l, u, mnt, pid) = fx.mount_simple(&[]);
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    wait_until("watchdog unmount", || !is_mounted(&mnt));

    // Without the watchdog the mount is left dead until --cleanup.
    let mnt2 = fx.dir("mnt2");
    let o = fx.run(&[
        "--no-watchdog",
        l.to_str().unwrap(),
        u.to_str().unwrap(),
        mnt2.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let pid = *fx.pids.last().unwrap();
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    wait_until("daemon death", || !alive(pid));
    // Attributes may still be cached by the kernel; statfs always asks the daemon.
    let dead = nix::sys::statfs::statfs(&mnt2).unwrap_err();
    assert!(
        matches!(
            dead,
            nix::errno::Errno::ENOTCONN
                | nix::errno::Errno::ECONNABORTED
                | nix::errno::Errno::ECANCELED
        ),
        "{dead}"
    );
    let o = Command::new(BIN)
        .arg("--cleanup")
        .arg(&mnt2)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!is_mounted(&mnt2));
    assert!(fs::metadata(&mnt2).unwrap().is_dir());
}

#[test]
fn library_guard_mounts_and_unmounts_on_drop() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("lib");
    let l = fx.dir("l");
    fs::write(l.join("f"), "lower").unwrap();
    let u = fx.dir("u");
    let mnt = fx.dir("mnt");
    {
        let guard = unionfs::mount::MountConfig::new(vec![l.clone()], Some(u.clone()))
            .mount(&mnt)
            .unwrap();
        assert_eq!(guard.mountpoint(), mnt.as_path());
        fs::write(mnt.join("f"), "changed").unwrap();
        assert_eq!(fs::read_to_string(mnt.join("f")).unwrap(), "changed");
        let ino_view = fs::metadata(mnt.join("f")).unwrap().ino();
        assert_eq!(ino_view, fs::metadata(l.join("f")).unwrap().ino());
    }
    assert!(!is_mounted(&mnt));
    assert_eq!(fs::read_to_string(u.join("f")).unwrap(), "changed");
    assert_eq!(fs::read_to_string(l.join("f")).unwrap(), "lower");
}

#[test]
fn full_disk_during_copy_up_loses_nothing() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("enospc");
    let l = fx.dir("l");
    let big: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(l.join("big"), &big).unwrap();
    fs::write(l.join("small"), "s").unwrap();
    // Upper and work on a 1 MiB tmpfs: the 4 MiB copy-up cannot fit.
    let t = fx.dir("tmpfs");
    nix::mount::mount(
        Some("tmpfs"),
        &t,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    fx.mounts.push(t.clone());
    let u = t.join("u");
    fs::create_dir(&u).unwrap();
    let mnt = fx.dir("mnt");
    let o = fx.run(&[
        l.to_str().unwrap(),
        u.to_str().unwrap(),
        mnt.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = fs::OpenOptions::new().append(true).open(mnt.join("big"));
    assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ENOSPC));
    // The view still shows the whole old file; nothing partial is left anywhere.
    assert_eq!(fs::read(mnt.join("big")).unwrap(), big);
    assert!(!u.join("big").exists());
    let work = u.join(".wh..wh.unionfs");
    let staged = names_but(&work, "index");
    assert!(staged.is_empty(), "staging leftovers: {staged:?}");
    assert_eq!(fs::read(l.join("big")).unwrap(), big);
    // Small changes still work on the nearly full upper.
    fs::write(mnt.join("small"), "changed").unwrap();
    assert_eq!(fs::read_to_string(u.join("small")).unwrap(), "changed");
}

#[test]
fn exec_and_a_writer_after_a_reader_of_the_lower_copy() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("rw");
    let l = fx.dir("l");
    fs::write(l.join("f"), "lower data").unwrap();
    fs::copy("/bin/true", l.join("true")).unwrap();
    let u = fx.dir("u");
    let mnt = fx.dir("mnt");
    let o = fx.run(&[
        l.to_str().unwrap(),
        u.to_str().unwrap(),
        mnt.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Programs run from a lower layer and from the upper (the kernel opens them for exec with
    // internal flags that must not reach the layer).
    assert!(Command::new(mnt.join("true")).status().unwrap().success());
    fs::copy("/bin/true", mnt.join("true2")).unwrap();
    assert!(Command::new(mnt.join("true2")).status().unwrap().success());
    // A reader of the lower copy, then a writer: both work, each sees its own file.
    let reader = fs::File::open(mnt.join("f")).unwrap();
    let mut writer = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(mnt.join("f"))
        .unwrap();
    std::io::Write::write_all(&mut writer, b"upper data").unwrap();
    drop(writer);
    let mut old = String::new();
    std::io::Read::read_to_string(&mut &reader, &mut old).unwrap();
    assert_eq!(old, "lower data");
    assert_eq!(fs::read_to_string(mnt.join("f")).unwrap(), "upper data");
    assert_eq!(fs::read_to_string(u.join("f")).unwrap(), "upper data");
    assert_eq!(fs::read_to_string(l.join("f")).unwrap(), "lower data");
    drop(reader);
    // And again once the old reader is gone.
    fs::write(mnt.join("f"), "again").unwrap();
    assert_eq!(fs::read_to_string(mnt.join("f")).unwrap(), "again");
}
