//! The on-disk model of a layer stack, with no FUSE in it: everything here works on plain
//! directories, so the layer rules are unit-testable without a mount.

pub mod behind;
pub mod copyup;
pub mod data;
pub mod idmap;
pub mod known;
pub mod metacopy;
pub mod ops;
pub mod readdir;
pub mod repair;
pub mod resolve;
pub mod stack;
pub mod whiteout;

pub use stack::{LayerIdx, Stack, StackConfig};
