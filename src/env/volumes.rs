//! `spec.volumes`: decoding each data volume and the checks that need the whole model (the
//! instance it attaches to, one volume per device and mount path, backup regions).

use super::decode::Decoder;
use super::load::{name_field, named_list};
use super::model::*;
use super::yaml::{Node, Pos};
use std::collections::BTreeMap;

/// Device names phoenix attaches data volumes as (EBS recommends /dev/sd[f-p]).
pub const DEVICE_LETTERS: std::ops::RangeInclusive<char> = 'f'..='p';

const KEYS: &[&str] = &[
    "name",
    "size",
    "type",
    "iops",
    "throughput",
    "instance",
    "zone",
    "device",
    "mountPath",
    "filesystem",
    "allowEmpty",
    "backup",
];

pub(super) fn decode_volumes(d: &mut Decoder, n: &Node, p: &str) -> Option<Vec<Volume>> {
    let mut vols = named_list(d, n, p, "volume", |d, item, path| {
        let v = decode_volume(d, item, path)?;
        Some((v.name.clone(), v.pos, v))
    });
    default_devices(&mut vols);
    Some(vols)
}

/// A volume without `device` gets the first of /dev/sdf../dev/sdp that no other volume of its
/// instance names, in the order written: the same commit always gives the same devices.
fn default_devices(vols: &mut [Volume]) {
    for i in 0..vols.len() {
        let Some(a) = vols[i].attachment() else {
            continue;
        };
        if !a.device.is_empty() {
            continue;
        }
        let (group, index) = (a.group.clone(), a.index);
        let used: Vec<String> = vols
            .iter()
            .filter_map(Volume::attachment)
            .filter(|o| o.group == group && o.index == index)
            .map(|o| short_device(&o.device))
            .collect();
        let free = DEVICE_LETTERS
            .map(|c| format!("/dev/sd{c}"))
            .find(|dev| !used.contains(&short_device(dev)));
        if let Placement::Instance(a) = &mut vols[i].placement {
            // With every letter taken the check on the whole model reports the instance as full.
            a.device = free.unwrap_or_else(|| "/dev/sdf".into());
        }
    }
}

/// `/dev/xvdf` and `/dev/sdf` name the same attachment point.
pub fn short_device(dev: &str) -> String {
    let tail = dev.trim_start_matches("/dev/");
    tail.strip_prefix("xvd")
        .or_else(|| tail.strip_prefix("sd"))
        .unwrap_or(tail)
        .to_string()
}

fn valid_device(dev: &str) -> bool {
    let letter = dev
        .strip_prefix("/dev/sd")
        .or_else(|| dev.strip_prefix("/dev/xvd"));
    matches!(letter, Some(l) if l.len() == 1 && DEVICE_LETTERS.contains(&l.chars().next().unwrap_or('a')))
}

fn valid_mount_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("it is not absolute");
    }
    if path == "/" {
        return Err("it is the root filesystem");
    }
    if path.ends_with('/')
        || path
            .split('/')
            .skip(1)
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("it has an empty, '.' or '..' component or a trailing '/'");
    }
    if !path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/-_.".contains(c))
    {
        return Err("it has characters other than letters, digits, '/', '-', '_' and '.'");
    }
    let system = [
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/lib",
        "/proc",
        "/run",
        "/sbin",
        "/sys",
        "/usr",
        "/var/lib/rancher",
    ];
    if system
        .iter()
        .any(|s| path == *s || path.starts_with(&format!("{s}/")))
    {
        return Err("it is a system directory");
    }
    Ok(())
}

