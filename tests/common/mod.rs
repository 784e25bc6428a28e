//! Fixture library for the real-mount integration tests.
//!
//! Every test is written as *layers spec → steps → expectations*, in the terms of the harness
//! crate (`unionfs-harness`, a dev-dependency): [`Stack`] is the layers spec, plain data built
//! from the harness's entries ([`file`], [`wh`], [`opq`], ... with `.mode()`, `.owner()`, ...),
//! written to disk by the harness's `build_layer`; [`Union`] is a live mount of it with helpers
//! that check both the merged view and the upper directory on disk. Snapshots of trees are the
//! harness's captures ([`snapshot`], [`view_snapshot`], compared by [`diff_snapshots`]).
//!
//! `UNIONFS_TEST_IMPL=kernel` runs the same tests on kernel overlayfs. Layers are written in the
//! format of the implementation under test (OCI `.wh.` files for unionfs, 0/0 char devices and
//! `trusted.overlay.opaque` for the kernel), so each test can be validated on the reference first.
//!
//! Every [`Union`] snapshots its lower layers before mounting and, when dropped, checks that they
//! are unchanged (after unmounting), then removes its temp dir, even when the test panicked.
//!
//! Environment:
//! - `UNIONFS_TEST_IMPL=kernel` — run on kernel overlayfs (the reference); unset = unionfs.
//! - `UNIONFS_TEST_FORM=o` — mount unionfs with `-o lowerdir=,upperdir=,workdir=`.
//! - `UNIONFS_REQUIRE_FUSE=1` — a machine that cannot mount (not root, no `/dev/fuse`) fails the
//!   tests instead of skipping them (CI sets it).
//!
//! Tools the tests run: `sed`, `rm`, `cp`, `stat` (coreutils), `setpriv`
//! (util-linux), `setfacl`/`getfacl` (Debian package `acl`).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fmt::Debug;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::mount::{umount2, MntFlags};
use nix::sys::stat::Mode;
use unionfs_harness::build::Format;
use unionfs_harness::impls::wait_gone;
use unionfs_harness::scenario::Layer;
use unionfs_harness::view::{self, capture, ReadAs};

// What the tests use directly; each test binary uses some of it.
#[allow(unused_imports)]
pub use unionfs_harness::{
    entries::*,
    impls::is_mounted as is_mountpoint,
    ops::{lgetxattr, llistxattr, lremovexattr, lsetxattr, rename2},
    scenario::{Entry as E, Kind},
    view::Tree as Snapshot,
};

// ---------------------------------------------------------------------------------------------
// Implementation switch and prerequisites
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    Unionfs,
    Kernel,
}

pub fn imp() -> Impl {
    match std::env::var("UNIONFS_TEST_IMPL").as_deref() {
        Ok("kernel") => Impl::Kernel,
        Ok("") | Ok("unionfs") | Err(_) => Impl::Unionfs,
        Ok(other) => panic!("UNIONFS_TEST_IMPL={other}: expected `kernel` or `unionfs`"),
    }
}

pub fn is_kernel() -> bool {
    imp() == Impl::Kernel
}

fn require_fuse() -> bool {
    std::env::var("UNIONFS_REQUIRE_FUSE").as_deref() == Ok("1")
}

/// Whether this machine can run real mounts. With `UNIONFS_REQUIRE_FUSE=1` a missing
/// prerequisite is a failure, so CI cannot silently pass by skipping everything.
pub fn can_mount() -> bool {
    let reason = if !nix::unistd::geteuid().is_root() {
        Some("not root".to_string())
    } else if imp() == Impl::Unionfs && !Path::new("/dev/fuse").exists() {
        Some("/dev/fuse missing".to_string())
    } else if imp() == Impl::Kernel
        && !fs::read_to_string("/proc/filesystems")
            .unwrap_or_default()
            .contains("overlay")
        && !Command::new("modprobe")
            .arg("overlay")
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    {
        Some("kernel overlayfs unavailable".to_string())
    } else {
        None
    };
    match reason {
        None => true,
        Some(r) if require_fuse() => panic!("cannot mount ({r}) and UNIONFS_REQUIRE_FUSE=1"),
        Some(r) => {
            eprintln!("SKIP: cannot mount: {r} (set UNIONFS_REQUIRE_FUSE=1 to fail instead)");
            false
        }
    }
}

