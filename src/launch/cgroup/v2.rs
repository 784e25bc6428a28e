//! The cgroup v2 backend: one unified tree; `cgroup.kill` for teardown.

use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{list_ours_in, read_pids, writable, write_file, Backend};
use crate::launch::config::Limits;
use crate::launch::Error;

/// cgroup v2: our cgroups are created under `parent`.
#[derive(Debug, Clone)]
pub struct V2 {
    parent: PathBuf,
}

/// This process's own v2 cgroup path (the `0::` line of /proc/self/cgroup).
fn own_path() -> String {
    std::fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(|p| p.to_string()))
        .unwrap_or_default()
}

impl V2 {
    /// A backend on the v2 tree mounted at `mount`.
    ///
    /// Root creates its cgroups at the top of the tree (the root cgroup is exempt from the
    /// no-internal-processes rule, so controllers can be enabled there); anyone else inside its
    /// own cgroup, which is only writable when it was delegated (e.g. systemd `Delegate=yes`).
    pub fn new(mount: PathBuf) -> Self {
        let parent = if nix::unistd::geteuid().is_root() {
            mount
        } else {
            match own_path().trim_matches('/') {
                "" => mount,
                rel => mount.join(rel),
            }
        };
        V2 { parent }
    }

    /// A backend whose cgroups are created directly under `parent`.
    pub fn with_parent(parent: PathBuf) -> Self {
        V2 { parent }
    }

    /// Where our cgroups are created.
    pub fn parent(&self) -> &Path {
        &self.parent
    }

    fn available(&self) -> Vec<String> {
        std::fs::read_to_string(self.parent.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect()
    }
}

impl Backend for V2 {
    fn describe(&self) -> String {
        format!("cgroup v2 ({})", self.parent.display())
    }

    fn unusable_reason(&self, limits: &Limits) -> Option<String> {
        if writable(&self.parent) {
            return None;
        }
        let opts: Vec<&str> = [
            (limits.memory.is_some(), "--memory (memory controller)"),
            (limits.pids.is_some(), "--pids (pids controller)"),
            (limits.cpus.is_some(), "--cpus (cpu controller)"),
        ]
        .into_iter()
        .filter_map(|(asked, o)| asked.then_some(o))
        .collect();
        let needed = if opts.is_empty() {
            String::new()
        } else {
            format!(", needed for {}", opts.join(", "))
        };
        Some(format!(
            "the cgroup v2 tree: {} is not writable by uid {} (no delegated subtree{needed})",
            self.parent.display(),
            nix::unistd::geteuid()
        ))
    }

    fn fix_hint(&self) -> String {
        let uid = nix::unistd::geteuid();
        format!(
            "On this cgroup v2 host, run it in a delegated scope: systemd-run --user --scope -p \
             Delegate=yes unionfs-run ...; without systemd, as root: mkdir {d} && chown -R {uid} \
             {d}, then move your shell into it (echo SHELL_PID > {d}/cgroup.procs)",
            d = self.parent.join(format!("u{uid}")).display()
        )
    }

    fn oom_kills(&self, name: &str) -> u64 {
        super::read_key(&self.parent.join(name).join("memory.events"), "oom_kill").unwrap_or(0)
    }

    fn unsupported(&self, limits: &Limits) -> Vec<&'static str> {
        let avail = self.available();
        let mut out = Vec::new();
        for (asked, ctrl, opt) in [
            (limits.memory.is_some(), "memory", "--memory"),
            (limits.pids.is_some(), "pids", "--pids"),
            (limits.cpus.is_some(), "cpu", "--cpus"),
        ] {
            if asked && !avail.iter().any(|a| a == ctrl) {
                out.push(opt);
            }
        }
        out
    }

