//! Object identity, ownership marks and apply order: everything about a desired object that needs
//! no cluster.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::engine::Layer;
use crate::render::{Manifest, Stage};

use super::error::KubeError;

/// Label on every object phoenix applies.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY: &str = "phoenix";
pub const LABEL_ENV: &str = "phoenix.dev/env";
pub const LABEL_COMPONENT: &str = "phoenix.dev/component";
pub const LABEL_LAYER: &str = "phoenix.dev/layer";
/// Annotation with the commit the object was last applied from.
pub const ANNOTATION_COMMIT: &str = "phoenix.dev/commit";

/// The identity of one object: what the inventory records and prune deletes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    /// Reads the identity of a Kubernetes object; `None` if apiVersion, kind or name is missing.
    pub fn of(obj: &Value) -> Option<ObjectRef> {
        let api_version = obj.get("apiVersion")?.as_str()?.to_string();
        let kind = obj.get("kind")?.as_str()?.to_string();
        let meta = obj.get("metadata")?;
        let name = meta.get("name")?.as_str()?.to_string();
        let namespace = meta
            .get("namespace")
            .and_then(Value::as_str)
            .filter(|ns| !ns.is_empty())
            .map(str::to_string);
        if api_version.is_empty() || kind.is_empty() || name.is_empty() {
            return None;
        }
        Some(ObjectRef {
            api_version,
            kind,
            namespace,
            name,
        })
    }

    /// The API group ("" for the core group).
    pub fn group(&self) -> &str {
        match self.api_version.split_once('/') {
            Some((group, _)) => group,
            None => "",
        }
    }

    /// Identity without the version: moving an object from `v1beta1` to `v1` in Git keeps it the
    /// same object, so it is neither pruned nor reported as extra.
    pub fn key(&self) -> (String, String, Option<String>, String) {
        (
            self.group().to_string(),
            self.kind.clone(),
            self.namespace.clone(),
            self.name.clone(),
        )
    }

    pub fn is_secret(&self) -> bool {
        self.kind == "Secret" && self.group().is_empty()
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// The marks that make an object phoenix's, for one component of one environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marks {
    pub env: String,
    pub component: String,
    pub layer: Layer,
    pub commit: String,
}

impl Marks {
    /// The ownership labels (without the commit annotation).
    pub fn labels(&self) -> [(&'static str, String); 4] {
        [
            (LABEL_MANAGED_BY, MANAGED_BY.to_string()),
            (LABEL_ENV, self.env.clone()),
            (LABEL_COMPONENT, self.component.clone()),
            (LABEL_LAYER, self.layer.as_str().to_string()),
        ]
    }

    /// The label selector matching exactly this component's objects.
    pub fn selector(&self) -> String {
        self.labels()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Writes the labels and the commit annotation into `obj`, replacing any values Git had for
    /// them (a manifest cannot claim to belong to another component).
    pub fn stamp(&self, obj: &mut Value) {
        let Some(root) = obj.as_object_mut() else {
            return;
        };
        let meta = object_entry(root, "metadata");
        let labels = object_entry(meta, "labels");
        for (k, v) in self.labels() {
            labels.insert(k.to_string(), Value::String(v));
        }
        let annotations = object_entry(meta, "annotations");
        annotations.insert(
            ANNOTATION_COMMIT.to_string(),
            Value::String(self.commit.clone()),
        );
    }

    /// Whether a live object carries this component's marks.
    pub fn owns(&self, live: &Value) -> bool {
        let labels = &live["metadata"]["labels"];
        self.labels()
            .iter()
            .all(|(k, v)| labels.get(*k).and_then(Value::as_str) == Some(v.as_str()))
    }

    /// A short account of the ownership labels a live object has, for refusals.
    pub fn describe_found(live: &Value) -> String {
        let labels = &live["metadata"]["labels"];
        let found: Vec<String> = [LABEL_MANAGED_BY, LABEL_ENV, LABEL_COMPONENT, LABEL_LAYER]
            .iter()
            .filter_map(|k| {
                labels
                    .get(*k)
                    .and_then(Value::as_str)
                    .map(|v| format!("{k}={v}"))
            })
            .collect();
        if found.is_empty() {
            "it has no phoenix labels".to_string()
        } else {
            format!("it has {}", found.join(", "))
        }
    }
}

/// Whether a live object is phoenix's for `env` (any component): the test before teardown.
pub fn owned_by_env(live: &Value, env: &str) -> bool {
    let labels = &live["metadata"]["labels"];
    labels.get(LABEL_MANAGED_BY).and_then(Value::as_str) == Some(MANAGED_BY)
        && labels.get(LABEL_ENV).and_then(Value::as_str) == Some(env)
}

fn object_entry<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = map
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(inner) => inner,
        // Made an object just above.
        _ => unreachable!("entry was just set to an object"),
    }
}

