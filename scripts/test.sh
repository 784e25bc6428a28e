#!/usr/bin/env bash
# The project's test command (what CI runs): formatting, lints, then every test of the workspace
# (the unionfs package and the harness crate in harness/) with real FUSE mounts. Set
# UNIONFS_REQUIRE_FUSE=1 to make tests that cannot mount fail instead of skip.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The harness's `unionfs-cli` runs find unionfs-mount next to the test binaries.
cargo build --workspace --bins
cargo test --workspace --all-targets -- --test-threads="${UNIONFS_TEST_THREADS:-4}"
# When the kernel serves FUSE over io_uring, unionfs takes every request but FORGET from the
# ring, so the run above tested that transport: run the filesystem tests again with requests
# read from /dev/fuse (the switch only affects new mounts; it is restored afterwards).
switch=/sys/module/fuse/parameters/enable_uring
if [ -w "$switch" ] && [ "$(cat "$switch")" = Y ]; then
  echo 0 > "$switch"
  trap 'echo 1 > "$switch"' EXIT
  echo "== again over /dev/fuse (fuse.enable_uring=0)"
  threads=--test-threads="${UNIONFS_TEST_THREADS:-4}"
  cargo test -p unionfs --test fs --test cli -- "$threads"
  cargo test -p unionfs --test faults -- "$threads" space:: io::
  cargo test -p unionfs-harness --test corpus -- "$threads"
fi
