//! The resource types a cluster serves (built-in kinds and CRD-defined kinds) and the discovery documents.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One served resource type.
#[derive(Debug, Clone)]
pub struct ResourceType {
    pub group: String,
    /// Served versions, preferred (storage) first.
    pub versions: Vec<String>,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub status_subresource: bool,
    pub scale_subresource: bool,
    /// For custom resources: the CRD's openAPIV3Schema (list types for server-side apply).
    pub schema: Option<Value>,
    /// True when the type comes from a CRD.
    pub custom: bool,
}

pub type ResKey = (String, String);

impl ResourceType {
    pub fn key(&self) -> ResKey {
        (self.group.clone(), self.plural.clone())
    }
    pub fn storage_version(&self) -> &str {
        self.versions.first().map(String::as_str).unwrap_or("v1")
    }
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.group, version)
        }
    }
    /// Whether writes to this kind bump metadata.generation on spec changes.
    pub fn has_generation(&self) -> bool {
        self.custom
            || matches!(
                self.kind.as_str(),
                "Deployment"
                    | "ReplicaSet"
                    | "StatefulSet"
                    | "DaemonSet"
                    | "Job"
                    | "Ingress"
                    | "CustomResourceDefinition"
                    | "Pod"
                    | "Service"
                    | "PersistentVolumeClaim"
            )
    }
}

#[allow(clippy::too_many_arguments)]
fn rt(
    group: &str,
    version: &str,
    plural: &str,
    singular: &str,
    kind: &str,
    namespaced: bool,
    short: &[&str],
    categories: &[&str],
    status: bool,
    scale: bool,
) -> ResourceType {
    ResourceType {
        group: group.into(),
        versions: vec![version.into()],
        plural: plural.into(),
        singular: singular.into(),
        kind: kind.into(),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: categories.iter().map(|s| s.to_string()).collect(),
        status_subresource: status,
        scale_subresource: scale,
        schema: None,
        custom: false,
    }
}

pub fn builtin_types() -> Vec<ResourceType> {
    let all = &["all"][..];
    vec![
        rt(
            "",
            "v1",
            "namespaces",
            "namespace",
            "Namespace",
            false,
            &["ns"],
            &[],
            true,
            false,
        ),
        rt(
            "",
            "v1",
            "configmaps",
            "configmap",
            "ConfigMap",
            true,
            &["cm"],
            &[],
            false,
            false,
        ),
        rt(
            "",
            "v1",
            "secrets",
            "secret",
            "Secret",
            true,
            &[],
            &[],
            false,
            false,
        ),
        rt(
            "",
            "v1",
            "serviceaccounts",
            "serviceaccount",
            "ServiceAccount",
            true,
            &["sa"],
            &[],
            false,
            false,
        ),
        rt(
            "",
            "v1",
            "services",
            "service",
            "Service",
            true,
            &["svc"],
            all,
            true,
            false,
        ),
        rt(
            "",
            "v1",
            "nodes",
            "node",
            "Node",
            false,
            &["no"],
            &[],
            true,
            false,
        ),
        rt(
            "",
            "v1",
            "pods",
            "pod",
            "Pod",
            true,
            &["po"],
            all,
            true,
            false,
        ),
        rt(
            "",
            "v1",
            "endpoints",
            "endpoints",
            "Endpoints",
            true,
            &["ep"],
            &[],
            false,
            false,
        ),
        rt(
            "",
            "v1",
            "events",
            "event",
            "Event",
            true,
            &["ev"],
            &[],
            false,
            false,
        ),
        rt(
            "",
            "v1",
            "persistentvolumeclaims",
            "persistentvolumeclaim",
            "PersistentVolumeClaim",
            true,
            &["pvc"],
            &[],
            true,
            false,
        ),
        rt(
            "apps",
            "v1",
            "deployments",
            "deployment",
            "Deployment",
            true,
            &["deploy"],
            all,
            true,
            true,
        ),
        rt(
            "apps",
            "v1",
            "replicasets",
            "replicaset",
            "ReplicaSet",
            true,
            &["rs"],
            all,
            true,
            true,
        ),
        rt(
            "apps",
            "v1",
            "statefulsets",
            "statefulset",
            "StatefulSet",
            true,
            &["sts"],
            all,
            true,
            true,
        ),
        rt(
            "apps",
            "v1",
            "daemonsets",
            "daemonset",
            "DaemonSet",
            true,
            &["ds"],
            all,
            true,
            false,
        ),
        rt(
            "batch",
            "v1",
            "jobs",
            "job",
            "Job",
            true,
            &[],
            all,
            true,
            false,
        ),
        rt(
            "networking.k8s.io",
            "v1",
            "ingresses",
            "ingress",
            "Ingress",
            true,
            &["ing"],
            &[],
            true,
            false,
        ),
        rt(
            "networking.k8s.io",
            "v1",
            "ingressclasses",
            "ingressclass",
            "IngressClass",
            false,
            &[],
            &[],
            false,
            false,
        ),
        rt(
            "rbac.authorization.k8s.io",
            "v1",
            "roles",
            "role",
            "Role",
            true,
            &[],
            &[],
            false,
            false,
        ),
        rt(
            "rbac.authorization.k8s.io",
            "v1",
            "rolebindings",
            "rolebinding",
            "RoleBinding",
            true,
            &[],
            &[],
            false,
            false,
        ),
        rt(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterroles",
            "clusterrole",
            "ClusterRole",
            false,
            &[],
            &[],
            false,
            false,
        ),
        rt(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            "clusterrolebinding",
            "ClusterRoleBinding",
            false,
            &[],
            &[],
            false,
            false,
        ),
        rt(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "customresourcedefinition",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
            &["api-extensions"],
            true,
            false,
        ),
    ]
}

