//! Arguments and their errors: missing or overlapping layers, bad options, mount points that
//! are layers, `--help`/`--version` of every tool, the mount.fuse3 form's SOURCE, the demo.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use super::fixture::*;
use crate::common::can_mount as fuse_available;

#[test]
fn missing_layer_names_the_path_and_the_fix() {
    let mut fx = Fixture::new("missing");
    let mnt = fx.dir("mnt");
    let nope = fx.root.join("no-such-layer");
    let o = fx.run(&[nope.to_str().unwrap(), mnt.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("no-such-layer") && e.contains("create it"),
        "{e}"
    );
}

#[test]
fn bad_arguments_and_options_fail_clearly() {
    let mut fx = Fixture::new("badopt");
    let l = fx.dir("l");
    let mnt = fx.dir("mnt");
    let o = fx.run(&[
        "-o",
        &format!("lowerdir={},threads=many", l.display()),
        mnt.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("threads=many"), "{}", stderr(&o));
    let o = fx.run(&[mnt.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("LOWER1"), "{}", stderr(&o));
    let o = fx.run(&[
        "-o",
        &format!("upperdir={}", l.display()),
        mnt.to_str().unwrap(),
    ]);
    assert!(stderr(&o).contains("lowerdir"), "{}", stderr(&o));
}

#[test]
fn overlapping_layers_and_mountpoints_are_refused() {
    let mut fx = Fixture::new("overlap");
    let l = fx.dir("l");
    let inner = fx.dir("l/upper");
    let mnt = fx.dir("mnt");
    let o = fx.run(&[
        l.to_str().unwrap(),
        inner.to_str().unwrap(),
        mnt.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("overlap"), "{}", stderr(&o));
    let u = fx.dir("u");
    let inside = fx.dir("l/mnt");
    let o = fx.run(&[
        l.to_str().unwrap(),
        u.to_str().unwrap(),
        inside.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("inside layer"), "{}", stderr(&o));
}

#[test]
fn workdir_on_another_filesystem_is_refused() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("workfs");
    let l = fx.dir("l");
    let u = fx.dir("u");
    let w = fx.dir("w");
    let mnt = fx.dir("mnt");
    nix::mount::mount(
        Some("tmpfs"),
        &w,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    fx.mounts.push(w.clone());
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        l.display(),
        u.display(),
        w.display()
    );
    let o = fx.run(&["-o", &opts, mnt.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("another filesystem"), "{}", stderr(&o));
    assert!(!is_mounted(&mnt));
}

#[test]
fn colon_in_lower_path_is_escaped() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("colon");
    let l = fx.dir("a:b");
    fs::write(l.join("f"), "colon").unwrap();
    let mnt = fx.dir("mnt");
    let arg = l.to_str().unwrap().replace(':', "\\:");
    let o = fx.run(&[&arg, mnt.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(fs::read_to_string(mnt.join("f")).unwrap(), "colon");
}

#[test]
fn version_is_printed() {
    let o = Command::new(BIN).arg("--version").output().unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains(env!("CARGO_PKG_VERSION")));
}

/// The product's tools, by binary name (unionfs-docs and unionfs-harness are the harness
/// crate's, checked by its own tests).
const TOOLS: [(&str, &str); 3] = [
    ("unionfs-mount", env!("CARGO_BIN_EXE_unionfs-mount")),
    ("unionfs-run", env!("CARGO_BIN_EXE_unionfs-run")),
    ("unionfs-layer", env!("CARGO_BIN_EXE_unionfs-layer")),
];

#[test]
fn every_tool_answers_help_and_version_and_writes_nothing() {
    let fx = Fixture::new("help");
    for (name, path) in TOOLS {
        unionfs_harness::support::assert_help_and_version(
            name,
            Path::new(path),
            env!("CARGO_PKG_VERSION"),
            &fx.dir(name),
        );
    }
}

#[test]
fn a_mount_point_that_is_a_layer_is_refused_with_the_fix() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("mnt-is-layer");
    let (l, u, w) = (fx.dir("l"), fx.dir("u"), fx.dir("w"));
    fs::write(l.join("gone"), "lower").unwrap();
    let (ls, us, ws) = (
        l.to_str().unwrap(),
        u.to_str().unwrap(),
        w.to_str().unwrap(),
    );
    let o_form = format!("lowerdir={ls},upperdir={us},workdir={ws}");
    let cases: [(&[&str], &str); 4] = [
        (&[ls, us, us], "is the upper layer"),
        (&[ls, ls], "is a lower layer"),
        (&["-o", &o_form, us], "is the upper layer"),
        (&["-o", &o_form, ws], "is the workdir"),
    ];
    for (args, says) in cases {
        let o = fx.run(args);
        let e = stderr(&o);
        assert!(!o.status.success(), "{args:?} mounted");
        assert!(
            e.contains(says) && e.contains("unionfs-mount LOWERS"),
            "{args:?}: {e}"
        );
    }
    // The usual slip: an upper used before, then `unionfs-mount L U` with MNT left out.
    let mnt = fx.dir("mnt");
    let o = fx.run(&[ls, us, mnt.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    fs::remove_file(mnt.join("gone")).unwrap();
    unmount_and_wait(&mnt, *fx.pids.last().unwrap());
    let o = fx.run(&[ls, us]);
    let e = stderr(&o);
    assert!(!o.status.success(), "mounted over the upper: {e}");
    assert!(
        e.contains(us) && e.contains("layer directory") && e.contains("unionfs-mount LOWERS"),
        "{e}"
    );
    for p in [&u, &l, &w] {
        assert!(!is_mounted(p), "{p:?} is mounted");
    }
    assert!(u.join(".wh.gone").exists());
}

#[test]
fn a_non_empty_mount_point_is_mounted_over_with_a_warning() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("nonempty");
    let (l, u, mnt) = (fx.dir("l"), fx.dir("u"), fx.dir("mnt"));
    fs::write(l.join("f"), "lower").unwrap();
    fs::write(mnt.join("mine"), "mine").unwrap();
    let (ls, us, ms) = (
        l.to_str().unwrap(),
        u.to_str().unwrap(),
        mnt.to_str().unwrap(),
    );
    for (args, hint) in [(&[ls, us, ms][..], false), (&[ls, ms][..], true)] {
        let o = fx.run(args);
        let e = stderr(&o);
        assert!(o.status.success(), "{args:?}: {e}");
        assert!(
            e.contains("warning") && e.contains(ms) && e.contains("not empty"),
            "{args:?}: {e}"
        );
        // Without an upper the directory may have been meant as the upper: say how.
        assert_eq!(e.contains("meant as the upper"), hint, "{args:?}: {e}");
        assert_eq!(fs::read_to_string(mnt.join("f")).unwrap(), "lower");
        assert!(!mnt.join("mine").exists());
        unmount_and_wait(&mnt, *fx.pids.last().unwrap());
        assert_eq!(fs::read_to_string(mnt.join("mine")).unwrap(), "mine");
    }
    // -o nonempty (libfuse2's opt-in) says it is meant: no warning, and no "unknown option".
    let o = fx.run(&["-o", "nonempty", ls, us, ms]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
    unmount_and_wait(&mnt, *fx.pids.last().unwrap());
}

#[test]
fn a_union_without_an_upper_is_mounted_read_only() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("ro-flag");
    let (l, u) = (fx.dir("l"), fx.dir("u"));
    fs::write(l.join("f"), "lower").unwrap();
    let (ls, us) = (l.to_str().unwrap(), u.to_str().unwrap());
    for (args, want) in [
        (vec![ls], "ro"),
        (vec!["-o", "ro", ls, us], "ro"),
        (vec![ls, us], "rw"),
    ] {
        let mnt = fx.dir(&format!("mnt-{}", fx.mounts.len()));
        let mut a = args.clone();
        a.push(mnt.to_str().unwrap());
        let o = fx.run(&a);
        assert!(o.status.success(), "{a:?}: {}", stderr(&o));
        let (opts, fstype, _) = mount_fields(&mnt);
        assert_eq!(fstype, "fuse.unionfs-mount");
        assert_eq!(opts.split(',').next(), Some(want), "{a:?}: {opts}");
        assert_eq!(fs::read_to_string(mnt.join("f")).unwrap(), "lower");
        if want == "ro" {
            let r = fs::write(mnt.join("new"), "x");
            assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EROFS));
        }
        unmount_and_wait(&mnt, *fx.pids.last().unwrap());
    }
}

#[test]
fn the_source_argument_is_the_name_in_proc_mounts() {
    if !fuse_available() {
        return;
    }
    let mut fx = Fixture::new("fsname");
    let l = fx.dir("l");
    let lower = format!("lowerdir={}", l.display());
    let explicit = format!("{lower},fsname=explicit-name");
    for (opts, source, want) in [
        (lower.as_str(), "my-root", "my-root"),
        (explicit.as_str(), "my-root", "explicit-name"),
    ] {
        let mnt = fx.dir(&format!("mnt-{}", fx.mounts.len()));
        let o = fx.run(&["-o", opts, source, mnt.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        let (_, fstype, shown) = mount_fields(&mnt);
        assert_eq!(
            (fstype.as_str(), shown.as_str()),
            ("fuse.unionfs-mount", want)
        );
        unmount_and_wait(&mnt, *fx.pids.last().unwrap());
    }
}

/// Runs `scripts/demo.sh` with `args` from `cwd`, using the binary under test.
fn demo(cwd: &Path, args: &[&Path]) -> Output {
    Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo.sh"))
        .args(args)
        .current_dir(cwd)
        .env("UNIONFS_MOUNT", BIN)
        .output()
        .unwrap()
}

#[test]
fn the_demo_refuses_a_non_empty_directory_it_did_not_make() {
    let mut fx = Fixture::new("demo");
    let theirs = fx.dir("theirs");
    fs::write(theirs.join("precious"), "data").unwrap();
    let o = demo(&fx.root, &[&theirs]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains(theirs.to_str().unwrap()) && e.contains("not empty"),
        "{e}"
    );
    assert_eq!(names_but(&theirs, ""), ["precious"]);
    assert_eq!(fs::read_to_string(theirs.join("precious")).unwrap(), "data");
    let file = theirs.join("precious");
    let o = demo(&fx.root, &[&file]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("not a directory"), "{}", stderr(&o));
    if !fuse_available() {
        return;
    }
    // A directory it made itself (relative: to the caller's cwd) it may clear on the next run.
    let ours = fx.root.join("ours");
    fx.mounts.push(ours.join("mnt"));
    for run in 0..2 {
        let o = demo(&fx.root, &[Path::new("ours")]);
        assert!(o.status.success(), "run {run}: {}", stderr(&o));
        assert!(ours.join(".unionfs-demo").exists(), "run {run}");
        assert!(!is_mounted(&ours.join("mnt")), "run {run}");
        assert!(ours.join("upper/etc/new.conf").exists(), "run {run}");
    }
}
