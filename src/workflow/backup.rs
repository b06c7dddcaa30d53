//! `phoenix backup ENV` as one engine run: per data volume, a snapshot of the owned volume
//! (waited for until completed), a copy to each region of its policy's `copyTo`, then the prune
//! of the owned snapshots beyond `keep` in each of those regions. An error on one volume does
//! not stop the others; it is reported and makes the exit code 1.

use super::context::Context;
use super::deployment::{run_graph, Deployment, RunSettings};
use crate::engine::{
    Action, BoxFuture, Graph, Layer, NodeCtx, NodeError, NodeOutcome, NodeSpec, NodeState,
    RunSummary,
};
use crate::env::model::Volume;
use crate::error::Failure;
use crate::providers::aws::{self, AwsOptions, Ec2, TAG_SNAPSHOT};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// Version of the backup report document (docs/json.md, "Backup report").
pub const BACKUP_SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug)]
pub struct BackupSettings {
    /// How long one snapshot or copy may take to complete.
    pub timeout: Duration,
    pub concurrency: usize,
    pub poll_interval: Duration,
}

/// What `phoenix backup` did, per volume and region.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupReport {
    pub schema_version: u32,
    /// `backupReport`: tells this line from the run events in the JSON stream.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub env: String,
    pub commit: String,
    pub region: String,
    pub volumes: Vec<VolumeBackup>,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeBackup {
    pub volume: String,
    /// The volume snapshotted; `None` when there was none to back up.
    pub volume_id: Option<String>,
    /// The new completed snapshot in the env's region.
    pub snapshot_id: Option<String>,
    /// RFC 3339 UTC (the `phoenix:time` tag).
    pub time: Option<String>,
    /// Whether the new snapshot was seen completed.
    pub completed: bool,
    pub copies: Vec<RegionSnapshot>,
    /// Owned snapshots deleted by the retention policy (`keep`).
    pub pruned: Vec<RegionSnapshot>,
    /// Owned completed snapshots left per region after the prune.
    pub kept: BTreeMap<String, usize>,
    /// What failed for this volume, if anything.
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegionSnapshot {
    pub region: String,
    pub snapshot_id: String,
}

/// What the nodes of one run share: the snapshot each volume's copies start from, and the report.
#[derive(Default)]
struct Shared {
    report: Mutex<BTreeMap<String, VolumeBackup>>,
}

impl Shared {
    fn with<T>(&self, volume: &str, f: impl FnOnce(&mut VolumeBackup) -> T) -> T {
        let mut map = self.report.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = map
            .entry(volume.to_string())
            .or_insert_with(|| VolumeBackup {
                volume: volume.to_string(),
                ..VolumeBackup::default()
            });
        f(entry)
    }

    fn snapshot_of(&self, volume: &str) -> Option<String> {
        self.with(volume, |v| v.snapshot_id.clone())
    }
}

fn snapshot_node(volume: &str) -> String {
    format!("backup/{volume}/snapshot")
}

fn copy_node(volume: &str, region: &str) -> String {
    format!("backup/{volume}/copy/{region}")
}

fn prune_node(volume: &str, region: &str) -> String {
    format!("backup/{volume}/prune/{region}")
}

/// The backup graph's node specs (pure): per volume a snapshot, a copy per `copyTo` region, a
/// prune per region after what it prunes around.
pub fn backup_specs(env_region: &str, volumes: &[Volume], timeout: Duration) -> Vec<NodeSpec> {
    let mut out = Vec::new();
    for v in volumes {
        let policy = v.backup.clone().unwrap_or_else(default_policy);
        out.push(NodeSpec::new(
            snapshot_node(&v.name),
            Layer::Cloud,
            timeout,
            format!("a completed snapshot of volume/{} in {env_region}", v.name),
        ));
        out.push(
            NodeSpec::new(
                prune_node(&v.name, env_region),
                Layer::Cloud,
                timeout,
                format!(
                    "owned snapshots of volume/{} in {env_region} beyond keep {} deleted",
                    v.name, policy.keep
                ),
            )
            .depends_on(vec![snapshot_node(&v.name)]),
        );
        for r in &policy.copy_to {
            out.push(
                NodeSpec::new(
                    copy_node(&v.name, r),
                    Layer::Cloud,
                    timeout,
                    format!(
                        "a completed copy of the new snapshot of volume/{} in {r}",
                        v.name
                    ),
                )
                .depends_on(vec![snapshot_node(&v.name)]),
            );
            out.push(
                NodeSpec::new(
                    prune_node(&v.name, r),
                    Layer::Cloud,
                    timeout,
                    format!(
                        "owned snapshots of volume/{} in {r} beyond keep {} deleted",
                        v.name, policy.keep
                    ),
                )
                .depends_on(vec![copy_node(&v.name, r)]),
            );
        }
    }
    out
}

/// A volume without a backup policy is still backed up: keep 7, no copies.
fn default_policy() -> crate::env::model::BackupPolicy {
    crate::env::model::BackupPolicy {
        every: None,
        keep: 7,
        copy_to: Vec::new(),
        copy_to_pos: Vec::new(),
        recovery_point_objective: None,
    }
}

#[derive(Clone)]
enum Op {
    Snapshot,
    Copy(String),
    Prune(String),
}

struct BackupAction {
    op: Op,
    volume: Volume,
    env: String,
    commit: String,
    /// The env's region first, then the copy regions: one client each.
    clients: Arc<BTreeMap<String, Ec2>>,
    home_region: String,
    shared: Arc<Shared>,
    timeout: Duration,
    poll: Duration,
}

impl Action for BackupAction {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, Result<NodeOutcome, NodeError>> {
        let op = self.op.clone();
        let volume = self.volume.clone();
        let env = self.env.clone();
        let commit = self.commit.clone();
        let clients = Arc::clone(&self.clients);
        let home = self.home_region.clone();
        let shared = Arc::clone(&self.shared);
        let (timeout, poll) = (self.timeout, self.poll);
        Box::pin(async move {
            let name = volume.name.clone();
            let client = |region: &str| {
                clients.get(region).cloned().ok_or_else(|| {
                    NodeError::permanent(format!("no EC2 client for region {region}"))
                })
            };
            let step = Step {
                ctx: &ctx,
                env: &env,
                commit: &commit,
                name: &name,
                shared: &shared,
                timeout,
                poll,
            };
            let result = match op {
                Op::Snapshot => snapshot_volume(step, &client(&home)?).await,
                Op::Copy(region) => copy_to(step, &client(&home)?, &client(&region)?).await,
                Op::Prune(region) => {
                    let ec2 = client(&region)?;
                    let keep = volume.backup.as_ref().map(|b| b.keep).unwrap_or(7);
                    prune(&ctx, &ec2, &env, &name, keep, &shared).await
                }
            };
            if let Err(e) = &result {
                shared.with(&name, |v| v.errors.push(e.message.clone()));
            }
            result
        })
    }
}

/// What every backup step of one volume works with.
#[derive(Clone, Copy)]
struct Step<'a> {
    ctx: &'a NodeCtx,
    env: &'a str,
    commit: &'a str,
    name: &'a str,
    shared: &'a Shared,
    timeout: Duration,
    poll: Duration,
}

