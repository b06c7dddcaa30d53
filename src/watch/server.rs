//! The agent's HTTP endpoints: `/metrics` (the latest report as Prometheus text) and `/healthz`
//! (200 while the loop runs and its last check finished recently, else 503).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::drift::metrics::{self, CheckCounters};
use crate::drift::DriftReport;
use crate::engine::CancelToken;

/// A client that has not sent its request headers within this is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the loop shares with the endpoints.
#[derive(Debug)]
pub(crate) struct Status {
    pub started: Instant,
    pub alive: bool,
    pub last_finished: Option<Instant>,
    pub latest: Option<Arc<DriftReport>>,
    pub counters: CheckCounters,
    /// Set by a fleet agent (`watch --all`): which envs this replica holds and their reports.
    pub fleet: Option<FleetStatus>,
}

/// What a fleet replica shows on its endpoints.
#[derive(Debug, Default)]
pub(crate) struct FleetStatus {
    pub replica: String,
    /// Envs whose Lease this replica holds (all selected envs without Leases).
    pub held: Vec<String>,
    /// Replicas sharing the work (1 without Leases).
    pub live: usize,
    /// Envs selected at the last commit read.
    pub envs: usize,
    pub round: Option<Duration>,
    /// The latest report of every env this replica checked; only held ones are served.
    pub reports: std::collections::BTreeMap<String, Arc<DriftReport>>,
    /// With Leases: how long the Lease API may stay unreachable before /healthz turns 503,
    /// and when the Leases were last listed.
    pub leases_limit: Option<Duration>,
    pub leases_seen: Option<Instant>,
}

impl FleetStatus {
    fn metrics(&self) -> String {
        use std::fmt::Write as _;
        let replica = metrics::escape_label(&self.replica);
        let mut out = String::new();
        out.push_str("# HELP phoenix_watch_lease_held The environments whose Lease this replica holds (always 1).\n# TYPE phoenix_watch_lease_held gauge\n");
        for env in &self.held {
            let _ = writeln!(
                out,
                "phoenix_watch_lease_held{{env=\"{}\",replica=\"{replica}\"}} 1",
                metrics::escape_label(env)
            );
        }
        let _ = write!(
            out,
            "# HELP phoenix_watch_replicas_live Replicas sharing the environments, as this replica sees them.\n# TYPE phoenix_watch_replicas_live gauge\nphoenix_watch_replicas_live{{replica=\"{replica}\"}} {}\n",
            self.live
        );
        let _ = write!(
            out,
            "# HELP phoenix_watch_environments Environments selected at the last commit read.\n# TYPE phoenix_watch_environments gauge\nphoenix_watch_environments{{replica=\"{replica}\"}} {}\n",
            self.envs
        );
        if let Some(round) = self.round {
            let _ = write!(
                out,
                "# HELP phoenix_watch_round_duration_seconds Wall time of the last round of checks of the held environments.\n# TYPE phoenix_watch_round_duration_seconds gauge\nphoenix_watch_round_duration_seconds{{replica=\"{replica}\"}} {}\n",
                round.as_secs_f64()
            );
        }
        out
    }

    /// Unhealthy once the Leases have not been listed within `leases_limit` (counted from
    /// `started` before the first listing).
    fn lease_health(&self, started: Instant, now: Instant) -> Result<(), String> {
        let Some(limit) = self.leases_limit else {
            return Ok(());
        };
        let age = now.saturating_duration_since(self.leases_seen.unwrap_or(started));
        if age <= limit {
            Ok(())
        } else {
            Err(format!(
                "the Leases have not been listed for {} (limit {})",
                ms(age),
                ms(limit)
            ))
        }
    }

    fn summary(&self) -> String {
        format!(
            "replica {} holds {} of {} env(s) with {} live replica(s): {}",
            self.replica,
            self.held.len(),
            self.envs,
            self.live,
            if self.held.is_empty() {
                "none".to_string()
            } else {
                self.held.join(", ")
            }
        )
    }
}

pub(crate) type Shared = Arc<Mutex<Status>>;

pub(crate) fn shared() -> Shared {
    Arc::new(Mutex::new(Status {
        started: Instant::now(),
        alive: true,
        last_finished: None,
        latest: None,
        counters: CheckCounters::new(),
        fleet: None,
    }))
}

