//! The add-on and app layers on Kubernetes: discovery-driven server-side apply in a fixed order,
//! ownership marks, health predicates, app checks, an in-cluster inventory with prune, and diff.
//! See docs/kube.md.

mod checks;
mod component;
mod connector;
mod contents;
mod converge;
mod diff;
mod discovery;
mod error;
pub mod health;
mod inventory;
mod object;
mod ops;
mod prune;
mod seals;

pub use checks::{CheckError, HttpCheck};
pub use component::{
    component_nodes, node_id, ApplyOptions, Completion, CompletionFor, ComponentSpec,
};
pub use connector::{Connector, FixedClient};
pub use converge::converge;
pub use diff::{
    changed_fields, diff_component, diff_component_with, hide_secret_values, ComponentDiff,
    DriftState, ObjectDiff, ObjectFieldDiff, Unhealthy,
};
pub use discovery::{builtin_cluster_scoped, Resolver};
pub use error::KubeError;
pub use health::Health;
pub use inventory::{inventory_name, Inventory, INVENTORY_NAMESPACE, LABEL_INVENTORY};
pub use object::{
    owned_by_env, ApplyPhase, Marks, ObjectRef, ANNOTATION_COMMIT, LABEL_COMPONENT, LABEL_ENV,
    LABEL_LAYER, LABEL_MANAGED_BY, MANAGED_BY,
};
pub use ops::FIELD_MANAGER;
pub use prune::{delete_component, destroy_all, prune_node_id, prune_nodes};
pub use seals::SealStore;

/// Every inventory of an environment in the cluster (the components phoenix has applied there).
pub async fn inventories(client: &::kube::Client, env: &str) -> Result<Vec<Inventory>, KubeError> {
    inventory::list(client, env).await
}