async fn snapshot_volume(step: Step<'_>, ec2: &Ec2) -> Result<NodeOutcome, NodeError> {
    let Step {
        ctx,
        env,
        commit,
        name,
        shared,
        timeout,
        poll,
    } = step;
    // A retried attempt waits for the snapshot the first one started instead of taking another.
    let id = match shared.snapshot_of(name) {
        Some(id) => id,
        None => {
            let live = aws::owned_volumes(ec2, env, Some(name)).await?;
            let Some(v) = live.first() else {
                return Err(NodeError::permanent(format!(
                    "volume/{name} of {env} does not exist in {}: nothing to back up (a rebuild creates it)",
                    ec2.region()
                )));
            };
            let at = SystemTime::now();
            let tags = aws::snapshot_tags(env, name, commit, "backup", at);
            let id = aws::create_snapshot(ec2, &v.id, &tags).await?;
            ctx.progress(format!("snapshot {id} of volume/{name} ({}) started", v.id));
            shared.with(name, |b| {
                b.volume_id = Some(v.id.clone());
                b.snapshot_id = Some(id.clone());
                b.time = Some(humantime::format_rfc3339_millis(at).to_string());
            });
            id
        }
    };
    aws::wait_snapshot(ctx, ec2, &id, name, timeout, poll).await?;
    shared.with(name, |b| b.completed = true);
    ctx.progress(format!("snapshot {id} of volume/{name} completed"));
    Ok(NodeOutcome::Created)
}

