//! Capturing trees (the merged view, an upper, a lower) and comparing them.
//!
//! A layer is read into the neutral notation: `.wh.NAME` files and 0/0 char devices become
//! whiteouts, `.wh..wh..opq` and the opaque xattrs become an `opaque` flag, and internal
//! bookkeeping (our `.wh..wh.*` work dir, `*.overlay.*`/`*.unionfs.*`/`*.fuseoverlayfs.*`
//! xattrs) is dropped. That makes uppers written by different implementations comparable, and
//! [`merge`] computes the view a stack of such layers must produce (the OCI layer rules).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CStr, OsStr};
use std::fmt::Write as _;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::OnceLock;

use crate::scenario::{Kind, NodeExpect, TreeExpect};
use unionfs::sys;

/// File content kept literally up to this size; larger files are compared by digest.
const KEEP_BYTES: u64 = 64 * 1024;

/// The unit of the content digest: a block wholly inside a hole is not read.
const BLOCK: usize = 64 * 1024;

/// One captured node.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Node {
    /// Type.
    pub kind: Kind,
    /// Permission bits (with setuid, setgid, sticky).
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// st_size.
    pub size: u64,
    /// st_nlink.
    pub nlink: u64,
    /// st_ino.
    pub ino: u64,
    /// mtime seconds.
    pub mtime: i64,
    /// mtime nanoseconds.
    pub mtime_nsec: i64,
    /// ctime seconds (lowers must not change, not even their ctime).
    pub ctime: i64,
    /// ctime nanoseconds.
    pub ctime_nsec: i64,
    /// Allocated bytes (st_blocks * 512).
    pub alloc: u64,
    /// Symlink target.
    pub target: Option<String>,
    /// File content when small.
    #[serde(serialize_with = "ser_data")]
    pub data: Option<Vec<u8>>,
    /// Digest of the whole content of a file ([`digest_bytes`]).
    pub digest: u64,
    /// Device numbers.
    pub rdev: [u32; 2],
    /// Extended attributes, values exactly as read (shown as [`xattr_text`]).
    #[serde(serialize_with = "ser_xattrs")]
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Layer trees only: the directory is opaque.
    pub opaque: bool,
}

fn ser_data<S: serde::Serializer>(d: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&xattr_text(d)),
        None => s.serialize_none(),
    }
}

fn ser_xattrs<S: serde::Serializer>(
    x: &BTreeMap<String, Vec<u8>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(x.iter().map(|(k, v)| (k, xattr_text(v))))
}

/// A value for people to read: the text when it is UTF-8, else `0x` and its bytes in hex.
pub fn xattr_text(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(t) => t.to_string(),
        Err(_) => v.iter().fold("0x".to_string(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        }),
    }
}

fn show_xattrs(x: &BTreeMap<String, Vec<u8>>) -> String {
    let m: BTreeMap<&String, String> = x.iter().map(|(k, v)| (k, xattr_text(v))).collect();
    format!("{m:?}")
}

/// A name as a tree path component: itself when it is UTF-8, each byte that is not as `\xNN`
/// (names are bytes; a path key must still find the entry it came from in messages).
pub fn name_text(name: &[u8]) -> String {
    let mut out = String::new();
    for chunk in name.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// A captured tree: paths (`.` is the root) to nodes, plus whiteouts for layer trees.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Tree {
    /// Every visible path.
    pub nodes: BTreeMap<String, Node>,
    /// Layer trees only: paths deleted by this layer.
    pub whiteouts: BTreeSet<String>,
    /// Names a directory listing showed but lookup did not find (an inconsistent view).
    pub ghosts: BTreeSet<String>,
}

/// How to read a directory tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAs {
    /// A merged view: everything as it is shown.
    View,
    /// A layer: whiteouts and opaque markers in any known format, internal entries dropped.
    Layer,
    /// Everything as it is on disk, ctime included (atimes are not captured: reading through a
    /// union may legitimately move them).
    Raw,
}

fn mix(h: u64, w: u64) -> u64 {
    (h ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29)
}

/// Digest of one block: word by word, which keeps debug builds fast on big files.
fn block_digest(b: &[u8]) -> u64 {
    let mut h = mix(0xcbf2_9ce4_8422_2325, b.len() as u64);
    let mut words = b.chunks_exact(8);
    for w in &mut words {
        h = mix(
            h,
            u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]),
        );
    }
    for x in words.remainder() {
        h = mix(h, *x as u64);
    }
    h
}

