//! `spec.dns`: the records in a Route 53 hosted zone that a rebuild points at the environment
//! (the cutover), decoded with their positions, and the checks that need the whole model (the
//! instance groups a record points at exist and have public addresses).
//!
//! ```yaml
//! dns:
//!   zone: demo.example            # the hosted zone's name, or its id (Z0123456789ABCDEFGHIJ)
//!   records:
//!     - { name: www, target: ingress }             # A, TTL 60 by default
//!     - { name: api, type: A, ttl: 30, target: server }
//!     - { name: "@", target: group/edge }          # the zone apex
//! ```

use super::decode::Decoder;
use super::load::named_list;
use super::model::{Cluster, Environment, Role};
use super::yaml::{Node, Pos};
use serde::Serialize;

/// The prefix of the ownership records: `_phoenix-a.www.demo.example` marks
/// `www.demo.example` (type A) as phoenix's. A record name may not start with it.
pub const OWNER_PREFIX: &str = "_phoenix-";

/// TTL when a record does not set one: short, so a cutover reaches resolvers quickly.
pub const DEFAULT_TTL: u32 = 60;

#[derive(Clone, Debug, Serialize)]
pub struct Dns {
    /// The hosted zone: a name (`demo.example`, no trailing dot) or an id (`Z...`).
    pub zone: ZoneRef,
    pub records: Vec<DnsRecord>,
    #[serde(skip)]
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ZoneRef {
    /// Lowercase, without the trailing dot.
    Name(String),
    /// The hosted zone id without `/hostedzone/`.
    Id(String),
}

impl std::fmt::Display for ZoneRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ZoneRef::Name(n) => write!(f, "{n}"),
            ZoneRef::Id(i) => write!(f, "{i}"),
        }
    }
}

/// The record types phoenix writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum RecordType {
    A,
}

impl RecordType {
    pub fn as_str(&self) -> &'static str {
        match self {
            RecordType::A => "A",
        }
    }
}

/// What a record points at: the public IPv4 addresses of instances of the env, read from EC2 when
/// the record is written (so a rebuild in another region points it there).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Target {
    /// Every node of the k3s cluster (server and agent groups): the ingress answers on each.
    Ingress,
    /// The instances of the k3s server group(s).
    Server,
    /// The instances of one instance group.
    Group(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Ingress => write!(f, "ingress"),
            Target::Server => write!(f, "server"),
            Target::Group(g) => write!(f, "group/{g}"),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsRecord {
    /// Relative to the zone (`www`, `api.eu`), or `@` for the zone apex; lowercase.
    pub name: String,
    #[serde(rename = "type")]
    pub record_type: RecordType,
    pub ttl: u32,
    pub target: Target,
    #[serde(skip)]
    pub pos: Pos,
}

impl DnsRecord {
    /// The engine node and drift resource id: `dns/www/A`.
    pub fn resource_id(&self) -> String {
        format!("dns/{}/{}", self.name, self.record_type.as_str())
    }
}

pub(super) fn decode_dns(d: &mut Decoder, n: &Node, p: &str) -> Option<Dns> {
    let o = d.obj(n, p, &["zone", "records"])?;
    let zone_pos = o.get("zone").map(|x| x.pos).unwrap_or(o.pos);
    let zone = d
        .req(
            &o,
            "zone",
            "name the Route 53 hosted zone the records go in, e.g. zone: demo.example (or its id)",
            Decoder::string,
        )
        .and_then(|z| match parse_zone(&z) {
            Ok(z) => Some(z),
            Err(why) => {
                d.error_help(
                    zone_pos,
                    &o.child("zone"),
                    format!("{z:?} is not a hosted zone name or id: {why}"),
                    "write the zone's domain name (demo.example) or its Route 53 id (Z0123456789ABCDEFGHIJ)",
                );
                None
            }
        });
    let records = d
        .req(
            &o,
            "records",
            "list the records to point at the environment, e.g. records: [{ name: www, target: ingress }]",
            |d, n, p| {
                Some(named_list(d, n, p, "DNS record", |d, item, path| {
                    let r = decode_record(d, item, path)?;
                    Some((r.name.clone(), r.pos, r))
                }))
            },
        )
        .unwrap_or_default();
    Some(Dns {
        zone: zone?,
        records,
        pos: o.pos,
    })
}

fn parse_zone(text: &str) -> Result<ZoneRef, String> {
    let text = text.trim_end_matches('.');
    if let Some(id) = text.strip_prefix("/hostedzone/") {
        return parse_zone(id);
    }
    if !text.contains('.') {
        // Route 53's ids are capital letters and digits (Z0123456789ABCDEFGHIJ).
        let ok = text.len() >= 2
            && text
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
        return if ok {
            Ok(ZoneRef::Id(text.to_string()))
        } else {
            Err(
                "a zone name has at least two labels, and a zone id is capital letters and digits"
                    .into(),
            )
        };
    }
    let lower = text.to_ascii_lowercase();
    for label in lower.split('.') {
        check_label(label)?;
    }
    Ok(ZoneRef::Name(lower))
}

fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("it has an empty label".into());
    }
    if label.len() > 63 {
        return Err(format!("the label {label:?} is longer than 63 characters"));
    }
    if !label
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(format!(
            "the label {label:?} has characters other than letters, digits and '-'"
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("the label {label:?} starts or ends with '-'"));
    }
    Ok(())
}

