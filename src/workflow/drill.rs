//! A recovery drill: rebuild an isolated copy of the environment from the commit (its own name on
//! every resource, its own VPC and cluster), verify it (every layer converged, app checks passed,
//! a diff of the copy is clean), time each step, tear the copy down even when the drill failed
//! (unless kept), and write a Markdown and a JSON report.

use super::check::check;
use super::context::Context;
use super::converge::{converge, ConvergeSettings};
use super::copies::{forget_local_state, open_copy};
use super::teardown::destroy;
use crate::drift::DriftStatus;
use crate::engine::{NodeState, RunSummary};
use crate::error::Failure;
use crate::report::drill::{DrillReport, DrillVerdict, DRILL_REPORT_TYPE, DRILL_SCHEMA_VERSION};
use crate::report::output::{commit_json_camel, commit_line};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// How a drill runs.
#[derive(Clone, Debug)]
pub struct DrillSettings {
    /// Nodes in flight at once, in the rebuild and the teardown.
    pub concurrency: usize,
    /// Leave the copy running (it still expires after `ttl`).
    pub keep: bool,
    /// When the copy expires, so `phoenix gc` removes it if the teardown cannot run.
    pub ttl: Duration,
    /// Where the reports go (default: `$PHOENIX_HOME/drills/ENV`).
    pub report_dir: Option<PathBuf>,
}

/// A finished drill: its report, rendered, and where both were written.
pub struct Drilled {
    pub report: DrillReport,
    pub markdown: String,
    pub markdown_path: PathBuf,
    pub json_path: PathBuf,
}