/// `sh -c SCRIPT` as user `uid` and group `gid`, without supplementary groups (`setpriv`).
pub fn as_user(uid: u32, gid: u32, script: &str) -> std::process::Output {
    Command::new("setpriv")
        .args([
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--clear-groups".to_string(),
            "sh".to_string(),
            "-c".to_string(),
            script.to_string(),
        ])
        .output()
        .expect("setpriv (util-linux) is needed")
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_unionfs-mount")
}

// ---------------------------------------------------------------------------------------------
// Layers spec
// ---------------------------------------------------------------------------------------------

/// The filesystem of [`Stack::upper_fs`].
#[derive(Debug, Clone)]
pub enum UpperFs {
    /// A tmpfs with these mount options (`size=`, `nr_inodes=`).
    Tmpfs(String),
    /// A subvolume of a 128 MiB loop-mounted btrfs (`mkfs.btrfs`, Debian `btrfs-progs`), its
    /// quota group limited to this size.
    BtrfsQuota(String),
}

/// One layer directory: its entries and an optional directory name (for paths with `:`).
#[derive(Debug, Clone, Default)]
pub struct LayerSpec {
    pub name: Option<String>,
    pub entries: Vec<E>,
}

/// A layer stack: lowers topmost first, like `lowerdir=`, and an optional upper.
#[derive(Debug, Clone)]
pub struct Stack {
    pub lowers: Vec<LayerSpec>,
    pub upper: Option<LayerSpec>,
    /// Extra options for kernel overlayfs only (e.g. `userxattr`, `redirect_dir=on`).
    pub kernel_opts: Vec<String>,
    /// Put all layers on a private tmpfs (for xattr values larger than ext4 allows here).
    pub tmpfs: bool,
    /// Mount with the `-o lowerdir=,upperdir=,workdir=` form (workdir outside the upper).
    pub o_form: bool,
    /// Extra `-o` options for unionfs only (e.g. `metacopy=on`).
    pub unionfs_opts: Vec<String>,
    /// Put the upper and the work dir on a small filesystem of their own, so a test can fill
    /// it; the lowers stay where they are.
    pub upper_fs: Option<UpperFs>,
    /// Command words put before `unionfs-mount` (e.g. `prlimit --nofile=64 --`), to start the
    /// daemon with other limits or capabilities.
    pub daemon_prefix: Vec<String>,
    /// Extra flags for `unionfs-mount` (e.g. `--no-watchdog`).
    pub daemon_flags: Vec<String>,
}

impl Default for Stack {
    fn default() -> Self {
        Self::new()
    }
}

impl Stack {
    /// An empty stack with an (empty) upper.
    pub fn new() -> Self {
        Stack {
            lowers: vec![],
            upper: Some(LayerSpec::default()),
            kernel_opts: vec![],
            tmpfs: false,
            // UNIONFS_TEST_FORM=o runs every test through the `-o lowerdir=,upperdir=,workdir=`
            // form (state in a separate work dir) instead of the positional one.
            o_form: std::env::var("UNIONFS_TEST_FORM").as_deref() == Ok("o"),
            unionfs_opts: vec![],
            upper_fs: None,
            daemon_prefix: vec![],
            daemon_flags: vec![],
        }
    }
    pub fn lower(mut self, entries: impl IntoIterator<Item = E>) -> Self {
        self.lowers.push(LayerSpec {
            name: None,
            entries: entries.into_iter().collect(),
        });
        self
    }
    pub fn lower_named(mut self, name: &str, entries: impl IntoIterator<Item = E>) -> Self {
        self.lowers.push(LayerSpec {
            name: Some(name.to_string()),
            entries: entries.into_iter().collect(),
        });
        self
    }
    pub fn upper(mut self, entries: impl IntoIterator<Item = E>) -> Self {
        self.upper = Some(LayerSpec {
            name: None,
            entries: entries.into_iter().collect(),
        });
        self
    }
    pub fn no_upper(mut self) -> Self {
        self.upper = None;
        self
    }
    pub fn o_form(mut self) -> Self {
        self.o_form = true;
        self
    }
    pub fn on_tmpfs(mut self) -> Self {
        self.tmpfs = true;
        self
    }
    pub fn unionfs_opt(mut self, opt: &str) -> Self {
        self.unionfs_opts.push(opt.to_string());
        self
    }
    pub fn kernel_opt(mut self, opt: &str) -> Self {
        self.kernel_opts.push(opt.to_string());
        self
    }
    /// Upper and work dir on a private tmpfs mounted with `opts` (see [`Union::upper_fs`]).
    pub fn upper_tmpfs(mut self, opts: &str) -> Self {
        self.upper_fs = Some(UpperFs::Tmpfs(opts.to_string()));
        self
    }
    /// Upper and work dir in a btrfs subvolume whose quota group is limited to `limit` (e.g.
    /// `1M`): writes past it fail with EDQUOT, for root too.
    pub fn upper_btrfs_quota(mut self, limit: &str) -> Self {
        self.upper_fs = Some(UpperFs::BtrfsQuota(limit.to_string()));
        self
    }
    /// Passes `flag` to `unionfs-mount` (unionfs only).
    pub fn daemon_flag(mut self, flag: &str) -> Self {
        self.daemon_flags.push(flag.to_string());
        self
    }
    /// Starts the daemon as `PREFIX... unionfs-mount ...`.
    pub fn daemon_prefix(mut self, words: &[&str]) -> Self {
        self.daemon_prefix = words.iter().map(|w| w.to_string()).collect();
        self
    }
}

