//! The naming rules of the OCI/AUFS layer format: `.wh.<name>` whiteouts, the `.wh..wh..opq`
//! opaque marker, reserved `.wh..wh.*` names, and the kernel overlayfs forms we also read
//! (0/0 character devices, `*.overlay.opaque` xattrs).

use std::ffi::CStr;

/// Every name with this prefix is layer metadata and never shows in the union.
pub const WH_PREFIX: &[u8] = b".wh.";
/// The opaque-directory marker file.
pub const OPAQUE_MARKER: &CStr = c".wh..wh..opq";
/// Names with this prefix are reserved for layer-format metadata (ours included).
pub const RESERVED_PREFIX: &[u8] = b".wh..wh.";
/// The default name of our work directory inside the upper layer.
pub const DEFAULT_WORK_NAME: &str = ".wh..wh.unionfs";
/// Opaque-directory xattrs written by kernel overlayfs and by rootless tools.
pub const OPAQUE_XATTRS: [&CStr; 2] = [c"trusted.overlay.opaque", c"user.overlay.opaque"];

/// The longest name a directory entry may have (NAME_MAX on Linux filesystems).
pub const NAME_MAX: usize = 255;

/// Mode of a 0/0 character-device whiteout (kernel overlayfs writes the same).
pub const CHARDEV_WHITEOUT_MODE: u32 = libc::S_IFCHR;

/// True when `.wh.NAME` fits in NAME_MAX. A longer name is whited out by a 0/0 character
/// device named NAME instead (the kernel's form, which every reader of ours and the kernel
/// understand; `unionfs-layer export` turns it into a `.wh.NAME` tar entry, where names are not
/// bound by NAME_MAX).
pub fn has_file_form(name: &[u8]) -> bool {
    WH_PREFIX.len() + name.len() <= NAME_MAX
}

/// True for a name the union never shows and never lets anyone create (`.wh.*`).
pub fn is_hidden(name: &[u8]) -> bool {
    name.starts_with(WH_PREFIX)
}

/// The whiteout file name for `name`.
pub fn whiteout_for(name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(WH_PREFIX.len() + name.len());
    v.extend_from_slice(WH_PREFIX);
    v.extend_from_slice(name);
    v
}

/// If `name` is a whiteout file (`.wh.X`, not a reserved `.wh..wh.*` name), the name it hides.
pub fn whited_out(name: &[u8]) -> Option<&[u8]> {
    if name.starts_with(RESERVED_PREFIX) {
        return None;
    }
    name.strip_prefix(WH_PREFIX).filter(|n| !n.is_empty())
}

/// True for a kernel-overlayfs style whiteout: a character device with device number 0/0.
pub fn is_chardev_whiteout(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

/// Our per-entry origin record (the union inode number, kept across copy-up), in the
/// `trusted.` namespace when the daemon may set it (needs CAP_SYS_ADMIN; it works on every
/// file type), else `user.`.
pub const ORIGIN_XATTRS: [&CStr; 2] = [c"trusted.unionfs.origin", c"user.unionfs.origin"];

/// The record of a metadata-only copy-up (see `metacopy`), in the origin record's namespace.
pub const METACOPY_XATTRS: [&CStr; 2] = [c"trusted.unionfs.metacopy", c"user.unionfs.metacopy"];

/// Where the record of a copy not yet flushed keeps its body (see `behind`), on a file in the
/// work dir, in the origin record's namespace.
pub const BEHIND_XATTRS: [&CStr; 2] = [c"trusted.unionfs.behind", c"user.unionfs.behind"];

/// True for xattrs that belong to the layer format or to us, which the union never exposes,
/// copies up, or lets anyone set through the mount.
pub fn is_internal_xattr(name: &[u8]) -> bool {
    const INTERNAL: [&[u8]; 4] = [
        b"trusted.unionfs.",
        b"user.unionfs.",
        b"trusted.overlay.",
        b"user.overlay.",
    ];
    INTERNAL.iter().any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteout_names_round_trip() {
        assert_eq!(whiteout_for(b"f"), b".wh.f");
        assert_eq!(whited_out(b".wh.f"), Some(&b"f"[..]));
        assert_eq!(whited_out(b".wh..wh..opq"), None);
        assert_eq!(whited_out(b".wh."), None);
        assert_eq!(whited_out(b"f"), None);
        assert!(is_hidden(b".wh.x"));
        assert!(!is_hidden(b".whx"));
    }

    #[test]
    fn only_names_up_to_251_bytes_have_a_file_whiteout() {
        assert!(has_file_form(&[b'a'; 251]));
        assert!(!has_file_form(&[b'a'; 252]));
        assert!(!has_file_form(&[b'a'; 255]));
    }

    #[test]
    fn internal_xattrs_are_recognised() {
        assert!(is_internal_xattr(b"trusted.unionfs.origin"));
        assert!(is_internal_xattr(b"user.overlay.opaque"));
        assert!(!is_internal_xattr(b"user.mime_type"));
        assert!(!is_internal_xattr(b"security.capability"));
    }
}
