//! The cgroup v1 backend: one directory per controller hierarchy (memory, pids, cpu, freezer).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{list_ours_in, read_pids, writable, write_file, Backend};
use crate::launch::config::Limits;
use crate::launch::Error;

/// Controllers we create a cgroup in, when the host has them.
const USED: [&str; 4] = ["memory", "pids", "cpu", "freezer"];

/// cgroup v1: controller name → the directory our cgroups are created in.
#[derive(Debug, Clone)]
pub struct V1 {
    parents: BTreeMap<String, PathBuf>,
    /// Controller → the hierarchy's mount point (for the delegation advice).
    mounts: BTreeMap<String, PathBuf>,
    /// The host also has a v2 tree (without these controllers): advice must not point there.
    hybrid: bool,
}

/// This process's own cgroup path in each v1 hierarchy (from /proc/self/cgroup).
fn own_paths() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrls, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        for c in ctrls.split(',') {
            out.insert(c.to_string(), path.to_string());
        }
    }
    out
}

impl V1 {
    /// A backend over `mounts` (controller → hierarchy mount point).
    ///
    /// Root creates its cgroups at the top of each hierarchy (limits then nest under nothing
    /// the launcher's caller set up); anyone else only inside its own cgroup, i.e. a subtree
    /// delegated to it.
    pub fn new(mounts: BTreeMap<String, PathBuf>) -> Self {
        let root = nix::unistd::geteuid().is_root();
        let own = own_paths();
        let parents = mounts
            .clone()
            .into_iter()
            .filter(|(c, _)| USED.contains(&c.as_str()))
            .map(|(c, m)| {
                let p = if root {
                    m
                } else {
                    match own.get(&c).map(|s| s.trim_matches('/')).unwrap_or("") {
                        "" => m,
                        rel => m.join(rel),
                    }
                };
                (c, p)
            })
            .collect();
        V1 {
            parents,
            mounts,
            hybrid: false,
        }
    }

    /// The same backend on a hybrid host (v1 controllers beside a controller-less v2 tree).
    pub fn on_hybrid_host(mut self) -> Self {
        self.hybrid = true;
        self
    }

    /// A backend whose cgroups are created directly under the given directories.
    pub fn with_parents(parents: BTreeMap<String, PathBuf>) -> Self {
        V1 {
            mounts: parents.clone(),
            parents,
            hybrid: false,
        }
    }

    /// The controllers `limits` need, with the option that needs each.
    fn needed(limits: &Limits) -> Vec<(&'static str, &'static str)> {
        [
            (limits.memory.is_some(), "memory", "--memory"),
            (limits.pids.is_some(), "pids", "--pids"),
            (limits.cpus.is_some(), "cpu", "--cpus"),
        ]
        .into_iter()
        .filter(|(asked, _, _)| *asked)
        .map(|(_, c, o)| (c, o))
        .collect()
    }

    fn dir(&self, ctrl: &str, name: &str) -> Option<PathBuf> {
        self.parents.get(ctrl).map(|p| p.join(name))
    }

    fn freeze(&self, name: &str, state: &str) -> bool {
        let Some(d) = self.dir("freezer", name) else {
            return false;
        };
        if write_file(&d.join("freezer.state"), state).is_err() {
            return false;
        }
        if state != "FROZEN" {
            return true;
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            match std::fs::read_to_string(d.join("freezer.state")) {
                Ok(s) if s.trim() == "FROZEN" => return true,
                Ok(_) => std::thread::sleep(Duration::from_millis(2)),
                Err(_) => return false,
            }
        }
        false
    }
}

impl Backend for V1 {
    fn describe(&self) -> String {
        let c: Vec<&str> = self.parents.keys().map(|s| s.as_str()).collect();
        format!("cgroup v1 ({})", c.join(", "))
    }

    fn unusable_reason(&self, limits: &Limits) -> Option<String> {
        if self.parents.is_empty() {
            return Some("no memory, pids, cpu or freezer hierarchy is mounted".into());
        }
        let uid = nix::unistd::geteuid();
        // Name the controllers the asked limits need; without limits, any we would use.
        let mut wanted: Vec<(&str, &str)> = Self::needed(limits);
        if wanted.is_empty() {
            wanted = self.parents.keys().map(|c| (c.as_str(), "")).collect();
        }
        let blocked: Vec<String> = wanted
            .iter()
            .filter_map(|(c, opt)| Some((self.parents.get(*c)?, c, opt)))
            .filter(|(p, _, _)| !writable(p))
            .map(|(p, c, opt)| {
                let why = if opt.is_empty() {
                    String::new()
                } else {
                    format!(", needed for {opt}")
                };
                format!(
                    "the cgroup v1 {c} controller ({} is not writable by uid {uid}{why})",
                    p.display()
                )
            })
            .collect();
        (!blocked.is_empty()).then(|| blocked.join("; "))
    }

