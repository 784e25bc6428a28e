//! The inode table. A node holds no file descriptor: it records where its entry is (parent and
//! name, for hard links every known name) and which layer shows it, so a walk over millions of
//! files costs memory only for what the kernel still references. The FUSE nodeid *is* st_ino
//! (fuser sends `attr.ino` as nodeid), and st_ino is the layer file's own inode number, so a
//! name looked up again after `forget` gets the same nodeid.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};

use crate::layer::LayerIdx;
use crate::sys::{Errno, SysResult};

/// The FUSE root nodeid.
pub const ROOT: u64 = 1;

/// How many levels below the root a node may be before its chain of names is taken for a
/// cycle.
pub const MAX_DEPTH: usize = 1 << 20;

/// Where an entry is and how the union sees it.
#[derive(Debug, Clone)]
pub struct NodeState {
    /// (parent nodeid, name) pairs; the first is the one used to reach the entry. Empty when
    /// every name is gone (the node then lives on only through open handles).
    pub aliases: Aliases,
    /// Layer of the visible entry.
    pub layer: LayerIdx,
    /// Directories: every contributing layer, topmost first.
    pub dir_layers: Box<[LayerIdx]>,
    /// Table epoch this state was computed in (see [`Inodes::epoch`]).
    pub epoch: u64,
    /// Merged directories: cached st_nlink.
    pub nlink: Option<u32>,
}

/// One inode the kernel knows.
#[derive(Debug)]
pub struct Node {
    /// Nodeid and st_ino.
    pub ino: u64,
    /// `S_IFMT` bits.
    pub kind: u32,
    /// Location and layer state.
    pub state: RwLock<NodeState>,
    /// Kernel lookup count (FUSE forget protocol).
    pub lookups: AtomicU64,
    /// Serialises copy-up of this node so concurrent writers produce one copy.
    pub copy_lock: Mutex<()>,
    /// [`XATTRS_UNKNOWN`], [`XATTRS_NONE`] or [`XATTRS_SOME`]: lets `ls -l`'s per-file
    /// getxattr calls on files without xattrs be answered without touching the layer.
    pub xattrs: AtomicU8,
    /// Used since the eviction clock last passed it (see [`Inodes::victims`]).
    referenced: AtomicBool,
}

/// The backing file shared by the open passthrough handles of one inode: the kernel requires
/// every concurrent passthrough open of an inode to use one backing file.
#[derive(Debug, Default)]
pub struct Passthrough {
    /// The registered backing file: while `opens > 0`, and after that while the entry stays in
    /// the cache of recently closed files (see `UnionFs::keep_backing`).
    pub backing: Option<std::sync::Arc<super::reply::Backing>>,
    /// The file registered, held so a cached registration can be checked against a new open.
    pub file: Option<std::os::fd::OwnedFd>,
    /// Whether it is the upper copy (else a lower layer's file).
    pub upper: bool,
    /// Whether it was opened for writing.
    pub writable: bool,
    /// Open handles using it.
    pub opens: u32,
}

/// Not known whether the node has visible xattrs.
pub const XATTRS_UNKNOWN: u8 = 0;
/// The node has no visible xattrs (only we change that, through setxattr).
pub const XATTRS_NONE: u8 = 1;
/// The node has visible xattrs.
pub const XATTRS_SOME: u8 = 2;

impl Node {
    fn new(ino: u64, kind: u32, layer: LayerIdx, epoch: u64, lookups: u64) -> Node {
        Node {
            ino,
            kind,
            state: RwLock::new(NodeState {
                aliases: Aliases::default(),
                layer,
                dir_layers: Box::default(),
                epoch,
                nlink: None,
            }),
            lookups: AtomicU64::new(lookups),
            copy_lock: Mutex::new(()),
            xattrs: AtomicU8::new(XATTRS_UNKNOWN),
            referenced: AtomicBool::new(true),
        }
    }

    /// True for a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }
}

/// All nodes, by nodeid.
#[derive(Debug)]
pub struct Inodes {
    map: DashMap<u64, Arc<Node>>,
    /// Bumped when a change moves many entries between layers at once (a directory rename
    /// materializing a tree): nodes computed in an older epoch are re-resolved on next use.
    epoch: AtomicU64,
    /// With a node limit: nodeids in the order they were made, the hand of the eviction clock.
    /// May hold ids of nodes gone since; they drop out as the hand passes.
    order: Option<Mutex<VecDeque<u64>>>,
}

