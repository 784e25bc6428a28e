//! Runtime counters a user can act on: requests by type, open handles, inodes held, whether
//! passthrough is on, the io_uring transport's share, and (from the layer code) copy-ups,
//! bytes copied and whiteouts written. Reported on SIGUSR1.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::op::Op;
use crate::layer::stack::Counters;

/// The counters of one mount.
#[derive(Debug)]
pub struct Stats {
    ops: [AtomicU64; Op::ALL.len()],
    /// Passthrough negotiated with the kernel.
    pub passthrough: AtomicBool,
    /// Open file handles.
    pub open_handles: AtomicU64,
    /// Inodes the kernel holds references to.
    pub inodes: AtomicU64,
    /// Requests served over io_uring (the rest came through `/dev/fuse`).
    pub ring_requests: AtomicU64,
    /// io_uring queue entries the kernel took.
    pub ring_entries: AtomicU64,
    /// io_uring queue entries offered (workers started).
    pub ring_workers: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            ops: std::array::from_fn(|_| AtomicU64::new(0)),
            passthrough: AtomicBool::new(false),
            open_handles: AtomicU64::new(0),
            inodes: AtomicU64::new(1),
            ring_requests: AtomicU64::new(0),
            ring_entries: AtomicU64::new(0),
            ring_workers: AtomicU64::new(0),
        }
    }
}

impl Stats {
    /// Counts one request of type `op`.
    pub fn count(&self, op: Op) {
        self.ops[op.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A `key value` line per counter, with the layer code's `counters`.
    pub fn report(&self, counters: &Counters) -> String {
        let open_handles = self.open_handles.load(Ordering::Relaxed);
        let inodes = self.inodes.load(Ordering::Relaxed);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "passthrough {}",
            if self.passthrough.load(Ordering::Relaxed) {
                "on"
            } else {
                "off"
            }
        );
        let _ = writeln!(s, "open_handles {open_handles}");
        let _ = writeln!(s, "inodes {inodes}");
        let ring = self.ring_requests.load(Ordering::Relaxed);
        let _ = writeln!(s, "ring_requests {ring}");
        let entries = self.ring_entries.load(Ordering::Relaxed);
        let workers = self.ring_workers.load(Ordering::Relaxed);
        let _ = writeln!(s, "ring_entries {entries} of {workers}");
        let c = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let _ = writeln!(s, "copy_ups {}", c(&counters.copy_ups));
        let _ = writeln!(s, "bytes_copied {}", c(&counters.bytes_copied));
        let _ = writeln!(s, "whiteouts {}", c(&counters.whiteouts));
        let _ = writeln!(s, "flushes {}", c(&counters.flushes));
        let _ = writeln!(s, "flushed_behind {}", c(&counters.flushed_behind));
        for op in Op::ALL {
            let n = self.ops[op.index()].load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(s, "requests.{} {n}", op.name());
            }
        }
        s
    }
}
