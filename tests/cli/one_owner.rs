//! One union per upper: a second `unionfs-mount` on an upper (or work dir) that a live union
//! uses is refused at once, naming the holder's pid; the lock ends with the daemon, `kill -9`
//! included, and leaves nothing on disk.

use std::fs;
use std::time::{Duration, Instant};

use super::fixture::*;
use crate::common::can_mount as fuse_available;

fn sorted_names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_second_mount_on_a_used_upper_is_refused_naming_the_holder() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("owner");
    let (l, u, mnt, pid) = fx.mount_simple(&[]);
    fs::write(mnt.join("f"), "one").unwrap();
    let upper_before = sorted_names(&u);
    let mnt2 = fx.dir("mnt2");
    let t = Instant::now();
    let o = fx.run(&[
        l.to_str().unwrap(),
        u.to_str().unwrap(),
        mnt2.to_str().unwrap(),
    ]);
    let took = t.elapsed();
    assert!(
        !o.status.success(),
        "second mount on the same upper succeeded"
    );
    let err = stderr(&o);
    assert!(
        err.contains("in use by another union") && err.contains(&format!("pid {pid} ")),
        "message does not name holder pid {pid}: {err}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?} to refuse");
    assert!(!is_mounted(&mnt2));
    // The refused mount wrote nothing, and the first union still serves its view.
    assert_eq!(sorted_names(&u), upper_before);
    assert_eq!(fs::read_to_string(mnt.join("f")).unwrap(), "one");
    assert_eq!(fs::read_to_string(u.join("f")).unwrap(), "one");

    // The same work dir under another upper is refused as well (podman's -o form).
    let (u2, w) = (fx.dir("u2"), fx.dir("w"));
    let mnt3 = fx.dir("mnt3");
    let opts = |up: &std::path::Path| {
        format!(
            "lowerdir={},upperdir={},workdir={}",
            l.display(),
            up.display(),
            w.display()
        )
    };
    let u3 = fx.dir("u3");
    let o = fx.run(&["-o", &opts(&u2), mnt3.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let pid3 = *fx.pids.last().unwrap();
    let mnt4 = fx.dir("mnt4");
    let o = fx.run(&["-o", &opts(&u3), mnt4.to_str().unwrap()]);
    assert!(
        !o.status.success(),
        "second union on the same workdir mounted"
    );
    let err = stderr(&o);
    assert!(
        err.contains("workdir") && err.contains(&format!("pid {pid3} ")),
        "{err}"
    );
    assert!(!is_mounted(&mnt4));
    assert!(sorted_names(&u3).is_empty(), "{:?}", sorted_names(&u3));
}

#[test]
fn the_lock_dies_with_a_killed_daemon_and_leaves_no_file() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("owner-kill");
    let (l, u, mnt, pid) = fx.mount_simple(&["--no-watchdog"]);
    fs::write(mnt.join("f"), "one").unwrap();
    let upper_before = sorted_names(&u);
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    wait_until("daemon death", || !alive(pid));
    let _ = nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH);
    // No lock file, nothing new in the upper: the lock was on the daemon's descriptor.
    assert_eq!(sorted_names(&u), upper_before);
    let mnt2 = fx.dir("mnt2");
    let o = fx.run(&[
        l.to_str().unwrap(),
        u.to_str().unwrap(),
        mnt2.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "remount after kill -9: {}", stderr(&o));
    assert_eq!(fs::read_to_string(mnt2.join("f")).unwrap(), "one");
    // A clean unmount frees it too: mount again right after umount returns.
    let pid2 = *fx.pids.last().unwrap();
    nix::mount::umount2(&mnt2, nix::mount::MntFlags::MNT_DETACH).unwrap();
    let mnt3 = fx.dir("mnt3");
    let o = fx.run(&[
        l.to_str().unwrap(),
        u.to_str().unwrap(),
        mnt3.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "remount after umount: {}", stderr(&o));
    assert!(!alive(pid2) || wait_pid_gone(pid2));
    assert_eq!(fs::read_to_string(mnt3.join("f")).unwrap(), "one");
}

fn wait_pid_gone(pid: i32) -> bool {
    crate::common::wait_pid_gone(pid, Duration::from_secs(10))
}
