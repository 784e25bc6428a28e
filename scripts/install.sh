#!/usr/bin/env bash
# Installs unionfs-mount, unionfs-run, unionfs-layer and (from the harness crate in harness/)
# unionfs-harness into PREFIX/bin (default /usr/local) with their man pages and bash/zsh
# completions, plus the names
# mount(8) looks for, so that `mount -t fuse.unionfs` and /etc/fstab entries work:
#   PREFIX/bin/unionfs          -> unionfs-mount  (what mount.fuse3 runs for type fuse.unionfs)
#   /sbin/mount.fuse.unionfs    -> unionfs-mount  (what mount(8) runs directly, with --mount-helper)
#
#   scripts/install.sh [--prefix DIR] [--mount-helper]
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=/usr/local
helper=0
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=$2; shift ;;
    --mount-helper) helper=1 ;;
    *) echo "usage: $0 [--prefix DIR] [--mount-helper]" >&2; exit 2 ;;
  esac
  shift
done
# Every package: unionfs-harness and unionfs-docs are the harness crate's.
cargo build --release --workspace --bins
install -d "$prefix/bin"
install -m 0755 target/release/unionfs-mount target/release/unionfs-run target/release/unionfs-layer \
  target/release/unionfs-harness "$prefix/bin/"
ln -sf unionfs-mount "$prefix/bin/unionfs"
# Man pages and bash/zsh completions, generated from the command definitions.
docs=$(mktemp -d)
target/release/unionfs-docs "$docs" >/dev/null
install -d "$prefix/share/man/man8" "$prefix/share/man/man1" \
  "$prefix/share/bash-completion/completions" "$prefix/share/zsh/site-functions"
install -m 0644 "$docs"/man/*.8 "$prefix/share/man/man8/"
install -m 0644 "$docs"/man/*.1 "$prefix/share/man/man1/"
for f in "$docs"/completions/bash/*.bash; do
  install -m 0644 "$f" "$prefix/share/bash-completion/completions/$(basename "$f" .bash)"
done
install -m 0644 "$docs"/completions/zsh/_* "$prefix/share/zsh/site-functions/"
rm -rf "$docs"
if [ $helper = 1 ]; then
  ln -sf "$prefix/bin/unionfs-mount" /sbin/mount.fuse.unionfs
fi
echo "installed into $prefix/bin; try: mount -t fuse.unionfs unionfs MNT -o lowerdir=L1:L2,upperdir=U,workdir=W"
