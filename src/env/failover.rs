//! `spec.failover`: where the same environment is rebuilt with `--failover` (its region, a zone
//! for each subnet, and what must differ there), the checks that need the whole model, and the
//! one function that turns the env into its failover form ([`in_failover_region`]).
//!
//! There is no second definition of the env: a failover run reads the same commit and swaps
//! the region, the zones and the few declared differences into `spec.cloud`; everything else
//! (images by lookup, volumes, security groups, the cluster, add-ons, apps) is unchanged.

use super::cidr::Cidr;
use super::decode::{join, Decoder};
use super::model::*;
use super::spans::Spans;
use super::yaml::{Node, Pos};
use std::collections::BTreeMap;

const KEYS: &[&str] = &[
    "region",
    "zones",
    "cidr",
    "subnetCidrs",
    "instanceTypes",
    "images",
];

const FIELD: &str = "spec.failover";

fn region_name_ok(r: &str) -> bool {
    r.split('-').count() >= 3
        && r.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

pub(super) fn decode_failover(d: &mut Decoder, n: &Node, p: &str) -> Option<Failover> {
    let o = d.obj(n, p, KEYS)?;
    let region = d.req(
        &o,
        "region",
        "write the region the env fails over to, e.g. region: us-west-2",
        Decoder::string,
    );
    // A region that is no region name leaves nothing for the checks on the whole model.
    let region = region.filter(|r| {
        let ok = region_name_ok(r);
        if !ok {
            d.error_help(
                o.get("region").map(|x| x.pos).unwrap_or(o.pos),
                &o.child("region"),
                format!("{r:?} is not an AWS region name"),
                "write a region like us-west-2 or eu-central-1",
            );
        }
        ok
    });
    let zones = d.req(
        &o,
        "zones",
        "give each subnet its zone there, e.g. zones: { public-a: us-west-2a }",
        |d, n, p| Some(d.string_map(n, p)),
    );
    let cidr = d.opt(&o, "cidr", super::load::cidr);
    let subnet_cidrs = d
        .opt(&o, "subnetCidrs", |d, n, p| {
            let texts = d.string_map(n, p);
            let mut out = BTreeMap::new();
            for (name, text) in texts {
                let field = join(p, &name);
                match text.parse::<Cidr>() {
                    Ok(c) => {
                        out.insert(name, c);
                    }
                    Err(why) => {
                        let pos = d.spans.at(&field);
                        d.error_help(
                            pos,
                            &field,
                            format!("{text:?} is not a valid CIDR: {why}"),
                            "write an IPv4 network like 10.41.1.0/24",
                        );
                    }
                }
            }
            Some(out)
        })
        .unwrap_or_default();
    let instance_types = d
        .opt(&o, "instanceTypes", |d, n, p| Some(d.string_map(n, p)))
        .unwrap_or_default();
    let images = d
        .opt(&o, "images", |d, n, p| Some(d.string_map(n, p)))
        .unwrap_or_default();
    for (name, id) in &images {
        if !id.starts_with("ami-") {
            let field = join(&o.child("images"), name);
            let pos = d.spans.at(&field);
            d.error_help(
                pos,
                &field,
                format!("{id:?} is not an AMI id"),
                "AMI ids look like ami-0123456789abcdef0 (an id of the failover region)",
            );
        }
    }
    Some(Failover {
        region: region?,
        zones: zones?,
        cidr,
        subnet_cidrs,
        instance_types,
        images,
    })
}

/// Where a key of one of the failover maps was written (the key, else the value, else the map).
fn key_at(spans: &Spans, map: &str, key: &str) -> (Pos, String) {
    let field = join(&join(FIELD, map), key);
    let pos = spans
        .key(&field)
        .or_else(|| spans.value(&field))
        .unwrap_or_else(|| spans.at(&join(FIELD, map)));
    (pos, field)
}

/// Checks on the whole model: a cloud to fail over, a region other than the env's own, a zone of
/// that region for every subnet and only for subnets, groups that exist, an AMI id there for
/// each group launched from an id, address blocks that still fit, and every backed-up volume
/// copied to the failover region (an error: without a copy there, a failover while the primary
/// region is down has nothing to restore the volume from).
pub(super) fn check(
    env: &Environment,
    spans: &Spans,
    mut err: impl FnMut(Pos, &str, String, String),
) {
    let Some(f) = &env.failover else { return };
    let Some(cloud) = &env.cloud else {
        err(
            spans.at(FIELD),
            FIELD,
            "spec.failover needs spec.cloud: only the cloud layer moves to another region".into(),
            "add spec.cloud, or remove spec.failover (an env on an existing cluster has no region to fail over)".into(),
        );
        return;
    };
    let region_field = join(FIELD, "region");
    if f.region == cloud.region {
        err(
            spans.at(&region_field),
            &region_field,
            format!(
                "the failover region {} is the environment's own region",
                f.region
            ),
            "name another region: a failover rebuilds the env where the primary's outage does not reach".into(),
        );
    }
    let subnet_names: Vec<&str> = cloud
        .network
        .subnets
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    for (name, zone) in &f.zones {
        let (pos, field) = key_at(spans, "zones", name);
        if !subnet_names.contains(&name.as_str()) {
            err(
                pos,
                &field,
                format!("failover zone for subnet {name:?}, which does not exist"),
                super::validate::known_names("subnets", name, &subnet_names),
            );
        } else if !super::validate::in_region(zone, &f.region) {
            err(
                spans.at(&field),
                &field,
                format!("zone {zone:?} is not in the failover region {}", f.region),
                format!("use a zone of {} such as {}a", f.region, f.region),
            );
        }
    }
    for s in &cloud.network.subnets {
        if !f.zones.contains_key(&s.name) {
            let field = join(FIELD, "zones");
            err(
                spans.key(&field).unwrap_or_else(|| spans.at(&field)),
                &field,
                format!(
                    "subnet {} has no zone in the failover region {}",
                    s.name, f.region
                ),
                format!(
                    "add {}: {}a (or another zone of {}) under spec.failover.zones",
                    s.name, f.region, f.region
                ),
            );
        }
    }
    for name in f.subnet_cidrs.keys() {
        if !subnet_names.contains(&name.as_str()) {
            let (pos, field) = key_at(spans, "subnetCidrs", name);
            err(
                pos,
                &field,
                format!("failover block for subnet {name:?}, which does not exist"),
                super::validate::known_names("subnets", name, &subnet_names),
            );
        }
    }
    // The blocks as they are in the failover region must still nest and not overlap.
    let vpc = f.cidr.unwrap_or(cloud.network.cidr);
    let mut placed: Vec<(&str, Cidr)> = Vec::new();
    for s in &cloud.network.subnets {
        let block = f.subnet_cidrs.get(&s.name).copied().unwrap_or(s.cidr);
        let written = f.subnet_cidrs.contains_key(&s.name);
        let (pos, field) = if written {
            key_at(spans, "subnetCidrs", &s.name)
        } else {
            let field = join(
                FIELD,
                if f.cidr.is_some() {
                    "cidr"
                } else {
                    "subnetCidrs"
                },
            );
            (spans.at(&field), field)
        };
        if !vpc.contains(&block) {
            err(
                pos,
                &field,
                format!(
                    "in the failover region subnet {} ({block}) is not inside the VPC block {vpc}",
                    s.name
                ),
                format!(
                    "give subnet {} a block inside {vpc} under spec.failover.subnetCidrs",
                    s.name
                ),
            );
        }
        for (other, ob) in &placed {
            if block.overlaps(ob) {
                err(
                    pos,
                    &field,
                    format!(
                        "in the failover region subnet {} ({block}) overlaps subnet {other} ({ob})",
                        s.name
                    ),
                    "subnets of one VPC must not overlap".into(),
                );
            }
        }
        placed.push((s.name.as_str(), block));
    }
    let group_names: Vec<&str> = cloud.instances.iter().map(|g| g.name.as_str()).collect();
    for (map, keys) in [
        ("instanceTypes", f.instance_types.keys().collect::<Vec<_>>()),
        ("images", f.images.keys().collect()),
    ] {
        for name in keys {
            if !group_names.contains(&name.as_str()) {
                let (pos, field) = key_at(spans, map, name);
                err(
                    pos,
                    &field,
                    format!(
                        "failover {map} entry for instance group {name:?}, which does not exist"
                    ),
                    super::validate::known_names("instance groups", name, &group_names),
                );
            }
        }
    }
    for (name, t) in &f.instance_types {
        let ok = t
            .split_once('.')
            .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty())
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
        if !ok {
            let field = join(&join(FIELD, "instanceTypes"), name);
            err(
                spans.at(&field),
                &field,
                format!("{t:?} is not an instance type"),
                "write a type like t3.medium or m7i.large".into(),
            );
        }
    }
    for (i, g) in cloud.instances.iter().enumerate() {
        if let Image::Id(id) = &g.image {
            if !f.images.contains_key(&g.name) {
                let field = format!("{}.image", spans.item("spec.cloud.instances", i));
                err(
                    spans.at(&field),
                    &field,
                    format!(
                        "instance group {} is launched from image {id}, and AMI ids differ per region: the failover region {} needs its own",
                        g.name, f.region
                    ),
                    format!(
                        "add images: {{ {}: ami-... }} (an AMI of {}) under spec.failover, or look the image up by owner and name, which is resolved in each region",
                        g.name, f.region
                    ),
                );
            }
        }
    }
    for (i, v) in env.volumes.iter().enumerate() {
        // A volume left in a zone goes, there, in the zone of the subnet that has its zone here.
        if let Placement::Zone(zone) = &v.placement {
            if !cloud.network.subnets.iter().any(|s| s.zone == *zone) {
                let field = format!("{}.zone", spans.item("spec.volumes", i));
                err(
                    spans.at(&field),
                    &field,
                    format!(
                        "volume {} is in zone {zone}, where no subnet is: its zone in the failover region {} is unknown",
                        v.name, f.region
                    ),
                    "put it in the zone of one of spec.cloud.network's subnets: it then goes in that subnet's failover zone (spec.failover.zones)".to_string(),
                );
            }
        }
        let copied = v
            .backup
            .as_ref()
            .is_some_and(|b| b.copy_to.contains(&f.region));
        if !copied {
            let base = spans.item("spec.volumes", i);
            let field = if v.backup.is_some() {
                format!("{base}.backup.copyTo")
            } else {
                format!("{base}.backup")
            };
            err(
                spans.at(&field),
                &field,
                format!(
                    "volume {} is not copied to the failover region {}: a failover while {} is down would have no snapshot to restore it from",
                    v.name, f.region, cloud.region
                ),
                format!(
                    "add {} to the volume's backup.copyTo (backup: {{ copyTo: [{}] }}), so `phoenix backup` keeps a copy there",
                    f.region, f.region
                ),
            );
        }
    }
}

