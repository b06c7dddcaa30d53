//! The desired-state graph of an environment: one node per resource or component, edges from
//! layer order and `dependsOn`. Pure: no I/O, so plan, diff, drill and runbook share it.

use crate::engine::Layer;
use crate::env::model::{Cluster, Environment, Peer, Role, Source};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Clone, Debug, Serialize)]
pub struct PlanNode {
    /// Stable id, e.g. `cloud/subnet/public-a`, `addons/ingress`.
    pub id: String,
    pub layer: Layer,
    /// What kind of thing this is: `vpc`, `subnet`, `instance`, `control-plane`, `component`...
    pub kind: String,
    pub depends_on: Vec<String>,
    /// One line describing the desired state.
    pub summary: String,
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

#[derive(Clone, Debug, Serialize)]
pub struct PlanGraph {
    pub env: String,
    pub nodes: Vec<PlanNode>,
}

impl PlanGraph {
    pub fn layer(&self, layer: Layer) -> impl Iterator<Item = &PlanNode> {
        self.nodes.iter().filter(move |n| n.layer == layer)
    }

    pub fn get(&self, id: &str) -> Option<&PlanNode> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Node ids in an order where every node comes after its dependencies (layer order first).
    pub fn topo_order(&self) -> Vec<&str> {
        let index: BTreeMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.as_str(), i))
            .collect();
        let mut state = vec![0u8; self.nodes.len()]; // 0 new, 1 visiting, 2 done
        let mut out = Vec::with_capacity(self.nodes.len());
        let mut order: Vec<usize> = (0..self.nodes.len()).collect();
        order.sort_by_key(|i| self.nodes[*i].layer);
        for start in order {
            let mut stack = vec![(start, 0usize)];
            while let Some((i, edge)) = stack.pop() {
                if edge == 0 {
                    if state[i] != 0 {
                        continue;
                    }
                    state[i] = 1;
                }
                let deps = &self.nodes[i].depends_on;
                if let Some(dep) = deps.get(edge) {
                    stack.push((i, edge + 1));
                    if let Some(&j) = index.get(dep.as_str()) {
                        if state[j] == 0 {
                            stack.push((j, 0));
                        }
                    }
                } else {
                    state[i] = 2;
                    out.push(self.nodes[i].id.as_str());
                }
            }
        }
        out
    }
}

