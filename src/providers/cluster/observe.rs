//! Cluster-layer drift: what the cluster looks like now (nodes, their Ready state and versions,
//! the API server version) and a pure comparison against what the environment expects.

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use serde::Serialize;

use super::error::ClusterError;
use super::gate::{evaluate_nodes, NodeExpectation, ObservedNode};

/// What the environment expects of its cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExpectedCluster {
    pub nodes: NodeExpectation,
    /// `cluster.version` for k3s (compared with the API server and every kubelet); `None` for
    /// an existing cluster, whose version phoenix does not manage.
    pub version: Option<String>,
}

/// One difference between the live cluster and the expectation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ClusterDrift {
    /// An expected instance has no node (label as in the gate: `ip-10-40-1-12 (i-0abc)`).
    NodeMissing {
        node: String,
    },
    NodeNotReady {
        node: String,
    },
    /// Fewer Ready nodes than an existing cluster needs.
    TooFewReady {
        ready: usize,
        expected: usize,
    },
    /// A node that matches none of the env's instances.
    UnexpectedNode {
        name: String,
    },
    ServerVersion {
        desired: String,
        live: String,
    },
    KubeletVersion {
        node: String,
        desired: String,
        live: String,
    },
}

impl std::fmt::Display for ClusterDrift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterDrift::NodeMissing { node } => write!(f, "node {node} missing"),
            ClusterDrift::NodeNotReady { node } => write!(f, "node {node} NotReady"),
            ClusterDrift::TooFewReady { ready, expected } => {
                write!(f, "{ready} Ready nodes, at least {expected} expected")
            }
            ClusterDrift::UnexpectedNode { name } => {
                write!(f, "node {name} matches no instance of the environment")
            }
            ClusterDrift::ServerVersion { desired, live } => {
                write!(f, "API server version {live}, desired {desired}")
            }
            ClusterDrift::KubeletVersion {
                node,
                desired,
                live,
            } => {
                write!(f, "node {node} runs kubelet {live}, desired {desired}")
            }
        }
    }
}

/// The live cluster as the drift check sees it, with its differences from the expectation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    pub server_version: Option<String>,
    pub nodes: Vec<ObservedNode>,
    pub drift: Vec<ClusterDrift>,
}

impl ClusterStatus {
    pub fn in_sync(&self) -> bool {
        self.drift.is_empty()
    }
}

/// Reads `/version` and the nodes, and compares them with `expected`.
pub async fn observe_cluster(
    client: &kube::Client,
    expected: &ExpectedCluster,
) -> Result<ClusterStatus, ClusterError> {
    let api = |doing: &str| {
        let doing = doing.to_string();
        move |source| ClusterError::Api { doing, source }
    };
    let version = client
        .apiserver_version()
        .await
        .map_err(api("reading the API server version"))?;
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(api("listing nodes"))?;
    let observed: Vec<ObservedNode> = nodes.items.iter().map(ObservedNode::from_node).collect();
    Ok(status_of(Some(version.git_version), observed, expected))
}

/// Builds the status from observations (pure).
pub fn status_of(
    server_version: Option<String>,
    nodes: Vec<ObservedNode>,
    expected: &ExpectedCluster,
) -> ClusterStatus {
    let drift = compare_nodes(server_version.as_deref(), &nodes, expected);
    ClusterStatus {
        server_version,
        nodes,
        drift,
    }
}

/// The differences between observed state and the expectation (pure).
pub fn compare_nodes(
    server_version: Option<&str>,
    nodes: &[ObservedNode],
    expected: &ExpectedCluster,
) -> Vec<ClusterDrift> {
    let mut drift = Vec::new();
    let report = evaluate_nodes(&expected.nodes, nodes);
    match &expected.nodes {
        NodeExpectation::Instances(_) => {
            drift.extend(
                report
                    .missing
                    .iter()
                    .map(|n| ClusterDrift::NodeMissing { node: n.clone() }),
            );
            drift.extend(
                report
                    .not_ready
                    .iter()
                    .map(|n| ClusterDrift::NodeNotReady { node: n.clone() }),
            );
            drift.extend(
                report
                    .unexpected
                    .iter()
                    .map(|n| ClusterDrift::UnexpectedNode { name: n.clone() }),
            );
        }
        NodeExpectation::AtLeast(_) => {
            if !report.ok() {
                drift.push(ClusterDrift::TooFewReady {
                    ready: report.ready,
                    expected: report.expected,
                });
            }
        }
    }
    if let Some(desired) = &expected.version {
        if let Some(live) = server_version {
            // The API server is compared by its Kubernetes release: build metadata after `+` (k3s's `+k3s1`) does
            // not change what the server is (semver precedence ignores it), and the kubelets below, which report
            // the distribution's full release, are still compared exactly.
            if kubernetes_release(live) != kubernetes_release(desired) {
                drift.push(ClusterDrift::ServerVersion {
                    desired: desired.clone(),
                    live: live.to_string(),
                });
            }
        }
        for n in nodes {
            if let Some(live) = &n.kubelet_version {
                if live != desired {
                    drift.push(ClusterDrift::KubeletVersion {
                        node: n.name.clone(),
                        desired: desired.clone(),
                        live: live.clone(),
                    });
                }
            }
        }
    }
    drift
}

