//! The two views of a drift report: human text (status per layer, entries with desired and live
//! values, unified diffs) and the stable JSON document (`schemaVersion: 1`, see docs/drift.md).
//! Both are pure functions of the report.

use std::io::IsTerminal;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::diff::colorize;
use super::model::{exit_code, DriftEntry, DriftReport, DriftStatus, EntryKind, LayerDrift};
use crate::report::format_duration;

/// The version of the JSON document; bumped only for incompatible changes (fields may be added
/// without a bump).
pub const SCHEMA_VERSION: u32 = 1;

const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

/// Whether human output to stdout should be coloured: only on a terminal, and never when
/// `NO_COLOR` is set to anything non-empty (no-color.org).
pub fn use_color() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stdout().is_terminal()
}

/// The human form of a report, ending with a one-line verdict that agrees with the exit code.
pub fn human(report: &DriftReport, color: bool) -> String {
    let paint = |code: &str, text: &str| {
        if color {
            format!("{code}{text}{RESET}")
        } else {
            text.to_string()
        }
    };
    let mut out = String::new();
    out.push_str(&format!(
        "drift of {} at {} (checked {}, {})\n",
        report.env,
        short(&report.commit),
        humantime::format_rfc3339_seconds(report.checked_at),
        format_duration(report.duration)
    ));
    // Layers the env does not have, or left out with --layers, are not shown (JSON keeps them,
    // as `skipped` with the reason).
    for layer in report
        .layers
        .iter()
        .filter(|l| !matches!(l.status, DriftStatus::Skipped(_)))
    {
        out.push('\n');
        out.push_str(&layer_line(layer, &paint));
        for entry in &layer.entries {
            entry_lines(&mut out, entry, color);
        }
        for u in &layer.unhealthy {
            out.push_str(&format!(
                "  {} {}: {}\n",
                paint(YELLOW, "unhealthy"),
                u.resource,
                u.reason
            ));
        }
        for n in &layer.notes {
            out.push_str(&format!("  note {n}\n"));
        }
        for u in &layer.unknown {
            out.push_str(&format!(
                "  ? {} {}: {} not compared (made from a secret not available here)\n",
                paint(DIM, "unknown"),
                u.resource,
                u.fields.join(", ")
            ));
        }
    }
    out.push('\n');
    out.push_str(&verdict(report, &paint));
    out.push('\n');
    out
}

fn layer_line(layer: &LayerDrift, paint: &impl Fn(&str, &str) -> String) -> String {
    let name = layer.layer.as_str();
    let took = format_duration(layer.duration);
    match &layer.status {
        DriftStatus::Error(message) => {
            format!("{name}: {} ({took}): {message}\n", paint(RED, "error"))
        }
        DriftStatus::Skipped(reason) => {
            format!("{name}: {}\n", paint(DIM, &format!("skipped ({reason})")))
        }
        _ if layer.has_drift() => format!(
            "{name}: {} ({took})\n",
            paint(
                RED,
                &format!("drift, {}", count(layer.entries.len(), "resource"))
            )
        ),
        _ => format!("{name}: {} ({took})\n", paint(GREEN, "in sync")),
    }
}

fn entry_lines(out: &mut String, entry: &DriftEntry, color: bool) {
    let symbol = match entry.kind {
        EntryKind::Missing => "+",
        EntryKind::Extra => "-",
        EntryKind::Changed | EntryKind::Version => "~",
        EntryKind::Stopped | EntryKind::NotReady => "!",
        EntryKind::Recreate => "-/+",
    };
    out.push_str(&format!(
        "  {symbol} {} {}",
        entry.kind.as_str(),
        entry.resource
    ));
    if let Some(detail) = &entry.detail {
        out.push_str(&format!(" ({detail})"));
    }
    out.push('\n');
    for f in &entry.fields {
        out.push_str(&format!(
            "      {}: desired {}, live {}\n",
            f.path,
            side(f.desired.as_deref()),
            side(f.live.as_deref())
        ));
    }
    if let Some(unified) = &entry.unified {
        let text = if color {
            colorize(unified)
        } else {
            unified.clone()
        };
        for line in text.lines() {
            out.push_str("      ");
            out.push_str(line);
            out.push('\n');
        }
    }
}

fn side(value: Option<&str>) -> String {
    match value {
        Some(v) => format!("{v:?}"),
        None => "(absent)".to_string(),
    }
}