async fn copy_to(step: Step<'_>, src: &Ec2, dest: &Ec2) -> Result<NodeOutcome, NodeError> {
    let Step {
        ctx,
        env,
        commit,
        name,
        shared,
        timeout,
        poll,
    } = step;
    let Some(source) = shared.snapshot_of(name) else {
        return Err(NodeError::permanent(format!(
            "no new snapshot of volume/{name} to copy"
        )));
    };
    let region = dest.region().to_string();
    let existing = shared.with(name, |b| {
        b.copies
            .iter()
            .find(|c| c.region == region)
            .map(|c| c.snapshot_id.clone())
    });
    let id = match existing {
        Some(id) => id,
        None => {
            let Some(original) = aws::snapshot(src, &source).await? else {
                return Err(NodeError::transient(format!(
                    "snapshot {source} is not visible in {} yet",
                    src.region()
                )));
            };
            // The copy carries the original's time, so the newest copy is the newest backup.
            let mut tags = original.tags.clone();
            tags.insert(TAG_SNAPSHOT.to_string(), "copy".to_string());
            tags.insert(aws::TAG_COMMIT.to_string(), commit.to_string());
            tags.insert(
                "phoenix:source-snapshot".into(),
                format!("{}/{source}", src.region()),
            );
            tags.insert(aws::TAG_ENV.to_string(), env.to_string());
            let id = aws::copy_snapshot(dest, src.region(), &source, &tags).await?;
            ctx.progress(format!("copy {id} of {source} to {region} started"));
            shared.with(name, |b| {
                b.copies.push(RegionSnapshot {
                    region: region.clone(),
                    snapshot_id: id.clone(),
                })
            });
            id
        }
    };
    aws::wait_snapshot(ctx, dest, &id, name, timeout, poll).await?;
    ctx.progress(format!("copy {id} of volume/{name} in {region} completed"));
    Ok(NodeOutcome::Created)
}

async fn prune(
    ctx: &NodeCtx,
    ec2: &Ec2,
    env: &str,
    name: &str,
    keep: u32,
    shared: &Shared,
) -> Result<NodeOutcome, NodeError> {
    let region = ec2.region().to_string();
    let snapshots = aws::owned_snapshots(ec2, env, Some(name)).await?;
    let gone = aws::to_prune(&snapshots, keep);
    let completed = snapshots.iter().filter(|s| s.state == "completed").count();
    for s in &gone {
        aws::delete_snapshot(ec2, env, s).await?;
        ctx.progress(format!(
            "deleted snapshot {} of volume/{name} in {region} (beyond keep {keep})",
            s.id
        ));
        shared.with(name, |b| {
            b.pruned.push(RegionSnapshot {
                region: region.clone(),
                snapshot_id: s.id.clone(),
            })
        });
    }
    shared.with(name, |b| {
        b.kept.insert(region.clone(), completed - gone.len());
    });
    Ok(if gone.is_empty() {
        NodeOutcome::Unchanged
    } else {
        NodeOutcome::Deleted
    })
}

/// Runs the backup of every data volume of `deployment`.
pub async fn backup(
    ctx: &Context,
    deployment: &Deployment,
    settings: &BackupSettings,
) -> Result<(RunSummary, BackupReport), Failure> {
    let Some(cloud) = &deployment.env.cloud else {
        return Err(Failure::new(format!(
            "{} has no spec.cloud, so no data volumes to back up",
            deployment.name
        )));
    };
    if deployment.env.volumes.is_empty() {
        return Err(
            Failure::new(format!("{} declares no data volumes", deployment.name))
                .help("declare them under spec.volumes (docs/environment.md)"),
        );
    }
    let home = cloud.region.clone();
    let mut clients = BTreeMap::new();
    let mut regions: Vec<String> = vec![home.clone()];
    for v in &deployment.env.volumes {
        for r in v.backup.iter().flat_map(|b| b.copy_to.iter()) {
            if !regions.contains(r) {
                regions.push(r.clone());
            }
        }
    }
    for r in &regions {
        let ec2 = aws::connect(r, &AwsOptions::default())
            .await
            .map_err(|e| Failure::from_error(format!("cannot connect to EC2 in {r}"), &e))?;
        clients.insert(r.clone(), ec2);
    }
    let clients = Arc::new(clients);
    let shared = Arc::new(Shared::default());
    let mut graph = Graph::new();
    // The node's deadline is a little past the wait's, so a wait that expires says what it
    // waited for and what it saw last.
    let node_timeout = settings.timeout + Duration::from_secs(30);
    for spec in backup_specs(&home, &deployment.env.volumes, node_timeout) {
        let (volume, op) = op_of(&spec.id, &deployment.env.volumes).ok_or_else(|| {
            Failure::new(format!(
                "unknown backup node {} (a bug in phoenix)",
                spec.id
            ))
        })?;
        let action: Arc<dyn Action> = Arc::new(BackupAction {
            op,
            volume,
            env: deployment.name.clone(),
            commit: deployment.commit().to_string(),
            clients: Arc::clone(&clients),
            home_region: home.clone(),
            shared: Arc::clone(&shared),
            timeout: settings.timeout,
            poll: settings.poll_interval,
        });
        graph
            .add(spec, action)
            .map_err(|e| Failure::from_error("cannot build the backup graph", &e))?;
    }
    let summary = run_graph(
        ctx,
        deployment,
        graph,
        RunSettings {
            command: "backup",
            layers: Vec::new(),
            concurrency: settings.concurrency,
        },
    )
    .await?;
    // What the engine stopped (a node timeout, a skipped prune) is the volume's error too.
    for n in &summary.nodes {
        let Some(volume) =
            n.id.strip_prefix("backup/")
                .and_then(|r| r.split('/').next())
        else {
            continue;
        };
        let why = match &n.state {
            NodeState::Failed { error, .. } => format!("{}: {error}", n.id),
            NodeState::Skipped { reason } => format!("{}: not run: {reason}", n.id),
            _ => continue,
        };
        shared.with(volume, |b| {
            if !b.errors.iter().any(|e| why.contains(e.as_str())) {
                b.errors.push(why.clone());
            }
        });
    }
    let mut by_volume = shared
        .report
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let volumes = deployment
        .env
        .volumes
        .iter()
        .map(|v| {
            by_volume.remove(&v.name).unwrap_or_else(|| VolumeBackup {
                volume: v.name.clone(),
                ..VolumeBackup::default()
            })
        })
        .collect();
    Ok((
        summary,
        BackupReport {
            schema_version: BACKUP_SCHEMA_VERSION,
            kind: "backupReport",
            env: deployment.name.clone(),
            commit: deployment.commit().to_string(),
            region: home,
            volumes,
        },
    ))
}

