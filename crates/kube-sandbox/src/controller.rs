//! The simulated kubelet and controllers: node readiness, workload status, Jobs, PVCs, load balancers,
//! namespace finalization.

use crate::api::ResKey;
use crate::cluster::{set_condition, Cluster, NodeSim, State, WriteCtx};
use crate::util::{meta_str, now_rfc3339, parse_duration};
use crate::Settings;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const READY_DELAY_ANNOTATION: &str = "sandbox.phoenix.dev/ready-delay";
pub const FAIL_ANNOTATION: &str = "sandbox.phoenix.dev/fail";
const TICK: Duration = Duration::from_millis(100);

fn nodes_key() -> ResKey {
    (String::new(), "nodes".into())
}

pub fn node_ready(node: &Value) -> bool {
    node.get("status")
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type") == Some(&json!("Ready")) && c.get("status") == Some(&json!("True"))
            })
        })
}

/// Create a node object with a NotReady kubelet that becomes Ready at `ready_at`.
pub fn register_node(
    st: &mut State,
    kubernetes_version: &str,
    name: &str,
    labels: Map<String, Value>,
    provider_id: Option<String>,
    sim: NodeSim,
) {
    let t = st.type_by_kind("", "nodes");
    if st.get(&nodes_key(), "", name).is_none() {
        let mut all_labels = Map::new();
        for (k, v) in [
            ("beta.kubernetes.io/arch", "amd64"),
            ("beta.kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "amd64"),
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/hostname", name),
        ] {
            all_labels.insert(k.into(), json!(v));
        }
        all_labels.extend(labels);
        let mut spec = json!({"podCIDR": "10.42.0.0/24", "podCIDRs": ["10.42.0.0/24"]});
        if let Some(p) = provider_id {
            spec["providerID"] = json!(p);
        }
        let body = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": all_labels},
            "spec": spec,
        });
        let _ = st.create(&t, None, body, &WriteCtx::internal("k3s", ""));
    }
    st.node_sim.insert(name.to_string(), sim);
    let version = kubernetes_version.to_string();
    let key = nodes_key();
    let ready = desired_node_ready(st, name);
    st.set_status(&key, "", name, "k3s", |old| {
        node_status(old, ready, &version)
    });
}

fn desired_node_ready(st: &State, name: &str) -> bool {
    match st.node_sim.get(name) {
        Some(s) => s.running && Instant::now() >= s.ready_at && !st.forced_not_ready.contains(name),
        None => !st.forced_not_ready.contains(name),
    }
}

