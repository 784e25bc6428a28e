//! Copy-ups flushed behind, from the FUSE side (the layer side, and why this is crash-safe,
//! is `layer::behind`): a large file's copy is in the upper as soon as its data is copied,
//! and one thread per process flushes each such copy when its writer closes it (or 1 s after
//! the copy-up) and drops its record. An fsync of the file flushes it first; so does a name
//! operation (create, link, unlink, rmdir, rename) on its place or a directory above it,
//! since a record names its file by place; and the end of the mount flushes them all.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::layer::behind::{self, Unflushed};
use crate::layer::stack::join;
use crate::layer::Stack;
use crate::sys::{Errno, SysResult};

/// Smaller files are flushed before the copy-up returns, as before: their flush is short next
/// to the copy, and each copy flushed behind holds a descriptor and costs a record.
pub const DEFAULT_MIN_SIZE: u64 = 1 << 20;

/// Copies one union may have unflushed at a time: each holds a descriptor until its flush, and
/// beyond this many a copy-up flushes before it returns, as with `flush_behind=off` (a burst
/// of thousands of large copy-ups would otherwise hold thousands of descriptors).
pub const MAX_UNFLUSHED: usize = 256;

/// Where a copy's flush stands.
#[derive(Debug)]
enum State {
    /// Not yet flushed.
    Unflushed(Unflushed),
    /// Flushed, its record dropped.
    Flushed,
    /// Its flush failed: reported to every later fsync of the file (its record stays, so a
    /// crash still makes the copy again).
    Failed(Errno),
}

/// One copy not yet flushed.
#[derive(Debug)]
struct Job {
    /// Its place in the view, as its record names it.
    rel: Vec<u8>,
    state: Mutex<State>,
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

    /// Takes over node `ino`'s unflushed copy, at `rel` in the view, and queues its flush.
    pub fn add(self: &Arc<Self>, ino: u64, rel: Vec<u8>, copy: Unflushed) -> SysResult<()> {
        let job = Arc::new(Job {
            rel,
            state: Mutex::new(State::Unflushed(copy)),
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
        let mut state = job.state.lock();
        let State::Unflushed(copy) = &*state else {
            return match *state {
                State::Failed(e) => Err(e),
                _ => Ok(()),
            };
        };
        let done = behind::flush(&self.stack, copy);
        *state = match done {
            Ok(()) => State::Flushed,
            Err(e) => State::Failed(e),
        };
        done
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

    /// Settles the copies at `rel` and below it (before a name operation there; the root,
    /// `b""`, at the end of the mount). A copy whose flush failed stays as it is: the failure
    /// is reported to that file's fsync.
    pub fn settle_at(&self, rel: &[u8]) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let inos: Vec<u64> = (self.jobs.iter())
            .filter(|j| covers(rel, &j.value().rel))
            .map(|j| *j.key())
            .collect();
        for ino in inos {
            if let Err(e) = self.settle(ino) {
                log::warn!("flushing a copy-up failed: {e}");
            }
        }
    }

    /// [`Behind::settle_at`] the place of `name` in directory `parent_rel`.
    pub fn settle_name(&self, parent_rel: &[u8], name: &[u8]) {
        if self.count.load(Ordering::Acquire) > 0 {
            self.settle_at(&join(parent_rel, name));
        }
    }
}

/// Whether a name operation on `place` reaches `path`: the same place or one below it (the
/// root, `b""`, reaches everything).
fn covers(place: &[u8], path: &[u8]) -> bool {
    place.is_empty()
        || path == place
        || (path.starts_with(place) && path.get(place.len()) == Some(&b'/'))
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
    static FLUSHER: OnceLock<Option<mpsc::Sender<Entry>>> = OnceLock::new();
    let sender = FLUSHER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Entry>();
        std::thread::Builder::new()
            .name("unionfs-flush".into())
            .spawn(move || flusher(rx))
            .ok()
            .map(|_| tx)
    });
    match sender {
        Some(tx) => tx.send((due, union, ino)).is_ok(),
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

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn a_name_operation_reaches_its_place_and_below_only() {
        assert!(covers(b"d/a", b"d/a"));
        assert!(covers(b"d", b"d/a") && covers(b"d", b"d/e/f"));
        assert!(covers(b"", b"d/a"), "the root reaches every copy");
        assert!(!covers(b"d/a", b"d/ab") && !covers(b"d", b"dd/a"));
        assert!(!covers(b"d/a", b"d") && !covers(b"e", b"d/a"));
    }
}
