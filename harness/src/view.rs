//! Capturing trees (the merged view, an upper, a lower) and comparing them.
//!
//! A layer is read into the neutral notation: `.wh.NAME` files and 0/0 char devices become
//! whiteouts, `.wh..wh..opq` and the opaque xattrs become an `opaque` flag, and internal
//! bookkeeping (our `.wh..wh.*` work dir, `*.overlay.*`/`*.unionfs.*`/`*.fuseoverlayfs.*`
//! xattrs) is dropped. That makes uppers written by different implementations comparable, and
//! [`merge`] computes the view a stack of such layers must produce (the OCI layer rules).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::scenario::{Kind, NodeExpect, TreeExpect};
use unionfs::sys;

/// File content kept literally up to this size; larger files are compared by digest.
const KEEP_BYTES: u64 = 64 * 1024;

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
    /// Allocated bytes (st_blocks * 512).
    pub alloc: u64,
    /// Symlink target.
    pub target: Option<String>,
    /// File content when small.
    pub data: Option<Vec<u8>>,
    /// FNV-1a digest of the whole content of a file.
    pub digest: u64,
    /// Device numbers.
    pub rdev: [u32; 2],
    /// Extended attributes (values as lossy text).
    pub xattrs: BTreeMap<String, String>,
    /// Layer trees only: the directory is opaque.
    pub opaque: bool,
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
    /// Everything as it is on disk, without reading file data (metadata, ctime included, is
    /// enough to see a change).
    Raw,
}

fn fnv(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= *b as u64;
        *h = h.wrapping_mul(0x100_0000_01b3);
    }
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

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
pub fn xattrs(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let (dir, name) = at(path)?;
    let at = match &name {
        Some(n) => sys::At::new(sys::fd(&dir), n),
        None => sys::At::dir(sys::fd(&dir)),
    };
    xattrs_at(at, path)
}

fn xattrs_at(at: sys::At<'_>, path: &Path) -> Result<BTreeMap<String, String>, String> {
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
                out.insert(
                    String::from_utf8_lossy(xname).into_owned(),
                    String::from_utf8_lossy(&val[..len]).into_owned(),
                );
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

fn is_opaque_xattrs(x: &BTreeMap<String, String>) -> bool {
    [
        "trusted.overlay.opaque",
        "user.overlay.opaque",
        "user.fuseoverlayfs.opaque",
    ]
    .iter()
    .any(|k| x.get(*k).map(|v| v == "y").unwrap_or(false))
}

/// Captures one node at `path` (lstat, content, target, xattrs).
pub fn node(path: &Path) -> Result<Node, String> {
    let (dir, name) = at(path)?;
    match name {
        Some(n) => node_at(sys::fd(&dir), &n, path, true),
        None => {
            // A root: name it through its parent so the same code applies.
            let parent = path.join("..");
            let pfd = sys::open_path(&parent, libc::O_PATH | libc::O_DIRECTORY)
                .map_err(|e| format!("open {}: {}", parent.display(), e.desc()))?;
            let me = sys::cstr(path.file_name().unwrap_or(OsStr::new(".")))
                .map_err(|e| e.desc().to_string())?;
            node_at(sys::fd(&pfd), &me, path, true)
        }
    }
}

/// Captures `name` in the directory `dir` (`path` is for messages); `content`: read file data.
fn node_at(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &std::ffi::CStr,
    path: &Path,
    content: bool,
) -> Result<Node, String> {
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
        alloc: st.st_blocks as u64 * 512,
        rdev: [libc::major(st.st_rdev), libc::minor(st.st_rdev)],
        digest: FNV_START,
        ..Node::default()
    };
    match kind {
        Kind::Symlink => {
            let t = sys::readlinkat(dir, name)
                .map_err(|e| format!("readlink {}: {}", path.display(), e.desc()))?;
            n.target = Some(String::from_utf8_lossy(&t).into_owned());
        }
        Kind::File if content => {
            let fd = sys::openat(dir, name, libc::O_RDONLY | libc::O_NOFOLLOW, 0)
                .map_err(|e| format!("open {}: {}", path.display(), e.desc()))?;
            let mut f = std::fs::File::from(fd);
            let mut buf = vec![0u8; (n.size as usize + 1).clamp(4096, 1 << 20)];
            let mut keep = Vec::new();
            let mut total = 0u64;
            loop {
                let r = f
                    .read(&mut buf)
                    .map_err(|e| format!("read {}: {e}", path.display()))?;
                if r == 0 {
                    break;
                }
                fnv(&mut n.digest, &buf[..r]);
                if total < KEEP_BYTES {
                    keep.extend_from_slice(&buf[..r]);
                }
                total += r as u64;
            }
            if total <= KEEP_BYTES {
                n.data = Some(keep);
            }
        }
        _ => {}
    }
    n.xattrs = xattrs_at(sys::At::new(dir, name), path)?;
    Ok(n)
}

