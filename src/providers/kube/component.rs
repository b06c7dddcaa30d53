//! One engine node per add-on or app: apply its objects in order, wait until every one is
//! healthy, run its checks, prune what left Git, and keep its inventory.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use serde_json::Value;

use crate::engine::{Action, BoxFuture, Check, Layer, NodeCtx, NodeError, NodeOutcome, NodeSpec};
use crate::render::Manifest;

use super::checks::{get_status, HttpCheck};
use super::connector::Connector;
use super::contents;
use super::discovery::{KindMap, Resolver, Target};
use super::error::KubeError;
use super::health::{health, needs_no_wait, Health};
use super::inventory;
use super::object::{apply_order, finish, prepare, Desired, Marks, ObjectRef, Phase};
use super::ops;
use super::seals::{self, body_hash, SealStore, Seals};

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
}

impl ComponentSpec {
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
            converge(&client, &inner.spec, &inner.opts, &inner.resolver, &ctx).await
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

fn kind_key(id: &ObjectRef) -> KindKey {
    (id.api_version.clone(), id.kind.clone())
}

/// Kinds defined by the component's own CRDs, with their scope.
fn crd_kinds(objects: &[Desired]) -> HashMap<KindKey, bool> {
    let mut out = HashMap::new();
    for d in objects.iter().filter(|d| d.phase == Phase::Crds) {
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

/// What the ownership check saw of an existing object.
struct Before {
    rv: String,
    uid: Option<String>,
    /// What its labels say, when it is not this component's.
    foreign: Option<String>,
}

/// What happened to one applied object.
struct Applied {
    index: usize,
    changed: bool,
    /// The uid and resourceVersion the apply returned.
    uid: String,
    rv: String,
    /// What the apply returned, kept only for an object not healthy yet (it is waited for, and
    /// what moved since is judged against it).
    pending: Option<Value>,
}

/// One idempotent attempt at converging a component.
pub async fn converge(
    client: &::kube::Client,
    spec: &ComponentSpec,
    opts: &ApplyOptions,
    resolver: &Resolver,
    ctx: &NodeCtx,
) -> Result<NodeOutcome, NodeError> {
    let marks = spec.marks();
    let force = spec.force_conflicts || opts.force_conflicts;
    let limit = opts.concurrency.max(1);
    ctx.progress(format!("resolving {} manifests", spec.manifests.len()));
    let (mut generation, objects, mut kinds) = plan_objects(client, resolver, spec, false).await?;

    let previous = inventory::read(client, &marks).await?;

    // Refuse before changing anything if any object exists without this component's marks.
    ctx.progress(format!("checking ownership of {} objects", objects.len()));
    let served: Vec<(usize, Target)> = objects
        .iter()
        .enumerate()
        .filter_map(|(i, d)| match kinds.get(&kind_key(&d.id)) {
            Some(Kind::Served(t)) => Some((i, t.clone())),
            _ => None,
        })
        .collect();
    // Only what is needed is kept of each live object (its resourceVersion, or what its labels
    // say when it is not ours): a component of 10,000 objects must not hold them all.
    let lives = bounded(served, limit, |(i, t)| {
        let id = &objects[i].id;
        let marks = &marks;
        async move {
            ops::get(client, &t, id).await.map(|live| {
                let seen = live.as_ref().map(|live| Before {
                    rv: ops::resource_version(live).unwrap_or_default().to_string(),
                    uid: ops::uid(live),
                    foreign: (!marks.owns(live)).then(|| Marks::describe_found(live)),
                });
                (i, seen)
            })
        }
    })
    .await;
    let mut before: HashMap<usize, Option<Before>> = HashMap::new();
    for (i, seen) in first_error(lives)? {
        if let Some(found) = seen.as_ref().and_then(|b| b.foreign.clone()) {
            return Err(KubeError::NotOwned {
                object: Box::new(objects[i].id.clone()),
                env: marks.env.clone(),
                component: marks.component.clone(),
                found,
            }
            .into());
        }
        before.insert(i, seen);
    }

    // A Job that deletes itself when finished (ttlSecondsAfterFinished) and that an earlier run saw
    // through is done, not missing: it is not run again.
    let finished_before: HashSet<_> = previous
        .iter()
        .flat_map(|p| p.finished.iter().map(ObjectRef::key))
        .collect();
    let done: HashSet<usize> = (0..objects.len())
        .filter(|i| {
            removes_itself(&objects[*i])
                && matches!(before.get(i), Some(None))
                && finished_before.contains(&objects[*i].id.key())
        })
        .collect();
    for &i in &done {
        ctx.progress(format!(
            "{}: finished on an earlier run and deleted by its ttlSecondsAfterFinished; not run \
             again (give it a new name to run it again)",
            objects[i].id
        ));
    }

    // Recorded before applying, so that objects created by an attempt that fails half-way are
    // still known (and pruned) on the next run.
    let desired_ids: Vec<ObjectRef> = objects.iter().map(|d| d.id.clone()).collect();
    let mut recorded = desired_ids.clone();
    let mut still_finished = Vec::new();
    if let Some(prev) = &previous {
        recorded.extend(prev.objects.iter().cloned());
        still_finished.extend(prev.finished.iter().cloned());
    }
    inventory::write(client, &marks, &recorded, &still_finished).await?;

    let mut applied: Vec<Applied> = Vec::with_capacity(objects.len());
    for phase in Phase::ALL {
        let batch: Vec<usize> = (0..objects.len())
            .filter(|&i| objects[i].phase == phase && !done.contains(&i))
            .collect();
        if batch.is_empty() {
            continue;
        }
        if batch.iter().any(|&i| {
            matches!(
                kinds.get(&kind_key(&objects[i].id)),
                Some(Kind::FromCrd { .. })
            )
        }) {
            // Kinds from this component's CRDs are served now that the CRDs are Established.
            resolver.refresh(client, generation).await?;
            (generation, kinds) = resolve_kinds(client, resolver, &objects, false).await?;
        }
        ctx.progress(format!("applying {} {}", batch.len(), phase.as_str()));
        let kinds_ref = &kinds;
        let before_ref = &before;
        let results = bounded(batch, limit, |i| {
            let d = &objects[i];
            async move {
                let target = match kinds_ref.get(&kind_key(&d.id)) {
                    Some(Kind::Served(t)) => t.clone(),
                    _ => {
                        return Err(KubeError::UnknownKind {
                            source_file: d.source.clone(),
                            line: d.line,
                            api_version: d.id.api_version.clone(),
                            kind: d.id.kind.clone(),
                        })
                    }
                };
                // Unforced first, so a conflict says who held which fields; then, on an object
                // that is phoenix's (checked above), the fields are taken back.
                let old = before_ref.get(&i).and_then(|o| o.as_ref());
                let first = ops::apply(client, &target, &d.id, &d.body, false, false).await;
                let first = match first {
                    Err(KubeError::Conflict { detail, .. }) if force => {
                        ctx.progress(format!(
                            "{}: taking back fields held by another field manager: {}",
                            d.id,
                            conflict_summary(&detail)
                        ));
                        ops::apply(client, &target, &d.id, &d.body, true, false).await
                    }
                    other => other,
                };
                let live = match first {
                    // The object is this component's (checked above): Git wins by re-creating it.
                    Err(KubeError::Immutable { detail, .. }) if old.is_some() => {
                        ctx.progress(format!(
                            "{}: {detail}; deleting it and creating it again",
                            d.id
                        ));
                        let uid = old.and_then(|o| o.uid.clone());
                        recreate(client, &target, d, uid, force, spec.wait).await?
                    }
                    other => other?,
                };
                let rv = ops::resource_version(&live).unwrap_or_default().to_string();
                let changed = old.is_none_or(|old| old.rv != rv);
                let healthy = health(&live).is_healthy();
                Ok(Applied {
                    index: i,
                    changed,
                    uid: ops::uid(&live).unwrap_or_default(),
                    rv,
                    pending: (!healthy).then_some(live),
                })
            }
        })
        .await;
        let done = first_error(results)?;
        if phase == Phase::Crds {
            wait_established(client, spec, opts, ctx, &objects, &kinds, &done).await?;
        }
        applied.extend(done);
    }

    let last_seen = wait_healthy(client, spec, opts, ctx, &objects, &kinds, &applied).await?;
    run_checks(spec, opts, ctx).await?;
    // What phoenix's own applies returned is in sync; so is what the health wait saw last when
    // only status and what Git leaves to others moved since.
    let sealed = Seals::default();
    for a in &applied {
        let body = &objects[a.index].body;
        let Some(hash) = body_hash(&objects[a.index].id, body) else {
            continue;
        };
        match &a.pending {
            None => sealed.seal_id(&a.uid, &a.rv, &hash),
            Some(returned) => {
                let now = last_seen.get(&a.index).unwrap_or(returned);
                if ops::resource_version(now) == Some(a.rv.as_str())
                    || seals::only_others_moved(body, returned, now)
                {
                    sealed.seal(now, &hash);
                }
            }
        }
    }

    let desired_keys: HashSet<_> = desired_ids.iter().map(ObjectRef::key).collect();
    let removed: Vec<ObjectRef> = previous
        .as_ref()
        .map(|p| {
            p.objects
                .iter()
                .filter(|o| !desired_keys.contains(&o.key()))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let pruned = if removed.is_empty() {
        Vec::new()
    } else {
        ctx.progress(format!(
            "pruning {} objects removed from Git",
            removed.len()
        ));
        let (_, map) = resolver.current(client).await?;
        // A Namespace or CRD leaving Git may go only with nothing but what leaves with it.
        let leaving: HashSet<_> = removed.iter().map(ObjectRef::key).collect();
        let spared = |o: &Value| {
            marks.owns(o) && ObjectRef::of(o).is_some_and(|id| leaving.contains(&id.key()))
        };
        delete_objects(client, &map, &marks, removed, limit, &spared).await?
    };
    // Every self-deleting Job of the component is through now: applied and Complete (or deleted by
    // its TTL while waited for), or done on an earlier run.
    let finished: Vec<ObjectRef> = objects
        .iter()
        .filter(|d| removes_itself(d))
        .map(|d| d.id.clone())
        .collect();
    inventory::write(client, &marks, &desired_ids, &finished).await?;
    // A cache: when it cannot be written, the next diff sends every dry run.
    let _ = opts.seals.save(&marks, sealed);

    let created = applied
        .iter()
        .filter(|a| before.get(&a.index).is_none_or(Option::is_none))
        .count();
    let changed = applied.iter().filter(|a| a.changed).count();
    ctx.progress(format!(
        "{} objects healthy ({created} created, {} updated, {} pruned)",
        objects.len(),
        changed - created,
        pruned.len()
    ));
    Ok(
        if previous.is_none() && created == applied.len() && !applied.is_empty() {
            NodeOutcome::Created
        } else if changed > 0 || !pruned.is_empty() {
            NodeOutcome::Updated
        } else {
            NodeOutcome::Unchanged
        },
    )
}

async fn wait_established(
    client: &::kube::Client,
    spec: &ComponentSpec,
    opts: &ApplyOptions,
    ctx: &NodeCtx,
    objects: &[Desired],
    kinds: &HashMap<KindKey, Kind>,
    applied: &[Applied],
) -> Result<(), NodeError> {
    let crds: Vec<(&ObjectRef, Target)> = applied
        .iter()
        .filter(|a| a.pending.is_some())
        .filter_map(|a| {
            let id = &objects[a.index].id;
            match kinds.get(&kind_key(id)) {
                Some(Kind::Served(t)) => Some((id, t.clone())),
                _ => None,
            }
        })
        .collect();
    if crds.is_empty() {
        return Ok(());
    }
    let what = format!("{} CustomResourceDefinitions Established", crds.len());
    ctx.wait_for_state(&what, spec.wait, opts.poll_interval, || {
        let crds = &crds;
        async move {
            let mut waiting = Vec::new();
            for (id, target) in crds {
                let live = ops::get(client, target, id).await?;
                match live.as_ref().map(health) {
                    Some(Health::Healthy) => {}
                    Some(Health::Failed(why)) => {
                        return Err(NodeError::permanent(format!("{id}: {why}")))
                    }
                    Some(Health::Progressing(why)) => waiting.push(format!("{id}: {why}")),
                    None => waiting.push(format!("{id}: not found")),
                }
            }
            Ok(if waiting.is_empty() {
                Check::Ready(())
            } else {
                Check::Waiting(summarize(&waiting))
            })
        }
    })
    .await
}

/// "A: why; B: why; C: why; and 4 more".
fn summarize(items: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut out = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if items.len() > SHOWN {
        out.push_str(&format!("; and {} more", items.len() - SHOWN));
    }
    out
}

async fn wait_healthy(
    client: &::kube::Client,
    spec: &ComponentSpec,
    opts: &ApplyOptions,
    ctx: &NodeCtx,
    objects: &[Desired],
    kinds: &HashMap<KindKey, Kind>,
    applied: &[Applied],
) -> Result<HashMap<usize, Value>, NodeError> {
    // What the apply returned is the first observation; only objects not yet healthy are polled.
    // Returns the last observation of each polled object.
    let mut pending: Vec<usize> = Vec::new();
    for a in applied {
        let d = &objects[a.index];
        if needs_no_wait(&d.id.api_version, &d.id.kind) {
            continue;
        }
        if a.pending.is_some() {
            pending.push(a.index);
        }
    }
    if pending.is_empty() {
        return Ok(HashMap::new());
    }
    pending.sort_by(|&a, &b| apply_order(&objects[a].id, &objects[b].id));
    let seen: std::sync::Mutex<HashMap<usize, Value>> = std::sync::Mutex::new(HashMap::new());
    let selector = spec.marks().selector();
    let what = format!("{} objects of {} healthy", pending.len(), spec.name);
    let limit = opts.concurrency.max(1);
    let pending = std::sync::Mutex::new(pending);
    ctx.wait_for_state(&what, spec.wait, opts.poll_interval, || {
        let selector = &selector;
        let pending = &pending;
        let seen = &seen;
        async move {
            let now: Vec<usize> = pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            let live = list_live(
                client,
                kinds,
                now.iter().map(|&i| &objects[i].id),
                selector,
                limit,
            )
            .await
            .map_err(NodeError::from)?;
            let mut still = Vec::new();
            let mut reasons = Vec::new();
            for i in now {
                let id = &objects[i].id;
                let found = live.get(&live_key(id));
                if let Some(o) = found {
                    seen.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(i, o.clone());
                }
                let verdict = match found {
                    Some(o) => Some(health_in(client, o).await),
                    None => None,
                };
                match verdict {
                    Some(Health::Healthy) => {}
                    Some(Health::Failed(why)) => {
                        return Err(NodeError::permanent(format!("{id} failed: {why}")))
                    }
                    Some(Health::Progressing(why)) => {
                        still.push(i);
                        reasons.push((i, format!("{id}: {why}")));
                    }
                    // Its TTL controller deleted it between two looks: it finished (whether it
                    // succeeded is gone with it).
                    None if removes_itself(&objects[i]) => {
                        ctx.progress(format!(
                            "{id}: finished and deleted by its ttlSecondsAfterFinished before its \
                             result was read"
                        ));
                    }
                    None => {
                        still.push(i);
                        reasons.push((
                            i,
                            format!("{id}: not found (deleted, or its phoenix labels removed)"),
                        ));
                    }
                }
            }
            reasons.sort_by(|a, b| apply_order(&objects[a.0].id, &objects[b.0].id));
            let reasons: Vec<String> = reasons.into_iter().map(|(_, r)| r).collect();
            *pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = still;
            Ok(if reasons.is_empty() {
                Check::Ready(())
            } else {
                Check::Waiting(summarize(&reasons))
            })
        }
    })
    .await?;
    Ok(seen
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner))
}

async fn run_checks(
    spec: &ComponentSpec,
    opts: &ApplyOptions,
    ctx: &NodeCtx,
) -> Result<(), NodeError> {
    for check in &spec.checks {
        let what = format!("GET {} to answer {}", check.url, check.expect);
        ctx.wait_for_state(&what, spec.wait, opts.poll_interval, || async move {
            match get_status(check).await {
                Ok(code) if code == check.expect => Ok(Check::Ready(())),
                Ok(code) => Ok(Check::Waiting(format!("answered {code}"))),
                Err(
                    e @ (super::checks::CheckError::InvalidUrl { .. }
                    | super::checks::CheckError::Tls { .. }),
                ) => Err(NodeError::permanent(e.to_string())),
                Err(e) => Ok(Check::Waiting(crate::error::chain(&e))),
            }
        })
        .await?;
    }
    Ok(())
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

/// Deletes the object `uid` in the foreground (with what it owns: a Job's Pods), waits up to
/// `wait` until it is gone, then applies `d` again.
async fn recreate(
    client: &::kube::Client,
    target: &Target,
    d: &Desired,
    uid: Option<String>,
    force: bool,
    wait: Duration,
) -> Result<Value, KubeError> {
    ops::delete_foreground(client, target, &d.id, uid.clone()).await?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let live = ops::get(client, target, &d.id).await?;
        if live.as_ref().and_then(ops::uid) != uid || live.is_none() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(KubeError::Api {
                action: "re-creating",
                object: d.id.to_string(),
                detail: format!(
                    "still being deleted after {}s (waiting for the garbage collector to delete \
                     what it owns)",
                    wait.as_secs()
                ),
                transient: true,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ops::apply(client, target, &d.id, &d.body, force, false).await
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
    for phase in Phase::ALL.iter().rev() {
        let batch: Vec<ObjectRef> = ids
            .iter()
            .rev()
            .filter(|id| Phase::of(&id.api_version, &id.kind) == *phase)
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
