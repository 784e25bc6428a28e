//! The ordered layers (upper first if there is one, then the lowers top-down), each opened as a
//! directory fd once, plus the work directory. Every later access is relative to these fds and
//! resolved with openat2 so that it cannot leave its layer.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::layer::whiteout;
use crate::sys::{self, Errno, SysResult};

mod links;
mod work;

use work::lock_dir;

/// Index of a layer in [`Stack::layers`]: 0 is the upper when there is one.
pub type LayerIdx = usize;

/// Prefix that marks our staging entries in the work dir, so cleanup never touches anything else.
pub const STAGE_PREFIX: &str = "#unionfs-stage-";

/// One layer directory.
#[derive(Debug)]
pub struct Layer {
    /// The directory, opened `O_PATH`.
    pub fd: OwnedFd,
    /// The path the user gave (for messages only; never used for access).
    pub path: PathBuf,
    /// st_dev of the layer root.
    pub dev: u64,
}

/// The layer stack of one union.
#[derive(Debug)]
pub struct Stack {
    /// Upper (if any) then lowers, topmost first.
    pub layers: Vec<Layer>,
    /// Whether `layers[0]` is a writable upper.
    pub has_upper: bool,
    /// The work dir (same filesystem as the upper), for staging copy-ups and removals.
    pub work: Option<OwnedFd>,
    /// `WORK/index`: one hard link per copied-up lower file that had several names, keyed by
    /// union inode, so every name of it ends up as one upper inode (like overlayfs index=on).
    pub index: Option<OwnedFd>,
    /// The name of our per-entry origin xattr (`trusted.` when we may set it, else `user.`).
    pub origin_xattr: CString,
    /// The name of the metadata-only copy-up record (see `metacopy`), in the origin's namespace.
    pub metacopy_xattr: CString,
    /// The name of the flushed-behind record's xattr (see `behind`), in the same namespace.
    pub behind_xattr: CString,
    /// Whether metadata changes to lower files copy up metadata only (`-o metacopy=on`).
    pub metacopy: bool,
    /// No flushes (`-o volatile`): copy-up publishes without waiting for its data to reach
    /// the disk (see [`Stack::begin_volatile`]).
    pub volatile: bool,
    /// Distinct st_dev values, first the upper's (or top lower's): the index goes into the high
    /// bits of inode numbers from other filesystems, so numbers never collide (like xino).
    devs: Vec<u64>,
    /// The work dir's name inside the upper root, when it lives there (hidden from listings).
    pub work_in_upper: bool,
    next_stage: std::sync::atomic::AtomicU64,
    /// What the layer code did (copy-ups, whiteouts), for the SIGUSR1 report.
    pub counters: Counters,
    /// Per lower layer, built on first need: the paths of every file with several names,
    /// by inode number (to give all names of a copied-up file their upper link).
    hardlinks: parking_lot::Mutex<HashMap<LayerIdx, Arc<HardLinks>>>,
    /// Whiteouts of lower directories a listing has read whole (see `known`).
    pub known: crate::layer::known::KnownWhiteouts,
    /// Readable descriptors of the upper and the work dir holding an exclusive flock for the
    /// stack's life: one union per upper (see [`lock_dir`]).
    _locks: Vec<OwnedFd>,
}

/// What the layer code did to the upper, counted for the SIGUSR1 report.
#[derive(Debug, Default)]
pub struct Counters {
    /// Entries copied up into the upper.
    pub copy_ups: std::sync::atomic::AtomicU64,
    /// Bytes of file data copied by copy-ups.
    pub bytes_copied: std::sync::atomic::AtomicU64,
    /// Whiteouts written.
    pub whiteouts: std::sync::atomic::AtomicU64,
    /// Flushes to disk: copy-ups waiting for their data, FSYNC requests (none when volatile).
    pub flushes: std::sync::atomic::AtomicU64,
    /// Copy-ups renamed in before their flush, which runs in the background (`layer::behind`).
    pub flushed_behind: std::sync::atomic::AtomicU64,
}

/// Paths (relative to the layer root) of multi-link files, by inode number.
pub type HardLinks = HashMap<u64, Vec<Vec<u8>>>;

/// The layer directories of a union.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// Lowers, topmost first.
    pub lowers: Vec<PathBuf>,
    /// The upper, if the union is writable.
    pub upper: Option<PathBuf>,
    /// The work dir; default `UPPER/.wh..wh.unionfs`.
    pub workdir: Option<PathBuf>,
}