/// Writes `spec` into the directory `root` (created if missing) in the format of `imp`.
pub fn build_layer(root: &Path, spec: &LayerSpec, imp: Impl) {
    fs::create_dir_all(root).unwrap_or_else(|e| panic!("mkdir {root:?}: {e}"));
    let format = match imp {
        Impl::Unionfs => Format::Oci,
        Impl::Kernel => Format::Kernel,
    };
    let layer = Layer {
        from: None,
        entries: spec.entries.clone(),
    };
    unionfs_harness::build::build_layer(root, &layer, format).unwrap_or_else(|e| panic!("{e}"));
}

// ---------------------------------------------------------------------------------------------
// Snapshots of a directory tree (to prove lower layers are never modified)
// ---------------------------------------------------------------------------------------------

/// Everything about a tree except atimes (reads legitimately change those): the harness's raw
/// capture, file data, ctimes and inode numbers included.
#[track_caller]
pub fn snapshot(root: &Path) -> Snapshot {
    raw(root).unwrap_or_else(|e| panic!("{e}"))
}

/// [`snapshot`], as a result.
pub(crate) fn raw(root: &Path) -> unionfs_harness::Result<Snapshot> {
    let mut t = capture(root, ReadAs::Raw)?;
    if !t.ghosts.is_empty() {
        return Err(unionfs_harness::Error::msg(format!(
            "{root:?} lists {:?}, but lstat fails",
            t.ghosts
        )));
    }
    // st_blocks of a file written just before may still change while the filesystem
    // allocates it (ext4's delayed allocation), with nothing modified.
    for n in t.nodes.values_mut() {
        n.alloc = 0;
    }
    Ok(t)
}

/// What a user sees of a tree: [`snapshot`] without ctimes and inode-dependent fields (inode
/// numbers, allocated blocks), and without the root's own times (the root of a union is its
/// upper's root). Every listed name must be found by lookup.
#[track_caller]
pub fn view_snapshot(root: &Path) -> Snapshot {
    let mut s = capture(root, ReadAs::View).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        s.ghosts.is_empty(),
        "{root:?} lists {:?}, but lstat fails",
        s.ghosts
    );
    for n in s.nodes.values_mut() {
        (n.ctime, n.ctime_nsec, n.ino, n.alloc) = (0, 0, 0, 0);
    }
    if let Some(r) = s.nodes.get_mut(".") {
        (r.mtime, r.mtime_nsec) = (0, 0);
        // A directory's st_size is the filesystem's business (tmpfs counts entries, hidden
        // internal ones included).
        r.size = 0;
    }
    s
}

pub(crate) fn is_internal_path(p: &str) -> bool {
    p.split('/')
        .any(|c| c.starts_with(".wh..wh.") && c != ".wh..wh..opq")
}

