//! User-namespace id maps: the single-id default, explicit ranges, and how each gets written.

use std::process::Command;

use nix::unistd::Pid;

use super::Error;

/// One line of a uid_map/gid_map: `count` ids starting at `inside` map to ids from `outside`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// First id inside the namespace.
    pub inside: u32,
    /// First id outside (in the parent namespace).
    pub outside: u32,
    /// Number of ids.
    pub count: u32,
}

impl std::str::FromStr for IdRange {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || {
            Error::msg(format!(
                "id map {s:?}: expected INSIDE:OUTSIDE:COUNT, e.g. 0:100000:65536"
            ))
        };
        let v: Vec<u32> = s
            .split(':')
            .map(|p| p.parse::<u32>())
            .collect::<Result<_, _>>()
            .map_err(|_| bad())?;
        match v.as_slice() {
            [i, o, c] if *c > 0 => Ok(IdRange {
                inside: *i,
                outside: *o,
                count: *c,
            }),
            _ => Err(bad()),
        }
    }
}

/// Which kind of id a map is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// User ids.
    Uid,
    /// Group ids.
    Gid,
}

impl IdKind {
    fn proc_file(self) -> &'static str {
        match self {
            IdKind::Uid => "uid_map",
            IdKind::Gid => "gid_map",
        }
    }
    fn helper(self) -> &'static str {
        match self {
            IdKind::Uid => "newuidmap",
            IdKind::Gid => "newgidmap",
        }
    }
}

/// How a namespace's maps get written, decided from who we are and what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapPlan {
    /// We are root outside: write any ranges straight into /proc.
    Direct {
        /// uid ranges.
        uids: Vec<IdRange>,
        /// gid ranges.
        gids: Vec<IdRange>,
    },
    /// Unprivileged, one id each: `setgroups` deny, then map 0 to our own uid and gid.
    SingleId {
        /// Our uid outside.
        uid: u32,
        /// Our gid outside.
        gid: u32,
    },
    /// Unprivileged with ranges: the setuid helpers newgidmap and newuidmap (via /etc/subuid).
    Helpers {
        /// uid ranges.
        uids: Vec<IdRange>,
        /// gid ranges.
        gids: Vec<IdRange>,
    },
}

impl MapPlan {
    /// Decide how to map, given our effective ids outside and the requested ranges.
    pub fn decide(euid: u32, egid: u32, uids: &[IdRange], gids: &[IdRange]) -> MapPlan {
        let single = |id: u32| {
            vec![IdRange {
                inside: 0,
                outside: id,
                count: 1,
            }]
        };
        let uids = if uids.is_empty() {
            single(euid)
        } else {
            uids.to_vec()
        };
        let gids = if gids.is_empty() {
            single(egid)
        } else {
            gids.to_vec()
        };
        if euid == 0 {
            MapPlan::Direct { uids, gids }
        } else if uids == single(euid) && gids == single(egid) {
            MapPlan::SingleId {
                uid: euid,
                gid: egid,
            }
        } else {
            MapPlan::Helpers { uids, gids }
        }
    }

    /// Whether `setgroups` stays usable inside (it is denied for single-id unprivileged maps).
    pub fn setgroups_allowed(&self) -> bool {
        !matches!(self, MapPlan::SingleId { .. })
    }

    /// Whether container id `id` of `kind` is mapped.
    pub fn maps(&self, kind: IdKind, id: u32) -> bool {
        let ranges = match (self, kind) {
            (MapPlan::SingleId { .. }, _) => return id == 0,
            (MapPlan::Direct { uids, .. } | MapPlan::Helpers { uids, .. }, IdKind::Uid) => uids,
            (MapPlan::Direct { gids, .. } | MapPlan::Helpers { gids, .. }, IdKind::Gid) => gids,
        };
        ranges
            .iter()
            .any(|r| id >= r.inside && (id - r.inside) < r.count)
    }

    /// The maps as the union's id map record holds them (container:host:count), for
    /// `unionfs-layer export` of an upper written through this namespace.
    pub fn id_maps(&self) -> crate::mount::IdMaps {
        let one = |id| {
            vec![IdRange {
                inside: 0,
                outside: id,
                count: 1,
            }]
        };
        let (uids, gids) = match self {
            MapPlan::Direct { uids, gids } | MapPlan::Helpers { uids, gids } => {
                (uids.clone(), gids.clone())
            }
            MapPlan::SingleId { uid, gid } => (one(*uid), one(*gid)),
        };
        let map = |r: Vec<IdRange>| {
            let ranges = r.iter().map(|r| crate::mount::IdRange {
                container: r.inside,
                host: r.outside,
                count: r.count,
            });
            // The kernel refuses overlapping ranges before anything is written.
            crate::mount::IdMap::new(ranges.collect()).unwrap_or_default()
        };
        crate::mount::IdMaps {
            uids: map(uids),
            gids: map(gids),
        }
    }

