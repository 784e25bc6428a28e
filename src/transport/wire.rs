//! The FUSE wire format both transports use: reading a request's bytes and names, and
//! writing replies (`fuse_attr`, `fuse_entry_out`, dirents, ...) in the kernel's
//! layout. Plain byte handling, no unsafe.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{FileAttr, FileType, FopenFlags};

use crate::fs::reply::{Backing, Created, DirOut, DirPlusOut, Opened, Statfs};
use crate::sys::{Errno, SysResult};

/// Little reader over a request's bytes; reads past the end yield zeros (the kernel sends
/// full structs, and a short one must not panic the worker).
pub struct Args<'a> {
    buf: &'a [u8],
}

impl<'a> Args<'a> {
    /// Reads from `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Args { buf }
    }

    fn bytes<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut b = [0u8; N];
        if let Some(s) = self.buf.get(off..off + N) {
            b.copy_from_slice(s);
        }
        b
    }

    /// The u32 at byte `off`.
    pub fn u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.bytes(off))
    }

    /// The u64 at byte `off`.
    pub fn u64(&self, off: usize) -> u64 {
        u64::from_ne_bytes(self.bytes(off))
    }
}

/// Splits a NUL-terminated name off the front of `buf`: (name, rest).
pub fn take_name(buf: &[u8]) -> Option<(&OsStr, &[u8])> {
    let end = buf.iter().position(|b| *b == 0)?;
    Some((OsStr::from_bytes(&buf[..end]), &buf[end + 1..]))
}

/// A reply being built for one request.
#[derive(Debug, Default)]
pub struct Out {
    /// Negative errno, or 0.
    pub error: i32,
    /// The reply's payload.
    pub body: Vec<u8>,
    /// Set once an answer was given (a request answered twice keeps the first).
    pub answered: bool,
    /// Largest payload the kernel accepts for this request (readdir buffers).
    pub limit: usize,
}

impl Out {
    /// Ready for a new request whose reply may be up to `limit` bytes.
    pub fn reset(&mut self, limit: usize) {
        self.error = 0;
        self.body.clear();
        self.answered = false;
        self.limit = limit;
    }

    /// `fuse_out_header` for this reply to request `unique`.
    pub fn header(&self, unique: u64) -> [u8; 16] {
        let mut h = [0u8; 16];
        let len = if self.error != 0 {
            16
        } else {
            16 + self.body.len() as u32
        };
        h[0..4].copy_from_slice(&len.to_ne_bytes());
        h[4..8].copy_from_slice(&self.error.to_ne_bytes());
        h[8..16].copy_from_slice(&unique.to_ne_bytes());
        h
    }
}

/// The reply handle the filesystem's operations answer through, on either transport.
pub struct Reply<'a> {
    out: &'a mut Out,
    dev: &'a Arc<OwnedFd>,
}

impl<'a> Reply<'a> {
    /// Answers into `out`; backing files are registered on `dev`.
    pub fn new(out: &'a mut Out, dev: &'a Arc<OwnedFd>) -> Self {
        Reply { out, dev }
    }

    /// Caps the reply at `limit` bytes (the buffer size of a readdir request).
    pub fn limit(&mut self, limit: usize) {
        self.out.limit = limit;
    }

    fn begin(&mut self) -> bool {
        if self.out.answered {
            return false;
        }
        self.out.answered = true;
        self.out.body.clear();
        true
    }

    /// Answers `err` (a request answered twice keeps its first answer).
    pub fn error(&mut self, err: Errno) {
        if self.begin() {
            self.out.error = -(err as i32).abs();
        }
    }

    /// Answers `r`'s error, or what `put` writes for its value.
    fn answer<T>(&mut self, r: SysResult<T>, put: impl FnOnce(&mut Self, T)) {
        match r {
            Ok(v) => {
                if self.begin() {
                    put(self, v);
                }
            }
            Err(e) => self.error(e),
        }
    }

    /// Success without content.
    pub fn empty(&mut self, r: SysResult<()>) {
        self.answer(r, |_, ()| {});
    }

    /// `fuse_entry_out` of a node made or looked up.
    pub fn entry(&mut self, r: SysResult<FileAttr>, ttl: &Duration) {
        self.answer(r, |me, a| me.put_entry(ttl, &a));
    }

