//! The cluster's credentials, derived from the environment's one cluster secret
//! (`spec.cluster.secret`, an `env:`/`file:` reference): a server CA (the API server's serving
//! certificates chain to it, so phoenix and the agents can verify the server), a client CA (it
//! signs the admin certificate phoenix authenticates with), a server token and a separate agent
//! token. The same secret and env name give byte-identical CAs and tokens on every machine, so
//! the rendered user-data and the plan never depend on `$PHOENIX_HOME`: nothing is stored, and
//! rotating means changing the secret (runbooks/rotate-credentials.md). The admin client
//! certificate is the one thing issued per run (a fresh key, signed by the derived client CA).

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::providers::sha256_hex;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Signer;
use p256::pkcs8::EncodePrivateKey;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber, SignatureAlgorithm, SigningKey,
};
use serde::Serialize;
use sha2::Sha256;
use time::{Duration as TimeDuration, OffsetDateTime};

use super::error::ClusterError;

/// The organisation Kubernetes' default RBAC binds to cluster-admin.
pub const ADMIN_GROUP: &str = "system:masters";
/// Common name of the admin client certificate (the user name the API server sees).
pub const ADMIN_USER: &str = "phoenix-admin";

/// The shortest cluster secret accepted: 32 characters (e.g. `openssl rand -hex 32` gives 64).
pub const MIN_SECRET_LEN: usize = 32;

/// Versions the derivation: changing it changes every credential, so it never changes silently.
const DERIVATION: &str = "phoenix/cluster-credentials/v1";
/// The CAs' validity is fixed (not "now"), so that the certificates are the same bytes on every
/// machine. Rotating them means a new cluster secret (and new servers; see the runbook).
const CA_NOT_BEFORE: i64 = 1_704_067_200; // 2024-01-01T00:00:00Z
const CA_NOT_AFTER: i64 = 4_859_827_200; // 2124-01-01T00:00:00Z
/// The admin certificate is issued afresh by every run that writes the kubeconfig, and short
/// lived, because Kubernetes cannot revoke a client certificate: a stolen copy works until it
/// expires or the cluster secret is rotated.
const ADMIN_VALIDITY_DAYS: i64 = 30;

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

