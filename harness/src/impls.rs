//! The union implementations under test behind one trait, and the temp workspace they mount.
//!
//! unionfs is mounted in-process through the library (fast: no daemon start), kernel overlayfs
//! with mount(2), and fuse-overlayfs as a foreground child process that we stop ourselves.

use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::build::Format;
use crate::{Error, Result};
use unionfs::sys;

/// The implementations the harness knows.
pub const IMPLS: &[&str] = &[
    "unionfs",
    "unionfs-metacopy",
    "unionfs-behind",
    "unionfs-cli",
    "kernel",
    "fuse-overlayfs",
];

/// A union implementation that can mount a workspace.
pub trait Union {
    /// Its name as used on the command line and in `only`/`expect_on`.
    fn name(&self) -> &'static str;
    /// The on-disk format of whiteouts and opaque markers it reads and writes.
    fn format(&self) -> Format;
    /// Mounts `ws` on `ws.mnt`.
    fn mount(&mut self, ws: &Workspace) -> Result<()>;
    /// Unmounts; a no-op when not mounted.
    fn unmount(&mut self, ws: &Workspace) -> Result<()>;
    /// The pid of a daemon serving the mount, for the lifecycle steps (signals, crashes).
    fn daemon(&self) -> Option<i32> {
        None
    }
    /// Makes the unmounted upper the plain layer diff it stands for (a no-op for unions whose
    /// upper directory already is one).
    fn settle(&mut self, _ws: &Workspace) -> Result<()> {
        Ok(())
    }
}

/// Creates the implementation called `name`, or says which names exist.
pub fn by_name(name: &str) -> Result<Box<dyn Union>> {
    match name {
        "unionfs" => Ok(Box::new(UnionFs {
            guard: None,
            metacopy: false,
            behind: false,
        })),
        "unionfs-metacopy" => Ok(Box::new(UnionFs {
            guard: None,
            metacopy: true,
            behind: false,
        })),
        "unionfs-behind" => Ok(Box::new(UnionFs {
            guard: None,
            metacopy: false,
            behind: true,
        })),
        "unionfs-cli" => Ok(Box::new(UnionFsCli {
            pid: None,
            mnt: PathBuf::new(),
        })),
        "kernel" => Ok(Box::new(Kernel { mounted: false })),
        "fuse-overlayfs" => Ok(Box::new(FuseOverlayfs {
            child: None,
            mnt: PathBuf::new(),
        })),
        _ => Err(Error::msg(format!(
            "unknown implementation {name:?}; choose one of: {}",
            IMPLS.join(", ")
        ))),
    }
}

/// Why this machine cannot run `name` (None: it can).
pub fn unavailable(name: &str) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("mounting needs root".into());
    }
    match name {
        "unionfs" | "unionfs-metacopy" | "unionfs-behind" | "unionfs-cli" | "fuse-overlayfs"
            if !Path::new("/dev/fuse").exists() =>
        {
            Some("/dev/fuse is missing (modprobe fuse)".into())
        }
        "unionfs-cli" if mount_binary().is_none() => Some(
            "the unionfs-mount binary was not found: build it (cargo build --bins) or set \
             UNIONFS_MOUNT_BIN"
                .into(),
        ),
        "fuse-overlayfs" if which("fuse-overlayfs").is_none() => {
            Some("fuse-overlayfs is not installed (apt-get install fuse-overlayfs)".into())
        }
        "kernel" => {
            let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
            if fs.lines().any(|l| l.trim_end().ends_with("overlay")) {
                None
            } else {
                Some("kernel overlayfs is not available (modprobe overlay)".into())
            }
        }
        _ => None,
    }
}

/// Where the `unionfs-mount` binary is: $UNIONFS_MOUNT_BIN, next to this program (or one
/// level up, for test binaries in target/*/deps), or on PATH.
pub fn mount_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("UNIONFS_MOUNT_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join("unionfs-mount"), dir.join("../unionfs-mount")]
        .into_iter()
        .find(|p| p.is_file())
        .or_else(|| which("unionfs-mount"))
}

fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// A temp directory with the layer dirs, a work dir and a mount point; removed on drop.
#[derive(Debug)]
pub struct Workspace {
    /// The temp directory.
    pub root: PathBuf,
    /// Lower layer dirs, topmost first.
    pub lowers: Vec<PathBuf>,
    /// The upper dir (None: read-only union).
    pub upper: Option<PathBuf>,
    /// The kernel's and fuse-overlayfs' work dir (same filesystem as the upper).
    pub work: PathBuf,
    /// The mount point.
    pub mnt: PathBuf,
    rotations: usize,
    tmpfs: bool,
}

static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Workspace {
    /// Creates the directories for `nlowers` lowers (and an upper unless `no_upper`), on a
    /// fresh tmpfs if asked, with a colon in the lower dir names if asked.
    pub fn new(
        tag: &str,
        nlowers: usize,
        no_upper: bool,
        tmpfs: bool,
        colon: bool,
    ) -> Result<Workspace> {
        let base = std::env::var_os("UNIONFS_HARNESS_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let root = base.join(format!("unionfs-harness-{}-{n}-{tag}", std::process::id()));
        let mk = |p: &Path| {
            std::fs::create_dir_all(p).map_err(|e| {
                Error::msg(format!(
                    "cannot create {}: {e} (set UNIONFS_HARNESS_TMP to a writable dir)",
                    p.display()
                ))
            })
        };
        if root.exists() {
            remove_tree(&root)?;
        }
        mk(&root)?;
        if tmpfs {
            sys::mount(c"harness", &root, c"tmpfs", 0, c"mode=0755")
                .map_err(|e| Error::at("mounting a tmpfs on", &root, e.desc()))?;
        }
        let mut lowers = Vec::new();
        for i in 0..nlowers.max(1) {
            // A colon in a layer path must survive the `L1:L2` syntax (`\:`).
            let l = root.join(if colon {
                format!("low:er{i}")
            } else {
                format!("lower{i}")
            });
            mk(&l)?;
            lowers.push(l);
        }
        let upper = if no_upper {
            None
        } else {
            let u = root.join("upper");
            mk(&u)?;
            Some(u)
        };
        let work = root.join("work");
        let mnt = root.join("mnt");
        mk(&work)?;
        mk(&mnt)?;
        Ok(Workspace {
            root,
            lowers,
            upper,
            work,
            mnt,
            rotations: 0,
            tmpfs,
        })
    }

    /// Layer rotation: the upper becomes the new top lower and a fresh empty upper replaces it.
    /// Call only while unmounted.
    pub fn rotate(&mut self) -> Result<()> {
        let Some(u) = self.upper.clone() else {
            return Err(Error::msg(
                "rotate needs an upper layer (remove no_upper from the scenario)",
            ));
        };
        self.rotations += 1;
        let newl = self.root.join(format!("rotated{}", self.rotations));
        std::fs::rename(&u, &newl).map_err(|e| Error::at("rename", &u, e).context("rotate"))?;
        drop_internal_entries(&newl)?;
        std::fs::create_dir(&u).map_err(|e| Error::at("mkdir", &u, e).context("rotate"))?;
        remove_tree(&self.work)?;
        std::fs::create_dir(&self.work)
            .map_err(|e| Error::at("mkdir", &self.work, e).context("rotate"))?;
        self.lowers.insert(0, newl);
        Ok(())
    }
}

/// Removes our internal `.wh..wh.*` entries (the default work dir and any other state; the
/// opaque marker `.wh..wh..opq` stays) from the top of an upper that becomes a layer.
pub fn drop_internal_entries(layer: &Path) -> Result<()> {
    let rd = std::fs::read_dir(layer).map_err(|e| Error::at("readdir", layer, e))?;
    for e in rd {
        let e = e.map_err(|e| Error::at("readdir", layer, e))?;
        let name = e.file_name();
        let b = name.as_encoded_bytes();
        if b.starts_with(b".wh..wh.") && b != b".wh..wh..opq" {
            let p = e.path();
            if p.is_dir() {
                remove_tree(&p)?;
            } else {
                std::fs::remove_file(&p).map_err(|e| Error::at("rm", &p, e))?;
            }
        }
    }
    Ok(())
}

/// Removes a tree, refusing to descend into anything still mounted.
fn remove_tree(p: &Path) -> Result<()> {
    if mounted_under(p) {
        return Err(Error::msg(format!(
            "{} still has a mount below it; not removing it (umount it first)",
            p.display()
        )));
    }
    std::fs::remove_dir_all(p).map_err(|e| Error::at("cannot remove", p, e))
}

/// The mount points of this process's mount namespace, as paths.
fn mount_points() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(std::ffi::OsString::from_vec(unescape_mountinfo(m))))
        .collect()
}

