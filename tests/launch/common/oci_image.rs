//! OCI image layouts built without a registry from the example busybox layers, with umoci
//! (Debian package `umoci`): the launcher's image tests and the container engines' tests
//! (which tar a layout into an OCI archive) build theirs here.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{example_layers, require};

/// Whether umoci is there to build test images; fails under `UNIONFS_REQUIRE_FUSE=1` when it
/// is not.
pub fn require_umoci() -> bool {
    require(
        Command::new("umoci").arg("--version").output().is_ok(),
        "umoci is needed to build the test image (Debian package umoci)",
    )
}

/// Shell functions the scripts of [`umoci_script`] may use.
const PRELUDE: &str = r#"set -eu
# add_layer oci:TAG SRC...: a new layer on TAG holding the contents of the SRC directories
add_layer() {
    img=$1; shift
    rm -rf .bundle
    umoci unpack --image "$img" .bundle >/dev/null
    for s in "$@"; do cp -a "$s/." .bundle/rootfs/; done
    umoci repack --image "$img" .bundle
    rm -rf .bundle
}
"#;

/// Runs the shell `script` in `work` (made anew, removed after), with `$LAYERS` the example
/// layers (base/, app/, whiteout/), `add_layer` defined and each of `env` set; panics with the
/// script's stderr when it fails.
pub fn umoci_script(work: &Path, script: &str, env: &[(&str, &Path)]) {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).unwrap();
    let o = Command::new("sh")
        .args(["-c", &format!("{PRELUDE}cd \"$WORK\"\n{script}")])
        .env("WORK", work)
        .env("LAYERS", example_layers())
        .envs(env.iter().map(|(k, v)| (k, v.as_os_str())))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(work);
    assert!(
        o.status.success(),
        "building the OCI image with umoci failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The result of `script` (run by [`umoci_script`] with `$OUT` to fill), built once per
/// machine under the cargo target dir as `name` and shared by the test binaries.
pub fn cached(name: &str, script: &str) -> PathBuf {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let lock = std::fs::File::create(out.with_extension("lock")).unwrap();
    // Test binaries may run in parallel: one builds, the others wait.
    let _l = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    if !out.exists() {
        let tmp = out.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        umoci_script(&out.with_extension("build"), script, &[("OUT", &tmp)]);
        std::fs::rename(&tmp, &out).unwrap();
    }
    out
}
