//! The comparison of one environment at two commits: per layer and graph node what is created,
//! changed, replaced (and why) or removed, and what that means for a rebuild. Pure.

use super::state::{is_server, CloudItem, ComponentItem, EnvState};
use crate::drift::{field_diffs, unified_diff_text};
use crate::engine::Layer;
use crate::providers::kube;
use crate::render::{to_yaml, REDACTED};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// What happens to one resource, object or setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Replace,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Replace => "replace",
            Action::Delete => "delete",
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Action::Create => "+",
            Action::Update => "~",
            Action::Replace => "-/+",
            Action::Delete => "-",
        }
    }
}

/// One field that differs between the two commits; a side is `None` where the field is absent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Field {
    pub path: String,
    pub base: Option<String>,
    pub head: Option<String>,
}

impl Field {
    fn new(path: impl Into<String>, base: Option<String>, head: Option<String>) -> Field {
        Field {
            path: path.into(),
            base,
            head,
        }
    }
}

/// One change of one resource: `id` is the graph node that makes it, `resource` what it is about.
#[derive(Clone, Debug, Serialize)]
pub struct Change {
    pub id: String,
    pub resource: String,
    pub action: Action,
    /// Why a replace, what a create makes, where a moved object comes from.
    pub reason: Option<String>,
    pub fields: Vec<Field>,
    /// A unified diff (base → head) of the rendered object or user-data, secrets redacted.
    pub diff: Option<String>,
}

/// How many changes of each action.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub create: usize,
    pub update: usize,
    pub replace: usize,
    pub delete: usize,
}

impl Counts {
    fn of<'a>(changes: impl IntoIterator<Item = &'a Change>) -> Counts {
        let mut c = Counts::default();
        for ch in changes {
            match ch.action {
                Action::Create => c.create += 1,
                Action::Update => c.update += 1,
                Action::Replace => c.replace += 1,
                Action::Delete => c.delete += 1,
            }
        }
        c
    }

    pub fn total(&self) -> usize {
        self.create + self.update + self.replace + self.delete
    }
}

/// The changes of one layer.
#[derive(Clone, Debug, Serialize)]
pub struct LayerChanges {
    pub layer: Layer,
    pub counts: Counts,
    pub changes: Vec<Change>,
}

/// An instance replaced, and why.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Replaced {
    pub resource: String,
    pub role: Option<String>,
    pub reason: String,
}

/// An object a rebuild at the head commit removes from the cluster.
#[derive(Clone, Debug, Serialize)]
pub struct Pruned {
    /// The node that removes it: the component's, or `addons/.removed` / `apps/.removed` when
    /// the whole component left Git.
    pub id: String,
    pub resource: String,
}

/// What the changes mean for a rebuild and for recovery.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Impact {
    pub replaced: Vec<Replaced>,
    /// Whether a k3s server is among the replaced or removed instances: the cluster is rebuilt.
    pub server_replaced: bool,
    /// Instances removed (a group's count lowered, or the group removed).
    pub removed_instances: Vec<String>,
    /// The k3s servers among `removed_instances`.
    #[serde(skip)]
    pub removed_servers: Vec<String>,
    pub pruned: Vec<Pruned>,
    /// Health gates and waits that change: component `wait`, `checks`, `dependsOn`, and the
    /// layer timeouts (`id` is the component node, or `timeouts`).
    pub gates: Vec<GateChange>,
    /// `spec.recoveryObjective`, when it changes (the drill is judged against it).
    pub recovery_objective: Option<Field>,
    /// `metadata.protected`, when it changes (`phoenix destroy` refuses a protected env).
    pub protected: Option<Field>,
    /// Declared secrets whose reference is added, removed or changed (never a value).
    pub secrets: Vec<Field>,
    /// Data volumes that leave Git: a rebuild leaves them (and their snapshots) as they are.
    pub volumes_left: Vec<String>,
    /// One line each, loudest first.
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct GateChange {
    pub id: String,
    pub field: Field,
}

/// The comparison of an environment between two valid (or absent) states.
pub struct Comparison {
    pub layers: Vec<LayerChanges>,
    pub impact: Impact,
}

impl Comparison {
    pub fn counts(&self) -> Counts {
        Counts::of(self.layers.iter().flat_map(|l| &l.changes))
    }

