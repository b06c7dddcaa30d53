//! The cloud layer against moto server (started per test on 127.0.0.1), through the engine:
//! create, no-op re-run, in-place updates, replacement, pruning, foreign resources, destroy,
//! SIGKILL at several points, and faults injected by a loopback proxy.

use testkit::{fault_proxy, moto};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use fault_proxy::{Fault, FaultProxy};
use moto::Moto;
use phoenix::engine::{
    self, CancelToken, EngineOptions, Graph, NodeOutcome, NodeState, Policy, RunSummary,
};
use phoenix::env::model::*;
use phoenix::providers::aws::{
    self, AwsOptions, ChangeAction, ConvergeOptions, DesiredCloud, DesiredInputs, Ec2, KeyMaterial,
};
use phoenix::report::events::EventSink;

const REGION: &str = "us-east-1";
/// Two AMIs moto 5.2.5 ships (Amazon Linux 2023 kernel 6.1 and 6.18, x86_64); scripts/setup pins moto.
const AMI_1: &str = "ami-03c3da4cfa8e8943a";
const AMI_2: &str = "ami-0d27e0fb3bac4d724";
const ENV: &str = "demo";

fn cidr(s: &str) -> phoenix::env::cidr::Cidr {
    s.parse().expect("test cidr")
}

fn subnet(name: &str, c: &str, public: bool) -> Subnet {
    Subnet {
        name: name.into(),
        cidr: cidr(c),
        zone: "us-east-1a".into(),
        public,
        pos: Default::default(),
    }
}

fn rule(port: u16, peer: Peer) -> Rule {
    Rule {
        protocol: Protocol::Tcp,
        ports: Some((port, port)),
        peer,
        description: Some(format!("port {port}")),
    }
}

fn group(name: &str, role: Role, count: u32, subnet: &str, image: Image) -> InstanceGroup {
    InstanceGroup {
        name: name.into(),
        role,
        count,
        instance_type: "t3.medium".into(),
        image,
        subnet: subnet.into(),
        security_groups: vec!["cluster".into()],
        root_volume_gib: Some(30),
        instance_profile: None,
        user_data: None,
        tags: BTreeMap::from([("team".to_string(), "platform".to_string())]),
        pos: Default::default(),
    }
}

/// A small environment: VPC, a public and a private subnet, two security groups referencing
/// each other, a key pair, a server and two agents.
fn model() -> Cloud {
    Cloud {
        provider: "aws".into(),
        region: REGION.into(),
        network: Network {
            cidr: cidr("10.40.0.0/16"),
            subnets: vec![
                subnet("public-a", "10.40.1.0/24", true),
                subnet("private-a", "10.40.2.0/24", false),
            ],
        },
        security_groups: vec![
            SecurityGroup {
                name: "cluster".into(),
                description: "k3s cluster".into(),
                ingress: vec![
                    rule(6443, Peer::Cidr(cidr("0.0.0.0/0"))),
                    rule(10250, Peer::Group("admin".into())),
                ],
                egress: None,
                pos: Default::default(),
            },
            SecurityGroup {
                name: "admin".into(),
                description: "admin access".into(),
                ingress: vec![rule(22, Peer::Group("cluster".into()))],
                egress: None,
                pos: Default::default(),
            },
        ],
        key_pair: Some(KeyPair {
            name: "admin".into(),
            public_key: None,
        }),
        instances: vec![
            group(
                "server",
                Role::Server,
                1,
                "public-a",
                Image::Lookup {
                    owner: "amazon".into(),
                    name: "al2023-ami-2023*-kernel-6.1-x86_64".into(),
                    architecture: "x86_64".into(),
                    update: ImageUpdate::Pinned,
                },
            ),
            group(
                "agent",
                Role::Agent,
                2,
                "private-a",
                Image::Id(AMI_1.into()),
            ),
        ],
        allow_stop_modify_start: false,
    }
}

/// A fixed public key (no state dir needed in most tests).
fn key() -> KeyMaterial {
    KeyMaterial {
        public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb6k5V1cJ4r7H3Zc1h0TQk6kq0x2mQv1u3m8Jx9YkqS phoenix-test".into(),
    }
}

fn desired_for(cloud: &Cloud, env: &str, commit: &str) -> Arc<DesiredCloud> {
    Arc::new(aws::desired(cloud, env, &inputs_for(commit)))
}

/// What [`desired_for`] uses: fixed user-data and key; the k3s API at the server's public address.
fn inputs_for(commit: &str) -> DesiredInputs {
    DesiredInputs {
        commit: commit.into(),
        user_data: BTreeMap::from([
            ("server".to_string(), "#!/bin/sh\necho server\n".to_string()),
            ("agent".to_string(), "#!/bin/sh\necho agent\n".to_string()),
        ]),
        key: Some(key()),
        extra_tags: BTreeMap::new(),
        late_user_data: BTreeMap::new(),
        server_endpoint_public: true,
        after: BTreeMap::new(),
    }
}

fn fast_opts() -> AwsOptions {
    AwsOptions {
        connect_timeout: Duration::from_secs(2),
        attempt_timeout: Duration::from_secs(5),
        operation_timeout: Duration::from_secs(15),
        max_attempts: 3,
        profile: None,
        endpoint_url: None,
    }
}

fn converge_opts() -> ConvergeOptions {
    ConvergeOptions {
        node_timeout: Duration::from_secs(60),
        instance_ready_timeout: Duration::from_secs(30),
        instance_stop_timeout: Duration::from_secs(30),
        poll_interval: Duration::from_millis(100),
    }
}

async fn client(endpoint: &str, opts: &AwsOptions) -> Ec2 {
    testkit::ec2::client_with(endpoint, opts).await
}

async fn run_nodes(nodes: Vec<(engine::NodeSpec, Arc<dyn engine::Action>)>) -> RunSummary {
    let mut graph = Graph::new();
    for (spec, action) in nodes {
        graph.add(spec, action).expect("unique node ids");
    }
    let opts = EngineOptions {
        concurrency: 8,
        backoff: Policy::fast_for_tests(),
        run_timeout: Some(Duration::from_secs(240)),
        ..EngineOptions::default()
    };
    engine::run(graph, opts, EventSink::new(), CancelToken::new()).await
}

async fn converge(ec2: &Ec2, desired: &Arc<DesiredCloud>) -> RunSummary {
    converge_with(ec2, desired, &converge_opts()).await
}

async fn converge_with(
    ec2: &Ec2,
    desired: &Arc<DesiredCloud>,
    opts: &ConvergeOptions,
) -> RunSummary {
    let live = aws::observe(ec2, &desired.env_name).await.expect("observe");
    run_nodes(aws::converge_nodes(
        ec2.clone(),
        Arc::clone(desired),
        &live,
        opts,
    ))
    .await
}

async fn destroy(ec2: &Ec2, env: &str) -> RunSummary {
    let live = aws::observe(ec2, env).await.expect("observe");
    run_nodes(aws::destroy_nodes(
        ec2.clone(),
        env,
        &live,
        &converge_opts(),
    ))
    .await
}

