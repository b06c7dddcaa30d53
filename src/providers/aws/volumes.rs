//! Data volumes on EBS: the desired volumes of an environment, the converge nodes that attach an
//! owned volume as it is or create a missing one from the newest completed owned snapshot (or
//! the one `--restore-point` names), and the snapshot calls `phoenix backup` and `destroy` use.
//!
//! Volumes are not part of [`super::observe`]: the cloud layer's prune never deletes one. A
//! volume is only ever deleted by `destroy`, after a final snapshot (see docs/cloud.md).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_ec2::types::{Filter, ResourceType, Snapshot, VolumeType as SdkVolumeType};

use super::client::Ec2;
use super::error::AwsError;
use super::tags::{self, TAG_COMMIT, TAG_ENV, TAG_NAME, TAG_RESOURCE};
use crate::engine::{Action, BoxFuture, Check, Layer, NodeCtx, NodeError, NodeOutcome, NodeSpec};
use crate::env::model::{Environment, Placement, Volume};

/// Volumes and snapshots: the volume's name in the environment.
pub const TAG_VOLUME: &str = "phoenix:volume";
/// Snapshots: when phoenix took it, RFC 3339 UTC with milliseconds (orders snapshots taken within
/// one second, which EC2's StartTime does not).
pub const TAG_TIME: &str = "phoenix:time";
/// Snapshots: `backup` (phoenix backup), `final` (destroy) or `copy` (copied from another region).
pub const TAG_SNAPSHOT: &str = "phoenix:snapshot";
/// Volumes: the snapshot a volume was created from, or `empty`.
pub const TAG_RESTORED_FROM: &str = "phoenix:restored-from";

type Res<T> = Result<T, AwsError>;

/// Which snapshot a missing volume is created from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RestorePoint {
    /// The newest completed owned snapshot.
    #[default]
    Newest,
    /// The newest completed owned snapshot taken at or before this instant.
    At(SystemTime),
    /// This snapshot (it must be owned by the env and be of the volume it restores).
    Snapshot(String),
}

impl RestorePoint {
    /// `snap-...` or an RFC 3339 time (`2026-12-05T04:00:00Z`).
    pub fn parse(text: &str) -> Result<RestorePoint, String> {
        if text.starts_with("snap-") {
            return Ok(RestorePoint::Snapshot(text.to_string()));
        }
        humantime::parse_rfc3339_weak(text)
            .map(RestorePoint::At)
            .map_err(|e| {
                format!("{text:?} is neither a snapshot id (snap-...) nor an RFC 3339 time such as 2026-12-05T04:00:00Z: {e}")
            })
    }
}

/// One desired data volume, derived from the model without I/O.
#[derive(Clone, Debug)]
pub struct VolumeSpec {
    pub name: String,
    /// `volume/<name>`.
    pub resource: String,
    /// The instance phoenix attaches it to (`instance/<group>/<index>`) and the device; `None`
    /// for a volume left unattached for the cluster's EBS CSI driver.
    pub attach: Option<AttachSpec>,
    /// The availability zone: the instance's subnet's, or the one declared.
    pub zone: String,
    pub size: u32,
    pub volume_type: String,
    pub iops: Option<u32>,
    pub throughput: Option<u32>,
    pub allow_empty: bool,
    /// The environment that owns the volume (a drill copy's own name).
    pub env: String,
    /// The environment whose snapshots a missing volume is restored from: the env itself, or for
    /// a drill copy the env it copies (a copy restores the live env's data, never attaches it).
    pub snapshot_env: String,
    pub commit: String,
    /// `backup.recoveryPointObjective`: the newest completed snapshot must be younger.
    pub recovery_point_objective: Option<Duration>,
    /// Tags on every volume phoenix creates (ownership, name, extra tags of a copy).
    pub tags: BTreeMap<String, String>,
}

/// Where phoenix attaches a volume.
#[derive(Clone, Debug)]
pub struct AttachSpec {
    /// `instance/<group>/<index>`.
    pub instance: String,
    /// `/dev/sdf`.
    pub device: String,
}

/// The desired volumes of `env` deployed as `name` (its own name, or a copy's), restoring from
/// the snapshots of `snapshot_env`.
pub fn volume_specs(
    env: &Environment,
    name: &str,
    snapshot_env: &str,
    commit: &str,
    extra_tags: &BTreeMap<String, String>,
) -> Vec<VolumeSpec> {
    let Some(cloud) = &env.cloud else {
        return Vec::new();
    };
    env.volumes
        .iter()
        .filter_map(|v| {
            let zone = match &v.placement {
                Placement::Zone(zone) => zone.clone(),
                Placement::Instance(a) => {
                    let group = cloud.instances.iter().find(|g| g.name == a.group)?;
                    cloud
                        .network
                        .subnets
                        .iter()
                        .find(|s| s.name == group.subnet)?
                        .zone
                        .clone()
                }
            };
            Some(spec_of(v, zone, name, snapshot_env, commit, extra_tags))
        })
        .collect()
}

