//! Merged directory listings: one snapshot per open directory stream, so offsets are stable and
//! every name is returned exactly once however the reader seeks.

use std::collections::HashSet;
use std::os::fd::AsFd;

use crate::layer::resolve::DirSet;
use crate::layer::stack::Stack;
use crate::layer::whiteout;
use crate::sys::{self, SysResult};

/// One visible name of a merged directory.
#[derive(Debug, Clone)]
pub struct MergedEntry {
    /// The name.
    pub name: Vec<u8>,
    /// Its `DT_*` type in the layer that shows it (never `DT_UNKNOWN`).
    pub dtype: u8,
    /// The layer that shows it.
    pub layer: crate::layer::LayerIdx,
    /// `d_ino` in that layer.
    pub d_ino: u64,
}

impl MergedEntry {
    /// The union inode number of this entry, as lookup would report it, without a stat: the
    /// layer's `d_ino`, or for upper entries the copy-up origin.
    pub fn union_ino(&self, stack: &Stack, set: &DirSet) -> u64 {
        let dev = stack.layers.get(self.layer).map_or(0, |l| l.dev);
        if stack.is_upper(self.layer) {
            if let (Some(dir), Ok(name)) = (
                set.upper_fd(stack),
                std::ffi::CString::new(self.name.clone()),
            ) {
                let mut buf = [0u8; 8];
                if let Ok(8) = sys::getxattr(
                    sys::At::new(dir.as_fd(), &name),
                    &stack.origin_xattr,
                    &mut buf,
                ) {
                    let v = u64::from_le_bytes(buf);
                    if v > 1 {
                        return v;
                    }
                }
            }
        }
        stack.union_ino(dev, self.d_ino)
    }
}

/// Lists the visible names of the merged directory `set`, upper entries first, then each lower
/// layer's new names, in layer order. `skip_work` hides our work dir in the upper root.
pub fn list(stack: &Stack, set: &DirSet, skip_work: bool) -> SysResult<Vec<MergedEntry>> {
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut hidden: HashSet<Vec<u8>> = HashSet::new();
    let mut out = Vec::new();
    for (pos, (l, dir)) in set.dirs.iter().enumerate() {
        let entries = sys::read_dir(dir.as_fd())?;
        let mut layer_hides = Vec::new();
        let mut wh_files = Vec::new();
        for e in entries {
            if let Some(target) = whiteout::whited_out(&e.name) {
                layer_hides.push(target.to_vec());
                wh_files.push(target.to_vec());
                continue;
            }
            if whiteout::is_hidden(&e.name) {
                continue;
            }
            if skip_work && stack.is_upper(*l) && e.name == whiteout::DEFAULT_WORK_NAME.as_bytes() {
                continue;
            }
            let mut dtype = e.dtype;
            if dtype == libc::DT_CHR || dtype == libc::DT_UNKNOWN {
                if let Ok(c) = std::ffi::CString::new(e.name.clone()) {
                    if let Ok(st) = sys::fstatat(dir.as_fd(), &c) {
                        if whiteout::is_chardev_whiteout(&st) {
                            layer_hides.push(e.name);
                            continue;
                        }
                        dtype = dtype_of(st.st_mode);
                    }
                }
            }
            if hidden.contains(&e.name) || !seen.insert(e.name.clone()) {
                continue;
            }
            out.push(MergedEntry {
                name: e.name,
                dtype,
                layer: *l,
                d_ino: e.ino,
            });
        }
        hidden.extend(layer_hides);
        // The whole directory was read: lookups in it need not stat whiteout files any more.
        if !stack.is_upper(*l) {
            set.learn_whiteouts(stack, pos, wh_files);
        }
    }
    Ok(out)
}

/// True when the merged directory shows no name at all (rmdir and rename-over may proceed).
pub fn is_empty(stack: &Stack, set: &DirSet, skip_work: bool) -> SysResult<bool> {
    Ok(list(stack, set, skip_work)?.is_empty())
}

/// Number of subdirectories the merged directory shows (st_nlink = 2 + this).
pub fn count_subdirs(stack: &Stack, set: &DirSet, skip_work: bool) -> SysResult<u32> {
    let n = list(stack, set, skip_work)?
        .iter()
        .filter(|e| e.dtype == libc::DT_DIR)
        .count();
    Ok(n as u32)
}

/// The `DT_*` value for an `st_mode`.
pub fn dtype_of(mode: u32) -> u8 {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => libc::DT_DIR,
        libc::S_IFREG => libc::DT_REG,
        libc::S_IFLNK => libc::DT_LNK,
        libc::S_IFIFO => libc::DT_FIFO,
        libc::S_IFSOCK => libc::DT_SOCK,
        libc::S_IFCHR => libc::DT_CHR,
        libc::S_IFBLK => libc::DT_BLK,
        _ => libc::DT_UNKNOWN,
    }
}
