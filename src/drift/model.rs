//! The drift report: per layer, what differs between the commit and the live system, and the exit
//! code that follows from it.

use std::time::{Duration, SystemTime};

use crate::engine::Layer;

/// The result of one `phoenix diff` (or one watch check) of one environment at one commit.
#[derive(Clone, Debug, PartialEq)]
pub struct DriftReport {
    /// Effective environment name (a drill copy has its own).
    pub env: String,
    /// The commit SHA the desired state was read from.
    pub commit: String,
    /// When the check started.
    pub checked_at: SystemTime,
    /// Wall time of the whole check.
    pub duration: Duration,
    /// One entry per layer, in gate order.
    pub layers: Vec<LayerDrift>,
}

/// What one layer's check concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriftStatus {
    InSync,
    Drift,
    /// The layer could not be checked (unreachable API, bad credentials, a timeout...). The
    /// message is shown to the user; it must not contain secrets.
    Error(String),
    /// Deliberately not checked (not in the environment, or left out with `--layers`).
    Skipped(String),
}

impl DriftStatus {
    /// The lowercase name used in JSON and in metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            DriftStatus::InSync => "in-sync",
            DriftStatus::Drift => "drift",
            DriftStatus::Error(_) => "error",
            DriftStatus::Skipped(_) => "skipped",
        }
    }
}

/// The drift of one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerDrift {
    pub layer: Layer,
    pub status: DriftStatus,
    /// Divergences from Git; empty unless `status` is `Drift`.
    pub entries: Vec<DriftEntry>,
    /// Objects that match Git but are not healthy; reported apart from drift and not counted in
    /// the exit code (re-applying Git would not fix them).
    pub unhealthy: Vec<Unhealthy>,
    /// Objects with fields that were not compared because their value in Git is made from a
    /// secret not available where the check ran; not drift, not in sync: unknown.
    pub unknown: Vec<UnknownValues>,
    /// How long this layer's check took.
    pub duration: Duration,
    /// What is worth knowing but is not drift (e.g. a newer image for a pinned lookup).
    pub notes: Vec<String>,
    /// Cloud layer: the age of each data volume's newest completed snapshot (metrics).
    pub backups: Vec<BackupAge>,
}

/// How old the newest completed snapshot of a data volume is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupAge {
    pub volume: String,
    /// `None`: the volume has no completed snapshot.
    pub age: Option<Duration>,
    /// `backup.recoveryPointObjective`.
    pub objective: Option<Duration>,
    pub snapshot: Option<String>,
}

/// An object with fields that could not be compared (see [`LayerDrift::unknown`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownValues {
    pub resource: String,
    /// Field paths, e.g. `data.token`.
    pub fields: Vec<String>,
}

impl LayerDrift {
    /// A layer that was checked: `Drift` when there is any entry, else `InSync`.
    pub fn checked(
        layer: Layer,
        entries: Vec<DriftEntry>,
        unhealthy: Vec<Unhealthy>,
        duration: Duration,
    ) -> Self {
        let status = if entries.is_empty() {
            DriftStatus::InSync
        } else {
            DriftStatus::Drift
        };
        LayerDrift {
            layer,
            status,
            entries,
            unhealthy,
            unknown: Vec::new(),
            duration,
            notes: Vec::new(),
            backups: Vec::new(),
        }
    }

    /// With the objects whose values could not all be compared.
    pub fn with_unknown(mut self, unknown: Vec<UnknownValues>) -> Self {
        self.unknown = unknown;
        self
    }

    /// A layer whose check failed.
    pub fn error(layer: Layer, message: impl Into<String>, duration: Duration) -> Self {
        LayerDrift {
            layer,
            status: DriftStatus::Error(message.into()),
            entries: Vec::new(),
            unhealthy: Vec::new(),
            unknown: Vec::new(),
            duration,
            notes: Vec::new(),
            backups: Vec::new(),
        }
    }

    /// A layer that was not checked on purpose.
    pub fn skipped(layer: Layer, reason: impl Into<String>) -> Self {
        LayerDrift {
            layer,
            status: DriftStatus::Skipped(reason.into()),
            entries: Vec::new(),
            unhealthy: Vec::new(),
            unknown: Vec::new(),
            duration: Duration::ZERO,
            notes: Vec::new(),
            backups: Vec::new(),
        }
    }

