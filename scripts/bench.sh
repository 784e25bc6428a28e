#!/usr/bin/env bash
# Benchmarks unionfs against kernel overlayfs and fuse-overlayfs in the same run, interleaved,
# and prints a markdown table of medians and ratios (speed relative to kernel overlayfs: 1.00 =
# as fast, higher is better), then a table of the FUSE daemons' memory and open fds after a
# walk over a large tree.
#
#   scripts/bench.sh [--quick] [--runs N] [--out FILE] [--devfuse] [--no-passthrough] [--no-drop]
#                    [--baseline BIN]
#
# --no-drop never calls sync(2) or drop_caches (on a machine where one of them blocks, e.g.
# behind a wedged filesystem): the cold rows and the memory table are then left out.
#
# unionfs serves requests over FUSE-over-io_uring when the kernel offers it: the script turns on
# the fuse module's enable_uring switch for the run (and restores it). --devfuse adds a column
# for unionfs with -o uring=off (requests read from /dev/fuse), to show what the transport gives.
# --no-passthrough adds a column for unionfs with -o passthrough=off (file data through the
# daemon, and fds opened before a copy-up follow it, as in kernel overlayfs), to show its cost.
# --baseline BIN adds a column for another unionfs-mount binary (an older build, e.g. from a
# `git worktree` of the commit before a change), and with --devfuse one for it over /dev/fuse:
# a before/after comparison in one run, which is the only kind this noisy VM supports.
#
# Needs root (mounts, loop devices). Installs fuse-overlayfs from Debian if it is missing. Layer
# sets are built under $BENCH_DIR (default /var/tmp/unionfs-bench, or
# /var/tmp/unionfs-bench-quick with --quick) and reused across runs.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
devfuse=0
nopt=0
nodrop=0
baseline=""
runs=3
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --runs) runs=$2; shift ;;
    --out) out=$2; shift ;;
    --devfuse) devfuse=1 ;;
    --no-passthrough) nopt=1 ;;
    --no-drop) nodrop=1 ;;
    --baseline) baseline=$2; shift ;;
    *) echo "usage: $0 [--quick] [--runs N] [--out FILE] [--devfuse] [--no-passthrough] [--no-drop] [--baseline BIN]" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "bench.sh: needs root to mount" >&2; exit 1; }
if [ -n "$baseline" ] && [ ! -x "$baseline" ]; then
  echo "bench.sh: --baseline $baseline is not an executable file: give the path of an unionfs-mount binary" >&2
  exit 2
fi
if ! command -v fuse-overlayfs >/dev/null; then
  apt-get update -qq && apt-get install -y -qq fuse-overlayfs >/dev/null || true
fi
cargo build --release --bin unionfs-mount >/dev/null
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$PWD/$target ;; esac
UNIONFS=$target/release/unionfs-mount
if [ $quick = 1 ]; then
  B=${BENCH_DIR:-/var/tmp/unionfs-bench-quick}
  BIG_MB=256; BIG512_MB=128; NFILES=10000; NCREATE=4000; NRM=2000; NLAYERS=16; NMEM=100000
else
  B=${BENCH_DIR:-/var/tmp/unionfs-bench}
  BIG_MB=1024; BIG512_MB=512; NFILES=50000; NCREATE=20000; NRM=10000; NLAYERS=64; NMEM=1000000
fi
NTAR=4000
size=$([ $quick = 1 ] && echo quick || echo full)
mkdir -p "$B"
# Quick and full fixtures share paths (l3/big, l2/tree...): building one over the other would
# silently change the other's sizes.
if [ -e "$B/.size" ] && [ "$(cat "$B/.size")" != "$size" ]; then
  echo "bench.sh: $B holds $(cat "$B/.size") fixtures; set BENCH_DIR for a $size run" >&2
  exit 1
fi
echo "$size" > "$B/.size"

echo "fixtures in $B (built on first use)" >&2
python3 - "$B" "$BIG_MB" "$NFILES" "$NRM" "$NLAYERS" "$BIG512_MB" "$NTAR" "$NMEM" <<'PY'
import io, os, random, stat, sys, tarfile
b, big_mb, nfiles, nrm, nlayers, big512_mb, ntar, nmem = sys.argv[1], *map(int, sys.argv[2:])

