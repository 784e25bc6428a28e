//! Name lookup through the layers: whiteouts (file and 0/0 char device forms), opaque
//! directories (marker file and xattrs), the same-layer rule, and directory merging.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};

use crate::layer::known::{self, Whiteouts};
use crate::layer::stack::{open_subdir, LayerIdx, Stack};
use crate::layer::whiteout;
use crate::sys::{self, Errno, SysResult};

/// A merged directory opened in each layer that contributes to it, top-down.
#[derive(Debug)]
pub struct DirSet {
    /// (layer, `O_PATH` directory fd) pairs, topmost first.
    pub dirs: Vec<(LayerIdx, OwnedFd)>,
    /// For deep stacks: which lower layers of this directory hold each name or its whiteout.
    /// Lower layers never change, so it is built once per opened set.
    index: std::sync::OnceLock<Option<LowerIndex>>,
    /// Per position in `dirs`: the lower directory's whiteouts when known (see `known`);
    /// `None` until a lookup or listing needed them.
    known: parking_lot::RwLock<Option<Vec<Option<Whiteouts>>>>,
}

/// Name → positions in `DirSet::dirs` (with `HAS_ENTRY` / `HAS_WHITEOUT`), lower layers only.
type LowerIndex = std::collections::HashMap<Vec<u8>, Vec<(usize, u8)>>;
const HAS_ENTRY: u8 = 1;
const HAS_WHITEOUT: u8 = 2;
/// Below this many lower layers, stat'ing each layer is cheaper than listing them all.
const INDEX_MIN_LOWERS: usize = 4;

impl DirSet {
    /// A set over already opened directories.
    pub fn from_dirs(dirs: Vec<(LayerIdx, OwnedFd)>) -> DirSet {
        DirSet {
            dirs,
            index: std::sync::OnceLock::new(),
            known: parking_lot::RwLock::new(None),
        }
    }

    fn lower_index(&self, stack: &Stack) -> Option<&LowerIndex> {
        self.index
            .get_or_init(|| {
                let lowers = self
                    .dirs
                    .iter()
                    .filter(|(l, _)| !stack.is_upper(*l))
                    .count();
                if lowers < INDEX_MIN_LOWERS {
                    return None;
                }
                let mut idx: LowerIndex = std::collections::HashMap::new();
                for (pos, (l, fd)) in self.dirs.iter().enumerate() {
                    if stack.is_upper(*l) {
                        continue;
                    }
                    let entries = sys::read_dir(fd.as_fd()).ok()?;
                    for e in entries {
                        let (name, flag) = match whiteout::whited_out(&e.name) {
                            Some(t) => (t.to_vec(), HAS_WHITEOUT),
                            None if whiteout::is_hidden(&e.name) => continue,
                            None => (e.name, HAS_ENTRY),
                        };
                        let v = idx.entry(name).or_default();
                        match v.last_mut() {
                            Some((p, f)) if *p == pos => *f |= flag,
                            _ => v.push((pos, flag)),
                        }
                    }
                }
                Some(idx)
            })
            .as_ref()
    }
}

impl DirSet {
    /// Opens the merged directory `rel` in `layers` (layers where it is missing are skipped:
    /// they can vanish only through our own changes, which the caller already knows about).
    pub fn open(stack: &Stack, rel: &[u8], layers: &[LayerIdx]) -> SysResult<DirSet> {
        let mut dirs = Vec::with_capacity(layers.len());
        for &l in layers {
            match stack.open_rel(l, rel, libc::O_PATH | libc::O_DIRECTORY) {
                Ok(fd) => dirs.push((l, fd)),
                Err(Errno::ENOENT) | Err(Errno::ENOTDIR) | Err(Errno::ELOOP) => continue,
                Err(e) => return Err(e),
            }
        }
        if dirs.is_empty() {
            return Err(Errno::ENOENT);
        }
        Ok(DirSet::from_dirs(dirs))
    }

    /// Whether lower position `pos` whites `name` out, when its whiteouts are known; `None`
    /// sends the caller to the layer.
    fn known_whiteout(&self, stack: &Stack, pos: usize, name: &[u8]) -> Option<bool> {
        if stack.known.is_empty() {
            return None;
        }
        if let Some(k) = self.known.read().as_ref() {
            return k.get(pos)?.as_ref().map(|s| s.contains(name));
        }
        let all: Vec<Option<Whiteouts>> = self
            .dirs
            .iter()
            .map(|(l, fd)| {
                if stack.is_upper(*l) {
                    return None;
                }
                stack.known.get(known::key_of(fd)?)
            })
            .collect();
        let answer = all.get(pos)?.as_ref().map(|s| s.contains(name));
        *self.known.write() = Some(all);
        answer
    }

