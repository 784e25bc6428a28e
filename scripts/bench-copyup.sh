#!/usr/bin/env bash
# Times a cold copy-up (append one byte to the 512 MiB lower file of scripts/bench.sh) on kernel
# overlayfs and unionfs, each on a fresh ext4, on an idle upper and after the bench's earlier
# workload (1 GiB write, 20,000 creates and unlinks, rm -rf of a lower tree). The gap between
# the two cases is open work of issue 5.
#
#   scripts/bench-copyup.sh [RUNS]      (root; needs the fixtures scripts/bench.sh builds)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-2}
[ "$(id -u)" = 0 ] || { echo "bench-copyup.sh: needs root to mount" >&2; exit 1; }
B=${BENCH_DIR:-/var/tmp/unionfs-bench}
[ -e "$B/l3/big512" ] || { echo "bench-copyup.sh: run scripts/bench.sh once to build $B" >&2; exit 1; }
cargo build --release --bin unionfs-mount >/dev/null
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$PWD/$target ;; esac
F=$B/run/copyup
IMG=$B/img/copyup.img
LO=""
cleanup() {
  awk -v p="$F" 'index($2, p) == 1 {print $2}' /proc/self/mounts | sort -r |
    while read -r mp; do umount "$mp" 2>/dev/null || umount -l "$mp"; done
  if [ -n "$LO" ]; then losetup -d "$LO" 2>/dev/null || true; fi
  rm -f "$IMG"
  LO=""
}
trap cleanup EXIT
one() { # impl quiet|busy
  mkdir -p "$B/img" "$F"
  truncate -s 4G "$IMG"; mkfs.ext4 -q -F "$IMG"
  LO=$(losetup --find --show --direct-io=on "$IMG")
  mount -o noinit_itable "$LO" "$F"
  mkdir -p "$F/u" "$F/w" "$F/m"
  local o="lowerdir=$B/l1:$B/l2:$B/l3,upperdir=$F/u,workdir=$F/w"
  if [ "$1" = kernel ]; then mount -t overlay overlay -o "$o" "$F/m"
  else "$target/release/unionfs-mount" -o "$o" "$F/m"; fi
  if [ "$2" = busy ]; then
    dd if=/dev/zero of="$F/m/new" bs=1M count=1024 conv=fsync status=none; rm -f "$F/m/new"
    python3 -c "
import os
os.mkdir('$F/m/c')
for i in range(20000): os.close(os.open('$F/m/c/f%d'%i, os.O_CREAT|os.O_WRONLY, 0o644))
for i in range(20000): os.unlink('$F/m/c/f%d'%i)"
    rm -rf "$F/m/rmtree"
  fi
  sync; echo 3 > /proc/sys/vm/drop_caches
  local s e
  s=$(date +%s.%N); printf x >> "$F/m/big512"; e=$(date +%s.%N)
  echo "$1 $2 $(echo "$e - $s" | bc) s"
  cleanup
}
for _ in $(seq "$runs"); do
  for mode in quiet busy; do one kernel $mode; one unionfs $mode; done
done
