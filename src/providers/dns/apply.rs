//! Reading and changing Route 53: the hosted zone, the record sets at a name, a change batch and
//! its wait until Route 53 reports it INSYNC; the engine nodes of the cutover (one per record,
//! after the apps) and of a teardown (every record this deployment owns, found by its marks).

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecord, ResourceRecordSet, RrType,
};

use super::client::{DnsError, Route53};
use super::records::{self, Claim, LiveSet, RecordName};
use crate::drift::DriftEntry;
use crate::engine::{Action, BoxFuture, Check, Layer, NodeCtx, NodeError, NodeOutcome, NodeSpec};
use crate::env::dns::{DnsRecord, ZoneRef};
use crate::env::Environment;
use crate::providers::aws::{self, Ec2};

/// Pages of record sets read when a teardown scans a zone for its marks (300 sets a page).
const MAX_PAGES: usize = 1000;

/// A hosted zone, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zone {
    /// Without `/hostedzone/`.
    pub id: String,
    /// Lowercase, without the trailing dot.
    pub name: String,
}

/// Finds the hosted zone the env names. phoenix never creates or deletes a zone: it belongs to
/// the organisation.
pub async fn resolve_zone(r53: &Route53, zone: &ZoneRef) -> Result<Zone, DnsError> {
    match zone {
        ZoneRef::Id(id) => {
            let doing = format!("reading hosted zone {id}");
            let out = r53
                .client()
                .get_hosted_zone()
                .id(id)
                .send()
                .await
                .map_err(r53.err(&doing))?;
            let name = out
                .hosted_zone()
                .map(|z| z.name().trim_end_matches('.').to_ascii_lowercase())
                .ok_or_else(|| {
                    DnsError::refused(&doing, r53.endpoint(), "no zone in the answer")
                })?;
            Ok(Zone {
                id: id.clone(),
                name,
            })
        }
        ZoneRef::Name(name) => {
            let doing = format!("looking up hosted zone {name}");
            let out = r53
                .client()
                .list_hosted_zones_by_name()
                .dns_name(name)
                .max_items(20)
                .send()
                .await
                .map_err(r53.err(&doing))?;
            let wanted = format!("{name}.");
            let found: Vec<String> = out
                .hosted_zones()
                .iter()
                .filter(|z| z.name().eq_ignore_ascii_case(&wanted))
                .map(|z| z.id().trim_start_matches("/hostedzone/").to_string())
                .collect();
            match found.as_slice() {
                [id] => Ok(Zone {
                    id: id.clone(),
                    name: name.clone(),
                }),
                [] => Err(DnsError::refused(
                    &doing,
                    r53.endpoint(),
                    format!("no hosted zone is named {name}: phoenix writes records into an existing zone and never creates one (create it, or set spec.dns.zone to its id)"),
                )),
                many => Err(DnsError::refused(
                    &doing,
                    r53.endpoint(),
                    format!(
                        "{} hosted zones are named {name} ({}): set spec.dns.zone to the id of the one to use",
                        many.len(),
                        many.join(", ")
                    ),
                )),
            }
        }
    }
}

fn live_set(set: &ResourceRecordSet) -> LiveSet {
    let mut values: Vec<String> = set
        .resource_records()
        .iter()
        .map(|r| r.value().to_string())
        .collect();
    values.sort();
    LiveSet {
        name: set.name().to_ascii_lowercase(),
        record_type: set.r#type().as_str().to_string(),
        ttl: set.ttl(),
        values,
        alias: set.alias_target().is_some(),
    }
}

/// The record sets at exactly `fqdn`.
pub async fn read_name(r53: &Route53, zone: &Zone, fqdn: &str) -> Result<Vec<LiveSet>, DnsError> {
    let doing = format!("reading the records at {fqdn}");
    let out = r53
        .client()
        .list_resource_record_sets()
        .hosted_zone_id(&zone.id)
        .start_record_name(fqdn)
        .max_items(20)
        .send()
        .await
        .map_err(r53.err(&doing))?;
    Ok(out
        .resource_record_sets()
        .iter()
        .map(live_set)
        .filter(|s| s.name == fqdn)
        .collect())
}

