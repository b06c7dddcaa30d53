//! The `cluster` value handed to the k3s cloud-init templates (`templates/cloud-init/`): what a
//! server or an agent needs to boot into the cluster, and nothing more. Every value is checked
//! here so that a template can place it in YAML and shell without quoting surprises.

use serde_json::{json, Value};

use super::credentials::Credentials;
use super::error::ClusterError;
use crate::env::model::{Cluster, Environment, Role};
use crate::render::REDACTED;

/// The port the k3s API server (and the agents' join endpoint) listens on.
pub const API_PORT: u16 = 6443;

/// The `cluster` value for a server instance: the k3s version, the server token, the agent
/// token's secret (the server accepts agents with it), the two CAs k3s must be given
/// (certificates and keys: it signs its own serving and component certificates with them) and
/// extra names for its serving certificate.
///
/// `tls_sans` are names or addresses clients use besides the instance's own addresses (which
/// the template adds at boot): `cluster.tlsSans` of the env, never a run-time setting.
pub fn server_context(
    creds: &Credentials,
    version: &str,
    tls_sans: &[String],
) -> Result<Value, ClusterError> {
    check_version(version)?;
    for san in tls_sans {
        check_address("tls-san", san)?;
    }
    Ok(json!({
        "role": "server",
        "version": version,
        "port": API_PORT,
        "token": creds.server_token().expose(),
        "agent_token": creds.agent_secret().expose(),
        "server_ca_cert": creds.server_ca_cert(),
        "server_ca_key": creds.server_ca_key().expose(),
        "client_ca_cert": creds.client_ca_cert(),
        "client_ca_key": creds.client_ca_key().expose(),
        "tls_sans": tls_sans,
        "disable": [],
    }))
}

/// [`server_context`] with the k3s packaged components the env disables (`cluster.disable`).
pub fn with_disabled(mut value: Value, disable: &[String]) -> Value {
    value["disable"] = json!(disable);
    value
}

/// The `cluster` value for an agent: the k3s version, the server's address (its private
/// address, reachable inside the VPC) and the agent token in the secure format that pins the
/// server CA. No key material and not the server token: an agent gets its kubelet certificate
/// from the server after joining, and cannot join as a server.
pub fn agent_context(
    creds: &Credentials,
    version: &str,
    server_address: &str,
) -> Result<Value, ClusterError> {
    check_version(version)?;
    check_address("server address", server_address)?;
    Ok(json!({
        "role": "agent",
        "version": version,
        "port": API_PORT,
        "server": server_address,
        "server_url": format!("https://{}:{API_PORT}", bracket(server_address)),
        "token": creds.agent_token().expose(),
    }))
}

/// The `cluster` value for an instance of `role` (`None` for instances outside the cluster).
pub fn instance_context(
    creds: &Credentials,
    version: &str,
    role: &Role,
    server_address: Option<&str>,
    tls_sans: &[String],
) -> Result<Option<Value>, ClusterError> {
    match role {
        Role::Server => server_context(creds, version, tls_sans).map(Some),
        Role::Agent => {
            let address = server_address.ok_or_else(|| ClusterError::InvalidValue {
                field: "server address",
                value: String::new(),
                expected: "the server's private address, known once the server instance runs",
            })?;
            agent_context(creds, version, address).map(Some)
        }
        Role::None => Ok(None),
    }
}

/// A `cluster` value with every field of both roles and placeholders instead of secrets, for
/// `phoenix validate` and `phoenix render` (nothing secret is read or printed).
pub fn display_context(env: &Environment, role: &Role) -> Value {
    let version = match &env.cluster {
        Some(Cluster::K3s(k)) => k.version.clone(),
        _ => String::new(),
    };
    let role = match role {
        Role::Server => "server",
        Role::Agent => "agent",
        Role::None => "none",
    };
    json!({
        "role": role,
        "version": version,
        "port": API_PORT,
        "token": REDACTED,
        "agent_token": REDACTED,
        "server": "SERVER-PRIVATE-ADDRESS",
        "server_url": format!("https://SERVER-PRIVATE-ADDRESS:{API_PORT}"),
        "server_ca_cert": "SERVER-CA-CERTIFICATE",
        "server_ca_key": REDACTED,
        "client_ca_cert": "CLIENT-CA-CERTIFICATE",
        "client_ca_key": REDACTED,
        "tls_sans": match &env.cluster {
            Some(Cluster::K3s(k)) => k.tls_sans.clone(),
            _ => Vec::new(),
        },
        "disable": match &env.cluster {
            Some(Cluster::K3s(k)) => k.disable.clone(),
            _ => Vec::new(),
        },
    })
}

/// k3s release names: `v1.31.4+k3s1`, the `+k3sN` suffix included (the install script fails on
/// a bare `v1.31.4`, and the nodes would never report it).
pub fn check_version(version: &str) -> Result<(), ClusterError> {
    let invalid = || ClusterError::InvalidValue {
        field: "cluster.version",
        value: version.to_string(),
        expected: "a k3s release such as v1.31.4+k3s1",
    };
    let rest = version.strip_prefix('v').ok_or_else(invalid)?;
    let (numbers, suffix) = rest.split_once('+').ok_or_else(invalid)?;
    let parts: Vec<&str> = numbers.split('.').collect();
    let numeric = |s: &str| !s.is_empty() && s.len() <= 5 && s.chars().all(|c| c.is_ascii_digit());
    if parts.len() != 3 || !parts.iter().all(|p| numeric(p)) {
        return Err(invalid());
    }
    if !suffix.strip_prefix("k3s").is_some_and(numeric) {
        return Err(invalid());
    }
    Ok(())
}

/// An IPv4/IPv6 address or a DNS name: safe in YAML and shell without quoting.
pub fn check_address(field: &'static str, value: &str) -> Result<(), ClusterError> {
    if value.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if !value.is_empty() && value.len() <= 253 && value.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(ClusterError::InvalidValue {
            field,
            value: value.to_string(),
            expected: "an IP address or a DNS name",
        })
    }
}

fn bracket(address: &str) -> String {
    if address.contains(':') {
        format!("[{address}]")
    } else {
        address.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        for ok in ["v1.31.4+k3s1", "v1.32.10+k3s12"] {
            assert!(check_version(ok).is_ok(), "{ok}");
        }
        for bad in [
            "1.31.4",
            "v1.30.0",
            "v1.31",
            "v1.31.4+rke2r1",
            "v1.31.4+k3s",
            "v1.31.4;rm -rf /",
            "v1.31.4+k3s1 x",
            "",
        ] {
            assert!(check_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses() {
        for ok in ["10.40.1.12", "fd00::1", "api.demo.example", "localhost"] {
            assert!(check_address("a", ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "$(id)", "x;y", "-a.b", "a..b", "http://x"] {
            assert!(check_address("a", bad).is_err(), "{bad}");
        }
        assert_eq!(bracket("fd00::1"), "[fd00::1]");
    }
}
