//! Executors: one idempotent attempt at converging or deleting one resource. Each attempt first
//! re-observes the resource by its tags, so a retry or a re-run after a crash never creates it
//! twice; everything is tagged at creation (TagSpecifications), so nothing exists untagged.
//!
//! One module per kind of work: the network resources, security-group rules, instances, and
//! deletes (with the copies' teardown).

mod delete;
mod instances;
mod network;
mod rules;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::client::Ec2;
use super::compare::CompareCtx;
use super::desired::{DesiredCloud, DesiredResource, ResourceSpec};
use super::error::AwsError;
use super::images::ImageCache;
use super::live::{observe_kind, LiveResource};
use crate::engine::{NodeCtx, NodeOutcome};

/// Waits and polls of the cloud layer (the engine owns the overall node deadline).
#[derive(Clone, Debug)]
pub struct ConvergeOptions {
    /// Deadline of each node over all its attempts.
    pub node_timeout: Duration,
    /// How long an instance may take to be running with status checks ok.
    pub instance_ready_timeout: Duration,
    /// How long a deleted instance may take to be terminated (and a stop to complete).
    pub instance_stop_timeout: Duration,
    /// Interval between polls of a wait.
    pub poll_interval: Duration,
}

impl Default for ConvergeOptions {
    fn default() -> Self {
        ConvergeOptions {
            node_timeout: Duration::from_secs(900),
            instance_ready_timeout: Duration::from_secs(600),
            instance_stop_timeout: Duration::from_secs(600),
            poll_interval: Duration::from_secs(2),
        }
    }
}

/// Resource id → AWS id of what nodes of this run converged, so dependents need no extra lookup.
#[derive(Default, Debug)]
pub(crate) struct RunIds {
    map: Mutex<HashMap<String, String>>,
}

impl RunIds {
    fn get(&self, resource: &str) -> Option<String> {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(resource)
            .cloned()
    }

    fn set(&self, resource: &str, aws_id: &str) {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(resource.to_string(), aws_id.to_string());
    }
}

/// Everything an executor needs; shared by all nodes of one run.
pub(crate) struct Exec {
    pub ec2: Ec2,
    pub env: String,
    pub commit: String,
    pub desired: Option<Arc<DesiredCloud>>,
    pub ids: RunIds,
    pub images: ImageCache,
    pub opts: ConvergeOptions,
}

type Res<T> = Result<T, AwsError>;

fn kind_of(resource: &str) -> &str {
    resource.split('/').next().unwrap_or(resource)
}

impl Exec {
    fn desired_resource(&self, resource: &str) -> Res<&DesiredResource> {
        self.desired
            .as_deref()
            .and_then(|d| d.get(resource))
            .ok_or_else(|| {
                AwsError::refused(format!("converging {resource}"), "not in the desired state")
            })
    }

    /// The AWS id of a dependency: from this run, else found by its tags.
    async fn aws_id(&self, resource: &str, doing: &str) -> Res<String> {
        if let Some(id) = self.ids.get(resource) {
            return Ok(id);
        }
        let mut copies =
            observe_kind(&self.ec2, &self.env, kind_of(resource), Some(resource)).await?;
        copies.sort_by(|a, b| a.aws_id.cmp(&b.aws_id));
        let Some(first) = copies.first() else {
            return Err(AwsError::not_ready(
                doing,
                format!("{resource} does not exist yet"),
            ));
        };
        self.ids.set(resource, &first.aws_id);
        Ok(first.aws_id.clone())
    }

    /// AWS id → resource id for the given dependencies (and the resource's own copies).
    async fn reference_map(
        &self,
        deps: &[String],
        own: &[LiveResource],
        doing: &str,
    ) -> Res<HashMap<String, String>> {
        let mut map = HashMap::new();
        for d in deps {
            let id = self.aws_id(d, doing).await?;
            map.insert(id, d.clone());
        }
        for c in own {
            map.insert(c.aws_id.clone(), c.resource.clone());
        }
        Ok(map)
    }

    fn compare_ctx<'a>(
        &self,
        to_resource: &'a HashMap<String, String>,
        images: &'a HashMap<super::desired::ImageSpec, super::images::ResolvedImage>,
    ) -> CompareCtx<'a> {
        CompareCtx {
            to_resource,
            images,
            allow_stop_modify_start: self
                .desired
                .as_deref()
                .is_some_and(|d| d.allow_stop_modify_start),
        }
    }

    // ---------------------------------------------------------------- converge

    /// One attempt at converging `resource` (not its security-group rules: see [`Exec::rules`]).
    pub(crate) async fn converge(&self, ctx: &NodeCtx, resource: &str) -> Res<NodeOutcome> {
        let d = self.desired_resource(resource)?;
        match &d.spec {
            ResourceSpec::Instance(spec) => self.instance(ctx, d, spec).await,
            _ => self.network(ctx, d).await,
        }
    }

    fn deps_of(&self, d: &DesiredResource) -> Vec<String> {
        match &d.spec {
            ResourceSpec::Vpc { .. } | ResourceSpec::KeyPair { .. } => vec![],
            ResourceSpec::Subnet { .. }
            | ResourceSpec::InternetGateway
            | ResourceSpec::SecurityGroup { .. } => vec!["vpc".into()],
            ResourceSpec::RouteTable { subnets } => {
                let mut deps = vec!["vpc".to_string(), "igw".to_string()];
                deps.extend(subnets.iter().cloned());
                deps
            }
            ResourceSpec::Instance(_) => vec![],
        }
    }
}

/// The `Name` tag, for naming foreign resources.
const TAG_NAME_KEY: &str = "Name";
