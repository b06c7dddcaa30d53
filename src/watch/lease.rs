//! Sharding a fleet of environments across watch replicas with `coordination.k8s.io/v1` Leases:
//! one Lease per environment (`phoenix-watch-ENV`: holder, renew time, duration, transitions, and
//! the drift episode the holder is in), one membership Lease per live replica
//! (`phoenix-replica-ID`) so every replica knows how many share the work, and the pure rule that
//! decides what a replica acquires, renews and releases on each tick.
//!
//! Every write is a `replace` carrying the `resourceVersion` the replica read (optimistic
//! concurrency): a 409 means another replica changed the Lease first, and this one backs off.
//! Expiry is judged as `renewTime + leaseDurationSeconds < now` on this replica's clock, the
//! standard rule: replicas must keep their clocks in sync to well within the lease duration.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, ListParams, PostParams};

/// `app.kubernetes.io/managed-by: phoenix` marks the Leases phoenix may write; a Lease of the same
/// name without it is never touched (its env stays unwatched, with a warning).
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// `env` or `replica`: what a phoenix Lease stands for.
pub const LABEL_ROLE: &str = "phoenix.dev/watch-lease";
pub const LABEL_ENV: &str = "phoenix.dev/env";
/// RFC 3339 time the open drift episode began; absent when none is open.
pub const ANNOTATION_DRIFT_SINCE: &str = "phoenix.dev/drift-since";
/// `true` once the open episode's alert was sent (so a replica taking over never sends it again).
pub const ANNOTATION_ALERTED: &str = "phoenix.dev/drift-alerted";

/// The Lease name of an environment's watch.
pub fn env_lease_name(env: &str) -> String {
    format!("phoenix-watch-{env}")
}

/// The membership Lease name of a replica (its id made a valid object name).
pub fn member_lease_name(replica: &str) -> String {
    let mut id: String = replica
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    id.truncate(200);
    let id = id.trim_matches(|c| c == '-' || c == '.');
    format!("phoenix-replica-{}", if id.is_empty() { "x" } else { id })
}

/// The drift episode of an environment as its Lease records it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpisodeRecord {
    pub since: Option<SystemTime>,
    pub alerted: bool,
}

impl EpisodeRecord {
    pub fn of(lease: &Lease) -> EpisodeRecord {
        let annotations = lease.metadata.annotations.as_ref();
        let since = annotations
            .and_then(|a| a.get(ANNOTATION_DRIFT_SINCE))
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .map(SystemTime::from);
        let alerted = since.is_some()
            && annotations
                .and_then(|a| a.get(ANNOTATION_ALERTED))
                .is_some_and(|v| v == "true");
        EpisodeRecord { since, alerted }
    }

    fn write(&self, lease: &mut Lease) {
        let annotations = lease.metadata.annotations.get_or_insert_with(BTreeMap::new);
        match self
            .since
            .and_then(|s| k8s_openapi::jiff::Timestamp::try_from(s).ok())
        {
            Some(since) => {
                annotations.insert(ANNOTATION_DRIFT_SINCE.into(), since.to_string());
                annotations.insert(ANNOTATION_ALERTED.into(), self.alerted.to_string());
            }
            None => {
                annotations.remove(ANNOTATION_DRIFT_SINCE);
                annotations.remove(ANNOTATION_ALERTED);
            }
        }
    }
}

/// How one environment's Lease reads at a moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseView {
    /// `None`: released (or never held).
    pub holder: Option<String>,
    pub expired: bool,
    /// Carries phoenix's mark: only then may a replica write it.
    pub ours: bool,
}

impl LeaseView {
    pub fn of(lease: &Lease, now: SystemTime) -> LeaseView {
        let spec = lease.spec.as_ref();
        let holder = spec
            .and_then(|s| s.holder_identity.clone())
            .filter(|h| !h.is_empty());
        LeaseView {
            holder,
            expired: expired(lease, now),
            ours: is_ours(lease),
        }
    }

    fn live_holder(&self) -> Option<&str> {
        if self.expired {
            None
        } else {
            self.holder.as_deref()
        }
    }
}

fn is_ours(lease: &Lease) -> bool {
    lease
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_MANAGED_BY))
        .is_some_and(|v| v == "phoenix")
}

/// `renewTime` (else `acquireTime`) + `leaseDurationSeconds` before `now`; a Lease with neither
/// time or no duration counts as expired.
pub fn expired(lease: &Lease, now: SystemTime) -> bool {
    let Some(spec) = &lease.spec else {
        return true;
    };
    let Some(at) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let seconds = spec.lease_duration_seconds.unwrap_or(0).max(0) as u64;
    SystemTime::from(at.0) + Duration::from_secs(seconds) < now
}