/// Build a resource type from an Established CRD object, or None when the CRD is malformed.
pub fn type_from_crd(crd: &Value) -> Option<ResourceType> {
    let spec = crd.get("spec")?;
    let group = spec.get("group")?.as_str()?.to_string();
    let names = spec.get("names")?;
    let plural = names.get("plural")?.as_str()?.to_string();
    let kind = names.get("kind")?.as_str()?.to_string();
    let singular = names
        .get("singular")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let strs = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let namespaced = spec.get("scope").and_then(Value::as_str) != Some("Cluster");
    let mut versions: Vec<(bool, String, Option<Value>, bool, bool)> = Vec::new();
    for v in spec.get("versions")?.as_array()? {
        let name = v.get("name")?.as_str()?.to_string();
        if v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let storage = v.get("storage").and_then(Value::as_bool).unwrap_or(false);
        let schema = v
            .get("schema")
            .and_then(|s| s.get("openAPIV3Schema"))
            .cloned();
        let subs = v.get("subresources");
        let status = subs.and_then(|s| s.get("status")).is_some();
        let scale = subs.and_then(|s| s.get("scale")).is_some();
        versions.push((storage, name, schema, status, scale));
    }
    if versions.is_empty() {
        return None;
    }
    versions.sort_by_key(|v| !v.0);
    let (_, _, schema, status, scale) = versions[0].clone();
    Some(ResourceType {
        group,
        versions: versions.into_iter().map(|v| v.1).collect(),
        plural,
        singular,
        kind,
        namespaced,
        short_names: strs(names.get("shortNames")),
        categories: strs(names.get("categories")),
        status_subresource: status,
        scale_subresource: scale,
        schema,
        custom: true,
    })
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// `APIResourceList` for one group/version.
pub fn resource_list(
    types: &BTreeMap<ResKey, Arc<ResourceType>>,
    group: &str,
    version: &str,
) -> Option<Value> {
    let mut resources = Vec::new();
    for t in types.values() {
        if t.group != group || !t.versions.iter().any(|v| v == version) {
            continue;
        }
        let mut r = json!({
            "name": t.plural,
            "singularName": t.singular,
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": VERBS,
        });
        if !t.short_names.is_empty() {
            r["shortNames"] = json!(t.short_names);
        }
        if !t.categories.is_empty() {
            r["categories"] = json!(t.categories);
        }
        resources.push(r);
        if t.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        if t.scale_subresource {
            resources.push(json!({
                "name": format!("{}/scale", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}

/// Groups (except the core group) with their versions, preferred first.
fn groups(types: &BTreeMap<ResKey, Arc<ResourceType>>) -> BTreeMap<String, Vec<String>> {
    let mut g: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in types.values() {
        if t.group.is_empty() {
            continue;
        }
        let e = g.entry(t.group.clone()).or_default();
        for v in &t.versions {
            if !e.contains(v) {
                e.push(v.clone());
            }
        }
    }
    g
}

fn group_doc(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({
        "name": name,
        "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or(Value::Null),
    })
}

pub fn group_list(types: &BTreeMap<ResKey, Arc<ResourceType>>) -> Value {
    let groups: Vec<Value> = groups(types).iter().map(|(n, v)| group_doc(n, v)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn group(types: &BTreeMap<ResKey, Arc<ResourceType>>, name: &str) -> Option<Value> {
    let gs = groups(types);
    let versions = gs.get(name)?;
    let mut d = group_doc(name, versions);
    d["kind"] = json!("APIGroup");
    d["apiVersion"] = json!("v1");
    Some(d)
}

/// How a list field merges, following x-kubernetes-list-type.
#[derive(Debug, Clone, PartialEq)]
pub enum ListType {
    Atomic,
    Set,
    Map(Vec<String>),
}

/// List semantics for a field path (field names only, list items skipped) of a kind.
pub fn list_type(t: &ResourceType, path: &[&str]) -> ListType {
    if let Some(schema) = &t.schema {
        if let Some(lt) = schema_list_type(schema, path) {
            return lt;
        }
    }
    let map = |keys: &[&str]| ListType::Map(keys.iter().map(|s| s.to_string()).collect());
    let last = path.last().copied().unwrap_or("");
    let parent = if path.len() >= 2 {
        path[path.len() - 2]
    } else {
        ""
    };
    match (path.first().copied(), last) {
        (Some("metadata"), "finalizers") => ListType::Set,
        (Some("metadata"), "ownerReferences") => map(&["uid"]),
        (Some("metadata"), "managedFields") => ListType::Atomic,
        (_, "containers" | "initContainers" | "ephemeralContainers") => map(&["name"]),
        (_, "env")
            if matches!(
                parent,
                "containers" | "initContainers" | "ephemeralContainers"
            ) =>
        {
            map(&["name"])
        }
        (_, "volumes") => map(&["name"]),
        (_, "volumeMounts") => map(&["mountPath"]),
        (_, "volumeDevices") => map(&["devicePath"]),
        (_, "imagePullSecrets") => map(&["name"]),
        (_, "hostAliases") => map(&["ip"]),
        (_, "resourceClaims") => map(&["name"]),
        (_, "topologySpreadConstraints") => map(&["topologyKey", "whenUnsatisfiable"]),
        (_, "ports") if t.kind == "Service" && parent == "spec" => map(&["port", "protocol"]),
        (_, "ports")
            if matches!(
                parent,
                "containers" | "initContainers" | "ephemeralContainers"
            ) =>
        {
            map(&["containerPort", "protocol"])
        }
        (Some("status"), "conditions") => map(&["type"]),
        _ => ListType::Atomic,
    }
}

/// Whether a map-valued field is atomic (replaced as a whole by apply and owned as a leaf).
pub fn map_is_atomic(t: &ResourceType, path: &[&str]) -> bool {
    if t.custom {
        if let Some(schema) = &t.schema {
            if let Some(s) = schema_at(schema, path) {
                return s.get("x-kubernetes-map-type").and_then(Value::as_str) == Some("atomic");
            }
        }
        return false;
    }
    let last = path.last().copied().unwrap_or("");
    // LabelSelector is atomic in workload specs; so is the pod template selector in Services (a plain map, granular).
    matches!(
        (t.kind.as_str(), last),
        (
            "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job",
            "selector"
        )
    ) && path.len() == 2
}

fn schema_at<'a>(schema: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = schema;
    for seg in path {
        // Descend through array items transparently.
        while cur.get("type").and_then(Value::as_str) == Some("array") {
            cur = cur.get("items")?;
        }
        let props = cur.get("properties");
        cur = match props.and_then(|p| p.get(*seg)) {
            Some(s) => s,
            None => match cur.get("additionalProperties") {
                Some(ap) if ap.is_object() => ap,
                _ => return None,
            },
        };
    }
    Some(cur)
}

fn schema_list_type(schema: &Value, path: &[&str]) -> Option<ListType> {
    let s = schema_at(schema, path)?;
    match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("map") => {
            let keys: Vec<String> = s
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if keys.is_empty() {
                Some(ListType::Atomic)
            } else {
                Some(ListType::Map(keys))
            }
        }
        Some("set") => Some(ListType::Set),
        _ => Some(ListType::Atomic),
    }
}

/// Group/versions served, as OpenAPI v3 path keys (`api/v1`, `apis/apps/v1`).
fn group_versions(types: &BTreeMap<ResKey, Arc<ResourceType>>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for t in types.values() {
        for v in &t.versions {
            let gv = (t.group.clone(), v.clone());
            if !out.contains(&gv) {
                out.push(gv);
            }
        }
    }
    out.sort();
    out
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The OpenAPI v3 discovery document: one entry per group/version.
pub fn openapi_v3_root(types: &BTreeMap<ResKey, Arc<ResourceType>>) -> Value {
    let mut paths = serde_json::Map::new();
    for (g, v) in group_versions(types) {
        let p = gv_path(&g, &v);
        // The hash changes with the set of kinds so clients refetch after a CRD is added.
        let kinds: Vec<&str> = types
            .values()
            .filter(|t| t.group == g && t.versions.contains(&v))
            .map(|t| t.plural.as_str())
            .collect();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in kinds.join(",").bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={h:016X}")}),
        );
    }
    json!({ "paths": paths })
}

/// A minimal OpenAPI v3 document for one group/version: operations per kind, with the query parameters
/// kubectl checks for (fieldValidation, dryRun, fieldManager, force). No schemas.
pub fn openapi_v3_gv(
    types: &BTreeMap<ResKey, Arc<ResourceType>>,
    gv: &str,
    version_info: &str,
) -> Option<Value> {
    let (group, version) = match gv.split('/').collect::<Vec<_>>().as_slice() {
        ["api", v] => (String::new(), v.to_string()),
        ["apis", g, v] => (g.to_string(), v.to_string()),
        _ => return None,
    };
    let mut paths = serde_json::Map::new();
    let param = |n: &str| json!({"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
    let write_params = json!([
        param("dryRun"),
        param("fieldManager"),
        param("fieldValidation"),
        param("force"),
        param("pretty")
    ]);
    let mut found = false;
    for t in types.values() {
        if t.group != group || !t.versions.contains(&version) {
            continue;
        }
        found = true;
        let gvk = json!({"group": t.group, "version": version, "kind": t.kind});
        let base = if t.namespaced {
            format!(
                "/{}/namespaces/{{namespace}}/{}",
                gv_path(&group, &version),
                t.plural
            )
        } else {
            format!("/{}/{}", gv_path(&group, &version), t.plural)
        };
        let ok = json!({"200": {"description": "OK"}});
        let op = |action: &str, params: &Value| {
            json!({
                "operationId": format!("{action}{}", t.kind),
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params,
                "responses": ok,
            })
        };
        paths.insert(
            base.clone(),
            json!({
                "get": op("list", &json!([param("labelSelector"), param("fieldSelector"), param("watch")])),
                "post": op("post", &write_params),
            }),
        );
        paths.insert(
            format!("{base}/{{name}}"),
            json!({
                "get": op("get", &json!([])),
                "put": op("put", &write_params),
                "patch": op("patch", &write_params),
                "delete": op("delete", &json!([param("dryRun")])),
            }),
        );
    }
    if !found {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": version_info},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

/// Aggregated discovery (`apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`): the core group for `/api`
/// (`core: true`) or every other group for `/apis`.
pub fn aggregated_discovery(types: &BTreeMap<ResKey, Arc<ResourceType>>, core: bool) -> Value {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in types.values() {
        if t.group.is_empty() != core {
            continue;
        }
        let e = groups.entry(t.group.clone()).or_default();
        for v in &t.versions {
            if !e.contains(v) {
                e.push(v.clone());
            }
        }
    }
    let items: Vec<Value> = groups
        .iter()
        .map(|(g, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = types
                        .values()
                        .filter(|t| t.group == *g && t.versions.contains(v))
                        .map(|t| {
                            let gvk = json!({"group": t.group, "version": v, "kind": t.kind});
                            let mut subs = Vec::new();
                            if t.status_subresource {
                                subs.push(json!({"subresource": "status", "responseKind": gvk,
                                    "verbs": ["get", "patch", "update"]}));
                            }
                            if t.scale_subresource {
                                subs.push(json!({"subresource": "scale",
                                    "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"},
                                    "verbs": ["get", "patch", "update"]}));
                            }
                            let mut r = json!({
                                "resource": t.plural,
                                "responseKind": gvk,
                                "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": t.singular,
                                "verbs": VERBS,
                            });
                            if !t.short_names.is_empty() {
                                r["shortNames"] = json!(t.short_names);
                            }
                            if !t.categories.is_empty() {
                                r["categories"] = json!(t.categories);
                            }
                            if !subs.is_empty() {
                                r["subresources"] = json!(subs);
                            }
                            r
                        })
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": versions})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

/// Whether an Accept header asks for aggregated discovery v2 before plain JSON.
pub fn wants_aggregated(accept: &str) -> bool {
    for part in accept.split(',') {
        let mut params = part.split(';').map(str::trim);
        let media = params.next().unwrap_or("");
        let params: Vec<&str> = params.collect();
        let g = params.contains(&"g=apidiscovery.k8s.io");
        let v2 = params.contains(&"v=v2");
        let as_list = params.contains(&"as=APIGroupDiscoveryList");
        if media == "application/json" && g && v2 && as_list {
            return true;
        }
        if (media == "application/json" && !g) || media == "*/*" {
            return false;
        }
    }
    false
}

pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_accept_detection() {
        assert!(wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
        ));
        assert!(!wants_aggregated("application/json, */*"));
        assert!(!wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(!wants_aggregated(""));
    }
}
