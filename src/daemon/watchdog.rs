//! The watchdog: a tiny process left behind by a daemon (or a server of many unions) that
//! unmounts the daemon's unions if it dies without unmounting them (`kill -9`), so a dead
//! daemon never leaves a mount whose every access fails with ENOTCONN.
//!
//! It holds the read end of a pipe whose write end only the daemon holds, and learns the mount
//! points to look after through it (`+MNT` and `-MNT` lines). EOF without the clean byte `c`
//! means the daemon died: every mount point still listed that answers as a dead FUSE mount is
//! unmounted lazily (a live union mounted there since is left alone).

use std::collections::BTreeSet;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::sys;

/// The daemon's end of the pipe to its watchdog.
#[derive(Debug)]
pub struct Watchdog(OwnedFd);

impl Watchdog {
    /// Forks the watchdog; `None` when it cannot be started (the daemon runs without one).
    pub fn start() -> Option<Watchdog> {
        let (r, w) = sys::pipe().ok()?;
        match sys::fork() {
            Ok(sys::ForkResult::Child) => {
                let keep = r.as_raw_fd();
                sys::close_all_except(keep);
                let _ = std::env::set_current_dir("/");
                watch(r);
                sys::exit_now(0);
            }
            Ok(sys::ForkResult::Parent { .. }) => {
                drop(r);
                Some(Watchdog(w))
            }
            Err(_) => None,
        }
    }

    /// Adds a mount point to look after.
    pub fn watch(&self, mnt: &Path) {
        self.send(b'+', mnt);
    }

    /// Takes a mount point off the list (its union was unmounted).
    pub fn forget(&self, mnt: &Path) {
        self.send(b'-', mnt);
    }

    fn send(&self, what: u8, mnt: &Path) {
        let mut line = vec![what];
        line.extend_from_slice(mnt.as_os_str().as_bytes());
        line.push(b'\n');
        // One write of less than PIPE_BUF bytes is atomic: lines never interleave.
        let _ = sys::write(self.0.as_fd(), &line);
    }

    /// The daemon is exiting cleanly: the watchdog has nothing to do.
    pub fn clean_exit(&self) {
        let _ = sys::write(self.0.as_fd(), b"c");
    }
}

/// The watchdog's life: read the list until EOF, then unmount what a dead daemon left.
fn watch(r: OwnedFd) {
    let mut mounts: BTreeSet<PathBuf> = BTreeSet::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    let mut clean = false;
    while let Ok(n) = sys::read(r.as_fd(), &mut buf) {
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&buf[..n]);
        // Records: `c` alone, or a `+`/`-` line.
        loop {
            match pending.first() {
                Some(b'c') => {
                    clean = true;
                    pending.remove(0);
                }
                Some(_) => match pending.iter().position(|b| *b == b'\n') {
                    Some(end) => take_line(&mut pending, end, &mut mounts),
                    None => break,
                },
                None => break,
            }
        }
    }
    if clean {
        return;
    }
    // The kernel may abort a connection a little after our fds close (io_uring commands are
    // cancelled asynchronously), so look again for a while before giving up on a mount.
    let end = Instant::now() + Duration::from_secs(5);
    while !mounts.is_empty() && Instant::now() < end {
        mounts.retain(|m| {
            if crate::mount::is_dead_fuse_mount(m) {
                let _ = sys::umount_lazy(m);
                false
            } else {
                true
            }
        });
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn take_line(pending: &mut Vec<u8>, end: usize, mounts: &mut BTreeSet<PathBuf>) {
    let line: Vec<u8> = pending.drain(..=end).collect();
    let line = &line[..line.len() - 1];
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(
        line.get(1..).unwrap_or_default(),
    ));
    match line.first() {
        Some(b'+') => {
            mounts.insert(path);
        }
        Some(b'-') => {
            mounts.remove(&path);
        }
        _ => {}
    }
}
