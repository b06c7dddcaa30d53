//! `phoenix diff` end to end on moto + the real control plane: after a rebuild the demo is in sync (exit 0);
//! each kind of drift made behind phoenix's back — kubectl scale, label, edit and delete; an SG
//! rule added and an instance terminated through the EC2 API; a node NotReady; an object left
//! after a Git change — gives exit 2 with the right entry; an unreachable API gives exit 1;
//! the metrics file passes promtool; `plan --detailed-exitcode` agrees.

use testkit::{bed, git, kube_proxy, moto};

use std::process::Output;

use bed::{text, Bed};
use serde_json::Value;

/// `phoenix diff demo --output json`: (exit code, the document).
fn diff(bed: &Bed, dir: &std::path::Path) -> (i32, Value, Output) {
    let out = bed.phoenix(dir, &["diff", "demo", "--output", "json"]);
    let doc: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("diff --output json is JSON ({e}): {}", text(&out)));
    (out.status.code().unwrap_or(-1), doc, out)
}

fn layer<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["layers"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["layer"] == name))
        .unwrap_or_else(|| panic!("layer {name} in {doc:#}"))
}

/// The entry for `resource` in `layer`, with its kind.
fn entry<'a>(doc: &'a Value, layer_name: &str, resource: &str) -> &'a Value {
    layer(doc, layer_name)["entries"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["resource"] == resource))
        .unwrap_or_else(|| panic!("entry {resource} in layer {layer_name}: {doc:#}"))
}

fn converged_demo(bed: &Bed) -> git::Repo<'_> {
    let repo = bed.demo_repo();
    let out = bed.phoenix(&repo.dir, &["rebuild", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    repo
}

#[test]
fn kubectl_changes_are_drift_and_a_rebuild_clears_them() {
    let bed = Bed::new();
    let repo = converged_demo(&bed);
    let (code, doc, out) = diff(&bed, &repo.dir);
    assert_eq!(code, 0, "in sync after a rebuild: {}", text(&out));
    for l in ["cloud", "cluster", "addons", "apps"] {
        assert_eq!(layer(&doc, l)["status"], "in-sync", "{l}: {doc:#}");
    }

    bed.kubectl(
        "demo",
        &["-n", "web", "scale", "deploy/web", "--replicas=5"],
    );
    bed.kubectl(
        "demo",
        &[
            "-n",
            "web",
            "label",
            "--overwrite",
            "deploy/worker",
            "app=renamed",
        ],
    );
    bed.kubectl("demo", &["-n", "web", "delete", "configmap", "web-config"]);
    bed.kubectl(
        "demo",
        &[
            "-n",
            "web",
            "patch",
            "deploy/web",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"nginx:edited"}]"#,
        ],
    );
    let (code, doc, out) = diff(&bed, &repo.dir);
    assert_eq!(code, 2, "{}", text(&out));
    assert_eq!(layer(&doc, "apps")["status"], "drift");
    let web = entry(&doc, "apps", "Deployment/web/web");
    assert_eq!(web["kind"], "changed", "{web:#}");
    let fields = web["fields"].to_string();
    assert!(fields.contains("spec.replicas"), "{fields}");
    assert!(fields.contains("nginx:edited"), "{fields}");
    let worker = entry(&doc, "apps", "Deployment/web/worker");
    assert!(
        worker["fields"].to_string().contains("renamed"),
        "{worker:#}"
    );
    assert_eq!(
        entry(&doc, "apps", "ConfigMap/web/web-config")["kind"],
        "missing"
    );
    // The other layers are still checked and in sync.
    assert_eq!(layer(&doc, "cloud")["status"], "in-sync");
    // Human output: a readable unified diff, no colour codes with NO_COLOR.
    let human = bed.phoenix(&repo.dir, &["diff", "demo"]);
    assert_eq!(human.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&human.stdout);
    assert!(
        stdout.contains("-  replicas: 5") && stdout.contains("+  replicas: 2"),
        "{stdout}"
    );
    assert!(!stdout.contains('\u{1b}'), "NO_COLOR is respected");

    // kubectl now holds those fields. The objects are phoenix's, so a rebuild takes them back
    // (as plan said it would update them), and the run says who held them.
    let out = bed.phoenix(&repo.dir, &["rebuild", "demo", "--layers", "apps"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains("Deployment web/web: taking back fields held by another field manager")
            && all.contains("\"kubectl")
            && all.contains(".spec.replicas"),
        "{all}"
    );
    let (code, _, out) = diff(&bed, &repo.dir);
    assert_eq!(code, 0, "a rebuild clears the drift: {}", text(&out));

    // An object of the same name made by hand is not phoenix's: drift, and a rebuild refuses
    // to touch it.
    bed.kubectl("demo", &["-n", "web", "delete", "configmap", "web-config"]);
    let manifest = bed.git.path("foreign.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web-config, namespace: web}\ndata: {a: b}\n",
    )
    .expect("write manifest");
    bed.kubectl("demo", &["create", "-f", manifest.to_str().expect("utf-8")]);
    let (code, doc, out) = diff(&bed, &repo.dir);
    assert_eq!(code, 2, "{}", text(&out));
    let foreign = entry(&doc, "apps", "ConfigMap/web/web-config");
    assert!(
        foreign["fields"].to_string().contains("owner"),
        "{foreign:#}"
    );
    // plan agrees with what rebuild will do: refuse, not update.
    let out = bed.phoenix(&repo.dir, &["plan", "demo"]);
    let plan = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        plan.contains(
            "! refused ConfigMap/web/web-config (exists, not phoenix's: it has no phoenix labels"
        ),
        "{plan}"
    );
    assert!(!plan.contains("update ConfigMap/web/web-config"), "{plan}");
    let out = bed.phoenix(&repo.dir, &["rebuild", "demo", "--layers", "apps"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("not managed by phoenix"), "{all}");
}

