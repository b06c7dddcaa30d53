//! Converging one component ([`converge`]): the phases of one idempotent attempt, and the waits
//! between them (CRDs Established, every object healthy, the component's checks).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;

use crate::engine::{Check, NodeCtx, NodeError, NodeOutcome};

use super::checks::get_status;
use super::component::{
    bounded, conflict_summary, delete_objects, first_error, health_in, kind_key, list_live,
    live_key, plan_objects, removes_itself, resolve_kinds, ApplyOptions, ComponentSpec, Kind,
    KindKey,
};
use super::discovery::{Resolver, Target};
use super::error::KubeError;
use super::health::{health, needs_no_wait, Health};
use super::inventory;
use super::object::{apply_order, ApplyPhase, Desired, Marks, ObjectRef};
use super::ops;
use super::seals::{self, body_hash, Seals};
use crate::render::Stage;

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

/// One idempotent attempt at converging a component, phase by phase: resolve its objects, refuse
/// if any exists without its marks, record the inventory, apply (CRDs first, each phase after the
/// one before is in), wait until healthy, run the checks, seal what is in sync, prune what left
/// Git, and record the inventory again.
pub async fn converge(
    client: &::kube::Client,
    spec: &ComponentSpec,
    opts: &ApplyOptions,
    resolver: &Resolver,
    ctx: &NodeCtx,
) -> Result<NodeOutcome, NodeError> {
    let marks = spec.marks();
    let limit = opts.concurrency.max(1);
    ctx.progress(format!("resolving {} manifests", spec.manifests.len()));
    let (generation, objects, kinds) = plan_objects(client, resolver, spec, false).await?;
    let previous = inventory::read(client, &marks).await?;

    ctx.progress(format!("checking ownership of {} objects", objects.len()));
    let before = check_ownership(client, &marks, &objects, &kinds, limit).await?;
    let done = finished_earlier(&objects, &before, previous.as_ref(), ctx);

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

    let run = Phases {
        client,
        spec,
        opts,
        resolver,
        ctx,
        objects: &objects,
        before: &before,
        limit,
    };
    let StagesApplied {
        applied,
        kinds,
        waited,
    } = run.apply_all(generation, kinds, &done).await?;

    // What a stage wait saw through is not waited for again.
    let last = applied.iter().filter(|a| !waited.contains_key(&a.index));
    let mut last_seen = wait_healthy(client, spec, opts, ctx, &objects, &kinds, last).await?;
    last_seen.extend(waited.into_iter().filter(|(_, v)| !v.is_null()));
    run_checks(spec, opts, ctx).await?;
    let sealed = seal_in_sync(&objects, &applied, &last_seen);

    let pruned = prune_removed(
        client,
        resolver,
        &marks,
        previous.as_ref(),
        &desired_ids,
        limit,
        ctx,
    )
    .await?;
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

/// Reads what exists of each object, refusing (before anything changes) if one exists without
/// this component's marks. Only what is needed is kept of each live object (its resourceVersion,
/// or what its labels say when it is not ours): a component of 10,000 objects must not hold them
/// all.
async fn check_ownership(
    client: &::kube::Client,
    marks: &Marks,
    objects: &[Desired],
    kinds: &HashMap<KindKey, Kind>,
    limit: usize,
) -> Result<HashMap<usize, Option<Before>>, KubeError> {
    let served: Vec<(usize, Target)> = objects
        .iter()
        .enumerate()
        .filter_map(|(i, d)| match kinds.get(&kind_key(&d.id)) {
            Some(Kind::Served(t)) => Some((i, t.clone())),
            _ => None,
        })
        .collect();
    let lives = bounded(served, limit, |(i, t)| {
        let id = &objects[i].id;
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
            });
        }
        before.insert(i, seen);
    }
    Ok(before)
}

