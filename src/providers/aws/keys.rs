//! The environment's SSH key pair: a public key imported from a secret reference, or a key pair
//! phoenix generates once and keeps under `$PHOENIX_HOME/keys/<env>/<name>` (0600). The private
//! key is never in Git, never printed and never logged.

use std::fs;
use std::io::Write;
use std::path::Path;

use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, LineEnding, PrivateKey, PublicKey};

use super::desired::KeyMaterial;
use super::error::AwsError;
use crate::env::model::{Cloud, SecretSource};

/// The public key for the model's key pair, or `None` when the model has none.
///
/// With `publicKey: env:NAME` or `file:NAME` (under `secrets_dir`), that OpenSSH public key is used. Without one,
/// phoenix generates an ed25519 key pair on first use, stores the private key 0600 at
/// `<phoenix_home>/keys/<env_name>/<name>` (and the public key next to it as `.pub`), and reuses
/// it afterwards. `env_name` is the effective name, so a drill copy gets its own key.
pub fn key_material(
    cloud: &Cloud,
    env_name: &str,
    phoenix_home: &Path,
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
    let public = match &kp.public_key {
        Some(source) => {
            let text = match source {
                SecretSource::Env(name) => std::env::var(name).map_err(|_| {
                    err(
                        format!(
                            "the environment variable {name} (publicKey env:{name}) is not set"
                        ),
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
            return Ok(Some(KeyMaterial {
                public_key: key
                    .to_openssh()
                    .map_err(|e| err("cannot encode the public key".into(), Some(Box::new(e))))?,
                private_key_path: None,
            }));
        }
        None => generated(&kp.name, env_name, phoenix_home).map_err(|(m, s)| err(m, s))?,
    };
    Ok(Some(public))
}

type KeyError = (String, Option<Box<dyn std::error::Error + Send + Sync>>);

fn generated(name: &str, env_name: &str, home: &Path) -> Result<KeyMaterial, KeyError> {
    let dir = home.join("keys").join(env_name);
    let path = dir.join(name);
    let private = if path.exists() {
        let text = fs::read_to_string(&path).map_err(|e| {
            (
                format!("cannot read the private key {}", path.display()),
                Some(Box::new(e) as _),
            )
        })?;
        PrivateKey::from_openssh(text).map_err(|e| {
            (
                format!("{} is not an OpenSSH private key", path.display()),
                Some(Box::new(e) as _),
            )
        })?
    } else {
        let key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
            .map_err(|e| ("cannot generate a key".to_string(), Some(Box::new(e) as _)))?;
        let text = key
            .to_openssh(LineEnding::LF)
            .map_err(|e| ("cannot encode the key".to_string(), Some(Box::new(e) as _)))?;
        write_private(&dir, &path, text.as_bytes()).map_err(|e| {
            (
                format!("cannot store the private key at {}", path.display()),
                Some(Box::new(e) as _),
            )
        })?;
        key
    };
    let public = private.public_key().to_openssh().map_err(|e| {
        (
            "cannot encode the public key".to_string(),
            Some(Box::new(e) as _),
        )
    })?;
    let pub_path = dir.join(format!("{name}.pub"));
    if !pub_path.exists() {
        fs::write(&pub_path, format!("{public}\n")).map_err(|e| {
            (
                format!("cannot write {}", pub_path.display()),
                Some(Box::new(e) as _),
            )
        })?;
    }
    Ok(KeyMaterial {
        public_key: public,
        private_key_path: Some(path),
    })
}

/// Writes the key to a 0600 temporary file in `dir` (0700) and renames it into place, so a crash
/// never leaves a partial or world-readable key.
fn write_private(dir: &Path, path: &Path, data: &[u8]) -> std::io::Result<()> {
    create_private_dir(dir)?;
    let tmp = dir.join(format!(".tmp-key-{}", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(data)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    {
        fs::create_dir_all(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::model::{KeyPair, Network};

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

    #[test]
    fn generates_once_and_stores_private_key_0600() {
        let home = tempfile::tempdir().expect("tempdir");
        let first = key_material(&cloud(None), "demo", home.path(), home.path())
            .expect("generate")
            .expect("some");
        assert!(first.public_key.starts_with("ssh-ed25519 "));
        let path = home.path().join("keys/demo/admin");
        assert_eq!(first.private_key_path.as_deref(), Some(path.as_path()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let second = key_material(&cloud(None), "demo", home.path(), home.path())
            .expect("reuse")
            .expect("some");
        assert_eq!(first.public_key, second.public_key);
        let other = key_material(&cloud(None), "demo-drill-1", home.path(), home.path())
            .expect("drill")
            .expect("some");
        assert_ne!(first.public_key, other.public_key);
    }

    #[test]
    fn imports_from_file_and_rejects_garbage() {
        let home = tempfile::tempdir().expect("tempdir");
        let generated = key_material(&cloud(None), "demo", home.path(), home.path())
            .expect("generate")
            .expect("some");
        let src = SecretSource::File("keys/demo/admin.pub".into());
        let imported = key_material(&cloud(Some(src)), "x", home.path(), home.path())
            .expect("import")
            .expect("some");
        assert_eq!(imported.public_key, generated.public_key);
        assert!(imported.private_key_path.is_none());
        let bad = home.path().join("bad.pub");
        fs::write(&bad, "not a key").expect("write");
        let err = key_material(
            &cloud(Some(SecretSource::File("bad.pub".into()))),
            "x",
            home.path(),
            home.path(),
        )
        .expect_err("garbage");
        assert!(
            err.to_string().contains("is not an OpenSSH public key"),
            "{err}"
        );
    }
}
