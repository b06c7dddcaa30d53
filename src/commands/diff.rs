//! `phoenix diff ENV`: Git against the live system in every layer. Exit 0 in sync, 2 drift, 1 when
//! any layer could not be checked (the check itself is [`crate::workflow::check`]).

use super::Outcome;
use crate::cli::DiffArgs;
use crate::drift;
use crate::error::{ExitCode, Failure};
use crate::workflow::check::check_layers_of;
use crate::workflow::{Context, Deployment};

pub async fn run(ctx: &Context, args: &DiffArgs) -> Outcome {
    let metrics_file = args.metrics_file.as_deref();
    let deployment = Deployment::open(ctx, &args.env.env, None).await?;
    let checked = check_layers_of(ctx, &deployment, &args.layers).await;
    for u in &checked.unavailable_secrets {
        eprintln!(
            "note: secret {} is not available here ({}): what is made from it is shown as unknown, not compared",
            u.name, u.why
        );
    }
    let report = checked.report;
    if ctx.json() {
        crate::out!("{}", drift::json(&report));
    } else {
        crate::out!("{}", drift::human(&report, drift::use_color()));
    }
    if let Some(path) = metrics_file {
        drift::metrics::write_file(path, &drift::metrics::render(&[&report], None)).map_err(
            |e| {
                Failure::from_error(
                    format!("cannot write the metrics file {}", path.display()),
                    &e,
                )
            },
        )?;
    }
    Ok(match drift::exit_code(&report) {
        0 => ExitCode::Ok,
        2 => ExitCode::Changes,
        _ => ExitCode::Error,
    })
}
