//! The `unionfs-mount` process: detach, mount, report readiness to the caller, serve until
//! unmounted, unmount on SIGTERM/SIGINT/SIGHUP, and leave a watchdog that unmounts if the daemon
//! is killed (so a dead daemon never leaves a mount whose every access fails with ENOTCONN).

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::options::Invocation;
use crate::sys;

const SIGNALS: [i32; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1];

/// Runs an invocation to the end; returns the process exit code.
pub fn run(mut inv: Invocation) -> i32 {
    // The daemon and its watchdog leave the caller's working directory: keep paths absolute.
    if let Ok(abs) = std::path::absolute(&inv.mountpoint) {
        inv.mountpoint = abs;
    }
    for w in &inv.warnings {
        eprintln!("unionfs-mount: warning: {w}");
    }
    if !inv.config.read_only && inv.config.upper_on_read_only_fs() {
        if let Some(u) = &inv.config.upper {
            eprintln!(
                "unionfs-mount: warning: upper layer {} is on a read-only filesystem: mounting \
                 the union read-only, with the upper as its top layer (remount that filesystem \
                 read-write and mount the union again to make changes)",
                u.display()
            );
        }
        inv.config.read_only = true;
    }
    // The kernel already applied the caller's umask to every mode it sends us.
    sys::set_umask(0);
    let prepared = match inv.config.prepare(&inv.mountpoint) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("unionfs-mount: {e}");
            return 1;
        }
    };
    let hidden = prepared.hidden_entries();
    if hidden > 0 && !inv.nonempty {
        warn_nonempty(&inv, hidden);
    }
    // Readiness pipe: the foreground caller waits on it until the mount is live.
    let mut status: Option<OwnedFd> = None;
    if !inv.foreground {
        let (r, w) = match sys::pipe() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("unionfs-mount: creating a pipe: {e}");
                return 1;
            }
        };
        match sys::fork() {
            Ok(sys::ForkResult::Child) => {
                drop(r);
                sys::setsid();
                status = Some(w);
            }
            Ok(sys::ForkResult::Parent { .. }) => {
                drop(w);
                return wait_ready(r);
            }
            Err(e) => {
                eprintln!("unionfs-mount: fork: {e}");
                return 1;
            }
        }
    }
    let watchdog = if inv.watchdog {
        start_watchdog(&inv.mountpoint)
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
                let _ = sys::write(w.as_fd(), b"c");
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
        let _ = sys::write(w.as_fd(), b"c"); // clean exit: the watchdog has nothing to do
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
fn warn_nonempty(inv: &Invocation, hidden: usize) {
    let mnt = inv.mountpoint.display();
    let hint = if inv.config.upper.is_none() {
        format!(
            "; there is no upper, so the union is read-only: if {mnt} was meant as the upper, \
             give the mount point after it: unionfs-mount LOWERS {mnt} MNT"
        )
    } else {
        String::new()
    };
    eprintln!(
        "unionfs-mount: warning: mount point {mnt} is not empty: its {hidden} entries are \
         hidden until the union is unmounted (-o nonempty mounts without this warning){hint}"
    );
}

/// Writes a stats report to `file` (replaced atomically), or to stderr.
fn write_stats(report: &str, file: Option<&Path>) {
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
            "unionfs-mount: the daemon exited before the mount was ready (run with -f -d to see why)"
        );
    }
    // The daemon printed its own message on our shared stderr.
    1
}

/// Forks a tiny process that holds the read end of a pipe whose write end only the daemon
/// holds. EOF without the "clean" byte means the daemon died: unmount lazily.
fn start_watchdog(mountpoint: &Path) -> Option<OwnedFd> {
    let (r, w) = sys::pipe().ok()?;
    let mnt: PathBuf = mountpoint.to_path_buf();
    match sys::fork() {
        Ok(sys::ForkResult::Child) => {
            let keep = r.as_raw_fd();
            sys::close_all_except(keep);
            let _ = std::env::set_current_dir("/");
            let mut b = [0u8; 1];
            let clean = matches!(sys::read(r.as_fd(), &mut b), Ok(1) if b[0] == b'c');
            // Only the dead mount: the user may already have mounted a new union there. The
            // kernel may abort the connection a little after our fds close (io_uring commands
            // are cancelled asynchronously), so look again for a while before giving up.
            let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !clean && std::time::Instant::now() < end {
                if crate::mount::is_dead_fuse_mount(&mnt) {
                    let _ = sys::umount_lazy(&mnt);
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            sys::exit_now(0);
        }
        Ok(sys::ForkResult::Parent { .. }) => {
            drop(r);
            Some(w)
        }
        Err(_) => None,
    }
}
