//! Network interface flags, for the one thing the launcher does to a fresh network namespace:
//! bring its loopback up.
//!
//! A new network namespace starts with `lo` down, and many programs assume `127.0.0.1` works;
//! no safe wrapper covers the SIOC[GS]IFFLAGS ioctls.

use std::ffi::CStr;
use std::os::fd::AsRawFd;

use super::{Errno, SysResult};

/// Bring a network interface (e.g. `lo`) up in the current network namespace.
pub fn interface_up(name: &CStr) -> SysResult<()> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let bytes = name.to_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ {
        return Err(Errno::EINVAL);
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name from and writes the flags into `req`, which we own
    // and which lives across the call; the socket fd is valid.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    Errno::result(r)?;
    // SAFETY: after SIOCGIFFLAGS the flags member of the union is the initialised one.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    Errno::result(r).map(|_| ())
}

/// Sends one byte with descriptor `fd` attached (SCM_RIGHTS) over a unix socket.
pub fn send_fd(
    sock: std::os::fd::BorrowedFd<'_>,
    byte: u8,
    fd: std::os::fd::BorrowedFd<'_>,
) -> SysResult<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd.as_raw_fd()];
    let iov = [std::io::IoSlice::new(std::slice::from_ref(&byte))];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).map(drop)
}

/// Receives one byte and the descriptor sent with it, if any (`Ok(None)` at EOF).
pub fn recv_fd(
    sock: std::os::fd::BorrowedFd<'_>,
) -> SysResult<Option<(u8, Option<std::os::fd::OwnedFd>)>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8; 1];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let (n, fds) = loop {
        let mut iov = [std::io::IoSliceMut::new(&mut byte)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => {
                let mut fds = Vec::new();
                for c in m.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(r) = c {
                        fds.extend(r);
                    }
                }
                break (m.bytes, fds);
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    };
    // Every descriptor received is ours now: keep the first, close any others.
    let mut owned: Vec<std::os::fd::OwnedFd> = fds.into_iter().map(super::owned).collect();
    if n == 0 {
        return Ok(None);
    }
    let first = if owned.is_empty() {
        None
    } else {
        Some(owned.remove(0))
    };
    Ok(Some((byte[0], first)))
}