fn verdict(report: &DriftReport, paint: &impl Fn(&str, &str) -> String) -> String {
    match exit_code(report) {
        1 => {
            let failed: Vec<&str> = report
                .layers
                .iter()
                .filter(|l| l.is_error())
                .map(|l| l.layer.as_str())
                .collect();
            format!(
                "{}: {} could not be checked ({}); drift shown for the other layers is incomplete",
                paint(RED, "error"),
                count(failed.len(), "layer"),
                failed.join(", ")
            )
        }
        2 => {
            let layers: Vec<&str> = report.drifted_layers().iter().map(|l| l.as_str()).collect();
            format!(
                "{}: {} differ from Git in {}",
                paint(RED, "drift"),
                count(report.entry_count(), "resource"),
                layers.join(", ")
            )
        }
        _ => format!(
            "{}: every checked layer matches commit {}",
            paint(GREEN, "in sync"),
            short(&report.commit)
        ),
    }
}

fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

// The document is built from these structs, not `json!`, so the keys keep a readable order
// (serde_json sorts the keys of its own maps in this build).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReportDoc<'a> {
    schema_version: u32,
    env: &'a str,
    commit: &'a str,
    checked_at: String,
    duration_seconds: f64,
    status: &'static str,
    exit_code: i32,
    layers: Vec<LayerDoc<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LayerDoc<'a> {
    layer: &'static str,
    status: &'static str,
    message: Option<&'a str>,
    duration_seconds: f64,
    entries: Vec<EntryDoc<'a>>,
    unhealthy: Vec<UnhealthyDoc<'a>>,
    /// Not drift; absent when empty (schema version 1 unchanged).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<&'a str>,
    unknown: Vec<UnknownDoc<'a>>,
    /// Cloud layer: the newest completed snapshot of each data volume; absent when the env has
    /// no volumes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    backups: Vec<BackupDoc<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BackupDoc<'a> {
    volume: &'a str,
    snapshot_id: Option<&'a str>,
    age_seconds: Option<f64>,
    recovery_point_objective_seconds: Option<f64>,
    /// Older than the objective, or no snapshot at all while there is an objective.
    stale: bool,
}

#[derive(Serialize)]
struct UnknownDoc<'a> {
    resource: &'a str,
    fields: &'a [String],
}

#[derive(Serialize)]
struct EntryDoc<'a> {
    resource: &'a str,
    kind: &'static str,
    detail: Option<&'a str>,
    fields: Vec<FieldDoc<'a>>,
    unified: Option<&'a str>,
}

#[derive(Serialize)]
struct FieldDoc<'a> {
    path: &'a str,
    desired: Option<&'a str>,
    live: Option<&'a str>,
}

#[derive(Serialize)]
struct UnhealthyDoc<'a> {
    resource: &'a str,
    reason: &'a str,
}

fn doc(report: &DriftReport) -> ReportDoc<'_> {
    let code = exit_code(report);
    ReportDoc {
        schema_version: SCHEMA_VERSION,
        env: &report.env,
        commit: &report.commit,
        checked_at: humantime::format_rfc3339_millis(report.checked_at).to_string(),
        duration_seconds: seconds(report.duration),
        status: match code {
            1 => "error",
            2 => "drift",
            _ => "in-sync",
        },
        exit_code: code,
        layers: report.layers.iter().map(layer_doc).collect(),
    }
}

fn layer_doc(layer: &LayerDrift) -> LayerDoc<'_> {
    let message = match &layer.status {
        DriftStatus::Error(m) | DriftStatus::Skipped(m) => Some(m.as_str()),
        _ => None,
    };
    let status = if layer.has_drift() {
        "drift"
    } else {
        layer.status.as_str()
    };
    LayerDoc {
        layer: layer.layer.as_str(),
        status,
        message,
        duration_seconds: seconds(layer.duration),
        entries: layer
            .entries
            .iter()
            .map(|e| EntryDoc {
                resource: &e.resource,
                kind: e.kind.as_str(),
                detail: e.detail.as_deref(),
                fields: e
                    .fields
                    .iter()
                    .map(|f| FieldDoc {
                        path: &f.path,
                        desired: f.desired.as_deref(),
                        live: f.live.as_deref(),
                    })
                    .collect(),
                unified: e.unified.as_deref(),
            })
            .collect(),
        unhealthy: layer
            .unhealthy
            .iter()
            .map(|u| UnhealthyDoc {
                resource: &u.resource,
                reason: &u.reason,
            })
            .collect(),
        notes: layer.notes.iter().map(String::as_str).collect(),
        unknown: layer
            .unknown
            .iter()
            .map(|u| UnknownDoc {
                resource: &u.resource,
                fields: &u.fields,
            })
            .collect(),
        backups: layer
            .backups
            .iter()
            .map(|b| BackupDoc {
                volume: &b.volume,
                snapshot_id: b.snapshot.as_deref(),
                age_seconds: b.age.map(seconds),
                recovery_point_objective_seconds: b.objective.map(seconds),
                stale: match (b.age, b.objective) {
                    (Some(age), Some(rpo)) => age > rpo,
                    (None, Some(_)) => true,
                    _ => false,
                },
            })
            .collect(),
    }
}

