#!/usr/bin/env bash
# Benchmarks unionfs against kernel overlayfs, fuse-overlayfs and a plain directory in the same
# run, interleaved, and prints a markdown table of medians and ratios (speed relative to kernel
# overlayfs: 1.00 = as fast, higher is better).
#
#   scripts/bench.sh [--quick] [--runs N] [--out FILE]
#
# Needs root (mounts, loop devices). Installs fuse-overlayfs from Debian if it is missing. Layer
# sets are built under $BENCH_DIR (default /var/tmp/unionfs-bench, or
# /var/tmp/unionfs-bench-quick with --quick) and reused across runs.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
runs=3
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --runs) runs=$2; shift ;;
    --out) out=$2; shift ;;
    *) echo "usage: $0 [--quick] [--runs N] [--out FILE]" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "bench.sh: needs root to mount" >&2; exit 1; }
if ! command -v fuse-overlayfs >/dev/null; then
  apt-get update -qq && apt-get install -y -qq fuse-overlayfs >/dev/null || true
fi
cargo build --release --bin unionfs-mount >/dev/null
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$PWD/$target ;; esac
UNIONFS=$target/release/unionfs-mount
if [ $quick = 1 ]; then
  B=${BENCH_DIR:-/var/tmp/unionfs-bench-quick}
  BIG_MB=256; NFILES=10000; NCREATE=4000; NRM=2000; NLAYERS=16
else
  B=${BENCH_DIR:-/var/tmp/unionfs-bench}
  BIG_MB=1024; NFILES=50000; NCREATE=20000; NRM=10000; NLAYERS=64
fi
size=$([ $quick = 1 ] && echo quick || echo full)
mkdir -p "$B"
# Quick and full fixtures share paths (l3/big, l2/tree...): building one over the other would
# silently change the other's sizes.
if [ -e "$B/.size" ] && [ "$(cat "$B/.size")" != "$size" ]; then
  echo "bench.sh: $B holds $(cat "$B/.size") fixtures; set BENCH_DIR for a $size run" >&2
  exit 1
fi
echo "$size" > "$B/.size"

python3 - "$B" "$BIG_MB" "$NFILES" "$NRM" "$NLAYERS" <<'PY'
import os, sys
b, big_mb, nfiles, nrm, nlayers = sys.argv[1], *map(int, sys.argv[2:])
stamp = f"{b}/.built-{big_mb}-{nfiles}-{nrm}-{nlayers}"
if os.path.exists(stamp):
    sys.exit(0)
for l in ("l1", "l2", "l3"):
    os.makedirs(f"{b}/{l}", exist_ok=True)
with open(f"{b}/l3/big", "wb") as f:
    chunk = os.urandom(1 << 20)
    for _ in range(big_mb):
        f.write(chunk)