fn open_layer_dir(path: &Path, role: &str) -> Result<Layer> {
    let fd = sys::open_path(path, libc::O_PATH | libc::O_DIRECTORY).map_err(|e| {
        let hint = match e {
            Errno::ENOENT => "create it or correct the path",
            Errno::ENOTDIR => "a layer must be a directory",
            Errno::EACCES => "run as a user who can read it",
            _ => "check the path",
        };
        Error::sys(format!("{role} {}", path.display()), e.desc(), hint)
    })?;
    let st = sys::fstat(fd.as_fd())
        .map_err(|e| Error::sys(format!("{role} {}", path.display()), e.desc(), ""))?;
    Ok(Layer {
        fd,
        path: path.to_path_buf(),
        dev: st.st_dev,
    })
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// True when `inner` is `outer` or below it.
pub fn is_within(inner: &Path, outer: &Path) -> bool {
    canonical(inner).starts_with(canonical(outer))
}

impl Stack {
    /// Opens and checks every layer: existence, type, nesting, work dir placement.
    pub fn open(cfg: &StackConfig) -> Result<Stack> {
        if cfg.lowers.is_empty() {
            return Err(Error::new(
                "no lower layer given: name at least one directory (L1:L2:... or -o lowerdir=)",
            ));
        }
        let mut layers = Vec::new();
        if let Some(u) = &cfg.upper {
            for l in &cfg.lowers {
                if is_within(u, l) || is_within(l, u) {
                    return Err(Error::new(format!(
                        "upper {} and lower {} overlap (one is inside the other): \
                         use separate directory trees",
                        u.display(),
                        l.display()
                    )));
                }
            }
            let layer = open_layer_dir(u, "upper layer")?;
            // The upper must be writable by us: try it now, not at the first write.
            let probe = sys::openat(
                layer.fd.as_fd(),
                c".",
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
            )
            .map_err(|e| Error::sys(format!("upper layer {}", u.display()), e.desc(), ""))?;
            drop(probe);
            layers.push(layer);
        }
        for l in &cfg.lowers {
            layers.push(open_layer_dir(l, "lower layer")?);
        }
        let has_upper = cfg.upper.is_some();
        let mut devs: Vec<u64> = Vec::new();
        for l in &layers {
            if !devs.contains(&l.dev) {
                devs.push(l.dev);
            }
        }
        let mut stack = Stack {
            layers,
            has_upper,
            work: None,
            index: None,
            origin_xattr: whiteout::ORIGIN_XATTRS[0].to_owned(),
            metacopy_xattr: whiteout::METACOPY_XATTRS[0].to_owned(),
            behind_xattr: whiteout::BEHIND_XATTRS[0].to_owned(),
            metacopy: false,
            volatile: false,
            devs,
            work_in_upper: false,
            next_stage: std::sync::atomic::AtomicU64::new(1),
            counters: Counters::default(),
            hardlinks: parking_lot::Mutex::new(HashMap::new()),
            known: Default::default(),
            _locks: Vec::new(),
        };
        if has_upper {
            let upper = &stack.layers[0];
            stack
                ._locks
                .push(lock_dir(upper.fd.as_fd(), &upper.path, "upper layer")?);
            stack.open_work(cfg)?;
            if let Some(w) = &stack.work {
                let path = cfg
                    .workdir
                    .clone()
                    .unwrap_or_else(|| stack.layers[0].path.join(whiteout::DEFAULT_WORK_NAME));
                stack._locks.push(lock_dir(w.as_fd(), &path, "workdir")?);
            }
            stack.pick_xattr_namespace();
            stack.clean_work();
        }
        Ok(stack)
    }

    /// trusted.* xattrs work on every file type but need CAP_SYS_ADMIN; rootless daemons fall
    /// back to user.* (which the kernel refuses on symlinks and devices: those lose origin).
    fn pick_xattr_namespace(&mut self) {
        let Some(work) = &self.work else { return };
        let probe = c"trusted.unionfs.probe";
        let at = sys::At::dir(work.as_fd());
        if sys::setxattr(at, probe, b"1", 0).is_ok() {
            let _ = sys::removexattr(at, probe);
        } else {
            self.origin_xattr = whiteout::ORIGIN_XATTRS[1].to_owned();
            self.metacopy_xattr = whiteout::METACOPY_XATTRS[1].to_owned();
            self.behind_xattr = whiteout::BEHIND_XATTRS[1].to_owned();
        }
    }

    /// The upper layer, if the union is writable.
    pub fn upper(&self) -> Option<&Layer> {
        if self.has_upper {
            self.layers.first()
        } else {
            None
        }
    }

    /// True when `idx` is the upper layer.
    pub fn is_upper(&self, idx: LayerIdx) -> bool {
        self.has_upper && idx == 0
    }

    /// The union inode number of a file with real (dev, ino): the real number on the first
    /// filesystem, the device index in the top byte for others.
    pub fn union_ino(&self, dev: u64, ino: u64) -> u64 {
        let idx = self
            .devs
            .iter()
            .position(|d| *d == dev)
            .unwrap_or(self.devs.len()) as u64;
        let v = if idx == 0 { ino } else { ino | (idx << 56) };
        // Nodeid 1 is the FUSE root; 0 and u64::MAX are reserved by the protocol.
        if v <= 1 || v == u64::MAX {
            v | (0xff << 56)
        } else {
            v
        }
    }

    /// The union inode number of an entry found in layer `idx`: for the upper, the origin
    /// recorded at copy-up, so that st_ino survives copy-up and remount.
    pub fn entry_ino(&self, idx: LayerIdx, at: sys::At<'_>, st: &libc::stat) -> u64 {
        if self.is_upper(idx) {
            let mut buf = [0u8; 8];
            if let Ok(8) = sys::getxattr(at, &self.origin_xattr, &mut buf) {
                let v = u64::from_le_bytes(buf);
                if v > 1 {
                    return v;
                }
            }
        }
        self.union_ino(st.st_dev, st.st_ino)
    }

    /// Opens `rel` (a `/`-separated path below the layer root, empty for the root) in layer
    /// `idx`, never following a symlink and never leaving the layer.
    pub fn open_rel(&self, idx: LayerIdx, rel: &[u8], flags: i32) -> SysResult<OwnedFd> {
        let layer = self.layers.get(idx).ok_or(Errno::EINVAL)?;
        open_below(layer.fd.as_fd(), rel, flags)
    }
}

/// Opens `rel` below `root` with openat2 (RESOLVE_BENEATH, no symlinks). Paths longer than one
/// openat2 call takes are walked in chunks, so depth is limited only by the filesystem.
pub fn open_below(root: BorrowedFd<'_>, rel: &[u8], flags: i32) -> SysResult<OwnedFd> {
    let flags = flags | libc::O_NOFOLLOW;
    if rel.is_empty() {
        return sys::openat(root, c".", flags & !libc::O_NOFOLLOW, 0);
    }
    const CHUNK: usize = 3000;
    if rel.len() <= CHUNK {
        let c = CString::new(rel).map_err(|_| Errno::EINVAL)?;
        return sys::openat2(root, &c, flags, 0, sys::RESOLVE_IN_LAYER);
    }
    // Split at a '/' before CHUNK bytes and descend.
    let cut = rel[..CHUNK]
        .iter()
        .rposition(|b| *b == b'/')
        .ok_or(Errno::ENAMETOOLONG)?;
    let head = CString::new(&rel[..cut]).map_err(|_| Errno::EINVAL)?;
    let dir = sys::openat2(
        root,
        &head,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
        sys::RESOLVE_IN_LAYER,
    )?;
    open_below(dir.as_fd(), &rel[cut + 1..], flags)
}

/// Splits a relative path into its parent's path and its name (what [`join`] joined).
pub fn split(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|b| *b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&rel[..0], rel),
    }
}

/// Joins a parent relative path and a name.
pub fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        return name.to_vec();
    }
    let mut v = Vec::with_capacity(parent.len() + 1 + name.len());
    v.extend_from_slice(parent);
    v.push(b'/');
    v.extend_from_slice(name);
    v
}

/// Opens the subdirectory `name` of `dir` (`O_PATH`), refusing symlinks.
pub fn open_subdir(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<OwnedFd> {
    sys::openat(
        dir,
        name,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
}

/// Removes `name` in `dir` and everything below it, without following symlinks.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<()> {
    match sys::unlinkat(dir, name, false) {
        Ok(()) => return Ok(()),
        Err(Errno::EISDIR) | Err(Errno::EPERM) => {}
        Err(e) => return Err(e),
    }
    let sub = open_subdir(dir, name)?;
    for e in sys::read_dir(sub.as_fd())? {
        let n = CString::new(e.name).map_err(|_| Errno::EINVAL)?;
        remove_tree(sub.as_fd(), &n)?;
    }
    sys::unlinkat(dir, name, true)
}
