//! The result of a run: per-node and per-layer outcomes, timings, and the critical path.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::graph::{Layer, NodeOutcome, NodeSpec};
use crate::report::events::seconds;

/// How a node ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "status",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum NodeState {
    Succeeded {
        outcome: NodeOutcome,
    },
    /// A permanent error, or the node (or run) timeout expired.
    Failed {
        error: String,
        timed_out: bool,
    },
    /// Not started because a dependency or a lower layer did not converge.
    Skipped {
        reason: String,
    },
    /// In a layer not selected with `--layers`; counts as converged.
    Excluded,
    /// Stopped by cancellation: never started (`started: false`), or cancelled between attempts.
    Cancelled {
        reason: String,
        started: bool,
    },
}

impl NodeState {
    pub fn is_success(&self) -> bool {
        matches!(self, NodeState::Succeeded { .. })
    }

    /// Whether dependants and higher layers may proceed past this node.
    pub fn satisfies(&self) -> bool {
        matches!(self, NodeState::Succeeded { .. } | NodeState::Excluded)
    }

    /// A short label: the outcome for successes, else the state name.
    pub fn label(&self) -> &'static str {
        match self {
            NodeState::Succeeded { outcome } => outcome.as_str(),
            NodeState::Failed {
                timed_out: true, ..
            } => "timed out",
            NodeState::Failed { .. } => "failed",
            NodeState::Skipped { .. } => "skipped",
            NodeState::Excluded => "excluded",
            NodeState::Cancelled { .. } => "cancelled",
        }
    }

    /// The error or reason, if any.
    pub fn detail(&self) -> Option<&str> {
        match self {
            NodeState::Failed { error, .. } => Some(error),
            NodeState::Skipped { reason } | NodeState::Cancelled { reason, .. } => Some(reason),
            NodeState::Succeeded { .. } | NodeState::Excluded => None,
        }
    }
}

/// How a layer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerStatus {
    Converged,
    Failed,
    /// Never started: a lower layer did not converge.
    Skipped,
    Cancelled,
    /// Not selected with `--layers`.
    Excluded,
}

impl LayerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LayerStatus::Converged => "converged",
            LayerStatus::Failed => "failed",
            LayerStatus::Skipped => "skipped",
            LayerStatus::Cancelled => "cancelled",
            LayerStatus::Excluded => "excluded",
        }
    }
}

impl fmt::Display for LayerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One node's result. Offsets are from the start of the run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeResult {
    pub id: String,
    pub layer: Layer,
    pub description: String,
    pub state: NodeState,
    pub attempts: u32,
    #[serde(with = "seconds::option", rename = "startSeconds")]
    pub start: Option<Duration>,
    #[serde(with = "seconds::option", rename = "durationSeconds")]
    pub duration: Option<Duration>,
    pub last_progress: Option<String>,
    /// The node was running when cancellation (or the run timeout) was requested.
    pub in_flight_at_cancel: bool,
}

/// One layer's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerResult {
    pub layer: Layer,
    pub status: LayerStatus,
    pub nodes: usize,
    #[serde(with = "seconds::option", rename = "startSeconds")]
    pub start: Option<Duration>,
    #[serde(with = "seconds", rename = "durationSeconds")]
    pub duration: Duration,
}

/// Why a node on the critical path started when it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Release {
    /// Nothing held it back: it started with the run.
    Start,
    /// Its last-finishing dependency released it.
    Dependency,
    /// The layer gate released it: the last node of the lower layers finished.
    Gate,
}

/// One step of the critical path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CriticalStep {
    pub id: String,
    pub layer: Layer,
    #[serde(with = "seconds", rename = "startSeconds")]
    pub start: Duration,
    #[serde(with = "seconds", rename = "durationSeconds")]
    pub duration: Duration,
    pub released_by: Release,
    /// The node whose end released this one (for `Dependency` and `Gate`).
    pub after: Option<String>,
}

/// What a run did and the state it left. Serialized in camelCase with durations and offsets in
/// seconds (`durationSeconds`, `startSeconds`), as in docs/json.md.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    pub run_id: String,
    pub env: String,
    /// Every node, in graph order.
    pub nodes: Vec<NodeResult>,
    /// All four layers, in gate order.
    pub layers: Vec<LayerResult>,
    #[serde(with = "seconds", rename = "durationSeconds")]
    pub duration: Duration,
    /// Every selected node succeeded.
    pub converged: bool,
    /// Cancellation was requested and took effect.
    pub cancelled: bool,
    /// Set when the run could not execute at all (e.g. an invalid graph).
    pub error: Option<String>,
    /// The chain of nodes whose durations determined the wall time, in order.
    pub critical_path: Vec<CriticalStep>,
}

