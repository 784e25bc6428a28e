//! Reading an OCI image layout directory (`oci-layout`, `index.json`, `blobs/ALG/HEX`), as
//! `skopeo copy … oci:DIR:TAG`, `umoci` and `podman save --format oci-dir` write it: the tag
//! is found in `index.json`, a nested image index (multi-arch) is resolved for the running
//! platform, and the manifest and config are read with their digests and sizes checked.
//! Layer blobs are only described here; [`super::store`] reads and checks them as it unpacks.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::digest::{Digest, Verify};
use crate::error::{Error, Result};

/// The annotation that carries a manifest's tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The tag used when none is given and the layout holds more than one image.
pub const DEFAULT_TAG: &str = "latest";
/// JSON blobs (index, manifest, config) larger than this are refused rather than read into
/// memory: real ones are kilobytes.
const MAX_JSON: u64 = 32 << 20;

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// What to do when a layout is damaged: every such message ends with it.
const RECOPY: &str = "copy the image into the layout again (skopeo copy, umoci, podman save \
                      --format oci-dir)";

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// tar+gzip.
    Gzip,
    /// tar+zstd.
    Zstd,
}

impl Compression {
    /// The compression of layer media type `t`, or `None` for a type that is no layer we read.
    pub fn of_media_type(t: &str) -> Option<Compression> {
        let base = t
            .strip_prefix("application/vnd.oci.image.layer.nondistributable.v1.")
            .or_else(|| t.strip_prefix("application/vnd.oci.image.layer.v1."));
        match base {
            Some("tar") => Some(Compression::None),
            Some("tar+gzip") => Some(Compression::Gzip),
            Some("tar+zstd") => Some(Compression::Zstd),
            _ => match t {
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
                | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                    Some(Compression::Gzip)
                }
                "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
                _ => None,
            },
        }
    }
}

/// A descriptor as the JSON has it.
#[derive(Debug, Clone, Deserialize)]
struct RawDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    platform: Option<Platform>,
}

impl RawDescriptor {
    fn ref_name(&self) -> Option<&str> {
        self.annotations.get(REF_NAME).map(String::as_str)
    }
}

/// The platform of a manifest in an index.
#[derive(Debug, Clone, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
    variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Deserialize)]
struct RawIndex {
    #[serde(default)]
    manifests: Vec<RawDescriptor>,
}

#[derive(Debug, Deserialize)]
struct RawManifest {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    config: RawDescriptor,
    #[serde(default)]
    layers: Vec<RawDescriptor>,
}

/// The parts of an image config that say how to run it (the config's `config` object).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    /// `KEY=VALUE` entries.
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// The program and its first arguments.
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments (or the command, without an entrypoint).
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// The working directory.
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
    /// `user[:group]`, by name or number.
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: Option<RunConfig>,
    rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// One layer of an image: the blob to read and what its content must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The blob's digest.
    pub blob: Digest,
    /// The blob's size in bytes.
    pub size: u64,
    /// How the blob is compressed.
    pub compression: Compression,
    /// The digest of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: Digest,
}

/// An image found in a layout, its manifest and config checked.
#[derive(Debug, Clone)]
pub struct Image {
    /// The layout directory (absolute).
    pub layout: PathBuf,
    /// `DIR:TAG` (or `DIR` for the one untagged image of a layout).
    pub reference: String,
    /// The manifest's digest.
    pub manifest: Digest,
    /// The config's digest: the image's id.
    pub id: Digest,
    /// How to run it.
    pub run: RunConfig,
    /// Its layers, bottom first (as the manifest lists them).
    pub layers: Vec<Layer>,
    /// Things worth saying that do not stop the run (a config for another platform).
    pub warnings: Vec<String>,
}

/// The OCI name of the platform this program runs on, as (os, architecture).
pub fn running_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "mips64" if cfg!(target_endian = "little") => "mips64le",
        "loongarch64" => "loong64",
        other => other,
    };
    (std::env::consts::OS, arch)
}

/// Splits `DIR[:TAG]`: the whole string when it names a directory, else at the last ':'.
pub fn split_reference(s: &str) -> (PathBuf, Option<String>) {
    if Path::new(s).is_dir() {
        return (PathBuf::from(s), None);
    }
    match s.rsplit_once(':') {
        Some((dir, tag)) if !dir.is_empty() && !tag.is_empty() && !tag.contains('/') => {
            (PathBuf::from(dir), Some(tag.to_string()))
        }
        _ => (PathBuf::from(s), None),
    }
}

/// Opens `DIR[:TAG]` and reads the image it names.
pub fn open(reference: &str) -> Result<Image> {
    let (dir, tag) = split_reference(reference);
    Reader::new(&dir)?.image(tag.as_deref())
}

/// Reads one layout directory.
struct Reader {
    dir: PathBuf,
}

