//! The comparison of one desired resource with one live copy, one function per kind: what changes
//! in place, what forces a replacement and why, and what converging refuses. Pure; the plan, the
//! drift report and each converge node decide with it.

use std::collections::{BTreeSet, HashMap};

use super::desired::{DesiredResource, ImageSpec, InstanceSpec, ResourceSpec};
use super::images::ResolvedImage;
use super::live::{LiveAssociation, LiveMetadata, LiveResource, LiveRoute, LiveState};
use super::plan::{ChangeAction, FieldChange};
use super::rules::{describe, RuleKey, RulePeer};
use super::tags::{self, TAG_IMAGE_LOOKUP, TAG_PUBLIC_KEY_SHA256, TAG_USER_DATA_SHA256};

/// The instance metadata options every phoenix instance has: IMDSv2 only, one hop (a pod, one
/// hop further than its node, gets no answer), the endpoint on at launch (the k3s install script
/// reads it; turning it off later is left alone).
pub(crate) const IMDS_HTTP_TOKENS: &str = "required";
pub(crate) const IMDS_HOP_LIMIT: i32 = 1;
pub(crate) const IMDS_ENDPOINT: &str = "enabled";

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

    /// A live rule with its group peer named by our resource id (`sg/...`) when it is ours.
    pub(crate) fn map_rule(&self, r: &RuleKey) -> RuleKey {
        match &r.peer {
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
        }
    }

    pub(crate) fn map_rules(&self, rules: &BTreeSet<RuleKey>) -> BTreeSet<RuleKey> {
        rules.iter().map(|r| self.map_rule(r)).collect()
    }
}

/// The decision for one desired resource against one live copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ResourceVerdict {
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
pub(crate) fn compare_resource(
    d: &DesiredResource,
    l: &LiveResource,
    ctx: &CompareCtx,
) -> ResourceVerdict {
    let mut f = Findings::default();
    match (&d.spec, &l.state) {
        (
            ResourceSpec::Vpc { cidr },
            LiveState::Vpc {
                cidr: lc,
                dns_support,
                dns_hostnames,
            },
        ) => vpc(&mut f, cidr, lc, dns_support, dns_hostnames),
        (
            ResourceSpec::Subnet { cidr, zone, public },
            LiveState::Subnet {
                cidr: lc,
                zone: lz,
                vpc_id,
                map_public_ip,
            },
        ) => subnet(
            &mut f,
            ctx,
            (cidr, zone, public),
            (lc, lz, vpc_id, map_public_ip),
        ),
        (ResourceSpec::InternetGateway, LiveState::InternetGateway { attached_vpcs }) => {
            internet_gateway(&mut f, ctx, attached_vpcs)
        }
        (
            ResourceSpec::RouteTable { subnets },
            LiveState::RouteTable {
                vpc_id,
                routes,
                associations,
            },
        ) => route_table(&mut f, ctx, subnets, vpc_id, routes, associations),
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
        ) => security_group(
            &mut f,
            ctx,
            (group_name, ingress, egress),
            (lname, vpc_id, li, le),
        ),
        (
            ResourceSpec::KeyPair {
                key_name,
                public_key_sha256,
                ..
            },
            LiveState::KeyPair {
                key_name: lname, ..
            },
        ) => key_pair(&mut f, l, (key_name, public_key_sha256), lname),
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
        ) => instance(
            &mut f,
            ctx,
            l,
            want,
            LiveInstance {
                state,
                instance_type,
                image_id,
                subnet_id,
                security_groups,
                key_name,
                metadata,
            },
        ),
        (spec, state) => {
            f.replace
                .push(FieldChange::value("kind", spec.kind(), state.kind()));
            f.reason = Some("the live resource is of another kind".into());
        }
    }
    for (k, want, have) in tags::diff(&d.tags, &l.tags) {
        if f.tag_skip.contains(&k.as_str()) {
            continue;
        }
        let field = format!("tag {k}");
        f.update.push(match (want, have) {
            (Some(w), Some(h)) => FieldChange::value(&field, w, h),
            (Some(w), None) => FieldChange::add(&field, w),
            (None, Some(h)) => FieldChange::remove(&field, h),
            (None, None) => continue,
        });
    }
    if !f.replace.is_empty() {
        f.replace.extend(f.update);
        // A replace launches a new instance: nothing is started in place, nothing refused.
        ResourceVerdict {
            action: ChangeAction::Replace,
            reason: f.reason,
            fields: f.replace,
            notes: f.notes,
            refused: None,
        }
    } else if !f.update.is_empty() {
        ResourceVerdict {
            action: ChangeAction::Update,
            reason: None,
            fields: f.update,
            notes: f.notes,
            refused: f.refused,
        }
    } else {
        ResourceVerdict {
            action: ChangeAction::Unchanged,
            reason: None,
            fields: Vec::new(),
            notes: f.notes,
            refused: None,
        }
    }
}

