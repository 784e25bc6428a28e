//! `unionfs-docs OUTDIR`: writes the man pages and bash/zsh completions of the unionfs
//! commands, generated from their clap definitions so they cannot drift from the code.
//!
//! It lives in the harness crate because it is the one crate that sees every tool's
//! definition: the product's (`unionfs`) and the harness's own. The `unionfs` package cannot
//! depend on the harness, and the filesystem and launcher binaries must not link it.

#![deny(unsafe_code)]

use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};
use clap_complete::Shell;

/// Write the man pages and bash/zsh completions of the unionfs commands.
#[derive(Debug, Parser)]
#[command(name = "unionfs-docs", version)]
struct Cli {
    /// Where to write: OUTDIR/man and OUTDIR/completions/{bash,zsh} (created if missing).
    #[arg(value_name = "OUTDIR")]
    out: PathBuf,
}

fn write_man(cmd: clap::Command, section: &str, dir: &Path) -> std::io::Result<PathBuf> {
    let name = cmd.get_name().to_string();
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .section(section)
        .render(&mut buf)?;
    let path = dir.join(format!("{name}.{section}"));
    std::fs::write(&path, buf)?;
    Ok(path)
}

fn run(out: &Path) -> std::io::Result<()> {
    let man = out.join("man");
    std::fs::create_dir_all(&man)?;
    let cmds = [
        (unionfs::options::Args::command(), "8"),
        (unionfs::launch::cli::Cli::command(), "1"),
        (unionfs::oci::cli::Cli::command(), "1"),
        (unionfs_harness::cli::Cli::command(), "1"),
    ];
    for (cmd, section) in cmds {
        let page = write_man(cmd.clone(), section, &man)?;
        println!("{}", page.display());
        for shell in [Shell::Bash, Shell::Zsh] {
            let dir = out.join("completions").join(shell.to_string());
            std::fs::create_dir_all(&dir)?;
            let mut c = cmd.clone();
            let name = c.get_name().to_string();
            let path = clap_complete::generate_to(shell, &mut c, name, &dir)?;
            println!("{}", path.display());
        }
    }
    Ok(())
}

fn main() {
    // Parsed by clap, not taken raw: `--help` and friends used to become a directory name.
    let cli = Cli::parse();
    if let Err(e) = run(&cli.out) {
        eprintln!(
            "unionfs-docs: writing into {}: {e}; give a directory you may write to",
            cli.out.display()
        );
        std::process::exit(1);
    }
}
