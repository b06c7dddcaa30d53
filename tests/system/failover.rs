//! Region failover end to end through the real binary on moto (issue 17), with the fault proxy
//! in front: moto serves every region on one endpoint, and the proxy drops every request signed
//! for the primary region, which is then unreachable as in a regional outage. A rebuild in the
//! primary region, a backup that copies the snapshot to the failover region, then
//! `rebuild --failover` builds the env in the failover region (zones and image from its own
//! region) from the copied snapshot without one request reaching the primary; failing back is
//! the command without the switch; `plan`/`diff`/`destroy --failover` touch only the failover
//! region; a newer snapshot is copied on the spot while the primary answers; `drill --failover`
//! reports RTO and RPO and changes nothing in the primary, `list` finds a kept failover copy while
//! the primary is dark and `gc` removes it there; `validate` points at file:line.

use testkit::bed;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use testkit::fault_proxy::{Fault, FaultProxy};
use testkit::git::{Repo, Sandbox};
use testkit::moto::Moto;

const PRIMARY: &str = "us-east-1";
const FAILOVER: &str = "us-west-2";
const IMAGE: &str = "al2023-ami-2023*-kernel-6.1-x86_64";

fn env_yaml(name: &str) -> String {
    format!(
        r#"apiVersion: phoenix/v1
kind: Environment
metadata: {{ name: {name} }}
spec:
  recoveryObjective: 5m
  cloud:
    region: {PRIMARY}
    network:
      cidr: 10.60.0.0/16
      subnets: [{{ name: a, cidr: 10.60.1.0/24, zone: us-east-1b, public: true }}]
    instances:
      - {{ name: db, role: none, count: 1, type: t3.medium, image: {{ owner: amazon, name: "{IMAGE}" }}, subnet: a, userData: cloud-init/data.yaml.j2 }}
  volumes:
    - name: data
      size: 4
      instance: db/0
      mountPath: /srv/data
      allowEmpty: true
      backup: {{ keep: 5, copyTo: [{FAILOVER}], recoveryPointObjective: 1h }}
  failover:
    region: {FAILOVER}
    zones: {{ a: us-west-2c }}
    cidr: 10.61.0.0/16
    subnetCidrs: {{ a: 10.61.1.0/24 }}
"#
    )
}

struct Lab {
    moto: Moto,
    proxy: FaultProxy,
    git: Sandbox,
    rt: tokio::runtime::Runtime,
}

