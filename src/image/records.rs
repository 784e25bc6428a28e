//! What the store knows besides layers: the images that were run (`images/ID.json`) and the
//! named containers (`containers/NAME/container.json` beside their `upper/`), and the rules
//! for removing each: a layer goes only when no image and no named container lists it and no
//! run holds it, an image only when no named container was made from it and no run holds its
//! layers, a container only when it is not running.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::layout::{Image, RunConfig};
use super::store::{describe_pids, disk_usage, holders, remove_tree, Locked, Store};
use crate::error::{Error, Result};

/// An image the store has run: its layers (diff ids, bottom first) and how to run it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// The config digest: the image's id.
    pub id: String,
    /// The `DIR:TAG` references it was run as.
    pub refs: Vec<String>,
    /// Diff ids, bottom first.
    pub layers: Vec<String>,
    /// The image's run configuration.
    pub run: RunConfig,
    /// When it was first recorded (seconds since the epoch).
    pub created: u64,
}

/// A named container: where its root comes from, and when it was made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerRecord {
    /// Its name.
    pub name: String,
    /// The id of the image it was made from (none for layer directories).
    pub image: Option<String>,
    /// The reference it was made from (`DIR:TAG`, for listings).
    pub reference: Option<String>,
    /// The store layers it uses (diff ids, bottom first).
    pub layers: Vec<String>,
    /// Layer directories given on the command line instead (topmost first).
    pub lowers: Vec<PathBuf>,
    /// When it was made (seconds since the epoch).
    pub created: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes `value` as JSON to `path` atomically (a temporary file renamed over it).
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let data = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::new(format!("encoding {}: {e}", path.display())))?;
    std::fs::write(&tmp, data)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::sys(format!("writing {}", path.display()), e, "")
        })
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let data = std::fs::read(path)
        .map_err(|e| Error::sys(format!("reading {}", path.display()), e, ""))?;
    serde_json::from_slice(&data).map_err(|e| {
        Error::new(format!(
            "{} is damaged ({e}): remove it, and run the image again to record it anew",
            path.display()
        ))
    })
}

/// A valid container name: podman's rule, `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 128 bytes.
pub fn check_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && name.len() <= 128;
    if ok {
        Ok(())
    } else {
        Err(Error::new(format!(
            "--name {name:?}: a container name starts with a letter or digit and has only \
             letters, digits, '_', '.' and '-' (at most 128)"
        )))
    }
}

impl Store {
    fn image_file(&self, id: &str) -> PathBuf {
        let name = Digest::parse(id)
            .map(|d| d.file_name())
            .unwrap_or_else(|_| id.replace(':', "-"));
        self.sub("images").join(format!("{name}.json"))
    }

    /// The directory of container `name`.
    pub fn container_dir(&self, name: &str) -> PathBuf {
        self.sub("containers").join(name)
    }

    /// Every image record.
    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        let mut out: Vec<ImageRecord> = list_json(&self.sub("images"))?;
        out.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The image record `id`, if any.
    pub fn image(&self, id: &str) -> Result<Option<ImageRecord>> {
        let f = self.image_file(id);
        if !f.exists() {
            return Ok(None);
        }
        read_json(&f).map(Some)
    }

    /// Every named container.
    pub fn containers(&self) -> Result<Vec<ContainerRecord>> {
        let mut out = Vec::new();
        let rd = std::fs::read_dir(self.sub("containers"))
            .map_err(|e| Error::sys("reading the store's containers", e, ""))?;
        for e in rd.flatten() {
            let f = e.path().join("container.json");
            if f.exists() {
                out.push(read_json(&f)?);
            }
        }
        out.sort_by(|a: &ContainerRecord, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Container `name`, if it exists.
    pub fn container(&self, name: &str) -> Result<Option<ContainerRecord>> {
        let f = self.container_dir(name).join("container.json");
        if !f.exists() {
            return Ok(None);
        }
        read_json(&f).map(Some)
    }

    /// The diff ids of the layers in the store.
    pub fn layers(&self) -> Result<Vec<Digest>> {
        let rd = std::fs::read_dir(self.sub("layers"))
            .map_err(|e| Error::sys("reading the store's layers", e, ""))?;
        let mut out: Vec<Digest> = rd
            .flatten()
            .filter_map(|e| Digest::from_file_name(&e.file_name().to_string_lossy()))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Who uses layer `diff_id`: image references and container names (leaving out the
    /// image `except`).
    pub fn users_of(&self, diff_id: &Digest, except: Option<&str>) -> Result<Vec<String>> {
        let d = diff_id.to_string();
        let mut out = Vec::new();
        for i in self.images()? {
            if i.layers.contains(&d) && except != Some(i.id.as_str()) {
                out.push(format!("image {}", i.refs.first().cloned().unwrap_or(i.id)));
            }
        }
        for c in self.containers()? {
            if c.layers.contains(&d) {
                out.push(format!("container {}", c.name));
            }
        }
        Ok(out)
    }

    /// Whether the container `name` is running: the pids of its launchers.
    pub fn running(&self, name: &str) -> Option<Vec<i32>> {
        holders(&self.container_dir(name))
    }

    /// Bytes used by the directory `p` of the store.
    pub fn usage(&self, p: &Path) -> u64 {
        disk_usage(p)
    }
}

fn list_json<T: for<'de> Deserialize<'de>>(dir: &Path) -> Result<Vec<T>> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| Error::sys(format!("reading {}", dir.display()), e, ""))?;
    let mut out = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            out.push(read_json(&p)?);
        }
    }
    Ok(out)
}

