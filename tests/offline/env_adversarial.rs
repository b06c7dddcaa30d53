//! Hostile environment definitions, generated in memory: huge files, deep nesting, alias bombs,
//! thousands of components, long dependency cycles, path traversal, odd bytes, every YAML scalar
//! type in every field and a few thousand seeded random mutations of a valid file.
//!
//! Each input must end in `Ok` or in `Err` with at least one diagnostic — never a panic — within a
//! bounded time, and the loader must never ask for a path outside the commit.

use phoenix::env::{load, CommitFiles, Diagnostic, Environment, MemFiles};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The stack a Tokio worker or a test thread gets by default: the loader must fit in it.
const STACK: usize = 2 * 1024 * 1024;

/// A commit that records every path the loader asks about.
struct Recording {
    inner: MemFiles,
    asked: Mutex<Vec<String>>,
}

impl Recording {
    fn note(&self, path: &str) {
        self.asked.lock().unwrap().push(path.to_string());
    }
}

impl CommitFiles for Recording {
    fn read_text(&self, path: &str) -> Result<String, String> {
        self.note(path);
        self.inner.read_text(path)
    }
    fn is_file(&self, path: &str) -> bool {
        self.note(path);
        self.inner.is_file(path)
    }
    fn is_dir(&self, path: &str) -> bool {
        self.note(path);
        self.inner.is_dir(path)
    }
    fn files_under(&self, dir: &str) -> Result<Vec<String>, String> {
        self.note(dir);
        self.inner.files_under(dir)
    }
}

/// A path the loader may ask for: repo-relative, normalised, without anything that could leave
/// the commit.
fn inside_commit(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\\')
        && !path.contains('\0')
        && path
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..")
}

struct Outcome {
    result: Result<Environment, Vec<Diagnostic>>,
    asked: Vec<String>,
    took: Duration,
}

impl Outcome {
    fn diags(&self) -> &[Diagnostic] {
        match &self.result {
            Ok(_) => &[],
            Err(d) => d,
        }
    }

    fn has(&self, field: &str, message: &str) -> bool {
        self.diags()
            .iter()
            .any(|d| d.field == field && d.message.contains(message))
    }

