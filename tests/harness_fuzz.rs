//! Fixed fuzz seeds, 200 ops each, unionfs against kernel overlayfs.
//!
//! A seed that shows a known unionfs bug is listed in KNOWN with the divergent field and the
//! corpus file that keeps its shrunk case; it must still diverge that way (so a fix is noticed
//! and the line removed). Every other seed must agree with the kernel.

mod harness_common;

use harness_common::can_run;
use unionfs::harness::diff::{run_pair, DiffOutcome};
use unionfs::harness::fuzz::generate;

const SEEDS: std::ops::RangeInclusive<u64> = 1..=24;
const OPS: usize = 200;

/// (seed, divergent field, corpus scenario that keeps the shrunk case).
const KNOWN: &[(u64, &str, &str)] = &[
    (8, "nlink", "39-copy-up-of-lower-hardlink-keeps-nlink.toml"),
    (19, "nlink", "39-unlink-lower-hardlink-drops-nlink.toml"),
    (21, "nlink", "39-copy-up-of-lower-hardlink-keeps-nlink.toml"),
    (24, "nlink", "39-copy-up-of-lower-hardlink-keeps-nlink.toml"),
];

#[test]
fn generation_is_deterministic() {
    for seed in [1, 7, 99] {
        assert_eq!(generate(seed, OPS), generate(seed, OPS), "seed {seed}");
    }
    assert_ne!(
        generate(1, OPS),
        generate(2, OPS),
        "different seeds, same scenario"
    );
    assert_eq!(generate(5, OPS).step.len(), OPS);
}

#[test]
fn fixed_seeds_agree_with_kernel() {
    if !can_run("unionfs") || !can_run("kernel") {
        return;
    }
    let mut failures = Vec::new();
    for seed in SEEDS {
        let s = generate(seed, OPS);
        let known = KNOWN.iter().find(|k| k.0 == seed);
        match (run_pair(&s, "unionfs", "kernel", 10), known) {
            (DiffOutcome::Same, None) => {}
            (DiffOutcome::Stopped(why), None) => eprintln!("seed {seed}: {why}"),
            (DiffOutcome::Same | DiffOutcome::Stopped(_), Some((_, _, file))) => failures.push(
                format!("seed {seed}: the known divergence ({file}) is gone: remove it from KNOWN"),
            ),
            (DiffOutcome::Diverged(d), Some((_, field, _))) if d.field == *field => {
                eprintln!("seed {seed}: known divergence ({field}) still there");
            }
            (DiffOutcome::Diverged(d), _) => failures.push(format!(
                "seed {seed}: after step {} ({}): {} {}: unionfs {} / kernel {} \
                 (reproduce and shrink: unionfs-harness fuzz --seed {seed} --ops {OPS})",
                d.step, d.op, d.path, d.field, d.a, d.b
            )),
            (DiffOutcome::Error(e), _) => failures.push(format!("seed {seed}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