/// Every record set of the zone (paged, at most [`MAX_PAGES`] pages).
pub async fn read_zone(r53: &Route53, zone: &Zone) -> Result<Vec<LiveSet>, DnsError> {
    let doing = format!("reading the records of hosted zone {}", zone.name);
    let mut out = Vec::new();
    let mut next: Option<(String, RrType)> = None;
    for _ in 0..MAX_PAGES {
        let mut req = r53
            .client()
            .list_resource_record_sets()
            .hosted_zone_id(&zone.id);
        if let Some((name, kind)) = next.take() {
            req = req.start_record_name(name).start_record_type(kind);
        }
        let page = req.send().await.map_err(r53.err(&doing))?;
        out.extend(page.resource_record_sets().iter().map(live_set));
        match (
            page.is_truncated(),
            page.next_record_name(),
            page.next_record_type(),
        ) {
            (true, Some(n), Some(t)) => next = Some((n.to_string(), t.clone())),
            _ => return Ok(out),
        }
    }
    Err(DnsError::refused(
        &doing,
        r53.endpoint(),
        format!("more than {MAX_PAGES} pages of records"),
    ))
}

fn record_set(set: &LiveSet) -> Result<ResourceRecordSet, String> {
    let mut b = ResourceRecordSet::builder()
        .name(&set.name)
        .r#type(RrType::from(set.record_type.as_str()));
    if let Some(ttl) = set.ttl {
        b = b.ttl(ttl);
    }
    for v in &set.values {
        b = b.resource_records(
            ResourceRecord::builder()
                .value(v)
                .build()
                .map_err(|e| e.to_string())?,
        );
    }
    b.build().map_err(|e| e.to_string())
}

/// Submits one change batch (atomic in Route 53) and returns the change id.
async fn submit(
    r53: &Route53,
    zone: &Zone,
    changes: Vec<(ChangeAction, LiveSet)>,
    comment: &str,
) -> Result<String, DnsError> {
    let doing = format!("changing records in hosted zone {}", zone.name);
    let mut batch = ChangeBatch::builder().comment(comment);
    for (action, set) in &changes {
        let set = record_set(set).map_err(|e| DnsError::refused(&doing, r53.endpoint(), e))?;
        batch = batch.changes(
            Change::builder()
                .action(action.clone())
                .resource_record_set(set)
                .build()
                .map_err(|e| DnsError::refused(&doing, r53.endpoint(), e.to_string()))?,
        );
    }
    let batch = batch
        .build()
        .map_err(|e| DnsError::refused(&doing, r53.endpoint(), e.to_string()))?;
    let out = r53
        .client()
        .change_resource_record_sets()
        .hosted_zone_id(&zone.id)
        .change_batch(batch)
        .send()
        .await
        .map_err(r53.err(&doing))?;
    Ok(out
        .change_info()
        .map(|c| c.id().trim_start_matches("/change/").to_string())
        .unwrap_or_default())
}

/// Waits (through the engine's one wait) until Route 53 reports change `id` INSYNC: applied on
/// all its authoritative servers.
async fn wait_in_sync(
    ctx: &NodeCtx,
    r53: &Route53,
    id: &str,
    what: &str,
    timeout: Duration,
    poll: Duration,
) -> Result<(), NodeError> {
    if id.is_empty() {
        return Err(NodeError::permanent(format!(
            "Route 53 returned no change id for {what}, so it cannot be waited for"
        )));
    }
    let doing = format!("reading the status of change {id}");
    ctx.wait_for_state(
        &format!("Route 53 change {id} ({what}) INSYNC"),
        timeout,
        poll,
        || {
            let r53 = r53.clone();
            let doing = doing.clone();
            let id = id.to_string();
            async move {
                let out = r53
                    .client()
                    .get_change()
                    .id(&id)
                    .send()
                    .await
                    .map_err(r53.err(&doing))?;
                match out.change_info().map(|c| c.status()) {
                    Some(ChangeStatus::Insync) => Ok(Check::Ready(())),
                    Some(other) => Ok(Check::Waiting(other.as_str().to_string())),
                    None => Ok(Check::Waiting("no status".into())),
                }
            }
        },
    )
    .await
}

