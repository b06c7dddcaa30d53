//! One engine node per add-on or app: apply its objects in order, wait until every one is
//! healthy, run its checks, prune what left Git, and keep its inventory.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use serde_json::Value;

use crate::engine::{Action, BoxFuture, Layer, NodeCtx, NodeError, NodeOutcome, NodeSpec};
use crate::render::Manifest;

use super::checks::HttpCheck;
use super::connector::Connector;
use super::contents;
use super::converge::converge;
use super::discovery::{KindMap, Resolver, Target};
use super::error::KubeError;
use super::health::{health, Health};
use super::object::{apply_order, finish, prepare, ApplyPhase, Desired, Marks, ObjectRef};
use super::ops;
use super::seals::SealStore;

/// Everything the provider needs to converge one component.
#[derive(Clone, Debug)]
pub struct ComponentSpec {
    pub env: String,
    /// The commit the manifests were rendered from (annotated on every object).
    pub commit: String,
    /// [`Layer::Addons`] or [`Layer::Apps`].
    pub layer: Layer,
    pub name: String,
    /// Namespace for namespaced objects that name none (`default` when unset).
    pub namespace: Option<String>,
    pub manifests: Vec<Manifest>,
    /// Names of components this one waits for (add-ons or apps).
    pub depends_on: Vec<String>,
    /// The node's deadline: apply, health, checks and prune together.
    pub wait: Duration,
    /// Take back fields another field manager holds (the objects are phoenix's: the ownership
    /// check ran first); the run says who held them. Off: a conflict fails the object.
    pub force_conflicts: bool,
    /// Fields left to other managers: already stripped from the manifests, and not compared by
    /// a diff.
    pub leave_fields: Vec<crate::env::model::LeftFields>,
    pub checks: Vec<HttpCheck>,
    /// Fills in what the manifests can only know once the layers below have run (the EBS volume
    /// id of a CSI PersistentVolume): called before the component is applied or compared.
    pub completion: Option<Arc<dyn Completion>>,
}

/// Why a [`Completion`] runs: before an apply (what is missing is an error, and it may prepare
/// the cluster for the apply), or before a comparison (what is missing stays as rendered, so it
/// shows as drift).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompletionFor {
    Apply,
    Compare,
}

/// Completes a component's rendered manifests from the live world, at run time.
pub trait Completion: Send + Sync + std::fmt::Debug {
    fn complete<'a>(
        &'a self,
        client: &'a ::kube::Client,
        manifests: &'a mut [Manifest],
        purpose: CompletionFor,
        progress: &'a (dyn Fn(String) + Send + Sync),
    ) -> BoxFuture<'a, Result<(), NodeError>>;
}

impl ComponentSpec {
    /// This spec with its manifests completed (itself when it needs no completion).
    pub async fn completed(
        &self,
        client: &::kube::Client,
        purpose: CompletionFor,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<std::borrow::Cow<'_, ComponentSpec>, NodeError> {
        let Some(completion) = &self.completion else {
            return Ok(std::borrow::Cow::Borrowed(self));
        };
        let mut spec = self.clone();
        completion
            .complete(client, &mut spec.manifests, purpose, progress)
            .await?;
        Ok(std::borrow::Cow::Owned(spec))
    }

    pub fn marks(&self) -> Marks {
        Marks {
            env: self.env.clone(),
            component: self.name.clone(),
            layer: self.layer,
            commit: self.commit.clone(),
        }
    }

    pub fn node_id(&self) -> String {
        node_id(self.layer, &self.name)
    }

    fn default_namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

/// The engine node id of a component: `addons/NAME` or `apps/NAME`.
pub fn node_id(layer: Layer, name: &str) -> String {
    format!("{}/{name}", layer.as_str())
}

/// Run-wide settings of the provider.
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// `--force-conflicts`: take ownership of conflicting fields in every component.
    pub force_conflicts: bool,
    /// API requests in flight at once per component.
    pub concurrency: usize,
    /// How often health and checks are polled.
    pub poll_interval: Duration,
    /// Where a converged component records what it proved in sync, for diffs (see `seals`).
    pub seals: SealStore,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            force_conflicts: false,
            concurrency: 32,
            poll_interval: Duration::from_millis(500),
            seals: SealStore::none(),
        }
    }
}