fn spec_of(
    v: &Volume,
    zone: String,
    name: &str,
    snapshot_env: &str,
    commit: &str,
    extra_tags: &BTreeMap<String, String>,
) -> VolumeSpec {
    let mut tags = extra_tags.clone();
    tags.insert(TAG_NAME.into(), format!("{name}-{}", v.name));
    tags.insert(TAG_ENV.into(), name.into());
    tags.insert(TAG_RESOURCE.into(), v.resource_id());
    tags.insert(TAG_COMMIT.into(), commit.into());
    tags.insert(TAG_VOLUME.into(), v.name.clone());
    VolumeSpec {
        name: v.name.clone(),
        resource: v.resource_id(),
        attach: v.attachment().map(|a| AttachSpec {
            instance: a.instance_resource(),
            device: a.device.clone(),
        }),
        zone,
        size: v.size,
        volume_type: v.volume_type.as_str().into(),
        iops: v.iops,
        throughput: v.throughput,
        allow_empty: v.allow_empty,
        env: name.into(),
        snapshot_env: snapshot_env.into(),
        commit: commit.into(),
        recovery_point_objective: v.backup.as_ref().and_then(|b| b.recovery_point_objective),
        tags,
    }
}

/// Engine node id of a volume: `cloud/volume/<name>`.
pub fn volume_node_id(name: &str) -> String {
    format!("cloud/volume/{name}")
}

/// The node specs of [`volume_nodes`]: each volume after its instance. Pure, so `plan --offline`
/// prints the nodes a rebuild runs.
pub fn volume_node_specs(specs: &[VolumeSpec], timeout: Duration) -> Vec<NodeSpec> {
    specs
        .iter()
        .map(|v| match &v.attach {
            Some(a) => NodeSpec::new(
                volume_node_id(&v.name),
                Layer::Cloud,
                timeout,
                format!(
                    "{} attached to {} as {} (restored from the newest snapshot when missing)",
                    v.resource, a.instance, a.device
                ),
            )
            .depends_on(vec![format!("cloud/{}", a.instance)]),
            None => NodeSpec::new(
                volume_node_id(&v.name),
                Layer::Cloud,
                timeout,
                format!(
                    "{} in {}, left for the cluster's EBS CSI driver to attach (restored from the newest snapshot when missing)",
                    v.resource, v.zone
                ),
            ),
        })
        .collect()
}

/// Run-time settings of the volume nodes.
#[derive(Clone, Debug)]
pub struct VolumeOptions {
    pub restore: RestorePoint,
    /// How long creating, attaching or detaching one volume may take.
    pub wait_timeout: Duration,
    pub poll_interval: Duration,
}

struct VolumeAction {
    ec2: Ec2,
    spec: VolumeSpec,
    opts: VolumeOptions,
}

impl Action for VolumeAction {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, Result<NodeOutcome, NodeError>> {
        let ec2 = self.ec2.clone();
        let spec = self.spec.clone();
        let opts = self.opts.clone();
        Box::pin(async move { converge_volume(&ctx, &ec2, &spec, &opts).await })
    }
}

/// Nodes that attach each owned volume to its instance, creating a missing one from a snapshot.
pub fn volume_nodes(
    ec2: Ec2,
    specs: Vec<VolumeSpec>,
    timeout: Duration,
    opts: &VolumeOptions,
) -> Vec<(NodeSpec, Arc<dyn Action>)> {
    let node_specs = volume_node_specs(&specs, timeout);
    node_specs
        .into_iter()
        .zip(specs)
        .map(|(node, spec)| {
            let action: Arc<dyn Action> = Arc::new(VolumeAction {
                ec2: ec2.clone(),
                spec,
                opts: opts.clone(),
            });
            (node, action)
        })
        .collect()
}

/// A live EBS volume phoenix owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveVolume {
    pub id: String,
    pub state: String,
    pub zone: String,
    pub size: u32,
    pub volume_type: String,
    pub snapshot_id: Option<String>,
    /// (instance id, device, attachment state).
    pub attachments: Vec<(String, String, String)>,
    pub tags: BTreeMap<String, String>,
}

impl LiveVolume {
    /// What EC2 says of one volume; `None` without a volume id.
    fn from_sdk(v: &aws_sdk_ec2::types::Volume, tags: BTreeMap<String, String>) -> Option<Self> {
        let text = |s: Option<&str>| s.unwrap_or_default().to_string();
        Some(LiveVolume {
            id: v.volume_id()?.to_string(),
            state: text(v.state().map(|s| s.as_str())),
            zone: text(v.availability_zone()),
            size: v.size().unwrap_or_default().max(0) as u32,
            volume_type: text(v.volume_type().map(|t| t.as_str())),
            snapshot_id: v
                .snapshot_id()
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            attachments: v
                .attachments()
                .iter()
                .map(|a| {
                    (
                        text(a.instance_id()),
                        text(a.device()),
                        text(a.state().map(|s| s.as_str())),
                    )
                })
                .collect(),
            tags,
        })
    }
}

/// A completed or pending snapshot phoenix owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveSnapshot {
    pub id: String,
    pub volume: String,
    /// The EBS volume it was taken of (EC2's `VolumeId`; a copy in another region names none
    /// that exists).
    pub source_volume: String,
    pub state: String,
    pub progress: String,
    /// `phoenix:time`, else EC2's start time.
    pub time: SystemTime,
    pub size: u32,
    pub tags: BTreeMap<String, String>,
}

