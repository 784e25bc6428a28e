//! Whole-file locks (flock) and who holds them.
//!
//! A union's daemon locks its upper and work directories for its lifetime (`layer::stack`): a
//! flock belongs to the open file description, so it goes with the daemon's last descriptor, at
//! exit or `kill -9`, and no lock file is ever left behind. The pid the kernel shows in
//! /proc/locks is the one of the process that *took* the lock, which is not the holder after a
//! daemon forked itself into the background; the holders are found through the descriptors'
//! fdinfo instead, which lists a lock only under the descriptions that hold it.

use std::os::fd::{AsRawFd, BorrowedFd};

use super::{check, retry, SysResult};

/// `flock(fd, LOCK_EX | LOCK_NB)`: `EWOULDBLOCK` when another open file description holds it.
pub fn try_lock_exclusive(fd: BorrowedFd<'_>) -> SysResult<()> {
    // SAFETY: flock takes a descriptor and flags; no memory is involved.
    retry(|| check(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) })).map(drop)
}

/// `flock(fd, LOCK_EX)` or `flock(fd, LOCK_SH)` (`shared`), waiting for other holders.
pub fn lock_wait(fd: BorrowedFd<'_>, shared: bool) -> SysResult<()> {
    let op = if shared { libc::LOCK_SH } else { libc::LOCK_EX };
    // SAFETY: flock takes a descriptor and flags; no memory is involved.
    retry(|| check(unsafe { libc::flock(fd.as_raw_fd(), op) })).map(drop)
}

/// The `MAJ:MIN:INO` key /proc/locks and fdinfo use for the inode `dev`/`ino` (hex device).
fn lock_key(dev: u64, ino: u64) -> String {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    format!("{major:02x}:{minor:02x}:{ino}")
}

/// Whether one `lock:` line of fdinfo or /proc/locks is a flock of `kind` (`WRITE` for
/// exclusive, `READ` for shared) on `key`.
fn is_flock(line: &str, key: &str, kind: &str) -> bool {
    let f: Vec<&str> = line.split_whitespace().collect();
    f.contains(&"FLOCK") && f.contains(&kind) && f.contains(&key)
}

/// Processes (pids, in our pid namespace) holding a write flock on the inode `dev`/`ino`.
///
/// Descriptors of processes we may not inspect are skipped; when no holder is found that way
/// (another user's daemon), the pid /proc/locks recorded when the lock was taken is returned.
pub fn flock_holders(dev: u64, ino: u64) -> Vec<i32> {
    holders(dev, ino, "WRITE")
}

/// Processes holding a shared flock on the inode `dev`/`ino`, found as [`flock_holders`]
/// finds exclusive ones.
pub fn flock_sharers(dev: u64, ino: u64) -> Vec<i32> {
    holders(dev, ino, "READ")
}

fn holders(dev: u64, ino: u64, kind: &str) -> Vec<i32> {
    let key = lock_key(dev, ino);
    let mut out = Vec::new();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fdinfo")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_to_string(fd.path()).is_ok_and(|t| {
                t.lines()
                    .any(|l| l.starts_with("lock:") && is_flock(l, &key, kind))
            })
        });
        if holds && !out.contains(&pid) {
            out.push(pid);
        }
    }
    if out.is_empty() {
        let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
        for l in locks.lines().filter(|l| is_flock(l, &key, kind)) {
            // "1: FLOCK  ADVISORY  WRITE 1234 00:2d:12345 0 EOF": the pid precedes the key.
            let f: Vec<&str> = l.split_whitespace().collect();
            if let Some(pid) = f
                .iter()
                .position(|x| *x == key)
                .and_then(|i| i.checked_sub(1))
                .and_then(|i| f[i].parse().ok())
            {
                out.push(pid);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_second_description_is_refused_and_the_holder_named() {
        let d = std::env::temp_dir().join(format!("unionfs-flock-unit-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let open = || super::super::open_path(&d, libc::O_RDONLY | libc::O_DIRECTORY).unwrap();
        let (a, b) = (open(), open());
        try_lock_exclusive(a.as_fd()).unwrap();
        // The same description may lock again; another one may not.
        try_lock_exclusive(a.as_fd()).unwrap();
        assert_eq!(
            try_lock_exclusive(b.as_fd()),
            Err(super::super::Errno::EWOULDBLOCK)
        );
        let st = super::super::fstat(a.as_fd()).unwrap();
        assert_eq!(
            flock_holders(st.st_dev, st.st_ino),
            vec![std::process::id() as i32]
        );
        drop(a);
        try_lock_exclusive(b.as_fd()).unwrap();
        drop(b);
        std::fs::remove_dir(&d).unwrap();
    }
}
