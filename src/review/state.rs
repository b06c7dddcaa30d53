//! What one commit says an environment is, in the terms a review compares: the desired cloud
//! resources (user-data rendered, secrets redacted), the cluster settings, each component's
//! settings and rendered objects. Built offline from the commit alone; no I/O besides Git.

use crate::engine::Layer;
use crate::env::model::{Cluster, Component, Environment};
use crate::env::{self, Diagnostic};
use crate::providers::aws::{self, DesiredInputs, ResourceSpec};
use crate::providers::kube;
use crate::render::{Mode, Renderer, SecretValues};
use crate::source::Snapshot;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// An environment at one commit.
pub enum Side {
    /// No `environments/<name>/environment.yaml` in the commit.
    Absent,
    /// The definition (or a template it renders) is invalid: every problem, file:line.
    Invalid(Vec<Diagnostic>),
    Valid(Box<EnvState>),
}

/// The comparable state of a valid environment.
pub struct EnvState {
    /// `metadata.protected`: `phoenix destroy` refuses the environment.
    pub protected: bool,
    pub recovery_objective: Option<String>,
    /// Layer timeouts (`spec.timeouts`), humantime text by layer name.
    pub timeouts: BTreeMap<String, String>,
    /// Declared secrets: name → reference (`env:NAME`, `file:PATH`), never a value.
    pub secrets: BTreeMap<String, String>,
    /// `spec.cloud.allowStopModifyStart`: a type change of an agent is then made in place.
    pub allow_stop_modify_start: bool,
    /// Cloud resources by id, in dependency order.
    pub cloud: Vec<CloudItem>,
    /// The control plane's settings, when the env has a cluster layer.
    pub cluster: Option<Value>,
    pub components: Vec<ComponentItem>,
}

/// One desired cloud resource.
pub struct CloudItem {
    /// `vpc`, `subnet/public-a`, `sg/cluster`, `instance/server/0`...
    pub id: String,
    /// The resource's settings (the desired spec without what differs on every commit).
    pub spec: Value,
    /// The tags besides phoenix's own bookkeeping (`phoenix:commit`, the user-data hash).
    pub tags: BTreeMap<String, String>,
    /// Instances: the rendered user-data, secrets redacted.
    pub user_data: Option<String>,
    /// Instances: `server`, `agent` or `none`.
    pub role: Option<String>,
}

/// One add-on or app.
pub struct ComponentItem {
    pub layer: Layer,
    pub name: String,
    /// What the component's node gates on and waits for, and what it is applied with.
    pub settings: Value,
    /// Rendered objects (secrets redacted) by `Kind/namespace/name` or `Kind/name`.
    pub objects: BTreeMap<String, Value>,
}

impl ComponentItem {
    /// The graph node that applies the component, e.g. `apps/web`.
    pub fn node_id(&self) -> String {
        kube::node_id(self.layer, &self.name)
    }
}

/// Reads environment `name` from `snap` and builds what a review compares.
pub fn load(snap: &Snapshot, name: &str) -> Side {
    if !env::load::names(snap).iter().any(|n| n == name) {
        return Side::Absent;
    }
    let env = match env::load(snap, name) {
        Ok(env) => env,
        Err(diags) => return Side::Invalid(diags),
    };
    match build(snap, &env) {
        Ok(state) => Side::Valid(Box::new(state)),
        Err(mut diags) => {
            env::diag::sort(&mut diags);
            Side::Invalid(diags)
        }
    }
}