/// A mountinfo field with its octal escapes (`\040` for a space, ...) undone.
fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// `p` without symlinks, or as given when it cannot be resolved (a dead FUSE mount).
fn resolved(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn mounted_under(p: &Path) -> bool {
    let p = resolved(p);
    mount_points().iter().any(|m| m.starts_with(&p))
}

/// True when `p` is a mount point right now.
pub fn is_mounted(p: &Path) -> bool {
    let p = resolved(p);
    mount_points().contains(&p)
}

/// Waits until process `pid` has exited (a zombie counts: only its parent, maybe init, still
/// has to reap it); false when it still runs after `timeout`.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if std::env::var_os("UNIONFS_HARNESS_KEEP").is_some() {
            eprintln!("keeping {}", self.root.display());
            return;
        }
        // A mount left by a failed run is detached first so nothing is deleted through it.
        while is_mounted(&self.mnt) {
            if sys::umount_lazy(&self.mnt).is_err() {
                break;
            }
        }
        if self.tmpfs {
            let _ = sys::umount_lazy(&self.root);
        }
        let _ = remove_tree(&self.root);
    }
}

/// unionfs through the library, served by threads of this process; `unionfs-metacopy` with
/// `-o metacopy=on`, whose upper becomes a plain diff once `fill_stubs` has run;
/// `unionfs-behind` with every copy-up flushed behind (`-o flush_behind=0`), so that small
/// files take that path too.
struct UnionFs {
    guard: Option<unionfs::mount::MountGuard>,
    metacopy: bool,
    behind: bool,
}

impl Union for UnionFs {
    fn name(&self) -> &'static str {
        if self.metacopy {
            "unionfs-metacopy"
        } else if self.behind {
            "unionfs-behind"
        } else {
            "unionfs"
        }
    }
    fn settle(&mut self, ws: &Workspace) -> Result<()> {
        if !self.metacopy {
            return Ok(());
        }
        // The upper, and earlier uppers rotated into the lowers, each over the layers below.
        let layers: Vec<PathBuf> = ws.upper.iter().chain(&ws.lowers).cloned().collect();
        for (i, l) in layers.iter().enumerate() {
            unionfs::oci::fill_stubs(l, &layers[i + 1..])
                .map_err(|e| Error::at("filling metadata-only copies in", l, e))?;
        }
        Ok(())
    }
    fn format(&self) -> Format {
        Format::Oci
    }
    fn mount(&mut self, ws: &Workspace) -> Result<()> {
        let mut cfg = unionfs::mount::MountConfig::new(ws.lowers.clone(), ws.upper.clone());
        cfg.metacopy = self.metacopy;
        if self.behind {
            cfg.flush_behind = Some(0);
        }
        let g = cfg
            .mount(&ws.mnt)
            .map_err(|e| Error::msg(format!("mounting unionfs: {e}")))?;
        self.guard = Some(g);
        Ok(())
    }
    fn unmount(&mut self, _ws: &Workspace) -> Result<()> {
        match self.guard.take() {
            Some(g) => g
                .unmount()
                .map_err(|e| Error::msg(format!("unmounting unionfs: {e}"))),
            None => Ok(()),
        }
    }
}

/// True while `pid` runs (a zombie has exited: only its parent, maybe init, still has to
/// reap it).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')),
        Err(_) => false,
    }
}

/// unionfs through its command line: the daemon, the `L1:L2 UPPER MNT` form and `\:` escapes.
struct UnionFsCli {
    pid: Option<i32>,
    mnt: PathBuf,
}