/// One cluster's credentials. Certificates are public; keys and tokens are [`Secret`]s.
/// `Debug` and `Serialize` show only certificate fingerprints and the directory.
#[derive(Clone)]
pub struct Credentials {
    /// `$PHOENIX_HOME/clusters/<env>`: where the kubeconfig (a cache) is written.
    dir: PathBuf,
    env: String,
    server_ca_cert: String,
    server_ca_key: Secret,
    client_ca_cert: String,
    client_ca_key: Secret,
    admin_cert: String,
    admin_key: Secret,
    admin_not_after: i64,
    server_token: Secret,
    agent_secret: Secret,
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
            .field("tokens", &crate::render::REDACTED)
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

/// `$PHOENIX_HOME/clusters/<env>`: the cluster's kubeconfig.
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

/// 32 bytes derived from the cluster secret of `env` for `label`, by the same derivation as the
/// CAs and tokens (HMAC-SHA256 keyed with the secret over the derivation version, the env name and
/// the label): for other keys that must be the same on every machine with the secret, such as the
/// EC2 key pair (`ssh-key/<name>`). The label must differ from the credentials' own labels.
/// A secret shorter than [`MIN_SECRET_LEN`] is refused without being shown.
pub fn derive_bytes(env: &str, secret: &Secret, label: &str) -> Result<[u8; 32], ClusterError> {
    let len = secret.expose().chars().count();
    if len < MIN_SECRET_LEN {
        return Err(ClusterError::WeakSecret {
            env: env.to_string(),
            len,
        });
    }
    if matches!(
        label,
        "server-ca" | "client-ca" | "server-token" | "agent-token"
    ) || label.ends_with("/serial")
    {
        return Err(ClusterError::Derive(format!(
            "the label {label} is the cluster credentials' own"
        )));
    }
    Ok(Seed {
        secret: secret.expose().as_bytes(),
        env,
    }
    .bytes(label, 0))
}

impl Credentials {
    /// The credentials of the cluster of `env` (the effective name: a drill copy's differ from
    /// the live env's), derived from `secret`: the CAs and tokens are the same bytes for the same
    /// secret and name, wherever and whenever this runs. Reads and writes nothing; the admin
    /// certificate is issued now (30 days) by the derived client CA.
    pub fn derive(
        phoenix_home: &Path,
        env: &str,
        secret: &Secret,
    ) -> Result<Credentials, ClusterError> {
        let dir = cluster_dir(phoenix_home, env)?;
        let len = secret.expose().chars().count();
        if len < MIN_SECRET_LEN {
            return Err(ClusterError::WeakSecret {
                env: env.to_string(),
                len,
            });
        }
        let seed = Seed {
            secret: secret.expose().as_bytes(),
            env,
        };
        let gen = |what| move |source| ClusterError::Generate { what, source };
        let server_key = seed.key("server-ca")?;
        let server_params = ca_params(&server_ca_name(env), seed.serial("server-ca"))?;
        let server_cert = server_params
            .self_signed(&server_key)
            .map_err(gen("the server CA certificate"))?;
        let client_key = seed.key("client-ca")?;
        let client_params = ca_params(&client_ca_name(env), seed.serial("client-ca"))?;
        let client_cert = client_params
            .self_signed(&client_key)
            .map_err(gen("the client CA certificate"))?;
        let server_ca_key = server_key.pem()?;
        let client_ca_key = client_key.pem()?;
        let issuer = Issuer::new(client_params, client_key);
        let (admin_cert, admin_key, admin_not_after) = issue_admin(&issuer)?;
        Ok(Credentials {
            dir,
            env: env.to_string(),
            server_ca_cert: server_cert.pem(),
            server_ca_key,
            client_ca_cert: client_cert.pem(),
            client_ca_key,
            admin_cert,
            admin_key,
            admin_not_after,
            server_token: Secret(hex(&seed.bytes("server-token", 0))),
            agent_secret: Secret(hex(&seed.bytes("agent-token", 0))),
        })
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

    /// The server's `token` (the shared secret alone): only servers get it. With it a machine
    /// can join as a server and read the CA keys, so agents never see it.
    pub fn server_token(&self) -> &Secret {
        &self.server_token
    }

    /// The server's `agent-token` (the secret alone): the server accepts agents with it, and
    /// nothing more (an agent token cannot join a server).
    pub fn agent_secret(&self) -> &Secret {
        &self.agent_secret
    }

    /// The agents' token in k3s's secure format `K10<sha256 of the server CA>::node:<agent
    /// secret>`: an agent checks the CA the server presents against the hash before it trusts
    /// the server, and joins with the agent secret (not the server token).
    pub fn agent_token(&self) -> Secret {
        Secret(format!(
            "K10{}::node:{}",
            self.server_ca_sha256(),
            self.agent_secret.expose()
        ))
    }

    /// SHA-256 (hex) of the server CA file exactly as the server stores and serves it.
    pub fn server_ca_sha256(&self) -> String {
        sha256_hex(self.server_ca_cert.as_bytes())
    }
}

/// What every derived value is computed from: HMAC-SHA256 keyed with the secret, over the
/// derivation version, the env name and what is derived.
struct Seed<'a> {
    secret: &'a [u8],
    env: &'a str,
}

impl Seed<'_> {
    fn bytes(&self, label: &str, counter: u32) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.secret)
            .expect("HMAC takes a key of any length");
        for part in [DERIVATION, self.env, label] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac.update(&counter.to_be_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A P-256 key: the first derived value that is a valid scalar (all but ~2^-32 are).
    fn key(&self, label: &str) -> Result<DerivedKey, ClusterError> {
        for counter in 0..16 {
            if let Ok(key) = p256::SecretKey::from_slice(&self.bytes(label, counter)) {
                return Ok(DerivedKey::new(key));
            }
        }
        Err(ClusterError::Derive(format!(
            "no valid P-256 key for {label}"
        )))
    }

    /// A positive 16-byte certificate serial number.
    fn serial(&self, label: &str) -> SerialNumber {
        let mut bytes = self.bytes(&format!("{label}/serial"), 0)[..16].to_vec();
        bytes[0] &= 0x7f;
        bytes[0] |= 0x01;
        SerialNumber::from_slice(&bytes)
    }
}

/// A derived P-256 key that signs with RFC 6979 (deterministic) ECDSA, so a certificate it
/// signs is the same bytes every time (ring's ECDSA uses a random nonce).
struct DerivedKey {
    signing: p256::ecdsa::SigningKey,
    secret: p256::SecretKey,
    public: Vec<u8>,
}