#[test]
fn fields_left_to_another_manager_are_neither_applied_nor_drift() {
    let bed = Bed::new();
    let repo = bed.demo_repo();
    let path = repo.dir.join("environments/demo/environment.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let web = "      values: { replicas: 2, image: \"nginx:1.27\" }\n";
    assert!(yaml.contains(web), "the demo's web app changed: {yaml}");
    let yaml = yaml.replacen(
        web,
        &format!("{web}      leaveFields: [{{ kind: Deployment, name: web, fields: [spec.replicas] }}]\n"),
        1,
    );
    repo.write("environments/demo/environment.yaml", yaml);
    repo.commit("an autoscaler owns web's replicas");
    let out = bed.phoenix(&repo.dir, &["rebuild", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    bed.kubectl(
        "demo",
        &["-n", "web", "scale", "deploy/web", "--replicas=5"],
    );
    let (code, doc, out) = diff(&bed, &repo.dir);
    assert_eq!(
        code,
        0,
        "replicas are left to others: {doc:#}\n{}",
        text(&out)
    );
    let out = bed.phoenix(&repo.dir, &["plan", "demo", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "plan agrees: {}", text(&out));
    let out = bed.phoenix(&repo.dir, &["rebuild", "demo", "--layers", "apps"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let web = bed
        .deployments("demo", "web")
        .into_iter()
        .find(|d| d.metadata.name.as_deref() == Some("web"))
        .expect("deployment web");
    assert_eq!(
        web.spec.and_then(|s| s.replicas),
        Some(5),
        "the rebuild left the replicas alone"
    );
}

#[test]
fn a_layer_not_built_yet_is_missing_and_plan_and_diff_need_no_secret_values() {
    let bed = Bed::new();
    let repo = bed.demo_repo();
    let out = bed.phoenix(&repo.dir, &["rebuild", "demo", "--layers", "cloud"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // The cluster layer has not run (the server boots k3s by itself, but nothing of Git is applied
    // yet), and the database secret is not at hand.
    let out = bed
        .command(&repo.dir)
        .env_remove("PHOENIX_DEMO_DB_PASSWORD")
        .args(["plan", "demo", "--detailed-exitcode"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "changes pending, not an error: {}",
        text(&out)
    );
    assert!(
        !stdout.contains("cannot reach"),
        "a machine without a kubeconfig derives one: {stdout}"
    );
    assert!(stdout.contains("+ create Deployment/web/web"), "{stdout}");
    assert_eq!(
        stdout
            .matches("secret web-db-password is not available here")
            .count(),
        1,
        "said once: {stdout}"
    );
    assert!(
        !text(&out).contains("cannot read the secrets"),
        "{}",
        text(&out)
    );

    // --layers: only the cloud is checked and shown.
    let out = bed.phoenix(
        &repo.dir,
        &["diff", "demo", "--layers", "cloud", "-o", "json"],
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("diff JSON");
    assert_eq!(out.status.code(), Some(0), "{doc:#}");
    assert_eq!(layer(&doc, "cloud")["status"], "in-sync");
    assert_eq!(layer(&doc, "apps")["status"], "skipped");
    let out = bed.phoenix(&repo.dir, &["diff", "demo", "--layers", "cloud"]);
    let human = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        human.contains("cloud: in sync") && !human.contains("apps"),
        "{human}"
    );

    // Built whole, then compared without the secret: its Secret's data is unknown, not drift.
    let out = bed.phoenix(&repo.dir, &["rebuild", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = bed
        .command(&repo.dir)
        .env_remove("PHOENIX_DEMO_DB_PASSWORD")
        .args(["diff", "demo", "-o", "json"])
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).expect("diff JSON");
    assert_eq!(out.status.code(), Some(0), "{doc:#}\n{}", text(&out));
    assert_eq!(
        layer(&doc, "apps")["unknown"],
        serde_json::json!([{ "resource": "Secret/web/web-db", "fields": ["data.password"] }]),
        "{doc:#}"
    );
    let all = text(&out);
    assert!(!all.contains(bed::DB_PASSWORD), "the value never shows");
}

#[test]
fn cloud_and_node_drift_made_through_ec2_and_the_sandbox() {
    let bed = Bed::new();
    let repo = converged_demo(&bed);
    let ec2 = bed.ec2_client();
    // An SG rule added by hand.
    let groups = bed
        .rt
        .block_on(
            ec2.describe_security_groups()
                .filters(
                    aws_sdk_ec2::types::Filter::builder()
                        .name("tag:phoenix:resource")
                        .values("sg/cluster")
                        .build(),
                )
                .send(),
        )
        .expect("describe groups");
    let sg = groups.security_groups()[0]
        .group_id()
        .expect("group id")
        .to_string();
    bed.rt
        .block_on(
            ec2.authorize_security_group_ingress()
                .group_id(&sg)
                .ip_protocol("tcp")
                .from_port(22)
                .to_port(22)
                .cidr_ip("0.0.0.0/0")
                .send(),
        )
        .expect("authorize");
    let (code, doc, out) = diff(&bed, &repo.dir);
    assert_eq!(code, 2, "{}", text(&out));
    let rules = layer(&doc, "cloud")["entries"].to_string();
    assert!(
        rules.contains("sg/cluster") && rules.contains("22"),
        "{rules}"
    );

    // A node NotReady in the cluster.
    let node = bed.nodes("demo")[0]
        .metadata
        .name
        .clone()
        .expect("node name");
    assert!(bed.kube.set_node_ready("demo", &node, false));
    let (code, doc, out) = diff(&bed, &repo.dir);
    assert_eq!(code, 2, "{}", text(&out));
    let cluster = layer(&doc, "cluster");
    assert_eq!(cluster["status"], "drift", "{cluster:#}");
    assert!(
        cluster["entries"].to_string().contains("not-ready"),
        "{cluster:#}"
    );
    assert!(bed.kube.set_node_ready("demo", &node, true));

    // An agent instance terminated through the EC2 API.
    let reservations = bed
        .rt
        .block_on(
            ec2.describe_instances()
                .filters(
                    aws_sdk_ec2::types::Filter::builder()
                        .name("tag:phoenix:resource")
                        .values("instance/agent/1")
                        .build(),
                )
                .send(),
        )
        .expect("describe instances");
    let id = reservations.reservations()[0].instances()[0]
        .instance_id()
        .expect("instance id")
        .to_string();
    bed.rt
        .block_on(ec2.terminate_instances().instance_ids(&id).send())
        .expect("terminate");
    let (code, doc, out) = diff(&bed, &repo.dir);
    assert_eq!(code, 2, "{}", text(&out));
    let gone = entry(&doc, "cloud", "instance/agent/1");
    assert!(
        gone["kind"] == "stopped" || gone["kind"] == "missing",
        "{gone:#}"
    );
    assert!(
        gone.to_string().contains(&id) || gone.to_string().contains("terminated"),
        "{gone:#}"
    );
}

#[test]
fn an_object_left_after_a_git_change_is_extra_and_metrics_pass_promtool() {
    let bed = Bed::new();
    let repo = converged_demo(&bed);
    // The worker's Job leaves Git; the live Job is now extra.
    let worker = repo.dir.join("environments/demo/apps/worker/worker.yaml");
    let text_now = std::fs::read_to_string(&worker).expect("read worker");
    let docs: Vec<&str> = text_now.split("\n---\n").collect();
    let kept: Vec<&str> = docs
        .iter()
        .copied()
        .filter(|d| !d.contains("kind: Job"))
        .collect();
    assert!(kept.len() < docs.len(), "the fixture has a Job");
    std::fs::write(&worker, kept.join("\n---\n")).expect("write worker");
    repo.commit("the migration job is done");

    let metrics = bed.git.path("drift.prom");
    let out = bed.phoenix(
        &repo.dir,
        &[
            "diff",
            "demo",
            "--output",
            "json",
            "--metrics-file",
            metrics.to_str().expect("utf-8 path"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        entry(&doc, "apps", "Job/web/migrate-v1")["kind"],
        "extra",
        "{doc:#}"
    );
    let prom = std::fs::read_to_string(&metrics).expect("metrics written");
    assert!(prom.contains("env=\"demo\""), "{prom}");
    let promtool = std::process::Command::new(
        std::env::var_os("PROMTOOL").unwrap_or_else(|| "promtool".into()),
    )
    .args(["check", "metrics"])
    .stdin(std::fs::File::open(&metrics).expect("open metrics"))
    .output()
    .expect("promtool runs (Debian package prometheus, installed by scripts/setup)");
    assert!(
        promtool.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&promtool.stdout),
        String::from_utf8_lossy(&promtool.stderr)
    );

    // plan --detailed-exitcode agrees: changes pending (the prune), exit 2.
    let out = bed.phoenix(&repo.dir, &["plan", "demo", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Job/web/migrate-v1"));
    // After the rebuild prunes it, both say nothing is left to do.
    let out = bed.phoenix(&repo.dir, &["rebuild", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = bed.phoenix(&repo.dir, &["plan", "demo", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (code, _, out) = diff(&bed, &repo.dir);
    assert_eq!(code, 0, "{}", text(&out));
}

#[test]
fn an_unreachable_api_is_an_error_not_drift() {
    let bed = Bed::new();
    let repo = converged_demo(&bed);
    let dead = format!("http://127.0.0.1:{}", moto::free_port());
    let out = bed
        .command(&repo.dir)
        .env("AWS_ENDPOINT_URL", &dead)
        .args(["diff", "demo", "--output", "json"])
        .output()
        .expect("run phoenix");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("json even on error");
    assert_eq!(layer(&doc, "cloud")["status"], "error", "{doc:#}");
    assert_eq!(
        layer(&doc, "cluster")["status"],
        "error",
        "the cluster's expected nodes come from the cloud layer: {doc:#}"
    );
}

/// The seals a rebuild writes spare the next diffs their dry runs, through the real binary:
/// counted at a proxy in front of the API server.
#[test]
fn a_diff_after_a_rebuild_dry_runs_only_secrets_and_what_was_written_since() {
    let bed = Bed::new();
    let proxy = kube_proxy::KubeProxy::start(bed.kube.addr().port());
    let repo = bed.demo_repo();
    let run = |args: &[&str]| {
        bed.command(&repo.dir)
            .env(
                "PHOENIX_CLUSTER_ENDPOINT",
                format!("{}/clusters/{{env}}", proxy.url()),
            )
            .args(args)
            .output()
            .expect("run phoenix")
    };
    let out = run(&["rebuild", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let seals = bed.git.phoenix_home().join("cache/seals/demo");
    let files: Vec<_> = std::fs::read_dir(&seals)
        .unwrap_or_else(|e| panic!("{}: {e}", seals.display()))
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(!files.is_empty());
    for f in &files {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(f).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", f.display());
    }
    let secrets = bed
        .kubectl(
            "demo",
            &[
                "get",
                "secrets",
                "-A",
                "-l",
                "app.kubernetes.io/managed-by=phoenix",
                "-o",
                "name",
            ],
        )
        .lines()
        .count();
    let dry_runs = || proxy.count("dryRun=All");

    let before = dry_runs();
    let out = run(&["diff", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // The demo's PersistentVolume web-data is written once more after the rebuild sealed it:
    // the controller manager binds it (claimRef, phase) when the app's claim appears. A
    // controller may also still be writing a workload's status after the health wait saw it
    // healthy (the web pods wait for the volume): at most two such objects here, far fewer than
    // the demo's objects (every one is proved again without the cache, below).
    let first = dry_runs() - before;
    assert!(
        (secrets + 1..=secrets + 3).contains(&first),
        "only Secrets, which are never sealed, the PersistentVolume bound since and what a controller wrote since: {first} dry runs for {secrets} Secrets"
    );
    // The diff sealed what it proved: nothing written since, so only the Secrets again.
    let before = dry_runs();
    let out = run(&["diff", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(dry_runs() - before, secrets, "only Secrets");

    bed.kubectl(
        "demo",
        &["-n", "web", "scale", "deploy/web", "--replicas=5"],
    );
    let before = dry_runs();
    let out = run(&["diff", "demo"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(
        dry_runs() - before,
        secrets + 1,
        "and the scaled Deployment"
    );

    // Without the cache every object is proved again, and the verdict is the same.
    std::fs::remove_dir_all(&seals).expect("remove seals");
    let before = dry_runs();
    let out = run(&["diff", "demo"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        dry_runs() - before > secrets + 5,
        "{} dry runs",
        dry_runs() - before
    );
}

/// An image of moto's account, made from a throwaway instance, named `name`.
fn own_image(bed: &Bed, name: &str) -> String {
    let c = bed.ec2_client();
    bed.rt.block_on(async {
        let source = c
            .run_instances()
            .image_id("ami-03c3da4cfa8e8943a")
            .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
            .min_count(1)
            .max_count(1)
            .send()
            .await
            .expect("source instance");
        let id = source.instances()[0].instance_id().expect("id").to_string();
        let image = c
            .create_image()
            .instance_id(&id)
            .name(name)
            .send()
            .await
            .expect("create image")
            .image_id()
            .expect("image id")
            .to_string();
        c.terminate_instances()
            .instance_ids(id)
            .send()
            .await
            .expect("terminate the source");
        image
    })
}

/// Issue 14, item 3: after a rebuild, a newly published image matching the server's lookup is
/// no drift and no change: `diff` and `plan` exit 0 and name it as available.
#[test]
fn a_newer_image_for_a_pinned_lookup_is_a_note_not_drift() {
    let bed = Bed::new();
    let repo = bed.demo_repo();
    own_image(&bed, "phoenix-demo-1");
    let env_file = repo.dir.join("environments/demo/environment.yaml");
    let env = std::fs::read_to_string(&env_file)
        .expect("read env")
        .replacen(
            "image: { owner: amazon, name: \"al2023-ami-2023*-kernel-6.1-x86_64\" }",
            "image: { owner: \"123456789012\", name: \"phoenix-demo-*\" }",
            1,
        );
    assert!(env.contains("phoenix-demo-*"));
    std::fs::write(&env_file, env).expect("write env");
    repo.commit("the server from our own image");
    let out = bed.phoenix(&repo.dir, &["rebuild", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let newer = own_image(&bed, "phoenix-demo-2");
    let out = bed.phoenix(&repo.dir, &["diff", "demo"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "no drift:\n{all}");
    assert!(
        all.contains(&format!(
            "note instance/server/0: newer image available: {newer}"
        )),
        "{all}"
    );
    let out = bed.phoenix(&repo.dir, &["diff", "demo", "--output", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["exitCode"], 0, "{v}");
    let out = bed.phoenix(&repo.dir, &["plan", "demo", "--detailed-exitcode"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "no change pending:\n{all}");
    assert!(all.contains("newer image available"), "{all}");
}
