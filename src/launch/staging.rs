//! The per-run staging directory on the host, where the holder mounts the container root.

use std::path::PathBuf;

use super::{instance, Context, Error};

/// The per-run staging directory on the host: an empty directory the holder mounts a tmpfs on
/// in its private mount namespace. Removed on drop; leftovers of killed launchers are removed
/// by the next run.
#[derive(Debug)]
pub(super) struct Staging(pub(super) PathBuf);

impl Staging {
    fn base() -> PathBuf {
        std::env::temp_dir()
    }

    /// Where the staging directory of run `name` is.
    pub(super) fn path(name: &str) -> PathBuf {
        Self::base().join(name)
    }

    /// Makes it, private to us (0700).
    pub(super) fn create(name: &str) -> Result<Self, Error> {
        use std::os::unix::fs::DirBuilderExt;
        let p = Self::path(name);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&p)
            .ctx(|| format!("creating staging directory {}", p.display()))?;
        Ok(Staging(p))
    }

    /// Removes what killed launchers left.
    pub(super) fn remove_stale() {
        let Ok(rd) = std::fs::read_dir(Self::base()) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(instance::PREFIX) && instance::is_stale(&name) {
                // Only empty directories go: anything mounted there lived in a dead namespace.
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }

    /// Where the container root is mounted.
    pub(super) fn root(&self) -> PathBuf {
        self.0.join("root")
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}
