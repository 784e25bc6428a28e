//! The command line of `unionfs-mount`, in both forms: `L1:L2 UPPER MNT` and the
//! fuse-overlayfs/mount.fuse3 form `-o lowerdir=L1:L2,upperdir=U,workdir=W [SOURCE] MNT`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

use crate::error::{Error, Result};
use crate::mount::{IdMap, IdMaps, MountConfig, Owners, Uring};

const EXAMPLES: &str = "\
Examples:
  unionfs-mount /layers/app:/layers/base /data/upper /mnt/root
  unionfs-mount -o lowerdir=/l/app:/l/base,upperdir=/data/upper,workdir=/data/work /mnt/root
  unionfs-mount /layers/app:/layers/base /mnt/ro          (no upper: read-only union)
  umount /mnt/root                                        (ends the daemon)
  unionfs-mount --cleanup /mnt/root                       (after the daemon was killed)

Lowers are listed topmost first; write '\\:' for a ':' inside a path.";

/// Raw command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "unionfs-mount",
    version,
    about = "Mount a union of read-only lower layers under one writable upper (FUSE)",
    after_help = EXAMPLES
)]
pub struct Args {
    /// Mount options, comma-separated: lowerdir=, upperdir=, workdir=, ro, rw, dev, nodev,
    /// suid, nosuid, allow_other, nonempty, threads=N, fsname=NAME, timeout=SECS,
    /// passthrough=auto|off, metacopy=on|off, uring=auto|on|off, shared[=SOCKET],
    /// max_nodes=N, flush_behind=SIZE|off; and fuse-overlayfs's uidmapping=C:H:N[:C:H:N...], gidmapping=,
    /// squash_to_root, squash_to_uid=ID, squash_to_gid=ID, static_nlink, noacl, volatile,
    /// fsync=0|1; generic mount options are accepted.
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Stay in the foreground instead of returning once the mount is live.
    #[arg(short = 'f', long)]
    pub foreground: bool,
    /// Log every request (debug level; implies --foreground).
    #[arg(short = 'd', long)]
    pub debug: bool,
    /// Number of FUSE worker threads (default: twice the cores, 4 to 16).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Write the daemon's pid to this file once the mount is live.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Lazily unmount MNT (for a mount whose daemon was killed) and exit.
    #[arg(long, value_name = "MNT")]
    pub cleanup: Option<PathBuf>,
    /// On SIGUSR1, write the daemon's counters (requests by type, copy-ups, whiteouts, open
    /// handles, inodes, passthrough) to this file; without it they go to the daemon's stderr.
    #[arg(long, value_name = "FILE")]
    pub stats_file: Option<PathBuf>,
    /// Do not start the watchdog that unmounts if the daemon dies.
    #[arg(long)]
    pub no_watchdog: bool,
    /// Run a server that hosts the unions handed to it (`-o shared`) at SOCKET (default: the
    /// shared socket of this user) until it has served none for 30 s.
    #[arg(long, value_name = "SOCKET", num_args = 0..=1, default_missing_value = "")]
    pub serve: Option<PathBuf>,
    /// mount(8) helper flags (no mtab, sloppy, verbose, type, namespace): accepted and ignored
    /// so that `mount -t fuse.unionfs-mount` and fstab entries work.
    #[arg(short = 'n', hide = true)]
    pub no_mtab: bool,
    /// See `no_mtab`.
    #[arg(short = 's', hide = true)]
    pub sloppy: bool,
    /// See `no_mtab`.
    #[arg(short = 'v', hide = true)]
    pub verbose: bool,
    /// See `no_mtab`.
    #[arg(short = 't', hide = true, value_name = "TYPE")]
    pub fstype: Option<String>,
    /// See `no_mtab`.
    #[arg(short = 'N', hide = true, value_name = "NS")]
    pub namespace: Option<String>,
    /// LOWERS [UPPER] MNT, or [SOURCE] MNT when -o lowerdir= is given.
    #[arg(value_name = "ARGS")]
    pub positional: Vec<PathBuf>,
}