/// Apply phases within a component; prune and teardown go in reverse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ApplyPhase {
    /// CustomResourceDefinitions, waited for until Established before anything else.
    Crds,
    Namespaces,
    /// RBAC, ServiceAccounts, ConfigMaps, Secrets and other cluster configuration that workloads
    /// read at start.
    Config,
    /// Workloads and everything else (custom resources included).
    Rest,
}

impl ApplyPhase {
    pub const ALL: [ApplyPhase; 4] = [
        ApplyPhase::Crds,
        ApplyPhase::Namespaces,
        ApplyPhase::Config,
        ApplyPhase::Rest,
    ];

    pub fn of(api_version: &str, kind: &str) -> ApplyPhase {
        let group = api_version.split_once('/').map_or("", |(g, _)| g);
        match (group, kind) {
            ("apiextensions.k8s.io", "CustomResourceDefinition") => ApplyPhase::Crds,
            ("", "Namespace") => ApplyPhase::Namespaces,
            ("", "ServiceAccount" | "ConfigMap" | "Secret" | "LimitRange" | "ResourceQuota")
            | (
                "rbac.authorization.k8s.io",
                "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding",
            )
            | ("scheduling.k8s.io", "PriorityClass")
            | ("storage.k8s.io", "StorageClass") => ApplyPhase::Config,
            _ => ApplyPhase::Rest,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ApplyPhase::Crds => "CustomResourceDefinitions",
            ApplyPhase::Namespaces => "Namespaces",
            ApplyPhase::Config => "RBAC, ServiceAccounts, ConfigMaps and Secrets",
            ApplyPhase::Rest => "workloads and other objects",
        }
    }
}

/// Total apply order over object references: phase, then kind, namespace and name (so that runs
/// are reproducible).
pub fn apply_order(a: &ObjectRef, b: &ObjectRef) -> Ordering {
    ApplyPhase::of(&a.api_version, &a.kind)
        .cmp(&ApplyPhase::of(&b.api_version, &b.kind))
        .then_with(|| a.kind.cmp(&b.kind))
        .then_with(|| a.namespace.cmp(&b.namespace))
        .then_with(|| a.name.cmp(&b.name))
}

/// One object ready to apply: identity, where it came from, and the body with marks stamped.
#[derive(Clone, Debug)]
pub struct Desired {
    pub id: ObjectRef,
    pub source: String,
    pub line: usize,
    pub phase: ApplyPhase,
    /// The stage of the component's apply it belongs to (a chart's Helm hooks before or after
    /// the rest); within a stage, objects go by `phase`.
    pub stage: Stage,
    pub body: Value,
}

impl Desired {
    pub fn origin(&self) -> String {
        format!("{}:{}", self.source, self.line)
    }
}

/// Turns rendered manifests into stamped objects in apply order. Objects without a namespace get
/// `default_namespace` only once discovery says their kind is namespaced (see
/// [`super::discovery`]), so here the namespace is left as Git wrote it.
pub fn prepare(manifests: &[Manifest], marks: &Marks) -> Result<Vec<Desired>, KubeError> {
    let mut out: Vec<Desired> = Vec::with_capacity(manifests.len());
    for m in manifests {
        if m.object.is_null() {
            continue;
        }
        let Some(id) = ObjectRef::of(&m.object) else {
            let problem = if !m.object.is_object() {
                "a manifest must be a mapping (a Kubernetes object)".to_string()
            } else {
                "a Kubernetes object needs a string apiVersion, kind and metadata.name".to_string()
            };
            return Err(KubeError::InvalidManifest {
                source_file: m.source.clone(),
                line: m.line,
                problem,
            });
        };
        if id.kind.ends_with("List") && m.object.get("items").is_some() {
            return Err(KubeError::InvalidManifest {
                source_file: m.source.clone(),
                line: m.line,
                problem: format!(
                    "{} is a list; write its items as separate YAML documents",
                    id.kind
                ),
            });
        }
        let mut body = m.object.clone();
        marks.stamp(&mut body);
        // Fields the server owns must not be sent: a stale resourceVersion would fail the apply.
        if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            for field in [
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "managedFields",
                "generation",
            ] {
                meta.remove(field);
            }
        }
        if let Some(root) = body.as_object_mut() {
            root.remove("status");
        }
        out.push(Desired {
            phase: ApplyPhase::of(&id.api_version, &id.kind),
            stage: m.stage,
            id,
            source: m.source.clone(),
            line: m.line,
            body,
        });
    }
    Ok(out)
}

