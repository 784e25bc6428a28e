//! Building layer directories from a scenario, in the on-disk format of an implementation.
//!
//! The neutral notation (`type = "whiteout"`, `opaque = "marker"`) becomes `.wh.NAME` files and
//! `.wh..wh..opq` markers for OCI-format unions (ours), and 0/0 char devices and the
//! `trusted.overlay.opaque=y` xattr for kernel overlayfs and fuse-overlayfs.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::scenario::{Entry, Kind, Layer};
use crate::view::{at, split};
use crate::{Error, Result};
use unionfs::sys;

/// How deletions and opaque directories are written on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OCI layer format: `.wh.NAME` files and `.wh..wh..opq` markers.
    Oci,
    /// Kernel overlayfs format: 0/0 char devices and `trusted.overlay.opaque=y`.
    Kernel,
}

fn ctx<T>(r: sys::SysResult<T>, what: &str, p: &Path) -> Result<T> {
    r.map_err(|e| Error::at(what, p, e.desc()).context("building layer"))
}

fn io<T>(r: std::io::Result<T>, what: &str, p: &Path) -> Result<T> {
    r.map_err(|e| Error::at(what, p, e).context("building layer"))
}

fn cname(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::msg(format!("name {s:?} contains a NUL byte; remove it")))
}

/// Sets an xattr on `path` without following symlinks.
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) -> Result<()> {
    let (dir, n) = at(path)?;
    let a = match &n {
        Some(n) => sys::At::new(sys::fd(&dir), n),
        None => sys::At::dir(sys::fd(&dir)),
    };
    ctx(sys::setxattr(a, &cname(name)?, value, 0), "setxattr", path)
}

/// Sets the mtime (atime too, to the same value) of `path` without following symlinks.
pub fn set_mtime(path: &Path, sec: i64, nsec: i64) -> Result<()> {
    set_times(path, Some((sec, nsec)), Some((sec, nsec)))
}

/// Sets the atime and mtime, each `(seconds, nanoseconds)`, of `path` without following
/// symlinks; `None` leaves that time as it is.
pub fn set_times(path: &Path, atime: Option<(i64, i64)>, mtime: Option<(i64, i64)>) -> Result<()> {
    let ts = |t: Option<(i64, i64)>| match t {
        Some((sec, nsec)) => libc::timespec {
            tv_sec: sec as libc::time_t,
            tv_nsec: nsec as _,
        },
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    };
    let times = [ts(atime), ts(mtime)];
    let (dir, n) = at(path)?;
    match n {
        Some(n) => ctx(sys::utimensat(sys::fd(&dir), &n, &times), "utimes", path),
        None => ctx(sys::utimens_fd(sys::fd(&dir), &times), "utimes", path),
    }
}

fn mknod(path: &Path, mode: u32, rdev: [u32; 2]) -> Result<()> {
    let (dir, n) = at(path)?;
    let n = n.ok_or_else(|| {
        Error::msg(format!(
            "building layer: mknod {}: that is a layer root; name an entry below it",
            path.display()
        ))
    })?;
    let dev = libc::makedev(rdev[0], rdev[1]);
    ctx(sys::mknodat(sys::fd(&dir), &n, mode, dev), "mknod", path)
}

fn ensure_parents(root: &Path, rel: &str) -> Result<()> {
    let (parent, _) = split(rel);
    if parent != "." {
        let p = root.join(parent);
        if !p.exists() {
            io(std::fs::create_dir_all(&p), "mkdir", &p)?;
        }
    }
    Ok(())
}

