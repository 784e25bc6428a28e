//! `-t`: the container's own terminal and the launcher's relay to the host terminal.
//!
//! The container init opens a pseudo-terminal in the container's devpts instance (so the
//! command sees `/dev/pts/0`, and `/dev/console` is bound to it), makes it the controlling
//! terminal of its new session and its standard descriptors, and passes the master to the
//! launcher, as crun's console socket does. The launcher puts the host terminal in raw mode
//! (keys like Ctrl-C and Ctrl-Z then reach the container's line discipline, which signals the
//! container's foreground job), relays both ways, and passes the window size on at start and
//! on every SIGWINCH. [`RawTerminal`] restores the host terminal when it is dropped, which
//! every way out of the launcher does (command exit, a signal that ends the command, a failure
//! after the terminal was set up); only `kill -9` of the launcher leaves it raw (`reset` fixes
//! that).

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::termios::{self, SetArg, Termios};

use super::{Context, Error};
use crate::sys;

/// Runs `f` on the host terminal the launcher runs on (stdin if it is one, else stdout).
fn with_host_terminal<R>(f: impl FnOnce(BorrowedFd<'_>) -> R) -> Option<R> {
    let (stdin, stdout) = (std::io::stdin(), std::io::stdout());
    let fd = [stdin.as_fd(), stdout.as_fd()]
        .into_iter()
        .find(|fd| nix::unistd::isatty(fd).unwrap_or(false))?;
    Some(f(fd))
}

/// The host terminal in raw mode; its old modes come back on drop.
#[derive(Debug)]
pub struct RawTerminal {
    saved: Termios,
}

impl RawTerminal {
    /// Puts the host terminal (if there is one) in raw mode.
    pub fn enter() -> Result<Option<RawTerminal>, Error> {
        with_host_terminal(|fd| {
            let saved = termios::tcgetattr(fd).ctx(|| "reading the terminal's modes".into())?;
            let mut raw = saved.clone();
            termios::cfmakeraw(&mut raw);
            termios::tcsetattr(fd, SetArg::TCSADRAIN, &raw)
                .ctx(|| "putting the terminal in raw mode".into())?;
            Ok(RawTerminal { saved })
        })
        .transpose()
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        with_host_terminal(|fd| termios::tcsetattr(fd, SetArg::TCSADRAIN, &self.saved));
    }
}

/// Gives the container's terminal (`master`) the host terminal's window size (80x24 without
/// one).
pub fn copy_window_size(master: BorrowedFd<'_>) {
    let ws = with_host_terminal(|fd| sys::window_size(fd).ok())
        .flatten()
        .filter(|ws| ws.ws_row > 0 && ws.ws_col > 0)
        .unwrap_or(libc::winsize {
            ws_row: 24,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        });
    let _ = sys::set_window_size(master, &ws);
}

/// In the container init, after `setsid` and with the container's /dev mounted: opens a
/// terminal in the container's devpts, makes it the controlling terminal and stdin, stdout and
/// stderr, binds it on /dev/console, and returns the master for the launcher.
pub fn container_terminal(uid: u32, gid: u32) -> Result<OwnedFd, Error> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .ctx(|| "opening /dev/ptmx in the container".into())?;
    nix::pty::grantpt(&master).ctx(|| "grantpt".into())?;
    nix::pty::unlockpt(&master).ctx(|| "unlockpt".into())?;
    let name = nix::pty::ptsname_r(&master).ctx(|| "ptsname".into())?;
    let slave = sys::open_path(Path::new(&name), libc::O_RDWR | libc::O_NOCTTY)
        .map_err(|e| Error::msg(format!("opening {name}: {}", e.desc())))?;
    // The command may run as another user and open /dev/tty or its pts again.
    sys::fchown_fd(slave.as_fd(), Some(uid), Some(gid))
        .map_err(|e| Error::msg(format!("chown {name}: {}", e.desc())))?;
    let console = Path::new("/dev/console");
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(console)
        .ctx(|| "creating /dev/console".into())?;
    nix::mount::mount(
        Some(Path::new(&name)),
        console,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .ctx(|| format!("binding {name} on /dev/console"))?;
    sys::set_controlling_terminal(slave.as_fd()).map_err(|e| {
        Error::msg(format!(
            "making {name} the controlling terminal: {}",
            e.desc()
        ))
    })?;
    sys::dup_to_stdio(slave.as_fd())
        .map_err(|e| Error::msg(format!("{name} as stdin/stdout/stderr: {}", e.desc())))?;
    let fd: OwnedFd = master.into();
    Ok(fd)
}

/// Copies what is readable on `from` to `to`; `false` once `from` is at its end (EOF, or EIO
/// from a master whose last slave closed).
pub fn pump(from: BorrowedFd<'_>, to: &mut impl Write) -> bool {
    let mut buf = [0u8; 8192];
    match nix::unistd::read(from, &mut buf) {
        Ok(0) => false,
        Ok(n) => {
            let _ = to.write_all(&buf[..n]);
            let _ = to.flush();
            true
        }
        Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => true,
        Err(_) => false,
    }
}

/// A writer on a borrowed descriptor (the master, for keys from the host).
pub struct FdWriter<'a>(pub BorrowedFd<'a>);

