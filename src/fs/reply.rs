//! The answers the filesystem gives, independent of how requests arrive: one trait per kind of
//! reply (the methods of fuser's reply types, which came first). Both transports answer
//! through [`crate::transport::wire::Reply`]; the traits keep the operations in
//! [`super::UnionFs`] free of the wire format, and testable with other answer types.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo};

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

/// Answer to lookup, mknod, mkdir, symlink, link.
pub trait EntryOut {
    /// The entry found or made.
    fn entry(self, ttl: &Duration, attr: &FileAttr, generation: Generation);
    /// Failure.
    fn error(self, err: Errno);
}

/// Answer to getattr and setattr.
pub trait AttrOut {
    /// The attributes.
    fn attr(self, ttl: &Duration, attr: &FileAttr);
    /// Failure.
    fn error(self, err: Errno);
}

/// Answer carrying bytes (read, readlink).
pub trait DataOut {
    /// The bytes.
    fn data(self, data: &[u8]);
    /// Failure.
    fn error(self, err: Errno);
}

/// Answer with no content.
pub trait EmptyOut {
    /// Success.
    fn ok(self);
    /// Failure.
    fn error(self, err: Errno);
}

/// Answer to open and opendir.
pub trait OpenOut {
    /// Registers a passthrough backing file for this open.
    fn open_backing(&self, fd: &OwnedFd) -> std::io::Result<Backing>;
    /// Opened: I/O passed through to `backing` when given, else through the daemon or the
    /// page cache.
    fn opened(self, fh: FileHandle, flags: FopenFlags, backing: Option<&Backing>);
    /// Failure.
    fn error(self, err: Errno);
}

/// Answer to create.
pub trait CreateOut {
    /// Registers a passthrough backing file for the new open.
    fn open_backing(&self, fd: &OwnedFd) -> std::io::Result<Backing>;
    /// Created and opened, with passthrough I/O to `backing` when given.
    #[allow(clippy::too_many_arguments)]
    fn created(
        self,
        ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
        fh: FileHandle,
        flags: FopenFlags,
        backing: Option<&Backing>,
    );
    /// Failure.
    fn error(self, err: Errno);
}

/// Answer to write and copy_file_range.
pub trait WriteOut {
    /// Bytes written.
    fn written(self, size: u32);
    /// Failure.
    fn error(self, err: Errno);
}

/// Answer to statfs.
pub trait StatfsOut {
    /// Filesystem statistics.
    #[allow(clippy::too_many_arguments)]
    fn statfs(
        self,
        blocks: u64,
        bfree: u64,
        bavail: u64,
        files: u64,
        ffree: u64,
        bsize: u32,
        namelen: u32,
        frsize: u32,
    );
    /// Failure.
    fn error(self, err: Errno);
}

/// Answer to getxattr and listxattr.
pub trait XattrOut {
    /// The size the value would need (the caller asked with size 0).
    fn size(self, size: u32);
    /// The value.
    fn data(self, data: &[u8]);
    /// Failure.
    fn error(self, err: Errno);
}

/// Answer to lseek.
pub trait LseekOut {
    /// The resulting offset.
    fn offset(self, offset: i64);
    /// Failure.
    fn error(self, err: Errno);
}

/// Answer to readdir: entries until the buffer is full.
pub trait DirOut {
    /// Adds an entry; true when it did not fit (and was not added).
    fn add(&mut self, ino: INodeNo, offset: u64, kind: FileType, name: &OsStr) -> bool;
    /// Sends the entries added.
    fn ok(self);
    /// Failure.
    fn error(self, err: Errno);
}

/// Answer to readdirplus: entries with their attributes until the buffer is full.
pub trait DirPlusOut {
    /// Adds an entry; true when it did not fit (and was not added).
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        ino: INodeNo,
        offset: u64,
        name: &OsStr,
        ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
    ) -> bool;
    /// Adds an entry without attributes (the kernel then lists the name but makes no inode for
    /// it); true when it did not fit.
    fn add_bare(&mut self, d_ino: INodeNo, offset: u64, kind: FileType, name: &OsStr) -> bool;
    /// Sends the entries added.
    fn ok(self);
    /// Failure.
    fn error(self, err: Errno);
}
