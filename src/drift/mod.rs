//! Drift: what differs between the commit and the live system, per layer — the model, the pure
//! comparisons of each layer, the unified diff, the human/JSON views and Prometheus metrics.

mod cloud;
mod diff;
pub mod metrics;
mod model;
mod objects;
mod output;
mod volumes;

pub use cloud::{cloud_entries, TerminatedInstance};
pub use diff::{colorize, unified_diff, unified_diff_text, CONTEXT};
pub use model::{
    exit_code, BackupAge, DriftEntry, DriftReport, DriftStatus, EntryKind, FieldDiff, LayerDrift,
    Unhealthy, UnknownValues, EXIT_DRIFT, EXIT_ERROR, EXIT_IN_SYNC,
};
pub use objects::{field_diffs, object_entries, ObjectResult, ObjectState};
pub use output::{human, json, json_value, use_color, SCHEMA_VERSION};
pub use volumes::volume_entries;
