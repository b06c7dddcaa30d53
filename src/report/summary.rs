//! The human end-of-run report: per-layer status and timing, what failed and why, what a cancel
//! left behind, and the critical path.

use std::fmt::Write as _;

use super::format_duration;
use crate::engine::{LayerStatus, NodeState, RunSummary};

/// Renders `summary` as the plain-text report printed after `phoenix rebuild`.
pub fn render(summary: &RunSummary) -> String {
    let mut out = String::new();
    let verdict = if summary.converged {
        "converged"
    } else if summary.cancelled {
        "cancelled"
    } else {
        "failed"
    };
    let _ = writeln!(out, "{:<9} {:<10} {:>9}  nodes", "layer", "status", "time");
    for layer in &summary.layers {
        if layer.nodes == 0 && layer.status != LayerStatus::Excluded {
            // Not part of this environment (or this command): nothing ran there.
            let _ = writeln!(out, "{:<9} {:<10} {:>9}  0", layer.layer.as_str(), "-", "-");
            continue;
        }
        let time = match layer.status {
            LayerStatus::Excluded | LayerStatus::Skipped => "-".to_string(),
            _ if layer.start.is_none() => "-".to_string(),
            _ => format_duration(layer.duration),
        };
        let _ = writeln!(
            out,
            "{:<9} {:<10} {:>9}  {}",
            layer.layer.as_str(),
            layer.status.as_str(),
            time,
            layer.nodes
        );
    }
    let _ = writeln!(
        out,
        "{:<9} {:<10} {:>9}",
        "total",
        verdict,
        format_duration(summary.duration)
    );
    if let Some(error) = &summary.error {
        let _ = writeln!(out, "\nerror: {error}");
    }
    let failed: Vec<_> = summary.failed().collect();
    if !failed.is_empty() {
        let _ = writeln!(out, "\nfailed:");
        for node in failed {
            let _ = writeln!(
                out,
                "  ✗ {} ({} attempt{}): {}",
                node.id,
                node.attempts,
                if node.attempts == 1 { "" } else { "s" },
                node.state.detail().unwrap_or_default()
            );
        }
    }
    let skipped: Vec<_> = summary
        .nodes
        .iter()
        .filter(|n| matches!(n.state, NodeState::Skipped { .. }))
        .collect();
    if !skipped.is_empty() && summary.error.is_none() {
        let _ = writeln!(out, "\nskipped:");
        for node in skipped {
            let _ = writeln!(
                out,
                "  ↷ {}: {}",
                node.id,
                node.state.detail().unwrap_or_default()
            );
        }
    }
    let in_flight: Vec<&str> = summary
        .in_flight_at_cancel()
        .map(|n| n.id.as_str())
        .collect();
    let never: Vec<&str> = summary.never_started().map(|n| n.id.as_str()).collect();
    if summary.cancelled || !never.is_empty() {
        let _ = writeln!(
            out,
            "\nleft behind: {} completed; in flight at the cancel: {}; never started: {}",
            summary.completed().count(),
            list_or_none(&in_flight),
            list_or_none(&never)
        );
    }
    if !summary.critical_path.is_empty() {
        let steps: Vec<String> = summary
            .critical_path
            .iter()
            .map(|s| format!("{} ({})", s.id, format_duration(s.duration)))
            .collect();
        let _ = writeln!(out, "\ncritical path: {}", steps.join(" -> "));
    }
    out
}

fn list_or_none(ids: &[&str]) -> String {
    if ids.is_empty() {
        "none".to_string()
    } else {
        ids.join(", ")
    }
}