    /// Whether merging changes anything a rebuild or a drill does.
    pub fn has_changes(&self) -> bool {
        self.counts().total() > 0
            || !self.impact.gates.is_empty()
            || self.impact.recovery_objective.is_some()
            || !self.impact.volumes_left.is_empty()
            || self.impact.protected.is_some()
            || !self.impact.secrets.is_empty()
    }
}

/// Compares `base` with `head` (either absent: everything created, or everything removed),
/// showing only the layers in `wanted` (all when empty).
pub fn compare_states(
    base: Option<&EnvState>,
    head: Option<&EnvState>,
    wanted: &[Layer],
) -> Comparison {
    let wanted = |l: Layer| wanted.is_empty() || wanted.contains(&l);
    let mut impact = Impact::default();
    let mut layers = Vec::new();
    let cloud = compare_cloud(base, head, &mut impact);
    let cluster = compare_cluster(base, head);
    let mut components = compare_components(base, head, &mut impact);
    for (layer, changes) in [
        (Layer::Cloud, cloud),
        (Layer::Cluster, cluster),
        (
            Layer::Addons,
            components.remove(&Layer::Addons).unwrap_or_default(),
        ),
        (
            Layer::Apps,
            components.remove(&Layer::Apps).unwrap_or_default(),
        ),
    ] {
        let present = |s: Option<&EnvState>| {
            s.is_some_and(|s| match layer {
                Layer::Cloud => !s.cloud.is_empty(),
                Layer::Cluster => s.cluster.is_some(),
                l => s.components.iter().any(|c| c.layer == l),
            })
        };
        // Layers neither commit has, or left out with --layers, are not shown.
        if !wanted(layer) || (changes.is_empty() && !present(base) && !present(head)) {
            continue;
        }
        layers.push(LayerChanges {
            layer,
            counts: Counts::of(&changes),
            changes,
        });
    }
    compare_settings(base, head, &mut impact);
    // What the left-out layers would mean is left out with them.
    if !wanted(Layer::Cloud) {
        impact.replaced.clear();
        impact.removed_instances.clear();
        impact.server_replaced = false;
    }
    let layer_of = |id: &str| id.split('/').next().and_then(|l| l.parse::<Layer>().ok());
    impact
        .pruned
        .retain(|p| layer_of(&p.id).is_none_or(&wanted));
    impact.gates.retain(|g| layer_of(&g.id).is_none_or(&wanted));
    warnings(&layers, &mut impact);
    Comparison { layers, impact }
}

/// Fields fixed when a resource is made, by kind (as the live plan in providers/aws decides):
/// a change to one of them replaces the resource. The reason says why.
fn fixed_fields(id: &str) -> (&'static [&'static str], &'static str) {
    match id.split('/').next().unwrap_or("") {
        "vpc" => (
            &["cidr"],
            "a VPC's CIDR block cannot change in place: its subnets, groups and instances are made again in the new one",
        ),
        "subnet" => (
            &["cidr", "zone"],
            "a subnet's CIDR block and zone cannot change in place: its instances are launched again in the new one",
        ),
        "sg" => (&["groupName"], "a security group cannot be renamed"),
        "key" => (
            &["keyName", "publicKey"],
            "EC2 cannot change a key pair's name or key",
        ),
        _ => (&[], ""),
    }
}

/// Instance settings applied only at launch and not compared with running instances.
const LAUNCH_ONLY: &[&str] = &["rootVolumeGib", "instanceProfile"];

fn fields_of(base: &Value, head: &Value) -> Vec<Field> {
    field_diffs(head, base)
        .into_iter()
        .map(|f| Field::new(f.path, f.live, f.desired))
        .collect()
}

