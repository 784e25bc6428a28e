//! The union's operations, one per FUSE request, each a function that returns a result
//! (the transports, [`crate::transport`], turn results into replies). They keep the inode and
//! handle tables and call the layer model ([`crate::layer`]) for every rule of the layer
//! format; no layer rule lives here. Organised the way kernel overlayfs is:
//!
//! - `namei`: lookup and forget, and registering what the kernel learns of;
//! - `dir`: operations on names (mknod, mkdir, symlink, link, unlink, rmdir, rename);
//! - `attr`: attributes (getattr, setattr, readlink, statfs) and set-id rules;
//! - `file`: open files (open, create, read, write, release, fsync, ...), with the
//!   passthrough data path in `io`;
//! - `readdir`: directory streams;
//! - `xattr`: extended attributes;
//! - `copy_up`: bringing a node into the upper before its first change.

pub mod attr;
pub mod behind;
mod copy_up;
mod dir;
mod evict;
mod file;
pub mod handle;
pub mod inode;
mod io;
pub mod listing;
mod namei;
pub mod notify;
pub mod op;
pub mod owners;
mod readdir;
pub mod reply;
pub mod stats;
mod xattr;

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fuser::{FileAttr, InitFlags, KernelConfig};
use log::warn;

use crate::layer::ops;
use crate::layer::readdir as layer_readdir;
use crate::layer::resolve::{self, DirSet};
use crate::layer::{LayerIdx, Stack};
use crate::sys::{self, Errno, SysResult};
use handle::{Handles, OpenFile};
use inode::{Inodes, Node, ROOT};
use io::passthrough_privileged;

pub use attr::SetAttr;
pub use reply::{Created, Opened, Statfs};

/// Default node limit: about 90 MiB of node table.
pub const DEFAULT_MAX_NODES: usize = 500_000;

/// Tunables of the FUSE adapter.
#[derive(Debug, Clone)]
pub struct FsOptions {
    /// How long the kernel may cache attributes and entries (layers change only through us).
    pub ttl: Duration,
    /// Use FUSE passthrough for file data when the kernel and our privileges allow it.
    pub passthrough: bool,
    /// Nodes (inodes the kernel caches) kept at most; unused ones beyond go (0: no limit).
    pub max_nodes: usize,
    /// How owners are shown and written (`uidmapping=`, `squash_to_*`; see `owners`).
    pub owners: owners::Owners,
    /// Directories show link count 1 (`static_nlink`): no counting of subdirectories.
    pub static_nlink: bool,
    /// Let the kernel enforce POSIX ACLs (off with `noacl`: ACL xattrs are plain data then).
    pub acl: bool,
    /// No flushes (`volatile`, `fsync=0`): FSYNC is answered "not implemented", which the
    /// kernel takes as success and stops sending.
    pub volatile: bool,
    /// Copy-ups of files of at least this many bytes, opened for writing, are renamed in at
    /// once and flushed in the background while the writer goes on (`None`: every copy-up
    /// waits for its flush; see `behind`).
    pub flush_behind: Option<u64>,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            ttl: Duration::from_secs(3600),
            passthrough: true,
            max_nodes: DEFAULT_MAX_NODES,
            owners: owners::Owners::default(),
            static_nlink: false,
            acl: true,
            volatile: false,
            flush_behind: Some(behind::DEFAULT_MIN_SIZE),
        }
    }
}

