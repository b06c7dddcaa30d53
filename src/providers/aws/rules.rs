//! Security-group rules as comparable values: one rule = protocol + port range + one peer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use aws_sdk_ec2::types::{IpPermission, IpRange, Ipv6Range, PrefixListId, UserIdGroupPair};
use serde::Serialize;

use crate::env::model::{Peer, Protocol, Rule};

/// Who a rule allows traffic from (ingress) or to (egress).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RulePeer {
    Cidr(String),
    /// A security group: `sg/<name>` for one of this environment, else the raw group id.
    Group(String),
    Ipv6(String),
    PrefixList(String),
}

/// One rule. `from`/`to` are -1 for "all" (protocol -1, or ICMP without type/code).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct RuleKey {
    pub protocol: String,
    pub from: i32,
    pub to: i32,
    pub peer: RulePeer,
}

impl RuleKey {
    pub(crate) fn from_model(rule: &Rule) -> RuleKey {
        let (from, to) = match (&rule.protocol, rule.ports) {
            (Protocol::All, _) => (-1, -1),
            (_, Some((a, b))) => (i32::from(a), i32::from(b)),
            (Protocol::Icmp, None) => (-1, -1),
            (_, None) => (0, 65535),
        };
        let peer = match &rule.peer {
            Peer::Cidr(c) => RulePeer::Cidr(c.to_string()),
            Peer::Group(name) => RulePeer::Group(format!("sg/{name}")),
        };
        RuleKey {
            protocol: rule.protocol.as_aws().to_string(),
            from,
            to,
            peer,
        }
    }

    /// AWS's default egress rule of a new group: everything to 0.0.0.0/0.
    pub(crate) fn allow_all_egress() -> RuleKey {
        RuleKey {
            protocol: "-1".into(),
            from: -1,
            to: -1,
            peer: RulePeer::Cidr("0.0.0.0/0".into()),
        }
    }

    /// Expands the SDK's grouped permissions into single rules; group ids are mapped to
    /// resource ids through `group_ids` (aws id → `sg/<name>`) where known.
    pub(crate) fn from_sdk(
        perms: &[IpPermission],
        group_ids: &HashMap<String, String>,
    ) -> BTreeSet<RuleKey> {
        let mut out = BTreeSet::new();
        for p in perms {
            let protocol = normalize_protocol(p.ip_protocol().unwrap_or("-1"));
            let (from, to) = if protocol == "-1" {
                (-1, -1)
            } else {
                (p.from_port().unwrap_or(-1), p.to_port().unwrap_or(-1))
            };
            let mut push = |peer| {
                out.insert(RuleKey {
                    protocol: protocol.clone(),
                    from,
                    to,
                    peer,
                });
            };
            for r in p.ip_ranges() {
                if let Some(c) = r.cidr_ip() {
                    push(RulePeer::Cidr(c.to_string()));
                }
            }
            for r in p.ipv6_ranges() {
                if let Some(c) = r.cidr_ipv6() {
                    push(RulePeer::Ipv6(c.to_string()));
                }
            }
            for r in p.prefix_list_ids() {
                if let Some(c) = r.prefix_list_id() {
                    push(RulePeer::PrefixList(c.to_string()));
                }
            }
            for g in p.user_id_group_pairs() {
                if let Some(id) = g.group_id() {
                    let peer = group_ids.get(id).cloned().unwrap_or_else(|| id.to_string());
                    push(RulePeer::Group(peer));
                }
            }
        }
        out
    }

    /// The descriptions of the rules in `perms` (raw group ids), by rule.
    pub(crate) fn descriptions_from_sdk(perms: &[IpPermission]) -> BTreeMap<RuleKey, String> {
        let mut out = BTreeMap::new();
        for p in perms {
            let one = IpPermission::builder()
                .set_ip_protocol(p.ip_protocol().map(str::to_string))
                .set_from_port(p.from_port())
                .set_to_port(p.to_port());
            for r in p.ip_ranges() {
                if let (Some(d), Some(_)) = (r.description(), r.cidr_ip()) {
                    let perm = one.clone().ip_ranges(r.clone()).build();
                    out.extend(
                        Self::from_sdk(&[perm], &HashMap::new())
                            .into_iter()
                            .map(|k| (k, d.to_string())),
                    );
                }
            }
            for g in p.user_id_group_pairs() {
                if let (Some(d), Some(_)) = (g.description(), g.group_id()) {
                    let perm = one.clone().user_id_group_pairs(g.clone()).build();
                    out.extend(
                        Self::from_sdk(&[perm], &HashMap::new())
                            .into_iter()
                            .map(|k| (k, d.to_string())),
                    );
                }
            }
        }
        out
    }

