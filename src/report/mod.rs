//! Readers of the engine's event stream: terminal progress, JSON lines and the audit trail.
//!
//! Secrets: events carry only what providers put in progress and error messages. Providers must
//! never put secret values in those messages; every reader writes them out verbatim.

pub mod audit;
pub mod drill;
pub mod duration;
pub mod events;
pub mod jsonl;
pub mod output;
pub mod progress;
pub mod summary;

pub use duration::format_duration;
pub use events::{Event, EventRecord, EventSink, EventStream, RunInfo};
