//! Checks that need the whole model: references, address ranges, dependency cycles and the files
//! the environment points at in the commit.

use super::diag::{listing, suggest, Diagnostic};
use super::load::CommitFiles;
use super::model::*;
use super::spans::Spans;
use super::yaml::Pos;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

/// Default user-data template (under templates/) for instances of a role.
pub fn default_user_data(role: &Role) -> Option<&'static str> {
    match role {
        Role::Server => Some("cloud-init/k3s-server.yaml.j2"),
        Role::Agent => Some("cloud-init/k3s-agent.yaml.j2"),
        Role::None => None,
    }
}

pub fn check(env: &Environment, files: &dyn CommitFiles, out: &mut Vec<Diagnostic>) {
    let mut c = Validator {
        file: env.file.as_str(),
        spans: &env.spans,
        out,
    };
    if let Some(cloud) = &env.cloud {
        check_cloud(&mut c, cloud, files);
    }
    match (&env.cluster, &env.cloud) {
        (Some(Cluster::Existing(_)), Some(_)) => c.err(
            "spec.cloud",
            "cloud cannot be combined with cluster.existing".into(),
            "an existing cluster skips the cloud and cluster layers; remove spec.cloud or use distribution: k3s".into(),
        ),
        (Some(Cluster::K3s(_)), None) => c.err(
            "spec.cluster",
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
                c.err(
                    "spec.cloud.instances",
                    format!("a k3s cluster needs exactly one server instance, found {servers}"),
                    "give one instance group role: server and count: 1 (agents use role: agent)"
                        .into(),
                );
            }
            // A k3s node downloads k3s (get.k3s.io, GitHub releases) at boot. A private subnet
            // has no route to the internet here: phoenix builds no NAT gateway, so the node
            // would boot without k3s and the gate would time out much later.
            for (i, g) in cloud.instances.iter().enumerate() {
                if g.role == Role::None {
                    continue;
                }
                let Some(subnet) = cloud.network.subnets.iter().find(|s| s.name == g.subnet) else {
                    continue;
                };
                if !subnet.public {
                    c.err(
                        &format!("{}.subnet", c.spans.item("spec.cloud.instances", i)),
                        format!(
                            "instance group {} (role {}) is in subnet {}, which is private: a k3s node downloads k3s at boot and a private subnet has no route to the internet (phoenix builds no NAT gateway)",
                            g.name,
                            role_name(&g.role),
                            subnet.name
                        ),
                        format!(
                            "put the group in a public subnet, or set public: true on subnet {}",
                            subnet.name
                        ),
                    );
                }
            }
        }
        _ => {}
    }
    // A key pair without publicKey is derived from the cluster secret (the same on every
    // machine); an env without a k3s cluster has no secret to derive it from.
    if let Some(kp) = env.cloud.as_ref().and_then(|c| c.key_pair.as_ref()) {
        // A publicKey that failed to load is reported where it is, not again here.
        let written = c.spans.value("spec.cloud.keyPair.publicKey").is_some();
        if kp.public_key.is_none() && !written && !matches!(env.cluster, Some(Cluster::K3s(_))) {
            c.err(
                "spec.cloud.keyPair",
                format!(
                    "key pair {} has no publicKey, and without a k3s cluster there is no cluster secret (spec.cluster.secret) to derive it from",
                    kp.name
                ),
                "set publicKey: env:NAME or file:NAME (an OpenSSH public key); phoenix keeps no key of its own in $PHOENIX_HOME".into(),
            );
        }
    }
    if env.cluster.is_none() && !(env.addons.is_empty() && env.apps.is_empty()) {
        // The field is missing, so point at the spec that should hold it.
        c.err(
            "spec.cluster",
            "add-ons and apps need a cluster".into(),
            "add spec.cluster: { distribution: k3s, version: ... } or cluster.existing".into(),
        );
    }

    super::volumes::check(env, c.spans, |pos, field, msg, help| {
        c.out
            .push(Diagnostic::new(c.file, pos, field, msg).help(help))
    });
    super::failover::check(env, c.spans, |pos, field, msg, help| {
        c.out
            .push(Diagnostic::new(c.file, pos, field, msg).help(help))
    });
    super::dns::check(env, c.spans, |pos, field, msg, help| {
        c.out
            .push(Diagnostic::new(c.file, pos, field, msg).help(help))
    });

    let secret_names: BTreeSet<&str> = env.secrets.iter().map(|s| s.name.as_str()).collect();
    check_components(&mut c, env, files, &secret_names);

    // A check's CA bundle is read from the commit when the check runs: it must be there.
    for (list, key) in [(&env.addons, "spec.addons"), (&env.apps, "spec.apps")] {
        for (i, comp) in list.iter().enumerate() {
            for (j, check) in comp.checks.iter().enumerate() {
                let Some(ca) = &check.ca else { continue };
                let path = format!("{}/{ca}", env.dir);
                if !files.is_file(&path) {
                    let field = format!(
                        "{}.ca",
                        c.spans.item(&format!("{}.checks", c.spans.item(key, i)), j)
                    );
                    c.err(
                        &field,
                        format!("CA file {path} does not exist in the commit"),
                        "commit the PEM CA bundle, with the path relative to the environment directory".into(),
                    );
                }
            }
        }
    }
}