/// Builds the graph for `env` as deployed under `effective_name`.
pub fn build(env: &Environment) -> PlanGraph {
    let mut nodes = Vec::new();
    let t = &env.timeouts;
    if let Some(cloud) = &env.cloud {
        let node = |id: String, kind: &str, deps: Vec<String>, summary: String| PlanNode {
            id: format!("cloud/{id}"),
            layer: Layer::Cloud,
            kind: kind.to_string(),
            depends_on: deps.into_iter().map(|d| format!("cloud/{d}")).collect(),
            summary,
            timeout: t.cloud,
        };
        nodes.push(node(
            "vpc".into(),
            "vpc",
            vec![],
            format!("VPC {} in {}", cloud.network.cidr, cloud.region),
        ));
        let public: Vec<&str> = cloud
            .network
            .subnets
            .iter()
            .filter(|s| s.public)
            .map(|s| s.name.as_str())
            .collect();
        if !public.is_empty() {
            nodes.push(node(
                "igw".into(),
                "internet-gateway",
                vec!["vpc".into()],
                "internet gateway attached to the VPC".into(),
            ));
        }
        for s in &cloud.network.subnets {
            let kind = if s.public { "public" } else { "private" };
            nodes.push(node(
                format!("subnet/{}", s.name),
                "subnet",
                vec!["vpc".into()],
                format!("{kind} subnet {} in {}", s.cidr, s.zone),
            ));
        }
        if !public.is_empty() {
            let mut deps = vec!["igw".to_string()];
            deps.extend(public.iter().map(|s| format!("subnet/{s}")));
            nodes.push(node(
                "rtb/public".into(),
                "route-table",
                deps,
                format!(
                    "route table 0.0.0.0/0 → internet gateway, for {}",
                    public.join(", ")
                ),
            ));
        }
        for g in &cloud.security_groups {
            let mut deps = vec!["vpc".to_string()];
            for r in g.ingress.iter().chain(g.egress.iter().flatten()) {
                if let Peer::Group(other) = &r.peer {
                    let dep = format!("sg/{other}");
                    if *other != g.name && !deps.contains(&dep) {
                        deps.push(dep);
                    }
                }
            }
            // Mutual references between groups are created in one pass by the provider; only keep
            // edges that cannot form a cycle (towards groups defined earlier).
            let earlier: Vec<String> = cloud
                .security_groups
                .iter()
                .take_while(|x| x.name != g.name)
                .map(|x| format!("sg/{}", x.name))
                .collect();
            deps.retain(|d| d == "vpc" || earlier.contains(d));
            let rules = g.ingress.len() + g.egress.as_ref().map_or(0, Vec::len);
            nodes.push(node(
                format!("sg/{}", g.name),
                "security-group",
                deps,
                format!("security group {} with {rules} rules", g.name),
            ));
        }
        if let Some(k) = &cloud.key_pair {
            let how = if k.public_key.is_some() {
                "imported"
            } else {
                "generated, private key kept 0600 under the state dir"
            };
            nodes.push(node(
                format!("key/{}", k.name),
                "key-pair",
                vec![],
                format!("key pair {} ({how})", k.name),
            ));
        }
        for g in &cloud.instances {
            for i in 0..g.count {
                let mut deps = vec![format!("subnet/{}", g.subnet)];
                deps.extend(g.security_groups.iter().map(|s| format!("sg/{s}")));
                if let Some(k) = &cloud.key_pair {
                    deps.push(format!("key/{}", k.name));
                }
                if public.contains(&g.subnet.as_str()) {
                    deps.push("rtb/public".into());
                }
                let image = match &g.image {
                    crate::env::model::Image::Id(id) => id.clone(),
                    crate::env::model::Image::Lookup {
                        owner,
                        name,
                        architecture,
                        ..
                    } => {
                        format!("newest {owner}/{name} ({architecture})")
                    }
                };
                let role = match g.role {
                    Role::Server => " (k3s server)",
                    Role::Agent => " (k3s agent)",
                    Role::None => "",
                };
                nodes.push(node(
                    format!("instance/{}/{i}", g.name),
                    "instance",
                    deps,
                    format!("{} {image} in {}{role}", g.instance_type, g.subnet),
                ));
            }
        }
    }
    match &env.cluster {
        Some(Cluster::K3s(k)) => {
            let (servers, agents) = env.cloud.as_ref().map_or((0, 0), |c| {
                let count = |r: Role| {
                    c.instances
                        .iter()
                        .filter(|g| g.role == r)
                        .map(|g| g.count)
                        .sum::<u32>()
                };
                (count(Role::Server), count(Role::Agent))
            });
            nodes.push(PlanNode {
                id: "cluster/control-plane".into(),
                layer: Layer::Cluster,
                kind: "control-plane".into(),
                depends_on: vec![],
                summary: format!(
                    "k3s {} with {servers} server and {agents} agent nodes Ready",
                    k.version
                ),
                timeout: t.cluster,
            });
        }
        Some(Cluster::Existing(e)) => {
            nodes.push(PlanNode {
                id: "cluster/control-plane".into(),
                layer: Layer::Cluster,
                kind: "existing-cluster".into(),
                depends_on: vec![],
                summary: format!(
                    "existing cluster from {}{}",
                    e.kubeconfig,
                    e.context
                        .as_ref()
                        .map(|c| format!(" (context {c})"))
                        .unwrap_or_default()
                ),
                timeout: t.cluster,
            });
        }
        None => {}
    }
    let layer_of: BTreeMap<&str, &str> = env
        .addons
        .iter()
        .map(|c| (c.name.as_str(), "addons"))
        .chain(env.apps.iter().map(|c| (c.name.as_str(), "apps")))
        .collect();
    for (layer, prefix, list) in [
        (Layer::Addons, "addons", &env.addons),
        (Layer::Apps, "apps", &env.apps),
    ] {
        for c in list {
            let source = match &c.source {
                Source::Template(t) => format!("template {t}"),
                Source::Path(p) => format!("manifests {p}"),
            };
            let checks = if c.checks.is_empty() {
                String::new()
            } else {
                format!(", {} checks", c.checks.len())
            };
            nodes.push(PlanNode {
                id: format!("{prefix}/{}", c.name),
                layer,
                kind: "component".into(),
                depends_on: c
                    .depends_on
                    .iter()
                    .map(|d| {
                        format!(
                            "{}/{d}",
                            layer_of.get(d.as_str()).copied().unwrap_or(prefix)
                        )
                    })
                    .collect(),
                summary: format!(
                    "{source} → healthy within {}{checks}",
                    humantime::format_duration(c.wait)
                ),
                timeout: c.wait,
            });
        }
    }
    PlanGraph {
        env: env.name.clone(),
        nodes,
    }
}
