//! Whiteout files of lower-layer directories, known from a complete listing of them.
//!
//! A lookup of a name found in a lower layer must make sure no layer above whites it out:
//! with OCI whiteouts that is a second stat per layer above (`.wh.NAME`), and on a cold cache a
//! second disk read, since the whiteout's name hashes elsewhere in the directory. Lower layers
//! never change, so once a listing has read a lower directory whole, its whiteouts are known
//! for good and those stats are answered from memory. Kept per layer directory (device and
//! inode), so the knowledge outlives the kernel forgetting the union's directory.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::sys;

/// The names a lower directory whites out (the part after `.wh.`).
pub type Whiteouts = Arc<HashSet<Box<[u8]>>>;

/// Names kept in all sets together before they are all dropped (a bound on memory; most
/// directories have none).
const MAX_NAMES: usize = 1 << 20;

/// Known whiteout sets, by layer directory.
#[derive(Debug, Default)]
pub struct KnownWhiteouts {
    sets: Mutex<HashMap<(u64, u64), Whiteouts>>,
    names: AtomicUsize,
    any: AtomicBool,
}

/// The key of a layer directory: its device and inode.
pub fn key_of(dir: &OwnedFd) -> Option<(u64, u64)> {
    sys::fstat(dir.as_fd())
        .ok()
        .map(|st| (st.st_dev, st.st_ino))
}

impl KnownWhiteouts {
    /// True until some listing taught us a set (lookups then skip even the key's fstat).
    pub fn is_empty(&self) -> bool {
        !self.any.load(Ordering::Relaxed)
    }

    /// The whiteouts of the lower directory `key`, if a listing read it whole.
    pub fn get(&self, key: (u64, u64)) -> Option<Whiteouts> {
        self.sets.lock().get(&key).cloned()
    }

    /// Records the complete whiteout set of the lower directory `key`.
    pub fn learn(&self, key: (u64, u64), names: Vec<Vec<u8>>) -> Whiteouts {
        let set: Whiteouts = Arc::new(names.into_iter().map(Vec::into_boxed_slice).collect());
        let mut sets = self.sets.lock();
        if self.names.load(Ordering::Relaxed) + set.len() > MAX_NAMES {
            sets.clear();
            self.names.store(0, Ordering::Relaxed);
        }
        if let Some(old) = sets.insert(key, Arc::clone(&set)) {
            self.names.fetch_sub(old.len(), Ordering::Relaxed);
        }
        self.names.fetch_add(set.len(), Ordering::Relaxed);
        self.any.store(true, Ordering::Relaxed);
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_kept_by_directory_and_bounded() {
        let k = KnownWhiteouts::default();
        assert!(k.is_empty());
        assert!(k.get((1, 2)).is_none());
        k.learn((1, 2), vec![b"a".to_vec()]);
        assert!(!k.is_empty());
        assert!(k.get((1, 2)).unwrap().contains(&b"a"[..]));
        assert!(k.get((1, 3)).is_none());
        // Learning the same directory again replaces its set and its count.
        k.learn((1, 2), vec![b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(k.names.load(Ordering::Relaxed), 2);
        let big: Vec<Vec<u8>> = (0..MAX_NAMES).map(|i| i.to_string().into_bytes()).collect();
        k.learn((9, 9), big);
        // Past the bound everything earlier went.
        assert!(k.get((1, 2)).is_none());
        assert_eq!(k.names.load(Ordering::Relaxed), MAX_NAMES);
    }
}
