//! What rebuild, destroy, plan, drill and up share: an environment read from one commit, resolved
//! for one effective name (the live env, or a suffixed copy), and the engine run with its readers.

use super::common::{load_env, Context};
use crate::engine::{self, CancelToken, EngineOptions, Graph, Layer, RunSummary};
use crate::env::model::{Environment, Role};
use crate::error::Failure;
use crate::providers::aws::{self, AwsOptions, DesiredCloud, DesiredInputs, Ec2};
use crate::render::{Mode, Renderer, SecretValues};
use crate::report::events::{EventSink, RunInfo};
use crate::report::{audit, jsonl, progress};
use crate::source::Snapshot;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// One environment, as deployed under `name` (the definition's name, or a drill/ephemeral copy).
pub struct Deployment {
    pub snap: Arc<Snapshot>,
    pub env: Environment,
    /// The effective name: every tag, cluster name and audit record uses it.
    pub name: String,
    /// Tags added to every cloud resource (e.g. `phoenix:expires` of an ephemeral copy).
    pub extra_tags: BTreeMap<String, String>,
}

impl Deployment {
    /// Reads the environment `name` from the commit; `effective` overrides the deployed name.
    pub async fn open(
        ctx: &Context,
        name: &str,
        effective: Option<String>,
    ) -> Result<Self, Failure> {
        let snap = ctx.open().await?;
        let env = load_env(ctx, &snap, name)?;
        Ok(Deployment {
            name: effective.unwrap_or_else(|| env.name.clone()),
            snap,
            env,
            extra_tags: BTreeMap::new(),
        })
    }

    pub fn commit(&self) -> &str {
        &self.snap.commit().sha
    }

    /// Reads every secret the environment declares; the error names the secret, never a value.
    pub fn secrets(&self) -> Result<SecretValues, Failure> {
        SecretValues::resolve(&self.env).map_err(|why| {
            Failure::new(format!("cannot read the secrets of {}", self.env.name))
                .cause(why)
                .help("set the environment variables / create the files the spec.secrets entries name")
        })
    }

    pub fn renderer(&self, secrets: SecretValues, mode: Mode) -> Result<Renderer, Failure> {
        Renderer::new(&*self.snap, &self.env, &self.name, secrets, mode).map_err(|e| {
            Failure::new(format!("cannot render {}", self.env.name)).cause(e.to_string())
        })
    }

    /// Connects to EC2 in the environment's region, or `None` when it has no cloud layer.
    pub async fn ec2(&self) -> Result<Option<Ec2>, Failure> {
        let Some(cloud) = &self.env.cloud else {
            return Ok(None);
        };
        let ec2 = aws::connect(&cloud.region, &AwsOptions::default())
            .await
            .map_err(|e| {
                Failure::from_error(format!("cannot connect to EC2 in {}", cloud.region), &e)
            })?;
        Ok(Some(ec2))
    }

    /// The desired cloud state: user-data rendered per instance group, the key pair's public key.
    pub fn desired_cloud(
        &self,
        ctx: &Context,
        renderer: &Renderer,
        cluster: &serde_json::Value,
    ) -> Result<Option<DesiredCloud>, Failure> {
        let Some(cloud) = &self.env.cloud else {
            return Ok(None);
        };
        let key = aws::key_material(cloud, &self.name, &ctx.home)
            .map_err(|e| Failure::from_error("cannot prepare the key pair", &e))?;
        let mut user_data = BTreeMap::new();
        if let Some(g) = cloud.instances.iter().find(|g| {
            g.user_data.is_none() && crate::env::validate::default_user_data(&g.role).is_some()
        }) {
            // The default k3s user-data carries the cluster's CA and join token, and agents the
            // server's address: that comes from the control-plane layer, which rebuild and plan
            // do not wire yet. Say so rather than fail on an undefined template variable.
            return Err(Failure::new(format!(
                "instance group {} (role {}) needs the k3s user-data of the control-plane layer, which this build does not wire into rebuild and plan yet",
                g.name,
                if g.role == Role::Server { "server" } else { "agent" }
            ))
            .help("`phoenix plan --offline` and `phoenix render` show the whole environment; a group with its own `userData` template or without a role can be converged now"));
        }
        for g in &cloud.instances {
            // Groups without their own template were either refused above (k3s roles) or have none.
            let Some(template) = g.user_data.as_deref() else {
                continue;
            };
            let rendered = renderer
                .user_data(&*self.snap, template, g, 0, cluster)
                .map_err(|e| {
                    Failure::new(format!(
                        "cannot render the user-data of instance group {}",
                        g.name
                    ))
                    .cause(e.to_string())
                })?;
            user_data.insert(g.name.clone(), rendered);
        }
        Ok(Some(aws::desired(
            cloud,
            &self.name,
            &DesiredInputs {
                commit: self.commit().to_string(),
                user_data,
                key,
                extra_tags: self.extra_tags.clone(),
            },
        )))
    }

    /// The live cloud state of this deployment, found by its ownership tags.
    pub async fn observe_cloud(&self, ec2: &Ec2) -> Result<aws::LiveCloud, Failure> {
        aws::observe(ec2, &self.name).await.map_err(|e| {
            Failure::from_error(
                format!("cannot read the live cloud state of {}", self.name),
                &e,
            )
        })
    }

    pub fn run_info(&self, ctx: &Context, command: &str) -> RunInfo {
        let info = RunInfo::new(self.name.clone(), command, self.commit().to_string());
        match &ctx.source.reference {
            Some(r) => info.with_ref(r.clone()),
            None => info,
        }
    }
}

/// How a command runs its graph.
pub struct RunSettings {
    pub command: &'static str,
    pub layers: Vec<Layer>,
    pub concurrency: usize,
}

/// Runs `graph` with progress bars (or JSON lines with `--output json`) and an audit record.
pub async fn run_graph(
    ctx: &Context,
    dep: &Deployment,
    graph: Graph,
    settings: RunSettings,
) -> Result<RunSummary, Failure> {
    graph
        .validate()
        .map_err(|e| Failure::from_error("the run graph is inconsistent (a bug in phoenix)", &e))?;
    let sink = EventSink::new();
    let progress = tokio::spawn(progress::show(
        sink.subscribe(),
        progress::ProgressMode::detect(ctx.json()),
    ));
    let lines = ctx
        .json()
        .then(|| tokio::spawn(jsonl::write(sink.subscribe(), std::io::stdout())));
    let audit = tokio::spawn(audit::record(sink.subscribe(), ctx.home.clone()));
    let opts = EngineOptions {
        concurrency: settings.concurrency.max(1),
        layers: (!settings.layers.is_empty())
            .then(|| settings.layers.iter().copied().collect::<BTreeSet<_>>()),
        run: dep.run_info(ctx, settings.command),
        ..EngineOptions::default()
    };
    let summary = engine::run(graph, opts, sink, CancelToken::on_ctrl_c()).await;
    let _ = progress.await;
    if let Some(lines) = lines {
        if let Ok(Err(e)) = lines.await {
            eprintln!("warning: cannot write the JSON event stream: {e}");
        }
    }
    match audit.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => eprintln!("warning: the audit record of this run could not be written: {e}"),
        Err(e) => eprintln!("warning: the audit writer stopped: {e}"),
    }
    Ok(summary)
}
