//! Issue 17, "Faults and bad input": lower layers that fail (I/O errors, files deleted behind
//! the daemon's back) and a daemon that runs out of file descriptors.
//!
//! This kernel has no device-mapper, so the I/O errors come from a small FUSE filesystem
//! served by the test itself (`FaultFs`, with fuser): a lower layer whose chosen files answer
//! EIO to lookup, getattr, read, readdir, readlink or xattr requests, from the start or from a
//! moment the test picks (a disk that goes bad under a mounted union). Every request through
//! the union must come back, within seconds, with EIO (or ENOENT/ESTALE for vanished files),
//! and the daemon must keep serving everything else.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, LockOwner, MountOption,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyXattr, Request,
};

use crate::common::*;

/// How long any request may take before the test calls it hung.
pub(super) const LIMIT: Duration = Duration::from_secs(10);

/// One entry of [`FaultFs`]: inode, parent, name, kind, content.
struct Ent {
    ino: u64,
    parent: u64,
    name: &'static str,
    kind: FileType,
    data: &'static [u8],
}

const TREE: &[Ent] = &[
    Ent {
        ino: 1,
        parent: 1,
        name: "",
        kind: FileType::Directory,
        data: b"",
    },
    Ent {
        ino: 2,
        parent: 1,
        name: "good",
        kind: FileType::RegularFile,
        data: b"good data",
    },
    Ent {
        ino: 3,
        parent: 1,
        name: "bad_read",
        kind: FileType::RegularFile,
        data: b"never read",
    },
    Ent {
        ino: 4,
        parent: 1,
        name: "bad_lookup",
        kind: FileType::RegularFile,
        data: b"x",
    },
    Ent {
        ino: 5,
        parent: 1,
        name: "bad_dir",
        kind: FileType::Directory,
        data: b"",
    },
    Ent {
        ino: 6,
        parent: 5,
        name: "inside",
        kind: FileType::RegularFile,
        data: b"in",
    },
    Ent {
        ino: 7,
        parent: 1,
        name: "bad_link",
        kind: FileType::Symlink,
        data: b"good",
    },
    Ent {
        ino: 8,
        parent: 1,
        name: "bad_xattr",
        kind: FileType::RegularFile,
        data: b"xattr",
    },
    Ent {
        ino: 9,
        parent: 1,
        name: "sub",
        kind: FileType::Directory,
        data: b"",
    },
    Ent {
        ino: 10,
        parent: 9,
        name: "later",
        kind: FileType::RegularFile,
        data: b"fine until",
    },
];

/// A read-only filesystem whose `bad_*` entries fail with EIO, and whose `sub/later` fails
/// too once `broken` is set. Attributes are never cached (TTL 0): every access reaches it.
struct FaultFs {
    broken: Arc<AtomicBool>,
}

fn ent(ino: u64) -> Option<&'static Ent> {
    TREE.iter().find(|e| e.ino == ino)
}