/// The health verdict at `now`: healthy while the loop is alive and a check finished within
/// `limit` (before the first check, the agent's start counts, so a fresh agent is healthy for
/// one `limit`).
pub(crate) fn health(status: &Status, now: Instant, limit: Duration) -> Result<String, String> {
    if !status.alive {
        return Err("the check loop has stopped".into());
    }
    let reference = status.last_finished.unwrap_or(status.started);
    let age = now.saturating_duration_since(reference);
    match (status.last_finished, age <= limit) {
        (Some(_), true) => Ok(format!("ok: last check finished {} ago", ms(age))),
        (None, true) => Ok(format!("ok: first check running for {}", ms(age))),
        (Some(_), false) => Err(format!(
            "last check finished {} ago (limit {})",
            ms(age),
            ms(limit)
        )),
        (None, false) => Err(format!(
            "no check has finished in {} since start (limit {})",
            ms(age),
            ms(limit)
        )),
    }
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Serves until `cancel`; then stops accepting and drops open connections.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Shared,
    limit: Duration,
    cancel: CancelToken,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // Cancel-safe: `cancelled` only drops a watch receiver.
            _ = cancel.cancelled() => break,
            // Cancel-safe: `accept` loses no connection when dropped before completing.
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of file descriptors or a reset before accept: the listener stays
                    // usable; pause briefly so a persistent error does not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(respond(&req, &shared, limit)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            // Reap finished connections so the set does not grow for the agent's lifetime.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

fn respond(req: &Request<Incoming>, shared: &Shared, limit: Duration) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served\n".into(),
        );
    }
    // A poisoned lock means a panic elsewhere already; the data is still consistent enough
    // to serve (each update is a plain field assignment).
    let status = shared.lock().unwrap_or_else(|p| p.into_inner());
    match req.uri().path() {
        "/metrics" => {
            let body = match &status.fleet {
                Some(fleet) => {
                    let reports: Vec<&DriftReport> = fleet
                        .held
                        .iter()
                        .filter_map(|e| fleet.reports.get(e).map(|r| r.as_ref()))
                        .collect();
                    metrics::render(&reports, Some(&status.counters)) + &fleet.metrics()
                }
                None => {
                    let reports: Vec<&DriftReport> =
                        status.latest.iter().map(|r| r.as_ref()).collect();
                    metrics::render(&reports, Some(&status.counters))
                }
            };
            let mut resp = text(StatusCode::OK, body);
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        "/healthz" => {
            match health(&status, Instant::now(), limit).and_then(|ok| match &status.fleet {
                Some(f) => f.lease_health(status.started, Instant::now()).map(|()| ok),
                None => Ok(ok),
            }) {
                Ok(msg) => match &status.fleet {
                    Some(fleet) => text(StatusCode::OK, format!("{msg}\n{}\n", fleet.summary())),
                    None => text(StatusCode::OK, format!("{msg}\n")),
                },
                Err(msg) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("unhealthy: {msg}\n"),
                ),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics or /healthz\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(alive: bool, last: Option<Instant>, started: Instant) -> Status {
        Status {
            started,
            alive,
            last_finished: last,
            latest: None,
            counters: CheckCounters::new(),
            fleet: None,
        }
    }

    #[test]
    fn a_replica_that_cannot_list_its_leases_is_unhealthy() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut f = FleetStatus {
            leases_limit: Some(Duration::from_millis(500)),
            ..FleetStatus::default()
        };
        assert!(f.lease_health(t0, at(400)).is_ok());
        assert_eq!(
            f.lease_health(t0, at(600)),
            Err("the Leases have not been listed for 600ms (limit 500ms)".into())
        );
        f.leases_seen = Some(at(1000));
        assert!(f.lease_health(t0, at(1400)).is_ok());
        f.leases_limit = None;
        assert!(f.lease_health(t0, at(9000)).is_ok());
    }

    #[test]
    fn health_rules() {
        let t0 = Instant::now();
        let limit = Duration::from_millis(300);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert!(health(&status(true, None, t0), at(100), limit).is_ok());
        assert!(health(&status(true, None, t0), at(301), limit).is_err());
        assert!(health(&status(true, Some(at(1000)), t0), at(1300), limit).is_ok());
        let late = health(&status(true, Some(at(1000)), t0), at(1400), limit);
        assert_eq!(
            late,
            Err("last check finished 400ms ago (limit 300ms)".into())
        );
        assert_eq!(
            health(&status(false, Some(at(1000)), t0), at(1000), limit),
            Err("the check loop has stopped".into())
        );
    }
}
