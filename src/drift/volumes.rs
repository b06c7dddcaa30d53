//! Data volume drift: a volume missing, detached or of another size or type than Git says, and
//! a newest completed snapshot older than the volume's recovery point objective. Pure.

use std::time::{Duration, SystemTime};

use crate::engine::Layer;
use crate::providers::aws::{ObservedVolume, VolumeSpec};

use super::model::{BackupAge, DriftEntry, EntryKind, FieldDiff};

/// The drift entries of the volumes, and the age of each volume's newest completed snapshot.
pub fn volume_entries(
    specs: &[VolumeSpec],
    observed: &[ObservedVolume],
    now: SystemTime,
) -> (Vec<DriftEntry>, Vec<BackupAge>) {
    let mut entries = Vec::new();
    let mut ages = Vec::new();
    for (spec, seen) in specs.iter().zip(observed) {
        let snapshot = seen.newest_snapshot.as_ref();
        let age = snapshot.map(|s| now.duration_since(s.time).unwrap_or(Duration::ZERO));
        ages.push(BackupAge {
            volume: spec.name.clone(),
            age,
            objective: spec.recovery_point_objective,
            snapshot: snapshot.map(|s| s.id.clone()),
        });
        let entry = |kind| DriftEntry::new(Layer::Cloud, spec.resource.clone(), kind);
        match seen.live.as_slice() {
            [] => entries.push(entry(EntryKind::Missing).with_detail(match snapshot {
                Some(s) => format!(
                    "a rebuild restores it from snapshot {} ({})",
                    s.id,
                    humantime::format_rfc3339_seconds(s.time)
                ),
                None if spec.allow_empty => {
                    "no snapshot: a rebuild creates it empty (allowEmpty)".to_string()
                }
                None => "no snapshot to restore it from: a rebuild fails".to_string(),
            })),
            [v] => {
                let mut fields = Vec::new();
                if let (Some(instance), Some(a)) = (&seen.instance_id, &spec.attach) {
                    let here = v
                        .attachments
                        .iter()
                        .any(|(i, _, s)| i == instance && s == "attached");
                    if !here {
                        let live = match v.attachments.first() {
                            Some((i, d, s)) => format!("{s} to {i} as {d}"),
                            None => "detached".to_string(),
                        };
                        fields.push(FieldDiff::value(
                            "attachment",
                            format!("attached to {} ({instance}) as {}", a.instance, a.device),
                            live,
                        ));
                    }
                }
                if v.size < spec.size {
                    fields.push(FieldDiff::value(
                        "size",
                        spec.size.to_string(),
                        v.size.to_string(),
                    ));
                }
                if spec.attach.is_none() && v.zone != spec.zone {
                    fields.push(FieldDiff::value("zone", &*spec.zone, &*v.zone));
                }
                if v.volume_type != spec.volume_type {
                    fields.push(FieldDiff::value(
                        "type",
                        &*spec.volume_type,
                        &*v.volume_type,
                    ));
                }
                if !fields.is_empty() {
                    let resized = fields.iter().any(|f| f.path != "attachment");
                    let e = entry(EntryKind::Changed).with_fields(fields);
                    entries.push(if resized {
                        e.with_detail(format!(
                            "{}: a rebuild attaches a volume as it is; change its size or type with EC2 ModifyVolume",
                            v.id
                        ))
                    } else {
                        e.with_detail(v.id.clone())
                    });
                }
            }
            many => entries.push(entry(EntryKind::Extra).with_detail(format!(
                "{} volumes hold {}: {}",
                many.len(),
                spec.resource,
                many.iter().map(|v| v.id.as_str()).collect::<Vec<_>>().join(", ")
            ))),
        }
        if let Some(rpo) = spec.recovery_point_objective {
            let stale = match age {
                Some(a) => a > rpo,
                None => true,
            };
            if stale {
                let live = match (age, snapshot) {
                    (Some(a), Some(s)) => format!(
                        "{} ({})",
                        humantime::format_duration(Duration::from_secs(a.as_secs())),
                        s.id
                    ),
                    _ => "no completed snapshot".to_string(),
                };
                entries.push(
                    DriftEntry::new(Layer::Cloud, format!("backup/{}", spec.name), EntryKind::Changed)
                        .with_fields(vec![FieldDiff::value(
                            "age",
                            format!("at most {}", humantime::format_duration(rpo)),
                            live,
                        )])
                        .with_detail(format!(
                            "the newest completed snapshot of {} is older than its recoveryPointObjective: run `phoenix backup {}`",
                            spec.resource, spec.snapshot_env
                        )),
                );
            }
        }
    }
    (entries, ages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::aws::{LiveSnapshot, LiveVolume};
    use std::collections::BTreeMap;

    fn spec() -> VolumeSpec {
        VolumeSpec {
            name: "db".into(),
            resource: "volume/db".into(),
            attach: Some(crate::providers::aws::AttachSpec {
                instance: "instance/server/0".into(),
                device: "/dev/sdf".into(),
            }),
            zone: "us-east-1a".into(),
            size: 20,
            volume_type: "gp3".into(),
            iops: None,
            throughput: None,
            allow_empty: false,
            env: "demo".into(),
            snapshot_env: "demo".into(),
            commit: "c".into(),
            recovery_point_objective: Some(Duration::from_secs(3600)),
            tags: BTreeMap::new(),
        }
    }

    fn volume(attached_to: Option<&str>, size: u32) -> LiveVolume {
        LiveVolume {
            id: "vol-1".into(),
            state: "in-use".into(),
            zone: "us-east-1a".into(),
            size,
            volume_type: "gp3".into(),
            snapshot_id: None,
            attachments: attached_to
                .map(|i| {
                    vec![(
                        i.to_string(),
                        "/dev/sdf".to_string(),
                        "attached".to_string(),
                    )]
                })
                .unwrap_or_default(),
            tags: BTreeMap::new(),
        }
    }

    fn snap(at: SystemTime) -> LiveSnapshot {
        LiveSnapshot {
            id: "snap-1".into(),
            volume: "db".into(),
            source_volume: "vol-1".into(),
            state: "completed".into(),
            progress: "100%".into(),
            time: at,
            size: 20,
            tags: BTreeMap::new(),
        }
    }

    #[test]
    fn in_sync_volume_with_a_fresh_backup_has_no_entry_and_an_age() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let seen = ObservedVolume {
            live: vec![volume(Some("i-1"), 20)],
            instance_id: Some("i-1".into()),
            newest_snapshot: Some(snap(now - Duration::from_secs(600))),
        };
        let (entries, ages) = volume_entries(&[spec()], &[seen], now);
        assert!(entries.is_empty(), "{entries:?}");
        assert_eq!(ages[0].age, Some(Duration::from_secs(600)));
    }

    #[test]
    fn detached_resized_missing_and_stale_are_drift() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100_000);
        let old = Some(snap(now - Duration::from_secs(7200)));
        let detached = ObservedVolume {
            live: vec![volume(None, 10)],
            instance_id: Some("i-1".into()),
            newest_snapshot: old.clone(),
        };
        let (entries, _) = volume_entries(&[spec()], &[detached], now);
        let fields: Vec<&str> = entries[0].fields.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(fields, ["attachment", "size"]);
        assert_eq!(entries[0].fields[0].live.as_deref(), Some("detached"));
        assert_eq!(entries[1].resource, "backup/db", "stale: 2h > 1h");
        let missing = ObservedVolume {
            live: vec![],
            instance_id: Some("i-1".into()),
            newest_snapshot: None,
        };
        let (entries, ages) = volume_entries(&[spec()], &[missing], now);
        assert_eq!(entries[0].kind, EntryKind::Missing);
        assert!(entries[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("a rebuild fails"));
        assert_eq!(
            entries[1].fields[0].live.as_deref(),
            Some("no completed snapshot")
        );
        assert_eq!(ages[0].age, None);
    }
}
