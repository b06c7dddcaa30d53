//! What rebuild, destroy, plan, drill and up share: an environment read from one commit, resolved
//! for one effective name (the live env, or a suffixed copy), and the engine run with its readers.

use super::context::{load_env, Context};
use crate::engine::{self, CancelToken, EngineOptions, Graph, Layer, RunSummary};
use crate::env::model::{Cloud, Cluster, EndpointKind, Environment, InstanceGroup, Role};
use crate::error::Failure;
use crate::providers::aws::{self, AwsOptions, DesiredCloud, DesiredInputs, Ec2};
use crate::providers::cluster as cl;
use crate::providers::kube::{ComponentSpec, HttpCheck};
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
    /// Tags added to every cloud resource (e.g. `phoenix:expires` of an ephemeral copy, the
    /// `phoenix:region` of a failover run).
    pub extra_tags: BTreeMap<String, String>,
    /// With `--failover`: the primary region (`spec.cloud.region` as written), which the run
    /// reads snapshots from while it answers and otherwise leaves alone.
    pub primary_region: Option<String>,
}

impl Deployment {
    /// Reads the environment `name` from the commit; `effective` overrides the deployed name.
    pub async fn open(
        ctx: &Context,
        name: &str,
        effective: Option<String>,
    ) -> Result<Self, Failure> {
        let snap = ctx.open().await?;
        let written = load_env(ctx, &snap, name)?;
        let primary_region = written.cloud.as_ref().map(|c| c.region.clone());
        let region = ctx.region(&written);
        let env = ctx.deployed(written)?;
        let mut extra_tags = BTreeMap::new();
        let mut failover_from = None;
        if ctx.failover {
            if let Some(region) = &region {
                extra_tags.insert(aws::TAG_REGION.to_string(), region.clone());
            }
            if let (Some(region), Some(primary), false) = (&region, &primary_region, ctx.json()) {
                eprintln!(
                    "failover: {} in {region} (spec.failover) instead of {primary}",
                    effective.as_deref().unwrap_or(&env.name),
                );
            }
            failover_from = primary_region;
        }
        Ok(Deployment {
            name: effective.unwrap_or_else(|| env.name.clone()),
            snap,
            env,
            extra_tags,
            primary_region: failover_from,
        })
    }

    pub fn commit(&self) -> &str {
        &self.snap.commit().sha
    }

    /// The env's data volumes as deployed under the effective name. A copy (drill, ephemeral)
    /// restores its own volumes from the snapshots of the env it copies and never touches that
    /// env's volumes: they carry another `phoenix:env`.
    pub fn volume_specs(&self) -> Vec<aws::VolumeSpec> {
        aws::volume_specs(
            &self.env,
            &self.name,
            &self.env.name,
            self.commit(),
            &self.extra_tags,
        )
    }

