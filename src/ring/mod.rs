//! FUSE over io_uring: the transport that takes over from `/dev/fuse` once FUSE_INIT agreed on
//! it (kernel 6.14+, module parameter `fuse.enable_uring=1`).
//!
//! Why: on `/dev/fuse` every request wakes a daemon thread on whatever CPU it slept, and the
//! reply wakes the caller back across CPUs; on virtual machines those cross-CPU wakeups are
//! most of a metadata call's cost. The kernel queues a ring request on the queue of the CPU
//! the caller runs on, so a worker pinned to that CPU serves it without leaving the CPU.
//!
//! Each worker owns one ring with one registered entry and serves one request at a time; the
//! kernel hands requests to whichever entry of the CPU's queue is free, so a slow request (a
//! large copy-up) holds up only its own worker. FORGET and INTERRUPT still come through
//! `/dev/fuse`, which fuser's session keeps reading.

pub mod wire;

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fuser::{FileHandle, INodeNo, OpenFlags, RenameFlags, TimeOrNow};
use log::{debug, info, warn};

use crate::fs::{Caller, UnionFs};
use crate::sys::uring::{self, Event, Queue, ENT_IN_OUT, OP_IN};
use crate::sys::{Errno, SysResult};
use wire::{take_name, Args, Out, Reply};

/// Workers per CPU queue: one may be busy with a long request while another serves the rest.
pub const WORKERS_PER_CPU: usize = 2;

/// Largest request or reply payload: the max_write and readahead we negotiate, plus a page
/// (the kernel refuses buffers smaller than what it may send).
const PAYLOAD_LEN: usize = crate::fs::MAX_WRITE as usize + 4096;

/// Starts the workers for every possible CPU (the kernel needs a queue for each before it
/// switches to the ring).
/// `hand_over`: workers may reply as SCHED_IDLE (see `can_hand_over`).
pub fn start(fs: Arc<UnionFs>, dev: Arc<OwnedFd>, hand_over: bool) {
    let cpus = possible_cpus();
    info!(
        "transport: io_uring, {cpus} queues x {WORKERS_PER_CPU} workers, callers kept on \
         their CPU: {}",
        if hand_over {
            "yes"
        } else {
            "no (no CAP_SYS_NICE)"
        }
    );
    fs.stack().stats.ring.expect(cpus, WORKERS_PER_CPU);
    for qid in 0..cpus {
        for w in 0..WORKERS_PER_CPU {
            let (wfs, wdev) = (Arc::clone(&fs), Arc::clone(&dev));
            let spawned = std::thread::Builder::new()
                .name(format!("unionfs-ring{qid}.{w}"))
                .spawn(move || worker(&wfs, &wdev, qid, hand_over));
            if let Err(e) = spawned {
                warn!("io_uring worker {qid}.{w}: {e}");
                fs.stack().stats.ring.settled(qid, false);
            }
        }
    }
}

