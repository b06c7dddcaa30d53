//! The drift check: Git against the live system in every layer. `diff` prints it; `plan`, `watch`
//! and `drill` act on it.

use super::context::Context;
use super::deployment::Deployment;
use crate::drift::{
    self, DriftEntry, DriftReport, EntryKind, FieldDiff, LayerDrift, ObjectResult, ObjectState,
    TerminatedInstance, Unhealthy,
};
use crate::engine::Layer;
use crate::env::model::Cluster;
use crate::error::Failure;
use crate::providers::aws::{self, CloudPlan, LiveCloud};
use crate::providers::cluster::{self as cl, ClusterDrift, NodeExpectation};
use crate::providers::kube::{self, ComponentDiff, ComponentSpec, DriftState, Resolver};
use crate::render::Mode;
use futures::stream::{self, StreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Add-ons (or apps) compared at once. A diff with seals costs a few lists per component, so what
/// bounds it is round trips, not the server: on the real control plane, 20 components of 51 objects
/// took 0.18-0.38 s 20 at a time against 0.58-0.81 s 4 at a time (docs/benchmarks.md). 16 is
/// `phoenix rebuild`'s default node concurrency; an unsealed diff (one dry run per object) is bound
/// by the API server either way.
pub const COMPONENTS_IN_FLIGHT: usize = 16;
/// Requests in flight per component (lists, reads, dry runs).
pub const REQUESTS_PER_COMPONENT: usize = 16;

/// A drift check and what it read on the way (for `plan`, which shows the cloud plan itself).
pub struct Checked {
    pub report: DriftReport,
    pub cloud_plan: Option<CloudPlan>,
    pub components: Vec<ComponentDiff>,
    /// Declared secrets that could not be read where the check ran: the values made from them
    /// were not compared (each layer lists those objects as unknown).
    pub unavailable_secrets: Vec<crate::render::Unavailable>,
}

/// Compares every layer of `deployment` with the live system. Never fails: what could not be checked
/// is an error in its layer (and the layers that needed it), so the exit code is 1.
pub async fn check(ctx: &Context, deployment: &Deployment) -> Checked {
    check_layers_of(ctx, deployment, &[]).await
}

/// [`check`] of the `selected` layers only (all when empty): the others are skipped ("left out
/// with --layers"), and the add-on and app objects are not compared unless their layer is selected.
pub async fn check_layers_of(
    ctx: &Context,
    deployment: &Deployment,
    selected: &[Layer],
) -> Checked {
    let wanted = |l: Layer| selected.is_empty() || selected.contains(&l);
    let started = Instant::now();
    let checked_at = SystemTime::now();
    let mut checked = Checked {
        report: DriftReport {
            env: deployment.name.clone(),
            commit: deployment.commit().to_string(),
            checked_at,
            duration: Duration::ZERO,
            layers: Vec::new(),
        },
        cloud_plan: None,
        components: Vec::new(),
        unavailable_secrets: Vec::new(),
    };
    let layers = match check_layers(ctx, deployment, &mut checked, &wanted).await {
        Ok(layers) => layers,
        Err(failure) => Layer::ALL
            .iter()
            .map(|&l| LayerDrift::error(l, failure.summary(), Duration::ZERO))
            .collect(),
    };
    let layers = layers
        .into_iter()
        .map(|l| {
            if wanted(l.layer) {
                l
            } else {
                LayerDrift::skipped(l.layer, "left out with --layers")
            }
        })
        .collect();
    checked.report.layers = layers;
    super::dns::add_drift(deployment, &mut checked.report.layers).await;
    checked.report.duration = started.elapsed();
    checked
}

async fn check_layers(
    ctx: &Context,
    deployment: &Deployment,
    checked: &mut Checked,
    wanted: &(dyn Fn(Layer) -> bool + Sync),
) -> Result<Vec<LayerDrift>, Failure> {
    // A secret not available here renders as `**unknown**(NAME)`: what is made from it is
    // reported as unknown, everything else is compared (a diff never needs the values).
    let secrets = crate::render::SecretValues::resolve_available(&deployment.env, &ctx.secrets_dir);
    checked.unavailable_secrets = secrets.unavailable().to_vec();
    let renderer = Arc::new(deployment.renderer(secrets, Mode::Apply)?);
    let mut components = deployment.components(&renderer, false)?;
    let mut out = Vec::new();

    // Cloud.
    let t = Instant::now();
    let mut live_cloud: Option<LiveCloud> = None;
    match deployment.ec2().await {
        Ok(None) => out.push(LayerDrift::skipped(Layer::Cloud, "not in the environment")),
        Err(e) => out.push(LayerDrift::error(Layer::Cloud, e.summary(), t.elapsed())),
        Ok(Some(ec2)) => match cloud_drift(ctx, deployment, &renderer, &ec2).await {
            Ok((plan, live, entries, backups)) => {
                let mut layer = LayerDrift::checked(Layer::Cloud, entries, vec![], t.elapsed());
                layer.backups = backups;
                // Not drift, but worth knowing (a newer image for a pinned lookup).
                layer.notes = plan
                    .changes
                    .iter()
                    .flat_map(|c| c.notes.iter().map(move |n| format!("{}: {n}", c.resource)))
                    .collect();
                out.push(layer);
                checked.cloud_plan = Some(plan);
                live_cloud = Some(live);
            }
            Err(e) => out.push(LayerDrift::error(Layer::Cloud, e.summary(), t.elapsed())),
        },
    }

    // Cluster.
    let t = Instant::now();
    let access = deployment.cluster_access(ctx)?;
    let Some(access) = access else {
        for l in [Layer::Cluster, Layer::Addons, Layer::Apps] {
            out.push(LayerDrift::skipped(l, "not in the environment"));
        }
        return Ok(out);
    };
    let k3s = match &deployment.env.cluster {
        Some(Cluster::K3s(k)) => Some(k),
        _ => None,
    };
    let expected = match (k3s, &deployment.env.cloud, &live_cloud) {
        (Some(k), Some(cloud), Some(live)) => Some(cl::ExpectedCluster {
            nodes: NodeExpectation::Instances(cl::expected_nodes(cloud, live)),
            version: Some(k.version.clone()),
        }),
        (Some(_), _, _) => None,
        (None, _, _) => Some(cl::ExpectedCluster {
            nodes: NodeExpectation::AtLeast(1),
            version: None,
        }),
    };
    // The kubeconfig is derived, not stored: a machine that never ran phoenix for this env
    // (a colleague's laptop, CI, the replacement for a lost one) reaches the cluster too. It is
    // written first, so its absence below means only that it cannot be derived here.
    // (refresh_kubeconfig does nothing without a k3s server instance.)
    if let Some(live) = &live_cloud {
        if let Err(e) = deployment.refresh_kubeconfig(ctx, live) {
            unreachable_cluster(
                &mut out,
                format!("cannot reach the cluster: {}", e.summary()),
                t,
            );
            return Ok(out);
        }
    }
    // A k3s cluster without a server instance does not exist, and one without a kubeconfig
    // (the cluster secret is not available here to derive it) cannot be reached: everything
    // above the cloud is missing, which is known without asking anything.
    let not_built = match (k3s, &deployment.env.cloud, &live_cloud) {
        (Some(_), Some(cloud), Some(live))
            if cl::server_instance(&deployment.name, cloud, live).is_err() =>
        {
            Some("no k3s server instance exists, so neither does the cluster".to_string())
        }
        (Some(_), _, _) if !access.kubeconfig.exists() => Some(format!(
            "not reachable from here: no kubeconfig at {} (the cluster layer has not run, or the \
             cluster secret is not available to derive it)",
            access.kubeconfig.display()
        )),
        _ => None,
    };
    if let Some(why) = not_built {
        out.push(LayerDrift::checked(
            Layer::Cluster,
            vec![
                DriftEntry::new(Layer::Cluster, "control-plane", EntryKind::Missing)
                    .with_detail(why),
            ],
            vec![],
            t.elapsed(),
        ));
        for layer in [Layer::Addons, Layer::Apps] {
            if !components.iter().any(|c| c.layer == layer) {
                out.push(LayerDrift::skipped(layer, "not in the environment"));
                continue;
            }
            let results: Vec<ObjectResult> = components
                .iter()
                .filter(|c| c.layer == layer)
                .flat_map(|c| c.manifests.iter())
                .map(|m| ObjectResult {
                    resource: match m.namespace() {
                        Some(ns) => format!("{}/{ns}/{}", m.kind(), m.name()),
                        None => format!("{}/{}", m.kind(), m.name()),
                    },
                    state: ObjectState::Missing {
                        desired: redacted(&m.object),
                    },
                    unhealthy: None,
                })
                .collect();
            let (entries, unhealthy) = drift::object_entries(layer, &results);
            out.push(LayerDrift::checked(
                layer,
                entries,
                unhealthy,
                Duration::ZERO,
            ));
        }
        return Ok(out);
    }
    let client = match cl::client_for(&access).await {
        Ok(c) => c,
        Err(e) => {
            let why = format!("cannot reach the cluster: {}", crate::error::chain(&e));
            unreachable_cluster(&mut out, why, t);
            return Ok(out);
        }
    };
    match expected {
        None => out.push(LayerDrift::error(
            Layer::Cluster,
            "not checked: the cloud layer could not be checked, so the expected nodes are unknown",
            Duration::ZERO,
        )),
        Some(expected) => match cl::observe_cluster(&client, &expected).await {
            Ok(status) => out.push(LayerDrift::checked(
                Layer::Cluster,
                status.drift.iter().map(cluster_entry).collect(),
                vec![],
                t.elapsed(),
            )),
            Err(e) => out.push(LayerDrift::error(
                Layer::Cluster,
                crate::error::chain(&e),
                t.elapsed(),
            )),
        },
    }

    // What the manifests know only at run time (an EBS CSI volume's id) is filled in first;
    // what cannot be (a missing volume) stays as rendered and shows as drift.
    let mut incomplete: Vec<(Layer, String)> = Vec::new();
    for c in components.iter_mut() {
        if let Some(completion) = c.completion.clone() {
            if let Err(e) = completion
                .complete(
                    &client,
                    &mut c.manifests,
                    kube::CompletionFor::Compare,
                    &|_| {},
                )
                .await
            {
                incomplete.push((c.layer, format!("{}: {}", c.name, crate::error::chain(&e))));
            }
        }
    }

    // Add-ons and apps: every component compared concurrently, one discovery cache.
    let resolver = Resolver::new();
    let seals = kube::SealStore::under(&ctx.home, &deployment.name);
    for layer in [Layer::Addons, Layer::Apps] {
        let t = Instant::now();
        let specs: Vec<&ComponentSpec> = components.iter().filter(|c| c.layer == layer).collect();
        if !wanted(layer) {
            // Replaced by "left out with --layers" in the report: no object is compared.
            out.push(LayerDrift::skipped(layer, "left out with --layers"));
            continue;
        }
        // The futures are made up front (not by a closure inside the stream), so the check
        // stays Send for the watch agent.
        let futures: Vec<_> = specs
            .iter()
            .map(|spec| {
                kube::diff_component_with(&client, spec, &resolver, REQUESTS_PER_COMPONENT, &seals)
            })
            .collect();
        let results: Vec<_> = stream::iter(futures)
            .buffered(COMPONENTS_IN_FLIGHT)
            .collect()
            .await;
        let mut diffs = Vec::new();
        let mut errors: Vec<String> = incomplete
            .iter()
            .filter(|(l, _)| *l == layer)
            .map(|(_, e)| e.clone())
            .collect();
        for (spec, r) in specs.iter().zip(results) {
            match r {
                Ok(d) => diffs.push(d),
                Err(e) => errors.push(format!("{}: {}", spec.name, crate::error::chain(&e))),
            }
        }
        let removed = match removed_components(&client, deployment, layer, &components).await {
            Ok(r) => r,
            Err(e) => {
                errors.push(e);
                Vec::new()
            }
        };
        if !errors.is_empty() {
            out.push(LayerDrift::error(layer, errors.join("; "), t.elapsed()));
        } else if specs.is_empty() && removed.is_empty() {
            // Nothing in Git and nothing of phoenix's left live: the env has no such layer.
            out.push(LayerDrift::skipped(layer, "not in the environment"));
        } else {
            let (mut entries, unhealthy) = object_drift(layer, &diffs);
            entries.extend(removed);
            let unknown = diffs
                .iter()
                .flat_map(|d| &d.objects)
                .filter(|o| !o.unknown.is_empty())
                .map(|o| drift::UnknownValues {
                    resource: resource_of(&o.object),
                    fields: o
                        .unknown
                        .iter()
                        .map(|p| p.trim_start_matches('.').to_string())
                        .collect(),
                })
                .collect();
            let mut checked_layer =
                LayerDrift::checked(layer, entries, unhealthy, t.elapsed()).with_unknown(unknown);
            // Fields another manager added: a server-side comparison cannot call them drift
            // (applying Git leaves them), but they are not in Git either.
            checked_layer
                .notes
                .extend(diffs.iter().flat_map(|d| &d.additions).map(|a| {
                    format!(
                    "{}: added by {}, not in Git (a rebuild leaves it; not counted as drift): {}",
                    resource_of(&a.object),
                    a.manager,
                    a.paths.join(", ")
                )
                }));
            out.push(checked_layer);
        }
        checked.components.extend(diffs);
    }
    Ok(out)
}

async fn cloud_drift(
    ctx: &Context,
    deployment: &Deployment,
    renderer: &Arc<crate::render::Renderer>,
    ec2: &aws::Ec2,
) -> Result<(CloudPlan, LiveCloud, Vec<DriftEntry>, Vec<drift::BackupAge>), Failure> {
    let live = deployment.observe_cloud(ec2).await?;
    let desired = deployment
        .desired_cloud(ctx, renderer, &live, false)?
        .ok_or_else(|| Failure::new("the environment has no cloud section"))?;
    let plan = aws::plan_live(ec2, &desired).await.map_err(|e| {
        Failure::from_error(
            format!(
                "cannot compare the cloud layer of {} with EC2",
                deployment.name
            ),
            &e,
        )
    })?;
    let gone = aws::gone_instances(ec2, &deployment.name)
        .await
        .map_err(|e| Failure::from_error("cannot list terminated instances", &e))?
        .into_iter()
        .map(|(resource, instance_id, state)| TerminatedInstance {
            resource,
            instance_id,
            state,
        })
        .collect::<Vec<_>>();
    let mut entries = drift::cloud_entries(&plan, &gone);
    // Data volumes: missing, detached, resized; and backups older than their objective.
    let specs = deployment.volume_specs();
    let observed = aws::observe_volumes(ec2, &specs).await.map_err(|e| {
        Failure::from_error(
            format!("cannot read the data volumes of {}", deployment.name),
            &e,
        )
    })?;
    let (mut volume_entries, backups) =
        drift::volume_entries(&specs, &observed, std::time::SystemTime::now());
    if deployment.name != deployment.env.name {
        // A copy takes no backups: the age of the env's snapshots is the env's drift, and a
        // drill judges the recovery point of what it restored in its verdict instead.
        volume_entries.retain(|e| !e.resource.starts_with("backup/"));
    }
    entries.extend(volume_entries);
    Ok((plan, live, entries, backups))
}

fn cluster_entry(d: &ClusterDrift) -> DriftEntry {
    let entry = |resource: String, kind| DriftEntry::new(Layer::Cluster, resource, kind);
    match d {
        ClusterDrift::NodeMissing { node } => entry(format!("node/{node}"), EntryKind::Missing)
            .with_detail(format!("no Ready node has registered for {node}")),
        ClusterDrift::NodeNotReady { node } => entry(format!("node/{node}"), EntryKind::NotReady)
            .with_fields(vec![FieldDiff::value("ready", "true", "false")]),
        ClusterDrift::TooFewReady { ready, expected } => entry("nodes".into(), EntryKind::Missing)
            .with_fields(vec![FieldDiff::value(
                "ready-nodes",
                format!("at least {expected}"),
                ready.to_string(),
            )]),
        ClusterDrift::UnexpectedNode { name } => entry(format!("node/{name}"), EntryKind::Extra)
            .with_detail("matches no instance of the environment"),
        ClusterDrift::ServerVersion { desired, live } => {
            entry("control-plane".into(), EntryKind::Version).with_fields(vec![FieldDiff::value(
                "version",
                desired.as_str(),
                live.as_str(),
            )])
        }
        ClusterDrift::KubeletVersion {
            node,
            desired,
            live,
        } => entry(format!("node/{node}"), EntryKind::Version).with_fields(vec![FieldDiff::value(
            "kubeletVersion",
            desired.as_str(),
            live.as_str(),
        )]),
    }
}

fn resource_of(o: &kube::ObjectRef) -> String {
    match &o.namespace {
        Some(ns) => format!("{}/{ns}/{}", o.kind, o.name),
        None => format!("{}/{}", o.kind, o.name),
    }
}

fn shown(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The provider's per-object comparison as drift entries (with a unified diff each) and the
/// unhealthy objects, reported apart.
fn object_drift(layer: Layer, diffs: &[ComponentDiff]) -> (Vec<DriftEntry>, Vec<Unhealthy>) {
    let mut results = Vec::new();
    let mut not_owned = Vec::new();
    for d in diffs {
        for o in &d.objects {
            let resource = resource_of(&o.object);
            let state = match &o.state {
                DriftState::InSync => ObjectState::InSync,
                DriftState::Missing => ObjectState::Missing {
                    desired: o.desired.clone(),
                },
                DriftState::Changed(fields) => ObjectState::Changed {
                    fields: fields
                        .iter()
                        .map(|f| {
                            FieldDiff::new(
                                f.path.trim_start_matches('.'),
                                f.desired.as_ref().map(shown),
                                f.live.as_ref().map(shown),
                            )
                        })
                        .collect(),
                    desired: o.desired.clone(),
                    live: o.live.clone().unwrap_or_default(),
                },
                DriftState::NeedsRecreate(why) => {
                    not_owned.push(
                        DriftEntry::new(layer, resource, EntryKind::Recreate).with_detail(format!(
                            "{why}; a rebuild of {} deletes it and creates it again",
                            d.component
                        )),
                    );
                    continue;
                }
                DriftState::NotOwned(found) => {
                    not_owned.push(
                        DriftEntry::new(layer, resource, EntryKind::Changed)
                            .with_fields(vec![FieldDiff::value(
                                "owner",
                                format!("phoenix ({} {})", d.env, d.component),
                                found.as_str(),
                            )])
                            .with_detail(format!(
                                "exists without phoenix's marks; a rebuild of {} will refuse to touch it",
                                d.component
                            )),
                    );
                    continue;
                }
            };
            let unhealthy = d
                .unhealthy
                .iter()
                .find(|u| u.object == o.object)
                .map(|u| u.reason.clone());
            results.push(ObjectResult {
                resource,
                state,
                unhealthy,
            });
        }
        for (o, live) in d.extra.iter().zip(&d.extra_live) {
            results.push(ObjectResult {
                resource: resource_of(o),
                state: ObjectState::Extra { live: live.clone() },
                unhealthy: None,
            });
        }
    }
    let (mut entries, unhealthy) = drift::object_entries(layer, &results);
    entries.extend(not_owned);
    (entries, unhealthy)
}

/// Components of `layer` recorded in the cluster's inventories but no longer in Git: each is an
/// extra entry (the next rebuild deletes them).
async fn removed_components(
    client: &::kube::Client,
    deployment: &Deployment,
    layer: Layer,
    components: &[ComponentSpec],
) -> Result<Vec<DriftEntry>, String> {
    let inventories = kube::inventories(client, &deployment.name)
        .await
        .map_err(|e| format!("cannot read the inventories: {}", crate::error::chain(&e)))?;
    Ok(inventories
        .iter()
        .filter(|inv| inv.layer == layer)
        .filter(|inv| {
            !components
                .iter()
                .any(|c| c.layer == layer && c.name == inv.component)
        })
        .flat_map(|inv| {
            inv.objects.iter().map(move |o| {
                DriftEntry::new(layer, resource_of(o), EntryKind::Extra).with_detail(format!(
                    "component {} is no longer in Git; the next rebuild deletes it",
                    inv.component
                ))
            })
        })
        .collect())
}

/// A manifest as a diff may show it: Secret values replaced.
fn redacted(obj: &serde_json::Value) -> serde_json::Value {
    let mut v = obj.clone();
    if v["kind"] == "Secret" {
        kube::hide_secret_values(&mut v);
    }
    v
}

/// The cluster layer as an error, and the add-on and app layers as not checked because of it.
fn unreachable_cluster(out: &mut Vec<LayerDrift>, why: String, started: Instant) {
    out.push(LayerDrift::error(
        Layer::Cluster,
        why.clone(),
        started.elapsed(),
    ));
    for l in [Layer::Addons, Layer::Apps] {
        out.push(LayerDrift::error(
            l,
            format!("not checked: {why}"),
            Duration::ZERO,
        ));
    }
}