/// The digest of a block of zeros, which is what a block inside a hole holds.
fn zero_block_digest() -> u64 {
    static ZERO: OnceLock<u64> = OnceLock::new();
    *ZERO.get_or_init(|| block_digest(&[0u8; BLOCK]))
}

/// The digest of a content: a function of the bytes and their length only, so a sparse file
/// and a dense one with the same bytes agree (a file's holes are skipped, not read).
pub fn digest_bytes(data: &[u8]) -> u64 {
    let mut h = mix(0x100_0000_01b3, data.len() as u64);
    for (i, b) in data.chunks(BLOCK).enumerate() {
        h = mix(mix(h, i as u64), block_digest(b));
    }
    h
}

/// Digest (as [`digest_bytes`]) and, up to [`KEEP_BYTES`], the content of the open file `fd`
/// of `len` bytes. Blocks wholly inside a hole are not read.
fn file_digest(
    fd: BorrowedFd<'_>,
    len: u64,
    path: &Path,
) -> Result<(u64, Option<Vec<u8>>), String> {
    let err = |e: sys::Errno| format!("read {}: {}", path.display(), e.desc());
    // The data extents; a filesystem that cannot say has one extent, the whole file.
    let mut extents = Vec::new();
    let mut pos = 0i64;
    while (pos as u64) < len {
        let data = match sys::lseek(fd, pos, libc::SEEK_DATA) {
            Ok(d) => d,
            Err(sys::Errno::ENXIO) => break,
            Err(_) => {
                extents = vec![(pos, len as i64)];
                break;
            }
        };
        let hole = sys::lseek(fd, data, libc::SEEK_HOLE).unwrap_or(len as i64);
        extents.push((data, hole));
        pos = hole.max(data + 1);
    }
    let mut h = mix(0x100_0000_01b3, len);
    let mut buf = vec![0u8; BLOCK];
    let mut keep = (len <= KEEP_BYTES).then(Vec::new);
    let mut off = 0u64;
    let mut i = 0u64;
    while off < len {
        let n = (len - off).min(BLOCK as u64) as usize;
        let (a, b) = (off as i64, (off + n as u64) as i64);
        let in_hole = !extents.iter().any(|&(x, y)| x < b && a < y);
        let d = if in_hole && n == BLOCK && keep.is_none() {
            zero_block_digest()
        } else {
            let mut got = 0;
            while got < n {
                match sys::pread(fd, &mut buf[got..n], off + got as u64).map_err(err)? {
                    0 => break,
                    r => got += r,
                }
            }
            if let Some(k) = keep.as_mut() {
                k.extend_from_slice(&buf[..got]);
            }
            block_digest(&buf[..got])
        };
        h = mix(mix(h, i), d);
        off += n as u64;
        i += 1;
    }
    Ok((h, keep))
}

/// Opens `name` in `dir` read-only without moving its atime: tests tell by a lower's atime
/// whether the union read its data (O_NOATIME needs ownership or CAP_FOWNER; without either
/// the file is read as anyone would).
fn open_noatime(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> sys::SysResult<OwnedFd> {
    let flags = flags | libc::O_CLOEXEC;
    match sys::openat(dir, name, flags | libc::O_NOATIME, 0) {
        Err(sys::Errno::EPERM) => sys::openat(dir, name, flags, 0),
        r => r,
    }
}

/// Joins a tree path and a name.
pub fn join(dir: &str, name: &str) -> String {
    if dir == "." {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// The parent path and the last name of a tree path.
pub fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (".", path),
    }
}

/// Reads the xattrs of `path` (not following symlinks).
pub fn xattrs(path: &Path) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let (dir, name) = at(path)?;
    let at = match &name {
        Some(n) => sys::At::new(sys::fd(&dir), n),
        None => sys::At::dir(sys::fd(&dir)),
    };
    xattrs_at(at, path)
}

