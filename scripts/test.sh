#!/usr/bin/env bash
# The project's test command (what CI runs): formatting, lints, then every test with real
# FUSE mounts. Set UNIONFS_REQUIRE_FUSE=1 to make tests that cannot mount fail instead of skip.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo build --bins
cargo test --all-targets -- --test-threads="${UNIONFS_TEST_THREADS:-4}"