    /// LOOKUP's answer: an entry, or for a missing name a negative entry (node id 0) that the
    /// kernel caches for `ttl`.
    pub fn lookup(&mut self, r: SysResult<Option<FileAttr>>, ttl: &Duration) {
        let r = r.map(|a| a.unwrap_or_else(crate::fs::attr::negative));
        self.entry(r, ttl);
    }

    /// `fuse_attr_out`.
    pub fn attr(&mut self, r: SysResult<FileAttr>, ttl: &Duration) {
        self.answer(r, |me, a| {
            me.put64(ttl.as_secs());
            me.put32(ttl.subsec_nanos());
            me.put32(0);
            me.put_attr(&a);
        });
    }

    /// Bytes (read, readlink).
    pub fn data(&mut self, r: SysResult<Vec<u8>>) {
        self.answer(r, |me, d| me.out.body.extend_from_slice(&d));
    }

    /// `fuse_open_out` of an open file or directory.
    pub fn opened(&mut self, r: SysResult<Opened>) {
        self.answer(r, |me, o| me.put_open(&o));
    }

    /// CREATE's `fuse_entry_out` and `fuse_open_out`.
    pub fn created(&mut self, r: SysResult<Created>, ttl: &Duration) {
        self.answer(r, |me, c| {
            me.put_entry(ttl, &c.attr);
            me.put_open(&c.opened);
        });
    }

    /// `fuse_write_out`: bytes written (write, copy_file_range).
    pub fn written(&mut self, r: SysResult<u32>) {
        self.answer(r, |me, n| me.put_size(n));
    }

    /// `fuse_statfs_out`.
    pub fn statfs(&mut self, r: SysResult<Statfs>) {
        self.answer(r, |me, s| {
            for v in [s.blocks, s.bfree, s.bavail, s.files, s.ffree] {
                me.put64(v);
            }
            for v in [s.bsize, s.namelen, s.frsize] {
                me.put32(v);
            }
            // padding and spare[6]
            me.out.body.resize(me.out.body.len() + 28, 0);
        });
    }

    /// GETXATTR and LISTXATTR: with `size` 0 the caller asks how big the value is; a value
    /// larger than `size` is ERANGE.
    pub fn xattr(&mut self, r: SysResult<Vec<u8>>, size: u32) {
        match r {
            Ok(v) if size == 0 => self.answer(Ok(v.len() as u32), |me, n| me.put_size(n)),
            Ok(v) if v.len() > size as usize => self.error(Errno::ERANGE),
            r => self.data(r),
        }
    }

    /// `fuse_lseek_out`.
    pub fn offset(&mut self, r: SysResult<i64>) {
        self.answer(r, |me, o| me.put64(o as u64));
    }

    /// The end of a READDIR or READDIRPLUS: the entries added, or the error.
    pub fn listing(&mut self, r: SysResult<()>) {
        match r {
            Ok(()) => self.out.answered = true,
            Err(e) => self.error(e),
        }
    }

    /// Registers `fd` as a passthrough backing file on this request's connection.
    pub fn register(&self, fd: &OwnedFd) -> std::io::Result<Backing> {
        Backing::register(self.dev, fd)
    }

    fn put32(&mut self, v: u32) {
        self.out.body.extend_from_slice(&v.to_ne_bytes());
    }

    /// `fuse_write_out` / `fuse_getxattr_out`: a size and padding.
    fn put_size(&mut self, size: u32) {
        self.put32(size);
        self.put32(0);
    }

    fn put64(&mut self, v: u64) {
        self.out.body.extend_from_slice(&v.to_ne_bytes());
    }

    fn put_attr(&mut self, a: &FileAttr) {
        let (at, atn) = time(a.atime);
        let (mt, mtn) = time(a.mtime);
        let (ct, ctn) = time(a.ctime);
        self.put64(a.ino.0);
        self.put64(a.size);
        self.put64(a.blocks);
        self.put64(at as u64);
        self.put64(mt as u64);
        self.put64(ct as u64);
        self.put32(atn);
        self.put32(mtn);
        self.put32(ctn);
        self.put32(mode_of(a.kind) | u32::from(a.perm));
        self.put32(a.nlink);
        self.put32(a.uid);
        self.put32(a.gid);
        self.put32(a.rdev);
        self.put32(a.blksize);
        self.put32(0);
    }

