//! Cgroups behind one interface: detection (v2, v1, hybrid), creation with limits, placement,
//! and teardown that kills everything inside.

pub mod v1;
pub mod v2;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::config::{CgroupChoice, Limits};
use super::{instance, Error};

/// What cgroup hierarchies this host has mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Only a v2 tree at this path.
    V2(PathBuf),
    /// v1 hierarchies: controller name → mount point.
    V1(BTreeMap<String, PathBuf>),
    /// v1 controllers plus a v2 tree (usually without controllers) at `unified`.
    Hybrid {
        /// v1 hierarchies: controller name → mount point.
        v1: BTreeMap<String, PathBuf>,
        /// Path of the v2 tree.
        unified: PathBuf,
    },
    /// No cgroup file system mounted.
    None,
}

/// Read the cgroup layout from a mountinfo text (see proc(5)).
pub fn layout_from_mountinfo(text: &str) -> Layout {
    let mut v1 = BTreeMap::new();
    let mut v2 = None;
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mnt = match left.split(' ').nth(4) {
            Some(m) => PathBuf::from(m.replace("\\040", " ")),
            None => continue,
        };
        let mut r = right.split(' ');
        let (fstype, _src, opts) = (r.next(), r.next(), r.next().unwrap_or(""));
        match fstype {
            Some("cgroup2") => {
                v2.get_or_insert(mnt);
            }
            Some("cgroup") => {
                for o in opts.split(',') {
                    if matches!(o, "memory" | "pids" | "cpu" | "freezer") {
                        v1.entry(o.to_string()).or_insert_with(|| mnt.clone());
                    }
                }
            }
            _ => {}
        }
    }
    match (v1.is_empty(), v2) {
        (true, Some(u)) => Layout::V2(u),
        (false, Some(u)) => Layout::Hybrid { v1, unified: u },
        (false, None) => Layout::V1(v1),
        (true, None) => Layout::None,
    }
}

/// The layout of the host this process runs on.
pub fn detect() -> Layout {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| layout_from_mountinfo(&t))
        .unwrap_or(Layout::None)
}

/// A way of creating and removing cgroups; v1 and v2 implement it.
pub trait Backend: std::fmt::Debug + Send {
    /// A short description for messages ("cgroup v1 (memory, pids, ...)").
    fn describe(&self) -> String;
    /// Why this process cannot create the cgroups `limits` need here, if it cannot (not root,
    /// not delegated), naming the controllers that are missing.
    fn unusable_reason(&self, limits: &Limits) -> Option<String>;
    /// What an unprivileged user does on this host to get limits (delegation fits v2, not v1).
    fn fix_hint(&self) -> String;
    /// How many times the kernel's out-of-memory killer killed a process of cgroup `name`.
    fn oom_kills(&self, _name: &str) -> u64 {
        0
    }
    /// Which of `limits` this backend cannot enforce on this host (names of the options).
    fn unsupported(&self, limits: &Limits) -> Vec<&'static str>;
    /// Create cgroup `name` with `limits` (those it supports).
    fn create(&self, name: &str, limits: &Limits) -> Result<(), Error>;
    /// Move process `pid` into cgroup `name`.
    fn add(&self, name: &str, pid: Pid) -> Result<(), Error>;
    /// Processes in cgroup `name`.
    fn procs(&self, name: &str) -> Vec<Pid>;
    /// Send SIGKILL to every process in cgroup `name`, atomically where the kernel can.
    fn kill(&self, name: &str) -> Result<(), Error>;
    /// Remove cgroup `name` (must be empty).
    fn remove(&self, name: &str) -> Result<(), Error>;
    /// Names of cgroups following our naming scheme.
    fn list_ours(&self) -> Vec<String>;
}

/// Pick a backend for `choice` on `layout`.
pub fn backend_for(
    choice: CgroupChoice,
    layout: &Layout,
) -> Result<Option<Box<dyn Backend>>, Error> {
    let v1 = |m: &BTreeMap<String, PathBuf>| Box::new(v1::V1::new(m.clone())) as Box<dyn Backend>;
    let v2 = |p: &Path| Box::new(v2::V2::new(p.to_path_buf())) as Box<dyn Backend>;
    Ok(match (choice, layout) {
        (CgroupChoice::Disabled, _) | (CgroupChoice::Auto, Layout::None) => None,
        (CgroupChoice::Auto | CgroupChoice::V2, Layout::V2(p)) => Some(v2(p)),
        (CgroupChoice::Auto | CgroupChoice::V1, Layout::V1(m)) => Some(v1(m)),
        // On a hybrid host the controllers live in v1; the v2 tree can only place and kill.
        (CgroupChoice::Auto | CgroupChoice::V1, Layout::Hybrid { v1: m, .. }) => {
            Some(Box::new(v1::V1::new(m.clone()).on_hybrid_host()))
        }
        (CgroupChoice::V2, Layout::Hybrid { unified, .. }) => Some(v2(unified)),
        (CgroupChoice::V1, _) => {
            return Err(Error::msg(
                "--cgroup v1: no cgroup v1 hierarchy is mounted here; use --cgroup auto",
            ))
        }
        (CgroupChoice::V2, _) => {
            return Err(Error::msg(
                "--cgroup v2: no cgroup2 file system is mounted here; use --cgroup auto",
            ))
        }
    })
}

