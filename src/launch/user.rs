//! Who the command runs as: `--user` or an image's `User` (`user[:group]`, by name or number),
//! resolved against the container's own `/etc/passwd` and `/etc/group` as podman and runc do,
//! in the container init once the root is in place (so an upper's changes to them count).

use super::idmap::{IdKind, MapPlan};
use super::Error;

/// A user or group, by number or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Id {
    /// A numeric id.
    Num(u32),
    /// A name to look up in the container's files.
    Name(String),
}

impl Id {
    fn parse(s: &str) -> Id {
        match s.parse::<u32>() {
            Ok(n) => Id::Num(n),
            Err(_) => Id::Name(s.to_string()),
        }
    }
}

/// `user[:group]` as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    /// The user.
    pub user: Id,
    /// The group, when given.
    pub group: Option<Id>,
}

/// A user resolved to ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Every group id the command gets (the primary one first).
    pub groups: Vec<u32>,
    /// The home directory from /etc/passwd, when the user is listed there.
    pub home: Option<String>,
}

impl UserSpec {
    /// Root (0:0).
    pub fn root() -> UserSpec {
        UserSpec {
            user: Id::Num(0),
            group: None,
        }
    }

    /// Parses `user[:group]` (names or numbers).
    pub fn parse(s: &str) -> Result<UserSpec, Error> {
        let (u, g) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        let valid = |x: &str| !x.is_empty() && !x.contains(['/', ':', '\n']);
        if !valid(u) || g.is_some_and(|g| !valid(g)) {
            return Err(Error::msg(format!(
                "--user {s:?}: expected USER or USER:GROUP, by name or number (e.g. 1000:1000 or \
                 app:staff)"
            )));
        }
        Ok(UserSpec {
            user: Id::parse(u),
            group: g.map(Id::parse),
        })
    }

    /// The ids, when they need no lookup (both given as numbers).
    pub fn numeric(&self) -> Option<(u32, u32)> {
        match (&self.user, &self.group) {
            (Id::Num(u), Some(Id::Num(g))) => Some((*u, *g)),
            _ => None,
        }
    }

    /// Resolves names (and a number's primary group and home) with the text of the
    /// container's `/etc/passwd` and `/etc/group` (`None`: the file does not exist).
    ///
    /// A number not listed in passwd, without a group, keeps the gid equal to the uid (what
    /// `--user N` always meant here; podman would take 0).
    pub fn resolve(&self, passwd: Option<&str>, group: Option<&str>) -> Result<Resolved, Error> {
        let entries = |text: Option<&str>| -> Vec<Vec<String>> {
            text.unwrap_or_default()
                .lines()
                .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
                .map(|l| l.split(':').map(str::to_string).collect())
                .collect()
        };
        let users = entries(passwd);
        let groups = entries(group);
        let num = |f: Option<&String>| f.and_then(|x| x.parse::<u32>().ok());
        // passwd: name:x:uid:gid:gecos:home:shell
        let found = users.iter().find(|f| match &self.user {
            Id::Name(n) => f.first() == Some(n),
            Id::Num(u) => num(f.get(2)) == Some(*u),
        });
        let (uid, mut gid, name, home) = match (&self.user, found) {
            (_, Some(f)) => match (num(f.get(2)), num(f.get(3))) {
                (Some(u), Some(g)) => (u, g, f.first().cloned(), f.get(5).cloned()),
                _ => {
                    return Err(Error::msg(format!(
                        "the container's /etc/passwd has a broken line for user {:?}",
                        f.first().cloned().unwrap_or_default()
                    )))
                }
            },
            (Id::Num(u), None) => (*u, *u, None, None),
            (Id::Name(n), None) => {
                return Err(Error::msg(format!(
                    "user '{n}' is not in the container's /etc/passwd{}: give a number \
                     (--user UID[:GID]) or a user the image has",
                    if passwd.is_none() {
                        " (it has none)"
                    } else {
                        ""
                    }
                )))
            }
        };
        let mut all = Vec::new();
        match &self.group {
            Some(Id::Num(g)) => gid = *g,
            Some(Id::Name(n)) => {
                gid = groups
                    .iter()
                    .find(|f| f.first() == Some(n))
                    .and_then(|f| num(f.get(2)))
                    .ok_or_else(|| {
                        Error::msg(format!(
                            "group '{n}' is not in the container's /etc/group: give a number \
                             (--user USER:GID) or a group the image has"
                        ))
                    })?;
            }
            None => {
                // Without an explicit group, the user's memberships count too (runc's rule).
                if let Some(name) = &name {
                    for f in &groups {
                        let members = f.get(3).map(String::as_str).unwrap_or("");
                        if members.split(',').any(|m| m.trim() == name) {
                            if let Some(g) = num(f.get(2)) {
                                all.push(g);
                            }
                        }
                    }
                }
            }
        }
        all.insert(0, gid);
        let mut seen = std::collections::HashSet::new();
        all.retain(|g| seen.insert(*g));
        Ok(Resolved {
            uid,
            gid,
            groups: all,
            home: home.filter(|h| !h.is_empty()),
        })
    }
}

