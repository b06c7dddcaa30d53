//! Copies of an environment under another name: ephemeral environments (`phoenix up ENV
//! --ephemeral NAME --ttl 4h`, `phoenix destroy ENV --ephemeral NAME`, `phoenix gc`, `phoenix
//! list`) and drill copies. A copy is the same definition with a suffixed name on every tag,
//! resource and cluster, plus tags saying what it is a copy of and when it expires.

use super::context::Context;
use super::deployment::Deployment;
use crate::env::model::Cluster;
use crate::error::Failure;
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
    let mut deployment = Deployment::open(ctx, base, Some(name)).await?;
    if matches!(deployment.env.cluster, Some(Cluster::Existing(_))) {
        return Err(Failure::new(format!(
            "{base} runs on an existing cluster, so a copy would share its namespaces with the live environment"
        ))
        .help("drills and ephemeral copies need an environment phoenix builds whole (cloud + k3s)"));
    }
    if deployment.env.cloud.is_none() {
        return Err(Failure::new(format!(
            "{base} has no cloud section: a copy could not be found again to tear it down"
        )));
    }
    let now = SystemTime::now();
    let expires = now
        .checked_add(ttl)
        .ok_or_else(|| Failure::new("--ttl is too long"))?;
    deployment
        .extra_tags
        .insert(aws::TAG_BASE_ENV.into(), base.to_string());
    deployment
        .extra_tags
        .insert(aws::TAG_COPY.into(), copy.to_string());
    deployment.extra_tags.insert(
        aws::TAG_CREATED.into(),
        humantime::format_rfc3339_seconds(now).to_string(),
    );
    deployment.extra_tags.insert(
        aws::TAG_EXPIRES.into(),
        humantime::format_rfc3339_seconds(expires).to_string(),
    );
    Ok(deployment)
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

/// Every copy in the regions of the environments in the commit (their own and their failover
/// regions), with the region it is in; and the regions that could not be searched, with why
/// (one region out does not hide the copies in the others).
pub async fn all_copies(ctx: &Context) -> Result<(Vec<(String, CopyInfo)>, Vec<String>), Failure> {
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
                // Copies made with `--failover` (drills there) live in the failover region.
                if let Some(f) = &env.failover {
                    regions.insert(f.region.clone());
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
    let mut unsearched = Vec::new();
    for region in regions {
        let ec2 = aws::connect(&region, &AwsOptions::default())
            .await
            .map_err(|e| Failure::from_error(format!("cannot connect to EC2 in {region}"), &e))?;
        match aws::copies(&ec2).await {
            Ok(found) => out.extend(found.into_iter().map(|c| (region.clone(), c))),
            Err(e) => unsearched.push(format!("cannot list the copies in {region}: {e}")),
        }
    }
    Ok((out, unsearched))
}

pub fn expired(c: &CopyInfo, now: SystemTime) -> bool {
    c.expires
        .as_deref()
        .and_then(|e| humantime::parse_rfc3339_weak(e).ok())
        .is_some_and(|t| t <= now)
}

/// Removes one expired copy (or says it would): `would-destroy` or `destroyed`, else why not.
pub async fn collect(
    ctx: &Context,
    c: &CopyInfo,
    region: &str,
    dry_run: bool,
    concurrency: usize,
) -> Result<&'static str, String> {
    let Some(base) = &c.base_env else {
        return Err(format!("no {} tag", aws::TAG_BASE_ENV));
    };
    let expires = c.expires.as_deref().unwrap_or("?");
    if dry_run {
        if !ctx.json() {
            crate::outln!(
                "would destroy {} (copy of {base}, expired {expires})",
                c.env
            );
        }
        return Ok("would-destroy");
    }
    eprintln!("destroying {} (copy of {base}, expired {expires})", c.env);
    // A copy made with `--failover` lives in the base env's failover region: tear it down there.
    let mut ctx = ctx.clone();
    let mut deployment = Deployment::open(&ctx, base, Some(c.env.clone()))
        .await
        .map_err(|f| f.summary())?;
    let region_of = |d: &Deployment| d.env.cloud.as_ref().map(|c| c.region.clone());
    if region_of(&deployment).as_deref() != Some(region)
        && deployment.env.failover.as_ref().map(|f| f.region.as_str()) == Some(region)
    {
        ctx.failover = true;
        deployment = Deployment::open(&ctx, base, Some(c.env.clone()))
            .await
            .map_err(|f| f.summary())?;
    }
    if region_of(&deployment).as_deref() != Some(region) {
        return Err(format!(
            "it is in {region}, which is neither the region nor the failover region of {base} at this commit"
        ));
    }
    let ctx = &ctx;
    match super::teardown::destroy(ctx, &deployment, concurrency, false).await {
        Ok(summary) if summary.converged => {
            forget_local_state(ctx, &c.env);
            Ok("destroyed")
        }
        Ok(_) => Err("the teardown did not finish (see above)".into()),
        Err(f) => Err(f.summary()),
    }
}
