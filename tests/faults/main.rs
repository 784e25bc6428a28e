//! Faults made for real (README, "Faults: what was tried and what held"): a full or read-only
//! upper, quotas, lower I/O errors, fd exhaustion, kill -9 of the daemon, hostile and corrupt
//! layers.

#[path = "../common/mod.rs"]
mod common;

mod behind;
mod crash;
mod deep;
mod io;
mod layers;
mod space;
mod underneath;
