//! `phoenix destroy ENV`: tear everything phoenix owns down in reverse layer order, after the
//! operator typed the environment's name (or passed `--yes`). Protected environments are refused.

use super::common::{commit_line, Context, Outcome};
use super::deploy::{run_graph, Deployment, RunSettings};
use super::rebuild::report;
use crate::cli::DestroyArgs;
use crate::engine::Graph;
use crate::error::{ExitCode, Failure};
use crate::providers::aws::{self, ConvergeOptions};
use std::io::{BufRead, IsTerminal, Write};

pub async fn run(ctx: &Context, args: &DestroyArgs) -> Outcome {
    let dep = Deployment::open(ctx, &args.env.env, None).await?;
    if dep.env.protected {
        return Err(Failure::new(format!(
            "environment {} is protected; phoenix will not destroy it",
            dep.name
        ))
        .help(format!(
            "remove `protected: true` from {} in a commit first, if destroying it is really meant",
            dep.env.file
        )));
    }
    if !args.yes {
        confirm(&dep.name)?;
    }
    if !ctx.json() {
        eprintln!("{}", commit_line(&dep.snap));
    }
    let summary = destroy(ctx, &dep, args.concurrency as usize).await?;
    report(ctx, &dep, &summary);
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

/// Deletes what phoenix owns of `dep`, found by ownership marks (no state file).
pub async fn destroy(
    ctx: &Context,
    dep: &Deployment,
    concurrency: usize,
) -> Result<crate::engine::RunSummary, Failure> {
    let mut graph = Graph::new();
    if let Some(ec2) = dep.ec2().await? {
        let live = dep.observe_cloud(&ec2).await?;
        for (spec, action) in aws::destroy_nodes(ec2, &dep.name, &live, &ConvergeOptions::default())
        {
            graph
                .add(spec, action)
                .map_err(|e| Failure::from_error("cannot build the teardown graph", &e))?;
        }
    }
    run_graph(
        ctx,
        dep,
        graph,
        RunSettings {
            command: "destroy",
            layers: Vec::new(),
            concurrency,
        },
    )
    .await
}
