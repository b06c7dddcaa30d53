//! The audit trail: one JSON record per run at
//! `$PHOENIX_HOME/runs/<env>/<UTC timestamp>-<run_id>.json`, readable only by its owner.
//!
//! The record is camelCase with durations in seconds (`durationSeconds`), as every JSON document
//! of docs/json.md; `history --output json` prints the records as stored. Records written by
//! older versions (record version 1: snake_case keys, `duration_ms` in milliseconds) are
//! migrated when read ([`migrate`]), so the audit trail stays readable across upgrades.
//!
//! A provisional record with outcome "running" is written when the run starts and rewritten as
//! layers finish and when the run ends, so a run killed outright leaves a trace: [`list_runs`]
//! shows a record still "running" whose process is gone as "interrupted".

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::events::{hostname, seconds, Event, EventStream};
use crate::engine::{Layer, LayerStatus, NodeState};

/// Version of the record format, bumped on incompatible changes: 1 was snake_case with
/// milliseconds; 2 is camelCase with seconds. Older versions are migrated on read.
pub const RECORD_VERSION: u32 = 2;

/// How a run ended, as far as the audit trail knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// Still running (or killed: see `Interrupted`).
    Running,
    Converged,
    Failed,
    Cancelled,
    /// Never finished: the record says "running" but its process is gone. Only ever computed
    /// when reading; never written.
    Interrupted,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Running => "running",
            RunOutcome::Converged => "converged",
            RunOutcome::Failed => "failed",
            RunOutcome::Cancelled => "cancelled",
            RunOutcome::Interrupted => "interrupted",
        }
    }
}

impl std::fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One layer in an audit record; `status` is `None` until the layer finished.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerRecord {
    pub layer: Layer,
    pub status: Option<LayerStatus>,
    #[serde(rename = "durationSeconds", with = "seconds::millis_option")]
    pub duration_ms: Option<u64>,
}

/// One node in an audit record; `result` is `None` until the node finished.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    pub id: String,
    pub layer: Layer,
    pub started: bool,
    pub result: Option<NodeState>,
    #[serde(rename = "durationSeconds", with = "seconds::millis_option")]
    pub duration_ms: Option<u64>,
    pub attempts: u32,
    /// What the node did that must be accounted for (e.g. a DNS record taken over).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit: Vec<String>,
}

/// The audit record of one run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// The format the record was written in ([`RECORD_VERSION`]; 1 for a migrated old record).
    #[serde(rename = "recordVersion")]
    pub version: u32,
    pub run_id: String,
    pub env: String,
    pub command: String,
    pub commit: String,
    pub git_ref: Option<String>,
    pub actor: String,
    pub host: Option<String>,
    /// The AWS region the run's cloud layer used (absent in records written before it was kept).
    #[serde(default)]
    pub region: Option<String>,
    pub pid: u32,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub finished_at: Option<String>,
    #[serde(rename = "durationSeconds", with = "seconds::millis_option")]
    pub duration_ms: Option<u64>,
    pub outcome: RunOutcome,
    pub error: Option<String>,
    /// Set if Ctrl-C (or the run timeout) stopped the run: why, and what was in flight then.
    pub cancel_reason: Option<String>,
    pub in_flight_at_cancel: Vec<String>,
    pub layers: Vec<LayerRecord>,
    pub nodes: Vec<NodeRecord>,
    /// Where the record was read from (not stored in the file).
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

/// A problem writing or reading the audit trail.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("`{0}` cannot be used in an audit record path")]
    InvalidName(String),
    #[error("cannot create audit directory {}", .path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write audit record {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode audit record {}", .path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot read audit directory {}", .path.display())]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read audit record {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse audit record {}", .path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("audit record {}: {why}", .path.display())]
    Format { path: PathBuf, why: String },
}

/// `$PHOENIX_HOME/runs/<env>`.
pub fn runs_dir(home: &Path, env: &str) -> PathBuf {
    home.join("runs").join(env)
}

/// A single path component: no separators, not `.`/`..`, not hidden.
fn check_name(name: &str) -> Result<(), AuditError> {
    let bad = name.is_empty()
        || name.starts_with('.')
        || name
            .chars()
            .any(|c| matches!(c, '/' | '\\' | '\0') || c.is_control());
    if bad {
        Err(AuditError::InvalidName(name.to_string()))
    } else {
        Ok(())
    }
}

