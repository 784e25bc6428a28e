//! FUSE over io_uring: the transport that takes over from `/dev/fuse` once FUSE_INIT agreed on
//! it (kernel 6.14+, module parameter `fuse.enable_uring=1`).
//!
//! Why: on `/dev/fuse` every request wakes a daemon thread on whatever CPU it slept, and the
//! reply wakes the caller back across CPUs; on virtual machines those cross-CPU wakeups are
//! most of a metadata call's cost. The kernel queues a ring request on the queue of the CPU
//! the caller runs on, so a worker pinned to that CPU serves it without leaving the CPU.
//!
//! The workers belong to the process, not to a union: [`WORKERS_PER_CPU`] per possible CPU,
//! each owning one io_uring that carries one registered entry of every connection the process
//! serves (the kernel needs an entry on each CPU queue of a connection before it uses the
//! ring). A hundred unions thus cost a hundred sets of entry buffers (mappings whose pages the
//! kernel touches only as far as requests fill them) and no extra thread. Each worker serves
//! one request at a time; the kernel hands a request to whichever entry of its queue is free,
//! so a slow request (a large copy-up) holds up only its own worker. FORGET and INTERRUPT
//! still come through `/dev/fuse` (see `dev`).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use parking_lot::Mutex;

use super::conn::{Conn, Settle};
use super::wire::{Args, Out};
use super::PAYLOAD_LEN;
use crate::sys::uring::{self, entry_event, Event, Ring, RingEntry, ENT_IN_OUT, OP_IN};
use crate::sys::{Errno, SysResult, Wakeup};

/// Workers per CPU queue: one may be busy with a long request while another serves the rest.
pub const WORKERS_PER_CPU: usize = 2;

/// The `user_data` of a worker's wakeup read (entries are numbered from 0).
const WAKE: u64 = u64::MAX;

/// How long a registration the kernel refuses with EAGAIN (our INIT reply not processed yet)
/// is tried again.
const REGISTER_GRACE: Duration = Duration::from_secs(10);

/// A worker as the rest of the process sees it: where to post connections to register.
struct Worker {
    inbox: Mutex<Vec<Arc<Conn>>>,
    wake: Wakeup,
}

/// The process's io_uring workers.
struct Pool {
    workers: Vec<Arc<Worker>>,
}

static POOL: OnceLock<Option<Pool>> = OnceLock::new();

/// Number of possible CPUs (`/sys/devices/system/cpu/possible`, e.g. "0-3"): the kernel makes
/// one queue for each.
pub fn possible_cpus() -> usize {
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

/// The process's workers, started on first use. `hand_over`: workers reply as SCHED_IDLE
/// (see `can_hand_over`); decided once per process.
fn pool(hand_over: bool) -> Option<&'static Pool> {
    POOL.get_or_init(|| {
        let cpus = possible_cpus();
        info!(
            "transport: io_uring, {cpus} queues x {WORKERS_PER_CPU} workers shared by every \
             union of this process, callers kept on their CPU: {}",
            if hand_over {
                "yes"
            } else {
                "no (no CAP_SYS_NICE)"
            }
        );
        let mut workers = Vec::new();
        for qid in 0..cpus {
            for w in 0..WORKERS_PER_CPU {
                let wake = match Wakeup::new() {
                    Ok(w) => w,
                    Err(e) => {
                        warn!("io_uring: cannot make a wakeup eventfd: {e}");
                        return None;
                    }
                };
                let worker = Arc::new(Worker {
                    inbox: Mutex::new(Vec::new()),
                    wake,
                });
                let me = Arc::clone(&worker);
                let spawned = std::thread::Builder::new()
                    .name(format!("unionfs-ring{qid}.{w}"))
                    .spawn(move || run(&me, qid, hand_over));
                if let Err(e) = spawned {
                    warn!("io_uring worker {qid}.{w}: {e}");
                    return None;
                }
                workers.push(worker);
            }
        }
        Some(Pool { workers })
    })
    .as_ref()
}

/// Has every worker register an entry of `conn` on its CPU's queue, and says how that went
/// in `conn.ring` (see [`Settle`]).
pub fn serve(conn: &Arc<Conn>) {
    let settle = conn.ring.get_or_init(|| Arc::new(Settle::default()));
    let hand_over = settle.hand_over.load(Ordering::Relaxed);
    let cpus = possible_cpus();
    settle.expect(cpus, WORKERS_PER_CPU);
    let Some(p) = pool(hand_over) else {
        for q in 0..cpus {
            for _ in 0..WORKERS_PER_CPU {
                settle.settled(q, false);
            }
        }
        return;
    };
    conn.fs
        .stats()
        .ring_workers
        .store((cpus * WORKERS_PER_CPU) as u64, Ordering::Relaxed);
    for w in &p.workers {
        w.inbox.lock().push(Arc::clone(conn));
        w.wake.wake();
    }
}

