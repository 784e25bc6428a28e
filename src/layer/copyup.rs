//! Atomic copy-up: an entry is staged in the work dir with its data, owner, mode, xattrs and
//! times, then published into the upper with one rename, so a crash at any point leaves the old
//! view or the new one. Ancestors are copied first; parents' times are restored afterwards so that
//! copy-up is invisible in the view.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::layer::behind;
use crate::layer::data;
use crate::layer::metacopy;
use crate::layer::resolve::{self, DirSet};
use crate::layer::stack::{join, open_subdir, remove_tree, split, LayerIdx, Stack};
use crate::layer::whiteout;
use crate::sys::{self, Errno, SysResult};
use std::sync::atomic::Ordering::Relaxed;

/// Copies every xattr of `src` to `dst` except the layer format's and ours.
fn copy_xattrs(src: sys::At<'_>, dst: sys::At<'_>) -> SysResult<()> {
    let mut names = vec![0u8; 4096];
    let n = loop {
        match sys::listxattr(src, &mut names) {
            Ok(n) => break n,
            Err(Errno::ERANGE) => {
                let need = sys::listxattr(src, &mut [])?;
                names.resize(need.max(names.len() * 2), 0);
            }
            Err(Errno::EOPNOTSUPP) => return Ok(()),
            Err(e) => return Err(e),
        }
    };
    let mut value = vec![0u8; 65536];
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if whiteout::is_internal_xattr(name) {
            continue;
        }
        let cname = CString::new(name).map_err(|_| Errno::EINVAL)?;
        let len = match sys::getxattr(src, &cname, &mut value) {
            Ok(len) => len,
            Err(Errno::ENODATA) => continue,
            Err(e) => return Err(e),
        };
        match sys::setxattr(dst, &cname, &value[..len], 0) {
            Ok(()) => {}
            // security.* labels the upper filesystem cannot hold are not worth failing for.
            Err(Errno::EOPNOTSUPP) if !name.starts_with(b"user.") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Metadata of a staged entry: xattrs, origin, owner, mode (after owner: chown clears setuid),
/// times last. `stage` names it in the work dir for the symlink case.
fn copy_meta(
    stack: &Stack,
    src: sys::At<'_>,
    dst: BorrowedFd<'_>,
    stage: &CStr,
    st: &libc::stat,
    origin: u64,
) -> SysResult<()> {
    let kind = st.st_mode & libc::S_IFMT;
    let dst_at = sys::At::new(stack.work()?, stage);
    copy_xattrs(src, dst_at)?;
    // user.* cannot go on symlinks or devices (EPERM): those keep a stable ino only with
    // trusted.*. Any other failure (a full upper) must fail the copy-up: a copy without its
    // origin would show another inode number than the node the kernel holds for it.
    match sys::setxattr(dst_at, &stack.origin_xattr, &origin.to_le_bytes(), 0) {
        Ok(()) | Err(Errno::EPERM) | Err(Errno::EOPNOTSUPP) => {}
        Err(e) => return Err(e),
    }
    match sys::fchown_fd(dst, Some(st.st_uid), Some(st.st_gid)) {
        Ok(()) => {}
        // In a user namespace a lower file may belong to an id that is not mapped there
        // (EINVAL/EOVERFLOW); an unprivileged daemon cannot give files away (EPERM). The
        // copy then belongs to the daemon, which is what such a user sees anyway.
        Err(Errno::EINVAL) | Err(Errno::EOVERFLOW) => {}
        Err(Errno::EPERM) if sys::geteuid() != 0 => {}
        Err(e) => return Err(e),
    }
    if kind != libc::S_IFLNK {
        sys::fchmod_fd(dst, st.st_mode & 0o7777)?;
        sys::utimens_fd(dst, &sys::times_of(st))?;
    } else {
        sys::utimensat(stack.work()?, stage, &sys::times_of(st))?;
    }
    Ok(())
}

/// Publishes staged `stage` as `name` in `upper_parent`, keeping the parent's times. Returns
/// `Ok(false)` when someone else published the name first (the staged copy is then removed).
fn publish(
    stack: &Stack,
    stage: &CStr,
    upper_parent: BorrowedFd<'_>,
    name: &CStr,
) -> SysResult<bool> {
    let work = stack.work()?;
    let before = sys::fstat(upper_parent)?;
    match sys::renameat2(work, stage, upper_parent, name, libc::RENAME_NOREPLACE) {
        Ok(()) => {
            sys::restore_times(upper_parent, &before);
            Ok(true)
        }
        Err(Errno::EEXIST) => {
            let _ = remove_tree(work, stage);
            Ok(false)
        }
        Err(e) => {
            let _ = remove_tree(work, stage);
            Err(e)
        }
    }
}

/// Finds the topmost lower layer in which `rel` is a directory (the source of its copy-up).
fn lower_dir_source(stack: &Stack, rel: &[u8]) -> SysResult<(LayerIdx, OwnedFd)> {
    let first = if stack.has_upper { 1 } else { 0 };
    for l in first..stack.layers.len() {
        match stack.open_rel(l, rel, libc::O_PATH | libc::O_DIRECTORY) {
            Ok(fd) => return Ok((l, fd)),
            Err(Errno::ENOENT) | Err(Errno::ENOTDIR) | Err(Errno::ELOOP) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::ENOENT)
}

/// Copies up the directory `name` (at `parent_rel`) into `upper_parent`, without its children.
fn copy_up_dir(
    stack: &Stack,
    upper_parent: BorrowedFd<'_>,
    parent_rel: &[u8],
    name: &CStr,
) -> SysResult<()> {
    let rel = join(parent_rel, name.to_bytes());
    let (src_layer, src) = lower_dir_source(stack, &rel)?;
    let st = sys::fstat(src.as_fd())?;
    let origin = stack.entry_ino(src_layer, sys::At::dir(src.as_fd()), &st);
    let work = stack.work()?;
    let stage = stack.stage_name();
    sys::mkdirat(work, &stage, 0o700)?;
    let staged = open_subdir(work, &stage)?;
    let src_at = sys::At::dir(src.as_fd());
    if let Err(e) = copy_meta(stack, src_at, staged.as_fd(), &stage, &st, origin) {
        let _ = remove_tree(work, &stage);
        return Err(e);
    }
    if publish(stack, &stage, upper_parent, name)? {
        stack.counters.copy_ups.fetch_add(1, Relaxed);
    }
    Ok(())
}

/// Makes sure directory `rel` exists in the upper (copying up missing ancestors, topmost first)
/// and returns its `O_PATH` fd there.
pub fn ensure_upper_dir(stack: &Stack, rel: &[u8]) -> SysResult<OwnedFd> {
    let upper = stack.upper().ok_or(Errno::EROFS)?;
    if let Ok(fd) = stack.open_rel(0, rel, libc::O_PATH | libc::O_DIRECTORY) {
        return Ok(fd);
    }
    let mut cur = sys::openat(upper.fd.as_fd(), c".", libc::O_PATH | libc::O_DIRECTORY, 0)?;
    let mut cur_rel: Vec<u8> = Vec::new();
    for comp in rel.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
        let c = CString::new(comp).map_err(|_| Errno::EINVAL)?;
        let next = match open_subdir(cur.as_fd(), &c) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                copy_up_dir(stack, cur.as_fd(), &cur_rel, &c)?;
                open_subdir(cur.as_fd(), &c)?
            }
            Err(e) => return Err(e),
        };
        cur = next;
        cur_rel = join(&cur_rel, comp);
    }
    Ok(cur)
}

