//! `phoenix rebuild ENV`: converge every layer in order, then print the per-layer timing report.

use super::Outcome;
use crate::cli::RebuildArgs;
use crate::error::ExitCode;
use crate::report::output::commit_line;
use crate::workflow::converge::{converge, print_run_report, ConvergeSettings};
use crate::workflow::{Context, Deployment};

pub async fn run(ctx: &Context, args: &RebuildArgs) -> Outcome {
    let deployment = Deployment::open(ctx, &args.env.env, None).await?;
    let settings = ConvergeSettings {
        layers: args.run.layers.clone(),
        concurrency: args.run.concurrency as usize,
        force_conflicts: args.force_conflicts,
        restore: args.restore_point.clone().unwrap_or_default(),
        take_over_dns: args.take_over_dns,
    };
    if !ctx.json() {
        eprintln!("{}", commit_line(&deployment.snap));
    }
    let summary = converge(ctx, &deployment, &settings, "rebuild").await?;
    print_run_report(ctx, &deployment, &summary);
    Ok(if summary.converged {
        ExitCode::Ok
    } else {
        ExitCode::Error
    })
}