/// One node per component, sharing one discovery cache. `dependsOn` names resolve to the same
/// layer first, then to the other one; a name that is neither is left as `LAYER/NAME` for the
/// graph's validation to report.
pub fn component_nodes(
    connector: Arc<dyn Connector>,
    components: Vec<ComponentSpec>,
    opts: &ApplyOptions,
) -> Vec<(NodeSpec, Arc<dyn Action>)> {
    let resolver = Arc::new(Resolver::new());
    let known: HashSet<(Layer, String)> = components
        .iter()
        .map(|c| (c.layer, c.name.clone()))
        .collect();
    components
        .into_iter()
        .map(|spec| {
            let deps: Vec<String> = spec
                .depends_on
                .iter()
                .map(|dep| {
                    let other = match spec.layer {
                        Layer::Apps => Layer::Addons,
                        _ => Layer::Apps,
                    };
                    if !known.contains(&(spec.layer, dep.clone()))
                        && known.contains(&(other, dep.clone()))
                    {
                        node_id(other, dep)
                    } else {
                        node_id(spec.layer, dep)
                    }
                })
                .collect();
            let what = match spec.layer {
                Layer::Addons => "add-on",
                _ => "app",
            };
            let node = NodeSpec::new(
                spec.node_id(),
                spec.layer,
                spec.wait,
                format!("{what} {} applied and healthy", spec.name),
            )
            .depends_on(deps);
            let action: Arc<dyn Action> = Arc::new(ComponentAction {
                inner: Arc::new(Inner {
                    connector: Arc::clone(&connector),
                    spec,
                    opts: opts.clone(),
                    resolver: Arc::clone(&resolver),
                }),
            });
            (node, action)
        })
        .collect()
}

struct Inner {
    connector: Arc<dyn Connector>,
    spec: ComponentSpec,
    opts: ApplyOptions,
    resolver: Arc<Resolver>,
}

struct ComponentAction {
    inner: Arc<Inner>,
}

impl Action for ComponentAction {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, Result<NodeOutcome, NodeError>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let client = inner.connector.client().await?;
            let progress = |message: String| ctx.progress(message);
            let spec = inner
                .spec
                .completed(&client, CompletionFor::Apply, &progress)
                .await?;
            converge(&client, &spec, &inner.opts, &inner.resolver, &ctx).await
        })
    }
}

/// How a kind of a component is addressed.
#[derive(Clone, Debug)]
pub(crate) enum Kind {
    Served(Target),
    /// Defined by a CRD of this component that the cluster does not serve yet.
    FromCrd {
        namespaced: bool,
    },
    /// Not served and not defined here (only in diffs, where it means "missing").
    Unserved,
}

pub(crate) type KindKey = (String, String);

pub(crate) fn kind_key(id: &ObjectRef) -> KindKey {
    (id.api_version.clone(), id.kind.clone())
}

/// Kinds defined by the component's own CRDs, with their scope.
fn crd_kinds(objects: &[Desired]) -> HashMap<KindKey, bool> {
    let mut out = HashMap::new();
    for d in objects.iter().filter(|d| d.phase == ApplyPhase::Crds) {
        let spec = &d.body["spec"];
        let (Some(group), Some(kind)) = (spec["group"].as_str(), spec["names"]["kind"].as_str())
        else {
            continue;
        };
        let namespaced = spec["scope"].as_str() != Some("Cluster");
        for v in spec["versions"].as_array().into_iter().flatten() {
            if let Some(version) = v["name"].as_str() {
                out.insert((format!("{group}/{version}"), kind.to_string()), namespaced);
            }
        }
    }
    out
}

