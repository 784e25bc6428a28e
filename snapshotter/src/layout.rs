//! Where snapshots live on disk under `--root`, and the filesystem steps on them.
//!
//! ```text
//! ROOT/metadata.redb          the store (store.rs)
//! ROOT/snapshots/ID/fs        the snapshot's files: an upper while active, a layer once committed
//! ROOT/snapshots/ID/work      the union's work dir (same filesystem as fs, as unionfs-mount wants)
//! ROOT/snapshots/new-ID       being created; renamed to ID inside the store transaction
//! ROOT/snapshots/rm-ID        being removed, after the store forgot it
//! ```
//!
//! Directories are named by a number the store hands out, never by key, so a Commit (key to
//! name) moves nothing on disk, and anything here that the store does not know is an orphan
//! that the recovery pass may delete.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The paths under one `--root`.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

/// What a snapshot's own files take (not its parents'), as containerd's overlay counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// Bytes of allocated blocks, hard links counted once.
    pub size: i64,
    /// Inodes, hard links counted once.
    pub inodes: i64,
}

impl Layout {
    /// The layout under `root`, which must be absolute and free of the characters the mount
    /// options use as separators.
    pub fn new(root: &Path) -> Result<Layout> {
        if !root.is_absolute() {
            return Err(Error::InvalidArgument(format!(
                "--root {}: give an absolute path (containerd mounts the paths it is handed \
                 from its own working directory)",
                root.display()
            )));
        }
        let s = root.to_string_lossy();
        if let Some(c) = s.chars().find(|c| matches!(c, ',' | ':' | '\\')) {
            return Err(Error::InvalidArgument(format!(
                "--root {}: the path holds '{c}', which separates mount options or layers in \
                 the mounts handed to containerd; choose a root without ',', ':' or '\\'",
                root.display()
            )));
        }
        Ok(Layout {
            root: root.to_path_buf(),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The metadata database file.
    pub fn db(&self) -> PathBuf {
        self.root.join("metadata.redb")
    }

    /// The directory holding every snapshot's directory.
    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// Snapshot `id`'s directory.
    pub fn dir(&self, id: u64) -> PathBuf {
        self.snapshots().join(id.to_string())
    }

    /// Snapshot `id`'s files (the upper of an active snapshot, a lower of its children).
    pub fn fs(&self, id: u64) -> PathBuf {
        self.dir(id).join("fs")
    }

    /// Snapshot `id`'s union work dir.
    pub fn work(&self, id: u64) -> PathBuf {
        self.dir(id).join("work")
    }

    /// Creates the root and its snapshots directory (mode 0700: layers may hold secrets).
    pub fn create(&self) -> Result<()> {
        let snaps = self.snapshots();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&snaps)
            .map_err(|e| Error::io("creating", &snaps, e))
    }

    /// Makes snapshot `id`'s directory with empty `fs` and `work`, complete before it appears
    /// under its final name (built as `new-ID`, then renamed).
    pub fn make_snapshot_dir(&self, id: u64) -> Result<()> {
        let final_dir = self.dir(id);
        if final_dir.exists() {
            // An orphan of a crash the recovery pass has not seen yet: the store never knew it.
            remove_tree(&final_dir)?;
        }
        let tmp = self.snapshots().join(format!("new-{id}"));
        if tmp.exists() {
            remove_tree(&tmp)?;
        }
        let mut b = fs::DirBuilder::new();
        b.mode(0o700);
        b.create(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
        // fs is the container's root directory: 0755 like any root, as overlay makes it.
        b.mode(0o755);
        for sub in ["fs", "work"] {
            let p = tmp.join(sub);
            b.create(&p).map_err(|e| Error::io("creating", &p, e))?;
        }
        fs::rename(&tmp, &final_dir).map_err(|e| Error::io("renaming into place", &tmp, e))
    }

    /// Moves snapshot `id`'s directory out of the way (`rm-ID`) and deletes it. Called after
    /// the store forgot the snapshot; a crash in between leaves an orphan for recovery.
    pub fn remove_snapshot_dir(&self, id: u64) -> Result<()> {
        let dir = self.dir(id);
        let trash = self.snapshots().join(format!("rm-{id}"));
        match fs::rename(&dir, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("moving aside for removal", &dir, e)),
        }
        crate::hooks::pause_point("remove-after-commit");
        remove_tree(&trash)
    }

    /// Deletes what the store does not know under `snapshots/`: directories of unknown ids,
    /// and `new-*`/`rm-*` left by a crash. Returns the names removed.
    pub fn remove_orphans(&self, known: &HashSet<u64>) -> Result<Vec<String>> {
        let snaps = self.snapshots();
        let mut removed = Vec::new();
        let entries = match fs::read_dir(&snaps) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
            Err(e) => return Err(Error::io("listing", &snaps, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("listing", &snaps, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let orphan = match name.parse::<u64>() {
                Ok(id) => !known.contains(&id),
                Err(_) => name.starts_with("new-") || name.starts_with("rm-"),
            };
            if orphan {
                remove_tree(&entry.path())?;
                removed.push(name);
            }
        }
        Ok(removed)
    }
}

/// Removes a tree, tolerating entries that vanish meanwhile (a concurrent Cleanup).
pub fn remove_tree(path: &Path) -> Result<()> {
    for _ in 0..3 {
        match fs::remove_dir_all(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !path.exists() => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("removing", path, e)),
        }
    }
    fs::remove_dir_all(path).map_err(|e| Error::io("removing", path, e))
}

/// The disk usage of the tree at `path`: blocks (512-byte units) and inodes, each inode
/// counted once, symlinks not followed, the tree's root directory included.
pub fn usage(path: &Path) -> Result<Usage> {
    let mut seen = HashSet::new();
    let mut total = Usage::default();
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            // Files come and go while a container runs: count what is there.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("measuring", &p, e)),
        };
        if seen.insert((m.dev(), m.ino())) {
            total.inodes += 1;
            total.size += (m.blocks() as i64) * 512;
        }
        if m.is_dir() {
            let rd = match fs::read_dir(&p) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("listing", &p, e)),
            };
            for e in rd {
                let e = e.map_err(|e| Error::io("listing", &p, e))?;
                stack.push(e.path());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_that_would_break_mount_options_are_refused() {
        for bad in ["relative/root", "/a,b", "/a:b", "/a\\b"] {
            let e = Layout::new(Path::new(bad)).unwrap_err();
            assert_eq!(
                e.code(),
                containerd_snapshots::tonic::Code::InvalidArgument,
                "{bad}"
            );
        }
        assert!(Layout::new(Path::new("/var/lib/unionfs-snapshotter")).is_ok());
    }

    #[test]
    fn usage_counts_hard_links_once_and_follows_no_symlink() {
        let d = std::env::temp_dir().join(format!("unionfs-snap-usage-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("sub/f"), vec![1u8; 10000]).unwrap();
        fs::hard_link(d.join("sub/f"), d.join("g")).unwrap();
        std::os::unix::fs::symlink("/usr", d.join("l")).unwrap();
        let u = usage(&d).unwrap();
        // d, sub, f (= g), l
        assert_eq!(u.inodes, 4);
        let f_blocks = fs::metadata(d.join("sub/f")).unwrap().blocks() as i64 * 512;
        assert!(u.size >= f_blocks && u.size < f_blocks + 4 * 8192, "{u:?}");
        fs::remove_dir_all(&d).unwrap();
    }
}
