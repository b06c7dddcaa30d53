//! Prometheus text exposition of drift reports (node-exporter textfile collector style), and the
//! atomic file write the textfile collector needs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::engine::Layer;

use super::model::{DriftReport, DriftStatus, LayerDrift};

/// Errors writing a metrics file.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics file {path} has no file name (expected a path like /var/lib/node_exporter/phoenix.prom)")]
    NoFileName { path: PathBuf },
    #[error("writing metrics file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Counts that live longer than one report (the watch agent keeps one of these); rendered as
/// Prometheus counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckCounters {
    checks: BTreeMap<String, u64>,
    errors: BTreeMap<(String, Layer), u64>,
}

impl CheckCounters {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one finished check: one more check of its env, one more error for each layer in
    /// error. Layers that were checked get a zero entry so their counter series exists from the
    /// first check (an absent series cannot be `rate()`d after its first increment).
    pub fn record(&mut self, report: &DriftReport) {
        *self.checks.entry(report.env.clone()).or_default() += 1;
        for layer in &report.layers {
            if matches!(layer.status, DriftStatus::Skipped(_)) {
                continue;
            }
            let n = self
                .errors
                .entry((report.env.clone(), layer.layer))
                .or_default();
            if layer.is_error() {
                *n += 1;
            }
        }
    }

    pub fn checks(&self, env: &str) -> u64 {
        self.checks.get(env).copied().unwrap_or(0)
    }

    pub fn errors(&self, env: &str, layer: Layer) -> u64 {
        self.errors
            .get(&(env.to_string(), layer))
            .copied()
            .unwrap_or(0)
    }
}

struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
}

const DRIFT: Family = Family {
    name: "phoenix_drift",
    kind: "gauge",
    help: "Whether the layer differs from Git (1) or not (0); absent while the layer cannot be checked.",
};
const RESOURCES: Family = Family {
    name: "phoenix_drift_resources",
    kind: "gauge",
    help: "Number of drifted resources in the layer.",
};
const UNHEALTHY: Family = Family {
    name: "phoenix_drift_unhealthy_resources",
    kind: "gauge",
    help: "Number of resources that match Git but are not healthy.",
};
const CHECK_ERROR: Family = Family {
    name: "phoenix_drift_check_error",
    kind: "gauge",
    help: "Whether the last check of the layer failed (1) or succeeded (0).",
};
const LAST_CHECK: Family = Family {
    name: "phoenix_drift_last_check_timestamp_seconds",
    kind: "gauge",
    help: "Unix time at which the last check of the layer started.",
};
const DURATION: Family = Family {
    name: "phoenix_drift_check_duration_seconds",
    kind: "gauge",
    help: "Wall time of the last check of the layer.",
};
const COMMIT: Family = Family {
    name: "phoenix_drift_commit_info",
    kind: "gauge",
    help: "The commit the last check compared against (always 1).",
};
const BACKUP_AGE: Family = Family {
    name: "phoenix_backup_age_seconds",
    kind: "gauge",
    help: "Age of the newest completed snapshot of the data volume; absent while it has none.",
};
const ERRORS_TOTAL: Family = Family {
    name: "phoenix_drift_check_errors_total",
    kind: "counter",
    help: "Checks of the layer that failed since the agent started.",
};
const CHECKS_TOTAL: Family = Family {
    name: "phoenix_drift_checks_total",
    kind: "counter",
    help: "Checks of the environment since the agent started.",
};

