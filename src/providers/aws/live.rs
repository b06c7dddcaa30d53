//! Live state: what exists in EC2 for one environment, found only by its ownership tags.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use aws_sdk_ec2::types::{Filter, InstanceStateName, VpcAttributeName};
use serde::Serialize;

use super::client::Ec2;
use super::desired::ImageSpec;
use super::error::AwsError;
use super::images::ResolvedImage;
use super::rules::RuleKey;
use super::tags::{self, filter, owner_filters, TAG_RESOURCE};

/// A route of a route table: destination → target (gateway, instance, NAT... id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LiveRoute {
    pub destination: String,
    pub target: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LiveAssociation {
    pub id: String,
    pub subnet_id: Option<String>,
    pub main: bool,
}

/// The observed settings of one resource, in the terms plan compares.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum LiveState {
    Vpc {
        cidr: String,
        dns_support: Option<bool>,
        dns_hostnames: Option<bool>,
    },
    Subnet {
        cidr: String,
        zone: String,
        vpc_id: String,
        map_public_ip: bool,
    },
    InternetGateway {
        attached_vpcs: Vec<String>,
    },
    RouteTable {
        vpc_id: String,
        routes: Vec<LiveRoute>,
        associations: Vec<LiveAssociation>,
    },
    /// Rules with group peers as raw group ids.
    SecurityGroup {
        group_name: String,
        vpc_id: String,
        ingress: BTreeSet<RuleKey>,
        egress: BTreeSet<RuleKey>,
        /// Rule descriptions (raw keys); some endpoints want them repeated to revoke a rule.
        #[serde(skip)]
        descriptions: BTreeMap<RuleKey, String>,
    },
    KeyPair {
        key_name: String,
        /// `key-...`: tags are set through this id, not the name.
        key_pair_id: Option<String>,
    },
    Instance {
        state: String,
        instance_type: String,
        image_id: String,
        subnet_id: Option<String>,
        vpc_id: Option<String>,
        security_groups: Vec<String>,
        key_name: Option<String>,
        private_ip: Option<String>,
        public_ip: Option<String>,
        /// RFC 3339 launch time, used to keep the oldest of duplicates.
        launch_time: Option<String>,
        /// The instance metadata service options; `None` when EC2 did not say.
        metadata: Option<LiveMetadata>,
    },
}

/// An instance's metadata service options as EC2 reports them (`MetadataOptions`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LiveMetadata {
    /// `required` (IMDSv2 only) or `optional` (IMDSv1 allowed).
    pub http_tokens: Option<String>,
    /// `HttpPutResponseHopLimit`: how many network hops a session token travels.
    pub hop_limit: Option<i32>,
    /// `enabled` or `disabled`.
    pub endpoint: Option<String>,
}

impl LiveState {
    pub fn kind(&self) -> &'static str {
        match self {
            LiveState::Vpc { .. } => "vpc",
            LiveState::Subnet { .. } => "subnet",
            LiveState::InternetGateway { .. } => "igw",
            LiveState::RouteTable { .. } => "rtb",
            LiveState::SecurityGroup { .. } => "sg",
            LiveState::KeyPair { .. } => "key",
            LiveState::Instance { .. } => "instance",
        }
    }
}

/// One live resource carrying phoenix's tags.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LiveResource {
    /// The `phoenix:resource` tag, e.g. `subnet/public-a`.
    pub resource: String,
    /// The AWS id (`vpc-...`, `subnet-...`, `i-...`; the key name for key pairs).
    pub aws_id: String,
    pub tags: BTreeMap<String, String>,
    pub state: LiveState,
}

/// Everything tagged for one environment. Terminated and shutting-down instances are left out.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LiveCloud {
    pub env_name: String,
    /// By resource id; more than one entry means duplicates (e.g. a lost response was retried).
    pub resources: BTreeMap<String, Vec<LiveResource>>,
    /// Image lookups resolved while observing (see [`super::plan_live`]).
    #[serde(skip)]
    pub images: HashMap<ImageSpec, ResolvedImage>,
}

