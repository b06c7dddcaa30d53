//! Converging an environment: the one graph of every layer (cloud resources → control-plane gate
//! → add-ons → apps → prunes) that `rebuild`, `up`, `drill` and `watch --heal` run and that
//! `plan --offline` and `runbook` print, and the run report that ends every run.

use super::context::Context;
use super::deployment::{run_graph, Deployment, RunSettings};
use crate::engine::{Action, Graph, Layer, NodeSpec, RunSummary};
use crate::error::Failure;
use crate::providers::aws::{self, ConvergeOptions};
use crate::providers::cluster::{self as cl, GateOptions};
use crate::providers::kube::{self, ApplyOptions, Connector};
use crate::render::{Mode, SecretValues};
use crate::report::summary;
use std::sync::Arc;
use std::time::Duration;

/// What a converge run may do beyond the defaults.
#[derive(Clone, Debug, Default)]
pub struct ConvergeSettings {
    pub layers: Vec<Layer>,
    pub concurrency: usize,
    pub force_conflicts: bool,
    /// Which snapshot a missing data volume is restored from (`rebuild --restore-point`).
    pub restore: aws::RestorePoint,
    /// Change DNS records phoenix does not own (`rebuild --take-over-dns`; audited).
    pub take_over_dns: bool,
}

impl ConvergeSettings {
    fn wants(&self, layer: Layer) -> bool {
        self.layers.is_empty() || self.layers.contains(&layer)
    }
}

/// Builds the graph of every layer and runs the selected ones.
pub async fn converge(
    ctx: &Context,
    deployment: &Deployment,
    settings: &ConvergeSettings,
    command: &'static str,
) -> Result<RunSummary, Failure> {
    let graph = build_graph(ctx, deployment, settings).await?;
    run_graph(
        ctx,
        deployment,
        graph,
        RunSettings {
            command,
            layers: settings.layers.clone(),
            concurrency: settings.concurrency,
        },
    )
    .await
}

/// What the converge graph is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    /// To run: against live state (what to delete), with the secrets, every node with its action.
    Run,
    /// To be shown (`plan --offline`, `runbook`): nothing observed or connected, secrets
    /// redacted; the same node ids, edges, descriptions and timeouts as a run from nothing.
    Show,
}

/// One node of the converge graph, with its action when built to run.
type Node = (NodeSpec, Option<Arc<dyn Action>>);

/// The graph a run executes.
async fn build_graph(
    ctx: &Context,
    deployment: &Deployment,
    settings: &ConvergeSettings,
) -> Result<Graph, Failure> {
    let mut graph = Graph::new();
    for (spec, action) in converge_nodes(ctx, deployment, settings, Purpose::Run).await? {
        let action = action.ok_or_else(|| {
            Failure::new(format!(
                "node {} was built without its action (a bug in phoenix)",
                spec.id
            ))
        })?;
        graph
            .add(spec, action)
            .map_err(|e| Failure::from_error("cannot build the run graph", &e))?;
    }
    Ok(graph)
}

/// The nodes a rebuild of `deployment` (of the layers `settings` selects) runs when nothing exists yet,
/// built without contacting anything: what `plan --offline` and `runbook` print.
pub async fn planned_nodes(
    ctx: &Context,
    deployment: &Deployment,
    settings: &ConvergeSettings,
) -> Result<Vec<NodeSpec>, Failure> {
    let specs = converge_nodes(ctx, deployment, settings, Purpose::Show)
        .await?
        .into_iter()
        .map(|(spec, _)| spec)
        .collect();
    Ok(dependencies_first(specs))
}

/// `specs` reordered so that each comes after what it depends on, otherwise in the order built
/// (layer by layer, as the builders list them). Dependencies on ids not in `specs` are ignored;
/// a cycle (which the engine refuses to run) leaves the rest in the order built.
fn dependencies_first(mut specs: Vec<NodeSpec>) -> Vec<NodeSpec> {
    let mut out: Vec<NodeSpec> = Vec::with_capacity(specs.len());
    while !specs.is_empty() {
        let ready = specs.iter().position(|s| {
            s.depends_on
                .iter()
                .all(|d| !specs.iter().any(|other| other.id == *d))
        });
        out.push(specs.remove(ready.unwrap_or(0)));
    }
    out
}

