//! `phoenix plan ENV`: the graph, layer by layer, with what a rebuild would do.

use super::Outcome;
use crate::cli::PlanArgs;
use crate::drift::{DriftStatus, EntryKind};
use crate::engine::{Layer, NodeSpec};
use crate::error::{ExitCode, Failure};
use crate::providers::kube;
use crate::render::{Mode, Renderer, SecretValues};
use crate::report::format_duration;
use crate::report::output::{commit_json_camel, commit_line, print_json};
use crate::workflow::check::{check_layers_of, Checked};
use crate::workflow::converge::{planned_nodes, ConvergeSettings};
use crate::workflow::{Context, Deployment};
use std::collections::BTreeMap;

pub async fn run(ctx: &Context, args: &PlanArgs) -> Outcome {
    let name = &args.env.env;
    if let Some(against) = &args.against {
        let req = crate::review::Request {
            env: name,
            against,
            layers: &args.layers,
            live: args.live,
        };
        return crate::review::run(ctx, &req).await;
    }
    if args.offline {
        offline_plan(ctx, name, &args.layers, args.detailed_exitcode).await
    } else {
        live_plan(ctx, name, &args.layers, args.detailed_exitcode).await
    }
}

/// The plan against live state, layer by layer: the same comparison as `phoenix diff`.
async fn live_plan(
    ctx: &Context,
    name: &str,
    layers: &[Layer],
    detailed_exitcode: bool,
) -> Outcome {
    let deployment = Deployment::open(ctx, name, None).await?;
    let checked = check_layers_of(ctx, &deployment, layers).await;
    let report = &checked.report;
    let errors: Vec<String> = report
        .layers
        .iter()
        .filter_map(|l| match &l.status {
            DriftStatus::Error(e) => Some(format!("{}: {e}", l.layer)),
            _ => None,
        })
        .collect();
    if !errors.is_empty() {
        let mut f = Failure::new(format!(
            "cannot plan {}: not every layer could be compared",
            deployment.name
        ));
        for e in errors {
            f = f.cause(e);
        }
        return Err(
            f.help("`phoenix plan --offline` shows the whole graph without contacting anything")
        );
    }
    // A backup older than its objective is drift, but nothing a rebuild changes.
    let stale_backups = report
        .entries()
        .filter(|e| e.layer == Layer::Cloud && e.resource.starts_with("backup/"))
        .count();
    let changes: usize = report.entry_count() - stale_backups;
    if ctx.json() {
        print_json(&live_json(&deployment, &checked));
    } else {
        crate::outln!("{}", commit_line(&deployment.snap));
        crate::outln!("plan for {} against live state", deployment.name);
        for u in &checked.unavailable_secrets {
            crate::outln!(
                "secret {} is not available here ({}): what is made from it is shown as unknown, not compared",
                u.name,
                u.why
            );
        }
        for l in &report.layers {
            match (&l.status, l.layer) {
                // Layers the env does not have, or left out with --layers, are not shown.
                (DriftStatus::Skipped(_), _) => {}
                (_, Layer::Cloud) => {
                    if let Some(plan) = &checked.cloud_plan {
                        crate::outln!("\ncloud:\n{plan}");
                    }
                    // Data volumes and their backups are not in the cloud plan: their entries.
                    for e in l.entries.iter().filter(|e| is_volume_entry(&e.resource)) {
                        if e.resource.starts_with("backup/") {
                            crate::outln!(
                                "  note: {}{}; a rebuild does not change it: run `phoenix backup {}`",
                                e.resource,
                                describe(e),
                                deployment.name
                            );
                        } else {
                            crate::outln!("  {} {}{}", action_of(e.kind), e.resource, describe(e));
                        }
                    }
                }
                (_, layer) if l.entries.is_empty() && l.unknown.is_empty() => {
                    crate::outln!("\n{layer}: no changes")
                }
                (_, layer) => {
                    crate::outln!("\n{layer}:");
                    for e in &l.entries {
                        match refused_owner(e) {
                            // Not phoenix's object: a rebuild refuses it, it does not update it.
                            Some(found) => crate::outln!(
                                "  ! refused {} (exists, not phoenix's: {found}; a rebuild refuses to touch it)",
                                e.resource
                            ),
                            None => crate::outln!(
                                "  {} {}{}",
                                action_of(e.kind),
                                e.resource,
                                describe(e)
                            ),
                        }
                    }
                    for u in &l.unknown {
                        crate::outln!(
                            "  ? unknown {} ({}: made from a secret not available here)",
                            u.resource,
                            u.fields.join(", ")
                        );
                    }
                }
            }
        }
        crate::outln!(
            "\n{changes} change{} pending.",
            if changes == 1 { "" } else { "s" }
        );
    }
    if detailed_exitcode && changes > 0 {
        return Ok(ExitCode::Changes);
    }
    Ok(ExitCode::Ok)
}

