//! The DNS cutover end to end through the real binary on moto (issue 17): a rebuild points the
//! record at the instances' public addresses with its TXT ownership mark, and waits for the
//! change to be INSYNC (a proxy holds it PENDING); a record phoenix does not own stops the
//! cutover until `--take-over-dns`, which the audit trail records; diff reports a record changed
//! by hand, a missing one and an unowned one; destroy removes only owned records; a drill and an
//! ephemeral copy write under their own names (the drill reports the DNS step's time); the demo
//! on the real control plane is cut over after its apps; validation points at file:line. All
//! checked through the Route 53 and EC2 APIs, not phoenix's word.

use testkit::bed::{self, text};
use testkit::rewrite_proxy::RewriteProxy;

use std::path::Path;
use std::process::Output;

use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};
use testkit::git::{Repo, Sandbox};
use testkit::moto::Moto;

const REGION: &str = "us-east-1";
const AMI: &str = "ami-03c3da4cfa8e8943a";
const ZONE: &str = "demo.example";

fn env_yaml(name: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: phoenix/v1
kind: Environment
metadata: {{ name: {name} }}
spec:
  timeouts: {{ apps: 20s }}
  cloud:
    region: {REGION}
    network:
      cidr: 10.60.0.0/16
      subnets: [{{ name: a, cidr: 10.60.1.0/24, zone: us-east-1a, public: true }}]
    instances:
      - {{ name: edge, role: none, count: 2, type: t3.micro, image: {{ id: {AMI} }}, subnet: a, userData: cloud-init/edge.yaml.j2 }}
  dns:
    zone: {ZONE}
    records:
      - {{ name: www, ttl: 30, target: group/edge }}
{extra}"#
    )
}

struct Lab {
    moto: Moto,
    git: Sandbox,
    rt: tokio::runtime::Runtime,
    zone: String,
}

impl Lab {
    /// moto with the organisation's hosted zone already there (phoenix never creates one).
    fn new() -> Lab {
        let moto = Moto::start();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let zone = rt.block_on(testkit::route53::create_zone(&moto.endpoint(), ZONE));
        Lab {
            moto,
            git: Sandbox::new(),
            rt,
            zone,
        }
    }

    fn repo(&self, name: &str, yaml: &str) -> Repo<'_> {
        let repo = self.git.repo("envs");
        repo.write(&format!("environments/{name}/environment.yaml"), yaml);
        repo.write(
            "templates/cloud-init/edge.yaml.j2",
            "#cloud-config\nruncmd: [\"true\"]\n",
        );
        repo.commit("an env with a DNS record");
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

    fn r53(&self) -> aws_sdk_route53::Client {
        self.rt
            .block_on(testkit::route53::client(&self.moto.endpoint()))
    }

    /// Every record set of the zone as (name, type, sorted values).
    fn records(&self) -> Vec<(String, String, Vec<String>)> {
        let out = self
            .rt
            .block_on(
                self.r53()
                    .list_resource_record_sets()
                    .hosted_zone_id(&self.zone)
                    .send(),
            )
            .expect("list the records");
        out.resource_record_sets()
            .iter()
            .map(|s| {
                let mut values: Vec<String> = s
                    .resource_records()
                    .iter()
                    .map(|r| r.value().to_string())
                    .collect();
                values.sort();
                (
                    s.name().to_string(),
                    s.r#type().as_str().to_string(),
                    values,
                )
            })
            .collect()
    }

    fn record(&self, name: &str, kind: &str) -> Option<Vec<String>> {
        self.records()
            .into_iter()
            .find(|(n, t, _)| n == name && t == kind)
            .map(|(_, _, v)| v)
    }

    /// Changes a record behind phoenix's back (TTL 300).
    fn change(&self, action: ChangeAction, name: &str, kind: &str, values: &[&str]) {
        self.change_ttl(action, name, kind, 300, values)
    }

