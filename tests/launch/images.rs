//! `--image DIR[:TAG]`: OCI image layouts built with umoci from the example busybox layers,
//! run for real. The image's config applies and the command line overrides it as in podman;
//! each layer is unpacked once into the store (which no run ever changes); a damaged layout
//! stops the run with a message naming the blob or tag and leaves nothing in the store; gzip,
//! zstd and plain layers, sha512 digests and multi-arch indexes work.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256, Sha512};
use unionfs_harness::view::{capture, changes, ReadAs};

use crate::common::oci_image::{cached, require_umoci};
use crate::common::*;

/// A layout with two images sharing their first layer (the example `base`):
/// - `base`: Env GREETING=hello and a PATH of its own, Entrypoint `/bin/echo ep:`, Cmd
///   `from-cmd`, WorkingDir `/srv/work` (which no layer has);
/// - `app`: base plus a layer with `app` and a user `app` (1000:1000, home /home/app, member
///   of `staff` 2000); Cmd `/app/hello.sh`, no Entrypoint, WorkingDir `/app`, User `app`,
///   Env adds MODE=image.
pub fn layout() -> PathBuf {
    cached(
        "launch-image-layout",
        r#"
        umoci init --layout oci
        umoci new --image oci:base
        add_layer oci:base "$LAYERS/base"
        umoci config --image oci:base --config.env GREETING=hello \
            --config.env PATH=/usr/bin:/bin:/custom --config.entrypoint /bin/echo \
            --config.entrypoint ep: --config.cmd from-cmd --config.workingdir /srv/work
        mkdir -p extra/etc extra/home/app
        cp "$LAYERS/base/etc/passwd" "$LAYERS/base/etc/group" extra/etc/
        echo 'app:x:1000:1000:app:/home/app:/bin/sh' >> extra/etc/passwd
        printf 'app:x:1000:\nstaff:x:2000:app\n' >> extra/etc/group
        chown -R 1000:1000 extra/home/app
        umoci config --image oci:base --tag app --clear config.entrypoint \
            --clear config.cmd --config.cmd /app/hello.sh --config.workingdir /app \
            --config.env MODE=image
        add_layer oci:app "$LAYERS/app" extra
        # Only now: umoci itself resolves the user when it unpacks.
        umoci config --image oci:app --config.user app
        umoci gc --layout oci
        mv oci "$OUT"
        "#,
    )
}

/// Root, FUSE and umoci: what running an image needs here.
pub fn require_images() -> bool {
    require_root() && require_union() && require_umoci()
}

/// A private copy of [`layout`] (for tests that damage or extend it).
pub fn copy_layout(t: &TempDir) -> PathBuf {
    let dst = t.join("oci");
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(layout())
        .arg(&dst)
        .status()
        .unwrap();
    assert!(st.success());
    dst
}

/// A layer store of a test's own.
pub struct TestStore(pub TempDir);

impl TestStore {
    /// A new, empty store directory.
    pub fn new(tag: &str) -> TestStore {
        TestStore(TempDir::new(&format!("store-{tag}")))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0 .0
    }

    /// `unionfs-run --store STORE ARGS...`.
    pub fn run(&self, a: &[&str]) -> Outcome {
        self.spawn(a).finish(std::time::Duration::from_secs(30))
    }

    /// [`TestStore::run`], started and left running.
    pub fn spawn(&self, a: &[&str]) -> Running {
        let mut v = args(&["--store", &self.path().to_string_lossy()]);
        v.extend(args(a));
        spawn(&v)
    }

    /// The names in `layers/` (sha256-HEX, the diff ids).
    pub fn layers(&self) -> Vec<String> {
        names(&self.path().join("layers"))
    }

    /// Asserts that the store holds no layer, no image and no staging leftovers.
    #[track_caller]
    pub fn assert_empty(&self, what: &str) {
        for d in ["layers", "images", "tmp"] {
            let n = names(&self.path().join(d));
            assert!(n.is_empty(), "{what}: the store's {d}/ holds {n:?}");
        }
    }
}

