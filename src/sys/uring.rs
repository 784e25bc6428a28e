//! FUSE over io_uring, the kernel side of it: a ring per worker thread carrying entries of any
//! number of connections, the buffers the kernel writes requests into, and its two commands
//! (register an entry, commit a reply and fetch the next request). Everything that touches raw memory or the submission queue is here;
//! request parsing and dispatch are safe code in [`crate::transport`].

use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::{errno_of, Errno, Region, SysResult};

/// `struct fuse_uring_req_header`: 128 bytes for the in/out header, 128 for the op's fixed
/// argument, 32 for `fuse_uring_ent_in_out`.
pub const HEADER_LEN: usize = 288;
/// Offset of the op's fixed argument in the header buffer.
pub const OP_IN: usize = 128;
/// Offset of `fuse_uring_ent_in_out` in the header buffer.
pub const ENT_IN_OUT: usize = 256;

/// FUSE_IO_URING_CMD_REGISTER and _COMMIT_AND_FETCH (linux/fuse.h).
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;

/// One registered FUSE ring entry: the buffers the kernel writes one request into and reads
/// its reply from, for queue `qid` of the connection whose device is `dev`. The device fd
/// must stay open while the entry lives (the connection owner keeps it).
pub struct RingEntry {
    dev: i32,
    qid: u16,
    /// Anonymous mappings, so pages the kernel never writes (most of a 1 MiB payload buffer
    /// for metadata requests) cost no memory: an idle union's entries are nearly free.
    header: ManuallyDrop<Region>,
    payload: ManuallyDrop<Region>,
    iov: Box<[libc::iovec; 2]>,
    /// False while the kernel may still write into the buffers.
    released: bool,
}

// SAFETY: the raw buffers are owned by this value alone and only touched by the thread that
// owns it; moving it to that thread before use is sound.
unsafe impl Send for RingEntry {}

impl RingEntry {
    /// An entry for queue `qid` of the connection `dev`, with buffers for payloads of up to
    /// `payload_len` bytes (the kernel requires at least its max_write / max_pages size).
    pub fn new(dev: BorrowedFd<'_>, qid: u16, payload_len: usize) -> SysResult<RingEntry> {
        let header = ManuallyDrop::new(Region::new(HEADER_LEN)?);
        let payload = ManuallyDrop::new(Region::new(payload_len)?);
        let iov = Box::new([
            libc::iovec {
                iov_base: header.addr().cast(),
                iov_len: HEADER_LEN,
            },
            libc::iovec {
                iov_base: payload.addr().cast(),
                iov_len: payload_len,
            },
        ]);
        Ok(RingEntry {
            dev: dev.as_raw_fd(),
            qid,
            header,
            payload,
            iov,
            released: true,
        })
    }

    /// The request's headers: `fuse_in_header` at 0, the op's fixed argument at [`OP_IN`],
    /// `fuse_uring_ent_in_out` at [`ENT_IN_OUT`].
    pub fn header(&self) -> &[u8] {
        // SAFETY: HEADER_LEN bytes were mapped; the kernel wrote them before completing the
        // command and does not touch them again until the next command is pushed, which takes
        // `&mut self` and so ends this borrow.
        unsafe { std::slice::from_raw_parts(self.header.addr(), HEADER_LEN) }
    }

    /// The request's payload (names, data), `len` bytes of it.
    pub fn payload(&self, len: usize) -> &[u8] {
        let len = len.min(self.iov[1].iov_len);
        // SAFETY: as in `header`, for the payload buffer, bounded by its length.
        unsafe { std::slice::from_raw_parts(self.payload.addr(), len) }
    }

    /// Writes the reply: `fuse_out_header` and its payload, with the payload size the kernel
    /// reads in `fuse_uring_ent_in_out`. Returns false (and writes nothing) when it does not fit.
    pub fn put_reply(&mut self, out_header: &[u8; 16], body: &[u8]) -> bool {
        if body.len() > self.iov[1].iov_len {
            return false;
        }
        // SAFETY: the kernel is not using the buffers (a request is being answered) and
        // `&mut self` rules out other borrows of them; both copies stay inside the mappings.
        unsafe {
            let (h, p) = (self.header.addr(), self.payload.addr());
            std::ptr::copy_nonoverlapping(out_header.as_ptr(), h, 16);
            std::ptr::copy_nonoverlapping(body.as_ptr(), p, body.len());
            let sz = (body.len() as u32).to_ne_bytes();
            std::ptr::copy_nonoverlapping(sz.as_ptr(), h.add(ENT_IN_OUT + 16), 4);
        }
        true
    }

