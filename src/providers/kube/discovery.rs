//! Which kinds the cluster serves: one discovery per run, shared by every component, refreshed
//! only when a kind is missing (after CRDs are Established, or once before calling a kind
//! unknown).

use std::collections::HashMap;
use std::sync::Arc;

use ::kube::discovery::{verbs, ApiResource, Discovery, Scope};
use tokio::sync::Mutex;

use super::error::KubeError;

/// How to address one served kind.
#[derive(Clone, Debug)]
pub struct Target {
    pub resource: ApiResource,
    pub namespaced: bool,
    pub deletable: bool,
    pub listable: bool,
}

impl Target {
    /// A kind every cluster serves, addressed without discovery.
    pub(crate) fn builtin(
        group: &str,
        version: &str,
        kind: &str,
        plural: &str,
        namespaced: bool,
    ) -> Target {
        let api_version = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Target {
            resource: ApiResource {
                group: group.into(),
                version: version.into(),
                api_version,
                kind: kind.into(),
                plural: plural.into(),
            },
            namespaced,
            deletable: true,
            listable: true,
        }
    }
}

/// Served kinds by (apiVersion, kind).
#[derive(Debug, Default)]
pub struct KindMap {
    kinds: HashMap<(String, String), Target>,
}

impl KindMap {
    pub fn get(&self, api_version: &str, kind: &str) -> Option<&Target> {
        self.kinds.get(&(api_version.to_string(), kind.to_string()))
    }

    /// Every served kind at every version (for the teardown sweep).
    pub fn all(&self) -> impl Iterator<Item = &Target> {
        self.kinds.values()
    }

    fn from_discovery(discovery: &Discovery) -> KindMap {
        let mut kinds = HashMap::new();
        for group in discovery.groups() {
            for version in group.versions() {
                for (ar, caps) in group.versioned_resources(version) {
                    let target = Target {
                        namespaced: matches!(caps.scope, Scope::Namespaced),
                        deletable: caps.supports_operation(verbs::DELETE),
                        listable: caps.supports_operation(verbs::LIST),
                        resource: ar,
                    };
                    kinds.insert(
                        (
                            target.resource.api_version.clone(),
                            target.resource.kind.clone(),
                        ),
                        target,
                    );
                }
            }
        }
        KindMap { kinds }
    }
}

#[derive(Default)]
struct State {
    generation: u64,
    map: Option<Arc<KindMap>>,
}

/// The per-run discovery cache.
#[derive(Default)]
pub struct Resolver {
    state: Mutex<State>,
}

impl Resolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// The cached kinds, discovering them on first use. The generation identifies this snapshot
    /// for [`Resolver::refresh`].
    pub async fn current(&self, client: &::kube::Client) -> Result<(u64, Arc<KindMap>), KubeError> {
        // Held across discovery so that concurrent components share one discovery run.
        let mut state = self.state.lock().await;
        if let Some(map) = &state.map {
            return Ok((state.generation, Arc::clone(map)));
        }
        let map = Arc::new(discover(client).await?);
        state.generation += 1;
        state.map = Some(Arc::clone(&map));
        Ok((state.generation, map))
    }

    /// Discovers again unless another component already did since snapshot `seen`.
    pub async fn refresh(
        &self,
        client: &::kube::Client,
        seen: u64,
    ) -> Result<(u64, Arc<KindMap>), KubeError> {
        let mut state = self.state.lock().await;
        if state.generation != seen {
            if let Some(map) = &state.map {
                return Ok((state.generation, Arc::clone(map)));
            }
        }
        let map = Arc::new(discover(client).await?);
        state.generation += 1;
        state.map = Some(Arc::clone(&map));
        Ok((state.generation, map))
    }
}

/// Aggregated discovery (two requests), falling back to per-group documents for servers that do
/// not serve it.
pub async fn discover(client: &::kube::Client) -> Result<KindMap, KubeError> {
    let discovery = match Discovery::new(client.clone()).run_aggregated().await {
        Ok(d) => d,
        Err(_) => Discovery::new(client.clone())
            .run()
            .await
            .map_err(|e| KubeError::api("discovering", "the cluster's API kinds", &e))?,
    };
    Ok(KindMap::from_discovery(&discovery))
}

/// Whether a built-in kind is cluster-scoped, for what asks no API server (the offline plan, the
/// plan of a pull request). Kinds from CRDs are taken as namespaced, as most are.
pub fn builtin_cluster_scoped(api_version: &str, kind: &str) -> bool {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    matches!(
        (group, kind),
        ("", "Namespace" | "Node" | "PersistentVolume")
            | (
                "rbac.authorization.k8s.io",
                "ClusterRole" | "ClusterRoleBinding"
            )
            | ("apiextensions.k8s.io", "CustomResourceDefinition")
            | ("apiregistration.k8s.io", "APIService")
            | (
                "storage.k8s.io",
                "StorageClass" | "CSIDriver" | "CSINode" | "VolumeAttachment"
            )
            | ("scheduling.k8s.io", "PriorityClass")
            | ("networking.k8s.io", "IngressClass")
            | ("node.k8s.io", "RuntimeClass")
            | (
                "admissionregistration.k8s.io",
                "MutatingWebhookConfiguration"
                    | "ValidatingWebhookConfiguration"
                    | "ValidatingAdmissionPolicy"
                    | "ValidatingAdmissionPolicyBinding"
            )
    )
}