/// One graph over the layers: cloud resources → control-plane gate → add-ons → apps, each
/// component after its `dependsOn`, then the prunes of what left Git. Every node spec comes
/// from the providers' builders, whatever the purpose: only the actions need clients.
async fn converge_nodes(
    ctx: &Context,
    deployment: &Deployment,
    settings: &ConvergeSettings,
    purpose: Purpose,
) -> Result<Vec<Node>, Failure> {
    let secrets = match purpose {
        Purpose::Run => deployment.secrets(ctx)?,
        Purpose::Show => SecretValues::redacted(&deployment.env),
    };
    let mode = match purpose {
        Purpose::Run => Mode::Apply,
        Purpose::Show => Mode::Display,
    };
    let renderer = Arc::new(deployment.renderer(secrets, mode)?);
    // Every component is rendered before anything changes: a template error stops the run here.
    let components = deployment.components(&renderer, settings.force_conflicts)?;
    let mut nodes: Vec<Node> = Vec::new();
    let run = |list: Vec<(NodeSpec, Arc<dyn Action>)>| -> Vec<Node> {
        list.into_iter()
            .map(|(spec, action)| (spec, (purpose == Purpose::Run).then_some(action)))
            .collect()
    };

    let ec2 = match purpose {
        Purpose::Run => deployment.ec2().await?,
        Purpose::Show => None,
    };
    let with_cloud = settings.wants(Layer::Cloud) && deployment.env.cloud.is_some();
    if with_cloud {
        let opts = ConvergeOptions {
            node_timeout: deployment.env.timeouts.cloud,
            instance_ready_timeout: deployment.env.timeouts.cloud,
            instance_stop_timeout: deployment.env.timeouts.cloud,
            poll_interval: Duration::from_secs(1),
        };
        let no_cloud = || Failure::new("the environment has no cloud section");
        match &ec2 {
            Some(ec2) => {
                let live = deployment.observe_cloud(ec2).await?;
                let desired = deployment
                    .desired_cloud(ctx, &renderer, &live, true)?
                    .map(Arc::new)
                    .ok_or_else(no_cloud)?;
                nodes.extend(run(aws::converge_nodes(ec2.clone(), desired, &live, &opts)));
                let volume_opts = aws::VolumeOptions {
                    restore: settings.restore.clone(),
                    wait_timeout: deployment.env.timeouts.cloud,
                    poll_interval: Duration::from_secs(1),
                };
                nodes.extend(run(aws::volume_nodes(
                    ec2.clone(),
                    deployment.volume_specs(),
                    opts.node_timeout,
                    &volume_opts,
                )));
            }
            None => {
                let desired = deployment.desired_cloud_shape().ok_or_else(no_cloud)?;
                let nothing = aws::LiveCloud::default();
                nodes.extend(
                    aws::converge_specs(&desired, &nothing, opts.node_timeout)
                        .into_iter()
                        .map(|spec| (spec, None)),
                );
                nodes.extend(
                    aws::volume_node_specs(&deployment.volume_specs(), opts.node_timeout)
                        .into_iter()
                        .map(|spec| (spec, None)),
                );
            }
        }
        // A failover run first brings each volume's newest snapshot to its region.
        let steps = super::failover::add_snapshot_nodes(
            &mut nodes,
            deployment,
            ec2.as_ref(),
            deployment.env.timeouts.cloud,
        );
        nodes.extend(steps);
    }

    let Some(access) = deployment.cluster_access(ctx)? else {
        if !components.is_empty() {
            return Err(Failure::new(format!(
                "{} has add-ons or apps but no cluster section",
                deployment.name
            )));
        }
        let dns = dns_nodes(deployment, &nodes, ec2.as_ref(), settings).await?;
        nodes.extend(dns);
        return Ok(nodes);
    };
    // Short polls: each is three small reads, and the gate's lag adds to every rebuild.
    let gate = GateOptions {
        timeout: deployment.env.timeouts.cluster,
        poll_interval: Duration::from_millis(500),
        ..GateOptions::default()
    };
    let control_plane = match purpose {
        Purpose::Run => deployment
            .gate_target(ctx, &access, ec2.as_ref())?
            .map(|target| {
                let (spec, action) = cl::control_plane_node(target, gate);
                (spec, Some(action))
            }),
        Purpose::Show => deployment.gate_instances()?.map(|instances| {
            (
                cl::control_plane_spec(&deployment.name, instances, &gate),
                None,
            )
        }),
    };
    if let Some((mut spec, action)) = control_plane {
        if !with_cloud {
            // The instances are not part of this run (`--layers`): the gate checks what runs.
            spec.depends_on.clear();
        }
        nodes.push((spec, action));
    }
    let connector: Arc<dyn Connector> = Arc::new(cl::KubeconfigConnector::new(access));
    let apply = ApplyOptions {
        force_conflicts: settings.force_conflicts,
        poll_interval: Duration::from_millis(250),
        seals: kube::SealStore::under(&ctx.home, &deployment.name),
        ..ApplyOptions::default()
    };
    let prune_timeout = deployment
        .env
        .timeouts
        .addons
        .max(deployment.env.timeouts.apps);
    nodes.extend(run(kube::prune_nodes(
        Arc::clone(&connector),
        &deployment.name,
        &components,
        prune_timeout,
        apply.concurrency,
    )));
    nodes.extend(run(kube::component_nodes(connector, components, &apply)));
    let dns = dns_nodes(deployment, &nodes, ec2.as_ref(), settings).await?;
    nodes.extend(dns);
    Ok(nodes)
}

