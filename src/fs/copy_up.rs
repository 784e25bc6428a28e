//! Copy-up from the FUSE side: a node is brought into the upper (once, whoever asks first)
//! before its first change; the layer model does the copying (`layer::copyup`). A large
//! file opened for writing is flushed behind the writer (`behind`).

use std::sync::Arc;

use super::inode::Node;
use super::UnionFs;
use crate::layer::copyup::{self, CopiedUp, CopyData};
use crate::layer::ops;
use crate::layer::stack::join;
use crate::sys::{Errno, SysResult};

impl UnionFs {
    /// Copies a node up into the upper (once, whoever asks first), flushed.
    pub(super) fn ensure_upper(&self, node: &Arc<Node>, data: CopyData) -> SysResult<()> {
        self.bring_up(node, data, None)
    }

    /// Brings a node up for an open for writing with its data: a large regular file's copy
    /// is flushed behind the writer (see `behind`).
    pub(super) fn ensure_upper_for_write(&self, node: &Arc<Node>) -> SysResult<()> {
        let behind =
            (self.behind.min_size).filter(|_| node.kind == libc::S_IFREG && self.behind.has_room());
        self.bring_up(node, CopyData::Full, behind)
    }

    fn bring_up(&self, node: &Arc<Node>, data: CopyData, behind: Option<u64>) -> SysResult<()> {
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
        let done = match behind {
            Some(min) => {
                copyup::copy_up_maybe_behind(&self.stack, &prel, &name, c.layer, data, Some(min))?
            }
            None => CopiedUp::Published {
                joined: ops::copy_up(&self.stack, &prel, &name, c.layer, node.is_dir(), data)?,
            },
        };
        self.inodes.mark_upper_chain(node.ino);
        match done {
            // Its other names got upper links too, maybe in directories new to the upper:
            // every node re-resolves its layers on next use.
            CopiedUp::Published { joined: true } => self.inodes.bump_epoch(),
            CopiedUp::Published { joined: false } => {}
            CopiedUp::Unflushed(copy) => self.behind.add(node.ino, join(&prel, &name), copy)?,
        }
        Ok(())
    }
}
