//! Drift of one component, as `kubectl diff --server-side` sees it: each desired object is applied
//! as a dry run and the result compared with the live object, so server defaults and fields other
//! managers own are not drift; plus inventory objects that left Git but still exist.

use std::collections::HashSet;

use serde::Serialize;
use serde_json::Value;

use super::component::{
    bounded, first_error, list_live, live_key, plan_objects, target_for, ComponentSpec, Kind,
};
use super::component::{health_in, removes_itself};
use super::discovery::Resolver;
use super::error::KubeError;
use super::health::{needs_no_wait, Health};
use super::inventory;
use super::object::{Marks, ObjectRef, ANNOTATION_COMMIT};
use super::ops;
use super::seals::{body_hash, SealStore};

/// The drift of one component.
#[derive(Clone, Debug, Serialize)]
pub struct ComponentDiff {
    pub env: String,
    pub layer: crate::engine::Layer,
    pub component: String,
    /// One entry per object in Git, in apply order.
    pub objects: Vec<ObjectDiff>,
    /// Objects in the component's inventory, no longer in Git, that still exist with its marks.
    pub extra: Vec<ObjectRef>,
    /// The live objects of `extra`, in the same order (normalized, Secret values redacted).
    #[serde(skip)]
    pub extra_live: Vec<Value>,
    /// Live objects of the component that are not healthy (reported apart from drift).
    pub unhealthy: Vec<Unhealthy>,
    /// Fields of the component's objects that another field manager added and Git does not set
    /// (a sidecar added with `kubectl edit`): a server-side diff cannot see them as drift, since
    /// applying Git would leave them; reported apart, not counted as drift.
    pub additions: Vec<Addition>,
    /// How many objects went through a server-side dry run (the others were missing, not
    /// phoenix's, or sealed in sync).
    #[serde(skip)]
    pub dry_runs: usize,
}

impl ComponentDiff {
    /// Whether anything differs from Git (unhealthy objects alone are not drift).
    pub fn has_drift(&self) -> bool {
        !self.extra.is_empty() || self.objects.iter().any(|o| o.state != DriftState::InSync)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ObjectDiff {
    pub object: ObjectRef,
    /// The manifest file and line the object comes from.
    pub source: String,
    pub line: usize,
    pub state: DriftState,
    /// Fields not compared: their value in Git is made from a secret that is not available where
    /// the diff runs (`**unknown**(NAME)`), so neither "in sync" nor "changed" would be honest.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unknown: Vec<String>,
    /// What applying Git would make of the object (the dry-run result when it exists, else the
    /// manifest), normalized like the comparison; Secret values redacted. For showing a diff.
    #[serde(skip)]
    pub desired: Value,
    /// The live object, normalized the same way; `None` when missing.
    #[serde(skip)]
    pub live: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", tag = "state", content = "fields")]
pub enum DriftState {
    InSync,
    /// In Git, not in the cluster.
    Missing,
    /// Fields whose live value differs from what applying Git would set.
    Changed(Vec<ObjectFieldDiff>),
    /// An object of that name exists but is not this component's (what its labels say).
    NotOwned(String),
    /// Git changes a field fixed at creation (the server's refusal of the dry run says which): a
    /// rebuild deletes the object and creates it again.
    NeedsRecreate(String),
}

/// One differing field. For Secrets, values under `data`/`stringData` are replaced by
/// [`crate::render::REDACTED`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ObjectFieldDiff {
    /// e.g. `.spec.replicas`, `.metadata.labels["app.kubernetes.io/name"]`, `.spec.ports[0].port`.
    pub path: String,
    /// `None`: applying Git would remove the field.
    pub desired: Option<Value>,
    /// `None`: the live object lacks the field.
    pub live: Option<Value>,
}

/// The component's `leaveFields` entries about `body`: fields another manager owns by design.
fn left_to_others<'a>(
    spec: &'a ComponentSpec,
    body: &Value,
) -> Vec<&'a crate::env::model::LeftFields> {
    spec.leave_fields
        .iter()
        .filter(|l| l.matches(body))
        .collect()
}

/// Fields one other field manager added to an object.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Addition {
    pub object: ObjectRef,
    pub manager: String,
    /// The outermost paths it added, e.g. `.spec.template.spec.containers[name=sidecar]`.
    pub paths: Vec<String>,
}

