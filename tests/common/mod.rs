//! Fixture library for the real-mount integration tests.
//!
//! Every test is written as *layers spec → steps → expectations*, so that it can later move to the
//! declarative scenario format of the harness: [`Stack`] is the layers spec (plain data built from
//! [`E`] entries), [`Union`] is a live mount of it with helpers that check both the merged view and
//! the upper directory on disk.
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
//! Tools the tests run: `sed`, `rm`, `cp`, `dd`, `sha1sum`, `stat` (coreutils), `setpriv`
//! (util-linux), `setfacl`/`getfacl` (Debian package `acl`).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CStr, CString, OsStr};
use std::fmt::Debug;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::mount::{umount2, MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};

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

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_unionfs-mount")
}

// ---------------------------------------------------------------------------------------------
// Layers spec
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub enum Kind {
    File(Vec<u8>),
    /// A file of this size made of a hole only (sparse).
    Sparse(u64),
    Dir,
    Symlink(String),
    /// Hard link to another path of the same layer (created in order).
    Hardlink(String),
    Fifo,
    CharDev(u64, u64),
    BlockDev(u64, u64),
    /// A deletion in the format of the implementation under test.
    Whiteout,
    /// Kernel-format whiteout (0/0 char device) whatever the implementation: the contract says
    /// unionfs must read it too.
    CharWhiteout,
    /// Opaque marker in the format of the implementation under test, for directory `path`.
    Opaque,
    /// Opaque via xattr `NAME=y` on the directory `path` (implementation-independent).
    OpaqueXattr(&'static str),
}

/// One entry of a layer, with optional metadata. Metadata is applied after all entries of the
/// layer exist, deepest first, so directory times are not disturbed by creating children.
#[derive(Debug, Clone)]
pub struct E {
    pub path: String,
    pub kind: Kind,
    pub mode: Option<u32>,
    pub owner: Option<(u32, u32)>,
    pub mtime: Option<(i64, i64)>,
    pub atime: Option<(i64, i64)>,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

fn e(path: &str, kind: Kind) -> E {
    E {
        path: path.to_string(),
        kind,
        mode: None,
        owner: None,
        mtime: None,
        atime: None,
        xattrs: vec![],
    }
}

pub fn file(path: &str, content: impl AsRef<[u8]>) -> E {
    e(path, Kind::File(content.as_ref().to_vec()))
}
pub fn sparse(path: &str, size: u64) -> E {
    e(path, Kind::Sparse(size))
}
pub fn dir(path: &str) -> E {
    e(path, Kind::Dir)
}
pub fn symlink(path: &str, target: &str) -> E {
    e(path, Kind::Symlink(target.to_string()))
}
pub fn hardlink(path: &str, target: &str) -> E {
    e(path, Kind::Hardlink(target.to_string()))
}
pub fn fifo(path: &str) -> E {
    e(path, Kind::Fifo)
}
pub fn chardev(path: &str, major: u64, minor: u64) -> E {
    e(path, Kind::CharDev(major, minor))
}
pub fn blockdev(path: &str, major: u64, minor: u64) -> E {
    e(path, Kind::BlockDev(major, minor))
}
/// Deletion of `path` in the native format of the implementation under test.
pub fn wh(path: &str) -> E {
    e(path, Kind::Whiteout)
}
/// Deletion of `path` as a 0/0 character device (kernel format), for every implementation.
pub fn char_wh(path: &str) -> E {
    e(path, Kind::CharWhiteout)
}
/// Directory `path` is opaque, in the native format of the implementation under test.
pub fn opq(path: &str) -> E {
    e(path, Kind::Opaque)
}
pub fn opq_xattr(path: &str, name: &'static str) -> E {
    e(path, Kind::OpaqueXattr(name))
}

impl E {
    pub fn mode(mut self, m: u32) -> Self {
        self.mode = Some(m);
        self
    }
    pub fn owner(mut self, uid: u32, gid: u32) -> Self {
        self.owner = Some((uid, gid));
        self
    }
    pub fn mtime(mut self, sec: i64, nsec: i64) -> Self {
        self.mtime = Some((sec, nsec));
        self
    }
    pub fn atime(mut self, sec: i64, nsec: i64) -> Self {
        self.atime = Some((sec, nsec));
        self
    }
    pub fn xattr(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.xattrs
            .push((name.to_string(), value.as_ref().to_vec()));
        self
    }
}

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

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn set_times(p: &Path, atime: Option<(i64, i64)>, mtime: Option<(i64, i64)>) {
    let ts = |t: Option<(i64, i64)>| match t {
        Some((s, ns)) => libc::timespec {
            tv_sec: s,
            tv_nsec: ns,
        },
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    };
    let times = [ts(atime), ts(mtime)];
    let c = cpath(p);
    // SAFETY: valid C string and a two-element timespec array.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "utimensat {p:?}: {}", io::Error::last_os_error());
}

fn mknod(p: &Path, kind: SFlag, perm: u32, major: u64, minor: u64) {
    nix::sys::stat::mknod(
        p,
        kind,
        Mode::from_bits_truncate(perm),
        nix::sys::stat::makedev(major, minor),
    )
    .unwrap_or_else(|e| panic!("mknod {p:?}: {e}"));
}

/// Writes `spec` into the empty directory `root` in the format of `imp`.
pub fn build_layer(root: &Path, spec: &LayerSpec, imp: Impl) {
    fs::create_dir_all(root).unwrap();
    for ent in &spec.entries {
        let p = root.join(&ent.path);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        match &ent.kind {
            Kind::File(c) => fs::write(&p, c).unwrap(),
            Kind::Sparse(n) => fs::File::create(&p).unwrap().set_len(*n).unwrap(),
            Kind::Dir => fs::create_dir_all(&p).unwrap(),
            Kind::Symlink(t) => std::os::unix::fs::symlink(t, &p).unwrap(),
            Kind::Hardlink(t) => fs::hard_link(root.join(t), &p).unwrap(),
            Kind::Fifo => mknod(&p, SFlag::S_IFIFO, 0o644, 0, 0),
            Kind::CharDev(a, b) => mknod(&p, SFlag::S_IFCHR, 0o644, *a, *b),
            Kind::BlockDev(a, b) => mknod(&p, SFlag::S_IFBLK, 0o644, *a, *b),
            Kind::CharWhiteout => mknod(&p, SFlag::S_IFCHR, 0o000, 0, 0),
            Kind::Whiteout => match imp {
                Impl::Kernel => mknod(&p, SFlag::S_IFCHR, 0o000, 0, 0),
                Impl::Unionfs => {
                    let name = p.file_name().unwrap().to_str().unwrap();
                    fs::write(p.with_file_name(format!(".wh.{name}")), b"").unwrap()
                }
            },
            Kind::Opaque => {
                fs::create_dir_all(&p).unwrap();
                match imp {
                    Impl::Kernel => lsetxattr(&p, "trusted.overlay.opaque", b"y").unwrap(),
                    Impl::Unionfs => fs::write(p.join(".wh..wh..opq"), b"").unwrap(),
                }
            }
            Kind::OpaqueXattr(name) => {
                fs::create_dir_all(&p).unwrap();
                lsetxattr(&p, name, b"y").unwrap();
            }
        }
        if matches!(ent.kind, Kind::Dir) && ent.mode.is_none() {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    for ent in spec.entries.iter().rev() {
        let p = root.join(&ent.path);
        if matches!(ent.kind, Kind::Whiteout) && imp == Impl::Unionfs {
            continue;
        }
        if let Some((u, g)) = ent.owner {
            std::os::unix::fs::lchown(&p, Some(u), Some(g)).unwrap();
        }
        if let Some(m) = ent.mode {
            fs::set_permissions(&p, fs::Permissions::from_mode(m)).unwrap();
        }
        for (n, v) in &ent.xattrs {
            lsetxattr(&p, n, v).unwrap_or_else(|e| panic!("setxattr {n} on {p:?}: {e}"));
        }
        if ent.mtime.is_some() || ent.atime.is_some() {
            set_times(&p, ent.atime, ent.mtime);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshots of a directory tree (to prove lower layers are never modified)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub nlink: u64,
    pub rdev: u64,
    pub content: u64,
    pub target: Option<PathBuf>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

pub type Snapshot = BTreeMap<PathBuf, Node>;

fn hash_file(p: &Path) -> u64 {
    use std::os::fd::AsRawFd;
    // O_NOATIME: tests use the lower's atime to see whether the daemon read its data.
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(p)
        .unwrap_or_else(|e| panic!("open {p:?}: {e}"));
    let md = f.metadata().unwrap();
    let len = md.len() as i64;
    if len > 16 << 20 && md.blocks() * 512 >= md.len() / 2 {
        // Big dense files: coreutils hashes at disk speed, a debug build of ours does not.
        let out = Command::new("sh")
            .arg("-c")
            .arg("dd iflag=noatime bs=1M status=none if=\"$1\" | sha1sum")
            .arg("sh")
            .arg(p)
            .output()
            .unwrap();
        assert!(out.status.success());
        let hex = String::from_utf8_lossy(&out.stdout);
        return u64::from_str_radix(&hex[..16], 16).unwrap();
    }
    let fd = f.as_raw_fd();
    // Word-wise mixing instead of SipHash keeps debug builds fast on the 512 MiB files, and
    // holes are skipped (their extent map is hashed instead) so 1 GiB sparse files cost nothing.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ len as u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos: i64 = 0;
    while pos < len {
        // SAFETY: plain lseek on an fd we own.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        h = (h ^ data as u64).wrapping_mul(0x100_0000_01b3);
        let mut off = data;
        while off < hole {
            let want = ((hole - off) as usize).min(buf.len());
            let n = f.read_at(&mut buf[..want], off as u64).unwrap();
            if n == 0 {
                break;
            }
            let mut words = buf[..n].chunks_exact(8);
            for w in &mut words {
                h = (h ^ u64::from_le_bytes(w.try_into().unwrap()))
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .rotate_left(29);
            }
            for b in words.remainder() {
                h = (h ^ *b as u64).wrapping_mul(0x100_0000_01b3);
            }
            off += n as i64;
        }
        pos = hole;
    }
    h
}

/// A path to `root/rel` that system calls take: itself, or for paths near or beyond PATH_MAX
/// the entry's name under its parent directory opened one component at a time (through
/// `/proc/self/fd`; the returned file keeps that directory open while the path is used).
pub fn reachable(root: &Path, rel: &Path) -> (Option<fs::File>, PathBuf) {
    let full = root.join(rel);
    if full.as_os_str().len() < 3800 {
        return (None, full);
    }
    let mut dir = fs::File::open(root).unwrap();
    let comps: Vec<_> = rel.components().collect();
    let (last, parents) = comps.split_last().unwrap();
    for c in parents {
        let fd = nix::fcntl::openat(
            std::os::fd::AsFd::as_fd(&dir),
            c.as_os_str(),
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .unwrap_or_else(|e| panic!("opening {c:?} below {root:?}: {e}"));
        dir = fs::File::from(fd);
    }
    let p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(last.as_os_str());
    (Some(dir), p)
}

/// Everything about a tree except atimes (reads legitimately change those).
pub fn snapshot(root: &Path) -> Snapshot {
    // Layer paths may be symlinks to the real directory, as podman passes them.
    let root = &fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let (_held, p) = reachable(root, &rel);
        let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {p:?}: {e}"));
        let ft = md.file_type();
        let mut xattrs = BTreeMap::new();
        for n in llistxattr(&p).unwrap() {
            xattrs.insert(n.clone(), lgetxattr(&p, &n).unwrap());
        }
        out.insert(
            rel.clone(),
            Node {
                kind: md.mode() & libc::S_IFMT,
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                size: md.size(),
                mtime: (md.mtime(), md.mtime_nsec()),
                ctime: (md.ctime(), md.ctime_nsec()),
                nlink: md.nlink(),
                rdev: md.rdev(),
                content: if ft.is_file() { hash_file(&p) } else { 0 },
                target: ft.is_symlink().then(|| fs::read_link(&p).unwrap()),
                xattrs,
            },
        );
        if ft.is_dir() {
            for d in fs::read_dir(&p).unwrap() {
                stack.push(rel.join(d.unwrap().file_name()));
            }
        }
    }
    out
}

/// What a user sees of a tree: [`snapshot`] without ctimes and inode-dependent fields, and
/// without the root's own times (the root of a union is its upper's root).
pub fn view_snapshot(root: &Path) -> Snapshot {
    let mut s = snapshot(root);
    for n in s.values_mut() {
        n.ctime = (0, 0);
    }
    if let Some(r) = s.get_mut(Path::new("")) {
        r.mtime = (0, 0);
        // A directory's st_size is the filesystem's business (tmpfs counts entries, hidden
        // internal ones included).
        r.size = 0;
    }
    s
}

/// An upper snapshot without internal `.wh..wh.*` state (`.wh..wh..opq` kept) and without the
/// root's own times, which creating the internal state at mount legitimately changes.
fn visible_upper(mut s: Snapshot) -> Snapshot {
    s.retain(|p, _| {
        !p.components().any(|c| {
            let n = c.as_os_str().to_string_lossy();
            n.starts_with(".wh..wh.") && n != ".wh..wh..opq"
        })
    });
    for n in s.values_mut() {
        // Implementations may tag upper dirs with internal xattrs while reading them (the kernel's
        // "impure" marker on readdir); that moves only the directory's ctime.
        if n.kind == libc::S_IFDIR {
            n.ctime = (0, 0);
        }
        // The kernel in `userxattr` mode keeps its state (e.g. a uuid) in user.overlay.*.
        let kernel_user = is_kernel();
        n.xattrs.retain(|k, _| {
            let internal = ["trusted.overlay.", "trusted.unionfs.", "user.unionfs."]
                .iter()
                .any(|p| k.starts_with(p));
            let kernel_state = kernel_user && k.starts_with("user.overlay.");
            !(internal || kernel_state)
        });
    }
    if let Some(r) = s.get_mut(Path::new("")) {
        r.mtime = (0, 0);
        r.ctime = (0, 0);
        r.nlink = 0;
    }
    s
}

fn files_under(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = vec![];
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(rd) = fs::read_dir(root.join(&rel)) else {
            continue;
        };
        for d in rd.flatten() {
            let r = rel.join(d.file_name());
            match d.metadata() {
                Ok(m) if m.is_dir() => stack.push(r),
                Ok(m) if m.is_file() => out.push((r, m.len())),
                _ => {}
            }
        }
    }
    out
}

/// Human-readable differences between two snapshots (empty when equal).
pub fn diff_snapshots(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut out = vec![];
    for (k, v) in before {
        match after.get(k) {
            None => out.push(format!("removed: {k:?}")),
            Some(w) if w != v => out.push(format!("changed: {k:?}: {v:?} -> {w:?}")),
            _ => {}
        }
    }
    for k in after.keys() {
        if !before.contains_key(k) {
            out.push(format!("added: {k:?}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// A live union
// ---------------------------------------------------------------------------------------------

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
    upper_snap: Option<Snapshot>,
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

fn escape_colons(p: &Path) -> String {
    p.to_str()
        .unwrap()
        .replace('\\', "\\\\")
        .replace(':', "\\:")
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
            for n in before.values_mut().chain(after.values_mut()) {
                if n.kind == libc::S_IFDIR {
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
                let lower = self
                    .lowers
                    .iter()
                    .map(|p| escape_colons(p))
                    .collect::<Vec<_>>()
                    .join(":");
                let mut opts = format!("lowerdir={lower}");
                if let Some(up) = &self.upper {
                    fs::create_dir_all(&self.work).unwrap();
                    opts += &format!(
                        ",upperdir={},workdir={}",
                        escape_colons(up),
                        escape_colons(&self.work)
                    );
                }
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
                let _ = fs::remove_file(self.pid_file());
                let lower = self
                    .lowers
                    .iter()
                    .map(|p| escape_colons(p))
                    .collect::<Vec<_>>()
                    .join(":");
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
                    let mut o = format!("lowerdir={lower}");
                    if let Some(up) = &self.upper {
                        fs::create_dir_all(&self.work).unwrap();
                        o += &format!(
                            ",upperdir={},workdir={}",
                            escape_colons(up),
                            escape_colons(&self.work)
                        );
                    }
                    cmd.arg("-o").arg(o);
                } else {
                    cmd.arg(&lower);
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
                let status = cmd
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .status()
                    .unwrap();
                assert!(
                    status.success(),
                    "unionfs-mount failed ({status}): {}",
                    self.daemon_log()
                );
                self.pid = fs::read_to_string(self.pid_file())
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                assert!(
                    self.pid.is_some(),
                    "unionfs-mount exited 0 but wrote no pid to --pid-file: {}",
                    self.daemon_log()
                );
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
        let Some(pid) = self.pid else {
            return false;
        };
        let before = self.daemon_log().len();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGUSR1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.daemon_log();
            if let Some(l) = log[before..]
                .lines()
                .find(|l| l.starts_with("passthrough "))
            {
                return l == "passthrough on";
            }
            assert!(Instant::now() < deadline, "no SIGUSR1 report in the log");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// For tests that killed the daemon and recovered by hand.
    pub fn forget_mount(&mut self) {
        self.mounted = false;
        self.pid = None;
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

    // --- upper on disk -------------------------------------------------------------------------

    /// Names in an upper directory on disk, without our internal `.wh..wh.*` state (but with
    /// `.wh..wh..opq`, which is part of the OCI diff).
    pub fn upper_names(&self, rel: &str) -> BTreeSet<String> {
        list(&self.u(rel))
            .into_iter()
            .filter(|n| !n.starts_with(".wh..wh.") || n == ".wh..wh..opq")
            .collect()
    }

    fn wh_file(&self, rel: &str) -> PathBuf {
        let p = self.u(rel);
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        p.with_file_name(format!(".wh.{name}"))
    }

    /// Whether unionfs records a delete of `rel` as `.wh.NAME`: only when that name fits in
    /// NAME_MAX (longer names get the kernel's 0/0 char device).
    fn file_form(&self, rel: &str) -> bool {
        let name = Path::new(rel).file_name().unwrap().len();
        self.imp == Impl::Unionfs && ".wh.".len() + name <= 255
    }

    /// Whether the upper holds a whiteout for `rel` in the implementation's native format.
    pub fn upper_has_whiteout(&self, rel: &str) -> bool {
        if !self.file_form(rel) {
            return is_char_whiteout(&self.u(rel));
        }
        fs::symlink_metadata(self.wh_file(rel))
            .map(|m| m.is_file() && m.len() == 0)
            .unwrap_or(false)
    }

    pub fn assert_upper_whiteout(&self, rel: &str) {
        assert!(
            self.upper_has_whiteout(rel),
            "expected a whiteout for {rel} in the upper; upper dir holds {:?}",
            self.u(rel).parent().map(list)
        );
        if self.file_form(rel) {
            assert!(
                fs::symlink_metadata(self.u(rel)).is_err(),
                "upper holds both {rel} and its whiteout"
            );
        }
    }

    pub fn assert_no_upper_whiteout(&self, rel: &str) {
        assert!(
            !self.upper_has_whiteout(rel),
            "unexpected whiteout for {rel} in the upper"
        );
        if self.file_form(rel) {
            // The kernel format must never be written by unionfs either where `.wh.` fits.
            assert!(!is_char_whiteout(&self.u(rel)), "0/0 char device at {rel}");
        }
    }

    /// Neither an entry nor a whiteout for `rel` in the upper.
    pub fn assert_upper_absent(&self, rel: &str) {
        self.assert_no_upper_whiteout(rel);
        assert!(
            fs::symlink_metadata(self.u(rel)).is_err(),
            "unexpected upper entry {rel}"
        );
    }

    pub fn upper_is_opaque(&self, rel: &str) -> bool {
        let p = self.u(rel);
        match self.imp {
            Impl::Kernel => {
                lgetxattr(&p, "trusted.overlay.opaque").ok().as_deref() == Some(b"y")
                    || lgetxattr(&p, "user.overlay.opaque").ok().as_deref() == Some(b"y")
            }
            Impl::Unionfs => p.join(".wh..wh..opq").is_file(),
        }
    }

    pub fn assert_upper_opaque(&self, rel: &str) {
        assert!(
            self.upper_is_opaque(rel),
            "expected upper dir {rel} to be opaque"
        );
    }

    pub fn assert_upper_file(&self, rel: &str, content: impl AsRef<[u8]>) {
        let got = fs::read(self.u(rel)).unwrap_or_else(|e| panic!("upper {rel}: {e}"));
        assert_eq!(got, content.as_ref(), "upper content of {rel}");
    }

    /// Regular files in the upper that are neither part of the view nor internal (e.g. leaked
    /// `.fuse_hidden*` files, staging files published in the wrong place).
    pub fn upper_tree(&self) -> Vec<PathBuf> {
        let up = self.upper.as_ref().unwrap();
        snapshot(up)
            .into_keys()
            .filter(|p| {
                !p.components().any(|c| {
                    let s = c.as_os_str().to_string_lossy();
                    s.starts_with(".wh..wh.") && s != ".wh..wh..opq"
                })
            })
            .collect()
    }

    /// Asserts the upper holds exactly what it held before mounting (internal state aside):
    /// for scenarios that only read, which must never write to the upper.
    pub fn assert_upper_unchanged(&self) {
        let before = self.upper_snap.as_ref().expect("no upper");
        let now = visible_upper(snapshot(&self.u("")));
        let diff = diff_snapshots(before, &now);
        assert!(
            diff.is_empty(),
            "reads changed the upper:\n{}",
            diff.join("\n")
        );
    }

    /// Every regular file under the upper, internal state included, and under a separate work
    /// dir (prefixed `@work/`), with its size: where a copy-up can leave data.
    pub fn upper_all_files(&self) -> Vec<(PathBuf, u64)> {
        let mut out = files_under(&self.u(""));
        if self.work.exists() {
            for (p, len) in files_under(&self.work) {
                out.push((Path::new("@work").join(p), len));
            }
        }
        out
    }

    // --- a small upper filesystem (Stack::upper_tmpfs) ---------------------------------------

    /// The directory on the upper's own filesystem that holds the upper and the work dir.
    pub fn upper_fs(&self) -> PathBuf {
        match self.stack.upper_fs {
            Some(UpperFs::Tmpfs(_)) => self.root.join("upperfs"),
            Some(UpperFs::BtrfsQuota(_)) => self.root.join("upperfs/sv"),
            None => panic!("stack has no upper_fs"),
        }
    }

    /// Where the upper's own filesystem is mounted (for `mount -o remount,...`).
    pub fn upper_fs_mount(&self) -> PathBuf {
        assert!(self.stack.upper_fs.is_some(), "stack has no upper_fs");
        self.root.join("upperfs")
    }

    /// Fills the upper's filesystem with filler beside the upper (never part of the view) until
    /// it refuses more, then frees `keep` units again: inodes (`Fill::Inodes`) or 4 KiB pages
    /// (`Fill::Blocks`). Returns how many units the filler holds.
    pub fn fill_upper_fs(&self, what: Fill, keep: usize) -> usize {
        let dir = self.upper_fs().join("filler");
        let _ = fs::create_dir(&dir);
        match what {
            Fill::Inodes => {
                // tmpfs takes xattrs from the inode budget too: what is left after the last
                // inode that fits goes to xattrs on this file, so even a small one fails.
                let xattrs = dir.join("xattrs");
                let _ = fs::File::create(&xattrs);
                let mut n = list(&dir).len() - 1;
                loop {
                    match fs::File::create(dir.join(format!("i{n}"))) {
                        Ok(_) => n += 1,
                        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                        Err(e) => panic!("filling inodes: {e}"),
                    }
                }
                let mut k = 0;
                for size in [512, 256, 128, 64, 32, 16, 8, 4, 2, 1] {
                    while lsetxattr(&xattrs, &format!("user.fill{k}"), &vec![0; size]).is_ok() {
                        k += 1;
                    }
                }
                for i in 0..keep.min(n) {
                    fs::remove_file(dir.join(format!("i{}", n - 1 - i))).unwrap();
                }
                n - keep.min(n)
            }
            Fill::Blocks => {
                let p = dir.join("blocks");
                let mut f = fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&p)
                    .unwrap();
                let page = [0x5au8; 4096];
                loop {
                    match io::Write::write(&mut f, &page) {
                        Ok(n) if n == page.len() => {}
                        Ok(_) => break,
                        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                        Err(e) => panic!("filling blocks: {e}"),
                    }
                }
                let len = f.metadata().unwrap().len() / 4096;
                let left = len.saturating_sub(keep as u64);
                f.set_len(left * 4096).unwrap();
                left as usize
            }
        }
    }

    /// Removes all filler: the upper's filesystem has its space back.
    pub fn free_upper_fs(&self) {
        let _ = fs::remove_dir_all(self.upper_fs().join("filler"));
    }

    /// The daemon's work dir on disk (`-o workdir=` or the default inside the upper).
    pub fn work_dir(&self) -> PathBuf {
        if self.stack.o_form {
            self.work.clone()
        } else {
            self.u(".wh..wh.unionfs")
        }
    }

    /// Staging entries (`#unionfs-stage-*`) left in the work dir or its index: a failed or
    /// interrupted change must leave none once it has returned (or after the next mount).
    pub fn stage_leftovers(&self) -> Vec<PathBuf> {
        let w = self.work_dir();
        let mut out = vec![];
        for d in [w.clone(), w.join("index")] {
            if let Ok(rd) = fs::read_dir(&d) {
                for e in rd.flatten() {
                    if e.file_name()
                        .to_string_lossy()
                        .starts_with("#unionfs-stage-")
                    {
                        out.push(e.path());
                    }
                }
            }
        }
        out
    }

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
        for (i, (l, before)) in self.lowers.iter().zip(&self.snaps).enumerate() {
            if l.exists() {
                for d in diff_snapshots(before, &snapshot(l)) {
                    problems.push(format!("lower {} ({l:?}) {d}", i + 1));
                }
            }
        }
        for (dir, before) in &self.sentinels {
            for d in diff_snapshots(before, &snapshot(dir)) {
                problems.push(format!("outside the upper ({dir:?}): {d}"));
            }
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

/// Waits until process `pid` has exited (a zombie counts as gone); false on timeout.
pub fn wait_pid_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        // A zombie counts as gone: the daemon is not our child, init reaps it.
        let alive = fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                let state = s.rsplit(')').next().unwrap_or("").trim_start();
                !state.starts_with('Z')
            })
            .unwrap_or(false);
        if !alive {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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
pub fn drop_internal_entries(layer: &Path) {
    for name in list(layer) {
        if name.starts_with(".wh..wh.") && name != ".wh..wh..opq" {
            let p = layer.join(&name);
            if p.is_dir() {
                fs::remove_dir_all(&p).unwrap();
            } else {
                fs::remove_file(&p).unwrap();
            }
        }
    }
}

pub fn is_mountpoint(p: &Path) -> bool {
    let want = fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| {
            let mp = l.split(' ').nth(4).unwrap_or("");
            unescape_mountinfo(mp) == want.as_os_str().as_bytes()
        })
}

fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap(), 8).unwrap();
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
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

pub fn errno_result(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn lsetxattr(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let c = cpath(p);
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and a buffer of the given length.
    errno_result(unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

pub fn lgetxattr(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    let c = cpath(p);
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 70 * 1024];
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

pub fn lremovexattr(p: &Path, name: &str) -> io::Result<()> {
    let c = cpath(p);
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings.
    errno_result(unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) })
}

pub fn llistxattr(p: &Path) -> io::Result<Vec<String>> {
    let c = cpath(p);
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: valid C string and a buffer of the given length.
    let r = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(r as usize);
    Ok(buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

/// `renameat2(AT_FDCWD, from, AT_FDCWD, to, flags)`.
pub fn rename2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
    let a = cpath(from);
    let b = cpath(to);
    // SAFETY: valid C strings.
    errno_result(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    })
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

pub fn cstr_to_string(c: &CStr) -> String {
    c.to_string_lossy().into_owned()
}