/// Reads `stream` to its end and keeps an audit record of every run in it under `home`.
/// Returns the records written. A failed write does not stop the reader (a later rewrite may
/// succeed); the first error is returned at the end.
pub async fn record(mut stream: EventStream, home: PathBuf) -> Result<Vec<PathBuf>, AuditError> {
    let mut current: Option<(AuditRecord, PathBuf)> = None;
    let mut written = Vec::new();
    let mut first_error: Option<AuditError> = None;
    while let Some(envelope) = stream.next().await {
        let mut write_now = false;
        match &envelope.event {
            Event::RunStarted {
                run_id,
                env,
                commit,
                git_ref,
                command,
                actor,
                host,
                region,
                pid,
                layers,
                nodes,
            } => {
                let record = AuditRecord {
                    version: RECORD_VERSION,
                    run_id: run_id.clone(),
                    env: env.clone(),
                    command: command.clone(),
                    commit: commit.clone(),
                    git_ref: git_ref.clone(),
                    actor: actor.clone(),
                    host: host.clone(),
                    region: region.clone(),
                    pid: *pid,
                    started_at: envelope.ts.clone(),
                    finished_at: None,
                    duration_ms: None,
                    outcome: RunOutcome::Running,
                    error: None,
                    cancel_reason: None,
                    in_flight_at_cancel: Vec::new(),
                    layers: Layer::ALL
                        .into_iter()
                        .map(|layer| LayerRecord {
                            layer,
                            status: (!layers.contains(&layer)).then_some(LayerStatus::Excluded),
                            duration_ms: None,
                        })
                        .collect(),
                    nodes: nodes
                        .iter()
                        .map(|n| NodeRecord {
                            id: n.id.clone(),
                            layer: n.layer,
                            started: false,
                            result: None,
                            duration_ms: None,
                            attempts: 0,
                            audit: Vec::new(),
                        })
                        .collect(),
                    path: None,
                };
                match record_path(&home, &record) {
                    Ok(path) => {
                        current = Some((record, path));
                        write_now = true;
                    }
                    Err(err) => {
                        first_error.get_or_insert(err);
                        current = None;
                    }
                }
            }
            Event::NodeStarted { id, .. } => {
                if let Some(node) = node_mut(&mut current, id) {
                    node.started = true;
                }
            }
            Event::NodeAudit { id, message } => {
                if let Some(node) = node_mut(&mut current, id) {
                    node.audit.push(message.clone());
                    write_now = true;
                }
            }
            Event::NodeFinished {
                id,
                result,
                duration_ms,
                attempts,
                ..
            } => {
                if let Some(node) = node_mut(&mut current, id) {
                    node.result = Some(result.clone());
                    node.duration_ms = Some(*duration_ms);
                    node.attempts = *attempts;
                }
            }
            Event::LayerFinished {
                layer,
                status,
                duration_ms,
            } => {
                if let Some((record, _)) = &mut current {
                    if let Some(l) = record.layers.iter_mut().find(|l| l.layer == *layer) {
                        l.status = Some(*status);
                        l.duration_ms = Some(*duration_ms);
                    }
                    write_now = *status != LayerStatus::Excluded;
                }
            }
            Event::CancelRequested { reason, in_flight } => {
                if let Some((record, _)) = &mut current {
                    record.cancel_reason = Some(reason.clone());
                    record.in_flight_at_cancel = in_flight.clone();
                    write_now = true;
                }
            }
            Event::RunFinished {
                converged,
                cancelled,
                duration_ms,
                error,
                ..
            } => {
                if let Some((record, _)) = &mut current {
                    record.outcome = if *converged {
                        RunOutcome::Converged
                    } else if *cancelled {
                        RunOutcome::Cancelled
                    } else {
                        RunOutcome::Failed
                    };
                    record.finished_at = Some(envelope.ts.clone());
                    record.duration_ms = Some(*duration_ms);
                    record.error = error.clone();
                    write_now = true;
                }
            }
            Event::LayerStarted { .. } | Event::NodeProgress { .. } | Event::NodeRetry { .. } => {}
        }
        if write_now {
            if let Some((record, path)) = &current {
                match write_record(path, record) {
                    Ok(()) => {
                        if !written.contains(path) {
                            written.push(path.clone());
                        }
                    }
                    Err(err) => {
                        first_error.get_or_insert(err);
                    }
                }
            }
        }
    }
    match first_error {
        Some(err) => Err(err),
        None => Ok(written),
    }
}