/// Field managers of the cluster itself (controllers, scheduler, kubelet, the API server, k3s):
/// what they write is the system at work, not an addition.
const SYSTEM_MANAGERS: [&str; 6] = [
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-apiserver",
    "k3s",
    "before-first-apply",
];

/// What field managers other than phoenix and the cluster's own added to `live` outside what
/// phoenix applies: for each, the outermost paths it owns that phoenix does not. Writes through a
/// subresource (status, scale) are the job of their controllers and are left out.
pub fn additions(live: &Value) -> Vec<(String, Vec<String>)> {
    let Some(entries) = live["metadata"]["managedFields"].as_array() else {
        return Vec::new();
    };
    let empty = Value::Object(Default::default());
    let ours = entries
        .iter()
        .find(|e| e["manager"] == ops::FIELD_MANAGER && e["operation"] == "Apply")
        .map_or(&empty, |e| &e["fieldsV1"]);
    let mut out = Vec::new();
    for e in entries {
        let manager = e["manager"].as_str().unwrap_or_default();
        let subresource = e["subresource"].as_str().unwrap_or_default();
        if manager == ops::FIELD_MANAGER
            || !subresource.is_empty()
            || SYSTEM_MANAGERS.contains(&manager)
        {
            continue;
        }
        let mut paths = Vec::new();
        not_in("", &e["fieldsV1"], ours, &mut paths);
        if !paths.is_empty() {
            out.push((manager.to_string(), paths));
        }
    }
    out
}

/// Collects the outermost paths of the fieldsV1 tree `theirs` that are not in `ours`.
fn not_in(path: &str, theirs: &Value, ours: &Value, out: &mut Vec<String>) {
    let Some(map) = theirs.as_object() else {
        return;
    };
    for (key, sub) in map {
        if key == "." {
            continue;
        }
        let here = format!("{path}{}", field_path_segment(key));
        match ours.get(key) {
            Some(mine) => not_in(&here, sub, mine, out),
            None => out.push(here),
        }
    }
}

/// One fieldsV1 key as a path segment: `f:spec` → `.spec`, `k:{"name":"c"}` → `[name=c]`,
/// `v:"x"` → `["x"]`, `i:0` → `[0]`.
fn field_path_segment(key: &str) -> String {
    if let Some(field) = key.strip_prefix("f:") {
        return push_key("", field);
    }
    if let Some(keys) = key.strip_prefix("k:") {
        if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(keys) {
            let parts: Vec<String> = m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect();
            return format!("[{}]", parts.join(","));
        }
    }
    if let Some(value) = key.strip_prefix("v:") {
        return format!("[{value}]");
    }
    if let Some(index) = key.strip_prefix("i:") {
        return format!("[{index}]");
    }
    format!("[{key}]")
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Unhealthy {
    pub object: ObjectRef,
    pub reason: String,
    /// Failed (will not recover by itself) rather than still progressing.
    pub failed: bool,
}

/// Fields the server owns; never drift.
const IGNORED_METADATA: [&str; 6] = [
    "managedFields",
    "resourceVersion",
    "generation",
    "uid",
    "creationTimestamp",
    "selfLink",
];

fn normalize(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(root) = v.as_object_mut() {
        root.remove("status");
        if let Some(meta) = root.get_mut("metadata").and_then(Value::as_object_mut) {
            for f in IGNORED_METADATA {
                meta.remove(f);
            }
            let empty = match meta.get_mut("annotations").and_then(Value::as_object_mut) {
                Some(a) => {
                    a.remove(ANNOTATION_COMMIT);
                    a.is_empty()
                }
                None => false,
            };
            if empty {
                meta.remove("annotations");
            }
        }
    }
    v
}

fn push_key(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        format!("{path}.{key}")
    } else {
        format!("{path}[{}]", Value::String(key.to_string()))
    }
}

fn walk(path: &str, desired: Option<&Value>, live: Option<&Value>, out: &mut Vec<ObjectFieldDiff>) {
    match (desired, live) {
        (Some(Value::Object(d)), Some(Value::Object(l))) => {
            let mut keys: Vec<&String> = d.keys().chain(l.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                walk(&push_key(path, k), d.get(k), l.get(k), out);
            }
        }
        (Some(Value::Array(d)), Some(Value::Array(l))) if d.len() == l.len() => {
            for (i, (a, b)) in d.iter().zip(l).enumerate() {
                walk(&format!("{path}[{i}]"), Some(a), Some(b), out);
            }
        }
        (d, l) if d != l => out.push(ObjectFieldDiff {
            path: if path.is_empty() {
                ".".into()
            } else {
                path.into()
            },
            desired: d.cloned(),
            live: l.cloned(),
        }),
        _ => {}
    }
}

