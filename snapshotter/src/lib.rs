//! unionfs-snapshotter: a containerd proxy snapshotter whose snapshots are unionfs unions.
//!
//! containerd talks to it over gRPC (its snapshots API) on a unix socket; it keeps snapshot
//! metadata in an embedded transactional store (redb) under `--root` and hands containerd
//! `fuse3.unionfs-mount` mounts (or bind mounts where no union is needed). It depends on the
//! `unionfs` crate for the mount option syntax; `unionfs` never depends on it.

#![forbid(unsafe_code)]

pub mod error;
pub mod filter;
pub mod hooks;
pub mod layout;
pub mod mounts;
pub mod recovery;
pub mod server;
pub mod service;
pub mod store;
