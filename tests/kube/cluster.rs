//! The control-plane gate through the engine, against the real control plane (testenv) whose nodes
//! register from the EC2 instances that the cloud layer creates in a moto server (both on
//! 127.0.0.1, started per test): converges only once the nodes join, names a missing or
//! NotReady node on timeout, works for an existing cluster's kubeconfig + context, and writes
//! the kubeconfig 0600.

use testkit::{control_plane, moto};

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use moto::Moto;
use phoenix::engine::{self, CancelToken, EngineOptions, Graph, NodeState, Policy, RunSummary};
use phoenix::env::model::*;
use phoenix::providers::aws::{self, ConvergeOptions, DesiredInputs, Ec2, KeyMaterial};
use phoenix::providers::cluster::{
    client_for, control_plane_node, ClusterAccess, Credentials, GateOptions, GateTarget,
    KubeconfigConnector, Secret, CONTROL_PLANE_NODE,
};
use phoenix::report::events::{Event, EventSink};

const REGION: &str = "us-east-1";

fn cloud(agents: u32) -> Cloud {
    let group = |name: &str, role: Role, count: u32| InstanceGroup {
        name: name.into(),
        role,
        count,
        instance_type: "t3.medium".into(),
        image: Image::Lookup {
            owner: "amazon".into(),
            name: "al2023-ami-2023*-kernel-6.1-x86_64".into(),
            architecture: "x86_64".into(),
            update: ImageUpdate::Pinned,
        },
        subnet: "public-a".into(),
        security_groups: vec!["cluster".into()],
        root_volume_gib: None,
        instance_profile: None,
        user_data: None,
        tags: BTreeMap::new(),
        pos: Default::default(),
    };
    Cloud {
        provider: "aws".into(),
        region: REGION.into(),
        network: Network {
            cidr: "10.40.0.0/16".parse().unwrap(),
            subnets: vec![Subnet {
                name: "public-a".into(),
                cidr: "10.40.1.0/24".parse().unwrap(),
                zone: "us-east-1a".into(),
                public: true,
                pos: Default::default(),
            }],
        },
        security_groups: vec![SecurityGroup {
            name: "cluster".into(),
            description: "k3s".into(),
            ingress: vec![Rule {
                protocol: Protocol::Tcp,
                ports: Some((6443, 6443)),
                peer: Peer::Cidr("0.0.0.0/0".parse().unwrap()),
                description: None,
            }],
            egress: None,
            pos: Default::default(),
        }],
        key_pair: None,
        instances: vec![
            group("server", Role::Server, 1),
            group("agent", Role::Agent, agents),
        ],
        allow_stop_modify_start: false,
    }
}

fn k3s() -> K3s {
    K3s {
        version: "v1.31.4+k3s1".into(),
        endpoint: EndpointKind::Public,
        secret: SecretSource::Env("PHOENIX_TEST_CLUSTER_SECRET".into()),
        tls_sans: Vec::new(),
        disable: Vec::new(),
    }
}

async fn ec2(moto: &Moto) -> Ec2 {
    testkit::ec2::client(&moto.endpoint()).await
}

fn converge_opts() -> ConvergeOptions {
    ConvergeOptions {
        node_timeout: Duration::from_secs(60),
        instance_ready_timeout: Duration::from_secs(30),
        instance_stop_timeout: Duration::from_secs(30),
        poll_interval: Duration::from_millis(100),
    }
}

async fn sandbox(moto: Option<&Moto>, node_delay: Duration) -> control_plane::ControlPlane {
    control_plane::ControlPlane::start_async(control_plane::Options {
        ec2_endpoint: moto.map(|m| m.endpoint()),
        region: REGION.into(),
        static_nodes: 0,
        k3s_addons: true,
        node_delay,
        ready_delay: Duration::from_millis(200),
        // As real k3s: a terminated instance's Node stays until phoenix deletes it.
        keep_terminated_nodes: true,
        ..control_plane::Options::default()
    })
    .await
}

fn gate_opts(timeout: Duration) -> GateOptions {
    GateOptions {
        timeout,
        poll_interval: Duration::from_millis(100),
        ..GateOptions::default()
    }
}

struct Bed {
    moto: Moto,
    ec2: Ec2,
    home: tempfile::TempDir,
    cloud: Arc<Cloud>,
    env: String,
}

