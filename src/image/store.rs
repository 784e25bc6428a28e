//! The layer store: unpacked image layers, content-addressed, shared by every image and
//! container that uses them, plus the records of images and named containers.
//!
//! ```text
//! STORE/lock                       flock: unpacking, recording and removing take it
//! STORE/layers/sha256-HEX/         one layer as a lower directory, named by its diff id
//! STORE/images/sha256-HEX.json     one image (named by its config digest): references, layers
//! STORE/containers/NAME/           a named container: container.json and its upper/
//! STORE/tmp/                       unpacks in progress (and removals), never used as layers
//! ```
//!
//! Layers are named by their *diff id*, the digest of the uncompressed tar from the image
//! config, not by the blob digest: the same layer compressed with gzip by one tool and zstd by
//! another is one directory, and the name is checked against the very bytes unpacked (the
//! uncompressed stream is hashed on the way into the tar reader). A layer directory never
//! depends on the layers below it (whiteouts stay `.wh.` files the union reads), so the diff id
//! alone identifies it, where containers/storage needs a chain id.
//!
//! An image's missing layers are unpacked into `tmp/` and renamed into `layers/` only after
//! every one of them matched its blob digest, its size and its diff id, and their data was
//! written back to disk: a corrupt, short or interrupted unpack leaves nothing in `layers/`
//! (not even the sound layers of a damaged image), and whatever a killed unpack left in
//! `tmp/` is removed by the next holder of the lock. Unpacks happen under the store's lock, so
//! two launches needing the same layer unpack it once (the second waits and finds it there);
//! the rename refuses to replace an existing layer in any case. A run holds a shared flock on
//! each layer directory it mounts, which removal checks before it removes anything.

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::digest::{Digest, Mismatch, Verify};
use super::layout::{blob_path, Compression, Image, Layer};
use crate::error::{Error, Result};
use crate::oci::IdMaps;
use crate::sys::{self, Errno};

/// The environment variable that names the store when `--store` is not given.
pub const STORE_ENV: &str = "UNIONFS_STORE";

/// The store's directory when neither `--store` nor [`STORE_ENV`] names one: `/var/lib/unionfs`
/// for root, `$XDG_DATA_HOME/unionfs` (default `~/.local/share/unionfs`) for other users.
pub fn default_root() -> Result<PathBuf> {
    if nix::unistd::geteuid().is_root() {
        return Ok(PathBuf::from("/var/lib/unionfs"));
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| Path::new(x).is_absolute()) {
        return Ok(PathBuf::from(x).join("unionfs"));
    }
    match std::env::var_os("HOME").filter(|h| Path::new(h).is_absolute()) {
        Some(h) => Ok(PathBuf::from(h).join(".local/share/unionfs")),
        None => Err(Error::new(
            "no place for the layer store: neither XDG_DATA_HOME nor HOME is set; give one \
             with --store DIR (or UNIONFS_STORE=DIR)",
        )),
    }
}

/// An opened store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// The store's lock, held while layers are unpacked or records and layers change.
#[derive(Debug)]
pub struct Locked<'a> {
    store: &'a Store,
    _lock: OwnedFd,
}

/// Shared flocks on the layer directories a run mounts: removal refuses them while held.
#[derive(Debug)]
pub struct InUse {
    _fds: Vec<OwnedFd>,
}

fn io_err(what: impl std::fmt::Display, e: impl std::fmt::Display, hint: &str) -> Error {
    Error::sys(what, e, hint)
}

impl Store {
    /// The store at `root` (`--store`), at [`STORE_ENV`], or at [`default_root`]; its
    /// directories are created when missing.
    pub fn open(root: Option<&Path>) -> Result<Store> {
        let root = match root {
            Some(r) => r.to_path_buf(),
            None => match std::env::var_os(STORE_ENV).filter(|v| !v.is_empty()) {
                Some(v) => PathBuf::from(v),
                None => default_root()?,
            },
        };
        // Other users have no business in a user's store; a root store is readable so that
        // the daemon of an id-mapped container (not host root) can read its layers.
        let mode = if nix::unistd::geteuid().is_root() {
            0o755
        } else {
            0o700
        };
        for sub in ["", "layers", "images", "containers", "tmp"] {
            let d = root.join(sub);
            if let Err(e) = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(&d)
            {
                return Err(io_err(
                    format!("creating the layer store {}", d.display()),
                    e,
                    "give a directory you may write to with --store DIR",
                ));
            }
        }
        let root = std::fs::canonicalize(&root).unwrap_or(root);
        Ok(Store { root })
    }

