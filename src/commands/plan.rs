//! `phoenix plan ENV`: the graph, layer by layer, with what a rebuild would do.

use super::common::{commit_json, commit_line, load_env, print_json, Context, Outcome};
use super::deploy::Deployment;
use crate::drift::{EntryKind, LayerStatus};
use crate::engine::Layer;
use crate::error::{ExitCode, Failure};
use crate::render::{Mode, Renderer, SecretValues};
use std::collections::BTreeMap;

pub async fn run(ctx: &Context, name: &str, offline: bool, detailed_exitcode: bool) -> Outcome {
    if offline {
        offline_plan(ctx, name, detailed_exitcode).await
    } else {
        live_plan(ctx, name, detailed_exitcode).await
    }
}

/// The plan against live state, layer by layer: the same comparison as `phoenix diff`.
async fn live_plan(ctx: &Context, name: &str, detailed_exitcode: bool) -> Outcome {
    let dep = Deployment::open(ctx, name, None).await?;
    let checked = super::diff::check(ctx, &dep).await;
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
            "drift": crate::drift::json_value(report),
        });
        if let Some(plan) = &checked.cloud_plan {
            out["cloud"] = serde_json::to_value(plan).unwrap_or_default();
        }
        print_json(&out);
    } else {
        println!("{}", commit_line(&dep.snap));
        println!("plan for {} against live state", dep.name);
        for l in &report.layers {
            match (&l.status, l.layer) {
                (LayerStatus::Skipped(why), layer) => println!("\n{layer}: nothing to do ({why})"),
                (_, Layer::Cloud) => {
                    if let Some(plan) = &checked.cloud_plan {
                        println!("\ncloud:\n{plan}");
                    }
                }
                (_, layer) if l.entries.is_empty() => println!("\n{layer}: no changes"),
                (_, layer) => {
                    println!("\n{layer}:");
                    for e in &l.entries {
                        println!("  {} {}{}", action_of(e.kind), e.resource, describe(e));
                    }
                }
            }
        }
        println!(
            "\n{changes} change{} pending.",
            if changes == 1 { "" } else { "s" }
        );
    }
    if detailed_exitcode && changes > 0 {
        return Ok(ExitCode::Changes);
    }
    Ok(ExitCode::Ok)
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
async fn offline_plan(ctx: &Context, name: &str, detailed_exitcode: bool) -> Outcome {
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
                    .map(|m| match m.namespace() {
                        Some(ns) => format!("{} {ns}/{}", m.kind(), m.name()),
                        None => format!("{} {}", m.kind(), m.name()),
                    })
                    .collect(),
            );
        }
    }
    let total = graph.nodes.len();
    if ctx.json() {
        let nodes: Vec<serde_json::Value> = graph
            .nodes
            .iter()
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
            "layers": Layer::ALL.iter().map(|l| l.as_str()).collect::<Vec<_>>(),
            "nodes": nodes,
            "summary": { "create": total, "update": 0, "replace": 0, "delete": 0, "unchanged": 0 },
        }));
    } else {
        println!("{}", commit_line(&snap));
        println!("plan for {name} (offline: live state not consulted; every resource shown as built from nothing)");
        for layer in Layer::ALL {
            let nodes: Vec<_> = graph.layer(layer).collect();
            if nodes.is_empty() {
                println!("\n{layer}: nothing to do (not in this environment)");
                continue;
            }
            let timeout = nodes.iter().map(|n| n.timeout).max().unwrap_or_default();
            println!(
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
                println!("  + {:width$}  {}{after}", n.id, n.summary);
                if let Some(objs) = objects.get(&n.id) {
                    for o in objs {
                        println!("  {:width$}      {o}", "");
                    }
                }
            }
        }
        println!("\n{total} to create, 0 to update, 0 to replace, 0 to delete.");
    }
    if detailed_exitcode && total > 0 {
        return Ok(ExitCode::Changes);
    }
    Ok(ExitCode::Ok)
}
