//! What a [`Union`] holds on disk: the upper directory in the implementation's own format,
//! and the small filesystem a test may give the upper to fill it.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::*;

impl Union {
    // --- upper on disk -------------------------------------------------------------------------

    /// Names in an upper directory on disk, without our internal `.wh..wh.*` state (but with
    /// `.wh..wh..opq`, which is part of the OCI diff).
    pub fn upper_names(&self, rel: &str) -> BTreeSet<String> {
        list(&self.u(rel))
            .into_iter()
            .filter(|n| !n.starts_with(".wh..wh.") || n == ".wh..wh..opq")
            .collect()
    }

    fn wh_file(&self, rel: &str) -> PathBuf {
        let p = self.u(rel);
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        p.with_file_name(format!(".wh.{name}"))
    }

    /// Whether unionfs records a delete of `rel` as `.wh.NAME`: only when that name fits in
    /// NAME_MAX (longer names get the kernel's 0/0 char device).
    fn file_form(&self, rel: &str) -> bool {
        let name = Path::new(rel).file_name().unwrap().len();
        self.imp == Impl::Unionfs && ".wh.".len() + name <= 255
    }

    /// Whether the upper holds a whiteout for `rel` in the implementation's native format.
    pub fn upper_has_whiteout(&self, rel: &str) -> bool {
        if !self.file_form(rel) {
            return is_char_whiteout(&self.u(rel));
        }
        fs::symlink_metadata(self.wh_file(rel))
            .map(|m| m.is_file() && m.len() == 0)
            .unwrap_or(false)
    }

    pub fn assert_upper_whiteout(&self, rel: &str) {
        assert!(
            self.upper_has_whiteout(rel),
            "expected a whiteout for {rel} in the upper; upper dir holds {:?}",
            self.u(rel).parent().map(list)
        );
        if self.file_form(rel) {
            assert!(
                fs::symlink_metadata(self.u(rel)).is_err(),
                "upper holds both {rel} and its whiteout"
            );
        }
    }

    pub fn assert_no_upper_whiteout(&self, rel: &str) {
        assert!(
            !self.upper_has_whiteout(rel),
            "unexpected whiteout for {rel} in the upper"
        );
        if self.file_form(rel) {
            // The kernel format must never be written by unionfs either where `.wh.` fits.
            assert!(!is_char_whiteout(&self.u(rel)), "0/0 char device at {rel}");
        }
    }

    /// Neither an entry nor a whiteout for `rel` in the upper.
    pub fn assert_upper_absent(&self, rel: &str) {
        self.assert_no_upper_whiteout(rel);
        assert!(
            fs::symlink_metadata(self.u(rel)).is_err(),
            "unexpected upper entry {rel}"
        );
    }

    pub fn upper_is_opaque(&self, rel: &str) -> bool {
        let p = self.u(rel);
        match self.imp {
            Impl::Kernel => {
                lgetxattr(&p, "trusted.overlay.opaque").ok().as_deref() == Some(b"y")
                    || lgetxattr(&p, "user.overlay.opaque").ok().as_deref() == Some(b"y")
            }
            Impl::Unionfs => p.join(".wh..wh..opq").is_file(),
        }
    }

    pub fn assert_upper_opaque(&self, rel: &str) {
        assert!(
            self.upper_is_opaque(rel),
            "expected upper dir {rel} to be opaque"
        );
    }

    pub fn assert_upper_file(&self, rel: &str, content: impl AsRef<[u8]>) {
        let got = fs::read(self.u(rel)).unwrap_or_else(|e| panic!("upper {rel}: {e}"));
        assert_eq!(got, content.as_ref(), "upper content of {rel}");
    }

    /// Regular files in the upper that are neither part of the view nor internal (e.g. leaked
    /// `.fuse_hidden*` files, staging files published in the wrong place).
    pub fn upper_tree(&self) -> Vec<PathBuf> {
        let up = self.upper.as_ref().unwrap();
        snapshot(up)
            .nodes
            .into_keys()
            .filter(|p| !is_internal_path(p))
            // The root is the empty path.
            .map(|p| PathBuf::from(if p == "." { "" } else { &p }))
            .collect()
    }

    /// Asserts the upper holds exactly what it held before mounting (internal state aside):
    /// for scenarios that only read, which must never write to the upper.
    pub fn assert_upper_unchanged(&self) {
        let before = self.upper_snap.as_ref().expect("no upper");
        let now = visible_upper(snapshot(&self.u("")));
        let diff = diff_snapshots(before, &now);
        assert!(
            diff.is_empty(),
            "reads changed the upper:\n{}",
            diff.join("\n")
        );
    }

