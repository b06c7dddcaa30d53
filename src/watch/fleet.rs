//! The fleet agent (`watch --all`): every interval it reads the commit once (fetching a URL
//! remote), selects the environments, and checks those this replica holds — all of them when it
//! runs alone, or, with a Lease namespace, the share the Leases give it ([`super::lease`]). A
//! check's result turns into a notice or a heal only after the replica has written the episode to
//! the env's Lease with the resourceVersion it holds: a replica that lost the Lease in the
//! meantime gets a 409 and stays silent, so an alert is never sent twice, and a replica taking
//! over resumes the episode (it does not alert again for drift already alerted).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use crate::drift::{DriftReport, LayerDrift};
use crate::engine::{BoxFuture, CancelToken, Layer};
use crate::env::watch::WatchSettings;

use super::agent::{Healer, WatchError};
use super::episode::{alert_text, converged_text, CheckVerdict, Episodes, Notice};
use super::lease::{decide, EpisodeRecord, Held, LeaseError, LeaseView, Leases, Listing};
use super::server::{self, FleetStatus, Shared};
use super::webhook::{DeliveryOptions, Webhook, WebhookClient};

/// Reads the source once per round.
pub trait FleetSource: Send + Sync {
    /// The commit at the configured ref (fetched when the repository is a URL) and the selected
    /// environments in it; `Err` with a message when the commit cannot be read.
    fn open(&self) -> BoxFuture<'static, Result<Arc<dyn FleetRound>, String>>;
}

/// One commit's environments and their checks.
pub trait FleetRound: Send + Sync {
    fn commit(&self) -> String;
    fn envs(&self) -> Vec<String>;
    /// The drift check of `env` at this commit; failures are inside the report.
    fn check(&self, env: &str) -> BoxFuture<'static, DriftReport>;
    /// The env's own `spec.watch` settings (unset ones fall back to the agent's options).
    fn settings(&self, env: &str) -> WatchSettings;
}

/// How the fleet agent runs.
#[derive(Clone)]
pub struct FleetOptions {
    /// Names this replica on Leases, endpoints and alerts.
    pub replica: String,
    pub interval: Duration,
    pub check_timeout: Duration,
    pub alert_after: Duration,
    pub listen: SocketAddr,
    pub webhook: Option<Webhook>,
    pub delivery: DeliveryOptions,
    /// Heals with this where the env's `spec.watch.heal` (else `heal`) says so.
    pub healer: Option<Arc<dyn Healer>>,
    pub heal: bool,
    pub heal_timeout: Duration,
    /// Checks in flight at once.
    pub concurrency: usize,
    /// Shares the envs with other replicas through these Leases; `None`: watches all of them.
    pub leases: Option<Leases>,
    pub log: bool,
}