/// Sorted names in a directory (none when it does not exist).
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `DIR:TAG`.
pub fn image(dir: &Path, tag: &str) -> String {
    format!("{}:{tag}", dir.display())
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn blob(dir: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').unwrap();
    dir.join("blobs").join(alg).join(hex)
}

/// The manifest (JSON) of `tag` in layout `dir`.
fn manifest(dir: &Path, tag: &str) -> Value {
    let idx = read_json(&dir.join("index.json"));
    let m = idx["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap()
        .clone();
    read_json(&blob(dir, m["digest"].as_str().unwrap()))
}

/// Writes `data` as a blob of layout `dir`; returns its sha256 digest.
fn put_blob(dir: &Path, data: &[u8]) -> String {
    let hex = format!("{:x}", Sha256::digest(data));
    std::fs::write(dir.join("blobs/sha256").join(&hex), data).unwrap();
    format!("sha256:{hex}")
}

/// Adds a manifest descriptor `desc` to index.json under `tag`.
fn tag(dir: &Path, mut desc: Value, tag: &str) {
    desc["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
    let p = dir.join("index.json");
    let mut idx = read_json(&p);
    idx["manifests"].as_array_mut().unwrap().push(desc);
    std::fs::write(&p, serde_json::to_vec(&idx).unwrap()).unwrap();
}

fn manifest_desc(dir: &Path, m: &Value) -> Value {
    let data = serde_json::to_vec(m).unwrap();
    json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": put_blob(dir, &data),
        "size": data.len(),
    })
}

#[test]
fn the_image_config_applies_and_the_command_line_overrides_it() {
    if !require_images() {
        return;
    }
    let l = layout();
    let s = TestStore::new("config");
    let base = image(&l, "base");
    let app = image(&l, "app");
    // Entrypoint + Cmd, then arguments replacing Cmd.
    let o = s.run(&["--image", &base]);
    assert_eq!((o.code, o.stdout.as_str()), (0, "ep: from-cmd\n"), "{o:?}");
    let o = s.run(&["--image", &base, "--", "a", "b"]);
    assert_eq!((o.code, o.stdout.as_str()), (0, "ep: a b\n"), "{o:?}");
    // --entrypoint replaces Entrypoint and drops Cmd; Env, WorkingDir (created) and root.
    let script = "echo \"$GREETING|$PATH|$HOME\"; pwd; id -u; id -g";
    let o = s.run(&[
        "--image",
        &base,
        "--entrypoint",
        "/bin/sh",
        "--",
        "-c",
        script,
    ]);
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (0, "hello|/usr/bin:/bin:/custom|/root\n/srv/work\n0\n0\n"),
        "{o:?}"
    );
    let o = s.run(&["--image", &base, "--entrypoint", "/bin/pwd"]);
    assert_eq!((o.code, o.stdout.as_str()), (0, "/srv/work\n"), "{o:?}");
    // The image's User by name (primary group, membership, home), its WorkingDir and Cmd.
    let o = s.run(&["--image", &app]);
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (0, "hello from the app layer on container\n"),
        "{o:?}"
    );
    let script = "id -u; id -g; id -G; echo \"$HOME|$MODE|$GREETING\"; pwd";
    let o = s.run(&["--image", &app, "--", "/bin/sh", "-c", script]);
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (0, "1000\n1000\n1000 2000\n/home/app|image|hello\n/app\n"),
        "{o:?}"
    );
    // Every override at once: -e, -w, --user by name:group and by number.
    let o = s.run(&[
        "--image",
        &app,
        "-e",
        "GREETING=cli",
        "-e",
        "NEW=1",
        "-w",
        "/tmp",
        "--user",
        "app:staff",
        "--",
        "/bin/sh",
        "-c",
        script,
    ]);
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (0, "1000\n2000\n2000\n/home/app|image|cli\n/tmp\n"),
        "{o:?}"
    );
    let o = s.run(&[
        "--image", &app, "--user", "65534", "--", "/bin/sh", "-c", script,
    ]);
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (0, "65534\n65534\n65534\n/|image|hello\n/app\n"),
        "{o:?}"
    );
    // --entrypoint "" removes the Entrypoint: the arguments are the command.
    let o = s.run(&[
        "--image",
        &base,
        "--entrypoint",
        "",
        "--",
        "/bin/echo",
        "plain",
    ]);
    assert_eq!((o.code, o.stdout.as_str()), (0, "plain\n"), "{o:?}");
    // An unknown user, a --workdir the image lacks: refused, saying why.
    let o = s.run(&["--image", &app, "--user", "nosuch", "--", "/bin/true"]);
    assert_eq!(o.code, 125, "{o:?}");
    assert!(
        o.stderr
            .contains("user 'nosuch' is not in the container's /etc/passwd"),
        "{o:?}"
    );
    let o = s.run(&["--image", &app, "-w", "/nonexistent", "--", "/bin/true"]);
    assert_eq!(o.code, 125, "{o:?}");
    assert!(o.stderr.contains("working directory /nonexistent"), "{o:?}");
}

