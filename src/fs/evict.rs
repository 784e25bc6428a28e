//! A bounded node table: past `max_nodes` nodes, the kernel is asked to drop the least
//! recently used inodes nothing holds (FUSE_NOTIFY_PRUNE), and their FORGETs shrink the table.
//!
//! Why: every inode the kernel caches is a node here (~180 bytes), and the kernel caches as
//! many as memory allows: a walk of 10 million files would hold 1.7 GiB in the daemon until
//! memory pressure made the kernel let go. Pruning keeps only unused names out: an open file,
//! a working directory or a mount point on a name in the union stays (an entry invalidation
//! would have unmounted whatever was mounted there). A dropped name costs one LOOKUP when it
//! is used again. Kernels before 6.18 refuse the message; the table is then unbounded, as
//! before, and the daemon says so once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use log::{debug, info};

use super::inode::Inodes;
use super::notify::{Notify, PRUNE_BATCH};
use super::UnionFs;
use crate::sys::Errno;

/// What a trimming thread needs, shared with the filesystem.
#[derive(Debug)]
pub struct Trim {
    /// Nodes kept at most (0: no limit).
    pub max_nodes: usize,
    /// A thread is trimming now.
    running: AtomicBool,
    /// Table size below which no trim starts (what was left in use last time, plus slack).
    quiet_below: AtomicUsize,
}

impl Trim {
    /// A limit of `max_nodes` nodes (0: none).
    pub fn new(max_nodes: usize) -> Self {
        Trim {
            max_nodes,
            running: AtomicBool::new(false),
            quiet_below: AtomicUsize::new(0),
        }
    }
}

impl UnionFs {
    /// Called with the table's size after a node was added: starts a trimming thread when the
    /// table is over its limit and none runs.
    pub(super) fn over_limit(&self, held: usize) {
        let max = self.trim.max_nodes;
        if max == 0
            || held <= max
            || held <= self.trim.quiet_below.load(Ordering::Relaxed)
            || self.trim.running.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let (inodes, notify, trim) = (
            Arc::clone(&self.inodes),
            Arc::clone(&self.notify),
            Arc::clone(&self.trim),
        );
        let spawned = std::thread::Builder::new()
            .name("unionfs-trim".into())
            .spawn(move || {
                let max = trim.max_nodes;
                let quiet = trim_until_under(&inodes, &notify, max).map_or(0, |h| h + max / 10);
                trim.quiet_below.store(quiet, Ordering::Relaxed);
                trim.running.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.trim.running.store(false, Ordering::Release);
        }
    }
}

/// Asks the kernel to drop nodes until the table is a tenth under `max` (so the next trim is
/// not one node away). Returns `Some(size)` when it stopped because what is left is in use:
/// trimming is then not tried again until the table grows past that size by a tenth of
/// `max`.
fn trim_until_under(inodes: &Inodes, notify: &Notify, max: usize) -> Option<usize> {
    let target = max - max / 10;
    let mut stalled = 0;
    loop {
        let held = inodes.len();
        if held <= target {
            return None;
        }
        let victims = inodes.victims(held - target);
        if victims.is_empty() {
            return Some(held);
        }
        for batch in victims.chunks(PRUNE_BATCH) {
            match notify.prune(batch) {
                Ok(()) => {}
                Err(Errno::ENOSYS) => {
                    info!(
                        "max_nodes: this kernel cannot be asked to drop inodes \
                         (FUSE_NOTIFY_PRUNE, Linux 6.18+); the node table grows with the \
                         kernel's cache"
                    );
                    return Some(usize::MAX - max);
                }
                Err(e) => debug!("prune: {e}"),
            }
        }
        // The FORGETs come through the transports: give them a moment before counting.
        std::thread::sleep(Duration::from_millis(10));
        if inodes.len() >= held {
            stalled += 1;
            if stalled >= 3 {
                return Some(held);
            }
        } else {
            stalled = 0;
        }
    }
}