    fn create(&self, name: &str, limits: &Limits) -> Result<(), Error> {
        let avail = self.available();
        let want: Vec<&str> = [
            (limits.memory.is_some(), "memory"),
            (limits.pids.is_some(), "pids"),
            (limits.cpus.is_some(), "cpu"),
        ]
        .into_iter()
        .filter(|(asked, c)| *asked && avail.iter().any(|a| a == c))
        .map(|(_, c)| c)
        .collect();
        if !want.is_empty() {
            let line: Vec<String> = want.iter().map(|c| format!("+{c}")).collect();
            write_file(&self.parent.join("cgroup.subtree_control"), &line.join(" "))?;
        }
        let d = self.parent.join(name);
        std::fs::create_dir(&d)
            .map_err(|e| Error::msg(format!("creating cgroup {}: {e}", d.display())))?;
        if want.contains(&"memory") {
            let m = limits.memory.unwrap_or(0).to_string();
            write_file(&d.join("memory.max"), &m)?;
            if d.join("memory.swap.max").exists() {
                write_file(&d.join("memory.swap.max"), "0")?;
            }
        }
        if want.contains(&"pids") {
            write_file(&d.join("pids.max"), &limits.pids.unwrap_or(0).to_string())?;
        }
        if want.contains(&"cpu") {
            let period = 100_000u64;
            let quota = ((limits.cpus.unwrap_or(1.0) * period as f64).round() as u64).max(1000);
            write_file(&d.join("cpu.max"), &format!("{quota} {period}"))?;
        }
        Ok(())
    }

    fn add(&self, name: &str, pid: Pid) -> Result<(), Error> {
        write_file(
            &self.parent.join(name).join("cgroup.procs"),
            &pid.to_string(),
        )
    }

    fn procs(&self, name: &str) -> Vec<Pid> {
        read_pids(&self.parent.join(name).join("cgroup.procs"))
    }

    fn kill(&self, name: &str) -> Result<(), Error> {
        let d = self.parent.join(name);
        if !d.exists() {
            return Ok(());
        }
        // cgroup.kill (5.14+) kills the whole subtree atomically, fork loops included.
        if write_file(&d.join("cgroup.kill"), "1").is_ok() {
            return Ok(());
        }
        for pid in self.procs(name) {
            let _ = kill(pid, Signal::SIGKILL);
        }
        Ok(())
    }

    fn remove(&self, name: &str) -> Result<(), Error> {
        let d = self.parent.join(name);
        match std::fs::remove_dir(&d) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::msg(format!("removing {}: {e}", d.display()))),
        }
    }

    fn list_ours(&self) -> Vec<String> {
        list_ours_in(&self.parent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory standing in for a cgroup2 parent (plain files, no kernel behind them).
    fn fake_parent(controllers: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "unionfs-cg2-unit-{}-{}",
            std::process::id(),
            controllers.replace(' ', "_")
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("cgroup.controllers"), controllers).unwrap();
        d
    }

    #[test]
    fn writes_limits_and_enables_controllers() {
        let p = fake_parent("cpu memory pids");
        let b = V2::with_parent(p.clone());
        let limits = Limits {
            memory: Some(64 << 20),
            pids: Some(32),
            cpus: Some(1.5),
        };
        assert!(b.unsupported(&limits).is_empty());
        b.create("unionfs-run.1.1", &limits).unwrap();
        let d = p.join("unionfs-run.1.1");
        let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
        assert_eq!(read("memory.max"), (64u64 << 20).to_string());
        assert_eq!(read("pids.max"), "32");
        assert_eq!(read("cpu.max"), "150000 100000");
        let sc = std::fs::read_to_string(p.join("cgroup.subtree_control")).unwrap();
        assert_eq!(sc, "+memory +pids +cpu");
        assert_eq!(b.list_ours(), vec!["unionfs-run.1.1".to_string()]);
        std::fs::remove_dir_all(&p).unwrap();
    }

    #[test]
    fn reports_missing_controllers() {
        let p = fake_parent("");
        let b = V2::with_parent(p.clone());
        let limits = Limits {
            memory: Some(1),
            pids: None,
            cpus: Some(1.0),
        };
        assert_eq!(b.unsupported(&limits), vec!["--memory", "--cpus"]);
        std::fs::remove_dir_all(&p).unwrap();
    }
}