#[test]
fn changes_land_in_the_upper_and_the_store_never_changes() {
    if !require_images() {
        return;
    }
    let l = layout();
    let s = TestStore::new("upper");
    let upper = TempDir::new("image-upper");
    let app = image(&l, "app");
    let o = s.run(&["--image", &app, "--", "/bin/true"]);
    assert_eq!(o.code, 0, "{o:?}");
    let before: Vec<_> = s
        .layers()
        .iter()
        .map(|n| capture(&s.path().join("layers").join(n), ReadAs::Raw).unwrap())
        .collect();
    assert_eq!(before.len(), 2);
    // As root in the container: write, delete, chmod files of both layers; WorkingDir of the
    // base image is created in the upper.
    let o = s.run(&[
        "--image",
        &image(&l, "base"),
        &upper.0.to_string_lossy(),
        "--entrypoint",
        "/bin/sh",
        "--",
        "-c",
        "echo new > here; rm /etc/motd; chmod 700 /bin/busybox; echo x >> /etc/passwd; pwd",
    ]);
    assert_eq!((o.code, o.stdout.as_str()), (0, "/srv/work\n"), "{o:?}");
    assert_eq!(
        std::fs::read_to_string(upper.join("srv/work/here")).unwrap(),
        "new\n"
    );
    assert!(
        upper.join("etc/.wh.motd").exists(),
        "no whiteout for /etc/motd"
    );
    assert!(std::fs::read_to_string(upper.join("etc/passwd"))
        .unwrap()
        .ends_with("x\n"));
    let m = std::fs::metadata(upper.join("bin/busybox")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o700);
    // And the app image, as its user, in a throwaway upper.
    let o = s.run(&[
        "--image",
        &app,
        "--",
        "/bin/sh",
        "-c",
        "echo hi > /home/app/f",
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    for (n, b) in s.layers().iter().zip(&before) {
        let now = capture(&s.path().join("layers").join(n), ReadAs::Raw).unwrap();
        let diff = changes(&format!("layer {n}"), b, &now);
        assert!(
            diff.is_empty(),
            "a run changed the store:\n{}",
            diff.join("\n")
        );
    }
    assert_eq!(names(&s.path().join("tmp")), Vec::<String>::new());
}

#[test]
fn a_damaged_layout_is_refused_naming_the_blob_and_nothing_is_stored() {
    if !require_images() {
        return;
    }
    let m = manifest(&layout(), "app");
    let top = m["layers"][1]["digest"].as_str().unwrap().to_string();
    let base = m["layers"][0]["digest"].as_str().unwrap().to_string();
    // What is damaged, how (returning the --image argument), what the message must say.
    type Damage<'a> = &'a dyn Fn(&Path) -> String;
    let cases: [(&str, Damage, &[&str]); 7] = [
        (
            "a flipped byte",
            &|d| {
                let p = blob(d, &top);
                let mut b = std::fs::read(&p).unwrap();
                let i = b.len() / 2;
                b[i] ^= 0x20;
                std::fs::write(&p, b).unwrap();
                image(d, "app")
            },
            &["does not match its digest", &top],
        ),
        (
            "a truncated blob",
            &|d| {
                let p = blob(d, &top);
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..b.len() - 100]).unwrap();
                image(d, "app")
            },
            &["is truncated", &top],
        ),
        (
            "a missing layer blob",
            &|d| {
                std::fs::remove_file(blob(d, &base)).unwrap();
                image(d, "app")
            },
            &["is missing", &base],
        ),
        (
            "a missing manifest",
            &|d| {
                let idx = read_json(&d.join("index.json"));
                for m in idx["manifests"].as_array().unwrap() {
                    std::fs::remove_file(blob(d, m["digest"].as_str().unwrap())).unwrap();
                }
                image(d, "app")
            },
            &["the manifest of", "is missing"],
        ),
        (
            "a wrong tag",
            &|d| image(d, "nosuch"),
            &["no image tagged 'nosuch'", "its tags: base, app"],
        ),
        (
            "no tag among two images",
            &|d| d.display().to_string(),
            &["holds 2 images and none is tagged 'latest'"],
        ),
        (
            "not a layout",
            &|d| {
                std::fs::remove_file(d.join("oci-layout")).unwrap();
                image(d, "app")
            },
            &["is not an OCI image layout"],
        ),
    ];
    for (what, damage, says) in cases {
        let t = TempDir::new("damaged-case");
        let dir = copy_layout(&t);
        let s = TestStore::new("damaged");
        let img = damage(&dir);
        let o = s.run(&["--image", &img, "--", "/bin/true"]);
        assert_eq!(o.code, 125, "{what}: {o:?}");
        for w in says {
            assert!(o.stderr.contains(w), "{what}: no {w:?} in {}", o.stderr);
        }
        s.assert_empty(what);
    }
}

