//! `meta.k8s.io/v1` Table responses (what `kubectl get` asks for), with the usual columns of common kinds.

use crate::api::ResourceType;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

/// What each row carries besides its cells (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn parse(v: Option<&str>) -> Include {
        match v {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

/// Whether an Accept header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table") && first.contains("g=meta.k8s.io"))
}

fn col(name: &str, ty: &str, format: &str, priority: i64) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": "", "priority": priority})
}

fn columns(t: &ResourceType) -> Vec<Value> {
    let name = col("Name", "string", "name", 0);
    let age = col("Age", "string", "", 0);
    let s = |n: &str| col(n, "string", "", 0);
    let i = |n: &str| col(n, "integer", "", 0);
    match (t.custom, t.kind.as_str()) {
        (false, "Namespace") => vec![name, s("Status"), age],
        (false, "Deployment") => vec![name, s("Ready"), i("Up-to-date"), i("Available"), age],
        (false, "StatefulSet") => vec![name, s("Ready"), age],
        (false, "ReplicaSet") => vec![name, i("Desired"), i("Current"), i("Ready"), age],
        (false, "DaemonSet") => vec![
            name,
            i("Desired"),
            i("Current"),
            i("Ready"),
            i("Up-to-date"),
            i("Available"),
            age,
        ],
        (false, "Job") => vec![name, s("Status"), s("Completions"), age],
        (false, "Node") => vec![name, s("Status"), s("Roles"), age, s("Version")],
        (false, "Service") => vec![
            name,
            s("Type"),
            s("Cluster-IP"),
            s("External-IP"),
            s("Port(s)"),
            age,
        ],
        (false, "PersistentVolumeClaim") => {
            vec![name, s("Status"), s("Capacity"), s("Access Modes"), age]
        }
        (false, "ConfigMap") => vec![name, i("Data"), age],
        (false, "Secret") => vec![name, s("Type"), i("Data"), age],
        (false, "Pod") => vec![
            name,
            s("Ready"),
            s("Status"),
            i("Restarts"),
            age,
            col("Node", "string", "", 1),
        ],
        (false, "CustomResourceDefinition") => vec![name, col("Created At", "date", "", 0)],
        (false, "Event") => vec![
            s("Last Seen"),
            s("Type"),
            s("Reason"),
            s("Object"),
            s("Message"),
        ],
        _ => vec![name, age],
    }
}

/// kube's HumanDuration.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let m = s / 60;
    let h = m / 60;
    let days = h / 24;
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{}h", h % 24)
        }
    } else if days < 365 * 2 {
        format!("{days}d")
    } else {
        format!("{}y", days / 365)
    }
}

fn age(obj: &Value) -> String {
    obj.get("metadata")
        .and_then(|m| m.get("creationTimestamp"))
        .and_then(Value::as_str)
        .and_then(|ts| humantime::parse_rfc3339(ts).ok())
        .map(|t| human_duration(SystemTime::now().duration_since(t).unwrap_or_default()))
        .unwrap_or_else(|| "<unknown>".into())
}

fn i64_at(v: &Value, path: &[&str]) -> i64 {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(n) => cur = n,
            None => return 0,
        }
    }
    cur.as_i64().unwrap_or(0)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(n) => cur = n,
            None => return "",
        }
    }
    cur.as_str().unwrap_or("")
}

fn cond_true(v: &Value, ty: &str) -> bool {
    v.get("status")
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == ty && c["status"] == "True"))
}

