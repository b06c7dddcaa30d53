//! The pure part of the DNS cutover: record names (a copy's under its own), the ownership record
//! next to each managed name and who it says owns the name, the addresses a record should hold
//! (read from the live cloud of the run's own region), and the drift of one record.

use crate::drift::{DriftEntry, EntryKind, FieldDiff};
use crate::engine::Layer;
use crate::env::dns::{target_groups, DnsRecord, OWNER_PREFIX};
use crate::env::Environment;
use crate::providers::aws::{LiveCloud, LiveState};

/// The `heritage` mark every ownership record starts with.
const HERITAGE: &str = "heritage=phoenix";

/// A record set as Route 53 holds it (names lowercase with the trailing dot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveSet {
    pub name: String,
    pub record_type: String,
    pub ttl: Option<i64>,
    /// Sorted; TXT values with their quotes.
    pub values: Vec<String>,
    /// An alias record (no values of its own).
    pub alias: bool,
}

impl LiveSet {
    pub fn describe(&self) -> String {
        if self.alias {
            return format!("{} {} (an alias)", self.name, self.record_type);
        }
        format!(
            "{} {} {} (TTL {})",
            self.name,
            self.record_type,
            self.values.join(","),
            self.ttl
                .map(|t| t.to_string())
                .unwrap_or_else(|| "-".into())
        )
    }
}

/// Where one declared record lives for one deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordName {
    /// `www.demo.example.` (or `drill-1a2b3c.www.demo.example.` for a copy).
    pub fqdn: String,
    /// `_phoenix-a.www.demo.example.`: the TXT record that marks `fqdn` as phoenix's.
    pub owner: String,
}

/// The name `record` has in zone `zone` (lowercase, no trailing dot) for a deployment: the live
/// env writes the declared name; a copy (drill, ephemeral) writes it under its own suffix, so it
/// never touches the live names.
pub fn record_name(zone: &str, record: &DnsRecord, copy_suffix: Option<&str>) -> RecordName {
    let relative = match (record.name.as_str(), copy_suffix) {
        ("@", None) => String::new(),
        ("@", Some(s)) => format!("{s}."),
        (n, None) => format!("{n}."),
        (n, Some(s)) => format!("{s}.{n}."),
    };
    let fqdn = format!("{relative}{zone}.");
    let owner = owner_name(&fqdn, record.record_type.as_str());
    RecordName { fqdn, owner }
}

/// `_phoenix-a.` + the record's name.
pub fn owner_name(fqdn: &str, record_type: &str) -> String {
    format!("{OWNER_PREFIX}{}.{fqdn}", record_type.to_ascii_lowercase())
}

/// The record (name, type) an ownership record's name marks, or `None` if it is not one.
pub fn owned_by_name(owner: &str) -> Option<(String, String)> {
    let rest = owner.strip_prefix(OWNER_PREFIX)?;
    let (kind, fqdn) = rest.split_once('.')?;
    if kind.is_empty() || fqdn.is_empty() {
        return None;
    }
    Some((fqdn.to_string(), kind.to_ascii_uppercase()))
}

/// The TXT value that marks a record as the deployment `env`'s (quoted, as Route 53 wants it).
pub fn owner_value(env: &str, resource: &str, commit: &str) -> String {
    format!("\"{HERITAGE},phoenix:env={env},phoenix:resource={resource},phoenix:commit={commit}\"")
}

/// The env an ownership TXT value names, or `None` if it is not phoenix's mark.
pub fn owner_env(value: &str) -> Option<String> {
    let text = value.trim_matches('"');
    let mut parts = text.split(',');
    if parts.next() != Some(HERITAGE) {
        return None;
    }
    parts
        .find_map(|p| p.strip_prefix("phoenix:env="))
        .filter(|e| !e.is_empty())
        .map(str::to_string)
}

/// Whether phoenix may write a record, from what is live at its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Nothing is there: phoenix may create it (with its ownership record).
    Free,
    /// The ownership record names this deployment.
    Ours,
    /// Someone else's: why, in a sentence.
    Foreign(String),
}

