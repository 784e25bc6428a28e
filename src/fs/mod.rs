//! The FUSE operations: turn kernel requests (from either transport, [`crate::transport`])
//! into calls on the layer model
//! ([`crate::layer`]), keep the inode and handle tables, and map errors to errno. No layer rule
//! lives here.

pub mod attr;
pub mod handle;
pub mod inode;
mod io;
pub mod listing;
pub mod reply;

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    OpenFlags, RenameFlags, TimeOrNow,
};
use log::{debug, warn};
use reply::{
    AttrOut, Backing, CreateOut, DataOut, DirOut, DirPlusOut, EmptyOut, EntryOut, LseekOut,
    OpenOut, Register, StatfsOut, WriteOut, XattrOut,
};

use crate::layer::copyup::CopyData;
use crate::layer::metacopy;
use crate::layer::ops::{self, NewKind, Owner, RenameMode};
use crate::layer::readdir;
use crate::layer::readdir::MergedEntry;
use crate::layer::resolve::{self, DirSet, Found};
use crate::layer::stack::join;
use crate::layer::whiteout;
use crate::layer::{LayerIdx, Stack};
use crate::sys::{self, Errno, SysResult};
use handle::{Handles, OpenDir, OpenFile};
use inode::{Inodes, Node, ROOT, XATTRS_NONE, XATTRS_SOME, XATTRS_UNKNOWN};
use io::passthrough_privileged;
use std::sync::atomic::{AtomicU64, Ordering};

/// Tunables of the FUSE adapter.
#[derive(Debug, Clone)]
pub struct FsOptions {
    /// How long the kernel may cache attributes and entries (layers change only through us).
    pub ttl: Duration,
    /// Use FUSE passthrough for file data when the kernel and our privileges allow it.
    pub passthrough: bool,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            ttl: Duration::from_secs(3600),
            passthrough: true,
        }
    }
}

/// The union filesystem served over FUSE.
#[derive(Debug)]
pub struct UnionFs {
    stack: Arc<Stack>,
    inodes: Inodes,
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
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
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

fn fe(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e as i32)
}

fn name_bytes(name: &OsStr) -> &[u8] {
    name.as_bytes()
}

