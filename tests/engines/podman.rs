//! podman (Debian's 4.3) with the overlay driver of containers/storage and `mount_program` =
//! unionfs-mount, from a private `storage.conf` and `containers.conf` whose graphroot and
//! runroot live in a temp dir: `podman load` of an OCI archive, `run`, a `build` that deletes
//! and re-creates a lower directory, `commit` and `export`, as root and rootless.
//!
//! Host specifics handled here: runc, because crun refuses
//! these hybrid cgroup hosts; cgroupfs, no systemd; low container rlimits (podman raises
//! nofile and nproc by default, which needs CAP_SYS_RESOURCE this machine's root lacks);
//! rootless: a 0666 /dev/fuse node, /etc/subuid and /etc/subgid ranges bind-mounted
//! in a private mount namespace, and the configuration in `XDG_CONFIG_HOME` (rootless podman
//! ignores `CONTAINERS_STORAGE_CONF`'s graphroot).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{diff_snapshots, snapshot, Snapshot};
use crate::image::{busybox_archive, require_umoci};
use crate::launch_common::{require, require_root, spawn_cmd, Outcome, TempDir};

const MOUNT_PROGRAM: &str = env!("CARGO_BIN_EXE_unionfs-mount");
const IMAGE: &str = "localhost/busybox:latest";
/// The unprivileged user of the rootless tests, and its subordinate ids.
const USER: u32 = 65534;
const SUBID: u32 = 300000;

fn require_podman() -> bool {
    require_root()
        && require(
            Command::new("podman").arg("--version").output().is_ok(),
            "podman is needed (Debian package podman)",
        )
        && require(
            Command::new("runc").arg("--version").output().is_ok(),
            "runc is needed (Debian package runc): crun refuses hybrid cgroup hosts",
        )
        && require_umoci()
}