impl Bed {
    async fn new(env: &str, agents: u32) -> Bed {
        let moto = Moto::start();
        let ec2 = ec2(&moto).await;
        let home = tempfile::tempdir().unwrap();
        Bed {
            moto,
            ec2,
            home,
            cloud: Arc::new(cloud(agents)),
            env: env.into(),
        }
    }

    /// The cloud layer's nodes for the env, then the control-plane gate depending on them.
    async fn graph(
        &self,
        override_url: Option<String>,
        opts: GateOptions,
        with_cloud: bool,
    ) -> Graph {
        let creds = Arc::new(
            Credentials::derive(
                self.home.path(),
                &self.env,
                &Secret::new("cluster-test-secret-0123456789abcdef"),
            )
            .unwrap(),
        );
        let mut graph = Graph::new();
        if with_cloud {
            let user_data = BTreeMap::from([
                (
                    "server".to_string(),
                    format!("#!/bin/sh\n# server-ca {}\n", creds.server_ca_sha256()),
                ),
                ("agent".to_string(), "#!/bin/sh\necho agent\n".to_string()),
            ]);
            let desired = Arc::new(aws::desired(
                &self.cloud,
                &self.env,
                &DesiredInputs {
                    commit: "0123456789abcdef0123456789abcdef01234567".into(),
                    user_data,
                    key: None::<KeyMaterial>,
                    extra_tags: BTreeMap::new(),
                    late_user_data: BTreeMap::new(),
                    server_endpoint_public: true,
                    after: BTreeMap::new(),
                },
            ));
            let live = aws::observe(&self.ec2, &self.env).await.expect("observe");
            for (spec, action) in
                aws::converge_nodes(self.ec2.clone(), desired, &live, &converge_opts())
            {
                graph.add(spec, action).unwrap();
            }
        }
        let (mut spec, action) = control_plane_node(
            GateTarget::K3s {
                phoenix_home: self.home.path().to_path_buf(),
                creds,
                env_name: self.env.clone(),
                cloud: Arc::clone(&self.cloud),
                k3s: k3s(),
                ec2: self.ec2.clone(),
                endpoint_override: override_url,
            },
            opts,
        );
        if !with_cloud {
            // The gate alone, after an earlier run converged the instances.
            spec.depends_on.clear();
        }
        graph.add(spec, action).unwrap();
        graph
    }
}

/// Runs the graph; returns the summary and every progress message of the gate.
async fn run(graph: Graph) -> (RunSummary, Vec<String>) {
    let sink = EventSink::new();
    let stream = sink.subscribe();
    let opts = EngineOptions {
        backoff: Policy::fast_for_tests(),
        run_timeout: Some(Duration::from_secs(180)),
        ..EngineOptions::default()
    };
    let summary = engine::run(graph, opts, sink, CancelToken::new()).await;
    let progress = stream
        .collect()
        .await
        .iter()
        .filter_map(|r| match &r.event {
            Event::NodeProgress { id, message } if id == CONTROL_PLANE_NODE => {
                Some(message.clone())
            }
            _ => None,
        })
        .collect();
    (summary, progress)
}

fn gate_state(summary: &RunSummary) -> &NodeState {
    &summary
        .node(CONTROL_PLANE_NODE)
        .expect("gate node in the summary")
        .state
}

