#!/usr/bin/env bash
# Launch-to-exec latency: how long `unionfs-run ... -- /bin/true` takes from start to the
# command's exit, against bubblewrap, crun, runc and podman on the same busybox root, in one
# run with hyperfine (interleaved warm-ups, N runs each). Prints a markdown table of means and
# ratios (engine time / unionfs-run time: above 1 means unionfs-run is faster).
#
#   scripts/bench-launch.sh [--runs N] [--out FILE]
#
# Needs root. Installs bubblewrap, crun, runc, podman and hyperfine from Debian if missing.
# Each engine runs the same thing: a new pid, mount, uts, ipc and network namespace on the
# example busybox root (scripts/make-example-layers.sh), /proc and /dev, then /bin/true.
# unionfs-run serves a FUSE union of the app and base layers with a throwaway tmpfs upper;
# bubblewrap binds the base layer; crun and runc run an OCI bundle of it; podman runs an image
# imported from it (with runc: crun refuses hybrid cgroup hosts such as this one, and the
# table then says so). An engine that cannot run here is reported, not measured.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=30
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift ;;
    --out) out=$2; shift ;;
    *) echo "usage: $0 [--runs N] [--out FILE]" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
need=()
for p in bubblewrap:bwrap crun:crun runc:runc podman:podman hyperfine:hyperfine; do
  command -v "${p#*:}" >/dev/null || need+=("${p%%:*}")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release -q -p unionfs --bin unionfs-run
run=$PWD/target/release/unionfs-run

work=${BENCH_DIR:-/var/tmp/unionfs-bench-launch}
mkdir -p "$work"
[ -x "$work/layers/base/bin/busybox" ] || scripts/make-example-layers.sh "$work/layers" >/dev/null
base=$work/layers/base
app=$work/layers/app

# An OCI bundle for crun and runc: the base layer as rootfs, no terminal, /bin/true.
bundle=$work/bundle
rm -rf "$bundle"; mkdir -p "$bundle"
(cd "$bundle" && runc spec)
# runc wants the rootfs as an absolute path that is no symlink.
sed -i -e 's/"terminal": true/"terminal": false/' -e 's/"sh"/"\/bin\/true"/' \
  -e "s|\"path\": \"rootfs\"|\"path\": \"$base\"|" "$bundle/config.json"

cmds=()
names=()
add() { names+=("$1"); cmds+=("$2"); }
add unionfs-run "$run --tmp-upper $app:$base -- /bin/true"
add bubblewrap "bwrap --unshare-all --die-with-parent --bind $base / --proc /proc --dev /dev /bin/true"
notes=()
if crun run --bundle "$bundle" bench-probe-$$ >/dev/null 2>"$work/crun.err"; then
  add crun "crun run --bundle $bundle bench-crun-$$"
else
  notes+=("crun: $(tr '\n' ' ' < "$work/crun.err" | cut -c1-150)")
fi
crun delete -f bench-probe-$$ >/dev/null 2>&1 || true
if runc run --bundle "$bundle" bench-probe-$$ >/dev/null 2>"$work/runc.err"; then
  add runc "runc run --bundle $bundle bench-runc-$$"
else
  notes+=("runc: $(tr '\n' ' ' < "$work/runc.err" | cut -c1-150)")
fi
runc delete -f bench-probe-$$ >/dev/null 2>&1 || true
if ! podman image exists localhost/unionfs-bench-busybox 2>/dev/null; then
  tar -C "$base" -c . | podman import -q - localhost/unionfs-bench-busybox >/dev/null
fi
# Limits no higher than podman's own: raising them needs CAP_SYS_RESOURCE, which root lacks on
# some hosts (this one), and runc then fails in the container's init.
podman_cmd="podman run --rm --runtime runc --cgroup-manager cgroupfs --network none --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 localhost/unionfs-bench-busybox /bin/true"
if $podman_cmd >/dev/null 2>"$work/podman.err"; then
  add "podman (runc)" "$podman_cmd"
else
  notes+=("podman: $(tr '\n' ' ' < "$work/podman.err" | cut -c1-150)")
fi

json=$work/result.json
args=()
for i in "${!cmds[@]}"; do args+=(-n "${names[$i]}" "${cmds[$i]}"); done
hyperfine -N --warmup 3 --runs "$runs" --export-json "$json" "${args[@]}" >&2

table=$(python3 - "$json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
ours = r[0]["mean"]
print("| engine | mean (ms) | min (ms) | stddev (ms) | ratio (engine / unionfs-run) |")
print("|---|---|---|---|---|")
for x in r:
    print(f"| {x['command']} | {x['mean']*1e3:.1f} | {x['min']*1e3:.1f} | {x['stddev']*1e3:.1f} | {x['mean']/ours:.2f} |")
EOF
)
{
  echo "Machine: $(nproc) cores, $(uname -r); $runs runs each after 3 warm-ups (hyperfine -N), the same busybox root."
  echo
  echo "$table"
  for n in "${notes[@]}"; do echo; echo "Not measured: $n"; done
} | tee ${out:+"$out"}
