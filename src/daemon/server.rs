//! One process hosting many unions (`unionfs-mount -o shared`): a union handed to it costs
//! its tables and its connection's ring entries, but no thread or process of its own, since
//! the transports' pools serve every union of the process (see `transport`). A hundred
//! containers on one node then cost one daemon, one watchdog and a few threads per CPU.
//!
//! The server listens on a unix socket (mode 0600: only its owner may hand it unions). A
//! `unionfs-mount -o shared[=SOCKET] ...` connects, checks that the server runs in its own
//! mount and user namespaces (mount points and layer paths must mean the same to both), sends
//! its arguments and working directory, and exits with the server's answer: 0 once the union
//! is live. With no server running it starts one (under a lock, so two callers start one).
//! The server unmounts everything on SIGTERM/SIGINT/SIGHUP, writes every union's counters on
//! SIGUSR1, and exits after 30 s without a union.
//!
//! Wire format, both ways: a u32 length, then that many bytes. Request: `mount`, the working
//! directory, then the arguments, NUL-separated. Answer: `OK` or `ERR`, then lines of
//! warnings or the error.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::watchdog::Watchdog;
use crate::error::{Error, Result};
use crate::mount::MountGuard;
use crate::options::{self, Invocation};
use crate::sys;

/// How long a server without a union waits for one before it exits (tests shorten it with
/// `UNIONFS_SERVE_IDLE_SECS`).
fn idle_exit() -> Duration {
    let secs = std::env::var("UNIONFS_SERVE_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(secs)
}

/// Largest request or answer we read (arguments of one mount).
const MAX_MESSAGE: usize = 1 << 20;

const SIGNALS: [i32; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1];

fn send(s: &mut UnixStream, msg: &[u8]) -> std::io::Result<()> {
    s.write_all(&(msg.len() as u32).to_ne_bytes())?;
    s.write_all(msg)
}

fn recv(s: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_ne_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(std::io::Error::other("message too long"));
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

// ---------------------------------------------------------------------------------------------
// The caller's side.

/// Hands `inv` (parsed from `inv.argv`, paths already absolute) to the server at `socket`,
/// starting one if none runs; prints the server's warnings or error and returns the exit code.
pub fn hand_off(socket: &Path, inv: &Invocation) -> i32 {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let mut req: Vec<u8> = b"mount".to_vec();
    req.push(0);
    req.extend_from_slice(cwd.as_os_str().as_bytes());
    for a in &inv.argv {
        req.push(0);
        req.extend_from_slice(a.as_bytes());
    }
    let mut last = String::new();
    // A server that is exiting (idle) may drop a request: start a new one and try again.
    for _ in 0..3 {
        let mut stream = match connect_or_start(socket) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("unionfs-mount: {e}");
                return 1;
            }
        };
        if let Err(e) = same_namespaces(&stream) {
            eprintln!("unionfs-mount: {e}");
            return 1;
        }
        let answer = send(&mut stream, &req).and_then(|()| recv(&mut stream));
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        let text = String::from_utf8_lossy(answer.get(3..).unwrap_or_default()).into_owned();
        if answer.starts_with(b"OK\0") {
            for w in text.lines() {
                eprintln!("unionfs-mount: warning: {w}");
            }
            return 0;
        }
        eprintln!("unionfs-mount: {text}");
        return 1;
    }
    eprintln!(
        "unionfs-mount: the server at {} did not answer ({last}): see its log, or mount \
         without -o shared",
        socket.display()
    );
    1
}