fn failures(summary: &RunSummary) -> String {
    summary
        .nodes
        .iter()
        .filter(|n| !n.state.is_success())
        .map(|n| {
            format!(
                "{}: {} {}",
                n.id,
                n.state.label(),
                n.state.detail().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_converged(summary: &RunSummary) {
    assert!(
        summary.converged,
        "run did not converge:\n{}",
        failures(summary)
    );
}

fn outcomes(summary: &RunSummary) -> BTreeMap<String, NodeOutcome> {
    summary
        .nodes
        .iter()
        .filter_map(|n| match &n.state {
            NodeState::Succeeded { outcome } => Some((n.id.clone(), *outcome)),
            _ => None,
        })
        .collect()
}

fn env_filter(env: &str) -> Filter {
    Filter::builder()
        .name("tag:phoenix:env")
        .values(env)
        .build()
}

/// Resources tagged for `env`, counted by kind straight through the EC2 API (instances that are
/// not terminated), with each resource's `phoenix:resource` tag.
async fn tagged(ec2: &Ec2, env: &str) -> BTreeMap<&'static str, Vec<String>> {
    let c = ec2.client();
    let res = |tags: &[Tag]| {
        tags.iter()
            .find(|t| t.key() == Some("phoenix:resource"))
            .and_then(|t| t.value())
            .unwrap_or("<untagged>")
            .to_string()
    };
    let mut out: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let vpcs = c
        .describe_vpcs()
        .filters(env_filter(env))
        .send()
        .await
        .expect("vpcs");
    out.insert("vpc", vpcs.vpcs().iter().map(|v| res(v.tags())).collect());
    let s = c
        .describe_subnets()
        .filters(env_filter(env))
        .send()
        .await
        .expect("subnets");
    out.insert(
        "subnet",
        s.subnets().iter().map(|v| res(v.tags())).collect(),
    );
    let g = c
        .describe_internet_gateways()
        .filters(env_filter(env))
        .send()
        .await
        .expect("igw");
    out.insert(
        "igw",
        g.internet_gateways()
            .iter()
            .map(|v| res(v.tags()))
            .collect(),
    );
    let r = c
        .describe_route_tables()
        .filters(env_filter(env))
        .send()
        .await
        .expect("rtb");
    out.insert(
        "rtb",
        r.route_tables().iter().map(|v| res(v.tags())).collect(),
    );
    let sg = c
        .describe_security_groups()
        .filters(env_filter(env))
        .send()
        .await
        .expect("sg");
    out.insert(
        "sg",
        sg.security_groups().iter().map(|v| res(v.tags())).collect(),
    );
    let k = c
        .describe_key_pairs()
        .filters(env_filter(env))
        .send()
        .await
        .expect("keys");
    out.insert("key", k.key_pairs().iter().map(|v| res(v.tags())).collect());
    let i = c
        .describe_instances()
        .filters(env_filter(env))
        .send()
        .await
        .expect("instances");
    let mut instances = Vec::new();
    for r in i.reservations() {
        for inst in r.instances() {
            let state = inst
                .state()
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_string());
            if state.as_deref() != Some("terminated") {
                instances.push(res(inst.tags()));
            }
        }
    }
    out.insert("instance", instances);
    for v in out.values_mut() {
        v.sort();
    }
    out
}

fn expected_full() -> BTreeMap<&'static str, Vec<String>> {
    let v = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    BTreeMap::from([
        ("vpc", v(&["vpc"])),
        ("subnet", v(&["subnet/private-a", "subnet/public-a"])),
        ("igw", v(&["igw"])),
        ("rtb", v(&["rtb/public"])),
        ("sg", v(&["sg/admin", "sg/cluster"])),
        ("key", v(&["key/admin"])),
        (
            "instance",
            v(&["instance/agent/0", "instance/agent/1", "instance/server/0"]),
        ),
    ])
}

fn no_duplicates(found: &BTreeMap<&'static str, Vec<String>>) {
    for (kind, ids) in found {
        let unique: BTreeSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "duplicate {kind}: {ids:?}");
    }
}

