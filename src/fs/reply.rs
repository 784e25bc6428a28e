//! The answers the filesystem gives, independent of how requests arrive: one trait per kind of
//! reply, with the same methods as fuser's reply types. `/dev/fuse` requests answer through
//! fuser's types, io_uring requests through [`crate::ring`]'s, and the operations in
//! [`super::UnionFs`] serve both.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo};

use crate::sys;

/// A passthrough backing file registered with the kernel; dropping it unregisters it.
#[derive(Debug)]
pub enum Backing {
    /// Registered through fuser's channel (requests read from `/dev/fuse`).
    Fuser(fuser::BackingId),
    /// Registered directly on the device fd (requests served over io_uring).
    Raw {
        /// The FUSE connection's device.
        dev: Arc<OwnedFd>,
        /// The kernel's id of the backing file.
        id: u32,
    },
}

impl Backing {
    /// Registers `fd` on the device `dev`.
    pub fn register_raw(dev: &Arc<OwnedFd>, fd: &OwnedFd) -> std::io::Result<Backing> {
        let id = sys::uring::backing_open(dev.as_fd(), fd.as_fd())?;
        Ok(Backing::Raw {
            dev: Arc::clone(dev),
            id,
        })
    }

    /// The id to send in an open reply, when this registration can be named there.
    pub fn raw_id(&self) -> Option<u32> {
        match self {
            Backing::Raw { id, .. } => Some(*id),
            Backing::Fuser(_) => None,
        }
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        if let Backing::Raw { dev, id } = self {
            if let Err(e) = sys::uring::backing_close(dev.as_fd(), *id) {
                log::debug!("closing backing file {id}: {e}");
            }
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
    /// Opened, I/O through the daemon or the page cache.
    fn opened(self, fh: FileHandle, flags: FopenFlags);
    /// Opened, I/O passed through to `backing`.
    fn opened_passthrough(self, fh: FileHandle, flags: FopenFlags, backing: &Backing);
    /// Failure.
    fn error(self, err: Errno);
}

/// Answer to create.
pub trait CreateOut {
    /// Registers a passthrough backing file for the new open.
    fn open_backing(&self, fd: &OwnedFd) -> std::io::Result<Backing>;
    /// Created and opened.
    fn created(
        self,
        ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
        fh: FileHandle,
        flags: FopenFlags,
    );
    /// Created and opened with passthrough I/O.
    #[allow(clippy::too_many_arguments)]
    fn created_passthrough(
        self,
        ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
        fh: FileHandle,
        flags: FopenFlags,
        backing: &Backing,
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
    /// Whether this transport can send entries without attributes (`add_bare`).
    fn sends_bare(&self) -> bool;
    /// Adds an entry without attributes (the kernel then lists the name but makes no inode for
    /// it); true when it did not fit. Only called when `sends_bare`.
    fn add_bare(&mut self, d_ino: INodeNo, offset: u64, kind: FileType, name: &OsStr) -> bool;
    /// Sends the entries added.
    fn ok(self);
    /// Failure.
    fn error(self, err: Errno);
}

/// `error` of a reply trait, for fuser's reply type `$t`.
macro_rules! fuser_error {
    ($t:ident) => {
        fn error(self, err: Errno) {
            fuser::$t::error(self, err)
        }
    };
}

impl EntryOut for fuser::ReplyEntry {
    fn entry(self, ttl: &Duration, attr: &FileAttr, generation: Generation) {
        fuser::ReplyEntry::entry(self, ttl, attr, generation)
    }
    fuser_error!(ReplyEntry);
}

impl AttrOut for fuser::ReplyAttr {
    fn attr(self, ttl: &Duration, attr: &FileAttr) {
        fuser::ReplyAttr::attr(self, ttl, attr)
    }
    fuser_error!(ReplyAttr);
}

impl DataOut for fuser::ReplyData {
    fn data(self, data: &[u8]) {
        fuser::ReplyData::data(self, data)
    }
    fuser_error!(ReplyData);
}

impl EmptyOut for fuser::ReplyEmpty {
    fn ok(self) {
        fuser::ReplyEmpty::ok(self)
    }
    fuser_error!(ReplyEmpty);
}

impl OpenOut for fuser::ReplyOpen {
    fn open_backing(&self, fd: &OwnedFd) -> std::io::Result<Backing> {
        fuser::ReplyOpen::open_backing(self, fd).map(Backing::Fuser)
    }
    fn opened(self, fh: FileHandle, flags: FopenFlags) {
        fuser::ReplyOpen::opened(self, fh, flags)
    }
    fn opened_passthrough(self, fh: FileHandle, flags: FopenFlags, backing: &Backing) {
        match backing {
            Backing::Fuser(b) => fuser::ReplyOpen::opened_passthrough(self, fh, flags, b),
            // Registered by the other transport: fuser cannot name it. Not reached while one
            // connection uses one transport for opens; direct I/O stays correct if it is.
            Backing::Raw { .. } => {
                fuser::ReplyOpen::opened(self, fh, flags | FopenFlags::FOPEN_DIRECT_IO)
            }
        }
    }
    fuser_error!(ReplyOpen);
}

impl CreateOut for fuser::ReplyCreate {
    fn open_backing(&self, fd: &OwnedFd) -> std::io::Result<Backing> {
        fuser::ReplyCreate::open_backing(self, fd).map(Backing::Fuser)
    }
    fn created(
        self,
        ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
        fh: FileHandle,
        flags: FopenFlags,
    ) {
        fuser::ReplyCreate::created(self, ttl, attr, generation, fh, flags)
    }
    fn created_passthrough(
        self,
        ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
        fh: FileHandle,
        flags: FopenFlags,
        backing: &Backing,
    ) {
        match backing {
            Backing::Fuser(b) => {
                fuser::ReplyCreate::created_passthrough(self, ttl, attr, generation, fh, flags, b)
            }
            Backing::Raw { .. } => fuser::ReplyCreate::created(
                self,
                ttl,
                attr,
                generation,
                fh,
                flags | FopenFlags::FOPEN_DIRECT_IO,
            ),
        }
    }
    fuser_error!(ReplyCreate);
}

impl WriteOut for fuser::ReplyWrite {
    fn written(self, size: u32) {
        fuser::ReplyWrite::written(self, size)
    }
    fuser_error!(ReplyWrite);
}

impl StatfsOut for fuser::ReplyStatfs {
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
    ) {
        fuser::ReplyStatfs::statfs(
            self, blocks, bfree, bavail, files, ffree, bsize, namelen, frsize,
        )
    }
    fuser_error!(ReplyStatfs);
}

impl XattrOut for fuser::ReplyXattr {
    fn size(self, size: u32) {
        fuser::ReplyXattr::size(self, size)
    }
    fn data(self, data: &[u8]) {
        fuser::ReplyXattr::data(self, data)
    }
    fuser_error!(ReplyXattr);
}

impl LseekOut for fuser::ReplyLseek {
    fn offset(self, offset: i64) {
        fuser::ReplyLseek::offset(self, offset)
    }
    fuser_error!(ReplyLseek);
}

impl DirOut for fuser::ReplyDirectory {
    fn add(&mut self, ino: INodeNo, offset: u64, kind: FileType, name: &OsStr) -> bool {
        fuser::ReplyDirectory::add(self, ino, offset, kind, name)
    }
    fn ok(self) {
        fuser::ReplyDirectory::ok(self)
    }
    fuser_error!(ReplyDirectory);
}

impl DirPlusOut for fuser::ReplyDirectoryPlus {
    fn add(
        &mut self,
        ino: INodeNo,
        offset: u64,
        name: &OsStr,
        ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
    ) -> bool {
        fuser::ReplyDirectoryPlus::add(self, ino, offset, name, ttl, attr, generation)
    }
    fn sends_bare(&self) -> bool {
        // fuser writes the entry's node id as its d_ino too: a bare entry would list inode 0.
        false
    }
    fn add_bare(&mut self, _: INodeNo, _: u64, _: FileType, _: &OsStr) -> bool {
        // Unreachable: readdirplus asks sends_bare first.
        true
    }
    fn ok(self) {
        fuser::ReplyDirectoryPlus::ok(self)
    }
    fuser_error!(ReplyDirectoryPlus);
}
