//! `phoenix destroy ENV`: tear everything phoenix owns down in reverse layer order, after the
//! operator typed the environment's name (or passed `--yes`). Protected environments are refused.

use super::common::{commit_line, Context, Outcome};
use super::deploy::{run_graph, Deployment, RunSettings};
use super::rebuild::report;
use crate::cli::DestroyArgs;
use crate::engine::{Action, BoxFuture, Graph, Layer, NodeCtx, NodeError, NodeOutcome, NodeSpec};
use crate::env::model::Cluster;
use crate::error::{ExitCode, Failure};
use crate::providers::aws::{self, ConvergeOptions};
use crate::providers::cluster as cl;
use crate::providers::kube;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

pub async fn run(ctx: &Context, args: &DestroyArgs) -> Outcome {
    let effective = match &args.ephemeral {
        Some(n) => Some(super::copies::copy_name(&args.env.env, n)?),
        None => None,
    };
    let dep = Deployment::open(ctx, &args.env.env, effective.clone()).await?;
    // A copy is never the protected environment itself.
    if dep.env.protected && effective.is_none() {
        return Err(Failure::new(format!(
            "environment {} is protected; phoenix will not destroy it",
            dep.name
        ))
        .help(format!(
            "remove `protected: true` from {} in a commit first, if destroying it is really meant",
            dep.env.file
        )));
    }
    if !args.yes {
        confirm(&dep.name)?;
    }
    if !ctx.json() {
        eprintln!("{}", commit_line(&dep.snap));
    }
    let summary = destroy(ctx, &dep, args.concurrency as usize).await?;
    report(ctx, &dep, &summary);
    if summary.converged && effective.is_some() {
        super::copies::forget_local_state(ctx, &dep.name);
    }
    Ok(if summary.converged {
        ExitCode::Ok
    } else {
        ExitCode::Error
    })
}

/// Asks the operator to type the environment's name.
fn confirm(name: &str) -> Result<(), Failure> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(
            Failure::new(format!("refusing to destroy {name} without confirmation"))
                .help("stdin is not a terminal: pass --yes to destroy without being asked"),
        );
    }
    eprint!("This deletes every resource and object phoenix owns for {name}.\nType the environment name to confirm: ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Failure::new("cannot read the confirmation").cause(e.to_string()))?;
    if answer.trim() != name {
        return Err(Failure::new(format!(
            "not confirmed: {:?} is not {name:?}; nothing was deleted",
            answer.trim()
        )));
    }
    Ok(())
}

/// Deletes what phoenix owns of `dep`, found by ownership marks (no state file): the cluster's
/// objects first (apps, then add-ons), then the cloud resources in reverse dependency order.
pub async fn destroy(
    ctx: &Context,
    dep: &Deployment,
    concurrency: usize,
) -> Result<crate::engine::RunSummary, Failure> {
    let mut graph = Graph::new();
    let ec2 = dep.ec2().await?;
    let live = match &ec2 {
        Some(ec2) => Some(dep.observe_cloud(ec2).await?),
        None => None,
    };
    if let Some(live) = &live {
        // From any machine: the kubeconfig is derived from the cluster secret, not kept. Without
        // it (the secret lost too) the cloud still goes: for k3s the objects step is best effort.
        if let Err(e) = dep.refresh_kubeconfig(ctx, live) {
            eprintln!(
                "warning: the cluster of {} cannot be reached to delete its objects first: {}",
                dep.name,
                e.summary()
            );
        }
    }
    let objects = match dep.cluster_access(ctx)? {
        Some(access) => {
            // The engine runs layers upwards, and the objects must go before the machines they
            // run on: with a cloud layer, the objects node runs in it (first); without one
            // (an existing cluster) it is what it is, the cluster's.
            let layer = match dep.env.cloud {
                Some(_) => Layer::Cloud,
                None => Layer::Cluster,
            };
            let spec = NodeSpec::new(
                OBJECTS_NODE,
                layer,
                dep.env.timeouts.addons + dep.env.timeouts.apps,
                format!(
                    "every Kubernetes object phoenix applied for {} deleted",
                    dep.name
                ),
            );
            let action: Arc<dyn Action> = Arc::new(DeleteObjects {
                connector: cl::KubeconfigConnector::new(access),
                env: dep.name.clone(),
                k3s: matches!(dep.env.cluster, Some(Cluster::K3s(_))),
            });
            graph
                .add(spec, action)
                .map_err(|e| Failure::from_error("cannot build the teardown graph", &e))?;
            true
        }
        None => false,
    };
    if let (Some(ec2), Some(live)) = (ec2, live) {
        let opts = ConvergeOptions {
            node_timeout: dep.env.timeouts.cloud,
            poll_interval: std::time::Duration::from_secs(1),
            ..ConvergeOptions::default()
        };
        for (mut spec, action) in aws::destroy_nodes(ec2, &dep.name, &live, &opts) {
            if objects {
                // Workloads go before the machines and network they run on.
                spec.depends_on.push(OBJECTS_NODE.to_string());
            }
            graph
                .add(spec, action)
                .map_err(|e| Failure::from_error("cannot build the teardown graph", &e))?;
        }
    }
    run_graph(
        ctx,
        dep,
        graph,
        RunSettings {
            command: "destroy",
            layers: Vec::new(),
            concurrency,
        },
    )
    .await
}

const OBJECTS_NODE: &str = "cluster/objects";

/// Deletes the env's objects by their marks (see `kube::destroy_all`).
struct DeleteObjects {
    connector: cl::KubeconfigConnector,
    env: String,
    /// A k3s cluster lives on the env's instances: unreachable, it goes with them.
    k3s: bool,
}

impl Action for DeleteObjects {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, Result<NodeOutcome, NodeError>> {
        let client = self.connector.client();
        let env = self.env.clone();
        let k3s = self.k3s;
        Box::pin(async move {
            let client = match client.await {
                Ok(c) => c,
                Err(e) if k3s => {
                    ctx.progress(format!(
                        "no usable kubeconfig for the k3s cluster of {env} ({}); its objects go with its instances",
                        e.chain()
                    ));
                    return Ok(NodeOutcome::Unchanged);
                }
                Err(e) => return Err(e),
            };
            ctx.progress(format!("deleting the objects phoenix applied for {env}"));
            match kube::destroy_all(&client, &env).await {
                Ok(deleted) if deleted.is_empty() => Ok(NodeOutcome::Unchanged),
                Ok(deleted) => {
                    // Each deleted object is named (in the progress lines, JSON events and
                    // the audit trail), then the count.
                    for o in &deleted {
                        ctx.progress(format!("deleted {o}"));
                    }
                    ctx.progress(format!("deleted {} objects", deleted.len()));
                    Ok(NodeOutcome::Deleted)
                }
                Err(e) if k3s => {
                    // Best effort: the cluster lives on the instances deleted next.
                    ctx.progress(format!(
                        "cannot delete the objects of the k3s cluster of {env} ({}); they go with its instances",
                        crate::error::chain(&e)
                    ));
                    Ok(NodeOutcome::Unchanged)
                }
                Err(e) => Err(e.into()),
            }
        })
    }
}
