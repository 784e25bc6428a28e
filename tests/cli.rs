//! The `unionfs-mount` command line and daemon lifecycle, with real FUSE mounts: error paths,
//! both argument forms, read-only unions, signals, a killed daemon, and the library guard.

mod common;

use common::can_mount as fuse_available;

use std::fs;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_unionfs-mount");

/// A temp dir with layer dirs; unmounts and kills what it started when dropped, even on panic.
struct Fixture {
    root: PathBuf,
    mounts: Vec<PathBuf>,
    pids: Vec<i32>,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let root = std::env::temp_dir().join(format!(
            "unionfs-cli-{tag}-{}-{}",
            std::process::id(),
            rand_u64()
        ));
        fs::create_dir_all(&root).unwrap();
        Fixture {
            root,
            mounts: Vec::new(),
            pids: Vec::new(),
        }
    }
    fn dir(&self, name: &str) -> PathBuf {
        let p = self.root.join(name);
        fs::create_dir_all(&p).unwrap();
        p
    }
    fn run(&mut self, args: &[&str]) -> Output {
        let pidfile = self.root.join(format!("pid-{}", self.mounts.len()));
        let out = Command::new(BIN)
            .arg("--pid-file")
            .arg(&pidfile)
            .args(args)
            .output()
            .unwrap();
        if out.status.success() {
            if let Some(m) = args.last() {
                self.mounts.push(PathBuf::from(m));
            }
            if let Ok(p) = fs::read_to_string(&pidfile) {
                self.pids.push(p.trim().parse().unwrap());
            }
        }
        out
    }
}

impl Fixture {
    /// Mounts a fresh one-lower union `l`, upper `u` on `mnt` with extra `args`; returns the
    /// three paths and the daemon's pid.
    fn mount_simple(&mut self, args: &[&str]) -> (PathBuf, PathBuf, PathBuf, i32) {
        let (l, u, mnt) = (self.dir("l"), self.dir("u"), self.dir("mnt"));
        let mut a: Vec<&str> = args.to_vec();
        a.extend([
            l.to_str().unwrap(),
            u.to_str().unwrap(),
            mnt.to_str().unwrap(),
        ]);
        let o = self.run(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        let pid = *self.pids.last().unwrap();
        (l, u, mnt, pid)
    }
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ =
        fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    u64::from_le_bytes(b)
}

fn is_mounted(p: &Path) -> bool {
    let Ok(canon) = fs::canonicalize(p) else {
        return true; // ENOTCONN on a dead FUSE mount also lands here
    };
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(canon.to_str().unwrap()))
}

