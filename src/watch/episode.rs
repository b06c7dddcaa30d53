//! Drift episodes: when drift started, when it has persisted long enough to alert, and when it
//! cleared. A pure state machine fed one report at a time, so every rule is unit-tested
//! without clocks or HTTP.

use std::time::{Duration, Instant};

use crate::drift::DriftReport;
use crate::engine::Layer;

/// How a report reads for episodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckVerdict {
    /// Some layer that could be checked shows drift (other layers may be in error).
    Drift,
    /// Every layer was checked (or skipped on purpose) and none drifted.
    InSync,
    /// No drift seen, but some layer could not be checked: nothing is known about those
    /// layers, so an episode neither opens nor closes.
    Unknown,
}

impl CheckVerdict {
    pub fn of(report: &DriftReport) -> CheckVerdict {
        if report.has_drift() {
            CheckVerdict::Drift
        } else if report.has_error() {
            CheckVerdict::Unknown
        } else {
            CheckVerdict::InSync
        }
    }
}

/// What the agent should announce after a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// Drift has persisted for at least `alert_after`; sent once per episode.
    Alert {
        /// How long the drift has lasted so far.
        lasted: Duration,
    },
    /// An episode that was alerted is over: a fully checked report shows no drift.
    Converged {
        /// How long the episode lasted, from first drifted check to the clean one.
        lasted: Duration,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Clear,
    Drifting { since: Instant, alerted: bool },
}

/// The episode tracker of one environment.
#[derive(Clone, Debug)]
pub struct Episodes {
    alert_after: Duration,
    state: State,
}

impl Episodes {
    pub fn new(alert_after: Duration) -> Self {
        Episodes {
            alert_after,
            state: State::Clear,
        }
    }

    /// Feeds the report of a check that finished at `now`. Rules: drift opens an episode at its
    /// first drifted check; the first drifted check at least `alert_after` later alerts, once;
    /// a clean, fully checked report closes it (with a converged notice only if it alerted — an
    /// episode nobody was told about needs no all-clear); an unknown report changes nothing.
    pub fn observe(&mut self, now: Instant, verdict: CheckVerdict) -> Option<Notice> {
        match (self.state, verdict) {
            (_, CheckVerdict::Unknown) => None,
            (State::Clear, CheckVerdict::InSync) => None,
            (State::Clear, CheckVerdict::Drift) => {
                self.state = State::Drifting {
                    since: now,
                    alerted: false,
                };
                self.alert_if_due(now)
            }
            (State::Drifting { .. }, CheckVerdict::Drift) => self.alert_if_due(now),
            (State::Drifting { since, alerted }, CheckVerdict::InSync) => {
                self.state = State::Clear;
                alerted.then(|| Notice::Converged {
                    lasted: now.saturating_duration_since(since),
                })
            }
        }
    }

    fn alert_if_due(&mut self, now: Instant) -> Option<Notice> {
        let State::Drifting { since, alerted } = self.state else {
            return None;
        };
        let lasted = now.saturating_duration_since(since);
        if alerted || lasted < self.alert_after {
            return None;
        }
        self.state = State::Drifting {
            since,
            alerted: true,
        };
        Some(Notice::Alert { lasted })
    }

    /// A tracker that continues an episode another agent started (a fleet replica taking over an
    /// environment resumes the episode recorded on its Lease): drifting since `since`, alerted or
    /// not; `None` is no open episode.
    pub fn resume(alert_after: Duration, since: Option<Instant>, alerted: bool) -> Self {
        Episodes {
            alert_after,
            state: match since {
                Some(since) => State::Drifting { since, alerted },
                None => State::Clear,
            },
        }
    }

    /// Whether the open episode has been alerted (false when none is open).
    pub fn alerted(&self) -> bool {
        matches!(self.state, State::Drifting { alerted: true, .. })
    }

    /// Whether an episode is open, and since when.
    pub fn drifting_since(&self) -> Option<Instant> {
        match self.state {
            State::Drifting { since, .. } => Some(since),
            State::Clear => None,
        }
    }
}

/// How many entries an alert lists before "and N more".
pub const ALERT_ENTRIES: usize = 5;

/// The Slack-compatible text of an alert: env, commit, drifted layers, count, first entries.
pub fn alert_text(report: &DriftReport, lasted: Duration) -> String {
    let layers: Vec<&str> = report
        .drifted_layers()
        .iter()
        .map(|l: &Layer| l.as_str())
        .collect();
    let count = report.entry_count();
    let mut text = format!(
        "phoenix: {} has drifted from Git for {} (commit {}): {} {} in {}",
        report.env,
        crate::report::format_duration(lasted),
        short(&report.commit),
        count,
        if count == 1 { "resource" } else { "resources" },
        layers.join(", ")
    );
    for e in report.entries().take(ALERT_ENTRIES) {
        text.push_str(&format!(
            "\n• {} {} {}",
            e.layer,
            e.kind.as_str(),
            e.resource
        ));
    }
    if count > ALERT_ENTRIES {
        text.push_str(&format!("\n… and {} more", count - ALERT_ENTRIES));
    }
    text
}