    /// `fuse_entry_out`; generation 0: node ids are inode numbers, never reused while known.
    fn put_entry(&mut self, ttl: &Duration, a: &FileAttr) {
        self.put64(a.ino.0);
        self.put64(0);
        self.put64(ttl.as_secs());
        self.put64(ttl.as_secs());
        self.put32(ttl.subsec_nanos());
        self.put32(ttl.subsec_nanos());
        self.put_attr(a);
    }

    fn put_open(&mut self, o: &Opened) {
        let backing = o.backing.as_ref().map(|b| b.id);
        let flags = match backing {
            Some(_) => o.flags | FopenFlags::FOPEN_PASSTHROUGH,
            None => o.flags,
        };
        self.put64(o.fh);
        self.put32(flags.bits());
        self.put32(backing.unwrap_or(0));
    }

    /// Appends a `fuse_dirent` if it fits; true when it did not.
    fn put_dirent(&mut self, ino: u64, offset: u64, kind: FileType, name: &OsStr) -> bool {
        let name = name.as_bytes();
        let len = 24 + name.len();
        let padded = (len + 7) & !7;
        if self.out.body.len() + padded > self.out.limit {
            return true;
        }
        self.put64(ino);
        self.put64(offset);
        self.put32(name.len() as u32);
        self.put32(mode_of(kind) >> 12);
        self.out.body.extend_from_slice(name);
        self.out.body.resize(self.out.body.len() + padded - len, 0);
        false
    }
}

/// Seconds and nanoseconds since the epoch, negative seconds for earlier times.
fn time(t: SystemTime) -> (i64, u32) {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            match d.subsec_nanos() {
                0 => (-(d.as_secs() as i64), 0),
                n => (-(d.as_secs() as i64) - 1, 1_000_000_000 - n),
            }
        }
    }
}

/// The `S_IFMT` bits of a file type.
fn mode_of(kind: FileType) -> u32 {
    match kind {
        FileType::NamedPipe => libc::S_IFIFO,
        FileType::CharDevice => libc::S_IFCHR,
        FileType::BlockDevice => libc::S_IFBLK,
        FileType::Directory => libc::S_IFDIR,
        FileType::RegularFile => libc::S_IFREG,
        FileType::Symlink => libc::S_IFLNK,
        FileType::Socket => libc::S_IFSOCK,
    }
}

impl DirOut for Reply<'_> {
    fn add(&mut self, ino: u64, offset: u64, kind: FileType, name: &OsStr) -> bool {
        self.put_dirent(ino, offset, kind, name)
    }
}

