//! Data volumes end to end through the real binary on moto (issue 16): a rebuild creates the
//! volume (empty only with allowEmpty), `phoenix backup` snapshots it, copies to the second
//! region and prunes beyond `keep` (foreign and newest snapshots stay), destroy takes a final
//! snapshot and deletes the volume, a rebuild restores from the newest snapshot or from
//! `--restore-point` (a snapshot id or a time), checked through the EC2 API; a rebuild with no
//! snapshot fails naming the volume; validation points at file:line.

use testkit::bed;
use testkit::rewrite_proxy::RewriteProxy;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use testkit::git::{Repo, Sandbox};
use testkit::moto::Moto;

const REGION: &str = "us-east-1";
const OTHER: &str = "us-west-2";
const AMI: &str = "ami-03c3da4cfa8e8943a";

fn env_yaml(name: &str, allow_empty: bool, keep: u32) -> String {
    format!(
        r#"apiVersion: phoenix/v1
kind: Environment
metadata: {{ name: {name} }}
spec:
  cloud:
    region: {REGION}
    network:
      cidr: 10.50.0.0/16
      subnets: [{{ name: a, cidr: 10.50.1.0/24, zone: us-east-1a, public: true }}]
    instances:
      - {{ name: db, role: none, count: 1, type: t3.medium, image: {{ id: {AMI} }}, subnet: a, userData: cloud-init/data.yaml.j2 }}
  volumes:
    - name: data
      size: 4
      instance: db/0
      mountPath: /srv/data
      allowEmpty: {allow_empty}
      backup: {{ keep: {keep}, copyTo: [{OTHER}], every: 1h, recoveryPointObjective: 2h }}
"#
    )
}

struct Lab {
    moto: Moto,
    git: Sandbox,
    rt: tokio::runtime::Runtime,
}

impl Lab {
    fn new() -> Lab {
        Lab {
            moto: Moto::start(),
            git: Sandbox::new(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
        }
    }

    fn repo(&self, name: &str, yaml: &str) -> Repo<'_> {
        let repo = self.git.repo("envs");
        repo.write(&format!("environments/{name}/environment.yaml"), yaml);
        repo.write(
            "templates/cloud-init/data.yaml.j2",
            "#cloud-config\nruncmd: [\"true\"]\n",
        );
        repo.commit("an env with a data volume");
        repo
    }

    fn phoenix(&self, dir: &Path, args: &[&str]) -> Output {
        self.phoenix_via(&self.moto.endpoint(), dir, args)
    }

    fn phoenix_via(&self, endpoint: &str, dir: &Path, args: &[&str]) -> Output {
        bed::hermetic(&self.git, dir)
            .env("AWS_ENDPOINT_URL", endpoint)
            .args(args)
            .output()
            .expect("run phoenix")
    }

    fn ec2(&self, region: &str) -> aws_sdk_ec2::Client {
        self.rt
            .block_on(testkit::ec2::sdk_client_in(&self.moto.endpoint(), region))
    }

    /// The env's live data volumes.
    fn volumes(&self, env: &str) -> Vec<LiveVolume> {
        let resp = self
            .rt
            .block_on(
                self.ec2(REGION)
                    .describe_volumes()
                    .filters(filter("tag:phoenix:env", env))
                    // Root volumes carry the instance's tags; data volumes name their volume.
                    .filters(filter("tag-key", "phoenix:volume"))
                    .send(),
            )
            .expect("describe volumes");
        resp.volumes()
            .iter()
            .filter(|v| v.state().map(|s| s.as_str()) != Some("deleted"))
            .map(|v| {
                let tags = tags(v.tags());
                (
                    v.volume_id().unwrap_or_default().to_string(),
                    v.snapshot_id()
                        .filter(|s| !s.is_empty())
                        .map(str::to_string),
                    tags.get("phoenix:restored-from").cloned(),
                    v.attachments()
                        .iter()
                        .map(|a| {
                            format!(
                                "{} {} {}",
                                a.instance_id().unwrap_or_default(),
                                a.device().unwrap_or_default(),
                                a.state().map(|s| s.as_str()).unwrap_or_default()
                            )
                        })
                        .collect(),
                )
            })
            .collect()
    }

