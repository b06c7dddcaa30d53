//! `phoenix rebuild` end to end: the real binary converges the demo environment (this
//! repository's `environments/demo` and `templates/`, committed into a temp repo) on moto and a
//! real control plane that registers nodes from moto's instances, so the cluster's nodes join only
//! after the cloud layer launched them. Then: a second run changes nothing, a never-ready app
//! fails within its wait and nothing after it starts, objects that left Git are pruned (rollback
//! to an older commit), and an existing cluster is reached through a kubeconfig and context.

use testkit::{bed, control_plane, git};

use std::path::Path;
use std::time::Duration;

use bed::{copy_tree, names, node_outcome, report, text, Bed, DB_PASSWORD};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::Api;

#[test]
fn rebuild_converges_the_demo_on_moto_and_the_real_control_plane_then_changes_nothing() {
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
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: stuck\n  namespace: web\nspec:\n  replicas: 1\n  selector: { matchLabels: { app: stuck } }\n  template:\n    metadata: { labels: { app: stuck }, annotations: { testenv.phoenix.dev/ready: never } }\n    spec: { containers: [{ name: stuck, image: busybox:1.36 }] }\n",
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
    let (repo, context) = existing_cluster_env(&bed);

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

    // Destroying it deletes its objects, each named, under the cluster (it has no cloud layer).
    let mut cmd = bed.command(&repo.dir);
    cmd.env_remove("PHOENIX_CLUSTER_ENDPOINT");
    let out = cmd
        .args(["destroy", "shared", "--yes", "--output", "json"])
        .output()
        .expect("run phoenix");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r = report(&out);
    assert_eq!(
        node_outcome(&r, "cluster/objects")["layer"],
        "cluster",
        "{r:#}"
    );
    let events = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        events.contains("deleted CustomResourceDefinition"),
        "each deleted object is named: {events}"
    );
    let mut cmd = bed.command(&repo.dir);
    cmd.env_remove("PHOENIX_CLUSTER_ENDPOINT");
    let out = cmd
        .args(["history", "shared"])
        .output()
        .expect("run phoenix");
    let history = String::from_utf8_lossy(&out.stdout).into_owned();
    let destroy_line = history
        .lines()
        .find(|l| l.contains("destroy"))
        .unwrap_or_else(|| panic!("{history}"));
    assert!(
        destroy_line.contains("cluster converged") && !destroy_line.contains("cloud"),
        "{history}"
    );
    // Built again for what follows.
    let mut cmd = bed.command(&repo.dir);
    cmd.env_remove("PHOENIX_CLUSTER_ENDPOINT");
    let out = cmd
        .args(["rebuild", "shared"])
        .output()
        .expect("run phoenix");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

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

/// The env `shared`: an existing cluster (the control plane's cluster `shared`, with one Ready
/// node), reached through a kubeconfig and context; one add-on. Returns the repo and the context.
fn existing_cluster_env(bed: &Bed) -> (git::Repo<'_>, String) {
    let repo = bed.git.repo("existing");
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
    (repo, context)
}

/// The `nodeStarted` ids of a run's JSON event stream, in the order they started.
fn started_ids(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["type"] == "nodeStarted")
        .map(|e| e["id"].as_str().expect("nodeStarted has an id").to_string())
        .collect()
}

