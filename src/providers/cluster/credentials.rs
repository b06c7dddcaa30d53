//! The cluster's credentials, made locally with rcgen: a server CA (the API server's serving
//! certificates chain to it, so phoenix and the agents can verify the server), a client CA (it
//! signs the admin certificate phoenix authenticates with), an admin client certificate in
//! `system:masters`, and a join token. Kept under `$PHOENIX_HOME/clusters/<env>/` (directory
//! 0700, files 0600), created once and reused; [`Credentials::rotate`] replaces them.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::providers::sha256_hex;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use serde::Serialize;
use time::{Duration as TimeDuration, OffsetDateTime};

use super::error::ClusterError;

/// The organisation Kubernetes' default RBAC binds to cluster-admin.
pub const ADMIN_GROUP: &str = "system:masters";
/// Common name of the admin client certificate (the user name the API server sees).
pub const ADMIN_USER: &str = "phoenix-admin";

const SERVER_CA_CERT: &str = "server-ca.crt";
const SERVER_CA_KEY: &str = "server-ca.key";
const CLIENT_CA_CERT: &str = "client-ca.crt";
const CLIENT_CA_KEY: &str = "client-ca.key";
const ADMIN_CERT: &str = "admin.crt";
const ADMIN_KEY: &str = "admin.key";
const ADMIN_NOT_AFTER: &str = "admin.not-after";
const TOKEN: &str = "token";
const FILES: [&str; 8] = [
    SERVER_CA_CERT,
    SERVER_CA_KEY,
    CLIENT_CA_CERT,
    CLIENT_CA_KEY,
    ADMIN_CERT,
    ADMIN_KEY,
    ADMIN_NOT_AFTER,
    TOKEN,
];

/// CAs outlive many rebuilds; rotating them means replacing the server (see the runbook).
const CA_VALIDITY_DAYS: i64 = 3650;
/// The admin certificate is short-lived compared with the CAs, because Kubernetes cannot revoke
/// a client certificate: a stolen copy works until it expires or the client CA is rotated.
const ADMIN_VALIDITY_DAYS: i64 = 365;
/// [`Credentials::ensure`] re-issues the admin certificate when less than this remains.
const ADMIN_RENEW_DAYS: i64 = 30;

/// A secret string: usable by the code that needs it, invisible to `Debug`, `Display` and serde.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value; never print, log or serialize it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(crate::render::REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(crate::render::REDACTED)
    }
}

/// What [`Credentials::ensure`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provenance {
    /// Nothing was stored: a new set was generated.
    Created,
    /// The stored set was used as is.
    Reused,
    /// The stored set was used with a newly issued admin certificate (the old one was expiring).
    Renewed,
}

/// One cluster's credentials. Certificates are public; keys and the token are [`Secret`]s.
/// `Debug` and `Serialize` show only certificate fingerprints and the directory.
#[derive(Clone)]
pub struct Credentials {
    dir: PathBuf,
    env: String,
    server_ca_cert: String,
    server_ca_key: Secret,
    client_ca_cert: String,
    client_ca_key: Secret,
    admin_cert: String,
    admin_key: Secret,
    admin_not_after: i64,
    token: Secret,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("dir", &self.dir)
            .field("env", &self.env)
            .field("server_ca_sha256", &self.server_ca_sha256())
            .field(
                "client_ca_sha256",
                &sha256_hex(self.client_ca_cert.as_bytes()),
            )
            .field("admin_cert_sha256", &sha256_hex(self.admin_cert.as_bytes()))
            .field("keys", &crate::render::REDACTED)
            .field("token", &crate::render::REDACTED)
            .finish()
    }
}

impl Serialize for Credentials {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Credentials", 5)?;
        st.serialize_field("dir", &self.dir)?;
        st.serialize_field("env", &self.env)?;
        st.serialize_field("serverCaSha256", &self.server_ca_sha256())?;
        st.serialize_field(
            "clientCaSha256",
            &sha256_hex(self.client_ca_cert.as_bytes()),
        )?;
        st.serialize_field("adminCertNotAfter", &self.admin_not_after)?;
        st.end()
    }
}

