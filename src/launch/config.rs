//! What to run and how: the launcher's validated configuration and the parsers for its CLI values.

use std::ffi::OsString;
use std::path::PathBuf;

use super::idmap::IdRange;
use super::seccomp::SeccompChoice;
pub use super::user::UserSpec;
use super::Error;

/// How the container's network is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetMode {
    /// A new network namespace with only `lo`, brought up.
    None,
    /// Share the host's network namespace.
    Host,
}

/// Which cgroup implementation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupChoice {
    /// Detect at run time (v2, v1, or hybrid: v1 controllers and a controller-less v2 tree).
    Auto,
    /// Force the v1 backend.
    V1,
    /// Force the v2 backend (on a hybrid host: the `unified` tree, placement and kill only).
    V2,
    /// No cgroup at all (no limits).
    Disabled,
}

/// What becomes the container root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootSource {
    /// The FUSE union of the layers (the product).
    Union,
    /// A bind mount of the topmost lower (development stand-in; no layering at all).
    Bind,
}

/// Resource limits; `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Memory limit in bytes (swap is capped to the same total where the kernel can).
    pub memory: Option<u64>,
    /// Maximum number of tasks.
    pub pids: Option<u64>,
    /// CPU quota in CPUs (1.5 = one and a half CPUs).
    pub cpus: Option<f64>,
}

impl Limits {
    /// Whether any limit was asked for.
    pub fn any(&self) -> bool {
        self.memory.is_some() || self.pids.is_some() || self.cpus.is_some()
    }
}

/// A host path bound into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindSpec {
    /// Host path.
    pub src: PathBuf,
    /// Absolute path inside the container.
    pub dst: PathBuf,
    /// Mount read-only.
    pub read_only: bool,
}

/// Everything the launcher needs to run one container.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    /// Lower layers, topmost first.
    pub lowers: Vec<PathBuf>,
    /// Writable upper layer (None with `read_only` or `tmp_upper`).
    pub upper: Option<PathBuf>,
    /// Put a throwaway upper on tmpfs.
    pub tmp_upper: bool,
    /// No upper: the root is read-only.
    pub read_only: bool,
    /// Container hostname.
    pub hostname: String,
    /// Extra environment variables, applied over the defaults.
    pub env: Vec<(String, String)>,
    /// Working directory inside the container.
    pub cwd: PathBuf,
    /// Create the working directory when it is missing (an image's WorkingDir, as podman does;
    /// one given with --workdir must exist).
    pub create_cwd: bool,
    /// User to run the command as (names are looked up in the container's /etc/passwd).
    pub user: UserSpec,
    /// Where `user` came from, for messages: `--user` or `the image's User`.
    pub user_origin: &'static str,
    /// Host paths bound into the container.
    pub binds: Vec<BindSpec>,
    /// Network mode.
    pub net: NetMode,
    /// Resource limits.
    pub limits: Limits,
    /// Explicit uid map ranges (empty: map the caller's uid to 0, or none as root).
    pub uid_maps: Vec<IdRange>,
    /// Explicit gid map ranges.
    pub gid_maps: Vec<IdRange>,
    /// Run a pid-1 reaper that forwards signals to the command.
    pub init: bool,
    /// Rootless mode (user namespace, id maps); implied when not root.
    pub rootless: bool,
    /// Cgroup backend choice.
    pub cgroup: CgroupChoice,
    /// What becomes the container root.
    pub root_source: RootSource,
    /// The command and its arguments.
    pub command: Vec<OsString>,
    /// Capabilities root in the container keeps (bounding, permitted, effective).
    pub caps: caps::CapsHashSet,
    /// The seccomp filter.
    pub seccomp: SeccompChoice,
    /// `--privileged`: every capability, no seccomp filter, /proc and /sys paths unmasked.
    pub privileged: bool,
    /// `-t`: a terminal of the container's own, relayed to the host terminal.
    pub tty: bool,
    /// `-i`: with `-t`, relay the host's stdin to it (without `-t` stdin is always passed).
    pub interactive: bool,
}

impl LaunchConfig {
    /// Whether the run needs a user namespace (rootless, or explicit id maps).
    pub fn needs_userns(&self) -> bool {
        self.rootless || !self.uid_maps.is_empty() || !self.gid_maps.is_empty()
    }