/// A parsed invocation.
#[derive(Debug)]
pub struct Invocation {
    /// What to mount.
    pub config: MountConfig,
    /// Where.
    pub mountpoint: PathBuf,
    /// Stay attached.
    pub foreground: bool,
    /// Debug logging.
    pub debug: bool,
    /// Pid file.
    pub pid_file: Option<PathBuf>,
    /// Run the watchdog.
    pub watchdog: bool,
    /// Where SIGUSR1 writes the counters.
    pub stats_file: Option<PathBuf>,
    /// Options we accepted but ignore, to tell the user about.
    pub warnings: Vec<String>,
    /// Mount over a non-empty directory without a warning (`-o nonempty`, libfuse2's opt-in).
    pub nonempty: bool,
    /// Hand the union to the server at this socket (`-o shared[=SOCKET]`), starting one if
    /// none runs, instead of serving it from a process of its own.
    pub shared: Option<PathBuf>,
    /// The arguments it was parsed from (program name left out), for handing it to a server.
    pub argv: Vec<OsString>,
}

impl Invocation {
    /// Every path made absolute against `cwd` (the directory the command was given in), for
    /// a process that runs elsewhere (the daemon, a server).
    pub fn absolutize(&mut self, cwd: &std::path::Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = cwd.join(&*p);
            }
        };
        self.config.lowers.iter_mut().for_each(abs);
        for p in [
            self.config.upper.as_mut(),
            self.config.workdir.as_mut(),
            Some(&mut self.mountpoint),
            self.pid_file.as_mut(),
            self.stats_file.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            abs(p);
        }
    }
}

/// The socket of the shared server of this user in this mount namespace (`-o shared`
/// without a path): a server must see the mount points and layers its callers see, so each
/// namespace has its own. In `/run/unionfs-mount` for root, in `$XDG_RUNTIME_DIR` (else the
/// temp dir) for others.
pub fn default_socket() -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let uid = crate::sys::geteuid();
    let dir = if uid == 0 {
        PathBuf::from("/run/unionfs-mount")
    } else {
        match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(d) => PathBuf::from(d).join("unionfs-mount"),
            None => std::env::temp_dir().join(format!("unionfs-mount-{uid}")),
        }
    };
    let ns = std::fs::metadata("/proc/self/ns/mnt").map_or(0, |m| m.ino());
    dir.join(format!("mnt-{ns}.sock"))
}

/// Splits a lower-layer list on `:` (topmost first), honouring `\:` as a literal colon.
pub fn split_layers(s: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some(':') | Some('\\')) => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ':' => {
                if !cur.is_empty() {
                    out.push(PathBuf::from(std::mem::take(&mut cur)));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(PathBuf::from(cur));
    }
    out
}

