//! The `unionfs-run` command line (clap), kept in the library so man pages and shell
//! completions are generated from the same definition.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::launch::capabilities::{effective_set, parse_cap, CapSpec};
use crate::launch::config::{
    parse_bind, parse_count, parse_cpus, parse_env, parse_lowers, parse_size, parse_user, BindSpec,
    CgroupChoice, Limits, NetMode, RootSource, UserSpec,
};
use crate::launch::idmap::IdRange;
use crate::launch::seccomp::{parse_choice, SeccompChoice};
use crate::launch::{Error, LaunchConfig};

const EXAMPLES: &str = "\
Examples:
  # an interactive shell with job control on the example busybox layers
  # (scripts/make-example-layers.sh)
  unionfs-run -it --tmp-upper example/app:example/base -- /bin/sh
  # keep changes in ./upper, limit memory and tasks, no network
  unionfs-run --memory 256M --pids 64 example/app:example/base ./upper -- /bin/sh -c 'echo hi > /f'
  # read-only root, run as uid 1000 with a bind mount
  unionfs-run --read-only --user 1000 --bind /srv/data:/data:ro example/base -- ls /data
  # rootless with a range of ids (from /etc/subuid and /etc/subgid)
  unionfs-run --uid-map 0:1000:1 --uid-map 1:100000:65536 --gid-map 0:1000:1 --gid-map 1:100000:65536 \\
      --tmp-upper example/base -- /bin/sh

Exit status: the command's, 128+N when it was killed by signal N, 125 when the launcher
failed, 126 when the command cannot be executed, 127 when it is not found.";

/// `--net` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Net {
    /// New network namespace with only `lo` up.
    None,
    /// Share the host's network.
    Host,
}

/// `--cgroup` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Cgroup {
    /// Detect (v2, v1, or hybrid: v1 for limits).
    Auto,
    /// cgroup v1 hierarchies.
    V1,
    /// The cgroup v2 tree (on hybrid hosts: placement and kill only).
    V2,
    /// No cgroup.
    None,
}

/// `--root-source` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Source {
    /// The union of the layers.
    Union,
    /// A bind mount of the topmost lower only (development stand-in, no layering).
    Bind,
}

/// Run a command in a container whose root filesystem is a union of layers, as root or rootless.
#[derive(Debug, Parser)]
#[command(name = "unionfs-run", version, after_help = EXAMPLES)]
pub struct Cli {
    /// Lower layers, topmost first, separated by ':' (escape a ':' in a path as '\:').
    #[arg(value_name = "LOWER1:LOWER2")]
    pub lowers: String,
    /// Writable upper layer (omit with --read-only or --tmp-upper).
    #[arg(value_name = "UPPER")]
    pub upper: Option<PathBuf>,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
    /// No upper layer: the root is read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Throwaway upper layer on a tmpfs, gone when the command ends.
    #[arg(long)]
    pub tmp_upper: bool,
    /// Hostname inside the container.
    #[arg(long, default_value = "container")]
    pub hostname: String,
    /// Set an environment variable (repeatable).
    #[arg(long = "env", short = 'e', value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory inside the container.
    #[arg(long, default_value = "/")]
    pub cwd: PathBuf,
    /// Run the command as UID[:GID] (numeric).
    #[arg(long, value_name = "UID[:GID]", value_parser = parse_user)]
    pub user: Option<UserSpec>,
    /// Bind a host path into the container (repeatable).
    #[arg(long, value_name = "SRC:DST[:ro]", value_parser = parse_bind)]
    pub bind: Vec<BindSpec>,
    /// Network: none (new namespace with `lo` up) or host.
    #[arg(long, value_enum, default_value = "none")]
    pub net: Net,
    /// Memory limit, e.g. 64M (swap is not allowed beyond it).
    #[arg(long, value_name = "BYTES", value_parser = parse_size, allow_hyphen_values = true)]
    pub memory: Option<u64>,
    /// Maximum number of processes and threads (1 or more).
    #[arg(long, value_name = "N", value_parser = parse_count, allow_negative_numbers = true)]
    pub pids: Option<u64>,
    /// CPU quota in CPUs, e.g. 0.5 (more than 0).
    #[arg(long, value_name = "F", value_parser = parse_cpus, allow_negative_numbers = true)]
    pub cpus: Option<f64>,
    /// uid map range INSIDE:OUTSIDE:COUNT (repeatable; via newuidmap when not root).
    #[arg(long = "uid-map", value_name = "IN:OUT:N")]
    pub uid_map: Vec<IdRange>,
    /// gid map range INSIDE:OUTSIDE:COUNT (repeatable; via newgidmap when not root).
    #[arg(long = "gid-map", value_name = "IN:OUT:N")]
    pub gid_map: Vec<IdRange>,
    /// Run a pid-1 reaper that forwards signals to the command and reaps zombies.
    #[arg(long)]
    pub init: bool,
    /// Rootless mode: user namespace with id maps (implied when not root).
    #[arg(long)]
    pub rootless: bool,
    /// Give root in the container this capability too (repeatable; e.g. NET_ADMIN, or ALL).
    #[arg(long = "cap-add", value_name = "CAP", value_parser = parse_cap)]
    pub cap_add: Vec<CapSpec>,
    /// Take this capability from the default set (repeatable; ALL drops every one).
    #[arg(long = "cap-drop", value_name = "CAP", value_parser = parse_cap)]
    pub cap_drop: Vec<CapSpec>,
    /// Seccomp filter: `default` (podman's denials), `unconfined`, or an OCI/Docker JSON profile.
    #[arg(long, value_name = "PATH|unconfined", default_value = "default")]
    pub seccomp: String,
    /// Every capability, no seccomp filter, /proc and /sys paths unmasked (namespaces, the
    /// minimal /dev, read-only /sys and no_new_privs stay).
    #[arg(long)]
    pub privileged: bool,
    /// Give the command a terminal of its own (controlling terminal, /dev/console), relayed
    /// to this one in raw mode, with window size changes passed on.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Keep stdin open: with -t, keys typed here go to the container's terminal (-it).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Cgroup implementation.
    #[arg(long, value_enum, default_value = "auto")]
    pub cgroup: Cgroup,
    /// What becomes the root (development: `bind` uses the topmost lower as is).
    #[arg(long, value_enum, default_value = "union", hide = true)]
    pub root_source: Source,
}

