//! The two ways requests reach the filesystem: FUSE over io_uring (`ring`) and reads of
//! `/dev/fuse` (`dev`). fuser does the FUSE_INIT handshake only; both transports decode the
//! same kernel structs (`wire`) and hand each request to one `dispatch`, so every operation
//! behaves the same whichever way its request came.

pub mod dev;
pub mod handshake;
pub mod ring;
pub mod wire;

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{FileHandle, INodeNo, OpenFlags, RenameFlags, TimeOrNow};

use crate::fs::{Caller, UnionFs};
use wire::{take_name, Args, Out, Reply};

/// Largest request or reply payload: the max_write and readahead we negotiate, plus a page
/// (the kernel refuses buffers smaller than what it may send).
const PAYLOAD_LEN: usize = crate::fs::MAX_WRITE as usize + 4096;

/// Runs one request, whichever transport brought it: `header` is its `fuse_in_header`, `op`
/// its fixed argument, `payload` the names or data after it. The answer is left in `out`. A
/// panic in the operation costs this request (EIO), not the serving thread: a dead thread
/// would leave its requests, or its CPU's ring queue, unanswered and the mount wedged.
fn serve(
    fs: &UnionFs,
    dev: &Arc<OwnedFd>,
    header: &[u8],
    op: &[u8],
    payload: &[u8],
    out: &mut Out,
) {
    let h = Args::new(header);
    let (opcode, nodeid) = (h.u32(4), h.u64(16));
    let caller = Caller {
        uid: h.u32(24),
        gid: h.u32(28),
        pid: h.u32(32),
    };
    out.reset(PAYLOAD_LEN);
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let reply = Reply::new(out, dev);
        dispatch(
            fs,
            opcode,
            INodeNo(nodeid),
            &caller,
            &Args::new(op),
            payload,
            reply,
        )
    }));
    if ran.is_err() {
        log::error!("{}: the operation panicked; answered EIO", op_name(opcode));
        out.reset(0);
        out.error = -libc::EIO;
    }
    if log::log_enabled!(log::Level::Debug) {
        let result = match out.error {
            0 => "ok".to_string(),
            e => crate::sys::Errno::from_raw(-e).to_string(),
        };
        log::debug!(
            "{} node {nodeid} by uid {} pid {}: {result}",
            op_name(opcode),
            caller.uid,
            caller.pid
        );
    }
}

/// A request's name for the log.
fn op_name(opcode: u32) -> String {
    use op_code as o;
    let name = match opcode {
        o::LOOKUP => "LOOKUP",
        o::FORGET => "FORGET",
        o::GETATTR => "GETATTR",
        o::SETATTR => "SETATTR",
        o::READLINK => "READLINK",
        o::SYMLINK => "SYMLINK",
        o::MKNOD => "MKNOD",
        o::MKDIR => "MKDIR",
        o::UNLINK => "UNLINK",
        o::RMDIR => "RMDIR",
        o::RENAME | o::RENAME2 => "RENAME",
        o::LINK => "LINK",
        o::OPEN => "OPEN",
        o::READ => "READ",
        o::WRITE => "WRITE",
        o::STATFS => "STATFS",
        o::RELEASE => "RELEASE",
        o::FSYNC => "FSYNC",
        o::SETXATTR => "SETXATTR",
        o::GETXATTR => "GETXATTR",
        o::LISTXATTR => "LISTXATTR",
        o::REMOVEXATTR => "REMOVEXATTR",
        o::FLUSH => "FLUSH",
        o::OPENDIR => "OPENDIR",
        o::READDIR => "READDIR",
        o::RELEASEDIR => "RELEASEDIR",
        o::FSYNCDIR => "FSYNCDIR",
        o::CREATE => "CREATE",
        o::DESTROY => "DESTROY",
        o::FALLOCATE => "FALLOCATE",
        o::READDIRPLUS => "READDIRPLUS",
        o::LSEEK => "LSEEK",
        o::COPY_FILE_RANGE => "COPY_FILE_RANGE",
        _ => return format!("opcode {opcode}"),
    };
    name.to_string()
}

/// `fuse_opcode` values the transports serve.
mod op_code {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
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
    pub const INTERRUPT: u32 = 36;
    pub const CREATE: u32 = 35;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
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
