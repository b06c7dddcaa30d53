//! Executors: one idempotent attempt at converging or deleting one resource. Each attempt first
//! re-observes the resource by its tags, so a retry or a re-run after a crash never creates it
//! twice; everything is tagged at creation (TagSpecifications), so nothing exists untagged.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aws_sdk_ec2::types::{
    AttributeBooleanValue, BlockDeviceMapping, EbsBlockDevice, HttpTokensState,
    IamInstanceProfileSpecification, InstanceMetadataEndpointState, InstanceMetadataOptionsRequest,
    InstanceStateName, InstanceType, ResourceType, SummaryStatus, VolumeType,
};

use super::client::Ec2;
use super::desired::{DesiredCloud, DesiredResource, InstanceSpec, ResourceSpec};
use super::error::{AwsError, Bounded, BOUNDED_ATTEMPTS};
use super::images::ImageCache;
use super::live::{self, observe_kind, LiveResource, LiveState};
use super::plan::{
    rank, ChangeAction, CompareCtx, FieldChange, Verdict, IMDS_ENDPOINT, IMDS_HOP_LIMIT,
    IMDS_HTTP_TOKENS,
};
use super::rules::{RuleKey, RulePeer};
use super::tags::{self, filter, TAG_COMMIT};
use crate::engine::{Check, NodeCtx, NodeError, NodeOutcome};
use crate::providers::sha256_hex;

/// Waits and polls of the cloud layer (the engine owns the overall node deadline).
#[derive(Clone, Debug)]
pub struct ConvergeOptions {
    /// Deadline of each node over all its attempts.
    pub node_timeout: Duration,
    /// How long an instance may take to be running with status checks ok.
    pub instance_ready_timeout: Duration,
    /// How long a deleted instance may take to be terminated (and a stop to complete).
    pub instance_stop_timeout: Duration,
    /// Interval between polls of a wait.
    pub poll_interval: Duration,
}

impl Default for ConvergeOptions {
    fn default() -> Self {
        ConvergeOptions {
            node_timeout: Duration::from_secs(900),
            instance_ready_timeout: Duration::from_secs(600),
            instance_stop_timeout: Duration::from_secs(600),
            poll_interval: Duration::from_secs(2),
        }
    }
}

/// Resource id → AWS id of what nodes of this run converged, so dependents need no extra lookup.
#[derive(Default, Debug)]
pub(crate) struct RunIds {
    map: Mutex<HashMap<String, String>>,
}

impl RunIds {
    fn get(&self, resource: &str) -> Option<String> {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(resource)
            .cloned()
    }

    fn set(&self, resource: &str, aws_id: &str) {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(resource.to_string(), aws_id.to_string());
    }
}

/// Everything an executor needs; shared by all nodes of one run.
pub(crate) struct Exec {
    pub ec2: Ec2,
    pub env: String,
    pub commit: String,
    pub desired: Option<Arc<DesiredCloud>>,
    pub ids: RunIds,
    pub images: ImageCache,
    pub opts: ConvergeOptions,
}

type Res<T> = Result<T, AwsError>;

fn kind_of(resource: &str) -> &str {
    resource.split('/').next().unwrap_or(resource)
}

impl Exec {
    fn desired_resource(&self, resource: &str) -> Res<&DesiredResource> {
        self.desired
            .as_deref()
            .and_then(|d| d.get(resource))
            .ok_or_else(|| {
                AwsError::refused(format!("converging {resource}"), "not in the desired state")
            })
    }

    /// The AWS id of a dependency: from this run, else found by its tags.
    async fn aws_id(&self, resource: &str, doing: &str) -> Res<String> {
        if let Some(id) = self.ids.get(resource) {
            return Ok(id);
        }
        let mut copies =
            observe_kind(&self.ec2, &self.env, kind_of(resource), Some(resource)).await?;
        copies.sort_by(|a, b| a.aws_id.cmp(&b.aws_id));
        let Some(first) = copies.first() else {
            return Err(AwsError::not_ready(
                doing,
                format!("{resource} does not exist yet"),
            ));
        };
        self.ids.set(resource, &first.aws_id);
        Ok(first.aws_id.clone())
    }

    /// AWS id → resource id for the given dependencies (and the resource's own copies).
    async fn reference_map(
        &self,
        deps: &[String],
        own: &[LiveResource],
        doing: &str,
    ) -> Res<HashMap<String, String>> {
        let mut map = HashMap::new();
        for d in deps {
            let id = self.aws_id(d, doing).await?;
            map.insert(id, d.clone());
        }
        for c in own {
            map.insert(c.aws_id.clone(), c.resource.clone());
        }
        Ok(map)
    }

