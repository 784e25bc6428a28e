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

/// Index of a layer in [`Stack::layers`]: 0 is the upper when there is one.
pub type LayerIdx = usize;

/// The work dir's directory of marks that make a later mount refuse (kernel overlayfs's name).
const VOLATILE_DIR: &CStr = c"incompat";
/// The mark of a volatile mount that has not ended cleanly.
const VOLATILE_MARKER: &CStr = c"volatile";

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

/// How long a new union waits for an old one on the same upper to let go: after `umount` the
/// old daemon still needs a moment to exit, and a remount right after it must not fail.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Takes the exclusive lock of a writable layer directory (`dir`, an `O_PATH` fd) for this
/// union, or says which process holds it.
///
/// Two unions on one upper would each cache a view the other changes underneath it (stale
/// entries, lost copy-ups), so the second one is refused, as kernel overlayfs refuses an upper
/// in use. The lock is a flock on a descriptor the stack keeps: it ends with the daemon,
/// `kill -9` included, and leaves no file behind.
fn lock_dir(dir: BorrowedFd<'_>, path: &Path, role: &str) -> Result<OwnedFd> {
    let fd = sys::reopen(dir, libc::O_RDONLY | libc::O_DIRECTORY)
        .map_err(|e| Error::sys(format!("{role} {}", path.display()), e.desc(), ""))?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match sys::try_lock_exclusive(fd.as_fd()) {
            Ok(()) => return Ok(fd),
            Err(Errno::EWOULDBLOCK) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(Errno::EWOULDBLOCK) => {
                let st = sys::fstat(fd.as_fd()).ok();
                let holders = st
                    .map(|st| sys::flock_holders(st.st_dev, st.st_ino))
                    .unwrap_or_default();
                let who: Vec<String> = holders
                    .iter()
                    .map(|p| {
                        let comm = std::fs::read_to_string(format!("/proc/{p}/comm"))
                            .map(|c| format!(" ({})", c.trim()))
                            .unwrap_or_default();
                        format!("pid {p}{comm}")
                    })
                    .collect();
                let who = if who.is_empty() {
                    "a process this user cannot see".to_string()
                } else {
                    who.join(", ")
                };
                return Err(Error::new(format!(
                    "{role} {} is in use by another union, held by {who}: two unions on one \
                     upper would each show stale views of the other's changes; unmount that \
                     union (umount its mount point, or end that unionfs-run) or give another \
                     upper",
                    path.display()
                )));
            }
            // A filesystem without flock (some network ones) cannot tell: mount unlocked.
            Err(Errno::ENOLCK) | Err(Errno::EOPNOTSUPP) | Err(Errno::EINVAL) => return Ok(fd),
            Err(e) => {
                return Err(Error::sys(
                    format!("locking {role} {}", path.display()),
                    e.desc(),
                    "",
                ))
            }
        }
    }
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
            metacopy: false,
            volatile: false,
            devs,
            work_in_upper: false,
            next_stage: std::sync::atomic::AtomicU64::new(1),
            counters: Counters::default(),
            hardlinks: parking_lot::Mutex::new(HashMap::new()),
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

    fn open_work(&mut self, cfg: &StackConfig) -> Result<()> {
        let upper = &self.layers[0];
        let (fd, path) = match &cfg.workdir {
            Some(w) => {
                if let Some(u) = &cfg.upper {
                    if is_within(w, u) || is_within(u, w) {
                        return Err(Error::new(format!(
                            "workdir {} and upper {} overlap: give a workdir beside the upper, \
                             on the same filesystem",
                            w.display(),
                            u.display()
                        )));
                    }
                }
                for l in &cfg.lowers {
                    if is_within(w, l) {
                        return Err(Error::new(format!(
                            "workdir {} is inside lower layer {}: lower layers are never written",
                            w.display(),
                            l.display()
                        )));
                    }
                }
                let fd = sys::open_path(w, libc::O_PATH | libc::O_DIRECTORY).map_err(|e| {
                    Error::sys(
                        format!("workdir {}", w.display()),
                        e.desc(),
                        "create it on the same filesystem as the upper",
                    )
                })?;
                (fd, w.clone())
            }
            None => {
                let name = CString::new(whiteout::DEFAULT_WORK_NAME).unwrap_or_default();
                let before = sys::fstat(upper.fd.as_fd()).ok();
                match sys::mkdirat(upper.fd.as_fd(), &name, 0o700) {
                    Ok(()) => {
                        // The upper's root is the view's root: mounting must not change its
                        // times (its ctime, which nobody can set, does move once).
                        if let Some(before) = before {
                            sys::restore_times(upper.fd.as_fd(), &before);
                        }
                    }
                    Err(Errno::EEXIST) => {}
                    Err(e) => {
                        return Err(Error::sys(
                            format!("creating work dir in upper {}", upper.path.display()),
                            e.desc(),
                            "the upper must be writable",
                        ))
                    }
                }
                let fd = sys::openat(
                    upper.fd.as_fd(),
                    &name,
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                )
                .map_err(|e| {
                    Error::sys(
                        format!("work dir {}", whiteout::DEFAULT_WORK_NAME),
                        e.desc(),
                        "remove whatever has that name in the upper",
                    )
                })?;
                self.work_in_upper = true;
                (fd, upper.path.join(whiteout::DEFAULT_WORK_NAME))
            }
        };
        let st = sys::fstat(fd.as_fd())
            .map_err(|e| Error::sys(format!("workdir {}", path.display()), e.desc(), ""))?;
        if st.st_dev != upper.dev {
            return Err(Error::new(format!(
                "workdir {} is on another filesystem than upper {}: copy-up publishes files by \
                 rename, which needs both on one filesystem; put the workdir beside the upper",
                path.display(),
                upper.path.display()
            )));
        }
        match sys::mkdirat(fd.as_fd(), c"index", 0o700) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => {
                return Err(Error::sys(
                    format!("creating {}/index", path.display()),
                    e.desc(),
                    "the work dir must be writable",
                ))
            }
        }
        self.index = crate::layer::stack::open_subdir(fd.as_fd(), c"index").ok();
        if let Ok(inc) = open_subdir(fd.as_fd(), VOLATILE_DIR) {
            if sys::fstatat(inc.as_fd(), VOLATILE_MARKER).is_ok() {
                return Err(Error::new(format!(
                    "upper {} was last mounted volatile (-o volatile or fsync=0, which never \
                     flush) and that mount did not end cleanly: {}/incompat/volatile is still \
                     there. After a crash its files may be incomplete or missing: start over with \
                     a new upper and work dir; only if the machine did not crash (the daemon \
                     was killed), remove that directory and mount again",
                    upper.path.display(),
                    path.display()
                )));
            }
        }
        self.work = Some(fd);
        Ok(())
    }

    /// Starts a volatile mount (`-o volatile`): nothing is flushed, and a marker in the work
    /// dir, `incompat/volatile` as kernel overlayfs names it, makes every later mount refuse
    /// this upper until the union ends cleanly ([`Stack::end_volatile`]): a crash meanwhile
    /// may have lost any of its writes. No-op for a read-only union.
    pub fn begin_volatile(&mut self) -> Result<()> {
        let Some(work) = &self.work else {
            return Ok(());
        };
        let fail =
            |e: Errno| Error::sys("creating the volatile marker in the work dir", e.desc(), "");
        match sys::mkdirat(work.as_fd(), VOLATILE_DIR, 0o700) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(fail(e)),
        }
        let inc = open_subdir(work.as_fd(), VOLATILE_DIR).map_err(fail)?;
        sys::mkdirat(inc.as_fd(), VOLATILE_MARKER, 0o700).map_err(fail)?;
        // The marker itself must survive a crash, or it would not catch one.
        for dir in [inc.as_fd(), work.as_fd()] {
            let d = sys::reopen(dir, libc::O_RDONLY | libc::O_DIRECTORY).map_err(fail)?;
            sys::fsync(d.as_fd(), false).map_err(fail)?;
        }
        self.volatile = true;
        Ok(())
    }

    /// Flushes a copy's data to disk before it is published (nothing when volatile).
    pub fn flush(&self, fd: BorrowedFd<'_>) -> SysResult<()> {
        if self.volatile {
            return Ok(());
        }
        self.counters
            .flushes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        sys::fsync(fd, true)
    }

    /// Ends a volatile mount cleanly: writes the upper's filesystem back, then removes the
    /// marker, so that the next mount accepts the upper. Called once the union's connection
    /// ended; idempotent.
    pub fn end_volatile(&self) {
        let (Some(work), Some(upper)) = (&self.work, self.upper()) else {
            return;
        };
        if !self.volatile {
            return;
        }
        let synced = sys::reopen(upper.fd.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)
            .and_then(|d| sys::syncfs(d.as_fd()));
        if let Err(e) = synced {
            log::warn!("volatile union: writing the upper back failed ({e}): its marker stays");
            return;
        }
        if let Ok(inc) = open_subdir(work.as_fd(), VOLATILE_DIR) {
            let _ = sys::unlinkat(inc.as_fd(), VOLATILE_MARKER, true);
            let _ = sys::unlinkat(work.as_fd(), VOLATILE_DIR, true);
        }
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
        }
    }

    /// Removes staging leftovers of an earlier run (a crash mid copy-up); only our own names.
    /// The index holds staged link-count records too (`set_nlink_record`).
    fn clean_work(&self) {
        for dir in [&self.work, &self.index].into_iter().flatten() {
            let Ok(entries) = sys::read_dir(dir.as_fd()) else {
                continue;
            };
            for e in entries {
                if e.name.starts_with(STAGE_PREFIX.as_bytes()) {
                    if let Ok(name) = CString::new(e.name) {
                        let _ = remove_tree(dir.as_fd(), &name);
                    }
                }
            }
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

    /// The work dir fd; `EROFS` for a read-only union.
    pub fn work(&self) -> SysResult<BorrowedFd<'_>> {
        self.work.as_ref().map(|w| w.as_fd()).ok_or(Errno::EROFS)
    }

    /// A fresh unique staging name in the work dir.
    pub fn stage_name(&self) -> CString {
        let n = self
            .next_stage
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        CString::new(format!("{STAGE_PREFIX}{}-{n}", std::process::id())).unwrap_or_default()
    }

    /// A fresh unique name for an entry made inside an upper directory before it takes its
    /// real name (see `ops::create`): reserved (`.wh..wh.`), so the view, listings and
    /// `unionfs-layer export` never show it, even if a crash leaves it behind.
    pub fn temp_name(&self) -> CString {
        let n = self
            .next_stage
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        CString::new(format!(".wh..wh.unionfs-new-{}-{n}", std::process::id())).unwrap_or_default()
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

    /// The multi-link files of lower layer `idx` (walked once, then kept: lowers never change).
    pub fn hardlinks(&self, idx: LayerIdx) -> Arc<HardLinks> {
        let mut all = self.hardlinks.lock();
        if let Some(h) = all.get(&idx) {
            return Arc::clone(h);
        }
        let mut map = HardLinks::new();
        if let Some(layer) = self.layers.get(idx) {
            if let Ok(root) =
                sys::openat(layer.fd.as_fd(), c".", libc::O_PATH | libc::O_DIRECTORY, 0)
            {
                collect_hardlinks(root.as_fd(), Vec::new(), &mut map, 0);
            }
        }
        map.retain(|_, v| v.len() > 1);
        let map = Arc::new(map);
        all.insert(idx, Arc::clone(&map));
        map
    }

    /// The index entry name of union inode `ino`.
    pub fn index_key(ino: u64) -> CString {
        CString::new(format!("{ino:016x}")).unwrap_or_default()
    }

    /// True when union inode `ino` has been copied up through the hard-link index.
    pub fn is_indexed(&self, ino: u64) -> bool {
        self.index
            .as_ref()
            .is_some_and(|i| sys::fstatat(i.as_fd(), &Self::index_key(ino)).is_ok())
    }

    fn nlink_key(ino: u64) -> CString {
        CString::new(format!("{ino:016x}.nlink")).unwrap_or_default()
    }

    /// The recorded link count of a lower multi-link file whose names changed through the
    /// union (copy-up, unlink, link), if there is one.
    pub fn nlink_record(&self, ino: u64) -> Option<u32> {
        let index = self.index.as_ref()?;
        let fd = sys::openat(index.as_fd(), &Self::nlink_key(ino), libc::O_RDONLY, 0).ok()?;
        let mut buf = [0u8; 16];
        let n = sys::pread(fd.as_fd(), &mut buf, 0).ok()?;
        std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
    }

    /// Records the link count the view shows for union inode `ino` (atomically replaced).
    pub fn set_nlink_record(&self, ino: u64, n: u32) -> SysResult<()> {
        let index = self.index.as_ref().ok_or(Errno::EROFS)?;
        let stage = self.stage_name();
        let fd = sys::openat(
            index.as_fd(),
            &stage,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            0o600,
        )?;
        sys::pwrite(fd.as_fd(), n.to_string().as_bytes(), 0)?;
        drop(fd);
        let key = Self::nlink_key(ino);
        sys::renameat2(index.as_fd(), &stage, index.as_fd(), &key, 0).inspect_err(|_| {
            let _ = sys::unlinkat(index.as_fd(), &stage, false);
        })
    }

    /// Forgets the link-count record of `ino` (every name is a plain upper link again).
    pub fn drop_nlink_record(&self, ino: u64) {
        if let Some(index) = &self.index {
            let _ = sys::unlinkat(index.as_fd(), &Self::nlink_key(ino), false);
        }
    }

    /// True when the link count of this regular file is tracked by us rather than by the
    /// layer: a lower file with several names, or one copied up through the index.
    pub fn tracks_nlink(&self, ino: u64, layer: LayerIdx, st: &libc::stat) -> bool {
        // A tracked file in the upper always has its index link beside its name; records and
        // index entries are only ever made for lower inodes with several names, and a lower
        // layer's link counts do not change.
        if st.st_nlink <= 1 {
            return false;
        }
        st.st_mode & libc::S_IFMT != libc::S_IFDIR
            && ((!self.is_upper(layer) && st.st_nlink > 1)
                || self.is_indexed(ino)
                || self.nlink_record(ino).is_some())
    }

    /// st_nlink as the union shows it: names deleted or added through the union are counted,
    /// and the index's own link is not a name in the view.
    pub fn view_nlink(&self, ino: u64, st: &libc::stat) -> u32 {
        let n = st.st_nlink as u32;
        if n <= 1 || st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return n;
        }
        if let Some(r) = self.nlink_record(ino) {
            return r;
        }
        if self.is_indexed(ino) {
            n - 1
        } else {
            n
        }
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

fn collect_hardlinks(dir: BorrowedFd<'_>, rel: Vec<u8>, map: &mut HardLinks, depth: u32) {
    if depth > 4096 {
        return;
    }
    let Ok(entries) = sys::read_dir(dir) else {
        return;
    };
    for e in entries {
        let Ok(c) = CString::new(e.name.clone()) else {
            continue;
        };
        let path = join(&rel, &e.name);
        match e.dtype {
            libc::DT_DIR => {
                if let Ok(sub) = open_subdir(dir, &c) {
                    collect_hardlinks(sub.as_fd(), path, map, depth + 1);
                }
            }
            _ => {
                if let Ok(st) = sys::fstatat(dir, &c) {
                    if st.st_mode & libc::S_IFMT != libc::S_IFDIR && st.st_nlink > 1 {
                        map.entry(st.st_ino).or_default().push(path);
                    } else if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                        if let Ok(sub) = open_subdir(dir, &c) {
                            collect_hardlinks(sub.as_fd(), path, map, depth + 1);
                        }
                    }
                }
            }
        }
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
