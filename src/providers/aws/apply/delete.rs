//! Deletes: every live copy of a resource this env owns, references to a group first, and the
//! teardown of a drill or ephemeral copy's network.

use std::collections::HashMap;

use crate::engine::{NodeCtx, NodeOutcome};
use crate::providers::aws::error::AwsError;
use crate::providers::aws::live::{self, observe_kind, LiveResource, LiveState};
use crate::providers::aws::rules::RulePeer;
use crate::providers::aws::tags::{self};

use super::{Exec, Res, TAG_NAME_KEY};

impl Exec {
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
                            crate::providers::aws::rules::describe(r, is_egress)
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

    pub(super) async fn delete_copy(&self, ctx: &NodeCtx, copy: &LiveResource) -> Res<()> {
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
    pub(super) async fn vpcs_in_use(&self, doing: &str, quota: AwsError) -> AwsError {
        let Ok(out) = self.ec2.client().describe_vpcs().send().await else {
            return quota;
        };
        let used: Vec<String> = out
            .vpcs()
            .iter()
            .map(|v| {
                let t = tags::from_sdk(Some(v.tags()));
                let id = v.vpc_id().unwrap_or("?");
                let owner = match (t.get(crate::providers::aws::tags::TAG_ENV), v.is_default()) {
                    (Some(env), _) => match t.get(crate::providers::aws::tags::TAG_EXPIRES) {
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

    pub(super) async fn own_subnet_ids(&self) -> Res<Vec<String>> {
        Ok(live::subnets(&self.ec2, &self.env, None)
            .await?
            .into_iter()
            .map(|s| s.aws_id)
            .collect())
    }
}
