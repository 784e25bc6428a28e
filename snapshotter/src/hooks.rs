//! Pause points for the crash tests: with `UNIONFS_SNAPSHOTTER_TEST_PAUSE=NAME` in its
//! environment the snapshotter stops for good at the point NAME (after creating the file named
//! by `UNIONFS_SNAPSHOTTER_TEST_PAUSED`, so the test knows when to `kill -9` it). Unset, as in
//! every real deployment, a pause point costs one comparison.
//!
//! Points: `prepare-in-txn`, `commit-in-txn`, `remove-in-txn` (the store's transaction has
//! all its writes but is not committed; the snapshot directory of a Prepare already renamed
//! into place) and `remove-after-commit` (the store forgot the snapshot, its directory was
//! moved to `rm-ID` and is not deleted yet).

use std::sync::OnceLock;
use std::time::Duration;

fn target() -> Option<&'static str> {
    static T: OnceLock<Option<String>> = OnceLock::new();
    T.get_or_init(|| std::env::var("UNIONFS_SNAPSHOTTER_TEST_PAUSE").ok())
        .as_deref()
}

/// Stops this thread for good when the tests asked to pause at `name`.
pub fn pause_point(name: &str) {
    if target() != Some(name) {
        return;
    }
    log::warn!("test pause point {name} reached: waiting to be killed");
    if let Some(p) = std::env::var_os("UNIONFS_SNAPSHOTTER_TEST_PAUSED") {
        if let Err(e) = std::fs::write(&p, name) {
            log::error!("cannot write the pause marker {}: {e}", p.to_string_lossy());
        }
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
