//! The human end-of-run report: per-layer status and timing, what failed and why, what a cancel
//! left behind, and the critical path.

use std::fmt::Write as _;

use super::format_duration;
use crate::engine::{LayerStatus, NodeState, RunSummary};
use std::time::Duration;

/// The id prefix of the DNS cutover's nodes (and of the teardown's DNS node).
pub const DNS_STEP: &str = "dns/";

/// The wall time of the nodes whose ids start with `prefix`, from the first start to the last
/// end; `None` when none of them ran.
pub fn step_time(summary: &RunSummary, prefix: &str) -> Option<Duration> {
    let spans: Vec<(Duration, Duration)> = summary
        .nodes
        .iter()
        .filter(|n| n.id.starts_with(prefix))
        .filter_map(|n| Some((n.start?, n.start? + n.duration?)))
        .collect();
    let first = spans.iter().map(|s| s.0).min()?;
    let last = spans.iter().map(|s| s.1).max()?;
    Some(last.saturating_sub(first))
}

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
    if let Some(dns) = step_time(summary, DNS_STEP) {
        let records = summary
            .nodes
            .iter()
            .filter(|n| n.id.starts_with(DNS_STEP))
            .count();
        let _ = writeln!(
            out,
            "dns step {:>21}  {records} (Route 53, in the {} layer)",
            format_duration(dns),
            summary
                .nodes
                .iter()
                .find(|n| n.id.starts_with(DNS_STEP))
                .map(|n| n.layer.as_str())
                .unwrap_or("apps")
        );
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Layer, NodeOutcome, NodeResult};

    fn node(id: &str, start: Option<u64>, duration: Option<u64>) -> NodeResult {
        NodeResult {
            id: id.into(),
            layer: Layer::Apps,
            description: id.into(),
            state: NodeState::Succeeded {
                outcome: NodeOutcome::Created,
            },
            attempts: 1,
            start: start.map(Duration::from_millis),
            duration: duration.map(Duration::from_millis),
            last_progress: None,
            in_flight_at_cancel: false,
        }
    }

    fn summary(nodes: Vec<NodeResult>) -> RunSummary {
        RunSummary {
            run_id: "r".into(),
            env: "demo".into(),
            nodes,
            layers: Vec::new(),
            duration: Duration::from_secs(10),
            converged: true,
            cancelled: false,
            error: None,
            critical_path: Vec::new(),
        }
    }

    #[test]
    fn the_dns_step_spans_its_nodes_from_the_first_start_to_the_last_end() {
        let s = summary(vec![
            node("apps/web", Some(0), Some(5000)),
            node("dns/www/A", Some(5000), Some(1200)),
            node("dns/api/A", Some(5100), Some(1500)),
            node("dns/never/A", None, None),
        ]);
        assert_eq!(step_time(&s, DNS_STEP), Some(Duration::from_millis(1600)));
        let text = render(&s);
        assert!(
            text.contains("dns step") && text.contains("1s 600ms"),
            "{text}"
        );
        let none = summary(vec![node("apps/web", Some(0), Some(5000))]);
        assert_eq!(step_time(&none, DNS_STEP), None);
        assert!(!render(&none).contains("dns step"));
    }
}
