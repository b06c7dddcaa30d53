//! The drill report: one typed document, written as JSON (the report file, `last.json`, the
//! last line of `drill --output json`), rendered to Markdown, and read back by `phoenix runbook`.

use crate::engine::{Layer, RunSummary};
use crate::report::events::seconds;
use crate::report::format_duration as took;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt::Write as _;
use std::time::Duration;

/// The version of the drill report (docs/json.md): the JSON file next to the Markdown one,
/// `last.json` (read back by `phoenix runbook`), and the last line of `drill --output json`.
pub const DRILL_SCHEMA_VERSION: u32 = 1;

/// The `type` of the drill report: on stdout it follows the run events, told apart by `type`.
pub const DRILL_REPORT_TYPE: &str = "drillReport";

/// The drill report for machines. Durations in seconds with millisecond precision. Fields may
/// be added within a version: a reader ignores those it does not know.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillReport {
    pub schema_version: u32,
    /// [`DRILL_REPORT_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    pub env: String,
    /// The isolated copy's effective name (`ENV-drill-XXXXXX`).
    pub copy: String,
    /// The AWS region the copy was built in (the failover region with `drill --failover`).
    #[serde(default)]
    pub region: Option<String>,
    /// The commit object of docs/json.md (`sha`, `shortSha`, `summary`, ...).
    pub commit: Value,
    /// RFC 3339, UTC, seconds.
    pub started_at: String,
    pub verdict: DrillVerdict,
    #[serde(with = "seconds::option", default)]
    pub recovery_objective_seconds: Option<Duration>,
    /// Rebuild plus verification: what the objective is judged against.
    #[serde(with = "seconds")]
    pub recovery_seconds: Duration,
    #[serde(with = "seconds")]
    pub rebuild_seconds: Duration,
    #[serde(with = "seconds")]
    pub verify_seconds: Duration,
    /// The DNS cutover's part of the rebuild (the copy's records, under its own names); `null`
    /// when the env declares no records or the step did not run.
    #[serde(with = "seconds::option", default)]
    pub dns_seconds: Option<Duration>,
    /// `null` with `--keep`.
    #[serde(with = "seconds::option", default)]
    pub teardown_seconds: Option<Duration>,
    pub kept: bool,
    /// The copy's rebuild (the run summary of the run report), `null` if it could not start.
    #[serde(default)]
    pub rebuild: Option<RunSummary>,
    /// The drift report of the copy right after the rebuild, `null` if it was not converged.
    #[serde(default)]
    pub verify: Option<Value>,
    /// The teardown's run summary, `null` with `--keep` or if it could not start.
    #[serde(default)]
    pub teardown: Option<RunSummary>,
    pub failures: Vec<String>,
    /// The copy's data volumes: what each was restored from, how long it took, and its recovery
    /// point (how much data a disaster at the time of the drill would have lost).
    #[serde(default)]
    pub volumes: Vec<VolumeRestore>,
    /// The objectives a converged drill missed (exit 3), one sentence each.
    #[serde(default)]
    pub missed_objectives: Vec<String>,
}

/// One data volume of a drill's copy.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRestore {
    pub volume: String,
    /// The snapshot of the env it was restored from; `null` if created empty or not created.
    pub snapshot_id: Option<String>,
    /// RFC 3339 UTC: when that snapshot was taken.
    pub snapshot_time: Option<String>,
    /// The volume node's time in the copy's rebuild (create from snapshot and attach).
    #[serde(with = "seconds::option", default)]
    pub restore_seconds: Option<Duration>,
    /// The recovery point: the time of the drill's restore minus the snapshot's time.
    #[serde(with = "seconds::option", default)]
    pub recovery_point_seconds: Option<Duration>,
    /// `backup.recoveryPointObjective`.
    #[serde(with = "seconds::option", default)]
    pub recovery_point_objective_seconds: Option<Duration>,
}

/// How a drill ended: exit 0, 3 and 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DrillVerdict {
    Passed,
    OverObjective,
    Failed,
}

impl DrillVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            DrillVerdict::Passed => "passed",
            DrillVerdict::OverObjective => "over-objective",
            DrillVerdict::Failed => "failed",
        }
    }
}

impl DrillReport {
    /// The commit's short SHA, as the commit object carries it.
    pub fn short_sha(&self) -> Option<&str> {
        self.commit["shortSha"].as_str()
    }