    /// Hands the pages the last request used back to the system (after a large read or
    /// write through the daemon), keeping the mapping: an idle entry then costs nothing.
    pub fn trim(&mut self) {
        // The kernel is not using the payload between requests.
        self.payload.discard();
    }
}

impl Drop for RingEntry {
    fn drop(&mut self) {
        // While the kernel may still write into the entry its mappings are leaked (untouched
        // pages cost nothing).
        if self.released {
            // SAFETY: dropped once, here, and the fields are not used after.
            unsafe {
                ManuallyDrop::drop(&mut self.header);
                ManuallyDrop::drop(&mut self.payload);
            }
        }
    }
}

/// What the kernel answered to a command on an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A request is in the entry's buffers.
    Request,
    /// The connection is gone (unmounted or aborted): the entry is released.
    Closed,
    /// The kernel refused the command with this errno (the entry is released).
    Failed(Errno),
}

/// One worker's io_uring, carrying entries of any number of FUSE connections (each entry's
/// commands name its connection's device) and a wakeup read. Completions name what they are
/// for by the `user_data` given with the command.
pub struct Ring {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    wake_buf: Box<[u8; 8]>,
}

// SAFETY: the ring and the wakeup buffer are used only by the thread that owns the value.
unsafe impl Send for Ring {}

impl Ring {
    /// A ring with room for `entries` commands in flight at once.
    pub fn new(entries: u32) -> SysResult<Ring> {
        // No IORING_SETUP_DEFER_TASKRUN: deferred task work runs only when its submitter
        // enters the ring, so a request the kernel hands to a worker that is exiting would
        // never be sent, and unmounting would wait for it forever. Ordinary task work falls
        // back to a kernel thread when the worker is gone.
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_coop_taskrun()
            .build(entries.next_power_of_two())
            .map_err(errno_of)?;
        Ok(Ring {
            ring,
            wake_buf: Box::new([0; 8]),
        })
    }

    fn push(&mut self, sqe: squeue::Entry128) -> SysResult<()> {
        loop {
            // SAFETY: every pointer an SQE carries (an entry's iovecs and buffers, the wakeup
            // buffer) outlives the command: entries are leaked unless released, and the
            // wakeup buffer lives as long as the ring.
            let pushed = unsafe { self.ring.submission().push(&sqe) }.is_ok();
            if pushed {
                return Ok(());
            }
            // Full: hand what is queued to the kernel and try again.
            self.submit()?;
        }
    }

    fn entry_cmd(e: &RingEntry, cmd_op: u32, commit_id: u64, user_data: u64) -> squeue::Entry128 {
        // struct fuse_uring_cmd_req: flags, commit_id, qid, padding.
        let mut cmd = [0u8; 80];
        cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
        cmd[16..18].copy_from_slice(&e.qid.to_ne_bytes());
        let mut op = opcode::UringCmd80::new(types::Fd(e.dev), cmd_op).cmd(cmd);
        if cmd_op == CMD_REGISTER {
            op = op.addr(Some(e.iov.as_ptr() as u64));
        }
        let sqe = op.build().user_data(user_data);
        if cmd_op == CMD_REGISTER {
            // The kernel wants the iovec count in sqe->len, which the builder has no field for.
            with_len(sqe, 2)
        } else {
            sqe
        }
    }

    /// Queues the registration of `e` (its buffers go to the kernel); its completion, under
    /// `user_data`, brings its first request or the refusal.
    pub fn register(&mut self, e: &mut RingEntry, user_data: u64) -> SysResult<()> {
        let sqe = Self::entry_cmd(e, CMD_REGISTER, 0, user_data);
        self.push(sqe)?;
        e.released = false;
        Ok(())
    }

    /// Queues the reply now in `e`'s buffers (request `commit_id`) and the fetch of its next
    /// request, which completes under `user_data`.
    pub fn commit(&mut self, e: &mut RingEntry, commit_id: u64, user_data: u64) -> SysResult<()> {
        let sqe = Self::entry_cmd(e, CMD_COMMIT_AND_FETCH, commit_id, user_data);
        self.push(sqe)?;
        e.released = false;
        Ok(())
    }

    /// Queues a read of the wakeup counter `fd`, completing under `user_data` once signalled.
    pub fn watch(&mut self, fd: BorrowedFd<'_>, user_data: u64) -> SysResult<()> {
        let buf = self.wake_buf.as_mut_ptr();
        let sqe = opcode::Read::new(types::Fd(fd.as_raw_fd()), buf, 8)
            .build()
            .user_data(user_data);
        // The 64-byte SQE in a ring of 128-byte ones: the upper half stays zero.
        self.push(squeue::Entry128::from(sqe))
    }

