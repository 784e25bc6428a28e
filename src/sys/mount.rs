//! mount(2) and the lazy unmount.
//!
//! The union is mounted with the daemon's own /dev/fuse descriptor (`fd=`) rather than through
//! fusermount, so the mount call is ours. Every unmount is lazy (`MNT_DETACH`): the union to
//! unmount may be one whose daemon is gone, or one still held busy by a reader, and a strict
//! unmount would then fail or block the caller instead of clearing the mount point.

use std::ffi::CStr;

use super::{check, cstr, SysResult};

/// `umount2(target, MNT_DETACH)`: a lazy unmount that works even when the daemon is gone.
pub fn umount_lazy(target: &std::path::Path) -> SysResult<()> {
    let c = cstr(target.as_os_str())?;
    // SAFETY: `c` is a valid C string.
    check(unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) }).map(drop)
}

/// mount(2) with a data string.
pub fn mount(
    source: &CStr,
    target: &std::path::Path,
    fstype: &CStr,
    flags: libc::c_ulong,
    data: &CStr,
) -> SysResult<()> {
    let t = cstr(target.as_os_str())?;
    // SAFETY: all strings are valid C strings for the duration of the call.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            t.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr() as *const libc::c_void,
        )
    })
    .map(drop)
}
