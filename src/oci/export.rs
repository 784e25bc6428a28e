//! `unionfs-layer export`: an upper directory as an OCI layer tarball.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{internal, ioerr, layer_entries, map_acl, map_id, open_lowers, open_upper, IdMaps};
use crate::error::{Error, Result};
use crate::layer::metacopy;
use crate::layer::stack::open_subdir;
use crate::layer::whiteout;
use crate::sys;

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

/// State of one export.
struct Export<'a> {
    lowers: Vec<OwnedFd>,
    links: &'a mut HashMap<(u64, u64), PathBuf>,
    ids: &'a IdMaps,
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
    for e in layer_entries(dir)? {
        let name = e.file_name();
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