fn to_system_time(t: Option<&aws_smithy_types::DateTime>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn snapshot_of(s: &Snapshot) -> Option<LiveSnapshot> {
    let tags = tags::from_sdk(s.tags.as_deref());
    let time = tags
        .get(TAG_TIME)
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .unwrap_or_else(|| to_system_time(s.start_time()));
    Some(LiveSnapshot {
        id: s.snapshot_id()?.to_string(),
        volume: tags.get(TAG_VOLUME).cloned().unwrap_or_default(),
        source_volume: s.volume_id().unwrap_or_default().to_string(),
        state: s
            .state()
            .map(|x| x.as_str().to_string())
            .unwrap_or_default(),
        progress: s.progress().unwrap_or_default().to_string(),
        time,
        size: s.volume_size().unwrap_or_default().max(0) as u32,
        tags,
    })
}

/// The snapshots owned by `env` (of one volume when given), any state, newest first. Only this
/// account's snapshots: public ones are never considered.
pub async fn owned_snapshots(ec2: &Ec2, env: &str, volume: Option<&str>) -> Res<Vec<LiveSnapshot>> {
    let doing = format!("listing the snapshots of {env}");
    let mut filters: Vec<Filter> = vec![tags::filter(&format!("tag:{TAG_ENV}"), env)];
    if let Some(v) = volume {
        filters.push(tags::filter(&format!("tag:{TAG_VOLUME}"), v));
    }
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let resp = ec2
            .client()
            .describe_snapshots()
            .owner_ids("self")
            .set_filters(Some(filters.clone()))
            .set_next_token(token.clone())
            .send()
            .await
            .map_err(ec2.err(&doing))?;
        out.extend(resp.snapshots().iter().filter_map(snapshot_of));
        token = resp.next_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    // A snapshot without the volume tag is not one phoenix made for a volume.
    out.retain(|s| !s.volume.is_empty() && s.tags.contains_key(TAG_RESOURCE));
    out.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));
    Ok(out)
}

/// One snapshot by id, if this account has it.
pub async fn snapshot(ec2: &Ec2, id: &str) -> Res<Option<LiveSnapshot>> {
    let doing = format!("reading snapshot {id}");
    let resp = ec2
        .client()
        .describe_snapshots()
        .owner_ids("self")
        .snapshot_ids(id)
        .send()
        .await;
    match resp {
        Ok(r) => Ok(r.snapshots().iter().find_map(snapshot_of)),
        Err(e) => {
            let err = ec2.err(&doing)(e);
            if err.code() == Some("InvalidSnapshot.NotFound") {
                Ok(None)
            } else {
                Err(err)
            }
        }
    }
}

/// The volumes owned by `env` (one when `name` is given), not being deleted.
pub async fn owned_volumes(ec2: &Ec2, env: &str, name: Option<&str>) -> Res<Vec<LiveVolume>> {
    let doing = format!("listing the volumes of {env}");
    let mut filters = vec![tags::filter(&format!("tag:{TAG_ENV}"), env)];
    if let Some(n) = name {
        filters.push(tags::filter(
            &format!("tag:{TAG_RESOURCE}"),
            &format!("volume/{n}"),
        ));
    }
    let resp = ec2
        .client()
        .describe_volumes()
        .set_filters(Some(filters))
        .send()
        .await
        .map_err(ec2.err(&doing))?;
    let mut out: Vec<LiveVolume> = resp
        .volumes()
        .iter()
        .filter_map(|v| {
            let tags = tags::from_sdk(v.tags.as_deref());
            if !tags::owned_by(&tags, env) || !tags.contains_key(TAG_VOLUME) {
                return None;
            }
            LiveVolume::from_sdk(v, tags)
        })
        .filter(|v| v.state != "deleting" && v.state != "deleted")
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// The live instance of `resource` (`instance/server/0`) owned by `env`: (id, zone), not
/// terminated or shutting down.
async fn owned_instance(ec2: &Ec2, env: &str, resource: &str) -> Res<Option<(String, String)>> {
    let doing = format!("finding {resource} of {env}");
    let resp = ec2
        .client()
        .describe_instances()
        .set_filters(Some(tags::owner_filters(env, Some(resource))))
        .filters(
            Filter::builder()
                .name("instance-state-name")
                .values("pending")
                .values("running")
                .values("stopping")
                .values("stopped")
                .build(),
        )
        .send()
        .await
        .map_err(ec2.err(&doing))?;
    let found = resp
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| {
            Some((
                i.instance_id()?.to_string(),
                i.placement()?.availability_zone()?.to_string(),
            ))
        })
        .max();
    Ok(found)
}

/// What `diff` reads about one desired volume.
#[derive(Clone, Debug)]
pub struct ObservedVolume {
    /// The owned volumes holding the resource (one, normally).
    pub live: Vec<LiveVolume>,
    /// The instance it attaches to, when that is live.
    pub instance_id: Option<String>,
    /// The newest completed owned snapshot of the volume in the env's region.
    pub newest_snapshot: Option<LiveSnapshot>,
}

