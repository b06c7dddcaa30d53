//! `phoenix rebuild` end to end: the real binary converges the demo environment (this
//! repository's `environments/demo` and `templates/`, committed into a temp repo) on moto and a
//! kube-sandbox that registers nodes from moto's instances, so the cluster's nodes join only
//! after the cloud layer launched them. Then: a second run changes nothing, a never-ready app
//! fails within its wait and nothing after it starts, objects that left Git are pruned (rollback
//! to an older commit), and an existing cluster is reached through a kubeconfig and context.

#[path = "support/moto.rs"]
mod moto;
#[path = "support/sandbox.rs"]
mod sandbox;
#[path = "support_git/mod.rs"]
mod support_git;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::{Api, ListParams};
use moto::Moto;
use support_git::{Repo, Sandbox as GitSandbox};

const REGION: &str = "us-east-1";
const DB_PASSWORD: &str = "demo-db-password-for-tests";

/// moto + a kube-sandbox fed by it + a git repo with the demo.
struct Bed {
    moto: Moto,
    kube: kube_sandbox::SandboxHandle,
    git: GitSandbox,
    rt: tokio::runtime::Runtime,
}

impl Bed {
    fn new() -> Bed {
        let moto = Moto::start();
        let kube = kube_sandbox::Sandbox::start_in_thread(kube_sandbox::Config {
            nodes: 0,
            node_delay: Duration::from_millis(300),
            ready_delay: Duration::from_millis(300),
            kubernetes_version: "v1.31.4+k3s1".into(),
            ec2: Some(kube_sandbox::Ec2Config {
                endpoint: moto.endpoint(),
                region: REGION.into(),
                poll_interval: Duration::from_millis(200),
            }),
            ..kube_sandbox::Config::default()
        })
        .expect("kube-sandbox starts");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Bed {
            moto,
            kube,
            git: GitSandbox::new(),
            rt,
        }
    }

    /// A repo holding this project's demo environment and templates, committed.
    fn demo_repo(&self) -> Repo<'_> {
        let repo = self.git.repo("envs");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        copy_tree(
            &root.join("environments/demo"),
            &repo.dir.join("environments/demo"),
        );
        copy_tree(&root.join("templates"), &repo.dir.join("templates"));
        repo.commit("the demo");
        repo
    }

    fn command(&self, dir: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_phoenix"));
        cmd.current_dir(dir)
            .env("HOME", self.git.home())
            .env("PHOENIX_HOME", self.git.phoenix_home())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", REGION)
            .env("AWS_ENDPOINT_URL", self.moto.endpoint())
            .env(
                "PHOENIX_CLUSTER_ENDPOINT",
                format!("{}/clusters/{{env}}", self.kube.url()),
            )
            .env("PHOENIX_DEMO_DB_PASSWORD", DB_PASSWORD)
            .env_remove("AWS_PROFILE")
            .env_remove("PHOENIX_REPO")
            .env_remove("PHOENIX_TRUSTED_KEYS")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        cmd
    }

    fn phoenix(&self, dir: &Path, args: &[&str]) -> Output {
        self.command(dir).args(args).output().expect("run phoenix")
    }

    fn client(&self, cluster: &str) -> kube::Client {
        let _guard = self.rt.enter();
        sandbox::client(&self.kube.cluster_url(cluster))
    }

    fn deployments(&self, cluster: &str, ns: &str) -> Vec<Deployment> {
        let api: Api<Deployment> = Api::namespaced(self.client(cluster), ns);
        self.rt
            .block_on(api.list(&ListParams::default()))
            .expect("list deployments")
            .items
    }

    fn nodes(&self, cluster: &str) -> Vec<Node> {
        let api: Api<Node> = Api::all(self.client(cluster));
        self.rt
            .block_on(api.list(&ListParams::default()))
            .expect("list nodes")
            .items
    }
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for entry in std::fs::read_dir(src).expect("read dir") {
        let entry = entry.expect("dir entry");
        let to = dst.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).expect("copy file");
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The last stdout line of `--output json`: the run report.
fn report(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("report line is JSON ({e}):\n{last}"))
}

