//! Where the container's root filesystem comes from: the union of the layers (the product) or,
//! for development, a bind mount of a plain directory. The holder calls [`RootProvider::mount`]
//! in its private mount namespace and keeps the returned guard alive while the container runs.

use std::any::Any;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::config::{LaunchConfig, RootSource};
use super::idmap::MapPlan;
use super::{Context, Error};

/// Mounts a container root and keeps it alive; dropping the returned guard unmounts it.
pub trait RootProvider: std::fmt::Debug {
    /// Checks that can fail early, before any process is created.
    fn preflight(&self) -> Result<(), Error>;
    /// Mount the root on `target` in the current mount namespace.
    ///
    /// `upper` and `work` override the configured upper (used for `--tmp-upper`, whose
    /// directories exist only in the holder's mount namespace).
    fn mount(
        &self,
        target: &Path,
        upper: Option<&Path>,
        work: Option<&Path>,
    ) -> Result<Box<dyn Any>, Error>;
}

/// The provider for `cfg`.
pub fn provider_for(cfg: &LaunchConfig) -> Box<dyn RootProvider> {
    match cfg.root_source {
        RootSource::Union => Box::new(UnionRoot {
            lowers: cfg.lowers.clone(),
            upper: cfg.upper.clone(),
            read_only: cfg.read_only,
            written_under: cfg.needs_userns().then(|| {
                let (euid, egid) = (nix::unistd::geteuid(), nix::unistd::getegid());
                MapPlan::decide(euid.as_raw(), egid.as_raw(), &cfg.uid_maps, &cfg.gid_maps)
                    .id_maps()
            }),
        }),
        RootSource::Bind => Box::new(BindRoot {
            dir: cfg.lowers[0].clone(),
            read_only: cfg.read_only,
        }),
    }
}

/// The union of the layers, served by FUSE threads of the holder.
#[derive(Debug, Clone)]
pub struct UnionRoot {
    /// Lower layers, topmost first.
    pub lowers: Vec<PathBuf>,
    /// Upper layer.
    pub upper: Option<PathBuf>,
    /// Read-only union.
    pub read_only: bool,
    /// The user namespace's id maps, recorded in the work dir: files reach the upper as host
    /// ids, which `unionfs-layer export` turns back into container ids with them.
    pub written_under: Option<crate::mount::IdMaps>,
}

impl RootProvider for UnionRoot {
    fn preflight(&self) -> Result<(), Error> {
        fuse_access()
    }

    fn mount(
        &self,
        target: &Path,
        upper: Option<&Path>,
        work: Option<&Path>,
    ) -> Result<Box<dyn Any>, Error> {
        let mut mc = crate::mount::MountConfig::new(
            self.lowers.clone(),
            upper.map(Path::to_path_buf).or_else(|| self.upper.clone()),
        );
        mc.workdir = work.map(Path::to_path_buf);
        mc.read_only = self.read_only;
        mc.written_under = self.written_under.clone();
        // A container root holds setuid programs and is used by many uids.
        mc.allow_other = true;
        mc.suid = true;
        mc.fsname = "unionfs-run".to_string();
        // Device nodes in a layer must not become a way to the host's devices; the container's
        // /dev is a tmpfs with binds of the safe ones.
        mc.dev = false;
        // Served over the ring too (the default): this process also sits in the mount
        // namespace that holds the union, so its last exiting thread waits for the ring
        // queues, one of them its own; that only works because the rings do not defer task
        // work (see `sys::uring::Queue::new`). Seven launch test runs on 6.18, no hang.
        mount_union(&mc, target)
    }
}

/// Mount the union through the library; the holder process keeps the guard, whose drop
/// unmounts lazily and stops the FUSE threads.
fn mount_union(mc: &crate::mount::MountConfig, target: &Path) -> Result<Box<dyn Any>, Error> {
    let guard = mc
        .mount(target)
        .map_err(|e| Error::msg(format!("mounting the union: {e}")))?;
    Ok(Box::new(guard))
}

/// Check that this process can open /dev/fuse, with a message that says how to fix it.
pub fn fuse_access() -> Result<(), Error> {
    use nix::fcntl::{open, OFlag};
    use nix::sys::stat::Mode;
    match open("/dev/fuse", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty()) {
        Ok(_fd) => Ok(()),
        Err(nix::errno::Errno::EACCES) | Err(nix::errno::Errno::EPERM) => Err(Error::msg(format!(
            "cannot open /dev/fuse as uid {}: permission denied. The union root is served over FUSE, and \
             this host's /dev/fuse is not accessible to you (mode {}; most distributions ship 0666). \
             Fix, as root: `chmod 0666 /dev/fuse` (lasts until reboot) or a udev rule \
             `KERNEL==\"fuse\", MODE=\"0666\"` in /etc/udev/rules.d/99-fuse.rules",
            nix::unistd::getuid(),
            std::fs::metadata("/dev/fuse")
                .map(|m| format!("{:o}", std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777))
                .unwrap_or_else(|_| "unknown".into())
        ))),
        Err(nix::errno::Errno::ENOENT) => Err(Error::msg(
            "/dev/fuse does not exist: load the fuse module (`modprobe fuse`) or create the node \
             (`mknod -m 0666 /dev/fuse c 10 229`) as root",
        )),
        Err(e) => Err(Error::msg(format!("cannot open /dev/fuse: {}", e.desc()))),
    }
}

/// A plain directory bind-mounted as the root: no layering (development stand-in).
#[derive(Debug, Clone)]
pub struct BindRoot {
    /// The directory.
    pub dir: PathBuf,
    /// Bind read-only.
    pub read_only: bool,
}

/// Unmounts a bind stand-in on drop.
struct BindGuard(PathBuf);

impl Drop for BindGuard {
    fn drop(&mut self) {
        let _ = umount2(&self.0, MntFlags::MNT_DETACH);
    }
}

impl RootProvider for BindRoot {
    fn preflight(&self) -> Result<(), Error> {
        if self.dir.is_dir() {
            Ok(())
        } else {
            Err(Error::msg(format!(
                "{} is not a directory",
                self.dir.display()
            )))
        }
    }

    fn mount(
        &self,
        target: &Path,
        _upper: Option<&Path>,
        _work: Option<&Path>,
    ) -> Result<Box<dyn Any>, Error> {
        mount(
            Some(&self.dir),
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .ctx(|| {
            format!(
                "bind-mounting {} on {}",
                self.dir.display(),
                target.display()
            )
        })?;
        let guard = BindGuard(target.to_path_buf());
        if self.read_only {
            super::rootfs::remount_read_only(target)?;
        }
        Ok(Box::new(guard))
    }
}
