//! Open file and directory handles. A file handle owns the layer file's descriptor, so an fd
//! opened before a copy-up, rename or unlink keeps reading and writing the file it opened.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::layer::readdir::MergedEntry;

/// An open regular file.
#[derive(Debug)]
pub struct OpenFile {
    /// The layer file.
    pub fd: OwnedFd,
    /// Its union inode.
    pub ino: u64,
    /// Opened for writing (so it lives in the upper).
    pub writable: bool,
    /// The file is in the upper layer (only such fds may be used to change anything).
    pub in_upper: bool,
    /// The kernel reads and writes this file itself through this backing file (passthrough);
    /// released with the handle.
    pub backing: Option<Arc<super::reply::Backing>>,
    /// For a lower file opened before its copy-up: the upper copy, opened at the first
    /// request after the copy-up (see `UnionFs::current_fd`).
    pub moved: std::sync::OnceLock<OwnedFd>,
    /// Served by the daemon with direct I/O while passthrough is on (counted in
    /// `UnionFs::daemon_io` until it closes).
    pub daemon_io: bool,
}

/// An open directory stream: a snapshot taken at the first read (and again on rewind).
#[derive(Debug, Default)]
pub struct OpenDir {
    /// The listing, once taken.
    pub entries: Mutex<Option<Arc<Vec<MergedEntry>>>>,
}

/// Handle tables.
#[derive(Debug, Default)]
pub struct Handles {
    next: AtomicU64,
    /// Files by handle.
    pub files: DashMap<u64, Arc<OpenFile>>,
    /// Directories by handle.
    pub dirs: DashMap<u64, Arc<OpenDir>>,
}

impl Handles {
    /// A fresh handle number.
    pub fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The open file behind `fh`.
    pub fn file(&self, fh: u64) -> Option<Arc<OpenFile>> {
        self.files.get(&fh).map(|f| Arc::clone(f.value()))
    }

    /// The open directory behind `fh`.
    pub fn dir(&self, fh: u64) -> Option<Arc<OpenDir>> {
        self.dirs.get(&fh).map(|f| Arc::clone(f.value()))
    }
}
