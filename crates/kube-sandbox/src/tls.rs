//! TLS material (a generated CA, serving and client certificates) and request authentication.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::sync::Arc;
use tokio_rustls::rustls;

/// Generated certificates, PEM-encoded.
#[derive(Clone)]
pub struct TlsMaterial {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    server_cert_der: Vec<u8>,
    server_key_der: Vec<u8>,
    ca_der: Vec<u8>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("error generating certificates")]
    Generate(#[source] rcgen::Error),
    #[error("error configuring TLS")]
    Config(#[source] rustls::Error),
    #[error("error configuring client certificate verification")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

impl TlsMaterial {
    pub fn generate() -> Result<TlsMaterial, TlsError> {
        let g = TlsError::Generate;
        let ca_key = KeyPair::generate().map_err(g)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(g)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "kube-sandbox-ca");
        ca_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).map_err(g)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().map_err(g)?;
        let mut sp = CertificateParams::new(vec!["localhost".to_string()]).map_err(g)?;
        sp.subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::V4(
                std::net::Ipv4Addr::LOCALHOST,
            )));
        sp.distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        sp.use_authority_key_identifier_extension = true;
        sp.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = sp.signed_by(&server_key, &issuer).map_err(g)?;

        let client_key = KeyPair::generate().map_err(g)?;
        let mut cp = CertificateParams::new(Vec::<String>::new()).map_err(g)?;
        cp.distinguished_name
            .push(DnType::CommonName, "sandbox-admin");
        cp.distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        cp.use_authority_key_identifier_extension = true;
        cp.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = cp.signed_by(&client_key, &issuer).map_err(g)?;

        Ok(TlsMaterial {
            ca_pem: ca_cert.pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
            server_cert_der: server_cert.der().to_vec(),
            server_key_der: server_key.serialize_der(),
            ca_der: ca_cert.der().to_vec(),
        })
    }

    /// A rustls server config that accepts, but does not require, client certificates from the CA.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.ca_der.clone()))
            .map_err(TlsError::Config)?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(TlsError::Verifier)?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from(self.server_cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key_der.clone())),
            )
            .map_err(TlsError::Config)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// How requests authenticate when auth is on: a bearer token, or (over TLS) a client certificate.
#[derive(Debug, Clone)]
pub struct Auth {
    pub token: Option<String>,
}

impl Auth {
    pub fn token_ok(&self, presented: Option<&str>) -> bool {
        match (&self.token, presented) {
            (Some(t), Some(p)) => constant_time_eq(t.as_bytes(), p.as_bytes()),
            _ => false,
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