    /// This account's snapshots in `region` as (id, tags), newest phoenix:time last.
    fn snapshots(&self, region: &str) -> Vec<(String, BTreeMap<String, String>)> {
        let resp = self
            .rt
            .block_on(
                self.ec2(region)
                    .describe_snapshots()
                    .owner_ids("self")
                    .send(),
            )
            .expect("describe snapshots");
        let mut out: Vec<(String, BTreeMap<String, String>)> = resp
            .snapshots()
            .iter()
            .map(|s| {
                (
                    s.snapshot_id().unwrap_or_default().to_string(),
                    tags(s.tags()),
                )
            })
            .collect();
        out.sort_by(|a, b| {
            a.1.get("phoenix:time")
                .cmp(&b.1.get("phoenix:time"))
                .then(a.0.cmp(&b.0))
        });
        out
    }

    fn owned_snapshots(&self, region: &str, env: &str) -> Vec<(String, BTreeMap<String, String>)> {
        self.snapshots(region)
            .into_iter()
            .filter(|(_, t)| t.get("phoenix:env").map(String::as_str) == Some(env))
            .collect()
    }
}

/// (id, SnapshotId, phoenix:restored-from, attachments as "instance device state").
type LiveVolume = (String, Option<String>, Option<String>, Vec<String>);

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

fn tags(t: &[Tag]) -> BTreeMap<String, String> {
    t.iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn last_json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is JSON ({e}):\n{last}"))
}

fn ok(out: &Output) {
    assert_eq!(out.status.code(), Some(0), "{}", text(out));
}

