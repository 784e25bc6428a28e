//! What the launcher's processes say to each other over their socket pairs, as one typed
//! message per line (text on the wire, so a stuck run can be read with strace).
//!
//! The order, which `process` drives:
//! 1. holder → launcher `Unshared` (rootless only): it has its user namespace;
//! 2. launcher → holder `Mapped`: the id maps are written;
//! 3. holder → launcher `Ready(pid)`: the root is mounted and the init cloned;
//! 4. launcher → init `Go`: cgroup and maps are in place; the init sets up and execs (its end
//!    of the socket is close-on-exec, so EOF means the exec happened);
//!
//! and `Failed` from either child instead of the next step.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use super::exit::EXIT_LAUNCHER;
use super::{Context, Error};

/// One message between the launcher, the holder and the init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Holder → launcher: it is in its new user namespace; the launcher writes the id maps.
    Unshared,
    /// Launcher → holder: the id maps are written.
    Mapped,
    /// Holder → launcher: the root is mounted and the container init has this pid.
    Ready(i32),
    /// Launcher → init: it sits in its cgroup (and its id maps are written): set up and exec.
    Go,
    /// Init → launcher (`-t`): the master of the container's terminal rides with this message.
    Console,
    /// Holder or init → launcher: setup failed; the launcher exits with `code`.
    Failed {
        /// The exit code the launcher gives.
        code: i32,
        /// What went wrong, for the user.
        msg: String,
    },
}

impl Msg {
    fn encode(&self) -> String {
        let line = match self {
            Msg::Unshared => "unshared".to_string(),
            Msg::Mapped => "mapped".to_string(),
            Msg::Ready(pid) => format!("ready {pid}"),
            Msg::Go => "go".to_string(),
            Msg::Console => "console".to_string(),
            Msg::Failed { code, msg } => format!("error {code} {msg}"),
        };
        let mut line = line.replace('\n', " ");
        line.push('\n');
        line
    }

    /// Reads a line back; a line that is no message is a failure saying that line.
    fn decode(line: &str) -> Msg {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let failed = || Msg::Failed {
            code: EXIT_LAUNCHER,
            msg: line.to_string(),
        };
        match word {
            "unshared" => Msg::Unshared,
            "mapped" => Msg::Mapped,
            "go" => Msg::Go,
            "console" => Msg::Console,
            "ready" => rest.parse().map(Msg::Ready).unwrap_or_else(|_| failed()),
            "error" => match rest.split_once(' ') {
                Some((c, msg)) => match c.parse() {
                    Ok(code) => Msg::Failed {
                        code,
                        msg: msg.to_string(),
                    },
                    Err(_) => failed(),
                },
                None => failed(),
            },
            _ => failed(),
        }
    }

    /// The failure this message stands for when another one was expected.
    pub fn unexpected(self, waiting_for: &str) -> Error {
        match self {
            Msg::Failed { msg, .. } => Error::msg(msg),
            other => Error::msg(format!(
                "launcher processes out of step: got {other:?} while waiting for {waiting_for}"
            )),
        }
    }
}

/// Sends one message.
pub fn send(sock: &mut UnixStream, msg: &Msg) -> Result<(), Error> {
    sock.write_all(msg.encode().as_bytes())
        .ctx(|| "talking to a launcher process".to_string())
}

/// Sends `msg` with descriptor `fd` attached to its first byte.
pub fn send_with_fd(sock: &mut UnixStream, msg: &Msg, fd: BorrowedFd<'_>) -> Result<(), Error> {
    let line = msg.encode();
    let (first, rest) = line.as_bytes().split_at(1);
    crate::sys::send_fd(sock.as_fd(), first[0], fd)
        .map_err(|e| Error::msg(format!("talking to a launcher process: {}", e.desc())))?;
    sock.write_all(rest)
        .ctx(|| "talking to a launcher process".to_string())
}

/// Receives one message and the descriptor that came with it; `None` on EOF.
pub fn recv_with_fd(sock: &mut UnixStream) -> Option<(Msg, Option<OwnedFd>)> {
    let (first, fd) = crate::sys::recv_fd(sock.as_fd()).ok()??;
    if first == b'\n' {
        return Some((Msg::decode(""), fd));
    }
    read_line(sock, vec![first]).map(|m| (m, fd))
}

/// Receives one message; `None` on EOF (the peer exited or exec'd).
pub fn recv(sock: &mut UnixStream) -> Option<Msg> {
    read_line(sock, Vec::new())
}

/// Reads the rest of a line that starts with `out`.
fn read_line(sock: &mut UnixStream, mut out: Vec<u8>) -> Option<Msg> {
    let mut b = [0u8; 1];
    loop {
        match sock.read(&mut b) {
            Ok(0) if out.is_empty() => return None,
            Ok(0) => break,
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => out.push(b[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(Msg::decode(&String::from_utf8_lossy(&out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_reads_back_as_itself() {
        for m in [
            Msg::Unshared,
            Msg::Mapped,
            Msg::Ready(4242),
            Msg::Go,
            Msg::Console,
            Msg::Failed {
                code: 127,
                msg: "sh: not found\nin the root".into(),
            },
        ] {
            let line = m.encode();
            let back = Msg::decode(line.trim_end_matches('\n'));
            let want = match &m {
                Msg::Failed { code, msg } => Msg::Failed {
                    code: *code,
                    msg: msg.replace('\n', " "),
                },
                m => m.clone(),
            };
            assert_eq!(back, want, "{line:?}");
        }
    }

    #[test]
    fn a_line_that_is_no_message_is_a_failure_naming_it() {
        assert_eq!(
            Msg::decode("ready soon"),
            Msg::Failed {
                code: EXIT_LAUNCHER,
                msg: "ready soon".into()
            }
        );
    }

    #[test]
    fn messages_cross_a_socket_pair() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        send(&mut a, &Msg::Ready(7)).unwrap();
        send(&mut a, &Msg::Go).unwrap();
        drop(a);
        assert_eq!(recv(&mut b), Some(Msg::Ready(7)));
        assert_eq!(recv(&mut b), Some(Msg::Go));
        assert_eq!(recv(&mut b), None);
    }

    #[test]
    fn a_descriptor_rides_with_a_message() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let (r, w) = crate::sys::pipe().unwrap();
        send_with_fd(&mut a, &Msg::Console, w.as_fd()).unwrap();
        drop(w);
        send(&mut a, &Msg::Go).unwrap();
        let (m, fd) = recv_with_fd(&mut b).unwrap();
        assert_eq!(m, Msg::Console);
        // The received descriptor is the pipe's write end: what it writes, `r` reads.
        crate::sys::write(fd.unwrap().as_fd(), b"x").unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(nix::unistd::read(&r, &mut buf).unwrap(), 1);
        assert_eq!(
            recv_with_fd(&mut b).map(|(m, fd)| (m, fd.is_none())),
            Some((Msg::Go, true))
        );
    }
}