fn xattrs_at(at: sys::At<'_>, path: &Path) -> Result<BTreeMap<String, Vec<u8>>, String> {
    // Ask the sizes first: most nodes have no xattrs, and big zeroed buffers per node make
    // capturing a 10,000-entry tree slow.
    let size = match sys::listxattr(at, &mut []) {
        Ok(n) => n,
        Err(sys::Errno::ENOTSUP) => 0,
        Err(e) => return Err(format!("listxattr {}: {}", path.display(), e.desc())),
    };
    if size == 0 {
        return Ok(BTreeMap::new());
    }
    let mut buf = vec![0u8; size + 1024];
    let n = match sys::listxattr(at, &mut buf) {
        Ok(n) => n,
        Err(sys::Errno::ENOTSUP) => 0,
        Err(e) => return Err(format!("listxattr {}: {}", path.display(), e.desc())),
    };
    let mut out = BTreeMap::new();
    for xname in buf[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let cname = sys::cstr(OsStr::from_bytes(xname)).map_err(|e| e.desc().to_string())?;
        let want = sys::getxattr(at, &cname, &mut []).unwrap_or(0);
        let mut val = vec![0u8; want + 1024];
        match sys::getxattr(at, &cname, &mut val) {
            Ok(len) => {
                val.truncate(len);
                out.insert(String::from_utf8_lossy(xname).into_owned(), val);
            }
            // Listed but not readable (e.g. removed meanwhile): not part of the state.
            Err(sys::Errno::ENODATA) => {}
            Err(e) => {
                return Err(format!(
                    "getxattr {} {}: {}",
                    path.display(),
                    String::from_utf8_lossy(xname),
                    e.desc()
                ))
            }
        }
    }
    Ok(out)
}

/// An `O_PATH` fd of the parent of `path` and the last name (None: `path` is a root to use as is).
pub fn at(path: &Path) -> Result<(std::os::fd::OwnedFd, Option<std::ffi::CString>), String> {
    at_errno(path).map_err(|e| format!("open parent of {}: {}", path.display(), e.desc()))
}

/// Like [`at`], with the plain errno (what a step reports).
pub fn at_errno(
    path: &Path,
) -> Result<(std::os::fd::OwnedFd, Option<std::ffi::CString>), sys::Errno> {
    match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) => {
            // A bare name is relative to the working directory.
            let p = if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            };
            let fd = sys::open_path(p, libc::O_PATH | libc::O_DIRECTORY)?;
            Ok((fd, Some(sys::cstr(n)?)))
        }
        _ => Ok((
            sys::open_path(path, libc::O_PATH | libc::O_DIRECTORY)?,
            None,
        )),
    }
}

fn internal_xattr(name: &str) -> bool {
    name.starts_with("trusted.overlay.")
        || name.starts_with("user.overlay.")
        || name.starts_with("trusted.unionfs.")
        || name.starts_with("user.unionfs.")
        || name.starts_with("user.fuseoverlayfs.")
        || name.starts_with("trusted.fuseoverlayfs.")
}

fn is_opaque_xattrs(x: &BTreeMap<String, Vec<u8>>) -> bool {
    [
        "trusted.overlay.opaque",
        "user.overlay.opaque",
        "user.fuseoverlayfs.opaque",
    ]
    .iter()
    .any(|k| x.get(*k).is_some_and(|v| v == b"y"))
}

/// Captures one node at `path` (lstat, content, target, xattrs).
pub fn node(path: &Path) -> Result<Node, String> {
    let (dir, name) = at(path)?;
    match name {
        Some(n) => node_at(sys::fd(&dir), &n, path),
        None => {
            // A root: name it through its parent so the same code applies.
            let parent = path.join("..");
            let pfd = sys::open_path(&parent, libc::O_PATH | libc::O_DIRECTORY)
                .map_err(|e| format!("open {}: {}", parent.display(), e.desc()))?;
            let me = sys::cstr(path.file_name().unwrap_or(OsStr::new(".")))
                .map_err(|e| e.desc().to_string())?;
            node_at(sys::fd(&pfd), &me, path)
        }
    }
}

/// Captures `name` in the directory `dir`, file data included (`path` is for messages).
fn node_at(dir: BorrowedFd<'_>, name: &CStr, path: &Path) -> Result<Node, String> {
    let st =
        sys::fstatat(dir, name).map_err(|e| format!("lstat {}: {}", path.display(), e.desc()))?;
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Symlink,
        libc::S_IFIFO => Kind::Fifo,
        libc::S_IFCHR => Kind::Chardev,
        libc::S_IFBLK => Kind::Blockdev,
        libc::S_IFSOCK => Kind::Socket,
        _ => Kind::File,
    };
    let mut n = Node {
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size as u64,
        nlink: st.st_nlink as u64,
        ino: st.st_ino,
        mtime: st.st_mtime as i64,
        mtime_nsec: st.st_mtime_nsec as i64,
        ctime: st.st_ctime as i64,
        ctime_nsec: st.st_ctime_nsec as i64,
        alloc: st.st_blocks as u64 * 512,
        rdev: [libc::major(st.st_rdev), libc::minor(st.st_rdev)],
        digest: digest_bytes(b""),
        ..Node::default()
    };
    match kind {
        Kind::Symlink => {
            let t = sys::readlinkat(dir, name)
                .map_err(|e| format!("readlink {}: {}", path.display(), e.desc()))?;
            n.target = Some(String::from_utf8_lossy(&t).into_owned());
        }
        Kind::File => {
            let fd = open_noatime(dir, name, libc::O_RDONLY | libc::O_NOFOLLOW)
                .map_err(|e| format!("open {}: {}", path.display(), e.desc()))?;
            (n.digest, n.data) = file_digest(sys::fd(&fd), n.size, path)?;
        }
        _ => {}
    }
    n.xattrs = xattrs_at(sys::At::new(dir, name), path)?;
    Ok(n)
}