/// Binds `opts.listen`, then runs until `cancel`; on cancel releases every Lease it holds (so
/// the other replicas take its envs over at once) and removes its membership Lease.
pub async fn run(
    opts: FleetOptions,
    source: Arc<dyn FleetSource>,
    cancel: CancelToken,
) -> Result<(), WatchError> {
    if opts.interval.is_zero() {
        return Err(WatchError::ZeroInterval);
    }
    let client = match &opts.webhook {
        Some(w) => Some(WebhookClient::new(w.clone(), opts.delivery)?),
        None => None,
    };
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|source| WatchError::Listen {
            addr: opts.listen,
            source,
        })?;
    let shared = server::shared();
    lock(&shared).fleet = Some(FleetStatus {
        replica: opts.replica.clone(),
        live: 1,
        // Unreachable Leases for two durations: this replica holds nothing any more.
        leases_limit: opts.leases.as_ref().map(|l| l.duration.saturating_mul(2)),
        ..FleetStatus::default()
    });
    if let Ok(addr) = listener.local_addr() {
        log(
            &opts,
            format_args!("serving /metrics and /healthz on http://{addr}"),
        );
    }
    let server_stop = CancelToken::new();
    let limit = opts.interval.saturating_mul(3) + opts.check_timeout;
    let server = tokio::spawn(server::serve(
        listener,
        shared.clone(),
        limit,
        server_stop.clone(),
    ));
    let (queue, worker) = match client {
        Some(client) => {
            let (tx, rx) = mpsc::channel(64);
            (
                Some(tx),
                Some(tokio::spawn(deliver(client, rx, opts.clone()))),
            )
        }
        None => (None, None),
    };
    let owner = Arc::new(match &opts.leases {
        Some(leases) => Ownership::Leased(Box::new(Coordinator::new(leases.clone(), opts.log))),
        None => Ownership::Solo(Mutex::new(Solo::default())),
    });
    let ticks_stop = CancelToken::new();
    let ticks = opts.leases.as_ref().map(|leases| {
        tokio::spawn(tick_loop(
            owner.clone(),
            shared.clone(),
            leases.duration,
            ticks_stop.clone(),
        ))
    });

    rounds(&opts, source, &owner, &shared, queue.as_ref(), &cancel).await;

    ticks_stop.cancel();
    if let Some(t) = ticks {
        let _ = t.await;
    }
    if let Ownership::Leased(c) = owner.as_ref() {
        c.shutdown().await;
    }
    lock(&shared).alive = false;
    drop(queue);
    if let Some(worker) = worker {
        let abort = worker.abort_handle();
        if tokio::time::timeout(opts.delivery.attempt_timeout, worker)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    server_stop.cancel();
    let _ = server.await;
    Ok(())
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, server::Status> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// How often a replica lists the Leases: a third of the duration, at most a second, so a
/// released env moves within about a second; renewals are rarer ([`Coordinator::tick`]).
pub fn tick_period(duration: Duration) -> Duration {
    (duration / 3).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// Lists, renews, acquires and releases every [`tick_period`].
async fn tick_loop(owner: Arc<Ownership>, shared: Shared, duration: Duration, stop: CancelToken) {
    let Ownership::Leased(coordinator) = owner.as_ref() else {
        return;
    };
    let mut ticker = tokio::time::interval(tick_period(duration));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            // Cancel-safe: dropping `cancelled` only drops a watch receiver.
            _ = stop.cancelled() => return,
            // Cancel-safe: a dropped tick is simply not taken.
            _ = ticker.tick() => {}
        }
        // Not raced against `stop`: a tick is bounded by its calls' timeouts, and finishing it
        // keeps the held set consistent for the release at shutdown.
        let listed = coordinator.tick().await;
        let (held, live) = coordinator.view().await;
        let mut status = lock(&shared);
        if let Some(f) = status.fleet.as_mut() {
            f.held = held;
            f.live = live;
            if listed {
                f.leases_seen = Some(Instant::now());
            }
        }
    }
}

async fn rounds(
    opts: &FleetOptions,
    source: Arc<dyn FleetSource>,
    owner: &Arc<Ownership>,
    shared: &Shared,
    queue: Option<&mpsc::Sender<String>>,
    cancel: &CancelToken,
) {
    let mut ticker = tokio::time::interval(opts.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // When each env's last check started (for envs with an interval of their own).
    let mut checked: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        tokio::select! {
            biased;
            // Cancel-safe: dropping `cancelled` only drops a watch receiver.
            _ = cancel.cancelled() => return,
            // Cancel-safe: a dropped tick is simply not taken.
            _ = ticker.tick() => {}
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            // Abandoning a round on cancel is what cancel means; nothing is half-written (each
            // Lease write is one request).
            _ = round(opts, &source, owner, shared, queue, &mut checked) => {}
        }
    }
}

