//! Rootless: the launcher as uid 65534 (`setpriv`), with /dev/fuse made usable for it only in a
//! private mount namespace (a bind-mounted 0666 node; the host's node is never changed).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use nix::sys::signal::{kill, Signal};

const NOBODY: u32 = 65534;

/// A copy of the example layers owned by the unprivileged user, as its own layers would be.
struct UserLayers {
    dir: TempDir,
}

impl UserLayers {
    fn new() -> UserLayers {
        let dir = TempDir::new("rootless-layers");
        let src = example_layers();
        for l in ["base", "app", "whiteout"] {
            let st = Command::new("cp")
                .arg("-a")
                .arg(src.join(l))
                .arg(dir.join(l))
                .status()
                .unwrap();
            assert!(st.success());
        }
        std::fs::create_dir(dir.join("upper")).unwrap();
        let st = Command::new("chown")
            .args(["-R", &format!("{NOBODY}:{NOBODY}")])
            .arg(&dir.0)
            .status()
            .unwrap();
        assert!(st.success());
        UserLayers { dir }
    }

    fn lowers(&self) -> String {
        let d = &self.dir.0;
        format!(
            "{}:{}:{}",
            d.join("whiteout").display(),
            d.join("app").display(),
            d.join("base").display()
        )
    }

    fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
}

/// `unionfs-run ARGS` as uid 65534; with `fuse_access`, in a private mount namespace whose
/// /dev/fuse is a bind-mounted 0666 node.
fn rootless(fuse_access: bool, a: &[String]) -> (Running, Option<TempDir>) {
    let mut cmd;
    let mut node_dir = None;
    if fuse_access {
        // mknod needs a file system without nodev: the system temp dir.
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let d = std::env::temp_dir().join(format!("unionfs-fuse-node-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                "set -e; mknod -m 0666 \"$NODE/fuse\" c 10 229; mount --bind \"$NODE/fuse\" /dev/fuse; \
                 exec setpriv --reuid=65534 --regid=65534 --clear-groups \"$@\"",
            )
            .arg("sh")
            .env("NODE", &d);
        node_dir = Some(TempDir(d));
    } else {
        cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    }
    cmd.arg(BIN).args(a);
    (spawn_cmd(&mut cmd), node_dir)
}

fn require_rootless() -> bool {
    require_root()
        && require(
            Command::new("setpriv").arg("--version").output().is_ok(),
            "setpriv (util-linux) is needed for the rootless tests",
        )
}

#[test]
fn rootless_container_basics_and_one_limits_warning() {
    if !require_rootless() {
        return;
    }
    let l = UserLayers::new();
    let mut a = args(&["--memory", "64M", "--hostname", "rl", &l.lowers()]);
    a.push(l.upper().to_string_lossy().into_owned());
    a.extend(args(&[
        "--",
        "/bin/sh",
        "-c",
        "echo pid=$$; ps -o pid | tail -n +2 | wc -l; hostname; ls /sys/class/net; \
         cat /proc/self/uid_map | tr -s ' '; id -u; exit 42",
    ]));
    let (r, _node) = rootless(true, &a);
    let o = r.finish(Duration::from_secs(30));
    assert_eq!(o.code, 42, "{o:?}");
    let l: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(l[0], "pid=1", "{o:?}");
    assert!(l[1].trim().parse::<usize>().unwrap() <= 4, "{o:?}");
    assert_eq!(&l[2..], ["rl", "lo", " 0 65534 1", "0"], "{o:?}");
    assert_eq!(o.stderr.matches("warning").count(), 1, "{o:?}");
    assert!(o.stderr.contains("WITHOUT resource limits"), "{o:?}");
}

#[test]
fn rootless_writes_land_in_upper_as_the_user() {
    if !require_rootless() {
        return;
    }
    let l = UserLayers::new();
    let mut a = vec![l.lowers(), l.upper().to_string_lossy().into_owned()];
    a.extend(args(&[
        "--",
        "/bin/sh",
        "-c",
        "echo hi > /etc/new; rm /etc/passwd; rm /app/hello.sh",
    ]));
    let (r, _node) = rootless(true, &a);
    let o = r.finish(Duration::from_secs(30));
    assert_eq!(o.code, 0, "{o:?}");
    use std::os::unix::fs::MetadataExt;
    let new = std::fs::metadata(l.upper().join("etc/new")).unwrap();
    assert_eq!((new.uid(), new.gid()), (NOBODY, NOBODY));
    assert!(l.upper().join("etc/.wh.passwd").is_file());
    assert!(l.upper().join("app/.wh.hello.sh").is_file());
    assert!(l.dir.join("base/etc/passwd").exists(), "lower changed");
    assert!(l.dir.join("app/app/hello.sh").exists(), "lower changed");
}

#[test]
fn rootless_exit_status_of_a_killed_command_and_signals() {
    if !require_rootless() {
        return;
    }
    let l = UserLayers::new();
    let a = args(&[
        "--tmp-upper",
        &l.lowers(),
        "--",
        "/bin/sh",
        "-c",
        "trap 'echo got-USR1' USR1; echo up; while true; do sleep 0.05; done",
    ]);
    let (mut r, _node) = rootless(true, &a);
    assert_eq!(r.read_line(), "up");
    r.signal(Signal::SIGUSR1);
    assert_eq!(r.read_line(), "got-USR1");
    kill(r.init_pid(), Signal::SIGKILL).unwrap();
    let o = r.finish(Duration::from_secs(20));
    assert_eq!(o.code, 137, "{o:?}");
}

#[test]
fn rootless_without_fuse_access_says_how_to_fix_it() {
    if !require_rootless() {
        return;
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata("/dev/fuse").unwrap().permissions(),
    );
    if mode & 0o006 == 0o006 {
        // A host whose /dev/fuse is 0666 gives everyone access: nothing to report there.
        eprintln!("SKIPPED: /dev/fuse is world-accessible on this host");
        return;
    }
    let l = UserLayers::new();
    let a = args(&["--tmp-upper", &l.lowers(), "--", "/bin/true"]);
    let (r, _) = rootless(false, &a);
    let o = r.finish(Duration::from_secs(20));
    assert_eq!(o.code, 125, "{o:?}");
    assert!(o.stderr.contains("cannot open /dev/fuse"), "{o:?}");
    assert!(o.stderr.contains("chmod 0666 /dev/fuse"), "{o:?}");
    assert!(!Path::new("/dev/fuse")
        .metadata()
        .unwrap()
        .permissions()
        .readonly());
}

#[test]
fn rootless_init_reaps_and_forwards() {
    if !require_rootless() {
        return;
    }
    let l = UserLayers::new();
    let a = args(&[
        "--init",
        "--tmp-upper",
        &l.lowers(),
        "--",
        "/bin/sh",
        "-c",
        "for i in 1 2 3; do (sleep 0.1 &); done; echo up; exec sleep 30",
    ]);
    let (mut r, _node) = rootless(true, &a);
    assert_eq!(r.read_line(), "up");
    std::thread::sleep(Duration::from_millis(500));
    let zombies = descendants(r.pid())
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(false)
        })
        .count();
    assert_eq!(zombies, 0);
    // The reaper forwards SIGTERM to `sleep`, which dies of it.
    r.signal(Signal::SIGTERM);
    let o = r.finish(Duration::from_secs(20));
    assert_eq!(o.code, 143, "{o:?}");
}