fn node_mut<'a>(
    current: &'a mut Option<(AuditRecord, PathBuf)>,
    id: &str,
) -> Option<&'a mut NodeRecord> {
    current
        .as_mut()
        .and_then(|(record, _)| record.nodes.iter_mut().find(|n| n.id == id))
}

/// `<runs dir>/<YYYYMMDDTHHMMSSZ>-<run_id>.json`, from the record's start time.
fn record_path(home: &Path, record: &AuditRecord) -> Result<PathBuf, AuditError> {
    check_name(&record.env)?;
    check_name(&record.run_id)?;
    let stamp: String = record
        .started_at
        .chars()
        .take(19)
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    Ok(runs_dir(home, &record.env).join(format!("{stamp}Z-{}.json", record.run_id)))
}

/// Writes the record to a temporary file (mode 0600) in the same directory, syncs it and renames
/// it over `path`, so a reader never sees a half-written record.
fn write_record(path: &Path, record: &AuditRecord) -> Result<(), AuditError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|source| AuditError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    let mut bytes = serde_json::to_vec_pretty(record).map_err(|source| AuditError::Encode {
        path: path.to_path_buf(),
        source,
    })?;
    bytes.push(b'\n');
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        // `mode` applies only to new files; a stale temporary file keeps its old mode otherwise.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        AuditError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// The records of an environment and the files that could not be read.
#[derive(Debug, Default)]
pub struct RunListing {
    /// Newest first.
    pub records: Vec<AuditRecord>,
    pub problems: Vec<AuditError>,
}

/// Reads every record of `env`, newest first, with unreadable files listed as problems.
/// A missing directory is an empty history.
pub fn scan_runs(home: &Path, env: &str) -> Result<RunListing, AuditError> {
    check_name(env)?;
    let dir = runs_dir(home, env);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(RunListing::default()),
        Err(source) => return Err(AuditError::ReadDir { path: dir, source }),
    };
    let mut listing = RunListing::default();
    let mut paths = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => paths.push(entry.path()),
            Err(source) => listing.problems.push(AuditError::ReadDir {
                path: dir.clone(),
                source,
            }),
        }
    }
    let local_host = hostname();
    for path in paths {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        match read_record(&path) {
            Ok(mut record) => {
                if record.outcome == RunOutcome::Running
                    && !process_may_be_alive(record.pid, record.host.as_deref(), &local_host)
                {
                    record.outcome = RunOutcome::Interrupted;
                }
                record.path = Some(path);
                listing.records.push(record);
            }
            Err(err) => listing.problems.push(err),
        }
    }
    listing.records.sort_by(|a, b| {
        b.started_at
            .cmp(&a.started_at)
            .then_with(|| b.path.cmp(&a.path))
    });
    Ok(listing)
}

/// The records of `env`, newest first. Unreadable files are reported on stderr and skipped;
/// use [`scan_runs`] to handle them yourself.
pub fn list_runs(home: &Path, env: &str) -> Result<Vec<AuditRecord>, AuditError> {
    let listing = scan_runs(home, env)?;
    for problem in &listing.problems {
        let mut message = format!("warning: skipping {problem}");
        let mut cause = std::error::Error::source(problem);
        while let Some(err) = cause {
            message.push_str(&format!(": {err}"));
            cause = err.source();
        }
        eprintln!("{message}");
    }
    Ok(listing.records)
}

fn read_record(path: &Path) -> Result<AuditRecord, AuditError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuditError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let parse = |source| AuditError::Parse {
        path: path.to_path_buf(),
        source,
    };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(parse)?;
    let value = migrate(value).map_err(|why| AuditError::Format {
        path: path.to_path_buf(),
        why,
    })?;
    serde_json::from_value(value).map_err(parse)
}

