//! Progress on stderr. On a terminal: one line per layer (spinner, status, elapsed) and one per
//! active node with its last progress message; each finished node prints one line above the bars.
//! Elsewhere (a log, a pipe): plain lines, see [`lines`].

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::io::Write;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::events::{Event, EventStream};
use super::format_duration;
use crate::engine::{Layer, LayerStatus, NodeState};

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// Live bars (stderr is a terminal, human output).
    Bars,
    /// Plain lines for logs: nodes started and finished, what they wait for, a heartbeat.
    Lines,
    /// Nothing is drawn.
    Off,
}

impl ProgressMode {
    /// Bars when stderr is a terminal, plain lines when it is not (a log, a pipe), nothing with
    /// JSON output (stdout then carries every event).
    pub fn detect(json_output: bool) -> Self {
        Self::choose(json_output, 0, std::io::stderr().is_terminal())
    }

    /// The rule of [`ProgressMode::detect`], with `-v` (`verbose` > 0): plain lines, which keep
    /// every step and wait, also on a terminal.
    pub fn choose(json_output: bool, verbose: u8, terminal: bool) -> Self {
        if json_output {
            ProgressMode::Off
        } else if terminal && verbose == 0 {
            ProgressMode::Bars
        } else {
            ProgressMode::Lines
        }
    }
}

/// Reads `stream` to its end, showing progress on stderr as `mode` says.
pub async fn show(stream: EventStream, mode: ProgressMode) {
    match mode {
        ProgressMode::Bars => draw(stream, ProgressDrawTarget::stderr()).await,
        ProgressMode::Lines => lines(stream, std::io::stderr(), HEARTBEAT).await,
        // Still drained, so the caller can await this reader like the others.
        ProgressMode::Off => drop(stream.collect().await),
    }
}

/// The one line printed for a finished node, or `None` for nodes of excluded layers.
pub fn node_line(id: &str, state: &NodeState, duration: Duration) -> Option<String> {
    let took = format_duration(duration);
    Some(match state {
        NodeState::Succeeded { outcome } => format!("✓ {id} {outcome} {took}"),
        NodeState::Failed { error, timed_out } => {
            let what = if *timed_out { "timed out" } else { "failed" };
            format!("✗ {id} {what} after {took}: {error}")
        }
        NodeState::Skipped { reason } => format!("↷ {id} skipped: {reason}"),
        NodeState::Cancelled { reason, .. } => format!("↷ {id} cancelled: {reason}"),
        NodeState::Excluded => return None,
    })
}

/// The line for a finished layer.
pub fn layer_line(layer: Layer, status: LayerStatus, duration: Duration) -> String {
    match status {
        LayerStatus::Excluded | LayerStatus::Skipped => format!("{layer} {status}"),
        _ => format!("{layer} {status} in {}", format_duration(duration)),
    }
}

/// How often [`lines`] repeats what a still-running node is waiting for.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// A node the line reader has seen start and not finish.
struct Running {
    since: tokio::time::Instant,
    last: Option<String>,
}

