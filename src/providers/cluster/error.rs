//! Errors of the control-plane layer: each names the file, endpoint or object involved and what
//! would be valid, and never contains key material or the join token.

use crate::error::chain;
use std::path::PathBuf;

use crate::engine::NodeError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The environment name cannot be used as a directory name under `$PHOENIX_HOME/clusters`.
    #[error("environment name {0:?} cannot name a credentials directory (use letters, digits, '-', '_' and '.', not starting with '.')")]
    EnvName(String),
    /// Reading, writing or securing a file under the state directory failed.
    #[error("{doing} {}", path.display())]
    Io {
        doing: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The cluster secret is too short to derive keys from.
    #[error("the cluster secret of {env} (spec.cluster.secret) has {len} characters; at least 32 are needed (e.g. `openssl rand -hex 32`)")]
    WeakSecret { env: String, len: usize },
    /// Deriving a key or encoding it failed.
    #[error("deriving the cluster credentials: {0}")]
    Derive(String),
    /// Certificate or key generation failed.
    #[error("generating {what}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    /// A value handed to the instances (version, address) would not be safe in user-data.
    #[error("{field} {value:?} is not valid: {expected}")]
    InvalidValue {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    /// `--cluster-endpoint` / `PHOENIX_CLUSTER_ENDPOINT` is not a usable URL.
    #[error("cluster endpoint {url:?} is not valid: {reason} (expected e.g. https://10.40.1.12:6443 or http://127.0.0.1:PORT/clusters/{{env}})")]
    Endpoint { url: String, reason: String },
    /// No live server instance to take the API address from.
    #[error("no API endpoint for env {env}: {reason}")]
    NoServer { env: String, reason: String },
    /// A kubeconfig (written by phoenix or named by `cluster.existing`) cannot be used.
    #[error("kubeconfig {}{}: {message}", path.display(), context.as_ref().map(|c| format!(" (context {c})")).unwrap_or_default())]
    Kubeconfig {
        path: PathBuf,
        context: Option<String>,
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The Kubernetes API answered with an error or not at all.
    #[error("{doing}")]
    Api {
        doing: String,
        #[source]
        source: kube::Error,
    },
}

impl ClusterError {
    pub(crate) fn io(
        doing: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> ClusterError {
        let path = path.into();
        move |source| ClusterError::Io {
            doing,
            path,
            source,
        }
    }

    /// Whether retrying the same attempt may help: only API and I/O trouble may pass.
    pub fn is_transient(&self) -> bool {
        matches!(self, ClusterError::Api { .. })
    }
}

impl From<ClusterError> for NodeError {
    fn from(err: ClusterError) -> Self {
        let transient = err.is_transient();
        let message = chain(&err);
        if transient {
            NodeError::transient(message)
        } else {
            NodeError::permanent(message)
        }
    }
}
