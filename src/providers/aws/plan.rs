//! The cloud plan: desired vs live, per resource, with field-level detail. Pure — the same
//! comparison drives `phoenix plan`, drift, and each node's decision when it converges.

use std::fmt;

use serde::Serialize;

use super::client::Ec2;
use super::compare::{rank, CompareCtx};
use super::desired::{DesiredCloud, DesiredResource, ImageSpec, ResourceSpec};
use super::error::AwsError;
use super::images::{self};
use super::live::{observe, LiveCloud};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeAction {
    Create,
    Update,
    Replace,
    Delete,
    Unchanged,
}

impl ChangeAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeAction::Create => "create",
            ChangeAction::Update => "update",
            ChangeAction::Replace => "replace",
            ChangeAction::Delete => "delete",
            ChangeAction::Unchanged => "unchanged",
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            ChangeAction::Create => "+",
            ChangeAction::Update => "~",
            ChangeAction::Replace => "-/+",
            ChangeAction::Delete => "-",
            ChangeAction::Unchanged => " ",
        }
    }
}

/// One differing field. For set members (rules, associations) only one side is present:
/// desired only = to add, live only = to remove.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    pub field: String,
    pub desired: Option<String>,
    pub live: Option<String>,
}

impl FieldChange {
    pub(super) fn value(field: &str, desired: impl fmt::Display, live: impl fmt::Display) -> Self {
        FieldChange {
            field: field.into(),
            desired: Some(desired.to_string()),
            live: Some(live.to_string()),
        }
    }
    pub(super) fn add(field: &str, desired: impl fmt::Display) -> Self {
        FieldChange {
            field: field.into(),
            desired: Some(desired.to_string()),
            live: None,
        }
    }
    pub(super) fn remove(field: &str, live: impl fmt::Display) -> Self {
        FieldChange {
            field: field.into(),
            desired: None,
            live: Some(live.to_string()),
        }
    }
}

impl fmt::Display for FieldChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.desired, &self.live) {
            (Some(d), Some(l)) => write!(f, "{} {l} → {d}", self.field),
            (Some(d), None) => write!(f, "{} +{d}", self.field),
            (None, Some(l)) => write!(f, "{} -{l}", self.field),
            (None, None) => f.write_str(&self.field),
        }
    }
}

/// The plan for one resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResourceChange {
    /// Stable resource id, e.g. `subnet/public-a`.
    pub resource: String,
    pub action: ChangeAction,
    /// For creates: the key settings, e.g. `10.40.1.0/24 in us-east-1a, public`.
    pub summary: Option<String>,
    /// For replaces: why it cannot be updated in place.
    pub reason: Option<String>,
    pub fields: Vec<FieldChange>,
    /// The AWS ids of the live copies (more than one means duplicates to remove).
    pub live_ids: Vec<String>,
    /// What is worth knowing but is no change, e.g. a newer image matching a pinned lookup.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Set when a rebuild will refuse this change instead of making it (nothing is changed), and
    /// why: e.g. starting a stopped k3s server would move its public address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// The plan of the whole cloud layer of one environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CloudPlan {
    pub env_name: String,
    pub changes: Vec<ResourceChange>,
}

impl CloudPlan {
    /// Whether anything would be created, updated, replaced or deleted.
    pub fn has_changes(&self) -> bool {
        self.changes
            .iter()
            .any(|c| c.action != ChangeAction::Unchanged)
    }

    pub fn count(&self, action: ChangeAction) -> usize {
        self.changes.iter().filter(|c| c.action == action).count()
    }

    pub fn get(&self, resource: &str) -> Option<&ResourceChange> {
        self.changes.iter().find(|c| c.resource == resource)
    }
}

