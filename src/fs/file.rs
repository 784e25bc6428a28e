//! Open files: OPEN, CREATE, READ, WRITE, FLUSH, RELEASE, FSYNC, FALLOCATE, LSEEK and
//! COPY_FILE_RANGE. A handle owns its layer file's descriptor, so an fd opened before a
//! copy-up, rename or unlink keeps working; the passthrough data path is `io`'s.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::inode::Node;
use super::reply::{Created, Opened, Register};
use super::{name_bytes, Caller, UnionFs};
use crate::layer::copyup::CopyData;
use crate::layer::metacopy;
use crate::layer::ops::NewKind;
use crate::layer::LayerIdx;
use crate::sys::{self, Errno, SysResult};

/// How long an open that conflicts with a passthrough reader waits for that reader's RELEASE
/// (a reader really still open costs the writer this, once per file).
const RELEASE_GRACE: Duration = Duration::from_millis(100);

impl UnionFs {
    /// OPEN of node `ino` with open(2) `flags`. `kill_setid`: an O_TRUNC open by a caller
    /// without CAP_FSETID, which drops set-id bits like a write (see `drop_setid`);
    /// `unprivileged`: the caller is not root (see `Caller::lacks_fsetid`). A passthrough
    /// backing file is registered through `register`.
    pub fn open(
        &self,
        ino: u64,
        flags: i32,
        kill_setid: bool,
        unprivileged: bool,
        register: Register<'_>,
    ) -> SysResult<Opened> {
        let opened = self.retry(|| self.open_file(ino, flags, unprivileged, register))?;
        if let Some(f) = self.handles.file(opened.fh).filter(|_| kill_setid) {
            if let Err(e) = self.drop_setid_of(&f) {
                // The kernel never learns of this handle: close it here.
                self.close_handle(opened.fh);
                return Err(e);
            }
        }
        Ok(opened)
    }