fn build(snap: &Snapshot, env: &Environment) -> Result<EnvState, Vec<Diagnostic>> {
    // Display mode with redacted secrets: no secret value is read, so none can be shown.
    let renderer = Renderer::new(
        snap,
        env,
        &env.name,
        SecretValues::redacted(env),
        Mode::Display,
    )
    .map_err(|e| vec![Diagnostic::from(e)])?;
    let mut diags = Vec::new();
    let k3s = matches!(env.cluster, Some(Cluster::K3s(_)));
    let mut cloud_items = Vec::new();
    let mut allow_stop_modify_start = false;
    if let Some(cloud) = &env.cloud {
        allow_stop_modify_start = cloud.allow_stop_modify_start;
        // User-data per instance (the instance's name and index are in its context).
        let mut user_data: BTreeMap<String, String> = BTreeMap::new();
        for g in &cloud.instances {
            // As a rebuild does: the group's template, else the role's default under k3s.
            let template = match g.user_data.as_deref() {
                Some(t) => t,
                None => match (k3s, env::validate::default_user_data(&g.role)) {
                    (true, Some(t)) => t,
                    _ => continue,
                },
            };
            let cluster = crate::providers::cluster::display_context(env, &g.role);
            for i in 0..g.count {
                match renderer.user_data(snap, template, g, i, &cluster) {
                    Ok(text) => {
                        user_data.insert(format!("instance/{}/{i}", g.name), text);
                    }
                    Err(e) => diags.push(Diagnostic::from(e)),
                }
            }
        }
        let inputs = DesiredInputs {
            server_endpoint_public: matches!(
                &env.cluster,
                Some(Cluster::K3s(k)) if k.endpoint == crate::env::model::EndpointKind::Public
            ),
            ..DesiredInputs::default()
        };
        let desired = aws::desired(cloud, &env.name, &inputs);
        for r in desired.resources {
            let mut role = None;
            let spec = match &r.spec {
                ResourceSpec::Vpc { cidr } => json!({ "cidr": cidr }),
                ResourceSpec::Subnet { cidr, zone, public } => {
                    json!({ "cidr": cidr, "zone": zone, "public": public })
                }
                ResourceSpec::InternetGateway => json!({}),
                ResourceSpec::RouteTable { subnets } => json!({ "subnets": subnets }),
                ResourceSpec::SecurityGroup {
                    group_name,
                    description,
                    ingress,
                    egress,
                    ..
                } => json!({
                    "groupName": group_name,
                    "description": description,
                    "ingress": ingress.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
                    "egress": egress.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
                }),
                ResourceSpec::KeyPair { key_name, .. } => {
                    // The public key is a reference (or derived from the cluster secret): what
                    // Git says about it, never a key.
                    let source = cloud
                        .key_pair
                        .as_ref()
                        .and_then(|k| k.public_key.as_ref())
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "derived from cluster.secret".into());
                    json!({ "keyName": key_name, "publicKey": source })
                }
                ResourceSpec::Instance(i) => {
                    role = Some(i.role.clone());
                    json!({
                        "role": i.role,
                        "type": i.instance_type,
                        "image": i.image.to_string(),
                        "imageUpdate": if i.image_latest { "latest" } else { "pinned" },
                        "subnet": i.subnet,
                        "securityGroups": i.security_groups,
                        "key": i.key,
                        "rootVolumeGib": i.root_volume_gib,
                        "instanceProfile": i.instance_profile,
                    })
                }
            };
            let tags = r
                .tags
                .into_iter()
                .filter(|(k, _)| {
                    k != aws::TAG_COMMIT && k != aws::TAG_USER_DATA_SHA256 && k != aws::TAG_NAME
                })
                .collect();
            cloud_items.push(CloudItem {
                user_data: user_data.remove(&r.id),
                id: r.id,
                spec,
                tags,
                role,
            });
        }
    }
    cloud_items.extend(env.volumes.iter().map(volume_item));
    let cluster = env.cluster.as_ref().map(|c| match c {
        Cluster::K3s(k) => json!({
            "distribution": "k3s",
            "version": k.version,
            "endpoint": k.endpoint,
            "secret": k.secret.to_string(),
            "tlsSans": k.tls_sans,
            "disable": k.disable,
        }),
        Cluster::Existing(e) => json!({
            "existing": { "kubeconfig": e.kubeconfig, "context": e.context },
        }),
    });
    let mut components = Vec::new();
    for (layer, list) in [(Layer::Addons, &env.addons), (Layer::Apps, &env.apps)] {
        for c in list {
            match renderer.manifests_all(snap, c) {
                Ok(manifests) => {
                    let objects = manifests
                        .into_iter()
                        .map(|m| {
                            let ns = m.namespace().map(str::to_string).or_else(|| {
                                (!crate::providers::kube::builtin_cluster_scoped(
                                    m.api_version(),
                                    m.kind(),
                                ))
                                .then(|| c.namespace.clone().unwrap_or_else(|| "default".into()))
                            });
                            let key = match ns {
                                Some(ns) => format!("{}/{ns}/{}", m.kind(), m.name()),
                                None => format!("{}/{}", m.kind(), m.name()),
                            };
                            (key, m.object)
                        })
                        .collect();
                    components.push(ComponentItem {
                        layer,
                        name: c.name.clone(),
                        settings: settings_of(c),
                        objects,
                    });
                }
                Err(errors) => diags.extend(errors.into_iter().map(Diagnostic::from)),
            }
        }
    }
    // The data volumes' PersistentVolumes, as the add-on a rebuild applies them as.
    let pvs = crate::providers::cluster::persistent_volumes(env);
    if !pvs.is_empty() {
        components.push(ComponentItem {
            layer: Layer::Addons,
            name: crate::providers::cluster::VOLUMES_COMPONENT.to_string(),
            settings: json!({}),
            objects: pvs
                .into_iter()
                .map(|pv| {
                    (
                        format!(
                            "PersistentVolume/{}",
                            pv["metadata"]["name"].as_str().unwrap_or("")
                        ),
                        pv,
                    )
                })
                .collect(),
        });
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    Ok(EnvState {
        protected: env.protected,
        recovery_objective: env
            .recovery_objective
            .map(|d| humantime::format_duration(d).to_string()),
        timeouts: [
            ("cloud", env.timeouts.cloud),
            ("cluster", env.timeouts.cluster),
            ("addons", env.timeouts.addons),
            ("apps", env.timeouts.apps),
        ]
        .into_iter()
        .map(|(l, d)| (l.to_string(), humantime::format_duration(d).to_string()))
        .collect(),
        secrets: env
            .secrets
            .iter()
            .map(|s| (s.name.clone(), s.source.to_string()))
            .collect(),
        allow_stop_modify_start,
        cloud: cloud_items,
        cluster,
        components,
    })
}

