//! `phoenix drill ENV`: rehearse recovery. Rebuild an isolated copy of the environment from the
//! commit (its own name on every resource, its own VPC and cluster), verify it (every layer
//! converged, app checks passed, a diff of the copy is clean), time each layer, tear the copy
//! down even when the drill failed (unless `--keep`), and write a Markdown and a JSON report.
//! Exit 0 within the recovery objective, 3 converged but over it, 1 failed.

use super::common::{commit_line, Context, Outcome};
use super::copies::{forget_local_state, open_copy};
use super::rebuild::{converge, ConvergeSettings};
use crate::cli::DrillArgs;
use crate::drift::LayerStatus as DriftStatus;
use crate::engine::{NodeState, RunSummary};
use crate::error::{ExitCode, Failure};
use crate::report::drill::{DrillReport, DrillVerdict, DRILL_REPORT_TYPE, DRILL_SCHEMA_VERSION};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

pub async fn run(ctx: &Context, args: &DrillArgs) -> Outcome {
    let started_at = SystemTime::now();
    let suffix = format!(
        "drill-{:06x}",
        started_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64 & 0xff_ffff)
            .unwrap_or(0)
    );
    let dep = open_copy(ctx, &args.env.env, &suffix, "drill", args.ttl).await?;
    let objective = dep.env.recovery_objective;
    if !ctx.json() {
        eprintln!("{}", commit_line(&dep.snap));
        eprintln!(
            "drill of {}: rebuilding the isolated copy {} (recovery objective {})",
            args.env.env,
            dep.name,
            objective
                .map(crate::report::format_duration)
                .unwrap_or_else(|| "not set".into())
        );
    }

    // 1. Rebuild the copy from nothing.
    let t = Instant::now();
    let settings = ConvergeSettings {
        layers: Vec::new(),
        concurrency: args.concurrency as usize,
        force_conflicts: false,
    };
    let rebuild = converge(ctx, &dep, &settings, "drill").await;
    let rebuild_time = t.elapsed();

    // 2. Verify: a diff of the copy must be clean.
    let t = Instant::now();
    let verify = match &rebuild {
        Ok(s) if s.converged => {
            if !ctx.json() {
                eprintln!("\nverifying {}: diff against the commit", dep.name);
            }
            Some(super::diff::check(ctx, &dep).await.report)
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
            eprintln!("\ntearing down {}", dep.name);
        }
        let r = super::destroy::destroy(ctx, &dep, args.concurrency as usize).await;
        if matches!(&r, Ok(s) if s.converged) {
            forget_local_state(ctx, &dep.name);
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
    let verdict = if !failures.is_empty() || teardown_failure.is_some() {
        DrillVerdict::Failed
    } else if objective.is_some_and(|o| recovery > o) {
        DrillVerdict::OverObjective
    } else {
        DrillVerdict::Passed
    };
    failures.extend(teardown_failure);

    let verify_doc = verify.as_ref().map(crate::drift::json_value);
    let doc = DrillReport {
        schema_version: DRILL_SCHEMA_VERSION,
        kind: DRILL_REPORT_TYPE.to_string(),
        env: args.env.env.clone(),
        copy: dep.name.clone(),
        commit: super::common::commit_json_camel(&dep.snap),
        started_at: humantime::format_rfc3339_seconds(started_at).to_string(),
        verdict,
        recovery_objective_seconds: objective,
        recovery_seconds: recovery,
        rebuild_seconds: rebuild_time,
        verify_seconds: verify_time,
        teardown_seconds: (!args.keep).then_some(teardown_time),
        kept: args.keep,
        rebuild: rebuild.as_ref().ok().cloned(),
        verify: verify_doc,
        teardown: teardown.as_ref().and_then(|t| t.as_ref().ok()).cloned(),
        failures,
    };
    let markdown = doc.markdown();
    let dir = args
        .report_dir
        .clone()
        .unwrap_or_else(|| ctx.home.join("drills").join(&args.env.env));
    let (md_path, json_path) = write_reports(&dir, &dep.name, &markdown, &doc)?;
    if ctx.json() {
        // The last line of the JSON lines on stdout (the rebuild's and teardown's events first).
        match serde_json::to_string(&doc) {
            Ok(line) => crate::outln!("{line}"),
            Err(e) => eprintln!("error: cannot encode the drill report as JSON: {e}"),
        }
    } else {
        crate::outln!("\n{markdown}");
        eprintln!("reports: {} and {}", md_path.display(), json_path.display());
    }
    Ok(match verdict {
        DrillVerdict::Passed => ExitCode::Ok,
        DrillVerdict::OverObjective => ExitCode::OverObjective,
        DrillVerdict::Failed => ExitCode::Error,
    })
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
