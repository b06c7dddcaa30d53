//! The control-plane gate: the engine node `cluster/control-plane`, which resolves the API
//! endpoint, writes the admin kubeconfig and waits until `/readyz` is ok, every expected node is
//! Ready and the kube-system Deployments are Available. The checks are pure functions over
//! Kubernetes objects, unit-tested without a cluster.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use serde::Serialize;

use super::access::{client_for, ClientTimeouts, ClusterAccess};
use super::credentials::Credentials;
use super::endpoint::resolve_endpoint;
use super::error::ClusterError;
use super::kubeconfig::write_kubeconfig;
use crate::engine::{Action, BoxFuture, Check, Layer, NodeCtx, NodeError, NodeOutcome, NodeSpec};
use crate::env::model::{Cloud, K3s, Role};
use crate::error::chain;
use crate::providers::aws::{self, Ec2, LiveCloud, LiveState, TAG_ROLE};
use crate::report::format_duration;

/// Engine node id of the gate.
pub const CONTROL_PLANE_NODE: &str = "cluster/control-plane";

/// One node the cluster must have: an instance of the environment with a cluster role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExpectedNode {
    /// `instance/<group>/<i>`.
    pub resource: String,
    /// `None` when the instance does not exist in EC2.
    pub instance_id: Option<String>,
    pub private_ip: Option<String>,
    pub role: String,
}

impl ExpectedNode {
    /// The EC2 default host name (`ip-10-40-1-12`), which k3s takes as the node name.
    pub fn host_name(&self) -> Option<String> {
        self.private_ip
            .as_ref()
            .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
            .map(|ip| format!("ip-{}", ip.replace('.', "-")))
    }

    /// How messages name it: `ip-10-40-1-12 (i-0abc)`, or the resource id when it has no instance.
    pub fn label(&self) -> String {
        match (self.host_name(), &self.instance_id) {
            (Some(h), Some(id)) => format!("{h} ({id})"),
            (None, Some(id)) => format!("{id} ({})", self.resource),
            _ => format!("{} (no instance in EC2)", self.resource),
        }
    }

    fn matches(&self, node: &ObservedNode) -> bool {
        if let Some(id) = &self.instance_id {
            let by_provider = node.provider_id.as_deref().is_some_and(|p| {
                p.starts_with("aws://") && p.rsplit('/').next() == Some(id.as_str())
            });
            if by_provider || node.name == *id {
                return true;
            }
        }
        let first_label = node.name.split('.').next().unwrap_or("");
        self.host_name().is_some_and(|h| h == first_label)
            || self
                .private_ip
                .as_ref()
                .is_some_and(|ip| node.internal_ips.contains(ip))
    }
}

/// Which nodes the gate waits for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum NodeExpectation {
    /// k3s on the env's instances: one Ready node for each.
    Instances(Vec<ExpectedNode>),
    /// An existing cluster: at least this many Ready nodes.
    AtLeast(usize),
}

/// A node as the gate and drift see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ObservedNode {
    pub name: String,
    pub ready: bool,
    pub provider_id: Option<String>,
    pub kubelet_version: Option<String>,
    pub internal_ips: Vec<String>,
}

