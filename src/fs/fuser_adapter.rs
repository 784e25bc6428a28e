//! Requests read from `/dev/fuse` by fuser's session: each goes straight to the operation of
//! the same name on [`UnionFs`]. FUSE_INIT also decides whether the io_uring transport
//! ([`crate::ring`]) takes over the other requests.

use std::cell::Cell;
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    FileHandle, Filesystem, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::{Caller, UnionFs};

/// fuser's view of the filesystem.
pub struct FuserAdapter {
    fs: Arc<UnionFs>,
    /// The connection's device and whether to serve requests over io_uring when offered.
    uring: Option<Arc<OwnedFd>>,
    /// Take the ring even when its workers cannot keep callers on their CPU.
    uring_always: bool,
}

impl FuserAdapter {
    /// Serves `fs`; with `uring` (the device fd), switches to io_uring when the kernel offers
    /// it and, unless `uring_always`, the ring's workers can keep callers on their CPU.
    pub fn new(fs: Arc<UnionFs>, uring: Option<Arc<OwnedFd>>, uring_always: bool) -> Self {
        FuserAdapter {
            fs,
            uring,
            uring_always,
        }
    }
}

/// How long a `/dev/fuse` thread rests after taking FORGETs while the ring serves requests:
/// the kernel holds forgotten nodes that long at most, and never waits for the answer.
const FORGET_PACE: Duration = Duration::from_millis(1);

/// Runs one request's operation so that a panic in it costs only that request: its reply,
/// dropped unsent while unwinding, answers EIO (fuser's rule), and the worker thread lives on.
/// A panic that killed the thread would leave fewer threads to serve the mount.
fn guarded(op: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(op)).is_err() {
        log::error!("a request's operation panicked; it was answered with EIO");
    }
}

thread_local! {
    /// The request whose forgets this thread last took.
    static FORGET_REQ: Cell<u64> = const { Cell::new(0) };
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

impl Filesystem for FuserAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        self.fs.negotiate(config);
        let offered = config
            .capabilities()
            .contains(InitFlags::FUSE_OVER_IO_URING);
        // Probed on a throwaway thread, so only where the ring is on offer.
        let hand_over = self.uring.is_some() && offered && crate::ring::can_hand_over();
        let ring = match &self.uring {
            None => {
                log::info!("transport: /dev/fuse (uring=off)");
                None
            }
            Some(_) if !offered => {
                log::info!(
                    "transport: /dev/fuse (the kernel does not offer io_uring: \
                     echo 1 > /sys/module/fuse/parameters/enable_uring)"
                );
                None
            }
            Some(_) if !hand_over && !self.uring_always => {
                // Callers then hop to another CPU on every reply: measured 32 us a round
                // trip against 17 over /dev/fuse (README, Performance).
                log::info!(
                    "transport: /dev/fuse (io_uring offered, but without CAP_SYS_NICE its \
                     workers cannot keep callers on their CPU; -o uring=on takes it anyway)"
                );
                None
            }
            Some(dev) => {
                let _ = config.add_capabilities(InitFlags::FUSE_INIT_EXT);
                config
                    .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                    .is_ok()
                    .then(|| Arc::clone(dev))
            }
        };
        if let Some(dev) = ring {
            // The workers register once the kernel has our INIT reply; until all queues are
            // registered the kernel holds new requests back, and falls back to /dev/fuse if
            // registration fails.
            crate::ring::start(Arc::clone(&self.fs), dev, hand_over);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        guarded(|| self.fs.lookup(parent, name, reply))
    }

    fn forget(&self, req: &Request, ino: INodeNo, nlookup: u64) {
        guarded(|| {
            self.fs.forget(ino, nlookup);
            // With the ring serving every other request, this thread exists for FORGETs:
            // each one read alone is a wakeup and two context switches, as much as the unlink
            // that caused it. Resting after taking one lets the kernel queue the next ones,
            // which it then hands over together as one BATCH_FORGET (whose nodes come here
            // with one request id, so a batch rests once). unlink 20,000: 0.71 -> 0.47 s;
            // rm -rf: 0.43 -> 0.31 s.
            let id = req.unique().0;
            if self.fs.ring_serving() && FORGET_REQ.replace(id) != id {
                std::thread::sleep(FORGET_PACE);
            }
        })
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        guarded(|| self.fs.getattr(ino, fh, reply))
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        guarded(|| {
            // chown needs no flag: our fchown clears the bits by itself.
            let kill = size.is_some() && caller(req).lacks_fsetid();
            self.fs
                .setattr(ino, mode, uid, gid, size, atime, mtime, fh, kill, reply)
        })
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        guarded(|| self.fs.readlink(ino, reply))
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        guarded(|| {
            self.fs
                .mknod(&caller(req), parent, name, mode, umask, rdev, reply)
        })
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        guarded(|| {
            self.fs
                .mkdir(&caller(req), parent, name, mode, umask, reply)
        })
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded(|| self.fs.unlink(parent, name, reply))
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded(|| self.fs.rmdir(parent, name, reply))
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        guarded(|| {
            self.fs
                .symlink(&caller(req), parent, link_name, target, reply)
        })
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        guarded(|| {
            self.fs
                .rename(parent, name, newparent, newname, flags, reply)
        })
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        guarded(|| self.fs.link(ino, newparent, newname, reply))
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        guarded(|| {
            let unprivileged = caller(req).lacks_fsetid();
            let kill = flags.0 & libc::O_TRUNC != 0 && unprivileged;
            self.fs.open(ino, flags, kill, unprivileged, reply)
        })
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        guarded(|| self.fs.read(fh, offset, size, reply))
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        guarded(|| {
            let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
            self.fs.write(fh, offset, data, kill, reply)
        })
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        guarded(|| self.fs.flush(reply))
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        guarded(|| self.fs.release(fh, reply))
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        guarded(|| self.fs.fsync(fh, datasync, reply))
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        guarded(|| self.fs.opendir(ino, reply))
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        guarded(|| self.fs.readdir(ino, fh, offset, reply))
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        guarded(|| self.fs.readdirplus(caller(req), ino, fh, offset, reply))
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        guarded(|| self.fs.releasedir(fh, reply))
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        guarded(|| self.fs.fsyncdir(reply))
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        guarded(|| self.fs.statfs(reply))
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        guarded(|| self.fs.setxattr(ino, name, value, flags, reply))
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        guarded(|| self.fs.getxattr(ino, name, size, reply))
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        guarded(|| self.fs.listxattr(ino, size, reply))
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded(|| self.fs.removexattr(ino, name, reply))
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        guarded(|| {
            self.fs
                .create(&caller(req), parent, name, mode, umask, flags, reply)
        })
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        guarded(|| self.fs.fallocate(fh, offset, length, mode, reply))
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        guarded(|| self.fs.lseek(fh, offset, whence, reply))
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        guarded(|| {
            self.fs
                .copy_file_range(fh_in, offset_in, fh_out, offset_out, len, reply)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::guarded;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// Stands for a fuser reply: dropped unsent, it answers the kernel (EIO).
    struct Reply(Arc<AtomicBool>);
    impl Drop for Reply {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_panicking_operation_drops_its_reply_and_the_thread_goes_on() {
        let answered = Arc::new(AtomicBool::new(false));
        let reply = Reply(Arc::clone(&answered));
        let survived = std::thread::spawn(move || {
            guarded(move || {
                let _r = reply;
                panic!("an operation's bug");
            });
            true
        })
        .join();
        assert!(matches!(survived, Ok(true)), "the worker thread died");
        assert!(answered.load(Ordering::SeqCst), "the reply was never sent");
    }
}
