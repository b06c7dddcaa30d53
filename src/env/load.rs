//! Loading `environments/<name>/environment.yaml` from a commit into the typed model.
//!
//! Decoding collects every problem; [`super::validate`] then checks what needs the whole model
//! (references, overlaps, cycles, files that must exist in the commit).

use super::cidr::Cidr;
use super::decode::{index, join, Decoder, Obj};
use super::diag::Diagnostic;
use super::model::*;
use super::yaml::{self, Kind, Node, Pos};
use std::collections::BTreeMap;
use std::time::Duration;

/// Read access to the files of one commit. Paths are repo-relative with `/`.
pub trait CommitFiles {
    /// The file's text; the error says why it cannot be read (missing, symlink, not UTF-8...).
    fn read_text(&self, path: &str) -> Result<String, String>;
    fn is_file(&self, path: &str) -> bool;
    fn is_dir(&self, path: &str) -> bool;
    /// Every file under `dir`, recursively, sorted.
    fn files_under(&self, dir: &str) -> Result<Vec<String>, String>;
    /// The file's bytes (a packaged chart is binary).
    fn read_bytes(&self, path: &str) -> Result<Vec<u8>, String> {
        self.read_text(path).map(String::into_bytes)
    }
    /// Whether the environment is loaded by `phoenix vendor`, which is what makes repository
    /// charts present: their absence, and a digest not declared yet, are then no problem.
    fn vendoring(&self) -> bool {
        false
    }
}

/// An in-memory commit, for tests and fuzzing.
#[derive(Default, Clone, Debug)]
pub struct MemFiles(pub BTreeMap<String, String>);

impl MemFiles {
    pub fn with(mut self, path: &str, text: &str) -> Self {
        self.0.insert(path.to_string(), text.to_string());
        self
    }
}

impl CommitFiles for MemFiles {
    fn read_text(&self, path: &str) -> Result<String, String> {
        self.0
            .get(path)
            .cloned()
            .ok_or_else(|| format!("{path} does not exist in the commit"))
    }
    fn is_file(&self, path: &str) -> bool {
        self.0.contains_key(path)
    }
    fn is_dir(&self, path: &str) -> bool {
        let prefix = format!("{}/", path.trim_end_matches('/'));
        self.0.keys().any(|k| k.starts_with(&prefix))
    }
    fn files_under(&self, dir: &str) -> Result<Vec<String>, String> {
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        Ok(self
            .0
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect())
    }
}

/// The environments in a commit: every `environments/<name>/environment.yaml`.
pub fn names(files: &dyn CommitFiles) -> Vec<String> {
    files
        .files_under("environments")
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            p.strip_prefix("environments/")?
                .strip_suffix("/environment.yaml")
                .map(str::to_string)
        })
        .collect()
}

/// Environment names are also directory names, tag values and DNS labels.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name: use 1 to 40 lowercase letters, digits and '-', not starting or ending with '-'"
        ))
    }
}

/// Joins a path written in a file to the directory it is relative to, staying inside the commit.
pub fn resolve_path(base_dir: &str, rel: &str) -> Result<String, String> {
    if rel.is_empty() {
        return Err("the path is empty".into());
    }
    if rel.starts_with('/') || rel.contains('\\') || rel.contains('\0') {
        return Err(format!(
            "{rel:?} must be a relative path inside the repository (no leading '/', no '\\')"
        ));
    }
    let mut parts: Vec<&str> = base_dir.split('/').filter(|p| !p.is_empty()).collect();
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!("{rel:?} points outside the repository"));
                }
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(format!("{rel:?} points at the repository root"));
    }
    Ok(parts.join("/"))
}

pub const ENV_KEYS: &[&str] = &["apiVersion", "kind", "metadata", "spec"];

/// Loads and validates one environment. Returns every diagnostic found, sorted.
pub fn load(files: &dyn CommitFiles, name: &str) -> Result<Environment, Vec<Diagnostic>> {
    let dir = format!("environments/{name}");
    let file = format!("{dir}/environment.yaml");
    if let Err(why) = check_name(name) {
        return Err(vec![Diagnostic::new(
            &file,
            Pos { line: 0, col: 0 },
            "",
            why,
        )
        .help(
            "the environment is the name of a directory under environments/",
        )]);
    }
    let text = match files.read_text(&file) {
        Ok(t) => t,
        Err(why) => {
            let mut d = Diagnostic::new(&file, Pos { line: 0, col: 0 }, "", why);
            if !files.is_file(&file) {
                let known = names(files);
                d = d.help(if known.is_empty() {
                    "no environments/<name>/environment.yaml exists in this commit".to_string()
                } else {
                    format!("environments in this commit: {}", known.join(", "))
                });
            }
            return Err(vec![d]);
        }
    };
    let root = match yaml::parse_one(&text) {
        Ok(n) => n,
        Err(e) => {
            let help = yaml_help(&e.message);
            return Err(vec![Diagnostic::new(
                &file,
                e.pos,
                "",
                format!("invalid YAML: {}", e.message),
            )
            .help(help)]);
        }
    };
    let mut d = Decoder::new(&file);
    let env = decode_environment(&mut d, &root, name, &dir, &file);
    let mut diags = d.diags;
    if let Some(env) = &env {
        super::validate::check(env, files, &mut diags);
    }
    super::diag::sort(&mut diags);
    match env {
        Some(env) if diags.is_empty() => Ok(env),
        _ => {
            if diags.is_empty() {
                diags.push(
                    Diagnostic::new(&file, root.pos, "", "the environment is invalid")
                        .help("see docs/environment.md for the schema"),
                );
            }
            Err(diags)
        }
    }
}

/// What to do about a YAML syntax error, by the kind of error the parser reported.
fn yaml_help(message: &str) -> String {
    let m = message.to_ascii_lowercase();
    let text = if m.contains("alias") && m.contains("nodes") {
        "an anchor may be reused, but the document must stay under the node limit; write the values out or use fewer aliases"
    } else if m.contains("through aliases") {
        "an alias copies its anchor's whole subtree; nest aliases less deeply"
    } else if m.contains("nesting") {
        "environment files need only a few levels; flatten the structure"
    } else if m.contains("nodes") {
        "split the values into fewer entries; an environment file is far smaller than this"
    } else if m.contains("several") {
        "keep one document in environment.yaml: remove the --- separators"
    } else if m.contains("tab") {
        "indent with spaces; YAML does not allow tabs for indentation"
    } else if m.contains("anchor") {
        "define the anchor (&name) before any alias (*name) that uses it"
    } else {
        "fix the YAML syntax at this position: check indentation, quotes and brackets"
    };
    text.to_string()
}