fn node_status(old: &Value, ready: bool, version: &str) -> Value {
    let mut status = old
        .get("status")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let now = now_rfc3339();
    let cond = if ready {
        json!({"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
            "lastHeartbeatTime": now, "lastTransitionTime": now})
    } else {
        json!({"type": "Ready", "status": "False", "reason": "KubeletNotReady", "message": "container runtime status check may not have completed yet",
            "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    set_condition(&mut status, cond);
    status.insert(
        "nodeInfo".into(),
        json!({"kubeletVersion": version, "kubeProxyVersion": version, "containerRuntimeVersion": "containerd://2.0.0",
            "operatingSystem": "linux", "architecture": "amd64", "osImage": "Amazon Linux 2023", "kernelVersion": "6.1.0",
            "machineID": "", "systemUUID": "", "bootID": ""}),
    );
    status.insert(
        "capacity".into(),
        json!({"cpu": "2", "memory": "4026512Ki", "pods": "110", "ephemeral-storage": "20959212Ki"}),
    );
    status.insert(
        "allocatable".into(),
        json!({"cpu": "2", "memory": "4026512Ki", "pods": "110", "ephemeral-storage": "20389121418"}),
    );
    Value::Object(status)
}

/// Recompute one node's Ready condition from its kubelet simulation and admin overrides.
pub fn refresh_node(st: &mut State, name: &str) {
    let ready = desired_node_ready(st, name);
    let key = nodes_key();
    let Some(node) = st.get(&key, "", name) else {
        return;
    };
    if node_ready(&node) == ready {
        return;
    }
    let version = node
        .get("status")
        .and_then(|s| s.get("nodeInfo"))
        .and_then(|n| n.get("kubeletVersion"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    st.set_status(&key, "", name, "k3s", |old| {
        node_status(old, ready, &version)
    });
}

/// `--nodes N`: N nodes that are Ready at once.
pub fn add_static_nodes(c: &Arc<Cluster>, n: usize) {
    let mut st = c.lock();
    for i in 1..=n {
        let name = format!("sandbox-node-{i}");
        let mut labels = Map::new();
        if i == 1 {
            labels.insert(
                "node-role.kubernetes.io/control-plane".into(),
                json!("true"),
            );
        }
        register_node(
            &mut st,
            &c.version(),
            &name,
            labels,
            None,
            NodeSim {
                ready_at: Instant::now(),
                running: true,
                instance_id: None,
            },
        );
    }
}

/// Per-object readiness timers: (generation seen, when first seen at that generation).
type Timers = HashMap<(ResKey, String, String), (i64, Instant)>;

/// The controller loop for one cluster; runs until aborted.
pub async fn run(c: Arc<Cluster>, settings: Settings) {
    let mut timers: Timers = HashMap::new();
    let mut interval = tokio::time::interval(TICK);
    let mut ticks: u64 = 0;
    loop {
        interval.tick().await;
        ticks += 1;
        let mut st = c.lock();
        let names: Vec<String> = st.node_sim.keys().cloned().collect();
        for n in names {
            refresh_node(&mut st, &n);
        }
        let any_ready = st.iter(&nodes_key(), None).any(|n| node_ready(n));
        let ready_nodes = st
            .iter(&nodes_key(), None)
            .filter(|n| node_ready(n))
            .count() as i64;
        st.finalize_namespaces();
        st.ensure_default_service_accounts();
        let mut ready_node_names: Vec<String> = st
            .iter(&nodes_key(), None)
            .filter(|n| node_ready(n))
            .filter_map(|n| meta_str(n, "name").map(str::to_string))
            .collect();
        ready_node_names.sort();
        let ctx = Ctx {
            ready_node_names,
            any_ready,
            ready_nodes,
            now: Instant::now(),
            default_delay: settings.ready_delay,
        };
        for (g, p) in [
            ("apps", "deployments"),
            ("apps", "statefulsets"),
            ("apps", "daemonsets"),
            ("apps", "replicasets"),
            ("batch", "jobs"),
            ("", "persistentvolumeclaims"),
            ("", "services"),
        ] {
            let key: ResKey = (g.to_string(), p.to_string());
            for obj in st.snapshot(&key) {
                reconcile(&mut st, &key, &obj, &ctx, &mut timers);
            }
        }
        if ticks % 100 == 0 {
            timers.retain(|(k, ns, n), _| st.get(k, ns, n).is_some());
        }
    }
}

struct Ctx {
    ready_node_names: Vec<String>,
    any_ready: bool,
    ready_nodes: i64,
    now: Instant,
    default_delay: Duration,
}

fn annotation<'a>(obj: &'a Value, k: &str) -> Option<&'a str> {
    obj.get("metadata")?.get("annotations")?.get(k)?.as_str()
}

fn reconcile(st: &mut State, key: &ResKey, obj: &Value, ctx: &Ctx, timers: &mut Timers) {
    let ns = meta_str(obj, "namespace").unwrap_or("").to_string();
    let name = meta_str(obj, "name").unwrap_or("").to_string();
    if obj
        .get("metadata")
        .and_then(|m| m.get("deletionTimestamp"))
        .is_some()
    {
        return;
    }
    if key.1 == "services"
        && obj
            .get("spec")
            .and_then(|s| s.get("type"))
            .and_then(Value::as_str)
            != Some("LoadBalancer")
    {
        return;
    }
    let generation = obj
        .get("metadata")
        .and_then(|m| m.get("generation"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let tk = (key.clone(), ns.clone(), name.clone());
    let entry = timers.entry(tk).or_insert((generation, ctx.now));
    if entry.0 != generation {
        *entry = (generation, ctx.now);
    }
    let delay = annotation(obj, READY_DELAY_ANNOTATION)
        .and_then(parse_duration)
        .unwrap_or(ctx.default_delay);
    let elapsed = ctx.now >= entry.1 + delay;
    let fail = annotation(obj, FAIL_ANNOTATION).unwrap_or("");
    let needs_node = key.1 != "persistentvolumeclaims" && key.1 != "services";
    let ready = elapsed && (ctx.any_ready || !needs_node);
    let spec = obj.get("spec").cloned().unwrap_or(json!({}));
    let old_status = obj
        .get("status")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let replicas = spec.get("replicas").and_then(Value::as_i64).unwrap_or(1);
    let status: Value = match key.1.as_str() {
        "deployments" => {
            // Complete only once the current ReplicaSet is ready and the old ones are drained.
            let ready = ready && crate::pods::rollout_done(st, obj, replicas);
            deployment_status(
                &name, generation, replicas, ready, elapsed, fail, old_status,
            )
        }
        "statefulsets" | "replicasets" => {
            let ok = ready && fail != "never-ready" && fail != "progress-deadline";
            let r = if ok { replicas } else { 0 };
            let mut s = json!({
                "observedGeneration": generation, "replicas": replicas,
                "availableReplicas": r,
            });
            if r > 0 {
                s["readyReplicas"] = json!(r);
            }
            if key.1 == "statefulsets" {
                let rev = format!("{name}-{:x}", generation * 7919 + 1000);
                s["currentReplicas"] = json!(replicas);
                s["updatedReplicas"] = json!(replicas);
                s["currentRevision"] = json!(rev);
                s["updateRevision"] = json!(rev);
                s["collisionCount"] = json!(0);
            } else {
                s["fullyLabeledReplicas"] = json!(replicas);
            }
            s
        }
        "daemonsets" => {
            let desired = ctx.ready_nodes;
            let ok = ready && fail != "never-ready" && fail != "progress-deadline";
            let n = if ok { desired } else { 0 };
            json!({
                "observedGeneration": generation, "desiredNumberScheduled": desired,
                "currentNumberScheduled": desired, "updatedNumberScheduled": desired,
                "numberMisscheduled": 0, "numberReady": n, "numberAvailable": n,
            })
        }
        "jobs" => job_status(&spec, ready, fail, old_status),
        "persistentvolumeclaims" => {
            if !elapsed || fail == "never-ready" {
                json!({"phase": "Pending"})
            } else {
                let mut s = json!({"phase": "Bound"});
                if let Some(m) = spec.get("accessModes") {
                    s["accessModes"] = m.clone();
                }
                if let Some(c) = spec
                    .get("resources")
                    .and_then(|r| r.get("requests"))
                    .and_then(|r| r.get("storage"))
                {
                    s["capacity"] = json!({"storage": c});
                }
                s
            }
        }
        "services" => {
            if !elapsed || fail == "never-ready" {
                json!({"loadBalancer": {}})
            } else {
                let ip = spec
                    .get("clusterIP")
                    .and_then(Value::as_str)
                    .unwrap_or("10.43.0.1");
                let last = ip.rsplit('.').next().unwrap_or("1");
                json!({"loadBalancer": {"ingress": [{"ip": format!("172.18.0.{last}"), "ipMode": "VIP"}]}})
            }
        }
        _ => return,
    };
    st.set_status(key, &ns, &name, "k3s", |_| status);
    let pods_ok = ready && fail != "never-ready" && fail != "progress-deadline";
    match key.1.as_str() {
        "deployments" => crate::pods::sync_deployment(st, obj, replicas),
        "replicasets" | "statefulsets" | "daemonsets" | "jobs" => {
            crate::pods::sync_pods(st, key, obj, pods_ok, fail, ctx.ready_node_names.as_slice())
        }
        _ => {}
    }
}

fn deployment_status(
    name: &str,
    generation: i64,
    replicas: i64,
    ready: bool,
    elapsed: bool,
    fail: &str,
    old: Map<String, Value>,
) -> Value {
    let now = now_rfc3339();
    let rs = format!("{name}-{:x}", 0x5d4f_0000_u64 + generation as u64 * 7919);
    let mut s = Map::new();
    if let Some(c) = old.get("conditions") {
        s.insert("conditions".into(), c.clone());
    }
    s.insert("observedGeneration".into(), json!(generation));
    s.insert("replicas".into(), json!(replicas));
    s.insert("updatedReplicas".into(), json!(replicas));
    let available =
        (ready && fail != "never-ready" && fail != "progress-deadline") || replicas == 0;
    if available {
        if replicas > 0 {
            s.insert("readyReplicas".into(), json!(replicas));
            s.insert("availableReplicas".into(), json!(replicas));
        }
        set_condition(
            &mut s,
            json!({"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
            "message": "Deployment has minimum availability.", "lastUpdateTime": now, "lastTransitionTime": now}),
        );
        set_condition(
            &mut s,
            json!({"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
            "message": format!("ReplicaSet \"{rs}\" has successfully progressed."), "lastUpdateTime": now, "lastTransitionTime": now}),
        );
    } else {
        // During a rollout of an already available Deployment the old pods keep serving, as with
        // RollingUpdate: Available stays True while Progressing reports the new ReplicaSet.
        let was_available = old
            .get("conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Available" && c["status"] == "True")
            });
        let kept = old
            .get("availableReplicas")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .min(replicas);
        if was_available && kept > 0 {
            s.insert("updatedReplicas".into(), json!(0));
            s.insert("readyReplicas".into(), json!(kept));
            s.insert("availableReplicas".into(), json!(kept));
            if replicas > kept {
                s.insert("unavailableReplicas".into(), json!(replicas - kept));
            }
            set_condition(
                &mut s,
                json!({"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                "message": "Deployment has minimum availability.", "lastUpdateTime": now, "lastTransitionTime": now}),
            );
        } else {
            s.insert("unavailableReplicas".into(), json!(replicas));
            set_condition(
                &mut s,
                json!({"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
                "message": "Deployment does not have minimum availability.", "lastUpdateTime": now, "lastTransitionTime": now}),
            );
        }
        if fail == "progress-deadline" && elapsed {
            set_condition(
                &mut s,
                json!({"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                "message": format!("ReplicaSet \"{rs}\" has timed out progressing."), "lastUpdateTime": now, "lastTransitionTime": now}),
            );
        } else {
            set_condition(
                &mut s,
                json!({"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                "message": format!("ReplicaSet \"{rs}\" is progressing."), "lastUpdateTime": now, "lastTransitionTime": now}),
            );
        }
    }
    // Keep lastUpdateTime stable when nothing else changed, so an idle deployment is not rewritten every tick.
    if let (Some(new_c), Some(old_c)) = (s.get("conditions").cloned(), old.get("conditions")) {
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(a) = v.as_array_mut() {
                for c in a.iter_mut().filter_map(Value::as_object_mut) {
                    c.remove("lastUpdateTime");
                    c.remove("lastTransitionTime");
                }
            }
            v
        };
        if strip(&new_c) == strip(old_c) {
            s.insert("conditions".into(), old_c.clone());
        }
    }
    Value::Object(s)
}

fn job_status(spec: &Value, ready: bool, fail: &str, old: Map<String, Value>) -> Value {
    let now = now_rfc3339();
    let completions = spec.get("completions").and_then(Value::as_i64).unwrap_or(1);
    let parallelism = spec.get("parallelism").and_then(Value::as_i64).unwrap_or(1);
    let start = old.get("startTime").cloned().unwrap_or_else(|| json!(now));
    let done = old
        .get("conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Complete" || c["type"] == "Failed")
        });
    if done {
        return Value::Object(old);
    }
    if !ready {
        return json!({"startTime": start, "active": parallelism, "ready": 0, "terminating": 0,
            "uncountedTerminatedPods": {}});
    }
    if fail == "job-failed" {
        return json!({"startTime": start, "failed": 1, "ready": 0, "terminating": 0, "uncountedTerminatedPods": {},
        "conditions": [
            {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit", "lastProbeTime": now, "lastTransitionTime": now},
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit", "lastProbeTime": now, "lastTransitionTime": now}
        ]});
    }
    if fail == "never-ready" {
        return json!({"startTime": start, "active": parallelism, "ready": 0, "terminating": 0, "uncountedTerminatedPods": {}});
    }
    json!({"startTime": start, "completionTime": now, "succeeded": completions, "ready": 0, "terminating": 0,
    "uncountedTerminatedPods": {},
    "conditions": [
        {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods", "lastProbeTime": now, "lastTransitionTime": now},
        {"type": "Complete", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods", "lastProbeTime": now, "lastTransitionTime": now}
    ]})
}
