//! The typed environment definition: what `environments/<name>/environment.yaml` decodes into.
//!
//! The schema is documented in docs/environment.md; keep the two in step.

use super::cidr::Cidr;
use super::spans::Spans;
use super::yaml::Pos;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Clone, Debug, Serialize)]
pub struct Environment {
    /// Where each field was written, for diagnostics that need the whole model.
    #[serde(skip)]
    pub spans: Spans,
    pub name: String,
    /// Repo-relative directory of the environment, e.g. `environments/demo`.
    pub dir: String,
    /// Repo-relative path of the definition file.
    pub file: String,
    pub protected: bool,
    pub labels: BTreeMap<String, String>,
    #[serde(with = "humantime_serde_opt")]
    pub recovery_objective: Option<Duration>,
    /// `spec.watch`: this env's settings for `phoenix watch --all` (unset ones: the flags).
    pub watch: super::watch::WatchSettings,
    /// Template values as written in the environment (merged with shared defaults at render time).
    pub values: serde_json::Value,
    pub timeouts: Timeouts,
    pub secrets: Vec<SecretRef>,
    pub cloud: Option<Cloud>,
    pub cluster: Option<Cluster>,
    pub addons: Vec<Component>,
    pub apps: Vec<Component>,
    /// Data volumes (EBS), restored from the newest owned snapshot on rebuild.
    pub volumes: Vec<Volume>,
    /// DNS records upserted as the last step of a rebuild (the cutover); see src/env/dns.rs.
    pub dns: Option<super::dns::Dns>,
    /// Where the env is rebuilt with `--failover` (see src/env/failover.rs).
    pub failover: Option<Failover>,
}

/// `spec.failover`: the region the same env is rebuilt in with `--failover`, and what must
/// differ there. Everything not named here is the same as in `spec.cloud`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Failover {
    pub region: String,
    /// Subnet name → its availability zone in the failover region (every subnet has one).
    pub zones: BTreeMap<String, String>,
    /// The VPC block there; `None` keeps spec.cloud.network.cidr.
    pub cidr: Option<Cidr>,
    /// Subnet name → its block there; a subnet not named keeps its block.
    pub subnet_cidrs: BTreeMap<String, Cidr>,
    /// Instance group → the instance type there (a type the region does not offer).
    pub instance_types: BTreeMap<String, String>,
    /// Instance group → the AMI id there: AMI ids differ per region, so a group whose image is
    /// an id needs one (a lookup is resolved in the failover region by the same query).
    pub images: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Timeouts {
    #[serde(with = "humantime_serde")]
    pub cloud: Duration,
    #[serde(with = "humantime_serde")]
    pub cluster: Duration,
    #[serde(with = "humantime_serde")]
    pub addons: Duration,
    #[serde(with = "humantime_serde")]
    pub apps: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            cloud: Duration::from_secs(600),
            cluster: Duration::from_secs(600),
            addons: Duration::from_secs(300),
            apps: Duration::from_secs(300),
        }
    }
}

/// Where a secret's value comes from at run time. Values are never stored in the model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "from", content = "ref", rename_all = "lowercase")]
pub enum SecretSource {
    /// `env:NAME`: an environment variable of the phoenix process.
    Env(String),
    /// `file:NAME`: a file under the secrets directory of the machine running phoenix
    /// (`--secrets-dir`, not the commit): a relative path without `..`, so a commit cannot make
    /// phoenix read any other file (an AWS credentials file, a private key).
    File(String),
}

impl SecretSource {
    pub fn parse(text: &str) -> Result<SecretSource, String> {
        if let Some(name) = text.strip_prefix("env:") {
            let ok = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(format!("{name:?} is not a valid environment variable name"));
            }
            return Ok(SecretSource::Env(name.to_string()));
        }
        if let Some(path) = text.strip_prefix("file:") {
            if path.is_empty() {
                return Err("the file path is empty".into());
            }
            check_secret_path(path)?;
            return Ok(SecretSource::File(path.to_string()));
        }
        Err("a secret reference starts with env: or file:".into())
    }
}

