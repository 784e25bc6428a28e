//! Results and how they are shown: one line per scenario, details on failure, or JSON for CI.

use std::fmt::Write as _;

use serde::Serialize;

/// How a scenario run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every expectation held.
    Pass,
    /// Some expectation did not hold.
    Fail,
    /// Not applicable to this implementation (see the message).
    Skip,
    /// The run could not be carried out (bad file, cannot mount, ...).
    Error,
    /// Failed as the scenario's `known_bug` says it will.
    Xfail,
}

impl Status {
    /// The word printed in the summary line.
    pub fn word(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
            Status::Error => "ERROR",
            Status::Xfail => "XFAIL",
        }
    }
}

/// The result of one scenario on one implementation (or one differential run).
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    /// Scenario name.
    pub name: String,
    /// Implementation (or "A vs B" for a differential run).
    pub implementation: String,
    /// Outcome.
    pub status: Status,
    /// Why it failed, was skipped or errored; one line each.
    pub messages: Vec<String>,
    /// The view, rendered, when a view expectation failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub view: Option<String>,
    /// The upper, rendered, when an upper expectation failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upper: Option<String>,
    /// First divergence of a differential run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub divergence: Option<Divergence>,
    /// Wall time.
    pub millis: u64,
}

impl ScenarioResult {
    /// A fresh result (status Error until decided).
    pub fn new(name: &str, imp: &str) -> Self {
        ScenarioResult {
            name: name.to_string(),
            implementation: imp.to_string(),
            status: Status::Error,
            messages: Vec::new(),
            view: None,
            upper: None,
            divergence: None,
            millis: 0,
        }
    }
}

/// The first point where two implementations disagree.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Divergence {
    /// 1-based step after which it was seen; 0: at setup; steps+1: in the final upper check.
    pub step: usize,
    /// The step, described.
    pub op: String,
    /// The path that differs.
    pub path: String,
    /// The attribute that differs ("result", "data", "exists", "mode", ...).
    pub field: String,
    /// Value on the first implementation.
    pub a: String,
    /// Value on the second implementation.
    pub b: String,
}

/// Renders one result as text: the summary line, then details unless it passed.
pub fn text(r: &ScenarioResult) -> String {
    let mut s = format!(
        "{:<5} {} [{}] ({} ms)\n",
        r.status.word(),
        r.name,
        r.implementation,
        r.millis
    );
    if r.status == Status::Pass && r.messages.is_empty() {
        return s;
    }
    if let Some(d) = &r.divergence {
        let _ = writeln!(
            s,
            "      first divergence after step {} ({}):\n      path {:?}, {}:\n        {}\n        {}",
            d.step, d.op, d.path, d.field, d.a, d.b
        );
    }
    for m in &r.messages {
        let _ = writeln!(s, "      {m}");
    }
    if let Some(v) = &r.view {
        let _ = writeln!(s, "      the view was:\n{}", indent(v));
    }
    if let Some(v) = &r.upper {
        let _ = writeln!(s, "      the upper was:\n{}", indent(v));
    }
    s
}

fn indent(v: &str) -> String {
    v.lines().map(|l| format!("      {l}\n")).collect()
}

/// The closing line: counts per status.
pub fn summary(rs: &[ScenarioResult]) -> String {
    let c = |st: Status| rs.iter().filter(|r| r.status == st).count();
    format!(
        "harness: {} passed, {} failed, {} skipped ({} errors, {} known bugs)",
        c(Status::Pass),
        c(Status::Fail) + c(Status::Error),
        c(Status::Skip),
        c(Status::Error),
        c(Status::Xfail)
    )
}

/// True when no result failed or errored.
pub fn all_ok(rs: &[ScenarioResult]) -> bool {
    rs.iter()
        .all(|r| matches!(r.status, Status::Pass | Status::Skip | Status::Xfail))
}

/// All results as one JSON document.
pub fn json(rs: &[ScenarioResult]) -> String {
    serde_json::to_string_pretty(rs).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// Applies a scenario's `known_bug` to a unionfs result: an expected failure becomes XFAIL,
/// and a pass becomes a failure that says to drop the line (so a fix is noticed).
pub fn apply_known_bug(r: &mut ScenarioResult, known_bug: &str, imp: &str) {
    if known_bug.is_empty() || !imp.starts_with("unionfs") {
        return;
    }
    match r.status {
        Status::Fail => r.status = Status::Xfail,
        Status::Pass => {
            r.status = Status::Fail;
            r.messages.push(format!(
                "the known bug ({known_bug}) no longer shows: remove the known_bug line"
            ));
        }
        _ => {}
    }
}
