//! The container's file system view: what gets mounted where around the root, as a plan (plain
//! data, testable without root) and the code that carries it out, then pivot_root.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::config::{BindSpec, NetMode};
use super::{Context, Error};

/// Device nodes bound from the host into the container's /dev.
pub const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Files hidden behind /dev/null (kernel and host information a container must not read).
pub const MASKED_FILES: [&str; 6] = [
    "/proc/kcore",
    "/proc/keys",
    "/proc/timer_list",
    "/proc/sched_debug",
    "/proc/latency_stats",
    "/proc/sysrq-trigger",
];

/// Directories hidden behind an empty read-only tmpfs.
pub const MASKED_DIRS: [&str; 4] = [
    "/proc/acpi",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths made read-only (writing there would change the host kernel).
pub const READ_ONLY: [&str; 4] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys"];

/// One step of setting up the container's mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Mount a file system of type `fstype` on `target` (a directory, created if missing).
    Fs {
        /// File system type.
        fstype: &'static str,
        /// Mount point.
        target: PathBuf,
        /// Mount flags.
        flags: MsFlags,
        /// File-system-specific options.
        data: Option<&'static str>,
    },
    /// /sys: a fresh read-only sysfs when the kernel lets us, else a read-only bind of the host's.
    Sys {
        /// Mount point.
        target: PathBuf,
    },
    /// Bind `src` on `target` (created as a file or directory to match `src`).
    Bind {
        /// Source path.
        src: PathBuf,
        /// Mount point.
        target: PathBuf,
        /// Bind read-only.
        read_only: bool,
    },
    /// Create a symlink `link` → `to`.
    Symlink {
        /// Link target.
        to: &'static str,
        /// Link path.
        link: PathBuf,
    },
    /// Hide a file behind /dev/null, if it exists.
    MaskFile(PathBuf),
    /// Hide a directory behind an empty read-only tmpfs, if it exists.
    MaskDir(PathBuf),
    /// Make an existing path read-only.
    ReadOnly(PathBuf),
}

/// What to mount before and after pivot_root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The new root (a mount point).
    pub root: PathBuf,
    /// Steps with host paths as sources and targets under `root`.
    pub before_pivot: Vec<Step>,
    /// Steps with container paths, after pivot_root.
    pub after_pivot: Vec<Step>,
}

fn under(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

impl Plan {
    /// The standard container layout on `root`, plus the user's binds.
    pub fn new(root: &Path, _net: NetMode, binds: &[BindSpec]) -> Plan {
        let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        let mut b = vec![
            Step::Fs {
                fstype: "proc",
                target: under(root, "/proc"),
                flags: nosuid_nodev | MsFlags::MS_NOEXEC,
                data: None,
            },
            Step::Fs {
                fstype: "tmpfs",
                target: under(root, "/dev"),
                flags: MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
                data: Some("mode=755,size=65536k"),
            },
        ];
        for d in DEVICES {
            b.push(Step::Bind {
                src: PathBuf::from("/dev").join(d),
                target: under(root, &format!("/dev/{d}")),
                read_only: false,
            });
        }
        b.extend([
            Step::Fs {
                fstype: "devpts",
                target: under(root, "/dev/pts"),
                flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                data: Some("newinstance,ptmxmode=0666,mode=0620"),
            },
            Step::Symlink {
                to: "pts/ptmx",
                link: under(root, "/dev/ptmx"),
            },
            Step::Symlink {
                to: "/proc/self/fd",
                link: under(root, "/dev/fd"),
            },
            Step::Symlink {
                to: "/proc/self/fd/0",
                link: under(root, "/dev/stdin"),
            },
            Step::Symlink {
                to: "/proc/self/fd/1",
                link: under(root, "/dev/stdout"),
            },
            Step::Symlink {
                to: "/proc/self/fd/2",
                link: under(root, "/dev/stderr"),
            },
            Step::Fs {
                fstype: "tmpfs",
                target: under(root, "/dev/shm"),
                flags: nosuid_nodev | MsFlags::MS_NOEXEC,
                data: Some("mode=1777,size=65536k"),
            },
            Step::Fs {
                fstype: "mqueue",
                target: under(root, "/dev/mqueue"),
                flags: nosuid_nodev | MsFlags::MS_NOEXEC,
                data: None,
            },
            Step::Sys {
                target: under(root, "/sys"),
            },
            Step::Fs {
                fstype: "tmpfs",
                target: under(root, "/tmp"),
                flags: nosuid_nodev,
                data: Some("mode=1777"),
            },
        ]);
        for bs in binds {
            b.push(Step::Bind {
                src: bs.src.clone(),
                target: under(root, &bs.dst.to_string_lossy()),
                read_only: bs.read_only,
            });
        }
        let mut a: Vec<Step> = MASKED_FILES
            .iter()
            .map(|p| Step::MaskFile(p.into()))
            .collect();
        a.extend(MASKED_DIRS.iter().map(|p| Step::MaskDir(p.into())));
        a.extend(READ_ONLY.iter().map(|p| Step::ReadOnly(p.into())));
        Plan {
            root: root.to_path_buf(),
            before_pivot: b,
            after_pivot: a,
        }
    }

    /// The same plan without the masked and read-only kernel paths (`--privileged`).
    pub fn unmasked(mut self, yes: bool) -> Plan {
        if yes {
            self.after_pivot.clear();
        }
        self
    }

    /// Carry out the plan: mounts, pivot_root with the old root detached, masks.
    pub fn apply(&self) -> Result<(), Error> {
        for s in &self.before_pivot {
            apply_step(s)?;
        }
        pivot(&self.root)?;
        for s in &self.after_pivot {
            apply_step(s)?;
        }
        Ok(())
    }
}

/// The mount flags of the mount at `path` that a bind remount must repeat.
///
/// In a user namespace, flags inherited from a more privileged mount are locked: a remount
/// that omits them fails with EPERM, so read them back and keep them.
fn current_flags(path: &Path) -> Result<MsFlags, Error> {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let st = statvfs(path).ctx(|| format!("statvfs {}", path.display()))?;
    let f = st.flags();
    let mut m = MsFlags::empty();
    for (ff, mf) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(ff) {
            m |= mf;
        }
    }
    Ok(m)
}