    /// Every regular file under the upper, internal state included, and under a separate work
    /// dir (prefixed `@work/`), with its size: where a copy-up can leave data.
    pub fn upper_all_files(&self) -> Vec<(PathBuf, u64)> {
        let mut out = files_under(&self.u(""));
        if self.work.exists() {
            for (p, len) in files_under(&self.work) {
                out.push((Path::new("@work").join(p), len));
            }
        }
        out
    }

    // --- a small upper filesystem (Stack::upper_tmpfs) ---------------------------------------

    /// The directory on the upper's own filesystem that holds the upper and the work dir.
    pub fn upper_fs(&self) -> PathBuf {
        match self.stack.upper_fs {
            Some(UpperFs::Tmpfs(_)) => self.root.join("upperfs"),
            Some(UpperFs::BtrfsQuota(_)) => self.root.join("upperfs/sv"),
            None => panic!("stack has no upper_fs"),
        }
    }

    /// Where the upper's own filesystem is mounted (for `mount -o remount,...`).
    pub fn upper_fs_mount(&self) -> PathBuf {
        assert!(self.stack.upper_fs.is_some(), "stack has no upper_fs");
        self.root.join("upperfs")
    }

    /// Fills the upper's filesystem with filler beside the upper (never part of the view) until
    /// it refuses more, then frees `keep` units again: inodes (`Fill::Inodes`) or 4 KiB pages
    /// (`Fill::Blocks`). Returns how many units the filler holds.
    pub fn fill_upper_fs(&self, what: Fill, keep: usize) -> usize {
        let dir = self.upper_fs().join("filler");
        let _ = fs::create_dir(&dir);
        match what {
            Fill::Inodes => {
                // tmpfs takes xattrs from the inode budget too: what is left after the last
                // inode that fits goes to xattrs on this file, so even a small one fails.
                let xattrs = dir.join("xattrs");
                let _ = fs::File::create(&xattrs);
                let mut n = list(&dir).len() - 1;
                loop {
                    match fs::File::create(dir.join(format!("i{n}"))) {
                        Ok(_) => n += 1,
                        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                        Err(e) => panic!("filling inodes: {e}"),
                    }
                }
                let mut k = 0;
                for size in [512, 256, 128, 64, 32, 16, 8, 4, 2, 1] {
                    while lsetxattr(&xattrs, &format!("user.fill{k}"), &vec![0; size]).is_ok() {
                        k += 1;
                    }
                }
                for i in 0..keep.min(n) {
                    fs::remove_file(dir.join(format!("i{}", n - 1 - i))).unwrap();
                }
                n - keep.min(n)
            }
            Fill::Blocks => {
                let p = dir.join("blocks");
                let mut f = fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&p)
                    .unwrap();
                let page = [0x5au8; 4096];
                loop {
                    match io::Write::write(&mut f, &page) {
                        Ok(n) if n == page.len() => {}
                        Ok(_) => break,
                        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                        Err(e) => panic!("filling blocks: {e}"),
                    }
                }
                let len = f.metadata().unwrap().len() / 4096;
                let left = len.saturating_sub(keep as u64);
                f.set_len(left * 4096).unwrap();
                left as usize
            }
        }
    }

    /// Removes all filler: the upper's filesystem has its space back.
    pub fn free_upper_fs(&self) {
        let _ = fs::remove_dir_all(self.upper_fs().join("filler"));
    }

    /// The daemon's work dir on disk (`-o workdir=` or the default inside the upper).
    pub fn work_dir(&self) -> PathBuf {
        if self.stack.o_form {
            self.work.clone()
        } else {
            self.u(".wh..wh.unionfs")
        }
    }

    /// Staging entries (`#unionfs-stage-*`, `#unionfs-behind-*`) left in the work dir or its index: a failed or
    /// interrupted change must leave none once it has returned (or after the next mount).
    pub fn stage_leftovers(&self) -> Vec<PathBuf> {
        let w = self.work_dir();
        let mut out = vec![];
        for d in [w.clone(), w.join("index")] {
            if let Ok(rd) = fs::read_dir(&d) {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with("#unionfs-stage-") || name.starts_with("#unionfs-behind-") {
                        out.push(e.path());
                    }
                }
            }
        }
        out
    }
}

fn files_under(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = vec![];
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(rd) = fs::read_dir(root.join(&rel)) else {
            continue;
        };
        for d in rd.flatten() {
            let r = rel.join(d.file_name());
            match d.metadata() {
                Ok(m) if m.is_dir() => stack.push(r),
                Ok(m) if m.is_file() => out.push((r, m.len())),
                _ => {}
            }
        }
    }
    out
}