/// Brings a record of any known version to the current format ([`RECORD_VERSION`]), keeping the
/// version it was written in. A record from a newer phoenix is refused rather than misread.
pub fn migrate(mut value: serde_json::Value) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    let Some(map) = value.as_object_mut() else {
        return Err("not a JSON object".into());
    };
    let version = match (map.get("recordVersion"), map.get("version")) {
        (Some(v), _) | (None, Some(v)) => v.as_u64().ok_or_else(|| {
            format!("field recordVersion (version in format 1) must be a whole number, got {v}")
        })?,
        (None, None) => return Err("field recordVersion is missing".into()),
    };
    match version {
        1 => {}
        v if v == u64::from(RECORD_VERSION) => return Ok(value),
        v if v > u64::from(RECORD_VERSION) => {
            return Err(format!(
                "field recordVersion is {v}: written by a newer phoenix (this one reads versions 1 to {RECORD_VERSION})"
            ))
        }
        v => {
            return Err(format!(
                "field recordVersion is {v}: no phoenix wrote this version (known: 1 to {RECORD_VERSION})"
            ))
        }
    }
    // Version 1: snake_case keys, durations in whole milliseconds, the version in `version`.
    fn rename(map: &mut serde_json::Map<String, Value>, from: &str, to: &str) {
        if let Some(v) = map.remove(from) {
            map.insert(to.to_string(), v);
        }
    }
    fn ms_to_seconds(map: &mut serde_json::Map<String, Value>) {
        if let Some(v) = map.remove("duration_ms") {
            let seconds = match v.as_u64() {
                Some(ms) => Value::from(ms as f64 / 1000.0),
                None => v,
            };
            map.insert("durationSeconds".into(), seconds);
        }
    }
    rename(map, "version", "recordVersion");
    for (from, to) in [
        ("run_id", "runId"),
        ("git_ref", "gitRef"),
        ("started_at", "startedAt"),
        ("finished_at", "finishedAt"),
        ("cancel_reason", "cancelReason"),
        ("in_flight_at_cancel", "inFlightAtCancel"),
    ] {
        rename(map, from, to);
    }
    ms_to_seconds(map);
    if let Some(Value::Array(layers)) = map.get_mut("layers") {
        for layer in layers.iter_mut().filter_map(Value::as_object_mut) {
            ms_to_seconds(layer);
        }
    }
    if let Some(Value::Array(nodes)) = map.get_mut("nodes") {
        for node in nodes.iter_mut().filter_map(Value::as_object_mut) {
            ms_to_seconds(node);
            if let Some(Value::Object(result)) = node.get_mut("result") {
                rename(result, "timed_out", "timedOut");
            }
        }
    }
    Ok(value)
}

/// Whether the process that wrote a "running" record may still be running. A record from
/// another host, or a platform where we cannot tell, counts as alive: only a process known to be
/// gone turns a record into "interrupted".
fn process_may_be_alive(pid: u32, host: Option<&str>, local_host: &Option<String>) -> bool {
    if let (Some(host), Some(local)) = (host, local_host) {
        if host != local {
            return true;
        }
    }
    if pid == std::process::id() {
        return true;
    }
    pid_alive(pid)
}

#[cfg(target_os = "linux")]
fn pid_alive(pid: u32) -> bool {
    pid != 0 && Path::new("/proc").join(pid.to_string()).exists()
}