/// Beyond the wait for INSYNC, a node makes a few calls, each bounded by the SDK's operation
/// timeout; the node's own deadline leaves room for them, so the wait's expiry is what a user
/// sees ("timed out after ... waiting for Route 53 change ... INSYNC (last observed: PENDING)").
const CALLS_MARGIN: Duration = Duration::from_secs(30);

/// How the DNS nodes run.
#[derive(Clone, Debug)]
pub struct DnsOptions {
    /// Change records phoenix does not own (recorded in the audit trail).
    pub take_over: bool,
    /// How long a change may take to be INSYNC.
    pub timeout: Duration,
    pub poll_interval: Duration,
}

/// Everything a deployment's DNS nodes share.
pub struct DnsTarget {
    pub r53: Route53,
    pub ec2: Ec2,
    pub env: Arc<Environment>,
    /// The effective name (`phoenix:env` of the marks).
    pub deployment: String,
    /// A copy's suffix: its records go under `SUFFIX.NAME`, never the live names.
    pub copy_suffix: Option<String>,
    pub commit: String,
}

/// The copy suffix of deployment `name` of env `base` (`None` for the live env).
pub fn copy_suffix(base: &str, name: &str) -> Option<String> {
    (name != base).then(|| {
        name.strip_prefix(&format!("{base}-"))
            .unwrap_or(name)
            .to_string()
    })
}

/// The node specs of the cutover, one per record, in the apps layer after every node in
/// `after` (the apps and prunes): the last step of a rebuild.
pub fn cutover_specs(env: &Environment, after: &[String], opts_timeout: Duration) -> Vec<NodeSpec> {
    let Some(dns) = &env.dns else {
        return Vec::new();
    };
    dns.records
        .iter()
        .map(|r| {
            NodeSpec::new(
                r.resource_id(),
                Layer::Apps,
                opts_timeout + CALLS_MARGIN,
                format!(
                    "DNS record {} {} in zone {} pointing at {}, in sync",
                    r.name,
                    r.record_type.as_str(),
                    dns.zone,
                    r.target
                ),
            )
            .depends_on(after.iter().cloned())
        })
        .collect()
}

/// The cutover nodes with their actions.
pub fn cutover_nodes(
    target: Arc<DnsTarget>,
    after: &[String],
    opts: &DnsOptions,
) -> Vec<(NodeSpec, Arc<dyn Action>)> {
    let Some(dns) = &target.env.dns else {
        return Vec::new();
    };
    cutover_specs(&target.env, after, opts.timeout)
        .into_iter()
        .zip(dns.records.iter())
        .map(|(spec, record)| {
            let action: Arc<dyn Action> = Arc::new(Cutover {
                target: Arc::clone(&target),
                record: record.clone(),
                opts: opts.clone(),
            });
            (spec, action)
        })
        .collect()
}

/// Points one record at the deployment's instances (one attempt; the engine retries).
struct Cutover {
    target: Arc<DnsTarget>,
    record: DnsRecord,
    opts: DnsOptions,
}

