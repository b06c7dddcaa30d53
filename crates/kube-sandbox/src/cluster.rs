//! One simulated cluster: its object store, resourceVersion counter, event history and write semantics.

use crate::api::{builtin_types, type_from_crd, ResKey, ResourceType};
use crate::defaults::{apply_defaults, Allocator};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::ssa::{self, ApplyArgs, ApplyResult};
use crate::util::{
    meta_mut, meta_str, new_uid, now_rfc3339, random_suffix, validate_dns1123_label,
    validate_dns1123_subdomain, ApiError,
};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;

/// How many watch events each cluster retains for resuming watches.
pub const DEFAULT_HISTORY: usize = 10_000;

#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub key: ResKey,
    pub ns: String,
    pub etype: &'static str,
    pub object: Arc<Value>,
    /// The object before a MODIFIED event, so selector watches can turn it into ADDED or DELETED.
    pub prev: Option<Arc<Value>>,
}

type ObjKey = (String, String);

/// A page of a list: items, the list resourceVersion, the continue token and how many items remain.
pub type ListPage = (Vec<Arc<Value>>, u64, Option<String>, usize);

/// What the simulated kubelet of one node knows.
#[derive(Debug, Clone)]
pub struct NodeSim {
    /// When the node's kubelet reports Ready (None: not yet scheduled to).
    pub ready_at: std::time::Instant,
    /// False while the backing instance is stopped.
    pub running: bool,
    /// The EC2 instance backing the node, if registered from EC2.
    pub instance_id: Option<String>,
}
type ObjRef = (ResKey, String, String);

pub struct Alloc {
    next_ip: u32,
    next_port: i64,
}

impl Allocator for Alloc {
    fn cluster_ip(&mut self) -> String {
        let n = self.next_ip;
        self.next_ip += 1;
        format!("10.43.{}.{}", (n >> 8) & 0xff, n & 0xff)
    }
    fn node_port(&mut self) -> i64 {
        let p = self.next_port;
        self.next_port = if p >= 32767 { 30000 } else { p + 1 };
        p
    }
}

pub struct State {
    pub rv: u64,
    pub types: BTreeMap<ResKey, Arc<ResourceType>>,
    objects: HashMap<ResKey, BTreeMap<ObjKey, Arc<Value>>>,
    /// Label index per type: (key, value) → objects carrying that label, so equality selectors do not scan.
    label_index: HashMap<ResKey, HashMap<(String, String), BTreeSet<ObjKey>>>,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    alloc: Alloc,
    owners: HashMap<String, BTreeSet<ObjRef>>,
    /// Nodes an admin forced NotReady.
    pub forced_not_ready: HashSet<String>,
    /// Simulated kubelet state per node.
    pub node_sim: HashMap<String, NodeSim>,
    tx: broadcast::Sender<Arc<Event>>,
    rv_mirror: Arc<AtomicU64>,
}

/// Parameters of a write that do not come from the body.
#[derive(Debug, Clone)]
pub struct WriteCtx {
    pub manager: String,
    pub dry_run: bool,
    /// The version the client addressed (responses carry it).
    pub version: String,
    /// "" or "status".
    pub subresource: String,
    /// `fieldValidation=Strict`: unknown fields of custom resources are an error instead of pruned.
    pub strict: bool,
}

impl WriteCtx {
    pub fn internal(manager: &str, subresource: &str) -> Self {
        WriteCtx {
            manager: manager.into(),
            dry_run: false,
            version: String::new(),
            subresource: subresource.into(),
            strict: false,
        }
    }
}

/// 400 for a built-in object whose well-known fields have the wrong JSON type, as the decoder would.
fn typecheck(t: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    if t.custom {
        return Ok(());
    }
    let errs = crate::defaults::type_errors(&t.kind, obj);
    if errs.is_empty() {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "{} in version \"{}\" cannot be handled as a {}: {}",
        t.kind,
        t.storage_version(),
        t.kind,
        errs.join(", ")
    )))
}

/// Prune unknown fields and fill schema defaults of a custom resource (no-op for built-in kinds).
fn structural(
    t: &ResourceType,
    obj: &mut Value,
    strict: bool,
    defaults: bool,
) -> Result<(), ApiError> {
    let Some(schema) = t.schema.as_ref().filter(|_| t.custom) else {
        return Ok(());
    };
    let unknown = crate::schema::prune(schema, obj);
    if strict && !unknown.is_empty() {
        let fields: Vec<String> = unknown
            .iter()
            .map(|p| format!("unknown field \"{}\"", p.trim_start_matches('.')))
            .collect();
        return Err(ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
            t.kind,
            t.api_version(t.storage_version()),
            t.kind,
            fields.join(", ")
        )));
    }
    if defaults {
        crate::schema::apply_defaults(schema, obj);
    }
    Ok(())
}