    /// Its directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where layer `diff_id` lives (whether or not it is there).
    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.file_name())
    }

    pub(super) fn sub(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Takes the store's lock (waiting for another holder), and removes what a killed unpack
    /// or removal left in `tmp/`: only a holder of the lock works there.
    pub fn lock(&self) -> Result<Locked<'_>> {
        let path = self.root.join("lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_err(format!("opening {}", path.display()), e, ""))?;
        let fd = OwnedFd::from(f);
        sys::lock_wait(fd.as_fd(), false)
            .map_err(|e| io_err(format!("locking {}", path.display()), e.desc(), ""))?;
        if let Ok(rd) = std::fs::read_dir(self.sub("tmp")) {
            for e in rd.flatten() {
                let _ = remove_tree(&e.path());
            }
        }
        Ok(Locked {
            store: self,
            _lock: fd,
        })
    }
}

impl Locked<'_> {
    /// The store.
    pub fn store(&self) -> &Store {
        self.store
    }

    /// Unpacks every layer of `img` that the store lacks; returns the layer directories,
    /// bottom first. All or nothing: the layers are staged first and published together once
    /// every one of them checked out, so a damaged image adds no layer at all.
    pub fn unpack(&self, img: &Image) -> Result<Vec<PathBuf>> {
        let staging = self
            .store
            .sub("tmp")
            .join(format!("unpack.{}", std::process::id()));
        std::fs::create_dir(&staging).map_err(|e| {
            io_err(
                format!("creating {}", staging.display()),
                e,
                "check the store's permissions",
            )
        })?;
        let r = self.stage_all(img, &staging);
        let _ = remove_tree(&staging);
        r
    }

    fn stage_all(&self, img: &Image, staging: &Path) -> Result<Vec<PathBuf>> {
        let n = img.layers.len();
        let mut staged = Vec::new();
        for (i, l) in img.layers.iter().enumerate() {
            let dest = self.store.layer_dir(&l.diff_id);
            let target = staging.join(l.diff_id.file_name());
            if !dest.is_dir() && !target.exists() {
                let what = format!("layer {} of {n} of '{}'", i + 1, img.reference);
                stage_layer(img, l, &target, &what)?;
                staged.push((target, dest));
            }
        }
        for (target, dest) in &staged {
            publish(target, dest)?;
        }
        Ok(img
            .layers
            .iter()
            .map(|l| self.store.layer_dir(&l.diff_id))
            .collect())
    }

    /// Takes a shared flock on each of `dirs` for as long as the result lives.
    pub fn use_layers(&self, dirs: &[PathBuf]) -> Result<InUse> {
        let mut fds = Vec::new();
        for d in dirs {
            let fd = sys::open_path(d, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC)
                .map_err(|e| io_err(format!("layer {}", d.display()), e.desc(), ""))?;
            sys::lock_wait(fd.as_fd(), true)
                .map_err(|e| io_err(format!("locking layer {}", d.display()), e.desc(), ""))?;
            fds.push(fd);
        }
        Ok(InUse { _fds: fds })
    }
}

/// Checks and unpacks layer `layer` of `img` into `target` (a new directory).
fn stage_layer(img: &Image, layer: &Layer, target: &Path, what: &str) -> Result<()> {
    let blob = blob_path(&img.layout, &layer.blob);
    let damaged = |why: String| {
        Error::new(format!(
            "image layout {}: {what}: blob {} {why}; nothing was added to the layer store; \
             copy the image into the layout again (skopeo copy, umoci, podman save \
             --format oci-dir)",
            img.layout.display(),
            layer.blob
        ))
    };
    let file = File::open(&blob).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            damaged(format!("is missing ({} does not exist)", blob.display()))
        }
        _ => damaged(format!("cannot be read ({}: {e})", blob.display())),
    })?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len < layer.size {
        return Err(damaged(
            Mismatch::Short {
                got: len,
                want: layer.size,
            }
            .to_string(),
        ));
    }
    unpack_into(file, layer, target, &damaged)
}

/// Reads the blob (`file`), checking its size and digest, decompresses it, checks the diff id
/// of the tar, and unpacks it into `target`. A wrong blob is reported as such even when the tar
/// reader failed first on its bytes: that is the cause.
fn unpack_into(
    file: File,
    layer: &Layer,
    target: &Path,
    damaged: &dyn Fn(String) -> Error,
) -> Result<()> {
    let mut blob = Verify::new(BufReader::new(file), &layer.blob, Some(layer.size));
    let (unpacked, diff) = {
        let plain: Box<dyn Read + '_> = match layer.compression {
            Compression::None => Box::new(&mut blob),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut blob)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::new(&mut blob)
                    .map_err(|e| damaged(format!("cannot be decompressed (zstd: {e})")))?,
            ),
        };
        let mut tar = Verify::new(plain, &layer.diff_id, None);
        let unpacked = crate::oci::import_plain(&mut tar, target, &IdMaps::default());
        let diff = unpacked.is_ok().then(|| tar.finish());
        (unpacked, diff)
    };
    match blob.finish() {
        Ok(Ok(())) => {}
        Ok(Err(m)) => return Err(damaged(m.to_string())),
        Err(e) => return Err(damaged(format!("cannot be read ({e})"))),
    }
    unpacked.map_err(|e| damaged(format!("matches its digest but does not unpack: {e}")))?;
    match diff {
        Some(Ok(Ok(()))) | None => Ok(()),
        Some(Ok(Err(Mismatch::Digest { got }))) => Err(damaged(format!(
            "matches its digest, but its uncompressed content is {got}, not the diff id {} \
             the image config lists",
            layer.diff_id
        ))),
        Some(Ok(Err(m))) => Err(damaged(format!("uncompressed, {m}"))),
        Some(Err(e)) => Err(damaged(format!("cannot be decompressed ({e})"))),
    }
}