    /// The SDK permission for this rule; `sg/<name>` peers are resolved through `aws_ids`.
    /// `None` when a referenced group has no id yet.
    pub(crate) fn to_sdk(
        &self,
        aws_ids: &HashMap<String, String>,
        description: Option<&str>,
    ) -> Option<IpPermission> {
        let mut b = IpPermission::builder().ip_protocol(&self.protocol);
        if self.protocol != "-1" {
            b = b.from_port(self.from).to_port(self.to);
        }
        b = match &self.peer {
            RulePeer::Cidr(c) => b.ip_ranges(
                IpRange::builder()
                    .cidr_ip(c)
                    .set_description(description.map(str::to_string))
                    .build(),
            ),
            RulePeer::Ipv6(c) => b.ipv6_ranges(Ipv6Range::builder().cidr_ipv6(c).build()),
            RulePeer::PrefixList(c) => {
                b.prefix_list_ids(PrefixListId::builder().prefix_list_id(c).build())
            }
            RulePeer::Group(g) => {
                let id = if g.starts_with("sg/") {
                    aws_ids.get(g)?.clone()
                } else {
                    g.clone()
                };
                b.user_id_group_pairs(
                    UserIdGroupPair::builder()
                        .group_id(id)
                        .set_description(description.map(str::to_string))
                        .build(),
                )
            }
        };
        Some(b.build())
    }
}

fn normalize_protocol(p: &str) -> String {
    match p {
        "6" => "tcp".into(),
        "17" => "udp".into(),
        "1" => "icmp".into(),
        "all" => "-1".into(),
        other => other.to_ascii_lowercase(),
    }
}

impl fmt::Display for RuleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = if self.protocol == "-1" {
            "all"
        } else {
            self.protocol.as_str()
        };
        f.write_str(proto)?;
        if self.protocol != "-1" && !(self.from == -1 && self.to == -1) {
            if self.from == self.to {
                write!(f, "/{}", self.from)?;
            } else {
                write!(f, "/{}-{}", self.from, self.to)?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for RulePeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RulePeer::Cidr(c) | RulePeer::Ipv6(c) | RulePeer::PrefixList(c) => f.write_str(c),
            RulePeer::Group(g) => f.write_str(g),
        }
    }
}

/// "tcp/443 from 0.0.0.0/0" (ingress) or "all to 0.0.0.0/0" (egress).
pub(crate) fn describe(rule: &RuleKey, egress: bool) -> String {
    let dir = if egress { "to" } else { "from" };
    format!("{rule} {dir} {}", rule.peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::cidr::Cidr;

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("test cidr")
    }

    #[test]
    fn model_rules_normalize() {
        let r = Rule {
            protocol: Protocol::Tcp,
            ports: Some((443, 443)),
            peer: Peer::Cidr(cidr("0.0.0.0/0")),
            description: None,
        };
        let k = RuleKey::from_model(&r);
        assert_eq!(describe(&k, false), "tcp/443 from 0.0.0.0/0");
        let all = Rule {
            protocol: Protocol::All,
            ports: None,
            peer: Peer::Group("cluster".into()),
            description: None,
        };
        assert_eq!(
            describe(&RuleKey::from_model(&all), true),
            "all to sg/cluster"
        );
        let range = Rule {
            protocol: Protocol::Udp,
            ports: Some((30000, 32767)),
            peer: Peer::Cidr(cidr("10.0.0.0/8")),
            description: None,
        };
        assert_eq!(
            describe(&RuleKey::from_model(&range), false),
            "udp/30000-32767 from 10.0.0.0/8"
        );
    }

    #[test]
    fn sdk_permissions_expand_and_map_groups() {
        let perm = IpPermission::builder()
            .ip_protocol("tcp")
            .from_port(22)
            .to_port(22)
            .ip_ranges(IpRange::builder().cidr_ip("10.0.0.0/8").build())
            .user_id_group_pairs(UserIdGroupPair::builder().group_id("sg-1").build())
            .user_id_group_pairs(UserIdGroupPair::builder().group_id("sg-foreign").build())
            .build();
        let ids = HashMap::from([("sg-1".to_string(), "sg/admin".to_string())]);
        let rules = RuleKey::from_sdk(&[perm], &ids);
        let text: Vec<String> = rules.iter().map(|r| describe(r, false)).collect();
        assert_eq!(
            text,
            [
                "tcp/22 from 10.0.0.0/8",
                "tcp/22 from sg-foreign",
                "tcp/22 from sg/admin"
            ]
        );
    }
}