/// A data volume as a review compares it: `volume/NAME` with what Git says of it.
fn volume_item(v: &crate::env::model::Volume) -> CloudItem {
    use crate::env::model::Placement;
    let mut spec = json!({
        "size": v.size,
        "type": v.volume_type.as_str(),
        "iops": v.iops,
        "throughput": v.throughput,
        "filesystem": v.filesystem.as_str(),
        "allowEmpty": v.allow_empty,
        "backup": v.backup.as_ref().map(|b| json!({
            "every": b.every.map(|d| humantime::format_duration(d).to_string()),
            "keep": b.keep,
            "copyTo": b.copy_to,
            "recoveryPointObjective": b.recovery_point_objective.map(|d| humantime::format_duration(d).to_string()),
        })),
    });
    match &v.placement {
        Placement::Instance(a) => {
            spec["instance"] = format!("{}/{}", a.group, a.index).into();
            spec["device"] = a.device.clone().into();
            spec["mountPath"] = a.mount_path.clone().into();
        }
        Placement::Zone(zone) => spec["zone"] = zone.clone().into(),
    }
    CloudItem {
        id: v.resource_id(),
        spec,
        tags: BTreeMap::new(),
        user_data: None,
        role: None,
    }
}

/// What of a component is not in its rendered objects: its gates, waits and apply settings.
/// Where its files come from is left out: moving them changes nothing that is deployed.
fn settings_of(c: &Component) -> Value {
    json!({
        "namespace": c.namespace,
        "dependsOn": c.depends_on,
        "wait": humantime::format_duration(c.wait).to_string(),
        "checks": c.checks.iter().map(|k| json!({
            "url": k.url,
            "expect": k.expect,
            "timeout": humantime::format_duration(k.timeout).to_string(),
            "ca": k.ca,
        })).collect::<Vec<_>>(),
        "forceConflicts": c.force_conflicts,
        "leaveFields": c.leave_fields.iter().map(|l| json!({
            "kind": l.kind, "name": l.name, "namespace": l.namespace, "fields": l.fields,
        })).collect::<Vec<_>>(),
    })
}

/// Whether the instance is a k3s server (replacing it makes a new cluster).
pub fn is_server(role: Option<&str>) -> bool {
    role == Some("server")
}