fn compare_cloud(
    base: Option<&EnvState>,
    head: Option<&EnvState>,
    impact: &mut Impact,
) -> Vec<Change> {
    let empty = Vec::new();
    let base_items: &Vec<CloudItem> = base.map_or(&empty, |s| &s.cloud);
    let head_items: &Vec<CloudItem> = head.map_or(&empty, |s| &s.cloud);
    let allow_sms = head.is_some_and(|h| h.allow_stop_modify_start);
    let old: BTreeMap<&str, &CloudItem> = base_items.iter().map(|i| (i.id.as_str(), i)).collect();
    let mut changes = Vec::new();
    // Replaced containers replace what is in them: every resource in a replaced VPC, every
    // instance in a replaced subnet.
    let mut replaced_containers: BTreeSet<String> = BTreeSet::new();
    for item in head_items {
        let node = format!("cloud/{}", item.id);
        let Some(was) = old.get(item.id.as_str()) else {
            changes.push(Change {
                id: node,
                resource: item.id.clone(),
                action: Action::Create,
                reason: Some(summary(item)),
                fields: Vec::new(),
                diff: None,
            });
            continue;
        };
        let mut fields = fields_of(&was.spec, &item.spec);
        for (k, b, h) in tag_diff(&was.tags, &item.tags) {
            fields.push(Field::new(format!("tags.{k}"), b, h));
        }
        let mut diff = None;
        if was.user_data != item.user_data {
            fields.push(Field::new(
                "user-data",
                was.user_data.as_ref().map(|_| "(rendered)".into()),
                item.user_data
                    .as_ref()
                    .map(|_| "(rendered, changed)".into()),
            ));
            diff = Some(unified_diff_text(
                &format!("base {} user-data", item.id),
                &format!("head {} user-data", item.id),
                was.user_data.as_deref().unwrap_or(""),
                item.user_data.as_deref().unwrap_or(""),
                false,
            ));
        }
        // A key pair is not in the VPC.
        let vpc_replaced =
            replaced_containers.contains("vpc") && item.id != "vpc" && !item.id.starts_with("key/");
        let in_replaced_subnet = item.spec["subnet"]
            .as_str()
            .is_some_and(|s| replaced_containers.contains(s));
        if fields.is_empty() && !vpc_replaced && !in_replaced_subnet {
            continue;
        }
        if item.id.starts_with("volume/") {
            changes.push(Change {
                id: node,
                resource: item.id.clone(),
                action: Action::Update,
                reason: Some(volume_change(&fields)),
                fields,
                diff,
            });
            continue;
        }
        let is_instance = item.id.starts_with("instance/");
        let server = is_server(item.role.as_deref());
        let mut fixed: Vec<String> = Vec::new();
        let mut reason = None;
        if is_instance {
            for f in &fields {
                let p = f.path.as_str();
                let launch = matches!(p, "role" | "image" | "subnet" | "key" | "user-data")
                    || (p == "type" && (server || !allow_sms));
                if launch {
                    fixed.push(p.to_string());
                }
            }
            if !fixed.is_empty() {
                let mut why = format!(
                    "fixed at launch: {} (an instance's image, subnet, user-data, key and, unless allowStopModifyStart, type)",
                    fixed.join(", ")
                );
                if server && allow_sms && fixed.iter().any(|f| f == "type") {
                    why.push_str("; allowStopModifyStart does not apply to the k3s server");
                }
                let lookup = |v: &Value| {
                    v["image"]
                        .as_str()
                        .is_some_and(|i| i.starts_with("newest "))
                };
                if fixed == ["image"] && lookup(&was.spec) && lookup(&item.spec) {
                    why.push_str("; both are lookups: a rebuild replaces the instance only if the new lookup finds another image than the one it runs");
                }
                reason = Some(why);
            } else if in_replaced_subnet || vpc_replaced {
                reason = Some("its subnet is made again".into());
                fixed.push("subnet".into());
            } else if fields.iter().any(|f| f.path == "type") {
                reason = Some("type changed by stop, modify, start (allowStopModifyStart)".into());
            } else if fields
                .iter()
                .any(|f| LAUNCH_ONLY.contains(&f.path.as_str()))
            {
                reason = Some("launch settings: running instances keep theirs (they are not compared with live instances); instances launched from now on get the new value".into());
            } else if fields.iter().any(|f| f.path == "imageUpdate") {
                reason = Some("with image.update latest, a newer image matching the lookup replaces the instance (which images exist is not known offline)".into());
            }
        } else {
            let (kinds, why) = fixed_fields(&item.id);
            fixed = fields
                .iter()
                .filter(|f| kinds.contains(&f.path.as_str()))
                .map(|f| f.path.clone())
                .collect();
            if !fixed.is_empty() {
                reason = Some(why.to_string());
            } else if vpc_replaced {
                fixed.push("vpc".into());
                reason = Some("its VPC is made again".into());
            }
        }
        let action = if fixed.is_empty() {
            Action::Update
        } else {
            replaced_containers.insert(item.id.clone());
            Action::Replace
        };
        if action == Action::Replace && is_instance {
            impact.replaced.push(Replaced {
                resource: item.id.clone(),
                role: item.role.clone(),
                reason: reason.clone().unwrap_or_default(),
            });
            if server {
                impact.server_replaced = true;
            }
        }
        changes.push(Change {
            id: node,
            resource: item.id.clone(),
            action,
            reason,
            fields,
            diff,
        });
    }
    // Removed resources, dependents first (instances before their subnet and groups).
    let now: BTreeSet<&str> = head_items.iter().map(|i| i.id.as_str()).collect();
    for item in base_items.iter().rev() {
        if now.contains(item.id.as_str()) {
            continue;
        }
        if item.id.starts_with("volume/") {
            // A rebuild does not delete a volume that left Git: it is not a change it makes.
            impact.volumes_left.push(item.id.clone());
            continue;
        }
        if item.id.starts_with("instance/") {
            impact.removed_instances.push(item.id.clone());
            if is_server(item.role.as_deref()) {
                impact.server_replaced = true;
                impact.removed_servers.push(item.id.clone());
            }
        }
        changes.push(Change {
            id: format!("cloud/{}", item.id),
            resource: item.id.clone(),
            action: Action::Delete,
            reason: Some("no longer in Git".into()),
            fields: Vec::new(),
            diff: None,
        });
    }
    changes
}

