//! One mounted union as the transports see it: its filesystem, its FUSE connection's device,
//! how the connection's requests arrive (the ring's registration state), and its end.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::fs::UnionFs;

/// A union served by this process's transports (see `dev` and `ring`).
#[derive(Debug)]
pub struct Conn {
    /// The union's operations.
    pub fs: Arc<UnionFs>,
    /// The connection's device as mounted: passthrough backing files are registered on it.
    pub dev: Arc<OwnedFd>,
    /// Set at FUSE_INIT when the kernel gave this connection to the io_uring transport.
    pub ring: OnceLock<Arc<Settle>>,
    /// Unique in the process: the key the transports file this connection under.
    pub id: u64,
    ended: Mutex<bool>,
    ended_cv: Condvar,
}

impl Conn {
    /// A connection of `fs` on the device `dev`.
    pub fn new(fs: Arc<UnionFs>, dev: Arc<OwnedFd>) -> Arc<Conn> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Arc::new(Conn {
            fs,
            dev,
            ring: OnceLock::new(),
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            ended: Mutex::new(false),
            ended_cv: Condvar::new(),
        })
    }

    /// The kernel ended the connection (unmounted or aborted): wakes whoever waits for it.
    pub fn end(&self) {
        let mut e = self.ended.lock();
        if !*e {
            // Before anyone learns of the end (a daemon then exits): see `UnionFs::ended`.
            self.fs.ended();
            *e = true;
            self.ended_cv.notify_all();
        }
    }

    /// True once the connection has ended.
    pub fn is_ended(&self) -> bool {
        *self.ended.lock()
    }

    /// Waits until the connection ends, at most `limit` (forever with `None`); whether it did.
    pub fn wait_ended(&self, limit: Option<Duration>) -> bool {
        let mut e = self.ended.lock();
        let deadline = limit.map(|l| Instant::now() + l);
        while !*e {
            match deadline {
                None => self.ended_cv.wait(&mut e),
                Some(d) => {
                    if self.ended_cv.wait_until(&mut e, d).timed_out() {
                        return *e;
                    }
                }
            }
        }
        true
    }
}

/// How the io_uring workers' registration of one connection's entries went: the kernel holds
/// every request of a ring connection until each CPU queue has an entry, so a mount is live
/// only once every worker has registered (or given up).
#[derive(Debug, Default)]
pub struct Settle {
    /// Whether the workers may reply as SCHED_IDLE (see `ring::can_hand_over`).
    pub hand_over: std::sync::atomic::AtomicBool,
    /// Per queue: (workers settled, entries the kernel took).
    queues: Mutex<Vec<(usize, usize)>>,
    workers_per_queue: AtomicU64,
    cv: Condvar,
}

impl Settle {
    /// Expects `per_queue` workers for each of `queues` queues.
    pub fn expect(&self, queues: usize, per_queue: usize) {
        *self.queues.lock() = vec![(0, 0); queues];
        self.workers_per_queue
            .store(per_queue as u64, Ordering::Relaxed);
    }

    /// A worker of queue `qid` is done registering; `taken`: the kernel has its entry.
    pub fn settled(&self, qid: usize, taken: bool) {
        let mut q = self.queues.lock();
        if let Some(q) = q.get_mut(qid) {
            q.0 += 1;
            q.1 += usize::from(taken);
        }
        self.cv.notify_all();
    }

    /// Waits (at most `limit`) until every worker has registered or given up. Then `Err(q)`
    /// names a queue left without an entry while others have one (the kernel would hold
    /// every request back for good).
    pub fn wait(&self, limit: Duration) -> Result<(), usize> {
        let per = self.workers_per_queue.load(Ordering::Relaxed) as usize;
        let deadline = Instant::now() + limit;
        let mut queues = self.queues.lock();
        while queues.iter().any(|q| q.0 < per) {
            if self.cv.wait_until(&mut queues, deadline).timed_out() {
                break;
            }
        }
        if queues.iter().all(|q| q.1 == 0) {
            return Ok(());
        }
        queues.iter().position(|q| q.1 == 0).map_or(Ok(()), Err)
    }
}