/// How long an open that conflicts with a passthrough reader waits for that reader's RELEASE
/// (a reader really still open costs the writer this, once per file).
const RELEASE_GRACE: Duration = Duration::from_millis(100);

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
        UnionFs {
            stack,
            inodes: Inodes::new(root),
            handles: Handles::default(),
            passthrough: std::sync::atomic::AtomicBool::new(opts.passthrough),
            rename_seq: AtomicU64::new(0),
            redirect: dashmap::DashMap::new(),
            pts: dashmap::DashMap::new(),
            daemon_io: dashmap::DashMap::new(),
            backing_lru: parking_lot::Mutex::new(std::collections::VecDeque::new()),
            next_synthetic: AtomicU64::new(1),
            notifier: Arc::new(std::sync::OnceLock::new()),
            dirsets: dashmap::DashMap::new(),
            dirset_cap,
            kept_backing,
            freed: AtomicU64::new(0),
            listing: listing::ListHints::default(),
            orphans: dashmap::DashMap::new(),
            released: Default::default(),
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

    /// Where the mount code hands over the session's notifier once it exists.
    pub fn notifier_slot(&self) -> Arc<std::sync::OnceLock<fuser::Notifier>> {
        Arc::clone(&self.notifier)
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
        attr::from_stat(ino, st, nlink)
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
        if c.dir_layers.len() <= 1 && c.node.ino != ROOT {
            return Ok(st.st_nlink as u32);
        }
        if let Some(n) = c.node.state.read().nlink {
            return Ok(n);
        }
        let set = DirSet::open(&self.stack, &c.rel, &c.dir_layers)?;
        let n = 2 + readdir::count_subdirs(&self.stack, &set, c.rel.is_empty())?;
        c.node.state.write().nlink = Some(n);
        Ok(n)
    }

    /// Registers a found entry as a kernel-referenced node and builds its attributes.
    fn remember(&self, parent: u64, prel: &[u8], name: &[u8], f: &Found) -> SysResult<FileAttr> {
        let adopted = ops::adopt_indexed(&self.stack, prel, name, f)?;
        if adopted.is_some() {
            self.inodes.mark_upper_chain(parent);
        }
        let f = adopted.as_ref().unwrap_or(f);
        let kind = f.st.st_mode & libc::S_IFMT;
        let mut ino = self.map_ino(f.ino);
        if self.orphans.contains_key(&ino) {
            ino = self.synthetic_ino();
            self.redirect.insert(f.ino, ino);
        }
        let node = self
            .inodes
            .upsert(ino, kind, parent, name, f.layer, f.dir_layers.clone(), 1);
        if node.lookups.load(Ordering::Relaxed) == 1 {
            let held = self.inodes.len() as u64;
            self.stack.stats.inodes.store(held, Ordering::Relaxed);
        }
        if f.is_dir() && f.dir_layers.len() > 1 {
            // Merged directory: 2 + subdirectories, counted once and kept until they change.
            let cached = node.state.read().nlink;
            let n = match cached {
                Some(n) => n,
                None => {
                    let set = DirSet::open(&self.stack, &join(prel, name), &f.dir_layers)?;
                    let n = 2 + readdir::count_subdirs(&self.stack, &set, false)?;
                    node.state.write().nlink = Some(n);
                    n
                }
            };
            return Ok(self.attr(ino, &f.st, Some(n)));
        }
        Ok(self.attr(ino, &f.st, None))
    }

    fn do_lookup(&self, parent: u64, name: &[u8]) -> SysResult<Option<FileAttr>> {
        if whiteout::is_hidden(name) {
            return Ok(None);
        }
        let (p, set) = self.dir_ctx(parent)?;
        match resolve::lookup(&self.stack, &set, name)? {
            Some(f) => self.remember(parent, &p.rel, name, &f).map(Some),
            None => Ok(None),
        }
    }

    /// Copies a node up into the upper (once, whoever asks first).
    fn ensure_upper(&self, node: &Arc<Node>, data: CopyData) -> SysResult<()> {
        if !self.stack.has_upper {
            return Err(Errno::EROFS);
        }
        {
            let st = node.state.read();
            if st.layer == 0 && st.epoch == self.inodes.epoch() {
                return Ok(());
            }
        }
        let _guard = node.copy_lock.lock();
        let c = self.ctx(node.ino)?;
        if c.layer == 0 {
            return Ok(());
        }
        let (parent, name) = self.inodes.primary(node.ino)?;
        let prel = self.inodes.rel_path(parent)?;
        let joined = ops::copy_up(&self.stack, &prel, &name, c.layer, node.is_dir(), data)?;
        self.inodes.mark_upper_chain(node.ino);
        if joined {
            // Its other names got upper links too, maybe in directories new to the upper:
            // every node re-resolves its layers on next use.
            self.inodes.bump_epoch();
        }
        Ok(())
    }

    /// After directory node `ino` (last seen as `st`) lost its name: its inode number may come
    /// back for a new file (its layer fd goes, so the layer can reuse it) while the kernel
    /// still holds it.
    fn dir_removed(&self, ino: u64, st: &libc::stat) {
        self.dirsets.remove(&ino);
        if self.inodes.get(ino).is_ok() {
            self.orphans.insert(ino, *st);
        }
    }

    /// Drops the kept passthrough registration of file `ino`, which lost a name, unless a
    /// handle still uses it: the registration holds the file open, and the space of a deleted
    /// file comes back only when nothing does (on a full upper, deleting must make room).
    fn release_closed_backing(&self, ino: u64) {
        self.pts.remove_if(&ino, |_, pt| pt.opens == 0);
    }

    /// Whether bringing `f` into the upper also linked its other names there (the rule of
    /// `copyup::joins_links`), so that nodes resolved before may be stale.
    fn links_joined(&self, f: &Found) -> bool {
        !self.stack.is_upper(f.layer) && crate::layer::copyup::joins_links(&f.st)
    }

    /// mknod, mkdir and symlink: create, then answer with the new entry.
    #[allow(clippy::too_many_arguments)]
    fn create_entry(
        &self,
        req: &Caller,
        parent: u64,
        name: &[u8],
        kind: NewKind,
        mode: u32,
        umask: u32,
        reply: impl EntryOut,
    ) {
        let is_dir = matches!(kind, NewKind::Dir);
        let r = self
            .do_create(req, parent, name, kind, mode, umask)
            .map(|(a, _)| a);
        if is_dir {
            // After the new subdirectory exists, before the kernel asks for the parent again.
            self.inodes.invalidate_nlink(parent);
        }
        self.entry_reply(reply, r);
    }

    fn entry_reply(&self, reply: impl EntryOut, r: SysResult<FileAttr>) {
        match r {
            Ok(a) => reply.entry(&self.opts.ttl, &a, Generation(0)),
            Err(e) => reply.error(fe(e)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn do_create(
        &self,
        req: &Caller,
        parent: u64,
        name: &[u8],
        kind: NewKind,
        mode: u32,
        umask: u32,
    ) -> SysResult<(FileAttr, Option<OwnedFd>)> {
        let owner = Owner {
            uid: req.uid,
            gid: req.gid,
            umask,
        };
        let (p, found, fd) = self.retry(|| {
            let (p, set) = self.dir_ctx(parent)?;
            let (found, fd) = ops::create(&self.stack, &p.rel, &set, name, &kind, mode, owner)?;
            Ok((p, found, fd))
        })?;
        self.inodes.mark_upper_chain(parent);
        let a = self.remember(parent, &p.rel, name, &found)?;
        Ok((a, fd))
    }

    /// A regular file just opened as `fd` from `layer` may be a metadata-only stub (a lower
    /// one: an upper with stubs made a layer). A reader gets the file it points at in the
    /// layers below; a writer, always on an upper stub, first fills in its data (or, with
    /// O_TRUNC, only drops the record: the open has already thrown the data away). Returns the
    /// fd to use and whether it is the upper's.
    fn resolve_stub(
        &self,
        node: &Node,
        fd: OwnedFd,
        layer: LayerIdx,
        writable: bool,
        trunc: bool,
    ) -> SysResult<(OwnedFd, bool)> {
        let in_upper = self.stack.is_upper(layer);
        let Some(stub) = metacopy::read(&self.stack, fd.as_fd())? else {
            return Ok((fd, in_upper));
        };
        if !in_upper || (!writable && !trunc) {
            return Ok((metacopy::open_source(&self.stack, &stub, layer)?, false));
        }
        let _guard = node.copy_lock.lock();
        if metacopy::read(&self.stack, fd.as_fd())?.is_some() {
            if trunc {
                metacopy::drop_record(&self.stack, fd.as_fd())?;
            } else {
                metacopy::fill(&self.stack, fd.as_fd(), &stub)?;
            }
        }
        Ok((fd, true))
    }

    /// Some open handle of `ino`: the only way left to reach a file whose names are all gone.
    fn any_open(&self, ino: u64) -> Option<Arc<OpenFile>> {
        self.handles
            .files
            .iter()
            .find(|f| f.ino == ino)
            .map(|f| Arc::clone(f.value()))
    }

    fn open_file(
        &self,
        ino: u64,
        flags: i32,
        unprivileged: bool,
        register: Register<'_>,
    ) -> SysResult<(u64, FopenFlags, Option<Arc<Backing>>)> {
        let node = self.inodes.get(ino)?;
        let acc = flags & libc::O_ACCMODE;
        let writable = acc != libc::O_RDONLY;
        let clean = open_flags(flags);
        let trunc = flags & libc::O_TRUNC != 0;
        let opened = (|| {
            if writable || trunc {
                // An O_TRUNC open throws the data away: copy none of it.
                let data = if trunc {
                    CopyData::Empty
                } else {
                    CopyData::Full
                };
                self.ensure_upper(&node, data)?;
            }
            let c = self.ctx(ino)?;
            let fd = if self.stack.is_upper(c.layer) {
                self.stack.open_rel(c.layer, &c.rel, clean)?
            } else {
                // Reading a lower layer must not even move its atime.
                self.stack
                    .open_rel(c.layer, &c.rel, clean | libc::O_NOATIME)
                    .or_else(|_| self.stack.open_rel(c.layer, &c.rel, clean))?
            };
            Ok((fd, c.layer))
        })();
        let (fd, in_upper) = match opened {
            Ok((fd, layer)) if node.kind == libc::S_IFREG => {
                self.resolve_stub(&node, fd, layer, writable, trunc)?
            }
            Ok((fd, layer)) => (fd, self.stack.is_upper(layer)),
            // Unlinked but still open (e.g. reopened through /proc/PID/fd): reopen that file.
            Err(Errno::ENOENT) => match self.any_open(ino) {
                Some(f) if f.in_upper || !writable => (
                    sys::reopen(f.fd.as_fd(), clean & !libc::O_TRUNC)?,
                    f.in_upper,
                ),
                _ => return Err(Errno::ENOENT),
            },
            Err(e) => return Err(e),
        };
        if self.passthrough() && in_upper {
            let conflict = || {
                self.pts
                    .get(&node.ino)
                    .is_some_and(|pt| pt.opens > 0 && !(pt.upper && pt.writable))
            };
            self.await_release(conflict);
            if conflict() {
                return Err(self.rehome(&node));
            }
        }
        Ok(self.new_handle(&node, fd, writable, in_upper, unprivileged, register))
    }

    /// The merged listing: names, types and layers only. Attributes are looked up lazily for
    /// the entries readdirplus actually sends, so `find` on a cold tree never stats files.
    fn snapshot(&self, ino: u64) -> SysResult<Vec<MergedEntry>> {
        let (c, set) = self.dir_ctx(ino)?;
        readdir::list(&self.stack, &set, c.rel.is_empty())
    }

    fn dir_entries(&self, ino: u64, fh: u64, offset: u64) -> SysResult<Arc<Vec<MergedEntry>>> {
        let d = self.handles.dir(fh).ok_or(Errno::EBADF)?;
        let mut guard = d.entries.lock();
        // A read from offset 0 is a (re)wind: take a fresh snapshot.
        if offset == 0 || guard.is_none() {
            *guard = Some(Arc::new(self.snapshot(ino)?));
        }
        guard.as_ref().map(Arc::clone).ok_or(Errno::EIO)
    }

    fn parent_of(&self, ino: u64) -> u64 {
        if ino == ROOT {
            return ROOT;
        }
        self.inodes.primary(ino).map(|(p, _)| p).unwrap_or(ROOT)
    }

    #[allow(clippy::too_many_arguments)]
    fn do_setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<FileHandle>,
        kill_setid: bool,
    ) -> SysResult<FileAttr> {
        let node = self.inodes.get(ino)?;
        let open = fh.and_then(|f| self.handles.file(f.0));
        // A file opened for writing already lives in the upper: use its fd (it may be unlinked).
        let mut via_fd = open.filter(|f| f.writable);
        let target: OwnedFd = match &via_fd {
            Some(f) => f.fd.try_clone().map_err(|_| Errno::EMFILE)?,
            None => {
                let data = match size {
                    Some(0) => CopyData::Empty,
                    Some(_) => CopyData::Full,
                    None => CopyData::MetaOnly,
                };
                let by_path = self
                    .ensure_upper(&node, data)
                    .and_then(|_| self.ctx(ino))
                    .and_then(|c| self.stack.open_rel(0, &c.rel, libc::O_PATH));
                match by_path {
                    Ok(fd) => fd,
                    // All names gone: an open handle is the file (fchmod on an unlinked file).
                    Err(Errno::ENOENT) => {
                        let f = self
                            .any_open(ino)
                            .filter(|f| f.in_upper)
                            .ok_or(Errno::ENOENT)?;
                        let fd = f.fd.try_clone().map_err(|_| Errno::EMFILE)?;
                        if f.writable {
                            via_fd = Some(f);
                        }
                        fd
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let is_link = node.kind == libc::S_IFLNK;
        if uid.is_some() || gid.is_some() {
            sys::fchown_fd(target.as_fd(), uid, gid)?;
        }
        if let Some(m) = mode {
            if !is_link {
                sys::fchmod_fd(target.as_fd(), m & 0o7777)?;
            }
        }
        // A stub's data must be its own before its size changes (none needed for size 0).
        let stub = match size {
            Some(_) if node.kind == libc::S_IFREG && via_fd.is_none() => {
                metacopy::read(&self.stack, target.as_fd())?
            }
            _ => None,
        };
        if let (Some(stub), Some(sz)) = (&stub, size) {
            if sz != 0 {
                let _guard = node.copy_lock.lock();
                metacopy::fill(&self.stack, target.as_fd(), stub)?;
            }
        }
        if let Some(sz) = size {
            match &via_fd {
                Some(f) => sys::ftruncate(f.fd.as_fd(), sz)?,
                None => {
                    let w = sys::reopen(target.as_fd(), libc::O_WRONLY)?;
                    sys::ftruncate(w.as_fd(), sz)?;
                }
            }
            if stub.is_some() && sz == 0 {
                metacopy::drop_record(&self.stack, target.as_fd())?;
            }
        }
        if kill_setid && mode.is_none() && !is_link {
            drop_setid(target.as_fd())?;
        }
        if atime.is_some() || mtime.is_some() {
            let times = [attr::timespec(atime), attr::timespec(mtime)];
            if is_link {
                let (parent, name) = self.inodes.primary(ino)?;
                let prel = self.inodes.rel_path(parent)?;
                let pfd = self
                    .stack
                    .open_rel(0, &prel, libc::O_PATH | libc::O_DIRECTORY)?;
                let cname = CString::new(name).map_err(|_| Errno::EINVAL)?;
                sys::utimensat(pfd.as_fd(), &cname, &times)?;
            } else {
                sys::utimens_fd(target.as_fd(), &times)?;
            }
        }
        let st = sys::fstat(target.as_fd())?;
        let nlink = if node.is_dir() {
            let c = self.ctx(ino)?;
            Some(self.dir_nlink(&c, &st)?)
        } else {
            None
        };
        Ok(self.attr(ino, &st, nlink))
    }

    fn do_rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: RenameFlags,
    ) -> SysResult<()> {
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return Err(Errno::EINVAL);
        }
        let mode = RenameMode {
            noreplace: flags.contains(RenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(RenameFlags::RENAME_EXCHANGE),
        };
        let (sp, sset) = self.dir_ctx(parent)?;
        let (dp, dset) = self.dir_ctx(newparent)?;
        let _seq = SeqGuard::enter(&self.rename_seq);
        let renamed = ops::rename(
            &self.stack,
            &sp.rel,
            &sset,
            name,
            &dp.rel,
            &dset,
            newname,
            mode,
        );
        let (src, dst) = match renamed {
            Ok(r) => r,
            Err(e) => {
                // A directory rename that failed late (a full upper) may already have copied
                // its tree into the upper and made it opaque: nodes below it that still say
                // "lower" would no longer be found once the rename is retried and succeeds.
                let is_dir = |set: &DirSet, n: &[u8]| {
                    resolve::lookup(&self.stack, set, n)
                        .is_ok_and(|f| f.is_some_and(|f| f.is_dir()))
                };
                if is_dir(&sset, name) || (mode.exchange && is_dir(&dset, newname)) {
                    self.inodes.bump_epoch();
                }
                return Err(e);
            }
        };
        let moved_tree = |f: &Found| f.is_dir() && f.dir_layers.iter().any(|l| *l != 0);
        let exchanged = dst.as_ref().filter(|_| mode.exchange);
        if moved_tree(&src)
            || dst.as_ref().is_some_and(moved_tree)
            || self.links_joined(&src)
            || exchanged.is_some_and(|d| self.links_joined(d))
        {
            // Whole trees, or the other names of a lower hard link, moved into the upper:
            // every node re-resolves on next use.
            self.inodes.bump_epoch();
        }
        self.inodes.mark_upper_chain(parent);
        self.inodes.mark_upper_chain(newparent);
        if mode.exchange {
            if let Some(d) = &dst {
                self.inodes
                    .move_alias(self.map_ino(d.ino), newparent, newname, parent, name);
            }
        } else if let Some(d) = &dst {
            if d.is_dir() {
                self.dir_removed(self.map_ino(d.ino), &d.st);
            }
            if self.map_ino(d.ino) != self.map_ino(src.ino) {
                self.inodes
                    .drop_alias(self.map_ino(d.ino), newparent, newname);
                if !d.is_dir() {
                    self.release_closed_backing(self.map_ino(d.ino));
                }
            }
        }
        if dst
            .as_ref()
            .is_none_or(|d| self.map_ino(d.ino) != self.map_ino(src.ino))
            || mode.exchange
        {
            self.inodes
                .move_alias(self.map_ino(src.ino), parent, name, newparent, newname);
        }
        if let Ok(n) = self.inodes.get(self.map_ino(src.ino)) {
            let mut st = n.state.write();
            st.layer = 0;
            if n.is_dir() {
                st.dir_layers = Box::new([0]);
            }
        }
        if let Some(d) = &dst {
            if mode.exchange {
                if let Ok(n) = self.inodes.get(self.map_ino(d.ino)) {
                    let mut st = n.state.write();
                    st.layer = 0;
                    if n.is_dir() {
                        st.dir_layers = Box::new([0]);
                    }
                }
            }
        }
        self.inodes.invalidate_nlink(parent);
        self.inodes.invalidate_nlink(newparent);
        Ok(())
    }

    /// Copies a node up and applies an xattr change to its upper copy.
    fn change_xattr(
        &self,
        ino: u64,
        name: &OsStr,
        f: impl FnOnce(sys::At<'_>, &CString) -> SysResult<()>,
    ) -> SysResult<()> {
        let n = name_bytes(name);
        if whiteout::is_internal_xattr(n) {
            return Err(Errno::EPERM);
        }
        let node = self.inodes.get(ino)?;
        self.ensure_upper(&node, CopyData::MetaOnly)?;
        let t = self.xattr_target(ino)?;
        let c = CString::new(n).map_err(|_| Errno::EINVAL)?;
        let r = f(t.at(), &c);
        node.xattrs.store(XATTRS_UNKNOWN, Ordering::Release);
        r
    }

    /// Where a node's xattrs live: (its parent dir in its layer, its name), or the root itself.
    fn xattr_target(&self, ino: u64) -> SysResult<XTarget> {
        self.retry(|| self.xattr_target_once(ino))
    }

    fn xattr_target_once(&self, ino: u64) -> SysResult<XTarget> {
        let c = self.ctx(ino)?;
        if ino == ROOT {
            let dir = self
                .stack
                .open_rel(c.layer, b"", libc::O_PATH | libc::O_DIRECTORY)?;
            return Ok(XTarget {
                dir,
                name: c".".to_owned(),
            });
        }
        let (parent, name) = self.inodes.primary(ino)?;
        let prel = self.inodes.rel_path(parent)?;
        let dir = self
            .stack
            .open_rel(c.layer, &prel, libc::O_PATH | libc::O_DIRECTORY)?;
        Ok(XTarget {
            dir,
            name: CString::new(name).map_err(|_| Errno::EINVAL)?,
        })
    }
}

/// An object for xattr calls: a directory fd and a name in it.
struct XTarget {
    dir: OwnedFd,
    name: CString,
}

impl XTarget {
    fn at(&self) -> sys::At<'_> {
        sys::At::new(self.dir.as_fd(), &self.name)
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

fn empty_reply(reply: impl EmptyOut, r: SysResult<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(fe(e)),
    }
}

fn reply_xattr(reply: impl XattrOut, size: u32, data: SysResult<Vec<u8>>) {
    match data {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(fuser::Errno::ERANGE),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(fe(e)),
    }
}

/// A missing SELinux label is reported as "not supported" rather than "no such attribute".
///
/// `ls -l` asks for `security.selinux` on every file it lists, and FUSE caches no xattrs, so
/// each ask is a round trip to the daemon (50,000 of them for `ls -lR` over 50,000 files, all
/// of its warm time). ENOTSUP is what `ls` (and libselinux users) take as "this filesystem has
/// no labels", and remember per device, so they stop asking. The answer is true where we can
/// see the request at all: when SELinux is active it answers `security.selinux` inside the
/// kernel and the request never reaches a FUSE daemon. A label a layer does hold is returned.
fn unlabelled(name: &OsStr, r: SysResult<Vec<u8>>) -> SysResult<Vec<u8>> {
    match r {
        Err(Errno::ENODATA) if name.as_bytes() == b"security.selinux" => Err(Errno::EOPNOTSUPP),
        r => r,
    }
}

/// Clears set-user-ID, and set-group-ID on a group-executable file, as a write, truncate or
/// chown by a caller without CAP_FSETID must: with FUSE_HANDLE_KILLPRIV_V2 the kernel leaves
/// that to us (our own writes, as a privileged process, would keep them). Returns whether the
/// mode changed.
fn drop_setid(fd: std::os::fd::BorrowedFd<'_>) -> SysResult<bool> {
    let mode = sys::fstat(fd)?.st_mode;
    let kill = setid_bits(mode);
    if kill == 0 {
        return Ok(false);
    }
    sys::fchmod_fd(fd, mode & 0o7777 & !kill)?;
    Ok(true)
}

/// The set-id bits a write by an unprivileged caller removes from `mode`.
pub(super) fn setid_bits(mode: u32) -> u32 {
    let mut kill = mode & libc::S_ISUID;
    if mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP {
        kill |= libc::S_ISGID;
    }
    kill
}

fn read_xattr(t: &XTarget, name: &CString) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    loop {
        match sys::getxattr(t.at(), name, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::ERANGE) if buf.len() < (1 << 20) => {
                let need = sys::getxattr(t.at(), name, &mut [])?;
                buf.resize(need.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e),
        }
    }
}

fn list_xattrs(t: &XTarget) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    let n = loop {
        match sys::listxattr(t.at(), &mut buf) {
            Ok(n) => break n,
            Err(Errno::ERANGE) if buf.len() < (1 << 20) => {
                let need = sys::listxattr(t.at(), &mut [])?;
                buf.resize(need.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e),
        }
    };
    let mut out = Vec::with_capacity(n);
    for name in buf[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if !whiteout::is_internal_xattr(name) {
            out.extend_from_slice(name);
            out.push(0);
        }
    }
    Ok(out)
}

/// The operations, one per FUSE request, answering through either transport (see [`reply`]).
impl UnionFs {
    /// Clears the set-id bits of an open file (see `drop_setid`) and, when there were any, has
    /// the kernel drop its cached attributes: OPEN and WRITE answer none, so it would show
    /// the old mode for its attribute TTL.
    fn drop_setid_of(&self, f: &OpenFile) -> SysResult<()> {
        if drop_setid(f.fd.as_fd())? {
            self.tell_attrs_changed(f.ino);
        }
        Ok(())
    }

    /// Makes the kernel fetch the attributes of `ino` again (we changed them behind a request).
    fn tell_attrs_changed(&self, ino: u64) {
        if let Some(n) = self.notifier.get() {
            // Offset -1: attributes only, no page cache (so no lock the writer may hold).
            let _ = n.inval_inode(INodeNo(self.map_ino(ino)), -1, 0);
        }
    }

    /// Whether requests arrive over io_uring (then `/dev/fuse` carries only FORGET and
    /// INTERRUPT).
    pub(crate) fn ring_serving(&self) -> bool {
        self.stack.stats.ring_requests.load(Ordering::Relaxed) > 0
    }

    /// Negotiates the connection's capabilities during FUSE_INIT.
    pub(crate) fn negotiate(&self, config: &mut KernelConfig) {
        self.stack.stats.count("init");
        if self.passthrough() {
            let ok = passthrough_privileged()
                && config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH)
                && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            self.passthrough.store(ok, Ordering::Relaxed);
        }
        self.stack
            .stats
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
            // ACLs checked and cached by the kernel; umask left to us so default ACLs work.
            | InitFlags::FUSE_POSIX_ACL
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
        let supported = config.capabilities() & want;
        if let Err(missing) = config.add_capabilities(supported) {
            warn!("kernel refused FUSE capabilities {missing:?}");
        }
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(1 << 20);
    }

    pub(crate) fn lookup(&self, parent: INodeNo, name: &OsStr, reply: impl EntryOut) {
        self.stack.stats.count("lookup");
        match self.retry(|| self.do_lookup(parent.0, name_bytes(name))) {
            Ok(Some(a)) => {
                self.listing.found_in(parent.0);
                reply.entry(&self.opts.ttl, &a, Generation(0))
            }
            Ok(None) => {
                // A negative entry: repeated stats of a missing name stay in the kernel.
                let mut a = attr::from_stat(0, &zero_stat(), None);
                a.ino = INodeNo(0);
                reply.entry(&self.opts.ttl, &a, Generation(0));
            }
            Err(e) => reply.error(fe(e)),
        }
    }

    pub(crate) fn forget(&self, ino: INodeNo, nlookup: u64) {
        self.stack.stats.count("forget");
        self.inodes.forget(ino.0, nlookup);
        if self.inodes.get(ino.0).is_err() {
            self.dirsets.remove(&ino.0);
            self.orphans.remove(&ino.0);
            let held = self.inodes.len() as u64;
            self.stack.stats.inodes.store(held, Ordering::Relaxed);
            // After the kernel drops a large part of its cache, hand the memory back: the
            // allocator keeps freed nodes otherwise, and RSS would not fall.
            if self.freed.fetch_add(1, Ordering::Relaxed) % 16384 == 16383 {
                sys::trim_heap();
            }
        }
    }

    pub(crate) fn getattr(&self, ino: INodeNo, fh: Option<FileHandle>, reply: impl AttrOut) {
        self.stack.stats.count("getattr");
        let r = (|| {
            // The file as it is now, by name, even when asked through a handle: a handle
            // opened before a copy-up holds the lower copy, whose attributes are old.
            match self.retry(|| self.ctx(ino.0).and_then(|c| self.stat_of(&c))) {
                Err(Errno::ENOENT) => {
                    // Removed but still held: an open file, or a directory (no links left).
                    if let Some(st) = self.orphans.get(&ino.0).map(|s| *s) {
                        return Ok(self.attr(ino.0, &st, Some(0)));
                    }
                    let f = fh
                        .and_then(|f| self.handles.file(f.0))
                        .or_else(|| self.any_open(ino.0))
                        .ok_or(Errno::ENOENT)?;
                    let st = sys::fstat(self.current_fd(&f))?;
                    Ok(self.attr(ino.0, &st, None))
                }
                r => r,
            }
        })();
        match r {
            Ok(a) => reply.attr(&self.opts.ttl, &a),
            Err(e) => reply.error(fe(e)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn setattr(
        &self,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<FileHandle>,
        kill_setid: bool,
        reply: impl AttrOut,
    ) {
        self.stack.stats.count("setattr");
        let r = self
            .retry(|| self.do_setattr(ino.0, mode, uid, gid, size, atime, mtime, fh, kill_setid));
        match r {
            Ok(a) => reply.attr(&self.opts.ttl, &a),
            Err(e) => reply.error(fe(e)),
        }
    }

    pub(crate) fn readlink(&self, ino: INodeNo, reply: impl DataOut) {
        self.stack.stats.count("readlink");
        let r = self.retry(|| {
            let c = self.ctx(ino.0)?;
            let fd = self.stack.open_rel(c.layer, &c.rel, libc::O_PATH)?;
            sys::readlinkat(fd.as_fd(), c"")
        });
        match r {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(fe(e)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn mknod(
        &self,
        req: &Caller,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: impl EntryOut,
    ) {
        self.stack.stats.count("mknod");
        let kind = if mode & libc::S_IFMT == libc::S_IFREG {
            NewKind::File {
                flags: libc::O_WRONLY,
            }
        } else {
            NewKind::Node { rdev: rdev as u64 }
        };
        self.create_entry(req, parent.0, name_bytes(name), kind, mode, umask, reply);
    }

    pub(crate) fn mkdir(
        &self,
        req: &Caller,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: impl EntryOut,
    ) {
        self.stack.stats.count("mkdir");
        self.create_entry(
            req,
            parent.0,
            name_bytes(name),
            NewKind::Dir,
            mode,
            umask,
            reply,
        );
    }

    pub(crate) fn unlink(&self, parent: INodeNo, name: &OsStr, reply: impl EmptyOut) {
        self.stack.stats.count("unlink");
        self.remove(parent.0, name_bytes(name), false, reply);
    }

    pub(crate) fn rmdir(&self, parent: INodeNo, name: &OsStr, reply: impl EmptyOut) {
        self.stack.stats.count("rmdir");
        self.remove(parent.0, name_bytes(name), true, reply);
    }

    pub(crate) fn symlink(
        &self,
        req: &Caller,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: impl EntryOut,
    ) {
        self.stack.stats.count("symlink");
        let kind = NewKind::Symlink(target.as_os_str().as_bytes().to_vec());
        let mode = libc::S_IFLNK | 0o777;
        self.create_entry(req, parent.0, name_bytes(link_name), kind, mode, 0, reply);
    }

    pub(crate) fn rename(
        &self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: impl EmptyOut,
    ) {
        self.stack.stats.count("rename");
        empty_reply(
            reply,
            self.do_rename(
                parent.0,
                name_bytes(name),
                newparent.0,
                name_bytes(newname),
                flags,
            ),
        )
    }

    pub(crate) fn link(
        &self,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: impl EntryOut,
    ) {
        self.stack.stats.count("link");
        let r = (|| {
            let newname = name_bytes(newname);
            let node = self.inodes.get(ino.0)?;
            let c = self.ctx(ino.0)?;
            let (sparent, sname) = self.inodes.primary(ino.0)?;
            let sprel = self.inodes.rel_path(sparent)?;
            let (dp, dset) = self.dir_ctx(newparent.0)?;
            let src = Found {
                layer: c.layer,
                st: {
                    let fd = self.stack.open_rel(c.layer, &c.rel, libc::O_PATH)?;
                    sys::fstat(fd.as_fd())?
                },
                ino: ino.0,
                dir_layers: Vec::new(),
            };
            let _guard = node.copy_lock.lock();
            ops::link(&self.stack, &sprel, &sname, &src, &dp.rel, &dset, newname)?;
            drop(_guard);
            if self.links_joined(&src) {
                self.inodes.bump_epoch();
            }
            self.inodes.mark_upper_chain(ino.0);
            self.inodes.mark_upper_chain(newparent.0);
            let set = DirSet::open(&self.stack, &dp.rel, &[0])?;
            let f = resolve::lookup(&self.stack, &set, newname)?.ok_or(Errno::ENOENT)?;
            let mut f = f;
            f.ino = ino.0; // one inode, whatever number the layer gives the new name
            self.remember(newparent.0, &dp.rel, newname, &f)
        })();
        self.entry_reply(reply, r);
    }

    /// Opens `ino`; `kill_setid`: an O_TRUNC open by a caller without CAP_FSETID, which drops
    /// set-id bits like a write (see `drop_setid`).
    pub(crate) fn open(
        &self,
        ino: INodeNo,
        flags: OpenFlags,
        kill_setid: bool,
        unprivileged: bool,
        reply: impl OpenOut,
    ) {
        self.stack.stats.count("open");
        let register = |fd: &OwnedFd| reply.open_backing(fd);
        let r = self.retry(|| self.open_file(ino.0, flags.0, unprivileged, &register));
        let r = r.and_then(|(fh, fl, b)| match self.handles.file(fh) {
            Some(f) if kill_setid => match self.drop_setid_of(&f) {
                Ok(()) => Ok((fh, fl, b)),
                Err(e) => {
                    // The kernel never learns of this handle: close it here.
                    self.close_handle(fh);
                    Err(e)
                }
            },
            _ => Ok((fh, fl, b)),
        });
        match r {
            Ok((fh, f, b)) => reply.opened(FileHandle(fh), f, b.as_deref()),
            Err(e) => reply.error(fe(e)),
        }
    }

    pub(crate) fn read(&self, fh: FileHandle, offset: u64, size: u32, reply: impl DataOut) {
        self.stack.stats.count("read");
        let Some(f) = self.handles.file(fh.0) else {
            return reply.error(fuser::Errno::EBADF);
        };
        let mut buf = vec![0u8; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match sys::pread(self.current_fd(&f), &mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => return reply.error(fe(e)),
            }
        }
        reply.data(&buf[..got]);
    }

    pub(crate) fn write(
        &self,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        kill_setid: bool,
        reply: impl WriteOut,
    ) {
        self.stack.stats.count("write");
        let Some(f) = self.handles.file(fh.0) else {
            return reply.error(fuser::Errno::EBADF);
        };
        if kill_setid {
            if let Err(e) = self.drop_setid_of(&f) {
                return reply.error(fe(e));
            }
        }
        let mut done = 0;
        while done < data.len() {
            match sys::pwrite(f.fd.as_fd(), &data[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if done == 0 => return reply.error(fe(e)),
                Err(_) => break,
            }
        }
        reply.written(done as u32);
    }

    pub(crate) fn flush(&self, reply: impl EmptyOut) {
        self.stack.stats.count("flush");
        reply.ok();
    }

    pub(crate) fn release(&self, fh: FileHandle, reply: impl EmptyOut) {
        self.stack.stats.count("release");
        self.close_handle(fh.0);
        reply.ok();
    }

    /// Waits while `conflict` holds, for at most `RELEASE_GRACE`, woken by each last close.
    /// RELEASE is asynchronous: a reader that has just closed (`cat f; echo x > f`) may still
    /// count for a while, longer on a loaded machine (2 ms was seen to be too short), and
    /// giving up means moving the name to a new inode number for the rest of the mount.
    fn await_release(&self, conflict: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + RELEASE_GRACE;
        let mut g = self.released.0.lock();
        while conflict() {
            if self.released.1.wait_until(&mut g, deadline).timed_out() {
                break;
            }
        }
    }

    /// Drops handle `fh`; its passthrough backing file joins the recently closed ones when
    /// this was the inode's last open.
    fn close_handle(&self, fh: u64) {
        if let Some((_, f)) = self.handles.files.remove(&fh) {
            self.stack
                .stats
                .open_handles
                .fetch_sub(1, Ordering::Relaxed);
            if f.daemon_io {
                if let Some(mut n) = self.daemon_io.get_mut(&f.ino) {
                    *n = n.saturating_sub(1);
                }
                self.daemon_io.remove_if(&f.ino, |_, n| *n == 0);
            }
            if f.backing.is_some() {
                let last = match self.pts.get_mut(&f.ino) {
                    Some(mut pt) => {
                        pt.opens = pt.opens.saturating_sub(1);
                        pt.opens == 0
                    }
                    None => false,
                };
                if last {
                    self.keep_backing(f.ino);
                    // Under the lock, so that a waiter between its check and its wait hears it.
                    let _g = self.released.0.lock();
                    self.released.1.notify_all();
                }
            }
        }
    }

    pub(crate) fn fsync(&self, fh: FileHandle, datasync: bool, reply: impl EmptyOut) {
        self.stack.stats.count("fsync");
        match self.handles.file(fh.0) {
            Some(f) => match sys::fsync(f.fd.as_fd(), datasync) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(fe(e)),
            },
            None => reply.error(fuser::Errno::EBADF),
        }
    }

    pub(crate) fn opendir(&self, ino: INodeNo, reply: impl OpenOut) {
        self.stack.stats.count("opendir");
        match self.inodes.get(ino.0) {
            Ok(n) if n.is_dir() => {
                let fh = self.handles.next_id();
                self.handles.dirs.insert(fh, Arc::new(OpenDir::default()));
                // The kernel may cache listings: every change to a directory passes through it.
                let flags = FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE;
                reply.opened(FileHandle(fh), flags, None);
            }
            Ok(_) => reply.error(fuser::Errno::ENOTDIR),
            Err(e) => reply.error(fe(e)),
        }
    }

    pub(crate) fn readdir(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: impl DirOut,
    ) {
        self.stack.stats.count("readdir");
        let entries = match self.dir_entries(ino.0, fh.0, offset) {
            Ok(e) => e,
            Err(e) => return reply.error(fe(e)),
        };
        // Offsets: 1 is ".", 2 is "..", 3 + i is entry i.
        let mut off = offset;
        if off == 0 {
            if reply.add(ino, 1, FileType::Directory, OsStr::new(".")) {
                return reply.ok();
            }
            off = 1;
        }
        if off == 1 {
            let p = self.parent_of(ino.0);
            if reply.add(INodeNo(p), 2, FileType::Directory, OsStr::new("..")) {
                return reply.ok();
            }
            off = 2;
        }
        let set = match self.dir_ctx(ino.0) {
            Ok((_, set)) => set,
            Err(e) => return reply.error(fe(e)),
        };
        for (i, e) in entries.iter().enumerate().skip((off - 2) as usize) {
            let kind = attr::file_type(dtype_mode(e.dtype));
            let d_ino = self.map_ino(e.union_ino(&self.stack, &set));
            if reply.add(
                INodeNo(d_ino),
                3 + i as u64,
                kind,
                OsStr::from_bytes(&e.name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    pub(crate) fn readdirplus(
        &self,
        caller: Caller,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: impl DirPlusOut,
    ) {
        self.stack.stats.count("readdirplus");
        let r = (|| {
            let entries = self.dir_entries(ino.0, fh.0, offset)?;
            let (c, set) = self.dir_ctx(ino.0)?;
            Ok::<_, Errno>((entries, c, set))
        })();
        let (entries, c, set) = match r {
            Ok(v) => v,
            Err(e) => return reply.error(fe(e)),
        };
        let ttl = self.opts.ttl;
        // Same offsets as readdir (the kernel may switch between the two on one stream).
        let mut off = offset;
        if off < 2 {
            let dir_attr = match self.stat_of(&c) {
                Ok(a) => a,
                Err(e) => return reply.error(fe(e)),
            };
            let dots = [
                (INodeNo(ino.0), 1u64, "."),
                (INodeNo(self.parent_of(ino.0)), 2, ".."),
            ];
            for (dino, doff, dname) in dots.into_iter().skip(off as usize) {
                let mut a = dir_attr;
                a.ino = dino;
                // The kernel does not instantiate "." and "..": no lookup is counted for them.
                if reply.add(dino, doff, OsStr::new(dname), &ttl, &a, Generation(0)) {
                    return reply.ok();
                }
            }
            off = 2;
        }
        // Later batches come as READDIRPLUS only when the kernel saw names of this directory
        // looked up: the reader wants attributes. The first comes so regardless (see listing).
        let bare = offset == 0 && self.listing.send_bare(caller.pid, ino.0);
        for (i, e) in entries.iter().enumerate().skip((off - 2) as usize) {
            // Directories keep their attributes: a walk descends into them, which needs the
            // inode, and there are few of them.
            if bare && e.dtype != libc::DT_DIR {
                let d_ino = INodeNo(self.map_ino(e.union_ino(&self.stack, &set)));
                let kind = attr::file_type(dtype_mode(e.dtype));
                if reply.add_bare(d_ino, 3 + i as u64, kind, OsStr::from_bytes(&e.name)) {
                    break;
                }
                continue;
            }
            // Every entry sent here counts as a lookup for the kernel: register it as one.
            let found = match resolve::lookup(&self.stack, &set, &e.name) {
                Ok(Some(f)) => f,
                Ok(None) => continue, // removed since the listing was taken
                Err(err) => {
                    debug!("readdirplus: {:?}: {err}", OsStr::from_bytes(&e.name));
                    continue;
                }
            };
            let a = match self.remember(ino.0, &c.rel, &e.name, &found) {
                Ok(a) => a,
                Err(err) => {
                    debug!("readdirplus: {:?}: {err}", OsStr::from_bytes(&e.name));
                    continue;
                }
            };
            if reply.add(
                INodeNo(self.map_ino(found.ino)),
                3 + i as u64,
                OsStr::from_bytes(&e.name),
                &ttl,
                &a,
                Generation(0),
            ) {
                // Not sent: take the lookup back.
                self.inodes.forget(self.map_ino(found.ino), 1);
                break;
            }
        }
        reply.ok();
    }

    pub(crate) fn releasedir(&self, fh: FileHandle, reply: impl EmptyOut) {
        self.stack.stats.count("releasedir");
        self.handles.dirs.remove(&fh.0);
        reply.ok();
    }

    pub(crate) fn fsyncdir(&self, reply: impl EmptyOut) {
        self.stack.stats.count("fsyncdir");
        reply.ok();
    }

    pub(crate) fn statfs(&self, reply: impl StatfsOut) {
        self.stack.stats.count("statfs");
        match sys::fstatvfs(self.stack.layers[0].fd.as_fd()) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(fe(e)),
        }
    }

    pub(crate) fn setxattr(
        &self,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        reply: impl EmptyOut,
    ) {
        self.stack.stats.count("setxattr");
        let r = self.change_xattr(ino.0, name, |at, c| sys::setxattr(at, c, value, flags));
        empty_reply(reply, r)
    }

    pub(crate) fn getxattr(&self, ino: INodeNo, name: &OsStr, size: u32, reply: impl XattrOut) {
        self.stack.stats.count("getxattr");
        let r = (|| {
            let n = name_bytes(name);
            if whiteout::is_internal_xattr(n) {
                return Err(Errno::ENODATA);
            }
            let node = self.inodes.get(ino.0)?;
            if node.xattrs.load(Ordering::Acquire) == XATTRS_NONE {
                return Err(Errno::ENODATA);
            }
            let t = self.xattr_target(ino.0)?;
            let c = CString::new(n).map_err(|_| Errno::EINVAL)?;
            let r = read_xattr(&t, &c);
            if r == Err(Errno::ENODATA) && node.xattrs.load(Ordering::Acquire) == XATTRS_UNKNOWN {
                // One listing now saves a layer access for every later miss on this node.
                let state = match list_xattrs(&t) {
                    Ok(l) if l.is_empty() => XATTRS_NONE,
                    _ => XATTRS_SOME,
                };
                node.xattrs.store(state, Ordering::Release);
            }
            r
        })();
        reply_xattr(reply, size, unlabelled(name, r));
    }

    pub(crate) fn listxattr(&self, ino: INodeNo, size: u32, reply: impl XattrOut) {
        self.stack.stats.count("listxattr");
        let r = (|| {
            let node = self.inodes.get(ino.0)?;
            if node.xattrs.load(Ordering::Acquire) == XATTRS_NONE {
                return Ok(Vec::new());
            }
            let l = list_xattrs(&self.xattr_target(ino.0)?)?;
            let state = if l.is_empty() {
                XATTRS_NONE
            } else {
                XATTRS_SOME
            };
            node.xattrs.store(state, Ordering::Release);
            Ok(l)
        })();
        reply_xattr(reply, size, r);
    }

    pub(crate) fn removexattr(&self, ino: INodeNo, name: &OsStr, reply: impl EmptyOut) {
        self.stack.stats.count("removexattr");
        let r = (|| {
            let n = name_bytes(name);
            if !whiteout::is_internal_xattr(n) {
                // Removing a name the file does not have changes nothing: no copy-up (the
                // upper would carry a needless entry, split from its lower hard links).
                let c = CString::new(n).map_err(|_| Errno::EINVAL)?;
                if read_xattr(&self.xattr_target(ino.0)?, &c) == Err(Errno::ENODATA) {
                    return Err(Errno::ENODATA);
                }
            }
            self.change_xattr(ino.0, name, |at, c| sys::removexattr(at, c))
        })();
        empty_reply(reply, r)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create(
        &self,
        req: &Caller,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: impl CreateOut,
    ) {
        self.stack.stats.count("create");
        let clean = open_flags(flags);
        let r = self.do_create(
            req,
            parent.0,
            name_bytes(name),
            NewKind::File { flags: clean },
            mode,
            umask,
        );
        match r {
            Ok((a, Some(fd))) => {
                let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
                let Ok(node) = self.inodes.get(a.ino.0) else {
                    return reply.error(fuser::Errno::EIO);
                };
                let register = |fd: &OwnedFd| reply.open_backing(fd);
                let (fh, fl, backing) =
                    self.new_handle(&node, fd, writable, true, req.lacks_fsetid(), &register);
                let (ttl, fh) = (&self.opts.ttl, FileHandle(fh));
                reply.created(ttl, &a, Generation(0), fh, fl, backing.as_deref());
            }
            Ok((_, None)) => reply.error(fuser::Errno::EIO),
            Err(e) => reply.error(fe(e)),
        }
    }

    pub(crate) fn fallocate(
        &self,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: impl EmptyOut,
    ) {
        self.stack.stats.count("fallocate");
        match self.handles.file(fh.0) {
            Some(f) => match sys::fallocate(f.fd.as_fd(), mode, offset, length) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(fe(e)),
            },
            None => reply.error(fuser::Errno::EBADF),
        }
    }

    pub(crate) fn lseek(&self, fh: FileHandle, offset: i64, whence: i32, reply: impl LseekOut) {
        self.stack.stats.count("lseek");
        match self.handles.file(fh.0) {
            Some(f) => match sys::lseek(self.current_fd(&f), offset, whence) {
                Ok(o) => reply.offset(o),
                Err(e) => reply.error(fe(e)),
            },
            None => reply.error(fuser::Errno::EBADF),
        }
    }

    pub(crate) fn copy_file_range(
        &self,
        fh_in: FileHandle,
        offset_in: u64,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        reply: impl WriteOut,
    ) {
        self.stack.stats.count("copy_file_range");
        let (Some(a), Some(b)) = (self.handles.file(fh_in.0), self.handles.file(fh_out.0)) else {
            return reply.error(fuser::Errno::EBADF);
        };
        let mut oi = offset_in as i64;
        let mut oo = offset_out as i64;
        let len = len.min(1 << 30) as usize;
        match sys::copy_file_range(self.current_fd(&a), &mut oi, b.fd.as_fd(), &mut oo, len) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(fe(e)),
        }
    }
}

impl UnionFs {
    fn remove(&self, parent: u64, name: &[u8], dir: bool, reply: impl EmptyOut) {
        let r = self.retry(|| {
            let (p, set) = self.dir_ctx(parent)?;
            let f = ops::remove(&self.stack, &p.rel, &set, name, dir)?;
            self.inodes.mark_upper_chain(parent);
            self.inodes.drop_alias(self.map_ino(f.ino), parent, name);
            if dir {
                self.inodes.invalidate_nlink(parent);
                self.dir_removed(self.map_ino(f.ino), &f.st);
            } else {
                self.release_closed_backing(self.map_ino(f.ino));
            }
            Ok(())
        });
        empty_reply(reply, r)
    }
}

/// The open(2) flags we pass on to a layer file: the kernel also sends internal bits (such as
/// `__FMODE_EXEC` for exec), which openat2 rejects, and creation flags we handle ourselves.
fn open_flags(flags: i32) -> i32 {
    flags
        & (libc::O_ACCMODE
            | libc::O_APPEND
            | libc::O_NONBLOCK
            | libc::O_SYNC
            | libc::O_DSYNC
            | libc::O_TRUNC
            | libc::O_LARGEFILE
            | libc::O_NOATIME)
}

/// An `st_mode` type for a `DT_*` value.
fn dtype_mode(dtype: u8) -> u32 {
    match dtype {
        libc::DT_DIR => libc::S_IFDIR,
        libc::DT_LNK => libc::S_IFLNK,
        libc::DT_FIFO => libc::S_IFIFO,
        libc::DT_SOCK => libc::S_IFSOCK,
        libc::DT_CHR => libc::S_IFCHR,
        libc::DT_BLK => libc::S_IFBLK,
        _ => libc::S_IFREG,
    }
}

fn zero_stat() -> libc::stat {
    sys::zeroed_stat()
}
