//! The watch loop: a drift check every interval (each with its own timeout), the episode
//! machine, webhook notices through a worker, optional heal, and the HTTP endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use crate::drift::{DriftReport, DriftStatus, LayerDrift};
use crate::engine::{BoxFuture, CancelToken, Layer};

use super::episode::{alert_text, converged_text, CheckVerdict, Episodes, Notice};
use super::server::{self, Shared};
use super::webhook::{DeliveryOptions, Webhook, WebhookClient, WebhookError};

/// Produces one drift report per call. The real checker re-reads Git at the configured ref and
/// compares every layer; it reports layer failures inside the report (`DriftStatus::Error`),
/// never by panicking. The agent bounds each call with `check_timeout`.
pub trait Checker: Send + Sync {
    fn check(&self) -> BoxFuture<'static, DriftReport>;
}

/// Re-converges drifted layers (the lead wires `rebuild --layers ...`).
pub trait Healer: Send + Sync {
    /// Heals `layers` of the environment in `report`; `Err` carries a message for the log.
    fn heal(
        &self,
        report: Arc<DriftReport>,
        layers: Vec<Layer>,
    ) -> BoxFuture<'static, Result<(), String>>;
}

/// Runs `healer` on `layers` of `report`, within `timeout`; `Err` with the healer's message, or
/// that it did not finish in time.
pub(super) async fn heal_within(
    healer: &dyn Healer,
    report: &Arc<DriftReport>,
    layers: &[Layer],
    timeout: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(timeout, healer.heal(report.clone(), layers.to_vec())).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "heal did not finish within {}",
            crate::report::format_duration(timeout)
        )),
    }
}

/// Which notice a webhook delivery carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoticeKind {
    Alert,
    Converged,
}

/// One heal attempt, for the audit trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealRecord {
    pub env: String,
    pub commit: String,
    pub layers: Vec<Layer>,
    pub started_at: SystemTime,
    pub duration: Duration,
    /// `Err` with the healer's message, or a timeout.
    pub result: Result<(), String>,
}

/// What the agent did, for the caller (audit trail, tests). Sent on `WatchOptions::events`.
#[derive(Clone, Debug)]
pub enum WatchEvent {
    Listening {
        addr: SocketAddr,
    },
    CheckFinished {
        report: Arc<DriftReport>,
        verdict: CheckVerdict,
    },
    /// A notice was handed to the webhook worker (or would have been, without a webhook).
    Notice {
        kind: NoticeKind,
        text: String,
    },
    WebhookDelivered {
        kind: NoticeKind,
        attempts: u32,
    },
    WebhookFailed {
        kind: NoticeKind,
        attempts: u32,
        error: String,
    },
    /// The webhook queue was full; the notice was dropped rather than stalling the loop.
    WebhookDropped {
        kind: NoticeKind,
    },
    HealStarted {
        layers: Vec<Layer>,
    },
    HealFinished {
        record: HealRecord,
    },
}

/// How the agent runs.
#[derive(Clone)]
pub struct WatchOptions {
    /// Effective environment name (labels, messages, synthesized error reports).
    pub env: String,
    pub interval: Duration,
    /// Bound on each check; a check that takes longer is abandoned and counts as a check error.
    pub check_timeout: Duration,
    /// How long drift must persist before the alert.
    pub alert_after: Duration,
    pub listen: SocketAddr,
    pub webhook: Option<Webhook>,
    pub delivery: DeliveryOptions,
    /// With a healer, drifted layers are re-converged after every drifted check.
    pub healer: Option<Arc<dyn Healer>>,
    pub heal_timeout: Duration,
    pub events: Option<mpsc::UnboundedSender<WatchEvent>>,
    /// One line per check and notice on stderr.
    pub log: bool,
}

impl WatchOptions {
    /// Defaults: check timeout = interval, alert after 5 minutes, no webhook, no heal, heal
    /// timeout 30 minutes, logging on.
    pub fn new(env: impl Into<String>, interval: Duration, listen: SocketAddr) -> Self {
        WatchOptions {
            env: env.into(),
            interval,
            check_timeout: interval,
            alert_after: Duration::from_secs(300),
            listen,
            webhook: None,
            delivery: DeliveryOptions::default(),
            healer: None,
            heal_timeout: Duration::from_secs(1800),
            events: None,
            log: true,
        }
    }

    /// `/healthz` turns 503 when no check finished within this.
    pub fn health_limit(&self) -> Duration {
        self.interval.saturating_mul(3)
    }
}

/// Errors that stop the agent from starting (once it runs, nothing stops it but cancel).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("listening on {addr} for /metrics and /healthz")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up the webhook")]
    Webhook(#[from] WebhookError),
    #[error("the watch interval must be greater than zero")]
    ZeroInterval,
}

/// Queue depth of the webhook worker; notices are rare, so a full queue means the webhook has
/// been failing for a long time.
const WEBHOOK_QUEUE: usize = 16;

/// An agent with its listener bound (so a caller binding port 0 can learn the port).
pub struct Agent {
    opts: WatchOptions,
    listener: TcpListener,
    client: Option<WebhookClient>,
}