/// What a replica does on a tick.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub renew: Vec<String>,
    pub acquire: Vec<String>,
    pub release: Vec<String>,
    /// Envs whose Lease exists without phoenix's mark: never written, never watched.
    pub foreign: Vec<String>,
    /// The most envs this replica should hold: ceil(envs / live replicas).
    pub share: usize,
}

/// The rule of one tick, pure. `leases` maps env names to their Lease (envs without one are
/// absent; Leases of envs no longer in `envs` may be present); `members` are the live replicas
/// (this one included). A replica renews what it holds, releases what it holds beyond its share
/// (ceil of envs over live replicas) or of envs that are gone, gives one back when every env is
/// held but some live replica holds fewer than the floor of the share (so ten envs over three
/// replicas settle at 4/3/3, not 4/4/2), and acquires free ones (no Lease, released or expired)
/// up to its share, in an order of its own so replicas starting together rarely collide; it
/// does not take back the `cooling` envs it just gave away for balance.
pub fn decide(
    me: &str,
    envs: &[String],
    leases: &BTreeMap<String, LeaseView>,
    members: &BTreeSet<String>,
    cooling: &BTreeSet<String>,
) -> Decision {
    let wanted: BTreeSet<&str> = envs.iter().map(String::as_str).collect();
    let live = members.len().max(1);
    let share = envs.len().div_ceil(live);
    let floor = envs.len() / live;
    let mut d = Decision {
        share,
        ..Decision::default()
    };
    let mut mine: Vec<String> = Vec::new();
    for (env, view) in leases {
        if !view.ours {
            if wanted.contains(env.as_str()) {
                d.foreign.push(env.clone());
            }
            continue;
        }
        if view.holder.as_deref() == Some(me) {
            if wanted.contains(env.as_str()) {
                mine.push(env.clone());
            } else {
                d.release.push(env.clone());
            }
        }
    }
    mine.sort_by_key(|e| rank(me, e));
    let over_share = mine.len() > share;
    if over_share {
        d.release.extend(mine.split_off(share));
    }
    let free: Vec<&String> = envs
        .iter()
        .filter(|e| match leases.get(*e) {
            None => true,
            Some(v) => v.ours && v.live_holder().is_none() && v.holder.as_deref() != Some(me),
        })
        .collect();
    if !over_share && free.is_empty() && mine.len() == share && share > floor {
        let mut held: BTreeMap<&str, usize> = members.iter().map(|m| (m.as_str(), 0)).collect();
        for v in leases.values() {
            if let Some(h) = v.live_holder() {
                if let Some(n) = held.get_mut(h) {
                    *n += 1;
                }
            }
        }
        if held.values().any(|&n| n < floor) {
            if let Some(last) = mine.pop() {
                d.release.push(last);
            }
        }
    }
    let room = share.saturating_sub(mine.len());
    let mut free: Vec<&String> = if d.release.is_empty() {
        free
    } else {
        Vec::new()
    };
    free.retain(|e| !cooling.contains(*e));
    free.sort_by_key(|e| rank(me, e));
    d.acquire = free.into_iter().take(room).cloned().collect();
    d.renew = mine;
    d
}

