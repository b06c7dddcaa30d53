//! `phoenix plan ENV`: the graph, layer by layer, with what a rebuild would do.

use super::common::{commit_json, commit_line, load_env, print_json, Context, Outcome};
use super::deploy::Deployment;
use crate::cli::PlanArgs;
use crate::drift::{EntryKind, LayerStatus};
use crate::engine::Layer;
use crate::error::{ExitCode, Failure};
use crate::render::{Mode, Renderer, SecretValues};
use std::collections::BTreeMap;

pub async fn run(ctx: &Context, args: &PlanArgs) -> Outcome {
    let name = &args.env.env;
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
    let dep = Deployment::open(ctx, name, None).await?;
    let checked = super::diff::check_layers_of(ctx, &dep, layers).await;
    let report = &checked.report;
    let errors: Vec<String> = report
        .layers
        .iter()
        .filter_map(|l| match &l.status {
            LayerStatus::Error(e) => Some(format!("{}: {e}", l.layer)),
            _ => None,
        })
        .collect();
    if !errors.is_empty() {
        let mut f = Failure::new(format!(
            "cannot plan {}: not every layer could be compared",
            dep.name
        ));
        for e in errors {
            f = f.cause(e);
        }
        return Err(
            f.help("`phoenix plan --offline` shows the whole graph without contacting anything")
        );
    }
    let changes: usize = report.entry_count();
    if ctx.json() {
        let mut out = serde_json::json!({
            "env": dep.name,
            "commit": commit_json(&dep.snap),
            "offline": false,
            "changes": changes,
            "unavailableSecrets": checked.unavailable_secrets.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
            "drift": crate::drift::json_value(report),
        });
        if let Some(plan) = &checked.cloud_plan {
            out["cloud"] = serde_json::to_value(plan).unwrap_or_default();
        }
        print_json(&out);
    } else {
        crate::outln!("{}", commit_line(&dep.snap));
        crate::outln!("plan for {} against live state", dep.name);
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
                (LayerStatus::Skipped(_), _) => {}
                (_, Layer::Cloud) => {
                    if let Some(plan) = &checked.cloud_plan {
                        crate::outln!("\ncloud:\n{plan}");
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

/// What the live object's marks say, for an object in Git that exists without phoenix's marks for
/// this component (the drift entry's `owner` field).
fn refused_owner(e: &crate::drift::DriftEntry) -> Option<&str> {
    e.fields
        .iter()
        .find(|f| f.path == "owner")
        .and_then(|f| f.live.as_deref())
}

/// Whether a built-in kind is cluster-scoped, for the offline plan (which asks no API server).
/// Kinds from CRDs are taken as namespaced, as most are.
fn cluster_scoped(api_version: &str, kind: &str) -> bool {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    matches!(
        (group, kind),
        ("", "Namespace" | "Node" | "PersistentVolume")
            | (
                "rbac.authorization.k8s.io",
                "ClusterRole" | "ClusterRoleBinding"
            )
            | ("apiextensions.k8s.io", "CustomResourceDefinition")
            | ("apiregistration.k8s.io", "APIService")
            | (
                "storage.k8s.io",
                "StorageClass" | "CSIDriver" | "CSINode" | "VolumeAttachment"
            )
            | ("scheduling.k8s.io", "PriorityClass")
            | ("networking.k8s.io", "IngressClass")
            | ("node.k8s.io", "RuntimeClass")
            | (
                "admissionregistration.k8s.io",
                "MutatingWebhookConfiguration"
                    | "ValidatingWebhookConfiguration"
                    | "ValidatingAdmissionPolicy"
                    | "ValidatingAdmissionPolicyBinding"
            )
    )
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

/// The graph as built from nothing, without contacting anything.
async fn offline_plan(
    ctx: &Context,
    name: &str,
    layers: &[Layer],
    detailed_exitcode: bool,
) -> Outcome {
    let wanted = |l: Layer| layers.is_empty() || layers.contains(&l);
    let snap = ctx.open().await?;
    let env = load_env(ctx, &snap, name)?;
    let graph = crate::plan::build(&env);

    // Offline, the component objects are counted from the rendered manifests (secrets redacted).
    let renderer = Renderer::new(
        &*snap,
        &env,
        &env.name,
        SecretValues::redacted(&env),
        Mode::Display,
    )
    .map_err(|e| Failure::new(format!("cannot render {name}")).cause(e.to_string()))?;
    let mut objects: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (prefix, list) in [("addons", &env.addons), ("apps", &env.apps)] {
        for c in list {
            let manifests = renderer.manifests(&*snap, c).map_err(|e| {
                Failure::new(format!("cannot render component {}", c.name)).cause(e.to_string())
            })?;
            objects.insert(
                format!("{prefix}/{}", c.name),
                manifests
                    .iter()
                    .map(|m| {
                        // Where the object goes: its own namespace, else the component's (or
                        // `default`), as applying does; cluster-scoped kinds have none.
                        let ns = m.namespace().or_else(|| {
                            (!cluster_scoped(m.api_version(), m.kind()))
                                .then(|| c.namespace.as_deref().unwrap_or("default"))
                        });
                        match ns {
                            Some(ns) => format!("{} {ns}/{}", m.kind(), m.name()),
                            None => format!("{} {}", m.kind(), m.name()),
                        }
                    })
                    .collect(),
            );
        }
    }
    // Layers the env does not have, or left out with --layers, are not shown.
    let shown: Vec<Layer> = Layer::ALL
        .into_iter()
        .filter(|&l| wanted(l) && graph.layer(l).next().is_some())
        .collect();
    let total = graph
        .nodes
        .iter()
        .filter(|n| shown.contains(&n.layer))
        .count();
    if ctx.json() {
        let nodes: Vec<serde_json::Value> = graph
            .nodes
            .iter()
            .filter(|n| shown.contains(&n.layer))
            .map(|n| {
                let mut v = serde_json::to_value(n).unwrap_or_default();
                v["action"] = "create".into();
                if let Some(objs) = objects.get(&n.id) {
                    v["objects"] = serde_json::json!(objs);
                }
                v
            })
            .collect();
        print_json(&serde_json::json!({
            "env": name,
            "commit": commit_json(&snap),
            "offline": true,
            "layers": shown.iter().map(|l| l.as_str()).collect::<Vec<_>>(),
            "nodes": nodes,
            "summary": { "create": total, "update": 0, "replace": 0, "delete": 0, "unchanged": 0 },
        }));
    } else {
        crate::outln!("{}", commit_line(&snap));
        crate::outln!("plan for {name} (offline: live state not consulted; every resource shown as built from nothing)");
        for &layer in &shown {
            let nodes: Vec<_> = graph.layer(layer).collect();
            let timeout = nodes.iter().map(|n| n.timeout).max().unwrap_or_default();
            crate::outln!(
                "\n{layer} ({} node{}, waits up to {}):",
                nodes.len(),
                if nodes.len() == 1 { "" } else { "s" },
                humantime::format_duration(timeout)
            );
            let width = nodes.iter().map(|n| n.id.len()).max().unwrap_or(0);
            for n in nodes {
                let after = if n.depends_on.is_empty() || layer == Layer::Cloud {
                    String::new()
                } else {
                    format!(" (after {})", n.depends_on.join(", "))
                };
                crate::outln!("  + {:width$}  {}{after}", n.id, n.summary);
                if let Some(objs) = objects.get(&n.id) {
                    for o in objs {
                        crate::outln!("  {:width$}      {o}", "");
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