/// The DNS cutover, the last step: after every apps-layer node built so far.
async fn dns_nodes(
    deployment: &Deployment,
    nodes: &[Node],
    ec2: Option<&aws::Ec2>,
    settings: &ConvergeSettings,
) -> Result<Vec<Node>, Failure> {
    let specs: Vec<NodeSpec> = nodes.iter().map(|(s, _)| s.clone()).collect();
    super::dns::cutover_nodes(deployment, &specs, ec2, settings.take_over_dns).await
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
    /// The DNS cutover's wall time (its nodes, `dns/...`), absent when it did not run.
    #[serde(
        rename = "dnsSeconds",
        with = "crate::report::events::seconds::option",
        skip_serializing_if = "Option::is_none"
    )]
    dns: Option<Duration>,
}

/// The final report: per-layer status and timing, then what failed and why.
pub fn print_run_report(ctx: &Context, deployment: &Deployment, summary: &RunSummary) {
    if ctx.json() {
        // Stdout is JSON lines (the event stream); the report is its last line.
        let line = RunReportLine {
            schema_version: crate::report::events::EVENTS_SCHEMA_VERSION,
            kind: "runReport",
            env: &deployment.name,
            commit: deployment.commit(),
            summary,
            dns: summary::step_time(summary, summary::DNS_STEP),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, deps: &[&str]) -> NodeSpec {
        NodeSpec::new(id, Layer::Cloud, Duration::from_secs(1), id).depends_on(deps.to_vec())
    }

    #[test]
    fn dependencies_come_first_and_the_built_order_is_kept_otherwise() {
        let specs = vec![
            spec("prune", &["a", "b"]),
            spec("rules", &["sg"]),
            spec("sg", &[]),
            spec("a", &["elsewhere"]),
            spec("b", &["a"]),
        ];
        let ids: Vec<String> = dependencies_first(specs)
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(ids, ["sg", "rules", "a", "b", "prune"]);
    }
}
