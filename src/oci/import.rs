//! `unionfs-layer import`: an OCI layer tarball unpacked into a directory usable as a lower
//! layer, without letting any entry reach outside it.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use super::{ioerr, map_acl, map_id, IdMaps};
use crate::error::{Error, Result};
use crate::layer::stack::{open_below, open_subdir};
use crate::layer::whiteout;
use crate::sys::{self, Errno};

/// What `import` did.
#[derive(Debug, Default)]
pub struct ImportStats {
    /// Entries created.
    pub entries: u64,
}

/// Why a layer path is refused (part of the refusal message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BadPath {
    /// It starts with `/`.
    Absolute,
    /// It has a `..` component.
    DotDot,
    /// It names nothing below the root (`""`, `.`, `./`).
    Empty,
}

impl std::fmt::Display for BadPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BadPath::Absolute => "absolute path",
            BadPath::DotDot => "'..' component",
            BadPath::Empty => "empty path",
        })
    }
}

/// A layer path made safe: relative, no `..`, no empty or `.` components.
fn clean_path(raw: &[u8]) -> std::result::Result<Vec<Vec<u8>>, BadPath> {
    if raw.starts_with(b"/") {
        return Err(BadPath::Absolute);
    }
    let mut comps = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => continue,
            b".." => return Err(BadPath::DotDot),
            c => comps.push(c.to_vec()),
        }
    }
    if comps.is_empty() {
        return Err(BadPath::Empty);
    }
    Ok(comps)
}

/// Opens (creating as needed) the directory `comps` below `root`, never through a symlink.
fn parent_dir(root: BorrowedFd<'_>, comps: &[Vec<u8>]) -> std::result::Result<OwnedFd, Errno> {
    let mut cur = sys::openat(root, c".", libc::O_PATH | libc::O_DIRECTORY, 0)?;
    for c in comps {
        let cn = CString::new(c.as_slice()).map_err(|_| Errno::EINVAL)?;
        let next = match open_subdir(cur.as_fd(), &cn) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                sys::mkdirat(cur.as_fd(), &cn, 0o755)?;
                open_subdir(cur.as_fd(), &cn)?
            }
            Err(e) => return Err(e),
        };
        cur = next;
    }
    Ok(cur)
}

/// Unpacks an OCI/Docker layer tarball (plain, gzip or zstd) into `dir` so that it can serve as a
/// lower layer. Entries that would land outside `dir` (absolute names, `..`, paths or hard
/// links through symlinks) stop the import with an error naming the entry. `ids` map the
/// tarball's container ids to the host ids written (for a layer a rootless container will use:
/// its user namespace turns them back); an id they do not cover stops the import. A failed
/// import leaves no `dir` behind unless it existed before.
pub fn import<R: Read>(input: R, dir: &Path, ids: &IdMaps) -> Result<ImportStats> {
    let mut input = std::io::BufReader::new(input);
    let (gz, zst) = {
        use std::io::BufRead;
        let head = input
            .fill_buf()
            .map_err(|e| ioerr("reading the tarball", e))?;
        if head.is_empty() {
            return Err(Error::new(
                "the input is empty, not a layer tarball (tar, tar+gzip or tar+zstd); an empty \
                 layer is a tarball with no entries",
            ));
        }
        (
            head.starts_with(&[0x1f, 0x8b]),
            head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]),
        )
    };
    if gz {
        import_tar(
            tar::Archive::new(flate2::read::GzDecoder::new(input)),
            dir,
            ids,
        )
    } else if zst {
        let z = zstd::stream::read::Decoder::with_buffer(input)
            .map_err(|e| ioerr("starting zstd decompression", e))?;
        import_tar(tar::Archive::new(z), dir, ids)
    } else {
        import_tar(tar::Archive::new(input), dir, ids)
    }
}

/// An error of the tar reader made fit for a terminal: it may quote the bytes of a header
/// field, which in input that is no tarball are anything.
fn printable(e: impl std::fmt::Display) -> String {
    let s: String = e
        .to_string()
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(120)
        .collect();
    s
}