/// Remove cgroups left by launchers that died (SIGKILL gives them no chance to clean up).
pub fn remove_stale(backend: &dyn Backend) {
    for name in backend.list_ours() {
        if instance::is_stale(&name) {
            let _ = teardown(backend, &name);
        }
    }
}

/// Kill everything in `name`, wait until it is empty (up to a few seconds), remove it.
pub fn teardown(backend: &dyn Backend, name: &str) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Usually the command ended and was reaped: an empty cgroup needs no freeze and kill
        // (on v1 the freeze alone cost milliseconds of every launch).
        if !backend.procs(name).is_empty() {
            backend.kill(name)?;
        }
        if backend.procs(name).is_empty() {
            // Killed tasks leave the cgroup only once fully exited; rmdir says EBUSY until then.
            match backend.remove(name) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => {}
            }
        } else if Instant::now() > deadline {
            return Err(Error::msg(format!(
                "cgroup {name} still has processes after SIGKILL for 10s ({:?})",
                backend.procs(name)
            )));
        }
        // Killed tasks leave within a millisecond or two; a long sleep here was wall time of
        // every launch.
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// One live cgroup of this run; dropping it kills what is left inside and removes it.
#[derive(Debug)]
pub struct CgroupGuard {
    backend: Box<dyn Backend>,
    name: String,
    removed: bool,
}

impl CgroupGuard {
    /// Create cgroup `name` in `backend` with `limits`.
    pub fn create(backend: Box<dyn Backend>, name: &str, limits: &Limits) -> Result<Self, Error> {
        backend.create(name, limits)?;
        Ok(CgroupGuard {
            backend,
            name: name.to_string(),
            removed: false,
        })
    }

    /// Move `pid` into this cgroup.
    pub fn add(&self, pid: Pid) -> Result<(), Error> {
        self.backend.add(&self.name, pid)
    }

    /// The backend this cgroup lives in.
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// The cgroup's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Kill all processes inside and remove the cgroup.
    pub fn teardown(mut self) -> Result<(), Error> {
        self.removed = true;
        teardown(self.backend.as_ref(), &self.name)
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if !self.removed {
            let _ = teardown(self.backend.as_ref(), &self.name);
        }
    }
}

/// The value of `key` in a flat-keyed cgroup file (`memory.events`, `memory.oom_control`).
pub(crate) fn read_key(path: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Read a cgroup.procs-style file into pids.
pub(crate) fn read_pids(path: &Path) -> Vec<Pid> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .map(Pid::from_raw)
        .collect()
}

/// Write `value` to a cgroup control file, naming the file in the error.
pub(crate) fn write_file(path: &Path, value: &str) -> Result<(), Error> {
    std::fs::write(path, value)
        .map_err(|e| Error::msg(format!("writing {value:?} to {}: {e}", path.display())))
}

/// Whether this process may create directories in `dir` and write its `cgroup.procs`.
pub(crate) fn writable(dir: &Path) -> bool {
    use nix::unistd::{access, AccessFlags};
    access(dir, AccessFlags::W_OK | AccessFlags::X_OK).is_ok()
        && access(&dir.join("cgroup.procs"), AccessFlags::W_OK).is_ok()
}

/// Entries of `dir` that follow our naming scheme.
pub(crate) fn list_ours_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(instance::PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
30 29 0:26 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
31 29 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
32 29 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
33 29 0:29 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
";

    #[test]
    fn detects_layouts() {
        match layout_from_mountinfo(HYBRID) {
            Layout::Hybrid { v1, unified } => {
                assert_eq!(unified, PathBuf::from("/sys/fs/cgroup/unified"));
                assert_eq!(v1["cpu"], PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
                assert_eq!(v1.len(), 3);
            }
            o => panic!("{o:?}"),
        }
        let v2 = "30 29 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            layout_from_mountinfo(v2),
            Layout::V2("/sys/fs/cgroup".into())
        );
        assert_eq!(layout_from_mountinfo(""), Layout::None);
    }

    #[test]
    fn chooses_backends() {
        let l = layout_from_mountinfo(HYBRID);
        assert!(backend_for(CgroupChoice::Auto, &l)
            .unwrap()
            .unwrap()
            .describe()
            .contains("v1"));
        assert!(backend_for(CgroupChoice::V2, &l)
            .unwrap()
            .unwrap()
            .describe()
            .contains("v2"));
        assert!(backend_for(CgroupChoice::Disabled, &l).unwrap().is_none());
        assert!(backend_for(CgroupChoice::V1, &Layout::V2("/x".into())).is_err());
    }
}
