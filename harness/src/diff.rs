//! Differential runs: the same scenario on two implementations in lock step.
//!
//! After each step the results (errno, data read) are compared, and every `check_every` steps
//! the merged views; at the end the uppers are compared semantically (the view each produces
//! over the lowers), because where exactly a whiteout or a copied-up directory lands may
//! legitimately differ. Known deliberate differences are bridged, not reported:
//! - directory `st_nlink` (kernel overlayfs reports 1 for merged directories);
//! - renaming a directory that exists in a lower layer: the kernel (without redirect_dir) says
//!   EXDEV, so on that side we do what `mv` does then: copy the tree and remove the source.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Instant;

use crate::build::{set_mtime, set_xattr};
use crate::impls::unavailable;
use crate::report::{Divergence, ScenarioResult, Status};
use crate::runner::{describe, Instance};
use crate::scenario::{Scenario, Step};
use crate::view::{self, Fields};
use crate::{Error, Result};

/// What a differential run found.
#[derive(Debug, Clone, PartialEq)]
pub enum DiffOutcome {
    /// Both agree everywhere.
    Same,
    /// They disagree; the first divergence.
    Diverged(Divergence),
    /// They agree up to a point where a documented difference makes further comparison
    /// meaningless (the message says where and why).
    Stopped(String),
    /// The run could not be carried out.
    Error(Error),
}

/// Runs `s` on `a` and `b` in lock step and returns the first divergence.
pub fn run_pair(s: &Scenario, a: &str, b: &str, check_every: usize) -> DiffOutcome {
    run_pair_ignoring(s, a, b, check_every, &[])
}

/// Like [`run_pair`], but view differences in the `ignore`d fields (e.g. "nlink", to look past
/// a known bug) are not divergences.
pub fn run_pair_ignoring(
    s: &Scenario,
    a: &str,
    b: &str,
    check_every: usize,
    ignore: &[String],
) -> DiffOutcome {
    for imp in [a, b] {
        if let Some(why) = unavailable(imp) {
            return DiffOutcome::Error(Error::msg(format!("cannot run {imp} here: {why}")));
        }
    }
    match pair(s, a, b, check_every.max(1), ignore) {
        Ok(None) => DiffOutcome::Same,
        Ok(Some(d)) if d.field == STOPPED => DiffOutcome::Stopped(d.a),
        Ok(Some(d)) => DiffOutcome::Diverged(d),
        Err(e) => DiffOutcome::Error(e),
    }
}

/// Marks an internal "stop here" result of [`pair`].
const STOPPED: &str = "\0stopped";

/// The "stop here" result at step index `i`: the two agreed so far, and `why` they can no
/// longer be compared.
fn stopped(i: usize, st: &Step, why: String) -> Divergence {
    Divergence {
        step: i + 1,
        op: describe(st),
        path: String::new(),
        field: STOPPED.into(),
        a: format!("agreed up to step {}; stopped there: {why}", i + 1),
        b: String::new(),
    }
}

fn div(step: usize, st: Option<&Step>, x: view::Difference) -> Divergence {
    Divergence {
        step,
        op: st.map(describe).unwrap_or_else(|| "end of run".into()),
        path: x.path,
        field: x.field,
        a: x.a,
        b: x.b,
    }
}

/// The view of one side. Kernel overlayfs lists a whiteout that hides nothing when its
/// directory is not merged (lookup then says ENOENT): a documented kernel quirk, not compared.
fn view_of(i: &Instance) -> Result<view::Tree> {
    let mut v = i.view()?;
    if i.name() == "kernel" {
        v.ghosts.clear();
    }
    Ok(v)
}

