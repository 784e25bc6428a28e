//! The scenario format: a TOML file describing layers, steps through the mount and expectations.
//!
//! Paths are relative to the layer root or the mount point. Layers use one neutral notation for
//! deletions (`type = "whiteout"`, `opaque = "marker"`); [`crate::build`] writes them
//! in the on-disk format of the implementation under test, so one file runs on all of them.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Every op a step may name.
pub const OPS: &[&str] = &[
    "create",
    "write",
    "append",
    "truncate",
    "open",
    "read_fd",
    "write_fd",
    "close",
    "fsync",
    "fchmod",
    "fchown",
    "mkdir",
    "rmdir",
    "unlink",
    "rename",
    "link",
    "symlink",
    "mknod",
    "chmod",
    "chown",
    "utimes",
    "setxattr",
    "removexattr",
    "getxattr",
    "listxattr",
    "read",
    "readlink",
    "readdir",
    "dino",
    "stat",
    "mmap_write",
    "rm_rf",
    "parallel_write",
    "remount",
    "rotate",
    "setfacl",
    "getfacl",
    "read_as",
    "churn",
    "daemon_signal",
    "crash_copy_up",
];

/// One scenario: layers, steps and the expected outcome.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name; defaults to the file stem.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// What behaviour this checks, in one or two sentences.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub about: String,
    /// The docs/SCENARIOS.md line numbers this covers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub covers: Vec<u32>,
    /// Implementations this scenario applies to (empty: all); others report it as skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only: Vec<String>,
    /// Why the scenario is limited by `only` (a deliberate difference, a missing feature).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub only_reason: String,
    /// A known unionfs bug this scenario shows: on unionfs a failure is expected (XFAIL) and a
    /// pass is reported as a failure, so the line is removed when the bug is fixed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub known_bug: String,
    /// Implementations whose upper is not checked as a plain layer diff, with the reason (the
    /// runner otherwise checks for every scenario that upper+lowers reproduce the live view).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub upper_not_a_layer_on: BTreeMap<String, String>,
    /// Name the lower layer directories with a colon in them (`low:er0`, ...).
    #[serde(default, skip_serializing_if = "is_false")]
    pub colon_in_layer_paths: bool,
    /// Takes long (big trees): `cargo test` runs it only with UNIONFS_HARNESS_SLOW=1; the CLI
    /// always runs it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub slow: bool,
    /// Put all layers on a fresh tmpfs instead of the temp dir's filesystem (e.g. for xattr
    /// values larger than one ext4 block).
    #[serde(default, skip_serializing_if = "is_false")]
    pub tmpfs: bool,
    /// No upper layer: a read-only union.
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_upper: bool,
    /// Lower layers, topmost first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lower: Vec<Layer>,
    /// The initial upper layer (empty when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper: Option<Layer>,
    /// Operations through the mount, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step: Vec<Step>,
    /// Expected state at the end.
    #[serde(default, skip_serializing_if = "Expect::is_default")]
    pub expect: Expect,
    /// Per-implementation replacements of `expect` (where an implementation differs by design).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub expect_on: BTreeMap<String, Expect>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The contents of one layer directory.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    /// An existing layer directory to start from (OCI `.wh.` format or kernel format; a
    /// relative path is taken from the scenario file's directory). It is copied, never used
    /// in place, and `entries` are applied on top.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Entries, created in order; missing parent directories are created with mode 0755.
    #[serde(default)]
    pub entries: Vec<Entry>,
}

/// The kind of a layer entry or of a node in a view.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A regular file.
    #[default]
    File,
    /// A directory.
    Dir,
    /// A symbolic link (`target`).
    Symlink,
    /// A hard link to the entry at `target` (same layer).
    Hardlink,
    /// A named pipe.
    Fifo,
    /// A character device (`rdev`).
    Chardev,
    /// A block device (`rdev`).
    Blockdev,
    /// A deletion marker for the name (`.wh.NAME`, or a 0/0 char device for the kernel).
    Whiteout,
    /// `count` files named `PATH/f0 .. PATH/f{count-1}` (big directories).
    Many,
    /// A socket (only seen in views).
    Socket,
}

