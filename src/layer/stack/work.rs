//! The work dir: where it may be, the lock that makes it (and the upper) one union's, staging
//! names, leftovers of a crash, and the marker of a volatile mount.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use super::{is_within, open_subdir, remove_tree, Stack, StackConfig, STAGE_PREFIX};
use crate::error::{Error, Result};
use crate::layer::whiteout;
use crate::sys::{self, Errno, SysResult};

/// The work dir's directory of marks that make a later mount refuse (kernel overlayfs's name).
const VOLATILE_DIR: &CStr = c"incompat";
/// The mark of a volatile mount that has not ended cleanly.
const VOLATILE_MARKER: &CStr = c"volatile";

/// How long a new union waits for an old one on the same upper to let go: after `umount` the
/// old daemon still needs a moment to exit, and a remount right after it must not fail.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Takes the exclusive lock of a writable layer directory (`dir`, an `O_PATH` fd) for this
/// union, or says which process holds it.
///
/// Two unions on one upper would each cache a view the other changes underneath it (stale
/// entries, lost copy-ups), so the second one is refused, as kernel overlayfs refuses an upper
/// in use. The lock is a flock on a descriptor the stack keeps: it ends with the daemon,
/// `kill -9` included, and leaves no file behind.
pub(super) fn lock_dir(dir: BorrowedFd<'_>, path: &Path, role: &str) -> Result<OwnedFd> {
    let fd = sys::reopen(dir, libc::O_RDONLY | libc::O_DIRECTORY)
        .map_err(|e| Error::sys(format!("{role} {}", path.display()), e.desc(), ""))?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match sys::try_lock_exclusive(fd.as_fd()) {
            Ok(()) => return Ok(fd),
            Err(Errno::EWOULDBLOCK) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(Errno::EWOULDBLOCK) => {
                let st = sys::fstat(fd.as_fd()).ok();
                let holders = st
                    .map(|st| sys::flock_holders(st.st_dev, st.st_ino))
                    .unwrap_or_default();
                let who: Vec<String> = holders
                    .iter()
                    .map(|p| {
                        let comm = std::fs::read_to_string(format!("/proc/{p}/comm"))
                            .map(|c| format!(" ({})", c.trim()))
                            .unwrap_or_default();
                        format!("pid {p}{comm}")
                    })
                    .collect();
                let who = if who.is_empty() {
                    "a process this user cannot see".to_string()
                } else {
                    who.join(", ")
                };
                return Err(Error::new(format!(
                    "{role} {} is in use by another union, held by {who}: two unions on one \
                     upper would each show stale views of the other's changes; unmount that \
                     union (umount its mount point, or end that unionfs-run) or give another \
                     upper",
                    path.display()
                )));
            }
            // A filesystem without flock (some network ones) cannot tell: mount unlocked.
            Err(Errno::ENOLCK) | Err(Errno::EOPNOTSUPP) | Err(Errno::EINVAL) => return Ok(fd),
            Err(e) => {
                return Err(Error::sys(
                    format!("locking {role} {}", path.display()),
                    e.desc(),
                    "",
                ))
            }
        }
    }
}

