//! The layer model without a mount: lookup, listing, copy-up and the upper-changing operations
//! run directly on plain directories, and the upper and lowers are checked on disk.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use unionfs::layer::copyup::CopyData;
use unionfs::layer::ops::{self, NewKind, Owner, RenameMode};
use unionfs::layer::readdir;
use unionfs::layer::resolve::{self, DirSet};
use unionfs::layer::{Stack, StackConfig};
use unionfs_harness::ops::{lgetxattr, lsetxattr};

struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!(
            "unionfs-model-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
    fn dir(&self, name: &str) -> PathBuf {
        let p = self.0.join(name);
        fs::create_dir_all(&p).unwrap();
        p
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn write(p: &Path, data: &str) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn stack(t: &Tmp, lowers: &[&str]) -> Stack {
    Stack::open(&StackConfig {
        lowers: lowers.iter().map(|l| t.0.join(l)).collect(),
        upper: Some(t.dir("upper")),
        workdir: None,
    })
    .unwrap()
}

fn root_set(s: &Stack) -> DirSet {
    DirSet::open(s, b"", &resolve::root_layers(s)).unwrap()
}

fn names(s: &Stack, rel: &[u8]) -> Vec<String> {
    let set = if rel.is_empty() {
        root_set(s)
    } else {
        let parent = root_set(s);
        let f = resolve::lookup(s, &parent, rel).unwrap().unwrap();
        DirSet::open(s, rel, &f.dir_layers).unwrap()
    };
    let mut v: Vec<String> = readdir::list(s, &set, rel.is_empty())
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8(e.name).unwrap())
        .collect();
    v.sort();
    v
}

/// A fingerprint of a directory tree (names, types, modes, sizes, contents) to prove a lower
/// layer was not touched.
fn fingerprint(p: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&d).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let m = fs::symlink_metadata(e.path()).unwrap();
            let data = if m.is_file() {
                fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            out.push(format!(
                "{} {:o} {} {} {:?}",
                e.path().display(),
                m.mode(),
                m.size(),
                m.mtime_nsec(),
                data
            ));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

#[test]
fn whiteouts_hide_only_below_and_only_their_path() {
    let t = Tmp::new("wh");
    write(&t.dir("l2").join("test"), "low");
    write(&t.dir("l2").join("x/test"), "deep");
    write(&t.dir("l1").join("test"), "same layer");
    write(&t.dir("l1").join(".wh.test"), "");
    let s = stack(&t, &["l1", "l2"]);
    let set = root_set(&s);
    // Same-layer rule: l1/test stays visible beside its own whiteout.
    let f = resolve::lookup(&s, &set, b"test").unwrap().unwrap();
    assert_eq!(f.layer, 1);
    // Scoped by path: /x/test is untouched by /.wh.test.
    assert_eq!(names(&s, b"x"), vec!["test"]);
    assert!(resolve::lookup(&s, &set, b".wh.test").unwrap().is_none());
}

#[test]
fn chardev_whiteout_and_opaque_forms() {
    let t = Tmp::new("forms");
    let l1 = t.dir("l1");
    let l2 = t.dir("l2");
    write(&l2.join("gone"), "x");
    write(&l2.join("d/old"), "x");
    write(&l2.join("o/old"), "x");
    write(&l1.join("d/new"), "x");
    write(&l1.join("d/.wh..wh..opq"), "");
    fs::create_dir_all(l1.join("o")).unwrap();
    let st = std::process::Command::new("mknod")
        .arg(l1.join("gone"))
        .args(["c", "0", "0"])
        .status()
        .unwrap();
    assert!(st.success());
    let st = std::process::Command::new("setfattr")
        .args(["-n", "trusted.overlay.opaque", "-v", "y"])
        .arg(l1.join("o"))
        .status();
    let s = stack(&t, &["l1", "l2"]);
    assert!(resolve::lookup(&s, &root_set(&s), b"gone")
        .unwrap()
        .is_none());
    assert_eq!(names(&s, b"d"), vec!["new"]);
    if st.is_ok_and(|s| s.success()) {
        assert!(
            names(&s, b"o").is_empty(),
            "xattr-opaque dir shows lower entries"
        );
    }
    assert!(!names(&s, b"").contains(&"gone".to_string()));
}

#[test]
fn remove_writes_whiteout_only_when_a_lower_has_the_name() {
    let t = Tmp::new("rm");
    write(&t.dir("l1").join("low"), "x");
    let before = fingerprint(&t.0.join("l1"));
    let s = stack(&t, &["l1"]);
    let owner = Owner {
        uid: 0,
        gid: 0,
        umask: 0o022,
        acl: true,
    };
    let set = root_set(&s);
    ops::create(
        &s,
        b"",
        &set,
        b"mine",
        &NewKind::File {
            flags: libc::O_WRONLY,
        },
        0o644,
        owner,
    )
    .unwrap();
    let set = root_set(&s);
    ops::remove(&s, b"", &set, b"mine", false).unwrap();
    ops::remove(&s, b"", &set, b"low", false).unwrap();
    let upper = t.0.join("upper");
    assert!(!upper.join(".wh.mine").exists(), "needless whiteout");
    assert!(upper.join(".wh.low").exists(), "missing whiteout");
    assert!(names(&s, b"").is_empty());
    assert_eq!(before, fingerprint(&t.0.join("l1")));
}

#[test]
fn create_over_whiteout_removes_it_and_mkdir_is_opaque() {
    let t = Tmp::new("over");
    write(&t.dir("l1").join("d/old"), "x");
    write(&t.dir("l1").join("f"), "x");
    let s = stack(&t, &["l1"]);
    let owner = Owner {
        uid: 0,
        gid: 0,
        umask: 0o022,
        acl: true,
    };
    let set = root_set(&s);
    let f = resolve::lookup(&s, &set, b"d").unwrap().unwrap();
    let dset = DirSet::open(&s, b"d", &f.dir_layers).unwrap();
    ops::remove(&s, b"d", &dset, b"old", false).unwrap();
    ops::remove(&s, b"", &set, b"d", true).unwrap();
    ops::remove(&s, b"", &set, b"f", false).unwrap();
    let set = root_set(&s);
    ops::create(&s, b"", &set, b"d", &NewKind::Dir, 0o755, owner).unwrap();
    ops::create(
        &s,
        b"",
        &set,
        b"f",
        &NewKind::Symlink(b"target".to_vec()),
        0o777,
        owner,
    )
    .unwrap();
    let upper = t.0.join("upper");
    assert!(!upper.join(".wh.d").exists());
    assert!(!upper.join(".wh.f").exists());
    assert!(upper.join("d/.wh..wh..opq").exists());
    assert!(names(&s, b"d").is_empty(), "old files shine through");
    assert_eq!(
        fs::read_link(upper.join("f")).unwrap(),
        PathBuf::from("target")
    );
}

#[test]
fn rename_of_lower_directory_materializes_it() {
    let t = Tmp::new("mv");
    write(&t.dir("l2").join("d/a"), "a");
    write(&t.dir("l1").join("d/sub/b"), "b");
    let before = (fingerprint(&t.0.join("l1")), fingerprint(&t.0.join("l2")));
    let s = stack(&t, &["l1", "l2"]);
    let set = root_set(&s);
    ops::rename(&s, b"", &set, b"d", b"", &set, b"e", RenameMode::default()).unwrap();
    assert_eq!(names(&s, b""), vec!["e"]);
    assert_eq!(names(&s, b"e"), vec!["a", "sub"]);
    let upper = t.0.join("upper");
    assert!(upper.join(".wh.d").exists());
    assert!(upper.join("e/.wh..wh..opq").exists());
    assert_eq!(fs::read_to_string(upper.join("e/sub/b")).unwrap(), "b");
    assert_eq!(
        before,
        (fingerprint(&t.0.join("l1")), fingerprint(&t.0.join("l2")))
    );
}

#[test]
fn copy_up_keeps_metadata_holes_and_parent_times() {
    let t = Tmp::new("cu");
    let l1 = t.dir("l1");
    write(&l1.join("a/b/f"), "");
    let f = fs::OpenOptions::new()
        .write(true)
        .open(l1.join("a/b/f"))
        .unwrap();
    f.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, b"tail", (64 << 20) - 4).unwrap();
    drop(f);
    fs::set_permissions(l1.join("a/b/f"), fs::Permissions::from_mode(0o4751)).unwrap();
    std::os::unix::fs::chown(l1.join("a/b/f"), Some(1234), Some(4321)).unwrap();
    fs::set_permissions(l1.join("a"), fs::Permissions::from_mode(0o705)).unwrap();
    let _ = std::process::Command::new("setfattr")
        .args(["-n", "user.k", "-v", "v"])
        .arg(l1.join("a/b/f"))
        .status();
    let lower_meta = fs::metadata(l1.join("a/b/f")).unwrap();
    let lower_a = fs::metadata(l1.join("a")).unwrap();
    let s = stack(&t, &["l1"]);
    ops::copy_up(&s, b"a/b", b"f", 1, false, CopyData::Full).unwrap();
    let up = t.0.join("upper");
    let m = fs::metadata(up.join("a/b/f")).unwrap();
    assert_eq!(m.mode(), lower_meta.mode());
    assert_eq!((m.uid(), m.gid()), (1234, 4321));
    assert_eq!(m.len(), 64 << 20);
    assert!(
        m.blocks() < 1024,
        "holes were filled: {} blocks",
        m.blocks()
    );
    assert_eq!(
        (m.mtime(), m.mtime_nsec()),
        (lower_meta.mtime(), lower_meta.mtime_nsec())
    );
    let a = fs::metadata(up.join("a")).unwrap();
    assert_eq!(a.mode() & 0o7777, 0o705);
    assert_eq!(
        (a.mtime(), a.mtime_nsec()),
        (lower_a.mtime(), lower_a.mtime_nsec())
    );
    let data = fs::read(up.join("a/b/f")).unwrap();
    assert_eq!(&data[data.len() - 4..], b"tail");
    // Nothing left behind in the work dir.
    let work: Vec<_> = fs::read_dir(up.join(".wh..wh.unionfs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "index")
        .collect();
    assert!(work.is_empty(), "staging leftovers: {work:?}");
}

#[test]
fn names_with_the_whiteout_prefix_are_refused() {
    let t = Tmp::new("names");
    t.dir("l1");
    let s = stack(&t, &["l1"]);
    let set = root_set(&s);
    let owner = Owner {
        uid: 0,
        gid: 0,
        umask: 0o022,
        acl: true,
    };
    let e = ops::create(&s, b"", &set, b".wh.x", &NewKind::Dir, 0o755, owner).unwrap_err();
    assert_eq!(e, nix::errno::Errno::EINVAL);
}

#[test]
fn link_counts_of_lower_hard_links_follow_changes() {
    let t = Tmp::new("nlink");
    let l1 = t.dir("l1");
    write(&l1.join("a"), "x");
    fs::hard_link(l1.join("a"), l1.join("b")).unwrap();
    fs::hard_link(l1.join("a"), l1.join("c")).unwrap();
    let s = stack(&t, &["l1"]);
    let set = root_set(&s);
    let a = resolve::lookup(&s, &set, b"a").unwrap().unwrap();
    assert_eq!(s.view_nlink(a.ino, &a.st), 3);
    // Copy one name up: all names still count, the index link does not.
    ops::copy_up(&s, b"", b"a", a.layer, false, CopyData::Full).unwrap();
    let set = root_set(&s);
    let a2 = resolve::lookup(&s, &set, b"a").unwrap().unwrap();
    assert_eq!(a2.ino, a.ino);
    assert_eq!(s.view_nlink(a2.ino, &a2.st), 3);
    // Remove another name (still only in the lower): the rest show one link less.
    ops::remove(&s, b"", &set, b"b", false).unwrap();
    let set = root_set(&s);
    let c = resolve::lookup(&s, &set, b"c").unwrap().unwrap();
    assert_eq!(s.view_nlink(c.ino, &c.st), 2);
    assert_eq!(
        fs::read_to_string(l1.join("b")).unwrap(),
        "x",
        "lower changed"
    );
}

/// A copy flushed behind is in the upper at once, with a record until it is flushed. The
/// repair a mount runs keeps a copy recorded in this boot (a daemon killed meanwhile), flushed
/// with its writes, and makes one recorded in another boot (a machine crash) again from its
/// lower file.
#[test]
fn copy_flushed_behind_is_published_at_once_and_made_whole_by_the_next_open() {
    use std::os::unix::fs::FileExt;
    use unionfs::layer::behind;
    use unionfs::layer::copyup::{copy_up_maybe_behind, CopiedUp};
    use unionfs::layer::repair::repair_unflushed;
    let t = Tmp::new("behind");
    let big = "x".repeat(10_000);
    for f in ["a", "b", "c"] {
        write(&t.0.join(format!("l/d/{f}")), &big);
    }
    write(&t.0.join("l/small"), "small");
    let upper = t.0.join("upper");
    let work = upper.join(".wh..wh.unionfs");
    let records = || -> Vec<PathBuf> {
        fs::read_dir(&work)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("#unionfs-behind-")
            })
            .collect()
    };
    let s = stack(&t, &["l"]);
    // Below the size: flushed, no record.
    let small = copy_up_maybe_behind(&s, b"", b"small", 1, CopyData::Full, Some(100)).unwrap();
    assert!(matches!(small, CopiedUp::Published { .. }), "{small:?}");
    assert!(records().is_empty());
    let unflushed = |s: &Stack, name: &[u8]| match copy_up_maybe_behind(
        s,
        b"d",
        name,
        1,
        CopyData::Full,
        Some(100),
    )
    .unwrap()
    {
        CopiedUp::Unflushed(c) => c,
        other => panic!("flushed before it returned: {other:?}"),
    };
    let a = unflushed(&s, b"a");
    assert_eq!(
        fs::read_to_string(upper.join("d/a")).unwrap(),
        big,
        "not in the upper"
    );
    assert_eq!(records().len(), 1);
    behind::flush(&s, &a).unwrap();
    assert!(records().is_empty(), "the flush left its record");
    // Written through its own fd, then its owner goes without flushing it.
    let write_unflushed = |s: &Stack, name: &[u8], with: &str| {
        let c = unflushed(s, name);
        let file = fs::File::from(c.file.try_clone().unwrap());
        file.write_all_at(with.as_bytes(), 0).unwrap();
    };
    write_unflushed(&s, b"b", "NEWB");
    assert_eq!(records().len(), 1);
    drop(s);
    let mut want_b = big.clone();
    want_b.replace_range(0..4, "NEWB");
    // Same boot: kept as written, flushed.
    let s = stack(&t, &["l"]);
    repair_unflushed(&s);
    assert!(records().is_empty());
    assert_eq!(fs::read_to_string(upper.join("d/b")).unwrap(), want_b);
    // Another boot (its record rewritten as a machine crash would leave it): made again.
    write_unflushed(&s, b"c", "NEWC");
    let rec = records().pop().unwrap();
    let xattr = "trusted.unionfs.behind";
    let body = String::from_utf8(lgetxattr(&rec, xattr).unwrap()).unwrap();
    let (_, rest) = body.split_once('\n').unwrap();
    lsetxattr(&rec, xattr, format!("another-boot\n{rest}").as_bytes()).unwrap();
    drop(s);
    let s = stack(&t, &["l"]);
    assert_eq!(
        records().len(),
        1,
        "opening a stack repairs nothing: mounting does"
    );
    repair_unflushed(&s);
    assert!(records().is_empty());
    assert_eq!(
        fs::read_to_string(upper.join("d/c")).unwrap(),
        big,
        "not made again"
    );
    assert_eq!(fs::read_to_string(upper.join("d/b")).unwrap(), want_b);
    for f in ["a", "b", "c"] {
        assert_eq!(
            fs::read_to_string(t.0.join(format!("l/d/{f}"))).unwrap(),
            big,
            "lower changed"
        );
    }
    // A record of another boot whose lower file is gone (the layers changed): nothing to copy
    // again from, so the file stays as it is and the record goes.
    write(&t.0.join("l/d/gone"), &big);
    write_unflushed(&s, b"gone", "NEWG");
    let rec = records().pop().unwrap();
    let body = String::from_utf8(lgetxattr(&rec, xattr).unwrap()).unwrap();
    let (_, rest) = body.split_once('\n').unwrap();
    lsetxattr(&rec, xattr, format!("another-boot\n{rest}").as_bytes()).unwrap();
    fs::remove_file(t.0.join("l/d/gone")).unwrap();
    repair_unflushed(&s);
    assert!(records().is_empty());
    let mut want_g = big.clone();
    want_g.replace_range(0..4, "NEWG");
    assert_eq!(fs::read_to_string(upper.join("d/gone")).unwrap(), want_g);
}
