//! Field ownership (managedFields in FieldsV1 form), server-side apply and update tracking.

use crate::api::{list_type, map_is_atomic, ListType, ResourceType};
use crate::util::{now_rfc3339, ApiError};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// A path of FieldsV1 elements: `f:name`, `k:{"name":"x"}`, `v:"x"`.
pub type FPath = Vec<String>;
/// The fields one manager owns: leaf paths and list-item paths (the `.` marker).
pub type FieldSet = BTreeSet<FPath>;

#[derive(Debug, Clone, PartialEq)]
pub struct ManagedEntry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: String,
    pub fields: FieldSet,
}

/// Top-level metadata fields the server owns; never part of a field set.
const SYSTEM_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "generateName",
];

/// The field set of an object as a manager would own it.
pub fn fieldset_of(t: &ResourceType, obj: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(m) = obj.as_object() else { return out };
    for (k, v) in m {
        if k == "apiVersion" || k == "kind" || v.is_null() {
            continue;
        }
        if k == "metadata" {
            if let Some(md) = v.as_object() {
                for (mk, mv) in md {
                    if SYSTEM_META.contains(&mk.as_str()) || mv.is_null() {
                        continue;
                    }
                    let mut p = vec!["f:metadata".to_string(), format!("f:{mk}")];
                    let mut names = vec!["metadata".to_string(), mk.clone()];
                    walk(t, &mut names, &mut p, mv, &mut out);
                }
            }
            continue;
        }
        let mut p = vec![format!("f:{k}")];
        let mut names = vec![k.clone()];
        walk(t, &mut names, &mut p, v, &mut out);
    }
    out
}

fn name_refs(names: &[String]) -> Vec<&str> {
    names.iter().map(String::as_str).collect()
}

fn walk(t: &ResourceType, names: &mut Vec<String>, p: &mut FPath, v: &Value, out: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() && !map_is_atomic(t, &name_refs(names)) => {
            for (k, cv) in m {
                if cv.is_null() {
                    continue;
                }
                p.push(format!("f:{k}"));
                names.push(k.clone());
                walk(t, names, p, cv, out);
                names.pop();
                p.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => match list_type(t, &name_refs(names)) {
            ListType::Atomic => {
                out.insert(p.clone());
            }
            ListType::Set => {
                for i in items {
                    p.push(format!("v:{}", i));
                    out.insert(p.clone());
                    p.pop();
                }
            }
            ListType::Map(keys) => {
                for i in items {
                    let Some(k) = item_key(t, names, i, &keys) else {
                        // An item without its key cannot be tracked: own the list atomically.
                        out.insert(p.clone());
                        continue;
                    };
                    p.push(k);
                    out.insert(p.clone());
                    walk(t, names, p, i, out);
                    p.pop();
                }
            }
        },
        _ => {
            out.insert(p.clone());
        }
    }
}

/// `k:{...}` for an associative-list item; a missing `protocol` key defaults to TCP as the server would.
pub fn item_key(
    t: &ResourceType,
    _names: &[String],
    item: &Value,
    keys: &[String],
) -> Option<String> {
    let mut km = Map::new();
    for k in keys {
        match item.get(k) {
            Some(v) if !v.is_null() => {
                km.insert(k.clone(), v.clone());
            }
            _ if k == "protocol" && !t.custom => {
                km.insert(k.clone(), json!("TCP"));
            }
            _ => {
                if keys.len() == 1 {
                    return None;
                }
            }
        }
    }
    if km.is_empty() {
        return None;
    }
    Some(format!("k:{}", Value::Object(km)))
}

fn matches_key(t: &ResourceType, item: &Value, key: &Map<String, Value>) -> bool {
    key.iter().all(|(k, want)| match item.get(k) {
        Some(v) if !v.is_null() => v == want,
        _ => k == "protocol" && !t.custom && want == "TCP",
    })
}

/// The value at a field path, if present.
pub fn value_at<'a>(t: &ResourceType, obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for el in path {
        cur = step(t, cur, el)?;
    }
    Some(cur)
}

fn step<'a>(t: &ResourceType, cur: &'a Value, el: &str) -> Option<&'a Value> {
    if let Some(f) = el.strip_prefix("f:") {
        cur.as_object()?.get(f)
    } else if let Some(k) = el.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(k).ok()?;
        cur.as_array()?.iter().find(|i| matches_key(t, i, &key))
    } else if let Some(v) = el.strip_prefix("v:") {
        let want: Value = serde_json::from_str(v).ok()?;
        cur.as_array()?.iter().find(|i| **i == want)
    } else if let Some(i) = el.strip_prefix("i:") {
        cur.as_array()?.get(i.parse::<usize>().ok()?)
    } else {
        None
    }
}

