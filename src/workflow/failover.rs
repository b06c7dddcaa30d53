//! A failover run's data: before a volume is restored in the failover region, its newest
//! snapshot is brought there. `phoenix backup` copies each snapshot to the regions of the
//! volume's `copyTo`; when the primary region still answers and holds a newer completed snapshot
//! than the failover region, that one is copied on the spot and waited for. When the primary
//! does not answer (the outage failover is for), the newest copy already in the failover region
//! is what the volume is restored from, and the node says so.
//!
//! One node per volume (`cloud/failover-snapshot/<volume>`), which the volume's node depends
//! on, so the copy is timed, retried and recorded like every other step of the run.

use super::deployment::Deployment;
use crate::engine::{Action, BoxFuture, Layer, NodeCtx, NodeError, NodeOutcome, NodeSpec};
use crate::providers::aws::{self, AwsOptions, Ec2, RestorePoint, VolumeSpec};
use std::sync::Arc;
use std::time::Duration;

/// Tag on a snapshot copied on the spot: where it was copied from (`region/snap-...`), as on
/// the copies `phoenix backup` makes.
const TAG_SOURCE: &str = "phoenix:source-snapshot";

/// The node id of the snapshot step of `volume`.
pub fn snapshot_node_id(volume: &str) -> String {
    format!("cloud/failover-snapshot/{volume}")
}

/// How a failover run reaches the primary region: briefly, since it may be the region that is
/// out. Two attempts of at most 5 s each, 12 s in all per call.
fn primary_options() -> AwsOptions {
    AwsOptions {
        connect_timeout: Duration::from_secs(2),
        attempt_timeout: Duration::from_secs(5),
        operation_timeout: Duration::from_secs(12),
        max_attempts: 2,
        ..AwsOptions::default()
    }
}

/// Adds the snapshot step of each volume of a failover run to `nodes` and makes the volume's
/// node depend on it. Nothing for a run in the primary region. `dest` is the failover region's
/// client (`None` when the graph is only shown).
pub fn add_snapshot_nodes(
    nodes: &mut [(NodeSpec, Option<Arc<dyn Action>>)],
    deployment: &Deployment,
    dest: Option<&Ec2>,
    timeout: Duration,
) -> Vec<(NodeSpec, Option<Arc<dyn Action>>)> {
    let Some(primary) = &deployment.primary_region else {
        return Vec::new();
    };
    let Some(cloud) = &deployment.env.cloud else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for spec in deployment.volume_specs() {
        let id = snapshot_node_id(&spec.name);
        let node = NodeSpec::new(
            id.clone(),
            Layer::Cloud,
            // The wait for a copy gets the whole timeout; the node a little more for its reads.
            timeout + Duration::from_secs(30),
            format!(
                "the newest snapshot of {} in {} (copied from {primary} if that still answers with a newer one)",
                spec.resource, cloud.region
            ),
        );
        if let Some((volume_node, _)) = nodes
            .iter_mut()
            .find(|(n, _)| n.id == aws::volume_node_id(&spec.name))
        {
            volume_node.depends_on.push(id);
        }
        let action = dest.map(|dest| {
            let action: Arc<dyn Action> = Arc::new(BringSnapshot {
                dest: dest.clone(),
                primary: primary.clone(),
                spec,
                commit: deployment.commit().to_string(),
                timeout,
            });
            action
        });
        out.push((node, action));
    }
    out
}

struct BringSnapshot {
    dest: Ec2,
    primary: String,
    spec: VolumeSpec,
    commit: String,
    timeout: Duration,
}

impl Action for BringSnapshot {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, Result<NodeOutcome, NodeError>> {
        let dest = self.dest.clone();
        let primary = self.primary.clone();
        let spec = self.spec.clone();
        let commit = self.commit.clone();
        let timeout = self.timeout;
        Box::pin(async move { bring(&ctx, &dest, &primary, &spec, &commit, timeout).await })
    }
}

fn stamp(s: &aws::LiveSnapshot) -> String {
    humantime::format_rfc3339_seconds(s.time).to_string()
}

