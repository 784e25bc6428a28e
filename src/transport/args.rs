//! The fixed arguments of requests (`fuse_in_header` and the `fuse_*_in` structs of
//! include/uapi/linux/fuse.h), read by field name instead of byte offset.

use super::wire::Args;
use crate::fs::op::Op;

/// `fuse_in_header`, the start of every request.
#[derive(Debug, Clone, Copy)]
pub struct InHeader {
    /// Request type (`fuse_opcode`).
    pub opcode: u32,
    /// Request id, echoed in the reply.
    pub unique: u64,
    /// The node the request is about.
    pub nodeid: u64,
    /// Caller's fsuid.
    pub uid: u32,
    /// Caller's fsgid.
    pub gid: u32,
    /// Caller's thread id (0 outside the daemon's pid namespace).
    pub pid: u32,
}

impl InHeader {
    /// Its size: len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding.
    pub const SIZE: usize = 40;

    /// Reads it from the front of `buf`.
    pub fn read(buf: &[u8]) -> InHeader {
        let a = Args::new(buf);
        InHeader {
            opcode: a.u32(4),
            unique: a.u64(8),
            nodeid: a.u64(16),
            uid: a.u32(24),
            gid: a.u32(28),
            pid: a.u32(32),
        }
    }
}

/// Declares a `fuse_*_in` struct read field by field from its byte offsets (the kernel's
/// layout, include/uapi/linux/fuse.h), and its size.
macro_rules! fuse_in {
    ($(#[$doc:meta])* $name:ident, $size:expr, { $($(#[$fdoc:meta])* $field:ident: $ty:ident @ $off:expr),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name {
            $($(#[$fdoc])* pub $field: $ty,)*
        }

        impl $name {
            /// Bytes of the struct (what precedes a request's names or data).
            pub const SIZE: usize = $size;

            /// Reads it from a request's fixed argument.
            pub fn read(a: &Args<'_>) -> Self {
                $name { $($field: a.$ty($off),)* }
            }
        }
    };
}

fuse_in!(
    /// `fuse_forget_in`.
    ForgetIn, 8, { /// References dropped.
    nlookup: u64 @ 0 });
fuse_in!(
    /// `fuse_batch_forget_in`, followed by `count` of `fuse_forget_one { nodeid, nlookup }`.
    BatchForgetIn, 8, { /// Entries that follow.
    count: u32 @ 0 });
fuse_in!(
    /// `fuse_getattr_in`.
    GetattrIn, 16, {
    /// `FUSE_GETATTR_FH` (1): `fh` is set.
    flags: u32 @ 0,
    /// The open file asked through.
    fh: u64 @ 8 });
fuse_in!(
    /// `fuse_setattr_in`.
    SetattrIn, 88, {
    /// `FATTR_*` bits: which fields are set.
    valid: u32 @ 0,
    /// Open file (FATTR_FH).
    fh: u64 @ 8,
    /// New size.
    size: u64 @ 16,
    /// Access time, seconds.
    atime: u64 @ 32,
    /// Modification time, seconds.
    mtime: u64 @ 40,
    /// Access time, nanoseconds.
    atimensec: u32 @ 56,
    /// Modification time, nanoseconds.
    mtimensec: u32 @ 60,
    /// New mode.
    mode: u32 @ 68,
    /// New owner.
    uid: u32 @ 76,
    /// New group.
    gid: u32 @ 80 });
fuse_in!(
    /// `fuse_mknod_in`.
    MknodIn, 16, { /// Type and permissions.
    mode: u32 @ 0, /// Device number.
    rdev: u32 @ 4, /// Caller's umask.
    umask: u32 @ 8 });
fuse_in!(
    /// `fuse_mkdir_in`.
    MkdirIn, 8, { /// Permissions.
    mode: u32 @ 0, /// Caller's umask.
    umask: u32 @ 4 });
fuse_in!(
    /// `fuse_rename_in`.
    RenameIn, 8, { /// Node of the new parent.
    newdir: u64 @ 0 });
fuse_in!(
    /// `fuse_rename2_in`.
    Rename2In, 16, { /// Node of the new parent.
    newdir: u64 @ 0, /// `RENAME_*` flags.
    flags: u32 @ 8 });
fuse_in!(
    /// `fuse_link_in` (the request's node is the new parent).
    LinkIn, 8, { /// Node to link.
    oldnodeid: u64 @ 0 });
fuse_in!(
    /// `fuse_open_in` (OPEN, OPENDIR).
    OpenIn, 8, { /// open(2) flags.
    flags: u32 @ 0, /// `FUSE_OPEN_KILL_SUIDGID`.
    open_flags: u32 @ 4 });
fuse_in!(
    /// `fuse_create_in`.
    CreateIn, 16, { /// open(2) flags.
    flags: u32 @ 0, /// Permissions.
    mode: u32 @ 4, /// Caller's umask.
    umask: u32 @ 8 });
fuse_in!(
    /// `fuse_read_in` (READ, READDIR, READDIRPLUS).
    ReadIn, 40, { /// Open file or directory.
    fh: u64 @ 0, /// Where.
    offset: u64 @ 8, /// How much.
    size: u32 @ 16 });
fuse_in!(
    /// `fuse_write_in`; the data follows.
    WriteIn, 40, { /// Open file.
    fh: u64 @ 0, /// Where.
    offset: u64 @ 8, /// How much.
    size: u32 @ 16, /// `FUSE_WRITE_KILL_SUIDGID` and others.
    write_flags: u32 @ 20 });
fuse_in!(
    /// `fuse_release_in` and `fuse_flush_in` (same size, `fh` first).
    ReleaseIn, 24, { /// Open file or directory.
    fh: u64 @ 0 });
fuse_in!(
    /// `fuse_fsync_in` (FSYNC, FSYNCDIR).
    FsyncIn, 16, { /// Open file.
    fh: u64 @ 0, /// Bit 0: data only.
    fsync_flags: u32 @ 8 });
fuse_in!(
    /// `fuse_setxattr_in`; name and value follow.
    SetxattrIn, 8, { /// Value length.
    size: u32 @ 0, /// setxattr(2) flags.
    flags: u32 @ 4 });
fuse_in!(
    /// `fuse_getxattr_in` (GETXATTR, LISTXATTR).
    GetxattrIn, 8, { /// Room the caller has (0: asks the size).
    size: u32 @ 0 });
fuse_in!(
    /// `fuse_fallocate_in`.
    FallocateIn, 32, { /// Open file.
    fh: u64 @ 0, /// Where.
    offset: u64 @ 8, /// How much.
    length: u64 @ 16, /// fallocate(2) mode.
    mode: u32 @ 24 });
fuse_in!(
    /// `fuse_lseek_in`.
    LseekIn, 24, { /// Open file.
    fh: u64 @ 0, /// Offset.
    offset: u64 @ 8, /// SEEK_DATA, SEEK_HOLE, ...
    whence: u32 @ 16 });
fuse_in!(
    /// `fuse_copy_file_range_in`.
    CopyFileRangeIn, 56, { /// Source file.
    fh_in: u64 @ 0, /// Source offset.
    off_in: u64 @ 8, /// Destination file.
    fh_out: u64 @ 24, /// Destination offset.
    off_out: u64 @ 32, /// How much.
    len: u64 @ 40 });

/// Size of the fixed argument (`fuse_*_in`) that precedes a request's names or data: the ring
/// hands it over apart from them, `/dev/fuse` in line.
pub fn fixed_arg_len(op: Op) -> usize {
    match op {
        Op::Forget => ForgetIn::SIZE,
        Op::BatchForget => BatchForgetIn::SIZE,
        Op::Getattr => GetattrIn::SIZE,
        Op::Setattr => SetattrIn::SIZE,
        Op::Mknod => MknodIn::SIZE,
        Op::Mkdir => MkdirIn::SIZE,
        Op::Rename => RenameIn::SIZE,
        Op::Rename2 => Rename2In::SIZE,
        Op::Link => LinkIn::SIZE,
        Op::Open | Op::Opendir => OpenIn::SIZE,
        Op::Create => CreateIn::SIZE,
        Op::Read | Op::Readdir | Op::Readdirplus => ReadIn::SIZE,
        Op::Write => WriteIn::SIZE,
        Op::Release | Op::Releasedir | Op::Flush => ReleaseIn::SIZE,
        Op::Fsync | Op::Fsyncdir => FsyncIn::SIZE,
        Op::Setxattr => SetxattrIn::SIZE,
        Op::Getxattr | Op::Listxattr => GetxattrIn::SIZE,
        Op::Fallocate => FallocateIn::SIZE,
        Op::Lseek => LseekIn::SIZE,
        Op::CopyFileRange => CopyFileRangeIn::SIZE,
        Op::Lookup
        | Op::Readlink
        | Op::Symlink
        | Op::Unlink
        | Op::Rmdir
        | Op::Statfs
        | Op::Removexattr
        | Op::Init
        | Op::Interrupt
        | Op::Destroy => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_arguments_have_the_kernels_sizes() {
        // Names follow these structs directly; a wrong size would cut or shift every name.
        assert_eq!(fixed_arg_len(Op::Lookup), 0);
        assert_eq!(fixed_arg_len(Op::Unlink), 0);
        assert_eq!(fixed_arg_len(Op::Mkdir), 8); // fuse_mkdir_in { mode, umask }
        assert_eq!(fixed_arg_len(Op::Create), 16); // fuse_create_in { flags, mode, umask, open_flags }
        assert_eq!(fixed_arg_len(Op::Rename2), 16); // fuse_rename2_in { newdir, flags, padding }
        assert_eq!(fixed_arg_len(Op::Write), 40); // fuse_write_in
        assert_eq!(fixed_arg_len(Op::Setattr), 88); // fuse_setattr_in
        assert_eq!(fixed_arg_len(Op::Setxattr), 8); // fuse_setxattr_in without SETXATTR_EXT
        assert_eq!(fixed_arg_len(Op::CopyFileRange), 56);
    }

    #[test]
    fn setattr_fields_come_from_the_kernels_offsets() {
        let mut b = vec![0u8; 88];
        let put32 =
            |b: &mut Vec<u8>, off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        let put64 =
            |b: &mut Vec<u8>, off: usize, v: u64| b[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        put32(&mut b, 0, 0b1111);
        put64(&mut b, 8, 11);
        put64(&mut b, 16, 4096);
        put64(&mut b, 40, 1_000_000_000);
        put32(&mut b, 60, 7);
        put32(&mut b, 68, 0o4755);
        put32(&mut b, 76, 1000);
        put32(&mut b, 80, 100);
        let a = SetattrIn::read(&Args::new(&b));
        assert_eq!((a.valid, a.fh, a.size), (0b1111, 11, 4096));
        assert_eq!((a.mtime, a.mtimensec), (1_000_000_000, 7));
        assert_eq!((a.mode, a.uid, a.gid), (0o4755, 1000, 100));
    }
}