/// Joins layer paths (topmost first) into one `lowerdir=` list that [`split_layers`] reads
/// back: `\` and `:` inside a path are escaped with `\`.
pub fn join_layers<P: AsRef<std::path::Path>>(layers: &[P]) -> String {
    let mut out = String::new();
    for (i, p) in layers.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        for c in p.as_ref().to_string_lossy().chars() {
            if matches!(c, ':' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out
}

/// Splits one `-o` argument on commas, keeping `\,` as a literal comma.
fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&',') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ',' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Generic mount(8) options that mean nothing to a union: accepted silently.
const GENERIC: &[&str] = &[
    "defaults",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "strictatime",
    "nodiratime",
    "diratime",
    "lazytime",
    "sync",
    "async",
    "dirsync",
    "auto",
    "noauto",
    "user",
    "users",
    "nouser",
    "nofail",
    "_netdev",
    "default_permissions",
    "auto_unmount",
    "allow_root",
    "mand",
    "nomand",
    "silent",
    "loud",
    "iversion",
    "noiversion",
];

/// An on/off mount option: `key`, `key=on`, `key=off` or `key=ON_WORD` (`auto` for features
/// used only where the kernel allows them).
fn switch(key: &str, val: Option<&str>, on_word: &str) -> Result<bool> {
    match val {
        None | Some("on") => Ok(true),
        Some(v) if v == on_word => Ok(true),
        Some("off") => Ok(false),
        Some(v) => Err(Error::new(format!(
            "{key}={v}: use {key}={on_word} or {key}=off"
        ))),
    }
}

/// Parses `args` (without the program name) into an invocation.
pub fn parse_args(args: Args) -> Result<Invocation> {
    let mut lowers: Option<Vec<PathBuf>> = None;
    let mut upper = None;
    let mut workdir = None;
    let mut warnings = Vec::new();
    let mut nonempty = false;
    let mut shared = None;
    let mut fsname_given = false;
    let mut cfg = MountConfig::new(Vec::new(), None);
    let mut ids = IdMaps::default();
    let (mut squash_root, mut squash_uid, mut squash_gid) = (false, None, None);
    if let Some(t) = args.threads {
        cfg.threads = t;
    }
    for opt in args.options.iter().flat_map(|o| split_options(o)) {
        let (key, val) = match opt.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (opt.clone(), None),
        };
        let need = |v: Option<String>| {
            v.filter(|s| !s.is_empty())
                .ok_or_else(|| Error::new(format!("option {key}= needs a value, e.g. {key}=/path")))
        };
        match key.as_str() {
            "" => {}
            "lowerdir" => lowers = Some(split_layers(&need(val)?)),
            "upperdir" => upper = Some(PathBuf::from(need(val)?)),
            "workdir" => workdir = Some(PathBuf::from(need(val)?)),
            "ro" => cfg.read_only = true,
            "rw" => cfg.read_only = false,
            "dev" => cfg.dev = true,
            "nodev" => cfg.dev = false,
            "suid" => cfg.suid = true,
            "nosuid" => cfg.suid = false,
            "allow_other" => cfg.allow_other = true,
            "nonempty" => nonempty = true,
            "shared" => {
                shared = Some(match val.filter(|v| !v.is_empty()) {
                    Some(v) => PathBuf::from(v),
                    None => default_socket(),
                })
            }
            "fsname" => {
                cfg.fsname = need(val)?;
                fsname_given = true;
            }
            "timeout" | "entry_timeout" | "attr_timeout" => {
                let v = need(val)?;
                let secs: f64 = v
                    .parse()
                    .map_err(|_| Error::new(format!("{key}={v}: give seconds, e.g. {key}=3600")))?;
                cfg.ttl = std::time::Duration::from_secs_f64(secs.max(0.0));
            }
            "subtype" => {}
            "passthrough" => cfg.passthrough = switch(&key, val.as_deref(), "auto")?,
            "nopassthrough" => cfg.passthrough = false,
            "metacopy" => cfg.metacopy = switch(&key, val.as_deref(), "on")?,
            "uring" => {
                cfg.uring = match val.as_deref() {
                    None | Some("auto") => Uring::Auto,
                    Some("on") => Uring::On,
                    Some("off") => Uring::Off,
                    Some(v) => {
                        return Err(Error::new(format!(
                            "{key}={v}: use uring=auto, uring=on or uring=off"
                        )))
                    }
                }
            }
            "max_nodes" => {
                let v = need(val)?;
                cfg.max_nodes = v.parse().map_err(|_| {
                    Error::new(format!(
                        "max_nodes={v}: give a whole number of inodes, e.g. max_nodes=500000 \
                         (0: no limit)"
                    ))
                })?;
            }
            "threads" => {
                let v = need(val)?;
                cfg.threads = v.parse().map_err(|_| {
                    Error::new(format!("threads={v}: give a whole number, e.g. threads=8"))
                })?;
            }
            // fuse-overlayfs's options, which podman and its users pass.
            "uidmapping" | "gidmapping" => {
                let m = IdMap::parse(&need(val)?).map_err(|e| Error::new(format!("{key}={e}")))?;
                match key.as_str() {
                    "uidmapping" => ids.uids = m,
                    _ => ids.gids = m,
                }
            }
            "squash_to_root" => squash_root = true,
            "squash_to_uid" | "squash_to_gid" => {
                let v = need(val)?;
                let id: u32 = v.parse().map_err(|_| {
                    Error::new(format!("{key}={v}: give a numeric id, e.g. {key}=1000"))
                })?;
                match key.as_str() {
                    "squash_to_uid" => squash_uid = Some(id),
                    _ => squash_gid = Some(id),
                }
            }
            "flush_behind" => {
                let v = val.unwrap_or_default();
                cfg.flush_behind = match v.as_str() {
                    "off" => None,
                    v => Some(crate::size::parse(v).map_err(|why| {
                        Error::new(format!(
                            "flush_behind={v}: {why}; give the smallest file size whose \
                             copy-up is flushed in the background (e.g. flush_behind=1M; 0: \
                             every size), or flush_behind=off"
                        ))
                    })?),
                };
            }
            "static_nlink" => cfg.static_nlink = true,
            "noacl" => cfg.acl = false,
            "volatile" => cfg.volatile = true,
            "fsync" => {
                cfg.volatile = match val.as_deref() {
                    Some("0") => true,
                    Some("1") => false,
                    _ => {
                        return Err(Error::new(format!(
                            "{opt}: use fsync=0 (no flushes, like volatile) or fsync=1"
                        )))
                    }
                }
            }
            k if GENERIC.contains(&k) || k.starts_with("x-") => {}
            k => warnings.push(format!(
                "ignoring unknown mount option '{}'",
                if val.is_some() { opt.as_str() } else { k }
            )),
        }
    }
    let pos = args.positional;
    let (config_lowers, config_upper, mountpoint) = match lowers {
        Some(l) => {
            let mnt = match pos.len() {
                1 => pos[0].clone(),
                // SOURCE MNT, as mount.fuse3 calls us: SOURCE is what `mount` and fstab users
                // wrote as the device, and what they expect to see in /proc/mounts.
                2 => {
                    if !fsname_given && !pos[0].as_os_str().is_empty() {
                        cfg.fsname = pos[0].to_string_lossy().into_owned();
                    }
                    pos[1].clone()
                }
                0 => {
                    return Err(Error::new(
                        "missing mount point: unionfs-mount -o lowerdir=... MNT",
                    ))
                }
                _ => {
                    return Err(Error::new(
                        "too many arguments: with -o lowerdir= give only [SOURCE] MNT",
                    ))
                }
            };
            (l, upper, mnt)
        }
        None => {
            if upper.is_some() {
                return Err(Error::new(
                    "upperdir= given without lowerdir=: add -o lowerdir=L1:L2",
                ));
            }
            match pos.len() {
                2 => (
                    split_layers(&pos[0].to_string_lossy()),
                    None,
                    pos[1].clone(),
                ),
                3 => (
                    split_layers(&pos[0].to_string_lossy()),
                    Some(pos[1].clone()),
                    pos[2].clone(),
                ),
                _ => {
                    return Err(Error::new(
                        "expected LOWER1:LOWER2:... [UPPER] MNT (or -o lowerdir=...); \
                         see unionfs-mount --help",
                    ))
                }
            }
        }
    };
    if config_lowers.is_empty() {
        return Err(Error::new(
            "no lower layer given: name at least one directory (L1:L2:... or -o lowerdir=)",
        ));
    }
    if workdir.is_some() && config_upper.is_none() {
        warnings.push("workdir= ignored: there is no upperdir (read-only union)".into());
        workdir = None;
    }
    cfg.lowers = config_lowers;
    cfg.upper = config_upper;
    cfg.workdir = workdir;
    // squash_to_uid= and squash_to_gid= take precedence over squash_to_root.
    let root = squash_root.then_some(0);
    cfg.owners = Owners::new(ids, squash_uid.or(root), squash_gid.or(root));
    Ok(Invocation {
        config: cfg,
        mountpoint,
        foreground: args.foreground || args.debug,
        debug: args.debug,
        pid_file: args.pid_file,
        watchdog: !args.no_watchdog,
        stats_file: args.stats_file,
        warnings,
        nonempty,
        shared,
        argv: Vec::new(),
    })
}

/// Parses a full argument vector (program name first).
pub fn parse<I: IntoIterator<Item = OsString>>(argv: I) -> std::result::Result<Args, clap::Error> {
    Args::try_parse_from(argv)
}

#[cfg(test)]
mod tests;
