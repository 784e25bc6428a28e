//! Mounting a layer stack and serving it: the `/dev/fuse` mount, worker threads, clean unmount.
//!
//! We call mount(2) ourselves with `fd=` instead of letting fuser mount, for three reasons: the
//! same code works as real root and as root of a user namespace (the launcher's holder process),
//! the filesystem type is `fuse.unionfs-mount` (what `mount -t` and fstab users write), and unmount is
//! always lazy, so a busy mount never makes shutdown fail.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::Duration;

use fuser::{Session, SessionACL};

use crate::error::{Error, Result};
pub use crate::fs::owners::Owners;
use crate::fs::{FsOptions, UnionFs};
pub use crate::layer::idmap::{IdMap, IdMaps, IdRange};
use crate::layer::stack::is_within;
use crate::layer::whiteout::WH_PREFIX;
use crate::layer::{Stack, StackConfig};
use crate::sys::{self, Errno};
use crate::transport::conn::Conn;
use crate::transport::handshake::Handshake;
pub use crate::transport::Uring;

/// The filesystem type we mount as (`fuse.` + this subtype): the binary's own name, which is
/// what mount.fuse3 runs for `mount -t fuse.unionfs-mount` (`unionfs` is unionfs-fuse's).
pub const SUBTYPE: &str = "unionfs-mount";

/// The source name /proc/mounts shows when none is given.
pub const DEFAULT_FSNAME: &str = "unionfs";

/// What to mount: the layer directories and how to serve them.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// Read-only lower layers, topmost first (like overlayfs `lowerdir=`).
    pub lowers: Vec<PathBuf>,
    /// The writable upper layer; `None` gives a read-only union (EROFS on writes).
    pub upper: Option<PathBuf>,
    /// Staging directory on the upper's filesystem; default: a reserved dir inside the upper.
    pub workdir: Option<PathBuf>,
    /// FUSE worker threads; 0 picks a default for the machine.
    pub threads: usize,
    /// Let every user reach the mount (`allow_other`); needed for container roots.
    pub allow_other: bool,
    /// Honour set-user-id bits on files in the union.
    pub suid: bool,
    /// Allow device nodes in the union to be opened as devices.
    pub dev: bool,
    /// Mount read-only even when an upper is given.
    pub read_only: bool,
    /// The source name shown in /proc/mounts.
    pub fsname: String,
    /// How long the kernel may cache entries and attributes.
    pub ttl: Duration,
    /// Let the kernel do file I/O directly on the layer files (FUSE passthrough) when it and
    /// our privileges allow; otherwise data goes through the daemon.
    pub passthrough: bool,
    /// chmod, chown, utimes, xattr changes, renames and links of lower files copy up metadata
    /// only; data follows on the first write (see `layer::metacopy`).
    pub metacopy: bool,
    /// When to serve requests over io_uring (see [`crate::transport::ring`]).
    pub uring: Uring,
    /// Inodes the kernel may cache through this union before unused ones are dropped (see
    /// `fs::evict`); 0: no limit.
    pub max_nodes: usize,
    /// How owners are shown and written (`uidmapping=`, `gidmapping=`, `squash_to_*`).
    pub owners: Owners,
    /// Directories show link count 1 (`static_nlink`).
    pub static_nlink: bool,
    /// Let the kernel enforce POSIX ACLs (`noacl` turns it off).
    pub acl: bool,
    /// No flushes; the next mount refuses an upper whose volatile mount did not end cleanly
    /// (`volatile`, `fsync=0`).
    pub volatile: bool,
    /// Copy-ups of files of at least this many bytes are renamed in at once and flushed in
    /// the background while the writer goes on (`flush_behind=SIZE|off`; see `fs::behind`).
    pub flush_behind: Option<u64>,
    /// The user-namespace id maps this union's writes reach the disk through (the launcher's),
    /// recorded in the work dir for `unionfs-layer export`.
    pub written_under: Option<IdMaps>,
}

impl MountConfig {
    /// A configuration for `lowers` (topmost first) under an optional `upper`.
    pub fn new(lowers: Vec<PathBuf>, upper: Option<PathBuf>) -> Self {
        MountConfig {
            lowers,
            upper,
            workdir: None,
            threads: 0,
            allow_other: true,
            suid: true,
            dev: false,
            read_only: false,
            fsname: DEFAULT_FSNAME.to_string(),
            // Layers change only through us and the kernel sees every change we make, so its
            // caches stay right for as long as it likes to keep them.
            ttl: Duration::from_secs(3600),
            passthrough: true,
            metacopy: false,
            max_nodes: crate::fs::DEFAULT_MAX_NODES,
            uring: Uring::Auto,
            owners: Owners::default(),
            static_nlink: false,
            acl: true,
            volatile: false,
            flush_behind: Some(crate::fs::behind::DEFAULT_MIN_SIZE),
            written_under: None,
        }
    }