/// One registered entry of a worker and the connection it belongs to.
struct Slot {
    conn: Arc<Conn>,
    entry: RingEntry,
    /// The registration has not been reported to the connection's [`Settle`] yet.
    unsettled: bool,
    /// When a refused registration stops being tried again.
    deadline: Instant,
    /// Requests answered on it; a refused commit after that is retried by registering the
    /// entry again (a worker that gave up would leave its CPU's queue one entry short).
    served: u64,
    refusals: u32,
}

fn run(me: &Worker, qid: usize, hand_over: bool) {
    if let Err(e) = uring::pin_to_cpu(qid) {
        // Still correct, only without the same-CPU benefit (e.g. a cpuset without this CPU).
        debug!("io_uring queue {qid}: not pinned: {e}");
    }
    let mut ring = match Ring::new(256) {
        Ok(r) => r,
        Err(e) => {
            warn!("io_uring queue {qid}: cannot set up a ring: {e}; connections stay on /dev/fuse");
            return refuse_forever(me, qid);
        }
    };
    let mut slots: Vec<Option<Slot>> = Vec::new();
    let mut todo: VecDeque<(u64, i32)> = VecDeque::new();
    let mut out = Out::default();
    if let Err(e) = ring.watch(me.wake.fd(), WAKE) {
        warn!("io_uring queue {qid}: {e}; this worker stops");
        return refuse_forever(me, qid);
    }
    // Connections posted before the first wait.
    add_posted(me, &mut ring, &mut slots, &mut todo, qid);
    loop {
        if todo.is_empty() {
            match ring.wait() {
                Ok(done) => todo.extend(done),
                Err(e) => {
                    warn!("io_uring queue {qid}: {e}; this worker stops");
                    return refuse_forever(me, qid);
                }
            }
        }
        let Some((ud, res)) = todo.pop_front() else {
            continue;
        };
        if ud == WAKE {
            if res < 0 {
                warn!("io_uring queue {qid}: waiting for new connections failed ({res})");
            }
            if let Err(e) = ring.watch(me.wake.fd(), WAKE) {
                warn!("io_uring queue {qid}: {e}; no new connections on this worker");
            }
            add_posted(me, &mut ring, &mut slots, &mut todo, qid);
            continue;
        }
        let idx = ud as usize;
        let Some(slot) = slots.get_mut(idx).and_then(Option::as_mut) else {
            continue;
        };
        match entry_event(&mut slot.entry, res) {
            Event::Request => {
                if std::mem::take(&mut slot.unsettled) {
                    settled(slot, qid, true);
                }
                answer(&mut ring, slot, ud, &mut out, qid, hand_over);
            }
            Event::Closed => {
                if slot.unsettled {
                    settled(slot, qid, false);
                }
                slot.conn.end();
                slots[idx] = None;
            }
            // Our INIT reply is not processed yet (or io_uring retried a refused command
            // late): try again, shortly.
            Event::Failed(Errno::EAGAIN) if slot.served == 0 && Instant::now() < slot.deadline => {
                std::thread::sleep(Duration::from_millis(1));
                if ring.register(&mut slot.entry, ud).is_err() {
                    settled(slot, qid, false);
                    slots[idx] = None;
                }
            }
            Event::Failed(e) if slot.served > 0 && slot.refusals < 3 => {
                slot.refusals += 1;
                warn!("io_uring queue {qid}: the kernel refused a reply: {e}; registering again");
                if ring.register(&mut slot.entry, ud).is_err() {
                    slots[idx] = None;
                }
            }
            Event::Failed(e) => {
                warn!("io_uring queue {qid}: the kernel refused an entry: {e}; it is dropped");
                if slot.unsettled {
                    settled(slot, qid, false);
                }
                slots[idx] = None;
            }
        }
    }
}

