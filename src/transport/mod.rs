//! The two ways requests reach the filesystem: FUSE over io_uring (`ring`) and reads of
//! `/dev/fuse` (`dev`). fuser does the FUSE_INIT handshake only; both transports decode the
//! same kernel structs (`wire`) and hand each request to one `dispatch`, so every operation
//! behaves the same whichever way its request came.

pub mod args;
pub mod conn;
pub mod dev;
pub mod handshake;
pub mod ring;
pub mod wire;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::TimeOrNow;

use crate::fs::op::Op;
use crate::fs::{Caller, SetAttr, UnionFs};
use crate::sys::Errno;
use args::*;
use wire::{take_name, Args, Out, Reply};

/// When requests are served over io_uring instead of `/dev/fuse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uring {
    /// Never.
    Off,
    /// When the kernel offers it and the workers can keep callers on their CPU (CAP_SYS_NICE):
    /// without that a ring round trip measured slower than `/dev/fuse` (32 against 17 us).
    Auto,
    /// Whenever the kernel offers it.
    On,
}

/// Serves `conn` from now on: its `/dev/fuse` with the process's reader pool (growing to
/// `max_threads`), and when FUSE_INIT gave it the ring, with the process's io_uring workers,
/// waiting (at most 5 s) until each has registered its entry: only then does the kernel send
/// requests over the ring, so the union is live when this returns.
pub fn attach(conn: &Arc<conn::Conn>, max_threads: usize) -> crate::Result<()> {
    dev::serve(conn, max_threads)
        .map_err(|e| crate::Error::sys("serving the FUSE device", e, ""))?;
    if let Some(settle) = conn.ring.get() {
        ring::serve(conn);
        if let Err(q) = settle.wait(Duration::from_secs(5)) {
            return Err(crate::Error::new(format!(
                "FUSE over io_uring: no ring entry could be registered for CPU queue {q} (run \
                 with -d to see why), and the kernel holds every request until each queue \
                 has one: mount with -o uring=off"
            )));
        }
    }
    Ok(())
}

/// Largest request or reply payload: the max_write and readahead we negotiate, plus a page
/// (the kernel refuses buffers smaller than what it may send).
const PAYLOAD_LEN: usize = crate::fs::MAX_WRITE as usize + 4096;

/// Runs one request, whichever transport brought it: `header` is its `fuse_in_header`, `arg`
/// its fixed argument, `payload` the names or data after it. The answer is left in `out`. A
/// panic in the operation costs this request (EIO), not the serving thread: a dead thread
/// would leave its requests, or its CPU's ring queue, unanswered and the mount wedged.
fn serve(
    fs: &UnionFs,
    dev: &Arc<OwnedFd>,
    header: &[u8],
    arg: &[u8],
    payload: &[u8],
    out: &mut Out,
) {
    let h = InHeader::read(header);
    let caller = Caller {
        uid: h.uid,
        gid: h.gid,
        pid: h.pid,
    };
    out.reset(PAYLOAD_LEN);
    let op = Op::from_code(h.opcode);
    if let Some(op) = op {
        fs.stats().count(op);
    }
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut reply = Reply::new(out, dev);
        match op {
            Some(op) => dispatch(
                fs,
                op,
                h.nodeid,
                &caller,
                &Args::new(arg),
                payload,
                &mut reply,
            ),
            // Locks, ioctl, poll, access, bmap, tmpfile, statx: not implemented (the kernel
            // then handles locks and access checks itself).
            None => reply.error(Errno::ENOSYS),
        }
    }));
    let name = op.map_or("unknown", Op::name);
    if ran.is_err() {
        log::error!("{name}: the operation panicked; answered EIO");
        out.reset(0);
        out.error = -libc::EIO;
    }
    if log::log_enabled!(log::Level::Debug) {
        let result = match out.error {
            0 => "ok".to_string(),
            e => Errno::from_raw(-e).to_string(),
        };
        log::debug!(
            "{name} (opcode {}) node {} by uid {} pid {}: {result}",
            h.opcode,
            h.nodeid,
            caller.uid,
            caller.pid
        );
    }
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