impl Reader {
    fn new(dir: &Path) -> Result<Reader> {
        let meta = std::fs::metadata(dir).map_err(|e| {
            Error::sys(
                format!("image layout {}", dir.display()),
                e,
                "give an OCI image layout directory as --image DIR[:TAG]",
            )
        })?;
        if !meta.is_dir() {
            return Err(Error::new(format!(
                "--image {}: is a file, not an OCI image layout directory; an OCI archive \
                 (tar) must be unpacked first: mkdir DIR && tar -C DIR -xf {}",
                dir.display(),
                dir.display()
            )));
        }
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        if !dir.join("oci-layout").is_file() || !dir.join("index.json").is_file() {
            return Err(Error::new(format!(
                "{} is not an OCI image layout (it needs the files oci-layout and index.json): \
                 give a directory written by skopeo copy … oci:DIR:TAG, umoci or podman save \
                 --format oci-dir",
                dir.display()
            )));
        }
        Ok(Reader { dir })
    }

    fn shown(&self) -> String {
        self.dir.display().to_string()
    }

    fn json<T: serde::de::DeserializeOwned>(&self, data: &[u8], what: &str) -> Result<T> {
        serde_json::from_slice(data).map_err(|e| {
            Error::new(format!(
                "image layout {}: {what} is not valid: {e}; {RECOPY}",
                self.shown()
            ))
        })
    }

