//! The capability set a container keeps (the usual container default, changed by `--cap-add`,
//! `--cap-drop` and `--privileged`) and dropping to it.

use caps::{CapSet, Capability, CapsHashSet};

use super::Error;

/// Capabilities a container's root keeps: enough to behave like root on its own files,
/// nothing that reaches the host (no SYS_ADMIN, SYS_MODULE, SYS_PTRACE, NET_ADMIN, ...).
pub const DEFAULT: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// The default set as a hash set.
pub fn default_set() -> CapsHashSet {
    DEFAULT.iter().copied().collect()
}

/// A `--cap-add`/`--cap-drop` value: one capability or all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapSpec {
    /// `ALL`.
    All,
    /// One capability.
    One(Capability),
}

/// Parses `SYS_ADMIN`, `CAP_SYS_ADMIN` or `sys_admin` (any case), or `ALL`.
pub fn parse_cap(s: &str) -> Result<CapSpec, Error> {
    let up = s.trim().to_ascii_uppercase();
    if up == "ALL" {
        return Ok(CapSpec::All);
    }
    let full = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    full.parse::<Capability>().map(CapSpec::One).map_err(|_| {
        Error::msg(format!(
            "{s:?} is not a capability: write e.g. NET_ADMIN or CAP_NET_ADMIN, or ALL (see \
             capabilities(7))"
        ))
    })
}

/// The set a container gets: the default (or every capability with `privileged`), with
/// `--cap-drop ALL` emptying it first, then the adds, then the other drops (as podman does).
pub fn effective_set(privileged: bool, add: &[CapSpec], drop: &[CapSpec]) -> CapsHashSet {
    let mut set = if privileged {
        caps::all()
    } else {
        default_set()
    };
    if drop.contains(&CapSpec::All) {
        set.clear();
    }
    for a in add {
        match a {
            CapSpec::All => set = caps::all(),
            CapSpec::One(c) => {
                set.insert(*c);
            }
        }
    }
    for d in drop {
        if let CapSpec::One(c) = d {
            set.remove(c);
        }
    }
    set
}

/// Shrink the bounding set to `keep` (needs CAP_SETPCAP, so do it before setuid).
pub fn drop_bounding(keep: &CapsHashSet) -> Result<(), Error> {
    for c in caps::all() {
        if !keep.contains(&c) {
            // Capabilities the running kernel does not know give EINVAL: nothing to drop.
            let _ = caps::drop(None, CapSet::Bounding, c);
        }
    }
    Ok(())
}

/// Limit effective, permitted and inheritable sets to `keep`, clear ambient.
pub fn restrict_to(keep: &CapsHashSet) -> Result<(), Error> {
    let map = |e: caps::errors::CapsError| Error::msg(format!("setting capabilities: {e}"));
    caps::clear(None, CapSet::Ambient).map_err(map)?;
    let eff: CapsHashSet = caps::read(None, CapSet::Permitted)
        .map_err(map)?
        .intersection(keep)
        .copied()
        .collect();
    caps::set(None, CapSet::Effective, &eff).map_err(map)?;
    caps::set(None, CapSet::Permitted, &eff).map_err(map)?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new()).map_err(map)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_and_drops_apply_over_the_default() {
        let one = |s| parse_cap(s).unwrap();
        assert_eq!(one("sys_admin"), CapSpec::One(Capability::CAP_SYS_ADMIN));
        assert_eq!(
            one("CAP_NET_ADMIN"),
            CapSpec::One(Capability::CAP_NET_ADMIN)
        );
        assert_eq!(one("all"), CapSpec::All);
        assert!(parse_cap("SYS_WIZARD").is_err());
        let s = effective_set(false, &[one("SYS_ADMIN")], &[one("CHOWN")]);
        assert!(s.contains(&Capability::CAP_SYS_ADMIN) && !s.contains(&Capability::CAP_CHOWN));
        assert_eq!(s.len(), DEFAULT.len());
        let s = effective_set(false, &[one("KILL")], &[CapSpec::All]);
        assert_eq!(s, [Capability::CAP_KILL].into_iter().collect());
        assert_eq!(effective_set(true, &[], &[]), caps::all());
        assert_eq!(effective_set(false, &[CapSpec::All], &[]), caps::all());
    }
}