impl Stack {
    pub(super) fn open_work(&mut self, cfg: &StackConfig) -> Result<()> {
        let upper = &self.layers[0];
        let (fd, path) = match &cfg.workdir {
            Some(w) => {
                if let Some(u) = &cfg.upper {
                    if is_within(w, u) || is_within(u, w) {
                        return Err(Error::new(format!(
                            "workdir {} and upper {} overlap: give a workdir beside the upper, \
                             on the same filesystem",
                            w.display(),
                            u.display()
                        )));
                    }
                }
                for l in &cfg.lowers {
                    if is_within(w, l) {
                        return Err(Error::new(format!(
                            "workdir {} is inside lower layer {}: lower layers are never written",
                            w.display(),
                            l.display()
                        )));
                    }
                }
                let fd = sys::open_path(w, libc::O_PATH | libc::O_DIRECTORY).map_err(|e| {
                    Error::sys(
                        format!("workdir {}", w.display()),
                        e.desc(),
                        "create it on the same filesystem as the upper",
                    )
                })?;
                (fd, w.clone())
            }
            None => {
                let name = CString::new(whiteout::DEFAULT_WORK_NAME).unwrap_or_default();
                let before = sys::fstat(upper.fd.as_fd()).ok();
                match sys::mkdirat(upper.fd.as_fd(), &name, 0o700) {
                    Ok(()) => {
                        // The upper's root is the view's root: mounting must not change its
                        // times (its ctime, which nobody can set, does move once).
                        if let Some(before) = before {
                            sys::restore_times(upper.fd.as_fd(), &before);
                        }
                    }
                    Err(Errno::EEXIST) => {}
                    Err(e) => {
                        return Err(Error::sys(
                            format!("creating work dir in upper {}", upper.path.display()),
                            e.desc(),
                            "the upper must be writable",
                        ))
                    }
                }
                let fd = sys::openat(
                    upper.fd.as_fd(),
                    &name,
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                )
                .map_err(|e| {
                    Error::sys(
                        format!("work dir {}", whiteout::DEFAULT_WORK_NAME),
                        e.desc(),
                        "remove whatever has that name in the upper",
                    )
                })?;
                self.work_in_upper = true;
                (fd, upper.path.join(whiteout::DEFAULT_WORK_NAME))
            }
        };
        let st = sys::fstat(fd.as_fd())
            .map_err(|e| Error::sys(format!("workdir {}", path.display()), e.desc(), ""))?;
        if st.st_dev != upper.dev {
            return Err(Error::new(format!(
                "workdir {} is on another filesystem than upper {}: copy-up publishes files by \
                 rename, which needs both on one filesystem; put the workdir beside the upper",
                path.display(),
                upper.path.display()
            )));
        }
        match sys::mkdirat(fd.as_fd(), c"index", 0o700) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => {
                return Err(Error::sys(
                    format!("creating {}/index", path.display()),
                    e.desc(),
                    "the work dir must be writable",
                ))
            }
        }
        self.index = crate::layer::stack::open_subdir(fd.as_fd(), c"index").ok();
        if let Ok(inc) = open_subdir(fd.as_fd(), VOLATILE_DIR) {
            if sys::fstatat(inc.as_fd(), VOLATILE_MARKER).is_ok() {
                return Err(Error::new(format!(
                    "upper {} was last mounted volatile (-o volatile or fsync=0, which never \
                     flush) and that mount did not end cleanly: {}/incompat/volatile is still \
                     there. After a crash its files may be incomplete or missing: start over with \
                     a new upper and work dir; only if the machine did not crash (the daemon \
                     was killed), remove that directory and mount again",
                    upper.path.display(),
                    path.display()
                )));
            }
        }
        self.work = Some(fd);
        Ok(())
    }

    /// Starts a volatile mount (`-o volatile`): nothing is flushed, and a marker in the work
    /// dir, `incompat/volatile` as kernel overlayfs names it, makes every later mount refuse
    /// this upper until the union ends cleanly ([`Stack::end_volatile`]): a crash meanwhile
    /// may have lost any of its writes. No-op for a read-only union.
    pub fn begin_volatile(&mut self) -> Result<()> {
        let Some(work) = &self.work else {
            return Ok(());
        };
        let fail =
            |e: Errno| Error::sys("creating the volatile marker in the work dir", e.desc(), "");
        match sys::mkdirat(work.as_fd(), VOLATILE_DIR, 0o700) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(fail(e)),
        }
        let inc = open_subdir(work.as_fd(), VOLATILE_DIR).map_err(fail)?;
        sys::mkdirat(inc.as_fd(), VOLATILE_MARKER, 0o700).map_err(fail)?;
        // The marker itself must survive a crash, or it would not catch one.
        for dir in [inc.as_fd(), work.as_fd()] {
            let d = sys::reopen(dir, libc::O_RDONLY | libc::O_DIRECTORY).map_err(fail)?;
            sys::fsync(d.as_fd(), false).map_err(fail)?;
        }
        self.volatile = true;
        Ok(())
    }

    /// Flushes a copy's data to disk before it is published (nothing when volatile).
    pub fn flush(&self, fd: BorrowedFd<'_>) -> SysResult<()> {
        if self.volatile {
            return Ok(());
        }
        self.counters
            .flushes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        sys::fsync(fd, true)
    }

    /// Ends a volatile mount cleanly: writes the upper's filesystem back, then removes the
    /// marker, so that the next mount accepts the upper. Called once the union's connection
    /// ended; idempotent.
    pub fn end_volatile(&self) {
        let (Some(work), Some(upper)) = (&self.work, self.upper()) else {
            return;
        };
        if !self.volatile {
            return;
        }
        let synced = sys::reopen(upper.fd.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)
            .and_then(|d| sys::syncfs(d.as_fd()));
        if let Err(e) = synced {
            log::warn!("volatile union: writing the upper back failed ({e}): its marker stays");
            return;
        }
        if let Ok(inc) = open_subdir(work.as_fd(), VOLATILE_DIR) {
            let _ = sys::unlinkat(inc.as_fd(), VOLATILE_MARKER, true);
            let _ = sys::unlinkat(work.as_fd(), VOLATILE_DIR, true);
        }
    }

    /// Removes staging leftovers of an earlier run (a crash mid copy-up); only our own names.
    /// The index holds staged link-count records too (`set_nlink_record`).
    pub(super) fn clean_work(&self) {
        for dir in [&self.work, &self.index].into_iter().flatten() {
            let Ok(entries) = sys::read_dir(dir.as_fd()) else {
                continue;
            };
            for e in entries {
                if e.name.starts_with(STAGE_PREFIX.as_bytes()) {
                    if let Ok(name) = CString::new(e.name) {
                        let _ = remove_tree(dir.as_fd(), &name);
                    }
                }
            }
        }
    }

    /// The work dir fd; `EROFS` for a read-only union.
    pub fn work(&self) -> SysResult<BorrowedFd<'_>> {
        self.work.as_ref().map(|w| w.as_fd()).ok_or(Errno::EROFS)
    }

    /// A fresh name that starts with `prefix`, unique among this process's and, by the pid
    /// in it, among other daemons' names.
    pub fn unique_name(&self, prefix: &str) -> CString {
        let n = self
            .next_stage
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        CString::new(format!("{prefix}{}-{n}", std::process::id())).unwrap_or_default()
    }

    /// A fresh unique staging name in the work dir.
    pub fn stage_name(&self) -> CString {
        self.unique_name(STAGE_PREFIX)
    }

    /// A fresh unique name for an entry made inside an upper directory before it takes its
    /// real name (see `ops::create`): reserved (`.wh..wh.`), so the view, listings and
    /// `unionfs-layer export` never show it, even if a crash leaves it behind.
    pub fn temp_name(&self) -> CString {
        self.unique_name(".wh..wh.unionfs-new-")
    }
}
