//! Mount points for `--bind` that the container root lacks.
//!
//! A bind needs its target to exist. Made by the container, it would be a change to the root
//! like any other and stay in a persistent upper after the run. The holder makes the missing
//! ones instead, through the union, just before the container starts, and removes them (only
//! what it made, only while still empty) once the container is gone, putting back the times of
//! the existing directory it made them in. What stays in the upper is, at most, that directory
//! copied up from a lower with its old metadata (the view is unchanged).
//!
//! Every path is resolved with openat2's `RESOLVE_IN_ROOT` from the root's descriptor: the
//! container may have turned a directory into a symlink meanwhile, and the holder sees the
//! host, so a path must never leave the root.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use super::config::BindSpec;
use crate::sys;

/// `RESOLVE_IN_ROOT` of openat2(2): absolute paths and `..` stay inside the directory fd.
const RESOLVE_IN_ROOT: u64 = 0x10;

/// One entry the holder made: its parent (relative to the root) and its name.
#[derive(Debug)]
struct Made {
    parent: CString,
    name: CString,
    dir: bool,
}

/// The bind targets the holder made in the container root, removed by [`BindTargets::remove`].
#[derive(Debug, Default)]
pub(super) struct BindTargets {
    root: Option<OwnedFd>,
    made: Vec<Made>,
    /// The existing directory the first new entry went into, with its times before.
    touched: Vec<(CString, libc::stat)>,
}

fn open_in_root(root: &OwnedFd, rel: &CString) -> sys::SysResult<OwnedFd> {
    let p = if rel.as_bytes().is_empty() {
        c".".to_owned()
    } else {
        rel.clone()
    };
    sys::openat2(
        root.as_fd(),
        &p,
        libc::O_PATH | libc::O_DIRECTORY,
        0,
        RESOLVE_IN_ROOT,
    )
}

impl BindTargets {
    /// Makes the missing targets of `binds` under `root`. A target it cannot make (read-only
    /// root, a file in the way) is left to the container's own setup, which reports it.
    pub(super) fn create(root: &Path, binds: &[BindSpec]) -> BindTargets {
        let mut out = BindTargets::default();
        let Ok(rootfd) = sys::open_path(root, libc::O_PATH | libc::O_DIRECTORY) else {
            return out;
        };
        for b in binds {
            let dir = std::fs::metadata(&b.src).is_ok_and(|m| m.is_dir());
            let names: Vec<&[u8]> = b
                .dst
                .components()
                .filter_map(|c| match c {
                    Component::Normal(n) => Some(n.as_bytes()),
                    _ => None,
                })
                .collect();
            let mut parent: Vec<u8> = Vec::new();
            for (i, n) in names.iter().enumerate() {
                let last = i + 1 == names.len();
                let (Ok(pc), Ok(nc)) = (CString::new(parent.clone()), CString::new(*n)) else {
                    break;
                };
                let Ok(pfd) = open_in_root(&rootfd, &pc) else {
                    break;
                };
                if sys::fstatat(pfd.as_fd(), &nc).is_err() {
                    if !out.made_path(&pc) && !out.touched_has(&pc) {
                        if let Ok(st) = sys::fstat(pfd.as_fd()) {
                            out.touched.push((pc.clone(), st));
                        }
                    }
                    let ok = if last && !dir {
                        sys::openat(
                            pfd.as_fd(),
                            &nc,
                            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                            0o644,
                        )
                        .is_ok()
                    } else {
                        sys::mkdirat(pfd.as_fd(), &nc, 0o755).is_ok()
                    };
                    if !ok {
                        break;
                    }
                    out.made.push(Made {
                        parent: pc,
                        name: nc,
                        dir: !last || dir,
                    });
                }
                if !parent.is_empty() {
                    parent.push(b'/');
                }
                parent.extend_from_slice(n);
            }
        }
        out.root = Some(rootfd);
        out
    }

    /// Whether `p` (relative to the root) is a directory this run made.
    fn made_path(&self, p: &CString) -> bool {
        self.made.iter().any(|m| {
            let mut full = m.parent.as_bytes().to_vec();
            if !full.is_empty() {
                full.push(b'/');
            }
            full.extend_from_slice(m.name.as_bytes());
            full == p.as_bytes()
        })
    }

    fn touched_has(&self, p: &CString) -> bool {
        self.touched.iter().any(|(t, _)| t == p)
    }

    /// Removes what [`create`](Self::create) made, deepest first, where it is still empty, and
    /// puts back the times of the directories it made them in.
    pub(super) fn remove(self) {
        let Some(root) = &self.root else { return };
        for m in self.made.iter().rev() {
            let Ok(pfd) = open_in_root(root, &m.parent) else {
                continue;
            };
            let Ok(st) = sys::fstatat(pfd.as_fd(), &m.name) else {
                continue;
            };
            let kind = st.st_mode & libc::S_IFMT;
            let ours = if m.dir {
                kind == libc::S_IFDIR
            } else {
                kind == libc::S_IFREG && st.st_size == 0
            };
            if ours {
                // A directory that is not empty fails here and stays: the container used it.
                let _ = sys::unlinkat(pfd.as_fd(), &m.name, m.dir);
            }
        }
        for (p, st) in &self.touched {
            if let Ok(fd) = open_in_root(root, p) {
                sys::restore_times(fd.as_fd(), st);
            }
        }
    }
}