fn decode_environment(
    d: &mut Decoder,
    root: &Node,
    name: &str,
    dir: &str,
    file: &str,
) -> Option<Environment> {
    if root.is_null() {
        d.error_help(
            root.pos,
            "",
            "the file is empty",
            "start with `apiVersion: phoenix/v1`, `kind: Environment`, `metadata`, `spec`",
        );
        return None;
    }
    let top = d.obj(root, "", ENV_KEYS)?;
    if let Some(v) = d.req(
        &top,
        "apiVersion",
        "write `apiVersion: phoenix/v1`",
        Decoder::string,
    ) {
        if v != "phoenix/v1" {
            let pos = top.get("apiVersion").map(|n| n.pos).unwrap_or(top.pos);
            d.error_help(
                pos,
                "apiVersion",
                format!("unsupported apiVersion {v:?}"),
                "use phoenix/v1",
            );
        }
    }
    if let Some(v) = d.req(&top, "kind", "write `kind: Environment`", Decoder::string) {
        if v != "Environment" {
            let pos = top.get("kind").map(|n| n.pos).unwrap_or(top.pos);
            d.error_help(
                pos,
                "kind",
                format!("unsupported kind {v:?}"),
                "use Environment",
            );
        }
    }
    let mut protected = false;
    let mut labels = BTreeMap::new();
    if let Some(meta_node) = d.required(&top, "metadata", "add `metadata: { name: ... }`") {
        if let Some(meta) = d.obj(meta_node, "metadata", &["name", "protected", "labels"]) {
            if let Some(n) = d.req(
                &meta,
                "name",
                "the name of the environment's directory",
                Decoder::string,
            ) {
                if n != name {
                    let pos = meta.get("name").map(|x| x.pos).unwrap_or(meta.pos);
                    d.error_help(
                        pos,
                        "metadata.name",
                        format!("metadata.name is {n:?} but the file is in environments/{name}/"),
                        format!("set metadata.name to {name:?} or move the directory"),
                    );
                }
            }
            protected = d.opt(&meta, "protected", Decoder::bool).unwrap_or(false);
            labels = d
                .opt(&meta, "labels", |d, n, p| Some(d.string_map(n, p)))
                .unwrap_or_default();
        }
    }
    let spec_node = d.required(
        &top,
        "spec",
        "add a `spec` with cloud, cluster, addons and apps",
    )?;
    let spec = d.obj(
        spec_node,
        "spec",
        &[
            "recoveryObjective",
            "watch",
            "values",
            "timeouts",
            "secrets",
            "cloud",
            "cluster",
            "addons",
            "apps",
            "volumes",
            "failover",
            "dns",
        ],
    )?;
    let recovery_objective = d.opt(&spec, "recoveryObjective", Decoder::duration);
    let watch = d
        .opt(&spec, "watch", super::watch::decode_watch)
        .unwrap_or_default();
    let values = match spec.get("values") {
        Some(n) if matches!(n.kind, Kind::Map(_)) => {
            d.free_form_keys(n, "spec.values");
            n.to_json()
        }
        Some(n) => {
            d.error_help(
                n.pos,
                "spec.values",
                format!("expected a mapping, found {}", n.type_name()),
                "values is a mapping of template values",
            );
            serde_json::Value::Object(Default::default())
        }
        None => serde_json::Value::Object(Default::default()),
    };
    let timeouts = d
        .opt(&spec, "timeouts", decode_timeouts)
        .unwrap_or_default();
    let secrets = d.opt(&spec, "secrets", decode_secrets).unwrap_or_default();
    let cloud = d.opt(&spec, "cloud", decode_cloud);
    let cluster = d.opt(&spec, "cluster", decode_cluster);
    let addons = d
        .opt(&spec, "addons", |d, n, p| {
            Some(decode_components(d, n, p, dir, timeouts.addons))
        })
        .unwrap_or_default();
    let apps = d
        .opt(&spec, "apps", |d, n, p| {
            Some(decode_components(d, n, p, dir, timeouts.apps))
        })
        .unwrap_or_default();
    let volumes = d
        .opt(&spec, "volumes", super::volumes::decode_volumes)
        .unwrap_or_default();
    let failover = d.opt(&spec, "failover", super::failover::decode_failover);
    let dns = d.opt(&spec, "dns", super::dns::decode_dns);
    Some(Environment {
        spans: std::mem::take(&mut d.spans),
        name: name.to_string(),
        dir: dir.to_string(),
        file: file.to_string(),
        protected,
        labels,
        recovery_objective,
        watch,
        values,
        timeouts,
        secrets,
        cloud,
        cluster,
        addons,
        apps,
        volumes,
        failover,
        dns,
    })
}

fn decode_timeouts(d: &mut Decoder, n: &Node, p: &str) -> Option<Timeouts> {
    let o = d.obj(n, p, &["cloud", "cluster", "addons", "apps"])?;
    let def = Timeouts::default();
    Some(Timeouts {
        cloud: d.opt(&o, "cloud", Decoder::duration).unwrap_or(def.cloud),
        cluster: d
            .opt(&o, "cluster", Decoder::duration)
            .unwrap_or(def.cluster),
        addons: d.opt(&o, "addons", Decoder::duration).unwrap_or(def.addons),
        apps: d.opt(&o, "apps", Decoder::duration).unwrap_or(def.apps),
    })
}

fn secret_source(d: &mut Decoder, n: &Node, p: &str) -> Option<SecretSource> {
    let text = d.string(n, p)?;
    match SecretSource::parse(&text) {
        Ok(s) => Some(s),
        Err(why) => {
            d.error_help(
                n.pos,
                p,
                format!("{text:?} is not a secret reference: {why}"),
                "write env:VARIABLE or file:NAME (a file under --secrets-dir; values never go in Git)",
            );
            None
        }
    }
}

pub(super) fn name_field(d: &mut Decoder, o: &Obj, what: &str) -> Option<String> {
    let n = d.req(
        o,
        "name",
        &format!("every {what} needs a name"),
        Decoder::string,
    )?;
    if let Err(why) = check_name(&n) {
        let pos = o.get("name").map(|x| x.pos).unwrap_or(o.pos);
        d.error_help(
            pos,
            &o.child("name"),
            why,
            format!("name the {what} like public-a or web-1: the name becomes part of AWS tags and Kubernetes names"),
        );
        return None;
    }
    Some(n)
}

/// Decodes each item of a list with `f`, reporting duplicate names.
pub(super) fn named_list<T>(
    d: &mut Decoder,
    n: &Node,
    p: &str,
    what: &str,
    mut f: impl FnMut(&mut Decoder, &Node, &str) -> Option<(String, Pos, T)>,
) -> Vec<T> {
    let Some(items) = d.list(n, p) else {
        return Vec::new();
    };
    let mut seen: BTreeMap<String, Pos> = BTreeMap::new();
    let mut out = Vec::new();
    let mut kept = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = index(p, i);
        if let Some((name, pos, value)) = f(d, item, &path) {
            if let Some(first) = seen.get(&name) {
                d.error_help(
                    pos,
                    &join(&path, "name"),
                    format!("duplicate {what} name {name:?}"),
                    format!("first defined at line {}; names must be unique", first.line),
                );
                continue;
            }
            seen.insert(name, pos);
            out.push(value);
            kept.push(i);
        }
    }
    d.spans.record_kept(p, kept);
    out
}