    /// Check the combination of options; file-system checks happen when layers are opened.
    pub fn validate(&self) -> Result<(), Error> {
        if self.command.is_empty() {
            return Err(Error::msg(
                "no command given: put it after `--`, e.g. `unionfs-run LOWER UPPER -- /bin/sh`",
            ));
        }
        if self.lowers.is_empty() {
            return Err(Error::msg(
                "no lower layer given: the first argument is LOWER1[:LOWER2...]",
            ));
        }
        let modes = [self.upper.is_some(), self.tmp_upper, self.read_only];
        match modes.iter().filter(|m| **m).count() {
            0 => return Err(Error::msg(
                "no upper layer: give UPPER, or --tmp-upper for a throwaway one, or --read-only",
            )),
            1 => {}
            _ => {
                return Err(Error::msg(
                    "UPPER, --tmp-upper and --read-only exclude each other: choose one",
                ))
            }
        }
        if !self.cwd.is_absolute() {
            return Err(Error::msg(format!(
                "--workdir {:?} is relative: give an absolute path inside the container",
                self.cwd
            )));
        }
        for b in &self.binds {
            if !b.dst.is_absolute() {
                return Err(Error::msg(format!(
                    "--bind destination {:?} is relative: give an absolute path inside the container",
                    b.dst
                )));
            }
        }
        if let Some(c) = self.limits.cpus {
            if !(c > 0.0 && c.is_finite()) {
                return Err(Error::msg(
                    "--cpus must be a positive number, e.g. 0.5 or 2",
                ));
            }
        }
        if self.hostname.is_empty() || self.hostname.len() > 64 {
            return Err(Error::msg("--hostname must be 1 to 64 characters"));
        }
        Ok(())
    }
}

/// Split `L1:L2:...` into paths; `\:` escapes a colon inside a path.
pub fn parse_lowers(s: &str) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(':') => cur.push(':'),
                Some(o) => {
                    cur.push('\\');
                    cur.push(o);
                }
                None => cur.push('\\'),
            },
            ':' => out.push(std::mem::take(&mut cur)),
            o => cur.push(o),
        }
    }
    out.push(cur);
    if out.iter().any(|p| p.is_empty()) {
        return Err(Error::msg(format!(
            "lower layer list {s:?} has an empty entry: write LOWER1:LOWER2 without doubled or trailing colons"
        )));
    }
    Ok(out.into_iter().map(PathBuf::from).collect())
}

/// Parse a byte size of 1 or more: a plain number or one with a K, M, G or T suffix (powers
/// of 1024).
pub fn parse_size(s: &str) -> Result<u64, Error> {
    match crate::size::parse(s) {
        Ok(0) => Err(Error::msg(format!(
            "{s:?}: a size must be positive, e.g. 64M or 1G"
        ))),
        Ok(n) => Ok(n),
        Err(why) => Err(Error::msg(format!("{s:?}: {why}"))),
    }
}

/// Parse a count of 1 or more (`--pids`): 0 would stop the command from starting at all.
pub fn parse_count(s: &str) -> Result<u64, Error> {
    match s.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(Error::msg(format!(
            "{s:?}: give a whole number of 1 or more, e.g. --pids 64"
        ))),
    }
}

/// Parse a CPU quota (`--cpus`): a positive, finite number of CPUs.
pub fn parse_cpus(s: &str) -> Result<f64, Error> {
    match s.trim().parse::<f64>() {
        Ok(c) if c > 0.0 && c.is_finite() => Ok(c),
        _ => Err(Error::msg(format!(
            "{s:?}: give a number of CPUs above 0, e.g. --cpus 0.5 or --cpus 2"
        ))),
    }
}

/// Parse `SRC:DST[:ro|:rw]`.
pub fn parse_bind(s: &str) -> Result<BindSpec, Error> {
    let parts: Vec<&str> = s.split(':').collect();
    let (src, dst, ro) = match parts.as_slice() {
        [src, dst] => (src, dst, false),
        [src, dst, "ro"] => (src, dst, true),
        [src, dst, "rw"] => (src, dst, false),
        _ => {
            return Err(Error::msg(format!(
                "--bind {s:?}: expected SRC:DST or SRC:DST:ro"
            )))
        }
    };
    if src.is_empty() || dst.is_empty() {
        return Err(Error::msg(format!(
            "--bind {s:?}: SRC and DST must not be empty"
        )));
    }
    Ok(BindSpec {
        src: PathBuf::from(src),
        dst: PathBuf::from(dst),
        read_only: ro,
    })
}

/// Parse `KEY=VALUE`.
pub fn parse_env(s: &str) -> Result<(String, String), Error> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(Error::msg(format!("--env {s:?}: expected KEY=VALUE"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowers_split_and_escape() {
        assert_eq!(
            parse_lowers("/a:/b\\:c:/d").unwrap(),
            vec![PathBuf::from("/a"), "/b:c".into(), "/d".into()]
        );
        assert!(parse_lowers("/a::/b").is_err());
        assert!(parse_lowers("/a:").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("-5M").is_err());
        assert_eq!(parse_count("64").unwrap(), 64);
        for bad in ["0", "-1", "x", ""] {
            assert!(parse_count(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_cpus("0.5").unwrap(), 0.5);
        for bad in ["0", "-1", "-0.5", "inf", "NaN", "x"] {
            assert!(parse_cpus(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn binds_and_env() {
        let b = parse_bind("/h:/c:ro").unwrap();
        assert!(b.read_only);
        assert_eq!(b.dst, PathBuf::from("/c"));
        assert!(parse_bind("/h").is_err());
        assert!(parse_bind("/h:/c:xx").is_err());
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(parse_env("=x").is_err());
    }
}