def big_file(path, mb):
    with open(path, "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(mb):
            f.write(chunk)

stamp = f"{b}/.built-{big_mb}-{nfiles}-{nrm}-{nlayers}"
if not os.path.exists(stamp):
    for l in ("l1", "l2", "l3"):
        os.makedirs(f"{b}/{l}", exist_ok=True)
    big_file(f"{b}/l3/big", big_mb)
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

# The copy-up source: a lower file of its own, so the seq read rows keep the big one.
stamp = f"{b}/.built-big512-{big512_mb}"
if not os.path.exists(stamp):
    os.makedirs(f"{b}/l3", exist_ok=True)
    big_file(f"{b}/l3/big512", big512_mb)
    open(stamp, "w").close()

# A tarball of small files: 40 dirs x 100 files of 200-600 bytes, owned by root.
stamp = f"{b}/.built-tar-{ntar}"
if not os.path.exists(stamp):
    r = random.Random(1)
    with tarfile.open(f"{b}/files{ntar}.tar", "w", format=tarfile.GNU_FORMAT) as t:
        for d in range(ntar // 100):
            ti = tarfile.TarInfo(f"d{d}")
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1e9
            ti.uname = ti.gname = "root"
            t.addfile(ti)
            for i in range(100):
                data = os.urandom(r.randrange(200, 600))
                ti = tarfile.TarInfo(f"d{d}/f{i}")
                ti.size, ti.mode, ti.mtime = len(data), 0o644, 1e9
                ti.uname = ti.gname = "root"
                t.addfile(ti, io.BytesIO(data))
    open(stamp, "w").close()

# The memory workload's single lower: nmem empty files, 1000 per directory.
stamp = f"{b}/.built-l4-{nmem}"
if not os.path.exists(stamp):
    for d in range(nmem // 1000):
        p = f"{b}/l4/d{d}"
        os.makedirs(p, exist_ok=True)
        for i in range(1000):
            try:
                os.mknod(f"{p}/f{i}", 0o644 | stat.S_IFREG)
            except FileExistsError:
                pass
    open(stamp, "w").close()
PY

lowers="$B/l1:$B/l2:$B/l3"
deep=$(for i in $(seq 0 $((NLAYERS - 1))); do printf '%s:' "$B/deep/L$i"; done)
deep=${deep%:}
TAR=$B/files$NTAR.tar
impls=(kernel unionfs)
[ $devfuse = 1 ] && impls+=(unionfs-devfuse)
[ $nopt = 1 ] && impls+=(unionfs-nopassthrough)
if [ -n "$baseline" ]; then
  impls+=(baseline)
  [ $devfuse = 1 ] && impls+=(baseline-devfuse)
fi
command -v fuse-overlayfs >/dev/null && impls+=(fuse-overlayfs)
URING_SWITCH=/sys/module/fuse/parameters/enable_uring
URING_BEFORE=$(cat "$URING_SWITCH" 2>/dev/null || true)
[ -n "$URING_BEFORE" ] && echo 1 > "$URING_SWITCH"

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
restore_uring() { if [ -n "$URING_BEFORE" ]; then [ "$URING_BEFORE" = Y ] && echo 1 > "$URING_SWITCH" || echo 0 > "$URING_SWITCH"; fi; }
trap 'cleanup; restore_uring' EXIT
trap 'exit 130' INT TERM

mount_impl() { # impl lowers name -> prints mountpoint; upper, work dir and mountpoint in $FS
  local impl=$1 low=$2 name=$3
  local d=$FS/$name
  rm -rf "$d"; mkdir -p "$d"/{u,w,m}
  case $impl in
    kernel) mount -t overlay overlay -o "lowerdir=$low,upperdir=$d/u,workdir=$d/w" "$d/m" ;;
    unionfs) "$UNIONFS" --pid-file "$d/pid" --stats-file "$d/stats" \
               -o "lowerdir=$low,upperdir=$d/u,workdir=$d/w" "$d/m" ;;
    unionfs-devfuse) "$UNIONFS" --pid-file "$d/pid" --stats-file "$d/stats" \
               -o "uring=off,lowerdir=$low,upperdir=$d/u,workdir=$d/w" "$d/m" ;;
    unionfs-nopassthrough) "$UNIONFS" --pid-file "$d/pid" --stats-file "$d/stats" \
               -o "passthrough=off,lowerdir=$low,upperdir=$d/u,workdir=$d/w" "$d/m" ;;
    baseline) "$baseline" --pid-file "$d/pid" --stats-file "$d/stats" \
               -o "lowerdir=$low,upperdir=$d/u,workdir=$d/w" "$d/m" ;;
    baseline-devfuse) "$baseline" --pid-file "$d/pid" --stats-file "$d/stats" \
               -o "uring=off,lowerdir=$low,upperdir=$d/u,workdir=$d/w" "$d/m" ;;
    fuse-overlayfs) fuse-overlayfs -o "lowerdir=$low,upperdir=$d/u,workdir=$d/w" "$d/m" ;;
  esac
  echo "$d/m"
}
umount_impl() { umount "$1" 2>/dev/null || umount -l "$1"; }
drop() { [ $nodrop = 1 ] && return; sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }

