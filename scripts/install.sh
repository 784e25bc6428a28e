#!/usr/bin/env bash
# Installs unionfs-mount, unionfs-run, unionfs-layer and (from the crates harness/ and
# snapshotter/) unionfs-harness and unionfs-snapshotter into PREFIX/bin (default /usr/local) with their man pages and bash/zsh
# completions.
#
# `mount -t fuse.unionfs-mount` and /etc/fstab entries of that type need no extra name:
# mount.fuse3 runs the program named after the type's subtype, `unionfs-mount` itself, from the
# shell's default PATH (/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin). With
# --mount-helper, /sbin/mount.fuse.unionfs-mount -> PREFIX/bin/unionfs-mount is added too
# (what mount(8) runs directly for that type, without mount.fuse3).
#
# Nothing another package owns is ever installed over: every destination is checked with
# `dpkg-query -S` (and `rpm -qf`) where those exist, and one owned file stops the install
# before anything is written, naming the file and its package.
#
#   scripts/install.sh [--prefix DIR] [--mount-helper] [--bin-dir DIR]
#
# --bin-dir DIR installs binaries already built in DIR (e.g. target/debug) instead of building
# a release; unionfs-harness and the man pages (made by unionfs-docs) are skipped, with a note,
# when DIR lacks them.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=/usr/local
helper=0
bindir=
usage="usage: $0 [--prefix DIR] [--mount-helper] [--bin-dir DIR]"
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=${2:?$usage}; shift ;;
    --mount-helper) helper=1 ;;
    --bin-dir) bindir=${2:?$usage}; shift ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$bindir" ]; then
  # Every package: unionfs-harness and unionfs-docs are the harness crate's.
  cargo build --release --workspace --bins
  bindir=target/release
fi
bins=()
for b in unionfs-mount unionfs-run unionfs-layer unionfs-harness unionfs-snapshotter; do
  if [ -x "$bindir/$b" ]; then
    bins+=("$bindir/$b")
  elif [ "$b" = unionfs-harness ] || [ "$b" = unionfs-snapshotter ]; then
    echo "note: $bindir/$b not built: not installed (cargo build --workspace --bins builds it)" >&2
  else
    echo "error: $bindir/$b not found: build it first (cargo build --release)" >&2
    exit 1
  fi
done

# Man pages and completions, generated from the command definitions, into a staging dir first
# so that every destination is known before the ownership check.
docs=$(mktemp -d)
trap 'rm -rf "$docs"' EXIT
if [ -x "$bindir/unionfs-docs" ]; then
  "$bindir/unionfs-docs" "$docs" >/dev/null
else
  echo "note: $bindir/unionfs-docs not built: man pages and completions not installed" >&2
fi
declare -A dest # destination -> source file
for b in "${bins[@]}"; do dest["$prefix/bin/$(basename "$b")"]=$b; done
for f in "$docs"/man/*.8; do [ -e "$f" ] && dest["$prefix/share/man/man8/$(basename "$f")"]=$f; done
for f in "$docs"/man/*.1; do [ -e "$f" ] && dest["$prefix/share/man/man1/$(basename "$f")"]=$f; done
for f in "$docs"/completions/bash/*.bash; do
  [ -e "$f" ] && dest["$prefix/share/bash-completion/completions/$(basename "$f" .bash)"]=$f
done
for f in "$docs"/completions/zsh/_*; do
  [ -e "$f" ] && dest["$prefix/share/zsh/site-functions/$(basename "$f")"]=$f
done
helper_link=/sbin/mount.fuse.unionfs-mount

# The names one path goes by in a package database: as given, with its directory resolved, and
# its merged-/usr twin (Debian records /sbin/mount.fuse3, which is also /usr/sbin/mount.fuse3).
aliases() {
  local p=$1 dir base real
  dir=$(dirname "$p") base=$(basename "$p")
  echo "$p"
  if real=$(cd "$dir" 2>/dev/null && pwd -P); then echo "$real/$base"; fi
  case "$p" in
    /usr/bin/* | /usr/sbin/* | /usr/lib/* | /usr/lib64/*) echo "${p#/usr}" ;;
    /bin/* | /sbin/* | /lib/* | /lib64/*) echo "/usr$p" ;;
  esac
}

# Prints the package that owns path $1, if any.
owner() {
  local a line
  while read -r a; do
    if command -v dpkg-query >/dev/null 2>&1; then
      # `PKG: PATH` lines; diversions and directory matches are other lines.
      while IFS= read -r line; do
        if [[ $line != diversion\ * && $line == *": $a" ]]; then
          echo "${line%%: *}"
          return
        fi
      done < <(dpkg-query -S -- "$a" 2>/dev/null || true)
    fi
    if command -v rpm >/dev/null 2>&1 && line=$(rpm -qf -- "$a" 2>/dev/null); then
      echo "$line"; return
    fi
  done < <(aliases "$1" | sort -u)
}

conflicts=0
check() {
  local pkg
  pkg=$(owner "$1")
  if [ -n "$pkg" ]; then
    echo "error: $1 belongs to package $pkg: not installing over it" >&2
    conflicts=1
  fi
}
for d in "${!dest[@]}"; do check "$d"; done
if [ $helper = 1 ]; then check "$helper_link"; fi
if [ $conflicts = 1 ]; then
  echo "nothing was installed: choose another --prefix (e.g. /usr/local or /opt/unionfs)" >&2
  exit 1
fi

for d in "${!dest[@]}"; do
  install -d "$(dirname "$d")"
  case "$d" in
    "$prefix/bin/"*) install -m 0755 "${dest[$d]}" "$d" ;;
    *) install -m 0644 "${dest[$d]}" "$d" ;;
  esac
done
# Earlier versions of this script linked PREFIX/bin/unionfs (the name of Debian's unionfs-fuse
# binary) and /sbin/mount.fuse.unionfs: remove those links, but only if they are ours.
if [ "$(readlink "$prefix/bin/unionfs" 2>/dev/null)" = unionfs-mount ]; then
  rm -f "$prefix/bin/unionfs"
fi
if [ "$(readlink /sbin/mount.fuse.unionfs 2>/dev/null)" = "$prefix/bin/unionfs-mount" ]; then
  rm -f /sbin/mount.fuse.unionfs
fi
if [ $helper = 1 ]; then
  ln -sf "$prefix/bin/unionfs-mount" "$helper_link"
fi
echo "installed into $prefix/bin; try: mount -t fuse.unionfs-mount unionfs MNT -o lowerdir=L1:L2,upperdir=U,workdir=W"