/// Resolves every kind of the component, discovering once more before calling one unknown.
pub(crate) async fn resolve_kinds(
    client: &::kube::Client,
    resolver: &Resolver,
    objects: &[Desired],
    allow_unserved: bool,
) -> Result<(u64, HashMap<KindKey, Kind>), KubeError> {
    let provided = crd_kinds(objects);
    let (mut generation, mut map) = resolver.current(client).await?;
    let mut refreshed = false;
    loop {
        let mut kinds = HashMap::new();
        let mut missing: Option<&Desired> = None;
        for d in objects {
            let key = kind_key(&d.id);
            if kinds.contains_key(&key) {
                continue;
            }
            let kind = match map.get(&key.0, &key.1) {
                Some(t) => Kind::Served(t.clone()),
                None => match provided.get(&key) {
                    Some(&namespaced) => Kind::FromCrd { namespaced },
                    None => {
                        missing.get_or_insert(d);
                        Kind::Unserved
                    }
                },
            };
            kinds.insert(key, kind);
        }
        match missing {
            None => return Ok((generation, kinds)),
            Some(_) if !refreshed => {
                (generation, map) = resolver.refresh(client, generation).await?;
                refreshed = true;
            }
            Some(_) if allow_unserved => return Ok((generation, kinds)),
            Some(d) => {
                return Err(KubeError::UnknownKind {
                    source_file: d.source.clone(),
                    line: d.line,
                    api_version: d.id.api_version.clone(),
                    kind: d.id.kind.clone(),
                })
            }
        }
    }
}

/// Prepares a component's objects: stamped, namespaced and ordered, with how to address each.
pub(crate) async fn plan_objects(
    client: &::kube::Client,
    resolver: &Resolver,
    spec: &ComponentSpec,
    allow_unserved: bool,
) -> Result<(u64, Vec<Desired>, HashMap<KindKey, Kind>), KubeError> {
    let marks = spec.marks();
    let mut objects = prepare(&spec.manifests, &marks)?;
    let (generation, kinds) = resolve_kinds(client, resolver, &objects, allow_unserved).await?;
    finish(
        &mut objects,
        |id| match kinds.get(&kind_key(id)) {
            Some(Kind::Served(t)) => t.namespaced,
            Some(Kind::FromCrd { namespaced }) => *namespaced,
            Some(Kind::Unserved) | None => id.namespace.is_some(),
        },
        spec.default_namespace(),
    )?;
    leave_replicas_to_autoscalers(&mut objects);
    Ok((generation, objects, kinds))
}

/// A workload scaled by a HorizontalPodAutoscaler of the same component is applied without
/// `spec.replicas`: the autoscaler sets it (through the scale subresource, as its own field
/// manager), and applying Git's count would take it back on every rebuild and show as drift in
/// every diff. As if the component listed it under `leaveFields`.
fn leave_replicas_to_autoscalers(objects: &mut [Desired]) {
    let targets: HashSet<(String, String, Option<String>, String)> = objects
        .iter()
        .filter(|d| d.id.group() == "autoscaling" && d.id.kind == "HorizontalPodAutoscaler")
        .filter_map(|hpa| {
            let target = &hpa.body["spec"]["scaleTargetRef"];
            let api_version = target["apiVersion"].as_str().unwrap_or("apps/v1");
            let group = api_version.split_once('/').map_or("", |(g, _)| g);
            Some((
                group.to_string(),
                target["kind"].as_str()?.to_string(),
                hpa.id.namespace.clone(),
                target["name"].as_str()?.to_string(),
            ))
        })
        .collect();
    if targets.is_empty() {
        return;
    }
    for d in objects.iter_mut() {
        let key = (
            d.id.group().to_string(),
            d.id.kind.clone(),
            d.id.namespace.clone(),
            d.id.name.clone(),
        );
        if targets.contains(&key) {
            if let Some(spec) = d.body.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("replicas");
            }
        }
    }
}