impl LiveCloud {
    /// Number of live resources (duplicates counted).
    pub fn len(&self) -> usize {
        self.resources.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    pub fn get(&self, resource: &str) -> &[LiveResource] {
        self.resources
            .get(resource)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The live instance holding `resource`: a running one when there are duplicates (a retried
    /// launch), else the first; `None` when there is none.
    pub fn instance(&self, resource: &str) -> Option<&LiveResource> {
        let copies = self.get(resource);
        copies
            .iter()
            .find(|r| matches!(&r.state, LiveState::Instance { state, .. } if state == "running"))
            .or(copies.first())
    }

    /// AWS id → resource id, for mapping references (a subnet id on an instance, a group id in a
    /// rule) back to phoenix's names.
    pub fn aws_to_resource(&self) -> HashMap<String, String> {
        self.resources
            .values()
            .flatten()
            .map(|r| (r.aws_id.clone(), r.resource.clone()))
            .collect()
    }

    fn insert(&mut self, items: Vec<LiveResource>) {
        for r in items {
            self.resources
                .entry(r.resource.clone())
                .or_default()
                .push(r);
        }
    }
}

/// Attempts of a whole observation when EC2 keeps answering with a transient error code
/// (throttling such as `RequestLimitExceeded`, 5xx) or breaks the connection after the SDK's own
/// retries; the delays between them follow `engine::Policy::THROTTLED` (about 1, 2, 4, 8 s with
/// jitter), so a throttled account gets about 15 s more before the command reports the error.
/// An endpoint that does not answer at all is not retried here: the SDK's operation timeout
/// already bounds it, and waiting longer would not help.
pub const OBSERVE_ATTEMPTS: u32 = 5;

/// Reads every resource tagged `phoenix:env=<env_name>` (the describes run concurrently),
/// retrying throttling, 5xx and broken answers [`OBSERVE_ATTEMPTS`] times in all; anything else
/// is returned at once.
pub async fn observe(ec2: &Ec2, env_name: &str) -> Result<LiveCloud, AwsError> {
    let mut attempt = 1;
    loop {
        match observe_once(ec2, env_name).await {
            Err(
                AwsError::Service {
                    transient: true, ..
                }
                | AwsError::Response { .. },
            ) if attempt < OBSERVE_ATTEMPTS => {
                tokio::time::sleep(crate::engine::Policy::THROTTLED.delay(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn observe_once(ec2: &Ec2, env_name: &str) -> Result<LiveCloud, AwsError> {
    let (vpcs, subnets, igws, rtbs, sgs, keys, instances) = tokio::try_join!(
        vpcs(ec2, env_name, None),
        subnets(ec2, env_name, None),
        internet_gateways(ec2, env_name, None),
        route_tables(ec2, env_name, None),
        security_groups(ec2, env_name, None),
        key_pairs(ec2, env_name, None),
        instances(ec2, env_name, None),
    )?;
    let mut live = LiveCloud {
        env_name: env_name.to_string(),
        ..LiveCloud::default()
    };
    for items in [vpcs, subnets, igws, rtbs, sgs, keys, instances] {
        live.insert(items);
    }
    Ok(live)
}

/// The live resources of one kind (`vpc`, `subnet`, ...), optionally of one resource id.
pub(crate) async fn observe_kind(
    ec2: &Ec2,
    env: &str,
    kind: &str,
    resource: Option<&str>,
) -> Result<Vec<LiveResource>, AwsError> {
    match kind {
        "vpc" => vpcs(ec2, env, resource).await,
        "subnet" => subnets(ec2, env, resource).await,
        "igw" => internet_gateways(ec2, env, resource).await,
        "rtb" => route_tables(ec2, env, resource).await,
        "sg" => security_groups(ec2, env, resource).await,
        "key" => key_pairs(ec2, env, resource).await,
        "instance" => instances(ec2, env, resource).await,
        other => Err(AwsError::refused(
            format!("observing {other}"),
            "unknown resource kind",
        )),
    }
}

fn doing(env: &str, what: &str, resource: Option<&str>) -> String {
    match resource {
        Some(r) => format!("observing {r} of env {env}"),
        None => format!("observing the {what} of env {env}"),
    }
}

fn resource_tag(tags: &BTreeMap<String, String>) -> Option<String> {
    tags.get(TAG_RESOURCE).cloned()
}

pub(crate) async fn vpcs(
    ec2: &Ec2,
    env: &str,
    resource: Option<&str>,
) -> Result<Vec<LiveResource>, AwsError> {
    let d = doing(env, "VPCs", resource);
    let out = ec2
        .client()
        .describe_vpcs()
        .set_filters(Some(owner_filters(env, resource)))
        .send()
        .await
        .map_err(ec2.err(&d))?;
    let mut items = Vec::new();
    for v in out.vpcs() {
        let tags = tags::from_sdk(Some(v.tags()));
        let (Some(id), Some(res)) = (v.vpc_id(), resource_tag(&tags)) else {
            continue;
        };
        let (support, hostnames) = tokio::try_join!(
            vpc_attribute(ec2, id, VpcAttributeName::EnableDnsSupport, &d),
            vpc_attribute(ec2, id, VpcAttributeName::EnableDnsHostnames, &d),
        )?;
        items.push(LiveResource {
            resource: res,
            aws_id: id.to_string(),
            tags,
            state: LiveState::Vpc {
                cidr: v.cidr_block().unwrap_or_default().to_string(),
                dns_support: support,
                dns_hostnames: hostnames,
            },
        });
    }
    Ok(items)
}

async fn vpc_attribute(
    ec2: &Ec2,
    vpc_id: &str,
    attr: VpcAttributeName,
    doing: &str,
) -> Result<Option<bool>, AwsError> {
    let out = ec2
        .client()
        .describe_vpc_attribute()
        .vpc_id(vpc_id)
        .attribute(attr.clone())
        .send()
        .await
        .map_err(ec2.err(doing))?;
    Ok(match attr {
        VpcAttributeName::EnableDnsSupport => out.enable_dns_support().and_then(|a| a.value()),
        _ => out.enable_dns_hostnames().and_then(|a| a.value()),
    })
}

pub(crate) async fn subnets(
    ec2: &Ec2,
    env: &str,
    resource: Option<&str>,
) -> Result<Vec<LiveResource>, AwsError> {
    let d = doing(env, "subnets", resource);
    let out = ec2
        .client()
        .describe_subnets()
        .set_filters(Some(owner_filters(env, resource)))
        .send()
        .await
        .map_err(ec2.err(&d))?;
    Ok(out
        .subnets()
        .iter()
        .filter_map(|s| {
            let tags = tags::from_sdk(Some(s.tags()));
            Some(LiveResource {
                resource: resource_tag(&tags)?,
                aws_id: s.subnet_id()?.to_string(),
                state: LiveState::Subnet {
                    cidr: s.cidr_block().unwrap_or_default().to_string(),
                    zone: s.availability_zone().unwrap_or_default().to_string(),
                    vpc_id: s.vpc_id().unwrap_or_default().to_string(),
                    map_public_ip: s.map_public_ip_on_launch().unwrap_or(false),
                },
                tags,
            })
        })
        .collect())
}

pub(crate) async fn internet_gateways(
    ec2: &Ec2,
    env: &str,
    resource: Option<&str>,
) -> Result<Vec<LiveResource>, AwsError> {
    let d = doing(env, "internet gateways", resource);
    let out = ec2
        .client()
        .describe_internet_gateways()
        .set_filters(Some(owner_filters(env, resource)))
        .send()
        .await
        .map_err(ec2.err(&d))?;
    Ok(out
        .internet_gateways()
        .iter()
        .filter_map(|g| {
            let tags = tags::from_sdk(Some(g.tags()));
            Some(LiveResource {
                resource: resource_tag(&tags)?,
                aws_id: g.internet_gateway_id()?.to_string(),
                state: LiveState::InternetGateway {
                    attached_vpcs: g
                        .attachments()
                        .iter()
                        .filter_map(|a| a.vpc_id().map(str::to_string))
                        .collect(),
                },
                tags,
            })
        })
        .collect())
}

pub(crate) async fn route_tables(
    ec2: &Ec2,
    env: &str,
    resource: Option<&str>,
) -> Result<Vec<LiveResource>, AwsError> {
    let d = doing(env, "route tables", resource);
    let out = ec2
        .client()
        .describe_route_tables()
        .set_filters(Some(owner_filters(env, resource)))
        .send()
        .await
        .map_err(ec2.err(&d))?;
    Ok(out
        .route_tables()
        .iter()
        .filter_map(|t| {
            let tags = tags::from_sdk(Some(t.tags()));
            Some(LiveResource {
                resource: resource_tag(&tags)?,
                aws_id: t.route_table_id()?.to_string(),
                state: LiveState::RouteTable {
                    vpc_id: t.vpc_id().unwrap_or_default().to_string(),
                    routes: t.routes().iter().filter_map(route).collect(),
                    associations: t
                        .associations()
                        .iter()
                        .filter_map(|a| {
                            Some(LiveAssociation {
                                id: a.route_table_association_id()?.to_string(),
                                subnet_id: a.subnet_id().map(str::to_string),
                                main: a.main().unwrap_or(false),
                            })
                        })
                        .collect(),
                },
                tags,
            })
        })
        .collect())
}

fn route(r: &aws_sdk_ec2::types::Route) -> Option<LiveRoute> {
    let destination = r
        .destination_cidr_block()
        .or(r.destination_ipv6_cidr_block())
        .or(r.destination_prefix_list_id())?;
    let target = r
        .gateway_id()
        .or(r.nat_gateway_id())
        .or(r.instance_id())
        .or(r.network_interface_id())
        .or(r.transit_gateway_id())
        .or(r.vpc_peering_connection_id())
        .unwrap_or("unknown");
    Some(LiveRoute {
        destination: destination.to_string(),
        target: target.to_string(),
    })
}

pub(crate) async fn security_groups(
    ec2: &Ec2,
    env: &str,
    resource: Option<&str>,
) -> Result<Vec<LiveResource>, AwsError> {
    let d = doing(env, "security groups", resource);
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let out = ec2
            .client()
            .describe_security_groups()
            .set_filters(Some(owner_filters(env, resource)))
            .set_next_token(token.take())
            .send()
            .await
            .map_err(ec2.err(&d))?;
        let none = HashMap::new();
        items.extend(out.security_groups().iter().filter_map(|g| {
            let tags = tags::from_sdk(Some(g.tags()));
            Some(LiveResource {
                resource: resource_tag(&tags)?,
                aws_id: g.group_id()?.to_string(),
                state: LiveState::SecurityGroup {
                    group_name: g.group_name().unwrap_or_default().to_string(),
                    vpc_id: g.vpc_id().unwrap_or_default().to_string(),
                    ingress: RuleKey::from_sdk(g.ip_permissions(), &none),
                    egress: RuleKey::from_sdk(g.ip_permissions_egress(), &none),
                    descriptions: RuleKey::descriptions_from_sdk(g.ip_permissions())
                        .into_iter()
                        .chain(RuleKey::descriptions_from_sdk(g.ip_permissions_egress()))
                        .collect(),
                },
                tags,
            })
        }));
        match out.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => break,
        }
    }
    Ok(items)
}

pub(crate) async fn key_pairs(
    ec2: &Ec2,
    env: &str,
    resource: Option<&str>,
) -> Result<Vec<LiveResource>, AwsError> {
    let d = doing(env, "key pairs", resource);
    let out = ec2
        .client()
        .describe_key_pairs()
        .set_filters(Some(owner_filters(env, resource)))
        .send()
        .await
        .map_err(ec2.err(&d))?;
    Ok(out
        .key_pairs()
        .iter()
        .filter_map(|k| {
            let tags = tags::from_sdk(Some(k.tags()));
            let name = k.key_name()?.to_string();
            Some(LiveResource {
                resource: resource_tag(&tags)?,
                aws_id: name.clone(),
                state: LiveState::KeyPair {
                    key_name: name,
                    key_pair_id: k.key_pair_id().map(str::to_string),
                },
                tags,
            })
        })
        .collect())
}

/// Every instance of `env` (and `resource`) in one of `states`, all pages.
async fn described_instances(
    ec2: &Ec2,
    env: &str,
    resource: Option<&str>,
    states: &[&str],
    doing: &str,
) -> Result<Vec<aws_sdk_ec2::types::Instance>, AwsError> {
    let mut filters: Vec<Filter> = owner_filters(env, resource);
    let mut state = Filter::builder().name("instance-state-name");
    for s in states {
        state = state.values(*s);
    }
    filters.push(state.build());
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let out = ec2
            .client()
            .describe_instances()
            .set_filters(Some(filters.clone()))
            .set_next_token(token.take())
            .send()
            .await
            .map_err(ec2.err(doing))?;
        for reservation in out.reservations() {
            items.extend(reservation.instances().iter().cloned());
        }
        match out.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => break,
        }
    }
    Ok(items)
}

/// Instances that are not terminated or shutting down.
pub(crate) async fn instances(
    ec2: &Ec2,
    env: &str,
    resource: Option<&str>,
) -> Result<Vec<LiveResource>, AwsError> {
    let d = doing(env, "instances", resource);
    let states = ["pending", "running", "stopping", "stopped"];
    Ok(described_instances(ec2, env, resource, &states, &d)
        .await?
        .iter()
        .filter_map(instance)
        .collect())
}

/// Instances of `env` that are `shutting-down` or `terminated` (EC2 lists them for about an
/// hour): (resource id, instance id, state). [`observe`] leaves them out; drift names them.
pub async fn gone_instances(
    ec2: &Ec2,
    env: &str,
) -> Result<Vec<(String, String, String)>, AwsError> {
    let d = doing(env, "terminated instances", None);
    let found = described_instances(ec2, env, None, &["shutting-down", "terminated"], &d).await?;
    Ok(found
        .iter()
        .filter_map(|i| {
            let tags = tags::from_sdk(Some(i.tags()));
            let state = i
                .state()
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_string())
                .unwrap_or_else(|| "terminated".into());
            Some((
                tags.get(TAG_RESOURCE)?.clone(),
                i.instance_id()?.to_string(),
                state,
            ))
        })
        .collect())
}

pub(crate) fn instance(i: &aws_sdk_ec2::types::Instance) -> Option<LiveResource> {
    let tags = tags::from_sdk(Some(i.tags()));
    let state = i
        .state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_string())
        .unwrap_or_else(|| "unknown".into());
    if state == InstanceStateName::Terminated.as_str()
        || state == InstanceStateName::ShuttingDown.as_str()
    {
        return None;
    }
    Some(LiveResource {
        resource: resource_tag(&tags)?,
        aws_id: i.instance_id()?.to_string(),
        state: LiveState::Instance {
            state,
            instance_type: i
                .instance_type()
                .map(|t| t.as_str().to_string())
                .unwrap_or_default(),
            image_id: i.image_id().unwrap_or_default().to_string(),
            subnet_id: i.subnet_id().map(str::to_string),
            vpc_id: i.vpc_id().map(str::to_string),
            security_groups: i
                .security_groups()
                .iter()
                .filter_map(|g| g.group_id().map(str::to_string))
                .collect(),
            key_name: i.key_name().map(str::to_string),
            private_ip: i.private_ip_address().map(str::to_string),
            public_ip: i.public_ip_address().map(str::to_string),
            launch_time: i.launch_time().and_then(|t| {
                t.fmt(aws_sdk_ec2::primitives::DateTimeFormat::DateTime)
                    .ok()
            }),
            metadata: i.metadata_options().map(|m| LiveMetadata {
                http_tokens: m.http_tokens().map(|t| t.as_str().to_string()),
                hop_limit: m.http_put_response_hop_limit(),
                endpoint: m.http_endpoint().map(|e| e.as_str().to_string()),
            }),
        },
        tags,
    })
}

/// Untagged (foreign) resources inside a VPC, named for the error that refuses to delete it.
pub(crate) async fn foreign_in_vpc(
    ec2: &Ec2,
    env: &str,
    vpc_id: &str,
    doing: &str,
) -> Result<Vec<String>, AwsError> {
    let by_vpc = || vec![filter("vpc-id", vpc_id)];
    let c = ec2.client();
    let (subnets, sgs, rtbs, instances, igws, enis, endpoints) = tokio::try_join!(
        async {
            c.describe_subnets()
                .set_filters(Some(by_vpc()))
                .send()
                .await
                .map_err(ec2.err(doing))
        },
        async {
            c.describe_security_groups()
                .set_filters(Some(by_vpc()))
                .send()
                .await
                .map_err(ec2.err(doing))
        },
        async {
            c.describe_route_tables()
                .set_filters(Some(by_vpc()))
                .send()
                .await
                .map_err(ec2.err(doing))
        },
        async {
            c.describe_instances()
                .set_filters(Some(by_vpc()))
                .send()
                .await
                .map_err(ec2.err(doing))
        },
        async {
            c.describe_internet_gateways()
                .filters(filter("attachment.vpc-id", vpc_id))
                .send()
                .await
                .map_err(ec2.err(doing))
        },
        // What makes DeleteVpc answer DependencyViolation without anything above in it: the
        // network interfaces of load balancers, Lambda functions, NAT gateways, endpoints...
        async {
            c.describe_network_interfaces()
                .set_filters(Some(by_vpc()))
                .send()
                .await
                .map_err(ec2.err(doing))
        },
        async {
            c.describe_vpc_endpoints()
                .set_filters(Some(by_vpc()))
                .send()
                .await
                .map_err(ec2.err(doing))
        },
    )?;
    let mine = |t: &[aws_sdk_ec2::types::Tag]| tags::owned_by(&tags::from_sdk(Some(t)), env);
    let mut foreign = Vec::new();
    for s in subnets.subnets() {
        if !mine(s.tags()) {
            foreign.push(format!("subnet {}", s.subnet_id().unwrap_or("?")));
        }
    }
    for g in sgs.security_groups() {
        // Every VPC has a default group; it goes with the VPC.
        if g.group_name() != Some("default") && !mine(g.tags()) {
            foreign.push(format!("security group {}", g.group_id().unwrap_or("?")));
        }
    }
    for t in rtbs.route_tables() {
        let main = t.associations().iter().any(|a| a.main() == Some(true));
        if !main && !mine(t.tags()) {
            foreign.push(format!("route table {}", t.route_table_id().unwrap_or("?")));
        }
    }
    // Interfaces of any instance are the instance's (named above if foreign, deleted with it
    // if phoenix's); every other interface blocks the VPC and is named.
    let mut instance_ids = std::collections::BTreeSet::new();
    for r in instances.reservations() {
        for i in r.instances() {
            instance_ids.extend(i.instance_id().map(str::to_string));
            let gone = i
                .state()
                .and_then(|s| s.name())
                .is_some_and(|n| *n == InstanceStateName::Terminated);
            if !gone && !mine(i.tags()) {
                foreign.push(format!("instance {}", i.instance_id().unwrap_or("?")));
            }
        }
    }
    for n in enis.network_interfaces() {
        let of_instance = n
            .attachment()
            .and_then(|a| a.instance_id())
            .is_some_and(|id| instance_ids.contains(id));
        if of_instance || mine(n.tag_set()) {
            continue;
        }
        let what = [
            n.description().filter(|d| !d.is_empty()),
            n.requester_id().map(|r| r.trim()).filter(|r| !r.is_empty()),
            n.interface_type().map(|t| t.as_str()),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ");
        foreign.push(if what.is_empty() {
            format!(
                "network interface {}",
                n.network_interface_id().unwrap_or("?")
            )
        } else {
            format!(
                "network interface {} ({what})",
                n.network_interface_id().unwrap_or("?")
            )
        });
    }
    for e in endpoints.vpc_endpoints() {
        let deleted = e.state().is_some_and(|s| {
            matches!(
                s.as_str().to_ascii_lowercase().as_str(),
                "deleted" | "deleting"
            )
        });
        if !deleted && !mine(e.tags()) {
            foreign.push(format!(
                "VPC endpoint {} ({})",
                e.vpc_endpoint_id().unwrap_or("?"),
                e.service_name().unwrap_or("?")
            ));
        }
    }
    for g in igws.internet_gateways() {
        if !mine(g.tags()) {
            foreign.push(format!(
                "internet gateway {}",
                g.internet_gateway_id().unwrap_or("?")
            ));
        }
    }
    Ok(foreign)
}

/// A drill or ephemeral copy, found by the tags on its VPC (created first, deleted last).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CopyInfo {
    /// The copy's effective env name.
    pub env: String,
    pub base_env: Option<String>,
    pub copy: Option<String>,
    pub created: Option<String>,
    pub expires: Option<String>,
    pub commit: Option<String>,
    pub vpc_id: String,
}

/// Every copy in the client's region: VPCs carrying phoenix's env and expiry tags.
pub async fn copies(ec2: &Ec2) -> Result<Vec<CopyInfo>, AwsError> {
    let d = "listing the drill and ephemeral copies (VPCs tagged phoenix:expires)".to_string();
    let filters = vec![
        Filter::builder()
            .name("tag-key")
            .values(tags::TAG_EXPIRES)
            .build(),
        Filter::builder()
            .name("tag-key")
            .values(tags::TAG_ENV)
            .build(),
    ];
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = ec2
            .client()
            .describe_vpcs()
            .set_filters(Some(filters.clone()))
            .set_next_token(token.take())
            .send()
            .await
            .map_err(ec2.err(&d))?;
        for vpc in page.vpcs() {
            let t = tags::from_sdk(Some(vpc.tags()));
            // Checked here too: not every EC2 implementation honours `tag-key` filters.
            let (Some(env), true) = (t.get(tags::TAG_ENV), t.contains_key(tags::TAG_EXPIRES))
            else {
                continue;
            };
            out.push(CopyInfo {
                env: env.clone(),
                base_env: t.get(tags::TAG_BASE_ENV).cloned(),
                copy: t.get(tags::TAG_COPY).cloned(),
                created: t.get(tags::TAG_CREATED).cloned(),
                expires: t.get(tags::TAG_EXPIRES).cloned(),
                commit: t.get(tags::TAG_COMMIT).cloned(),
                vpc_id: vpc.vpc_id().unwrap_or_default().to_string(),
            });
        }
        match page.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => break,
        }
    }
    out.sort_by(|a, b| a.env.cmp(&b.env));
    Ok(out)
}
