//! FUSE over io_uring and /dev/fuse: which transport a mount takes and why.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::fixture::*;
use crate::common::can_mount as fuse_available;

/// The kernel's switch for FUSE over io_uring.
const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// Held by each test here for its whole run: one of them switches the kernel's io_uring
/// offer on and back off (phase 2 of scripts/test.sh runs with it off), and the other must
/// not mount in between and find the offer gone.
static SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes `SWITCH`, also after another test here failed while holding it.
fn hold_switch() -> std::sync::MutexGuard<'static, ()> {
    SWITCH.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn without_cap_sys_nice_uring_auto_keeps_dev_fuse_and_uring_on_takes_the_ring() {
    // Without CAP_SYS_NICE the ring's workers cannot keep a caller on its CPU, and a ring
    // round trip then costs more than one over /dev/fuse: auto stays off the ring.
    if !fuse_available() {
        return;
    }
    let _switch = hold_switch();
    match fs::read_to_string(ENABLE_URING) {
        Ok(v) if v.trim() == "Y" => {}
        _ => {
            eprintln!("SKIP: FUSE over io_uring is not switched on ({ENABLE_URING})");
            return;
        }
    }
    let mut fx = Fixture::new("nonice");
    for (mode, ring) in [("auto", false), ("on", true)] {
        let (l, u, mnt) = uring_layers(&mut fx);
        let (stats, pidfile) = (fx.root.join("stats"), fx.root.join("pid"));
        let o = Command::new("setpriv")
            .args(["--inh-caps=-sys_nice", "--bounding-set=-sys_nice", BIN])
            .arg("--pid-file")
            .arg(&pidfile)
            .arg("--stats-file")
            .arg(&stats)
            .args(["-o", &format!("uring={mode}")])
            .args([&l, &u, &mnt])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        fx.mounts.push(mnt.clone());
        let pid: i32 = fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        fx.pids.push(pid);
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let eff = status.lines().find(|x| x.starts_with("CapEff:")).unwrap();
        let caps = u64::from_str_radix(eff.split_whitespace().nth(1).unwrap(), 16).unwrap();
        const CAP_SYS_NICE: u32 = 23; // linux/capability.h
        assert_eq!(caps & (1 << CAP_SYS_NICE), 0, "daemon kept CAP_SYS_NICE");
        let s = uring_workload(&mnt, pid, &stats);
        let served: u64 = s["ring_requests"].parse().unwrap();
        assert_eq!(served > 0, ring, "uring={mode}: {s:?}");
        // The mount was reported live only once the kernel had every worker's ring entry.
        let entries: Vec<u64> = s["ring_entries"]
            .split(" of ")
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(entries[0], entries[1], "uring={mode}: {s:?}");
        assert_eq!(entries[0] > 0, ring, "uring={mode}: {s:?}");
        assert_eq!(fs::read(u.join("low")).unwrap(), b"lower+");
        assert_eq!(fs::read(l.join("low")).unwrap(), b"lower");
        let m = fx.mounts.pop().unwrap();
        nix::mount::umount(&m).unwrap();
        wait_until("daemon exit", || !alive(pid));
    }
}

/// A lower for `uring_workload` over an empty upper and mount point: (lower, upper, mnt).
fn uring_layers(fx: &mut Fixture) -> (PathBuf, PathBuf, PathBuf) {
    let (l, u, mnt) = (fx.dir("l"), fx.dir("u"), fx.dir("mnt"));
    for d in [&u, &mnt] {
        fs::remove_dir_all(d).unwrap();
        fs::create_dir(d).unwrap();
    }
    fs::write(l.join("low"), b"lower").unwrap();
    fs::write(l.join("gone"), b"x").unwrap();
    (l, u, mnt)
}

/// Runs a small workload on `mnt` and returns the daemon's counters.
fn uring_workload(mnt: &Path, pid: i32, stats: &Path) -> std::collections::HashMap<String, String> {
    fs::write(mnt.join("new"), b"made here").unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("low"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"+"))
        .unwrap();
    fs::rename(mnt.join("new"), mnt.join("renamed")).unwrap();
    fs::create_dir(mnt.join("dir")).unwrap();
    fs::remove_file(mnt.join("gone")).unwrap();
    let mut names: Vec<String> = fs::read_dir(mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["dir", "low", "renamed"]);
    assert_eq!(fs::read(mnt.join("low")).unwrap(), b"lower+");
    assert_eq!(fs::read(mnt.join("renamed")).unwrap(), b"made here");
    read_stats(pid, stats)
}

#[test]
fn io_uring_transport_serves_requests_when_the_kernel_offers_it() {
    if !fuse_available() {
        return;
    }
    let _switch = hold_switch();
    let Ok(before) = fs::read_to_string(ENABLE_URING) else {
        eprintln!("SKIP: this kernel has no FUSE over io_uring ({ENABLE_URING} is missing)");
        return;
    };
    /// Puts the kernel switch back as it was, also when an assertion fails.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            if self.0 {
                let _ = fs::write(ENABLE_URING, "0");
            }
        }
    }
    let _restore = Restore(before.trim() != "Y");
    fs::write(ENABLE_URING, "1").unwrap();
    let mut fx = Fixture::new("uring");
    for (opts, ring) in [(&[][..], true), (&["-o", "uring=off"][..], false)] {
        let (l, u, mnt) = uring_layers(&mut fx);
        let stats = fx.root.join("stats");
        let mut a = opts.to_vec();
        let sp = stats.to_str().unwrap().to_string();
        a.extend(["--stats-file", &sp]);
        a.extend([
            l.to_str().unwrap(),
            u.to_str().unwrap(),
            mnt.to_str().unwrap(),
        ]);
        let o = fx.run(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        let pid = *fx.pids.last().unwrap();
        let s = uring_workload(&mnt, pid, &stats);
        let served: u64 = s["ring_requests"].parse().unwrap();
        if ring {
            // Every request but FORGET (and INIT) goes over the ring.
            let lookups: u64 = s["requests.lookup"].parse().unwrap();
            assert!(served >= 20 && served >= lookups, "{s:?}");
        } else {
            assert_eq!(
                served, 0,
                "uring=off must keep requests on /dev/fuse: {s:?}"
            );
        }
        // The upper is the same diff either way, and the lower is untouched.
        assert_eq!(fs::read(u.join("low")).unwrap(), b"lower+");
        assert!(u.join(".wh.gone").exists() && u.join("renamed").exists());
        assert_eq!(fs::read(l.join("low")).unwrap(), b"lower");
        let m = fx.mounts.pop().unwrap();
        nix::mount::umount(&m).unwrap();
        wait_until("daemon exit", || !alive(pid));
    }
}
