//! The unionfs-snapshotter daemon over its real gRPC socket, without containerd: the
//! semantics containerd's overlay snapshotter defines (kinds, parents, labels, error codes),
//! metadata that survives restarts, and a `kill -9` at each dangerous point of Prepare, Commit
//! and Remove leaving the store and the disk in agreement.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use containerd_snapshots::api::snapshots::v1::snapshots_client::SnapshotsClient;
use containerd_snapshots::api::snapshots::v1::*;
use containerd_snapshots::api::types::Mount;
use containerd_snapshots::tonic::transport::{Channel, Endpoint, Uri};
use containerd_snapshots::tonic::Code;
use tokio::net::UnixStream;
use tokio_stream::StreamExt;

const BIN: &str = env!("CARGO_BIN_EXE_unionfs-snapshotter");

/// A temp dir with a snapshotter on it; killed by pid and removed on drop.
struct Daemon {
    dir: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    fn new(tag: &str) -> Daemon {
        let dir = std::env::temp_dir().join(format!("usnap-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Daemon { dir, child: None }
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("s.sock")
    }

    fn marker(&self) -> PathBuf {
        self.dir.join("paused")
    }

    /// Starts the daemon (with a pause point when `pause` is given) and waits for its socket.
    fn start(&mut self, pause: Option<&str>) {
        assert!(self.child.is_none(), "already running");
        let _ = std::fs::remove_file(self.marker());
        let mut c = Command::new(BIN);
        c.arg("--address")
            .arg(self.sock())
            .arg("--root")
            .arg(self.root())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("log")).unwrap());
        if let Some(p) = pause {
            c.env("UNIONFS_SNAPSHOTTER_TEST_PAUSE", p)
                .env("UNIONFS_SNAPSHOTTER_TEST_PAUSED", self.marker());
        }
        let mut child = c.spawn().unwrap();
        let t = Instant::now();
        while std::os::unix::net::UnixStream::connect(self.sock()).is_err() {
            if let Some(st) = child.try_wait().unwrap() {
                panic!("snapshotter exited ({st}) before serving: {}", self.log());
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "no socket: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait: a clean stop.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .unwrap();
            let st = c.wait().unwrap();
            assert!(st.success(), "SIGTERM exit: {st}: {}", self.log());
        }
    }

    async fn client(&self) -> SnapshotsClient<Channel> {
        let path = self.sock();
        let ch = Endpoint::try_from("http://[::]:50051")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                UnixStream::connect(path.clone())
            }))
            .await
            .unwrap();
        SnapshotsClient::new(ch)
    }

    async fn wait_paused(&self) {
        let t = Instant::now();
        while !self.marker().exists() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "never paused: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Names under ROOT/snapshots, sorted.
    fn dirs(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root().join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn labels(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn prepare(
    c: &mut SnapshotsClient<Channel>,
    key: &str,
    parent: &str,
) -> Result<Vec<Mount>, Code> {
    c.prepare(PrepareSnapshotRequest {
        snapshotter: "unionfs".into(),
        key: key.into(),
        parent: parent.into(),
        labels: labels(&[("l", key)]),
    })
    .await
    .map(|r| r.into_inner().mounts)
    .map_err(|s| s.code())
}

async fn view(
    c: &mut SnapshotsClient<Channel>,
    key: &str,
    parent: &str,
) -> Result<Vec<Mount>, Code> {
    c.view(ViewSnapshotRequest {
        snapshotter: "unionfs".into(),
        key: key.into(),
        parent: parent.into(),
        labels: HashMap::new(),
    })
    .await
    .map(|r| r.into_inner().mounts)
    .map_err(|s| s.code())
}

async fn commit(c: &mut SnapshotsClient<Channel>, name: &str, key: &str) -> Result<(), Code> {
    c.commit(CommitSnapshotRequest {
        snapshotter: "unionfs".into(),
        name: name.into(),
        key: key.into(),
        labels: labels(&[("committed", name)]),
    })
    .await
    .map(|_| ())
    .map_err(|s| s.code())
}

async fn remove(c: &mut SnapshotsClient<Channel>, key: &str) -> Result<(), Code> {
    c.remove(RemoveSnapshotRequest {
        snapshotter: "unionfs".into(),
        key: key.into(),
    })
    .await
    .map(|_| ())
    .map_err(|s| s.code())
}

async fn stat(c: &mut SnapshotsClient<Channel>, key: &str) -> Result<Info, Code> {
    c.stat(StatSnapshotRequest {
        snapshotter: "unionfs".into(),
        key: key.into(),
    })
    .await
    .map(|r| r.into_inner().info.unwrap())
    .map_err(|s| s.code())
}

async fn walk(c: &mut SnapshotsClient<Channel>, filters: &[&str]) -> Result<Vec<Info>, Code> {
    let mut s = c
        .list(ListSnapshotsRequest {
            snapshotter: "unionfs".into(),
            filters: filters.iter().map(|f| f.to_string()).collect(),
        })
        .await
        .map_err(|s| s.code())?
        .into_inner();
    let mut out = Vec::new();
    while let Some(r) = s.next().await {
        out.extend(r.map_err(|s| s.code())?.info);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn names(infos: &[Info]) -> Vec<&str> {
    infos.iter().map(|i| i.name.as_str()).collect()
}

/// Kinds as the API numbers them.
const VIEW: i32 = 1;
const ACTIVE: i32 = 2;
const COMMITTED: i32 = 3;

fn upper_of(m: &[Mount]) -> PathBuf {
    let m = &m[0];
    if m.r#type == "bind" {
        return PathBuf::from(&m.source);
    }
    let u = m
        .options
        .iter()
        .find_map(|o| o.strip_prefix("upperdir="))
        .unwrap();
    PathBuf::from(u)
}

#[tokio::test(flavor = "current_thread")]
async fn snapshot_semantics_as_containerd_defines_them() {
    let mut d = Daemon::new("sem");
    d.start(None);
    let mut c = d.client().await;

    // A first layer: a bind mount of its own directory, writable.
    let m = prepare(&mut c, "a", "").await.unwrap();
    assert_eq!((m.len(), m[0].r#type.as_str()), (1, "bind"));
    assert_eq!(m[0].options, ["rw", "rbind"]);
    let a_fs = upper_of(&m);
    std::fs::write(a_fs.join("f"), "layer a").unwrap();
    assert_eq!(prepare(&mut c, "a", "").await, Err(Code::AlreadyExists));
    assert_eq!(prepare(&mut c, "x", "missing").await, Err(Code::NotFound));
    assert_eq!(
        prepare(&mut c, "x", "a").await,
        Err(Code::InvalidArgument),
        "parent not committed"
    );
    assert_eq!(prepare(&mut c, "", "").await, Err(Code::InvalidArgument));
    let info = stat(&mut c, "a").await.unwrap();
    assert_eq!((info.kind, info.parent.as_str()), (ACTIVE, ""));
    assert_eq!(info.labels, labels(&[("l", "a")]));

    commit(&mut c, "A", "a").await.unwrap();
    assert_eq!(stat(&mut c, "a").await, Err(Code::NotFound));
    let info = stat(&mut c, "A").await.unwrap();
    assert_eq!(info.kind, COMMITTED);
    assert_eq!(info.labels, labels(&[("committed", "A")]));
    // Commit moves nothing: the layer is where it was written.
    assert_eq!(std::fs::read_to_string(a_fs.join("f")).unwrap(), "layer a");
    assert_eq!(commit(&mut c, "A", "a").await, Err(Code::NotFound));
    let u = c
        .usage(UsageRequest {
            snapshotter: "unionfs".into(),
            key: "A".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.inodes, 2, "fs and f");
    assert!(u.size >= 4096, "{u:?}");
    let err = c
        .mounts(MountsRequest {
            snapshotter: "unionfs".into(),
            key: "A".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::FailedPrecondition,
        "no mounts of a committed snapshot"
    );

    // A chain: B on A, then an active c and views on B.
    prepare(&mut c, "b", "A").await.unwrap();
    commit(&mut c, "B", "b").await.unwrap();
    let m = prepare(&mut c, "c", "B").await.unwrap();
    assert_eq!(m[0].r#type, "fuse3.unionfs-mount");
    let lower = m[0]
        .options
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap();
    let lowers: Vec<&str> = lower.split(':').collect();
    assert_eq!(lowers.len(), 2, "B then A: {lower}");
    assert_eq!(Path::new(lowers[1]), a_fs);
    assert!(m[0].options.iter().any(|o| o.starts_with("workdir=")));
    assert!(
        m[0].options.iter().any(|o| o.starts_with("shared=")),
        "shared is the default: {:?}",
        m[0].options
    );
    let again = c
        .mounts(MountsRequest {
            snapshotter: "unionfs".into(),
            key: "c".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!(again, m, "Mounts gives what Prepare gave");

    let v = view(&mut c, "v1", "A").await.unwrap();
    assert_eq!(
        (v[0].r#type.as_str(), v[0].options.as_slice()),
        ("bind", &["ro".to_string(), "rbind".to_string()][..])
    );
    assert_eq!(
        Path::new(&v[0].source),
        a_fs,
        "a view of one layer is that layer"
    );
    let v = view(&mut c, "v2", "B").await.unwrap();
    assert_eq!(v[0].r#type, "fuse3.unionfs-mount");
    assert!(v[0].options.contains(&"ro".to_string()));
    assert!(!v[0].options.iter().any(|o| o.starts_with("upperdir=")));
    assert_eq!(stat(&mut c, "v2").await.unwrap().kind, VIEW);
    assert_eq!(
        commit(&mut c, "V", "v2").await,
        Err(Code::FailedPrecondition),
        "a view cannot be committed"
    );
    assert_eq!(commit(&mut c, "A", "c").await, Err(Code::AlreadyExists));

    // Remove is refused while children exist, in both steps of the chain.
    assert_eq!(remove(&mut c, "A").await, Err(Code::FailedPrecondition));
    assert_eq!(remove(&mut c, "B").await, Err(Code::FailedPrecondition));
    assert_eq!(remove(&mut c, "nope").await, Err(Code::NotFound));

    // Update: labels only, by field path.
    let upd = |name: &str, kv: &[(&str, &str)], paths: &[&str]| UpdateSnapshotRequest {
        snapshotter: "unionfs".into(),
        info: Some(Info {
            name: name.into(),
            labels: labels(kv),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
    };
    let i = c
        .update(upd("B", &[("x", "1"), ("y", "2")], &["labels.x"]))
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(i.labels, labels(&[("committed", "B"), ("x", "1")]));
    let i = c
        .update(upd("B", &[], &["labels.committed"]))
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(
        i.labels,
        labels(&[("x", "1")]),
        "labels.K without a value removes K"
    );
    let i = c
        .update(upd("B", &[("z", "3")], &["labels"]))
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(i.labels, labels(&[("z", "3")]));
    assert_eq!(
        c.update(upd("B", &[], &["parent"]))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        c.update(upd("nope", &[], &["labels"]))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        stat(&mut c, "B").await.unwrap().labels,
        labels(&[("z", "3")])
    );

    // Walk with and without filters.
    assert_eq!(
        names(&walk(&mut c, &[]).await.unwrap()),
        ["A", "B", "c", "v1", "v2"]
    );
    assert_eq!(
        names(&walk(&mut c, &["kind==committed"]).await.unwrap()),
        ["A", "B"]
    );
    assert_eq!(
        names(&walk(&mut c, &["parent==B", "name==A"]).await.unwrap()),
        ["A", "c", "v2"]
    );
    assert_eq!(names(&walk(&mut c, &["labels.z==3"]).await.unwrap()), ["B"]);
    assert_eq!(walk(&mut c, &["size==1"]).await, Err(Code::InvalidArgument));

    // Usage of an active snapshot follows what is written into it.
    let c_fs = upper_of(&m);
    std::fs::write(c_fs.join("big"), vec![7u8; 1 << 20]).unwrap();
    let u = c
        .usage(UsageRequest {
            snapshotter: "unionfs".into(),
            key: "c".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.inodes, 2);
    assert!(u.size >= 1 << 20, "{u:?}");

    // Removing children, then parents; directories go with them.
    for k in ["c", "v1", "v2", "B", "A"] {
        remove(&mut c, k)
            .await
            .unwrap_or_else(|e| panic!("remove {k}: {e:?}"));
    }
    assert!(walk(&mut c, &[]).await.unwrap().is_empty());
    assert!(d.dirs().is_empty(), "{:?}", d.dirs());
    assert!(!a_fs.exists());

    // Cleanup deletes directories the store does not know (and nothing else).
    prepare(&mut c, "keep", "").await.unwrap();
    std::fs::create_dir_all(d.root().join("snapshots/999/fs")).unwrap();
    std::fs::create_dir_all(d.root().join("snapshots/rm-5")).unwrap();
    c.cleanup(CleanupRequest {
        snapshotter: "unionfs".into(),
    })
    .await
    .unwrap();
    assert_eq!(d.dirs().len(), 1, "{:?}", d.dirs());
    assert!(stat(&mut c, "keep").await.is_ok());
    d.stop();
}

#[tokio::test(flavor = "current_thread")]
async fn metadata_survives_restarts_and_a_second_daemon_is_refused() {
    let mut d = Daemon::new("restart");
    d.start(None);
    let mut c = d.client().await;
    let m = prepare(&mut c, "a", "").await.unwrap();
    std::fs::write(upper_of(&m).join("f"), "x").unwrap();
    commit(&mut c, "A", "a").await.unwrap();
    prepare(&mut c, "b", "A").await.unwrap();
    let before = walk(&mut c, &[]).await.unwrap();

    // Another daemon on the same root or socket is refused with a message naming the cause.
    let o = Command::new(BIN)
        .arg("--address")
        .arg(d.dir.join("other.sock"))
        .arg("--root")
        .arg(d.root())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(msg.contains("another unionfs-snapshotter"), "{msg}");
    let o = Command::new(BIN)
        .arg("--address")
        .arg(d.sock())
        .arg("--root")
        .arg(d.dir.join("root2"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("served by another process"));

    d.stop();
    d.start(None);
    let mut c = d.client().await;
    assert_eq!(
        walk(&mut c, &[]).await.unwrap(),
        before,
        "after SIGTERM and restart"
    );
    d.kill9();
    d.start(None);
    let mut c = d.client().await;
    assert_eq!(
        walk(&mut c, &[]).await.unwrap(),
        before,
        "after kill -9 and restart"
    );
    assert_eq!(
        remove(&mut c, "A").await,
        Err(Code::FailedPrecondition),
        "children still known"
    );
    // The id counter survived too: a new snapshot gets a new directory.
    let m = prepare(&mut c, "n", "").await.unwrap();
    assert_eq!(upper_of(&m), d.root().join("snapshots/3/fs"));
}

/// Starts a daemon that pauses at `point`, runs `op` until it pauses, kills it with -9 and
/// starts it again without the pause.
async fn crash_at<F, Fut>(d: &mut Daemon, point: &str, op: F)
where
    F: FnOnce(SnapshotsClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    d.stop();
    d.start(Some(point));
    let c = d.client().await;
    let task = tokio::spawn(op(c));
    d.wait_paused().await;
    d.kill9();
    let _ = task.await;
    d.start(None);
}

#[tokio::test(flavor = "current_thread")]
async fn kill_9_in_the_middle_of_prepare_commit_or_remove_leaves_no_half_state() {
    let mut d = Daemon::new("crash");
    d.start(None);
    let mut c = d.client().await;
    let m = prepare(&mut c, "a", "").await.unwrap();
    let a_fs = upper_of(&m);
    std::fs::write(a_fs.join("f"), "data of a").unwrap();
    commit(&mut c, "A", "a").await.unwrap();
    let m = prepare(&mut c, "b", "A").await.unwrap();
    let b_fs = upper_of(&m);
    std::fs::write(b_fs.join("g"), "data of b").unwrap();

    // Prepare: the directory was renamed into place, the transaction not committed.
    crash_at(&mut d, "prepare-in-txn", |mut c| async move {
        let _ = prepare(&mut c, "p", "A").await;
    })
    .await;
    let mut c = d.client().await;
    assert_eq!(stat(&mut c, "p").await, Err(Code::NotFound));
    assert_eq!(d.dirs(), ["1", "2"], "the orphan directory of p is gone");
    prepare(&mut c, "p", "A")
        .await
        .expect("the key is free again");
    remove(&mut c, "p").await.unwrap();

    // Commit: every write of the transaction done, not committed.
    crash_at(&mut d, "commit-in-txn", |mut c| async move {
        let _ = commit(&mut c, "B", "b").await;
    })
    .await;
    let mut c = d.client().await;
    assert_eq!(
        stat(&mut c, "b").await.unwrap().kind,
        ACTIVE,
        "b is still active"
    );
    assert_eq!(
        stat(&mut c, "B").await,
        Err(Code::NotFound),
        "and B does not exist"
    );
    assert_eq!(
        std::fs::read_to_string(b_fs.join("g")).unwrap(),
        "data of b"
    );
    assert_eq!(
        remove(&mut c, "A").await,
        Err(Code::FailedPrecondition),
        "b still counts as a child"
    );
    commit(&mut c, "B", "b")
        .await
        .expect("the commit can be made again");
    assert_eq!(stat(&mut c, "B").await.unwrap().parent, "A");
    assert_eq!(
        std::fs::read_to_string(b_fs.join("g")).unwrap(),
        "data of b"
    );

    // Remove, before its transaction commits: nothing happened.
    crash_at(&mut d, "remove-in-txn", |mut c| async move {
        let _ = remove(&mut c, "B").await;
    })
    .await;
    let mut c = d.client().await;
    assert_eq!(stat(&mut c, "B").await.unwrap().kind, COMMITTED);
    assert_eq!(
        std::fs::read_to_string(b_fs.join("g")).unwrap(),
        "data of b"
    );
    assert_eq!(
        remove(&mut c, "A").await,
        Err(Code::FailedPrecondition),
        "B still counts as a child"
    );

    // Remove, after the commit, its directory moved aside and not yet deleted.
    crash_at(&mut d, "remove-after-commit", |mut c| async move {
        let _ = remove(&mut c, "B").await;
    })
    .await;
    let mut c = d.client().await;
    assert_eq!(stat(&mut c, "B").await, Err(Code::NotFound));
    assert!(!b_fs.exists());
    assert_eq!(d.dirs(), ["1"], "rm-2 was deleted by the recovery pass");
    assert_eq!(
        std::fs::read_to_string(a_fs.join("f")).unwrap(),
        "data of a"
    );
    remove(&mut c, "A")
        .await
        .expect("A has no children any more");
    assert!(d.dirs().is_empty());
}

#[test]
fn command_line_manners_and_refused_roots() {
    let d = Daemon::new("cli");
    unionfs_harness::support::assert_help_and_version(
        "unionfs-snapshotter",
        Path::new(BIN),
        env!("CARGO_PKG_VERSION"),
        &d.dir.join("scratch"),
    );
    let refuse = |args: &[&str], want: &str| {
        let o = Command::new(BIN)
            .args(args)
            .current_dir(&d.dir)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{args:?}: {err}");
    };
    let sock = d.sock();
    let sock = sock.to_str().unwrap();
    refuse(
        &["--address", sock, "--root", "rel"],
        "give an absolute path",
    );
    refuse(
        &["--address", sock, "--root", "/tmp/a,b"],
        "choose a root without",
    );
    let long = format!("/tmp/{}", "x".repeat(120));
    refuse(
        &[
            "--address",
            sock,
            "--root",
            "/tmp/r",
            "--shared-socket",
            &long,
        ],
        "shorter --shared-socket",
    );
    refuse(&["--root", "/tmp/r"], "Usage:");
    // Nothing was created by any of them.
    assert!(!Path::new("/tmp/a,b").exists() && !Path::new("/tmp/r").exists());
    assert!(!d.dir.join("rel").exists() && !d.sock().exists());
}
