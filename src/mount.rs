//! Mounting a layer stack and serving it: the `/dev/fuse` mount, worker threads, clean unmount.

use std::path::{Path, PathBuf};

/// What to mount: the layer directories and how to serve them.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// Read-only lower layers, topmost first (like overlayfs `lowerdir=`).
    pub lowers: Vec<PathBuf>,
    /// The writable upper layer; `None` gives a read-only union (EROFS on writes).
    pub upper: Option<PathBuf>,
    /// Staging directory on the upper's filesystem; default: a reserved dir inside the upper.
    pub workdir: Option<PathBuf>,
    /// FUSE worker threads; 0 picks a default for the machine.
    pub threads: usize,
    /// Let every user reach the mount (`allow_other`); needed for container roots.
    pub allow_other: bool,
    /// Honour set-user-id bits on files in the union.
    pub suid: bool,
    /// Allow device nodes in the union to be opened as devices.
    pub dev: bool,
    /// Mount read-only even when an upper is given.
    pub read_only: bool,
    /// The source name shown in /proc/mounts.
    pub fsname: String,
}

impl MountConfig {
    /// A configuration for `lowers` (topmost first) under an optional `upper`.
    pub fn new(lowers: Vec<PathBuf>, upper: Option<PathBuf>) -> Self {
        MountConfig {
            lowers,
            upper,
            workdir: None,
            threads: 0,
            allow_other: true,
            suid: true,
            dev: false,
            read_only: false,
            fsname: "unionfs".to_string(),
        }
    }
}

/// A live mount served by threads of this process; dropping it unmounts (lazily) and stops them.
#[derive(Debug)]
pub struct MountGuard {
    mountpoint: PathBuf,
}

impl MountGuard {
    /// The directory the union is mounted on.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }
}
