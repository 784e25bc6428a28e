//! Signals reach the command; `--init` forwards them and reaps zombies.

use std::time::Duration;

use crate::common::*;
use nix::sys::signal::Signal;

fn launch(extra: &[&str], cmd: &str) -> Running {
    let mut a = root_args();
    a.extend(args(extra));
    a.push("--tmp-upper".into());
    a.push(base_lower().to_string_lossy().into_owned());
    a.extend(args(&["--", "/bin/sh", "-c", cmd]));
    spawn(&a)
}

const TRAPS: &str = "for s in TERM INT HUP USR1 USR2; do trap \"echo got-$s\" $s; done; echo up; \
                     while [ ! -e /tmp/stop ]; do sleep 0.05; done; echo bye; exit 3";

#[test]
fn forwarded_signals_reach_the_command() {
    if !require_root() {
        return;
    }
    let mut r = launch(
        &[],
        &TRAPS.replace("sleep 0.05", "sleep 0.05; [ -e /tmp/n ] && touch /tmp/stop"),
    );
    assert_eq!(r.read_line(), "up");
    for (sig, name) in [
        (Signal::SIGUSR1, "USR1"),
        (Signal::SIGUSR2, "USR2"),
        (Signal::SIGHUP, "HUP"),
        (Signal::SIGINT, "INT"),
        (Signal::SIGTERM, "TERM"),
    ] {
        r.signal(sig);
        assert_eq!(r.read_line(), format!("got-{name}"));
    }
    // SIGTERM was handled (the command decides); the launcher is still there until it exits.
    assert!(alive(r.pid()));
    r.signal(Signal::SIGKILL);
    let o = r.finish(Duration::from_secs(10));
    assert_eq!(o.code, 137);
}

#[test]
fn sigterm_to_a_command_without_handler_and_init_ends_it() {
    if !require_root() {
        return;
    }
    // Without --init the command is pid 1 and the kernel drops signals it has no handler for;
    // with --init the reaper forwards SIGTERM to the command, which dies of it.
    let mut r = launch(&["--init"], "echo up; exec sleep 30");
    assert_eq!(r.read_line(), "up");
    std::thread::sleep(Duration::from_millis(100));
    r.signal(Signal::SIGTERM);
    let o = r.finish(Duration::from_secs(10));
    assert_eq!(o.code, 128 + 15, "{o:?}");
}

fn zombies_under(pid: nix::unistd::Pid) -> usize {
    descendants(pid)
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
        .count()
}

#[test]
fn init_reaps_zombies_and_passes_the_exit_code() {
    if !require_root() {
        return;
    }
    // Orphans are re-parented to pid 1; `exec sleep` makes pid 1 a program that never waits,
    // unless --init puts a reaper there.
    let cmd = "for i in 1 2 3 4 5; do (sleep 0.1 &); done; echo up; exec sleep 2";
    for (init, want_zombies) in [(true, false), (false, true)] {
        let extra: &[&str] = if init { &["--init"] } else { &[] };
        let mut r = launch(extra, cmd);
        assert_eq!(r.read_line(), "up");
        let pid1 = r.init_pid();
        let seen = wait_for(Duration::from_secs(1), || zombies_under(pid1) >= 5);
        assert_eq!(
            seen,
            want_zombies,
            "--init={init}: zombies {}",
            zombies_under(pid1)
        );
        let o = r.finish(Duration::from_secs(10));
        assert_eq!(o.code, 0, "{o:?}");
    }
    let o = launch(&["--init"], "exit 42").finish(Duration::from_secs(10));
    assert_eq!(o.code, 42, "{o:?}");
}