    /// The report for people: verdict, timings, layers, components, critical path, failures.
    pub fn markdown(&self) -> String {
        let doc = self;
        let mut md = String::new();
        let _ = writeln!(md, "# Recovery drill of {}\n", doc.env);
        let _ = writeln!(
            md,
            "- **Verdict: {}** — recovery took {} against an objective of {}",
            match doc.verdict {
                DrillVerdict::Passed => "passed",
                DrillVerdict::OverObjective => "converged, over the recovery objective",
                DrillVerdict::Failed => "failed",
            },
            took(doc.recovery_seconds),
            doc.recovery_objective_seconds
                .map(took)
                .unwrap_or_else(|| "none (set spec.recoveryObjective)".to_string())
        );
        if let Some(region) = &doc.region {
            let _ = writeln!(md, "- Region: {region}");
        }
        let _ = writeln!(
            md,
            "- Commit: `{}` {}",
            doc.commit["sha"].as_str().unwrap_or("?"),
            doc.commit["summary"].as_str().unwrap_or("")
        );
        let _ = writeln!(md, "- Copy: `{}` (started {})", doc.copy, doc.started_at);
        if let Some(dns) = doc.dns_seconds {
            let _ = writeln!(
                md,
                "- DNS cutover {} of the rebuild (the copy's own records; the live names were not touched)",
                took(dns)
            );
        }
        let _ = writeln!(
            md,
            "- Rebuild {}, verify {}, teardown {}\n",
            took(doc.rebuild_seconds),
            took(doc.verify_seconds),
            match doc.teardown_seconds {
                _ if doc.kept => "skipped (--keep: the copy is still running)".to_string(),
                Some(t) => took(t),
                None => "-".to_string(),
            }
        );
        if let Some(rebuild) = &doc.rebuild {
            md.push_str("## Layers\n\n| layer | status | time | nodes |\n|---|---|---|---|\n");
            for l in &rebuild.layers {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} |",
                    l.layer,
                    l.status,
                    took(l.duration),
                    l.nodes
                );
            }
            md.push('\n');
            let comps: Vec<_> = rebuild
                .nodes
                .iter()
                .filter(|n| {
                    matches!(n.layer, Layer::Addons | Layer::Apps) && !n.id.ends_with("/.removed")
                })
                .collect();
            if !comps.is_empty() {
                md.push_str("## Components\n\n| component | result | time |\n|---|---|---|\n");
                for n in comps {
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} |",
                        n.id,
                        n.state.label(),
                        n.duration.map(took).unwrap_or_else(|| "-".into())
                    );
                }
                md.push('\n');
            }
            if !rebuild.critical_path.is_empty() {
                let steps: Vec<String> = rebuild
                    .critical_path
                    .iter()
                    .map(|s| format!("{} ({})", s.id, took(s.duration)))
                    .collect();
                let _ = writeln!(md, "## Critical path\n\n{}\n", steps.join(" → "));
            }
        }
        if let Some(v) = doc.verify.as_ref().and_then(Value::as_object) {
            let layers = v.get("layers").and_then(Value::as_array);
            let summary: Vec<String> = layers
                .into_iter()
                .flatten()
                .map(|l| {
                    format!(
                        "{} {}",
                        l["layer"].as_str().unwrap_or("?"),
                        l["status"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            let _ = writeln!(md, "## Verification\n\n{}\n", summary.join(", "));
        }
        if !doc.volumes.is_empty() {
            md.push_str("## Data volumes\n\n| volume | restored from | restore time | recovery point | objective |\n|---|---|---|---|---|\n");
            for v in &doc.volumes {
                let dash = || "-".to_string();
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} |",
                    v.volume,
                    match (&v.snapshot_id, &v.snapshot_time) {
                        (Some(id), Some(t)) => format!("{id} ({t})"),
                        (Some(id), None) => id.clone(),
                        _ => "empty (no snapshot)".to_string(),
                    },
                    v.restore_seconds.map(took).unwrap_or_else(dash),
                    v.recovery_point_seconds.map(took).unwrap_or_else(dash),
                    v.recovery_point_objective_seconds
                        .map(took)
                        .unwrap_or_else(dash),
                );
            }
            md.push('\n');
        }
        if !doc.missed_objectives.is_empty() {
            md.push_str("## Objectives missed\n\n");
            for why in &doc.missed_objectives {
                let _ = writeln!(md, "- {why}");
            }
            md.push('\n');
        }
        if !doc.failures.is_empty() {
            md.push_str("## What failed\n\n");
            for why in &doc.failures {
                let _ = writeln!(md, "- {why}");
            }
            md.push('\n');
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> DrillReport {
        DrillReport {
            region: Some("us-east-1".into()),
            schema_version: DRILL_SCHEMA_VERSION,
            kind: DRILL_REPORT_TYPE.into(),
            env: "demo".into(),
            copy: "demo-drill-abcdef".into(),
            commit: serde_json::json!({ "sha": "0123456789abcdef", "shortSha": "0123456", "summary": "s" }),
            started_at: "2026-11-02T10:00:00Z".into(),
            verdict: DrillVerdict::OverObjective,
            recovery_objective_seconds: Some(Duration::from_secs(600)),
            recovery_seconds: Duration::from_millis(700_500),
            rebuild_seconds: Duration::from_secs(690),
            verify_seconds: Duration::from_millis(10_500),
            dns_seconds: Some(Duration::from_millis(1_500)),
            teardown_seconds: None,
            kept: true,
            rebuild: None,
            verify: None,
            teardown: None,
            failures: vec![],
            volumes: vec![],
            missed_objectives: vec![],
        }
    }

    #[test]
    fn the_json_reads_back_as_the_same_report() {
        let text = serde_json::to_string(&report()).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "drillReport");
        assert_eq!(v["verdict"], "over-objective");
        assert_eq!(v["recoverySeconds"], 700.5);
        assert_eq!(v["teardownSeconds"], Value::Null);
        assert_eq!(v["dnsSeconds"], 1.5);
        let back: DrillReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back.verdict, DrillVerdict::OverObjective);
        assert_eq!(back.recovery_seconds, Duration::from_millis(700_500));
        assert_eq!(back.short_sha(), Some("0123456"));
        assert_eq!(serde_json::to_string(&back).unwrap(), text);
    }

    #[test]
    fn the_markdown_uses_the_one_duration_form() {
        let md = report().markdown();
        assert!(
            md.contains("- **Verdict: converged, over the recovery objective** — recovery took 11m 40s against an objective of 10m"),
            "{md}"
        );
        assert!(
            md.contains("- Rebuild 11m 30s, verify 10s 500ms, teardown skipped (--keep"),
            "{md}"
        );
        assert!(md.contains("- DNS cutover 1s 500ms of the rebuild"), "{md}");
    }
}
