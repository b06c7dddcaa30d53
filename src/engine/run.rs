//! Executes a graph: independent nodes concurrently up to a bound, each layer gated on the
//! convergence of the layers below, a timeout over all attempts of each node, backoff retries of
//! transient errors, and cancellation that starts nothing new and lets in-flight nodes finish.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use super::backoff::Policy;
use super::cancel::CancelToken;
use super::graph::{Action, ErrorKind, Graph, Layer, NodeSpec};
use super::summary::{
    critical_path, LayerResult, LayerStatus, NodeResult, NodeState, RunSummary, Timed,
};
use super::wait::{NodeCtx, NodeShared};
use crate::report::events::{millis, Event, EventSink, PlannedNode, RunInfo};
use crate::report::format_duration;

/// How a run executes.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Maximum number of nodes in flight at once (at least 1).
    pub concurrency: usize,
    /// `--layers`: nodes of other layers are excluded and count as converged for gates and
    /// dependencies. `None` runs all layers.
    pub layers: Option<BTreeSet<Layer>>,
    /// Backoff between attempts after a transient error.
    pub backoff: Policy,
    /// Deadline for the whole run: on expiry nothing new starts and in-flight nodes are stopped.
    pub run_timeout: Option<Duration>,
    /// Identity of the run, announced in [`Event::RunStarted`].
    pub run: RunInfo,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            concurrency: 8,
            layers: None,
            backoff: Policy::STANDARD,
            run_timeout: None,
            run: RunInfo::default(),
        }
    }
}

/// Executes `graph`, emitting events to `events`, until every node has an end or `cancel` has
/// stopped the run. Never panics on action failures: a panicking action fails its node.
pub async fn run(
    graph: Graph,
    opts: EngineOptions,
    events: EventSink,
    cancel: CancelToken,
) -> RunSummary {
    let selected: [bool; 4] =
        Layer::ALL.map(|l| opts.layers.as_ref().is_none_or(|set| set.contains(&l)));
    events.emit(Event::RunStarted {
        run_id: opts.run.run_id.clone(),
        env: opts.run.env.clone(),
        commit: opts.run.commit.clone(),
        git_ref: opts.run.git_ref.clone(),
        command: opts.run.command.clone(),
        actor: opts.run.actor.clone(),
        host: opts.run.host.clone(),
        region: opts.run.region.clone(),
        pid: std::process::id(),
        layers: Layer::ALL
            .into_iter()
            .filter(|l| selected[l.index()])
            .collect(),
        nodes: graph
            .specs()
            .map(|s| PlannedNode {
                id: s.id.clone(),
                layer: s.layer,
                description: s.description.clone(),
            })
            .collect(),
    });
    let invalid = graph
        .validate()
        .err()
        .map(|e| format!("invalid graph: {e}"));
    let scheduler = Scheduler::new(graph, &opts, selected, events, cancel);
    if let Some(error) = invalid {
        return scheduler.refuse(error);
    }
    scheduler.drive().await
}

enum SlotState {
    Pending,
    Running,
    Done(NodeState),
}

struct Slot {
    spec: NodeSpec,
    action: Arc<dyn Action>,
    deps: Vec<usize>,
    shared: Arc<NodeShared>,
    phase: SlotState,
    start: Option<Instant>,
    end: Option<Instant>,
    in_flight_at_cancel: bool,
}

impl Slot {
    fn done(&self) -> Option<&NodeState> {
        match &self.phase {
            SlotState::Done(state) => Some(state),
            SlotState::Pending | SlotState::Running => None,
        }
    }
}

struct LayerRt {
    nodes: Vec<usize>,
    selected: bool,
    started: Option<Instant>,
    finished: Option<(Instant, LayerStatus)>,
}

#[derive(Clone, Copy, PartialEq)]
enum Stop {
    Cancelled,
    RunTimeout(Duration),
}

enum Wake {
    Joined(Result<(usize, NodeState), JoinError>),
    Cancel,
    Deadline,
    Drained,
}

struct Scheduler {
    slots: Vec<Slot>,
    layers: Vec<LayerRt>,
    concurrency: usize,
    backoff: Policy,
    run_timeout: Option<Duration>,
    run_id: String,
    env: String,
    events: EventSink,
    cancel: CancelToken,
    t0: Instant,
    join: JoinSet<(usize, NodeState)>,
    tasks: HashMap<tokio::task::Id, usize>,
    running: usize,
    stop: Option<Stop>,
}