/// Captures the tree under `root` (which must be a directory; a symlink to one is followed,
/// as layer paths may be). Any depth: paths longer than PATH_MAX are walked one directory
/// fd at a time, and no file's atime moves.
pub fn capture(root: &Path, how: ReadAs) -> Result<Tree, String> {
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let root = root.as_path();
    let mut t = Tree::default();
    let mut rootnode = node(root)?;
    if how == ReadAs::Layer {
        normalize(&mut rootnode);
    }
    t.nodes.insert(".".into(), rootnode);
    walk(root, how, &mut t)?;
    Ok(t)
}

fn normalize(n: &mut Node) {
    if n.kind == Kind::Dir && is_opaque_xattrs(&n.xattrs) {
        n.opaque = true;
    }
    n.xattrs.retain(|k, _| !internal_xattr(k));
}

/// One directory of the walk: its tree path, the names still to visit and its identity.
struct Level {
    rel: String,
    names: Vec<Vec<u8>>,
    id: (u64, u64),
}

fn dir_level(fd: BorrowedFd<'_>, rel: String, real: &Path) -> Result<Level, String> {
    let err = |what: &str, e: sys::Errno| format!("{what} {}: {}", real.display(), e.desc());
    let st = sys::fstat(fd).map_err(|e| err("stat", e))?;
    let mut names: Vec<Vec<u8>> = sys::read_dir(fd)
        .map_err(|e| err("readdir", e))?
        .into_iter()
        .map(|e| e.name)
        .collect();
    // Visited by popping: sorted backwards, visited in order.
    names.sort_unstable_by(|a, b| b.cmp(a));
    Ok(Level {
        rel,
        names,
        id: (st.st_dev, st.st_ino),
    })
}

fn walk(root: &Path, how: ReadAs, t: &mut Tree) -> Result<(), String> {
    let real = |rel: &str| {
        if rel == "." {
            root.to_path_buf()
        } else {
            root.join(rel)
        }
    };
    let open_dir = |dir: BorrowedFd<'_>, name: &CStr, rel: &str| {
        sys::openat(
            dir,
            name,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0,
        )
        .map_err(|e| format!("open {}: {}", real(rel).display(), e.desc()))
    };
    let mut cur = sys::open_path(root, libc::O_PATH | libc::O_DIRECTORY)
        .map_err(|e| format!("open {}: {}", root.display(), e.desc()))?;
    let mut stack = vec![dir_level(sys::fd(&cur), ".".into(), root)?];
    // Only the directory being read is held open: a tree thousands of levels deep would need
    // as many fds otherwise. Going back up is `..`, checked to be the directory we came from.
    while let Some(top) = stack.last_mut() {
        let Some(name) = top.names.pop() else {
            let done = stack.pop().map(|l| l.rel).unwrap_or_default();
            if let Some(parent) = stack.last() {
                let up = open_dir(sys::fd(&cur), c"..", &parent.rel)?;
                let st = sys::fstat(sys::fd(&up))
                    .map_err(|e| format!("stat {}: {}", real(&parent.rel).display(), e.desc()))?;
                if (st.st_dev, st.st_ino) != parent.id {
                    return Err(format!(
                        "{} moved while its tree was captured (from below {})",
                        real(&done).display(),
                        real(&parent.rel).display()
                    ));
                }
                cur = up;
            }
            continue;
        };
        let dir = top.rel.clone();
        let text = name_text(&name);
        let p = join(&dir, &text);
        let full = real(&p);
        let cname = sys::cstr(OsStr::from_bytes(&name)).map_err(|e| e.desc().to_string())?;
        if how == ReadAs::Layer {
            if name == b".wh..wh..opq" {
                if let Some(n) = t.nodes.get_mut(&dir) {
                    n.opaque = true;
                }
                continue;
            }
            if name.starts_with(b".wh..wh.") {
                continue;
            }
            if let Some(hidden) = name.strip_prefix(b".wh.") {
                t.whiteouts.insert(join(&dir, &name_text(hidden)));
                continue;
            }
        }
        if sys::fstatat(sys::fd(&cur), &cname).err() == Some(sys::Errno::ENOENT) {
            t.ghosts.insert(p);
            continue;
        }
        let mut n = node_at(sys::fd(&cur), &cname, &full)?;
        if how == ReadAs::Layer {
            if n.kind == Kind::Chardev && n.rdev == [0, 0] {
                t.whiteouts.insert(p);
                continue;
            }
            normalize(&mut n);
        }
        let is_dir = n.kind == Kind::Dir;
        t.nodes.insert(p.clone(), n);
        if is_dir {
            let child = open_dir(sys::fd(&cur), &cname, &p)?;
            stack.push(dir_level(sys::fd(&child), p, &full)?);
            cur = child;
        }
    }
    Ok(())
}