impl Agent {
    pub async fn bind(opts: WatchOptions) -> Result<Agent, WatchError> {
        if opts.interval.is_zero() {
            return Err(WatchError::ZeroInterval);
        }
        let client = match &opts.webhook {
            Some(w) => Some(WebhookClient::new(w.clone(), opts.delivery)?),
            None => None,
        };
        let listener =
            TcpListener::bind(opts.listen)
                .await
                .map_err(|source| WatchError::Listen {
                    addr: opts.listen,
                    source,
                })?;
        Ok(Agent {
            opts,
            listener,
            client,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, std::io::Error> {
        self.listener.local_addr()
    }

    /// Runs until `cancel`: the loop, the endpoints and the webhook worker. Returns once all
    /// three have stopped (a notice still being delivered gets one attempt timeout to finish).
    pub async fn run(self, checker: Arc<dyn Checker>, cancel: CancelToken) {
        let Agent {
            opts,
            listener,
            client,
        } = self;
        let shared = server::shared();
        if let Ok(addr) = listener.local_addr() {
            emit(&opts, WatchEvent::Listening { addr });
            log(
                &opts,
                format_args!("serving /metrics and /healthz on http://{addr}"),
            );
        }
        let server_stop = CancelToken::new();
        let server = tokio::spawn(server::serve(
            listener,
            shared.clone(),
            opts.health_limit(),
            server_stop.clone(),
        ));
        let (queue, worker) = match client {
            Some(client) => {
                let (tx, rx) = mpsc::channel(WEBHOOK_QUEUE);
                (
                    Some(tx),
                    Some(tokio::spawn(deliver(client, rx, opts.clone()))),
                )
            }
            None => (None, None),
        };
        check_loop(&opts, checker, &shared, queue.as_ref(), &cancel).await;
        shared.lock().unwrap_or_else(|p| p.into_inner()).alive = false;
        drop(queue);
        if let Some(worker) = worker {
            let grace = opts.delivery.attempt_timeout;
            let abort = worker.abort_handle();
            if tokio::time::timeout(grace, worker).await.is_err() {
                abort.abort();
            }
        }
        server_stop.cancel();
        let _ = server.await;
    }
}

/// Binds `opts.listen` and runs the agent until `cancel`.
pub async fn run(
    opts: WatchOptions,
    checker: Arc<dyn Checker>,
    cancel: CancelToken,
) -> Result<(), WatchError> {
    Agent::bind(opts).await?.run(checker, cancel).await;
    Ok(())
}

async fn check_loop(
    opts: &WatchOptions,
    checker: Arc<dyn Checker>,
    shared: &Shared,
    queue: Option<&mpsc::Sender<(NoticeKind, String)>>,
    cancel: &CancelToken,
) {
    let mut ticker = tokio::time::interval(opts.interval);
    // A check longer than the interval delays the next one instead of firing a burst.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut episodes = Episodes::new(opts.alert_after);
    let mut previous: Option<Arc<DriftReport>> = None;
    loop {
        tokio::select! {
            biased;
            // Cancel-safe: dropping `cancelled` only drops a watch receiver.
            _ = cancel.cancelled() => return,
            // Cancel-safe: a dropped tick is simply not taken.
            _ = ticker.tick() => {}
        }
        let report = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            // Not cancel-safe in the sense that the check is abandoned, which is what cancel
            // means here; the spawned check task is aborted by `timed_check`'s guard.
            r = timed_check(opts, &checker, previous.as_deref()) => Arc::new(r),
        };
        let verdict = CheckVerdict::of(&report);
        {
            let mut status = shared.lock().unwrap_or_else(|p| p.into_inner());
            status.counters.record(&report);
            status.last_finished = Some(Instant::now());
            status.latest = Some(report.clone());
        }
        log_check(opts, &report);
        emit(
            opts,
            WatchEvent::CheckFinished {
                report: report.clone(),
                verdict,
            },
        );
        if let Some(notice) = episodes.observe(Instant::now(), verdict) {
            let (kind, text) = match notice {
                Notice::Alert { lasted } => (NoticeKind::Alert, alert_text(&report, lasted)),
                Notice::Converged { lasted } => {
                    (NoticeKind::Converged, converged_text(&report, lasted))
                }
            };
            notify(opts, queue, kind, text);
        }
        if verdict == CheckVerdict::Drift {
            if let Some(healer) = &opts.healer {
                let healed = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return,
                    h = heal(opts, healer.as_ref(), &report) => h,
                };
                emit(opts, WatchEvent::HealFinished { record: healed });
            }
        }
        previous = Some(report);
    }
}

/// Runs one check on its own task (so a panic in a checker is a check error, not the end of the
/// agent) within `check_timeout`.
async fn timed_check(
    opts: &WatchOptions,
    checker: &Arc<dyn Checker>,
    previous: Option<&DriftReport>,
) -> DriftReport {
    let checked_at = SystemTime::now();
    let started = Instant::now();
    let task = tokio::spawn(checker.check());
    // Aborts the check when this future is dropped (timeout or cancel).
    let guard = AbortOnDrop(task.abort_handle());
    let outcome = tokio::time::timeout(opts.check_timeout, task).await;
    drop(guard);
    let message = match outcome {
        Ok(Ok(report)) => return report,
        Ok(Err(join)) if join.is_panic() => "the check panicked".to_string(),
        Ok(Err(_)) => "the check was cancelled".to_string(),
        Err(_) => format!(
            "the check did not finish within {}",
            crate::report::format_duration(opts.check_timeout)
        ),
    };
    failed_report(opts, previous, checked_at, started.elapsed(), &message)
}

/// A report for a check that produced none: every layer the previous report checked (all
/// layers before the first report) in error.
fn failed_report(
    opts: &WatchOptions,
    previous: Option<&DriftReport>,
    checked_at: SystemTime,
    duration: Duration,
    message: &str,
) -> DriftReport {
    let layers: Vec<Layer> = match previous {
        Some(p) => p
            .layers
            .iter()
            .filter(|l| !matches!(l.status, DriftStatus::Skipped(_)))
            .map(|l| l.layer)
            .collect(),
        None => Layer::ALL.to_vec(),
    };
    DriftReport {
        env: opts.env.clone(),
        commit: previous
            .map(|p| p.commit.clone())
            .unwrap_or_else(|| "unknown".into()),
        checked_at,
        duration,
        layers: layers
            .into_iter()
            .map(|l| LayerDrift::error(l, message, duration))
            .collect(),
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn heal(opts: &WatchOptions, healer: &dyn Healer, report: &Arc<DriftReport>) -> HealRecord {
    let layers = report.drifted_layers();
    emit(
        opts,
        WatchEvent::HealStarted {
            layers: layers.clone(),
        },
    );
    let names: Vec<&str> = layers.iter().map(|l| l.as_str()).collect();
    log(opts, format_args!("healing {}", names.join(", ")));
    let started_at = SystemTime::now();
    let started = Instant::now();
    let result = heal_within(healer, report, &layers, opts.heal_timeout).await;
    match &result {
        Ok(()) => log(opts, format_args!("healed {}", names.join(", "))),
        Err(e) => log(
            opts,
            format_args!("heal of {} failed: {e}", names.join(", ")),
        ),
    }
    HealRecord {
        env: report.env.clone(),
        commit: report.commit.clone(),
        layers,
        started_at,
        duration: started.elapsed(),
        result,
    }
}

fn notify(
    opts: &WatchOptions,
    queue: Option<&mpsc::Sender<(NoticeKind, String)>>,
    kind: NoticeKind,
    text: String,
) {
    emit(
        opts,
        WatchEvent::Notice {
            kind,
            text: text.clone(),
        },
    );
    let Some(queue) = queue else {
        log(opts, format_args!("{text}"));
        return;
    };
    if queue.try_send((kind, text)).is_err() {
        log(
            opts,
            format_args!("webhook queue full; {kind:?} notice dropped"),
        );
        emit(opts, WatchEvent::WebhookDropped { kind });
    }
}

/// Delivers queued notices in order, one at a time, so a converged notice never overtakes the
/// alert it answers.
async fn deliver(
    client: WebhookClient,
    mut rx: mpsc::Receiver<(NoticeKind, String)>,
    opts: WatchOptions,
) {
    while let Some((kind, text)) = rx.recv().await {
        match client.post(&text).await {
            Ok(attempts) => {
                log(
                    &opts,
                    format_args!("{kind:?} sent to webhook {}", client.webhook()),
                );
                emit(&opts, WatchEvent::WebhookDelivered { kind, attempts });
            }
            Err((attempts, err)) => {
                let error = err.to_string();
                log(
                    &opts,
                    format_args!("{kind:?} not delivered after {attempts} attempt(s): {error}"),
                );
                emit(
                    &opts,
                    WatchEvent::WebhookFailed {
                        kind,
                        attempts,
                        error,
                    },
                );
            }
        }
    }
}

fn log_check(opts: &WatchOptions, report: &DriftReport) {
    let short = report.commit.get(..12).unwrap_or(&report.commit);
    let took = crate::report::format_duration(report.duration);
    for l in report.layers.iter().filter(|l| l.is_error()) {
        if let DriftStatus::Error(message) = &l.status {
            log(
                opts,
                format_args!("check error in {} at {short}: {message}", l.layer),
            );
        }
    }
    if report.has_drift() {
        let layers: Vec<&str> = report.drifted_layers().iter().map(|l| l.as_str()).collect();
        log(
            opts,
            format_args!(
                "drift at {short}: {} resource(s) in {} ({took})",
                report.entry_count(),
                layers.join(", ")
            ),
        );
    } else if !report.has_error() {
        log(opts, format_args!("in sync at {short} ({took})"));
    }
}

fn log(opts: &WatchOptions, message: std::fmt::Arguments<'_>) {
    if opts.log {
        eprintln!("watch {}: {message}", opts.env);
    }
}

fn emit(opts: &WatchOptions, event: WatchEvent) {
    if let Some(tx) = &opts.events {
        // The receiver going away only means nobody listens any more.
        let _ = tx.send(event);
    }
}
