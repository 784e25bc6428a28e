//! How the union shows and writes owners, as fuse-overlayfs's options define it:
//! `uidmapping=`/`gidmapping=` (the layers hold container ids; the union shows the host ids
//! they map to, and writes the container id of whoever creates or chowns), and
//! `squash_to_root`, `squash_to_uid=`, `squash_to_gid=` (every entry shows one owner; what is
//! written is still the mapped id, and a failing chown is not reported).
//!
//! The one place ids change: attributes (`UnionFs::attr`), owners of new entries
//! (`dir::do_create`), chown (`attr::do_setattr`) and the ids inside POSIX ACL xattrs
//! (`xattr`). The identity costs one flag test per use.

use crate::layer::idmap::{is_acl_xattr, map_acl_ids, IdMaps};

/// The owner rules of one union (see the module docs).
#[derive(Debug, Clone)]
pub struct Owners {
    /// Container (stored) ids to host (shown) ids.
    pub maps: IdMaps,
    /// Every entry shows this uid (`squash_to_uid=`, or 0 for `squash_to_root`).
    pub squash_uid: Option<u32>,
    /// Every entry shows this gid.
    pub squash_gid: Option<u32>,
    /// What an id without a mapping becomes (`/proc/sys/kernel/overflowuid`, as in
    /// fuse-overlayfs and the kernel's user namespaces).
    overflow_uid: u32,
    overflow_gid: u32,
    identity: bool,
}

impl Default for Owners {
    fn default() -> Self {
        Owners::new(IdMaps::default(), None, None)
    }
}

fn overflow(file: &str) -> u32 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65534)
}

impl Owners {
    /// Owner rules from the maps and the squash ids.
    pub fn new(maps: IdMaps, squash_uid: Option<u32>, squash_gid: Option<u32>) -> Owners {
        let identity = maps.is_identity() && squash_uid.is_none() && squash_gid.is_none();
        let (overflow_uid, overflow_gid) = if maps.is_identity() {
            (65534, 65534)
        } else {
            (
                overflow("/proc/sys/kernel/overflowuid"),
                overflow("/proc/sys/kernel/overflowgid"),
            )
        };
        Owners {
            maps,
            squash_uid,
            squash_gid,
            overflow_uid,
            overflow_gid,
            identity,
        }
    }

    /// True when no id changes: the fast path of every use.
    pub fn is_identity(&self) -> bool {
        self.identity
    }

    /// True when a squash option is on (chown errors are then not reported).
    pub fn squashes(&self) -> bool {
        self.squash_uid.is_some() || self.squash_gid.is_some()
    }

    /// The uid the union shows for stored uid `id`.
    pub fn shown_uid(&self, id: u32) -> u32 {
        self.squash_uid
            .or_else(|| self.maps.uids.to_host(id))
            .unwrap_or(self.overflow_uid)
    }

    /// The gid the union shows for stored gid `id`.
    pub fn shown_gid(&self, id: u32) -> u32 {
        self.squash_gid
            .or_else(|| self.maps.gids.to_host(id))
            .unwrap_or(self.overflow_gid)
    }

    /// The uid written for uid `id` of a request (a creator, a chown).
    pub fn stored_uid(&self, id: u32) -> u32 {
        self.maps.uids.to_container(id).unwrap_or(self.overflow_uid)
    }

    /// The gid written for gid `id` of a request.
    pub fn stored_gid(&self, id: u32) -> u32 {
        self.maps.gids.to_container(id).unwrap_or(self.overflow_gid)
    }

    /// Maps the named users and groups of a POSIX ACL xattr `value` (`name` is checked; other
    /// xattrs are left alone): stored ids to shown ones with `to_shown`, else the reverse.
    pub fn map_acl(&self, name: &[u8], value: &mut [u8], to_shown: bool) {
        if !is_acl_xattr(name) || self.maps.is_identity() {
            return;
        }
        let _ = map_acl_ids(value, |user, id| {
            Some(match (user, to_shown) {
                (true, true) => self.maps.uids.to_host(id).unwrap_or(self.overflow_uid),
                (true, false) => self.stored_uid(id),
                (false, true) => self.maps.gids.to_host(id).unwrap_or(self.overflow_gid),
                (false, false) => self.stored_gid(id),
            })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::idmap::IdMap;

    fn maps() -> IdMaps {
        IdMaps {
            uids: IdMap::parse("0:1000:1:1:100000:65536").unwrap(),
            gids: IdMap::parse("0:2000:10").unwrap(),
        }
    }

    #[test]
    fn shown_and_stored_ids() {
        let o = Owners::new(maps(), None, None);
        assert!(!o.is_identity() && !o.squashes());
        assert_eq!((o.shown_uid(0), o.shown_uid(1000)), (1000, 100999));
        assert_eq!(o.shown_uid(70000), o.overflow_uid);
        assert_eq!((o.stored_uid(1000), o.stored_uid(100999)), (0, 1000));
        assert_eq!(o.stored_uid(5), o.overflow_uid);
        assert_eq!((o.shown_gid(3), o.stored_gid(2003)), (2003, 3));
        let id = Owners::default();
        assert!(id.is_identity());
        assert_eq!((id.shown_uid(42), id.stored_gid(42)), (42, 42));
    }

    #[test]
    fn squash_shows_one_owner_but_writes_the_mapped_id() {
        let o = Owners::new(maps(), Some(0), Some(0));
        assert!(o.squashes() && !o.is_identity());
        assert_eq!((o.shown_uid(1000), o.shown_gid(5)), (0, 0));
        assert_eq!(o.stored_uid(1000), 0);
        let o = Owners::new(IdMaps::default(), Some(7), None);
        assert_eq!((o.shown_uid(1), o.shown_gid(5)), (7, 5));
    }

    #[test]
    fn acl_entries_of_named_users_and_groups_are_mapped() {
        let o = Owners::new(maps(), None, None);
        let entry = |tag: u16, perm: u16, id: u32| {
            let mut e = tag.to_le_bytes().to_vec();
            e.extend(perm.to_le_bytes());
            e.extend(id.to_le_bytes());
            e
        };
        let mut v = 2u32.to_le_bytes().to_vec();
        for (t, id) in [(0x01, u32::MAX), (0x02, 1000), (0x08, 3), (0x20, u32::MAX)] {
            v.extend(entry(t, 4, id));
        }
        let stored = v.clone();
        o.map_acl(b"system.posix_acl_access", &mut v, true);
        let id_at = |v: &[u8], i: usize| {
            let o = 4 + i * 8 + 4;
            u32::from_le_bytes(v[o..o + 4].try_into().unwrap())
        };
        assert_eq!((id_at(&v, 1), id_at(&v, 2)), (100999, 2003));
        assert_eq!((id_at(&v, 0), id_at(&v, 3)), (u32::MAX, u32::MAX));
        o.map_acl(b"system.posix_acl_access", &mut v, false);
        assert_eq!(v, stored);
        o.map_acl(b"user.other", &mut v, true);
        assert_eq!(v, stored);
    }
}