/// The exposition text of `reports` (one per environment; a later report of the same env
/// replaces an earlier one), plus counters when given. Skipped layers have no series; a layer
/// in error has `phoenix_drift_check_error 1` and no `phoenix_drift` (unknown is not 0).
pub fn render(reports: &[&DriftReport], counters: Option<&CheckCounters>) -> String {
    let mut by_env: BTreeMap<&str, &DriftReport> = BTreeMap::new();
    for r in reports {
        by_env.insert(r.env.as_str(), r);
    }
    let checked = |r: &'_ DriftReport| -> Vec<LayerDrift> {
        r.layers
            .iter()
            .filter(|l| !matches!(l.status, DriftStatus::Skipped(_)))
            .cloned()
            .collect()
    };
    let mut out = String::new();
    let per_layer = |out: &mut String,
                     family: &Family,
                     value: &dyn Fn(&DriftReport, &LayerDrift) -> Option<f64>| {
        let mut lines = String::new();
        for r in by_env.values() {
            for l in checked(r) {
                if let Some(v) = value(r, &l) {
                    sample(
                        &mut lines,
                        family.name,
                        &[("env", &r.env), ("layer", l.layer.as_str())],
                        v,
                    );
                }
            }
        }
        if !lines.is_empty() {
            header(out, family);
            out.push_str(&lines);
        }
    };
    per_layer(&mut out, &DRIFT, &|_, l| {
        (!l.is_error()).then(|| bool_value(l.has_drift()))
    });
    per_layer(&mut out, &RESOURCES, &|_, l| {
        (!l.is_error()).then_some(l.entries.len() as f64)
    });
    per_layer(&mut out, &UNHEALTHY, &|_, l| {
        (!l.is_error()).then_some(l.unhealthy.len() as f64)
    });
    per_layer(&mut out, &CHECK_ERROR, &|_, l| {
        Some(bool_value(l.is_error()))
    });
    per_layer(&mut out, &LAST_CHECK, &|r, _| {
        Some(unix_seconds(r.checked_at))
    });
    per_layer(&mut out, &DURATION, &|_, l| Some(l.duration.as_secs_f64()));
    let mut ages = String::new();
    for r in by_env.values() {
        for l in checked(r) {
            for b in &l.backups {
                if let Some(age) = b.age {
                    sample(
                        &mut ages,
                        BACKUP_AGE.name,
                        &[("env", &r.env), ("volume", &b.volume)],
                        age.as_secs_f64(),
                    );
                }
            }
        }
    }
    if !ages.is_empty() {
        header(&mut out, &BACKUP_AGE);
        out.push_str(&ages);
    }
    if !by_env.is_empty() {
        header(&mut out, &COMMIT);
        for r in by_env.values() {
            sample(
                &mut out,
                COMMIT.name,
                &[("env", &r.env), ("commit", &r.commit)],
                1.0,
            );
        }
    }
    if let Some(c) = counters {
        if !c.errors.is_empty() {
            header(&mut out, &ERRORS_TOTAL);
            for ((env, layer), n) in &c.errors {
                sample(
                    &mut out,
                    ERRORS_TOTAL.name,
                    &[("env", env), ("layer", layer.as_str())],
                    *n as f64,
                );
            }
        }
        if !c.checks.is_empty() {
            header(&mut out, &CHECKS_TOTAL);
            for (env, n) in &c.checks {
                sample(&mut out, CHECKS_TOTAL.name, &[("env", env)], *n as f64);
            }
        }
    }
    out
}

fn header(out: &mut String, family: &Family) {
    let _ = writeln!(out, "# HELP {} {}", family.name, escape_help(family.help));
    let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind);
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    out.push('{');
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"{}\"", escape_label(v));
    }
    out.push_str("} ");
    out.push_str(&format_value(value));
    out.push('\n');
}

/// Label values escape backslash, double quote and line feed (the text format's only escapes).
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

fn bool_value(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    // A clock before 1970 is a misconfigured host; 0 keeps the text valid.
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as f64 / 1000.0)
        .unwrap_or(0.0)
}

