//! `phoenix vendor ENV`: fetches the charts the environment names by repository URL into the
//! working tree (digest-checked) and says what to commit.

use super::Outcome;
use crate::error::{ExitCode, Failure};
use crate::report::output::{print_diagnostics, print_json};
use crate::workflow::vendor::{vendor, AssumeVendored, Vendored};
use crate::workflow::Context;

/// The version of the `vendor --output json` document.
pub const VENDOR_SCHEMA_VERSION: u32 = 1;

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct VendorDoc<'a> {
    schema_version: u32,
    env: &'a str,
    charts: &'a [Vendored],
}

pub async fn run(ctx: &Context, name: &str) -> Outcome {
    // The environment is read from the commit; the files it fetches are not committed yet, so
    // an uncommitted vendor/ (a second run) is no reason to refuse.
    let mut opts = ctx.source.clone();
    opts.allow_dirty = true;
    if opts
        .repo
        .as_deref()
        .is_some_and(|r| r.contains("://") || r.contains('@'))
    {
        return Err(Failure::new("vendor writes into a local repository's working tree, and --repo names a URL")
            .help("run `phoenix vendor ENV` in a clone of the repository, then commit and push what it writes"));
    }
    let start = opts
        .repo
        .clone()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("."));
    let root = git2::Repository::discover(&start)
        .ok()
        .and_then(|r| r.workdir().map(std::path::Path::to_path_buf))
        .ok_or_else(|| {
            Failure::new(format!(
                "{} is not inside a Git working tree",
                start.display()
            ))
            .help("run `phoenix vendor ENV` in the repository that holds environments/")
        })?;
    let snap = tokio::task::spawn_blocking(move || crate::source::open(&opts))
        .await
        .map_err(|e| Failure::new(format!("reading the repository stopped unexpectedly: {e}")))?
        .map_err(|e| Failure::from_error("cannot read the environment from Git", &e))?;
    let env = crate::env::load(&AssumeVendored(&snap), name).map_err(|diags| {
        print_diagnostics(&diags);
        Failure::new(format!(
            "environment {name} is invalid ({} problems)",
            diags.len()
        ))
        .help(format!("run `phoenix validate {name}`"))
    })?;
    let results = vendor(&env, &root).await;
    let failed = results.iter().filter(|v| v.status == "failed").count();
    if ctx.json() {
        print_json(&VendorDoc {
            schema_version: VENDOR_SCHEMA_VERSION,
            env: name,
            charts: &results,
        });
    } else {
        if results.is_empty() {
            crate::outln!("environment {name} names no chart by repository URL: nothing to vendor");
        }
        for v in &results {
            match v.error.as_deref() {
                None => crate::outln!(
                    "{} {} {} {} {} ({})",
                    if v.status == "fetched" {
                        "✓ fetched"
                    } else {
                        "✓ unchanged"
                    },
                    v.chart,
                    v.version,
                    v.path,
                    v.digest.as_deref().unwrap_or(""),
                    v.component
                ),
                Some(e) => crate::outln!("✗ {} {} ({}): {e}", v.chart, v.version, v.component),
            }
        }
        for v in results.iter().filter(|v| v.undeclared && v.error.is_none()) {
            crate::outln!(
                "component {} declares no digest: add `digest: {}` to its chart (environments/{name}/environment.yaml)",
                v.component,
                v.digest.as_deref().unwrap_or("")
            );
        }
        let fetched: Vec<&str> = results
            .iter()
            .filter(|v| v.status == "fetched")
            .map(|v| v.path.as_str())
            .collect();
        if !fetched.is_empty() {
            crate::outln!("commit them, so a rebuild needs nothing but Git:\n  git add {}\n  git commit -m \"vendor charts of {name}\"", fetched.join(" "));
        }
    }
    if failed > 0 {
        return Err(
            Failure::new(format!("{failed} chart(s) of {name} could not be vendored"))
                .exit(ExitCode::Error),
        );
    }
    Ok(ExitCode::Ok)
}