/// A connection to the server at `socket`; with none running, one is started first.
fn connect_or_start(socket: &Path) -> Result<UnixStream> {
    if let Ok(s) = UnixStream::connect(socket) {
        return Ok(s);
    }
    if let Some(dir) = socket.parent() {
        // Private to its owner: whoever may connect may mount.
        use std::os::unix::fs::DirBuilderExt;
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir);
    }
    // Only one caller starts a server; the others wait for its socket.
    let lock_path = socket.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::new(format!("opening {}: {e}", lock_path.display())))?;
    let _held = sys::lock_exclusive(lock)
        .map_err(|e| Error::new(format!("locking {}: {e}", lock_path.display())))?;
    if let Ok(s) = UnixStream::connect(socket) {
        return Ok(s);
    }
    // A socket left by a server that died refuses connections: it goes.
    let _ = std::fs::remove_file(socket);
    let exe =
        std::env::current_exe().map_err(|e| Error::new(format!("finding our own binary: {e}")))?;
    let status = std::process::Command::new(&exe)
        .arg("--serve")
        .arg(socket)
        .stdin(std::process::Stdio::null())
        .status()
        .map_err(|e| Error::new(format!("starting a server ({}): {e}", exe.display())))?;
    if !status.success() {
        return Err(Error::new(format!(
            "the server for {} did not start ({status}); run `unionfs-mount --serve {} -f` to \
             see why",
            socket.display(),
            socket.display()
        )));
    }
    UnixStream::connect(socket).map_err(|e| {
        Error::new(format!(
            "connecting to the new server at {}: {e}",
            socket.display()
        ))
    })
}

/// The server must see the mount points and layers we see: same mount and user namespaces.
fn same_namespaces(stream: &UnixStream) -> Result<()> {
    let pid = sys::peer_pid(stream.as_fd())
        .map_err(|e| Error::new(format!("who serves the socket: {e}")))?;
    for ns in ["mnt", "user"] {
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).ok();
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).ok();
        if ours != theirs {
            return Err(Error::new(format!(
                "the unionfs server (pid {pid}) runs in another {ns} namespace, where this \
                 union's paths may mean something else: give it a socket of its own \
                 (-o shared=PATH) or mount without -o shared"
            )));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The server.

/// A union the server hosts.
struct Hosted {
    guard: MountGuard,
    mountpoint: PathBuf,
    stats_file: Option<PathBuf>,
}

struct Server {
    unions: Mutex<Vec<Hosted>>,
    /// Requests being handled (a mount in progress keeps the server from exiting).
    busy: AtomicUsize,
    stopping: AtomicBool,
    watchdog: Option<Watchdog>,
}

/// Runs a server on `socket` until it is told to stop or has been idle for a while; in the
/// background unless `foreground`. Returns the exit code.
pub fn run(socket: &Path, foreground: bool) -> i32 {
    // Fork before listening: a caller learns who serves the socket (SO_PEERCRED) from the
    // process that listens on it, and checks its namespaces through that pid.
    let mut ready = None;
    if !foreground {
        match super::detach() {
            Ok(w) => ready = Some(w),
            Err(code) => return code,
        }
    }
    let listener = match UnixListener::bind(socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "unionfs-mount: cannot listen on {} ({e}): is another server running there?",
                socket.display()
            );
            return 1;
        }
    };
    if let Err(e) = std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)) {
        eprintln!("unionfs-mount: {}: {e}", socket.display());
        let _ = std::fs::remove_file(socket);
        return 1;
    }
    if let Some(w) = ready.take() {
        let _ = sys::write(w.as_fd(), b"OK");
        sys::stdio_to_null();
    }
    // The kernel already applied each caller's umask to every mode it sends us.
    sys::set_umask(0);
    let server = Arc::new(Server {
        unions: Mutex::new(Vec::new()),
        busy: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
        watchdog: Watchdog::start(),
    });
    sys::block_signals(&SIGNALS);
    let s = Arc::clone(&server);
    std::thread::spawn(move || signals(&s));
    let code = serve(&server, &listener, socket);
    let _ = std::fs::remove_file(socket);
    if let Some(w) = &server.watchdog {
        w.clean_exit();
    }
    code
}