impl ObservedNode {
    pub fn from_node(node: &Node) -> ObservedNode {
        let status = node.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        ObservedNode {
            name: node.metadata.name.clone().unwrap_or_default(),
            ready,
            provider_id: node.spec.as_ref().and_then(|s| s.provider_id.clone()),
            kubelet_version: status
                .and_then(|s| s.node_info.as_ref())
                .map(|i| i.kubelet_version.clone()),
            internal_ips: status
                .and_then(|s| s.addresses.as_ref())
                .map(|a| {
                    a.iter()
                        .filter(|a| a.type_ == "InternalIP")
                        .map(|a| a.address.clone())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// How the observed nodes measure up.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeReport {
    pub expected: usize,
    /// Expected nodes that are Ready (for [`NodeExpectation::AtLeast`], all Ready nodes).
    pub ready: usize,
    /// Expected instances without a node (labels).
    pub missing: Vec<String>,
    /// Expected instances whose node is not Ready (labels, with the node name).
    pub not_ready: Vec<String>,
    /// Nodes that match no expected instance (names); not a gate failure, drift reports them.
    pub unexpected: Vec<String>,
    at_least: bool,
}

impl NodeReport {
    pub fn ok(&self) -> bool {
        if self.at_least {
            self.ready >= self.expected
        } else {
            self.missing.is_empty() && self.not_ready.is_empty()
        }
    }

    /// `2 of 3 nodes Ready`.
    pub fn headline(&self) -> String {
        if self.at_least {
            format!("{} of at least {} nodes Ready", self.ready, self.expected)
        } else {
            format!("{} of {} nodes Ready", self.ready, self.expected)
        }
    }

    /// `ip-10-40-1-12 (i-0abc) missing; ip-10-40-1-13 (i-0abd) NotReady`.
    pub fn detail(&self) -> String {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!("{} missing", self.missing.join(", ")));
        }
        if !self.not_ready.is_empty() {
            parts.push(format!("{} NotReady", self.not_ready.join(", ")));
        }
        if parts.is_empty() && !self.ok() {
            parts.push("no Ready node".into());
        }
        parts.join("; ")
    }
}

/// Matches nodes to the expectation (pure).
pub fn evaluate_nodes(expect: &NodeExpectation, nodes: &[ObservedNode]) -> NodeReport {
    match expect {
        NodeExpectation::AtLeast(n) => NodeReport {
            expected: *n,
            ready: nodes.iter().filter(|n| n.ready).count(),
            not_ready: nodes
                .iter()
                .filter(|n| !n.ready)
                .map(|n| n.name.clone())
                .collect(),
            at_least: true,
            ..NodeReport::default()
        },
        NodeExpectation::Instances(expected) => {
            let mut report = NodeReport {
                expected: expected.len(),
                ..NodeReport::default()
            };
            let mut used = BTreeSet::new();
            for e in expected {
                let found = nodes
                    .iter()
                    .enumerate()
                    .find(|(i, n)| !used.contains(i) && e.matches(n));
                match found {
                    Some((i, n)) => {
                        used.insert(i);
                        if n.ready {
                            report.ready += 1;
                        } else if n.name == e.host_name().unwrap_or_default() {
                            report.not_ready.push(e.label());
                        } else {
                            report
                                .not_ready
                                .push(format!("{} as node {}", e.label(), n.name));
                        }
                    }
                    None => report.missing.push(e.label()),
                }
            }
            report.unexpected = nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| !used.contains(i))
                .map(|(_, n)| n.name.clone())
                .collect();
            report
        }
    }
}

/// Why a Deployment is not Available, or `None` when it is: the controller has seen the current
/// generation, the `Available` condition is True and every desired replica is available.
pub fn deployment_unavailable(d: &Deployment) -> Option<String> {
    let generation = d.metadata.generation.unwrap_or(0);
    let status = d.status.as_ref();
    let observed = status.and_then(|s| s.observed_generation).unwrap_or(0);
    if observed < generation {
        return Some(format!("generation {generation} not observed yet"));
    }
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let available = status.and_then(|s| s.available_replicas).unwrap_or(0);
    let condition = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Available"));
    match condition {
        Some(c) if c.status == "True" && available >= desired => None,
        Some(c) if c.status != "True" => Some(format!(
            "{available}/{desired} available, Available={}{}",
            c.status,
            c.reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        )),
        _ => Some(format!("{available}/{desired} available")),
    }
}

/// Problems with the kube-system Deployments (pure): each required one must exist, and every
/// present one must be Available. Empty when all is well.
pub fn evaluate_deployments(required: &[String], deployments: &[Deployment]) -> Vec<String> {
    let mut problems = Vec::new();
    for name in required {
        if !deployments
            .iter()
            .any(|d| d.metadata.name.as_deref() == Some(name.as_str()))
        {
            problems.push(format!("{name} missing"));
        }
    }
    for d in deployments {
        if let Some(why) = deployment_unavailable(d) {
            problems.push(format!(
                "{} ({why})",
                d.metadata.name.as_deref().unwrap_or("unnamed")
            ));
        }
    }
    problems
}

/// The expected nodes of a k3s env: every instance of its server and agent groups, with the
/// live instance (a running copy first) when there is one.
pub fn expected_nodes(cloud: &Cloud, live: &LiveCloud) -> Vec<ExpectedNode> {
    let mut out = Vec::new();
    for g in &cloud.instances {
        let role = match g.role {
            Role::Server => "server",
            Role::Agent => "agent",
            Role::None => continue,
        };
        for i in 0..g.count {
            let resource = format!("instance/{}/{i}", g.name);
            let pick = live
                .instance(&resource)
                .filter(|r| r.tags.get(TAG_ROLE).is_none_or(|t| t == role));
            let (instance_id, private_ip) = match pick {
                Some(r) => match &r.state {
                    LiveState::Instance { private_ip, .. } => {
                        (Some(r.aws_id.clone()), private_ip.clone())
                    }
                    _ => (None, None),
                },
                None => (None, None),
            };
            out.push(ExpectedNode {
                resource,
                instance_id,
                private_ip,
                role: role.into(),
            });
        }
    }
    out
}

/// What the gate waits for and how often it looks.
#[derive(Clone, Copy, Debug)]
pub struct GateOptions {
    /// How long the gate waits for readiness (the node's engine deadline adds a margin, so this
    /// wait's message, which names what is missing, is the one reported).
    pub timeout: Duration,
    pub poll_interval: Duration,
    pub client: ClientTimeouts,
    /// An existing cluster fails once every connection was refused for this long: it is not
    /// booting, so nothing will come to listen (a k3s server refuses while it boots and gets the
    /// whole `timeout`).
    pub refused_grace: Duration,
}

impl Default for GateOptions {
    fn default() -> Self {
        GateOptions {
            timeout: Duration::from_secs(600),
            poll_interval: Duration::from_secs(2),
            client: ClientTimeouts::default(),
            refused_grace: Duration::from_secs(15),
        }
    }
}

/// The cluster the gate is for.
#[derive(Clone, Debug)]
pub enum GateTarget {
    /// k3s on the env's instances: the credentials derived from the env's cluster secret, the
    /// kubeconfig written under `phoenix_home`, the endpoint from the live server instance or
    /// `endpoint_override` (`{env}` allowed).
    K3s {
        phoenix_home: PathBuf,
        creds: Arc<Credentials>,
        /// The effective env name (a drill copy's own).
        env_name: String,
        cloud: Arc<Cloud>,
        k3s: K3s,
        ec2: Ec2,
        endpoint_override: Option<String>,
    },
    /// An existing cluster (`cluster.existing`): nothing is created; the gate checks readiness.
    Existing {
        env_name: String,
        access: ClusterAccess,
    },
}

/// The `cluster/control-plane` node; its spec is [`control_plane_spec`].
pub fn control_plane_node(target: GateTarget, opts: GateOptions) -> (NodeSpec, Arc<dyn Action>) {
    let spec = match &target {
        GateTarget::K3s {
            cloud, env_name, ..
        } => control_plane_spec(env_name, Some(cloud), &opts),
        GateTarget::Existing { env_name, .. } => control_plane_spec(env_name, None, &opts),
    };
    (spec, Arc::new(ControlPlane { target, opts }))
}

/// The spec of the `cluster/control-plane` node, without any client (`plan --offline` prints
/// it). For k3s on `instances` it depends on every server and agent instance node
/// (`cloud/instance/<group>/<i>`); for an existing cluster (`None`) on nothing.
pub fn control_plane_spec(
    env_name: &str,
    instances: Option<&Cloud>,
    opts: &GateOptions,
) -> NodeSpec {
    let (deps, description) = match instances {
        Some(cloud) => {
            let deps: Vec<String> = cloud
                .instances
                .iter()
                .filter(|g| g.role != Role::None)
                .flat_map(|g| (0..g.count).map(move |i| format!("cloud/instance/{}/{i}", g.name)))
                .collect();
            (
                deps,
                format!("control plane of {env_name}: /readyz, nodes Ready, kube-system available"),
            )
        }
        None => (
            Vec::new(),
            format!("existing cluster of {env_name}: /readyz, nodes Ready, kube-system available"),
        ),
    };
    NodeSpec::new(
        CONTROL_PLANE_NODE,
        Layer::Cluster,
        opts.timeout + Duration::from_secs(60),
        description,
    )
    .depends_on(deps)
}

struct ControlPlane {
    target: GateTarget,
    opts: GateOptions,
}

impl Action for ControlPlane {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, Result<NodeOutcome, NodeError>> {
        let target = self.target.clone();
        let opts = self.opts;
        Box::pin(async move { gate(&ctx, target, opts).await })
    }
}

/// What one poll found wrong; the last one is named when the gate times out.
#[derive(Clone, Debug)]
struct Pending {
    headline: String,
    detail: String,
    /// The API server refused the connection (nothing listens at the address).
    refused: bool,
}

async fn gate(
    ctx: &NodeCtx,
    target: GateTarget,
    opts: GateOptions,
) -> Result<NodeOutcome, NodeError> {
    let existing = matches!(target, GateTarget::Existing { .. });
    let (env_name, access, expect, required) = match target {
        GateTarget::K3s {
            phoenix_home,
            creds,
            env_name,
            cloud,
            k3s,
            ec2,
            endpoint_override,
        } => {
            ctx.progress(format!("observing the instances of {env_name}"));
            let live = aws::observe(&ec2, &env_name).await?;
            let endpoint = resolve_endpoint(
                &env_name,
                endpoint_override.as_deref(),
                Some(&cloud),
                Some(&live),
                &k3s.endpoint,
            )?;
            write_kubeconfig(&creds, &endpoint.url)?;
            ctx.progress(format!("kubeconfig for {} written", endpoint.url));
            let access = ClusterAccess::k3s(&phoenix_home, &env_name)?.with_timeouts(opts.client);
            let expected = expected_nodes(&cloud, &live);
            // k3s runs no cloud controller: the Node of an instance phoenix terminated (a
            // replaced or removed instance) stays forever, and drift would report it forever.
            let gone = aws::gone_instances(&ec2, &env_name).await?;
            let client = client_for(&access).await?;
            for (node, instance) in prune_stale_nodes(&client, &expected, &gone).await? {
                ctx.progress(format!(
                    "deleted Node {node} of instance {instance}, which phoenix terminated"
                ));
            }
            let expect = NodeExpectation::Instances(expected);
            (env_name, access, expect, vec!["coredns".to_string()])
        }
        GateTarget::Existing { env_name, access } => (
            env_name,
            access.with_timeouts(opts.client),
            NodeExpectation::AtLeast(1),
            Vec::new(),
        ),
    };
    let config = super::access::config_for(&access).await?;
    // `Uri` prints a bare host with a trailing slash; paths are appended to it below.
    let url = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_string();
    let client = client_for(&access).await?;
    let last: Arc<Mutex<Option<Pending>>> = Arc::default();
    let refused_since: Arc<Mutex<Option<tokio::time::Instant>>> = Arc::default();
    let what = format!(
        "the control plane of {env_name} at {url}: /readyz ok, {} nodes Ready, kube-system Deployments Available",
        match &expect {
            NodeExpectation::Instances(v) => v.len().to_string(),
            NodeExpectation::AtLeast(n) => format!("at least {n}"),
        }
    );
    if existing {
        ctx.progress(format!(
            "existing cluster at {url}: waiting up to {} for it to be ready; connections refused for {} end the wait",
            format_duration(opts.timeout),
            format_duration(opts.refused_grace)
        ));
    }
    let result = ctx
        .wait_for_state(&what, opts.timeout, opts.poll_interval, || {
            let client = client.clone();
            let expect = expect.clone();
            let required = required.clone();
            let url = url.clone();
            let last = Arc::clone(&last);
            let refused_since = Arc::clone(&refused_since);
            let env_name = env_name.clone();
            async move {
                let outcome = poll(&client, &url, &expect, &required).await;
                let refused = matches!(&outcome, Err(p) if p.refused);
                let since = {
                    let mut since = refused_since.lock().unwrap_or_else(PoisonError::into_inner);
                    if !refused {
                        *since = None;
                    }
                    *since.get_or_insert_with(tokio::time::Instant::now)
                };
                if existing && refused && since.elapsed() >= opts.refused_grace {
                    return Err(NodeError::permanent(format!(
                        "existing cluster of {env_name}: every connection to {url} was refused for {}; \
                         nothing listens there (check the server in cluster.existing's kubeconfig, \
                         and that the API server runs)",
                        format_duration(opts.refused_grace)
                    )));
                }
                Ok(match outcome {
                    Ok(report) => Check::Ready(report),
                    Err(p) => {
                        let state = format!("{}: {}", p.headline, p.detail);
                        *last.lock().unwrap_or_else(PoisonError::into_inner) = Some(p);
                        Check::Waiting(state)
                    }
                })
            }
        })
        .await;
    match result {
        Ok(report) => {
            ctx.progress(format!("{} ({url})", report.headline()));
            Ok(NodeOutcome::Converged)
        }
        // Refused past the grace (an existing cluster), or a cancelled wait: as it is.
        Err(err) if !err.message.starts_with("timed out after") => Err(err),
        // Otherwise the error is the wait's deadline: say what was missing.
        Err(err) => {
            let pending = last.lock().unwrap_or_else(PoisonError::into_inner).clone();
            Err(match pending {
                Some(p) => NodeError::permanent(format!(
                    "control plane of {env_name}: {} after {}: {}",
                    p.headline,
                    format_duration(opts.timeout),
                    p.detail
                )),
                None => err,
            })
        }
    }
}

async fn poll(
    client: &kube::Client,
    url: &str,
    expect: &NodeExpectation,
    required: &[String],
) -> Result<NodeReport, Pending> {
    let api_down = |detail: String| Pending {
        headline: "API server not ready".into(),
        detail,
        refused: false,
    };
    let request = http::Request::get("/readyz")
        .body(Vec::new())
        .map_err(|e| api_down(format!("building GET /readyz: {e}")))?;
    match client.request_text(request).await {
        Ok(body) if body.trim() == "ok" => {}
        Ok(body) => {
            let first: String = body
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect();
            return Err(api_down(format!("GET {url}/readyz answered {first:?}")));
        }
        Err(e) => {
            return Err(Pending {
                refused: is_refused(&e),
                ..api_down(format!("GET {url}/readyz: {}", chain(&e)))
            })
        }
    }
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| api_down(format!("listing nodes at {url}: {}", chain(&e))))?;
    let observed: Vec<ObservedNode> = nodes.items.iter().map(ObservedNode::from_node).collect();
    let report = evaluate_nodes(expect, &observed);
    if !report.ok() {
        return Err(Pending {
            headline: report.headline(),
            detail: report.detail(),
            refused: false,
        });
    }
    let deployments = Api::<Deployment>::namespaced(client.clone(), "kube-system")
        .list(&ListParams::default())
        .await
        .map_err(|e| {
            api_down(format!(
                "listing kube-system Deployments at {url}: {}",
                chain(&e)
            ))
        })?;
    let problems = evaluate_deployments(required, &deployments.items);
    if !problems.is_empty() {
        return Err(Pending {
            headline: format!("{} kube-system Deployments not Available", problems.len()),
            detail: problems.join(", "),
            refused: false,
        });
    }
    Ok(report)
}

