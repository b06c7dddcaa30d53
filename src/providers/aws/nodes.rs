//! The cloud layer as engine nodes: one node per resource with dependency edges, for converging
//! (creates and updates, then prunes of what left Git) and for destroying in reverse order.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::apply::{ConvergeOptions, Exec, RunIds};
use super::client::Ec2;
use super::desired::{DesiredCloud, ResourceSpec};
use super::images::ImageCache;
use super::live::LiveCloud;
use super::plan::delete_rank;
use super::rules::RulePeer;
use crate::engine::{Action, BoxFuture, Layer, NodeCtx, NodeError, NodeOutcome, NodeSpec};

/// Engine node id of a resource: `cloud/<resource id>`.
fn node_id(resource: &str) -> String {
    format!("cloud/{resource}")
}

fn rules_id(resource: &str) -> String {
    format!("cloud/{resource}/rules")
}

fn delete_id(resource: &str) -> String {
    format!("cloud/delete/{resource}")
}

fn unref_id(resource: &str) -> String {
    format!("cloud/delete/{resource}/refs")
}

#[derive(Clone, Debug)]
enum Op {
    Converge(String),
    Rules(String),
    Delete { resource: String, kind: String },
    Unref(String),
}

struct CloudAction {
    exec: Arc<Exec>,
    op: Op,
}

impl Action for CloudAction {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, Result<NodeOutcome, NodeError>> {
        let exec = Arc::clone(&self.exec);
        let op = self.op.clone();
        Box::pin(async move {
            let result = match &op {
                Op::Converge(r) => exec.converge(&ctx, r).await,
                Op::Rules(r) => exec.rules(&ctx, r).await,
                Op::Delete { resource, kind } => exec.delete(&ctx, resource, kind).await,
                Op::Unref(r) => exec.revoke_group_refs(&ctx, r).await,
            };
            result.map_err(NodeError::from)
        })
    }
}

/// Pairs each spec with the action that runs its operation through `exec`.
fn bind(exec: &Arc<Exec>, specs: Vec<(NodeSpec, Op)>) -> Vec<(NodeSpec, Arc<dyn Action>)> {
    specs
        .into_iter()
        .map(|(spec, op)| {
            let action: Arc<dyn Action> = Arc::new(CloudAction {
                exec: Arc::clone(exec),
                op,
            });
            (spec, action)
        })
        .collect()
}

fn spec(
    id: String,
    op: Op,
    deps: Vec<String>,
    timeout: Duration,
    description: String,
) -> (NodeSpec, Op) {
    (
        NodeSpec::new(id, Layer::Cloud, timeout, description).depends_on(deps),
        op,
    )
}

/// Nodes that converge the cloud layer to `desired`, then delete what `live` (from
/// [`super::observe`]) holds that is no longer desired. The specs are [`converge_specs`].
pub fn converge_nodes(
    ec2: Ec2,
    desired: Arc<DesiredCloud>,
    live: &LiveCloud,
    opts: &ConvergeOptions,
) -> Vec<(NodeSpec, Arc<dyn Action>)> {
    let specs = specs_with_ops(&desired, live, opts.node_timeout);
    let exec = Arc::new(Exec {
        ec2,
        env: desired.env_name.clone(),
        commit: desired.commit.clone(),
        desired: Some(desired),
        ids: RunIds::default(),
        images: ImageCache::default(),
        opts: opts.clone(),
    });
    bind(&exec, specs)
}

/// The specs of [`converge_nodes`], each node `timeout` long: pure, no client, so `plan --offline`
/// prints exactly the nodes a rebuild runs (with an empty `live`: nothing to delete).
///
/// Order: VPC → internet gateway, subnets, security groups (then their rules, after the groups
/// they reference), key pair → public route table → instances (one node each, concurrent) →
/// deletes, dependents first and after whatever replaced them. Every node makes one idempotent
/// attempt per call, re-observing its resource by tags; the engine retries transient errors.
pub fn converge_specs(
    desired: &DesiredCloud,
    live: &LiveCloud,
    timeout: Duration,
) -> Vec<NodeSpec> {
    specs_with_ops(desired, live, timeout)
        .into_iter()
        .map(|(spec, _)| spec)
        .collect()
}