/// The usage line that every argument error ends with: the command goes after `--`.
pub const USAGE_HINT: &str =
    "the command goes after `--`: unionfs-run [OPTIONS] LOWER1:LOWER2 [UPPER] -- CMD [ARGS...]";

impl Cli {
    /// Parses the process's arguments; a mistake exits 2 with clap's message, a usage line that
    /// shows the `--`, and for a command given without `--`, how to write it.
    pub fn parse_or_exit() -> Cli {
        use clap::error::ErrorKind;
        match Cli::try_parse() {
            Ok(c) => c,
            Err(e) if !e.use_stderr() => e.exit(),
            Err(e) => {
                let hint = match e.kind() {
                    ErrorKind::UnknownArgument
                    | ErrorKind::MissingRequiredArgument
                    | ErrorKind::TooManyValues
                    | ErrorKind::ArgumentConflict => Some(USAGE_HINT),
                    _ => None,
                };
                let _ = e.print();
                if let Some(h) = hint {
                    eprintln!("hint: {h}");
                }
                std::process::exit(2)
            }
        }
    }

    /// The launch configuration this command line asks for.
    pub fn into_config(self) -> Result<LaunchConfig, Error> {
        let cli = self;
        let lowers = parse_lowers(&cli.lowers)?;
        Ok(LaunchConfig {
            lowers,
            upper: cli.upper,
            tmp_upper: cli.tmp_upper,
            read_only: cli.read_only,
            hostname: cli.hostname,
            env: cli.env,
            cwd: cli.cwd,
            user: cli.user.unwrap_or(UserSpec { uid: 0, gid: 0 }),
            binds: cli.bind,
            net: match cli.net {
                Net::None => NetMode::None,
                Net::Host => NetMode::Host,
            },
            limits: Limits {
                memory: cli.memory,
                pids: cli.pids,
                cpus: cli.cpus,
            },
            uid_maps: cli.uid_map,
            gid_maps: cli.gid_map,
            init: cli.init,
            rootless: cli.rootless,
            cgroup: match cli.cgroup {
                Cgroup::Auto => CgroupChoice::Auto,
                Cgroup::V1 => CgroupChoice::V1,
                Cgroup::V2 => CgroupChoice::V2,
                Cgroup::None => CgroupChoice::Disabled,
            },
            root_source: match cli.root_source {
                Source::Union => RootSource::Union,
                Source::Bind => RootSource::Bind,
            },
            command: cli.command,
            caps: effective_set(cli.privileged, &cli.cap_add, &cli.cap_drop),
            seccomp: match parse_choice(&cli.seccomp) {
                // --privileged turns the filter off unless one was asked for by name.
                SeccompChoice::Default if cli.privileged => SeccompChoice::Unconfined,
                c => c,
            },
            privileged: cli.privileged,
            tty: cli.tty,
            interactive: cli.interactive,
        })
    }
}