/// Plain progress for logs (stderr is not a terminal: CI, cron, `| tee`): a line when a node
/// starts, when what it is doing or waiting for changes, when an attempt fails and is retried,
/// when it finishes, and every `heartbeat` for each node still running, with what it waits for
/// and for how long. Write errors are ignored: a closed log is no reason to stop the run.
pub async fn lines<W: Write>(mut stream: EventStream, mut out: W, heartbeat: Duration) {
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    let mut empty: std::collections::BTreeSet<Layer> = std::collections::BTreeSet::new();
    let start = tokio::time::Instant::now() + heartbeat;
    let mut ticker = tokio::time::interval_at(start, heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let record = tokio::select! {
            // Cancel-safe: an unbounded channel receive loses nothing when it loses the race.
            record = stream.next() => match record {
                Some(record) => record,
                None => break,
            },
            // Cancel-safe: an interval tick that loses the race is simply taken next time.
            _ = ticker.tick() => {
                for (id, node) in &running {
                    let took = format_duration(node.since.elapsed());
                    let doing = node.last.as_deref().unwrap_or("running");
                    let _ = writeln!(out, "… {id}: {doing} ({took} so far)");
                }
                let _ = out.flush();
                continue;
            }
        };
        let line = match &record.event {
            // A layer without nodes (the env has none) says nothing.
            Event::LayerStarted { nodes: 0, layer } => {
                empty.insert(*layer);
                None
            }
            Event::LayerFinished { layer, .. } if empty.contains(layer) => None,
            Event::LayerStarted { layer, nodes } => Some(format!(
                "{layer} started ({nodes} node{})",
                if *nodes == 1 { "" } else { "s" }
            )),
            Event::NodeStarted {
                id, description, ..
            } => {
                running.insert(
                    id.clone(),
                    Running {
                        since: tokio::time::Instant::now(),
                        last: None,
                    },
                );
                Some(format!("→ {id} started: {description}"))
            }
            Event::NodeProgress { id, message } => match running.get_mut(id) {
                Some(node) if node.last.as_deref() == Some(message.as_str()) => None,
                Some(node) => {
                    node.last = Some(message.clone());
                    Some(format!("  {id}: {message}"))
                }
                None => Some(format!("  {id}: {message}")),
            },
            Event::NodeAudit { id, message } => Some(format!("  {id}: {message} (audited)")),
            Event::NodeRetry {
                id,
                attempt,
                error,
                delay_ms,
            } => Some(format!(
                "  {id}: attempt {attempt} failed, retrying in {}: {error}",
                format_duration(Duration::from_millis(*delay_ms))
            )),
            Event::NodeFinished {
                id,
                result,
                duration_ms,
                ..
            } => {
                running.remove(id);
                node_line(id, result, Duration::from_millis(*duration_ms))
            }
            Event::LayerFinished {
                layer,
                status,
                duration_ms,
            } => Some(layer_line(
                *layer,
                *status,
                Duration::from_millis(*duration_ms),
            )),
            Event::CancelRequested { reason, in_flight } => Some(cancel_line(reason, in_flight)),
            _ => None,
        };
        if let Some(line) = line {
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}

fn cancel_line(reason: &str, in_flight: &[String]) -> String {
    if in_flight.is_empty() {
        format!("{reason}: starting nothing new")
    } else {
        format!(
            "{reason}: starting nothing new, waiting for {} in flight ({})",
            in_flight.len(),
            in_flight.join(", ")
        )
    }
}

const LAYER_RUNNING: &str = "{spinner:.cyan} {prefix:<8.bold} {wide_msg} {elapsed:>5}";
const LAYER_IDLE: &str = "  {prefix:<8.bold} {wide_msg}";
const NODE_RUNNING: &str = "    {spinner:.dim} {prefix} {wide_msg:.dim} {elapsed:>5}";

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

struct LayerBar {
    bar: ProgressBar,
    total: usize,
    done: usize,
}

impl LayerBar {
    fn show_counts(&self) {
        self.bar
            .set_message(format!("{}/{} nodes done", self.done, self.total));
    }
}

/// Live bars drawn to `target` (stderr in the CLI; hidden in tests).
pub async fn draw(mut stream: EventStream, target: ProgressDrawTarget) {
    let multi = MultiProgress::with_draw_target(target);
    let mut layers: HashMap<Layer, LayerBar> = HashMap::new();
    let mut nodes: HashMap<String, ProgressBar> = HashMap::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(120));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let record = tokio::select! {
            // Cancel-safe: an unbounded channel receive loses nothing when it loses the race.
            record = stream.next() => match record {
                Some(record) => record,
                None => break,
            },
            // Cancel-safe: an interval tick that loses the race is simply taken next time.
            _ = ticker.tick() => {
                for bar in layers.values().map(|l| &l.bar).chain(nodes.values()) {
                    if !bar.is_finished() {
                        bar.tick();
                    }
                }
                continue;
            }
        };
        match &record.event {
            Event::RunStarted {
                layers: selected,
                nodes: planned,
                ..
            } => {
                for layer in Layer::ALL {
                    let total = planned.iter().filter(|n| n.layer == layer).count();
                    let bar = multi.add(ProgressBar::new_spinner());
                    bar.set_style(style(LAYER_IDLE));
                    bar.set_prefix(layer.as_str());
                    if selected.contains(&layer) {
                        bar.set_message(format!(
                            "waiting ({total} node{})",
                            if total == 1 { "" } else { "s" }
                        ));
                    } else {
                        bar.finish_with_message("excluded");
                    }
                    layers.insert(
                        layer,
                        LayerBar {
                            bar,
                            total,
                            done: 0,
                        },
                    );
                }
            }
            Event::LayerStarted { layer, .. } => {
                if let Some(l) = layers.get(layer) {
                    l.bar.set_style(style(LAYER_RUNNING));
                    l.bar.reset_elapsed();
                    l.show_counts();
                }
            }
            Event::LayerFinished {
                layer,
                status,
                duration_ms,
            } => {
                if let Some(l) = layers.get(layer) {
                    l.bar.set_style(style(LAYER_IDLE));
                    let took = Duration::from_millis(*duration_ms);
                    let message = match status {
                        LayerStatus::Excluded | LayerStatus::Skipped => status.to_string(),
                        _ => format!("{status} in {}", format_duration(took)),
                    };
                    l.bar.finish_with_message(message);
                }
            }
            Event::NodeStarted { id, .. } => {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(style(NODE_RUNNING));
                bar.set_prefix(id.clone());
                nodes.insert(id.clone(), bar);
            }
            Event::NodeProgress { id, message } => {
                if let Some(bar) = nodes.get(id) {
                    bar.set_message(message.clone());
                }
            }
            Event::NodeAudit { id, message } => {
                let _ = multi.println(format!("{id}: {message} (audited)"));
            }
            Event::NodeRetry {
                id,
                attempt,
                error,
                delay_ms,
            } => {
                if let Some(bar) = nodes.get(id) {
                    bar.set_message(format!(
                        "attempt {attempt} failed, retrying in {}: {error}",
                        format_duration(Duration::from_millis(*delay_ms))
                    ));
                }
            }
            Event::NodeFinished {
                id,
                layer,
                result,
                duration_ms,
                ..
            } => {
                if let Some(bar) = nodes.remove(id) {
                    bar.finish_and_clear();
                    multi.remove(&bar);
                }
                if let Some(l) = layers.get_mut(layer) {
                    l.done += 1;
                    if !l.bar.is_finished() {
                        l.show_counts();
                    }
                }
                if let Some(line) = node_line(id, result, Duration::from_millis(*duration_ms)) {
                    // A closed terminal is no reason to stop reading the stream.
                    let _ = multi.println(line);
                }
            }
            Event::CancelRequested { reason, in_flight } => {
                let _ = multi.println(cancel_line(reason, in_flight));
            }
            Event::RunFinished { .. } => {
                for bar in nodes.values() {
                    bar.finish_and_clear();
                }
                nodes.clear();
                for l in layers.values() {
                    if !l.bar.is_finished() {
                        l.bar.set_style(style(LAYER_IDLE));
                        l.bar.abandon();
                    }
                }
            }
        }
    }
}
