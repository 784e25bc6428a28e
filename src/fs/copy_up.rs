//! Copy-up from the FUSE side: a node is brought into the upper (once, whoever asks first)
//! before its first change; the layer model does the copying (`layer::copyup`).

use std::sync::Arc;

use super::inode::Node;
use super::UnionFs;
use crate::layer::copyup::CopyData;
use crate::layer::ops;
use crate::sys::{Errno, SysResult};

impl UnionFs {
    /// Copies a node up into the upper (once, whoever asks first).
    pub(super) fn ensure_upper(&self, node: &Arc<Node>, data: CopyData) -> SysResult<()> {
        if !self.stack.has_upper {
            return Err(Errno::EROFS);
        }
        {
            let st = node.state.read();
            if st.layer == 0 && st.epoch == self.inodes.epoch() {
                return Ok(());
            }
        }
        let _guard = node.copy_lock.lock();
        let c = self.ctx(node.ino)?;
        if c.layer == 0 {
            return Ok(());
        }
        let (parent, name) = self.inodes.primary(node.ino)?;
        let prel = self.inodes.rel_path(parent)?;
        let joined = ops::copy_up(&self.stack, &prel, &name, c.layer, node.is_dir(), data)?;
        self.inodes.mark_upper_chain(node.ino);
        if joined {
            // Its other names got upper links too, maybe in directories new to the upper:
            // every node re-resolves its layers on next use.
            self.inodes.bump_epoch();
        }
        Ok(())
    }
}
