//! unionfs-docs: the man pages and completions build from the clap definitions and name every
//! option; the harness crate's two tools follow the command-line manners of the others.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;

#[test]
fn man_pages_and_completions_cover_every_option() {
    let out = std::env::temp_dir().join(format!("unionfs-docs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = Command::new(env!("CARGO_BIN_EXE_unionfs-docs"))
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cmds = [
        (unionfs::options::Args::command(), "unionfs-mount.8"),
        (unionfs::launch::cli::Cli::command(), "unionfs-run.1"),
        (unionfs::oci::cli::Cli::command(), "unionfs-layer.1"),
        (unionfs_harness::cli::Cli::command(), "unionfs-harness.1"),
    ];
    for (cmd, page) in cmds {
        let name = cmd.get_name().to_string();
        let man = std::fs::read_to_string(out.join("man").join(page)).unwrap();
        let bash =
            std::fs::read_to_string(out.join("completions/bash").join(format!("{name}.bash")))
                .unwrap();
        let zsh: PathBuf = out.join("completions/zsh").join(format!("_{name}"));
        assert!(zsh.exists(), "{}", zsh.display());
        assert!(
            man.starts_with(".ie") || man.contains(".TH"),
            "not a man page: {page}"
        );
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(long) = arg.get_long() {
                // roff escapes '-' as '\-'.
                let escaped = format!("\\-\\-{}", long.replace('-', "\\-"));
                assert!(man.contains(&escaped), "{page} lacks --{long}");
                assert!(
                    bash.contains(&format!("--{long}")),
                    "{name}.bash lacks --{long}"
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn docs_and_harness_answer_help_and_version_and_write_nothing() {
    let scratch =
        Scratch(std::env::temp_dir().join(format!("unionfs-docs-help-{}", std::process::id())));
    let scratch = &scratch.0;
    let _ = std::fs::remove_dir_all(scratch);
    for (name, path) in [
        ("unionfs-docs", env!("CARGO_BIN_EXE_unionfs-docs")),
        ("unionfs-harness", env!("CARGO_BIN_EXE_unionfs-harness")),
    ] {
        unionfs_harness::support::assert_help_and_version(
            name,
            Path::new(path),
            env!("CARGO_PKG_VERSION"),
            &scratch.join(name),
        );
    }
    // Without OUTDIR, or with an unknown flag, unionfs-docs says how to call it and writes
    // nothing either.
    let cwd = scratch.join("cwd-docs-bad");
    std::fs::create_dir_all(&cwd).unwrap();
    for args in [&[][..], &["--no-such-flag"][..]] {
        let o = Command::new(env!("CARGO_BIN_EXE_unionfs-docs"))
            .args(args)
            .current_dir(&cwd)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("Usage:"), "{args:?}: {err}");
        let left: Vec<_> = std::fs::read_dir(&cwd).unwrap().collect();
        assert!(left.is_empty(), "unionfs-docs {args:?} wrote {left:?}");
    }
}

/// Removes its directory when the test ends, passing or not.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