impl Action for Cutover {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, Result<NodeOutcome, NodeError>> {
        let t = Arc::clone(&self.target);
        let record = self.record.clone();
        let opts = self.opts.clone();
        Box::pin(async move {
            let dns = t
                .env
                .dns
                .as_ref()
                .ok_or_else(|| NodeError::permanent("the environment has no spec.dns"))?;
            let zone = resolve_zone(&t.r53, &dns.zone).await?;
            let name = records::record_name(&zone.name, &record, t.copy_suffix.as_deref());
            let live_cloud = aws::observe(&t.ec2, &t.deployment).await?;
            let values = records::addresses(&t.env, &record, &live_cloud).map_err(|why| {
                NodeError::permanent(format!(
                    "{} cannot point at {}: {why}",
                    name.fqdn, record.target
                ))
            })?;
            let (live, owner, others) = read_claim(&t.r53, &zone, &name, &record).await?;
            let other_types: Vec<String> = others.iter().map(|s| s.record_type.clone()).collect();
            let claim = records::claim(
                &t.deployment,
                &name,
                live.as_ref(),
                owner.as_ref(),
                &other_types,
            );
            let rtype = record.record_type.as_str();
            if let Claim::Foreign(why) = &claim {
                if !opts.take_over {
                    return Err(NodeError::permanent(format!(
                        "{why}; phoenix does not change a DNS record it does not own, so the cutover stops here. \
                         Check that nothing else serves {}, then rerun with --take-over-dns to take it over (recorded in the audit trail)",
                        name.fqdn
                    )));
                }
            }
            let unchanged = claim == Claim::Ours
                && live.as_ref().is_some_and(|l| {
                    !l.alias && l.values == values && l.ttl == Some(i64::from(record.ttl))
                });
            if unchanged {
                ctx.progress(format!(
                    "{} {rtype} already points at {}",
                    name.fqdn,
                    values.join(",")
                ));
                return Ok(NodeOutcome::Unchanged);
            }
            let desired = LiveSet {
                name: name.fqdn.clone(),
                record_type: rtype.to_string(),
                ttl: Some(i64::from(record.ttl)),
                values: values.clone(),
                alias: false,
            };
            let mark = LiveSet {
                name: name.owner.clone(),
                record_type: "TXT".into(),
                ttl: Some(i64::from(record.ttl)),
                values: vec![records::owner_value(
                    &t.deployment,
                    &record.resource_id(),
                    &t.commit,
                )],
                alias: false,
            };
            let mut changes = Vec::new();
            // A foreign CNAME at the name would refuse the new type: it goes in the same batch.
            if let Claim::Foreign(_) = &claim {
                for other in others.iter().filter(|o| o.record_type == "CNAME") {
                    changes.push((ChangeAction::Delete, other.clone()));
                }
            }
            changes.push((ChangeAction::Upsert, desired));
            changes.push((ChangeAction::Upsert, mark));
            if let Claim::Foreign(why) = &claim {
                ctx.audit(format!(
                    "took over DNS record {} {rtype} with --take-over-dns ({why}); it now points at {}",
                    name.fqdn,
                    values.join(",")
                ));
            }
            ctx.progress(format!(
                "pointing {} {rtype} at {}",
                name.fqdn,
                values.join(",")
            ));
            let id = submit(
                &t.r53,
                &zone,
                changes,
                &format!("phoenix cutover of {} at {}", t.deployment, t.commit),
            )
            .await?;
            wait_in_sync(
                &ctx,
                &t.r53,
                &id,
                &format!("{} {rtype}", name.fqdn),
                opts.timeout,
                opts.poll_interval,
            )
            .await?;
            Ok(match (&claim, &live) {
                (Claim::Free, _) | (_, None) => NodeOutcome::Created,
                _ => NodeOutcome::Updated,
            })
        })
    }
}

/// The live record of the declared type, its ownership record, and the other sets at the name.
async fn read_claim(
    r53: &Route53,
    zone: &Zone,
    name: &RecordName,
    record: &DnsRecord,
) -> Result<(Option<LiveSet>, Option<LiveSet>, Vec<LiveSet>), DnsError> {
    let at_name = read_name(r53, zone, &name.fqdn).await?;
    let at_owner = read_name(r53, zone, &name.owner).await?;
    let rtype = record.record_type.as_str();
    let live = at_name.iter().find(|s| s.record_type == rtype).cloned();
    let owner = at_owner.into_iter().find(|s| s.record_type == "TXT");
    let others = at_name
        .into_iter()
        .filter(|s| s.record_type != rtype)
        .collect();
    Ok((live, owner, others))
}