async fn round(
    opts: &FleetOptions,
    source: &Arc<dyn FleetSource>,
    owner: &Arc<Ownership>,
    shared: &Shared,
    queue: Option<&mpsc::Sender<String>>,
    checked: &mut BTreeMap<String, Instant>,
) {
    let started = Instant::now();
    let opened = match tokio::time::timeout(opts.check_timeout, source.open()).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "reading the commit did not finish within {}",
            crate::report::format_duration(opts.check_timeout)
        )),
    };
    let fleet_round = match opened {
        Ok(r) => r,
        Err(message) => {
            // The health check turns 503 once rounds keep failing for its limit.
            log(
                opts,
                format_args!("cannot read the environments: {message}"),
            );
            return;
        }
    };
    let envs = fleet_round.envs();
    owner.set_envs(envs.clone()).await;
    let held = owner.held().await;
    {
        let mut status = lock(shared);
        if let Some(f) = status.fleet.as_mut() {
            f.envs = envs.len();
            if matches!(owner.as_ref(), Ownership::Solo(_)) {
                f.held = held.clone();
            }
        }
    }
    let commit = fleet_round.commit();
    checked.retain(|e, _| held.contains(e));
    // An env with its own interval is checked on the first round at least that long after its
    // last check (a round comes every --interval, so a shorter one means every round).
    let due: Vec<String> = held
        .iter()
        .filter(|e| {
            let every = fleet_round.settings(e).interval.unwrap_or(opts.interval);
            checked
                .get(*e)
                .is_none_or(|t| started.saturating_duration_since(*t) + opts.interval / 10 >= every)
        })
        .cloned()
        .collect();
    for e in &due {
        checked.insert(e.clone(), started);
    }
    let checks = futures::stream::iter(due.clone())
        .map(|env| {
            let fleet_round = fleet_round.clone();
            let commit = commit.clone();
            async move {
                let report = timed_check(opts, &fleet_round, &env, &commit).await;
                (env, report)
            }
        })
        .buffer_unordered(opts.concurrency.max(1));
    futures::pin_mut!(checks);
    while let Some((env, report)) = checks.next().await {
        let settings = fleet_round.settings(&env);
        settle(
            opts,
            owner,
            shared,
            queue,
            &env,
            &settings,
            Arc::new(report),
        )
        .await;
    }
    let took = started.elapsed();
    let mut status = lock(shared);
    status.last_finished = Some(Instant::now());
    if let Some(f) = status.fleet.as_mut() {
        f.round = Some(took);
        f.reports.retain(|e, _| envs.contains(e));
    }
    drop(status);
    log(
        opts,
        format_args!(
            "round at {}: checked {} of {} env(s) ({} held) in {}",
            commit.get(..12).unwrap_or(&commit),
            due.len(),
            envs.len(),
            held.len(),
            crate::report::format_duration(took)
        ),
    );
}

/// One env's check on its own task within `check_timeout` (a panic or a timeout is a report
/// with every layer in error).
async fn timed_check(
    opts: &FleetOptions,
    fleet_round: &Arc<dyn FleetRound>,
    env: &str,
    commit: &str,
) -> DriftReport {
    let checked_at = SystemTime::now();
    let started = Instant::now();
    let task = tokio::spawn(fleet_round.check(env));
    let abort = task.abort_handle();
    let outcome = tokio::time::timeout(opts.check_timeout, task).await;
    abort.abort();
    let message = match outcome {
        Ok(Ok(report)) => return report,
        Ok(Err(join)) if join.is_panic() => "the check panicked".to_string(),
        Ok(Err(_)) => "the check was cancelled".to_string(),
        Err(_) => format!(
            "the check did not finish within {}",
            crate::report::format_duration(opts.check_timeout)
        ),
    };
    DriftReport {
        env: env.to_string(),
        commit: commit.to_string(),
        checked_at,
        duration: started.elapsed(),
        layers: Layer::ALL
            .iter()
            .map(|&l| LayerDrift::error(l, &message, started.elapsed()))
            .collect(),
    }
}