/// A stable per-replica order of envs (FNV-1a of replica and env).
fn rank(me: &str, env: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in me.bytes().chain([0]).chain(env.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Why a Lease write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// 409 (someone wrote first) or 404 (deleted): this replica does not hold it.
    #[error("lease {name} changed under this replica (HTTP {code})")]
    Lost { name: String, code: u16 },
    #[error("{what} lease {name} in namespace {namespace}")]
    Api {
        what: &'static str,
        name: String,
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("{what} did not finish within {limit:?}")]
    Timeout { what: String, limit: Duration },
}

/// The Lease API of one namespace as one replica uses it; every call has a timeout.
#[derive(Clone)]
pub struct Leases {
    api: Api<Lease>,
    namespace: String,
    pub me: String,
    pub duration: Duration,
    call_timeout: Duration,
}

impl Leases {
    pub fn new(client: kube::Client, namespace: &str, me: &str, duration: Duration) -> Leases {
        Leases {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            me: me.to_string(),
            duration,
            // A Lease call slower than a third of the duration would let it expire anyway.
            call_timeout: (duration / 3).max(Duration::from_secs(2)),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    async fn call<T>(
        &self,
        what: &'static str,
        name: &str,
        fut: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, LeaseError> {
        match tokio::time::timeout(self.call_timeout, fut).await {
            Err(_) => Err(LeaseError::Timeout {
                what: format!("{what} lease {name}"),
                limit: self.call_timeout,
            }),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(kube::Error::Api(s))) if s.code == 409 || s.code == 404 => {
                Err(LeaseError::Lost {
                    name: name.to_string(),
                    code: s.code,
                })
            }
            Ok(Err(source)) => Err(LeaseError::Api {
                what,
                name: name.to_string(),
                namespace: self.namespace.clone(),
                source,
            }),
        }
    }

    /// Every Lease of the namespace.
    pub async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        let list = self
            .call("listing", "*", self.api.list(&ListParams::default()))
            .await?;
        Ok(list.items)
    }

    fn spec_now(&self, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let seconds = i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let prev_holder = previous
            .and_then(|s| s.holder_identity.as_deref())
            .filter(|h| !h.is_empty());
        let transitions = previous.and_then(|s| s.lease_transitions).unwrap_or(0);
        let ours_already = prev_holder == Some(self.me.as_str());
        LeaseSpec {
            holder_identity: Some(self.me.clone()),
            lease_duration_seconds: Some(seconds),
            acquire_time: if ours_already {
                previous.and_then(|s| s.acquire_time.clone())
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(match previous {
                None => 0,
                Some(_) if ours_already => transitions,
                Some(_) => transitions + 1,
            }),
            ..LeaseSpec::default()
        }
    }

    /// Takes an env's Lease: creates it when there is none, else replaces the free one read as
    /// `existing` (its resourceVersion guards the write). Keeps the recorded episode.
    pub async fn acquire(&self, env: &str, existing: Option<&Lease>) -> Result<Lease, LeaseError> {
        let labels = [(LABEL_ROLE, "env"), (LABEL_ENV, env)];
        self.hold(&env_lease_name(env), &labels, existing, "acquiring")
            .await
    }

    /// Creates Lease `name` held by this replica (with phoenix's label and `labels`), or, when
    /// it exists as `existing`, replaces it held by this replica (its resourceVersion guards the
    /// write; what else it records is kept).
    async fn hold(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        existing: Option<&Lease>,
        replacing: &'static str,
    ) -> Result<Lease, LeaseError> {
        match existing {
            None => {
                let mut all =
                    BTreeMap::from([(LABEL_MANAGED_BY.to_string(), "phoenix".to_string())]);
                all.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.to_string()),
                        labels: Some(all),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec_now(None)),
                };
                self.call(
                    "creating",
                    name,
                    self.api.create(&PostParams::default(), &lease),
                )
                .await
            }
            Some(old) => {
                let mut lease = old.clone();
                lease.spec = Some(self.spec_now(old.spec.as_ref()));
                self.replace(replacing, name, &lease).await
            }
        }
    }

    /// Renews a Lease this replica holds (as last read or written), optionally recording an
    /// episode on it; a 409 means it is no longer this replica's.
    pub async fn renew(
        &self,
        held: &Lease,
        episode: Option<EpisodeRecord>,
    ) -> Result<Lease, LeaseError> {
        let name = held.metadata.name.clone().unwrap_or_default();
        let mut lease = held.clone();
        lease.spec = Some(self.spec_now(held.spec.as_ref()));
        if let Some(e) = episode {
            e.write(&mut lease);
        }
        self.replace("renewing", &name, &lease).await
    }

    /// Gives a held Lease back: holder cleared, the episode kept for the next holder.
    pub async fn release(&self, held: &Lease) -> Result<Lease, LeaseError> {
        let name = held.metadata.name.clone().unwrap_or_default();
        let mut lease = held.clone();
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        }
        self.replace("releasing", &name, &lease).await
    }

    async fn replace(
        &self,
        what: &'static str,
        name: &str,
        lease: &Lease,
    ) -> Result<Lease, LeaseError> {
        self.call(
            what,
            name,
            self.api.replace(name, &PostParams::default(), lease),
        )
        .await
    }

    /// Creates or renews this replica's membership Lease (`current`: as last seen in a list).
    pub async fn heartbeat(&self, current: Option<&Lease>) -> Result<Lease, LeaseError> {
        self.hold(
            &member_lease_name(&self.me),
            &[(LABEL_ROLE, "replica")],
            current,
            "renewing",
        )
        .await
    }

    /// Deletes a membership Lease (this replica's on shutdown, or a long-dead replica's).
    pub async fn delete_member(&self, name: &str) -> Result<(), LeaseError> {
        self.call(
            "deleting",
            name,
            self.api.delete(name, &DeleteParams::default()),
        )
        .await
        .map(|_| ())
    }
}

