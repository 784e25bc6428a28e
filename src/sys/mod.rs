//! Every `unsafe` system call wrapper of the filesystem lives here, each with a safe signature.
//!
//! The rest of the crate works with `OwnedFd`/`BorrowedFd`, `CStr` names and `Errno` results. Each
//! unsafe block below says why it is sound. Wrappers retry `EINTR` where the call is restartable.

pub mod launch;
pub mod uring;

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

pub use nix::errno::Errno;

/// Result of a system call wrapper.
pub type SysResult<T> = Result<T, Errno>;

/// `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`: a path that stays in the layer.
pub const RESOLVE_IN_LAYER: u64 = 0x08 | 0x04 | 0x02;

/// `struct open_how` of openat2(2); defined here because libc does not carry it on every target.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn check(ret: libc::c_int) -> SysResult<libc::c_int> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

fn check_size(ret: libc::ssize_t) -> SysResult<usize> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret as usize)
    }
}

fn retry<T>(mut f: impl FnMut() -> SysResult<T>) -> SysResult<T> {
    loop {
        match f() {
            Err(Errno::EINTR) => continue,
            r => return r,
        }
    }
}

/// A NUL-terminated copy of `name`; names with an inner NUL cannot exist on Linux.
pub fn cstr(name: &OsStr) -> SysResult<CString> {
    CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)
}

fn owned(fd: libc::c_int) -> OwnedFd {
    // SAFETY: callers pass a descriptor just returned by the kernel, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
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

fn ts(sec: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec as _,
    }
}

/// atime and mtime of a stat, as utimensat wants them.
pub fn times_of(st: &libc::stat) -> [libc::timespec; 2] {
    [
        ts(st.st_atime, st.st_atime_nsec),
        ts(st.st_mtime, st.st_mtime_nsec),
    ]
}