fn decode_volume(d: &mut Decoder, n: &Node, p: &str) -> Option<Volume> {
    let o = d.obj(n, p, KEYS)?;
    let name = name_field(d, &o, "volume");
    let pos_of = |key: &str| o.get(key).map(|x| x.pos).unwrap_or(o.pos);
    let volume_type = match d.opt(&o, "type", Decoder::string) {
        None => Some(VolumeType::Gp3),
        Some(t) => match VolumeType::parse(&t) {
            Some(t) => Some(t),
            None => {
                d.error_help(
                    pos_of("type"),
                    &o.child("type"),
                    format!("unknown volume type {t:?}"),
                    "use gp3 (default), gp2, io1, io2, st1 or sc1",
                );
                None
            }
        },
    };
    let size = d.req(
        &o,
        "size",
        "write the size in GiB, e.g. size: 20",
        |d, n, p| d.int(n, p, 1, 65536),
    );
    if let (Some(t), Some(s)) = (volume_type, size) {
        let (lo, hi) = t.size_range();
        if !(lo as i64..=hi as i64).contains(&s) {
            d.error_help(
                pos_of("size"),
                &o.child("size"),
                format!("a {} volume cannot be {s} GiB", t.as_str()),
                format!("{} volumes are {lo} to {hi} GiB", t.as_str()),
            );
        }
    }
    let iops = d.opt(&o, "iops", |d, n, p| d.int(n, p, 1, 256000));
    let throughput = d.opt(&o, "throughput", |d, n, p| d.int(n, p, 1, 4000));
    if let Some(t) = volume_type {
        match (t.iops_range(), iops) {
            (None, Some(_)) => d.error_help(
                pos_of("iops"),
                &o.child("iops"),
                format!("a {} volume takes no iops setting", t.as_str()),
                "remove iops, or use type gp3, io1 or io2 (the types with provisioned IOPS)",
            ),
            (Some((lo, hi)), Some(v)) if !(lo as i64..=hi as i64).contains(&v) => d.error_help(
                pos_of("iops"),
                &o.child("iops"),
                format!("{v} IOPS is out of range for {}", t.as_str()),
                format!("{} volumes take {lo} to {hi} IOPS", t.as_str()),
            ),
            (Some(_), None) if t.needs_iops() => d.error_help(
                o.pos,
                &o.child("iops"),
                format!("a {} volume needs iops", t.as_str()),
                format!("set iops (e.g. iops: 3000): {} has no default", t.as_str()),
            ),
            _ => {}
        }
        match (t.throughput_range(), throughput) {
            (None, Some(_)) => d.error_help(
                pos_of("throughput"),
                &o.child("throughput"),
                format!("a {} volume takes no throughput setting", t.as_str()),
                "remove throughput, or use type gp3 (the only type with provisioned throughput)",
            ),
            (Some((lo, hi)), Some(v)) if !(lo as i64..=hi as i64).contains(&v) => d.error_help(
                pos_of("throughput"),
                &o.child("throughput"),
                format!("{v} MiB/s is out of range for {}", t.as_str()),
                format!("{} volumes take {lo} to {hi} MiB/s", t.as_str()),
            ),
            _ => {}
        }
    }
    // Exactly one of instance (attached by phoenix, mounted by the user-data) and zone (left
    // for the cluster's EBS CSI driver).
    let zone = d.opt(&o, "zone", Decoder::string);
    let instance = match (&zone, o.get("instance")) {
        (Some(_), Some(_)) => {
            d.error_help(
                pos_of("zone"),
                &o.child("zone"),
                "a volume has either instance or zone, not both".to_string(),
                "instance: GROUP/INDEX attaches it to that instance (the zone is the instance's); zone: leaves it unattached for the cluster's EBS CSI driver",
            );
            None
        }
        (Some(_), None) => None,
        (None, _) => d.req(
            &o,
            "instance",
            "name the instance it attaches to as GROUP/INDEX, e.g. instance: server/0 (or give zone: for a volume the cluster's EBS CSI driver attaches)",
            Decoder::string,
        ),
    };
    let instance = instance.and_then(|text| {
        let (group, idx) = match text.split_once('/') {
            None => (text.as_str(), Some(0)),
            Some((g, i)) => (g, i.parse::<u32>().ok()),
        };
        match idx {
            Some(i) if !group.is_empty() => Some((group.to_string(), i)),
            _ => {
                d.error_help(
                    pos_of("instance"),
                    &o.child("instance"),
                    format!("{text:?} does not name an instance"),
                    "write GROUP/INDEX, e.g. instance: server/0 (the first instance of group server)",
                );
                None
            }
        }
    });
    if zone.is_some() {
        // The CSI driver attaches and mounts it: nothing here names a device or a path.
        for key in ["device", "mountPath"] {
            if o.get(key).is_some() {
                d.error_help(
                    pos_of(key),
                    &o.child(key),
                    format!("a volume with a zone takes no {key}"),
                    "the cluster's EBS CSI driver attaches it where its pod runs and mounts it where the pod says; remove it, or use instance: GROUP/INDEX to have phoenix attach and mount it",
                );
            }
        }
    }
    let device = d.opt(&o, "device", Decoder::string);
    if let Some(dev) = &device {
        if !valid_device(dev) {
            d.error_help(
                pos_of("device"),
                &o.child("device"),
                format!("{dev:?} is not a device name for a data volume"),
                "use /dev/sdf to /dev/sdp (or /dev/xvdf to /dev/xvdp); leave it out to get the next free one",
            );
        }
    }
    let mount_path = if zone.is_some() {
        None
    } else {
        d.req(
            &o,
            "mountPath",
            "write where it is mounted, e.g. mountPath: /var/lib/db",
            Decoder::string,
        )
    };
    if let Some(m) = &mount_path {
        if let Err(why) = valid_mount_path(m) {
            d.error_help(
                pos_of("mountPath"),
                &o.child("mountPath"),
                format!("{m:?} cannot be a mount path: {why}"),
                "use an absolute path of its own, e.g. /var/lib/db or /srv/data",
            );
        }
    }
    let filesystem = match d.opt(&o, "filesystem", Decoder::string).as_deref() {
        None | Some("ext4") => Some(Filesystem::Ext4),
        Some("xfs") => Some(Filesystem::Xfs),
        Some(other) => {
            d.error_help(
                pos_of("filesystem"),
                &o.child("filesystem"),
                format!("unknown filesystem {other:?}"),
                "use ext4 (default) or xfs",
            );
            None
        }
    };
    let allow_empty = d.opt(&o, "allowEmpty", Decoder::bool).unwrap_or(false);
    let backup = match o.get("backup") {
        None => Some(None),
        Some(node) => decode_backup(d, node, &o.child("backup")).map(Some),
    };
    let pos = pos_of("name");
    let placement = match zone {
        Some(z) => Placement::Zone(z),
        None => {
            let (group, index) = instance?;
            Placement::Instance(Attachment {
                group,
                index,
                device: device.unwrap_or_default(),
                mount_path: mount_path?,
            })
        }
    };
    Some(Volume {
        name: name?,
        size: size? as u32,
        volume_type: volume_type?,
        iops: iops.map(|v| v as u32),
        throughput: throughput.map(|v| v as u32),
        placement,
        filesystem: filesystem?,
        allow_empty,
        backup: backup?,
        pos,
    })
}