impl Kind {
    /// The lowercase name used in files and reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            Kind::Hardlink => "hardlink",
            Kind::Fifo => "fifo",
            Kind::Chardev => "chardev",
            Kind::Blockdev => "blockdev",
            Kind::Whiteout => "whiteout",
            Kind::Many => "many",
            Kind::Socket => "socket",
        }
    }
}

/// One entry of a layer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Path inside the layer.
    pub path: String,
    /// What it is (default: a file).
    #[serde(default, rename = "type")]
    pub kind: Kind,
    /// File content (text in a scenario file; any bytes from Rust).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Bytes>,
    /// File size: the file is extended to it with a hole after `content` (sparse files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Symlink target, or the path of the entry a hard link points to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Permission bits (setuid/setgid/sticky included); default 0644 files, 0755 dirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Owner uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Owner gid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Modification time, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<i64>,
    /// Nanoseconds part of `mtime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_nsec: Option<i64>,
    /// Access time, seconds since the epoch (default: left as creating the entry set it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atime: Option<i64>,
    /// Nanoseconds part of `atime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atime_nsec: Option<i64>,
    /// Device numbers `[major, minor]` of a device node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdev: Option<[u32; 2]>,
    /// Extended attributes (name → value; text in a scenario file, any bytes from Rust).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, Bytes>,
    /// Makes a directory opaque: "marker" (`.wh..wh..opq`, or the kernel's xattr), "trusted" or
    /// "user" (the `*.overlay.opaque=y` xattr written literally).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opaque: Option<String>,
    /// Number of files for `type = "many"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

/// A file content or xattr value: text in a scenario file, any bytes when built from Rust
/// (binary data, file capabilities). Only text can be written back to a scenario file.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub Vec<u8>);

impl Bytes {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<&str> for Bytes {
    fn from(s: &str) -> Self {
        Bytes(s.as_bytes().to_vec())
    }
}

impl From<String> for Bytes {
    fn from(s: String) -> Self {
        Bytes(s.into_bytes())
    }
}

impl From<&[u8]> for Bytes {
    fn from(b: &[u8]) -> Self {
        Bytes(b.to_vec())
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(b: Vec<u8>) -> Self {
        Bytes(b)
    }
}

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(t) => s.serialize_str(t),
            Err(_) => Err(serde::ser::Error::custom(
                "binary content or xattr value: a scenario file holds text only",
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d).map(Bytes::from)
    }
}

/// One operation through the mount and its expected result.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The operation (see [`OPS`]).
    pub op: String,
    /// The path it acts on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Second path: rename and link destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Symlink target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Data to write (create, write, append, write_fd, mmap_write) or an xattr value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Byte count: `data` is repeated to this length (big writes), or the length to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub len: Option<u64>,
    /// File offset for write, write_fd, read_fd, mmap_write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Size for truncate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Mode for create, mkdir, open, chmod, mknod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// uid for chown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// gid for chown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Seconds for utimes (mtime; atime is left alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<i64>,
    /// Nanoseconds for utimes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_nsec: Option<i64>,
    /// Open flags (rdonly wronly rdwr creat excl trunc append) or rename flags (noreplace exchange).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// Name of a kept file descriptor (open, read_fd, write_fd, close, fsync, fchmod, fchown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<String>,
    /// xattr name, or the node type for mknod (fifo, chardev).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Device numbers for mknod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdev: Option<[u32; 2]>,
    /// Expected result: "ok" (default) or an errno name such as "ENOENT".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
    /// Per-implementation expected results where an implementation differs by design.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub expect_on: BTreeMap<String, String>,
    /// Expected data from read, read_fd, readlink, getxattr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_data: Option<String>,
    /// Expected names from readdir (any order) or listxattr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_names: Option<Vec<String>>,
    /// Expected attributes from stat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_stat: Option<NodeExpect>,
    /// stat: remember st_ino under this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub save_ino: Option<String>,
    /// stat: st_ino must equal a saved one, or `layer:N:PATH` (lower N, 0 = top) or `upper:PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_ino: Option<String>,
}

/// Expected end state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The merged view at the mount point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<TreeExpect>,
    /// The upper directory after unmount (whiteouts and opaque dirs in the neutral notation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper: Option<TreeExpect>,
}

