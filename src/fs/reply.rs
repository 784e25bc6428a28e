//! What the operations answer besides attributes, bytes and errors: open handles (with their
//! passthrough backing file), statfs numbers, and the sinks directory listings fill. The
//! transports turn these into the kernel's reply layouts (`transport::wire`).

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use fuser::{FileAttr, FileType, FopenFlags};

use crate::sys;

/// A passthrough backing file registered with the kernel; dropping it unregisters it.
#[derive(Debug)]
pub struct Backing {
    /// The FUSE connection's device.
    dev: Arc<OwnedFd>,
    /// The kernel's id of the backing file, named in open replies.
    pub id: u32,
}

impl Backing {
    /// Registers `fd` on the device `dev`.
    pub fn register(dev: &Arc<OwnedFd>, fd: &OwnedFd) -> std::io::Result<Backing> {
        let id = sys::uring::backing_open(dev.as_fd(), fd.as_fd())?;
        Ok(Backing {
            dev: Arc::clone(dev),
            id,
        })
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        if let Err(e) = sys::uring::backing_close(self.dev.as_fd(), self.id) {
            log::debug!("closing backing file {}: {e}", self.id);
        }
    }
}

/// A backing file registration for a new open (passthrough).
pub type Register<'a> = &'a dyn Fn(&OwnedFd) -> std::io::Result<Backing>;

/// An opened file or directory.
#[derive(Debug)]
pub struct Opened {
    /// Its handle.
    pub fh: u64,
    /// How the kernel does its I/O (`FOPEN_*`).
    pub flags: FopenFlags,
    /// The backing file the kernel reads and writes itself (passthrough), if any.
    pub backing: Option<Arc<Backing>>,
}

/// A file made and opened by CREATE.
#[derive(Debug)]
pub struct Created {
    /// Its attributes.
    pub attr: FileAttr,
    /// Its open handle.
    pub opened: Opened,
}

/// The numbers of STATFS (statvfs(3) fields).
#[derive(Debug, Clone, Copy)]
pub struct Statfs {
    /// Blocks in all.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Free blocks for unprivileged users.
    pub bavail: u64,
    /// Inodes in all.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Longest name.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
}

/// Where READDIR puts its entries: until it is full.
pub trait DirOut {
    /// Adds an entry; true when it did not fit (and was not added).
    fn add(&mut self, ino: u64, offset: u64, kind: FileType, name: &OsStr) -> bool;
}

/// Where READDIRPLUS puts its entries with their attributes: until it is full.
pub trait DirPlusOut {
    /// Adds an entry of node `ino`; true when it did not fit (and was not added).
    fn add(&mut self, ino: u64, offset: u64, name: &OsStr, ttl: &Duration, attr: &FileAttr)
        -> bool;
    /// Adds an entry without attributes (the kernel then lists the name but makes no inode for
    /// it); true when it did not fit.
    fn add_bare(&mut self, d_ino: u64, offset: u64, kind: FileType, name: &OsStr) -> bool;
}
