//! Lower files with several names: their paths (walked once per layer), the index that gives
//! every name of a copied-up one the same upper inode, and the link counts the view shows.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use super::{join, open_subdir, HardLinks, LayerIdx, Stack};
use crate::sys::{self, Errno, SysResult};

impl Stack {
    /// The multi-link files of lower layer `idx` (walked once, then kept: lowers never change).
    pub fn hardlinks(&self, idx: LayerIdx) -> Arc<HardLinks> {
        let mut all = self.hardlinks.lock();
        if let Some(h) = all.get(&idx) {
            return Arc::clone(h);
        }
        let mut map = HardLinks::new();
        if let Some(layer) = self.layers.get(idx) {
            if let Ok(root) =
                sys::openat(layer.fd.as_fd(), c".", libc::O_PATH | libc::O_DIRECTORY, 0)
            {
                collect_hardlinks(root.as_fd(), Vec::new(), &mut map, 0);
            }
        }
        map.retain(|_, v| v.len() > 1);
        let map = Arc::new(map);
        all.insert(idx, Arc::clone(&map));
        map
    }

    /// The index entry name of union inode `ino`.
    pub fn index_key(ino: u64) -> CString {
        CString::new(format!("{ino:016x}")).unwrap_or_default()
    }

    /// True when union inode `ino` has been copied up through the hard-link index.
    pub fn is_indexed(&self, ino: u64) -> bool {
        self.index
            .as_ref()
            .is_some_and(|i| sys::fstatat(i.as_fd(), &Self::index_key(ino)).is_ok())
    }

    fn nlink_key(ino: u64) -> CString {
        CString::new(format!("{ino:016x}.nlink")).unwrap_or_default()
    }

    /// The recorded link count of a lower multi-link file whose names changed through the
    /// union (copy-up, unlink, link), if there is one.
    pub fn nlink_record(&self, ino: u64) -> Option<u32> {
        let index = self.index.as_ref()?;
        let fd = sys::openat(index.as_fd(), &Self::nlink_key(ino), libc::O_RDONLY, 0).ok()?;
        let mut buf = [0u8; 16];
        let n = sys::pread(fd.as_fd(), &mut buf, 0).ok()?;
        std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
    }

    /// Records the link count the view shows for union inode `ino` (atomically replaced).
    pub fn set_nlink_record(&self, ino: u64, n: u32) -> SysResult<()> {
        let index = self.index.as_ref().ok_or(Errno::EROFS)?;
        let stage = self.stage_name();
        let fd = sys::openat(
            index.as_fd(),
            &stage,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            0o600,
        )?;
        sys::pwrite(fd.as_fd(), n.to_string().as_bytes(), 0)?;
        drop(fd);
        let key = Self::nlink_key(ino);
        sys::renameat2(index.as_fd(), &stage, index.as_fd(), &key, 0).inspect_err(|_| {
            let _ = sys::unlinkat(index.as_fd(), &stage, false);
        })
    }

    /// Forgets the link-count record of `ino` (every name is a plain upper link again).
    pub fn drop_nlink_record(&self, ino: u64) {
        if let Some(index) = &self.index {
            let _ = sys::unlinkat(index.as_fd(), &Self::nlink_key(ino), false);
        }
    }

    /// True when the link count of this regular file is tracked by us rather than by the
    /// layer: a lower file with several names, or one copied up through the index.
    pub fn tracks_nlink(&self, ino: u64, layer: LayerIdx, st: &libc::stat) -> bool {
        // A tracked file in the upper always has its index link beside its name; records and
        // index entries are only ever made for lower inodes with several names, and a lower
        // layer's link counts do not change.
        if st.st_nlink <= 1 {
            return false;
        }
        st.st_mode & libc::S_IFMT != libc::S_IFDIR
            && ((!self.is_upper(layer) && st.st_nlink > 1)
                || self.is_indexed(ino)
                || self.nlink_record(ino).is_some())
    }

    /// st_nlink as the union shows it: names deleted or added through the union are counted,
    /// and the index's own link is not a name in the view.
    pub fn view_nlink(&self, ino: u64, st: &libc::stat) -> u32 {
        let n = st.st_nlink as u32;
        if n <= 1 || st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return n;
        }
        if let Some(r) = self.nlink_record(ino) {
            return r;
        }
        if self.is_indexed(ino) {
            n - 1
        } else {
            n
        }
    }
}

fn collect_hardlinks(dir: BorrowedFd<'_>, rel: Vec<u8>, map: &mut HardLinks, depth: u32) {
    if depth > 4096 {
        return;
    }
    let Ok(entries) = sys::read_dir(dir) else {
        return;
    };
    for e in entries {
        let Ok(c) = CString::new(e.name.clone()) else {
            continue;
        };
        let path = join(&rel, &e.name);
        match e.dtype {
            libc::DT_DIR => {
                if let Ok(sub) = open_subdir(dir, &c) {
                    collect_hardlinks(sub.as_fd(), path, map, depth + 1);
                }
            }
            _ => {
                if let Ok(st) = sys::fstatat(dir, &c) {
                    if st.st_mode & libc::S_IFMT != libc::S_IFDIR && st.st_nlink > 1 {
                        map.entry(st.st_ino).or_default().push(path);
                    } else if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                        if let Ok(sub) = open_subdir(dir, &c) {
                            collect_hardlinks(sub.as_fd(), path, map, depth + 1);
                        }
                    }
                }
            }
        }
    }
}