    /// A change with this TTL (a DELETE names the record's exact TTL and values).
    fn change_ttl(&self, action: ChangeAction, name: &str, kind: &str, ttl: i64, values: &[&str]) {
        let mut set = ResourceRecordSet::builder()
            .name(name)
            .r#type(RrType::from(kind))
            .ttl(ttl);
        for v in values {
            set = set.resource_records(ResourceRecord::builder().value(*v).build().unwrap());
        }
        let batch = ChangeBatch::builder()
            .changes(
                Change::builder()
                    .action(action)
                    .resource_record_set(set.build().unwrap())
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        self.rt
            .block_on(
                self.r53()
                    .change_resource_record_sets()
                    .hosted_zone_id(&self.zone)
                    .change_batch(batch)
                    .send(),
            )
            .expect("change a record by hand");
    }

    /// The public addresses of the env's running instances, sorted.
    fn addresses(&self, env: &str) -> Vec<String> {
        use aws_config::{BehaviorVersion, Region};
        use aws_sdk_ec2::types::Filter;
        let config = self.rt.block_on(
            aws_config::defaults(BehaviorVersion::latest())
                .region(Region::new(REGION))
                .endpoint_url(self.moto.endpoint())
                .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                    "test", "test", None, None, "tests",
                ))
                .load(),
        );
        let out = self
            .rt
            .block_on(
                aws_sdk_ec2::Client::new(&config)
                    .describe_instances()
                    .filters(
                        Filter::builder()
                            .name("tag:phoenix:env")
                            .values(env)
                            .build(),
                    )
                    .filters(
                        Filter::builder()
                            .name("instance-state-name")
                            .values("running")
                            .build(),
                    )
                    .send(),
            )
            .expect("describe instances");
        let mut ips: Vec<String> = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter_map(|i| i.public_ip_address().map(str::to_string))
            .collect();
        ips.sort();
        ips
    }
}

fn ok(out: &Output) {
    assert_eq!(out.status.code(), Some(0), "{}", text(out));
}

fn owner_mark(values: &[String], env: &str) -> bool {
    values
        .iter()
        .any(|v| v.contains("heritage=phoenix") && v.contains(&format!("phoenix:env={env},")))
}

