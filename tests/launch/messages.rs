//! Messages that say what to do: limits that could never work are refused before anything
//! starts, a command without `--` gets a usage line that shows it, and `--bind` targets the
//! root lacks do not stay in a persistent upper.

use std::os::unix::fs::MetadataExt;

use crate::common::*;

#[test]
fn impossible_limits_are_refused_at_parse_time() {
    let lower = std::env::temp_dir();
    let l = lower.to_string_lossy();
    for (opt, val, says) in [
        ("--pids", "0", "1 or more"),
        ("--pids", "-3", "1 or more"),
        ("--cpus", "0", "above 0"),
        ("--cpus", "-1", "above 0"),
        ("--cpus", "-0.5", "above 0"),
        ("--memory", "0", "positive"),
        ("--memory", "-5M", "cannot be negative"),
    ] {
        let o = run(&args(&[opt, val, "--tmp-upper", &l, "--", "/bin/true"]));
        assert_eq!(o.code, 2, "{opt} {val}: {o:?}");
        assert!(
            o.stderr.contains(opt) && o.stderr.contains(says),
            "{opt} {val}: {}",
            o.stderr
        );
    }
}

#[test]
fn a_command_without_dashdash_or_a_mistyped_option_shows_the_usage_with_it() {
    let l = std::env::temp_dir().to_string_lossy().into_owned();
    let cases: [&[&str]; 3] = [
        &[&l, "/tmp/upper", "/bin/sh"],
        &[&l, "/bin/sh"],
        &["--memroy", "64M", &l, "--", "/bin/sh"],
    ];
    for a in cases {
        let o = run(&args(a));
        assert_eq!(o.code, 2, "{a:?}: {o:?}");
        assert!(
            o.stderr.contains("Usage: unionfs-run") && o.stderr.contains(" -- "),
            "{a:?}: no usage line with `--`: {}",
            o.stderr
        );
        assert!(
            o.stderr
                .contains("the command goes after `--`: unionfs-run [OPTIONS] LOWER1:LOWER2"),
            "{a:?}: {}",
            o.stderr
        );
    }
    let o = run(&args(&["--memroy", "64M", &l, "--", "/bin/sh"]));
    assert!(
        o.stderr.contains("'--memory'"),
        "no suggestion: {}",
        o.stderr
    );
}

#[test]
fn bind_targets_the_root_lacks_do_not_stay_in_the_upper() {
    if !require_root() || !require_union() {
        return;
    }
    let t = TempDir::new("bind-targets");
    std::fs::create_dir(t.join("srcdir")).unwrap();
    std::fs::write(t.join("srcdir/in"), "dir bind\n").unwrap();
    std::fs::write(t.join("srcfile"), "file bind\n").unwrap();
    let upper = TempDir::new("bind-targets-upper");
    let base = example_layers().join("base");
    let etc_before = std::fs::metadata(base.join("etc")).unwrap();
    let o = run(&args(&[
        "--bind",
        &format!("{}:/new/deep/dir:ro", t.join("srcdir").display()),
        "--bind",
        &format!("{}:/etc/newfile", t.join("srcfile").display()),
        &base.to_string_lossy(),
        &upper.0.to_string_lossy(),
        "--",
        "/bin/sh",
        "-c",
        "cat /new/deep/dir/in /etc/newfile; echo kept > /written",
    ]));
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout, "dir bind\nfile bind\n", "{o:?}");
    // The command's own change stays; the mount points do not.
    assert_eq!(
        std::fs::read_to_string(upper.join("written")).unwrap(),
        "kept\n"
    );
    assert!(!upper.join("new").exists(), "/new left in the upper");
    assert!(!upper.join("etc/newfile").exists(), "/etc/newfile left");
    // /etc may stay copied up, but unchanged: same times as in the lower.
    if let Ok(m) = std::fs::metadata(upper.join("etc")) {
        assert_eq!(
            (m.mtime(), m.mtime_nsec()),
            (etc_before.mtime(), etc_before.mtime_nsec()),
            "/etc changed in the upper"
        );
        let names: Vec<_> = std::fs::read_dir(upper.join("etc")).unwrap().collect();
        assert!(names.is_empty(), "{names:?}");
    }
    // The host sources are untouched, and a next run sees no trace of the targets.
    assert_eq!(
        std::fs::read_to_string(t.join("srcfile")).unwrap(),
        "file bind\n"
    );
    let o = run(&args(&[
        &base.to_string_lossy(),
        &upper.0.to_string_lossy(),
        "--",
        "/bin/sh",
        "-c",
        "ls -d /new /etc/newfile 2>&1 | grep -c 'No such file'",
    ]));
    assert_eq!(o.stdout.trim(), "2", "{o:?}");
}