#[derive(Debug, Clone, Default)]
pub struct DeleteOpts {
    pub orphan: bool,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

pub struct Cluster {
    pub name: String,
    pub state: Mutex<State>,
    pub tx: broadcast::Sender<Arc<Event>>,
    pub rv: Arc<AtomicU64>,
    kubernetes_version: std::sync::RwLock<String>,
    /// Set when the cluster is wiped: its watches end.
    pub closed: std::sync::atomic::AtomicBool,
    /// The cluster's controller loop, aborted when the cluster is wiped.
    pub controller: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Cluster {
    pub fn new(name: &str, kubernetes_version: &str, history: usize) -> Arc<Cluster> {
        let (tx, _) = broadcast::channel(4096);
        let rv = Arc::new(AtomicU64::new(1));
        let mut types = BTreeMap::new();
        for t in builtin_types() {
            types.insert(t.key(), Arc::new(t));
        }
        let state = State {
            rv: 1,
            types,
            objects: HashMap::new(),
            label_index: HashMap::new(),
            history: VecDeque::new(),
            history_limit: history,
            alloc: Alloc {
                next_ip: 10,
                next_port: 30000,
            },
            owners: HashMap::new(),
            forced_not_ready: HashSet::new(),
            node_sim: HashMap::new(),
            tx: tx.clone(),
            rv_mirror: rv.clone(),
        };
        let c = Arc::new(Cluster {
            name: name.to_string(),
            state: Mutex::new(state),
            tx,
            rv,
            kubernetes_version: std::sync::RwLock::new(kubernetes_version.to_string()),
            closed: std::sync::atomic::AtomicBool::new(false),
            controller: Mutex::new(None),
        });
        c.bootstrap();
        c
    }

    /// The version `/version` reports and nodes run.
    pub fn version(&self) -> String {
        self.kubernetes_version
            .read()
            .map(|v| v.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Change the cluster's version (an upgrade): `/version` and every node's kubeletVersion follow.
    pub fn set_version(&self, version: &str) {
        match self.kubernetes_version.write() {
            Ok(mut v) => *v = version.to_string(),
            Err(e) => *e.into_inner() = version.to_string(),
        }
        let mut st = self.lock();
        let key: ResKey = (String::new(), "nodes".into());
        let names: Vec<String> = st
            .iter(&key, None)
            .filter_map(|n| meta_str(n, "name").map(str::to_string))
            .collect();
        for n in names {
            st.set_status(&key, "", &n, "k3s", |old| {
                let mut s = old.get("status").cloned().unwrap_or(json!({}));
                if let Some(info) = s.get_mut("nodeInfo").and_then(Value::as_object_mut) {
                    info.insert("kubeletVersion".into(), json!(version));
                    info.insert("kubeProxyVersion".into(), json!(version));
                }
                s
            });
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the data is still consistent enough to serve.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bootstrap(&self) {
        let mut st = self.lock();
        let ns_t = st.type_by_kind("", "namespaces");
        let ctx = WriteCtx::internal("k3s", "");
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            let _ = st.create(&ns_t, None, body, &ctx);
        }
        let d_t = st.type_by_kind("apps", "deployments");
        let coredns = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "coredns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"k8s-app": "kube-dns"}},
                "template": {
                    "metadata": {"labels": {"k8s-app": "kube-dns"}},
                    "spec": {"containers": [{"name": "coredns", "image": "rancher/mirrored-coredns-coredns:1.12.0",
                        "ports": [{"containerPort": 53, "name": "dns", "protocol": "UDP"}]}]}
                }
            }
        });
        let _ = st.create(&d_t, Some("kube-system"), coredns, &ctx);
        // The Services every cluster has: kube-dns takes the first allocated address (10.43.0.10).
        let svc_t = st.type_by_kind("", "services");
        let kube_dns = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system",
                "labels": {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "CoreDNS"}},
            "spec": {"selector": {"k8s-app": "kube-dns"}, "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}
        });
        let _ = st.create(&svc_t, Some("kube-system"), kube_dns, &ctx);
        let kubernetes = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default",
                "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": "10.43.0.1", "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}
        });
        let _ = st.create(&svc_t, Some("default"), kubernetes, &ctx);
    }
}

fn key_of(t: &ResourceType) -> ResKey {
    t.key()
}

fn strip_for_generation(v: &Value) -> Value {
    let mut o = v.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    o
}

/// Set `apiVersion` to the version the client asked for (custom resources may serve several).
pub fn with_version(t: &ResourceType, obj: &Value, version: &str) -> Value {
    let mut o = obj.clone();
    if !version.is_empty() && version != t.storage_version() {
        o["apiVersion"] = json!(t.api_version(version));
    }
    o
}

impl State {
    /// Look up a built-in type by group and plural (internal callers only; they name types that always
    /// exist, and an unknown name falls back to Namespace rather than panicking).
    pub fn type_by_kind(&self, group: &str, plural: &str) -> Arc<ResourceType> {
        self.types
            .get(&(group.to_string(), plural.to_string()))
            .cloned()
            .unwrap_or_else(|| Arc::new(builtin_types().remove(0)))
    }

    pub fn find_type(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types
            .get(&(group.to_string(), plural.to_string()))
            .filter(|t| t.versions.iter().any(|v| v == version))
            .cloned()
    }

    pub fn get(&self, key: &ResKey, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.objects
            .get(key)
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
            .cloned()
    }

    pub fn count(&self, key: &ResKey) -> usize {
        self.objects.get(key).map(BTreeMap::len).unwrap_or(0)
    }

