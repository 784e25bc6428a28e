#!/usr/bin/env bash
# Builds a small three-layer example stack under ./example/mount-demo (or DIR, $1), mounts it with
# unionfs-mount, changes a few things through the mount, shows the merged view and the upper
# directory (an OCI layer diff), and unmounts. Needs root (FUSE mount) and a built binary.
# DIR must be new, empty, or made by an earlier run of this script (it holds the marker file
# .unionfs-demo): only then does the script clear what it made there.
set -euo pipefail
root=${1:-}
# A relative DIR is relative to where the script was called from, not to the repository.
case $root in "" | /*) ;; *) root=$PWD/$root ;; esac
cd "$(dirname "$0")/.."
root=${root:-$PWD/example/mount-demo}
bin=${UNIONFS_MOUNT:-target/release/unionfs-mount}
marker=.unionfs-demo
if [ -e "$root" ]; then
  if [ ! -d "$root" ]; then
    echo "demo.sh: $root exists and is not a directory: give a new or empty directory" >&2
    exit 2
  fi
  if [ -e "$root/$marker" ]; then
    # A run killed before its own unmount leaves the union mounted: rm must not go through it.
    umount "$root/mnt" 2>/dev/null || true
    rm -rf "${root:?}"/{base,app,fix,upper,mnt} "${root:?}/$marker"
  elif [ -n "$(ls -A "$root")" ]; then
    echo "demo.sh: $root is not empty and was not made by this script (no $marker in it);" \
      "nothing was changed: give a new or empty directory, e.g. scripts/demo.sh /tmp/unionfs-demo" >&2
    exit 2
  fi
fi
[ -x "$bin" ] || cargo build --release --bin unionfs-mount
mkdir -p "$root"/{base,app,fix,upper,mnt}
touch "$root/$marker"
# base: a tiny "distribution"
mkdir -p "$root"/base/etc "$root"/base/usr/bin "$root"/base/var/log
echo "base 1.0" > "$root"/base/etc/os-release
echo "root:x:0:0:root:/root:/bin/sh" > "$root"/base/etc/passwd
printf '#!/bin/sh\necho hello from base\n' > "$root"/base/usr/bin/hello
chmod 755 "$root"/base/usr/bin/hello
echo "old log" > "$root"/base/var/log/old.log
# app: adds files and replaces one
mkdir -p "$root"/app/opt/app "$root"/app/etc
echo "app 2.0" > "$root"/app/opt/app/VERSION
echo "app config" > "$root"/app/etc/app.conf
# fix: deletes a file and hides a directory's old contents (OCI whiteouts)
mkdir -p "$root"/fix/var/log
touch "$root"/fix/var/log/.wh..wh..opq "$root"/fix/etc/.wh.app.conf 2>/dev/null || {
  mkdir -p "$root"/fix/etc && touch "$root"/fix/etc/.wh.app.conf
}
echo "fresh log" > "$root"/fix/var/log/new.log

"$bin" "$root/fix:$root/app:$root/base" "$root/upper" "$root/mnt"
trap 'umount "$root/mnt" 2>/dev/null || true' EXIT
echo "== merged view"
(cd "$root/mnt" && find . | sort)
echo "== change things: append, delete a lower file, create, rename a lower directory"
echo "edited" >> "$root/mnt/etc/os-release"
rm "$root/mnt/etc/passwd"
echo "new" > "$root/mnt/etc/new.conf"
mv "$root/mnt/opt/app" "$root/mnt/opt/app2"
cat "$root/mnt/etc/os-release"
echo "== upper directory (an OCI layer diff)"
(cd "$root/upper" && find . -not -path './.wh..wh.unionfs*' | sort)
echo "== lower layers are untouched"
cat "$root/base/etc/os-release"
umount "$root/mnt"
trap - EXIT
echo "unmounted; layers are in $root"