    /// Write the maps of the user namespace of process `pid`.
    pub fn apply(&self, pid: Pid) -> Result<(), Error> {
        match self {
            MapPlan::Direct { uids, gids } => {
                write_proc(pid, IdKind::Gid, gids)?;
                write_proc(pid, IdKind::Uid, uids)
            }
            MapPlan::SingleId { uid, gid } => {
                let p = format!("/proc/{pid}/setgroups");
                std::fs::write(&p, "deny").map_err(|e| Error::msg(format!("writing {p}: {e}")))?;
                let one = |id| {
                    [IdRange {
                        inside: 0,
                        outside: id,
                        count: 1,
                    }]
                };
                write_proc(pid, IdKind::Gid, &one(*gid))?;
                write_proc(pid, IdKind::Uid, &one(*uid))
            }
            MapPlan::Helpers { uids, gids } => {
                // gid first: once the uid map exists the helper's checks on the target change.
                run_helper(pid, IdKind::Gid, gids)?;
                run_helper(pid, IdKind::Uid, uids)
            }
        }
    }
}

/// The text the kernel expects in /proc/PID/{uid,gid}_map.
pub fn proc_map_text(ranges: &[IdRange]) -> String {
    ranges
        .iter()
        .map(|r| format!("{} {} {}\n", r.inside, r.outside, r.count))
        .collect()
}

fn write_proc(pid: Pid, kind: IdKind, ranges: &[IdRange]) -> Result<(), Error> {
    let p = format!("/proc/{pid}/{}", kind.proc_file());
    std::fs::write(&p, proc_map_text(ranges)).map_err(|e| {
        Error::msg(format!(
            "writing {p} ({}): {e}; ranges must not overlap and, unprivileged, only your own id can be mapped",
            proc_map_text(ranges).trim().replace('\n', ", ")
        ))
    })
}

fn run_helper(pid: Pid, kind: IdKind, ranges: &[IdRange]) -> Result<(), Error> {
    let mut cmd = Command::new(kind.helper());
    cmd.arg(pid.to_string());
    for r in ranges {
        cmd.args([
            r.inside.to_string(),
            r.outside.to_string(),
            r.count.to_string(),
        ]);
    }
    let out = cmd.output().map_err(|e| {
        Error::msg(format!(
            "cannot run {}: {e}; install it (Debian: apt-get install uidmap) or drop --uid-map/--gid-map",
            kind.helper()
        ))
    })?;
    if !out.status.success() {
        return Err(Error::msg(format!(
            "{} failed ({}): {}; check that /etc/sub{} grants these ranges to your user",
            kind.helper(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            if kind == IdKind::Uid { "uid" } else { "gid" }
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_range() {
        let r: IdRange = "0:100000:65536".parse().unwrap();
        assert_eq!(
            r,
            IdRange {
                inside: 0,
                outside: 100000,
                count: 65536
            }
        );
        assert!("0:1".parse::<IdRange>().is_err());
        assert!("0:1:0".parse::<IdRange>().is_err());
    }

    #[test]
    fn plans() {
        assert!(matches!(
            MapPlan::decide(0, 0, &[], &[]),
            MapPlan::Direct { .. }
        ));
        let p = MapPlan::decide(1000, 1000, &[], &[]);
        assert_eq!(
            p,
            MapPlan::SingleId {
                uid: 1000,
                gid: 1000
            }
        );
        assert!(!p.setgroups_allowed());
        assert!(p.maps(IdKind::Uid, 0) && !p.maps(IdKind::Uid, 1));
        let r: IdRange = "1:100000:65536".parse().unwrap();
        let own = IdRange {
            inside: 0,
            outside: 1000,
            count: 1,
        };
        let p = MapPlan::decide(1000, 1000, &[own, r], &[own, r]);
        assert!(matches!(p, MapPlan::Helpers { .. }));
        assert!(p.maps(IdKind::Gid, 65536) && !p.maps(IdKind::Gid, 65537));
        assert_eq!(proc_map_text(&[own, r]), "0 1000 1\n1 100000 65536\n");
    }
}