impl Scheduler {
    fn new(
        graph: Graph,
        opts: &EngineOptions,
        selected: [bool; 4],
        events: EventSink,
        cancel: CancelToken,
    ) -> Self {
        let deps: Vec<Vec<usize>> = graph
            .specs()
            .map(|s| {
                s.depends_on
                    .iter()
                    .filter_map(|d| graph.position(d))
                    .collect()
            })
            .collect();
        let mut layers: Vec<LayerRt> = Layer::ALL
            .iter()
            .map(|l| LayerRt {
                nodes: Vec::new(),
                selected: selected[l.index()],
                started: None,
                finished: None,
            })
            .collect();
        let slots: Vec<Slot> = graph
            .nodes
            .into_iter()
            .zip(deps)
            .enumerate()
            .map(|(i, (node, deps))| {
                layers[node.spec.layer.index()].nodes.push(i);
                Slot {
                    spec: node.spec,
                    action: node.action,
                    deps,
                    shared: Arc::new(NodeShared::default()),
                    phase: SlotState::Pending,
                    start: None,
                    end: None,
                    in_flight_at_cancel: false,
                }
            })
            .collect();
        Scheduler {
            slots,
            layers,
            concurrency: opts.concurrency.max(1),
            backoff: opts.backoff,
            run_timeout: opts.run_timeout,
            run_id: opts.run.run_id.clone(),
            env: opts.run.env.clone(),
            events,
            cancel,
            t0: Instant::now(),
            join: JoinSet::new(),
            tasks: HashMap::new(),
            running: 0,
            stop: None,
        }
    }

    /// An invalid graph runs nothing: every node is skipped with the validation error.
    fn refuse(mut self, error: String) -> RunSummary {
        for i in 0..self.slots.len() {
            self.finish_node(
                i,
                NodeState::Skipped {
                    reason: error.clone(),
                },
            );
        }
        for l in 0..self.layers.len() {
            self.finish_layer(l);
        }
        self.summarize(Some(error))
    }

    async fn drive(mut self) -> RunSummary {
        for i in 0..self.slots.len() {
            if !self.layers[self.slots[i].spec.layer.index()].selected {
                self.finish_node(i, NodeState::Excluded);
            }
        }
        for l in 0..self.layers.len() {
            if !self.layers[l].selected {
                self.finish_layer(l);
            }
        }
        let deadline = self.run_timeout.map(|d| self.t0 + d);
        loop {
            // Checked before every scheduling pass, not only through `select!`: when a node ends
            // at the same moment as the cancel, `select!` may pick the node first, and the pass
            // that follows must still start nothing.
            if self.stop.is_none() && self.cancel.is_cancelled() {
                self.request_stop(Stop::Cancelled);
            }
            self.advance();
            if self.running == 0 {
                break;
            }
            // Nodes count as running but no task is left: unreachable while the bookkeeping
            // holds; handled so the loop can neither hang nor hit `select!`'s all-disabled panic.
            let wake = if self.join.is_empty() {
                Wake::Drained
            } else {
                self.next_wake(deadline).await
            };
            match wake {
                Wake::Joined(joined) => self.on_joined(joined),
                Wake::Cancel => self.request_stop(Stop::Cancelled),
                Wake::Deadline => {
                    let limit = self.run_timeout.unwrap_or_default();
                    self.request_stop(Stop::RunTimeout(limit));
                    // The run deadline is hard: in-flight attempts are dropped at their next await.
                    self.join.abort_all();
                }
                Wake::Drained => {
                    for i in 0..self.slots.len() {
                        if matches!(self.slots[i].phase, SlotState::Running) {
                            let error = "the node's task ended without a result".to_string();
                            self.finish_node(
                                i,
                                NodeState::Failed {
                                    error,
                                    timed_out: false,
                                },
                            );
                        }
                    }
                    self.running = 0;
                }
            }
        }
        let reason = match self.stop {
            Some(Stop::Cancelled) => Some("run cancelled before the node started".to_string()),
            Some(Stop::RunTimeout(limit)) => Some(format!(
                "run timeout of {} expired before the node started",
                format_duration(limit)
            )),
            None => None,
        };
        for i in 0..self.slots.len() {
            if matches!(self.slots[i].phase, SlotState::Pending) {
                let state = match &reason {
                    Some(reason) => NodeState::Cancelled {
                        reason: reason.clone(),
                        started: false,
                    },
                    // Unreachable for a validated graph; kept total rather than panicking.
                    None => NodeState::Skipped {
                        reason: "its dependencies never completed".to_string(),
                    },
                };
                self.finish_node(i, state);
            }
        }
        for l in 0..self.layers.len() {
            self.finish_layer(l);
        }
        self.summarize(None)
    }