fn node_outcome<'a>(report: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    report["summary"]["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["id"] == id))
        .unwrap_or_else(|| panic!("node {id} in the report: {report}"))
}

fn names(deployments: &[Deployment]) -> Vec<String> {
    let mut v: Vec<String> = deployments
        .iter()
        .filter_map(|d| d.metadata.name.clone())
        .collect();
    v.sort();
    v
}

#[test]
fn rebuild_converges_the_demo_on_moto_and_kube_sandbox_then_changes_nothing() {
    let bed = Bed::new();
    let repo = bed.demo_repo();
    assert!(
        bed.nodes("demo").is_empty(),
        "the cluster has no nodes before the instances exist"
    );

    let out = bed.phoenix(&repo.dir, &["rebuild", "demo", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let first = report(&out);
    assert_eq!(first["summary"]["converged"], true, "{first}");
    assert_eq!(first["commit"], repo.head());
    // Every layer ran, in order: the gate started only after the last instance converged.
    let layers = first["summary"]["layers"].as_array().expect("layers");
    let states: Vec<(&str, &str)> = layers
        .iter()
        .map(|l| {
            (
                l["layer"].as_str().unwrap_or(""),
                l["status"].as_str().unwrap_or(""),
            )
        })
        .collect();
    for layer in ["cloud", "cluster", "addons", "apps"] {
        assert!(
            states.contains(&(layer, "converged")),
            "{layer} converged: {states:?}"
        );
    }
    for id in [
        "cloud/instance/server/0",
        "cloud/instance/agent/0",
        "cloud/instance/agent/1",
        "cluster/control-plane",
        "addons/ingress",
        "addons/backup-operator",
        "apps/web",
        "apps/worker",
    ] {
        assert_eq!(
            node_outcome(&first, id)["state"]["status"],
            "succeeded",
            "{id}: {first}"
        );
    }

    // Three EC2 instances became three Ready nodes of the sandbox cluster named after the env.
    assert_eq!(bed.nodes("demo").len(), 3);
    // Apps are applied with phoenix's marks; the Secret came from the environment variable.
    let web = bed.deployments("demo", "web");
    assert_eq!(names(&web), vec!["web".to_string(), "worker".to_string()]);
    for d in &web {
        let labels = d.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get("phoenix.dev/env").map(String::as_str),
            Some("demo")
        );
        assert_eq!(
            labels
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("phoenix")
        );
    }
    let secrets: Api<Secret> = Api::namespaced(bed.client("demo"), "web");
    let secret = bed
        .rt
        .block_on(secrets.get("web-db"))
        .expect("the web-db Secret exists");
    let password = secret
        .data
        .and_then(|d| d.get("password").cloned())
        .expect("password key");
    assert_eq!(password.0, DB_PASSWORD.as_bytes());
    // The secret value appears nowhere in what phoenix printed.
    assert!(
        !text(&out).contains(DB_PASSWORD),
        "secret printed:\n{}",
        text(&out)
    );

    // The admin kubeconfig phoenix wrote is private to its owner.
    let kubeconfig = bed.git.phoenix_home().join("clusters/demo/kubeconfig");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&kubeconfig)
            .expect("kubeconfig written")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "{}", kubeconfig.display());

    // A second run finds everything in place.
    let out = bed.phoenix(&repo.dir, &["rebuild", "demo", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let second = report(&out);
    for id in [
        "cloud/vpc",
        "cloud/instance/server/0",
        "cloud/instance/agent/0",
        "cloud/instance/agent/1",
    ] {
        assert_eq!(
            node_outcome(&second, id)["state"]["outcome"],
            "unchanged",
            "{id} is unchanged on the second run: {second}"
        );
    }
    assert_eq!(bed.nodes("demo").len(), 3, "no instance was replaced");

    // Destroy: the objects first, then every cloud resource; nothing owned by demo is left.
    assert!(bed.live_cloud("demo") > 0);
    let out = bed.phoenix(&repo.dir, &["destroy", "demo", "--yes", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r = report(&out);
    assert_eq!(
        node_outcome(&r, "cluster/objects")["state"]["outcome"],
        "deleted",
        "{r}"
    );
    assert!(bed.deployments("demo", "web").is_empty());
    assert_eq!(
        bed.live_cloud("demo"),
        0,
        "every cloud resource of demo is gone"
    );
}

#[test]
fn a_never_ready_app_fails_within_its_wait_and_nothing_after_it_starts() {
    let bed = Bed::new();
    let repo = bed.demo_repo();
    let env_file = repo.dir.join("environments/demo/environment.yaml");
    let env = std::fs::read_to_string(&env_file).expect("read env");
    // A `stuck` app between web and worker whose Deployment never becomes available.
    let env = env.replace(
        "dependsOn: [web, backup-operator]",
        "dependsOn: [web, backup-operator, stuck]",
    )
        + "    - { name: stuck, path: apps/stuck, namespace: web, dependsOn: [web], wait: 6s }\n";
    std::fs::write(&env_file, env).expect("write env");
    repo.write(
        "environments/demo/apps/stuck/deploy.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: stuck\n  namespace: web\n  annotations: { sandbox.phoenix.dev/fail: never-ready }\nspec:\n  replicas: 1\n  selector: { matchLabels: { app: stuck } }\n  template:\n    metadata: { labels: { app: stuck } }\n    spec: { containers: [{ name: stuck, image: busybox:1.36 }] }\n",
    );
    repo.commit("a stuck app");

    let started = std::time::Instant::now();
    let out = bed.phoenix(&repo.dir, &["rebuild", "demo"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "failed within its wait, not a global timeout: {:?}",
        started.elapsed()
    );
    for needle in ["apps/stuck", "Deployment web/stuck", "apps/worker"] {
        assert!(all.contains(needle), "{needle:?} missing:\n{all}");
    }
    let deployed = names(&bed.deployments("demo", "web"));
    assert!(deployed.contains(&"stuck".to_string()), "{deployed:?}");
    assert!(
        !deployed.contains(&"worker".to_string()),
        "worker must not start after a failed dependency: {deployed:?}"
    );
}

#[test]
fn rollback_to_an_older_commit_prunes_what_the_newer_commit_added() {
    let bed = Bed::new();
    let repo = bed.demo_repo();
    let old = repo.head();
    let env_file = repo.dir.join("environments/demo/environment.yaml");
    let env = std::fs::read_to_string(&env_file).expect("read env");
    std::fs::write(
        &env_file,
        env + "    - { name: extra, path: apps/extra, namespace: web, wait: 30s }\n",
    )
    .expect("write env");
    repo.write(
        "environments/demo/apps/extra/deploy.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: extra, namespace: web }\nspec:\n  selector: { matchLabels: { app: extra } }\n  template:\n    metadata: { labels: { app: extra } }\n    spec: { containers: [{ name: extra, image: busybox:1.36 }] }\n",
    );
    repo.commit("an extra app");

    let out = bed.phoenix(&repo.dir, &["rebuild", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(names(&bed.deployments("demo", "web")).contains(&"extra".to_string()));

    // An object phoenix does not own, in the same namespace, must survive the prune.
    let foreign: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "hand-made", "namespace": "web" },
        "spec": { "selector": { "matchLabels": { "app": "hand-made" } },
                  "template": { "metadata": { "labels": { "app": "hand-made" } },
                                "spec": { "containers": [{ "name": "c", "image": "busybox" }] } } }
    }))
    .expect("deployment");
    let api: Api<Deployment> = Api::namespaced(bed.client("demo"), "web");
    bed.rt
        .block_on(api.create(&Default::default(), &foreign))
        .expect("create a foreign deployment");

    let out = bed.phoenix(&repo.dir, &["--ref", &old, "rebuild", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let deployed = names(&bed.deployments("demo", "web"));
    assert_eq!(
        deployed,
        vec![
            "hand-made".to_string(),
            "web".to_string(),
            "worker".to_string()
        ],
        "extra pruned, the foreign object untouched"
    );
}

#[test]
fn an_existing_cluster_is_reached_through_its_kubeconfig_and_context() {
    let bed = Bed::new();
    let repo = bed.git.repo("envs");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    copy_tree(&root.join("templates"), &repo.dir.join("templates"));
    // The sandbox registers no node by itself here (nodes: 0), so give the cluster one.
    let kubeconfig = bed.git.path("existing.kubeconfig");
    std::fs::write(&kubeconfig, bed.kube.kubeconfig(Some("shared"))).expect("write kubeconfig");
    let client = bed.client("shared");
    let node: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": { "name": "existing-0" },
        "status": { "conditions": [{ "type": "Ready", "status": "True" }] }
    }))
    .expect("node");
    let nodes: Api<Node> = Api::all(client);
    bed.rt
        .block_on(nodes.create(&Default::default(), &node))
        .expect("create a node");
    assert!(bed.kube.set_node_ready("shared", "existing-0", true));
    let contexts = bed.kube.kubeconfig(Some("shared"));
    let context = contexts
        .lines()
        .find_map(|l| l.trim().strip_prefix("current-context:"))
        .map(|c| c.trim().trim_matches('"').to_string())
        .expect("the sandbox kubeconfig names a context");
    repo.write(
        "environments/shared/environment.yaml",
        format!(
            "apiVersion: phoenix/v1\nkind: Environment\nmetadata: {{ name: shared }}\nspec:\n  timeouts: {{ cluster: 20s }}\n  cluster:\n    existing: {{ kubeconfig: {}, context: {context} }}\n  addons:\n    - {{ name: backup-operator, template: addons/backup-operator, wait: 1m }}\n",
            kubeconfig.display()
        ),
    );
    repo.commit("an existing cluster");

    let mut cmd = bed.command(&repo.dir);
    cmd.env_remove("PHOENIX_CLUSTER_ENDPOINT");
    let out = cmd
        .args(["rebuild", "shared", "--output", "json"])
        .output()
        .expect("run phoenix");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r = report(&out);
    assert_eq!(
        node_outcome(&r, "cluster/control-plane")["state"]["status"],
        "succeeded"
    );
    assert_eq!(
        node_outcome(&r, "addons/backup-operator")["state"]["status"],
        "succeeded"
    );
    assert!(
        !bed.phoenix_home_has("clusters/shared/kubeconfig"),
        "an existing cluster's kubeconfig is the user's own; phoenix writes none"
    );

    // A context the kubeconfig does not have fails at once, naming the contexts it has.
    let broken = std::fs::read_to_string(repo.dir.join("environments/shared/environment.yaml"))
        .expect("read env")
        .replace(&format!("context: {context}"), "context: nope");
    repo.write("environments/shared/environment.yaml", broken);
    repo.commit("a wrong context");
    let mut cmd = bed.command(&repo.dir);
    cmd.env_remove("PHOENIX_CLUSTER_ENDPOINT");
    let out = cmd
        .args(["rebuild", "shared"])
        .output()
        .expect("run phoenix");
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("nope") && all.contains(&context), "{all}");
}

impl Bed {
    /// How many live cloud resources carry `env`'s ownership tags.
    fn live_cloud(&self, env: &str) -> usize {
        use aws_config::{BehaviorVersion, Region};
        let config = self.rt.block_on(
            aws_config::defaults(BehaviorVersion::latest())
                .region(Region::new(REGION))
                .endpoint_url(self.moto.endpoint())
                .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                    "test",
                    "test",
                    None,
                    None,
                    "phoenix-tests",
                ))
                .load(),
        );
        let opts = phoenix::providers::aws::AwsOptions {
            connect_timeout: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(30),
            max_attempts: 3,
            profile: None,
            endpoint_url: None,
        };
        let ec2 = phoenix::providers::aws::Ec2::from_sdk_config(&config, &opts).expect("ec2");
        let live = self
            .rt
            .block_on(phoenix::providers::aws::observe(&ec2, env))
            .expect("observe");
        live.resources.values().map(Vec::len).sum()
    }

    fn phoenix_home_has(&self, rel: &str) -> bool {
        self.git.phoenix_home().join(rel).exists()
    }
}
