//! The environment's SSH key pair: a public key imported from a secret reference, or an ed25519
//! key pair derived from the env's cluster secret (`spec.cluster.secret`), so that every machine
//! with the commit and the secret computes the same public key and nothing is kept in
//! `$PHOENIX_HOME`. The private key is never in Git, never printed and never logged; it is
//! written only where the operator asks (`phoenix ssh-key ENV --out PATH`).

use std::path::Path;

use ssh_key::private::{Ed25519Keypair, KeypairData};
use ssh_key::{LineEnding, PrivateKey, PublicKey};

use super::desired::KeyMaterial;
use super::error::AwsError;
use crate::env::model::{Cloud, SecretSource};
use crate::providers::cluster::{derive_bytes, Secret};

/// The public key for the model's key pair, or `None` when the model has none.
///
/// With `publicKey: env:NAME` or `file:NAME` (under `secrets_dir`), that OpenSSH public key is
/// used. Without one, the key pair is derived from `cluster_secret` (the env's
/// `spec.cluster.secret`) and `env_name` (the effective name, so a drill copy gets its own key):
/// the same on every machine, written nowhere. Without a publicKey and without a cluster secret
/// there is nothing to derive it from, and the error says to declare a publicKey (`validate`
/// refuses that env already).
pub fn key_material(
    cloud: &Cloud,
    env_name: &str,
    cluster_secret: Option<&Secret>,
    secrets_dir: &Path,
) -> Result<Option<KeyMaterial>, AwsError> {
    let Some(kp) = &cloud.key_pair else {
        return Ok(None);
    };
    let err =
        |message: String, source: Option<Box<dyn std::error::Error + Send + Sync>>| AwsError::Key {
            name: kp.name.clone(),
            message,
            source,
        };
    let Some(source) = &kp.public_key else {
        let Some(secret) = cluster_secret else {
            return Err(err(
                "spec.cloud.keyPair has no publicKey, and the environment has no cluster secret (spec.cluster.secret) to derive the key pair from; set spec.cloud.keyPair.publicKey to env:NAME or file:NAME holding an OpenSSH public key".into(),
                None,
            ));
        };
        let private = derived_key(env_name, &kp.name, secret)?;
        let public_key = private
            .public_key()
            .to_openssh()
            .map_err(|e| err("cannot encode the public key".into(), Some(Box::new(e))))?;
        return Ok(Some(KeyMaterial { public_key }));
    };
    let text = match source {
        SecretSource::Env(name) => std::env::var(name).map_err(|_| {
            err(
                format!("the environment variable {name} (publicKey env:{name}) is not set"),
                None,
            )
        })?,
        SecretSource::File(_) => crate::render::resolve_secret(source, secrets_dir)
            .map_err(|why| err(format!("cannot read publicKey {source}: {why}"), None))?,
    };
    let key = PublicKey::from_openssh(text.trim()).map_err(|e| {
        err(
            format!("publicKey {source} is not an OpenSSH public key"),
            Some(Box::new(e)),
        )
    })?;
    Ok(Some(KeyMaterial {
        public_key: key
            .to_openssh()
            .map_err(|e| err("cannot encode the public key".into(), Some(Box::new(e))))?,
    }))
}

/// The private key (OpenSSH format) of the key pair `key_name` derived for `env_name` from the
/// cluster secret: what `phoenix ssh-key` writes for the operator. Never print or log it.
pub fn derived_private_key(
    env_name: &str,
    key_name: &str,
    cluster_secret: &Secret,
) -> Result<Secret, AwsError> {
    let key = derived_key(env_name, key_name, cluster_secret)?;
    let text = key.to_openssh(LineEnding::LF).map_err(|e| AwsError::Key {
        name: key_name.to_string(),
        message: "cannot encode the private key".into(),
        source: Some(Box::new(e)),
    })?;
    Ok(Secret::new(text.as_str()))
}

