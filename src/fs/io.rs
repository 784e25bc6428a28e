//! The data path of open files: FUSE passthrough when the kernel and our privileges allow it,
//! otherwise I/O through the daemon, and the kernel's rule that all concurrent passthrough
//! opens of one inode share one backing file (see `rehome`).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fuser::FopenFlags;
use log::debug;

use super::handle::OpenFile;
use super::inode::{self, Node};
use super::UnionFs;
use crate::sys::{self, Errno};

/// How the kernel does I/O on one open file.
pub(super) enum IoMode {
    /// Through the daemon, with the page cache kept across opens.
    Cached,
    /// Through the daemon, bypassing the page cache (passthrough refused for this file).
    Direct,
    /// Passthrough opens of this inode use another backing file (the lower copy, for readers
    /// that opened it before the copy-up): the kernel cannot mix the two on one inode.
    Conflict,
    /// The kernel reads and writes the backing file itself.
    Passthrough(Arc<super::reply::Backing>),
}

/// True when `held` (a cached backing file) is still a linked file and `fd` opens that same
/// file. An open fd keeps its inode alive, so its number cannot have been reused.
fn same_live_file(held: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> bool {
    match (sys::fstat(held), sys::fstat(fd)) {
        (Ok(a), Ok(b)) => a.st_nlink > 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino,
        _ => false,
    }
}

/// True when this process may register passthrough backing files: root with CAP_SYS_ADMIN in
/// the initial user namespace (the kernel's rule).
pub(super) fn passthrough_privileged() -> bool {
    const INIT_USER_NS_INO: u64 = 0xEFFF_FFFD;
    let in_init_ns = std::fs::metadata("/proc/self/ns/user")
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m) == INIT_USER_NS_INO)
        .unwrap_or(false);
    let cap_sys_admin = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 21) != 0);
    in_init_ns && cap_sys_admin
}

impl UnionFs {
    /// The nodeid the kernel knows a union inode by.
    pub(super) fn map_ino(&self, ino: u64) -> u64 {
        self.redirect.get(&ino).map_or(ino, |v| *v)
    }

    /// A node id no layer inode maps to (shown as st_ino too, until the next mount).
    pub(super) fn synthetic_ino(&self) -> u64 {
        (0xfd << 56) | self.next_synthetic.fetch_add(1, Ordering::Relaxed)
    }

    /// Gives the name of `node` a new nodeid and answers ESTALE, so that the kernel looks the
    /// name up again and retries the open on a fresh inode whose passthrough backing file can
    /// be the upper copy, while readers that opened the lower copy keep their own inode.
    /// Cost: the file shows a new st_ino until the next mount.
    pub(super) fn rehome(&self, node: &Node) -> Errno {
        let Ok((parent, name)) = self.inodes.primary(node.ino) else {
            return Errno::EIO;
        };
        let new = self.synthetic_ino();
        self.inodes
            .upsert(new, node.kind, parent, &name, 0, Vec::new(), 0);
        self.inodes.drop_alias(node.ino, parent, &name);
        self.redirect.insert(node.ino, new);
        // Earlier redirects to this node follow it to the new one.
        for mut e in self.redirect.iter_mut() {
            if *e.value() == node.ino {
                *e.value_mut() = new;
            }
        }
        // Never from inside a request: a pending lookup in the same directory would
        // deadlock the worker.
        let notify = Arc::clone(&self.notify);
        std::thread::spawn(move || {
            let _ = notify.inval_entry(parent, &name);
        });
        Errno::ESTALE
    }

