//! `unionfs-snapshotter --address SOCKET --root DIR`: the daemon containerd reaches through
//! `[proxy_plugins.unionfs]`.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use unionfs_snapshotter::mounts::MountStyle;
use unionfs_snapshotter::server;
use unionfs_snapshotter::service::UnionSnapshotter;

const EXAMPLES: &str = "\
Example (containerd's config.toml names the same socket):
  unionfs-snapshotter --address /run/unionfs-snapshotter.sock --root /var/lib/unionfs-snapshotter

  [proxy_plugins.unionfs]
    type = \"snapshot\"
    address = \"/run/unionfs-snapshotter.sock\"

Unions are mounted by containerd through mount.fuse3, which runs `unionfs-mount` from its own
PATH (/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin): install it there.";

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "unionfs-snapshotter",
    version,
    about = "containerd proxy snapshotter whose snapshots are unionfs unions",
    after_help = EXAMPLES
)]
struct Args {
    /// Unix socket to serve containerd's snapshots API on (containerd's
    /// `[proxy_plugins.NAME] address`).
    #[arg(long, value_name = "SOCKET")]
    address: PathBuf,
    /// Directory for the snapshots and their metadata (absolute; created if missing).
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// Give each union a unionfs-mount daemon of its own instead of handing all of them to
    /// one server process (`-o shared`).
    #[arg(long)]
    no_shared: bool,
    /// Socket of the unionfs-mount server that hosts the unions (default: ROOT/unionfs-mount.sock).
    #[arg(long, value_name = "SOCKET", conflicts_with = "no_shared")]
    shared_socket: Option<PathBuf>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let style = MountStyle {
        shared: (!args.no_shared).then(|| {
            args.shared_socket
                .clone()
                .unwrap_or_else(|| args.root.join("unionfs-mount.sock"))
        }),
    };
    if let Some(sock) = &style.shared {
        // The kernel's limit for a unix socket path (sun_path), checked here rather than at
        // the first container's mount.
        if sock.as_os_str().len() > 107 {
            eprintln!(
                "unionfs-snapshotter: the shared server's socket {} is longer than the 107 \
                 bytes a unix socket path may have: give a shorter --shared-socket",
                sock.display()
            );
            return ExitCode::FAILURE;
        }
    }
    let snapshotter = match UnionSnapshotter::open(&args.root, style) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("unionfs-snapshotter: {e}");
            return ExitCode::FAILURE;
        }
    };
    // One thread serves gRPC; store and disk work goes to a small blocking pool.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(8)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("unionfs-snapshotter: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(server::serve(&args.address, snapshotter)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unionfs-snapshotter: {e}");
            ExitCode::FAILURE
        }
    }
}
