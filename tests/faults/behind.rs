//! kill -9 of the daemon while copy-ups wait to be flushed behind (issue 16). A staged copy is
//! the file until it is published, so a daemon that dies must not take it along: the next
//! mount publishes it, flushed, when the machine did not crash (the page cache still holds
//! every write), and throws it away after a crash (a record from another boot), leaving the
//! file as it was before the copy-up, whole. Either way the upper never holds a part of it.

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

/// The records of copies still staged in the work dir, by name.
fn records(u: &Union) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(u.work_dir())
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            (n.starts_with("#unionfs-behind-") && n.ends_with(".to"))
                .then(|| (n, fs::read(e.path()).unwrap()))
        })
        .collect()
}

/// Mounts, appends to every file while holding it open (so the copies stay staged), kills the
/// daemon and clears the dead mount. Returns the records left, or None when the copies were
/// all published before the kill (the machine stalled for the whole wait).
fn kill_with_staged_copies(u: &mut Union) -> Option<BTreeMap<String, Vec<u8>>> {
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

fn check_after_remount(u: &mut Union, staged_lost: &[String]) {
    u.do_mount();
    for i in 0..FILES {
        let name = format!("f{i}");
        let want = if staged_lost.contains(&name) {
            old_data(i)
        } else {
            new_data(i)
        };
        assert!(
            u.read(&name) == want,
            "{name}: not the whole expected content"
        );
        match fs::read(u.u(&name)) {
            Ok(got) => assert!(got == want, "{name}: the upper holds a part of a copy"),
            Err(_) => assert!(
                want == old_data(i),
                "{name}: its copy never reached the upper"
            ),
        }
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
fn kill_9_with_staged_copies_publishes_them_in_the_same_boot() {
    let Some(mut u) = killable_union() else {
        return;
    };
    let mut exercised = false;
    for _ in 0..3 {
        let recs = kill_with_staged_copies(&mut u);
        check_after_remount(&mut u, &[]);
        reset_upper(&u);
        if recs.is_some() {
            exercised = true;
            break;
        }
    }
    assert!(
        exercised,
        "no copy was still staged when the daemon died, in 3 tries"
    );
}

#[test]
fn staged_copies_of_an_earlier_boot_are_thrown_away() {
    let Some(mut u) = killable_union() else {
        return;
    };
    for _ in 0..3 {
        let Some(recs) = kill_with_staged_copies(&mut u) else {
            reset_upper(&u);
            continue;
        };
        // A machine crash: the records now say another boot, whose unflushed data may be gone.
        let mut lost = Vec::new();
        for (name, body) in &recs {
            let text = String::from_utf8_lossy(body);
            let (_, rel) = text.split_once('\n').expect("a record is BOOT\\nPATH");
            lost.push(rel.to_string());
            let other = format!("00000000-0000-0000-0000-000000000000\n{rel}");
            fs::write(u.work_dir().join(name), other).unwrap();
        }
        check_after_remount(&mut u, &lost);
        return;
    }
    panic!("no copy was still staged when the daemon died, in 3 tries");
}

#[test]
fn a_copy_that_cannot_be_published_fails_fsync_and_leaves_what_is_there() {
    // Something writes the upper behind the daemon's back and takes the name first: the
    // staged copy must not replace it, its writer hears of it at fsync (EIO, a failed
    // write-back), and nothing is left of the copy after the next mount.
    if is_kernel() {
        eprintln!("SKIP on kernel: no staged copies");
        return;
    }
    let Some(mut u) = Union::mount(Stack::new().lower([file("f", old_data(0))])) else {
        return;
    };
    for _ in 0..3 {
        let mut w = fs::OpenOptions::new().append(true).open(u.m("f")).unwrap();
        w.write_all(b"tail").unwrap();
        // Taken only if the copy is still staged (create_new fails once it is published).
        let theirs = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(u.u("f"));
        let Ok(mut theirs) = theirs else {
            drop(w);
            u.unmount();
            reset_upper(&u);
            u.do_mount();
            continue;
        };
        theirs.write_all(b"theirs").unwrap();
        drop(theirs);
        let e = w
            .sync_all()
            .expect_err("fsync of a copy that could not be published");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
        drop(w);
        u.remount();
        assert_eq!(u.read_str("f"), "theirs");
        assert!(u.stage_leftovers().is_empty(), "{:?}", u.stage_leftovers());
        assert!(
            fs::read(u.l(0, "f")).unwrap() == old_data(0),
            "the lower changed"
        );
        return;
    }
    panic!("the copy was published before the test could take its name, 3 times");
}
