//! The cloud plan: desired vs live, per resource, with field-level detail. Pure — the same
//! comparison drives `phoenix plan`, drift, and each node's decision when it converges.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use serde::Serialize;

use super::client::Ec2;
use super::desired::{DesiredCloud, DesiredResource, ImageSpec, ResourceSpec};
use super::error::AwsError;
use super::images::{self, ResolvedImage};
use super::live::{observe, LiveCloud, LiveResource, LiveState};
use super::rules::{describe, RuleKey, RulePeer};
use super::tags::{self, TAG_IMAGE_LOOKUP, TAG_PUBLIC_KEY_SHA256, TAG_USER_DATA_SHA256};

/// The instance metadata options every phoenix instance has: IMDSv2 only, one hop (a pod, one
/// hop further than its node, gets no answer), the endpoint on at launch (the k3s install script
/// reads it; turning it off later is left alone).
pub(crate) const IMDS_HTTP_TOKENS: &str = "required";
pub(crate) const IMDS_HOP_LIMIT: i32 = 1;
pub(crate) const IMDS_ENDPOINT: &str = "enabled";

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
    fn value(field: &str, desired: impl fmt::Display, live: impl fmt::Display) -> Self {
        FieldChange {
            field: field.into(),
            desired: Some(desired.to_string()),
            live: Some(live.to_string()),
        }
    }
    fn add(field: &str, desired: impl fmt::Display) -> Self {
        FieldChange {
            field: field.into(),
            desired: Some(desired.to_string()),
            live: None,
        }
    }
    fn remove(field: &str, live: impl fmt::Display) -> Self {
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

/// What a comparison needs besides the two sides.
pub(crate) struct CompareCtx<'a> {
    /// AWS id → resource id, for references (an instance's subnet, a rule's group).
    pub to_resource: &'a HashMap<String, String>,
    pub images: &'a HashMap<ImageSpec, ResolvedImage>,
    pub allow_stop_modify_start: bool,
}

impl CompareCtx<'_> {
    fn name_of(&self, aws_id: &str) -> String {
        self.to_resource
            .get(aws_id)
            .cloned()
            .unwrap_or_else(|| aws_id.to_string())
    }

    fn map_rules(&self, rules: &BTreeSet<RuleKey>) -> BTreeSet<RuleKey> {
        rules
            .iter()
            .map(|r| match &r.peer {
                RulePeer::Group(id) => RuleKey {
                    peer: RulePeer::Group(
                        self.to_resource
                            .get(id)
                            .filter(|res| res.starts_with("sg/"))
                            .cloned()
                            .unwrap_or_else(|| id.clone()),
                    ),
                    ..r.clone()
                },
                _ => r.clone(),
            })
            .collect()
    }
}

/// The decision for one desired resource against one live copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub action: ChangeAction,
    pub reason: Option<String>,
    pub fields: Vec<FieldChange>,
    pub notes: Vec<String>,
    /// Why converging refuses this copy's change (nothing is changed), if it does.
    pub refused: Option<String>,
}

/// What the plan says of a stopped k3s server reached at its public address; the converge node
/// fails with it (and what to do) instead of starting the server.
pub(crate) const STOPPED_SERVER_REFUSED: &str = "phoenix does not start a stopped k3s server: it would come back with a new public address, which its certificate (SANs written at first boot) does not name and which cluster.endpoint: public makes the API endpoint";

