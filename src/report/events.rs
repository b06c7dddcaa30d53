//! The one event stream of a run: what the engine emits and every reader (progress, JSON lines,
//! audit) consumes.
//!
//! Events carry only ids, layer names, durations and the messages providers give the engine
//! (progress messages and error messages). Providers must never put secret values in those
//! messages: whatever they write ends up on the terminal, in JSON output and in audit records.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::engine::{Layer, LayerStatus, NodeState};

/// Who ran what, from which commit: the identity of a run, carried by [`Event::RunStarted`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    pub run_id: String,
    pub env: String,
    /// Full commit SHA the environment was read from.
    pub commit: String,
    /// The ref the user asked for (`--ref`), if any.
    pub git_ref: Option<String>,
    /// The command line verb, e.g. "rebuild".
    pub command: String,
    pub actor: String,
    pub host: Option<String>,
    /// The AWS region the run's cloud layer used (`None`: no cloud layer).
    #[serde(default)]
    pub region: Option<String>,
}

impl RunInfo {
    /// A new run identity with a fresh run id, the actor from the environment and the host name.
    pub fn new(
        env: impl Into<String>,
        command: impl Into<String>,
        commit: impl Into<String>,
    ) -> Self {
        RunInfo {
            run_id: new_run_id(),
            env: env.into(),
            commit: commit.into(),
            git_ref: None,
            command: command.into(),
            actor: actor_from_env(),
            host: hostname(),
            region: None,
        }
    }

    pub fn with_ref(mut self, git_ref: impl Into<String>) -> Self {
        self.git_ref = Some(git_ref.into());
        self
    }
}

impl Default for RunInfo {
    fn default() -> Self {
        RunInfo::new("", "", "")
    }
}

/// Who runs phoenix: `$PHOENIX_ACTOR`, else `$USER` or `$LOGNAME`, else the Git identity
/// (`user.email`, else `user.name`, from the global Git configuration), else the OS user of the
/// process (its name, or `uid N`), and "unknown" only when none of these can be read. Cron and
/// CI often run without `$USER`.
pub fn actor_from_env() -> String {
    let nonempty = |v: String| {
        let v = v.trim().to_string();
        (!v.is_empty()).then_some(v)
    };
    ["PHOENIX_ACTOR", "USER", "LOGNAME"]
        .iter()
        .filter_map(|var| std::env::var(var).ok())
        .find_map(nonempty)
        .or_else(|| {
            let config = git2::Config::open_default().ok()?;
            ["user.email", "user.name"]
                .iter()
                .filter_map(|key| config.get_string(key).ok())
                .find_map(nonempty)
        })
        .or_else(os_user)
        .unwrap_or_else(|| "unknown".to_string())
}

/// The OS user of this process, from `/proc/self/status` and `/etc/passwd` (Linux).
fn os_user() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .to_string();
    let name = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|l| {
                let mut parts = l.split(':');
                let name = parts.next()?;
                (parts.nth(1)? == uid && !name.is_empty()).then(|| name.to_string())
            })
        });
    Some(name.unwrap_or_else(|| format!("uid {uid}")))
}

/// The host name, where it is cheap to read.
pub fn hostname() -> Option<String> {
    let from_file = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok());
    from_file
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// 12 hex digits: 8 from the clock (unique per ~second) and 4 random ones.
fn new_run_id() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(now.as_nanos());
    hasher.write_u32(std::process::id());
    format!(
        "{:08x}{:04x}",
        now.as_secs() as u32,
        (hasher.finish() & 0xffff) as u16
    )
}

/// A node as announced at the start of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedNode {
    pub id: String,
    pub layer: Layer,
    pub description: String,
}

/// The version of the run event stream (`--output json` of rebuild, destroy, up and drill; see
/// docs/json.md). Fields may be added without a bump, never removed or changed in meaning.
pub const EVENTS_SCHEMA_VERSION: u32 = 1;

/// Everything that happens in a run. Serialized with a `type` tag and fields in camelCase
/// (`{"type":"nodeStarted",...}`), durations in seconds with millisecond precision
/// (`durationSeconds`), as every JSON document of docs/json.md.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Event {
    RunStarted {
        run_id: String,
        env: String,
        commit: String,
        git_ref: Option<String>,
        command: String,
        actor: String,
        host: Option<String>,
        /// The AWS region of the cloud layer (the failover region with `--failover`).
        #[serde(default)]
        region: Option<String>,
        /// The phoenix process, so a record left "running" by a killed process can be told apart.
        pid: u32,
        /// The selected layers (all four unless `--layers` limits them).
        layers: Vec<Layer>,
        nodes: Vec<PlannedNode>,
    },
    LayerStarted {
        layer: Layer,
        nodes: usize,
    },
    LayerFinished {
        layer: Layer,
        status: LayerStatus,
        #[serde(rename = "durationSeconds", with = "seconds::millis")]
        duration_ms: u64,
    },
    NodeStarted {
        id: String,
        layer: Layer,
        description: String,
    },
    NodeProgress {
        id: String,
        message: String,
    },
    /// Something a node did that the audit trail keeps (e.g. taking over a DNS record phoenix
    /// did not own): one sentence, never a secret.
    NodeAudit {
        id: String,
        message: String,
    },
    /// A transient error; the node retries after `delay_ms`. `attempt` is the attempt that failed.
    NodeRetry {
        id: String,
        attempt: u32,
        error: String,
        #[serde(rename = "delaySeconds", with = "seconds::millis")]
        delay_ms: u64,
    },
    NodeFinished {
        id: String,
        layer: Layer,
        result: NodeState,
        /// Zero for nodes that never started.
        #[serde(rename = "durationSeconds", with = "seconds::millis")]
        duration_ms: u64,
        attempts: u32,
    },
    /// Ctrl-C (or the run timeout): nothing new starts; `in_flight` nodes are left to finish.
    CancelRequested {
        reason: String,
        in_flight: Vec<String>,
    },
    RunFinished {
        run_id: String,
        converged: bool,
        cancelled: bool,
        #[serde(rename = "durationSeconds", with = "seconds::millis")]
        duration_ms: u64,
        /// Set when the run could not execute at all (e.g. an invalid graph).
        error: Option<String>,
    },
}

