//! Names of the things one launcher run creates on the host (cgroups, staging dir), chosen so
//! that a later run can tell a leftover of a dead launcher from one of a live launcher.

use nix::unistd::Pid;

/// Prefix of every host object a launcher run creates.
pub const PREFIX: &str = "unionfs-run.";

/// The start time of process `pid` in clock ticks since boot (field 22 of /proc/PID/stat).
pub fn start_time(pid: Pid) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// `unionfs-run.<pid>.<start time>` for the current process.
pub fn own_name() -> String {
    let pid = nix::unistd::getpid();
    format!("{PREFIX}{pid}.{}", start_time(pid).unwrap_or(0))
}

/// Whether `name` follows our scheme and its launcher is gone (pid dead, or reused by another).
pub fn is_stale(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(PREFIX) else {
        return false;
    };
    let Some((pid, start)) = rest.split_once('.') else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<i32>(), start.parse::<u64>()) else {
        return false;
    };
    start_time(Pid::from_raw(pid)) != Some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_name_is_live_and_dead_is_stale() {
        let n = own_name();
        assert!(n.starts_with(PREFIX));
        assert!(!is_stale(&n));
        assert!(is_stale("unionfs-run.2147483600.5"));
        assert!(!is_stale("unionfs-run.x"));
        assert!(!is_stale("other.1.2"));
    }
}