/// The union filesystem served over FUSE.
#[derive(Debug)]
pub struct UnionFs {
    stack: Arc<Stack>,
    inodes: Arc<Inodes>,
    /// The node limit and its trimming thread (see `evict`).
    trim: Arc<evict::Trim>,
    handles: Handles,
    opts: FsOptions,
    /// `opts.passthrough` as settled with the kernel at FUSE_INIT.
    passthrough: std::sync::atomic::AtomicBool,
    /// Odd while a rename is changing paths: a request that built a path from the inode
    /// table concurrently and got ENOENT retries (see `retry`).
    rename_seq: AtomicU64,
    /// Union inodes whose name now lives under another nodeid (see `rehome`).
    redirect: dashmap::DashMap<u64, u64>,
    /// Passthrough state of inodes with open passthrough handles only (kept out of `Node`: a
    /// walk over millions of files opens few of them).
    pts: dashmap::DashMap<u64, inode::Passthrough>,
    /// Inodes with open handles that the daemon serves (direct I/O) while passthrough is on,
    /// by count. Later opens of such an inode are served the same way: a shared mapping of a
    /// direct-I/O handle puts the inode in the kernel's caching mode, where a passthrough open
    /// fails (EIO).
    daemon_io: dashmap::DashMap<u64, u32>,
    /// Inodes whose last passthrough handle closed, oldest first (see `keep_backing`).
    backing_lru: parking_lot::Mutex<std::collections::VecDeque<u64>>,
    next_synthetic: AtomicU64,
    /// Set once the session exists; used to drop kernel dentries from outside a request.
    notify: Arc<notify::Notify>,
    /// Open layer directories of recently used merged directories, keyed by nodeid with the
    /// layer list they were opened for. Directory fds follow renames, so an entry stays right
    /// until the directory's layers change or it is removed. Bounded (see `dirset_cap`).
    dirsets: dashmap::DashMap<u64, (Vec<LayerIdx>, Arc<DirSet>)>,
    dirset_cap: usize,
    /// How many closed files keep their passthrough registration (see `keep_backing`).
    kept_backing: usize,
    /// Nodes dropped since the mount (to return memory to the system now and then).
    freed: AtomicU64,
    /// Which callers get the first batch of a listing without attributes.
    listing: listing::ListHints,
    /// Node ids of removed directories the kernel may still hold (an open fd, a cwd), with
    /// their last attributes (fstat on such an fd still answers): the layer may give their
    /// inode number to a new file, which must then get another node id, or the kernel would
    /// take it for the dead directory.
    orphans: dashmap::DashMap<u64, libc::stat>,
    /// Request counters and the daemon's state, for the SIGUSR1 report.
    stats: stats::Stats,
    /// Copy-ups whose flush runs behind the writer (see `behind`).
    behind: Arc<behind::Behind>,
    /// Signalled when an inode's last passthrough handle closes (see `await_release`).
    released: (parking_lot::Mutex<()>, parking_lot::Condvar),
}

/// Who made a request: new files are theirs.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// The caller's user id.
    pub uid: u32,
    /// The caller's group id.
    pub gid: u32,
    /// The calling thread's id in the daemon's pid namespace (0 when it is not visible there).
    pub pid: u32,
}

impl Caller {
    /// Whether this caller lacks CAP_FSETID, so that its writes will clear set-id bits, as
    /// far as an open can tell: the kernel says so per WRITE, SETATTR and O_TRUNC open (those
    /// flags are read), never at a plain open, where a caller other than root stands in.
    pub fn lacks_fsetid(&self) -> bool {
        self.uid != 0
    }
}

/// A node with its location resolved for one request.
struct Ctx {
    node: Arc<Node>,
    rel: Vec<u8>,
    layer: LayerIdx,
    dir_layers: Vec<LayerIdx>,
}

/// Largest write (and read) the kernel sends in one request; ring buffers are sized by it.
pub const MAX_WRITE: u32 = 1 << 20;

/// How many recently closed files keep their passthrough registration (and one fd each), so
/// that opening them again costs no backing file setup; fewer under a small fd limit.
pub const KEPT_BACKING_FILES: usize = 128;

fn name_bytes(name: &OsStr) -> &[u8] {
    name.as_bytes()
}

