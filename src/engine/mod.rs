//! The engine: executes a graph of nodes with concurrency, layer gates, timeouts, retries and
//! cancellation, and emits one event stream. It knows nothing of the CLI or of providers; they
//! supply the graph and each node's [`Action`].

pub mod backoff;
mod cancel;
mod graph;
mod run;
mod summary;
mod wait;

pub use backoff::Policy;
pub use cancel::CancelToken;
pub use graph::{
    Action, BoxFuture, ErrorKind, Graph, GraphError, Layer, NodeError, NodeOutcome, NodeSpec,
    UnknownLayer,
};
pub use run::{run, EngineOptions};
pub use summary::{
    CriticalStep, LayerResult, LayerStatus, NodeResult, NodeState, Release, RunSummary,
};
pub use wait::{Check, NodeCtx};
