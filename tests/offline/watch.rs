//! The watch agent end to end over real HTTP on 127.0.0.1: a scripted checker (a sequence of
//! reports), a local webhook receiver started by each test, and the agent's own /metrics and
//! /healthz. Each test is bounded by a timeout and waits on events, not on fixed sleeps.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use phoenix::drift::{DriftEntry, DriftReport, EntryKind, LayerDrift};
use phoenix::engine::{BoxFuture, CancelToken, Layer, Policy};
use phoenix::watch::{
    Agent, CheckVerdict, Checker, DeliveryOptions, Healer, NoticeKind, WatchEvent, WatchOptions,
    Webhook,
};

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
const INTERVAL: Duration = Duration::from_millis(100);
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const TOKEN: &str = "T000-B000-s3cr3t-t0k3n";

// ---------------------------------------------------------------- reports and the checker

#[derive(Clone)]
enum Step {
    Report(DriftReport),
    /// Never finishes (the agent's check timeout must end it).
    Hang,
    Panic,
}

fn report(layers: Vec<LayerDrift>) -> DriftReport {
    DriftReport {
        env: "demo".into(),
        commit: COMMIT.into(),
        checked_at: SystemTime::now(),
        duration: Duration::from_millis(3),
        layers,
    }
}

fn sync() -> Step {
    Step::Report(report(vec![
        LayerDrift::checked(Layer::Cloud, vec![], vec![], Duration::ZERO),
        LayerDrift::checked(Layer::Apps, vec![], vec![], Duration::ZERO),
    ]))
}

fn drift() -> Step {
    Step::Report(report(vec![
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
        LayerDrift::checked(
            Layer::Apps,
            vec![
                DriftEntry::new(Layer::Apps, "Deployment/web/api", EntryKind::Changed),
                DriftEntry::new(Layer::Apps, "ConfigMap/web/old", EntryKind::Extra),
            ],
            vec![],
            Duration::ZERO,
        ),
    ]))
}

fn error() -> Step {
    Step::Report(report(vec![
        LayerDrift::checked(Layer::Cloud, vec![], vec![], Duration::ZERO),
        LayerDrift::error(
            Layer::Apps,
            "API server did not answer within 10s",
            Duration::ZERO,
        ),
    ]))
}

/// Plays `steps` in order, then repeats `then` forever. The script can be replaced while the
/// agent runs (the healer does, to model a successful heal).
struct Scripted {
    steps: Mutex<VecDeque<Step>>,
    then: Mutex<Step>,
    calls: AtomicUsize,
}

impl Scripted {
    fn new(steps: Vec<Step>, then: Step) -> Arc<Self> {
        Arc::new(Scripted {
            steps: Mutex::new(steps.into()),
            then: Mutex::new(then),
            calls: AtomicUsize::new(0),
        })
    }

    fn set_then(&self, step: Step) {
        *self.then.lock().expect("lock") = step;
    }
}

impl Checker for Scripted {
    fn check(&self) -> BoxFuture<'static, DriftReport> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let step = self
            .steps
            .lock()
            .expect("lock")
            .pop_front()
            .unwrap_or_else(|| self.then.lock().expect("lock").clone());
        Box::pin(async move {
            match step {
                Step::Report(mut r) => {
                    r.checked_at = SystemTime::now();
                    r
                }
                Step::Hang => std::future::pending().await,
                Step::Panic => panic!("scripted checker panic"),
            }
        })
    }
}

// ---------------------------------------------------------------- the webhook receiver

struct Receiver {
    url: String,
    posts: mpsc::UnboundedReceiver<(String, serde_json::Value)>,
}

/// A webhook receiver on 127.0.0.1:0. `statuses` are answered in order (then 200 forever);
/// `delay` is waited before each answer.
async fn receiver(statuses: Vec<u16>, delay: Duration) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let addr = listener.local_addr().expect("receiver addr");
    let (tx, rx) = mpsc::unbounded_channel();
    let statuses = Arc::new(Mutex::new(VecDeque::from(statuses)));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            let statuses = statuses.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    let statuses = statuses.clone();
                    async move {
                        let path = req
                            .uri()
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default();
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        let json = body
                            .ok()
                            .and_then(|b| serde_json::from_slice(&b).ok())
                            .unwrap_or(serde_json::Value::Null);
                        let _ = tx.send((path, json));
                        tokio::time::sleep(delay).await;
                        let status = statuses.lock().expect("lock").pop_front().unwrap_or(200);
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                        *resp.status_mut() = StatusCode::from_u16(status).expect("status");
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Receiver {
        url: format!("http://{addr}/services/{TOKEN}?token={TOKEN}"),
        posts: rx,
    }
}