/// Puts a directory's atime/mtime back after we changed its entries for internal reasons.
pub fn restore_times(dir: BorrowedFd<'_>, before: &libc::stat) {
    let _ = utimens_fd(dir, &times_of(before));
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

/// mkdirat(2).
pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> SysResult<()> {
    // SAFETY: `name` is a valid C string.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) }).map(drop)
}

/// mknodat(2).
pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> SysResult<()> {
    // SAFETY: `name` is a valid C string.
    check(unsafe {
        libc::mknodat(
            dir.as_raw_fd(),
            name.as_ptr(),
            mode as libc::mode_t,
            rdev as libc::dev_t,
        )
    })
    .map(drop)
}

/// symlinkat(2): creates `name` in `dir` pointing at `target`.
pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> SysResult<()> {
    // SAFETY: both strings are valid C strings.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// linkat(2) without following symlinks.
pub fn linkat(
    olddir: BorrowedFd<'_>,
    oldname: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
) -> SysResult<()> {
    // SAFETY: both strings are valid C strings.
    check(unsafe {
        libc::linkat(
            olddir.as_raw_fd(),
            oldname.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            0,
        )
    })
    .map(drop)
}

/// unlinkat(2); `dir_flag` removes a directory.
pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, dir_flag: bool) -> SysResult<()> {
    let flags = if dir_flag { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: `name` is a valid C string.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

/// renameat2(2) with `RENAME_*` flags.
pub fn renameat2(
    olddir: BorrowedFd<'_>,
    oldname: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
    flags: u32,
) -> SysResult<()> {
    // SAFETY: both strings are valid C strings.
    check(unsafe {
        libc::renameat2(
            olddir.as_raw_fd(),
            oldname.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// readlinkat(2) of one name, or of the symlink an `O_PATH` fd refers to (empty name).
pub fn readlinkat(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: the buffer is writable for its whole length, which is what we pass.
    let n = check_size(unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// fchownat(2) on the object an fd (`O_PATH` included) refers to.
pub fn fchown_fd(fd: BorrowedFd<'_>, uid: Option<u32>, gid: Option<u32>) -> SysResult<()> {
    let u = uid.unwrap_or(u32::MAX);
    let g = gid.unwrap_or(u32::MAX);
    // SAFETY: the empty string is a valid C string; AT_EMPTY_PATH makes the call act on `fd`.
    check(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            u,
            g,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// The /proc/self/fd path of `fd`, for calls that have no fd form for `O_PATH` descriptors.
fn proc_fd_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

const SYS_FCHMODAT2: libc::c_long = 452;

/// chmod of the object an fd refers to; `EOPNOTSUPP` for a symlink (their mode is fixed).
pub fn fchmod_fd(fd: BorrowedFd<'_>, mode: u32) -> SysResult<()> {
    // SAFETY: the empty string is a valid C string; AT_EMPTY_PATH makes the call act on `fd`.
    let r = unsafe {
        libc::syscall(
            SYS_FCHMODAT2,
            fd.as_raw_fd(),
            c"".as_ptr(),
            mode as libc::mode_t,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        return Ok(());
    }
    match Errno::last() {
        Errno::ENOSYS | Errno::EINVAL => {
            // Kernels before 6.6 lack fchmodat2: go through /proc (the fd is never a symlink
            // here, callers check the type first).
            let p = proc_fd_path(fd);
            // SAFETY: `p` is a valid C string.
            check(unsafe { libc::chmod(p.as_ptr(), mode as libc::mode_t) }).map(drop)
        }
        e => Err(e),
    }
}

/// Sets atime/mtime (`UTIME_OMIT`/`UTIME_NOW` allowed) of `name` in `dir` without following it.
pub fn utimensat(dir: BorrowedFd<'_>, name: &CStr, times: &[libc::timespec; 2]) -> SysResult<()> {
    // SAFETY: `name` and `times` are valid for the duration of the call.
    check(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// Sets atime/mtime of what an fd (`O_PATH` included) refers to; never used on symlinks.
pub fn utimens_fd(fd: BorrowedFd<'_>, times: &[libc::timespec; 2]) -> SysResult<()> {
    let p = proc_fd_path(fd);
    // SAFETY: `p` and `times` are valid for the duration of the call.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), 0) }).map(drop)
}

// The *xattrat family (Linux 6.13) names the object as (directory fd, name) with
// AT_SYMLINK_NOFOLLOW, so it reaches symlinks and device nodes without opening them. (It does
// not accept O_PATH fds with an empty name, hence the pair.)
const SYS_SETXATTRAT: libc::c_long = 463;
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;
const SYS_REMOVEXATTRAT: libc::c_long = 466;

#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// An object named relative to a directory fd (`.` for the directory itself).
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    /// The directory.
    pub dir: BorrowedFd<'a>,
    /// One name in it, never followed if it is a symlink.
    pub name: &'a CStr,
}

impl<'a> At<'a> {
    /// `name` in `dir`.
    pub fn new(dir: BorrowedFd<'a>, name: &'a CStr) -> Self {
        At { dir, name }
    }

    /// The directory `dir` itself.
    pub fn dir(dir: BorrowedFd<'a>) -> Self {
        At { dir, name: c"." }
    }

    /// Path form for kernels without the *xattrat calls: /proc/self/fd/DIR/NAME.
    fn proc_path(&self) -> CString {
        let mut v = format!("/proc/self/fd/{}/", self.dir.as_raw_fd()).into_bytes();
        v.extend_from_slice(self.name.to_bytes());
        CString::new(v).unwrap_or_default()
    }
}

/// getxattr without following symlinks; returns the value length (empty `buf` asks the size).
pub fn getxattr(at: At<'_>, xname: &CStr, buf: &mut [u8]) -> SysResult<usize> {
    let mut args = XattrArgs {
        value: buf.as_mut_ptr() as u64,
        size: buf.len() as u32,
        flags: 0,
    };
    // SAFETY: `args.value` points at `buf`, writable for `args.size` bytes; strings are valid.
    let r = unsafe {
        libc::syscall(
            SYS_GETXATTRAT,
            at.dir.as_raw_fd(),
            at.name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            xname.as_ptr(),
            &mut args as *mut XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    };
    if r >= 0 {
        return Ok(r as usize);
    }
    match Errno::last() {
        Errno::ENOSYS => {
            let p = at.proc_path();
            // SAFETY: `buf` is writable for its length; strings are valid.
            check_size(unsafe {
                libc::lgetxattr(
                    p.as_ptr(),
                    xname.as_ptr(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                )
            })
        }
        e => Err(e),
    }
}

/// getxattr of the file an fd (`O_PATH` included) refers to; never used on symlinks.
pub fn fd_getxattr(fd: BorrowedFd<'_>, xname: &CStr, buf: &mut [u8]) -> SysResult<usize> {
    let p = proc_fd_path(fd);
    // SAFETY: `buf` is writable for its length; strings are valid. The /proc link resolves to
    // the file itself, whatever its open mode.
    check_size(unsafe {
        libc::getxattr(
            p.as_ptr(),
            xname.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    })
}

/// fgetxattr(2): for an fd opened for reading or writing (not `O_PATH`: EBADF).
pub fn fgetxattr(fd: BorrowedFd<'_>, xname: &CStr, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: `buf` is writable for its length; `xname` is a valid C string.
    check_size(unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            xname.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    })
}

/// removexattr of the file an fd (`O_PATH` included) refers to; never used on symlinks.
pub fn fd_removexattr(fd: BorrowedFd<'_>, xname: &CStr) -> SysResult<()> {
    let p = proc_fd_path(fd);
    // SAFETY: strings are valid C strings.
    check(unsafe { libc::removexattr(p.as_ptr(), xname.as_ptr()) }).map(drop)
}

/// setxattr without following symlinks.
pub fn setxattr(at: At<'_>, xname: &CStr, value: &[u8], flags: i32) -> SysResult<()> {
    let args = XattrArgs {
        value: value.as_ptr() as u64,
        size: value.len() as u32,
        flags: flags as u32,
    };
    // SAFETY: `args.value` points at `value`, readable for `args.size` bytes; strings are valid.
    let r = unsafe {
        libc::syscall(
            SYS_SETXATTRAT,
            at.dir.as_raw_fd(),
            at.name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            xname.as_ptr(),
            &args as *const XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    };
    if r >= 0 {
        return Ok(());
    }
    match Errno::last() {
        Errno::ENOSYS => {
            let p = at.proc_path();
            // SAFETY: `value` is readable for its length; strings are valid.
            check(unsafe {
                libc::lsetxattr(
                    p.as_ptr(),
                    xname.as_ptr(),
                    value.as_ptr() as *const libc::c_void,
                    value.len(),
                    flags,
                )
            })
            .map(drop)
        }
        e => Err(e),
    }
}

/// listxattr without following symlinks (NUL-separated names).
pub fn listxattr(at: At<'_>, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: `buf` is writable for its length; strings are valid.
    let r = unsafe {
        libc::syscall(
            SYS_LISTXATTRAT,
            at.dir.as_raw_fd(),
            at.name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
        )
    };
    if r >= 0 {
        return Ok(r as usize);
    }
    match Errno::last() {
        Errno::ENOSYS => {
            let p = at.proc_path();
            // SAFETY: `buf` is writable for its length.
            check_size(unsafe {
                libc::llistxattr(p.as_ptr(), buf.as_mut_ptr() as *mut libc::c_char, buf.len())
            })
        }
        e => Err(e),
    }
}

/// removexattr without following symlinks.
pub fn removexattr(at: At<'_>, xname: &CStr) -> SysResult<()> {
    // SAFETY: strings are valid C strings.
    let r = unsafe {
        libc::syscall(
            SYS_REMOVEXATTRAT,
            at.dir.as_raw_fd(),
            at.name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            xname.as_ptr(),
        )
    };
    if r >= 0 {
        return Ok(());
    }
    match Errno::last() {
        Errno::ENOSYS => {
            let p = at.proc_path();
            // SAFETY: strings are valid C strings.
            check(unsafe { libc::lremovexattr(p.as_ptr(), xname.as_ptr()) }).map(drop)
        }
        e => Err(e),
    }
}

/// pread(2) into `buf`; returns the number of bytes read.
pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], off: u64) -> SysResult<usize> {
    retry(|| {
        // SAFETY: `buf` is writable for its length.
        check_size(unsafe {
            libc::pread(
                fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                off as libc::off_t,
            )
        })
    })
}

/// pwrite(2) of `buf`; returns the number of bytes written.
pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], off: u64) -> SysResult<usize> {
    retry(|| {
        // SAFETY: `buf` is readable for its length.
        check_size(unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
                buf.as_ptr() as *const libc::c_void,
                buf.len(),
                off as libc::off_t,
            )
        })
    })
}

/// copy_file_range(2) with explicit offsets (updated in place).
pub fn copy_file_range(
    src: BorrowedFd<'_>,
    off_in: &mut i64,
    dst: BorrowedFd<'_>,
    off_out: &mut i64,
    len: usize,
) -> SysResult<usize> {
    retry(|| {
        // SAFETY: the offsets are valid, exclusively borrowed integers.
        check_size(unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                off_in as *mut i64,
                dst.as_raw_fd(),
                off_out as *mut i64,
                len,
                0,
            )
        })
    })
}

/// sendfile(2) from `src` at `*off_in` (updated) to `dst` at its file position: an in-kernel
/// copy that also works between filesystems, where copy_file_range refuses.
pub fn sendfile(
    dst: BorrowedFd<'_>,
    src: BorrowedFd<'_>,
    off_in: &mut i64,
    len: usize,
) -> SysResult<usize> {
    retry(|| {
        // SAFETY: `off_in` is a valid, exclusively borrowed integer.
        check_size(unsafe {
            libc::sendfile(dst.as_raw_fd(), src.as_raw_fd(), off_in as *mut i64, len)
        })
    })
}

const FICLONE: libc::c_ulong = 0x4004_9409;

/// FICLONE: make `dst` share `src`'s extents (reflink) where the filesystem can.
pub fn ficlone(dst: BorrowedFd<'_>, src: BorrowedFd<'_>) -> SysResult<()> {
    // SAFETY: FICLONE takes the source descriptor by value; no memory is passed.
    check(unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) }).map(drop)
}

/// lseek(2); `ENXIO` tells SEEK_DATA/SEEK_HOLE callers there is no more data.
pub fn lseek(fd: BorrowedFd<'_>, off: i64, whence: i32) -> SysResult<i64> {
    // SAFETY: plain integer arguments.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), off as libc::off_t, whence) };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r as i64)
    }
}

/// ftruncate(2).
pub fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> SysResult<()> {
    retry(|| {
        // SAFETY: plain integer arguments.
        check(unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) }).map(drop)
    })
}

/// fallocate(2).
pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, off: u64, len: u64) -> SysResult<()> {
    retry(|| {
        // SAFETY: plain integer arguments.
        check(unsafe {
            libc::fallocate(fd.as_raw_fd(), mode, off as libc::off_t, len as libc::off_t)
        })
        .map(drop)
    })
}

/// fsync(2) or fdatasync(2).
pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> SysResult<()> {
    retry(|| {
        // SAFETY: plain integer argument.
        let r = unsafe {
            if datasync {
                libc::fdatasync(fd.as_raw_fd())
            } else {
                libc::fsync(fd.as_raw_fd())
            }
        };
        check(r).map(drop)
    })
}

/// fstatvfs(2).
pub fn fstatvfs(fd: BorrowedFd<'_>) -> SysResult<libc::statvfs> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: the kernel fills `st` completely on success.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: initialised by the successful call above.
    Ok(unsafe { st.assume_init() })
}

/// The file status flags (access mode, O_APPEND, ...) of an open fd.
pub fn status_flags(fd: BorrowedFd<'_>) -> SysResult<i32> {
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)
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

/// One entry of a directory listing.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// The name (never `.` or `..`).
    pub name: Vec<u8>,
    /// `d_ino` as the layer reports it.
    pub ino: u64,
    /// `d_type` (`DT_*`), `DT_UNKNOWN` on filesystems that do not fill it.
    pub dtype: u8,
}

/// Lists a directory given an fd of it (the fd is duplicated; the caller keeps its own).
pub fn read_dir(dir: BorrowedFd<'_>) -> SysResult<Vec<DirEntry>> {
    // O_NOATIME: listing a layer directory, for the union's own bookkeeping or for a reader,
    // must not change it (lower layers are never modified, their atimes included). Only the
    // owner or CAP_FOWNER may ask for it.
    let flags = libc::O_RDONLY | libc::O_DIRECTORY;
    let fd = match openat(dir, c".", flags | libc::O_NOATIME, 0) {
        Err(Errno::EPERM) => openat(dir, c".", flags, 0)?,
        r => r?,
    };
    let raw: RawFd = std::os::fd::IntoRawFd::into_raw_fd(fd);
    // SAFETY: `raw` is an open directory fd whose ownership passes to the DIR stream.
    let dirp = unsafe { libc::fdopendir(raw) };
    if dirp.is_null() {
        let e = Errno::last();
        // SAFETY: fdopendir failed, so `raw` is still ours to close.
        unsafe { libc::close(raw) };
        return Err(e);
    }
    let mut out = Vec::new();
    loop {
        Errno::clear();
        // SAFETY: `dirp` is a valid DIR stream until closedir below.
        let ent = unsafe { libc::readdir64(dirp) };
        if ent.is_null() {
            let e = Errno::last_raw();
            // SAFETY: `dirp` is valid and closed exactly once.
            unsafe { libc::closedir(dirp) };
            if e != 0 {
                return Err(Errno::from_raw(e));
            }
            return Ok(out);
        }
        // SAFETY: a non-null dirent from readdir64 is valid until the next readdir64 call, and
        // d_name is NUL-terminated.
        let (name, ino, dtype) = unsafe {
            let e = &*ent;
            (
                CStr::from_ptr(e.d_name.as_ptr()).to_bytes().to_vec(),
                e.d_ino,
                e.d_type,
            )
        };
        if name == b"." || name == b".." {
            continue;
        }
        out.push(DirEntry { name, ino, dtype });
    }
}

/// Sets the process umask; the daemon uses 0 so that the modes the kernel sends are kept.
pub fn set_umask(mask: u32) -> u32 {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

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

/// fork(2). Only called before any thread is started (daemonising, the watchdog).
pub fn fork() -> SysResult<libc::pid_t> {
    // SAFETY: the callers are single-threaded at this point, so the child inherits no lock
    // held by another thread.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        Err(Errno::last())
    } else {
        Ok(pid)
    }
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> SysResult<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok((owned(fds[0]), owned(fds[1])))
}

/// setsid(2).
pub fn setsid() {
    // SAFETY: no memory is involved; failure (already a group leader) is harmless.
    unsafe { libc::setsid() };
}

/// Points stdin, stdout and stderr at /dev/null (a daemon must not hold the caller's terminal
/// or pipe). A stderr redirected to a regular file stays: that is where its errors are wanted,
/// and a file holds nobody up.
pub fn stdio_to_null() {
    // SAFETY: fd 2 is only inspected; the BorrowedFd does not outlive this statement.
    let err_to_file = fstat(unsafe { BorrowedFd::borrow_raw(2) })
        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG);
    if let Ok(null) = open_path(std::path::Path::new("/dev/null"), libc::O_RDWR) {
        for target in 0..if err_to_file { 2 } else { 3 } {
            // SAFETY: dup2 onto the standard descriptors; `null` stays open across the calls.
            unsafe { libc::dup2(null.as_raw_fd(), target) };
        }
    }
}

