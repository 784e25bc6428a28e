//! Id maps between the ids a layer stores and the ids seen outside it, in one format for every
//! place that needs one: `-o uidmapping=`/`gidmapping=` (fuse-overlayfs's option: the layers
//! hold container ids, the union shows host ids), `unionfs-run --uid-map` (a user namespace:
//! the container's ids are written to disk as host ids), and `unionfs-layer export/import`.
//!
//! A map is a list of ranges `CONTAINER:HOST:COUNT`, written one after the other with colons
//! (`0:1000:1:1:100000:65536`), as fuse-overlayfs and `/proc/PID/uid_map` order them. An empty
//! map changes nothing. The map an upper was written under is recorded in its work dir
//! ([`RECORD`]), so that an export can turn host ids back into container ids.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd};

use crate::error::{Error, Result};
use crate::sys::{self, Errno, SysResult};

/// One range: `count` container ids from `container` are the host ids from `host`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// First container id (what a container, or a layer used by fuse-overlayfs, holds).
    pub container: u32,
    /// First host id (what the host sees).
    pub host: u32,
    /// How many ids.
    pub count: u32,
}

/// A list of non-overlapping [`IdRange`]s; empty is the identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMap {
    ranges: Vec<IdRange>,
}

impl IdMap {
    /// A map of `ranges`; overlapping ranges (on either side) are refused, as the kernel
    /// refuses them in a uid_map: an id would have two meanings.
    pub fn new(ranges: Vec<IdRange>) -> Result<IdMap> {
        for (i, a) in ranges.iter().enumerate() {
            let end = |start: u32| u64::from(start) + u64::from(a.count);
            if a.count == 0 || end(a.container) > 1 << 32 || end(a.host) > 1 << 32 {
                return Err(Error::new(format!(
                    "range {}:{}:{} is empty or goes past the largest id",
                    a.container, a.host, a.count
                )));
            }
            for b in &ranges[..i] {
                let overlap = |x: u32, y: u32| {
                    let (x, y) = (u64::from(x), u64::from(y));
                    x < y + u64::from(b.count) && y < x + u64::from(a.count)
                };
                if overlap(a.container, b.container) || overlap(a.host, b.host) {
                    return Err(Error::new(format!(
                        "ranges {}:{}:{} and {}:{}:{} overlap",
                        b.container, b.host, b.count, a.container, a.host, a.count
                    )));
                }
            }
        }
        Ok(IdMap { ranges })
    }

    /// Parses `CONTAINER:HOST:COUNT[:CONTAINER:HOST:COUNT...]`.
    pub fn parse(s: &str) -> Result<IdMap> {
        let bad = || {
            Error::new(format!(
                "{s:?}: expected CONTAINER:HOST:COUNT[:CONTAINER:HOST:COUNT...], e.g. 0:100000:65536"
            ))
        };
        // Empty fields are skipped, as fuse-overlayfs's strtok does: containers/storage writes
        // every range as `:C:H:N`, so podman passes `uidmapping=:0:100000:65536`.
        let nums: Vec<u32> = s
            .split(':')
            .filter(|p| !p.trim().is_empty())
            .map(|p| p.trim().parse::<u32>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| bad())?;
        if nums.is_empty() || nums.len() % 3 != 0 {
            return Err(bad());
        }
        let ranges = nums
            .chunks(3)
            .map(|c| IdRange {
                container: c[0],
                host: c[1],
                count: c[2],
            })
            .collect();
        IdMap::new(ranges).map_err(|e| Error::new(format!("{s:?}: {e}")))
    }

    /// True for the empty map, which changes no id.
    pub fn is_identity(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The ranges, in the order given.
    pub fn ranges(&self) -> &[IdRange] {
        &self.ranges
    }

    /// The host id of container id `id` (itself for the identity; `None` when unmapped).
    pub fn to_host(&self, id: u32) -> Option<u32> {
        if self.is_identity() {
            return Some(id);
        }
        self.ranges
            .iter()
            .find(|r| id >= r.container && id - r.container < r.count)
            .map(|r| r.host + (id - r.container))
    }

    /// The container id of host id `id` (itself for the identity; `None` when unmapped).
    pub fn to_container(&self, id: u32) -> Option<u32> {
        if self.is_identity() {
            return Some(id);
        }
        self.ranges
            .iter()
            .find(|r| id >= r.host && id - r.host < r.count)
            .map(|r| r.container + (id - r.host))
    }
}

impl fmt::Display for IdMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{}:{}:{}", r.container, r.host, r.count)?;
        }
        Ok(())
    }
}

/// The uid and the gid map of one user namespace (or of one union's view).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMaps {
    /// User ids.
    pub uids: IdMap,
    /// Group ids.
    pub gids: IdMap,
}

/// The name of the record, in an upper's work dir, of the id maps its files were written under.
pub const RECORD: &std::ffi::CStr = c"idmap";

impl IdMaps {
    /// True when neither map changes an id.
    pub fn is_identity(&self) -> bool {
        self.uids.is_identity() && self.gids.is_identity()
    }