/// How much of a regular file's data a copy-up brings along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyData {
    /// All of it: the file is about to be written.
    Full,
    /// None, size 0: an open with O_TRUNC or a truncate to 0 throws it away.
    Empty,
    /// None if the stack has metacopy on (a stub, see `metacopy`), else all: only metadata
    /// changes (chmod, chown, utimes, xattrs, rename, link).
    MetaOnly,
}

/// Copies up the non-directory `name` of directory `parent_rel` from layer `src_layer`.
/// True when that also linked the file's other names into the upper (see `joins_links`).
pub fn copy_up_entry(
    stack: &Stack,
    parent_rel: &[u8],
    name: &[u8],
    src_layer: LayerIdx,
    data: CopyData,
) -> SysResult<bool> {
    match copy_up_maybe_behind(stack, parent_rel, name, src_layer, data, None)? {
        CopiedUp::Published { joined } => Ok(joined),
        CopiedUp::Unflushed(u) => behind::flush(stack, &u).map(|()| false),
    }
}

/// What [`copy_up_maybe_behind`] did.
#[derive(Debug)]
pub enum CopiedUp {
    /// The entry is in the upper; `joined` as [`copy_up_entry`] returns it.
    Published {
        /// Its other names were linked into the upper too.
        joined: bool,
    },
    /// The file is in the upper, its data maybe not yet on disk: the caller flushes it
    /// ([`behind::flush`]).
    Unflushed(behind::Unflushed),
}

