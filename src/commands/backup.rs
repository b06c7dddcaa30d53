//! `phoenix backup ENV`: snapshot every data volume, copy to the policy's regions, prune beyond
//! `keep`; the run report, then what was snapshotted, copied and pruned (or the JSON document).

use super::Outcome;
use crate::cli::BackupArgs;
use crate::error::ExitCode;
use crate::report::output::commit_line;
use crate::workflow::backup::{backup, BackupReport, BackupSettings};
use crate::workflow::converge::print_run_report;
use crate::workflow::{Context, Deployment};
use std::time::Duration;

pub async fn run(ctx: &Context, args: &BackupArgs) -> Outcome {
    let deployment = Deployment::open(ctx, &args.env.env, None).await?;
    if !ctx.json() {
        eprintln!("{}", commit_line(&deployment.snap));
    }
    let settings = BackupSettings {
        timeout: args.timeout.unwrap_or(deployment.env.timeouts.cloud),
        concurrency: args.concurrency as usize,
        poll_interval: Duration::from_secs(1),
    };
    let (summary, report) = backup(ctx, &deployment, &settings).await?;
    print_run_report(ctx, &deployment, &summary);
    if ctx.json() {
        match serde_json::to_string(&report) {
            Ok(text) => crate::outln!("{text}"),
            Err(e) => eprintln!("error: cannot encode the backup report as JSON: {e}"),
        }
    } else {
        eprint!("{}", render(&report));
    }
    Ok(if summary.converged {
        ExitCode::Ok
    } else {
        ExitCode::Error
    })
}

fn render(r: &BackupReport) -> String {
    let mut out = String::from("\n");
    for v in &r.volumes {
        match (&v.snapshot_id, &v.volume_id) {
            (Some(s), Some(id)) => out.push_str(&format!(
                "volume/{} ({id}): snapshot {s} in {} at {}{}\n",
                v.volume,
                r.region,
                v.time.as_deref().unwrap_or("?"),
                if v.completed { "" } else { " (not completed)" }
            )),
            _ => out.push_str(&format!("volume/{}: no snapshot taken\n", v.volume)),
        }
        for c in &v.copies {
            out.push_str(&format!("  copied to {} as {}\n", c.region, c.snapshot_id));
        }
        for p in &v.pruned {
            out.push_str(&format!("  pruned {} in {}\n", p.snapshot_id, p.region));
        }
        for (region, n) in &v.kept {
            out.push_str(&format!("  {n} snapshot(s) kept in {region}\n"));
        }
        for e in &v.errors {
            out.push_str(&format!("  error: {e}\n"));
        }
    }
    out
}