    /// Reads every secret the environment declares; the error names the secret, never a value.
    pub fn secrets(&self, ctx: &Context) -> Result<SecretValues, Failure> {
        SecretValues::resolve(&self.env, &ctx.secrets_dir).map_err(|why| {
            Failure::new(format!("cannot read the secrets of {}", self.env.name))
                .cause(why)
                .help("set the environment variables / create the files the spec.secrets entries name (file: ones under --secrets-dir / PHOENIX_SECRETS_DIR)")
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
    /// With `late_agents`, k3s agents' user-data is rendered during the run, once their server
    /// exists (rebuild); without, from the server in `live` if there is one (plan).
    pub fn desired_cloud(
        &self,
        ctx: &Context,
        renderer: &Arc<Renderer>,
        live: &aws::LiveCloud,
        late_agents: bool,
    ) -> Result<Option<DesiredCloud>, Failure> {
        let Some(cloud) = &self.env.cloud else {
            return Ok(None);
        };
        // Only a key pair without publicKey needs the secret (it is derived from it).
        let secret = match cloud.key_pair.as_ref().map(|k| &k.public_key) {
            Some(None) => self.cluster_secret(ctx)?,
            _ => None,
        };
        let key = aws::key_material(cloud, &self.name, secret.as_ref(), &ctx.secrets_dir)
            .map_err(|e| Failure::from_error("cannot prepare the key pair", &e))?;
        let k3s = match &self.env.cluster {
            Some(Cluster::K3s(k)) => Some(k),
            _ => None,
        };
        let creds = self.cluster_credentials(ctx)?;
        // Only what Git declares goes into the certificate: `--cluster-endpoint` is how phoenix
        // reaches the API, never part of what is deployed.
        let sans: Vec<String> = k3s.map(|k| k.tls_sans.clone()).unwrap_or_default();
        let servers = server_resources(cloud);
        let mut after = BTreeMap::new();
        let live_server = cl::server_private_address(&self.name, cloud, live).ok();
        let shared_cloud = Arc::new(cloud.clone());
        let mut user_data = BTreeMap::new();
        let mut late_user_data = BTreeMap::new();
        for g in &cloud.instances {
            let template = match g.user_data.as_deref() {
                Some(t) => t,
                None => match (k3s, crate::env::validate::default_user_data(&g.role)) {
                    (Some(_), Some(t)) => t,
                    _ => continue,
                },
            };
            let render = |cluster: &serde_json::Value| {
                renderer
                    .user_data(&*self.snap, template, g, 0, cluster)
                    .map_err(|e| {
                        Failure::new(format!(
                            "cannot render the user-data of instance group {}",
                            g.name
                        ))
                        .cause(e.to_string())
                    })
            };
            let cluster_err = |e: cl::ClusterError| {
                Failure::from_error(
                    format!(
                        "cannot prepare the k3s settings of instance group {}",
                        g.name
                    ),
                    &e,
                )
            };
            let (Some(k), Some(creds)) = (k3s, &creds) else {
                user_data.insert(g.name.clone(), render(&serde_json::json!({}))?);
                continue;
            };
            match g.role {
                Role::None => {
                    user_data.insert(g.name.clone(), render(&serde_json::json!({}))?);
                }
                Role::Server => {
                    let value = cl::with_disabled(
                        cl::server_context(creds, &k.version, &sans).map_err(cluster_err)?,
                        &k.disable,
                    );
                    user_data.insert(g.name.clone(), render(&value)?);
                }
                Role::Agent => {
                    // Render once with a stand-in address so a template error shows now, not
                    // after the servers have booted.
                    let probe =
                        cl::agent_context(creds, &k.version, "10.0.0.1").map_err(cluster_err)?;
                    render(&probe)?;
                    match (&live_server, late_agents) {
                        (Some(addr), false) => {
                            let value =
                                cl::agent_context(creds, &k.version, addr).map_err(cluster_err)?;
                            user_data.insert(g.name.clone(), render(&value)?);
                        }
                        (None, false) if servers.is_empty() => {
                            return Err(Failure::new(format!(
                                "instance group {} (role agent) has no server group to join",
                                g.name
                            ))
                            .help("add an instance group with role: server"));
                        }
                        _ => {
                            after.insert(g.name.clone(), servers.clone());
                            late_user_data.insert(
                                g.name.clone(),
                                self.late_agent(
                                    renderer,
                                    &LateAgent {
                                        creds: Arc::clone(creds),
                                        version: k.version.clone(),
                                        cloud: Arc::clone(&shared_cloud),
                                        group: g.clone(),
                                        template: template.to_string(),
                                    },
                                ),
                            );
                        }
                    }
                }
            }
        }
        Ok(Some(aws::desired(
            cloud,
            &self.name,
            &DesiredInputs {
                commit: self.commit().to_string(),
                user_data,
                late_user_data,
                after,
                key,
                extra_tags: self.extra_tags.clone(),
                server_endpoint_public: k3s.is_some_and(|k| k.endpoint == EndpointKind::Public),
            },
        )))
    }

    /// The desired cloud as a rebuild builds it, without rendering or reading anything (no
    /// user-data, no key material, no secret): enough for the node specs, which depend only on
    /// the resources and on which instances wait for others — with k3s, every agent group's
    /// user-data is rendered during the run, after its servers (as [`Self::desired_cloud`] does
    /// with `late_agents`).
    pub fn desired_cloud_shape(&self) -> Option<DesiredCloud> {
        let cloud = self.env.cloud.as_ref()?;
        let mut after = BTreeMap::new();
        if let Some(Cluster::K3s(_)) = &self.env.cluster {
            let servers = server_resources(cloud);
            for g in cloud.instances.iter().filter(|g| g.role == Role::Agent) {
                after.insert(g.name.clone(), servers.clone());
            }
        }
        Some(aws::desired(
            cloud,
            &self.name,
            &DesiredInputs {
                commit: self.commit().to_string(),
                after,
                extra_tags: self.extra_tags.clone(),
                ..DesiredInputs::default()
            },
        ))
    }

    /// An agent group's user-data, rendered by its instance nodes once the servers converged:
    /// the server's private address is read from EC2 then.
    fn late_agent(&self, renderer: &Arc<Renderer>, agent: &LateAgent) -> aws::LateUserData {
        let renderer = Arc::clone(renderer);
        let snap = Arc::clone(&self.snap);
        let name = self.name.clone();
        let agent = Arc::new(agent.clone());
        aws::LateUserData {
            render: Arc::new(move |ec2: Ec2| {
                let (renderer, snap, name, agent) = (
                    Arc::clone(&renderer),
                    Arc::clone(&snap),
                    name.clone(),
                    Arc::clone(&agent),
                );
                Box::pin(async move {
                    let live = aws::observe(&ec2, &name)
                        .await
                        .map_err(|e| crate::error::chain(&e))?;
                    let addr = cl::server_private_address(&name, &agent.cloud, &live)
                        .map_err(|e| crate::error::chain(&e))?;
                    let value = cl::agent_context(&agent.creds, &agent.version, &addr)
                        .map_err(|e| crate::error::chain(&e))?;
                    renderer
                        .user_data(&*snap, &agent.template, &agent.group, 0, &value)
                        .map_err(|e| e.to_string())
                })
            }),
        }
    }

    /// The k3s cluster's credentials, derived from the env's cluster secret (`None` without a
    /// k3s cluster). The same on every machine with the secret; nothing is read from or written
    /// to `$PHOENIX_HOME`.
    pub fn cluster_credentials(
        &self,
        ctx: &Context,
    ) -> Result<Option<Arc<cl::Credentials>>, Failure> {
        let Some(secret) = self.cluster_secret(ctx)? else {
            return Ok(None);
        };
        let creds = cl::Credentials::derive(&ctx.home, &self.name, &secret).map_err(|e| {
            Failure::from_error(
                format!("cannot derive the cluster credentials of {}", self.name),
                &e,
            )
        })?;
        Ok(Some(Arc::new(creds)))
    }

    /// The env's cluster secret (`spec.cluster.secret`), read from where it points (`None`
    /// without a k3s cluster). The error names the reference, never a value.
    pub fn cluster_secret(&self, ctx: &Context) -> Result<Option<cl::Secret>, Failure> {
        let Some(Cluster::K3s(k)) = &self.env.cluster else {
            return Ok(None);
        };
        let secret = crate::render::resolve_secret(&k.secret, &ctx.secrets_dir).map_err(|why| {
            Failure::new(format!(
                "cannot read the cluster secret of {} ({})",
                self.env.name, k.secret
            ))
            .cause(why)
            .help("set the variable / create the file spec.cluster.secret names: every machine that runs phoenix for this env needs the same value (docs/cluster.md)")
        })?;
        Ok(Some(cl::Secret::new(secret)))
    }

    /// Writes the k3s admin kubeconfig (a cache under `$PHOENIX_HOME`: derived from the cluster
    /// secret and the live server's address, rewritten by every run) so that any machine reaches
    /// the cluster, whatever its `$PHOENIX_HOME` held. Nothing without a k3s cluster, or without
    /// a server instance (there is no cluster to reach then).
    pub fn refresh_kubeconfig(&self, ctx: &Context, live: &aws::LiveCloud) -> Result<(), Failure> {
        let (Some(Cluster::K3s(k)), Some(cloud)) = (&self.env.cluster, &self.env.cloud) else {
            return Ok(());
        };
        if cl::server_instance(&self.name, cloud, live).is_err() {
            return Ok(());
        }
        let Some(creds) = self.cluster_credentials(ctx)? else {
            return Ok(());
        };
        let endpoint = cl::resolve_endpoint(
            &self.name,
            ctx.cluster_endpoint.as_deref(),
            Some(cloud),
            Some(live),
            &k.endpoint,
        )
        .map_err(|e| Failure::from_error("cannot find the cluster's API endpoint", &e))?;
        cl::write_kubeconfig(&creds, &endpoint.url)
            .map_err(|e| Failure::from_error("cannot write the cluster's kubeconfig", &e))?;
        Ok(())
    }

    /// How phoenix reaches the cluster: the kubeconfig it writes for k3s, or the env's own.
    pub fn cluster_access(&self, ctx: &Context) -> Result<Option<cl::ClusterAccess>, Failure> {
        match &self.env.cluster {
            Some(Cluster::K3s(_)) => cl::ClusterAccess::k3s(&ctx.home, &self.name)
                .map(Some)
                .map_err(|e| Failure::from_error("cannot locate the cluster's kubeconfig", &e)),
            Some(Cluster::Existing(e)) => Ok(Some(cl::ClusterAccess::existing(e))),
            None => Ok(None),
        }
    }

    /// What the control-plane gate waits for: `None` without a cluster; `Some(Some(cloud))` for
    /// k3s on the env's instances; `Some(None)` for an existing cluster.
    pub fn gate_instances(&self) -> Result<Option<Option<&Cloud>>, Failure> {
        Ok(match &self.env.cluster {
            Some(Cluster::K3s(_)) => match &self.env.cloud {
                Some(cloud) => Some(Some(cloud)),
                None => {
                    return Err(Failure::new(format!(
                        "the k3s cluster of {} needs instances, and the environment has no cloud section",
                        self.name
                    )))
                }
            },
            Some(Cluster::Existing(_)) => Some(None),
            None => None,
        })
    }

    /// The control-plane gate for the env's cluster.
    pub fn gate_target(
        &self,
        ctx: &Context,
        access: &cl::ClusterAccess,
        ec2: Option<&Ec2>,
    ) -> Result<Option<cl::GateTarget>, Failure> {
        Ok(match &self.env.cluster {
            Some(Cluster::K3s(k)) => {
                let (Some(cloud), Some(ec2)) = (&self.env.cloud, ec2) else {
                    return Err(Failure::new(format!(
                        "the k3s cluster of {} needs instances, and the environment has no cloud section",
                        self.name
                    )));
                };
                let creds = self.cluster_credentials(ctx)?.ok_or_else(|| {
                    Failure::new("a k3s cluster without credentials (a bug in phoenix)")
                })?;
                Some(cl::GateTarget::K3s {
                    phoenix_home: ctx.home.clone(),
                    creds,
                    env_name: self.name.clone(),
                    cloud: Arc::new(cloud.clone()),
                    k3s: k.clone(),
                    ec2: ec2.clone(),
                    endpoint_override: ctx.cluster_endpoint.clone(),
                })
            }
            Some(Cluster::Existing(_)) => Some(cl::GateTarget::Existing {
                env_name: self.name.clone(),
                access: access.clone(),
            }),
            None => None,
        })
    }

    /// Every add-on and app, rendered, as the Kubernetes provider converges them.
    pub fn components(
        &self,
        renderer: &Renderer,
        force_conflicts: bool,
    ) -> Result<Vec<ComponentSpec>, Failure> {
        let mut out = Vec::new();
        for (layer, list) in [
            (Layer::Addons, &self.env.addons),
            (Layer::Apps, &self.env.apps),
        ] {
            for c in list {
                let mut manifests = renderer.manifests(&*self.snap, c).map_err(|e| {
                    Failure::new(format!("cannot render component {}", c.name)).cause(e.to_string())
                })?;
                // Fields left to other managers are neither applied nor claimed.
                for m in &mut manifests {
                    for left in &c.leave_fields {
                        if left.matches(&m.object) {
                            left.strip(&mut m.object);
                        }
                    }
                }
                out.push(ComponentSpec {
                    env: self.name.clone(),
                    commit: self.commit().to_string(),
                    layer,
                    name: c.name.clone(),
                    namespace: c.namespace.clone(),
                    manifests,
                    depends_on: c.depends_on.clone(),
                    wait: c.wait,
                    force_conflicts: c.force_conflicts || force_conflicts,
                    leave_fields: c.leave_fields.clone(),
                    completion: None,
                    checks: c
                        .checks
                        .iter()
                        .map(|check| {
                            let mut h = HttpCheck::from(check);
                            if let Some(ca) = &check.ca {
                                let path = format!("{}/{ca}", self.env.dir);
                                h.ca_pem = Some(
                                    crate::env::CommitFiles::read_text(&*self.snap, &path)
                                        .map_err(|why| {
                                            Failure::new(format!(
                                                "cannot read the CA bundle {path} of a check of {}",
                                                c.name
                                            ))
                                            .cause(why)
                                        })?,
                                );
                            }
                            Ok(h)
                        })
                        .collect::<Result<Vec<_>, Failure>>()?,
                });
            }
        }
        // The data volumes, offered as PersistentVolumes: an add-on of their own, so every app
        // (and its PVC, healthy once Bound) comes after them.
        let pvs = crate::providers::cluster::persistent_volumes(&self.env);
        if !pvs.is_empty() {
            let csi = pvs
                .iter()
                .any(|pv| crate::providers::cluster::csi_volume_of(pv).is_some());
            out.push(ComponentSpec {
                env: self.name.clone(),
                commit: self.commit().to_string(),
                layer: Layer::Addons,
                name: crate::providers::cluster::VOLUMES_COMPONENT.to_string(),
                namespace: None,
                manifests: pvs
                    .into_iter()
                    .map(|object| crate::render::Manifest {
                        source: format!("spec.volumes of {}", self.env.file),
                        line: self.env.spans.at("spec.volumes").line,
                        object,
                        stage: crate::render::Stage::Main,
                    })
                    .collect(),
                // A volume left for the EBS CSI driver waits for the add-on that installs it.
                depends_on: if csi {
                    self.env.addons.iter().map(|c| c.name.clone()).collect()
                } else {
                    Vec::new()
                },
                wait: self.env.timeouts.addons,
                force_conflicts: true,
                leave_fields: Vec::new(),
                checks: Vec::new(),
                completion: match (&self.env.cloud, csi) {
                    (Some(cloud), true) => {
                        Some(Arc::new(crate::workflow::csi_volumes::VolumeHandles {
                            env: self.name.clone(),
                            region: cloud.region.clone(),
                        }))
                    }
                    _ => None,
                },
            });
        }
        Ok(out)
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
        let mut info = RunInfo::new(self.name.clone(), command, self.commit().to_string());
        info.region = self.env.cloud.as_ref().map(|c| c.region.clone());
        match &ctx.source.reference {
            Some(r) => info.with_ref(r.clone()),
            None => info,
        }
    }
}

/// The resource ids of the server instances, which k3s agents join.
fn server_resources(cloud: &Cloud) -> Vec<String> {
    cloud
        .instances
        .iter()
        .filter(|g| g.role == Role::Server)
        .flat_map(|g| (0..g.count).map(move |i| format!("instance/{}/{i}", g.name)))
        .collect()
}

/// What an agent group's late user-data is rendered from.
#[derive(Clone)]
struct LateAgent {
    creds: Arc<cl::Credentials>,
    version: String,
    cloud: Arc<Cloud>,
    group: InstanceGroup,
    template: String,
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
    deployment: &Deployment,
    graph: Graph,
    settings: RunSettings,
) -> Result<RunSummary, Failure> {
    graph
        .validate()
        .map_err(|e| Failure::from_error("the run graph is inconsistent (a bug in phoenix)", &e))?;
    let sink = EventSink::new();
    let progress = tokio::spawn(progress::show(
        sink.subscribe(),
        progress::ProgressMode::choose(
            ctx.json(),
            ctx.verbose,
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
        ),
    ));
    let lines = ctx
        .json()
        .then(|| tokio::spawn(jsonl::write(sink.subscribe(), std::io::stdout())));
    let audit = tokio::spawn(audit::record(sink.subscribe(), ctx.home.clone()));
    let opts = EngineOptions {
        concurrency: settings.concurrency.max(1),
        layers: (!settings.layers.is_empty())
            .then(|| settings.layers.iter().copied().collect::<BTreeSet<_>>()),
        run: deployment.run_info(ctx, settings.command),
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