    /// Chooses the I/O mode of a new handle on `node` whose file is `fd` and registers the
    /// passthrough backing file when it is the first open. A writer arriving while readers
    /// pass through to the lower copy gets direct I/O on the upper copy instead: the kernel
    /// allows only one backing file per inode at a time.
    fn io_mode(
        &self,
        node: &Node,
        fd: &OwnedFd,
        in_upper: bool,
        writable: bool,
        unprivileged: bool,
        register: super::reply::Register<'_>,
    ) -> IoMode {
        if !self.passthrough() {
            return IoMode::Cached;
        }
        if self.daemon_io.contains_key(&node.ino) {
            return IoMode::Direct;
        }
        // Writes that pass through never reach us, and under FUSE_HANDLE_KILLPRIV_V2 clearing
        // set-id bits on write is ours to do (see `write`): such files are written through
        // the daemon.
        if writable
            && sys::fstat(fd.as_fd()).is_ok_and(|st| super::attr::setid_bits(st.st_mode) != 0)
        {
            if self.pts.get(&node.ino).is_none_or(|pt| pt.opens == 0) {
                self.pts.remove_if(&node.ino, |_, pt| pt.opens == 0);
                return IoMode::Direct;
            }
            // Other opens of this inode pass through, and the kernel fails (EIO) an open that
            // does not while they do: this one shares their backing file, so its writes will
            // not reach us, and the bits an unprivileged writer clears go now. (The kernel
            // says per write whether the writer lacks CAP_FSETID; at open, uid != 0 stands
            // in. A privileged writer's writes keep the bits anyway.)
            if unprivileged && super::attr::drop_setid(fd.as_fd()).unwrap_or(false) {
                self.tell_attrs_changed(node.ino);
            }
        }
        let mode = self.io_mode_locked(node, fd, in_upper, writable, register);
        if !matches!(mode, IoMode::Passthrough(_)) {
            self.pts.remove_if(&node.ino, |_, pt| pt.opens == 0);
        }
        mode
    }

    /// `io_mode` with the inode's passthrough entry held (a shard lock of the table).
    fn io_mode_locked(
        &self,
        node: &Node,
        fd: &OwnedFd,
        in_upper: bool,
        writable: bool,
        register: super::reply::Register<'_>,
    ) -> IoMode {
        let mut pt = self.pts.entry(node.ino).or_default();
        if pt.opens == 0 {
            // Registered for an earlier open of this very file: use it again, sparing the
            // kernel a backing file setup and teardown per open.
            let reuse = match (&pt.backing, &pt.file) {
                (Some(b), Some(held)) if pt.upper == in_upper && (pt.writable || !writable) => {
                    same_live_file(held.as_fd(), fd.as_fd()).then(|| Arc::clone(b))
                }
                _ => None,
            };
            if let Some(b) = reuse {
                pt.opens = 1;
                return IoMode::Passthrough(b);
            }
        }
        if pt.opens > 0 {
            let shared = pt.backing.clone();
            if let Some(b) = shared {
                if pt.upper == in_upper && (pt.writable || !writable) {
                    pt.opens += 1;
                    return IoMode::Passthrough(b);
                }
            }
            return IoMode::Conflict;
        }
        // The backing file serves every later open too: open upper copies read-write.
        let (bfd, bwritable) = if in_upper {
            let plain_rdwr = sys::status_flags(fd.as_fd()).is_ok_and(|fl| {
                fl & libc::O_ACCMODE == libc::O_RDWR
                    && fl & (libc::O_APPEND | libc::O_DIRECT | libc::O_SYNC) == 0
            });
            let shared = if plain_rdwr {
                fd.try_clone().map_err(|_| Errno::EIO)
            } else {
                sys::reopen(fd.as_fd(), libc::O_RDWR)
            };
            match shared {
                Ok(f) => (f, true),
                Err(_) => match fd.try_clone() {
                    Ok(f) => (f, writable),
                    Err(_) => return IoMode::Direct,
                },
            }
        } else {
            match fd.try_clone() {
                Ok(f) => (f, false),
                Err(_) => return IoMode::Direct,
            }
        };
        match register(&bfd) {
            Ok(id) => {
                let id = Arc::new(id);
                *pt = inode::Passthrough {
                    backing: Some(Arc::clone(&id)),
                    file: Some(bfd),
                    upper: in_upper,
                    writable: bwritable,
                    opens: 1,
                };
                IoMode::Passthrough(id)
            }
            Err(e) => {
                debug!("passthrough refused for inode {}: {e}", node.ino);
                IoMode::Direct
            }
        }
    }

