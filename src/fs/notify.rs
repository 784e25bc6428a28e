//! Messages the daemon sends the kernel unasked (FUSE notifications): drop a cached name, drop
//! cached attributes, drop unused inodes.
//!
//! Written straight to the connection's device, never from inside a request: the kernel takes
//! the directory's lock for an entry invalidation, and a request waiting on that directory
//! would wait for the very thread that sends it.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::sys::{self, Errno, SysResult};

/// `fuse_notify_code` values (include/uapi/linux/fuse.h).
const NOTIFY_INVAL_INODE: i32 = 2;
const NOTIFY_INVAL_ENTRY: i32 = 3;
const NOTIFY_PRUNE: i32 = 9;

/// Nodeids per prune message: small enough for any kernel's notification buffer.
pub const PRUNE_BATCH: usize = 256;

/// The connection's device, once the mount has one.
#[derive(Debug, Default)]
pub struct Notify {
    dev: OnceLock<Arc<OwnedFd>>,
    /// The kernel refused a prune (before Linux 6.18): not tried again.
    no_prune: AtomicBool,
}

impl Notify {
    /// Hands over the mounted device (once; later calls are ignored).
    pub fn attach(&self, dev: Arc<OwnedFd>) {
        let _ = self.dev.set(dev);
    }

    /// Makes the kernel forget `name` in directory `parent` (as if it had never looked it up).
    pub fn inval_entry(&self, parent: u64, name: &[u8]) -> SysResult<()> {
        let mut body = Vec::with_capacity(16 + name.len() + 1);
        body.extend_from_slice(&parent.to_ne_bytes());
        body.extend_from_slice(&(name.len() as u32).to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes());
        body.extend_from_slice(name);
        body.push(0);
        self.send(NOTIFY_INVAL_ENTRY, &body)
    }

    /// Makes the kernel fetch the attributes of `ino` again; `offset` -1 leaves its pages.
    pub fn inval_inode(&self, ino: u64, offset: i64, len: i64) -> SysResult<()> {
        let mut body = Vec::with_capacity(24);
        body.extend_from_slice(&ino.to_ne_bytes());
        body.extend_from_slice(&offset.to_ne_bytes());
        body.extend_from_slice(&len.to_ne_bytes());
        self.send(NOTIFY_INVAL_INODE, &body)
    }

    /// Asks the kernel to drop the inodes `nodes` (at most [`PRUNE_BATCH`]) where nothing uses
    /// them: their unused names go, and FORGETs follow. Unlike an entry invalidation this
    /// never touches a name that is open, a working directory or a mount point. ENOSYS when
    /// the kernel has no such message (before Linux 6.18).
    pub fn prune(&self, nodes: &[u64]) -> SysResult<()> {
        if self.no_prune.load(Ordering::Relaxed) {
            return Err(Errno::ENOSYS);
        }
        let mut body = Vec::with_capacity(16 + 8 * nodes.len());
        body.extend_from_slice(&(nodes.len() as u32).to_ne_bytes());
        body.extend_from_slice(&[0u8; 12]);
        for n in nodes {
            body.extend_from_slice(&n.to_ne_bytes());
        }
        match self.send(NOTIFY_PRUNE, &body) {
            Err(Errno::EINVAL) => {
                self.no_prune.store(true, Ordering::Relaxed);
                Err(Errno::ENOSYS)
            }
            r => r,
        }
    }

    fn send(&self, code: i32, body: &[u8]) -> SysResult<()> {
        let dev = self.dev.get().ok_or(Errno::ENOTCONN)?;
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        header[4..8].copy_from_slice(&code.to_ne_bytes());
        // unique 0: a notification, not a reply.
        sys::write2(dev.as_fd(), &header, body).map(|_| ())
    }
}
