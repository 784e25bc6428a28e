//! Executing one scenario step through a mounted union.
//!
//! Each step yields an [`Outcome`]: "ok" or the errno name, the data it read (compared across
//! implementations in differential runs) and any check that failed. `remount` and `rotate` change
//! the mount itself and are carried out by the runner.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, DirEntryExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::scenario::Step;
use crate::view;
use crate::Error;
use unionfs::sys;

/// Runs a tool; its failure becomes the errno it names on stderr (EPERM/EACCES/ENOENT/...),
/// or EIO, so that results compare across implementations.
fn tool(argv: &[&str]) -> std::io::Result<String> {
    let o = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .map_err(|e| invalid(&format!("{} is needed for this step: {e}", argv[0])))?;
    if o.status.success() {
        return Ok(String::from_utf8_lossy(&o.stdout).into_owned());
    }
    let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
    let code = if err.contains("permission denied") {
        libc::EACCES
    } else if err.contains("operation not permitted") {
        libc::EPERM
    } else if err.contains("no such file") {
        libc::ENOENT
    } else if err.contains("read-only file system") {
        libc::EROFS
    } else {
        libc::EIO
    };
    Err(std::io::Error::from_raw_os_error(code))
}

/// What executing a step gave.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Outcome {
    /// "ok" or the errno name.
    pub result: String,
    /// Data read (read, read_fd, readlink, getxattr, readdir, listxattr), for comparison.
    pub data: Option<String>,
    /// Failed checks other than the result (data, stat fields, inode numbers).
    pub problems: Vec<String>,
}

/// The state steps share: the mount, kept fds and saved inode numbers.
#[derive(Debug)]
pub struct State {
    /// The mount point.
    pub mnt: PathBuf,
    /// Lower layer dirs, topmost first (for `layer:N:PATH` inode references).
    pub lowers: Vec<PathBuf>,
    /// The upper dir.
    pub upper: Option<PathBuf>,
    /// Kept file descriptors by name.
    pub fds: HashMap<String, File>,
    /// Saved inode numbers by name.
    pub inos: HashMap<String, u64>,
}

/// File descriptors this process holds on files in `dirs` (an in-process union's layer fds).
/// Other fds do not count: tests running beside this one open and close their own.
fn fds_under(dirs: &[&Path]) -> usize {
    let Ok(d) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| dirs.iter().any(|d| t.starts_with(d)))
        .count()
}

fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(c) => format!("{:?}", sys::Errno::from_raw(c)),
        None => format!("error: {e}"),
    }
}

fn nix_err(e: nix::errno::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

fn sys_err(e: sys::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

fn bad_fd() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::EBADF)
}

fn invalid(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg.to_string())
}

/// The data of a step: `data` repeated to `len` bytes when `len` is given.
pub fn payload(st: &Step) -> Vec<u8> {
    let d = st.data.clone().unwrap_or_default().into_bytes();
    match st.len {
        Some(n) if !d.is_empty() => d.iter().cycle().take(n as usize).copied().collect(),
        Some(n) => vec![0u8; n as usize],
        None => d,
    }
}

fn open_flags(flags: &[String]) -> std::io::Result<OFlag> {
    let mut f = OFlag::empty();
    for s in flags {
        f |= match s.as_str() {
            "rdonly" => OFlag::O_RDONLY,
            "wronly" => OFlag::O_WRONLY,
            "rdwr" => OFlag::O_RDWR,
            "creat" => OFlag::O_CREAT,
            "excl" => OFlag::O_EXCL,
            "trunc" => OFlag::O_TRUNC,
            "append" => OFlag::O_APPEND,
            "directory" => OFlag::O_DIRECTORY,
            "nofollow" => OFlag::O_NOFOLLOW,
            _ => return Err(invalid("unknown open flag")),
        };
    }
    Ok(f | OFlag::O_CLOEXEC)
}

fn rename_flags(flags: &[String]) -> std::io::Result<u32> {
    let mut f = 0;
    for s in flags {
        f |= match s.as_str() {
            "noreplace" => libc::RENAME_NOREPLACE,
            "exchange" => libc::RENAME_EXCHANGE,
            _ => return Err(invalid("unknown rename flag")),
        };
    }
    Ok(f)
}