fn decode_secrets(d: &mut Decoder, n: &Node, p: &str) -> Option<Vec<SecretRef>> {
    Some(named_list(d, n, p, "secret", |d, item, path| {
        let o = d.obj(item, path, &["name", "from"])?;
        let name = name_field(d, &o, "secret")?;
        let source = d.req(
            &o,
            "from",
            "write from: env:NAME or from: file:PATH",
            secret_source,
        )?;
        let pos = o.get("name").map(|x| x.pos).unwrap_or(o.pos);
        Some((name.clone(), pos, SecretRef { name, source, pos }))
    }))
}

pub(super) fn cidr(d: &mut Decoder, n: &Node, p: &str) -> Option<Cidr> {
    let text = d.string(n, p)?;
    match text.parse::<Cidr>() {
        Ok(c) => Some(c),
        Err(why) => {
            d.error_help(
                n.pos,
                p,
                format!("{text:?} is not a valid CIDR: {why}"),
                "write an IPv4 network like 10.40.0.0/16",
            );
            None
        }
    }
}

fn decode_cloud(d: &mut Decoder, n: &Node, p: &str) -> Option<Cloud> {
    let o = d.obj(
        n,
        p,
        &[
            "provider",
            "region",
            "network",
            "securityGroups",
            "keyPair",
            "instances",
            "allowStopModifyStart",
        ],
    )?;
    let provider = d
        .opt(&o, "provider", Decoder::string)
        .unwrap_or_else(|| "aws".into());
    if provider != "aws" {
        let pos = o.get("provider").map(|x| x.pos).unwrap_or(o.pos);
        d.error_help(
            pos,
            &o.child("provider"),
            format!("unsupported provider {provider:?}"),
            "the only provider is aws",
        );
    }
    let region = d.req(
        &o,
        "region",
        "write the AWS region, e.g. region: us-east-1",
        Decoder::string,
    );
    if let Some(r) = &region {
        let ok = r.split('-').count() >= 3
            && r.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok {
            let pos = o.get("region").map(|x| x.pos).unwrap_or(o.pos);
            d.error_help(
                pos,
                &o.child("region"),
                format!("{r:?} is not an AWS region name"),
                "write a region like us-east-1 or eu-west-2",
            );
        }
    }
    let network = d.req(
        &o,
        "network",
        "add network: { cidr: ..., subnets: [...] }",
        decode_network,
    );
    let security_groups = d
        .opt(&o, "securityGroups", |d, n, p| {
            Some(named_list(d, n, p, "security group", |d, item, path| {
                let sg = decode_sg(d, item, path)?;
                Some((sg.name.clone(), sg.pos, sg))
            }))
        })
        .unwrap_or_default();
    let key_pair = d.opt(&o, "keyPair", |d, n, p| {
        let k = d.obj(n, p, &["name", "publicKey"])?;
        let name = name_field(d, &k, "key pair")?;
        let public_key = d.opt(&k, "publicKey", secret_source);
        Some(KeyPair { name, public_key })
    });
    let instances = d
        .opt(&o, "instances", |d, n, p| {
            Some(named_list(d, n, p, "instance group", |d, item, path| {
                let g = decode_instances(d, item, path)?;
                Some((g.name.clone(), g.pos, g))
            }))
        })
        .unwrap_or_default();
    let allow_stop_modify_start = d
        .opt(&o, "allowStopModifyStart", Decoder::bool)
        .unwrap_or(false);
    Some(Cloud {
        provider,
        region: region?,
        network: network?,
        security_groups,
        key_pair,
        instances,
        allow_stop_modify_start,
    })
}

fn decode_network(d: &mut Decoder, n: &Node, p: &str) -> Option<Network> {
    let o = d.obj(n, p, &["cidr", "subnets"])?;
    let vpc = d.req(
        &o,
        "cidr",
        "write the VPC range, e.g. cidr: 10.40.0.0/16",
        cidr,
    );
    if let (Some(c), Some(node)) = (vpc, o.get("cidr")) {
        if !(16..=28).contains(&c.prefix) {
            d.error_help(
                node.pos,
                &o.child("cidr"),
                format!("VPC block {c} has a /{} prefix", c.prefix),
                "AWS accepts VPC blocks from /16 to /28",
            );
        }
    }
    let subnets = d
        .opt(&o, "subnets", |d, n, p| {
            Some(named_list(d, n, p, "subnet", |d, item, path| {
                let s = d.obj(item, path, &["name", "cidr", "zone", "public"])?;
                let name = name_field(d, &s, "subnet");
                let c = d.req(
                    &s,
                    "cidr",
                    "write the subnet range, e.g. cidr: 10.40.1.0/24",
                    cidr,
                );
                let zone = d.req(
                    &s,
                    "zone",
                    "write the availability zone, e.g. zone: us-east-1a",
                    Decoder::string,
                );
                let public = d.opt(&s, "public", Decoder::bool).unwrap_or(false);
                let pos = s.get("name").map(|x| x.pos).unwrap_or(s.pos);
                let name = name?;
                Some((
                    name.clone(),
                    pos,
                    Subnet {
                        name,
                        cidr: c?,
                        zone: zone?,
                        public,
                        pos,
                    },
                ))
            }))
        })
        .unwrap_or_default();
    Some(Network {
        cidr: vpc?,
        subnets,
    })
}

fn decode_sg(d: &mut Decoder, n: &Node, p: &str) -> Option<SecurityGroup> {
    let o = d.obj(n, p, &["name", "description", "ingress", "egress"])?;
    let name = name_field(d, &o, "security group");
    let description = d.opt(&o, "description", Decoder::string);
    let ingress = d
        .opt(&o, "ingress", |d, n, p| Some(decode_rules(d, n, p, "from")))
        .unwrap_or_default();
    let egress = d.opt(&o, "egress", |d, n, p| Some(decode_rules(d, n, p, "to")));
    let pos = o.get("name").map(|x| x.pos).unwrap_or(o.pos);
    let name = name?;
    Some(SecurityGroup {
        description: description.unwrap_or_else(|| format!("phoenix security group {name}")),
        name,
        ingress,
        egress,
        pos,
    })
}