/// Reads, for each of `specs`, its live volumes, its instance and its newest completed snapshot.
pub async fn observe_volumes(ec2: &Ec2, specs: &[VolumeSpec]) -> Res<Vec<ObservedVolume>> {
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let live = owned_volumes(ec2, &spec.env, Some(&spec.name)).await?;
        let instance_id = match &spec.attach {
            Some(a) => owned_instance(ec2, &spec.env, &a.instance)
                .await?
                .map(|(id, _)| id),
            None => None,
        };
        let snapshots = owned_snapshots(ec2, &spec.snapshot_env, Some(&spec.name)).await?;
        let newest_snapshot = pick_snapshot(&snapshots, &RestorePoint::Newest).cloned();
        out.push(ObservedVolume {
            live,
            instance_id,
            newest_snapshot,
        });
    }
    Ok(out)
}

/// Picks the snapshot a missing volume is created from; `None` when there is none.
pub fn pick_snapshot<'a>(
    snapshots: &'a [LiveSnapshot],
    restore: &RestorePoint,
) -> Option<&'a LiveSnapshot> {
    let completed = snapshots.iter().filter(|s| s.state == "completed");
    match restore {
        RestorePoint::Newest => completed.max_by(|a, b| a.time.cmp(&b.time).then(a.id.cmp(&b.id))),
        RestorePoint::At(t) => completed
            .filter(|s| s.time <= *t)
            .max_by(|a, b| a.time.cmp(&b.time).then(a.id.cmp(&b.id))),
        RestorePoint::Snapshot(id) => snapshots.iter().find(|s| s.id == *id),
    }
}

fn node_err(e: AwsError) -> NodeError {
    NodeError::from(e)
}

async fn converge_volume(
    ctx: &NodeCtx,
    ec2: &Ec2,
    spec: &VolumeSpec,
    opts: &VolumeOptions,
) -> Result<NodeOutcome, NodeError> {
    let attach = match &spec.attach {
        Some(a) => {
            let Some((instance_id, instance_zone)) = owned_instance(ec2, &spec.env, &a.instance)
                .await
                .map_err(node_err)?
            else {
                return Err(NodeError::transient(format!(
                    "{} of {} is not running yet (volume {} attaches to it)",
                    a.instance, spec.env, spec.name
                )));
            };
            Some((a, instance_id, instance_zone))
        }
        None => None,
    };
    let zone = match &attach {
        Some((_, _, instance_zone)) => instance_zone.as_str(),
        None => spec.zone.as_str(),
    };
    let live = owned_volumes(ec2, &spec.env, Some(&spec.name))
        .await
        .map_err(node_err)?;
    if live.len() > 1 {
        let ids: Vec<&str> = live.iter().map(|v| v.id.as_str()).collect();
        return Err(NodeError::permanent(format!(
            "{} of {} is held by {} volumes ({}): phoenix attaches one; delete or untag the ones that hold no data you need",
            spec.resource,
            spec.env,
            live.len(),
            ids.join(", ")
        )));
    }
    let (volume, created) = match live.into_iter().next() {
        Some(v) => (v, false),
        None => (create_volume(ctx, ec2, spec, zone, opts).await?, true),
    };
    let Some((a, instance_id, instance_zone)) = attach else {
        // Left for the cluster's EBS CSI driver: it attaches the volume where the pod that
        // claims it runs, and only in the volume's zone.
        if volume.zone != spec.zone {
            return Err(NodeError::permanent(format!(
                "volume {} ({}) is in zone {}, but {} declares {}: the cluster's EBS CSI driver attaches it only to nodes in its own zone. Snapshot it with `phoenix backup {}`, delete it, and rebuild: the volume is then restored in {}",
                volume.id, spec.resource, volume.zone, spec.resource, spec.zone, spec.env, spec.zone
            )));
        }
        return Ok(if created {
            NodeOutcome::Created
        } else {
            NodeOutcome::Unchanged
        });
    };
    // An existing volume is used as it is: its size, type and data are never changed here.
    if let Some((other, _, state)) = volume
        .attachments
        .iter()
        .find(|(i, _, s)| *i != instance_id && s != "detached")
    {
        return Err(NodeError::transient(format!(
            "volume {} ({}) is {state} to instance {other}, not to {} ({instance_id}); it is attached once that instance releases it",
            volume.id, spec.resource, a.instance
        )));
    }
    if volume.zone != instance_zone {
        return Err(NodeError::permanent(format!(
            "volume {} ({}) is in zone {}, but {} ({instance_id}) runs in {instance_zone}: EBS attaches a volume only in its own zone. Snapshot it with `phoenix backup {}`, delete it, and rebuild: the volume is then restored in {instance_zone}",
            volume.id, spec.resource, volume.zone, a.instance, spec.env
        )));
    }
    let attached_here = volume
        .attachments
        .iter()
        .any(|(i, _, s)| *i == instance_id && (s == "attached" || s == "attaching"));
    if !attached_here {
        let doing = format!(
            "attaching {} ({}) to {instance_id}",
            volume.id, spec.resource
        );
        wait_volume(ctx, ec2, spec, &volume.id, "available", opts).await?;
        ec2.client()
            .attach_volume()
            .volume_id(&volume.id)
            .instance_id(&instance_id)
            .device(&a.device)
            .send()
            .await
            .map_err(ec2.err(&doing))
            .map_err(node_err)?;
    }
    wait_attached(ctx, ec2, spec, a, &volume.id, &instance_id, opts).await?;
    Ok(match (created, attached_here) {
        (true, _) => NodeOutcome::Created,
        (false, true) => NodeOutcome::Unchanged,
        (false, false) => NodeOutcome::Updated,
    })
}

