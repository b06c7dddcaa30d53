//! Kill and resume: `phoenix rebuild demo` on moto + the real control plane is SIGKILLed at 20 points
//! spread over a run (seeded, so a failure reproduces with the same seed: `PHOENIX_KILL_SEED`);
//! after each kill a re-run converges with one copy of every cloud resource, and the next point
//! starts from nothing. After the last: exactly one live copy
//! of every cloud resource and nothing phoenix-owned that Git does not name (through the EC2
//! API, by tags); every Kubernetes object labelled for the env is one Git names (nothing
//! orphaned); the audit trail shows the killed runs as interrupted.

use testkit::bed;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bed::{text, Bed};
use serde_json::Value;

/// A small deterministic generator (xorshift64*), so kill points reproduce from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Every EC2 resource carrying `env`'s tag, listed kind by kind through the EC2 API: resource
/// id (the `phoenix:resource` tag) → AWS ids. Terminated instances are left out.
fn cloud_by_tag(bed: &Bed, env: &str) -> BTreeMap<String, Vec<String>> {
    use aws_sdk_ec2::types::{Filter, Tag};
    let ec2 = bed.ec2_client();
    let owned = || {
        Filter::builder()
            .name("tag:phoenix:env")
            .values(env)
            .build()
    };
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut add = |tags: &[Tag], id: Option<&str>| {
        let resource = tags
            .iter()
            .find(|t| t.key() == Some("phoenix:resource"))
            .and_then(|t| t.value());
        if let (Some(r), Some(id)) = (resource, id) {
            out.entry(r.to_string()).or_default().push(id.to_string());
        }
    };
    let rt = &bed.rt;
    for v in rt
        .block_on(ec2.describe_vpcs().filters(owned()).send())
        .expect("vpcs")
        .vpcs()
    {
        add(v.tags(), v.vpc_id());
    }
    for s in rt
        .block_on(ec2.describe_subnets().filters(owned()).send())
        .expect("subnets")
        .subnets()
    {
        add(s.tags(), s.subnet_id());
    }
    let igws = rt
        .block_on(ec2.describe_internet_gateways().filters(owned()).send())
        .expect("igws");
    for g in igws.internet_gateways() {
        add(g.tags(), g.internet_gateway_id());
    }
    let rtbs = rt
        .block_on(ec2.describe_route_tables().filters(owned()).send())
        .expect("rtbs");
    for r in rtbs.route_tables() {
        add(r.tags(), r.route_table_id());
    }
    let sgs = rt
        .block_on(ec2.describe_security_groups().filters(owned()).send())
        .expect("sgs");
    for g in sgs.security_groups() {
        add(g.tags(), g.group_id());
    }
    let instances = rt
        .block_on(
            ec2.describe_instances()
                .filters(owned())
                .filters(
                    Filter::builder()
                        .name("instance-state-name")
                        .values("pending")
                        .values("running")
                        .values("stopping")
                        .values("stopped")
                        .build(),
                )
                .send(),
        )
        .expect("instances");
    for i in instances.reservations().iter().flat_map(|r| r.instances()) {
        add(i.tags(), i.instance_id());
    }
    out
}

