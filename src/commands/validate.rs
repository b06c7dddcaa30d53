//! `phoenix validate ENV`: schema, references, templates render, graph acyclic. Offline.

use super::Outcome;
use crate::env::{self, Diagnostic, Environment};
use crate::error::{ExitCode, Failure};
use crate::render::{Mode, Renderer, SecretValues};
use crate::report::output::{commit_line, print_json, ValidateDoc};
use crate::source::Snapshot;
use crate::workflow::Context;

/// Renders every template the environment uses (secrets redacted), collecting every failure.
pub fn check_templates(snap: &Snapshot, env: &Environment) -> (Vec<Diagnostic>, usize) {
    let mut diags = Vec::new();
    let mut objects = 0;
    let renderer = match Renderer::new(
        snap,
        env,
        &env.name,
        SecretValues::redacted(env),
        Mode::Display,
    ) {
        Ok(r) => r,
        Err(e) => return (vec![Diagnostic::from(e)], 0),
    };
    if let Some(cloud) = &env.cloud {
        for g in &cloud.instances {
            // What the cluster layer hands this role, with markers where secrets and addresses go.
            let cluster = crate::providers::cluster::display_context(env, &g.role);
            let Some(t) = g
                .user_data
                .as_deref()
                .or(env::validate::default_user_data(&g.role))
            else {
                continue;
            };
            if let Err(e) = renderer.user_data(snap, t, g, 0, &cluster) {
                diags.push(Diagnostic::from(e));
            }
        }
    }
    for c in env.addons.iter().chain(&env.apps) {
        // Every problem of the component at once, not one file at a time.
        match renderer.manifests_all(snap, c) {
            Ok(m) => objects += m.len(),
            Err(errors) => diags.extend(errors.into_iter().map(Diagnostic::from)),
        }
    }
    (diags, objects)
}

pub async fn run(ctx: &Context, name: &str) -> Outcome {
    let snap = ctx.open().await?;
    let result = env::load(&*snap, name);
    let (env, mut diags, objects) = match result {
        Ok(env) => {
            let (diags, objects) = check_templates(&snap, &env);
            (Some(env), diags, objects)
        }
        Err(diags) => (None, diags, 0),
    };
    env::diag::sort(&mut diags);
    let valid = diags.is_empty();
    if ctx.json() {
        print_json(&ValidateDoc::new(name, &snap, valid, &diags));
    } else {
        crate::outln!("{}", commit_line(&snap));
        for d in &diags {
            crate::outln!("{d}");
        }
        match &env {
            Some(env) if valid => {
                let cloud = env.cloud.as_ref().map_or(0, |c| {
                    let inputs = crate::providers::aws::DesiredInputs::default();
                    crate::providers::aws::desired(c, &env.name, &inputs)
                        .resources
                        .len()
                });
                crate::outln!(
                    "✓ environment {name} is valid: {cloud} cloud resources, {} cluster, {} add-ons, {} apps ({objects} Kubernetes objects)",
                    usize::from(env.cluster.is_some()),
                    env.addons.len(),
                    env.apps.len()
                );
            }
            _ => crate::outln!(
                "✗ environment {name} is invalid: {} problem{}",
                diags.len(),
                if diags.len() == 1 { "" } else { "s" }
            ),
        }
    }
    if valid {
        Ok(ExitCode::Ok)
    } else {
        Err(Failure::silent(ExitCode::Error))
    }
}