/// Documented (README, the harness's fuzz results): a file whose link count before a rotation
/// counted names the view does not show (a lower hard link shadowed by a higher layer, or
/// whited out) has only its visible names in the layer diff, so the rotation lowers the count.
/// The kernel keeps its count there through its index, which no plain layer holds.
fn hidden_links(pre: &view::Tree, x: &view::Difference) -> Option<String> {
    if x.field != "nlink" {
        return None;
    }
    let (before, after) = (x.a.parse::<u64>().ok()?, x.b.parse::<u64>().ok()?);
    let ino = pre.nodes.get(&x.path)?.ino;
    let visible = pre.nodes.values().filter(|n| n.ino == ino).count() as u64;
    (after < before && before > visible).then(|| {
        format!(
            "{:?} counted {before} links with {visible} names in the view; the layer diff holds \
             only the visible ones, so the rotation leaves {after}",
            x.path
        )
    })
}

/// Removes from the kernel's answer to a `readdir` step the whiteouts it lists but lookup does
/// not find (the quirk [`view_of`] leaves out of views).
/// Whether `inst`'s view lists, below directory `p`, a whiteout that hides nothing (a kernel
/// "ghost", see [`view_of`]): such a tree cannot be removed or copied by the kernel.
fn ghost_under(inst: &Instance, p: &str) -> bool {
    let under = format!("{p}/");
    inst.view()
        .is_ok_and(|v| v.ghosts.iter().any(|g| g.starts_with(&under)))
}

