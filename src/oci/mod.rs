//! OCI layers in and out: `export` writes an upper directory as an OCI layer tarball (the
//! upper already is a layer diff; this drops our internal entries and writes whiteouts, owners,
//! modes, times, xattrs, hard links and device nodes the way the spec and its tools expect),
//! `import` unpacks a layer tarball into a directory usable as a lower layer without letting any
//! entry reach outside it, and `diff` lists an upper's changes.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

pub mod cli;

use crate::error::{Error, Result};
use crate::layer::idmap::{is_acl_xattr, map_acl_ids, RECORD};
pub use crate::layer::idmap::{IdMap, IdMaps};
use crate::layer::metacopy;
use crate::layer::stack::{open_below, open_subdir};
use crate::layer::whiteout;
use crate::sys::{self, Errno};

fn ioerr(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::new(format!("{what}: {e}"))
}

/// True for entries of an upper that are ours, not part of the layer diff.
fn internal(name: &[u8]) -> bool {
    name.starts_with(whiteout::RESERVED_PREFIX) && name != whiteout::OPAQUE_MARKER.to_bytes()
}

/// Visible (non-internal) xattrs of `name` in `dir`, as PAX `SCHILY.xattr.*` records.
fn xattrs(dir: BorrowedFd<'_>, name: &CString) -> Vec<(String, Vec<u8>)> {
    let at = sys::At::new(dir, name);
    let mut names = vec![0u8; 65536];
    let Ok(n) = sys::listxattr(at, &mut names) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for x in names[..n].split(|b| *b == 0).filter(|x| !x.is_empty()) {
        if whiteout::is_internal_xattr(x) {
            continue;
        }
        let (Ok(cx), Ok(key)) = (CString::new(x), std::str::from_utf8(x)) else {
            continue;
        };
        let mut value = vec![0u8; 65536];
        if let Ok(len) = sys::getxattr(at, &cx, &mut value) {
            value.truncate(len);
            out.push((format!("SCHILY.xattr.{key}"), value));
        }
    }
    out
}

/// Writes the upper directory `upper` as an OCI layer tarball to `out`. `lowers` (topmost
/// first) are the layers the union ran with: the data of metadata-only copy-ups comes from them.
/// `ids` are the container:host id maps the upper was written under: its owners (and the named
/// users and groups of its ACLs) are host ids, written as container ids; an id the maps do not
/// cover stops the export, naming the file.
pub fn export<W: Write>(upper: &Path, lowers: &[PathBuf], ids: &IdMaps, out: W) -> Result<W> {
    let mut ar = tar::Builder::new(out);
    ar.mode(tar::HeaderMode::Complete);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    open_upper(upper)?;
    let roots = open_lowers(lowers)?;
    let mut ex = Export {
        lowers: roots,
        links: &mut links,
        ids,
    };
    export_dir(&mut ar, upper, Path::new(""), &mut ex)?;
    ar.into_inner()
        .map_err(|e| ioerr("finishing the tarball", e))
}

/// Copies the data of every metadata-only copy-up (stub) in the unmounted upper `upper` from
/// `lowers` (topmost first) into the stub, so the upper directory itself is a plain layer diff.
/// Returns how many stubs were filled; stops at the first stub whose data is missing.
pub fn fill_stubs(upper: &Path, lowers: &[PathBuf]) -> Result<u64> {
    let root = open_upper(upper)?;
    let roots = open_lowers(lowers)?;
    let mut filled = 0;
    fill_dir(root.as_fd(), upper, &roots, &mut filled)?;
    Ok(filled)
}