fn decode_rules(d: &mut Decoder, n: &Node, p: &str, peer_key: &str) -> Vec<Rule> {
    let Some(items) = d.list(n, p) else {
        return Vec::new();
    };
    let group_key = if peer_key == "from" {
        "fromGroup"
    } else {
        "toGroup"
    };
    let mut out = Vec::new();
    let mut kept = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = index(p, i);
        let Some(o) = d.obj(
            item,
            &path,
            &[
                "protocol",
                "port",
                "ports",
                peer_key,
                group_key,
                "description",
            ],
        ) else {
            continue;
        };
        let protocol = match d.opt(&o, "protocol", Decoder::string).as_deref() {
            None | Some("tcp") => Some(Protocol::Tcp),
            Some("udp") => Some(Protocol::Udp),
            Some("icmp") => Some(Protocol::Icmp),
            Some("all") | Some("-1") => Some(Protocol::All),
            Some(other) => {
                let pos = o.get("protocol").map(|x| x.pos).unwrap_or(o.pos);
                d.error_help(
                    pos,
                    &o.child("protocol"),
                    format!("unknown protocol {other:?}"),
                    "use tcp, udp, icmp or all",
                );
                None
            }
        };
        let ports = match (o.get("port"), o.get("ports")) {
            (Some(_), Some(node)) => {
                d.error_help(
                    node.pos,
                    &o.child("ports"),
                    "both port and ports are set",
                    "use port: 443 or ports: 30000-32767, not both",
                );
                None
            }
            (Some(node), None) => d
                .int(node, &o.child("port"), 0, 65535)
                .map(|v| Some((v as u16, v as u16))),
            (None, Some(node)) => port_range(d, node, &o.child("ports")),
            (None, None) if protocol == Some(Protocol::All) || protocol == Some(Protocol::Icmp) => {
                Some(None)
            }
            (None, None) => {
                d.error_help(
                    o.pos,
                    &o.child("port"),
                    "missing port",
                    "set port: 443, ports: 8000-8100 or ports: all",
                );
                None
            }
        };
        let peer = match (o.get(peer_key), o.get(group_key)) {
            (Some(_), Some(node)) => {
                d.error_help(
                    node.pos,
                    &o.child(group_key),
                    format!("both {peer_key} and {group_key} are set"),
                    "a rule has one peer: a CIDR or a security group",
                );
                None
            }
            (Some(node), None) => cidr(d, node, &o.child(peer_key)).map(Peer::Cidr),
            (None, Some(node)) => d.string(node, &o.child(group_key)).map(Peer::Group),
            (None, None) => {
                d.error_help(
                    o.pos,
                    &o.child(peer_key),
                    format!("missing {peer_key}"),
                    format!("set {peer_key}: 10.0.0.0/8 or {group_key}: <security group name>"),
                );
                None
            }
        };
        let description = d.opt(&o, "description", Decoder::string);
        if let (Some(protocol), Some(ports), Some(peer)) = (protocol, ports, peer) {
            out.push(Rule {
                protocol,
                ports,
                peer,
                description,
            });
            kept.push(i);
        }
    }
    d.spans.record_kept(p, kept);
    out
}

fn port_range(d: &mut Decoder, n: &Node, p: &str) -> Option<Option<(u16, u16)>> {
    if let Some(yaml::Scalar::Int(v)) = n.scalar() {
        return d.int(n, p, 0, 65535).map(|_| Some((v as u16, v as u16)));
    }
    let text = d.string(n, p)?;
    if text == "all" {
        return Some(None);
    }
    let parsed = text.split_once('-').and_then(|(a, b)| {
        let a: u16 = a.trim().parse().ok()?;
        let b: u16 = b.trim().parse().ok()?;
        (a <= b).then_some((a, b))
    });
    if parsed.is_none() {
        d.error_help(
            n.pos,
            p,
            format!("{text:?} is not a port range"),
            "write ports: 30000-32767 (low-high, each 0 to 65535) or ports: all",
        );
    }
    parsed.map(Some)
}

fn decode_instances(d: &mut Decoder, n: &Node, p: &str) -> Option<InstanceGroup> {
    let o = d.obj(
        n,
        p,
        &[
            "name",
            "role",
            "count",
            "type",
            "image",
            "subnet",
            "securityGroups",
            "rootVolumeSize",
            "instanceProfile",
            "userData",
            "tags",
        ],
    )?;
    let name = name_field(d, &o, "instance group");
    let role = match d.opt(&o, "role", Decoder::string).as_deref() {
        None | Some("none") => Some(Role::None),
        Some("server") => Some(Role::Server),
        Some("agent") => Some(Role::Agent),
        Some(other) => {
            let pos = o.get("role").map(|x| x.pos).unwrap_or(o.pos);
            d.error_help(
                pos,
                &o.child("role"),
                format!("unknown role {other:?}"),
                "use server (k3s server), agent (k3s agent) or none",
            );
            None
        }
    };
    let count = d
        .opt(&o, "count", |d, n, p| d.int(n, p, 0, 500))
        .unwrap_or(1) as u32;
    let instance_type = d.req(
        &o,
        "type",
        "write the instance type, e.g. type: t3.medium",
        Decoder::string,
    );
    if let (Some(t), Some(node)) = (&instance_type, o.get("type")) {
        let ok = t
            .split_once('.')
            .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty())
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
        if !ok {
            d.error_help(
                node.pos,
                &o.child("type"),
                format!("{t:?} is not an instance type"),
                "write a type like t3.medium or m7i.large",
            );
        }
    }
    let image = d.req(&o, "image", "write image: { id: ami-... } or image: { owner: amazon, name: \"al2023-ami-*\" }", |d, n, p| {
        let io = d.obj(n, p, &["id", "owner", "name", "architecture", "update"])?;
        if io.get("id").is_some() {
            for k in ["architecture", "update"] {
                if let Some(node) = io.get(k) {
                    d.error_help(node.pos, &io.child(k), format!("{k} applies to an image lookup, not to an image id"), "remove it, or look the image up with owner and name");
                }
            }
        }
        match (io.get("id"), io.get("owner"), io.get("name")) {
            (Some(id), None, None) => {
                let id = d.string(id, &io.child("id"))?;
                if !id.starts_with("ami-") {
                    let pos = io.get("id").map(|x| x.pos).unwrap_or(io.pos);
                    d.error_help(pos, &io.child("id"), format!("{id:?} is not an AMI id"), "AMI ids look like ami-0123456789abcdef0");
                    return None;
                }
                Some(Image::Id(id))
            }
            (None, Some(owner), Some(name)) => {
                let owner = d.string(owner, &io.child("owner"))?;
                let name = d.string(name, &io.child("name"))?;
                let architecture = match d.opt(&io, "architecture", Decoder::string) {
                    None => "x86_64".to_string(),
                    Some(a) if a == "x86_64" || a == "arm64" => a,
                    Some(other) => {
                        let pos = io.get("architecture").map(|x| x.pos).unwrap_or(io.pos);
                        d.error_help(pos, &io.child("architecture"), format!("unknown architecture {other:?}"), "use x86_64 or arm64 (the instance type must match it)");
                        return None;
                    }
                };
                let update = match d.opt(&io, "update", Decoder::string).as_deref() {
                    None | Some("pinned") => ImageUpdate::Pinned,
                    Some("latest") => ImageUpdate::Latest,
                    Some(other) => {
                        let pos = io.get("update").map(|x| x.pos).unwrap_or(io.pos);
                        d.error_help(pos, &io.child("update"), format!("unknown image update policy {other:?}"), "use pinned (running instances keep their image; a newer one is shown as available) or latest (a newer image replaces them)");
                        return None;
                    }
                };
                Some(Image::Lookup { owner, name, architecture, update })
            }
            _ => {
                d.error_help(io.pos, p, "image needs either id, or owner and name", "write image: { id: ami-... } or image: { owner: amazon, name: \"al2023-ami-*\" }");
                None
            }
        }
    });
    let subnet = d.req(
        &o,
        "subnet",
        "name the subnet the instances go into",
        Decoder::string,
    );
    let security_groups = d
        .opt(&o, "securityGroups", |d, n, p| {
            Some(d.strings(n, p).into_iter().map(|(_, s)| s).collect())
        })
        .unwrap_or_default();
    let root_volume_gib = d
        .opt(&o, "rootVolumeSize", |d, n, p| d.int(n, p, 8, 16384))
        .map(|v| v as u32);
    let instance_profile = d.opt(&o, "instanceProfile", Decoder::string);
    let user_data = d.opt(&o, "userData", Decoder::string);
    let tags = d
        .opt(&o, "tags", |d, n, p| Some(d.string_map(n, p)))
        .unwrap_or_default();
    for k in tags.keys().filter(|k| k.starts_with("phoenix:")) {
        let field = join(&o.child("tags"), k);
        let pos = d.spans.key(&field).unwrap_or(o.pos);
        d.error_help(
            pos,
            &field,
            format!("tag {k:?} uses the reserved phoenix: prefix"),
            "phoenix sets phoenix:* tags itself; choose another key",
        );
    }
    let pos = o.get("name").map(|x| x.pos).unwrap_or(o.pos);
    Some(InstanceGroup {
        name: name?,
        role: role?,
        count,
        instance_type: instance_type?,
        image: image?,
        subnet: subnet?,
        security_groups,
        root_volume_gib,
        instance_profile,
        user_data,
        tags,
        pos,
    })
}

