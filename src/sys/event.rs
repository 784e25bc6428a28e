//! Waiting on many file descriptors at once: an epoll set whose entries fire once until re-armed
//! (so one ready FUSE device wakes one serving thread), and an eventfd to wake a thread that
//! waits elsewhere (an io_uring worker). Safe wrappers over nix's.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::SysResult;

/// An epoll set of readable-once entries, each carrying a `u64` key.
#[derive(Debug)]
pub struct OneShotSet(Epoll);

fn oneshot(key: u64) -> EpollEvent {
    EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLONESHOT, key)
}

impl OneShotSet {
    /// An empty set.
    pub fn new() -> SysResult<OneShotSet> {
        Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map(OneShotSet)
    }

    /// Watches `fd` for input under `key`; it fires once, then waits for [`OneShotSet::rearm`].
    pub fn add(&self, fd: BorrowedFd<'_>, key: u64) -> SysResult<()> {
        self.0.add(fd, oneshot(key))
    }

    /// Lets `fd` fire again (after the thread it woke took what it wanted).
    pub fn rearm(&self, fd: BorrowedFd<'_>, key: u64) -> SysResult<()> {
        let mut ev = oneshot(key);
        self.0.modify(fd, &mut ev)
    }

    /// Stops watching `fd`.
    pub fn remove(&self, fd: BorrowedFd<'_>) -> SysResult<()> {
        self.0.delete(fd)
    }

    /// Waits for one entry to fire, for at most `timeout` (forever with `None`); its key, or
    /// `None` when the time ran out.
    ///
    /// The wait is a poll(2) on the set's own fd, and the entry is then taken without
    /// blocking: a thread asleep in epoll_wait is woken without the waker's "I am about to
    /// sleep" hint, so the scheduler moves it to another (idle) CPU, while the poll wakeup keeps
    /// the hint and runs it where the waker ran. For FUSE that is the caller's CPU, and a
    /// `/dev/fuse` round trip costs half as much (cold `ls -lR`: 0.75 -> 0.31 s, README).
    pub fn wait_one(&self, timeout: Option<Duration>) -> SysResult<Option<u64>> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let deadline = timeout.map(|d| std::time::Instant::now() + d);
        let mut events = [EpollEvent::empty()];
        loop {
            let left = match deadline {
                None => PollTimeout::NONE,
                Some(end) => {
                    let ms = end
                        .saturating_duration_since(std::time::Instant::now())
                        .as_millis();
                    PollTimeout::try_from(ms.min(i32::MAX as u128) as i32)
                        .unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = [PollFd::new(self.0 .0.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, left) {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(super::Errno::EINTR) => continue,
                Err(e) => return Err(e),
            }
            match self.0.wait(&mut events, EpollTimeout::ZERO) {
                Ok(0) => continue, // another thread took it first
                Ok(_) => return Ok(Some(events[0].data())),
                Err(super::Errno::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Makes reads and writes of `fd` return EAGAIN instead of blocking.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> SysResult<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}

/// A counter another thread bumps to wake whoever reads it.
#[derive(Debug)]
pub struct Wakeup(EventFd);

impl Wakeup {
    /// A new, unsignalled one.
    pub fn new() -> SysResult<Wakeup> {
        // Blocking: io_uring honours O_NONBLOCK and would complete a read of an unsignalled
        // non-blocking counter at once with EAGAIN instead of waiting for it.
        EventFd::from_flags(EfdFlags::EFD_CLOEXEC).map(Wakeup)
    }

    /// Signals it.
    pub fn wake(&self) {
        let _ = self.0.write(1);
    }

    /// Its fd, for a reader that waits on it (an io_uring read).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// An owned fd duplicate (F_DUPFD_CLOEXEC) of `fd`.
pub fn dup(fd: BorrowedFd<'_>) -> SysResult<OwnedFd> {
    fd.try_clone_to_owned().map_err(super::errno_of)
}

/// Waits until `fd` is readable, at most `limit`; whether it is.
pub fn wait_readable(fd: BorrowedFd<'_>, limit: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let ms = limit.as_millis().min(i32::MAX as u128) as i32;
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
    matches!(poll(&mut fds, timeout), Ok(n) if n > 0)
}

/// The pid of the process at the other end of the unix socket `fd` (SO_PEERCRED).
pub fn peer_pid(fd: BorrowedFd<'_>) -> SysResult<i32> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    getsockopt(&fd, PeerCredentials).map(|c| c.pid())
}

/// An exclusive `flock` of `file`, held until the returned value drops.
pub fn lock_exclusive(file: std::fs::File) -> SysResult<nix::fcntl::Flock<std::fs::File>> {
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e)
}