/// What a rebuild does with a changed data volume: its settings apply when it is made, never to
/// the live volume (used as it is); where it attaches applies once it is free.
fn volume_change(fields: &[Field]) -> String {
    let changed = |names: &[&str]| {
        fields.iter().any(|f| {
            names
                .iter()
                .any(|n| f.path == *n || f.path.starts_with(&format!("{n}.")))
        })
    };
    let mut why = Vec::new();
    if changed(&["size", "type", "iops", "throughput", "filesystem"]) {
        why.push("a live volume is used as it is (never resized, retyped or formatted): the new size, type or filesystem applies when the volume is next created from a snapshot");
    }
    if changed(&["instance", "device", "mountPath"]) {
        why.push("it attaches to the new instance or device once the old one releases it (a replaced instance does on termination); the instances' user-data mounts it at the new path");
    }
    if changed(&["zone"]) {
        why.push("a volume cannot move zones: a rebuild stops until it is snapshotted (`phoenix backup`) and deleted, and then restores it in the new zone");
    }
    if changed(&["backup", "allowEmpty"]) {
        why.push("what `phoenix backup`, diff, watch and drills use, and whether a missing volume may start empty; the volume itself is unchanged");
    }
    if why.is_empty() {
        "settings".into()
    } else {
        why.join("; ")
    }
}

