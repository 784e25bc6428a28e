//! unionfs: a union filesystem in userspace (FUSE) and a container launcher built on it.
//!
//! The crate is organised the way data flows: [`options`] turns a command line into a
//! [`mount::MountConfig`], [`layer`] is the on-disk model of the layer stack (no FUSE, testable on
//! plain directories), [`fs`] is the thin FUSE adapter over it, and [`sys`] holds every `unsafe`
//! system call wrapper. [`mount`] mounts a stack and serves it; [`launch`] runs containers on it.

pub mod daemon;
pub mod error;
pub mod fs;
pub mod launch;
pub mod layer;
pub mod mount;
pub mod oci;
pub mod options;
pub mod stats;
pub mod sys;
pub mod transport;

pub use error::{Error, Result};
pub use mount::{MountConfig, MountGuard};