/// The instance id in a Node's `spec.providerID` (`aws:///ZONE/i-...`).
fn provider_instance(provider_id: &str) -> Option<&str> {
    provider_id
        .strip_prefix("aws://")
        .and_then(|rest| rest.rsplit('/').next())
        .filter(|id| id.starts_with("i-"))
}

/// Deletes the Nodes whose `providerID` names an instance of the env that phoenix terminated
/// (`gone`: tagged `phoenix:env`, `shutting-down` or `terminated`) and that is no expected
/// instance. Nodes of any other instance, or without a providerID, are left alone: phoenix
/// deletes only what its own tags mark. Returns (node, instance) of each deleted Node.
async fn prune_stale_nodes(
    client: &kube::Client,
    expected: &[ExpectedNode],
    gone: &[(String, String, String)],
) -> Result<Vec<(String, String)>, ClusterError> {
    let gone: BTreeSet<&str> = gone.iter().map(|(_, id, _)| id.as_str()).collect();
    if gone.is_empty() {
        return Ok(Vec::new());
    }
    let current: BTreeSet<&str> = expected
        .iter()
        .filter_map(|e| e.instance_id.as_deref())
        .collect();
    let api: Api<Node> = Api::all(client.clone());
    let nodes = api
        .list(&ListParams::default())
        .await
        .map_err(|source| ClusterError::Api {
            doing: "listing nodes to find those of terminated instances".into(),
            source,
        })?;
    let mut deleted = Vec::new();
    for n in nodes.items {
        let Some(name) = n.metadata.name.clone() else {
            continue;
        };
        let Some(instance) = n
            .spec
            .as_ref()
            .and_then(|s| s.provider_id.as_deref())
            .and_then(provider_instance)
            .map(str::to_string)
        else {
            continue;
        };
        if !gone.contains(instance.as_str()) || current.contains(instance.as_str()) {
            continue;
        }
        match api.delete(&name, &Default::default()).await {
            Ok(_) => deleted.push((name, instance)),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => {
                return Err(ClusterError::Api {
                    doing: format!("deleting Node {name} of terminated instance {instance}"),
                    source,
                })
            }
        }
    }
    Ok(deleted)
}

