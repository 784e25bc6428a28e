//! unionfs: a union filesystem in userspace (FUSE) and a container launcher built on it.
//!
//! The crate is organised the way data flows: [`options`] turns a command line into a
//! [`mount::MountConfig`], [`layer`] is the on-disk model of the layer stack (no FUSE, testable on
//! plain directories), [`fs`] is the thin FUSE adapter over it, and [`sys`] holds every `unsafe`
//! system call wrapper. [`mount`] mounts a stack and serves it; [`launch`] runs containers on it.
//!
//! `unsafe` is denied everywhere but in [`sys`], so that the soundness of the whole crate can be
//! reviewed there alone, each block beside its `// SAFETY:` reason.

#![deny(unsafe_code)]

pub mod daemon;
pub mod error;
pub mod fs;
pub mod image;
pub mod launch;
pub mod layer;
pub mod mount;
pub mod oci;
pub mod options;
pub mod size;
#[allow(unsafe_code)]
pub mod sys;
pub mod transport;

pub use error::{Error, Result};