fn drop_ghosts(i: &Instance, st: &Step, data: &mut Option<String>) {
    if i.name() != "kernel" || st.op != "readdir" {
        return;
    }
    let dir = i.mnt().join(st.path.as_deref().unwrap_or("."));
    if let Some(d) = data.as_mut() {
        let kept: Vec<&str> = d
            .lines()
            .filter(|n| {
                !matches!(dir.join(n).symlink_metadata(), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
            })
            .collect();
        *d = kept.join("\n");
    }
}

fn pair(
    s: &Scenario,
    a: &str,
    b: &str,
    every: usize,
    ignore: &[String],
) -> Result<Option<Divergence>> {
    let first = |d: Vec<view::Difference>| d.into_iter().find(|x| !ignore.contains(&x.field));
    let mut ia = Instance::start(s, a)?;
    let mut ib = Instance::start(s, b)?;
    let (va, vb) = (view_of(&ia)?, view_of(&ib)?);
    if let Some(x) = first(view::diff(&va, &vb, Fields::VIEWS)) {
        let mut d = div(0, None, x);
        d.op = "initial view (after mount)".into();
        return Ok(Some(d));
    }
    let n = s.step.len();
    let mut fields = Fields::VIEWS;
    // fd name -> (the file it opened while that file had no upper copy on side a, whether
    // the file has had one since).
    let mut opened_below: std::collections::HashMap<String, (String, bool)> = Default::default();
    for (i, st) in s.step.iter().enumerate() {
        if crate::runner::interrupted() {
            return Err(Error::msg(format!("interrupted before step {}", i + 1)));
        }
        // A rotation must not change what a union shows. Kernel overlayfs with index=on keeps
        // copied-up lower hard links joined only through its index, which a rotation drops:
        // when the kernel's own view changes there, the two can no longer be compared.
        let rotating = st.op == "rotate";
        let before = if rotating {
            Some((view_of(&ia)?, view_of(&ib)?))
        } else {
            None
        };
        let mut oa = ia.step(st);
        let mut ob = ib.step(st);
        for (o, inst) in [(&mut oa, &ia), (&mut ob, &ib)] {
            drop_ghosts(inst, st, &mut o.data);
        }
        if let Some((pa, pb)) = &before {
            // The reference first: if its own view moved, nothing after is comparable.
            let mut sides = [(a, pa, &ia), (b, pb, &ib)];
            sides.sort_by_key(|(name, _, _)| *name != "kernel");
            for (name, pre, inst) in sides {
                let post = view_of(inst)?;
                if let Some(x) = view::diff(pre, &post, Fields::VIEWS).into_iter().next() {
                    if name == "kernel" {
                        return Ok(Some(stopped(
                            i,
                            st,
                            format!(
                                "the kernel's own view changed \
                                 across the rotation ({} {}: {} -> {}); its index=on hard links do \
                                 not survive becoming a plain layer",
                                x.path, x.field, x.a, x.b
                            ),
                        )));
                    }
                    if let Some(why) = hidden_links(pre, &x) {
                        return Ok(Some(stopped(i, st, why)));
                    }
                    let mut d = div(i + 1, Some(st), x);
                    d.field = format!(
                        "{} changed by the rotation on {name} (before / after)",
                        d.field
                    );
                    return Ok(Some(d));
                }
            }
        }
        if oa.result != ob.result {
            let bridged = bridge_exdev(st, &oa.result, &ob.result, &mut ia, &mut ib);
            if let Some(Bridged::Stop(why)) = bridged {
                return Ok(Some(stopped(i, st, why)));
            }
            if let Some(Bridged::Results(x, y)) = bridged {
                oa.result = x;
                ob.result = y;
                // The copy made new inodes: link counts and inode sharing of the moved files
                // can no longer agree, everything else must.
                fields.nlink = false;
                fields.ino_classes = false;
            }
        }
        let path = st.path.clone().unwrap_or_else(|| ".".into());
        let fd = st.fd.clone().unwrap_or_else(|| "fd".into());
        if st.op == "open" && oa.result == "ok" {
            let file = ia.resolve(&path);
            opened_below.remove(&fd);
            if !ia.upper_has(&file) {
                opened_below.insert(fd.clone(), (file, false));
            }
        }
        if st.op == "close" && oa.result == "ok" {
            opened_below.remove(&fd);
        }
        if let (true, "ok", Some(to)) = (st.op == "rename", oa.result.as_str(), &st.to) {
            // The file moved (and moving a lower file copies it up): follow it.
            for (file, _) in opened_below.values_mut() {
                if *file == path {
                    *file = to.clone();
                } else if let Some(rest) = file.strip_prefix(&format!("{path}/")) {
                    *file = format!("{to}/{rest}");
                }
            }
        }
        for (file, copied) in opened_below.values_mut() {
            *copied = *copied || ia.upper_has(file);
        }
        if st.op == "read_fd" && oa.data != ob.data {
            // The documented difference (README, "Open files keep working"): an fd opened
            // before its file was copied up keeps reading the file it opened (with
            // passthrough the kernel reads that file itself); kernel overlayfs moves it.
            if let Some((p, _)) = opened_below.get(&fd).filter(|(_, copied)| *copied) {
                return Ok(Some(stopped(
                    i,
                    st,
                    format!(
                        "fd {fd} was opened before {p:?} \
                         was copied up; it reads the file it opened, kernel overlayfs moves \
                         it to the copy"
                    ),
                )));
            }
        }
        if oa.result != ob.result && (st.op == "rm_rf" || st.op == "rmdir") {
            // The kernel lists whiteouts that hide nothing in a non-merged directory (see
            // view_of) and cannot remove them, so its rmdir or rm -rf of such a tree fails.
            for (inst, r) in [(&ia, &oa.result), (&ib, &ob.result)] {
                if inst.name() != "kernel" || !r.starts_with("ENOTEMPTY") {
                    continue;
                }
                if ghost_under(inst, &path) {
                    return Ok(Some(stopped(
                        i,
                        st,
                        format!(
                            "kernel overlayfs lists a \
                             whiteout under {path:?} that hides nothing and cannot remove it"
                        ),
                    )));
                }
            }
        }
        if oa.result != ob.result {
            let with = |r: String, p: &[String]| {
                if p.is_empty() {
                    r
                } else {
                    format!("{r} ({})", p.join("; "))
                }
            };
            return Ok(Some(Divergence {
                step: i + 1,
                op: describe(st),
                path,
                field: "result".into(),
                a: with(oa.result, &oa.problems),
                b: with(ob.result, &ob.problems),
            }));
        }
        if oa.data != ob.data {
            return Ok(Some(Divergence {
                step: i + 1,
                op: describe(st),
                path,
                field: "data".into(),
                a: format!("{:?}", oa.data.unwrap_or_default()),
                b: format!("{:?}", ob.data.unwrap_or_default()),
            }));
        }
        if (i + 1) % every == 0 || i + 1 == n {
            let (va, vb) = (view_of(&ia)?, view_of(&ib)?);
            if let Some(x) = first(view::diff(&va, &vb, fields)) {
                // Also documented (README, "Data path"): with passthrough, a file copied up
                // while an fd still reads its lower copy takes a new inode number for the rest
                // of the mount (the kernel allows one backing file per inode); that fd, and the
                // file's other lower names, stay on the old inode and its lower data.
                let ids = ia.lower_ids(&x.path);
                // A name of the read file: a lower hard link, or one linked since (the
                // reference shows it as the same inode).
                let ino = |p: &str| vb.nodes.get(p).map(|n| n.ino);
                let reader = opened_below.iter().find(|(_, (p, copied))| {
                    *copied
                        && (*p == x.path
                            || ia.lower_ids(p).iter().any(|i| ids.contains(i))
                            || ino(p).is_some_and(|i| ino(&x.path) == Some(i)))
                });
                if let Some((fd, (p, _))) = reader {
                    return Ok(Some(stopped(
                        i,
                        st,
                        format!(
                            "{:?} differs ({}) while fd \
                             {fd}, opened before {p:?} was copied up, is open; such a file takes \
                             a new inode number for the rest of the mount, and the fd and the \
                             file's other names keep the old one",
                            x.path, x.field
                        ),
                    )));
                }
                let mut d = div(i + 1, Some(st), x);
                if every > 1 {
                    d.op = format!("{} (views compared every {every} steps)", d.op);
                }
                return Ok(Some(d));
            }
        }
    }
    let va = ia.view()?;
    let (fa, fb) = (ia.finish()?, ib.finish()?);
    // The upper under test must reproduce its live view (which equals the reference's) when
    // used as a plain layer. The reference's own upper is not judged: kernel overlayfs keeps
    // hard links joined through its index, which no plain layer expresses. A scenario may
    // exempt an implementation (`upper_not_a_layer_on`), as the runner does.
    let judged = !s.upper_not_a_layer_on.contains_key(a);
    if let Some(x) = view::diff(&va, &fa.model, Fields::SEMANTIC)
        .into_iter()
        .find(|_| judged)
    {
        return Ok(Some(Divergence {
            step: n + 1,
            op: format!("upper of {a} used as a layer over the lowers, against its live view (which {b} agreed with)"),
            path: x.path,
            field: x.field,
            a: format!("live view: {}", x.a),
            b: format!("upper+lowers: {}", x.b),
        }));
    }
    for (name, fin) in [(a, &fa), (b, &fb)] {
        if let Some(m) = fin.lower_changes.first() {
            return Ok(Some(Divergence {
                step: n + 1,
                op: format!("lowers unchanged ({name})"),
                path: String::new(),
                field: "lower".into(),
                a: m.clone(),
                b: String::new(),
            }));
        }
    }
    Ok(None)
}

/// What bridging the documented rename difference gave.
enum Bridged {
    /// The results to compare instead (side a, side b).
    Results(String, String),
    /// The `mv` fallback cannot stand in for the rename here (why): a documented stop, not an
    /// error.
    Stop(String),
}

/// Bridges the documented rename difference: where one side renamed a directory and the other
/// said EXDEV, the EXDEV side does what `mv` does. Returns the results to compare instead.
fn bridge_exdev(
    st: &Step,
    ra: &str,
    rb: &str,
    ia: &mut Instance,
    ib: &mut Instance,
) -> Option<Bridged> {
    if st.op != "rename" {
        return None;
    }
    let exchange = st.flags.iter().any(|f| f == "exchange");
    let (from, to) = (st.path.as_deref()?, st.to.as_deref()?);
    let target = match (ra, rb) {
        (_, "EXDEV") => ib,
        ("EXDEV", _) => ia,
        _ => return None,
    };
    // Where the other side failed too, the fallback must fail the same way (mv onto a
    // non-empty directory: ENOTEMPTY); exchange has no such fallback.
    let other_ok = ra == "ok" || rb == "ok";
    if !other_ok && exchange {
        return None;
    }
    let mnt = target.state.mnt.clone();
    let (src, dst) = (mnt.join(from), mnt.join(to));
    // Copies get new inodes: hard links reaching outside the moved tree would silently
    // split on that side only, and every later write would "diverge".
    if !target.state.fds.is_empty() {
        return Some(Bridged::Stop(format!(
            "{} said EXDEV for renaming {from:?} while files are open; an open file does not \
             follow the mv fallback's copy",
            target.name()
        )));
    }
    if target.name() == "kernel"
        && (ghost_under(target, from) || (exchange && ghost_under(target, to)))
    {
        return Some(Bridged::Stop(format!(
            "kernel said EXDEV for renaming {from:?}, whose tree holds a whiteout that hides \
             nothing; the kernel lists it, so the mv fallback cannot copy the tree"
        )));
    }
    if has_hard_links(&src) || (exchange && has_hard_links(&dst)) {
        return Some(Bridged::Stop(format!(
            "{} said EXDEV for renaming {from:?} and the tree holds hard links, which the mv \
             fallback cannot keep",
            target.name()
        )));
    }
    let r = if exchange {
        // What a program does without RENAME_EXCHANGE: three moves through a temporary name,
        // on the real paths: once the first move is made, a path through a symlink that is
        // one of the two ends no longer leads where it did.
        let real = |p: &Path| match (p.parent().map(std::fs::canonicalize), p.file_name()) {
            (Some(Ok(dir)), Some(name)) => dir.join(name),
            _ => p.to_path_buf(),
        };
        let (src, dst) = (real(&src), real(&dst));
        let tmp = src.with_file_name(".harness-exchange-tmp");
        move_path(&src, &tmp)
            .and_then(|()| move_path(&dst, &src))
            .and_then(|()| move_path(&tmp, &dst))
    } else {
        mv_fallback(&src, &dst)
    };
    let bridged = match r {
        Ok(()) => "ok".to_string(),
        Err(e) if !other_ok => e.errno.clone(),
        Err(e) => format!("EXDEV (the mv fallback failed: {})", e.msg),
    };
    Some(if ra == "EXDEV" {
        Bridged::Results(bridged, rb.to_string())
    } else {
        Bridged::Results(ra.to_string(), bridged)
    })
}

/// Why the `mv` fallback failed: the errno name and a message.
#[derive(Debug)]
struct MvError {
    errno: String,
    msg: String,
}

impl From<Error> for MvError {
    fn from(e: Error) -> Self {
        MvError {
            errno: "EIO".into(),
            msg: e.to_string(),
        }
    }
}

fn mv_err(p: &Path, e: std::io::Error) -> MvError {
    MvError {
        errno: e
            .raw_os_error()
            .map(|c| format!("{:?}", unionfs::sys::Errno::from_raw(c)))
            .unwrap_or_else(|| "EIO".into()),
        msg: format!("{}: {e}", p.display()),
    }
}

fn has_hard_links(p: &Path) -> bool {
    let Ok(md) = std::fs::symlink_metadata(p) else {
        return false;
    };
    if !md.is_dir() {
        return md.nlink() > 1;
    }
    std::fs::read_dir(p)
        .map(|rd| rd.flatten().any(|e| has_hard_links(&e.path())))
        .unwrap_or(false)
}

/// rename(2), and the `mv` fallback when it says EXDEV.
fn move_path(src: &Path, dst: &Path) -> std::result::Result<(), MvError> {
    match std::fs::rename(src, dst) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => mv_fallback(src, dst),
        Err(e) => Err(mv_err(src, e)),
    }
}