/// The version of the `plan --output json` document (docs/json.md).
pub const PLAN_SCHEMA_VERSION: u32 = 1;

/// One change of a plan document: `id` is the graph node that makes it (`cloud/subnet/a`,
/// `cluster/control-plane`, `apps/web`), `resource` what it is about.
fn change(
    id: &str,
    layer: Layer,
    resource: &str,
    action: &str,
    detail: Option<&str>,
    fields: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "layer": layer.as_str(),
        "resource": resource,
        "action": action,
        "detail": detail,
        "fields": fields,
    })
}

/// The summary of a plan document: how many changes of each action.
fn summary_of(changes: &[serde_json::Value]) -> serde_json::Value {
    let mut counts = serde_json::Map::new();
    for a in [
        "create",
        "update",
        "replace",
        "delete",
        "start",
        "wait",
        "version",
        "refused",
        "unchanged",
    ] {
        let n = changes.iter().filter(|c| c["action"] == a).count();
        counts.insert(a.to_string(), n.into());
    }
    serde_json::Value::Object(counts)
}

/// The live plan as the versioned document shared with `--offline`.
fn live_json(deployment: &Deployment, checked: &Checked) -> serde_json::Value {
    use crate::drift::EntryKind;
    let mut changes = Vec::new();
    // Kubernetes objects by resource: the component node that applies them.
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    for d in &checked.components {
        for o in &d.objects {
            let resource = match &o.object.namespace {
                Some(ns) => format!("{}/{ns}/{}", o.object.kind, o.object.name),
                None => format!("{}/{}", o.object.kind, o.object.name),
            };
            owner.insert(
                resource,
                crate::providers::kube::node_id(d.layer, &d.component),
            );
        }
    }
    let fields_of = |e: &crate::drift::DriftEntry| {
        serde_json::Value::Array(
            e.fields
                .iter()
                .map(
                    |f| serde_json::json!({ "path": f.path, "desired": f.desired, "live": f.live }),
                )
                .collect(),
        )
    };
    for l in &checked.report.layers {
        if matches!(l.status, DriftStatus::Skipped(_)) {
            continue;
        }
        match l.layer {
            Layer::Cloud => {
                for c in checked.cloud_plan.iter().flat_map(|p| &p.changes) {
                    let fields = serde_json::Value::Array(
                        c.fields
                            .iter()
                            .map(|f| serde_json::json!({ "path": f.field, "desired": f.desired, "live": f.live }))
                            .collect(),
                    );
                    // A change a rebuild refuses to make (e.g. starting a stopped k3s server
                    // reached at its public address) is shown as refused, with why.
                    let detail = c
                        .refused
                        .as_deref()
                        .or(c.reason.as_deref())
                        .or(c.summary.as_deref());
                    let action = match &c.refused {
                        Some(_) => "refused",
                        None => c.action.as_str(),
                    };
                    changes.push(change(
                        &format!("cloud/{}", c.resource),
                        Layer::Cloud,
                        &c.resource,
                        action,
                        detail,
                        fields,
                    ));
                }
                for e in l
                    .entries
                    .iter()
                    .filter(|e| e.resource.starts_with("volume/"))
                {
                    let name = e.resource.split_once('/').map(|(_, n)| n).unwrap_or("");
                    let action = match e.kind {
                        EntryKind::Missing => "create",
                        EntryKind::Extra => "delete",
                        _ => "update",
                    };
                    changes.push(change(
                        &crate::providers::aws::volume_node_id(name),
                        Layer::Cloud,
                        &e.resource,
                        action,
                        e.detail.as_deref(),
                        fields_of(e),
                    ));
                }
            }
            layer => {
                for e in &l.entries {
                    let action = match (refused_owner(e), e.kind) {
                        (Some(_), _) => "refused",
                        (None, EntryKind::Missing) => "create",
                        (None, EntryKind::Extra) => "delete",
                        (None, EntryKind::Changed) => "update",
                        (None, EntryKind::Stopped) => "start",
                        (None, EntryKind::NotReady) => "wait",
                        (None, EntryKind::Version) => "version",
                        (None, EntryKind::Recreate) => "replace",
                    };
                    let id = match layer {
                        Layer::Cluster => crate::providers::cluster::CONTROL_PLANE_NODE.to_string(),
                        _ => owner.get(&e.resource).cloned().unwrap_or_else(|| {
                            // Objects of components removed from Git: the layer's prune node.
                            crate::providers::kube::prune_node_id(layer)
                        }),
                    };
                    changes.push(change(
                        &id,
                        layer,
                        &e.resource,
                        action,
                        e.detail.as_deref(),
                        fields_of(e),
                    ));
                }
                // Objects compared in sync are unchanged.
                for d in checked.components.iter().filter(|d| d.layer == layer) {
                    for o in &d.objects {
                        if o.state == crate::providers::kube::DriftState::InSync
                            && o.unknown.is_empty()
                        {
                            let resource = match &o.object.namespace {
                                Some(ns) => format!("{}/{ns}/{}", o.object.kind, o.object.name),
                                None => format!("{}/{}", o.object.kind, o.object.name),
                            };
                            let id = crate::providers::kube::node_id(layer, &d.component);
                            changes.push(change(
                                &id,
                                layer,
                                &resource,
                                "unchanged",
                                None,
                                serde_json::json!([]),
                            ));
                        }
                    }
                }
            }
        }
    }
    let unknown: Vec<serde_json::Value> = checked
        .report
        .layers
        .iter()
        .flat_map(|l| {
            l.unknown.iter().map(move |u| {
                serde_json::json!({ "layer": l.layer.as_str(), "resource": u.resource, "fields": u.fields })
            })
        })
        .collect();
    serde_json::json!({
        "schemaVersion": PLAN_SCHEMA_VERSION,
        "env": deployment.name,
        "commit": commit_json_camel(&deployment.snap),
        "offline": false,
        "layers": checked.report.layers.iter().filter(|l| !matches!(l.status, DriftStatus::Skipped(_))).map(|l| l.layer.as_str()).collect::<Vec<_>>(),
        "changes": changes,
        "unknown": unknown,
        "unavailableSecrets": checked.unavailable_secrets.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
        "summary": summary_of(&changes),
    })
}

