//! The FUSE requests the union serves: one enum is the source of the opcode numbers the
//! transports decode, the names the log and the SIGUSR1 report use, and the counters' slots.

/// A FUSE request type (the kernel's `fuse_opcode`, include/uapi/linux/fuse.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Op {
    /// Look a name up in a directory.
    Lookup = 1,
    /// The kernel dropped references to a node.
    Forget = 2,
    /// Attributes of a node.
    Getattr = 3,
    /// Change attributes (chmod, chown, truncate, utimes).
    Setattr = 4,
    /// A symlink's target.
    Readlink = 5,
    /// Make a symlink.
    Symlink = 6,
    /// Make a file, fifo, socket or device node.
    Mknod = 8,
    /// Make a directory.
    Mkdir = 9,
    /// Remove a non-directory.
    Unlink = 10,
    /// Remove a directory.
    Rmdir = 11,
    /// Rename (no flags).
    Rename = 12,
    /// Make a hard link.
    Link = 13,
    /// Open a file.
    Open = 14,
    /// Read file data.
    Read = 15,
    /// Write file data.
    Write = 16,
    /// Filesystem statistics.
    Statfs = 17,
    /// Close a file.
    Release = 18,
    /// Flush a file to disk.
    Fsync = 20,
    /// Set an xattr.
    Setxattr = 21,
    /// Read an xattr.
    Getxattr = 22,
    /// List xattrs.
    Listxattr = 23,
    /// Remove an xattr.
    Removexattr = 24,
    /// A close(2) of one fd of an open file.
    Flush = 25,
    /// The connection's handshake.
    Init = 26,
    /// Open a directory.
    Opendir = 27,
    /// List a directory.
    Readdir = 28,
    /// Close a directory.
    Releasedir = 29,
    /// Flush a directory to disk.
    Fsyncdir = 30,
    /// Create and open a file.
    Create = 35,
    /// Abort a pending request.
    Interrupt = 36,
    /// The connection ends.
    Destroy = 38,
    /// FORGET for many nodes at once.
    BatchForget = 42,
    /// Allocate or punch file space.
    Fallocate = 43,
    /// List a directory with attributes.
    Readdirplus = 44,
    /// Rename with flags (NOREPLACE, EXCHANGE, WHITEOUT).
    Rename2 = 45,
    /// Seek for data or holes.
    Lseek = 46,
    /// Copy between two open files.
    CopyFileRange = 47,
}

impl Op {
    /// Every request type, in the order the SIGUSR1 report lists them.
    pub const ALL: [Op; 37] = [
        Op::Lookup,
        Op::Forget,
        Op::BatchForget,
        Op::Getattr,
        Op::Setattr,
        Op::Readlink,
        Op::Mknod,
        Op::Mkdir,
        Op::Unlink,
        Op::Rmdir,
        Op::Symlink,
        Op::Rename,
        Op::Rename2,
        Op::Link,
        Op::Open,
        Op::Read,
        Op::Write,
        Op::Flush,
        Op::Release,
        Op::Fsync,
        Op::Opendir,
        Op::Readdir,
        Op::Readdirplus,
        Op::Releasedir,
        Op::Fsyncdir,
        Op::Statfs,
        Op::Setxattr,
        Op::Getxattr,
        Op::Listxattr,
        Op::Removexattr,
        Op::Create,
        Op::Fallocate,
        Op::Lseek,
        Op::CopyFileRange,
        Op::Init,
        Op::Interrupt,
        Op::Destroy,
    ];

    /// The request type of a `fuse_in_header.opcode`, if the union knows it.
    pub fn from_code(code: u32) -> Option<Op> {
        Op::ALL.into_iter().find(|op| *op as u32 == code)
    }

    /// Its slot in [`Op::ALL`] (and in the request counters).
    pub fn index(self) -> usize {
        Op::ALL.iter().position(|o| *o == self).unwrap_or(0)
    }

    /// Its name in the log and in the report: the kernel's, lower case.
    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Forget => "forget",
            Op::Getattr => "getattr",
            Op::Setattr => "setattr",
            Op::Readlink => "readlink",
            Op::Symlink => "symlink",
            Op::Mknod => "mknod",
            Op::Mkdir => "mkdir",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Rename => "rename",
            Op::Link => "link",
            Op::Open => "open",
            Op::Read => "read",
            Op::Write => "write",
            Op::Statfs => "statfs",
            Op::Release => "release",
            Op::Fsync => "fsync",
            Op::Setxattr => "setxattr",
            Op::Getxattr => "getxattr",
            Op::Listxattr => "listxattr",
            Op::Removexattr => "removexattr",
            Op::Flush => "flush",
            Op::Init => "init",
            Op::Opendir => "opendir",
            Op::Readdir => "readdir",
            Op::Releasedir => "releasedir",
            Op::Fsyncdir => "fsyncdir",
            Op::Create => "create",
            Op::Interrupt => "interrupt",
            Op::Destroy => "destroy",
            Op::BatchForget => "batch_forget",
            Op::Fallocate => "fallocate",
            Op::Readdirplus => "readdirplus",
            Op::Rename2 => "rename2",
            Op::Lseek => "lseek",
            Op::CopyFileRange => "copy_file_range",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_names_and_slots_are_one_to_one() {
        let mut names = std::collections::HashSet::new();
        for (i, op) in Op::ALL.into_iter().enumerate() {
            assert_eq!(Op::from_code(op as u32), Some(op));
            assert_eq!(op.index(), i);
            assert!(names.insert(op.name()), "{} twice", op.name());
        }
        assert_eq!(Op::from_code(7), None, "no FUSE request has opcode 7");
        assert_eq!(Op::from_code(1), Some(Op::Lookup));
        assert_eq!(Op::from_code(47), Some(Op::CopyFileRange));
    }
}
