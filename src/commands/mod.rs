//! One module per command; each turns parsed arguments into a call of a workflow
//! ([`crate::workflow`]) or a provider, prints what came back, and returns an exit code. No
//! command module uses another.

mod backup;
mod completions;
mod copies;
mod destroy;
mod diff;
mod drill;
mod history;
mod init;
mod plan;
mod rebuild;
mod render;
mod runbook;
mod ssh_key;
mod validate;
mod vendor;
mod watch;

use crate::cli::{Cli, Command};
use crate::error::{ExitCode, Failure};
use crate::workflow::Context;

/// What a command returns: its exit code, or the failure `main` prints (exit 1).
pub type Outcome = Result<ExitCode, Failure>;

pub async fn run(cli: Cli) -> Outcome {
    let mut ctx = Context::from_global(&cli.global)?;
    ctx.failover = cli.command.failover();
    let review = matches!(&cli.command, Command::Plan(a) if a.against.is_some());
    if ctx.output == crate::cli::Output::Markdown && !review {
        return Err(
            Failure::new("--output markdown is only for `phoenix plan ENV --against REF`")
                .help("use --output human or --output json"),
        );
    }
    match cli.command {
        Command::Validate(a) => validate::run(&ctx, &a.env).await,
        Command::Plan(a) => plan::run(&ctx, &a).await,
        Command::Render(a) => render::run(&ctx, &a.env.env, a.component.as_deref()).await,
        Command::Rebuild(a) => rebuild::run(&ctx, &a).await,
        Command::Destroy(a) => destroy::run(&ctx, &a).await,
        Command::Diff(a) => diff::run(&ctx, &a).await,
        Command::Watch(a) => watch::run(&ctx, &a).await,
        Command::Up(a) => copies::up(&ctx, &a).await,
        Command::Gc(a) => copies::gc(&ctx, &a).await,
        Command::List => copies::list(&ctx).await,
        Command::Backup(a) => backup::run(&ctx, &a).await,
        Command::Drill(a) => drill::run(&ctx, &a).await,
        Command::Runbook(a) => runbook::run(&ctx, &a.env.env).await,
        Command::SshKey(a) => ssh_key::run(&ctx, &a).await,
        Command::History(a) => history::run(&ctx, &a.env.env, a.limit).await,
        Command::Completions(a) => completions::completions(a.shell),
        Command::Man(a) => completions::man(&ctx, a.dir.as_deref()),
        Command::Init(a) => init::run(&ctx, &a),
        Command::Vendor(a) => vendor::run(&ctx, &a.env).await,
    }
}