fn cells(t: &ResourceType, obj: &Value) -> Vec<Value> {
    let name = json!(str_at(obj, &["metadata", "name"]));
    let a = json!(age(obj));
    if t.custom {
        return vec![name, a];
    }
    match t.kind.as_str() {
        "Namespace" => vec![name, json!(str_at(obj, &["status", "phase"])), a],
        "Deployment" => {
            let r = i64_at(obj, &["spec", "replicas"]);
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    i64_at(obj, &["status", "readyReplicas"]),
                    r
                )),
                json!(i64_at(obj, &["status", "updatedReplicas"])),
                json!(i64_at(obj, &["status", "availableReplicas"])),
                a,
            ]
        }
        "StatefulSet" => vec![
            name,
            json!(format!(
                "{}/{}",
                i64_at(obj, &["status", "readyReplicas"]),
                i64_at(obj, &["spec", "replicas"])
            )),
            a,
        ],
        "ReplicaSet" => vec![
            name,
            json!(i64_at(obj, &["spec", "replicas"])),
            json!(i64_at(obj, &["status", "replicas"])),
            json!(i64_at(obj, &["status", "readyReplicas"])),
            a,
        ],
        "DaemonSet" => {
            let s = |k: &str| json!(i64_at(obj, &["status", k]));
            vec![
                name,
                s("desiredNumberScheduled"),
                s("currentNumberScheduled"),
                s("numberReady"),
                s("updatedNumberScheduled"),
                s("numberAvailable"),
                a,
            ]
        }
        "Job" => {
            let status = if cond_true(obj, "Complete") {
                "Complete"
            } else if cond_true(obj, "Failed") {
                "Failed"
            } else {
                "Running"
            };
            let completions = obj
                .get("spec")
                .and_then(|s| s.get("completions"))
                .and_then(Value::as_i64)
                .unwrap_or(1);
            vec![
                name,
                json!(status),
                json!(format!(
                    "{}/{}",
                    i64_at(obj, &["status", "succeeded"]),
                    completions
                )),
                a,
            ]
        }
        "Node" => {
            let status = if cond_true(obj, "Ready") {
                "Ready"
            } else {
                "NotReady"
            };
            let mut roles: Vec<&str> = obj
                .get("metadata")
                .and_then(|m| m.get("labels"))
                .and_then(Value::as_object)
                .map(|l| {
                    l.keys()
                        .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                        .collect()
                })
                .unwrap_or_default();
            roles.sort();
            let roles = if roles.is_empty() {
                "<none>".to_string()
            } else {
                roles.join(",")
            };
            vec![
                name,
                json!(status),
                json!(roles),
                a,
                json!(str_at(obj, &["status", "nodeInfo", "kubeletVersion"])),
            ]
        }
        "Service" => {
            let ty = str_at(obj, &["spec", "type"]);
            let ingress = obj
                .get("status")
                .and_then(|s| s.get("loadBalancer"))
                .and_then(|l| l.get("ingress"))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i.get("ip").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let external = match (ty, ingress.is_empty()) {
                ("LoadBalancer", true) => "<pending>".to_string(),
                (_, false) => ingress,
                _ => "<none>".to_string(),
            };
            let ports = obj
                .get("spec")
                .and_then(|s| s.get("ports"))
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            let port = p.get("port").map(|v| v.to_string()).unwrap_or_default();
                            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                            match p.get("nodePort") {
                                Some(np) => format!("{port}:{np}/{proto}"),
                                None => format!("{port}/{proto}"),
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                name,
                json!(ty),
                json!(str_at(obj, &["spec", "clusterIP"])),
                json!(external),
                json!(if ports.is_empty() {
                    "<none>".to_string()
                } else {
                    ports
                }),
                a,
            ]
        }
        "PersistentVolumeClaim" => {
            let modes = obj
                .get("status")
                .and_then(|s| s.get("accessModes"))
                .and_then(Value::as_array)
                .map(|m| {
                    m.iter()
                        .filter_map(Value::as_str)
                        .map(|m| match m {
                            "ReadWriteOnce" => "RWO",
                            "ReadOnlyMany" => "ROX",
                            "ReadWriteMany" => "RWX",
                            "ReadWriteOncePod" => "RWOP",
                            other => other,
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                name,
                json!(str_at(obj, &["status", "phase"])),
                json!(str_at(obj, &["status", "capacity", "storage"])),
                json!(modes),
                a,
            ]
        }
        "ConfigMap" => {
            let n = obj
                .get("data")
                .and_then(Value::as_object)
                .map(|m| m.len())
                .unwrap_or(0)
                + obj
                    .get("binaryData")
                    .and_then(Value::as_object)
                    .map(|m| m.len())
                    .unwrap_or(0);
            vec![name, json!(n), a]
        }
        "Secret" => {
            let n = obj
                .get("data")
                .and_then(Value::as_object)
                .map(|m| m.len())
                .unwrap_or(0);
            vec![name, json!(str_at(obj, &["type"])), json!(n), a]
        }
        "Pod" => {
            let statuses = obj
                .get("status")
                .and_then(|s| s.get("containerStatuses"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let total = obj
                .get("spec")
                .and_then(|s| s.get("containers"))
                .and_then(Value::as_array)
                .map(Vec::len)
                .unwrap_or(0);
            let ready = statuses.iter().filter(|c| c["ready"] == true).count();
            let waiting = statuses
                .iter()
                .find_map(|c| {
                    c.get("state")
                        .and_then(|s| s.get("waiting"))
                        .and_then(|w| w.get("reason"))
                })
                .and_then(Value::as_str);
            let phase = str_at(obj, &["status", "phase"]);
            let status = match (waiting, phase) {
                (Some(r), _) => r.to_string(),
                (None, "Succeeded") => "Completed".to_string(),
                (None, "Failed") => "Error".to_string(),
                (None, p) => p.to_string(),
            };
            let restarts: i64 = statuses
                .iter()
                .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
                .sum();
            let node = str_at(obj, &["spec", "nodeName"]);
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts),
                a,
                json!(if node.is_empty() { "<none>" } else { node }),
            ]
        }
        "CustomResourceDefinition" => {
            vec![name, json!(str_at(obj, &["metadata", "creationTimestamp"]))]
        }
        "Event" => {
            let last = obj
                .get("lastTimestamp")
                .and_then(Value::as_str)
                .and_then(|ts| humantime::parse_rfc3339(ts).ok())
                .map(|t| human_duration(SystemTime::now().duration_since(t).unwrap_or_default()))
                .unwrap_or_else(|| "<unknown>".into());
            vec![
                json!(last),
                json!(str_at(obj, &["type"])),
                json!(str_at(obj, &["reason"])),
                json!(format!(
                    "{}/{}",
                    str_at(obj, &["involvedObject", "kind"]).to_lowercase(),
                    str_at(obj, &["involvedObject", "name"])
                )),
                json!(str_at(obj, &["message"])),
            ]
        }
        _ => vec![name, a],
    }
}

fn row(t: &ResourceType, obj: &Value, include: Include) -> Value {
    let mut r = json!({"cells": cells(t, obj)});
    match include {
        Include::None => {}
        Include::Metadata => {
            r["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
            })
        }
        Include::Object => r["object"] = obj.clone(),
    }
    r
}

/// A Table of objects; `meta` is the list metadata (resourceVersion, continue).
pub fn table(t: &ResourceType, objs: &[&Value], meta: Value, include: Include) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": columns(t),
        "rows": objs.iter().map(|o| row(t, o, include)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_match_kubectl() {
        for (s, want) in [
            (5, "5s"),
            (119, "119s"),
            (150, "2m30s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (10 * 3600, "10h"),
            (50 * 3600, "2d2h"),
            (400 * 86400, "400d"),
        ] {
            assert_eq!(human_duration(Duration::from_secs(s)), want);
        }
    }

    #[test]
    fn accept_header_detection() {
        assert!(wants_table("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"));
        assert!(!wants_table("application/json"));
        assert!(!wants_table("application/json, */*"));
    }
}