/// What `mv` does after EXDEV: copy the tree (modes, owners, times, xattrs, hard links inside
/// it), then remove the source.
fn mv_fallback(src: &Path, dst: &Path) -> std::result::Result<(), MvError> {
    if let Ok(md) = std::fs::symlink_metadata(dst) {
        if md.is_dir() {
            std::fs::remove_dir(dst).map_err(|e| mv_err(dst, e))?;
        } else {
            std::fs::remove_file(dst).map_err(|e| mv_err(dst, e))?;
        }
    }
    let mut links = HashMap::new();
    copy_tree(src, dst, &mut links)?;
    let md = std::fs::symlink_metadata(src).map_err(|e| mv_err(src, e))?;
    if md.is_dir() {
        std::fs::remove_dir_all(src).map_err(|e| mv_err(src, e))
    } else {
        std::fs::remove_file(src).map_err(|e| mv_err(src, e))
    }
}

fn copy_tree(src: &Path, dst: &Path, links: &mut HashMap<u64, std::path::PathBuf>) -> Result<()> {
    let e = |x: std::io::Error| Error::msg(format!("{}: {x}", src.display()));
    let md = std::fs::symlink_metadata(src).map_err(e)?;
    let ft = md.file_type();
    if ft.is_dir() {
        std::fs::create_dir(dst).map_err(e)?;
        for ent in std::fs::read_dir(src).map_err(e)? {
            let ent = ent.map_err(e)?;
            copy_tree(&ent.path(), &dst.join(ent.file_name()), links)?;
        }
    } else if ft.is_symlink() {
        let t = std::fs::read_link(src).map_err(e)?;
        std::os::unix::fs::symlink(t, dst).map_err(e)?;
    } else if md.nlink() > 1 && links.contains_key(&md.ino()) {
        std::fs::hard_link(&links[&md.ino()], dst).map_err(e)?;
        return Ok(());
    } else if ft.is_file() {
        std::fs::copy(src, dst).map_err(e)?;
        links.insert(md.ino(), dst.to_path_buf());
    } else {
        return Err(Error::msg(format!(
            "{}: special files are not copied by the fallback",
            src.display()
        )));
    }
    for (k, v) in view::xattrs(src)? {
        set_xattr(dst, &k, &v)?;
    }
    std::os::unix::fs::lchown(dst, Some(md.uid()), Some(md.gid())).map_err(e)?;
    if !ft.is_symlink() {
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(md.mode() & 0o7777))
            .map_err(e)?;
    }
    set_mtime(dst, md.mtime(), md.mtime_nsec())
}