    /// Whether the layer shows drift. Entries count even if a caller built the struct by hand
    /// with an inconsistent status: drift is never hidden.
    pub fn has_drift(&self) -> bool {
        matches!(self.status, DriftStatus::Drift) || (!self.entries.is_empty() && !self.is_error())
    }

    pub fn is_error(&self) -> bool {
        matches!(self.status, DriftStatus::Error(_))
    }
}

/// The kind of one divergence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntryKind {
    /// In Git, not live.
    Missing,
    /// Live and owned by phoenix, no longer in Git.
    Extra,
    /// Live, but some fields differ from Git.
    Changed,
    /// An instance that is stopped (or stopping) while Git wants it running, or terminated.
    Stopped,
    /// A node that exists but is not Ready.
    NotReady,
    /// A Kubernetes version differs from the one in Git.
    Version,
    /// Git changes a field fixed at creation: the object is deleted and created again.
    Recreate,
}

impl EntryKind {
    /// The lowercase name used in JSON and human output.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Missing => "missing",
            EntryKind::Extra => "extra",
            EntryKind::Changed => "changed",
            EntryKind::Stopped => "stopped",
            EntryKind::NotReady => "not-ready",
            EntryKind::Version => "version",
            EntryKind::Recreate => "recreate",
        }
    }
}

/// One field that differs. For set members only one side is present (desired = to add, live =
/// to remove).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldDiff {
    /// Dotted path, e.g. `spec.replicas` or `ingress`.
    pub path: String,
    pub desired: Option<String>,
    pub live: Option<String>,
}

impl FieldDiff {
    pub fn new(
        path: impl Into<String>,
        desired: Option<impl Into<String>>,
        live: Option<impl Into<String>>,
    ) -> Self {
        FieldDiff {
            path: path.into(),
            desired: desired.map(Into::into),
            live: live.map(Into::into),
        }
    }

    /// Both sides present.
    pub fn value(
        path: impl Into<String>,
        desired: impl Into<String>,
        live: impl Into<String>,
    ) -> Self {
        FieldDiff {
            path: path.into(),
            desired: Some(desired.into()),
            live: Some(live.into()),
        }
    }
}

/// One divergence of one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriftEntry {
    pub layer: Layer,
    /// Stable id within the layer: `sg/cluster`, `node/i-0abc`, `Deployment/web/api`...
    pub resource: String,
    pub kind: EntryKind,
    pub fields: Vec<FieldDiff>,
    /// One line of context: what a missing resource would be, why a change needs a replace,
    /// the AWS ids of an extra resource.
    pub detail: Option<String>,
    /// A unified diff (live → desired) of the object's YAML, without colour codes.
    pub unified: Option<String>,
}

impl DriftEntry {
    pub fn new(layer: Layer, resource: impl Into<String>, kind: EntryKind) -> Self {
        DriftEntry {
            layer,
            resource: resource.into(),
            kind,
            fields: Vec::new(),
            detail: None,
            unified: None,
        }
    }

    pub fn with_fields(mut self, fields: Vec<FieldDiff>) -> Self {
        self.fields = fields;
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_unified(mut self, unified: impl Into<String>) -> Self {
        self.unified = Some(unified.into());
        self
    }
}

/// An object that matches Git but is not healthy (a Deployment without available replicas...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unhealthy {
    pub resource: String,
    pub reason: String,
}

/// Exit code of `phoenix diff`: in sync.
pub const EXIT_IN_SYNC: i32 = 0;
/// Exit code of `phoenix diff`: a layer could not be checked.
pub const EXIT_ERROR: i32 = 1;
/// Exit code of `phoenix diff`: drift found (and every layer was checked).
pub const EXIT_DRIFT: i32 = 2;

/// The exit code of a drift report: any layer in error → 1 (an unchecked layer might hide
/// drift, so neither 0 nor 2 would be honest); else any drift → 2; else 0. Skipped layers were
/// left out on purpose and do not change the code; unhealthy objects are not drift.
pub fn exit_code(report: &DriftReport) -> i32 {
    if report.layers.iter().any(LayerDrift::is_error) {
        EXIT_ERROR
    } else if report.layers.iter().any(LayerDrift::has_drift) {
        EXIT_DRIFT
    } else {
        EXIT_IN_SYNC
    }
}