/// The Jobs that delete themselves when finished (ttlSecondsAfterFinished) and that an earlier
/// run saw through: done, not missing, so they are not run again.
fn finished_earlier(
    objects: &[Desired],
    before: &HashMap<usize, Option<Before>>,
    previous: Option<&inventory::Inventory>,
    ctx: &NodeCtx,
) -> HashSet<usize> {
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
    done
}

/// What [`Phases::apply_all`] did.
struct StagesApplied {
    applied: Vec<Applied>,
    kinds: HashMap<KindKey, Kind>,
    /// The objects of the stages waited healthy before the next stage, with what the wait saw
    /// last of each (`Null` when it did not poll it: healthy when applied).
    waited: HashMap<usize, Value>,
}

/// The phases of one stage, each with the indices of its objects.
type PhaseBatches = Vec<(ApplyPhase, Vec<usize>)>;

/// The order of the apply: each stage (ascending) with its phases (ascending), each with the
/// indices of its objects, leaving out those `done` and anything empty.
fn apply_stages(objects: &[Desired], done: &HashSet<usize>) -> Vec<(Stage, PhaseBatches)> {
    let mut stages: Vec<Stage> = objects.iter().map(|d| d.stage).collect();
    stages.sort();
    stages.dedup();
    stages
        .into_iter()
        .filter_map(|stage| {
            let phases: Vec<(ApplyPhase, Vec<usize>)> = ApplyPhase::ALL
                .into_iter()
                .filter_map(|phase| {
                    let batch: Vec<usize> = (0..objects.len())
                        .filter(|&i| {
                            objects[i].stage == stage
                                && objects[i].phase == phase
                                && !done.contains(&i)
                        })
                        .collect();
                    (!batch.is_empty()).then_some((phase, batch))
                })
                .collect();
            (!phases.is_empty()).then_some((stage, phases))
        })
        .collect()
}

/// What the apply phases share.
struct Phases<'a> {
    client: &'a ::kube::Client,
    spec: &'a ComponentSpec,
    opts: &'a ApplyOptions,
    resolver: &'a Resolver,
    ctx: &'a NodeCtx,
    objects: &'a [Desired],
    before: &'a HashMap<usize, Option<Before>>,
    limit: usize,
}