/// What the comparison of one kind found.
#[derive(Default)]
struct Findings {
    /// Fields that change in place.
    update: Vec<FieldChange>,
    /// Fields fixed at creation: any makes the verdict `Replace`.
    replace: Vec<FieldChange>,
    /// Why a replace is needed.
    reason: Option<String>,
    /// Tags compared as fields of their own, not as tags.
    tag_skip: Vec<&'static str>,
    notes: Vec<String>,
    /// Why converging refuses the change.
    refused: Option<String>,
}

/// The live side of an instance, as compared.
struct LiveInstance<'a> {
    state: &'a String,
    instance_type: &'a String,
    image_id: &'a String,
    subnet_id: &'a Option<String>,
    security_groups: &'a Vec<String>,
    key_name: &'a Option<String>,
    metadata: &'a Option<LiveMetadata>,
}

/// A VPC: its CIDR is fixed; DNS support and hostnames are turned on in place.
fn vpc(
    f: &mut Findings,
    cidr: &String,
    lc: &String,
    dns_support: &Option<bool>,
    dns_hostnames: &Option<bool>,
) {
    if cidr != lc {
        f.replace.push(FieldChange::value("cidr", cidr, lc));
        f.reason = Some("a VPC's CIDR block cannot change in place".into());
    }
    if *dns_support != Some(true) {
        f.update.push(FieldChange::value(
            "dns-support",
            true,
            fmt_opt(dns_support),
        ));
    }
    if *dns_hostnames != Some(true) {
        f.update.push(FieldChange::value(
            "dns-hostnames",
            true,
            fmt_opt(dns_hostnames),
        ));
    }
}

/// A subnet: CIDR, zone and VPC are fixed; public address mapping changes in place.
fn subnet(
    f: &mut Findings,
    ctx: &CompareCtx,
    (cidr, zone, public): (&String, &String, &bool),
    (lc, lz, vpc_id, map_public_ip): (&String, &String, &String, &bool),
) {
    if cidr != lc {
        f.replace.push(FieldChange::value("cidr", cidr, lc));
    }
    if zone != lz {
        f.replace.push(FieldChange::value("zone", zone, lz));
    }
    let vpc = ctx.name_of(vpc_id);
    if vpc != "vpc" {
        f.replace.push(FieldChange::value("vpc", "vpc", vpc));
    }
    if !f.replace.is_empty() {
        f.reason = Some("a subnet's CIDR block, zone and VPC cannot change in place".into());
    }
    if public != map_public_ip {
        f.update
            .push(FieldChange::value("map-public-ip", public, map_public_ip));
    }
}

