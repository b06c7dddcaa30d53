//! `phoenix up ENV --ephemeral NAME`, `phoenix list` and `phoenix gc`: ephemeral copies of an
//! environment, listed and collected when they expire (the copies themselves are
//! [`crate::workflow::copies`]).

use super::Outcome;
use crate::cli::{GcArgs, UpArgs};
use crate::error::{ExitCode, Failure};
use crate::providers::aws::{self, CopyInfo};
use crate::report::output::{commit_line, print_json};
use crate::workflow::converge::{converge, print_run_report, ConvergeSettings};
use crate::workflow::copies::{all_copies, collect, expired, open_copy};
use crate::workflow::Context;
use std::time::{Duration, SystemTime};

pub async fn up(ctx: &Context, args: &UpArgs) -> Outcome {
    let deployment = open_copy(ctx, &args.env.env, &args.ephemeral, "ephemeral", args.ttl).await?;
    if !ctx.json() {
        eprintln!("{}", commit_line(&deployment.snap));
        eprintln!(
            "bringing up {} (a copy of {}, expires {})",
            deployment.name,
            args.env.env,
            deployment
                .extra_tags
                .get(aws::TAG_EXPIRES)
                .map(String::as_str)
                .unwrap_or("?")
        );
    }
    let settings = ConvergeSettings {
        layers: Vec::new(),
        concurrency: args.concurrency as usize,
        force_conflicts: false,
        ..ConvergeSettings::default()
    };
    let summary = converge(ctx, &deployment, &settings, "up").await?;
    print_run_report(ctx, &deployment, &summary);
    if !summary.converged && !ctx.json() {
        eprintln!(
            "\n{} is partly built and tagged to expire; `phoenix destroy {} --ephemeral {} --yes` removes it now, `phoenix gc` after it expires",
            deployment.name, args.env.env, args.ephemeral
        );
    }
    Ok(if summary.converged {
        ExitCode::Ok
    } else {
        ExitCode::Error
    })
}

/// The version of the `list --output json` document (docs/json.md).
pub const LIST_SCHEMA_VERSION: u32 = 1;

/// `list --output json`: every drill and ephemeral copy in the regions of the commit's
/// environments.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ListDoc<'a> {
    schema_version: u32,
    copies: Vec<CopyDoc<'a>>,
}

/// One copy, from the tags on its VPC.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct CopyDoc<'a> {
    /// The copy's effective environment name (`demo-pr-1`).
    env: &'a str,
    /// `drill` or `ephemeral`.
    copy: Option<&'a str>,
    /// The environment it is a copy of.
    base_env: Option<&'a str>,
    region: &'a str,
    vpc_id: &'a str,
    commit: Option<&'a str>,
    /// RFC 3339, UTC.
    created: Option<&'a str>,
    expires: Option<&'a str>,
    expired: bool,
}

pub async fn list(ctx: &Context) -> Outcome {
    let (copies, unsearched) = all_copies(ctx).await?;
    for why in &unsearched {
        eprintln!("warning: {why}");
    }
    let now = SystemTime::now();
    if ctx.json() {
        let copies = copies
            .iter()
            .map(|(region, c)| CopyDoc {
                env: &c.env,
                copy: c.copy.as_deref(),
                base_env: c.base_env.as_deref(),
                region,
                vpc_id: &c.vpc_id,
                commit: c.commit.as_deref(),
                created: c.created.as_deref(),
                expires: c.expires.as_deref(),
                expired: expired(c, now),
            })
            .collect();
        print_json(&ListDoc {
            schema_version: LIST_SCHEMA_VERSION,
            copies,
        });
        return unsearched_outcome(&unsearched);
    }
    if copies.is_empty() {
        crate::outln!("no drill or ephemeral copies found");
        return unsearched_outcome(&unsearched);
    }
    crate::outln!(
        "{:<28} {:<10} {:<12} {:>8}  {:<22} {:<12} region",
        "name",
        "copy",
        "of",
        "age",
        "expires",
        "commit"
    );
    for (region, c) in &copies {
        let age = c
            .created
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .and_then(|t| now.duration_since(t).ok())
            .map(|d| crate::report::format_duration(Duration::from_secs(d.as_secs() / 60 * 60)))
            .unwrap_or_else(|| "?".into());
        let expires = match &c.expires {
            Some(e) if expired(c, now) => format!("{e} (expired)"),
            Some(e) => e.clone(),
            None => "-".into(),
        };
        crate::outln!(
            "{:<28} {:<10} {:<12} {:>8}  {:<22} {:<12} {region}",
            c.env,
            c.copy.as_deref().unwrap_or("-"),
            c.base_env.as_deref().unwrap_or("-"),
            if age.is_empty() { "0m".into() } else { age },
            expires,
            c.commit
                .as_deref()
                .map(|s| s.get(..12).unwrap_or(s))
                .unwrap_or("-"),
        );
    }
    unsearched_outcome(&unsearched)
}

