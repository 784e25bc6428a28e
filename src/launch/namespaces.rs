//! Which namespaces each launcher process gets.

use nix::sched::CloneFlags;

use super::config::{LaunchConfig, NetMode};

/// Which process creates the user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsernsOwner {
    /// Rootless: the holder, so that it can mount the union (FUSE and mount(2) need a user
    /// namespace that owns the mount namespace) and the container inherits it.
    Holder,
    /// Real root with id maps: the container init only. The holder stays real root so it can
    /// open /dev/fuse (mode 0600) and serve every uid; the container's ids are shifted.
    Init,
}

/// Who creates the user namespace for `cfg`, if anyone (`cfg.rootless` already reflects
/// whether we run as root).
pub fn userns_owner(cfg: &LaunchConfig) -> Option<UsernsOwner> {
    if cfg.rootless {
        Some(UsernsOwner::Holder)
    } else if cfg.needs_userns() {
        Some(UsernsOwner::Init)
    } else {
        None
    }
}

/// Namespaces the holder unshares: a user namespace when rootless (or with explicit id maps),
/// and always a private mount namespace so the root mount is invisible to the host.
pub fn holder_flags(userns: bool) -> CloneFlags {
    let mut f = CloneFlags::CLONE_NEWNS;
    if userns {
        f |= CloneFlags::CLONE_NEWUSER;
    }
    f
}

/// Namespaces the container init is cloned into.
///
/// CLONE_PARENT makes the init a child of the launcher rather than of the holder, so the
/// launcher reaps it directly (exit status, 128+signal) and its parent-death signal follows the
/// launcher. The cgroup namespace is unshared later, by the init itself, once the launcher has
/// moved it into its cgroup (so that cgroup becomes the init's root).
pub fn container_flags(net: NetMode, own_userns: bool) -> CloneFlags {
    let mut f = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_PARENT;
    if net == NetMode::None {
        f |= CloneFlags::CLONE_NEWNET;
    }
    if own_userns {
        f |= CloneFlags::CLONE_NEWUSER;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        assert!(holder_flags(true).contains(CloneFlags::CLONE_NEWUSER));
        assert!(!holder_flags(false).contains(CloneFlags::CLONE_NEWUSER));
        assert!(container_flags(NetMode::None, false).contains(CloneFlags::CLONE_NEWNET));
        assert!(!container_flags(NetMode::Host, false).contains(CloneFlags::CLONE_NEWNET));
        assert!(container_flags(NetMode::Host, false).contains(CloneFlags::CLONE_NEWPID));
        assert!(container_flags(NetMode::Host, true).contains(CloneFlags::CLONE_NEWUSER));
    }
}
