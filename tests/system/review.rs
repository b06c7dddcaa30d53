//! `phoenix plan ENV --against REF` (issue 21): the real binary on real Git repositories, one
//! pull request per test (a base commit on `main`, a head commit on a branch), with exit codes;
//! the Markdown comment against a committed snapshot; the example PR workflow parses and its
//! script passes shellcheck.

use testkit::{bed, moto};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use testkit::git::{Repo, Sandbox};

/// A secret value the environment references: it must never appear in any output.
const SECRET_VALUE: &str = "hunter2-do-not-print";

/// An environment with every layer: a k3s server and two agents, one add-on, one app with a
/// Secret made from a secret reference.
const SHOP: &str = r#"apiVersion: phoenix/v1
kind: Environment
metadata: { name: shop }
spec:
  recoveryObjective: 10m
  secrets:
    - { name: db-password, from: env:SHOP_DB_PASSWORD }
  cloud:
    provider: aws
    region: us-east-1
    network:
      cidr: 10.40.0.0/16
      subnets: [{ name: public-a, cidr: 10.40.1.0/24, zone: us-east-1a, public: true }]
    securityGroups: [{ name: cluster, ingress: [{ port: 6443, from: 0.0.0.0/0 }] }]
    instances:
      - { name: server, role: server, count: 1, type: t3.medium, image: { owner: amazon, name: "al2023-ami-2023*-x86_64" }, subnet: public-a, securityGroups: [cluster] }
      - { name: agent, role: agent, count: 2, type: t3.medium, image: { owner: amazon, name: "al2023-ami-2023*-x86_64" }, subnet: public-a, securityGroups: [cluster] }
  cluster: { distribution: k3s, version: v1.31.4+k3s1, secret: env:SHOP_CLUSTER_SECRET }
  addons:
    - { name: cache, path: addons/cache, wait: 1m }
  apps:
    - name: web
      path: apps/web
      namespace: shop
      dependsOn: [cache]
      wait: 2m
      values: { replicas: 2 }
      secrets:
        - { name: web-db, namespace: shop, data: { password: db-password } }
"#;