/// One podman installation of our own: configuration, storage and state under a temp dir.
struct Podman {
    dir: TempDir,
    /// Rootless: commands run as [`USER`] in a private mount namespace.
    rootless: bool,
    /// Extra environment of root podman (and so of the mount program it runs).
    env: Vec<(&'static str, String)>,
    /// One podman at a time: root podman shares its parent cgroup, which the last one removes.
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// A temp dir with a short path: under the 49 characters of a cargo target dir, podman waited
/// 20 s (its conmon timeout) for every container's exit; 33 were fine.
fn short_temp_dir(tag: &str) -> TempDir {
    let p = std::env::temp_dir().join(format!("unionfs-podman-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    TempDir(p)
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

impl Podman {
    fn root(tag: &str) -> Podman {
        let p = Podman {
            _serial: serial(),
            dir: short_temp_dir(tag),
            rootless: false,
            env: Vec::new(),
        };
        p.write_config(&p.dir.join("etc"));
        p
    }

    fn rootless(tag: &str) -> Podman {
        let p = Podman {
            _serial: serial(),
            dir: short_temp_dir(tag),
            rootless: true,
            env: Vec::new(),
        };
        p.write_config(&p.dir.join("config/containers"));
        for d in ["home", "runtime"] {
            std::fs::create_dir_all(p.dir.join(d)).unwrap();
        }
        std::fs::write(p.dir.join("subuid"), format!("nobody:{SUBID}:65536\n")).unwrap();
        std::fs::write(p.dir.join("subgid"), format!("nobody:{SUBID}:65536\n")).unwrap();
        let st = Command::new("chown")
            .args(["-R", &format!("{USER}:{USER}")])
            .arg(&p.dir.0)
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::set_permissions(
            p.dir.join("runtime"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        p
    }

    /// `storage.conf` and `containers.conf` in `etc`: what the README's podman section shows.
    fn write_config(&self, etc: &Path) {
        std::fs::create_dir_all(etc).unwrap();
        let d = &self.dir.0;
        std::fs::write(
            etc.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{g}\"\nrunroot = \"{r}\"\n\n\
                 [storage.options.overlay]\nmount_program = \"{MOUNT_PROGRAM}\"\n",
                g = d.join("graph").display(),
                r = d.join("run").display(),
            ),
        )
        .unwrap();
        // Podman's own nproc limit is lower than ours here (32768): stay well below both.
        let limit = |r, most| nix::sys::resource::getrlimit(r).unwrap().1.min(most);
        let (nofile, nproc) = (
            limit(nix::sys::resource::Resource::RLIMIT_NOFILE, 1024),
            limit(nix::sys::resource::Resource::RLIMIT_NPROC, 4096),
        );
        // Root: libpod's state away from the host's /run/libpod. Rootless keeps the default
        // under XDG_RUNTIME_DIR: with tmp_dir set, conmon's exit files went elsewhere and every
        // `podman run` waited 20 s for the container's exit.
        let tmp = if self.rootless {
            String::new()
        } else {
            format!("tmp_dir = \"{}\"\n", d.join("tmp").display())
        };
        std::fs::write(
            etc.join("containers.conf"),
            format!(
                "[engine]\nevents_logger = \"none\"\ncgroup_manager = \"cgroupfs\"\n\
                 runtime = \"runc\"\n{tmp}\n[containers]\n\
                 default_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n",
            ),
        )
        .unwrap();
    }

    /// `podman ARGS` (2 minutes at most).
    fn podman(&self, args: &[&str]) -> Outcome {
        let mut cmd;
        let d = &self.dir.0;
        if self.rootless {
            // mknod needs a filesystem without nodev: the system temp dir.
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let node = TempDir(
                std::env::temp_dir()
                    .join(format!("unionfs-podman-node-{}-{n}", std::process::id())),
            );
            std::fs::create_dir_all(&node.0).unwrap();
            cmd = Command::new("unshare");
            cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
                .arg(
                    "set -e; mount --bind \"$D/subuid\" /etc/subuid; \
                     mount --bind \"$D/subgid\" /etc/subgid; \
                     mknod -m 0666 \"$NODE/fuse\" c 10 229; mount --bind \"$NODE/fuse\" /dev/fuse; \
                     exec setpriv --reuid=$U --regid=$U --clear-groups env -i \
                     PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=\"$D/home\" \
                     XDG_CONFIG_HOME=\"$D/config\" XDG_RUNTIME_DIR=\"$D/runtime\" podman \"$@\"",
                )
                .arg("sh")
                .args(args)
                .env("D", d)
                .env("NODE", &node.0)
                .env("U", USER.to_string());
            return spawn_cmd(&mut cmd).finish(Duration::from_secs(120));
        }
        cmd = Command::new("podman");
        cmd.args(args)
            .env("CONTAINERS_STORAGE_CONF", d.join("etc/storage.conf"))
            .env("CONTAINERS_CONF", d.join("etc/containers.conf"))
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        spawn_cmd(&mut cmd).finish(Duration::from_secs(120))
    }

    /// `podman ARGS`, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.podman(args);
        assert_eq!(o.code, 0, "podman {args:?} failed: {}", o.stderr);
        o.stdout
    }

    /// `podman run --rm ... IMAGE sh -c SCRIPT`: its stdout.
    fn sh(&self, image: &str, script: &str) -> String {
        self.ok(&[
            "run",
            "--rm",
            "--pull=never",
            "--network",
            "none",
            image,
            "/bin/sh",
            "-c",
            script,
        ])
    }

    /// `podman run --name NAME ... IMAGE sh -c SCRIPT` (a container that stays): its stdout.
    fn run_named(&self, name: &str, script: &str) -> String {
        self.run_with(&["--name", name], script)
    }

    /// `podman run EXTRA ... IMAGE sh -c SCRIPT`: its stdout.
    fn run_with(&self, extra: &[&str], script: &str) -> String {
        let mut a = vec!["run", "--pull=never", "--network", "none"];
        a.extend(extra);
        a.extend([IMAGE, "/bin/sh", "-c", script]);
        self.ok(&a)
    }

    /// The upper directory of container `name`, where its changes are.
    fn upper_of(&self, name: &str) -> PathBuf {
        let f = "{{.GraphDriver.Data.UpperDir}}";
        PathBuf::from(
            self.ok(&["container", "inspect", "--format", f, name])
                .trim(),
        )
    }

    /// The image's layer directories as containers/storage keeps them (topmost first).
    fn image_layers(&self, image: &str) -> Vec<PathBuf> {
        let f = "{{.GraphDriver.Data.UpperDir}}:{{.GraphDriver.Data.LowerDir}}";
        let out = self.ok(&["image", "inspect", "--format", f, image]);
        out.trim()
            .split(':')
            .filter(|s| !s.is_empty() && *s != "<no value>")
            .map(PathBuf::from)
            .collect()
    }

    /// The `unionfs-mount` daemons serving a union of this installation.
    fn daemons(&self) -> Vec<i32> {
        let mut out = Vec::new();
        let me = self.dir.0.to_string_lossy().into_owned();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let exe = std::fs::read_link(e.path().join("exe")).unwrap_or_default();
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let gone = !crate::launch_common::alive(nix::unistd::Pid::from_raw(pid));
            if exe == Path::new(MOUNT_PROGRAM)
                && !gone
                && String::from_utf8_lossy(&cmdline).contains(&me)
            {
                out.push(pid);
            }
        }
        out
    }

    /// Removes the containers, ends a rootless podman's pause process and checks that no
    /// daemon of ours is left (podman unmounts every union it mounted).
    fn finish(&self) -> Vec<i32> {
        let _ = self.podman(&["rm", "-af", "-t", "0"]);
        if self.rootless {
            // The pause process that holds rootless podman's user namespace, by the pid it
            // recorded.
            let pid = std::fs::read_to_string(self.dir.join("runtime/libpod/tmp/pause.pid"));
            if let Ok(pid) = pid.unwrap_or_default().trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.daemons().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.daemons()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let left = self.finish();
        for pid in left {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Unions of a failed test still mounted on the host (root runs): detach them.
        let me = self.dir.0.to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for m in mounts.lines().filter_map(|l| l.split(' ').nth(1)) {
            if m.starts_with(&me) {
                let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        if !self.rootless {
            remove_libpod_cgroups();
        }
    }
}

/// Root podman with cgroupfs makes `libpod_parent` (and `libpod_parent/conmon`) in every
/// hierarchy and leaves them: removed once empty (rmdir refuses a cgroup in use).
fn remove_libpod_cgroups() {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for h in hierarchies.flatten() {
        let parent = h.path().join("libpod_parent");
        let _ = std::fs::remove_dir(parent.join("conmon"));
        let _ = std::fs::remove_dir(&parent);
    }
}

/// The test image loaded into `p`, with its layer directories and their state before use.
fn load(p: &Podman) -> (Vec<PathBuf>, Vec<Snapshot>) {
    // The archive is copied where a rootless user can read it.
    let tar = p.dir.join("img.tar");
    std::fs::copy(busybox_archive(), &tar).unwrap();
    if p.rootless {
        nix::unistd::chown(&tar, Some(USER.into()), Some(USER.into())).unwrap();
    }
    let out = p.ok(&["load", "-i", tar.to_str().unwrap()]);
    assert!(
        out.contains("Loaded image: localhost/busybox:latest"),
        "{out}"
    );
    let layers = p.image_layers(IMAGE);
    assert_eq!(layers.len(), 2, "{layers:?}");
    let before = layers.iter().map(|d| snapshot(d)).collect();
    (layers, before)
}

/// The end of every test: the image layers are exactly as before (podman's lowers are never
/// written) and no daemon of ours is left once podman removed its containers.
fn check_end(p: &Podman, layers: &[PathBuf], before: &[Snapshot]) {
    for (d, b) in layers.iter().zip(before) {
        let diff = diff_snapshots(b, &snapshot(d));
        assert!(
            diff.is_empty(),
            "image layer {} changed: {diff:?}",
            d.display()
        );
    }
    assert_eq!(
        p.finish(),
        Vec::<i32>::new(),
        "daemons left after podman rm"
    );
}

/// A build context whose Containerfile deletes `/d` (lower files `old`, `sub/f`), makes it
/// again with one new file, and lists it in a second step, on top of the first's layer.
fn build_context(dir: &Path) -> PathBuf {
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Containerfile"),
        format!(
            "FROM {IMAGE}\nRUN rm -rf /d && mkdir /d && echo new > /d/new\n\
             RUN ls -a /d > /listing; cat /d/old /d/sub/f 2>/dev/null >> /listing || true\n"
        ),
    )
    .unwrap();
    ctx
}

/// `podman build` of [`build_context`] as `built`, then what a container of it sees.
fn build_and_look(p: &Podman) -> String {
    let ctx = build_context(&p.dir.0);
    p.ok(&[
        "build",
        "--pull=never",
        "--network",
        "none",
        "-t",
        "built",
        ctx.to_str().unwrap(),
    ]);
    p.sh(
        "localhost/built:latest",
        "ls -a /d; echo --; cat /listing; ls /d/sub /d/old 2>/dev/null || echo no-old",
    )
}

const BUILT_VIEW: &str = ".\n..\nnew\n--\n.\n..\nnew\nno-old\n";

#[test]
fn a_loaded_image_runs_on_unionfs_mount_and_writes_land_in_the_container_upper() {
    if !require_podman() {
        return;
    }
    let p = Podman::root("run");
    let (layers, before) = load(&p);
    let out = p.ok(&["run", "--rm", "--pull=never", "--network", "none", IMAGE]);
    assert!(
        out.starts_with("hello from the app layer on "),
        "the image's command: {out}"
    );
    let out = p.run_named(
        "c1",
        "grep ' / ' /proc/mounts | cut -d' ' -f3; echo new > /etc/new; rm /etc/motd; \
         rm -r /d; cat /etc/new; ls /etc/motd /d 2>/dev/null || echo gone",
    );
    assert_eq!(out, "fuse.unionfs-mount\nnew\ngone\n");
    let upper = p.upper_of("c1");
    assert_eq!(
        std::fs::read_to_string(upper.join("etc/new")).unwrap(),
        "new\n"
    );
    assert!(upper.join("etc/.wh.motd").is_file(), "no whiteout for motd");
    assert!(upper.join(".wh.d").is_file(), "no whiteout for /d");
    p.ok(&["rm", "c1"]);
    check_end(&p, &layers, &before);
}

#[test]
fn a_build_that_deletes_and_recreates_a_directory_does_not_resurrect_its_files() {
    if !require_podman() {
        return;
    }
    let p = Podman::root("build");
    let (layers, before) = load(&p);
    assert_eq!(build_and_look(&p), BUILT_VIEW);
    // The base image's layers are the built image's lowest ones, untouched.
    let built = p.image_layers("localhost/built:latest");
    assert_eq!(built.len(), layers.len() + 2, "{built:?}");
    assert_eq!(&built[2..], &layers[..]);
    check_end(&p, &layers, &before);
}

#[test]
fn commit_and_export_carry_the_containers_changes() {
    if !require_podman() {
        return;
    }
    let p = Podman::root("commit");
    let (layers, before) = load(&p);
    p.run_named(
        "c2",
        "echo committed > /etc/committed; rm /etc/motd; rm -rf /d; mkdir /d; echo n > /d/n",
    );
    p.ok(&["commit", "c2", "committed"]);
    let out = p.sh(
        "localhost/committed:latest",
        "cat /etc/committed; ls /etc/motd 2>/dev/null || echo no-motd; ls -a /d",
    );
    assert_eq!(out, "committed\nno-motd\n.\n..\nn\n");
    let tar = p.dir.join("export.tar");
    p.ok(&["export", "-o", tar.to_str().unwrap(), "c2"]);
    let o = Command::new("tar").arg("-tf").arg(&tar).output().unwrap();
    assert!(o.status.success());
    let names: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
        .collect();
    for want in ["etc/committed", "d/n", "app/hello.sh", "bin/busybox"] {
        assert!(names.iter().any(|n| n == want), "{want} not exported");
    }
    for gone in ["etc/motd", "d/old", "d/sub"] {
        assert!(!names.iter().any(|n| n == gone), "{gone} exported");
    }
    assert!(
        !names.iter().any(|n| n.contains(".wh.")),
        "layer entries in the export: {names:?}"
    );
    p.ok(&["rm", "c2"]);
    check_end(&p, &layers, &before);
}

#[test]
fn rootless_podman_loads_runs_builds_and_commits() {
    if !require_podman() {
        return;
    }
    let helpers = Command::new("newuidmap").output().is_ok()
        && Command::new("setpriv").arg("--version").output().is_ok()
        && Path::new("/etc/subuid").exists()
        && Path::new("/etc/subgid").exists();
    if !require(
        helpers,
        "rootless podman needs newuidmap (Debian package uidmap), setpriv and /etc/subuid, \
         /etc/subgid",
    ) {
        return;
    }
    let p = Podman::rootless("rootless");
    let (layers, before) = load(&p);
    let out = p.run_named(
        "r1",
        "/app/hello.sh >/dev/null && echo hello; grep ' / ' /proc/mounts | cut -d' ' -f3; \
         tr -s ' ' < /proc/self/uid_map; echo x > /x; chown 1000:1000 /x; ls -ln /x | tr -s ' ' | cut -d' ' -f3,4",
    );
    assert_eq!(
        out,
        format!("hello\nfuse.unionfs-mount\n 0 {USER} 1\n 1 {SUBID} 65536\n1000 1000\n")
    );
    let upper = p.upper_of("r1");
    // On disk the container's ids are host ids: 1000 is the 1000th subordinate id.
    let x = std::fs::metadata(upper.join("x")).unwrap();
    assert_eq!((x.uid(), x.gid()), (SUBID + 999, SUBID + 999));
    p.ok(&["commit", "r1", "committed"]);
    let out = p.sh(
        "localhost/committed:latest",
        "ls -ln /x | tr -s ' ' | cut -d' ' -f3,4",
    );
    assert_eq!(out, "1000 1000\n");
    assert_eq!(build_and_look(&p), BUILT_VIEW);
    // An id-mapped container: podman mounts it with uidmapping=/gidmapping= (`--userns
    // keep-id`: the user is itself inside). The layers hold container ids, shown mapped: the
    // image's root-owned files are root's inside, and what the user writes is stored as its
    // container id, 65534 (host: the 65534th subordinate id).
    let out = p.run_with(
        &["--name", "k1", "--userns=keep-id"],
        "id -u; ls -ln /etc/passwd | tr -s ' ' | cut -d' ' -f3,4; echo k > /tmp/k; \
         ls -ln /tmp/k | tr -s ' ' | cut -d' ' -f3,4",
    );
    assert_eq!(out, format!("{USER}\n0 0\n{USER} {USER}\n"));
    let k = std::fs::metadata(p.upper_of("k1").join("tmp/k")).unwrap();
    assert_eq!((k.uid(), k.gid()), (SUBID + 65533, SUBID + 65533));
    p.ok(&["rm", "r1", "k1"]);
    check_end(&p, &layers, &before);
}

#[test]
fn with_mountopt_shared_the_unions_of_all_containers_live_in_one_server() {
    if !require_podman() {
        return;
    }
    let mut p = Podman::root("shared");
    // The README's storage.conf plus one line: every container's union goes to one server.
    let sock = p.dir.join("unions.sock");
    let conf = p.dir.join("etc/storage.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!("mountopt = \"nodev,shared={}\"\n", sock.display()));
    std::fs::write(&conf, text).unwrap();
    // The server leaves 1 s after its last union instead of 30.
    p.env.push(("UNIONFS_SERVE_IDLE_SECS", "1".into()));
    let (layers, before) = load(&p);
    const N: usize = 3;
    for i in 0..N {
        let script = format!("echo {i} > /mine; sleep 120");
        let name = format!("s{i}");
        p.ok(&[
            "run",
            "-d",
            "--pull=never",
            "--network",
            "none",
            "--name",
            &name,
            IMAGE,
            "/bin/sh",
            "-c",
            &script,
        ]);
    }
    let me = p.dir.0.to_string_lossy().into_owned();
    let unions = std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter(|l| l.contains(" fuse.unionfs-mount ") && l.contains(&me))
        .count();
    assert_eq!(unions, N, "container roots mounted as unions");
    // One server (and its watchdog) for all of them, where separate daemons would be N.
    let daemons = p.daemons();
    assert!(
        !daemons.is_empty() && daemons.len() <= 2,
        "{} unionfs-mount processes for {N} containers: {daemons:?}",
        daemons.len()
    );
    assert!(sock.exists(), "no server socket at {}", sock.display());
    for i in 0..N {
        let name = format!("s{i}");
        let out = p.ok(&["exec", &name, "cat", "/mine"]);
        assert_eq!(out, format!("{i}\n"));
        let upper = p.upper_of(&name);
        assert_eq!(
            std::fs::read_to_string(upper.join("mine")).unwrap(),
            format!("{i}\n")
        );
    }
    p.ok(&["rm", "-f", "-t", "0", "s0", "s1", "s2"]);
    check_end(&p, &layers, &before);
}