fn decode_cluster(d: &mut Decoder, n: &Node, p: &str) -> Option<Cluster> {
    let o = d.obj(
        n,
        p,
        &[
            "distribution",
            "version",
            "endpoint",
            "secret",
            "tlsSans",
            "disable",
            "existing",
        ],
    )?;
    if let Some(ex) = o.get("existing") {
        for k in [
            "distribution",
            "version",
            "endpoint",
            "secret",
            "tlsSans",
            "disable",
        ] {
            if let Some(node) = o.get(k) {
                d.error_help(
                    node.pos,
                    &o.child(k),
                    format!("{k} cannot be combined with existing"),
                    "an existing cluster is used as it is; remove this field or remove existing",
                );
            }
        }
        let e = d.obj(ex, &o.child("existing"), &["kubeconfig", "context"])?;
        let kubeconfig = d.req(
            &e,
            "kubeconfig",
            "the path of a kubeconfig file on the machine running phoenix",
            Decoder::string,
        )?;
        let context = d.opt(&e, "context", Decoder::string);
        return Some(Cluster::Existing(Existing {
            kubeconfig,
            context,
        }));
    }
    let dist = d.req(
        &o,
        "distribution",
        "write distribution: k3s, or existing: { kubeconfig: ..., context: ... }",
        Decoder::string,
    )?;
    if dist != "k3s" {
        let pos = o.get("distribution").map(|x| x.pos).unwrap_or(o.pos);
        d.error_help(
            pos,
            &o.child("distribution"),
            format!("unsupported distribution {dist:?}"),
            "use k3s, or existing: { kubeconfig: ..., context: ... }",
        );
        return None;
    }
    let version = d.req(
        &o,
        "version",
        "write the k3s version, e.g. version: v1.31.4+k3s1",
        Decoder::string,
    )?;
    // The full release name: k3s publishes `v1.31.4+k3s1`, and the install script 404s on
    // `v1.31.4` (then the node reports that version forever, which would be drift).
    let version_ok = crate::providers::cluster::check_version(&version).is_ok();
    if !version_ok {
        let pos = o.get("version").map(|x| x.pos).unwrap_or(o.pos);
        d.error_help(
            pos,
            &o.child("version"),
            format!("{version:?} is not a k3s release name"),
            "write the full release name vMAJOR.MINOR.PATCH+k3sN, e.g. v1.31.4+k3s1 (see https://github.com/k3s-io/k3s/releases)",
        );
    }
    let endpoint = match d.opt(&o, "endpoint", Decoder::string).as_deref() {
        None | Some("public") => EndpointKind::Public,
        Some("private") => EndpointKind::Private,
        Some(other) => {
            let pos = o.get("endpoint").map(|x| x.pos).unwrap_or(o.pos);
            d.error_help(
                pos,
                &o.child("endpoint"),
                format!("unknown endpoint {other:?}"),
                "use public or private",
            );
            return None;
        }
    };
    let secret = d.req(
        &o,
        "secret",
        "write secret: env:VARIABLE (or file:PATH) naming at least 32 random characters, e.g. from `openssl rand -hex 32`: the cluster's CAs and join tokens are derived from it (docs/cluster.md)",
        secret_source,
    );
    let tls_sans: Vec<String> = match o.get("tlsSans") {
        Some(list) => {
            let path = o.child("tlsSans");
            let mut out = Vec::new();
            for (i, (pos, san)) in d.strings(list, &path).into_iter().enumerate() {
                if crate::providers::cluster::check_address("tls-san", &san).is_err() {
                    d.error_help(
                        pos,
                        &index(&path, i),
                        format!("{san:?} is not a host name or IP address"),
                        "write a DNS name (letters, digits, '-', '.') or an IPv4/IPv6 address",
                    );
                } else {
                    out.push(san);
                }
            }
            out
        }
        None => Vec::new(),
    };
    let mut disable = Vec::new();
    if let Some(list) = o.get("disable") {
        let path = o.child("disable");
        for (i, (pos, name)) in d.strings(list, &path).into_iter().enumerate() {
            if K3S_PACKAGED.contains(&name.as_str()) {
                disable.push(name);
            } else {
                d.error_help(
                    pos,
                    &index(&path, i),
                    format!("{name:?} is not a k3s packaged component"),
                    format!("use {}", K3S_PACKAGED.join(", ")),
                );
            }
        }
    }
    if !version_ok {
        return None;
    }
    Some(Cluster::K3s(K3s {
        version,
        endpoint,
        secret: secret?,
        tls_sans,
        disable,
    }))
}

