//! The real `phoenix` binary on real Git repositories made in temp dirs: what a user types and sees,
//! with exit codes. The cloud tests run against a moto server started by the test.

use testkit::{git, moto};

use git::{Repo, Sandbox};
use std::path::Path;
use std::process::{Command, Output, Stdio};

const SKETCH: &str = "tests/fixtures/valid/design-sketch";

/// The binary in `dir`, hermetic (no endpoint: a test adds the one it runs against).
pub(super) fn command(sb: &Sandbox, dir: &Path) -> Command {
    testkit::bed::hermetic(sb, dir)
}

pub(super) fn phoenix(sb: &Sandbox, dir: &Path, args: &[&str]) -> Output {
    command(sb, dir).args(args).output().expect("run phoenix")
}

/// Like [`phoenix`], with EC2 at `endpoint` (moto, or a port nothing listens on).
fn phoenix_at(sb: &Sandbox, dir: &Path, endpoint: &str, args: &[&str]) -> Output {
    command(sb, dir)
        .env("AWS_ENDPOINT_URL", endpoint)
        .args(args)
        .output()
        .expect("run phoenix")
}

pub(super) fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub(super) fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// Copies a fixture tree into the repo's work tree.
fn copy_tree(src: &Path, dst: &Path) {
    for entry in std::fs::read_dir(src).expect("read fixture dir") {
        let entry = entry.expect("dir entry");
        let to = dst.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            std::fs::create_dir_all(&to).expect("mkdir");
            copy_tree(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).expect("copy file");
        }
    }
}

pub(super) fn sketch_repo(sb: &Sandbox) -> Repo<'_> {
    let repo = sb.repo("envs");
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join(SKETCH),
        &repo.dir,
    );
    // The loader fixture's manifests are bare kinds; validate also renders, so make them whole.
    repo.write(
        "templates/addons/ingress-nginx/ns.yaml.j2",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ingress-{{ env.name }}\n",
    );
    repo.write(
        "environments/design-sketch/apps/web/deploy.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: web, namespace: web }\nspec:\n  selector: { matchLabels: { app: web } }\n  template:\n    metadata: { labels: { app: web } }\n    spec: { containers: [{ name: web, image: nginx }] }\n",
    );
    repo.commit("the design sketch");
    repo
}