impl RunSummary {
    pub fn node(&self, id: &str) -> Option<&NodeResult> {
        self.nodes.iter().find(|n| n.id == id)
    }

    pub fn layer(&self, layer: Layer) -> Option<&LayerResult> {
        self.layers.iter().find(|l| l.layer == layer)
    }

    /// Nodes that ran to an end (succeeded or failed).
    pub fn completed(&self) -> impl Iterator<Item = &NodeResult> {
        self.nodes.iter().filter(|n| {
            matches!(
                n.state,
                NodeState::Succeeded { .. } | NodeState::Failed { .. }
            )
        })
    }

    /// Nodes that were running when cancellation was requested.
    pub fn in_flight_at_cancel(&self) -> impl Iterator<Item = &NodeResult> {
        self.nodes.iter().filter(|n| n.in_flight_at_cancel)
    }

    /// Nodes cancelled before they started.
    pub fn never_started(&self) -> impl Iterator<Item = &NodeResult> {
        self.nodes
            .iter()
            .filter(|n| matches!(n.state, NodeState::Cancelled { started: false, .. }))
    }

    pub fn failed(&self) -> impl Iterator<Item = &NodeResult> {
        self.nodes
            .iter()
            .filter(|n| matches!(n.state, NodeState::Failed { .. }))
    }
}

/// What the critical-path walk needs to know about one node.
pub(super) struct Timed<'a> {
    pub(super) spec: &'a NodeSpec,
    pub(super) deps: &'a [usize],
    pub(super) start: Option<Instant>,
    pub(super) end: Option<Instant>,
}

/// Walks back from the last-finishing node through whichever constraint released each node last:
/// its latest-ending dependency, or the latest-ending node of the lower layers (the gate).
pub(super) fn critical_path(slots: &[Timed<'_>], t0: Instant) -> Vec<CriticalStep> {
    // Internal nodes (a last id segment starting with a dot, e.g. `addons/.removed`, which no
    // component name can be) are bookkeeping, not steps a reader can act on: the walk treats them
    // as if they had not run.
    let internal = |i: usize| {
        let id = &slots[i].spec.id;
        id.rsplit('/')
            .next()
            .is_some_and(|last| last.starts_with('.'))
    };
    let ended = |i: usize| {
        if internal(i) {
            None
        } else {
            slots[i].start.zip(slots[i].end)
        }
    };
    // For each layer, the node of all lower layers that ended last (it opened the gate).
    let mut gate_opener: [Option<usize>; 4] = [None; 4];
    let mut best: Option<usize> = None;
    for (l, opener) in gate_opener.iter_mut().enumerate() {
        *opener = best;
        for (i, slot) in slots.iter().enumerate() {
            let ends_later = best.is_none_or(|b| slot.end > slots[b].end);
            if slot.spec.layer.index() == l && ended(i).is_some() && ends_later {
                best = Some(i);
            }
        }
    }
    let Some(mut current) = (0..slots.len())
        .filter(|&i| ended(i).is_some())
        .max_by_key(|&i| (slots[i].end, std::cmp::Reverse(i)))
    else {
        return Vec::new();
    };
    let mut path = Vec::new();
    // Each step moves to a node that ended no later than the current one started, so the walk
    // terminates; the bound guards against equal instants.
    for _ in 0..slots.len() {
        let Some((start, end)) = ended(current) else {
            break;
        };
        let dep = slots[current]
            .deps
            .iter()
            .copied()
            .filter(|&d| ended(d).is_some_and(|(_, e)| e <= start))
            .max_by_key(|&d| (slots[d].end, std::cmp::Reverse(d)));
        let gate = gate_opener[slots[current].spec.layer.index()]
            .filter(|&g| slots[g].end.is_some_and(|e| e <= start));
        let (release, previous) = match (dep, gate) {
            (Some(d), Some(g)) if slots[g].end > slots[d].end => (Release::Gate, Some(g)),
            (Some(d), _) => (Release::Dependency, Some(d)),
            (None, Some(g)) => (Release::Gate, Some(g)),
            (None, None) => (Release::Start, None),
        };
        path.push(CriticalStep {
            id: slots[current].spec.id.clone(),
            layer: slots[current].spec.layer,
            start: start.saturating_duration_since(t0),
            duration: end.saturating_duration_since(start),
            released_by: release,
            after: previous.map(|p| slots[p].spec.id.clone()),
        });
        match previous {
            Some(p) => current = p,
            None => break,
        }
    }
    path.reverse();
    path
}
