//! Checks that need the whole model: references, address ranges, dependency cycles and the files
//! the environment points at in the commit.

use super::diag::{suggest, Diagnostic};
use super::load::CommitFiles;
use super::model::*;
use super::yaml::Pos;
use std::collections::{BTreeMap, BTreeSet};

/// Default user-data template (under templates/) for instances of a role.
pub fn default_user_data(role: &Role) -> Option<&'static str> {
    match role {
        Role::Server => Some("cloud-init/k3s-server.yaml.j2"),
        Role::Agent => Some("cloud-init/k3s-agent.yaml.j2"),
        Role::None => None,
    }
}

pub fn check(env: &Environment, files: &dyn CommitFiles, out: &mut Vec<Diagnostic>) {
    let file = env.file.as_str();
    let mut err = |pos: Pos, field: String, msg: String, help: String| {
        out.push(Diagnostic::new(file, pos, &field, msg).help(help));
    };

    if let Some(cloud) = &env.cloud {
        check_cloud(cloud, files, &mut err);
    }
    match (&env.cluster, &env.cloud) {
        (Some(Cluster::Existing(_)), Some(_)) => err(
            Pos { line: 1, col: 1 },
            "spec.cloud".into(),
            "cloud cannot be combined with cluster.existing".into(),
            "an existing cluster skips the cloud and cluster layers; remove spec.cloud or use distribution: k3s".into(),
        ),
        (Some(Cluster::K3s(_)), None) => err(
            Pos { line: 1, col: 1 },
            "spec.cluster".into(),
            "a k3s cluster needs spec.cloud instances to run on".into(),
            "add spec.cloud with a role: server instance group, or use cluster.existing".into(),
        ),
        (Some(Cluster::K3s(_)), Some(cloud)) => {
            let servers: u32 = cloud
                .instances
                .iter()
                .filter(|g| g.role == Role::Server)
                .map(|g| g.count)
                .sum();
            if servers != 1 {
                err(
                    Pos { line: 1, col: 1 },
                    "spec.cloud.instances".into(),
                    format!("a k3s cluster needs exactly one server instance, found {servers}"),
                    "give one instance group role: server and count: 1 (agents use role: agent)".into(),
                );
            }
        }
        _ => {}
    }
    if env.cluster.is_none() && !(env.addons.is_empty() && env.apps.is_empty()) {
        err(
            Pos { line: 1, col: 1 },
            "spec.cluster".into(),
            "add-ons and apps need a cluster".into(),
            "add spec.cluster: { distribution: k3s, version: ... } or cluster.existing".into(),
        );
    }

    let secret_names: BTreeSet<&str> = env.secrets.iter().map(|s| s.name.as_str()).collect();
    check_components(env, files, &secret_names, &mut err);
}