/// Creates the missing volume from the snapshot the restore point selects (or empty where the
/// volume allows it) and waits until it is available.
async fn create_volume(
    ctx: &NodeCtx,
    ec2: &Ec2,
    spec: &VolumeSpec,
    zone: &str,
    opts: &VolumeOptions,
) -> Result<LiveVolume, NodeError> {
    let snapshots = owned_snapshots(ec2, &spec.snapshot_env, Some(&spec.name))
        .await
        .map_err(node_err)?;
    let chosen = match &opts.restore {
        RestorePoint::Snapshot(id) if !snapshots.iter().any(|s| s.id == *id) => {
            // A snapshot of another volume is simply not this volume's restore point.
            match snapshot(ec2, id).await.map_err(node_err)? {
                Some(s) if s.tags.get(TAG_ENV) != Some(&spec.snapshot_env) => {
                    return Err(NodeError::permanent(format!(
                        "--restore-point {id} is not owned by {} (phoenix:env is {:?}): phoenix restores only the env's own snapshots",
                        spec.snapshot_env,
                        s.tags.get(TAG_ENV).cloned().unwrap_or_default()
                    )));
                }
                Some(_) => pick_snapshot(&snapshots, &RestorePoint::Newest),
                None => {
                    return Err(NodeError::permanent(format!(
                        "--restore-point {id}: no such snapshot in {} (snapshots are per region; list the env's with `aws ec2 describe-snapshots --owner-ids self --filters Name=tag:{TAG_ENV},Values={}`)",
                        ec2.region(),
                        spec.snapshot_env
                    )))
                }
            }
        }
        other => pick_snapshot(&snapshots, other),
    };
    if let Some(s) = chosen {
        if s.state != "completed" {
            return Err(NodeError::permanent(format!(
                "snapshot {} of volume {} is {} ({}), not completed: a volume is restored only from a completed snapshot",
                s.id, spec.name, s.state, s.progress
            )));
        }
    }
    if chosen.is_none() && !spec.allow_empty {
        let what = match &opts.restore {
            RestorePoint::Newest => "no completed snapshot".to_string(),
            RestorePoint::At(t) => format!(
                "no completed snapshot taken at or before {}",
                humantime::format_rfc3339_seconds(*t)
            ),
            RestorePoint::Snapshot(id) => format!("no snapshot {id}"),
        };
        return Err(NodeError::permanent(format!(
            "volume {name} is missing and {what} of it is owned by {env} in {region} (tags {TAG_ENV}={env}, {TAG_VOLUME}={name}): its data cannot be restored. Restore from another point with --restore-point (a snapshot id or an RFC 3339 time), copy a snapshot into {region}, or — only if the volume is meant to start empty (a first build) — set allowEmpty: true on volume {name}",
            name = spec.name,
            env = spec.snapshot_env,
            region = ec2.region(),
        )));
    }
    let mut tags = spec.tags.clone();
    tags.insert(
        TAG_RESTORED_FROM.into(),
        chosen
            .map(|s| s.id.clone())
            .unwrap_or_else(|| "empty".into()),
    );
    let size = chosen.map(|s| s.size.max(spec.size)).unwrap_or(spec.size);
    let doing = format!("creating {} of {} in {zone}", spec.resource, spec.env);
    match chosen {
        Some(s) => ctx.progress(format!(
            "restoring {} from snapshot {} ({})",
            spec.resource,
            s.id,
            humantime::format_rfc3339_seconds(s.time)
        )),
        None => ctx.progress(format!(
            "creating {} empty (allowEmpty: no snapshot to restore)",
            spec.resource
        )),
    }
    let resp = ec2
        .client()
        .create_volume()
        .availability_zone(zone)
        .size(size as i32)
        .volume_type(SdkVolumeType::from(spec.volume_type.as_str()))
        .set_iops(spec.iops.map(|v| v as i32))
        .set_throughput(spec.throughput.map(|v| v as i32))
        .set_snapshot_id(chosen.map(|s| s.id.clone()))
        .tag_specifications(tags::spec(ResourceType::Volume, &tags))
        .send()
        .await
        .map_err(ec2.err(&doing))
        .map_err(node_err)?;
    let id = resp
        .volume_id()
        .ok_or_else(|| NodeError::transient(format!("{doing}: EC2 returned no volume id")))?
        .to_string();
    wait_volume(ctx, ec2, spec, &id, "available", opts).await?;
    let live = owned_volumes(ec2, &spec.env, Some(&spec.name))
        .await
        .map_err(node_err)?;
    live.into_iter().find(|v| v.id == id).ok_or_else(|| {
        NodeError::transient(format!(
            "volume {id} ({}) is not visible yet",
            spec.resource
        ))
    })
}

async fn describe_volume(
    ec2: &Ec2,
    id: &str,
    doing: &str,
) -> Result<Option<LiveVolume>, NodeError> {
    let resp = ec2.client().describe_volumes().volume_ids(id).send().await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            let err = ec2.err(doing)(e);
            if err.code() == Some("InvalidVolume.NotFound") {
                return Ok(None);
            }
            return Err(node_err(err));
        }
    };
    Ok(resp
        .volumes()
        .first()
        .and_then(|v| LiveVolume::from_sdk(v, tags::from_sdk(v.tags.as_deref()))))
}

