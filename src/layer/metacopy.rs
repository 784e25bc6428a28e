//! Metadata-only copy-up (`-o metacopy=on`): a chmod, chown, utimes or xattr change on a lower
//! file puts a *stub* in the upper that carries the new metadata and the file's size as a hole,
//! plus an xattr naming where its data still is. Reads go to the lower file; the first change
//! of data (a write open, a truncate to a non-zero size) copies the data into the stub in place.
//!
//! A stub is not a complete OCI layer entry: `unionfs-layer export --lowers` reads the data of
//! stubs from the lower layers, and refuses to export a stub it cannot fill.
//!
//! An upper with stubs used as a lower layer keeps working: a stub in a lower layer reads from
//! the layers below it, and copying it up keeps its record.
//!
//! The xattr holds the source's size and mtime and its path below the layer root. The source is
//! the topmost lower layer holding that path with that size and mtime, so a stub keeps working
//! when layers are moved or reordered, and a replaced lower file is reported, never read.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::layer::stack::{open_below, LayerIdx, Stack};
use crate::layer::whiteout;
use crate::sys::{self, Errno, SysResult};
use std::sync::atomic::Ordering::Relaxed;

/// Version tag of the stub xattr's layout.
const VERSION: u8 = 1;
const HEADER: usize = 1 + 8 + 8 + 4;

/// Where the data of a stub is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stub {
    /// Size of the source file.
    pub size: u64,
    /// mtime of the source file, seconds and nanoseconds.
    pub mtime: (i64, u32),
    /// Path of the source below its layer root.
    pub path: Vec<u8>,
}

impl Stub {
    /// The stub of a lower file at `path` whose stat is `st`.
    pub fn of(path: &[u8], st: &libc::stat) -> Stub {
        Stub {
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec as u32),
            path: path.to_vec(),
        }
    }

    /// The xattr value.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER + self.path.len());
        v.push(VERSION);
        v.extend_from_slice(&self.size.to_le_bytes());
        v.extend_from_slice(&self.mtime.0.to_le_bytes());
        v.extend_from_slice(&self.mtime.1.to_le_bytes());
        v.extend_from_slice(&self.path);
        v
    }

    /// Parses an xattr value; `None` for anything we did not write.
    pub fn decode(v: &[u8]) -> Option<Stub> {
        if v.len() <= HEADER || v[0] != VERSION {
            return None;
        }
        let size = u64::from_le_bytes(v[1..9].try_into().ok()?);
        let sec = i64::from_le_bytes(v[9..17].try_into().ok()?);
        let nsec = u32::from_le_bytes(v[17..21].try_into().ok()?);
        let path = v[HEADER..].to_vec();
        // A path that could leave the layer root is not ours.
        let bad = path.is_empty()
            || path.starts_with(b"/")
            || path.contains(&0)
            || path
                .split(|b| *b == b'/')
                .any(|c| c.is_empty() || c == b".." || c == b".");
        if bad {
            return None;
        }
        Some(Stub {
            size,
            mtime: (sec, nsec),
            path,
        })
    }

    fn matches(&self, st: &libc::stat) -> bool {
        st.st_mode & libc::S_IFMT == libc::S_IFREG
            && st.st_size as u64 == self.size
            && st.st_mtime == self.mtime.0
            && st.st_mtime_nsec as u32 == self.mtime.1
    }
}