/// Make the (bind) mount at `path` read-only, keeping its other flags.
pub fn remount_read_only(path: &Path) -> Result<(), Error> {
    let keep = current_flags(path)?;
    mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | keep,
        None::<&str>,
    )
    .ctx(|| format!("remounting {} read-only", path.display()))
}

fn mkdir_p(p: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(p).ctx(|| {
        format!(
            "creating mount point {} in the container root (a read-only root needs it in a layer)",
            p.display()
        )
    })
}

fn touch(p: &Path) -> Result<(), Error> {
    if p.exists() {
        return Ok(());
    }
    if let Some(d) = p.parent() {
        mkdir_p(d)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(p)
        .map(|_| ())
        .ctx(|| format!("creating mount point {}", p.display()))
}

fn apply_step(s: &Step) -> Result<(), Error> {
    match s {
        Step::Fs {
            fstype,
            target,
            flags,
            data,
        } => {
            mkdir_p(target)?;
            mount(Some(*fstype), target, Some(*fstype), *flags, *data)
                .ctx(|| format!("mounting {fstype} on {}", target.display()))
        }
        Step::Sys { target } => {
            mkdir_p(target)?;
            let ro =
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            // A fresh sysfs needs a network namespace owned by our user namespace; with
            // `--net host` in a rootless run the kernel refuses it, so bind the host's.
            if mount(Some("sysfs"), target, Some("sysfs"), ro, None::<&str>).is_ok() {
                return Ok(());
            }
            mount(
                Some("/sys"),
                target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .ctx(|| format!("binding /sys on {}", target.display()))?;
            remount_read_only(target)
        }
        Step::Bind {
            src,
            target,
            read_only,
        } => {
            let meta = std::fs::metadata(src)
                .ctx(|| format!("--bind source {} cannot be used", src.display()))?;
            if meta.is_dir() {
                mkdir_p(target)?;
            } else {
                touch(target)?;
            }
            mount(
                Some(src.as_path()),
                target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .ctx(|| format!("binding {} on {}", src.display(), target.display()))?;
            if *read_only {
                remount_read_only(target)?;
            }
            Ok(())
        }
        Step::Symlink { to, link } => match symlink(to, link) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(Error::msg(format!("symlink {}: {e}", link.display()))),
        },
        Step::MaskFile(p) => {
            if std::fs::symlink_metadata(p).is_err() {
                return Ok(());
            }
            mount(
                Some("/dev/null"),
                p,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .ctx(|| format!("masking {}", p.display()))
        }
        Step::MaskDir(p) => {
            if !p.is_dir() {
                return Ok(());
            }
            mount(
                Some("tmpfs"),
                p,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("size=0"),
            )
            .ctx(|| format!("masking {}", p.display()))
        }
        Step::ReadOnly(p) => {
            if std::fs::symlink_metadata(p).is_err() {
                return Ok(());
            }
            mount(
                Some(p.as_path()),
                p,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .ctx(|| format!("binding {} on itself", p.display()))?;
            remount_read_only(p)
        }
    }
}

/// Make `root` the root directory and detach the old one, so no host path stays reachable.
pub fn pivot(root: &Path) -> Result<(), Error> {
    nix::unistd::chdir(root).ctx(|| format!("chdir {}", root.display()))?;
    // pivot_root(".", ".") stacks the old root on top of the new one; detaching "." then
    // removes the old root without needing a directory for it inside the container.
    nix::unistd::pivot_root(".", ".").ctx(|| format!("pivot_root to {}", root.display()))?;
    umount2(".", MntFlags::MNT_DETACH).ctx(|| "detaching the old root".to_string())?;
    nix::unistd::chdir("/").ctx(|| "chdir /".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_has_the_container_layout() {
        let binds = [BindSpec {
            src: "/h".into(),
            dst: "/data".into(),
            read_only: true,
        }];
        let p = Plan::new(Path::new("/r"), NetMode::None, &binds);
        let targets: Vec<String> = p
            .before_pivot
            .iter()
            .filter_map(|s| match s {
                Step::Fs { target, .. } | Step::Bind { target, .. } | Step::Sys { target } => {
                    Some(target.to_string_lossy().into_owned())
                }
                _ => None,
            })
            .collect();
        for want in [
            "/r/proc",
            "/r/dev",
            "/r/dev/null",
            "/r/dev/pts",
            "/r/dev/shm",
            "/r/sys",
            "/r/data",
        ] {
            assert!(
                targets.iter().any(|t| t == want),
                "{want} missing from {targets:?}"
            );
        }
        // /dev must be mounted before the device binds that go into it.
        let pos = |w: &str| targets.iter().position(|t| t == w).unwrap();
        assert!(pos("/r/dev") < pos("/r/dev/null"));
        assert!(p
            .after_pivot
            .contains(&Step::MaskFile("/proc/kcore".into())));
        assert!(p
            .after_pivot
            .contains(&Step::MaskDir("/sys/firmware".into())));
        assert!(p.before_pivot.contains(&Step::Bind {
            src: "/h".into(),
            target: "/r/data".into(),
            read_only: true
        }));
    }
}