impl Event {
    /// The `type` tag of this event.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::RunStarted { .. } => "runStarted",
            Event::LayerStarted { .. } => "layerStarted",
            Event::LayerFinished { .. } => "layerFinished",
            Event::NodeStarted { .. } => "nodeStarted",
            Event::NodeProgress { .. } => "nodeProgress",
            Event::NodeAudit { .. } => "nodeAudit",
            Event::NodeRetry { .. } => "nodeRetry",
            Event::NodeFinished { .. } => "nodeFinished",
            Event::CancelRequested { .. } => "cancelRequested",
            Event::RunFinished { .. } => "runFinished",
        }
    }
}

/// An event as delivered to readers: sequence number and wall-clock time (RFC 3339, UTC, ms).
/// One JSON line is `{"schemaVersion":1,"seq":3,"ts":"2026-11-23T19:21:13.123Z","type":"nodeStarted",...}`
/// (the version is added by the writer, [`crate::report::jsonl`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    pub ts: String,
    // Output-only record (not configuration), so `flatten` costs no error-message quality here;
    // it keeps each JSON line one flat object.
    #[serde(flatten)]
    pub event: Event,
}

#[derive(Debug, Default)]
struct Subscribers {
    next_seq: u64,
    senders: Vec<mpsc::UnboundedSender<Arc<EventRecord>>>,
}

/// The sending side of the event stream: cheap to clone, fans every event out to all streams
/// subscribed so far. Streams end when every clone of the sink is dropped (or on
/// [`EventSink::close`]). Unbounded, so a slow reader never loses events or stalls the engine.
#[derive(Clone, Debug, Default)]
pub struct EventSink {
    subscribers: Arc<Mutex<Subscribers>>,
}

impl EventSink {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new reader; it receives every event emitted from now on.
    pub fn subscribe(&self) -> EventStream {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().senders.push(tx);
        EventStream { rx }
    }

    /// Stamps and delivers an event to every live stream.
    pub fn emit(&self, event: Event) {
        let mut subs = self.lock();
        // Numbering and sending under one lock keeps every stream in `seq` order.
        let record = Arc::new(EventRecord {
            seq: subs.next_seq,
            ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            event,
        });
        subs.next_seq += 1;
        subs.senders
            .retain(|tx| tx.send(Arc::clone(&record)).is_ok());
    }

    /// Ends every stream subscribed so far, even while clones of the sink are still alive.
    pub fn close(&self) {
        self.lock().senders.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Subscribers> {
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The receiving side of one subscription.
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::UnboundedReceiver<Arc<EventRecord>>,
}

impl EventStream {
    /// The next event, or `None` once the stream has ended. Cancel-safe (an unbounded channel
    /// receive loses nothing when dropped).
    pub async fn next(&mut self) -> Option<Arc<EventRecord>> {
        self.rx.recv().await
    }

    /// Drains the stream to its end.
    pub async fn collect(mut self) -> Vec<Arc<EventRecord>> {
        let mut all = Vec::new();
        while let Some(record) = self.next().await {
            all.push(record);
        }
        all
    }
}

/// Whole milliseconds, saturating.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Serde helpers: durations as seconds with millisecond precision (`1.234`), the unit of every
/// JSON document phoenix writes (docs/json.md), so a reader never guesses between ms and s.
pub mod seconds {
    use super::*;
    use serde::{Deserializer, Serializer};

    /// Whole milliseconds as seconds: exact in an f64 for any real duration, so no float noise.
    fn to_seconds(ms: u64) -> f64 {
        ms as f64 / 1000.0
    }

    fn from_seconds<E: serde::de::Error>(s: f64) -> Result<u64, E> {
        if s.is_finite() && s >= 0.0 {
            Ok((s * 1000.0).round() as u64)
        } else {
            Err(E::custom(format!(
                "a duration in seconds must be a number >= 0, got {s}"
            )))
        }
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(to_seconds(millis(*d)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        from_seconds(f64::deserialize(d)?).map(Duration::from_millis)
    }

    /// The same for `Option<Duration>` (`null` when absent).
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.serialize_some(&to_seconds(millis(*d))),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Option::<f64>::deserialize(d)?
                .map(|s| from_seconds(s).map(Duration::from_millis))
                .transpose()
        }
    }

    /// For durations held as whole milliseconds (`u64`).
    pub mod millis {
        use super::*;

        pub fn serialize<S: Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_f64(to_seconds(*ms))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
            from_seconds(f64::deserialize(d)?)
        }
    }

    /// For optional durations held as whole milliseconds (`Option<u64>`).
    pub mod millis_option {
        use super::*;

        pub fn serialize<S: Serializer>(ms: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
            match ms {
                Some(ms) => s.serialize_some(&to_seconds(*ms)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
            Option::<f64>::deserialize(d)?
                .map(from_seconds::<D::Error>)
                .transpose()
        }
    }
}

impl fmt::Display for EventRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} #{} {}", self.ts, self.seq, self.event.kind())
    }
}