/// Creates the layer's entries under `root` (which must exist) in `format`.
pub fn build_layer(root: &Path, layer: &Layer, format: Format) -> Result<()> {
    if let Some(src) = &layer.from {
        import(Path::new(src), root, format, &mut HashMap::new())?;
    }
    for e in &layer.entries {
        build_entry(root, e, format)?;
    }
    // Times last, deepest first: creating children changes a directory's mtime.
    let mut timed: Vec<&Entry> = layer
        .entries
        .iter()
        .filter(|e| e.mtime.is_some() || e.atime.is_some())
        .collect();
    timed.sort_by_key(|e| std::cmp::Reverse(e.path.matches('/').count()));
    for e in timed {
        let p = if e.path == "." {
            root.to_path_buf()
        } else {
            root.join(&e.path)
        };
        let atime = e.atime.map(|s| (s, e.atime_nsec.unwrap_or(0)));
        let mtime = e.mtime.map(|s| (s, e.mtime_nsec.unwrap_or(0)));
        set_times(&p, atime, mtime)?;
    }
    Ok(())
}

fn build_entry(root: &Path, e: &Entry, format: Format) -> Result<()> {
    let p = if e.path == "." {
        root.to_path_buf()
    } else {
        root.join(&e.path)
    };
    ensure_parents(root, &e.path)?;
    let default_mode = match e.kind {
        Kind::Dir | Kind::Many => 0o755,
        _ => 0o644,
    };
    match e.kind {
        Kind::File => {
            io(
                std::fs::write(&p, e.content.as_ref().map_or(&b""[..], |c| c.as_slice())),
                "write",
                &p,
            )?;
            if let Some(s) = e.size {
                let f = io(std::fs::OpenOptions::new().write(true).open(&p), "open", &p)?;
                io(f.set_len(s), "truncate", &p)?;
            }
        }
        Kind::Dir => {
            if !p.is_dir() {
                io(std::fs::create_dir(&p), "mkdir", &p)?;
            }
        }
        Kind::Many => {
            if !p.is_dir() {
                io(std::fs::create_dir(&p), "mkdir", &p)?;
            }
            for i in 0..e.count.unwrap_or(0) {
                let f = p.join(format!("f{i}"));
                io(
                    std::fs::write(&f, e.content.as_ref().map_or(&b""[..], |c| c.as_slice())),
                    "write",
                    &f,
                )?;
            }
        }
        Kind::Symlink => {
            let t = e.target.as_deref().unwrap_or("");
            io(std::os::unix::fs::symlink(t, &p), "symlink", &p)?;
        }
        Kind::Hardlink => {
            let t = root.join(e.target.as_deref().unwrap_or(""));
            io(std::fs::hard_link(&t, &p), "link", &p)?;
        }
        Kind::Fifo => mknod(&p, libc::S_IFIFO | 0o644, [0, 0])?,
        Kind::Chardev => mknod(&p, libc::S_IFCHR | 0o644, e.rdev.unwrap_or([1, 3]))?,
        Kind::Blockdev => mknod(&p, libc::S_IFBLK | 0o644, e.rdev.unwrap_or([7, 0]))?,
        Kind::Socket => {
            return Err(Error::msg(format!(
                "{}: sockets cannot be put in a layer; leave the entry out",
                e.path
            )))
        }
        Kind::Whiteout => {
            match format {
                Format::Oci => {
                    let (parent, name) = split(&e.path);
                    if unionfs::layer::whiteout::has_file_form(name.as_bytes()) {
                        let w = root.join(parent).join(format!(".wh.{name}"));
                        io(std::fs::write(&w, ""), "write whiteout", &w)?;
                    } else {
                        // `.wh.NAME` would exceed NAME_MAX: the form unionfs writes too.
                        mknod(&p, libc::S_IFCHR, [0, 0])?;
                    }
                }
                Format::Kernel => mknod(&p, libc::S_IFCHR, [0, 0])?,
            }
            return Ok(());
        }
    }
    if let Some(o) = &e.opaque {
        match (o.as_str(), format) {
            ("marker", Format::Oci) => {
                let m = p.join(".wh..wh..opq");
                io(std::fs::write(&m, ""), "write opaque marker", &m)?;
            }
            ("marker", Format::Kernel) | ("trusted", _) => {
                set_xattr(&p, "trusted.overlay.opaque", b"y")?
            }
            ("user", _) => set_xattr(&p, "user.overlay.opaque", b"y")?,
            (other, _) => {
                return Err(Error::msg(format!(
                    "{}: opaque = {other:?}; use \"marker\", \"trusted\" or \"user\"",
                    e.path
                )))
            }
        }
    }
    // Owner, then mode, then xattrs: a chown clears set-id bits and file capabilities
    // (`security.capability`), so what the entry asks for must come after it.
    if e.uid.is_some() || e.gid.is_some() {
        io(std::os::unix::fs::lchown(&p, e.uid, e.gid), "chown", &p)?;
    }
    if e.kind != Kind::Symlink && (e.mode.is_some() || e.kind != Kind::Hardlink) {
        let m = e.mode.unwrap_or(default_mode);
        io(
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)),
            "chmod",
            &p,
        )?;
    }
    for (k, v) in &e.xattrs {
        set_xattr(&p, k, v.as_slice())?;
    }
    Ok(())
}

