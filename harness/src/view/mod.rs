//! Capturing trees (the merged view, an upper, a lower) and comparing them.
//!
//! A layer is read into the neutral notation: `.wh.NAME` files and 0/0 char devices become
//! whiteouts, `.wh..wh..opq` and the opaque xattrs become an `opaque` flag, and internal
//! bookkeeping (our `.wh..wh.*` work dir, `*.overlay.*`/`*.unionfs.*`/`*.fuseoverlayfs.*`
//! xattrs) is dropped. That makes uppers written by different implementations comparable, and
//! [`merge`] computes the view a stack of such layers must produce (the OCI layer rules).
//! Comparisons of trees live in `compare`, the content digest in `digest` (both re-exported).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CStr, OsStr};
use std::fmt::Write as _;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::scenario::Kind;
use crate::{Error, Result};
use unionfs::sys;

mod compare;
mod digest;

pub use compare::{
    changes, check_node, check_tree, diff, render, Difference, Fields, FIXED_TIMES_BEFORE,
};
pub use digest::digest_bytes;
use digest::file_digest;

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

fn ser_data<S: serde::Serializer>(
    d: &Option<Vec<u8>>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&xattr_text(d)),
        None => s.serialize_none(),
    }
}

fn ser_xattrs<S: serde::Serializer>(
    x: &BTreeMap<String, Vec<u8>>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
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
pub fn xattrs(path: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let (dir, name) = at(path)?;
    let at = match &name {
        Some(n) => sys::At::new(sys::fd(&dir), n),
        None => sys::At::dir(sys::fd(&dir)),
    };
    xattrs_at(at, path)
}

fn xattrs_at(at: sys::At<'_>, path: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    // Ask the sizes first: most nodes have no xattrs, and big zeroed buffers per node make
    // capturing a 10,000-entry tree slow.
    let size = match sys::listxattr(at, &mut []) {
        Ok(n) => n,
        Err(sys::Errno::ENOTSUP) => 0,
        Err(e) => return Err(Error::at("listxattr", path, e.desc())),
    };
    if size == 0 {
        return Ok(BTreeMap::new());
    }
    let mut buf = vec![0u8; size + 1024];
    let n = match sys::listxattr(at, &mut buf) {
        Ok(n) => n,
        Err(sys::Errno::ENOTSUP) => 0,
        Err(e) => return Err(Error::at("listxattr", path, e.desc())),
    };
    let mut out = BTreeMap::new();
    for xname in buf[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let cname = sys::cstr(OsStr::from_bytes(xname))
            .map_err(|e| Error::at("xattr name of", path, e.desc()))?;
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
                return Err(Error::msg(format!(
                    "getxattr {} {}: {}",
                    path.display(),
                    String::from_utf8_lossy(xname),
                    e.desc()
                )))
            }
        }
    }
    Ok(out)
}

/// An `O_PATH` fd of the parent of `path` and the last name (None: `path` is a root to use as is).
pub fn at(path: &Path) -> Result<(std::os::fd::OwnedFd, Option<std::ffi::CString>)> {
    at_errno(path).map_err(|e| Error::at("open parent of", path, e.desc()))
}