    fn shown(&self) -> String {
        self.diags()
            .iter()
            .take(20)
            .map(|d| format!("{}:{} {} | {}", d.line, d.column, d.field, d.message))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Loads `name` from `files` on a thread with a normal stack; fails the test on a panic, on
/// `Err` without diagnostics, on a path outside the commit, or when it takes longer than `limit`.
fn run(files: MemFiles, name: &str, limit: Duration, what: &str) -> Outcome {
    let files = Arc::new(Recording {
        inner: files,
        asked: Mutex::new(Vec::new()),
    });
    let (tx, rx) = mpsc::channel();
    let shared = Arc::clone(&files);
    let env = name.to_string();
    thread::Builder::new()
        .name("loader".into())
        .stack_size(STACK)
        .spawn(move || {
            let start = Instant::now();
            let result = catch_unwind(AssertUnwindSafe(|| load(&*shared, &env)));
            let _ = tx.send((result, start.elapsed()));
        })
        .expect("spawn loader thread");
    let (result, took) = match rx.recv_timeout(limit) {
        Ok(r) => r,
        Err(_) => panic!("{what}: the loader did not finish within {limit:?}"),
    };
    let result = match result {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{what}: the loader panicked: {msg}")
        }
    };
    let asked = files.asked.lock().unwrap().clone();
    for path in &asked {
        assert!(
            inside_commit(path),
            "{what}: the loader asked for {path:?}, which is not a path inside the commit"
        );
    }
    if let Err(diags) = &result {
        assert!(!diags.is_empty(), "{what}: Err without any diagnostic");
        for d in diags {
            assert!(
                !d.message.trim().is_empty(),
                "{what}: a diagnostic without a message: {d:?}"
            );
            assert!(!d.file.is_empty(), "{what}: a diagnostic without a file");
        }
    }
    Outcome {
        result,
        asked,
        took,
    }
}

fn env_file(name: &str) -> String {
    format!("environments/{name}/environment.yaml")
}

fn commit(name: &str, yaml: &str) -> MemFiles {
    support_files(name).with(&env_file(name), yaml)
}

/// Templates and manifests the base environment refers to.
fn support_files(name: &str) -> MemFiles {
    MemFiles::default()
        .with("templates/cloud-init/k3s-server.yaml.j2", "#cloud-config\n")
        .with("templates/cloud-init/k3s-agent.yaml.j2", "#cloud-config\n")
        .with("templates/addons/ingress/ns.yaml.j2", "kind: Namespace\n")
        .with(
            &format!("environments/{name}/apps/web/deploy.yaml"),
            "kind: Deployment\n",
        )
}

fn header(name: &str) -> String {
    format!("apiVersion: phoenix/v1\nkind: Environment\nmetadata:\n  name: {name}\n")
}

/// A valid environment in block style, one scalar per line, using most of the schema.
fn base(name: &str) -> String {
    header(name)
        + r#"  protected: false
  labels:
    team: platform
spec:
  recoveryObjective: 10m
  values:
    domain: base.example
  timeouts:
    cloud: 10m
    apps: 2m
  secrets:
    - name: db-password
      from: env:DB_PASSWORD
  cloud:
    provider: aws
    region: us-east-1
    allowStopModifyStart: false
    network:
      cidr: 10.40.0.0/16
      subnets:
        - name: public-a
          cidr: 10.40.1.0/24
          zone: us-east-1a
          public: true
    securityGroups:
      - name: cluster
        description: servers and agents
        ingress:
          - protocol: tcp
            port: 6443
            from: 0.0.0.0/0
          - ports: 30000-32767
            fromGroup: cluster
        egress:
          - protocol: all
            to: 0.0.0.0/0
    keyPair:
      name: base-key
      publicKey: env:SSH_KEY
    instances:
      - name: server
        role: server
        count: 1
        type: t3.medium
        image:
          owner: amazon
          name: al2023-ami-*
        subnet: public-a
        securityGroups:
          - cluster
        rootVolumeSize: 20
        instanceProfile: node
        userData: cloud-init/k3s-server.yaml.j2
        tags:
          owner: platform
      - name: agent
        role: agent
        count: 2
        type: t3.medium
        image:
          id: ami-0123456789abcdef0
        subnet: public-a
  cluster:
    distribution: k3s
    version: v1.31.4+k3s1
    endpoint: public
    secret: env:PHOENIX_TEST_CLUSTER_SECRET
  addons:
    - name: ingress
      template: addons/ingress
      namespace: ingress
      wait: 5m
      forceConflicts: false
  apps:
    - name: web
      path: apps/web
      namespace: web
      dependsOn:
        - ingress
      wait: 3m
      checks:
        - http: http://web.example/
          expect: 200
          timeout: 30s
      secrets:
        - name: web-db
          namespace: web
          data:
            password: db-password
"#
}

const QUICK: Duration = Duration::from_secs(20);
const SLOW: Duration = Duration::from_secs(90);

#[test]
fn the_base_environment_is_valid() {
    let out = run(commit("base", &base("base")), "base", QUICK, "base");
    assert!(out.result.is_ok(), "{}", out.shown());
}

// ------------------------------------------------------------------------------------------------
// Size

#[test]
fn five_megabytes_of_keys_is_refused_quickly() {
    let mut yaml = header("huge") + "spec:\n  values:\n";
    let mut i = 0;
    while yaml.len() < 5 * 1024 * 1024 {
        yaml.push_str(&format!("    key{i:07}: value\n"));
        i += 1;
    }
    let out = run(commit("huge", &yaml), "huge", SLOW, "5 MB of keys");
    assert!(
        out.diags().iter().any(|d| d.message.contains("nodes")),
        "expected the node limit to be reported:\n{}",
        out.shown()
    );
}

#[test]
fn five_megabytes_of_unknown_top_level_keys_is_refused() {
    let mut yaml = header("huge");
    let mut i = 0;
    while yaml.len() < 5 * 1024 * 1024 {
        yaml.push_str(&format!("unknown{i:07}: x\n"));
        i += 1;
    }
    let out = run(commit("huge", &yaml), "huge", SLOW, "5 MB of unknown keys");
    assert!(out.result.is_err());
}

#[test]
fn many_keys_below_the_node_limit_load() {
    // 60,000 values entries are 120,000 nodes: under the limit, so this must load.
    let mut yaml = base("many");
    let at = yaml.find("    domain: base.example\n").unwrap();
    let mut extra = String::new();
    for i in 0..60_000 {
        extra.push_str(&format!("    key{i:05}: {i}\n"));
    }
    yaml.insert_str(at, &extra);
    let out = run(commit("many", &yaml), "many", SLOW, "60k values");
    assert!(out.result.is_ok(), "{}", out.shown());
}

#[test]
fn tens_of_thousands_of_unknown_fields_are_all_reported() {
    let mut yaml = header("unknowns") + "spec:\n  cloud:\n";
    for i in 0..30_000 {
        yaml.push_str(&format!("    regoin{i}: us-east-1\n"));
    }
    let out = run(
        commit("unknowns", &yaml),
        "unknowns",
        SLOW,
        "30k unknown fields",
    );
    let unknown = out
        .diags()
        .iter()
        .filter(|d| d.message.starts_with("unknown field"))
        .count();
    assert_eq!(unknown, 30_000, "{}", out.shown());
}

#[test]
fn a_five_megabyte_scalar_loads() {
    let yaml = format!(
        "{}spec:\n  values:\n    blob: \"{}\"\n",
        header("blob"),
        "x".repeat(5 * 1024 * 1024)
    );
    let out = run(commit("blob", &yaml), "blob", SLOW, "5 MB scalar");
    assert!(out.result.is_ok(), "{}", out.shown());
}

#[test]
fn thousands_of_components_in_a_chain_load() {
    let mut yaml = base("chain");
    for i in 0..3000 {
        let dep = if i == 0 {
            "web".to_string()
        } else {
            format!("c{:04}", i - 1)
        };
        yaml.push_str(&format!(
            "    - {{ name: c{i:04}, path: apps/web, dependsOn: [{dep}] }}\n"
        ));
    }
    let out = run(commit("chain", &yaml), "chain", SLOW, "3000 chained apps");
    let env = out
        .result
        .as_ref()
        .unwrap_or_else(|_| panic!("{}", out.shown()));
    assert_eq!(env.apps.len(), 3001);
}

#[test]
fn thousands_of_broken_references_are_all_reported_in_bounded_time() {
    let mut yaml = base("broken");
    for i in 0..3000 {
        yaml.push_str(&format!(
            "    - {{ name: c{i:04}, path: apps/web, dependsOn: [missing{i:04}] }}\n"
        ));
    }
    let out = run(
        commit("broken", &yaml),
        "broken",
        SLOW,
        "3000 broken dependsOn",
    );
    let missing = out
        .diags()
        .iter()
        .filter(|d| d.message.contains("which does not exist"))
        .count();
    assert_eq!(missing, 3000, "{}", out.shown());
}

#[test]
fn thousands_of_subnets_and_instance_groups_load() {
    let mut yaml = header("wide") + "spec:\n  cloud:\n    region: us-east-1\n    network:\n      cidr: 10.40.0.0/16\n      subnets:\n";
    for i in 0..4096u32 {
        yaml.push_str(&format!(
            "        - {{ name: s{i}, cidr: 10.40.{}.{}/28, zone: us-east-1a }}\n",
            i / 16,
            (i % 16) * 16
        ));
    }
    yaml.push_str("    instances:\n");
    for i in 0..3000 {
        yaml.push_str(&format!(
            "      - {{ name: g{i}, type: t3.micro, image: {{ id: ami-1 }}, subnet: s{i} }}\n"
        ));
    }
    let out = run(commit("wide", &yaml), "wide", SLOW, "4096 subnets");
    let env = out
        .result
        .as_ref()
        .unwrap_or_else(|_| panic!("{}", out.shown()));
    let cloud = env.cloud.as_ref().unwrap();
    assert_eq!(cloud.network.subnets.len(), 4096);
    assert_eq!(cloud.instances.len(), 3000);
}

#[test]
fn a_densely_connected_dependency_graph_ends_in_bounded_time() {
    // Every component depends on every other one: a worst case for cycle reporting.
    let n = 150;
    let names: Vec<String> = (0..n).map(|i| format!("c{i:03}")).collect();
    let mut yaml =
        header("dense") + "spec:\n  cluster: { existing: { kubeconfig: kc } }\n  apps:\n";
    for name in &names {
        let deps: Vec<&str> = names
            .iter()
            .filter(|d| *d != name)
            .map(String::as_str)
            .collect();
        yaml.push_str(&format!(
            "    - {{ name: {name}, path: apps/web, dependsOn: [{}] }}\n",
            deps.join(", ")
        ));
    }
    let out = run(commit("dense", &yaml), "dense", SLOW, "complete graph");
    assert!(
        out.diags()
            .iter()
            .any(|d| d.message.contains("dependency cycle")),
        "{}",
        out.shown()
    );
    assert!(
        out.diags().len() <= 10 * n,
        "{} diagnostics for {n} components: cycle reporting explodes",
        out.diags().len()
    );
}

// ------------------------------------------------------------------------------------------------
// Nesting and aliases

#[test]
fn deep_flow_nesting_is_refused() {
    for depth in [65, 100, 1000, 100_000, 1_000_000] {
        for (open, close) in [("[", "]"), ("{a: ", "}")] {
            let yaml = format!(
                "{}spec:\n  values:\n    v: {}{}\n",
                header("deep"),
                open.repeat(depth),
                close.repeat(depth)
            );
            let out = run(
                commit("deep", &yaml),
                "deep",
                SLOW,
                &format!("{open} x {depth}"),
            );
            assert!(
                out.result.is_err(),
                "{open} nested {depth} deep was accepted"
            );
        }
    }
}

#[test]
fn deep_block_nesting_is_refused() {
    for depth in [70, 500, 3000] {
        let mut yaml = header("deep") + "spec:\n  values:\n";
        for level in 0..depth {
            yaml.push_str(&" ".repeat(4 + level));
            yaml.push_str("a:\n");
        }
        let out = run(commit("deep", &yaml), "deep", SLOW, "block nesting");
        assert!(out.result.is_err(), "block nesting {depth} accepted");
        let mut yaml = header("deep") + "spec:\n  values:\n    v:\n      ";
        yaml.push_str(&"- ".repeat(depth));
        yaml.push_str("x\n");
        let out = run(commit("deep", &yaml), "deep", SLOW, "nested block lists");
        assert!(out.result.is_err(), "nested block lists {depth} accepted");
    }
}

#[test]
fn nesting_within_the_limit_is_accepted() {
    // root, spec, values and v are four levels; 50 more stay under the limit of 64.
    let yaml = format!(
        "{}spec:\n  values:\n    v: {}{}\n",
        header("nested"),
        "[".repeat(50),
        "]".repeat(50)
    );
    let out = run(commit("nested", &yaml), "nested", QUICK, "50 deep");
    assert!(out.result.is_ok(), "{}", out.shown());
}

#[test]
fn alias_bombs_are_refused() {
    // The classic "billion laughs", in values and in a schema field.
    for place in ["values", "addons"] {
        let mut yaml = header("bomb") + "spec:\n  " + place + ":\n";
        let pad = if place == "values" { "    " } else { "    - " };
        yaml.push_str(&format!(
            "{pad}a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
        ));
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 9].join(", ");
            let pad = if place == "values" { "    " } else { "      " };
            yaml.push_str(&format!("{pad}a{i}: &a{i} [{refs}]\n"));
        }
        let out = run(commit("bomb", &yaml), "bomb", QUICK, "billion laughs");
        assert!(
            out.diags().iter().any(|d| d.message.contains("alias")),
            "{place}: {}",
            out.shown()
        );
    }
}