/// `$PHOENIX_HOME/clusters/<env>`: the cluster's credentials and kubeconfig.
pub fn cluster_dir(phoenix_home: &Path, env: &str) -> Result<PathBuf, ClusterError> {
    let ok = !env.is_empty()
        && !env.starts_with('.')
        && env
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(ClusterError::EnvName(env.to_string()));
    }
    Ok(phoenix_home.join("clusters").join(env))
}

impl Credentials {
    /// The stored credentials of `env`, or a new set when none are stored (written atomically:
    /// a crash leaves either nothing or a complete set). Re-issues the admin certificate when it
    /// expires within 30 days. `env` is the effective name (a drill copy gets its own).
    pub fn ensure(
        phoenix_home: &Path,
        env: &str,
    ) -> Result<(Credentials, Provenance), ClusterError> {
        let dir = cluster_dir(phoenix_home, env)?;
        if let Some(creds) = Credentials::load_dir(&dir, env)? {
            return creds.renew_if_expiring();
        }
        match Credentials::create(&dir, env) {
            Ok(creds) => Ok((creds, Provenance::Created)),
            // Another phoenix process created them between the load and the rename: use theirs.
            Err(CreateError::Exists) => match Credentials::load_dir(&dir, env)? {
                Some(creds) => creds.renew_if_expiring(),
                None => Err(ClusterError::Incomplete {
                    dir,
                    missing: FILES.iter().map(|f| f.to_string()).collect(),
                }),
            },
            Err(CreateError::Other(e)) => Err(e),
        }
    }

    /// The stored credentials, or `None` when the directory holds none.
    pub fn load(phoenix_home: &Path, env: &str) -> Result<Option<Credentials>, ClusterError> {
        Credentials::load_dir(&cluster_dir(phoenix_home, env)?, env)
    }

    /// Replaces the stored credentials (and the kubeconfig next to them) with a new set. The
    /// running cluster keeps trusting the old CAs until its instances are replaced; see
    /// runbooks/rotate-credentials.md.
    pub fn rotate(phoenix_home: &Path, env: &str) -> Result<Credentials, ClusterError> {
        let dir = cluster_dir(phoenix_home, env)?;
        let fresh = Credentials::generate(&dir, env)?;
        let staging = staging_dir(&dir, "new")?;
        fresh.write_all(&staging)?;
        if dir.exists() {
            let old = staging_dir(&dir, "old")?;
            fs::rename(&dir, &old)
                .map_err(ClusterError::io("moving aside the old credentials", &dir))?;
            fs::rename(&staging, &dir)
                .map_err(ClusterError::io("installing the new credentials", &dir))?;
            fs::remove_dir_all(&old)
                .map_err(ClusterError::io("removing the old credentials", &old))?;
        } else {
            fs::rename(&staging, &dir)
                .map_err(ClusterError::io("installing the new credentials", &dir))?;
        }
        Ok(fresh)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn env(&self) -> &str {
        &self.env
    }

    /// PEM of the server CA; k3s signs its serving certificates with it.
    pub fn server_ca_cert(&self) -> &str {
        &self.server_ca_cert
    }

    pub fn server_ca_key(&self) -> &Secret {
        &self.server_ca_key
    }

    /// PEM of the client CA; the API server accepts client certificates it signed.
    pub fn client_ca_cert(&self) -> &str {
        &self.client_ca_cert
    }

    pub fn client_ca_key(&self) -> &Secret {
        &self.client_ca_key
    }

    /// PEM of the admin client certificate (CN phoenix-admin, O system:masters).
    pub fn admin_cert(&self) -> &str {
        &self.admin_cert
    }

    pub fn admin_key(&self) -> &Secret {
        &self.admin_key
    }

    /// Unix time after which the admin certificate is no longer valid.
    pub fn admin_not_after(&self) -> i64 {
        self.admin_not_after
    }

    /// The server's `--token` (the shared secret alone).
    pub fn server_token(&self) -> &Secret {
        &self.token
    }

    /// The agents' token in k3s's secure format `K10<sha256 of the server CA>::server:<secret>`:
    /// an agent checks the CA the server presents against the hash before it trusts the server.
    pub fn agent_token(&self) -> Secret {
        Secret(format!(
            "K10{}::server:{}",
            self.server_ca_sha256(),
            self.token.expose()
        ))
    }

    /// SHA-256 (hex) of the server CA file exactly as the server stores and serves it.
    pub fn server_ca_sha256(&self) -> String {
        sha256_hex(self.server_ca_cert.as_bytes())
    }

    fn renew_if_expiring(self) -> Result<(Credentials, Provenance), ClusterError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        if self.admin_not_after - now > ADMIN_RENEW_DAYS * 86_400 {
            return Ok((self, Provenance::Reused));
        }
        let ca_key =
            KeyPair::from_pem(self.client_ca_key.expose()).map_err(|e| ClusterError::Corrupt {
                path: self.dir.join(CLIENT_CA_KEY),
                message: format!("not a PEM private key ({e})"),
            })?;
        let issuer = Issuer::new(
            ca_params(&client_ca_name(&self.env), OffsetDateTime::now_utc())?,
            ca_key,
        );
        let (admin_cert, admin_key, not_after) = issue_admin(&issuer)?;
        let renewed = Credentials {
            admin_cert,
            admin_key,
            admin_not_after: not_after,
            ..self
        };
        for (name, content) in [
            (ADMIN_KEY, renewed.admin_key.expose().to_string()),
            (ADMIN_CERT, renewed.admin_cert.clone()),
            (ADMIN_NOT_AFTER, format!("{not_after}\n")),
        ] {
            write_private(&renewed.dir.join(name), content.as_bytes())?;
        }
        Ok((renewed, Provenance::Renewed))
    }