    fn fix_hint(&self) -> String {
        let uid = nix::unistd::geteuid();
        let dirs: Vec<String> = self
            .mounts
            .iter()
            .filter(|(c, _)| matches!(c.as_str(), "memory" | "pids" | "cpu"))
            .map(|(_, m)| m.join(format!("u{uid}")).display().to_string())
            .collect();
        let why = if self.hybrid {
            "This host is hybrid: the limits live in its cgroup v1 hierarchies, and its v2 \
             `unified` tree has no controllers, so systemd's Delegate=yes does not give them"
        } else {
            "This host uses cgroup v1, where systemd does not delegate controllers to users"
        };
        format!(
            "{why}. As root, give your user a cgroup in each hierarchy and start unionfs-run \
             from a shell moved into them: for d in {}; do mkdir -p $d && chown -R {uid} $d && \
             echo SHELL_PID > $d/cgroup.procs; done",
            dirs.join(" ")
        )
    }

    fn oom_kills(&self, name: &str) -> u64 {
        self.dir("memory", name)
            .and_then(|d| super::read_key(&d.join("memory.oom_control"), "oom_kill"))
            .unwrap_or(0)
    }

    fn unsupported(&self, limits: &Limits) -> Vec<&'static str> {
        let mut out = Vec::new();
        for (asked, ctrl, opt) in [
            (limits.memory.is_some(), "memory", "--memory"),
            (limits.pids.is_some(), "pids", "--pids"),
            (limits.cpus.is_some(), "cpu", "--cpus"),
        ] {
            if asked && !self.parents.contains_key(ctrl) {
                out.push(opt);
            }
        }
        out
    }

    fn create(&self, name: &str, limits: &Limits) -> Result<(), Error> {
        for (ctrl, parent) in &self.parents {
            let d = parent.join(name);
            std::fs::create_dir(&d)
                .map_err(|e| Error::msg(format!("creating cgroup {}: {e}", d.display())))?;
            let _ = ctrl;
        }
        if let (Some(m), Some(d)) = (limits.memory, self.dir("memory", name)) {
            write_file(&d.join("memory.limit_in_bytes"), &m.to_string())?;
            // memsw is memory+swap; equal to the limit means no swap, so an OOM is an OOM.
            let sw = d.join("memory.memsw.limit_in_bytes");
            if sw.exists() {
                write_file(&sw, &m.to_string())?;
            }
        }
        if let (Some(p), Some(d)) = (limits.pids, self.dir("pids", name)) {
            write_file(&d.join("pids.max"), &p.to_string())?;
        }
        if let (Some(c), Some(d)) = (limits.cpus, self.dir("cpu", name)) {
            let period = 100_000u64;
            let quota = ((c * period as f64).round() as u64).max(1000);
            write_file(&d.join("cpu.cfs_period_us"), &period.to_string())?;
            write_file(&d.join("cpu.cfs_quota_us"), &quota.to_string())?;
        }
        Ok(())
    }

    fn add(&self, name: &str, pid: Pid) -> Result<(), Error> {
        for parent in self.parents.values() {
            write_file(&parent.join(name).join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    fn procs(&self, name: &str) -> Vec<Pid> {
        let mut all: Vec<Pid> = self
            .parents
            .values()
            .flat_map(|p| read_pids(&p.join(name).join("cgroup.procs")))
            .collect();
        all.sort();
        all.dedup();
        all
    }

    fn kill(&self, name: &str) -> Result<(), Error> {
        // v1 has no cgroup.kill: freeze first so a fork loop cannot outrun the kills, then
        // SIGKILL every pid listed, then thaw so the kills are delivered.
        let frozen = self.freeze(name, "FROZEN");
        for pid in self.procs(name) {
            let _ = kill(pid, Signal::SIGKILL);
        }
        if frozen {
            self.freeze(name, "THAWED");
        }
        Ok(())
    }

    fn remove(&self, name: &str) -> Result<(), Error> {
        let mut first_err = None;
        for parent in self.parents.values() {
            let d = parent.join(name);
            match std::fs::remove_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_err.get_or_insert(Error::msg(format!("removing {}: {e}", d.display())));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn list_ours(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .parents
            .values()
            .flat_map(|p| list_ours_in(p))
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

/// The parent directory used for controller `ctrl`, if any (for tests and messages).
impl V1 {
    /// Where cgroups of controller `ctrl` are created.
    pub fn parent(&self, ctrl: &str) -> Option<&Path> {
        self.parents.get(ctrl).map(|p| p.as_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_limits_per_controller() {
        let root = std::env::temp_dir().join(format!("unionfs-cg1-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut parents = BTreeMap::new();
        for c in ["memory", "pids", "cpu"] {
            std::fs::create_dir_all(root.join(c)).unwrap();
            parents.insert(c.to_string(), root.join(c));
        }
        let b = V1::with_parents(parents);
        let limits = Limits {
            memory: Some(1 << 30),
            pids: Some(10),
            cpus: Some(0.25),
        };
        assert!(b.unsupported(&limits).is_empty());
        b.create("unionfs-run.2.2", &limits).unwrap();
        let read = |c: &str, f: &str| {
            std::fs::read_to_string(root.join(c).join("unionfs-run.2.2").join(f)).unwrap()
        };
        assert_eq!(
            read("memory", "memory.limit_in_bytes"),
            (1u64 << 30).to_string()
        );
        assert_eq!(read("pids", "pids.max"), "10");
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "25000");
        assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
        assert!(b.describe().contains("memory, pids"));
        std::fs::remove_dir_all(&root).unwrap();
        let none = V1::with_parents(BTreeMap::new());
        assert_eq!(
            none.unsupported(&limits),
            vec!["--memory", "--pids", "--cpus"]
        );
    }
}