impl Inodes {
    /// A table holding only the root, which merges `root_layers`.
    pub fn new(root_layers: Vec<LayerIdx>) -> Self {
        let map = DashMap::new();
        let top = root_layers.first().copied().unwrap_or(0);
        let root = Node::new(ROOT, libc::S_IFDIR, top, 0, 1);
        root.state.write().dir_layers = root_layers.into();
        map.insert(ROOT, Arc::new(root));
        Inodes {
            map,
            epoch: AtomicU64::new(0),
            order: None,
        }
    }

    /// Keeps the order nodes are made in, so [`Inodes::victims`] can choose some to drop.
    pub fn with_eviction(mut self) -> Self {
        self.order = Some(Mutex::new(VecDeque::new()));
        self
    }

    /// Up to `want` nodes the kernel may be asked to drop, least recently used first (a
    /// clock: a node used since the hand last passed gets another round). Never the root.
    pub fn victims(&self, want: usize) -> Vec<u64> {
        let Some(order) = &self.order else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut q = order.lock();
        // Two turns of the hand at most: every node's bit is cleared by the first.
        let mut budget = q.len() * 2;
        while out.len() < want && budget > 0 {
            budget -= 1;
            let Some(ino) = q.pop_front() else { break };
            let Some(node) = self.map.get(&ino).map(|n| Arc::clone(n.value())) else {
                continue; // forgotten since
            };
            if ino == ROOT {
                continue;
            }
            // Stays on the clock until its FORGET comes: the kernel keeps what is in use.
            q.push_back(ino);
            if !node.referenced.swap(false, Ordering::Relaxed) {
                out.push(ino);
            }
        }
        out
    }

    /// Puts a new node on the eviction clock, dropping ids of forgotten nodes once they
    /// outnumber the live ones.
    fn track(&self, ino: u64) {
        let Some(order) = &self.order else { return };
        let mut q = order.lock();
        q.push_back(ino);
        if q.len() % 4096 == 0 && q.len() > 2 * self.map.len() {
            q.retain(|i| self.map.contains_key(i));
        }
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Invalidates every node's layer state (they re-resolve lazily).
    pub fn bump_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// The node for `ino`; `ESTALE` if the kernel names one we do not have.
    pub fn get(&self, ino: u64) -> SysResult<Arc<Node>> {
        let node = self
            .map
            .get(&ino)
            .map(|n| Arc::clone(n.value()))
            .ok_or(Errno::ESTALE)?;
        // Read first: a store on every request would bounce the cache line between CPUs.
        if !node.referenced.load(Ordering::Relaxed) {
            node.referenced.store(true, Ordering::Relaxed);
        }
        Ok(node)
    }

    /// Number of nodes held (for stats and tests of the forget protocol).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when only the root is held.
    pub fn is_empty(&self) -> bool {
        self.map.len() <= 1
    }

    /// Records a lookup result for (`parent`, `name`) and counts `lookups` kernel references.
    #[allow(clippy::too_many_arguments)]
    pub fn upsert(
        &self,
        ino: u64,
        kind: u32,
        parent: u64,
        name: &[u8],
        layer: LayerIdx,
        dir_layers: Vec<LayerIdx>,
        lookups: u64,
    ) -> Arc<Node> {
        let epoch = self.epoch();
        let mut made = false;
        let mut entry = self.map.entry(ino).or_insert_with(|| {
            made = true;
            Arc::new(Node::new(ino, kind, layer, epoch, 0))
        });
        if entry.kind != kind {
            // The layer reused an inode number for a different file: the old node is gone.
            let old = entry.lookups.load(Ordering::Acquire);
            *entry = Arc::new(Node::new(ino, kind, layer, epoch, old));
        }
        if !made && !entry.referenced.load(Ordering::Relaxed) {
            entry.referenced.store(true, Ordering::Relaxed);
        }
        // Counted while the shard lock is held, so a concurrent forget cannot drop the node;
        // the state lock is taken only after the shard lock is released (lock order: never a
        // shard lock while holding a node's state lock, or the other way round).
        node_lookups_add(entry.value(), lookups);
        let node = Arc::clone(entry.value());
        drop(entry);
        // Only after the shard lock is gone: `track` may read the map.
        if made {
            self.track(ino);
        }
        {
            let mut st = node.state.write();
            // The name just resolved goes first, paired with the layer it was found in.
            st.aliases.put_first(parent, name);
            st.layer = layer;
            if *st.dir_layers != *dir_layers {
                st.nlink = None; // the subdirectory count came from other layers
                st.dir_layers = dir_layers.into();
            }
            st.epoch = epoch;
        }
        node
    }

    /// Drops `n` kernel references; the node goes when none are left (never the root).
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        self.map.remove_if(&ino, |_, node| {
            let prev = node.lookups.fetch_sub(
                n.min(node.lookups.load(Ordering::Acquire)),
                Ordering::AcqRel,
            );
            prev <= n
        });
    }