impl DirPlusOut for Reply<'_> {
    fn add(
        &mut self,
        ino: u64,
        offset: u64,
        name: &OsStr,
        ttl: &Duration,
        attr: &FileAttr,
    ) -> bool {
        let len = 24 + name.len();
        let padded = 128 + ((len + 7) & !7);
        if self.out.body.len() + padded > self.out.limit {
            return true;
        }
        self.put_entry(ttl, attr);
        self.put_dirent(ino, offset, attr.kind, name)
    }

    fn add_bare(&mut self, d_ino: u64, offset: u64, kind: FileType, name: &OsStr) -> bool {
        let len = 24 + name.len();
        let padded = 128 + ((len + 7) & !7);
        if self.out.body.len() + padded > self.out.limit {
            return true;
        }
        // A fuse_entry_out of zeros: node id 0 tells the kernel "no attributes for this name".
        self.out.body.resize(self.out.body.len() + 128, 0);
        self.put_dirent(d_ino, offset, kind, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fuser::INodeNo;

    fn attr() -> FileAttr {
        FileAttr {
            ino: INodeNo(7),
            size: 5,
            blocks: 1,
            atime: SystemTime::UNIX_EPOCH + Duration::new(10, 5),
            mtime: SystemTime::UNIX_EPOCH - Duration::new(1, 250),
            ctime: SystemTime::UNIX_EPOCH,
            crtime: SystemTime::UNIX_EPOCH,
            kind: FileType::RegularFile,
            perm: 0o644,
            nlink: 1,
            uid: 1,
            gid: 2,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    #[test]
    fn entry_reply_has_the_kernel_layout() {
        let dev = Arc::new(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()));
        let mut out = Out::default();
        out.reset(4096);
        Reply::new(&mut out, &dev).entry(Ok(attr()), &Duration::new(3, 4));
        let a = Args::new(&out.body);
        assert_eq!(out.body.len(), 128, "fuse_entry_out is 128 bytes");
        assert_eq!((a.u64(0), a.u64(8), a.u64(16), a.u32(32)), (7, 0, 3, 4));
        // fuse_attr starts at 40: ino, size, blocks, atime, mtime, ctime, nsecs, mode...
        assert_eq!((a.u64(40), a.u64(48), a.u64(64)), (7, 5, 10));
        assert_eq!(a.u64(72) as i64, -2, "times before the epoch round down");
        assert_eq!((a.u32(88), a.u32(92)), (5, 1_000_000_000 - 250));
        assert_eq!(a.u32(100), libc::S_IFREG | 0o644);
        assert_eq!(out.header(42)[4..8], 0i32.to_ne_bytes());
    }

    #[test]
    fn dirents_stop_at_the_limit_and_errors_win_once() {
        let dev = Arc::new(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()));
        let mut out = Out::default();
        out.reset(64);
        let mut r = Reply::new(&mut out, &dev);
        let dir = FileType::Directory;
        assert!(!DirOut::add(&mut r, 1, 1, dir, OsStr::new("abc")));
        assert!(!DirOut::add(
            &mut r,
            2,
            2,
            FileType::Symlink,
            OsStr::new("x")
        ));
        assert!(DirOut::add(&mut r, 3, 3, FileType::Socket, OsStr::new("y")));
        r.listing(Ok(()));
        assert_eq!(out.body.len(), 64);
        assert_eq!(Args::new(&out.body).u32(20), libc::S_IFDIR >> 12);
        let mut out2 = Out::default();
        out2.reset(0);
        Reply::new(&mut out2, &dev).empty(Err(Errno::ENOENT));
        Reply::new(&mut out2, &dev).empty(Ok(()));
        assert_eq!(out2.error, -libc::ENOENT);
        assert_eq!(&out2.header(5)[0..4], &16u32.to_ne_bytes());
    }

    #[test]
    fn a_bare_direntplus_has_node_id_zero_and_the_real_d_ino() {
        let dev = Arc::new(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()));
        let mut out = Out::default();
        // One 128-byte entry_out + 24-byte dirent + 8 padded name bytes fits, a second not.
        out.reset(160 + 100);
        let mut r = Reply::new(&mut out, &dev);
        let name = OsStr::new("file");
        assert!(!r.add_bare(77, 9, FileType::RegularFile, name));
        assert!(r.add_bare(78, 10, FileType::RegularFile, name));
        r.listing(Ok(()));
        assert_eq!(out.body.len(), 160);
        let a = Args::new(&out.body);
        assert_eq!(a.u64(0), 0, "node id");
        assert!(out.body[8..128].iter().all(|b| *b == 0));
        assert_eq!(a.u64(128), 77, "d_ino");
        assert_eq!(a.u64(136), 9, "offset");
        assert_eq!(a.u32(144), 4, "name length");
        assert_eq!(a.u32(148), libc::S_IFREG >> 12, "d_type");
        assert_eq!(&out.body[152..156], b"file");
    }

    #[test]
    fn xattr_answers_size_probes_and_erange() {
        let dev = Arc::new(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()));
        let answer = |size: u32| {
            let mut out = Out::default();
            out.reset(4096);
            Reply::new(&mut out, &dev).xattr(Ok(b"value".to_vec()), size);
            (out.error, out.body)
        };
        let (e, body) = answer(0);
        assert_eq!((e, Args::new(&body).u32(0), body.len()), (0, 5, 8));
        assert_eq!(answer(4).0, -libc::ERANGE);
        assert_eq!(answer(5), (0, b"value".to_vec()));
    }

    #[test]
    fn names_split_at_nul() {
        let (a, rest) = take_name(b"old\0new\0").unwrap();
        let (b, _) = take_name(rest).unwrap();
        assert_eq!((a, b), (OsStr::new("old"), OsStr::new("new")));
        assert!(take_name(b"unterminated").is_none());
    }
}
