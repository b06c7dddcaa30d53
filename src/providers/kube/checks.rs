//! App checks: an HTTP(S) GET that must answer with an expected status, each request bounded by
//! the check's own timeout. https is verified with rustls (ring) against the system's roots, or
//! against the check's own CA bundle from the commit.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::http::{ConnectorError, Roots};

/// One HTTP check of a component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCheck {
    pub url: String,
    pub expect: u16,
    /// Bound on one request (connect, headers and body).
    pub timeout: Duration,
    /// PEM CA bundle trusted instead of the system's roots (https only).
    pub ca_pem: Option<String>,
}

impl From<&crate::env::model::Check> for HttpCheck {
    /// Without the CA bundle: [`HttpCheck::ca_pem`] is read from the commit by the caller.
    fn from(c: &crate::env::model::Check) -> Self {
        HttpCheck {
            url: c.url.clone(),
            expect: c.expect,
            timeout: c.timeout,
            ca_pem: None,
        }
    }
}

/// Why one GET did not pass.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("invalid check url {url:?}: expected http://HOST[:PORT]/PATH")]
    InvalidUrl { url: String },
    #[error("cannot set up TLS for {url}: {message}")]
    Tls { url: String, message: String },
    #[error("no answer within {}", crate::report::format_duration(*.0))]
    Timeout(Duration),
    #[error("request failed")]
    Request(#[source] hyper_util::client::legacy::Error),
}

/// Performs one GET and returns the status code.
pub async fn get_status(check: &HttpCheck) -> Result<u16, CheckError> {
    let uri: hyper::Uri = check.url.parse().map_err(|_| CheckError::InvalidUrl {
        url: check.url.clone(),
    })?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(CheckError::InvalidUrl {
                url: check.url.clone(),
            })
        }
    };
    if uri.host().is_none() {
        return Err(CheckError::InvalidUrl {
            url: check.url.clone(),
        });
    }
    let tls = |message: String| CheckError::Tls {
        url: check.url.clone(),
        message,
    };
    let roots = match (&check.ca_pem, https) {
        (Some(pem), true) => {
            let mut roots = rustls::RootCertStore::empty();
            let mut reader = std::io::Cursor::new(pem.as_bytes());
            for cert in rustls_pemfile_certs(&mut reader).map_err(tls)? {
                roots.add(cert).map_err(|e| {
                    tls(format!("the CA bundle holds an unusable certificate: {e}"))
                })?;
            }
            Roots::Store(roots)
        }
        (None, true) => Roots::Native,
        (_, false) => Roots::Store(rustls::RootCertStore::empty()),
    };
    let connector = crate::http::connector(roots).map_err(|e| match e {
        ConnectorError::Roots(e) => tls(format!("no system root certificates: {e}")),
        ConnectorError::Tls(e) => tls(e.to_string()),
    })?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let request = async {
        let resp = client.get(uri).await.map_err(CheckError::Request)?;
        let status = resp.status().as_u16();
        // Drain the body so the connection closes cleanly; its content is not judged.
        let _ = resp.into_body().collect().await;
        Ok(status)
    };
    match tokio::time::timeout(check.timeout, request).await {
        Ok(result) => result,
        Err(_) => Err(CheckError::Timeout(check.timeout)),
    }
}

/// The certificates of a PEM bundle (at least one).
fn rustls_pemfile_certs(
    reader: &mut dyn std::io::BufRead,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut text = Vec::new();
    reader
        .read_to_end(&mut text)
        .map_err(|e| format!("reading the CA bundle: {e}"))?;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(&text)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the CA bundle is not PEM: {e:?}"))?;
    if certs.is_empty() {
        return Err("the CA bundle holds no certificate".into());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A CA and an https server on 127.0.0.1 with a certificate it signed; every request gets
    /// `204`. Returns (port, CA PEM).
    async fn tls_server() -> (u16, String) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 4096];
                    let _ = tls.read(&mut buf).await;
                    let _ = tls
                        .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        (port, ca_cert.pem())
    }

    fn check(port: u16, ca_pem: Option<String>) -> HttpCheck {
        HttpCheck {
            url: format!("https://127.0.0.1:{port}/healthz"),
            expect: 204,
            timeout: Duration::from_secs(10),
            ca_pem,
        }
    }

    /// Issue 14, item 8: https checks work, verified against the check's CA; a server whose
    /// certificate chains to no trusted root is not accepted (system roots or another CA).
    #[tokio::test]
    async fn https_checks_verify_the_server_against_the_ca_or_the_system_roots() {
        let (port, ca) = tls_server().await;
        assert_eq!(get_status(&check(port, Some(ca))).await.unwrap(), 204);

        let err = get_status(&check(port, None)).await.unwrap_err();
        assert!(matches!(err, CheckError::Request(_)), "{err:?}");
        let (_, other_ca) = tls_server().await;
        let err = get_status(&check(port, Some(other_ca))).await.unwrap_err();
        assert!(matches!(err, CheckError::Request(_)), "{err:?}");

        let err = get_status(&check(port, Some("not a pem".into())))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("CA bundle"), "{err}");
    }
}
