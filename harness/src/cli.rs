//! The `unionfs-harness` command line, in the library so its man page and completions are
//! generated from the same definition.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The harness command line.
#[derive(Debug, Parser)]
#[command(
    name = "unionfs-harness",
    version,
    about = "Layer behaviour harness for union filesystems"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run scenario files (or directories of them) and check their expectations.
    Run {
        /// Implementation: unionfs, kernel or fuse-overlayfs.
        #[arg(long = "impl", default_value = "unionfs")]
        imp: String,
        /// Print results as JSON.
        #[arg(long)]
        json: bool,
        /// Scenario files or directories.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run scenarios on two implementations side by side and report the first divergence.
    Diff {
        /// First implementation.
        #[arg(long = "impl", default_value = "unionfs")]
        imp: String,
        /// Second implementation (the reference).
        #[arg(long, default_value = "kernel")]
        against: String,
        /// Compare the views after every N steps.
        #[arg(long, default_value_t = 1)]
        every: usize,
        /// Do not count view differences in this field (repeatable), e.g. `--ignore nlink`.
        #[arg(long)]
        ignore: Vec<String>,
        /// Print results as JSON.
        #[arg(long)]
        json: bool,
        /// Scenario files or directories.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Generate random stacks and ops, run them differentially, shrink any divergence.
    Fuzz {
        /// First seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Number of consecutive seeds to run.
        #[arg(long, default_value_t = 1)]
        seeds: u64,
        /// Steps per scenario.
        #[arg(long, default_value_t = 200)]
        ops: usize,
        /// First implementation.
        #[arg(long = "impl", default_value = "unionfs")]
        imp: String,
        /// The reference implementation.
        #[arg(long, default_value = "kernel")]
        against: String,
        /// Compare the views after every N steps (a divergence is then located step by step).
        #[arg(long, default_value_t = 10)]
        every: usize,
        /// Where shrunk scenarios are written.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// At most this many runs while shrinking one case.
        #[arg(long, default_value_t = 300)]
        shrink_runs: usize,
        /// Do not count view differences in this field (repeatable), e.g. `--ignore nlink` to
        /// look past a known bug.
        #[arg(long)]
        ignore: Vec<String>,
        /// Put no hard links in the generated layers (to look past a known hard-link bug).
        #[arg(long)]
        no_layer_links: bool,
        /// Only print the generated scenario (TOML) for the seed; run nothing.
        #[arg(long)]
        print: bool,
        /// Print results as JSON.
        #[arg(long)]
        json: bool,
    },
}