// ---------------------------------------------------------------- the agent under test

struct Running {
    addr: SocketAddr,
    events: mpsc::UnboundedReceiver<WatchEvent>,
    cancel: CancelToken,
    task: tokio::task::JoinHandle<()>,
}

fn options(
    webhook: Option<&str>,
    alert_after: Duration,
) -> (WatchOptions, mpsc::UnboundedReceiver<WatchEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut opts = WatchOptions::new("demo", INTERVAL, "127.0.0.1:0".parse().expect("addr"));
    opts.alert_after = alert_after;
    opts.check_timeout = Duration::from_millis(500);
    opts.webhook = webhook.map(|u| Webhook::parse(u).expect("webhook url"));
    opts.delivery = DeliveryOptions {
        attempt_timeout: Duration::from_secs(5),
        attempts: 4,
        backoff: Policy::fast_for_tests(),
    };
    opts.events = Some(tx);
    (opts, rx)
}

async fn start(
    opts: WatchOptions,
    events: mpsc::UnboundedReceiver<WatchEvent>,
    checker: Arc<dyn Checker>,
) -> Running {
    let agent = Agent::bind(opts).await.expect("bind agent");
    let addr = agent.local_addr().expect("agent addr");
    let cancel = CancelToken::new();
    let task = tokio::spawn(agent.run(checker, cancel.clone()));
    Running {
        addr,
        events,
        cancel,
        task,
    }
}

impl Running {
    /// Waits for the first event `pick` accepts, returning what it extracted.
    async fn wait_for<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&WatchEvent) -> Option<T>,
    ) -> T {
        loop {
            match self.events.recv().await {
                Some(e) => {
                    if let Some(t) = pick(&e) {
                        return t;
                    }
                }
                None => panic!("agent stopped while waiting for {what}"),
            }
        }
    }

    /// Waits until `n` more checks have finished; returns their verdicts.
    async fn checks(&mut self, n: usize) -> Vec<CheckVerdict> {
        let mut out = Vec::new();
        while out.len() < n {
            let v = self
                .wait_for("a check", |e| match e {
                    WatchEvent::CheckFinished { verdict, .. } => Some(*verdict),
                    _ => None,
                })
                .await;
            out.push(v);
        }
        out
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("agent stops within 10s of cancel")
            .expect("agent task");
    }
}

/// A GET over a plain TCP connection; returns (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect to agent");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test finished within its timeout");
}