/// A `file:` reference names a file under the secrets directory: relative, no `..`, no `~`.
fn check_secret_path(path: &str) -> Result<(), String> {
    let why = if path.starts_with('/') || path.starts_with('\\') {
        Some("it is absolute")
    } else if path.starts_with('~') {
        Some("it starts with ~")
    } else if path.contains('\\') || path.contains('\0') {
        Some("it contains a backslash or NUL")
    } else if path
        .split('/')
        .any(|c| c == ".." || c == "." || c.is_empty())
    {
        Some("it has a '..', '.' or empty component")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(format!(
            "{path:?} is not a path inside the secrets directory ({why}); file: references are relative to --secrets-dir / PHOENIX_SECRETS_DIR (default ~/.config/phoenix/secrets), e.g. file:shop/db-password"
        )),
    }
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Env(n) => write!(f, "env:{n}"),
            SecretSource::File(p) => write!(f, "file:{p}"),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SecretRef {
    pub name: String,
    pub source: SecretSource,
    #[serde(skip)]
    pub pos: Pos,
}

#[derive(Clone, Debug, Serialize)]
pub struct Cloud {
    pub provider: String,
    pub region: String,
    pub network: Network,
    pub security_groups: Vec<SecurityGroup>,
    pub key_pair: Option<KeyPair>,
    pub instances: Vec<InstanceGroup>,
    /// Allow an instance type change by stop, modify, start instead of replacement.
    pub allow_stop_modify_start: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Network {
    pub cidr: Cidr,
    pub subnets: Vec<Subnet>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Subnet {
    pub name: String,
    pub cidr: Cidr,
    pub zone: String,
    pub public: bool,
    #[serde(skip)]
    pub pos: Pos,
}

#[derive(Clone, Debug, Serialize)]
pub struct SecurityGroup {
    pub name: String,
    pub description: String,
    pub ingress: Vec<Rule>,
    /// `None` keeps the AWS default (all outbound allowed).
    pub egress: Option<Vec<Rule>>,
    #[serde(skip)]
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    All,
}

impl Protocol {
    pub fn as_aws(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::All => "-1",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Peer {
    Cidr(Cidr),
    /// Another security group of this environment, by name.
    Group(String),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Rule {
    pub protocol: Protocol,
    /// Inclusive port range; `None` for all ports.
    pub ports: Option<(u16, u16)>,
    pub peer: Peer,
    pub description: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct KeyPair {
    pub name: String,
    /// Public key to import; `None` means phoenix generates a key pair and keeps the private key
    /// under the state dir (0600).
    pub public_key: Option<SecretSource>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Image {
    Id(String),
    /// Newest available image of this owner and architecture whose name matches the pattern
    /// (`*` and `?` wildcards).
    Lookup {
        owner: String,
        name: String,
        /// `x86_64` (default) or `arm64`.
        architecture: String,
        /// Whether a newer match replaces running instances.
        update: ImageUpdate,
    },
}

/// What a newer image matching a lookup does to instances launched from an older one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageUpdate {
    /// Running instances keep the image they were launched with; a newer one is shown by
    /// `plan` and `diff` as available, not as drift. New instances get the newest.
    #[default]
    Pinned,
    /// A newer match replaces the instances (the k3s server included).
    Latest,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Server,
    Agent,
    None,
}

#[derive(Clone, Debug, Serialize)]
pub struct InstanceGroup {
    pub name: String,
    pub role: Role,
    pub count: u32,
    pub instance_type: String,
    pub image: Image,
    pub subnet: String,
    pub security_groups: Vec<String>,
    pub root_volume_gib: Option<u32>,
    pub instance_profile: Option<String>,
    /// Repo-relative template path for user-data; `None` uses the role's default template.
    pub user_data: Option<String>,
    pub tags: BTreeMap<String, String>,
    #[serde(skip)]
    pub pos: Pos,
}

/// The EBS volume types phoenix declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeType {
    Gp3,
    Gp2,
    Io1,
    Io2,
    St1,
    Sc1,
}

impl VolumeType {
    pub const ALL: [VolumeType; 6] = [
        VolumeType::Gp3,
        VolumeType::Gp2,
        VolumeType::Io1,
        VolumeType::Io2,
        VolumeType::St1,
        VolumeType::Sc1,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            VolumeType::Gp3 => "gp3",
            VolumeType::Gp2 => "gp2",
            VolumeType::Io1 => "io1",
            VolumeType::Io2 => "io2",
            VolumeType::St1 => "st1",
            VolumeType::Sc1 => "sc1",
        }
    }

    pub fn parse(text: &str) -> Option<VolumeType> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }

    /// Size range in GiB EBS accepts for the type.
    pub fn size_range(&self) -> (u32, u32) {
        match self {
            VolumeType::Gp3 | VolumeType::Gp2 => (1, 16384),
            VolumeType::Io1 => (4, 16384),
            VolumeType::Io2 => (4, 65536),
            VolumeType::St1 | VolumeType::Sc1 => (125, 16384),
        }
    }

    /// Provisioned IOPS range, for the types that take an IOPS setting.
    pub fn iops_range(&self) -> Option<(u32, u32)> {
        match self {
            VolumeType::Gp3 => Some((3000, 16000)),
            VolumeType::Io1 => Some((100, 64000)),
            VolumeType::Io2 => Some((100, 256000)),
            _ => None,
        }
    }

    /// io1 and io2 have no default IOPS: EC2 refuses them without one.
    pub fn needs_iops(&self) -> bool {
        matches!(self, VolumeType::Io1 | VolumeType::Io2)
    }

    /// Throughput range in MiB/s, for the types that take a throughput setting (gp3 only).
    pub fn throughput_range(&self) -> Option<(u32, u32)> {
        match self {
            VolumeType::Gp3 => Some((125, 1000)),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    Ext4,
    Xfs,
}

impl Filesystem {
    pub fn as_str(&self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
        }
    }
}

/// A data volume: an EBS volume attached to one instance of a group and mounted on a path (or
/// left in a zone for the cluster's EBS CSI driver), backed up by `phoenix backup` and restored
/// from the newest owned snapshot when a rebuild finds it missing.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    /// GiB.
    pub size: u32,
    pub volume_type: VolumeType,
    pub iops: Option<u32>,
    /// MiB/s (gp3).
    pub throughput: Option<u32>,
    /// Where it lives: attached to an instance by phoenix, or left in a zone for the cluster's
    /// EBS CSI driver.
    pub placement: Placement,
    pub filesystem: Filesystem,
    /// With no snapshot to restore from, create the volume empty (otherwise the rebuild fails).
    pub allow_empty: bool,
    pub backup: Option<BackupPolicy>,
    #[serde(skip)]
    pub pos: Pos,
}

impl Volume {
    /// The stable resource id (`volume/<name>`), as in `phoenix:resource`.
    pub fn resource_id(&self) -> String {
        format!("volume/{}", self.name)
    }

    /// Where phoenix attaches it; `None` for a volume left to the EBS CSI driver.
    pub fn attachment(&self) -> Option<&Attachment> {
        match &self.placement {
            Placement::Instance(a) => Some(a),
            Placement::Zone(_) => None,
        }
    }
}

/// Where a data volume lives.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Placement {
    /// Attached by phoenix to one instance and mounted by its user-data (`instance: GROUP/INDEX`);
    /// offered to a k3s cluster as a local PersistentVolume pinned to that node.
    Instance(Attachment),
    /// Created (or restored) unattached in this zone (`zone:`), for the cluster's EBS CSI driver
    /// to attach wherever the pod that claims it runs; offered as a static CSI PersistentVolume.
    Zone(String),
}

/// A volume attached by phoenix to one instance.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// The instance group it attaches to.
    pub group: String,
    /// The index of the instance in the group (`server/0`).
    pub index: u32,
    /// The device name it is attached as (`/dev/sdf`).
    pub device: String,
    pub mount_path: String,
}

impl Attachment {
    /// The resource id of the instance it attaches to (`instance/<group>/<index>`).
    pub fn instance_resource(&self) -> String {
        format!("instance/{}/{}", self.group, self.index)
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupPolicy {
    /// How often a scheduled `phoenix backup` is meant to run (documentation for the schedule and
    /// the check against the recovery point objective).
    #[serde(with = "humantime_serde_opt")]
    pub every: Option<Duration>,
    /// Owned snapshots kept per volume and region; older ones are pruned by `phoenix backup`.
    pub keep: u32,
    /// Other regions each new snapshot is copied to.
    pub copy_to: Vec<String>,
    #[serde(skip)]
    pub copy_to_pos: Vec<Pos>,
    /// The newest completed snapshot must be younger than this (drift, metrics, drills).
    #[serde(with = "humantime_serde_opt")]
    pub recovery_point_objective: Option<Duration>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Cluster {
    K3s(K3s),
    Existing(Existing),
}

#[derive(Clone, Debug, Serialize)]
pub struct K3s {
    pub version: String,
    /// Whether the API endpoint is the server's public or private address.
    pub endpoint: EndpointKind,
    /// The one secret every cluster credential (CAs, server token, agent token) is derived
    /// from, so any machine with the commit and this secret renders the same user-data.
    pub secret: SecretSource,
    /// Extra names in the API server's certificate (a load balancer or tunnel host), declared
    /// here so that no run-time setting changes what is deployed.
    pub tls_sans: Vec<String>,
    /// k3s packaged components not to deploy (`traefik`, `servicelb`, `metrics-server`,
    /// `local-storage`): an env that brings its own ingress disables traefik and servicelb,
    /// which would otherwise take ports 80 and 443 on every node.
    pub disable: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointKind {
    Public,
    Private,
}

#[derive(Clone, Debug, Serialize)]
pub struct Existing {
    /// A local kubeconfig path (not in the commit: it holds credentials).
    pub kubeconfig: String,
    pub context: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Source {
    /// A directory under `templates/` whose `.j2` files are rendered (and plain `.yaml` copied).
    Template(String),
    /// A directory of manifests in the commit, relative to the environment directory.
    Path(String),
    /// A Helm chart rendered with `helm template` (docs/environment.md, "Helm charts").
    Chart(Chart),
    /// A kustomization directory in the commit, relative to the environment directory, rendered
    /// with `kubectl kustomize`.
    Kustomize(String),
}

/// Where vendored charts live in the repository: `phoenix vendor ENV` writes
/// `vendor/charts/NAME-VERSION.tgz` here, and a rebuild reads only that file.
pub const VENDOR_DIR: &str = "vendor/charts";

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Chart {
    pub from: ChartFrom,
    /// The Helm release name (`.Release.Name`); default: the component's name.
    pub release_name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ChartFrom {
    /// A chart directory or a packaged chart (`.tgz`) in the commit, relative to the
    /// environment directory.
    Path(String),
    /// A chart of an HTTP(S) chart repository at an exact version, used from its vendored copy
    /// in the commit (`vendor/charts/NAME-VERSION.tgz`), whose sha256 must be `digest`.
    Repo {
        repo: String,
        name: String,
        version: String,
        /// `sha256:` and 64 lowercase hex digits: the packaged chart's digest. Empty when not
        /// declared yet: `validate` refuses that, and `phoenix vendor` prints the digest to declare.
        digest: String,
    },
}

impl ChartFrom {
    /// The repo-relative path of the vendored copy of a repository chart.
    pub fn vendored_path(name: &str, version: &str) -> String {
        format!("{VENDOR_DIR}/{name}-{version}.tgz")
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub url: String,
    pub expect: u16,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// For an https URL: a PEM CA bundle in the commit, relative to the environment directory,
    /// trusted instead of the system's roots (a private CA).
    pub ca: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SecretObject {
    pub name: String,
    pub namespace: String,
    /// Secret key → name of an entry in `spec.secrets`.
    pub data: BTreeMap<String, String>,
    #[serde(skip)]
    pub pos: Pos,
}

#[derive(Clone, Debug, Serialize)]
pub struct Component {
    pub name: String,
    pub source: Source,
    /// Repo-relative directory the source resolves to.
    pub source_dir: String,
    pub namespace: Option<String>,
    pub values: serde_json::Value,
    pub depends_on: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
    pub checks: Vec<Check>,
    pub secrets: Vec<SecretObject>,
    /// Take fields another field manager holds back on objects phoenix owns (default true).
    pub force_conflicts: bool,
    /// Fields phoenix leaves to other field managers (an HPA's replicas): never applied, never
    /// compared.
    pub leave_fields: Vec<LeftFields>,
    #[serde(skip)]
    pub pos: Pos,
}

/// Fields of one object of a component that phoenix leaves to another field manager.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeftFields {
    pub kind: String,
    pub name: String,
    /// `None`: any namespace (or a cluster-scoped object).
    pub namespace: Option<String>,
    /// Dot-separated field paths, e.g. `spec.replicas`.
    pub fields: Vec<String>,
}

impl LeftFields {
    /// Whether this entry is about `object` (a manifest as JSON).
    pub fn matches(&self, object: &serde_json::Value) -> bool {
        object["kind"].as_str() == Some(self.kind.as_str())
            && object["metadata"]["name"].as_str() == Some(self.name.as_str())
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns))
    }

    /// Removes the fields from `object`, so an apply neither sets nor claims them.
    pub fn strip(&self, object: &mut serde_json::Value) {
        for path in &self.fields {
            let mut keys: Vec<&str> = path.split('.').collect();
            let Some(last) = keys.pop() else { continue };
            let mut cur = Some(&mut *object);
            for k in keys {
                cur = cur.and_then(|v| v.get_mut(k));
            }
            if let Some(map) = cur.and_then(serde_json::Value::as_object_mut) {
                map.remove(last);
            }
        }
    }

    /// Whether a field path of a diff (`.spec.replicas`, `spec.replicas`) is one of these or
    /// lies under one.
    pub fn covers(&self, path: &str) -> bool {
        let path = path.trim_start_matches('.');
        self.fields.iter().any(|f| {
            path == f
                || path
                    .strip_prefix(f.as_str())
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        })
    }
}

mod humantime_serde {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

mod humantime_serde_opt {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }
}