/// A fleet replica's view of the namespace's Leases after a list.
pub struct Listing {
    /// Env name → its Lease.
    pub envs: BTreeMap<String, Lease>,
    /// Live replicas (unexpired membership Leases, by holder).
    pub members: BTreeSet<String>,
    /// This replica's membership Lease, if it exists.
    pub own_member: Option<Lease>,
    /// Membership Leases expired for more than ten durations (dead replicas): safe to delete.
    pub dead_members: Vec<String>,
}

impl Listing {
    pub fn of(leases: Vec<Lease>, envs: &[String], me: &str, now: SystemTime) -> Listing {
        let wanted: BTreeSet<&str> = envs.iter().map(String::as_str).collect();
        let own_name = member_lease_name(me);
        let mut out = Listing {
            envs: BTreeMap::new(),
            members: BTreeSet::new(),
            own_member: None,
            dead_members: Vec::new(),
        };
        for lease in leases {
            let name = lease.metadata.name.clone().unwrap_or_default();
            let role = lease
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_ROLE))
                .cloned();
            if is_ours(&lease) && role.as_deref() == Some("replica") {
                if name == own_name {
                    out.own_member = Some(lease.clone());
                }
                let view = LeaseView::of(&lease, now);
                match (view.expired, view.holder) {
                    (false, Some(h)) => {
                        out.members.insert(h);
                    }
                    _ => {
                        let long_dead = lease
                            .spec
                            .as_ref()
                            .and_then(|s| s.renew_time.as_ref())
                            .map(|t| SystemTime::from(t.0))
                            .is_some_and(|t| {
                                let d = lease
                                    .spec
                                    .as_ref()
                                    .and_then(|s| s.lease_duration_seconds)
                                    .unwrap_or(0)
                                    .max(1) as u64;
                                t + Duration::from_secs(d * 10) < now
                            });
                        if long_dead && name != own_name {
                            out.dead_members.push(name);
                        }
                    }
                }
                continue;
            }
            // An env Lease is found by name, labelled or not (an unlabelled one is respected).
            if let Some(env) = name.strip_prefix("phoenix-watch-") {
                if wanted.contains(env) || is_ours(&lease) && role.as_deref() == Some("env") {
                    out.envs.insert(env.to_string(), lease);
                }
            }
        }
        out.members.insert(me.to_string());
        out
    }
}

/// A Lease this replica holds, with when it last renewed it (on its own clock).
#[derive(Clone, Debug)]
pub struct Held {
    pub lease: Lease,
    pub renewed: Instant,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(holder: Option<&str>, expired: bool) -> LeaseView {
        LeaseView {
            holder: holder.map(str::to_string),
            expired,
            ours: true,
        }
    }