/// Records a finished check; turns it into a notice or heal only once the episode is on the
/// env's Lease (so only the holder speaks).
async fn settle(
    opts: &FleetOptions,
    owner: &Arc<Ownership>,
    shared: &Shared,
    queue: Option<&mpsc::Sender<String>>,
    env: &str,
    settings: &WatchSettings,
    report: Arc<DriftReport>,
) {
    let Some(before) = owner.episode(env).await else {
        log(
            opts,
            format_args!("{env}: lease lost during the check; its result is discarded"),
        );
        return;
    };
    {
        let mut status = lock(shared);
        status.counters.record(&report);
        if let Some(f) = status.fleet.as_mut() {
            f.reports.insert(env.to_string(), report.clone());
        }
    }
    log_check(opts, env, &report);
    let verdict = CheckVerdict::of(&report);
    let now_i = Instant::now();
    let now_s = SystemTime::now();
    let since = before.since.map(|s| {
        let ago = now_s.duration_since(s).unwrap_or_default();
        now_i.checked_sub(ago).unwrap_or(now_i)
    });
    let alert_after = settings.alert_after.unwrap_or(opts.alert_after);
    let mut episodes = Episodes::resume(alert_after, since, before.alerted);
    let notice = episodes.observe(now_i, verdict);
    let after = EpisodeRecord {
        since: episodes.drifting_since().map(|s| {
            if Some(s) == since {
                before.since.unwrap_or(now_s)
            } else {
                now_s - now_i.saturating_duration_since(s)
            }
        }),
        alerted: episodes.alerted(),
    };
    if after != before {
        if let Err(e) = owner.record(env, after).await {
            log(
                opts,
                format_args!("{env}: episode not recorded, so no notice is sent: {e}"),
            );
            return;
        }
    }
    if let Some(notice) = notice {
        let text = match notice {
            Notice::Alert { lasted } => alert_text(&report, lasted),
            Notice::Converged { lasted } => converged_text(&report, lasted),
        };
        let text = format!("{text}\n(replica {})", opts.replica);
        match queue {
            Some(q) => {
                if q.try_send(text).is_err() {
                    log(
                        opts,
                        format_args!("{env}: webhook queue full; notice dropped"),
                    );
                }
            }
            None => log(opts, format_args!("{text}")),
        }
    }
    if verdict == CheckVerdict::Drift && settings.heal.unwrap_or(opts.heal) {
        if let Some(healer) = &opts.healer {
            // Heal only while the Lease is provably still ours.
            if let Err(e) = owner.record(env, after).await {
                log(opts, format_args!("{env}: not healing: {e}"));
                return;
            }
            let layers = report.drifted_layers();
            let names: Vec<&str> = layers.iter().map(|l| l.as_str()).collect();
            log(opts, format_args!("{env}: healing {}", names.join(", ")));
            let result =
                super::agent::heal_within(healer.as_ref(), &report, &layers, opts.heal_timeout)
                    .await;
            match result {
                Ok(()) => log(opts, format_args!("{env}: healed {}", names.join(", "))),
                Err(e) => log(
                    opts,
                    format_args!("{env}: heal of {} failed: {e}", names.join(", ")),
                ),
            }
        }
    }
}

async fn deliver(client: WebhookClient, mut rx: mpsc::Receiver<String>, opts: FleetOptions) {
    while let Some(text) = rx.recv().await {
        match client.post(&text).await {
            Ok(_) => log(
                &opts,
                format_args!("notice sent to webhook {}", client.webhook()),
            ),
            Err((attempts, err)) => log(
                &opts,
                format_args!("notice not delivered after {attempts} attempt(s): {err}"),
            ),
        }
    }
}

fn log_check(opts: &FleetOptions, env: &str, report: &DriftReport) {
    if report.has_drift() {
        let layers: Vec<&str> = report.drifted_layers().iter().map(|l| l.as_str()).collect();
        log(
            opts,
            format_args!(
                "{env}: drift: {} resource(s) in {}",
                report.entry_count(),
                layers.join(", ")
            ),
        );
    }
    for l in report.layers.iter() {
        if let crate::drift::DriftStatus::Error(message) = &l.status {
            log(
                opts,
                format_args!("{env}: check error in {}: {message}", l.layer),
            );
        }
    }
}

