//! The objects real controllers create: a ReplicaSet per Deployment template, and Pods for ReplicaSets,
//! StatefulSets, DaemonSets and Jobs, scheduled onto Ready nodes, with kubelet-like status.

use crate::api::ResKey;
use crate::cluster::{State, WriteCtx};
use crate::util::{meta_str, now_rfc3339, random_suffix};
use serde_json::{json, Map, Value};
use std::sync::Arc;

const MANAGER: &str = "kube-controller-manager";

/// Record an Event about `about` once per (object, reason, detail), as the controllers and kubelet do.
pub fn event(
    st: &mut State,
    about: &Value,
    warning: bool,
    reason: &str,
    message: &str,
    component: &str,
) {
    let (Some(name), Some(uid)) = (meta_str(about, "name"), meta_str(about, "uid")) else {
        return;
    };
    let ns = meta_str(about, "namespace")
        .unwrap_or("default")
        .to_string();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in uid.bytes().chain(reason.bytes()).chain(message.bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    let ev_name = format!("{name}.{h:016x}");
    let ev_key = key("", "events");
    if st.get(&ev_key, &ns, &ev_name).is_some() {
        return;
    }
    let now = now_rfc3339();
    let body = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": ev_name},
        "involvedObject": {
            "apiVersion": about.get("apiVersion"), "kind": about.get("kind"),
            "name": name, "namespace": meta_str(about, "namespace"), "uid": uid,
            "resourceVersion": meta_str(about, "resourceVersion"),
        },
        "reason": reason, "message": message,
        "type": if warning { "Warning" } else { "Normal" },
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": "",
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    });
    let t = st.type_by_kind("", "events");
    let _ = st.create(&t, Some(&ns), body, &WriteCtx::internal(component, ""));
}

fn key(g: &str, p: &str) -> ResKey {
    (g.to_string(), p.to_string())
}

/// kube's pod-template-hash alphabet over an FNV-1a hash of the template.
pub fn template_hash(template: &Value) -> String {
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in serde_json::to_vec(template).unwrap_or_default() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    let mut s = String::new();
    for _ in 0..10 {
        s.push(ALPHA[(h % ALPHA.len() as u64) as usize] as char);
        h /= ALPHA.len() as u64;
    }
    s
}