/// [`copy_up_entry`], except that a regular file of at least `behind` bytes whose data is
/// copied (and that has one name, on a union that flushes) is published before its flush,
/// with a record that makes it whole after a crash; the caller flushes it
/// ([`behind::flush`]).
pub fn copy_up_maybe_behind(
    stack: &Stack,
    parent_rel: &[u8],
    name: &[u8],
    src_layer: LayerIdx,
    data: CopyData,
    behind: Option<u64>,
) -> SysResult<CopiedUp> {
    let done = |joined| Ok(CopiedUp::Published { joined });
    let cname = CString::new(name).map_err(|_| Errno::EINVAL)?;
    let upper_parent = ensure_upper_dir(stack, parent_rel)?;
    if sys::fstatat(upper_parent.as_fd(), &cname).is_ok() {
        return done(false); // already there (another thread or an earlier call)
    }
    let src_dir = stack.open_rel(src_layer, parent_rel, libc::O_PATH | libc::O_DIRECTORY)?;
    let st = sys::fstatat(src_dir.as_fd(), &cname)?;
    let kind = st.st_mode & libc::S_IFMT;
    let joined = joins_links(&st);
    if joined {
        let ino = stack.union_ino(st.st_dev, st.st_ino);
        if stack.is_indexed(ino) {
            link_from_index(stack, upper_parent.as_fd(), &cname, ino)?;
            return done(joined);
        }
    }
    if kind == libc::S_IFDIR {
        copy_up_dir(stack, upper_parent.as_fd(), parent_rel, &cname)?;
        return done(false);
    }
    let src_at = sys::At::new(src_dir.as_fd(), &cname);
    let origin = stack.entry_ino(src_layer, src_at, &st);
    let work = stack.work()?;
    let stage = stack.stage_name();
    // Multi-link files always copy their data: the index shares one upper inode among names.
    // A lower file may itself be a stub (an upper with stubs made a layer): its data is where
    // its record says, and a new stub points there too.
    let lower_stub = (kind == libc::S_IFREG && st.st_size > 0)
        .then(|| metacopy::read_at(src_at).map(|(s, _)| s))
        .flatten();
    let stub = (data == CopyData::MetaOnly
        && stack.metacopy
        && kind == libc::S_IFREG
        && st.st_size > 0
        && st.st_nlink == 1)
        .then(|| {
            lower_stub
                .clone()
                .unwrap_or_else(|| metacopy::Stub::of(&join(parent_rel, name), &st))
        });
    let with_data = data != CopyData::Empty && stub.is_none();
    let behind = behind.filter(|min| {
        with_data
            && kind == libc::S_IFREG
            && st.st_nlink == 1
            && st.st_size as u64 >= *min
            && !stack.volatile
    });
    let staged: SysResult<OwnedFd> = (|| match kind {
        libc::S_IFREG => {
            let dst = sys::openat(
                work,
                &stage,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                0o600,
            )?;
            if with_data {
                // O_NOATIME: copying up must not change even the lower file's atime.
                let flags = libc::O_RDONLY | libc::O_NOFOLLOW;
                let src = match &lower_stub {
                    Some(s) => metacopy::open_source(stack, s, src_layer)?,
                    None => sys::openat(src_dir.as_fd(), &cname, flags | libc::O_NOATIME, 0)
                        .or_else(|_| sys::openat(src_dir.as_fd(), &cname, flags, 0))?,
                };
                // Writeback starts early only where the copy-up waits for its flush: where it
                // does not, starting it would only slow the copy down.
                let flushed = !stack.volatile && behind.is_none();
                data::copy_data(src.as_fd(), dst.as_fd(), st.st_size as u64, flushed)?;
                // On disk before the rename publishes it, as overlayfs does: a crash must
                // not leave a published copy with missing data. Not when volatile: a crash
                // then condemns the whole upper anyway. A copy flushed behind has its record
                // for that.
                if behind.is_none() {
                    stack.flush(dst.as_fd())?;
                }
            } else if let Some(stub) = &stub {
                sys::ftruncate(dst.as_fd(), st.st_size as u64)?;
                metacopy::write(stack, sys::At::new(work, &stage), stub)?;
            }
            Ok(dst)
        }
        libc::S_IFLNK => {
            let target = sys::readlinkat(src_dir.as_fd(), &cname)?;
            let t = CString::new(target).map_err(|_| Errno::EINVAL)?;
            sys::symlinkat(&t, work, &stage)?;
            sys::openat(work, &stage, libc::O_PATH | libc::O_NOFOLLOW, 0)
        }
        _ => {
            sys::mknodat(work, &stage, st.st_mode, st.st_rdev)?;
            sys::openat(work, &stage, libc::O_PATH | libc::O_NOFOLLOW, 0)
        }
    })();
    let staged = match staged {
        Ok(fd) => fd,
        Err(e) => {
            let _ = sys::unlinkat(work, &stage, false);
            return Err(e);
        }
    };
    if let Err(e) = copy_meta(stack, src_at, staged.as_fd(), &stage, &st, origin) {
        let _ = sys::unlinkat(work, &stage, false);
        return Err(e);
    }
    let record = match behind {
        Some(_) => match behind::write_record(stack, &join(parent_rel, name), src_layer) {
            Ok(r) => Some(r),
            Err(e) => {
                let _ = sys::unlinkat(work, &stage, false);
                return Err(e);
            }
        },
        None => None,
    };
    if let (Some(index), true) = (&stack.index, st.st_nlink > 1) {
        // A file with several lower names: record the copy in the index first, so the other
        // names join this upper inode instead of being copied again.
        let key = Stack::index_key(origin);
        match sys::linkat(work, &stage, index.as_fd(), &key) {
            Ok(()) => {
                if stack.nlink_record(origin).is_none() {
                    stack.set_nlink_record(origin, st.st_nlink as u32)?;
                }
            }
            Err(Errno::EEXIST) => {
                let _ = sys::unlinkat(work, &stage, false);
                link_from_index(stack, upper_parent.as_fd(), &cname, origin)?;
                return done(joined);
            }
            Err(e) => {
                let _ = sys::unlinkat(work, &stage, false);
                return Err(e);
            }
        }
    }
    let published = publish(stack, &stage, upper_parent.as_fd(), &cname);
    if let (Some(rec), Ok(true)) = (&record, &published) {
        stack.counters.copy_ups.fetch_add(1, Relaxed);
        stack
            .counters
            .bytes_copied
            .fetch_add(st.st_size as u64, Relaxed);
        stack.counters.flushed_behind.fetch_add(1, Relaxed);
        return Ok(CopiedUp::Unflushed(behind::Unflushed {
            file: staged,
            record: rec.clone(),
        }));
    }
    if let Some(rec) = &record {
        behind::drop_record(stack, rec);
    }
    drop(staged);
    if published? {
        stack.counters.copy_ups.fetch_add(1, Relaxed);
        if with_data && kind == libc::S_IFREG {
            stack
                .counters
                .bytes_copied
                .fetch_add(st.st_size as u64, Relaxed);
        }
        if let (Some(index), true) = (&stack.index, st.st_nlink > 1) {
            let all = link_other_names(stack, src_layer, &st, origin, &join(parent_rel, name))?;
            // When every lower name now links the upper copy, its link count is its names
            // again and the upper reads the same as a plain layer (no index link to count).
            // A name hidden above keeps counting, as it did before the copy-up.
            if all && sys::unlinkat(index.as_fd(), &Stack::index_key(origin), false).is_ok() {
                stack.drop_nlink_record(origin);
            }
        }
    }
    done(joined)
}