fn xname(st: &Step) -> &str {
    st.name.as_deref().unwrap_or_default()
}

/// Up to `max` paths (relative to `root`) found below `dir`, depth first.
fn collect(dir: &Path, root: &Path, out: &mut Vec<String>, max: usize) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if out.len() >= max {
            return;
        }
        let p = e.path();
        out.push(p.strip_prefix(root).unwrap_or(&p).display().to_string());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect(&p, root, out, max);
        }
    }
}

/// The (parent fd, name) pair naming `p`, with lookup errors as the errno a step reports.
fn at(p: &Path) -> std::io::Result<(std::os::fd::OwnedFd, Option<std::ffi::CString>)> {
    view::at_errno(p).map_err(sys_err)
}

/// Runs `f` with the (parent fd, name) pair that names `p` without following it.
fn with_at<T>(p: &Path, f: impl FnOnce(sys::At<'_>) -> sys::SysResult<T>) -> std::io::Result<T> {
    let (dir, n) = at(p)?;
    let at = match &n {
        Some(n) => sys::At::new(sys::fd(&dir), n),
        None => sys::At::dir(sys::fd(&dir)),
    };
    f(at).map_err(sys_err)
}

fn cname(name: &str) -> std::io::Result<std::ffi::CString> {
    std::ffi::CString::new(name).map_err(|_| invalid("NUL in an xattr name"))
}

/// lsetxattr(2): sets xattr `name` of `p` (not following a symlink `p`) to `value`.
pub fn lsetxattr(p: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let n = cname(name)?;
    with_at(p, |a| sys::setxattr(a, &n, value, 0))
}

/// lgetxattr(2): the value of xattr `name` of `p`, not following a symlink `p`.
pub fn lgetxattr(p: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let n = cname(name)?;
    // One call with room for the largest value the VFS allows (64 KiB): asking the size first
    // would be a second request to a union's daemon.
    let mut buf = vec![0u8; 64 * 1024];
    let len = with_at(p, |a| sys::getxattr(a, &n, &mut buf))?;
    buf.truncate(len);
    Ok(buf)
}

/// llistxattr(2): the xattr names of `p` (not following a symlink `p`), as listed.
pub fn llistxattr(p: &Path) -> std::io::Result<Vec<String>> {
    // The VFS lists at most 64 KiB of names.
    let mut buf = vec![0u8; 64 * 1024];
    let len = with_at(p, |a| sys::listxattr(a, &mut buf))?;
    Ok(buf[..len]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

/// lremovexattr(2): removes xattr `name` of `p`, not following a symlink `p`.
pub fn lremovexattr(p: &Path, name: &str) -> std::io::Result<()> {
    let n = cname(name)?;
    with_at(p, |a| sys::removexattr(a, &n))
}

/// renameat2(2) of `from` to `to` with `flags` (`RENAME_NOREPLACE`, `RENAME_EXCHANGE`).
pub fn rename2(from: &Path, to: &Path, flags: u32) -> std::io::Result<()> {
    let (od, on) = at(from)?;
    let (nd, nn) = at(to)?;
    let (on, nn) = (on.unwrap_or_default(), nn.unwrap_or_default());
    sys::renameat2(sys::fd(&od), &on, sys::fd(&nd), &nn, flags).map_err(sys_err)
}

impl State {
    fn path(&self, p: &Option<String>) -> PathBuf {
        match p.as_deref() {
            None | Some(".") | Some("") => self.mnt.clone(),
            Some(p) => self.mnt.join(p),
        }
    }

    fn ino_ref(&self, r: &str) -> crate::Result<u64> {
        let parts: Vec<&str> = r.splitn(3, ':').collect();
        let layer_path = match parts.as_slice() {
            ["layer", n, p] => {
                let i: usize = n.parse().map_err(|_| {
                    Error::msg(format!(
                        "bad layer index in {r:?} (write layer:N:PATH, N counting lowers from 0)"
                    ))
                })?;
                self.lowers
                    .get(i)
                    .ok_or_else(|| {
                        Error::msg(format!(
                            "no lower layer {i} for {r:?} (there are {})",
                            self.lowers.len()
                        ))
                    })?
                    .join(p)
            }
            ["upper", p] | ["upper", p, ..] => self
                .upper
                .as_ref()
                .ok_or_else(|| Error::msg(format!("no upper layer for {r:?}")))?
                .join(p),
            _ => {
                return self.inos.get(r).copied().ok_or_else(|| {
                    Error::msg(format!("no inode saved as {r:?} (use save_ino first)"))
                })
            }
        };
        std::fs::symlink_metadata(&layer_path)
            .map(|m| m.ino())
            .map_err(|e| Error::msg(format!("{}: {e}", layer_path.display())))
    }

    /// Executes one step (not remount/rotate) and checks its data expectations.
    pub fn exec(&mut self, st: &Step) -> Outcome {
        let mut problems = Vec::new();
        let r = self.exec_inner(st, &mut problems);
        let (result, data) = match r {
            Ok(d) => ("ok".to_string(), d),
            Err(e) => (errno_name(&e), None),
        };
        if let (Some(want), Some(got)) = (&st.expect_data, &data) {
            if want != got {
                problems.push(format!("data: expected {want:?}, got {got:?}"));
            }
        }
        if let (Some(want), Some(got)) = (&st.expect_names, &data) {
            let mut w = want.clone();
            w.sort();
            let w = w.join("\n");
            if w != *got {
                problems.push(format!(
                    "names: expected [{}], got [{}]",
                    w.replace('\n', ", "),
                    got.replace('\n', ", ")
                ));
            }
        }
        Outcome {
            result,
            data,
            problems,
        }
    }

    fn exec_inner(
        &mut self,
        st: &Step,
        problems: &mut Vec<String>,
    ) -> std::io::Result<Option<String>> {
        let p = self.path(&st.path);
        let fdname = st.fd.clone().unwrap_or_else(|| "fd".into());
        match st.op.as_str() {
            "create" => {
                let mut o = std::fs::OpenOptions::new();
                o.write(true).mode(st.mode.unwrap_or(0o644));
                if st.flags.iter().any(|f| f == "excl") {
                    o.create_new(true);
                } else {
                    o.create(true).truncate(true);
                }
                let mut f = o.open(&p)?;
                f.write_all(&payload(st))?;
            }
            "write" => {
                let f = std::fs::OpenOptions::new().write(true).open(&p)?;
                f.write_all_at(&payload(st), st.offset.unwrap_or(0))?;
            }
            "append" => {
                let mut f = std::fs::OpenOptions::new().append(true).open(&p)?;
                f.write_all(&payload(st))?;
            }
            "truncate" => {
                nix::unistd::truncate(&p, st.size.unwrap_or(0) as i64).map_err(nix_err)?;
            }
            "open" => {
                let fl = open_flags(&st.flags)?;
                let m = Mode::from_bits_truncate(st.mode.unwrap_or(0o644) as _);
                let fd = nix::fcntl::open(&p, fl, m).map_err(nix_err)?;
                self.fds.insert(fdname, File::from(fd));
            }
            "read_fd" => {
                let f = self.fds.get(&fdname).ok_or_else(bad_fd)?;
                let mut buf = vec![0u8; st.len.unwrap_or(4096) as usize];
                let n = f.read_at(&mut buf, st.offset.unwrap_or(0))?;
                return Ok(Some(String::from_utf8_lossy(&buf[..n]).into_owned()));
            }
            "write_fd" => {
                let f = self.fds.get(&fdname).ok_or_else(bad_fd)?;
                f.write_all_at(&payload(st), st.offset.unwrap_or(0))?;
            }
            "close" => {
                self.fds.remove(&fdname).ok_or_else(bad_fd)?;
            }
            "fsync" => match self.fds.get(&fdname) {
                Some(f) if st.path.is_none() => f.sync_all()?,
                _ => File::open(&p)?.sync_all()?,
            },
            "fchmod" => {
                let f = self.fds.get(&fdname).ok_or_else(bad_fd)?;
                use std::os::unix::fs::PermissionsExt;
                f.set_permissions(std::fs::Permissions::from_mode(st.mode.unwrap_or(0o644)))?;
            }
            "fchown" => {
                let f = self.fds.get(&fdname).ok_or_else(bad_fd)?;
                std::os::unix::fs::fchown(f, st.uid, st.gid)?;
            }
            "mkdir" => {
                std::fs::DirBuilder::new()
                    .mode(st.mode.unwrap_or(0o755))
                    .create(&p)?;
            }
            "rmdir" => std::fs::remove_dir(&p)?,
            "unlink" => std::fs::remove_file(&p)?,
            "rename" => {
                let to = self.path(&st.to);
                rename2(&p, &to, rename_flags(&st.flags)?)?;
            }
            "link" => std::fs::hard_link(&p, self.path(&st.to))?,
            "symlink" => {
                std::os::unix::fs::symlink(st.target.as_deref().unwrap_or(""), &p)?;
            }
            "mknod" => {
                let kind = match st.name.as_deref().unwrap_or("fifo") {
                    "fifo" => libc::S_IFIFO,
                    "chardev" => libc::S_IFCHR,
                    "blockdev" => libc::S_IFBLK,
                    _ => return Err(invalid("mknod name must be fifo, chardev or blockdev")),
                };
                let rdev = st.rdev.unwrap_or([0, 0]);
                let (d, n) = at(&p)?;
                let n = n.unwrap_or_default();
                sys::mknodat(
                    sys::fd(&d),
                    &n,
                    kind | st.mode.unwrap_or(0o644),
                    libc::makedev(rdev[0], rdev[1]),
                )
                .map_err(sys_err)?;
            }
            "chmod" => {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(
                    &p,
                    std::fs::Permissions::from_mode(st.mode.unwrap_or(0o644)),
                )?;
            }
            "chown" => std::os::unix::fs::lchown(&p, st.uid, st.gid)?,
            "utimes" => {
                let omit = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_OMIT,
                };
                let m = libc::timespec {
                    tv_sec: st.mtime.unwrap_or(0) as libc::time_t,
                    tv_nsec: st.mtime_nsec.unwrap_or(0) as _,
                };
                let (d, n) = at(&p)?;
                match n {
                    Some(n) => sys::utimensat(sys::fd(&d), &n, &[omit, m]),
                    None => sys::utimens_fd(sys::fd(&d), &[omit, m]),
                }
                .map_err(sys_err)?;
            }
            "setxattr" => lsetxattr(&p, xname(st), &payload(st))?,
            "removexattr" => lremovexattr(&p, xname(st))?,
            "getxattr" => {
                let v = lgetxattr(&p, xname(st))?;
                // With `data`, the value must be that payload (lets big values be checked
                // without writing them out in the scenario).
                if st.data.is_some() && v != payload(st) {
                    problems.push(format!(
                        "getxattr {}: value of {} bytes differs from the {} expected",
                        st.name.as_deref().unwrap_or(""),
                        v.len(),
                        payload(st).len()
                    ));
                }
                return Ok(Some(String::from_utf8_lossy(&v).into_owned()));
            }
            "listxattr" => {
                let mut names = llistxattr(&p)?;
                names.sort();
                return Ok(Some(names.join("\n")));
            }
            "read" => {
                let d = std::fs::read(&p)?;
                return Ok(Some(String::from_utf8_lossy(&d).into_owned()));
            }
            "readlink" => {
                let t = std::fs::read_link(&p)?;
                return Ok(Some(t.to_string_lossy().into_owned()));
            }
            "readdir" => {
                let mut names = Vec::new();
                for e in std::fs::read_dir(&p)? {
                    names.push(e?.file_name().to_string_lossy().into_owned());
                }
                let total = names.len();
                names.sort();
                names.dedup();
                if names.len() != total {
                    problems.push(format!(
                        "readdir {}: {} names listed more than once",
                        st.path.as_deref().unwrap_or("."),
                        total - names.len()
                    ));
                }
                return Ok(Some(names.join("\n")));
            }
            "dino" => {
                for e in std::fs::read_dir(&p)? {
                    let e = e?;
                    let md = std::fs::symlink_metadata(e.path())?;
                    if e.ino() != md.ino() {
                        problems.push(format!(
                            "{}: d_ino {} but st_ino {}",
                            e.path().display(),
                            e.ino(),
                            md.ino()
                        ));
                    }
                }
            }
            "stat" => {
                // lstat first: its errno is the step's result.
                std::fs::symlink_metadata(&p)?;
                let n = view::node(&p).map_err(std::io::Error::other)?;
                let label = st.path.as_deref().unwrap_or(".");
                if let Some(e) = &st.expect_stat {
                    problems.extend(view::check_node("stat", label, &n, e, None));
                }
                if let Some(name) = &st.save_ino {
                    self.inos.insert(name.clone(), n.ino);
                }
                if let Some(r) = &st.expect_ino {
                    match self.ino_ref(r) {
                        Ok(want) if want == n.ino => {}
                        Ok(want) => problems
                            .push(format!("stat {label}: st_ino {} but {r} is {want}", n.ino)),
                        Err(m) => problems.push(format!("stat {label}: {m}")),
                    }
                }
            }
            "mmap_write" => {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&p)?;
                let data = payload(st);
                let off = st.offset.unwrap_or(0) as usize;
                sys::mmap_write(&f, off, &data)?;
            }
            "setfacl" => {
                // `data` is a setfacl spec such as "u:65534:r" or "d:u:65534:rwx".
                let spec = st.data.clone().unwrap_or_default();
                tool(&["setfacl", "-m", &spec, &p.to_string_lossy()])?;
            }
            "getfacl" => {
                let out = tool(&["getfacl", "-c", "-n", "-p", &p.to_string_lossy()])?;
                return Ok(Some(out));
            }
            "read_as" => {
                // Read the file as another user: how ACLs and modes are enforced.
                let uid = st.uid.unwrap_or(65534).to_string();
                let gid = st.gid.unwrap_or(65534).to_string();
                let out = tool(&[
                    "setpriv",
                    &format!("--reuid={uid}"),
                    &format!("--regid={gid}"),
                    "--clear-groups",
                    "cat",
                    &p.to_string_lossy(),
                ])?;
                return Ok(Some(out));
            }
            "churn" => {
                // mkdir + rmdir of `path`, `size` times: inodes and fds must not pile up.
                let mut dirs: Vec<&Path> = self.lowers.iter().map(PathBuf::as_path).collect();
                dirs.extend(self.upper.as_deref());
                let before = fds_under(&dirs);
                for _ in 0..st.size.unwrap_or(1000) {
                    std::fs::create_dir(&p)?;
                    std::fs::remove_dir(&p)?;
                }
                let after = fds_under(&dirs);
                if after > before + 64 {
                    problems.push(format!("churn: open fds grew from {before} to {after}"));
                }
            }
            "rm_rf" => {
                let md = std::fs::symlink_metadata(&p)?;
                if md.is_dir() {
                    if let Err(e) = std::fs::remove_dir_all(&p) {
                        // Say what survived: that is what a bug report needs.
                        let mut left = Vec::new();
                        collect(&p, &self.mnt, &mut left, 10);
                        problems.push(format!(
                            "rm -rf {}: {e}; still there: {}",
                            st.path.as_deref().unwrap_or("."),
                            left.join(", ")
                        ));
                        return Err(e);
                    }
                } else {
                    std::fs::remove_file(&p)?
                }
            }
            "parallel_write" => {
                let n = st.size.unwrap_or(4) as usize;
                let data = payload(st);
                let errs: Vec<std::io::Result<()>> = std::thread::scope(|s| {
                    let hs: Vec<_> = (0..n)
                        .map(|i| {
                            let (p, d) = (&p, &data);
                            s.spawn(move || {
                                let f = std::fs::OpenOptions::new().write(true).open(p)?;
                                f.write_all_at(d, (i * d.len()) as u64)
                            })
                        })
                        .collect();
                    hs.into_iter()
                        .map(|h| {
                            h.join()
                                .unwrap_or_else(|_| Err(std::io::Error::other("thread panicked")))
                        })
                        .collect()
                });
                for e in errs {
                    e?;
                }
            }
            other => return Err(invalid(&format!("op {other} is run by the runner"))),
        }
        Ok(None)
    }
}
