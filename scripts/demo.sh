#!/usr/bin/env bash
# Builds a small three-layer example stack under ./example/mount-demo (or $1), mounts it with
# unionfs-mount, changes a few things through the mount, shows the merged view and the upper
# directory (an OCI layer diff), and unmounts. Needs root (FUSE mount) and a built binary.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-example/mount-demo}
bin=${UNIONFS_MOUNT:-target/release/unionfs-mount}
[ -x "$bin" ] || cargo build --release --bin unionfs-mount
rm -rf "$root"
mkdir -p "$root"/{base,app,fix,upper,mnt}
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