/// Whether copying up a lower entry with stat `st` links its other names too: a file (not a
/// directory) with more than one name keeps all of them on one upper inode (the index). Nodes
/// resolved before such a copy-up may then be stale.
pub fn joins_links(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT != libc::S_IFDIR && st.st_nlink > 1
}

/// Gives every other visible name of a copied-up lower file its link to the upper copy, so
/// that the upper alone (a layer diff) shows the change under all names. True when every lower
/// name of the file got one.
fn link_other_names(
    stack: &Stack,
    src_layer: LayerIdx,
    st: &libc::stat,
    origin: u64,
    done: &[u8],
) -> SysResult<bool> {
    let links = stack.hardlinks(src_layer);
    let Some(paths) = links.get(&st.st_ino) else {
        return Ok(false);
    };
    let mut all = paths.len() as u64 == st.st_nlink;
    for p in paths.iter().filter(|p| p.as_slice() != done) {
        let (parent, name) = split(p);
        // Only names the union still shows as this file (not deleted or shadowed).
        let Some(found) = resolve::lookup_path(stack, p)? else {
            all = false;
            continue;
        };
        if found.ino != origin || stack.is_upper(found.layer) {
            all = false;
            continue;
        }
        let up = ensure_upper_dir(stack, parent)?;
        let c = CString::new(name).map_err(|_| Errno::EINVAL)?;
        link_from_index(stack, up.as_fd(), &c, origin)?;
    }
    Ok(all)
}