    /// Waits for the next thing the scheduler must react to.
    async fn next_wake(&mut self, deadline: Option<Instant>) -> Wake {
        tokio::select! {
            // Cancel-safe: `join_next` is documented cancel-safe; a task that has not finished
            // stays in the set for the next iteration.
            Some(joined) = self.join.join_next() => Wake::Joined(joined),
            // Cancel-safe: waiting on the token only drops a watch receiver when it loses.
            () = self.cancel.cancelled(), if self.stop.is_none() => Wake::Cancel,
            // Cancel-safe: a timer; recreated from the same deadline on the next iteration.
            () = sleep_until_opt(deadline),
                if deadline.is_some() && !matches!(self.stop, Some(Stop::RunTimeout(_))) =>
                Wake::Deadline,
            // Reached only if every branch is disabled (no task left and no deadline).
            else => Wake::Drained,
        }
    }

    fn request_stop(&mut self, stop: Stop) {
        if self.stop.is_some() && stop == Stop::Cancelled {
            return;
        }
        self.stop = Some(stop);
        let mut in_flight = Vec::new();
        for slot in &mut self.slots {
            if matches!(slot.phase, SlotState::Running) {
                slot.in_flight_at_cancel = true;
                in_flight.push(slot.spec.id.clone());
            }
        }
        let reason = match stop {
            Stop::Cancelled => "cancel requested".to_string(),
            Stop::RunTimeout(limit) => {
                format!("run timeout of {} expired", format_duration(limit))
            }
        };
        self.events
            .emit(Event::CancelRequested { reason, in_flight });
    }

    fn on_joined(&mut self, joined: Result<(usize, NodeState), JoinError>) {
        let (i, state) = match joined {
            Ok((i, state)) => (i, state),
            Err(err) => {
                let Some(&i) = self.tasks.get(&err.id()) else {
                    return;
                };
                let slot = &self.slots[i];
                let state = if err.is_panic() {
                    NodeState::Failed {
                        error: format!("node action panicked: {}", panic_message(err)),
                        timed_out: false,
                    }
                } else {
                    let limit = match self.stop {
                        Some(Stop::RunTimeout(limit)) => limit,
                        _ => Duration::ZERO,
                    };
                    NodeState::Failed {
                        error: waited_message(
                            &format!("run timeout of {} expired", format_duration(limit)),
                            &slot.spec.description,
                            &slot.shared,
                        ),
                        timed_out: true,
                    }
                };
                (i, state)
            }
        };
        self.running -= 1;
        self.finish_node(i, state);
    }

