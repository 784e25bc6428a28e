//! The layer behaviour harness: declarative scenarios and random op sequences, run on unionfs,
//! kernel overlayfs and fuse-overlayfs, alone or side by side.
//!
//! Data flows one way: [`scenario`] parses a file, [`build`] writes its layers in the format of
//! the implementation under test, [`impls`] mounts them, [`ops`] runs the steps, [`view`] captures
//! and compares trees, [`runner`] checks expectations, [`diff`] compares two implementations,
//! [`fuzz`] generates and shrinks cases, and [`report`] prints results.

pub mod build;
pub mod cli;
pub mod diff;
pub mod fuzz;
pub mod impls;
pub mod ops;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod view;