/// Gives `name` in `upper_parent` the upper inode already copied up for union inode `ino`
/// (another name of the same lower file), keeping the parent's times.
pub fn link_from_index(
    stack: &Stack,
    upper_parent: BorrowedFd<'_>,
    name: &CStr,
    ino: u64,
) -> SysResult<()> {
    let index = stack.index.as_ref().ok_or(Errno::EROFS)?;
    let before = sys::fstat(upper_parent)?;
    match sys::linkat(index.as_fd(), &Stack::index_key(ino), upper_parent, name) {
        Ok(()) | Err(Errno::EEXIST) => {
            sys::restore_times(upper_parent, &before);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Copies a whole merged directory tree into the upper and marks it opaque, so it no longer
/// depends on the lower layers (what a directory rename needs to keep the upper an OCI diff).
/// Each directory is marked after everything below it is in the upper, so the view never
/// changes on the way. A walk with its own stack, not a recursion, and no fd held per level:
/// trees can be deeper than a worker thread has stack frames (2,000 levels overflowed it) or
/// than a process has descriptors.
pub fn materialize_dir(stack: &Stack, rel: &[u8], layers: &[LayerIdx]) -> SysResult<()> {
    let mut todo: Vec<Pending> = Vec::new();
    todo.extend(materialize_files(stack, rel, layers)?);
    while let Some(top) = todo.last_mut() {
        if let Some((sub, sub_layers)) = top.subdirs.pop() {
            let next = materialize_files(stack, &sub, &sub_layers)?;
            todo.extend(next);
            continue;
        }
        if let Some(done) = todo.pop() {
            let dir = stack.open_rel(0, &done.rel, libc::O_PATH | libc::O_DIRECTORY)?;
            make_opaque(stack, dir.as_fd())?;
        }
    }
    Ok(())
}

/// A directory of [`materialize_dir`] whose files are in the upper and whose subdirectories
/// are still to do.
struct Pending {
    rel: Vec<u8>,
    subdirs: Vec<(Vec<u8>, Vec<LayerIdx>)>,
}

/// Brings directory `rel` and its non-directories into the upper; `None` when nothing below
/// the upper contributes to it (it is complete already).
fn materialize_files(stack: &Stack, rel: &[u8], layers: &[LayerIdx]) -> SysResult<Option<Pending>> {
    ensure_upper_dir(stack, rel)?;
    let set = DirSet::open(stack, rel, layers)?;
    if set.dirs.len() == 1 && stack.is_upper(set.dirs[0].0) {
        return Ok(None);
    }
    let mut subdirs = Vec::new();
    for e in crate::layer::readdir::list(stack, &set, rel.is_empty())? {
        let Some(f) = resolve::lookup(stack, &set, &e.name)? else {
            continue;
        };
        if f.is_dir() {
            subdirs.push((join(rel, &e.name), f.dir_layers));
        } else if !stack.is_upper(f.layer) {
            copy_up_entry(stack, rel, &e.name, f.layer, CopyData::MetaOnly)?;
        }
    }
    Ok(Some(Pending {
        rel: rel.to_vec(),
        subdirs,
    }))
}

/// Marks an upper directory opaque and drops the whiteouts inside it, which an opaque directory
/// never needs (the marker goes first, so the view never changes in between).
pub fn make_opaque(_stack: &Stack, upper_dir: BorrowedFd<'_>) -> SysResult<()> {
    let before = sys::fstat(upper_dir)?;
    match sys::openat(
        upper_dir,
        whiteout::OPAQUE_MARKER,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
        0o644,
    ) {
        Ok(_) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e),
    }
    for e in sys::read_dir(upper_dir)? {
        let c = CString::new(e.name).map_err(|_| Errno::EINVAL)?;
        let dev_whiteout = || {
            e.dtype == libc::DT_CHR
                && sys::fstatat(upper_dir, &c).is_ok_and(|st| whiteout::is_chardev_whiteout(&st))
        };
        if whiteout::whited_out(c.to_bytes()).is_some() || dev_whiteout() {
            let _ = sys::unlinkat(upper_dir, &c, false);
        }
    }
    sys::restore_times(upper_dir, &before);
    Ok(())
}
