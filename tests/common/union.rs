//! A live union of a [`Stack`]: building its layers, mounting unionfs (through
//! `unionfs-mount`) or kernel overlayfs, remounts and rotations, paths and the merged view.
//! When dropped it checks that the lowers did not change. The checks of the upper on disk are
//! in `upper.rs`.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::mount::{umount2, MntFlags, MsFlags};
use unionfs_harness::impls::{layer_options, lower_list, start_daemon};
use unionfs_harness::view;

use super::*;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub struct Union {
    pub imp: Impl,
    pub root: PathBuf,
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: PathBuf,
    pub mnt: PathBuf,
    pub stack: Stack,
    snaps: Vec<Snapshot>,
    pub(super) upper_snap: Option<Snapshot>,
    /// Directories outside the layers that must not change (hostile-layer sentinels).
    sentinels: Vec<(PathBuf, Snapshot)>,
    mounted: bool,
    pid: Option<i32>,
}

fn test_name() -> String {
    let t = std::thread::current();
    let n = t.name().unwrap_or("test").rsplit("::").next().unwrap();
    n.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(40)
        .collect()
}

impl Union {
    /// Builds the layers of `stack` in a fresh temp dir and mounts them. `None` (after printing a
    /// reason) only when the machine cannot mount at all and `UNIONFS_REQUIRE_FUSE` is unset.
    pub fn mount(stack: Stack) -> Option<Union> {
        let mut u = Self::build(stack)?;
        u.do_mount();
        Some(u)
    }

