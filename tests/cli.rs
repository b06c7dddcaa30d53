//! The real `phoenix` binary on real Git repositories made in temp dirs: what a user types and sees,
//! with exit codes. The cloud tests run against a moto server started by the test.

#[path = "support/moto.rs"]
mod moto;
#[path = "support_git/mod.rs"]
mod support_git;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use support_git::{Repo, Sandbox};

const SKETCH: &str = "tests/fixtures/valid/design-sketch";

/// The binary in `dir`, hermetic: the sandbox's HOME and PHOENIX_HOME, dummy AWS credentials, no
/// endpoint, profile or phoenix settings inherited from the machine.
fn command(sb: &Sandbox, dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_phoenix"));
    cmd.current_dir(dir)
        .env("HOME", sb.home())
        .env("PHOENIX_HOME", sb.phoenix_home())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("PHOENIX_REPO")
        .env_remove("PHOENIX_CLUSTER_ENDPOINT")
        .env_remove("PHOENIX_TRUSTED_KEYS")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    cmd
}

fn phoenix(sb: &Sandbox, dir: &Path, args: &[&str]) -> Output {
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

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn code(out: &Output) -> i32 {
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

fn sketch_repo(sb: &Sandbox) -> Repo<'_> {
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
    let ids: Vec<&str> = v["nodes"]
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
        v["nodes"]
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
    assert_eq!(v["report"], "run", "{last}");
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

    let out = phoenix_moto(&sb, &repo.dir, &moto, &["rebuild", "c1"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(code(&out), 0, "rebuild:\n{stdout}\n{stderr}");
    assert!(stderr.contains("converged"), "the final report:\n{stderr}");

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
    let actions: Vec<&str> = v["cloud"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["action"].as_str())
        .collect();
    assert!(
        !actions.is_empty() && actions.iter().all(|a| *a == "create"),
        "everything gone: {actions:?}"
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
fn every_environment_shipped_in_the_repository_validates() {
    let sb = Sandbox::new();
    let repo = sb.repo("shipped");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in ["environments", "templates"] {
        std::fs::create_dir_all(repo.dir.join(dir)).expect("mkdir");
        copy_tree(&root.join(dir), &repo.dir.join(dir));
    }
    repo.commit("shipped environments");
    let mut names: Vec<String> = std::fs::read_dir(root.join("environments"))
        .expect("environments/")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("environment.yaml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 2, "{names:?}");
    for name in &names {
        let out = phoenix(&sb, &repo.dir, &["validate", name]);
        let (stdout, stderr) = text(&out);
        assert_eq!(
            code(&out),
            0,
            "{name}:\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
}
