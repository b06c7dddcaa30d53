//! The one way phoenix builds an HTTP(S) connector (app checks, webhook alerts, chart downloads):
//! rustls with the ring provider, HTTP/1, and the roots the caller trusts.

use std::sync::Arc;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;

/// Which certificates a connector trusts.
pub enum Roots {
    /// The system's root certificates.
    Native,
    /// Exactly these (empty for a plain `http` URL, which needs none).
    Store(rustls::RootCertStore),
}

/// Why a connector could not be built.
#[derive(Debug)]
pub enum ConnectorError {
    /// The system's root certificates could not be loaded.
    Roots(std::io::Error),
    /// rustls refused the configuration.
    Tls(rustls::Error),
}

/// An `https_or_http` connector trusting `roots`.
pub fn connector(roots: Roots) -> Result<HttpsConnector<HttpConnector>, ConnectorError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = HttpsConnectorBuilder::new();
    let builder = match roots {
        Roots::Native => builder
            .with_provider_and_native_roots(provider)
            .map_err(ConnectorError::Roots)?,
        Roots::Store(store) => builder.with_tls_config(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(ConnectorError::Tls)?
                .with_root_certificates(store)
                .with_no_client_auth(),
        ),
    };
    Ok(builder.https_or_http().enable_http1().build())
}
