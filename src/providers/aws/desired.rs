//! The desired cloud: one entry per resource with a stable id, its tags and its settings, derived
//! from the environment model without any I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::providers::sha256_hex;
use serde::Serialize;

use super::rules::RuleKey;
use super::tags::{
    TAG_COMMIT, TAG_ENV, TAG_GROUP, TAG_IMAGE_LOOKUP, TAG_NAME, TAG_PUBLIC_KEY_SHA256,
    TAG_RESOURCE, TAG_ROLE, TAG_USER_DATA_SHA256,
};
use crate::env::model::{Cloud, Image, ImageUpdate, Role};

/// A value that must never be shown: `Debug` prints its size only, and it is not serialized.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Sensitive(pub String);

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted, {} bytes>", self.0.len())
    }
}

/// The public half of the environment's SSH key pair (see [`super::key_material`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyMaterial {
    /// The OpenSSH public key line (`ssh-ed25519 AAAA... comment`).
    pub public_key: String,
}

/// Renders a group's user-data once the resources it waits for exist; the error is a message.
pub type RenderLate =
    dyn Fn(super::Ec2) -> crate::engine::BoxFuture<'static, Result<String, String>> + Send + Sync;

/// User-data that can only be rendered while converging: a k3s agent needs the private address
/// of its server, which exists only once the server instance does (the instance's
/// [`InstanceSpec::after`] names the resources it waits for).
#[derive(Clone)]
pub struct LateUserData {
    /// Called by the instance's node before it compares or launches.
    pub render: std::sync::Arc<RenderLate>,
}

impl fmt::Debug for LateUserData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<rendered during the run>")
    }
}

/// What [`desired`] needs besides the model.
#[derive(Clone, Debug, Default)]
pub struct DesiredInputs {
    /// The commit SHA recorded in `phoenix:commit`.
    pub commit: String,
    /// Rendered user-data per instance group name.
    pub user_data: BTreeMap<String, String>,
    /// User-data per group name rendered during the run (a group is in one map or neither).
    pub late_user_data: BTreeMap<String, LateUserData>,
    /// Per group name: resource ids (e.g. `instance/server/0`) whose nodes must converge before
    /// the group's instances start (the servers a late-rendered agent joins). Known without
    /// rendering anything, so the offline plan has the same edges as a run.
    pub after: BTreeMap<String, Vec<String>>,
    /// The key pair's public key, when the model has a key pair.
    pub key: Option<KeyMaterial>,
    /// Extra tags on every resource (e.g. `phoenix:expires` for ephemeral environments). They
    /// cannot override the ownership tags.
    pub extra_tags: BTreeMap<String, String>,
    /// The k3s API is reached at the server's public address (`cluster.endpoint: public`): its
    /// certificate names the address the server had at first boot, so a stopped server is not
    /// started in place (a start gives it a new public address).
    pub server_endpoint_public: bool,
}

/// The image of an instance: an id, or a lookup resolved against EC2 when planning or applying.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ImageSpec {
    Id(String),
    /// Newest available image (by CreationDate, then name, then id) of `owner` and
    /// `architecture` whose name matches `name`.
    Lookup {
        owner: String,
        name: String,
        architecture: String,
    },
}

impl ImageSpec {
    /// What the `phoenix:image-lookup` tag of an instance launched from this lookup says.
    pub fn lookup_tag(&self) -> Option<String> {
        match self {
            ImageSpec::Id(_) => None,
            ImageSpec::Lookup {
                owner,
                name,
                architecture,
            } => Some(format!("{owner}/{name} ({architecture})")),
        }
    }
}

