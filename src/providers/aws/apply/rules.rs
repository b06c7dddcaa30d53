//! Security-group rules: authorize what is missing, revoke what is extra.

use std::collections::HashMap;

use crate::engine::{NodeCtx, NodeOutcome};
use crate::providers::aws::compare::CompareCtx;
use crate::providers::aws::desired::ResourceSpec;
use crate::providers::aws::error::AwsError;
use crate::providers::aws::live::{self, LiveResource, LiveState};
use crate::providers::aws::rules::{RuleKey, RulePeer};

use super::{Exec, Res};
use aws_sdk_ec2::types::IpPermission;

#[derive(Clone, Copy, Debug)]
enum RuleChange {
    Authorize,
    Revoke,
}

impl Exec {
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
            let have = cctx.map_rules(have_raw);
            for r in want.difference(&have) {
                ctx.progress(format!(
                    "{resource}: authorizing {}",
                    crate::providers::aws::rules::describe(r, is_egress)
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
                    crate::providers::aws::rules::describe(r, is_egress)
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

    /// Authorizes a missing rule (a duplicate is already done).
    pub(super) async fn authorize(
        &self,
        group: &str,
        perm: IpPermission,
        egress: bool,
        doing: &str,
    ) -> Res<()> {
        self.change_rule(RuleChange::Authorize, group, perm, egress, doing)
            .await
    }

    /// Revokes an extra rule (one already gone is done).
    pub(super) async fn revoke(
        &self,
        group: &str,
        perm: IpPermission,
        egress: bool,
        doing: &str,
    ) -> Res<()> {
        self.change_rule(RuleChange::Revoke, group, perm, egress, doing)
            .await
    }

    /// One authorize or revoke of one ingress or egress rule: the four EC2 calls take the same
    /// arguments, and each has one answer meaning it was already done.
    async fn change_rule(
        &self,
        change: RuleChange,
        group: &str,
        perm: IpPermission,
        egress: bool,
        doing: &str,
    ) -> Res<()> {
        let c = self.ec2.client();
        macro_rules! send {
            ($call:ident) => {
                c.$call()
                    .group_id(group)
                    .ip_permissions(perm)
                    .send()
                    .await
                    .map(drop)
                    .map_err(self.ec2.err(doing))
            };
        }
        let sent = match (change, egress) {
            (RuleChange::Authorize, false) => send!(authorize_security_group_ingress),
            (RuleChange::Authorize, true) => send!(authorize_security_group_egress),
            (RuleChange::Revoke, false) => send!(revoke_security_group_ingress),
            (RuleChange::Revoke, true) => send!(revoke_security_group_egress),
        };
        let already_done = match change {
            RuleChange::Authorize => "InvalidPermission.Duplicate",
            RuleChange::Revoke => "InvalidPermission.NotFound",
        };
        match sent {
            Err(e) if e.code() == Some(already_done) => Ok(()),
            other => other,
        }
    }
}

/// The raw (AWS id) form of a mapped live rule.
fn raw_rule(
    mapped: &RuleKey,
    raw: &std::collections::BTreeSet<RuleKey>,
    cctx: &CompareCtx,
) -> Option<RuleKey> {
    raw.iter().find(|r| cctx.map_rule(r) == *mapped).cloned()
}