fn check_cloud(
    cloud: &Cloud,
    files: &dyn CommitFiles,
    err: &mut impl FnMut(Pos, String, String, String),
) {
    let vpc = cloud.network.cidr;
    let subnets = &cloud.network.subnets;
    for (i, s) in subnets.iter().enumerate() {
        let field = format!("spec.cloud.network.subnets[{i}].cidr");
        if !vpc.contains(&s.cidr) {
            err(
                s.pos,
                field.clone(),
                format!(
                    "subnet {} ({}) is not inside the VPC block {vpc}",
                    s.name, s.cidr
                ),
                format!("choose a block inside {vpc}"),
            );
        } else if !(16..=28).contains(&s.cidr.prefix) {
            err(
                s.pos,
                field.clone(),
                format!("subnet {} has a /{} prefix", s.name, s.cidr.prefix),
                "AWS accepts subnet blocks from /16 to /28".into(),
            );
        }
        for other in &subnets[..i] {
            if s.cidr.overlaps(&other.cidr) {
                err(
                    s.pos,
                    field.clone(),
                    format!(
                        "subnet {} ({}) overlaps subnet {} ({})",
                        s.name, s.cidr, other.name, other.cidr
                    ),
                    "subnets of one VPC must not overlap".into(),
                );
            }
        }
        if !s.zone.starts_with(&cloud.region) || s.zone.len() <= cloud.region.len() {
            err(
                s.pos,
                format!("spec.cloud.network.subnets[{i}].zone"),
                format!("zone {:?} is not in region {}", s.zone, cloud.region),
                format!("use a zone of {} such as {}a", cloud.region, cloud.region),
            );
        }
    }
    let subnet_names: Vec<&str> = subnets.iter().map(|s| s.name.as_str()).collect();
    let sg_names: Vec<&str> = cloud
        .security_groups
        .iter()
        .map(|g| g.name.as_str())
        .collect();
    for (i, g) in cloud.security_groups.iter().enumerate() {
        let rules = g
            .ingress
            .iter()
            .map(|r| ("ingress", r))
            .chain(g.egress.iter().flatten().map(|r| ("egress", r)));
        for (dir, r) in rules {
            if let Peer::Group(name) = &r.peer {
                if !sg_names.contains(&name.as_str()) {
                    err(
                        g.pos,
                        format!("spec.cloud.securityGroups[{i}].{dir}"),
                        format!(
                            "security group {:?} referenced by {} does not exist",
                            name, g.name
                        ),
                        known("security groups", name, &sg_names),
                    );
                }
            }
        }
    }
    for (i, inst) in cloud.instances.iter().enumerate() {
        let base = format!("spec.cloud.instances[{i}]");
        if !subnet_names.contains(&inst.subnet.as_str()) {
            err(
                inst.pos,
                format!("{base}.subnet"),
                format!("subnet {:?} does not exist", inst.subnet),
                known("subnets", &inst.subnet, &subnet_names),
            );
        }
        for sg in &inst.security_groups {
            if !sg_names.contains(&sg.as_str()) {
                err(
                    inst.pos,
                    format!("{base}.securityGroups"),
                    format!("security group {sg:?} does not exist"),
                    known("security groups", sg, &sg_names),
                );
            }
        }
        let template = inst.user_data.as_deref().or(default_user_data(&inst.role));
        if let Some(t) = template {
            match super::load::resolve_path("templates", t) {
                Ok(path) if path.starts_with("templates/") => {
                    if !files.is_file(&path) {
                        err(
                            inst.pos,
                            format!("{base}.userData"),
                            format!("user-data template {path} does not exist in the commit"),
                            "name a file under templates/, e.g. cloud-init/k3s-server.yaml.j2"
                                .into(),
                        );
                    }
                }
                _ => err(
                    inst.pos,
                    format!("{base}.userData"),
                    format!("user-data template {t:?} points outside templates/"),
                    "name a file under templates/".into(),
                ),
            }
        }
    }
}

fn known(what: &str, name: &str, names: &[&str]) -> String {
    if names.is_empty() {
        return format!("no {what} are defined");
    }
    match suggest(name, names.iter().copied()) {
        Some(s) => format!("did you mean {s:?}? defined {what}: {}", names.join(", ")),
        None => format!("defined {what}: {}", names.join(", ")),
    }
}

