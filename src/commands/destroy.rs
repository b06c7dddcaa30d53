//! `phoenix destroy ENV`: tear everything phoenix owns down in reverse layer order, after the
//! operator typed the environment's name (or passed `--yes`). Protected environments are refused.

use super::Outcome;
use crate::cli::DestroyArgs;
use crate::error::{ExitCode, Failure};
use crate::report::output::commit_line;
use crate::workflow::converge::print_run_report;
use crate::workflow::copies::{copy_name, forget_local_state};
use crate::workflow::teardown::destroy;
use crate::workflow::{Context, Deployment};
use std::io::{BufRead, IsTerminal, Write};

pub async fn run(ctx: &Context, args: &DestroyArgs) -> Outcome {
    let effective = match &args.ephemeral {
        Some(n) => Some(copy_name(&args.env.env, n)?),
        None => None,
    };
    let deployment = Deployment::open(ctx, &args.env.env, effective.clone()).await?;
    // A copy is never the protected environment itself.
    if deployment.env.protected && effective.is_none() {
        return Err(Failure::new(format!(
            "environment {} is protected; phoenix will not destroy it",
            deployment.name
        ))
        .help(format!(
            "remove `protected: true` from {} in a commit first, if destroying it is really meant",
            deployment.env.file
        )));
    }
    if !args.yes {
        confirm(&deployment.name)?;
    }
    if !ctx.json() {
        eprintln!("{}", commit_line(&deployment.snap));
    }
    let summary = destroy(
        ctx,
        &deployment,
        args.concurrency as usize,
        !args.skip_final_snapshot,
    )
    .await?;
    print_run_report(ctx, &deployment, &summary);
    if summary.converged && effective.is_some() {
        forget_local_state(ctx, &deployment.name);
    }
    Ok(if summary.converged {
        ExitCode::Ok
    } else {
        ExitCode::Error
    })
}

/// Asks the operator to type the environment's name.
fn confirm(name: &str) -> Result<(), Failure> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(
            Failure::new(format!("refusing to destroy {name} without confirmation"))
                .help("stdin is not a terminal: pass --yes to destroy without being asked"),
        );
    }
    eprint!("This deletes every resource and object phoenix owns for {name}.\nType the environment name to confirm: ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Failure::new("cannot read the confirmation").cause(e.to_string()))?;
    if answer.trim() != name {
        return Err(Failure::new(format!(
            "not confirmed: {:?} is not {name:?}; nothing was deleted",
            answer.trim()
        )));
    }
    Ok(())
}
