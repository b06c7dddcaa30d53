//! Cloud drift: the cloud plan (desired vs live) read as divergences. Pure; the same comparison
//! that `phoenix plan` and the converge nodes use, so diff and rebuild never disagree.

use crate::engine::Layer;
use crate::providers::aws::{ChangeAction, CloudPlan, FieldChange, ResourceChange};

use super::model::{DriftEntry, EntryKind, FieldDiff};

/// An instance seen in state `terminated` or `shutting-down` with the ownership tags of a
/// resource Git still wants. `aws::observe` leaves such instances out (they are gone for every
/// purpose but reporting), so the plan shows a create; this lets the report say why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TerminatedInstance {
    /// Resource id, e.g. `instance/server/0`.
    pub resource: String,
    pub instance_id: String,
    /// `terminated` or `shutting-down`.
    pub state: String,
}

/// The cloud drift entries of a plan: create → missing (or stopped, for an instance known to
/// be terminated), delete → extra, a stopped instance → stopped, any other update or replace
/// → changed. Unchanged resources give no entry.
pub fn cloud_entries(plan: &CloudPlan, terminated: &[TerminatedInstance]) -> Vec<DriftEntry> {
    plan.changes
        .iter()
        .filter_map(|change| entry(change, terminated))
        .collect()
}

fn entry(change: &ResourceChange, terminated: &[TerminatedInstance]) -> Option<DriftEntry> {
    let resource = change.resource.as_str();
    let fields = || change.fields.iter().map(field).collect::<Vec<_>>();
    match change.action {
        ChangeAction::Unchanged => None,
        ChangeAction::Create => {
            let gone = terminated.iter().find(|t| t.resource == resource);
            Some(match gone {
                Some(t) => DriftEntry::new(Layer::Cloud, resource, EntryKind::Stopped)
                    .with_fields(vec![FieldDiff::value("state", "running", &*t.state)])
                    .with_detail(format!("instance {} is {}", t.instance_id, t.state)),
                None => {
                    let e = DriftEntry::new(Layer::Cloud, resource, EntryKind::Missing);
                    match &change.summary {
                        Some(s) => e.with_detail(s.clone()),
                        None => e,
                    }
                }
            })
        }
        ChangeAction::Delete => {
            let e = DriftEntry::new(Layer::Cloud, resource, EntryKind::Extra);
            Some(if change.live_ids.is_empty() {
                e
            } else {
                e.with_detail(change.live_ids.join(", "))
            })
        }
        ChangeAction::Update | ChangeAction::Replace => {
            let stopped = change.fields.iter().any(|f| f.field == "state");
            let kind = if stopped {
                EntryKind::Stopped
            } else {
                EntryKind::Changed
            };
            let e = DriftEntry::new(Layer::Cloud, resource, kind).with_fields(fields());
            Some(match (&change.action, &change.reason) {
                (ChangeAction::Replace, Some(r)) => e.with_detail(format!("needs a replace: {r}")),
                (ChangeAction::Replace, None) => e.with_detail("needs a replace"),
                _ => match &change.refused {
                    Some(r) => e.with_detail(format!("a rebuild refuses to fix it: {r}")),
                    None => e,
                },
            })
        }
    }
}

