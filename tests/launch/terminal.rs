//! `-t`/`-i`: the launcher run on a real pseudo-terminal that this test opens and drives (the
//! test plays the user at a terminal): job control in `sh -i`, window sizes, exit codes, and the
//! host terminal's modes back after every way out.

use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::termios::{tcgetattr, LocalFlags, Termios};

use crate::common::*;

/// The user's terminal: the test holds the master; the launcher runs on the slave as its
/// controlling terminal (`setsid -c`).
struct Term {
    master: OwnedFd,
    slave: OwnedFd,
    child: Child,
    seen: String,
    /// The modes before the launcher started.
    initial: Termios,
}

fn modes(t: &Termios) -> String {
    format!(
        "{:?} {:?} {:?} {:?} {:?}",
        t.input_flags, t.output_flags, t.control_flags, t.local_flags, t.control_chars
    )
}

impl Term {
    fn start(rows: u16, cols: u16, a: &[&str]) -> Term {
        let pty = nix::pty::openpty(None, None).unwrap();
        set_size(&pty.master, rows, cols);
        let initial = tcgetattr(&pty.slave).unwrap();
        assert!(initial.local_flags.contains(LocalFlags::ICANON));
        let io = || Stdio::from(pty.slave.try_clone().unwrap());
        let child = Command::new("setsid")
            .arg("-c")
            .arg(BIN)
            .args(a)
            .stdin(io())
            .stdout(io())
            .stderr(io())
            .spawn()
            .unwrap();
        Term {
            master: pty.master,
            slave: pty.slave,
            child,
            seen: String::new(),
            initial,
        }
    }

    fn send(&self, s: &str) {
        unionfs::sys::write(self.master.as_fd(), s.as_bytes()).unwrap();
    }

    /// Reads until `want` shows up (after what earlier calls consumed), up to 20 s.
    fn expect(&mut self, want: &str) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(i) = self.seen.find(want) {
                self.seen.drain(..i + want.len());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{want:?} never came; terminal shows {:?}",
                self.seen
            );
            let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(200u16)).unwrap_or(0) == 0 {
                continue;
            }
            let mut buf = [0u8; 4096];
            match nix::unistd::read(&self.master, &mut buf) {
                Ok(n) if n > 0 => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Waits for the launcher to exit (reading its last output), returns its exit code.
    fn exit_code(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "launcher did not exit: {:?}",
                self.seen
            );
            let mut buf = [0u8; 4096];
            let mut fds = [nix::poll::PollFd::new(
                self.master.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(50u16)).unwrap_or(0) > 0 {
                if let Ok(n) = nix::unistd::read(&self.master, &mut buf) {
                    self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        }
    }

    fn modes(&self) -> Termios {
        tcgetattr(&self.slave).unwrap()
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn set_size(fd: &OwnedFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    unionfs::sys::set_window_size(fd.as_fd(), &ws).unwrap();
}

fn shell_args<'a>(base: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["-it", "--tmp-upper"];
    a.extend(extra);
    a.extend([base, "--", "/bin/sh", "-i"]);
    a
}

#[test]
fn an_interactive_shell_gets_job_control_window_sizes_and_its_exit_code() {
    if !require_root() || !require_union() {
        return;
    }
    let base = base_lower().to_string_lossy().into_owned();
    let mut t = Term::start(30, 100, &shell_args(&base, &[]));
    let before = t.initial.clone();
    t.expect(" # ");
    assert!(
        !t.modes().local_flags.contains(LocalFlags::ICANON),
        "the host terminal is not raw while the container runs"
    );
    // Its own terminal, controlling, from its own devpts; /dev/console is that terminal.
    t.send(
        "tty | sed s/pts/PTS/; stty size; echo n=$((6*7)); stat -c %t:%T /dev/console /dev/pts/0\r",
    );
    t.expect("/dev/PTS/0");
    t.expect("30 100");
    t.expect("n=42");
    t.expect("88:0\r\n88:0");
    // A window size change reaches the container (SIGWINCH to the launcher, passed on).
    set_size(&t.master, 50, 132);
    std::thread::sleep(Duration::from_millis(300));
    t.send("stty size\r");
    t.expect("50 132");

    // Ctrl-C interrupts the foreground job, not the shell.
    t.send("sleep 100; echo not-$((1))interrupted\r");
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    t.send("\x03");
    t.send("echo after-ctrl-$((2))\r");
    t.expect("after-ctrl-2");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!t.seen.contains("not-1interrupted"));

    // Ctrl-Z suspends it; fg resumes it where it was.
    t.send("sh -c 'sleep 2; echo re$((1))sumed'\r");
    std::thread::sleep(Duration::from_millis(500));
    t.send("\x1a");
    t.expect("Stopped");
    t.send("echo while-$((3))stopped\r");
    t.expect("while-3stopped");
    t.send("fg\r");
    t.expect("re1sumed");

    t.send("exit 3\r");
    assert_eq!(t.exit_code(), 3, "{:?}", t.seen);
    assert_eq!(
        modes(&t.modes()),
        modes(&before),
        "host terminal not restored"
    );
}

#[test]
fn the_host_terminal_is_restored_after_a_signal_and_a_failed_exec() {
    if !require_root() || !require_union() {
        return;
    }
    let base = base_lower().to_string_lossy().into_owned();
    // A signal to the launcher ends the command (through --init) and the launcher.
    let mut t = Term::start(
        24,
        80,
        &[
            "-t",
            "--init",
            "--tmp-upper",
            &base,
            "--",
            "/bin/sh",
            "-c",
            "echo up; exec sleep 100",
        ],
    );
    let before = t.initial.clone();
    t.expect("up");
    assert!(!t.modes().local_flags.contains(LocalFlags::ICANON));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(t.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(t.exit_code(), 143, "{:?}", t.seen);
    assert_eq!(
        modes(&t.modes()),
        modes(&before),
        "not restored after SIGTERM"
    );

    // The exec fails after the terminal was set up: 127, restored.
    let mut t = Term::start(24, 80, &["-it", "--tmp-upper", &base, "--", "/no/such/cmd"]);
    let before = t.initial.clone();
    assert_eq!(t.exit_code(), 127, "{:?}", t.seen);
    assert!(t.seen.contains("not found"), "{:?}", t.seen);
    assert_eq!(
        modes(&t.modes()),
        modes(&before),
        "not restored after a failed exec"
    );
}