fn attr_of(e: &Ent) -> FileAttr {
    FileAttr {
        ino: INodeNo(e.ino),
        size: e.data.len() as u64,
        blocks: 1,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: e.kind,
        perm: if e.kind == FileType::Directory {
            0o755
        } else {
            0o644
        },
        nlink: if e.kind == FileType::Directory { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl FaultFs {
    /// Whether requests about `ino` of kind `what` fail.
    fn fails(&self, ino: u64, what: &str) -> bool {
        let name = ent(ino).map_or("", |e| e.name);
        let bad = match what {
            "lookup" => name == "bad_lookup",
            "read" => name == "bad_read",
            "readdir" => name == "bad_dir",
            "readlink" => name == "bad_link",
            "xattr" => name == "bad_xattr",
            _ => false,
        };
        bad || (name == "later" && self.broken.load(Ordering::SeqCst))
    }
}

impl Filesystem for FaultFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match TREE
            .iter()
            .find(|e| e.ino != 1 && e.parent == parent.0 && OsStr::new(e.name) == name)
        {
            Some(e) if self.fails(e.ino, "lookup") => reply.error(Errno::EIO),
            Some(e) => reply.entry(&Duration::ZERO, &attr_of(e), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ent(ino.0) {
            Some(e) if self.fails(e.ino, "getattr") => reply.error(Errno::EIO),
            Some(e) => reply.attr(&Duration::ZERO, &attr_of(e)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match ent(ino.0) {
            Some(e) if self.fails(e.ino, "readlink") => reply.error(Errno::EIO),
            Some(e) => reply.data(e.data),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match ent(ino.0) {
            Some(e) if self.fails(e.ino, "read") => reply.error(Errno::EIO),
            Some(e) => {
                let start = (offset as usize).min(e.data.len());
                let end = (start + size as usize).min(e.data.len());
                reply.data(&e.data[start..end]);
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if self.fails(ino.0, "readdir") {
            return reply.error(Errno::EIO);
        }
        let mut all = vec![
            (ino.0, FileType::Directory, "."),
            (1, FileType::Directory, ".."),
        ];
        all.extend(
            TREE.iter()
                .filter(|e| e.ino != 1 && e.parent == ino.0)
                .map(|e| (e.ino, e.kind, e.name)),
        );
        for (i, (n, k, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(n), (i + 1) as u64, k, name) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        if self.fails(ino.0, "xattr") {
            reply.error(Errno::EIO)
        } else {
            reply.error(Errno::ENODATA)
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if self.fails(ino.0, "xattr") {
            reply.error(Errno::EIO)
        } else if size == 0 {
            reply.size(0)
        } else {
            reply.data(&[])
        }
    }
}

/// A mounted [`FaultFs`]; unmounted (lazily) and its directory removed when dropped. Declare
/// it before the union that uses it, so the union goes first.
struct FaultMount {
    path: PathBuf,
    session: Option<fuser::BackgroundSession>,
    broken: Arc<AtomicBool>,
}

impl FaultMount {
    fn new() -> FaultMount {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = PathBuf::from(format!(
            "/tmp/unionfs-faultfs-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::create_dir_all(&path);
        let broken = Arc::new(AtomicBool::new(false));
        let mut cfg = fuser::Config::default();
        cfg.mount_options = vec![MountOption::FSName("faultfs".into()), MountOption::RO];
        cfg.n_threads = Some(2);
        let fs = FaultFs {
            broken: Arc::clone(&broken),
        };
        let session = fuser::spawn_mount(fs, &path, &cfg)
            .unwrap_or_else(|e| panic!("mounting the fault filesystem on {path:?}: {e}"));
        let deadline = Instant::now() + LIMIT;
        while !is_mountpoint(&path) {
            assert!(Instant::now() < deadline, "faultfs did not mount");
            std::thread::sleep(Duration::from_millis(10));
        }
        FaultMount {
            path,
            session: Some(session),
            broken,
        }
    }
}

impl Drop for FaultMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
        drop(self.session.take());
        let _ = fs::remove_dir(&self.path);
    }
}

/// A union of an ordinary lower over the fault filesystem (its lowest layer, which the
/// fixture's lower snapshots leave alone).
fn union_over(faults: &FaultMount, extra_opts: &[&str]) -> Option<Union> {
    let mut stack = Stack::new().lower([file("plain", "plain data"), dir("sub")]);
    for o in extra_opts {
        stack = stack.unionfs_opt(o);
    }
    let mut u = Union::build(stack)?;
    u.lowers.push(faults.path.clone());
    u.do_mount();
    Some(u)
}

/// The errno of an operation run on its own thread (it must answer within [`LIMIT`]).
pub(super) fn errno_of<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Option<i32> {
    within(LIMIT, what, f)
        .err()
        .map(|e| e.raw_os_error().unwrap_or(-1))
}

pub(super) fn read_all(p: PathBuf) -> io::Result<Vec<u8>> {
    fs::read(p)
}

pub(super) fn daemon_alive(u: &Union) -> bool {
    let pid = u.daemon_pid().expect("no daemon pid");
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

fn lower_io_errors_reach_the_caller(extra_opts: &[&str]) {
    if is_kernel() {
        eprintln!("SKIP on kernel: a FUSE lower under kernel overlayfs is another test");
        return;
    }
    if !can_mount() {
        return;
    }
    let faults = FaultMount::new();
    let Some(mut u) = union_over(&faults, extra_opts) else {
        return;
    };
    let m = |r: &str| u.m(r);
    let mut checked = 0;
    let mut expect = |what: &str, got: Option<i32>, want: i32| {
        assert_eq!(
            got,
            Some(want),
            "{what}: expected {}, got {got:?}",
            io::Error::from_raw_os_error(want)
        );
        checked += 1;
    };
    // The healthy files of the failing layer read fine.
    assert_eq!(u.read_str("good"), "good data");
    // The listing has every name (bad_lookup too: only its lookup fails).
    assert_eq!(
        list(&u.mnt),
        set(&[
            "bad_dir",
            "bad_link",
            "bad_lookup",
            "bad_read",
            "bad_xattr",
            "good",
            "plain",
            "sub"
        ])
    );
    let p = m("bad_read");
    expect(
        "read of a file whose data fails",
        errno_of("read", move || read_all(p)),
        libc::EIO,
    );
    let p = m("bad_read");
    expect(
        "copy-up of a file whose data fails",
        errno_of("copy-up", move || {
            fs::OpenOptions::new().append(true).open(p).map(drop)
        }),
        libc::EIO,
    );
    assert!(u.stage_leftovers().is_empty(), "{:?}", u.stage_leftovers());
    assert!(
        fs::symlink_metadata(u.u("bad_read")).is_err(),
        "a failed copy-up left a file"
    );
    let p = m("bad_lookup");
    expect(
        "stat of a name whose lookup fails",
        errno_of("lstat", move || fs::symlink_metadata(p)),
        libc::EIO,
    );
    let p = m("bad_lookup");
    expect(
        "create over a name whose lookup fails",
        errno_of("create", move || {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(p)
                .map(drop)
        }),
        libc::EIO,
    );
    let p = m("bad_dir");
    expect(
        "listing a directory whose readdir fails",
        errno_of("readdir", move || {
            fs::read_dir(p).and_then(|d| d.collect::<io::Result<Vec<_>>>())
        }),
        libc::EIO,
    );
    let p = m("bad_dir");
    expect(
        "renaming a directory whose readdir fails (copy of the tree)",
        errno_of("rename dir", move || {
            fs::rename(&p, p.with_file_name("bad_dir2"))
        }),
        libc::EIO,
    );
    assert!(!u.exists("bad_dir2"));
    // The failed rename began to copy the directory into the upper; the merged directory's
    // link count needs its listing, which fails: stat says EIO now, the name stays.
    assert!(list(&u.mnt).contains("bad_dir"));
    let p = m("bad_dir");
    let r = within(LIMIT, "lstat", move || fs::symlink_metadata(p));
    assert!(
        r.is_ok() || r.as_ref().unwrap_err().raw_os_error() == Some(libc::EIO),
        "lstat of the unreadable directory: {r:?}"
    );
    let p = m("bad_link");
    expect(
        "readlink of a link whose target fails",
        errno_of("readlink", move || fs::read_link(p)),
        libc::EIO,
    );
    let p = m("bad_xattr");
    expect(
        "listxattr that fails",
        errno_of("listxattr", move || llistxattr(&p)),
        libc::EIO,
    );
    let p = m("bad_xattr");
    expect(
        "chmod (copy-up) of a file whose xattrs fail",
        errno_of("chmod", move || {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(p, fs::Permissions::from_mode(0o600))
        }),
        libc::EIO,
    );
    assert!(u.stage_leftovers().is_empty(), "{:?}", u.stage_leftovers());

    // A file that reads fine, then the layer goes bad under the mounted union.
    let later = m("sub/later");
    let mut open = fs::File::open(&later).unwrap();
    let mut first = [0u8; 4];
    open.read_exact(&mut first).unwrap();
    faults.broken.store(true, Ordering::SeqCst);
    let got = within(
        LIMIT,
        "read of an open file after the layer broke",
        move || {
            let mut rest = vec![];
            open.read_to_end(&mut rest).map(|_| rest)
        },
    );
    // Data the kernel already cached may still be served; anything else is EIO.
    if let Err(e) = &got {
        expect(
            "read of an open file after the layer broke",
            e.raw_os_error(),
            libc::EIO,
        );
    }
    let p = later.clone();
    expect(
        "open after the layer broke",
        errno_of("open", move || read_all(p)),
        libc::EIO,
    );
    let p = later.clone();
    expect(
        "copy-up after the layer broke",
        errno_of("copy-up", move || {
            fs::OpenOptions::new()
                .append(true)
                .custom_flags(0)
                .open(p)
                .map(drop)
        }),
        libc::EIO,
    );
    faults.broken.store(false, Ordering::SeqCst);
    assert_eq!(u.read_str("sub/later"), "fine until");
    eprintln!("{checked} failing requests answered EIO");

    // The daemon survived all of it and still serves, writes included.
    assert!(daemon_alive(&u), "the daemon died:\n{}", u.daemon_log());
    u.write("after", "still works");
    u.append("good", b"+");
    assert_eq!(u.read_str("good"), "good data+");
    u.remount();
    assert_eq!(u.read_str("after"), "still works");
    assert_eq!(u.read_str("good"), "good data+");
    let log = u.daemon_log();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
    drop(u);
    drop(faults);
}

#[test]
fn lower_io_errors_reach_the_caller_as_eio() {
    lower_io_errors_reach_the_caller(&[]);
}

#[test]
fn lower_io_errors_reach_the_caller_as_eio_without_passthrough() {
    lower_io_errors_reach_the_caller(&["passthrough=off"]);
}