    /// The path of `ino` below the union root, `/`-separated (empty for the root).
    pub fn rel_path(&self, ino: u64) -> SysResult<Vec<u8>> {
        // Every request on a node pays this walk up to the root: one table lookup and one
        // copy per level (a request at depth 10,000 used to cost three lookups and three
        // allocations per level).
        let mut names: Vec<u8> = Vec::new();
        let mut spans: Vec<(usize, usize)> = Vec::new();
        let mut node = self.get(ino)?;
        while node.ino != ROOT {
            // Directory trees can be far deeper than PATH_MAX allows one path to reach (each
            // level is looked up by itself): only a cycle among the names, a bug, gets here.
            if spans.len() >= MAX_DEPTH {
                return Err(Errno::ELOOP);
            }
            // Copied out: no shard lock may be taken while the state lock is held.
            let aliases = node.state.read().aliases.clone();
            let mut next = None;
            for (parent, name) in aliases.iter() {
                let up = if parent == ROOT {
                    None
                } else {
                    match self.map.get(&parent) {
                        Some(p) => Some(Arc::clone(p.value())),
                        None => continue, // a parent we forgot: try another name
                    }
                };
                spans.push((names.len(), name.len()));
                names.extend_from_slice(name);
                next = Some(up);
                break;
            }
            match next.ok_or(Errno::ENOENT)? {
                Some(parent) => node = parent,
                None => break,
            }
        }
        let mut out = Vec::with_capacity(names.len() + spans.len());
        for (i, (start, len)) in spans.iter().rev().enumerate() {
            if i > 0 {
                out.push(b'/');
            }
            out.extend_from_slice(&names[*start..start + len]);
        }
        Ok(out)
    }

    /// The name `ino` is reached by: (parent, name).
    pub fn primary(&self, ino: u64) -> SysResult<(u64, Vec<u8>)> {
        let node = self.get(ino)?;
        // Copied out: no shard lock may be taken while the state lock is held.
        let aliases: Vec<(u64, Vec<u8>)> = {
            let st = node.state.read();
            st.aliases.iter().map(|(p, n)| (p, n.to_vec())).collect()
        };
        // Prefer a name whose parent we still know.
        aliases
            .into_iter()
            .find(|(p, _)| *p == ROOT || self.map.contains_key(p))
            .ok_or(Errno::ENOENT)
    }

    /// Forgets the name (`parent`, `name`) of `ino` after an unlink or a rename away.
    pub fn drop_alias(&self, ino: u64, parent: u64, name: &[u8]) {
        if let Ok(node) = self.get(ino) {
            node.state.write().aliases.remove(parent, name);
        }
    }

    /// Moves the name (`op`, `oname`) of `ino` to (`np`, `nname`).
    pub fn move_alias(&self, ino: u64, op: u64, oname: &[u8], np: u64, nname: &[u8]) {
        if let Ok(node) = self.get(ino) {
            let mut st = node.state.write();
            st.aliases.remove(op, oname);
            st.aliases.put_first(np, nname);
        }
    }