/// Blocks `signals` in the calling thread (threads spawned later inherit the mask).
pub fn block_signals(signals: &[i32]) {
    // SAFETY: `set` is initialised by sigemptyset before use.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits for one of `signals` (which must be blocked) and returns it.
pub fn wait_signal(signals: &[i32]) -> i32 {
    // SAFETY: `set` is initialised by sigemptyset; sigwait writes one int.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
        sig
    }
}

/// The effective uid of this process.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// The effective gid of this process.
pub fn getegid() -> u32 {
    // SAFETY: getegid cannot fail.
    unsafe { libc::getegid() }
}

/// Borrow helper so callers can write `sys::fd(&owned)`.
pub fn fd<F: AsFd>(f: &F) -> BorrowedFd<'_> {
    f.as_fd()
}

/// An all-zero `stat` (for negative entries).
pub fn zeroed_stat() -> libc::stat {
    // SAFETY: libc::stat is plain old data; all-zero bytes are a valid value of it.
    unsafe { std::mem::zeroed() }
}

/// The `f_type` of the filesystem an fd is on.
pub fn fstatfs_type(fd: BorrowedFd<'_>) -> SysResult<i64> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: the kernel fills `st` completely on success.
    check(unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: initialised by the successful call above.
    Ok(unsafe { st.assume_init() }.f_type)
}

/// Closes every descriptor except `keep` (a forked helper must not hold the parent's pipes).
pub fn close_all_except(keep: RawFd) {
    // SAFETY: close_range on ranges that do not include `keep`; we own every fd in this process
    // at this point (single-threaded child right after fork).
    unsafe {
        if keep > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, (keep - 1) as u32, 0u32);
        }
        libc::syscall(libc::SYS_close_range, (keep + 1) as u32, u32::MAX, 0u32);
    }
}

