//! Copy-ups flushed behind (issue 16): a large file's copy waits in the work dir for its
//! flush while the writer goes on, and only a flushed copy enters the upper. While it waits
//! the view must be the file as written; whatever needs the copy in its place (fsync, a
//! rename, an unlink, the end of the mount) puts it there first; and at no moment does the
//! upper hold a part of it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};

use super::copyup::pattern;
use crate::common::*;

const SIZE: usize = 3 << 20;

/// The upper's `rel` is absent or the whole of `want`, never a part.
fn upper_absent_or_whole(u: &Union, rel: &str, want: &[u8]) {
    match fs::read(u.u(rel)) {
        Ok(got) => assert!(
            got == want,
            "the upper holds {rel} with {} bytes of {}, or other bytes: a copy entered it \
             before it was whole",
            got.len(),
            want.len()
        ),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{rel}: {e}"),
    }
}

fn behind_entries(u: &Union) -> Vec<String> {
    fs::read_dir(u.work_dir())
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("#unionfs-behind-"))
                .collect()
        })
        .unwrap_or_default()
}

/// The daemon's count of copies it left to be flushed behind is `n` (so the test did take
/// that path).
fn staged(u: &Union, n: usize) {
    if !is_kernel() {
        assert_eq!(u.report_value("flushed_behind"), n.to_string());
    }
}

#[test]
fn a_staged_copy_is_the_file_and_fsync_puts_it_in_the_upper() {
    let old = pattern(SIZE, 160);
    let Some(mut u) = Union::mount(Stack::new().lower([file("f", &old)])) else {
        return;
    };
    let mut w = fs::OpenOptions::new().append(true).open(u.m("f")).unwrap();
    w.write_all(b"tail").unwrap();
    let mut want = old.clone();
    want.extend_from_slice(b"tail");
    // Held open, the copy may still be staged: the view shows it whole all the same, by
    // name, through a new fd and in the listing's attributes.
    assert_eq!(u.stat("f").len(), want.len() as u64, "size by name");
    assert!(u.read("f") == want, "content through a new fd");
    let listed = fs::read_dir(u.m("")).unwrap().flatten();
    let f = listed.into_iter().find(|e| e.file_name() == "f").unwrap();
    assert_eq!(
        f.metadata().unwrap().len(),
        want.len() as u64,
        "size in a listing"
    );
    drop(f); // a DirEntry holds its directory open
    upper_absent_or_whole(&u, "f", &want);
    assert!(fs::read(u.l(0, "f")).unwrap() == old, "the lower changed");
    staged(&u, 1);

    w.sync_all().unwrap();
    // After fsync the copy is in its place, data and all.
    assert!(
        fs::read(u.u("f")).unwrap() == want,
        "not in the upper after fsync"
    );
    assert!(behind_entries(&u).is_empty(), "{:?}", behind_entries(&u));
    drop(w);
    let w = fs::OpenOptions::new().write(true).open(u.m("f")).unwrap();
    w.write_all_at(b"AFTER", 0).unwrap();
    drop(w);
    want[..5].copy_from_slice(b"AFTER");
    assert!(u.read("f") == want, "a write after the publication is lost");
    u.remount();
    assert!(u.read("f") == want, "content after remount");
    assert!(fs::read(u.u("f")).unwrap() == want);
    u.check_upper_is_layer_diff();
}

#[test]
fn name_operations_and_metadata_changes_find_the_copy_in_its_place() {
    let old = pattern(SIZE, 161);
    let stack = Stack::new().lower([
        dir("d"),
        file("d/a", &old),
        file("d/b", &old),
        file("d/c", &old),
        file("d/e", &old),
    ]);
    let Some(mut u) = Union::mount(stack) else {
        return;
    };
    let mut want = old.clone();
    want.extend_from_slice(b"+");
    let held: Vec<fs::File> = ["a", "b", "c", "e"]
        .iter()
        .map(|n| {
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(u.m(&format!("d/{n}")))
                .unwrap();
            f.write_all(b"+").unwrap();
            f
        })
        .collect();
    // Each while its writer still holds it open (the copy may still be staged).
    fs::rename(u.m("d/a"), u.m("d/a2")).unwrap();
    fs::remove_file(u.m("d/b")).unwrap();
    fs::set_permissions(
        u.m("d/c"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    fs::hard_link(u.m("d/e"), u.m("d/e2")).unwrap();
    staged(&u, 4);
    assert!(u.read("d/a2") == want && !u.exists("d/a"));
    u.assert_enoent("d/b");
    assert!(u.read("d/c") == want && u.stat("d/c").mode() & 0o777 == 0o600);
    assert!(u.read("d/e2") == want && u.stat("d/e").nlink() == 2);
    assert!(
        fs::read(u.u("d/a2")).unwrap() == want,
        "renamed copy not whole in the upper"
    );
    u.assert_upper_whiteout("d/b");
    assert!(fs::read(u.u("d/c")).unwrap() == want);
    drop(held);
    u.remount();
    assert!(u.read("d/a2") == want && u.read("d/c") == want && u.read("d/e") == want);
    u.assert_enoent("d/b");
    assert!(behind_entries(&u).is_empty(), "{:?}", behind_entries(&u));
    u.check_upper_is_layer_diff();
}

#[test]
fn unmount_publishes_every_staged_copy() {
    let old = pattern(SIZE, 162);
    let names: Vec<String> = (0..8).map(|i| format!("f{i}")).collect();
    let stack = Stack::new().lower(names.iter().map(|n| file(n, &old)));
    let Some(mut u) = Union::mount(stack) else {
        return;
    };
    for (i, n) in names.iter().enumerate() {
        u.append(n, format!("{i}"));
    }
    staged(&u, names.len());
    u.unmount();
    for (i, n) in names.iter().enumerate() {
        let mut want = old.clone();
        want.extend_from_slice(format!("{i}").as_bytes());
        assert!(
            fs::read(u.u(n)).unwrap() == want,
            "{n} not whole in the upper"
        );
    }
    assert!(behind_entries(&u).is_empty(), "{:?}", behind_entries(&u));
    u.do_mount();
    u.check_upper_is_layer_diff();
}

#[test]
fn small_files_and_flush_behind_off_publish_before_the_open_returns() {
    // Below the size (1 MiB by default), and for every size with flush_behind=off, the copy
    // is in the upper, flushed, once the open that made it returns.
    let big = pattern(SIZE, 163);
    for (opts, f, content) in [
        (&[][..], "small", &b"small file"[..]),
        (&["flush_behind=off"][..], "big", &big[..]),
    ] {
        let mut stack = Stack::new().lower([file(f, content)]);
        for o in opts {
            stack = stack.unionfs_opt(o);
        }
        let Some(u) = Union::mount(stack) else {
            return;
        };
        if is_kernel() {
            return;
        }
        let w = fs::OpenOptions::new().append(true).open(u.m(f)).unwrap();
        assert!(
            fs::read(u.u(f)).unwrap() == content,
            "{f} {opts:?}: not published"
        );
        assert!(behind_entries(&u).is_empty(), "{f} {opts:?}: staged");
        staged(&u, 0);
        drop(w);
    }
}
