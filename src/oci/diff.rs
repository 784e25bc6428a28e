//! `unionfs-layer diff`: the changes an upper holds.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{check_layers, layer_entries};
use crate::error::Result;
use crate::layer::whiteout;

/// One change recorded in an upper directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A path the lowers do not have.
    Added(PathBuf),
    /// A path that replaces or changes one in the lowers.
    Modified(PathBuf),
    /// A path deleted by a whiteout.
    Deleted(PathBuf),
    /// A directory whose lower contents are hidden (opaque).
    Replaced(PathBuf),
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Added(p) => write!(f, "A {}", p.display()),
            Change::Modified(p) => write!(f, "M {}", p.display()),
            Change::Deleted(p) => write!(f, "D {}", p.display()),
            Change::Replaced(p) => write!(f, "R {}/ (lower contents hidden)", p.display()),
        }
    }
}

/// Lists the changes an upper directory makes over `lowers` (topmost first). Without lowers,
/// every entry counts as added.
pub fn diff(upper: &Path, lowers: &[PathBuf]) -> Result<Vec<Change>> {
    // A lower that is missing would only make its entries count as added: refuse it instead.
    check_layers(upper, lowers)?;
    let mut out = Vec::new();
    diff_dir(upper, Path::new(""), lowers, &mut out)?;
    Ok(out)
}

fn in_lowers(lowers: &[PathBuf], rel: &Path) -> bool {
    lowers
        .iter()
        .any(|l| std::fs::symlink_metadata(l.join(rel)).is_ok())
}

fn diff_dir(dir: &Path, rel: &Path, lowers: &[PathBuf], out: &mut Vec<Change>) -> Result<()> {
    for e in layer_entries(dir)? {
        let name = e.file_name();
        let nb = name.as_bytes();
        if nb == whiteout::OPAQUE_MARKER.to_bytes() {
            if in_lowers(lowers, rel) {
                out.push(Change::Replaced(rel.to_path_buf()));
            }
            continue;
        }
        if let Some(target) = whiteout::whited_out(nb) {
            out.push(Change::Deleted(rel.join(OsStr::from_bytes(target))));
            continue;
        }
        if e.metadata()
            .is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
        {
            out.push(Change::Deleted(rel.join(&name)));
            continue;
        }
        let relp = rel.join(&name);
        let existed = in_lowers(lowers, &relp);
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if !existed {
            out.push(Change::Added(relp.clone()));
        } else if !is_dir {
            out.push(Change::Modified(relp.clone()));
        }
        if is_dir {
            diff_dir(&e.path(), &relp, lowers, out)?;
        }
    }
    Ok(())
}