/// The names directly inside `dir` in a layer tree: (entries, whiteouts).
fn children(t: &Tree, dir: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let direct = |p: &String| {
        let (parent, _) = split(p);
        parent == dir && p != "."
    };
    let e = t
        .nodes
        .keys()
        .filter(|p| direct(p))
        .map(|p| split(p).1.to_string())
        .collect();
    let w = t
        .whiteouts
        .iter()
        .filter(|p| direct(p))
        .map(|p| split(p).1.to_string())
        .collect();
    (e, w)
}

/// The view a stack of layer trees (topmost first) must show, by the OCI/overlay rules.
///
/// Directory link counts follow our contract (2 + subdirectories); inode numbers are not
/// modelled (0).
pub fn merge(layers: &[&Tree]) -> Tree {
    let mut out = Tree::default();
    let roots: Vec<usize> = (0..layers.len())
        .filter(|i| layers[*i].nodes.contains_key("."))
        .collect();
    let mut contrib = Vec::new();
    for i in roots {
        contrib.push(i);
        if layers[i].nodes["."].opaque {
            break;
        }
    }
    if let Some(top) = contrib.first() {
        let mut root = layers[*top].nodes["."].clone();
        root.opaque = false;
        out.nodes.insert(".".into(), root);
        merge_dir(layers, ".", &contrib, &mut out);
    }
    out
}

fn merge_dir(layers: &[&Tree], dir: &str, contrib: &[usize], out: &mut Tree) {
    let mut names = BTreeSet::new();
    for &i in contrib {
        names.extend(children(layers[i], dir).0);
    }
    let mut subdirs = 0;
    for name in names {
        if name.starts_with(".wh.") {
            continue;
        }
        let p = join(dir, &name);
        let mut found: Option<Node> = None;
        let mut dirs = Vec::new();
        for &i in contrib {
            let l = layers[i];
            if let Some(n) = l.nodes.get(&p) {
                match (&found, n.kind == Kind::Dir) {
                    (None, false) => {
                        found = Some(n.clone());
                        break;
                    }
                    (None, true) => {
                        found = Some(n.clone());
                        dirs.push(i);
                        if n.opaque {
                            break;
                        }
                    }
                    (Some(_), false) => break,
                    (Some(_), true) => {
                        dirs.push(i);
                        if n.opaque {
                            break;
                        }
                    }
                }
            }
            // A whiteout hides the layers below its own, never an entry beside it.
            if l.whiteouts.contains(&p) {
                break;
            }
        }
        if let Some(mut n) = found {
            n.opaque = false;
            n.ino = 0;
            let is_dir = n.kind == Kind::Dir;
            out.nodes.insert(p.clone(), n);
            if is_dir {
                subdirs += 1;
                merge_dir(layers, &p, &dirs, out);
            }
        }
    }
    if let Some(d) = out.nodes.get_mut(dir) {
        d.nlink = 2 + subdirs;
    }
}

/// Which attributes a comparison of two trees looks at.
#[derive(Debug, Clone, Copy)]
pub struct Fields {
    /// st_nlink of non-directories.
    pub nlink: bool,
    /// st_nlink of directories.
    pub dir_nlink: bool,
    /// mtime of non-directories.
    pub mtime: bool,
    /// Which paths share an inode (hard links), non-directories only.
    pub ino_classes: bool,
    /// mtimes (directories too) where either side still has a fixed time from the layers
    /// (before [`FIXED_TIMES_BEFORE`]): times set "now" by two runs never match exactly, but a
    /// layer's time that one side kept and the other changed is a real difference.
    pub fixed_mtimes: bool,
}