impl Union for UnionFsCli {
    fn name(&self) -> &'static str {
        "unionfs-cli"
    }
    fn format(&self) -> Format {
        Format::Oci
    }
    fn mount(&mut self, ws: &Workspace) -> Result<()> {
        let bin = mount_binary().ok_or_else(|| {
            Error::msg(
                "the unionfs-mount binary was not found: build it (cargo build --bins) or set \
                 UNIONFS_MOUNT_BIN",
            )
        })?;
        let pidfile = ws.root.join("daemon.pid");
        let mut cmd = Command::new(&bin);
        cmd.arg(lower_list(&ws.lowers));
        if let Some(u) = &ws.upper {
            cmd.arg(u);
        }
        cmd.arg(&ws.mnt).arg("--pid-file").arg(&pidfile);
        self.pid = Some(start_daemon(&mut cmd, &pidfile)?);
        self.mnt = ws.mnt.clone();
        Ok(())
    }
    fn daemon(&self) -> Option<i32> {
        self.pid
    }
    fn unmount(&mut self, ws: &Workspace) -> Result<()> {
        if self.mnt.as_os_str().is_empty() {
            return Ok(());
        }
        self.mnt = PathBuf::new();
        // What a user does: umount MNT; the daemon then exits by itself. EINVAL: a signal or
        // the watchdog already unmounted it.
        if nix::mount::umount(&ws.mnt).is_err() {
            match sys::umount_lazy(&ws.mnt) {
                Ok(()) | Err(sys::Errno::EINVAL) => {}
                Err(e) => return Err(Error::at("umount", &ws.mnt, e.desc())),
            }
        }
        if let Some(pid) = self.pid.take() {
            if !wait_gone(pid, Duration::from_secs(10)) {
                return Err(Error::msg(format!(
                    "the unionfs daemon (pid {pid}) did not exit after umount"
                )));
            }
        }
        Ok(())
    }
}

impl Drop for UnionFsCli {
    fn drop(&mut self) {
        if !self.mnt.as_os_str().is_empty() {
            let _ = sys::umount_lazy(&self.mnt);
        }
    }
}

/// How long a kernel overlayfs mount waits for the upper and work dirs of its previous mount
/// to be released (see [`Kernel`]'s mount): a container launched beside the harness holds
/// them as long as it runs, for seconds.
pub const KERNEL_BUSY_WAIT: Duration = Duration::from_secs(30);

/// Kernel overlayfs, mounted with mount(2).
struct Kernel {
    mounted: bool,
}

/// A layer path as an item of an `L1:L2` list (unionfs-mount's and the kernel's
/// `lowerdir=`): a backslash or colon that is part of the path is escaped with a backslash.
pub fn escape_layer_path(p: &Path) -> String {
    p.to_string_lossy()
        .replace('\\', "\\\\")
        .replace(':', "\\:")
}

/// The lower layers, topmost first, as one `L1:L2` list (unionfs-mount's first argument, the
/// value of `lowerdir=`).
pub fn lower_list(lowers: &[PathBuf]) -> String {
    let items: Vec<String> = lowers.iter().map(|p| escape_layer_path(p)).collect();
    items.join(":")
}

/// The mount options that name the layers: `lowerdir=L1:L2` and, with an upper,
/// `,upperdir=U,workdir=W` (kernel overlayfs, fuse-overlayfs and unionfs-mount's `-o` form).
pub fn layer_options(lowers: &[PathBuf], upper: Option<&Path>, work: &Path) -> String {
    let mut o = format!("lowerdir={}", lower_list(lowers));
    if let Some(u) = upper {
        o.push_str(&format!(
            ",upperdir={},workdir={}",
            escape_layer_path(u),
            escape_layer_path(work)
        ));
    }
    o
}

/// Runs `cmd`, a `unionfs-mount ... --pid-file PIDFILE` command line, which returns once the
/// mount is live and leaves the daemon serving it; returns the daemon's pid. The caller may
/// send stdout and stderr elsewhere; what is left piped goes into the error.
pub fn start_daemon(cmd: &mut Command, pidfile: &Path) -> Result<i32> {
    let _ = std::fs::remove_file(pidfile);
    let prog = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::msg(format!("running {prog}: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(Error::msg(match err.trim() {
            "" => format!("{prog} failed ({})", out.status),
            e => format!("{prog} failed ({}): {e}", out.status),
        }));
    }
    std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            Error::msg(format!(
                "{prog} exited 0 but wrote no pid to {}",
                pidfile.display()
            ))
        })
}