#[test]
fn wide_alias_fan_out_is_refused() {
    let items = vec!["x"; 50_000].join(", ");
    let refs = vec!["*big"; 20].join(", ");
    let yaml = format!(
        "{}spec:\n  values:\n    big: &big [{items}]\n    copies: [{refs}]\n",
        header("fan")
    );
    let out = run(commit("fan", &yaml), "fan", SLOW, "alias fan-out");
    assert!(out.result.is_err(), "50k x 20 copies accepted");
}

#[test]
fn aliases_as_keys_and_merge_keys_do_not_panic() {
    let cases = [
        "spec:\n  values:\n    k: &k { a: 1 }\n    *k : v\n",
        "spec: &s\n  values: *s\n",
        "spec:\n  values:\n    base: &b { a: 1 }\n    child: { <<: *b, c: 2 }\n",
        "spec:\n  values: { &a x: *a }\n",
        "spec: &a {}\nmetadata: *a\n",
        "spec:\n  cloud: &c\n    region: us-east-1\n    network: { cidr: 10.0.0.0/16 }\n  cluster: *c\n",
    ];
    for (i, body) in cases.iter().enumerate() {
        let yaml = header("alias") + body;
        run(
            commit("alias", &yaml),
            "alias",
            QUICK,
            &format!("alias case {i}"),
        );
    }
}