impl Locked<'_> {
    /// Records that `img` was run as `img.reference`.
    pub fn record_image(&self, img: &Image) -> Result<ImageRecord> {
        let store = self.store();
        let id = img.id.to_string();
        let mut rec = store.image(&id)?.unwrap_or_else(|| ImageRecord {
            id: id.clone(),
            refs: Vec::new(),
            layers: img.layers.iter().map(|l| l.diff_id.to_string()).collect(),
            run: img.run.clone(),
            created: now(),
        });
        if !rec.refs.contains(&img.reference) {
            // One reference names one image: a re-tagged layout moves it.
            for mut other in store.images()?.into_iter().filter(|o| o.id != id) {
                if other.refs.contains(&img.reference) {
                    other.refs.retain(|r| r != &img.reference);
                    write_json(&store.image_file(&other.id), &other)?;
                }
            }
            rec.refs.push(img.reference.clone());
        }
        write_json(&store.image_file(&id), &rec)?;
        Ok(rec)
    }

    /// Creates container `rec.name` (its record and an empty upper) unless it exists; returns
    /// its upper.
    pub fn create_container(&self, rec: &ContainerRecord) -> Result<PathBuf> {
        let dir = self.store().container_dir(&rec.name);
        let upper = dir.join("upper");
        if !dir.join("container.json").exists() {
            std::fs::create_dir_all(&upper)
                .map_err(|e| Error::sys(format!("creating {}", upper.display()), e, ""))?;
            let mut rec = rec.clone();
            rec.created = now();
            write_json(&dir.join("container.json"), &rec)?;
        }
        Ok(upper)
    }

    /// Removes container `name`, refusing a running one. Its directory leaves the store's
    /// containers/ in one rename, then `remove` removes the tree (which for a rootless
    /// container's files may take a user namespace, see `launch`).
    pub fn remove_container(
        &self,
        name: &str,
        remove: &dyn Fn(&Path) -> std::io::Result<()>,
    ) -> Result<()> {
        let store = self.store();
        if store.container(name)?.is_none() {
            return Err(Error::new(format!(
                "no container named '{name}' in the store {} (unionfs-run ps lists them)",
                store.root().display()
            )));
        }
        if let Some(pids) = store.running(name) {
            return Err(Error::new(format!(
                "container '{name}' is running ({}): wait for it to end, or end it first",
                describe_pids(&pids)
            )));
        }
        let dir = store.container_dir(name);
        let gone = store
            .sub("tmp")
            .join(format!("container-{name}.{}", std::process::id()));
        std::fs::rename(&dir, &gone).map_err(|e| {
            Error::sys(
                format!("removing container '{name}' ({})", dir.display()),
                e,
                "",
            )
        })?;
        remove(&gone).map_err(|e| {
            Error::sys(
                format!(
                    "container '{name}' is out of the store, but removing its files in {} failed",
                    gone.display()
                ),
                e,
                "remove them as root",
            )
        })
    }

    /// Finds an image by reference (`DIR:TAG`, as listed) or id (or a prefix of its hex of 4
    /// or more digits).
    pub fn find_image(&self, what: &str) -> Result<ImageRecord> {
        let images = self.store().images()?;
        let canon = canonical_reference(what);
        let by_ref: Vec<&ImageRecord> = images
            .iter()
            .filter(|i| {
                i.refs
                    .iter()
                    .any(|r| r == what || Some(r) == canon.as_ref())
            })
            .collect();
        if let [one] = by_ref.as_slice() {
            return Ok((*one).clone());
        }
        let hex = what.split_once(':').map_or(what, |(_, h)| h);
        let by_id: Vec<&ImageRecord> = images
            .iter()
            .filter(|i| {
                hex.len() >= 4
                    && i.id
                        .split_once(':')
                        .is_some_and(|(_, h)| h.starts_with(hex))
            })
            .collect();
        match by_id.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Error::new(format!(
                "no image '{what}' in the store (unionfs-run images lists them)"
            ))),
            _ => Err(Error::new(format!(
                "'{what}' names {} images: give more digits of the id",
                by_id.len()
            ))),
        }
    }

    /// Removes image `rec` and the layers no other image or container uses. Refused while a
    /// named container was made from it or a run holds one of its layers.
    pub fn remove_image(&self, rec: &ImageRecord) -> Result<Vec<Digest>> {
        let store = self.store();
        let shown = rec.refs.first().cloned().unwrap_or_else(|| rec.id.clone());
        let users: Vec<String> = store
            .containers()?
            .into_iter()
            .filter(|c| c.image.as_deref() == Some(rec.id.as_str()))
            .map(|c| c.name)
            .collect();
        if !users.is_empty() {
            return Err(Error::new(format!(
                "image {shown} is used by container {}: remove the container first \
                 (unionfs-run rm {})",
                users.join(", "),
                users.join(" ")
            )));
        }
        let mut free = Vec::new();
        for l in &rec.layers {
            let Ok(d) = Digest::parse(l) else { continue };
            if let Some(pids) = holders(&store.layer_dir(&d)) {
                return Err(Error::new(format!(
                    "image {shown} is in use by a running container ({}): remove it once that \
                     run has ended",
                    describe_pids(&pids)
                )));
            }
            if store.users_of(&d, Some(&rec.id))?.is_empty() {
                free.push(d);
            }
        }
        std::fs::remove_file(store.image_file(&rec.id))
            .map_err(|e| Error::sys(format!("removing the record of {shown}"), e, ""))?;
        for d in &free {
            self.remove_layer_dir(d)?;
        }
        Ok(free)
    }

    /// Removes layer `d`, refused while an image or container lists it or a run holds it.
    pub fn remove_layer(&self, d: &Digest) -> Result<()> {
        let store = self.store();
        if !store.layer_dir(d).exists() {
            return Err(Error::new(format!(
                "no layer {d} in the store (unionfs-run layers lists them)"
            )));
        }
        let users = store.users_of(d, None)?;
        if !users.is_empty() {
            return Err(Error::new(format!(
                "layer {d} is used by {}: remove those first (unionfs-run rmi IMAGE, \
                 unionfs-run rm NAME)",
                users.join(", ")
            )));
        }
        self.remove_layer_dir(d)
    }

    /// Removes every layer no image or container lists and no run holds; returns them.
    pub fn prune(&self) -> Result<Vec<Digest>> {
        let store = self.store();
        let mut out = Vec::new();
        for d in store.layers()? {
            if store.users_of(&d, None)?.is_empty() && holders(&store.layer_dir(&d)).is_none() {
                self.remove_layer_dir(&d)?;
                out.push(d);
            }
        }
        Ok(out)
    }

    fn remove_layer_dir(&self, d: &Digest) -> Result<()> {
        let store = self.store();
        let dir = store.layer_dir(d);
        if let Some(pids) = holders(&dir) {
            return Err(Error::new(format!(
                "layer {d} is in use by a running container ({}): remove it once that run has \
                 ended",
                describe_pids(&pids)
            )));
        }
        // Out of layers/ first, in one rename: a half-removed layer must never be mounted.
        let gone =
            store
                .sub("tmp")
                .join(format!("removing-{}.{}", d.file_name(), std::process::id()));
        std::fs::rename(&dir, &gone)
            .and_then(|()| remove_tree(&gone))
            .map_err(|e| Error::sys(format!("removing layer {}", dir.display()), e, ""))
    }
}

/// `DIR:TAG` with DIR made absolute, as references are recorded.
fn canonical_reference(what: &str) -> Option<String> {
    let (dir, tag) = super::layout::split_reference(what);
    let dir = std::fs::canonicalize(dir).ok()?;
    Some(match tag {
        Some(t) => format!("{}:{t}", dir.display()),
        None => dir.display().to_string(),
    })
}