fn failures(summary: &RunSummary) -> String {
    summary
        .nodes
        .iter()
        .filter(|n| !n.state.is_success())
        .map(|n| format!("{}: {:?}", n.id, n.state))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_only_after_the_instances_nodes_join() {
    let bed = Bed::new("demo", 2).await;
    // Nodes take 1.5 s to become Ready after their instance runs: the gate must wait for them.
    let sb = sandbox(Some(&bed.moto), Duration::from_millis(1500)).await;
    let override_url = format!("{}/clusters/{{env}}", sb.url());
    let graph = bed
        .graph(Some(override_url), gate_opts(Duration::from_secs(60)), true)
        .await;
    let (summary, progress) = run(graph).await;
    assert!(summary.converged, "run converged:\n{}", failures(&summary));

    // The gate saw the nodes missing or NotReady before it passed.
    assert!(
        progress
            .iter()
            .any(|m| m.contains("of 3 nodes Ready") && !m.contains("3 of 3")),
        "the gate waited for nodes: {progress:#?}"
    );
    let gate = summary.node(CONTROL_PLANE_NODE).unwrap();
    let last_instance_end = summary
        .nodes
        .iter()
        .filter(|n| n.id.starts_with("cloud/instance/"))
        .map(|n| n.start.unwrap() + n.duration.unwrap())
        .max()
        .unwrap();
    assert!(
        gate.start.unwrap() >= last_instance_end,
        "the gate starts after every instance"
    );
    assert!(
        gate.duration.unwrap() >= Duration::from_millis(1000),
        "it waited for the node delay: {:?}",
        gate.duration
    );

    // The kubeconfig phoenix wrote works, is private and reaches this env's cluster.
    let kubeconfig = bed.home.path().join("clusters/demo/kubeconfig");
    assert_eq!(mode(&kubeconfig), 0o600);
    assert_eq!(mode(&bed.home.path().join("clusters/demo")), 0o700);
    let client = client_for(&ClusterAccess::k3s(bed.home.path(), "demo").unwrap())
        .await
        .unwrap();
    let nodes = Api::<Node>::all(client)
        .list(&Default::default())
        .await
        .unwrap()
        .items;
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(ready));
    let live = aws::observe(&bed.ec2, "demo").await.unwrap();
    for n in &nodes {
        let provider = n.spec.as_ref().and_then(|s| s.provider_id.clone()).unwrap();
        let id = provider.rsplit('/').next().unwrap();
        assert!(
            live.resources.values().flatten().any(|r| r.aws_id == id),
            "{provider} is an instance of demo"
        );
    }
    // The connector the add-on layers use reads the same kubeconfig lazily.
    let connector = KubeconfigConnector::new(ClusterAccess::k3s(bed.home.path(), "demo").unwrap());
    let c = connector.client().await.unwrap();
    assert_eq!(
        Api::<Node>::all(c)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .len(),
        3
    );

    // A second rebuild is a no-op for the cloud and passes the gate at once.
    let graph = bed
        .graph(
            Some(format!("{}/clusters/{{env}}", sb.url())),
            gate_opts(Duration::from_secs(30)),
            true,
        )
        .await;
    let (summary, _) = run(graph).await;
    assert!(summary.converged, "{}", failures(&summary));
}