/// Layer entries in generated scenarios get mtimes before this (2001-09-09).
pub const FIXED_TIMES_BEFORE: i64 = 1_000_000_000 + 86_400;

impl Fields {
    /// What two live views of the same operations must agree on.
    pub const VIEWS: Fields = Fields {
        nlink: true,
        dir_nlink: false,
        mtime: false,
        ino_classes: true,
        fixed_mtimes: true,
    };
    /// What a live view and the model merge of its layers must agree on.
    pub const SEMANTIC: Fields = Fields {
        nlink: false,
        dir_nlink: false,
        mtime: true,
        ino_classes: false,
        fixed_mtimes: false,
    };
}

/// One difference between two trees.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Difference {
    /// The path.
    pub path: String,
    /// The attribute ("exists", "type", "mode", ...).
    pub field: String,
    /// Value in the first tree.
    pub a: String,
    /// Value in the second tree.
    pub b: String,
}

fn show_data(n: &Node) -> String {
    match &n.data {
        Some(d) => format!("{:?}", String::from_utf8_lossy(&d[..d.len().min(200)])),
        None => format!("<{} bytes, digest {:016x}>", n.size, n.digest),
    }
}

fn ino_classes(t: &Tree) -> BTreeMap<String, String> {
    let mut first: BTreeMap<u64, String> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (p, n) in &t.nodes {
        if n.kind == Kind::Dir {
            continue;
        }
        let rep = first.entry(n.ino).or_insert_with(|| p.clone()).clone();
        out.insert(p.clone(), rep);
    }
    out
}

/// Every difference between two trees in the chosen fields, in path order.
pub fn diff(a: &Tree, b: &Tree, f: Fields) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut d = |path: &str, field: &str, x: String, y: String| {
        out.push(Difference {
            path: path.to_string(),
            field: field.to_string(),
            a: x,
            b: y,
        })
    };
    for g in a.ghosts.symmetric_difference(&b.ghosts) {
        let s = |t: &Tree| {
            if t.ghosts.contains(g) {
                "listed by readdir, but lookup says ENOENT".to_string()
            } else {
                "not listed".to_string()
            }
        };
        d(g, "listed", s(a), s(b));
    }
    let paths: BTreeSet<&String> = a.nodes.keys().chain(b.nodes.keys()).collect();
    let (ca, cb) = (ino_classes(a), ino_classes(b));
    for p in paths {
        let (x, y) = match (a.nodes.get(p), b.nodes.get(p)) {
            (Some(x), Some(y)) => (x, y),
            (x, y) => {
                let s = |n: Option<&Node>| match n {
                    Some(n) => format!("{} {}", n.kind.name(), show_data(n)),
                    None => "absent".to_string(),
                };
                d(p, "exists", s(x), s(y));
                continue;
            }
        };
        if x.kind != y.kind {
            d(p, "type", x.kind.name().into(), y.kind.name().into());
            continue;
        }
        if x.mode != y.mode {
            d(
                p,
                "mode",
                format!("{:04o}", x.mode),
                format!("{:04o}", y.mode),
            );
        }
        if (x.uid, x.gid) != (y.uid, y.gid) {
            d(
                p,
                "owner",
                format!("{}:{}", x.uid, x.gid),
                format!("{}:{}", y.uid, y.gid),
            );
        }
        let dir = x.kind == Kind::Dir;
        if !dir && x.size != y.size {
            d(p, "size", x.size.to_string(), y.size.to_string());
        }
        if x.kind == Kind::File && x.digest != y.digest {
            d(p, "content", show_data(x), show_data(y));
        }
        if x.target != y.target {
            d(
                p,
                "target",
                format!("{:?}", x.target),
                format!("{:?}", y.target),
            );
        }
        if matches!(x.kind, Kind::Chardev | Kind::Blockdev) && x.rdev != y.rdev {
            d(p, "rdev", format!("{:?}", x.rdev), format!("{:?}", y.rdev));
        }
        if x.xattrs != y.xattrs {
            d(p, "xattrs", show_xattrs(&x.xattrs), show_xattrs(&y.xattrs));
        }
        let nl = if dir { f.dir_nlink } else { f.nlink };
        if nl && x.nlink != y.nlink {
            d(p, "nlink", x.nlink.to_string(), y.nlink.to_string());
        }
        if f.mtime && !dir && (x.mtime, x.mtime_nsec) != (y.mtime, y.mtime_nsec) {
            d(
                p,
                "mtime",
                format!("{}.{:09}", x.mtime, x.mtime_nsec),
                format!("{}.{:09}", y.mtime, y.mtime_nsec),
            );
        }
        if f.fixed_mtimes
            && x.kind != Kind::Symlink
            && (x.mtime < FIXED_TIMES_BEFORE || y.mtime < FIXED_TIMES_BEFORE)
            && (x.mtime, x.mtime_nsec) != (y.mtime, y.mtime_nsec)
        {
            d(
                p,
                "mtime (a layer's time kept on one side only)",
                format!("{}.{:09}", x.mtime, x.mtime_nsec),
                format!("{}.{:09}", y.mtime, y.mtime_nsec),
            );
        }
        if f.ino_classes && !dir && ca.get(p) != cb.get(p) {
            d(
                p,
                "same inode as",
                ca.get(p).cloned().unwrap_or_default(),
                cb.get(p).cloned().unwrap_or_default(),
            );
        }
    }
    out
}

