//! The DNS cutover's hooks into the workflows: its nodes at the end of the converge graph, its
//! drift in the apps layer of a check, and its teardown node. Everything reads the deployment's
//! own live state (the region and client the run uses), never a region of its own.

use super::deployment::Deployment;
use crate::drift::{DriftStatus, LayerDrift};
use crate::engine::{Action, Layer, NodeSpec};
use crate::error::Failure;
use crate::providers::aws::{AwsOptions, Ec2};
use crate::providers::dns::{self, DnsOptions, DnsTarget};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a change is asked for its status while waiting for INSYNC.
const POLL: Duration = Duration::from_secs(1);

/// Why the check skips an apps layer the environment does not have (src/workflow/check.rs): the
/// records are what the layer holds then.
const NO_APPS: &str = "not in the environment";

fn options(deployment: &Deployment, take_over: bool) -> DnsOptions {
    DnsOptions {
        take_over,
        timeout: deployment.env.timeouts.apps,
        poll_interval: POLL,
    }
}

/// The cutover nodes, after every apps-layer node already in `built` (the apps and their
/// prunes): with `ec2`, built to run; without, specs only (`plan --offline`, `runbook`).
pub async fn cutover_nodes(
    deployment: &Deployment,
    built: &[NodeSpec],
    ec2: Option<&Ec2>,
    take_over: bool,
) -> Result<Vec<(NodeSpec, Option<Arc<dyn Action>>)>, Failure> {
    if deployment.env.dns.is_none() {
        return Ok(Vec::new());
    }
    let after: Vec<String> = built
        .iter()
        .filter(|s| s.layer == Layer::Apps)
        .map(|s| s.id.clone())
        .collect();
    let opts = options(deployment, take_over);
    let Some(ec2) = ec2 else {
        return Ok(dns::cutover_specs(&deployment.env, &after, opts.timeout)
            .into_iter()
            .map(|s| (s, None))
            .collect());
    };
    let target = Arc::new(DnsTarget {
        r53: dns::connect(&AwsOptions::default()).await,
        ec2: ec2.clone(),
        env: Arc::new(deployment.env.clone()),
        deployment: deployment.name.clone(),
        copy_suffix: dns::copy_suffix(&deployment.env.name, &deployment.name),
        commit: deployment.commit().to_string(),
    });
    Ok(dns::cutover_nodes(target, &after, &opts)
        .into_iter()
        .map(|(s, a)| (s, Some(a)))
        .collect())
}

/// Adds the DNS drift to the apps layer of a check (where the cutover nodes run): a layer that
/// was skipped for having no apps becomes a checked one; one that could not be checked keeps
/// its error and gains the entries.
pub async fn add_drift(deployment: &Deployment, layers: &mut [LayerDrift]) {
    if deployment.env.dns.is_none() {
        return;
    }
    let t = Instant::now();
    let entries = match drift(deployment).await {
        Ok(entries) => Ok(entries),
        Err(why) => Err(format!("DNS: {why}")),
    };
    let Some(layer) = layers.iter_mut().find(|l| l.layer == Layer::Apps) else {
        return;
    };
    match (&layer.status, entries) {
        // Left out on purpose (`--layers`): the records are not checked either.
        (DriftStatus::Skipped(why), _) if why != NO_APPS => {}
        (DriftStatus::Skipped(_), Ok(entries)) => {
            *layer = LayerDrift::checked(Layer::Apps, entries, Vec::new(), t.elapsed());
        }
        (DriftStatus::Skipped(_), Err(why)) => {
            *layer = LayerDrift::error(Layer::Apps, why, t.elapsed());
        }
        (DriftStatus::Error(_), Ok(entries)) => layer.entries.extend(entries),
        (DriftStatus::Error(e), Err(why)) => {
            layer.status = DriftStatus::Error(format!("{e}; {why}"));
        }
        (DriftStatus::InSync | DriftStatus::Drift, Ok(entries)) => {
            layer.entries.extend(entries);
            if !layer.entries.is_empty() {
                layer.status = DriftStatus::Drift;
            }
            layer.duration += t.elapsed();
        }
        (DriftStatus::InSync | DriftStatus::Drift, Err(why)) => {
            layer.status = DriftStatus::Error(why);
        }
    }
}

async fn drift(deployment: &Deployment) -> Result<Vec<crate::drift::DriftEntry>, String> {
    let ec2 = deployment
        .ec2()
        .await
        .map_err(|f| f.summary())?
        .ok_or("the environment has no cloud section")?;
    let live = deployment
        .observe_cloud(&ec2)
        .await
        .map_err(|f| f.summary())?;
    let r53 = dns::connect(&AwsOptions::default()).await;
    dns::drift(&r53, &deployment.env, &deployment.name, &live)
        .await
        .map_err(|e| e.to_string())
}

/// The teardown node deleting the records the deployment owns (in `layer`), or `None` without
/// a `spec.dns`.
pub async fn delete_node(
    deployment: &Deployment,
    layer: Layer,
) -> Option<(NodeSpec, Arc<dyn Action>)> {
    let dns = deployment.env.dns.as_ref()?;
    let r53 = dns::connect(&AwsOptions::default()).await;
    Some(dns::delete_node(
        r53,
        dns.zone.clone(),
        &deployment.name,
        layer,
        &options(deployment, false),
    ))
}
