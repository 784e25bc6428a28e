//! The `unionfs-mount` process: detach, mount, report readiness to the caller, serve until
//! unmounted, unmount on SIGTERM/SIGINT/SIGHUP, and leave a watchdog that unmounts if the daemon
//! is killed (so a dead daemon never leaves a mount whose every access fails with ENOTCONN).
//! With `-o shared` the union goes to a `server` process that hosts many instead.

pub mod server;
mod watchdog;

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use crate::mount::Prepared;
use crate::options::Invocation;
use crate::sys;
use watchdog::Watchdog;

const SIGNALS: [i32; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1];

/// Checks an invocation and opens its layers: what a union needs before its mount, whether
/// a process of its own or a server hosts it. Warnings for the user come back with it.
pub fn prepare(inv: &mut Invocation) -> crate::Result<(Prepared, Vec<String>)> {
    let mut warnings: Vec<String> = inv.warnings.clone();
    if !inv.config.read_only && inv.config.upper_on_read_only_fs() {
        if let Some(u) = &inv.config.upper {
            warnings.push(format!(
                "upper layer {} is on a read-only filesystem: mounting the union read-only, \
                 with the upper as its top layer (remount that filesystem read-write and mount \
                 the union again to make changes)",
                u.display()
            ));
        }
        inv.config.read_only = true;
    }
    let prepared = inv.config.prepare(&inv.mountpoint)?;
    let hidden = prepared.hidden_entries();
    if hidden > 0 && !inv.nonempty {
        warnings.push(nonempty_warning(inv, hidden));
    }
    Ok((prepared, warnings))
}

/// Runs an invocation to the end; returns the process exit code.
pub fn run(mut inv: Invocation) -> i32 {
    // The daemon and its watchdog leave the caller's working directory: keep paths absolute.
    if let Ok(cwd) = std::env::current_dir() {
        inv.absolutize(&cwd);
    }
    if let Some(socket) = inv.shared.clone() {
        return server::hand_off(&socket, &inv);
    }
    // The kernel already applied the caller's umask to every mode it sends us.
    sys::set_umask(0);
    let prepared = match prepare(&mut inv) {
        Ok((p, warnings)) => {
            for w in warnings {
                eprintln!("unionfs-mount: warning: {w}");
            }
            p
        }
        Err(e) => {
            eprintln!("unionfs-mount: {e}");
            return 1;
        }
    };
    // Readiness pipe: the foreground caller waits on it until the mount is live.
    let mut status: Option<OwnedFd> = None;
    if !inv.foreground {
        match detach() {
            Ok(w) => status = Some(w),
            Err(code) => return code,
        }
    }
    let watchdog = if inv.watchdog {
        Watchdog::start().inspect(|w| w.watch(&inv.mountpoint))
    } else {
        None
    };
    // Blocked before the workers start, so only our signal thread ever receives them.
    sys::block_signals(&SIGNALS);
    let guard = match prepared.mount() {
        Ok(g) => g,
        Err(e) => {
            report(&status, &format!("{e}"));
            eprintln!("unionfs-mount: {e}");
            if let Some(w) = &watchdog {
                w.clean_exit();
            }
            return 1;
        }
    };
    if let Some(p) = &inv.pid_file {
        if let Err(e) = std::fs::write(p, format!("{}\n", std::process::id())) {
            eprintln!(
                "unionfs-mount: warning: writing pid file {}: {e}",
                p.display()
            );
        }
    }
    if let Some(s) = status.take() {
        let _ = sys::write(s.as_fd(), b"OK");
        drop(s);
        if !inv.debug {
            sys::stdio_to_null();
        }
    }
    let mnt = inv.mountpoint.clone();
    let fs = guard.fs();
    let stats_file = inv.stats_file.clone();
    std::thread::spawn(move || loop {
        let sig = sys::wait_signal(&SIGNALS);
        if sig == libc::SIGUSR1 {
            write_stats(&fs.report(), stats_file.as_deref());
            continue;
        }
        log::info!("signal {sig}: unmounting {}", mnt.display());
        let _ = sys::umount_lazy(&mnt);
        break;
    });
    let r = guard.wait();
    if let Some(w) = &watchdog {
        w.clean_exit();
    }
    if let Err(e) = r {
        eprintln!("unionfs-mount: {e}");
        return 1;
    }
    0
}

/// Mounting over a non-empty directory is allowed (mount(8), kernel overlayfs and
/// fuse-overlayfs allow it), but its files vanish from sight until the unmount: say so, the way
/// a forgotten mount point (`unionfs-mount L U`) gets noticed.
fn nonempty_warning(inv: &Invocation, hidden: usize) -> String {
    let mnt = inv.mountpoint.display();
    let hint = if inv.config.upper.is_none() {
        format!(
            "; there is no upper, so the union is read-only: if {mnt} was meant as the upper, \
             give the mount point after it: unionfs-mount LOWERS {mnt} MNT"
        )
    } else {
        String::new()
    };
    format!(
        "mount point {mnt} is not empty: its {hidden} entries are hidden until the union is \
         unmounted (-o nonempty mounts without this warning){hint}"
    )
}

/// Writes a stats report to `file` (replaced atomically), or to stderr.
pub(crate) fn write_stats(report: &str, file: Option<&Path>) {
    match file {
        Some(f) => {
            let tmp = f.with_extension("tmp");
            let r = std::fs::write(&tmp, report).and_then(|_| std::fs::rename(&tmp, f));
            if let Err(e) = r {
                log::warn!("writing stats to {}: {e}", f.display());
            }
        }
        None => eprint!("{report}"),
    }
}

fn report(status: &Option<OwnedFd>, msg: &str) {
    if let Some(s) = status {
        let _ = sys::write(s.as_fd(), format!("ERR{msg}").as_bytes());
    }
}

/// Goes to the background: a child in a new session carries on and gets the writing end of
/// a readiness pipe (it writes "OK" there once it serves, or "ERR" and why), while the caller's
/// process waits for that word and ends with `Err` of its exit code.
pub(crate) fn detach() -> Result<OwnedFd, i32> {
    let (r, w) = sys::pipe().map_err(|e| {
        eprintln!("unionfs-mount: creating a pipe: {e}");
        1
    })?;
    match sys::fork() {
        Ok(sys::ForkResult::Child) => {
            drop(r);
            sys::setsid();
            Ok(w)
        }
        Ok(sys::ForkResult::Parent { .. }) => {
            drop(w);
            Err(wait_ready(r))
        }
        Err(e) => {
            eprintln!("unionfs-mount: fork: {e}");
            Err(1)
        }
    }
}

/// The caller's side of the readiness pipe: exit 0 once the daemon says the mount is live.
fn wait_ready(r: OwnedFd) -> i32 {
    let mut msg = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = sys::read(r.as_fd(), &mut buf) {
        if n == 0 {
            break;
        }
        msg.extend_from_slice(&buf[..n]);
    }
    if msg.starts_with(b"OK") {
        return 0;
    }
    if msg.is_empty() {
        let _ = writeln!(
            std::io::stderr(),
            "unionfs-mount: the daemon exited before it was ready (run it with -f -d to see why)"
        );
    }
    // The daemon printed its own message on our shared stderr.
    1
}