fn decode_backup(d: &mut Decoder, n: &Node, p: &str) -> Option<BackupPolicy> {
    let o = d.obj(n, p, &["every", "keep", "copyTo", "recoveryPointObjective"])?;
    let every = d.opt(&o, "every", Decoder::duration);
    let keep = match o.get("keep") {
        None => Some(7),
        Some(node) => {
            let v = d.int(node, &o.child("keep"), i64::MIN, i64::MAX);
            match v {
                Some(k) if k < 1 => {
                    d.error_help(
                        node.pos,
                        &o.child("keep"),
                        format!("keep: {k} would prune every snapshot"),
                        "keep at least 1 (phoenix never prunes the newest snapshot); the default is 7",
                    );
                    None
                }
                Some(k) if k > 10000 => {
                    d.error_help(
                        node.pos,
                        &o.child("keep"),
                        format!("keep: {k} is more snapshots than EBS allows per region"),
                        "keep at most 10000",
                    );
                    None
                }
                other => other,
            }
        }
    };
    let copy_to: Vec<(Pos, String)> = d
        .opt(&o, "copyTo", |d, n, p| Some(d.strings(n, p)))
        .unwrap_or_default();
    let mut regions: Vec<String> = Vec::new();
    let mut region_pos: Vec<Pos> = Vec::new();
    for (i, (pos, r)) in copy_to.into_iter().enumerate() {
        let field = format!("{}[{i}]", o.child("copyTo"));
        let ok = r.split('-').count() >= 3
            && r.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok {
            d.error_help(
                pos,
                &field,
                format!("{r:?} is not an AWS region name"),
                "write a region like us-west-2 or eu-central-1",
            );
            continue;
        }
        if regions.contains(&r) {
            d.error_help(
                pos,
                &field,
                format!("region {r} is listed twice"),
                "list each region once",
            );
            continue;
        }
        regions.push(r);
        region_pos.push(pos);
    }
    let rpo = d.opt(&o, "recoveryPointObjective", Decoder::duration);
    if let (Some(every), Some(rpo)) = (every, rpo) {
        if every > rpo {
            d.error_help(
                o.get("every").map(|x| x.pos).unwrap_or(o.pos),
                &o.child("every"),
                format!(
                    "a backup every {} cannot meet the recovery point objective of {}",
                    humantime::format_duration(every),
                    humantime::format_duration(rpo)
                ),
                "back up at least as often as recoveryPointObjective (every <= recoveryPointObjective)",
            );
        }
    }
    Some(BackupPolicy {
        every,
        keep: keep? as u32,
        copy_to: regions,
        copy_to_pos: region_pos,
        recovery_point_objective: rpo,
    })
}