/// The fields in which `live` differs from `desired` (both as the server returns them: `desired`
/// is the dry-run result of applying Git), ignoring server-owned metadata, status and the commit
/// annotation. Sorted by path.
pub fn changed_fields(desired: &Value, live: &Value) -> Vec<ObjectFieldDiff> {
    let mut out = Vec::new();
    walk(
        "",
        Some(&normalize(desired)),
        Some(&normalize(live)),
        &mut out,
    );
    out
}

/// An object as a diff shows it: without what is never drift, Secret values hidden.
fn for_display(obj: &Value, secret: bool) -> Value {
    let mut v = normalize(obj);
    if secret {
        hide_secret_values(&mut v);
    }
    v
}

/// Annotations that copy a whole object, values included: a client-side `kubectl apply` writes
/// the Secret it applied into the first.
const COPYING_ANNOTATIONS: [&str; 1] = ["kubectl.kubernetes.io/last-applied-configuration"];

/// Replaces every value under a Secret's `data` and `stringData`, and the annotations that copy
/// them, with the redaction marker.
pub fn hide_secret_values(secret: &mut Value) {
    for field in ["data", "stringData"] {
        if let Some(map) = secret.get_mut(field).and_then(Value::as_object_mut) {
            for value in map.values_mut() {
                *value = Value::String(crate::render::REDACTED.into());
            }
        }
    }
    if let Some(annotations) = secret
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        for key in COPYING_ANNOTATIONS {
            if let Some(value) = annotations.get_mut(key) {
                *value = Value::String(crate::render::REDACTED.into());
            }
        }
    }
}

/// Whether `value` holds a value made from a secret not available here: a string with the
/// `**unknown**` marker, plainly or base64-encoded (a Secret's `data`).
fn holds_unknown(value: &Value) -> bool {
    use base64::Engine as _;
    match value {
        Value::String(s) => {
            crate::render::has_unknown(s)
                || base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .is_ok_and(|bytes| crate::render::has_unknown(&String::from_utf8_lossy(&bytes)))
        }
        Value::Array(items) => items.iter().any(holds_unknown),
        Value::Object(map) => map.values().any(holds_unknown),
        _ => false,
    }
}

fn redact(mut fields: Vec<ObjectFieldDiff>) -> Vec<ObjectFieldDiff> {
    for f in &mut fields {
        let copying = COPYING_ANNOTATIONS.iter().any(|a| {
            f.path
                .starts_with(&format!(".metadata.annotations[{}]", Value::from(*a)))
        });
        if f.path.starts_with(".data") || f.path.starts_with(".stringData") || copying {
            let hide = |v: &mut Option<Value>| {
                if v.is_some() {
                    *v = Some(Value::String(crate::render::REDACTED.into()));
                }
            };
            hide(&mut f.desired);
            hide(&mut f.live);
        }
    }
    fields
}

/// [`diff_component_with`] with its own discovery, 32 requests in flight and no seals.
pub async fn diff_component(
    client: &::kube::Client,
    spec: &ComponentSpec,
) -> Result<ComponentDiff, KubeError> {
    diff_component_with(client, spec, &Resolver::new(), 32, &SealStore::none()).await
}