    /// All objects of a type (optionally in one namespace), in key order.
    pub fn iter<'a>(
        &'a self,
        key: &ResKey,
        ns: Option<&'a str>,
    ) -> Box<dyn Iterator<Item = &'a Arc<Value>> + 'a> {
        let Some(m) = self.objects.get(key) else {
            return Box::new(std::iter::empty());
        };
        match ns {
            Some(ns) => Box::new(
                m.range((ns.to_string(), String::new())..)
                    .take_while(move |(k, _)| k.0 == ns)
                    .map(|(_, v)| v),
            ),
            None => Box::new(m.values()),
        }
    }

    /// A page of matching objects, the list resourceVersion and a continue token.
    #[allow(clippy::too_many_arguments)]
    pub fn list(
        &self,
        key: &ResKey,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        limit: Option<usize>,
        cont: Option<&str>,
    ) -> Result<ListPage, ApiError> {
        let Some(m) = self.objects.get(key) else {
            return Ok((vec![], self.rv, None, 0));
        };
        let start: Bound<ObjKey> = match cont {
            Some(c) if !c.is_empty() => {
                let decoded = decode_continue(c).ok_or_else(|| {
                    ApiError::bad_request(format!("invalid continue token {c:?}"))
                })?;
                Bound::Excluded(decoded)
            }
            _ => match ns {
                Some(ns) => Bound::Included((ns.to_string(), String::new())),
                None => Bound::Unbounded,
            },
        };
        let mut out = Vec::new();
        let mut next = None;
        let remaining = 0usize;
        let matches = |k: &ObjKey, v: &Value| {
            ns.is_none_or(|n| n == k.0)
                && (labels.is_empty() || labels.matches(v))
                && (fields.is_empty() || fields.matches(v))
        };
        if let (Some(name), Some(ns)) = (fields.exact_name(), ns) {
            if let Some(v) = m.get(&(ns.to_string(), name.to_string())) {
                if matches(&(ns.to_string(), name.to_string()), v) {
                    out.push(v.clone());
                }
            }
            return Ok((out, self.rv, None, 0));
        }
        // An equality requirement narrows the candidates to the label index entry (kept in key order).
        let indexed: Option<&BTreeSet<ObjKey>> = labels.first_equality().map(|(lk, lv)| {
            static EMPTY: BTreeSet<ObjKey> = BTreeSet::new();
            self.label_index
                .get(key)
                .and_then(|i| i.get(&(lk.to_string(), lv.to_string())))
                .unwrap_or(&EMPTY)
        });
        let candidates: Box<dyn Iterator<Item = (&ObjKey, &Arc<Value>)>> = match indexed {
            Some(set) => Box::new(
                set.range((start, Bound::Unbounded))
                    .filter_map(|k| m.get_key_value(k)),
            ),
            None => Box::new(m.range((start, Bound::Unbounded))),
        };
        for (k, v) in candidates {
            if let Some(ns) = ns {
                if k.0 != ns {
                    break;
                }
            }
            if !matches(k, v) {
                continue;
            }
            if let Some(l) = limit {
                if out.len() >= l {
                    if next.is_none() {
                        let last = out
                            .last()
                            .map(|o: &Arc<Value>| {
                                (
                                    meta_str(o, "namespace").unwrap_or("").to_string(),
                                    meta_str(o, "name").unwrap_or("").to_string(),
                                )
                            })
                            .unwrap_or_default();
                        next = Some(encode_continue(&last));
                    }
                    // Counting the rest would make every page O(n); remainingItemCount is optional.
                    break;
                }
            }
            out.push(v.clone());
        }
        Ok((out, self.rv, next, remaining))
    }

    /// Events to replay for a watch starting after `from` (None: synthetic ADDED for the current state).
    pub fn watch_start(
        &self,
        key: &ResKey,
        ns: Option<&str>,
        from: Option<u64>,
    ) -> Result<Vec<Arc<Event>>, ApiError> {
        match from {
            None => Ok(self
                .iter(key, ns)
                .map(|o| {
                    Arc::new(Event {
                        rv: o
                            .get("metadata")
                            .and_then(|m| m.get("resourceVersion"))
                            .and_then(Value::as_str)
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(self.rv),
                        key: key.clone(),
                        ns: meta_str(o, "namespace").unwrap_or("").to_string(),
                        etype: "ADDED",
                        object: o.clone(),
                        prev: None,
                    })
                })
                .collect()),
            Some(n) => {
                if let Some(front) = self.history.front() {
                    if n + 1 < front.rv && n < self.rv {
                        return Err(ApiError::gone(format!(
                            "too old resource version: {n} ({})",
                            front.rv - 1
                        )));
                    }
                }
                let start = self.history.partition_point(|e| e.rv <= n);
                Ok(self
                    .history
                    .range(start..)
                    .filter(|e| e.key == *key && ns.is_none_or(|n| n == e.ns))
                    .cloned()
                    .collect())
            }
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv_mirror.store(self.rv, Ordering::Relaxed);
        self.rv
    }

    fn emit(
        &mut self,
        key: ResKey,
        ns: &str,
        etype: &'static str,
        object: Arc<Value>,
        prev: Option<Arc<Value>>,
        rv: u64,
    ) {
        let ev = Arc::new(Event {
            rv,
            key,
            ns: ns.to_string(),
            etype,
            object,
            prev,
        });
        if self.history.len() >= self.history_limit.max(1) {
            self.history.pop_front();
        }
        self.history.push_back(ev.clone());
        let _ = self.tx.send(ev);
    }

    fn index_owners(&mut self, r: &ObjRef, obj: &Value, add: bool) {
        let Some(refs) = obj
            .get("metadata")
            .and_then(|m| m.get("ownerReferences"))
            .and_then(Value::as_array)
        else {
            return;
        };
        for o in refs {
            if let Some(uid) = o.get("uid").and_then(Value::as_str) {
                if add {
                    self.owners
                        .entry(uid.to_string())
                        .or_default()
                        .insert(r.clone());
                } else if let Some(s) = self.owners.get_mut(uid) {
                    s.remove(r);
                    if s.is_empty() {
                        self.owners.remove(uid);
                    }
                }
            }
        }
    }

    fn index_labels(&mut self, key: &ResKey, ok: &ObjKey, obj: &Value, add: bool) {
        let Some(labels) = obj
            .get("metadata")
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object)
        else {
            return;
        };
        let idx = self.label_index.entry(key.clone()).or_default();
        for (k, v) in labels {
            let Some(v) = v.as_str() else { continue };
            let lk = (k.clone(), v.to_string());
            if add {
                idx.entry(lk).or_default().insert(ok.clone());
            } else if let Some(set) = idx.get_mut(&lk) {
                set.remove(ok);
                if set.is_empty() {
                    idx.remove(&lk);
                }
            }
        }
    }

    fn store(
        &mut self,
        t: &ResourceType,
        ns: &str,
        name: &str,
        obj: Value,
        etype: &'static str,
    ) -> Arc<Value> {
        let key = key_of(t);
        let r: ObjRef = (key.clone(), ns.to_string(), name.to_string());
        let ok: ObjKey = (ns.to_string(), name.to_string());
        let prev = self.get(&key, ns, name);
        if let Some(old) = &prev {
            self.index_owners(&r, old, false);
            self.index_labels(&key, &ok, old, false);
        }
        self.index_owners(&r, &obj, true);
        self.index_labels(&key, &ok, &obj, true);
        let rv = self.rv;
        let arc = Arc::new(obj);
        self.objects
            .entry(key.clone())
            .or_default()
            .insert((ns.to_string(), name.to_string()), arc.clone());
        self.emit(key, ns, etype, arc.clone(), prev, rv);
        arc
    }

    fn remove(&mut self, t: &ResourceType, ns: &str, name: &str) -> Option<Arc<Value>> {
        let key = key_of(t);
        let old = self
            .objects
            .get_mut(&key)?
            .remove(&(ns.to_string(), name.to_string()))?;
        let r: ObjRef = (key.clone(), ns.to_string(), name.to_string());
        self.index_owners(&r, &old, false);
        self.index_labels(&key, &(ns.to_string(), name.to_string()), &old, false);
        let rv = self.bump();
        let mut o = (*old).clone();
        meta_mut(&mut o).insert("resourceVersion".into(), json!(rv.to_string()));
        let arc = Arc::new(o);
        self.emit(key, ns, "DELETED", arc.clone(), None, rv);
        if t.kind == "CustomResourceDefinition" {
            self.unregister_crd(&old);
        }
        Some(arc)
    }

    /// Kind-specific hooks that run on every stored write (status the server owns).
    fn system_hooks(&self, t: &ResourceType, obj: &mut Value, creating: bool) {
        match t.kind.as_str() {
            "CustomResourceDefinition" if !t.custom => {
                let names = obj
                    .get("spec")
                    .and_then(|s| s.get("names"))
                    .cloned()
                    .unwrap_or(json!({}));
                let mut accepted = names.clone();
                if accepted.get("singular").is_none() {
                    if let Some(k) = names.get("kind").and_then(Value::as_str) {
                        accepted["singular"] = json!(k.to_lowercase());
                    }
                }
                if accepted.get("listKind").is_none() {
                    if let Some(k) = names.get("kind").and_then(Value::as_str) {
                        accepted["listKind"] = json!(format!("{k}List"));
                    }
                }
                let stored: Vec<Value> = obj
                    .get("spec")
                    .and_then(|s| s.get("versions"))
                    .and_then(Value::as_array)
                    .map(|vs| {
                        vs.iter()
                            .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                            .filter_map(|v| v.get("name").cloned())
                            .collect()
                    })
                    .unwrap_or_default();
                let ts = obj
                    .get("status")
                    .and_then(|s| s.get("conditions"))
                    .and_then(|c| c.get(0))
                    .and_then(|c| c.get("lastTransitionTime"))
                    .cloned()
                    .unwrap_or_else(|| json!(now_rfc3339()));
                obj["status"] = json!({
                    "acceptedNames": accepted,
                    "conditions": [
                        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": ts},
                        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": ts}
                    ],
                    "storedVersions": stored,
                });
            }
            "Namespace" if creating => {
                obj["status"] = json!({"phase": "Active"});
            }
            "PersistentVolumeClaim" if creating => {
                obj["status"] = json!({"phase": "Pending"});
            }
            _ => {}
        }
    }

    fn register_crd(&mut self, crd: &Value) {
        if let Some(nt) = type_from_crd(crd) {
            // A CRD may not shadow a built-in type.
            if let Some(existing) = self.types.get(&nt.key()) {
                if !existing.custom {
                    return;
                }
            }
            self.types.insert(nt.key(), Arc::new(nt));
        }
    }

    fn unregister_crd(&mut self, crd: &Value) {
        let Some(nt) = type_from_crd(crd) else { return };
        let key = nt.key();
        if !self.types.get(&key).is_some_and(|t| t.custom) {
            return;
        }
        let t = self.types.remove(&key).unwrap_or_else(|| Arc::new(nt));
        let names: Vec<ObjKey> = self
            .objects
            .get(&key)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        for (ns, name) in names {
            self.remove(&t, &ns, &name);
        }
        self.objects.remove(&key);
        self.label_index.remove(&key);
    }

    fn check_namespace(&self, t: &ResourceType, ns: &str, name: &str) -> Result<(), ApiError> {
        if !t.namespaced {
            return Ok(());
        }
        match self.get(&(String::new(), "namespaces".into()), "", ns) {
            None => Err(ApiError::not_found("", "namespaces", ns)),
            Some(n) if n.get("status").and_then(|s| s.get("phase")).and_then(Value::as_str) == Some("Terminating") => {
                Err(ApiError::forbidden(format!(
                    "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    crate::util::qualified(&t.group, &t.plural),
                    name,
                ))
                .with_details(json!({"group": t.group, "kind": t.plural, "causes": [{"reason": "NamespaceTerminating", "message": format!("namespace {ns} is being terminated"), "field": "metadata.namespace"}]})))
            }
            Some(_) => Ok(()),
        }
    }

    fn check_type_meta(t: &ResourceType, body: &Value, version: &str) -> Result<(), ApiError> {
        if let Some(k) = body.get("kind").and_then(Value::as_str) {
            if k != t.kind {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({}) does not match the expected API version ({})",
                    body.get("apiVersion").and_then(Value::as_str).unwrap_or(""),
                    t.api_version(if version.is_empty() {
                        t.storage_version()
                    } else {
                        version
                    })
                ))
                .with_details(json!({"kind": k})));
            }
        }
        if let Some(av) = body.get("apiVersion").and_then(Value::as_str) {
            let ok = t.versions.iter().any(|v| t.api_version(v) == av);
            if !ok {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({av}) does not match the expected API version ({})",
                    t.api_version(if version.is_empty() { t.storage_version() } else { version })
                )));
            }
        }
        Ok(())
    }

    fn validate_name(t: &ResourceType, name: &str) -> Result<(), ApiError> {
        let err = match t.kind.as_str() {
            "Namespace" | "Service" => validate_dns1123_label(name),
            _ => validate_dns1123_subdomain(name),
        };
        if let Some(m) = err {
            return Err(ApiError::invalid(
                &t.kind,
                &t.group,
                name,
                vec![("metadata.name".into(), m)],
            ));
        }
        Ok(())
    }

    fn validate_object(t: &ResourceType, obj: &Value) -> Result<(), ApiError> {
        let name = meta_str(obj, "name").unwrap_or("");
        let mut causes = Vec::new();
        if let Some(labels) = obj.get("metadata").and_then(|m| m.get("labels")) {
            match labels.as_object() {
                Some(l) => {
                    for (k, v) in l {
                        if !v.is_string() {
                            causes.push((
                                format!("metadata.labels.{k}"),
                                "Invalid value: label values must be strings".to_string(),
                            ));
                        }
                    }
                }
                None if !labels.is_null() => causes.push((
                    "metadata.labels".into(),
                    "Invalid value: must be a map".into(),
                )),
                None => {}
            }
        }
        match t.kind.as_str() {
            "CustomResourceDefinition" => {
                if let Some(spec) = obj.get("spec") {
                    let group = spec.get("group").and_then(Value::as_str).unwrap_or("");
                    let plural = spec
                        .get("names")
                        .and_then(|n| n.get("plural"))
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    if name != format!("{plural}.{group}") {
                        causes.push((
                            "metadata.name".into(),
                            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
                        ));
                    }
                    if type_from_crd(obj).is_none() {
                        causes.push(("spec".into(), "Invalid value: spec.names.kind, spec.names.plural, spec.group and at least one served version are required".into()));
                    }
                } else {
                    causes.push(("spec".into(), "Required value".into()));
                }
            }
            "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => {
                let spec = obj.get("spec");
                if spec.and_then(|s| s.get("selector")).is_none() {
                    causes.push(("spec.selector".into(), "Required value".into()));
                }
                let containers = spec
                    .and_then(|s| s.get("template"))
                    .and_then(|t| t.get("spec"))
                    .and_then(|s| s.get("containers"))
                    .and_then(Value::as_array);
                if containers.is_none_or(|c| c.is_empty()) {
                    causes.push((
                        "spec.template.spec.containers".into(),
                        "Required value".into(),
                    ));
                }
                if let Some(r) = spec.and_then(|s| s.get("replicas")) {
                    if r.as_i64().is_none_or(|r| r < 0) {
                        causes.push((
                            "spec.replicas".into(),
                            format!("Invalid value: {r}: must be greater than or equal to 0"),
                        ));
                    }
                }
            }
            _ => {}
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(&t.kind, &t.group, name, causes))
        }
    }

    /// POST: create an object. `managed` carries managedFields computed by an apply.
    pub fn create(
        &mut self,
        t: &Arc<ResourceType>,
        ns: Option<&str>,
        body: Value,
        ctx: &WriteCtx,
    ) -> Result<Value, ApiError> {
        self.create_inner(t, ns, body, ctx, false)
    }

    fn create_inner(
        &mut self,
        t: &Arc<ResourceType>,
        ns: Option<&str>,
        mut body: Value,
        ctx: &WriteCtx,
        from_apply: bool,
    ) -> Result<Value, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        Self::check_type_meta(t, &body, &ctx.version)?;
        let ns = if t.namespaced {
            let url_ns = ns.ok_or_else(|| {
                ApiError::bad_request("a namespace is required to create a namespaced object")
            })?;
            if let Some(bns) = meta_str(&body, "namespace") {
                if !bns.is_empty() && bns != url_ns {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
            }
            url_ns.to_string()
        } else {
            String::new()
        };
        let mut name = meta_str(&body, "name").unwrap_or("").to_string();
        if name.is_empty() {
            if let Some(g) = meta_str(&body, "generateName") {
                name = format!("{g}{}", random_suffix(5));
            }
        }
        Self::validate_name(t, &name)?;
        self.check_namespace(t, &ns, &name)?;
        if self.get(&t.key(), &ns, &name).is_some() {
            return Err(ApiError::already_exists(&t.group, &t.plural, &name));
        }
        body["apiVersion"] = json!(t.api_version(t.storage_version()));
        body["kind"] = json!(t.kind);
        if t.status_subresource && !from_apply {
            if let Some(m) = body.as_object_mut() {
                m.remove("status");
            }
        }
        {
            let md = meta_mut(&mut body);
            md.insert("name".into(), json!(name));
            if t.namespaced {
                md.insert("namespace".into(), json!(ns));
            } else {
                md.remove("namespace");
            }
            md.insert("uid".into(), json!(new_uid()));
            md.insert("creationTimestamp".into(), json!(now_rfc3339()));
            md.remove("resourceVersion");
            md.remove("deletionTimestamp");
            md.remove("deletionGracePeriodSeconds");
            md.remove("selfLink");
            if !from_apply {
                md.remove("managedFields");
            }
            if t.has_generation() {
                md.insert("generation".into(), json!(1));
            } else {
                md.remove("generation");
            }
        }
        typecheck(t, &body)?;
        structural(t, &mut body, ctx.strict, true)?;
        apply_defaults(&t.kind, &mut body, &mut self.alloc);
        self.system_hooks(t, &mut body, true);
        Self::validate_object(t, &body)?;
        if !from_apply {
            ssa::track_update(
                t,
                None,
                &mut body,
                &ctx.manager,
                &t.api_version(version_or(t, &ctx.version)),
                &ctx.subresource,
            );
        }
        if ctx.dry_run {
            return Ok(with_version(t, &body, &ctx.version));
        }
        let rv = self.bump();
        meta_mut(&mut body).insert("resourceVersion".into(), json!(rv.to_string()));
        if t.kind == "CustomResourceDefinition" && !t.custom {
            self.register_crd(&body);
        }
        let stored = self.store(t, &ns, &name, body, "ADDED");
        Ok(with_version(t, &stored, &ctx.version))
    }

    /// PUT (main resource or /status).
    pub fn update(
        &mut self,
        t: &Arc<ResourceType>,
        ns: &str,
        name: &str,
        body: Value,
        ctx: &WriteCtx,
    ) -> Result<Value, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        Self::check_type_meta(t, &body, &ctx.version)?;
        if let Some(bn) = meta_str(&body, "name") {
            if bn != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({bn}) does not match the name on the URL ({name})"
                )));
            }
        }
        if let Some(bns) = meta_str(&body, "namespace") {
            if t.namespaced && !bns.is_empty() && bns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        let old = self
            .get(&t.key(), ns, name)
            .ok_or_else(|| ApiError::not_found(&t.group, &t.plural, name))?;
        if let Some(rv) = meta_str(&body, "resourceVersion") {
            if !rv.is_empty() && Some(rv) != meta_str(&old, "resourceVersion") {
                return Err(ApiError::conflict(&t.group, &t.plural, name));
            }
        }
        self.finish_update(t, ns, name, &old, body, ctx, true)
    }

    /// Shared tail of PUT, PATCH and apply: merge server-owned parts, bump generation, store.
    #[allow(clippy::too_many_arguments)]
    fn finish_update(
        &mut self,
        t: &Arc<ResourceType>,
        ns: &str,
        name: &str,
        old: &Arc<Value>,
        mut new: Value,
        ctx: &WriteCtx,
        track: bool,
    ) -> Result<Value, ApiError> {
        let old_v: &Value = old;
        if ctx.subresource == "status" {
            let status = new.get("status").cloned();
            let managed = new
                .get("metadata")
                .and_then(|m| m.get("managedFields"))
                .cloned();
            let mut n = old_v.clone();
            match status {
                Some(s) => n["status"] = s,
                None => {
                    if let Some(m) = n.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            if !track {
                if let Some(mf) = managed {
                    meta_mut(&mut n).insert("managedFields".into(), mf);
                }
            }
            new = n;
        } else if t.status_subresource {
            match old_v.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        new["apiVersion"] = json!(t.api_version(t.storage_version()));
        new["kind"] = json!(t.kind);
        {
            let om = old_v.get("metadata").cloned().unwrap_or(json!({}));
            let md = meta_mut(&mut new);
            for k in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "resourceVersion",
            ] {
                match om.get(k) {
                    Some(v) => {
                        md.insert(k.into(), v.clone());
                    }
                    None => {
                        md.remove(k);
                    }
                }
            }
            if track {
                match om.get("managedFields") {
                    Some(v) => {
                        md.insert("managedFields".into(), v.clone());
                    }
                    None => {
                        md.remove("managedFields");
                    }
                }
            }
        }
        if t.kind == "Service" {
            // clusterIP and node ports are immutable once allocated; an update that omits them keeps them.
            let old_spec = old_v.get("spec").cloned().unwrap_or(json!({}));
            if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
                for k in ["clusterIP", "clusterIPs"] {
                    if spec.get(k).is_none_or(|v| v.is_null() || v == "") {
                        if let Some(v) = old_spec.get(k) {
                            spec.insert(k.into(), v.clone());
                        }
                    }
                }
            }
        }
        if t.kind == "Namespace" {
            if let Some(s) = old_v.get("status") {
                new["status"] = s.clone();
            }
        }
        typecheck(t, &new)?;
        structural(t, &mut new, ctx.strict, true)?;
        apply_defaults(&t.kind, &mut new, &mut self.alloc);
        self.system_hooks(t, &mut new, false);
        Self::validate_object(t, &new)?;
        if t.has_generation() && strip_for_generation(&new) != strip_for_generation(old_v) {
            let g = old_v
                .get("metadata")
                .and_then(|m| m.get("generation"))
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut new).insert("generation".into(), json!(g + 1));
        }
        if track {
            ssa::track_update(
                t,
                Some(old_v),
                &mut new,
                &ctx.manager,
                &t.api_version(version_or(t, &ctx.version)),
                &ctx.subresource,
            );
        }
        if new == *old_v {
            return Ok(with_version(t, old_v, &ctx.version));
        }
        if ctx.dry_run {
            return Ok(with_version(t, &new, &ctx.version));
        }
        let terminating = new
            .get("metadata")
            .and_then(|m| m.get("deletionTimestamp"))
            .is_some();
        let no_finalizers = new
            .get("metadata")
            .and_then(|m| m.get("finalizers"))
            .and_then(Value::as_array)
            .is_none_or(|f| f.is_empty());
        if terminating && no_finalizers && t.kind != "Namespace" {
            let removed = self.remove(t, ns, name);
            self.collect_garbage(old_v, false);
            return Ok(with_version(
                t,
                removed.as_deref().unwrap_or(&new),
                &ctx.version,
            ));
        }
        let rv = self.bump();
        meta_mut(&mut new).insert("resourceVersion".into(), json!(rv.to_string()));
        if t.kind == "CustomResourceDefinition" && !t.custom {
            self.register_crd(&new);
        }
        let stored = self.store(t, ns, name, new, "MODIFIED");
        Ok(with_version(t, &stored, &ctx.version))
    }

    /// PATCH with a non-apply patch type.
    pub fn patch(
        &mut self,
        t: &Arc<ResourceType>,
        ns: &str,
        name: &str,
        ptype: PatchType,
        patch: &Value,
        ctx: &WriteCtx,
    ) -> Result<Value, ApiError> {
        let old = self
            .get(&t.key(), ns, name)
            .ok_or_else(|| ApiError::not_found(&t.group, &t.plural, name))?;
        let mut doc = with_version(t, &old, &ctx.version);
        match ptype {
            PatchType::Merge => {
                if !patch.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                crate::patch::merge_patch(&mut doc, patch)
            }
            PatchType::Json => crate::patch::json_patch(&mut doc, patch)?,
            PatchType::Strategic => {
                if !patch.is_object() {
                    return Err(ApiError::bad_request(
                        "a strategic merge patch must be a JSON object",
                    ));
                }
                if t.custom {
                    return Err(ApiError::unsupported_media_type(
                        "application/strategic-merge-patch+json (not supported for custom resources)",
                    ));
                }
                crate::patch::strategic_merge_patch(t, &mut doc, patch)?
            }
        }
        if !doc.is_object() {
            return Err(ApiError::new(
                422,
                "Invalid",
                "the patch must leave an object",
            ));
        }
        // A resourceVersion in the patch is a precondition.
        if let Some(rv) = patch
            .get("metadata")
            .and_then(|m| m.get("resourceVersion"))
            .and_then(Value::as_str)
        {
            if Some(rv) != meta_str(&old, "resourceVersion") {
                return Err(ApiError::conflict(&t.group, &t.plural, name));
            }
        }
        if meta_str(&doc, "name") != Some(name) {
            return Err(ApiError::bad_request(
                "metadata.name cannot be changed by a patch",
            ));
        }
        self.finish_update(t, ns, name, &old, doc, ctx, true)
    }

    /// PATCH with application/apply-patch+yaml: server-side apply (creates when absent).
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        t: &Arc<ResourceType>,
        ns: &str,
        name: &str,
        applied: Value,
        force: bool,
        ctx: &WriteCtx,
    ) -> Result<Value, ApiError> {
        if !applied.is_object() {
            return Err(ApiError::bad_request(
                "the applied configuration must be an object",
            ));
        }
        if applied
            .get("apiVersion")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
            || applied
                .get("kind")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
        {
            return Err(ApiError::bad_request(
                "invalid object type: apiVersion and kind must be set in an applied configuration",
            ));
        }
        Self::check_type_meta(t, &applied, &ctx.version)?;
        match meta_str(&applied, "name") {
            Some(n) if n == name => {}
            Some(n) => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )))
            }
            None => {
                return Err(ApiError::bad_request(
                    "metadata.name is required in an applied configuration",
                ))
            }
        }
        if t.namespaced {
            if let Some(bns) = meta_str(&applied, "namespace") {
                if !bns.is_empty() && bns != ns {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
            }
        }
        let mut applied = applied;
        if let Some(m) = applied.as_object_mut() {
            if ctx.subresource == "status" {
                m.retain(|k, _| {
                    matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status")
                });
                if let Some(md) = m.get_mut("metadata").and_then(Value::as_object_mut) {
                    md.retain(|k, _| {
                        matches!(k.as_str(), "name" | "namespace" | "resourceVersion")
                    });
                }
            } else if t.status_subresource {
                m.remove("status");
            }
        }
        let live = self.get(&t.key(), ns, name);
        let api_version = t.api_version(version_or(t, &ctx.version));
        let skeleton =
            json!({"apiVersion": api_version, "kind": t.kind, "metadata": {"name": name}});
        let live_v: &Value = live.as_deref().unwrap_or(&skeleton);
        if let (Some(l), Some(rv)) = (&live, meta_str(&applied, "resourceVersion")) {
            if Some(rv) != meta_str(l, "resourceVersion") {
                return Err(ApiError::conflict(&t.group, &t.plural, name));
            }
        }
        if live.is_none() {
            self.check_namespace(t, ns, name)?;
        }
        // Unknown fields of custom resources are pruned (or rejected) before ownership is computed.
        // Defaults are the server's, not the applier's: they are filled in after the merge.
        typecheck(t, &applied)?;
        structural(t, &mut applied, ctx.strict, false)?;
        let kind = t.kind.clone();
        let schema = t.schema.clone().filter(|_| t.custom);
        let alloc = &mut self.alloc;
        let res = ssa::apply(
            ApplyArgs {
                t,
                live: live_v,
                applied: &applied,
                manager: &ctx.manager,
                force,
                api_version: &api_version,
                subresource: &ctx.subresource,
            },
            |o| {
                if let Some(s) = &schema {
                    crate::schema::apply_defaults(s, o);
                }
                apply_defaults(&kind, o, alloc)
            },
        )?;
        match (live, res) {
            (Some(l), ApplyResult::NoOp) => Ok(with_version(t, &l, &ctx.version)),
            (Some(l), ApplyResult::Changed(v)) => {
                self.finish_update(t, ns, name, &l, v, ctx, false)
            }
            (None, ApplyResult::Changed(v)) => {
                self.create_inner(t, if t.namespaced { Some(ns) } else { None }, v, ctx, true)
            }
            (None, ApplyResult::NoOp) => Err(ApiError::bad_request("empty applied configuration")),
        }
    }

    /// DELETE one object: finalizers and namespaces go through deletionTimestamp first.
    pub fn delete(
        &mut self,
        t: &Arc<ResourceType>,
        ns: &str,
        name: &str,
        opts: &DeleteOpts,
        version: &str,
    ) -> Result<Value, ApiError> {
        let old = self
            .get(&t.key(), ns, name)
            .ok_or_else(|| ApiError::not_found(&t.group, &t.plural, name))?;
        if let Some(uid) = &opts.precondition_uid {
            if Some(uid.as_str()) != meta_str(&old, "uid") {
                return Err(ApiError::conflict(&t.group, &t.plural, name));
            }
        }
        if let Some(rv) = &opts.precondition_rv {
            if Some(rv.as_str()) != meta_str(&old, "resourceVersion") {
                return Err(ApiError::conflict(&t.group, &t.plural, name));
            }
        }
        let has_finalizers = old
            .get("metadata")
            .and_then(|m| m.get("finalizers"))
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if t.kind == "Namespace" || has_finalizers {
            if old
                .get("metadata")
                .and_then(|m| m.get("deletionTimestamp"))
                .is_some()
            {
                return Ok(with_version(t, &old, version));
            }
            let mut n = (*old).clone();
            {
                let md = meta_mut(&mut n);
                md.insert("deletionTimestamp".into(), json!(now_rfc3339()));
                md.insert("deletionGracePeriodSeconds".into(), json!(0));
            }
            if t.kind == "Namespace" {
                n["status"] = json!({"phase": "Terminating"});
            }
            if opts.dry_run {
                return Ok(with_version(t, &n, version));
            }
            let rv = self.bump();
            meta_mut(&mut n).insert("resourceVersion".into(), json!(rv.to_string()));
            let stored = self.store(t, ns, name, n, "MODIFIED");
            return Ok(with_version(t, &stored, version));
        }
        if opts.dry_run {
            return Ok(with_version(t, &old, version));
        }
        let removed = self.remove(t, ns, name);
        self.collect_garbage(&old, opts.orphan);
        Ok(with_version(t, removed.as_deref().unwrap_or(&old), version))
    }

    /// Delete dependents of a deleted owner (background propagation), transitively.
    fn collect_garbage(&mut self, owner: &Value, orphan: bool) {
        let mut work: Vec<String> = meta_str(owner, "uid")
            .map(str::to_string)
            .into_iter()
            .collect();
        while let Some(uid) = work.pop() {
            let Some(deps) = self.owners.remove(&uid) else {
                continue;
            };
            for (key, ns, name) in deps {
                let Some(t) = self.types.get(&key).cloned() else {
                    continue;
                };
                let Some(obj) = self.get(&key, &ns, &name) else {
                    continue;
                };
                if orphan {
                    let mut o = (*obj).clone();
                    if let Some(refs) = o
                        .get_mut("metadata")
                        .and_then(|m| m.get_mut("ownerReferences"))
                        .and_then(Value::as_array_mut)
                    {
                        refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid.as_str()));
                    }
                    let rv = self.bump();
                    meta_mut(&mut o).insert("resourceVersion".into(), json!(rv.to_string()));
                    self.store(&t, &ns, &name, o, "MODIFIED");
                    continue;
                }
                let opts = DeleteOpts::default();
                if self.delete(&t, &ns, &name, &opts, "").is_ok() {
                    if let Some(u) = meta_str(&obj, "uid") {
                        work.push(u.to_string());
                    }
                }
            }
        }
    }

    /// ServiceAccount controller step: every active namespace has a `default` ServiceAccount.
    pub fn ensure_default_service_accounts(&mut self) {
        let ns_key: ResKey = (String::new(), "namespaces".into());
        let sa_key: ResKey = (String::new(), "serviceaccounts".into());
        let active: Vec<String> = self
            .iter(&ns_key, None)
            .filter(|n| {
                n.get("metadata")
                    .and_then(|m| m.get("deletionTimestamp"))
                    .is_none()
            })
            .filter_map(|n| meta_str(n, "name").map(str::to_string))
            .collect();
        let t = self.type_by_kind("", "serviceaccounts");
        for ns in active {
            if self.get(&sa_key, &ns, "default").is_none() {
                let body = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}});
                let _ = self.create(
                    &t,
                    Some(&ns),
                    body,
                    &WriteCtx::internal("kube-controller-manager", ""),
                );
            }
        }
    }

    /// Namespace controller step: empty terminating namespaces, then remove them.
    pub fn finalize_namespaces(&mut self) {
        let ns_key: ResKey = (String::new(), "namespaces".into());
        let terminating: Vec<String> = self
            .iter(&ns_key, None)
            .filter(|n| {
                n.get("metadata")
                    .and_then(|m| m.get("deletionTimestamp"))
                    .is_some()
            })
            .filter_map(|n| meta_str(n, "name").map(str::to_string))
            .collect();
        for ns in terminating {
            let mut remaining = 0usize;
            let types: Vec<Arc<ResourceType>> = self
                .types
                .values()
                .filter(|t| t.namespaced)
                .cloned()
                .collect();
            for t in types {
                let names: Vec<String> = self
                    .iter(&t.key(), Some(&ns))
                    .filter_map(|o| meta_str(o, "name").map(str::to_string))
                    .collect();
                for name in names {
                    let _ = self.delete(&t, &ns, &name, &DeleteOpts::default(), "");
                    if self.get(&t.key(), &ns, &name).is_some() {
                        remaining += 1;
                    }
                }
            }
            if remaining == 0 {
                let t = self.type_by_kind("", "namespaces");
                self.remove(&t, "", &ns);
            }
        }
    }

    /// A controller's status write (manager recorded with subresource "status").
    pub fn set_status(
        &mut self,
        key: &ResKey,
        ns: &str,
        name: &str,
        manager: &str,
        f: impl FnOnce(&Value) -> Value,
    ) -> bool {
        let Some(t) = self.types.get(key).cloned() else {
            return false;
        };
        let Some(old) = self.get(key, ns, name) else {
            return false;
        };
        let status = f(&old);
        if old.get("status") == Some(&status) {
            return false;
        }
        let mut new = (*old).clone();
        new["status"] = status;
        let ctx = WriteCtx::internal(manager, "status");
        if t.kind == "Namespace" {
            // Namespace status is otherwise preserved on update; write it directly.
            let rv = self.bump();
            meta_mut(&mut new).insert("resourceVersion".into(), json!(rv.to_string()));
            self.store(&t, ns, name, new, "MODIFIED");
            return true;
        }
        self.finish_update(&t, ns, name, &old, new, &ctx, true)
            .is_ok()
    }

    /// A controller's write to the main resource (spec or metadata), recorded as an Update by `manager`.
    pub fn internal_update(
        &mut self,
        key: &ResKey,
        ns: &str,
        name: &str,
        manager: &str,
        f: impl FnOnce(&mut Value),
    ) -> bool {
        let Some(t) = self.types.get(key).cloned() else {
            return false;
        };
        let Some(old) = self.get(key, ns, name) else {
            return false;
        };
        let mut new = (*old).clone();
        f(&mut new);
        if new == *old {
            return false;
        }
        let ctx = WriteCtx::internal(manager, "");
        self.finish_update(&t, ns, name, &old, new, &ctx, true)
            .is_ok()
    }

    /// Objects of type `key` whose ownerReferences name `uid`, in name order.
    pub fn dependents(&self, uid: &str, key: &ResKey) -> Vec<Arc<Value>> {
        self.owners
            .get(uid)
            .map(|set| {
                set.iter()
                    .filter(|(k, _, _)| k == key)
                    .filter_map(|(k, ns, n)| self.get(k, ns, n))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn type_for_key(&self, key: &ResKey) -> Option<Arc<ResourceType>> {
        self.types.get(key).cloned()
    }

    /// Objects of one type across namespaces as (namespace, name, object) — for controllers.
    pub fn snapshot(&self, key: &ResKey) -> Vec<Arc<Value>> {
        self.iter(key, None).cloned().collect()
    }
}

fn version_or<'a>(t: &'a ResourceType, v: &'a str) -> &'a str {
    if v.is_empty() {
        t.storage_version()
    } else {
        v
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
}

fn encode_continue(k: &ObjKey) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}\u{0}{}", k.0, k.1))
}

fn decode_continue(c: &str) -> Option<ObjKey> {
    use base64::Engine;
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()?;
    let s = String::from_utf8(b).ok()?;
    let (a, b) = s.split_once('\u{0}')?;
    Some((a.to_string(), b.to_string()))
}

/// Ensure `obj.status.conditions` holds `cond` (by type), keeping lastTransitionTime when status is unchanged.
pub fn set_condition(status: &mut Map<String, Value>, cond: Value) {
    let conds = status.entry("conditions").or_insert_with(|| json!([]));
    if !conds.is_array() {
        *conds = json!([]);
    }
    let arr = conds.as_array_mut().expect("array ensured above");
    let ty = cond.get("type").cloned();
    match arr.iter_mut().find(|c| c.get("type") == ty.as_ref()) {
        Some(existing) => {
            let same_status = existing.get("status") == cond.get("status");
            let mut c = cond;
            if same_status {
                for k in ["lastTransitionTime", "lastUpdateTime", "lastHeartbeatTime"] {
                    if let Some(v) = existing.get(k) {
                        if c.get(k).is_some() {
                            c[k] = v.clone();
                        }
                    }
                }
            }
            *existing = c;
        }
        None => arr.push(cond),
    }
}