/// `v1.37.2+k3s1` → `v1.37.2`.
fn kubernetes_release(version: &str) -> &str {
    version
        .split_once('+')
        .map_or(version, |(release, _)| release)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::cluster::gate::ExpectedNode;

    #[test]
    fn the_server_is_compared_by_kubernetes_release_and_kubelets_exactly() {
        let expected = ExpectedCluster {
            version: Some("v1.37.2+k3s1".into()),
            nodes: NodeExpectation::AtLeast(1),
        };
        let nodes = vec![n("a", true, "v1.37.2+k3s1")];
        assert!(compare_nodes(Some("v1.37.2"), &nodes, &expected).is_empty());
        assert!(compare_nodes(Some("v1.37.2+k3s1"), &nodes, &expected).is_empty());
        assert_eq!(
            compare_nodes(Some("v1.36.3+k3s1"), &nodes, &expected),
            vec![ClusterDrift::ServerVersion {
                desired: "v1.37.2+k3s1".into(),
                live: "v1.36.3+k3s1".into()
            }]
        );
        let other_build = vec![n("a", true, "v1.37.2+k3s2")];
        assert_eq!(
            compare_nodes(Some("v1.37.2+k3s2"), &other_build, &expected),
            vec![ClusterDrift::KubeletVersion {
                node: "a".into(),
                desired: "v1.37.2+k3s1".into(),
                live: "v1.37.2+k3s2".into()
            }]
        );
    }

    fn n(name: &str, ready: bool, version: &str) -> ObservedNode {
        ObservedNode {
            name: name.into(),
            ready,
            provider_id: None,
            kubelet_version: Some(version.into()),
            internal_ips: vec![],
        }
    }

    fn expected() -> ExpectedCluster {
        ExpectedCluster {
            nodes: NodeExpectation::Instances(vec![
                ExpectedNode {
                    resource: "instance/server/0".into(),
                    instance_id: Some("i-1".into()),
                    private_ip: Some("10.0.0.1".into()),
                    role: "server".into(),
                },
                ExpectedNode {
                    resource: "instance/agent/0".into(),
                    instance_id: Some("i-2".into()),
                    private_ip: Some("10.0.0.2".into()),
                    role: "agent".into(),
                },
            ]),
            version: Some("v1.31.4+k3s1".into()),
        }
    }

    #[test]
    fn in_sync() {
        let nodes = vec![
            n("ip-10-0-0-1", true, "v1.31.4+k3s1"),
            n("ip-10-0-0-2", true, "v1.31.4+k3s1"),
        ];
        assert!(compare_nodes(Some("v1.31.4+k3s1"), &nodes, &expected()).is_empty());
    }

    #[test]
    fn every_kind_of_drift_is_reported() {
        let nodes = vec![
            n("ip-10-0-0-1", false, "v1.30.0+k3s1"),
            n("extra", true, "v1.31.4+k3s1"),
        ];
        let d = compare_nodes(Some("v1.30.0+k3s1"), &nodes, &expected());
        let text: Vec<String> = d.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            vec![
                "node ip-10-0-0-2 (i-2) missing",
                "node ip-10-0-0-1 (i-1) NotReady",
                "node extra matches no instance of the environment",
                "API server version v1.30.0+k3s1, desired v1.31.4+k3s1",
                "node ip-10-0-0-1 runs kubelet v1.30.0+k3s1, desired v1.31.4+k3s1",
            ]
        );
    }

    #[test]
    fn existing_cluster_needs_one_ready_node_and_ignores_versions() {
        let e = ExpectedCluster {
            nodes: NodeExpectation::AtLeast(1),
            version: None,
        };
        assert_eq!(
            compare_nodes(Some("v1.2.3"), &[n("a", false, "x")], &e),
            vec![ClusterDrift::TooFewReady {
                ready: 0,
                expected: 1
            }]
        );
        assert!(compare_nodes(Some("v1.2.3"), &[n("a", true, "x")], &e).is_empty());
    }
}