    fn envs(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("e{i}")).collect()
    }

    fn members(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_replica_takes_its_share_of_free_envs_and_no_more() {
        let d = decide(
            "a",
            &envs(10),
            &BTreeMap::new(),
            &members(&["a", "b", "c"]),
            &BTreeSet::new(),
        );
        assert_eq!(d.share, 4);
        assert_eq!(d.acquire.len(), 4);
        assert!(d.release.is_empty() && d.renew.is_empty());
    }

    #[test]
    fn live_and_foreign_leases_are_respected_expired_ones_are_free() {
        let mut leases = BTreeMap::new();
        leases.insert("e0".to_string(), view(Some("stranger"), false));
        leases.insert("e1".to_string(), view(Some("dead"), true));
        leases.insert(
            "e2".to_string(),
            LeaseView {
                holder: None,
                expired: true,
                ours: false,
            },
        );
        let d = decide("a", &envs(3), &leases, &members(&["a"]), &BTreeSet::new());
        assert_eq!(d.acquire, vec!["e1".to_string()]);
        assert_eq!(d.foreign, vec!["e2".to_string()]);
    }

    #[test]
    fn extras_are_released_when_replicas_join_and_gone_envs_are_released() {
        let mut leases = BTreeMap::new();
        for e in envs(10) {
            leases.insert(e, view(Some("a"), false));
        }
        leases.insert("old".to_string(), view(Some("a"), false));
        let d = decide(
            "a",
            &envs(10),
            &leases,
            &members(&["a", "b", "c"]),
            &BTreeSet::new(),
        );
        assert_eq!(d.renew.len(), 4);
        assert_eq!(d.release.len(), 7);
        assert!(d.release.contains(&"old".to_string()));
        assert!(d.acquire.is_empty());
    }

    #[test]
    fn an_uneven_split_gives_one_back_to_a_replica_below_the_floor() {
        let mut leases = BTreeMap::new();
        for (i, e) in envs(10).into_iter().enumerate() {
            let h = match i {
                0..=3 => "a",
                4..=7 => "b",
                _ => "c",
            };
            leases.insert(e, view(Some(h), false));
        }
        let d = decide(
            "a",
            &envs(10),
            &leases,
            &members(&["a", "b", "c"]),
            &BTreeSet::new(),
        );
        assert_eq!((d.renew.len(), d.release.len()), (3, 1));
        // At 4/3/3 nobody moves.
        leases.insert("e3".to_string(), view(Some("c"), false));
        let d = decide(
            "b",
            &envs(10),
            &leases,
            &members(&["a", "b", "c"]),
            &BTreeSet::new(),
        );
        assert_eq!((d.renew.len(), d.release.len()), (4, 0));
    }

    #[test]
    fn expiry_reads_renew_time_and_duration() {
        let now = SystemTime::now();
        let lease = |renewed: SystemTime, secs: i32| Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some("x".into()),
                lease_duration_seconds: Some(secs),
                renew_time: Some(MicroTime(
                    k8s_openapi::jiff::Timestamp::try_from(renewed).unwrap(),
                )),
                ..LeaseSpec::default()
            }),
        };
        assert!(!expired(&lease(now - Duration::from_secs(2), 3), now));
        assert!(expired(&lease(now - Duration::from_secs(4), 3), now));
        assert!(expired(&Lease::default(), now));
    }

    #[test]
    fn the_episode_round_trips_through_annotations() {
        let mut lease = Lease::default();
        let since = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let e = EpisodeRecord {
            since: Some(since),
            alerted: true,
        };
        e.write(&mut lease);
        assert_eq!(EpisodeRecord::of(&lease), e);
        EpisodeRecord::default().write(&mut lease);
        assert_eq!(EpisodeRecord::of(&lease), EpisodeRecord::default());
    }

    fn lease(name: &str, role: Option<&str>, holder: &str, renewed_ago: u64) -> Lease {
        let now = SystemTime::now();
        Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: role.map(|r| {
                    BTreeMap::from([
                        (LABEL_MANAGED_BY.to_string(), "phoenix".to_string()),
                        (LABEL_ROLE.to_string(), r.to_string()),
                    ])
                }),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(10),
                renew_time: Some(MicroTime(
                    k8s_openapi::jiff::Timestamp::try_from(now - Duration::from_secs(renewed_ago))
                        .unwrap(),
                )),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn a_listing_sorts_env_leases_members_and_dead_members() {
        let leases = vec![
            lease("phoenix-watch-a", Some("env"), "r1", 1),
            // Same name pattern, no label: kept (and respected as foreign).
            lease("phoenix-watch-b", None, "someone", 1),
            // An env no longer selected: kept only because it is phoenix's (to release it).
            lease("phoenix-watch-gone", Some("env"), "me", 1),
            lease("phoenix-watch-other", None, "x", 1),
            lease("phoenix-replica-r1", Some("replica"), "r1", 2),
            lease("phoenix-replica-me", Some("replica"), "me", 0),
            lease("phoenix-replica-late", Some("replica"), "late", 20),
            lease("phoenix-replica-dead", Some("replica"), "dead", 200),
            lease("unrelated", None, "y", 1),
        ];
        let envs = vec!["a".to_string(), "b".to_string()];
        let l = Listing::of(leases, &envs, "me", SystemTime::now());
        assert_eq!(
            l.envs.keys().cloned().collect::<Vec<_>>(),
            vec!["a", "b", "gone"]
        );
        assert_eq!(
            l.members.iter().cloned().collect::<Vec<_>>(),
            vec!["me", "r1"]
        );
        assert!(l.own_member.is_some());
        assert_eq!(l.dead_members, vec!["phoenix-replica-dead".to_string()]);
        let views: BTreeMap<String, LeaseView> = l
            .envs
            .iter()
            .map(|(e, x)| (e.clone(), LeaseView::of(x, SystemTime::now())))
            .collect();
        let d = decide("me", &envs, &views, &l.members, &BTreeSet::new());
        assert_eq!(d.foreign, vec!["b".to_string()]);
        assert_eq!(d.release, vec!["gone".to_string()]);
        assert!(d.acquire.is_empty());
    }

    #[test]
    fn member_names_are_valid_object_names() {
        assert_eq!(
            member_lease_name("Pod_A:1"),
            "phoenix-replica-pod-a-1".to_string()
        );
        assert_eq!(member_lease_name("--"), "phoenix-replica-x".to_string());
    }
}