/// Writes `text` to `path` atomically: a temporary file in the same directory (named so the
/// textfile collector, which reads only `*.prom`, ignores it), flushed to disk, then renamed
/// over `path`. A reader sees the old file or the new one, never half of one.
pub fn write_file(path: &Path, text: &str) -> Result<(), MetricsError> {
    let err = |source| MetricsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .ok_or_else(|| MetricsError::NoFileName {
            path: path.to_path_buf(),
        })?
        .to_string_lossy()
        .into_owned();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::drift::model::{DriftEntry, EntryKind};

    fn report(env: &str, layers: Vec<LayerDrift>) -> DriftReport {
        DriftReport {
            env: env.into(),
            commit: "abc123".into(),
            checked_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_500),
            duration: Duration::from_millis(700),
            layers,
        }
    }

    #[test]
    fn backup_age_per_volume_and_none_without_a_snapshot() {
        let mut cloud = LayerDrift::checked(Layer::Cloud, vec![], vec![], Duration::ZERO);
        cloud.backups = vec![
            crate::drift::BackupAge {
                volume: "db".into(),
                age: Some(Duration::from_millis(90_500)),
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
        let text = render(&[&report("demo", vec![cloud])], None);
        assert!(
            text.contains("# TYPE phoenix_backup_age_seconds gauge\nphoenix_backup_age_seconds{env=\"demo\",volume=\"db\"} 90.5\n"),
            "{text}"
        );
        assert!(
            !text.contains("volume=\"logs\""),
            "no snapshot, no sample: {text}"
        );
    }

    #[test]
    fn snapshot_of_one_report() {
        let r = report(
            "demo",
            vec![
                LayerDrift::checked(
                    Layer::Cloud,
                    vec![
                        DriftEntry::new(Layer::Cloud, "sg/a", EntryKind::Changed),
                        DriftEntry::new(Layer::Cloud, "vpc", EntryKind::Missing),
                    ],
                    vec![],
                    Duration::from_millis(250),
                ),
                LayerDrift::error(Layer::Cluster, "unreachable", Duration::from_secs(2)),
                LayerDrift::skipped(Layer::Apps, "--layers"),
            ],
        );
        let want = "\
# HELP phoenix_drift Whether the layer differs from Git (1) or not (0); absent while the layer cannot be checked.
# TYPE phoenix_drift gauge
phoenix_drift{env=\"demo\",layer=\"cloud\"} 1
# HELP phoenix_drift_resources Number of drifted resources in the layer.
# TYPE phoenix_drift_resources gauge
phoenix_drift_resources{env=\"demo\",layer=\"cloud\"} 2
# HELP phoenix_drift_unhealthy_resources Number of resources that match Git but are not healthy.
# TYPE phoenix_drift_unhealthy_resources gauge
phoenix_drift_unhealthy_resources{env=\"demo\",layer=\"cloud\"} 0
# HELP phoenix_drift_check_error Whether the last check of the layer failed (1) or succeeded (0).
# TYPE phoenix_drift_check_error gauge
phoenix_drift_check_error{env=\"demo\",layer=\"cloud\"} 0
phoenix_drift_check_error{env=\"demo\",layer=\"cluster\"} 1
# HELP phoenix_drift_last_check_timestamp_seconds Unix time at which the last check of the layer started.
# TYPE phoenix_drift_last_check_timestamp_seconds gauge
phoenix_drift_last_check_timestamp_seconds{env=\"demo\",layer=\"cloud\"} 1700000000.5
phoenix_drift_last_check_timestamp_seconds{env=\"demo\",layer=\"cluster\"} 1700000000.5
# HELP phoenix_drift_check_duration_seconds Wall time of the last check of the layer.
# TYPE phoenix_drift_check_duration_seconds gauge
phoenix_drift_check_duration_seconds{env=\"demo\",layer=\"cloud\"} 0.25
phoenix_drift_check_duration_seconds{env=\"demo\",layer=\"cluster\"} 2
# HELP phoenix_drift_commit_info The commit the last check compared against (always 1).
# TYPE phoenix_drift_commit_info gauge
phoenix_drift_commit_info{env=\"demo\",commit=\"abc123\"} 1
";
        assert_eq!(render(&[&r], None), want);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let r = report(
            "we\"ird\\env\n",
            vec![LayerDrift::checked(
                Layer::Cloud,
                vec![],
                vec![],
                Duration::ZERO,
            )],
        );
        let text = render(&[&r], None);
        assert!(
            text.contains("phoenix_drift{env=\"we\\\"ird\\\\env\\n\",layer=\"cloud\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn a_later_report_of_the_same_env_replaces_the_earlier_one() {
        let a = report(
            "demo",
            vec![LayerDrift::checked(
                Layer::Cloud,
                vec![],
                vec![],
                Duration::ZERO,
            )],
        );
        let mut b = a.clone();
        b.layers[0] = LayerDrift::error(Layer::Cloud, "x", Duration::ZERO);
        let text = render(&[&a, &b], None);
        assert_eq!(text.matches("phoenix_drift_check_error{").count(), 1);
        assert!(text.contains("phoenix_drift_check_error{env=\"demo\",layer=\"cloud\"} 1\n"));
    }

    #[test]
    fn counters_accumulate_errors_per_layer() {
        let ok = report(
            "demo",
            vec![LayerDrift::checked(
                Layer::Apps,
                vec![],
                vec![],
                Duration::ZERO,
            )],
        );
        let bad = report(
            "demo",
            vec![LayerDrift::error(Layer::Apps, "x", Duration::ZERO)],
        );
        let mut c = CheckCounters::new();
        c.record(&ok);
        assert_eq!(c.errors("demo", Layer::Apps), 0);
        c.record(&bad);
        c.record(&bad);
        assert_eq!(c.errors("demo", Layer::Apps), 2);
        assert_eq!(c.checks("demo"), 3);
        let text = render(&[&ok], Some(&c));
        assert!(text.contains("# TYPE phoenix_drift_check_errors_total counter\nphoenix_drift_check_errors_total{env=\"demo\",layer=\"apps\"} 2\n"));
        assert!(text.contains("phoenix_drift_checks_total{env=\"demo\"} 3\n"));
    }

    #[test]
    fn nothing_to_report_is_empty_text() {
        assert_eq!(render(&[], None), "");
    }

    #[test]
    fn write_file_replaces_atomically_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("phoenix.prom");
        write_file(&path, "a 1\n").expect("first write");
        write_file(&path, "a 2\n").expect("second write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "a 2\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("phoenix.prom")]);
    }

    #[test]
    fn write_file_into_a_missing_directory_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nope").join("phoenix.prom");
        let err = write_file(&path, "a 1\n").expect_err("must fail");
        assert!(err.to_string().contains("phoenix.prom"));
    }
}