impl fmt::Display for ResourceChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<3} {} {}",
            self.action.symbol(),
            self.action.as_str(),
            self.resource
        )?;
        match self.action {
            ChangeAction::Create => {
                if let Some(s) = &self.summary {
                    write!(f, " ({s})")?;
                }
            }
            ChangeAction::Delete => {
                if !self.live_ids.is_empty() {
                    write!(f, " ({})", self.live_ids.join(", "))?;
                }
            }
            ChangeAction::Update | ChangeAction::Replace => {
                let mut parts: Vec<String> = self.fields.iter().map(ToString::to_string).collect();
                if let Some(r) = &self.reason {
                    if parts.is_empty() {
                        parts.push(r.clone());
                    }
                }
                if !parts.is_empty() {
                    write!(f, ": {}", parts.join(", "))?;
                }
            }
            ChangeAction::Unchanged => {}
        }
        if !self.notes.is_empty() {
            write!(f, " ({})", self.notes.join("; "))?;
        }
        if let Some(r) = &self.refused {
            write!(f, " (refused: {r})")?;
        }
        Ok(())
    }
}

impl fmt::Display for CloudPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.changes {
            writeln!(f, "{}", c.to_string().trim_end())?;
        }
        write!(
            f,
            "cloud: {} to create, {} to update, {} to replace, {} to delete, {} unchanged",
            self.count(ChangeAction::Create),
            self.count(ChangeAction::Update),
            self.count(ChangeAction::Replace),
            self.count(ChangeAction::Delete),
            self.count(ChangeAction::Unchanged),
        )
    }
}

fn summary(d: &DesiredResource, ctx: &CompareCtx) -> Option<String> {
    Some(match &d.spec {
        ResourceSpec::Vpc { cidr } => cidr.clone(),
        ResourceSpec::Subnet { cidr, zone, public } => {
            format!("{cidr} in {zone}{}", if *public { ", public" } else { "" })
        }
        ResourceSpec::InternetGateway => "attached to vpc".into(),
        ResourceSpec::RouteTable { subnets } => {
            format!("0.0.0.0/0 → igw; {}", subnets.join(", "))
        }
        ResourceSpec::SecurityGroup {
            ingress, egress, ..
        } => format!("{} ingress, {} egress rules", ingress.len(), egress.len()),
        ResourceSpec::KeyPair { key_name, .. } => key_name.clone(),
        ResourceSpec::Instance(i) => {
            let image = match &i.image {
                ImageSpec::Id(id) => id.clone(),
                lookup => ctx
                    .images
                    .get(lookup)
                    .map(|r| r.id.clone())
                    .unwrap_or_else(|| lookup.to_string()),
            };
            format!("{} {image} in {}", i.instance_type, i.subnet)
        }
    })
}

/// Deletion order of kinds no longer desired: dependents first.
pub(crate) fn delete_rank(kind: &str) -> u8 {
    match kind {
        "instance" => 0,
        "rtb" => 1,
        "igw" => 2,
        "subnet" => 3,
        "sg" => 4,
        "key" => 5,
        "vpc" => 6,
        _ => 7,
    }
}

/// Compares desired with live. Pure: no I/O. Image lookups are taken from `live.images`
/// (filled by [`plan_live`]); an unresolved lookup is not compared.
pub fn plan(desired: &DesiredCloud, live: &LiveCloud) -> CloudPlan {
    let to_resource = live.aws_to_resource();
    let ctx = CompareCtx {
        to_resource: &to_resource,
        images: &live.images,
        allow_stop_modify_start: desired.allow_stop_modify_start,
    };
    let mut changes = Vec::new();
    for d in &desired.resources {
        let copies = live.get(&d.id);
        let live_ids: Vec<String> = copies.iter().map(|c| c.aws_id.clone()).collect();
        let ranked = rank(d, copies, &ctx);
        let change = match ranked.first() {
            None => ResourceChange {
                resource: d.id.clone(),
                action: ChangeAction::Create,
                summary: summary(d, &ctx),
                reason: None,
                fields: Vec::new(),
                live_ids,
                notes: Vec::new(),
                refused: None,
            },
            Some((_, verdict)) => {
                let mut fields = verdict.fields.clone();
                let mut action = verdict.action;
                if copies.len() > 1 {
                    fields.push(FieldChange::value("copies", 1, copies.len()));
                    if action == ChangeAction::Unchanged {
                        action = ChangeAction::Update;
                    }
                }
                ResourceChange {
                    resource: d.id.clone(),
                    action,
                    summary: None,
                    reason: verdict.reason.clone(),
                    fields,
                    live_ids,
                    notes: verdict.notes.clone(),
                    refused: verdict.refused.clone(),
                }
            }
        };
        changes.push(change);
    }
    let mut deletes: Vec<ResourceChange> = live
        .resources
        .iter()
        .filter(|(id, _)| desired.get(id).is_none())
        .map(|(id, copies)| ResourceChange {
            resource: id.clone(),
            action: ChangeAction::Delete,
            summary: None,
            reason: None,
            fields: Vec::new(),
            live_ids: copies.iter().map(|c| c.aws_id.clone()).collect(),
            notes: Vec::new(),
            refused: None,
        })
        .collect();
    deletes.sort_by_key(|c| {
        let kind = live
            .get(&c.resource)
            .first()
            .map(|l| l.state.kind())
            .unwrap_or("");
        (delete_rank(kind), c.resource.clone())
    });
    changes.extend(deletes);
    CloudPlan {
        env_name: desired.env_name.clone(),
        changes,
    }
}

