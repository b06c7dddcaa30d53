//! Tearing an environment down: everything phoenix owns of it, found by ownership marks, in
//! reverse layer order (`destroy`, and the teardown of drill and ephemeral copies).

use super::context::Context;
use super::deployment::{run_graph, Deployment, RunSettings};
use crate::engine::{Action, BoxFuture, Graph, Layer, NodeCtx, NodeError, NodeOutcome, NodeSpec};
use crate::env::model::Cluster;
use crate::error::Failure;
use crate::providers::aws::{self, ConvergeOptions};
use crate::providers::cluster as cl;
use crate::providers::kube;
use std::sync::Arc;

/// Deletes what phoenix owns of `deployment`, found by ownership marks (no state file): the cluster's
/// objects first (apps, then add-ons), then the cloud resources in reverse dependency order.
pub async fn destroy(
    ctx: &Context,
    deployment: &Deployment,
    concurrency: usize,
    final_snapshots: bool,
) -> Result<crate::engine::RunSummary, Failure> {
    let mut graph = Graph::new();
    let ec2 = deployment.ec2().await?;
    let live = match &ec2 {
        Some(ec2) => Some(deployment.observe_cloud(ec2).await?),
        None => None,
    };
    if let Some(live) = &live {
        // From any machine: the kubeconfig is derived from the cluster secret, not kept. Without
        // it (the secret lost too) the cloud still goes: for k3s the objects step is best effort.
        if let Err(e) = deployment.refresh_kubeconfig(ctx, live) {
            eprintln!(
                "warning: the cluster of {} cannot be reached to delete its objects first: {}",
                deployment.name,
                e.summary()
            );
        }
    }
    let objects = match deployment.cluster_access(ctx)? {
        Some(access) => {
            // The engine runs layers upwards, and the objects must go before the machines they
            // run on: with a cloud layer, the objects node runs in it (first); without one
            // (an existing cluster) it is what it is, the cluster's.
            let layer = match deployment.env.cloud {
                Some(_) => Layer::Cloud,
                None => Layer::Cluster,
            };
            let spec = NodeSpec::new(
                OBJECTS_NODE,
                layer,
                deployment.env.timeouts.addons + deployment.env.timeouts.apps,
                format!(
                    "every Kubernetes object phoenix applied for {} deleted",
                    deployment.name
                ),
            );
            let action: Arc<dyn Action> = Arc::new(DeleteObjects {
                connector: cl::KubeconfigConnector::new(access),
                env: deployment.name.clone(),
                k3s: matches!(deployment.env.cluster, Some(Cluster::K3s(_))),
            });
            graph
                .add(spec, action)
                .map_err(|e| Failure::from_error("cannot build the teardown graph", &e))?;
            true
        }
        None => false,
    };
    // The records this deployment owns go in the first layer, independent of the rest: a Route 53
    // outage must not keep the machines from going.
    let dns_layer = match deployment.env.cloud {
        Some(_) => Layer::Cloud,
        None => Layer::Cluster,
    };
    if let Some((spec, action)) = super::dns::delete_node(deployment, dns_layer).await {
        graph
            .add(spec, action)
            .map_err(|e| Failure::from_error("cannot build the teardown graph", &e))?;
    }
    if let (Some(ec2), Some(live)) = (ec2, live) {
        let opts = ConvergeOptions {
            node_timeout: deployment.env.timeouts.cloud,
            poll_interval: std::time::Duration::from_secs(1),
            ..ConvergeOptions::default()
        };
        let volumes = aws::owned_volumes(&ec2, &deployment.name, None)
            .await
            .map_err(|e| {
                Failure::from_error(
                    format!("cannot list the data volumes of {}", deployment.name),
                    &e,
                )
            })?;
        let mut nodes = aws::destroy_nodes(ec2.clone(), &deployment.name, &live, &opts);
        let instances: Vec<String> = nodes
            .iter()
            .map(|(spec, _)| spec.id.clone())
            .filter(|id| id.starts_with("cloud/delete/instance/"))
            .collect();
        // A copy (drill, ephemeral) holds no data of its own worth keeping: its volumes were
        // restored from the env's snapshots, and a final snapshot would only pile up.
        let final_snapshot = final_snapshots && deployment.name == deployment.env.name;
        nodes.extend(aws::volume_destroy_nodes(
            ec2,
            &deployment.name,
            deployment.commit(),
            volumes,
            final_snapshot,
            instances,
            deployment.env.timeouts.cloud,
        ));
        for (mut spec, action) in nodes {
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
        deployment,
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
