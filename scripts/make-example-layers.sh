#!/bin/sh
# Build small example layers from Debian's busybox-static package, with no network beyond the
# package registry:
#   OUT/base     busybox, its applet symlinks, and the usual top-level directories
#   OUT/app      an application layer on top: /app/hello.sh, /etc/motd, /etc/hostname changed
#   OUT/whiteout a layer with `.wh.` whiteouts that deletes /etc/motd and /usr/share/doc from below
# Usage: scripts/make-example-layers.sh [OUT]   (default ./example; OUT is replaced)
# A union of them, topmost first: OUT/whiteout:OUT/app:OUT/base
set -eu

out=${1:-./example}
deb=${BUSYBOX_DEB:-}
work=$(mktemp -d)
chmod 0755 "$work" # apt-get download runs as _apt and must write here
trap 'rm -rf "$work"' EXIT

if [ -z "$deb" ]; then
    # apt-get download needs the package lists; fetch them once when they are missing.
    if ! apt-cache show busybox-static >/dev/null 2>&1; then
        apt-get update >/dev/null
    fi
    (cd "$work" && apt-get download busybox-static >/dev/null)
    deb=$(ls "$work"/busybox-static_*.deb)
fi
dpkg-deb -x "$deb" "$work/x"
bb="$work/x/bin/busybox"
[ -x "$bb" ] || { echo "no bin/busybox in $deb" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$out/base" "$out/app" "$out/whiteout"
base=$(cd "$out/base" && pwd)

# base: busybox plus one symlink per applet, at the path busybox itself reports.
mkdir -p "$base/bin" "$base/sbin" "$base/usr/bin" "$base/usr/sbin"
cp "$bb" "$base/bin/busybox"
chmod 0755 "$base/bin/busybox"
"$bb" --list-full | while read -r applet; do
    [ "$applet" = bin/busybox ] && continue
    [ -e "$base/$applet" ] && continue
    mkdir -p "$base/$(dirname "$applet")"
    ln -s /bin/busybox "$base/$applet"
done
for d in proc sys dev tmp root etc var/tmp home run mnt; do mkdir -p "$base/$d"; done
chmod 1777 "$base/tmp" "$base/var/tmp"
chmod 0700 "$base/root"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$base/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$base/etc/group"
echo base >"$base/etc/hostname"
echo "welcome to the base layer" >"$base/etc/motd"
mkdir -p "$base/usr/share/doc/busybox"
cp -r "$work/x/usr/share/doc/busybox-static/." "$base/usr/share/doc/busybox/" 2>/dev/null || true
echo "from base" >"$base/usr/share/doc/busybox/README.layer"

# app: adds a program and changes files from base.
mkdir -p "$out/app/app" "$out/app/etc"
printf '#!/bin/sh\necho "hello from the app layer on $(hostname)"\n' >"$out/app/app/hello.sh"
chmod 0755 "$out/app/app/hello.sh"
echo app >"$out/app/etc/hostname"
echo "welcome to the app layer" >"$out/app/etc/motd"

# whiteout: deletes /etc/motd and the whole /usr/share/doc of the layers below.
mkdir -p "$out/whiteout/etc" "$out/whiteout/usr/share"
: >"$out/whiteout/etc/.wh.motd"
: >"$out/whiteout/usr/share/.wh.doc"
echo "whiteout layer was here" >"$out/whiteout/etc/issue"

echo "example layers in $out: base, app, whiteout (use $out/whiteout:$out/app:$out/base)"
