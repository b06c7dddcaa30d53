//! Copies of an environment under another name: ephemeral environments (`phoenix up ENV
//! --ephemeral NAME --ttl 4h`, `phoenix destroy ENV --ephemeral NAME`, `phoenix gc`, `phoenix
//! list`) and drill copies. A copy is the same definition with a suffixed name on every tag,
//! resource and cluster, plus tags saying what it is a copy of and when it expires.

use super::common::{commit_line, Context, Outcome};
use super::deploy::Deployment;
use super::rebuild::{converge, report, ConvergeSettings};
use crate::cli::{GcArgs, UpArgs};
use crate::env::model::Cluster;
use crate::error::{ExitCode, Failure};
use crate::providers::aws::{self, AwsOptions, CopyInfo};
use crate::providers::cluster as cl;
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

/// The effective name of copy `suffix` of `base`.
pub fn copy_name(base: &str, suffix: &str) -> Result<String, Failure> {
    let name = format!("{base}-{suffix}");
    crate::env::load::check_name(&name).map_err(|why| {
        Failure::new(format!("cannot name the copy {name}: {why}"))
            .help("pick a shorter --ephemeral NAME of lowercase letters, digits and '-'")
    })?;
    Ok(name)
}

/// Opens `base` as the copy `suffix` of kind `copy` (`drill`/`ephemeral`) expiring after `ttl`.
pub async fn open_copy(
    ctx: &Context,
    base: &str,
    suffix: &str,
    copy: &str,
    ttl: Duration,
) -> Result<Deployment, Failure> {
    let name = copy_name(base, suffix)?;
    let mut dep = Deployment::open(ctx, base, Some(name)).await?;
    if matches!(dep.env.cluster, Some(Cluster::Existing(_))) {
        return Err(Failure::new(format!(
            "{base} runs on an existing cluster, so a copy would share its namespaces with the live environment"
        ))
        .help("drills and ephemeral copies need an environment phoenix builds whole (cloud + k3s)"));
    }
    if dep.env.cloud.is_none() {
        return Err(Failure::new(format!(
            "{base} has no cloud section: a copy could not be found again to tear it down"
        )));
    }
    let now = SystemTime::now();
    let expires = now
        .checked_add(ttl)
        .ok_or_else(|| Failure::new("--ttl is too long"))?;
    dep.extra_tags
        .insert(aws::TAG_BASE_ENV.into(), base.to_string());
    dep.extra_tags
        .insert(aws::TAG_COPY.into(), copy.to_string());
    dep.extra_tags.insert(
        aws::TAG_CREATED.into(),
        humantime::format_rfc3339_seconds(now).to_string(),
    );
    dep.extra_tags.insert(
        aws::TAG_EXPIRES.into(),
        humantime::format_rfc3339_seconds(expires).to_string(),
    );
    Ok(dep)
}

pub async fn up(ctx: &Context, args: &UpArgs) -> Outcome {
    let dep = open_copy(ctx, &args.env.env, &args.ephemeral, "ephemeral", args.ttl).await?;
    if !ctx.json() {
        eprintln!("{}", commit_line(&dep.snap));
        eprintln!(
            "bringing up {} (a copy of {}, expires {})",
            dep.name,
            args.env.env,
            dep.extra_tags
                .get(aws::TAG_EXPIRES)
                .map(String::as_str)
                .unwrap_or("?")
        );
    }
    let settings = ConvergeSettings {
        layers: Vec::new(),
        concurrency: args.concurrency as usize,
        force_conflicts: false,
    };
    let summary = converge(ctx, &dep, &settings, "up").await?;
    report(ctx, &dep, &summary);
    if !summary.converged && !ctx.json() {
        eprintln!(
            "\n{} is partly built and tagged to expire; `phoenix destroy {} --ephemeral {} --yes` removes it now, `phoenix gc` after it expires",
            dep.name, args.env.env, args.ephemeral
        );
    }
    Ok(if summary.converged {
        ExitCode::Ok
    } else {
        ExitCode::Error
    })
}