fn specs_with_ops(
    desired: &DesiredCloud,
    live: &LiveCloud,
    timeout: Duration,
) -> Vec<(NodeSpec, Op)> {
    let mut nodes = Vec::new();
    let mut instance_nodes = Vec::new();
    let mut rule_nodes = Vec::new();
    let mut rtb_nodes = Vec::new();
    for r in &desired.resources {
        let id = node_id(&r.id);
        let (deps, description): (Vec<String>, String) = match &r.spec {
            ResourceSpec::Vpc { cidr } => (vec![], format!("vpc ({cidr})")),
            ResourceSpec::Subnet { cidr, zone, .. } => {
                (vec![node_id("vpc")], format!("{} ({cidr} in {zone})", r.id))
            }
            ResourceSpec::InternetGateway => {
                (vec![node_id("vpc")], "igw attached to the vpc".into())
            }
            ResourceSpec::RouteTable { subnets } => {
                let mut deps = vec![node_id("vpc"), node_id("igw")];
                deps.extend(subnets.iter().map(|s| node_id(s)));
                rtb_nodes.push(id.clone());
                (deps, format!("{} routing 0.0.0.0/0 to igw", r.id))
            }
            ResourceSpec::SecurityGroup {
                ingress, egress, ..
            } => {
                let peers: BTreeSet<String> = ingress
                    .iter()
                    .chain(egress.iter())
                    .filter_map(|k| match &k.peer {
                        RulePeer::Group(g) if g.starts_with("sg/") => Some(node_id(g)),
                        _ => None,
                    })
                    .collect();
                let mut rdeps = vec![id.clone()];
                rdeps.extend(peers.into_iter().filter(|p| *p != id));
                rule_nodes.push(rules_id(&r.id));
                nodes.push(spec(
                    rules_id(&r.id),
                    Op::Rules(r.id.clone()),
                    rdeps,
                    timeout,
                    format!("the rules of {}", r.id),
                ));
                (vec![node_id("vpc")], r.id.clone())
            }
            ResourceSpec::KeyPair { key_name, .. } => (vec![], format!("{} ({key_name})", r.id)),
            ResourceSpec::Instance(i) => {
                let mut deps = vec![node_id(&i.subnet)];
                for g in &i.security_groups {
                    deps.push(node_id(g));
                    deps.push(rules_id(g));
                }
                if let Some(k) = &i.key {
                    deps.push(node_id(k));
                }
                deps.extend(i.after.iter().map(|a| node_id(a)));
                // A public instance boots with a working route to the internet.
                if i.public_ip && desired.get("rtb/public").is_some() {
                    deps.push(node_id("rtb/public"));
                }
                instance_nodes.push(id.clone());
                (deps, format!("{} running with status checks ok", r.id))
            }
        };
        nodes.push(spec(
            id,
            Op::Converge(r.id.clone()),
            deps,
            timeout,
            description,
        ));
    }
    // Prunes: what is live but no longer desired.
    let gone: Vec<(String, String)> = live
        .resources
        .iter()
        .filter(|(id, _)| desired.get(id).is_none())
        .filter_map(|(id, copies)| Some((id.clone(), copies.first()?.state.kind().to_string())))
        .collect();
    nodes.extend(delete_graph(
        &gone,
        &Creates {
            instances: instance_nodes,
            rules: rule_nodes,
            route_tables: rtb_nodes,
        },
        timeout,
    ));
    nodes
}

/// The converge nodes delete nodes must wait for.
#[derive(Default)]
struct Creates {
    instances: Vec<String>,
    rules: Vec<String>,
    route_tables: Vec<String>,
}

/// Delete nodes for `gone` (resource id, kind) in reverse dependency order: instances →
/// route tables → internet gateway → subnets → group references → security groups → key pairs →
/// VPC. Each also waits for the converge nodes that may still use what it deletes.
fn delete_graph(
    gone: &[(String, String)],
    creates: &Creates,
    timeout: Duration,
) -> Vec<(NodeSpec, Op)> {
    let of_kind = |kind: &str| -> Vec<String> {
        gone.iter()
            .filter(|(_, k)| k == kind)
            .map(|(r, _)| delete_id(r))
            .collect()
    };
    let instances = of_kind("instance");
    let rtbs = of_kind("rtb");
    let igws = of_kind("igw");
    let subnets = of_kind("subnet");
    let sgs = of_kind("sg");
    let keys = of_kind("key");
    let unrefs: Vec<String> = gone
        .iter()
        .filter(|(_, k)| k == "sg")
        .map(|(r, _)| unref_id(r))
        .collect();
    let mut after_instances: Vec<String> = creates.instances.clone();
    after_instances.extend(instances.iter().cloned());
    let mut nodes = Vec::new();
    let mut sorted: Vec<&(String, String)> = gone.iter().collect();
    sorted.sort_by_key(|(r, k)| (delete_rank(k), r.clone()));
    for (resource, kind) in sorted {
        let mut deps: Vec<String> = match kind.as_str() {
            "instance" => creates.instances.clone(),
            "rtb" => after_instances.clone(),
            "igw" => [
                after_instances.clone(),
                rtbs.clone(),
                creates.route_tables.clone(),
            ]
            .concat(),
            "subnet" => [
                after_instances.clone(),
                rtbs.clone(),
                creates.route_tables.clone(),
            ]
            .concat(),
            "sg" => [
                after_instances.clone(),
                unrefs.clone(),
                creates.rules.clone(),
            ]
            .concat(),
            "key" => after_instances.clone(),
            _ => [
                after_instances.clone(),
                rtbs.clone(),
                igws.clone(),
                subnets.clone(),
                sgs.clone(),
                keys.clone(),
            ]
            .concat(),
        };
        if kind == "sg" {
            nodes.push(spec(
                unref_id(resource),
                Op::Unref(resource.clone()),
                after_instances.clone(),
                timeout,
                format!("removal of the group references in {resource}"),
            ));
        }
        let me = delete_id(resource);
        deps.retain(|d| *d != me);
        nodes.push(spec(
            me,
            Op::Delete {
                resource: resource.clone(),
                kind: kind.clone(),
            },
            deps,
            timeout,
            format!("deletion of {resource}"),
        ));
    }
    nodes
}

/// Nodes that delete everything `live` holds for `env_name`, in reverse dependency order.
/// Idempotent (each node re-observes by tags; gone is success), safe after a failed or
/// interrupted create, and never touches a resource without the env's tags: a VPC that still
/// holds foreign resources fails naming them.
pub fn destroy_nodes(
    ec2: Ec2,
    env_name: &str,
    live: &LiveCloud,
    opts: &ConvergeOptions,
) -> Vec<(NodeSpec, Arc<dyn Action>)> {
    let exec = Arc::new(Exec {
        ec2,
        env: env_name.to_string(),
        commit: String::new(),
        desired: None,
        ids: RunIds::default(),
        images: ImageCache::default(),
        opts: opts.clone(),
    });
    let gone: Vec<(String, String)> = live
        .resources
        .iter()
        .filter_map(|(id, copies)| Some((id.clone(), copies.first()?.state.kind().to_string())))
        .collect();
    bind(
        &exec,
        delete_graph(&gone, &Creates::default(), opts.node_timeout),
    )
}