impl fmt::Display for ImageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSpec::Id(id) => f.write_str(id),
            ImageSpec::Lookup {
                owner,
                name,
                architecture,
            } => write!(f, "newest {owner}/{name} ({architecture})"),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct InstanceSpec {
    pub group: String,
    pub index: u32,
    pub role: String,
    pub instance_type: String,
    pub image: ImageSpec,
    /// With a lookup: whether a newer match replaces the instance (`update: latest`), or is only
    /// shown as available (`pinned`, the default).
    pub image_latest: bool,
    /// Resource id of the subnet, e.g. `subnet/public-a`.
    pub subnet: String,
    /// Whether the subnet is public (the instance gets a public IP).
    pub public_ip: bool,
    /// A k3s server whose public address is its API endpoint and is in its certificate: a stop
    /// and start would move it, so a stopped copy is refused, not started (see the plan rules).
    pub stable_public_address: bool,
    /// Resource ids of the security groups, e.g. `sg/cluster`.
    pub security_groups: Vec<String>,
    /// Resource id of the key pair, e.g. `key/admin`.
    pub key: Option<String>,
    pub root_volume_gib: Option<u32>,
    pub instance_profile: Option<String>,
    #[serde(skip)]
    pub user_data: Option<Sensitive>,
    pub user_data_sha256: Option<String>,
    /// Set when the user-data is rendered during the run; `user_data` is then `None` until
    /// [`DesiredResource::with_user_data`] fills it in.
    #[serde(skip)]
    pub late_user_data: Option<LateUserData>,
    /// Resource ids whose nodes converge before this instance's (see [`DesiredInputs::after`]).
    #[serde(skip)]
    pub after: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ResourceSpec {
    /// DNS support and hostnames are always enabled.
    Vpc {
        cidr: String,
    },
    Subnet {
        cidr: String,
        zone: String,
        public: bool,
    },
    /// Attached to the VPC.
    InternetGateway,
    /// The public route table: 0.0.0.0/0 → the internet gateway, associated with `subnets`.
    RouteTable {
        subnets: Vec<String>,
    },
    SecurityGroup {
        group_name: String,
        description: String,
        ingress: BTreeSet<RuleKey>,
        egress: BTreeSet<RuleKey>,
        /// Rule descriptions (not compared; applied when a rule is added).
        #[serde(skip)]
        descriptions: BTreeMap<RuleKey, String>,
    },
    KeyPair {
        key_name: String,
        #[serde(skip)]
        public_key: Option<String>,
        public_key_sha256: Option<String>,
    },
    Instance(Box<InstanceSpec>),
}

impl ResourceSpec {
    /// The kind as used in resource ids: `vpc`, `subnet`, `igw`, `rtb`, `sg`, `key`, `instance`.
    pub fn kind(&self) -> &'static str {
        match self {
            ResourceSpec::Vpc { .. } => "vpc",
            ResourceSpec::Subnet { .. } => "subnet",
            ResourceSpec::InternetGateway => "igw",
            ResourceSpec::RouteTable { .. } => "rtb",
            ResourceSpec::SecurityGroup { .. } => "sg",
            ResourceSpec::KeyPair { .. } => "key",
            ResourceSpec::Instance(_) => "instance",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct DesiredResource {
    /// Stable id: `vpc`, `subnet/public-a`, `igw`, `rtb/public`, `sg/cluster`, `key/admin`,
    /// `instance/server/0`.
    pub id: String,
    /// Every tag the resource must carry, ownership tags and `Name` included.
    pub tags: BTreeMap<String, String>,
    pub spec: ResourceSpec,
}

impl DesiredResource {
    /// This instance with its late user-data rendered as `text`: the spec carries it and the
    /// hash tag says which it is, exactly as if it had been rendered up front.
    pub fn with_user_data(&self, text: String) -> DesiredResource {
        let mut out = self.clone();
        if let ResourceSpec::Instance(spec) = &mut out.spec {
            let sha = sha256_hex(text.as_bytes());
            out.tags.insert(TAG_USER_DATA_SHA256.into(), sha.clone());
            spec.user_data_sha256 = Some(sha);
            spec.user_data = Some(Sensitive(text));
            spec.late_user_data = None;
        }
        out
    }
}

/// The whole desired cloud of one environment, in dependency order.
#[derive(Clone, Debug, Serialize)]
pub struct DesiredCloud {
    /// The effective environment name (a drill copy's is suffixed); every tag derives from it.
    pub env_name: String,
    pub region: String,
    pub commit: String,
    pub allow_stop_modify_start: bool,
    pub resources: Vec<DesiredResource>,
}

impl DesiredCloud {
    pub fn get(&self, id: &str) -> Option<&DesiredResource> {
        self.resources.iter().find(|r| r.id == id)
    }

    /// The image lookups instances need resolved (each once).
    pub fn image_lookups(&self) -> BTreeSet<ImageSpec> {
        self.resources
            .iter()
            .filter_map(|r| match &r.spec {
                ResourceSpec::Instance(i) => Some(i.image.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Builds the desired cloud of `env_name` from the model. Pure: no I/O.
pub fn desired(cloud: &Cloud, env_name: &str, inputs: &DesiredInputs) -> DesiredCloud {
    let base = |id: &str, name: String| -> BTreeMap<String, String> {
        let mut tags = inputs.extra_tags.clone();
        tags.insert(TAG_NAME.into(), name);
        tags.insert(TAG_ENV.into(), env_name.into());
        tags.insert(TAG_RESOURCE.into(), id.into());
        tags.insert(TAG_COMMIT.into(), inputs.commit.clone());
        tags
    };
    let mut resources = Vec::new();
    resources.push(DesiredResource {
        id: "vpc".into(),
        tags: base("vpc", env_name.to_string()),
        spec: ResourceSpec::Vpc {
            cidr: cloud.network.cidr.to_string(),
        },
    });
    let public: Vec<String> = cloud
        .network
        .subnets
        .iter()
        .filter(|s| s.public)
        .map(|s| format!("subnet/{}", s.name))
        .collect();
    if !public.is_empty() {
        resources.push(DesiredResource {
            id: "igw".into(),
            tags: base("igw", env_name.to_string()),
            spec: ResourceSpec::InternetGateway,
        });
    }
    for s in &cloud.network.subnets {
        let id = format!("subnet/{}", s.name);
        resources.push(DesiredResource {
            tags: base(&id, format!("{env_name}-{}", s.name)),
            id,
            spec: ResourceSpec::Subnet {
                cidr: s.cidr.to_string(),
                zone: s.zone.clone(),
                public: s.public,
            },
        });
    }
    if !public.is_empty() {
        resources.push(DesiredResource {
            id: "rtb/public".into(),
            tags: base("rtb/public", format!("{env_name}-public")),
            spec: ResourceSpec::RouteTable { subnets: public },
        });
    }
    for g in &cloud.security_groups {
        let id = format!("sg/{}", g.name);
        let mut descriptions = BTreeMap::new();
        let mut keys = |rules: &[crate::env::model::Rule]| -> BTreeSet<RuleKey> {
            rules
                .iter()
                .map(|r| {
                    let k = RuleKey::from_model(r);
                    if let Some(d) = &r.description {
                        descriptions.insert(k.clone(), d.clone());
                    }
                    k
                })
                .collect()
        };
        let ingress = keys(&g.ingress);
        let egress = match &g.egress {
            Some(rules) => keys(rules),
            None => BTreeSet::from([RuleKey::allow_all_egress()]),
        };
        resources.push(DesiredResource {
            tags: base(&id, format!("{env_name}-{}", g.name)),
            id,
            spec: ResourceSpec::SecurityGroup {
                group_name: format!("{env_name}-{}", g.name),
                description: g.description.clone(),
                ingress,
                egress,
                descriptions,
            },
        });
    }
    let key_id = cloud.key_pair.as_ref().map(|k| format!("key/{}", k.name));
    if let (Some(kp), Some(id)) = (&cloud.key_pair, &key_id) {
        let public_key = inputs.key.as_ref().map(|k| k.public_key.trim().to_string());
        let sha = public_key.as_deref().map(|k| sha256_hex(k.as_bytes()));
        let mut tags = base(id, format!("{env_name}-{}", kp.name));
        if let Some(sha) = &sha {
            tags.insert(TAG_PUBLIC_KEY_SHA256.into(), sha.clone());
        }
        resources.push(DesiredResource {
            id: id.clone(),
            tags,
            spec: ResourceSpec::KeyPair {
                key_name: format!("{env_name}-{}", kp.name),
                public_key,
                public_key_sha256: sha,
            },
        });
    }
    for g in &cloud.instances {
        let role = match g.role {
            Role::Server => "server",
            Role::Agent => "agent",
            Role::None => "none",
        };
        let public_ip = cloud
            .network
            .subnets
            .iter()
            .any(|s| s.name == g.subnet && s.public);
        let user_data = inputs.user_data.get(&g.name).cloned();
        let late_user_data = inputs.late_user_data.get(&g.name).cloned();
        let after = inputs.after.get(&g.name).cloned().unwrap_or_default();
        let user_data_sha256 = user_data.as_deref().map(|u| sha256_hex(u.as_bytes()));
        for i in 0..g.count {
            let id = format!("instance/{}/{i}", g.name);
            let mut tags = inputs.extra_tags.clone();
            tags.extend(g.tags.clone());
            tags.insert(TAG_NAME.into(), format!("{env_name}-{}-{i}", g.name));
            tags.insert(TAG_ENV.into(), env_name.into());
            tags.insert(TAG_RESOURCE.into(), id.clone());
            tags.insert(TAG_COMMIT.into(), inputs.commit.clone());
            tags.insert(TAG_ROLE.into(), role.into());
            tags.insert(TAG_GROUP.into(), g.name.clone());
            if let Some(sha) = &user_data_sha256 {
                tags.insert(TAG_USER_DATA_SHA256.into(), sha.clone());
            }
            let image = match &g.image {
                Image::Id(id) => ImageSpec::Id(id.clone()),
                Image::Lookup {
                    owner,
                    name,
                    architecture,
                    ..
                } => ImageSpec::Lookup {
                    owner: owner.clone(),
                    name: name.clone(),
                    architecture: architecture.clone(),
                },
            };
            // Which lookup the instance's image came from: while it is the same lookup, a newer
            // match is only "available" (unless update: latest).
            if let Some(lookup) = image.lookup_tag() {
                tags.insert(TAG_IMAGE_LOOKUP.into(), lookup);
            }
            resources.push(DesiredResource {
                id,
                tags,
                spec: ResourceSpec::Instance(Box::new(InstanceSpec {
                    group: g.name.clone(),
                    index: i,
                    role: role.into(),
                    instance_type: g.instance_type.clone(),
                    image,
                    image_latest: matches!(
                        g.image,
                        Image::Lookup {
                            update: ImageUpdate::Latest,
                            ..
                        }
                    ),
                    subnet: format!("subnet/{}", g.subnet),
                    public_ip,
                    stable_public_address: g.role == Role::Server
                        && public_ip
                        && inputs.server_endpoint_public,
                    security_groups: g
                        .security_groups
                        .iter()
                        .map(|s| format!("sg/{s}"))
                        .collect(),
                    key: key_id.clone(),
                    root_volume_gib: g.root_volume_gib,
                    instance_profile: g.instance_profile.clone(),
                    user_data: user_data.clone().map(Sensitive),
                    user_data_sha256: user_data_sha256.clone(),
                    late_user_data: late_user_data.clone(),
                    after: after.clone(),
                })),
            });
        }
    }
    DesiredCloud {
        env_name: env_name.to_string(),
        region: cloud.region.clone(),
        commit: inputs.commit.clone(),
        allow_stop_modify_start: cloud.allow_stop_modify_start,
        resources,
    }
}
