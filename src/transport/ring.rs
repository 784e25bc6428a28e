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
//! `/dev/fuse` (see `dev`).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::INodeNo;
use log::{debug, info, warn};

use super::wire::{Args, Out, Reply};
use super::{dispatch, PAYLOAD_LEN};
use crate::fs::{Caller, UnionFs};
use crate::sys::uring::{self, Event, Queue, ENT_IN_OUT, OP_IN};
use crate::sys::{Errno, SysResult};

/// Workers per CPU queue: one may be busy with a long request while another serves the rest.
pub const WORKERS_PER_CPU: usize = 2;

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