impl Expect {
    fn is_default(&self) -> bool {
        *self == Expect::default()
    }
}

/// Expectations about a tree.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TreeExpect {
    /// The tree holds exactly the listed paths (their ancestors implied), nothing else.
    #[serde(default, skip_serializing_if = "is_false")]
    pub exact: bool,
    /// Paths and the attributes they must have (unlisted attributes are not checked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<NodeExpect>,
    /// Paths that must not exist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub absent: Vec<String>,
}

/// Attributes one path must have; only the given fields are checked.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeExpect {
    /// Path (empty in a stat step).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// Type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    /// Whole content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Permission bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Owner uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Owner gid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// mtime seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<i64>,
    /// mtime nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_nsec: Option<i64>,
    /// Symlink target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// st_nlink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nlink: Option<u64>,
    /// Device numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdev: Option<[u32; 2]>,
    /// Exactly these xattrs (internal ones excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xattrs: Option<BTreeMap<String, String>>,
    /// Upper only: the directory is opaque.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opaque: Option<bool>,
    /// Allocated bytes at most this many (sparse files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_blocks_bytes: Option<u64>,
    /// Same st_ino as this other path of the same tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_ino_as: Option<String>,
    /// Number of entries (directories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children: Option<usize>,
}

/// Reads and parses a scenario file; the name defaults to the file stem.
pub fn load(path: &Path) -> Result<Scenario> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::msg(format!("{}: cannot read: {e}", path.display())))?;
    let mut s = parse(&text).map_err(|e| e.context(path.display()))?;
    if s.name.is_empty() {
        s.name = path
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
    }
    let base = path.parent().unwrap_or(Path::new("."));
    for l in s.lower.iter_mut().chain(s.upper.iter_mut()) {
        if let Some(f) = &l.from {
            let p = base.join(f);
            if !p.is_dir() {
                return Err(Error::msg(format!(
                    "{}: layer from = {f:?}: {} is not a directory (paths are relative to the \
                     scenario file)",
                    path.display(),
                    p.display()
                )));
            }
            l.from = Some(p.to_string_lossy().into_owned());
        }
    }
    Ok(s)
}

/// Parses scenario text and checks it for mistakes a TOML parser cannot see.
pub fn parse(text: &str) -> Result<Scenario> {
    let s: Scenario =
        toml::from_str(text).map_err(|e| Error::msg(format!("not a valid scenario: {e}")))?;
    validate(&s)?;
    Ok(s)
}

/// Writes a scenario back as TOML (used for shrunk fuzz cases).
pub fn to_toml(s: &Scenario) -> Result<String> {
    toml::to_string(s).map_err(|e| Error::msg(format!("cannot write scenario: {e}")))
}

fn validate(s: &Scenario) -> Result<()> {
    for (i, layer) in s.lower.iter().chain(s.upper.iter()).enumerate() {
        for e in &layer.entries {
            check_rel(&e.path).map_err(|m| m.context(format!("layer {i}")))?;
            match e.kind {
                Kind::Symlink | Kind::Hardlink if e.target.is_none() => {
                    return Err(Error::msg(format!("layer {i}: {} needs a target", e.path)))
                }
                Kind::Many if e.count.is_none() => {
                    return Err(Error::msg(format!(
                        "layer {i}: {} (many) needs a count",
                        e.path
                    )))
                }
                _ => {}
            }
        }
    }
    for (i, st) in s.step.iter().enumerate() {
        if !OPS.contains(&st.op.as_str()) {
            return Err(Error::msg(format!(
                "step {}: unknown op {:?}; known: {}",
                i + 1,
                st.op,
                OPS.join(" ")
            )));
        }
        if let Some(p) = &st.path {
            check_rel(p).map_err(|m| m.context(format!("step {}", i + 1)))?;
        }
    }
    Ok(())
}

fn check_rel(p: &str) -> Result<()> {
    if p.starts_with('/') || p.split('/').any(|c| c == "..") {
        return Err(Error::msg(format!(
            "path {p:?} must be relative and stay inside the tree (no leading /, no ..)"
        )));
    }
    Ok(())
}