    /// The worker thread count to use.
    pub fn worker_threads(&self) -> usize {
        if self.threads > 0 {
            return self.threads;
        }
        // Workers block in layer I/O, so more of them than cores keeps the cores busy.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        (cores * 2).clamp(4, 16)
    }

    /// True when the upper is given and sits on a read-only filesystem or mount (a read-only
    /// bind mount, a filesystem remounted read-only after errors): such a union can only be
    /// mounted read-only.
    pub fn upper_on_read_only_fs(&self) -> bool {
        let Some(u) = &self.upper else {
            return false;
        };
        sys::open_path(u, libc::O_PATH | libc::O_DIRECTORY)
            .and_then(|fd| sys::fstatvfs(fd.as_fd()))
            .is_ok_and(|st| st.f_flag & libc::ST_RDONLY != 0)
    }

    /// Opens and checks the layers and the mount point, without mounting anything yet.
    pub fn prepare(&self, mountpoint: &Path) -> Result<Prepared> {
        // Checked first: the kernel may still answer a stat of the dead mount's root from
        // its cache, and mounting over it would hide the dead mount instead of clearing it.
        if is_dead_fuse_mount(mountpoint) {
            return Err(Error::new(format!(
                "mount point {0}: Transport endpoint is not connected (a union whose daemon \
                 was killed is still mounted there); clear it with `unionfs-mount --cleanup \
                 {0}` (or `umount -l {0}`), then mount again",
                mountpoint.display()
            )));
        }
        let meta = std::fs::metadata(mountpoint).map_err(|e| {
            Error::sys(
                format!("mount point {}", mountpoint.display()),
                e,
                "create the directory first",
            )
        })?;
        if !meta.is_dir() {
            return Err(Error::new(format!(
                "mount point {} is not a directory: give an empty directory",
                mountpoint.display()
            )));
        }
        let lowers = self.lowers.iter().map(|l| ("a lower layer", l));
        let others = [
            ("the upper layer", &self.upper),
            ("the workdir", &self.workdir),
        ];
        let named = others
            .into_iter()
            .filter_map(|(what, p)| p.as_ref().map(|p| (what, p)));
        for (what, l) in lowers.chain(named) {
            if is_within(mountpoint, l) && is_within(l, mountpoint) {
                return Err(Error::new(format!(
                    "mount point {} is {what}: mounting there would hide that layer; \
                     give the mount point as a separate directory, last: \
                     unionfs-mount LOWERS [UPPER] MNT",
                    mountpoint.display()
                )));
            }
            if is_within(mountpoint, l) {
                return Err(Error::new(format!(
                    "mount point {} is inside layer {}: the union would contain itself; \
                     mount it somewhere outside the layer directories",
                    mountpoint.display(),
                    l.display()
                )));
            }
        }
        let contents = MountpointContents::survey(mountpoint);
        if let Some(name) = &contents.layer_entry {
            return Err(Error::new(format!(
                "mount point {} holds {}, so it is a layer directory (the upper of an \
                 earlier union?): mounting there would hide that layer; if you left out the \
                 mount point, give it last: unionfs-mount LOWERS UPPER MNT; otherwise mount \
                 on another directory",
                mountpoint.display(),
                name.to_string_lossy()
            )));
        }
        // A read-only union still shows its upper: as the topmost layer, never written.
        let (lowers, upper, workdir) = if self.read_only {
            let lowers = self.upper.iter().chain(&self.lowers).cloned().collect();
            (lowers, None, None)
        } else {
            (
                self.lowers.clone(),
                self.upper.clone(),
                self.workdir.clone(),
            )
        };
        let mut stack = Stack::open(&StackConfig {
            lowers,
            upper,
            workdir,
        })?;
        stack.metacopy = self.metacopy;
        // Before anything is served: copies an earlier mount did not flush (see `repair`).
        crate::layer::repair::repair_unflushed(&stack);
        if self.volatile {
            stack.begin_volatile()?;
        }
        if let (Some(maps), Ok(work)) = (&self.written_under, stack.work()) {
            maps.write_record(work)
                .map_err(|e| Error::sys("recording the id maps in the work dir", e.desc(), ""))?;
        }
        Ok(Prepared {
            cfg: self.clone(),
            stack: Arc::new(stack),
            mountpoint: mountpoint.to_path_buf(),
            hidden: contents.entries,
        })
    }

    /// Mounts the union on `mountpoint` and serves it with threads of this process.
    pub fn mount(&self, mountpoint: &Path) -> Result<MountGuard> {
        self.prepare(mountpoint)?.mount()
    }
}