impl UnionFs {
    /// A filesystem over `stack`.
    pub fn new(stack: Arc<Stack>, opts: FsOptions) -> Self {
        // Directory fds are cached within a quarter of what we may open, and so are closed
        // files' registrations: under a small limit (`ulimit -n 64`) caches that kept more
        // left no descriptor to open a file with, even once every file was closed.
        let fds = (sys::raise_nofile_limit() / 4).clamp(8, 16384) as usize;
        let dirset_cap = (fds / stack.layers.len().max(1)).max(4);
        let kept_backing = KEPT_BACKING_FILES.min(fds);
        let root = resolve::root_layers(&stack);
        let inodes = Arc::new(if opts.max_nodes > 0 {
            Inodes::new(root).with_eviction()
        } else {
            Inodes::new(root)
        });
        let behind = Arc::new(behind::Behind::new(Arc::clone(&stack), opts.flush_behind));
        UnionFs {
            stack,
            inodes,
            behind,
            trim: Arc::new(evict::Trim::new(opts.max_nodes)),
            handles: Handles::default(),
            passthrough: std::sync::atomic::AtomicBool::new(opts.passthrough),
            rename_seq: AtomicU64::new(0),
            redirect: dashmap::DashMap::new(),
            pts: dashmap::DashMap::new(),
            daemon_io: dashmap::DashMap::new(),
            backing_lru: parking_lot::Mutex::new(std::collections::VecDeque::new()),
            next_synthetic: AtomicU64::new(1),
            notify: Arc::default(),
            dirsets: dashmap::DashMap::new(),
            dirset_cap,
            kept_backing,
            freed: AtomicU64::new(0),
            listing: listing::ListHints::default(),
            orphans: dashmap::DashMap::new(),
            released: Default::default(),
            stats: stats::Stats::default(),
            opts,
        }
    }

