//! The layer store around image runs: `--name` keeps a container's upper there (and runs it
//! once at a time), `images`/`layers`/`ps` list what it holds, `rm`/`rmi`/`prune` remove it and
//! refuse whatever is in use; and an image run rootless, with the default store.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use crate::common::*;
use crate::images::{copy_layout, image, layout, names, require_images, TestStore};

#[test]
fn a_named_container_keeps_its_upper_and_runs_once_at_a_time() {
    if !require_images() {
        return;
    }
    let l = layout();
    let s = TestStore::new("named");
    let app = image(&l, "app");
    let o = s.run(&[
        "--image",
        &app,
        "--name",
        "web",
        "--",
        "/bin/sh",
        "-c",
        "echo one > /home/app/kept",
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    let upper = s.path().join("containers/web/upper");
    let kept = upper.join("home/app/kept");
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), "one\n");
    assert_eq!(
        std::fs::metadata(&kept).unwrap().uid(),
        1000,
        "written as the image's User"
    );
    // Again by name alone (the image and its config come from the store), then with the image.
    let o = s.run(&[
        "--name",
        "web",
        "--",
        "/bin/sh",
        "-c",
        "cd /home/app; cat kept; echo two >> kept; id -un",
    ]);
    assert_eq!((o.code, o.stdout.as_str()), (0, "one\napp\n"), "{o:?}");
    let o = s.run(&[
        "--image",
        &app,
        "--name",
        "web",
        "--",
        "/bin/cat",
        "/home/app/kept",
    ]);
    assert_eq!((o.code, o.stdout.as_str()), (0, "one\ntwo\n"), "{o:?}");
    // A second run while one runs is refused, naming the running launcher.
    let mut first = s.spawn(&["--name", "web", "--", "/bin/sh", "-c", "echo ready; read x"]);
    assert_eq!(first.read_line(), "ready");
    let o = s.run(&["--name", "web", "--", "/bin/true"]);
    assert_eq!(o.code, 125, "{o:?}");
    let says = format!(
        "container 'web' is already running (unionfs-run pid {})",
        first.pid()
    );
    assert!(o.stderr.contains(&says), "{o:?}");
    let o = s.run(&["ps"]);
    assert!(
        o.stdout.contains("web")
            && o.stdout
                .contains(&format!("running (unionfs-run pid {})", first.pid())),
        "{o:?}"
    );
    first.write_line("");
    assert_eq!(first.finish(Duration::from_secs(30)).code, 0);
    let o = s.run(&["ps", "-a"]);
    assert!(
        o.stdout.contains("stopped") && o.stdout.contains(&app),
        "{o:?}"
    );
    // The name belongs to its image: another one is refused, saying what to do.
    let o = s.run(&[
        "--image",
        &image(&l, "base"),
        "--name",
        "web",
        "--",
        "/bin/true",
    ]);
    assert_eq!(o.code, 125, "{o:?}");
    assert!(
        o.stderr.contains("container 'web' was made from image")
            && o.stderr.contains("unionfs-run rm web"),
        "{o:?}"
    );
    // A name is no upper of the user's own, and a name needs an image the first time.
    let o = s.run(&[
        "--image",
        &app,
        "--name",
        "db",
        "--tmp-upper",
        "--",
        "/bin/true",
    ]);
    assert_eq!(o.code, 2, "{o:?}");
    let o = s.run(&["--name", "nosuch", "--", "/bin/true"]);
    assert_eq!(o.code, 125, "{o:?}");
    assert!(o.stderr.contains("no container named 'nosuch'"), "{o:?}");
    let o = s.run(&["--image", &app, "--name", "bad/name", "--", "/bin/true"]);
    assert_eq!(o.code, 125, "{o:?}");
    assert!(o.stderr.contains("a container name starts with"), "{o:?}");
    // As root with --uid-map ranges, a new name's upper belongs to the container's root.
    let o = s.run(&[
        "--uid-map",
        "0:100000:65536",
        "--gid-map",
        "0:100000:65536",
        "--image",
        &app,
        "--user",
        "0",
        "--name",
        "mapped",
        "--",
        "/bin/sh",
        "-c",
        "echo m > /m",
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    let m = std::fs::metadata(s.path().join("containers/mapped/upper/m")).unwrap();
    assert_eq!((m.uid(), m.gid()), (100000, 100000));
    // Named containers on plain layer directories work the same way.
    let lowers = example_layers().join("base");
    let o = s.run(&[
        "--name",
        "plain",
        &lowers.to_string_lossy(),
        "--",
        "/bin/sh",
        "-c",
        "echo p > /p",
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    let o = s.run(&["--name", "plain", "--", "/bin/cat", "/p"]);
    assert_eq!((o.code, o.stdout.as_str()), (0, "p\n"), "{o:?}");
}

#[test]
fn listing_and_removing_refuse_what_is_in_use() {
    if !require_images() {
        return;
    }
    let l = layout();
    let s = TestStore::new("remove");
    let (base, app) = (image(&l, "base"), image(&l, "app"));
    for a in [
        &["--image", &base][..],
        &["--image", &app, "--name", "web", "--", "/bin/true"][..],
    ] {
        let o = s.run(a);
        assert_eq!(o.code, 0, "{o:?}");
    }
    let layers = s.layers();
    assert_eq!(layers.len(), 2);
    let o = s.run(&["images"]);
    assert!(o.stdout.contains(&base) && o.stdout.contains(&app), "{o:?}");
    // UNIONFS_STORE names the store when --store does not.
    let o = spawn_cmd(
        std::process::Command::new(BIN)
            .arg("images")
            .env("UNIONFS_STORE", s.path()),
    )
    .finish(Duration::from_secs(30));
    assert!(o.stdout.contains(&base) && o.stdout.contains(&app), "{o:?}");
    let o = s.run(&["layers"]);
    assert_eq!(o.stdout.lines().count(), 3, "{o:?}");
    assert!(o.stdout.contains("container web"), "{o:?}");
    // The app image has a named container: refused; so is its own layer.
    let o = s.run(&["rmi", &app]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.stderr
            .contains("remove the container first (unionfs-run rm web)"),
        "{o:?}"
    );
    let o = s.run(&["prune", &layers[0].replace('-', ":")]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stderr.contains("is used by"), "{o:?}");
    // `rmi base` removes the record but keeps the layer app still uses.
    let o = s.run(&["rmi", &base]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(!o.stdout.contains("removed layer"), "{o:?}");
    assert_eq!(s.layers(), layers);
    // A running unnamed container holds its layers: rmi waits for it to end.
    let mut running = s.spawn(&["--image", &app, "--", "/bin/sh", "-c", "echo ready; read x"]);
    assert_eq!(running.read_line(), "ready");
    let o = s.run(&["rm", "web"]);
    assert_eq!((o.code, o.stdout.as_str()), (0, "web\n"), "{o:?}");
    assert!(!s.path().join("containers/web").exists());
    let o = s.run(&["rmi", &app]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.stderr.contains(&format!(
            "in use by a running container (unionfs-run pid {})",
            running.pid()
        )),
        "{o:?}"
    );
    let o = s.run(&["prune"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(s.layers(), layers, "prune removed a layer in use");
    running.write_line("");
    assert_eq!(running.finish(Duration::from_secs(30)).code, 0);
    // Nothing uses them now: rmi takes the image and both layers with it.
    let o = s.run(&["rmi", &app]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout.matches("removed layer").count(), 2, "{o:?}");
    s.assert_empty("after rmi");
    assert!(names(&s.path().join("containers")).is_empty());
    // Layers nothing records (the image record removed by hand) go with prune, by name too.
    let o = s.run(&["--image", &app, "--", "/bin/true"]);
    assert_eq!(o.code, 0, "{o:?}");
    for f in names(&s.path().join("images")) {
        std::fs::remove_file(s.path().join("images").join(f)).unwrap();
    }
    let one = s.layers()[0].clone();
    let o = s.run(&["prune", &one.replace("sha256-", "")[..12]]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(s.layers().len(), 1);
    let o = s.run(&["prune"]);
    assert_eq!(
        (o.code, o.stdout.matches("removed layer").count()),
        (0, 1),
        "{o:?}"
    );
    s.assert_empty("after prune");
    // Unknown names say where to look.
    for (a, says) in [
        (&["rm", "nosuch"][..], "unionfs-run ps lists them"),
        (&["rmi", "nosuch"][..], "unionfs-run images lists them"),
        (&["prune", "abcdef"][..], "unionfs-run layers lists them"),
    ] {
        let o = s.run(a);
        assert_eq!(o.code, 1, "{a:?}: {o:?}");
        assert!(o.stderr.contains(says), "{a:?}: {o:?}");
    }
}

#[test]
fn an_image_runs_rootless_with_the_default_store() {
    let Some(r) = Ranges::new("images") else {
        return;
    };
    if !require_images() {
        return;
    }
    // The user's own copy of the layout (umoci writes index.json readable by its owner only).
    let t = TempDir::new("rootless-layout");
    let l = copy_layout(&t);
    let st = std::process::Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&l)
        .status()
        .unwrap();
    assert!(st.success());
    let data = TempDir::new("xdg-data");
    std::os::unix::fs::chown(&data.0, Some(65534), Some(65534)).unwrap();
    let env = [("XDG_DATA_HOME", data.0.as_path())];
    // As container root first: the layers' files are the user's own on disk (no other owner
    // survives a rootless unpack), which the container sees as root.
    let run = |extra: &[&str], script: &str| {
        let mut a = Ranges::map_args();
        a.extend(args(extra));
        a.extend(args(&["--name", "mine", "--", "/bin/sh", "-c", script]));
        r.run_env(&env, &a)
    };
    let app = image(&l, "app");
    let o = run(
        &["--image", &app, "--user", "0"],
        "mkdir /data; chown app:app /data; id -u; stat -c %u /app/hello.sh",
    );
    assert_eq!((o.code, o.stdout.as_str()), (0, "0\n0\n"), "{o:?}");
    // Then as the image's User (its memberships too), by name alone.
    let o = run(&[], "id -u; id -G; echo mine > /data/f; /app/hello.sh");
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (
            0,
            "1000\n1000 2000\nhello from the app layer on container\n"
        ),
        "{o:?}"
    );
    // The default store of a user: $XDG_DATA_HOME/unionfs; every layer file the user's own,
    // the upper's new files the container user's subordinate id.
    let store = data.join("unionfs");
    let layers = names(&store.join("layers"));
    assert_eq!(layers.len(), 2, "{layers:?}");
    for n in &layers {
        let p = store.join("layers").join(n).join("etc");
        let m = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(m.uid(), 65534, "{n}");
    }
    let f = store.join("containers/mine/upper/data/f");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "mine\n");
    assert_eq!(std::fs::metadata(&f).unwrap().uid(), SUBID + 999);
    let o = run(&[], "cat /data/f");
    assert_eq!((o.code, o.stdout.as_str()), (0, "mine\n"), "{o:?}");
    // The user removes what it made.
    let o = r.run_env(&env, &args(&["rm", "mine"]));
    assert_eq!(o.code, 0, "{o:?}");
    let o = r.run_env(&env, &args(&["rmi", &image(&l, "app")]));
    assert_eq!(o.code, 0, "{o:?}");
    assert!(names(&store.join("layers")).is_empty());
}