/// The stub record of the upper file `fd` refers to (any open mode), if it is a stub.
pub fn read(stack: &Stack, fd: BorrowedFd<'_>) -> SysResult<Option<Stub>> {
    let name = &stack.metacopy_xattr;
    let got = read_record(|buf| match sys::fgetxattr(fd, name, buf) {
        // An O_PATH fd: through its /proc link.
        Err(Errno::EBADF) => sys::fd_getxattr(fd, name, buf),
        r => r,
    });
    match got {
        Ok(v) => Ok(Stub::decode(&v)),
        Err(Errno::ENODATA) | Err(Errno::EOPNOTSUPP) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads a record with `get` (a getxattr call filling the buffer it is given): into a stack
/// buffer first, since every open of a regular file asks and nearly all have none, and into a
/// buffer of the size asked for when a long path does not fit.
fn read_record(get: impl Fn(&mut [u8]) -> SysResult<usize>) -> SysResult<Vec<u8>> {
    let mut small = [0u8; 256];
    match get(&mut small) {
        Ok(n) => Ok(small[..n].to_vec()),
        Err(Errno::ERANGE) => {
            let mut big = vec![0u8; get(&mut [])?];
            let n = get(&mut big)?;
            big.truncate(n);
            Ok(big)
        }
        Err(e) => Err(e),
    }
}

/// Marks the staged file at `at` as a stub of `stub`.
pub fn write(stack: &Stack, at: sys::At<'_>, stub: &Stub) -> SysResult<()> {
    sys::setxattr(at, &stack.metacopy_xattr, &stub.encode(), 0)
}

/// Opens the data of a stub found in layer `layer`: in the topmost lower layer below it that
/// has it, read-only.
pub fn open_source(stack: &Stack, stub: &Stub, layer: LayerIdx) -> SysResult<OwnedFd> {
    let first = (layer + 1).max(usize::from(stack.has_upper));
    let lowers = stack.layers.iter().skip(first).map(|l| l.fd.as_fd());
    match source_in(lowers, stub)? {
        Some(fd) => Ok(fd),
        None => {
            log::error!("metacopy: {}", missing(stub));
            Err(Errno::EIO)
        }
    }
}

/// Why a stub's data cannot be found, and what to do about it.
pub fn missing(stub: &Stub) -> String {
    format!(
        "the data of {:?} ({} bytes) is in no lower layer: a lower layer was changed or \
         removed since the copy-up; use the layers the upper was made with",
        String::from_utf8_lossy(&stub.path),
        stub.size
    )
}

/// The data of `stub` in the first of `lowers` (layer root fds, topmost first) that holds its
/// path as a regular file of the recorded size and mtime, opened read-only.
pub fn source_in<'a>(
    lowers: impl Iterator<Item = BorrowedFd<'a>>,
    stub: &Stub,
) -> SysResult<Option<OwnedFd>> {
    for root in lowers {
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW;
        let fd = match open_below(root, &stub.path, flags | libc::O_NOATIME)
            .or_else(|_| open_below(root, &stub.path, flags))
        {
            Ok(fd) => fd,
            Err(Errno::ENOENT) | Err(Errno::ENOTDIR) | Err(Errno::ELOOP) | Err(Errno::EXDEV) => {
                continue
            }
            Err(e) => return Err(e),
        };
        // Another stub of the same file (chmod keeps size and mtime) holds no data.
        if stub.matches(&sys::fstat(fd.as_fd())?) && !is_stub_fd(fd.as_fd()) {
            return Ok(Some(fd));
        }
    }
    Ok(None)
}

/// True when the open (not `O_PATH`) file `fd` carries a stub record in either namespace.
fn is_stub_fd(fd: BorrowedFd<'_>) -> bool {
    XATTR_NAMES
        .iter()
        .any(|x| sys::fgetxattr(fd, x, &mut []).is_ok())
}

/// The stub record's name in each xattr namespace we may write it in.
const XATTR_NAMES: [&CStr; 2] = whiteout::METACOPY_XATTRS;

/// The stub record of `at` under either namespace, with the xattr name that holds it (for
/// tools that read an upper offline).
pub fn read_at(at: sys::At<'_>) -> Option<(Stub, &'static CStr)> {
    XATTR_NAMES.into_iter().find_map(|x| {
        let v = read_record(|buf| sys::getxattr(at, x, buf)).ok()?;
        Stub::decode(&v).map(|s| (s, x))
    })
}

/// Copies the data of the stub `fd` refers to (any open mode) into it and drops the stub
/// record, keeping its times. A crash in between leaves a stub whose data reads the same from
/// either copy: the record goes last.
pub fn fill(stack: &Stack, fd: BorrowedFd<'_>, stub: &Stub) -> SysResult<()> {
    let src = open_source(stack, stub, 0)?;
    fill_from(
        src.as_fd(),
        fd,
        stub,
        &stack.metacopy_xattr,
        !stack.volatile,
    )?;
    if !stack.volatile {
        stack.counters.flushes.fetch_add(1, Relaxed);
    }
    stack.counters.bytes_copied.fetch_add(stub.size, Relaxed);
    Ok(())
}

/// Copies the data of `stub` from `src` into the stub file `fd` (on disk before the record
/// goes, with `flush`), then drops the record `xattr`: the steps of [`fill`] with the source
/// already found.
pub fn fill_from(
    src: BorrowedFd<'_>,
    fd: BorrowedFd<'_>,
    stub: &Stub,
    xattr: &CStr,
    flush: bool,
) -> SysResult<()> {
    let before = sys::fstat(fd)?;
    let dst = match sys::reopen(fd, libc::O_WRONLY) {
        Ok(f) => f,
        // A rootless daemon owning a read-only file: make it writable for the copy only.
        Err(Errno::EACCES) => {
            sys::fchmod_fd(fd, (before.st_mode & 0o7777) | 0o200)?;
            let r = sys::reopen(fd, libc::O_WRONLY);
            sys::fchmod_fd(fd, before.st_mode & 0o7777)?;
            r?
        }
        Err(e) => return Err(e),
    };
    crate::layer::data::copy_data(src, dst.as_fd(), stub.size, flush)?;
    if flush {
        sys::fsync(dst.as_fd(), true)?;
    }
    sys::utimens_fd(dst.as_fd(), &sys::times_of(&before))?;
    remove_record(fd, xattr)
}

/// Drops the stub record of the upper file `fd` refers to: its data is its own from now on.
pub fn drop_record(stack: &Stack, fd: BorrowedFd<'_>) -> SysResult<()> {
    remove_record(fd, &stack.metacopy_xattr)
}

fn remove_record(fd: BorrowedFd<'_>, xattr: &CStr) -> SysResult<()> {
    match sys::fd_removexattr(fd, xattr) {
        Ok(()) | Err(Errno::ENODATA) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_round_trips_and_rejects_escaping_paths() {
        let s = Stub {
            size: 1 << 33,
            mtime: (1_700_000_000, 123),
            path: b"usr/lib/libc.so".to_vec(),
        };
        assert_eq!(Stub::decode(&s.encode()), Some(s.clone()));
        for bad in [&b"../x"[..], b"/etc/passwd", b"a//b", b"a/./b", b""] {
            let mut v = s.clone();
            v.path = bad.to_vec();
            assert_eq!(Stub::decode(&v.encode()), None, "{:?}", bad);
        }
        let mut v = s.encode();
        v[0] = 9;
        assert_eq!(Stub::decode(&v), None);
    }
}