fn fill_dir(dir: BorrowedFd<'_>, path: &Path, lowers: &[OwnedFd], filled: &mut u64) -> Result<()> {
    let entries =
        sys::read_dir(dir).map_err(|e| ioerr(format!("reading {}", path.display()), e.desc()))?;
    for e in entries {
        if internal(&e.name) {
            continue;
        }
        let name = CString::new(e.name.clone()).map_err(|_| Error::new("NUL in a name"))?;
        let p = path.join(OsStr::from_bytes(&e.name));
        let st = sys::fstatat(dir, &name).map_err(|err| ioerr(p.display(), err.desc()))?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                let sub = open_subdir(dir, &name).map_err(|err| ioerr(p.display(), err.desc()))?;
                fill_dir(sub.as_fd(), &p, lowers, filled)?;
            }
            libc::S_IFREG => {
                let Some((stub, xattr)) = metacopy::read_at(sys::At::new(dir, &name)) else {
                    continue;
                };
                let src = stub_source(lowers, &stub, &p)?;
                let fd = sys::openat(dir, &name, libc::O_PATH | libc::O_NOFOLLOW, 0)
                    .map_err(|err| ioerr(p.display(), err.desc()))?;
                metacopy::fill_from(src.as_fd(), fd.as_fd(), &stub, xattr, true)
                    .map_err(|err| ioerr(format!("filling {}", p.display()), err.desc()))?;
                *filled += 1;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks that `upper` and each of `lowers` is a directory that can be opened, naming the first
/// that is not, so that a command can refuse a mistyped layer before it writes anything.
pub fn check_layers(upper: &Path, lowers: &[PathBuf]) -> Result<()> {
    open_upper(upper)?;
    open_lowers(lowers).map(drop)
}

fn open_upper(upper: &Path) -> Result<OwnedFd> {
    sys::open_path(upper, libc::O_PATH | libc::O_DIRECTORY).map_err(|e| {
        Error::sys(
            format!("upper layer {}", upper.display()),
            e.desc(),
            "give the upper directory of the union",
        )
    })
}

fn open_lowers(lowers: &[PathBuf]) -> Result<Vec<OwnedFd>> {
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

/// State of one export.
struct Export<'a> {
    lowers: Vec<OwnedFd>,
    links: &'a mut HashMap<(u64, u64), PathBuf>,
    ids: &'a IdMaps,
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
fn map_id(map: &IdMap, kind: &str, id: u32, to_host: bool, what: &str) -> Result<u32> {
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
fn map_acl(ids: &IdMaps, name: &[u8], value: &mut [u8], to_host: bool, what: &str) -> Result<()> {
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

/// The content of an upper file for the tarball: its own data, or for a metadata-only copy-up
/// the lower file it stands for.
fn file_data(ex: &Export<'_>, dir: BorrowedFd<'_>, name: &CString, path: &Path) -> Result<OwnedFd> {
    if let Some((stub, _)) = metacopy::read_at(sys::At::new(dir, name)) {
        if ex.lowers.is_empty() {
            return Err(Error::new(format!(
                "{} is a metadata-only copy-up (mounted with metacopy=on): its data is still \
                 in the lower layers; pass them with --lowers L1:L2 (topmost first)",
                path.display()
            )));
        }
        return stub_source(&ex.lowers, &stub, path);
    }
    sys::openat(dir, name, libc::O_RDONLY | libc::O_NOFOLLOW, 0)
        .map_err(|e| ioerr(format!("opening {}", path.display()), e.desc()))
}

/// The lower file holding the data of the stub at `path`, or an error saying why there is none.
fn stub_source(lowers: &[OwnedFd], stub: &metacopy::Stub, path: &Path) -> Result<OwnedFd> {
    metacopy::source_in(lowers.iter().map(|l| l.as_fd()), stub)
        .map_err(|e| {
            ioerr(
                format!("reading the lower data of {}", path.display()),
                e.desc(),
            )
        })?
        .ok_or_else(|| Error::new(format!("{}: {}", path.display(), metacopy::missing(stub))))
}

fn export_dir<W: Write>(
    ar: &mut tar::Builder<W>,
    dir: &Path,
    rel: &Path,
    ex: &mut Export<'_>,
) -> Result<()> {
    let dirfd = sys::open_path(dir, libc::O_PATH | libc::O_DIRECTORY)
        .map_err(|e| ioerr(format!("opening {}", dir.display()), e.desc()))?;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| ioerr(format!("reading {}", dir.display()), e))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        if internal(name.as_bytes()) {
            continue;
        }
        let path = e.path();
        let relp = rel.join(&name);
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|err| ioerr(format!("{}", path.display()), err))?;
        let ft = meta.file_type();
        let mut h = tar::Header::new_gnu();
        h.set_mode(meta.mode() & 0o7777);
        let shown = path.display().to_string();
        h.set_uid(map_id(&ex.ids.uids, "uid", meta.uid(), false, &shown)?.into());
        h.set_gid(map_id(&ex.ids.gids, "gid", meta.gid(), false, &shown)?.into());
        h.set_mtime(meta.mtime().max(0) as u64);
        h.set_size(0);
        if ft.is_char_device() && meta.rdev() == 0 {
            // The kernel's whiteout form, which an upper uses for names too long for
            // `.wh.NAME` on disk: an OCI layer says `.wh.NAME`, which a tar name can hold.
            let mut wh = std::ffi::OsString::from(".wh.");
            wh.push(&name);
            h.set_entry_type(tar::EntryType::Regular);
            ar.append_data(&mut h, rel.join(wh), std::io::empty())
                .map_err(|err| ioerr(format!("adding the whiteout of {}", relp.display()), err))?;
            continue;
        }
        let cname = CString::new(name.as_bytes()).map_err(|_| Error::new("NUL in a name"))?;
        let mut x = xattrs(dirfd.as_fd(), &cname);
        for (k, v) in &mut x {
            let n = k.trim_start_matches("SCHILY.xattr.").as_bytes();
            map_acl(ex.ids, n, v, false, &shown)?;
        }
        let is_whiteout = name.as_bytes().starts_with(whiteout::WH_PREFIX);
        if !x.is_empty() && !is_whiteout {
            ar.append_pax_extensions(x.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(|err| ioerr("writing xattrs", err))?;
        }
        let fail = |err: std::io::Error| ioerr(format!("adding {}", relp.display()), err);
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            ar.append_data(&mut h, format!("{}/", relp.display()), std::io::empty())
                .map_err(fail)?;
            export_dir(ar, &path, &relp, ex)?;
        } else if ft.is_symlink() {
            h.set_entry_type(tar::EntryType::Symlink);
            let target = std::fs::read_link(&path).map_err(fail)?;
            ar.append_link(&mut h, &relp, target).map_err(fail)?;
        } else if ft.is_file() {
            if is_whiteout {
                // Whiteouts are markers, never hard links of each other in the tarball.
                h.set_entry_type(tar::EntryType::Regular);
                ar.append_data(&mut h, &relp, std::io::empty())
                    .map_err(fail)?;
                continue;
            }
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = ex.links.get(&key) {
                    h.set_entry_type(tar::EntryType::Link);
                    ar.append_link(&mut h, &relp, first).map_err(fail)?;
                    continue;
                }
                ex.links.insert(key, relp.clone());
            }
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(meta.len());
            let f = std::fs::File::from(file_data(ex, dirfd.as_fd(), &cname, &path)?);
            ar.append_data(&mut h, &relp, f).map_err(fail)?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            h.set_entry_type(if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else {
                tar::EntryType::Fifo
            });
            let rdev = meta.rdev();
            h.set_device_major(libc::major(rdev)).map_err(fail)?;
            h.set_device_minor(libc::minor(rdev)).map_err(fail)?;
            ar.append_data(&mut h, &relp, std::io::empty())
                .map_err(fail)?;
        }
        // Sockets cannot be stored in a tarball; like other tools we leave them out.
    }
    Ok(())
}

/// What `import` did.
#[derive(Debug, Default)]
pub struct ImportStats {
    /// Entries created.
    pub entries: u64,
}

/// A layer path made safe: relative, no `..`, no empty or `.` components.
fn clean_path(raw: &[u8]) -> std::result::Result<Vec<Vec<u8>>, String> {
    if raw.starts_with(b"/") {
        return Err("absolute path".into());
    }
    let mut comps = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => continue,
            b".." => return Err("'..' component".into()),
            c => comps.push(c.to_vec()),
        }
    }
    if comps.is_empty() {
        return Err("empty path".into());
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
        if entry.header().entry_type().is_dir()
            && clean_path(&raw).is_err_and(|w| w == "empty path")
        {
            continue; // "./": the layer root itself, which is `dir`
        }
        let comps = clean_path(&raw).map_err(|w| refuse(&w))?;
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
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| ioerr(format!("reading {}", dir.display()), e))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let nb = name.as_bytes();
        if internal(nb) {
            continue;
        }
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