/// Who owns the record at `name`: `record` is the live set of the declared type, `owner` the
/// ownership TXT set, `others` the types of any other record sets at the name.
pub fn claim(
    env: &str,
    name: &RecordName,
    record: Option<&LiveSet>,
    owner: Option<&LiveSet>,
    others: &[String],
) -> Claim {
    if let Some(owner) = owner {
        let envs: Vec<String> = owner.values.iter().filter_map(|v| owner_env(v)).collect();
        if envs.iter().any(|e| e == env) {
            return Claim::Ours;
        }
        return Claim::Foreign(match envs.first() {
            Some(other) => format!(
                "{} is marked as phoenix's for environment {other} ({}), not {env}",
                name.fqdn, name.owner
            ),
            None => format!(
                "{} holds a TXT record that is not phoenix's ownership mark",
                name.owner
            ),
        });
    }
    if let Some(record) = record {
        return Claim::Foreign(format!(
            "{} exists ({}) without phoenix's ownership record {}",
            name.fqdn,
            record.describe(),
            name.owner
        ));
    }
    if others.iter().any(|t| t == "CNAME") {
        return Claim::Foreign(format!(
            "{} is a CNAME record that phoenix does not own",
            name.fqdn
        ));
    }
    Claim::Free
}

/// The public IPv4 addresses `record` should hold: those of the instances of its target in
/// `live` (the deployment's live cloud, in the region the run uses), sorted. An instance that
/// does not exist or has no public address is an error naming it.
pub fn addresses(
    env: &Environment,
    record: &DnsRecord,
    live: &LiveCloud,
) -> Result<Vec<String>, String> {
    let Some(cloud) = &env.cloud else {
        return Err("the environment has no cloud section".into());
    };
    let groups = target_groups(env, &record.target);
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for g in cloud
        .instances
        .iter()
        .filter(|g| groups.contains(&g.name.as_str()))
    {
        for i in 0..g.count {
            let resource = format!("instance/{}/{i}", g.name);
            let pick = live.instance(&resource);
            match pick.map(|r| (&r.aws_id, &r.state)) {
                Some((
                    _,
                    LiveState::Instance {
                        public_ip: Some(ip),
                        ..
                    },
                )) => out.push(ip.clone()),
                Some((id, _)) => problems.push(format!("{resource} ({id}) has no public address")),
                None => problems.push(format!("{resource} does not exist")),
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    if out.is_empty() {
        return Err(format!("{} names no instance", record.target));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The drift of one record: missing, pointing elsewhere (values or TTL), or not phoenix's.
pub fn drift_entry(
    record: &DnsRecord,
    name: &RecordName,
    desired: &Result<Vec<String>, String>,
    live: Option<&LiveSet>,
    claim: &Claim,
) -> Option<DriftEntry> {
    let entry = |kind| DriftEntry::new(Layer::Apps, record.resource_id(), kind);
    if let Claim::Foreign(why) = claim {
        return Some(
            entry(EntryKind::Changed)
                .with_fields(vec![FieldDiff::value(
                    "owner",
                    "phoenix",
                    "not phoenix (no ownership mark for this env)",
                )])
                .with_detail(format!(
                    "{why}: a rebuild stops at this record unless --take-over-dns is passed"
                )),
        );
    }
    let Some(live) = live else {
        return Some(entry(EntryKind::Missing).with_detail(match desired {
            Ok(values) => format!(
                "{} {}: a rebuild creates it pointing at {}",
                name.fqdn,
                record.record_type.as_str(),
                values.join(",")
            ),
            Err(why) => format!(
                "{} {}: and nothing to point it at yet ({why})",
                name.fqdn,
                record.record_type.as_str()
            ),
        }));
    };
    let mut fields = Vec::new();
    match desired {
        Ok(values) => {
            if live.alias || live.values != *values {
                fields.push(FieldDiff::value(
                    "values",
                    values.join(","),
                    if live.alias {
                        "an alias".to_string()
                    } else {
                        live.values.join(",")
                    },
                ));
            }
        }
        Err(why) => {
            return Some(entry(EntryKind::Changed).with_detail(format!(
                "{} points at {}, and the instances it should point at cannot be read: {why}",
                name.fqdn,
                live.values.join(",")
            )))
        }
    }
    if live.ttl != Some(i64::from(record.ttl)) {
        fields.push(FieldDiff::value(
            "ttl",
            record.ttl.to_string(),
            live.ttl
                .map(|t| t.to_string())
                .unwrap_or_else(|| "-".into()),
        ));
    }
    if fields.is_empty() {
        return None;
    }
    Some(
        entry(EntryKind::Changed)
            .with_fields(fields)
            .with_detail(name.fqdn.clone()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::dns::{RecordType, Target};

    fn rec(name: &str) -> DnsRecord {
        DnsRecord {
            name: name.into(),
            record_type: RecordType::A,
            ttl: 60,
            target: Target::Server,
            pos: Default::default(),
        }
    }

    fn set(name: &str, t: &str, values: &[&str]) -> LiveSet {
        LiveSet {
            name: name.into(),
            record_type: t.into(),
            ttl: Some(60),
            values: values.iter().map(|v| v.to_string()).collect(),
            alias: false,
        }
    }

    #[test]
    fn a_copy_writes_under_its_own_names() {
        let live = record_name("demo.example", &rec("www"), None);
        assert_eq!(live.fqdn, "www.demo.example.");
        assert_eq!(live.owner, "_phoenix-a.www.demo.example.");
        let copy = record_name("demo.example", &rec("www"), Some("drill-1a2b3c"));
        assert_eq!(copy.fqdn, "drill-1a2b3c.www.demo.example.");
        assert_eq!(
            record_name("demo.example", &rec("@"), None).fqdn,
            "demo.example."
        );
        assert_eq!(
            record_name("demo.example", &rec("@"), Some("e1")).fqdn,
            "e1.demo.example."
        );
        assert_eq!(
            owned_by_name(&live.owner),
            Some(("www.demo.example.".into(), "A".into()))
        );
        assert_eq!(owned_by_name("www.demo.example."), None);
    }

    #[test]
    fn ownership_is_read_from_the_mark_alone() {
        let name = record_name("demo.example", &rec("www"), None);
        let ours = set(
            &name.owner,
            "TXT",
            &[&owner_value("demo", "dns/www/A", "abc")],
        );
        let theirs = set(
            &name.owner,
            "TXT",
            &[&owner_value("shop", "dns/www/A", "abc")],
        );
        let junk = set(&name.owner, "TXT", &["\"v=spf1 -all\""]);
        let a = set(&name.fqdn, "A", &["192.0.2.1"]);
        assert_eq!(owner_env(&ours.values[0]).as_deref(), Some("demo"));
        assert_eq!(claim("demo", &name, None, None, &[]), Claim::Free);
        assert_eq!(
            claim("demo", &name, Some(&a), Some(&ours), &[]),
            Claim::Ours
        );
        assert_eq!(claim("demo", &name, None, Some(&ours), &[]), Claim::Ours);
        let foreign = |c: Claim| match c {
            Claim::Foreign(why) => why,
            other => panic!("expected a foreign claim, got {other:?}"),
        };
        assert!(foreign(claim("demo", &name, Some(&a), None, &[]))
            .contains("without phoenix's ownership record _phoenix-a.www.demo.example."));
        assert!(foreign(claim("demo", &name, Some(&a), Some(&theirs), &[]))
            .contains("for environment shop"));
        assert!(foreign(claim("demo", &name, None, Some(&junk), &[]))
            .contains("not phoenix's ownership mark"));
        assert!(foreign(claim("demo", &name, None, None, &["CNAME".into()])).contains("CNAME"));
        // A copy does not own the live env's record, nor the other way round.
        assert!(matches!(
            claim("demo-drill-1", &name, Some(&a), Some(&ours), &[]),
            Claim::Foreign(_)
        ));
    }

    #[test]
    fn drift_names_a_record_pointing_elsewhere_missing_or_unowned() {
        let r = rec("www");
        let name = record_name("demo.example", &r, None);
        let want: Result<Vec<String>, String> = Ok(vec!["192.0.2.1".into()]);
        let same = set(&name.fqdn, "A", &["192.0.2.1"]);
        assert_eq!(
            drift_entry(&r, &name, &want, Some(&same), &Claim::Ours),
            None
        );
        let moved = set(&name.fqdn, "A", &["198.51.100.7"]);
        let e = drift_entry(&r, &name, &want, Some(&moved), &Claim::Ours).unwrap();
        assert_eq!(e.kind, EntryKind::Changed);
        assert_eq!(e.resource, "dns/www/A");
        let e = drift_entry(&r, &name, &want, None, &Claim::Free).unwrap();
        assert_eq!(e.kind, EntryKind::Missing);
        let e = drift_entry(
            &r,
            &name,
            &want,
            Some(&same),
            &Claim::Foreign("someone's".into()),
        )
        .unwrap();
        assert!(e.detail.unwrap_or_default().contains("--take-over-dns"));
    }
}
