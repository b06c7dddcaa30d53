//! Drills and ephemeral environments end to end on moto + the real control plane: a drill next to the live
//! demo touches none of its resources, writes both reports and leaves nothing behind; a drill
//! with a never-ready component exits 1 and still tears down; one over its recovery objective
//! exits 3; an ephemeral copy with a 1-second TTL is removed by gc; `destroy --ephemeral`.

use testkit::bed;

use std::collections::BTreeMap;
use std::path::Path;

use bed::{text, Bed};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams};
use serde_json::Value;

/// Every live cloud resource of `env` by resource id → AWS ids, and every Deployment of the
/// env's cluster by name → resourceVersion: what a drill must not change.
fn fingerprint(bed: &Bed, env: &str) -> (BTreeMap<String, Vec<String>>, BTreeMap<String, String>) {
    let ec2 = bed.ec2();
    let live = bed
        .rt
        .block_on(phoenix::providers::aws::observe(&ec2, env))
        .expect("observe");
    let cloud = live
        .resources
        .iter()
        .map(|(id, copies)| {
            (
                id.clone(),
                copies.iter().map(|c| c.aws_id.clone()).collect(),
            )
        })
        .collect();
    let api: Api<Deployment> = Api::all(bed.client(env));
    let objects = bed
        .rt
        .block_on(api.list(&ListParams::default()))
        .expect("list deployments")
        .items
        .into_iter()
        .map(|d| {
            (
                format!(
                    "{}/{}",
                    d.metadata.namespace.unwrap_or_default(),
                    d.metadata.name.unwrap_or_default()
                ),
                d.metadata.resource_version.unwrap_or_default(),
            )
        })
        .collect();
    (cloud, objects)
}

