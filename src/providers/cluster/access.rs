//! Reaching a cluster: a kubeconfig (phoenix's own for k3s, or an existing cluster's with a
//! context) turned into a `kube::Client` with explicit connect, read and write timeouts.

use std::path::PathBuf;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};

use super::error::ClusterError;
use super::kubeconfig::kubeconfig_path;
use crate::engine::{BoxFuture, NodeError};
use crate::env::model::Existing;

/// Timeouts of every request phoenix sends to a cluster. The library adds none of its own, so a
/// silent API server would otherwise hang a request forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientTimeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(30),
            write: Duration::from_secs(30),
        }
    }
}

/// Which kubeconfig (and context) reaches a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterAccess {
    pub kubeconfig: PathBuf,
    /// `None`: the kubeconfig's current context.
    pub context: Option<String>,
    pub timeouts: ClientTimeouts,
}

impl ClusterAccess {
    /// The admin kubeconfig phoenix writes for a k3s env (`$PHOENIX_HOME/clusters/<env>/kubeconfig`).
    pub fn k3s(phoenix_home: &std::path::Path, env: &str) -> Result<ClusterAccess, ClusterError> {
        Ok(ClusterAccess {
            kubeconfig: kubeconfig_path(phoenix_home, env)?,
            context: None,
            timeouts: ClientTimeouts::default(),
        })
    }

    /// An existing cluster's kubeconfig (a local path; `~/` is the home directory) and context.
    pub fn existing(existing: &Existing) -> ClusterAccess {
        ClusterAccess {
            kubeconfig: expand_home(&existing.kubeconfig),
            context: existing.context.clone(),
            timeouts: ClientTimeouts::default(),
        }
    }

    pub fn with_timeouts(mut self, timeouts: ClientTimeouts) -> ClusterAccess {
        self.timeouts = timeouts;
        self
    }

    fn error(
        &self,
        message: String,
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    ) -> ClusterError {
        ClusterError::Kubeconfig {
            path: self.kubeconfig.clone(),
            context: self.context.clone(),
            message,
            source,
        }
    }
}

fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), dirs::home_dir()) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(path),
    }
}

/// rustls has both the ring and aws-lc-rs providers compiled in (kube-rs asks for ring, the AWS
/// SDK for aws-lc-rs), so it cannot pick one by itself and panics on the first TLS client
/// config. phoenix picks ring, the one kube-rs is built for, once per process; if something else
/// installed a provider first, that one stays.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The kube-rs configuration for `access`, timeouts applied.
pub async fn config_for(access: &ClusterAccess) -> Result<kube::Config, ClusterError> {
    install_crypto_provider();
    let kubeconfig = Kubeconfig::read_from(&access.kubeconfig)
        .map_err(|e| access.error("cannot be read as a kubeconfig".into(), Some(Box::new(e))))?;
    if let Some(context) = &access.context {
        if !kubeconfig.contexts.iter().any(|c| &c.name == context) {
            let names: Vec<&str> = kubeconfig
                .contexts
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            return Err(access.error(
                format!(
                    "has no context {context:?} (contexts: {})",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
                None,
            ));
        }
    }
    let options = KubeConfigOptions {
        context: access.context.clone(),
        cluster: None,
        user: None,
    };
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| access.error("cannot be used".into(), Some(Box::new(e))))?;
    config.connect_timeout = Some(access.timeouts.connect);
    config.read_timeout = Some(access.timeouts.read);
    config.write_timeout = Some(access.timeouts.write);
    Ok(config)
}

/// A client for the cluster `access` names, with its timeouts.
pub async fn client_for(access: &ClusterAccess) -> Result<kube::Client, ClusterError> {
    install_crypto_provider();
    let config = config_for(access).await?;
    kube::Client::try_from(config)
        .map_err(|e| access.error("cannot make a client from it".into(), Some(Box::new(e))))
}

/// Makes a client on demand, reading the kubeconfig only then (it may not exist yet when the
/// graph is built: the control-plane node writes it). The add-on and app layers call it.
#[derive(Clone, Debug)]
pub struct KubeconfigConnector {
    access: ClusterAccess,
}

impl KubeconfigConnector {
    pub fn new(access: ClusterAccess) -> Self {
        KubeconfigConnector { access }
    }

    pub fn access(&self) -> &ClusterAccess {
        &self.access
    }

    /// A client from the kubeconfig as it is now. A missing or unusable kubeconfig is a
    /// permanent error (retrying will not write it).
    pub fn client(&self) -> BoxFuture<'static, Result<kube::Client, NodeError>> {
        let access = self.access.clone();
        Box::pin(async move { client_for(&access).await.map_err(NodeError::from) })
    }
}

impl crate::providers::kube::Connector for KubeconfigConnector {
    fn client(&self) -> BoxFuture<'static, Result<kube::Client, NodeError>> {
        KubeconfigConnector::client(self)
    }
}
