//! `unionfs-harness`: run layer scenarios on a union implementation, compare two of them, or
//! fuzz them against each other. Thin: everything lives in the `unionfs_harness` library.

#![deny(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use unionfs_harness::cli::{Cli, Cmd};
use unionfs_harness::diff::{self, DiffOutcome};
use unionfs_harness::report::{self, ScenarioResult, Status};
use unionfs_harness::{fuzz, runner, scenario, Error, Result};

fn expand(files: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for f in files {
        if f.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(f)
                .map_err(|e| Error::at("readdir", f, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            v.sort();
            out.extend(v);
        } else {
            out.push(f.clone());
        }
    }
    if out.is_empty() {
        return Err(Error::msg(
            "no scenario files given (directories are searched for *.toml)",
        ));
    }
    Ok(out)
}

fn finish(results: &[ScenarioResult], json: bool) -> ExitCode {
    if json {
        println!("{}", report::json(results));
    } else {
        println!("{}", report::summary(results));
    }
    if report::all_ok(results) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn for_each_file(
    files: &[PathBuf],
    json: bool,
    label: &str,
    f: impl Fn(&scenario::Scenario) -> ScenarioResult,
) -> ExitCode {
    let files = match expand(files) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("unionfs-harness: {e}");
            return ExitCode::from(2);
        }
    };
    let mut results = Vec::new();
    for path in &files {
        if runner::interrupted() {
            break;
        }
        let r = match scenario::load(path) {
            Ok(s) => f(&s),
            Err(e) => {
                let mut r = ScenarioResult::new(&path.display().to_string(), label);
                r.messages.push(e.to_string());
                r
            }
        };
        if !json {
            print!("{}", report::text(&r));
        }
        results.push(r);
    }
    finish(&results, json)
}

#[allow(clippy::too_many_arguments)]
fn fuzz_one(
    seed: u64,
    ops: usize,
    links: bool,
    ignore: &[String],
    imp: &str,
    against: &str,
    every: usize,
    out: &Path,
    shrink_runs: usize,
) -> ScenarioResult {
    let mut s = fuzz::generate_with(seed, ops, links);
    if !links {
        s.about.push_str(" (--no-layer-links)");
    }
    let mut r = diff::run_ignoring(&s, imp, against, every, ignore);
    let Some(d) = r.divergence.clone() else {
        return r;
    };
    // Locate precisely (views every step), then shrink.
    let d = match diff::run_pair_ignoring(&s, imp, against, 1, ignore) {
        DiffOutcome::Diverged(d) => d,
        _ => d,
    };
    let (small, sd) = fuzz::shrink(
        &s,
        imp,
        against,
        ignore,
        &d,
        shrink_runs,
        Duration::from_secs(120),
    );
    r.divergence = Some(sd.clone());
    // Field names may hold any character ("nlink changed by ... (before / after)").
    let slug: String = sd
        .field
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let file = out.join(format!("fuzz-seed-{seed}-{slug}.toml"));
    let written = fuzz::annotate(&small, against, &sd, imp)
        .and_then(|sc| scenario::to_toml(&sc))
        .and_then(|t| {
            std::fs::create_dir_all(out)
                .and_then(|()| std::fs::write(&file, t))
                .map_err(|e| Error::at("cannot write", &file, e))
        });
    match written {
        Ok(()) => r.messages.push(format!(
            "shrunk to {} steps, written to {}",
            small.step.len(),
            file.display()
        )),
        Err(e) => r.messages.push(format!("shrunk, but {e}")),
    }
    r
}

/// SIGINT/SIGTERM stop the run after the current step, so every mount and temp dir is
/// cleaned up; a second signal exits at once.
fn handle_signals() {
    let sigs = [libc::SIGINT, libc::SIGTERM];
    // Blocked here, before any other thread exists, so that only the waiter receives them.
    unionfs::sys::block_signals(&sigs);
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let first = unionfs::sys::wait_signal(&sigs);
            eprintln!(
                "unionfs-harness: signal {first}: stopping after the current step and cleaning up"
            );
            runner::interrupt();
            let second = unionfs::sys::wait_signal(&sigs);
            eprintln!("unionfs-harness: signal {second} again: exiting without cleanup");
            std::process::exit(130);
        });
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    handle_signals();
    match cli.cmd {
        Cmd::Run { imp, json, files } => {
            for_each_file(&files, json, &imp, |s| runner::run(s, &imp))
        }
        Cmd::Diff {
            imp,
            against,
            every,
            ignore,
            json,
            files,
        } => {
            let label = format!("{imp} vs {against}");
            for_each_file(&files, json, &label, |s| {
                diff::run_ignoring(s, &imp, &against, every, &ignore)
            })
        }
        Cmd::Fuzz {
            seed,
            seeds,
            ops,
            imp,
            against,
            every,
            out,
            shrink_runs,
            no_layer_links,
            ignore,
            print,
            json,
        } => {
            let links = !no_layer_links;
            if print {
                match scenario::to_toml(&fuzz::generate_with(seed, ops, links)) {
                    Ok(t) => {
                        print!("{t}");
                        return ExitCode::SUCCESS;
                    }
                    Err(e) => {
                        eprintln!("unionfs-harness: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            let mut results = Vec::new();
            for sd in seed..seed.saturating_add(seeds.max(1)) {
                if runner::interrupted() {
                    break;
                }
                let r = fuzz_one(
                    sd,
                    ops,
                    links,
                    &ignore,
                    &imp,
                    &against,
                    every,
                    &out,
                    shrink_runs,
                );
                if !json {
                    print!("{}", report::text(&r));
                }
                results.push(r);
            }
            if results.iter().any(|r| r.status == Status::Error) && !json {
                eprintln!("unionfs-harness: some runs could not be carried out (see ERROR lines)");
            }
            finish(&results, json)
        }
    }
}