/// Copies an existing layer directory's contents into `dst`, writing whiteouts and opaque
/// markers in `format`; hard links inside the layer stay hard links.
fn import(
    src: &Path,
    dst: &Path,
    format: Format,
    links: &mut HashMap<(u64, u64), std::path::PathBuf>,
) -> Result<()> {
    let mut names: Vec<std::ffi::OsString> = io(std::fs::read_dir(src), "readdir", src)?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    for name in names {
        let (s, d) = (src.join(&name), dst.join(&name));
        let n = name.to_string_lossy();
        if n == ".wh..wh..opq" {
            match format {
                Format::Oci => io(std::fs::write(&d, ""), "write opaque marker", &d)?,
                Format::Kernel => set_xattr(dst, "trusted.overlay.opaque", b"y")?,
            }
            continue;
        }
        if n.starts_with(".wh..wh.") {
            continue;
        }
        if let (Some(hidden), Format::Kernel) = (n.strip_prefix(".wh."), format) {
            mknod(&dst.join(hidden), libc::S_IFCHR, [0, 0])?;
            continue;
        }
        let md = io(std::fs::symlink_metadata(&s), "lstat", &s)?;
        let ft = md.file_type();
        let key = (md.dev(), md.ino());
        if ft.is_dir() {
            io(std::fs::create_dir(&d), "mkdir", &d)?;
            import(&s, &d, format, links)?;
        } else if ft.is_symlink() {
            let t = io(std::fs::read_link(&s), "readlink", &s)?;
            io(std::os::unix::fs::symlink(t, &d), "symlink", &d)?;
        } else if let Some(first) = links.get(&key) {
            io(std::fs::hard_link(first, &d), "link", &d)?;
            continue;
        } else if ft.is_file() {
            io(std::fs::copy(&s, &d), "copy", &d)?;
            if md.nlink() > 1 {
                links.insert(key, d.clone());
            }
        } else {
            let rdev = md.rdev();
            let kind = md.mode() & libc::S_IFMT;
            if kind == libc::S_IFSOCK {
                continue;
            }
            mknod(&d, kind, [libc::major(rdev), libc::minor(rdev)])?;
        }
        for (k, v) in crate::view::xattrs(&s)? {
            // Bookkeeping of whoever wrote the layer is not part of it (the opaque marker is).
            let internal = (k.starts_with("trusted.overlay.") && k != "trusted.overlay.opaque")
                || k.contains(".unionfs.")
                || k.contains(".fuseoverlayfs.");
            if !internal {
                set_xattr(&d, &k, &v)?;
            }
        }
        io(
            std::os::unix::fs::lchown(&d, Some(md.uid()), Some(md.gid())),
            "chown",
            &d,
        )?;
        if !ft.is_symlink() {
            io(
                std::fs::set_permissions(&d, std::fs::Permissions::from_mode(md.mode() & 0o7777)),
                "chmod",
                &d,
            )?;
        }
        set_mtime(&d, md.mtime(), md.mtime_nsec())?;
    }
    Ok(())
}