/// Removes the local state of a copy that is gone (its cluster credentials and kubeconfig, and
/// its diff seals).
pub fn forget_local_state(ctx: &Context, name: &str) {
    if let Err(e) = crate::providers::kube::SealStore::under(&ctx.home, name).forget_all() {
        eprintln!("warning: cannot remove the diff seals of {name}: {e}");
    }
    if let Ok(dir) = cl::cluster_dir(&ctx.home, name) {
        if dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                eprintln!("warning: cannot remove {}: {e}", dir.display());
            }
        }
    }
}

/// Every copy in the regions of the environments in the commit.
async fn all_copies(ctx: &Context) -> Result<Vec<(String, CopyInfo)>, Failure> {
    let snap = ctx.open().await?;
    let names = crate::env::load::names(&*snap);
    let mut regions = BTreeSet::new();
    for name in &names {
        // An invalid environment is not this command's subject: one line says its region is
        // not searched (its problems are `phoenix validate`'s to show).
        match crate::env::load(&*snap, name) {
            Ok(env) => {
                if let Some(cloud) = &env.cloud {
                    regions.insert(cloud.region.clone());
                }
            }
            Err(diags) => eprintln!(
                "warning: environment {name} is invalid ({} problem{}, see `phoenix validate {name}`); its region is not searched",
                diags.len(),
                if diags.len() == 1 { "" } else { "s" }
            ),
        }
    }
    let mut out = Vec::new();
    for region in regions {
        let ec2 = aws::connect(&region, &AwsOptions::default())
            .await
            .map_err(|e| Failure::from_error(format!("cannot connect to EC2 in {region}"), &e))?;
        let found = aws::copies(&ec2)
            .await
            .map_err(|e| Failure::from_error(format!("cannot list the copies in {region}"), &e))?;
        out.extend(found.into_iter().map(|c| (region.clone(), c)));
    }
    Ok(out)
}

fn expired(c: &CopyInfo, now: SystemTime) -> bool {
    c.expires
        .as_deref()
        .and_then(|e| humantime::parse_rfc3339_weak(e).ok())
        .is_some_and(|t| t <= now)
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
    let copies = all_copies(ctx).await?;
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
        super::common::print_json(&ListDoc {
            schema_version: LIST_SCHEMA_VERSION,
            copies,
        });
        return Ok(ExitCode::Ok);
    }
    if copies.is_empty() {
        crate::outln!("no drill or ephemeral copies found");
        return Ok(ExitCode::Ok);
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
    Ok(ExitCode::Ok)
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
    let due: Vec<(String, CopyInfo)> = all_copies(ctx)
        .await?
        .into_iter()
        .filter(|(_, c)| expired(c, now))
        .collect();
    if due.is_empty() {
        eprintln!("nothing to collect: no expired copies");
    }
    let mut results: Vec<(&'static str, Option<String>)> = Vec::new();
    for (_, c) in &due {
        let result = collect(ctx, args, c).await;
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
        Ok(ExitCode::Ok)
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

/// Removes one expired copy (or says it would): `would-destroy` or `destroyed`, else why not.
async fn collect(ctx: &Context, args: &GcArgs, c: &CopyInfo) -> Result<&'static str, String> {
    let Some(base) = &c.base_env else {
        return Err(format!("no {} tag", aws::TAG_BASE_ENV));
    };
    let expires = c.expires.as_deref().unwrap_or("?");
    if args.dry_run {
        if !ctx.json() {
            crate::outln!(
                "would destroy {} (copy of {base}, expired {expires})",
                c.env
            );
        }
        return Ok("would-destroy");
    }
    eprintln!("destroying {} (copy of {base}, expired {expires})", c.env);
    let dep = Deployment::open(ctx, base, Some(c.env.clone()))
        .await
        .map_err(|f| f.summary())?;
    match super::destroy::destroy(ctx, &dep, args.concurrency as usize).await {
        Ok(summary) if summary.converged => {
            forget_local_state(ctx, &c.env);
            Ok("destroyed")
        }
        Ok(_) => Err("the teardown did not finish (see above)".into()),
        Err(f) => Err(f.summary()),
    }
}