/// Checks on the whole model: the instance exists and runs phoenix user-data, one volume per
/// device and per mount path of an instance, backup regions other than the env's own.
pub(super) fn check(
    env: &Environment,
    spans: &super::spans::Spans,
    mut err: impl FnMut(Pos, &str, String, String),
) {
    if env.volumes.is_empty() {
        return;
    }
    let Some(cloud) = &env.cloud else {
        err(
            spans.at("spec.volumes"),
            "spec.volumes",
            "data volumes need spec.cloud instances to attach to".into(),
            "add spec.cloud with the instance group the volumes attach to, or remove spec.volumes"
                .into(),
        );
        return;
    };
    // The PersistentVolumes of a k3s env are applied as the add-on `volumes`.
    if matches!(env.cluster, Some(Cluster::K3s(_))) {
        for (list, key) in [(&env.addons, "spec.addons"), (&env.apps, "spec.apps")] {
            for (i, comp) in list.iter().enumerate() {
                if comp.name == crate::providers::cluster::VOLUMES_COMPONENT {
                    let field = format!("{}.name", spans.item(key, i));
                    err(
                        spans.at(&field),
                        &field,
                        "the component name \"volumes\" is taken by the data volumes' PersistentVolumes".into(),
                        "rename the component: phoenix applies one PersistentVolume per spec.volumes entry as the add-on volumes".into(),
                    );
                }
            }
        }
    }
    let mut devices: BTreeMap<(String, u32, String), &str> = BTreeMap::new();
    let mut mounts: BTreeMap<(String, u32, &str), &str> = BTreeMap::new();
    for (i, v) in env.volumes.iter().enumerate() {
        let base = spans.item("spec.volumes", i);
        let field = |k: &str| format!("{base}.{k}");
        let at = |k: &str| spans.at(&field(k));
        match &v.placement {
            Placement::Zone(zone) => {
                if !super::validate::in_region(zone, &cloud.region) {
                    err(
                        at("zone"),
                        &field("zone"),
                        format!(
                            "volume {} is in zone {zone:?}, which is not in the environment's region {}",
                            v.name, cloud.region
                        ),
                        format!("use a zone of {} such as {}a", cloud.region, cloud.region),
                    );
                }
                if !matches!(env.cluster, Some(Cluster::K3s(_))) {
                    err(
                        at("zone"),
                        &field("zone"),
                        format!(
                            "volume {} is left for a cluster's EBS CSI driver, but the environment builds no cluster",
                            v.name
                        ),
                        "add a k3s cluster (with the EBS CSI driver as an add-on), or attach the volume to an instance with instance: GROUP/INDEX".into(),
                    );
                }
            }
            Placement::Instance(a) => {
                match cloud.instances.iter().find(|g| g.name == a.group) {
                    None => {
                        let names: Vec<&str> = cloud.instances.iter().map(|g| g.name.as_str()).collect();
                        err(
                            at("instance"),
                            &field("instance"),
                            format!("volume {} attaches to instance group {:?}, which does not exist", v.name, a.group),
                            super::validate::known_names("instance groups", &a.group, &names),
                        );
                    }
                    Some(g) if a.index >= g.count => err(
                        at("instance"),
                        &field("instance"),
                        format!(
                            "volume {} attaches to {}/{}, but group {} has {} instance{}",
                            v.name,
                            a.group,
                            a.index,
                            g.name,
                            g.count,
                            if g.count == 1 { "" } else { "s" }
                        ),
                        format!(
                            "use an index below {} (instances are numbered from 0), or raise the group's count",
                            g.count
                        ),
                    ),
                    Some(g) if g.role == Role::None && g.user_data.is_none() => err(
                        at("instance"),
                        &field("instance"),
                        format!(
                            "volume {} attaches to group {}, which has no user-data to mount it",
                            v.name, g.name
                        ),
                        "attach it to a k3s server or agent group (their user-data formats and mounts data volumes), or give the group a userData template that does".into(),
                    ),
                    Some(_) => {}
                }
                let dev_key = (
                    a.group.clone(),
                    a.index,
                    super::volumes::short_device(&a.device),
                );
                if let Some(other) = devices.insert(dev_key, &v.name) {
                    let written = spans.value(&field("device")).is_some();
                    err(
                        at(if written { "device" } else { "name" }),
                        &field("device"),
                        format!(
                            "volumes {other} and {} are both attached to {}/{} as {}",
                            v.name, a.group, a.index, a.device
                        ),
                        "give each volume of an instance its own device (/dev/sdf to /dev/sdp)"
                            .into(),
                    );
                }
                if let Some(other) =
                    mounts.insert((a.group.clone(), a.index, a.mount_path.as_str()), &v.name)
                {
                    err(
                        at("mountPath"),
                        &field("mountPath"),
                        format!(
                            "volumes {other} and {} are both mounted on {} of {}/{}",
                            v.name, a.mount_path, a.group, a.index
                        ),
                        "give each volume of an instance its own mount path".into(),
                    );
                }
            }
        }
        if let Some(b) = &v.backup {
            for (j, r) in b.copy_to.iter().enumerate() {
                if *r == cloud.region {
                    let f = format!("{base}.backup.copyTo");
                    let pos = b
                        .copy_to_pos
                        .get(j)
                        .copied()
                        .unwrap_or_else(|| spans.at(&f));
                    err(
                        pos,
                        &f,
                        format!("backup copy region {r} is the environment's own region"),
                        "snapshots are always kept in the env's region; copyTo lists the other regions to copy them to".into(),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::env::{load, Diagnostic, MemFiles};

    fn env_with(volumes: &str) -> Result<crate::env::Environment, Vec<Diagnostic>> {
        let text = format!(
            r#"apiVersion: phoenix/v1
kind: Environment
metadata: {{ name: t }}
spec:
  cloud:
    region: us-east-1
    network:
      cidr: 10.0.0.0/16
      subnets: [{{ name: a, cidr: 10.0.1.0/24, zone: us-east-1a, public: true }}]
    instances:
      - {{ name: server, role: server, count: 1, type: t3.small, image: {{ id: ami-12345678 }}, subnet: a }}
      - {{ name: plain, role: none, count: 2, type: t3.small, image: {{ id: ami-12345678 }}, subnet: a }}
  volumes:
{volumes}"#
        );
        let files = MemFiles::default()
            .with("environments/t/environment.yaml", &text)
            .with("templates/cloud-init/k3s-server.yaml.j2", "#cloud-config\n");
        load(&files, "t")
    }

    /// (line, message) of each diagnostic: the line is the file's (the volumes start at line 14).
    fn errors(volumes: &str) -> Vec<(usize, String)> {
        crate::env::diag::errors_of(env_with(volumes))
    }

    #[test]
    fn a_volume_decodes_with_its_defaults() {
        let env = env_with(
            "    - { name: db, size: 20, instance: server/0, mountPath: /var/lib/db }\n    - { name: logs, size: 5, instance: server, mountPath: /srv/logs, type: gp2, backup: { keep: 3, copyTo: [us-west-2], every: 1h, recoveryPointObjective: 2h } }\n",
        )
        .unwrap();
        let db = &env.volumes[0];
        assert_eq!(db.attachment().unwrap().device, "/dev/sdf");
        assert_eq!(db.volume_type.as_str(), "gp3");
        assert_eq!(db.filesystem.as_str(), "ext4");
        assert!(!db.allow_empty);
        assert!(db.backup.is_none());
        let logs = &env.volumes[1];
        let a = logs.attachment().unwrap();
        assert_eq!((a.group.as_str(), a.index), ("server", 0));
        assert_eq!(a.device, "/dev/sdg", "the next free device of the instance");
        let b = logs.backup.as_ref().unwrap();
        assert_eq!(b.keep, 3);
        assert_eq!(b.copy_to, ["us-west-2"]);
    }

    #[test]
    fn each_mistake_is_reported_at_its_line() {
        let errs = errors(
            "    - { name: a, size: 20, instance: nope/0, mountPath: /data/a }\n\
             \x20   - { name: b, size: 20, instance: server/1, mountPath: /data/b }\n\
             \x20   - { name: c, size: 20, instance: server/0, mountPath: /data/c, device: /dev/sdh }\n\
             \x20   - { name: d, size: 20, instance: server/0, mountPath: /data/c, device: /dev/xvdh }\n\
             \x20   - { name: e, size: 20, type: gp2, iops: 3000, instance: server/0, mountPath: /data/e }\n\
             \x20   - { name: f, size: 20, instance: server/0, mountPath: /data/f, backup: { keep: 0 } }\n\
             \x20   - { name: g, size: 20, instance: server/0, mountPath: /data/g, backup: { copyTo: [us-west-2, us-east-1] } }\n\
             \x20   - { name: h, size: 20, type: io2, instance: server/0, mountPath: relative }\n\
             \x20   - { name: i, size: 20, instance: plain/0, mountPath: /data/i }\n\
             \x20   - { name: j, size: 20, type: st1, instance: server/0, mountPath: /data/j, backup: { every: 2h, recoveryPointObjective: 1h } }\n",
        );
        let expect = [
            (14, "instance group \"nope\", which does not exist"),
            (15, "group server has 1 instance"),
            (17, "both attached to server/0 as /dev/xvdh"),
            (17, "both mounted on /data/c"),
            (18, "a gp2 volume takes no iops setting"),
            (19, "keep: 0 would prune every snapshot"),
            (20, "us-east-1 is the environment's own region"),
            (21, "a io2 volume needs iops"),
            (21, "\"relative\" cannot be a mount path"),
            (22, "no user-data to mount it"),
            (23, "a st1 volume cannot be 20 GiB"),
            (
                23,
                "a backup every 2h cannot meet the recovery point objective of 1h",
            ),
        ];
        crate::env::diag::expect_errors(&errs, &expect);
    }

    #[test]
    fn a_volume_in_a_zone_is_checked_against_the_region_the_cluster_and_instance_fields() {
        let errs = errors(
            "    - { name: k, size: 20, zone: us-west-2a }\n\
             \x20   - { name: l, size: 20, zone: us-east-1b, instance: server/0 }\n\
             \x20   - { name: m, size: 20, zone: us-east-1a, mountPath: /data/m, device: /dev/sdf }\n",
        );
        let expect = [
            (
                14,
                "zone \"us-west-2a\", which is not in the environment's region us-east-1",
            ),
            (14, "the environment builds no cluster"),
            (15, "either instance or zone, not both"),
            (15, "the environment builds no cluster"),
            (16, "a volume with a zone takes no device"),
            (16, "a volume with a zone takes no mountPath"),
            (16, "the environment builds no cluster"),
        ];
        crate::env::diag::expect_errors(&errs, &expect);
    }
}
