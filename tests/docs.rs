//! The man pages and completions build from the clap definitions and name every option.

use std::path::PathBuf;
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
        (unionfs::harness::cli::Cli::command(), "unionfs-harness.1"),
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