/// Collects diagnostics, placing each at the value its field path names.
struct Validator<'a> {
    file: &'a str,
    spans: &'a Spans,
    out: &'a mut Vec<Diagnostic>,
}

impl Validator<'_> {
    fn err(&mut self, field: &str, msg: String, help: String) {
        let pos = self.spans.at(field);
        self.err_at(pos, field, msg, help);
    }

    fn err_at(&mut self, pos: Pos, field: &str, msg: String, help: String) {
        self.out
            .push(Diagnostic::new(self.file, pos, field, msg).help(help));
    }
}

fn check_cloud(c: &mut Validator, cloud: &Cloud, files: &dyn CommitFiles) {
    let vpc = cloud.network.cidr;
    let subnets = &cloud.network.subnets;
    for (i, s) in subnets.iter().enumerate() {
        let base = c.spans.item("spec.cloud.network.subnets", i);
        let field = format!("{base}.cidr");
        if !vpc.contains(&s.cidr) {
            c.err(
                &field,
                format!(
                    "subnet {} ({}) is not inside the VPC block {vpc}",
                    s.name, s.cidr
                ),
                format!("choose a block inside {vpc}"),
            );
        } else if !(16..=28).contains(&s.cidr.prefix) {
            c.err(
                &field,
                format!("subnet {} has a /{} prefix", s.name, s.cidr.prefix),
                "AWS accepts subnet blocks from /16 to /28".into(),
            );
        }
        for other in &subnets[..i] {
            if s.cidr.overlaps(&other.cidr) {
                c.err(
                    &field,
                    format!(
                        "subnet {} ({}) overlaps subnet {} ({})",
                        s.name, s.cidr, other.name, other.cidr
                    ),
                    "subnets of one VPC must not overlap".into(),
                );
            }
        }
        if !in_region(&s.zone, &cloud.region) {
            c.err(
                &format!("{base}.zone"),
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
        let base = c.spans.item("spec.cloud.securityGroups", i);
        let rules = [
            ("ingress", "fromGroup", Some(&g.ingress)),
            ("egress", "toGroup", g.egress.as_ref()),
        ];
        for (dir, key, list) in rules {
            let Some(list) = list else { continue };
            let list_path = format!("{base}.{dir}");
            for (j, r) in list.iter().enumerate() {
                let Peer::Group(name) = &r.peer else { continue };
                if !sg_names.contains(&name.as_str()) {
                    let field = format!("{}.{key}", c.spans.item(&list_path, j));
                    c.err(
                        &field,
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
        let base = c.spans.item("spec.cloud.instances", i);
        if !subnet_names.contains(&inst.subnet.as_str()) {
            c.err(
                &format!("{base}.subnet"),
                format!("subnet {:?} does not exist", inst.subnet),
                known("subnets", &inst.subnet, &subnet_names),
            );
        }
        let sgs_path = format!("{base}.securityGroups");
        for (k, sg) in inst.security_groups.iter().enumerate() {
            if !sg_names.contains(&sg.as_str()) {
                c.err(
                    &c.spans.item(&sgs_path, k),
                    format!("security group {sg:?} does not exist"),
                    known("security groups", sg, &sg_names),
                );
            }
        }
        check_user_data(c, &base, inst, files);
    }
}

/// A zone of a region is the region name followed by letters (us-east-1a, not us-east-10a), or
/// by a dash and a Local or Wavelength Zone suffix (us-east-1-bos-1a).
pub(super) fn in_region(zone: &str, region: &str) -> bool {
    zone.strip_prefix(region).is_some_and(|rest| {
        let letters = !rest.is_empty() && rest.chars().all(|ch| ch.is_ascii_lowercase());
        let local = rest.len() > 1
            && rest.starts_with('-')
            && rest
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-');
        letters || local
    })
}

fn check_user_data(c: &mut Validator, base: &str, inst: &InstanceGroup, files: &dyn CommitFiles) {
    let field = format!("{base}.userData");
    let (template, written) = match (&inst.user_data, default_user_data(&inst.role)) {
        (Some(t), _) => (t.as_str(), true),
        (None, Some(t)) => (t, false),
        (None, None) => return,
    };
    // A default template is not written in the file: point at the role that chose it.
    let pos = if written {
        c.spans.at(&field)
    } else {
        c.spans.at(&format!("{base}.role"))
    };
    match super::load::resolve_path("templates", template) {
        Ok(path) if path.starts_with("templates/") => {
            if files.is_file(&path) {
                return;
            }
            let (msg, help) = if written {
                (
                    format!("user-data template {path} does not exist in the commit"),
                    "name a file under templates/, e.g. cloud-init/k3s-server.yaml.j2".to_string(),
                )
            } else {
                (
                    format!(
                        "user-data template {path}, the default for role {}, does not exist in the commit",
                        role_name(&inst.role)
                    ),
                    format!("add {path} to the repository, or set userData to a file under templates/"),
                )
            };
            c.err_at(pos, &field, msg, help);
        }
        _ => c.err_at(
            pos,
            &field,
            format!("user-data template {template:?} points outside templates/"),
            "name a file under templates/, e.g. cloud-init/k3s-server.yaml.j2".into(),
        ),
    }
}

fn role_name(role: &Role) -> &'static str {
    match role {
        Role::Server => "server",
        Role::Agent => "agent",
        Role::None => "none",
    }
}

pub(super) fn known_names(what: &str, name: &str, names: &[&str]) -> String {
    known(what, name, names)
}

fn known(what: &str, name: &str, names: &[&str]) -> String {
    if names.is_empty() {
        return format!("no {what} are defined");
    }
    match suggest(name, names.iter().copied()) {
        Some(s) => format!("did you mean {s:?}? defined {what}: {}", listing(names)),
        None => format!("defined {what}: {}", listing(names)),
    }
}

/// Where a component is defined: its layer (`addons` or `apps`), the field path of its list
/// item and the position of its name.
struct Place<'a> {
    layer: &'static str,
    base: String,
    component: &'a Component,
}

fn check_components(
    c: &mut Validator,
    env: &Environment,
    files: &dyn CommitFiles,
    secret_names: &BTreeSet<&str>,
) {
    let mut places: BTreeMap<&str, Place> = BTreeMap::new();
    let mut all: Vec<Place> = Vec::new();
    for (layer, list) in [("addons", &env.addons), ("apps", &env.apps)] {
        for (i, comp) in list.iter().enumerate() {
            let base = c.spans.item(&format!("spec.{layer}"), i);
            if let Some(first) = places.get(comp.name.as_str()) {
                c.err_at(
                    comp.pos,
                    &format!("{base}.name"),
                    format!(
                        "component name {:?} is also used in spec.{}",
                        comp.name, first.layer
                    ),
                    format!(
                        "first defined at line {}; add-on and app names share one namespace",
                        first.component.pos.line
                    ),
                );
            } else {
                places.insert(
                    &comp.name,
                    Place {
                        layer,
                        base: base.clone(),
                        component: comp,
                    },
                );
            }
            all.push(Place {
                layer,
                base,
                component: comp,
            });
        }
    }
    let names: Vec<&str> = places.keys().copied().collect();
    let listed: Vec<&str> = secret_names.iter().copied().collect();
    for place in &all {
        let (layer, base, comp) = (place.layer, place.base.as_str(), place.component);
        match &comp.source {
            Source::Template(t) => {
                if !files.is_dir(&comp.source_dir) {
                    c.err(
                        &format!("{base}.template"),
                        format!(
                            "template directory {} does not exist in the commit",
                            comp.source_dir
                        ),
                        format!("create templates/{t}/ with .j2 or .yaml manifests"),
                    );
                }
            }
            Source::Path(p) => {
                if !files.is_dir(&comp.source_dir) {
                    c.err(
                        &format!("{base}.path"),
                        format!(
                            "manifest directory {} does not exist in the commit",
                            comp.source_dir
                        ),
                        format!(
                            "paths are relative to {}; {p:?} resolved to {}",
                            env.dir, comp.source_dir
                        ),
                    );
                }
            }
            Source::Chart(chart) => match &chart.from {
                ChartFrom::Path(p) => {
                    let packaged = comp.source_dir.ends_with(".tgz");
                    let found = if packaged {
                        files.is_file(&comp.source_dir)
                    } else {
                        files.is_file(&format!("{}/Chart.yaml", comp.source_dir))
                    };
                    if !found {
                        c.err(
                            &format!("{base}.chart.path"),
                            if packaged {
                                format!("packaged chart {} does not exist in the commit", comp.source_dir)
                            } else {
                                format!("chart directory {} (with a Chart.yaml) does not exist in the commit", comp.source_dir)
                            },
                            format!(
                                "paths are relative to {}; {p:?} resolved to {}; name a chart directory or a .tgz made by `helm package`",
                                env.dir, comp.source_dir
                            ),
                        );
                    }
                }
                ChartFrom::Repo {
                    name,
                    version,
                    digest,
                    ..
                } => {
                    if digest.is_empty() && !files.vendoring() {
                        c.err(
                            &format!("{base}.chart.repo"),
                            format!("chart {name} {version} has no digest"),
                            format!(
                                "run `phoenix vendor {}`: it fetches the chart, checks it against the repository's index and prints the digest to declare as chart.digest; commit both",
                                env.name
                            ),
                        );
                    } else if !files.is_file(&comp.source_dir) {
                        c.err(
                            &format!("{base}.chart.repo"),
                            format!(
                                "chart {name} {version} is not vendored: {} does not exist in the commit",
                                comp.source_dir
                            ),
                            format!(
                                "run `phoenix vendor {}` and commit what it writes: a rebuild uses only what is in the commit",
                                env.name
                            ),
                        );
                    }
                }
            },
            Source::Kustomize(p) => {
                let found = ["kustomization.yaml", "kustomization.yml", "Kustomization"]
                    .iter()
                    .any(|f| files.is_file(&format!("{}/{f}", comp.source_dir)));
                if !found {
                    c.err(
                        &format!("{base}.kustomize"),
                        format!(
                            "kustomization directory {} (with a kustomization.yaml) does not exist in the commit",
                            comp.source_dir
                        ),
                        format!(
                            "paths are relative to {}; {p:?} resolved to {}",
                            env.dir, comp.source_dir
                        ),
                    );
                }
            }
        }
        let deps_path = format!("{base}.dependsOn");
        for (k, dep) in comp.depends_on.iter().enumerate() {
            let field = c.spans.item(&deps_path, k);
            match places.get(dep.as_str()) {
                None => c.err(
                    &field,
                    format!("{:?} depends on {dep:?}, which does not exist", comp.name),
                    known("components", dep, &names),
                ),
                Some(_) if dep == &comp.name => c.err(
                    &field,
                    format!("{:?} depends on itself", comp.name),
                    "remove it from its own dependsOn".into(),
                ),
                Some(target) if target.layer == "apps" && layer == "addons" => c.err(
                    &field,
                    format!(
                        "add-on {:?} depends on app {dep:?}, but apps start only after every add-on has converged",
                        comp.name
                    ),
                    "move the dependency to spec.apps, or make the app an add-on".into(),
                ),
                Some(_) => {}
            }
        }
        let secrets_path = format!("{base}.secrets");
        for (j, s) in comp.secrets.iter().enumerate() {
            let secret_base = c.spans.item(&secrets_path, j);
            for (key, secret) in &s.data {
                if !secret_names.contains(secret.as_str()) {
                    c.err(
                        &format!("{secret_base}.data.{key}"),
                        format!("secret {secret:?} is not declared in spec.secrets"),
                        known("secrets", secret, &listed),
                    );
                }
            }
        }
    }
    for cycle in find_cycles(&places) {
        let (Some(first), Some(second)) = (cycle.members.first(), cycle.members.get(1)) else {
            continue;
        };
        let Some(place) = places.get(first) else {
            continue;
        };
        let comp = place.component;
        // Point at the dependsOn entry that starts the cycle.
        let k = comp
            .depends_on
            .iter()
            .position(|d| d == second)
            .unwrap_or(0);
        let field = c.spans.item(&format!("{}.dependsOn", place.base), k);
        let mut shown = cycle.members.clone();
        shown.push(first);
        let help = if cycle.knot.len() > cycle.members.len() {
            format!(
                "remove one of these dependsOn entries; {} components depend on each other in one knot: {}",
                cycle.knot.len(),
                listing(&cycle.knot)
            )
        } else {
            "remove one of these dependsOn entries".to_string()
        };
        c.err(
            &field,
            format!("dependency cycle: {}", shown.join(" -> ")),
            help,
        );
    }
}

/// One dependency cycle to report: the shortest cycle through the smallest name of a group of
/// components that all reach each other (`knot`, a strongly connected component).
struct Cycle<'a> {
    members: Vec<&'a str>,
    knot: Vec<&'a str>,
}

/// One cycle per strongly connected component of the dependsOn graph.
///
/// Listing every elementary cycle would be exponential (a complete graph of 150 components
/// has astronomically many); one named cycle per knot is what a user needs to start untangling
/// it, and the help line names every member of the knot. Both searches are iterative, so no
/// input drives recursion, and linear in the size of the graph per knot.
fn find_cycles<'a>(places: &BTreeMap<&'a str, Place<'a>>) -> Vec<Cycle<'a>> {
    let names: Vec<&'a str> = places.keys().copied().collect();
    let id: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    // Edges in the order written, without self-loops and unknown names (reported elsewhere).
    let edges: Vec<Vec<usize>> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            places[n]
                .component
                .depends_on
                .iter()
                .filter_map(|d| id.get(d.as_str()).copied())
                .filter(|&j| j != i)
                .collect()
        })
        .collect();
    let mut cycles = Vec::new();
    for knot in strongly_connected(&edges) {
        if knot.len() < 2 {
            continue;
        }
        // Names are sorted, so the smallest index is the smallest name.
        let Some(&start) = knot.iter().min() else {
            continue;
        };
        let inside: HashSet<usize> = knot.iter().copied().collect();
        let Some(path) = shortest_cycle(&edges, start, &inside) else {
            continue;
        };
        let mut members_of_knot: Vec<&str> = knot.iter().map(|&i| names[i]).collect();
        members_of_knot.sort_unstable();
        cycles.push(Cycle {
            members: path.iter().map(|&i| names[i]).collect(),
            knot: members_of_knot,
        });
    }
    cycles.sort_by(|a, b| a.members.cmp(&b.members));
    cycles
}

/// Tarjan's algorithm with an explicit stack.
fn strongly_connected(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    const UNSEEN: usize = usize::MAX;
    let n = edges.len();
    let mut order = vec![UNSEEN; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack: Vec<usize> = Vec::new();
    let mut next = 0;
    let mut out = Vec::new();
    for root in 0..n {
        if order[root] != UNSEEN {
            continue;
        }
        // (node, index of the next edge to follow)
        let mut work: Vec<(usize, usize)> = vec![(root, 0)];
        order[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (v, ref mut e)) = work.last_mut() {
            if let Some(&w) = edges[v].get(*e) {
                *e += 1;
                if order[w] == UNSEEN {
                    order[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(order[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == order[v] {
                let mut knot = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    knot.push(w);
                    if w == v {
                        break;
                    }
                }
                out.push(knot);
            }
        }
    }
    out
}

/// The shortest path from `start` back to itself inside `inside`, by breadth-first search that
/// follows edges in the order they were written; the result starts at `start`.
fn shortest_cycle(
    edges: &[Vec<usize>],
    start: usize,
    inside: &HashSet<usize>,
) -> Option<Vec<usize>> {
    let mut came_from: HashMap<usize, usize> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in &edges[v] {
            if !inside.contains(&w) {
                continue;
            }
            if w == start {
                let mut path = vec![v];
                let mut at = v;
                while at != start {
                    at = *came_from.get(&at)?;
                    path.push(at);
                }
                path.reverse();
                return Some(path);
            }
            if let std::collections::hash_map::Entry::Vacant(slot) = came_from.entry(w) {
                slot.insert(v);
                queue.push_back(w);
            }
        }
    }
    None
}