/// Sets the namespace of namespaced objects that have none and rejects duplicates; called once the
/// scope of every kind is known.
pub fn finish(
    objects: &mut [Desired],
    namespaced: impl Fn(&ObjectRef) -> bool,
    default_namespace: &str,
) -> Result<(), KubeError> {
    for d in objects.iter_mut() {
        if namespaced(&d.id) {
            if d.id.namespace.is_none() {
                d.id.namespace = Some(default_namespace.to_string());
                if let Some(meta) = d.body.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert(
                        "namespace".to_string(),
                        Value::String(default_namespace.to_string()),
                    );
                }
            }
        } else if d.id.namespace.is_some() {
            // kubectl ignores a namespace on a cluster-scoped object; so does the API server.
            d.id.namespace = None;
            if let Some(meta) = d.body.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("namespace");
            }
        }
    }
    let mut seen: HashMap<_, String> = HashMap::new();
    for d in objects.iter() {
        if let Some(first) = seen.get(&d.id.key()) {
            return Err(KubeError::Duplicate {
                source_file: d.source.clone(),
                line: d.line,
                object: Box::new(d.id.clone()),
                first: first.clone(),
            });
        }
        seen.insert(d.id.key(), d.origin());
    }
    objects.sort_by(|a, b| apply_order(&a.id, &b.id));
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// The marks of component `web` (apps) of env `demo`, for unit tests of the provider.
    pub(crate) fn marks() -> Marks {
        Marks {
            env: "demo".into(),
            component: "web".into(),
            layer: Layer::Apps,
            commit: "abc".into(),
        }
    }

    #[test]
    fn stamping_overrides_claims_from_git() {
        let mut obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x", "labels": {"phoenix.dev/component": "other", "a": "b"}}});
        marks().stamp(&mut obj);
        assert_eq!(obj["metadata"]["labels"]["phoenix.dev/component"], "web");
        assert_eq!(obj["metadata"]["labels"]["a"], "b");
        assert_eq!(obj["metadata"]["annotations"]["phoenix.dev/commit"], "abc");
        assert!(marks().owns(&obj));
        let mut other = marks();
        other.component = "api".into();
        assert!(!other.owns(&obj));
        assert!(owned_by_env(&obj, "demo"));
        assert!(!owned_by_env(&obj, "prod"));
    }

    #[test]
    fn phases_follow_the_documented_order() {
        let mut refs: Vec<ObjectRef> = [
            ("apps/v1", "Deployment", "b"),
            ("example.com/v1", "Widget", "w"),
            ("v1", "ConfigMap", "c"),
            ("rbac.authorization.k8s.io/v1", "ClusterRole", "r"),
            ("v1", "Namespace", "n"),
            (
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                "widgets.example.com",
            ),
        ]
        .iter()
        .map(|(a, k, n)| ObjectRef {
            api_version: a.to_string(),
            kind: k.to_string(),
            namespace: None,
            name: n.to_string(),
        })
        .collect();
        refs.sort_by(apply_order);
        let kinds: Vec<&str> = refs.iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "CustomResourceDefinition",
                "Namespace",
                "ClusterRole",
                "ConfigMap",
                "Deployment",
                "Widget"
            ]
        );
    }

    #[test]
    fn prepare_rejects_non_objects_with_file_and_line() {
        let m = Manifest {
            source: "apps/web/x.yaml".into(),
            line: 7,
            object: json!({"kind": "ConfigMap", "metadata": {"name": "x"}}),
            stage: Default::default(),
        };
        let err = prepare(&[m], &marks()).unwrap_err().to_string();
        assert!(err.starts_with("apps/web/x.yaml:7: "), "{err}");
        assert!(err.contains("apiVersion"), "{err}");
    }

    #[test]
    fn finish_defaults_namespaces_and_finds_duplicates() {
        let ms: Vec<Manifest> = [3, 9]
            .iter()
            .map(|line| Manifest {
                source: "a.yaml".into(),
                line: *line,
                object: json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}),
                stage: Default::default(),
            })
            .collect();
        let mut objs = prepare(&ms[..1], &marks()).unwrap();
        finish(&mut objs, |_| true, "web").unwrap();
        assert_eq!(objs[0].id.namespace.as_deref(), Some("web"));
        assert_eq!(objs[0].body["metadata"]["namespace"], "web");
        let mut objs = prepare(&ms, &marks()).unwrap();
        let err = finish(&mut objs, |_| true, "web").unwrap_err().to_string();
        assert_eq!(err, "a.yaml:9: ConfigMap web/x is also defined at a.yaml:3");
    }
}