fn check_record_name(name: &str) -> Result<(), String> {
    if name == "@" {
        return Ok(());
    }
    if name.ends_with('.') {
        return Err("it ends with '.' (names are relative to the zone)".into());
    }
    for label in name.split('.') {
        check_label(label)?;
    }
    Ok(())
}

fn decode_record(d: &mut Decoder, n: &Node, p: &str) -> Option<DnsRecord> {
    let o = d.obj(n, p, &["name", "type", "ttl", "target"])?;
    let pos_of = |key: &str| o.get(key).map(|x| x.pos).unwrap_or(o.pos);
    let name = d
        .req(
            &o,
            "name",
            "every DNS record needs a name relative to the zone (www), or @ for the apex",
            Decoder::string,
        )
        .map(|n| n.to_ascii_lowercase())
        .and_then(|name| match check_record_name(&name) {
            _ if name.starts_with(OWNER_PREFIX) => {
                d.error_help(
                    pos_of("name"),
                    &o.child("name"),
                    format!("the record name {name:?} starts with {OWNER_PREFIX}"),
                    "names starting with _phoenix- hold phoenix's ownership records; pick another name",
                );
                None
            }
            Ok(()) => Some(name),
            Err(why) => {
                d.error_help(
                    pos_of("name"),
                    &o.child("name"),
                    format!("{name:?} is not a record name: {why}"),
                    "write the name relative to the zone, e.g. www or api.eu, or @ for the zone apex",
                );
                None
            }
        });
    let record_type = match d.opt(&o, "type", Decoder::string).as_deref() {
        None | Some("A") => Some(RecordType::A),
        Some(other) => {
            d.error_help(
                pos_of("type"),
                &o.child("type"),
                format!("phoenix does not write {other:?} records"),
                "use type A (the default): records point at the instances' public IPv4 addresses; the instances phoenix builds have no IPv6 (AAAA) addresses, and a CNAME cannot name several instances",
            );
            None
        }
    };
    let ttl = match o.get("ttl") {
        None => Some(DEFAULT_TTL),
        Some(node) => d.int(node, &o.child("ttl"), 1, 172_800).map(|t| t as u32),
    };
    let target = d
        .req(
            &o,
            "target",
            "say what the record points at: ingress, server or group/NAME",
            Decoder::string,
        )
        .and_then(|t| match t.as_str() {
            "ingress" => Some(Target::Ingress),
            "server" => Some(Target::Server),
            other => match other.strip_prefix("group/") {
                Some(g) if !g.is_empty() => Some(Target::Group(g.to_string())),
                _ => {
                    d.error_help(
                        pos_of("target"),
                        &o.child("target"),
                        format!("unknown target {other:?}"),
                        "use ingress (every k3s node), server (the k3s server) or group/NAME (an instance group's public addresses)",
                    );
                    None
                }
            },
        });
    Some(DnsRecord {
        name: name?,
        record_type: record_type?,
        ttl: ttl?,
        target: target?,
        pos: pos_of("name"),
    })
}

/// The instance groups a target points at, in the order the env lists them.
pub fn target_groups<'e>(env: &'e Environment, target: &Target) -> Vec<&'e str> {
    let Some(cloud) = &env.cloud else {
        return Vec::new();
    };
    cloud
        .instances
        .iter()
        .filter(|g| match target {
            Target::Ingress => matches!(g.role, Role::Server | Role::Agent),
            Target::Server => g.role == Role::Server,
            Target::Group(name) => g.name == *name,
        })
        .map(|g| g.name.as_str())
        .collect()
}

