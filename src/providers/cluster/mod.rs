//! The control-plane layer: the cluster's credentials, the `cluster` value for the k3s
//! cloud-init templates, the API endpoint and admin kubeconfig, clients with explicit timeouts,
//! the `cluster/control-plane` gate and cluster drift. See docs/cluster.md.

mod access;
mod credentials;
mod endpoint;
mod error;
mod gate;
mod kubeconfig;
mod observe;
mod userdata;
mod volumes;

pub use access::{
    client_for, config_for, install_crypto_provider, ClientTimeouts, ClusterAccess,
    KubeconfigConnector,
};
pub use credentials::{
    cluster_dir, derive_bytes, Credentials, Secret, ADMIN_GROUP, ADMIN_USER, MIN_SECRET_LEN,
};
pub use endpoint::{
    endpoint_host, endpoint_override, resolve_endpoint, server_instance, server_private_address,
    server_resource, Endpoint, EndpointOrigin, ENDPOINT_ENV,
};
pub use error::ClusterError;
pub use gate::{
    check_target, control_plane_node, control_plane_spec, deployment_unavailable,
    evaluate_deployments, evaluate_nodes, expected_nodes, ExpectedNode, GateOptions, GateTarget,
    NodeExpectation, NodeReport, ObservedNode, CONTROL_PLANE_NODE,
};
pub use kubeconfig::{kubeconfig_path, kubeconfig_value, write_kubeconfig};
pub use observe::{
    compare_nodes, observe_cluster, status_of, ClusterDrift, ClusterStatus, ExpectedCluster,
};
pub use userdata::{
    agent_context, check_address, check_version, display_context, instance_context, server_context,
    with_disabled, API_PORT,
};
pub use volumes::{
    csi_volume_of, persistent_volumes, EBS_CSI_DRIVER, NO_STORAGE_CLASS, VOLUMES_COMPONENT,
    VOLUME_HANDLE_PENDING,
};