    /// Records that a listing read lower position `pos` whole and found these `whiteouts`.
    pub fn learn_whiteouts(&self, stack: &Stack, pos: usize, whiteouts: Vec<Vec<u8>>) {
        let Some((l, fd)) = self.dirs.get(pos) else {
            return;
        };
        if stack.is_upper(*l) {
            return;
        }
        let Some(key) = known::key_of(fd) else {
            return;
        };
        let set = stack.known.learn(key, whiteouts);
        let mut k = self.known.write();
        let v = k.get_or_insert_with(|| vec![None; self.dirs.len()]);
        if let Some(slot) = v.get_mut(pos) {
            *slot = Some(set);
        }
    }

    /// The upper's fd of this directory, if it exists there.
    pub fn upper_fd(&self, stack: &Stack) -> Option<&OwnedFd> {
        self.dirs
            .first()
            .filter(|(l, _)| stack.is_upper(*l))
            .map(|(_, fd)| fd)
    }
}

/// A name as the union sees it.
#[derive(Debug, Clone)]
pub struct Found {
    /// The layer holding the visible (topmost) entry.
    pub layer: LayerIdx,
    /// Its stat in that layer.
    pub st: libc::stat,
    /// The union inode number.
    pub ino: u64,
    /// For directories: every layer that contributes to it, topmost first.
    pub dir_layers: Vec<LayerIdx>,
}

impl Found {
    /// True for a directory.
    pub fn is_dir(&self) -> bool {
        self.st.st_mode & libc::S_IFMT == libc::S_IFDIR
    }
}

/// True if directory `fd` is opaque: a `.wh..wh..opq` marker or an overlay opaque xattr.
pub fn is_opaque(fd: &OwnedFd) -> bool {
    if sys::fstatat(fd.as_fd(), whiteout::OPAQUE_MARKER).is_ok() {
        return true;
    }
    let mut buf = [0u8; 2];
    let at = sys::At::dir(fd.as_fd());
    whiteout::OPAQUE_XATTRS
        .iter()
        .any(|x| matches!(sys::getxattr(at, x, &mut buf), Ok(1) if buf[0] == b'y'))
}

/// True if the layer directory `dir` holds a whiteout for `name` (either form).
fn has_whiteout(dir: &OwnedFd, name: &[u8]) -> bool {
    // A name too long for the file form is whited out only by the char-device form, which
    // the stat of the name itself finds.
    if !whiteout::has_file_form(name) {
        return false;
    }
    let Ok(wh) = CString::new(whiteout::whiteout_for(name)) else {
        return false;
    };
    sys::fstatat(dir.as_fd(), &wh).is_ok()
}

/// Looks `name` up in the merged directory `set`. `Ok(None)` when the union has no such name.
pub fn lookup(stack: &Stack, set: &DirSet, name: &[u8]) -> SysResult<Option<Found>> {
    lookup_in(stack, set, name, false)
}