async fn instance_ids(ec2: &Ec2, env: &str) -> BTreeMap<String, String> {
    let live = aws::observe(ec2, env).await.expect("observe");
    live.resources
        .iter()
        .filter(|(id, _)| id.starts_with("instance/"))
        .flat_map(|(id, copies)| copies.iter().map(move |c| (id.clone(), c.aws_id.clone())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_create_tags_everything_and_second_run_is_a_no_op() {
    let moto = Moto::start();
    let ec2 = client(&moto.endpoint(), &fast_opts()).await;
    let desired = desired_for(&model(), ENV, "c1");

    let plan = aws::plan_live(&ec2, &desired).await.expect("plan");
    assert_eq!(
        plan.count(ChangeAction::Create),
        desired.resources.len(),
        "{plan}"
    );

    let first = converge(&ec2, &desired).await;
    assert_converged(&first);
    assert!(outcomes(&first).values().all(|o| *o == NodeOutcome::Created
        || *o == NodeOutcome::Unchanged
        || *o == NodeOutcome::Updated));
    assert_eq!(tagged(&ec2, ENV).await, expected_full());

    // Everything inside the VPC that phoenix made carries the ownership tags.
    let c = ec2.client();
    let live = aws::observe(&ec2, ENV).await.expect("observe");
    let vpc_id = live.get("vpc")[0].aws_id.clone();
    let in_vpc = Filter::builder().name("vpc-id").values(&vpc_id).build();
    let subnets = c
        .describe_subnets()
        .filters(in_vpc.clone())
        .send()
        .await
        .expect("subnets");
    assert_eq!(subnets.subnets().len(), 2);
    for s in subnets.subnets() {
        assert!(s
            .tags()
            .iter()
            .any(|t| t.key() == Some("phoenix:commit") && t.value() == Some("c1")));
    }
    let server = c
        .describe_instances()
        .filters(env_filter(ENV))
        .filters(
            Filter::builder()
                .name("tag:phoenix:role")
                .values("server")
                .build(),
        )
        .send()
        .await
        .expect("server");
    let inst = &server.reservations()[0].instances()[0];
    let tag = |k: &str| {
        inst.tags()
            .iter()
            .find(|t| t.key() == Some(k))
            .and_then(|t| t.value())
            .map(str::to_string)
    };
    assert_eq!(tag("Name").as_deref(), Some("demo-server-0"));
    assert_eq!(tag("phoenix:group").as_deref(), Some("server"));
    assert_eq!(tag("team").as_deref(), Some("platform"));
    assert_eq!(tag("phoenix:user-data-sha256").map(|s| s.len()), Some(64));
    assert_eq!(inst.key_name(), Some("demo-admin"));
    assert!(
        inst.public_ip_address().is_some(),
        "public subnet instance has a public IP"
    );
    // The lookup picked the newest kernel-6.1 AL2023 image moto ships.
    assert_eq!(inst.image_id(), Some(AMI_1));

    // Second run: the plan is all unchanged and the converge changes nothing.
    let plan = aws::plan_live(&ec2, &desired).await.expect("plan");
    assert!(!plan.has_changes(), "second plan:\n{plan}");
    let again = converge(&ec2, &desired_for(&model(), ENV, "c2")).await;
    assert_converged(&again);
    let changed: Vec<_> = outcomes(&again)
        .into_iter()
        .filter(|(_, o)| *o != NodeOutcome::Unchanged)
        .collect();
    assert!(changed.is_empty(), "second run changed: {changed:?}");
    assert_eq!(tagged(&ec2, ENV).await, expected_full());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_rule_updates_the_group_in_place() {
    let moto = Moto::start();
    let ec2 = client(&moto.endpoint(), &fast_opts()).await;
    assert_converged(&converge(&ec2, &desired_for(&model(), ENV, "c1")).await);
    let before = aws::observe(&ec2, ENV).await.expect("observe");
    let sg_id = before.get("sg/cluster")[0].aws_id.clone();

    let mut changed = model();
    changed.security_groups[0].ingress[0] = rule(443, Peer::Cidr(cidr("0.0.0.0/0")));
    let desired = desired_for(&changed, ENV, "c2");
    let plan = aws::plan_live(&ec2, &desired).await.expect("plan");
    let sg = plan.get("sg/cluster").expect("sg in plan");
    assert_eq!(sg.action, ChangeAction::Update);
    assert_eq!(
        sg.to_string(),
        "~   update sg/cluster: ingress +tcp/443 from 0.0.0.0/0, ingress -tcp/6443 from 0.0.0.0/0"
    );
    assert_eq!(plan.count(ChangeAction::Update), 1, "{plan}");

    let run = converge(&ec2, &desired).await;
    assert_converged(&run);
    assert_eq!(
        outcomes(&run).get("cloud/sg/cluster/rules"),
        Some(&NodeOutcome::Updated)
    );
    let after = aws::observe(&ec2, ENV).await.expect("observe");
    assert_eq!(after.get("sg/cluster")[0].aws_id, sg_id, "same group");
    assert!(!aws::plan_live(&ec2, &desired)
        .await
        .expect("plan")
        .has_changes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_image_replaces_the_instance() {
    let moto = Moto::start();
    let ec2 = client(&moto.endpoint(), &fast_opts()).await;
    assert_converged(&converge(&ec2, &desired_for(&model(), ENV, "c1")).await);
    let before = instance_ids(&ec2, ENV).await;

    let mut changed = model();
    changed.instances[1].image = Image::Id(AMI_2.into());
    let desired = desired_for(&changed, ENV, "c2");
    let plan = aws::plan_live(&ec2, &desired).await.expect("plan");
    let agent = plan.get("instance/agent/0").expect("agent");
    assert_eq!(agent.action, ChangeAction::Replace);
    assert_eq!(
        agent.to_string(),
        format!("-/+ replace instance/agent/0: image {AMI_1} → {AMI_2}")
    );
    assert_eq!(
        plan.get("instance/server/0").map(|c| c.action),
        Some(ChangeAction::Unchanged)
    );

    let run = converge(&ec2, &desired).await;
    assert_converged(&run);
    assert_eq!(
        outcomes(&run).get("cloud/instance/agent/0"),
        Some(&NodeOutcome::Replaced)
    );
    let after = instance_ids(&ec2, ENV).await;
    assert_eq!(after.len(), 3, "{after:?}");
    assert_ne!(after["instance/agent/0"], before["instance/agent/0"]);
    assert_eq!(after["instance/server/0"], before["instance/server/0"]);
    assert!(!aws::plan_live(&ec2, &desired)
        .await
        .expect("plan")
        .has_changes());
    no_duplicates(&tagged(&ec2, ENV).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_subnet_and_instances_are_deleted() {
    let moto = Moto::start();
    let ec2 = client(&moto.endpoint(), &fast_opts()).await;
    assert_converged(&converge(&ec2, &desired_for(&model(), ENV, "c1")).await);

    let mut smaller = model();
    smaller.network.subnets.retain(|s| s.name != "private-a");
    smaller.instances.retain(|g| g.name != "agent");
    smaller.security_groups.retain(|g| g.name == "cluster");
    smaller.security_groups[0].ingress.truncate(1);
    let desired = desired_for(&smaller, ENV, "c2");
    let plan = aws::plan_live(&ec2, &desired).await.expect("plan");
    let deletes: Vec<&str> = plan
        .changes
        .iter()
        .filter(|c| c.action == ChangeAction::Delete)
        .map(|c| c.resource.as_str())
        .collect();
    assert_eq!(
        deletes,
        [
            "instance/agent/0",
            "instance/agent/1",
            "subnet/private-a",
            "sg/admin"
        ],
        "{plan}"
    );

    let run = converge(&ec2, &desired).await;
    assert_converged(&run);
    let found = tagged(&ec2, ENV).await;
    assert_eq!(found["subnet"], ["subnet/public-a"]);
    assert_eq!(found["instance"], ["instance/server/0"]);
    assert_eq!(found["sg"], ["sg/cluster"]);
    let plan = aws::plan_live(&ec2, &desired).await.expect("plan");
    assert!(!plan.has_changes(), "{plan}");
}

async fn create_foreign(ec2: &Ec2, vpc_id: &str) -> (String, String, String) {
    let c = ec2.client();
    let s = c
        .create_subnet()
        .vpc_id(vpc_id)
        .cidr_block("10.40.200.0/24")
        .availability_zone("us-east-1b")
        .send()
        .await
        .expect("foreign subnet");
    let g = c
        .create_security_group()
        .vpc_id(vpc_id)
        .group_name("hand-made")
        .description("made by hand")
        .send()
        .await
        .expect("foreign group");
    let other = c
        .create_vpc()
        .cidr_block("10.99.0.0/16")
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Vpc)
                .tags(Tag::builder().key("Name").value("not-phoenix").build())
                .build(),
        )
        .send()
        .await
        .expect("foreign vpc");
    (
        s.subnet()
            .and_then(|s| s.subnet_id())
            .expect("subnet id")
            .to_string(),
        g.group_id().expect("group id").to_string(),
        other
            .vpc()
            .and_then(|v| v.vpc_id())
            .expect("vpc id")
            .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_resources_are_never_touched() {
    let moto = Moto::start();
    let ec2 = client(&moto.endpoint(), &fast_opts()).await;
    let desired = desired_for(&model(), ENV, "c1");
    assert_converged(&converge(&ec2, &desired).await);
    let vpc_id = aws::observe(&ec2, ENV).await.expect("observe").get("vpc")[0]
        .aws_id
        .clone();
    let (subnet, group, other_vpc) = create_foreign(&ec2, &vpc_id).await;

    // A converge neither sees nor changes them.
    assert!(!aws::plan_live(&ec2, &desired)
        .await
        .expect("plan")
        .has_changes());
    assert_converged(&converge(&ec2, &desired).await);

    // Destroy removes phoenix's resources but refuses the VPC, naming what is in the way.
    let run = destroy(&ec2, ENV).await;
    assert!(!run.converged);
    let vpc_node = run.node("cloud/delete/vpc").expect("vpc node");
    let error = vpc_node.state.detail().unwrap_or_default().to_string();
    assert!(error.contains(&format!("subnet {subnet}")), "{error}");
    assert!(
        error.contains(&format!("security group {group}")),
        "{error}"
    );
    assert!(!error.contains(&other_vpc), "{error}");
    assert!(
        matches!(
            vpc_node.state,
            NodeState::Failed {
                timed_out: false,
                ..
            }
        ),
        "refused at once: {:?}",
        vpc_node.state
    );

    let c = ec2.client();
    assert_eq!(
        c.describe_subnets()
            .subnet_ids(&subnet)
            .send()
            .await
            .expect("subnet")
            .subnets()
            .len(),
        1
    );
    assert_eq!(
        c.describe_security_groups()
            .group_ids(&group)
            .send()
            .await
            .expect("sg")
            .security_groups()
            .len(),
        1
    );
    assert_eq!(
        c.describe_vpcs()
            .vpc_ids(&other_vpc)
            .send()
            .await
            .expect("vpc")
            .vpcs()
            .len(),
        1
    );
    let left = tagged(&ec2, ENV).await;
    assert_eq!(left["vpc"], ["vpc"]);
    assert!(
        left["subnet"].is_empty() && left["instance"].is_empty() && left["sg"].is_empty(),
        "{left:?}"
    );

    // Once the owner removes them, destroy finishes; the other VPC stays.
    c.delete_subnet()
        .subnet_id(&subnet)
        .send()
        .await
        .expect("delete foreign subnet");
    c.delete_security_group()
        .group_id(&group)
        .send()
        .await
        .expect("delete foreign sg");
    assert_converged(&destroy(&ec2, ENV).await);
    assert!(tagged(&ec2, ENV).await.values().all(Vec::is_empty));
    assert_eq!(
        c.describe_vpcs()
            .vpc_ids(&other_vpc)
            .send()
            .await
            .expect("vpc")
            .vpcs()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_leaves_nothing_tagged_and_is_idempotent() {
    let moto = Moto::start();
    let ec2 = client(&moto.endpoint(), &fast_opts()).await;
    assert_converged(&converge(&ec2, &desired_for(&model(), ENV, "c1")).await);
    // Another environment in the same account is not touched.
    assert_converged(&converge(&ec2, &desired_for(&model(), "demo-drill-ab12", "c1")).await);

    let run = destroy(&ec2, ENV).await;
    assert_converged(&run);
    assert!(tagged(&ec2, ENV).await.values().all(Vec::is_empty));
    assert_eq!(tagged(&ec2, "demo-drill-ab12").await, expected_full());

    // Nothing left: a second destroy has nothing to do and succeeds.
    let again = destroy(&ec2, ENV).await;
    assert_converged(&again);
    assert!(again.nodes.is_empty());
    // Destroying from a stale snapshot (everything already gone) also succeeds.
    assert_converged(&converge(&ec2, &desired_for(&model(), ENV, "c1")).await);
    let live = aws::observe(&ec2, ENV).await.expect("observe");
    assert_converged(
        &run_nodes(aws::destroy_nodes(
            ec2.clone(),
            ENV,
            &live,
            &converge_opts(),
        ))
        .await,
    );
    let stale = run_nodes(aws::destroy_nodes(
        ec2.clone(),
        ENV,
        &live,
        &converge_opts(),
    ))
    .await;
    assert_converged(&stale);
    assert!(outcomes(&stale)
        .values()
        .all(|o| *o == NodeOutcome::Unchanged));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_after_a_half_built_create() {
    let moto = Moto::start();
    let ec2 = client(&moto.endpoint(), &fast_opts()).await;
    let desired = desired_for(&model(), ENV, "c1");
    let live = aws::observe(&ec2, ENV).await.expect("observe");
    // Only part of the graph runs: the network without route table, rules or instances.
    let part: Vec<_> =
        aws::converge_nodes(ec2.clone(), Arc::clone(&desired), &live, &converge_opts())
            .into_iter()
            .filter(|(spec, _)| {
                [
                    "cloud/vpc",
                    "cloud/igw",
                    "cloud/subnet/public-a",
                    "cloud/sg/cluster",
                    "cloud/sg/admin",
                    "cloud/key/admin",
                ]
                .contains(&spec.id.as_str())
            })
            .collect();
    assert_eq!(part.len(), 6);
    assert_converged(&run_nodes(part).await);
    let found = tagged(&ec2, ENV).await;
    assert_eq!(found["subnet"], ["subnet/public-a"]);
    assert!(found["instance"].is_empty());

    assert_converged(&destroy(&ec2, ENV).await);
    assert!(tagged(&ec2, ENV).await.values().all(Vec::is_empty));
}

/// The child side of the SIGKILL test: converges the environment named by the parent and exits.
/// Ignored so that it only runs when the parent starts it explicitly.
#[test]
#[ignore = "run by killed_runs_then_rerun_converge_without_duplicates as a child process"]
fn child_converge() {
    let Ok(env) = std::env::var("PHOENIX_TEST_CHILD_ENV") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        // The real CLI path: region from the model, endpoint and credentials from the environment.
        let ec2 = aws::connect(REGION, &fast_opts()).await.expect("connect");
        let desired = desired_for(&many(), &env, "c1");
        let summary = converge(&ec2, &desired).await;
        assert_converged(&summary);
    });
}

/// The kill test's environment: enough instances that kills land mid-way.
fn many() -> Cloud {
    let mut c = model();
    c.instances[1].count = 6;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_runs_then_rerun_converge_without_duplicates() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.port);
    let ec2 = client(&moto.endpoint(), &fast_opts()).await;
    let exe = std::env::current_exe().expect("test binary");
    // child_converge's path in this binary: its module's path without the binary's name.
    let module = module_path!()
        .split_once("::")
        .expect("a module of the binary")
        .1;
    let child_test = format!("{module}::child_converge");
    let mut proxy_env = moto.sdk_env(REGION);
    for (k, v) in proxy_env.iter_mut() {
        if k == "AWS_ENDPOINT_URL" {
            *v = proxy.endpoint();
        }
    }
    // Kill points, counted in EC2 requests since the child started: early (network only),
    // among the security groups and rules, and during the instance launches.
    let mut kills = 0;
    for point in [3usize, 9, 16, 24, 34] {
        let start = proxy.log().len();
        let mut child = std::process::Command::new(&exe)
            .args([
                child_test.as_str(),
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .envs(proxy_env.iter().cloned())
            .env("PHOENIX_TEST_CHILD_ENV", ENV)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn child");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if proxy.log().len() >= start + point {
                child.kill().expect("SIGKILL");
                kills += 1;
                break;
            }
            if child.try_wait().expect("child status").is_some() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = child.wait();
        no_duplicates(&tagged(&ec2, ENV).await);
    }
    assert!(
        kills >= 3,
        "the child finished before most kill points ({kills} kills)"
    );

    let desired = desired_for(&many(), ENV, "c1");
    let run = converge(&ec2, &desired).await;
    assert_converged(&run);
    let found = tagged(&ec2, ENV).await;
    no_duplicates(&found);
    assert_eq!(found["instance"].len(), 7, "{found:?}");
    assert!(!aws::plan_live(&ec2, &desired)
        .await
        .expect("plan")
        .has_changes());
}

/// Converges through the proxy with `fault` injected `count` times (on `action`, or any).
async fn converge_through(
    fault: Fault,
    count: u32,
    action: Option<&str>,
) -> (Moto, FaultProxy, RunSummary) {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.port);
    let ec2 = client(&proxy.endpoint(), &fast_opts()).await;
    proxy.inject(fault, count, action);
    let desired = desired_for(&model(), ENV, "c1");
    let run = converge(&ec2, &desired).await;
    (moto, proxy, run)
}

async fn assert_clean_converged(moto: &Moto) {
    let direct = client(&moto.endpoint(), &fast_opts()).await;
    let found = tagged(&direct, ENV).await;
    assert_eq!(found, expected_full());
    let desired = desired_for(&model(), ENV, "c1");
    assert!(!aws::plan_live(&direct, &desired)
        .await
        .expect("plan")
        .has_changes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_bursts_are_ridden_out() {
    let (moto, proxy, run) = converge_through(Fault::Throttle, 8, None).await;
    assert_converged(&run);
    assert_eq!(proxy.injected(), 8);
    assert_clean_converged(&moto).await;
    // A burst on the launches themselves.
    let moto2 = Moto::start();
    let proxy2 = FaultProxy::start(moto2.port);
    let ec2 = client(&proxy2.endpoint(), &fast_opts()).await;
    proxy2.inject(Fault::Throttle, 5, Some("RunInstances"));
    assert_converged(&converge(&ec2, &desired_for(&model(), ENV, "c1")).await);
    assert_eq!(proxy2.injected(), 5);
    assert_clean_converged(&moto2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_dropped_connections_are_retried() {
    let (moto, proxy, run) = converge_through(Fault::ServerError, 6, None).await;
    assert_converged(&run);
    assert_eq!(proxy.injected(), 6);
    assert_clean_converged(&moto).await;

    let (moto, proxy, run) = converge_through(Fault::Drop, 6, None).await;
    assert_converged(&run);
    assert_eq!(proxy.injected(), 6);
    assert_clean_converged(&moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_responses_leave_no_duplicates() {
    // The call takes effect, the answer is lost, the SDK retries: a second VPC, route table,
    // gateway or instance exists for a moment. The tag lookup finds and removes the twin.
    for action in [
        "CreateVpc",
        "CreateRouteTable",
        "CreateInternetGateway",
        "RunInstances",
    ] {
        let (moto, proxy, run) = converge_through(Fault::LoseResponse, 1, Some(action)).await;
        assert_eq!(proxy.injected(), 1, "{action}");
        if !run.converged {
            // A lost answer may surface as an error once the SDK's retries are used up;
            // the re-run converges.
            let ec2 = client(&proxy.endpoint(), &fast_opts()).await;
            assert_converged(&converge(&ec2, &desired_for(&model(), ENV, "c1")).await);
        }
        let direct = client(&moto.endpoint(), &fast_opts()).await;
        // A second run cleans any twin a first run could not see yet.
        assert_converged(&converge(&direct, &desired_for(&model(), ENV, "c1")).await);
        assert_eq!(
            tagged(&direct, ENV).await,
            expected_full(),
            "after a lost {action} answer"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_endpoint_fails_bounded_naming_endpoint_and_resource() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.port);
    let opts = AwsOptions {
        connect_timeout: Duration::from_secs(1),
        attempt_timeout: Duration::from_millis(800),
        operation_timeout: Duration::from_secs(2),
        max_attempts: 2,
        profile: None,
        endpoint_url: None,
    };
    let ec2 = client(&proxy.endpoint(), &opts).await;
    let desired = desired_for(&model(), ENV, "c1");

    // Observe itself fails, bounded, naming the endpoint.
    proxy.always(Fault::Silent, None);
    let started = Instant::now();
    let err = aws::observe(&ec2, ENV).await.expect_err("silent endpoint");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let text = err.to_string();
    assert!(
        text.contains(&proxy.endpoint()) && text.contains("did not answer within"),
        "{text}"
    );
    assert!(err.is_transient());

    // Mid-run: the network is built, then the endpoint goes silent for the launches.
    proxy.pass();
    proxy.always(Fault::Silent, Some("RunInstances"));
    let converge = ConvergeOptions {
        node_timeout: Duration::from_secs(6),
        ..converge_opts()
    };
    let started = Instant::now();
    let run = converge_with(&ec2, &desired, &converge).await;
    assert!(!run.converged);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    let failed = run.node("cloud/instance/server/0").expect("server node");
    let detail = failed.state.detail().unwrap_or_default();
    assert!(detail.contains("launching instance/server/0"), "{detail}");
    assert!(detail.contains(&proxy.endpoint()), "{detail}");
    assert!(detail.contains("did not answer within"), "{detail}");

    // The endpoint answers again: a re-run converges.
    proxy.pass();
    assert_converged(&converge_with(&ec2, &desired, &converge_opts()).await);
    assert_clean_converged(&moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_then_restarted_endpoint() {
    let mut moto = Moto::start();
    let proxy = FaultProxy::start(moto.port);
    let opts = AwsOptions {
        connect_timeout: Duration::from_secs(1),
        attempt_timeout: Duration::from_secs(2),
        operation_timeout: Duration::from_secs(4),
        max_attempts: 2,
        profile: None,
        endpoint_url: None,
    };
    let ec2 = client(&proxy.endpoint(), &opts).await;
    let desired = desired_for(&model(), ENV, "c1");
    assert_converged(&converge(&ec2, &desired).await);

    // moto is down: plan and converge fail, bounded, naming the endpoint and the resource.
    let live = aws::observe(&ec2, ENV).await.expect("observe");
    moto.stop();
    let started = Instant::now();
    let err = aws::plan_live(&ec2, &desired)
        .await
        .expect_err("endpoint down");
    assert!(err.to_string().contains(&proxy.endpoint()), "{err}");
    assert!(err.is_transient());
    let short = ConvergeOptions {
        node_timeout: Duration::from_secs(5),
        ..converge_opts()
    };
    let run = run_nodes(aws::converge_nodes(
        ec2.clone(),
        Arc::clone(&desired),
        &live,
        &short,
    ))
    .await;
    assert!(!run.converged);
    let vpc = run.node("cloud/vpc").expect("vpc node");
    let detail = vpc.state.detail().unwrap_or_default();
    assert!(detail.contains("observing vpc of env demo"), "{detail}");
    assert!(
        detail.contains(&format!("EC2 endpoint {}", proxy.endpoint())),
        "{detail}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "took {:?}",
        started.elapsed()
    );

    // Restarted (empty, as after losing the region's state): a re-run rebuilds everything.
    moto.restart();
    proxy.set_backend(moto.port);
    assert_converged(&converge(&ec2, &desired).await);
    assert_clean_converged(&moto).await;

    // Restarted in the middle of a run: the run ends (converged or failed, bounded) and a
    // re-run converges with no duplicates.
    moto.reset();
    let ec2b = ec2.clone();
    let d2 = Arc::clone(&desired);
    let run = tokio::spawn(async move {
        converge_with(
            &ec2b,
            &d2,
            &ConvergeOptions {
                node_timeout: Duration::from_secs(20),
                ..converge_opts()
            },
        )
        .await
    });
    let start = proxy.log().len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.log().len() < start + 10 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    moto.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    moto.restart();
    proxy.set_backend(moto.port);
    let started = Instant::now();
    let _ = run.await.expect("run task");
    assert!(started.elapsed() < Duration::from_secs(120));
    assert_converged(&converge(&ec2, &desired).await);
    assert_clean_converged(&moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_key_is_imported_and_stopped_instances_are_started() {
    let moto = Moto::start();
    let ec2 = client(&moto.endpoint(), &fast_opts()).await;
    let secrets = tempfile::tempdir().expect("tempdir");
    let secret = phoenix::providers::cluster::Secret::new("0123456789abcdef0123456789abcdef-cloud");
    let mut cloud = model();
    cloud.instances.truncate(1);
    // Not a k3s server: stop-modify-start never applies to one (its address would move).
    cloud.instances[0].role = Role::None;
    let material = aws::key_material(&cloud, ENV, Some(&secret), secrets.path())
        .expect("key")
        .expect("some");
    let inputs = DesiredInputs {
        commit: "c1".into(),
        key: Some(material.clone()),
        ..Default::default()
    };
    let desired = Arc::new(aws::desired(&cloud, ENV, &inputs));
    assert_converged(&converge(&ec2, &desired).await);
    let keys = ec2
        .client()
        .describe_key_pairs()
        .key_names("demo-admin")
        .send()
        .await
        .expect("key");
    assert_eq!(keys.key_pairs().len(), 1);
    // Derived, not generated: nothing was written, and deriving again (another machine) gives
    // the same key, so the plan has no key pair change.
    assert_eq!(
        std::fs::read_dir(secrets.path()).expect("dir").count(),
        0,
        "nothing written"
    );
    let again = aws::key_material(&cloud, ENV, Some(&secret), secrets.path())
        .expect("key")
        .expect("some");
    assert_eq!(again, material);
    assert!(!aws::plan_live(&ec2, &desired)
        .await
        .expect("plan")
        .has_changes());

    // Stopped out of band: the plan says start, the converge starts it (same instance).
    let id = instance_ids(&ec2, ENV).await["instance/server/0"].clone();
    ec2.client()
        .stop_instances()
        .instance_ids(&id)
        .send()
        .await
        .expect("stop");
    let plan = aws::plan_live(&ec2, &desired).await.expect("plan");
    assert_eq!(
        plan.get("instance/server/0")
            .map(ToString::to_string)
            .as_deref(),
        Some("~   update instance/server/0: state stopped → running")
    );
    assert_converged(&converge(&ec2, &desired).await);
    assert_eq!(instance_ids(&ec2, ENV).await["instance/server/0"], id);
    assert!(!aws::plan_live(&ec2, &desired)
        .await
        .expect("plan")
        .has_changes());

    // A new type with stop-modify-start allowed: updated in place.
    cloud.allow_stop_modify_start = true;
    cloud.instances[0].instance_type = "t3.large".into();
    let desired = Arc::new(aws::desired(&cloud, ENV, &inputs));
    let run = converge(&ec2, &desired).await;
    assert_converged(&run);
    assert_eq!(
        outcomes(&run).get("cloud/instance/server/0"),
        Some(&NodeOutcome::Updated)
    );
    assert_eq!(instance_ids(&ec2, ENV).await["instance/server/0"], id);
    assert!(!aws::plan_live(&ec2, &desired)
        .await
        .expect("plan")
        .has_changes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_wait_for_running_and_status_checks_with_a_named_timeout() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.port);
    let ec2 = client(&proxy.endpoint(), &fast_opts()).await;
    let mut cloud = model();
    cloud.instances.truncate(1);
    let desired = desired_for(&cloud, ENV, "c1");

    // Booting takes longer than the readiness timeout: the node fails naming what it waited for.
    proxy.set_boot_delay(Some(Duration::from_secs(30)));
    let impatient = ConvergeOptions {
        instance_ready_timeout: Duration::from_millis(600),
        node_timeout: Duration::from_secs(10),
        ..converge_opts()
    };
    let run = converge_with(&ec2, &desired, &impatient).await;
    assert!(!run.converged);
    let node = run.node("cloud/instance/server/0").expect("server node");
    let detail = node.state.detail().unwrap_or_default();
    assert!(
        detail.contains("timed out after 600ms waiting for instance i-")
            && detail.contains("(instance/server/0) running with status checks ok")
            && detail.contains("last observed: pending"),
        "{detail}"
    );

    // A boot within the timeout is waited for; the re-run reuses the instance launched above.
    proxy.set_boot_delay(Some(Duration::from_millis(1500)));
    let before = instance_ids(&ec2, ENV).await;
    assert_converged(&converge(&ec2, &desired).await);
    assert_eq!(instance_ids(&ec2, ENV).await, before, "no second launch");
    no_duplicates(&tagged(&ec2, ENV).await);
}

/// Issue 14, item 7: instances launch with IMDSv2 required and a hop limit of 1, so a pod cannot
/// read the user-data (the cluster's CA keys) from the metadata service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_launch_with_imdsv2_required_and_a_hop_limit_of_one() {
    let moto = Moto::start();
    let ec2 = client(&moto.endpoint(), &fast_opts()).await;
    let desired = desired_for(&model(), ENV, "c1");
    assert_converged(&converge(&ec2, &desired).await);
    let ids: Vec<String> = instance_ids(&ec2, ENV).await.into_values().collect();
    assert!(!ids.is_empty());
    let out = ec2
        .client()
        .describe_instances()
        .set_instance_ids(Some(ids.clone()))
        .send()
        .await
        .expect("describe instances");
    let instances: Vec<_> = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .collect();
    assert_eq!(instances.len(), ids.len());
    for i in instances {
        let m = i.metadata_options().expect("metadata options");
        assert_eq!(
            m.http_tokens(),
            Some(&aws_sdk_ec2::types::HttpTokensState::Required),
            "{:?}: {m:?}",
            i.instance_id()
        );
        assert_eq!(m.http_put_response_hop_limit(), Some(1), "{m:?}");
    }
}

/// The metadata options EC2 reports for instance `id`: (HttpTokens, HttpPutResponseHopLimit,
/// HttpEndpoint).
async fn metadata_options(ec2: &Ec2, id: &str) -> (String, i32, String) {
    let out = ec2
        .client()
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .expect("describe instances");
    let i = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .next()
        .expect("the instance");
    let m = i.metadata_options().expect("metadata options");
    (
        m.http_tokens()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default(),
        m.http_put_response_hop_limit().unwrap_or_default(),
        m.http_endpoint()
            .map(|e| e.as_str().to_string())
            .unwrap_or_default(),
    )
}

/// Issue 14, item 7: an instance launched before phoenix required IMDSv2 (here set back to
/// IMDSv1 with two hops behind phoenix's back) is converged in place: the plan shows the
/// metadata options as an update, the converge calls ModifyInstanceMetadataOptions on the same
/// instance (no restart, no replace), and the next plan is clean. An endpoint the operator turned
/// off stays off (stricter still; runbooks/user-data-secrets.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_allowing_imdsv1_is_converged_to_imdsv2_in_place() {
    let moto = Moto::start();
    let ec2 = client(&moto.endpoint(), &fast_opts()).await;
    let mut cloud = model();
    cloud.instances.truncate(1);
    let desired = desired_for(&cloud, ENV, "c1");
    assert_converged(&converge(&ec2, &desired).await);
    let id = instance_ids(&ec2, ENV).await["instance/server/0"].clone();
    ec2.client()
        .modify_instance_metadata_options()
        .instance_id(&id)
        .http_tokens(aws_sdk_ec2::types::HttpTokensState::Optional)
        .http_put_response_hop_limit(2)
        .http_endpoint(aws_sdk_ec2::types::InstanceMetadataEndpointState::Disabled)
        .send()
        .await
        .expect("allow IMDSv1");
    assert_eq!(
        metadata_options(&ec2, &id).await,
        ("optional".into(), 2, "disabled".into())
    );

    let plan = aws::plan_live(&ec2, &desired).await.expect("plan");
    assert_eq!(
        plan.get("instance/server/0")
            .map(ToString::to_string)
            .as_deref(),
        Some("~   update instance/server/0: metadata-http-tokens optional → required, metadata-hop-limit 2 → 1"),
        "{plan}"
    );
    let run = converge(&ec2, &desired).await;
    assert_converged(&run);
    assert_eq!(
        outcomes(&run).get("cloud/instance/server/0"),
        Some(&NodeOutcome::Updated)
    );
    assert_eq!(
        instance_ids(&ec2, ENV).await["instance/server/0"],
        id,
        "the same instance"
    );
    assert_eq!(
        metadata_options(&ec2, &id).await,
        ("required".into(), 1, "disabled".into())
    );
    assert!(!aws::plan_live(&ec2, &desired)
        .await
        .expect("plan")
        .has_changes());
}

/// Issue 14, item 5: a k3s server found stopped (someone stopped it) is not started in place
/// when the API is reached at its public address: a start gives it a new public address, which
/// its certificate does not name. The plan says the start is refused and why; the converge fails
/// at once naming the instance and what to do, and changes nothing. With `cluster.endpoint:
/// private` (the private address survives a stop) the same server is started in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_k3s_server_reached_at_its_public_address_is_refused_not_started() {
    let moto = Moto::start();
    let ec2 = client(&moto.endpoint(), &fast_opts()).await;
    let mut cloud = model();
    cloud.instances.truncate(1);
    assert_eq!(cloud.instances[0].role, Role::Server);
    let desired = desired_for(&cloud, ENV, "c1");
    assert_converged(&converge(&ec2, &desired).await);
    let id = instance_ids(&ec2, ENV).await["instance/server/0"].clone();
    ec2.client()
        .stop_instances()
        .instance_ids(&id)
        .send()
        .await
        .expect("stop");

    let plan = aws::plan_live(&ec2, &desired).await.expect("plan");
    let server = plan.get("instance/server/0").expect("server").clone();
    assert_eq!(server.action, ChangeAction::Update, "{server}");
    assert!(server.refused.is_some(), "{server:?}");
    let line = server.to_string();
    assert!(
        line.starts_with("~   update instance/server/0: state stopped → running (refused: phoenix does not start a stopped k3s server: it would come back with a new public address"),
        "{line}"
    );

    let run = converge(&ec2, &desired).await;
    assert!(!run.converged, "a stopped server is not started");
    let node = run.node("cloud/instance/server/0").expect("server node");
    let detail = node.state.detail().unwrap_or_default();
    for needle in [
        &format!("instance {id} is stopped"),
        "new public address",
        "Nothing was changed",
        &format!("aws ec2 terminate-instances --instance-ids {id}"),
        "cluster.endpoint: private",
    ] {
        assert!(detail.contains(needle), "{needle:?} in {detail}");
    }
    let live = aws::observe(&ec2, ENV).await.expect("observe");
    let copies = live.get("instance/server/0");
    assert_eq!(copies.len(), 1, "no replacement launched");
    match &copies[0].state {
        aws::LiveState::Instance { state, .. } => assert_eq!(state, "stopped"),
        other => panic!("{other:?}"),
    }

    // The API at the private address: it survives a stop, so the server is started in place.
    let private = Arc::new(aws::desired(
        &cloud,
        ENV,
        &DesiredInputs {
            server_endpoint_public: false,
            ..inputs_for("c1")
        },
    ));
    let plan = aws::plan_live(&ec2, &private).await.expect("plan");
    assert_eq!(
        plan.get("instance/server/0")
            .map(ToString::to_string)
            .as_deref(),
        Some("~   update instance/server/0: state stopped → running")
    );
    assert_converged(&converge(&ec2, &private).await);
    assert_eq!(instance_ids(&ec2, ENV).await["instance/server/0"], id);
    assert!(!aws::plan_live(&ec2, &private)
        .await
        .expect("plan")
        .has_changes());
}

/// Issue 14, item 2: the client token covers every RunInstances parameter. Behind a proxy that
/// enforces EC2's ClientToken semantics (moto ignores them), instances of the same commit
/// relaunched after a wipeout with other parameters (new user-data) are launched, not refused
/// with IdempotentParameterMismatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relaunch_of_the_same_commit_with_other_parameters_gets_a_new_client_token() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.port);
    proxy.enforce_client_tokens();
    let ec2 = client(&proxy.endpoint(), &fast_opts()).await;

    // The proxy enforces what EC2 documents: same token and parameters → the earlier instance;
    // same token, other parameters → IdempotentParameterMismatch.
    let live = {
        assert_converged(&converge(&ec2, &desired_for(&model(), ENV, "c1")).await);
        aws::observe(&ec2, ENV).await.expect("observe")
    };
    let subnet = live.get("subnet/public-a")[0].aws_id.clone();
    let launch = |user_data: &'static str| {
        ec2.client()
            .run_instances()
            .image_id(AMI_1)
            .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
            .min_count(1)
            .max_count(1)
            .subnet_id(&subnet)
            .user_data(user_data)
            .client_token("proxy-self-check")
    };
    let first = launch("YQ==").send().await.expect("first launch");
    let again = launch("YQ==")
        .send()
        .await
        .expect("same token, same parameters");
    let id = |o: &aws_sdk_ec2::operation::run_instances::RunInstancesOutput| {
        o.instances()[0].instance_id().map(str::to_string)
    };
    assert_eq!(
        id(&first),
        id(&again),
        "the earlier instance, not a new one"
    );
    let err = launch("Yg==").send().await.expect_err("other parameters");
    assert_eq!(
        aws_sdk_ec2::error::ProvideErrorMetadata::code(&err),
        Some("IdempotentParameterMismatch"),
        "{err:?}"
    );
    assert_eq!(proxy.client_token_mismatches(), 1);
    let direct = client(&moto.endpoint(), &fast_opts()).await;
    direct
        .client()
        .terminate_instances()
        .set_instance_ids(id(&first).map(|i| vec![i]))
        .send()
        .await
        .expect("terminate the self-check instance");

    // A wipeout of the instances (out of band), then the same commit with other user-data (a
    // new server address for the agents, say).
    let before = instance_ids(&ec2, ENV).await;
    direct
        .client()
        .terminate_instances()
        .set_instance_ids(Some(before.values().cloned().collect()))
        .send()
        .await
        .expect("terminate every instance");
    let mut inputs = DesiredInputs {
        commit: "c1".into(),
        user_data: BTreeMap::from([
            (
                "server".to_string(),
                "#!/bin/sh\necho server v2\n".to_string(),
            ),
            (
                "agent".to_string(),
                "#!/bin/sh\necho agent 10.40.1.99\n".to_string(),
            ),
        ]),
        key: Some(key()),
        server_endpoint_public: true,
        extra_tags: BTreeMap::new(),
        late_user_data: BTreeMap::new(),
        after: BTreeMap::new(),
    };
    let desired = Arc::new(aws::desired(&model(), ENV, &inputs));
    let run = converge(&ec2, &desired).await;
    assert_converged(&run);
    assert_eq!(
        proxy.client_token_mismatches(),
        1,
        "no relaunch was refused with IdempotentParameterMismatch"
    );
    let after = instance_ids(&ec2, ENV).await;
    assert_eq!(after.len(), before.len());
    for (resource, old) in &before {
        assert_ne!(after.get(resource), Some(old), "{resource} relaunched");
    }
    // And a plain re-run changes nothing (the same parameters would reuse the same tokens).
    inputs.extra_tags.clear();
    assert!(!aws::plan_live(&ec2, &desired)
        .await
        .expect("plan")
        .has_changes());
}

fn ec2_error(status: u16, code: &str, message: &str) -> Fault {
    Fault::Answer {
        status,
        code: code.into(),
        message: message.into(),
    }
}

/// Issue 14, item 10: no capacity of the type in the zone is retried a bounded number of
/// times, then fails at once naming type and zone (not after the node timeout); a short
/// shortage is ridden out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insufficient_capacity_is_retried_a_few_times_then_named_with_type_and_zone() {
    let capacity = || {
        ec2_error(
            500,
            "InsufficientInstanceCapacity",
            "We currently do not have sufficient t3.medium capacity in the Availability Zone you requested (us-east-1a).",
        )
    };
    // A short shortage: two refusals, then capacity.
    let (moto, proxy, run) = converge_through(capacity(), 2, Some("RunInstances")).await;
    assert_converged(&run);
    assert_eq!(proxy.injected(), 2);
    drop((moto, proxy));

    // A lasting one: every launch refused.
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.port);
    let ec2 = client(&proxy.endpoint(), &fast_opts()).await;
    proxy.always(capacity(), Some("RunInstances"));
    let started = Instant::now();
    let run = converge(&ec2, &desired_for(&model(), ENV, "c1")).await;
    assert!(!run.converged);
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "bounded, not the 60 s node timeout: {:?}",
        started.elapsed()
    );
    let node = run.node("cloud/instance/server/0").expect("server node");
    let error = node.state.detail().unwrap_or_default().to_string();
    assert!(
        matches!(
            node.state,
            NodeState::Failed {
                timed_out: false,
                ..
            }
        ),
        "{:?}",
        node.state
    );
    for needle in [
        "no t3.medium capacity in us-east-1a",
        "after 5 attempts",
        "InsufficientInstanceCapacity",
        "another instance type",
    ] {
        assert!(error.contains(needle), "{needle:?} in {error}");
    }
    let launches = proxy
        .log()
        .iter()
        .filter(|(a, _)| a == "RunInstances")
        .count();
    let instances = model()
        .instances
        .iter()
        .map(|g| g.count as usize)
        .sum::<usize>();
    // Five engine attempts per instance, each of which the SDK tries max_attempts times (a 500).
    assert_eq!(
        launches,
        5 * fast_opts().max_attempts as usize * instances,
        "five attempts per instance"
    );
}

/// Issue 14, item 10: a quota error names the quota, where to see what uses it and how to
/// raise it, and fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_error_names_the_quota_and_fails_at_once() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.port);
    let ec2 = client(&proxy.endpoint(), &fast_opts()).await;
    // A forgotten drill copy holds a VPC.
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
    let copy_vpc = ec2
        .client()
        .create_vpc()
        .cidr_block("10.99.0.0/16")
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Vpc)
                .tags(tag("phoenix:env", "demo-drill-ab12"))
                .tags(tag("phoenix:expires", "2026-01-01T00:00:00Z"))
                .build(),
        )
        .send()
        .await
        .expect("a copy's VPC")
        .vpc()
        .and_then(|v| v.vpc_id())
        .expect("vpc id")
        .to_string();
    proxy.inject(
        ec2_error(
            400,
            "VpcLimitExceeded",
            "The maximum number of VPCs has been reached.",
        ),
        1,
        Some("CreateVpc"),
    );
    let run = converge(&ec2, &desired_for(&model(), ENV, "c1")).await;
    assert!(!run.converged);
    let node = run.node("cloud/vpc").expect("vpc node");
    let error = node.state.detail().unwrap_or_default().to_string();
    for needle in [
        "VpcLimitExceeded",
        "VPCs per Region",
        "L-F678F1CE",
        "aws ec2 describe-vpcs",
        "phoenix gc",
        "the region's VPCs:",
        "(the default VPC)",
    ] {
        assert!(error.contains(needle), "{needle:?} in {error}");
    }
    assert!(
        error.contains(&format!(
            "{copy_vpc} (phoenix env demo-drill-ab12, expires 2026-01-01T00:00:00Z)"
        )),
        "what uses the quota is named: {error}"
    );
    assert!(!error.contains("creating vpc: creating vpc"), "{error}");
    assert!(
        matches!(
            node.state,
            NodeState::Failed {
                timed_out: false,
                ..
            }
        ),
        "{:?}",
        node.state
    );
}

/// Issue 14, item 10: network interfaces and VPC endpoints that keep a VPC from being deleted
/// (DeleteVpc would answer DependencyViolation) are named among the foreign resources, and the
/// delete is refused at once instead of retried until the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_network_interfaces_and_endpoints_in_the_vpc_are_named() {
    let moto = Moto::start();
    let ec2 = client(&moto.endpoint(), &fast_opts()).await;
    assert_converged(&converge(&ec2, &desired_for(&model(), ENV, "c1")).await);
    let vpc_id = aws::observe(&ec2, ENV).await.expect("observe").get("vpc")[0]
        .aws_id
        .clone();
    let c = ec2.client();
    let subnet = c
        .create_subnet()
        .vpc_id(&vpc_id)
        .cidr_block("10.40.200.0/24")
        .send()
        .await
        .expect("foreign subnet")
        .subnet()
        .and_then(|s| s.subnet_id())
        .expect("subnet id")
        .to_string();
    let eni = c
        .create_network_interface()
        .subnet_id(&subnet)
        .description("ELB app/someone-elses-alb")
        .send()
        .await
        .expect("foreign network interface")
        .network_interface()
        .and_then(|n| n.network_interface_id())
        .expect("eni id")
        .to_string();
    let endpoint = c
        .create_vpc_endpoint()
        .vpc_id(&vpc_id)
        .service_name("com.amazonaws.us-east-1.s3")
        .send()
        .await
        .expect("foreign endpoint")
        .vpc_endpoint()
        .and_then(|e| e.vpc_endpoint_id())
        .expect("endpoint id")
        .to_string();

    let run = destroy(&ec2, ENV).await;
    assert!(!run.converged);
    let node = run.node("cloud/delete/vpc").expect("vpc node");
    let error = node.state.detail().unwrap_or_default().to_string();
    assert!(
        error.contains(&format!(
            "network interface {eni} (ELB app/someone-elses-alb"
        )),
        "{error}"
    );
    assert!(
        error.contains(&format!(
            "VPC endpoint {endpoint} (com.amazonaws.us-east-1.s3)"
        )),
        "{error}"
    );
    assert!(
        matches!(
            node.state,
            NodeState::Failed {
                timed_out: false,
                ..
            }
        ),
        "refused at once: {:?}",
        node.state
    );
}

/// An image of this account made from a throwaway instance, named `name`.
async fn own_image(ec2: &Ec2, subnet: &str, name: &str) -> String {
    let c = ec2.client();
    let source = c
        .run_instances()
        .image_id(AMI_1)
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .subnet_id(subnet)
        .send()
        .await
        .expect("source instance");
    let source_id = source.instances()[0]
        .instance_id()
        .expect("instance id")
        .to_string();
    let image = c
        .create_image()
        .instance_id(&source_id)
        .name(name)
        .send()
        .await
        .expect("create image")
        .image_id()
        .expect("image id")
        .to_string();
    c.terminate_instances()
        .instance_ids(source_id)
        .send()
        .await
        .expect("terminate the source");
    image
}

/// Issue 14, item 3: the image an instance was launched from a lookup is recorded on it; a
/// newer image matching the lookup is shown as available and changes nothing, unless the env
/// says `update: latest`; lookups filter by architecture (and state).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_image_is_available_not_drift_and_taken_only_with_update_latest() {
    let moto = Moto::start();
    let ec2 = client(&moto.endpoint(), &fast_opts()).await;
    // The network first, so that images can be made from an instance in it.
    let with_lookup = |update: ImageUpdate, architecture: &str| {
        let mut m = model();
        m.instances.truncate(1);
        m.instances[0].image = Image::Lookup {
            owner: "123456789012".into(),
            name: "phoenix-test-*".into(),
            architecture: architecture.into(),
            update,
        };
        m
    };
    let mut network = model();
    network.instances.clear();
    assert_converged(&converge(&ec2, &desired_for(&network, ENV, "c1")).await);
    let subnet = aws::observe(&ec2, ENV)
        .await
        .expect("observe")
        .get("subnet/public-a")[0]
        .aws_id
        .clone();
    let first = own_image(&ec2, &subnet, "phoenix-test-1").await;

    let pinned = desired_for(&with_lookup(ImageUpdate::Pinned, "x86_64"), ENV, "c1");
    assert_converged(&converge(&ec2, &pinned).await);
    let live = aws::observe(&ec2, ENV).await.expect("observe");
    let server = live.get("instance/server/0")[0].clone();
    assert_eq!(
        server.tags.get("phoenix:image-lookup").map(String::as_str),
        Some("123456789012/phoenix-test-* (x86_64)")
    );
    match &server.state {
        aws::LiveState::Instance { image_id, .. } => assert_eq!(image_id, &first),
        other => panic!("{other:?}"),
    }

    // A newer image is published: available, not a change; a converge keeps the instance.
    let second = own_image(&ec2, &subnet, "phoenix-test-2").await;
    let plan = aws::plan_live(&ec2, &pinned).await.expect("plan");
    assert!(!plan.has_changes(), "{plan}");
    let line = plan.get("instance/server/0").expect("instance").to_string();
    assert!(
        line.contains(&format!("newer image available: {second}")),
        "{line}"
    );
    assert_converged(&converge(&ec2, &pinned).await);
    assert_eq!(
        instance_ids(&ec2, ENV).await.get("instance/server/0"),
        Some(&server.aws_id),
        "not replaced"
    );

    // Asked for: update: latest replaces it with the newest.
    let latest = desired_for(&with_lookup(ImageUpdate::Latest, "x86_64"), ENV, "c1");
    let plan = aws::plan_live(&ec2, &latest).await.expect("plan");
    let change = plan.get("instance/server/0").expect("instance");
    assert_eq!(change.action, ChangeAction::Replace, "{change}");

    // Only images of the architecture asked for are candidates.
    let arm = desired_for(&with_lookup(ImageUpdate::Pinned, "arm64"), ENV, "c1");
    let err = aws::plan_live(&ec2, &arm)
        .await
        .expect_err("no arm64 image");
    assert!(err.to_string().contains("no image matches"), "{err}");
}

/// Issue 14, item 10: an instance profile EC2 does not see yet (IAM is eventually consistent)
/// is retried a few times, then fails naming the profile, instead of at once or at the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_profile_not_yet_visible_is_retried_a_few_times_then_named() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.port);
    let ec2 = client(&proxy.endpoint(), &fast_opts()).await;
    let mut cloud = model();
    cloud.instances.truncate(1);
    cloud.instances[0].instance_profile = Some("phoenix-nodes".into());
    proxy.always(
        ec2_error(
            400,
            "InvalidParameterValue",
            "Value (phoenix-nodes) for parameter iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name",
        ),
        Some("RunInstances"),
    );
    let run = converge(&ec2, &desired_for(&cloud, ENV, "c1")).await;
    assert!(!run.converged);
    let node = run.node("cloud/instance/server/0").expect("server node");
    let error = node.state.detail().unwrap_or_default().to_string();
    for needle in [
        "the instance profile phoenix-nodes is still not usable after 5 attempts",
        "iam:PassRole",
    ] {
        assert!(error.contains(needle), "{needle:?} in {error}");
    }
    assert!(
        matches!(
            node.state,
            NodeState::Failed {
                timed_out: false,
                ..
            }
        ),
        "{:?}",
        node.state
    );
    let launches = proxy
        .log()
        .iter()
        .filter(|(a, _)| a == "RunInstances")
        .count();
    assert_eq!(
        launches, 5,
        "five attempts, each one request (a 400 is not retried by the SDK)"
    );
}