/// What the live object's marks say, for an object in Git that exists without phoenix's marks for
/// this component (the drift entry's `owner` field).
fn refused_owner(e: &crate::drift::DriftEntry) -> Option<&str> {
    e.fields
        .iter()
        .find(|f| f.path == "owner")
        .and_then(|f| f.live.as_deref())
}

/// What a rebuild does about one divergence.
fn action_of(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Missing => "+ create",
        EntryKind::Extra => "- delete",
        EntryKind::Changed => "~ update",
        EntryKind::Stopped => "~ start ",
        EntryKind::NotReady => "? wait  ",
        EntryKind::Version => "! version",
        EntryKind::Recreate => "-/+ replace",
    }
}

fn describe(e: &crate::drift::DriftEntry) -> String {
    let fields: Vec<String> = e
        .fields
        .iter()
        .map(|f| {
            format!(
                "{}: {} -> {}",
                f.path,
                f.live.as_deref().unwrap_or("(none)"),
                f.desired.as_deref().unwrap_or("(none)")
            )
        })
        .collect();
    match (&e.detail, fields.is_empty()) {
        (Some(d), true) => format!(" ({d})"),
        (_, false) => format!(" ({})", fields.join("; ")),
        (None, true) => String::new(),
    }
}

/// The graph a rebuild runs when nothing exists, built without contacting anything: the same
/// node specs (ids, edges, descriptions, timeouts) as the run, from the same builders.
async fn offline_plan(
    ctx: &Context,
    name: &str,
    layers: &[Layer],
    detailed_exitcode: bool,
) -> Outcome {
    let wanted = |l: Layer| layers.is_empty() || layers.contains(&l);
    let deployment = Deployment::open(ctx, name, None).await?;
    let settings = ConvergeSettings {
        layers: layers.to_vec(),
        ..ConvergeSettings::default()
    };
    let nodes = planned_nodes(ctx, &deployment, &settings).await?;
    let (snap, env) = (&deployment.snap, &deployment.env);

    // Offline, the component objects are counted from the rendered manifests (secrets redacted).
    let renderer = Renderer::new(
        &**snap,
        env,
        &env.name,
        SecretValues::redacted(env),
        Mode::Display,
    )
    .map_err(|e| Failure::new(format!("cannot render {name}")).cause(e.to_string()))?;
    // By component node: each object's kind, namespace and name.
    let mut objects: BTreeMap<String, Vec<(String, Option<String>, String)>> = BTreeMap::new();
    for (layer, list) in [(Layer::Addons, &env.addons), (Layer::Apps, &env.apps)] {
        for c in list {
            let manifests = renderer.manifests(&**snap, c).map_err(|e| {
                Failure::new(format!("cannot render component {}", c.name)).cause(e.to_string())
            })?;
            objects.insert(
                kube::node_id(layer, &c.name),
                manifests
                    .iter()
                    .map(|m| {
                        // Where the object goes: its own namespace, else the component's (or
                        // `default`), as applying does; cluster-scoped kinds have none.
                        let ns = m.namespace().or_else(|| {
                            (!kube::builtin_cluster_scoped(m.api_version(), m.kind()))
                                .then(|| c.namespace.as_deref().unwrap_or("default"))
                        });
                        (
                            m.kind().to_string(),
                            ns.map(str::to_string),
                            m.name().to_string(),
                        )
                    })
                    .collect(),
            );
        }
    }
    // Layers the env does not have, or left out with --layers, are not shown.
    let shown: Vec<Layer> = Layer::ALL
        .into_iter()
        .filter(|&l| wanted(l) && nodes.iter().any(|n| n.layer == l))
        .collect();
    let nodes: Vec<&NodeSpec> = nodes.iter().filter(|n| shown.contains(&n.layer)).collect();
    // From nothing, every node creates what it converges, except the prunes: nothing to remove.
    let creates = |n: &NodeSpec| n.id != kube::prune_node_id(n.layer);
    let total = nodes.iter().filter(|n| creates(n)).count();
    if ctx.json() {
        // The same document as the live plan: every node is created, and says what it is.
        let mut changes = Vec::new();
        for n in &nodes {
            let resource = n.id.split_once('/').map_or(n.id.as_str(), |(_, rest)| rest);
            let objs = objects.get(&n.id).map(Vec::as_slice).unwrap_or_default();
            // A component is its objects, as in the live plan; other nodes are what they make.
            if objs.is_empty() {
                changes.push(change(
                    &n.id,
                    n.layer,
                    resource,
                    if creates(n) { "create" } else { "unchanged" },
                    Some(&n.description),
                    serde_json::json!([]),
                ));
            }
            for (kind, ns, name) in objs {
                let resource = match ns {
                    Some(ns) => format!("{kind}/{ns}/{name}"),
                    None => format!("{kind}/{name}"),
                };
                changes.push(change(
                    &n.id,
                    n.layer,
                    &resource,
                    "create",
                    None,
                    serde_json::json!([]),
                ));
            }
        }
        print_json(&serde_json::json!({
            "schemaVersion": PLAN_SCHEMA_VERSION,
            "env": name,
            "commit": commit_json_camel(snap),
            "offline": true,
            "layers": shown.iter().map(|l| l.as_str()).collect::<Vec<_>>(),
            "changes": changes,
            "unknown": [],
            "unavailableSecrets": [],
            "summary": summary_of(&changes),
        }));
    } else {
        crate::outln!("{}", commit_line(snap));
        crate::outln!("plan for {name} (offline: live state not consulted; every resource shown as built from nothing)");
        for &layer in &shown {
            let nodes: Vec<&NodeSpec> =
                nodes.iter().copied().filter(|n| n.layer == layer).collect();
            let timeout = nodes.iter().map(|n| n.timeout).max().unwrap_or_default();
            crate::outln!(
                "\n{layer} ({} node{}, waits up to {}):",
                nodes.len(),
                if nodes.len() == 1 { "" } else { "s" },
                format_duration(timeout)
            );
            let width = nodes.iter().map(|n| n.id.len()).max().unwrap_or(0);
            for n in nodes {
                let after = if n.depends_on.is_empty() || layer == Layer::Cloud {
                    String::new()
                } else {
                    format!(" (after {})", n.depends_on.join(", "))
                };
                let mark = if creates(n) { '+' } else { '=' };
                crate::outln!("  {mark} {:width$}  {}{after}", n.id, n.description);
                if let Some(objs) = objects.get(&n.id) {
                    for (kind, ns, name) in objs {
                        match ns {
                            Some(ns) => crate::outln!("  {:width$}      {kind} {ns}/{name}", ""),
                            None => crate::outln!("  {:width$}      {kind} {name}", ""),
                        }
                    }
                }
            }
        }
        crate::outln!("\n{total} to create, 0 to update, 0 to replace, 0 to delete.");
    }
    if detailed_exitcode && total > 0 {
        return Ok(ExitCode::Changes);
    }
    Ok(ExitCode::Ok)
}

/// Cloud drift entries that come from the data volumes (`volume/NAME`, and `backup/NAME`: a
/// backup older than its objective), not from the cloud plan.
fn is_volume_entry(resource: &str) -> bool {
    resource.starts_with("volume/") || resource.starts_with("backup/")
}