/// Captures the tree under `root` (which must be a directory).
pub fn capture(root: &Path, how: ReadAs) -> Result<Tree, String> {
    let mut t = Tree::default();
    let mut rootnode = node(root)?;
    if how == ReadAs::Layer {
        normalize(&mut rootnode);
        if root.join(".wh..wh..opq").exists() {
            rootnode.opaque = true;
        }
    }
    t.nodes.insert(".".into(), rootnode);
    walk(root, ".", how, &mut t)?;
    Ok(t)
}

fn normalize(n: &mut Node) {
    if n.kind == Kind::Dir && is_opaque_xattrs(&n.xattrs) {
        n.opaque = true;
    }
    n.xattrs.retain(|k, _| !internal_xattr(k));
}

fn walk(root: &Path, dir: &str, how: ReadAs, t: &mut Tree) -> Result<(), String> {
    let real = if dir == "." {
        root.to_path_buf()
    } else {
        root.join(dir)
    };
    let rd = std::fs::read_dir(&real).map_err(|e| format!("readdir {}: {e}", real.display()))?;
    let mut names = Vec::new();
    for e in rd {
        let e = e.map_err(|e| format!("readdir {}: {e}", real.display()))?;
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    let dfd = sys::open_path(&real, libc::O_PATH | libc::O_DIRECTORY)
        .map_err(|e| format!("open {}: {}", real.display(), e.desc()))?;
    for name in names {
        let p = join(dir, &name);
        let full = real.join(&name);
        let cname = sys::cstr(OsStr::new(&name)).map_err(|e| e.desc().to_string())?;
        if how == ReadAs::Layer {
            if name == ".wh..wh..opq" {
                if let Some(n) = t.nodes.get_mut(dir) {
                    n.opaque = true;
                }
                continue;
            }
            if name.starts_with(".wh..wh.") {
                continue;
            }
            if let Some(hidden) = name.strip_prefix(".wh.") {
                t.whiteouts.insert(join(dir, hidden));
                continue;
            }
        }
        if sys::fstatat(sys::fd(&dfd), &cname).err() == Some(sys::Errno::ENOENT) {
            t.ghosts.insert(p);
            continue;
        }
        let mut n = node_at(sys::fd(&dfd), &cname, &full, how != ReadAs::Raw)?;
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
            walk(root, &p, how, t)?;
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
            d(
                p,
                "xattrs",
                format!("{:?}", x.xattrs),
                format!("{:?}", y.xattrs),
            );
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
        let mut h = FNV_START;
        fnv(&mut h, c.as_bytes());
        if n.kind != Kind::File || h != n.digest {
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
        if *x != n.xattrs {
            bad("xattrs", format!("{x:?}"), format!("{:?}", n.xattrs));
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
            let _ = write!(s, " xattrs={:?}", n.xattrs);
        }
        s.push('\n');
    }
    for w in &t.whiteouts {
        let _ = writeln!(s, "  {w:<30} whiteout");
    }
    s
}
