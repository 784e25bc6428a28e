//! Which listings should carry attributes.
//!
//! The kernel asks for the first batch of every directory with READDIRPLUS, before it knows
//! whether anyone will stat the names. Answering with attributes costs a stat per entry in
//! the daemon (on a cold cache, a disk read per inode) and an inode in the kernel: `find` over
//! 50,000 cold files spent 0.14 s that way against 0.06 s for kernel overlayfs, and needs none
//! of it (`d_type` is enough). Answering with bare names makes each later use of a name (stat,
//! open, unlink) pay one LOOKUP instead. So the answer follows what happens to the names: a
//! caller is sent bare names until a name of a directory it was sent bare is looked up (by it,
//! or by another thread or process: a walker whose threads list and open, `find | xargs
//! stat`), and attributes from then on. `ls -lR` pays lookups for one batch of one directory;
//! `find` never pays a stat it does not use.
//!
//! What a caller wants is also remembered for the program it runs (the device and inode of
//! `/proc/<pid>/exe`): scripts start `ls -l` afresh every time, and each new process would
//! otherwise pay a batch of lookups before it is known. A wrong guess the other way (attributes
//! nobody reads) costs the daemon a stat per entry, far less than a LOOKUP round trip each.
//!
//! Callers are keyed by the thread id the kernel reports (0 when the caller is outside the
//! daemon's pid namespace: never sent bare names). Ids are reused: the tables are cleared when
//! they grow past a bound, which costs at most one wrong guess per caller.

use dashmap::DashMap;
use std::os::unix::fs::MetadataExt;

/// Entries kept in each table before it is cleared (far more than directories listed at once).
const MAX_ENTRIES: usize = 4096;

/// What listings have been sent bare, and which callers want attributes.
#[derive(Debug, Default)]
pub struct ListHints {
    /// Directory nodeid -> the caller last sent its first batch without attributes.
    bare_dirs: DashMap<u64, u32>,
    /// Callers known to use the names they list.
    wants_attrs: DashMap<u32, ()>,
    /// Programs (device and inode of the executable) whose callers used the names they listed.
    wants_attrs_exe: DashMap<(u64, u64), ()>,
    /// Callers whose executable was checked and is not one of those: a walker listing a
    /// thousand directories pays one look at `/proc/<pid>/exe`, not a thousand.
    exe_checked: DashMap<u32, ()>,
}

/// The executable `pid` runs, as device and inode; `None` when it is gone or hidden from us.
fn exe_of(pid: u32) -> Option<(u64, u64)> {
    let m = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    Some((m.dev(), m.ino()))
}

/// Inserts `key` into `map`, clearing it first when it has reached its bound.
fn insert_bounded<K: Eq + std::hash::Hash>(map: &DashMap<K, ()>, key: K) {
    if map.len() >= MAX_ENTRIES {
        map.clear();
    }
    map.insert(key, ());
}

impl ListHints {
    /// Whether to send the first batch of `dir` to `pid` without attributes; records it if so.
    pub fn send_bare(&self, pid: u32, dir: u64) -> bool {
        if pid == 0 || self.wants_attrs.contains_key(&pid) {
            return false;
        }
        // Only once some program has shown it wants attributes is its executable worth a stat.
        if !self.wants_attrs_exe.is_empty() && !self.exe_checked.contains_key(&pid) {
            if let Some(exe) = exe_of(pid) {
                if self.wants_attrs_exe.contains_key(&exe) {
                    insert_bounded(&self.wants_attrs, pid);
                    return false;
                }
            }
            insert_bounded(&self.exe_checked, pid);
        }
        if self.bare_dirs.len() >= MAX_ENTRIES {
            self.bare_dirs.clear();
        }
        self.bare_dirs.insert(dir, pid);
        true
    }

    /// Notes that a name in `parent` was looked up and found: whoever was sent `parent` bare
    /// wants attributes.
    pub fn found_in(&self, parent: u64) {
        // A read first: most lookups are in directories nobody was sent bare.
        if !self.bare_dirs.contains_key(&parent) {
            return;
        }
        if let Some((_, pid)) = self.bare_dirs.remove(&parent) {
            insert_bounded(&self.wants_attrs, pid);
            self.exe_checked.remove(&pid);
            if let Some(exe) = exe_of(pid) {
                insert_bounded(&self.wants_attrs_exe, exe);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_gets_bare_names_until_a_name_it_was_sent_bare_is_used() {
        let h = ListHints::default();
        assert!(h.send_bare(10, 5));
        // Lookups elsewhere (a path walk into another directory) say nothing about it.
        h.found_in(4);
        assert!(h.send_bare(10, 6));
        assert!(h.send_bare(11, 7));
        // Someone used a name of 6, which went to 10: 10 gets attributes, 11 still not.
        h.found_in(6);
        assert!(!h.send_bare(10, 8));
        assert!(h.send_bare(11, 8));
        // 5 is still 10's: a use of it changes nothing more.
        h.found_in(5);
        assert!(!h.send_bare(10, 9));
    }

    #[test]
    fn a_program_that_used_its_names_gets_attributes_in_its_next_process() {
        let h = ListHints::default();
        let me = std::process::id();
        assert!(h.send_bare(me, 5));
        h.found_in(5);
        // Another thread id running this very executable: known before it lists anything.
        // (A thread id names its executable only while the thread runs: keep it waiting.)
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _ = tid_tx.send(nix::unistd::gettid().as_raw() as u32);
            let _ = rx.recv();
        });
        let live = tid_rx.recv().expect("tid");
        assert_ne!(live, me);
        let same_program = !h.send_bare(live, 6);
        drop(tx);
        let _ = waiter.join();
        assert!(
            same_program,
            "a new process of a program that wants attributes got bare names"
        );
        // A program nobody saw use its names still gets bare names.
        assert!(
            h.send_bare(1, 7),
            "pid 1 runs another program and should get bare names"
        );
        // Its executable was looked at once; its next listings do not look again.
        assert!(h.exe_checked.contains_key(&1));
        assert!(h.send_bare(1, 8));
        assert_eq!(h.exe_checked.len(), 1);
    }

    #[test]
    fn callers_outside_our_pid_namespace_always_get_attributes() {
        let h = ListHints::default();
        assert!(!h.send_bare(0, 5));
        h.found_in(5);
        assert!(h.bare_dirs.is_empty() && h.wants_attrs.is_empty());
    }

    #[test]
    fn the_tables_stay_bounded() {
        let h = ListHints::default();
        for pid in 1..=(MAX_ENTRIES as u32 * 3) {
            h.send_bare(pid, u64::from(pid));
            h.found_in(u64::from(pid));
        }
        assert!(h.bare_dirs.len() <= MAX_ENTRIES && h.wants_attrs.len() <= MAX_ENTRIES);
        assert!(h.exe_checked.len() <= MAX_ENTRIES);
    }
}