/// The internet gateway: attached to the VPC.
fn internet_gateway(f: &mut Findings, ctx: &CompareCtx, attached_vpcs: &[String]) {
    let attached: Vec<String> = attached_vpcs.iter().map(|v| ctx.name_of(v)).collect();
    if !attached.iter().any(|v| v == "vpc") {
        f.update.push(FieldChange::value(
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

/// The public route table: in the VPC, routing 0.0.0.0/0 to the gateway, associated with phoenix's
/// public subnets.
fn route_table(
    f: &mut Findings,
    ctx: &CompareCtx,
    subnets: &[String],
    vpc_id: &str,
    routes: &[LiveRoute],
    associations: &[LiveAssociation],
) {
    let vpc = ctx.name_of(vpc_id);
    if vpc != "vpc" {
        f.replace.push(FieldChange::value("vpc", "vpc", vpc));
        f.reason = Some("a route table cannot move to another VPC".into());
    }
    let default = routes.iter().find(|r| r.destination == "0.0.0.0/0");
    match default {
        Some(r) if ctx.name_of(&r.target) == "igw" => {}
        Some(r) => f.update.push(FieldChange::value(
            "route 0.0.0.0/0",
            "igw",
            ctx.name_of(&r.target),
        )),
        None => f.update.push(FieldChange::add("route", "0.0.0.0/0 → igw")),
    }
    let live: BTreeSet<String> = associations
        .iter()
        .filter(|a| !a.main)
        .filter_map(|a| a.subnet_id.as_deref())
        .map(|s| ctx.name_of(s))
        .collect();
    for s in subnets {
        if !live.contains(s) {
            f.update.push(FieldChange::add("association", s));
        }
    }
    for s in &live {
        // Only phoenix's own subnets are disassociated; a foreign one is left alone.
        if s.starts_with("subnet/") && !subnets.contains(s) {
            f.update.push(FieldChange::remove("association", s));
        }
    }
}

/// A security group: VPC and name are fixed; rules are authorized and revoked in place.
fn security_group(
    f: &mut Findings,
    ctx: &CompareCtx,
    (group_name, ingress, egress): (&String, &BTreeSet<RuleKey>, &BTreeSet<RuleKey>),
    (lname, vpc_id, li, le): (&String, &String, &BTreeSet<RuleKey>, &BTreeSet<RuleKey>),
) {
    let vpc = ctx.name_of(vpc_id);
    if vpc != "vpc" {
        f.replace.push(FieldChange::value("vpc", "vpc", vpc));
        f.reason = Some("a security group cannot move to another VPC".into());
    }
    if group_name != lname {
        f.replace
            .push(FieldChange::value("group-name", group_name, lname));
        f.reason = Some("a security group cannot be renamed".into());
    }
    for (field, want, have, egress) in [
        ("ingress", ingress, ctx.map_rules(li), false),
        ("egress", egress, ctx.map_rules(le), true),
    ] {
        for r in want.difference(&have) {
            f.update.push(FieldChange::add(field, describe(r, egress)));
        }
        for r in have.difference(want) {
            f.update
                .push(FieldChange::remove(field, describe(r, egress)));
        }
    }
}

/// A key pair: EC2 cannot change its name or key.
fn key_pair(
    f: &mut Findings,
    l: &LiveResource,
    (key_name, public_key_sha256): (&String, &Option<String>),
    lname: &String,
) {
    f.tag_skip.push(TAG_PUBLIC_KEY_SHA256);
    if key_name != lname {
        f.replace
            .push(FieldChange::value("key-name", key_name, lname));
    }
    let live_sha = l.tags.get(TAG_PUBLIC_KEY_SHA256);
    if let Some(sha) = public_key_sha256 {
        if live_sha != Some(sha) {
            f.replace.push(FieldChange::value(
                "public-key-sha256",
                short(sha),
                live_sha
                    .map(|s| short(s))
                    .unwrap_or_else(|| "unknown".into()),
            ));
        }
    }
    if !f.replace.is_empty() {
        f.reason = Some("EC2 cannot change a key pair's key".into());
    }
}

/// An instance: image, subnet, user-data and key are fixed at launch, and the type unless
/// allowStopModifyStart; security groups, metadata options and a stopped state change in place.
fn instance(
    f: &mut Findings,
    ctx: &CompareCtx,
    l: &LiveResource,
    want: &InstanceSpec,
    live: LiveInstance,
) {
    let LiveInstance {
        state,
        instance_type,
        image_id,
        subnet_id,
        security_groups,
        key_name,
        metadata,
    } = live;
    f.tag_skip.push(TAG_USER_DATA_SHA256);
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
                f.notes.push(format!(
                        "newer image available: {image} (running {image_id}; image.update: latest takes it)"
                    ));
            } else {
                f.replace.push(FieldChange::value("image", image, image_id));
            }
        }
    }
    let subnet = subnet_id.as_deref().map(|s| ctx.name_of(s));
    if subnet.as_deref() != Some(want.subnet.as_str()) {
        f.replace.push(FieldChange::value(
            "subnet",
            &want.subnet,
            subnet.unwrap_or_else(|| "none".into()),
        ));
    }
    let live_ud = l.tags.get(TAG_USER_DATA_SHA256);
    if want.late_user_data.is_some() {
        // Rendered from resources that do not exist yet: it cannot match what runs.
        f.replace.push(FieldChange::value(
            "user-data-sha256",
            format!("rendered once {} exists", want.after.join(", ")),
            live_ud.map(|s| short(s)).unwrap_or_else(|| "none".into()),
        ));
    } else if want.user_data_sha256.as_ref() != live_ud {
        f.replace.push(FieldChange::value(
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
    if want.key.is_some() && want_key.is_none() || want.key.is_none() && key_name.is_some() {
        f.replace.push(FieldChange::value(
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
            f.update.push(change);
        } else {
            if ctx.allow_stop_modify_start {
                f.reason = Some("allowStopModifyStart does not apply to the k3s server: a stop and start gives it a new public address, which its certificate does not name; replacing it makes a new cluster".into());
            }
            f.replace.push(change);
        }
    }
    let have: BTreeSet<String> = security_groups.iter().map(|g| ctx.name_of(g)).collect();
    let wanted: BTreeSet<String> = want.security_groups.iter().cloned().collect();
    for g in wanted.difference(&have) {
        f.update.push(FieldChange::add("security-group", g));
    }
    for g in have.difference(&wanted) {
        f.update.push(FieldChange::remove("security-group", g));
    }
    // Instances launched before phoenix required IMDSv2 (or changed by hand) are
    // converged in place (ModifyInstanceMetadataOptions needs no restart). The endpoint
    // itself is not compared: an operator may turn IMDS off after boot
    // (runbooks/user-data-secrets.md), which is stricter still.
    if let Some(m) = metadata {
        let live = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".into());
        if m.http_tokens.as_deref() != Some(IMDS_HTTP_TOKENS) {
            f.update.push(FieldChange::value(
                "metadata-http-tokens",
                IMDS_HTTP_TOKENS,
                live(&m.http_tokens),
            ));
        }
        if m.hop_limit != Some(IMDS_HOP_LIMIT) {
            f.update.push(FieldChange::value(
                "metadata-hop-limit",
                IMDS_HOP_LIMIT,
                m.hop_limit
                    .map(|h| h.to_string())
                    .unwrap_or_else(|| "unknown".into()),
            ));
        }
    }
    if state == "stopped" || state == "stopping" {
        f.update.push(FieldChange::value("state", "running", state));
        if want.stable_public_address {
            f.refused = Some(STOPPED_SERVER_REFUSED.into());
        }
    }
    if !f.replace.is_empty() && f.reason.is_none() {
        f.reason = Some("an instance's image, subnet, user-data, key and (unless allowStopModifyStart) type are fixed at launch".into());
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
) -> Vec<(&'a LiveResource, ResourceVerdict)> {
    let mut ranked: Vec<(&LiveResource, ResourceVerdict)> = copies
        .iter()
        .map(|l| (l, compare_resource(d, l, ctx)))
        .collect();
    ranked.sort_by(|(a, va), (b, vb)| {
        let order = |v: &ResourceVerdict| match v.action {
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
