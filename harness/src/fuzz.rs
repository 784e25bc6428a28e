//! Random mode: a seeded generator of layer stacks and op sequences, and a shrinker.
//!
//! The same seed always generates the same scenario (our own xorshift PRNG: no dependency whose
//! stream could change between versions). Names come from a small pool with spaces and
//! non-ASCII letters so that ops collide often: collisions are where unions go wrong.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::diff::{run_pair_ignoring, DiffOutcome};
use crate::report::Divergence;
use crate::runner::Instance;
use crate::scenario::{Entry, Expect, Kind, Layer, NodeExpect, Scenario, Step, TreeExpect};

/// A small deterministic PRNG (xorshift64*), seeded through splitmix64.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// True with probability `pct` percent.
    pub fn chance(&mut self, pct: u32) -> bool {
        self.below(100) < pct as usize
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

const NAMES: &[&str] = &["a", "b", "c d", "é", "ü x", "d1", "d2"];
const DIRS: &[&str] = &[".", "d1", "d2", "d1/d2", "d2/é"];
const DATA: &[&str] = &["x", "hello", "Ωmega", "0123456789", ""];

fn join(dir: &str, name: &str) -> String {
    if dir == "." {
        name.into()
    } else {
        format!("{dir}/{name}")
    }
}

/// Adds a random entry to a layer unless it would clash with one already there.
fn add_entry(rng: &mut Rng, layer: &mut Layer, kinds: &mut BTreeMap<String, Kind>, links: bool) {
    let dir = *rng.pick(DIRS);
    let path = join(dir, rng.pick::<&str>(NAMES));
    // Ancestors are directories in this layer; they must not be anything else.
    let mut anc = dir.to_string();
    while anc != "." {
        match kinds.get(&anc) {
            Some(Kind::Dir) | None => {}
            _ => return,
        }
        anc = match anc.rfind('/') {
            Some(i) => anc[..i].to_string(),
            None => ".".into(),
        };
    }
    if kinds.contains_key(&path) || kinds.keys().any(|k| k.starts_with(&format!("{path}/"))) {
        return;
    }
    // Fixed times let differential runs see a layer time kept by one side and lost by the
    // other (see view::Fields::fixed_mtimes).
    let mut e = Entry {
        path: path.clone(),
        mtime: Some(1_000_000_000 + rng.below(1000) as i64),
        ..Entry::default()
    };
    let roll = rng.below(100);
    e.kind = match roll {
        0..=39 => Kind::File,
        40..=59 => Kind::Dir,
        60..=69 => Kind::Symlink,
        70..=84 => Kind::Whiteout,
        85..=89 => Kind::Hardlink,
        _ => {
            e.opaque = Some("marker".into());
            Kind::Dir
        }
    };
    match e.kind {
        Kind::File => e.content = Some((*rng.pick(DATA)).into()),
        Kind::Symlink => e.target = Some(rng.pick(NAMES).to_string()),
        Kind::Hardlink if !links => return,
        Kind::Hardlink => {
            let files: Vec<&String> = kinds
                .iter()
                .filter(|(_, k)| **k == Kind::File)
                .map(|(p, _)| p)
                .collect();
            if files.is_empty() {
                return;
            }
            e.target = Some(rng.pick(&files).to_string());
        }
        _ => {}
    }
    if matches!(e.kind, Kind::Whiteout | Kind::Hardlink) {
        e.mtime = None;
    }
    let mut anc = dir.to_string();
    while anc != "." {
        kinds.insert(anc.clone(), Kind::Dir);
        anc = match anc.rfind('/') {
            Some(i) => anc[..i].to_string(),
            None => ".".into(),
        };
    }
    // A hard link is a file for the purposes of later entries.
    let k = if e.kind == Kind::Hardlink {
        Kind::File
    } else {
        e.kind
    };
    kinds.insert(path, k);
    layer.entries.push(e);
}

fn random_path(rng: &mut Rng, known: &[String]) -> String {
    if !known.is_empty() && rng.chance(60) {
        rng.pick(known).clone()
    } else {
        join(rng.pick::<&str>(DIRS), rng.pick::<&str>(NAMES))
    }
}

/// Generates the scenario for `seed` with `ops` steps.
pub fn generate(seed: u64, ops: usize) -> Scenario {
    generate_with(seed, ops, true)
}

/// Like [`generate`]; `lower_links: false` puts no hard links in the layers (to look past a
/// known hard-link bug). The ops still create links.
pub fn generate_with(seed: u64, ops: usize, lower_links: bool) -> Scenario {
    let mut rng = Rng::new(seed);
    let mut s = Scenario {
        name: format!("fuzz-seed-{seed}"),
        about: format!("generated by `unionfs-harness fuzz --seed {seed} --ops {ops}`"),
        ..Scenario::default()
    };
    let nlowers = 1 + rng.below(3);
    let mut known = Vec::new();
    for _ in 0..nlowers {
        let mut l = Layer::default();
        let mut kinds = BTreeMap::new();
        for _ in 0..(3 + rng.below(8)) {
            add_entry(&mut rng, &mut l, &mut kinds, lower_links);
        }
        known.extend(kinds.keys().cloned());
        s.lower.push(l);
    }
    let mut u = Layer::default();
    let mut kinds = BTreeMap::new();
    for _ in 0..rng.below(5) {
        add_entry(&mut rng, &mut u, &mut kinds, lower_links);
    }
    known.extend(kinds.keys().cloned());
    s.upper = Some(u);
    // A whiteout with nothing below it hides nothing; kernel overlayfs then lists it as a name
    // that lookup denies (a known kernel quirk, not what we are looking for).
    let mut below: std::collections::BTreeSet<String> = Default::default();
    for l in s.lower.iter_mut().rev() {
        l.entries
            .retain(|e| e.kind != Kind::Whiteout || below.contains(&e.path));
        below.extend(
            l.entries
                .iter()
                .filter(|e| e.kind != Kind::Whiteout)
                .map(|e| e.path.clone()),
        );
    }
    if let Some(u) = s.upper.as_mut() {
        u.entries
            .retain(|e| e.kind != Kind::Whiteout || below.contains(&e.path));
    }
    known.sort();
    known.dedup();
    for _ in 0..ops {
        let mut st = random_step(&mut rng, &known);
        // Rotation turns links made by the ops into layer links.
        if !lower_links && st.op == "rotate" {
            st.op = "remount".into();
        }
        s.step.push(st);
    }
    s
}

fn random_step(rng: &mut Rng, known: &[String]) -> Step {
    let path = random_path(rng, known);
    let mut st = Step {
        path: Some(path),
        ..Step::default()
    };
    let fd = ["f1", "f2"][rng.below(2)].to_string();
    let op = match rng.below(100) {
        0..=7 => "create",
        8..=12 => "write",
        13..=17 => "append",
        18..=21 => "truncate",
        22..=29 => "mkdir",
        30..=35 => "rmdir",
        36..=43 => "unlink",
        44..=53 => "rename",
        54..=57 => "link",
        58..=61 => "symlink",
        62..=65 => "chmod",
        66..=67 => "chown",
        68..=70 => "setxattr",
        71..=72 => "removexattr",
        73..=75 => "read",
        76 => "listxattr",
        77 => "readlink",
        78..=82 => "readdir",
        83..=85 => "rm_rf",
        86..=88 => "open",
        89..=91 => "write_fd",
        92..=94 => "read_fd",
        95..=96 => "close",
        97 => "utimes",
        98 => "remount",
        _ => "rotate",
    };
    st.op = op.to_string();
    match op {
        "create" | "write" | "append" | "write_fd" => {
            st.data = Some(rng.pick(DATA).to_string());
            if op == "write" || op == "write_fd" {
                st.offset = Some(rng.below(12) as u64);
            }
        }
        "truncate" => st.size = Some(rng.below(12) as u64),
        "rename" | "link" => {
            st.to = Some(random_path(rng, known));
            if op == "rename" {
                match rng.below(10) {
                    0 => st.flags = vec!["noreplace".into()],
                    1 => st.flags = vec!["exchange".into()],
                    _ => {}
                }
            }
        }
        "symlink" => st.target = Some(rng.pick(NAMES).to_string()),
        "chmod" => st.mode = Some(*rng.pick(&[0o600, 0o644, 0o755, 0o4755, 0o700])),
        "chown" => {
            st.uid = Some(*rng.pick(&[0, 1000]));
            st.gid = Some(*rng.pick(&[0, 1000]));
        }
        "setxattr" => {
            st.name = Some(rng.pick(&["user.k", "user.other"]).to_string());
            st.data = Some(rng.pick(DATA).to_string());
        }
        "removexattr" => st.name = Some(rng.pick(&["user.k", "user.other"]).to_string()),
        "utimes" => st.mtime = Some(1_000_000_000 + rng.below(1000) as i64),
        "open" => {
            st.fd = Some(fd.clone());
            st.flags = match rng.below(4) {
                0 => vec!["rdonly".into()],
                1 => vec!["rdwr".into()],
                2 => vec!["wronly".into(), "trunc".into()],
                _ => vec!["rdwr".into(), "creat".into()],
            };
        }
        "read_fd" | "close" => {
            st.fd = Some(fd.clone());
            st.path = None;
            st.offset = Some(0);
        }
        "remount" | "rotate" => st.path = None,
        _ => {}
    }
    if op == "write_fd" {
        st.fd = Some(fd);
        st.path = None;
    }
    st
}

/// Shrinks a diverging scenario: drops chunks of steps, then single layer entries, while the
/// divergence (same field) persists. Stops after `budget` runs or `time` wall time.
pub fn shrink(
    s: &Scenario,
    a: &str,
    b: &str,
    ignore: &[String],
    first: &Divergence,
    budget: usize,
    time: Duration,
) -> (Scenario, Divergence) {
    let t0 = Instant::now();
    let mut best = s.clone();
    let mut best_div = first.clone();
    let mut runs = 0;
    let still = |c: &Scenario, runs: &mut usize| -> Option<Divergence> {
        *runs += 1;
        match run_pair_ignoring(c, a, b, 1, ignore) {
            DiffOutcome::Diverged(d) if d.field == first.field => Some(d),
            _ => None,
        }
    };
    let out_of_time =
        |runs: usize| runs >= budget || t0.elapsed() > time || crate::runner::interrupted();
    // Steps after the divergence never matter.
    if first.step > 0 && first.step <= best.step.len() {
        let mut c = best.clone();
        c.step.truncate(first.step);
        if let Some(d) = still(&c, &mut runs) {
            best = c;
            best_div = d;
        }
    }
    let mut chunk = best.step.len().div_ceil(2).max(1);
    while chunk >= 1 && !out_of_time(runs) {
        let mut i = 0;
        let mut changed = false;
        while i < best.step.len() && !out_of_time(runs) {
            let mut c = best.clone();
            let end = (i + chunk).min(c.step.len());
            c.step.drain(i..end);
            if let Some(d) = still(&c, &mut runs) {
                best = c;
                best_div = d;
                changed = true;
            } else {
                i += chunk;
            }
        }
        if chunk == 1 && !changed {
            break;
        }
        if !changed || chunk > 1 {
            chunk = (chunk / 2).max(1);
        }
    }
    // Whole lower layers that are (or became) empty.
    let mut li = 0;
    while li < best.lower.len() && best.lower.len() > 1 && !out_of_time(runs) {
        if best.lower[li].entries.is_empty() {
            let mut c = best.clone();
            c.lower.remove(li);
            if let Some(d) = still(&c, &mut runs) {
                best = c;
                best_div = d;
                continue;
            }
        }
        li += 1;
    }
    // Layer entries, one at a time, upper first.
    let nl = best.lower.len();
    for li in (0..=nl).rev() {
        let mut j = 0;
        loop {
            if out_of_time(runs) {
                break;
            }
            let len = if li == nl {
                best.upper.as_ref().map_or(0, |u| u.entries.len())
            } else {
                best.lower[li].entries.len()
            };
            if j >= len {
                break;
            }
            let mut c = best.clone();
            let l = if li == nl {
                c.upper.get_or_insert_with(Layer::default)
            } else {
                &mut c.lower[li]
            };
            l.entries.remove(j);
            if let Some(d) = still(&c, &mut runs) {
                best = c;
                best_div = d;
            } else {
                j += 1;
            }
        }
    }
    (best, best_div)
}

/// Turns a shrunk case into a corpus scenario: the reference implementation's results become
/// the expected ones, its final view the expected view.
pub fn annotate(s: &Scenario, reference: &str, d: &Divergence, a: &str) -> crate::Result<Scenario> {
    let mut out = s.clone();
    let mut inst = Instance::start(s, reference)?;
    for st in out.step.iter_mut() {
        let o = inst.step(st);
        st.expect = if o.result == "ok" {
            None
        } else {
            Some(o.result)
        };
        if matches!(st.op.as_str(), "read" | "read_fd" | "readlink" | "getxattr") {
            st.expect_data = o.data;
        }
    }
    let view = inst.view()?;
    drop(inst);
    let mut entries = Vec::new();
    for (p, n) in &view.nodes {
        if p == "." {
            continue;
        }
        entries.push(NodeExpect {
            path: p.clone(),
            kind: Some(n.kind),
            content: n
                .data
                .as_ref()
                .filter(|_| n.kind == Kind::File)
                .map(|d| String::from_utf8_lossy(d).into_owned()),
            target: n.target.clone(),
            mode: Some(n.mode),
            nlink: (n.kind != Kind::Dir).then_some(n.nlink),
            ..NodeExpect::default()
        });
    }
    out.expect = Expect {
        view: Some(TreeExpect {
            exact: true,
            entries,
            absent: vec![],
        }),
        upper: None,
    };
    out.about = format!(
        "{} Shrunk divergence ({a} vs {reference}) after step {} ({}): {} {}: {} vs {}. \
         Expectations are {reference}'s results.",
        s.about, d.step, d.op, d.path, d.field, d.a, d.b
    );
    Ok(out)
}