/// Every change between two captures of one directory, all fields compared (ctime and inode
/// numbers included): one message per changed path, `label` first.
pub fn changes(label: &str, a: &Tree, b: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    let paths: BTreeSet<&String> = a.nodes.keys().chain(b.nodes.keys()).collect();
    for p in paths {
        match (a.nodes.get(p), b.nodes.get(p)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => {
                let (vx, vy) = (
                    serde_json::to_value(x).unwrap_or_default(),
                    serde_json::to_value(y).unwrap_or_default(),
                );
                let fields: Vec<String> = match (vx.as_object(), vy.as_object()) {
                    (Some(ox), Some(oy)) => ox
                        .iter()
                        .filter(|(k, v)| oy.get(*k) != Some(v))
                        .map(|(k, v)| {
                            format!("{k} {v} -> {}", oy.get(k).cloned().unwrap_or_default())
                        })
                        .collect(),
                    _ => vec!["changed".into()],
                };
                out.push(format!("{label} {p} was modified: {}", fields.join(", ")));
            }
            (Some(_), None) => out.push(format!("{label} {p} was removed")),
            (None, Some(_)) => out.push(format!("{label} {p} was created")),
            (None, None) => {}
        }
    }
    for w in a.whiteouts.difference(&b.whiteouts) {
        out.push(format!("{label} whiteout {w} was removed"));
    }
    for w in b.whiteouts.difference(&a.whiteouts) {
        out.push(format!("{label} whiteout {w} was created"));
    }
    for g in a.ghosts.symmetric_difference(&b.ghosts) {
        out.push(format!(
            "{label} {g}: listed but not found by lookup {}",
            if b.ghosts.contains(g) {
                "after"
            } else {
                "before"
            }
        ));
    }
    out
}

/// Checks one node against an expectation; returns one message per mismatch.
pub fn check_node(
    label: &str,
    path: &str,
    n: &Node,
    e: &NodeExpect,
    t: Option<&Tree>,
) -> Vec<String> {
    let mut errs = Vec::new();
    let mut bad = |field: &str, want: String, got: String| {
        errs.push(format!(
            "{label} {path}: {field}: expected {want}, got {got}"
        ))
    };
    if let Some(k) = e.kind {
        if k != n.kind {
            bad("type", k.name().into(), n.kind.name().into());
        }
    }
    if let Some(c) = &e.content {
        if n.kind != Kind::File || digest_bytes(c.as_bytes()) != n.digest {
            bad("content", format!("{c:?}"), show_data(n));
        }
    }
    if let Some(s) = e.size {
        if s != n.size {
            bad("size", s.to_string(), n.size.to_string());
        }
    }
    if let Some(m) = e.mode {
        if m != n.mode {
            bad("mode", format!("{m:04o}"), format!("{:04o}", n.mode));
        }
    }
    if let Some(u) = e.uid {
        if u != n.uid {
            bad("uid", u.to_string(), n.uid.to_string());
        }
    }
    if let Some(g) = e.gid {
        if g != n.gid {
            bad("gid", g.to_string(), n.gid.to_string());
        }
    }
    if let Some(m) = e.mtime {
        if m != n.mtime {
            bad("mtime", m.to_string(), n.mtime.to_string());
        }
    }
    if let Some(m) = e.mtime_nsec {
        if m != n.mtime_nsec {
            bad("mtime_nsec", m.to_string(), n.mtime_nsec.to_string());
        }
    }
    if let Some(tg) = &e.target {
        if Some(tg) != n.target.as_ref() {
            bad("target", format!("{tg:?}"), format!("{:?}", n.target));
        }
    }
    if let Some(l) = e.nlink {
        if l != n.nlink {
            bad("nlink", l.to_string(), n.nlink.to_string());
        }
    }
    if let Some(r) = e.rdev {
        if r != n.rdev {
            bad("rdev", format!("{r:?}"), format!("{:?}", n.rdev));
        }
    }
    if let Some(x) = &e.xattrs {
        let want: BTreeMap<String, Vec<u8>> = x
            .iter()
            .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
            .collect();
        if want != n.xattrs {
            bad("xattrs", format!("{x:?}"), show_xattrs(&n.xattrs));
        }
    }
    if let Some(o) = e.opaque {
        if o != n.opaque {
            bad("opaque", o.to_string(), n.opaque.to_string());
        }
    }
    if let Some(b) = e.max_blocks_bytes {
        if n.alloc > b {
            bad(
                "allocated bytes",
                format!("at most {b}"),
                n.alloc.to_string(),
            );
        }
    }
    if let (Some(other), Some(t)) = (&e.same_ino_as, t) {
        match t.nodes.get(other) {
            Some(o) if o.ino == n.ino => {}
            Some(o) => bad(
                "st_ino",
                format!("{} (that of {other})", o.ino),
                n.ino.to_string(),
            ),
            None => bad(
                "st_ino",
                format!("that of {other}"),
                format!("{other} absent"),
            ),
        }
    }
    if let (Some(c), Some(t)) = (e.children, t) {
        let got = children(t, path).0.len();
        if c != got {
            bad("entries", c.to_string(), got.to_string());
        }
    }
    errs
}

