//! Getting descriptors and asking what they refer to: openat2/openat, re-opening an `O_PATH`
//! fd, pipes, and the stat family.
//!
//! Every layer access starts here. Callers rely on two things: every descriptor is opened
//! close-on-exec (a forked helper or an exec'd container must not inherit layer fds), and a path
//! inside a layer is only ever opened with openat2's `RESOLVE_*` restrictions or one component
//! at a time, so it cannot leave the layer.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use super::{check, cstr, owned, proc_fd_path, retry, Errno, SysResult};

/// `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`: a path that stays in the layer.
pub const RESOLVE_IN_LAYER: u64 = 0x08 | 0x04 | 0x02;

/// `struct open_how` of openat2(2); defined here because libc does not carry it on every target.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// openat2(2) of `path` below `dir` with `resolve` restrictions; `EAGAIN` (rename race) is retried.
pub fn openat2(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> SysResult<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: mode as u64,
        resolve,
    };
    let mut tries = 0;
    loop {
        // SAFETY: `how` and `path` outlive the call; the size argument matches the struct.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if r >= 0 {
            return Ok(owned(r as libc::c_int));
        }
        match Errno::last() {
            Errno::EINTR => continue,
            Errno::EAGAIN if tries < 16 => tries += 1,
            e => return Err(e),
        }
    }
}

/// openat(2) of one name in `dir` (never a path: callers pass single components).
pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> SysResult<OwnedFd> {
    retry(|| {
        // SAFETY: `name` is a valid C string for the duration of the call.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                flags | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        };
        check(fd).map(owned)
    })
}

/// Opens a plain host path (used only for the layer roots and the mount point given by the user).
pub fn open_path(path: &std::path::Path, flags: i32) -> SysResult<OwnedFd> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: `c` is a valid C string for the duration of the call.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    check(fd).map(owned)
}

/// Re-opens the object an `O_PATH` fd refers to with real access flags (never following links).
pub fn reopen(fd: BorrowedFd<'_>, flags: i32) -> SysResult<OwnedFd> {
    let p = proc_fd_path(fd);
    retry(|| {
        // SAFETY: `p` is a valid C string.
        let r = unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC) };
        check(r).map(owned)
    })
}

/// The file status flags (access mode, O_APPEND, ...) of an open fd.
pub fn status_flags(fd: BorrowedFd<'_>) -> SysResult<i32> {
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> SysResult<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok((owned(fds[0]), owned(fds[1])))
}

/// fstat(2).
pub fn fstat(fd: BorrowedFd<'_>) -> SysResult<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: the kernel fills `st` completely when the call succeeds.
    check(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: initialised by the successful call above.
    Ok(unsafe { st.assume_init() })
}

/// fstatat(2) of one name in `dir`, never following a symlink.
pub fn fstatat(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `name` is valid; the kernel fills `st` completely on success.
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: initialised by the successful call above.
    Ok(unsafe { st.assume_init() })
}

/// An all-zero `stat` (for negative entries).
pub fn zeroed_stat() -> libc::stat {
    // SAFETY: libc::stat is plain old data; all-zero bytes are a valid value of it.
    unsafe { std::mem::zeroed() }
}

/// fstatvfs(2).
pub fn fstatvfs(fd: BorrowedFd<'_>) -> SysResult<libc::statvfs> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: the kernel fills `st` completely on success.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: initialised by the successful call above.
    Ok(unsafe { st.assume_init() })
}

/// The `f_type` of the filesystem an fd is on.
pub fn fstatfs_type(fd: BorrowedFd<'_>) -> SysResult<i64> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: the kernel fills `st` completely on success.
    check(unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: initialised by the successful call above.
    Ok(unsafe { st.assume_init() }.f_type)
}