/// Exit 1 when a region could not be searched (what was found is shown all the same).
fn unsearched_outcome(unsearched: &[String]) -> Outcome {
    if unsearched.is_empty() {
        return Ok(ExitCode::Ok);
    }
    let mut f = Failure::new(format!(
        "{} region{} could not be searched",
        unsearched.len(),
        if unsearched.len() == 1 { "" } else { "s" }
    ));
    for why in unsearched {
        f = f.cause(why.clone());
    }
    Err(f.help("the copies listed are those of the regions that answered; run it again once the region answers"))
}

/// The version of the `gc --output json` document (docs/json.md).
pub const GC_SCHEMA_VERSION: u32 = 1;

/// `gc --output json`: the last line on stdout, after the run events of the teardowns.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct GcDoc<'a> {
    schema_version: u32,
    /// `gcReport`, so a reader of the stream tells it from the run events by `type` alone.
    #[serde(rename = "type")]
    kind: &'static str,
    dry_run: bool,
    /// Every expired copy found, with what became of it.
    copies: Vec<GcCopyDoc<'a>>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct GcCopyDoc<'a> {
    env: &'a str,
    base_env: Option<&'a str>,
    region: &'a str,
    expires: Option<&'a str>,
    /// `would-destroy` (`--dry-run`) | `destroyed` | `failed`.
    result: &'static str,
    /// Why it failed; `null` otherwise.
    error: Option<String>,
}

pub async fn gc(ctx: &Context, args: &GcArgs) -> Outcome {
    let now = SystemTime::now();
    let (found, unsearched) = all_copies(ctx).await?;
    for why in &unsearched {
        eprintln!("warning: {why}");
    }
    let due: Vec<(String, CopyInfo)> = found.into_iter().filter(|(_, c)| expired(c, now)).collect();
    if due.is_empty() {
        eprintln!("nothing to collect: no expired copies");
    }
    let mut results: Vec<(&'static str, Option<String>)> = Vec::new();
    for (region, c) in &due {
        let result = collect(ctx, c, region, args.dry_run, args.concurrency as usize).await;
        results.push(match result {
            Ok(done) => (done, None),
            Err(why) => ("failed", Some(why)),
        });
    }
    if ctx.json() {
        let doc = GcDoc {
            schema_version: GC_SCHEMA_VERSION,
            kind: "gcReport",
            dry_run: args.dry_run,
            copies: due
                .iter()
                .zip(&results)
                .map(|((region, c), (result, error))| GcCopyDoc {
                    env: &c.env,
                    base_env: c.base_env.as_deref(),
                    region,
                    expires: c.expires.as_deref(),
                    result,
                    error: error.clone(),
                })
                .collect(),
        };
        match serde_json::to_string(&doc) {
            Ok(line) => crate::outln!("{line}"),
            Err(e) => eprintln!("error: cannot encode the gc report as JSON: {e}"),
        }
    }
    let failed: Vec<String> = due
        .iter()
        .zip(&results)
        .filter_map(|((_, c), (_, error))| error.as_ref().map(|why| format!("{}: {why}", c.env)))
        .collect();
    if failed.is_empty() {
        unsearched_outcome(&unsearched)
    } else {
        let mut f = Failure::new(format!(
            "{} of {} expired copies were not removed",
            failed.len(),
            due.len()
        ));
        for why in failed {
            f = f.cause(why);
        }
        Err(f.help("run `phoenix gc` again; every teardown is idempotent"))
    }
}