#[test]
fn killed_twenty_times_then_resumed_the_demo_converges_without_leaks() {
    let seed: u64 = std::env::var("PHOENIX_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2026);
    let bed = Bed::new();
    let repo = bed.demo_repo();

    // How long a whole run takes here, to spread the kill points over it. Measured on a
    // throwaway copy of the env name so the real runs start from nothing.
    let started = Instant::now();
    let out = bed.phoenix(
        &repo.dir,
        &["up", "demo", "--ephemeral", "probe", "--ttl", "1h"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let full = started.elapsed();
    let out = bed.phoenix(
        &repo.dir,
        &["destroy", "demo", "--ephemeral", "probe", "--yes"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Kill points as fractions of a whole run. The trial above may have been slower than the
    // runs that follow (a loaded machine, caches warming): a run that ends before its kill point
    // says how long a whole run takes now, and the later points are spread over that.
    let mut rng = Rng(seed | 1);
    let mut fractions: Vec<u64> = (0..20).map(|_| rng.next() % 1000).collect();
    fractions.sort();
    let mut whole = full;
    eprintln!("seed {seed:#x}: a full run takes {full:?}; kill points at {fractions:?} ‰ of a run");
    let mut killed = 0;
    let mut points = Vec::new();
    for (i, fraction) in fractions.iter().enumerate() {
        let at = whole * (*fraction as u32) / 1000;
        points.push(at);
        let mut child = bed
            .command(&repo.dir)
            .args(["rebuild", "demo", "--output", "json"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start rebuild");
        let spawned = Instant::now();
        let mut finished = None;
        while spawned.elapsed() < at {
            if let Some(status) = child.try_wait().expect("poll child") {
                finished = Some((spawned.elapsed(), status));
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        match finished {
            // Only a whole, converged run says how long a run takes.
            Some((took, status)) if status.success() => whole = whole.min(took),
            Some((took, status)) => {
                panic!("rebuild ended after {took:?} with {status} before its kill point {at:?}")
            }
            None => {
                if child.try_wait().expect("poll child").is_none() {
                    child.kill().expect("SIGKILL");
                    killed += 1;
                }
            }
        }
        let _ = child.wait();
        // The re-run picks up whatever the killed run left and converges.
        let out = bed.phoenix(&repo.dir, &["rebuild", "demo"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "re-run after the kill at {at:?} (point {i}, seed {seed:#x}): {}",
            text(&out)
        );
        for (resource, ids) in cloud_by_tag(&bed, "demo") {
            assert_eq!(
                ids.len(),
                1,
                "{resource} duplicated after the kill at {at:?}: {ids:?}"
            );
        }
        // Start the next point from nothing, except for the last: it is checked below.
        if i + 1 < fractions.len() {
            let out = bed.phoenix(&repo.dir, &["destroy", "demo", "--yes"]);
            assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        }
    }
    eprintln!("killed {killed} of 20 runs at {points:?} (a run took {whole:?} at the end)");
    assert!(
        killed >= 15,
        "most kill points fell inside a run: {killed} of 20 (at {points:?})"
    );

    // Cloud: one copy of each resource Git names, nothing else.
    let cloud = cloud_by_tag(&bed, "demo");
    let expected = [
        "vpc",
        "igw",
        "subnet/public-a",
        "subnet/public-b",
        "rtb/public",
        "sg/cluster",
        "instance/server/0",
        "instance/agent/0",
        "instance/agent/1",
    ];
    let names: Vec<&str> = cloud.keys().map(String::as_str).collect();
    assert_eq!(names, {
        let mut e = expected.to_vec();
        e.sort();
        e
    });
    for (resource, ids) in &cloud {
        assert_eq!(ids.len(), 1, "{resource} has duplicates: {ids:?}");
    }
    assert_eq!(bed.nodes("demo").len(), 3, "one node per instance");

    // Kubernetes: every object labelled for demo is one the last diff knows as in Git.
    let diff = bed.phoenix(&repo.dir, &["diff", "demo", "--output", "json"]);
    assert_eq!(
        diff.status.code(),
        Some(0),
        "in sync after resume: {}",
        text(&diff)
    );
    let labelled = bed.kubectl(
        "demo",
        &[
            "get",
            "deployments,configmaps,secrets,services,jobs,namespaces,serviceaccounts",
            "-A",
            "-l",
            "phoenix.dev/env=demo",
            "-o",
            "json",
        ],
    );
    let labelled: Value = serde_json::from_str(&labelled).expect("kubectl json");
    // What Git holds, as `plan --offline` lists it: "Kind/namespace/name" or "Kind/name".
    let plan = bed.phoenix(
        &repo.dir,
        &["plan", "demo", "--offline", "--output", "json"],
    );
    let plan: Value = serde_json::from_slice(&plan.stdout).expect("plan json");
    let in_git: Vec<String> = plan["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter(|c| c["layer"] == "addons" || c["layer"] == "apps")
        .filter_map(|c| c["resource"].as_str().map(str::to_string))
        .collect();
    let items = labelled["items"].as_array().expect("items");
    assert!(
        items.len() >= 8,
        "the demo's objects are labelled: {}",
        items.len()
    );
    for item in items {
        if item["metadata"]["labels"]["phoenix.dev/inventory"].is_string() {
            continue; // phoenix's own record of what it applied
        }
        let kind = item["kind"].as_str().unwrap_or("");
        let name = item["metadata"]["name"].as_str().unwrap_or("");
        let id = match item["metadata"]["namespace"].as_str() {
            Some(ns) => format!("{kind}/{ns}/{name}"),
            None => format!("{kind}/{name}"),
        };
        assert!(
            in_git.contains(&id),
            "orphaned object {id}; Git has {in_git:?}"
        );
    }

    // The audit trail shows the killed runs.
    let history = bed.phoenix(
        &repo.dir,
        &["history", "demo", "--limit", "50", "--output", "json"],
    );
    let history = String::from_utf8_lossy(&history.stdout).into_owned();
    let interrupted = history.matches("\"interrupted\"").count();
    assert!(
        interrupted >= killed / 2,
        "{interrupted} interrupted runs recorded for {killed} kills:\n{history}"
    );
}
