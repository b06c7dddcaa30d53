//! `phoenix drill ENV`: rehearse recovery in an isolated copy ([`crate::workflow::drill`]) and
//! print its report. Exit 0 within the recovery objective, 3 converged but over it, 1 failed.

use super::Outcome;
use crate::cli::DrillArgs;
use crate::error::ExitCode;
use crate::report::drill::DrillVerdict;
use crate::workflow::drill::{drill, DrillSettings};
use crate::workflow::Context;

pub async fn run(ctx: &Context, args: &DrillArgs) -> Outcome {
    let settings = DrillSettings {
        concurrency: args.concurrency as usize,
        keep: args.keep,
        ttl: args.ttl,
        report_dir: args.report_dir.clone(),
    };
    let done = drill(ctx, &args.env.env, &settings).await?;
    if ctx.json() {
        // The last line of the JSON lines on stdout (the rebuild's and teardown's events first).
        match serde_json::to_string(&done.report) {
            Ok(line) => crate::outln!("{line}"),
            Err(e) => eprintln!("error: cannot encode the drill report as JSON: {e}"),
        }
    } else {
        crate::outln!("\n{}", done.markdown);
        eprintln!(
            "reports: {} and {}",
            done.markdown_path.display(),
            done.json_path.display()
        );
    }
    Ok(match done.report.verdict {
        DrillVerdict::Passed => ExitCode::Ok,
        DrillVerdict::OverObjective => ExitCode::OverObjective,
        DrillVerdict::Failed => ExitCode::Error,
    })
}