fn op_of(id: &str, volumes: &[Volume]) -> Option<(Volume, Op)> {
    let rest = id.strip_prefix("backup/")?;
    let (name, what) = rest.split_once('/')?;
    let volume = volumes.iter().find(|v| v.name == name)?.clone();
    let op = match what.split_once('/') {
        None if what == "snapshot" => Op::Snapshot,
        Some(("copy", r)) => Op::Copy(r.to_string()),
        Some(("prune", r)) => Op::Prune(r.to_string()),
        _ => return None,
    };
    Some((volume, op))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::{load, MemFiles};

    #[test]
    fn per_volume_a_snapshot_then_a_copy_per_region_each_pruned_after_it() {
        let text = "apiVersion: phoenix/v1\nkind: Environment\nmetadata: { name: t }\nspec:\n  cloud:\n    region: us-east-1\n    network: { cidr: 10.0.0.0/16, subnets: [{ name: a, cidr: 10.0.1.0/24, zone: us-east-1a, public: true }] }\n    instances: [{ name: db, role: none, count: 1, type: t3.small, image: { id: ami-12345678 }, subnet: a, userData: x.j2 }]\n  volumes:\n    - { name: data, size: 1, instance: db/0, mountPath: /srv/data, backup: { keep: 2, copyTo: [us-west-2, eu-west-1] } }\n    - { name: logs, size: 1, instance: db/0, mountPath: /srv/logs }\n";
        let files = MemFiles::default()
            .with("environments/t/environment.yaml", text)
            .with("templates/x.j2", "#cloud-config\n");
        let env = load(&files, "t").unwrap_or_else(|d| panic!("{d:?}"));
        let specs = backup_specs("us-east-1", &env.volumes, Duration::from_secs(60));
        let edges: Vec<(String, Vec<String>)> = specs
            .iter()
            .map(|s| (s.id.clone(), s.depends_on.clone()))
            .collect();
        let snap = "backup/data/snapshot".to_string();
        assert_eq!(
            edges,
            vec![
                (snap.clone(), vec![]),
                ("backup/data/prune/us-east-1".into(), vec![snap.clone()]),
                ("backup/data/copy/us-west-2".into(), vec![snap.clone()]),
                (
                    "backup/data/prune/us-west-2".into(),
                    vec!["backup/data/copy/us-west-2".into()]
                ),
                ("backup/data/copy/eu-west-1".into(), vec![snap.clone()]),
                (
                    "backup/data/prune/eu-west-1".into(),
                    vec!["backup/data/copy/eu-west-1".into()]
                ),
                ("backup/logs/snapshot".into(), vec![]),
                (
                    "backup/logs/prune/us-east-1".into(),
                    vec!["backup/logs/snapshot".into()]
                ),
            ]
        );
        // Every node id maps back to its volume and operation.
        for s in &specs {
            assert!(op_of(&s.id, &env.volumes).is_some(), "{}", s.id);
        }
        assert!(op_of("backup/nope/snapshot", &env.volumes).is_none());
    }
}
