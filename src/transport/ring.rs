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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use super::wire::{Args, Out};
use super::PAYLOAD_LEN;
use crate::fs::UnionFs;
use crate::sys::uring::{self, Event, Queue, ENT_IN_OUT, OP_IN};
use crate::sys::{Errno, SysResult};

/// Workers per CPU queue: one may be busy with a long request while another serves the rest.
pub const WORKERS_PER_CPU: usize = 2;

/// Starts the workers for every possible CPU (the kernel needs a queue for each before it
/// switches to the ring).
/// `hand_over`: workers may reply as SCHED_IDLE (see `can_hand_over`).
pub fn start(fs: Arc<UnionFs>, dev: Arc<OwnedFd>, hand_over: bool, ring: Arc<RingStart>) {
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
    ring.expect(cpus, WORKERS_PER_CPU);
    fs.stats()
        .ring_workers
        .store((cpus * WORKERS_PER_CPU) as u64, Ordering::Relaxed);
    for qid in 0..cpus {
        for w in 0..WORKERS_PER_CPU {
            let (wfs, wdev, wring) = (Arc::clone(&fs), Arc::clone(&dev), Arc::clone(&ring));
            let spawned = std::thread::Builder::new()
                .name(format!("unionfs-ring{qid}.{w}"))
                .spawn(move || worker(&wfs, &wdev, &wring, qid, hand_over));
            if let Err(e) = spawned {
                warn!("io_uring worker {qid}.{w}: {e}");
                ring.settled(qid, false);
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

fn worker(fs: &UnionFs, dev: &Arc<OwnedFd>, ring: &RingStart, qid: usize, hand_over: bool) {
    if let Err(e) = crate::sys::uring::pin_to_cpu(qid) {
        // Still correct, only without the same-CPU benefit (e.g. a cpuset without this CPU).
        debug!("io_uring queue {qid}: not pinned: {e}");
    }
    let stats = fs.stats();
    let mut q = match Queue::new(dev.as_fd(), qid as u16, PAYLOAD_LEN) {
        Ok(q) => q,
        Err(e) => {
            warn!("io_uring queue {qid}: cannot set up a ring: {e}; requests stay on /dev/fuse");
            ring.settled(qid, false);
            return;
        }
    };
    // The kernel accepts registrations only once it has processed our INIT reply, written
    // after `init` returns. Registering before would be refused, and a refusal may come back
    // late (io_uring retries a command that answered EAGAIN from a worker thread), after the
    // entry was counted as taken.
    ring.wait_go(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        match q.register() {
            Ok(Some(Event::Failed(Errno::EAGAIN))) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            r => break r,
        }
    };
    let taken = matches!(first, Ok(None | Some(Event::Request)));
    ring.settled(qid, taken);
    if taken {
        stats.ring_entries.fetch_add(1, Ordering::Relaxed);
    }
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
            // A registration refused late (io_uring retried it from a worker thread) counts
            // as not yet accepted: try again, as for one refused at once.
            Ok(Event::Failed(Errno::EAGAIN)) if served == 0 && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
                let r = q.register();
                ev = registered(&mut q, r);
                continue;
            }
            Ok(Event::Failed(e)) if served > 0 && refusals < 3 => {
                refusals += 1;
                warn!("io_uring queue {qid}: the kernel refused a reply: {e}; registering again");
                let r = q.register();
                ev = registered(&mut q, r);
                continue;
            }
            Ok(Event::Failed(e)) => {
                warn!("io_uring queue {qid}: the kernel refused the ring: {e}; this worker stops");
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
        serve(fs, dev, &q, &mut out);
        served += 1;
        stats.ring_requests.fetch_add(1, Ordering::Relaxed);
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

/// Runs the request in `q`'s buffers, leaving the answer in `out`: the ring hands the fixed
/// argument over apart from the payload.
fn serve(fs: &UnionFs, dev: &Arc<OwnedFd>, q: &Queue, out: &mut Out) {
    let header = q.header();
    let len = Args::new(header).u32(ENT_IN_OUT + 16) as usize;
    let op = &header[OP_IN..ENT_IN_OUT];
    super::serve(fs, dev, header, op, q.payload(len), out);
}

/// The io_uring workers' registration, queue by queue. Once one entry is registered the kernel
/// holds every request back until each CPU's queue has one, so a queue left without any would
/// hang the mount: the mount checks this before it is reported live.
#[derive(Debug, Default)]
pub struct RingStart {
    /// Set once the kernel has processed our INIT reply: it refuses registrations before.
    go: AtomicBool,
    /// Per queue: (workers settled, entries the kernel took).
    queues: parking_lot::Mutex<Vec<(usize, usize)>>,
    workers_per_queue: AtomicU64,
}

impl RingStart {
    /// Expects `per_queue` workers for each of `queues` queues.
    pub fn expect(&self, queues: usize, per_queue: usize) {
        *self.queues.lock() = vec![(0, 0); queues];
        self.workers_per_queue
            .store(per_queue as u64, Ordering::Relaxed);
    }

    /// Lets the workers register (the INIT reply is in).
    pub fn go(&self) {
        self.go.store(true, Ordering::Release);
    }

    /// Waits (at most `limit`) for [`RingStart::go`].
    pub fn wait_go(&self, limit: std::time::Duration) {
        let deadline = std::time::Instant::now() + limit;
        while !self.go.load(Ordering::Acquire) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// A worker of queue `qid` is done registering; `taken`: the kernel has its entry.
    pub fn settled(&self, qid: usize, taken: bool) {
        if let Some(q) = self.queues.lock().get_mut(qid) {
            q.0 += 1;
            q.1 += usize::from(taken);
        }
    }

    /// Waits (at most `limit`) until every worker has registered or given up. Then `Err(q)`
    /// names a queue left without an entry while others have one (the kernel would hold
    /// every request back for good).
    pub fn wait_settled(&self, limit: std::time::Duration) -> Result<(), usize> {
        let per = self.workers_per_queue.load(Ordering::Relaxed) as usize;
        let deadline = std::time::Instant::now() + limit;
        while self.queues.lock().iter().any(|q| q.0 < per) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let queues = self.queues.lock();
        if queues.iter().all(|q| q.1 == 0) {
            return Ok(());
        }
        queues.iter().position(|q| q.1 == 0).map_or(Ok(()), Err)
    }
}