/// Observes the environment (and resolves image lookups), then plans.
pub async fn plan_live(ec2: &Ec2, desired: &DesiredCloud) -> Result<CloudPlan, AwsError> {
    let mut live = observe(ec2, &desired.env_name).await?;
    for spec in desired.image_lookups() {
        if let ImageSpec::Lookup { .. } = spec {
            let resolved = images::resolve(ec2, &spec).await?;
            live.images.insert(spec, resolved);
        }
    }
    Ok(plan(desired, &live))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::model::*;
    use crate::providers::aws::compare::STOPPED_SERVER_REFUSED;
    use crate::providers::aws::desired::{desired, DesiredInputs};
    use crate::providers::aws::images::ResolvedImage;
    use crate::providers::aws::live::{LiveResource, LiveState};
    use crate::providers::aws::tags::TAG_IMAGE_LOOKUP;
    use std::collections::BTreeMap;

    fn cloud() -> Cloud {
        Cloud {
            provider: "aws".into(),
            region: "us-east-1".into(),
            network: Network {
                cidr: "10.40.0.0/16".parse().expect("cidr"),
                subnets: vec![Subnet {
                    name: "public-a".into(),
                    cidr: "10.40.1.0/24".parse().expect("cidr"),
                    zone: "us-east-1a".into(),
                    public: true,
                    pos: Default::default(),
                }],
            },
            security_groups: vec![SecurityGroup {
                name: "cluster".into(),
                description: "d".into(),
                ingress: vec![Rule {
                    protocol: Protocol::Tcp,
                    ports: Some((443, 443)),
                    peer: Peer::Cidr("0.0.0.0/0".parse().expect("cidr")),
                    description: None,
                }],
                egress: None,
                pos: Default::default(),
            }],
            key_pair: None,
            instances: vec![InstanceGroup {
                name: "server".into(),
                role: Role::Server,
                count: 1,
                instance_type: "t3.medium".into(),
                image: Image::Id("ami-1".into()),
                subnet: "public-a".into(),
                security_groups: vec!["cluster".into()],
                root_volume_gib: None,
                instance_profile: None,
                user_data: None,
                tags: BTreeMap::new(),
                pos: Default::default(),
            }],
            allow_stop_modify_start: false,
        }
    }

    fn live_from(d: &DesiredCloud) -> LiveCloud {
        let mut live = LiveCloud {
            env_name: d.env_name.clone(),
            ..Default::default()
        };
        let mut add = |res: &DesiredResource, aws_id: &str, state: LiveState| {
            live.resources
                .entry(res.id.clone())
                .or_default()
                .push(LiveResource {
                    resource: res.id.clone(),
                    aws_id: aws_id.into(),
                    tags: res.tags.clone(),
                    state,
                });
        };
        for r in &d.resources {
            match &r.spec {
                ResourceSpec::Vpc { cidr } => add(
                    r,
                    "vpc-1",
                    LiveState::Vpc {
                        cidr: cidr.clone(),
                        dns_support: Some(true),
                        dns_hostnames: Some(true),
                    },
                ),
                ResourceSpec::Subnet { cidr, zone, public } => add(
                    r,
                    "subnet-1",
                    LiveState::Subnet {
                        cidr: cidr.clone(),
                        zone: zone.clone(),
                        vpc_id: "vpc-1".into(),
                        map_public_ip: *public,
                    },
                ),
                ResourceSpec::InternetGateway => add(
                    r,
                    "igw-1",
                    LiveState::InternetGateway {
                        attached_vpcs: vec!["vpc-1".into()],
                    },
                ),
                ResourceSpec::RouteTable { .. } => add(
                    r,
                    "rtb-1",
                    LiveState::RouteTable {
                        vpc_id: "vpc-1".into(),
                        routes: vec![crate::providers::aws::live::LiveRoute {
                            destination: "0.0.0.0/0".into(),
                            target: "igw-1".into(),
                        }],
                        associations: vec![crate::providers::aws::live::LiveAssociation {
                            id: "a-1".into(),
                            subnet_id: Some("subnet-1".into()),
                            main: false,
                        }],
                    },
                ),
                ResourceSpec::SecurityGroup {
                    ingress,
                    egress,
                    group_name,
                    ..
                } => add(
                    r,
                    "sg-1",
                    LiveState::SecurityGroup {
                        group_name: group_name.clone(),
                        vpc_id: "vpc-1".into(),
                        ingress: ingress.clone(),
                        egress: egress.clone(),
                        descriptions: Default::default(),
                    },
                ),
                ResourceSpec::KeyPair { key_name, .. } => add(
                    r,
                    key_name,
                    LiveState::KeyPair {
                        key_name: key_name.clone(),
                        key_pair_id: None,
                    },
                ),
                ResourceSpec::Instance(i) => add(
                    r,
                    "i-1",
                    LiveState::Instance {
                        state: "running".into(),
                        instance_type: i.instance_type.clone(),
                        image_id: "ami-1".into(),
                        subnet_id: Some("subnet-1".into()),
                        vpc_id: Some("vpc-1".into()),
                        security_groups: vec!["sg-1".into()],
                        key_name: None,
                        private_ip: None,
                        public_ip: None,
                        launch_time: None,
                        metadata: Some(crate::providers::aws::live::LiveMetadata {
                            http_tokens: Some("required".into()),
                            hop_limit: Some(1),
                            endpoint: Some("enabled".into()),
                        }),
                    },
                ),
            }
        }
        live
    }

    #[test]
    fn empty_live_creates_everything_in_dependency_order() {
        let d = desired(&cloud(), "demo", &DesiredInputs::default());
        let p = plan(&d, &LiveCloud::default());
        let ids: Vec<&str> = p.changes.iter().map(|c| c.resource.as_str()).collect();
        assert_eq!(
            ids,
            [
                "vpc",
                "igw",
                "subnet/public-a",
                "rtb/public",
                "sg/cluster",
                "instance/server/0"
            ]
        );
        assert!(p.changes.iter().all(|c| c.action == ChangeAction::Create));
        assert_eq!(
            p.changes[2].to_string(),
            "+   create subnet/public-a (10.40.1.0/24 in us-east-1a, public)"
        );
    }

    #[test]
    fn matching_live_is_unchanged_and_commit_tag_is_not_a_change() {
        let d = desired(&cloud(), "demo", &DesiredInputs::default());
        let live = live_from(&d);
        let newer = desired(
            &cloud(),
            "demo",
            &DesiredInputs {
                commit: "other".into(),
                ..Default::default()
            },
        );
        let p = plan(&newer, &live);
        assert!(!p.has_changes(), "{p}");
        assert_eq!(p.changes[0].to_string().trim_end(), "    unchanged vpc");
    }

    #[test]
    fn rule_change_updates_and_image_change_replaces() {
        let d = desired(&cloud(), "demo", &DesiredInputs::default());
        let live = live_from(&d);
        let mut c = cloud();
        c.security_groups[0].ingress[0].ports = Some((6443, 6443));
        c.instances[0].image = Image::Id("ami-2".into());
        let p = plan(&desired(&c, "demo", &DesiredInputs::default()), &live);
        let sg = p.get("sg/cluster").expect("sg");
        assert_eq!(
            sg.to_string(),
            "~   update sg/cluster: ingress +tcp/6443 from 0.0.0.0/0, ingress -tcp/443 from 0.0.0.0/0"
        );
        let i = p.get("instance/server/0").expect("instance");
        assert_eq!(i.action, ChangeAction::Replace);
        assert_eq!(
            i.to_string(),
            "-/+ replace instance/server/0: image ami-1 → ami-2"
        );
    }

    /// Issue 14, item 3: a newly published image matching the lookup is "available", not a
    /// replace, for an instance launched from that lookup; `update: latest` takes it; an instance
    /// not launched from this lookup (no tag, or another lookup) is compared as before.
    #[test]
    fn a_newer_image_of_the_same_lookup_is_available_not_a_replace_unless_latest() {
        let lookup = |update| Image::Lookup {
            owner: "amazon".into(),
            name: "al2023-ami-*".into(),
            architecture: "x86_64".into(),
            update,
        };
        let mut c = cloud();
        c.instances[0].image = lookup(ImageUpdate::Pinned);
        let d = desired(&c, "demo", &DesiredInputs::default());
        let mut live = live_from(&d);
        assert_eq!(
            live.get("instance/server/0")[0]
                .tags
                .get(TAG_IMAGE_LOOKUP)
                .map(String::as_str),
            Some("amazon/al2023-ami-* (x86_64)")
        );
        let spec = d.image_lookups().into_iter().next().expect("one lookup");
        live.images.insert(
            spec,
            ResolvedImage {
                id: "ami-2".into(),
                name: Some("al2023-ami-2".into()),
                root_device_name: None,
            },
        );
        let p = plan(&d, &live);
        let i = p.get("instance/server/0").expect("instance");
        assert_eq!(i.action, ChangeAction::Unchanged, "{i}");
        assert!(!p.has_changes(), "{p}");
        assert_eq!(
            i.to_string(),
            "    unchanged instance/server/0 (newer image available: ami-2 (running ami-1; image.update: latest takes it))"
        );

        let mut latest = c.clone();
        latest.instances[0].image = lookup(ImageUpdate::Latest);
        let p = plan(&desired(&latest, "demo", &DesiredInputs::default()), &live);
        let i = p.get("instance/server/0").expect("instance");
        assert_eq!(i.action, ChangeAction::Replace, "{i}");
        assert!(i.to_string().contains("image ami-1 → ami-2"), "{i}");

        // Launched without the lookup tag (by an older phoenix, or from another lookup).
        for copy in live.resources.get_mut("instance/server/0").expect("live") {
            copy.tags.remove(TAG_IMAGE_LOOKUP);
        }
        let p = plan(&d, &live);
        assert_eq!(
            p.get("instance/server/0").expect("instance").action,
            ChangeAction::Replace
        );
    }

    /// Issue 14, item 5: stop/modify/start would move the k3s server's public address out of
    /// its certificate, so allowStopModifyStart applies to other instances only.
    #[test]
    fn allow_stop_modify_start_does_not_change_the_server_in_place() {
        let mut c = cloud();
        c.allow_stop_modify_start = true;
        let mut worker = c.instances[0].clone();
        worker.name = "worker".into();
        worker.role = Role::None;
        c.instances.push(worker);
        let live = live_from(&desired(&c, "demo", &DesiredInputs::default()));
        for g in &mut c.instances {
            g.instance_type = "t3.large".into();
        }
        let p = plan(&desired(&c, "demo", &DesiredInputs::default()), &live);
        assert_eq!(
            p.get("instance/worker/0").expect("worker").action,
            ChangeAction::Update
        );
        let server = p.get("instance/server/0").expect("server");
        assert_eq!(server.action, ChangeAction::Replace, "{server}");
        assert!(
            server
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("new public address")),
            "{server:?}"
        );
    }

    /// Issue 14: IMDSv1 (an instance launched before phoenix required IMDSv2) is an in-place
    /// update; a stopped k3s server reached at its public address is refused (its address would
    /// move), while one reached at its private address, and any other instance, is started.
    #[test]
    fn imdsv1_is_an_update_and_a_stopped_public_server_is_refused() {
        use crate::providers::aws::live::LiveMetadata;
        let inputs = |public| DesiredInputs {
            server_endpoint_public: public,
            ..Default::default()
        };
        let d = desired(&cloud(), "demo", &inputs(true));
        let mut live = live_from(&d);
        let set = |live: &mut LiveCloud, tokens: &str, hops: i32, to: &str| {
            for copy in live.resources.get_mut("instance/server/0").expect("live") {
                if let LiveState::Instance {
                    metadata, state, ..
                } = &mut copy.state
                {
                    *metadata = Some(LiveMetadata {
                        http_tokens: Some(tokens.into()),
                        hop_limit: Some(hops),
                        endpoint: Some("enabled".into()),
                    });
                    *state = to.into();
                }
            }
        };
        set(&mut live, "optional", 2, "running");
        let p = plan(&d, &live);
        let i = p.get("instance/server/0").expect("instance");
        assert_eq!(
            i.to_string(),
            "~   update instance/server/0: metadata-http-tokens optional → required, metadata-hop-limit 2 → 1"
        );
        assert!(i.refused.is_none());

        set(&mut live, "required", 1, "stopped");
        let p = plan(&d, &live);
        let i = p.get("instance/server/0").expect("instance");
        assert_eq!(i.action, ChangeAction::Update);
        assert_eq!(i.refused.as_deref(), Some(STOPPED_SERVER_REFUSED));
        assert!(
            i.to_string()
                .starts_with("~   update instance/server/0: state stopped → running (refused: "),
            "{i}"
        );
        let p = plan(&desired(&cloud(), "demo", &inputs(false)), &live);
        assert!(p.get("instance/server/0").expect("i").refused.is_none());
        let mut worker = cloud();
        worker.instances[0].role = Role::None;
        let p = plan(&desired(&worker, "demo", &inputs(true)), &live);
        assert!(p.get("instance/server/0").expect("i").refused.is_none());
    }

    #[test]
    fn removed_resources_are_deleted_dependents_first() {
        let d = desired(&cloud(), "demo", &DesiredInputs::default());
        let live = live_from(&d);
        let mut c = cloud();
        c.instances.clear();
        c.security_groups.clear();
        let p = plan(&desired(&c, "demo", &DesiredInputs::default()), &live);
        let deletes: Vec<String> = p
            .changes
            .iter()
            .filter(|c| c.action == ChangeAction::Delete)
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            deletes,
            [
                "-   delete instance/server/0 (i-1)",
                "-   delete sg/cluster (sg-1)"
            ]
        );
    }

    #[test]
    fn type_change_is_update_only_with_stop_modify_start() {
        let mut c = cloud();
        c.instances[0].role = Role::None;
        let d = desired(&c, "demo", &DesiredInputs::default());
        let live = live_from(&d);
        c.instances[0].instance_type = "t3.large".into();
        let p = plan(&desired(&c, "demo", &DesiredInputs::default()), &live);
        assert_eq!(
            p.get("instance/server/0").map(|c| c.action),
            Some(ChangeAction::Replace)
        );
        c.allow_stop_modify_start = true;
        let p = plan(&desired(&c, "demo", &DesiredInputs::default()), &live);
        let i = p.get("instance/server/0").expect("instance");
        assert_eq!(
            i.to_string(),
            "~   update instance/server/0: type t3.medium → t3.large"
        );
    }

    #[test]
    fn user_data_change_replaces_by_hash_only() {
        let inputs = |ud: &str| DesiredInputs {
            user_data: BTreeMap::from([("server".to_string(), ud.to_string())]),
            ..Default::default()
        };
        let d = desired(&cloud(), "demo", &inputs("#!/bin/sh\necho secret-token\n"));
        let live = live_from(&d);
        let p = plan(
            &desired(&cloud(), "demo", &inputs("#!/bin/sh\necho other\n")),
            &live,
        );
        let text = p.to_string();
        assert!(
            text.contains("replace instance/server/0: user-data-sha256"),
            "{text}"
        );
        assert!(!text.contains("secret-token"));
        let json = serde_json::to_string(&desired(&cloud(), "demo", &inputs("secret-token")))
            .expect("json");
        assert!(!json.contains("secret-token"));
    }
}