/// apiVersion, kind and namespace: what one list request covers.
pub(crate) type KindInNamespace = (String, String, Option<String>);

/// The key [`list_live`] files an object under.
pub(crate) fn live_key(id: &ObjectRef) -> (KindInNamespace, String) {
    (
        (
            id.api_version.clone(),
            id.kind.clone(),
            id.namespace.clone(),
        ),
        id.name.clone(),
    )
}

/// The live objects among `ids` that carry the component's labels (`selector`), read with one
/// list per kind and namespace instead of one read per object; kinds the cluster does not serve
/// are skipped. Keyed by [`live_key`]; each item gets its apiVersion and kind back (real API
/// servers leave them out of list items).
pub(crate) async fn list_live<'a>(
    client: &::kube::Client,
    kinds: &HashMap<KindKey, Kind>,
    ids: impl Iterator<Item = &'a ObjectRef>,
    selector: &str,
    limit: usize,
) -> Result<HashMap<(KindInNamespace, String), Value>, KubeError> {
    let mut groups: Vec<(KindInNamespace, &Target)> = Vec::new();
    for id in ids {
        if let Some(Kind::Served(target)) = kinds.get(&kind_key(id)) {
            let (key, _) = live_key(id);
            if !groups.iter().any(|(k, _)| *k == key) {
                groups.push((key, target));
            }
        }
    }
    let listed = bounded(groups, limit, |(key, target)| async move {
        let items = ops::list(client, target, key.2.as_deref(), selector).await?;
        Ok::<_, KubeError>((key, items))
    })
    .await;
    let mut live = HashMap::new();
    for (key, items) in first_error(listed)? {
        for mut item in items {
            let Some(obj) = item.as_object_mut() else {
                continue;
            };
            obj.insert("apiVersion".into(), Value::String(key.0.clone()));
            obj.insert("kind".into(), Value::String(key.1.clone()));
            if let Some(name) = item["metadata"]["name"].as_str().map(str::to_string) {
                live.insert((key.clone(), name), item);
            }
        }
    }
    Ok(live)
}

