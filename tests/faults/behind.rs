//! kill -9 of the daemon while copy-ups flushed behind still have their records (issue 16).
//! The next mount must make each such file whole before it serves anything: in the same boot
//! (the daemon died, the page cache still holds the copy and every write to it) the file keeps
//! what was written; after a machine crash (records from another boot) the file is made again
//! from its lower, as it was right after the copy-up. Never a partial file.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::time::Duration;

use crate::common::*;

const FILES: usize = 4;
const SIZE: usize = 3 << 20;

fn old_data(i: usize) -> Vec<u8> {
    (0..SIZE).map(|j| ((j * 7 + i * 13) % 251) as u8).collect()
}

fn new_data(i: usize) -> Vec<u8> {
    let mut d = old_data(i);
    d.extend_from_slice(format!("tail {i}").as_bytes());
    d
}

/// Where a record keeps its body (BOOT\nLAYER\nPATH): the daemon runs as root here.
const RECORD_XATTR: &str = "trusted.unionfs.behind";

/// The records of copies not yet flushed, in the work dir, by name.
fn records(u: &Union) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(u.work_dir())
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("#unionfs-behind-")
                .then(|| (n, lgetxattr(&e.path(), RECORD_XATTR).unwrap()))
        })
        .collect()
}

/// Mounts, appends to every file while holding it open (so the copies stay unflushed), kills
/// the daemon and clears the dead mount. Returns the records left, or None when every copy
/// was flushed before the kill (the machine stalled for the whole wait).
fn kill_with_unflushed_copies(u: &mut Union) -> Option<BTreeMap<String, Vec<u8>>> {
    u.do_mount();
    let held: Vec<fs::File> = (0..FILES)
        .map(|i| {
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(u.m(&format!("f{i}")))
                .unwrap();
            f.write_all(format!("tail {i}").as_bytes()).unwrap();
            f
        })
        .collect();
    let pid = u.daemon_pid().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    assert!(
        wait_pid_gone(pid, Duration::from_secs(10)),
        "daemon survived SIGKILL"
    );
    drop(held);
    let recs = records(u);
    u.cleanup_dead_mount();
    (!recs.is_empty()).then_some(recs)
}

fn reset_upper(u: &Union) {
    fs::remove_dir_all(u.u("")).unwrap();
    fs::create_dir(u.u("")).unwrap();
}

/// Mounts again and checks every file in the view and in the upper: `made_again` ones hold
/// their lower's content, the others their appended one.
fn check_after_remount(u: &mut Union, made_again: &[String]) {
    u.do_mount();
    for i in 0..FILES {
        let name = format!("f{i}");
        let want = if made_again.contains(&name) {
            old_data(i)
        } else {
            new_data(i)
        };
        assert!(
            u.read(&name) == want,
            "{name}: not the expected whole content"
        );
        assert!(
            fs::read(u.u(&name)).unwrap() == want,
            "{name}: the upper differs"
        );
        assert!(
            fs::read(u.l(0, &name)).unwrap() == old_data(i),
            "lower {name} changed"
        );
    }
    assert!(u.stage_leftovers().is_empty(), "{:?}", u.stage_leftovers());
    u.check_upper_is_layer_diff();
    u.unmount();
}

/// The files over a daemon without watchdog (its dead mount stays until cleared); None where
/// the test cannot run.
fn killable_union() -> Option<Union> {
    if is_kernel() {
        eprintln!("SKIP on kernel: no daemon to kill");
        return None;
    }
    let stack = Stack::new()
        .daemon_flag("--no-watchdog")
        .lower((0..FILES).map(|i| file(&format!("f{i}"), old_data(i))));
    Union::build(stack)
}

#[test]
fn kill_9_with_unflushed_copies_keeps_them_in_the_same_boot() {
    let Some(mut u) = killable_union() else {
        return;
    };
    for _ in 0..3 {
        let recs = kill_with_unflushed_copies(&mut u);
        check_after_remount(&mut u, &[]);
        reset_upper(&u);
        if recs.is_some() {
            return;
        }
    }
    panic!("no copy was still unflushed when the daemon died, in 3 tries");
}

#[test]
fn copies_unflushed_in_an_earlier_boot_are_made_again_from_the_lower() {
    let Some(mut u) = killable_union() else {
        return;
    };
    for _ in 0..3 {
        let Some(recs) = kill_with_unflushed_copies(&mut u) else {
            reset_upper(&u);
            continue;
        };
        // A machine crash: the records now say another boot, whose unflushed data may be gone.
        let mut again = Vec::new();
        for (name, body) in &recs {
            let text = String::from_utf8_lossy(body);
            let mut parts = text.splitn(3, '\n');
            let (_, layer, rel) = (parts.next(), parts.next(), parts.next());
            let (Some(layer), Some(rel)) = (layer, rel) else {
                panic!("a record is BOOT\\nLAYER\\nPATH: {text:?}");
            };
            again.push(rel.to_string());
            let other = format!("00000000-0000-0000-0000-000000000000\n{layer}\n{rel}");
            lsetxattr(&u.work_dir().join(name), RECORD_XATTR, other.as_bytes()).unwrap();
        }
        check_after_remount(&mut u, &again);
        return;
    }
    panic!("no copy was still unflushed when the daemon died, in 3 tries");
}