impl Lab {
    fn new() -> Lab {
        let moto = Moto::start();
        let proxy = FaultProxy::start(moto.port);
        Lab {
            moto,
            proxy,
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
        repo.commit("an env with a failover region");
        repo
    }

    /// Runs phoenix against the proxy (so the primary region can be taken out).
    fn phoenix(&self, dir: &Path, args: &[&str]) -> Output {
        bed::hermetic(&self.git, dir)
            .env("AWS_ENDPOINT_URL", self.proxy.endpoint())
            .args(args)
            .output()
            .expect("run phoenix")
    }

    /// A client straight to moto (never through the proxy): what the tests check with.
    fn ec2(&self, region: &str) -> aws_sdk_ec2::Client {
        self.rt
            .block_on(testkit::ec2::sdk_client_in(&self.moto.endpoint(), region))
    }

    /// The env's running instances in `region`: (id, zone, image, tags).
    fn instances(&self, region: &str, env: &str) -> Vec<(String, String, String, Tags)> {
        let resp = self
            .rt
            .block_on(
                self.ec2(region)
                    .describe_instances()
                    .filters(filter("tag:phoenix:env", env))
                    .filters(filter("instance-state-name", "running"))
                    .send(),
            )
            .expect("describe instances");
        resp.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .map(|i| {
                (
                    i.instance_id().unwrap_or_default().to_string(),
                    i.placement()
                        .and_then(|p| p.availability_zone())
                        .unwrap_or_default()
                        .to_string(),
                    i.image_id().unwrap_or_default().to_string(),
                    tags(i.tags()),
                )
            })
            .collect()
    }

    /// The env's data volumes in `region`: (id, zone, tags).
    fn volumes(&self, region: &str, env: &str) -> Vec<(String, String, Tags)> {
        let resp = self
            .rt
            .block_on(
                self.ec2(region)
                    .describe_volumes()
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
                    v.availability_zone().unwrap_or_default().to_string(),
                    tags(v.tags()),
                )
            })
            .collect()
    }

    /// The env's snapshots in `region`: (id, tags).
    fn snapshots(&self, region: &str, env: &str) -> Vec<(String, Tags)> {
        let resp = self
            .rt
            .block_on(
                self.ec2(region)
                    .describe_snapshots()
                    .owner_ids("self")
                    .filters(filter("tag:phoenix:env", env))
                    .send(),
            )
            .expect("describe snapshots");
        resp.snapshots()
            .iter()
            .map(|s| {
                (
                    s.snapshot_id().unwrap_or_default().to_string(),
                    tags(s.tags()),
                )
            })
            .collect()
    }

    /// The images the env's lookup selects in `region`.
    fn lookup(&self, region: &str) -> Vec<String> {
        let resp = self
            .rt
            .block_on(
                self.ec2(region)
                    .describe_images()
                    .owners("amazon")
                    .filters(filter("name", IMAGE))
                    .send(),
            )
            .expect("describe images");
        resp.images()
            .iter()
            .filter_map(|i| i.image_id().map(str::to_string))
            .collect()
    }

    /// The (action) of every request the proxy saw for `region` from `from` on.
    fn actions_in(&self, region: &str, from: usize) -> Vec<String> {
        self.proxy.region_log()[from..]
            .iter()
            .filter(|(r, _, _)| r == region)
            .map(|(_, a, _)| a.clone())
            .collect()
    }

    fn seen(&self) -> usize {
        self.proxy.region_log().len()
    }
}

type Tags = BTreeMap<String, String>;

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

fn tags(t: &[Tag]) -> Tags {
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

fn ok(out: &Output) {
    assert_eq!(out.status.code(), Some(0), "{}", text(out));
}

fn last_json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is JSON ({e}):\n{last}"))
}

/// Requests that change something: any action but Describe*/Get*.
fn mutations(actions: &[String]) -> Vec<&String> {
    actions
        .iter()
        .filter(|a| !a.starts_with("Describe") && !a.starts_with("Get"))
        .collect()
}