#[test]
fn a_rebuild_points_the_record_at_the_instances_marks_it_and_a_second_one_changes_nothing() {
    let lab = Lab::new();
    let repo = lab.repo("web", &env_yaml("web", ""));
    let out = lab.phoenix(&repo.dir, &["rebuild", "web"]);
    ok(&out);
    let ips = lab.addresses("web");
    assert_eq!(ips.len(), 2, "two instances with public addresses: {ips:?}");
    assert_eq!(lab.record("www.demo.example.", "A"), Some(ips.clone()));
    let mark = lab
        .record("_phoenix-a.www.demo.example.", "TXT")
        .expect("the ownership mark");
    assert!(owner_mark(&mark, "web"), "{mark:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("dns step"), "{stderr}");

    // Nothing moved: the record is left as it is, and diff is clean.
    let out = lab.phoenix(&repo.dir, &["--output", "json", "rebuild", "web"]);
    ok(&out);
    let report = bed::report(&out);
    assert_eq!(
        bed::node_outcome(&report, "dns/www/A")["state"]["outcome"],
        "unchanged",
        "{report}"
    );
    assert!(report["dnsSeconds"].as_f64().is_some(), "{report}");
    ok(&lab.phoenix(&repo.dir, &["diff", "web"]));
}

#[test]
fn diff_reports_a_record_changed_by_hand_a_missing_one_and_an_unowned_one() {
    let lab = Lab::new();
    let extra =
        "      - { name: api, target: group/edge }\n      - { name: shop, target: group/edge }\n";
    let repo = lab.repo("web", &env_yaml("web", extra));
    ok(&lab.phoenix(&repo.dir, &["rebuild", "web"]));
    ok(&lab.phoenix(&repo.dir, &["diff", "web"]));

    // www pointed elsewhere, api deleted (with its mark), shop replaced by someone else's record.
    lab.change(
        ChangeAction::Upsert,
        "www.demo.example.",
        "A",
        &["203.0.113.9"],
    );
    let api = lab.record("api.demo.example.", "A").unwrap();
    let api: Vec<&str> = api.iter().map(String::as_str).collect();
    lab.change_ttl(ChangeAction::Delete, "api.demo.example.", "A", 60, &api);
    let mark = lab.record("_phoenix-a.shop.demo.example.", "TXT").unwrap();
    let mark: Vec<&str> = mark.iter().map(String::as_str).collect();
    lab.change_ttl(
        ChangeAction::Delete,
        "_phoenix-a.shop.demo.example.",
        "TXT",
        60,
        &mark,
    );

    let out = lab.phoenix(&repo.dir, &["--output", "json", "diff", "web"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let doc: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).expect("drift JSON");
    let apps = doc["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["layer"] == "apps")
        .expect("the apps layer")
        .clone();
    assert_eq!(apps["status"], "drift", "{apps}");
    let entry = |id: &str| {
        apps["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["resource"] == id)
            .unwrap_or_else(|| panic!("no entry {id} in {apps}"))
            .clone()
    };
    let www = entry("dns/www/A");
    assert_eq!(www["kind"], "changed", "{www}");
    assert!(www.to_string().contains("203.0.113.9"), "{www}");
    assert_eq!(entry("dns/api/A")["kind"], "missing");
    let shop = entry("dns/shop/A");
    assert!(
        shop.to_string()
            .contains("without phoenix's ownership record"),
        "{shop}"
    );
    let human = lab.phoenix(&repo.dir, &["diff", "web"]);
    assert_eq!(human.status.code(), Some(2), "{}", text(&human));
    assert!(text(&human).contains("dns/www/A"), "{}", text(&human));
}

#[test]
fn an_unowned_record_stops_the_cutover_until_taken_over_and_the_audit_trail_says_so() {
    let lab = Lab::new();
    lab.change(
        ChangeAction::Create,
        "www.demo.example.",
        "A",
        &["203.0.113.5"],
    );
    let repo = lab.repo("web", &env_yaml("web", ""));
    let out = lab.phoenix(&repo.dir, &["rebuild", "web"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("www.demo.example. exists")
            && all.contains("without phoenix's ownership record _phoenix-a.www.demo.example.")
            && all.contains("--take-over-dns"),
        "{all}"
    );
    assert_eq!(
        lab.record("www.demo.example.", "A"),
        Some(vec!["203.0.113.5".to_string()]),
        "the record is left alone"
    );
    assert_eq!(lab.record("_phoenix-a.www.demo.example.", "TXT"), None);

    let out = lab.phoenix(&repo.dir, &["rebuild", "web", "--take-over-dns"]);
    ok(&out);
    assert!(
        text(&out).contains("took over DNS record"),
        "{}",
        text(&out)
    );
    assert_eq!(
        lab.record("www.demo.example.", "A"),
        Some(lab.addresses("web"))
    );
    assert!(owner_mark(
        &lab.record("_phoenix-a.www.demo.example.", "TXT").unwrap(),
        "web"
    ));

    let history = lab.phoenix(&repo.dir, &["--output", "json", "history", "web"]);
    ok(&history);
    let doc: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&history.stdout).trim()).expect("JSON");
    let audited: Vec<String> = doc["runs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["nodes"].as_array().cloned().unwrap_or_default())
        .filter(|n| n["id"] == "dns/www/A")
        .flat_map(|n| n["audit"].as_array().cloned().unwrap_or_default())
        .map(|a| a.as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(audited.len(), 1, "{doc}");
    assert!(
        audited[0].contains("took over DNS record www.demo.example. A")
            && audited[0].contains("203.0.113.5"),
        "{audited:?}"
    );
    let human = lab.phoenix(&repo.dir, &["history", "web"]);
    assert!(
        text(&human).contains("took over DNS record"),
        "{}",
        text(&human)
    );
}

#[test]
fn destroy_removes_only_the_records_the_env_owns() {
    let lab = Lab::new();
    let repo = lab.repo("web", &env_yaml("web", ""));
    ok(&lab.phoenix(&repo.dir, &["rebuild", "web"]));
    // Someone's record, and one another env owns.
    lab.change(
        ChangeAction::Create,
        "mail.demo.example.",
        "A",
        &["203.0.113.25"],
    );
    lab.change(
        ChangeAction::Create,
        "shop.demo.example.",
        "A",
        &["203.0.113.26"],
    );
    lab.change(
        ChangeAction::Create,
        "_phoenix-a.shop.demo.example.",
        "TXT",
        &["\"heritage=phoenix,phoenix:env=shop,phoenix:resource=dns/shop/A,phoenix:commit=0\""],
    );
    ok(&lab.phoenix(&repo.dir, &["destroy", "web", "--yes"]));
    let left: Vec<String> = lab
        .records()
        .into_iter()
        .map(|(n, t, _)| format!("{n} {t}"))
        .collect();
    assert!(
        !left.iter().any(|r| r.contains("www.demo.example.")),
        "{left:?}"
    );
    for kept in [
        "mail.demo.example. A",
        "shop.demo.example. A",
        "_phoenix-a.shop.demo.example. TXT",
    ] {
        assert!(left.iter().any(|r| r == kept), "{kept} was kept: {left:?}");
    }
}

#[test]
fn a_drill_writes_under_its_own_names_leaves_the_live_ones_alone_and_times_the_dns_step() {
    let lab = Lab::new();
    let repo = lab.repo("web", &env_yaml("web", ""));
    ok(&lab.phoenix(&repo.dir, &["rebuild", "web"]));
    let before = lab.records();
    let reports = lab.git.home().join("drill-reports");
    let out = lab.phoenix(
        &repo.dir,
        &["drill", "web", "--report-dir", reports.to_str().unwrap()],
    );
    ok(&out);
    let json = std::fs::read_to_string(reports.join("last.json")).expect("drill report");
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    let dns = doc["dnsSeconds"].as_f64().expect("dnsSeconds");
    assert!(dns > 0.0, "{doc}");
    let copy = doc["copy"].as_str().unwrap().to_string();
    let suffix = copy.strip_prefix("web-").unwrap();
    // The copy's record was written under its own name and pointed at the copy's instances...
    let node = doc["rebuild"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "dns/www/A")
        .expect("the copy's DNS node")
        .clone();
    assert_eq!(node["state"]["outcome"], "created", "{node}");
    // ... verified clean, then torn down: the zone is as the live env left it.
    assert_eq!(lab.records(), before, "the drill left the zone as it was");
    assert!(
        !lab.records().iter().any(|(n, _, _)| n.contains(suffix)),
        "the copy's records are gone"
    );
    let md = std::fs::read_dir(&reports)
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.path().extension().is_some_and(|x| x == "md"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .expect("the Markdown report");
    assert!(md.contains("- DNS cutover "), "{md}");
}

#[test]
fn an_ephemeral_copy_has_records_of_its_own_and_its_destroy_removes_only_them() {
    let lab = Lab::new();
    let repo = lab.repo("web", &env_yaml("web", ""));
    ok(&lab.phoenix(&repo.dir, &["rebuild", "web"]));
    let live = lab.record("www.demo.example.", "A").unwrap();
    ok(&lab.phoenix(
        &repo.dir,
        &["up", "web", "--ephemeral", "pr-7", "--ttl", "1h"],
    ));
    assert_eq!(
        lab.record("pr-7.www.demo.example.", "A"),
        Some(lab.addresses("web-pr-7")),
        "the copy's record points at the copy's instances"
    );
    assert!(owner_mark(
        &lab.record("_phoenix-a.pr-7.www.demo.example.", "TXT")
            .unwrap(),
        "web-pr-7"
    ));
    assert_eq!(lab.record("www.demo.example.", "A"), Some(live.clone()));
    ok(&lab.phoenix(
        &repo.dir,
        &["destroy", "web", "--ephemeral", "pr-7", "--yes"],
    ));
    assert_eq!(lab.record("pr-7.www.demo.example.", "A"), None);
    assert_eq!(lab.record("_phoenix-a.pr-7.www.demo.example.", "TXT"), None);
    assert_eq!(lab.record("www.demo.example.", "A"), Some(live));
    assert!(owner_mark(
        &lab.record("_phoenix-a.www.demo.example.", "TXT").unwrap(),
        "web"
    ));
}

#[test]
fn the_cutover_waits_until_route53_reports_the_change_in_sync() {
    let lab = Lab::new();
    let repo = lab.repo("web", &env_yaml("web", ""));
    // Three status reads answer PENDING (moto is INSYNC at once), then the real answer.
    let proxy = hold_pending(lab.moto.port, 3);
    let out = lab.phoenix_via(
        &proxy.endpoint(),
        &repo.dir,
        &["--output", "json", "rebuild", "web"],
    );
    ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("INSYNC") && stdout.contains("PENDING"),
        "the wait is reported: {stdout}"
    );
    let report = bed::report(&out);
    let node = bed::node_outcome(&report, "dns/www/A");
    assert!(
        node["durationSeconds"].as_f64().unwrap() >= 2.0,
        "three polls a second apart: {node}"
    );
    assert!(proxy.matched() >= 3);

    // Held for good: the run fails within the apps timeout (20 s), naming what it waited for.
    lab.change(
        ChangeAction::Upsert,
        "_phoenix-a.www.demo.example.",
        "TXT",
        &["\"heritage=phoenix,phoenix:env=web,phoenix:resource=dns/www/A,phoenix:commit=0\""],
    );
    lab.change(
        ChangeAction::Upsert,
        "www.demo.example.",
        "A",
        &["203.0.113.7"],
    );
    let forever = hold_pending(lab.moto.port, usize::MAX);
    let t = std::time::Instant::now();
    let out = lab.phoenix_via(&forever.endpoint(), &repo.dir, &["rebuild", "web"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(t.elapsed() < std::time::Duration::from_secs(45));
    let all = text(&out);
    assert!(
        all.contains("timed out after 20s waiting for Route 53 change")
            && all.contains("INSYNC (last observed: PENDING)"),
        "{all}"
    );
}

#[test]
fn the_demo_is_cut_over_after_its_apps_converged_to_every_node_of_its_cluster() {
    let bed = bed::Bed::new();
    let repo = bed.demo_repo();
    let out = bed.phoenix(&repo.dir, &["rebuild", "demo", "--output", "json"]);
    ok(&out);
    let report = bed::report(&out);
    let dns = bed::node_outcome(&report, "dns/www/A");
    assert_eq!(dns["state"]["outcome"], "created", "{dns}");
    let start = dns["startSeconds"].as_f64().unwrap();
    for app in ["apps/web", "apps/worker"] {
        let n = bed::node_outcome(&report, app);
        let end = n["startSeconds"].as_f64().unwrap() + n["durationSeconds"].as_f64().unwrap();
        assert!(
            end <= start,
            "{app} ended ({end}) before the cutover started ({start})"
        );
    }
    // The ingress answers on every node: the server and both agents.
    let r53 = bed
        .rt
        .block_on(testkit::route53::client(&bed.moto.endpoint()));
    let zone = bed
        .rt
        .block_on(r53.list_hosted_zones_by_name().dns_name(ZONE).send())
        .unwrap()
        .hosted_zones()[0]
        .id()
        .to_string();
    let sets = bed
        .rt
        .block_on(r53.list_resource_record_sets().hosted_zone_id(&zone).send())
        .unwrap();
    let mut values: Vec<String> = sets
        .resource_record_sets()
        .iter()
        .find(|s| s.name() == "www.demo.example." && s.r#type().as_str() == "A")
        .expect("www.demo.example. A")
        .resource_records()
        .iter()
        .map(|r| r.value().to_string())
        .collect();
    values.sort();
    let instances = bed
        .rt
        .block_on(
            bed.ec2_client()
                .describe_instances()
                .filters(
                    aws_sdk_ec2::types::Filter::builder()
                        .name("tag:phoenix:env")
                        .values("demo")
                        .build(),
                )
                .send(),
        )
        .unwrap();
    let mut ips: Vec<String> = instances
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.public_ip_address().map(str::to_string))
        .collect();
    ips.sort();
    assert_eq!(ips.len(), 3, "{ips:?}");
    assert_eq!(values, ips);
}

#[test]
fn a_zone_is_found_by_its_id_and_a_missing_one_is_named_not_created() {
    let lab = Lab::new();
    let by_id = env_with_zone("web", &lab.zone);
    let repo = lab.repo("web", &by_id);
    ok(&lab.phoenix(&repo.dir, &["rebuild", "web"]));
    assert_eq!(
        lab.record("www.demo.example.", "A"),
        Some(lab.addresses("web"))
    );

    repo.write(
        "environments/other/environment.yaml",
        env_with_zone("other", "nothere.example"),
    );
    repo.commit("an env naming a zone that does not exist");
    let out = lab.phoenix(&repo.dir, &["rebuild", "other"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no hosted zone is named nothere.example"),
        "{}",
        text(&out)
    );
    let zones = lab
        .rt
        .block_on(lab.r53().list_hosted_zones().send())
        .unwrap();
    assert_eq!(zones.hosted_zones().len(), 1, "no zone was created");
}

fn env_with_zone(name: &str, zone: &str) -> String {
    env_yaml(name, "").replace(&format!("zone: {ZONE}"), &format!("zone: {zone}"))
}

#[test]
fn validate_points_at_the_line_of_a_bad_record() {
    let lab = Lab::new();
    let yaml = env_yaml(
        "web",
        "      - { name: api, type: AAAA, target: group/nope }\n",
    );
    let repo = lab.repo("web", &yaml);
    let out = lab.phoenix(&repo.dir, &["validate", "web"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("environments/web/environment.yaml:17")
            && all.contains("phoenix does not write \"AAAA\" records"),
        "{all}"
    );
}

/// A proxy in front of moto answering the first `hold` GetChange calls with the change PENDING
/// (moto reports INSYNC at once).
fn hold_pending(backend: u16, hold: usize) -> RewriteProxy {
    RewriteProxy::start(
        backend,
        hold,
        |head, _| head.starts_with("GET ") && head.contains("/change/"),
        |body| body.replace("INSYNC", "PENDING"),
    )
}