/// What a mount point holds before the union covers it.
#[derive(Debug, Default)]
struct MountpointContents {
    /// How many entries the mount will hide.
    entries: usize,
    /// A name that only a layer directory holds: a whiteout, an opaque marker, our work dir.
    layer_entry: Option<OsString>,
}

impl MountpointContents {
    /// Lists `dir`; one that cannot be listed counts as empty (the mount itself then decides).
    fn survey(dir: &Path) -> Self {
        let mut out = MountpointContents::default();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return out;
        };
        for e in entries.flatten() {
            out.entries += 1;
            if out.layer_entry.is_some() {
                continue;
            }
            let name = e.file_name();
            let whiteout = name.as_bytes().starts_with(WH_PREFIX);
            // A 0/0 character device is the kernel's whiteout.
            let char_whiteout = e
                .file_type()
                .is_ok_and(|t| t.is_char_device() && e.metadata().is_ok_and(|m| m.rdev() == 0));
            if whiteout || char_whiteout {
                out.layer_entry = Some(name);
            }
        }
        out
    }
}

/// A checked configuration with its layers open, ready to mount.
#[derive(Debug)]
pub struct Prepared {
    cfg: MountConfig,
    stack: Arc<Stack>,
    mountpoint: PathBuf,
    hidden: usize,
}

impl Prepared {
    /// How many entries the mount point holds: the mount hides them until it is unmounted.
    pub fn hidden_entries(&self) -> usize {
        self.hidden
    }

    /// Mounts and starts serving; returns once the kernel has completed the FUSE handshake.
    pub fn mount(self) -> Result<MountGuard> {
        static TUNED: std::sync::Once = std::sync::Once::new();
        TUNED.call_once(sys::big_allocations_as_mappings);
        let fuse = open_fuse_device()?;
        let cfg = &self.cfg;
        let mut flags: libc::c_ulong = 0;
        if !cfg.suid {
            flags |= libc::MS_NOSUID;
        }
        if !cfg.dev {
            flags |= libc::MS_NODEV;
        }
        // Without an upper every write fails anyway; the flag makes the kernel refuse writes
        // itself and /proc/mounts say `ro`, as it does for kernel overlayfs without an upper.
        if cfg.read_only || cfg.upper.is_none() {
            flags |= libc::MS_RDONLY;
        }
        let mut data = format!(
            "fd={},rootmode=40000,user_id={},group_id={},default_permissions",
            std::os::fd::AsRawFd::as_raw_fd(&fuse),
            sys::geteuid(),
            sys::getegid()
        );
        if cfg.allow_other {
            data.push_str(",allow_other");
        }
        let source = sys::cstr(std::ffi::OsStr::new(&cfg.fsname))
            .map_err(|_| Error::new("fsname must not contain a NUL byte"))?;
        let fstype = sys::cstr(std::ffi::OsStr::new(&format!("fuse.{SUBTYPE}")))
            .map_err(|_| Error::new("bad filesystem type"))?;
        let cdata =
            sys::cstr(std::ffi::OsStr::new(&data)).map_err(|_| Error::new("bad mount options"))?;
        sys::mount(&source, &self.mountpoint, &fstype, flags, &cdata).map_err(|e| {
            let hint = match e {
                Errno::EPERM => {
                    "mounting FUSE needs root, or root of a user namespace that owns the \
                     current mount namespace"
                }
                Errno::ENODEV => "the fuse kernel module is not loaded: modprobe fuse",
                _ => "",
            };
            Error::sys(
                format!("mounting on {}", self.mountpoint.display()),
                e.desc(),
                hint,
            )
        })?;
        let fs = Arc::new(UnionFs::new(
            Arc::clone(&self.stack),
            FsOptions {
                ttl: cfg.ttl,
                passthrough: cfg.passthrough,
                max_nodes: cfg.max_nodes,
                owners: cfg.owners.clone(),
                static_nlink: cfg.static_nlink,
                acl: cfg.acl,
                volatile: cfg.volatile,
                flush_behind: cfg.flush_behind,
            },
        ));
        // fuser runs no session loop here (see below), so its thread and access settings do
        // nothing: who may use the mount is the kernel's check (`allow_other` in the data).
        let (config, acl) = (fuser::Config::default(), SessionACL::All);
        // Our transports read and answer the device themselves; fuser only does FUSE_INIT.
        let dev = fuse
            .try_clone()
            .map(Arc::new)
            .map_err(|e| Error::sys("duplicating the FUSE device fd", e, ""))?;
        fs.notify().attach(Arc::clone(&dev));
        let conn = Conn::new(Arc::clone(&fs), dev);
        let handshake = Handshake::new(Arc::clone(&conn), cfg.uring);
        let session = match Session::from_fd(handshake, fuse, acl, config) {
            Ok(s) => s,
            Err(e) => {
                let _ = sys::umount_lazy(&self.mountpoint);
                return Err(Error::sys("FUSE handshake with the kernel", e, ""));
            }
        };
        // The kernel has our INIT reply: the transports take the connection now.
        if let Err(e) = crate::transport::attach(&conn, cfg.worker_threads()) {
            let _ = sys::umount_lazy(&self.mountpoint);
            return Err(e);
        }
        Ok(MountGuard {
            mountpoint: self.mountpoint,
            conn,
            session: Some(session),
            fs,
        })
    }
}

