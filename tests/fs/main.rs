//! The filesystem (`unionfs-mount`) with real FUSE mounts: every line of docs/SCENARIOS.md,
//! metadata-only copy-up, hostile layers, name and path limits, and the layer model without a
//! mount. The test command runs it over io_uring and again over /dev/fuse; with
//! `UNIONFS_TEST_IMPL=kernel` the same tests run on kernel overlayfs.

#[path = "../common/mod.rs"]
mod common;

mod copyup;
mod deletion;
mod engine_options;
mod flush_behind;
mod hostile_layers;
mod inodes;
mod layer_model;
mod layering;
mod lifecycle;
mod metacopy;
mod names;
mod open_files;
mod rename;
mod xattrs;