/// Registers a Ready node by hand for an instance (what a kubelet would do), for tests where
/// the sandbox does not watch EC2.
async fn register_node(client: &kube::Client, name: &str, provider_id: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name},
        "spec": {"providerID": provider_id},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let status = serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_joins_times_out_naming_it() {
    let bed = Bed::new("lonely", 2).await;
    // No EC2 registration: the test plays the kubelets and lets one instance never join.
    let sb = sandbox(None, Duration::from_millis(100)).await;
    let url = sb.cluster_url("lonely");
    let graph = bed
        .graph(Some(url.clone()), gate_opts(Duration::from_secs(3)), true)
        .await;
    // Join two of the three instances once they exist.
    let ec2 = bed.ec2.clone();
    let joiner = tokio::spawn(async move {
        phoenix::providers::cluster::install_crypto_provider();
        let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        for _ in 0..300 {
            let live = aws::observe(&ec2, "lonely").await.unwrap();
            let instances: Vec<_> = ["instance/server/0", "instance/agent/0", "instance/agent/1"]
                .iter()
                .filter_map(|r| live.get(r).first().cloned())
                .collect();
            if instances.len() == 3 {
                for r in &instances[..2] {
                    let aws::LiveState::Instance { private_ip, .. } = &r.state else {
                        unreachable!()
                    };
                    let name = format!("ip-{}", private_ip.as_deref().unwrap().replace('.', "-"));
                    register_node(&client, &name, &format!("aws:///us-east-1a/{}", r.aws_id)).await;
                }
                return instances[2].clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the instances never appeared");
    });
    let (summary, _) = run(graph).await;
    let missing = joiner.await.unwrap();
    let aws::LiveState::Instance { private_ip, .. } = &missing.state else {
        unreachable!()
    };
    let host = format!("ip-{}", private_ip.as_deref().unwrap().replace('.', "-"));
    match gate_state(&summary) {
        NodeState::Failed { error, .. } => {
            assert_eq!(
                error,
                &format!(
                    "control plane of lonely: 2 of 3 nodes Ready after 3s: {host} ({}) missing",
                    missing.aws_id
                )
            );
        }
        other => panic!("the gate must fail naming the missing node, got {other:?}"),
    }
    assert!(!summary.converged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_ready_node_blocks_the_gate_until_it_is_ready() {
    let bed = Bed::new("flaky", 1).await;
    let sb = sandbox(Some(&bed.moto), Duration::from_millis(100)).await;
    let override_url = Some(format!("{}/clusters/{{env}}", sb.url()));
    // First the cloud layer alone, so the nodes exist before the gate runs.
    let graph = bed
        .graph(
            override_url.clone(),
            gate_opts(Duration::from_secs(20)),
            true,
        )
        .await;
    let (summary, _) = run(graph).await;
    assert!(summary.converged, "{}", failures(&summary));
    let client = client_for(&ClusterAccess::k3s(bed.home.path(), "flaky").unwrap())
        .await
        .unwrap();
    let nodes = Api::<Node>::all(client)
        .list(&Default::default())
        .await
        .unwrap()
        .items;
    let agent = nodes
        .iter()
        .find(|n| {
            !n.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key("node-role.kubernetes.io/control-plane"))
        })
        .expect("an agent node");
    let name = agent.metadata.name.clone().unwrap();
    let instance = agent
        .spec
        .as_ref()
        .unwrap()
        .provider_id
        .clone()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    assert!(sb.set_node_ready("flaky", &name, false));

    let graph = bed
        .graph(
            override_url.clone(),
            gate_opts(Duration::from_secs(2)),
            false,
        )
        .await;
    let (summary, _) = run(graph).await;
    match gate_state(&summary) {
        NodeState::Failed { error, .. } => assert_eq!(
            error,
            &format!(
                "control plane of flaky: 1 of 2 nodes Ready after 2s: {name} ({instance}) NotReady"
            )
        ),
        other => panic!("a NotReady node must block the gate, got {other:?}"),
    }

    // Ready again while the gate waits: it converges.
    let graph = bed
        .graph(override_url, gate_opts(Duration::from_secs(20)), false)
        .await;
    let flip = {
        let sb_addr = sb.addr();
        let name = name.clone();
        tokio::spawn(async move {
            // Long enough for the gate's first poll on a loaded machine: before it, the gate
            // observes EC2 twice (instances, then terminated ones) and lists the nodes.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let _ = moto::request(
                sb_addr.port(),
                "POST",
                &format!("/testenv/clusters/flaky/nodes/{name}/ready?value=true"),
                &[],
                "",
                Duration::from_secs(20),
            );
        })
    };
    let (summary, progress) = run(graph).await;
    flip.await.unwrap();
    assert!(summary.converged, "{}", failures(&summary));
    assert!(
        progress.iter().any(|m| m.contains("NotReady")),
        "it waited on the NotReady node: {progress:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_cluster_is_gated_through_its_kubeconfig_and_context() {
    let sb = control_plane::ControlPlane::start_async(control_plane::Options {
        static_nodes: 1,
        ready_delay: Duration::from_millis(100),
        ..control_plane::Options::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    sb.write_kubeconfig(&kubeconfig, Some("staging")).unwrap();
    let existing = Existing {
        kubeconfig: kubeconfig.display().to_string(),
        context: Some("staging".into()),
    };
    let gate = |access: ClusterAccess, timeout| {
        let mut graph = Graph::new();
        let (spec, action) = control_plane_node(
            GateTarget::Existing {
                env_name: "ext".into(),
                access,
            },
            gate_opts(timeout),
        );
        assert!(
            spec.depends_on.is_empty(),
            "nothing to wait for below an existing cluster"
        );
        graph.add(spec, action).unwrap();
        graph
    };
    let (summary, _) = run(gate(
        ClusterAccess::existing(&existing),
        Duration::from_secs(20),
    ))
    .await;
    assert!(summary.converged, "{}", failures(&summary));

    // A context the kubeconfig lacks: a permanent error naming the file and the valid contexts.
    let wrong = Existing {
        context: Some("prod".into()),
        ..existing.clone()
    };
    let (summary, _) = run(gate(
        ClusterAccess::existing(&wrong),
        Duration::from_secs(20),
    ))
    .await;
    match gate_state(&summary) {
        NodeState::Failed { error, timed_out } => {
            assert!(!timed_out);
            assert!(
                error.contains("has no context \"prod\" (contexts: staging)"),
                "{error}"
            );
            assert!(error.contains(&kubeconfig.display().to_string()), "{error}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }

    // Its only node NotReady: the gate names that nothing is Ready.
    assert!(sb.set_node_ready("staging", "node-1", false));
    let (summary, _) = run(gate(
        ClusterAccess::existing(&existing),
        Duration::from_secs(2),
    ))
    .await;
    match gate_state(&summary) {
        NodeState::Failed { error, .. } => assert_eq!(
            error,
            "control plane of ext: 0 of at least 1 nodes Ready after 2s: node-1 NotReady"
        ),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_api_server_times_out_naming_the_endpoint() {
    let bed = Bed::new("silent", 0).await;
    // A listener that accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let opts = GateOptions {
        timeout: Duration::from_secs(3),
        poll_interval: Duration::from_millis(100),
        client: phoenix::providers::cluster::ClientTimeouts {
            connect: Duration::from_secs(1),
            read: Duration::from_millis(500),
            write: Duration::from_millis(500),
        },
        ..GateOptions::default()
    };
    let graph = bed
        .graph(
            Some(format!("http://127.0.0.1:{port}/clusters/{{env}}")),
            opts,
            true,
        )
        .await;
    let (summary, _) = run(graph).await;
    hold.abort();
    match gate_state(&summary) {
        NodeState::Failed { error, .. } => {
            assert!(
                error.starts_with(
                    "control plane of silent: API server not ready after 3s: GET http://127.0.0.1:"
                ) && error.contains("/clusters/silent/readyz"),
                "{error}"
            );
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// A running-then-terminated instance, tagged as a copy of `instance/agent/0` of `env` when
/// `env` is given (an instance phoenix replaced), untagged otherwise (someone else's).
async fn terminated_instance(bed: &Bed, env: Option<&str>) -> String {
    let live = aws::observe(&bed.ec2, &bed.env).await.unwrap();
    let subnet = live.get("subnet/public-a")[0].aws_id.clone();
    let mut req = bed
        .ec2
        .client()
        .run_instances()
        .image_id("ami-03c3da4cfa8e8943a")
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .subnet_id(subnet);
    if let Some(env) = env {
        let tag = |k: &str, v: &str| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build();
        req = req.tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Instance)
                .tags(tag("phoenix:env", env))
                .tags(tag("phoenix:resource", "instance/agent/0"))
                .tags(tag("phoenix:role", "agent"))
                .build(),
        );
    }
    let id = req.send().await.unwrap().instances()[0]
        .instance_id()
        .unwrap()
        .to_string();
    bed.ec2
        .client()
        .terminate_instances()
        .instance_ids(&id)
        .send()
        .await
        .unwrap();
    id
}

/// Issue 14, item 4: k3s keeps the Node of a terminated instance (no cloud controller). The
/// gate deletes the Nodes of instances phoenix terminated, and leaves every other Node alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_instances_phoenix_terminated_are_deleted_and_no_others() {
    let bed = Bed::new("demo", 1).await;
    let sb = sandbox(Some(&bed.moto), Duration::from_millis(200)).await;
    let override_url = format!("{}/clusters/{{env}}", sb.url());
    let graph = bed
        .graph(
            Some(override_url.clone()),
            gate_opts(Duration::from_secs(60)),
            true,
        )
        .await;
    let (summary, _) = run(graph).await;
    assert!(summary.converged, "{}", failures(&summary));

    let ours = terminated_instance(&bed, Some("demo")).await;
    let theirs = terminated_instance(&bed, None).await;
    let client = client_for(&ClusterAccess::k3s(bed.home.path(), "demo").unwrap())
        .await
        .unwrap();
    let nodes = Api::<Node>::all(client.clone());
    for (name, id) in [("stale-agent", &ours), ("someone-elses", &theirs)] {
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": { "name": name },
            "spec": { "providerID": format!("aws:///us-east-1a/{id}") },
        }))
        .unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
    }

    let graph = bed
        .graph(
            Some(override_url),
            gate_opts(Duration::from_secs(60)),
            false,
        )
        .await;
    let (summary, progress) = run(graph).await;
    assert!(summary.converged, "{}", failures(&summary));
    assert!(
        progress
            .iter()
            .any(|m| m.contains(&format!("deleted Node stale-agent of instance {ours}"))),
        "{progress:#?}"
    );
    let names: Vec<String> = nodes
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(!names.contains(&"stale-agent".to_string()), "{names:?}");
    assert!(
        names.contains(&"someone-elses".to_string()),
        "a Node of an instance phoenix does not own stays: {names:?}"
    );
}
