//! Container engines driving unionfs for real: podman (root and rootless) through
//! containers/storage's overlay driver with `mount_program` = unionfs-mount, and containerd
//! with unionfs-snapshotter as its proxy snapshotter, on images built here from the example
//! busybox layers (no registry).
//!
//! Needs root, /dev/fuse and the Debian packages `podman`, `containerd`, `runc`, `fuse3` and
//! `umoci` (`.ci/run` installs them); with `UNIONFS_REQUIRE_FUSE=1` a missing one fails the
//! tests.

#[path = "../common/mod.rs"]
mod common;
#[path = "../launch/common/mod.rs"]
mod launch_common;

mod containerd;
mod containerd_engine;
mod image;
mod podman;
