//! Copy-ups flushed behind, from the FUSE side (the layer side, and why this is crash-safe,
//! is `layer::behind`): a large file's copy is in the upper as soon as its data is copied,
//! and one thread per process flushes each such copy when its writer closes it (or 1 s after
//! the copy-up) and drops its record. An fsync of the file flushes it first; so does whatever
//! moves a name (create, link, unlink, rmdir, rename), since a record names its file by
//! place; and the end of the mount flushes them all.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::layer::behind::{self, Unflushed};
use crate::layer::Stack;
use crate::sys::{Errno, SysResult};

/// Smaller files are flushed before the copy-up returns, as before: their flush costs about
/// one journal commit, and the record a copy flushed behind needs costs one too.
pub const DEFAULT_MIN_SIZE: u64 = 1 << 20;

/// Copies one union may have unflushed at a time: each holds a descriptor until its flush, and
/// beyond this many a copy-up flushes before it returns, as with `flush_behind=off` (a burst
/// of thousands of large copy-ups would otherwise hold thousands of descriptors).
pub const MAX_UNFLUSHED: usize = 256;

/// One copy not yet flushed.
#[derive(Debug)]
struct Job {
    /// The copy until it is flushed.
    copy: Mutex<Option<Unflushed>>,
    /// The error its flush met, reported to every later fsync of the file (its record stays,
    /// so a crash still makes the copy again).
    failed: Mutex<Option<Errno>>,
}

/// The unflushed copies of one union, by node.
#[derive(Debug)]
pub struct Behind {
    stack: Arc<Stack>,
    jobs: DashMap<u64, Arc<Job>>,
    /// `jobs.len()`, read without locking: almost always 0.
    count: AtomicUsize,
    /// Copies of files of at least this size are flushed behind (`None`: never).
    pub min_size: Option<u64>,
}

impl Behind {
    /// No copies yet; `min_size` as [`Behind::min_size`].
    pub fn new(stack: Arc<Stack>, min_size: Option<u64>) -> Self {
        Behind {
            stack,
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

    /// Whether a new copy-up may be flushed behind (fewer than [`MAX_UNFLUSHED`] are).
    pub fn has_room(&self) -> bool {
        self.count.load(Ordering::Acquire) < MAX_UNFLUSHED
    }

    /// Whether node `ino` has a copy not yet flushed.
    pub fn pending(&self, ino: u64) -> bool {
        self.job(ino).is_some()
    }

    /// Takes over node `ino`'s unflushed copy and queues its flush.
    pub fn add(self: &Arc<Self>, ino: u64, copy: Unflushed) -> SysResult<()> {
        let job = Arc::new(Job {
            copy: Mutex::new(Some(copy)),
            failed: Mutex::new(None),
        });
        if let Some(old) = self.jobs.insert(ino, job) {
            // A second copy of the same node (its first was removed meanwhile): the first
            // is flushed now, its record dropped.
            self.flush_job(&old)?;
        } else {
            self.count.fetch_add(1, Ordering::AcqRel);
        }
        if !queue(Arc::downgrade(self), ino, Instant::now() + MAX_WAIT) {
            // No background thread: flush now, as an ordinary copy-up would have.
            return self.settle(ino);
        }
        Ok(())
    }

    /// The last open file of node `ino` closed: its copy, if not flushed, is flushed now.
    pub fn closed(self: &Arc<Self>, ino: u64) {
        if self.pending(ino) && !queue(Arc::downgrade(self), ino, Instant::now()) {
            let _ = self.settle(ino);
        }
    }

    fn flush_job(&self, job: &Job) -> SysResult<()> {
        let mut slot = job.copy.lock();
        if let Some(e) = *job.failed.lock() {
            return Err(e);
        }
        let Some(copy) = slot.as_ref() else {
            return Ok(());
        };
        if let Err(e) = behind::flush(&self.stack, copy) {
            *job.failed.lock() = Some(e);
            return Err(e);
        }
        *slot = None;
        Ok(())
    }

    /// Flushes node `ino`'s copy and drops its record, or waits for whoever is doing it.
    pub fn settle(&self, ino: u64) -> SysResult<()> {
        let Some(job) = self.job(ino) else {
            return Ok(());
        };
        self.flush_job(&job)?;
        if self
            .jobs
            .remove_if(&ino, |_, j| Arc::ptr_eq(j, &job))
            .is_some()
        {
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Settles every copy (before a name operation, at the end of the mount). A copy whose
    /// flush failed stays as it is: the failure is reported to that file's fsync.
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

/// How long a copy may wait for its writer to close it before its flush starts anyway.
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