/// read(2) into `buf`.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> SysResult<usize> {
    retry(|| {
        // SAFETY: `buf` is writable for its length.
        check_size(unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        })
    })
}

/// write(2) of `buf`.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> SysResult<usize> {
    retry(|| {
        // SAFETY: `buf` is readable for its length.
        check_size(unsafe {
            libc::write(
                fd.as_raw_fd(),
                buf.as_ptr() as *const libc::c_void,
                buf.len(),
            )
        })
    })
}

/// One writev(2) of `a` then `b` (a FUSE reply must reach the device in one call).
pub fn write2(fd: BorrowedFd<'_>, a: &[u8], b: &[u8]) -> SysResult<usize> {
    let iov = [
        libc::iovec {
            iov_base: a.as_ptr() as *mut libc::c_void,
            iov_len: a.len(),
        },
        libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        },
    ];
    retry(|| {
        // SAFETY: both iovecs point at live slices of their lengths, only read by the kernel.
        check_size(unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), 2) })
    })
}

/// Ends the process at once, without running destructors (a forked child must not unwind
/// into its parent's state).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// Raises the soft open-file limit to the hard limit (a daemon holding layer and directory fds
/// for many users should not stop at the usual 1024); returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we pass; setrlimit only reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
    }
    rl.rlim_cur
}

/// Writes `data` at `off` of `file` through a shared memory mapping (the harness's mmap step).
pub fn mmap_write(file: &std::fs::File, off: usize, data: &[u8]) -> std::io::Result<()> {
    // SAFETY: the caller opened `file` read-write just now and nothing truncates it while the
    // mapping lives (it is dropped at the end of this function), so the mapping stays valid.
    let mut m = unsafe { memmap2::MmapMut::map_mut(file)? };
    if off + data.len() > m.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "mmap write past the end of the file",
        ));
    }
    m[off..off + data.len()].copy_from_slice(data);
    m.flush()
}

/// Returns free heap memory to the system (glibc's malloc_trim); a no-op elsewhere.
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists; no memory we hold moves.
    unsafe {
        libc::malloc_trim(0);
    }
}
