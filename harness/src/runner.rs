//! Running a scenario on one implementation and checking every expectation.
//!
//! An [`Instance`] is one mounted union built from a scenario; it unmounts and removes its temp
//! dir when dropped, so a failing or erroring run leaves nothing behind.

use std::time::Instant;

use crate::build::build_layer;
use crate::impls::{by_name, unavailable, Union, Workspace};
use crate::ops::{Outcome, State};
use crate::report::{ScenarioResult, Status};
use crate::scenario::{Scenario, Step};
use crate::view::{self, capture, merge, Fields, ReadAs, Tree};
use crate::{Error, Result};

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Asks running scenarios to stop after their current step (and clean up); for the CLI's
/// SIGINT/SIGTERM handling.
pub fn interrupt() {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// True once [`interrupt`] was called.
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// One union mounted from a scenario's layers.
pub struct Instance {
    imp: Box<dyn Union>,
    ws: Workspace,
    /// The step state (mount point, kept fds, saved inode numbers).
    pub state: State,
    lowers_before: Vec<Tree>,
    mounted: bool,
}

/// What an instance leaves after unmounting.
#[derive(Debug)]
pub struct Finished {
    /// The upper in the neutral notation (None: no upper).
    pub upper: Option<Tree>,
    /// The view the upper and the lowers produce as a plain layer stack.
    pub model: Tree,
    /// Original lowers whose on-disk state changed: one message each.
    pub lower_changes: Vec<String>,
}

impl Instance {
    /// The file `rel` (a path below the mount point, symlinks followed) names right now, as a
    /// path below the mount point; `rel` itself when it does not resolve inside the mount.
    pub fn resolve(&self, rel: &str) -> String {
        std::fs::canonicalize(self.ws.mnt.join(rel))
            .ok()
            .and_then(|p| {
                p.strip_prefix(&self.ws.mnt)
                    .ok()
                    .map(|r| r.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| rel.to_string())
    }

    /// The (device, inode) of `rel` in each lower layer that has it (hard-link identity).
    pub fn lower_ids(&self, rel: &str) -> Vec<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        self.ws
            .lowers
            .iter()
            .filter_map(|l| l.join(rel).symlink_metadata().ok())
            .map(|m| (m.dev(), m.ino()))
            .collect()
    }

    /// The mount point.
    pub fn mnt(&self) -> &std::path::Path {
        &self.ws.mnt
    }

    /// Whether the upper directory holds `rel` (a resolved path below the mount point) with its
    /// data: a metadata-only copy (a stub) still reads from below.
    pub fn upper_has(&self, rel: &str) -> bool {
        let Some(p) = self.ws.upper.as_ref().map(|u| u.join(rel)) else {
            return false;
        };
        if p.symlink_metadata().is_err() {
            return false;
        }
        let stub = (|| {
            let dir =
                unionfs::sys::open_path(p.parent()?, libc::O_PATH | libc::O_DIRECTORY).ok()?;
            let name = std::ffi::CString::new(p.file_name()?.as_encoded_bytes()).ok()?;
            unionfs::layer::metacopy::read_at(unionfs::sys::At::new(
                std::os::fd::AsFd::as_fd(&dir),
                &name,
            ))
        })();
        stub.is_none()
    }

    /// Builds the layers of `s` in `imp`'s format and mounts them.
    pub fn start(s: &Scenario, imp: &str) -> Result<Instance> {
        let mut u = by_name(imp)?;
        let tag: String = s
            .name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(40)
            .collect();
        let ws = Workspace::new(
            &format!("{imp}-{tag}"),
            s.lower.len(),
            s.no_upper,
            s.tmpfs,
            s.colon_in_layer_paths,
        )?;
        for (i, l) in s.lower.iter().enumerate() {
            build_layer(&ws.lowers[i], l, u.format())?;
        }
        if let (Some(l), Some(up)) = (&s.upper, &ws.upper) {
            build_layer(up, l, u.format())?;
        }
        let lowers_before = ws
            .lowers
            .iter()
            .map(|l| capture(l, ReadAs::Raw))
            .collect::<Result<Vec<_>>>()?;
        u.mount(&ws)?;
        let state = State {
            mnt: ws.mnt.clone(),
            lowers: ws.lowers.clone(),
            upper: ws.upper.clone(),
            fds: Default::default(),
            inos: Default::default(),
        };
        Ok(Instance {
            imp: u,
            ws,
            state,
            lowers_before,
            mounted: true,
        })
    }

    /// The implementation's name.
    pub fn name(&self) -> &'static str {
        self.imp.name()
    }

    /// The workspace (layer dirs and mount point).
    pub fn workspace(&self) -> &Workspace {
        &self.ws
    }

    fn unmount(&mut self) -> Result<()> {
        // Kept fds would keep a lazily detached mount (and its data) alive.
        self.state.fds.clear();
        if self.mounted {
            self.mounted = false;
            self.imp.unmount(&self.ws)?;
        }
        Ok(())
    }

    fn remount(&mut self, rotate: bool) -> Result<()> {
        self.unmount()?;
        if rotate {
            self.ws.rotate()?;
            self.state.lowers = self.ws.lowers.clone();
        }
        self.imp.mount(&self.ws)?;
        self.mounted = true;
        Ok(())
    }

    /// Executes one step, remount and rotate included.
    pub fn step(&mut self, st: &Step) -> Outcome {
        let r = match st.op.as_str() {
            "remount" => self.remount(false),
            "rotate" => self.remount(true),
            "daemon_signal" => self.daemon_signal(st),
            "crash_copy_up" => return self.crash_copy_up(st),
            _ => return self.state.exec(st),
        };
        Outcome {
            result: match r {
                Ok(()) => "ok".into(),
                Err(e) => format!("error: {e}"),
            },
            ..Outcome::default()
        }
    }

    /// Sends the daemon SIGTERM (`data = "TERM"`) or SIGKILL (`"KILL"`) and checks that the
    /// mount goes away by itself: a clean unmount, or the watchdog's after a kill.
    fn daemon_signal(&mut self, st: &Step) -> Result<()> {
        let pid = self
            .imp
            .daemon()
            .ok_or_else(|| Error::msg("EOPNOTSUPP: this implementation has no daemon"))?;
        let sig = match st.data.as_deref() {
            Some("KILL") => nix::sys::signal::Signal::SIGKILL,
            _ => nix::sys::signal::Signal::SIGTERM,
        };
        self.state.fds.clear();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
            .map_err(|e| Error::msg(format!("kill {pid}: {e}")))?;
        self.wait_unmounted(&format!("after SIG{sig:?}"))?;
        self.mounted = false;
        self.imp.unmount(&self.ws)
    }

    fn wait_unmounted(&self, when: &str) -> Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if !crate::impls::is_mounted(&self.ws.mnt) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::msg(format!("the mount is still there 10 s {when}")));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Appends `data` (`len` bytes) to `path` while the daemon is killed mid-way, remounts,
    /// and checks the file is whole: the old content or the old plus all of the new.
    fn crash_copy_up(&mut self, st: &Step) -> Outcome {
        let fail = |m: String| Outcome {
            result: format!("error: {m}"),
            ..Outcome::default()
        };
        let Some(pid) = self.imp.daemon() else {
            return fail("EOPNOTSUPP: this implementation has no daemon".into());
        };
        let p = self.ws.mnt.join(st.path.as_deref().unwrap_or("f"));
        let old = match std::fs::read(&p) {
            Ok(d) => d,
            Err(e) => return fail(format!("reading {}: {e}", p.display())),
        };
        let new = crate::ops::payload(st);
        let writer = {
            let (p, new) = (p.clone(), new.clone());
            std::thread::spawn(move || {
                use std::io::Write;
                let _ = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&p)
                    .and_then(|mut f| f.write_all(&new));
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(15));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = writer.join();
        let mut problems = Vec::new();
        if let Err(e) = self.wait_unmounted("after SIGKILL") {
            problems.push(e.to_string());
        }
        self.mounted = false;
        let _ = self.imp.unmount(&self.ws);
        if let Err(e) = self.imp.mount(&self.ws) {
            return fail(format!("remount after the crash: {e}"));
        }
        self.mounted = true;
        match std::fs::read(&p) {
            Ok(d) if d == old => {}
            Ok(d)
                if d.len() == old.len() + new.len() && d.starts_with(&old) && d.ends_with(&new) => {
            }
            Ok(d) => problems.push(format!(
                "partial file after the crash: {} bytes (old {}, new {})",
                d.len(),
                old.len(),
                old.len() + new.len()
            )),
            Err(e) => problems.push(format!("reading after the crash: {e}")),
        }
        Outcome {
            result: "ok".into(),
            data: None,
            problems,
        }
    }

    /// The merged view as it is now.
    pub fn view(&self) -> Result<Tree> {
        capture(&self.ws.mnt, ReadAs::View)
    }

    /// Unmounts and reads the upper, the model view of the stack and changes to the lowers.
    pub fn finish(&mut self) -> Result<Finished> {
        self.unmount()?;
        self.imp.settle(&self.ws)?;
        let upper = match &self.ws.upper {
            Some(u) => Some(capture(u, ReadAs::Layer)?),
            None => None,
        };
        let lowers = self
            .ws
            .lowers
            .iter()
            .map(|l| capture(l, ReadAs::Layer))
            .collect::<Result<Vec<_>>>()?;
        let mut stack: Vec<&Tree> = upper.iter().collect();
        stack.extend(lowers.iter());
        let model = merge(&stack);
        let mut lower_changes = Vec::new();
        // Rotation adds lowers in front; the original ones are the last `before.len()`.
        let orig = &self.ws.lowers[self.ws.lowers.len() - self.lowers_before.len()..];
        for (i, (dir, before)) in orig.iter().zip(&self.lowers_before).enumerate() {
            let after = capture(dir, ReadAs::Raw)?;
            lower_changes.extend(view::changes(&format!("lower {i}"), before, &after));
        }
        Ok(Finished {
            upper,
            model,
            lower_changes,
        })
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.unmount();
    }
}

/// One-line description of a step for reports.
pub fn describe(st: &Step) -> String {
    let mut s = st.op.clone();
    if let Some(p) = &st.path {
        s.push_str(&format!(" {p:?}"));
    }
    if let Some(t) = &st.to {
        s.push_str(&format!(" -> {t:?}"));
    }
    if let Some(t) = &st.target {
        s.push_str(&format!(" target={t:?}"));
    }
    if !st.flags.is_empty() {
        s.push_str(&format!(" [{}]", st.flags.join(",")));
    }
    if let Some(m) = st.mode {
        s.push_str(&format!(" mode={m:04o}"));
    }
    if let Some(d) = &st.data {
        let short: String = d.chars().take(20).collect();
        s.push_str(&format!(" data={short:?}"));
    }
    if let Some(n) = &st.name {
        s.push_str(&format!(" name={n:?}"));
    }
    s
}

/// The result a step must have on `imp`.
pub fn expected_result<'a>(st: &'a Step, imp: &str) -> &'a str {
    st.expect_on
        .get(imp)
        .or(st.expect.as_ref())
        .map(|s| s.as_str())
        .unwrap_or("ok")
}