# The pid of the FUSE daemon serving mountpoint $2 (made by mount_impl). unionfs writes it to
# its --pid-file (its watchdog child has the same command line). fuse-overlayfs: the process
# whose arguments include this mount's -o string, which names this run's own upper dir.
daemon_pid() { # impl mountpoint lowers
  local d=${2%/m} p
  local -a found=()
  case $1 in
    unionfs|unionfs-devfuse|unionfs-nopassthrough|baseline|baseline-devfuse) found=("$(cat "$d/pid")") ;;
    fuse-overlayfs)
      for p in /proc/[0-9]*; do
        if tr '\0' '\n' < "$p/cmdline" 2>/dev/null |
             grep -qxF -- "lowerdir=$3,upperdir=$d/u,workdir=$d/w"; then
          found+=("${p#/proc/}")
        fi
      done ;;
  esac
  [ ${#found[@]} = 1 ] && [ -e "/proc/${found[0]}/status" ] ||
    { echo "bench.sh: no unique $1 daemon for $2 (${found[*]:-none})" >&2; return 1; }
  echo "${found[0]}"
}
rss_mib() { awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
nfds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 | wc -l; }

# Whether unionfs's data path is FUSE passthrough: from its SIGUSR1 stats report.
PASSTHROUGH=""
TRANSPORT=""
stat_of() { # mountpoint key: one of the unionfs daemon's SIGUSR1 counters
  local d=${1%/m} i
  rm -f "$d/stats"
  kill -USR1 "$(cat "$d/pid")" || return 0
  for i in $(seq 50); do [ -s "$d/stats" ] && break; sleep 0.1; done
  awk -v k="$2" '$1 == k {print $2}' "$d/stats" 2>/dev/null || true
}
transport_of() { # mountpoint
  local n; n=$(stat_of "$1" ring_requests)
  if [ "${n:-0}" -gt 0 ]; then echo io_uring; else echo /dev/fuse; fi
}

declare -A T
record() { T["$1|$2"]+="$3 "; }
timed() { # row command... : runs the command and records its wall time for $impl
  local row=$1 s e
  shift
  s=$(now); "$@"; e=$(now)
  record "$row" "$impl" "$(echo "$e - $s" | bc)"
}
randread() {
  python3 -c "
import os,random
f=os.open('$1',os.O_RDONLY); n=os.fstat(f).st_size//4096; r=random.Random(1)
for _ in range(20000): os.pread(f,4096,r.randrange(n)*4096)"
}
creates() {
  python3 -c "
import os
for i in range($NCREATE): os.close(os.open('$1/f%d'%i, os.O_CREAT|os.O_WRONLY, 0o644))"
}
unlinks() {
  python3 -c "
import os
for i in range($NCREATE): os.unlink('$1/f%d'%i)"
}
append_byte() { printf x >> "$1"; }
stat_bottom() {
  local j
  for j in $(seq 0 19); do stat "$1/dir/l$((NLAYERS - 1))_$j" >/dev/null; done
}

R_SEQW="seq read warm"; R_SEQC="seq read cold"; R_RAND="4k random read (20k)"
R_WRITE="seq write ${BIG_MB} MiB"
R_FINDC="find $NFILES cold"; R_FINDW="find $NFILES warm"
R_LSC="ls -lR $NFILES cold"; R_LSW="ls -lR $NFILES warm"
R_TAR="tar extract $NTAR files"; R_CREATE="create $NCREATE"; R_UNLINK="unlink $NCREATE"
R_RM="rm -rf $NRM lower files"; R_COPYUP="copy-up: append 1 byte to ${BIG512_MB} MiB"
R_DEEP="stat bottom of $NLAYERS layers, cold"
ROWS=("$R_SEQW" "$R_SEQC" "$R_RAND" "$R_WRITE" "$R_FINDC" "$R_FINDW" "$R_LSC" "$R_LSW" "$R_TAR"
      "$R_CREATE" "$R_UNLINK" "$R_RM" "$R_COPYUP" "$R_DEEP")
M_RSS="RSS after walking $NMEM files (MiB)"; M_RSSD="RSS after drop_caches (MiB)"
M_FD="open fds after walk"; M_FDD="open fds after drop_caches"
MROWS=("$M_RSS" "$M_RSSD" "$M_FD" "$M_FDD")
if [ $nodrop = 1 ]; then
  ROWS=("$R_SEQW" "$R_RAND" "$R_WRITE" "$R_FINDW" "$R_LSW" "$R_TAR" "$R_CREATE" "$R_UNLINK"
        "$R_RM" "$R_COPYUP")
fi

run_once() {
  local impl=$1 m pid s e
  m=$(mount_impl "$impl" "$lowers" main)
  cat "$m/big" >/dev/null
  timed "$R_SEQW" cat "$m/big" >/dev/null
  if [ "$impl" = unionfs ] && [ -z "$PASSTHROUGH" ]; then
    PASSTHROUGH=$(stat_of "$m" passthrough); TRANSPORT=$(transport_of "$m")
  fi
  umount_impl "$m"; drop; m=$(mount_impl "$impl" "$lowers" main)
  timed "$R_SEQC" cat "$m/big" >/dev/null
  timed "$R_RAND" randread "$m/big"
  timed "$R_WRITE" dd if=/dev/zero of="$m/new" bs=1M count="$BIG_MB" conv=fsync status=none
  rm -f "$m/new"
  umount_impl "$m"; drop; m=$(mount_impl "$impl" "$lowers" main)
  timed "$R_FINDC" find "$m/tree" >/dev/null
  timed "$R_FINDW" find "$m/tree" >/dev/null
  umount_impl "$m"; drop; m=$(mount_impl "$impl" "$lowers" main)
  timed "$R_LSC" ls -lR "$m/tree" >/dev/null
  timed "$R_LSW" ls -lR "$m/tree" >/dev/null
  mkdir "$m/t"
  cat "$TAR" >/dev/null
  timed "$R_TAR" tar -xf "$TAR" -C "$m/t"
  mkdir "$m/c"
  timed "$R_CREATE" creates "$m/c"
  timed "$R_UNLINK" unlinks "$m/c"
  timed "$R_RM" rm -rf "$m/rmtree"
  timed "$R_COPYUP" append_byte "$m/big512"
  umount_impl "$m"
  m=$(mount_impl "$impl" "$deep" deep); drop
  timed "$R_DEEP" stat_bottom "$m"
  umount_impl "$m"
  [ "$impl" = kernel ] && return
  [ $nodrop = 1 ] && return
  # Memory: stat every file of a single-lower union so the kernel holds an inode (and the
  # daemon a node) for each, then let the kernel forget them.
  m=$(mount_impl "$impl" "$B/l4" mem)
  pid=$(daemon_pid "$impl" "$m" "$B/l4")
  s=$(now); find "$m" -printf '%s\n' >/dev/null; e=$(now)
  echo "  walk of $NMEM files: $(echo "$e - $s" | bc) s" >&2
  record "$M_RSS" "$impl" "$(rss_mib "$pid")"
  record "$M_FD" "$impl" "$(nfds "$pid")"
  sync; echo 2 > /proc/sys/vm/drop_caches; sleep 2
  record "$M_RSSD" "$impl" "$(rss_mib "$pid")"
  record "$M_FDD" "$impl" "$(nfds "$pid")"
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

median() { echo "$1" | tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
report() {
  local w k v impl
  echo "Machine: $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB, $(uname -r), layers on $(df -T "$B" | awk 'NR==2{print $2}'), upper and work dir on a fresh ext4 (loop device) per implementation and run; unionfs passthrough ${PASSTHROUGH:-unknown}, transport ${TRANSPORT:-unknown}. Median of $runs runs, seconds; ratio = kernel time / time."
  echo
  printf '| workload | kernel overlayfs |'
  for impl in "${impls[@]:1}"; do printf ' %s | ratio |' "$impl"; done
  echo
  printf '|---|---|'
  for _ in "${impls[@]:1}"; do printf -- '---|---|'; done
  echo
  for w in "${ROWS[@]}"; do
    k=$(median "${T["$w|kernel"]}")
    printf '| %s | %.3f |' "$w" "$k"
    for impl in "${impls[@]:1}"; do
      v=$(median "${T["$w|$impl"]}")
      printf ' %.3f | %.2f |' "$v" "$(echo "$k / $v" | bc -l)"
    done
    echo
  done
  echo
  [ $nodrop = 1 ] && { echo "Caches not dropped (--no-drop): cold rows and the memory table left out."; return; }
  echo "FUSE daemon memory after stat-ing every file of a $NMEM-file single-lower union (kernel overlayfs has no daemon). Median of $runs runs."
  echo
  printf '| |'
  for impl in "${impls[@]:1}"; do printf ' %s |' "$impl"; done
  echo
  printf '|---|'
  for _ in "${impls[@]:1}"; do printf -- '---|'; done
  echo
  for w in "${MROWS[@]}"; do
    printf '| %s |' "$w"
    for impl in "${impls[@]:1}"; do printf ' %s |' "$(median "${T["$w|$impl"]}")"; done
    echo
  done
}
if [ -n "$out" ]; then report | tee "$out"; else report; fi
rm -rf "$B/run" "$B/img"
