//! The import direction of docs/ARCHITECTURE.md, checked over the source: each top-level module
//! may use only the modules below it (`sys` <- `layer` <- `fs` <- `transport` <- `mount` <-
//! `options` <- `daemon`; the launcher uses `mount`, `sys` and the image store `image`, which
//! uses the OCI layer code `oci`, which uses `layer`; `error` and `size` are for everyone who
//! is allowed them). A
//! `crate::NAME` path in code (not in comments) from a module to one it may not use fails
//! here, naming the file and line.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// What each top-level module of the library may use besides itself.
fn allowed() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        ("sys", &[][..]),
        ("error", &[][..]),
        ("size", &[][..]),
        ("layer", &["sys", "error"][..]),
        ("oci", &["layer", "sys", "error"][..]),
        ("image", &["oci", "sys", "error"][..]),
        ("fs", &["layer", "sys", "error"][..]),
        ("transport", &["fs", "layer", "sys", "error"][..]),
        ("mount", &["transport", "fs", "layer", "sys", "error"][..]),
        (
            "options",
            &["mount", "transport", "layer", "sys", "error", "size"][..],
        ),
        (
            "daemon",
            &[
                "options",
                "mount",
                "transport",
                "fs",
                "layer",
                "sys",
                "error",
            ][..],
        ),
        ("launch", &["image", "mount", "sys", "error", "size"][..]),
    ])
}

/// Names the crate root re-exports, and the module each comes from.
fn reexports() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        ("MountConfig", "mount"),
        ("MountGuard", "mount"),
        ("Error", "error"),
        ("Result", "error"),
    ])
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a source file belongs to (`src/fs/dir.rs` -> `fs`, `src/mount.rs` ->
/// `mount`); `None` for the crate root and the binaries.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "bin" => None,
        f => Some(f.trim_end_matches(".rs").to_string()),
    }
}

/// `crate::NAME` paths in a line of code, comments cut off.
fn crate_paths(line: &str) -> Vec<String> {
    let code = match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    };
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        let after = &rest[i + "crate::".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // `$crate::` and names like `mycrate::` are not ours.
        let ours = !matches!(before, Some(c) if c.is_alphanumeric() || c == '_' || c == '$');
        if ours && !name.is_empty() {
            out.push(name);
        }
        rest = after;
    }
    // `use crate::{a, b::c}` groups.
    if let Some(i) = code.find("use crate::{") {
        let group = &code[i + "use crate::{".len()..];
        for part in group.split(',') {
            let name: String = part
                .trim()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

/// Every `crate::` use that goes against the direction: (file, line number, from, to).
fn violations(src: &Path) -> Vec<(PathBuf, usize, String, String)> {
    let allowed = allowed();
    let reexports = reexports();
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let Some(from) = module_of(src, &f) else {
            continue;
        };
        let Some(may) = allowed.get(from.as_str()) else {
            continue; // not part of the product's stack (the harness until it moves out)
        };
        let text = fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for name in crate_paths(line) {
                let to = reexports.get(name.as_str()).copied().unwrap_or(&name);
                if to != from && !may.contains(&to) {
                    out.push((f.clone(), i + 1, from.clone(), to.to_string()));
                }
            }
        }
    }
    out
}

#[test]
fn no_module_imports_against_the_direction_of_the_architecture() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    let lines: Vec<String> = bad
        .iter()
        .map(|(f, n, from, to)| {
            format!(
                "{}:{n}: `{from}` uses `crate::{to}`, which sits above it or beside it",
                f.display()
            )
        })
        .collect();
    assert!(
        lines.is_empty(),
        "imports against the architecture (docs/ARCHITECTURE.md, 'Layers'); move the shared \
         piece down instead:\n{}",
        lines.join("\n")
    );
}

#[test]
fn the_check_sees_a_use_against_the_direction() {
    // A scratch tree with one upward import and one allowed: only the first is reported.
    let dir = std::env::temp_dir().join(format!("unionfs-arch-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("layer")).unwrap();
    fs::create_dir_all(dir.join("fs")).unwrap();
    fs::write(
        dir.join("layer/stack.rs"),
        "use crate::sys;\nuse crate::fs::UnionFs; // upward\n// crate::transport in a comment\n",
    )
    .unwrap();
    fs::write(
        dir.join("fs/mod.rs"),
        "use crate::{layer::Stack, sys};\nfn f(_: crate::MountConfig) {}\n",
    )
    .unwrap();
    let v = violations(&dir);
    let _ = fs::remove_dir_all(&dir);
    let got: Vec<(usize, String, String)> = v
        .into_iter()
        .map(|(_, n, from, to)| (n, from, to))
        .collect();
    assert_eq!(
        got,
        vec![
            (2, "fs".to_string(), "mount".to_string()),
            (2, "layer".to_string(), "fs".to_string())
        ]
    );
}

/// Lines of `text` (code, comments cut off) that name the snapshotter crate.
fn snapshotter_mentions(text: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let code = l.split("//").next().unwrap_or("");
            let code = code.split('#').next().unwrap_or("");
            code.contains("unionfs_snapshotter") || code.contains("unionfs-snapshotter")
        })
        .map(|(i, _)| i + 1)
        .collect()
}

#[test]
fn the_core_crate_never_depends_on_the_snapshotter() {
    // unionfs-snapshotter (snapshotter/) depends on unionfs, never the reverse: tokio, tonic,
    // prost and redb must stay out of the filesystem and launcher.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let deps: String = manifest
        .split("\n[")
        .filter(|s| s.contains("dependencies]"))
        .collect();
    let mut bad: Vec<String> = snapshotter_mentions(&deps)
        .into_iter()
        .map(|n| format!("Cargo.toml dependencies, line {n} of those sections"))
        .collect();
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    for f in files {
        for n in snapshotter_mentions(&fs::read_to_string(&f).unwrap()) {
            bad.push(format!("{}:{n}", f.display()));
        }
    }
    assert!(
        bad.is_empty(),
        "the unionfs crate names unionfs-snapshotter (docs/ARCHITECTURE.md, 'Crates'); move \
         what both need into unionfs instead:\n{}",
        bad.join("\n")
    );
    assert_eq!(
        snapshotter_mentions("x = 1 # unionfs-snapshotter\nunionfs-snapshotter = \"*\"\n"),
        [2],
        "the check must see a dependency line"
    );
}
