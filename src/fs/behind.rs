//! Copy-ups flushed behind, from the FUSE side (the layer side is `layer::behind`): while a
//! large file's copy waits in the work dir for its flush, it is the file. Opens and
//! attributes are served from it; whatever needs the copy at its place in the upper (a
//! change of metadata, a name operation, an fsync, the end of the mount) first flushes and
//! publishes it ("settles" it), and a background thread settles each in turn.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::Mutex;

use super::inode::Inodes;
use crate::layer::behind::{self, Staged};
use crate::layer::Stack;
use crate::sys::{self, Errno, SysResult};

/// Files smaller than this are flushed before the copy-up returns, as before: their flush
/// costs about one journal commit, a fraction of what serving a staged copy costs in waits.
pub const DEFAULT_MIN_SIZE: u64 = 1 << 20;

/// One staged copy.
#[derive(Debug)]
struct Job {
    /// The copy's file, for attributes and opens that must not wait for a flush in progress.
    file: OwnedFd,
    /// The copy until it is published; kept after a failed flush, which `failed` holds.
    staged: Mutex<Option<Staged>>,
    /// The error its flush or publication met: reported to whoever settles it, again.
    failed: Mutex<Option<Errno>>,
}

/// The staged copies of one union, by node.
#[derive(Debug)]
pub struct Behind {
    stack: Arc<Stack>,
    inodes: Arc<Inodes>,
    jobs: DashMap<u64, Arc<Job>>,
    /// `jobs.len()`, read without locking: almost always 0.
    count: AtomicUsize,
    /// Copies of files of at least this size are flushed behind (`None`: never).
    pub min_size: Option<u64>,
}

impl Behind {
    /// No staged copies yet; `min_size` as [`Behind::min_size`].
    pub fn new(stack: Arc<Stack>, inodes: Arc<Inodes>, min_size: Option<u64>) -> Self {
        Behind {
            stack,
            inodes,
            jobs: DashMap::new(),
            count: AtomicUsize::new(0),
            min_size,
        }
    }

    fn job(&self, ino: u64) -> Option<Arc<Job>> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.jobs.get(&ino).map(|j| Arc::clone(j.value()))
    }

    /// Whether node `ino` is a staged copy.
    pub fn pending(&self, ino: u64) -> bool {
        self.job(ino).is_some()
    }

    /// Takes over the staged copy of node `ino` and queues its flush.
    pub fn add(self: &Arc<Self>, ino: u64, staged: Staged) -> SysResult<()> {
        let file = match staged.file.try_clone() {
            Ok(f) => f,
            Err(_) => {
                // No descriptor to spare: publish now, as an ordinary copy-up would have.
                behind::publish(&self.stack, &staged)?;
                self.inodes.mark_upper_chain(ino);
                return Ok(());
            }
        };
        let job = Arc::new(Job {
            file,
            staged: Mutex::new(Some(staged)),
            failed: Mutex::new(None),
        });
        self.jobs.insert(ino, job);
        self.count.fetch_add(1, Ordering::AcqRel);
        if !queue(Arc::downgrade(self), ino, Instant::now() + MAX_WAIT) {
            // No background thread: settle now, as an ordinary copy-up would have.
            return self.settle(ino);
        }
        Ok(())
    }

    /// The attributes of node `ino`'s staged copy.
    pub fn stat(&self, ino: u64) -> Option<libc::stat> {
        sys::fstat(self.job(ino)?.file.as_fd()).ok()
    }

    /// Node `ino`'s staged copy opened with open(2) `flags` (`None` when it has none).
    pub fn open(&self, ino: u64, flags: i32) -> Option<SysResult<OwnedFd>> {
        Some(sys::reopen(self.job(ino)?.file.as_fd(), flags))
    }

    /// The last open file of node `ino` closed: its copy, if staged, is flushed now.
    pub fn closed(self: &Arc<Self>, ino: u64) {
        if self.pending(ino) && !queue(Arc::downgrade(self), ino, Instant::now()) {
            let _ = self.settle(ino);
        }
    }

    /// Flushes and publishes node `ino`'s staged copy, or waits for whoever is doing it.
    pub fn settle(&self, ino: u64) -> SysResult<()> {
        let Some(job) = self.job(ino) else {
            return Ok(());
        };
        let mut slot = job.staged.lock();
        if let Some(e) = *job.failed.lock() {
            return Err(e);
        }
        let Some(staged) = slot.as_ref() else {
            return Ok(());
        };
        if let Err(e) = behind::publish(&self.stack, staged) {
            // The copy keeps serving its open files; it never reaches the upper (its record
            // is gone), as a copy-up that failed would not have.
            *job.failed.lock() = Some(e);
            return Err(e);
        }
        // In the upper now, and the node says so before it stops being served from the copy.
        self.inodes.mark_upper_chain(ino);
        *slot = None;
        drop(slot);
        if self
            .jobs
            .remove_if(&ino, |_, j| Arc::ptr_eq(j, &job))
            .is_some()
        {
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Settles every staged copy (before a name operation, at the end of the mount). A copy
    /// whose flush failed stays as it is: the failure is reported to that file's fsync.
    pub fn settle_all(&self) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let inos: Vec<u64> = self.jobs.iter().map(|j| *j.key()).collect();
        for ino in inos {
            if let Err(e) = self.settle(ino) {
                log::warn!("flushing a copy-up failed: {e}");
            }
        }
    }
}

/// How long a staged copy may wait for its writer to close it before its flush starts anyway.
/// Starting at once would make the writer's first writes wait behind the flush (ext4 stalled
/// a one-byte append for 30-50 ms behind the commit of the 256 MiB it had just copied).
pub const MAX_WAIT: Duration = Duration::from_secs(1);

/// A copy to settle, at `due`.
type Entry = (Instant, Weak<Behind>, u64);

/// Hands node `ino` of `union` to the process's flushing thread (one for every union the
/// process serves), to settle at `due`; false when that thread cannot be started.
fn queue(union: Weak<Behind>, ino: u64, due: Instant) -> bool {
    static FLUSHER: OnceLock<Option<Mutex<mpsc::Sender<Entry>>>> = OnceLock::new();
    let sender = FLUSHER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Entry>();
        std::thread::Builder::new()
            .name("unionfs-flush".into())
            .spawn(move || flusher(rx))
            .ok()
            .map(|_| Mutex::new(tx))
    });
    match sender {
        Some(tx) => tx.lock().send((due, union, ino)).is_ok(),
        None => false,
    }
}

/// The flushing thread: settles each queued copy when it is due, earliest first.
fn flusher(rx: mpsc::Receiver<Entry>) {
    let mut waiting: Vec<Entry> = Vec::new();
    loop {
        let now = Instant::now();
        let (due, later): (Vec<Entry>, Vec<Entry>) = waiting.drain(..).partition(|e| e.0 <= now);
        waiting = later;
        for (_, union, ino) in due {
            if let Some(u) = union.upgrade() {
                if let Err(e) = u.settle(ino) {
                    log::warn!("flushing a copy-up failed: {e}");
                }
            }
        }
        let next = match waiting.iter().map(|e| e.0).min() {
            Some(t) => rx.recv_timeout(t.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match next {
            Ok(e) => waiting.push(e),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}