/// Runs scenario `s` on implementation `imp` and checks all its expectations.
pub fn run(s: &Scenario, imp: &str) -> ScenarioResult {
    let t0 = Instant::now();
    let mut res = ScenarioResult::new(&s.name, imp);
    if !s.only.is_empty() && !s.only.iter().any(|o| o == imp) {
        res.status = Status::Skip;
        res.messages.push(format!(
            "applies to {} only: {}",
            s.only.join(", "),
            if s.only_reason.is_empty() {
                "no reason given"
            } else {
                &s.only_reason
            }
        ));
        return res;
    }
    if let Some(why) = unavailable(imp) {
        res.status = Status::Error;
        res.messages.push(format!("cannot run {imp} here: {why}"));
        return res;
    }
    match run_checked(s, imp, &mut res) {
        Ok(()) => {
            res.status = if res.messages.is_empty() {
                Status::Pass
            } else {
                Status::Fail
            }
        }
        Err(e) => {
            res.status = Status::Error;
            res.messages.push(e.to_string());
        }
    }
    crate::report::apply_known_bug(&mut res, &s.known_bug, imp);
    res.millis = t0.elapsed().as_millis() as u64;
    res
}

fn run_checked(s: &Scenario, imp: &str, res: &mut ScenarioResult) -> Result<()> {
    let mut inst = Instance::start(s, imp)?;
    for (i, st) in s.step.iter().enumerate() {
        if interrupted() {
            return Err(Error::msg(format!("interrupted before step {}", i + 1)));
        }
        let o = inst.step(st);
        let want = expected_result(st, imp);
        if o.result != want {
            res.messages.push(format!(
                "step {} ({}): expected {want}, got {}",
                i + 1,
                describe(st),
                o.result
            ));
        }
        for p in o.problems {
            res.messages
                .push(format!("step {} ({}): {p}", i + 1, describe(st)));
        }
    }
    let expect = s.expect_on.get(imp).unwrap_or(&s.expect);
    let view = inst.view()?;
    if let Some(v) = &expect.view {
        let errs = view::check_tree("view", &view, v);
        if !errs.is_empty() {
            res.messages.extend(errs);
            res.view = Some(view::render(&view));
        }
    }
    let fin = inst.finish()?;
    if let (Some(e), Some(u)) = (&expect.upper, &fin.upper) {
        let errs = view::check_tree("upper", u, e);
        if !errs.is_empty() {
            res.messages.extend(errs);
            res.upper = Some(view::render(u));
        }
    }
    res.messages.extend(fin.lower_changes.iter().cloned());
    // The upper must be a faithful layer diff: used as a plain top layer over the lowers it
    // must show exactly the view the live mount showed.
    let d = if s.upper_not_a_layer_on.contains_key(imp) {
        Vec::new()
    } else {
        view::diff(&view, &fin.model, Fields::SEMANTIC)
    };
    for x in d.iter().take(10) {
        res.messages.push(format!(
            "upper is not a faithful layer diff: {} {}: live view {} but upper+lowers give {}",
            x.path, x.field, x.a, x.b
        ));
    }
    Ok(())
}