/// Whether `pid` runs (a zombie counts as gone: it has exited).
fn alive(pid: i32) -> bool {
    unionfs_harness::impls::alive(pid)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for m in &self.mounts {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        for p in &self.pids {
            if alive(*p) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn missing_layer_names_the_path_and_the_fix() {
    let mut fx = Fixture::new("missing");
    let mnt = fx.dir("mnt");
    let nope = fx.root.join("no-such-layer");
    let o = fx.run(&[nope.to_str().unwrap(), mnt.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("no-such-layer") && e.contains("create it"),
        "{e}"
    );
}

#[test]
fn bad_arguments_and_options_fail_clearly() {
    let mut fx = Fixture::new("badopt");
    let l = fx.dir("l");
    let mnt = fx.dir("mnt");
    let o = fx.run(&[
        "-o",
        &format!("lowerdir={},threads=many", l.display()),
        mnt.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("threads=many"), "{}", stderr(&o));
    let o = fx.run(&[mnt.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("LOWER1"), "{}", stderr(&o));
    let o = fx.run(&[
        "-o",
        &format!("upperdir={}", l.display()),
        mnt.to_str().unwrap(),
    ]);
    assert!(stderr(&o).contains("lowerdir"), "{}", stderr(&o));
}

#[test]
fn overlapping_layers_and_mountpoints_are_refused() {
    let mut fx = Fixture::new("overlap");
    let l = fx.dir("l");
    let inner = fx.dir("l/upper");
    let mnt = fx.dir("mnt");
    let o = fx.run(&[
        l.to_str().unwrap(),
        inner.to_str().unwrap(),
        mnt.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("overlap"), "{}", stderr(&o));
    let u = fx.dir("u");
    let inside = fx.dir("l/mnt");
    let o = fx.run(&[
        l.to_str().unwrap(),
        u.to_str().unwrap(),
        inside.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("inside layer"), "{}", stderr(&o));
}

#[test]
fn workdir_on_another_filesystem_is_refused() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("workfs");
    let l = fx.dir("l");
    let u = fx.dir("u");
    let w = fx.dir("w");
    let mnt = fx.dir("mnt");
    nix::mount::mount(
        Some("tmpfs"),
        &w,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    fx.mounts.push(w.clone());
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        l.display(),
        u.display(),
        w.display()
    );
    let o = fx.run(&["-o", &opts, mnt.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("another filesystem"), "{}", stderr(&o));
    assert!(!is_mounted(&mnt));
}

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
        "lowerdir={}:{},upperdir={},workdir={},,volatile",
        l1.display(),
        l2.display(),
        u.display(),
        w.display()
    );
    let o = fx.run(&["-o", &opts, mnt.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("volatile"),
        "no warning: {}",
        stderr(&o)
    );
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
fn colon_in_lower_path_is_escaped() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("colon");
    let l = fx.dir("a:b");
    fs::write(l.join("f"), "colon").unwrap();
    let mnt = fx.dir("mnt");
    let arg = l.to_str().unwrap().replace(':', "\\:");
    let o = fx.run(&[&arg, mnt.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(fs::read_to_string(mnt.join("f")).unwrap(), "colon");
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
        let guard = unionfs::MountConfig::new(vec![l.clone()], Some(u.clone()))
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
fn version_is_printed() {
    let o = Command::new(BIN).arg("--version").output().unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains(env!("CARGO_PKG_VERSION")));
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

/// Parses `key value` lines of a stats report.
/// Asks daemon `pid` for its counters (SIGUSR1) and reads them from its --stats-file.
fn read_stats(pid: i32, stats: &Path) -> std::collections::HashMap<String, String> {
    let _ = fs::remove_file(stats);
    signal(pid, nix::sys::signal::Signal::SIGUSR1);
    wait_until("stats file", || stats.exists());
    parse_stats(&fs::read_to_string(stats).unwrap())
}

/// The names in `dir` other than `skip`.
fn names_but(dir: &Path, skip: &str) -> Vec<std::ffi::OsString> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != skip)
        .collect()
}

/// The names in `dir` with their d_ino.
fn list_inos(dir: &Path) -> Vec<(String, u64)> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().into_string().unwrap(), e.ino())
        })
        .collect()
}

/// Mounts lower `l` over a new upper with a stats file: (daemon pid, stats file, upper, mnt).
fn mount_counting(fx: &mut Fixture, l: &Path) -> (i32, PathBuf, PathBuf, PathBuf) {
    let stats = fx.root.join("stats");
    let (u, mnt) = (fx.dir("u"), fx.dir("mnt"));
    let o = fx.run(&[
        "--stats-file",
        stats.to_str().unwrap(),
        l.to_str().unwrap(),
        u.to_str().unwrap(),
        mnt.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    (*fx.pids.last().unwrap(), stats, u, mnt)
}

fn parse_stats(s: &str) -> std::collections::HashMap<String, String> {
    s.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn sigusr1_reports_counters_that_match_the_workload() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("stats");
    let l = fx.dir("l");
    for i in 0..3 {
        fs::write(l.join(format!("f{i}")), vec![7u8; 1000]).unwrap();
    }
    let (pid, stats, _, mnt) = mount_counting(&mut fx, &l);
    // Workload: two copy-ups of 1000-byte files, two deletes of lower files (two
    // whiteouts), one held-open file.
    fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("f0"))
        .unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("f1"))
        .unwrap();
    fs::remove_file(mnt.join("f1")).unwrap();
    fs::remove_file(mnt.join("f2")).unwrap();
    let held = fs::File::open(mnt.join("f0")).unwrap();
    // close() does not wait for the daemon to see RELEASE: give the two earlier ones time.
    let mut s = read_stats(pid, &stats);
    let until = Instant::now() + Duration::from_secs(5);
    while s["open_handles"] != "1" && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
        s = read_stats(pid, &stats);
    }
    assert_eq!(s["copy_ups"], "2", "{s:?}");
    assert_eq!(s["bytes_copied"], "2000", "{s:?}");
    assert_eq!(s["whiteouts"], "2", "{s:?}");
    assert_eq!(s["open_handles"], "1", "{s:?}");
    assert_eq!(s["requests.unlink"], "2", "{s:?}");
    assert!(s["requests.open"].parse::<u64>().unwrap() >= 3, "{s:?}");
    assert!(["on", "off"].contains(&s["passthrough"].as_str()), "{s:?}");
    drop(held);
}

#[test]
fn small_writes_do_not_each_ask_for_file_capabilities() {
    // Without FUSE_HANDLE_KILLPRIV_V2 the kernel sends GETXATTR security.capability before
    // every write(2), even to a passthrough file: one round trip per write.
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("killpriv");
    let l = fx.dir("l");
    let (pid, stats, u, mnt) = mount_counting(&mut fx, &l);
    let mut f = fs::File::create(mnt.join("log")).unwrap();
    for i in 0..200 {
        std::io::Write::write_all(&mut f, format!("line {i}\n").as_bytes()).unwrap();
    }
    drop(f);
    let s = read_stats(pid, &stats);
    let asks: u64 = s.get("requests.getxattr").map_or(0, |n| n.parse().unwrap());
    assert!(asks <= 2, "{asks} GETXATTRs for 200 writes: {s:?}");
    let text = fs::read_to_string(u.join("log")).unwrap();
    assert_eq!(text.lines().count(), 200);
}

#[test]
fn a_listing_carries_attributes_only_for_callers_that_stat_what_they_list() {
    // The first batch of a listing goes without attributes (no stat in the daemon, no inode
    // in the kernel) until a name of a directory the caller was sent bare is looked up; on
    // either transport (the test command runs this file over each).
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("listing");
    let l = fx.dir("l");
    const N: usize = 60;
    for d in ["a", "b", "c", "d", "e"] {
        fs::create_dir_all(l.join(d).join("sub")).unwrap();
        for i in 0..N {
            fs::write(l.join(d).join(format!("f{i}")), vec![b'x'; i]).unwrap();
        }
    }
    let (pid, stats, u, mnt) = mount_counting(&mut fx, &l);
    let count = |s: &std::collections::HashMap<String, String>, k: &str| -> u64 {
        s.get(k).map_or(0, |v| v.parse().unwrap())
    };
    let nodes0 = count(&read_stats(pid, &stats), "inodes");

    // A thread of ours lists `a`: the names and their d_ino, no inodes for the files.
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (res_tx, res_rx) = std::sync::mpsc::channel();
    let lister = std::thread::spawn({
        let mnt = mnt.clone();
        move || {
            res_tx.send(list_inos(&mnt.join("a"))).unwrap();
            go_rx.recv().unwrap();
            res_tx.send(list_inos(&mnt.join("e"))).unwrap();
        }
    });
    let listed = res_rx.recv().unwrap();
    assert_eq!(listed.len(), N + 1);
    let s = read_stats(pid, &stats);
    let made = count(&s, "inodes") - nodes0;
    assert!(made <= 2, "listing made {made} inodes: {s:?}");
    // A bare entry's d_ino is the st_ino a lookup then reports.
    for (name, d_ino) in &listed {
        let m = fs::symlink_metadata(mnt.join("a").join(name)).unwrap();
        assert_eq!(m.ino(), *d_ino, "d_ino of a/{name}");
        if let Some(i) = name.strip_prefix('f') {
            assert_eq!(m.len(), i.parse::<u64>().unwrap(), "size of a/{name}");
        }
    }

    // Another thread used the names the lister was sent bare: its next listing has attributes.
    let nodes1 = count(&read_stats(pid, &stats), "inodes");
    go_tx.send(()).unwrap();
    assert_eq!(res_rx.recv().unwrap().len(), N + 1);
    lister.join().unwrap();
    let made = count(&read_stats(pid, &stats), "inodes") - nodes1;
    assert!(made > N as u64, "second listing made {made} inodes");

    // `ls -l b c`, a new process: it pays lookups for b's first batch, then gets attributes.
    let lookups0 = count(&read_stats(pid, &stats), "requests.lookup");
    let o = Command::new("ls")
        .arg("-ln")
        .arg(mnt.join("b"))
        .arg(mnt.join("c"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    for i in 0..N {
        let line = format!(" {i} ");
        let name = format!(" f{i}\n");
        let hits = out
            .lines()
            .filter(|x| format!("{x}\n").ends_with(&name) && x.contains(&line))
            .count();
        assert_eq!(hits, 2, "f{i} with size {i} in b and c:\n{out}");
    }
    let lookups = count(&read_stats(pid, &stats), "requests.lookup") - lookups0;
    assert!(
        (N as u64..=N as u64 + 4).contains(&lookups),
        "ls -l b c took {lookups} lookups"
    );

    // `find`, a new process that never stats: no inodes for d's files.
    let nodes1 = count(&read_stats(pid, &stats), "inodes");
    let o = Command::new("find").arg(mnt.join("d")).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), N + 2);
    let made = count(&read_stats(pid, &stats), "inodes") - nodes1;
    assert!(made <= 2, "find made {made} inodes");
    // Listings change nothing on disk (the upper holds only our work dir).
    let upper = names_but(&u, ".wh..wh.unionfs");
    assert!(upper.is_empty(), "{upper:?}");
    assert_eq!(fs::read(l.join("a/f3")).unwrap(), b"xxx");
}

/// The kernel's switch for FUSE over io_uring.
const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

#[test]
fn without_cap_sys_nice_uring_auto_keeps_dev_fuse_and_uring_on_takes_the_ring() {
    // Without CAP_SYS_NICE the ring's workers cannot keep a caller on its CPU, and a ring
    // round trip then costs more than one over /dev/fuse: auto stays off the ring.
    if !fuse_available() {
        return;
    }
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

/// The product's tools, by binary name (unionfs-docs and unionfs-harness are the harness
/// crate's, checked by its own tests).
const TOOLS: [(&str, &str); 3] = [
    ("unionfs-mount", env!("CARGO_BIN_EXE_unionfs-mount")),
    ("unionfs-run", env!("CARGO_BIN_EXE_unionfs-run")),
    ("unionfs-layer", env!("CARGO_BIN_EXE_unionfs-layer")),
];

#[test]
fn every_tool_answers_help_and_version_and_writes_nothing() {
    let fx = Fixture::new("help");
    for (name, path) in TOOLS {
        unionfs_harness::support::assert_help_and_version(
            name,
            Path::new(path),
            env!("CARGO_PKG_VERSION"),
            &fx.dir(name),
        );
    }
}

/// Unmounts `mnt` (a union this test mounted with daemon `pid`) and waits for the daemon to end.
fn unmount_and_wait(mnt: &Path, pid: i32) {
    nix::mount::umount2(mnt, nix::mount::MntFlags::MNT_DETACH).unwrap();
    wait_until("daemon exit", || !alive(pid));
}

#[test]
fn a_mount_point_that_is_a_layer_is_refused_with_the_fix() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("mnt-is-layer");
    let (l, u, w) = (fx.dir("l"), fx.dir("u"), fx.dir("w"));
    fs::write(l.join("gone"), "lower").unwrap();
    let (ls, us, ws) = (
        l.to_str().unwrap(),
        u.to_str().unwrap(),
        w.to_str().unwrap(),
    );
    let o_form = format!("lowerdir={ls},upperdir={us},workdir={ws}");
    let cases: [(&[&str], &str); 4] = [
        (&[ls, us, us], "is the upper layer"),
        (&[ls, ls], "is a lower layer"),
        (&["-o", &o_form, us], "is the upper layer"),
        (&["-o", &o_form, ws], "is the workdir"),
    ];
    for (args, says) in cases {
        let o = fx.run(args);
        let e = stderr(&o);
        assert!(!o.status.success(), "{args:?} mounted");
        assert!(
            e.contains(says) && e.contains("unionfs-mount LOWERS"),
            "{args:?}: {e}"
        );
    }
    // The usual slip: an upper used before, then `unionfs-mount L U` with MNT left out.
    let mnt = fx.dir("mnt");
    let o = fx.run(&[ls, us, mnt.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    fs::remove_file(mnt.join("gone")).unwrap();
    unmount_and_wait(&mnt, *fx.pids.last().unwrap());
    let o = fx.run(&[ls, us]);
    let e = stderr(&o);
    assert!(!o.status.success(), "mounted over the upper: {e}");
    assert!(
        e.contains(us) && e.contains("layer directory") && e.contains("unionfs-mount LOWERS"),
        "{e}"
    );
    for p in [&u, &l, &w] {
        assert!(!is_mounted(p), "{p:?} is mounted");
    }
    assert!(u.join(".wh.gone").exists());
}

#[test]
fn a_non_empty_mount_point_is_mounted_over_with_a_warning() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("nonempty");
    let (l, u, mnt) = (fx.dir("l"), fx.dir("u"), fx.dir("mnt"));
    fs::write(l.join("f"), "lower").unwrap();
    fs::write(mnt.join("mine"), "mine").unwrap();
    let (ls, us, ms) = (
        l.to_str().unwrap(),
        u.to_str().unwrap(),
        mnt.to_str().unwrap(),
    );
    for (args, hint) in [(&[ls, us, ms][..], false), (&[ls, ms][..], true)] {
        let o = fx.run(args);
        let e = stderr(&o);
        assert!(o.status.success(), "{args:?}: {e}");
        assert!(
            e.contains("warning") && e.contains(ms) && e.contains("not empty"),
            "{args:?}: {e}"
        );
        // Without an upper the directory may have been meant as the upper: say how.
        assert_eq!(e.contains("meant as the upper"), hint, "{args:?}: {e}");
        assert_eq!(fs::read_to_string(mnt.join("f")).unwrap(), "lower");
        assert!(!mnt.join("mine").exists());
        unmount_and_wait(&mnt, *fx.pids.last().unwrap());
        assert_eq!(fs::read_to_string(mnt.join("mine")).unwrap(), "mine");
    }
    // -o nonempty (libfuse2's opt-in) says it is meant: no warning, and no "unknown option".
    let o = fx.run(&["-o", "nonempty", ls, us, ms]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
    unmount_and_wait(&mnt, *fx.pids.last().unwrap());
}

/// The mount options, filesystem type and source of the mount on `mnt`, from mountinfo.
fn mount_fields(mnt: &Path) -> (String, String, String) {
    let canon = fs::canonicalize(mnt).unwrap();
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(canon.to_str().unwrap()))
        .unwrap_or_else(|| panic!("{mnt:?} is not mounted"));
    let fields: Vec<&str> = line.split(' ').collect();
    // After the optional fields and a lone "-": type, source, super options.
    let dash = fields.iter().position(|f| *f == "-").unwrap();
    (
        fields[5].to_string(),
        fields[dash + 1].to_string(),
        fields[dash + 2].to_string(),
    )
}

#[test]
fn a_union_without_an_upper_is_mounted_read_only() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("ro-flag");
    let (l, u) = (fx.dir("l"), fx.dir("u"));
    fs::write(l.join("f"), "lower").unwrap();
    let (ls, us) = (l.to_str().unwrap(), u.to_str().unwrap());
    for (args, want) in [
        (vec![ls], "ro"),
        (vec!["-o", "ro", ls, us], "ro"),
        (vec![ls, us], "rw"),
    ] {
        let mnt = fx.dir(&format!("mnt-{}", fx.mounts.len()));
        let mut a = args.clone();
        a.push(mnt.to_str().unwrap());
        let o = fx.run(&a);
        assert!(o.status.success(), "{a:?}: {}", stderr(&o));
        let (opts, fstype, _) = mount_fields(&mnt);
        assert_eq!(fstype, "fuse.unionfs");
        assert_eq!(opts.split(',').next(), Some(want), "{a:?}: {opts}");
        assert_eq!(fs::read_to_string(mnt.join("f")).unwrap(), "lower");
        if want == "ro" {
            let r = fs::write(mnt.join("new"), "x");
            assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EROFS));
        }
        unmount_and_wait(&mnt, *fx.pids.last().unwrap());
    }
}

#[test]
fn the_source_argument_is_the_name_in_proc_mounts() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("fsname");
    let l = fx.dir("l");
    let lower = format!("lowerdir={}", l.display());
    let explicit = format!("{lower},fsname=explicit-name");
    for (opts, source, want) in [
        (lower.as_str(), "my-root", "my-root"),
        (explicit.as_str(), "my-root", "explicit-name"),
    ] {
        let mnt = fx.dir(&format!("mnt-{}", fx.mounts.len()));
        let o = fx.run(&["-o", opts, source, mnt.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        let (_, fstype, shown) = mount_fields(&mnt);
        assert_eq!((fstype.as_str(), shown.as_str()), ("fuse.unionfs", want));
        unmount_and_wait(&mnt, *fx.pids.last().unwrap());
    }
}

/// Runs `scripts/demo.sh` with `args` from `cwd`, using the binary under test.
fn demo(cwd: &Path, args: &[&Path]) -> Output {
    Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo.sh"))
        .args(args)
        .current_dir(cwd)
        .env("UNIONFS_MOUNT", BIN)
        .output()
        .unwrap()
}

#[test]
fn the_demo_refuses_a_non_empty_directory_it_did_not_make() {
    let mut fx = Fixture::new("demo");
    let theirs = fx.dir("theirs");
    fs::write(theirs.join("precious"), "data").unwrap();
    let o = demo(&fx.root, &[&theirs]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains(theirs.to_str().unwrap()) && e.contains("not empty"),
        "{e}"
    );
    assert_eq!(names_but(&theirs, ""), ["precious"]);
    assert_eq!(fs::read_to_string(theirs.join("precious")).unwrap(), "data");
    let file = theirs.join("precious");
    let o = demo(&fx.root, &[&file]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("not a directory"), "{}", stderr(&o));
    if !fuse_available() {
        return;
    }
    // A directory it made itself (relative: to the caller's cwd) it may clear on the next run.
    let ours = fx.root.join("ours");
    fx.mounts.push(ours.join("mnt"));
    for run in 0..2 {
        let o = demo(&fx.root, &[Path::new("ours")]);
        assert!(o.status.success(), "run {run}: {}", stderr(&o));
        assert!(ours.join(".unionfs-demo").exists(), "run {run}");
        assert!(!is_mounted(&ours.join("mnt")), "run {run}");
        assert!(ours.join("upper/etc/new.conf").exists(), "run {run}");
    }
}
