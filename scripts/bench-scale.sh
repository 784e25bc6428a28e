#!/usr/bin/env bash
# Cost as the work grows (issue 16): idle unions by their number, 1 to 500 lowers, one huge
# directory, a walk of millions of files, FUSE requests per metadata operation, a large
# copy-up; kernel overlayfs, unionfs and fuse-overlayfs in the same run. Writes OUT/report.md
# and the curves as OUT/*.png (gnuplot).
#
#   scripts/bench-scale.sh [--full] [--out DIR] [--only unions,layers,bigdir,tree,requests,copyup]
#
# Default sizes are small (minutes); --full takes issue 16's (100 unions, 500 lowers, a
# 1,000,000-entry directory, a 10,000,000-file tree: fixtures take a while to build once, and
# the tree needs 10 M free inodes). Fixtures live in $BENCH_DIR (default
# /var/tmp/unionfs-bench-scale) and are reused. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-scale.sh: needs root to mount" >&2; exit 1; }
need=()
command -v fuse-overlayfs >/dev/null || need+=(fuse-overlayfs)
command -v gnuplot >/dev/null || need+=(gnuplot-nox)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
cargo build --release --bin unionfs-mount >/dev/null
out=docs/bench
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift ;;
    --full) args+=(--full) ;;
    --only) args+=(--only "$2"); shift ;;
    *) echo "usage: $0 [--full] [--out DIR] [--only SECTIONS]" >&2; exit 2 ;;
  esac
  shift
done
B=${BENCH_DIR:-/var/tmp/unionfs-bench-scale}
# Whatever happens, nothing stays mounted under the run directory.
cleanup() {
  awk -v p="$B/run/" 'index($2, p) == 1 {print $2}' /proc/self/mounts | sort -r |
    while read -r mp; do umount "$mp" 2>/dev/null || umount -l "$mp"; done
}
trap cleanup EXIT
python3 scripts/bench-scale.py --dir "$B" --out "$out" "${args[@]}"