async fn wait_volume(
    ctx: &NodeCtx,
    ec2: &Ec2,
    spec: &VolumeSpec,
    id: &str,
    want: &'static str,
    opts: &VolumeOptions,
) -> Result<(), NodeError> {
    let what = format!("volume {id} ({}) {want}", spec.resource);
    let doing = format!("waiting for {what}");
    ctx.wait_for_state(&what, opts.wait_timeout, opts.poll_interval, || {
        let doing = doing.clone();
        async move {
            match describe_volume(ec2, id, &doing).await? {
                Some(v) if v.state == want => Ok(Check::Ready(())),
                Some(v) if v.state == "error" => Err(NodeError::permanent(format!(
                    "volume {id} is in state error"
                ))),
                Some(v) => Ok(Check::Waiting(v.state)),
                None => Ok(Check::Waiting("not visible yet".into())),
            }
        }
    })
    .await
}

async fn wait_attached(
    ctx: &NodeCtx,
    ec2: &Ec2,
    spec: &VolumeSpec,
    attach: &AttachSpec,
    id: &str,
    instance: &str,
    opts: &VolumeOptions,
) -> Result<(), NodeError> {
    let what = format!(
        "volume {id} ({}) attached to {instance} as {}",
        spec.resource, attach.device
    );
    let doing = format!("waiting for {what}");
    ctx.wait_for_state(&what, opts.wait_timeout, opts.poll_interval, || {
        let doing = doing.clone();
        async move {
            let Some(v) = describe_volume(ec2, id, &doing).await? else {
                return Err(NodeError::permanent(format!("volume {id} disappeared")));
            };
            match v.attachments.iter().find(|(i, _, _)| i == instance) {
                Some((_, _, s)) if s == "attached" => Ok(Check::Ready(())),
                Some((_, _, s)) => Ok(Check::Waiting(s.clone())),
                None => Ok(Check::Waiting(format!("volume {}", v.state))),
            }
        }
    })
    .await
}

/// Tags of a snapshot phoenix takes of `volume` (owned by `env`): ownership, the volume, the
/// commit, the time and why it was taken.
pub fn snapshot_tags(
    env: &str,
    volume: &str,
    commit: &str,
    kind: &str,
    at: SystemTime,
) -> BTreeMap<String, String> {
    let stamp = humantime::format_rfc3339_millis(at).to_string();
    BTreeMap::from([
        (TAG_ENV.to_string(), env.to_string()),
        (TAG_RESOURCE.to_string(), format!("snapshot/{volume}")),
        (TAG_COMMIT.to_string(), commit.to_string()),
        (TAG_VOLUME.to_string(), volume.to_string()),
        (TAG_TIME.to_string(), stamp.clone()),
        (TAG_SNAPSHOT.to_string(), kind.to_string()),
        (TAG_NAME.to_string(), format!("{env}-{volume}-{stamp}")),
    ])
}

/// Starts a snapshot of the owned volume `volume_id`; returns the snapshot id.
pub async fn create_snapshot(
    ec2: &Ec2,
    volume_id: &str,
    tags: &BTreeMap<String, String>,
) -> Res<String> {
    let volume = tags.get(TAG_VOLUME).cloned().unwrap_or_default();
    let doing = format!("snapshotting volume {volume} ({volume_id})");
    let resp = ec2
        .client()
        .create_snapshot()
        .volume_id(volume_id)
        .description(format!("phoenix backup of volume {volume}"))
        .tag_specifications(tags::spec(ResourceType::Snapshot, tags))
        .send()
        .await
        .map_err(ec2.err(&doing))?;
    resp.snapshot_id()
        .map(str::to_string)
        .ok_or_else(|| AwsError::NotReady {
            doing,
            message: "EC2 returned no snapshot id".into(),
        })
}

/// Copies `source_id` from `source_region` into the region of `dest`, tagged `tags`.
pub async fn copy_snapshot(
    dest: &Ec2,
    source_region: &str,
    source_id: &str,
    tags: &BTreeMap<String, String>,
) -> Res<String> {
    let doing = format!(
        "copying snapshot {source_id} from {source_region} to {}",
        dest.region()
    );
    let resp = dest
        .client()
        .copy_snapshot()
        .source_region(source_region)
        .source_snapshot_id(source_id)
        .description(format!("phoenix copy of {source_id} from {source_region}"))
        .tag_specifications(tags::spec(ResourceType::Snapshot, tags))
        .send()
        .await
        .map_err(dest.err(&doing))?;
    resp.snapshot_id()
        .map(str::to_string)
        .ok_or_else(|| AwsError::NotReady {
            doing,
            message: "EC2 returned no snapshot id".into(),
        })
}

