//! Instances: launch (idempotent by client token), update in place where EC2 allows it, wait
//! until running with status checks ok, terminate.

use std::collections::HashMap;

use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, HttpTokensState, IamInstanceProfileSpecification,
    InstanceMetadataEndpointState, InstanceMetadataOptionsRequest, InstanceStateName, InstanceType,
    ResourceType, SummaryStatus, VolumeType,
};

use crate::engine::{Check, NodeCtx, NodeError, NodeOutcome};
use crate::providers::aws::client::Ec2;
use crate::providers::aws::compare::{
    rank, ResourceVerdict, IMDS_ENDPOINT, IMDS_HOP_LIMIT, IMDS_HTTP_TOKENS,
};
use crate::providers::aws::desired::{DesiredResource, InstanceSpec, ResourceSpec};
use crate::providers::aws::error::{AwsError, Bounded, BOUNDED_ATTEMPTS};
use crate::providers::aws::live::{self, LiveResource, LiveState};
use crate::providers::aws::plan::ChangeAction;
use crate::providers::aws::tags::{self};
use crate::providers::sha256_hex;

use super::{Exec, Res};

impl Exec {
    pub(super) async fn instance(
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

    pub(super) async fn launch(
        &self,
        d: &DesiredResource,
        spec: &InstanceSpec,
        image: &crate::providers::aws::images::ResolvedImage,
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
    pub(super) fn bounded_launch_error(
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
    pub(super) fn client_token(
        &self,
        d: &DesiredResource,
        params: &[(&str, String)],
        replacing: &[String],
        salt: &str,
    ) -> String {
        client_token(&self.env, &d.id, &self.commit, params, replacing, salt)
    }

    pub(super) async fn update_instance(
        &self,
        ctx: &NodeCtx,
        d: &DesiredResource,
        live: &LiveResource,
        verdict: &ResourceVerdict,
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

    pub(super) async fn wait_state(
        &self,
        ctx: &NodeCtx,
        id: &str,
        want: &str,
        resource: &str,
    ) -> Res<()> {
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
    pub(super) async fn wait_ready(&self, ctx: &NodeCtx, resource: &str, id: &str) -> Res<()> {
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

    pub(super) async fn terminate(&self, ids: &[String], doing: &str) -> Res<()> {
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
