//! Requests read from `/dev/fuse` by our own threads once fuser's handshake is done. The
//! bytes are the same kernel structs the ring delivers, only laid out in one buffer: the
//! header, the op's fixed argument, then names or data. So they go to the same `dispatch`
//! with the same replies, which fuser's reply types could not give: directory entries without
//! attributes, and the kernel's "caller lacks CAP_FSETID" flags (fuser drops them).
//!
//! With the ring serving, these threads are left with FORGET and INTERRUPT.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use fuser::INodeNo;
use log::{error, warn};

use super::op_code as o;
use super::wire::{Args, Out};
use super::PAYLOAD_LEN;
use crate::fs::UnionFs;
use crate::sys::{self, Errno};

/// `fuse_in_header`: len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding.
const IN_HEADER: usize = 40;

/// How long a thread rests after taking FORGETs while the ring serves requests: the kernel
/// holds forgotten nodes that long at most, and never waits for the answer.
const FORGET_PACE: Duration = Duration::from_millis(1);

/// Starts `threads` readers of the connection `dev`; they end when it goes away (unmount).
pub fn start(fs: &Arc<UnionFs>, dev: &Arc<OwnedFd>, threads: usize) -> Vec<JoinHandle<()>> {
    (0..threads.max(1))
        .filter_map(|i| {
            // Each reader on its own clone: the kernel keeps one processing list per fd.
            let fd = match sys::uring::dev_clone(dev.as_fd()) {
                Ok(fd) => Arc::new(fd),
                Err(e) => {
                    warn!("/dev/fuse reader {i}: cannot clone the device fd ({e}); sharing it");
                    Arc::clone(dev)
                }
            };
            let (fs, dev) = (Arc::clone(fs), Arc::clone(dev));
            std::thread::Builder::new()
                .name(format!("unionfs-dev{i}"))
                .spawn(move || reader(&fs, &fd, &dev))
                .map_err(|e| error!("/dev/fuse reader {i}: {e}"))
                .ok()
        })
        .collect()
}

/// Size of the fixed argument that precedes a request's names or data (`fuse_*_in`); the
/// ring hands it over separately, `/dev/fuse` in line.
fn fixed_arg_len(opcode: u32) -> usize {
    match opcode {
        o::GETATTR | o::MKNOD | o::FSYNC | o::FSYNCDIR | o::CREATE | o::RENAME2 => 16,
        o::SETATTR => 88,
        o::MKDIR | o::RENAME | o::LINK | o::OPEN | o::OPENDIR => 8,
        o::SETXATTR | o::GETXATTR | o::LISTXATTR => 8,
        o::READ | o::WRITE | o::READDIR | o::READDIRPLUS => 40,
        o::RELEASE | o::RELEASEDIR | o::FLUSH | o::LSEEK => 24,
        o::FALLOCATE => 32,
        o::COPY_FILE_RANGE => 56,
        _ => 0,
    }
}

fn reader(fs: &UnionFs, fd: &OwnedFd, dev: &Arc<OwnedFd>) {
    // The kernel refuses reads into buffers smaller than the largest request it may send.
    let mut buf = vec![0u8; IN_HEADER + PAYLOAD_LEN + 4096];
    let mut out = Out::default();
    loop {
        let n = match sys::read(fd.as_fd(), &mut buf) {
            Ok(n) => n,
            // ENOENT: the request was interrupted before we read it; EAGAIN: taken by another.
            Err(Errno::ENOENT | Errno::EAGAIN | Errno::EINTR) => continue,
            // The connection is gone: unmounted, or aborted.
            Err(Errno::ENODEV) => break,
            Err(e) => {
                error!("/dev/fuse: read failed ({e}); this reader stops");
                break;
            }
        };
        let req = &buf[..n];
        let Some(header) = req.get(..IN_HEADER) else {
            warn!("/dev/fuse: a {n}-byte read is shorter than a request header; skipped");
            continue;
        };
        let h = Args::new(header);
        let (opcode, unique, nodeid) = (h.u32(4), h.u64(8), h.u64(16));
        let body = req.get(IN_HEADER..).unwrap_or_default();
        match opcode {
            // No answers to these.
            o::FORGET => {
                fs.forget(INodeNo(nodeid), Args::new(body).u64(0));
                pace(fs);
                continue;
            }
            o::BATCH_FORGET => {
                // fuse_batch_forget_in { count, dummy }, then { nodeid, nlookup } each.
                let count = Args::new(body).u32(0) as usize;
                for one in body
                    .get(8..)
                    .unwrap_or_default()
                    .chunks_exact(16)
                    .take(count)
                {
                    let one = Args::new(one);
                    fs.forget(INodeNo(one.u64(0)), one.u64(8));
                }
                pace(fs);
                continue;
            }
            // Operations are not interruptible here; the kernel's request simply completes.
            o::INTERRUPT => continue,
            _ => {}
        }
        let payload = body.get(fixed_arg_len(opcode)..).unwrap_or_default();
        super::serve(fs, dev, header, body, payload, &mut out);
        let body = if out.error == 0 { &out.body[..] } else { &[] };
        match sys::write2(fd.as_fd(), &out.header(unique), body) {
            // ENOENT: the caller was interrupted and the kernel no longer waits for this.
            Ok(_) | Err(Errno::ENOENT) => {}
            Err(Errno::ENODEV) => break,
            Err(e) => warn!("/dev/fuse: answering opcode {opcode} failed: {e}"),
        }
    }
}

/// After FORGETs while the ring serves every other request: each one read alone is a wakeup
/// and two context switches, as much as the unlink that caused it. Resting lets the kernel
/// queue the next ones, which it then hands over together as one BATCH_FORGET. unlink 20,000:
/// 0.71 -> 0.47 s; rm -rf: 0.43 -> 0.31 s.
fn pace(fs: &UnionFs) {
    if fs.ring_serving() {
        std::thread::sleep(FORGET_PACE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_arguments_have_the_kernels_sizes() {
        // Names follow these structs directly; a wrong size would cut or shift every name.
        assert_eq!(fixed_arg_len(o::LOOKUP), 0);
        assert_eq!(fixed_arg_len(o::UNLINK), 0);
        assert_eq!(fixed_arg_len(o::MKDIR), 8); // fuse_mkdir_in { mode, umask }
        assert_eq!(fixed_arg_len(o::CREATE), 16); // fuse_create_in { flags, mode, umask, open_flags }
        assert_eq!(fixed_arg_len(o::RENAME2), 16); // fuse_rename2_in { newdir, flags, padding }
        assert_eq!(fixed_arg_len(o::WRITE), 40); // fuse_write_in
        assert_eq!(fixed_arg_len(o::SETXATTR), 8); // fuse_setxattr_in without SETXATTR_EXT
    }
}