/// The cloud of `cloud` as it is built in the failover region `f`.
pub fn failover_cloud(cloud: &Cloud, f: &Failover) -> Result<Cloud, String> {
    let mut out = cloud.clone();
    out.region = f.region.clone();
    if let Some(c) = f.cidr {
        out.network.cidr = c;
    }
    for s in &mut out.network.subnets {
        s.zone = f.zones.get(&s.name).cloned().ok_or_else(|| {
            format!(
                "subnet {} has no zone in the failover region {} (spec.failover.zones)",
                s.name, f.region
            )
        })?;
        if let Some(c) = f.subnet_cidrs.get(&s.name) {
            s.cidr = *c;
        }
    }
    for g in &mut out.instances {
        if let Some(t) = f.instance_types.get(&g.name) {
            g.instance_type = t.clone();
        }
        if let Some(id) = f.images.get(&g.name) {
            g.image = Image::Id(id.clone());
        }
    }
    Ok(out)
}

/// The environment as rebuilt in its failover region: the same definition with the region,
/// zones and declared differences of `spec.failover` in `spec.cloud`. Backups taken there
/// (`backup --failover`) are copied back to the primary region in place of the failover region,
/// which is how data written during a failover gets home. The error says why the env cannot
/// fail over (no failover section, no cloud).
pub fn in_failover_region(env: &Environment) -> Result<Environment, String> {
    let Some(f) = &env.failover else {
        return Err(format!(
            "{} declares no failover region (spec.failover)",
            env.name
        ));
    };
    let Some(cloud) = &env.cloud else {
        return Err(format!(
            "{} has no spec.cloud to rebuild in {}",
            env.name, f.region
        ));
    };
    let mut out = env.clone();
    out.cloud = Some(failover_cloud(cloud, f)?);
    for v in &mut out.volumes {
        if let Placement::Zone(zone) = &mut v.placement {
            let there = cloud
                .network
                .subnets
                .iter()
                .find(|s| s.zone == *zone)
                .and_then(|s| f.zones.get(&s.name))
                .ok_or_else(|| {
                    format!(
                        "volume {} is in zone {zone}, where no subnet is: its zone in {} is unknown",
                        v.name, f.region
                    )
                })?;
            *zone = there.clone();
        }
        if let Some(b) = &mut v.backup {
            let mut regions: Vec<String> = Vec::new();
            for r in &b.copy_to {
                let r = if *r == f.region { &cloud.region } else { r };
                if !regions.contains(r) {
                    regions.push(r.clone());
                }
            }
            b.copy_to = regions;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::env::model::Image;
    use crate::env::{load, Diagnostic, Environment, MemFiles};

    fn env_with(failover: &str) -> Result<Environment, Vec<Diagnostic>> {
        let text = format!(
            r#"apiVersion: phoenix/v1
kind: Environment
metadata: {{ name: t }}
spec:
  cloud:
    region: us-east-1
    network:
      cidr: 10.0.0.0/16
      subnets:
        - {{ name: a, cidr: 10.0.1.0/24, zone: us-east-1a, public: true }}
        - {{ name: b, cidr: 10.0.2.0/24, zone: us-east-1b, public: true }}
    instances:
      - {{ name: db, count: 1, type: t3.small, image: {{ id: ami-12345678 }}, subnet: a, userData: d.j2 }}
      - {{ name: web, count: 1, type: t3.small, image: {{ owner: amazon, name: "al2023-*" }}, subnet: b }}
  volumes:
    - {{ name: data, size: 4, instance: db/0, mountPath: /srv/data, backup: {{ copyTo: [us-west-2] }} }}
    - {{ name: logs, size: 4, instance: db/0, mountPath: /srv/logs, backup: {{ copyTo: [eu-west-1, us-west-2] }} }}
  failover:
{failover}"#
        );
        let files = MemFiles::default()
            .with("environments/t/environment.yaml", &text)
            .with("templates/d.j2", "#cloud-config\n");
        load(&files, "t")
    }

    /// (line, "field: message") of each diagnostic; the failover section starts at line 19.
    fn errors(failover: &str) -> Vec<(usize, String)> {
        crate::env::diag::errors_of(env_with(failover))
    }

    #[test]
    fn the_failover_form_has_the_region_zones_and_overrides() {
        let env = env_with(
            "    region: us-west-2\n    zones: { a: us-west-2a, b: us-west-2c }\n    cidr: 10.9.0.0/16\n    subnetCidrs: { a: 10.9.1.0/24, b: 10.9.2.0/24 }\n    instanceTypes: { web: t3a.small }\n    images: { db: ami-87654321 }\n",
        )
        .unwrap();
        let moved = super::in_failover_region(&env).unwrap();
        let cloud = moved.cloud.unwrap();
        assert_eq!(cloud.region, "us-west-2");
        assert_eq!(cloud.network.cidr.to_string(), "10.9.0.0/16");
        let subnets: Vec<(&str, &str, String)> = cloud
            .network
            .subnets
            .iter()
            .map(|s| (s.name.as_str(), s.zone.as_str(), s.cidr.to_string()))
            .collect();
        assert_eq!(
            subnets,
            [
                ("a", "us-west-2a", "10.9.1.0/24".to_string()),
                ("b", "us-west-2c", "10.9.2.0/24".to_string())
            ]
        );
        assert_eq!(cloud.instances[0].instance_type, "t3.small");
        assert_eq!(cloud.instances[1].instance_type, "t3a.small");
        assert!(matches!(&cloud.instances[0].image, Image::Id(id) if id == "ami-87654321"));
        assert!(matches!(&cloud.instances[1].image, Image::Lookup { .. }));
        // Backups taken there go home: the failover region's place in copyTo is the primary's.
        let copy_to: Vec<&Vec<String>> = moved
            .volumes
            .iter()
            .map(|v| &v.backup.as_ref().unwrap().copy_to)
            .collect();
        assert_eq!(
            copy_to,
            [
                &vec!["us-east-1".to_string()],
                &vec!["eu-west-1".to_string(), "us-east-1".to_string()]
            ]
        );
        // The primary definition is untouched, and an env without the section cannot fail over.
        assert_eq!(env.cloud.as_ref().unwrap().region, "us-east-1");
        let mut plain = env.clone();
        plain.failover = None;
        assert!(super::in_failover_region(&plain)
            .unwrap_err()
            .contains("declares no failover region"));
    }

    #[test]
    fn each_mistake_is_reported_at_its_line() {
        let errs = errors(
            "    region: us-east-1\n\
             \x20   zones:\n\
             \x20     a: us-west-2a\n\
             \x20     nope: us-east-1b\n\
             \x20   subnetCidrs: { a: 10.1.0.0/24 }\n\
             \x20   instanceTypes: { dbx: t3.large }\n",
        );
        let expect = [
            (13, "image ami-12345678, and AMI ids differ per region"),
            (
                16,
                "volume data is not copied to the failover region us-east-1",
            ),
            (
                17,
                "volume logs is not copied to the failover region us-east-1",
            ),
            (
                19,
                "the failover region us-east-1 is the environment's own region",
            ),
            (20, "subnet b has no zone in the failover region"),
            (
                21,
                "zone \"us-west-2a\" is not in the failover region us-east-1",
            ),
            (
                22,
                "failover zone for subnet \"nope\", which does not exist",
            ),
            (
                23,
                "subnet a (10.1.0.0/24) is not inside the VPC block 10.0.0.0/16",
            ),
            (24, "instance group \"dbx\", which does not exist"),
        ];
        crate::env::diag::expect_errors(&errs, &expect);
    }

    #[test]
    fn a_bad_region_cidr_or_image_is_a_decode_error() {
        let errs = errors(
            "    region: westcoast\n    zones: { a: us-west-2a, b: us-west-2b }\n    cidr: 10.0.0.0/99\n    images: { db: img-1 }\n",
        );
        for (line, text) in [
            (19, "\"westcoast\" is not an AWS region name"),
            (21, "not a valid CIDR"),
            (22, "\"img-1\" is not an AMI id"),
        ] {
            assert!(
                errs.iter().any(|(l, m)| *l == line && m.contains(text)),
                "no error {text:?} at line {line} in {errs:#?}"
            );
        }
        assert_eq!(errs.len(), 3, "{errs:#?}");
    }

    #[test]
    fn a_volume_left_in_a_zone_moves_to_the_failover_zone_of_its_subnet() {
        let text = |zone: &str| {
            format!(
                "apiVersion: phoenix/v1\nkind: Environment\nmetadata: {{ name: t }}\nspec:\n  cloud:\n    region: us-east-1\n    network: {{ cidr: 10.0.0.0/16, subnets: [{{ name: a, cidr: 10.0.1.0/24, zone: us-east-1a, public: true }}] }}\n    instances: [{{ name: server, role: server, count: 1, type: t3.small, image: {{ id: ami-12345678 }}, subnet: a }}]\n  cluster: {{ distribution: k3s, version: v1.31.4+k3s1, secret: env:X }}\n  volumes: [{{ name: r, size: 2, zone: {zone}, backup: {{ copyTo: [us-west-2] }} }}]\n  failover: {{ region: us-west-2, zones: {{ a: us-west-2b }}, images: {{ server: ami-87654321 }} }}\n"
            )
        };
        let load_with = |zone: &str| {
            let files = MemFiles::default()
                .with("environments/t/environment.yaml", &text(zone))
                .with("templates/cloud-init/k3s-server.yaml.j2", "#cloud-config\n");
            load(&files, "t")
        };
        let env = load_with("us-east-1a").unwrap_or_else(|d| panic!("{d:?}"));
        let moved = super::in_failover_region(&env).unwrap();
        assert!(
            matches!(&moved.volumes[0].placement, crate::env::model::Placement::Zone(z) if z == "us-west-2b"),
            "{:?}",
            moved.volumes[0].placement
        );
        let errs = load_with("us-east-1c").expect_err("no subnet in its zone");
        assert!(
            errs.iter()
                .any(|d| d.field == "spec.volumes[0].zone"
                    && d.message.contains("where no subnet is")),
            "{errs:?}"
        );
    }
}