#[test]
fn backup_destroy_rebuild_restores_the_newest_snapshot_or_the_restore_point() {
    let bed = Lab::new();
    let repo = bed.repo("shop", &env_yaml("shop", true, 2));
    let dir = &repo.dir;

    // First build: no snapshot yet, allowEmpty: the volume is created empty and attached.
    ok(&bed.phoenix(dir, &["rebuild", "shop"]));
    let vols = bed.volumes("shop");
    assert_eq!(vols.len(), 1, "{vols:?}");
    assert_eq!(vols[0].1, None, "created empty: {vols:?}");
    assert_eq!(vols[0].2.as_deref(), Some("empty"));
    assert!(
        vols[0].3.iter().any(|a| a.contains("/dev/sdf attached")),
        "attached as /dev/sdf: {vols:?}"
    );
    // A second run attaches the same volume as it is.
    ok(&bed.phoenix(dir, &["rebuild", "shop"]));
    assert_eq!(bed.volumes("shop")[0].0, vols[0].0, "the same volume");

    // diff: no backup yet, so the recovery point objective is missed: drift (exit 2).
    let out = bed.phoenix(dir, &["diff", "shop", "--output", "json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let drift = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(drift.contains("\"backup/data\""), "{drift}");
    assert!(drift.contains("no completed snapshot"), "{drift}");
    assert!(
        !drift.contains("\"volume/data\""),
        "the volume itself is in sync: {drift}"
    );

    // A foreign snapshot of the same volume (no phoenix tags) and one of another env: never pruned.
    let ec2 = bed.ec2(REGION);
    let foreign = bed
        .rt
        .block_on(ec2.create_snapshot().volume_id(&vols[0].0).send())
        .expect("foreign snapshot")
        .snapshot_id()
        .unwrap()
        .to_string();
    let other_env = bed
        .rt
        .block_on(
            ec2.create_snapshot()
                .volume_id(&vols[0].0)
                .tag_specifications(
                    TagSpecification::builder()
                        .resource_type(ResourceType::Snapshot)
                        .tags(Tag::builder().key("phoenix:env").value("other").build())
                        .tags(
                            Tag::builder()
                                .key("phoenix:resource")
                                .value("snapshot/data")
                                .build(),
                        )
                        .tags(Tag::builder().key("phoenix:volume").value("data").build())
                        .tags(
                            Tag::builder()
                                .key("phoenix:time")
                                .value("2020-01-01T00:00:00.000Z")
                                .build(),
                        )
                        .build(),
                )
                .send(),
        )
        .expect("other env's snapshot")
        .snapshot_id()
        .unwrap()
        .to_string();

    // Three backups with keep: 2 — each copies to us-west-2, the third prunes the first.
    let mut taken: Vec<String> = Vec::new();
    for i in 0..3 {
        let out = bed.phoenix(dir, &["backup", "shop", "--output", "json"]);
        ok(&out);
        let report = last_json(&out);
        assert_eq!(report["type"], "backupReport", "{report}");
        assert_eq!(report["schemaVersion"], 1);
        let v = &report["volumes"][0];
        assert_eq!(v["volume"], "data");
        assert_eq!(v["volumeId"], vols[0].0.as_str());
        let id = v["snapshotId"].as_str().expect("snapshot id").to_string();
        assert_eq!(v["copies"][0]["region"], OTHER, "{report}");
        let pruned: Vec<&str> = v["pruned"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["snapshotId"].as_str().unwrap())
            .collect();
        if i < 2 {
            assert!(pruned.is_empty(), "nothing beyond keep 2 yet: {report}");
        } else {
            assert_eq!(
                pruned.len(),
                2,
                "the oldest here and its copy there: {report}"
            );
            assert!(pruned.contains(&taken[0].as_str()), "{report}");
        }
        taken.push(id);
    }
    let owned = bed.owned_snapshots(REGION, "shop");
    let ids: Vec<&str> = owned.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        [taken[1].as_str(), taken[2].as_str()],
        "keep 2, newest kept"
    );
    let (_, t) = &owned[1];
    for key in [
        "phoenix:env",
        "phoenix:resource",
        "phoenix:commit",
        "phoenix:volume",
        "phoenix:time",
    ] {
        assert!(t.contains_key(key), "snapshot tag {key}: {t:?}");
    }
    assert_eq!(t["phoenix:commit"], repo.head());
    let all: Vec<String> = bed
        .snapshots(REGION)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert!(all.contains(&foreign), "the foreign snapshot stays");
    assert!(all.contains(&other_env), "another env's snapshot stays");
    // The copies in the second region: two kept, each naming its source.
    let copies = bed.owned_snapshots(OTHER, "shop");
    assert_eq!(copies.len(), 2, "{copies:?}");
    assert_eq!(
        copies[1]
            .1
            .get("phoenix:source-snapshot")
            .map(String::as_str),
        Some(format!("{REGION}/{}", taken[2]).as_str())
    );

    // diff after the backups: in sync, and the metrics carry the age of the newest snapshot.
    let metrics = bed.git.path("metrics.prom");
    let out = bed.phoenix(
        dir,
        &["diff", "shop", "--metrics-file", metrics.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let prom = std::fs::read_to_string(&metrics).expect("metrics file");
    assert!(
        prom.contains("phoenix_backup_age_seconds{env=\"shop\",volume=\"data\"} "),
        "{prom}"
    );
    // Detached behind phoenix's back: drift on the volume, and a rebuild attaches it again.
    let instance = vols[0].3[0].split(' ').next().unwrap().to_string();
    bed.rt
        .block_on(
            ec2.detach_volume()
                .volume_id(&vols[0].0)
                .instance_id(&instance)
                .device("/dev/sdf")
                .send(),
        )
        .expect("detach");
    let out = bed.phoenix(dir, &["diff", "shop", "--output", "json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let drift = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        drift.contains("\"volume/data\"") && drift.contains("detached"),
        "{drift}"
    );
    // The report carries the newest snapshot's age against the objective (2h): fresh.
    let doc: serde_json::Value = serde_json::from_str(&drift).expect("drift json");
    let backup = &doc["layers"][0]["backups"][0];
    assert_eq!(backup["volume"], "data", "{doc:#}");
    assert_eq!(backup["snapshotId"], taken[2].as_str(), "{doc:#}");
    assert_eq!(backup["recoveryPointObjectiveSeconds"], 7200.0, "{doc:#}");
    assert!(
        backup["ageSeconds"].as_f64().is_some_and(|a| a < 600.0),
        "{doc:#}"
    );
    assert_eq!(backup["stale"], false, "{doc:#}");
    ok(&bed.phoenix(dir, &["rebuild", "shop"]));
    assert!(
        bed.volumes("shop")[0]
            .3
            .iter()
            .any(|a| a.ends_with("attached")),
        "attached again"
    );

    // destroy: a final snapshot, then the volume is deleted; snapshots stay.
    ok(&bed.phoenix(dir, &["destroy", "shop", "--yes"]));
    assert!(bed.volumes("shop").is_empty(), "{:?}", bed.volumes("shop"));
    let owned = bed.owned_snapshots(REGION, "shop");
    assert_eq!(
        owned.len(),
        3,
        "the two backups and the final snapshot: {owned:?}"
    );
    let final_snap = owned[2].0.clone();
    assert_eq!(owned[2].1["phoenix:snapshot"], "final");

    // rebuild: restored from the newest completed owned snapshot (the final one).
    ok(&bed.phoenix(dir, &["rebuild", "shop"]));
    let vols = bed.volumes("shop");
    assert_eq!(vols.len(), 1, "{vols:?}");
    assert_eq!(vols[0].1.as_deref(), Some(final_snap.as_str()), "{vols:?}");
    assert!(
        vols[0].3.iter().any(|a| a.ends_with("attached")),
        "{vols:?}"
    );

    // --restore-point with a snapshot id picks that older one.
    ok(&bed.phoenix(dir, &["destroy", "shop", "--yes", "--skip-final-snapshot"]));
    assert_eq!(
        bed.owned_snapshots(REGION, "shop").len(),
        3,
        "no final snapshot"
    );
    ok(&bed.phoenix(dir, &["rebuild", "shop", "--restore-point", &taken[1]]));
    assert_eq!(bed.volumes("shop")[0].1.as_deref(), Some(taken[1].as_str()));

    // --restore-point with a time: the newest completed snapshot at or before it.
    ok(&bed.phoenix(dir, &["destroy", "shop", "--yes", "--skip-final-snapshot"]));
    let time_of_newest_backup = bed
        .owned_snapshots(REGION, "shop")
        .into_iter()
        .find(|(id, _)| *id == taken[2])
        .map(|(_, t)| t["phoenix:time"].clone())
        .expect("the third backup");
    ok(&bed.phoenix(
        dir,
        &["rebuild", "shop", "--restore-point", &time_of_newest_backup],
    ));
    assert_eq!(bed.volumes("shop")[0].1.as_deref(), Some(taken[2].as_str()));
}

#[test]
fn a_rebuild_without_a_snapshot_fails_naming_the_volume() {
    let bed = Lab::new();
    let repo = bed.repo("shop", &env_yaml("shop", false, 3));
    // The live plan says so before anything runs.
    let out = bed.phoenix(&repo.dir, &["plan", "shop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out)
            .contains("+ create volume/data (no snapshot to restore it from: a rebuild fails)"),
        "{}",
        text(&out)
    );
    let out = bed.phoenix(&repo.dir, &["rebuild", "shop"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("volume data is missing and no completed snapshot of it is owned by shop"),
        "{all}"
    );
    assert!(all.contains("allowEmpty: true"), "says what to do: {all}");
    assert!(bed.volumes("shop").is_empty(), "nothing created empty");
    // An unknown restore point is refused before anything runs.
    let out = bed.phoenix(
        &repo.dir,
        &["rebuild", "shop", "--restore-point", "yesterday"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("neither a snapshot id"),
        "{}",
        text(&out)
    );
}

#[test]
fn volume_mistakes_are_diagnostics_with_file_and_line() {
    let git = Sandbox::new();
    let repo = git.repo("envs");
    let yaml = env_yaml("shop", true, 1)
        .replace("instance: db/0", "instance: db/3")
        .replace("copyTo: [us-west-2]", "copyTo: [us-east-1]");
    repo.write("environments/shop/environment.yaml", &yaml);
    repo.write("templates/cloud-init/data.yaml.j2", "#cloud-config\n");
    repo.commit("bad volume");
    let out = Command::new(bed::phoenix_binary())
        .current_dir(&repo.dir)
        .args(["validate", "shop"])
        .env("HOME", git.home())
        .env("PHOENIX_HOME", git.phoenix_home())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("NO_COLOR", "1")
        .output()
        .expect("run phoenix");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    let file = "environments/shop/environment.yaml";
    let line_of = |needle: &str| {
        yaml.lines()
            .position(|l| l.contains(needle))
            .map(|i| i + 1)
            .unwrap_or_else(|| panic!("{needle} in the yaml"))
    };
    assert!(
        all.contains(&format!("{file}:{}:", line_of("instance: db/3"))),
        "the instance error at its line: {all}"
    );
    assert!(all.contains("group db has 1 instance"), "{all}");
    assert!(
        all.contains(&format!("{file}:{}:", line_of("copyTo: [us-east-1]"))),
        "the copy region error at its line: {all}"
    );
    assert!(
        all.contains("us-east-1 is the environment's own region"),
        "{all}"
    );
}

/// A drill next to the live demo (with a data volume) restores the copy's volume from the live
/// env's snapshot, never touching the live volume, and reports the recovery point; an objective
/// the snapshot's age misses makes it exit 3 naming the volume.
#[test]
fn a_drill_restores_its_own_volume_from_the_live_snapshot_and_reports_the_recovery_point() {
    let bed = bed::Bed::new();
    let repo = bed.demo_repo();
    let path = repo.dir.join("environments/demo/environment.yaml");
    // The demo's data volume web-data (claimed by the app web), with a recovery point objective.
    let yaml = std::fs::read_to_string(&path).expect("demo env");
    let policy = "backup: { every: 1h, keep: 24, copyTo: [us-west-2] }";
    assert!(
        yaml.contains(policy),
        "the demo's volume policy changed: update this test"
    );
    let yaml = yaml.replace(
        policy,
        "backup: { every: 1h, keep: 24, copyTo: [us-west-2], recoveryPointObjective: 1h }",
    );
    std::fs::write(&path, &yaml).expect("write env");
    repo.commit("a recovery point objective on the data volume");
    let dir = &repo.dir;
    let run = |args: &[&str]| bed.phoenix(dir, args);
    let ok = |out: Output| assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    ok(run(&["rebuild", "demo"]));
    // The volume offered as a local PersistentVolume pinned to the server's node, bound by the
    // real controller manager to the app's claim.
    let pv = bed.kubectl("demo", &["get", "pv", "web-data", "-o", "json"]);
    let pv: serde_json::Value = serde_json::from_str(&pv).expect("pv json");
    assert_eq!(pv["spec"]["local"]["path"], "/var/lib/web-data", "{pv:#}");
    assert_eq!(
        pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
            ["values"][0],
        "server-0"
    );
    assert_eq!(pv["status"]["phase"], "Bound", "{pv:#}");
    assert_eq!(
        bed.kubectl(
            "demo",
            &[
                "get",
                "pvc",
                "web-data",
                "-n",
                "web",
                "-o",
                "jsonpath={.status.phase}"
            ]
        ),
        "Bound"
    );
    // The app mounts it: its pods run on the node k3s labelled from the server's user-data
    // (phoenix.dev/instance=server-0), the only node the volume is pinned to.
    let server_node = bed.kubectl(
        "demo",
        &[
            "get",
            "nodes",
            "-l",
            "phoenix.dev/instance=server-0",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
    );
    assert!(
        !server_node.is_empty() && !server_node.contains(' '),
        "exactly one node carries phoenix.dev/instance=server-0: {server_node:?}"
    );
    let pods = bed.kubectl(
        "demo",
        &["get", "pods", "-n", "web", "-l", "app=web", "-o", "json"],
    );
    let pods: serde_json::Value = serde_json::from_str(&pods).expect("pods json");
    let pods = pods["items"].as_array().expect("pod list");
    assert!(!pods.is_empty(), "the web app has no pods");
    for pod in pods {
        assert_eq!(pod["spec"]["nodeName"], server_node.as_str(), "{pod:#}");
        assert_eq!(pod["status"]["phase"], "Running", "{pod:#}");
        assert_eq!(
            pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"], "web-data",
            "{pod:#}"
        );
    }
    ok(run(&["backup", "demo"]));
    let ec2 = bed.ec2_client();
    let live = |env: &str| -> Vec<(String, Option<String>, Vec<String>)> {
        let resp = bed
            .rt
            .block_on(
                ec2.describe_volumes()
                    .filters(filter("tag:phoenix:env", env))
                    .filters(filter("tag-key", "phoenix:volume"))
                    .send(),
            )
            .expect("describe volumes");
        resp.volumes()
            .iter()
            .map(|v| {
                (
                    v.volume_id().unwrap_or_default().to_string(),
                    v.snapshot_id()
                        .filter(|s| !s.is_empty())
                        .map(str::to_string),
                    v.attachments()
                        .iter()
                        .map(|a| format!("{} {:?}", a.instance_id().unwrap_or_default(), a.state()))
                        .collect(),
                )
            })
            .collect()
    };
    let before = live("demo");
    assert_eq!(before.len(), 1, "{before:?}");
    let snapshots = bed
        .rt
        .block_on(
            ec2.describe_snapshots()
                .owner_ids("self")
                .filters(filter("tag:phoenix:env", "demo"))
                .send(),
        )
        .expect("snapshots");
    let snap = snapshots.snapshots()[0].snapshot_id().unwrap().to_string();

    let drill = |args: &[&str]| -> (i32, serde_json::Value, String) {
        let out = run(args);
        let all = text(&out);
        (out.status.code().unwrap_or(-1), last_json(&out), all)
    };
    let (code, doc, all) = drill(&["drill", "demo", "--output", "json"]);
    assert_eq!(code, 0, "{all}");
    let copy = doc["copy"].as_str().expect("copy").to_string();
    let v = &doc["volumes"][0];
    assert_eq!(v["volume"], "web-data", "{doc:#}");
    assert_eq!(
        v["snapshotId"],
        snap.as_str(),
        "restored from the live env's snapshot"
    );
    assert!(
        v["restoreSeconds"].as_f64().is_some_and(|s| s >= 0.0),
        "{doc:#}"
    );
    let rp = v["recoveryPointSeconds"].as_f64().expect("recovery point");
    assert!((0.0..3600.0).contains(&rp), "{rp}");
    assert_eq!(v["recoveryPointObjectiveSeconds"], 3600.0);
    assert!(
        doc["rebuild"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == "cloud/volume/web-data" && n["state"]["outcome"] == "created"),
        "{doc:#}"
    );
    // The live volume is untouched; the copy's is gone, without a final snapshot.
    assert_eq!(live("demo"), before);
    assert!(live(&copy).is_empty(), "{:?}", live(&copy));
    let copy_snaps = bed
        .rt
        .block_on(
            ec2.describe_snapshots()
                .owner_ids("self")
                .filters(filter("tag:phoenix:env", &copy))
                .send(),
        )
        .expect("snapshots");
    assert!(
        copy_snaps.snapshots().is_empty(),
        "no final snapshot of a copy"
    );

    // An objective the snapshot is already older than: converged, over objective, named.
    std::fs::write(
        &path,
        // (without `every`: an hourly schedule cannot meet it, which validation refuses)
        yaml.replace("every: 1h, ", "")
            .replace("recoveryPointObjective: 1h", "recoveryPointObjective: 1s"),
    )
    .expect("write env");
    repo.commit("a one-second recovery point objective");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (code, doc, all) = drill(&["drill", "demo", "--output", "json"]);
    assert_eq!(code, 3, "{all}");
    assert_eq!(doc["verdict"], "over-objective");
    let missed = doc["missedObjectives"].to_string();
    assert!(
        missed.contains("recoveryPointObjective of volume web-data"),
        "{missed}"
    );
    assert!(
        !missed.contains("recoveryObjective:"),
        "the RTO was met: {missed}"
    );
}

/// A proxy in front of moto answering the first `hold` DescribeSnapshots calls with every
/// snapshot `pending` at 42% (moto completes snapshots at once).
fn hold_snapshots(backend: u16, hold: usize) -> RewriteProxy {
    RewriteProxy::start(
        backend,
        hold,
        |_, body| body.contains("Action=DescribeSnapshots"),
        |body| {
            body.replace("<status>completed</status>", "<status>pending</status>")
                .replace("<progress>100%</progress>", "<progress>42%</progress>")
        },
    )
}

#[test]
fn pending_snapshots_are_waited_for_within_the_timeout_and_reported() {
    let bed = Lab::new();
    let yaml = env_yaml("shop", true, 3).replace("copyTo: [us-west-2], ", "");
    let repo = bed.repo("shop", &yaml);
    let dir = &repo.dir;
    ok(&bed.phoenix(dir, &["rebuild", "shop"]));

    // Held pending for good: the backup fails within its timeout, naming what it waited for.
    let forever = hold_snapshots(bed.moto.port, usize::MAX);
    let t = std::time::Instant::now();
    let out = bed.phoenix_via(
        &forever.endpoint(),
        dir,
        &["backup", "shop", "--timeout", "3s", "-v"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        t.elapsed() < std::time::Duration::from_secs(60),
        "{:?}",
        t.elapsed()
    );
    let all = text(&out);
    assert!(
        all.contains("timed out after 3s waiting for snapshot snap-")
            && all.contains("of volume/data in us-east-1 completed")
            && all.contains("(last observed: pending 42%)"),
        "{all}"
    );
    assert!(all.contains("(not completed)"), "{all}");
    assert!(
        all.contains("error: backup/data/prune/us-east-1: not run"),
        "the prune after a failed snapshot is named: {all}"
    );

    // Held for the first few looks: waited for, reported, then completed.
    let briefly = hold_snapshots(bed.moto.port, 3);
    let out = bed.phoenix_via(
        &briefly.endpoint(),
        dir,
        &[
            "backup",
            "shop",
            "--timeout",
            "1m",
            "-v",
            "--output",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("pending 42%"),
        "the wait reported the state it saw: {all}"
    );
    let report = last_json(&out);
    assert!(
        report["volumes"][0]["snapshotId"].as_str().is_some(),
        "{report}"
    );
    assert_eq!(
        report["volumes"][0]["errors"],
        serde_json::json!([]),
        "{report}"
    );

    // A destroy whose final snapshot stays pending fails within the cloud timeout; tried again,
    // it waits for that snapshot instead of taking a second one.
    std::fs::write(
        repo.dir.join("environments/shop/environment.yaml"),
        yaml.replace("spec:\n", "spec:\n  timeouts: { cloud: 4s }\n"),
    )
    .expect("write env");
    repo.commit("a short cloud timeout");
    let out = bed.phoenix_via(&forever.endpoint(), dir, &["destroy", "shop", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("final snapshot"), "{}", text(&out));
    ok(&bed.phoenix(dir, &["destroy", "shop", "--yes"]));
    let finals: Vec<String> = bed
        .owned_snapshots(REGION, "shop")
        .into_iter()
        .filter(|(_, t)| t.get("phoenix:snapshot").map(String::as_str) == Some("final"))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(finals.len(), 1, "one final snapshot: {finals:?}");
    assert!(bed.volumes("shop").is_empty(), "{:?}", bed.volumes("shop"));
}

/// A volume declared with a zone is left unattached for the cluster's EBS CSI driver and offered
/// as a static CSI PersistentVolume whose volumeHandle is the live volume id (filled in at
/// apply, so `diff` is clean); a restore makes a new volume and the PersistentVolume follows it
/// once no claim holds the old one (with a claim holding it the rebuild stops and says what to
/// do); without the driver the volumes add-on waits for it and fails naming it.
#[test]
fn a_volume_in_a_zone_is_a_static_ebs_csi_volume_that_follows_its_restores() {
    let bed = bed::Bed::new();
    let repo = bed.demo_repo();
    let path = repo.dir.join("environments/demo/environment.yaml");
    let demo = std::fs::read_to_string(&path).expect("demo env");
    // The real driver is a chart (aws-ebs-csi-driver); what phoenix looks for is its CSIDriver.
    let with_driver = demo
        .replace(
            "  addons:\n",
            "  addons:\n    - { name: ebs-csi, path: addons/ebs-csi }\n",
        )
        .replace(
            "  apps:\n",
            "  apps:\n    - { name: reports, path: apps/reports, namespace: reports }\n",
        )
        .replace(
            "  volumes:\n",
            "  volumes:\n    - { name: reports, size: 2, zone: us-east-1b, allowEmpty: true, backup: { keep: 3, copyTo: [us-west-2] } }\n",
        );
    assert_ne!(
        with_driver, demo,
        "the demo's layout changed: update this test"
    );
    std::fs::write(&path, &with_driver).expect("write env");
    repo.write(
        "environments/demo/addons/ebs-csi/csidriver.yaml",
        "apiVersion: storage.k8s.io/v1\nkind: CSIDriver\nmetadata: { name: ebs.csi.aws.com }\nspec: { attachRequired: true, podInfoOnMount: false }\n",
    );
    repo.write(
        "environments/demo/apps/reports/claim.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: { name: reports }\n---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: { name: reports, namespace: reports }\nspec:\n  volumeName: reports\n  storageClassName: \"\"\n  accessModes: [ReadWriteOnce]\n  resources: { requests: { storage: 2Gi } }\n",
    );
    repo.commit("a volume for the EBS CSI driver, claimed by the app reports");
    let dir = &repo.dir;
    let run = |args: &[&str]| bed.phoenix(dir, args);
    let ec2 = bed.ec2_client();
    let reports_volumes = || -> Vec<aws_sdk_ec2::types::Volume> {
        bed.rt
            .block_on(
                ec2.describe_volumes()
                    .filters(filter("tag:phoenix:env", "demo"))
                    .filters(filter("tag:phoenix:volume", "reports"))
                    .send(),
            )
            .expect("describe volumes")
            .volumes()
            .iter()
            .filter(|v| v.state().map(|s| s.as_str()) != Some("deleted"))
            .cloned()
            .collect()
    };
    let pv = || -> serde_json::Value {
        serde_json::from_str(&bed.kubectl("demo", &["get", "pv", "reports", "-o", "json"]))
            .expect("pv json")
    };
    let claim_phase = || {
        bed.kubectl(
            "demo",
            &[
                "get",
                "pvc",
                "reports",
                "-n",
                "reports",
                "-o",
                "jsonpath={.status.phase}",
            ],
        )
    };

    ok(&run(&["rebuild", "demo"]));
    let live = reports_volumes();
    assert_eq!(live.len(), 1, "{live:?}");
    let first = live[0].volume_id().unwrap_or_default().to_string();
    assert_eq!(live[0].availability_zone(), Some("us-east-1b"));
    assert!(
        live[0].attachments().is_empty(),
        "phoenix attached it: {live:?}"
    );
    let p = pv();
    assert_eq!(p["spec"]["csi"]["driver"], "ebs.csi.aws.com", "{p:#}");
    assert_eq!(p["spec"]["csi"]["volumeHandle"], first.as_str(), "{p:#}");
    assert_eq!(p["status"]["phase"], "Bound", "{p:#}");
    assert_eq!(claim_phase(), "Bound");
    // The filled-in id is no drift.
    let diff = run(&["diff", "demo"]);
    assert_eq!(diff.status.code(), Some(0), "{}", text(&diff));

    // The volume is lost; its backup is restored as a new volume.
    ok(&run(&["backup", "demo"]));
    bed.rt
        .block_on(ec2.delete_volume().volume_id(&first).send())
        .expect("delete volume");
    let diff = run(&["diff", "demo"]);
    assert_eq!(diff.status.code(), Some(2), "{}", text(&diff));
    // The claim still holds the PersistentVolume of the lost volume: phoenix does not pull it
    // from under the claim, and says what to do.
    let held = run(&["rebuild", "demo"]);
    assert_eq!(held.status.code(), Some(1), "{}", text(&held));
    let all = text(&held);
    assert!(
        all.contains("while claim reports/reports holds it") && all.contains(&first),
        "{all}"
    );
    let restored = reports_volumes();
    assert_eq!(restored.len(), 1, "{restored:?}");
    let second = restored[0].volume_id().unwrap_or_default().to_string();
    assert_ne!(second, first);
    assert!(
        restored[0].snapshot_id().is_some_and(|s| !s.is_empty()),
        "{restored:?}"
    );
    // With the claim gone, the PersistentVolume is replaced and the claim binds it again.
    bed.kubectl(
        "demo",
        &["delete", "pvc", "reports", "-n", "reports", "--wait=true"],
    );
    ok(&run(&["rebuild", "demo"]));
    let p = pv();
    assert_eq!(p["spec"]["csi"]["volumeHandle"], second.as_str(), "{p:#}");
    assert_eq!(p["status"]["phase"], "Bound", "{p:#}");
    assert_eq!(claim_phase(), "Bound");

    // Without the driver the volumes add-on waits for it and fails naming it.
    let no_driver = with_driver
        .replace("    - { name: ebs-csi, path: addons/ebs-csi }\n", "")
        .replace("spec:\n", "spec:\n  timeouts: { addons: 8s }\n");
    std::fs::write(&path, &no_driver).expect("write env");
    repo.commit("the EBS CSI driver removed");
    // (A rebuild would prune it too, but only after the volumes add-on: prunes come last.)
    bed.kubectl("demo", &["delete", "csidriver", "ebs.csi.aws.com"]);
    let out = run(&["rebuild", "demo"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("CSIDriver ebs.csi.aws.com"),
        "{}",
        text(&out)
    );
}