/// `chart:` of a component: a chart in the commit (`path`) or of a repository (`repo`, `name`,
/// `version`, `digest`), used from its vendored copy. An empty release name means the
/// component's name.
fn decode_chart(d: &mut Decoder, node: &Node, p: &str, env_dir: &str) -> Option<(Source, String)> {
    let o = d.obj(
        node,
        p,
        &["path", "repo", "name", "version", "digest", "releaseName"],
    )?;
    let release_name = d
        .opt(&o, "releaseName", Decoder::string)
        .unwrap_or_default();
    if let (false, Some(n)) = (release_name.is_empty(), o.get("releaseName")) {
        let ok = release_name.len() <= 53
            && release_name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !release_name.starts_with('-')
            && !release_name.ends_with('-');
        if !ok {
            d.error_help(
                n.pos,
                &o.child("releaseName"),
                format!("{release_name:?} is not a valid Helm release name"),
                "lowercase letters, digits and '-', at most 53 characters, starting and ending with a letter or digit",
            );
            return None;
        }
    }
    match (o.get("path"), o.get("repo")) {
        (Some(pn), None) => {
            for k in ["name", "version", "digest"] {
                if let Some(n) = o.get(k) {
                    d.error_help(
                        n.pos,
                        &o.child(k),
                        format!("{k} applies to a repository chart, and this chart has a path"),
                        "a chart in the commit is named by path alone (its Chart.yaml says the rest)",
                    );
                    return None;
                }
            }
            let rel = d.string(pn, &o.child("path"))?;
            match resolve_path(env_dir, &rel) {
                Ok(dir) => Some((
                    Source::Chart(Chart {
                        from: ChartFrom::Path(rel),
                        release_name,
                    }),
                    dir,
                )),
                Err(why) => {
                    d.error_help(
                        pn.pos,
                        &o.child("path"),
                        why,
                        "name a chart directory or a packaged chart (.tgz) relative to the environment directory",
                    );
                    None
                }
            }
        }
        (None, Some(rn)) => {
            let repo = d.string(rn, &o.child("repo"))?;
            let uri = repo.parse::<http::Uri>().ok();
            let scheme = uri
                .as_ref()
                .and_then(|u| u.scheme_str().map(str::to_string));
            if !matches!(scheme.as_deref(), Some("http") | Some("https"))
                || uri
                    .as_ref()
                    .and_then(|u| u.host())
                    .is_none_or(str::is_empty)
            {
                d.error_help(
                    rn.pos,
                    &o.child("repo"),
                    format!("{repo:?} is not an http(s) chart repository URL"),
                    "write the URL of a Helm chart repository (the directory holding index.yaml), e.g. https://kubernetes.github.io/ingress-nginx; OCI registries are not supported",
                );
                return None;
            }
            let name = d.req(
                &o,
                "name",
                "the chart's name in the repository, e.g. name: ingress-nginx",
                Decoder::string,
            );
            let version = d.req(
                &o,
                "version",
                "the chart's exact version, e.g. version: 4.11.3",
                Decoder::string,
            );
            // Absent until the first `phoenix vendor`, which prints it (validate says so).
            let digest = Some(d.opt(&o, "digest", Decoder::string).unwrap_or_default());
            let mut ok = true;
            if let (Some(n), Some(node)) = (&name, o.get("name")) {
                let valid = !n.is_empty()
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
                    && !n.starts_with('.');
                if !valid {
                    d.error_help(
                        node.pos,
                        &o.child("name"),
                        format!("{n:?} is not a chart name"),
                        "letters, digits, '-', '_' and '.'",
                    );
                    ok = false;
                }
            }
            if let (Some(v), Some(node)) = (&version, o.get("version")) {
                if !exact_version(v) {
                    d.error_help(
                        node.pos,
                        &o.child("version"),
                        format!("{v:?} is not an exact chart version"),
                        "write one version, e.g. 4.11.3 (not a range: a rebuild must render the same chart every time)",
                    );
                    ok = false;
                }
            }
            if let (Some(g), Some(node)) =
                (digest.as_ref().filter(|g| !g.is_empty()), o.get("digest"))
            {
                let hex = g.strip_prefix("sha256:").unwrap_or("");
                if hex.len() != 64
                    || !hex
                        .chars()
                        .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
                {
                    d.error_help(
                        node.pos,
                        &o.child("digest"),
                        format!("{g:?} is not a sha256 digest"),
                        "write sha256: and 64 lowercase hex digits, the digest of the packaged chart (.tgz)",
                    );
                    ok = false;
                }
            }
            let (name, version, digest) = (name?, version?, digest?);
            if !ok {
                return None;
            }
            let dir = ChartFrom::vendored_path(&name, &version);
            Some((
                Source::Chart(Chart {
                    from: ChartFrom::Repo {
                        repo,
                        name,
                        version,
                        digest,
                    },
                    release_name,
                }),
                dir,
            ))
        }
        (Some(_), Some(rn)) => {
            d.error_help(
                rn.pos,
                &o.child("repo"),
                "both path and repo are set",
                "a chart is in the commit (path) or in a chart repository (repo, name, version, digest), not both",
            );
            None
        }
        (None, None) => {
            d.error_help(
                o.pos,
                &o.child("path"),
                "the chart has no path and no repo",
                "write path: <chart directory or .tgz relative to the environment> or repo: URL with name, version and digest",
            );
            None
        }
    }
}

/// An exact semantic version (`1.2.3`, `v1.2.3`, `1.2.3-rc.1+build`): no ranges or wildcards.
fn exact_version(v: &str) -> bool {
    let v = v.strip_prefix('v').unwrap_or(v);
    let (core, rest) = match v.find(['-', '+']) {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, ""),
    };
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        && (v.len() == core.len()
            || (!rest.is_empty()
                && rest
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '+')))
}

/// What k3s deploys by itself and can be told not to (its `--disable` flag).
const K3S_PACKAGED: &[&str] = &["traefik", "servicelb", "metrics-server", "local-storage"];

