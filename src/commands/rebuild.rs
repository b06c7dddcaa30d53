//! `phoenix rebuild ENV`: converge every layer in order, then print the per-layer timing report.

use super::common::{commit_line, Context, Outcome};
use super::deploy::{run_graph, Deployment, RunSettings};
use crate::cli::RebuildArgs;
use crate::engine::{Graph, Layer, RunSummary};
use crate::error::{ExitCode, Failure};
use crate::providers::aws::{self, ConvergeOptions};
use crate::render::Mode;
use crate::report::summary;
use std::sync::Arc;

/// What a converge run may do beyond the defaults.
#[derive(Clone, Debug, Default)]
pub struct ConvergeSettings {
    pub layers: Vec<Layer>,
    pub concurrency: usize,
    pub force_conflicts: bool,
}

impl ConvergeSettings {
    fn wants(&self, layer: Layer) -> bool {
        self.layers.is_empty() || self.layers.contains(&layer)
    }
}

pub async fn run(ctx: &Context, args: &RebuildArgs) -> Outcome {
    let dep = Deployment::open(ctx, &args.env.env, None).await?;
    let settings = ConvergeSettings {
        layers: args.run.layers.clone(),
        concurrency: args.run.concurrency as usize,
        force_conflicts: args.force_conflicts,
    };
    if !ctx.json() {
        eprintln!("{}", commit_line(&dep.snap));
    }
    let summary = converge(ctx, &dep, &settings, "rebuild").await?;
    report(ctx, &dep, &summary);
    Ok(if summary.converged {
        ExitCode::Ok
    } else {
        ExitCode::Error
    })
}

/// Builds the graph of every selected layer and runs it.
pub async fn converge(
    ctx: &Context,
    dep: &Deployment,
    settings: &ConvergeSettings,
    command: &'static str,
) -> Result<RunSummary, Failure> {
    let secrets = dep.secrets()?;
    let renderer = dep.renderer(secrets, Mode::Apply)?;
    let mut graph = Graph::new();

    if settings.wants(Layer::Cloud) {
        if let Some(ec2) = dep.ec2().await? {
            let cluster_value = serde_json::json!({});
            let desired = dep
                .desired_cloud(ctx, &renderer, &cluster_value)?
                .map(Arc::new)
                .ok_or_else(|| Failure::new("the environment has no cloud section"))?;
            let live = dep.observe_cloud(&ec2).await?;
            for (spec, action) in
                aws::converge_nodes(ec2, desired, &live, &ConvergeOptions::default())
            {
                graph
                    .add(spec, action)
                    .map_err(|e| Failure::from_error("cannot build the run graph", &e))?;
            }
        }
    }

    run_graph(
        ctx,
        dep,
        graph,
        RunSettings {
            command,
            layers: settings.layers.clone(),
            concurrency: settings.concurrency,
        },
    )
    .await
}

/// The final report: per-layer status and timing, then what failed and why.
pub fn report(ctx: &Context, dep: &Deployment, summary: &RunSummary) {
    if ctx.json() {
        // Stdout is JSON lines (the event stream); the report is its last line.
        let report = serde_json::json!({
            "report": "run",
            "env": dep.name,
            "commit": dep.commit(),
            "summary": summary,
        });
        println!("{report}");
        return;
    }
    eprintln!();
    eprint!("{}", summary::render(summary));
}
