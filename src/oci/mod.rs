//! OCI layers in and out: `export` writes an upper directory as an OCI layer tarball (the
//! upper already is a layer diff; this drops our internal entries and writes whiteouts, owners,
//! modes, times, xattrs, hard links and device nodes the way the spec and its tools expect),
//! `import` unpacks a layer tarball into a directory usable as a lower layer without letting any
//! entry reach outside it, and `diff` lists an upper's changes.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub mod cli;
mod diff;
mod export;
mod import;

pub use diff::{diff, Change};
pub use export::{export, fill_stubs};
pub use import::{import, import_plain, ImportStats};

use crate::error::{Error, Result};
use crate::layer::idmap::{is_acl_xattr, map_acl_ids, RECORD};
pub use crate::layer::idmap::{IdMap, IdMaps};
use crate::layer::whiteout;
use crate::sys::{self, Errno};

pub(crate) fn ioerr(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::new(format!("{what}: {e}"))
}

/// True for entries of an upper that are ours, not part of the layer diff.
pub(crate) fn internal(name: &[u8]) -> bool {
    name.starts_with(whiteout::RESERVED_PREFIX) && name != whiteout::OPAQUE_MARKER.to_bytes()
}

/// The entries of the upper's directory `dir` that belong to the layer diff, by name (tar
/// output is then the same for the same tree). A failed read is an error, never a shorter
/// listing: an export must not leave out what it could not read.
pub(crate) fn layer_entries(dir: &Path) -> Result<Vec<std::fs::DirEntry>> {
    let reading = |e| ioerr(format!("reading {}", dir.display()), e);
    let mut entries = Vec::new();
    for e in std::fs::read_dir(dir).map_err(reading)? {
        let e = e.map_err(reading)?;
        if !internal(e.file_name().as_bytes()) {
            entries.push(e);
        }
    }
    entries.sort_by_key(|e| e.file_name());
    Ok(entries)
}

/// Checks that `upper` and each of `lowers` is a directory that can be opened, naming the first
/// that is not, so that a command can refuse a mistyped layer before it writes anything.
pub fn check_layers(upper: &Path, lowers: &[PathBuf]) -> Result<()> {
    open_upper(upper)?;
    open_lowers(lowers).map(drop)
}

pub(crate) fn open_upper(upper: &Path) -> Result<OwnedFd> {
    sys::open_path(upper, libc::O_PATH | libc::O_DIRECTORY).map_err(|e| {
        Error::sys(
            format!("upper layer {}", upper.display()),
            e.desc(),
            "give the upper directory of the union",
        )
    })
}

pub(crate) fn open_lowers(lowers: &[PathBuf]) -> Result<Vec<OwnedFd>> {
    lowers
        .iter()
        .map(|l| {
            sys::open_path(l, libc::O_PATH | libc::O_DIRECTORY).map_err(|e| {
                Error::sys(
                    format!("lower layer {}", l.display()),
                    e.desc(),
                    "give the layers the union was mounted with",
                )
            })
        })
        .collect()
}

/// The id maps an upper was written under, as the launcher recorded them in its work dir
/// (`workdir`, or the default one inside `upper`); `None` when there is no record: the ids on
/// disk are the container's own.
pub fn written_under(upper: &Path, workdir: Option<&Path>) -> Result<Option<IdMaps>> {
    let work = workdir.map_or_else(
        || upper.join(whiteout::DEFAULT_WORK_NAME),
        Path::to_path_buf,
    );
    let fd = match sys::open_path(&work, libc::O_PATH | libc::O_DIRECTORY) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(ioerr(format!("work dir {}", work.display()), e.desc())),
    };
    IdMaps::read_record(fd.as_fd()).map_err(|e| {
        Error::sys(
            format!(
                "reading the id map record {}/{}",
                work.display(),
                RECORD.to_string_lossy()
            ),
            e.desc(),
            "give the maps with --uid-map/--gid-map, or --no-map",
        )
    })
}

/// `id` of `kind` ("uid" or "gid") mapped with `map` (`to_host`: container to host), or an
/// error naming `what` and the option that fixes it.
pub(crate) fn map_id(map: &IdMap, kind: &str, id: u32, to_host: bool, what: &str) -> Result<u32> {
    let r = if to_host {
        map.to_host(id)
    } else {
        map.to_container(id)
    };
    r.ok_or_else(|| {
        let (side, fix) = if to_host {
            ("container", format!("give a --{kind}-map that maps it"))
        } else {
            (
                "host",
                format!("give a --{kind}-map that covers it, or --no-map to keep the ids on disk"),
            )
        };
        Error::new(format!(
            "{what}: {side} {kind} {id} is not in the id map {map}: {fix}"
        ))
    })
}

/// The ACL xattr `value` (of xattr `name`) with its named users and groups mapped.
pub(crate) fn map_acl(
    ids: &IdMaps,
    name: &[u8],
    value: &mut [u8],
    to_host: bool,
    what: &str,
) -> Result<()> {
    if !is_acl_xattr(name) || ids.is_identity() {
        return Ok(());
    }
    let mut failed = None;
    let r = map_acl_ids(value, |user, id| {
        let (map, kind) = if user {
            (&ids.uids, "uid")
        } else {
            (&ids.gids, "gid")
        };
        map_id(map, kind, id, to_host, &format!("{what} (ACL)"))
            .map_err(|e| failed = Some(e))
            .ok()
    });
    match (r, failed) {
        (Err(_), Some(e)) => Err(e),
        _ => Ok(()),
    }
}
