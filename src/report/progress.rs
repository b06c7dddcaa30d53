//! Terminal progress on stderr: one line per layer (spinner, status, elapsed) and one per active
//! node with its last progress message; each finished node prints one line above the bars.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::events::{format_duration, Event, EventStream};
use crate::engine::{Layer, LayerStatus, NodeState};

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// Live bars (stderr is a terminal, human output).
    Bars,
    /// One plain line per finished node and layer, for logs.
    Lines,
    /// Nothing is drawn.
    Off,
}

impl ProgressMode {
    /// Bars when stderr is a terminal and the output mode is not JSON; otherwise nothing.
    pub fn detect(json_output: bool) -> Self {
        if json_output || !std::io::stderr().is_terminal() {
            ProgressMode::Off
        } else {
            ProgressMode::Bars
        }
    }
}

/// Reads `stream` to its end, showing progress on stderr as `mode` says.
pub async fn show(stream: EventStream, mode: ProgressMode) {
    match mode {
        ProgressMode::Bars => draw(stream, ProgressDrawTarget::stderr()).await,
        ProgressMode::Lines => print_lines(stream).await,
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

async fn print_lines(mut stream: EventStream) {
    while let Some(record) = stream.next().await {
        let line = match &record.event {
            Event::NodeFinished {
                id,
                result,
                duration_ms,
                ..
            } => node_line(id, result, Duration::from_millis(*duration_ms)),
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
            eprintln!("{line}");
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