    /// True while file data passes through to layer files (decided during FUSE_INIT).
    pub fn passthrough(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    /// The layer stack.
    pub fn stack(&self) -> &Arc<Stack> {
        &self.stack
    }

    /// The request counters (see [`stats::Stats::report`]).
    pub fn stats(&self) -> &stats::Stats {
        &self.stats
    }

    /// The SIGUSR1 report: the counters of this mount and of its layer code.
    pub fn report(&self) -> String {
        self.stats.report(&self.stack.counters)
    }

    /// The kernel ended the connection (unmount, with the last open file closed): copies not
    /// yet flushed are flushed, and a volatile union is written back and its marker removed,
    /// so the next mount accepts the upper.
    pub fn ended(&self) {
        self.behind.settle_at(b"");
        self.stack.end_volatile();
    }

    /// How long the kernel may cache the attributes and entries it is sent.
    pub fn ttl(&self) -> Duration {
        self.opts.ttl
    }

    /// Where the mount code hands over the connection's device for notifications.
    pub fn notify(&self) -> &notify::Notify {
        &self.notify
    }

    /// Runs `f`, again if it failed with ENOENT while a concurrent rename moved the path it
    /// built (the kernel does not lock ancestors of a renamed directory against other ops).
    fn retry<T>(&self, mut f: impl FnMut() -> SysResult<T>) -> SysResult<T> {
        let mut waited = 0u32;
        for _ in 0..64 {
            let mut seq = self.rename_seq.load(Ordering::Acquire);
            // A rename that materializes a large tree can take a while: wait for it (bounded).
            while seq % 2 == 1 && waited < 20_000 {
                waited += 1;
                if waited < 100 {
                    std::thread::yield_now();
                } else {
                    std::thread::sleep(std::time::Duration::from_micros(500));
                }
                seq = self.rename_seq.load(Ordering::Acquire);
            }
            match f() {
                Err(Errno::ENOENT) if self.rename_seq.load(Ordering::Acquire) != seq => continue,
                r => return r,
            }
        }
        f()
    }

    fn ctx(&self, ino: u64) -> SysResult<Ctx> {
        let node = self.inodes.get(ino)?;
        if ino != ROOT && node.state.read().epoch != self.inodes.epoch() {
            self.refresh_chain(&node)?;
        }
        let rel = self.inodes.rel_path(ino)?;
        let st = node.state.read();
        let (layer, dir_layers) = (st.layer, st.dir_layers.to_vec());
        drop(st);
        Ok(Ctx {
            node,
            rel,
            layer,
            dir_layers,
        })
    }

    /// Re-resolves a stale node and its stale ancestors, topmost first. A loop, not a
    /// recursion: the chain is as deep as the directory tree, and one stack frame per level
    /// overflowed a worker thread at 3,000 levels (a daemon crash).
    fn refresh_chain(&self, node: &Arc<Node>) -> SysResult<()> {
        let epoch = self.inodes.epoch();
        let mut chain = vec![Arc::clone(node)];
        let mut cur = node.ino;
        loop {
            let (parent, _) = self.inodes.primary(cur)?;
            if parent == ROOT {
                break;
            }
            let p = self.inodes.get(parent)?;
            if p.state.read().epoch == epoch {
                break;
            }
            if chain.len() > inode::MAX_DEPTH {
                return Err(Errno::ELOOP);
            }
            cur = parent;
            chain.push(p);
        }
        for n in chain.iter().rev() {
            self.refresh(n)?;
        }
        Ok(())
    }

    /// Re-resolves a node whose layer state predates a bulk change (see `Inodes::bump_epoch`);
    /// its parent is fresh (see `refresh_chain`).
    fn refresh(&self, node: &Arc<Node>) -> SysResult<()> {
        let (parent, name) = self.inodes.primary(node.ino)?;
        let p = self.ctx(parent)?;
        let set = DirSet::open(&self.stack, &p.rel, &p.dir_layers)?;
        let mut found = resolve::lookup(&self.stack, &set, &name)?.ok_or(Errno::ENOENT)?;
        if let Some(f) = ops::adopt_indexed(&self.stack, &p.rel, &name, &found)? {
            found = f;
        }
        let mut st = node.state.write();
        st.layer = found.layer;
        st.dir_layers = found.dir_layers.into();
        st.epoch = self.inodes.epoch();
        st.nlink = None;
        Ok(())
    }

    fn dir_ctx(&self, ino: u64) -> SysResult<(Ctx, Arc<DirSet>)> {
        let c = self.ctx(ino)?;
        if !c.node.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if let Some(e) = self.dirsets.get(&ino) {
            if e.0 == c.dir_layers {
                let set = Arc::clone(&e.1);
                drop(e);
                return Ok((c, set));
            }
        }
        let set = Arc::new(DirSet::open(&self.stack, &c.rel, &c.dir_layers)?);
        if self.dirsets.len() >= self.dirset_cap {
            self.dirsets.clear(); // crude, but keeps the fd count bounded
        }
        self.dirsets
            .insert(ino, (c.dir_layers.clone(), Arc::clone(&set)));
        Ok((c, set))
    }

    /// Attributes of a layer file as the union shows them (`dir_nlink` for merged dirs).
    fn attr(&self, ino: u64, st: &libc::stat, dir_nlink: Option<u32>) -> FileAttr {
        let nlink = dir_nlink.or_else(|| Some(self.stack.view_nlink(ino, st)));
        let mut a = attr::from_stat(ino, st, nlink);
        let o = &self.opts.owners;
        if !o.is_identity() {
            (a.uid, a.gid) = (o.shown_uid(a.uid), o.shown_gid(a.gid));
        }
        if self.opts.static_nlink && a.kind == fuser::FileType::Directory {
            a.nlink = 1;
        }
        a
    }

    fn stat_of(&self, c: &Ctx) -> SysResult<FileAttr> {
        let st = match self.held_dir(c) {
            Some(st) => st,
            None => sys::fstat(self.stack.open_rel(c.layer, &c.rel, libc::O_PATH)?.as_fd())?,
        };
        let nlink = if c.node.is_dir() {
            Some(self.dir_nlink(c, &st)?)
        } else {
            None
        };
        Ok(self.attr(c.node.ino, &st, nlink))
    }

    /// The stat of a directory through the fd its cached directory set holds, which spares the
    /// path walk (the kernel asks for a directory's attributes after every change in it).
    fn held_dir(&self, c: &Ctx) -> Option<libc::stat> {
        if !c.node.is_dir() {
            return None;
        }
        let e = self.dirsets.get(&c.node.ino)?;
        if e.0 != c.dir_layers {
            return None;
        }
        let (_, fd) = e.1.dirs.iter().find(|(l, _)| *l == c.layer)?;
        sys::fstat(fd.as_fd()).ok()
    }

    /// st_nlink of a directory: 2 + merged subdirectories (computed only for merged ones).
    fn dir_nlink(&self, c: &Ctx, st: &libc::stat) -> SysResult<u32> {
        if self.opts.static_nlink {
            return Ok(1);
        }
        if c.dir_layers.len() <= 1 && c.node.ino != ROOT {
            return Ok(st.st_nlink as u32);
        }
        if let Some(n) = c.node.state.read().nlink {
            return Ok(n);
        }
        let set = DirSet::open(&self.stack, &c.rel, &c.dir_layers)?;
        let n = 2 + layer_readdir::count_subdirs(&self.stack, &set, c.rel.is_empty())?;
        c.node.state.write().nlink = Some(n);
        Ok(n)
    }

    /// Some open handle of `ino`: the only way left to reach a file whose names are all gone.
    fn any_open(&self, ino: u64) -> Option<Arc<OpenFile>> {
        self.handles
            .files
            .iter()
            .find(|f| f.ino == ino)
            .map(|f| Arc::clone(f.value()))
    }

    fn parent_of(&self, ino: u64) -> u64 {
        if ino == ROOT {
            return ROOT;
        }
        self.inodes.primary(ino).map(|(p, _)| p).unwrap_or(ROOT)
    }

    /// Makes the kernel fetch the attributes of `ino` again (we changed them behind a request).
    fn tell_attrs_changed(&self, ino: u64) {
        // Offset -1: attributes only, no page cache (so no lock the writer may hold).
        let _ = self.notify.inval_inode(self.map_ino(ino), -1, 0);
    }

    /// Whether requests arrive over io_uring (then `/dev/fuse` carries only FORGET and
    /// INTERRUPT).
    pub(crate) fn ring_serving(&self) -> bool {
        self.stats.ring_requests.load(Ordering::Relaxed) > 0
    }

    /// Negotiates the connection's capabilities during FUSE_INIT.
    pub(crate) fn negotiate(&self, config: &mut KernelConfig) {
        self.stats.count(op::Op::Init);
        if self.passthrough() {
            let ok = passthrough_privileged()
                && config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH)
                && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            self.passthrough.store(ok, Ordering::Relaxed);
        }
        self.stats
            .passthrough
            .store(self.passthrough(), Ordering::Relaxed);
        log::info!(
            "data path: {}",
            if self.passthrough() {
                "passthrough"
            } else {
                "through the daemon"
            }
        );
        let want = InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_AUTO_INVAL_DATA
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            // O_TRUNC arrives with the open, so copy-up can skip the data it would discard.
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            // umask left to us so default ACLs work.
            | InitFlags::FUSE_DONT_MASK
            // The kernel then marks files without set-id bits or capabilities S_NOSEC and stops
            // asking for security.capability before every write (one round trip per write(2)
            // otherwise, even on passthrough files); set-id bits become ours to clear, which
            // is why a set-id file opened for writing gets no passthrough (fs/io.rs).
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2
            // Files we answer with direct I/O (set-id files opened for writing, see above;
            // writers beside a passthrough reader) can still be mapped shared and writable,
            // as on any other filesystem: the kernel keeps such a mapping coherent itself.
            | InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP;
        // ACLs checked and cached by the kernel, unless `noacl`: then it checks modes only and
        // passes ACL xattrs through as data (or refuses them, in a user namespace).
        let want = if self.opts.acl {
            want | InitFlags::FUSE_POSIX_ACL
        } else {
            want
        };
        let supported = config.capabilities() & want;
        if let Err(missing) = config.add_capabilities(supported) {
            warn!("kernel refused FUSE capabilities {missing:?}");
        }
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(1 << 20);
    }
}

/// Marks a rename in progress (odd sequence) until dropped.
struct SeqGuard<'a>(&'a AtomicU64);

impl<'a> SeqGuard<'a> {
    fn enter(seq: &'a AtomicU64) -> Self {
        seq.fetch_add(1, Ordering::AcqRel);
        SeqGuard(seq)
    }
}

impl Drop for SeqGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}