/// Deletes an owned snapshot; refuses one without the env's tags.
pub async fn delete_snapshot(ec2: &Ec2, env: &str, snap: &LiveSnapshot) -> Res<()> {
    let doing = format!("deleting snapshot {} of volume {}", snap.id, snap.volume);
    if !tags::owned_by(&snap.tags, env) {
        return Err(AwsError::refused(
            doing,
            format!("it is not owned by {env}"),
        ));
    }
    ec2.client()
        .delete_snapshot()
        .snapshot_id(&snap.id)
        .send()
        .await
        .map_err(ec2.err(&doing))?;
    Ok(())
}

/// Deletes an owned, detached volume (destroy, after its final snapshot).
pub async fn delete_volume(ec2: &Ec2, env: &str, v: &LiveVolume) -> Res<()> {
    let doing = format!(
        "deleting volume {} ({})",
        v.id,
        v.tags.get(TAG_RESOURCE).cloned().unwrap_or_default()
    );
    if !tags::owned_by(&v.tags, env) {
        return Err(AwsError::refused(
            doing,
            format!("it is not owned by {env}"),
        ));
    }
    ec2.client()
        .delete_volume()
        .volume_id(&v.id)
        .send()
        .await
        .map_err(ec2.err(&doing))?;
    Ok(())
}

/// Which owned snapshots `keep` prunes: the completed ones beyond the newest `keep` (newest
/// first in `snapshots`). Never the newest completed one, never a pending one.
pub fn to_prune(snapshots: &[LiveSnapshot], keep: u32) -> Vec<&LiveSnapshot> {
    let mut completed: Vec<&LiveSnapshot> = snapshots
        .iter()
        .filter(|s| s.state == "completed")
        .collect();
    completed.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));
    completed.into_iter().skip(keep.max(1) as usize).collect()
}

/// Waits (the engine's way: progress on each change, cancellable) until snapshot `id` is
/// completed, at most `timeout`; the timeout error names the snapshot, its volume, its region
/// and the state and progress seen last. A snapshot in state `error` ends the wait at once.
pub async fn wait_snapshot(
    ctx: &NodeCtx,
    ec2: &Ec2,
    id: &str,
    volume: &str,
    timeout: Duration,
    poll: Duration,
) -> Result<LiveSnapshot, NodeError> {
    let what = format!(
        "snapshot {id} of volume/{volume} in {} completed",
        ec2.region()
    );
    ctx.wait_for_state(&what, timeout, poll, || async move {
        match snapshot(ec2, id).await.map_err(node_err)? {
            Some(s) if s.state == "completed" => Ok(Check::Ready(s)),
            Some(s) if s.state == "error" => Err(NodeError::permanent(format!(
                "snapshot {id} of volume/{volume} failed (state error)"
            ))),
            Some(s) => Ok(Check::Waiting(format!("{} {}", s.state, s.progress))),
            None => Ok(Check::Waiting("not visible yet".into())),
        }
    })
    .await
}

/// Destroy nodes for the env's live volumes: each after the instances are gone (`after`), a
/// final snapshot first unless `final_snapshot` is false, then the volume is deleted. Snapshots
/// are never deleted here.
pub fn volume_destroy_nodes(
    ec2: Ec2,
    env: &str,
    commit: &str,
    live: Vec<LiveVolume>,
    final_snapshot: bool,
    after: Vec<String>,
    timeout: Duration,
) -> Vec<(NodeSpec, Arc<dyn Action>)> {
    live.into_iter()
        .map(|v| {
            let name = v.tags.get(TAG_VOLUME).cloned().unwrap_or_default();
            let description = if final_snapshot {
                format!(
                    "a final snapshot of volume/{name} ({}), then its deletion",
                    v.id
                )
            } else {
                format!(
                    "deletion of volume/{name} ({}) without a final snapshot",
                    v.id
                )
            };
            let spec = NodeSpec::new(
                format!("cloud/delete/volume/{name}"),
                Layer::Cloud,
                timeout,
                description,
            )
            .depends_on(after.clone());
            let action: Arc<dyn Action> = Arc::new(DestroyVolume {
                ec2: ec2.clone(),
                env: env.to_string(),
                commit: commit.to_string(),
                volume: v,
                name,
                final_snapshot,
                timeout,
            });
            (spec, action)
        })
        .collect()
}

/// The final snapshot a destroy already took of the EBS volume `volume_id` (pending or
/// completed), if any.
fn earlier_final_snapshot<'a>(
    snapshots: &'a [LiveSnapshot],
    volume_id: &str,
) -> Option<&'a LiveSnapshot> {
    snapshots
        .iter()
        .filter(|s| s.source_volume == volume_id)
        .filter(|s| s.tags.get(TAG_SNAPSHOT).map(String::as_str) == Some("final"))
        .filter(|s| s.state == "pending" || s.state == "completed")
        .max_by(|a, b| a.time.cmp(&b.time))
}

struct DestroyVolume {
    ec2: Ec2,
    env: String,
    commit: String,
    volume: LiveVolume,
    name: String,
    final_snapshot: bool,
    timeout: Duration,
}