/// Compares one live copy with the desired resource. `Update` lists only fields that can change
/// in place; any `Replace` field makes the verdict `Replace`.
pub(crate) fn compare(d: &DesiredResource, l: &LiveResource, ctx: &CompareCtx) -> Verdict {
    let mut update = Vec::new();
    let mut replace: Vec<FieldChange> = Vec::new();
    let mut reason: Option<String> = None;
    let mut tag_skip: Vec<&str> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut refused: Option<String> = None;
    match (&d.spec, &l.state) {
        (
            ResourceSpec::Vpc { cidr },
            LiveState::Vpc {
                cidr: lc,
                dns_support,
                dns_hostnames,
            },
        ) => {
            if cidr != lc {
                replace.push(FieldChange::value("cidr", cidr, lc));
                reason = Some("a VPC's CIDR block cannot change in place".into());
            }
            if *dns_support != Some(true) {
                update.push(FieldChange::value(
                    "dns-support",
                    true,
                    fmt_opt(dns_support),
                ));
            }
            if *dns_hostnames != Some(true) {
                update.push(FieldChange::value(
                    "dns-hostnames",
                    true,
                    fmt_opt(dns_hostnames),
                ));
            }
        }
        (
            ResourceSpec::Subnet { cidr, zone, public },
            LiveState::Subnet {
                cidr: lc,
                zone: lz,
                vpc_id,
                map_public_ip,
            },
        ) => {
            if cidr != lc {
                replace.push(FieldChange::value("cidr", cidr, lc));
            }
            if zone != lz {
                replace.push(FieldChange::value("zone", zone, lz));
            }
            let vpc = ctx.name_of(vpc_id);
            if vpc != "vpc" {
                replace.push(FieldChange::value("vpc", "vpc", vpc));
            }
            if !replace.is_empty() {
                reason = Some("a subnet's CIDR block, zone and VPC cannot change in place".into());
            }
            if public != map_public_ip {
                update.push(FieldChange::value("map-public-ip", public, map_public_ip));
            }
        }
        (ResourceSpec::InternetGateway, LiveState::InternetGateway { attached_vpcs }) => {
            let attached: Vec<String> = attached_vpcs.iter().map(|v| ctx.name_of(v)).collect();
            if !attached.iter().any(|v| v == "vpc") {
                update.push(FieldChange::value(
                    "attachment",
                    "vpc",
                    if attached.is_empty() {
                        "none".to_string()
                    } else {
                        attached.join(",")
                    },
                ));
            }
        }
        (
            ResourceSpec::RouteTable { subnets },
            LiveState::RouteTable {
                vpc_id,
                routes,
                associations,
            },
        ) => {
            let vpc = ctx.name_of(vpc_id);
            if vpc != "vpc" {
                replace.push(FieldChange::value("vpc", "vpc", vpc));
                reason = Some("a route table cannot move to another VPC".into());
            }
            let default = routes.iter().find(|r| r.destination == "0.0.0.0/0");
            match default {
                Some(r) if ctx.name_of(&r.target) == "igw" => {}
                Some(r) => update.push(FieldChange::value(
                    "route 0.0.0.0/0",
                    "igw",
                    ctx.name_of(&r.target),
                )),
                None => update.push(FieldChange::add("route", "0.0.0.0/0 → igw")),
            }
            let live: BTreeSet<String> = associations
                .iter()
                .filter(|a| !a.main)
                .filter_map(|a| a.subnet_id.as_deref())
                .map(|s| ctx.name_of(s))
                .collect();
            for s in subnets {
                if !live.contains(s) {
                    update.push(FieldChange::add("association", s));
                }
            }
            for s in &live {
                // Only phoenix's own subnets are disassociated; a foreign one is left alone.
                if s.starts_with("subnet/") && !subnets.contains(s) {
                    update.push(FieldChange::remove("association", s));
                }
            }
        }
        (
            ResourceSpec::SecurityGroup {
                ingress,
                egress,
                group_name,
                ..
            },
            LiveState::SecurityGroup {
                ingress: li,
                egress: le,
                vpc_id,
                group_name: lname,
                ..
            },
        ) => {
            let vpc = ctx.name_of(vpc_id);
            if vpc != "vpc" {
                replace.push(FieldChange::value("vpc", "vpc", vpc));
                reason = Some("a security group cannot move to another VPC".into());
            }
            if group_name != lname {
                replace.push(FieldChange::value("group-name", group_name, lname));
                reason = Some("a security group cannot be renamed".into());
            }
            for (field, want, have, egress) in [
                ("ingress", ingress, ctx.map_rules(li), false),
                ("egress", egress, ctx.map_rules(le), true),
            ] {
                for r in want.difference(&have) {
                    update.push(FieldChange::add(field, describe(r, egress)));
                }
                for r in have.difference(want) {
                    update.push(FieldChange::remove(field, describe(r, egress)));
                }
            }
        }
        (
            ResourceSpec::KeyPair {
                key_name,
                public_key_sha256,
                ..
            },
            LiveState::KeyPair {
                key_name: lname, ..
            },
        ) => {
            tag_skip.push(TAG_PUBLIC_KEY_SHA256);
            if key_name != lname {
                replace.push(FieldChange::value("key-name", key_name, lname));
            }
            let live_sha = l.tags.get(TAG_PUBLIC_KEY_SHA256);
            if let Some(sha) = public_key_sha256 {
                if live_sha != Some(sha) {
                    replace.push(FieldChange::value(
                        "public-key-sha256",
                        short(sha),
                        live_sha
                            .map(|s| short(s))
                            .unwrap_or_else(|| "unknown".into()),
                    ));
                }
            }
            if !replace.is_empty() {
                reason = Some("EC2 cannot change a key pair's key".into());
            }
        }
        (
            ResourceSpec::Instance(want),
            LiveState::Instance {
                state,
                instance_type,
                image_id,
                subnet_id,
                security_groups,
                key_name,
                metadata,
                ..
            },
        ) => {
            tag_skip.push(TAG_USER_DATA_SHA256);
            let image = match &want.image {
                ImageSpec::Id(id) => Some(id.clone()),
                lookup => ctx.images.get(lookup).map(|i| i.id.clone()),
            };
            // An instance launched from this same lookup keeps its image unless the env asks
            // for the latest: a newly published image is not a change of Git, and replacing the
            // k3s server for it would be a new, empty cluster.
            let pinned = !want.image_latest
                && want.image.lookup_tag().is_some()
                && want.image.lookup_tag().as_ref() == l.tags.get(TAG_IMAGE_LOOKUP);
            if let Some(image) = image {
                if &image != image_id {
                    if pinned {
                        notes.push(format!(
                            "newer image available: {image} (running {image_id}; image.update: latest takes it)"
                        ));
                    } else {
                        replace.push(FieldChange::value("image", image, image_id));
                    }
                }
            }
            let subnet = subnet_id.as_deref().map(|s| ctx.name_of(s));
            if subnet.as_deref() != Some(want.subnet.as_str()) {
                replace.push(FieldChange::value(
                    "subnet",
                    &want.subnet,
                    subnet.unwrap_or_else(|| "none".into()),
                ));
            }
            let live_ud = l.tags.get(TAG_USER_DATA_SHA256);
            if want.late_user_data.is_some() {
                // Rendered from resources that do not exist yet: it cannot match what runs.
                replace.push(FieldChange::value(
                    "user-data-sha256",
                    format!("rendered once {} exists", want.after.join(", ")),
                    live_ud.map(|s| short(s)).unwrap_or_else(|| "none".into()),
                ));
            } else if want.user_data_sha256.as_ref() != live_ud {
                replace.push(FieldChange::value(
                    "user-data-sha256",
                    want.user_data_sha256
                        .as_deref()
                        .map(short)
                        .unwrap_or_else(|| "none".into()),
                    live_ud.map(|s| short(s)).unwrap_or_else(|| "none".into()),
                ));
            }
            let want_key = want
                .key
                .as_ref()
                .and_then(|k| ctx_key_name(ctx, k, key_name.as_deref()));
            if want.key.is_some() && want_key.is_none() || want.key.is_none() && key_name.is_some()
            {
                replace.push(FieldChange::value(
                    "key",
                    want.key.as_deref().unwrap_or("none"),
                    key_name.as_deref().unwrap_or("none"),
                ));
            }
            if &want.instance_type != instance_type {
                let change = FieldChange::value("type", &want.instance_type, instance_type);
                // Not for the k3s server: a stop gives it a new public address, which its
                // certificate (written at first boot) does not name and clients do not use.
                if ctx.allow_stop_modify_start && want.role != "server" {
                    update.push(change);
                } else {
                    if ctx.allow_stop_modify_start {
                        reason = Some("allowStopModifyStart does not apply to the k3s server: a stop and start gives it a new public address, which its certificate does not name; replacing it makes a new cluster".into());
                    }
                    replace.push(change);
                }
            }
            let have: BTreeSet<String> = security_groups.iter().map(|g| ctx.name_of(g)).collect();
            let wanted: BTreeSet<String> = want.security_groups.iter().cloned().collect();
            for g in wanted.difference(&have) {
                update.push(FieldChange::add("security-group", g));
            }
            for g in have.difference(&wanted) {
                update.push(FieldChange::remove("security-group", g));
            }
            // Instances launched before phoenix required IMDSv2 (or changed by hand) are
            // converged in place (ModifyInstanceMetadataOptions needs no restart). The endpoint
            // itself is not compared: an operator may turn IMDS off after boot
            // (runbooks/user-data-secrets.md), which is stricter still.
            if let Some(m) = metadata {
                let live = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".into());
                if m.http_tokens.as_deref() != Some(IMDS_HTTP_TOKENS) {
                    update.push(FieldChange::value(
                        "metadata-http-tokens",
                        IMDS_HTTP_TOKENS,
                        live(&m.http_tokens),
                    ));
                }
                if m.hop_limit != Some(IMDS_HOP_LIMIT) {
                    update.push(FieldChange::value(
                        "metadata-hop-limit",
                        IMDS_HOP_LIMIT,
                        m.hop_limit
                            .map(|h| h.to_string())
                            .unwrap_or_else(|| "unknown".into()),
                    ));
                }
            }
            if state == "stopped" || state == "stopping" {
                update.push(FieldChange::value("state", "running", state));
                if want.stable_public_address {
                    refused = Some(STOPPED_SERVER_REFUSED.into());
                }
            }
            if !replace.is_empty() && reason.is_none() {
                reason = Some("an instance's image, subnet, user-data, key and (unless allowStopModifyStart) type are fixed at launch".into());
            }
        }
        (spec, state) => {
            replace.push(FieldChange::value("kind", spec.kind(), state.kind()));
            reason = Some("the live resource is of another kind".into());
        }
    }
    for (k, want, have) in tags::diff(&d.tags, &l.tags) {
        if tag_skip.contains(&k.as_str()) {
            continue;
        }
        let field = format!("tag {k}");
        update.push(match (want, have) {
            (Some(w), Some(h)) => FieldChange::value(&field, w, h),
            (Some(w), None) => FieldChange::add(&field, w),
            (None, Some(h)) => FieldChange::remove(&field, h),
            (None, None) => continue,
        });
    }
    if !replace.is_empty() {
        replace.extend(update);
        // A replace launches a new instance: nothing is started in place, nothing refused.
        Verdict {
            action: ChangeAction::Replace,
            reason,
            fields: replace,
            notes,
            refused: None,
        }
    } else if !update.is_empty() {
        Verdict {
            action: ChangeAction::Update,
            reason: None,
            fields: update,
            notes,
            refused,
        }
    } else {
        Verdict {
            action: ChangeAction::Unchanged,
            reason: None,
            fields: Vec::new(),
            notes,
            refused: None,
        }
    }
}