fn drill(bed: &Bed, dir: &Path, reports: Option<&Path>) -> (i32, Value, String) {
    let mut args = vec!["drill", "demo", "--output", "json"];
    if let Some(r) = reports {
        args.extend(["--report-dir", r.to_str().expect("utf-8")]);
    }
    let out = bed.phoenix(dir, &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default().to_string();
    let doc: Value = serde_json::from_str(&last).unwrap_or_else(|e| {
        panic!(
            "the drill report is the last JSON line ({e}): {}",
            text(&out)
        )
    });
    (out.status.code().unwrap_or(-1), doc, text(&out))
}

fn copies_listed(bed: &Bed, dir: &Path) -> Vec<String> {
    let out = bed.phoenix(dir, &["list", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("list json");
    doc["copies"]
        .as_array()
        .expect("copies")
        .iter()
        .filter_map(|c| c["env"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_drill_next_to_the_live_env_touches_nothing_of_it_and_leaves_nothing() {
    let bed = Bed::new();
    let repo = bed.demo_repo();
    let out = bed.phoenix(&repo.dir, &["rebuild", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let before = fingerprint(&bed, "demo");
    assert!(!before.0.is_empty() && !before.1.is_empty());

    let reports = bed.git.path("reports");
    let (code, doc, all) = drill(&bed, &repo.dir, Some(&reports));
    assert_eq!(code, 0, "{all}");
    assert_eq!(doc["verdict"], "passed", "{doc:#}");
    let copy = doc["copy"].as_str().expect("copy name").to_string();
    assert!(copy.starts_with("demo-drill-"), "{copy}");
    assert_eq!(doc["rebuild"]["converged"], true);
    for l in doc["verify"]["layers"].as_array().expect("verify layers") {
        assert_eq!(l["status"], "in-sync", "{l:#}");
    }

    // The live environment is exactly as it was.
    assert_eq!(
        fingerprint(&bed, "demo"),
        before,
        "the drill changed the live env"
    );
    // The copy is gone: no cloud resource, no copy listed, no local credentials.
    assert_eq!(bed.live_cloud(&copy), 0, "{copy} left cloud resources");
    assert!(copies_listed(&bed, &repo.dir).is_empty());
    assert!(!bed.phoenix_home_has(&format!("clusters/{copy}")));
    assert!(
        bed.phoenix_home_has("cache/seals/demo"),
        "the live env's seals stay"
    );
    assert!(
        !bed.phoenix_home_has(&format!("cache/seals/{copy}")),
        "the copy's diff seals go with it"
    );
    // Both reports, for people and for machines.
    let files: Vec<String> = std::fs::read_dir(&reports)
        .expect("report dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let md = files
        .iter()
        .find(|f| f.ends_with(&format!("{copy}.md")))
        .expect("markdown report");
    assert!(
        files.iter().any(|f| f.ends_with(&format!("{copy}.json"))),
        "{files:?}"
    );
    let text_md = std::fs::read_to_string(reports.join(md)).expect("read md");
    for needle in [
        "Verdict: passed",
        "## Layers",
        "## Critical path",
        "apps/web",
        &repo.head(),
    ] {
        assert!(text_md.contains(needle), "{needle:?} missing:\n{text_md}");
    }
    assert!(!text_md.contains(bed::DB_PASSWORD) && !all.contains(bed::DB_PASSWORD));
}

#[test]
fn a_failed_drill_exits_1_and_still_tears_down() {
    let bed = Bed::new();
    let repo = bed.demo_repo();
    let env_file = repo.dir.join("environments/demo/environment.yaml");
    let env = std::fs::read_to_string(&env_file).expect("read env")
        + "    - { name: stuck, path: apps/stuck, namespace: web, dependsOn: [web], wait: 5s }\n";
    std::fs::write(&env_file, env).expect("write env");
    repo.write(
        "environments/demo/apps/stuck/deploy.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: stuck\n  namespace: web\nspec:\n  selector: { matchLabels: { app: stuck } }\n  template:\n    metadata: { labels: { app: stuck }, annotations: { testenv.phoenix.dev/ready: never } }\n    spec: { containers: [{ name: stuck, image: busybox }] }\n",
    );
    repo.commit("a stuck app");
    let reports = bed.git.path("reports");
    let (code, doc, all) = drill(&bed, &repo.dir, Some(&reports));
    assert_eq!(code, 1, "{all}");
    assert_eq!(doc["verdict"], "failed");
    let failures = doc["failures"].to_string();
    assert!(failures.contains("apps/stuck"), "{failures}");
    let copy = doc["copy"].as_str().expect("copy");
    assert_eq!(doc["teardown"]["converged"], true, "{doc:#}");
    assert_eq!(bed.live_cloud(copy), 0, "torn down after the failure");
}

#[test]
fn a_drill_over_its_recovery_objective_exits_3() {
    let bed = Bed::new();
    let repo = bed.demo_repo();
    let env_file = repo.dir.join("environments/demo/environment.yaml");
    let env = std::fs::read_to_string(&env_file)
        .expect("read env")
        .replace("recoveryObjective: 5m", "recoveryObjective: 1s");
    std::fs::write(&env_file, env).expect("write env");
    repo.commit("an objective nobody meets");
    let (code, doc, all) = drill(&bed, &repo.dir, None);
    assert_eq!(code, 3, "{all}");
    assert_eq!(doc["verdict"], "over-objective");
    assert_eq!(doc["recoveryObjectiveSeconds"], 1.0);
    assert_drill_report_schema(&doc, &repo.head());
    // `last.json`, which `phoenix runbook` reads, is the same report.
    let last = bed.git.phoenix_home().join("drills/demo/last.json");
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&last).expect("last.json"))
        .expect("last.json is JSON");
    assert_eq!(saved, doc);
    assert_eq!(bed.live_cloud(doc["copy"].as_str().expect("copy")), 0);
    // The generated runbook carries the objective, the order and this drill's verdict.
    let out = bed.phoenix(&repo.dir, &["runbook", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let runbook = String::from_utf8_lossy(&out.stdout).into_owned();
    for needle in [
        "Recovery objective: 1s",
        "Last drill: **over-objective**",
        "`cluster/control-plane`",
        "`worker` from `environments/demo/apps/worker` in namespace web, after web, backup-operator",
        "phoenix rebuild demo --ref",
        // What a new machine needs for the cluster: the secret, not a $PHOENIX_HOME.
        "the cluster secret from env:PHOENIX_DEMO_CLUSTER_SECRET",
    ] {
        assert!(runbook.contains(needle), "{needle:?} missing:\n{runbook}");
    }
}

/// The drill report (docs/json.md), pinned: every top-level key and value, with the time,
/// durations and the copy's random suffix normalised; the run summaries and the drift report it
/// embeds by their keys (their values are pinned by tests/system/cli.rs and drift::output's snapshot).
fn assert_drill_report_schema(doc: &Value, head: &str) {
    fn snake_keys(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    if k.contains('_') {
                        out.push(k.clone());
                    }
                    snake_keys(v, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| snake_keys(v, out)),
            _ => {}
        }
    }
    let mut bad = Vec::new();
    snake_keys(doc, &mut bad);
    assert!(bad.is_empty(), "snake_case keys {bad:?}: {doc:#}");
    let keys = |v: &Value| -> Vec<String> {
        v.as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    let mut top = doc.clone();
    assert_eq!(top["commit"]["sha"], head);
    for k in [
        "sha",
        "shortSha",
        "time",
        "repo",
        "authorName",
        "authorEmail",
        "summary",
    ] {
        assert!(top["commit"].get(k).is_some(), "commit.{k}: {doc:#}");
        top["commit"][k] = "*".into();
    }
    let copy = top["copy"].as_str().unwrap_or_default();
    assert!(
        copy.strip_prefix("demo-drill-")
            .is_some_and(|s| s.len() == 6 && s.chars().all(|c| c.is_ascii_hexdigit())),
        "{copy}"
    );
    top["copy"] = "demo-drill-*".into();
    assert!(humantime::parse_rfc3339(top["startedAt"].as_str().unwrap_or_default()).is_ok());
    top["startedAt"] = "<time>".into();
    // The missed objectives name durations measured by this run.
    assert!(
        top["missedObjectives"][0]
            .as_str()
            .is_some_and(|m| m.starts_with("recoveryObjective: recovery took")),
        "{doc:#}"
    );
    top["missedObjectives"] = "<missed>".into();
    // The demo's data volume: restored (empty: the demo was never backed up) and timed.
    assert_eq!(top["volumes"][0]["volume"], "web-data", "{doc:#}");
    assert!(
        top["volumes"][0]["restoreSeconds"].as_f64().is_some(),
        "{doc:#}"
    );
    top["volumes"] = keys(&top["volumes"][0]).into();
    for k in [
        "recoverySeconds",
        "rebuildSeconds",
        "verifySeconds",
        "teardownSeconds",
        // The demo's record, cut over under the copy's own name (docs/dns.md).
        "dnsSeconds",
    ] {
        assert!(top[k].as_f64().is_some_and(|s| s >= 0.0), "{k}: {doc:#}");
        top[k] = "<seconds>".into();
    }
    for k in ["rebuild", "teardown", "verify"] {
        top[k] = keys(&top[k]).into();
    }
    let summary = [
        "cancelled",
        "converged",
        "criticalPath",
        "durationSeconds",
        "env",
        "error",
        "layers",
        "nodes",
        "runId",
    ];
    assert_eq!(
        top,
        serde_json::json!({
            "schemaVersion": 1, "type": "drillReport", "env": "demo", "copy": "demo-drill-*",
            "region": "us-east-1",
            "commit": {
                "sha": "*", "shortSha": "*", "summary": "*", "authorName": "*", "authorEmail": "*",
                "time": "*", "reference": "HEAD", "resolved": { "kind": "branch", "name": "main" },
                "repo": "*", "signature": { "status": "unsigned" }
            },
            "startedAt": "<time>", "verdict": "over-objective",
            "recoveryObjectiveSeconds": 1.0, "recoverySeconds": "<seconds>",
            "rebuildSeconds": "<seconds>", "verifySeconds": "<seconds>",
            "teardownSeconds": "<seconds>", "dnsSeconds": "<seconds>", "kept": false,
            "rebuild": summary, "teardown": summary,
            "verify": ["checkedAt", "commit", "durationSeconds", "env", "exitCode", "layers", "schemaVersion", "status"],
            "failures": [], "missedObjectives": "<missed>",
            "volumes": ["recoveryPointObjectiveSeconds", "recoveryPointSeconds", "restoreSeconds", "snapshotId", "snapshotTime", "volume"]
        }),
        "{doc:#}"
    );
    // The embedded summaries carry the graph's node ids.
    assert!(
        doc["rebuild"]["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n["id"] == "cluster/control-plane")),
        "{doc:#}"
    );
}

#[test]
fn an_expired_ephemeral_env_is_collected_and_destroy_removes_one_now() {
    let bed = Bed::new();
    let repo = bed.demo_repo();
    let out = bed.phoenix(
        &repo.dir,
        &["up", "demo", "--ephemeral", "pr-1", "--ttl", "1s"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = bed.phoenix(
        &repo.dir,
        &["up", "demo", "--ephemeral", "pr-2", "--ttl", "1h"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(bed.live_cloud("demo-pr-1") > 0);
    assert_eq!(
        copies_listed(&bed, &repo.dir),
        vec!["demo-pr-1", "demo-pr-2"]
    );
    let human = bed.phoenix(&repo.dir, &["list"]);
    let listing = String::from_utf8_lossy(&human.stdout).into_owned();
    assert!(
        listing.contains("expired") && listing.contains(&repo.head()[..12]),
        "{listing}"
    );

    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = bed.phoenix(&repo.dir, &["gc"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        bed.live_cloud("demo-pr-1"),
        0,
        "gc removed the expired copy"
    );
    assert!(
        bed.live_cloud("demo-pr-2") > 0,
        "gc leaves an unexpired copy alone"
    );
    assert_eq!(copies_listed(&bed, &repo.dir), vec!["demo-pr-2"]);

    let out = bed.phoenix(
        &repo.dir,
        &["destroy", "demo", "--ephemeral", "pr-2", "--yes"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(bed.live_cloud("demo-pr-2"), 0);
    assert!(copies_listed(&bed, &repo.dir).is_empty());
    assert_eq!(
        bed.live_cloud("demo"),
        0,
        "the live env was never built nor touched"
    );
}
