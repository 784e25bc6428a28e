//! 20 launches in a row, some ended midway (command killed, launcher SIGTERM, launcher
//! SIGKILL): afterwards no mount, cgroup, FUSE daemon, staging dir or process remains.

use std::time::Duration;

use crate::common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use unionfs::launch::instance::start_time;

#[test]
fn twenty_launches_leave_nothing_behind() {
    if !require_root() || !require_union() {
        return;
    }
    let upper = TempDir::new("leaks");
    let lowers = format!(
        "{}:{}",
        example_layers().join("app").display(),
        example_layers().join("base").display()
    );
    let mut seen: Vec<(Pid, Option<u64>)> = Vec::new();
    for i in 0..20 {
        let mode = i % 5;
        let mut a = args(&["--memory", "128M", "--pids", "64"]);
        if mode == 3 {
            a.push("--init".into());
        }
        a.push(lowers.clone());
        a.push(upper.0.to_string_lossy().into_owned());
        a.extend(args(&["--", "/bin/sh", "-c"]));
        a.push(match mode {
            0 => "echo up; echo $RANDOM > /f; exit 0".into(),
            1 => "echo up; exit 42".into(),
            _ => "echo up; sleep 1000 & sleep 1000 & exec sleep 1000".into(),
        });
        let mut r = spawn(&a);
        assert_eq!(r.read_line(), "up", "launch {i}");
        // Remember every process of this run (launcher, holder, init, command's children).
        let mut procs = vec![r.pid()];
        procs.extend(descendants(r.pid()));
        seen.extend(procs.iter().map(|p| (*p, start_time(*p))));
        let want = match mode {
            0 => 0,
            1 => 42,
            2 => {
                kill(r.init_pid(), Signal::SIGKILL).unwrap();
                137
            }
            3 => {
                r.signal(Signal::SIGTERM);
                143
            }
            _ => {
                r.signal(Signal::SIGKILL);
                137
            }
        };
        let o = r.finish(Duration::from_secs(20));
        assert_eq!(o.code, want, "launch {i} (mode {mode}): {o:?}");
    }
    // A last normal run removes what SIGKILLed launchers could not (their cgroups, staging dirs).
    let mut a = args(&["--memory", "128M"]);
    a.push(lowers.clone());
    a.push(upper.0.to_string_lossy().into_owned());
    a.extend(args(&["--", "/bin/true"]));
    assert_eq!(run(&a).code, 0);

    let survivors = || {
        seen.iter()
            .filter(|(p, st)| alive(*p) && start_time(*p) == *st)
            .map(|(p, _)| *p)
            .collect::<Vec<_>>()
    };
    assert!(
        wait_for(Duration::from_secs(10), || survivors().is_empty()),
        "processes left: {:?}",
        survivors()
    );
    assert_eq!(leftover_mounts(), Vec::<String>::new(), "mounts left");
    assert_eq!(
        stale_cgroups(),
        Vec::<std::path::PathBuf>::new(),
        "cgroups left"
    );
    assert_eq!(
        stale_staging(),
        Vec::<std::path::PathBuf>::new(),
        "staging dirs left"
    );
    // The upper holds only what the runs wrote.
    let names: Vec<String> = std::fs::read_dir(&upper.0)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".wh..wh."))
        .collect();
    assert_eq!(
        names,
        vec!["f".to_string()],
        "unexpected entries in the upper"
    );
}
