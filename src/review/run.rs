//! Runs a review: reads both commits, compares, adds the live comparison when asked, prints the
//! chosen form and ends with the exit code of `plan --detailed-exitcode`.

use super::compare::compare_states;
use super::report::{human, Live, LiveEntry, Review, Status};
use super::state::{self, Side};
use crate::cli::Output;
use crate::drift::{DriftStatus, EntryKind};
use crate::engine::Layer;
use crate::error::{ExitCode, Failure};
use crate::report::output::{commit_json_camel, print_json};
use crate::source::{self, Snapshot};
use crate::workflow::check::check_layers_of;
use crate::workflow::{Context, Deployment};
use std::collections::BTreeSet;
use std::sync::Arc;

/// What `phoenix plan ENV --against REF` asks for.
pub struct Request<'a> {
    pub env: &'a str,
    /// The base commit: the pull request's target, e.g. `origin/main`.
    pub against: &'a str,
    /// Only these layers (all when empty).
    pub layers: &'a [Layer],
    /// Also compare the live system with the head commit.
    pub live: bool,
}

/// Opens `reference` in the repository the context names (git2 blocks: off the async workers).
async fn open_at(ctx: &Context, reference: &str) -> Result<Arc<Snapshot>, Failure> {
    let mut opts = ctx.source.clone();
    opts.reference = Some(reference.to_string());
    let snap = tokio::task::spawn_blocking(move || source::open(&opts))
        .await
        .map_err(|e| Failure::new(format!("reading the repository stopped unexpectedly: {e}")))?
        .map_err(|e| {
            Failure::from_error(format!("cannot read the base commit {reference:?}"), &e)
        })?;
    Ok(Arc::new(snap))
}

/// Loads the environment and the list of environments of one commit.
async fn side_of(snap: Arc<Snapshot>, env: &str) -> Result<(Side, BTreeSet<String>), Failure> {
    let env = env.to_string();
    tokio::task::spawn_blocking(move || {
        let names = crate::env::load::names(&*snap).into_iter().collect();
        (state::load(&snap, &env), names)
    })
    .await
    .map_err(|e| Failure::new(format!("reading the environment stopped unexpectedly: {e}")))
}

pub async fn run(ctx: &Context, req: &Request<'_>) -> Result<ExitCode, Failure> {
    let head_snap = ctx.open().await?;
    let base_snap = open_at(ctx, req.against).await?;
    let (head, head_names) = side_of(head_snap.clone(), req.env).await?;
    let (base, base_names) = side_of(base_snap.clone(), req.env).await?;
    let (base_json, head_json) = (commit_json_camel(&base_snap), commit_json_camel(&head_snap));
    let (base_state, base_diags) = match base {
        Side::Valid(s) => (Some(s), Vec::new()),
        Side::Invalid(d) => (None, d),
        Side::Absent => (None, Vec::new()),
    };
    let mut review = match head {
        Side::Invalid(diags) => {
            let mut r = Review::new(req.env, base_json, head_json, Status::Invalid);
            r.diagnostics = diags;
            r
        }
        Side::Absent if base_state.is_none() && base_diags.is_empty() => {
            let known: Vec<String> = head_names.union(&base_names).cloned().collect();
            return Err(Failure::new(format!(
                "environment {} is in neither commit ({} nor {})",
                req.env,
                head_snap.commit().short_sha,
                base_snap.commit().short_sha
            ))
            .help(if known.is_empty() {
                "neither commit has an environments/<name>/environment.yaml".to_string()
            } else {
                format!("environments: {}", known.join(", "))
            }));
        }
        Side::Absent => {
            let mut c = compare_states(base_state.as_deref(), None, req.layers);
            // Nothing is rebuilt, replaced or pruned by merging: the env is no longer managed.
            let (resources, objects) = (
                c.layers
                    .iter()
                    .filter(|l| l.layer == Layer::Cloud)
                    .map(|l| l.changes.len())
                    .sum::<usize>(),
                c.impact.pruned.len(),
            );
            c.impact = super::compare::Impact {
                warnings: vec![format!(
                    "{} leaves Git: merging tears nothing down. Its {resources} cloud resources and {objects} Kubernetes objects keep running unmanaged (no rebuild, drift check or drill of it any more) until `phoenix destroy {} --ref {}` removes them",
                    req.env,
                    req.env,
                    base_snap.commit().short_sha
                )],
                ..Default::default()
            };
            Review::new(req.env, base_json, head_json, Status::Removed).with(c)
        }
        Side::Valid(h) => {
            let c = compare_states(base_state.as_deref(), Some(&h), req.layers);
            let status = match (&base_state, c.has_changes()) {
                (None, _) => Status::Added,
                (Some(_), true) => Status::Changed,
                (Some(_), false) => Status::Unchanged,
            };
            Review::new(req.env, base_json, head_json, status).with(c)
        }
    };
    review.base_diagnostics = base_diags;
    review.environments.added = head_names.difference(&base_names).cloned().collect();
    review.environments.removed = base_names.difference(&head_names).cloned().collect();
    if req.live
        && matches!(
            review.status,
            Status::Changed | Status::Unchanged | Status::Added
        )
    {
        review.live = Some(live(ctx, req, &review).await);
    }
    match ctx.output {
        Output::Json => print_json(&review),
        Output::Markdown => crate::outln!("{}", super::markdown(&review).trim_end()),
        Output::Human => crate::outln!("{}", human(&review).trim_end()),
    }
    let live_failed = review.live.as_ref().is_some_and(|l| !l.errors.is_empty());
    if review.status == Status::Invalid || live_failed {
        return Err(Failure::silent(ExitCode::Error));
    }
    if review.has_changes() || review.drift().next().is_some() {
        return Ok(ExitCode::Changes);
    }
    Ok(ExitCode::Ok)
}

/// Live state against the head commit: the same comparison as `phoenix plan` and `phoenix diff`.
async fn live(ctx: &Context, req: &Request<'_>, review: &Review) -> Live {
    let deployment = match Deployment::open(ctx, req.env, None).await {
        Ok(d) => d,
        Err(f) => {
            return Live {
                errors: vec![f.summary()],
                ..Live::default()
            }
        }
    };
    let checked = check_layers_of(ctx, &deployment, req.layers).await;
    let touched: BTreeSet<(Layer, &str)> = review
        .layers
        .iter()
        .flat_map(|l| {
            l.changes
                .iter()
                .map(move |c| (l.layer, c.resource.as_str()))
        })
        .collect();
    let mut out = Live {
        unavailable_secrets: checked
            .unavailable_secrets
            .iter()
            .map(|u| u.name.clone())
            .collect(),
        ..Live::default()
    };
    for l in &checked.report.layers {
        if let DriftStatus::Error(e) = &l.status {
            out.errors.push(format!("{}: {e}", l.layer));
        }
        for e in &l.entries {
            let action = match e.kind {
                EntryKind::Missing => "create",
                EntryKind::Extra => "delete",
                EntryKind::Changed => "update",
                EntryKind::Stopped => "start",
                EntryKind::NotReady => "wait",
                EntryKind::Version => "version",
                EntryKind::Recreate => "replace",
            };
            out.entries.push(LiveEntry {
                layer: l.layer,
                resource: e.resource.clone(),
                action: action.into(),
                detail: e.detail.clone(),
                changed_by_this: touched.contains(&(l.layer, e.resource.as_str())),
            });
        }
    }
    out
}