/// `fuse_getattr_in.getattr_flags`: `fh` names the open file asked through.
const FUSE_GETATTR_FH: u32 = 1 << 0;
/// `fuse_write_in.write_flags`: the writer lacks CAP_FSETID (see `UnionFs::write`).
const FUSE_WRITE_KILL_SUIDGID: u32 = 1 << 2;
/// `fuse_open_in.open_flags`: an O_TRUNC open by a caller without CAP_FSETID.
const FUSE_OPEN_KILL_SUIDGID: u32 = 1 << 0;
/// `fuse_fsync_in.fsync_flags`: data only (fdatasync).
const FUSE_FSYNC_FDATASYNC: u32 = 1 << 0;

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

/// The SETATTR changes `a` asks for.
fn set_attr(a: &SetattrIn) -> SetAttr {
    let v = a.valid;
    let given = |bit: u32, x: u32| (v & bit != 0).then_some(x);
    SetAttr {
        mode: given(fattr::MODE, a.mode),
        uid: given(fattr::UID, a.uid),
        gid: given(fattr::GID, a.gid),
        size: (v & fattr::SIZE != 0).then_some(a.size),
        atime: when(v, fattr::ATIME, fattr::ATIME_NOW, a.atime, a.atimensec),
        mtime: when(v, fattr::MTIME, fattr::MTIME_NOW, a.mtime, a.mtimensec),
        fh: (v & fattr::FH != 0).then_some(a.fh),
        kill_setid: v & fattr::KILL_SUIDGID != 0,
    }
}

