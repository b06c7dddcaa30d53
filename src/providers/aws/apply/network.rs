//! The network resources: VPC, subnets, internet gateway, route tables, security groups (not their
//! rules) and the key pair.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_ec2::types::{AttributeBooleanValue, ResourceType};

use crate::engine::{NodeCtx, NodeOutcome};
use crate::providers::aws::compare::{rank, ResourceVerdict};
use crate::providers::aws::desired::{DesiredResource, ResourceSpec};
use crate::providers::aws::error::AwsError;
use crate::providers::aws::live::{observe_kind, LiveResource, LiveState};
use crate::providers::aws::plan::{ChangeAction, FieldChange};
use crate::providers::aws::tags::{self, filter, TAG_COMMIT};

use super::{Exec, Res};

impl Exec {
    pub(super) async fn network(&self, ctx: &NodeCtx, d: &DesiredResource) -> Res<NodeOutcome> {
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

    pub(super) fn dep_id(
        &self,
        map: &HashMap<String, String>,
        resource: &str,
        doing: &str,
    ) -> Res<String> {
        map.iter()
            .find(|(_, r)| r.as_str() == resource)
            .map(|(id, _)| id.clone())
            .ok_or_else(|| AwsError::not_ready(doing, format!("{resource} does not exist yet")))
    }

    pub(super) async fn create_network(
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
    pub(super) async fn duplicate_group(&self, vpc: &str, name: &str, doing: &str) -> AwsError {
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

    pub(super) async fn vpc_dns(&self, vpc: &str, doing: &str) -> Res<()> {
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

    pub(super) async fn map_public_ip(&self, subnet: &str, value: bool, doing: &str) -> Res<()> {
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

    pub(super) async fn update_network(
        &self,
        d: &DesiredResource,
        live: &LiveResource,
        verdict: &ResourceVerdict,
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
    pub(super) async fn update_tags(
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

    pub(super) async fn disassociate(&self, association: &str, doing: &str) -> Res<()> {
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
}