/// The node ids `plan --offline -o json` prints (each once, in its order), with the detail it
/// gives for those that are not a component (a component's changes are its objects).
fn offline_plan(bed: &Bed, repo: &Path, env: &str) -> Vec<(String, Option<String>)> {
    let out = bed.phoenix(repo, &["plan", env, "--offline", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    let mut nodes: Vec<(String, Option<String>)> = Vec::new();
    for c in plan["changes"].as_array().expect("changes") {
        let id = c["id"].as_str().expect("a change has an id").to_string();
        if !nodes.iter().any(|(known, _)| *known == id) {
            nodes.push((id, c["detail"].as_str().map(str::to_string)));
        }
    }
    nodes
}

/// The nodes a run announced in its `runStarted` event: id and description.
fn announced(out: &std::process::Output) -> Vec<(String, String)> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let started = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["type"] == "runStarted")
        .expect("a runStarted event");
    started["nodes"]
        .as_array()
        .expect("runStarted lists its nodes")
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap_or_default().to_string(),
                n["description"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The plan's and the run's nodes are the same: every started id is planned and vice versa, and
/// a planned node's detail (nodes other than components) is the run's description of it.
fn assert_plan_is_the_run(
    what: &str,
    planned: &[(String, Option<String>)],
    out: &std::process::Output,
) {
    let mut planned_ids: Vec<String> = planned.iter().map(|(id, _)| id.clone()).collect();
    let mut started = started_ids(out);
    planned_ids.sort();
    started.sort();
    assert_eq!(planned_ids, started, "{what}: planned vs started");
    let described = announced(out);
    for (id, detail) in planned {
        if let Some(detail) = detail {
            let run = described
                .iter()
                .find(|(d, _)| d == id)
                .map(|(_, text)| text);
            assert_eq!(run, Some(detail), "{what}: the description of {id}");
        }
    }
}

/// Issue 15, item 1: the offline plan is the graph a rebuild runs. From nothing, every node the
/// plan prints is started by the rebuild and the rebuild starts no other (security-group rule
/// nodes and the prunes of what left Git included), for the demo (k3s on EC2) and for an
/// existing cluster (whose gate is the same `cluster/control-plane` node); and no node starts
/// before a node the plan says it comes after.
#[test]
fn the_offline_plan_lists_exactly_the_nodes_a_rebuild_starts() {
    let bed = Bed::new();
    let repo = bed.demo_repo();
    let planned = offline_plan(&bed, &repo.dir, "demo");
    for id in ["cloud/sg/cluster/rules", "addons/.removed", "apps/.removed"] {
        assert!(
            planned.iter().any(|(p, _)| p == id),
            "{id} planned: {planned:?}"
        );
    }
    let out = bed.phoenix(&repo.dir, &["rebuild", "demo", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_plan_is_the_run("demo", &planned, &out);
    // The plan's order puts dependencies first: a run started each node after those.
    let started = started_ids(&out);
    let position = |id: &str| started.iter().position(|s| s == id).expect("started");
    assert!(position("cloud/sg/cluster") < position("cloud/sg/cluster/rules"));
    assert!(position("cloud/instance/server/0") < position("cloud/instance/agent/0"));
    assert!(position("apps/worker") < position("apps/.removed"));

    let (repo, _context) = existing_cluster_env(&bed);
    let planned = offline_plan(&bed, &repo.dir, "shared");
    let mut cmd = bed.command(&repo.dir);
    cmd.env_remove("PHOENIX_CLUSTER_ENDPOINT");
    let out = cmd
        .args(["rebuild", "shared", "--output", "json"])
        .output()
        .expect("run phoenix");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_plan_is_the_run("existing cluster", &planned, &out);
    assert!(
        planned.iter().any(|(id, _)| id == "cluster/control-plane"),
        "{planned:?}"
    );
}

/// Issue 14, item 1: nothing in `$PHOENIX_HOME` decides what is deployed. After a rebuild from one
/// machine, a second machine (a new, empty `PHOENIX_HOME`) with the same commit and cluster
/// secret plans no change, finds no drift, rebuilds without replacing anything and reaches the
/// cluster; and `--cluster-endpoint` (how phoenix reaches the API) changes no user-data. The
/// env's EC2 key pair (no publicKey) is derived from the cluster secret, so the second machine
/// plans no key pair change either, and `phoenix ssh-key` gives it the matching private key.
#[test]
fn a_new_phoenix_home_plans_no_change_rebuilds_nothing_and_recovers_cluster_access() {
    let bed = Bed::new();
    let repo = bed.demo_repo();
    let env_file = repo.dir.join("environments/demo/environment.yaml");
    let env = std::fs::read_to_string(&env_file).expect("read env");
    assert!(env.contains("\n    instances:\n"), "{env}");
    std::fs::write(
        &env_file,
        env.replacen(
            "\n    instances:\n",
            "\n    keyPair: { name: nodes }\n    instances:\n",
            1,
        ),
    )
    .expect("write env");
    repo.commit("a key pair phoenix derives");
    let out = bed.phoenix(&repo.dir, &["rebuild", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        !bed.phoenix_home_has("keys"),
        "no key kept in the first machine's PHOENIX_HOME"
    );

    let fresh = bed.git.path("second-machine-home");
    std::fs::create_dir_all(&fresh).expect("mkdir");
    let on_fresh = |args: &[&str]| {
        bed.command(&repo.dir)
            .env("PHOENIX_HOME", &fresh)
            .args(args)
            .output()
            .expect("run phoenix")
    };

    let out = on_fresh(&["plan", "demo", "--detailed-exitcode"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "no change pending:\n{all}");
    assert!(!all.contains("-/+ replace"), "{all}");
    assert!(all.contains("0 to replace"), "{all}");
    assert!(all.contains("unchanged key/nodes"), "{all}");
    assert!(!fresh.join("keys").exists(), "nothing written for the key");

    // The private key for SSH, on request, 0600, matching the EC2 key pair's public key.
    let key_path = bed.git.path("demo-nodes.key");
    let out = on_fresh(&[
        "ssh-key",
        "demo",
        "--out",
        key_path.to_str().expect("utf-8"),
    ]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let pem = std::fs::read_to_string(&key_path).expect("private key written");
    assert!(
        !all.contains(pem.lines().nth(1).expect("a key line")),
        "the key is not printed: {all}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_path).expect("meta").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let public = ssh_key::PrivateKey::from_openssh(&pem)
        .expect("an OpenSSH private key")
        .public_key()
        .to_openssh()
        .expect("encode");
    let pairs = bed
        .rt
        .block_on(
            bed.ec2_client()
                .describe_key_pairs()
                .key_names("demo-nodes")
                .send(),
        )
        .expect("describe key pairs");
    let tag = pairs.key_pairs()[0]
        .tags()
        .iter()
        .find(|t| t.key() == Some("phoenix:public-key-sha256"))
        .and_then(|t| t.value())
        .expect("the key pair's public key hash")
        .to_string();
    let sha: String = {
        use sha2::Digest;
        sha2::Sha256::digest(public.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    assert_eq!(tag, sha, "the private key belongs to the EC2 key pair");
    // An existing file is never overwritten.
    let out = on_fresh(&[
        "ssh-key",
        "demo",
        "--out",
        key_path.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    let out = on_fresh(&["diff", "demo"]);
    assert_eq!(out.status.code(), Some(0), "in sync:\n{}", text(&out));

    let out = on_fresh(&["rebuild", "demo", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r = report(&out);
    for id in [
        "cloud/instance/server/0",
        "cloud/instance/agent/0",
        "cloud/instance/agent/1",
    ] {
        assert_eq!(
            node_outcome(&r, id)["state"]["outcome"],
            "unchanged",
            "{id} kept from the other machine's rebuild: {r}"
        );
    }
    assert_eq!(bed.nodes("demo").len(), 3, "no instance was replaced");

    // kubectl works with the kubeconfig the second machine derived.
    let kubeconfig = fresh.join("clusters/demo/kubeconfig");
    let out = std::process::Command::new(control_plane::kubectl_binary())
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args([
            "--request-timeout=20s",
            "get",
            "deployments",
            "-n",
            "web",
            "-o",
            "name",
        ])
        .output()
        .expect("kubectl runs");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && listed.contains("deployment.apps/web"),
        "kubectl through the new home: {listed}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Another endpoint override (a tunnel on another address) reaches nothing here, but the
    // cloud layer still compares in sync: the override is not in the user-data.
    let out = bed
        .command(&repo.dir)
        .env("PHOENIX_HOME", &fresh)
        .env(
            "PHOENIX_CLUSTER_ENDPOINT",
            "https://tunnel.example.invalid:16443",
        )
        .args(["diff", "demo", "--output", "json"])
        .output()
        .expect("run phoenix");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("diff --output json: {e}\n{}", text(&out)));
    let cloud = v["layers"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["layer"] == "cloud"))
        .cloned()
        .expect("a cloud layer");
    assert_eq!(cloud["status"], "in-sync", "{cloud}");
}

/// The cluster secret lost too: destroy still tears the cloud down (for k3s, deleting the
/// cluster's objects first is best effort), warning that the cluster cannot be reached.
#[test]
fn destroy_without_the_cluster_secret_still_removes_the_cloud() {
    let bed = Bed::new();
    let repo = bed.demo_repo();
    let out = bed.phoenix(&repo.dir, &["rebuild", "demo", "--layers", "cloud"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(bed.live_cloud("demo") > 0);
    let fresh = bed.git.path("no-secret-home");
    std::fs::create_dir_all(&fresh).expect("mkdir");
    let out = bed
        .command(&repo.dir)
        .env("PHOENIX_HOME", &fresh)
        .env_remove("PHOENIX_DEMO_CLUSTER_SECRET")
        .args(["destroy", "demo", "--yes"])
        .output()
        .expect("run phoenix");
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("PHOENIX_DEMO_CLUSTER_SECRET"), "{all}");
    assert_eq!(
        bed.live_cloud("demo"),
        0,
        "every cloud resource of demo is gone"
    );
}

/// Issue 14, item 5, through the binary: the demo's k3s server (`cluster.endpoint: public`) is
/// stopped behind phoenix's back. `plan` shows the start as refused and the agents unchanged
/// (they join the server's private address, which a stop keeps); `rebuild` fails naming the
/// instance and what to do, and leaves it stopped (no start, no replacement).
#[test]
fn a_stopped_k3s_server_is_refused_by_plan_and_rebuild_not_started() {
    let bed = Bed::new();
    let repo = bed.demo_repo();
    let out = bed.phoenix(&repo.dir, &["rebuild", "demo", "--layers", "cloud"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ec2 = bed.ec2_client();
    let server = |ec2: &aws_sdk_ec2::Client| {
        let out = bed
            .rt
            .block_on(
                ec2.describe_instances()
                    .filters(
                        aws_sdk_ec2::types::Filter::builder()
                            .name("tag:phoenix:resource")
                            .values("instance/server/0")
                            .build(),
                    )
                    .filters(
                        aws_sdk_ec2::types::Filter::builder()
                            .name("tag:phoenix:env")
                            .values("demo")
                            .build(),
                    )
                    .send(),
            )
            .expect("describe instances");
        let found: Vec<(String, String)> = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter_map(|i| {
                let state = i.state()?.name()?.as_str().to_string();
                let id = i.instance_id()?.to_string();
                (state != "terminated").then_some((id, state))
            })
            .collect();
        assert_eq!(found.len(), 1, "one server: {found:?}");
        found[0].clone()
    };
    let (id, _) = server(&ec2);
    bed.rt
        .block_on(ec2.stop_instances().instance_ids(&id).send())
        .expect("stop the server");

    let out = bed.phoenix(
        &repo.dir,
        &["plan", "demo", "--layers", "cloud", "--detailed-exitcode"],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        all.contains("~   update instance/server/0: state stopped → running (refused: phoenix does not start a stopped k3s server"),
        "{all}"
    );
    for agent in ["instance/agent/0", "instance/agent/1"] {
        assert!(all.contains(&format!("unchanged {agent}")), "{all}");
    }
    let out = bed.phoenix(
        &repo.dir,
        &["plan", "demo", "--layers", "cloud", "--output", "json"],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("plan --output json: {e}\n{}", text(&out)));
    let change = v["changes"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["id"] == "cloud/instance/server/0"))
        .cloned()
        .expect("the server's change");
    assert_eq!(change["action"], "refused", "{change}");
    assert!(
        change["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("phoenix does not start a stopped k3s server")),
        "{change}"
    );

    let out = bed.phoenix(&repo.dir, &["rebuild", "demo", "--layers", "cloud"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    for needle in [
        format!("instance {id} is stopped"),
        format!("aws ec2 terminate-instances --instance-ids {id}"),
        "cluster.endpoint: private".to_string(),
    ] {
        assert!(all.contains(&needle), "{needle:?} in:\n{all}");
    }
    assert_eq!(
        server(&ec2),
        (id, "stopped".to_string()),
        "left stopped, not replaced"
    );
}