#[cfg(not(target_os = "linux"))]
fn pid_alive(_pid: u32) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A record as phoenix wrote it before record version 2 (snake_case, milliseconds).
    fn v1() -> serde_json::Value {
        json!({
            "version": 1, "run_id": "65a1b2c3d4e5", "env": "demo", "command": "rebuild",
            "commit": "0123456789abcdef0123456789abcdef01234567", "git_ref": "main",
            "actor": "ops", "host": "box", "pid": 4242,
            "started_at": "2026-11-23T19:21:13.123Z", "finished_at": "2026-11-23T19:22:14.623Z",
            "duration_ms": 61500, "outcome": "failed", "error": "1 node failed",
            "cancel_reason": null, "in_flight_at_cancel": [],
            "layers": [
                { "layer": "cloud", "status": "converged", "duration_ms": 1500 },
                { "layer": "cluster", "status": "failed", "duration_ms": 60000 },
                { "layer": "addons", "status": "skipped", "duration_ms": null },
                { "layer": "apps", "status": null, "duration_ms": null }
            ],
            "nodes": [
                { "id": "cloud/vpc", "layer": "cloud", "started": true,
                  "result": { "status": "succeeded", "outcome": "created" },
                  "duration_ms": 1500, "attempts": 1 },
                { "id": "cluster/control-plane", "layer": "cluster", "started": true,
                  "result": { "status": "failed", "error": "not ready", "timed_out": true },
                  "duration_ms": 60000, "attempts": 3 }
            ]
        })
    }

    #[test]
    fn a_version_1_record_reads_as_the_current_format() {
        let record: AuditRecord = serde_json::from_value(migrate(v1()).unwrap()).unwrap();
        assert_eq!(record.version, 1, "the version it was written in is kept");
        assert_eq!(record.run_id, "65a1b2c3d4e5");
        assert_eq!(record.git_ref.as_deref(), Some("main"));
        assert_eq!(record.started_at, "2026-11-23T19:21:13.123Z");
        assert_eq!(
            record.finished_at.as_deref(),
            Some("2026-11-23T19:22:14.623Z")
        );
        assert_eq!(record.duration_ms, Some(61500));
        assert_eq!(record.outcome, RunOutcome::Failed);
        assert_eq!(record.layers[1].duration_ms, Some(60000));
        assert_eq!(record.layers[3].status, None);
        assert_eq!(
            record.nodes[1].result,
            Some(NodeState::Failed {
                error: "not ready".into(),
                timed_out: true
            })
        );
        assert_eq!(record.nodes[1].duration_ms, Some(60000));
        // Written back, it is a current record: camelCase, seconds.
        let text = serde_json::to_string(&record).unwrap();
        assert!(text.contains(r#""durationSeconds":61.5"#), "{text}");
        assert!(text.contains(r#""timedOut":true"#), "{text}");
        assert!(
            !text.contains('_'),
            "no snake_case key or value left: {text}"
        );
    }

    #[test]
    fn a_current_record_round_trips_unchanged() {
        let record: AuditRecord = serde_json::from_value(migrate(v1()).unwrap()).unwrap();
        let current = AuditRecord {
            version: RECORD_VERSION,
            ..record
        };
        let value = serde_json::to_value(&current).unwrap();
        assert_eq!(value["recordVersion"], RECORD_VERSION);
        let back: AuditRecord = serde_json::from_value(migrate(value).unwrap()).unwrap();
        assert_eq!(back, current);
    }

    #[test]
    fn a_record_from_a_newer_phoenix_is_refused_naming_the_field() {
        let mut newer = serde_json::to_value(
            serde_json::from_value::<AuditRecord>(migrate(v1()).unwrap()).unwrap(),
        )
        .unwrap();
        newer["recordVersion"] = json!(RECORD_VERSION + 1);
        let err = migrate(newer).unwrap_err();
        assert!(
            err.contains("recordVersion") && err.contains("newer phoenix"),
            "{err}"
        );
        let err = migrate(json!({ "env": "demo" })).unwrap_err();
        assert!(err.contains("recordVersion is missing"), "{err}");
        let err = migrate(json!({ "version": 0 })).unwrap_err();
        assert!(
            err.contains("recordVersion is 0: no phoenix wrote"),
            "{err}"
        );
    }

    #[test]
    fn scan_reads_old_and_new_records_and_names_an_unreadable_one() {
        let home = tempfile::tempdir().unwrap();
        let dir = runs_dir(home.path(), "demo");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("20261123T192113Z-65a1b2c3d4e5.json"),
            serde_json::to_string_pretty(&v1()).unwrap(),
        )
        .unwrap();
        let mut newer = v1();
        newer["version"] = json!(99);
        std::fs::write(
            dir.join("20261124T000000Z-ffffffffffff.json"),
            newer.to_string(),
        )
        .unwrap();
        let listing = scan_runs(home.path(), "demo").unwrap();
        assert_eq!(listing.records.len(), 1);
        assert_eq!(listing.records[0].run_id, "65a1b2c3d4e5");
        assert_eq!(listing.problems.len(), 1);
        let problem = listing.problems[0].to_string();
        assert!(
            problem.contains("20261124T000000Z-ffffffffffff.json")
                && problem.contains("recordVersion is 99"),
            "{problem}"
        );
    }
}
