//! `phoenix watch --all --lease-namespace`: replicas of the real binary, each its own process
//! with its own PHOENIX_HOME and a `file://` clone URL of the repository, sharing environments on
//! an existing cluster of the real control plane through coordination.k8s.io/v1 Leases in the
//! same cluster. Even shares, takeover after SIGKILL within the lease duration, hand-over at once
//! on SIGTERM, exactly one webhook alert across replicas, and a Lease of an unknown holder
//! respected until it expires.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, ListParams, PostParams};
use testkit::control_plane::{self, ControlPlane};
use testkit::git::{Repo, Sandbox};

use super::watch_cli::{http_get, receiver};

const CLUSTER: &str = "fleet";
const NS: &str = "phoenix-watch";

struct Fleet {
    cp: ControlPlane,
    sb: Sandbox,
    kubeconfig: PathBuf,
    rt: tokio::runtime::Runtime,
    envs: Vec<String>,
}

struct Replica {
    id: String,
    listen: String,
    child: Option<Child>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Replica {
    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn sigkill(&mut self) {
        let mut c = self.child.take().expect("running");
        c.kill().expect("SIGKILL");
        let _ = c.wait();
    }

    /// SIGTERM, then waits (at most 15 s) for a clean exit 0.
    fn sigterm(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let mut c = self.child.take().expect("running");
        let started = Instant::now();
        loop {
            if let Some(st) = c.try_wait().expect("wait") {
                assert_eq!(st.code(), Some(0), "replica {} exit after SIGTERM", self.id);
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "replica {} did not exit within 15 s of SIGTERM",
                self.id
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Fleet {
    /// `n` environments `fleet-0..` on the control plane's cluster `fleet` (one ConfigMap each in
    /// namespace default), labelled `fleet: test`, plus one labelled `fleet: other`.
    fn new(n: usize) -> Fleet {
        let cp = ControlPlane::start();
        cp.ensure(CLUSTER);
        let sb = Sandbox::new();
        let kubeconfig = sb.path("fleet.kubeconfig");
        std::fs::write(&kubeconfig, cp.kubeconfig(Some(CLUSTER))).expect("kubeconfig");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let envs: Vec<String> = (0..n).map(|i| format!("fleet-{i}")).collect();
        let fleet = Fleet {
            cp,
            sb,
            kubeconfig,
            rt,
            envs,
        };
        let (ok, _, err) =
            control_plane::kubectl(&fleet.cp.cluster_url(CLUSTER), &["create", "namespace", NS]);
        assert!(ok, "create namespace: {err}");
        fleet
    }

    fn repo(&self) -> Repo<'_> {
        let repo = self.sb.repo("envs");
        let mut all = self.envs.clone();
        all.push("outsider".into());
        for env in &all {
            let label = if env == "outsider" { "other" } else { "test" };
            // Two envs with watch settings of their own, which win over the agent's flags.
            let watch = match env.as_str() {
                "fleet-5" => "  watch: { alertAfter: 1h }\n",
                "fleet-6" => "  watch: { interval: 1h }\n",
                _ => "",
            };
            repo.write(
                &format!("environments/{env}/environment.yaml"),
                format!(
                    "apiVersion: phoenix/v1\nkind: Environment\nmetadata: {{ name: {env}, labels: {{ fleet: {label} }} }}\nspec:\n{watch}  timeouts: {{ cluster: 20s }}\n  cluster: {{ existing: {{ kubeconfig: {} }} }}\n  apps:\n    - {{ name: cfg, path: apps/cfg }}\n",
                    self.kubeconfig.display()
                ),
            );
            repo.write(
                &format!("environments/{env}/apps/cfg/cm.yaml"),
                format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: cfg-{env}, namespace: default }}\ndata: {{ color: blue }}\n"),
            );
        }
        repo.commit("a fleet of environments");
        repo
    }

    fn command(&self, home: &str) -> Command {
        let mut cmd = Command::new(testkit::bed::phoenix_binary());
        cmd.env("HOME", self.sb.home())
            .env("PHOENIX_HOME", self.sb.path(home))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("NO_COLOR", "1")
            .env_remove("PHOENIX_REPO")
            .env_remove("PHOENIX_CLUSTER_ENDPOINT")
            .env_remove("PHOENIX_WEBHOOK_URL")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null());
        cmd
    }

    /// Converges every env (in parallel) so the checks start in sync.
    fn rebuild_all(&self, repo: &Repo<'_>) {
        let children: Vec<(String, Child)> = self
            .envs
            .iter()
            .map(|env| {
                let child = self
                    .command("rebuild-home")
                    .current_dir(&repo.dir)
                    .args(["rebuild", env])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("rebuild starts");
                (env.clone(), child)
            })
            .collect();
        for (env, child) in children {
            let out = child.wait_with_output().expect("rebuild runs");
            assert_eq!(
                out.status.code(),
                Some(0),
                "rebuild {env}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    fn replica(&self, repo: &Repo<'_>, id: &str, extra: &[&str]) -> Replica {
        let listen = format!("127.0.0.1:{}", testkit::moto::free_port());
        let log = std::fs::File::create(self.sb.path(&format!("{id}.log"))).expect("log file");
        let child = self
            .command(&format!("home-{id}"))
            .current_dir(self.sb.path("."))
            .args([
                "--repo",
                &repo.url(),
                "watch",
                "--all",
                "--selector",
                "fleet=test",
            ])
            .args([
                "--lease-namespace",
                NS,
                "--replica-id",
                id,
                "--listen",
                &listen,
            ])
            .arg(format!("--lease-kubeconfig={}", self.kubeconfig.display()))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start phoenix watch --all");
        Replica {
            id: id.to_string(),
            listen,
            child: Some(child),
        }
    }

    /// Polls `f` every 200 ms for up to `limit`; on timeout fails with every replica's log.
    fn wait<T>(&self, what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let started = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            if started.elapsed() > limit {
                let mut logs = String::new();
                for e in std::fs::read_dir(self.sb.path("."))
                    .expect("sandbox")
                    .flatten()
                {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if let Some(id) = name.strip_suffix(".log") {
                        let text = self.log(id);
                        let tail: Vec<&str> = text.lines().rev().take(40).collect();
                        logs.push_str(&format!("--- {id} (last 40 lines)\n"));
                        for l in tail.into_iter().rev() {
                            logs.push_str(l);
                            logs.push('\n');
                        }
                    }
                }
                panic!(
                    "timed out after {limit:?} waiting for {what}; leases {:?}\n{logs}",
                    self.holders()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self, id: &str) -> String {
        std::fs::read_to_string(self.sb.path(&format!("{id}.log"))).unwrap_or_default()
    }

    fn leases_api(&self) -> Api<Lease> {
        let _guard = self.rt.enter();
        Api::namespaced(control_plane::client(&self.cp.cluster_url(CLUSTER)), NS)
    }

    /// Env → live holder of its Lease (expired or released Leases are absent).
    fn holders(&self) -> BTreeMap<String, String> {
        let api = self.leases_api();
        let list = self
            .rt
            .block_on(api.list(&ListParams::default()))
            .expect("list leases");
        let now = SystemTime::now();
        list.items
            .into_iter()
            .filter_map(|l| {
                let env = l
                    .metadata
                    .name
                    .as_deref()?
                    .strip_prefix("phoenix-watch-")?
                    .to_string();
                let spec = l.spec?;
                let holder = spec.holder_identity.filter(|h| !h.is_empty())?;
                let renewed = SystemTime::from(spec.renew_time?.0);
                let live =
                    renewed + Duration::from_secs(spec.lease_duration_seconds? as u64) >= now;
                live.then_some((env, holder))
            })
            .collect()
    }

    /// Replica → how many envs it holds, once every env is held by one of `replicas`.
    fn settled(&self, replicas: &[&str]) -> Option<BTreeMap<String, usize>> {
        let holders = self.holders();
        if self.envs.iter().any(|e| {
            !holders
                .get(e)
                .is_some_and(|h| replicas.contains(&h.as_str()))
        }) {
            return None;
        }
        let mut counts = BTreeMap::new();
        for r in replicas {
            counts.insert(r.to_string(), 0);
        }
        for h in holders.values() {
            if let Some(n) = counts.get_mut(h) {
                *n += 1;
            }
        }
        Some(counts)
    }

    fn even(&self, replicas: &[&str]) -> Option<BTreeMap<String, usize>> {
        let counts = self.settled(replicas)?;
        let n = self.envs.len();
        let (lo, hi) = (n / replicas.len(), n.div_ceil(replicas.len()));
        counts
            .values()
            .all(|&c| c >= lo && c <= hi)
            .then_some(counts)
    }
}

#[test]
fn three_replicas_share_ten_envs_evenly_and_a_killed_ones_envs_move_within_the_lease_duration() {
    let fleet = Fleet::new(10);
    let repo = fleet.repo();
    let args = ["--interval", "1s", "--lease-duration", "3s"];
    let a = fleet.replica(&repo, "replica-a", &args);
    let mut b = fleet.replica(&repo, "replica-b", &args);
    let c = fleet.replica(&repo, "replica-c", &args);
    let ids = ["replica-a", "replica-b", "replica-c"];

    let counts = fleet.wait(
        "an even share of the ten envs",
        Duration::from_secs(30),
        || fleet.even(&ids),
    );
    let mut shares: Vec<usize> = counts.values().copied().collect();
    shares.sort();
    assert_eq!(shares, vec![3, 3, 4], "{counts:?}");
    // The outsider (another label) is nobody's.
    assert!(!fleet.holders().contains_key("outsider"));

    // Each replica shows what it holds; the Leases agree.
    let holders = fleet.holders();
    for r in [&a, &b, &c] {
        let metrics = fleet.wait(
            "/metrics with the held envs",
            Duration::from_secs(10),
            || http_get(&r.listen, "/metrics").filter(|m| m.contains("phoenix_watch_lease_held")),
        );
        for (env, holder) in &holders {
            let line = format!(
                "phoenix_watch_lease_held{{env=\"{env}\",replica=\"{}\"}} 1",
                r.id
            );
            assert_eq!(
                metrics.contains(&line),
                holder == &r.id,
                "{line} in\n{metrics}"
            );
        }
        promtool_accepts(&metrics);
        let health = http_get(&r.listen, "/healthz").unwrap_or_default();
        assert!(
            health.contains(&format!("replica {} holds", r.id)),
            "{health}"
        );
    }

    // fleet-6 (`spec.watch.interval: 1h`) was checked once by its holder, which checks its
    // other envs every second.
    let holder6 = holders.get("fleet-6").cloned().expect("fleet-6 held");
    let r6 = [&a, &b, &c]
        .into_iter()
        .find(|r| r.id == holder6)
        .expect("a replica of ours");
    let other = holders
        .iter()
        .find(|(e, h)| **h == holder6 && e.as_str() != "fleet-6")
        .map(|(e, _)| e.clone())
        .expect("the holder of fleet-6 holds another env");
    let checks = |m: &str, env: &str| -> u64 {
        let prefix = format!("phoenix_drift_checks_total{{env=\"{env}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let metrics = fleet.wait(
        "three checks of another env of fleet-6's holder",
        Duration::from_secs(15),
        || http_get(&r6.listen, "/metrics").filter(|m| checks(m, &other) >= 3),
    );
    assert_eq!(checks(&metrics, "fleet-6"), 1, "{metrics}");

    let b_envs: Vec<String> = holders
        .iter()
        .filter(|(_, h)| h.as_str() == "replica-b")
        .map(|(e, _)| e.clone())
        .collect();
    b.sigkill();
    let killed = Instant::now();
    let counts = fleet.wait(
        "the killed replica's envs taken over",
        Duration::from_secs(15),
        || fleet.settled(&["replica-a", "replica-c"]),
    );
    let took = killed.elapsed();
    eprintln!("takeover after SIGKILL: {took:?} (lease duration 3 s); shares {counts:?}");
    // Its Leases (and its membership Lease) expire within the 3 s duration of the kill; a
    // survivor's next tick (every 1 s) takes them; 1.5 s more for a loaded 2-core machine and
    // this test's own polling.
    assert!(
        took <= Duration::from_millis(5500),
        "takeover took {took:?}"
    );
    let holders = fleet.holders();
    for env in &b_envs {
        assert_ne!(holders.get(env).map(String::as_str), Some("replica-b"));
    }
    assert_eq!(counts.values().sum::<usize>(), 10);
    assert!(
        fleet.log("replica-a").contains("lease acquired")
            || fleet.log("replica-c").contains("lease acquired")
    );
    drop((a, c));
}

#[test]
fn drift_is_alerted_once_across_replicas_and_sigterm_hands_the_envs_over_at_once() {
    let fleet = Fleet::new(10);
    let repo = fleet.repo();
    fleet.rebuild_all(&repo);
    let hook = receiver();
    // A long lease: a hand-over within a fraction of it cannot be expiry.
    let args = [
        "--interval",
        "1s",
        "--alert-after",
        "2s",
        "--lease-duration",
        "12s",
        "--webhook",
        &hook.url,
    ];
    let mut replicas: BTreeMap<String, Replica> = ["replica-a", "replica-b", "replica-c"]
        .iter()
        .map(|id| (id.to_string(), fleet.replica(&repo, id, &args)))
        .collect();
    let ids = ["replica-a", "replica-b", "replica-c"];
    fleet.wait("an even share", Duration::from_secs(30), || {
        fleet.even(&ids)
    });
    // Every held env is checked in sync first.
    fleet.wait(
        "in-sync checks on every replica",
        Duration::from_secs(20),
        || {
            replicas
                .values()
                .all(|r| {
                    http_get(&r.listen, "/metrics").is_some_and(|m| {
                        let drift: Vec<&str> = m
                            .lines()
                            .filter(|l| l.starts_with("phoenix_drift{env=\"fleet-"))
                            .collect();
                        !drift.is_empty() && drift.iter().all(|l| l.ends_with(" 0"))
                    })
                })
                .then_some(())
        },
    );

    let paint = |configmap: &str| {
        let (ok, _, err) = control_plane::kubectl(
            &fleet.cp.cluster_url(CLUSTER),
            &[
                "-n",
                "default",
                "patch",
                "configmap",
                configmap,
                "--type=merge",
                "-p",
                r#"{"data":{"color":"red"}}"#,
            ],
        );
        assert!(ok, "kubectl patch: {err}");
    };
    paint("cfg-fleet-3");
    // fleet-5 drifts too, but alerts only after its own alertAfter (1h).
    paint("cfg-fleet-5");
    let alerts = |env: &str| -> Vec<String> {
        hook.posts
            .lock()
            .expect("lock")
            .iter()
            .filter(|p| p.contains(&format!("phoenix: {env} has drifted")))
            .cloned()
            .collect()
    };
    fleet.wait("the alert for fleet-3", Duration::from_secs(20), || {
        (!alerts("fleet-3").is_empty()).then_some(())
    });
    let holder = fleet
        .holders()
        .get("fleet-3")
        .cloned()
        .expect("fleet-3 is held");
    let first = alerts("fleet-3");
    assert!(
        first[0].contains(&format!("(replica {holder})")),
        "{first:?}"
    );

    // SIGTERM the holder: its Leases are released at once and taken by the others well within
    // the 12 s lease duration; the new holder resumes the alerted episode and stays silent.
    let mut gone = replicas.remove(&holder).expect("holder is ours");
    let stopped = Instant::now();
    gone.sigterm();
    let rest: Vec<&str> = ids.iter().copied().filter(|r| *r != holder).collect();
    let counts = fleet.wait(
        "the stopped replica's envs handed over",
        Duration::from_secs(10),
        || fleet.settled(&rest),
    );
    let took = stopped.elapsed();
    eprintln!("hand-over after SIGTERM: {took:?} (lease duration 12 s); shares {counts:?}");
    assert!(took < Duration::from_secs(5), "hand-over took {took:?}");
    assert!(
        fleet.log(&holder).contains("released"),
        "{}",
        fleet.log(&holder)
    );
    let new_holder = fleet
        .holders()
        .get("fleet-3")
        .cloned()
        .expect("fleet-3 held again");
    // The new holder checks fleet-3 (still drifted) for several intervals past alert-after.
    fleet.wait(
        "the new holder's drifted check of fleet-3",
        Duration::from_secs(10),
        || {
            let r = &replicas[&new_holder];
            http_get(&r.listen, "/metrics")
                .filter(|m| m.contains("phoenix_drift{env=\"fleet-3\",layer=\"apps\"} 1"))
        },
    );
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(alerts("fleet-3").len(), 1, "{:?}", alerts("fleet-3"));
    let holder5 = fleet
        .holders()
        .get("fleet-5")
        .cloned()
        .expect("fleet-5 held");
    fleet.wait(
        "fleet-5's drift seen by its holder",
        Duration::from_secs(10),
        || {
            http_get(&replicas[&holder5].listen, "/metrics")
                .filter(|m| m.contains("phoenix_drift{env=\"fleet-5\",layer=\"apps\"} 1"))
        },
    );
    assert!(alerts("fleet-5").is_empty(), "{:?}", alerts("fleet-5"));

    // Fixed with kubectl: one converged notice, from the new holder.
    let (ok, _, err) = control_plane::kubectl(
        &fleet.cp.cluster_url(CLUSTER),
        &[
            "-n",
            "default",
            "patch",
            "configmap",
            "cfg-fleet-3",
            "--type=merge",
            "-p",
            r#"{"data":{"color":"blue"}}"#,
        ],
    );
    assert!(ok, "kubectl patch back: {err}");
    let converged = |env: &str| {
        hook.posts
            .lock()
            .expect("lock")
            .iter()
            .filter(|p| p.contains(&format!("phoenix: {env} has converged")))
            .cloned()
            .collect::<Vec<_>>()
    };
    let notices = fleet.wait("the converged notice", Duration::from_secs(15), || {
        let c = converged("fleet-3");
        (!c.is_empty()).then_some(c)
    });
    assert!(
        notices[0].contains(&format!("(replica {new_holder})")),
        "{notices:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(converged("fleet-3").len(), 1);
    assert_eq!(alerts("fleet-3").len(), 1);
    // No other env drifted, so nothing else was sent.
    assert_eq!(hook.posts.lock().expect("lock").len(), 2);
}

#[test]
fn a_lease_held_by_an_unknown_holder_is_respected_until_it_expires() {
    let fleet = Fleet::new(3);
    let repo = fleet.repo();
    let api = fleet.leases_api();
    let now = k8s_openapi::jiff::Timestamp::now();
    let foreign = Lease {
        metadata: ObjectMeta {
            name: Some("phoenix-watch-fleet-0".into()),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    "phoenix".to_string(),
                ),
                ("phoenix.dev/watch-lease".to_string(), "env".to_string()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("somebody-else".into()),
            lease_duration_seconds: Some(8),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
    };
    fleet
        .rt
        .block_on(api.create(&PostParams::default(), &foreign))
        .expect("create the foreign lease");
    let created = Instant::now();
    let r = fleet.replica(
        &repo,
        "replica-a",
        &["--interval", "1s", "--lease-duration", "3s"],
    );

    fleet.wait("the two free envs taken", Duration::from_secs(10), || {
        let h = fleet.holders();
        (h.get("fleet-1").map(String::as_str) == Some("replica-a")
            && h.get("fleet-2").map(String::as_str) == Some("replica-a"))
        .then_some(())
    });
    // Until its renew time + 8 s, fleet-0 stays with its holder and is never checked here.
    while created.elapsed() < Duration::from_millis(7000) {
        let h = fleet.holders();
        assert_eq!(
            h.get("fleet-0").map(String::as_str),
            Some("somebody-else"),
            "{h:?}"
        );
        let metrics = http_get(&r.listen, "/metrics").unwrap_or_default();
        assert!(!metrics.contains("env=\"fleet-0\""), "{metrics}");
        std::thread::sleep(Duration::from_millis(300));
    }
    fleet.wait(
        "fleet-0 taken after its lease expired",
        Duration::from_secs(6),
        || (fleet.holders().get("fleet-0").map(String::as_str) == Some("replica-a")).then_some(()),
    );
    assert!(created.elapsed() >= Duration::from_secs(8));
    let lease = fleet
        .rt
        .block_on(api.get("phoenix-watch-fleet-0"))
        .expect("get lease");
    assert_eq!(lease.spec.and_then(|s| s.lease_transitions), Some(1));
    assert!(
        fleet
            .log("replica-a")
            .contains("fleet-0: lease acquired (expired holder somebody-else)"),
        "{}",
        fleet.log("replica-a")
    );

    // Without its Lease API the replica stops holding anything, and says so on /healthz
    // (503 after two lease durations without a listing).
    // The last listing was at most a tick (1 s) before this.
    let lost = Instant::now();
    assert!(fleet.cp.wipe_cluster(CLUSTER));
    let health = fleet.wait("/healthz turning 503", Duration::from_secs(15), || {
        http_get(&r.listen, "/healthz").filter(|h| h.starts_with("HTTP/1.1 503"))
    });
    assert!(
        health.contains("the Leases have not been listed for"),
        "{health}"
    );
    assert!(
        lost.elapsed() >= Duration::from_secs(5),
        "{:?}",
        lost.elapsed()
    );
}

/// The management env's add-on, applied by phoenix itself: the agent's Namespace, RBAC and
/// Deployment converge on the real control plane; `diff` shows no drift; and a replica
/// authenticated as the agent's ServiceAccount (its RBAC and nothing else) takes Leases in its
/// namespace but cannot touch Leases elsewhere.
#[test]
fn the_management_env_applies_the_agent_and_its_rbac_is_enough_for_the_leases() {
    let fleet = Fleet::new(2);
    let repo = fleet.repo();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    testkit::bed::copy_tree(
        &root.join("environments/management"),
        &repo.dir.join("environments/management"),
    );
    let env_file = repo.dir.join("environments/management/environment.yaml");
    let text = std::fs::read_to_string(&env_file).expect("management env");
    let declared = "existing: { kubeconfig: ~/.kube/management, context: management }";
    assert!(text.contains(declared), "{text}");
    std::fs::write(
        &env_file,
        text.replace(
            declared,
            &format!("existing: {{ kubeconfig: {} }}", fleet.kubeconfig.display()),
        ),
    )
    .expect("write env");
    repo.commit("the management env on the test cluster");
    let out = fleet
        .command("mgmt-home")
        .current_dir(&repo.dir)
        .args(["rebuild", "management"])
        .output()
        .expect("rebuild runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = fleet.cp.cluster_url(CLUSTER);
    let (ok, replicas, err) = control_plane::kubectl(
        &server,
        &[
            "-n",
            "phoenix-system",
            "get",
            "deployment",
            "phoenix-watch",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(replicas.trim(), "3");
    let out = fleet
        .command("mgmt-home")
        .current_dir(&repo.dir)
        .args(["diff", "management"])
        .output()
        .expect("diff runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A token of the agent's ServiceAccount in place of the admin's.
    let (ok, token, err) = control_plane::kubectl(
        &server,
        &[
            "-n",
            "phoenix-system",
            "create",
            "token",
            "phoenix-watch",
            "--duration=10m",
        ],
    );
    assert!(ok, "create token: {err}");
    let mut config: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&fleet.cp.kubeconfig(Some(CLUSTER))).expect("kubeconfig");
    let users = config["users"].as_sequence_mut().expect("users");
    for u in users.iter_mut() {
        u["user"] = serde_yaml_ng::from_str(&format!("{{ token: {} }}", token.trim())).unwrap();
    }
    let sa_config = fleet.sb.path("sa.kubeconfig");
    std::fs::write(&sa_config, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    let can_i = |ns: &str| {
        let (_, out, err) = control_plane::kubectl(
            &server,
            &[
                "auth",
                "can-i",
                "update",
                "leases",
                "-n",
                ns,
                "--as=system:serviceaccount:phoenix-system:phoenix-watch",
            ],
        );
        format!("{}{}", out.trim(), err.trim())
    };
    assert_eq!(can_i("phoenix-system"), "yes");
    assert_eq!(
        can_i(NS),
        "no",
        "the agent may update Leases outside its namespace"
    );

    let listen = format!("127.0.0.1:{}", testkit::moto::free_port());
    let log = std::fs::File::create(fleet.sb.path("sa-replica.log")).expect("log");
    let child = fleet
        .command("home-sa")
        .args([
            "--repo",
            &repo.url(),
            "watch",
            "--all",
            "--selector",
            "fleet=test",
        ])
        .args([
            "--lease-namespace",
            "phoenix-system",
            "--replica-id",
            "sa-replica",
        ])
        .args([
            "--lease-duration",
            "3s",
            "--interval",
            "1s",
            "--listen",
            &listen,
        ])
        .arg(format!("--lease-kubeconfig={}", sa_config.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start the replica");
    let _replica = Replica {
        id: "sa-replica".into(),
        listen,
        child: Some(child),
    };
    let api: Api<Lease> = {
        let _guard = fleet.rt.enter();
        Api::namespaced(control_plane::client(&server), "phoenix-system")
    };
    fleet.wait(
        "both envs' Leases held by the ServiceAccount's replica",
        Duration::from_secs(20),
        || {
            let list = fleet.rt.block_on(api.list(&ListParams::default())).ok()?;
            let held = list
                .items
                .iter()
                .filter(|l| {
                    l.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| n.starts_with("phoenix-watch-fleet-"))
                        && l.spec.as_ref().and_then(|s| s.holder_identity.as_deref())
                            == Some("sa-replica")
                })
                .count();
            (held == 2).then_some(())
        },
    );
    assert!(
        !fleet.log("sa-replica").contains("cannot"),
        "{}",
        fleet.log("sa-replica")
    );
}

/// `promtool check metrics` accepts the body of an HTTP response (strict: it also prints lint
/// findings, which count as failures here).
fn promtool_accepts(response: &str) {
    use std::io::Write as _;
    let body = response.split_once("\r\n\r\n").map_or(response, |(_, b)| b);
    let mut child = Command::new(testkit::tools::require("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{body}"
    );
}

/// Alone (no Lease namespace) a replica watches every selected env, and the commit is re-read
/// every interval from the URL: an env added by a new commit is watched on a later round, one
/// whose label no longer matches is dropped.
#[test]
fn alone_the_agent_watches_every_selected_env_and_follows_new_commits() {
    let fleet = Fleet::new(2);
    let repo = fleet.repo();
    let listen = format!("127.0.0.1:{}", testkit::moto::free_port());
    let log = std::fs::File::create(fleet.sb.path("solo.log")).expect("log");
    let child = fleet
        .command("home-solo")
        .args([
            "--repo",
            &repo.url(),
            "watch",
            "--all",
            "--selector",
            "fleet=test",
        ])
        .args([
            "--replica-id",
            "solo",
            "--interval",
            "1s",
            "--listen",
            &listen,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start phoenix watch --all");
    let _solo = Replica {
        id: "solo".into(),
        listen: listen.clone(),
        child: Some(child),
    };
    fleet.wait("both envs watched", Duration::from_secs(20), || {
        http_get(&listen, "/healthz").filter(|h| {
            h.contains("replica solo holds 2 of 2 env(s) with 1 live replica(s): fleet-0, fleet-1")
        })
    });
    // A new env with the label, and fleet-1 relabelled.
    let env = |name: &str, label: &str| {
        format!(
            "apiVersion: phoenix/v1\nkind: Environment\nmetadata: {{ name: {name}, labels: {{ fleet: {label} }} }}\nspec:\n  cluster: {{ existing: {{ kubeconfig: {} }} }}\n  apps:\n    - {{ name: cfg, path: apps/cfg }}\n",
            fleet.kubeconfig.display()
        )
    };
    repo.write(
        "environments/fleet-9/environment.yaml",
        env("fleet-9", "test"),
    );
    repo.write(
        "environments/fleet-9/apps/cfg/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: cfg-fleet-9, namespace: default }\ndata: { color: blue }\n",
    );
    repo.write(
        "environments/fleet-1/environment.yaml",
        env("fleet-1", "retired"),
    );
    repo.commit("fleet-9 joins, fleet-1 leaves");
    let metrics = fleet.wait("the new commit's envs", Duration::from_secs(20), || {
        let h = http_get(&listen, "/healthz")?;
        if !h.contains("holds 2 of 2 env(s) with 1 live replica(s): fleet-0, fleet-9") {
            return None;
        }
        http_get(&listen, "/metrics").filter(|m| m.contains("phoenix_drift{env=\"fleet-9\""))
    });
    // Its gauges are gone (the counters of the checks this replica made of it stay, as
    // counters do).
    assert!(
        !metrics.contains("phoenix_drift{env=\"fleet-1\""),
        "{metrics}"
    );
    promtool_accepts(&metrics);
}

/// The fleet flags are refused where they mean nothing, before anything starts.
#[test]
fn fleet_flags_need_all_and_a_lease_namespace() {
    let sb = Sandbox::new();
    let run = |args: &[&str]| {
        let out = Command::new(testkit::bed::phoenix_binary())
            .env("HOME", sb.home())
            .env("PHOENIX_HOME", sb.path("home"))
            .current_dir(sb.path("."))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("phoenix runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["watch", "--selector", "team=a", "demo"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--selector and --lease-namespace apply to `phoenix watch --all` only"),
        "{err}"
    );
    let (code, err) = run(&["watch", "--lease-namespace", "ns", "demo"]);
    assert_eq!(code, Some(1), "{err}");
    let (code, err) = run(&["watch", "--all", "demo"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("'--all' cannot be used with"), "{err}");
    let (code, err) = run(&["watch", "--all", "--lease-duration", "3s"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--lease-namespace <NS>"), "{err}");
    let (code, err) = run(&["watch", "--all", "--selector", "nolabel"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("\"nolabel\" is not LABEL=VALUE"), "{err}");
}
