//! The audit trail: one JSON record per run at
//! `$PHOENIX_HOME/runs/<env>/<UTC timestamp>-<run_id>.json`, readable only by its owner.
//!
//! A provisional record with outcome "running" is written when the run starts and rewritten as
//! layers finish and when the run ends, so a run killed outright leaves a trace: [`list_runs`]
//! shows a record still "running" whose process is gone as "interrupted".

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::events::{hostname, Event, EventStream};
use crate::engine::{Layer, LayerStatus, NodeState};

/// Version of the record format, bumped on incompatible changes.
pub const RECORD_VERSION: u32 = 1;

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
pub struct LayerRecord {
    pub layer: Layer,
    pub status: Option<LayerStatus>,
    pub duration_ms: Option<u64>,
}

/// One node in an audit record; `result` is `None` until the node finished.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub layer: Layer,
    pub started: bool,
    pub result: Option<NodeState>,
    pub duration_ms: Option<u64>,
    pub attempts: u32,
}

/// The audit record of one run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub version: u32,
    pub run_id: String,
    pub env: String,
    pub command: String,
    pub commit: String,
    pub git_ref: Option<String>,
    pub actor: String,
    pub host: Option<String>,
    pub pid: u32,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub finished_at: Option<String>,
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
    serde_json::from_str(&text).map_err(|source| AuditError::Parse {
        path: path.to_path_buf(),
        source,
    })
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