/// Whether `err` (or a cause) is a refused TCP connection.
fn is_refused(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        if e.to_string().contains("Connection refused") {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Fails fast with a readable message when the gate cannot even start (bad target input).
pub fn check_target(target: &GateTarget) -> Result<(), ClusterError> {
    match target {
        GateTarget::K3s {
            env_name,
            endpoint_override,
            k3s,
            ..
        } => {
            super::credentials::cluster_dir(std::path::Path::new(""), env_name)?;
            super::userdata::check_version(&k3s.version)?;
            if let Some(o) = endpoint_override {
                super::endpoint::endpoint_override(o, env_name)?;
            }
            Ok(())
        }
        GateTarget::Existing { .. } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(yaml: serde_json::Value) -> ObservedNode {
        ObservedNode::from_node(&serde_json::from_value(yaml).unwrap())
    }

    fn ready_node(name: &str, provider: Option<&str>, ready: bool) -> ObservedNode {
        let mut n = serde_json::json!({
            "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}],
                       "nodeInfo": {"kubeletVersion": "v1.31.4+k3s1", "architecture": "", "bootID": "", "containerRuntimeVersion": "", "kernelVersion": "", "kubeProxyVersion": "", "machineID": "", "operatingSystem": "", "osImage": "", "systemUUID": ""}}
        });
        if let Some(p) = provider {
            n["spec"] = serde_json::json!({"providerID": p});
        }
        node(n)
    }

    fn expected(i: usize, id: &str, ip: &str) -> ExpectedNode {
        ExpectedNode {
            resource: format!("instance/agent/{i}"),
            instance_id: Some(id.into()),
            private_ip: Some(ip.into()),
            role: "agent".into(),
        }
    }

    #[test]
    fn provider_ids_name_their_instance() {
        assert_eq!(
            provider_instance("aws:///us-east-1a/i-0abc"),
            Some("i-0abc")
        );
        assert_eq!(provider_instance("aws:///us-east-1a/"), None);
        assert_eq!(provider_instance("k3s://node-1"), None);
        assert_eq!(provider_instance("i-0abc"), None);
    }

    #[test]
    fn nodes_match_by_provider_id_or_host_name_and_missing_ones_are_named() {
        let expect = NodeExpectation::Instances(vec![
            expected(0, "i-0aaa", "10.40.1.10"),
            expected(1, "i-0abc", "10.40.1.12"),
            expected(2, "i-0ccc", "10.40.1.14"),
        ]);
        let nodes = vec![
            ready_node("whatever", Some("aws:///us-east-1a/i-0aaa"), true),
            ready_node("ip-10-40-1-14.ec2.internal", None, true),
            ready_node("stranger", None, true),
        ];
        let r = evaluate_nodes(&expect, &nodes);
        assert!(!r.ok());
        assert_eq!(r.headline(), "2 of 3 nodes Ready");
        assert_eq!(r.detail(), "ip-10-40-1-12 (i-0abc) missing");
        assert_eq!(r.unexpected, vec!["stranger"]);
    }

    #[test]
    fn a_not_ready_node_blocks_and_is_named() {
        let expect = NodeExpectation::Instances(vec![expected(0, "i-0aaa", "10.40.1.10")]);
        let r = evaluate_nodes(&expect, &[ready_node("ip-10-40-1-10", None, false)]);
        assert!(!r.ok());
        assert_eq!(r.detail(), "ip-10-40-1-10 (i-0aaa) NotReady");
        let r = evaluate_nodes(&expect, &[ready_node("ip-10-40-1-10", None, true)]);
        assert!(r.ok(), "{r:?}");
    }

    #[test]
    fn one_node_cannot_stand_for_two_instances() {
        let a = expected(0, "i-1", "10.0.0.1");
        let mut b = a.clone();
        b.resource = "instance/agent/1".into();
        let r = evaluate_nodes(
            &NodeExpectation::Instances(vec![a, b]),
            &[ready_node("ip-10-0-0-1", None, true)],
        );
        assert_eq!(r.ready, 1);
        assert_eq!(r.missing.len(), 1);
    }

    #[test]
    fn an_instance_missing_from_ec2_is_named_by_resource() {
        let e = ExpectedNode {
            resource: "instance/agent/1".into(),
            instance_id: None,
            private_ip: None,
            role: "agent".into(),
        };
        let r = evaluate_nodes(&NodeExpectation::Instances(vec![e]), &[]);
        assert_eq!(r.detail(), "instance/agent/1 (no instance in EC2) missing");
    }

    #[test]
    fn at_least_counts_ready_nodes() {
        let r = evaluate_nodes(
            &NodeExpectation::AtLeast(1),
            &[ready_node("a", None, false)],
        );
        assert!(!r.ok());
        assert_eq!(r.headline(), "0 of at least 1 nodes Ready");
        assert!(evaluate_nodes(&NodeExpectation::AtLeast(1), &[ready_node("a", None, true)]).ok());
    }

    fn deployment(yaml: &str) -> Deployment {
        let v: serde_json::Value = serde_yaml_ng::from_str(yaml).unwrap();
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn deployment_availability() {
        let available = deployment(
            "metadata: {name: coredns, generation: 2}\nspec: {replicas: 1, selector: {}, template: {}}\nstatus: {observedGeneration: 2, availableReplicas: 1, conditions: [{type: Available, status: 'True'}]}",
        );
        assert_eq!(deployment_unavailable(&available), None);
        let stale = deployment(
            "metadata: {name: coredns, generation: 3}\nspec: {replicas: 1, selector: {}, template: {}}\nstatus: {observedGeneration: 2, availableReplicas: 1, conditions: [{type: Available, status: 'True'}]}",
        );
        assert_eq!(
            deployment_unavailable(&stale).as_deref(),
            Some("generation 3 not observed yet")
        );
        let down = deployment(
            "metadata: {name: coredns, generation: 1}\nspec: {replicas: 2, selector: {}, template: {}}\nstatus: {observedGeneration: 1, availableReplicas: 0, conditions: [{type: Available, status: 'False', reason: MinimumReplicasUnavailable}]}",
        );
        assert_eq!(
            deployment_unavailable(&down).as_deref(),
            Some("0/2 available, Available=False (MinimumReplicasUnavailable)")
        );
        let problems = evaluate_deployments(&["coredns".into(), "metrics-server".into()], &[down]);
        assert_eq!(
            problems,
            vec![
                "metrics-server missing".to_string(),
                "coredns (0/2 available, Available=False (MinimumReplicasUnavailable))".to_string()
            ]
        );
    }
}