/// The ed25519 key whose seed is derived from the cluster secret with the label
/// `ssh-key/<key name>` (distinct from every cluster credential's label). The comment is fixed,
/// so the public key line (and its SHA-256 tag) is the same bytes on every machine.
fn derived_key(env_name: &str, key_name: &str, secret: &Secret) -> Result<PrivateKey, AwsError> {
    let err =
        |message: String, source: Option<Box<dyn std::error::Error + Send + Sync>>| AwsError::Key {
            name: key_name.to_string(),
            message,
            source,
        };
    let seed = derive_bytes(env_name, secret, &format!("ssh-key/{key_name}")).map_err(|e| {
        err(
            "cannot derive the key pair from the cluster secret".into(),
            Some(Box::new(e)),
        )
    })?;
    let pair = Ed25519Keypair::from_seed(&seed);
    PrivateKey::new(
        KeypairData::Ed25519(pair),
        format!("phoenix-{env_name}-{key_name}"),
    )
    .map_err(|e| err("cannot build the key".into(), Some(Box::new(e))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::model::{KeyPair, Network};
    use std::fs;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

    fn cloud(public_key: Option<SecretSource>) -> Cloud {
        Cloud {
            provider: "aws".into(),
            region: "us-east-1".into(),
            network: Network {
                cidr: "10.0.0.0/16".parse().expect("cidr"),
                subnets: vec![],
            },
            security_groups: vec![],
            key_pair: Some(KeyPair {
                name: "admin".into(),
                public_key,
            }),
            instances: vec![],
            allow_stop_modify_start: false,
        }
    }

    fn derive(env: &str, secret: &str) -> String {
        key_material(
            &cloud(None),
            env,
            Some(&Secret::new(secret)),
            Path::new("/nonexistent"),
        )
        .expect("derive")
        .expect("some")
        .public_key
    }

    /// Issue 14: the key pair is a function of the secret and the env name, nothing else, so a
    /// second machine computes the same public key (and plans no key pair change).
    #[test]
    fn the_derived_key_is_the_same_for_the_same_secret_and_env_and_differs_otherwise() {
        let first = derive("demo", SECRET);
        assert!(first.starts_with("ssh-ed25519 "), "{first}");
        assert!(first.ends_with(" phoenix-demo-admin"), "{first}");
        assert_eq!(first, derive("demo", SECRET));
        assert_ne!(first, derive("demo-drill-1", SECRET));
        assert_ne!(first, derive("demo", &format!("{SECRET}x")));
        // The private key the operator can ask for belongs to that public key.
        let private = derived_private_key("demo", "admin", &Secret::new(SECRET)).expect("private");
        let parsed = PrivateKey::from_openssh(private.expose()).expect("openssh private key");
        assert_eq!(
            parsed.public_key().to_openssh().expect("encode"),
            first,
            "the private key matches the derived public key"
        );
    }

    #[test]
    fn without_a_public_key_or_a_secret_the_error_names_the_field() {
        let err = key_material(&cloud(None), "demo", None, Path::new("/x"))
            .expect_err("nothing to derive from")
            .to_string();
        assert!(
            err.contains("spec.cloud.keyPair.publicKey") && err.contains("spec.cluster.secret"),
            "{err}"
        );
        let err = key_material(
            &cloud(None),
            "demo",
            Some(&Secret::new("short-secret")),
            Path::new("/x"),
        )
        .expect_err("weak secret");
        assert!(!crate::error::chain(&err).contains("short-secret"), "{err}");
    }

    #[test]
    fn imports_from_file_and_rejects_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let derived = derive("demo", SECRET);
        fs::write(dir.path().join("admin.pub"), format!("{derived}\n")).expect("write");
        let src = SecretSource::File("admin.pub".into());
        let imported = key_material(&cloud(Some(src)), "x", None, dir.path())
            .expect("import")
            .expect("some");
        assert_eq!(imported.public_key, derived);
        fs::write(dir.path().join("bad.pub"), "not a key").expect("write");
        let err = key_material(
            &cloud(Some(SecretSource::File("bad.pub".into()))),
            "x",
            None,
            dir.path(),
        )
        .expect_err("garbage");
        assert!(
            err.to_string().contains("is not an OpenSSH public key"),
            "{err}"
        );
    }
}
