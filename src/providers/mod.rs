//! Providers: the code that observes and changes real systems for each layer of the graph.

pub mod aws;
pub mod cluster;
pub mod dns;
pub mod kube;

/// Lower-case hex SHA-256 of `data` (content fingerprints: user-data, keys, certificates, seals).
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
