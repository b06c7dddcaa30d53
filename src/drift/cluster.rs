//! Cluster drift: the nodes and Kubernetes version Git implies, compared with what the API server
//! reports. Pure; the caller lists nodes and reads `/version`.

use crate::engine::Layer;

use super::model::{DriftEntry, EntryKind, FieldDiff};

/// What Git (plus the cloud layer) says the cluster should be.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpectedCluster {
    /// EC2 instance ids that must each be a Ready node (a phoenix-built cluster). Matched against
    /// the node's `spec.providerID` (`aws:///us-east-1a/i-0abc`).
    pub instance_ids: Vec<String>,
    /// For an existing cluster (no instances of ours): at least this many Ready nodes. Ignored
    /// when `instance_ids` is not empty.
    pub min_nodes: Option<usize>,
    /// The Kubernetes version in Git, e.g. `v1.31.4+k3s1`; `None` when Git does not pin one.
    pub version: Option<String>,
}

/// One node as the API server reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedNode {
    pub name: String,
    pub provider_id: Option<String>,
    pub ready: bool,
    pub kubelet_version: Option<String>,
}

/// What the API server reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedCluster {
    /// `gitVersion` from `/version`.
    pub server_version: Option<String>,
    pub nodes: Vec<ObservedNode>,
}

/// Cluster drift entries: an expected instance with no node → missing; a node that is not Ready
/// → not-ready; the server or a kubelet on another version than Git → version.
pub fn cluster_entries(expected: &ExpectedCluster, observed: &ObservedCluster) -> Vec<DriftEntry> {
    let mut entries = Vec::new();
    if let Some(want) = &expected.version {
        let live = observed.server_version.as_deref().unwrap_or("unknown");
        if !same_version(want, live) {
            entries.push(
                DriftEntry::new(Layer::Cluster, "control-plane", EntryKind::Version)
                    .with_fields(vec![FieldDiff::value("version", want.as_str(), live)]),
            );
        }
    }
    if !expected.instance_ids.is_empty() {
        for id in &expected.instance_ids {
            if !observed.nodes.iter().any(|n| is_instance(n, id)) {
                entries.push(
                    DriftEntry::new(Layer::Cluster, format!("node/{id}"), EntryKind::Missing)
                        .with_detail(format!("no node has registered for instance {id}")),
                );
            }
        }
    } else if let Some(min) = expected.min_nodes {
        let ready = observed.nodes.iter().filter(|n| n.ready).count();
        if ready < min {
            entries.push(
                DriftEntry::new(Layer::Cluster, "nodes", EntryKind::Missing).with_fields(vec![
                    FieldDiff::value("ready-nodes", format!("at least {min}"), ready.to_string()),
                ]),
            );
        }
    }
    let mut nodes: Vec<&ObservedNode> = observed.nodes.iter().collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    for node in nodes {
        if !node.ready {
            entries.push(
                DriftEntry::new(
                    Layer::Cluster,
                    format!("node/{}", node.name),
                    EntryKind::NotReady,
                )
                .with_fields(vec![FieldDiff::value("ready", "true", "false")]),
            );
        }
        if let (Some(want), Some(live)) = (&expected.version, &node.kubelet_version) {
            if !same_version(want, live) {
                entries.push(
                    DriftEntry::new(
                        Layer::Cluster,
                        format!("node/{}", node.name),
                        EntryKind::Version,
                    )
                    .with_fields(vec![FieldDiff::value(
                        "kubeletVersion",
                        want.as_str(),
                        live.as_str(),
                    )]),
                );
            }
        }
    }
    entries
}

/// A node belongs to an instance when its provider id ends in `/<instance id>`.
fn is_instance(node: &ObservedNode, instance_id: &str) -> bool {
    node.provider_id
        .as_deref()
        .and_then(|p| p.rsplit('/').next())
        .is_some_and(|last| last == instance_id)
}

/// Versions compare on `major.minor.patch` with or without a leading `v`; the build suffix
/// (`+k3s1`) counts only when both sides carry one, since some servers report the bare version.
fn same_version(want: &str, live: &str) -> bool {
    let (want_core, want_build) = split_version(want);
    let (live_core, live_build) = split_version(live);
    if want_core != live_core {
        return false;
    }
    match (want_build, live_build) {
        (Some(w), Some(l)) => w == l,
        _ => true,
    }
}