/// The JSON document of a report (schema in docs/drift.md).
pub fn json_value(report: &DriftReport) -> Value {
    serde_json::to_value(doc(report)).unwrap_or(Value::Null)
}

/// The JSON document as pretty-printed text with a final newline, keys in schema order.
pub fn json(report: &DriftReport) -> String {
    // Serializing plain structs of strings and numbers cannot fail; the fallback only keeps
    // this function total.
    let mut text = serde_json::to_string_pretty(&doc(report)).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    text
}

/// Seconds with millisecond precision, so the JSON does not carry float noise.
fn seconds(d: Duration) -> f64 {
    d.as_millis() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::drift::model::{FieldDiff, Unhealthy};
    use crate::engine::Layer;

    fn sample() -> DriftReport {
        DriftReport {
            env: "demo".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            checked_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            duration: Duration::from_millis(1250),
            layers: vec![
                LayerDrift::checked(
                    Layer::Cloud,
                    vec![
                        DriftEntry::new(Layer::Cloud, "sg/cluster", EntryKind::Changed).with_fields(
                            vec![FieldDiff::new("ingress", None::<String>, Some("tcp/22 from 0.0.0.0/0"))],
                        ),
                        DriftEntry::new(Layer::Cloud, "instance/agent/1", EntryKind::Stopped)
                            .with_fields(vec![FieldDiff::value("state", "running", "stopped")]),
                    ],
                    vec![],
                    Duration::from_millis(400),
                ),
                LayerDrift::checked(Layer::Cluster, vec![], vec![], Duration::from_millis(90)),
                LayerDrift::checked(
                    Layer::Apps,
                    vec![DriftEntry::new(Layer::Apps, "Deployment/web/api", EntryKind::Changed)
                        .with_fields(vec![FieldDiff::value("spec.replicas", "2", "5")])
                        .with_unified("--- live Deployment/web/api\n+++ git Deployment/web/api\n@@ -1,2 +1,2 @@\n spec:\n-  replicas: 5\n+  replicas: 2\n")],
                    vec![Unhealthy {
                        resource: "Deployment/web/worker".into(),
                        reason: "0/1 replicas available".into(),
                    }],
                    Duration::from_millis(2500),
                ),
                LayerDrift::skipped(Layer::Addons, "not in the environment"),
            ],
        }
    }

    #[test]
    fn human_snapshot_with_drift() {
        let want = r#"drift of demo at 0123456789ab (checked 2023-11-14T22:13:20Z, 1s 250ms)

cloud: drift, 2 resources (400ms)
  ~ changed sg/cluster
      ingress: desired (absent), live "tcp/22 from 0.0.0.0/0"
  ! stopped instance/agent/1
      state: desired "running", live "stopped"

cluster: in sync (90ms)

apps: drift, 1 resource (2s 500ms)
  ~ changed Deployment/web/api
      spec.replicas: desired "2", live "5"
      --- live Deployment/web/api
      +++ git Deployment/web/api
      @@ -1,2 +1,2 @@
       spec:
      -  replicas: 5
      +  replicas: 2
  unhealthy Deployment/web/worker: 0/1 replicas available

drift: 3 resources differ from Git in cloud, apps
"#;
        assert_eq!(human(&sample(), false), want);
    }

    #[test]
    fn human_with_an_error_says_the_result_is_incomplete() {
        let mut r = sample();
        r.layers[1] = LayerDrift::error(
            Layer::Cluster,
            "API server https://10.0.0.1:6443 did not answer within 10s",
            Duration::from_secs(10),
        );
        let text = human(&r, false);
        assert!(text.contains(
            "cluster: error (10s): API server https://10.0.0.1:6443 did not answer within 10s\n"
        ));
        assert!(text.ends_with(
            "error: 1 layer could not be checked (cluster); drift shown for the other layers is incomplete\n"
        ));
    }

    #[test]
    fn human_in_sync() {
        let r = DriftReport {
            layers: vec![LayerDrift::checked(
                Layer::Cloud,
                vec![],
                vec![],
                Duration::from_secs(75),
            )],
            ..sample()
        };
        assert_eq!(
            human(&r, false),
            "drift of demo at 0123456789ab (checked 2023-11-14T22:13:20Z, 1s 250ms)\n\ncloud: in sync (1m 15s)\n\nin sync: every checked layer matches commit 0123456789ab\n"
        );
    }

    #[test]
    fn human_colour_only_when_asked() {
        let plain = human(&sample(), false);
        let coloured = human(&sample(), true);
        assert!(!plain.contains('\x1b'));
        assert!(coloured.contains("\x1b[31m-  replicas: 5\x1b[0m"));
        assert!(coloured.contains("\x1b[32min sync\x1b[0m"));
    }

    #[test]
    fn json_snapshot() {
        let want = r#"{
  "schemaVersion": 1,
  "env": "demo",
  "commit": "0123456789abcdef0123456789abcdef01234567",
  "checkedAt": "2023-11-14T22:13:20.000Z",
  "durationSeconds": 1.25,
  "status": "drift",
  "exitCode": 2,
  "layers": [
    {
      "layer": "cloud",
      "status": "drift",
      "message": null,
      "durationSeconds": 0.4,
      "entries": [
        {
          "resource": "sg/cluster",
          "kind": "changed",
          "detail": null,
          "fields": [
            {
              "path": "ingress",
              "desired": null,
              "live": "tcp/22 from 0.0.0.0/0"
            }
          ],
          "unified": null
        },
        {
          "resource": "instance/agent/1",
          "kind": "stopped",
          "detail": null,
          "fields": [
            {
              "path": "state",
              "desired": "running",
              "live": "stopped"
            }
          ],
          "unified": null
        }
      ],
      "unhealthy": [],
      "unknown": []
    },
    {
      "layer": "cluster",
      "status": "in-sync",
      "message": null,
      "durationSeconds": 0.09,
      "entries": [],
      "unhealthy": [],
      "unknown": []
    },
    {
      "layer": "apps",
      "status": "drift",
      "message": null,
      "durationSeconds": 2.5,
      "entries": [
        {
          "resource": "Deployment/web/api",
          "kind": "changed",
          "detail": null,
          "fields": [
            {
              "path": "spec.replicas",
              "desired": "2",
              "live": "5"
            }
          ],
          "unified": "--- live Deployment/web/api\n+++ git Deployment/web/api\n@@ -1,2 +1,2 @@\n spec:\n-  replicas: 5\n+  replicas: 2\n"
        }
      ],
      "unhealthy": [
        {
          "resource": "Deployment/web/worker",
          "reason": "0/1 replicas available"
        }
      ],
      "unknown": []
    },
    {
      "layer": "addons",
      "status": "skipped",
      "message": "not in the environment",
      "durationSeconds": 0.0,
      "entries": [],
      "unhealthy": [],
      "unknown": []
    }
  ]
}
"#;
        assert_eq!(json(&sample()), want);
    }

    #[test]
    fn json_error_layer_carries_the_message_and_exit_code_one() {
        let r = DriftReport {
            layers: vec![LayerDrift::error(Layer::Apps, "forbidden", Duration::ZERO)],
            ..sample()
        };
        let v = json_value(&r);
        assert_eq!(v["status"], "error");
        assert_eq!(v["exitCode"], 1);
        assert_eq!(v["layers"][0]["status"], "error");
        assert_eq!(v["layers"][0]["message"], "forbidden");
    }

    #[test]
    fn json_carries_each_volumes_backup_age_against_its_objective() {
        let mut r = sample();
        r.layers[0].backups = vec![
            crate::drift::BackupAge {
                volume: "db".into(),
                age: Some(Duration::from_secs(7200)),
                objective: Some(Duration::from_secs(3600)),
                snapshot: Some("snap-1".into()),
            },
            crate::drift::BackupAge {
                volume: "logs".into(),
                age: None,
                objective: None,
                snapshot: None,
            },
        ];
        let v = json_value(&r);
        assert_eq!(
            v["layers"][0]["backups"],
            serde_json::json!([
                { "volume": "db", "snapshotId": "snap-1", "ageSeconds": 7200.0,
                  "recoveryPointObjectiveSeconds": 3600.0, "stale": true },
                { "volume": "logs", "snapshotId": null, "ageSeconds": null,
                  "recoveryPointObjectiveSeconds": null, "stale": false }
            ])
        );
        assert!(
            v["layers"][1].get("backups").is_none(),
            "absent without volumes"
        );
    }
}