/// Number of possible CPUs (`/sys/devices/system/cpu/possible`, e.g. "0-3"): the kernel makes
/// one queue for each.
fn possible_cpus() -> usize {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    let last = text
        .trim()
        .split(',')
        .filter_map(|r| r.rsplit('-').next()?.parse::<usize>().ok())
        .max();
    match last {
        Some(n) => n + 1,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

fn worker(fs: &UnionFs, dev: &Arc<OwnedFd>, qid: usize, hand_over: bool) {
    if let Err(e) = crate::sys::uring::pin_to_cpu(qid) {
        // Still correct, only without the same-CPU benefit (e.g. a cpuset without this CPU).
        debug!("io_uring queue {qid}: not pinned: {e}");
    }
    let stats = &fs.stack().stats;
    let mut q = match Queue::new(dev.as_fd(), qid as u16, PAYLOAD_LEN) {
        Ok(q) => q,
        Err(e) => {
            warn!("io_uring queue {qid}: cannot set up a ring: {e}; requests stay on /dev/fuse");
            stats.ring.settled(qid, false);
            return;
        }
    };
    // The kernel accepts registrations only once it has processed our INIT reply, written
    // after `init` returns; a refusal then may come back late (io_uring retries a command
    // that answered EAGAIN from a worker thread), so that it would look registered.
    stats.ring.wait_go(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        match q.register() {
            Ok(Some(Event::Failed(Errno::EAGAIN))) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            r => break r,
        }
    };
    stats
        .ring
        .settled(qid, matches!(first, Ok(None | Some(Event::Request))));
    let mut ev = registered(&mut q, first);
    let mut out = Out::default();
    // Requests answered; a refused commit after that is retried by registering the entry
    // again (a worker that gave up would leave its CPU's queue one entry short).
    let mut served = 0u64;
    let mut refusals = 0;
    loop {
        match ev {
            Ok(Event::Request) => {}
            Ok(Event::Closed) => break,
            Ok(Event::Failed(e)) if served > 0 && refusals < 3 => {
                refusals += 1;
                warn!("io_uring queue {qid}: the kernel refused a reply: {e}; registering again");
                let r = q.register();
                ev = registered(&mut q, r);
                continue;
            }
            Ok(Event::Failed(e)) => {
                warn!(
                    "io_uring queue {qid}: the kernel refused the ring: {e}; this worker stops \
                     (before the first request the kernel goes back to /dev/fuse by itself)"
                );
                break;
            }
            Err(e) => {
                warn!("io_uring queue {qid}: {e}; this worker stops");
                break;
            }
        }
        let h = Args::new(q.header());
        // fuse_in_header.unique; fuse_uring_ent_in_out.commit_id names the entry to commit.
        let (unique, commit_id) = (h.u64(8), h.u64(ENT_IN_OUT + 8));
        // A panic costs the one request (EIO), not the worker: a queue whose workers all
        // died would leave its CPU's callers waiting for good.
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            serve(fs, dev, &q, &mut out)
        }));
        if ran.is_err() {
            log::error!("io_uring queue {qid}: a request's operation panicked; answered EIO");
            out.reset(0);
            out.error = -libc::EIO;
        }
        served += 1;
        fs.stack()
            .stats
            .ring_requests
            .fetch_add(1, Ordering::Relaxed);
        if !q.put_reply(&out.header(unique), &out.body) {
            out.reset(0);
            out.error = -libc::EIO;
            q.put_reply(&out.header(unique), &[]);
        }
        ev = if hand_over {
            commit_handing_over(&mut q, commit_id, qid)
        } else {
            q.commit_and_fetch(commit_id)
        };
    }
    debug!("io_uring queue {qid}: worker done");
}

/// The first event of an entry whose registration went as `r`: the kernel's answer, or the
/// first request it hands the registered entry.
fn registered(q: &mut Queue, r: SysResult<Option<Event>>) -> SysResult<Event> {
    match r {
        Ok(None) => q.wait(),
        Ok(Some(ev)) => Ok(ev),
        Err(e) => Err(e),
    }
}

/// Sends the reply as a SCHED_IDLE thread, so that the caller it wakes stays on this CPU.
///
/// The reply wakes the caller while this worker still runs on the caller's CPU; the scheduler
/// then moves the caller to an idle CPU, where its next request goes to that CPU's queue and
/// wakes that queue's sleeping worker. On a VM each such move wakes a halted vCPU: a round trip
/// took 34-37 us that way, and 5.5 us when the caller stays (a worker of the idle policy counts
/// as an idle CPU to the wakeup, and the caller preempts it at once). The worker is back to
/// SCHED_OTHER before it waits for its next request, so it is of idle policy only between
/// sending a reply and its next instruction, which it gets once the caller blocks again or
/// its slice ends.
fn commit_handing_over(q: &mut Queue, id: u64, qid: usize) -> SysResult<Event> {
    let idle = uring::set_idle_policy(true).is_ok();
    let sent = q.commit(id);
    if idle {
        if let Err(e) = uring::set_idle_policy(false) {
            // Left of idle policy, this worker would starve behind any busy process.
            warn!("io_uring queue {qid}: cannot leave SCHED_IDLE ({e}); worker stops");
            return Err(e);
        }
    }
    sent?;
    q.wait()
}

/// Whether workers may switch to SCHED_IDLE and back: leaving it needs CAP_SYS_NICE or an
/// RLIMIT_NICE of 20 (a rootless daemon usually has neither). Tried on a throwaway thread,
/// since the policy belongs to the thread.
pub(crate) fn can_hand_over() -> bool {
    std::thread::spawn(|| uring::set_idle_policy(true).and_then(|()| uring::set_idle_policy(false)))
        .join()
        .is_ok_and(|r| r.is_ok())
}

/// Decodes the request in `q`'s buffers and runs the operation, leaving the answer in `out`.
fn serve(fs: &UnionFs, dev: &Arc<OwnedFd>, q: &Queue, out: &mut Out) {
    let header = q.header();
    let h = Args::new(header);
    let opcode = h.u32(4);
    let nodeid = INodeNo(h.u64(16));
    let caller = Caller {
        uid: h.u32(24),
        gid: h.u32(28),
        pid: h.u32(32),
    };
    let op = Args::new(&header[OP_IN..ENT_IN_OUT]);
    let payload = q.payload(h.u32(ENT_IN_OUT + 16) as usize);
    out.reset(PAYLOAD_LEN);
    let reply = Reply::new(out, dev);
    dispatch(fs, opcode, nodeid, &caller, &op, payload, reply);
}

