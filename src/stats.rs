//! Runtime counters a user can act on: requests by type, copy-ups and bytes copied, whiteouts
//! written, open handles, inodes held, and whether passthrough is on. Reported on SIGUSR1.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Request types counted, in report order.
pub const OPS: [&str; 33] = [
    "lookup",
    "forget",
    "getattr",
    "setattr",
    "readlink",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "rename",
    "link",
    "open",
    "read",
    "write",
    "flush",
    "release",
    "fsync",
    "opendir",
    "readdir",
    "readdirplus",
    "releasedir",
    "fsyncdir",
    "statfs",
    "setxattr",
    "getxattr",
    "listxattr",
    "removexattr",
    "create",
    "fallocate",
    "lseek",
    "copy_file_range",
    "init",
];

/// The counters of one mount.
#[derive(Debug)]
pub struct Stats {
    ops: [AtomicU64; OPS.len()],
    /// Entries copied up into the upper.
    pub copy_ups: AtomicU64,
    /// Bytes of file data copied by copy-ups.
    pub bytes_copied: AtomicU64,
    /// Whiteouts written.
    pub whiteouts: AtomicU64,
    /// Passthrough negotiated with the kernel.
    pub passthrough: AtomicBool,
    /// Open file handles.
    pub open_handles: AtomicU64,
    /// Inodes the kernel holds references to.
    pub inodes: AtomicU64,
    /// Requests served over io_uring (the rest came through `/dev/fuse`).
    pub ring_requests: AtomicU64,
    /// How the io_uring workers' registration went.
    pub ring: crate::transport::ring::RingStart,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            ops: std::array::from_fn(|_| AtomicU64::new(0)),
            copy_ups: AtomicU64::new(0),
            bytes_copied: AtomicU64::new(0),
            whiteouts: AtomicU64::new(0),
            passthrough: AtomicBool::new(false),
            open_handles: AtomicU64::new(0),
            inodes: AtomicU64::new(1),
            ring_requests: AtomicU64::new(0),
            ring: Default::default(),
        }
    }
}

impl Stats {
    /// Counts one request named `op` (one of [`OPS`]).
    pub fn count(&self, op: &str) {
        if let Some(i) = OPS.iter().position(|o| *o == op) {
            self.ops[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A `key value` line per counter.
    pub fn report(&self) -> String {
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
        let (entries, workers) = self.ring.entries();
        let _ = writeln!(s, "ring_entries {entries} of {workers}");
        let _ = writeln!(s, "copy_ups {}", self.copy_ups.load(Ordering::Relaxed));
        let _ = writeln!(
            s,
            "bytes_copied {}",
            self.bytes_copied.load(Ordering::Relaxed)
        );
        let _ = writeln!(s, "whiteouts {}", self.whiteouts.load(Ordering::Relaxed));
        for (i, op) in OPS.iter().enumerate() {
            let n = self.ops[i].load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(s, "requests.{op} {n}");
            }
        }
        s
    }
}