/// Checks a tree against expectations; returns one message per mismatch.
pub fn check_tree(label: &str, t: &Tree, e: &TreeExpect) -> Vec<String> {
    let mut errs = Vec::new();
    let mut listed = BTreeSet::new();
    listed.insert(".".to_string());
    for ne in &e.entries {
        let p = if ne.path.is_empty() {
            "."
        } else {
            ne.path.as_str()
        };
        let mut q = p;
        loop {
            listed.insert(q.to_string());
            if q == "." {
                break;
            }
            q = split(q).0;
        }
        if ne.kind == Some(Kind::Whiteout) {
            if !t.whiteouts.contains(p) {
                errs.push(format!("{label} {p}: expected a whiteout, found none"));
            }
            continue;
        }
        match t.nodes.get(p) {
            Some(n) => errs.extend(check_node(label, p, n, ne, Some(t))),
            None => errs.push(format!("{label} {p}: expected to exist, it does not")),
        }
    }
    for a in &e.absent {
        if t.nodes.contains_key(a.as_str()) {
            errs.push(format!("{label} {a}: expected absent, it exists"));
        }
        if let Some(w) = a.strip_prefix("whiteout:") {
            if t.whiteouts.contains(w) {
                errs.push(format!("{label} {w}: expected no whiteout, found one"));
            }
        }
    }
    if e.exact {
        for p in t.nodes.keys() {
            if !listed.contains(p) {
                errs.push(format!("{label} {p}: not expected, but it exists"));
            }
        }
        for w in &t.whiteouts {
            if !listed.contains(w) {
                errs.push(format!("{label} {w}: whiteout not expected, but it exists"));
            }
        }
    }
    errs
}

/// A readable listing of a tree, one line per path.
pub fn render(t: &Tree) -> String {
    let mut s = String::new();
    for (p, n) in &t.nodes {
        let _ = write!(
            s,
            "  {p:<30} {:<8} {:04o} {}:{}",
            n.kind.name(),
            n.mode,
            n.uid,
            n.gid
        );
        match n.kind {
            Kind::File => {
                let _ = write!(s, " nlink={} {}", n.nlink, show_data(n));
            }
            Kind::Symlink => {
                let _ = write!(s, " -> {}", n.target.as_deref().unwrap_or(""));
            }
            Kind::Dir if n.opaque => s.push_str(" opaque"),
            Kind::Chardev | Kind::Blockdev => {
                let _ = write!(s, " {}:{}", n.rdev[0], n.rdev[1]);
            }
            _ => {}
        }
        if !n.xattrs.is_empty() {
            let _ = write!(s, " xattrs={}", show_xattrs(&n.xattrs));
        }
        s.push('\n');
    }
    for w in &t.whiteouts {
        let _ = writeln!(s, "  {w:<30} whiteout");
    }
    s
}
