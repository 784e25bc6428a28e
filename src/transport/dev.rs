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

use log::{error, warn};

use super::args::{fixed_arg_len, BatchForgetIn, ForgetIn, InHeader};
use super::wire::{Args, Out};
use super::PAYLOAD_LEN;
use crate::fs::op::Op;
use crate::fs::UnionFs;
use crate::sys::{self, Errno};

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

fn reader(fs: &UnionFs, fd: &OwnedFd, dev: &Arc<OwnedFd>) {
    // The kernel refuses reads into buffers smaller than the largest request it may send.
    let mut buf = vec![0u8; InHeader::SIZE + PAYLOAD_LEN + 4096];
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
        let Some(header) = req.get(..InHeader::SIZE) else {
            warn!("/dev/fuse: a {n}-byte read is shorter than a request header; skipped");
            continue;
        };
        let h = InHeader::read(header);
        let body = req.get(InHeader::SIZE..).unwrap_or_default();
        let op = Op::from_code(h.opcode);
        match op {
            // No answers to these.
            Some(Op::Forget) => {
                fs.forget(h.nodeid, ForgetIn::read(&Args::new(body)).nlookup);
                pace(fs);
                continue;
            }
            Some(Op::BatchForget) => {
                // Then `count` of fuse_forget_one { nodeid, nlookup }.
                let count = BatchForgetIn::read(&Args::new(body)).count as usize;
                for one in body
                    .get(BatchForgetIn::SIZE..)
                    .unwrap_or_default()
                    .chunks_exact(16)
                    .take(count)
                {
                    let one = Args::new(one);
                    fs.forget(one.u64(0), one.u64(8));
                }
                pace(fs);
                continue;
            }
            // Operations are not interruptible here; the kernel's request simply completes.
            Some(Op::Interrupt) => continue,
            _ => {}
        }
        let payload = body.get(op.map_or(0, fixed_arg_len)..).unwrap_or_default();
        super::serve(fs, dev, header, body, payload, &mut out);
        let body = if out.error == 0 { &out.body[..] } else { &[] };
        match sys::write2(fd.as_fd(), &out.header(h.unique), body) {
            // ENOENT: the caller was interrupted and the kernel no longer waits for this.
            Ok(_) | Err(Errno::ENOENT) => {}
            Err(Errno::ENODEV) => break,
            Err(e) => warn!("/dev/fuse: answering opcode {} failed: {e}", h.opcode),
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