fn log(opts: &FleetOptions, message: std::fmt::Arguments<'_>) {
    if opts.log {
        eprintln!("watch [{}]: {message}", opts.replica);
    }
}

/// Who decides which envs this replica checks.
enum Ownership {
    /// No Leases: every selected env, episodes kept in memory.
    Solo(Mutex<Solo>),
    Leased(Box<Coordinator>),
}

#[derive(Default)]
struct Solo {
    envs: Vec<String>,
    episodes: BTreeMap<String, EpisodeRecord>,
}

impl Ownership {
    async fn set_envs(&self, envs: Vec<String>) {
        match self {
            Ownership::Solo(s) => {
                let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
                s.episodes.retain(|e, _| envs.contains(e));
                s.envs = envs;
            }
            Ownership::Leased(c) => c.state.lock().await.envs = envs,
        }
    }

    async fn held(&self) -> Vec<String> {
        match self {
            Ownership::Solo(s) => s.lock().unwrap_or_else(|p| p.into_inner()).envs.clone(),
            Ownership::Leased(c) => {
                let st = c.state.lock().await;
                st.held
                    .iter()
                    .filter(|(_, h)| h.renewed.elapsed() < c.leases.duration)
                    .map(|(e, _)| e.clone())
                    .collect()
            }
        }
    }

    /// The env's episode while this replica holds it (and renewed within the duration).
    async fn episode(&self, env: &str) -> Option<EpisodeRecord> {
        match self {
            Ownership::Solo(s) => {
                let s = s.lock().unwrap_or_else(|p| p.into_inner());
                s.envs
                    .iter()
                    .any(|e| e == env)
                    .then(|| s.episodes.get(env).copied().unwrap_or_default())
            }
            Ownership::Leased(c) => {
                let st = c.state.lock().await;
                st.held
                    .get(env)
                    .filter(|h| h.renewed.elapsed() < c.leases.duration)
                    .map(|h| EpisodeRecord::of(&h.lease))
            }
        }
    }

    /// Writes the episode (on the Lease: a guarded renew, which also proves it is still held).
    async fn record(&self, env: &str, episode: EpisodeRecord) -> Result<(), String> {
        match self {
            Ownership::Solo(s) => {
                s.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .episodes
                    .insert(env.to_string(), episode);
                Ok(())
            }
            Ownership::Leased(c) => c.record(env, episode).await,
        }
    }
}

/// Lease requests in flight at once during a tick.
const LEASE_CALLS: usize = 16;

type LeaseCall<'a> = BoxFuture<'a, (String, Result<Lease, LeaseError>)>;

/// The Lease side of a replica: what it holds, and the tick that keeps it so.
pub struct Coordinator {
    leases: Leases,
    state: tokio::sync::Mutex<CoordState>,
    log: bool,
}

#[derive(Default)]
struct CoordState {
    envs: Vec<String>,
    held: BTreeMap<String, Held>,
    live: usize,
    ticks: u64,
    /// Envs given away for balance, not taken back before the instant.
    cooling: BTreeMap<String, Instant>,
    warned: BTreeSet<String>,
}

impl Coordinator {
    fn new(leases: Leases, log: bool) -> Coordinator {
        Coordinator {
            leases,
            state: tokio::sync::Mutex::new(CoordState {
                live: 1,
                ..CoordState::default()
            }),
            log,
        }
    }

    fn log(&self, message: std::fmt::Arguments<'_>) {
        if self.log {
            eprintln!("watch [{}]: {message}", self.leases.me);
        }
    }

    async fn view(&self) -> (Vec<String>, usize) {
        let st = self.state.lock().await;
        (st.held.keys().cloned().collect(), st.live)
    }

