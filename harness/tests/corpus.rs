//! The scenario corpus (tests/scenarios) on unionfs and on kernel overlayfs: both must pass.
//! Scenarios marked `slow` run only with UNIONFS_HARNESS_SLOW=1 (the CLI always runs them).

mod common;

use std::collections::BTreeSet;

use common::{can_run, corpus};
use unionfs_harness::report::{self, Status};
use unionfs_harness::{diff, runner, scenario};

fn run_corpus(imp: &str) {
    if !can_run(imp) {
        return;
    }
    run_all(imp, |s| runner::run(s, imp));
}

fn run_all(label: &str, run: impl Fn(&scenario::Scenario) -> report::ScenarioResult) {
    let imp = label;
    let slow = std::env::var("UNIONFS_HARNESS_SLOW").as_deref() == Ok("1");
    let mut results = Vec::new();
    for path in corpus() {
        let s = scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
        if s.slow && !slow {
            eprintln!("not run (slow; UNIONFS_HARNESS_SLOW=1 runs it): {}", s.name);
            continue;
        }
        let r = run(&s);
        eprint!("{}", report::text(&r));
        results.push(r);
    }
    let bad: Vec<String> = results
        .iter()
        .filter(|r| !matches!(r.status, Status::Pass | Status::Skip | Status::Xfail))
        .map(report::text)
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} scenarios failed on {imp}:\n{}",
        bad.len(),
        results.len(),
        bad.join("")
    );
    let passed = results.iter().filter(|r| r.status == Status::Pass).count();
    assert!(
        passed >= 30,
        "only {passed} scenarios passed on {imp}: the corpus did not run"
    );
}

#[test]
fn corpus_on_unionfs() {
    run_corpus("unionfs");
}

/// With `-o metacopy=on` the view must not change; the upper-as-a-layer check runs after
/// `fill_stubs`, the step that makes such an upper a plain diff.
#[test]
fn corpus_on_unionfs_with_metacopy() {
    run_corpus("unionfs-metacopy");
}

/// With every copy-up flushed behind (`-o flush_behind=0`): staged copies must not change
/// the view, and the upper must be the layer diff once the union ends.
#[test]
fn corpus_on_unionfs_with_flush_behind() {
    run_corpus("unionfs-behind");
}

#[test]
fn corpus_on_kernel_overlayfs() {
    run_corpus("kernel");
}

/// The same corpus side by side: every step's result and the views after each step agree
/// (scenarios limited by `only` are skipped; known bugs must still diverge).
#[test]
fn corpus_unionfs_against_kernel() {
    if !can_run("unionfs") || !can_run("kernel") {
        return;
    }
    run_all("unionfs vs kernel", |s| {
        diff::run(s, "unionfs", "kernel", 1)
    });
}

/// A few scenarios through the `unionfs-mount` binary (daemon, `L1:L2` syntax with `\:`), and
/// the daemon lifecycle ones that need it (crash during copy-up, signals).
#[test]
fn some_scenarios_through_the_mount_binary() {
    if !can_run("unionfs-cli") {
        return;
    }
    for name in [
        "48-colon-in-lower-path",
        "12-rm-lower-file-writes-whiteout",
        "47-layer-rotation",
        "25-crash-during-copy-up-leaves-a-whole-file",
        "52-sigterm-and-kill-unmount-cleanly",
    ] {
        let path = corpus()
            .into_iter()
            .find(|p| p.file_stem().is_some_and(|s| s == name))
            .unwrap_or_else(|| panic!("{name}.toml is missing from the corpus"));
        let s = scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let r = runner::run(&s, "unionfs-cli");
        assert_eq!(r.status, Status::Pass, "{}", report::text(&r));
    }
}

/// Lines of docs/SCENARIOS.md that the corpus does not cover, and why (covered elsewhere).
const NOT_IN_CORPUS: &[(u32, &str)] = &[];

#[test]
fn corpus_covers_every_scenarios_md_line() {
    let mut covered = BTreeSet::new();
    for path in corpus() {
        let s = scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !s.covers.is_empty(),
            "{}: says no SCENARIOS.md line it covers (covers = [N])",
            path.display()
        );
        assert!(!s.about.is_empty(), "{}: has no `about`", path.display());
        covered.extend(s.covers);
    }
    for (n, _) in NOT_IN_CORPUS {
        assert!(
            !covered.contains(n),
            "line {n} is covered now: drop it from NOT_IN_CORPUS"
        );
        covered.insert(*n);
    }
    let missing: Vec<u32> = (1..=52).filter(|n| !covered.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "SCENARIOS.md lines without a scenario: {missing:?}"
    );
}
