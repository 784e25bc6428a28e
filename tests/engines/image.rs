//! An OCI image archive for the engines, built without a registry from the example busybox
//! layers with umoci (`launch_common::oci_image`): layer 1 is `base`, layer 2 is `app` plus a
//! directory `/d` holding `old` and `sub/f` (for the "re-created directory" checks); its
//! command is `/app/hello.sh`, its tag `busybox`.

use std::path::PathBuf;
use std::sync::OnceLock;

pub use crate::launch_common::oci_image::require_umoci;

/// The image as an OCI archive (`tar` of an OCI image layout), built once per machine and
/// cached under the cargo target dir.
pub fn busybox_archive() -> PathBuf {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        let dir = crate::launch_common::oci_image::cached(
            "engines-busybox-oci",
            r#"
            umoci init --layout oci
            umoci new --image oci:busybox
            add_layer oci:busybox "$LAYERS/base"
            mkdir -p extra/d/sub
            echo old > extra/d/old
            echo old > extra/d/sub/f
            add_layer oci:busybox "$LAYERS/app" extra
            umoci config --image oci:busybox --config.cmd /app/hello.sh
            umoci gc --layout oci
            mkdir -p "$OUT"
            tar -C oci -cf "$OUT/image.tar" .
            "#,
        );
        dir.join("image.tar")
    })
    .clone()
}