    /// Called when the last handle on `ino` closes: its backing file stays registered among
    /// the most recently closed ones, and the oldest beyond those is dropped.
    pub(super) fn keep_backing(&self, ino: u64) {
        let keep = self.kept_backing;
        let evict = {
            let mut lru = self.backing_lru.lock();
            if let Some(i) = lru.iter().position(|x| *x == ino) {
                lru.remove(i);
            }
            lru.push_back(ino);
            if lru.len() > keep {
                lru.pop_front()
            } else {
                None
            }
        };
        if let Some(old) = evict {
            self.pts.remove_if(&old, |_, pt| pt.opens == 0);
        }
    }

    /// The file a handle reads now. A handle opened on a lower file before its copy-up reads
    /// the upper copy from then on, as in kernel overlayfs (since 4.19): the data other names
    /// of the file show, and the attributes GETATTR reports. A passthrough handle cannot follow
    /// (the kernel reads its backing file itself) and keeps the lower copy (README, "Data
    /// path"); so does a handle whose file lost every name.
    pub(super) fn current_fd<'a>(&self, f: &'a OpenFile) -> BorrowedFd<'a> {
        if f.in_upper || f.backing.is_some() {
            return f.fd.as_fd();
        }
        if f.moved.get().is_none() {
            if let Some(fd) = self.upper_copy(f.ino) {
                let _ = f.moved.set(fd);
            }
        }
        f.moved.get().unwrap_or(&f.fd).as_fd()
    }

    /// The upper copy of lower file `ino` opened for reading, once it has one.
    fn upper_copy(&self, ino: u64) -> Option<OwnedFd> {
        let node = self.inodes.get(ino).ok()?;
        {
            // Most handles never see a copy-up: answer them without a path walk.
            let st = node.state.read();
            if !self.stack.is_upper(st.layer) && st.epoch == self.inodes.epoch() {
                return None;
            }
        }
        let c = self.ctx(ino).ok()?;
        if !self.stack.is_upper(c.layer) {
            return None;
        }
        let fd = self.stack.open_rel(c.layer, &c.rel, libc::O_RDONLY).ok()?;
        // A metadata-only copy still has its data below: read it where its record says.
        let (fd, _) = self.resolve_stub(&node, fd, c.layer, false, false).ok()?;
        Some(fd)
    }

    /// Registers an open file and says how the kernel should do its I/O.
    pub(super) fn new_handle(
        &self,
        node: &Node,
        fd: OwnedFd,
        writable: bool,
        in_upper: bool,
        unprivileged: bool,
        register: super::reply::Register<'_>,
    ) -> super::reply::Opened {
        let mode = self.io_mode(node, &fd, in_upper, writable, unprivileged, register);
        let daemon_io = matches!(mode, IoMode::Direct);
        let (flags, backing) = match mode {
            // Every change to file data goes through this mount, so the page cache stays
            // valid across opens.
            IoMode::Cached => (FopenFlags::FOPEN_KEEP_CACHE, None),
            IoMode::Direct | IoMode::Conflict => (FopenFlags::FOPEN_DIRECT_IO, None),
            IoMode::Passthrough(b) => (FopenFlags::empty(), Some(b)),
        };
        // Our flush does nothing (data goes straight to the layer file; no locks to drop), so
        // spare every close() a round trip.
        let flags = flags | FopenFlags::FOPEN_NOFLUSH;
        if daemon_io {
            *self.daemon_io.entry(node.ino).or_insert(0) += 1;
        }
        let fh = self.handles.next_id();
        self.stats.open_handles.fetch_add(1, Ordering::Relaxed);
        self.handles.files.insert(
            fh,
            Arc::new(OpenFile {
                fd,
                ino: node.ino,
                writable,
                in_upper,
                backing: backing.clone(),
                moved: std::sync::OnceLock::new(),
                daemon_io,
            }),
        );
        super::reply::Opened { fh, flags, backing }
    }
}