/// Runs `s` differentially and renders the outcome as a scenario result.
pub fn run(s: &Scenario, a: &str, b: &str, check_every: usize) -> ScenarioResult {
    run_ignoring(s, a, b, check_every, &[])
}

/// Like [`run`], ignoring view differences in the given fields.
pub fn run_ignoring(
    s: &Scenario,
    a: &str,
    b: &str,
    check_every: usize,
    ignore: &[String],
) -> ScenarioResult {
    let t0 = Instant::now();
    let mut r = ScenarioResult::new(&s.name, &format!("{a} vs {b}"));
    let applies = |imp: &str| s.only.is_empty() || s.only.iter().any(|o| o == imp);
    if !(applies(a) && applies(b)) {
        r.status = Status::Skip;
        r.messages.push(format!(
            "applies to {} only: {}",
            s.only.join(", "),
            s.only_reason
        ));
        return r;
    }
    match run_pair_ignoring(s, a, b, check_every, ignore) {
        DiffOutcome::Same => r.status = Status::Pass,
        DiffOutcome::Stopped(why) => {
            r.status = Status::Pass;
            r.messages.push(why);
        }
        DiffOutcome::Diverged(d) => {
            r.status = Status::Fail;
            r.divergence = Some(d);
        }
        DiffOutcome::Error(e) => {
            r.status = Status::Error;
            r.messages.push(e.to_string());
        }
    }
    crate::report::apply_known_bug(&mut r, &s.known_bug, a);
    r.millis = t0.elapsed().as_millis() as u64;
    r
}