#[test]
fn aliases_cannot_build_a_tree_deep_enough_to_overflow_the_stack() {
    // A stack overflow aborts the whole process, so this runs in a child process of its own.
    in_child_process("alias_depth_amplification_child", SLOW);
}

#[test]
#[ignore = "run in a child process by aliases_cannot_build_a_tree_deep_enough_to_overflow_the_stack"]
fn alias_depth_amplification_child() {
    // Each anchor nests the previous one 60 levels deeper: depth grows past the nesting limit
    // through aliases alone (80 anchors, about 4,800 levels), within the node budget.
    let mut yaml = header("amplify") + "spec:\n  values:\n";
    yaml.push_str(&format!(
        "    x0: &x0 {}1{}\n",
        "[".repeat(60),
        "]".repeat(60)
    ));
    for i in 1..80 {
        yaml.push_str(&format!(
            "    x{i}: &x{i} {}*x{}{}\n",
            "[".repeat(60),
            i - 1,
            "]".repeat(60)
        ));
    }
    run(
        commit("amplify", &yaml),
        "amplify",
        SLOW,
        "alias depth amplification",
    );
}

/// Runs the ignored test `name` of this test binary in a child process and fails if it fails,
/// crashes or runs longer than `limit`.
fn in_child_process(name: &str, limit: Duration) {
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe().expect("test binary");
    // The test's path in this binary: its module's path without the binary's name.
    let module = module_path!()
        .split_once("::")
        .expect("a module of the binary")
        .1;
    let path = format!("{module}::{name}");
    let mut child = Command::new(exe)
        .args(["--exact", &path, "--include-ignored", "--test-threads", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the test binary");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name}: did not finish within {limit:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().expect("child output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: String = stderr
        .lines()
        .rev()
        .take(15)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        status.success(),
        "{name} failed in a child process ({status}):\n{tail}"
    );
    assert!(
        stdout.contains("1 passed"),
        "{name} did not run in the child process:\n{stdout}"
    );
}

// ------------------------------------------------------------------------------------------------
// Graphs

#[test]
fn cycles_of_every_length_from_2_to_50_are_named() {
    for len in 2..=50usize {
        let names: Vec<String> = (0..len).map(|i| format!("c{i:02}")).collect();
        let mut yaml = header("cycle") + "spec:\n  cluster: { existing: { kubeconfig: kc } }\n";
        // Components are listed in reverse, so the report must still start at the smallest name.
        let mut apps = String::new();
        for (i, name) in names.iter().enumerate().rev() {
            let next = &names[(i + 1) % len];
            let line = format!("    - {{ name: {name}, path: apps/web, dependsOn: [{next}] }}\n");
            apps.push_str(&line);
        }
        yaml.push_str("  apps:\n");
        yaml.push_str(&apps);
        let out = run(
            commit("cycle", &yaml),
            "cycle",
            QUICK,
            &format!("cycle {len}"),
        );
        let mut expected = names.clone();
        expected.push(names[0].clone());
        let want = format!("dependency cycle: {}", expected.join(" -> "));
        let cycles: Vec<&Diagnostic> = out
            .diags()
            .iter()
            .filter(|d| d.message.contains("dependency cycle"))
            .collect();
        assert_eq!(cycles.len(), 1, "cycle of {len}:\n{}", out.shown());
        assert_eq!(cycles[0].message, want, "cycle of {len}");
    }
}

#[test]
fn a_self_dependency_is_not_reported_as_a_cycle() {
    let yaml = header("selfdep")
        + "spec:\n  cluster: { existing: { kubeconfig: kc } }\n  apps:\n    - { name: web, path: apps/web, dependsOn: [web] }\n";
    let out = run(
        commit("selfdep", &yaml),
        "selfdep",
        QUICK,
        "self dependency",
    );
    assert!(
        out.has("spec.apps[0].dependsOn", "depends on itself")
            || out.has("spec.apps[0].dependsOn[0]", "depends on itself"),
        "{}",
        out.shown()
    );
    assert!(
        !out.diags().iter().any(|d| d.message.contains("cycle")),
        "{}",
        out.shown()
    );
}

// ------------------------------------------------------------------------------------------------
// Paths

const HOSTILE_PATHS: &[&str] = &[
    "../../etc",
    "../../../etc/passwd",
    "../../../../../../../../etc/shadow",
    "/etc/passwd",
    "//etc",
    "/",
    "..",
    ".",
    "./",
    "a/../../..",
    "templates/../../../x",
    "..\\..\\etc",
    "C:\\Windows\\System32",
    "c:/windows",
    "\\\\server\\share",
    "%2e%2e/%2e%2e/etc",
    "~/.ssh/id_rsa",
    "~root",
    "apps/\u{0}web",
    "apps/web\u{0}",
    "..\u{2215}..\u{2215}etc",
    "....//....//etc",
    " ../../etc",
    "apps/web/../../../../../etc",
    "file:///etc/passwd",
    "https://example.com/x",
    "$HOME/x",
    "`id`",
    "a\nb",
];

fn yaml_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[test]
fn path_traversal_in_template_path_and_user_data_stays_inside_the_commit() {
    for hostile in HOSTILE_PATHS {
        let q = yaml_quote(hostile);
        let variants = [
            (
                "template",
                "      template: addons/ingress\n",
                format!("      template: {q}\n"),
            ),
            (
                "path",
                "      path: apps/web\n",
                format!("      path: {q}\n"),
            ),
            (
                "userData",
                "        userData: cloud-init/k3s-server.yaml.j2\n",
                format!("        userData: {q}\n"),
            ),
        ];
        for (field, from, to) in variants {
            let yaml = base("paths").replacen(from, &to, 1);
            assert_ne!(yaml, base("paths"), "{field}: substitution failed");
            // Files outside the environment that a traversal might reach, if it were allowed.
            let files = commit("paths", &yaml)
                .with("etc/passwd", "root:x:0:0\n")
                .with("secrets/key", "secret\n");
            let out = run(files, "paths", QUICK, &format!("{field}: {hostile:?}"));
            match &out.result {
                Err(_) => assert!(
                    out.diags().iter().any(|d| d.field.contains(field)),
                    "{field}: {hostile:?}: no diagnostic names the field:\n{}",
                    out.shown()
                ),
                // Accepted only if it resolved to something that exists inside the commit: a
                // manifest path may leave the environment directory (e.g. ../../etc is the
                // repository's etc/), a template or user-data file may not leave templates/.
                Ok(env) => {
                    for c in env.addons.iter().chain(&env.apps) {
                        assert!(
                            inside_commit(&c.source_dir),
                            "{hostile:?}: {}",
                            c.source_dir
                        );
                        if matches!(c.source, phoenix::env::model::Source::Template(_)) {
                            assert!(
                                c.source_dir.starts_with("templates/"),
                                "{hostile:?}: template resolved to {}",
                                c.source_dir
                            );
                        }
                    }
                    assert_eq!(field, "path", "{hostile:?} accepted as {field}");
                }
            }
        }
    }
}

#[test]
fn invalid_environment_names_are_refused_before_any_read() {
    for name in [
        "../etc",
        "/etc",
        "..",
        "",
        "a/b",
        "UPPER",
        "a\0b",
        "x/../../etc",
    ] {
        let files = MemFiles::default().with(&env_file(name), &base(name));
        let out = run(files, name, QUICK, &format!("env name {name:?}"));
        assert!(out.result.is_err(), "{name:?} accepted");
        assert!(
            out.asked.is_empty(),
            "{name:?}: the loader read {:?}",
            out.asked
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Odd characters

#[test]
fn odd_characters_do_not_panic() {
    let base = base("odd");
    let snippets = [
        "\u{0}",
        "\u{0}\u{0}\u{0}",
        "\u{FEFF}",
        "\u{FFFD}\u{FFFD}",
        "\u{85}",
        "\u{2028}",
        "\u{2029}",
        "\u{200B}",
        "\u{202E}",
        "\u{7F}",
        "\u{1B}[31m",
        "\r",
        "\r\n",
        "\t",
        "\t\t- x",
        "\u{10FFFF}",
        "😀",
        "é",
        "'",
        "\"",
        "&",
        "*",
        "!",
        "|",
        ">",
        "%",
        "@",
        "`",
        "#",
        "---",
        "...",
        "? ",
        ": ",
        "- ",
        "{",
        "}",
        "[",
        "]",
        ",",
        "<<: ",
    ];
    // Insert each snippet at a spread of places in the file.
    let stops: Vec<usize> = base
        .char_indices()
        .map(|(i, _)| i)
        .step_by(97)
        .chain([0, base.len()])
        .collect();
    for s in snippets {
        for &at in &stops {
            let mut yaml = base.clone();
            yaml.insert_str(at, s);
            run(
                commit("odd", &yaml),
                "odd",
                QUICK,
                &format!("{s:?} at byte {at}"),
            );
        }
        // And replacing every line's indentation.
        let yaml = base
            .lines()
            .map(|l| {
                let trimmed = l.trim_start();
                let indent = l.len() - trimmed.len();
                format!("{}{trimmed}", s.repeat(indent.min(3)))
            })
            .collect::<Vec<_>>()
            .join("\n");
        run(
            commit("odd", &yaml),
            "odd",
            QUICK,
            &format!("{s:?} as indentation"),
        );
    }
}

#[test]
fn nul_bytes_and_tabs_give_diagnostics() {
    let cases = [
        format!("{}\0spec: {{}}\n", header("nul")),
        format!("\0{}", header("nul")),
        format!("{}spec:\n\tcloud: {{}}\n", header("nul")),
        format!("{}spec:\n  values:\n\t  a: 1\n", header("nul")),
        header("nul").replace("name: nul", "name: \"nu\\0l\""),
        header("nul").replace("name: nul", "name: \"nul\\t\""),
    ];
    for (i, yaml) in cases.iter().enumerate() {
        let out = run(
            commit("nul", yaml),
            "nul",
            QUICK,
            &format!("nul/tab case {i}"),
        );
        assert!(
            out.result.is_err(),
            "case {i} {yaml:?} accepted: NUL and tab are not valid here"
        );
    }
}

#[test]
fn columns_count_characters_not_bytes() {
    // "ключ" and "значение" are 4 and 8 characters but 8 and 16 bytes.
    let line = "metadata: { name: cols, labels: { ключ: значение }, nme: x }";
    let yaml = format!("apiVersion: phoenix/v1\nkind: Environment\n{line}\nspec: {{}}\n");
    let out = run(commit("cols", &yaml), "cols", QUICK, "multibyte columns");
    let col = line[..line.find("nme").unwrap()].chars().count() + 1;
    let d = out
        .diags()
        .iter()
        .find(|d| d.message.contains("unknown field \"nme\""))
        .unwrap_or_else(|| panic!("{}", out.shown()));
    assert_eq!((d.line, d.column), (3, col), "{}", out.shown());
}

#[test]
fn crlf_line_endings_keep_line_numbers() {
    let yaml = base("crlf").replace("    region: us-east-1\n", "    regoin: us-east-1\n");
    let line = yaml
        .lines()
        .position(|l| l.contains("regoin"))
        .expect("line")
        + 1;
    let yaml = yaml.replace('\n', "\r\n");
    let out = run(commit("crlf", &yaml), "crlf", QUICK, "CRLF");
    let d = out
        .diags()
        .iter()
        .find(|d| d.message.contains("regoin"))
        .unwrap_or_else(|| panic!("{}", out.shown()));
    assert_eq!((d.line, d.column), (line, 5), "{}", out.shown());
}

// ------------------------------------------------------------------------------------------------
// Every scalar type in every field

const SCALARS: &[&str] = &[
    "~",
    "null",
    "\"\"",
    "''",
    "true",
    "False",
    "yes",
    "0",
    "-1",
    "1",
    "65536",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "0x1F",
    "0x-1",
    "0o17",
    "0b101",
    "1_000",
    "1e400",
    "-1e-400",
    ".inf",
    "-.inf",
    ".nan",
    "1.5",
    "0.0.0.0/0",
    "2001-12-14t21:59:43.10-05:00",
    "\"quoted\"",
    "'single'",
    "!!str 5",
    "!!int x",
    "!!binary aGVsbG8=",
    "!custom tag",
    "&anchor value",
    "[]",
    "{}",
    "[a, b]",
    "{a: b}",
    "[[[]]]",
    "{a: {b: {c: d}}}",
    "\"\\u0000\"",
    "\"\\x7f\"",
    "18446744073709551615d",
    "99999999999999999999999999s",
    "1ns",
    "584554049253y",
    "env:",
    "file:",
    "ami-",
    "v1.2.3+",
    "-",
    "?",
    "|\n  literal\n",
    ">-\n  folded\n  text\n",
];

/// The base file with the value on `line` replaced by `value`; a key that opened a nested block
/// loses that block.
fn replace_value(lines: &[&str], line: usize, value: &str) -> Option<String> {
    let l = lines[line];
    let indent = l.len() - l.trim_start().len();
    let body = l.trim_start().strip_prefix("- ").unwrap_or(l.trim_start());
    let colon = body
        .find(": ")
        .or_else(|| body.ends_with(':').then_some(body.len() - 1))?;
    let key_end = l.len() - body.len() + colon;
    let mut out: Vec<String> = lines[..line].iter().map(|s| s.to_string()).collect();
    let value = value.replace('\n', &format!("\n{}", " ".repeat(indent + 2)));
    out.push(format!("{}: {}", &l[..key_end], value.trim_end()));
    let mut rest = line + 1;
    if body.ends_with(':') {
        // Drop the nested block.
        while rest < lines.len() {
            let r = lines[rest];
            let ri = r.len() - r.trim_start().len();
            let is_item = r.trim_start().starts_with("- ");
            if ri > indent || (ri == indent && is_item && !l.trim_start().starts_with("- ")) {
                rest += 1;
            } else {
                break;
            }
        }
    }
    out.extend(lines[rest..].iter().map(|s| s.to_string()));
    Some(out.join("\n") + "\n")
}

#[test]
fn every_scalar_type_in_every_field() {
    let text = base("scalars");
    let lines: Vec<&str> = text.lines().collect();
    let mut tried = 0;
    for line in 0..lines.len() {
        for value in SCALARS {
            let Some(yaml) = replace_value(&lines, line, value) else {
                continue;
            };
            tried += 1;
            run(
                commit("scalars", &yaml),
                "scalars",
                QUICK,
                &format!("line {} = {value:?}", line + 1),
            );
        }
    }
    assert!(tried > 3000, "only {tried} substitutions");
}

#[test]
fn scalar_types_in_typed_fields_are_reported_on_that_field() {
    // A few fields where the type is unambiguous: the diagnostic must name the field.
    let cases = [
        (
            "        count: 1\n",
            "        count: \"1\"\n",
            "spec.cloud.instances[0].count",
        ),
        (
            "        count: 1\n",
            "        count: 1.0\n",
            "spec.cloud.instances[0].count",
        ),
        (
            "        count: 1\n",
            "        count: 9223372036854775808\n",
            "spec.cloud.instances[0].count",
        ),
        (
            "        count: 1\n",
            "        count: [1]\n",
            "spec.cloud.instances[0].count",
        ),
        (
            "          public: true\n",
            "          public: \"true\"\n",
            "spec.cloud.network.subnets[0].public",
        ),
        (
            "          public: true\n",
            "          public: yes\n",
            "spec.cloud.network.subnets[0].public",
        ),
        (
            "  recoveryObjective: 10m\n",
            "  recoveryObjective: 10\n",
            "spec.recoveryObjective",
        ),
        ("  recoveryObjective: 10m\n", "  recoveryObjective: ~\n", ""),
        (
            "          expect: 200\n",
            "          expect: 99\n",
            "spec.apps[0].checks[0].expect",
        ),
        (
            "            port: 6443\n",
            "            port: 6443.0\n",
            "spec.cloud.securityGroups[0].ingress[0].port",
        ),
        (
            "    region: us-east-1\n",
            "    region: {}\n",
            "spec.cloud.region",
        ),
        (
            "      cidr: 10.40.0.0/16\n",
            "      cidr: 168427520\n",
            "spec.cloud.network.cidr",
        ),
    ];
    for (from, to, field) in cases {
        let yaml = base("typed").replacen(from, to, 1);
        assert_ne!(yaml, base("typed"), "{from:?} not found");
        let out = run(commit("typed", &yaml), "typed", QUICK, to.trim());
        if field.is_empty() {
            // A null optional field is the same as leaving it out.
            assert!(out.result.is_ok(), "{}: {}", to.trim(), out.shown());
        } else {
            assert!(
                out.diags().iter().any(|d| d.field == field),
                "{}: expected a diagnostic on {field}:\n{}",
                to.trim(),
                out.shown()
            );
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Random mutations

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[u8] = b" \t\n\r\0:-[]{}&*!|>'\"%@`#,?~.0123456789/\\";

fn mutate(rng: &mut XorShift, input: &[u8]) -> Vec<u8> {
    let mut bytes = input.to_vec();
    for _ in 0..1 + rng.below(8) {
        if bytes.is_empty() {
            bytes.push(b'x');
        }
        let at = rng.below(bytes.len());
        match rng.below(7) {
            0 => bytes[at] = INTERESTING[rng.below(INTERESTING.len())],
            1 => bytes[at] = rng.next() as u8,
            2 => bytes.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
            3 => {
                bytes.remove(at);
            }
            4 => {
                // Duplicate a chunk somewhere else.
                let len = 1 + rng.below(64).min(bytes.len() - at - 1);
                let chunk = bytes[at..at + len].to_vec();
                let to = rng.below(bytes.len());
                bytes.splice(to..to, chunk);
            }
            5 => {
                // Delete a chunk.
                let len = rng.below(32).min(bytes.len() - at);
                bytes.drain(at..at + len);
            }
            _ => {
                // Swap two lines.
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let mut lines: Vec<&str> = text.split('\n').collect();
                let (a, b) = (rng.below(lines.len()), rng.below(lines.len()));
                lines.swap(a, b);
                bytes = lines.join("\n").into_bytes();
            }
        }
    }
    bytes
}

#[test]
fn random_mutations_of_a_valid_file_never_panic() {
    let seed_text = base("fuzz");
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let (mut ok, mut err) = (0, 0);
    let start = Instant::now();
    for i in 0..4000 {
        let bytes = mutate(&mut rng, seed_text.as_bytes());
        let yaml = String::from_utf8_lossy(&bytes).into_owned();
        let out = run(
            commit("fuzz", &yaml),
            "fuzz",
            QUICK,
            &format!("mutation {i}:\n{yaml}"),
        );
        if out.result.is_ok() {
            ok += 1;
        } else {
            err += 1;
        }
        assert!(out.took < QUICK);
    }
    // The mutations must reach both outcomes, or they test nothing.
    assert!(ok > 0 && err > 1000, "{ok} ok, {err} errors");
    assert!(
        start.elapsed() < Duration::from_secs(300),
        "4000 loads took {:?}",
        start.elapsed()
    );
}