/// One request to one operation, and its result to the reply: the one place where the
/// operations' results become answers. `arg` holds the fixed argument (`fuse_*_in`),
/// `payload` what follows it (names, data).
fn dispatch(
    fs: &UnionFs,
    op: Op,
    node: u64,
    caller: &Caller,
    arg: &Args<'_>,
    payload: &[u8],
    reply: &mut Reply<'_>,
) {
    let ttl = fs.ttl();
    // Ops whose payload starts with a NUL-terminated name: take it once, EINVAL if missing.
    let named = matches!(
        op,
        Op::Lookup
            | Op::Symlink
            | Op::Mknod
            | Op::Mkdir
            | Op::Unlink
            | Op::Rmdir
            | Op::Rename
            | Op::Rename2
            | Op::Link
            | Op::Setxattr
            | Op::Getxattr
            | Op::Removexattr
            | Op::Create
    );
    let (name, rest) = match named.then(|| take_name(payload)) {
        Some(Some(split)) => split,
        Some(None) => return reply.error(Errno::EINVAL),
        None => (std::ffi::OsStr::new(""), payload),
    };
    let second = || take_name(rest).map(|(n, _)| n).ok_or(Errno::EINVAL);
    match op {
        Op::Lookup => reply.lookup(fs.lookup(node, name), &ttl),
        Op::Getattr => {
            let a = GetattrIn::read(arg);
            let fh = (a.flags & FUSE_GETATTR_FH != 0).then_some(a.fh);
            reply.attr(fs.getattr(node, fh), &ttl)
        }
        Op::Setattr => reply.attr(fs.setattr(node, &set_attr(&SetattrIn::read(arg))), &ttl),
        Op::Readlink => reply.data(fs.readlink(node)),
        Op::Symlink => {
            let r = second().and_then(|target| fs.symlink(caller, node, name, target));
            reply.entry(r, &ttl)
        }
        Op::Mknod => {
            let a = MknodIn::read(arg);
            reply.entry(fs.mknod(caller, node, name, a.mode, a.umask, a.rdev), &ttl)
        }
        Op::Mkdir => {
            let a = MkdirIn::read(arg);
            reply.entry(fs.mkdir(caller, node, name, a.mode, a.umask), &ttl)
        }
        Op::Unlink => reply.empty(fs.unlink(node, name)),
        Op::Rmdir => reply.empty(fs.rmdir(node, name)),
        Op::Rename | Op::Rename2 => {
            let (newdir, flags) = if op == Op::Rename2 {
                let a = Rename2In::read(arg);
                (a.newdir, a.flags)
            } else {
                (RenameIn::read(arg).newdir, 0)
            };
            let r = second().and_then(|to| fs.rename(node, name, newdir, to, flags));
            reply.empty(r)
        }
        // The request's node is the new parent.
        Op::Link => reply.entry(fs.link(LinkIn::read(arg).oldnodeid, node, name), &ttl),
        Op::Open => {
            let a = OpenIn::read(arg);
            let kill = a.open_flags & FUSE_OPEN_KILL_SUIDGID != 0;
            let unprivileged = caller.lacks_fsetid();
            let register = |fd: &OwnedFd| reply.register(fd);
            let r = fs.open(node, a.flags as i32, kill, unprivileged, &register);
            reply.opened(r)
        }
        Op::Opendir => reply.opened(fs.opendir(node)),
        Op::Read => {
            let a = ReadIn::read(arg);
            reply.data(fs.read(a.fh, a.offset, a.size))
        }
        Op::Readdir | Op::Readdirplus => {
            let a = ReadIn::read(arg);
            reply.limit(a.size as usize);
            let r = if op == Op::Readdir {
                fs.readdir(node, a.fh, a.offset, reply)
            } else {
                fs.readdirplus(*caller, node, a.fh, a.offset, reply)
            };
            reply.listing(r)
        }
        Op::Write => {
            let a = WriteIn::read(arg);
            let data = &payload[..(a.size as usize).min(payload.len())];
            let kill = a.write_flags & FUSE_WRITE_KILL_SUIDGID != 0;
            reply.written(fs.write(a.fh, a.offset, data, kill))
        }
        Op::Statfs => reply.statfs(fs.statfs()),
        Op::Release => {
            fs.release(ReleaseIn::read(arg).fh);
            reply.empty(Ok(()))
        }
        Op::Releasedir => {
            fs.releasedir(ReleaseIn::read(arg).fh);
            reply.empty(Ok(()))
        }
        Op::Fsync => {
            let a = FsyncIn::read(arg);
            reply.empty(fs.fsync(a.fh, a.fsync_flags & FUSE_FSYNC_FDATASYNC != 0))
        }
        Op::Fsyncdir => reply.empty(fs.fsyncdir()),
        Op::Flush => reply.empty(fs.flush()),
        Op::Setxattr => {
            let a = SetxattrIn::read(arg);
            let value = &rest[..(a.size as usize).min(rest.len())];
            reply.empty(fs.setxattr(node, name, value, a.flags as i32))
        }
        Op::Getxattr => reply.xattr(fs.getxattr(node, name), GetxattrIn::read(arg).size),
        Op::Listxattr => reply.xattr(fs.listxattr(node), GetxattrIn::read(arg).size),
        Op::Removexattr => reply.empty(fs.removexattr(node, name)),
        Op::Create => {
            let a = CreateIn::read(arg);
            let register = |fd: &OwnedFd| reply.register(fd);
            let r = fs.create(
                caller,
                node,
                name,
                a.mode,
                a.umask,
                a.flags as i32,
                &register,
            );
            reply.created(r, &ttl)
        }
        Op::Fallocate => {
            let a = FallocateIn::read(arg);
            reply.empty(fs.fallocate(a.fh, a.offset, a.length, a.mode as i32))
        }
        Op::Lseek => {
            let a = LseekIn::read(arg);
            reply.offset(fs.lseek(a.fh, a.offset as i64, a.whence as i32))
        }
        Op::CopyFileRange => {
            let a = CopyFileRangeIn::read(arg);
            reply.written(fs.copy_file_range(a.fh_in, a.off_in, a.fh_out, a.off_out, a.len))
        }
        Op::Destroy => reply.empty(Ok(())),
        // FORGET and INTERRUPT are the `/dev/fuse` readers' (no reply is owed); INIT is the
        // handshake's.
        Op::Forget | Op::BatchForget | Op::Interrupt | Op::Init => reply.error(Errno::ENOSYS),
    }
}