fn field(f: &FieldChange) -> FieldDiff {
    FieldDiff {
        path: f.field.clone(),
        desired: f.desired.clone(),
        live: f.live.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(resource: &str, action: ChangeAction, fields: Vec<FieldChange>) -> ResourceChange {
        ResourceChange {
            resource: resource.into(),
            action,
            summary: None,
            reason: None,
            fields,
            live_ids: vec![],
            notes: vec![],
            refused: None,
        }
    }

    fn fc(field: &str, desired: Option<&str>, live: Option<&str>) -> FieldChange {
        FieldChange {
            field: field.into(),
            desired: desired.map(Into::into),
            live: live.map(Into::into),
        }
    }

    fn plan(changes: Vec<ResourceChange>) -> CloudPlan {
        CloudPlan {
            env_name: "demo".into(),
            changes,
        }
    }

    #[test]
    fn unchanged_gives_nothing() {
        let p = plan(vec![change("vpc", ChangeAction::Unchanged, vec![])]);
        assert!(cloud_entries(&p, &[]).is_empty());
    }

    #[test]
    fn create_is_missing_with_its_summary() {
        let mut c = change("subnet/public-b", ChangeAction::Create, vec![]);
        c.summary = Some("10.40.3.0/24 in us-east-1b, public".into());
        let entries = cloud_entries(&plan(vec![c]), &[]);
        assert_eq!(
            entries,
            vec![
                DriftEntry::new(Layer::Cloud, "subnet/public-b", EntryKind::Missing)
                    .with_detail("10.40.3.0/24 in us-east-1b, public")
            ]
        );
    }

    #[test]
    fn delete_is_extra_with_the_live_ids() {
        let mut c = change("subnet/old", ChangeAction::Delete, vec![]);
        c.live_ids = vec!["subnet-0abc".into()];
        let entries = cloud_entries(&plan(vec![c]), &[]);
        assert_eq!(entries[0].kind, EntryKind::Extra);
        assert_eq!(entries[0].detail.as_deref(), Some("subnet-0abc"));
    }

    #[test]
    fn a_rule_added_by_hand_is_changed_with_the_live_side_only() {
        let c = change(
            "sg/cluster",
            ChangeAction::Update,
            vec![fc("ingress", None, Some("tcp/22 from 0.0.0.0/0"))],
        );
        let entries = cloud_entries(&plan(vec![c]), &[]);
        assert_eq!(entries[0].kind, EntryKind::Changed);
        assert_eq!(
            entries[0].fields,
            vec![FieldDiff::new(
                "ingress",
                None::<String>,
                Some("tcp/22 from 0.0.0.0/0")
            )]
        );
        assert_eq!(entries[0].detail, None);
    }

    #[test]
    fn replace_is_changed_and_says_why() {
        let mut c = change(
            "instance/server/0",
            ChangeAction::Replace,
            vec![fc("image", Some("ami-2"), Some("ami-1"))],
        );
        c.reason = Some("image changed".into());
        let e = &cloud_entries(&plan(vec![c]), &[])[0];
        assert_eq!(e.kind, EntryKind::Changed);
        assert_eq!(e.fields, vec![FieldDiff::value("image", "ami-2", "ami-1")]);
        assert_eq!(e.detail.as_deref(), Some("needs a replace: image changed"));
    }

    #[test]
    fn a_stopped_instance_is_stopped() {
        let c = change(
            "instance/agent/1",
            ChangeAction::Update,
            vec![fc("state", Some("running"), Some("stopped"))],
        );
        let e = &cloud_entries(&plan(vec![c]), &[])[0];
        assert_eq!(e.kind, EntryKind::Stopped);
        assert_eq!(
            e.fields,
            vec![FieldDiff::value("state", "running", "stopped")]
        );
    }

    #[test]
    fn a_terminated_instance_is_stopped_not_merely_missing() {
        let p = plan(vec![
            change("instance/agent/0", ChangeAction::Create, vec![]),
            change("instance/agent/1", ChangeAction::Create, vec![]),
        ]);
        let terminated = [TerminatedInstance {
            resource: "instance/agent/1".into(),
            instance_id: "i-0123".into(),
            state: "terminated".into(),
        }];
        let entries = cloud_entries(&p, &terminated);
        assert_eq!(entries[0].kind, EntryKind::Missing);
        assert_eq!(entries[1].kind, EntryKind::Stopped);
        assert_eq!(
            entries[1].fields,
            vec![FieldDiff::value("state", "running", "terminated")]
        );
        assert_eq!(
            entries[1].detail.as_deref(),
            Some("instance i-0123 is terminated")
        );
    }

    #[test]
    fn order_follows_the_plan() {
        let p = plan(vec![
            change("vpc", ChangeAction::Unchanged, vec![]),
            change(
                "sg/a",
                ChangeAction::Update,
                vec![fc("tag:x", Some("1"), Some("2"))],
            ),
            change("key/k", ChangeAction::Delete, vec![]),
        ]);
        let ids: Vec<_> = cloud_entries(&p, &[])
            .into_iter()
            .map(|e| e.resource)
            .collect();
        assert_eq!(ids, vec!["sg/a", "key/k"]);
    }
}