/// Like [`at`], with the plain errno (what a step reports).
pub fn at_errno(path: &Path) -> sys::SysResult<(std::os::fd::OwnedFd, Option<std::ffi::CString>)> {
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
pub fn node(path: &Path) -> Result<Node> {
    let (dir, name) = at(path)?;
    match name {
        Some(n) => node_at(sys::fd(&dir), &n, path),
        None => {
            // A root: name it through its parent so the same code applies.
            let parent = path.join("..");
            let pfd = sys::open_path(&parent, libc::O_PATH | libc::O_DIRECTORY)
                .map_err(|e| Error::at("open", &parent, e.desc()))?;
            let me = sys::cstr(path.file_name().unwrap_or(OsStr::new(".")))
                .map_err(|e| Error::at("name of", path, e.desc()))?;
            node_at(sys::fd(&pfd), &me, path)
        }
    }
}

/// Captures `name` in the directory `dir`, file data included (`path` is for messages).
fn node_at(dir: BorrowedFd<'_>, name: &CStr, path: &Path) -> Result<Node> {
    let st = sys::fstatat(dir, name).map_err(|e| Error::at("lstat", path, e.desc()))?;
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
            let t =
                sys::readlinkat(dir, name).map_err(|e| Error::at("readlink", path, e.desc()))?;
            n.target = Some(String::from_utf8_lossy(&t).into_owned());
        }
        Kind::File => {
            let fd = open_noatime(dir, name, libc::O_RDONLY | libc::O_NOFOLLOW)
                .map_err(|e| Error::at("open", path, e.desc()))?;
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
pub fn capture(root: &Path, how: ReadAs) -> Result<Tree> {
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

/// Directories this deep and deeper give up their fd while the walk is below them, and are
/// found again through `..`: fds stay bounded however deep a tree is.
const KEEP_FDS: usize = 128;

/// One directory of the walk: its tree path, the names still to visit, its identity (to check
/// a way back up through `..`; none for the root, whose fd is always kept) and its fd.
struct Level {
    rel: String,
    names: Vec<Vec<u8>>,
    id: Option<(u64, u64)>,
    fd: Option<OwnedFd>,
}

fn dir_level(fd: OwnedFd, rel: String, id: Option<(u64, u64)>, real: &Path) -> Result<Level> {
    // No stat of the directory here: an extra GETATTR would change what a union's kernel
    // caches, and so what the test that captured the tree sees next.
    let mut names: Vec<Vec<u8>> = sys::read_dir(sys::fd(&fd))
        .map_err(|e| Error::at("readdir", real, e.desc()))?
        .into_iter()
        .map(|e| e.name)
        .collect();
    // Visited by popping: sorted backwards, visited in order.
    names.sort_unstable_by(|a, b| b.cmp(a));
    Ok(Level {
        rel,
        names,
        id,
        fd: Some(fd),
    })
}

fn walk(root: &Path, how: ReadAs, t: &mut Tree) -> Result<()> {
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
        .map_err(|e| Error::at("open", &real(rel), e.desc()))
    };
    let rootfd = sys::open_path(root, libc::O_PATH | libc::O_DIRECTORY)
        .map_err(|e| Error::at("open", root, e.desc()))?;
    let mut stack = vec![dir_level(rootfd, ".".into(), None, root)?];
    while let Some(top) = stack.last_mut() {
        let Some(name) = top.names.pop() else {
            let done = stack.pop().and_then(|l| l.fd);
            if let (Some(parent), Some(done)) = (stack.last_mut(), done) {
                if parent.fd.is_none() {
                    let up = open_dir(sys::fd(&done), c"..", &parent.rel)?;
                    let st = sys::fstat(sys::fd(&up))
                        .map_err(|e| Error::at("stat", &real(&parent.rel), e.desc()))?;
                    if Some((st.st_dev, st.st_ino)) != parent.id {
                        return Err(Error::msg(format!(
                            "{} moved while its tree was captured; capture it while nothing \
                             else changes it",
                            real(&parent.rel).display()
                        )));
                    }
                    parent.fd = Some(up);
                }
            }
            continue;
        };
        let dir = top.rel.clone();
        let Some(cur) = top.fd.as_ref() else {
            return Err(Error::msg(format!(
                "{}: lost its fd while its tree was captured (a harness bug: report it)",
                real(&dir).display()
            )));
        };
        let cur = sys::fd(cur);
        let text = name_text(&name);
        let p = join(&dir, &text);
        let full = real(&p);
        let cname = sys::cstr(OsStr::from_bytes(&name))
            .map_err(|e| Error::at("name of", &full, e.desc()))?;
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
        let st = match sys::fstatat(cur, &cname) {
            Err(sys::Errno::ENOENT) => {
                t.ghosts.insert(p);
                continue;
            }
            r => r.map_err(|e| Error::at("lstat", &full, e.desc()))?,
        };
        let mut n = node_at(cur, &cname, &full)?;
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
            let child = open_dir(cur, &cname, &p)?;
            if stack.len() > KEEP_FDS {
                if let Some(l) = stack.last_mut() {
                    l.fd = None;
                }
            }
            stack.push(dir_level(child, p, Some((st.st_dev, st.st_ino)), &full)?);
        }
    }
    Ok(())
}

/// The names directly inside `dir` in a layer tree: (entries, whiteouts).
pub(crate) fn children(t: &Tree, dir: &str) -> (BTreeSet<String>, BTreeSet<String>) {
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
