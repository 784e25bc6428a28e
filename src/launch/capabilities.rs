//! The capability set a container keeps (the usual container default) and dropping to it.

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

/// Shrink the bounding set to the default set (needs CAP_SETPCAP, so do it before setuid).
pub fn drop_bounding() -> Result<(), Error> {
    let keep = default_set();
    for c in caps::all() {
        if !keep.contains(&c) {
            // Capabilities the running kernel does not know give EINVAL: nothing to drop.
            let _ = caps::drop(None, CapSet::Bounding, c);
        }
    }
    Ok(())
}

/// Limit effective, permitted and inheritable sets to the default set, clear ambient.
pub fn restrict_to_default() -> Result<(), Error> {
    let keep = default_set();
    let map = |e: caps::errors::CapsError| Error::msg(format!("setting capabilities: {e}"));
    caps::clear(None, CapSet::Ambient).map_err(map)?;
    let eff: CapsHashSet = caps::read(None, CapSet::Permitted)
        .map_err(map)?
        .intersection(&keep)
        .copied()
        .collect();
    caps::set(None, CapSet::Effective, &eff).map_err(map)?;
    caps::set(None, CapSet::Permitted, &eff).map_err(map)?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new()).map_err(map)?;
    Ok(())
}