/// The drift of one component. Reads only from the cluster (dry-run applies store nothing);
/// conflicts with other managers are forced in the dry run, so a field someone else took over
/// shows as changed. An object sealed in sync at its current resourceVersion for the same
/// desired body (see `seals`) is in sync without a dry run; the seals are updated with what
/// this diff proved.
pub async fn diff_component_with(
    client: &::kube::Client,
    spec: &ComponentSpec,
    resolver: &Resolver,
    concurrency: usize,
    seal_store: &SealStore,
) -> Result<ComponentDiff, KubeError> {
    let marks = spec.marks();
    let seals = seal_store.load(&marks);
    let (_, objects, kinds) = plan_objects(client, resolver, spec, true).await?;
    let inventory = inventory::read(client, &marks).await?;
    let finished: HashSet<_> = inventory
        .iter()
        .flat_map(|inv| inv.finished.iter().map(ObjectRef::key))
        .collect();
    let finished = &finished;
    // The component's objects by one list per kind and namespace; an object the lists do not
    // return is read on its own (missing, or not phoenix's).
    let prefetched = list_live(
        client,
        &kinds,
        objects.iter().map(|d| &d.id),
        &marks.selector(),
        concurrency,
    )
    .await?;
    let prefetched = &prefetched;
    let seals_ref = &seals;
    let dry_runs = std::sync::atomic::AtomicUsize::new(0);
    let dry_runs_ref = &dry_runs;
    let results = bounded((0..objects.len()).collect(), concurrency, |i| {
        let d = &objects[i];
        let kind = kinds.get(&(d.id.api_version.clone(), d.id.kind.clone()));
        let marks = &marks;
        let seals = seals_ref;
        async move {
            let secret = d.id.is_secret();
            let unknown_body = holds_unknown(&d.body);
            let Some(Kind::Served(target)) = kind else {
                return Ok((
                    DriftState::Missing,
                    None,
                    for_display(&d.body, secret),
                    Vec::new(),
                ));
            };
            let live = match prefetched.get(&live_key(&d.id)) {
                Some(live) => Some(live.clone()),
                None => ops::get(client, target, &d.id).await?,
            };
            let Some(live) = live else {
                // Deleted by its TTL after a run saw it through: done, as Git wants.
                let state = if removes_itself(d) && finished.contains(&d.id.key()) {
                    DriftState::InSync
                } else {
                    DriftState::Missing
                };
                return Ok((state, None, for_display(&d.body, secret), Vec::new()));
            };
            if !marks.owns(&live) {
                let found = Marks::describe_found(&live);
                return Ok((
                    DriftState::NotOwned(found),
                    Some(live),
                    for_display(&d.body, secret),
                    Vec::new(),
                ));
            }
            // A body with unknown values is never sealed: it is not what Git renders.
            let hash = body_hash(&d.id, &d.body).filter(|_| !unknown_body);
            if hash.as_ref().is_some_and(|h| seals.holds(&live, h)) {
                let shown = for_display(&live, secret);
                return Ok((DriftState::InSync, Some(live), shown, Vec::new()));
            }
            // The dry run answers about the object as stored when it runs, which may be newer than
            // the list (a controller's revision annotation, an autoscaler's count written in
            // between): compared with the older object, that write would read as drift. The dry
            // run keeps the stored resourceVersion, so a mismatch shows it; read the object again
            // and, if it moved once more, dry-run again (a few times at most).
            let mut live = live;
            let mut rounds = 0;
            let dry = loop {
                dry_runs_ref.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let dry = match ops::apply(client, target, &d.id, &d.body, true, true).await {
                    Err(KubeError::Immutable { detail, .. }) => {
                        seals.unseal(&live);
                        return Ok((
                            DriftState::NeedsRecreate(detail),
                            Some(live),
                            for_display(&d.body, secret),
                            Vec::new(),
                        ));
                    }
                    other => other?,
                };
                if ops::resource_version(&dry) == ops::resource_version(&live) {
                    break dry;
                }
                match ops::get(client, target, &d.id).await? {
                    Some(now) if ops::resource_version(&now) == ops::resource_version(&dry) => {
                        live = now;
                        break dry;
                    }
                    Some(now) if rounds < 3 => {
                        live = now;
                        rounds += 1;
                    }
                    // Deleted meanwhile, or still moving: compare what there is.
                    Some(now) => {
                        live = now;
                        break dry;
                    }
                    None => break dry,
                }
            };
            let left = left_to_others(spec, &d.body);
            let (unknown, mut fields): (Vec<ObjectFieldDiff>, Vec<ObjectFieldDiff>) =
                changed_fields(&dry, &live)
                    .into_iter()
                    // Fields left to another manager are theirs: never drift.
                    .filter(|f| !left.iter().any(|l| l.covers(&f.path)))
                    .partition(|f| unknown_body && f.desired.as_ref().is_some_and(holds_unknown));
            let unknown: Vec<String> = unknown.into_iter().map(|f| f.path).collect();
            if secret {
                fields = redact(fields);
            }
            let state = if fields.is_empty() {
                if let Some(hash) = &hash {
                    seals.seal(&live, hash);
                }
                DriftState::InSync
            } else {
                seals.unseal(&live);
                DriftState::Changed(fields)
            };
            Ok::<_, KubeError>((state, Some(live), for_display(&dry, secret), unknown))
        }
    })
    .await;
    let results = first_error(results)?;
    let current: HashSet<String> = results
        .iter()
        .filter_map(|(_, live, _, _)| live.as_ref().and_then(ops::uid))
        .collect();
    seals.retain(&current);
    // A cache: when it cannot be written, the next diff sends the dry runs again.
    let _ = seal_store.save(&marks, seals);
    let mut diffs = Vec::with_capacity(objects.len());
    let mut unhealthy = Vec::new();
    let mut added = Vec::new();
    for (d, (state, live, desired, unknown)) in objects.iter().zip(results) {
        if let Some(live) = live
            .as_ref()
            .filter(|_| !matches!(state, DriftState::NotOwned(_)))
        {
            let left = left_to_others(spec, &d.body);
            for (manager, paths) in additions(live) {
                // Fields the env leaves to another manager are expected to be theirs.
                let paths: Vec<String> = paths
                    .into_iter()
                    .filter(|p| !left.iter().any(|l| l.covers(p)))
                    .collect();
                if !paths.is_empty() {
                    added.push(Addition {
                        object: d.id.clone(),
                        manager,
                        paths,
                    });
                }
            }
        }
        if let Some(live) = &live {
            if !needs_no_wait(&d.id.api_version, &d.id.kind) {
                match health_in(client, live).await {
                    Health::Healthy => {}
                    Health::Progressing(reason) => unhealthy.push(Unhealthy {
                        object: d.id.clone(),
                        reason,
                        failed: false,
                    }),
                    Health::Failed(reason) => unhealthy.push(Unhealthy {
                        object: d.id.clone(),
                        reason,
                        failed: true,
                    }),
                }
            }
        }
        let live = live.map(|l| for_display(&l, d.id.is_secret()));
        diffs.push(ObjectDiff {
            object: d.id.clone(),
            source: d.source.clone(),
            line: d.line,
            state,
            unknown,
            desired,
            live,
        });
    }

    let desired: HashSet<_> = objects.iter().map(|d| d.id.key()).collect();
    let extra = match inventory {
        Some(inv) => {
            let (_, map) = resolver.current(client).await?;
            let candidates: Vec<ObjectRef> = inv
                .objects
                .into_iter()
                .filter(|o| !desired.contains(&o.key()))
                .collect();
            let found = bounded(candidates, concurrency, |id| {
                let map = &map;
                let marks = &marks;
                async move {
                    let Some(target) = target_for(map, &id) else {
                        return Ok(None);
                    };
                    Ok(ops::get(client, &target, &id)
                        .await?
                        .filter(|live| marks.owns(live))
                        .map(|live| {
                            let shown = for_display(&live, id.is_secret());
                            (id, shown)
                        }))
                }
            })
            .await;
            first_error(found)?.into_iter().flatten().collect()
        }
        None => Vec::new(),
    };
    let (extra, extra_live): (Vec<ObjectRef>, Vec<Value>) = extra.into_iter().unzip();
    Ok(ComponentDiff {
        env: spec.env.clone(),
        layer: spec.layer,
        component: spec.name.clone(),
        objects: diffs,
        extra,
        extra_live,
        unhealthy,
        additions: added,
        dry_runs: dry_runs.into_inner(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn live_deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": "api", "namespace": "web", "uid": "u1", "resourceVersion": "7",
                "generation": 2, "creationTimestamp": "2025-01-01T00:00:00Z",
                "labels": {"app": "api", "app.kubernetes.io/managed-by": "phoenix"},
                "annotations": {"phoenix.dev/commit": "old"},
                "managedFields": [{"manager": "phoenix"}]
            },
            "spec": {"replicas": 3, "strategy": {"type": "RollingUpdate"},
                     "template": {"spec": {"containers": [{"name": "c", "image": "nginx:1", "imagePullPolicy": "IfNotPresent"}]}}},
            "status": {"availableReplicas": 1}
        })
    }

    #[test]
    fn server_owned_fields_and_commit_are_not_drift() {
        let live = live_deployment();
        let mut dry = live.clone();
        dry["metadata"]["resourceVersion"] = "8".into();
        dry["metadata"]["generation"] = 3.into();
        dry["metadata"]["annotations"]["phoenix.dev/commit"] = "new".into();
        dry["metadata"]["managedFields"] = json!([]);
        dry["status"] = json!({"availableReplicas": 3});
        assert_eq!(changed_fields(&dry, &live), vec![]);
    }

    #[test]
    fn changed_fields_are_listed_with_paths() {
        let live = live_deployment();
        let mut dry = live.clone();
        dry["spec"]["replicas"] = 2.into();
        dry["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "x".into();
        dry["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:2".into();
        dry["spec"]["paused"] = true.into();
        let fields = changed_fields(&dry, &live);
        let paths: Vec<&str> = fields.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                ".metadata.labels[\"app.kubernetes.io/managed-by\"]",
                ".spec.paused",
                ".spec.replicas",
                ".spec.template.spec.containers[0].image"
            ]
        );
        assert_eq!(fields[2].desired, Some(json!(2)));
        assert_eq!(fields[2].live, Some(json!(3)));
        assert_eq!(fields[1].live, None);
    }

    #[test]
    fn lists_of_different_length_differ_as_a_whole() {
        let a = json!({"spec": {"ports": [{"port": 80}]}});
        let b = json!({"spec": {"ports": [{"port": 80}, {"port": 443}]}});
        let fields = changed_fields(&a, &b);
        assert_eq!(fields.len(), 1);
        assert_eq!(fields[0].path, ".spec.ports");
    }

    #[test]
    fn secret_values_are_redacted() {
        let fields = redact(vec![
            ObjectFieldDiff {
                path: ".data.password".into(),
                desired: Some(json!("aHVudGVyMg==")),
                live: Some(json!("b2xk")),
            },
            ObjectFieldDiff {
                path: ".metadata.labels.a".into(),
                desired: Some(json!("b")),
                live: None,
            },
        ]);
        let text = serde_json::to_string(&fields).unwrap();
        assert!(
            !text.contains("aHVudGVyMg==") && !text.contains("b2xk"),
            "{text}"
        );
        assert_eq!(fields[1].desired, Some(json!("b")));
    }

    #[test]
    fn a_secret_copied_into_an_annotation_is_hidden() {
        let mut secret = json!({"kind": "Secret", "data": {"p": "c2VjcmV0"}, "metadata": {"annotations": {
            "kubectl.kubernetes.io/last-applied-configuration": "{\"data\":{\"p\":\"c2VjcmV0\"}}",
            "team": "blue"
        }}});
        hide_secret_values(&mut secret);
        assert!(!secret.to_string().contains("c2VjcmV0"), "{secret}");
        assert_eq!(secret["metadata"]["annotations"]["team"], "blue");
        let fields = redact(vec![ObjectFieldDiff {
            path: ".metadata.annotations[\"kubectl.kubernetes.io/last-applied-configuration\"]"
                .into(),
            desired: None,
            live: Some(json!("{\"data\":{\"p\":\"c2VjcmV0\"}}")),
        }]);
        assert!(!serde_json::to_string(&fields).unwrap().contains("c2VjcmV0"));
    }

    #[test]
    fn additions_are_the_outermost_fields_others_own_and_phoenix_does_not() {
        let live = json!({"metadata": {"managedFields": [
            {"manager": "phoenix", "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {},
                "f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"api\"}": {".": {}, "f:image": {}}}}}}}},
            {"manager": "kubectl-edit", "operation": "Update", "fieldsV1": {"f:spec": {
                "f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"sidecar\"}": {".": {}, "f:image": {}, "f:name": {}}}}}},
                "f:metadata": {"f:annotations": {"f:team": {}}}}},
            {"manager": "kube-controller-manager", "operation": "Update", "fieldsV1": {"f:metadata": {"f:annotations": {"f:deployment.kubernetes.io/revision": {}}}}},
            {"manager": "hpa", "operation": "Update", "subresource": "scale", "fieldsV1": {"f:spec": {"f:replicas": {}}}}
        ]}});
        assert_eq!(
            additions(&live),
            vec![(
                "kubectl-edit".to_string(),
                vec![
                    ".metadata".to_string(),
                    ".spec.template.spec.containers[name=sidecar]".to_string()
                ]
            )]
        );
        assert_eq!(field_path_segment("v:\"x\""), "[\"x\"]");
        assert_eq!(
            field_path_segment("f:app.kubernetes.io/name"),
            "[\"app.kubernetes.io/name\"]"
        );
    }

    #[test]
    fn annotations_emptied_by_the_commit_are_dropped_on_both_sides() {
        let a = json!({"metadata": {"annotations": {"phoenix.dev/commit": "x"}}});
        let b = json!({"metadata": {}});
        assert_eq!(changed_fields(&a, &b), vec![]);
    }
}
