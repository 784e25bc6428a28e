//! Layer entries written in Rust: the same [`Entry`] values a scenario file lists, for tests
//! that build their layers in code, e.g. `file("d/f", "data").mode(0o600).mtime(1, 0)`.
//! [`crate::build::build_layer`] writes them in an implementation's on-disk format.

use crate::scenario::{Bytes, Entry, Kind};

fn entry(path: &str, kind: Kind) -> Entry {
    Entry {
        path: path.to_string(),
        kind,
        ..Entry::default()
    }
}

/// A regular file holding `content`.
pub fn file(path: &str, content: impl AsRef<[u8]>) -> Entry {
    Entry {
        content: Some(Bytes::from(content.as_ref())),
        ..entry(path, Kind::File)
    }
}

/// A file of `size` bytes that is all hole (sparse).
pub fn sparse(path: &str, size: u64) -> Entry {
    Entry {
        size: Some(size),
        ..entry(path, Kind::File)
    }
}

/// A directory.
pub fn dir(path: &str) -> Entry {
    entry(path, Kind::Dir)
}

/// A symlink to `target`.
pub fn symlink(path: &str, target: &str) -> Entry {
    Entry {
        target: Some(target.to_string()),
        ..entry(path, Kind::Symlink)
    }
}

/// A hard link to the entry `target` of the same layer (listed before it).
pub fn hardlink(path: &str, target: &str) -> Entry {
    Entry {
        target: Some(target.to_string()),
        ..entry(path, Kind::Hardlink)
    }
}

/// A named pipe.
pub fn fifo(path: &str) -> Entry {
    entry(path, Kind::Fifo)
}

/// A character device `major:minor`.
pub fn chardev(path: &str, major: u32, minor: u32) -> Entry {
    Entry {
        rdev: Some([major, minor]),
        ..entry(path, Kind::Chardev)
    }
}

/// A block device `major:minor`.
pub fn blockdev(path: &str, major: u32, minor: u32) -> Entry {
    Entry {
        rdev: Some([major, minor]),
        ..entry(path, Kind::Blockdev)
    }
}

/// The deletion of `path`, in the format of the implementation under test.
pub fn wh(path: &str) -> Entry {
    entry(path, Kind::Whiteout)
}

/// The deletion of `path` as a 0/0 character device (kernel overlayfs's form) whatever the
/// implementation: unionfs must read that form too.
pub fn char_wh(path: &str) -> Entry {
    chardev(path, 0, 0).mode(0)
}

/// Directory `path`, opaque in the format of the implementation under test (`.wh..wh..opq`,
/// or `trusted.overlay.opaque=y` for the kernel).
pub fn opq(path: &str) -> Entry {
    Entry {
        opaque: Some("marker".into()),
        ..dir(path)
    }
}

/// Directory `path` made opaque by the xattr `name` = `y`, whatever the implementation.
pub fn opq_xattr(path: &str, name: &str) -> Entry {
    dir(path).xattr(name, "y")
}

impl Entry {
    /// With permission bits `m` (set-id and sticky bits included).
    pub fn mode(mut self, m: u32) -> Self {
        self.mode = Some(m);
        self
    }

    /// Owned by `uid`:`gid`.
    pub fn owner(mut self, uid: u32, gid: u32) -> Self {
        self.uid = Some(uid);
        self.gid = Some(gid);
        self
    }

    /// With this mtime (the atime stays as creating the entry set it unless given).
    pub fn mtime(mut self, sec: i64, nsec: i64) -> Self {
        self.mtime = Some(sec);
        self.mtime_nsec = Some(nsec);
        self
    }

    /// With this atime.
    pub fn atime(mut self, sec: i64, nsec: i64) -> Self {
        self.atime = Some(sec);
        self.atime_nsec = Some(nsec);
        self
    }

    /// With xattr `name` set to `value` (any bytes).
    pub fn xattr(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.xattrs
            .insert(name.to_string(), Bytes::from(value.as_ref()));
        self
    }
}
