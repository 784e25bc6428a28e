//! Which namespaces each launcher process gets.

use nix::sched::CloneFlags;

use super::config::NetMode;

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
pub fn container_flags(net: NetMode) -> CloneFlags {
    let mut f = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_PARENT;
    if net == NetMode::None {
        f |= CloneFlags::CLONE_NEWNET;
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
        assert!(container_flags(NetMode::None).contains(CloneFlags::CLONE_NEWNET));
        assert!(!container_flags(NetMode::Host).contains(CloneFlags::CLONE_NEWNET));
        assert!(container_flags(NetMode::Host).contains(CloneFlags::CLONE_NEWPID));
    }
}