fn lookup_in(
    stack: &Stack,
    set: &DirSet,
    name: &[u8],
    lowers_only: bool,
) -> SysResult<Option<Found>> {
    if whiteout::is_hidden(name) {
        return Ok(None);
    }
    let cname = CString::new(name).map_err(|_| Errno::EINVAL)?;
    // With an index, only the upper and the lower layers that hold the name (or its whiteout)
    // are visited: the cost no longer grows with the layers above the one that has it.
    let index = set.lower_index(stack);
    let hits: Vec<(usize, u8)> = match index {
        Some(idx) => {
            let mut v: Vec<(usize, u8)> = set
                .dirs
                .iter()
                .enumerate()
                .filter(|(_, (l, _))| stack.is_upper(*l) && !lowers_only)
                .map(|(p, _)| (p, HAS_ENTRY | HAS_WHITEOUT))
                .collect();
            v.extend(idx.get(name).into_iter().flatten().copied());
            v
        }
        None => (0..set.dirs.len())
            .filter(|p| !(lowers_only && stack.is_upper(set.dirs[*p].0)))
            .map(|p| (p, HAS_ENTRY | HAS_WHITEOUT))
            .collect(),
    };
    // First the name itself, top down, until an entry ends the search: a non-directory, an
    // opaque directory, or a char-device whiteout. Only then the whiteout files above each
    // entry: a name no layer has needs no whiteout check at all (half the syscalls of a
    // failed lookup, the most common kind: PATH searches, imports, probes for config files).
    let mut entries: Vec<(usize, libc::stat)> = Vec::new();
    for (i, (pos, flags)) in hits.iter().enumerate() {
        let Some((_, dir)) = set.dirs.get(*pos) else {
            continue;
        };
        if flags & HAS_ENTRY == 0 {
            continue;
        }
        match sys::fstatat(dir.as_fd(), &cname) {
            Ok(st) if whiteout::is_chardev_whiteout(&st) => break,
            Ok(st) => {
                let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
                // A directory above merges only with directories below it.
                if !entries.is_empty() && !is_dir {
                    break;
                }
                entries.push((i, st));
                if !is_dir || is_opaque(&open_subdir(dir.as_fd(), &cname)?) {
                    break;
                }
            }
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    // A whiteout hides the layers below its own, never an entry beside it: an entry counts
    // only if no layer from the previous entry's (the top, for the first) down to just above
    // its own whites the name out.
    let whited_out = |i: usize| {
        let (pos, flags) = hits[i];
        let Some((l, dir)) = set.dirs.get(pos) else {
            return false;
        };
        let indexed = index.is_some() && !stack.is_upper(*l);
        flags & HAS_WHITEOUT != 0
            && (indexed
                || set
                    .known_whiteout(stack, pos, name)
                    .unwrap_or_else(|| has_whiteout(dir, name)))
    };
    let mut found: Option<Found> = None;
    let mut from = 0;
    for (i, st) in entries {
        if (from..i).any(whited_out) {
            break;
        }
        from = i;
        let (l, dir) = &set.dirs[hits[i].0];
        match &mut found {
            None => {
                let ino = stack.entry_ino(*l, sys::At::new(dir.as_fd(), &cname), &st);
                let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
                found = Some(Found {
                    layer: *l,
                    st,
                    ino,
                    dir_layers: if is_dir { vec![*l] } else { Vec::new() },
                });
            }
            Some(f) => f.dir_layers.push(*l),
        }
    }
    Ok(found)
}

/// Resolves a whole relative path through the union, component by component.
pub fn lookup_path(stack: &Stack, rel: &[u8]) -> SysResult<Option<Found>> {
    let mut layers = root_layers(stack);
    let mut cur: Vec<u8> = Vec::new();
    let comps: Vec<&[u8]> = rel
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    for (i, c) in comps.iter().enumerate() {
        let set = match DirSet::open(stack, &cur, &layers) {
            Ok(s) => s,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(f) = lookup(stack, &set, c)? else {
            return Ok(None);
        };
        if i + 1 == comps.len() {
            return Ok(Some(f));
        }
        if !f.is_dir() {
            return Ok(None);
        }
        layers = f.dir_layers;
        cur = crate::layer::stack::join(&cur, c);
    }
    Ok(None)
}

/// The layers of the root directory: every layer down to the first opaque root.
pub fn root_layers(stack: &Stack) -> Vec<LayerIdx> {
    let mut v = Vec::new();
    for (i, l) in stack.layers.iter().enumerate() {
        v.push(i);
        if let Ok(fd) = sys::openat(l.fd.as_fd(), c".", libc::O_PATH | libc::O_DIRECTORY, 0) {
            if is_opaque(&fd) {
                break;
            }
        }
    }
    v
}

/// True if some lower layer of `set` still shows `name` (so deleting it needs a whiteout).
/// The upper's whiteouts do not count: they are what we may be about to (re)write.
pub fn lower_has(stack: &Stack, set: &DirSet, name: &[u8]) -> SysResult<bool> {
    Ok(lookup_in(stack, set, name, true)?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::readdir;
    use crate::layer::StackConfig;

    /// A temp dir removed when dropped.
    struct Tmp(std::path::PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn after_a_listing_lower_whiteouts_come_from_memory_and_missing_names_skip_them() {
        let t = Tmp(std::env::temp_dir().join(format!(
            "unionfs-known-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        )));
        let (l1, l2) = (t.0.join("l1/d"), t.0.join("l2/d"));
        std::fs::create_dir_all(&l1).unwrap();
        std::fs::create_dir_all(&l2).unwrap();
        std::fs::write(l1.join(".wh.x"), "").unwrap();
        std::fs::write(l2.join("x"), "x").unwrap();
        std::fs::write(l2.join("y"), "y").unwrap();
        let stack = Stack::open(&StackConfig {
            lowers: vec![t.0.join("l1"), t.0.join("l2")],
            upper: None,
            workdir: None,
        })
        .unwrap();
        let root = root_layers(&stack);
        let set = DirSet::open(&stack, b"d", &root).unwrap();
        let names = |set: &DirSet| -> Vec<Vec<u8>> {
            let mut v: Vec<_> = readdir::list(&stack, set, false)
                .unwrap()
                .into_iter()
                .map(|e| e.name)
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&set), vec![b"y".to_vec()]);
        assert!(lookup(&stack, &set, b"x").unwrap().is_none());
        assert_eq!(lookup(&stack, &set, b"y").unwrap().unwrap().layer, 1);
        assert!(lookup(&stack, &set, b"z").unwrap().is_none());
        // Only to show where the answer comes from (lower layers never change under a union):
        // with the whiteout file gone from the disk, the set the listing learned still hides
        // x, in this directory set and in a new one for the same layer directories.
        std::fs::remove_file(l1.join(".wh.x")).unwrap();
        assert!(lookup(&stack, &set, b"x").unwrap().is_none());
        let again = DirSet::open(&stack, b"d", &root).unwrap();
        assert!(lookup(&stack, &again, b"x").unwrap().is_none());
        // A stack that never listed the directory asks the disk.
        let fresh = Stack::open(&StackConfig {
            lowers: vec![t.0.join("l1"), t.0.join("l2")],
            upper: None,
            workdir: None,
        })
        .unwrap();
        let set = DirSet::open(&fresh, b"d", &root_layers(&fresh)).unwrap();
        assert_eq!(lookup(&fresh, &set, b"x").unwrap().unwrap().layer, 1);
    }
}
