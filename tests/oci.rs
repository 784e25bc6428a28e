//! OCI layer export/import: a round trip through real mounts gives the same view, a hostile
//! tarball is refused without touching anything outside the target directory, `diff` lists an
//! upper's changes, and a layer made by a real OCI tool (umoci) imports to the view it shows.

mod common;

use common::can_mount as fuse_available;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!("unionfs-oci-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
    fn dir(&self, n: &str) -> PathBuf {
        let p = self.0.join(n);
        fs::create_dir_all(&p).unwrap();
        p
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Everything a user sees of a tree: type, mode, owner, size, content, link target, xattrs,
/// and which names share an inode.
fn view(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inos: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = fs::symlink_metadata(&p).unwrap();
            let mut desc = format!("{:o} {}:{}", m.mode(), m.uid(), m.gid());
            if m.is_file() {
                desc += &format!(" {:?}", fs::read(&p).unwrap());
                if m.nlink() > 1 {
                    let first = inos.entry(m.ino()).or_insert_with(|| rel.clone()).clone();
                    desc += &format!(
                        " link-group:{}",
                        if first == rel { "self" } else { "other" }
                    );
                }
            }
            if m.file_type().is_symlink() {
                desc += &format!(" -> {}", fs::read_link(&p).unwrap().display());
            }
            if let Ok(v) = xattr_get(&p, "user.k") {
                desc += &format!(" user.k={v}");
            }
            out.insert(rel, desc);
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

fn xattr_get(p: &Path, name: &str) -> Result<String, ()> {
    let o = Command::new("getfattr")
        .args(["--only-values", "-h", "-n", name])
        .arg(p)
        .output()
        .map_err(|_| ())?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(())
    }
}

fn layer_tool(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_unionfs-layer"))
        .args(args)
        .output()
        .unwrap()
}

fn sh(cmd: &str) {
    let st = Command::new("sh").args(["-c", cmd]).status().unwrap();
    assert!(st.success(), "{cmd}");
}

#[test]
fn export_import_round_trip_gives_the_same_view() {
    if !fuse_available() {
        return;
    }
    let t = Tmp::new("rt");
    let l = t.dir("l");
    sh(&format!(
        "cd {l} && mkdir -p etc d/sub && echo a > etc/a && echo p > etc/passwd && echo x > d/sub/x \
         && echo h > h1 && ln h1 h2 && ln -s etc/a sym && mkfifo fifo && chmod 0751 d",
        l = l.display()
    ));
    let (u, m) = (t.dir("u"), t.dir("m"));
    for comp in ["", "gzip", "zstd"] {
        let _ = fs::remove_dir_all(&u);
        fs::create_dir_all(&u).unwrap();
        let before;
        {
            let g = unionfs::mount::MountConfig::new(vec![l.clone()], Some(u.clone()))
                .mount(&m)
                .unwrap();
            sh(&format!(
                "cd {m} && echo more >> etc/a && rm etc/passwd && mv d d2 && mkdir new \
                 && echo n > new/n && ln new/n new/n2 && chmod 4755 new/n && setfattr -n user.k -v v new/n \
                 && rm -r d2/sub && mkdir d2/sub && echo y > d2/sub/y && mknod new/null c 1 3",
                m = m.display()
            ));
            before = view(&m);
            drop(g);
        }
        let tarball = t.0.join(format!("layer.tar.{comp}"));
        let flag = format!("--{comp}");
        let mut args = vec![
            "export",
            u.to_str().unwrap(),
            "-o",
            tarball.to_str().unwrap(),
        ];
        if !comp.is_empty() {
            args.push(&flag);
        }
        let o = layer_tool(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        if comp.is_empty() {
            let listing = Command::new("tar")
                .arg("tf")
                .arg(&tarball)
                .output()
                .unwrap();
            let names = String::from_utf8_lossy(&listing.stdout);
            assert!(
                !names.contains(".wh..wh.unionfs"),
                "internal entries:\n{names}"
            );
            assert!(names.contains("etc/.wh.passwd"), "{names}");
        }
        let imported = t.0.join(format!("imported-{comp}"));
        let o = layer_tool(&[
            "import",
            tarball.to_str().unwrap(),
            imported.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let u2 = t.dir(&format!("u2-{comp}"));
        let g = unionfs::mount::MountConfig::new(vec![imported.clone(), l.clone()], Some(u2))
            .mount(&m)
            .unwrap();
        let after = view(&m);
        drop(g);
        assert_eq!(before, after, "view differs after export/import ({comp:?})");
    }
    // The lower was never touched.
    assert_eq!(fs::read_to_string(l.join("etc/a")).unwrap(), "a\n");
}

/// A tarball entry: path, kind, link target.
type Entry<'a> = (&'a str, tar::EntryType, &'a str);

/// Builds a tarball with the given entries.
fn tarball(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, target) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(if *kind == tar::EntryType::Regular {
            4
        } else {
            0
        });
        // Write raw names: the builder would refuse '..' and absolute paths itself.
        let name = h.as_old_mut().name.as_mut();
        name[..path.len()].copy_from_slice(path.as_bytes());
        if !target.is_empty() {
            h.set_link_name_literal(target.as_bytes()).unwrap();
        }
        h.set_cksum();
        let data: &[u8] = if *kind == tar::EntryType::Regular {
            b"evil"
        } else {
            b""
        };
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn hostile_tarballs_are_refused_and_touch_nothing_outside() {
    let t = Tmp::new("hostile");
    let victim = t.dir("victim");
    fs::write(victim.join("file"), "precious").unwrap();
    use tar::EntryType::{Link, Regular, Symlink};
    let cases: Vec<(&str, Vec<Entry<'_>>)> = vec![
        ("dotdot", vec![("../evil", Regular, "")]),
        ("nested dotdot", vec![("a/../../evil", Regular, "")]),
        ("absolute", vec![("/tmp/unionfs-oci-evil", Regular, "")]),
        (
            "symlink parent",
            vec![("lnk", Symlink, ".."), ("lnk/evil", Regular, "")],
        ),
        (
            "symlink to victim",
            vec![("v", Symlink, "../victim"), ("v/file", Regular, "")],
        ),
        ("hardlink out", vec![("h", Link, "../victim/file")]),
        ("hardlink absolute", vec![("h", Link, "/etc/passwd")]),
        (
            "hardlink through symlink",
            vec![("v", Symlink, "../victim"), ("h", Link, "v/file")],
        ),
    ];
    for (what, entries) in cases {
        let dir = t.0.join(format!("out-{}", what.replace(' ', "-")));
        let before: Vec<_> = fs::read_dir(&t.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let r = unionfs::oci::import(&tarball(&entries)[..], &dir, &Default::default());
        let e = r.expect_err(what).to_string();
        assert!(e.contains("refused") && e.contains("entry"), "{what}: {e}");
        assert_eq!(
            fs::read_to_string(victim.join("file")).unwrap(),
            "precious",
            "{what}"
        );
        assert_eq!(fs::read_dir(&victim).unwrap().count(), 1, "{what}");
        assert!(!t.0.join("evil").exists() && !Path::new("/tmp/unionfs-oci-evil").exists());
        let mut after: Vec<_> = fs::read_dir(&t.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        after.retain(|n| n != dir.file_name().unwrap());
        assert_eq!(
            before.len(),
            after.len(),
            "{what}: something appeared beside the target"
        );
        assert_eq!(
            fs::metadata(victim.join("file")).unwrap().nlink(),
            1,
            "{what}"
        );
    }
}

#[test]
fn diff_lists_added_modified_deleted_and_replaced() {
    let t = Tmp::new("diff");
    let l = t.dir("l");
    let u = t.dir("u");
    sh(&format!(
        "mkdir -p {l}/etc {l}/d && echo a > {l}/etc/a && echo b > {l}/etc/b && echo c > {l}/d/c \
         && mkdir -p {u}/etc {u}/d {u}/.wh..wh.unionfs && echo A > {u}/etc/a && touch {u}/etc/.wh.b \
         && echo n > {u}/etc/n && touch {u}/d/.wh..wh..opq && touch {u}/.wh..wh.unionfs/x",
        l = l.display(),
        u = u.display()
    ));
    let o = layer_tool(&["diff", u.to_str().unwrap(), "--lowers", l.to_str().unwrap()]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "R d/ (lower contents hidden)",
            "D etc/b",
            "M etc/a",
            "A etc/n"
        ],
        "{out}"
    );
    for want in ["R d/", "D etc/b", "M etc/a", "A etc/n"] {
        assert!(out.contains(want), "missing {want}:\n{out}");
    }
    assert!(!out.contains("unionfs"), "internal entries listed:\n{out}");
}

#[test]
fn a_layer_made_by_umoci_imports_to_the_view_it_shows() {
    if !fuse_available() {
        return;
    }
    let umoci = Path::new("/usr/bin/umoci");
    if !umoci.exists() {
        if std::env::var("UNIONFS_REQUIRE_FUSE").as_deref() == Ok("1") {
            panic!("umoci is not installed (Debian package umoci; .ci/run installs it)");
        }
        eprintln!("skipping: umoci is not installed");
        return;
    }
    let t = Tmp::new("umoci");
    let img = t.0.join("img");
    let bundle = t.0.join("bundle");
    sh(&format!(
        "cd {d} && umoci init --layout img && umoci new --image img:t \
         && umoci unpack --image img:t bundle \
         && mkdir -p bundle/rootfs/etc bundle/rootfs/usr/bin && echo hello > bundle/rootfs/etc/motd \
         && echo '#!/bin/sh' > bundle/rootfs/usr/bin/tool && chmod 0755 bundle/rootfs/usr/bin/tool \
         && ln -s usr/bin bundle/rootfs/bin && umoci repack --image img:t bundle",
        d = t.0.display()
    ));
    let _ = img;
    // The newest layer of the image's manifest: index -> manifest -> layers[last].
    let index = fs::read_to_string(t.0.join("img/index.json")).unwrap();
    let manifest_digest = digest_after(&index, "\"digest\"");
    let manifest = fs::read_to_string(blob(&t.0.join("img"), &manifest_digest)).unwrap();
    let layers = &manifest[manifest.find("\"layers\"").unwrap()..];
    let layer_digest = digest_after(layers, "\"digest\"");
    let layer = blob(&t.0.join("img"), &layer_digest);
    let dir = t.0.join("lower");
    let o = layer_tool(&["import", layer.to_str().unwrap(), dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = t.dir("m");
    let g = unionfs::mount::MountConfig::new(vec![dir], None)
        .mount(&m)
        .unwrap();
    let rootfs = bundle.join("rootfs");
    assert_eq!(fs::read_to_string(m.join("etc/motd")).unwrap(), "hello\n");
    assert_eq!(
        fs::metadata(m.join("usr/bin/tool"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );
    assert_eq!(
        fs::read_link(m.join("bin")).unwrap(),
        PathBuf::from("usr/bin")
    );
    let mine = view(&m);
    let theirs = view(&rootfs);
    drop(g);
    for (k, v) in &theirs {
        assert_eq!(mine.get(k), Some(v), "{k} differs from umoci's rootfs");
    }
}

fn digest_after(json: &str, key: &str) -> String {
    let at = json.find(key).expect("digest in OCI json") + key.len();
    let rest = &json[at..];
    let start = rest.find("sha256:").unwrap();
    rest[start..start + 7 + 64].to_string()
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

#[test]
fn deletes_of_names_too_long_for_wh_files_export_as_wh_entries_and_import_back() {
    if !fuse_available() {
        return;
    }
    let t = Tmp::new("longwh");
    let l = t.dir("l");
    let (a, b) = ("a".repeat(255), "b".repeat(252));
    fs::write(l.join(&a), "a").unwrap();
    fs::create_dir_all(l.join("d")).unwrap();
    fs::write(l.join("d").join(&b), "b").unwrap();
    fs::write(l.join("keep"), "k").unwrap();
    let (u, m) = (t.dir("u"), t.dir("m"));
    {
        let g = unionfs::mount::MountConfig::new(vec![l.clone()], Some(u.clone()))
            .mount(&m)
            .unwrap();
        fs::remove_file(m.join(&a)).unwrap();
        fs::remove_file(m.join("d").join(&b)).unwrap();
        drop(g);
    }
    // On disk: the kernel's form, since `.wh.` + 252 bytes does not fit NAME_MAX.
    for p in [u.join(&a), u.join("d").join(&b)] {
        let md = fs::symlink_metadata(&p).unwrap();
        assert!(
            std::os::unix::fs::FileTypeExt::is_char_device(&md.file_type()) && md.rdev() == 0,
            "{p:?} is not a 0/0 char device"
        );
    }
    let o = layer_tool(&["diff", u.to_str().unwrap(), "--lowers", l.to_str().unwrap()]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.lines().any(|x| x == format!("D {a}")), "{out}");
    assert!(out.lines().any(|x| x == format!("D d/{b}")), "{out}");
    let tarball = t.0.join("layer.tar");
    let o = layer_tool(&[
        "export",
        u.to_str().unwrap(),
        "-o",
        tarball.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // GNU tar reads the long `.wh.` names as plain empty files, as OCI tools expect.
    let listing = Command::new("tar")
        .arg("tvf")
        .arg(&tarball)
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.status.success());
    for want in [format!(" .wh.{a}"), format!(" d/.wh.{b}")] {
        let line = names.lines().find(|x| x.ends_with(&want));
        let line = line.unwrap_or_else(|| panic!("no {want} in\n{names}"));
        assert!(line.starts_with('-'), "not a regular file entry: {line}");
    }
    assert!(
        !names.contains(" c"),
        "a device entry in the layer:\n{names}"
    );
    let imported = t.0.join("imported");
    let o = layer_tool(&[
        "import",
        tarball.to_str().unwrap(),
        imported.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let u2 = t.dir("u2");
    let g = unionfs::mount::MountConfig::new(vec![imported, l.clone()], Some(u2))
        .mount(&m)
        .unwrap();
    assert!(fs::symlink_metadata(m.join(&a)).is_err());
    assert!(fs::symlink_metadata(m.join("d").join(&b)).is_err());
    assert_eq!(fs::read_to_string(m.join("keep")).unwrap(), "k");
    assert_eq!(fs::read_dir(m.join("d")).unwrap().count(), 0);
    drop(g);
    assert_eq!(fs::read_to_string(l.join(&a)).unwrap(), "a");
}

#[test]
fn every_layer_subcommand_refuses_a_missing_layer_and_names_it() {
    let t = Tmp::new("badlayer");
    let (l, u) = (t.dir("l"), t.dir("u"));
    fs::write(u.join("f"), "x").unwrap();
    let plain = t.0.join("plain-file");
    fs::write(&plain, "not a directory").unwrap();
    let missing = t.0.join("no-such-layer");
    // An existing file at the output path: a refused export must leave it as it was.
    let out = t.0.join("out.tar");
    fs::write(&out, "keep").unwrap();
    let (ls, us, os) = (
        l.to_str().unwrap(),
        u.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    for bad in [&missing, &plain] {
        let name = bad.file_name().unwrap().to_str().unwrap();
        let bs = bad.to_str().unwrap();
        let lowers = format!("{ls}:{bs}");
        let calls: [&[&str]; 6] = [
            &["diff", us, "--lowers", &lowers],
            &["export", us, "--lowers", &lowers, "-o", os],
            &["fill", us, "--lowers", &lowers],
            &["diff", bs, "--lowers", ls],
            &["export", bs, "-o", os],
            &["fill", bs, "--lowers", ls],
        ];
        for args in calls {
            let o = layer_tool(args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success(), "{args:?} succeeded: {err}");
            assert!(
                err.contains(name) && err.contains("give"),
                "{args:?}: {err}"
            );
            assert!(o.stdout.is_empty(), "{args:?} printed a result");
        }
    }
    for empty in ["", ":"] {
        for args in [
            &["diff", us, "--lowers", empty][..],
            &["export", us, "--lowers", empty, "-o", os],
            &["fill", us, "--lowers", empty],
        ] {
            let o = layer_tool(args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success(), "{args:?} succeeded: {err}");
            assert!(err.contains("names no layer"), "{args:?}: {err}");
        }
    }
    assert_eq!(fs::read_to_string(&out).unwrap(), "keep");
    assert_eq!(fs::read_dir(&u).unwrap().count(), 1);
}

#[test]
fn import_names_a_missing_or_bad_tarball_and_creates_nothing() {
    let t = Tmp::new("badimport");
    let text = t.0.join("notes.txt");
    fs::write(&text, "this is not a tarball\n").unwrap();
    let write = |name: &str, data: &[u8]| {
        let p = t.0.join(name);
        fs::write(&p, data).unwrap();
        p
    };
    // Bytes that look like nothing: a tar reader's message would quote them.
    let noise: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &"text, not a tar\n".repeat(100).into_bytes()).unwrap();
    let whole = tarball(&[
        ("a", tar::EntryType::Regular, ""),
        ("b", tar::EntryType::Regular, ""),
    ]);
    let target = t.0.join("layer");
    for (tarball, says) in [
        (t.0.join("no-such.tar"), "no-such.tar"),
        (text.clone(), "not a layer tarball"),
        (write("empty", b""), "the input is empty"),
        (write("noise", &noise), "not a layer tarball"),
        (
            write("text.gz", &gz.finish().unwrap()),
            "not a layer tarball",
        ),
        // A tarball cut short after its first entry: DIR was made, and goes again.
        (write("cut.tar", &whole[..1100]), "truncated or corrupt"),
    ] {
        let o = layer_tool(&[
            "import",
            tarball.to_str().unwrap(),
            target.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{tarball:?}: {err}");
        assert!(err.contains(says), "{tarball:?}: {err}");
        assert!(
            err.chars().all(|c| c == '\n' || !c.is_control()) && !err.contains('\u{fffd}'),
            "{tarball:?}: the message carries the input's bytes: {err:?}"
        );
        assert!(!target.exists(), "{tarball:?}: import created {target:?}");
    }
    // A good tarball into a path that is a file: refused, naming the path.
    let good = t.0.join("good.tar");
    fs::write(&good, tarball(&[])).unwrap();
    let o = layer_tool(&["import", good.to_str().unwrap(), text.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("notes.txt") && err.contains("not a directory"),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(&text).unwrap(),
        "this is not a tarball\n"
    );
    // And an empty tarball is an empty layer.
    let o = layer_tool(&["import", good.to_str().unwrap(), target.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(fs::read_dir(&target).unwrap().count(), 0);
}

#[test]
fn export_refuses_to_write_a_tarball_to_a_terminal() {
    let t = Tmp::new("tty");
    let u = t.dir("upper");
    fs::write(u.join("f"), "x").unwrap();
    let bin = env!("CARGO_BIN_EXE_unionfs-layer");
    // `script` (util-linux) gives the command a pseudo-terminal as stdout (and stderr), and
    // copies what reaches it to its own stdout.
    let o = Command::new("script")
        .args([
            "-q",
            "-e",
            "-c",
            &format!("{bin} export {}", u.display()),
            "/dev/null",
        ])
        .output()
        .expect("script (util-linux) is needed");
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{shown}");
    assert!(
        shown.contains("refusing to write a tarball to a terminal") && shown.contains("--output"),
        "{shown}"
    );
    assert!(!shown.contains("ustar"), "tar bytes reached the terminal");
    // Redirected, the same command writes the layer.
    let o = Command::new(bin).arg("export").arg(&u).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut ar = tar::Archive::new(&o.stdout[..]);
    let names: Vec<String> = ar
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(names, ["f"]);
}