impl Action for DestroyVolume {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, Result<NodeOutcome, NodeError>> {
        let ec2 = self.ec2.clone();
        let env = self.env.clone();
        let commit = self.commit.clone();
        let id = self.volume.id.clone();
        let name = self.name.clone();
        let final_snapshot = self.final_snapshot;
        let timeout = self.timeout;
        Box::pin(async move {
            let doing = format!("reading volume {id} (volume/{name})");
            let Some(v) = describe_volume(&ec2, &id, &doing).await? else {
                return Ok(NodeOutcome::Unchanged);
            };
            if !tags::owned_by(&v.tags, &env) {
                return Err(NodeError::permanent(format!(
                    "volume {id} is no longer owned by {env}; left alone"
                )));
            }
            // The instances are deleted first, so the final snapshot is of a quiet disk.
            let what = format!("volume {id} (volume/{name}) detached");
            ctx.wait_for_state(&what, timeout, Duration::from_secs(1), || {
                let ec2 = ec2.clone();
                let id = id.clone();
                let doing = doing.clone();
                async move {
                    match describe_volume(&ec2, &id, &doing).await? {
                        Some(v) if v.state == "available" => Ok(Check::Ready(())),
                        Some(v) => Ok(Check::Waiting(v.state)),
                        None => Ok(Check::Ready(())),
                    }
                }
            })
            .await?;
            if final_snapshot {
                // A destroy tried again (after a timeout, or a failed delete) waits for the
                // final snapshot it took of this volume, rather than taking another.
                let earlier = owned_snapshots(&ec2, &env, Some(&name)).await?;
                let snap = match earlier_final_snapshot(&earlier, &id) {
                    Some(s) => {
                        ctx.progress(format!(
                            "final snapshot {} of volume/{name} was taken earlier ({})",
                            s.id, s.state
                        ));
                        s.id.clone()
                    }
                    None => {
                        let tags = snapshot_tags(&env, &name, &commit, "final", SystemTime::now());
                        let snap = create_snapshot(&ec2, &id, &tags).await?;
                        ctx.progress(format!("final snapshot {snap} of volume/{name} started"));
                        snap
                    }
                };
                wait_snapshot(&ctx, &ec2, &snap, &name, timeout, Duration::from_secs(1)).await?;
                ctx.progress(format!("final snapshot {snap} of volume/{name} completed"));
            }
            delete_volume(&ec2, &env, &v).await?;
            Ok(NodeOutcome::Deleted)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: &str, secs: u64, state: &str) -> LiveSnapshot {
        LiveSnapshot {
            id: id.into(),
            volume: "db".into(),
            source_volume: "vol-1".into(),
            state: state.into(),
            progress: String::new(),
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            size: 1,
            tags: BTreeMap::new(),
        }
    }

    #[test]
    fn the_restore_point_picks_the_newest_completed_at_or_before() {
        let s = vec![
            snap("snap-c", 300, "pending"),
            snap("snap-b", 200, "completed"),
            snap("snap-a", 100, "completed"),
        ];
        assert_eq!(
            pick_snapshot(&s, &RestorePoint::Newest).unwrap().id,
            "snap-b"
        );
        let at = |secs| RestorePoint::At(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(pick_snapshot(&s, &at(199)).unwrap().id, "snap-a");
        assert_eq!(pick_snapshot(&s, &at(200)).unwrap().id, "snap-b");
        assert!(pick_snapshot(&s, &at(99)).is_none());
        let by_id = RestorePoint::Snapshot("snap-a".into());
        assert_eq!(pick_snapshot(&s, &by_id).unwrap().id, "snap-a");
    }

    #[test]
    fn pruning_keeps_the_newest_and_pending_ones() {
        let s = vec![
            snap("snap-d", 400, "pending"),
            snap("snap-c", 300, "completed"),
            snap("snap-b", 200, "completed"),
            snap("snap-a", 100, "completed"),
        ];
        let ids = |v: Vec<&LiveSnapshot>| v.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(to_prune(&s, 2)), ["snap-a"]);
        assert_eq!(ids(to_prune(&s, 1)), ["snap-b", "snap-a"]);
        assert_eq!(
            ids(to_prune(&s, 0)),
            ["snap-b", "snap-a"],
            "keep 0 still keeps the newest"
        );
    }

    #[test]
    fn a_restore_point_is_a_snapshot_id_or_a_time() {
        assert_eq!(
            RestorePoint::parse("snap-0abc").unwrap(),
            RestorePoint::Snapshot("snap-0abc".into())
        );
        assert!(matches!(
            RestorePoint::parse("2026-12-05T04:00:00Z").unwrap(),
            RestorePoint::At(_)
        ));
        assert!(RestorePoint::parse("yesterday").is_err());
    }

    #[test]
    fn a_retried_destroy_finds_the_final_snapshot_it_took_of_that_volume() {
        let tagged = |mut s: LiveSnapshot, kind: &str, volume: &str| {
            s.tags.insert(TAG_SNAPSHOT.into(), kind.into());
            s.source_volume = volume.into();
            s
        };
        let snaps = vec![
            tagged(snap("snap-backup", 10, "completed"), "backup", "vol-1"),
            tagged(snap("snap-other", 20, "completed"), "final", "vol-0"),
            tagged(snap("snap-failed", 30, "error"), "final", "vol-1"),
            tagged(snap("snap-final", 40, "pending"), "final", "vol-1"),
        ];
        assert_eq!(
            earlier_final_snapshot(&snaps, "vol-1").map(|s| s.id.as_str()),
            Some("snap-final")
        );
        assert!(earlier_final_snapshot(&snaps[..3], "vol-1").is_none());
    }
}
