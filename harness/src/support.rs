//! Helpers the integration tests of the whole workspace share (the root package's `tests/`
//! and the harness's own): they check, so they panic with a message instead of returning
//! errors.

use std::path::Path;
use std::process::Command;

/// Asserts that the tool `name` at `path` answers `--help`, `-h` and `--version` (the latter
/// as `NAME VERSION`) with success, run in fresh directories below `scratch` with its TMPDIR
/// there too, and writes nothing into either.
#[track_caller]
pub fn assert_help_and_version(name: &str, path: &Path, version: &str, scratch: &Path) {
    // Temp files would land here, not in the shared /tmp where they could go unnoticed.
    let tmp = scratch.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap_or_else(|e| panic!("mkdir {}: {e}", tmp.display()));
    for flag in ["--help", "-h", "--version"] {
        let cwd = scratch.join(format!("cwd{flag}"));
        std::fs::create_dir_all(&cwd).unwrap_or_else(|e| panic!("mkdir {}: {e}", cwd.display()));
        let o = Command::new(path)
            .arg(flag)
            .current_dir(&cwd)
            .env("TMPDIR", &tmp)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{name} {flag}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        if flag == "--version" {
            let want = format!("{name} {version}");
            assert!(out.starts_with(&want), "{name} {flag}: {out}");
        } else {
            assert!(out.contains("Usage:"), "{name} {flag}: {out}");
        }
        for d in [&cwd, &tmp] {
            let left: Vec<_> = std::fs::read_dir(d)
                .unwrap_or_else(|e| panic!("readdir {}: {e}", d.display()))
                .map(|e| e.map(|e| e.file_name()))
                .collect();
            assert!(left.is_empty(), "{name} {flag} wrote {left:?} into {d:?}");
        }
    }
}
