//! Kubernetes object drift (add-ons and apps): the per-object comparison results the Kubernetes
//! provider computes (server-side apply dry-run against live), turned into drift entries with a
//! unified diff each. Pure.

use serde_json::Value;

use crate::engine::Layer;

use super::diff::unified_diff;
use super::model::{DriftEntry, EntryKind, FieldDiff, Unhealthy};

/// How one object compares. Desired and live JSON are already stripped of what is not drift
/// (status, managedFields, resourceVersion, uid, server defaults, fields owned by other
/// managers), so any difference between them is drift.
#[derive(Clone, Debug, PartialEq)]
pub enum ObjectState {
    InSync,
    /// In Git, not in the cluster.
    Missing {
        desired: Value,
    },
    /// In the cluster with phoenix's ownership labels, no longer in Git.
    Extra {
        live: Value,
    },
    /// Both exist and differ. `fields` lists the differing paths; `desired` is the dry-run
    /// result of applying Git, `live` the object as it is.
    Changed {
        fields: Vec<FieldDiff>,
        desired: Value,
        live: Value,
    },
}

/// The comparison of one object.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectResult {
    /// `Kind/namespace/name`, or `Kind/name` for cluster-scoped objects.
    pub resource: String,
    pub state: ObjectState,
    /// Why the live object is unhealthy (by the provider's health predicates), if it is.
    pub unhealthy: Option<String>,
}

/// The drift entries and unhealthy objects of one layer's objects, in the order given. Each
/// entry carries a plain unified diff (live → desired); the human output colours it.
pub fn object_entries(layer: Layer, results: &[ObjectResult]) -> (Vec<DriftEntry>, Vec<Unhealthy>) {
    let mut entries = Vec::new();
    let mut unhealthy = Vec::new();
    for r in results {
        let entry = match &r.state {
            ObjectState::InSync => None,
            ObjectState::Missing { desired } => Some(
                DriftEntry::new(layer, r.resource.as_str(), EntryKind::Missing)
                    .with_unified(unified_diff(&r.resource, Some(desired), None, false)),
            ),
            ObjectState::Extra { live } => Some(
                DriftEntry::new(layer, r.resource.as_str(), EntryKind::Extra)
                    .with_detail("owned by phoenix, no longer in Git")
                    .with_unified(unified_diff(&r.resource, None, Some(live), false)),
            ),
            ObjectState::Changed {
                fields,
                desired,
                live,
            } => {
                let text = unified_diff(&r.resource, Some(desired), Some(live), false);
                let e = DriftEntry::new(layer, r.resource.as_str(), EntryKind::Changed)
                    .with_fields(fields.clone());
                Some(if text.is_empty() {
                    e
                } else {
                    e.with_unified(text)
                })
            }
        };
        entries.extend(entry);
        if let Some(reason) = &r.unhealthy {
            unhealthy.push(Unhealthy {
                resource: r.resource.clone(),
                reason: reason.clone(),
            });
        }
    }
    (entries, unhealthy)
}

/// The paths where two JSON values differ, with both sides rendered compactly; for providers
/// that have desired and live but no field list of their own. Objects recurse by key; arrays
/// and scalars compare whole.
pub fn field_diffs(desired: &Value, live: &Value) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    walk("", desired, live, &mut out);
    out
}

fn walk(path: &str, desired: &Value, live: &Value, out: &mut Vec<FieldDiff>) {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => {
            for (k, dv) in d {
                let p = join(path, k);
                match l.get(k) {
                    Some(lv) => walk(&p, dv, lv, out),
                    None => out.push(FieldDiff::new(p, Some(compact(dv)), None::<String>)),
                }
            }
            for (k, lv) in l {
                if !d.contains_key(k) {
                    out.push(FieldDiff::new(
                        join(path, k),
                        None::<String>,
                        Some(compact(lv)),
                    ));
                }
            }
        }
        (d, l) if d == l => {}
        (d, l) => out.push(FieldDiff::value(
            if path.is_empty() { "." } else { path },
            compact(d),
            compact(l),
        )),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn in_sync_objects_give_no_entry() {
        let r = ObjectResult {
            resource: "ConfigMap/web/cfg".into(),
            state: ObjectState::InSync,
            unhealthy: None,
        };
        let (entries, unhealthy) = object_entries(Layer::Apps, &[r]);
        assert!(entries.is_empty() && unhealthy.is_empty());
    }

    #[test]
    fn changed_keeps_fields_and_a_plain_diff() {
        let desired = json!({"spec": {"replicas": 2}});
        let live = json!({"spec": {"replicas": 5}});
        let r = ObjectResult {
            resource: "Deployment/web/api".into(),
            state: ObjectState::Changed {
                fields: field_diffs(&desired, &live),
                desired,
                live,
            },
            unhealthy: Some("0/2 replicas available".into()),
        };
        let (entries, unhealthy) = object_entries(Layer::Apps, &[r]);
        assert_eq!(entries[0].kind, EntryKind::Changed);
        assert_eq!(entries[0].layer, Layer::Apps);
        assert_eq!(
            entries[0].fields,
            vec![FieldDiff::value("spec.replicas", "2", "5")]
        );
        assert_eq!(
            entries[0].unified.as_deref(),
            Some("--- live Deployment/web/api\n+++ git Deployment/web/api\n@@ -1,2 +1,2 @@\n spec:\n-  replicas: 5\n+  replicas: 2\n")
        );
        assert_eq!(
            unhealthy,
            vec![Unhealthy {
                resource: "Deployment/web/api".into(),
                reason: "0/2 replicas available".into()
            }]
        );
    }

    #[test]
    fn unhealthy_but_in_sync_is_listed_apart() {
        let r = ObjectResult {
            resource: "Deployment/web/api".into(),
            state: ObjectState::InSync,
            unhealthy: Some("progressing".into()),
        };
        let (entries, unhealthy) = object_entries(Layer::Addons, &[r]);
        assert!(entries.is_empty());
        assert_eq!(unhealthy.len(), 1);
    }

    #[test]
    fn missing_and_extra() {
        let results = [
            ObjectResult {
                resource: "Service/web/api".into(),
                state: ObjectState::Missing {
                    desired: json!({"kind": "Service"}),
                },
                unhealthy: None,
            },
            ObjectResult {
                resource: "ConfigMap/web/old".into(),
                state: ObjectState::Extra {
                    live: json!({"kind": "ConfigMap"}),
                },
                unhealthy: None,
            },
        ];
        let (entries, _) = object_entries(Layer::Apps, &results);
        assert_eq!(entries[0].kind, EntryKind::Missing);
        assert!(entries[0]
            .unified
            .as_deref()
            .is_some_and(|u| u.contains("+kind: Service")));
        assert_eq!(entries[1].kind, EntryKind::Extra);
        assert!(entries[1]
            .unified
            .as_deref()
            .is_some_and(|u| u.contains("-kind: ConfigMap")));
    }

    #[test]
    fn field_diffs_cover_added_removed_and_changed() {
        let desired =
            json!({"metadata": {"labels": {"app": "api", "tier": "web"}}, "spec": {"ports": [80]}});
        let live = json!({"metadata": {"labels": {"app": "api", "team": "x"}}, "spec": {"ports": [80, 81]}});
        assert_eq!(
            field_diffs(&desired, &live),
            vec![
                FieldDiff::new("metadata.labels.tier", Some("web"), None::<String>),
                FieldDiff::new("metadata.labels.team", None::<String>, Some("x")),
                FieldDiff::value("spec.ports", "[80]", "[80,81]"),
            ]
        );
    }
}
