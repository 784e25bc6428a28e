//! The harness tests itself: wrong expectations must fail with readable messages, and the
//! tree model and comparisons must see what they are meant to see.

mod common;

use std::process::Command;

use common::can_run;
use unionfs_harness::report::{self, Status};
use unionfs_harness::scenario::{self, Kind};
use unionfs_harness::view::{self, Fields, Node, Tree};
use unionfs_harness::{diff, runner};

const BIN: &str = env!("CARGO_BIN_EXE_unionfs-harness");

const WRONG: &str = r#"
about = "deliberately wrong expectations"
covers = [1]
[[lower]]
entries = [{ path = "f", content = "right" }]
[[step]]
op = "unlink"
path = "missing"
[[step]]
op = "read"
path = "f"
expect_data = "wrong data"
[expect.view]
entries = [{ path = "f", content = "wrong" }, { path = "g" }]
"#;

#[test]
fn wrong_expectations_fail_readably() {
    if !can_run("unionfs") {
        return;
    }
    let mut s = scenario::parse(WRONG).expect("parses");
    s.name = "self-wrong".into();
    let r = runner::run(&s, "unionfs");
    assert_eq!(r.status, Status::Fail, "{}", report::text(&r));
    let text = report::text(&r);
    for want in [
        "FAIL  self-wrong [unionfs]",
        "step 1 (unlink \"missing\"): expected ok, got ENOENT",
        "step 2 (read \"f\"): data: expected \"wrong data\", got \"right\"",
        "view f: content: expected \"wrong\", got \"right\"",
        "view g: expected to exist, it does not",
        "the view was:",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn right_expectations_pass() {
    if !can_run("unionfs") {
        return;
    }
    let fixed = WRONG
        .replace(
            "path = \"missing\"",
            "path = \"missing\"\nexpect = \"ENOENT\"",
        )
        .replace("wrong data", "right")
        .replace(
            r#"content = "wrong" }, { path = "g" }"#,
            r#"content = "right" }"#,
        );
    let s = scenario::parse(&fixed).expect("parses");
    let r = runner::run(&s, "unionfs");
    assert_eq!(r.status, Status::Pass, "{}", report::text(&r));
}

#[test]
fn cli_exit_status_and_json() {
    if !can_run("unionfs") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("harness-self-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, WRONG).unwrap();
    let out = Command::new(BIN)
        .args(["run", "--json"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "a failing scenario must exit 1");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(v[0]["status"], "fail");
    assert!(v[0]["messages"].as_array().is_some_and(|m| !m.is_empty()));
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "covers = [1]\n[[lower]]\nentries = [{ path = \"f\" }]\n",
    )
    .unwrap();
    let out = Command::new(BIN).arg("run").arg(&good).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("PASS  good [unionfs]"), "{text}");
    let out = Command::new(BIN)
        .args(["run", "--impl", "nonsense"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("unknown implementation"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_scenarios_are_rejected_with_a_reason() {
    let e = scenario::parse("[[step]]\nop = \"frobnicate\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown op \"frobnicate\""), "{e}");
    let e = scenario::parse("[[lower]]\nentries = [{ path = \"/abs\" }]\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("must be relative"), "{e}");
    let e = scenario::parse("nonsense = 1\n").unwrap_err().to_string();
    assert!(e.contains("unknown field"), "{e}");
}

fn file(data: &str) -> Node {
    let mut n = Node {
        kind: Kind::File,
        mode: 0o644,
        size: data.len() as u64,
        ..Node::default()
    };
    n.data = Some(data.as_bytes().to_vec());
    n.digest = view::digest_bytes(data.as_bytes());
    n
}

fn dir(opaque: bool) -> Node {
    Node {
        kind: Kind::Dir,
        mode: 0o755,
        opaque,
        ..Node::default()
    }
}

#[test]
fn model_merge_follows_the_layer_rules() {
    let mut top = Tree::default();
    top.nodes.insert(".".into(), dir(false));
    top.nodes.insert("f".into(), file("top"));
    top.nodes.insert("o".into(), dir(true));
    top.nodes.insert("same".into(), file("kept"));
    top.whiteouts.insert("same".into());
    top.whiteouts.insert("gone".into());
    let mut low = Tree::default();
    low.nodes.insert(".".into(), dir(false));
    low.nodes.insert("f".into(), file("low"));
    low.nodes.insert("o".into(), dir(false));
    low.nodes.insert("o/hidden".into(), file("h"));
    low.nodes.insert("gone".into(), file("g"));
    low.nodes.insert("same".into(), file("below"));
    low.nodes.insert("m/x".into(), file("x"));
    low.nodes.insert("m".into(), dir(false));
    let v = view::merge(&[&top, &low]);
    let paths: Vec<&str> = v.nodes.keys().map(|s| s.as_str()).collect();
    assert_eq!(paths, [".", "f", "m", "m/x", "o", "same"]);
    assert_eq!(v.nodes["f"].data.as_deref(), Some(&b"top"[..]));
    assert_eq!(v.nodes["same"].data.as_deref(), Some(&b"kept"[..]));
    assert_eq!(v.nodes["."].nlink, 4, "2 + subdirectories m and o");
}

#[test]
fn tree_diff_names_path_and_field() {
    let mut a = Tree::default();
    a.nodes.insert("f".into(), file("one"));
    let mut b = a.clone();
    b.nodes.get_mut("f").unwrap().mode = 0o600;
    let d = view::diff(&a, &b, Fields::VIEWS);
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].path.as_str(), d[0].field.as_str()), ("f", "mode"));
    assert_eq!((d[0].a.as_str(), d[0].b.as_str()), ("0644", "0600"));
    b.nodes.insert("f".into(), file("two"));
    let d = view::diff(&a, &b, Fields::VIEWS);
    assert_eq!(d[0].field, "content");
    assert!(view::diff(&a, &a, Fields::VIEWS).is_empty());
}

#[test]
fn differential_run_agrees_on_a_plain_scenario() {
    if !can_run("unionfs") || !can_run("kernel") {
        return;
    }
    let s = scenario::parse(
        "[[lower]]\nentries = [{ path = \"d/f\", content = \"x\" }]\n\
         [[step]]\nop = \"append\"\npath = \"d/f\"\ndata = \"y\"\n\
         [[step]]\nop = \"rename\"\npath = \"d\"\nto = \"e\"\n",
    )
    .unwrap();
    // The directory rename is the documented difference: bridged with mv's fallback.
    let r = diff::run(&s, "unionfs", "kernel", 1);
    assert_eq!(r.status, Status::Pass, "{}", report::text(&r));
}

/// A container started on this machine copies every mount into its new mount namespace, and
/// with index=on the kernel refuses an upper that a live overlay (such a copy of our previous
/// mount) still uses. A kernel remount must wait for the copy to go, not fail: fuzz seeds 1982
/// and 4191 failed so (EBUSY after 3 s) while launch tests ran beside them.
#[test]
fn kernel_remount_waits_while_another_namespace_holds_the_old_mount() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};
    if !can_run("kernel") {
        return;
    }
    let s = scenario::parse(
        "[[lower]]\nentries = [{ path = \"f\", content = \"lower\" }]\n\
         [[step]]\nop = \"create\"\npath = \"g\"\ndata = \"new\"\n\
         [[step]]\nop = \"remount\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut inst = runner::Instance::start(&s, "kernel").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(inst.step(&s.step[0]).result, "ok");
    // Longer than the 3 s the harness used to wait, well below what it waits now.
    let hold = Duration::from_secs(5);
    assert!(hold < unionfs_harness::impls::KERNEL_BUSY_WAIT);
    let mut holder = Command::new("unshare")
        .args(["--mount", "sh", "-c"])
        .arg(format!("echo ready; exec sleep {}", hold.as_secs()))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running unshare (util-linux): {e}"));
    let mut line = String::new();
    let out = holder.stdout.take().expect("piped stdout");
    BufReader::new(out).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "unshare --mount did not start");
    let t0 = Instant::now();
    let o = inst.step(&s.step[1]);
    let took = t0.elapsed();
    // Our own child, by pid; it has exited by now when the remount waited for it.
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(
        o.result, "ok",
        "remount while a namespace held the old mount"
    );
    assert!(
        took >= Duration::from_secs(3),
        "the remount took {took:?}: the namespace's copy did not keep the upper busy, so \
         this test no longer shows the wait"
    );
    let v = inst.view().unwrap_or_else(|e| panic!("{e}"));
    let data = |t: &Tree, p: &str| t.nodes.get(p).and_then(|n| n.data.clone());
    assert_eq!(
        data(&v, "g").as_deref(),
        Some(&b"new"[..]),
        "view after the remount"
    );
    assert_eq!(
        data(&v, "f").as_deref(),
        Some(&b"lower"[..]),
        "view after the remount"
    );
    let fin = inst.finish().unwrap_or_else(|e| panic!("{e}"));
    let upper = fin.upper.expect("the scenario has an upper");
    assert_eq!(
        data(&upper, "g").as_deref(),
        Some(&b"new"[..]),
        "upper on disk"
    );
    assert!(
        !upper.nodes.contains_key("f"),
        "f was only read: no copy-up"
    );
    assert!(fin.lower_changes.is_empty(), "{:?}", fin.lower_changes);
}
