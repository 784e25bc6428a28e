//! Comparing captured trees: with each other (two implementations, before and after) and with
//! a scenario's expectations; and showing them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::digest_bytes;
use super::{children, split, xattr_text, Node, Tree};
use crate::scenario::{Kind, NodeExpect, TreeExpect};

fn show_xattrs(x: &BTreeMap<String, Vec<u8>>) -> String {
    let m: BTreeMap<&String, String> = x.iter().map(|(k, v)| (k, xattr_text(v))).collect();
    format!("{m:?}")
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