    fn create(dir: &Path, env: &str) -> Result<Credentials, CreateError> {
        let creds = Credentials::generate(dir, env)?;
        let staging = staging_dir(dir, "new")?;
        creds.write_all(&staging)?;
        match fs::rename(&staging, dir) {
            Ok(()) => Ok(creds),
            Err(e) => {
                let _ = fs::remove_dir_all(&staging);
                if dir.exists() {
                    Err(CreateError::Exists)
                } else {
                    Err(ClusterError::io("installing the new credentials", dir)(e).into())
                }
            }
        }
    }

    fn generate(dir: &Path, env: &str) -> Result<Credentials, ClusterError> {
        let now = OffsetDateTime::now_utc();
        let gen = |what| move |source| ClusterError::Generate { what, source };
        let server_key = KeyPair::generate().map_err(gen("the server CA key"))?;
        let server_cert = ca_params(&server_ca_name(env), now)?
            .self_signed(&server_key)
            .map_err(gen("the server CA certificate"))?;
        let client_key = KeyPair::generate().map_err(gen("the client CA key"))?;
        let client_params = ca_params(&client_ca_name(env), now)?;
        let client_cert = client_params
            .self_signed(&client_key)
            .map_err(gen("the client CA certificate"))?;
        let client_ca_key = Secret(client_key.serialize_pem());
        let issuer = Issuer::new(client_params, client_key);
        let (admin_cert, admin_key, admin_not_after) = issue_admin(&issuer)?;
        Ok(Credentials {
            dir: dir.to_path_buf(),
            env: env.to_string(),
            server_ca_cert: server_cert.pem(),
            server_ca_key: Secret(server_key.serialize_pem()),
            client_ca_cert: client_cert.pem(),
            client_ca_key,
            admin_cert,
            admin_key,
            admin_not_after,
            token: Secret(random_token()?),
        })
    }