fn text_of(post: &(String, serde_json::Value)) -> String {
    post.1["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text in {:?}", post.1))
        .to_string()
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_alert_per_episode_then_a_converged_notice() {
    bounded(async {
        let mut rx = receiver(vec![], Duration::ZERO).await;
        let (opts, events) = options(Some(&rx.url), Duration::from_millis(250));
        let script = vec![
            sync(),
            drift(),
            drift(),
            drift(),
            drift(),
            drift(),
            drift(),
            drift(),
            drift(),
        ];
        let checker = Scripted::new(script, sync());
        let mut agent = start(opts, events, checker).await;

        let first = rx.posts.recv().await.expect("alert post");
        let second = rx.posts.recv().await.expect("converged post");
        // A few more clean checks: nothing else may be posted.
        agent.checks(3).await;
        agent.stop().await;
        assert!(
            rx.posts.try_recv().is_err(),
            "more than one alert and one converged notice"
        );

        assert_eq!(first.0, format!("/services/{TOKEN}?token={TOKEN}"));
        let alert = text_of(&first);
        assert!(
            alert.starts_with("phoenix: demo has drifted from Git for "),
            "{alert}"
        );
        assert!(
            alert.contains("(commit 0123456789ab): 3 resources in cloud, apps"),
            "{alert}"
        );
        assert!(alert.contains("• cloud changed sg/cluster"), "{alert}");
        assert!(alert.contains("• apps extra ConfigMap/web/old"), "{alert}");
        let converged = text_of(&second);
        assert!(
            converged.starts_with(
                "phoenix: demo has converged with Git at commit 0123456789ab (drift lasted "
            ),
            "{converged}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_alert_before_alert_after() {
    bounded(async {
        let mut rx = receiver(vec![], Duration::ZERO).await;
        let (opts, events) = options(Some(&rx.url), Duration::from_secs(3600));
        let checker = Scripted::new(vec![drift(), drift(), drift(), drift(), drift()], sync());
        let mut agent = start(opts, events, checker).await;
        let verdicts = agent.checks(8).await;
        assert_eq!(
            verdicts
                .iter()
                .filter(|v| **v == CheckVerdict::Drift)
                .count(),
            5
        );
        agent.stop().await;
        assert!(
            rx.posts.try_recv().is_err(),
            "no post: drift never lasted alert_after, and an unalerted episode needs no all-clear"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_errors_neither_alert_nor_close_an_episode() {
    bounded(async {
        let mut rx = receiver(vec![], Duration::ZERO).await;
        let (opts, events) = options(Some(&rx.url), Duration::ZERO);
        // Errors first (reported, a hung check, a panicking check): no alert.
        // Then drift (alert at once), errors (no converged), then in sync (converged).
        let script = vec![
            error(),
            Step::Hang,
            Step::Panic,
            error(),
            drift(),
            error(),
            Step::Hang,
            error(),
        ];
        let checker = Scripted::new(script, sync());
        let mut agent = start(opts, events, checker.clone()).await;

        let verdicts = agent.checks(4).await;
        assert_eq!(
            verdicts,
            vec![CheckVerdict::Unknown; 4],
            "hung and panicking checks are check errors"
        );
        assert!(rx.posts.try_recv().is_err(), "errors must not alert");

        let (_, metrics) = get(agent.addr, "/metrics").await;
        assert!(
            metrics.contains("phoenix_drift_check_errors_total{env=\"demo\",layer=\"apps\"} 4\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("phoenix_drift_check_error{env=\"demo\",layer=\"apps\"} 1\n"),
            "{metrics}"
        );
        assert!(
            !metrics.contains("phoenix_drift{env=\"demo\",layer=\"apps\"}"),
            "{metrics}"
        );

        let alert = rx.posts.recv().await.expect("alert");
        assert!(text_of(&alert).contains("has drifted"));
        let converged = rx.posts.recv().await.expect("converged");
        assert!(text_of(&converged).contains("has converged"));
        // The converged notice came only after the errors, on the first clean check.
        assert!(checker.calls.load(Ordering::SeqCst) >= 9);
        agent.stop().await;
        assert!(rx.posts.try_recv().is_err());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_healthz_answer() {
    bounded(async {
        let (opts, events) = options(None, Duration::ZERO);
        let checker = Scripted::new(vec![drift()], sync());
        let mut agent = start(opts, events, checker).await;
        agent.checks(1).await;
        let (status, body) = get(agent.addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("# TYPE phoenix_drift gauge\n"), "{body}");
        assert!(
            body.contains("phoenix_drift{env=\"demo\",layer=\"cloud\"} ")
                && body.contains("phoenix_drift_checks_total{env=\"demo\"} "),
            "{body}"
        );
        let (status, body) = get(agent.addr, "/healthz").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("ok: last check finished "), "{body}");
        let (status, _) = get(agent.addr, "/nope").await;
        assert_eq!(status, 404);
        agent.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_when_checks_stop_finishing() {
    bounded(async {
        let (mut opts, events) = options(None, Duration::ZERO);
        // Checks hang far beyond 3 × interval; the timeout is long so none finishes soon.
        opts.check_timeout = Duration::from_secs(30);
        let checker = Scripted::new(vec![sync()], Step::Hang);
        let mut agent = start(opts, events, checker).await;
        agent.checks(1).await;
        // Healthy right after the check; then no check finishes, so within 3 × interval (plus
        // slack for a loaded machine) it must turn 503.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let body = loop {
            let (status, body) = get(agent.addr, "/healthz").await;
            if status == 503 {
                break body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "still {status}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            body.starts_with("unhealthy: last check finished "),
            "{body}"
        );
        assert!(body.contains("(limit 300ms)"), "{body}");
        agent.stop().await;
    })
    .await;
}

struct RecordingHealer {
    calls: Mutex<Vec<Vec<Layer>>>,
    checker: Arc<Scripted>,
}

impl Healer for RecordingHealer {
    fn heal(
        &self,
        _report: Arc<DriftReport>,
        layers: Vec<Layer>,
    ) -> BoxFuture<'static, Result<(), String>> {
        self.calls.lock().expect("lock").push(layers);
        // A successful heal: from now on the live system matches Git.
        self.checker.set_then(sync());
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heal_is_called_for_the_drifted_layers_and_recorded() {
    bounded(async {
        let (mut opts, events) = options(None, Duration::from_secs(3600));
        let checker = Scripted::new(vec![sync()], drift());
        let healer = Arc::new(RecordingHealer {
            calls: Mutex::new(Vec::new()),
            checker: checker.clone(),
        });
        opts.healer = Some(healer.clone());
        let mut agent = start(opts, events, checker).await;
        let record = agent
            .wait_for("a heal", |e| match e {
                WatchEvent::HealFinished { record } => Some(record.clone()),
                _ => None,
            })
            .await;
        assert_eq!(record.layers, vec![Layer::Cloud, Layer::Apps]);
        assert_eq!(record.env, "demo");
        assert_eq!(record.commit, COMMIT);
        assert_eq!(record.result, Ok(()));
        // After the heal the checks are clean, and no further heal happens.
        assert_eq!(agent.checks(3).await, vec![CheckVerdict::InSync; 3]);
        agent.stop().await;
        assert_eq!(
            *healer.calls.lock().expect("lock"),
            vec![vec![Layer::Cloud, Layer::Apps]]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_webhook_failures_are_retried() {
    bounded(async {
        let mut rx = receiver(vec![503, 502], Duration::ZERO).await;
        let (opts, events) = options(Some(&rx.url), Duration::ZERO);
        let checker = Scripted::new(vec![], drift());
        let mut agent = start(opts, events, checker).await;
        let (kind, attempts) = agent
            .wait_for("a delivery", |e| match e {
                WatchEvent::WebhookDelivered { kind, attempts } => Some((*kind, *attempts)),
                WatchEvent::WebhookFailed { error, .. } => panic!("delivery failed: {error}"),
                _ => None,
            })
            .await;
        assert_eq!((kind, attempts), (NoticeKind::Alert, 3));
        for _ in 0..3 {
            let post = rx.posts.recv().await.expect("post");
            assert!(text_of(&post).contains("has drifted"));
        }
        agent.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_webhook_fails_without_showing_the_token() {
    bounded(async {
        let rx = receiver(vec![404, 404, 404, 404], Duration::ZERO).await;
        let (opts, events) = options(Some(&rx.url), Duration::ZERO);
        let checker = Scripted::new(vec![], drift());
        let mut agent = start(opts, events, checker).await;
        let (attempts, error) = agent
            .wait_for("a failed delivery", |e| match e {
                WatchEvent::WebhookFailed {
                    attempts, error, ..
                } => Some((*attempts, error.clone())),
                _ => None,
            })
            .await;
        assert_eq!(attempts, 1, "a 404 is not retried");
        assert!(error.contains("answered 404"), "{error}");
        assert!(error.contains("127.0.0.1:"), "names the host: {error}");
        assert!(!error.contains(TOKEN), "{error}");
        agent.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_webhook_does_not_block_the_checks() {
    bounded(async {
        let mut rx = receiver(vec![], Duration::from_secs(3)).await;
        let (opts, events) = options(Some(&rx.url), Duration::ZERO);
        let checker = Scripted::new(vec![], drift());
        let mut agent = start(opts, events, checker).await;
        rx.posts
            .recv()
            .await
            .expect("the alert reached the receiver");
        // The receiver holds the answer for 3s; checks go on meanwhile.
        let started = tokio::time::Instant::now();
        agent.checks(5).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "checks waited for the webhook"
        );
        agent.stop().await;
    })
    .await;
}