fn check_components(
    env: &Environment,
    files: &dyn CommitFiles,
    secret_names: &BTreeSet<&str>,
    err: &mut impl FnMut(Pos, String, String, String),
) {
    let mut layer_of: BTreeMap<&str, (&str, usize, Pos)> = BTreeMap::new();
    for (layer, list) in [("addons", &env.addons), ("apps", &env.apps)] {
        for (i, c) in list.iter().enumerate() {
            if let Some((other, _, first)) = layer_of.get(c.name.as_str()) {
                err(
                    c.pos,
                    format!("spec.{layer}[{i}].name"),
                    format!("component name {:?} is also used in spec.{other}", c.name),
                    format!(
                        "first defined at line {}; add-on and app names share one namespace",
                        first.line
                    ),
                );
                continue;
            }
            layer_of.insert(&c.name, (layer, i, c.pos));
        }
    }
    let names: Vec<&str> = layer_of.keys().copied().collect();
    for (layer, list) in [("addons", &env.addons), ("apps", &env.apps)] {
        for (i, c) in list.iter().enumerate() {
            let base = format!("spec.{layer}[{i}]");
            match &c.source {
                Source::Template(t) => {
                    if !files.is_dir(&c.source_dir) {
                        err(
                            c.pos,
                            format!("{base}.template"),
                            format!(
                                "template directory {} does not exist in the commit",
                                c.source_dir
                            ),
                            format!("create templates/{t}/ with .j2 or .yaml manifests"),
                        );
                    }
                }
                Source::Path(p) => {
                    if !files.is_dir(&c.source_dir) {
                        err(
                            c.pos,
                            format!("{base}.path"),
                            format!(
                                "manifest directory {} does not exist in the commit",
                                c.source_dir
                            ),
                            format!(
                                "paths are relative to {}; {p:?} resolved to {}",
                                env.dir, c.source_dir
                            ),
                        );
                    }
                }
            }
            for dep in &c.depends_on {
                match layer_of.get(dep.as_str()) {
                    None => err(c.pos, format!("{base}.dependsOn"), format!("{:?} depends on {dep:?}, which does not exist", c.name), known("components", dep, &names)),
                    Some(_) if dep == &c.name => err(c.pos, format!("{base}.dependsOn"), format!("{:?} depends on itself", c.name), "remove it from its own dependsOn".into()),
                    Some(("apps", _, _)) if layer == "addons" => err(
                        c.pos,
                        format!("{base}.dependsOn"),
                        format!("add-on {:?} depends on app {dep:?}, but apps start only after every add-on has converged", c.name),
                        "move the dependency to spec.apps, or make the app an add-on".into(),
                    ),
                    Some(_) => {}
                }
            }
            for s in &c.secrets {
                for (key, secret) in &s.data {
                    if !secret_names.contains(secret.as_str()) {
                        let listed: Vec<&str> = secret_names.iter().copied().collect();
                        err(
                            s.pos,
                            format!("{base}.secrets.{}.data.{key}", s.name),
                            format!("secret {secret:?} is not declared in spec.secrets"),
                            known("secrets", secret, &listed),
                        );
                    }
                }
            }
        }
    }
    for cycle in find_cycles(env) {
        let first = cycle[0];
        let (layer, i, pos) = layer_of[first];
        err(
            pos,
            format!("spec.{layer}[{i}].dependsOn"),
            format!("dependency cycle: {}", cycle.join(" -> ")),
            "remove one of these dependsOn entries".into(),
        );
    }
}

/// Each elementary cycle found by depth-first search, reported once, starting at its smallest name.
fn find_cycles(env: &Environment) -> Vec<Vec<&str>> {
    let graph: BTreeMap<&str, Vec<&str>> = env
        .addons
        .iter()
        .chain(&env.apps)
        .map(|c| {
            (
                c.name.as_str(),
                c.depends_on.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    let mut cycles: Vec<Vec<&str>> = Vec::new();
    let mut seen: BTreeSet<Vec<&str>> = BTreeSet::new();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    for &start in graph.keys() {
        // Iterative DFS: (node, next edge index); `path` mirrors the stack.
        let mut stack: Vec<(&str, usize)> = vec![(start, 0)];
        let mut on_path: Vec<&str> = vec![start];
        while let Some((node, edge)) = stack.last_mut() {
            let deps = graph.get(node).map(Vec::as_slice).unwrap_or(&[]);
            if *edge >= deps.len() {
                done.insert(node);
                stack.pop();
                on_path.pop();
                continue;
            }
            let next = deps[*edge];
            *edge += 1;
            if next == *node || !graph.contains_key(next) {
                continue; // self-dependency and unknown names are reported elsewhere
            }
            if let Some(at) = on_path.iter().position(|n| *n == next) {
                let mut cycle: Vec<&str> = on_path[at..].to_vec();
                let min = cycle
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, n)| **n)
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                cycle.rotate_left(min);
                if seen.insert(cycle.clone()) {
                    let mut shown = cycle.clone();
                    shown.push(cycle[0]);
                    cycles.push(shown);
                }
                continue;
            }
            if done.contains(next) {
                continue;
            }
            stack.push((next, 0));
            on_path.push(next);
        }
    }
    cycles
}