/// What a created cloud resource is, in a few words.
fn summary(item: &CloudItem) -> String {
    let s = &item.spec;
    let text = |k: &str| s[k].as_str().unwrap_or("").to_string();
    match item.id.split('/').next().unwrap_or("") {
        "vpc" => text("cidr"),
        "subnet" => format!(
            "{} in {}{}",
            text("cidr"),
            text("zone"),
            if s["public"].as_bool() == Some(true) {
                ", public"
            } else {
                ""
            }
        ),
        "instance" => format!("{} {}, {}", text("role"), text("type"), text("image")),
        "volume" => format!(
            "{} GiB {} {}, restored from the newest snapshot it owns{}",
            s["size"],
            text("type"),
            match s["zone"].as_str() {
                Some(zone) => format!("in {zone} for the EBS CSI driver"),
                None => format!("on {} at {}", text("instance"), text("mountPath")),
            },
            if s["allowEmpty"].as_bool() == Some(true) {
                " (or empty, allowEmpty)"
            } else {
                " (a rebuild fails without one)"
            }
        ),
        "sg" => text("groupName"),
        "key" => text("keyName"),
        "igw" => "attached to the VPC".into(),
        "rtb" => format!(
            "0.0.0.0/0 → igw for {}",
            s["subnets"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        ),
        _ => "new".into(),
    }
}

fn tag_diff(
    base: &BTreeMap<String, String>,
    head: &BTreeMap<String, String>,
) -> Vec<(String, Option<String>, Option<String>)> {
    let keys: BTreeSet<&String> = base.keys().chain(head.keys()).collect();
    keys.into_iter()
        .filter(|k| base.get(*k) != head.get(*k))
        .map(|k| ((*k).clone(), base.get(k).cloned(), head.get(k).cloned()))
        .collect()
}

fn compare_cluster(base: Option<&EnvState>, head: Option<&EnvState>) -> Vec<Change> {
    let b = base.and_then(|s| s.cluster.as_ref());
    let h = head.and_then(|s| s.cluster.as_ref());
    let id = crate::providers::cluster::CONTROL_PLANE_NODE.to_string();
    let change = |action, reason: &str, fields| Change {
        id: id.clone(),
        resource: "control-plane".into(),
        action,
        reason: Some(reason.into()),
        fields,
        diff: None,
    };
    match (b, h) {
        (None, None) => Vec::new(),
        (None, Some(_)) => vec![change(Action::Create, "the cluster layer is added", vec![])],
        (Some(_), None) => vec![change(
            Action::Delete,
            "the cluster layer is removed: phoenix no longer gates on or applies to a cluster",
            vec![],
        )],
        (Some(b), Some(h)) => {
            let fields = fields_of(b, h);
            if fields.is_empty() {
                return Vec::new();
            }
            let k3s = h["distribution"] == "k3s";
            let reason = if k3s {
                "the k3s settings are in every instance's user-data: the instances that render them are replaced (see cloud)"
            } else {
                "the existing cluster phoenix applies to and gates on"
            };
            vec![change(Action::Update, reason, fields)]
        }
    }
}

/// Values of a Secret's `data`/`stringData`, for showing: never the value; on the head side
/// (`other` is the base object) whether it changed.
fn masked(object: &Value, other: Option<&Value>) -> Value {
    if object["kind"] != "Secret" {
        return object.clone();
    }
    let mut out = object.clone();
    for key in ["data", "stringData"] {
        if let Some(map) = out.get_mut(key).and_then(Value::as_object_mut) {
            for (k, v) in map.iter_mut() {
                let same = other.is_none_or(|o| o[key].get(k) == Some(v));
                *v = Value::String(if same {
                    REDACTED.to_string()
                } else {
                    format!("{REDACTED} (changed)")
                });
            }
        }
    }
    out
}

fn compare_components(
    base: Option<&EnvState>,
    head: Option<&EnvState>,
    impact: &mut Impact,
) -> BTreeMap<Layer, Vec<Change>> {
    let empty = Vec::new();
    let base_c: &Vec<ComponentItem> = base.map_or(&empty, |s| &s.components);
    let head_c: &Vec<ComponentItem> = head.map_or(&empty, |s| &s.components);
    let mut out: BTreeMap<Layer, Vec<Change>> = BTreeMap::new();
    // Where each object is in each commit: an object moved between components is not pruned.
    let owner_in = |list: &Vec<ComponentItem>| -> BTreeMap<String, String> {
        list.iter()
            .flat_map(|c| c.objects.keys().map(move |k| (k.clone(), c.node_id())))
            .collect()
    };
    let base_owner = owner_in(base_c);
    let head_owner = owner_in(head_c);
    let old: BTreeMap<String, &ComponentItem> = base_c.iter().map(|c| (c.node_id(), c)).collect();
    for c in head_c {
        let node = c.node_id();
        let list = out.entry(c.layer).or_default();
        let was = old.get(&node).copied();
        if let Some(was) = was {
            let fields = fields_of(&was.settings, &c.settings);
            for f in &fields {
                let gate = ["wait", "checks", "dependsOn"]
                    .iter()
                    .any(|g| f.path == *g || f.path.starts_with(&format!("{g}.")));
                if gate {
                    impact.gates.push(GateChange {
                        id: node.clone(),
                        field: f.clone(),
                    });
                }
            }
            if !fields.is_empty() {
                list.push(Change {
                    id: node.clone(),
                    resource: format!("component {}", c.name),
                    action: Action::Update,
                    reason: Some("the component's settings: what its node waits for, checks and is applied with".into()),
                    fields,
                    diff: None,
                });
            }
        }
        for (key, object) in &c.objects {
            let before = was.and_then(|w| w.objects.get(key));
            match before {
                None => {
                    let moved = base_owner.get(key).filter(|o| **o != node);
                    list.push(Change {
                        id: node.clone(),
                        resource: key.clone(),
                        action: if moved.is_some() {
                            Action::Update
                        } else {
                            Action::Create
                        },
                        reason: moved.map(|o| {
                            format!("moved from {o}: its ownership marks change; it is not pruned")
                        }),
                        fields: Vec::new(),
                        diff: None,
                    });
                }
                Some(before) if before == object => {}
                Some(before) => {
                    let (b, h) = (masked(before, None), masked(object, Some(before)));
                    let fields = fields_of(&b, &h);
                    let diff = unified_diff_text(
                        &format!("base {key}"),
                        &format!("head {key}"),
                        &to_yaml(&b),
                        &to_yaml(&h),
                        false,
                    );
                    list.push(Change {
                        id: node.clone(),
                        resource: key.clone(),
                        action: Action::Update,
                        reason: None,
                        fields,
                        diff: Some(diff),
                    });
                }
            }
        }
        if let Some(was) = was {
            for key in was.objects.keys() {
                if c.objects.contains_key(key) || head_owner.contains_key(key) {
                    continue;
                }
                impact.pruned.push(Pruned {
                    id: node.clone(),
                    resource: key.clone(),
                });
                list.push(Change {
                    id: node.clone(),
                    resource: key.clone(),
                    action: Action::Delete,
                    reason: Some("no longer rendered: pruned".into()),
                    fields: Vec::new(),
                    diff: None,
                });
            }
        }
    }
    // Components that left Git: their objects are pruned by the layer's prune node.
    let now: BTreeSet<String> = head_c.iter().map(|c| c.node_id()).collect();
    for c in base_c {
        if now.contains(&c.node_id()) {
            continue;
        }
        let prune = kube::prune_node_id(c.layer);
        let list = out.entry(c.layer).or_default();
        for key in c.objects.keys() {
            if head_owner.contains_key(key) {
                continue;
            }
            impact.pruned.push(Pruned {
                id: prune.clone(),
                resource: key.clone(),
            });
            list.push(Change {
                id: prune.clone(),
                resource: key.clone(),
                action: Action::Delete,
                reason: Some(format!("component {} removed from Git: pruned", c.name)),
                fields: Vec::new(),
                diff: None,
            });
        }
    }
    out
}

/// Recovery objective, layer timeouts and secret references.
fn compare_settings(base: Option<&EnvState>, head: Option<&EnvState>, impact: &mut Impact) {
    let (Some(b), Some(h)) = (base, head) else {
        return;
    };
    if b.recovery_objective != h.recovery_objective {
        impact.recovery_objective = Some(Field::new(
            "recoveryObjective",
            b.recovery_objective.clone(),
            h.recovery_objective.clone(),
        ));
    }
    if b.protected != h.protected {
        impact.protected = Some(Field::new(
            "protected",
            Some(b.protected.to_string()),
            Some(h.protected.to_string()),
        ));
    }
    for (layer, t) in &h.timeouts {
        let was = b.timeouts.get(layer);
        if was != Some(t) {
            impact.gates.push(GateChange {
                id: "timeouts".into(),
                field: Field::new(format!("timeouts.{layer}"), was.cloned(), Some(t.clone())),
            });
        }
    }
    for (k, base_ref, head_ref) in tag_diff(&b.secrets, &h.secrets) {
        impact
            .secrets
            .push(Field::new(format!("secrets.{k}"), base_ref, head_ref));
    }
}

fn warnings(layers: &[LayerChanges], impact: &mut Impact) {
    let mut w = Vec::new();
    let servers: Vec<String> = impact
        .replaced
        .iter()
        .filter(|r| is_server(r.role.as_deref()))
        .map(|r| format!("{} is replaced", r.resource))
        .chain(
            impact
                .removed_servers
                .iter()
                .map(|r| format!("{r} is removed")),
        )
        .collect();
    if impact.server_replaced {
        w.push(format!(
            "THE CLUSTER IS REBUILT: the k3s server {}. A new server starts a new, empty control plane: every add-on and app is applied again, and whatever lived only in the cluster (objects made by hand, data on the server's disk not restored from a volume snapshot) is gone",
            servers.join(", the k3s server ")
        ));
    }
    if !impact.volumes_left.is_empty() {
        w.push(format!(
            "data volume{} {} leave{} Git: a rebuild neither detaches nor deletes {} or {} snapshots (`phoenix destroy` snapshots and deletes an env's volumes; otherwise delete them by hand once the data is not needed)",
            if impact.volumes_left.len() == 1 { "" } else { "s" },
            impact.volumes_left.join(", "),
            if impact.volumes_left.len() == 1 { "s" } else { "" },
            if impact.volumes_left.len() == 1 { "it" } else { "them" },
            if impact.volumes_left.len() == 1 { "its" } else { "their" },
        ));
    }
    let secret_moved = layers
        .iter()
        .filter(|l| l.layer == Layer::Cluster)
        .flat_map(|l| &l.changes)
        .flat_map(|c| &c.fields)
        .any(|f| f.path == "secret");
    if secret_moved {
        w.push("the cluster secret's reference changes: every cluster credential (CAs, tokens) derives from its value, so if the value differs every instance's user-data changes — every instance is replaced and the cluster rebuilt (values are not read offline: this plan cannot tell)".into());
    }
    if !impact.replaced.is_empty() {
        w.push(format!(
            "{} instance{} replaced (terminated and launched again): {}",
            impact.replaced.len(),
            if impact.replaced.len() == 1 { "" } else { "s" },
            impact
                .replaced
                .iter()
                .map(|r| r.resource.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !impact.removed_instances.is_empty() {
        w.push(format!(
            "{} instance{} terminated: {}",
            impact.removed_instances.len(),
            if impact.removed_instances.len() == 1 {
                ""
            } else {
                "s"
            },
            impact.removed_instances.join(", ")
        ));
    }
    let other_replaced: Vec<&str> = layers
        .iter()
        .flat_map(|l| &l.changes)
        .filter(|c| c.action == Action::Replace && !c.resource.starts_with("instance/"))
        .map(|c| c.resource.as_str())
        .collect();
    if !other_replaced.is_empty() {
        w.push(format!(
            "cloud resources replaced: {}",
            other_replaced.join(", ")
        ));
    }
    if impact
        .protected
        .as_ref()
        .is_some_and(|p| p.head.as_deref() == Some("false"))
    {
        w.push(
            "the environment is no longer protected: `phoenix destroy` will not refuse it".into(),
        );
    }
    if !impact.pruned.is_empty() {
        w.push(format!(
            "{} object{} pruned from the cluster: {}",
            impact.pruned.len(),
            if impact.pruned.len() == 1 { "" } else { "s" },
            impact
                .pruned
                .iter()
                .map(|p| p.resource.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    impact.warnings = w;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn instance(id: &str, role: &str, spec: Value) -> CloudItem {
        CloudItem {
            id: id.into(),
            spec,
            tags: BTreeMap::new(),
            user_data: Some(format!("#cloud-config for {id}")),
            role: Some(role.into()),
        }
    }

    fn item(id: &str, spec: Value) -> CloudItem {
        CloudItem {
            id: id.into(),
            spec,
            tags: BTreeMap::new(),
            user_data: None,
            role: None,
        }
    }

    fn state(cloud: Vec<CloudItem>, components: Vec<ComponentItem>) -> EnvState {
        EnvState {
            protected: false,
            recovery_objective: Some("10m".into()),
            timeouts: BTreeMap::new(),
            secrets: BTreeMap::new(),
            allow_stop_modify_start: false,
            cloud,
            cluster: None,
            components,
        }
    }

    fn cloud(vpc_cidr: &str, subnet_cidr: &str) -> Vec<CloudItem> {
        vec![
            item("vpc", json!({ "cidr": vpc_cidr })),
            item(
                "subnet/a",
                json!({ "cidr": subnet_cidr, "zone": "us-east-1a", "public": true }),
            ),
            item(
                "key/admin",
                json!({ "keyName": "e-admin", "publicKey": "env:K" }),
            ),
            instance(
                "instance/server/0",
                "server",
                json!({ "type": "t3.medium", "subnet": "subnet/a" }),
            ),
        ]
    }

    fn actions(c: &Comparison) -> Vec<String> {
        c.layers
            .iter()
            .flat_map(|l| &l.changes)
            .map(|c| format!("{} {}", c.action.as_str(), c.resource))
            .collect()
    }

    #[test]
    fn a_new_vpc_cidr_replaces_what_is_in_it_but_not_the_key_pair() {
        let base = state(cloud("10.0.0.0/16", "10.0.1.0/24"), vec![]);
        let head = state(cloud("10.1.0.0/16", "10.1.1.0/24"), vec![]);
        let c = compare_states(Some(&base), Some(&head), &[]);
        assert_eq!(
            actions(&c),
            [
                "replace vpc",
                "replace subnet/a",
                "replace instance/server/0"
            ]
        );
        assert!(c.impact.server_replaced);
        assert!(c.impact.warnings[0].starts_with("THE CLUSTER IS REBUILT"));
    }

    #[test]
    fn a_replaced_subnet_replaces_its_instances() {
        let base = state(cloud("10.0.0.0/16", "10.0.1.0/24"), vec![]);
        let head = state(cloud("10.0.0.0/16", "10.0.2.0/24"), vec![]);
        let c = compare_states(Some(&base), Some(&head), &[]);
        assert_eq!(
            actions(&c),
            ["replace subnet/a", "replace instance/server/0"]
        );
        let server = &c.layers[0].changes[1];
        assert_eq!(server.reason.as_deref(), Some("its subnet is made again"));
    }

    #[test]
    fn unchanged_states_have_no_changes_and_layers_can_be_left_out() {
        let comp = |replicas: u32| ComponentItem {
            layer: Layer::Apps,
            name: "web".into(),
            settings: json!({ "wait": "2m" }),
            objects: BTreeMap::from([(
                "Deployment/shop/web".to_string(),
                json!({ "kind": "Deployment", "spec": { "replicas": replicas } }),
            )]),
        };
        let base = state(cloud("10.0.0.0/16", "10.0.1.0/24"), vec![comp(2)]);
        let same = state(cloud("10.0.0.0/16", "10.0.1.0/24"), vec![comp(2)]);
        let c = compare_states(Some(&base), Some(&same), &[]);
        assert!(!c.has_changes());
        assert_eq!(c.layers.len(), 2, "cloud and apps, each without changes");

        let head = state(cloud("10.1.0.0/16", "10.0.1.0/24"), vec![comp(3)]);
        let c = compare_states(Some(&base), Some(&head), &[Layer::Apps]);
        assert_eq!(actions(&c), ["update Deployment/shop/web"]);
        assert!(!c.impact.server_replaced, "the cloud layer is left out");
        assert!(c.impact.warnings.is_empty());
    }

    #[test]
    fn an_object_moved_between_components_is_not_pruned() {
        let comp = |name: &str, objects: &[&str]| ComponentItem {
            layer: Layer::Apps,
            name: name.into(),
            settings: json!({}),
            objects: objects
                .iter()
                .map(|k| (k.to_string(), json!({ "kind": "ConfigMap" })))
                .collect(),
        };
        let base = state(
            vec![],
            vec![
                comp("a", &["ConfigMap/x/shared", "ConfigMap/x/only-a"]),
                comp("b", &[]),
            ],
        );
        let head = state(vec![], vec![comp("b", &["ConfigMap/x/shared"])]);
        let c = compare_states(Some(&base), Some(&head), &[]);
        assert_eq!(
            actions(&c),
            ["update ConfigMap/x/shared", "delete ConfigMap/x/only-a"]
        );
        assert_eq!(c.impact.pruned.len(), 1);
        assert_eq!(c.impact.pruned[0].id, "apps/.removed");
        let moved = &c.layers[0].changes[0];
        assert_eq!(
            moved.reason.as_deref(),
            Some("moved from apps/a: its ownership marks change; it is not pruned")
        );
    }

    #[test]
    fn a_new_cluster_secret_reference_warns_that_the_value_decides() {
        let mut base = state(vec![], vec![]);
        base.cluster = Some(json!({ "distribution": "k3s", "secret": "env:A" }));
        let mut head = state(vec![], vec![]);
        head.cluster = Some(json!({ "distribution": "k3s", "secret": "env:B" }));
        let c = compare_states(Some(&base), Some(&head), &[]);
        assert_eq!(actions(&c), ["update control-plane"]);
        assert!(
            c.impact.warnings[0].starts_with("the cluster secret's reference changes"),
            "{:?}",
            c.impact.warnings
        );
    }

    #[test]
    fn secret_values_are_masked_on_both_sides() {
        let base = json!({ "kind": "Secret", "data": { "a": "b2xk", "same": "c2FtZQ==" } });
        let head = json!({ "kind": "Secret", "data": { "a": "bmV3", "same": "c2FtZQ==" } });
        assert_eq!(
            masked(&base, None),
            json!({ "kind": "Secret", "data": { "a": REDACTED, "same": REDACTED } })
        );
        assert_eq!(
            masked(&head, Some(&base))["data"]["a"],
            format!("{REDACTED} (changed)")
        );
        assert_eq!(masked(&head, Some(&base))["data"]["same"], REDACTED);
        let cm = json!({ "kind": "ConfigMap", "data": { "a": "visible" } });
        assert_eq!(masked(&cm, None), cm);
    }
}