    /// Builds the layers but does not mount (for tests that prepare more on disk first).
    pub fn build(stack: Stack) -> Option<Union> {
        if !can_mount() {
            return None;
        }
        let imp = imp();
        let root = PathBuf::from(format!(
            "/tmp/unionfs-t-{}-{}-{}",
            test_name(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        if stack.tmpfs {
            nix::mount::mount(
                Some("tmpfs"),
                &root,
                Some("tmpfs"),
                MsFlags::empty(),
                Some("mode=0755"),
            )
            .unwrap_or_else(|e| panic!("mount tmpfs: {e}"));
        }
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        let mut lowers = vec![];
        for (i, l) in stack.lowers.iter().enumerate() {
            let name = l.name.clone().unwrap_or_else(|| format!("l{}", i + 1));
            let p = root.join(name);
            build_layer(&p, l, imp);
            lowers.push(p);
        }
        let fs_root = root.join("upperfs");
        // Unmounts the upper's filesystem if building the layers panics before the union
        // (whose drop unmounts it) exists.
        let mut fs_guard = MountGuard(None);
        let upper_base = match &stack.upper_fs {
            Some(UpperFs::Tmpfs(opts)) => {
                fs::create_dir_all(&fs_root).unwrap();
                nix::mount::mount(
                    Some("tmpfs"),
                    &fs_root,
                    Some("tmpfs"),
                    MsFlags::empty(),
                    Some(format!("mode=0755,{opts}").as_str()),
                )
                .unwrap_or_else(|e| panic!("mount tmpfs -o {opts}: {e}"));
                fs_guard.0 = Some(fs_root.clone());
                fs_root
            }
            Some(UpperFs::BtrfsQuota(limit)) => {
                fs::create_dir_all(&fs_root).unwrap();
                let img = root.join("upperfs.img");
                fs::File::create(&img).unwrap().set_len(128 << 20).unwrap();
                fn o(s: &str) -> &OsStr {
                    OsStr::new(s)
                }
                run("mkfs.btrfs", &[o("-q"), o("-f"), img.as_os_str()]);
                // A loop mount from mount(8) is auto-cleared: the loop device goes with it.
                run(
                    "mount",
                    &[o("-o"), o("loop"), img.as_os_str(), fs_root.as_os_str()],
                );
                fs_guard.0 = Some(fs_root.clone());
                let sv = fs_root.join("sv");
                run("btrfs", &[o("quota"), o("enable"), fs_root.as_os_str()]);
                run("btrfs", &[o("subvolume"), o("create"), sv.as_os_str()]);
                run(
                    "btrfs",
                    &[o("qgroup"), o("limit"), o(limit), sv.as_os_str()],
                );
                sv
            }
            None => root.clone(),
        };
        let upper = stack.upper.as_ref().map(|s| {
            let p = upper_base.join("upper");
            build_layer(&p, s, imp);
            p
        });
        let work = upper_base.join("work");
        let mnt = root.join("mnt");
        fs::create_dir_all(&mnt).unwrap();
        if imp == Impl::Kernel {
            fs::create_dir_all(&work).unwrap();
        }
        let snaps = lowers.iter().map(|l| snapshot(l)).collect();
        let upper_snap = upper.as_ref().map(|p| visible_upper(snapshot(p)));
        fs_guard.0 = None; // the union unmounts it from here on
        Some(Union {
            imp,
            root,
            lowers,
            upper,
            work,
            mnt,
            stack,
            snaps,
            upper_snap,
            sentinels: vec![],
            mounted: false,
            pid: None,
        })
    }

    /// Layer rotation: unmounts, turns the upper (minus internal state) into a new topmost
    /// lower, mounts again under a fresh empty upper.
    pub fn rotate(&mut self) {
        self.unmount();
        let up = self.upper.clone().expect("rotate needs an upper");
        let n = self.lowers.len() + 1;
        let new_lower = self.root.join(format!("rotated{n}"));
        fs::rename(&up, &new_lower).unwrap();
        drop_internal_entries(&new_lower);
        fs::create_dir(&up).unwrap();
        // The kernel hard-links its whiteouts to one in the work dir; drop that link now so the
        // new lower's link counts do not change under the snapshot.
        if self.imp == Impl::Kernel {
            let _ = fs::remove_dir_all(&self.work);
            fs::create_dir_all(&self.work).unwrap();
        }
        self.lowers.insert(0, new_lower);
        self.resnapshot();
        self.do_mount();
    }

    /// The upper is an OCI layer diff: a copy of it without our internal `.wh..wh.*` entries
    /// (`.wh..wh..opq` kept), mounted read-only as the topmost lower over the same lowers, shows
    /// the same view. Leaves the original union mounted again.
    pub fn check_upper_is_layer_diff(&mut self) {
        let before = view_snapshot(&self.mnt);
        self.unmount();
        let upper = self.upper.take().expect("no upper");
        let diff_layer = self.root.join("diff-layer");
        let _ = fs::remove_dir_all(&diff_layer);
        // cp -a keeps hard links, xattrs, devices and times, like unpacking a layer tarball.
        run(
            "cp",
            &["-a".as_ref(), upper.as_os_str(), diff_layer.as_os_str()],
        );
        drop_internal_entries(&diff_layer);
        self.lowers.insert(0, diff_layer.clone());
        let o_form = std::mem::replace(&mut self.stack.o_form, false);
        self.do_mount();
        let after = view_snapshot(&self.mnt);
        self.unmount();
        self.lowers.remove(0);
        let _ = fs::remove_dir_all(&diff_layer);
        self.upper = Some(upper);
        self.stack.o_form = o_form;
        self.do_mount();
        let (mut before, mut after) = (before, after);
        if self.stack.upper_fs.is_some() {
            // The copy is on another filesystem type than the upper: directory sizes are each
            // filesystem's own business.
            for n in before.nodes.values_mut().chain(after.nodes.values_mut()) {
                if n.kind == Kind::Dir {
                    n.size = 0;
                }
            }
        }
        let diff = diff_snapshots(&before, &after);
        assert!(
            diff.is_empty(),
            "the upper, used as a lower layer, shows a different view:\n{}",
            diff.join("\n")
        );
    }

    /// Re-takes the lower snapshots (after a test changed lowers on purpose, e.g. rotation).
    pub fn resnapshot(&mut self) {
        self.snaps = self.lowers.iter().map(|l| snapshot(l)).collect();
    }

    /// Watches `dir` (outside the layers): it must be unchanged when the union is dropped.
    pub fn add_sentinel(&mut self, dir: &Path) {
        self.sentinels.push((dir.to_path_buf(), snapshot(dir)));
    }

    fn pid_file(&self) -> PathBuf {
        self.root.join("daemon.pid")
    }
    fn log_file(&self) -> PathBuf {
        self.root.join("daemon.log")
    }

    pub fn daemon_log(&self) -> String {
        fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    pub fn do_mount(&mut self) {
        assert!(!self.mounted);
        match self.imp {
            Impl::Kernel => {
                if self.upper.is_some() {
                    fs::create_dir_all(&self.work).unwrap();
                }
                let mut opts = layer_options(&self.lowers, self.upper.as_deref(), &self.work);
                for o in &self.stack.kernel_opts {
                    opts += ",";
                    opts += o;
                }
                nix::mount::mount(
                    Some("overlay"),
                    &self.mnt,
                    Some("overlay"),
                    MsFlags::empty(),
                    Some(opts.as_str()),
                )
                .unwrap_or_else(|e| panic!("mount overlay -o {opts}: {e}"));
            }
            Impl::Unionfs => {
                let mut cmd = match self.stack.daemon_prefix.split_first() {
                    Some((first, rest)) => {
                        let mut c = Command::new(first);
                        c.args(rest).arg(bin());
                        c
                    }
                    None => Command::new(bin()),
                };
                cmd.arg("--pid-file").arg(self.pid_file());
                cmd.args(&self.stack.daemon_flags);
                for o in &self.stack.unionfs_opts {
                    cmd.arg("-o").arg(o);
                }
                if self.stack.o_form {
                    if self.upper.is_some() {
                        fs::create_dir_all(&self.work).unwrap();
                    }
                    let o = layer_options(&self.lowers, self.upper.as_deref(), &self.work);
                    cmd.arg("-o").arg(o);
                } else {
                    cmd.arg(lower_list(&self.lowers));
                    if let Some(up) = &self.upper {
                        cmd.arg(up);
                    }
                }
                cmd.arg(&self.mnt);
                let log = fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.log_file())
                    .unwrap();
                cmd.stdout(Stdio::null()).stderr(log);
                match start_daemon(&mut cmd, &self.pid_file()) {
                    Ok(pid) => self.pid = Some(pid),
                    Err(e) => panic!("{e}: {}", self.daemon_log()),
                }
            }
        }
        self.mounted = true;
        assert!(
            is_mountpoint(&self.mnt),
            "mount command succeeded but {:?} is not a mount point: {}",
            self.mnt,
            self.daemon_log()
        );
    }

    /// Unmounts cleanly (plain umount, like an admin) and waits for the daemon to exit.
    pub fn unmount(&mut self) {
        assert!(self.mounted);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match umount2(&self.mnt, MntFlags::empty()) {
                Ok(()) => break,
                Err(nix::errno::Errno::EBUSY) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!(
                    "umount {:?}: {e}; holders: {:?} (daemon {:?})",
                    self.mnt,
                    holders(&self.mnt),
                    self.pid
                ),
            }
        }
        self.mounted = false;
        if let Some(pid) = self.pid.take() {
            assert!(
                wait_pid_gone(pid, Duration::from_secs(10)),
                "daemon {pid} still running 10 s after umount"
            );
        }
    }

    pub fn remount(&mut self) {
        self.unmount();
        self.do_mount();
    }

    pub fn daemon_pid(&self) -> Option<i32> {
        self.pid
    }

    /// Whether the daemon serves file data through FUSE passthrough (its SIGUSR1 report, which
    /// goes to the log). Always false for the kernel.
    pub fn passthrough_on(&self) -> bool {
        self.pid.is_some() && self.report_value("passthrough") == "on"
    }

    /// The value of line `key` of the daemon's SIGUSR1 report (which goes to the log).
    pub fn report_value(&self, key: &str) -> String {
        let pid = self.pid.expect("no daemon: not a unionfs mount");
        let before = self.daemon_log().len();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGUSR1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let prefix = format!("{key} ");
        loop {
            let log = self.daemon_log();
            if let Some(l) = log[before..].lines().find(|l| l.starts_with(&prefix)) {
                return l[prefix.len()..].to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no {key} in a SIGUSR1 report in the log"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// For tests that killed the daemon and recovered by hand.
    pub fn forget_mount(&mut self) {
        self.mounted = false;
        self.pid = None;
    }

    /// `unionfs-mount --cleanup` on the mount of a killed daemon: it must succeed and leave
    /// no mount behind.
    pub fn cleanup_dead_mount(&mut self) {
        let out = Command::new(bin())
            .arg("--cleanup")
            .arg(&self.mnt)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "--cleanup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!is_mountpoint(&self.mnt), "--cleanup left the mount");
        self.forget_mount();
    }

    // --- paths ---------------------------------------------------------------------------------

    /// A path through the mount.
    pub fn m(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.mnt.clone()
        } else {
            self.mnt.join(rel)
        }
    }
    /// A path in the upper directory on disk.
    pub fn u(&self, rel: &str) -> PathBuf {
        let up = self.upper.as_ref().expect("stack has no upper");
        if rel.is_empty() {
            up.clone()
        } else {
            up.join(rel)
        }
    }
    /// A path in lower `i` (0 = topmost) on disk.
    pub fn l(&self, i: usize, rel: &str) -> PathBuf {
        self.lowers[i].join(rel)
    }

    // --- merged view ---------------------------------------------------------------------------

    pub fn read(&self, rel: &str) -> Vec<u8> {
        fs::read(self.m(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }
    pub fn read_str(&self, rel: &str) -> String {
        String::from_utf8(self.read(rel)).unwrap()
    }
    /// Appends `data` to the file at `rel` in the merged view (a copy-up of a lower file).
    pub fn append(&self, rel: &str, data: impl AsRef<[u8]>) {
        fs::OpenOptions::new()
            .append(true)
            .open(self.m(rel))
            .and_then(|mut f| io::Write::write_all(&mut f, data.as_ref()))
            .unwrap_or_else(|e| panic!("append to {rel}: {e}"))
    }
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) {
        fs::write(self.m(rel), content).unwrap_or_else(|e| panic!("write {rel}: {e}"))
    }
    pub fn exists(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.m(rel)).is_ok()
    }
    pub fn stat(&self, rel: &str) -> fs::Metadata {
        fs::symlink_metadata(self.m(rel)).unwrap_or_else(|e| panic!("lstat {rel}: {e}"))
    }
    /// Names in a merged directory (readdir through the mount, without `.` and `..`).
    /// Every listed name must also be found by lookup: readdir and lookup agree.
    pub fn names(&self, rel: &str) -> BTreeSet<String> {
        let names = list(&self.m(rel));
        for n in &names {
            let p = self.m(rel).join(n);
            if let Err(e) = fs::symlink_metadata(&p) {
                panic!("{rel:?} lists {n:?} but lstat fails: {e}");
            }
        }
        names
    }
    pub fn assert_enoent(&self, rel: &str) {
        assert_errno(fs::symlink_metadata(self.m(rel)), libc::ENOENT, rel);
    }
}

impl Union {
    fn cleanup(&mut self) {
        if self.mounted {
            let _ = umount2(&self.mnt, MntFlags::MNT_DETACH);
            self.mounted = false;
        }
        if let Some(pid) = self.pid.take() {
            if !wait_pid_gone(pid, Duration::from_secs(5)) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::SIGKILL,
                );
                wait_pid_gone(pid, Duration::from_secs(5));
            }
        }
    }
}

impl Drop for Union {
    fn drop(&mut self) {
        self.cleanup();
        if std::thread::panicking() {
            let log = self.daemon_log();
            if !log.is_empty() {
                eprintln!("--- unionfs-mount log ---\n{log}--- end of log ---");
            }
        }
        let mut problems = vec![];
        // Captured without panicking: this may run while the test already panics.
        let changes = |label: &str, dir: &Path, before: &Snapshot| match raw(dir) {
            Ok(now) => view::changes(label, before, &now),
            Err(e) => vec![format!("{label}: {e}")],
        };
        for (i, (l, before)) in self.lowers.iter().zip(&self.snaps).enumerate() {
            if l.exists() {
                problems.extend(changes(&format!("lower {} ({l:?})", i + 1), l, before));
            }
        }
        for (dir, before) in &self.sentinels {
            problems.extend(changes(
                &format!("outside the upper ({dir:?})"),
                dir,
                before,
            ));
        }
        if self.stack.upper_fs.is_some() {
            let _ = umount2(&self.root.join("upperfs"), MntFlags::MNT_DETACH);
        }
        if self.stack.tmpfs {
            let _ = umount2(&self.root, MntFlags::MNT_DETACH);
        }
        let _ = fs::remove_dir_all(&self.root);
        if !problems.is_empty() && !std::thread::panicking() {
            panic!("layers that must not change did:\n{}", problems.join("\n"));
        }
    }
}