per = 1000
for d in range(nfiles // per):
    p = f"{b}/l2/tree/d{d}"
    os.makedirs(p, exist_ok=True)
    for i in range(per):
        with open(f"{p}/f{i}", "w") as f:
            f.write("x")
for d in range(nrm // 100):
    p = f"{b}/l1/rmtree/d{d}"
    os.makedirs(p, exist_ok=True)
    for i in range(100):
        open(f"{p}/f{i}", "w").close()
for i in range(nlayers):
    p = f"{b}/deep/L{i}/dir"
    os.makedirs(p, exist_ok=True)
    for j in range(20):
        open(f"{p}/l{i}_{j}", "w").close()
open(stamp, "w").close()
PY

lowers="$B/l1:$B/l2:$B/l3"
deep=$(for i in $(seq 0 $((NLAYERS - 1))); do printf '%s:' "$B/deep/L$i"; done)
deep=${deep%:}
impls=(kernel unionfs fuse-overlayfs)
command -v fuse-overlayfs >/dev/null || impls=(kernel unionfs)

# Each implementation gets, in each run, a fresh ext4 of its own for its upper, work dir and
# mountpoints. Sharing one filesystem made the order of the runs leak into the results: after
# one implementation's thousands of unlinks, the next one's creates were 2-3x slower (170 us ->
# 450+ us per create), because ext4 without a journal (like the host filesystem of our bench
# machine) skips inodes freed in the last 30 s when allocating (fs/ext4/ialloc.c,
# recently_deleted()). mkfs.ext4's default has a journal, so that check does not apply inside
# one run either. The image is sparse, mkfs marks its inode tables zeroed (it punches the file
# instead of writing zeroes), and noinit_itable keeps ext4lazyinit from writing behind a timed
# workload anyway. The loop device does direct I/O so upper data is not cached twice (in the
# loop fs and in the image file on the host fs), like an upper on a real disk. Lower layers stay
# where they are.
LOOPDEV=""
IMG=""
FS=""
fs_up() { # impl run -> sets FS, a fresh ext4 mounted at $B/run/IMPL-rRUN
  FS=$B/run/$1-r$2
  IMG=$B/img/$1-r$2.img
  mkdir -p "$B/img" "$FS"
  rm -f "$IMG"
  truncate -s 4G "$IMG"
  mkfs.ext4 -q -F "$IMG"
  LOOPDEV=$(losetup --find --show --direct-io=on "$IMG")
  mount -o noinit_itable "$LOOPDEV" "$FS"
}
# Unmounts everything under $B/run (innermost first), detaches the loop device, deletes the
# image. Also the EXIT trap, so Ctrl-C or a failed workload leaves nothing mounted.
cleanup() {
  local mp
  awk -v p="$B/run/" 'index($2, p) == 1 {print $2}' /proc/self/mounts | sort -r |
    while read -r mp; do umount "$mp" 2>/dev/null || umount -l "$mp"; done
  if [ -n "$LOOPDEV" ]; then losetup -d "$LOOPDEV" 2>/dev/null || true; fi
  if [ -n "$IMG" ]; then rm -f "$IMG"; fi
  if [ -n "$FS" ]; then rmdir "$FS" 2>/dev/null || true; fi
  LOOPDEV=""
  IMG=""
  FS=""
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount_impl() { # impl lowers name -> prints mountpoint; upper, work dir and mountpoint in $FS
  local impl=$1 low=$2 name=$3
  local d=$FS/$name
  rm -rf "$d"; mkdir -p "$d"/{u,w,m}
  case $impl in
    kernel) mount -t overlay overlay -o "lowerdir=$low,upperdir=$d/u,workdir=$d/w" "$d/m" ;;
    unionfs) "$UNIONFS" -o "lowerdir=$low,upperdir=$d/u,workdir=$d/w" "$d/m" ;;
    fuse-overlayfs) fuse-overlayfs -o "lowerdir=$low,upperdir=$d/u,workdir=$d/w" "$d/m" ;;
  esac
  echo "$d/m"
}
umount_impl() { umount "$1" 2>/dev/null || umount -l "$1"; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }

declare -A T
record() { T["$1|$2"]+="$3 "; }

