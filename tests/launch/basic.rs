//! The container as root: pid namespace, hostname, network, exit codes, env/cwd/user/binds.

use std::time::{Duration, Instant};

use crate::common::*;
use nix::sys::signal::{kill, Signal};

fn base_run(extra: &[&str], cmd: &str) -> Outcome {
    let mut a = root_args();
    a.extend(args(extra));
    a.extend(args(&["--tmp-upper"]));
    a.push(base_lower().to_string_lossy().into_owned());
    a.extend(args(&["--", "/bin/sh", "-c", cmd]));
    run(&a)
}

#[test]
fn command_is_pid_1_and_sees_only_the_container() {
    if !require_root() {
        return;
    }
    let o = base_run(
        &[],
        "echo pid=$$; ps -o pid,comm | tail -n +2 | wc -l; ls /proc | grep -c '^[0-9]'",
    );
    assert_eq!(o.code, 0, "{o:?}");
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines[0], "pid=1", "{o:?}");
    // sh, ps, tail, wc (ps sees its own pipeline only); the host has hundreds of processes.
    let n: usize = lines[1].trim().parse().unwrap();
    assert!(n <= 5, "ps saw {n} processes: {o:?}");
    let n: usize = lines[2].trim().parse().unwrap();
    assert!(n <= 5, "/proc lists {n} pids: {o:?}");
}

#[test]
fn hostname_is_isolated_and_net_none_has_only_lo() {
    if !require_root() {
        return;
    }
    let host = nix::unistd::gethostname().unwrap();
    let o = base_run(
        &["--hostname", "box1"],
        "hostname; cat /proc/sys/kernel/hostname; ls /sys/class/net; grep -c : /proc/net/dev",
    );
    assert_eq!(o.code, 0, "{o:?}");
    let l: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(l[0], "box1", "{o:?}");
    assert_eq!(l[1], "box1", "{o:?}");
    assert_eq!(l[2], "lo", "only lo expected: {o:?}");
    assert_eq!(l[3], "1", "{o:?}");
    assert_eq!(
        nix::unistd::gethostname().unwrap(),
        host,
        "host name changed"
    );
    // lo is up: ping it.
    let o = base_run(&[], "ping -c 1 -W 2 127.0.0.1 >/dev/null && echo up");
    assert_eq!(o.stdout.trim(), "up", "{o:?}");
    // --net host shares the host's interfaces.
    let o = base_run(&["--net", "host"], "grep -c : /proc/net/dev");
    let host_ifaces = std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .matches(':')
        .count();
    assert_eq!(o.stdout.trim(), host_ifaces.to_string(), "{o:?}");
}

#[test]
fn exit_codes_pass_through() {
    if !require_root() {
        return;
    }
    assert_eq!(base_run(&[], "exit 0").code, 0);
    assert_eq!(base_run(&[], "exit 42").code, 42);
    let o = base_run(&[], "exec /no/such/program");
    assert_eq!(o.code, 127, "{o:?}");
    let mut a = root_args();
    a.extend(args(&["--tmp-upper"]));
    a.push(base_lower().to_string_lossy().into_owned());
    a.extend(args(&["--", "nosuchcommand"]));
    let o = run(&a);
    assert_eq!(o.code, 127, "{o:?}");
    assert!(
        o.stderr.contains("nosuchcommand: command not found"),
        "{o:?}"
    );
}

#[test]
fn killed_command_gives_128_plus_signal() {
    if !require_root() {
        return;
    }
    let mut a = root_args();
    a.extend(args(&["--tmp-upper"]));
    a.push(base_lower().to_string_lossy().into_owned());
    a.extend(args(&["--", "/bin/sleep", "30"]));
    let r = spawn(&a);
    let init = r.init_pid();
    // Kill the command, not the init still setting up (that is a launcher failure, 125).
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{init}/comm"))
        .map_or(true, |c| c.trim() != "sleep")
    {
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    kill(init, Signal::SIGKILL).unwrap();
    let o = r.finish(Duration::from_secs(20));
    assert_eq!(o.code, 137, "{o:?}");
}

#[test]
fn env_cwd_user_and_binds() {
    if !require_root() {
        return;
    }
    let t = TempDir::new("bind");
    std::fs::write(t.join("hostfile"), "from host\n").unwrap();
    let ro = format!("{}:/mnt/ro:ro", t.0.display());
    let rw = format!("{}:/mnt/rw", t.0.display());
    let o = base_run(
        &[
            "--env",
            "FOO=bar baz",
            "--cwd",
            "/etc",
            "--bind",
            &ro,
            "--bind",
            &rw,
            "--user",
            "65534:65534",
        ],
        "echo \"$FOO\"; pwd; id -u; id -g; cat /mnt/ro/hostfile; \
         touch /mnt/ro/x 2>/dev/null && echo ro-writable || echo ro-refused; \
         cat /proc/self/status | grep CapEff; grep NoNewPrivs /proc/self/status",
    );
    assert_eq!(o.code, 0, "{o:?}");
    let l: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(
        &l[..6],
        [
            "bar baz",
            "/etc",
            "65534",
            "65534",
            "from host",
            "ro-refused"
        ],
        "{o:?}"
    );
    assert!(
        l[6].ends_with("0000000000000000"),
        "non-root keeps no capabilities: {o:?}"
    );
    assert!(l[7].ends_with('1'), "no_new_privs not set: {o:?}");
}

#[test]
fn root_in_container_has_the_default_capabilities_and_masked_paths() {
    if !require_root() {
        return;
    }
    let o = base_run(
        &[],
        "grep CapBnd /proc/self/status; cat /proc/timer_list /proc/keys | wc -c; ls /sys/firmware | wc -l; \
         echo 1 > /proc/sys/kernel/panic 2>/dev/null && echo sys-writable || echo sys-ro; \
         mount -t tmpfs none /mnt 2>/dev/null && echo mounted || echo no-mount",
    );
    assert_eq!(o.code, 0, "{o:?}");
    let l: Vec<&str> = o.stdout.lines().collect();
    // CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE NET_RAW
    // SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP.
    assert!(l[0].ends_with("00000000a80425fb"), "{o:?}");
    assert_eq!(&l[1..], ["0", "0", "sys-ro", "no-mount"], "{o:?}");
}

#[test]
fn bad_arguments_say_what_to_do() {
    let o = run(&args(&[
        "/nonexistent-layer",
        "--tmp-upper",
        "--",
        "/bin/true",
    ]));
    // clap rejects options after positionals only with `last`; this order is valid.
    assert_eq!(o.code, 125, "{o:?}");
    assert!(
        o.stderr
            .contains("lower layer /nonexistent-layer is not a directory"),
        "{o:?}"
    );
    let o = run(&args(&["/tmp", "--", "/bin/true"]));
    assert_eq!(o.code, 125, "{o:?}");
    assert!(o.stderr.contains("--tmp-upper"), "{o:?}");
}