    /// One round of the Lease protocol: list, heartbeat, then renew / release / acquire as
    /// [`decide`] says. The first tick only announces this replica, so replicas starting
    /// together see each other before taking envs.
    /// False when the Leases could not even be listed.
    async fn tick(&self) -> bool {
        let mut st = self.state.lock().await;
        let me = self.leases.me.clone();
        let now = SystemTime::now();
        let list = match self.leases.list().await {
            Ok(l) => l,
            Err(e) => {
                self.log(format_args!(
                    "cannot list the Leases in {}: {}",
                    self.leases.namespace(),
                    chain(&e)
                ));
                return false;
            }
        };
        let listing = Listing::of(list, &st.envs, &me, now);
        if let Err(e) = self.leases.heartbeat(listing.own_member.as_ref()).await {
            self.log(format_args!(
                "cannot renew this replica's membership Lease: {}",
                chain(&e)
            ));
        }
        for dead in &listing.dead_members {
            // Another replica may delete it first; either way it is gone.
            let _ = self.leases.delete_member(dead).await;
        }
        st.live = listing.members.len();
        st.ticks += 1;
        if st.ticks == 1 {
            return true;
        }
        let views: BTreeMap<String, LeaseView> = listing
            .envs
            .iter()
            .map(|(e, l)| (e.clone(), LeaseView::of(l, now)))
            .collect();
        let at = Instant::now();
        st.cooling.retain(|_, until| *until > at);
        let cooling: BTreeSet<String> = st.cooling.keys().cloned().collect();
        let d = decide(&me, &st.envs, &views, &listing.members, &cooling);
        for env in &d.foreign {
            if st.warned.insert(env.clone()) {
                self.log(format_args!(
                    "{env}: Lease {} exists without phoenix's label {}=phoenix; the env is left unwatched",
                    super::lease::env_lease_name(env),
                    super::lease::LABEL_MANAGED_BY
                ));
            }
        }
        let lost: Vec<String> = st
            .held
            .keys()
            .filter(|e| !d.renew.contains(e) && !d.release.contains(e))
            .cloned()
            .collect();
        for env in lost {
            st.held.remove(&env);
            let by = views
                .get(&env)
                .and_then(|v| v.holder.clone())
                .unwrap_or_else(|| "nobody".into());
            self.log(format_args!("{env}: lease lost (now held by {by})"));
        }
        // A Lease is renewed once a quarter of its duration has passed, so it survives about
        // three failed renewals; in between, the listed copy (same resourceVersion as this
        // replica's last write, or it would not name this replica) is kept.
        let renew_after = self.leases.duration / 4;
        let mut due: Vec<(String, &Lease)> = Vec::new();
        for env in &d.renew {
            let Some(lease) = listing.envs.get(env) else {
                continue;
            };
            match st.held.get_mut(env) {
                Some(h) if h.renewed.elapsed() < renew_after => h.lease = lease.clone(),
                _ => due.push((env.clone(), lease)),
            }
        }
        // Renewals and acquisitions go out concurrently: a replica taking over a hundred envs
        // after a peer died must not spend seconds on one request after another.
        let calls: Vec<LeaseCall<'_>> = due
            .into_iter()
            .map(|(env, lease)| -> LeaseCall<'_> {
                Box::pin(async move {
                    let r = self.leases.renew(lease, None).await;
                    (env, r)
                })
            })
            .collect();
        let renewed: Vec<(String, Result<Lease, LeaseError>)> = futures::stream::iter(calls)
            .buffer_unordered(LEASE_CALLS)
            .collect()
            .await;
        for (env, result) in renewed {
            match result {
                Ok(l) => {
                    st.held.insert(
                        env,
                        Held {
                            lease: l,
                            renewed: Instant::now(),
                        },
                    );
                }
                Err(LeaseError::Lost { .. }) => {
                    st.held.remove(&env);
                    self.log(format_args!("{env}: lease lost while renewing"));
                }
                Err(e) => self.log(format_args!("{env}: renewing failed: {}", chain(&e))),
            }
        }
        for env in &d.release {
            let Some(lease) = listing.envs.get(env) else {
                continue;
            };
            st.held.remove(env);
            match self.leases.release(lease).await {
                Ok(_) => {
                    st.cooling.insert(env.clone(), at + self.leases.duration);
                    self.log(format_args!(
                        "{env}: lease released (share {} with {} live replica(s))",
                        d.share,
                        listing.members.len()
                    ));
                }
                Err(e) => self.log(format_args!("{env}: releasing failed: {}", chain(&e))),
            }
        }
        let calls: Vec<LeaseCall<'_>> = d
            .acquire
            .iter()
            .map(|env| -> LeaseCall<'_> {
                let existing = listing.envs.get(env);
                Box::pin(async move { (env.clone(), self.leases.acquire(env, existing).await) })
            })
            .collect();
        let acquired: Vec<(String, Result<Lease, LeaseError>)> = futures::stream::iter(calls)
            .buffer_unordered(LEASE_CALLS)
            .collect()
            .await;
        for (env, result) in acquired {
            match result {
                Ok(l) => {
                    match views.get(&env).and_then(|v| v.holder.clone()) {
                        Some(prev) => self.log(format_args!(
                            "{env}: lease acquired (expired holder {prev})"
                        )),
                        None => self.log(format_args!("{env}: lease acquired")),
                    }
                    st.held.insert(
                        env,
                        Held {
                            lease: l,
                            renewed: Instant::now(),
                        },
                    );
                }
                // Another replica was faster; its Lease shows up on the next list.
                Err(LeaseError::Lost { .. }) => {}
                Err(e) => self.log(format_args!("{env}: acquiring failed: {}", chain(&e))),
            }
        }
        true
    }

    async fn record(&self, env: &str, episode: EpisodeRecord) -> Result<(), String> {
        let mut st = self.state.lock().await;
        let Some(held) = st.held.get(env) else {
            return Err("this replica no longer holds the lease".into());
        };
        if held.renewed.elapsed() >= self.leases.duration {
            return Err("the lease was not renewed within its duration".into());
        }
        match self.leases.renew(&held.lease, Some(episode)).await {
            Ok(l) => {
                st.held.insert(
                    env.to_string(),
                    Held {
                        lease: l,
                        renewed: Instant::now(),
                    },
                );
                Ok(())
            }
            Err(e @ LeaseError::Lost { .. }) => {
                st.held.remove(env);
                Err(chain(&e))
            }
            Err(e) => Err(chain(&e)),
        }
    }

    /// Releases every held Lease and removes the membership Lease: the other replicas take the
    /// envs on their next tick instead of waiting for expiry.
    async fn shutdown(&self) {
        let mut st = self.state.lock().await;
        let held = std::mem::take(&mut st.held);
        let n = held.len();
        // Concurrently: a pod has its termination grace period, not one call timeout per env.
        let calls: Vec<LeaseCall<'_>> = held
            .iter()
            .map(|(env, h)| -> LeaseCall<'_> {
                Box::pin(async move { (env.clone(), self.leases.release(&h.lease).await) })
            })
            .collect();
        let released: Vec<(String, Result<Lease, LeaseError>)> = futures::stream::iter(calls)
            .buffer_unordered(LEASE_CALLS)
            .collect()
            .await;
        for (env, result) in released {
            if let Err(e) = result {
                self.log(format_args!("{env}: releasing failed: {}", chain(&e)));
            }
        }
        let own = super::lease::member_lease_name(&self.leases.me);
        if let Err(e) = self.leases.delete_member(&own).await {
            self.log(format_args!(
                "cannot remove the membership Lease {own}: {}",
                chain(&e)
            ));
        }
        self.log(format_args!("released {n} lease(s) on shutdown"));
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