/// Runs `f` over `items` with at most `limit` in flight; results in input order.
pub(crate) async fn bounded<T, R, F, Fut>(items: Vec<T>, limit: usize, f: F) -> Vec<R>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = R>,
{
    let mut out: Vec<(usize, R)> = stream::iter(items.into_iter().enumerate())
        .map(|(i, item)| {
            let fut = f(item);
            async move { (i, fut.await) }
        })
        .buffer_unordered(limit.max(1))
        .collect()
        .await;
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// The first error of a batch (in apply order), with a count of the others.
pub(crate) fn first_error<T>(results: Vec<Result<T, KubeError>>) -> Result<Vec<T>, KubeError> {
    let mut ok = Vec::with_capacity(results.len());
    let mut errors: Vec<KubeError> = Vec::new();
    for r in results {
        match r {
            Ok(v) => ok.push(v),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        return Ok(ok);
    }
    let transient = errors.iter().all(KubeError::is_transient);
    if errors.len() == 1 {
        return Err(errors.swap_remove(0));
    }
    Err(KubeError::Several { errors, transient })
}

/// The server's conflict message on one line: `conflict with "kubectl-scale" using apps/v1:
/// .spec.replicas` (several conflicts come as a list).
pub(crate) fn conflict_summary(detail: &str) -> String {
    let detail = detail
        .strip_prefix("Apply failed with ")
        .and_then(|rest| rest.split_once(": ").map(|(_, r)| r))
        .unwrap_or(detail);
    detail
        .lines()
        .map(|l| l.trim().trim_start_matches("- ").trim())
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The kind to address `id` with, at its recorded version or, if that version is no longer
/// served, at any served version of the same group and kind.
pub(crate) fn target_for(map: &KindMap, id: &ObjectRef) -> Option<Target> {
    if let Some(t) = map.get(&id.api_version, &id.kind) {
        return Some(t.clone());
    }
    map.all()
        .find(|t| t.resource.group == id.group() && t.resource.kind == id.kind)
        .cloned()
}

/// A Job the TTL controller deletes once it has finished.
pub(crate) fn removes_itself(d: &Desired) -> bool {
    d.id.group() == "batch"
        && d.id.kind == "Job"
        && d.body["spec"]["ttlSecondsAfterFinished"].is_number()
}

/// [`health`], with what the object alone cannot tell: a PersistentVolumeClaim `Pending` under a
/// StorageClass with `volumeBindingMode: WaitForFirstConsumer` (k3s's default `local-path`) is bound
/// only once a Pod using it is scheduled, so it is as healthy as it can be before that.
pub(crate) async fn health_in(client: &::kube::Client, live: &Value) -> Health {
    let verdict = health(live);
    let pending_claim = live["kind"] == "PersistentVolumeClaim"
        && live["apiVersion"] == "v1"
        && live["status"]["phase"] == "Pending";
    if !pending_claim || verdict.is_healthy() {
        return verdict;
    }
    let Some(class) = live["spec"]["storageClassName"].as_str() else {
        return verdict;
    };
    let classes = Target::builtin(
        "storage.k8s.io",
        "v1",
        "StorageClass",
        "storageclasses",
        false,
    );
    let id = ObjectRef {
        api_version: "storage.k8s.io/v1".into(),
        kind: "StorageClass".into(),
        namespace: None,
        name: class.to_string(),
    };
    match ops::get(client, &classes, &id).await {
        Ok(Some(sc)) if sc["volumeBindingMode"] == "WaitForFirstConsumer" => Health::Healthy,
        _ => verdict,
    }
}

/// Deletes objects in reverse apply order, phase by phase, each only if it still carries the
/// marks (`owns`). Returns what was deleted.
pub(crate) async fn delete_objects(
    client: &::kube::Client,
    map: &KindMap,
    marks: &Marks,
    mut ids: Vec<ObjectRef>,
    limit: usize,
    spared: &(dyn Fn(&Value) -> bool + Sync),
) -> Result<Vec<ObjectRef>, KubeError> {
    delete_where(
        client,
        map,
        &mut ids,
        limit,
        |live| marks.owns(live),
        spared,
    )
    .await
}

/// Deletes `ids` that pass `owned`. A Namespace or CRD is deleted only if every object it would
/// take with it passes `spared` (is being deleted by phoenix too); else the deletion is refused,
/// naming them.
pub(crate) async fn delete_where(
    client: &::kube::Client,
    map: &KindMap,
    ids: &mut Vec<ObjectRef>,
    limit: usize,
    owned: impl Fn(&Value) -> bool + Sync,
    spared: &(dyn Fn(&Value) -> bool + Sync),
) -> Result<Vec<ObjectRef>, KubeError> {
    ids.sort_by(apply_order);
    ids.dedup();
    let mut deleted = Vec::new();
    for phase in ApplyPhase::ALL.iter().rev() {
        let batch: Vec<ObjectRef> = ids
            .iter()
            .rev()
            .filter(|id| ApplyPhase::of(&id.api_version, &id.kind) == *phase)
            .cloned()
            .collect();
        let owned = &owned;
        let results = bounded(batch, limit, |id| async move {
            // A kind no longer served has no objects left to delete.
            let Some(target) = target_for(map, &id) else {
                return Ok(None);
            };
            let Some(live) = ops::get(client, &target, &id).await? else {
                return Ok(None);
            };
            if !owned(&live) {
                return Ok(None);
            }
            if contents::is_container(&id) {
                let foreign =
                    contents::foreign_contents(client, map, &id, &live, spared, limit).await?;
                if !foreign.is_empty() {
                    return Err(contents::refusal(&id, &foreign));
                }
            }
            let gone = ops::delete(client, &target, &id, ops::uid(&live)).await?;
            Ok(gone.then_some(id))
        })
        .await;
        deleted.extend(first_error(results)?.into_iter().flatten());
    }
    Ok(deleted)
}