impl std::fmt::Display for UserSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = |i: &Id| match i {
            Id::Num(n) => n.to_string(),
            Id::Name(s) => s.clone(),
        };
        write!(f, "{}", id(&self.user))?;
        match &self.group {
            Some(g) => write!(f, ":{}", id(g)),
            None => Ok(()),
        }
    }
}

/// Refuses ids the container's user namespace does not map, saying how to map them.
/// `origin` says where the user came from (`--user`, `the image's User`).
pub fn check_mapped(maps: &MapPlan, uid: u32, gid: u32, origin: &str) -> Result<(), Error> {
    if maps.maps(IdKind::Uid, uid) && maps.maps(IdKind::Gid, gid) {
        return Ok(());
    }
    Err(Error::msg(format!(
        "{origin} {uid}:{gid} is not mapped in the container's user namespace (rootless \
         runs map only container id 0 by default); add ranges, e.g. --uid-map 0:{}:1 \
         --uid-map 1:100000:65536 (and the same for --gid-map), with ranges granted in \
         /etc/subuid and /etc/subgid",
        nix::unistd::geteuid()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nappgrp:x:1001:\nstaff:x:2000:app,other\nwheel:x:10:other\n";

    fn r(s: &str) -> Result<Resolved, Error> {
        UserSpec::parse(s)?.resolve(Some(PASSWD), Some(GROUP))
    }

    #[test]
    fn names_numbers_groups_and_homes() {
        let app = r("app").unwrap();
        assert_eq!((app.uid, app.gid), (1000, 1001));
        assert_eq!(app.groups, vec![1001, 2000]);
        assert_eq!(app.home.as_deref(), Some("/home/app"));
        let n = r("1000").unwrap();
        assert_eq!(
            (n.uid, n.gid, n.groups.clone()),
            (1000, 1001, vec![1001, 2000])
        );
        let explicit = r("app:staff").unwrap();
        assert_eq!((explicit.gid, explicit.groups), (2000, vec![2000]));
        assert_eq!(r("app:7").unwrap().gid, 7);
        let unlisted = r("4242").unwrap();
        assert_eq!(
            (unlisted.uid, unlisted.gid, unlisted.home),
            (4242, 4242, None)
        );
        assert_eq!(r("0").unwrap().home.as_deref(), Some("/root"));
        assert!(r("nobody")
            .unwrap_err()
            .to_string()
            .contains("not in the container's /etc/passwd"));
        assert!(r("app:nogroup")
            .unwrap_err()
            .to_string()
            .contains("/etc/group"));
        assert!(UserSpec::parse("").is_err());
        assert!(UserSpec::parse("a:").is_err());
        assert_eq!(UserSpec::parse("5:7").unwrap().numeric(), Some((5, 7)));
        assert_eq!(UserSpec::parse("5").unwrap().numeric(), None);
        let none = UserSpec::parse("app").unwrap().resolve(None, None);
        assert!(none.unwrap_err().to_string().contains("it has none"));
    }
}
