//! The `unionfs-run` command line (clap), kept in the library so man pages and shell
//! completions are generated from the same definition.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::launch::capabilities::{effective_set, parse_cap, CapSpec};
use crate::launch::config::{
    parse_bind, parse_count, parse_cpus, parse_env, parse_lowers, parse_size, BindSpec,
    CgroupChoice, Limits, NetMode, RootSource, UserSpec,
};
use crate::launch::exit::EXIT_LAUNCHER;
use crate::launch::idmap::IdRange;
use crate::launch::image::{self, Request};
use crate::launch::seccomp::{parse_choice, SeccompChoice};
use crate::launch::store_cmd::{self, StoreCommand};
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
  # an OCI image layout (skopeo copy docker://busybox oci:img:latest): its Entrypoint, Cmd,
  # Env, WorkingDir and User apply; a throwaway upper unless --name keeps one in the store
  unionfs-run --image img:latest
  unionfs-run --image img --name web -e MODE=dev -- /bin/sh -c 'echo kept > /data'
  unionfs-run --name web -- cat /data        # the same container again
  unionfs-run images; unionfs-run layers; unionfs-run ps; unionfs-run rm web; unionfs-run rmi img:latest

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

/// The forms of the command line, for the usage line of help and errors.
const USAGE: &str = "unionfs-run [OPTIONS] LOWER1:LOWER2 [UPPER] -- CMD [ARGS...]
       unionfs-run [OPTIONS] --image DIR[:TAG] [UPPER] [-- CMD [ARGS...]]
       unionfs-run [OPTIONS] --name NAME [-- CMD [ARGS...]]
       unionfs-run [--store DIR] images|layers|ps|rm NAME...|rmi IMAGE...|prune [LAYER...]";