/// Registers an entry of every connection posted to this worker. A registration the kernel
/// refuses at once completes at once; one it takes completes only with its first request, so
/// it is reported taken unless its refusal is among the completions right after submitting.
fn add_posted(
    me: &Worker,
    ring: &mut Ring,
    slots: &mut Vec<Option<Slot>>,
    todo: &mut VecDeque<(u64, i32)>,
    qid: usize,
) {
    let posted = std::mem::take(&mut *me.inbox.lock());
    if posted.is_empty() {
        return;
    }
    let mut added = Vec::new();
    for conn in posted {
        let entry = match RingEntry::new(
            std::os::fd::AsFd::as_fd(&*conn.dev),
            qid as u16,
            PAYLOAD_LEN,
        ) {
            Ok(e) => e,
            Err(e) => {
                warn!("io_uring queue {qid}: no buffers for an entry: {e}");
                if let Some(s) = conn.ring.get() {
                    s.settled(qid, false);
                }
                continue;
            }
        };
        let idx = match slots.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                slots.push(None);
                slots.len() - 1
            }
        };
        let mut slot = Slot {
            conn,
            entry,
            unsettled: true,
            deadline: Instant::now() + REGISTER_GRACE,
            served: 0,
            refusals: 0,
        };
        if let Err(e) = ring.register(&mut slot.entry, idx as u64) {
            warn!("io_uring queue {qid}: cannot register an entry: {e}");
            settled(&slot, qid, false);
            continue;
        }
        slots[idx] = Some(slot);
        added.push(idx);
    }
    if let Err(e) = ring.submit() {
        warn!("io_uring queue {qid}: submitting registrations failed: {e}");
    }
    let now = ring.ready();
    for idx in added {
        let refused = now.iter().any(|(ud, res)| *ud == idx as u64 && *res < 0);
        if let Some(slot) = slots.get_mut(idx).and_then(Option::as_mut) {
            if !refused && std::mem::take(&mut slot.unsettled) {
                settled(slot, qid, true);
            }
        }
    }
    todo.extend(now);
}

/// Reports a slot's registration to its connection.
fn settled(slot: &Slot, qid: usize, taken: bool) {
    if let Some(s) = slot.conn.ring.get() {
        s.settled(qid, taken);
    }
    if taken {
        slot.conn
            .fs
            .stats()
            .ring_entries
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// Serves the request in `slot`'s buffers, puts the reply there and commits it, fetching the
/// entry's next request.
fn answer(ring: &mut Ring, slot: &mut Slot, ud: u64, out: &mut Out, qid: usize, hand_over: bool) {
    let conn = Arc::clone(&slot.conn);
    let h = Args::new(slot.entry.header());
    // fuse_in_header.unique; fuse_uring_ent_in_out.commit_id names the entry to commit.
    let (unique, commit_id) = (h.u64(8), h.u64(ENT_IN_OUT + 8));
    let len = h.u32(ENT_IN_OUT + 16) as usize;
    {
        let header = slot.entry.header();
        let op = &header[OP_IN..ENT_IN_OUT];
        super::serve(
            &conn.fs,
            &conn.dev,
            header,
            op,
            slot.entry.payload(len),
            out,
        );
    }
    slot.served += 1;
    conn.fs
        .stats()
        .ring_requests
        .fetch_add(1, Ordering::Relaxed);
    if !slot.entry.put_reply(&out.header(unique), &out.body) {
        out.reset(0);
        out.error = -libc::EIO;
        slot.entry.put_reply(&out.header(unique), &[]);
    }
    let sent = if hand_over {
        commit_handing_over(ring, &mut slot.entry, commit_id, ud, qid)
    } else {
        ring.commit(&mut slot.entry, commit_id, ud)
            .and_then(|()| ring.submit())
    };
    if let Err(e) = sent {
        warn!("io_uring queue {qid}: sending a reply failed: {e}");
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
fn commit_handing_over(
    ring: &mut Ring,
    e: &mut RingEntry,
    id: u64,
    ud: u64,
    qid: usize,
) -> SysResult<()> {
    ring.commit(e, id, ud)?;
    let idle = uring::set_idle_policy(true).is_ok();
    let sent = ring.submit();
    if idle {
        if let Err(err) = uring::set_idle_policy(false) {
            // Left of idle policy, this worker would starve behind any busy process.
            warn!("io_uring queue {qid}: cannot leave SCHED_IDLE ({err})");
            return Err(err);
        }
    }
    sent
}

/// A worker that cannot serve tells every connection posted to it, now and later, that its
/// entry was not taken (so mounts fail clearly instead of waiting).
fn refuse_forever(me: &Worker, qid: usize) {
    loop {
        for conn in std::mem::take(&mut *me.inbox.lock()) {
            if let Some(s) = conn.ring.get() {
                s.settled(qid, false);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether workers may switch to SCHED_IDLE and back: leaving it needs CAP_SYS_NICE or an
/// RLIMIT_NICE of 20 (a rootless daemon usually has neither). Tried on a throwaway thread,
/// since the policy belongs to the thread.
pub(crate) fn can_hand_over() -> bool {
    std::thread::spawn(|| uring::set_idle_policy(true).and_then(|()| uring::set_idle_policy(false)))
        .join()
        .is_ok_and(|r| r.is_ok())
}