impl Phases<'_> {
    /// Applies every object but those `done`, stage by stage (a chart's pre hooks by weight, the
    /// rest, its post hooks by weight), and within a stage phase by phase; CRDs are waited for
    /// until Established before the kinds they define are resolved and applied. Every stage but
    /// the last is waited healthy (a hook Job Complete) before the next starts; the last is left
    /// to the caller's wait. Returns what was applied, the kinds as last resolved, and what the
    /// stage waits saw last of each object they waited for (those need no further wait).
    async fn apply_all(
        &self,
        mut generation: u64,
        mut kinds: HashMap<KindKey, Kind>,
        done: &HashSet<usize>,
    ) -> Result<StagesApplied, NodeError> {
        let objects = self.objects;
        let mut applied: Vec<Applied> = Vec::with_capacity(objects.len());
        let mut waited: HashMap<usize, Value> = HashMap::new();
        let stages = apply_stages(objects, done);
        let count = stages.len();
        for (n, (stage, phases)) in stages.into_iter().enumerate() {
            if count > 1 {
                self.ctx.progress(format!("applying {stage}"));
            }
            let start = applied.len();
            for (phase, batch) in phases {
                if batch.iter().any(|&i| {
                    matches!(
                        kinds.get(&kind_key(&objects[i].id)),
                        Some(Kind::FromCrd { .. })
                    )
                }) {
                    // Kinds from this component's CRDs, now that the CRDs are Established.
                    (generation, kinds) = self.await_crd_kinds(generation, &batch).await?;
                }
                self.ctx
                    .progress(format!("applying {} {}", batch.len(), phase.as_str()));
                let kinds_ref = &kinds;
                let results = bounded(batch, self.limit, |i| self.apply_one(kinds_ref, i)).await;
                let done = first_error(results)?;
                if phase == ApplyPhase::Crds {
                    wait_established(
                        self.client,
                        self.spec,
                        self.opts,
                        self.ctx,
                        objects,
                        &kinds,
                        &done,
                    )
                    .await?;
                }
                applied.extend(done);
            }
            if n + 1 < count {
                let seen = wait_healthy(
                    self.client,
                    self.spec,
                    self.opts,
                    self.ctx,
                    objects,
                    &kinds,
                    &applied[start..],
                )
                .await?;
                waited.extend(applied[start..].iter().map(|a| (a.index, Value::Null)));
                waited.extend(seen);
                self.ctx.progress(format!("{stage} healthy"));
            }
        }
        Ok(StagesApplied {
            applied,
            kinds,
            waited,
        })
    }

    /// The kinds resolved again once discovery serves every kind `batch` needs. The API server
    /// adds a CRD's kinds to discovery a moment after the CRD is Established (under load, after
    /// the first refresh), so this waits for them, within the component's wait.
    async fn await_crd_kinds(
        &self,
        generation: u64,
        batch: &[usize],
    ) -> Result<(u64, HashMap<KindKey, Kind>), NodeError> {
        let seen = std::sync::Mutex::new(generation);
        let what = "discovery to serve the kinds of this component's CustomResourceDefinitions";
        self.ctx
            .wait_for_state(what, self.spec.wait, self.opts.poll_interval, || {
                let seen = &seen;
                async move {
                    let last = *seen
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    self.resolver.refresh(self.client, last).await?;
                    let (generation, kinds) =
                        resolve_kinds(self.client, self.resolver, self.objects, true).await?;
                    *seen
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = generation;
                    let mut missing: Vec<String> = batch
                        .iter()
                        .map(|&i| &self.objects[i].id)
                        .filter(|id| !matches!(kinds.get(&kind_key(id)), Some(Kind::Served(_))))
                        .map(|id| format!("{} {}", id.api_version, id.kind))
                        .collect();
                    missing.sort();
                    missing.dedup();
                    Ok(if missing.is_empty() {
                        Check::Ready((generation, kinds))
                    } else {
                        Check::Waiting(format!("not served yet: {}", summarize(&missing)))
                    })
                }
            })
            .await
    }

    /// Applies object `i`: unforced first, so a conflict says who held which fields; then, on an
    /// object that is phoenix's (checked before), the fields are taken back. An immutable field
    /// changed in Git re-creates the object.
    async fn apply_one(
        &self,
        kinds: &HashMap<KindKey, Kind>,
        i: usize,
    ) -> Result<Applied, KubeError> {
        let d = &self.objects[i];
        let client = self.client;
        let force = self.spec.force_conflicts || self.opts.force_conflicts;
        let target = match kinds.get(&kind_key(&d.id)) {
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
        let old = self.before.get(&i).and_then(|o| o.as_ref());
        let first = ops::apply(client, &target, &d.id, &d.body, false, false).await;
        let first = match first {
            Err(KubeError::Conflict { detail, .. }) if force => {
                self.ctx.progress(format!(
                    "{}: taking back fields held by another field manager: {}",
                    d.id,
                    conflict_summary(&detail)
                ));
                ops::apply(client, &target, &d.id, &d.body, true, false).await
            }
            other => other,
        };
        let live = match first {
            // The object is this component's (checked before): Git wins by re-creating it.
            Err(KubeError::Immutable { detail, .. }) if old.is_some() => {
                self.ctx.progress(format!(
                    "{}: {detail}; deleting it and creating it again",
                    d.id
                ));
                let uid = old.and_then(|o| o.uid.clone());
                recreate(client, &target, d, uid, force, self.spec.wait).await?
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
}

/// The seals of what is in sync now: what phoenix's own applies returned, and what the health
/// wait saw last when only status and what Git leaves to others moved since.
fn seal_in_sync(
    objects: &[Desired],
    applied: &[Applied],
    last_seen: &HashMap<usize, Value>,
) -> Seals {
    let sealed = Seals::default();
    for a in applied {
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
    sealed
}

/// Deletes what the previous inventory holds and Git no longer does. A Namespace or CRD leaving
/// Git may go only with nothing but what leaves with it.
async fn prune_removed(
    client: &::kube::Client,
    resolver: &Resolver,
    marks: &Marks,
    previous: Option<&inventory::Inventory>,
    desired_ids: &[ObjectRef],
    limit: usize,
    ctx: &NodeCtx,
) -> Result<Vec<ObjectRef>, KubeError> {
    let desired_keys: HashSet<_> = desired_ids.iter().map(ObjectRef::key).collect();
    let removed: Vec<ObjectRef> = previous
        .map(|p| {
            p.objects
                .iter()
                .filter(|o| !desired_keys.contains(&o.key()))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    if removed.is_empty() {
        return Ok(Vec::new());
    }
    ctx.progress(format!(
        "pruning {} objects removed from Git",
        removed.len()
    ));
    let (_, map) = resolver.current(client).await?;
    let leaving: HashSet<_> = removed.iter().map(ObjectRef::key).collect();
    let spared =
        |o: &Value| marks.owns(o) && ObjectRef::of(o).is_some_and(|id| leaving.contains(&id.key()));
    delete_objects(client, &map, marks, removed, limit, &spared).await
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
    applied: impl IntoIterator<Item = &Applied>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::Manifest;
    use serde_json::json;

    fn objects(specs: &[(&str, &str, Stage)]) -> Vec<Desired> {
        let ms: Vec<Manifest> = specs
            .iter()
            .map(|(kind, name, stage)| Manifest {
                source: "t.yaml".into(),
                line: 1,
                object: json!({"apiVersion": if *kind == "Job" { "batch/v1" } else { "v1" },
                               "kind": kind, "metadata": {"name": name}}),
                stage: *stage,
            })
            .collect();
        super::super::object::prepare(&ms, &super::super::object::tests::marks()).unwrap()
    }

    #[test]
    fn stages_go_pre_hooks_by_weight_then_the_rest_then_post_hooks_each_by_phase() {
        let objs = objects(&[
            ("Job", "post", Stage::Post(0)),
            ("Deployment", "web", Stage::Main),
            ("ConfigMap", "web", Stage::Main),
            ("ConfigMap", "hook-cm", Stage::Pre(0)),
            ("Job", "migrate", Stage::Pre(-5)),
            ("Job", "late", Stage::Pre(0)),
        ]);
        let order = apply_stages(&objs, &HashSet::new());
        assert_eq!(
            order,
            vec![
                (Stage::Pre(-5), vec![(ApplyPhase::Rest, vec![4])]),
                (
                    Stage::Pre(0),
                    vec![(ApplyPhase::Config, vec![3]), (ApplyPhase::Rest, vec![5])]
                ),
                (
                    Stage::Main,
                    vec![(ApplyPhase::Config, vec![2]), (ApplyPhase::Rest, vec![1])]
                ),
                (Stage::Post(0), vec![(ApplyPhase::Rest, vec![0])]),
            ]
        );
        // A stage left with nothing to apply is no stage (and is not waited for).
        let order = apply_stages(&objs, &HashSet::from([4]));
        assert_eq!(order.first().map(|s| s.0), Some(Stage::Pre(0)));
        assert_eq!(order.len(), 3);
    }

    #[test]
    fn objects_that_are_not_hooks_are_one_stage() {
        let objs = objects(&[
            ("Deployment", "web", Stage::Main),
            ("ConfigMap", "web", Stage::Main),
        ]);
        let order = apply_stages(&objs, &HashSet::new());
        assert_eq!(order.len(), 1);
        assert_eq!(order[0].0, Stage::Main);
    }
}
