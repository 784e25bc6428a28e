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