/// v1 cgroups (memory, pids, cpu, freezer) delegated to uid 65534, removed on drop.
struct DelegatedV1(Vec<PathBuf>);

impl Drop for DelegatedV1 {
    fn drop(&mut self) {
        for d in &self.0 {
            if let Ok(rd) = std::fs::read_dir(d) {
                for e in rd.flatten().filter(|e| e.path().is_dir()) {
                    for p in std::fs::read_to_string(e.path().join("cgroup.procs"))
                        .unwrap_or_default()
                        .lines()
                    {
                        if let Ok(p) = p.trim().parse::<i32>() {
                            let _ = kill(nix::unistd::Pid::from_raw(p), Signal::SIGKILL);
                        }
                    }
                    let _ = wait_for(Duration::from_secs(5), || {
                        std::fs::remove_dir(e.path()).is_ok()
                    });
                }
            }
            let _ = wait_for(Duration::from_secs(5), || std::fs::remove_dir(d).is_ok());
        }
    }
}

#[test]
fn rootless_with_a_delegated_v1_subtree_gets_limits() {
    if !require_rootless() {
        return;
    }
    let ctrls = ["memory", "pids", "cpu", "freezer"];
    let have = ctrls.iter().all(|c| {
        Path::new("/sys/fs/cgroup")
            .join(c)
            .join("cgroup.procs")
            .exists()
    });
    if !require(
        have,
        "this test needs the v1 memory, pids, cpu and freezer hierarchies",
    ) {
        return;
    }
    let name = format!("unionfs-deleg-v1-{}", std::process::id());
    let deleg = DelegatedV1(
        ctrls
            .iter()
            .map(|c| Path::new("/sys/fs/cgroup").join(c).join(&name))
            .collect(),
    );
    for d in &deleg.0 {
        std::fs::create_dir(d).unwrap();
        for f in ["", "cgroup.procs", "tasks"] {
            nix::unistd::chown(&d.join(f), Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
        }
    }
    let l = UserLayers::new();
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "set -e; for c in memory pids cpu freezer; do echo $$ > /sys/fs/cgroup/$c/$NAME/cgroup.procs; done; \
             mknod -m 0666 \"$NODE/fuse\" c 10 229; mount --bind \"$NODE/fuse\" /dev/fuse; \
             exec setpriv --reuid=65534 --regid=65534 --clear-groups \"$@\"",
        )
        .arg("sh")
        .arg(BIN)
        .args(["--memory", "64M", "--pids", "32", "--tmp-upper", &l.lowers()])
        .args(["--", "/bin/sh", "-c", "x=aaaaaaaaaaaaaaaa; while true; do x=\"$x$x\"; done"])
        .env("NAME", &name);
    let node = TempDir::new("v1-node");
    cmd.env("NODE", &node.0);
    let o = spawn_cmd(&mut cmd).finish(Duration::from_secs(60));
    assert_eq!(o.code, 137, "{o:?}");
    assert!(!o.stderr.contains("warning"), "limits should apply: {o:?}");
    // The launcher's own cgroup (inside the delegated one) is gone again.
    for d in &deleg.0 {
        let left: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .collect();
        assert!(left.is_empty(), "{left:?} left in {}", d.display());
    }
}