#[test]
fn failover_builds_the_env_in_the_failover_region_from_the_copied_snapshot_and_fails_back() {
    let lab = Lab::new();
    let repo = lab.repo("shop", &env_yaml("shop"));
    let dir = &repo.dir;

    // The primary: built, then backed up (a snapshot here, its copy in the failover region).
    ok(&lab.phoenix(dir, &["rebuild", "shop"]));
    let primary = lab.instances(PRIMARY, "shop");
    assert_eq!(primary.len(), 1, "{primary:?}");
    let primary_volumes = lab.volumes(PRIMARY, "shop");
    assert_eq!(primary_volumes.len(), 1, "{primary_volumes:?}");
    ok(&lab.phoenix(dir, &["backup", "shop"]));
    let copies = lab.snapshots(FAILOVER, "shop");
    assert_eq!(copies.len(), 1, "the backup's copy: {copies:?}");
    let copy = copies[0].0.clone();
    assert_eq!(copies[0].1["phoenix:snapshot"], "copy");

    // The primary region goes dark: every request signed for it is dropped unanswered.
    lab.proxy.always_in_region(Fault::Drop, PRIMARY);
    let from = lab.seen();
    let started = std::time::Instant::now();
    let out = lab.phoenix(dir, &["rebuild", "shop", "--failover"]);
    ok(&out);
    let took = started.elapsed();
    let all = text(&out);
    eprintln!("rebuild --failover:\n{all}");
    assert!(
        all.contains(&format!(
            "failover: shop in {FAILOVER} (spec.failover) instead of {PRIMARY}"
        )),
        "{all}"
    );
    assert!(
        all.contains(&format!("{PRIMARY} does not answer")) && all.contains(&copy),
        "says the primary is out and which copy it restores: {all}"
    );
    // Nothing got through to the primary; the failover region did the work.
    let to_primary = lab.proxy.region_log()[from..]
        .iter()
        .filter(|(r, _, _)| r == PRIMARY)
        .filter(|(_, _, f)| f.is_none())
        .count();
    assert_eq!(to_primary, 0, "no request reached {PRIMARY}");
    assert!(!lab.actions_in(PRIMARY, from).is_empty(), "it tried");

    // The same env in the failover region: its zone, its blocks, the image the same lookup
    // selects there, a region tag, and the volume restored from the copied snapshot.
    let moved = lab.instances(FAILOVER, "shop");
    assert_eq!(moved.len(), 1, "{moved:?}");
    let (_, zone, image, itags) = &moved[0];
    assert_eq!(zone, "us-west-2c");
    assert!(
        lab.lookup(FAILOVER).contains(image),
        "image {image} is one the lookup selects in {FAILOVER}"
    );
    assert_eq!(itags["phoenix:region"], FAILOVER, "{itags:?}");
    let subnets = lab
        .rt
        .block_on(
            lab.ec2(FAILOVER)
                .describe_subnets()
                .filters(filter("tag:phoenix:env", "shop"))
                .send(),
        )
        .expect("subnets");
    let cidrs: Vec<&str> = subnets
        .subnets()
        .iter()
        .filter_map(|s| s.cidr_block())
        .collect();
    assert_eq!(cidrs, ["10.61.1.0/24"]);
    let vols = lab.volumes(FAILOVER, "shop");
    assert_eq!(vols.len(), 1, "{vols:?}");
    assert_eq!(vols[0].1, "us-west-2c");
    assert_eq!(
        vols[0].2["phoenix:restored-from"], copy,
        "restored from the copy: {vols:?}"
    );
    // The primary's resources are as they were.
    assert_eq!(lab.instances(PRIMARY, "shop").len(), 1);
    assert_eq!(lab.instances(PRIMARY, "shop")[0].0, primary[0].0);
    assert_eq!(lab.volumes(PRIMARY, "shop")[0].0, primary_volumes[0].0);

    // plan and diff --failover read only the failover region, and find it converged.
    let from = lab.seen();
    let out = lab.phoenix(dir, &["plan", "shop", "--failover", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "nothing to do: {}", text(&out));
    let out = lab.phoenix(dir, &["diff", "shop", "--failover"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "in sync, the copy is the volume's fresh recovery point: {}",
        text(&out)
    );
    eprintln!("diff --failover:\n{}", text(&out));
    assert!(
        lab.actions_in(PRIMARY, from).is_empty(),
        "plan/diff --failover sent nothing to {PRIMARY}"
    );

    // history says which region each run used.
    let out = lab.phoenix(dir, &["history", "shop", "--output", "json"]);
    ok(&out);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("history json");
    let runs: Vec<(String, String)> = doc["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| {
            (
                r["command"].as_str().unwrap_or_default().to_string(),
                r["region"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(
        runs.contains(&("rebuild".into(), FAILOVER.into()))
            && runs.contains(&("rebuild".into(), PRIMARY.into())),
        "{runs:?}"
    );
    let out = lab.phoenix(dir, &["history", "shop"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("REGION") && listing.contains(FAILOVER),
        "{listing}"
    );

    // Fail back: the primary answers again and the same command without the switch converges
    // it (nothing to change there).
    lab.proxy.pass();
    let from = lab.seen();
    ok(&lab.phoenix(dir, &["rebuild", "shop"]));
    assert!(
        lab.actions_in(FAILOVER, from).is_empty(),
        "a primary run leaves {FAILOVER} alone"
    );
    assert_eq!(lab.instances(PRIMARY, "shop")[0].0, primary[0].0);

    // The data written during the failover goes home: a backup in the failover region copies
    // to the primary (in place of the failover region in copyTo); the primary's stale volume is
    // destroyed and the rebuild restores it from that copy.
    let out = lab.phoenix(dir, &["backup", "shop", "--failover", "--output", "json"]);
    ok(&out);
    let report = last_json(&out);
    let taken = report["volumes"][0]["snapshotId"]
        .as_str()
        .unwrap_or_else(|| panic!("a snapshot: {report:#}"))
        .to_string();
    assert_eq!(
        report["volumes"][0]["copies"][0]["region"], PRIMARY,
        "{report:#}"
    );
    let home: Vec<(String, Tags)> = lab
        .snapshots(PRIMARY, "shop")
        .into_iter()
        .filter(|(_, t)| t.get("phoenix:source-snapshot") == Some(&format!("{FAILOVER}/{taken}")))
        .collect();
    assert_eq!(home.len(), 1, "the failover backup's copy in {PRIMARY}");
    let from = lab.seen();
    ok(&lab.phoenix(dir, &["destroy", "shop", "--yes", "--skip-final-snapshot"]));
    ok(&lab.phoenix(dir, &["rebuild", "shop"]));
    assert!(
        mutations(&lab.actions_in(FAILOVER, from)).is_empty(),
        "destroy and rebuild in {PRIMARY} change nothing in {FAILOVER}"
    );
    let back = lab.volumes(PRIMARY, "shop");
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!(
        back[0].2["phoenix:restored-from"], home[0].0,
        "the primary's volume comes from the failover region's data: {back:?}"
    );
    let primary = lab.instances(PRIMARY, "shop");
    assert_eq!(primary.len(), 1);

    // destroy --failover then removes only the failover copy.
    let from = lab.seen();
    ok(&lab.phoenix(
        dir,
        &[
            "destroy",
            "shop",
            "--failover",
            "--yes",
            "--skip-final-snapshot",
        ],
    ));
    assert!(lab.instances(FAILOVER, "shop").is_empty());
    assert!(lab.volumes(FAILOVER, "shop").is_empty());
    assert!(
        lab.actions_in(PRIMARY, from).is_empty(),
        "destroy --failover sent nothing to {PRIMARY}"
    );
    assert_eq!(lab.instances(PRIMARY, "shop"), primary);
    assert_eq!(lab.volumes(PRIMARY, "shop"), back);
    eprintln!("rebuild --failover with the primary dark took {took:?}");
}

#[test]
fn a_newer_snapshot_is_copied_on_the_spot_while_the_primary_answers() {
    let lab = Lab::new();
    let repo = lab.repo("shop", &env_yaml("shop"));
    let dir = &repo.dir;
    ok(&lab.phoenix(dir, &["rebuild", "shop"]));
    ok(&lab.phoenix(dir, &["backup", "shop"]));
    let old_copy = lab.snapshots(FAILOVER, "shop")[0].0.clone();
    // A newer snapshot in the primary whose copy never happened (the backup was cut short).
    let volume = lab.volumes(PRIMARY, "shop")[0].0.clone();
    let newer_time = humantime::format_rfc3339_millis(
        std::time::SystemTime::now() + std::time::Duration::from_secs(5),
    )
    .to_string();
    let mut spec = TagSpecification::builder().resource_type(ResourceType::Snapshot);
    for (k, v) in [
        ("phoenix:env", "shop"),
        ("phoenix:resource", "snapshot/data"),
        ("phoenix:volume", "data"),
        ("phoenix:snapshot", "backup"),
        ("phoenix:time", newer_time.as_str()),
    ] {
        spec = spec.tags(Tag::builder().key(k).value(v).build());
    }
    let newer = lab
        .rt
        .block_on(
            lab.ec2(PRIMARY)
                .create_snapshot()
                .volume_id(&volume)
                .tag_specifications(spec.build())
                .send(),
        )
        .expect("snapshot")
        .snapshot_id()
        .unwrap()
        .to_string();

    let out = lab.phoenix(dir, &["rebuild", "shop", "--failover", "-v"]);
    ok(&out);
    let all = text(&out);
    assert!(all.contains("answers with a newer snapshot"), "{all}");
    let copies = lab.snapshots(FAILOVER, "shop");
    let fresh: Vec<&(String, Tags)> = copies
        .iter()
        .filter(|(_, t)| t.get("phoenix:source-snapshot") == Some(&format!("{PRIMARY}/{newer}")))
        .collect();
    assert_eq!(fresh.len(), 1, "one copy of {newer}: {copies:?}");
    assert_eq!(fresh[0].1["phoenix:time"], newer_time);
    let vols = lab.volumes(FAILOVER, "shop");
    assert_eq!(vols.len(), 1, "{vols:?}");
    assert_eq!(
        vols[0].2["phoenix:restored-from"], fresh[0].0,
        "restored from the fresh copy, not {old_copy}"
    );
    // A second failover run finds the newest snapshot already there: no second copy.
    ok(&lab.phoenix(dir, &["rebuild", "shop", "--failover"]));
    assert_eq!(lab.snapshots(FAILOVER, "shop").len(), copies.len());
}

#[test]
fn a_failover_drill_reports_rto_and_rpo_and_leaves_the_primary_alone() {
    let lab = Lab::new();
    let repo = lab.repo("shop", &env_yaml("shop"));
    let dir = &repo.dir;
    ok(&lab.phoenix(dir, &["rebuild", "shop"]));
    ok(&lab.phoenix(dir, &["backup", "shop"]));
    let copy = lab.snapshots(FAILOVER, "shop")[0].0.clone();
    let before = (lab.instances(PRIMARY, "shop"), lab.volumes(PRIMARY, "shop"));
    let reports = lab.git.home().join("drill-reports");

    let from = lab.seen();
    let out = lab.phoenix(
        dir,
        &[
            "drill",
            "shop",
            "--failover",
            "--output",
            "json",
            "--report-dir",
            reports.to_str().expect("utf-8"),
        ],
    );
    ok(&out);
    let doc = last_json(&out);
    assert_eq!(doc["verdict"], "passed", "{doc:#}");
    assert_eq!(doc["region"], FAILOVER, "{doc:#}");
    assert!(doc["recoverySeconds"].as_f64().is_some(), "RTO: {doc:#}");
    assert_eq!(doc["recoveryObjectiveSeconds"].as_f64(), Some(300.0));
    let v = &doc["volumes"][0];
    assert_eq!(
        v["snapshotId"],
        copy.as_str(),
        "restored from the copy: {doc:#}"
    );
    assert!(v["recoveryPointSeconds"].as_f64().is_some(), "RPO: {doc:#}");
    let md = std::fs::read_dir(&reports)
        .expect("reports")
        .filter_map(|e| e.ok())
        .find(|e| e.path().extension().is_some_and(|x| x == "md"))
        .map(|e| std::fs::read_to_string(e.path()).expect("markdown"))
        .expect("a markdown report");
    assert!(md.contains(&format!("- Region: {FAILOVER}")), "{md}");

    // In the primary only reads happened (the snapshot comparison), and nothing changed there.
    let primary_actions = lab.actions_in(PRIMARY, from);
    assert!(
        mutations(&primary_actions).is_empty(),
        "{primary_actions:?}"
    );
    assert_eq!(
        (lab.instances(PRIMARY, "shop"), lab.volumes(PRIMARY, "shop")),
        before
    );
    // The copy is gone from the failover region; only the backup's copy stays there.
    assert!(lab
        .instances(FAILOVER, "shop")
        .iter()
        .all(|(_, _, _, t)| t.get("phoenix:copy").is_none()));
    let left: Vec<_> = lab
        .rt
        .block_on(
            lab.ec2(FAILOVER)
                .describe_instances()
                .filters(filter("tag:phoenix:base-env", "shop"))
                .filters(filter("instance-state-name", "running"))
                .send(),
        )
        .expect("instances")
        .reservations()
        .to_vec();
    assert!(left.is_empty(), "the drill copy is torn down: {left:?}");

    // A failover copy kept past its expiry: `list` finds it in the failover region even while
    // the primary is dark (naming the region it could not search, exit 1), and `gc` tears it
    // down there.
    ok(&lab.phoenix(
        dir,
        &["drill", "shop", "--failover", "--keep", "--ttl", "1s"],
    ));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    lab.proxy.always_in_region(Fault::Drop, PRIMARY);
    let out = lab.phoenix(dir, &["list"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    let row = listing
        .lines()
        .find(|l| l.starts_with("shop-drill-"))
        .unwrap_or_else(|| panic!("the kept copy is listed: {}", text(&out)));
    assert!(row.ends_with(FAILOVER) && row.contains("drill"), "{row}");
    assert!(
        text(&out).contains(&format!("cannot list the copies in {PRIMARY}")),
        "{}",
        text(&out)
    );
    lab.proxy.pass();
    ok(&lab.phoenix(dir, &["gc"]));
    let left = lab
        .rt
        .block_on(
            lab.ec2(FAILOVER)
                .describe_instances()
                .filters(filter("tag:phoenix:base-env", "shop"))
                .filters(filter("instance-state-name", "running"))
                .send(),
        )
        .expect("instances")
        .reservations()
        .len();
    assert_eq!(left, 0, "gc removed the copy from {FAILOVER}");
    let out = lab.phoenix(dir, &["list"]);
    ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no drill or ephemeral copies found"),
        "{}",
        text(&out)
    );
    assert_eq!(
        (lab.instances(PRIMARY, "shop"), lab.volumes(PRIMARY, "shop")),
        before
    );

    // The generated runbook carries the failover commands.
    let out = lab.phoenix(dir, &["runbook", "shop"]);
    ok(&out);
    let runbook = String::from_utf8_lossy(&out.stdout);
    assert!(
        runbook.contains(&format!("## If {PRIMARY} is out"))
            && runbook.contains("phoenix rebuild shop --failover --ref"),
        "{runbook}"
    );
}

#[test]
fn failover_mistakes_are_diagnostics_with_file_and_line() {
    let lab = Lab::new();
    let yaml = env_yaml("shop")
        .replace("region: us-west-2\n", "region: us-east-1\n")
        .replace(
            "zones: { a: us-west-2c }",
            "zones: { a: us-west-2c, b: us-east-1a }",
        )
        .replace("copyTo: [us-west-2]", "copyTo: [eu-west-1]");
    let repo = lab.repo("shop", &yaml);
    let out = lab.phoenix(&repo.dir, &["validate", "shop"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    let file = "environments/shop/environment.yaml";
    for (line, what) in [
        (
            19,
            "volume data is not copied to the failover region us-east-1",
        ),
        (
            21,
            "the failover region us-east-1 is the environment's own region",
        ),
        (
            22,
            "zone \"us-west-2c\" is not in the failover region us-east-1",
        ),
        (22, "failover zone for subnet \"b\", which does not exist"),
    ] {
        assert!(
            all.lines()
                .any(|l| l.starts_with(&format!("{file}:{line}:")) && l.contains(what)),
            "{what:?} at {file}:{line} in:\n{all}"
        );
    }
    // Without the section, --failover says what is missing.
    let plain = env_yaml("bare");
    let plain = &plain[..plain.find("  failover:").expect("section")];
    let repo2 = lab.git.repo("bare");
    repo2.write("environments/bare/environment.yaml", plain);
    repo2.write(
        "templates/cloud-init/data.yaml.j2",
        "#cloud-config\nruncmd: [\"true\"]\n",
    );
    repo2.commit("no failover section");
    let out = lab.phoenix(&repo2.dir, &["plan", "bare", "--failover"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("declares no failover region (spec.failover)"),
        "{}",
        text(&out)
    );
}

/// The names users reach follow the failover: with EC2 in the primary region dark (Route 53,
/// whose control plane is in us-east-1, still answering), `rebuild --failover` builds the env in
/// the failover region and its cutover points the record at the new instance's address, under
/// the same ownership mark; `diff --failover` then finds the record in sync.
#[test]
fn the_cutover_of_a_failover_points_the_names_at_the_failover_region() {
    let lab = Lab::new();
    let zone_id = lab.rt.block_on(testkit::route53::create_zone(
        &lab.moto.endpoint(),
        "shop.example",
    ));
    let yaml = format!(
        "{}  dns:\n    zone: shop.example\n    records:\n      - {{ name: www, target: group/db }}\n",
        env_yaml("shop")
    );
    let repo = lab.repo("shop", &yaml);
    let dir = &repo.dir;
    let r53 = lab
        .rt
        .block_on(testkit::route53::client(&lab.moto.endpoint()));
    let www = || -> Vec<String> {
        let out = lab
            .rt
            .block_on(
                r53.list_resource_record_sets()
                    .hosted_zone_id(&zone_id)
                    .send(),
            )
            .expect("list records");
        out.resource_record_sets()
            .iter()
            .filter(|r| r.name() == "www.shop.example." && r.r#type().as_str() == "A")
            .flat_map(|r| r.resource_records())
            .map(|v| v.value().to_string())
            .collect()
    };
    let public_ip = |region: &str| -> String {
        let resp = lab
            .rt
            .block_on(
                lab.ec2(region)
                    .describe_instances()
                    .filters(filter("tag:phoenix:env", "shop"))
                    .filters(filter("instance-state-name", "running"))
                    .send(),
            )
            .expect("describe instances");
        let ips: Vec<String> = resp
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter_map(|i| i.public_ip_address().map(str::to_string))
            .collect();
        assert_eq!(ips.len(), 1, "one instance in {region}: {ips:?}");
        ips[0].clone()
    };

    ok(&lab.phoenix(dir, &["rebuild", "shop"]));
    let primary_ip = public_ip(PRIMARY);
    assert_eq!(www(), std::slice::from_ref(&primary_ip));
    ok(&lab.phoenix(dir, &["backup", "shop"]));

    lab.proxy.always_in_region_for(Fault::Drop, PRIMARY, "ec2");
    let from = lab.seen();
    let out = lab.phoenix(dir, &["rebuild", "shop", "--failover"]);
    ok(&out);
    let failover_ip = public_ip(FAILOVER);
    assert_ne!(failover_ip, primary_ip);
    assert_eq!(www(), std::slice::from_ref(&failover_ip), "{}", text(&out));
    assert!(
        text(&out).contains("dns step"),
        "the run summary times the cutover: {}",
        text(&out)
    );
    // EC2 in the primary was never reached; Route 53 was (it is signed for us-east-1).
    let log = lab.proxy.region_log();
    let reached: Vec<&(String, String, Option<Fault>)> = log[from..]
        .iter()
        .filter(|(r, _, f)| r == PRIMARY && f.is_none())
        .collect();
    assert!(
        reached.iter().all(|(_, action, _)| action.is_empty()),
        "only Route 53 (REST, no EC2 Action) reached {PRIMARY}: {reached:?}"
    );
    let diff = lab.phoenix(dir, &["diff", "shop", "--failover"]);
    assert_eq!(diff.status.code(), Some(0), "{}", text(&diff));

    // With all of us-east-1 dark, Route 53's control plane too, the env still converges in the
    // failover region and the run fails at the cutover, saying so. (A short apps timeout: the
    // cutover keeps trying until it ends, as Route 53 may come back.)
    std::fs::write(
        repo.dir.join("environments/shop/environment.yaml"),
        yaml.replace("spec:\n", "spec:\n  timeouts: { apps: 6s }\n"),
    )
    .expect("write env");
    repo.commit("a short apps timeout");
    lab.proxy.always_in_region(Fault::Drop, PRIMARY);
    let out = lab.phoenix(dir, &["rebuild", "shop", "--failover"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("cloud     converged") && all.contains("✗ dns/www/A"),
        "{all}"
    );
    assert!(
        all.contains("Route 53 changes go through its control plane in us-east-1"),
        "{all}"
    );
    assert_eq!(www(), [failover_ip], "the record is left as it was");
}
