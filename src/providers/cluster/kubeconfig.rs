//! The admin kubeconfig phoenix writes for a k3s cluster, 0600 at
//! `$PHOENIX_HOME/clusters/<env>/kubeconfig`: the endpoint, the server CA to verify it by, and
//! the admin client certificate and key.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{json, Value};

use super::credentials::{cluster_dir, create_private_dir, write_private, Credentials, ADMIN_USER};
use super::error::ClusterError;

/// `$PHOENIX_HOME/clusters/<env>/kubeconfig`.
pub fn kubeconfig_path(phoenix_home: &Path, env: &str) -> Result<PathBuf, ClusterError> {
    Ok(cluster_dir(phoenix_home, env)?.join("kubeconfig"))
}

/// The kubeconfig document (it holds the admin key: never print it). Cluster, user and context
/// are named after the env; it is the current context.
pub fn kubeconfig_value(creds: &Credentials, endpoint_url: &str) -> Value {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let name = creds.env();
    let mut cluster = json!({ "server": endpoint_url });
    // Over plain HTTP (the test control plane's router, a local tunnel) there is no certificate to verify.
    if endpoint_url.starts_with("https://") {
        cluster["certificate-authority-data"] = json!(b64(creds.server_ca_cert()));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{ "name": name, "cluster": cluster }],
        "users": [{
            "name": format!("{ADMIN_USER}@{name}"),
            "user": {
                "client-certificate-data": b64(creds.admin_cert()),
                "client-key-data": b64(creds.admin_key().expose()),
            },
        }],
        "contexts": [{
            "name": name,
            "context": { "cluster": name, "user": format!("{ADMIN_USER}@{name}") },
        }],
        "current-context": name,
    })
}

/// Writes the admin kubeconfig (0600, directory 0700) next to the credentials and returns its
/// path. Rewritten on every call, so a new endpoint or a renewed certificate takes effect.
pub fn write_kubeconfig(creds: &Credentials, endpoint_url: &str) -> Result<PathBuf, ClusterError> {
    create_private_dir(creds.dir())?;
    let path = creds.dir().join("kubeconfig");
    let text = crate::render::to_yaml(&kubeconfig_value(creds, endpoint_url));
    write_private(&path, text.as_bytes())?;
    Ok(path)
}