fn import_tar<R: Read>(mut ar: tar::Archive<R>, dir: &Path, ids: &IdMaps) -> Result<ImportStats> {
    let not_tar = |e| {
        Error::new(format!(
            "the input is not a layer tarball (tar, tar+gzip or tar+zstd): {}",
            printable(e)
        ))
    };
    let mut entries = ar.entries().map_err(not_tar)?;
    // Read before DIR is created: input that is no tarball at all must leave nothing behind.
    let first = entries.next().transpose().map_err(not_tar)?;
    if std::fs::symlink_metadata(dir).is_ok_and(|m| !m.is_dir()) {
        return Err(Error::new(format!(
            "{} exists and is not a directory: give a new or empty directory to import into",
            dir.display()
        )));
    }
    let existed = dir.exists();
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::sys(
            format!("creating {}", dir.display()),
            e,
            "give a directory you may write to",
        )
    })?;
    let r = import_entries(first.map(Ok).into_iter().chain(entries), dir, ids);
    if r.is_err() && !existed {
        // Half a layer must not pass for one.
        let _ = std::fs::remove_dir_all(dir);
    }
    r
}

fn import_entries<'a, R: Read + 'a>(
    entries: impl Iterator<Item = std::io::Result<tar::Entry<'a, R>>>,
    dir: &Path,
    ids: &IdMaps,
) -> Result<ImportStats> {
    let root = sys::open_path(dir, libc::O_PATH | libc::O_DIRECTORY)
        .map_err(|e| ioerr(format!("opening {}", dir.display()), e.desc()))?;
    let mut stats = ImportStats::default();
    let mut dir_times: Vec<(Vec<Vec<u8>>, u64)> = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            Error::sys(
                "reading a tarball entry",
                printable(e),
                "the tarball is truncated or corrupt",
            )
        })?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let refuse = |why: &str| {
            Error::new(format!(
                "hostile or broken layer: entry '{shown}' refused ({why}); nothing was written \
                 outside {}; use a trusted tarball",
                dir.display()
            ))
        };
        if entry.header().entry_type().is_dir() && clean_path(&raw) == Err(BadPath::Empty) {
            continue; // "./": the layer root itself, which is `dir`
        }
        let comps = clean_path(&raw).map_err(|w| refuse(&w.to_string()))?;
        let (name, parents) = comps.split_last().ok_or_else(|| refuse("empty path"))?;
        let parent = parent_dir(root.as_fd(), parents).map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => refuse("a parent directory is a symlink or a file"),
            e => refuse(e.desc()),
        })?;
        let cname = CString::new(name.as_slice()).map_err(|_| refuse("NUL in name"))?;
        let h = entry.header().clone();
        // The entry's, not the header's: a GNU long link name or a PAX linkpath replaces the
        // header's 100-byte field (which then holds a truncated or made-up target).
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let kind = h.entry_type();
        // `.wh.NAME` longer than NAME_MAX: no file can have that name, so the delete is
        // recorded the other way a union reads, a 0/0 character device named NAME.
        let long_whiteout = matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous)
            && whiteout::whited_out(name).is_some_and(|n| !whiteout::has_file_form(n));
        if long_whiteout {
            let target = whiteout::whited_out(name).unwrap_or_default();
            let c = CString::new(target).map_err(|_| refuse("NUL in name"))?;
            sys::mknodat(parent.as_fd(), &c, whiteout::CHARDEV_WHITEOUT_MODE, 0).map_err(|e| {
                refuse(&format!(
                    "creating its 0/0 character-device whiteout: {}; that needs Linux 5.8+ \
                     or CAP_MKNOD",
                    e.desc()
                ))
            })?;
            stats.entries += 1;
            continue;
        }
        // A later entry replaces an earlier one of the same name (but keeps directories).
        if !kind.is_dir() {
            match sys::unlinkat(parent.as_fd(), &cname, false) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(Errno::EISDIR) => {
                    let _ = crate::layer::stack::remove_tree(parent.as_fd(), &cname);
                }
                Err(e) => return Err(refuse(e.desc())),
            }
        }
        let made = match kind {
            tar::EntryType::Directory => match sys::mkdirat(parent.as_fd(), &cname, 0o700) {
                Ok(()) | Err(Errno::EEXIST) => {
                    open_subdir(parent.as_fd(), &cname).map_err(|_| refuse("not a directory"))?;
                    dir_times.push((comps.clone(), h.mtime().unwrap_or(0)));
                    Ok(())
                }
                Err(e) => Err(e),
            },
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let fd = sys::openat(
                    parent.as_fd(),
                    &cname,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                    0o600,
                )
                .map_err(|e| refuse(e.desc()))?;
                let mut f = std::fs::File::from(fd);
                std::io::copy(&mut entry, &mut f).map_err(|e| ioerr(&shown, e))?;
                Ok(())
            }
            tar::EntryType::Symlink => {
                let target = link
                    .as_deref()
                    .ok_or_else(|| refuse("symlink without target"))?;
                let t = CString::new(target).map_err(|_| refuse("NUL in target"))?;
                sys::symlinkat(&t, parent.as_fd(), &cname)
            }
            tar::EntryType::Link => {
                let target = link
                    .as_deref()
                    .ok_or_else(|| refuse("hard link without target"))?;
                let tcomps =
                    clean_path(target).map_err(|w| refuse(&format!("link target: {w}")))?;
                let (tname, tparents) =
                    tcomps.split_last().ok_or_else(|| refuse("empty target"))?;
                let rel: Vec<u8> = tparents.join(&b'/');
                let tdir = open_below(root.as_fd(), &rel, libc::O_PATH | libc::O_DIRECTORY)
                    .map_err(|_| refuse("link target's directory is outside or a symlink"))?;
                let tn = CString::new(tname.as_slice()).map_err(|_| refuse("NUL in target"))?;
                sys::linkat(tdir.as_fd(), &tn, parent.as_fd(), &cname)
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let ty = match kind {
                    tar::EntryType::Char => libc::S_IFCHR,
                    tar::EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let dev = libc::makedev(
                    h.device_major().ok().flatten().unwrap_or(0),
                    h.device_minor().ok().flatten().unwrap_or(0),
                );
                sys::mknodat(parent.as_fd(), &cname, ty | mode, dev)
            }
            // PAX and GNU extension headers are consumed by the tar reader.
            _ => continue,
        };
        made.map_err(|e| refuse(e.desc()))?;
        stats.entries += 1;
        if kind == tar::EntryType::Link {
            continue; // the first name carries the metadata
        }
        let at = sys::At::new(parent.as_fd(), &cname);
        if let Ok(Some(exts)) = entry.pax_extensions() {
            for ext in exts.flatten() {
                if let (Ok(key), value) = (ext.key(), ext.value_bytes()) {
                    if let Some(x) = key.strip_prefix("SCHILY.xattr.") {
                        if whiteout::is_internal_xattr(x.as_bytes()) {
                            continue;
                        }
                        let mut value = value.to_vec();
                        map_acl(ids, x.as_bytes(), &mut value, true, &shown)?;
                        if let Ok(cx) = CString::new(x) {
                            let _ = sys::setxattr(at, &cx, &value, 0);
                        }
                    }
                }
            }
        }
        let (uid, gid) = (h.uid().unwrap_or(0) as u32, h.gid().unwrap_or(0) as u32);
        let uid = map_id(&ids.uids, "uid", uid, true, &format!("entry '{shown}'"))?;
        let gid = map_id(&ids.gids, "gid", gid, true, &format!("entry '{shown}'"))?;
        if let Ok(fd) = sys::openat(parent.as_fd(), &cname, libc::O_PATH | libc::O_NOFOLLOW, 0) {
            let _ = sys::fchown_fd(fd.as_fd(), Some(uid), Some(gid));
            if kind != tar::EntryType::Symlink {
                let _ = sys::fchmod_fd(fd.as_fd(), mode);
            }
        }
        let mtime = h.mtime().unwrap_or(0) as i64;
        let t = libc::timespec {
            tv_sec: mtime as libc::time_t,
            tv_nsec: 0,
        };
        let _ = sys::utimensat(parent.as_fd(), &cname, &[t, t]);
    }
    // Directory times last: creating their entries moved them.
    for (comps, mtime) in dir_times.into_iter().rev() {
        let (name, parents) = match comps.split_last() {
            Some(v) => v,
            None => continue,
        };
        if let (Ok(p), Ok(cn)) = (
            parent_dir(root.as_fd(), parents),
            CString::new(name.as_slice()),
        ) {
            let t = libc::timespec {
                tv_sec: mtime as libc::time_t,
                tv_nsec: 0,
            };
            let _ = sys::utimensat(p.as_fd(), &cn, &[t, t]);
        }
    }
    Ok(stats)
}

/// Unpacks an uncompressed layer tarball read from `tar` into `dir`, like [`import`] but
/// without guessing a compression from the first bytes: for callers that know the layer's
/// media type and decompress (and hash the decompressed stream) themselves.
pub fn import_plain<R: Read>(tar: R, dir: &Path, ids: &IdMaps) -> Result<ImportStats> {
    import_tar(tar::Archive::new(tar), dir, ids)
}