fn owner_ref(obj: &Value) -> Value {
    json!({
        "apiVersion": obj.get("apiVersion").cloned().unwrap_or(Value::Null),
        "kind": obj.get("kind").cloned().unwrap_or(Value::Null),
        "name": meta_str(obj, "name"),
        "uid": meta_str(obj, "uid"),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

fn labels_of(v: Option<&Value>) -> Map<String, Value> {
    v.and_then(Value::as_object).cloned().unwrap_or_default()
}

/// Sandbox annotations (delay, failure injection) follow the Deployment onto its ReplicaSets.
fn sandbox_annotations(obj: &Value) -> Map<String, Value> {
    obj.get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_object)
        .map(|a| {
            a.iter()
                .filter(|(k, _)| k.starts_with("sandbox.phoenix.dev/"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a Deployment's current ReplicaSet has all replicas ready and every older one is drained.
pub fn rollout_done(st: &State, d: &Value, replicas: i64) -> bool {
    let (Some(uid), Some(name), Some(ns)) = (
        meta_str(d, "uid"),
        meta_str(d, "name"),
        meta_str(d, "namespace"),
    ) else {
        return false;
    };
    let Some(template) = d.get("spec").and_then(|s| s.get("template")) else {
        return false;
    };
    let rs_name = format!("{name}-{}", template_hash(template));
    let rs_key = key("apps", "replicasets");
    let pods_key = key("", "pods");
    let current_ready = st.get(&rs_key, ns, &rs_name).is_some_and(|rs| {
        rs.get("status")
            .and_then(|s| s.get("readyReplicas"))
            .and_then(Value::as_i64)
            .unwrap_or(0)
            >= replicas
    });
    current_ready
        && st.dependents(uid, &rs_key).iter().all(|rs| {
            meta_str(rs, "name") == Some(rs_name.as_str())
                || meta_str(rs, "uid").is_none_or(|u| st.dependents(u, &pods_key).is_empty())
        })
}

/// Keep one ReplicaSet per pod template: the current one at `replicas`, older ones scaled to 0.
pub fn sync_deployment(st: &mut State, d: &Value, replicas: i64) {
    let (Some(uid), Some(name), Some(ns)) = (
        meta_str(d, "uid"),
        meta_str(d, "name"),
        meta_str(d, "namespace"),
    ) else {
        return;
    };
    let Some(template) = d.get("spec").and_then(|s| s.get("template")) else {
        return;
    };
    let hash = template_hash(template);
    let rs_name = format!("{name}-{hash}");
    let rs_key = key("apps", "replicasets");
    // Revisions as the deployment controller numbers them: the current template's ReplicaSet carries the
    // highest one (a template seen before, e.g. after `kubectl rollout undo`, gets a new, higher number).
    const REV: &str = "deployment.kubernetes.io/revision";
    let rev_of = |o: &Value| -> i64 {
        o.get("metadata")
            .and_then(|m| m.get("annotations"))
            .and_then(|a| a.get(REV))
            .and_then(Value::as_str)
            .and_then(|r| r.parse().ok())
            .unwrap_or(0)
    };
    let owned = st.dependents(uid, &rs_key);
    let max_rev = owned.iter().map(|r| rev_of(r)).max().unwrap_or(0);
    let revision = match owned
        .iter()
        .find(|r| meta_str(r, "name") == Some(rs_name.as_str()))
    {
        Some(r) if rev_of(r) == max_rev && max_rev > 0 => max_rev,
        _ => max_rev + 1,
    };
    let deploy_key = key("apps", "deployments");
    let name_owned = name.to_string();
    st.internal_update(&deploy_key, ns, &name_owned, MANAGER, |o| {
        let md = crate::util::meta_mut(o);
        let ann = md.entry("annotations").or_insert_with(|| json!({}));
        if let Some(a) = ann.as_object_mut() {
            a.insert(REV.into(), json!(revision.to_string()));
        }
    });
    // Old ReplicaSets keep serving until the new one is fully ready (a rolling update without downtime).
    let new_ready = st.get(&rs_key, ns, &rs_name).is_some_and(|rs| {
        rs.get("status")
            .and_then(|s| s.get("readyReplicas"))
            .and_then(Value::as_i64)
            .unwrap_or(0)
            >= replicas
    });
    for old in st.dependents(uid, &rs_key) {
        let Some(old_name) = meta_str(&old, "name") else {
            continue;
        };
        if old_name != rs_name && new_ready {
            let old_name = old_name.to_string();
            st.internal_update(&rs_key, ns, &old_name, MANAGER, |o| {
                if let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.insert("replicas".into(), json!(0));
                }
            });
        }
    }
    let annotations = sandbox_annotations(d);
    if st.get(&rs_key, ns, &rs_name).is_some() {
        st.internal_update(&rs_key, ns, &rs_name, MANAGER, |o| {
            if let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert("replicas".into(), json!(replicas));
            }
            let md = crate::util::meta_mut(o);
            let ann = md.entry("annotations").or_insert_with(|| json!({}));
            if let Some(a) = ann.as_object_mut() {
                a.retain(|k, _| !k.starts_with("sandbox.phoenix.dev/"));
                a.extend(annotations.clone());
                a.insert(REV.into(), json!(revision.to_string()));
            }
        });
        return;
    }
    let mut labels = labels_of(template.get("metadata").and_then(|m| m.get("labels")));
    labels.insert("pod-template-hash".into(), json!(hash));
    let mut match_labels = labels_of(
        d.get("spec")
            .and_then(|s| s.get("selector"))
            .and_then(|s| s.get("matchLabels")),
    );
    match_labels.insert("pod-template-hash".into(), json!(hash));
    let mut tmpl = template.clone();
    if let Some(m) = tmpl.as_object_mut() {
        let md = m.entry("metadata").or_insert_with(|| json!({}));
        if let Some(md) = md.as_object_mut() {
            md.insert("labels".into(), Value::Object(labels.clone()));
        }
    }
    let mut ann = annotations;
    ann.insert(REV.into(), json!(revision.to_string()));
    ann.insert(
        "deployment.kubernetes.io/desired-replicas".into(),
        json!(replicas.to_string()),
    );
    let rs = json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": rs_name, "labels": labels, "annotations": ann, "ownerReferences": [owner_ref(d)]},
        "spec": {"replicas": replicas, "selector": {"matchLabels": match_labels}, "template": tmpl},
    });
    let t = st.type_by_kind("apps", "replicasets");
    if st
        .create(&t, Some(ns), rs, &WriteCtx::internal(MANAGER, ""))
        .is_ok()
    {
        event(
            st,
            d,
            false,
            "ScalingReplicaSet",
            &format!("Scaled up replica set {rs_name} from 0 to {replicas}"),
            "deployment-controller",
        );
    }
}

/// Create or delete the Pods of a ReplicaSet/StatefulSet/DaemonSet/Job and set their status.
pub fn sync_pods(
    st: &mut State,
    k: &ResKey,
    owner: &Value,
    ready: bool,
    fail: &str,
    nodes: &[String],
) {
    let (Some(uid), Some(name), Some(ns)) = (
        meta_str(owner, "uid"),
        meta_str(owner, "name"),
        meta_str(owner, "namespace"),
    ) else {
        return;
    };
    let (uid, name, ns) = (uid.to_string(), name.to_string(), ns.to_string());
    let spec = owner.get("spec").cloned().unwrap_or(json!({}));
    let Some(template) = spec.get("template").cloned() else {
        return;
    };
    let pods_key = key("", "pods");
    let existing = st.dependents(&uid, &pods_key);
    let job_done = k.1 == "jobs"
        && owner
            .get("status")
            .and_then(|s| s.get("conditions"))
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c["status"] == "True" && (c["type"] == "Complete" || c["type"] == "Failed")
                })
            });
    // Desired pod names (None: generated) and the node each goes to.
    let desired: Vec<(Option<String>, Option<String>)> = match k.1.as_str() {
        "statefulsets" => {
            let r = spec
                .get("replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1)
                .max(0);
            (0..r)
                .map(|i| (Some(format!("{name}-{i}")), None))
                .collect()
        }
        "daemonsets" => nodes.iter().map(|n| (None, Some(n.clone()))).collect(),
        "jobs" => vec![
            (None, None);
            spec.get("parallelism")
                .and_then(Value::as_i64)
                .unwrap_or(1)
                .clamp(0, 100) as usize
        ],
        _ => vec![
            (None, None);
            spec.get("replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1)
                .clamp(0, 10_000) as usize
        ],
    };
    let t = st.type_by_kind("", "pods");
    let name_of = |p: &Value| meta_str(p, "name").unwrap_or("").to_string();
    let node_of = |p: &Value| {
        p.get("spec")
            .and_then(|s| s.get("nodeName"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    // Remove surplus pods: StatefulSets from the highest ordinal, DaemonSets on nodes that are gone.
    let mut keep: Vec<Arc<Value>> = Vec::new();
    let mut surplus: Vec<String> = Vec::new();
    match k.1.as_str() {
        "statefulsets" => {
            for p in &existing {
                if desired
                    .iter()
                    .any(|(n, _)| n.as_deref() == Some(name_of(p).as_str()))
                {
                    keep.push(p.clone());
                } else {
                    surplus.push(name_of(p));
                }
            }
        }
        "daemonsets" => {
            for p in &existing {
                let node = node_of(p);
                if nodes.contains(&node) && !keep.iter().any(|q| node_of(q) == node) {
                    keep.push(p.clone());
                } else {
                    surplus.push(name_of(p));
                }
            }
        }
        _ => {
            for (i, p) in existing.iter().enumerate() {
                if i < desired.len() {
                    keep.push(p.clone());
                } else {
                    surplus.push(name_of(p));
                }
            }
        }
    }
    for n in surplus {
        let _ = st.delete(&t, &ns, &n, &Default::default(), "");
    }
    // Create missing pods (a finished Job starts no new ones).
    if !job_done {
        let labels = labels_of(template.get("metadata").and_then(|m| m.get("labels")));
        for (i, (fixed, node)) in desired.iter().enumerate() {
            let present = match (k.1.as_str(), fixed, node) {
                (_, Some(n), _) => keep.iter().any(|p| name_of(p) == *n),
                ("daemonsets", _, Some(node)) => keep.iter().any(|p| node_of(p) == *node),
                _ => i < keep.len(),
            };
            if present {
                continue;
            }
            let pod_name = fixed
                .clone()
                .unwrap_or_else(|| format!("{name}-{}", random_suffix(5)));
            let mut l = labels.clone();
            if k.1 == "statefulsets" {
                l.insert("apps.kubernetes.io/pod-index".into(), json!(i.to_string()));
                l.insert("statefulset.kubernetes.io/pod-name".into(), json!(pod_name));
            }
            let mut pod_spec = template.get("spec").cloned().unwrap_or(json!({}));
            let target = node.clone().or_else(|| {
                (!nodes.is_empty()).then(|| nodes[(keep.len() + i) % nodes.len()].clone())
            });
            if let (Some(n), Some(m)) = (&target, pod_spec.as_object_mut()) {
                m.insert("nodeName".into(), json!(n));
            }
            let body = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "labels": l, "ownerReferences": [owner_ref(owner)]},
                "spec": pod_spec,
            });
            if st
                .create(&t, Some(&ns), body, &WriteCtx::internal(MANAGER, ""))
                .is_ok()
            {
                let component = format!("{}-controller", k.1.trim_end_matches('s'));
                event(
                    st,
                    owner,
                    false,
                    "SuccessfulCreate",
                    &format!("Created pod: {pod_name}"),
                    &component,
                );
            }
        }
    }
    // Bind pods created while no node was Ready (the scheduler's job), then kubelet status for every pod.
    let job_failed = fail == "job-failed";
    for (i, p) in st.dependents(&uid, &pods_key).into_iter().enumerate() {
        let pname = name_of(&p);
        if node_of(&p).is_empty() && !nodes.is_empty() {
            let n = nodes[i % nodes.len()].clone();
            st.internal_update(&pods_key, &ns, &pname, "default-scheduler", |o| {
                if let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.insert("nodeName".into(), json!(n));
                }
            });
        }
        let Some(p) = st.get(&pods_key, &ns, &pname) else {
            continue;
        };
        let scheduled = !node_of(&p).is_empty();
        let status = pod_status(
            &p,
            scheduled,
            ready,
            fail,
            k.1 == "jobs" && job_done,
            job_failed,
        );
        let phase = status
            .get("phase")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let ready_now = status
            .get("conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
        st.set_status(&pods_key, &ns, &pname, "kubelet", |_| status);
        let Some(p) = st.get(&pods_key, &ns, &pname) else {
            continue;
        };
        let first_container = p
            .get("spec")
            .and_then(|s| s.get("containers"))
            .and_then(|c| c.get(0))
            .and_then(|c| c.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if !scheduled {
            let msg = format!(
                "0/{} nodes are available: no node is Ready.",
                st.count(&key("", "nodes"))
            );
            event(st, &p, true, "FailedScheduling", &msg, "default-scheduler");
            continue;
        }
        let node = node_of(&p);
        event(
            st,
            &p,
            false,
            "Scheduled",
            &format!("Successfully assigned {ns}/{pname} to {node}"),
            "default-scheduler",
        );
        if ready_now || phase == "Succeeded" || phase == "Failed" {
            event(
                st,
                &p,
                false,
                "Started",
                &format!("Started container {first_container}"),
                "kubelet",
            );
        } else if fail == "never-ready" && phase == "Running" {
            let msg =
                format!("Back-off restarting failed container {first_container} in pod {pname}");
            event(st, &p, true, "BackOff", &msg, "kubelet");
        }
    }
    if k.1 == "jobs" && job_done {
        if fail == "job-failed" {
            event(
                st,
                owner,
                true,
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
                "job-controller",
            );
        } else {
            event(
                st,
                owner,
                false,
                "Completed",
                "Job completed",
                "job-controller",
            );
        }
    }
}

fn pod_status(
    p: &Value,
    scheduled: bool,
    ready: bool,
    fail: &str,
    job_done: bool,
    job_failed: bool,
) -> Value {
    let now = now_rfc3339();
    let old = p.get("status").cloned().unwrap_or(json!({}));
    let since = |ty: &str, status: &str| {
        old.get("conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == ty && c["status"] == status))
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| json!(now))
    };
    let cond = |ty: &str, ok: bool, reason: Option<&str>| {
        let s = if ok { "True" } else { "False" };
        let mut c = json!({"type": ty, "status": s, "lastProbeTime": null, "lastTransitionTime": since(ty, s)});
        if let Some(r) = reason {
            c["reason"] = json!(r);
        }
        c
    };
    if !scheduled {
        return json!({
            "phase": "Pending",
            "conditions": [cond("PodScheduled", false, Some("Unschedulable"))],
            "qosClass": "BestEffort",
        });
    }
    // A pod that became Ready stays Ready through its owner's later changes (scale, relabel), unless it is
    // made to fail.
    let was_ready = old
        .get("conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
    let ready = ready || (was_ready && fail != "never-ready");
    let start = old.get("startTime").cloned().unwrap_or_else(|| json!(now));
    let name = meta_str(p, "name").unwrap_or("");
    let ip_seed = template_hash(&json!(name))
        .bytes()
        .fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(b as u32));
    let pod_ip = format!("10.42.{}.{}", (ip_seed >> 8) % 250, ip_seed % 250 + 2);
    let containers: Vec<Value> = p
        .get("spec")
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let (phase, all_ready, state) = if job_done {
        if job_failed {
            (
                "Failed",
                false,
                json!({"terminated": {"exitCode": 1, "reason": "Error", "startedAt": start, "finishedAt": now}}),
            )
        } else {
            (
                "Succeeded",
                false,
                json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": start, "finishedAt": now}}),
            )
        }
    } else if ready {
        ("Running", true, json!({"running": {"startedAt": start}}))
    } else if fail == "never-ready" {
        (
            "Running",
            false,
            json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting failed container (sandbox.phoenix.dev/fail: never-ready)"}}),
        )
    } else {
        (
            "Pending",
            false,
            json!({"waiting": {"reason": "ContainerCreating"}}),
        )
    };
    // Terminated states keep their first finishedAt so status settles.
    let state = match old
        .get("containerStatuses")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("state"))
    {
        Some(prev) if prev.get("terminated").is_some() && state.get("terminated").is_some() => {
            prev.clone()
        }
        _ => state,
    };
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            json!({
                "name": c.get("name"), "image": c.get("image"),
                "imageID": format!("{}@sha256:{}", c.get("image").and_then(Value::as_str).unwrap_or(""), "0".repeat(64)),
                "ready": all_ready, "started": all_ready, "restartCount": 0, "state": state,
            })
        })
        .collect();
    json!({
        "phase": phase,
        "conditions": [
            cond("PodReadyToStartContainers", phase != "Pending", None),
            cond("Initialized", true, None),
            cond("Ready", all_ready, (!all_ready).then_some("ContainersNotReady")),
            cond("ContainersReady", all_ready, (!all_ready).then_some("ContainersNotReady")),
            cond("PodScheduled", true, None),
        ],
        "hostIP": "10.40.1.10",
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": start,
        "containerStatuses": statuses,
        "qosClass": "BestEffort",
    })
}