/// Runs a drill of `env` and writes its reports; fails only when the copy cannot be opened or the
/// reports cannot be written (a failed rebuild, verification or teardown is in the verdict).
pub async fn drill(ctx: &Context, env: &str, args: &DrillSettings) -> Result<Drilled, Failure> {
    let started_at = SystemTime::now();
    let suffix = format!(
        "drill-{:06x}",
        started_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64 & 0xff_ffff)
            .unwrap_or(0)
    );
    let deployment = open_copy(ctx, env, &suffix, "drill", args.ttl).await?;
    let objective = deployment.env.recovery_objective;
    if !ctx.json() {
        eprintln!("{}", commit_line(&deployment.snap));
        eprintln!(
            "drill of {}: rebuilding the isolated copy {}{} (recovery objective {})",
            env,
            deployment.name,
            deployment
                .env
                .cloud
                .as_ref()
                .map(|c| format!(" in {}", c.region))
                .unwrap_or_default(),
            objective
                .map(crate::report::format_duration)
                .unwrap_or_else(|| "not set".into())
        );
    }

    // 1. Rebuild the copy from nothing.
    let t = Instant::now();
    let settings = ConvergeSettings {
        layers: Vec::new(),
        concurrency: args.concurrency,
        force_conflicts: false,
        ..ConvergeSettings::default()
    };
    let rebuild = converge(ctx, &deployment, &settings, "drill").await;
    let rebuild_time = t.elapsed();
    // The copy's volumes, while they exist: what each was restored from.
    let volumes = match &rebuild {
        Ok(summary) => restored_volumes(&deployment, summary).await,
        Err(_) => Vec::new(),
    };

    // 2. Verify: a diff of the copy must be clean.
    let t = Instant::now();
    let verify = match &rebuild {
        Ok(s) if s.converged => {
            if !ctx.json() {
                eprintln!("\nverifying {}: diff against the commit", deployment.name);
            }
            Some(check(ctx, &deployment).await.report)
        }
        _ => None,
    };
    let verify_time = t.elapsed();

    // 3. Tear down, whatever happened (unless kept).
    let t = Instant::now();
    let teardown = if args.keep {
        None
    } else {
        if !ctx.json() {
            eprintln!("\ntearing down {}", deployment.name);
        }
        let r = destroy(ctx, &deployment, args.concurrency, false).await;
        if matches!(&r, Ok(s) if s.converged) {
            forget_local_state(ctx, &deployment.name);
        }
        Some(r)
    };
    let teardown_time = t.elapsed();

    // Verdict.
    let recovery = rebuild_time + verify_time;
    let mut failures: Vec<String> = Vec::new();
    match &rebuild {
        Err(f) => failures.push(format!("rebuild: {}", f.summary())),
        Ok(s) if !s.converged => failures.extend(failed_nodes(s)),
        Ok(_) => {}
    }
    if let Some(r) = &verify {
        for l in &r.layers {
            match &l.status {
                DriftStatus::Drift => failures.push(format!(
                    "verify: {} drifted right after the rebuild: {}",
                    l.layer,
                    l.entries
                        .iter()
                        .map(|e| e.resource.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                DriftStatus::Error(e) => {
                    failures.push(format!("verify: {} could not be checked: {e}", l.layer))
                }
                _ => {}
            }
        }
    }
    let teardown_failure = match &teardown {
        Some(Err(f)) => Some(format!("teardown: {}", f.summary())),
        Some(Ok(s)) if !s.converged => Some(format!(
            "teardown did not finish: {}; `phoenix gc` removes the copy after it expires",
            failed_nodes(s).join("; ")
        )),
        _ => None,
    };
    // Both objectives: the time to recover (RTO) and each volume's recovery point (RPO).
    let mut missed: Vec<String> = Vec::new();
    if let Some(o) = objective.filter(|o| recovery > *o) {
        missed.push(format!(
            "recoveryObjective: recovery took {}, over the objective of {}",
            crate::report::format_duration(recovery),
            crate::report::format_duration(o)
        ));
    }
    for v in &volumes {
        let Some(rpo) = v.recovery_point_objective_seconds else {
            continue;
        };
        match v.recovery_point_seconds {
            Some(point) if point <= rpo => {}
            Some(point) => missed.push(format!(
                "recoveryPointObjective of volume {}: the restored snapshot {} was {} old, over the objective of {}",
                v.volume,
                v.snapshot_id.as_deref().unwrap_or("?"),
                crate::report::format_duration(point),
                crate::report::format_duration(rpo)
            )),
            None => missed.push(format!(
                "recoveryPointObjective of volume {}: it was not restored from a snapshot",
                v.volume
            )),
        }
    }
    let verdict = if !failures.is_empty() || teardown_failure.is_some() {
        DrillVerdict::Failed
    } else if !missed.is_empty() {
        DrillVerdict::OverObjective
    } else {
        DrillVerdict::Passed
    };
    failures.extend(teardown_failure);

    let verify_doc = verify.as_ref().map(crate::drift::json_value);
    let doc = DrillReport {
        schema_version: DRILL_SCHEMA_VERSION,
        kind: DRILL_REPORT_TYPE.to_string(),
        env: env.to_string(),
        copy: deployment.name.clone(),
        region: deployment.env.cloud.as_ref().map(|c| c.region.clone()),
        commit: commit_json_camel(&deployment.snap),
        started_at: humantime::format_rfc3339_seconds(started_at).to_string(),
        verdict,
        recovery_objective_seconds: objective,
        recovery_seconds: recovery,
        rebuild_seconds: rebuild_time,
        verify_seconds: verify_time,
        dns_seconds: rebuild
            .as_ref()
            .ok()
            .and_then(|s| crate::report::summary::step_time(s, crate::report::summary::DNS_STEP)),
        teardown_seconds: (!args.keep).then_some(teardown_time),
        kept: args.keep,
        rebuild: rebuild.as_ref().ok().cloned(),
        verify: verify_doc,
        teardown: teardown.as_ref().and_then(|t| t.as_ref().ok()).cloned(),
        failures,
        volumes,
        missed_objectives: missed,
    };
    let markdown = doc.markdown();
    let dir = args
        .report_dir
        .clone()
        .unwrap_or_else(|| ctx.home.join("drills").join(env));
    let (md_path, json_path) = write_reports(&dir, &deployment.name, &markdown, &doc)?;
    Ok(Drilled {
        report: doc,
        markdown,
        markdown_path: md_path,
        json_path,
    })
}

/// For each data volume of the copy: the snapshot it was restored from (read back from EC2:
/// the volume's SnapshotId and the snapshot's `phoenix:time`), its node's time in the rebuild and
/// its recovery point. A volume that cannot be read is reported without them.
async fn restored_volumes(
    deployment: &super::Deployment,
    summary: &RunSummary,
) -> Vec<crate::report::drill::VolumeRestore> {
    let specs = deployment.volume_specs();
    if specs.is_empty() {
        return Vec::new();
    }
    let now = SystemTime::now();
    let ec2 = deployment.ec2().await.ok().flatten();
    let mut out = Vec::new();
    for spec in &specs {
        let node = summary.node(&crate::providers::aws::volume_node_id(&spec.name));
        let mut snapshot = None;
        if let Some(ec2) = &ec2 {
            let live = crate::providers::aws::owned_volumes(ec2, &spec.env, Some(&spec.name))
                .await
                .unwrap_or_default();
            if let Some(id) = live.first().and_then(|v| v.snapshot_id.clone()) {
                snapshot = crate::providers::aws::snapshot(ec2, &id)
                    .await
                    .ok()
                    .flatten();
            }
        }
        out.push(crate::report::drill::VolumeRestore {
            volume: spec.name.clone(),
            snapshot_id: snapshot.as_ref().map(|s| s.id.clone()),
            snapshot_time: snapshot
                .as_ref()
                .map(|s| humantime::format_rfc3339_millis(s.time).to_string()),
            restore_seconds: node.and_then(|n| n.duration),
            recovery_point_seconds: snapshot
                .as_ref()
                .map(|s| now.duration_since(s.time).unwrap_or(Duration::ZERO)),
            recovery_point_objective_seconds: spec.recovery_point_objective,
        });
    }
    out
}

fn failed_nodes(s: &RunSummary) -> Vec<String> {
    let mut out: Vec<String> = s
        .nodes
        .iter()
        .filter_map(|n| match &n.state {
            NodeState::Failed { error, .. } => Some(format!("{}: {error}", n.id)),
            _ => None,
        })
        .collect();
    if let Some(e) = &s.error {
        out.push(e.clone());
    }
    if out.is_empty() && s.cancelled {
        out.push("cancelled".into());
    }
    out
}

/// Writes `<dir>/<timestamp>-<copy>.md` and `.json`, and `last.json` (read by `phoenix runbook`).
fn write_reports(
    dir: &Path,
    copy: &str,
    markdown: &str,
    doc: &DrillReport,
) -> Result<(PathBuf, PathBuf), Failure> {
    let err = |path: &Path, e: std::io::Error| {
        Failure::new(format!("cannot write the drill report {}", path.display()))
            .cause(e.to_string())
    };
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace(':', "");
    let md = dir.join(format!("{stamp}-{copy}.md"));
    let js = dir.join(format!("{stamp}-{copy}.json"));
    let text = serde_json::to_string_pretty(doc).map_err(|e| {
        Failure::new(format!("cannot encode the drill report of {copy}")).cause(e.to_string())
    })?;
    std::fs::write(&md, markdown).map_err(|e| err(&md, e))?;
    std::fs::write(&js, &text).map_err(|e| err(&js, e))?;
    let last = dir.join("last.json");
    std::fs::write(&last, &text).map_err(|e| err(&last, e))?;
    Ok((md, js))
}
