//! `phoenix rebuild ENV`: converge every layer in order, then print the per-layer timing report.

use super::common::{commit_line, Context, Outcome};
use super::deploy::{run_graph, Deployment, RunSettings};
use crate::cli::RebuildArgs;
use crate::engine::{Action, Graph, Layer, NodeSpec, RunSummary};
use crate::error::{ExitCode, Failure};
use crate::providers::aws::{self, ConvergeOptions};
use crate::providers::cluster::{self as cl, GateOptions};
use crate::providers::kube::{self, ApplyOptions, Connector};
use crate::render::Mode;
use crate::report::summary;
use std::sync::Arc;
use std::time::Duration;

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

/// Builds the graph of every layer and runs the selected ones.
pub async fn converge(
    ctx: &Context,
    dep: &Deployment,
    settings: &ConvergeSettings,
    command: &'static str,
) -> Result<RunSummary, Failure> {
    let graph = build_graph(ctx, dep, settings).await?;
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

/// One graph over the layers: cloud resources → control-plane gate → add-ons → apps, each
/// component after its `dependsOn`, then the prunes of what left Git.
async fn build_graph(
    ctx: &Context,
    dep: &Deployment,
    settings: &ConvergeSettings,
) -> Result<Graph, Failure> {
    let secrets = dep.secrets(ctx)?;
    let renderer = Arc::new(dep.renderer(secrets, Mode::Apply)?);
    // Every component is rendered before anything changes: a template error stops the run here.
    let components = dep.components(&renderer, settings.force_conflicts)?;
    let mut graph = Graph::new();
    let add = |graph: &mut Graph, nodes: Vec<(NodeSpec, Arc<dyn Action>)>| {
        nodes.into_iter().try_for_each(|(spec, action)| {
            graph
                .add(spec, action)
                .map_err(|e| Failure::from_error("cannot build the run graph", &e))
        })
    };

    let ec2 = dep.ec2().await?;
    let with_cloud = settings.wants(Layer::Cloud) && ec2.is_some();
    if let (true, Some(ec2)) = (with_cloud, &ec2) {
        let live = dep.observe_cloud(ec2).await?;
        let desired = dep
            .desired_cloud(ctx, &renderer, &live, true)?
            .map(Arc::new)
            .ok_or_else(|| Failure::new("the environment has no cloud section"))?;
        let opts = ConvergeOptions {
            node_timeout: dep.env.timeouts.cloud,
            instance_ready_timeout: dep.env.timeouts.cloud,
            instance_stop_timeout: dep.env.timeouts.cloud,
            poll_interval: Duration::from_secs(1),
        };
        add(
            &mut graph,
            aws::converge_nodes(ec2.clone(), desired, &live, &opts),
        )?;
    }

    let Some(access) = dep.cluster_access(ctx)? else {
        if !components.is_empty() {
            return Err(Failure::new(format!(
                "{} has add-ons or apps but no cluster section",
                dep.name
            )));
        }
        return Ok(graph);
    };
    if let Some(target) = dep.gate_target(ctx, &access, ec2.as_ref())? {
        // Short polls: each is three small reads, and the gate's lag adds to every rebuild.
        let opts = GateOptions {
            timeout: dep.env.timeouts.cluster,
            poll_interval: Duration::from_millis(500),
            ..GateOptions::default()
        };
        let (mut spec, action) = cl::control_plane_node(target, opts);
        if !with_cloud {
            // The instances are not part of this run (`--layers`): the gate checks what runs.
            spec.depends_on.clear();
        }
        add(&mut graph, vec![(spec, action)])?;
    }
    let connector: Arc<dyn Connector> = Arc::new(cl::KubeconfigConnector::new(access));
    let apply = ApplyOptions {
        force_conflicts: settings.force_conflicts,
        poll_interval: Duration::from_millis(250),
        seals: kube::SealStore::under(&ctx.home, &dep.name),
        ..ApplyOptions::default()
    };
    let prune_timeout = dep.env.timeouts.addons.max(dep.env.timeouts.apps);
    add(
        &mut graph,
        kube::prune_nodes(
            Arc::clone(&connector),
            &dep.name,
            &components,
            prune_timeout,
            apply.concurrency,
        ),
    )?;
    add(
        &mut graph,
        kube::component_nodes(connector, components, &apply),
    )?;
    Ok(graph)
}

/// The last line of the run event stream (docs/json.md, "Run events"): the run's summary.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct RunReportLine<'a> {
    schema_version: u32,
    /// `runReport`, so a reader of the stream tells it from the events by `type` alone.
    #[serde(rename = "type")]
    kind: &'static str,
    env: &'a str,
    /// The full SHA, as in `runStarted` (and the drift report).
    commit: &'a str,
    summary: &'a RunSummary,
}

/// The final report: per-layer status and timing, then what failed and why.
pub fn report(ctx: &Context, dep: &Deployment, summary: &RunSummary) {
    if ctx.json() {
        // Stdout is JSON lines (the event stream); the report is its last line.
        let line = RunReportLine {
            schema_version: crate::report::events::EVENTS_SCHEMA_VERSION,
            kind: "runReport",
            env: &dep.name,
            commit: dep.commit(),
            summary,
        };
        match serde_json::to_string(&line) {
            Ok(text) => crate::outln!("{text}"),
            Err(e) => eprintln!("error: cannot encode the run report as JSON: {e}"),
        }
        return;
    }
    eprintln!();
    eprint!("{}", summary::render(summary));
}