/// Remove the value at a path; prune maps left empty by it (below the top level).
fn remove_at(t: &ResourceType, obj: &mut Value, path: &[String]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut cur = &mut *obj;
    for el in parent {
        let next = if let Some(f) = el.strip_prefix("f:") {
            cur.as_object_mut().and_then(|m| m.get_mut(f))
        } else if let Some(k) = el.strip_prefix("k:") {
            let Ok(key) = serde_json::from_str::<Map<String, Value>>(k) else {
                return;
            };
            cur.as_array_mut()
                .and_then(|a| a.iter_mut().find(|i| matches_key(t, i, &key)))
        } else if let Some(v) = el.strip_prefix("v:") {
            let Ok(want) = serde_json::from_str::<Value>(v) else {
                return;
            };
            cur.as_array_mut()
                .and_then(|a| a.iter_mut().find(|i| **i == want))
        } else {
            None
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else if let Some(k) = last.strip_prefix("k:") {
        if let (Ok(key), Some(a)) = (
            serde_json::from_str::<Map<String, Value>>(k),
            cur.as_array_mut(),
        ) {
            a.retain(|i| !matches_key(t, i, &key));
        }
    } else if let Some(v) = last.strip_prefix("v:") {
        if let (Ok(want), Some(a)) = (serde_json::from_str::<Value>(v), cur.as_array_mut()) {
            a.retain(|i| *i != want);
        }
    }
    // Prune now-empty containers upwards (maps and lists), but keep top-level fields.
    if path.len() > 2 {
        let parent_path = &path[..path.len() - 1];
        let empty = match value_at(t, obj, parent_path) {
            Some(Value::Object(m)) => m.is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            _ => false,
        };
        if empty && parent_path.last().is_some_and(|l| l.starts_with("f:")) {
            remove_at(t, obj, parent_path);
        }
    }
}

/// Merge an applied configuration into the live object.
fn merge_applied(t: &ResourceType, names: &mut Vec<String>, live: &mut Value, applied: &Value) {
    match applied {
        Value::Object(a) if !map_is_atomic(t, &name_refs(names)) => {
            if !live.is_object() {
                *live = Value::Object(Map::new());
            }
            let l = live.as_object_mut().expect("object ensured above");
            for (k, v) in a {
                if v.is_null() {
                    continue;
                }
                names.push(k.clone());
                merge_applied(t, names, l.entry(k.clone()).or_insert(Value::Null), v);
                names.pop();
            }
        }
        Value::Array(items) => match list_type(t, &name_refs(names)) {
            ListType::Map(keys) if live.is_array() => {
                let la = live.as_array_mut().expect("array checked above");
                for i in items {
                    let key = item_key(t, names, i, &keys)
                        .and_then(|k| serde_json::from_str::<Map<String, Value>>(&k[2..]).ok());
                    match key.and_then(|k| la.iter_mut().find(|x| matches_key(t, x, &k))) {
                        Some(existing) => merge_applied(t, names, existing, i),
                        None => la.push(i.clone()),
                    }
                }
            }
            ListType::Set if live.is_array() => {
                let la = live.as_array_mut().expect("array checked above");
                for i in items {
                    if !la.contains(i) {
                        la.push(i.clone());
                    }
                }
            }
            _ => *live = applied.clone(),
        },
        _ => *live = applied.clone(),
    }
}

pub fn parse_managed(obj: &Value) -> Vec<ManagedEntry> {
    let Some(arr) = obj
        .get("metadata")
        .and_then(|m| m.get("managedFields"))
        .and_then(Value::as_array)
    else {
        return vec![];
    };
    arr.iter()
        .map(|e| {
            let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            let mut fields = FieldSet::new();
            if let Some(f) = e.get("fieldsV1") {
                let mut p = Vec::new();
                from_fields_v1(f, &mut p, &mut fields);
            }
            ManagedEntry {
                manager: s("manager"),
                operation: s("operation"),
                api_version: s("apiVersion"),
                time: s("time"),
                subresource: s("subresource"),
                fields,
            }
        })
        .collect()
}

fn from_fields_v1(v: &Value, p: &mut FPath, out: &mut FieldSet) {
    let Some(m) = v.as_object() else { return };
    if m.is_empty() {
        if !p.is_empty() {
            out.insert(p.clone());
        }
        return;
    }
    for (k, cv) in m {
        if k == "." {
            out.insert(p.clone());
            continue;
        }
        p.push(k.clone());
        from_fields_v1(cv, p, out);
        p.pop();
    }
}

pub fn to_fields_v1(fs: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in fs {
        let mut cur = &mut root;
        for (i, el) in path.iter().enumerate() {
            let node = cur
                .entry(el.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            let nm = node.as_object_mut().expect("nodes are objects");
            if i == path.len() - 1 && el.starts_with("k:") {
                nm.insert(".".into(), Value::Object(Map::new()));
            }
            cur = nm;
        }
    }
    Value::Object(root)
}

pub fn render_managed(entries: &[ManagedEntry]) -> Value {
    Value::Array(
        entries
            .iter()
            .map(|e| {
                let mut v = json!({
                    "manager": e.manager,
                    "operation": e.operation,
                    "apiVersion": e.api_version,
                    "time": e.time,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": to_fields_v1(&e.fields),
                });
                if !e.subresource.is_empty() {
                    v["subresource"] = json!(e.subresource);
                }
                v
            })
            .collect(),
    )
}

/// `.spec.template.spec.containers[name="web"].image`, as kube-apiserver prints paths.
pub fn display_path(p: &FPath) -> String {
    let mut s = String::new();
    for el in p {
        if let Some(f) = el.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = el.strip_prefix("k:") {
            let parts: Vec<String> = serde_json::from_str::<Map<String, Value>>(k)
                .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
                .unwrap_or_default();
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = el.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        }
    }
    s
}

fn strip_for_compare(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(md) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        md.remove("managedFields");
    }
    o
}

fn same_ownership(a: &[ManagedEntry], b: &[ManagedEntry]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.manager == y.manager
                && x.operation == y.operation
                && x.subresource == y.subresource
                && x.fields == y.fields
        })
}