/// The DNS drift of a deployment: each declared record missing, pointing elsewhere, or not
/// phoenix's. `live_cloud` is the deployment's live cloud (the addresses the records should hold).
pub async fn drift(
    r53: &Route53,
    env: &Environment,
    deployment: &str,
    live_cloud: &aws::LiveCloud,
) -> Result<Vec<DriftEntry>, DnsError> {
    let Some(dns) = &env.dns else {
        return Ok(Vec::new());
    };
    let zone = resolve_zone(r53, &dns.zone).await?;
    let suffix = copy_suffix(&env.name, deployment);
    let mut out = Vec::new();
    for record in &dns.records {
        let name = records::record_name(&zone.name, record, suffix.as_deref());
        let (live, owner, others) = read_claim(r53, &zone, &name, record).await?;
        let others: Vec<String> = others.into_iter().map(|s| s.record_type).collect();
        let claim = records::claim(deployment, &name, live.as_ref(), owner.as_ref(), &others);
        let desired = records::addresses(env, record, live_cloud);
        out.extend(records::drift_entry(
            record,
            &name,
            &desired,
            live.as_ref(),
            &claim,
        ));
    }
    Ok(out)
}

/// The id of the teardown node.
pub const DELETE_NODE: &str = "dns/delete";

/// The teardown node: deletes every record whose ownership mark names the deployment (and the
/// mark), whatever Git says now; nothing else in the zone is touched.
pub fn delete_node(
    r53: Route53,
    zone: ZoneRef,
    deployment: &str,
    layer: Layer,
    opts: &DnsOptions,
) -> (NodeSpec, Arc<dyn Action>) {
    let spec = NodeSpec::new(
        DELETE_NODE,
        layer,
        opts.timeout + CALLS_MARGIN,
        format!("every DNS record of {deployment} in zone {zone} deleted, in sync"),
    );
    let action: Arc<dyn Action> = Arc::new(DeleteOwned {
        r53,
        zone,
        deployment: deployment.to_string(),
        opts: opts.clone(),
    });
    (spec, action)
}

struct DeleteOwned {
    r53: Route53,
    zone: ZoneRef,
    deployment: String,
    opts: DnsOptions,
}

impl Action for DeleteOwned {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, Result<NodeOutcome, NodeError>> {
        let r53 = self.r53.clone();
        let zone = self.zone.clone();
        let env = self.deployment.clone();
        let opts = self.opts.clone();
        Box::pin(async move {
            let zone = resolve_zone(&r53, &zone).await?;
            let sets = read_zone(&r53, &zone).await?;
            let mut changes = Vec::new();
            let mut deleted = Vec::new();
            for mark in sets.iter().filter(|s| s.record_type == "TXT") {
                let ours = mark
                    .values
                    .iter()
                    .any(|v| records::owner_env(v).as_deref() == Some(env.as_str()));
                let Some((fqdn, rtype)) = records::owned_by_name(&mark.name) else {
                    continue;
                };
                if !ours {
                    continue;
                }
                if let Some(record) = sets
                    .iter()
                    .find(|s| s.name == fqdn && s.record_type == rtype)
                {
                    changes.push((ChangeAction::Delete, record.clone()));
                    deleted.push(format!("{fqdn} {rtype}"));
                }
                changes.push((ChangeAction::Delete, mark.clone()));
            }
            if changes.is_empty() {
                ctx.progress(format!(
                    "no DNS record in {} is marked as {env}'s",
                    zone.name
                ));
                return Ok(NodeOutcome::Unchanged);
            }
            for d in &deleted {
                ctx.progress(format!("deleting {d}"));
            }
            let id = submit(&r53, &zone, changes, &format!("phoenix teardown of {env}")).await?;
            wait_in_sync(
                &ctx,
                &r53,
                &id,
                &format!("the deletion of {} record(s) of {env}", deleted.len()),
                opts.timeout,
                opts.poll_interval,
            )
            .await?;
            ctx.progress(format!("deleted {} DNS record(s) of {env}", deleted.len()));
            Ok(NodeOutcome::Deleted)
        })
    }
}