/// The live key name matches the desired key resource when the map knows that key's name.
fn ctx_key_name(ctx: &CompareCtx, key_resource: &str, live: Option<&str>) -> Option<String> {
    let live = live?;
    (ctx.name_of(live) == key_resource).then(|| live.to_string())
}

fn fmt_opt(v: &Option<bool>) -> String {
    v.map(|b| b.to_string()).unwrap_or_else(|| "unknown".into())
}

fn short(sha: &str) -> String {
    sha.chars().take(12).collect()
}

/// Orders live copies of one resource: the one to keep first. Copies that need no replacement
/// come first (unchanged before updated), then instances by launch time, then by AWS id.
pub(crate) fn rank<'a>(
    d: &DesiredResource,
    copies: &'a [LiveResource],
    ctx: &CompareCtx,
) -> Vec<(&'a LiveResource, Verdict)> {
    let mut ranked: Vec<(&LiveResource, Verdict)> =
        copies.iter().map(|l| (l, compare(d, l, ctx))).collect();
    ranked.sort_by(|(a, va), (b, vb)| {
        let order = |v: &Verdict| match v.action {
            ChangeAction::Unchanged => 0,
            ChangeAction::Update => 1,
            _ => 2,
        };
        let launch = |l: &LiveResource| match &l.state {
            LiveState::Instance { launch_time, .. } => launch_time.clone(),
            _ => None,
        };
        (order(va), launch(a), &a.aws_id).cmp(&(order(vb), launch(b), &b.aws_id))
    });
    ranked
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
    use crate::providers::aws::desired::{desired, DesiredInputs};
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
