//! The layer behaviour harness: declarative scenarios and random op sequences, run on unionfs,
//! kernel overlayfs and fuse-overlayfs, alone or side by side.
//!
//! Data flows one way: [`scenario`] parses a file, [`build`] writes its layers in the format of
//! the implementation under test, [`impls`] mounts them, [`ops`] runs the steps, [`view`] captures
//! and compares trees, [`runner`] checks expectations, [`diff`] compares two implementations,
//! [`fuzz`] generates and shrinks cases, and [`report`] prints results. Whatever keeps the
//! harness from doing its own work is an [`Error`].
//!
//! This is a crate of its own, beside the `unionfs` library it tests, so that the filesystem
//! and launcher binaries do not link it (nor serde and toml). Besides `unionfs-harness` it
//! holds `unionfs-docs`, which needs the command definitions of every tool (this crate's
//! too), and [`support`], helpers the integration tests of both packages share; the root
//! package's tests build their layers with [`entries`] and [`build`] and compare trees with
//! [`view`].

// Every system call goes through unionfs::sys, where the crate's `unsafe` is reviewed.
#![forbid(unsafe_code)]

pub mod build;
pub mod cli;
pub mod diff;
pub mod entries;
pub mod error;
pub mod fuzz;
pub mod impls;
pub mod ops;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod support;
pub mod view;

pub use error::{Error, Result};
