//! The fixture of the command-line tests: a temp dir of layers that unmounts what it mounted
//! and kills the daemons it started (by pid) when dropped, and small helpers.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_unionfs-mount");

/// A temp dir with layer dirs; unmounts and kills what it started when dropped, even on panic.
pub(crate) struct Fixture {
    pub(crate) root: PathBuf,
    pub(crate) mounts: Vec<PathBuf>,
    pub(crate) pids: Vec<i32>,
}

impl Fixture {
    pub(crate) fn new(tag: &str) -> Fixture {
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
    pub(crate) fn dir(&self, name: &str) -> PathBuf {
        let p = self.root.join(name);
        fs::create_dir_all(&p).unwrap();
        p
    }
    pub(crate) fn run(&mut self, args: &[&str]) -> Output {
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
    pub(crate) fn mount_simple(&mut self, args: &[&str]) -> (PathBuf, PathBuf, PathBuf, i32) {
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

/// Mounts lower `l` over a new upper with a stats file and extra `args`: (daemon pid, stats
/// file, upper, mountpoint).
pub(crate) fn mount_counting(
    fx: &mut Fixture,
    l: &Path,
    args: &[&str],
) -> (i32, PathBuf, PathBuf, PathBuf) {
    let stats = fx.root.join("stats");
    let (u, mnt) = (fx.dir("u"), fx.dir("mnt"));
    let mut a = args.to_vec();
    a.extend([
        "--stats-file",
        stats.to_str().unwrap(),
        l.to_str().unwrap(),
        u.to_str().unwrap(),
        mnt.to_str().unwrap(),
    ]);
    let o = fx.run(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    (*fx.pids.last().unwrap(), stats, u, mnt)
}

pub(crate) fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

pub(crate) fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ =
        fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    u64::from_le_bytes(b)
}

pub(crate) fn is_mounted(p: &Path) -> bool {
    let Ok(canon) = fs::canonicalize(p) else {
        return true; // ENOTCONN on a dead FUSE mount also lands here
    };
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(canon.to_str().unwrap()))
}

/// Whether `pid` runs (a zombie counts as gone: it has exited).
pub(crate) fn alive(pid: i32) -> bool {
    unionfs_harness::impls::alive(pid)
}

/// Waits up to 10 s for `f`, failing the test with `what` after that.
pub(crate) fn wait_until(what: &str, f: impl FnMut() -> bool) {
    wait_within(what, Duration::from_secs(10), f)
}

/// Waits up to `limit` for `f`, failing the test with `what` after that.
pub(crate) fn wait_within(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
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

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Unmounts `mnt` (a union this test mounted with daemon `pid`) and waits for the daemon to end.
pub(crate) fn unmount_and_wait(mnt: &Path, pid: i32) {
    nix::mount::umount2(mnt, nix::mount::MntFlags::MNT_DETACH).unwrap();
    wait_until("daemon exit", || !alive(pid));
}

/// The mount options, filesystem type and source of the mount on `mnt`, from mountinfo.
pub(crate) fn mount_fields(mnt: &Path) -> (String, String, String) {
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

/// Parses `key value` lines of a stats report.
/// Asks daemon `pid` for its counters (SIGUSR1) and reads them from its --stats-file.
pub(crate) fn read_stats(pid: i32, stats: &Path) -> std::collections::HashMap<String, String> {
    let _ = fs::remove_file(stats);
    signal(pid, nix::sys::signal::Signal::SIGUSR1);
    wait_until("stats file", || stats.exists());
    parse_stats(&fs::read_to_string(stats).unwrap())
}

pub(crate) fn parse_stats(s: &str) -> std::collections::HashMap<String, String> {
    s.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The names in `dir` other than `skip`.
pub(crate) fn names_but(dir: &Path, skip: &str) -> Vec<std::ffi::OsString> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != skip)
        .collect()
}
