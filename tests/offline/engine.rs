//! Engine and event-reader tests with test-only node actions. Durations are tens of
//! milliseconds and assertions are about ordering, not wall-clock speed.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use phoenix::engine::{
    backoff::Jitter, run, Action, BoxFuture, CancelToken, Check, EngineOptions, ErrorKind, Graph,
    GraphError, Layer, LayerStatus, NodeCtx, NodeError, NodeOutcome, NodeSpec, NodeState, Policy,
    Release, RunSummary,
};
use phoenix::report::audit::{self, RunOutcome};
use phoenix::report::events::{Event, EventRecord, EventSink, RunInfo};
use phoenix::report::{jsonl, progress};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Test-only node actions

/// Start/end instants of every attempt, and how many attempts were in flight at once.
#[derive(Default)]
struct Log {
    spans: Mutex<Vec<(String, Instant, Instant)>>,
    current: AtomicUsize,
    max: AtomicUsize,
}

impl Log {
    fn enter(&self) -> Instant {
        let now = self.current.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        Instant::now()
    }

    fn leave(&self, id: &str, start: Instant) {
        self.current.fetch_sub(1, Ordering::SeqCst);
        self.spans
            .lock()
            .unwrap()
            .push((id.to_string(), start, Instant::now()));
    }

    fn span(&self, id: &str) -> (Instant, Instant) {
        let spans = self.spans.lock().unwrap();
        let (_, s, e) = spans
            .iter()
            .find(|(i, _, _)| i == id)
            .unwrap_or_else(|| panic!("{id} never ran"));
        (*s, *e)
    }

    fn ran(&self, id: &str) -> bool {
        self.spans.lock().unwrap().iter().any(|(i, _, _)| i == id)
    }

    fn max_in_flight(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

/// Sleeps, then succeeds; records its span.
struct Sleep {
    duration: Duration,
    log: Arc<Log>,
}

impl Action for Sleep {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, Result<NodeOutcome, NodeError>> {
        let duration = self.duration;
        let log = Arc::clone(&self.log);
        Box::pin(async move {
            let start = log.enter();
            ctx.progress(format!("sleeping {duration:?}"));
            tokio::time::sleep(duration).await;
            log.leave(ctx.id(), start);
            Ok(NodeOutcome::Created)
        })
    }
}

/// Fails transiently `failures` times, then succeeds.
struct Flaky {
    failures: u32,
    calls: AtomicU32,
}

impl Action for Flaky {
    fn run(&self, _ctx: NodeCtx) -> BoxFuture<'static, Result<NodeOutcome, NodeError>> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let failures = self.failures;
        Box::pin(async move {
            if call <= failures {
                Err(NodeError::transient(format!("throttled (call {call})")))
            } else {
                Ok(NodeOutcome::Updated)
            }
        })
    }
}

/// Always fails with the given kind.
struct Fails {
    kind: ErrorKind,
    calls: AtomicU32,
}

impl Fails {
    fn new(kind: ErrorKind) -> Self {
        Fails {
            kind,
            calls: AtomicU32::new(0),
        }
    }
}

impl Action for Fails {
    fn run(&self, _ctx: NodeCtx) -> BoxFuture<'static, Result<NodeOutcome, NodeError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let kind = self.kind;
        Box::pin(async move {
            let err = match kind {
                ErrorKind::Transient => NodeError::transient("endpoint busy"),
                ErrorKind::Permanent => NodeError::permanent("invalid CIDR"),
                ErrorKind::Cancelled => NodeError::cancelled("stopped waiting"),
            };
            Err(err.with_source(std::io::Error::other("root cause")))
        })
    }
}

/// Never finishes.
struct Never;

impl Action for Never {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, Result<NodeOutcome, NodeError>> {
        Box::pin(async move {
            ctx.progress("hanging");
            std::future::pending::<()>().await;
            Ok(NodeOutcome::Converged)
        })
    }
}

/// Reports progress, then waits (via `wait_for_state`) for an instance that stays "pending".
struct WaitsForInstance {
    wait: Duration,
}

impl Action for WaitsForInstance {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, Result<NodeOutcome, NodeError>> {
        let wait = self.wait;
        Box::pin(async move {
            ctx.progress("creating instance i-1");
            ctx.wait_for_state(
                "instance i-1 running",
                wait,
                Duration::from_millis(5),
                || async { Ok(Check::<()>::Waiting("pending".to_string())) },
            )
            .await?;
            Ok(NodeOutcome::Created)
        })
    }
}

struct Panics;

impl Action for Panics {
    fn run(&self, _ctx: NodeCtx) -> BoxFuture<'static, Result<NodeOutcome, NodeError>> {
        Box::pin(async move { panic!("provider bug") })
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn spec(id: &str, layer: Layer, deps: &[&str]) -> NodeSpec {
    NodeSpec::new(
        id,
        layer,
        Duration::from_secs(10),
        format!("test node {id}"),
    )
    .depends_on(deps.iter().copied())
}

fn sleep(ms: u64, log: &Arc<Log>) -> Arc<dyn Action> {
    Arc::new(Sleep {
        duration: Duration::from_millis(ms),
        log: Arc::clone(log),
    })
}

fn opts() -> EngineOptions {
    EngineOptions {
        concurrency: 8,
        backoff: Policy::fast_for_tests(),
        run: RunInfo::new("test", "rebuild", "0123456789abcdef"),
        ..EngineOptions::default()
    }
}

async fn run_graph(graph: Graph, opts: EngineOptions) -> (RunSummary, Vec<Arc<EventRecord>>) {
    run_with_cancel(graph, opts, CancelToken::new()).await
}

async fn run_with_cancel(
    graph: Graph,
    opts: EngineOptions,
    cancel: CancelToken,
) -> (RunSummary, Vec<Arc<EventRecord>>) {
    let sink = EventSink::new();
    let collector = tokio::spawn(sink.subscribe().collect());
    let summary = run(graph, opts, sink, cancel).await;
    let events = collector.await.expect("collector task");
    (summary, events)
}

fn state<'a>(summary: &'a RunSummary, id: &str) -> &'a NodeState {
    &summary
        .node(id)
        .unwrap_or_else(|| panic!("no node {id}"))
        .state
}

fn skipped_reason(summary: &RunSummary, id: &str) -> String {
    match state(summary, id) {
        NodeState::Skipped { reason } => reason.clone(),
        other => panic!("{id} not skipped: {other:?}"),
    }
}

fn failed_error(summary: &RunSummary, id: &str) -> (String, bool) {
    match state(summary, id) {
        NodeState::Failed { error, timed_out } => (error.clone(), *timed_out),
        other => panic!("{id} did not fail: {other:?}"),
    }
}

fn kinds(events: &[Arc<EventRecord>]) -> Vec<&'static str> {
    events.iter().map(|e| e.event.kind()).collect()
}

/// Position of the first event matching `pred`.
fn position(events: &[Arc<EventRecord>], pred: impl Fn(&Event) -> bool) -> usize {
    events
        .iter()
        .position(|e| pred(&e.event))
        .expect("event not found")
}