const WEB: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: web }\nspec:\n  replicas: {{ values.replicas }}\n  selector: { matchLabels: { app: web } }\n  template:\n    metadata: { labels: { app: web } }\n    spec: { containers: [{ name: web, image: \"nginx:1.27\" }] }\n";

const CACHE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: { name: cache }\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: { name: cache-config, namespace: cache }\ndata: { size: 64m }\n";

fn command(sb: &Sandbox, dir: &Path) -> Command {
    command_of(Path::new(env!("CARGO_BIN_EXE_phoenix")), sb, dir)
}

/// `program` run as phoenix is: hermetic, in `dir`.
fn command_of(program: &Path, sb: &Sandbox, dir: &Path) -> Command {
    let mut cmd = bed::hermetic_program(program, sb, dir);
    // Set, so that an output made from it would show it: it must not.
    cmd.env("SHOP_DB_PASSWORD", SECRET_VALUE)
        .env("SHOP_CLUSTER_SECRET", SECRET_VALUE);
    cmd
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn phoenix(repo: &Repo, args: &[&str]) -> Run {
    let out: Output = command(repo.sb, &repo.dir)
        .args(args)
        .output()
        .expect("run phoenix");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    for text in [&run.stdout, &run.stderr] {
        assert!(
            !text.contains(SECRET_VALUE),
            "a secret value was printed by {args:?}:\n{text}"
        );
    }
    run
}

fn json(repo: &Repo, args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let run = phoenix(repo, &all);
    let doc = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", run.stdout, run.stderr));
    (run.code, doc)
}

/// The base commit on `main`; the test then makes its pull request on branch `pr`.
fn shop_repo(sb: &Sandbox) -> Repo<'_> {
    let repo = sb.repo("envs");
    repo.write("environments/shop/environment.yaml", SHOP);
    repo.write("environments/shop/apps/web/deploy.yaml.j2", WEB);
    repo.write("environments/shop/addons/cache/cache.yaml", CACHE);
    repo.commit("shop");
    repo.git(&["checkout", "-q", "-b", "pr"]);
    repo
}

fn edit(repo: &Repo, rel: &str, from: &str, to: &str) {
    let path = repo.dir.join(rel);
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.contains(from), "{rel} has no {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).expect("write");
}

/// Every change of the document, as `action id resource`.
fn changes(doc: &serde_json::Value) -> Vec<String> {
    doc["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .flat_map(|l| l["changes"].as_array().expect("changes").iter())
        .map(|c| {
            format!(
                "{} {} {}",
                c["action"].as_str().unwrap(),
                c["id"].as_str().unwrap(),
                c["resource"].as_str().unwrap()
            )
        })
        .collect()
}

fn change<'a>(doc: &'a serde_json::Value, resource: &str) -> &'a serde_json::Value {
    doc["layers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["changes"].as_array().unwrap().iter())
        .find(|c| c["resource"] == resource)
        .unwrap_or_else(|| panic!("no change of {resource} in {doc:#}"))
}

#[test]
fn a_replica_count_change_is_one_field_of_one_object_with_its_diff() {
    let sb = Sandbox::new();
    let repo = shop_repo(&sb);
    edit(
        &repo,
        "environments/shop/environment.yaml",
        "replicas: 2",
        "replicas: 3",
    );
    repo.commit("web: three replicas");

    let run = phoenix(&repo, &["plan", "shop", "--against", "main"]);
    assert_eq!(
        run.code, 2,
        "changes pending: exit 2\n{}{}",
        run.stdout, run.stderr
    );
    assert!(
        run.stdout.contains("spec.replicas: 2 → 3"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("-  replicas: 2\n"), "{}", run.stdout);
    assert!(!run.stdout.contains("!!!"), "no warnings: {}", run.stdout);

    let (code, doc) = json(&repo, &["plan", "shop", "--against", "main"]);
    assert_eq!(code, 2);
    assert_eq!(doc["schemaVersion"], 1);
    assert_eq!(doc["status"], "changed");
    assert_eq!(changes(&doc), ["update apps/web Deployment/shop/web"]);
    let c = change(&doc, "Deployment/shop/web");
    assert_eq!(
        c["fields"],
        serde_json::json!([{ "path": "spec.replicas", "base": "2", "head": "3" }])
    );
    assert!(c["diff"].as_str().unwrap().contains("+  replicas: 3"));
    assert_eq!(doc["impact"]["serverReplaced"], false);
    assert_eq!(doc["impact"]["replaced"], serde_json::json!([]));
    assert_eq!(doc["summary"]["update"], 1);
    assert_eq!(doc["base"]["sha"], repo.git(&["rev-parse", "main"]));
    assert_eq!(doc["head"]["sha"], repo.head());
    // The Secret made from the reference is compared redacted: it did not change.
    assert!(!changes(&doc).iter().any(|c| c.contains("Secret")));
}

#[test]
fn an_instance_type_change_replaces_the_instance_and_flags_the_k3s_server() {
    let sb = Sandbox::new();
    let repo = shop_repo(&sb);
    // The agents' type: replaced (no allowStopModifyStart), the cluster survives.
    edit(
        &repo,
        "environments/shop/environment.yaml",
        "role: agent, count: 2, type: t3.medium",
        "role: agent, count: 2, type: t3.large",
    );
    repo.commit("agents: t3.large");
    let (code, doc) = json(&repo, &["plan", "shop", "--against", "main"]);
    assert_eq!(code, 2);
    assert_eq!(
        changes(&doc),
        [
            "replace cloud/instance/agent/0 instance/agent/0",
            "replace cloud/instance/agent/1 instance/agent/1"
        ]
    );
    let agent = change(&doc, "instance/agent/0");
    assert!(
        agent["reason"]
            .as_str()
            .unwrap()
            .starts_with("fixed at launch: type"),
        "{agent:#}"
    );
    assert_eq!(doc["impact"]["serverReplaced"], false);
    assert_eq!(doc["impact"]["replaced"].as_array().unwrap().len(), 2);

    // The server's type: the cluster is rebuilt, loudly.
    edit(
        &repo,
        "environments/shop/environment.yaml",
        "role: server, count: 1, type: t3.medium",
        "role: server, count: 1, type: t3.xlarge",
    );
    repo.commit("server: t3.xlarge");
    let run = phoenix(&repo, &["plan", "shop", "--against", "main"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stdout
            .contains("!!! THE CLUSTER IS REBUILT: the k3s server instance/server/0 is replaced."),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("type: t3.medium → t3.xlarge"),
        "{}",
        run.stdout
    );
    let (_, doc) = json(&repo, &["plan", "shop", "--against", "main"]);
    assert_eq!(doc["impact"]["serverReplaced"], true);
    let server = &doc["impact"]["replaced"][0];
    assert_eq!(server["resource"], "instance/server/0");
    assert_eq!(server["role"], "server");

    // allowStopModifyStart changes the agents in place, never the server.
    edit(
        &repo,
        "environments/shop/environment.yaml",
        "    provider: aws\n",
        "    provider: aws\n    allowStopModifyStart: true\n",
    );
    repo.commit("stop, modify, start");
    let (_, doc) = json(&repo, &["plan", "shop", "--against", "main"]);
    assert_eq!(change(&doc, "instance/agent/0")["action"], "update");
    assert_eq!(change(&doc, "instance/server/0")["action"], "replace");
    assert_eq!(doc["impact"]["serverReplaced"], true);
}

#[test]
fn a_k3s_version_change_replaces_every_instance_with_a_user_data_diff() {
    let sb = Sandbox::new();
    let repo = shop_repo(&sb);
    edit(
        &repo,
        "environments/shop/environment.yaml",
        "version: v1.31.4+k3s1",
        "version: v1.31.5+k3s1",
    );
    repo.commit("k3s v1.31.5");
    let (code, doc) = json(&repo, &["plan", "shop", "--against", "main"]);
    assert_eq!(code, 2);
    let server = change(&doc, "instance/server/0");
    assert_eq!(server["action"], "replace");
    let diff = server["diff"].as_str().expect("a user-data diff");
    assert!(diff.contains("v1.31.5+k3s1"), "{diff}");
    assert!(
        diff.contains("--- base instance/server/0 user-data"),
        "{diff}"
    );
    assert_eq!(change(&doc, "control-plane")["action"], "update");
    assert_eq!(doc["impact"]["replaced"].as_array().unwrap().len(), 3);
    assert_eq!(doc["impact"]["serverReplaced"], true);
}

#[test]
fn a_removed_component_lists_its_objects_as_pruned_and_its_dependents_gates() {
    let sb = Sandbox::new();
    let repo = shop_repo(&sb);
    edit(
        &repo,
        "environments/shop/environment.yaml",
        "    - { name: cache, path: addons/cache, wait: 1m }\n",
        "",
    );
    edit(
        &repo,
        "environments/shop/environment.yaml",
        "      dependsOn: [cache]\n",
        "",
    );
    repo.git(&["rm", "-q", "-r", "environments/shop/addons"]);
    repo.commit("drop the cache add-on");
    let run = phoenix(&repo, &["plan", "shop", "--against", "main"]);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(
            "!!! 2 objects pruned from the cluster: ConfigMap/cache/cache-config, Namespace/cache"
        ),
        "{}",
        run.stdout
    );
    let (_, doc) = json(&repo, &["plan", "shop", "--against", "main"]);
    assert_eq!(
        doc["impact"]["pruned"],
        serde_json::json!([
            { "id": "addons/.removed", "resource": "ConfigMap/cache/cache-config" },
            { "id": "addons/.removed", "resource": "Namespace/cache" }
        ])
    );
    assert_eq!(
        doc["impact"]["gates"],
        serde_json::json!([{ "id": "apps/web",
            "field": { "path": "dependsOn", "base": "[\"cache\"]", "head": "[]" } }])
    );
    // Only the add-ons and the app's settings change.
    assert_eq!(
        changes(&doc),
        [
            "delete addons/.removed ConfigMap/cache/cache-config",
            "delete addons/.removed Namespace/cache",
            "update apps/web component web"
        ]
    );
}

#[test]
fn an_added_environment_is_created_whole_and_listed_in_every_plan_of_the_change() {
    let sb = Sandbox::new();
    let repo = shop_repo(&sb);
    repo.write(
        "environments/staging/environment.yaml",
        SHOP.replace("name: shop", "name: staging"),
    );
    repo.write("environments/staging/apps/web/deploy.yaml.j2", WEB);
    repo.write("environments/staging/addons/cache/cache.yaml", CACHE);
    repo.commit("staging");

    let (code, doc) = json(&repo, &["plan", "staging", "--against", "main"]);
    assert_eq!(code, 2);
    assert_eq!(doc["status"], "added");
    assert_eq!(doc["environments"]["added"], serde_json::json!(["staging"]));
    let all = changes(&doc);
    assert!(all.iter().all(|c| c.starts_with("create ")), "{all:?}");
    assert!(all.contains(&"create cloud/instance/server/0 instance/server/0".to_string()));
    assert!(all.contains(&"create apps/web Deployment/shop/web".to_string()));
    assert_eq!(
        doc["impact"]["serverReplaced"], false,
        "a new server is no rebuild"
    );

    // The unchanged env says so, and still lists the env the change adds.
    let (code, doc) = json(&repo, &["plan", "shop", "--against", "main"]);
    assert_eq!(code, 0, "{doc:#}");
    assert_eq!(doc["status"], "unchanged");
    assert_eq!(doc["environments"]["added"], serde_json::json!(["staging"]));

    // The other way round the env is removed: nothing of it is rebuilt any more.
    let (code, doc) = json(
        &repo,
        &["--ref", "main", "plan", "staging", "--against", "pr"],
    );
    assert_eq!(code, 2);
    assert_eq!(doc["status"], "removed");
    assert_eq!(
        doc["environments"]["removed"],
        serde_json::json!(["staging"])
    );
    assert!(changes(&doc).iter().all(|c| c.starts_with("delete ")));
    // Merging removes nothing: no rebuild runs for it, so nothing is replaced or pruned.
    assert_eq!(doc["impact"]["serverReplaced"], false);
    assert_eq!(doc["impact"]["pruned"], serde_json::json!([]));
    let warning = doc["impact"]["warnings"][0].as_str().unwrap();
    assert!(
        warning.starts_with("staging leaves Git: merging tears nothing down.")
            && warning.contains("`phoenix destroy staging --ref "),
        "{warning}"
    );

    let run = phoenix(&repo, &["plan", "nowhere", "--against", "main"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("environment nowhere is in neither commit"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_environment_invalid_at_the_head_reports_its_diagnostics_not_a_plan() {
    let sb = Sandbox::new();
    let repo = shop_repo(&sb);
    edit(
        &repo,
        "environments/shop/environment.yaml",
        "  recoveryObjective: 10m\n",
        "  recoveryObjective: 10m\n  replicaz: 3\n",
    );
    repo.commit("a typo");
    let run = phoenix(&repo, &["plan", "shop", "--against", "main"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("environments/shop/environment.yaml:6:"),
        "file:line as validate prints it:\n{}",
        run.stdout
    );
    assert!(run.stdout.contains("replicaz"), "{}", run.stdout);
    assert!(!run.stdout.contains("to create"), "no plan: {}", run.stdout);

    let (code, doc) = json(&repo, &["plan", "shop", "--against", "main"]);
    assert_eq!(code, 1);
    assert_eq!(doc["status"], "invalid");
    assert_eq!(
        doc["diagnostics"][0]["file"],
        "environments/shop/environment.yaml"
    );
    assert_eq!(doc["diagnostics"][0]["line"], 6);
    assert_eq!(doc["layers"], serde_json::json!([]));

    // The other way round, the env is invalid at the base: compared as absent, with a note.
    let (code, doc) = json(&repo, &["--ref", "main", "plan", "shop", "--against", "pr"]);
    assert_eq!(code, 2, "{doc:#}");
    assert_eq!(doc["status"], "added");
    assert_eq!(doc["baseDiagnostics"][0]["line"], 6);

    let md = phoenix(
        &repo,
        &["plan", "shop", "--against", "main", "-o", "markdown"],
    );
    assert_eq!(md.code, 1);
    assert!(
        md.stdout.starts_with("<!-- phoenix-plan:shop -->\n"),
        "{}",
        md.stdout
    );
    assert!(
        md.stdout.contains("environments/shop/environment.yaml:6:"),
        "{}",
        md.stdout
    );
}

#[test]
fn renaming_files_within_an_environment_changes_nothing() {
    let sb = Sandbox::new();
    let repo = shop_repo(&sb);
    repo.git(&[
        "mv",
        "environments/shop/apps/web/deploy.yaml.j2",
        "environments/shop/apps/web/deployment.yaml.j2",
    ]);
    // A whole component directory moves too, its path following it.
    repo.git(&[
        "mv",
        "environments/shop/addons/cache",
        "environments/shop/addons/redis",
    ]);
    edit(
        &repo,
        "environments/shop/environment.yaml",
        "path: addons/cache",
        "path: addons/redis",
    );
    repo.commit("rename files");
    let run = phoenix(&repo, &["plan", "shop", "--against", "main"]);
    assert_eq!(
        run.code, 0,
        "nothing changes: exit 0\n{}{}",
        run.stdout, run.stderr
    );
    assert!(
        run.stdout.trim_end().ends_with("No changes."),
        "{}",
        run.stdout
    );
    let (code, doc) = json(&repo, &["plan", "shop", "--against", "main"]);
    assert_eq!(code, 0);
    assert_eq!(doc["status"], "unchanged");
    assert!(changes(&doc).is_empty());
}

#[test]
fn output_markdown_is_only_for_a_plan_against_a_ref() {
    let sb = Sandbox::new();
    let repo = shop_repo(&sb);
    let run = phoenix(&repo, &["validate", "shop", "-o", "markdown"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("--output markdown is only for"),
        "{}",
        run.stderr
    );
    let run = phoenix(&repo, &["plan", "shop", "--offline", "--against", "main"]);
    assert_eq!(
        run.code, 2,
        "clap refuses --offline with --against: {}",
        run.stderr
    );
}

fn snapshot_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/review/shop-pr.md")
}

/// The PR comment of one change of every kind, against tests/fixtures/review/shop-pr.md with the
/// two SHAs written as BASE_SHA and HEAD_SHA. `PHOENIX_UPDATE_SNAPSHOTS=1` rewrites the file.
#[test]
fn markdown_comment_snapshot() {
    let sb = Sandbox::new();
    let repo = shop_repo(&sb);
    let env = "environments/shop/environment.yaml";
    edit(&repo, env, "replicas: 2", "replicas: 3");
    edit(
        &repo,
        env,
        "role: server, count: 1, type: t3.medium",
        "role: server, count: 1, type: t3.large",
    );
    edit(
        &repo,
        env,
        "recoveryObjective: 10m",
        "recoveryObjective: 15m",
    );
    edit(
        &repo,
        env,
        "    - { name: cache, path: addons/cache, wait: 1m }\n",
        "",
    );
    edit(&repo, env, "      dependsOn: [cache]\n", "");
    edit(&repo, env, "      wait: 2m\n", "      wait: 5m\n");
    repo.git(&["rm", "-q", "-r", "environments/shop/addons"]);
    repo.commit("a change of every kind");
    let run = phoenix(
        &repo,
        &["plan", "shop", "--against", "main", "-o", "markdown"],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    let base = repo.git(&["rev-parse", "main"]);
    let got = run
        .stdout
        .replace(&base, "BASE_SHA")
        .replace(&repo.head(), "HEAD_SHA");
    // Deterministic: the same two commits give the same comment.
    let again = phoenix(
        &repo,
        &["plan", "shop", "--against", "main", "-o", "markdown"],
    );
    assert_eq!(run.stdout, again.stdout);
    if std::env::var("PHOENIX_UPDATE_SNAPSHOTS").as_deref() == Ok("1") {
        std::fs::create_dir_all(snapshot_path().parent().unwrap()).unwrap();
        std::fs::write(snapshot_path(), &got).unwrap();
    }
    let want = std::fs::read_to_string(snapshot_path()).expect("read the snapshot");
    assert_eq!(
        got, want,
        "the comment changed; if intended, rerun with PHOENIX_UPDATE_SNAPSHOTS=1 and review the diff"
    );
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_pr_workflow_parses_and_its_script_passes_shellcheck() {
    let text = std::fs::read_to_string(root().join("examples/github-actions/phoenix-pr.yml"))
        .expect("read the workflow");
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("valid YAML");
    let on = &doc["on"];
    assert!(
        !on["pull_request"].is_null(),
        "runs on pull requests: {on:?}"
    );
    let steps = doc["jobs"]["plan"]["steps"]
        .as_sequence()
        .expect("jobs.plan.steps");
    let runs: Vec<&str> = steps.iter().filter_map(|s| s["run"].as_str()).collect();
    assert!(
        runs.iter().any(|r| r.contains("plan-comment.sh")),
        "a step runs the script: {runs:?}"
    );
    assert_eq!(
        doc["permissions"]["pull-requests"].as_str(),
        Some("write"),
        "it may comment"
    );

    let script = root().join("examples/github-actions/plan-comment.sh");
    let out = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shellcheck = testkit::tools::require("shellcheck");
    let out = Command::new(shellcheck)
        .args(["--severity=style"])
        .arg(&script)
        .output()
        .expect("run shellcheck");
    assert!(
        out.status.success(),
        "shellcheck:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn secrets_are_compared_redacted_and_their_references_named() {
    let sb = Sandbox::new();
    let repo = shop_repo(&sb);
    // A Secret committed in plain text (a mistake phoenix does not repeat in a PR comment).
    repo.write(
        "environments/shop/apps/web/token.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: { name: token }\nstringData: { token: first-value-xyz, user: admin }\n",
    );
    repo.commit("a token");
    repo.git(&["branch", "-f", "main", "HEAD"]);
    edit(
        &repo,
        "environments/shop/apps/web/token.yaml",
        "first-value-xyz",
        "second-value-xyz",
    );
    edit(
        &repo,
        "environments/shop/environment.yaml",
        "from: env:SHOP_DB_PASSWORD",
        "from: env:SHOP_DB_PASSWORD_2",
    );
    repo.commit("rotate");
    for output in ["human", "json", "markdown"] {
        let run = phoenix(&repo, &["plan", "shop", "--against", "main", "-o", output]);
        assert_eq!(run.code, 2, "{output}: {}", run.stderr);
        for value in ["first-value-xyz", "second-value-xyz"] {
            assert!(
                !run.stdout.contains(value),
                "{output} shows {value}:\n{}",
                run.stdout
            );
        }
    }
    let (_, doc) = json(&repo, &["plan", "shop", "--against", "main"]);
    let token = change(&doc, "Secret/shop/token");
    assert_eq!(
        token["fields"],
        serde_json::json!([{ "path": "stringData.token",
            "base": "**redacted**", "head": "**redacted** (changed)" }])
    );
    assert_eq!(
        doc["impact"]["secrets"],
        serde_json::json!([{ "path": "secrets.db-password",
            "base": "env:SHOP_DB_PASSWORD", "head": "env:SHOP_DB_PASSWORD_2" }])
    );
}

const C1: &str = "apiVersion: phoenix/v1\nkind: Environment\nmetadata: { name: c1 }\nspec:\n  cloud:\n    provider: aws\n    region: us-east-1\n    network: { cidr: 10.50.0.0/16, subnets: [{ name: a, cidr: 10.50.1.0/24, zone: us-east-1a, public: true }] }\n    securityGroups: [{ name: web, ingress: [{ port: 80, from: 0.0.0.0/0 }] }]\n    instances:\n      - { name: web, count: 2, type: t3.micro, image: { owner: amazon, name: \"al2023-ami-2023*-kernel-6.1-x86_64\" }, subnet: a, securityGroups: [web] }\n";

/// `--live` on moto: the live system was rebuilt from a hotfix branch that opened a port Git
/// (the base) does not have; the pull request adds an instance. The plan shows the instance as
/// the change's and the extra rule as drift merging overwrites.
#[test]
fn live_shows_drift_merging_overwrites_apart_from_the_change() {
    let moto = moto::Moto::start();
    let sb = Sandbox::new();
    let repo = sb.repo("envs");
    repo.write("environments/c1/environment.yaml", C1);
    repo.commit("c1");
    repo.git(&["checkout", "-q", "-b", "hotfix"]);
    edit(
        &repo,
        "environments/c1/environment.yaml",
        "ingress: [{ port: 80, from: 0.0.0.0/0 }]",
        "ingress: [{ port: 80, from: 0.0.0.0/0 }, { port: 443, from: 0.0.0.0/0 }]",
    );
    repo.commit("hotfix: 443");
    let at_moto = |args: &[&str]| -> Run {
        let out = command(&sb, &repo.dir)
            .env("AWS_ENDPOINT_URL", moto.endpoint())
            .args(args)
            .output()
            .expect("run phoenix");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    };
    let run = at_moto(&["rebuild", "c1"]);
    assert_eq!(
        run.code, 0,
        "rebuild from the hotfix: {}{}",
        run.stdout, run.stderr
    );
    repo.git(&["checkout", "-q", "main"]);
    repo.git(&["checkout", "-q", "-b", "pr"]);
    edit(
        &repo,
        "environments/c1/environment.yaml",
        "count: 2",
        "count: 3",
    );
    repo.commit("a third web instance");

    // Offline, only the change: no live section.
    let run = at_moto(&["plan", "c1", "--against", "main", "-o", "json"]);
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(
        changes(&doc),
        ["create cloud/instance/web/2 instance/web/2"]
    );
    assert!(doc.get("live").is_none());

    let run = at_moto(&["plan", "c1", "--against", "main", "--live", "-o", "json"]);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    let live = &doc["live"];
    assert_eq!(live["errors"], serde_json::json!([]), "{live:#}");
    let entry = |resource: &str| {
        live["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["resource"] == resource)
            .unwrap_or_else(|| panic!("no live entry of {resource}: {live:#}"))
            .clone()
    };
    let instance = entry("instance/web/2");
    assert_eq!(instance["action"], "create");
    assert_eq!(instance["changedByThis"], true);
    let sg = entry("sg/web");
    assert_eq!(sg["action"], "update");
    assert_eq!(
        sg["changedByThis"], false,
        "the extra rule is drift: {sg:#}"
    );

    let run = at_moto(&[
        "plan",
        "c1",
        "--against",
        "main",
        "--live",
        "-o",
        "markdown",
    ]);
    assert_eq!(run.code, 2);
    assert!(
        run.stdout.contains("Drift that merging overwrites") && run.stdout.contains("`sg/web`"),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("`instance/web/2` | create"),
        "the change itself is not drift:\n{}",
        run.stdout
    );

    // --live needs --against.
    let run = at_moto(&["plan", "c1", "--live"]);
    assert_eq!(
        run.code, 2,
        "clap refuses --live without --against: {}",
        run.stderr
    );
}

/// A stand-in for `gh api` keeping the pull request's comments as files under `$GH_STATE`: GET
/// lists them (the `--jq` filter's marker applied), POST adds one, PATCH replaces one. Every call
/// is logged to `$GH_STATE/log`.
const FAKE_GH: &str = r#"#!/bin/bash
set -euo pipefail
echo "$*" >> "$GH_STATE/log"
[ "$1" = api ] || exit 2
shift
method=GET url= body= jq=
while [ "$#" -gt 0 ]; do
  case "$1" in
    --method) method=$2; shift 2 ;;
    --paginate) shift ;;
    --jq) jq=$2; shift 2 ;;
    -F) body=${2#body=@}; shift 2 ;;
    *) url=$1; shift ;;
  esac
done
mkdir -p "$GH_STATE/comments"
case "$method" in
  GET)
    marker=${jq#*startswith(\"}
    marker=${marker%%\")*}
    for f in "$GH_STATE"/comments/*; do
      [ -f "$f" ] || continue
      if [ "$(head -c "${#marker}" "$f")" = "$marker" ]; then basename "$f"; fi
    done ;;
  POST)
    n=$(( $(find "$GH_STATE/comments" -type f | wc -l) + 1 ))
    cp "$body" "$GH_STATE/comments/$n"
    echo '{}' ;;
  PATCH)
    cp "$body" "$GH_STATE/comments/${url##*/}"
    echo '{}' ;;
esac
"#;

/// plan-comment.sh itself, with the real phoenix and a stand-in for `gh`: one comment per
/// environment the change touches, updated in place on the next push, "no changes" once the
/// change is undone, diagnostics when the env is invalid (exit 1).
#[test]
fn plan_comment_posts_one_comment_per_changed_env_and_updates_it_in_place() {
    let sb = Sandbox::new();
    let repo = shop_repo(&sb);
    // A second env the pull request does not touch.
    repo.git(&["checkout", "-q", "main"]);
    repo.write(
        "environments/other/environment.yaml",
        SHOP.replace("name: shop", "name: other"),
    );
    repo.write("environments/other/apps/web/deploy.yaml.j2", WEB);
    repo.write("environments/other/addons/cache/cache.yaml", CACHE);
    let base = repo.commit("other");
    repo.git(&["checkout", "-q", "-B", "pr"]);

    let bin = sb.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("gh"), FAKE_GH).unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(bin.join("gh"))
        .status()
        .unwrap();
    let state = sb.path("gh-state");
    std::fs::create_dir_all(&state).unwrap();
    let phoenix_dir = Path::new(env!("CARGO_BIN_EXE_phoenix"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = std::env::join_paths(
        [bin.clone(), phoenix_dir]
            .into_iter()
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let script = root().join("examples/github-actions/plan-comment.sh");
    let run_script = |head: &str| -> (i32, String) {
        let out = command_of(Path::new("bash"), &sb, &repo.dir)
            .env("PATH", &path)
            .env("GH_STATE", &state)
            .env("GITHUB_REPOSITORY", "acme/envs")
            .env("PR_NUMBER", "7")
            .arg(&script)
            .args([base.as_str(), head])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let comments = || -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(state.join("comments"))
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    };

    edit(
        &repo,
        "environments/shop/environment.yaml",
        "replicas: 2",
        "replicas: 3",
    );
    let head = repo.commit("three");
    let (code, log) = run_script(&head);
    assert_eq!(code, 0, "{log}");
    let c = comments();
    assert_eq!(c.len(), 1, "one comment, for shop only: {c:?}\n{log}");
    assert!(c[0].starts_with("<!-- phoenix-plan:shop -->\n"), "{}", c[0]);
    assert!(c[0].contains(&format!("head `{head}`")), "{}", c[0]);
    assert!(c[0].contains("| `spec.replicas` | 2 | 3 |"), "{}", c[0]);

    // The next push updates the same comment.
    edit(
        &repo,
        "environments/shop/environment.yaml",
        "replicas: 3",
        "replicas: 4",
    );
    let head = repo.commit("four");
    let (code, log) = run_script(&head);
    assert_eq!(code, 0, "{log}");
    let c = comments();
    assert_eq!(c.len(), 1, "updated in place: {c:?}");
    assert!(c[0].contains("| `spec.replicas` | 2 | 4 |"), "{}", c[0]);
    let calls = std::fs::read_to_string(state.join("log")).unwrap();
    assert!(
        calls.contains("api --method PATCH repos/acme/envs/issues/comments/1 -F body=@"),
        "{calls}"
    );

    // Undone: the comment says so.
    edit(
        &repo,
        "environments/shop/environment.yaml",
        "replicas: 4",
        "replicas: 2",
    );
    let head = repo.commit("undo");
    let (code, log) = run_script(&head);
    assert_eq!(code, 0, "{log}");
    let c = comments();
    assert_eq!(c.len(), 1);
    assert!(
        c[0].contains("### phoenix plan `shop`: no changes"),
        "{}",
        c[0]
    );

    // Invalid at the head: the diagnostics are the comment, and the job fails.
    edit(
        &repo,
        "environments/other/environment.yaml",
        "recoveryObjective: 10m",
        "recoveryObjective: soon",
    );
    let head = repo.commit("broken");
    let (code, log) = run_script(&head);
    assert_eq!(code, 1, "{log}");
    let c = comments();
    assert_eq!(c.len(), 2, "{c:?}");
    assert!(
        c[1].starts_with("<!-- phoenix-plan:other -->\n"),
        "{}",
        c[1]
    );
    assert!(
        c[1].contains("environments/other/environment.yaml:5:"),
        "{}",
        c[1]
    );
}

#[test]
fn dropping_protection_is_a_change_with_a_warning() {
    let sb = Sandbox::new();
    let repo = shop_repo(&sb);
    repo.git(&["checkout", "-q", "main"]);
    edit(
        &repo,
        "environments/shop/environment.yaml",
        "metadata: { name: shop }",
        "metadata: { name: shop, protected: true }",
    );
    repo.commit("protect shop");
    repo.git(&["checkout", "-q", "-B", "pr"]);
    edit(
        &repo,
        "environments/shop/environment.yaml",
        "protected: true",
        "protected: false",
    );
    repo.commit("unprotect");
    let (code, doc) = json(&repo, &["plan", "shop", "--against", "main"]);
    assert_eq!(code, 2, "{doc:#}");
    assert_eq!(doc["status"], "changed");
    assert_eq!(
        doc["impact"]["protected"],
        serde_json::json!({ "path": "protected", "base": "true", "head": "false" })
    );
    assert!(doc["impact"]["warnings"][0]
        .as_str()
        .unwrap()
        .contains("no longer protected"));
    let run = phoenix(
        &repo,
        &["plan", "shop", "--against", "main", "-o", "markdown"],
    );
    assert!(
        run.stdout
            .contains("| protected (destroy refuses) | true | false |"),
        "{}",
        run.stdout
    );
}

/// `--live` on moto and the real control plane: the demo rebuilt from `main`, a label changed by
/// hand on the worker, a pull request raising the web replicas. The live comparison shows the
/// replicas as the change's and the worker's label as drift merging overwrites.
#[test]
fn live_on_the_real_control_plane_separates_the_change_from_drift() {
    let bed = bed::Bed::new();
    let repo = bed.demo_repo();
    let out = bed.phoenix(&repo.dir, &["rebuild", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{}", bed::text(&out));
    bed.kubectl(
        "demo",
        &[
            "-n",
            "web",
            "label",
            "--overwrite",
            "deploy/worker",
            "app=by-hand",
        ],
    );
    repo.git(&["checkout", "-q", "-b", "pr"]);
    edit(
        &repo,
        "environments/demo/environment.yaml",
        "replicas: 2,",
        "replicas: 3,",
    );
    repo.commit("web: three replicas");

    let out = bed.phoenix(
        &repo.dir,
        &["plan", "demo", "--against", "main", "--live", "-o", "json"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", bed::text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(changes(&doc), ["update apps/web Deployment/web/web"]);
    let live = &doc["live"];
    assert_eq!(live["errors"], serde_json::json!([]), "{live:#}");
    let entry = |resource: &str| {
        live["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["resource"] == resource)
            .unwrap_or_else(|| panic!("no live entry of {resource}: {live:#}"))
            .clone()
    };
    let web = entry("Deployment/web/web");
    assert_eq!(
        (web["action"].as_str(), web["changedByThis"].as_bool()),
        (Some("update"), Some(true))
    );
    let worker = entry("Deployment/web/worker");
    assert_eq!(
        (worker["action"].as_str(), worker["changedByThis"].as_bool()),
        (Some("update"), Some(false)),
        "the hand-made label is drift: {worker:#}"
    );
    let entries = live["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "nothing else differs: {live:#}");

    let out = bed.phoenix(
        &repo.dir,
        &[
            "plan",
            "demo",
            "--against",
            "main",
            "--live",
            "-o",
            "markdown",
        ],
    );
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(
        md.contains("| apps | `Deployment/web/worker` | update |"),
        "{md}"
    );
    assert!(
        !md.contains("`Deployment/web/web` | update"),
        "the change is not drift: {md}"
    );
    for secret in [bed::DB_PASSWORD, bed::CLUSTER_SECRET] {
        assert!(!md.contains(secret) && !bed::text(&out).contains(secret));
    }
}

/// Data volumes are compared too: a new one is created (and its PersistentVolume applied); a
/// size or backup change is an update whose reason says the live volume is used as it is; one
/// that leaves Git is not deleted by a rebuild, and the plan warns so.
#[test]
fn data_volumes_are_compared_with_what_a_rebuild_does_to_them() {
    let sb = Sandbox::new();
    let repo = shop_repo(&sb);
    let volumes = "  volumes:\n    - { name: db, size: 20, zone: us-east-1a, allowEmpty: true, backup: { keep: 3 } }\n";
    edit(
        &repo,
        "environments/shop/environment.yaml",
        "  addons:\n",
        &format!("{volumes}  addons:\n"),
    );
    repo.commit("a data volume");
    let (code, doc) = json(&repo, &["plan", "shop", "--against", "main"]);
    assert_eq!(code, 2, "{doc:#}");
    assert_eq!(
        changes(&doc),
        [
            "create cloud/volume/db volume/db",
            "create addons/volumes PersistentVolume/db"
        ]
    );
    let reason = change(&doc, "volume/db")["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("20 GiB gp3 in us-east-1a"), "{reason}");

    repo.git(&["checkout", "-q", "main"]);
    repo.git(&["merge", "-q", "--ff-only", "pr"]);
    repo.git(&["checkout", "-q", "pr"]);
    edit(
        &repo,
        "environments/shop/environment.yaml",
        "size: 20, zone: us-east-1a, allowEmpty: true, backup: { keep: 3 }",
        "size: 40, zone: us-east-1a, allowEmpty: true, backup: { keep: 5 }",
    );
    repo.commit("a bigger volume, more snapshots kept");
    let (code, doc) = json(&repo, &["plan", "shop", "--against", "main"]);
    assert_eq!(code, 2, "{doc:#}");
    let c = change(&doc, "volume/db");
    assert_eq!(c["action"], "update");
    let paths: Vec<&str> = c["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["backup.keep", "size"], "{c:#}");
    let reason = c["reason"].as_str().unwrap();
    assert!(
        reason.contains("a live volume is used as it is"),
        "{reason}"
    );
    assert!(reason.contains("phoenix backup"), "{reason}");
    // The PersistentVolume's capacity follows the size.
    let pv = change(&doc, "PersistentVolume/db");
    assert_eq!(pv["action"], "update", "{pv:#}");

    edit(
        &repo,
        "environments/shop/environment.yaml",
        "    - { name: db, size: 40, zone: us-east-1a, allowEmpty: true, backup: { keep: 5 } }\n",
        "",
    );
    edit(
        &repo,
        "environments/shop/environment.yaml",
        "  volumes:\n",
        "",
    );
    repo.commit("the volume leaves Git");
    let (code, doc) = json(&repo, &["plan", "shop", "--against", "main"]);
    assert_eq!(code, 2, "{doc:#}");
    assert!(
        !changes(&doc).iter().any(|c| c.contains("cloud/volume/db")),
        "a rebuild does not delete it: {doc:#}"
    );
    assert_eq!(
        doc["impact"]["volumesLeft"],
        serde_json::json!(["volume/db"])
    );
    let warnings = doc["impact"]["warnings"].to_string();
    assert!(
        warnings.contains("volume/db leaves Git: a rebuild neither detaches nor deletes it"),
        "{warnings}"
    );
}