async fn bring(
    ctx: &NodeCtx,
    dest: &Ec2,
    primary_region: &str,
    spec: &VolumeSpec,
    commit: &str,
    timeout: Duration,
) -> Result<NodeOutcome, NodeError> {
    let region = dest.region().to_string();
    let name = &spec.name;
    let here = aws::owned_snapshots(dest, &spec.snapshot_env, Some(name)).await?;
    let newest_here = aws::pick_snapshot(&here, &RestorePoint::Newest).cloned();
    let primary = match aws::connect(primary_region, &primary_options()).await {
        Ok(c) => Ok(c),
        Err(e) => Err(e.to_string()),
    };
    let there = match &primary {
        Ok(p) => aws::owned_snapshots(p, &spec.snapshot_env, Some(name))
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.clone()),
    };
    let there = match there {
        Ok(list) => list,
        Err(why) => {
            return match newest_here {
                Some(s) => {
                    ctx.progress(format!(
                        "{primary_region} does not answer ({why}); volume/{name} is restored from {} in {region}, taken {}",
                        s.id,
                        stamp(&s)
                    ));
                    Ok(NodeOutcome::Unchanged)
                }
                None if spec.allow_empty => {
                    ctx.progress(format!(
                        "{primary_region} does not answer ({why}) and {region} holds no snapshot of volume/{name}: it starts empty (allowEmpty)"
                    ));
                    Ok(NodeOutcome::Unchanged)
                }
                None => Err(NodeError::permanent(format!(
                    "{region} holds no completed snapshot of volume/{name} of {} and {primary_region} does not answer ({why}), so there is nothing to restore it from; `phoenix backup {}` copies each snapshot to {region} while {primary_region} is up (backup.copyTo)",
                    spec.snapshot_env, spec.snapshot_env
                ))),
            };
        }
    };
    let Ok(primary) = primary else {
        return Err(NodeError::permanent(format!(
            "no EC2 client for {primary_region}"
        )));
    };
    let newest_there = aws::pick_snapshot(&there, &RestorePoint::Newest).cloned();
    let source = match (&newest_there, &newest_here) {
        (None, Some(h)) => {
            ctx.progress(format!(
                "{primary_region} holds no newer snapshot of volume/{name}; the newest is {} in {region}, taken {}",
                h.id,
                stamp(h)
            ));
            return Ok(NodeOutcome::Unchanged);
        }
        (None, None) => {
            ctx.progress(format!(
                "no snapshot of volume/{name} in {primary_region} or {region}"
            ));
            return Ok(NodeOutcome::Unchanged);
        }
        (Some(t), Some(h)) if h.time >= t.time => {
            ctx.progress(format!(
                "{region} already holds the newest snapshot of volume/{name}: {} taken {}",
                h.id,
                stamp(h)
            ));
            return Ok(NodeOutcome::Unchanged);
        }
        (Some(t), _) => t.clone(),
    };
    // A copy started by an earlier attempt (or run) is waited for, not started again.
    let marker = format!("{primary_region}/{}", source.id);
    let started = here
        .iter()
        .find(|s| s.tags.get(TAG_SOURCE) == Some(&marker))
        .map(|s| s.id.clone());
    let id = match started {
        Some(id) => id,
        None => {
            // The copy carries the original's time, so the newest copy is the newest backup.
            let mut tags = source.tags.clone();
            tags.insert(aws::TAG_SNAPSHOT.to_string(), "copy".to_string());
            tags.insert(aws::TAG_COMMIT.to_string(), commit.to_string());
            tags.insert(TAG_SOURCE.to_string(), marker);
            tags.insert(aws::TAG_ENV.to_string(), spec.snapshot_env.clone());
            let id = aws::copy_snapshot(dest, primary.region(), &source.id, &tags).await?;
            ctx.progress(format!(
                "{primary_region} answers with a newer snapshot of volume/{name} ({} taken {}): copy {id} to {region} started",
                source.id,
                stamp(&source)
            ));
            id
        }
    };
    aws::wait_snapshot(ctx, dest, &id, name, timeout, Duration::from_secs(1)).await?;
    ctx.progress(format!("copy {id} of {} in {region} completed", source.id));
    Ok(NodeOutcome::Created)
}