    /// The record's text: `uid MAP` and `gid MAP` lines.
    pub fn to_record(&self) -> String {
        format!(
            "# the container:host:count id maps this upper's files were written under\n\
             uid {}\ngid {}\n",
            self.uids, self.gids
        )
    }

    /// Parses a record written by [`IdMaps::to_record`].
    pub fn from_record(text: &str) -> Result<IdMaps> {
        let mut maps = IdMaps::default();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (which, map) = line.split_once(' ').unwrap_or((line, ""));
            let m = match map.trim() {
                "" => IdMap::default(),
                m => IdMap::parse(m)?,
            };
            match which {
                "uid" => maps.uids = m,
                "gid" => maps.gids = m,
                _ => return Err(Error::new(format!("unknown line {line:?}"))),
            }
        }
        Ok(maps)
    }

    /// Writes the record into the work dir `work` (replaced atomically).
    pub fn write_record(&self, work: BorrowedFd<'_>) -> SysResult<()> {
        let tmp = c"idmap.tmp";
        let fd = sys::openat(
            work,
            tmp,
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW,
            0o644,
        )?;
        let text = self.to_record();
        let mut done = 0;
        while done < text.len() {
            done += sys::pwrite(fd.as_fd(), &text.as_bytes()[done..], done as u64)?;
        }
        sys::renameat2(work, tmp, work, RECORD, 0)
    }

    /// The record in the work dir `work`, if there is one.
    pub fn read_record(work: BorrowedFd<'_>) -> SysResult<Option<IdMaps>> {
        let fd = match sys::openat(work, RECORD, libc::O_RDONLY | libc::O_NOFOLLOW, 0) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut buf = vec![0u8; 64 << 10];
        let n = sys::pread(fd.as_fd(), &mut buf, 0)?;
        let text = String::from_utf8_lossy(&buf[..n]);
        IdMaps::from_record(&text)
            .map(Some)
            .map_err(|_| Errno::EINVAL)
    }
}

/// An ACL entry's tag for a named user (`ACL_USER` of the kernel's xattr format).
const ACL_USER: u16 = 0x02;
/// An ACL entry's tag for a named group (`ACL_GROUP`).
const ACL_GROUP: u16 = 0x08;
/// The xattr format's header (version) and entry sizes.
const ACL_HEADER: usize = 4;
const ACL_ENTRY: usize = 8;

/// True for the xattrs that hold POSIX ACLs, whose named users and groups are ids.
pub fn is_acl_xattr(name: &[u8]) -> bool {
    name == b"system.posix_acl_access" || name == b"system.posix_acl_default"
}

/// Rewrites the ids of the named users and groups of a POSIX ACL xattr `value` with `map`
/// (`true` for a user id): the first id it has no answer for stops the rewrite and is returned.
pub fn map_acl_ids(
    value: &mut [u8],
    mut map: impl FnMut(bool, u32) -> Option<u32>,
) -> std::result::Result<(), u32> {
    if value.len() < ACL_HEADER {
        return Ok(());
    }
    for e in value[ACL_HEADER..].chunks_exact_mut(ACL_ENTRY) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let user = match tag {
            ACL_USER => true,
            ACL_GROUP => false,
            _ => continue,
        };
        let new = map(user, id).ok_or(id)?;
        e[4..8].copy_from_slice(&new.to_le_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_map_and_back() {
        let m = IdMap::parse("0:1000:1:1:100000:65536").unwrap();
        assert_eq!(m.to_host(0), Some(1000));
        assert_eq!(m.to_host(1), Some(100000));
        assert_eq!(m.to_host(65536), Some(165535));
        assert_eq!(m.to_host(65537), None);
        assert_eq!(m.to_container(1000), Some(0));
        assert_eq!(m.to_container(100999), Some(1000));
        assert_eq!(m.to_container(0), None);
        assert_eq!(m.to_string(), "0:1000:1:1:100000:65536");
        // As containers/storage writes it for podman.
        assert_eq!(IdMap::parse(":0:1000:1:1:100000:65536").unwrap(), m);
        let id = IdMap::default();
        assert_eq!((id.to_host(7), id.to_container(7)), (Some(7), Some(7)));
    }

    #[test]
    fn bad_maps_say_why() {
        for (s, why) in [
            ("0:1000", "expected CONTAINER:HOST:COUNT"),
            ("0:x:1", "expected"),
            ("0:1000:0", "empty"),
            ("0:4294967295:2", "past the largest id"),
            ("0:1000:10:5:2000:10", "overlap"),
            ("0:1000:10:20:1005:10", "overlap"),
        ] {
            let e = IdMap::parse(s).unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn record_round_trip() {
        let maps = IdMaps {
            uids: IdMap::parse("0:1000:1:1:100000:65536").unwrap(),
            gids: IdMap::parse("0:1000:1").unwrap(),
        };
        assert_eq!(IdMaps::from_record(&maps.to_record()).unwrap(), maps);
        let none = IdMaps::default();
        assert_eq!(IdMaps::from_record(&none.to_record()).unwrap(), none);
        assert!(IdMaps::from_record("uid 0:1\n").is_err());
    }
}
