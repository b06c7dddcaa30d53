//! Benchmark (not a test): time to create an N-instance environment with phoenix's converge
//! (engine concurrency C) against a naive sequential loop of the same SDK calls (RunInstances
//! one at a time, each followed by a wait until running with status checks ok).
//!
//! Runs against a moto server it starts on 127.0.0.1, behind the loopback fault proxy, which
//! can simulate a boot time (moto's instances are running at once). See docs/cloud.md and
//! `scripts/bench-cloud`.
//!
//! ```text
//! cargo run --release --example cloud_bench -- [--instances 100] [--concurrency 16]
//!     [--boot-ms 1000,0] [--poll-ms 250]
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{InstanceType, ResourceType, SummaryStatus, Tag, TagSpecification};
use phoenix::engine::{self, CancelToken, EngineOptions, Graph, Policy};
use phoenix::env::model::*;
use phoenix::providers::aws::{self, AwsOptions, ConvergeOptions, DesiredInputs, Ec2};
use phoenix::report::events::EventSink;
use testkit::{fault_proxy, moto};

const AMI: &str = "ami-03c3da4cfa8e8943a";

struct Args {
    instances: u32,
    concurrency: usize,
    boots: Vec<u64>,
    poll: Duration,
}

fn args() -> Args {
    let mut a = Args {
        instances: 100,
        concurrency: 16,
        boots: vec![1000, 0],
        poll: Duration::from_millis(250),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < argv.len() {
        let v = &argv[i + 1];
        match argv[i].as_str() {
            "--instances" => a.instances = v.parse().unwrap_or(a.instances),
            "--concurrency" => a.concurrency = v.parse().unwrap_or(a.concurrency),
            "--boot-ms" => a.boots = v.split(',').filter_map(|x| x.parse().ok()).collect(),
            "--poll-ms" => a.poll = Duration::from_millis(v.parse().unwrap_or(250)),
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    a
}

fn model(n: u32) -> Cloud {
    Cloud {
        provider: "aws".into(),
        region: "us-east-1".into(),
        network: Network {
            cidr: "10.60.0.0/16".parse().expect("cidr"),
            subnets: vec![Subnet {
                name: "public-a".into(),
                cidr: "10.60.0.0/20".parse().expect("cidr"),
                zone: "us-east-1a".into(),
                public: true,
                pos: Default::default(),
            }],
        },
        security_groups: vec![SecurityGroup {
            name: "nodes".into(),
            description: "bench".into(),
            ingress: vec![Rule {
                protocol: Protocol::Tcp,
                ports: Some((22, 22)),
                peer: Peer::Cidr("10.0.0.0/8".parse().expect("cidr")),
                description: None,
            }],
            egress: None,
            pos: Default::default(),
        }],
        key_pair: None,
        instances: vec![InstanceGroup {
            name: "node".into(),
            role: Role::Agent,
            count: n,
            instance_type: "t3.medium".into(),
            image: Image::Id(AMI.into()),
            subnet: "public-a".into(),
            security_groups: vec!["nodes".into()],
            root_volume_gib: None,
            instance_profile: None,
            user_data: None,
            tags: BTreeMap::new(),
            pos: Default::default(),
        }],
        allow_stop_modify_start: false,
    }
}

async fn client(endpoint: &str) -> Ec2 {
    testkit::ec2::client_with(endpoint, &AwsOptions::default()).await
}

async fn phoenix_run(ec2: &Ec2, n: u32, concurrency: usize, poll: Duration) -> Duration {
    let started = Instant::now();
    let desired = Arc::new(aws::desired(
        &model(n),
        "bench-phoenix",
        &DesiredInputs::default(),
    ));
    let live = aws::observe(ec2, "bench-phoenix").await.expect("observe");
    let opts = ConvergeOptions {
        poll_interval: poll,
        ..ConvergeOptions::default()
    };
    let mut graph = Graph::new();
    for (spec, action) in aws::converge_nodes(ec2.clone(), desired, &live, &opts) {
        graph.add(spec, action).expect("graph");
    }
    let summary = engine::run(
        graph,
        EngineOptions {
            concurrency,
            backoff: Policy::STANDARD,
            ..EngineOptions::default()
        },
        EventSink::new(),
        CancelToken::new(),
    )
    .await;
    assert!(summary.converged, "phoenix run failed: {:?}", summary.error);
    started.elapsed()
}

fn tags(resource: ResourceType, name: &str) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(resource)
        .tags(Tag::builder().key("Name").value(name).build())
        .build()
}

/// The same resources, one SDK call after another.
async fn naive_run(ec2: &Ec2, n: u32, poll: Duration) -> Duration {
    let c = ec2.client();
    let started = Instant::now();
    let vpc = c
        .create_vpc()
        .cidr_block("10.61.0.0/16")
        .tag_specifications(tags(ResourceType::Vpc, "bench-naive"))
        .send()
        .await
        .expect("vpc");
    let vpc = vpc
        .vpc()
        .and_then(|v| v.vpc_id())
        .expect("vpc id")
        .to_string();
    let subnet = c
        .create_subnet()
        .vpc_id(&vpc)
        .cidr_block("10.61.0.0/20")
        .availability_zone("us-east-1a")
        .send()
        .await
        .expect("subnet");
    let subnet = subnet
        .subnet()
        .and_then(|s| s.subnet_id())
        .expect("subnet id")
        .to_string();
    let sg = c
        .create_security_group()
        .vpc_id(&vpc)
        .group_name("bench-naive")
        .description("bench")
        .send()
        .await
        .expect("sg");
    let sg = sg.group_id().expect("sg id").to_string();
    for i in 0..n {
        let out = c
            .run_instances()
            .image_id(AMI)
            .instance_type(InstanceType::T3Medium)
            .min_count(1)
            .max_count(1)
            .subnet_id(&subnet)
            .security_group_ids(&sg)
            .tag_specifications(tags(ResourceType::Instance, &format!("bench-naive-{i}")))
            .send()
            .await
            .expect("run");
        let id = out.instances()[0].instance_id().expect("id").to_string();
        loop {
            let st = c
                .describe_instance_status()
                .instance_ids(&id)
                .include_all_instances(true)
                .send()
                .await
                .expect("status");
            let ok = st.instance_statuses().first().is_some_and(|s| {
                s.instance_state()
                    .and_then(|x| x.name())
                    .map(|x| x.as_str())
                    == Some("running")
                    && s.instance_status().and_then(|x| x.status()) == Some(&SummaryStatus::Ok)
                    && s.system_status().and_then(|x| x.status()) == Some(&SummaryStatus::Ok)
            });
            if ok {
                break;
            }
            tokio::time::sleep(poll).await;
        }
    }
    started.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    println!(
        "cloud benchmark: {} instances, phoenix concurrency {}, poll {} ms",
        a.instances,
        a.concurrency,
        a.poll.as_millis()
    );
    println!(
        "{:>12} | {:>14} | {:>14} | {:>8}",
        "boot (ms)", "phoenix (s)", "naive (s)", "speedup"
    );
    for boot in &a.boots {
        let moto = moto::Moto::start();
        let proxy = fault_proxy::FaultProxy::start(moto.port);
        proxy.set_boot_delay((*boot > 0).then(|| Duration::from_millis(*boot)));
        let ec2 = client(&proxy.endpoint()).await;
        let p = phoenix_run(&ec2, a.instances, a.concurrency, a.poll).await;
        moto.reset();
        let n = naive_run(&ec2, a.instances, a.poll).await;
        println!(
            "{:>12} | {:>14.2} | {:>14.2} | {:>7.1}x",
            boot,
            p.as_secs_f64(),
            n.as_secs_f64(),
            n.as_secs_f64() / p.as_secs_f64()
        );
    }
}