    /// Hands what was queued to the kernel without waiting.
    pub fn submit(&mut self) -> SysResult<()> {
        loop {
            match self.ring.submit() {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                r => return r.map(drop).map_err(errno_of),
            }
        }
    }

    /// Hands what was queued to the kernel and waits for at least one completion; returns
    /// every completion there is, as (user_data, result).
    pub fn wait(&mut self) -> SysResult<Vec<(u64, i32)>> {
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(errno_of(e)),
            }
            let done: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            if !done.is_empty() {
                return Ok(done);
            }
        }
    }

    /// Completions already there, without waiting.
    pub fn ready(&mut self) -> Vec<(u64, i32)> {
        self.ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect()
    }
}

/// What a command's completion `res` says about entry `e`: a request in its buffers, or its
/// end (the kernel no longer holds it).
pub fn entry_event(e: &mut RingEntry, res: i32) -> Event {
    if res >= 0 {
        return Event::Request;
    }
    e.released = true;
    match Errno::from_raw(-res) {
        Errno::ENOTCONN | Errno::ECONNABORTED | Errno::ECANCELED | Errno::ENODEV => Event::Closed,
        err => Event::Failed(err),
    }
}

/// `sqe` with its `len` field (u32 at byte 24 of `struct io_uring_sqe`) set.
fn with_len(sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    // SAFETY: Entry128 is #[repr(C)] over a 64-byte io_uring_sqe and 64 command bytes, all
    // plain integers (any bit pattern is valid) and without Drop; transmute checks the size.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    raw[24..28].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: as above, in the other direction.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

/// Registers `fd` as a passthrough backing file with the FUSE connection `dev`
/// (FUSE_DEV_IOC_BACKING_OPEN); the kernel answers with its id.
pub fn backing_open(dev: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> SysResult<u32> {
    // struct fuse_backing_map { int32 fd; uint32 flags; uint64 padding; }
    #[repr(C)]
    struct Map {
        fd: i32,
        flags: u32,
        padding: u64,
    }
    const BACKING_OPEN: libc::c_ulong = 0x4010_e501; // _IOW(229, 1, struct fuse_backing_map)
    let map = Map {
        fd: fd.as_raw_fd(),
        flags: 0,
        padding: 0,
    };
    // SAFETY: `map` is a valid fuse_backing_map for the duration of the call.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), BACKING_OPEN as _, &map as *const Map) };
    super::check(r).map(|id| id as u32)
}

/// A new `/dev/fuse` fd attached to the connection of `dev` (FUSE_DEV_IOC_CLONE): requests
/// read from it are answered on it, with their own processing list in the kernel, so
/// readers on separate clones do not contend for one.
pub fn dev_clone(dev: BorrowedFd<'_>) -> SysResult<OwnedFd> {
    let fd = super::open_path(
        std::path::Path::new("/dev/fuse"),
        libc::O_RDWR | libc::O_CLOEXEC,
    )?;
    // _IOR(229, 0, uint32_t)
    const CLONE: libc::c_ulong = 0x8004_e500;
    let src = dev.as_raw_fd() as u32;
    // SAFETY: the ioctl reads one u32 (the fd to clone) from a valid pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), CLONE as _, &src as *const u32) };
    super::check(r).map(|_| fd)
}

/// Drops a backing file registration (FUSE_DEV_IOC_BACKING_CLOSE).
pub fn backing_close(dev: BorrowedFd<'_>, id: u32) -> SysResult<()> {
    // _IOW(229, 2, uint32_t)
    const BACKING_CLOSE: libc::c_ulong = 0x4004_e502;
    // SAFETY: the ioctl reads one u32 from a valid pointer.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), BACKING_CLOSE as _, &id as *const u32) };
    super::check(r).map(drop)
}

/// Pins the calling thread to `cpu` (queue `qid` is fed by requests made on CPU `qid`).
pub fn pin_to_cpu(cpu: usize) -> SysResult<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
}

/// Switches the calling thread between SCHED_IDLE and SCHED_OTHER.
pub fn set_idle_policy(idle: bool) -> SysResult<()> {
    let policy = if idle {
        libc::SCHED_IDLE
    } else {
        libc::SCHED_OTHER
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; param is a valid sched_param.
    let r = unsafe { libc::sched_setscheduler(0, policy, &param) };
    super::check(r).map(drop)
}