impl DerivedKey {
    fn new(secret: p256::SecretKey) -> DerivedKey {
        let signing = p256::ecdsa::SigningKey::from(&secret);
        let public = signing
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        DerivedKey {
            signing,
            secret,
            public,
        }
    }

    /// PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), as k3s reads its CA keys.
    fn pem(&self) -> Result<Secret, ClusterError> {
        self.secret
            .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
            .map(|pem| Secret(pem.to_string()))
            .map_err(|e| ClusterError::Derive(format!("encoding a CA key: {e}")))
    }
}

impl PublicKeyData for DerivedKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for DerivedKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let signature: p256::ecdsa::Signature = self.signing.sign(msg);
        Ok(signature.to_der().as_bytes().to_vec())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn server_ca_name(env: &str) -> String {
    format!("phoenix-{env}-server-ca")
}

fn client_ca_name(env: &str) -> String {
    format!("phoenix-{env}-client-ca")
}

fn ca_params(common_name: &str, serial: SerialNumber) -> Result<CertificateParams, ClusterError> {
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
    params.serial_number = Some(serial);
    params.not_before = OffsetDateTime::from_unix_timestamp(CA_NOT_BEFORE).expect("valid time");
    params.not_after = OffsetDateTime::from_unix_timestamp(CA_NOT_AFTER).expect("valid time");
    Ok(params)
}

fn issue_admin(issuer: &Issuer<'_, DerivedKey>) -> Result<(String, Secret, i64), ClusterError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

    fn derive(home: &Path, env: &str, secret: &str) -> Credentials {
        Credentials::derive(home, env, &Secret::new(secret)).unwrap()
    }

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
    fn the_same_secret_and_env_give_the_same_cas_and_tokens_on_any_home() {
        let a = derive(Path::new("/tmp/one"), "demo", SECRET);
        let b = derive(Path::new("/elsewhere"), "demo", SECRET);
        assert_eq!(a.server_ca_cert(), b.server_ca_cert());
        assert_eq!(a.server_ca_key(), b.server_ca_key());
        assert_eq!(a.client_ca_cert(), b.client_ca_cert());
        assert_eq!(a.client_ca_key(), b.client_ca_key());
        assert_eq!(a.server_token(), b.server_token());
        assert_eq!(a.agent_token(), b.agent_token());
        // The admin certificate is issued per run (its own key), by the same client CA.
        assert_ne!(a.admin_key(), b.admin_key());
        assert!(a
            .server_ca_key()
            .expose()
            .starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(a
            .server_ca_cert()
            .starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn another_secret_or_another_env_gives_other_credentials() {
        let a = derive(Path::new("/h"), "demo", SECRET);
        let other_secret = derive(Path::new("/h"), "demo", &format!("{SECRET}x"));
        let drill = derive(Path::new("/h"), "demo-drill-ab12", SECRET);
        for other in [&other_secret, &drill] {
            assert_ne!(a.server_ca_cert(), other.server_ca_cert());
            assert_ne!(a.client_ca_key(), other.client_ca_key());
            assert_ne!(a.server_token(), other.server_token());
            assert_ne!(a.agent_secret(), other.agent_secret());
        }
    }

    #[test]
    fn agents_get_their_own_token_pinning_the_server_ca() {
        let c = derive(Path::new("/h"), "t", SECRET);
        let token = c.agent_token();
        let expected = format!(
            "K10{}::node:{}",
            sha256_hex(c.server_ca_cert().as_bytes()),
            c.agent_secret().expose()
        );
        assert_eq!(token.expose(), expected);
        assert_ne!(c.agent_secret(), c.server_token());
        assert!(!token.expose().contains(c.server_token().expose()));
        assert_eq!(c.server_token().expose().len(), 64);
    }

    #[test]
    fn a_short_secret_is_refused_without_showing_it() {
        let err = Credentials::derive(Path::new("/h"), "demo", &Secret::new("short-secret"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("demo") && err.contains("32"), "{err}");
        assert!(!err.contains("short-secret"), "{err}");
    }

    #[test]
    fn the_admin_certificate_is_short_lived() {
        let c = derive(Path::new("/h"), "t", SECRET);
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!(c.admin_not_after() > now + 29 * 86_400);
        assert!(c.admin_not_after() <= now + 31 * 86_400);
    }
}
