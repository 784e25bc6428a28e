//! The pass that makes the disk agree with the store: at startup (after a crash or a
//! `kill -9`) and on containerd's Cleanup. The store is the truth; a directory it does not
//! know is the leftover of a Prepare that never committed or of a Remove that committed but
//! had not finished deleting, and is deleted.

use crate::error::Result;
use crate::layout::Layout;
use crate::store::Store;

/// Deletes every snapshot directory the store does not know; returns how many.
pub fn remove_orphans(store: &Store, layout: &Layout) -> Result<usize> {
    let removed = store.with_known_ids(|known| layout.remove_orphans(known))?;
    for name in &removed {
        log::info!("removed {name} under snapshots/: the store does not know it (left by a crash or a removal)");
    }
    Ok(removed.len())
}
