//! Shared by the harness test files: the FUSE/root gate and the corpus location.

#![allow(dead_code)]

use std::path::PathBuf;

use unionfs_harness::impls::unavailable;

/// True when `imp` can run here; with UNIONFS_REQUIRE_FUSE=1 a machine that cannot is a
/// failure, not a skip.
pub fn can_run(imp: &str) -> bool {
    match unavailable(imp) {
        None => true,
        Some(why) => {
            if std::env::var("UNIONFS_REQUIRE_FUSE").as_deref() == Ok("1") {
                panic!("UNIONFS_REQUIRE_FUSE=1 but {imp} cannot run here: {why}");
            }
            eprintln!("skipping: {imp} cannot run here: {why}");
            false
        }
    }
}

/// True when this process is root (building layers with owners, devices and trusted xattrs
/// needs it); with UNIONFS_REQUIRE_FUSE=1 not being root is a failure, not a skip.
pub fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("UNIONFS_REQUIRE_FUSE").as_deref() == Ok("1") {
        panic!("UNIONFS_REQUIRE_FUSE=1 but the test does not run as root");
    }
    eprintln!("skipping: needs root");
    false
}

/// The scenario corpus, sorted.
pub fn corpus() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}