/// Checks on the whole model: records need instances, the target exists, and every instance it
/// names sits in a public subnet (else it has no public address to point at).
pub(super) fn check(
    env: &Environment,
    spans: &super::spans::Spans,
    mut err: impl FnMut(Pos, &str, String, String),
) {
    let Some(dns) = &env.dns else {
        return;
    };
    let Some(cloud) = &env.cloud else {
        err(
            spans.at("spec.dns"),
            "spec.dns",
            "DNS records point at the env's instances, and it has no spec.cloud".into(),
            "add spec.cloud with the instances the records point at, or remove spec.dns".into(),
        );
        return;
    };
    let k3s = matches!(env.cluster, Some(Cluster::K3s(_)));
    for (i, r) in dns.records.iter().enumerate() {
        let base = spans.item("spec.dns.records", i);
        let field = format!("{base}.target");
        let at = spans.at(&field);
        if let Target::Group(g) = &r.target {
            if !cloud.instances.iter().any(|x| x.name == *g) {
                let names: Vec<&str> = cloud.instances.iter().map(|g| g.name.as_str()).collect();
                err(
                    at,
                    &field,
                    format!(
                        "record {} points at instance group {g:?}, which does not exist",
                        r.name
                    ),
                    super::validate::known_names("instance groups", g, &names),
                );
                continue;
            }
        }
        if r.target == Target::Ingress && !k3s {
            err(
                at,
                &field,
                format!(
                    "record {} points at the ingress, and the env has no k3s cluster",
                    r.name
                ),
                "point it at server or group/NAME, or add spec.cluster (k3s)".into(),
            );
            continue;
        }
        let groups = target_groups(env, &r.target);
        if groups.is_empty() {
            err(
                at,
                &field,
                format!("record {} points at {}, and no instance group has that role", r.name, r.target),
                "add an instance group with role: server (or agent), or point the record at group/NAME".into(),
            );
            continue;
        }
        for g in cloud
            .instances
            .iter()
            .filter(|g| groups.contains(&g.name.as_str()))
        {
            let public = cloud
                .network
                .subnets
                .iter()
                .find(|s| s.name == g.subnet)
                .is_some_and(|s| s.public);
            if !public {
                err(
                    at,
                    &field,
                    format!(
                        "record {} points at group {}, which is in subnet {}: not public, so its instances have no public address",
                        r.name, g.name, g.subnet
                    ),
                    "put the group in a public subnet (public: true), or point the record at another group".into(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::env::diag::expect_errors;
    use crate::env::{load, Diagnostic, MemFiles};

    fn env_with(dns: &str) -> Result<crate::env::Environment, Vec<Diagnostic>> {
        let text = format!(
            r#"apiVersion: phoenix/v1
kind: Environment
metadata: {{ name: t }}
spec:
  cloud:
    region: us-east-1
    network:
      cidr: 10.0.0.0/16
      subnets: [{{ name: a, cidr: 10.0.1.0/24, zone: us-east-1a, public: true }}, {{ name: b, cidr: 10.0.2.0/24, zone: us-east-1a }}]
    instances:
      - {{ name: edge, role: none, count: 2, type: t3.small, image: {{ id: ami-12345678 }}, subnet: a, userData: cloud-init/x.yaml.j2 }}
      - {{ name: back, role: none, count: 1, type: t3.small, image: {{ id: ami-12345678 }}, subnet: b, userData: cloud-init/x.yaml.j2 }}
  dns:
{dns}"#
        );
        let files = MemFiles::default()
            .with("environments/t/environment.yaml", &text)
            .with("templates/cloud-init/x.yaml.j2", "#cloud-config\n");
        load(&files, "t")
    }

    #[test]
    fn records_decode_with_their_defaults() {
        let env = env_with(
            "    zone: Demo.Example.\n    records:\n      - { name: www, target: group/edge }\n      - { name: \"@\", ttl: 300, type: A, target: group/edge }\n",
        )
        .unwrap();
        let dns = env.dns.unwrap();
        assert_eq!(dns.zone, super::ZoneRef::Name("demo.example".into()));
        assert_eq!(dns.records[0].ttl, super::DEFAULT_TTL);
        assert_eq!(dns.records[0].resource_id(), "dns/www/A");
        assert_eq!(dns.records[1].name, "@");
        assert_eq!(dns.records[1].ttl, 300);
        let by_id = env_with("    zone: /hostedzone/Z0ABC123\n    records: []\n").unwrap();
        assert_eq!(
            by_id.dns.unwrap().zone,
            super::ZoneRef::Id("Z0ABC123".into())
        );
    }

    fn errors(dns: &str) -> Vec<(usize, String)> {
        crate::env::diag::errors_of(env_with(dns))
    }

    #[test]
    fn each_decoding_mistake_is_reported_at_its_line() {
        // The dns section starts at line 14; its records at line 16.
        let errs = errors(
            "    zone: nodots\n    records:\n      - { name: www, target: group/edge }\n      - { name: api, type: CNAME, target: group/edge }\n      - { name: _phoenix-a.www, target: group/edge }\n      - { name: www, target: group/edge }\n      - { name: x, target: elsewhere, ttl: 0 }\n      - { name: -bad, target: server }\n",
        );
        expect_errors(
            &errs,
            &[
                (14, "\"nodots\" is not a hosted zone name or id"),
                (17, "phoenix does not write \"CNAME\" records"),
                (18, "starts with _phoenix-"),
                (19, "duplicate DNS record name \"www\""),
                (20, "0 is out of range"),
                (20, "unknown target \"elsewhere\""),
                (21, "starts or ends with '-'"),
            ],
        );
    }

    #[test]
    fn each_target_mistake_is_reported_at_its_line() {
        let errs = errors(
            "    zone: demo.example\n    records:\n      - { name: www, target: group/nope }\n      - { name: db, target: group/back }\n      - { name: in, target: ingress }\n      - { name: api, target: server }\n      - { name: ok, target: group/edge }\n",
        );
        expect_errors(
            &errs,
            &[
                (16, "instance group \"nope\", which does not exist"),
                (17, "in subnet b: not public"),
                (18, "the env has no k3s cluster"),
                (19, "no instance group has that role"),
            ],
        );
    }
}