/// An upper snapshot without internal `.wh..wh.*` state (`.wh..wh..opq` kept) and without the
/// root's own times, which creating the internal state at mount legitimately changes.
pub(crate) fn visible_upper(mut s: Snapshot) -> Snapshot {
    s.nodes.retain(|p, _| !is_internal_path(p));
    let kernel_user = is_kernel();
    for n in s.nodes.values_mut() {
        // Implementations may tag upper dirs with internal xattrs while reading them (the kernel's
        // "impure" marker on readdir); that moves only the directory's ctime.
        if n.kind == Kind::Dir {
            (n.ctime, n.ctime_nsec) = (0, 0);
        }
        // The kernel in `userxattr` mode keeps its state (e.g. a uuid) in user.overlay.*.
        n.xattrs.retain(|k, _| {
            let internal = ["trusted.overlay.", "trusted.unionfs.", "user.unionfs."]
                .iter()
                .any(|p| k.starts_with(p));
            let kernel_state = kernel_user && k.starts_with("user.overlay.");
            !(internal || kernel_state)
        });
    }
    if let Some(r) = s.nodes.get_mut(".") {
        (r.mtime, r.mtime_nsec, r.ctime, r.ctime_nsec, r.nlink) = (0, 0, 0, 0, 0);
    }
    s
}

/// Human-readable differences between two snapshots (empty when equal).
pub fn diff_snapshots(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    view::changes("", before, after)
        .into_iter()
        .map(|m| m.trim_start().to_string())
        .collect()
}

mod union;
mod upper;

pub use union::Union;

/// Waits until process `pid` has exited (a zombie counts as gone); false on timeout.
pub fn wait_pid_gone(pid: i32, timeout: Duration) -> bool {
    wait_gone(pid, timeout)
}

/// The processes with an fd or working directory below `mnt`, as `pid comm -> path`: who
/// keeps a mount busy.
pub fn holders(mnt: &Path) -> Vec<String> {
    let mut out = vec![];
    for p in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let comm = fs::read_to_string(p.path().join("comm")).unwrap_or_default();
        let mut links: Vec<PathBuf> = fs::read_dir(p.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|fd| fs::read_link(fd.path()).ok())
            .collect();
        links.extend(fs::read_link(p.path().join("cwd")));
        for l in links.into_iter().filter(|l| l.starts_with(mnt)) {
            out.push(format!("{pid} {} -> {}", comm.trim(), l.display()));
        }
    }
    out
}

/// Removes our internal `.wh..wh.*` entries (the work dir; `.wh..wh..opq` stays) from the top
/// of an upper made into a layer.
#[track_caller]
pub fn drop_internal_entries(layer: &Path) {
    unionfs_harness::impls::drop_internal_entries(layer).unwrap_or_else(|e| panic!("{e}"));
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/// Lazily unmounts the path it holds when dropped.
struct MountGuard(Option<PathBuf>);

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = umount2(&p, MntFlags::MNT_DETACH);
        }
    }
}

/// What [`Union::fill_upper_fs`] uses up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Inodes (tmpfs `nr_inodes=`): creates, mkdir, whiteouts, links and xattrs fail.
    Inodes,
    /// Data pages (tmpfs `size=`): writes and copy-ups of file data fail.
    Blocks,
}

/// Runs `f` on its own thread and fails the test if it has not returned after `limit`: a request
/// the daemon never answers must show up as a failure, not as a stuck test. (The stuck thread is
/// released when the test's union is torn down.)
#[track_caller]
pub fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {limit:?} (a hung request)"),
    }
}

/// A set of names, for comparing directory listings.
pub fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

pub fn list(p: &Path) -> BTreeSet<String> {
    fs::read_dir(p)
        .unwrap_or_else(|e| panic!("readdir {p:?}: {e}"))
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

pub fn is_char_whiteout(p: &Path) -> bool {
    fs::symlink_metadata(p)
        .map(|m| m.file_type().is_char_device() && m.rdev() == 0)
        .unwrap_or(false)
}

/// Asserts `r` failed with `errno`.
#[track_caller]
pub fn assert_errno<T: Debug>(r: io::Result<T>, errno: i32, what: &str) {
    match r {
        Ok(v) => panic!(
            "{what}: expected {} but succeeded ({v:?})",
            io::Error::from_raw_os_error(errno)
        ),
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(errno),
            "{what}: expected {}, got {e}",
            io::Error::from_raw_os_error(errno)
        ),
    }
}

/// Runs a command, panicking with its output if it fails.
pub fn run(cmd: &str, args: &[&OsStr]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (is it installed?)"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Names in a directory read with libc's readdir, with their `d_ino`.
pub fn readdir_inos(p: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let d = nix::dir::Dir::open(
        p,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
        Mode::empty(),
    )
    .unwrap();
    for ent in d.into_iter() {
        let ent = ent.unwrap();
        let name = ent.file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            out.insert(name, ent.ino());
        }
    }
    out
}
