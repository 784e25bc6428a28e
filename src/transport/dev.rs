//! Requests read from `/dev/fuse` by this process's pool of reader threads, shared by every
//! union it serves. The bytes are the same kernel structs the ring delivers, only laid out in
//! one buffer: the header, the op's fixed argument, then names or data. So they go to the same
//! `dispatch` with the same replies, which fuser's reply types could not give: directory
//! entries without attributes, and the kernel's "caller lacks CAP_FSETID" flags.
//!
//! Why one pool: a thread per union (or several) makes an idle union cost as many threads and
//! their stacks, which at a hundred containers on a node is thousands. Every connection's
//! reading fd sits in one epoll set whose entries fire once; a thread woken by a connection
//! re-arms it as soon as it has read a request, so a busy union is served by as many threads
//! as it keeps busy. The pool grows when no thread is left waiting (up to its limit) and
//! shrinks back to one after a quiet while.
//!
//! With the ring serving a connection, its `/dev/fuse` carries only FORGET and INTERRUPT.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use log::{error, warn};

use super::args::{fixed_arg_len, BatchForgetIn, ForgetIn, InHeader};
use super::conn::Conn;
use super::wire::{Args, Out};
use super::PAYLOAD_LEN;
use crate::fs::op::Op;
use crate::sys::{self, Errno, OneShotSet};

/// How long a thread rests after taking FORGETs while the ring serves requests: the kernel
/// holds forgotten nodes that long at most, and never waits for the answer.
const FORGET_PACE: Duration = Duration::from_millis(1);

/// How long a thread beyond the first waits for work before it leaves the pool.
const IDLE_EXIT: Duration = Duration::from_secs(10);

/// A connection as the pool holds it: with its own reading fd (a clone of the device, so its
/// processing list and non-blocking mode are ours).
struct Entry {
    conn: Arc<Conn>,
    fd: OwnedFd,
}

/// The process's `/dev/fuse` readers.
struct Pool {
    set: OneShotSet,
    conns: DashMap<u64, Arc<Entry>>,
    /// Connections resting after a FORGET (see `pace`): re-armed when their time comes.
    resting: parking_lot::Mutex<Vec<(Instant, Arc<Entry>)>>,
    threads: AtomicUsize,
    idle: AtomicUsize,
    max: AtomicUsize,
}

fn pool() -> &'static Arc<Pool> {
    static POOL: OnceLock<Arc<Pool>> = OnceLock::new();
    POOL.get_or_init(|| {
        Arc::new(Pool {
            // An epoll set cannot fail to be made short of fd exhaustion at start-up; the
            // pool is then useless, and `serve` reports it when adding a connection.
            set: OneShotSet::new().unwrap_or_else(|e| {
                error!("/dev/fuse: cannot make an epoll set: {e}");
                std::process::abort()
            }),
            conns: DashMap::new(),
            resting: parking_lot::Mutex::new(Vec::new()),
            threads: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            max: AtomicUsize::new(1),
        })
    })
}

/// Serves `conn`'s `/dev/fuse` with the process's pool, which grows to `max_threads` threads
/// when its unions keep it busy (the largest limit any union asked for wins).
pub fn serve(conn: &Arc<Conn>, max_threads: usize) -> std::io::Result<()> {
    let p = pool();
    p.max.fetch_max(max_threads.max(1), Ordering::Relaxed);
    // A clone of the device: replies go on the fd the request came from, and non-blocking
    // reads must not change the mounted fd notifications are written to.
    let fd = sys::uring::dev_clone(conn.dev.as_fd()).or_else(|e| {
        warn!("/dev/fuse: cannot clone the device fd ({e}); reading the mounted one");
        sys::dup(conn.dev.as_fd())
    })?;
    sys::set_nonblocking(fd.as_fd())?;
    let entry = Arc::new(Entry {
        conn: Arc::clone(conn),
        fd,
    });
    p.conns.insert(conn.id, Arc::clone(&entry));
    if let Err(e) = p.set.add(entry.fd.as_fd(), conn.id) {
        p.conns.remove(&conn.id);
        return Err(e.into());
    }
    if p.threads.load(Ordering::Acquire) == 0 {
        spawn(p);
    }
    Ok(())
}

/// The number of reader threads now (for reports and tests).
pub fn threads() -> usize {
    pool().threads.load(Ordering::Relaxed)
}

fn spawn(p: &Arc<Pool>) {
    let n = p.threads.fetch_add(1, Ordering::AcqRel);
    let pool = Arc::clone(p);
    let spawned = std::thread::Builder::new()
        .name(format!("unionfs-dev{n}"))
        .spawn(move || reader(&pool));
    if let Err(e) = spawned {
        p.threads.fetch_sub(1, Ordering::AcqRel);
        error!("/dev/fuse: cannot start a reader thread: {e}");
    }
}