/// The text of a converged notice.
pub fn converged_text(report: &DriftReport, lasted: Duration) -> String {
    format!(
        "phoenix: {} has converged with Git at commit {} (drift lasted {})",
        report.env,
        short(&report.commit),
        crate::report::format_duration(lasted)
    )
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::drift::{DriftEntry, EntryKind, LayerDrift};

    const S: Duration = Duration::from_secs(1);

    fn run(alert_after: Duration, script: &[(u64, CheckVerdict)]) -> Vec<(u64, Notice)> {
        let t0 = Instant::now();
        let mut e = Episodes::new(alert_after);
        script
            .iter()
            .filter_map(|&(t, v)| e.observe(t0 + S * t as u32, v).map(|n| (t, n)))
            .collect()
    }

    use CheckVerdict::{Drift, InSync, Unknown};

    #[test]
    fn a_resumed_alerted_episode_does_not_alert_again_and_closes_with_a_notice() {
        let t0 = Instant::now();
        let mut e = Episodes::resume(S * 3, Some(t0), true);
        assert!(e.alerted());
        assert_eq!(e.observe(t0 + S * 10, Drift), None);
        assert_eq!(
            e.observe(t0 + S * 12, InSync),
            Some(Notice::Converged { lasted: S * 12 })
        );
        let mut fresh = Episodes::resume(S * 3, Some(t0), false);
        assert_eq!(
            fresh.observe(t0 + S * 4, Drift),
            Some(Notice::Alert { lasted: S * 4 })
        );
        assert_eq!(Episodes::resume(S, None, true).drifting_since(), None);
    }

    #[test]
    fn one_alert_per_episode_after_alert_after() {
        let got = run(
            S * 3,
            &[
                (0, InSync),
                (1, Drift),
                (2, Drift),
                (3, Drift),
                (4, Drift),
                (5, Drift),
                (6, InSync),
            ],
        );
        assert_eq!(
            got,
            vec![
                (4, Notice::Alert { lasted: S * 3 }),
                (6, Notice::Converged { lasted: S * 5 })
            ]
        );
    }

    #[test]
    fn drift_that_clears_before_alert_after_is_silent() {
        let got = run(S * 10, &[(0, Drift), (5, Drift), (6, InSync), (7, InSync)]);
        assert_eq!(got, vec![]);
    }

    #[test]
    fn zero_alert_after_alerts_on_the_first_drifted_check() {
        let got = run(Duration::ZERO, &[(0, Drift), (1, Drift)]);
        assert_eq!(
            got,
            vec![(
                0,
                Notice::Alert {
                    lasted: Duration::ZERO
                }
            )]
        );
    }

    #[test]
    fn unknown_neither_opens_nor_closes() {
        assert_eq!(run(Duration::ZERO, &[(0, Unknown), (1, Unknown)]), vec![]);
        let got = run(
            Duration::ZERO,
            &[(0, Drift), (1, Unknown), (2, Unknown), (3, InSync)],
        );
        assert_eq!(
            got,
            vec![
                (
                    0,
                    Notice::Alert {
                        lasted: Duration::ZERO
                    }
                ),
                (3, Notice::Converged { lasted: S * 3 })
            ]
        );
    }

    #[test]
    fn unknown_checks_do_not_reset_the_episode_clock() {
        let got = run(S * 3, &[(0, Drift), (1, Unknown), (2, Unknown), (3, Drift)]);
        assert_eq!(got, vec![(3, Notice::Alert { lasted: S * 3 })]);
    }

    #[test]
    fn a_second_episode_alerts_again() {
        let got = run(
            S,
            &[(0, Drift), (1, Drift), (2, InSync), (3, Drift), (4, Drift)],
        );
        assert_eq!(
            got,
            vec![
                (1, Notice::Alert { lasted: S }),
                (2, Notice::Converged { lasted: S * 2 }),
                (4, Notice::Alert { lasted: S })
            ]
        );
    }

    fn report(layers: Vec<LayerDrift>) -> DriftReport {
        DriftReport {
            env: "demo".into(),
            commit: "0123456789abcdef".into(),
            checked_at: SystemTime::UNIX_EPOCH,
            duration: Duration::ZERO,
            layers,
        }
    }

    #[test]
    fn verdicts() {
        let sync = LayerDrift::checked(Layer::Cloud, vec![], vec![], Duration::ZERO);
        let drift = LayerDrift::checked(
            Layer::Apps,
            vec![DriftEntry::new(Layer::Apps, "x", EntryKind::Missing)],
            vec![],
            Duration::ZERO,
        );
        let err = LayerDrift::error(Layer::Cluster, "down", Duration::ZERO);
        assert_eq!(CheckVerdict::of(&report(vec![sync.clone()])), InSync);
        assert_eq!(
            CheckVerdict::of(&report(vec![sync.clone(), err.clone()])),
            Unknown
        );
        assert_eq!(CheckVerdict::of(&report(vec![drift, err])), Drift);
    }

    #[test]
    fn alert_text_lists_the_first_entries() {
        let entries: Vec<_> = (0..7)
            .map(|i| {
                DriftEntry::new(
                    Layer::Apps,
                    format!("ConfigMap/web/c{i}"),
                    EntryKind::Changed,
                )
            })
            .collect();
        let r = report(vec![
            LayerDrift::checked(
                Layer::Cloud,
                vec![DriftEntry::new(
                    Layer::Cloud,
                    "sg/cluster",
                    EntryKind::Changed,
                )],
                vec![],
                Duration::ZERO,
            ),
            LayerDrift::checked(Layer::Apps, entries, vec![], Duration::ZERO),
        ]);
        let want = "phoenix: demo has drifted from Git for 2m 5s (commit 0123456789ab): 8 resources in cloud, apps
• cloud changed sg/cluster
• apps changed ConfigMap/web/c0
• apps changed ConfigMap/web/c1
• apps changed ConfigMap/web/c2
• apps changed ConfigMap/web/c3
… and 3 more";
        assert_eq!(alert_text(&r, Duration::from_millis(125_400)), want);
        assert_eq!(
            converged_text(&r, Duration::from_secs(60)),
            "phoenix: demo has converged with Git at commit 0123456789ab (drift lasted 1m)"
        );
    }
}
