//! The `unionfs-layer` command line, in the library so its man page and completions are
//! generated from the same definition.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Export an upper directory as an OCI layer tarball, import a layer tarball as a lower layer
/// directory, or list the changes an upper directory makes.
#[derive(Debug, Parser)]
#[command(name = "unionfs-layer", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Write UPPER as an OCI layer tarball (to --output FILE, or to stdout unless that is a
    /// terminal), with container ids as owners.
    Export {
        /// The upper directory (after unmount, or of a read-only moment).
        upper: PathBuf,
        /// Write here instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Compress with gzip (application/vnd.oci.image.layer.v1.tar+gzip).
        #[arg(long, conflicts_with = "zstd")]
        gzip: bool,
        /// Compress with zstd (application/vnd.oci.image.layer.v1.tar+zstd).
        #[arg(long)]
        zstd: bool,
        /// The lower layers the union ran with (topmost first, ':'-separated): needed when
        /// it was mounted with metacopy=on, whose metadata-only copy-ups keep their data there.
        #[arg(long)]
        lowers: Option<String>,
        /// The uid map (CONTAINER:HOST:COUNT, repeatable) the upper was written under: its
        /// host uids are written as container uids. Default: the map unionfs-run recorded in
        /// the work dir (rootless and id-mapped runs), else none.
        #[arg(long = "uid-map", value_name = "C:H:N")]
        uid_map: Vec<String>,
        /// The gid map, as --uid-map.
        #[arg(long = "gid-map", value_name = "C:H:N")]
        gid_map: Vec<String>,
        /// Write the ids as they are on disk, even when a map was recorded.
        #[arg(long, conflicts_with_all = ["uid_map", "gid_map"])]
        no_map: bool,
        /// The union's work dir, when it was mounted with -o workdir= (where the id map
        /// record is); default: the one inside UPPER.
        #[arg(long, value_name = "DIR")]
        workdir: Option<PathBuf>,
    },
    /// Copy the data of metadata-only copy-ups (from a metacopy=on mount) into the unmounted
    /// UPPER from the lowers, so the directory itself is a plain layer diff.
    Fill {
        /// The upper directory (not mounted).
        upper: PathBuf,
        /// The lower layers the union ran with (topmost first, ':'-separated).
        #[arg(long, required = true)]
        lowers: String,
    },
    /// Unpack a layer tarball (plain, gzip or zstd) into DIR, refusing entries that would leave it.
    Import {
        /// The tarball ("-" for stdin).
        tarball: PathBuf,
        /// The directory to fill (created if missing).
        dir: PathBuf,
        /// Write container uids as host uids with this map (CONTAINER:HOST:COUNT,
        /// repeatable), for a layer that a rootless container with that map will use.
        #[arg(long = "uid-map", value_name = "C:H:N")]
        uid_map: Vec<String>,
        /// The gid map, as --uid-map.
        #[arg(long = "gid-map", value_name = "C:H:N")]
        gid_map: Vec<String>,
    },
    /// List the changes of an upper directory: A added, M modified, D deleted, R replaced dir.
    Diff {
        /// The upper directory.
        upper: PathBuf,
        /// Lower layers (topmost first, ':'-separated) to tell added from modified.
        #[arg(long)]
        lowers: Option<String>,
    },
}