/// The outcome of an apply: the merged object (managedFields set), or "nothing changed".
pub enum ApplyResult {
    Changed(Value),
    NoOp,
}

pub struct ApplyArgs<'a> {
    pub t: &'a ResourceType,
    pub live: &'a Value,
    pub applied: &'a Value,
    pub manager: &'a str,
    pub force: bool,
    pub api_version: &'a str,
    pub subresource: &'a str,
}

/// Server-side apply onto `live` (an empty object for creates). Defaulting is the caller's job, afterwards.
pub fn apply(
    a: ApplyArgs<'_>,
    mut default: impl FnMut(&mut Value),
) -> Result<ApplyResult, ApiError> {
    let t = a.t;
    let mut entries = parse_managed(a.live);
    let applied_set = fieldset_of(t, a.applied);

    // Conflicts: fields another manager owns whose applied value differs from the live one.
    let mut conflicts: Vec<(usize, FPath)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if e.manager == a.manager {
            continue;
        }
        for p in e.fields.intersection(&applied_set) {
            if p.last().is_some_and(|l| l.starts_with("k:")) {
                continue;
            }
            if value_at(t, a.live, p) != value_at(t, a.applied, p) {
                conflicts.push((i, p.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !a.force {
        return Err(conflict_error(&entries, &conflicts, t));
    }
    for (i, p) in &conflicts {
        entries[*i].fields.remove(p);
    }
    // Same-named Update entries hand their overlapping fields to the apply entry.
    for e in entries.iter_mut() {
        if e.manager == a.manager && e.operation != "Apply" {
            e.fields.retain(|p| !applied_set.contains(p));
        }
    }

    let previous: FieldSet = entries
        .iter()
        .find(|e| {
            e.manager == a.manager && e.operation == "Apply" && e.subresource == a.subresource
        })
        .map(|e| e.fields.clone())
        .unwrap_or_default();

    let mut merged = a.live.clone();
    // Fields this manager stopped applying go away unless someone else owns them.
    let mut dropped: Vec<&FPath> = previous
        .iter()
        .filter(|p| !applied_set.contains(*p))
        .filter(|p| {
            !entries.iter().any(|e| {
                !(e.manager == a.manager && e.operation == "Apply") && e.fields.contains(*p)
            })
        })
        .collect();
    // Deepest first, so pruning of emptied parents sees final state.
    dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in dropped {
        remove_at(t, &mut merged, p);
    }
    let mut names = Vec::new();
    let mut body = a.applied.clone();
    if let Some(m) = body.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
        if let Some(md) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in SYSTEM_META {
                md.remove(*k);
            }
        }
    }
    merge_applied(t, &mut names, &mut merged, &body);
    default(&mut merged);

    // Build the new ownership list.
    let now = now_rfc3339();
    let mut new_entries: Vec<ManagedEntry> = Vec::new();
    let mut placed = false;
    for e in &entries {
        if e.manager == a.manager && e.operation == "Apply" && e.subresource == a.subresource {
            let mut n = e.clone();
            n.fields = applied_set.clone();
            n.api_version = a.api_version.to_string();
            new_entries.push(n);
            placed = true;
        } else {
            let mut n = e.clone();
            n.fields.retain(|p| value_at(t, &merged, p).is_some());
            if !n.fields.is_empty() {
                new_entries.push(n);
            }
        }
    }
    if !placed && !applied_set.is_empty() {
        new_entries.push(ManagedEntry {
            manager: a.manager.to_string(),
            operation: "Apply".into(),
            api_version: a.api_version.to_string(),
            time: now.clone(),
            subresource: a.subresource.to_string(),
            fields: applied_set,
        });
    }
    let old_entries = parse_managed(a.live);
    // A live object without a uid is the skeleton of a create: never a no-op.
    let exists = a.live.get("metadata").and_then(|m| m.get("uid")).is_some();
    if exists
        && strip_for_compare(&merged) == strip_for_compare(a.live)
        && same_ownership(&old_entries, &new_entries)
    {
        return Ok(ApplyResult::NoOp);
    }
    // Entries whose fields changed get a new timestamp.
    for n in new_entries.iter_mut() {
        let old = old_entries.iter().find(|o| {
            o.manager == n.manager && o.operation == n.operation && o.subresource == n.subresource
        });
        if old.is_none_or(|o| o.fields != n.fields) || n.manager == a.manager {
            n.time = now.clone();
        }
    }
    if new_entries.is_empty() {
        crate::util::meta_mut(&mut merged).remove("managedFields");
    } else {
        crate::util::meta_mut(&mut merged)
            .insert("managedFields".into(), render_managed(&new_entries));
    }
    Ok(ApplyResult::Changed(merged))
}

fn conflict_error(
    entries: &[ManagedEntry],
    conflicts: &[(usize, FPath)],
    t: &ResourceType,
) -> ApiError {
    // Worded as kube-apiserver's getConflictMessage: one conflict inline, else grouped by sorted manager.
    let who = |e: &ManagedEntry| {
        if e.subresource.is_empty() {
            format!("\"{}\" using {}", e.manager, e.api_version)
        } else {
            format!(
                "\"{}\" with subresource \"{}\" using {}",
                e.manager, e.subresource, e.api_version
            )
        }
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(i, p)| {
            json!({
                "reason": "FieldManagerConflict",
                "type": "FieldManagerConflict",
                "message": format!("conflict with {}", who(&entries[*i])),
                "field": display_path(p),
            })
        })
        .collect();
    let msg = if conflicts.len() == 1 {
        let (i, p) = &conflicts[0];
        format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            who(&entries[*i]),
            display_path(p)
        )
    } else {
        let mut by_mgr: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (i, p) in conflicts {
            by_mgr
                .entry(who(&entries[*i]))
                .or_default()
                .push(display_path(p));
        }
        let mut lines = Vec::new();
        for (m, paths) in by_mgr {
            lines.push(format!("conflicts with {m}:"));
            lines.extend(paths.into_iter().map(|p| format!("- {p}")));
        }
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    };
    ApiError::new(409, "Conflict", msg).with_details(json!({
        "group": t.group,
        "kind": t.plural,
        "causes": causes,
    }))
}

/// Record ownership for a non-apply write (create, update, patch): changed fields go to `manager`.
pub fn track_update(
    t: &ResourceType,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    subresource: &str,
) {
    let empty = Value::Object(Map::new());
    let oldv = old.unwrap_or(&empty);
    let mut entries = parse_managed(oldv);
    let new_set = fieldset_of(t, new);
    let changed: FieldSet = new_set
        .iter()
        .filter(|p| {
            if p.last()
                .is_some_and(|l| l.starts_with("k:") || l.starts_with("v:"))
            {
                value_at(t, oldv, p).is_none()
            } else {
                value_at(t, oldv, p) != value_at(t, new, p)
            }
        })
        .cloned()
        .collect();
    for e in entries.iter_mut() {
        e.fields
            .retain(|p| !changed.contains(p) && new_set.contains(p));
    }
    entries.retain(|e| !e.fields.is_empty());
    if !changed.is_empty() {
        let now = now_rfc3339();
        match entries.iter_mut().find(|e| {
            e.manager == manager && e.operation == "Update" && e.subresource == subresource
        }) {
            Some(e) => {
                e.fields.extend(changed);
                e.time = now;
                e.api_version = api_version.to_string();
            }
            None => entries.push(ManagedEntry {
                manager: manager.to_string(),
                operation: "Update".into(),
                api_version: api_version.to_string(),
                time: now,
                subresource: subresource.to_string(),
                fields: changed,
            }),
        }
    }
    let md = crate::util::meta_mut(new);
    if entries.is_empty() {
        md.remove("managedFields");
    } else {
        md.insert("managedFields".into(), render_managed(&entries));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::builtin_types;

    fn deploy() -> ResourceType {
        builtin_types()
            .into_iter()
            .find(|t| t.kind == "Deployment")
            .unwrap()
    }

    fn cfg(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
              "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": image}]}}}})
    }

    fn do_apply(
        live: &Value,
        applied: &Value,
        mgr: &str,
        force: bool,
    ) -> Result<ApplyResult, ApiError> {
        let t = deploy();
        apply(
            ApplyArgs {
                t: &t,
                live,
                applied,
                manager: mgr,
                force,
                api_version: "apps/v1",
                subresource: "",
            },
            |_| {},
        )
    }

    #[test]
    fn fields_v1_round_trip() {
        let t = deploy();
        let fs = fieldset_of(&t, &cfg(1, "nginx"));
        let v = to_fields_v1(&fs);
        assert!(
            v["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"]["."]
                .is_object()
        );
        assert!(
            v["f:spec"]["f:selector"].as_object().unwrap().is_empty(),
            "selector is atomic"
        );
        let mut back = FieldSet::new();
        from_fields_v1(&v, &mut vec![], &mut back);
        assert_eq!(back, fs);
    }

    #[test]
    fn apply_conflict_and_force() {
        let live = match do_apply(&json!({}), &cfg(1, "nginx"), "phoenix", false).unwrap() {
            ApplyResult::Changed(v) => v,
            ApplyResult::NoOp => panic!("create is not a no-op"),
        };
        let t = deploy();
        let mut edited = live.clone();
        edited["spec"]["replicas"] = json!(3);
        track_update(&t, Some(&live), &mut edited, "kubectl-edit", "apps/v1", "");
        let err = match do_apply(&edited, &cfg(1, "nginx"), "phoenix", false) {
            Err(e) => e,
            Ok(_) => panic!("expected conflict"),
        };
        assert_eq!(err.code, 409);
        assert_eq!(
            err.message,
            "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using apps/v1: .spec.replicas"
        );
        // Same value: shared ownership, no conflict, and nothing changes.
        assert!(matches!(
            do_apply(&edited, &cfg(3, "nginx"), "phoenix", false),
            Ok(ApplyResult::Changed(_))
        ));
        let forced = match do_apply(&edited, &cfg(1, "nginx"), "phoenix", true).unwrap() {
            ApplyResult::Changed(v) => v,
            ApplyResult::NoOp => panic!("force changes replicas"),
        };
        assert_eq!(forced["spec"]["replicas"], 1);
        let entries = parse_managed(&forced);
        assert!(entries.iter().all(|e| e.manager != "kubectl-edit"));
    }

    #[test]
    fn apply_removes_dropped_fields_and_noop() {
        let live = match do_apply(&json!({}), &cfg(1, "nginx"), "phoenix", false).unwrap() {
            ApplyResult::Changed(v) => v,
            ApplyResult::NoOp => panic!(),
        };
        let mut live = live;
        live["metadata"]["uid"] = json!("stored");
        assert!(matches!(
            do_apply(&live, &cfg(1, "nginx"), "phoenix", false).unwrap(),
            ApplyResult::NoOp
        ));
        let mut smaller = cfg(1, "nginx");
        smaller["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("labels");
        let after = match do_apply(&live, &smaller, "phoenix", false).unwrap() {
            ApplyResult::Changed(v) => v,
            ApplyResult::NoOp => panic!(),
        };
        assert!(after["metadata"].get("labels").is_none(), "{after}");
    }
}