run_once() {
  local impl=$1 m s e
  m=$(mount_impl "$impl" "$lowers" main)
  cat "$m/big" >/dev/null
  s=$(now); cat "$m/big" >/dev/null; e=$(now); record "seq read warm" "$impl" "$(echo "$e - $s" | bc)"
  umount_impl "$m"; drop; m=$(mount_impl "$impl" "$lowers" main)
  s=$(now); cat "$m/big" >/dev/null; e=$(now); record "seq read cold" "$impl" "$(echo "$e - $s" | bc)"
  s=$(now); python3 -c "
import os,random
f=os.open('$m/big',os.O_RDONLY); n=os.fstat(f).st_size//4096; r=random.Random(1)
for _ in range(20000): os.pread(f,4096,r.randrange(n)*4096)" ; e=$(now)
  record "4k random read (20k)" "$impl" "$(echo "$e - $s" | bc)"
  s=$(now); dd if=/dev/zero of="$m/new" bs=1M count="$BIG_MB" conv=fsync status=none; e=$(now)
  record "seq write ${BIG_MB} MiB" "$impl" "$(echo "$e - $s" | bc)"
  rm -f "$m/new"
  umount_impl "$m"; drop; m=$(mount_impl "$impl" "$lowers" main)
  s=$(now); find "$m/tree" >/dev/null; e=$(now); record "find $NFILES cold" "$impl" "$(echo "$e - $s" | bc)"
  s=$(now); find "$m/tree" >/dev/null; e=$(now); record "find $NFILES warm" "$impl" "$(echo "$e - $s" | bc)"
  s=$(now); ls -lR "$m/tree" >/dev/null; e=$(now); record "ls -lR $NFILES" "$impl" "$(echo "$e - $s" | bc)"
  mkdir "$m/c"
  s=$(now); python3 -c "
import os
for i in range($NCREATE): os.close(os.open('$m/c/f%d'%i, os.O_CREAT|os.O_WRONLY, 0o644))"; e=$(now)
  record "create $NCREATE" "$impl" "$(echo "$e - $s" | bc)"
  s=$(now); python3 -c "
import os
for i in range($NCREATE): os.unlink('$m/c/f%d'%i)"; e=$(now)
  record "unlink $NCREATE" "$impl" "$(echo "$e - $s" | bc)"
  s=$(now); rm -rf "$m/rmtree"; e=$(now); record "rm -rf $NRM lower files" "$impl" "$(echo "$e - $s" | bc)"
  s=$(now); printf x >> "$m/big"; e=$(now); record "copy-up: append 1 byte to ${BIG_MB} MiB" "$impl" "$(echo "$e - $s" | bc)"
  umount_impl "$m"
  m=$(mount_impl "$impl" "$deep" deep); drop
  s=$(now); for j in $(seq 0 19); do stat "$m/dir/l$((NLAYERS - 1))_$j" >/dev/null; done; e=$(now)
  record "stat bottom of $NLAYERS layers, cold" "$impl" "$(echo "$e - $s" | bc)"
  umount_impl "$m"
}

for r in $(seq 1 "$runs"); do
  for impl in "${impls[@]}"; do
    echo "run $r/$runs: $impl" >&2
    fs_up "$impl" "$r"
    run_once "$impl"
    cleanup
  done
done

report() {
  echo "Machine: $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB, $(uname -r), layers on $(df -T "$B" | awk 'NR==2{print $2}'), upper and work dir on a fresh ext4 (loop device) per implementation and run. Median of $runs runs, seconds; ratio = kernel time / time."
  echo
  printf '| workload | kernel overlayfs |'
  for impl in "${impls[@]:1}"; do printf ' %s | ratio |' "$impl"; done
  echo
  printf '|---|---|'
  for _ in "${impls[@]:1}"; do printf -- '---|---|'; done
  echo
  for w in "seq read warm" "seq read cold" "4k random read (20k)" "seq write ${BIG_MB} MiB" \
           "find $NFILES cold" "find $NFILES warm" "ls -lR $NFILES" "create $NCREATE" "unlink $NCREATE" \
           "rm -rf $NRM lower files" "copy-up: append 1 byte to ${BIG_MB} MiB" "stat bottom of $NLAYERS layers, cold"; do
    k=$(echo ${T["$w|kernel"]} | tr ' ' '\n' | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
    printf '| %s | %.3f |' "$w" "$k"
    for impl in "${impls[@]:1}"; do
      v=$(echo ${T["$w|$impl"]} | tr ' ' '\n' | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
      printf ' %.3f | %.2f |' "$v" "$(echo "$k / $v" | bc -l)"
    done
    echo
  done
}
if [ -n "$out" ]; then report | tee "$out"; else report; fi
rm -rf "$B/run" "$B/img"