fn decode_components(
    d: &mut Decoder,
    n: &Node,
    p: &str,
    env_dir: &str,
    default_wait: Duration,
) -> Vec<Component> {
    named_list(d, n, p, "component", |d, item, path| {
        let o = d.obj(
            item,
            path,
            &[
                "name",
                "template",
                "path",
                "chart",
                "kustomize",
                "namespace",
                "values",
                "dependsOn",
                "wait",
                "checks",
                "secrets",
                "forceConflicts",
                "leaveFields",
            ],
        )?;
        let name = name_field(d, &o, "component");
        let set: Vec<&str> = ["template", "path", "chart", "kustomize"]
            .into_iter()
            .filter(|k| o.has(k))
            .collect();
        let source = match set.as_slice() {
            ["template"] => {
                let t_node = o.get("template").expect("present");
                d.string(t_node, &o.child("template")).and_then(|t| {
                    match resolve_path("templates", &t) {
                        Ok(dir) if dir.starts_with("templates/") => {
                            Some((Source::Template(t), dir))
                        }
                        Ok(_) | Err(_) => {
                            d.error_help(
                                t_node.pos,
                                &o.child("template"),
                                format!("template {t:?} points outside templates/"),
                                "name a directory under templates/, e.g. addons/ingress-nginx",
                            );
                            None
                        }
                    }
                })
            }
            [key @ ("path" | "kustomize")] => {
                let key = *key;
                let pn = o.get(key).expect("present");
                d.string(pn, &o.child(key))
                    .and_then(|rel| match resolve_path(env_dir, &rel) {
                        Ok(dir) if key == "path" => Some((Source::Path(rel), dir)),
                        Ok(dir) => Some((Source::Kustomize(rel), dir)),
                        Err(why) => {
                            d.error_help(
                                pn.pos,
                                &o.child(key),
                                why,
                                if key == "path" {
                                    "name a directory of manifests relative to the environment directory"
                                } else {
                                    "name a directory with a kustomization.yaml relative to the environment directory"
                                },
                            );
                            None
                        }
                    })
            }
            ["chart"] => {
                let node = o.get("chart").expect("present");
                decode_chart(d, node, &o.child("chart"), env_dir)
            }
            [] => {
                d.error_help(o.pos, &o.child("template"), "the component has no source", "set template: <dir under templates/>, path: <dir relative to the environment>, chart: {...} or kustomize: <dir>");
                None
            }
            _ => {
                let second = set.get(1).copied().unwrap_or("template");
                let pn = o.get(second).expect("present");
                d.error_help(
                    pn.pos,
                    &o.child(second),
                    match set.as_slice() {
                        [a, b] => format!("both {a} and {b} are set"),
                        _ => format!("more than one source is set ({})", set.join(", ")),
                    },
                    "a component comes from exactly one of template, path, chart or kustomize",
                );
                None
            }
        };
        let namespace = d.opt(&o, "namespace", Decoder::string);
        let values = match o.get("values") {
            Some(v) if matches!(v.kind, Kind::Map(_)) => {
                d.free_form_keys(v, &o.child("values"));
                v.to_json()
            }
            Some(v) => {
                d.error_help(
                    v.pos,
                    &o.child("values"),
                    format!("expected a mapping, found {}", v.type_name()),
                    "values is a mapping of template values",
                );
                serde_json::Value::Object(Default::default())
            }
            None => serde_json::Value::Object(Default::default()),
        };
        let depends_on = d
            .opt(&o, "dependsOn", |d, n, p| {
                Some(d.strings(n, p).into_iter().map(|(_, s)| s).collect())
            })
            .unwrap_or_default();
        let wait = d.opt(&o, "wait", Decoder::duration).unwrap_or(default_wait);
        let checks = d
            .opt(&o, "checks", |d, n, p| {
                let items = d.list(n, p)?;
                let mut out = Vec::new();
                let mut kept = Vec::new();
                for (i, it) in items.iter().enumerate() {
                    let cp = index(p, i);
                    let Some(c) = d.obj(it, &cp, &["http", "expect", "timeout", "ca"]) else {
                        continue;
                    };
                    let url = d.req(&c, "http", "write http: http://host/path", Decoder::string);
                    if let (Some(u), Some(node)) = (&url, c.get("http")) {
                        // Exactly what the run can do: http, or https verified with rustls.
                        let parsed = u.parse::<http::Uri>().ok();
                        let scheme = parsed.as_ref().and_then(|x| x.scheme_str().map(str::to_string));
                        let host = parsed.as_ref().and_then(|x| x.host().map(str::to_string));
                        if !matches!(scheme.as_deref(), Some("http") | Some("https")) || host.is_none_or(|h| h.is_empty()) {
                            d.error_help(
                                node.pos,
                                &c.child("http"),
                                format!("{u:?} is not an http(s) URL with a host"),
                                "write a URL like http://host[:port]/path or https://host[:port]/path (other schemes cannot be checked)",
                            );
                            continue;
                        }
                    }
                    let ca = d.opt(&c, "ca", Decoder::string);
                    if let (Some(ca), Some(node)) = (&ca, c.get("ca")) {
                        let https = url.as_deref().is_some_and(|u| u.starts_with("https://"));
                        let inside = !ca.is_empty() && !ca.starts_with('/') && ca.split('/').all(|p| !p.is_empty() && p != "." && p != "..");
                        if !https || !inside {
                            d.error_help(
                                node.pos,
                                &c.child("ca"),
                                if https { format!("{ca:?} is not a path inside the environment directory") } else { "ca applies to https checks only".to_string() },
                                "write ca: a PEM file in the commit relative to the environment directory, e.g. ca: certs/internal-ca.pem, on an https:// check",
                            );
                            continue;
                        }
                    }
                    let expect = d
                        .opt(&c, "expect", |d, n, p| d.int(n, p, 100, 599))
                        .unwrap_or(200) as u16;
                    let timeout = d
                        .opt(&c, "timeout", Decoder::duration)
                        .unwrap_or(Duration::from_secs(60));
                    if let Some(url) = url {
                        out.push(Check {
                            url,
                            expect,
                            timeout,
                            ca,
                        });
                        kept.push(i);
                    }
                }
                d.spans.record_kept(p, kept);
                Some(out)
            })
            .unwrap_or_default();
        let secrets = d
            .opt(&o, "secrets", |d, n, p| {
                Some(named_list(d, n, p, "secret object", |d, it, sp| {
                    let s = d.obj(it, sp, &["name", "namespace", "data"])?;
                    let sname = name_field(d, &s, "secret object")?;
                    let ns = d.req(&s, "namespace", "the namespace the Secret is created in", Decoder::string)?;
                    let data = d.req(&s, "data", "map Secret keys to names in spec.secrets, e.g. data: { password: db-password }", |d, n, p| Some(d.string_map(n, p)))?;
                    let pos = s.get("name").map(|x| x.pos).unwrap_or(s.pos);
                    Some((format!("{ns}/{sname}"), pos, SecretObject { name: sname, namespace: ns, data, pos }))
                }))
            })
            .unwrap_or_default();
        let force_conflicts = d.opt(&o, "forceConflicts", Decoder::bool).unwrap_or(true);
        let leave_fields = d
            .opt(&o, "leaveFields", |d, n, p| {
                let items = d.list(n, p)?;
                let mut out = Vec::new();
                let mut kept = Vec::new();
                for (i, it) in items.iter().enumerate() {
                    let lp = index(p, i);
                    let Some(l) = d.obj(it, &lp, &["kind", "name", "namespace", "fields"]) else {
                        continue;
                    };
                    let kind = d.req(&l, "kind", "the object's kind, e.g. kind: Deployment", Decoder::string);
                    let name = d.req(&l, "name", "the object's metadata.name", Decoder::string);
                    let namespace = d.opt(&l, "namespace", Decoder::string);
                    let fields = d.req(&l, "fields", "field paths phoenix leaves to another manager, e.g. fields: [spec.replicas]", |d, n, p| {
                        let list = d.strings(n, p);
                        let mut ok = Vec::new();
                        for (i, (pos, f)) in list.into_iter().enumerate() {
                            let valid = !f.is_empty()
                                && f.split('.').all(|k| !k.is_empty())
                                && !["metadata.name", "metadata.namespace", "kind", "apiVersion"].contains(&f.as_str())
                                && !f.starts_with("metadata.labels")
                                && !f.starts_with("metadata.annotations");
                            if valid {
                                ok.push(f);
                            } else {
                                d.error_help(
                                    pos,
                                    &index(p, i),
                                    format!("{f:?} is not a field phoenix can leave to another manager"),
                                    "write a dot-separated path of mapping keys, e.g. spec.replicas (not identity fields, labels or annotations: phoenix's ownership marks live there)",
                                );
                            }
                        }
                        Some(ok)
                    });
                    if let (Some(kind), Some(name), Some(fields)) = (kind, name, fields) {
                        out.push(LeftFields { kind, name, namespace, fields });
                        kept.push(i);
                    }
                }
                d.spans.record_kept(p, kept);
                Some(out)
            })
            .unwrap_or_default();
        let pos = o.get("name").map(|x| x.pos).unwrap_or(o.pos);
        let name = name?;
        let (mut source, source_dir) = source?;
        if let Source::Chart(chart) = &mut source {
            if chart.release_name.is_empty() {
                chart.release_name = name.clone();
            }
        }
        Some((
            name.clone(),
            pos,
            Component {
                name,
                source,
                source_dir,
                namespace,
                values,
                depends_on,
                wait,
                checks,
                secrets,
                force_conflicts,
                leave_fields,
                pos,
            },
        ))
    })
}