fn reader(p: &Arc<Pool>) {
    // The kernel refuses reads into buffers smaller than the largest request it may send;
    // the pages past a request's size are never touched, so they cost no memory.
    let mut buf = match sys::Region::new(InHeader::SIZE + PAYLOAD_LEN + 4096) {
        Ok(b) => b,
        Err(e) => {
            error!("/dev/fuse: no memory for a reader's buffer ({e}); this reader stops");
            p.threads.fetch_sub(1, Ordering::AcqRel);
            return;
        }
    };
    let mut out = Out::default();
    loop {
        let spare = p.threads.load(Ordering::Acquire) > 1;
        let rest_end = p.resting.lock().iter().map(|(t, _)| *t).min();
        let timeout = match rest_end {
            Some(t) => Some(t.saturating_duration_since(Instant::now())),
            None => spare.then_some(IDLE_EXIT),
        };
        p.idle.fetch_add(1, Ordering::AcqRel);
        // Every waiting thread wakes for a request (poll(2), see `OneShotSet::wait_one`), one
        // takes it: the pool is at most `max` threads, and the spare ones leave when quiet.
        let woken = p.set.wait_one(timeout);
        let idle_left = p.idle.fetch_sub(1, Ordering::AcqRel) - 1;
        wake_rested(p);
        let key = match woken {
            Ok(Some(key)) => key,
            Ok(None) if rest_end.is_some() => continue,
            // Quiet for a while: leave, unless the pool would be left without a thread.
            Ok(None) => {
                let left = p
                    .threads
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                        (t > 1).then(|| t - 1)
                    });
                if left.is_ok() {
                    return;
                }
                continue;
            }
            Err(e) => {
                error!("/dev/fuse: waiting for requests failed ({e}); this reader stops");
                p.threads.fetch_sub(1, Ordering::AcqRel);
                return;
            }
        };
        if idle_left == 0 && p.threads.load(Ordering::Acquire) < p.max.load(Ordering::Relaxed) {
            // Nobody is left waiting: the next request should not wait for this one.
            spawn(p);
        }
        let Some(entry) = p.conns.get(&key).map(|e| Arc::clone(e.value())) else {
            continue;
        };
        take_one(p, &entry, &mut buf, &mut out);
    }
}

/// Reads one request of `entry`'s connection (if another thread did not take it first),
/// re-arms the connection for the next one, and answers it.
fn take_one(p: &Pool, entry: &Entry, buf: &mut [u8], out: &mut Out) {
    let (conn, fd) = (&entry.conn, entry.fd.as_fd());
    let rearm = || {
        if let Err(e) = p.set.rearm(fd, conn.id) {
            error!("/dev/fuse: cannot watch the connection again ({e})");
        }
    };
    let n = match sys::read(fd, buf) {
        Ok(n) => n,
        // EAGAIN: nothing (yet); ENOENT: the request was interrupted before we read it.
        Err(Errno::EAGAIN | Errno::ENOENT | Errno::EINTR) => return rearm(),
        // The connection is gone: unmounted, or aborted.
        Err(Errno::ENODEV) => return drop_conn(p, entry),
        Err(e) => {
            error!("/dev/fuse: read failed ({e}); this connection is no longer served");
            return drop_conn(p, entry);
        }
    };
    let req = &buf[..n];
    let Some(header) = req.get(..InHeader::SIZE) else {
        warn!("/dev/fuse: a {n}-byte read is shorter than a request header; skipped");
        return rearm();
    };
    let h = InHeader::read(header);
    let body = req.get(InHeader::SIZE..).unwrap_or_default();
    let op = Op::from_code(h.opcode);
    let fs = &conn.fs;
    match op {
        // No answers to these.
        Some(Op::Forget) => {
            fs.forget(h.nodeid, ForgetIn::read(&Args::new(body)).nlookup);
            return pace(p, entry, rearm);
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
            return pace(p, entry, rearm);
        }
        // Operations are not interruptible here; the kernel's request simply completes.
        Some(Op::Interrupt) => return rearm(),
        _ => {}
    }
    // Another thread may take the connection's next request while this one is served.
    rearm();
    let payload = body.get(op.map_or(0, fixed_arg_len)..).unwrap_or_default();
    super::serve(fs, &conn.dev, header, body, payload, out);
    let reply = if out.error == 0 { &out.body[..] } else { &[] };
    match sys::write2(fd, &out.header(h.unique), reply) {
        // ENOENT: the caller was interrupted and the kernel no longer waits for this.
        Ok(_) | Err(Errno::ENOENT) => {}
        Err(Errno::ENODEV) => drop_conn(p, entry),
        Err(e) => warn!("/dev/fuse: answering opcode {} failed: {e}", h.opcode),
    }
}

/// The connection is over: out of the set, and its waiters told.
fn drop_conn(p: &Pool, entry: &Entry) {
    let _ = p.set.remove(entry.fd.as_fd());
    p.conns.remove(&entry.conn.id);
    entry.conn.end();
}

/// After FORGETs while the ring serves every other request: each one read alone is a wakeup
/// and two context switches, as much as the unlink that caused it. Leaving the connection
/// unwatched for a millisecond lets the kernel queue the next ones, which it then hands over
/// together as one BATCH_FORGET (unlink 20,000: 0.71 -> 0.47 s; rm -rf: 0.43 -> 0.31 s), while
/// the thread goes on serving other connections.
fn pace(p: &Pool, entry: &Entry, rearm: impl FnOnce()) {
    if !entry.conn.fs.ring_serving() {
        return rearm();
    }
    let conn = p.conns.get(&entry.conn.id).map(|e| Arc::clone(e.value()));
    match conn {
        Some(e) => p.resting.lock().push((Instant::now() + FORGET_PACE, e)),
        None => rearm(),
    }
}

/// Re-arms the connections whose rest is over.
fn wake_rested(p: &Pool) {
    let now = Instant::now();
    let due: Vec<Arc<Entry>> = {
        let mut r = p.resting.lock();
        let (due, rest): (Vec<_>, Vec<_>) = r.drain(..).partition(|(t, _)| *t <= now);
        *r = rest;
        due.into_iter().map(|(_, e)| e).collect()
    };
    for e in due {
        if let Err(err) = p.set.rearm(e.fd.as_fd(), e.conn.id) {
            error!("/dev/fuse: cannot watch the connection again ({err})");
        }
    }
}