// ---------------------------------------------------------------------------------------------
// Scheduling

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_bound_is_respected() {
    let log = Arc::new(Log::default());
    let mut graph = Graph::new();
    for i in 0..12 {
        graph
            .add(
                spec(&format!("cloud/n{i}"), Layer::Cloud, &[]),
                sleep(40, &log),
            )
            .unwrap();
    }
    let (summary, _) = run_graph(
        graph,
        EngineOptions {
            concurrency: 3,
            ..opts()
        },
    )
    .await;
    assert!(summary.converged, "{summary:#?}");
    assert_eq!(
        log.max_in_flight(),
        3,
        "at most (and here exactly) 3 in flight"
    );
    assert_eq!(log.spans.lock().unwrap().len(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_nodes_overlap() {
    let log = Arc::new(Log::default());
    let mut graph = Graph::new();
    for i in 0..4 {
        graph
            .add(
                spec(&format!("cloud/n{i}"), Layer::Cloud, &[]),
                sleep(80, &log),
            )
            .unwrap();
    }
    let (summary, _) = run_graph(graph, opts()).await;
    assert!(summary.converged);
    assert!(
        log.max_in_flight() >= 2,
        "independent nodes ran one at a time"
    );
    let (s0, e0) = log.span("cloud/n0");
    let (s1, e1) = log.span("cloud/n1");
    assert!(s0 < e1 && s1 < e0, "n0 and n1 did not overlap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependencies_are_respected() {
    let log = Arc::new(Log::default());
    let mut graph = Graph::new();
    let edges: &[(&str, &[&str])] = &[
        ("cloud/d", &["cloud/b", "cloud/c"]),
        ("cloud/a", &[]),
        ("cloud/b", &["cloud/a"]),
        ("cloud/c", &["cloud/a"]),
        ("cloud/e", &["cloud/d"]),
    ];
    for (id, deps) in edges {
        graph
            .add(spec(id, Layer::Cloud, deps), sleep(20, &log))
            .unwrap();
    }
    let (summary, events) = run_graph(graph, opts()).await;
    assert!(summary.converged, "{summary:#?}");
    for (id, deps) in edges {
        for dep in *deps {
            assert!(
                log.span(id).0 >= log.span(dep).1,
                "{id} started before its dependency {dep} ended"
            );
            let started = position(
                &events,
                |e| matches!(e, Event::NodeStarted { id: i, .. } if i == id),
            );
            let dep_done = position(
                &events,
                |e| matches!(e, Event::NodeFinished { id: i, .. } if i == dep),
            );
            assert!(
                dep_done < started,
                "{id} started event before {dep} finished event"
            );
        }
    }
    // b and c are independent of each other and may overlap.
    assert!(log.max_in_flight() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_gate_holds_without_explicit_dependencies() {
    let log = Arc::new(Log::default());
    let mut graph = Graph::new();
    // Added in reverse layer order and with no dependencies at all: only the gate orders them.
    graph
        .add(spec("apps/web", Layer::Apps, &[]), sleep(10, &log))
        .unwrap();
    graph
        .add(spec("addons/ingress", Layer::Addons, &[]), sleep(20, &log))
        .unwrap();
    graph
        .add(spec("cluster/server", Layer::Cluster, &[]), sleep(20, &log))
        .unwrap();
    graph
        .add(spec("cloud/fast", Layer::Cloud, &[]), sleep(10, &log))
        .unwrap();
    graph
        .add(spec("cloud/slow", Layer::Cloud, &[]), sleep(80, &log))
        .unwrap();
    let (summary, events) = run_graph(graph, opts()).await;
    assert!(summary.converged, "{summary:#?}");
    let order = [
        vec!["cloud/fast", "cloud/slow"],
        vec!["cluster/server"],
        vec!["addons/ingress"],
        vec!["apps/web"],
    ];
    for (upper_index, upper) in order.iter().enumerate() {
        for lower in &order[..upper_index] {
            for u in upper {
                for l in lower {
                    assert!(
                        log.span(u).0 >= log.span(l).1,
                        "{u} started before {l} (a lower layer) ended"
                    );
                }
            }
        }
    }
    let layer_events: Vec<(&'static str, Layer)> = events
        .iter()
        .filter_map(|e| match &e.event {
            Event::LayerStarted { layer, .. } => Some(("started", *layer)),
            Event::LayerFinished { layer, .. } => Some(("finished", *layer)),
            _ => None,
        })
        .collect();
    let expected: Vec<(&'static str, Layer)> = Layer::ALL
        .iter()
        .flat_map(|l| [("started", *l), ("finished", *l)])
        .collect();
    assert_eq!(layer_events, expected);
    assert!(summary
        .layers
        .iter()
        .all(|l| l.status == LayerStatus::Converged));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependency_failure_skips_dependants_and_later_layers() {
    let log = Arc::new(Log::default());
    let mut graph = Graph::new();
    graph
        .add(
            spec("cloud/vpc", Layer::Cloud, &[]),
            Arc::new(Fails::new(ErrorKind::Permanent)),
        )
        .unwrap();
    graph
        .add(
            spec("cloud/subnet", Layer::Cloud, &["cloud/vpc"]),
            sleep(5, &log),
        )
        .unwrap();
    graph
        .add(
            spec("cloud/sg", Layer::Cloud, &["cloud/subnet"]),
            sleep(5, &log),
        )
        .unwrap();
    graph
        .add(spec("cloud/keypair", Layer::Cloud, &[]), sleep(30, &log))
        .unwrap();
    graph
        .add(spec("cluster/server", Layer::Cluster, &[]), sleep(5, &log))
        .unwrap();
    graph
        .add(spec("apps/web", Layer::Apps, &[]), sleep(5, &log))
        .unwrap();
    let (summary, events) = run_graph(graph, opts()).await;

    assert!(!summary.converged);
    let (error, timed_out) = failed_error(&summary, "cloud/vpc");
    assert_eq!(error, "invalid CIDR: root cause");
    assert!(!timed_out);
    assert_eq!(
        skipped_reason(&summary, "cloud/subnet"),
        "dependency cloud/vpc failed"
    );
    assert_eq!(
        skipped_reason(&summary, "cloud/sg"),
        "dependency cloud/subnet was skipped"
    );
    // An independent node of the same layer still runs to completion.
    assert!(state(&summary, "cloud/keypair").is_success());
    assert_eq!(
        skipped_reason(&summary, "cluster/server"),
        "layer cloud did not converge"
    );
    assert_eq!(
        skipped_reason(&summary, "apps/web"),
        "layer cloud did not converge"
    );
    for id in ["cloud/subnet", "cloud/sg", "cluster/server", "apps/web"] {
        assert!(!log.ran(id), "{id} ran");
        assert!(!events
            .iter()
            .any(|e| matches!(&e.event, Event::NodeStarted { id: i, .. } if i == id)));
    }
    let statuses: Vec<LayerStatus> = summary.layers.iter().map(|l| l.status).collect();
    assert_eq!(
        statuses,
        [
            LayerStatus::Failed,
            LayerStatus::Skipped,
            LayerStatus::Skipped,
            LayerStatus::Skipped
        ]
    );
    assert_eq!(summary.failed().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_are_retried_and_reported() {
    let mut graph = Graph::new();
    graph
        .add(
            spec("cloud/vpc", Layer::Cloud, &[]),
            Arc::new(Flaky {
                failures: 2,
                calls: AtomicU32::new(0),
            }),
        )
        .unwrap();
    let (summary, events) = run_graph(graph, opts()).await;
    assert!(summary.converged, "{summary:#?}");
    let node = summary.node("cloud/vpc").unwrap();
    assert_eq!(node.attempts, 3);
    assert_eq!(
        node.state,
        NodeState::Succeeded {
            outcome: NodeOutcome::Updated
        }
    );
    let retries: Vec<(u32, String, u64)> = events
        .iter()
        .filter_map(|e| match &e.event {
            Event::NodeRetry {
                attempt,
                error,
                delay_ms,
                ..
            } => Some((*attempt, error.clone(), *delay_ms)),
            _ => None,
        })
        .collect();
    // fast_for_tests: 2ms, doubling, no jitter.
    assert_eq!(
        retries,
        vec![
            (1, "throttled (call 1)".to_string(), 2),
            (2, "throttled (call 2)".to_string(), 4)
        ]
    );
    let finished = events
        .iter()
        .find_map(|e| match &e.event {
            Event::NodeFinished { attempts, .. } => Some(*attempts),
            _ => None,
        })
        .unwrap();
    assert_eq!(finished, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_fail_at_once() {
    let action = Arc::new(Fails::new(ErrorKind::Permanent));
    let mut graph = Graph::new();
    graph
        .add(spec("cloud/vpc", Layer::Cloud, &[]), action.clone())
        .unwrap();
    let (summary, events) = run_graph(graph, opts()).await;
    assert_eq!(action.calls.load(Ordering::SeqCst), 1);
    assert_eq!(summary.node("cloud/vpc").unwrap().attempts, 1);
    assert!(!kinds(&events).contains(&"nodeRetry"));
    assert!(!summary.converged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_bounded_by_the_node_timeout() {
    let action = Arc::new(Fails::new(ErrorKind::Transient));
    let mut graph = Graph::new();
    let mut node = spec("cloud/vpc", Layer::Cloud, &[]);
    node.timeout = Duration::from_millis(100);
    node.description = "VPC 10.40.0.0/16".to_string();
    graph.add(node, action.clone()).unwrap();
    let (summary, events) = run_graph(graph, opts()).await;
    let (error, timed_out) = failed_error(&summary, "cloud/vpc");
    assert!(timed_out);
    assert!(
        error.starts_with("timed out after 100ms while waiting for VPC 10.40.0.0/16"),
        "{error}"
    );
    assert!(
        error.contains("last error: endpoint busy: root cause"),
        "{error}"
    );
    let calls = action.calls.load(Ordering::SeqCst);
    assert!(calls > 1, "no retries happened");
    assert_eq!(summary.node("cloud/vpc").unwrap().attempts, calls);
    let retries = kinds(&events).iter().filter(|k| **k == "nodeRetry").count() as u32;
    assert!(retries >= calls - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_timeout_names_description_and_last_progress() {
    let mut graph = Graph::new();
    let mut node = spec("cloud/instance/server-0", Layer::Cloud, &[]);
    node.timeout = Duration::from_millis(150);
    node.description = "instance server-0".to_string();
    graph
        .add(
            node,
            Arc::new(WaitsForInstance {
                wait: Duration::from_secs(60),
            }),
        )
        .unwrap();
    let (summary, events) = run_graph(graph, opts()).await;
    let (error, timed_out) = failed_error(&summary, "cloud/instance/server-0");
    assert!(timed_out);
    assert_eq!(
        error,
        "timed out after 150ms while waiting for instance server-0 \
         (last progress: waiting for instance i-1 running: pending)"
    );
    let progress: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.event {
            Event::NodeProgress { message, .. } => Some(message.clone()),
            _ => None,
        })
        .collect();
    // The observed state is reported once, not on every poll.
    assert_eq!(
        progress,
        [
            "creating instance i-1",
            "waiting for instance i-1 running",
            "waiting for instance i-1 running: pending"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_until_timeout_names_what_and_last_state() {
    let mut graph = Graph::new();
    graph
        .add(
            spec("cloud/instance/server-0", Layer::Cloud, &[]),
            Arc::new(WaitsForInstance {
                wait: Duration::from_millis(60),
            }),
        )
        .unwrap();
    let (summary, _) = run_graph(graph, opts()).await;
    let (error, timed_out) = failed_error(&summary, "cloud/instance/server-0");
    // The wait's own deadline fails the attempt permanently; it is not the node timeout.
    assert!(!timed_out);
    assert_eq!(summary.node("cloud/instance/server-0").unwrap().attempts, 1);
    assert_eq!(
        error,
        "timed out after 60ms waiting for instance i-1 running (last observed: pending)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_until_returns_the_value_and_tolerates_transient_errors() {
    let sink = EventSink::new();
    let ctx = NodeCtx::standalone("apps/web", Layer::Apps, sink.clone(), CancelToken::new());
    let polls = AtomicU32::new(0);
    let value = ctx
        .wait_until(
            "rollout of web",
            Duration::from_secs(10),
            Duration::from_millis(1),
            || {
                let n = polls.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    match n {
                        1 => Err(NodeError::transient("connection refused")),
                        2 => Ok(None),
                        _ => Ok(Some(n * 10)),
                    }
                }
            },
        )
        .await
        .unwrap();
    assert_eq!(value, 30);
    let err = ctx
        .wait_until(
            "rollout of web",
            Duration::from_secs(10),
            Duration::from_millis(1),
            || async { Err::<Option<()>, _>(NodeError::permanent("forbidden")) },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permanent);
    assert_eq!(err.message, "forbidden");
    let err = ctx
        .wait_until(
            "rollout of web",
            Duration::from_millis(30),
            Duration::from_millis(1),
            || async { Err::<Option<()>, _>(NodeError::transient("connection refused")) },
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.message,
        "timed out after 30ms waiting for rollout of web (last observed: error: connection refused)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_action_fails_its_node() {
    let log = Arc::new(Log::default());
    let mut graph = Graph::new();
    graph
        .add(spec("cloud/bad", Layer::Cloud, &[]), Arc::new(Panics))
        .unwrap();
    graph
        .add(
            spec("cloud/after", Layer::Cloud, &["cloud/bad"]),
            sleep(1, &log),
        )
        .unwrap();
    let (summary, _) = run_graph(graph, opts()).await;
    let (error, _) = failed_error(&summary, "cloud/bad");
    assert_eq!(error, "node action panicked: provider bug");
    assert_eq!(
        skipped_reason(&summary, "cloud/after"),
        "dependency cloud/bad failed"
    );
}

// ---------------------------------------------------------------------------------------------
// Validation

#[test]
fn graph_validation_errors_name_the_problem() {
    let mut graph = Graph::new();
    graph
        .add(spec("cloud/a", Layer::Cloud, &[]), Arc::new(Never))
        .unwrap();
    let err = graph
        .add(spec("cloud/a", Layer::Cloud, &[]), Arc::new(Never))
        .unwrap_err();
    assert_eq!(err, GraphError::DuplicateId("cloud/a".into()));
    assert_eq!(err.to_string(), "duplicate node id `cloud/a`");
    assert_eq!(graph.len(), 1);

    let mut graph = Graph::new();
    graph
        .add(
            spec("cloud/a", Layer::Cloud, &["cloud/nope"]),
            Arc::new(Never),
        )
        .unwrap();
    assert_eq!(
        graph.validate().unwrap_err().to_string(),
        "node `cloud/a` depends on unknown node `cloud/nope`"
    );

    let mut graph = Graph::new();
    graph
        .add(spec("cloud/x", Layer::Cloud, &[]), Arc::new(Never))
        .unwrap();
    graph
        .add(
            spec("cloud/a", Layer::Cloud, &["cloud/x", "cloud/c"]),
            Arc::new(Never),
        )
        .unwrap();
    graph
        .add(spec("cloud/b", Layer::Cloud, &["cloud/a"]), Arc::new(Never))
        .unwrap();
    graph
        .add(spec("cloud/c", Layer::Cloud, &["cloud/b"]), Arc::new(Never))
        .unwrap();
    let err = graph.validate().unwrap_err();
    assert_eq!(
        err,
        GraphError::Cycle(vec![
            "cloud/a".into(),
            "cloud/c".into(),
            "cloud/b".into(),
            "cloud/a".into()
        ])
    );
    assert_eq!(
        err.to_string(),
        "dependency cycle: cloud/a -> cloud/c -> cloud/b -> cloud/a"
    );

    let mut graph = Graph::new();
    graph
        .add(spec("cloud/a", Layer::Cloud, &["cloud/a"]), Arc::new(Never))
        .unwrap();
    assert_eq!(
        graph.validate().unwrap_err().to_string(),
        "dependency cycle: cloud/a -> cloud/a"
    );

    let mut graph = Graph::new();
    graph
        .add(
            spec("cloud/a", Layer::Cloud, &["apps/web"]),
            Arc::new(Never),
        )
        .unwrap();
    graph
        .add(spec("apps/web", Layer::Apps, &[]), Arc::new(Never))
        .unwrap();
    assert_eq!(
        graph.validate().unwrap_err().to_string(),
        "node `cloud/a` (layer cloud) depends on `apps/web` in the later layer apps"
    );

    let mut graph = Graph::new();
    graph
        .add(spec("cloud/a", Layer::Cloud, &[]), Arc::new(Never))
        .unwrap();
    graph
        .add(spec("apps/web", Layer::Apps, &["cloud/a"]), Arc::new(Never))
        .unwrap();
    assert_eq!(graph.validate(), Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_graph_runs_nothing() {
    let log = Arc::new(Log::default());
    let mut graph = Graph::new();
    graph
        .add(spec("cloud/a", Layer::Cloud, &["cloud/b"]), sleep(1, &log))
        .unwrap();
    graph
        .add(spec("cloud/b", Layer::Cloud, &["cloud/a"]), sleep(1, &log))
        .unwrap();
    let (summary, events) = run_graph(graph, opts()).await;
    assert!(!summary.converged);
    assert_eq!(
        summary.error.as_deref(),
        Some("invalid graph: dependency cycle: cloud/a -> cloud/b -> cloud/a")
    );
    assert!(!log.ran("cloud/a") && !log.ran("cloud/b"));
    assert!(!kinds(&events).contains(&"nodeStarted"));
    assert_eq!(kinds(&events).last(), Some(&"runFinished"));
}

#[test]
fn layers_parse_and_display_lowercase() {
    assert_eq!(
        Layer::ALL.map(|l| l.to_string()),
        ["cloud", "cluster", "addons", "apps"]
    );
    assert_eq!("addons".parse::<Layer>(), Ok(Layer::Addons));
    assert!("network".parse::<Layer>().is_err());
    assert!(Layer::Cloud < Layer::Cluster && Layer::Addons < Layer::Apps);
    assert_eq!(
        serde_json::to_string(&Layer::Cluster).unwrap(),
        "\"cluster\""
    );
}

// ---------------------------------------------------------------------------------------------
// Cancellation, run timeout, layer filter

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_lets_in_flight_nodes_finish_and_starts_nothing_new() {
    let log = Arc::new(Log::default());
    let mut graph = Graph::new();
    graph
        .add(spec("cloud/a", Layer::Cloud, &[]), sleep(150, &log))
        .unwrap();
    graph
        .add(spec("cloud/b", Layer::Cloud, &[]), sleep(150, &log))
        .unwrap();
    graph
        .add(spec("cloud/c", Layer::Cloud, &[]), sleep(10, &log))
        .unwrap();
    graph
        .add(spec("cloud/d", Layer::Cloud, &["cloud/a"]), sleep(10, &log))
        .unwrap();
    graph
        .add(spec("cluster/server", Layer::Cluster, &[]), sleep(10, &log))
        .unwrap();

    let sink = EventSink::new();
    let mut watcher = sink.subscribe();
    let collector = tokio::spawn(sink.subscribe().collect());
    let cancel = CancelToken::new();
    let engine = tokio::spawn(run(
        graph,
        EngineOptions {
            concurrency: 2,
            ..opts()
        },
        sink,
        cancel.clone(),
    ));
    let mut started = 0;
    while let Some(record) = watcher.next().await {
        if matches!(record.event, Event::NodeStarted { .. }) {
            started += 1;
            if started == 2 {
                cancel.cancel();
                break;
            }
        }
    }
    drop(watcher);
    let summary = engine.await.unwrap();
    let events = collector.await.unwrap();

    assert!(summary.cancelled);
    assert!(!summary.converged);
    for id in ["cloud/a", "cloud/b"] {
        let node = summary.node(id).unwrap();
        assert!(node.state.is_success(), "{id}: {:?}", node.state);
        assert!(node.in_flight_at_cancel);
    }
    for id in ["cloud/c", "cloud/d", "cluster/server"] {
        assert_eq!(
            *state(&summary, id),
            NodeState::Cancelled {
                reason: "run cancelled before the node started".into(),
                started: false
            }
        );
        assert!(!log.ran(id), "{id} ran after the cancel");
    }
    let in_flight: Vec<&str> = summary
        .in_flight_at_cancel()
        .map(|n| n.id.as_str())
        .collect();
    assert_eq!(in_flight, ["cloud/a", "cloud/b"]);
    let never: Vec<&str> = summary.never_started().map(|n| n.id.as_str()).collect();
    assert_eq!(never, ["cloud/c", "cloud/d", "cluster/server"]);
    assert_eq!(summary.completed().count(), 2);

    let cancel_at = position(&events, |e| matches!(e, Event::CancelRequested { .. }));
    match &events[cancel_at].event {
        Event::CancelRequested { in_flight, .. } => assert_eq!(in_flight, &["cloud/a", "cloud/b"]),
        _ => unreachable!(),
    }
    assert!(
        !events[cancel_at..].iter().any(|e| matches!(
            e.event,
            Event::NodeStarted { .. } | Event::LayerStarted { .. }
        )),
        "something started after the cancel"
    );
    assert_eq!(
        summary.layer(Layer::Cloud).unwrap().status,
        LayerStatus::Cancelled
    );
    assert!(matches!(
        events.last().map(|e| &e.event),
        Some(Event::RunFinished {
            cancelled: true,
            converged: false,
            ..
        })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_node_waiting_to_retry() {
    let mut graph = Graph::new();
    let mut node = spec("cloud/vpc", Layer::Cloud, &[]);
    node.timeout = Duration::from_secs(5);
    graph
        .add(node, Arc::new(Fails::new(ErrorKind::Transient)))
        .unwrap();
    // A backoff far longer than the node timeout: only the cancel can end the wait early.
    let slow = Policy {
        name: "slow",
        initial: Duration::from_secs(60),
        multiplier: 1,
        max: Duration::from_secs(60),
        jitter: Jitter::None,
    };
    let sink = EventSink::new();
    let mut watcher = sink.subscribe();
    let cancel = CancelToken::new();
    let engine = tokio::spawn(run(
        graph,
        EngineOptions {
            backoff: slow,
            ..opts()
        },
        sink,
        cancel.clone(),
    ));
    while let Some(record) = watcher.next().await {
        if matches!(record.event, Event::NodeRetry { .. }) {
            cancel.cancel();
            break;
        }
    }
    let summary = engine.await.unwrap();
    match state(&summary, "cloud/vpc") {
        NodeState::Cancelled { reason, started } => {
            assert!(started);
            assert_eq!(
                reason,
                "cancelled before retrying; attempt 1 failed: endpoint busy: root cause"
            );
        }
        other => panic!("not cancelled: {other:?}"),
    }
    assert!(summary.cancelled);
}

/// Waits ten minutes for a condition that never holds.
struct WaitsForever;

impl Action for WaitsForever {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, Result<NodeOutcome, NodeError>> {
        Box::pin(async move {
            ctx.wait_for_state(
                "the moon",
                Duration::from_secs(600),
                Duration::from_millis(20),
                || async { Ok(Check::<()>::Waiting("not risen".into())) },
            )
            .await?;
            Ok(NodeOutcome::Converged)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cancel_ends_a_wait_at_once_and_names_what_it_waited_for() {
    let mut graph = Graph::new();
    let mut node = spec("cluster/control-plane", Layer::Cluster, &[]);
    node.timeout = Duration::from_secs(660);
    graph.add(node, Arc::new(WaitsForever)).unwrap();
    let sink = EventSink::new();
    let mut watcher = sink.subscribe();
    let cancel = CancelToken::new();
    let engine = tokio::spawn(run(graph, opts(), sink, cancel.clone()));
    while let Some(record) = watcher.next().await {
        if matches!(&record.event, Event::NodeProgress { message, .. } if message.ends_with("not risen"))
        {
            cancel.cancel();
            break;
        }
    }
    let summary = tokio::time::timeout(Duration::from_secs(5), engine)
        .await
        .expect("the cancel ends the ten-minute wait at once")
        .unwrap();
    match state(&summary, "cluster/control-plane") {
        NodeState::Cancelled { reason, started } => {
            assert!(started);
            assert_eq!(
                reason,
                "cancelled while waiting for the moon (last observed: not risen)"
            );
        }
        other => panic!("not cancelled: {other:?}"),
    }
    assert!(summary.cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_timeout_stops_in_flight_nodes() {
    let log = Arc::new(Log::default());
    let mut graph = Graph::new();
    let mut hang = spec("cloud/hang", Layer::Cloud, &[]);
    hang.description = "a node that never ends".into();
    graph.add(hang, Arc::new(Never)).unwrap();
    graph
        .add(
            spec("cloud/next", Layer::Cloud, &["cloud/hang"]),
            sleep(1, &log),
        )
        .unwrap();
    graph
        .add(spec("cloud/other", Layer::Cloud, &[]), sleep(1, &log))
        .unwrap();
    let (summary, events) = run_graph(
        graph,
        EngineOptions {
            concurrency: 1,
            run_timeout: Some(Duration::from_millis(100)),
            ..opts()
        },
    )
    .await;
    let (error, timed_out) = failed_error(&summary, "cloud/hang");
    assert!(timed_out);
    assert_eq!(
        error,
        "run timeout of 100ms expired while waiting for a node that never ends (last progress: hanging)"
    );
    assert_eq!(
        skipped_reason(&summary, "cloud/next"),
        "dependency cloud/hang failed"
    );
    assert_eq!(
        *state(&summary, "cloud/other"),
        NodeState::Cancelled {
            reason: "run timeout of 100ms expired before the node started".into(),
            started: false
        }
    );
    assert!(!log.ran("cloud/other"));
    assert!(summary.node("cloud/hang").unwrap().in_flight_at_cancel);
    assert!(!summary.cancelled && !summary.converged);
    assert!(kinds(&events).contains(&"cancelRequested"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_filter_excludes_other_layers() {
    let log = Arc::new(Log::default());
    let mut graph = Graph::new();
    graph
        .add(
            spec("cloud/vpc", Layer::Cloud, &[]),
            Arc::new(Fails::new(ErrorKind::Permanent)),
        )
        .unwrap();
    graph
        .add(
            spec("cluster/server", Layer::Cluster, &["cloud/vpc"]),
            sleep(5, &log),
        )
        .unwrap();
    graph
        .add(spec("cluster/token", Layer::Cluster, &[]), sleep(5, &log))
        .unwrap();
    graph
        .add(spec("addons/ingress", Layer::Addons, &[]), sleep(5, &log))
        .unwrap();
    graph
        .add(spec("apps/web", Layer::Apps, &[]), sleep(5, &log))
        .unwrap();
    let (summary, events) = run_graph(
        graph,
        EngineOptions {
            layers: Some(BTreeSet::from([Layer::Cluster, Layer::Addons])),
            ..opts()
        },
    )
    .await;
    assert!(summary.converged, "{summary:#?}");
    // The excluded cloud node (which would fail) never runs and counts as converged.
    assert_eq!(*state(&summary, "cloud/vpc"), NodeState::Excluded);
    assert_eq!(*state(&summary, "apps/web"), NodeState::Excluded);
    assert!(log.ran("cluster/server") && log.ran("cluster/token") && log.ran("addons/ingress"));
    assert!(!log.ran("apps/web"));
    let statuses: Vec<LayerStatus> = summary.layers.iter().map(|l| l.status).collect();
    assert_eq!(
        statuses,
        [
            LayerStatus::Excluded,
            LayerStatus::Converged,
            LayerStatus::Converged,
            LayerStatus::Excluded
        ]
    );
    match &events[0].event {
        Event::RunStarted { layers, nodes, .. } => {
            assert_eq!(layers, &[Layer::Cluster, Layer::Addons]);
            assert_eq!(nodes.len(), 5);
        }
        other => panic!("first event is {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Summary

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_nodes_are_not_on_the_critical_path() {
    let log = Arc::new(Log::default());
    let mut graph = Graph::new();
    graph
        .add(spec("addons/ingress", Layer::Addons, &[]), sleep(40, &log))
        .unwrap();
    // The prune node runs after every component of its layer, so it ends last.
    graph
        .add(
            spec("addons/.removed", Layer::Addons, &["addons/ingress"]),
            sleep(40, &log),
        )
        .unwrap();
    graph
        .add(spec("apps/web", Layer::Apps, &[]), sleep(20, &log))
        .unwrap();
    graph
        .add(
            spec("apps/.removed", Layer::Apps, &["apps/web"]),
            sleep(40, &log),
        )
        .unwrap();
    let (summary, _) = run_graph(graph, opts()).await;
    assert!(summary.converged);
    let path: Vec<&str> = summary
        .critical_path
        .iter()
        .map(|s| s.id.as_str())
        .collect();
    assert_eq!(
        path,
        ["addons/ingress", "apps/web"],
        "{:#?}",
        summary.critical_path
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_path_follows_the_releasing_chain() {
    let log = Arc::new(Log::default());
    let mut graph = Graph::new();
    graph
        .add(spec("cloud/a", Layer::Cloud, &[]), sleep(20, &log))
        .unwrap();
    graph
        .add(spec("cloud/b", Layer::Cloud, &[]), sleep(250, &log))
        .unwrap();
    graph
        .add(spec("cloud/c", Layer::Cloud, &["cloud/a"]), sleep(20, &log))
        .unwrap();
    graph
        .add(spec("cluster/k", Layer::Cluster, &[]), sleep(20, &log))
        .unwrap();
    graph
        .add(spec("apps/x", Layer::Apps, &[]), sleep(60, &log))
        .unwrap();
    graph
        .add(spec("apps/y", Layer::Apps, &["apps/x"]), sleep(60, &log))
        .unwrap();
    graph
        .add(spec("apps/z", Layer::Apps, &[]), sleep(5, &log))
        .unwrap();
    let (summary, _) = run_graph(graph, opts()).await;
    assert!(summary.converged);
    let path: Vec<(&str, Release, Option<&str>)> = summary
        .critical_path
        .iter()
        .map(|s| (s.id.as_str(), s.released_by, s.after.as_deref()))
        .collect();
    assert_eq!(
        path,
        [
            ("cloud/b", Release::Start, None),
            ("cluster/k", Release::Gate, Some("cloud/b")),
            ("apps/x", Release::Gate, Some("cluster/k")),
            ("apps/y", Release::Dependency, Some("apps/x")),
        ]
    );
    for pair in summary.critical_path.windows(2) {
        assert!(pair[1].start >= pair[0].start + pair[0].duration);
    }
    let total = summary.duration;
    let last = summary.critical_path.last().unwrap();
    assert!(last.start + last.duration <= total);
    // Per-layer timing is reported in gate order.
    let cloud = summary.layer(Layer::Cloud).unwrap();
    assert!(cloud.duration >= Duration::from_millis(250));
    assert_eq!(cloud.nodes, 3);
}

// ---------------------------------------------------------------------------------------------
// Readers

#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Waits until `ready_after` has passed, reporting "N polls" as its observed state.
struct WaitsAWhile {
    ready_after: Duration,
}

impl Action for WaitsAWhile {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, Result<NodeOutcome, NodeError>> {
        let ready_at = Instant::now() + self.ready_after;
        Box::pin(async move {
            ctx.wait_for_state(
                "the api server",
                Duration::from_secs(60),
                Duration::from_millis(20),
                || async move {
                    Ok(if Instant::now() >= ready_at {
                        Check::Ready(())
                    } else {
                        Check::Waiting("connection refused".into())
                    })
                },
            )
            .await?;
            Ok(NodeOutcome::Converged)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_progress_lines_say_what_starts_what_it_waits_for_and_repeat_it_while_waiting() {
    let mut graph = Graph::new();
    graph
        .add(
            spec("cluster/control-plane", Layer::Cluster, &[]),
            Arc::new(WaitsAWhile {
                ready_after: Duration::from_millis(700),
            }),
        )
        .unwrap();
    let sink = EventSink::new();
    let out = SharedBuf::default();
    let lines = tokio::spawn(progress::lines(
        sink.subscribe(),
        out.clone(),
        Duration::from_millis(200),
    ));
    let summary = run(graph, opts(), sink, CancelToken::new()).await;
    lines.await.unwrap();
    assert!(summary.converged);
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{text}"))
    };
    let started = at("→ cluster/control-plane started: test node cluster/control-plane\n");
    let waits = at("  cluster/control-plane: waiting for the api server: connection refused\n");
    let heartbeat = at("… cluster/control-plane: waiting for the api server: connection refused (");
    let finished = at("✓ cluster/control-plane converged");
    assert!(
        started < waits && waits < heartbeat && heartbeat < finished,
        "{text}"
    );
    assert!(
        text.matches("… cluster/control-plane").count() >= 2,
        "a heartbeat every 200 ms for 700 ms:\n{text}"
    );
    assert_eq!(
        text.matches("  cluster/control-plane: waiting for the api server: connection refused\n")
            .count(),
        1,
        "an unchanged state is not repeated between heartbeats:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_parse_back() {
    let log = Arc::new(Log::default());
    let mut graph = Graph::new();
    graph
        .add(spec("cloud/vpc", Layer::Cloud, &[]), sleep(5, &log))
        .unwrap();
    graph
        .add(
            spec("cloud/subnet", Layer::Cloud, &["cloud/vpc"]),
            Arc::new(Flaky {
                failures: 1,
                calls: AtomicU32::new(0),
            }),
        )
        .unwrap();
    graph
        .add(
            spec("apps/web", Layer::Apps, &[]),
            Arc::new(Fails::new(ErrorKind::Permanent)),
        )
        .unwrap();
    let sink = EventSink::new();
    let buf = SharedBuf::default();
    let writer = tokio::spawn(jsonl::write(sink.subscribe(), buf.clone()));
    let collector = tokio::spawn(sink.subscribe().collect());
    let summary = run(graph, opts(), sink, CancelToken::new()).await;
    writer.await.unwrap().unwrap();
    let events = collector.await.unwrap();
    assert!(!summary.converged);

    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let parsed: Vec<EventRecord> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let expected: Vec<EventRecord> = events.iter().map(|e| (**e).clone()).collect();
    assert_eq!(parsed, expected);
    assert!(parsed.windows(2).all(|w| w[0].seq < w[1].seq));
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["type"], "runStarted");
    assert_eq!(
        first["schemaVersion"], 1,
        "every line is versioned: {first}"
    );
    assert_eq!(first["env"], "test");
    assert!(first["ts"].as_str().unwrap().ends_with('Z'));
    for kind in [
        "layerStarted",
        "nodeStarted",
        "nodeProgress",
        "nodeRetry",
        "nodeFinished",
        "layerFinished",
    ] {
        assert!(kinds(&events).contains(&kind), "no {kind}");
    }
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["type"], "runFinished");
    assert_eq!(last["converged"], false);
    // A failed node's line carries its error.
    assert!(text.contains(
        r#""result":{"status":"failed","error":"invalid CIDR: root cause","timedOut":false}"#
    ));
    // One naming style (docs/json.md): camelCase keys, durations in seconds.
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let mut bad = Vec::new();
        snake_keys(&v, &mut bad);
        assert!(bad.is_empty(), "snake_case keys {bad:?} in {line}");
        assert_eq!(v["schemaVersion"], 1, "{line}");
        if v["type"] == "nodeFinished" || v["type"] == "layerFinished" {
            assert!(v["durationSeconds"].is_number(), "{line}");
        }
        if v["type"] == "nodeRetry" {
            assert!(v["delaySeconds"].is_number(), "{line}");
        }
    }
}

/// Every object key of `v` with an underscore.
fn snake_keys(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if k.contains('_') {
                    out.push(k.clone());
                }
                snake_keys(v, out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| snake_keys(v, out)),
        _ => {}
    }
}

fn test_run_info(run_id: &str) -> RunInfo {
    RunInfo {
        run_id: run_id.to_string(),
        env: "demo".to_string(),
        commit: "a".repeat(40),
        git_ref: Some("main".to_string()),
        command: "rebuild".to_string(),
        actor: "tester".to_string(),
        host: phoenix::report::events::hostname(),
        region: Some("us-east-1".to_string()),
    }
}

async fn audited_run(home: &std::path::Path, run_id: &str, fail: bool) -> Vec<std::path::PathBuf> {
    let log = Arc::new(Log::default());
    let mut graph = Graph::new();
    graph
        .add(spec("cloud/vpc", Layer::Cloud, &[]), sleep(5, &log))
        .unwrap();
    let app: Arc<dyn Action> = if fail {
        Arc::new(Fails::new(ErrorKind::Permanent))
    } else {
        sleep(5, &log)
    };
    graph
        .add(spec("apps/web", Layer::Apps, &["cloud/vpc"]), app)
        .unwrap();
    let sink = EventSink::new();
    let auditor = tokio::spawn(audit::record(sink.subscribe(), home.to_path_buf()));
    run(
        graph,
        EngineOptions {
            run: test_run_info(run_id),
            ..opts()
        },
        sink,
        CancelToken::new(),
    )
    .await;
    auditor.await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_are_private_and_listed_newest_first() {
    let home = tempfile::tempdir().unwrap();
    let first = audited_run(home.path(), "run1", false).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = audited_run(home.path(), "run2", true).await;
    assert_eq!(first.len(), 1);
    assert_eq!(second.len(), 1);
    let path = &second[0];
    assert_eq!(
        path.parent().unwrap(),
        home.path().join("runs").join("demo")
    );
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(name.ends_with("Z-run2.json"), "{name}");
    assert_eq!(name.len(), "20261123T192113Z-run2.json".len(), "{name}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // Only the two records: no temporary files left behind.
    assert_eq!(
        std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
        2
    );

    let runs = audit::list_runs(home.path(), "demo").unwrap();
    let ids: Vec<&str> = runs.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(ids, ["run2", "run1"]);
    let newest = &runs[0];
    assert_eq!(newest.outcome, RunOutcome::Failed);
    assert_eq!(newest.commit, "a".repeat(40));
    assert_eq!(newest.git_ref.as_deref(), Some("main"));
    assert_eq!(newest.actor, "tester");
    assert_eq!(newest.region.as_deref(), Some("us-east-1"));
    assert_eq!(newest.pid, std::process::id());
    assert!(newest.finished_at.as_deref().unwrap() >= newest.started_at.as_str());
    let web = newest.nodes.iter().find(|n| n.id == "apps/web").unwrap();
    assert_eq!(web.attempts, 1);
    assert_eq!(
        web.result.as_ref().and_then(|r| r.detail()),
        Some("invalid CIDR: root cause")
    );
    assert!(web.duration_ms.is_some());
    let apps = newest
        .layers
        .iter()
        .find(|l| l.layer == Layer::Apps)
        .unwrap();
    assert_eq!(apps.status, Some(LayerStatus::Failed));
    assert_eq!(runs[1].outcome, RunOutcome::Converged);

    // An unreadable file is reported, not fatal.
    std::fs::write(
        path.parent().unwrap().join("20200101T000000Z-broken.json"),
        "{not json",
    )
    .unwrap();
    let listing = audit::scan_runs(home.path(), "demo").unwrap();
    assert_eq!(listing.records.len(), 2);
    assert_eq!(listing.problems.len(), 1);
    assert!(listing.problems[0].to_string().contains("broken.json"));
    assert_eq!(audit::list_runs(home.path(), "demo").unwrap().len(), 2);
    assert!(audit::list_runs(home.path(), "other").unwrap().is_empty());
    assert!(audit::list_runs(home.path(), "../demo").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisional_record_is_running_until_the_run_ends() {
    let home = tempfile::tempdir().unwrap();
    let mut graph = Graph::new();
    graph
        .add(spec("cloud/hang", Layer::Cloud, &[]), Arc::new(Never))
        .unwrap();
    let sink = EventSink::new();
    let mut watcher = sink.subscribe();
    let auditor = tokio::spawn(audit::record(sink.subscribe(), home.path().to_path_buf()));
    let cancel = CancelToken::new();
    let engine = tokio::spawn(run(
        graph,
        EngineOptions {
            run: test_run_info("prov"),
            run_timeout: Some(Duration::from_millis(300)),
            ..opts()
        },
        sink,
        cancel,
    ));
    // Once the node runs, the audit reader has seen RunStarted; give it a moment to write.
    while let Some(record) = watcher.next().await {
        if matches!(record.event, Event::NodeStarted { .. }) {
            break;
        }
    }
    let mut runs = Vec::new();
    for _ in 0..50 {
        runs = audit::list_runs(home.path(), "demo").unwrap();
        if !runs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(watcher);
    assert_eq!(runs.len(), 1);
    // Our own process is alive, so the record is "running", not "interrupted".
    assert_eq!(runs[0].outcome, RunOutcome::Running);
    let summary = engine.await.unwrap();
    assert!(!summary.converged);
    auditor.await.unwrap().unwrap();
    let runs = audit::list_runs(home.path(), "demo").unwrap();
    assert_eq!(runs[0].outcome, RunOutcome::Failed);
    assert!(runs[0]
        .cancel_reason
        .as_deref()
        .unwrap()
        .starts_with("run timeout of 300ms"));
    assert_eq!(runs[0].in_flight_at_cancel, ["cloud/hang"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_record_of_a_dead_process_shows_as_interrupted() {
    let home = tempfile::tempdir().unwrap();
    let written = audited_run(home.path(), "killed", false).await;
    let path = &written[0];
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();

    let mut record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    record["outcome"] = "running".into();
    record["finished_at"] = serde_json::Value::Null;
    record["pid"] = dead_pid.into();
    std::fs::write(path, serde_json::to_string(&record).unwrap()).unwrap();
    let runs = audit::list_runs(home.path(), "demo").unwrap();
    assert_eq!(runs[0].outcome, RunOutcome::Interrupted);

    record["pid"] = std::process::id().into();
    std::fs::write(path, serde_json::to_string(&record).unwrap()).unwrap();
    let runs = audit::list_runs(home.path(), "demo").unwrap();
    assert_eq!(runs[0].outcome, RunOutcome::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reader_consumes_a_whole_run() {
    let log = Arc::new(Log::default());
    let mut graph = Graph::new();
    graph
        .add(spec("cloud/vpc", Layer::Cloud, &[]), sleep(30, &log))
        .unwrap();
    graph
        .add(
            spec("cloud/subnet", Layer::Cloud, &[]),
            Arc::new(Flaky {
                failures: 1,
                calls: AtomicU32::new(0),
            }),
        )
        .unwrap();
    graph
        .add(
            spec("apps/web", Layer::Apps, &[]),
            Arc::new(Fails::new(ErrorKind::Permanent)),
        )
        .unwrap();
    let sink = EventSink::new();
    let bars = tokio::spawn(progress::draw(
        sink.subscribe(),
        indicatif::ProgressDrawTarget::hidden(),
    ));
    let off = tokio::spawn(progress::show(
        sink.subscribe(),
        progress::ProgressMode::Off,
    ));
    let summary = run(graph, opts(), sink, CancelToken::new()).await;
    // Both readers end with the stream.
    tokio::time::timeout(Duration::from_secs(10), bars)
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), off)
        .await
        .unwrap()
        .unwrap();
    assert!(!summary.converged);
    assert_eq!(
        progress::ProgressMode::detect(true),
        progress::ProgressMode::Off
    );
}

#[test]
fn progress_is_bars_on_a_terminal_and_plain_lines_elsewhere_or_with_verbose() {
    use progress::ProgressMode::{Bars, Lines, Off};
    assert_eq!(progress::ProgressMode::choose(false, 0, true), Bars);
    assert_eq!(progress::ProgressMode::choose(false, 0, false), Lines);
    assert_eq!(progress::ProgressMode::choose(false, 1, true), Lines);
    assert_eq!(progress::ProgressMode::choose(true, 1, false), Off);
}

#[test]
fn progress_lines_for_finished_nodes() {
    let ms = Duration::from_millis;
    assert_eq!(
        progress::node_line(
            "cloud/vpc",
            &NodeState::Succeeded {
                outcome: NodeOutcome::Created
            },
            ms(1234)
        ),
        Some("✓ cloud/vpc created 1s 234ms".to_string())
    );
    assert_eq!(
        progress::node_line(
            "apps/web",
            &NodeState::Failed {
                error: "image pull failed".into(),
                timed_out: false
            },
            ms(20)
        ),
        Some("✗ apps/web failed after 20ms: image pull failed".to_string())
    );
    assert_eq!(
        progress::node_line(
            "apps/web",
            &NodeState::Skipped {
                reason: "layer cloud did not converge".into()
            },
            ms(0)
        ),
        Some("↷ apps/web skipped: layer cloud did not converge".to_string())
    );
    assert_eq!(
        progress::node_line("apps/web", &NodeState::Excluded, ms(0)),
        None
    );
    assert_eq!(
        progress::layer_line(
            Layer::Cloud,
            LayerStatus::Converged,
            Duration::from_secs(125)
        ),
        "cloud converged in 2m 5s"
    );
}

#[test]
fn backoff_policies_grow_and_cap() {
    let p = Policy::STANDARD;
    assert_eq!(p.ceiling(1), Duration::from_millis(200));
    assert_eq!(p.ceiling(2), Duration::from_millis(400));
    assert_eq!(p.ceiling(5), Duration::from_millis(3200));
    assert_eq!(p.ceiling(6), Duration::from_secs(5));
    assert_eq!(p.ceiling(1000), Duration::from_secs(5));
    let delays: Vec<Duration> = (0..200).map(|_| p.delay(3)).collect();
    assert!(delays.iter().all(|d| *d <= Duration::from_millis(800)));
    // Full jitter spreads delays out rather than returning the ceiling.
    assert!(delays.iter().any(|d| *d < Duration::from_millis(400)));
    assert!(delays.iter().any(|d| *d > Duration::from_millis(400)));
    let fast = Policy::fast_for_tests();
    assert_eq!(
        (1..=4).map(|r| fast.delay(r)).collect::<Vec<_>>(),
        [ms(2), ms(4), ms(8), ms(10)]
    );

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
}

#[test]
fn node_error_chain_includes_sources() {
    let err = NodeError::transient("describe instances")
        .with_source(std::io::Error::other("connection reset"));
    assert!(err.is_transient());
    assert_eq!(err.to_string(), "describe instances");
    assert_eq!(err.chain(), "describe instances: connection reset");
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn summary_report_shows_layers_failures_and_what_a_cancel_left() {
    use phoenix::engine::{CriticalStep, LayerResult, NodeResult};
    let ms = Duration::from_millis;
    let node = |id: &str, layer, state, attempts, in_flight| NodeResult {
        id: id.to_string(),
        layer,
        description: id.to_string(),
        state,
        attempts,
        start: Some(ms(0)),
        duration: Some(ms(10)),
        last_progress: None,
        in_flight_at_cancel: in_flight,
    };
    let layer = |layer, status, start: Option<u64>, duration, nodes| LayerResult {
        layer,
        status,
        nodes,
        start: start.map(ms),
        duration: ms(duration),
    };
    let summary = RunSummary {
        run_id: "r1".into(),
        env: "demo".into(),
        nodes: vec![
            node(
                "cloud/vpc",
                Layer::Cloud,
                NodeState::Succeeded {
                    outcome: NodeOutcome::Created,
                },
                1,
                true,
            ),
            node(
                "cloud/subnet",
                Layer::Cloud,
                NodeState::Failed {
                    error: "invalid CIDR".into(),
                    timed_out: false,
                },
                3,
                false,
            ),
            node(
                "apps/web",
                Layer::Apps,
                NodeState::Cancelled {
                    reason: "run cancelled before the node started".into(),
                    started: false,
                },
                0,
                false,
            ),
        ],
        layers: vec![
            layer(Layer::Cloud, LayerStatus::Failed, Some(0), 1500, 2),
            layer(Layer::Cluster, LayerStatus::Cancelled, None, 0, 0),
            layer(Layer::Addons, LayerStatus::Excluded, None, 0, 0),
            layer(Layer::Apps, LayerStatus::Cancelled, None, 0, 1),
        ],
        duration: ms(1520),
        converged: false,
        cancelled: true,
        error: None,
        critical_path: vec![CriticalStep {
            id: "cloud/subnet".into(),
            layer: Layer::Cloud,
            start: ms(0),
            duration: ms(1500),
            released_by: Release::Start,
            after: None,
        }],
    };
    let text = phoenix::report::summary::render(&summary);
    let expected = "\
layer     status          time  nodes
cloud     failed      1s 500ms  2
cluster   -                  -  0
addons    excluded           -  0
apps      cancelled          -  1
total     cancelled   1s 520ms

failed:
  ✗ cloud/subnet (3 attempts): invalid CIDR

left behind: 2 completed; in flight at the cancel: cloud/vpc; never started: apps/web

critical path: cloud/subnet (1s 500ms)
";
    assert_eq!(text, expected);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_cancels_the_token() {
    // The handler is installed before `on_ctrl_c` returns, so the signal below cannot kill the
    // test process.
    let token = CancelToken::on_ctrl_c();
    assert!(!token.is_cancelled());
    let status = std::process::Command::new("kill")
        .args(["-INT", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::timeout(Duration::from_secs(10), token.cancelled())
        .await
        .expect("Ctrl-C did not cancel the token");
    assert!(token.is_cancelled());
}

#[test]
fn cancel_token_clones_share_the_flag() {
    let token = CancelToken::new();
    let clone = token.clone();
    assert!(!clone.is_cancelled());
    token.cancel();
    assert!(clone.is_cancelled());
    // Already cancelled: completes at once, even on a fresh runtime.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(clone.cancelled());
}

/// The wiring a CLI command does (see the engine module docs): a graph, the three readers on
/// one sink, the run, then the readers drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_style_wiring_runs_all_three_readers() {
    let home = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::default());
    let mut graph = Graph::new();
    graph
        .add(spec("cloud/vpc", Layer::Cloud, &[]), sleep(5, &log))
        .unwrap();
    graph
        .add(
            spec("apps/web", Layer::Apps, &["cloud/vpc"]),
            sleep(5, &log),
        )
        .unwrap();
    graph.validate().unwrap();

    let json_output = true;
    let sink = EventSink::new();
    let progress = tokio::spawn(progress::show(
        sink.subscribe(),
        progress::ProgressMode::detect(json_output),
    ));
    let out = SharedBuf::default();
    let lines = tokio::spawn(jsonl::write(sink.subscribe(), out.clone()));
    let audit = tokio::spawn(audit::record(sink.subscribe(), home.path().to_path_buf()));
    let opts = EngineOptions {
        run: RunInfo::new("demo", "rebuild", "c0ffee").with_ref("main"),
        backoff: Policy::fast_for_tests(),
        ..EngineOptions::default()
    };
    let summary = run(graph, opts, sink, CancelToken::new()).await;
    progress.await.unwrap();
    lines.await.unwrap().unwrap();
    let written = audit.await.unwrap().unwrap();

    assert!(summary.converged);
    assert_eq!(written.len(), 1);
    let runs = audit::list_runs(home.path(), "demo").unwrap();
    assert_eq!(runs[0].run_id, summary.run_id);
    assert_eq!(runs[0].git_ref.as_deref(), Some("main"));
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    assert_eq!(text.lines().count(), kinds_count(&text));
    assert!(phoenix::report::summary::render(&summary).contains("total     converged"));
}

fn kinds_count(text: &str) -> usize {
    text.lines()
        .filter(|l| serde_json::from_str::<EventRecord>(l).is_ok())
        .count()
}

/// A terminal that records everything indicatif writes to it.
#[derive(Debug, Clone, Default)]
struct RecordingTerm(Arc<Mutex<String>>);

impl indicatif::TermLike for RecordingTerm {
    fn width(&self) -> u16 {
        120
    }
    fn move_cursor_up(&self, _n: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _n: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _n: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _n: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        let mut out = self.0.lock().unwrap();
        out.push_str(s);
        out.push('\n');
        Ok(())
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.0.lock().unwrap().push_str(s);
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_bars_print_finished_nodes_and_layer_status() {
    let log = Arc::new(Log::default());
    let mut graph = Graph::new();
    graph
        .add(spec("cloud/vpc", Layer::Cloud, &[]), sleep(30, &log))
        .unwrap();
    graph
        .add(
            spec("apps/web", Layer::Apps, &[]),
            Arc::new(Fails::new(ErrorKind::Permanent)),
        )
        .unwrap();
    let term = RecordingTerm::default();
    let sink = EventSink::new();
    let bars = tokio::spawn(progress::draw(
        sink.subscribe(),
        indicatif::ProgressDrawTarget::term_like(Box::new(term.clone())),
    ));
    let summary = run(
        graph,
        EngineOptions {
            layers: Some(BTreeSet::from([Layer::Cloud, Layer::Apps])),
            ..opts()
        },
        sink,
        CancelToken::new(),
    )
    .await;
    bars.await.unwrap();
    assert!(!summary.converged);
    let screen = term.0.lock().unwrap().clone();
    assert!(screen.contains("✓ cloud/vpc created"), "{screen}");
    assert!(screen.contains("✗ apps/web failed after"), "{screen}");
    assert!(screen.contains("invalid CIDR: root cause"), "{screen}");
    assert!(screen.contains("converged in"), "{screen}");
    assert!(screen.contains("excluded"), "{screen}");
}
