//! The drift metrics text passes `promtool check metrics` (Debian `prometheus`) for reports in
//! sync, with drift, with errors and with odd label values, alone and together, with and
//! without counters; and the checker itself rejects bad text, so a pass means something.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use phoenix::drift::metrics::{render, write_file, CheckCounters};
use phoenix::drift::{DriftEntry, DriftReport, EntryKind, FieldDiff, LayerDrift, Unhealthy};
use phoenix::engine::Layer;

/// `$PROMTOOL`, else `promtool` on PATH. Missing promtool fails the test: a
/// skipped check would pass without checking anything.
fn promtool() -> PathBuf {
    if let Some(p) = std::env::var_os("PROMTOOL") {
        return PathBuf::from(p);
    }
    testkit::tools::require("promtool")
}

/// promtool's verdict: Ok when it exits 0 and prints nothing, else everything it said.
fn check(text: &str) -> Result<(), String> {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("running promtool (install Debian `prometheus` or set PROMTOOL): {e}")
        });
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(text.as_bytes())
        .expect("writing to promtool");
    let out = child.wait_with_output().expect("waiting for promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!(
            "promtool ({}): {said}\n--- text ---\n{text}",
            out.status
        ))
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn in_sync(env: &str) -> DriftReport {
    DriftReport {
        env: env.into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        checked_at: at(1_700_000_000),
        duration: Duration::from_millis(830),
        layers: Layer::ALL
            .iter()
            .map(|&l| LayerDrift::checked(l, vec![], vec![], Duration::from_millis(200)))
            .collect(),
    }
}

fn drifted(env: &str) -> DriftReport {
    let mut r = in_sync(env);
    r.layers[0] = LayerDrift::checked(
        Layer::Cloud,
        vec![
            DriftEntry::new(Layer::Cloud, "sg/cluster", EntryKind::Changed).with_fields(vec![
                FieldDiff::new("ingress", None::<String>, Some("tcp/22 from 0.0.0.0/0")),
            ]),
            DriftEntry::new(Layer::Cloud, "instance/agent/1", EntryKind::Stopped),
        ],
        vec![],
        Duration::from_millis(412),
    );
    r.layers[3] = LayerDrift::checked(
        Layer::Apps,
        vec![DriftEntry::new(
            Layer::Apps,
            "Deployment/web/api",
            EntryKind::Missing,
        )],
        vec![Unhealthy {
            resource: "Deployment/web/worker".into(),
            reason: "0/1 available".into(),
        }],
        Duration::from_secs(3),
    );
    r
}

fn errored(env: &str) -> DriftReport {
    let mut r = drifted(env);
    r.layers[1] = LayerDrift::error(
        Layer::Cluster,
        "API server https://10.0.0.1:6443 did not answer within 10s",
        Duration::from_secs(10),
    );
    r.layers[2] = LayerDrift::skipped(Layer::Addons, "not in the environment");
    r
}

#[test]
fn in_sync_report_passes() {
    let text = render(&[&in_sync("demo")], None);
    assert!(
        text.contains("phoenix_drift{env=\"demo\",layer=\"apps\"} 0\n"),
        "{text}"
    );
    check(&text).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn drift_report_passes() {
    let text = render(&[&drifted("demo")], None);
    assert!(
        text.contains("phoenix_drift_resources{env=\"demo\",layer=\"cloud\"} 2\n"),
        "{text}"
    );
    check(&text).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn error_report_passes_and_has_no_drift_value_for_the_failed_layer() {
    let text = render(&[&errored("demo")], None);
    assert!(text.contains("phoenix_drift_check_error{env=\"demo\",layer=\"cluster\"} 1\n"));
    assert!(!text.contains("phoenix_drift{env=\"demo\",layer=\"cluster\"}"));
    assert!(
        !text.contains("layer=\"addons\""),
        "skipped layers have no series: {text}"
    );
    check(&text).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn odd_label_values_pass() {
    let mut r = drifted("we\"ird\\env\nwith newline and ünïcode");
    r.commit = "quote\" backslash\\ newline\n".into();
    let text = render(&[&r], None);
    check(&text).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn several_reports_with_counters_pass() {
    let reports = [in_sync("a"), drifted("b"), errored("c"), errored("a")];
    let mut counters = CheckCounters::new();
    for r in &reports {
        counters.record(r);
    }
    let refs: Vec<&DriftReport> = reports.iter().collect();
    let text = render(&refs, Some(&counters));
    assert!(
        text.contains("phoenix_drift_checks_total{env=\"a\"} 2\n"),
        "{text}"
    );
    assert!(text.contains("phoenix_drift_check_errors_total{env=\"c\",layer=\"cluster\"} 1\n"));
    check(&text).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn empty_text_passes() {
    check(&render(&[], Some(&CheckCounters::new()))).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn the_written_file_is_what_promtool_checks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("phoenix.prom");
    let text = render(&[&errored("demo"), &drifted("prod")], None);
    write_file(&path, &text).expect("write metrics file");
    let on_disk = std::fs::read_to_string(&path).expect("read metrics file");
    assert_eq!(on_disk, text);
    check(&on_disk).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn promtool_rejects_bad_text() {
    // Negative controls: if these passed, the checks above would prove nothing.
    assert!(check("phoenix_drift{env=\"unterminated} 1\n").is_err());
    assert!(
        check("# HELP x_count a counter without _total\n# TYPE x_count counter\nx_count 1\n")
            .is_err()
    );
}