fn signals(server: &Server) {
    loop {
        let sig = sys::wait_signal(&SIGNALS);
        if sig == libc::SIGUSR1 {
            for u in server.unions.lock().iter() {
                let report = format!(
                    "union {}\n{}",
                    u.mountpoint.display(),
                    u.guard.fs().report()
                );
                super::write_stats(&report, u.stats_file.as_deref());
            }
            continue;
        }
        log::info!("signal {sig}: unmounting every union");
        server.stopping.store(true, Ordering::Release);
        for u in server.unions.lock().iter() {
            let _ = sys::umount_lazy(&u.mountpoint);
        }
        return;
    }
}

fn serve(server: &Arc<Server>, listener: &UnixListener, socket: &Path) -> i32 {
    if let Err(e) = listener.set_nonblocking(true) {
        log::error!("server: {e}");
        return 1;
    }
    let mut idle_since = Instant::now();
    loop {
        reap(server);
        let busy = server.busy.load(Ordering::Acquire) > 0;
        let empty = server.unions.lock().is_empty();
        if server.stopping.load(Ordering::Acquire) && empty && !busy {
            return 0;
        }
        if !empty || busy {
            idle_since = Instant::now();
        } else if idle_since.elapsed() > idle_exit() {
            // New callers find no socket and start a server of their own.
            let _ = std::fs::remove_file(socket);
            return 0;
        }
        if !sys::wait_readable(listener.as_fd(), Duration::from_secs(1)) {
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                if server.stopping.load(Ordering::Acquire) {
                    continue;
                }
                server.busy.fetch_add(1, Ordering::AcqRel);
                let s = Arc::clone(server);
                std::thread::spawn(move || {
                    handle(&s, stream);
                    s.busy.fetch_sub(1, Ordering::AcqRel);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => log::warn!("server: accept: {e}"),
        }
    }
}

/// Drops the unions the kernel has unmounted.
fn reap(server: &Server) {
    let mut unions = server.unions.lock();
    unions.retain(|u| {
        if u.guard.is_ended() {
            if let Some(w) = &server.watchdog {
                w.forget(&u.mountpoint);
            }
            false
        } else {
            true
        }
    });
}

/// Serves one caller: mounts its union and answers.
fn handle(server: &Server, mut stream: UnixStream) {
    let _ = stream.set_nonblocking(false);
    let answer = match recv(&mut stream) {
        Ok(req) => match mount(server, &req) {
            Ok(warnings) => [b"OK\0".as_slice(), warnings.join("\n").as_bytes()].concat(),
            Err(e) => [b"ERR".as_slice(), e.to_string().as_bytes()].concat(),
        },
        // A caller that found us in another namespace hung up: nothing to answer.
        Err(e) => {
            log::debug!("server: reading a request: {e}");
            return;
        }
    };
    let _ = send(&mut stream, &answer);
}

fn mount(server: &Server, req: &[u8]) -> Result<Vec<String>> {
    let mut parts = req.split(|b| *b == 0);
    if parts.next() != Some(b"mount".as_slice()) {
        return Err(Error::new("the server understands only mount requests"));
    }
    let cwd = PathBuf::from(std::ffi::OsStr::from_bytes(parts.next().unwrap_or(b"/")));
    let argv: Vec<OsString> = std::iter::once(OsString::from("unionfs-mount"))
        .chain(parts.map(|p| OsString::from_vec(p.to_vec())))
        .collect();
    let args = options::parse(argv).map_err(|e| Error::new(e.to_string()))?;
    let mut inv = options::parse_args(args)?;
    inv.absolutize(&cwd);
    let (prepared, warnings) = super::prepare(&mut inv)?;
    let guard = prepared.mount()?;
    if let Some(p) = &inv.pid_file {
        // The pid that owns the union: this server's.
        let _ = std::fs::write(p, format!("{}\n", std::process::id()));
    }
    if let Some(w) = &server.watchdog {
        w.watch(&inv.mountpoint);
    }
    server.unions.lock().push(Hosted {
        guard,
        mountpoint: inv.mountpoint.clone(),
        stats_file: inv.stats_file.clone(),
    });
    Ok(warnings)
}