    /// Reads the blob of `d` (at most [`MAX_JSON`] bytes) and checks its size and digest.
    fn blob(&self, d: &RawDescriptor, what: &str) -> Result<(Digest, Vec<u8>)> {
        let digest = Digest::parse(&d.digest).map_err(|e| {
            Error::new(format!(
                "image layout {}: {what}: {e}; {RECOPY}",
                self.shown()
            ))
        })?;
        let path = blob_path(&self.dir, &digest);
        let fail = |why: String| {
            Error::new(format!(
                "image layout {}: the {what} (blob {digest}) {why}; {RECOPY}",
                self.shown()
            ))
        };
        let file = std::fs::File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                fail(format!("is missing ({} does not exist)", path.display()))
            }
            _ => fail(format!("cannot be read ({}: {e})", path.display())),
        })?;
        if d.size > MAX_JSON {
            return Err(fail(format!(
                "is declared as {} bytes, more than the {} MiB a {what} may have",
                d.size,
                MAX_JSON >> 20
            )));
        }
        let mut data = Vec::new();
        let mut v = Verify::new(file.take(d.size + 1), &digest, Some(d.size));
        v.read_to_end(&mut data).ok();
        match v.finish() {
            Ok(Ok(())) => Ok((digest, data)),
            Ok(Err(m)) => Err(fail(m.to_string())),
            Err(e) => Err(fail(format!("cannot be read ({e})"))),
        }
    }

    fn image(&self, tag: Option<&str>) -> Result<Image> {
        let index_path = self.dir.join("index.json");
        let raw = std::fs::read(&index_path)
            .map_err(|e| Error::sys(format!("reading {}", index_path.display()), e, RECOPY))?;
        let index: RawIndex = self.json(&raw, "index.json")?;
        let (desc, name) = self.by_tag(&index, tag)?;
        let desc = self.by_platform(desc, &name)?;
        let what = format!("manifest of '{name}'");
        let (manifest, data) = self.blob(&desc, &what)?;
        let m: RawManifest = self.json(&data, &what)?;
        if !m.media_type.is_empty() && !MANIFEST_TYPES.contains(&m.media_type.as_str()) {
            return Err(Error::new(format!(
                "image layout {}: {what} has media type {}, not an image manifest; {RECOPY}",
                self.shown(),
                m.media_type
            )));
        }
        let cwhat = format!("config of '{name}'");
        let (id, cdata) = self.blob(&m.config, &cwhat)?;
        let config: RawConfig = self.json(&cdata, &cwhat)?;
        if config.rootfs.diff_ids.len() != m.layers.len() {
            return Err(Error::new(format!(
                "image layout {}: '{name}' lists {} layers in its manifest but {} diff ids in \
                 its config; {RECOPY}",
                self.shown(),
                m.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        for (i, (l, diff)) in m.layers.iter().zip(&config.rootfs.diff_ids).enumerate() {
            let bad = |e: String| {
                Error::new(format!(
                    "image layout {}: layer {} of '{name}': {e}; {RECOPY}",
                    self.shown(),
                    i + 1
                ))
            };
            let compression = Compression::of_media_type(&l.media_type).ok_or_else(|| {
                bad(format!(
                    "media type {:?} is not a layer unionfs can unpack (tar, tar+gzip, \
                     tar+zstd; encrypted layers are not supported)",
                    l.media_type
                ))
            })?;
            layers.push(Layer {
                blob: Digest::parse(&l.digest).map_err(|e| bad(e.to_string()))?,
                size: l.size,
                compression,
                diff_id: Digest::parse(diff).map_err(|e| bad(e.to_string()))?,
            });
        }
        let mut warnings = Vec::new();
        let (os, arch) = running_platform();
        if !config.architecture.is_empty() && (config.os != os || config.architecture != arch) {
            warnings.push(format!(
                "image '{name}' is built for {}/{}, this machine is {os}/{arch}: its programs \
                 may not run",
                config.os, config.architecture
            ));
        }
        Ok(Image {
            layout: self.dir.clone(),
            reference: name,
            manifest,
            id,
            run: config.config.unwrap_or_default(),
            layers,
            warnings,
        })
    }

    /// The entries of `index.json` for `tag`, and the reference to show for them.
    fn by_tag(&self, index: &RawIndex, tag: Option<&str>) -> Result<(Vec<RawDescriptor>, String)> {
        let tags: Vec<&str> = index
            .manifests
            .iter()
            .filter_map(|d| d.ref_name())
            .collect();
        let list = || {
            if tags.is_empty() {
                "it has no tagged images".to_string()
            } else {
                let mut t = tags.clone();
                t.dedup();
                format!("its tags: {}", t.join(", "))
            }
        };
        let with = |t: &str| -> Vec<RawDescriptor> {
            let ds: Vec<RawDescriptor> = index
                .manifests
                .iter()
                .filter(|d| d.ref_name() == Some(t))
                .cloned()
                .collect();
            if ds.is_empty() {
                // podman save names images in full (docker.io/library/x:tag): accept the tag.
                return index
                    .manifests
                    .iter()
                    .filter(|d| {
                        d.ref_name()
                            .is_some_and(|r| r.rsplit_once(':').is_some_and(|(_, x)| x == t))
                    })
                    .cloned()
                    .collect();
            }
            ds
        };
        let shown = self.shown();
        match tag {
            Some(t) => {
                let ds = with(t);
                if ds.is_empty() {
                    return Err(Error::new(format!(
                        "image layout {shown} has no image tagged '{t}' ({}): give one of \
                         those as --image {shown}:TAG",
                        list()
                    )));
                }
                Ok((ds, format!("{shown}:{t}")))
            }
            None if index.manifests.len() == 1 => {
                let d = index.manifests[0].clone();
                let name = match d.ref_name() {
                    Some(r) => format!("{shown}:{r}"),
                    None => shown,
                };
                Ok((vec![d], name))
            }
            None => {
                let ds = with(DEFAULT_TAG);
                if ds.is_empty() {
                    return Err(Error::new(format!(
                        "image layout {shown} holds {} images and none is tagged \
                         '{DEFAULT_TAG}' ({}): say which as --image {shown}:TAG",
                        index.manifests.len(),
                        list()
                    )));
                }
                Ok((ds, format!("{shown}:{DEFAULT_TAG}")))
            }
        }
    }

    /// One image manifest out of `cands`: the one for this platform where there is a choice,
    /// through nested indexes.
    fn by_platform(&self, cands: Vec<RawDescriptor>, name: &str) -> Result<RawDescriptor> {
        let (os, arch) = running_platform();
        let here = |p: &Platform| p.os == os && p.architecture == arch;
        let mut cands = cands;
        for _depth in 0..8 {
            // A manifest that says nothing of its platform is taken when it is the only one.
            let fits = |d: &RawDescriptor| d.platform.as_ref().map_or(cands.len() == 1, here);
            let Some(chosen) = cands.iter().find(|d| fits(d)).cloned() else {
                let have: Vec<String> = cands
                    .iter()
                    .map(|d| match &d.platform {
                        Some(p) => p.to_string(),
                        None => "one with no platform".to_string(),
                    })
                    .collect();
                return Err(Error::new(format!(
                    "image '{name}' has no manifest for this machine's platform {os}/{arch} \
                     (it has {}): copy the image for this platform (skopeo copy \
                     --override-arch {arch} …) or run it on a matching machine",
                    have.join(", ")
                )));
            };
            if !INDEX_TYPES.contains(&chosen.media_type.as_str()) {
                return Ok(chosen);
            }
            let (_, data) = self.blob(&chosen, &format!("image index of '{name}'"))?;
            let nested: RawIndex = self.json(&data, &format!("image index of '{name}'"))?;
            if nested.manifests.is_empty() {
                return Err(Error::new(format!(
                    "image layout {}: the image index of '{name}' lists no manifests; {RECOPY}",
                    self.shown()
                )));
            }
            cands = nested.manifests;
        }
        Err(Error::new(format!(
            "image layout {}: '{name}' nests image indexes more than 8 deep; {RECOPY}",
            self.shown()
        )))
    }
}

/// The file of blob `d` in layout `dir`.
pub fn blob_path(dir: &Path, d: &Digest) -> PathBuf {
    dir.join("blobs").join(d.algorithm().name()).join(d.hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_and_references() {
        assert_eq!(
            Compression::of_media_type("application/vnd.oci.image.layer.v1.tar+zstd"),
            Some(Compression::Zstd)
        );
        assert_eq!(
            Compression::of_media_type(
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            ),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::of_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::of_media_type("application/vnd.oci.image.layer.v1.tar+gzip+encrypted"),
            None
        );
        assert_eq!(
            split_reference("/no/such/dir:v1"),
            (PathBuf::from("/no/such/dir"), Some("v1".into()))
        );
        assert_eq!(
            split_reference("/no/such"),
            (PathBuf::from("/no/such"), None)
        );
        let tmp = std::env::temp_dir();
        assert_eq!(split_reference(&tmp.to_string_lossy()), (tmp, None));
    }
}