#[cfg(test)]
mod chart_tests {
    use super::*;

    const HEAD: &str = "apiVersion: phoenix/v1\nkind: Environment\nmetadata: {name: t}\nspec:\n  cluster: {existing: {kubeconfig: /dev/null}}\n  addons:\n";
    const DIGEST: &str = "sha256:2182c9c5f5c52464e46accb4462a1637a36b898a53080ba78a77819011faeb86";

    fn load_with(addons: &str, extra: &[(&str, &str)]) -> Result<Environment, Vec<Diagnostic>> {
        let mut f = MemFiles::default().with(
            "environments/t/environment.yaml",
            &format!("{HEAD}{addons}"),
        );
        for (p, t) in extra {
            f = f.with(p, t);
        }
        load(&f, "t")
    }

    fn problems(addons: &str, extra: &[(&str, &str)]) -> Vec<(usize, String, String)> {
        load_with(addons, extra)
            .unwrap_err()
            .into_iter()
            .map(|d| {
                (
                    d.line,
                    d.field,
                    format!("{} | {}", d.message, d.help.unwrap_or_default()),
                )
            })
            .collect()
    }

    #[test]
    fn chart_sources_decode() {
        let env = load_with(
            &format!("    - {{name: a, chart: {{path: charts/a}}}}\n    - {{name: b, chart: {{path: b.tgz, releaseName: bee}}}}\n    - {{name: c, chart: {{repo: 'https://charts.example/x', name: c, version: 1.2.3, digest: '{DIGEST}'}}}}\n    - {{name: d, kustomize: k/prod}}\n"),
            &[
                ("environments/t/charts/a/Chart.yaml", "name: a\n"),
                ("environments/t/b.tgz", "x"),
                ("vendor/charts/c-1.2.3.tgz", "x"),
                ("environments/t/k/prod/kustomization.yaml", "resources: []\n"),
            ],
        )
        .unwrap();
        let a = &env.addons[0];
        assert_eq!(a.source_dir, "environments/t/charts/a");
        assert!(matches!(&a.source, Source::Chart(c) if c.release_name == "a"));
        assert!(matches!(&env.addons[1].source, Source::Chart(c) if c.release_name == "bee"));
        assert_eq!(env.addons[2].source_dir, "vendor/charts/c-1.2.3.tgz");
        assert_eq!(env.addons[3].source, Source::Kustomize("k/prod".into()));
        assert_eq!(env.addons[3].source_dir, "environments/t/k/prod");
    }

    #[test]
    fn chart_problems_point_at_the_field() {
        let p = problems(
            "    - name: a\n      chart:\n        repo: 'https://charts.example/x'\n        name: c\n        version: '^1.2'\n        digest: md5:abc\n",
            &[],
        );
        assert!(
            p.iter().any(|(l, f, m)| *l == 11
                && f == "spec.addons[0].chart.version"
                && m.contains("not an exact chart version")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|(l, f, m)| *l == 12
                && f == "spec.addons[0].chart.digest"
                && m.contains("not a sha256 digest")),
            "{p:?}"
        );

        let p = problems(
            &format!("    - name: a\n      chart: {{repo: 'https://charts.example/x', name: c, version: 1.2.3, digest: '{DIGEST}'}}\n"),
            &[],
        );
        assert!(
            p.iter().any(|(l, f, m)| *l == 8
                && f.ends_with("chart.repo")
                && m.contains("not vendored")
                && m.contains("run `phoenix vendor t`")),
            "{p:?}"
        );

        let p = problems(
            "    - {name: a, chart: {repo: 'oci://r/x', name: c, version: 1.2.3, digest: x}}\n",
            &[],
        );
        assert!(
            p.iter()
                .any(|(_, f, m)| f.ends_with("chart.repo") && m.contains("OCI")),
            "{p:?}"
        );

        let p = problems("    - {name: a, template: x, chart: {path: c}}\n", &[]);
        assert!(
            p.iter()
                .any(|(l, _, m)| *l == 7 && m.contains("both template and chart are set")),
            "{p:?}"
        );

        let p = problems("    - {name: a, chart: {path: c, version: 1.0.0}}\n", &[]);
        assert!(
            p.iter().any(|(_, f, m)| f.ends_with("chart.version")
                && m.contains("applies to a repository chart")),
            "{p:?}"
        );

        let p = problems(
            "    - {name: a, chart: {path: missing}}\n    - {name: b, kustomize: nope}\n",
            &[],
        );
        assert!(
            p.iter()
                .any(|(_, f, m)| f.ends_with("chart.path") && m.contains("Chart.yaml")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|(_, f, m)| f.ends_with("kustomize") && m.contains("kustomization.yaml")),
            "{p:?}"
        );

        let p = problems(
            "    - {name: a, chart: {path: c, releaseName: Not_Valid}}\n",
            &[("environments/t/c/Chart.yaml", "")],
        );
        assert!(
            p.iter().any(|(_, f, m)| f.ends_with("releaseName")
                && m.contains("not a valid Helm release name")),
            "{p:?}"
        );
    }

    #[test]
    fn exact_versions() {
        for ok in ["1.2.3", "v1.2.3", "1.2.3-rc.1", "1.2.3+build.5", "0.0.0"] {
            assert!(exact_version(ok), "{ok}");
        }
        for bad in [
            "1.2",
            "^1.2.3",
            "~1.2.3",
            "1.2.x",
            ">=1.0.0",
            "1.2.3-",
            "",
            "1.2.3 || 2.0.0",
        ] {
            assert!(!exact_version(bad), "{bad}");
        }
    }
}