#[test]
fn each_layer_is_unpacked_once_and_shared_also_by_concurrent_runs() {
    if !require_images() {
        return;
    }
    let l = layout();
    let s = TestStore::new("shared");
    let base = image(&l, "base");
    let app = image(&l, "app");
    // Three launches of the app image at once on an empty store: one unpack per layer.
    let runs: Vec<Running> = (0..3)
        .map(|_| s.spawn(&["--image", &app, "--", "/bin/cat", "/app/hello.sh"]))
        .collect();
    for r in runs {
        let o = r.finish(std::time::Duration::from_secs(60));
        assert_eq!(o.code, 0, "{o:?}");
        assert!(o.stdout.contains("hello from the app layer"), "{o:?}");
    }
    let layers = s.layers();
    assert_eq!(layers.len(), 2, "{layers:?}");
    assert_eq!(names(&s.path().join("tmp")), Vec::<String>::new());
    // The base image needs no unpack: its one layer is app's first, the same directory.
    let bl = format!(
        "sha256-{}",
        read_json(&blob(
            &l,
            manifest(&l, "base")["config"]["digest"].as_str().unwrap()
        ))["rootfs"]["diff_ids"][0]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
    );
    assert!(layers.contains(&bl), "{layers:?} lacks {bl}");
    let before = std::fs::metadata(s.path().join("layers").join(&bl)).unwrap();
    let o = s.run(&["--image", &base]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(s.layers(), layers);
    let after = std::fs::metadata(s.path().join("layers").join(&bl)).unwrap();
    assert_eq!(
        (before.ino(), before.ctime(), before.ctime_nsec()),
        (after.ino(), after.ctime(), after.ctime_nsec())
    );
    let o = s.run(&["images"]);
    assert!(o.stdout.contains(&base) && o.stdout.contains(&app), "{o:?}");
}

#[test]
fn zstd_plain_and_sha512_layers_and_a_multi_arch_index() {
    if !require_images() {
        return;
    }
    let t = TempDir::new("formats");
    let d = copy_layout(&t);
    let m = manifest(&d, "app");
    // The same two layers as zstd and as a plain tar (top one with a sha512 digest).
    let mut mz = m.clone();
    let mut mp = m.clone();
    for i in 0..2 {
        let gz = std::fs::read(blob(&d, m["layers"][i]["digest"].as_str().unwrap())).unwrap();
        let mut tar = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut tar).unwrap();
        let z = zstd::encode_all(&tar[..], 3).unwrap();
        mz["layers"][i] = json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
            "digest": put_blob(&d, &z), "size": z.len() });
        let digest = if i == 1 {
            let hex = format!("{:x}", Sha512::digest(&tar));
            std::fs::create_dir_all(d.join("blobs/sha512")).unwrap();
            std::fs::write(d.join("blobs/sha512").join(&hex), &tar).unwrap();
            format!("sha512:{hex}")
        } else {
            put_blob(&d, &tar)
        };
        mp["layers"][i] = json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest, "size": tar.len() });
    }
    tag(&d, manifest_desc(&d, &mz), "zstd");
    tag(&d, manifest_desc(&d, &mp), "plain");
    // An index for two platforms: ours points at the zstd image, the other at nothing valid.
    let (_, arch) = unionfs::image::layout::running_platform();
    let other = if arch == "arm64" { "s390x" } else { "arm64" };
    let bogus = json!({ "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{}", "0".repeat(64)), "size": 1,
        "platform": { "os": "linux", "architecture": other } });
    let mut ours = manifest_desc(&d, &mz);
    ours["platform"] = json!({ "os": "linux", "architecture": arch });
    let index = |ms: Vec<Value>| {
        let data = serde_json::to_vec(&json!({ "schemaVersion": 2, "manifests": ms })).unwrap();
        json!({ "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": put_blob(&d, &data), "size": data.len() })
    };
    tag(&d, index(vec![bogus.clone(), ours]), "multi");
    tag(&d, index(vec![bogus]), "elsewhere");
    let s = TestStore::new("formats");
    for t in ["zstd", "plain", "multi"] {
        let o = s.run(&[
            "--image",
            &image(&d, t),
            "--",
            "/bin/sh",
            "-c",
            "id -u; cat /app/hello.sh",
        ]);
        assert_eq!(o.code, 0, "{t}: {o:?}");
        assert!(o.stdout.starts_with("1000\n#!/bin/sh"), "{t}: {o:?}");
    }
    // Named by diff id: gzip, zstd and plain copies of a layer are one directory.
    let o = s.run(&["--image", &image(&d, "app"), "--", "/bin/true"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(s.layers().len(), 2, "{:?}", s.layers());
    let o = s.run(&["--image", &image(&d, "elsewhere"), "--", "/bin/true"]);
    assert_eq!(o.code, 125, "{o:?}");
    assert!(
        o.stderr.contains(&format!(
            "no manifest for this machine's platform linux/{arch}"
        )) && o.stderr.contains(&format!("linux/{other}")),
        "{o:?}"
    );
    // A zstd layer with a wrong byte: refused like a gzip one, nothing new stored.
    let s2 = TestStore::new("zstd-bad");
    let zl = mz["layers"][1]["digest"].as_str().unwrap();
    let p = blob(&d, zl);
    let mut b = std::fs::read(&p).unwrap();
    let n = b.len();
    b[n / 2] ^= 1;
    std::fs::write(&p, b).unwrap();
    let o = s2.run(&["--image", &image(&d, "zstd"), "--", "/bin/true"]);
    assert_eq!(o.code, 125, "{o:?}");
    assert!(
        o.stderr.contains(zl) && o.stderr.contains("does not match its digest"),
        "{o:?}"
    );
    // The first layer was sound, but an image's layers are stored all or none.
    s2.assert_empty("a zstd layer with a wrong byte");
}