    fn write_all(&self, dir: &Path) -> Result<(), ClusterError> {
        create_private_dir(dir)?;
        for (name, content) in [
            (SERVER_CA_CERT, self.server_ca_cert.as_str()),
            (SERVER_CA_KEY, self.server_ca_key.expose()),
            (CLIENT_CA_CERT, self.client_ca_cert.as_str()),
            (CLIENT_CA_KEY, self.client_ca_key.expose()),
            (ADMIN_CERT, self.admin_cert.as_str()),
            (ADMIN_KEY, self.admin_key.expose()),
            (TOKEN, self.token.expose()),
        ] {
            write_private(&dir.join(name), content.as_bytes())?;
        }
        write_private(
            &dir.join(ADMIN_NOT_AFTER),
            format!("{}\n", self.admin_not_after).as_bytes(),
        )
    }

    fn load_dir(dir: &Path, env: &str) -> Result<Option<Credentials>, ClusterError> {
        if !dir.exists() {
            return Ok(None);
        }
        let missing: Vec<String> = FILES
            .iter()
            .filter(|f| !dir.join(f).is_file())
            .map(|f| f.to_string())
            .collect();
        if missing.len() == FILES.len() {
            return Ok(None);
        }
        if !missing.is_empty() {
            return Err(ClusterError::Incomplete {
                dir: dir.to_path_buf(),
                missing,
            });
        }
        let read = |name: &str| read_private(&dir.join(name));
        let not_after_path = dir.join(ADMIN_NOT_AFTER);
        let admin_not_after =
            read(ADMIN_NOT_AFTER)?
                .trim()
                .parse::<i64>()
                .map_err(|_| ClusterError::Corrupt {
                    path: not_after_path,
                    message: "expected a Unix timestamp".into(),
                })?;
        let token = read(TOKEN)?;
        if token.is_empty() || !token.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(ClusterError::Corrupt {
                path: dir.join(TOKEN),
                message: "expected the hex token phoenix generated".into(),
            });
        }
        let creds = Credentials {
            dir: dir.to_path_buf(),
            env: env.to_string(),
            server_ca_cert: pem_of(
                &dir.join(SERVER_CA_CERT),
                read(SERVER_CA_CERT)?,
                "CERTIFICATE",
            )?,
            server_ca_key: Secret(pem_of(
                &dir.join(SERVER_CA_KEY),
                read(SERVER_CA_KEY)?,
                "PRIVATE KEY",
            )?),
            client_ca_cert: pem_of(
                &dir.join(CLIENT_CA_CERT),
                read(CLIENT_CA_CERT)?,
                "CERTIFICATE",
            )?,
            client_ca_key: Secret(pem_of(
                &dir.join(CLIENT_CA_KEY),
                read(CLIENT_CA_KEY)?,
                "PRIVATE KEY",
            )?),
            admin_cert: pem_of(&dir.join(ADMIN_CERT), read(ADMIN_CERT)?, "CERTIFICATE")?,
            admin_key: Secret(pem_of(
                &dir.join(ADMIN_KEY),
                read(ADMIN_KEY)?,
                "PRIVATE KEY",
            )?),
            admin_not_after,
            token: Secret(token),
        };
        Ok(Some(creds))
    }
}

enum CreateError {
    Exists,
    Other(ClusterError),
}

impl From<ClusterError> for CreateError {
    fn from(e: ClusterError) -> Self {
        CreateError::Other(e)
    }
}

fn server_ca_name(env: &str) -> String {
    format!("phoenix-{env}-server-ca")
}

fn client_ca_name(env: &str) -> String {
    format!("phoenix-{env}-client-ca")
}

fn ca_params(common_name: &str, now: OffsetDateTime) -> Result<CertificateParams, ClusterError> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|source| ClusterError::Generate {
            what: "CA parameters",
            source,
        })?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "phoenix");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    params.not_before = now - TimeDuration::hours(1);
    params.not_after = now + TimeDuration::days(CA_VALIDITY_DAYS);
    Ok(params)
}