    /// Starts and skips nodes and opens and closes layers until nothing changes.
    fn advance(&mut self) {
        loop {
            let mut changed = false;
            for l in 0..self.layers.len() {
                let layer = &self.layers[l];
                if layer.selected
                    && layer.started.is_none()
                    && layer.finished.is_none()
                    && self.stop.is_none()
                    && self.gate_open(l)
                {
                    self.layers[l].started = Some(Instant::now());
                    self.events.emit(Event::LayerStarted {
                        layer: Layer::ALL[l],
                        nodes: self.layers[l].nodes.len(),
                    });
                    changed = true;
                }
            }
            for i in 0..self.slots.len() {
                if !matches!(self.slots[i].phase, SlotState::Pending) {
                    continue;
                }
                if let Some(reason) = self.blocked(i) {
                    self.finish_node(i, NodeState::Skipped { reason });
                    changed = true;
                    continue;
                }
                let layer_open = self.layers[self.slots[i].spec.layer.index()]
                    .started
                    .is_some();
                let deps_done = self.slots[i]
                    .deps
                    .iter()
                    .all(|&d| self.slots[d].done().is_some_and(NodeState::satisfies));
                if self.stop.is_none() && layer_open && deps_done && self.running < self.concurrency
                {
                    self.start(i);
                    changed = true;
                }
            }
            for l in 0..self.layers.len() {
                let layer = &self.layers[l];
                if layer.finished.is_none()
                    && layer.started.is_some()
                    && layer.nodes.iter().all(|&i| self.slots[i].done().is_some())
                {
                    self.finish_layer(l);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }

    /// Every lower layer is excluded or converged.
    fn gate_open(&self, l: usize) -> bool {
        self.layers[..l].iter().all(|lower| {
            !lower.selected || matches!(lower.finished, Some((_, LayerStatus::Converged)))
        })
    }

    /// Why a pending node can never start, if it cannot.
    fn blocked(&self, i: usize) -> Option<String> {
        for &d in &self.slots[i].deps {
            match self.slots[d].done() {
                Some(NodeState::Failed { .. }) => {
                    return Some(format!("dependency {} failed", self.slots[d].spec.id))
                }
                Some(NodeState::Skipped { .. }) => {
                    return Some(format!("dependency {} was skipped", self.slots[d].spec.id))
                }
                _ => {}
            }
        }
        let l = self.slots[i].spec.layer.index();
        self.layers[..l]
            .iter()
            .enumerate()
            .find(|(_, lower)| {
                matches!(
                    lower.finished,
                    Some((_, LayerStatus::Failed | LayerStatus::Skipped))
                )
            })
            .map(|(low, _)| format!("layer {} did not converge", Layer::ALL[low]))
    }

    fn start(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        slot.phase = SlotState::Running;
        slot.start = Some(Instant::now());
        self.running += 1;
        self.events.emit(Event::NodeStarted {
            id: slot.spec.id.clone(),
            layer: slot.spec.layer,
            description: slot.spec.description.clone(),
        });
        let attempt = NodeAttempts {
            index: i,
            spec: slot.spec.clone(),
            action: Arc::clone(&slot.action),
            shared: Arc::clone(&slot.shared),
            backoff: self.backoff,
            events: self.events.clone(),
            cancel: self.cancel.clone(),
        };
        let handle = self.join.spawn(attempt.run());
        self.tasks.insert(handle.id(), i);
    }

    fn finish_node(&mut self, i: usize, state: NodeState) {
        let now = Instant::now();
        let slot = &mut self.slots[i];
        let duration = slot.start.map(|s| now.saturating_duration_since(s));
        if slot.start.is_some() {
            slot.end = Some(now);
        }
        self.events.emit(Event::NodeFinished {
            id: slot.spec.id.clone(),
            layer: slot.spec.layer,
            result: state.clone(),
            duration_ms: duration.map(millis).unwrap_or(0),
            attempts: slot.shared.attempts(),
        });
        slot.phase = SlotState::Done(state);
    }

    fn finish_layer(&mut self, l: usize) {
        if self.layers[l].finished.is_some() {
            return;
        }
        let layer = &self.layers[l];
        let states: Vec<&NodeState> = layer
            .nodes
            .iter()
            .filter_map(|&i| self.slots[i].done())
            .collect();
        let any = |f: fn(&NodeState) -> bool| states.iter().any(|s| f(s));
        let status = if !layer.selected {
            LayerStatus::Excluded
        } else if any(|s| matches!(s, NodeState::Failed { .. })) {
            LayerStatus::Failed
        } else if any(|s| matches!(s, NodeState::Cancelled { .. })) {
            LayerStatus::Cancelled
        } else if layer.started.is_none() {
            if self.stop.is_some() {
                LayerStatus::Cancelled
            } else {
                LayerStatus::Skipped
            }
        } else if any(|s| matches!(s, NodeState::Skipped { .. })) {
            LayerStatus::Failed
        } else {
            LayerStatus::Converged
        };
        let end = layer
            .nodes
            .iter()
            .filter_map(|&i| self.slots[i].end)
            .max()
            .unwrap_or_else(Instant::now);
        let duration = layer
            .started
            .map(|s| end.saturating_duration_since(s))
            .unwrap_or_default();
        self.layers[l].finished = Some((end, status));
        self.events.emit(Event::LayerFinished {
            layer: Layer::ALL[l],
            status,
            duration_ms: millis(duration),
        });
    }

    fn summarize(self, error: Option<String>) -> RunSummary {
        let end = Instant::now();
        let duration = end.saturating_duration_since(self.t0);
        let offset = |t: Instant| t.saturating_duration_since(self.t0);
        let nodes: Vec<NodeResult> = self
            .slots
            .iter()
            .map(|slot| NodeResult {
                id: slot.spec.id.clone(),
                layer: slot.spec.layer,
                description: slot.spec.description.clone(),
                state: slot.done().cloned().unwrap_or(NodeState::Skipped {
                    reason: "never scheduled".to_string(),
                }),
                attempts: slot.shared.attempts(),
                start: slot.start.map(offset),
                duration: slot
                    .start
                    .zip(slot.end)
                    .map(|(s, e)| e.saturating_duration_since(s)),
                last_progress: slot.shared.last_progress(),
                in_flight_at_cancel: slot.in_flight_at_cancel,
            })
            .collect();
        let layers: Vec<LayerResult> = self
            .layers
            .iter()
            .zip(Layer::ALL)
            .map(|(rt, layer)| {
                let (finish, status) = rt.finished.unwrap_or((end, LayerStatus::Cancelled));
                LayerResult {
                    layer,
                    status,
                    nodes: rt.nodes.len(),
                    start: rt.started.map(offset),
                    duration: rt
                        .started
                        .map(|s| finish.saturating_duration_since(s))
                        .unwrap_or_default(),
                }
            })
            .collect();
        let converged = error.is_none() && nodes.iter().all(|n| n.state.satisfies());
        let cancelled = self.stop == Some(Stop::Cancelled);
        let timed: Vec<Timed<'_>> = self
            .slots
            .iter()
            .map(|slot| Timed {
                spec: &slot.spec,
                deps: &slot.deps,
                start: slot.start,
                end: slot.end,
            })
            .collect();
        let critical_path = critical_path(&timed, self.t0);
        self.events.emit(Event::RunFinished {
            run_id: self.run_id.clone(),
            converged,
            cancelled,
            duration_ms: millis(duration),
            error: error.clone(),
        });
        RunSummary {
            run_id: self.run_id,
            env: self.env,
            nodes,
            layers,
            duration,
            converged,
            cancelled,
            error,
            critical_path,
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn panic_message(err: JoinError) -> String {
    match err.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_string()),
        Err(_) => "(no message)".to_string(),
    }
}

/// "<what> while waiting for <description> (last progress: ...; last error: ...)".
fn waited_message(what: &str, description: &str, shared: &NodeShared) -> String {
    let mut message = format!("{what} while waiting for {description}");
    let context: Vec<String> = [
        shared
            .last_progress()
            .map(|p| format!("last progress: {p}")),
        shared.last_error().map(|e| format!("last error: {e}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !context.is_empty() {
        message.push_str(&format!(" ({})", context.join("; ")));
    }
    message
}

/// All attempts of one node, run as one task under the node timeout.
struct NodeAttempts {
    index: usize,
    spec: NodeSpec,
    action: Arc<dyn Action>,
    shared: Arc<NodeShared>,
    backoff: Policy,
    events: EventSink,
    cancel: CancelToken,
}

impl NodeAttempts {
    async fn run(self) -> (usize, NodeState) {
        let ctx = NodeCtx::new(
            &self.spec.id,
            self.spec.layer,
            self.events.clone(),
            self.cancel.clone(),
            Arc::clone(&self.shared),
        );
        let state = match tokio::time::timeout(self.spec.timeout, self.attempts(ctx)).await {
            Ok(state) => state,
            Err(_elapsed) => NodeState::Failed {
                error: waited_message(
                    &format!("timed out after {}", format_duration(self.spec.timeout)),
                    &self.spec.description,
                    &self.shared,
                ),
                timed_out: true,
            },
        };
        (self.index, state)
    }

    async fn attempts(&self, ctx: NodeCtx) -> NodeState {
        loop {
            let attempt = self.shared.attempts.fetch_add(1, Ordering::SeqCst) + 1;
            let err = match self.action.run(ctx.clone()).await {
                Ok(outcome) => return NodeState::Succeeded { outcome },
                Err(err) if err.kind == ErrorKind::Cancelled => {
                    return NodeState::Cancelled {
                        reason: err.chain(),
                        started: true,
                    }
                }
                Err(err) if !err.is_transient() => {
                    return NodeState::Failed {
                        error: err.chain(),
                        timed_out: false,
                    }
                }
                Err(err) => err.chain(),
            };
            self.shared.set_last_error(err.clone());
            let cancelled = || NodeState::Cancelled {
                reason: format!("cancelled before retrying; attempt {attempt} failed: {err}"),
                started: true,
            };
            // A retry is new work: after a cancel, none starts.
            if self.cancel.is_cancelled() {
                return cancelled();
            }
            let delay = self.backoff.delay(attempt);
            self.events.emit(Event::NodeRetry {
                id: self.spec.id.clone(),
                attempt,
                error: err.clone(),
                delay_ms: millis(delay),
            });
            tokio::select! {
                // Cancel-safe: a timer holds no state; losing the race only stops it.
                () = tokio::time::sleep(delay) => {}
                // Cancel-safe: waiting on the token only drops a watch receiver when it loses.
                () = self.cancel.cancelled() => return cancelled(),
            }
        }
    }
}
