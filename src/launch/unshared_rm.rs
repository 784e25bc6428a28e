//! Removing a tree that a rootless container wrote: its files may belong to the user's
//! subordinate ids (a container user other than root), which the user cannot remove from
//! outside. As root of a user namespace that maps those ids (from /etc/subuid and
//! /etc/subgid, through newuidmap/newgidmap, as a run with --uid-map ranges does), it can.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::sched::CloneFlags;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{Gid, Uid};

use super::idmap::{IdRange, MapPlan};
use super::{Context, Error};
use crate::image::store::remove_tree;
use crate::sys;

/// Removes the tree at `path`: directly, and for an unprivileged user who is refused, once
/// more as root of a user namespace with the user's subordinate ids.
pub fn remove(path: &Path) -> std::io::Result<()> {
    match remove_tree(path) {
        Err(e)
            if e.kind() == std::io::ErrorKind::PermissionDenied
                && !nix::unistd::geteuid().is_root() =>
        {
            as_namespace_root(path).map_err(|ns| {
                std::io::Error::new(
                    e.kind(),
                    format!("{e}; and in a user namespace of the user's subordinate ids: {ns}"),
                )
            })
        }
        r => r,
    }
}

/// The user's ranges in `file` (/etc/subuid or /etc/subgid), as container ids from 1 up.
fn subordinate(file: &str, uid: u32) -> Vec<IdRange> {
    let name = nix::unistd::User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name);
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut next = 1u32;
    let mut out = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.trim().split(':').collect();
        let [who, start, count] = f.as_slice() else {
            continue;
        };
        let mine = Some(who.to_string()) == name || who.parse::<u32>() == Ok(uid);
        if let (true, Ok(start), Ok(count)) = (mine, start.parse::<u32>(), count.parse::<u32>()) {
            // The same range may be listed under the user's name and number.
            let (s, e) = (u64::from(start), u64::from(start) + u64::from(count));
            let overlaps = out.iter().any(|r: &IdRange| {
                let (rs, re) = (
                    u64::from(r.outside),
                    u64::from(r.outside) + u64::from(r.count),
                );
                s < re && rs < e
            });
            if overlaps || count == 0 {
                continue;
            }
            out.push(IdRange {
                inside: next,
                outside: start,
                count,
            });
            next = next.saturating_add(count);
        }
    }
    out
}

fn as_namespace_root(path: &Path) -> Result<(), Error> {
    let (uid, gid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    let own = |id| IdRange {
        inside: 0,
        outside: id,
        count: 1,
    };
    let subuids = subordinate("/etc/subuid", uid);
    let subgids = subordinate("/etc/subgid", uid);
    if subuids.is_empty() || subgids.is_empty() {
        return Err(Error::msg(
            "the user has no ranges in /etc/subuid and /etc/subgid (the files belong to ids \
             only root can remove)",
        ));
    }
    let uids: Vec<IdRange> = std::iter::once(own(uid)).chain(subuids).collect();
    let gids: Vec<IdRange> = std::iter::once(own(gid)).chain(subgids).collect();
    let plan = MapPlan::decide(uid, gid, &uids, &gids);
    let (mut parent, mut child) = UnixStream::pair().ctx(|| "socketpair".into())?;
    match sys::fork().ctx(|| "fork".into())? {
        sys::ForkResult::Child => {
            drop(parent);
            let mut b = [0u8; 1];
            let ok = nix::sched::unshare(CloneFlags::CLONE_NEWUSER).is_ok()
                && child.write_all(b"u").is_ok()
                && child.read_exact(&mut b).is_ok()
                && nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
                    .is_ok()
                && nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
                    .is_ok()
                && remove_tree(path).is_ok();
            sys::exit_now(if ok { 0 } else { 1 })
        }
        sys::ForkResult::Parent { child: pid } => {
            drop(child);
            let mut b = [0u8; 1];
            let mapped = parent
                .read_exact(&mut b)
                .ctx(|| "waiting for the user namespace".into())
                .and_then(|()| plan.apply(pid))
                .and_then(|()| parent.write_all(b"m").ctx(|| "socket".into()));
            drop(parent);
            let st = waitpid(pid, None);
            mapped?;
            match st {
                Ok(WaitStatus::Exited(_, 0)) => Ok(()),
                _ => Err(Error::msg("removing the files failed there too")),
            }
        }
    }
}
