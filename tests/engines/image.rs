//! An OCI image archive for the engines, built without a registry from the example busybox
//! layers with umoci: layer 1 is `base`, layer 2 is `app` plus a directory `/d` holding `old`
//! and `sub/f` (for the "re-created directory" checks); its command is `/app/hello.sh`, its
//! tag `busybox`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::launch_common::{example_layers, require};

/// Whether umoci (Debian package `umoci`) is there to build the image; fails under
/// `UNIONFS_REQUIRE_FUSE=1` when it is not.
pub fn require_umoci() -> bool {
    require(
        Command::new("umoci").arg("--version").output().is_ok(),
        "umoci is needed to build the test image (Debian package umoci)",
    )
}

/// The image as an OCI archive (`tar` of an OCI image layout), built once per machine and
/// cached under the cargo target dir.
pub fn busybox_archive() -> PathBuf {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        let tar = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("engines-busybox-oci.tar");
        let lock = std::fs::File::create(tar.with_extension("lock")).unwrap();
        // Test binaries may run in parallel: one builds, the others wait.
        let _l = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
        if !tar.exists() {
            build(&example_layers(), &tar);
        }
        tar
    })
    .clone()
}

fn build(layers: &Path, tar: &Path) {
    let work = tar.with_extension("build");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let script = r#"set -eu
        cd "$WORK"
        umoci init --layout oci
        umoci new --image oci:busybox
        umoci unpack --image oci:busybox b >/dev/null
        cp -a "$LAYERS/base/." b/rootfs/
        umoci repack --image oci:busybox b
        rm -rf b
        umoci unpack --image oci:busybox b >/dev/null
        cp -a "$LAYERS/app/." b/rootfs/
        mkdir -p b/rootfs/d/sub
        echo old > b/rootfs/d/old
        echo old > b/rootfs/d/sub/f
        umoci repack --image oci:busybox b
        rm -rf b
        umoci config --image oci:busybox --config.cmd /app/hello.sh
        umoci gc --layout oci
        tar -C oci -cf "$TAR.tmp" .
        mv "$TAR.tmp" "$TAR"
    "#;
    let o = Command::new("sh")
        .args(["-c", script])
        .env("WORK", &work)
        .env("LAYERS", layers)
        .env("TAR", tar)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&work);
    assert!(
        o.status.success(),
        "building the OCI image with umoci failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}
