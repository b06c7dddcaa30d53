//! How the provider reaches a cluster: a [`Connector`] hands out a client when a node starts, so
//! a graph can be built before the cluster it will talk to exists.

use crate::engine::{BoxFuture, NodeError};

/// The source of clients for the environment's cluster.
///
/// The provider adds no timeouts of its own to API calls: every request is bounded by the
/// connect/read/write timeouts of the [`kube::Config`] the client was built from, and every wait
/// by the engine's node deadline. A connector must therefore return clients with those timeouts
/// set (kube's `Config::new` leaves the read timeout unset).
pub trait Connector: Send + Sync + 'static {
    /// The client for the environment's cluster; called when a node starts (the cluster may not
    /// exist when the graph is built).
    fn client(&self) -> BoxFuture<'static, Result<::kube::Client, NodeError>>;
}

/// A connector for a cluster that already exists: always the same client.
#[derive(Clone)]
pub struct FixedClient(::kube::Client);

impl FixedClient {
    pub fn new(client: ::kube::Client) -> Self {
        FixedClient(client)
    }
}

impl Connector for FixedClient {
    fn client(&self) -> BoxFuture<'static, Result<::kube::Client, NodeError>> {
        let client = self.0.clone();
        Box::pin(async move { Ok(client) })
    }
}
