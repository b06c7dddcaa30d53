//! Removal of whole components that left Git, and teardown of everything phoenix applied for an
//! environment. Both delete only objects that still carry phoenix's marks for the environment.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::engine::{Action, BoxFuture, Layer, NodeCtx, NodeError, NodeOutcome, NodeSpec};

use super::component::{
    bounded, delete_objects, delete_where, first_error, node_id, ComponentSpec,
};
use super::connector::Connector;
use super::discovery::{discover, Resolver};
use super::error::KubeError;
use super::inventory::{self, Inventory};
use super::object::{
    owned_by_env, Marks, ObjectRef, LABEL_COMPONENT, LABEL_ENV, LABEL_LAYER, LABEL_MANAGED_BY,
    MANAGED_BY,
};
use super::ops;

/// The node id of a layer's removal node (a name no component can have: component names are
/// DNS labels, which cannot start with a dot).
pub fn prune_node_id(layer: Layer) -> String {
    node_id(layer, ".removed")
}

/// One node per layer (add-ons, apps) that deletes the components recorded in the cluster's
/// inventories but absent from `components`. It runs after every component of its layer, so a
/// replacement is healthy before what it replaces goes.
pub fn prune_nodes(
    connector: Arc<dyn Connector>,
    env: &str,
    components: &[ComponentSpec],
    timeout: Duration,
    concurrency: usize,
) -> Vec<(NodeSpec, Arc<dyn Action>)> {
    [Layer::Addons, Layer::Apps]
        .into_iter()
        .map(|layer| {
            let keep: HashSet<String> = components
                .iter()
                .filter(|c| c.layer == layer)
                .map(|c| c.name.clone())
                .collect();
            let deps: Vec<String> = components
                .iter()
                .filter(|c| c.layer == layer)
                .map(ComponentSpec::node_id)
                .collect();
            let what = match layer {
                Layer::Addons => "add-ons",
                _ => "apps",
            };
            let spec = NodeSpec::new(
                prune_node_id(layer),
                layer,
                timeout,
                format!("removal of {what} no longer in Git"),
            )
            .depends_on(deps);
            let action: Arc<dyn Action> = Arc::new(PruneAction {
                connector: Arc::clone(&connector),
                env: env.to_string(),
                layer,
                keep,
                concurrency,
            });
            (spec, action)
        })
        .collect()
}

struct PruneAction {
    connector: Arc<dyn Connector>,
    env: String,
    layer: Layer,
    keep: HashSet<String>,
    concurrency: usize,
}

impl Action for PruneAction {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, Result<NodeOutcome, NodeError>> {
        let connector = Arc::clone(&self.connector);
        let env = self.env.clone();
        let layer = self.layer;
        let keep = self.keep.clone();
        let limit = self.concurrency;
        Box::pin(async move {
            let client = connector.client().await?;
            let gone: Vec<Inventory> = inventory::list(&client, &env)
                .await?
                .into_iter()
                .filter(|inv| inv.layer == layer && !keep.contains(&inv.component))
                .collect();
            if gone.is_empty() {
                return Ok(NodeOutcome::Unchanged);
            }
            // A Namespace or CRD of a removed component may take with it only what is removed now.
            let leaving: HashSet<String> = gone.iter().map(|i| i.component.clone()).collect();
            let spared = |o: &Value| {
                owned_by_env(o, &env)
                    && o["metadata"]["labels"][LABEL_COMPONENT]
                        .as_str()
                        .is_some_and(|c| leaving.contains(c))
                    && o["metadata"]["labels"][LABEL_LAYER].as_str() == Some(layer.as_str())
            };
            for inv in &gone {
                ctx.progress(format!(
                    "deleting {} objects of {}, no longer in Git",
                    inv.objects.len(),
                    inv.component
                ));
                delete_component(&client, &env, layer, &inv.component, limit, &spared).await?;
            }
            Ok(NodeOutcome::Deleted)
        })
    }
}

/// Deletes a component's objects (reverse apply order, only those still marked as its own), then
/// its inventory. A Namespace or CRD of the component is deleted only when everything it holds
/// passes `spared`. Returns what was deleted.
pub async fn delete_component(
    client: &::kube::Client,
    env: &str,
    layer: Layer,
    component: &str,
    concurrency: usize,
    spared: &(dyn Fn(&Value) -> bool + Sync),
) -> Result<Vec<ObjectRef>, KubeError> {
    let marks = Marks {
        env: env.to_string(),
        component: component.to_string(),
        layer,
        commit: String::new(),
    };
    let Some(inv) = inventory::read(client, &marks).await? else {
        return Ok(Vec::new());
    };
    let map = Resolver::new().current(client).await?.1;
    let deleted = delete_objects(client, &map, &marks, inv.objects, concurrency, spared).await?;
    let id = inventory::inventory_ref(env, layer, component);
    if let Some(live) = ops::get(client, &inventory::configmaps(), &id).await? {
        if marks.owns(&live) {
            ops::delete(client, &inventory::configmaps(), &id, ops::uid(&live)).await?;
        }
    }
    Ok(deleted)
}

/// Deletes everything phoenix applied for `env`: each component from its inventory (apps before
/// add-ons), then a sweep of every served kind for objects still labelled for `env` (left by a
/// run cut off before its inventory was written), inventories last. Returns what was deleted.
pub async fn destroy_all(client: &::kube::Client, env: &str) -> Result<Vec<ObjectRef>, KubeError> {
    const LIMIT: usize = 32;
    let mut deleted = Vec::new();
    let mut inventories = inventory::list(client, env).await?;
    inventories.sort_by(|a, b| b.layer.cmp(&a.layer).then(a.component.cmp(&b.component)));
    // The whole env goes: its Namespaces and CRDs may take any of its objects with them.
    let spared = |o: &Value| owned_by_env(o, env);
    for inv in &inventories {
        deleted.extend(
            delete_component(client, env, inv.layer, &inv.component, LIMIT, &spared).await?,
        );
    }
    let map = discover(client).await?;
    let mut seen = HashSet::new();
    let targets: Vec<_> = map
        .all()
        .filter(|t| t.listable && t.deletable)
        .filter(|t| seen.insert((t.resource.group.clone(), t.resource.kind.clone())))
        .cloned()
        .collect();
    let selector = format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_ENV}={env}");
    let listed = bounded(targets, LIMIT, |t| {
        let selector = &selector;
        async move { ops::list_if_served(client, &t, None, selector).await }
    })
    .await;
    let mut left: Vec<ObjectRef> = first_error(listed)?
        .into_iter()
        .flatten()
        .filter(|o| owned_by_env(o, env))
        .filter_map(|o: Value| ObjectRef::of(&o))
        .collect();
    deleted.extend(
        delete_where(
            client,
            &map,
            &mut left,
            LIMIT,
            |live| owned_by_env(live, env),
            &spared,
        )
        .await?,
    );
    Ok(deleted)
}