    /// CREATE: makes the file `name` in `parent` and opens it with open(2) `flags`.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        register: Register<'_>,
    ) -> SysResult<Created> {
        let kind = NewKind::File {
            flags: open_flags(flags),
        };
        let (attr, fd) = self.do_create(caller, parent, name_bytes(name), kind, mode, umask)?;
        let fd = fd.ok_or(Errno::EIO)?;
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let node = self.inodes.get(attr.ino.0)?;
        let unprivileged = caller.lacks_fsetid();
        let opened = self.new_handle(&node, fd, writable, true, unprivileged, register);
        Ok(Created { attr, opened })
    }

    /// READ of up to `size` bytes at `offset` of open file `fh`.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> SysResult<Vec<u8>> {
        let f = self.handles.file(fh).ok_or(Errno::EBADF)?;
        let mut buf = vec![0u8; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match sys::pread(self.current_fd(&f), &mut buf[got..], offset + got as u64)? {
                0 => break,
                n => got += n,
            }
        }
        buf.truncate(got);
        Ok(buf)
    }

    /// WRITE of `data` at `offset` of open file `fh`; `kill_setid`: the writer lacks
    /// CAP_FSETID, so the file's set-id bits go (see `drop_setid`).
    pub fn write(&self, fh: u64, offset: u64, data: &[u8], kill_setid: bool) -> SysResult<u32> {
        let f = self.handles.file(fh).ok_or(Errno::EBADF)?;
        if kill_setid {
            self.drop_setid_of(&f)?;
        }
        let mut done = 0;
        while done < data.len() {
            match sys::pwrite(f.fd.as_fd(), &data[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(done as u32)
    }

    /// FLUSH (a close(2) of one fd): nothing to do, data goes straight to the layer file.
    pub fn flush(&self) -> SysResult<()> {
        Ok(())
    }

    /// RELEASE of open file `fh` (its last fd closed).
    pub fn release(&self, fh: u64) {
        self.close_handle(fh);
    }

    /// FSYNC of open file `fh` (only its data with `datasync`).
    pub fn fsync(&self, fh: u64, datasync: bool) -> SysResult<()> {
        if self.opts.volatile {
            // "Not implemented": the kernel answers this and every later fsync on the mount
            // with success and sends no more (fuse-overlayfs's fsync=0 does the same).
            return Err(Errno::ENOSYS);
        }
        let f = self.handles.file(fh).ok_or(Errno::EBADF)?;
        // A copy flushed behind is flushed and loses its record first: a crash after this
        // fsync must not have the next mount copy the file again from its lower.
        self.behind.settle(f.ino)?;
        self.stack.counters.flushes.fetch_add(1, Ordering::Relaxed);
        sys::fsync(f.fd.as_fd(), datasync)
    }

    /// FALLOCATE of `length` bytes at `offset` of open file `fh`, fallocate(2) `mode`.
    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> SysResult<()> {
        let f = self.handles.file(fh).ok_or(Errno::EBADF)?;
        sys::fallocate(f.fd.as_fd(), mode, offset, length)
    }

    /// LSEEK (SEEK_DATA, SEEK_HOLE, ...) in open file `fh`.
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> SysResult<i64> {
        let f = self.handles.file(fh).ok_or(Errno::EBADF)?;
        sys::lseek(self.current_fd(&f), offset, whence)
    }

    /// COPY_FILE_RANGE of up to `len` bytes from open file `fh_in` to `fh_out`.
    pub fn copy_file_range(
        &self,
        fh_in: u64,
        offset_in: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
    ) -> SysResult<u32> {
        let (Some(a), Some(b)) = (self.handles.file(fh_in), self.handles.file(fh_out)) else {
            return Err(Errno::EBADF);
        };
        let mut oi = offset_in as i64;
        let mut oo = offset_out as i64;
        let len = len.min(1 << 30) as usize;
        let n = sys::copy_file_range(self.current_fd(&a), &mut oi, b.fd.as_fd(), &mut oo, len)?;
        Ok(n as u32)
    }

    /// A regular file just opened as `fd` from `layer` may be a metadata-only stub (a lower
    /// one: an upper with stubs made a layer). A reader gets the file it points at in the
    /// layers below; a writer, always on an upper stub, first fills in its data (or, with
    /// O_TRUNC, only drops the record: the open has already thrown the data away). Returns the
    /// fd to use and whether it is the upper's.
    pub(super) fn resolve_stub(
        &self,
        node: &Node,
        fd: OwnedFd,
        layer: LayerIdx,
        writable: bool,
        trunc: bool,
    ) -> SysResult<(OwnedFd, bool)> {
        let in_upper = self.stack.is_upper(layer);
        let Some(stub) = metacopy::read(&self.stack, fd.as_fd())? else {
            return Ok((fd, in_upper));
        };
        if !in_upper || (!writable && !trunc) {
            return Ok((metacopy::open_source(&self.stack, &stub, layer)?, false));
        }
        let _guard = node.copy_lock.lock();
        if metacopy::read(&self.stack, fd.as_fd())?.is_some() {
            if trunc {
                metacopy::drop_record(&self.stack, fd.as_fd())?;
            } else {
                metacopy::fill(&self.stack, fd.as_fd(), &stub)?;
            }
        }
        Ok((fd, true))
    }

    fn open_file(
        &self,
        ino: u64,
        flags: i32,
        unprivileged: bool,
        register: Register<'_>,
    ) -> SysResult<Opened> {
        let node = self.inodes.get(ino)?;
        let acc = flags & libc::O_ACCMODE;
        let writable = acc != libc::O_RDONLY;
        let clean = open_flags(flags);
        let trunc = flags & libc::O_TRUNC != 0;
        let opened = (|| {
            if trunc {
                // An O_TRUNC open throws the data away: copy none of it.
                self.ensure_upper(&node, CopyData::Empty)?;
            } else if writable {
                self.ensure_upper_for_write(&node)?;
            }
            let c = self.ctx(ino)?;
            let fd = if self.stack.is_upper(c.layer) {
                self.stack.open_rel(c.layer, &c.rel, clean)?
            } else {
                // Reading a lower layer must not even move its atime.
                self.stack
                    .open_rel(c.layer, &c.rel, clean | libc::O_NOATIME)
                    .or_else(|_| self.stack.open_rel(c.layer, &c.rel, clean))?
            };
            Ok((fd, c.layer))
        })();
        let (fd, in_upper) = match opened {
            Ok((fd, layer)) if node.kind == libc::S_IFREG => {
                self.resolve_stub(&node, fd, layer, writable, trunc)?
            }
            Ok((fd, layer)) => (fd, self.stack.is_upper(layer)),
            // Unlinked but still open (e.g. reopened through /proc/PID/fd): reopen that file.
            Err(Errno::ENOENT) => match self.any_open(ino) {
                Some(f) if f.in_upper || !writable => (
                    sys::reopen(f.fd.as_fd(), clean & !libc::O_TRUNC)?,
                    f.in_upper,
                ),
                _ => return Err(Errno::ENOENT),
            },
            Err(e) => return Err(e),
        };
        if self.passthrough() && in_upper {
            let conflict = || {
                self.pts
                    .get(&node.ino)
                    .is_some_and(|pt| pt.opens > 0 && !(pt.upper && pt.writable))
            };
            self.await_release(conflict);
            if conflict() {
                return Err(self.rehome(&node));
            }
        }
        Ok(self.new_handle(&node, fd, writable, in_upper, unprivileged, register))
    }

    /// Waits while `conflict` holds, for at most `RELEASE_GRACE`, woken by each last close.
    /// RELEASE is asynchronous: a reader that has just closed (`cat f; echo x > f`) may still
    /// count for a while, longer on a loaded machine (2 ms was seen to be too short), and
    /// giving up means moving the name to a new inode number for the rest of the mount.
    fn await_release(&self, conflict: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + RELEASE_GRACE;
        let mut g = self.released.0.lock();
        while conflict() {
            if self.released.1.wait_until(&mut g, deadline).timed_out() {
                break;
            }
        }
    }

    /// Drops handle `fh`; its passthrough backing file joins the recently closed ones when
    /// this was the inode's last open.
    pub(super) fn close_handle(&self, fh: u64) {
        if let Some((_, f)) = self.handles.files.remove(&fh) {
            self.stats.open_handles.fetch_sub(1, Ordering::Relaxed);
            if f.writable && self.behind.pending(f.ino) && self.any_open(f.ino).is_none() {
                self.behind.closed(f.ino);
            }
            if f.daemon_io {
                if let Some(mut n) = self.daemon_io.get_mut(&f.ino) {
                    *n = n.saturating_sub(1);
                }
                self.daemon_io.remove_if(&f.ino, |_, n| *n == 0);
            }
            if f.backing.is_some() {
                let last = match self.pts.get_mut(&f.ino) {
                    Some(mut pt) => {
                        pt.opens = pt.opens.saturating_sub(1);
                        pt.opens == 0
                    }
                    None => false,
                };
                if last {
                    self.keep_backing(f.ino);
                    // Under the lock, so that a waiter between its check and its wait hears it.
                    let _g = self.released.0.lock();
                    self.released.1.notify_all();
                }
            }
        }
    }
}

/// The open(2) flags we pass on to a layer file: the kernel also sends internal bits (such as
/// `__FMODE_EXEC` for exec), which openat2 rejects, and creation flags we handle ourselves.
fn open_flags(flags: i32) -> i32 {
    flags
        & (libc::O_ACCMODE
            | libc::O_APPEND
            | libc::O_NONBLOCK
            | libc::O_SYNC
            | libc::O_DSYNC
            | libc::O_TRUNC
            | libc::O_LARGEFILE
            | libc::O_NOATIME)
}