/// Writes the unpacked layer back to disk and renames it to `dest`, unless another launch
/// published the same layer first (then theirs is as good).
fn publish(target: &Path, dest: &Path) -> Result<()> {
    let fd = sys::open_path(target, libc::O_RDONLY | libc::O_DIRECTORY)
        .map_err(|e| io_err(format!("opening {}", target.display()), e.desc(), ""))?;
    // After a crash the name must not stand for a layer whose data never reached the disk.
    sys::syncfs(fd.as_fd())
        .map_err(|e| io_err(format!("writing back {}", target.display()), e.desc(), ""))?;
    let (Some(from_dir), Some(to_dir)) = (target.parent(), dest.parent()) else {
        return Err(Error::new("internal: a layer path without a parent"));
    };
    let open = |d: &Path| {
        sys::open_path(d, libc::O_PATH | libc::O_DIRECTORY)
            .map_err(|e| io_err(format!("opening {}", d.display()), e.desc(), ""))
    };
    let (a, b) = (open(from_dir)?, open(to_dir)?);
    let cname = |p: &Path| {
        std::ffi::CString::new(p.file_name().unwrap_or_default().as_encoded_bytes())
            .map_err(|_| Error::new("NUL in a store path"))
    };
    match sys::renameat2(
        a.as_fd(),
        &cname(target)?,
        b.as_fd(),
        &cname(dest)?,
        libc::RENAME_NOREPLACE,
    ) {
        Ok(()) | Err(Errno::EEXIST) | Err(Errno::ENOTEMPTY) => Ok(()),
        Err(e) => Err(io_err(
            format!("moving the unpacked layer to {}", dest.display()),
            e.desc(),
            "",
        )),
    }
}

/// Removes the tree at `path`; directories of ours without write permission (an image may
/// ship `dr-xr-xr-x` ones) are opened up first, which a user without CAP_DAC_OVERRIDE needs.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            open_up(path);
            std::fs::remove_dir_all(path)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

fn open_up(path: &Path) {
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return;
    };
    if !m.is_dir() || m.uid() != nix::unistd::geteuid().as_raw() {
        return;
    }
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            open_up(&e.path());
        }
    }
}

/// Bytes of the regular files and symlinks under `path` (hard links counted once).
pub fn disk_usage(path: &Path) -> u64 {
    fn walk(p: &Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> u64 {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return 0;
        };
        if m.is_dir() {
            std::fs::read_dir(p)
                .map(|rd| rd.flatten().map(|e| walk(&e.path(), seen)).sum())
                .unwrap_or(0)
        } else if m.nlink() > 1 && !seen.insert((m.dev(), m.ino())) {
            0
        } else {
            m.len()
        }
    }
    walk(path, &mut std::collections::HashSet::new())
}

/// Whether a run holds directory `dir` (a shared flock, see [`Locked::use_layers`], or an
/// exclusive one of a named container): the launchers holding it, by pid.
pub fn holders(dir: &Path) -> Option<Vec<i32>> {
    let fd = sys::open_path(dir, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC).ok()?;
    match sys::try_lock_exclusive(fd.as_fd()) {
        Ok(()) => None,
        Err(_) => {
            let st = sys::fstat(fd.as_fd()).ok()?;
            let mut pids = sys::flock_holders(st.st_dev, st.st_ino);
            pids.extend(sys::flock_sharers(st.st_dev, st.st_ino));
            Some(launchers(pids))
        }
    }
}

/// Of the processes holding a lock, those whose parent does not: a launcher's children (its
/// holder and reaper) inherit its descriptors, but the launcher is the one to name.
pub fn launchers(mut pids: Vec<i32>) -> Vec<i32> {
    pids.sort_unstable();
    pids.dedup();
    let parent = |p: i32| -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        stat.get(stat.rfind(')')? + 2..)?
            .split(' ')
            .nth(1)?
            .parse()
            .ok()
    };
    pids.iter()
        .copied()
        .filter(|p| parent(*p).is_none_or(|pp| !pids.contains(&pp)))
        .collect()
}

/// `pid N, M (unionfs-run)` for a message.
pub fn describe_pids(pids: &[i32]) -> String {
    if pids.is_empty() {
        return "a process this user cannot see".to_string();
    }
    let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
    format!("unionfs-run pid {}", list.join(", "))
}