fn split_version(v: &str) -> (&str, Option<&str>) {
    let v = v.trim();
    let v = v.strip_prefix('v').unwrap_or(v);
    match v.split_once('+') {
        Some((core, build)) => (core, Some(build)),
        None => (v, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, instance: &str, ready: bool, version: &str) -> ObservedNode {
        ObservedNode {
            name: name.into(),
            provider_id: Some(format!("aws:///us-east-1a/{instance}")),
            ready,
            kubelet_version: Some(version.into()),
        }
    }

    fn expected(ids: &[&str]) -> ExpectedCluster {
        ExpectedCluster {
            instance_ids: ids.iter().map(|s| s.to_string()).collect(),
            min_nodes: None,
            version: Some("v1.31.4+k3s1".into()),
        }
    }

    #[test]
    fn all_nodes_ready_on_the_right_version_is_in_sync() {
        let observed = ObservedCluster {
            server_version: Some("v1.31.4+k3s1".into()),
            nodes: vec![
                node("server-0", "i-1", true, "v1.31.4+k3s1"),
                node("agent-0", "i-2", true, "v1.31.4+k3s1"),
            ],
        };
        assert!(cluster_entries(&expected(&["i-1", "i-2"]), &observed).is_empty());
    }

    #[test]
    fn a_missing_node_and_a_not_ready_node() {
        let observed = ObservedCluster {
            server_version: Some("v1.31.4+k3s1".into()),
            nodes: vec![node("server-0", "i-1", false, "v1.31.4+k3s1")],
        };
        let entries = cluster_entries(&expected(&["i-1", "i-2"]), &observed);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].resource, "node/i-2");
        assert_eq!(entries[0].kind, EntryKind::Missing);
        assert_eq!(entries[1].resource, "node/server-0");
        assert_eq!(entries[1].kind, EntryKind::NotReady);
        assert_eq!(
            entries[1].fields,
            vec![FieldDiff::value("ready", "true", "false")]
        );
    }

    #[test]
    fn a_provider_id_that_only_contains_the_instance_id_does_not_match() {
        let mut n = node("x", "i-12", true, "v1.31.4");
        n.provider_id = Some("aws:///us-east-1a/i-12".into());
        let observed = ObservedCluster {
            server_version: Some("v1.31.4".into()),
            nodes: vec![n],
        };
        let entries = cluster_entries(&expected(&["i-1"]), &observed);
        assert_eq!(entries[0].resource, "node/i-1");
        assert_eq!(entries[0].kind, EntryKind::Missing);
    }

    #[test]
    fn version_mismatch_of_server_and_kubelet() {
        let observed = ObservedCluster {
            server_version: Some("v1.30.2+k3s1".into()),
            nodes: vec![node("server-0", "i-1", true, "v1.30.2+k3s1")],
        };
        let entries = cluster_entries(&expected(&["i-1"]), &observed);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].resource, "control-plane");
        assert_eq!(entries[0].kind, EntryKind::Version);
        assert_eq!(
            entries[0].fields,
            vec![FieldDiff::value("version", "v1.31.4+k3s1", "v1.30.2+k3s1")]
        );
        assert_eq!(entries[1].resource, "node/server-0");
        assert_eq!(entries[1].fields[0].path, "kubeletVersion");
    }

    #[test]
    fn a_bare_server_version_matches_a_suffixed_one() {
        assert!(same_version("v1.31.4+k3s1", "v1.31.4"));
        assert!(same_version("1.31.4", "v1.31.4"));
        assert!(!same_version("v1.31.4+k3s1", "v1.31.4+k3s2"));
        assert!(!same_version("v1.31.4", "v1.31.40"));
    }

    #[test]
    fn an_unknown_server_version_is_drift_when_git_pins_one() {
        let observed = ObservedCluster {
            server_version: None,
            nodes: vec![node("server-0", "i-1", true, "v1.31.4+k3s1")],
        };
        let entries = cluster_entries(&expected(&["i-1"]), &observed);
        assert_eq!(
            entries[0].fields,
            vec![FieldDiff::value("version", "v1.31.4+k3s1", "unknown")]
        );
    }

    #[test]
    fn existing_cluster_counts_ready_nodes() {
        let want = ExpectedCluster {
            instance_ids: vec![],
            min_nodes: Some(2),
            version: None,
        };
        let observed = ObservedCluster {
            server_version: Some("v1.35.0".into()),
            nodes: vec![
                node("a", "i-1", true, "v1.35.0"),
                node("b", "i-2", false, "v1.35.0"),
            ],
        };
        let entries = cluster_entries(&want, &observed);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].resource, "nodes");
        assert_eq!(
            entries[0].fields,
            vec![FieldDiff::value("ready-nodes", "at least 2", "1")]
        );
        assert_eq!(entries[1].kind, EntryKind::NotReady);
    }
}