/// `fuse_opcode` values this transport serves.
mod op_code {
    pub const LOOKUP: u32 = 1;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const CREATE: u32 = 35;
    pub const DESTROY: u32 = 38;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
}

/// `fuse_setattr_in.valid` bits.
mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
    pub const KILL_SUIDGID: u32 = 1 << 11;
}

/// fuse_write_in.write_flags: the writer lacks CAP_FSETID (see `UnionFs::write`).
const FUSE_WRITE_KILL_SUIDGID: u32 = 1 << 2;
/// fuse_open_in.open_flags: an O_TRUNC open by a caller without CAP_FSETID.
const FUSE_OPEN_KILL_SUIDGID: u32 = 1 << 0;

fn when(valid: u32, set: u32, now: u32, secs: u64, nsecs: u32) -> Option<TimeOrNow> {
    if valid & now != 0 {
        Some(TimeOrNow::Now)
    } else if valid & set != 0 {
        let secs = secs as i64;
        let t = if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::new(secs as u64, nsecs)
        } else {
            SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
                + Duration::from_nanos(u64::from(nsecs))
        };
        Some(TimeOrNow::SpecificTime(t))
    } else {
        None
    }
}

/// One request to one operation. Layouts are the kernel's `fuse_*_in` structs; `op` holds the
/// fixed argument, `payload` what follows it (names, data).
fn dispatch(
    fs: &UnionFs,
    opcode: u32,
    nodeid: INodeNo,
    caller: &Caller,
    op: &Args<'_>,
    payload: &[u8],
    reply: Reply<'_>,
) {
    use fuser::Errno as E;
    use op_code as o;
    // Ops whose payload starts with a NUL-terminated name: take it once, EINVAL if missing.
    let named = matches!(
        opcode,
        o::LOOKUP
            | o::SYMLINK
            | o::MKNOD
            | o::MKDIR
            | o::UNLINK
            | o::RMDIR
            | o::RENAME
            | o::RENAME2
            | o::LINK
            | o::SETXATTR
            | o::GETXATTR
            | o::REMOVEXATTR
            | o::CREATE
    );
    let (name, rest) = match named.then(|| take_name(payload)) {
        Some(Some(split)) => split,
        Some(None) => return fuser_err(reply, E::EINVAL),
        None => (std::ffi::OsStr::new(""), payload),
    };
    let second = || take_name(rest).map(|(n, _)| n);
    let fh = FileHandle(op.u64(0));
    match opcode {
        o::LOOKUP => fs.lookup(nodeid, name, reply),
        o::GETATTR => {
            // fuse_getattr_in { getattr_flags, dummy, fh }; FUSE_GETATTR_FH = 1
            let fh = (op.u32(0) & 1 != 0).then(|| FileHandle(op.u64(8)));
            fs.getattr(nodeid, fh, reply)
        }
        o::SETATTR => {
            let valid = op.u32(0);
            let get32 = |bit: u32, off: usize| (valid & bit != 0).then(|| op.u32(off));
            let size = (valid & fattr::SIZE != 0).then(|| op.u64(16));
            let atime = when(
                valid,
                fattr::ATIME,
                fattr::ATIME_NOW,
                op.u64(32),
                op.u32(56),
            );
            let mtime = when(
                valid,
                fattr::MTIME,
                fattr::MTIME_NOW,
                op.u64(40),
                op.u32(60),
            );
            let fh = (valid & fattr::FH != 0).then(|| FileHandle(op.u64(8)));
            fs.setattr(
                nodeid,
                get32(fattr::MODE, 68),
                get32(fattr::UID, 76),
                get32(fattr::GID, 80),
                size,
                atime,
                mtime,
                fh,
                valid & fattr::KILL_SUIDGID != 0,
                reply,
            )
        }
        o::READLINK => fs.readlink(nodeid, reply),
        o::SYMLINK => match second() {
            Some(target) => fs.symlink(caller, nodeid, name, Path::new(target), reply),
            None => fuser_err(reply, E::EINVAL),
        },
        // fuse_mknod_in { mode, rdev, umask, padding }
        o::MKNOD => fs.mknod(caller, nodeid, name, op.u32(0), op.u32(8), op.u32(4), reply),
        // fuse_mkdir_in { mode, umask }
        o::MKDIR => fs.mkdir(caller, nodeid, name, op.u32(0), op.u32(4), reply),
        o::UNLINK => fs.unlink(nodeid, name, reply),
        o::RMDIR => fs.rmdir(nodeid, name, reply),
        o::RENAME | o::RENAME2 => {
            // fuse_rename_in { newdir } / fuse_rename2_in { newdir, flags, padding }
            let flags = if opcode == o::RENAME2 { op.u32(8) } else { 0 };
            match second() {
                Some(to) => fs.rename(
                    nodeid,
                    name,
                    INodeNo(op.u64(0)),
                    to,
                    RenameFlags::from_bits_retain(flags),
                    reply,
                ),
                None => fuser_err(reply, E::EINVAL),
            }
        }
        // fuse_link_in { oldnodeid }; the request's node is the new parent.
        o::LINK => fs.link(INodeNo(op.u64(0)), nodeid, name, reply),
        // fuse_open_in { flags, open_flags }
        o::OPEN => {
            let kill = op.u32(4) & FUSE_OPEN_KILL_SUIDGID != 0;
            fs.open(
                nodeid,
                OpenFlags(op.u32(0) as i32),
                kill,
                caller.lacks_fsetid(),
                reply,
            )
        }
        o::OPENDIR => fs.opendir(nodeid, reply),
        // fuse_read_in { fh, offset, size, ... }
        o::READ => fs.read(fh, op.u64(8), op.u32(16), reply),
        o::READDIR | o::READDIRPLUS => {
            let mut reply = reply;
            reply.limit(op.u32(16) as usize);
            if opcode == o::READDIR {
                fs.readdir(nodeid, fh, op.u64(8), reply)
            } else {
                fs.readdirplus(*caller, nodeid, fh, op.u64(8), reply)
            }
        }
        // fuse_write_in { fh, offset, size, ... }; the data is the payload.
        o::WRITE => {
            let len = (op.u32(16) as usize).min(payload.len());
            let kill = op.u32(20) & FUSE_WRITE_KILL_SUIDGID != 0;
            fs.write(fh, op.u64(8), &payload[..len], kill, reply)
        }
        o::STATFS => fs.statfs(reply),
        o::RELEASE => fs.release(fh, reply),
        o::RELEASEDIR => fs.releasedir(fh, reply),
        // fuse_fsync_in { fh, fsync_flags }; bit 0 is datasync
        o::FSYNC => fs.fsync(fh, op.u32(8) & 1 != 0, reply),
        o::FSYNCDIR => fs.fsyncdir(reply),
        o::FLUSH => fs.flush(reply),
        // fuse_setxattr_in { size, flags }; payload: name, value
        o::SETXATTR => {
            let len = (op.u32(0) as usize).min(rest.len());
            fs.setxattr(nodeid, name, &rest[..len], op.u32(4) as i32, reply)
        }
        // fuse_getxattr_in { size, padding }
        o::GETXATTR => fs.getxattr(nodeid, name, op.u32(0), reply),
        o::LISTXATTR => fs.listxattr(nodeid, op.u32(0), reply),
        o::REMOVEXATTR => fs.removexattr(nodeid, name, reply),
        // fuse_create_in { flags, mode, umask, open_flags }
        o::CREATE => {
            let (mode, umask, flags) = (op.u32(4), op.u32(8), op.u32(0) as i32);
            fs.create(caller, nodeid, name, mode, umask, flags, reply)
        }
        // fuse_fallocate_in { fh, offset, length, mode }
        o::FALLOCATE => fs.fallocate(fh, op.u64(8), op.u64(16), op.u32(24) as i32, reply),
        // fuse_lseek_in { fh, offset, whence }
        o::LSEEK => fs.lseek(fh, op.u64(8) as i64, op.u32(16) as i32, reply),
        // fuse_copy_file_range_in { fh_in, off_in, nodeid_out, fh_out, off_out, len, flags }
        o::COPY_FILE_RANGE => fs.copy_file_range(
            fh,
            op.u64(8),
            FileHandle(op.u64(24)),
            op.u64(32),
            op.u64(40),
            reply,
        ),
        o::DESTROY => crate::fs::reply::EmptyOut::ok(reply),
        // Locks, ioctl, poll, access, bmap, tmpfile, statx: not implemented on either transport
        // (the kernel then handles locks and access checks itself).
        _ => fuser_err(reply, E::ENOSYS),
    }
}

fn fuser_err(reply: Reply<'_>, e: fuser::Errno) {
    crate::fs::reply::EmptyOut::error(reply, e)
}