#[test]
fn validate_accepts_a_valid_environment_and_names_the_commit() {
    let sb = Sandbox::new();
    let repo = sketch_repo(&sb);
    let out = phoenix(&sb, &repo.dir, &["validate", "design-sketch"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(code(&out), 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains(&repo.head()),
        "the commit SHA is in the output:\n{stdout}"
    );

    let out = phoenix(
        &sb,
        &repo.dir,
        &["validate", "design-sketch", "--output", "json"],
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("validate --output json is JSON");
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["commit"]["sha"], repo.head());
}

#[test]
fn validate_reports_every_problem_with_file_line_and_field() {
    let sb = Sandbox::new();
    let repo = sketch_repo(&sb);
    repo.write(
        "environments/broken/environment.yaml",
        "apiVersion: phoenix/v1\nkind: Environment\nmetadata: { name: broken }\nspec:\n  recoveryObjective: soon\n  cloud:\n    provider: aws\n    region: us-east-1\n    network: { cidr: 10.0.0.0/33, subnets: [] }\n    instanses: []\n",
    );
    repo.commit("broken");
    let out = phoenix(&sb, &repo.dir, &["validate", "broken"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(code(&out), 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let all = format!("{stdout}{stderr}");
    for needle in [
        "environments/broken/environment.yaml:5:",
        "spec.recoveryObjective",
        "environments/broken/environment.yaml:9:",
        "spec.cloud.network.cidr",
        "environments/broken/environment.yaml:10:",
        "instanses",
    ] {
        assert!(all.contains(needle), "{needle:?} missing from:\n{all}");
    }

    let out = phoenix(&sb, &repo.dir, &["validate", "broken", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON diagnostics");
    assert_eq!(code(&out), 1);
    assert_eq!(v["valid"], false);
    assert!(
        v["diagnostics"].as_array().is_some_and(|d| d.len() >= 3),
        "{v}"
    );
}

#[test]
fn an_unknown_environment_lists_the_ones_that_exist() {
    let sb = Sandbox::new();
    let repo = sketch_repo(&sb);
    let out = phoenix(&sb, &repo.dir, &["validate", "nope"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(code(&out), 1);
    assert!(
        format!("{stdout}{stderr}").contains("design-sketch"),
        "{stdout}{stderr}"
    );
}

#[test]
fn plan_offline_shows_every_layer_and_json_carries_the_commit() {
    let sb = Sandbox::new();
    let repo = sketch_repo(&sb);
    let out = phoenix(&sb, &repo.dir, &["plan", "design-sketch", "--offline"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(code(&out), 0, "{stderr}");
    for needle in [
        "cloud",
        "cluster",
        "addons",
        "apps",
        "cloud/vpc",
        "apps/web",
        "(after addons/ingress)",
    ] {
        assert!(
            stdout.contains(needle),
            "{needle:?} missing from:\n{stdout}"
        );
    }
    let out = phoenix(
        &sb,
        &repo.dir,
        &[
            "plan",
            "design-sketch",
            "--offline",
            "--detailed-exitcode",
            "-o",
            "json",
        ],
    );
    assert_eq!(code(&out), 2, "changes pending from nothing");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    assert_eq!(v["commit"]["sha"], repo.head());
    assert_eq!(v["schemaVersion"], 1);
    let ids: Vec<&str> = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert!(
        ids.contains(&"cloud/instance/agent/1") && ids.contains(&"addons/ingress"),
        "{ids:?}"
    );
}

#[test]
fn offline_plan_shows_namespaces_and_only_the_layers_the_env_has_or_asks_for() {
    let sb = Sandbox::new();
    let repo = sb.repo("envs");
    repo.write(
        "environments/e/environment.yaml",
        "apiVersion: phoenix/v1\nkind: Environment\nmetadata: { name: e }\nspec:\n  cluster: { existing: { kubeconfig: /nonexistent } }\n  apps:\n    - { name: web, path: apps/web, namespace: shop }\n",
    );
    repo.write(
        "environments/e/apps/web/all.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: { name: shop }\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: { name: hello }\ndata: { a: b }\n",
    );
    repo.commit("an existing cluster with one app");
    let out = phoenix(&sb, &repo.dir, &["plan", "e", "--offline"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(code(&out), 0, "{stderr}");
    assert!(stdout.contains("ConfigMap shop/hello"), "{stdout}");
    assert!(stdout.contains("Namespace shop\n"), "{stdout}");
    assert!(
        !stdout.contains("\ncloud"),
        "layers the env does not have are not shown:\n{stdout}"
    );
    // Without add-ons, a rebuild still prunes those that left Git: the plan shows that node only.
    assert!(
        stdout.contains("\naddons (1 node") && stdout.contains("= addons/.removed"),
        "{stdout}"
    );
    let out = phoenix(
        &sb,
        &repo.dir,
        &["plan", "e", "--offline", "--layers", "apps"],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(code(&out), 0, "{stderr}");
    assert!(
        stdout.contains("apps/web") && !stdout.contains("cluster/control-plane"),
        "{stdout}"
    );
}

/// The `plan --output json` document (docs/json.md), pinned: a change here is a schema change.
#[test]
fn plan_json_snapshot() {
    let sb = Sandbox::new();
    let repo = sb.repo("envs");
    repo.write(
        "environments/e/environment.yaml",
        "apiVersion: phoenix/v1\nkind: Environment\nmetadata: { name: e }\nspec:\n  cluster: { existing: { kubeconfig: /nonexistent } }\n  apps:\n    - { name: web, path: apps/web, namespace: shop }\n",
    );
    repo.write(
        "environments/e/apps/web/all.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: { name: shop }\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: { name: hello }\ndata: { a: b }\n",
    );
    let sha = repo.commit("snapshot");
    let out = phoenix(&sb, &repo.dir, &["plan", "e", "--offline", "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", text(&out).1);
    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    assert_eq!(v["commit"]["sha"], sha.as_str());
    for key in [
        "sha",
        "shortSha",
        "time",
        "repo",
        "authorName",
        "authorEmail",
    ] {
        assert!(v["commit"].get(key).is_some(), "commit.{key}: {v:#}");
        v["commit"][key] = "*".into();
    }
    let want = serde_json::json!({
        "schemaVersion": 1,
        "env": "e",
        "commit": {
            "sha": "*", "shortSha": "*", "summary": "snapshot", "authorName": "*",
            "authorEmail": "*", "time": "*", "reference": "HEAD",
            "resolved": { "kind": "branch", "name": "main" }, "repo": "*",
            "signature": { "status": "unsigned" }
        },
        "offline": true,
        "layers": ["cluster", "addons", "apps"],
        "changes": [
            { "id": "cluster/control-plane", "layer": "cluster", "resource": "control-plane",
              "action": "create",
              "detail": "existing cluster of e: /readyz, nodes Ready, kube-system available",
              "fields": [] },
            { "id": "addons/.removed", "layer": "addons", "resource": ".removed",
              "action": "unchanged", "detail": "removal of add-ons no longer in Git",
              "fields": [] },
            { "id": "apps/web", "layer": "apps", "resource": "Namespace/shop",
              "action": "create", "detail": null, "fields": [] },
            { "id": "apps/web", "layer": "apps", "resource": "ConfigMap/shop/hello",
              "action": "create", "detail": null, "fields": [] },
            { "id": "apps/.removed", "layer": "apps", "resource": ".removed",
              "action": "unchanged", "detail": "removal of apps no longer in Git",
              "fields": [] }
        ],
        "unknown": [],
        "unavailableSecrets": [],
        "summary": { "create": 3, "update": 0, "replace": 0, "delete": 0, "start": 0,
                     "wait": 0, "version": 0, "refused": 0, "unchanged": 2 }
    });
    assert_eq!(v, want, "{v:#}");
}

#[test]
fn the_commit_is_read_not_the_working_tree_and_a_dirty_tree_is_refused() {
    let sb = Sandbox::new();
    let repo = sketch_repo(&sb);
    let head = repo.head();
    // An uncommitted edit that would make the environment invalid.
    repo.write(
        "environments/design-sketch/environment.yaml",
        "not: [valid\n",
    );
    let out = phoenix(&sb, &repo.dir, &["validate", "design-sketch"]);
    let (_, stderr) = text(&out);
    assert_eq!(code(&out), 1);
    assert!(
        stderr.contains("environments/design-sketch/environment.yaml"),
        "dirty paths named:\n{stderr}"
    );
    assert!(
        stderr.contains("--allow-dirty"),
        "says how to proceed:\n{stderr}"
    );

    let out = phoenix(
        &sb,
        &repo.dir,
        &["validate", "design-sketch", "--allow-dirty"],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(code(&out), 0, "the committed version is valid:\n{stderr}");
    assert!(stdout.contains(&head));
}

#[test]
fn refs_tags_and_older_commits_select_what_is_read() {
    let sb = Sandbox::new();
    let repo = sketch_repo(&sb);
    let first = repo.head();
    repo.git(&["tag", "v1"]);
    repo.write(
        "environments/design-sketch/apps/api/deploy.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: api, namespace: web }\nspec: {}\n",
    );
    let env = std::fs::read_to_string(repo.dir.join("environments/design-sketch/environment.yaml"))
        .unwrap();
    repo.write(
        "environments/design-sketch/environment.yaml",
        format!("{env}    - {{ name: api, path: apps/api }}\n"),
    );
    let second = repo.commit("add api");

    let ids = |args: &[&str]| -> Vec<String> {
        let out = phoenix(&sb, &repo.dir, args);
        assert_eq!(code(&out), 0, "{}", text(&out).1);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(ids(&["plan", "design-sketch", "--offline", "-o", "json"])
        .contains(&"apps/api".to_string()));
    for r in ["v1", first.as_str(), &first[..10], "main~1"] {
        let got = ids(&[
            "plan",
            "design-sketch",
            "--offline",
            "-o",
            "json",
            "--ref",
            r,
        ]);
        assert!(
            !got.contains(&"apps/api".to_string()),
            "--ref {r} reads the first commit: {got:?}"
        );
    }
    let out = phoenix(
        &sb,
        &repo.dir,
        &[
            "plan",
            "design-sketch",
            "--offline",
            "-o",
            "json",
            "--ref",
            "v1",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["commit"]["sha"], first);
    assert_ne!(first, second);

    let out = phoenix(
        &sb,
        &repo.dir,
        &["validate", "design-sketch", "--ref", "no-such-branch"],
    );
    assert_eq!(code(&out), 1);
    assert!(text(&out).1.contains("no-such-branch"), "{}", text(&out).1);
}

#[test]
fn a_file_url_is_cloned_into_the_state_dir() {
    let sb = Sandbox::new();
    let repo = sketch_repo(&sb);
    let elsewhere = sb.path("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let out = phoenix(
        &sb,
        &elsewhere,
        &["validate", "design-sketch", "--repo", &repo.url()],
    );
    assert_eq!(code(&out), 0, "{}", text(&out).1);
    assert!(text(&out).0.contains(&repo.head()));
    assert!(
        sb.phoenix_home().exists(),
        "the clone cache lives under PHOENIX_HOME"
    );
}

#[test]
fn signed_commit_policy_refuses_unsigned_and_untrusted_commits() {
    let sb = Sandbox::new();
    let repo = sketch_repo(&sb);
    let trusted = sb.keygen("trusted");
    let other = sb.keygen("other");
    let keys = sb.keys_file("trusted-keys", &sb.public_key(&trusted));
    let keys = keys.to_str().unwrap();

    let out = phoenix(
        &sb,
        &repo.dir,
        &["validate", "design-sketch", "--trusted-keys", keys],
    );
    assert_eq!(code(&out), 1, "an unsigned commit is refused");
    assert!(
        text(&out).1.contains("not signed") || text(&out).1.contains("unsigned"),
        "{}",
        text(&out).1
    );

    repo.commit_signed("signed by a stranger", &other);
    let out = phoenix(
        &sb,
        &repo.dir,
        &["validate", "design-sketch", "--trusted-keys", keys],
    );
    assert_eq!(
        code(&out),
        1,
        "a commit signed by an untrusted key is refused: {}",
        text(&out).1
    );

    let sha = repo.commit_signed("signed by the trusted key", &trusted);
    let out = phoenix(
        &sb,
        &repo.dir,
        &["validate", "design-sketch", "--trusted-keys", keys],
    );
    assert_eq!(code(&out), 0, "{}", text(&out).1);
    assert!(text(&out).0.contains(&sha));
}

#[test]
fn render_redacts_secrets_and_history_is_empty_before_any_run() {
    let sb = Sandbox::new();
    let repo = sb.repo("envs");
    repo.write(
        "environments/s/environment.yaml",
        "apiVersion: phoenix/v1\nkind: Environment\nmetadata: { name: s }\nspec:\n  secrets: [{ name: token, from: env:PHOENIX_TEST_TOKEN }]\n  cluster: { existing: { kubeconfig: /nonexistent } }\n  apps:\n    - name: web\n      path: apps/web\n      secrets: [{ name: web-token, namespace: web, data: { token: token } }]\n",
    );
    repo.write(
        "environments/s/apps/web/cm.yaml.j2",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: web, namespace: web }\ndata: { token: \"{{ secrets.token }}\" }\n",
    );
    repo.commit("secret");
    let secret = "s3cr3t-value-that-must-not-leak";
    let out = command(&sb, &repo.dir)
        .env("PHOENIX_TEST_TOKEN", secret)
        .args(["render", "s"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(code(&out), 0, "{stderr}");
    assert!(
        !stdout.contains(secret) && !stderr.contains(secret),
        "the secret leaked:\n{stdout}{stderr}"
    );
    assert!(stdout.contains("**redacted**"), "{stdout}");
    assert!(stdout.contains("kind: Secret"), "{stdout}");

    let out = phoenix(&sb, &repo.dir, &["history", "s"]);
    assert_eq!(code(&out), 0, "{}", text(&out).1);
}

/// An env on an existing cluster whose kubeconfig (outside the commit) points at `server`.
pub(super) fn existing_cluster_repo<'a>(sb: &'a Sandbox, server: &str) -> Repo<'a> {
    let kubeconfig = sb.path("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{ name: c, cluster: {{ server: \"{server}\" }} }}]\n\
             users: [{{ name: u, user: {{ token: t0ken }} }}]\n\
             contexts: [{{ name: x, context: {{ cluster: c, user: u }} }}]\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    let repo = sb.repo("envs");
    repo.write(
        "environments/e/environment.yaml",
        format!(
            "apiVersion: phoenix/v1\nkind: Environment\nmetadata: {{ name: e }}\nspec:\n  cluster: {{ existing: {{ kubeconfig: {} }} }}\n  apps:\n    - {{ name: web, path: apps/web }}\n",
            kubeconfig.display()
        ),
    );
    repo.write(
        "environments/e/apps/web/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: web, namespace: default }\ndata: { a: b }\n",
    );
    repo.commit("an existing cluster");
    repo
}

/// A loopback port nothing listens on: connections to it are refused.
pub(super) fn refused_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Waits for `child` at most `limit`; kills it and fails the test past that.
fn wait_at_most(mut child: std::process::Child, limit: std::time::Duration, what: &str) -> Output {
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} still ran after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn an_existing_cluster_at_a_refused_address_fails_fast_and_says_what_it_waits_for_in_plain_lines() {
    let sb = Sandbox::new();
    let server = format!("http://127.0.0.1:{}", refused_port());
    let repo = existing_cluster_repo(&sb, &server);
    // stderr is a pipe (as under CI or `| tee`): plain progress lines, not bars, and not silence.
    let child = command(&sb, &repo.dir)
        .args(["rebuild", "e"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_at_most(
        child,
        std::time::Duration::from_secs(90),
        "rebuild against a refused address (the gate timeout is 10m)",
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(code(&out), 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for needle in [
        "→ cluster/control-plane started: existing cluster of e",
        &format!("existing cluster at {server}: waiting up to 10m for it to be ready; connections refused for 15s end the wait"),
        "cluster/control-plane: waiting for the control plane of e at",
        // The heartbeat: still waiting after 10 s, and for what.
        "… cluster/control-plane: waiting for the control plane of e",
        &format!("every connection to {server} was refused for 15s"),
    ] {
        assert!(
            stderr.contains(needle) || stdout.contains(needle),
            "no {needle:?} in\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    assert!(
        stderr.contains(&format!("GET {server}/readyz")),
        "the URL polled is named:\n{stderr}"
    );
    assert!(
        !stderr.contains("//readyz") && !stdout.contains("//readyz"),
        "no doubled slash:\n{stderr}"
    );
}

#[cfg(unix)]
#[test]
fn one_ctrl_c_ends_the_wait_for_an_unresponsive_cluster_promptly() {
    use std::io::BufRead;
    // A server that accepts connections and never answers: not refused, so only the timeout or
    // a Ctrl-C ends the wait.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    let sb = Sandbox::new();
    let repo = existing_cluster_repo(&sb, &server);
    let mut child = command(&sb, &repo.dir)
        .args(["rebuild", "e"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no waiting line; stderr so far:\n{}", seen.join("\n")));
        let waiting = line.contains("cluster/control-plane: waiting for the control plane of e");
        seen.push(line);
        if waiting {
            break;
        }
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = wait_at_most(
        child,
        std::time::Duration::from_secs(10),
        "rebuild after one Ctrl-C",
    );
    seen.extend(rx.try_iter());
    let stderr = seen.join("\n");
    assert_eq!(code(&out), 1, "{stderr}");
    assert!(
        stderr.contains(
            "↷ cluster/control-plane cancelled: cancelled while waiting for the control plane of e"
        ),
        "the node ends cancelled, naming its wait:\n{stderr}"
    );
}

fn cloud_repo(sb: &Sandbox, protected: bool) -> Repo<'_> {
    let repo = sb.repo("envs");
    repo.write(
        "environments/c1/environment.yaml",
        format!(
            "apiVersion: phoenix/v1\nkind: Environment\nmetadata: {{ name: c1, protected: {protected} }}\nspec:\n  cloud:\n    provider: aws\n    region: us-east-1\n    network: {{ cidr: 10.50.0.0/16, subnets: [{{ name: a, cidr: 10.50.1.0/24, zone: us-east-1a, public: true }}] }}\n    securityGroups: [{{ name: web, ingress: [{{ port: 80, from: 0.0.0.0/0 }}] }}]\n    instances:\n      - {{ name: web, count: 2, type: t3.micro, image: {{ owner: amazon, name: \"al2023-ami-2023*-kernel-6.1-x86_64\" }}, subnet: a, securityGroups: [web] }}\n"
        ),
    );
    repo.commit("c1");
    repo
}

fn phoenix_moto(sb: &Sandbox, dir: &Path, moto: &moto::Moto, args: &[&str]) -> Output {
    phoenix_at(sb, dir, &moto.endpoint(), args)
}

fn outcomes(out: &Output) -> Vec<String> {
    // With --output json, stdout is JSON lines and the run report is the last one.
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or("{}");
    let v: serde_json::Value = serde_json::from_str(last).expect("the last line is JSON");
    assert_eq!(v["type"], "runReport", "{last}");
    v["summary"]["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["state"]["outcome"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn rebuild_plan_and_destroy_a_cloud_environment_against_moto() {
    let moto = moto::Moto::start();
    let sb = Sandbox::new();
    let repo = cloud_repo(&sb, false);

    let out = phoenix_moto(
        &sb,
        &repo.dir,
        &moto,
        &["plan", "c1", "--detailed-exitcode"],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(
        code(&out),
        2,
        "changes pending before the first rebuild:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("+   create instance/web/1"), "{stdout}");

    // As from cron: no $USER or $LOGNAME.
    let out = command(&sb, &repo.dir)
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env_remove("USER")
        .env_remove("LOGNAME")
        .env_remove("PHOENIX_ACTOR")
        .args(["rebuild", "c1"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(code(&out), 0, "rebuild:\n{stdout}\n{stderr}");
    assert!(stderr.contains("converged"), "the final report:\n{stderr}");
    let out = phoenix_moto(&sb, &repo.dir, &moto, &["history", "c1", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("history JSON");
    let actor = v["runs"][0]["actor"].as_str().unwrap_or_default();
    assert!(
        !actor.is_empty() && actor != "unknown",
        "the actor without $USER is the Git identity or the OS user: {v:#}"
    );
    // A cloud-only environment: its history shows the cloud layer alone.
    let out = phoenix_moto(&sb, &repo.dir, &moto, &["history", "c1"]);
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("cloud converged")
            && !stdout.contains("cluster")
            && !stdout.contains("apps"),
        "{stdout}"
    );

    let out = phoenix_moto(
        &sb,
        &repo.dir,
        &moto,
        &["plan", "c1", "--detailed-exitcode"],
    );
    assert_eq!(
        code(&out),
        0,
        "nothing to do after the rebuild:\n{}",
        text(&out).0
    );

    let out = phoenix_moto(&sb, &repo.dir, &moto, &["rebuild", "c1", "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", text(&out).1);
    let got = outcomes(&out);
    assert!(
        !got.is_empty() && got.iter().all(|o| o == "unchanged"),
        "second rebuild changes nothing: {got:?}"
    );

    let out = phoenix_moto(&sb, &repo.dir, &moto, &["history", "c1"]);
    let (stdout, _) = text(&out);
    assert_eq!(
        stdout.matches("rebuild").count(),
        2,
        "two rebuilds in the audit trail:\n{stdout}"
    );

    // Without a terminal and without --yes nothing is deleted.
    let out = phoenix_moto(&sb, &repo.dir, &moto, &["destroy", "c1"]);
    assert_eq!(code(&out), 1);
    assert!(text(&out).1.contains("--yes"), "{}", text(&out).1);
    let out = phoenix_moto(
        &sb,
        &repo.dir,
        &moto,
        &["plan", "c1", "--detailed-exitcode"],
    );
    assert_eq!(code(&out), 0, "still all there");

    let out = phoenix_moto(&sb, &repo.dir, &moto, &["destroy", "c1", "--yes"]);
    assert_eq!(code(&out), 0, "{}", text(&out).1);
    let out = phoenix_moto(&sb, &repo.dir, &moto, &["plan", "c1", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    let actions: Vec<&str> = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["action"].as_str())
        .collect();
    assert!(
        !actions.is_empty() && actions.iter().all(|a| *a == "create"),
        "everything gone: {actions:?}"
    );
    // The live plan and the offline plan are one document with the graph's node ids.
    let live_ids: std::collections::BTreeSet<String> = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    let out = phoenix_moto(
        &sb,
        &repo.dir,
        &moto,
        &["plan", "c1", "--offline", "-o", "json"],
    );
    let offline: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    let offline_ids: std::collections::BTreeSet<String> = offline["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    // The offline plan is the run graph: besides every resource it lists the node that sets the
    // security group's rules, which the live plan reports under the group's own change.
    assert!(
        live_ids.is_subset(&offline_ids),
        "{live_ids:?} {offline_ids:?}"
    );
    let extra: Vec<&String> = offline_ids.difference(&live_ids).collect();
    assert_eq!(extra, ["cloud/sg/web/rules"], "{offline_ids:?}");
    let keys =
        |v: &serde_json::Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(keys(&v), keys(&offline), "one top-level shape");
    assert_eq!(
        v["summary"]["create"].as_u64().map(|n| n + 1),
        offline["summary"]["create"].as_u64()
    );
}

#[test]
fn destroy_refuses_a_protected_environment() {
    let moto = moto::Moto::start();
    let sb = Sandbox::new();
    let repo = cloud_repo(&sb, true);
    let out = phoenix_moto(&sb, &repo.dir, &moto, &["destroy", "c1", "--yes"]);
    let (_, stderr) = text(&out);
    assert_eq!(code(&out), 1);
    assert!(stderr.contains("protected"), "{stderr}");
}

#[test]
fn a_dead_ec2_endpoint_is_a_bounded_error_naming_it() {
    let sb = Sandbox::new();
    let repo = cloud_repo(&sb, false);
    let port = moto::free_port();
    let start = std::time::Instant::now();
    let dead = format!("http://127.0.0.1:{port}");
    let out = phoenix_at(&sb, &repo.dir, &dead, &["plan", "c1"]);
    let (_, stderr) = text(&out);
    assert_eq!(code(&out), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")),
        "names the endpoint:\n{stderr}"
    );
    assert!(
        start.elapsed() < std::time::Duration::from_secs(120),
        "bounded: {:?}",
        start.elapsed()
    );
}

#[test]
fn init_writes_environments_that_validate_in_a_fresh_repository_with_the_built_in_templates() {
    let sb = Sandbox::new();
    let repo = sb.repo("mine");
    // A fresh repository: no templates/ at all.
    repo.write("README.md", "my platform\n");
    repo.commit("start");
    for args in [
        &["init", "shop"][..],
        &["init", "cloudy", "--aws", "eu-west-1"],
    ] {
        let out = phoenix(&sb, &repo.dir, args);
        assert_eq!(code(&out), 0, "phoenix {args:?}: {}", text(&out).1);
    }
    repo.commit("two environments written by phoenix init");
    for env in ["shop", "cloudy"] {
        let out = phoenix(&sb, &repo.dir, &["validate", env]);
        let (stdout, stderr) = text(&out);
        assert_eq!(
            code(&out),
            0,
            "{env} validates as written:\n{stdout}\n{stderr}"
        );
    }
    // For scripts: the files written (docs/json.md).
    let out = phoenix(&sb, &repo.dir, &["init", "tiny", "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", text(&out).1);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("init JSON");
    assert_eq!(
        v,
        serde_json::json!({
            "schemaVersion": 1, "env": "tiny",
            "files": [
                "environments/tiny/environment.yaml",
                "environments/tiny/apps/hello/namespace.yaml",
                "environments/tiny/apps/hello/configmap.yaml.j2"
            ]
        })
    );
    repo.commit("a third");
    // Nothing is overwritten.
    let out = phoenix(&sb, &repo.dir, &["init", "shop"]);
    assert_eq!(code(&out), 1);
    assert!(text(&out).1.contains("already exists"), "{}", text(&out).1);

    // The built-in cloud-init renders; a file of the same path in the repository overrides it.
    let out = phoenix(&sb, &repo.dir, &["render", "cloudy"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(code(&out), 0, "{stderr}");
    assert!(stdout.contains("#cloud-config"), "{stdout}");
    let builtin = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/cloud-init/k3s-server.yaml.j2"),
    )
    .unwrap();
    repo.write(
        "templates/cloud-init/k3s-server.yaml.j2",
        builtin.replacen(
            "#cloud-config\n",
            "#cloud-config\n# overridden by this repository\n",
            1,
        ),
    );
    repo.commit("our own server user-data");
    let out = phoenix(&sb, &repo.dir, &["render", "cloudy"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(code(&out), 0, "{stderr}");
    assert!(
        stdout.contains("# overridden by this repository"),
        "{stdout}"
    );
}

#[test]
fn list_does_not_print_the_problems_of_unrelated_invalid_environments() {
    let sb = Sandbox::new();
    let repo = sb.repo("envs");
    repo.write(
        "environments/ok/environment.yaml",
        "apiVersion: phoenix/v1\nkind: Environment\nmetadata: { name: ok }\nspec:\n  cluster: { existing: { kubeconfig: /nonexistent } }\n",
    );
    repo.write(
        "environments/broken/environment.yaml",
        "apiVersion: phoenix/v1\nkind: Environment\nmetadata: { name: broken }\nspec:\n  clustr: {}\n  cluster: { existing: { kubeconfig: /x } }\n",
    );
    repo.commit("one valid, one not");
    let out = phoenix(&sb, &repo.dir, &["list", "-o", "json"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(code(&out), 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is one JSON document ({e}):\n{stdout}"));
    assert_eq!(v["copies"], serde_json::json!([]));
    assert_eq!(
        stderr.lines().count(),
        1,
        "one line about broken:\n{stderr}"
    );
    assert!(
        stderr.contains("environment broken is invalid") && !stderr.contains("clustr"),
        "{stderr}"
    );
}

/// Replaces what differs between runs — times, durations, run ids, the process, who ran it, the
/// VPC id, and the commit's hashes, author, time and path — with placeholders, so a document
/// compares with a fixed snapshot. Everything else (every key, every other value) is compared.
fn normalise(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match key.as_str() {
                    k if k.ends_with("Seconds") && v.is_number() => *v = "<seconds>".into(),
                    "ts" | "startedAt" | "finishedAt" | "created" | "expires" if v.is_string() => {
                        *v = "<time>".into()
                    }
                    "runId" => *v = "<runId>".into(),
                    "pid" => *v = "<pid>".into(),
                    "actor" | "host" if v.is_string() => *v = "<who>".into(),
                    "vpcId" => *v = "<vpc>".into(),
                    "commit" if v.is_string() => *v = "<sha>".into(),
                    "commit" if v.is_object() => {
                        for k in [
                            "sha",
                            "shortSha",
                            "time",
                            "repo",
                            "authorName",
                            "authorEmail",
                        ] {
                            assert!(v.get(k).is_some(), "commit.{k}: {v:#}");
                            v[k] = "*".into();
                        }
                    }
                    _ => normalise(v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise),
        _ => {}
    }
}

/// Every object key of `v` containing an underscore (docs/json.md: camelCase only).
fn snake_keys(v: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    if k.contains('_') {
                        out.push(k.clone());
                    }
                    walk(v, out);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(v, &mut out);
    out
}

/// The commit object of the versioned documents, normalised by [`normalise`].
fn commit_snapshot(summary: &str) -> serde_json::Value {
    serde_json::json!({
        "sha": "*", "shortSha": "*", "summary": summary, "authorName": "*", "authorEmail": "*",
        "time": "*", "reference": "HEAD", "resolved": { "kind": "branch", "name": "main" },
        "repo": "*", "signature": { "status": "unsigned" }
    })
}

/// A cloud environment of six nodes and no instances: quick on moto, and with `--concurrency 1`
/// its events come in one order.
fn small_cloud_repo(sb: &Sandbox) -> Repo<'_> {
    let repo = sb.repo("small");
    repo.write(
        "environments/c0/environment.yaml",
        "apiVersion: phoenix/v1\nkind: Environment\nmetadata: { name: c0 }\nspec:\n  cloud:\n    provider: aws\n    region: us-east-1\n    network: { cidr: 10.60.0.0/16, subnets: [{ name: a, cidr: 10.60.1.0/24, zone: us-east-1a, public: true }] }\n    securityGroups: [{ name: web, ingress: [{ port: 80, from: 0.0.0.0/0 }] }]\n",
    );
    repo.commit("c0");
    repo
}

/// `rebuild -o json` (run events and the run report), `history -o json`, `list -o json` and
/// `gc -o json` (docs/json.md), pinned: a change here is a schema change.
#[test]
fn rebuild_events_history_list_and_gc_json_snapshots() {
    use serde_json::json;
    let moto = moto::Moto::start();
    let sb = Sandbox::new();
    let repo = small_cloud_repo(&sb);
    let out = phoenix_moto(
        &sb,
        &repo.dir,
        &moto,
        &["rebuild", "c0", "-o", "json", "--concurrency", "1"],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(code(&out), 0, "{stdout}\n{stderr}");
    let mut lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a JSON line ({e}): {l}")))
        .collect();
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["schemaVersion"], 1, "line {i}: {line}");
        if line.get("commit").is_some() {
            assert_eq!(line["commit"], repo.head().as_str(), "line {i}: {line}");
        }
        assert_eq!(snake_keys(line), Vec::<String>::new(), "line {i}: {line}");
        if i + 1 < lines.len() {
            assert_eq!(line["seq"], i, "events are numbered in order: {line}");
        }
    }
    lines.iter_mut().for_each(normalise);
    // The order of the stream: one node at a time, layer by layer, the report last.
    let order: Vec<String> = lines
        .iter()
        .map(|l| {
            let what = l["id"].as_str().or(l["layer"].as_str()).unwrap_or("");
            format!("{} {what}", l["type"].as_str().unwrap_or("?"))
                .trim()
                .to_string()
        })
        .collect();
    let mut want: Vec<String> = vec!["runStarted".into(), "layerStarted cloud".into()];
    for id in [
        "cloud/vpc",
        "cloud/igw",
        "cloud/subnet/a",
        "cloud/rtb/public",
        "cloud/sg/web",
        "cloud/sg/web/rules",
    ] {
        for t in ["nodeStarted", "nodeProgress", "nodeFinished"] {
            want.push(format!("{t} {id}"));
        }
    }
    want.push("layerFinished cloud".into());
    for layer in ["cluster", "addons", "apps"] {
        want.push(format!("layerStarted {layer}"));
        want.push(format!("layerFinished {layer}"));
    }
    want.extend(["runFinished".to_string(), "runReport".to_string()]);
    assert_eq!(order, want, "{stdout}");

    let nodes = json!([
        { "id": "cloud/vpc", "layer": "cloud", "description": "vpc (10.60.0.0/16)" },
        { "id": "cloud/igw", "layer": "cloud", "description": "igw attached to the vpc" },
        { "id": "cloud/subnet/a", "layer": "cloud", "description": "subnet/a (10.60.1.0/24 in us-east-1a)" },
        { "id": "cloud/rtb/public", "layer": "cloud", "description": "rtb/public routing 0.0.0.0/0 to igw" },
        { "id": "cloud/sg/web/rules", "layer": "cloud", "description": "the rules of sg/web" },
        { "id": "cloud/sg/web", "layer": "cloud", "description": "sg/web" }
    ]);
    assert_eq!(
        lines[0],
        json!({ "schemaVersion": 1, "seq": 0, "ts": "<time>", "type": "runStarted",
                "runId": "<runId>", "env": "c0", "commit": "<sha>", "gitRef": null,
                "command": "rebuild", "actor": "<who>", "host": "<who>", "region": "us-east-1",
                "pid": "<pid>", "layers": ["cloud", "cluster", "addons", "apps"], "nodes": nodes }),
        "{:#}",
        lines[0]
    );
    assert_eq!(
        lines[1],
        json!({ "schemaVersion": 1, "seq": 1, "ts": "<time>", "type": "layerStarted",
                "layer": "cloud", "nodes": 6 })
    );
    assert_eq!(
        lines[2..5],
        [
            json!({ "schemaVersion": 1, "seq": 2, "ts": "<time>", "type": "nodeStarted",
                    "id": "cloud/vpc", "layer": "cloud", "description": "vpc (10.60.0.0/16)" }),
            json!({ "schemaVersion": 1, "seq": 3, "ts": "<time>", "type": "nodeProgress",
                    "id": "cloud/vpc", "message": "creating vpc" }),
            json!({ "schemaVersion": 1, "seq": 4, "ts": "<time>", "type": "nodeFinished",
                    "id": "cloud/vpc", "layer": "cloud",
                    "result": { "status": "succeeded", "outcome": "created" },
                    "durationSeconds": "<seconds>", "attempts": 1 }),
        ]
    );
    assert_eq!(
        lines[20],
        json!({ "schemaVersion": 1, "seq": 20, "ts": "<time>", "type": "layerFinished",
                "layer": "cloud", "status": "converged", "durationSeconds": "<seconds>" })
    );
    assert_eq!(
        lines[27],
        json!({ "schemaVersion": 1, "seq": 27, "ts": "<time>", "type": "runFinished",
                "runId": "<runId>", "converged": true, "cancelled": false,
                "durationSeconds": "<seconds>", "error": null })
    );
    let node = |id: &str, description: &str, outcome: &str, progress: &str| {
        json!({ "id": id, "layer": "cloud", "description": description,
                "state": { "status": "succeeded", "outcome": outcome }, "attempts": 1,
                "startSeconds": "<seconds>", "durationSeconds": "<seconds>",
                "lastProgress": progress, "inFlightAtCancel": false })
    };
    let layer = |name: &str, nodes: usize| {
        json!({ "layer": name, "status": "converged", "nodes": nodes,
                "startSeconds": "<seconds>", "durationSeconds": "<seconds>" })
    };
    let step = |id: &str, released_by: &str, after: Option<&str>| {
        json!({ "id": id, "layer": "cloud", "startSeconds": "<seconds>",
                "durationSeconds": "<seconds>", "releasedBy": released_by, "after": after })
    };
    assert_eq!(
        lines[28],
        json!({
            "schemaVersion": 1, "type": "runReport", "env": "c0", "commit": "<sha>",
            "summary": {
                "runId": "<runId>", "env": "c0",
                "nodes": [
                    node("cloud/vpc", "vpc (10.60.0.0/16)", "created", "creating vpc"),
                    node("cloud/igw", "igw attached to the vpc", "created", "creating igw"),
                    node("cloud/subnet/a", "subnet/a (10.60.1.0/24 in us-east-1a)", "created", "creating subnet/a"),
                    node("cloud/rtb/public", "rtb/public routing 0.0.0.0/0 to igw", "created", "creating rtb/public"),
                    node("cloud/sg/web/rules", "the rules of sg/web", "updated", "sg/web: authorizing tcp/80 from 0.0.0.0/0"),
                    node("cloud/sg/web", "sg/web", "created", "creating sg/web"),
                ],
                "layers": [layer("cloud", 6), layer("cluster", 0), layer("addons", 0), layer("apps", 0)],
                "durationSeconds": "<seconds>", "converged": true, "cancelled": false, "error": null,
                "criticalPath": [
                    step("cloud/vpc", "start", None),
                    step("cloud/sg/web", "dependency", Some("cloud/vpc")),
                    step("cloud/sg/web/rules", "dependency", Some("cloud/sg/web")),
                ]
            }
        }),
        "{:#}",
        lines[28]
    );

    // The audit record of that run, as `history` prints it.
    let out = phoenix_moto(&sb, &repo.dir, &moto, &["history", "c0", "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", text(&out).1);
    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("history JSON");
    assert_eq!(snake_keys(&v), Vec::<String>::new(), "{v:#}");
    assert_eq!(v["runs"][0]["commit"], repo.head().as_str());
    normalise(&mut v);
    let record_node = |id: &str, outcome: &str| {
        json!({ "id": id, "layer": "cloud", "started": true,
                "result": { "status": "succeeded", "outcome": outcome },
                "durationSeconds": "<seconds>", "attempts": 1 })
    };
    let record_layer = |name: &str| json!({ "layer": name, "status": "converged", "durationSeconds": "<seconds>" });
    assert_eq!(
        v,
        json!({
            "schemaVersion": 1, "env": "c0",
            "runs": [{
                "recordVersion": 2, "runId": "<runId>", "env": "c0", "command": "rebuild",
                "commit": "<sha>", "gitRef": null, "actor": "<who>", "host": "<who>",
                "region": "us-east-1", "pid": "<pid>", "startedAt": "<time>", "finishedAt": "<time>", "durationSeconds": "<seconds>",
                "outcome": "converged", "error": null, "cancelReason": null, "inFlightAtCancel": [],
                "layers": [record_layer("cloud"), record_layer("cluster"), record_layer("addons"), record_layer("apps")],
                "nodes": [
                    record_node("cloud/vpc", "created"),
                    record_node("cloud/igw", "created"),
                    record_node("cloud/subnet/a", "created"),
                    record_node("cloud/rtb/public", "created"),
                    record_node("cloud/sg/web/rules", "updated"),
                    record_node("cloud/sg/web", "created"),
                ]
            }]
        }),
        "{v:#}"
    );

    // An ephemeral copy, as `list` prints it; gone once destroyed.
    let out = phoenix_moto(
        &sb,
        &repo.dir,
        &moto,
        &["up", "c0", "--ephemeral", "pr", "--ttl", "1h"],
    );
    assert_eq!(code(&out), 0, "{}", text(&out).1);
    let out = phoenix_moto(&sb, &repo.dir, &moto, &["list", "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", text(&out).1);
    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list JSON");
    let copy = &v["copies"][0];
    assert_eq!(copy["commit"], repo.head().as_str(), "{v:#}");
    assert!(
        copy["vpcId"]
            .as_str()
            .is_some_and(|id| id.starts_with("vpc-")),
        "{v:#}"
    );
    let time = |k: &str| {
        humantime::parse_rfc3339(copy[k].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{k} is RFC 3339 ({e}): {v:#}"))
    };
    assert_eq!(
        time("expires").duration_since(time("created")).unwrap(),
        std::time::Duration::from_secs(3600),
        "--ttl 1h"
    );
    normalise(&mut v);
    assert_eq!(
        v,
        json!({
            "schemaVersion": 1,
            "copies": [{
                "env": "c0-pr", "copy": "ephemeral", "baseEnv": "c0", "region": "us-east-1",
                "vpcId": "<vpc>", "commit": "<sha>", "created": "<time>", "expires": "<time>",
                "expired": false
            }]
        }),
        "{v:#}"
    );
    // An expired copy, as `gc` reports it: the dry run, then the teardown (its run events, then
    // the gc report last); the unexpired copy is left alone.
    let out = phoenix_moto(
        &sb,
        &repo.dir,
        &moto,
        &["up", "c0", "--ephemeral", "old", "--ttl", "1s"],
    );
    assert_eq!(code(&out), 0, "{}", text(&out).1);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let gc_report = |stdout: &[u8]| -> serde_json::Value {
        let stdout = String::from_utf8_lossy(stdout);
        let mut last: serde_json::Value =
            serde_json::from_str(stdout.lines().last().unwrap_or_default())
                .unwrap_or_else(|e| panic!("the last line is the gc report ({e}):\n{stdout}"));
        normalise(&mut last);
        last
    };
    let collected = |result: &str| {
        json!({
            "schemaVersion": 1, "type": "gcReport", "dryRun": result == "would-destroy",
            "copies": [{ "env": "c0-old", "baseEnv": "c0", "region": "us-east-1",
                         "expires": "<time>", "result": result, "error": null }]
        })
    };
    let out = phoenix_moto(&sb, &repo.dir, &moto, &["gc", "--dry-run", "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", text(&out).1);
    assert_eq!(
        out.stdout.iter().filter(|b| **b == b'\n').count(),
        1,
        "{}",
        text(&out).0
    );
    assert_eq!(gc_report(&out.stdout), collected("would-destroy"));
    let out = phoenix_moto(&sb, &repo.dir, &moto, &["gc", "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", text(&out).1);
    assert_eq!(gc_report(&out.stdout), collected("destroyed"));
    let (stdout, _) = text(&out);
    assert!(
        stdout
            .lines()
            .take(stdout.lines().count() - 1)
            .all(|l| serde_json::from_str::<serde_json::Value>(l)
                .is_ok_and(|v| v["schemaVersion"] == 1 && v["seq"].is_number())),
        "run events before the report:\n{stdout}"
    );
    let out = phoenix_moto(&sb, &repo.dir, &moto, &["list", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list JSON");
    assert_eq!(
        v["copies"].as_array().map(Vec::len),
        Some(1),
        "only pr is left: {v:#}"
    );

    let out = phoenix_moto(
        &sb,
        &repo.dir,
        &moto,
        &["destroy", "c0", "--ephemeral", "pr", "--yes"],
    );
    assert_eq!(code(&out), 0, "{}", text(&out).1);
    let out = phoenix_moto(&sb, &repo.dir, &moto, &["list", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list JSON");
    assert_eq!(v, json!({ "schemaVersion": 1, "copies": [] }));
}

/// An audit record as phoenix wrote it before record version 2: snake_case keys, durations in
/// milliseconds, the version in `version`.
const OLD_RECORD: &str = r#"{
  "version": 1,
  "run_id": "65a1b2c3d4e5",
  "env": "s",
  "command": "rebuild",
  "commit": "0123456789abcdef0123456789abcdef01234567",
  "git_ref": "main",
  "actor": "ops",
  "host": "old-box",
  "pid": 4242,
  "started_at": "2026-11-23T19:21:13.123Z",
  "finished_at": "2026-11-23T19:22:14.623Z",
  "duration_ms": 61500,
  "outcome": "failed",
  "error": "1 node failed",
  "cancel_reason": null,
  "in_flight_at_cancel": [],
  "layers": [
    { "layer": "cloud", "status": "excluded", "duration_ms": null },
    { "layer": "cluster", "status": "failed", "duration_ms": 61500 },
    { "layer": "addons", "status": "skipped", "duration_ms": 0 },
    { "layer": "apps", "status": "skipped", "duration_ms": 0 }
  ],
  "nodes": [
    { "id": "cluster/control-plane", "layer": "cluster", "started": true,
      "result": { "status": "failed", "error": "API server not ready", "timed_out": true },
      "duration_ms": 61500, "attempts": 3 },
    { "id": "apps/web", "layer": "apps", "started": false,
      "result": { "status": "skipped", "reason": "layer cluster did not converge" },
      "duration_ms": 0, "attempts": 0 }
  ]
}
"#;

/// The audit trail outlives upgrades: a record written by an older phoenix is still listed, by
/// `history` and in its current JSON schema.
#[test]
fn history_lists_a_record_written_by_an_older_version() {
    let sb = Sandbox::new();
    let repo = sb.repo("envs");
    repo.write(
        "environments/s/environment.yaml",
        "apiVersion: phoenix/v1\nkind: Environment\nmetadata: { name: s }\nspec:\n  cluster: { existing: { kubeconfig: /nonexistent } }\n  apps:\n    - { name: web, path: apps/web }\n",
    );
    repo.write(
        "environments/s/apps/web/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: web, namespace: default }\n",
    );
    repo.commit("s");
    let runs = sb.phoenix_home().join("runs/s");
    std::fs::create_dir_all(&runs).unwrap();
    std::fs::write(runs.join("20261123T192113Z-65a1b2c3d4e5.json"), OLD_RECORD).unwrap();

    let out = phoenix(&sb, &repo.dir, &["history", "s"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(code(&out), 0, "{stderr}");
    assert!(
        stderr.is_empty(),
        "no warning about the old record: {stderr}"
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("2026-11-23 19:21:13"))
        .unwrap_or_else(|| panic!("the old run is listed:\n{stdout}"));
    for needle in [
        "rebuild",
        "0123456789ab",
        "ops",
        "failed",
        "1m 1s",
        "cluster failed 1m 1s",
        "apps skipped 0ms",
    ] {
        assert!(row.contains(needle), "{needle:?} in {row:?}");
    }
    assert!(stdout.contains("↳ 1 node failed"), "{stdout}");

    let out = phoenix(&sb, &repo.dir, &["history", "s", "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", text(&out).1);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("history JSON");
    assert_eq!(
        v,
        serde_json::json!({
            "schemaVersion": 1, "env": "s",
            "runs": [{
                "recordVersion": 1, "runId": "65a1b2c3d4e5", "env": "s", "command": "rebuild",
                "commit": "0123456789abcdef0123456789abcdef01234567", "gitRef": "main",
                "actor": "ops", "host": "old-box", "region": null, "pid": 4242,
                "startedAt": "2026-11-23T19:21:13.123Z", "finishedAt": "2026-11-23T19:22:14.623Z",
                "durationSeconds": 61.5, "outcome": "failed", "error": "1 node failed",
                "cancelReason": null, "inFlightAtCancel": [],
                "layers": [
                    { "layer": "cloud", "status": "excluded", "durationSeconds": null },
                    { "layer": "cluster", "status": "failed", "durationSeconds": 61.5 },
                    { "layer": "addons", "status": "skipped", "durationSeconds": 0.0 },
                    { "layer": "apps", "status": "skipped", "durationSeconds": 0.0 }
                ],
                "nodes": [
                    { "id": "cluster/control-plane", "layer": "cluster", "started": true,
                      "result": { "status": "failed", "error": "API server not ready", "timedOut": true },
                      "durationSeconds": 61.5, "attempts": 3 },
                    { "id": "apps/web", "layer": "apps", "started": false,
                      "result": { "status": "skipped", "reason": "layer cluster did not converge" },
                      "durationSeconds": 0.0, "attempts": 0 }
                ]
            }]
        }),
        "{v:#}"
    );

    // A record from a newer phoenix is skipped with a warning naming the file and the field;
    // the rest is still listed.
    let newer = OLD_RECORD.replace(r#""version": 1"#, r#""recordVersion": 9"#);
    std::fs::write(runs.join("20261124T000000Z-ffffffffffff.json"), newer).unwrap();
    let out = phoenix(&sb, &repo.dir, &["history", "s", "-o", "json"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(code(&out), 0, "{stderr}");
    assert!(
        stderr.contains("20261124T000000Z-ffffffffffff.json")
            && stderr.contains("recordVersion is 9"),
        "{stderr}"
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("history JSON");
    assert_eq!(v["runs"].as_array().map(Vec::len), Some(1), "{v:#}");
}

/// `validate --output json` (docs/json.md), pinned, valid and invalid.
#[test]
fn validate_json_snapshot() {
    let sb = Sandbox::new();
    let repo = sb.repo("envs");
    repo.write(
        "environments/ok/environment.yaml",
        "apiVersion: phoenix/v1\nkind: Environment\nmetadata: { name: ok }\nspec:\n  cluster: { existing: { kubeconfig: /x } }\n",
    );
    repo.write(
        "environments/bad/environment.yaml",
        "apiVersion: phoenix/v1\nkind: Environment\nmetadata: { name: bad }\nspec:\n  recoveryObjective: soon\n  clustr: {}\n  cluster: { existing: { kubeconfig: /x } }\n",
    );
    repo.commit("two envs");
    let out = phoenix(&sb, &repo.dir, &["validate", "bad", "-o", "json"]);
    assert_eq!(code(&out), 1, "{}", text(&out).1);
    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("validate JSON");
    assert_eq!(v["commit"]["sha"], repo.head().as_str());
    normalise(&mut v);
    assert_eq!(
        v,
        serde_json::json!({
            "schemaVersion": 1, "env": "bad", "commit": commit_snapshot("two envs"),
            "valid": false,
            "diagnostics": [
                { "file": "environments/bad/environment.yaml", "line": 5, "column": 22,
                  "field": "spec.recoveryObjective",
                  "message": "\"soon\" is not a valid duration: expected number at 0",
                  "help": "write a duration like 30s, 5m, 1h30m" },
                { "file": "environments/bad/environment.yaml", "line": 6, "column": 3,
                  "field": "spec.clustr", "message": "unknown field \"clustr\"",
                  "help": "did you mean \"cluster\"? valid keys: recoveryObjective, watch, values, timeouts, secrets, cloud, cluster, addons, apps, volumes, failover, dns" }
            ]
        }),
        "{v:#}"
    );
    // Any command stopped by an invalid environment prints the same document, then the error
    // document every failure prints with --output json.
    let out = phoenix(&sb, &repo.dir, &["plan", "bad", "--offline", "-o", "json"]);
    assert_eq!(code(&out), 1);
    let mut docs: Vec<serde_json::Value> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("JSON documents ({e}): {}", text(&out).0));
    assert_eq!(docs.len(), 2, "{docs:#?}");
    normalise(&mut docs[0]);
    assert_eq!(docs[0], v);
    assert_eq!(
        docs[1],
        serde_json::json!({
            "schemaVersion": 1, "type": "error",
            "error": format!("environment bad at commit {} is invalid (2 problems)", &repo.head()[..7]),
            "causes": [], "help": "run `phoenix validate bad` for the full list", "exitCode": 1
        })
    );

    let out = phoenix(&sb, &repo.dir, &["validate", "ok", "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", text(&out).1);
    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("validate JSON");
    normalise(&mut v);
    assert_eq!(
        v,
        serde_json::json!({
            "schemaVersion": 1, "env": "ok", "commit": commit_snapshot("two envs"),
            "valid": true, "diagnostics": []
        })
    );
}

/// A drill report of version 1 as `phoenix drill` writes it (docs/json.md, "drill").
const VERSIONED_DRILL: &str = r#"{"schemaVersion":1,"type":"drillReport","env":"e","copy":"e-drill-abcdef","commit":{"sha":"89abcdef01234567","shortSha":"89abcde"},"startedAt":"2026-11-02T10:00:00Z","verdict":"over-objective","recoveryObjectiveSeconds":600.0,"recoverySeconds":700.5,"rebuildSeconds":690.0,"verifySeconds":10.5,"teardownSeconds":30.0,"kept":false,"rebuild":null,"verify":null,"teardown":null,"failures":[]}"#;

/// `phoenix runbook` reads the last drill report back as the typed report the drill writes, and
/// one written before it was versioned (snake_case, milliseconds); an unreadable one is named.
#[test]
fn runbook_reads_the_last_drill_report_in_either_format() {
    let sb = Sandbox::new();
    let repo = sb.repo("envs");
    repo.write(
        "environments/e/environment.yaml",
        "apiVersion: phoenix/v1\nkind: Environment\nmetadata: { name: e }\nspec:\n  recoveryObjective: 10m\n  cluster: { existing: { kubeconfig: /nonexistent } }\n",
    );
    repo.commit("e");
    let dir = sb.phoenix_home().join("drills/e");
    std::fs::create_dir_all(&dir).unwrap();
    let last = dir.join("last.json");
    let runbook = |sb: &Sandbox| {
        let out = phoenix(sb, &repo.dir, &["runbook", "e"]);
        let (stdout, stderr) = text(&out);
        assert_eq!(code(&out), 0, "{stderr}");
        (stdout, stderr)
    };

    std::fs::write(
        &last,
        r#"{"report":"drill","env":"e","verdict":"passed","started_at":"2026-11-01T10:00:00Z","commit":{"sha":"0123456789abcdef","short_sha":"0123456"},"recovery_ms":65000}"#,
    )
    .unwrap();
    let (stdout, _) = runbook(&sb);
    assert!(
        stdout.contains("Last drill: **passed** on 2026-11-01T10:00:00Z at commit `0123456`, recovery took 1m 5s"),
        "{stdout}"
    );

    std::fs::write(&last, VERSIONED_DRILL).unwrap();
    let (stdout, _) = runbook(&sb);
    assert!(
        stdout.contains("Last drill: **over-objective** on 2026-11-02T10:00:00Z at commit `89abcde`, recovery took 11m 40s"),
        "{stdout}"
    );
    // Read as the typed report: a versioned report without a field the drill always writes is
    // named unreadable, not shown with guesses; a newer version is named as such.
    std::fs::write(&last, VERSIONED_DRILL.replace(r#""kept":false,"#, "")).unwrap();
    let (stdout, _) = runbook(&sb);
    assert!(
        stdout.contains("Last drill: unreadable (cannot parse ") && stdout.contains("kept"),
        "{stdout}"
    );
    std::fs::write(
        &last,
        VERSIONED_DRILL.replace(r#""schemaVersion":1"#, r#""schemaVersion":2"#),
    )
    .unwrap();
    let (stdout, _) = runbook(&sb);
    assert!(stdout.contains("written by a newer phoenix"), "{stdout}");

    std::fs::write(&last, "{ not json").unwrap();
    let (stdout, stderr) = runbook(&sb);
    assert!(
        stdout.contains("Last drill: unreadable (cannot parse ") && stdout.contains("last.json"),
        "{stdout}"
    );
    assert!(stderr.contains("last.json"), "{stderr}");
}

/// `render --output json` (docs/json.md), pinned.
#[test]
fn render_json_snapshot() {
    let sb = Sandbox::new();
    let repo = sb.repo("envs");
    repo.write(
        "environments/e/environment.yaml",
        "apiVersion: phoenix/v1\nkind: Environment\nmetadata: { name: e }\nspec:\n  cluster: { existing: { kubeconfig: /nonexistent } }\n  apps:\n    - { name: web, path: apps/web, namespace: shop }\n",
    );
    repo.write(
        "environments/e/apps/web/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: hello }\ndata: { a: b }\n",
    );
    repo.commit("snap");
    let out = phoenix(&sb, &repo.dir, &["render", "e", "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", text(&out).1);
    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("render JSON");
    assert_eq!(v["commit"]["sha"], repo.head().as_str());
    normalise(&mut v);
    assert_eq!(
        v,
        serde_json::json!({
            "schemaVersion": 1, "env": "e", "commit": commit_snapshot("snap"),
            "outputs": [{
                "what": "component web", "source": "environments/e/apps/web/cm.yaml",
                "content": "apiVersion: v1\ndata:\n  a: b\nkind: ConfigMap\nmetadata:\n  name: hello\n"
            }]
        }),
        "{v:#}"
    );
}

/// `phoenix ssh-key`: the private key of a key pair derived from the cluster secret, written to
/// a new 0600 file, the same on every machine (another empty PHOENIX_HOME), never printed, never
/// over an existing file; refused for an imported key pair and for an env without a key pair.
#[test]
fn ssh_key_writes_the_derived_private_key_once_and_refuses_what_it_cannot_derive() {
    let sb = Sandbox::new();
    let repo = sb.repo("envs");
    let env = |name: &str, key_pair: &str| {
        format!(
            "apiVersion: phoenix/v1\nkind: Environment\nmetadata: {{ name: {name} }}\nspec:\n  cloud:\n    provider: aws\n    region: us-east-1\n    network: {{ cidr: 10.50.0.0/16, subnets: [{{ name: a, cidr: 10.50.1.0/24, zone: us-east-1a, public: true }}] }}\n{key_pair}    instances:\n      - {{ name: server, role: server, count: 1, type: t3.micro, image: {{ id: ami-1 }}, subnet: a }}\n  cluster: {{ distribution: k3s, version: v1.31.4+k3s1, secret: env:SSH_KEY_TEST_SECRET }}\n"
        )
    };
    repo.write(
        "environments/derived/environment.yaml",
        env("derived", "    keyPair: { name: nodes }\n"),
    );
    repo.write(
        "environments/imported/environment.yaml",
        env(
            "imported",
            "    keyPair: { name: nodes, publicKey: env:SSH_PUBLIC_KEY }\n",
        ),
    );
    repo.write("environments/keyless/environment.yaml", env("keyless", ""));
    repo.commit("three envs");
    let secret = "0123456789abcdef0123456789abcdef-ssh-key-test";
    let run = |home: &Path, args: &[&str]| {
        command(&sb, &repo.dir)
            .env("PHOENIX_HOME", home)
            .env("SSH_KEY_TEST_SECRET", secret)
            .args(args)
            .output()
            .expect("run phoenix")
    };
    let home = sb.path("home-one");
    let first = sb.path("first.key");
    let out = run(
        &home,
        &["ssh-key", "derived", "--out", first.to_str().unwrap()],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(code(&out), 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("EC2 key pair derived-nodes") && stdout.contains("0600"),
        "{stdout}"
    );
    let pem = std::fs::read_to_string(&first).expect("written");
    assert!(
        pem.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"),
        "a private key"
    );
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!stdout.contains(line) && !stderr.contains(line), "printed");
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&first).expect("meta").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert!(!home.join("keys").exists(), "nothing kept in PHOENIX_HOME");

    // Another machine derives the same key.
    let second = sb.path("second.key");
    let out = run(
        &sb.path("home-two"),
        &["ssh-key", "derived", "--out", second.to_str().unwrap()],
    );
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    let public = |p: &Path| {
        ssh_key::PrivateKey::from_openssh(std::fs::read_to_string(p).unwrap())
            .expect("parse")
            .public_key()
            .to_openssh()
            .expect("encode")
    };
    assert_eq!(public(&first), public(&second));

    // Never over an existing file.
    let out = run(
        &home,
        &["ssh-key", "derived", "--out", first.to_str().unwrap()],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(code(&out), 1, "{stdout}{stderr}");
    assert!(stderr.contains("never overwritten"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&first).unwrap(), pem);

    // What phoenix cannot derive.
    let third = sb.path("third.key");
    for (env, needle) in [
        ("imported", "imported from publicKey env:SSH_PUBLIC_KEY"),
        ("keyless", "has no key pair (spec.cloud.keyPair)"),
    ] {
        let out = run(&home, &["ssh-key", env, "--out", third.to_str().unwrap()]);
        let (stdout, stderr) = text(&out);
        assert_eq!(code(&out), 1, "{env}: {stdout}{stderr}");
        assert!(stderr.contains(needle), "{env}: {stderr}");
        assert!(!third.exists(), "{env}: nothing written");
    }
}