fn issue_admin(issuer: &Issuer<'_, KeyPair>) -> Result<(String, Secret, i64), ClusterError> {
    let gen = |what| move |source| ClusterError::Generate { what, source };
    let now = OffsetDateTime::now_utc();
    let key = KeyPair::generate().map_err(gen("the admin key"))?;
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(gen("admin parameters"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, ADMIN_USER);
    dn.push(DnType::OrganizationName, ADMIN_GROUP);
    params.distinguished_name = dn;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    // A little slack for clocks on the server that run behind phoenix's.
    params.not_before = now - TimeDuration::hours(1);
    let not_after = now + TimeDuration::days(ADMIN_VALIDITY_DAYS);
    params.not_after = not_after;
    let cert = params
        .signed_by(&key, issuer)
        .map_err(gen("the admin certificate"))?;
    Ok((
        cert.pem(),
        Secret(key.serialize_pem()),
        not_after.unix_timestamp(),
    ))
}

/// 32 random bytes as hex: alphanumeric, so it needs no quoting in YAML, shell or k3s's
/// `K10...::server:<secret>` format.
fn random_token() -> Result<String, ClusterError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| ClusterError::Random(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn pem_of(path: &Path, text: String, label: &str) -> Result<String, ClusterError> {
    let begin = format!("-----BEGIN {label}-----");
    if text.trim_start().starts_with(&begin) && text.contains(&format!("-----END {label}-----")) {
        Ok(text)
    } else {
        Err(ClusterError::Corrupt {
            path: path.to_path_buf(),
            message: format!("expected a PEM {label}"),
        })
    }
}

/// A sibling of `dir` to build a new set in before it is renamed into place.
fn staging_dir(dir: &Path, what: &str) -> Result<PathBuf, ClusterError> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    create_private_dir(parent)?;
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("cluster");
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    Ok(parent.join(format!(".{name}.{what}-{}-{nanos}", std::process::id())))
}

pub(crate) fn create_private_dir(dir: &Path) -> Result<(), ClusterError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(ClusterError::io("creating the directory", dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(ClusterError::io("restricting the directory", dir))?;
    }
    Ok(())
}

/// Writes `content` to `path` with mode 0600 through a temporary file and a rename, so a reader
/// never sees half a key.
pub(crate) fn write_private(path: &Path, content: &[u8]) -> Result<(), ClusterError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let result = (|| {
        let mut file = opts.open(&tmp)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(0o600))?;
        }
        file.write_all(content)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        ClusterError::io("writing", path)(e)
    })
}

fn read_private(path: &Path) -> Result<String, ClusterError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = fs::metadata(path).map_err(ClusterError::io("reading", path))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(ClusterError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    fs::read_to_string(path).map_err(ClusterError::io("reading", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_that_escape_the_directory_are_refused() {
        let home = Path::new("/tmp/h");
        for bad in ["", "..", "../x", "a/b", ".hidden", "a b", "ä"] {
            assert!(cluster_dir(home, bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            cluster_dir(home, "demo-drill-ab12").unwrap(),
            Path::new("/tmp/h/clusters/demo-drill-ab12")
        );
    }

    #[test]
    fn agent_token_pins_the_server_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (c, p) = Credentials::ensure(dir.path(), "t").unwrap();
        assert_eq!(p, Provenance::Created);
        let token = c.agent_token();
        let expected = format!(
            "K10{}::server:{}",
            sha256_hex(c.server_ca_cert().as_bytes()),
            c.server_token().expose()
        );
        assert_eq!(token.expose(), expected);
        assert_eq!(c.server_token().expose().len(), 64);
    }

    #[test]
    fn an_expiring_admin_certificate_is_reissued_by_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = Credentials::ensure(dir.path(), "t").unwrap();
        write_private(&c.dir().join(ADMIN_NOT_AFTER), b"1000\n").unwrap();
        let (renewed, p) = Credentials::ensure(dir.path(), "t").unwrap();
        assert_eq!(p, Provenance::Renewed);
        assert_ne!(renewed.admin_cert(), c.admin_cert());
        assert_eq!(renewed.client_ca_cert(), c.client_ca_cert());
        assert!(
            renewed.admin_not_after() > OffsetDateTime::now_utc().unix_timestamp() + 300 * 86_400
        );
        let (again, p) = Credentials::ensure(dir.path(), "t").unwrap();
        assert_eq!(p, Provenance::Reused);
        assert_eq!(again.admin_cert(), renewed.admin_cert());
    }
}
