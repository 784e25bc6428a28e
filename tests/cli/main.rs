//! The `unionfs-mount` command line and daemon with real mounts: arguments and their errors,
//! the daemon's lifecycle and signals, its counters, the transports, and mount(8).

#[path = "../common/mod.rs"]
mod common;

mod args;
mod counters;
mod fixture;
mod lifecycle;
mod mount_helper;
mod node_limit;
mod one_owner;
mod shared;
mod transport;