impl Write for FdWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        sys::write(self.0, buf).map_err(std::io::Error::from)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The launcher's side of `-t` while the command runs: signals through a signalfd, the host's
/// stdin to the master (with `-i`), the master to the host's stdout.
#[derive(Debug)]
pub struct Relay {
    signals: Option<nix::sys::signalfd::SignalFd>,
    stdin_open: bool,
    master_open: bool,
}

impl Relay {
    /// A relay for the launcher's blocked signals (the forwarded ones, SIGCHLD, SIGWINCH).
    pub fn new(interactive: bool) -> Relay {
        use nix::sys::signalfd::{SfdFlags, SignalFd};
        let mut set = super::signals::wait_set();
        set.add(nix::sys::signal::Signal::SIGWINCH);
        Relay {
            signals: SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
                .ok(),
            stdin_open: interactive,
            master_open: true,
        }
    }

    /// Moves what is readable until at least one signal arrives; returns the signals.
    pub fn wait(&mut self, master: Option<&OwnedFd>) -> Vec<nix::sys::signal::Signal> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let Some(sfd) = &self.signals else {
            return Vec::new();
        };
        loop {
            let stdin = std::io::stdin();
            let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
            let m = master.filter(|_| self.master_open);
            if let Some(m) = m {
                fds.push(PollFd::new(m.as_fd(), PollFlags::POLLIN));
            }
            let stdin_at = fds.len();
            if self.stdin_open && m.is_some() {
                fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            }
            if poll(&mut fds, PollTimeout::NONE).is_err() {
                continue;
            }
            let ready = |i: usize| {
                fds.get(i)
                    .and_then(|f| f.revents())
                    .is_some_and(|r| !r.is_empty())
            };
            let (sig_ready, master_ready, stdin_ready) = (ready(0), ready(1), ready(stdin_at));
            if let (Some(m), true) = (m, master_ready) {
                self.master_open = pump(m.as_fd(), &mut std::io::stdout());
            }
            if let (Some(m), true) = (m, stdin_ready && stdin_at > 1) {
                self.stdin_open = pump(stdin.as_fd(), &mut FdWriter(m.as_fd()));
            }
            if sig_ready {
                let mut out = Vec::new();
                while let Ok(Some(info)) = sfd.read_signal() {
                    if let Ok(s) = nix::sys::signal::Signal::try_from(info.ssi_signo as i32) {
                        out.push(s);
                    }
                }
                if !out.is_empty() {
                    return out;
                }
            }
        }
    }

    /// After the command ended: copies what the container's terminal still holds.
    pub fn drain(&mut self, master: BorrowedFd<'_>) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        while self.master_open {
            let mut fds = [PollFd::new(master, PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(500u16)) {
                Ok(1) => self.master_open = pump(master, &mut std::io::stdout()),
                _ => break,
            }
        }
    }
}