fn open_fuse_device() -> Result<OwnedFd> {
    sys::open_path(Path::new("/dev/fuse"), libc::O_RDWR).map_err(|e| {
        let hint = match e {
            Errno::EACCES | Errno::EPERM => {
                "this user may not open /dev/fuse (mode 0600 here): run as root, or give the \
                 user access (chmod 0666 /dev/fuse, or bind-mount a 0666 node over it in a \
                 private mount namespace)"
            }
            Errno::ENOENT => {
                "load the fuse module (modprobe fuse) or create the node: mknod /dev/fuse c 10 229"
            }
            _ => "",
        };
        Error::sys("opening /dev/fuse", e.desc(), hint)
    })
}

/// A live mount served by threads of this process; dropping it unmounts (lazily) and stops them.
#[derive(Debug)]
pub struct MountGuard {
    mountpoint: PathBuf,
    /// The connection the process's transports serve; it ends when the kernel unmounts.
    conn: Arc<Conn>,
    /// Kept until the connection ends: it owns the mounted device fd.
    session: Option<Session<Handshake>>,
    fs: Arc<UnionFs>,
}

impl MountGuard {
    /// The directory the union is mounted on.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The union's counters (see [`crate::fs::stats::Stats::report`]).
    pub fn stats(&self) -> &crate::fs::stats::Stats {
        self.fs.stats()
    }

    /// A shared handle on the filesystem (for its SIGUSR1 report after the guard is consumed).
    pub fn fs(&self) -> Arc<UnionFs> {
        Arc::clone(&self.fs)
    }

    /// True once the kernel has ended the union's connection (it was unmounted).
    pub fn is_ended(&self) -> bool {
        self.conn.is_ended()
    }

    /// Serves until the filesystem is unmounted by someone (umount, a signal handler).
    pub fn wait(mut self) -> std::io::Result<()> {
        self.conn.wait_ended(None);
        self.session.take();
        Ok(())
    }

    /// Unmounts (lazily: open files stay usable until closed) and waits up to 10 s for the
    /// kernel to end the connection.
    pub fn unmount(mut self) -> Result<()> {
        self.stop(Duration::from_secs(10))
    }

    fn stop(&mut self, wait: Duration) -> Result<()> {
        if self.session.is_none() {
            return Ok(());
        }
        match sys::umount_lazy(&self.mountpoint) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(e) => {
                return Err(Error::sys(
                    format!("unmounting {}", self.mountpoint.display()),
                    e.desc(),
                    "",
                ))
            }
        }
        // Something may still hold a file open on the detached mount: the connection ends
        // when it is closed. Do not block the caller forever for it.
        if self.conn.wait_ended(Some(wait)) {
            self.session.take();
        }
        Ok(())
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = self.stop(Duration::from_secs(10));
    }
}

/// Lazily unmounts a union whose daemon may be gone (`--cleanup`). `Ok(false)`: not mounted.
pub fn cleanup(mountpoint: &Path) -> Result<bool> {
    match sys::umount_lazy(mountpoint) {
        Ok(()) => Ok(true),
        Err(Errno::EINVAL) => Ok(false),
        Err(e) => Err(Error::sys(
            format!("unmounting {}", mountpoint.display()),
            e.desc(),
            "run as root (or the user who mounted it)",
        )),
    }
}

/// True when `path` is a FUSE mount whose daemon is gone (its connection answers ENOTCONN):
/// a watchdog must leave alone a live union mounted there since.
pub fn is_dead_fuse_mount(path: &Path) -> bool {
    // Over io_uring, requests that reach the queues of a dead daemon end with ECANCELED.
    let dead = |e| matches!(e, Errno::ENOTCONN | Errno::ECONNABORTED | Errno::ECANCELED);
    match sys::open_path(path, libc::O_PATH | libc::O_DIRECTORY) {
        Ok(fd) => sys::fstatfs_type(fd.as_fd()).is_err_and(dead),
        Err(e) => dead(e),
    }
}
