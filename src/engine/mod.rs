//! The engine: executes a graph of nodes with concurrency, layer gates, timeouts, retries and
//! cancellation, and emits one event stream. It knows nothing of the CLI or of providers; they
//! supply the graph and each node's [`Action`].
//!
//! Wiring from a command (the same shape is exercised by `tests/engine.rs`):
//!
//! ```ignore
//! let mut graph = Graph::new();
//! graph.add(NodeSpec::new("cloud/vpc", Layer::Cloud, Duration::from_secs(300), "VPC demo"), vpc)?;
//! graph.validate()?;
//! let sink = EventSink::new();
//! let progress = tokio::spawn(progress::show(sink.subscribe(), ProgressMode::detect(json)));
//! let lines = json.then(|| tokio::spawn(jsonl::write(sink.subscribe(), std::io::stdout())));
//! let audit = tokio::spawn(audit::record(sink.subscribe(), phoenix_home.clone()));
//! let opts = EngineOptions { layers, run: RunInfo::new(env, "rebuild", sha), ..Default::default() };
//! let summary = engine::run(graph, opts, sink, CancelToken::on_ctrl_c()).await; // drops the sink
//! progress.await?; // every reader ends when the stream does
//! ```

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