    /// After directories on the path to `ino` were created in the upper, record that each of
    /// them (`ino` included) now has an upper part, so lookups below them see upper entries.
    pub fn mark_upper_chain(&self, ino: u64) {
        let mut cur = ino;
        let mut depth = 0;
        while depth < 8192 {
            depth += 1;
            let Ok(node) = self.get(cur) else { return };
            {
                let mut st = node.state.write();
                if node.is_dir() && st.layer == 0 && st.dir_layers.first() == Some(&0) {
                    // Already in the upper, so are all its ancestors. Leaving its cached link
                    // count alone matters: recounting a merged directory lists it whole, and
                    // every unlink in it would pay that.
                    return;
                }
                if node.is_dir() && !st.dir_layers.contains(&0) {
                    let mut with_upper = vec![0];
                    with_upper.extend_from_slice(&st.dir_layers);
                    st.dir_layers = with_upper.into();
                }
                st.layer = 0;
                st.nlink = None;
            }
            if cur == ROOT {
                return;
            }
            let next = node.state.read().aliases.first_parent();
            match next {
                Some(p) => cur = p,
                None => return,
            }
        }
    }

    /// Forgets the cached st_nlink of a directory whose subdirectories changed.
    pub fn invalidate_nlink(&self, ino: u64) {
        if let Ok(node) = self.get(ino) {
            node.state.write().nlink = None;
        }
    }
}

/// The (parent, name) pairs of a node in one allocation: `parent` (8 bytes LE), name length
/// (2 bytes LE), name, repeated. Nearly every node has exactly one name and a walk over a
/// million files holds a million of these, so it is sized to the byte.
#[derive(Debug, Clone, Default)]
pub struct Aliases(Box<[u8]>);

impl Aliases {
    /// Every (parent, name), first the one used to reach the node.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &[u8])> {
        let mut rest: &[u8] = &self.0;
        std::iter::from_fn(move || {
            let (head, tail) = rest.split_at_checked(10)?;
            let parent = u64::from_le_bytes(head[..8].try_into().ok()?);
            let len = u16::from_le_bytes([head[8], head[9]]) as usize;
            let (name, after) = tail.split_at_checked(len)?;
            rest = after;
            Some((parent, name))
        })
    }

    /// The parent of the first name.
    pub fn first_parent(&self) -> Option<u64> {
        self.iter().next().map(|(p, _)| p)
    }

    /// Makes (`parent`, `name`) the first name (adding it if new).
    pub fn put_first(&mut self, parent: u64, name: &[u8]) {
        if self.iter().next() == Some((parent, name)) {
            return;
        }
        let mut v = Vec::with_capacity(self.0.len() + 10 + name.len());
        push(&mut v, parent, name);
        for (p, n) in self.iter().filter(|(p, n)| !(*p == parent && *n == name)) {
            push(&mut v, p, n);
        }
        self.0 = v.into_boxed_slice();
    }

    /// Drops (`parent`, `name`) if present.
    pub fn remove(&mut self, parent: u64, name: &[u8]) {
        let mut v = Vec::with_capacity(self.0.len());
        for (p, n) in self.iter().filter(|(p, n)| !(*p == parent && *n == name)) {
            push(&mut v, p, n);
        }
        self.0 = v.into_boxed_slice();
    }
}

fn push(v: &mut Vec<u8>, parent: u64, name: &[u8]) {
    // Names come from the kernel (NAME_MAX 255): the length always fits.
    let len = name.len().min(u16::MAX as usize);
    v.extend_from_slice(&parent.to_le_bytes());
    v.extend_from_slice(&(len as u16).to_le_bytes());
    v.extend_from_slice(&name[..len]);
}

fn node_lookups_add(node: &Node, n: u64) {
    node.lookups.fetch_add(n, Ordering::AcqRel);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_keep_order_and_names() {
        let mut a = Aliases::default();
        assert_eq!(a.first_parent(), None);
        a.put_first(5, b"x");
        a.put_first(7, b"");
        a.put_first(9, &[b'n'; 255]);
        a.put_first(5, b"x"); // back to the front, not duplicated
        let all: Vec<(u64, Vec<u8>)> = a.iter().map(|(p, n)| (p, n.to_vec())).collect();
        assert_eq!(
            all,
            vec![(5, b"x".to_vec()), (9, vec![b'n'; 255]), (7, Vec::new())]
        );
        a.remove(9, &[b'n'; 255]);
        a.remove(1, b"absent");
        assert_eq!(a.iter().count(), 2);
        assert_eq!(a.first_parent(), Some(5));
        a.remove(5, b"x");
        a.remove(7, b"");
        assert_eq!(a.iter().count(), 0);
    }
}