impl DriftReport {
    pub fn exit_code(&self) -> i32 {
        exit_code(self)
    }

    /// Whether any layer shows drift (whatever the other layers say).
    pub fn has_drift(&self) -> bool {
        self.layers.iter().any(LayerDrift::has_drift)
    }

    /// Whether any layer could not be checked.
    pub fn has_error(&self) -> bool {
        self.layers.iter().any(LayerDrift::is_error)
    }

    /// The layers that show drift, in gate order.
    pub fn drifted_layers(&self) -> Vec<Layer> {
        self.layers
            .iter()
            .filter(|l| l.has_drift())
            .map(|l| l.layer)
            .collect()
    }

    /// Every drift entry of every layer, in gate order.
    pub fn entries(&self) -> impl Iterator<Item = &DriftEntry> {
        self.layers.iter().flat_map(|l| l.entries.iter())
    }

    pub fn entry_count(&self) -> usize {
        self.layers.iter().map(|l| l.entries.len()).sum()
    }

    pub fn layer(&self, layer: Layer) -> Option<&LayerDrift> {
        self.layers.iter().find(|l| l.layer == layer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(layers: Vec<LayerDrift>) -> DriftReport {
        DriftReport {
            env: "demo".into(),
            commit: "abc".into(),
            checked_at: SystemTime::UNIX_EPOCH,
            duration: Duration::ZERO,
            layers,
        }
    }

    fn drift(layer: Layer) -> LayerDrift {
        LayerDrift::checked(
            layer,
            vec![DriftEntry::new(layer, "x", EntryKind::Missing)],
            vec![],
            Duration::ZERO,
        )
    }

    fn sync(layer: Layer) -> LayerDrift {
        LayerDrift::checked(layer, vec![], vec![], Duration::ZERO)
    }

    #[test]
    fn exit_code_in_sync_is_zero() {
        let r = report(vec![sync(Layer::Cloud), sync(Layer::Cluster)]);
        assert_eq!(exit_code(&r), 0);
        assert!(!r.has_drift());
    }

    #[test]
    fn exit_code_drift_is_two() {
        let r = report(vec![sync(Layer::Cloud), drift(Layer::Apps)]);
        assert_eq!(exit_code(&r), 2);
        assert_eq!(r.drifted_layers(), vec![Layer::Apps]);
    }

    #[test]
    fn an_error_wins_over_drift() {
        let r = report(vec![
            drift(Layer::Cloud),
            LayerDrift::error(Layer::Cluster, "unreachable", Duration::ZERO),
        ]);
        assert_eq!(exit_code(&r), 1);
    }

    #[test]
    fn an_error_with_everything_else_in_sync_is_one_not_zero() {
        let r = report(vec![
            sync(Layer::Cloud),
            LayerDrift::error(Layer::Apps, "timed out", Duration::ZERO),
        ]);
        assert_eq!(exit_code(&r), 1);
    }

    #[test]
    fn skipped_layers_do_not_change_the_code() {
        let r = report(vec![
            sync(Layer::Cloud),
            LayerDrift::skipped(Layer::Apps, "--layers"),
        ]);
        assert_eq!(exit_code(&r), 0);
        let r = report(vec![
            drift(Layer::Cloud),
            LayerDrift::skipped(Layer::Apps, "--layers"),
        ]);
        assert_eq!(exit_code(&r), 2);
    }

    #[test]
    fn unhealthy_alone_is_not_drift() {
        let layer = LayerDrift::checked(
            Layer::Apps,
            vec![],
            vec![Unhealthy {
                resource: "Deployment/web/api".into(),
                reason: "0/2 available".into(),
            }],
            Duration::ZERO,
        );
        assert_eq!(layer.status, DriftStatus::InSync);
        assert_eq!(exit_code(&report(vec![layer])), 0);
    }

    #[test]
    fn entries_with_an_inconsistent_status_still_count_as_drift() {
        let mut layer = drift(Layer::Cloud);
        layer.status = DriftStatus::InSync;
        assert_eq!(exit_code(&report(vec![layer])), 2);
    }

    #[test]
    fn an_empty_report_is_in_sync() {
        assert_eq!(exit_code(&report(vec![])), 0);
    }
}