impl Union for Kernel {
    fn name(&self) -> &'static str {
        "kernel"
    }
    fn format(&self) -> Format {
        Format::Kernel
    }
    fn mount(&mut self, ws: &Workspace) -> Result<()> {
        let mut lowers = ws.lowers.clone();
        // The kernel wants two lowers when there is no upper; an empty one changes nothing.
        if ws.upper.is_none() && lowers.len() == 1 {
            let extra = ws.root.join("empty-lower");
            std::fs::create_dir_all(&extra).map_err(|e| Error::at("mkdir", &extra, e))?;
            lowers.push(extra);
        }
        // Fixed feature set: the defaults differ between kernel builds. No redirect_dir, so a
        // lower directory cannot be renamed (EXDEV): the behaviour scenarios document. The
        // index keeps lower hard links linked across copy-up (POSIX, and our contract); it
        // needs an upper.
        let mut data = layer_options(&lowers, ws.upper.as_deref(), &ws.work);
        data.push_str(",redirect_dir=off,metacopy=off,xino=off");
        data.push_str(if ws.upper.is_some() {
            ",index=on"
        } else {
            ",index=off"
        });
        let flags = if ws.upper.is_some() {
            0
        } else {
            libc::MS_RDONLY
        };
        let cdata = std::ffi::CString::new(data.as_str()).map_err(|_| {
            Error::msg(format!(
                "mount options {data:?} hold a NUL byte; use layer paths without one"
            ))
        })?;
        let deadline = Instant::now() + KERNEL_BUSY_WAIT;
        let r = loop {
            match sys::mount(c"overlay", &ws.mnt, c"overlay", flags, &cdata) {
                // With index=on the kernel refuses an upper or work dir that another overlay
                // still uses ("upperdir is in-use" in dmesg). Our previous mount of them lives
                // on after its lazy unmount until its last reference goes: at once, unless a
                // mount namespace created meanwhile (any container started on this machine,
                // e.g. by a test beside us) holds a copy of it until that namespace ends.
                Err(sys::Errno::EBUSY) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                r => break r,
            }
        };
        r.map_err(|e| {
            Error::msg(format!(
                "mounting kernel overlayfs ({data}): {} (dmesg tells why; for \"upperdir is \
                 in-use\": a mount namespace created while the previous mount of this upper \
                 existed still holds it, so let containers started meanwhile end)",
                e.desc()
            ))
        })?;
        self.mounted = true;
        Ok(())
    }
    fn unmount(&mut self, ws: &Workspace) -> Result<()> {
        if self.mounted {
            self.mounted = false;
            sys::umount_lazy(&ws.mnt)
                .map_err(|e| Error::msg(format!("unmounting overlayfs: {}", e.desc())))?;
        }
        Ok(())
    }
}

/// fuse-overlayfs in the foreground as our child.
struct FuseOverlayfs {
    child: Option<Child>,
    mnt: PathBuf,
}

impl Drop for FuseOverlayfs {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = sys::umount_lazy(&self.mnt);
            // Our own child: after the unmount it exits by itself; wait briefly, then make sure.
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Union for FuseOverlayfs {
    fn name(&self) -> &'static str {
        "fuse-overlayfs"
    }
    fn format(&self) -> Format {
        Format::Kernel
    }
    fn mount(&mut self, ws: &Workspace) -> Result<()> {
        let opts = layer_options(&ws.lowers, ws.upper.as_deref(), &ws.work);
        let child = Command::new("fuse-overlayfs")
            .arg("-f")
            .arg("-o")
            .arg(&opts)
            .arg(&ws.mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::msg(format!("starting fuse-overlayfs: {e}")))?;
        self.child = Some(child);
        self.mnt = ws.mnt.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_mounted(&ws.mnt) {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.child = None;
                    return Err(Error::msg(format!(
                        "fuse-overlayfs exited before mounting: {st}"
                    )));
                }
            }
            if Instant::now() > deadline {
                let _ = self.unmount(ws);
                return Err(Error::msg("fuse-overlayfs did not mount within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
    fn unmount(&mut self, ws: &Workspace) -> Result<()> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        let _ = sys::umount_lazy(&ws.mnt);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match c.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => {
                    // Our own child, by pid: it did not stop after the unmount.
                    let _ = c.kill();
                    let _ = c.wait();
                    return Err(Error::msg(
                        "fuse-overlayfs did not exit after unmount; killed it",
                    ));
                }
            }
        }
    }
}
