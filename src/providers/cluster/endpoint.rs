//! The API endpoint: `https://<server address>:6443` from the live server instance (its public
//! or private address, per `cluster.endpoint`), or an override (`--cluster-endpoint URL` /
//! `PHOENIX_CLUSTER_ENDPOINT`, `{env}` replaced by the effective env name) for a tunnel, a load
//! balancer or the test control plane's router.

use serde::Serialize;

use super::error::ClusterError;
use super::userdata::API_PORT;
use crate::env::model::{Cloud, EndpointKind, Role};
use crate::providers::aws::{LiveCloud, LiveResource, LiveState};

/// The environment variable the override is read from when `--cluster-endpoint` is absent.
pub const ENDPOINT_ENV: &str = "PHOENIX_CLUSTER_ENDPOINT";

/// Where the endpoint came from, for messages and reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "from", rename_all = "camelCase")]
pub enum EndpointOrigin {
    Override,
    Instance {
        resource: String,
        instance_id: String,
        address: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// Base URL of the API server, without a trailing slash; may carry a path
    /// (`http://127.0.0.1:PORT/clusters/demo`).
    pub url: String,
    pub origin: EndpointOrigin,
}

/// The override URL with `{env}` replaced, checked: http or https, a host, no query or fragment.
pub fn endpoint_override(template: &str, env: &str) -> Result<String, ClusterError> {
    let url = template.trim().replace("{env}", env);
    let bad = |reason: &str| ClusterError::Endpoint {
        url: template.to_string(),
        reason: reason.to_string(),
    };
    let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(bad("the scheme must be http or https")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("the URL has no host"));
    }
    if uri.query().is_some() || url.contains('#') {
        return Err(bad("a query or fragment is not allowed"));
    }
    if url.contains('{') || url.contains('}') {
        return Err(bad("the only placeholder is {env}"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// The host of an endpoint URL (for the server certificate's names).
pub fn endpoint_host(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let host = uri.host()?;
    Some(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    )
}

/// Resource id of the instance that serves the API: instance 0 of the first server group.
pub fn server_resource(cloud: &Cloud) -> Option<String> {
    cloud
        .instances
        .iter()
        .find(|g| g.role == Role::Server && g.count > 0)
        .map(|g| format!("instance/{}/0", g.name))
}

/// The live server instance (a running copy when there are duplicates).
pub fn server_instance<'a>(
    env: &str,
    cloud: &Cloud,
    live: &'a LiveCloud,
) -> Result<&'a LiveResource, ClusterError> {
    let no_server = |reason: String| ClusterError::NoServer {
        env: env.to_string(),
        reason,
    };
    let resource = server_resource(cloud)
        .ok_or_else(|| no_server("spec.cloud.instances has no group with role: server".into()))?;
    live.instance(&resource).ok_or_else(|| {
        no_server(format!(
            "{resource} does not exist in EC2 (has the cloud layer converged?)"
        ))
    })
}

fn instance_address(
    env: &str,
    server: &LiveResource,
    kind: &EndpointKind,
) -> Result<String, ClusterError> {
    let LiveState::Instance {
        public_ip,
        private_ip,
        ..
    } = &server.state
    else {
        return Err(ClusterError::NoServer {
            env: env.to_string(),
            reason: format!("{} is not an instance", server.resource),
        });
    };
    let (address, which) = match kind {
        EndpointKind::Public => (public_ip, "public"),
        EndpointKind::Private => (private_ip, "private"),
    };
    address.clone().ok_or_else(|| ClusterError::NoServer {
        env: env.to_string(),
        reason: format!(
            "{} ({}) has no {which} IP address; put the server group in a public subnet, set cluster.endpoint: {}, or pass --cluster-endpoint",
            server.resource,
            server.aws_id,
            if which == "public" { "private" } else { "public" },
        ),
    })
}

/// The server's private address: what agents join (`https://ADDRESS:6443`).
pub fn server_private_address(
    env: &str,
    cloud: &Cloud,
    live: &LiveCloud,
) -> Result<String, ClusterError> {
    instance_address(
        env,
        server_instance(env, cloud, live)?,
        &EndpointKind::Private,
    )
}

/// The endpoint: the override when given, else the live server's address.
pub fn resolve_endpoint(
    env: &str,
    override_url: Option<&str>,
    cloud: Option<&Cloud>,
    live: Option<&LiveCloud>,
    kind: &EndpointKind,
) -> Result<Endpoint, ClusterError> {
    if let Some(template) = override_url {
        return Ok(Endpoint {
            url: endpoint_override(template, env)?,
            origin: EndpointOrigin::Override,
        });
    }
    let (Some(cloud), Some(live)) = (cloud, live) else {
        return Err(ClusterError::NoServer {
            env: env.to_string(),
            reason: "the environment has no cloud instances and no --cluster-endpoint was given"
                .into(),
        });
    };
    let server = server_instance(env, cloud, live)?;
    let address = instance_address(env, server, kind)?;
    let host = if address.contains(':') {
        format!("[{address}]")
    } else {
        address.clone()
    };
    Ok(Endpoint {
        url: format!("https://{host}:{API_PORT}"),
        origin: EndpointOrigin::Instance {
            resource: server.resource.clone(),
            instance_id: server.aws_id.clone(),
            address,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_placeholder_and_checks() {
        assert_eq!(
            endpoint_override("http://127.0.0.1:8080/clusters/{env}/", "demo-drill-1").unwrap(),
            "http://127.0.0.1:8080/clusters/demo-drill-1"
        );
        assert_eq!(
            endpoint_override("https://api.example:443", "d").unwrap(),
            "https://api.example:443"
        );
        for bad in [
            "127.0.0.1:6443",
            "ftp://x",
            "http://",
            "https://x?y=1",
            "https://x/{name}",
            "not a url",
        ] {
            let err = endpoint_override(bad, "d").unwrap_err().to_string();
            assert!(err.contains("expected e.g."), "{bad}: {err}");
        }
        assert_eq!(
            endpoint_host("https://[fd00::1]:6443").as_deref(),
            Some("fd00::1")
        );
        assert_eq!(
            endpoint_host("http://127.0.0.1:9/clusters/x").as_deref(),
            Some("127.0.0.1")
        );
    }
}