    fn compare_ctx<'a>(
        &self,
        to_resource: &'a HashMap<String, String>,
        images: &'a HashMap<super::desired::ImageSpec, super::images::ResolvedImage>,
    ) -> CompareCtx<'a> {
        CompareCtx {
            to_resource,
            images,
            allow_stop_modify_start: self
                .desired
                .as_deref()
                .is_some_and(|d| d.allow_stop_modify_start),
        }
    }

    // ---------------------------------------------------------------- converge

    /// One attempt at converging `resource` (not its security-group rules: see [`Exec::rules`]).
    pub(crate) async fn converge(&self, ctx: &NodeCtx, resource: &str) -> Res<NodeOutcome> {
        let d = self.desired_resource(resource)?;
        match &d.spec {
            ResourceSpec::Instance(spec) => self.instance(ctx, d, spec).await,
            _ => self.network(ctx, d).await,
        }
    }

    fn deps_of(&self, d: &DesiredResource) -> Vec<String> {
        match &d.spec {
            ResourceSpec::Vpc { .. } | ResourceSpec::KeyPair { .. } => vec![],
            ResourceSpec::Subnet { .. }
            | ResourceSpec::InternetGateway
            | ResourceSpec::SecurityGroup { .. } => vec!["vpc".into()],
            ResourceSpec::RouteTable { subnets } => {
                let mut deps = vec!["vpc".to_string(), "igw".to_string()];
                deps.extend(subnets.iter().cloned());
                deps
            }
            ResourceSpec::Instance(_) => vec![],
        }
    }

    async fn network(&self, ctx: &NodeCtx, d: &DesiredResource) -> Res<NodeOutcome> {
        let kind = d.spec.kind();
        let doing = format!("converging {}", d.id);
        let copies = observe_kind(&self.ec2, &self.env, kind, Some(&d.id)).await?;
        let map = self
            .reference_map(&self.deps_of(d), &copies, &doing)
            .await?;
        let no_images = HashMap::new();
        let cctx = self.compare_ctx(&map, &no_images);
        let mut ranked = rank(d, &copies, &cctx);
        if kind == "sg" {
            // The rules are the rules node's business; the group node owns existence and tags.
            for (_, v) in ranked.iter_mut() {
                v.fields
                    .retain(|f| f.field != "ingress" && f.field != "egress");
                if v.action == ChangeAction::Update && v.fields.is_empty() {
                    v.action = ChangeAction::Unchanged;
                }
            }
        }
        if kind == "vpc" && ranked.len() > 1 {
            // Of duplicate VPCs keep the one the rest of the environment was built in.
            let subnets = observe_kind(&self.ec2, &self.env, "subnet", None).await?;
            let in_vpc = |vpc: &str| {
                subnets
                    .iter()
                    .filter(
                        |s| matches!(&s.state, LiveState::Subnet { vpc_id, .. } if vpc_id == vpc),
                    )
                    .count()
            };
            ranked.sort_by_key(|(l, v)| {
                (
                    v.action == ChangeAction::Replace,
                    std::cmp::Reverse(in_vpc(&l.aws_id)),
                )
            });
        }
        let mut extras_deleted = false;
        // Duplicates (a create whose answer was lost and retried) go first, so that e.g. a
        // subnet can be associated with the one route table that stays.
        for (extra, _) in ranked.iter().skip(1) {
            ctx.progress(format!("deleting duplicate {} {}", d.id, extra.aws_id));
            self.delete_copy(ctx, extra).await?;
            extras_deleted = true;
        }
        let outcome = match ranked.first() {
            None => {
                ctx.progress(format!("creating {}", d.id));
                let id = self.create_network(d, &map).await?;
                self.ids.set(&d.id, &id);
                NodeOutcome::Created
            }
            Some((live, verdict)) => match verdict.action {
                ChangeAction::Replace => {
                    if matches!(
                        d.spec,
                        ResourceSpec::RouteTable { .. } | ResourceSpec::KeyPair { .. }
                    ) {
                        ctx.progress(format!("replacing {}", d.id));
                        self.delete_copy(ctx, live).await?;
                        let id = self.create_network(d, &map).await?;
                        self.ids.set(&d.id, &id);
                        NodeOutcome::Replaced
                    } else {
                        let fields: Vec<String> =
                            verdict.fields.iter().map(ToString::to_string).collect();
                        return Err(AwsError::refused(
                            format!("converging {}", d.id),
                            format!(
                                "it must be replaced ({}): {}; phoenix does not replace network resources that others depend on — rename it in Git (a new id is created and the old one pruned once nothing uses it) or run `phoenix destroy` and rebuild",
                                fields.join(", "),
                                verdict.reason.as_deref().unwrap_or("cannot change in place"),
                            ),
                        ));
                    }
                }
                ChangeAction::Update => {
                    self.ids.set(&d.id, &live.aws_id);
                    ctx.progress(format!("updating {}", d.id));
                    self.update_network(d, live, verdict, &map).await?;
                    NodeOutcome::Updated
                }
                _ => {
                    self.ids.set(&d.id, &live.aws_id);
                    if extras_deleted {
                        NodeOutcome::Updated
                    } else {
                        NodeOutcome::Unchanged
                    }
                }
            },
        };
        Ok(outcome)
    }

    fn dep_id(&self, map: &HashMap<String, String>, resource: &str, doing: &str) -> Res<String> {
        map.iter()
            .find(|(_, r)| r.as_str() == resource)
            .map(|(id, _)| id.clone())
            .ok_or_else(|| AwsError::not_ready(doing, format!("{resource} does not exist yet")))
    }

    async fn create_network(
        &self,
        d: &DesiredResource,
        map: &HashMap<String, String>,
    ) -> Res<String> {
        let c = self.ec2.client();
        let doing = format!("creating {}", d.id);
        let missing = |what: &str| AwsError::not_ready(&doing, format!("EC2 returned no {what}"));
        match &d.spec {
            ResourceSpec::Vpc { cidr } => {
                let out = match c
                    .create_vpc()
                    .cidr_block(cidr)
                    .tag_specifications(tags::spec(ResourceType::Vpc, &d.tags))
                    .send()
                    .await
                    .map_err(self.ec2.err(&doing))
                {
                    Ok(out) => out,
                    Err(e) if e.code() == Some("VpcLimitExceeded") => {
                        return Err(self.vpcs_in_use(&doing, e).await)
                    }
                    Err(e) => return Err(e),
                };
                let id = out
                    .vpc()
                    .and_then(|v| v.vpc_id())
                    .ok_or_else(|| missing("VPC id"))?;
                self.vpc_dns(id, &doing).await?;
                Ok(id.to_string())
            }
            ResourceSpec::Subnet { cidr, zone, public } => {
                let vpc = self.dep_id(map, "vpc", &doing)?;
                let out = c
                    .create_subnet()
                    .vpc_id(vpc)
                    .cidr_block(cidr)
                    .availability_zone(zone)
                    .tag_specifications(tags::spec(ResourceType::Subnet, &d.tags))
                    .send()
                    .await
                    .map_err(self.ec2.err(&doing))?;
                let id = out
                    .subnet()
                    .and_then(|s| s.subnet_id())
                    .ok_or_else(|| missing("subnet id"))?;
                if *public {
                    self.map_public_ip(id, true, &doing).await?;
                }
                Ok(id.to_string())
            }
            ResourceSpec::InternetGateway => {
                let vpc = self.dep_id(map, "vpc", &doing)?;
                let out = c
                    .create_internet_gateway()
                    .tag_specifications(tags::spec(ResourceType::InternetGateway, &d.tags))
                    .send()
                    .await
                    .map_err(self.ec2.err(&doing))?;
                let id = out
                    .internet_gateway()
                    .and_then(|g| g.internet_gateway_id())
                    .ok_or_else(|| missing("internet gateway id"))?;
                c.attach_internet_gateway()
                    .internet_gateway_id(id)
                    .vpc_id(vpc)
                    .send()
                    .await
                    .map_err(self.ec2.err(&doing))?;
                Ok(id.to_string())
            }
            ResourceSpec::RouteTable { subnets } => {
                let vpc = self.dep_id(map, "vpc", &doing)?;
                let igw = self.dep_id(map, "igw", &doing)?;
                let out = c
                    .create_route_table()
                    .vpc_id(vpc)
                    .tag_specifications(tags::spec(ResourceType::RouteTable, &d.tags))
                    .send()
                    .await
                    .map_err(self.ec2.err(&doing))?;
                let id = out
                    .route_table()
                    .and_then(|t| t.route_table_id())
                    .ok_or_else(|| missing("route table id"))?;
                c.create_route()
                    .route_table_id(id)
                    .destination_cidr_block("0.0.0.0/0")
                    .gateway_id(igw)
                    .send()
                    .await
                    .map_err(self.ec2.err(&doing))?;
                for s in subnets {
                    let subnet = self.dep_id(map, s, &doing)?;
                    c.associate_route_table()
                        .route_table_id(id)
                        .subnet_id(subnet)
                        .send()
                        .await
                        .map_err(self.ec2.err(&format!("{doing}: associating {s}")))?;
                }
                Ok(id.to_string())
            }
            ResourceSpec::SecurityGroup {
                group_name,
                description,
                ..
            } => {
                let vpc = self.dep_id(map, "vpc", &doing)?;
                let sent = c
                    .create_security_group()
                    .group_name(group_name)
                    .description(description)
                    .vpc_id(&vpc)
                    .tag_specifications(tags::spec(ResourceType::SecurityGroup, &d.tags))
                    .send()
                    .await;
                match sent {
                    Ok(out) => Ok(out
                        .group_id()
                        .ok_or_else(|| missing("group id"))?
                        .to_string()),
                    Err(e) => {
                        let e = self.ec2.err(&doing)(e);
                        if e.code() == Some("InvalidGroup.Duplicate") {
                            return Err(self.duplicate_group(&vpc, group_name, &doing).await);
                        }
                        Err(e)
                    }
                }
            }
            ResourceSpec::KeyPair {
                key_name,
                public_key,
                ..
            } => {
                let Some(public_key) = public_key else {
                    return Err(AwsError::refused(
                        doing,
                        "no public key was supplied (providers::aws::key_material resolves or generates it)",
                    ));
                };
                let sent = c
                    .import_key_pair()
                    .key_name(key_name)
                    .public_key_material(aws_sdk_ec2::primitives::Blob::new(public_key.as_bytes()))
                    .tag_specifications(tags::spec(ResourceType::KeyPair, &d.tags))
                    .send()
                    .await;
                match sent {
                    Ok(_) => Ok(key_name.clone()),
                    Err(e) => {
                        let e = self.ec2.err(&doing)(e);
                        if e.code() == Some("InvalidKeyPair.Duplicate") {
                            return Err(AwsError::refused(
                                doing,
                                format!("a key pair named {key_name} exists without phoenix's tags for this environment; phoenix does not touch it (delete or rename it)"),
                            ));
                        }
                        Err(e)
                    }
                }
            }
            ResourceSpec::Instance(_) => Err(AwsError::refused(
                doing,
                "instances are not network resources",
            )),
        }
    }

    /// After `InvalidGroup.Duplicate`: our own group whose tag lookup lagged (retry), or a
    /// foreign group with phoenix's name (refuse).
    async fn duplicate_group(&self, vpc: &str, name: &str, doing: &str) -> AwsError {
        let found = self
            .ec2
            .client()
            .describe_security_groups()
            .filters(filter("vpc-id", vpc))
            .filters(filter("group-name", name))
            .send()
            .await;
        let owned = found.ok().is_some_and(|out| {
            out.security_groups()
                .iter()
                .any(|g| tags::owned_by(&tags::from_sdk(Some(g.tags())), &self.env))
        });
        if owned {
            AwsError::not_ready(
                doing,
                format!("security group {name} exists but is not visible by its tags yet"),
            )
        } else {
            AwsError::refused(
                doing,
                format!("a security group named {name} already exists in the VPC without phoenix's tags; phoenix does not touch it"),
            )
        }
    }

    async fn vpc_dns(&self, vpc: &str, doing: &str) -> Res<()> {
        let c = self.ec2.client();
        let on = || AttributeBooleanValue::builder().value(true).build();
        c.modify_vpc_attribute()
            .vpc_id(vpc)
            .enable_dns_support(on())
            .send()
            .await
            .map_err(self.ec2.err(doing))?;
        c.modify_vpc_attribute()
            .vpc_id(vpc)
            .enable_dns_hostnames(on())
            .send()
            .await
            .map_err(self.ec2.err(doing))?;
        Ok(())
    }

    async fn map_public_ip(&self, subnet: &str, value: bool, doing: &str) -> Res<()> {
        self.ec2
            .client()
            .modify_subnet_attribute()
            .subnet_id(subnet)
            .map_public_ip_on_launch(AttributeBooleanValue::builder().value(value).build())
            .send()
            .await
            .map_err(self.ec2.err(doing))?;
        Ok(())
    }

    async fn update_network(
        &self,
        d: &DesiredResource,
        live: &LiveResource,
        verdict: &Verdict,
        map: &HashMap<String, String>,
    ) -> Res<()> {
        let doing = format!("updating {}", d.id);
        let c = self.ec2.client();
        let has = |name: &str| verdict.fields.iter().any(|f| f.field == name);
        match (&d.spec, &live.state) {
            (ResourceSpec::Vpc { .. }, _) if has("dns-support") || has("dns-hostnames") => {
                self.vpc_dns(&live.aws_id, &doing).await?;
            }
            (ResourceSpec::Subnet { public, .. }, _) if has("map-public-ip") => {
                self.map_public_ip(&live.aws_id, *public, &doing).await?;
            }
            (ResourceSpec::InternetGateway, LiveState::InternetGateway { attached_vpcs })
                if has("attachment") =>
            {
                let vpc = self.dep_id(map, "vpc", &doing)?;
                for other in attached_vpcs {
                    c.detach_internet_gateway()
                        .internet_gateway_id(&live.aws_id)
                        .vpc_id(other)
                        .send()
                        .await
                        .map_err(self.ec2.err(&doing))?;
                }
                c.attach_internet_gateway()
                    .internet_gateway_id(&live.aws_id)
                    .vpc_id(vpc)
                    .send()
                    .await
                    .map_err(self.ec2.err(&doing))?;
            }
            (
                ResourceSpec::RouteTable { .. },
                LiveState::RouteTable {
                    routes,
                    associations,
                    ..
                },
            ) => {
                let igw = self.dep_id(map, "igw", &doing)?;
                for f in &verdict.fields {
                    match (f.field.as_str(), &f.desired, &f.live) {
                        ("route", Some(_), None) => {
                            c.create_route()
                                .route_table_id(&live.aws_id)
                                .destination_cidr_block("0.0.0.0/0")
                                .gateway_id(&igw)
                                .send()
                                .await
                                .map_err(self.ec2.err(&doing))?;
                        }
                        ("route 0.0.0.0/0", _, _)
                            if routes.iter().any(|r| r.destination == "0.0.0.0/0") =>
                        {
                            c.replace_route()
                                .route_table_id(&live.aws_id)
                                .destination_cidr_block("0.0.0.0/0")
                                .gateway_id(&igw)
                                .send()
                                .await
                                .map_err(self.ec2.err(&doing))?;
                        }
                        ("association", Some(subnet), None) => {
                            let id = self.dep_id(map, subnet, &doing)?;
                            c.associate_route_table()
                                .route_table_id(&live.aws_id)
                                .subnet_id(id)
                                .send()
                                .await
                                .map_err(self.ec2.err(&format!("{doing}: associating {subnet}")))?;
                        }
                        ("association", None, Some(subnet)) => {
                            let ids: Vec<&String> = map
                                .iter()
                                .filter(|(_, r)| *r == subnet)
                                .map(|(id, _)| id)
                                .collect();
                            for a in associations {
                                if a.subnet_id.as_ref().is_some_and(|s| ids.contains(&s)) {
                                    self.disassociate(&a.id, &doing).await?;
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        self.update_tags(d, live, &verdict.fields).await
    }

    /// Sets changed tags (and the current commit), removes stale `phoenix:` tags.
    async fn update_tags(
        &self,
        d: &DesiredResource,
        live: &LiveResource,
        fields: &[FieldChange],
    ) -> Res<()> {
        let tag_fields: Vec<&FieldChange> = fields
            .iter()
            .filter(|f| f.field.starts_with("tag "))
            .collect();
        if tag_fields.is_empty() {
            return Ok(());
        }
        let doing = format!("tagging {}", d.id);
        let target = match &live.state {
            LiveState::KeyPair { key_pair_id, .. } => key_pair_id
                .clone()
                .ok_or_else(|| AwsError::not_ready(&doing, "EC2 returned no key pair id"))?,
            _ => live.aws_id.clone(),
        };
        let mut set = BTreeMap::new();
        let mut remove = Vec::new();
        for f in tag_fields {
            let key = f.field.trim_start_matches("tag ").to_string();
            match &f.desired {
                Some(v) => {
                    set.insert(key, v.clone());
                }
                None => remove.push(key),
            }
        }
        set.insert(TAG_COMMIT.to_string(), self.commit.clone());
        let c = self.ec2.client();
        c.create_tags()
            .resources(&target)
            .set_tags(Some(tags::to_sdk(&set)))
            .send()
            .await
            .map_err(self.ec2.err(&doing))?;
        if !remove.is_empty() {
            c.delete_tags()
                .resources(&target)
                .set_tags(Some(
                    remove
                        .iter()
                        .map(|k| aws_sdk_ec2::types::Tag::builder().key(k).build())
                        .collect(),
                ))
                .send()
                .await
                .map_err(self.ec2.err(&doing))?;
        }
        Ok(())
    }

    async fn disassociate(&self, association: &str, doing: &str) -> Res<()> {
        match self
            .ec2
            .client()
            .disassociate_route_table()
            .association_id(association)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = self.ec2.err(doing)(e);
                if e.code() == Some("InvalidAssociationID.NotFound") {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// One attempt at the rules of security group `resource` (authorize missing, revoke extra).
    pub(crate) async fn rules(&self, ctx: &NodeCtx, resource: &str) -> Res<NodeOutcome> {
        let d = self.desired_resource(resource)?;
        let ResourceSpec::SecurityGroup {
            ingress,
            egress,
            descriptions,
            ..
        } = &d.spec
        else {
            return Err(AwsError::refused(
                format!("converging {resource} rules"),
                "not a security group",
            ));
        };
        let doing = format!("updating the rules of {resource}");
        let group = self.aws_id(resource, &doing).await?;
        let copies = live::security_groups(&self.ec2, &self.env, Some(resource)).await?;
        let Some(LiveResource {
            state:
                LiveState::SecurityGroup {
                    ingress: li,
                    egress: le,
                    descriptions: descriptions_live,
                    ..
                },
            ..
        }) = copies.iter().find(|c| c.aws_id == group)
        else {
            return Err(AwsError::not_ready(
                doing,
                format!("security group {group} is not visible yet"),
            ));
        };
        let peers: Vec<String> = ingress
            .iter()
            .chain(egress.iter())
            .filter_map(|r| match &r.peer {
                RulePeer::Group(g) if g.starts_with("sg/") => Some(g.clone()),
                _ => None,
            })
            .collect();
        let mut to_aws: HashMap<String, String> = HashMap::new();
        let mut to_resource: HashMap<String, String> = HashMap::new();
        for p in peers {
            let id = self.aws_id(&p, &doing).await?;
            to_resource.insert(id.clone(), p.clone());
            to_aws.insert(p, id);
        }
        let no_images = HashMap::new();
        let cctx = self.compare_ctx(&to_resource, &no_images);
        let mut changed = false;
        for (want, have_raw, is_egress) in [(ingress, li, false), (egress, le, true)] {
            let have = map_rules(&cctx, have_raw);
            for r in want.difference(&have) {
                ctx.progress(format!(
                    "{resource}: authorizing {}",
                    super::rules::describe(r, is_egress)
                ));
                let perm = r
                    .to_sdk(&to_aws, descriptions.get(r).map(String::as_str))
                    .ok_or_else(|| {
                        AwsError::not_ready(&doing, format!("the group {} has no id yet", r.peer))
                    })?;
                self.authorize(&group, perm, is_egress, &doing).await?;
                changed = true;
            }
            for r in have.difference(want) {
                ctx.progress(format!(
                    "{resource}: revoking {}",
                    super::rules::describe(r, is_egress)
                ));
                // Live rules that name a group of ours were mapped to `sg/...`; map back.
                // Revoke the live (raw id) form, repeating its live description.
                let raw = raw_rule(r, have_raw, &cctx).unwrap_or_else(|| r.clone());
                let perm = raw.to_sdk(&to_aws, descriptions_live.get(&raw).map(String::as_str));
                if let Some(perm) = perm {
                    self.revoke(&group, perm, is_egress, &doing).await?;
                    changed = true;
                }
            }
        }
        Ok(if changed {
            NodeOutcome::Updated
        } else {
            NodeOutcome::Unchanged
        })
    }

    async fn authorize(
        &self,
        group: &str,
        perm: aws_sdk_ec2::types::IpPermission,
        egress: bool,
        doing: &str,
    ) -> Res<()> {
        let c = self.ec2.client();
        let sent = if egress {
            c.authorize_security_group_egress()
                .group_id(group)
                .ip_permissions(perm)
                .send()
                .await
                .map(|_| ())
                .map_err(self.ec2.err(doing))
        } else {
            c.authorize_security_group_ingress()
                .group_id(group)
                .ip_permissions(perm)
                .send()
                .await
                .map(|_| ())
                .map_err(self.ec2.err(doing))
        };
        match sent {
            Err(e) if e.code() == Some("InvalidPermission.Duplicate") => Ok(()),
            other => other,
        }
    }

    async fn revoke(
        &self,
        group: &str,
        perm: aws_sdk_ec2::types::IpPermission,
        egress: bool,
        doing: &str,
    ) -> Res<()> {
        let c = self.ec2.client();
        let sent = if egress {
            c.revoke_security_group_egress()
                .group_id(group)
                .ip_permissions(perm)
                .send()
                .await
                .map(|_| ())
                .map_err(self.ec2.err(doing))
        } else {
            c.revoke_security_group_ingress()
                .group_id(group)
                .ip_permissions(perm)
                .send()
                .await
                .map(|_| ())
                .map_err(self.ec2.err(doing))
        };
        match sent {
            Err(e) if e.code() == Some("InvalidPermission.NotFound") => Ok(()),
            other => other,
        }
    }

    // ---------------------------------------------------------------- instances

    async fn instance(
        &self,
        ctx: &NodeCtx,
        d: &DesiredResource,
        spec: &InstanceSpec,
    ) -> Res<NodeOutcome> {
        let doing = format!("converging {}", d.id);
        let rendered;
        let (d, spec) = match &spec.late_user_data {
            Some(late) => {
                ctx.progress(format!(
                    "rendering the user-data of {} now that {} exists",
                    d.id,
                    spec.after.join(", ")
                ));
                let text = (late.render)(self.ec2.clone())
                    .await
                    .map_err(|why| AwsError::not_ready(&doing, why))?;
                rendered = d.with_user_data(text);
                match &rendered.spec {
                    ResourceSpec::Instance(s) => (&rendered, s.as_ref()),
                    _ => (d, spec),
                }
            }
            None => (d, spec),
        };
        let image = self.images.get(&self.ec2, &spec.image).await?;
        let mut deps: Vec<String> = vec![spec.subnet.clone()];
        deps.extend(spec.security_groups.iter().cloned());
        if let Some(k) = &spec.key {
            deps.push(k.clone());
        }
        let copies = live::instances(&self.ec2, &self.env, Some(&d.id)).await?;
        let map = self.reference_map(&deps, &copies, &doing).await?;
        let images = HashMap::from([(spec.image.clone(), image.clone())]);
        let cctx = self.compare_ctx(&map, &images);
        let ranked = rank(d, &copies, &cctx);
        let keep = ranked
            .first()
            .filter(|(_, v)| v.action != ChangeAction::Replace)
            .map(|(l, v)| ((*l).clone(), v.clone()));
        let others: Vec<LiveResource> = ranked
            .iter()
            .filter(|(l, _)| keep.as_ref().is_none_or(|(k, _)| k.aws_id != l.aws_id))
            .map(|(l, _)| (*l).clone())
            .collect();
        let (id, mut outcome) = match keep {
            Some((live, verdict)) => {
                self.update_instance(ctx, d, &live, &verdict, &map).await?;
                let outcome = if verdict.action == ChangeAction::Update {
                    NodeOutcome::Updated
                } else {
                    NodeOutcome::Unchanged
                };
                (live.aws_id, outcome)
            }
            None => {
                ctx.progress(if others.is_empty() {
                    format!("launching {}", d.id)
                } else {
                    format!("launching a replacement for {}", d.id)
                });
                let replacing: Vec<String> = others.iter().map(|o| o.aws_id.clone()).collect();
                let id = match self.launch(d, spec, &image, &map, &replacing).await {
                    Ok(id) => id,
                    Err(e) => return Err(self.bounded_launch_error(ctx, d, spec, e)),
                };
                let outcome = if others.is_empty() {
                    NodeOutcome::Created
                } else {
                    NodeOutcome::Replaced
                };
                (id, outcome)
            }
        };
        self.ids.set(&d.id, &id);
        self.wait_ready(ctx, &d.id, &id).await?;
        // Create before destroy: the old copies (replaced, or duplicates) go once the new one
        // runs. Listed again: a launch whose answer was lost and retried leaves a twin.
        let others: Vec<LiveResource> = live::instances(&self.ec2, &self.env, Some(&d.id))
            .await?
            .into_iter()
            .filter(|o| o.aws_id != id)
            .collect();
        if !others.is_empty() {
            let ids: Vec<String> = others.iter().map(|o| o.aws_id.clone()).collect();
            ctx.progress(format!("terminating {} ({})", d.id, ids.join(", ")));
            self.terminate(&ids, &format!("terminating the old copies of {}", d.id))
                .await?;
            if outcome == NodeOutcome::Unchanged {
                outcome = NodeOutcome::Updated;
            }
        }
        Ok(outcome)
    }

    async fn launch(
        &self,
        d: &DesiredResource,
        spec: &InstanceSpec,
        image: &super::images::ResolvedImage,
        map: &HashMap<String, String>,
        replacing: &[String],
    ) -> Res<String> {
        let doing = format!("launching {}", d.id);
        let subnet = self.dep_id(map, &spec.subnet, &doing)?;
        let mut groups = Vec::new();
        for g in &spec.security_groups {
            groups.push(self.dep_id(map, g, &doing)?);
        }
        let key_name = match &spec.key {
            Some(k) => Some(self.dep_id(map, k, &doing)?),
            None => None,
        };
        // Every parameter of the launch, for the client token: EC2 answers a reused token with
        // other parameters with IdempotentParameterMismatch, so the token must change whenever
        // any of them does (a new server address in an agent's user-data, a new image...).
        let mut params: Vec<(&str, String)> = vec![
            ("image", image.id.clone()),
            ("type", spec.instance_type.clone()),
            ("subnet", subnet.clone()),
            ("security-groups", {
                let mut g = groups.clone();
                g.sort_unstable();
                g.join(",")
            }),
            ("key", key_name.clone().unwrap_or_default()),
            (
                "tags",
                d.tags
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            (
                "user-data-sha256",
                spec.user_data
                    .as_ref()
                    .map(|ud| sha256_hex(ud.0.as_bytes()))
                    .unwrap_or_default(),
            ),
            ("metadata", IMDS_OPTIONS.to_string()),
        ];
        let mut req = self
            .ec2
            .client()
            .run_instances()
            .image_id(&image.id)
            .instance_type(InstanceType::from(spec.instance_type.as_str()))
            .min_count(1)
            .max_count(1)
            .subnet_id(subnet)
            .set_security_group_ids(Some(groups))
            .set_key_name(key_name)
            .tag_specifications(tags::spec(ResourceType::Instance, &d.tags))
            .tag_specifications(tags::spec(ResourceType::Volume, &d.tags))
            // IMDSv2 only, one hop: a pod (one hop further than the node) gets no answer from
            // the metadata service, so it cannot read the user-data (the cluster's CA keys on a
            // server) or the instance role's credentials.
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_endpoint(InstanceMetadataEndpointState::from(IMDS_ENDPOINT))
                    .http_tokens(HttpTokensState::from(IMDS_HTTP_TOKENS))
                    .http_put_response_hop_limit(IMDS_HOP_LIMIT)
                    .build(),
            );
        if let Some(ud) = &spec.user_data {
            req = req.user_data(aws_smithy_types::base64::encode(ud.0.as_bytes()));
        }
        if let Some(gib) = spec.root_volume_gib {
            let device = image.root_device_name.clone().ok_or_else(|| {
                AwsError::refused(
                    &doing,
                    format!(
                        "image {} names no root device, so rootVolumeSize cannot be applied",
                        image.id
                    ),
                )
            })?;
            params.push(("root-volume", format!("{device}:{gib}:gp3")));
            req = req.block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(device)
                    .ebs(
                        EbsBlockDevice::builder()
                            .volume_size(i32::try_from(gib).unwrap_or(i32::MAX))
                            .volume_type(VolumeType::Gp3)
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            );
        }
        if let Some(profile) = &spec.instance_profile {
            params.push(("instance-profile", profile.clone()));
            let p = IamInstanceProfileSpecification::builder();
            let p = if profile.starts_with("arn:") {
                p.arn(profile)
            } else {
                p.name(profile)
            };
            req = req.iam_instance_profile(p.build());
        }
        // A token EC2 already used for an instance since terminated (out of band) returns that
        // instance; salting with its id gives a fresh, still deterministic token.
        let mut salt = String::new();
        for _ in 0..3 {
            let token = self.client_token(d, &params, replacing, &salt);
            let out = req
                .clone()
                .client_token(token)
                .send()
                .await
                .map_err(self.ec2.err(&doing))?;
            let inst = out
                .instances()
                .first()
                .ok_or_else(|| AwsError::not_ready(&doing, "EC2 returned no instance"))?;
            let id = inst
                .instance_id()
                .ok_or_else(|| AwsError::not_ready(&doing, "EC2 returned no instance id"))?;
            let gone = inst.state().and_then(|s| s.name()).is_some_and(|n| {
                matches!(
                    n,
                    InstanceStateName::Terminated | InstanceStateName::ShuttingDown
                )
            });
            if !gone {
                return Ok(id.to_string());
            }
            salt.push_str(id);
        }
        Err(AwsError::refused(
            doing,
            "EC2 keeps answering with terminated instances launched earlier with the same client token",
        ))
    }

    /// A capacity or IAM-propagation error is retried like any transient one, but only for
    /// [`BOUNDED_ATTEMPTS`] attempts: then the node fails with what to do, naming the type and
    /// zone (capacity) or the instance profile (IAM), instead of retrying until its timeout.
    fn bounded_launch_error(
        &self,
        ctx: &NodeCtx,
        d: &DesiredResource,
        spec: &InstanceSpec,
        e: AwsError,
    ) -> AwsError {
        let Some(kind) = e.bounded() else {
            return e;
        };
        let attempt = ctx.attempt();
        let zone = self
            .desired
            .as_deref()
            .and_then(|all| all.get(&spec.subnet))
            .and_then(|s| match &s.spec {
                ResourceSpec::Subnet { zone, .. } => Some(zone.clone()),
                _ => None,
            })
            .unwrap_or_else(|| "its zone".to_string());
        if attempt < BOUNDED_ATTEMPTS {
            ctx.progress(match kind {
                Bounded::Capacity => format!(
                    "no {} capacity in {zone} (attempt {attempt} of {BOUNDED_ATTEMPTS}); retrying",
                    spec.instance_type
                ),
                Bounded::IamPropagation => format!(
                    "instance profile not visible to EC2 yet (attempt {attempt} of {BOUNDED_ATTEMPTS}); retrying"
                ),
            });
            return e;
        }
        let cause = match &e {
            AwsError::Service { code, message, .. } => format!("{code}: {message}"),
            other => other.to_string(),
        };
        AwsError::refused(
            format!("launching {}", d.id),
            match kind {
                Bounded::Capacity => format!(
                    "EC2 has no {} capacity in {zone} after {attempt} attempts ({cause}); choose another instance type for the group, or put its subnet in another zone, or run again later",
                    spec.instance_type
                ),
                Bounded::IamPropagation => format!(
                    "the instance profile {} is still not usable after {attempt} attempts ({cause}); check that it exists and that its role may be passed (iam:PassRole), then run again",
                    spec.instance_profile.as_deref().unwrap_or("(none)")
                ),
            },
        )
    }

    /// Derived from env, resource id, commit, every launch parameter and the live copies being
    /// replaced: a launch retried by the SDK (same parameters) is recognised by real EC2, while
    /// the same resource launched with anything different (after a wipeout, a new server
    /// address, a new image) gets a new token instead of IdempotentParameterMismatch. moto
    /// ignores tokens; the tag lookup is what prevents duplicates there.
    fn client_token(
        &self,
        d: &DesiredResource,
        params: &[(&str, String)],
        replacing: &[String],
        salt: &str,
    ) -> String {
        client_token(&self.env, &d.id, &self.commit, params, replacing, salt)
    }

    async fn update_instance(
        &self,
        ctx: &NodeCtx,
        d: &DesiredResource,
        live: &LiveResource,
        verdict: &Verdict,
        map: &HashMap<String, String>,
    ) -> Res<()> {
        if verdict.action != ChangeAction::Update {
            return Ok(());
        }
        let doing = format!("updating {}", d.id);
        let c = self.ec2.client();
        let ResourceSpec::Instance(spec) = &d.spec else {
            return Ok(());
        };
        let LiveState::Instance { state, .. } = &live.state else {
            return Ok(());
        };
        if !tags::owned_by(&live.tags, &self.env) {
            return Err(AwsError::refused(
                doing,
                format!("instance {} lacks phoenix's ownership tags", live.aws_id),
            ));
        }
        if let Some(why) = &verdict.refused {
            let id = &live.aws_id;
            return Err(AwsError::refused(
                doing,
                format!(
                    "instance {id} is {state}, and {why}. Nothing was changed. Either terminate it (`aws ec2 terminate-instances --instance-ids {id}`) and rebuild: phoenix launches a new server, which is a new, empty cluster (the agents are replaced to join it, then the add-ons and apps are applied from Git); or set cluster.endpoint: private (the private address survives a stop; phoenix then starts it and reaches it there); or start it yourself (`aws ec2 start-instances --instance-ids {id}`) if clients reach the API through a name in cluster.tlsSans (with --cluster-endpoint), not through its public address"
                ),
            ));
        }
        let type_change = verdict.fields.iter().any(|f| f.field == "type");
        if verdict.fields.iter().any(|f| f.field == "security-group") {
            let mut groups = Vec::new();
            for g in &spec.security_groups {
                groups.push(self.dep_id(map, g, &doing)?);
            }
            ctx.progress(format!("{}: setting security groups", d.id));
            c.modify_instance_attribute()
                .instance_id(&live.aws_id)
                .set_groups(Some(groups))
                .send()
                .await
                .map_err(self.ec2.err(&doing))?;
        }
        if verdict
            .fields
            .iter()
            .any(|f| f.field.starts_with("metadata-"))
        {
            // In place, no restart: IMDSv2 only, one hop. The endpoint is sent as it is (EC2
            // keeps an option left out, moto resets it): one turned off stays off.
            ctx.progress(format!(
                "{}: requiring IMDSv2 with a hop limit of {IMDS_HOP_LIMIT}",
                d.id
            ));
            let endpoint = match &live.state {
                LiveState::Instance {
                    metadata: Some(m), ..
                } => m.endpoint.clone(),
                _ => None,
            };
            c.modify_instance_metadata_options()
                .instance_id(&live.aws_id)
                .http_tokens(HttpTokensState::from(IMDS_HTTP_TOKENS))
                .http_put_response_hop_limit(IMDS_HOP_LIMIT)
                .set_http_endpoint(
                    endpoint.map(|e| InstanceMetadataEndpointState::from(e.as_str())),
                )
                .send()
                .await
                .map_err(self.ec2.err(&doing))?;
        }
        let mut start = state == "stopped" || state == "stopping";
        if type_change {
            if state != "stopped" {
                ctx.progress(format!("{}: stopping to change the instance type", d.id));
                c.stop_instances()
                    .instance_ids(&live.aws_id)
                    .send()
                    .await
                    .map_err(self.ec2.err(&doing))?;
            }
            self.wait_state(ctx, &live.aws_id, "stopped", &d.id).await?;
            c.modify_instance_attribute()
                .instance_id(&live.aws_id)
                .instance_type(AttributeValue(spec.instance_type.clone()).into())
                .send()
                .await
                .map_err(self.ec2.err(&doing))?;
            start = true;
        } else if state == "stopping" {
            self.wait_state(ctx, &live.aws_id, "stopped", &d.id).await?;
        }
        if start {
            ctx.progress(format!("{}: starting", d.id));
            c.start_instances()
                .instance_ids(&live.aws_id)
                .send()
                .await
                .map_err(self.ec2.err(&doing))?;
        }
        self.update_tags(d, live, &verdict.fields).await
    }

    async fn wait_state(&self, ctx: &NodeCtx, id: &str, want: &str, resource: &str) -> Res<()> {
        let what = format!("instance {id} ({resource}) {want}");
        let ec2 = self.ec2.clone();
        let id = id.to_string();
        let want = want.to_string();
        let doing = format!("waiting for {what}");
        ctx.wait_for_state(
            &what,
            self.opts.instance_stop_timeout,
            self.opts.poll_interval,
            || {
                let ec2 = ec2.clone();
                let id = id.clone();
                let want = want.clone();
                let doing = doing.clone();
                async move {
                    let state = instance_state(&ec2, &id, &doing)
                        .await
                        .map_err(NodeError::from)?;
                    Ok(match state {
                        Some((s, _)) if s == want => Check::Ready(()),
                        Some((s, _)) => Check::Waiting(s),
                        None if want == "terminated" => Check::Ready(()),
                        None => Check::Waiting("not visible yet".into()),
                    })
                }
            },
        )
        .await
        .map_err(|e| AwsError::refused(format!("waiting for {resource}"), e.chain()))
    }

    /// Waits until the instance is running and its instance and system status checks are ok.
    async fn wait_ready(&self, ctx: &NodeCtx, resource: &str, id: &str) -> Res<()> {
        let what = format!("instance {id} ({resource}) running with status checks ok");
        let ec2 = self.ec2.clone();
        let id = id.to_string();
        let doing = format!("waiting for {resource}");
        ctx.wait_for_state(
            &what,
            self.opts.instance_ready_timeout,
            self.opts.poll_interval,
            || {
                let ec2 = ec2.clone();
                let id = id.clone();
                let doing = doing.clone();
                async move {
                    match instance_state(&ec2, &id, &doing)
                        .await
                        .map_err(NodeError::from)?
                    {
                        Some((s, true)) if s == "running" => Ok(Check::Ready(())),
                        Some((s, _)) if s == "terminated" || s == "shutting-down" => {
                            Err(NodeError::permanent(format!("instance {id} is {s}")))
                        }
                        Some((s, false)) if s == "running" => {
                            Ok(Check::Waiting("running, status checks not ok yet".into()))
                        }
                        Some((s, _)) => Ok(Check::Waiting(s)),
                        None => Ok(Check::Waiting("not visible yet".into())),
                    }
                }
            },
        )
        .await
        .map_err(|e| {
            if e.is_transient() {
                AwsError::not_ready(format!("waiting for {resource}"), e.chain())
            } else {
                AwsError::refused(format!("waiting for {resource}"), e.chain())
            }
        })
    }

    async fn terminate(&self, ids: &[String], doing: &str) -> Res<()> {
        if ids.is_empty() {
            return Ok(());
        }
        match self
            .ec2
            .client()
            .terminate_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = self.ec2.err(doing)(e);
                if e.code() == Some("InvalidInstanceID.NotFound") {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    // ---------------------------------------------------------------- delete

    /// One attempt at deleting every live copy of `resource` (phoenix-tagged for this env only).
    pub(crate) async fn delete(
        &self,
        ctx: &NodeCtx,
        resource: &str,
        kind: &str,
    ) -> Res<NodeOutcome> {
        let copies = observe_kind(&self.ec2, &self.env, kind, Some(resource)).await?;
        if copies.is_empty() {
            return Ok(NodeOutcome::Unchanged);
        }
        if kind == "instance" {
            let ids: Vec<String> = copies.iter().map(|c| c.aws_id.clone()).collect();
            ctx.progress(format!("terminating {resource} ({})", ids.join(", ")));
            self.terminate(&ids, &format!("deleting {resource}"))
                .await?;
            for id in &ids {
                self.wait_state(ctx, id, "terminated", resource).await?;
            }
            return Ok(NodeOutcome::Deleted);
        }
        for copy in &copies {
            ctx.progress(format!("deleting {resource} ({})", copy.aws_id));
            self.delete_copy(ctx, copy).await?;
        }
        Ok(NodeOutcome::Deleted)
    }

    /// Revokes the rules of group `resource` that reference security groups, so that groups
    /// referencing each other can be deleted.
    pub(crate) async fn revoke_group_refs(
        &self,
        ctx: &NodeCtx,
        resource: &str,
    ) -> Res<NodeOutcome> {
        let doing = format!("revoking the group references of {resource}");
        let copies = live::security_groups(&self.ec2, &self.env, Some(resource)).await?;
        let mut changed = false;
        for copy in &copies {
            let LiveState::SecurityGroup {
                ingress,
                egress,
                descriptions,
                ..
            } = &copy.state
            else {
                continue;
            };
            for (rules, is_egress) in [(ingress, false), (egress, true)] {
                for r in rules
                    .iter()
                    .filter(|r| matches!(r.peer, RulePeer::Group(_)))
                {
                    if let Some(perm) =
                        r.to_sdk(&HashMap::new(), descriptions.get(r).map(String::as_str))
                    {
                        ctx.progress(format!(
                            "{resource}: revoking {}",
                            super::rules::describe(r, is_egress)
                        ));
                        self.revoke(&copy.aws_id, perm, is_egress, &doing).await?;
                        changed = true;
                    }
                }
            }
        }
        Ok(if changed {
            NodeOutcome::Updated
        } else {
            NodeOutcome::Unchanged
        })
    }

    async fn delete_copy(&self, ctx: &NodeCtx, copy: &LiveResource) -> Res<()> {
        let doing = format!("deleting {} ({})", copy.resource, copy.aws_id);
        if !tags::owned_by(&copy.tags, &self.env) {
            return Err(AwsError::refused(
                doing,
                "it lacks phoenix's ownership tags",
            ));
        }
        let c = self.ec2.client();
        let ignore_gone = |r: Result<(), AwsError>| match r {
            Err(e) if e.code().is_some_and(|c| c.ends_with(".NotFound")) => Ok(()),
            other => other,
        };
        match &copy.state {
            LiveState::Instance { .. } => {
                self.terminate(std::slice::from_ref(&copy.aws_id), &doing)
                    .await?;
                self.wait_state(ctx, &copy.aws_id, "terminated", &copy.resource)
                    .await
            }
            LiveState::RouteTable { associations, .. } => {
                let mine = self.own_subnet_ids().await?;
                let foreign: Vec<&str> = associations
                    .iter()
                    .filter(|a| !a.main)
                    .filter_map(|a| a.subnet_id.as_deref())
                    .filter(|s| !mine.contains(&s.to_string()))
                    .collect();
                if !foreign.is_empty() {
                    return Err(AwsError::refused(
                        doing,
                        format!("it is associated with subnets phoenix does not own: {}; disassociate them first", foreign.join(", ")),
                    ));
                }
                for a in associations.iter().filter(|a| !a.main) {
                    self.disassociate(&a.id, &doing).await?;
                }
                ignore_gone(
                    c.delete_route_table()
                        .route_table_id(&copy.aws_id)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(self.ec2.err(&doing)),
                )
            }
            LiveState::InternetGateway { attached_vpcs } => {
                for vpc in attached_vpcs {
                    ignore_gone(
                        c.detach_internet_gateway()
                            .internet_gateway_id(&copy.aws_id)
                            .vpc_id(vpc)
                            .send()
                            .await
                            .map(|_| ())
                            .map_err(self.ec2.err(&doing)),
                    )?;
                }
                ignore_gone(
                    c.delete_internet_gateway()
                        .internet_gateway_id(&copy.aws_id)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(self.ec2.err(&doing)),
                )
            }
            LiveState::Subnet { .. } => ignore_gone(
                c.delete_subnet()
                    .subnet_id(&copy.aws_id)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(self.ec2.err(&doing)),
            ),
            LiveState::SecurityGroup { .. } => ignore_gone(
                c.delete_security_group()
                    .group_id(&copy.aws_id)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(self.ec2.err(&doing)),
            ),
            LiveState::KeyPair { key_name, .. } => ignore_gone(
                c.delete_key_pair()
                    .key_name(key_name)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(self.ec2.err(&doing)),
            ),
            LiveState::Vpc { .. } => {
                let foreign =
                    live::foreign_in_vpc(&self.ec2, &self.env, &copy.aws_id, &doing).await?;
                if !foreign.is_empty() {
                    return Err(AwsError::refused(
                        doing,
                        format!(
                            "the VPC still holds resources phoenix does not own: {}; phoenix never deletes them — remove them (or move them out) and run again",
                            foreign.join(", ")
                        ),
                    ));
                }
                ignore_gone(
                    c.delete_vpc()
                        .vpc_id(&copy.aws_id)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(self.ec2.err(&doing)),
                )
            }
        }
    }

    /// The VPC quota is used up: name what uses it (every VPC of the region, with the env or
    /// copy that owns it and its expiry), so forgotten drill and ephemeral copies show.
    async fn vpcs_in_use(&self, doing: &str, quota: AwsError) -> AwsError {
        let Ok(out) = self.ec2.client().describe_vpcs().send().await else {
            return quota;
        };
        let used: Vec<String> = out
            .vpcs()
            .iter()
            .map(|v| {
                let t = tags::from_sdk(Some(v.tags()));
                let id = v.vpc_id().unwrap_or("?");
                let owner = match (t.get(super::tags::TAG_ENV), v.is_default()) {
                    (Some(env), _) => match t.get(super::tags::TAG_EXPIRES) {
                        Some(exp) => format!("phoenix env {env}, expires {exp}"),
                        None => format!("phoenix env {env}"),
                    },
                    (None, Some(true)) => "the default VPC".to_string(),
                    (None, _) => t
                        .get(TAG_NAME_KEY)
                        .map(|n| format!("not phoenix's: {n}"))
                        .unwrap_or_else(|| "not phoenix's".to_string()),
                };
                format!("{id} ({owner})")
            })
            .collect();
        let why = quota.to_string();
        let why = why
            .strip_prefix(&format!("{doing}: "))
            .unwrap_or(&why)
            .to_string();
        AwsError::refused(
            doing,
            format!("{why}; the region's VPCs: {}", used.join(", ")),
        )
    }

    async fn own_subnet_ids(&self) -> Res<Vec<String>> {
        Ok(live::subnets(&self.ec2, &self.env, None)
            .await?
            .into_iter()
            .map(|s| s.aws_id)
            .collect())
    }
}

/// The SDK wants an `AttributeValue` for an instance type change.
struct AttributeValue(String);

impl From<AttributeValue> for aws_sdk_ec2::types::AttributeValue {
    fn from(v: AttributeValue) -> Self {
        aws_sdk_ec2::types::AttributeValue::builder()
            .value(v.0)
            .build()
    }
}

fn map_rules(
    cctx: &CompareCtx,
    rules: &std::collections::BTreeSet<RuleKey>,
) -> std::collections::BTreeSet<RuleKey> {
    rules
        .iter()
        .map(|r| match &r.peer {
            RulePeer::Group(id) => RuleKey {
                peer: RulePeer::Group(
                    cctx.to_resource
                        .get(id)
                        .cloned()
                        .unwrap_or_else(|| id.clone()),
                ),
                ..r.clone()
            },
            _ => r.clone(),
        })
        .collect()
}

/// The raw (AWS id) form of a mapped live rule.
fn raw_rule(
    mapped: &RuleKey,
    raw: &std::collections::BTreeSet<RuleKey>,
    cctx: &CompareCtx,
) -> Option<RuleKey> {
    raw.iter()
        .find(|r| {
            map_rules(cctx, &std::collections::BTreeSet::from([(*r).clone()])).contains(mapped)
        })
        .cloned()
}

/// The instance's state name and whether both status checks are ok; `None` if not visible.
async fn instance_state(ec2: &Ec2, id: &str, doing: &str) -> Res<Option<(String, bool)>> {
    let sent = ec2
        .client()
        .describe_instance_status()
        .instance_ids(id)
        .include_all_instances(true)
        .send()
        .await;
    let out = match sent {
        Ok(out) => out,
        Err(e) => {
            let e = ec2.err(doing)(e);
            if e.code() == Some("InvalidInstanceID.NotFound") {
                return Ok(None);
            }
            return Err(e);
        }
    };
    let Some(status) = out.instance_statuses().first() else {
        return Ok(None);
    };
    let state = status
        .instance_state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_string())
        .unwrap_or_else(|| "unknown".into());
    let ok = |s: Option<&aws_sdk_ec2::types::InstanceStatusSummary>| {
        s.and_then(|s| s.status())
            .is_some_and(|s| *s == SummaryStatus::Ok)
    };
    Ok(Some((
        state,
        ok(status.instance_status()) && ok(status.system_status()),
    )))
}
/// The `Name` tag, for naming foreign resources.
const TAG_NAME_KEY: &str = "Name";

/// The metadata options every instance is launched with (part of the client token).
const IMDS_OPTIONS: &str = "endpoint=enabled,tokens=required,hop-limit=1";

fn client_token(
    env: &str,
    id: &str,
    commit: &str,
    params: &[(&str, String)],
    replacing: &[String],
    salt: &str,
) -> String {
    let mut ids: Vec<&str> = replacing.iter().map(String::as_str).collect();
    ids.sort_unstable();
    let mut seed = format!("{env}\n{id}\n{commit}\n{}\n{salt}\n", ids.join(","));
    for (name, value) in params {
        seed.push_str(&format!("{name}={}\n", sha256_hex(value.as_bytes())));
    }
    format!("phx-{}", &sha256_hex(seed.as_bytes())[..48])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(user_data: &str, image: &str) -> Vec<(&'static str, String)> {
        vec![
            ("image", image.to_string()),
            ("type", "t3.medium".to_string()),
            ("user-data-sha256", sha256_hex(user_data.as_bytes())),
            ("metadata", IMDS_OPTIONS.to_string()),
        ]
    }

    #[test]
    fn the_client_token_covers_every_launch_parameter() {
        let token = |p: &[(&str, String)], salt: &str| {
            client_token("demo", "instance/agent/0", "abc123", p, &[], salt)
        };
        let base = token(&params("server 10.40.1.12", "ami-1"), "");
        assert_eq!(base, token(&params("server 10.40.1.12", "ami-1"), ""));
        assert!(base.starts_with("phx-") && base.len() <= 64, "{base}");
        // The same commit and resource, launched with another server address or image.
        assert_ne!(base, token(&params("server 10.40.1.99", "ami-1"), ""));
        assert_ne!(base, token(&params("server 10.40.1.12", "ami-2"), ""));
        let mut extra = params("server 10.40.1.12", "ami-1");
        extra.push(("instance-profile", "nodes".to_string()));
        assert_ne!(base, token(&extra, ""));
        assert_ne!(base, token(&params("server 10.40.1.12", "ami-1"), "i-0old"));
    }
}
