//! Operations by pull request: what merging a change does to one environment, compared between
//! two commits offline (`phoenix plan ENV --against REF`), optionally with the live system too;
//! shown for a terminal, as a versioned JSON document, or as a pull-request comment.

mod compare;
mod markdown;
mod report;
mod run;
mod state;

pub use compare::{
    compare_states, Action, Change, Comparison, Counts, Field, GateChange, Impact, LayerChanges,
    Pruned, Replaced,
};
pub use markdown::{markdown, marker};
pub use report::{human, Environments, Live, LiveEntry, Review, Status, REVIEW_SCHEMA_VERSION};
pub use run::{run, Request};
pub use state::{load, CloudItem, ComponentItem, EnvState, Side};