/// The layer store's subcommands (`unionfs-run images`, ...).
#[derive(Debug, Clone, Subcommand)]
pub enum StoreCmd {
    /// List the images in the layer store (by id, with the DIR:TAG references they ran as).
    Images,
    /// List the unpacked layers (by diff id) and the images and containers using each.
    Layers,
    /// List the named containers (--name) and whether each is running.
    #[command(visible_alias = "containers")]
    Ps {
        /// Accepted for podman's habit: every named container is listed, running or not.
        #[arg(short, long)]
        all: bool,
    },
    /// Remove named containers and their uppers (refused while one runs).
    Rm {
        /// Container names.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Remove images (by DIR:TAG or id prefix) and the layers nothing else uses (refused while
    /// a named container was made from one, or a run uses its layers).
    Rmi {
        /// Image references or ids.
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
    },
    /// Remove the layers no image or named container uses; with LAYER arguments (diff ids or
    /// prefixes), exactly those, refused for a layer in use.
    Prune {
        /// Layers to remove.
        #[arg(value_name = "LAYER")]
        layers: Vec<String>,
    },
}

/// Run a command in a container whose root filesystem is a union of layers, as root or rootless.
#[derive(Debug, Parser)]
#[command(
    name = "unionfs-run",
    version,
    after_help = EXAMPLES,
    override_usage = USAGE,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// The layer store's listings and removals (instead of running a container).
    #[command(subcommand)]
    pub store_cmd: Option<StoreCmd>,
    /// Lower layers, topmost first, separated by ':' (escape a ':' in a path as '\:'); with
    /// --image, the image's layers are the lowers and this is the UPPER.
    #[arg(value_name = "LOWER1:LOWER2")]
    pub lowers: Option<String>,
    /// Writable upper layer (omit with --read-only or --tmp-upper).
    #[arg(value_name = "UPPER")]
    pub upper: Option<PathBuf>,
    /// The command and its arguments (after `--`); with --image, they replace the image's Cmd.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
    /// Run an OCI image layout directory (skopeo copy … oci:DIR:TAG, umoci, podman save
    /// --format oci-dir); TAG defaults to the only image, else `latest`. Its layers are
    /// unpacked into the layer store once; without UPPER, --name or --read-only the upper is
    /// thrown away.
    #[arg(long, value_name = "DIR[:TAG]")]
    pub image: Option<String>,
    /// Keep the container's upper in the layer store under NAME: the next --name NAME run
    /// (with the same image, or alone) sees its files. One run at a time.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The layer store (default: $UNIONFS_STORE, else /var/lib/unionfs for root,
    /// $XDG_DATA_HOME/unionfs or ~/.local/share/unionfs for other users).
    #[arg(long, value_name = "DIR", global = true)]
    pub store: Option<PathBuf>,
    /// Replace the image's Entrypoint (a program, or a JSON array); "" removes it. The
    /// image's Cmd is then not used: give arguments after `--`.
    #[arg(long, value_name = "CMD")]
    pub entrypoint: Option<String>,
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
    /// Working directory inside the container (default: the image's WorkingDir, else /); it
    /// must exist.
    #[arg(long, short = 'w', visible_alias = "cwd", value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// Run the command as USER[:GROUP], by number or by a name from the container's
    /// /etc/passwd and /etc/group (default: the image's User, else root).
    #[arg(long, value_name = "USER[:GROUP]", value_parser = UserSpec::parse)]
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

/// The store subcommands' names (and aliases).
const STORE_COMMANDS: [&str; 7] = ["images", "layers", "ps", "containers", "rm", "rmi", "prune"];

/// `unionfs-run --store DIR images ...` as `unionfs-run images --store DIR ...`: a subcommand
/// must come first among the arguments (so that a layer directory named like one still works
/// after others), but `--store` naturally goes in front.
fn store_first(mut argv: Vec<OsString>) -> Vec<OsString> {
    let n = match argv.get(1).and_then(|a| a.to_str()) {
        Some("--store") => 2,
        Some(a) if a.starts_with("--store=") => 1,
        _ => return argv,
    };
    let is_cmd = argv
        .get(1 + n)
        .and_then(|a| a.to_str())
        .is_some_and(|a| STORE_COMMANDS.contains(&a));
    if is_cmd {
        let store: Vec<OsString> = argv.drain(1..1 + n).collect();
        argv.splice(2..2, store);
    }
    argv
}

/// The usage line that every argument error ends with: the command goes after `--`.
pub const USAGE_HINT: &str =
    "the command goes after `--`: unionfs-run [OPTIONS] LOWER1:LOWER2 [UPPER] -- CMD [ARGS...]";

impl Cli {
    /// Parses the process's arguments; a mistake exits 2 with clap's message, a usage line that
    /// shows the `--`, and for a command given without `--`, how to write it.
    pub fn parse_or_exit() -> Cli {
        use clap::error::ErrorKind;
        let parsed =
            Cli::try_parse_from(store_first(std::env::args_os().collect())).and_then(|c| {
                match c.combination_error() {
                    Some((kind, msg)) => Err(Cli::command().error(kind, msg)),
                    None => Ok(c),
                }
            });
        match parsed {
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

    /// A combination of arguments clap's rules cannot refuse: the kind of error and why.
    fn combination_error(&self) -> Option<(clap::error::ErrorKind, String)> {
        use clap::error::ErrorKind;
        if self.store_cmd.is_some() {
            return None;
        }
        let from_store = self.image.is_some() || (self.name.is_some() && self.lowers.is_none());
        if self.image.is_some() && self.upper.is_some() {
            return Some((
                ErrorKind::TooManyValues,
                "with --image the layers come from the image: give at most one directory, the \
                 UPPER"
                    .into(),
            ));
        }
        if self.name.is_some() && (self.tmp_upper || self.read_only || self.upper_given()) {
            return Some((
                ErrorKind::ArgumentConflict,
                "--name keeps the container's upper in the layer store: leave out UPPER, \
                 --tmp-upper and --read-only"
                    .into(),
            ));
        }
        if !from_store && self.lowers.is_none() {
            return Some((
                ErrorKind::MissingRequiredArgument,
                "no layers given: name them (LOWER1:LOWER2), or run an image with --image \
                 DIR[:TAG]"
                    .into(),
            ));
        }
        if !from_store && self.command.is_empty() && self.entrypoint.is_none() {
            return Some((
                ErrorKind::MissingRequiredArgument,
                "no command given: put it after `--`".into(),
            ));
        }
        None
    }

    /// Whether an UPPER directory was given (with --image, it is the one positional).
    fn upper_given(&self) -> bool {
        self.upper.is_some() || (self.image.is_some() && self.lowers.is_some())
    }

    /// Runs what the command line asks for (a container, or a store subcommand) and returns
    /// the exit status: the command's, 125 when the launcher failed, 1 for a store command
    /// that failed.
    pub fn execute(mut self) -> i32 {
        if let Some(cmd) = self.store_cmd.take() {
            let cmd = match cmd {
                StoreCmd::Images => StoreCommand::Images,
                StoreCmd::Layers => StoreCommand::Layers,
                StoreCmd::Ps { .. } => StoreCommand::Containers,
                StoreCmd::Rm { names } => StoreCommand::Rm(names),
                StoreCmd::Rmi { images } => StoreCommand::Rmi(images),
                StoreCmd::Prune { layers } => StoreCommand::Prune(layers),
            };
            return store_cmd::run(self.store.as_deref(), &cmd);
        }
        let req = Request {
            image: self.image.clone(),
            name: self.name.clone(),
            store: self.store.clone(),
            entrypoint: self.entrypoint.clone(),
            workdir: self.workdir.clone(),
            user: self.user.clone(),
        };
        let mut cfg = match self.into_config() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("unionfs-run: {e}");
                return 2;
            }
        };
        match image::prepare(&req, &mut cfg) {
            // Held until the command is gone: the layers it mounts, its name.
            Ok(_held) => crate::launch::run(cfg),
            Err(e) => {
                eprintln!("unionfs-run: {e}");
                EXIT_LAUNCHER
            }
        }
    }

    /// The launch configuration this command line asks for, before an image's config and the
    /// layer store fill it in (`launch::image::prepare`).
    pub fn into_config(self) -> Result<LaunchConfig, Error> {
        let cli = self;
        let (lowers, upper) = match (&cli.image, &cli.lowers) {
            // With --image the one positional is the upper.
            (Some(_), Some(u)) => (Vec::new(), Some(PathBuf::from(u))),
            (Some(_), None) => (Vec::new(), None),
            (None, Some(l)) => (parse_lowers(l)?, cli.upper),
            (None, None) => (Vec::new(), None),
        };
        // An image run without a place for changes gets a throwaway one, as `podman run` does.
        let throwaway =
            cli.image.is_some() && upper.is_none() && cli.name.is_none() && !cli.read_only;
        Ok(LaunchConfig {
            lowers,
            upper,
            tmp_upper: cli.tmp_upper || throwaway,
            read_only: cli.read_only,
            hostname: cli.hostname,
            env: cli.env,
            cwd: cli.workdir.unwrap_or_else(|| PathBuf::from("/")),
            create_cwd: false,
            user: cli.user.unwrap_or_else(UserSpec::root),
            user_origin: "--user",
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
