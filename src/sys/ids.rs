//! Who this process creates files as: its effective ids and its umask.
//!
//! The mount options name the daemon's effective ids (`user_id=`, `group_id=`); copy-up asks
//! for them to tell a daemon that may not give files away from a real failure; the umask is set
//! to 0 so that the modes the kernel sends, already masked by the caller's umask, are kept.
//! None of these calls can fail.

/// The effective uid of this process.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// The effective gid of this process.
pub fn getegid() -> u32 {
    // SAFETY: getegid cannot fail and touches no memory.
    unsafe { libc::getegid() }
}

/// Sets the process umask; the daemon uses 0 so that the modes the kernel sends are kept.
pub fn set_umask(mask: u32) -> u32 {
    // SAFETY: umask cannot fail and touches no memory.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}
