//! Node registration from EC2 against a real moto server on loopback.
//! moto_server comes from $MOTO_SERVER, else <workspace>/.venv/bin/moto_server, else PATH; a missing moto fails
//! this test unless KUBE_SANDBOX_SKIP_MOTO=1.

mod common;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube_sandbox::ec2::parse_describe_instances;
use std::path::PathBuf;
use std::time::Duration;

fn moto_server() -> Option<PathBuf> {
    if std::env::var("KUBE_SANDBOX_SKIP_MOTO").as_deref() == Ok("1") {
        eprintln!("KUBE_SANDBOX_SKIP_MOTO=1: skipping the EC2 registration test");
        return None;
    }
    if let Some(p) = std::env::var_os("MOTO_SERVER") {
        return Some(PathBuf::from(p));
    }
    let venv = workspace_root().join(".venv/bin/moto_server");
    if venv.exists() {
        return Some(venv);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("moto_server"))
            .find(|p| p.exists())
    });
    assert!(
        on_path.is_some(),
        "moto_server not found ($MOTO_SERVER, <workspace>/.venv/bin/moto_server, PATH): install moto[server] 5.2 \
         (or set KUBE_SANDBOX_SKIP_MOTO=1 to skip)"
    );
    on_path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const AUTH: &str = "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=0";

async fn ec2(endpoint: &str, body: &str) -> String {
    let (code, text) = raw_text_headers(
        "POST",
        &format!("{endpoint}/"),
        "application/x-www-form-urlencoded",
        &format!("{body}&Version=2016-11-15"),
        &[("authorization", AUTH)],
    )
    .await;
    assert_eq!(code, 200, "EC2 {body}: {text}");
    text
}

async fn run_instance(endpoint: &str, env: Option<&str>, role: &str, zone: &str) -> String {
    let mut body = format!(
        "Action=RunInstances&ImageId=ami-12c6146b&MinCount=1&MaxCount=1&InstanceType=t3.micro&Placement.AvailabilityZone={zone}"
    );
    if let Some(env) = env {
        body.push_str(&format!(
            "&TagSpecification.1.ResourceType=instance&TagSpecification.1.Tag.1.Key=phoenix%3Aenv&TagSpecification.1.Tag.1.Value={env}\
             &TagSpecification.1.Tag.2.Key=phoenix%3Arole&TagSpecification.1.Tag.2.Value={role}"
        ));
    }
    let xml = ec2(endpoint, &body).await;
    let insts = parse_describe_instances(xml.as_bytes()).expect("RunInstances XML");
    insts[0].id.clone()
}

fn ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_follow_ec2_instances_tagged_for_each_cluster() {
    let Some(moto) = moto_server() else { return };
    let port = free_port();
    let _moto = tokio::process::Command::new(&moto)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("moto_server starts");
    let endpoint = format!("http://127.0.0.1:{port}");
    eventually("moto_server listening", Duration::from_secs(30), || async {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| ())
    })
    .await;
    let sb = sandbox_with(|c| {
        c.nodes = 0;
        c.ec2 = Some(kube_sandbox::Ec2Config {
            endpoint: endpoint.clone(),
            region: "us-east-1".into(),
            poll_interval: Duration::from_millis(200),
        });
    })
    .await;
    let demo = client(&sb.cluster_url("demo"));
    let nodes: Api<Node> = Api::all(demo.clone());
    let deps: Api<Deployment> = Api::namespaced(demo.clone(), "default");
    // The cluster exists (first request) but has no nodes: workloads do not become ready.
    deps.create(
        &PostParams::default(),
        &serde_json::from_value(deployment("web", 1, "nginx:1.27")).unwrap(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(nodes
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .is_empty());
    let d = deps.get("web").await.unwrap();
    assert_ne!(
        d.status.and_then(|s| s.available_replicas),
        Some(1),
        "no nodes, not available"
    );

    let server = run_instance(&endpoint, Some("demo"), "server", "us-east-1a").await;
    let agent = run_instance(&endpoint, Some("demo"), "agent", "us-east-1b").await;
    let other = run_instance(&endpoint, Some("other"), "agent", "us-east-1a").await;
    let _untagged = run_instance(&endpoint, None, "", "us-east-1a").await;

    let list = eventually(
        "two Ready nodes in demo",
        Duration::from_secs(15),
        || async {
            let l = nodes.list(&Default::default()).await.unwrap().items;
            (l.len() == 2 && l.iter().all(ready)).then_some(l)
        },
    )
    .await;
    let by_id = |id: &str| {
        list.iter()
            .find(|n| {
                n.spec
                    .as_ref()
                    .and_then(|s| s.provider_id.as_deref())
                    .is_some_and(|p| p.ends_with(id))
            })
            .cloned()
            .unwrap_or_else(|| panic!("node for {id} in {list:?}"))
    };
    let s = by_id(&server);
    let labels = s.metadata.labels.clone().unwrap();
    let name = s.metadata.name.clone().unwrap();
    assert!(
        name.starts_with("ip-"),
        "named after the private DNS name: {name}"
    );
    assert_eq!(labels["kubernetes.io/hostname"], name);
    assert_eq!(labels["node-role.kubernetes.io/control-plane"], "true");
    assert_eq!(labels["topology.kubernetes.io/zone"], "us-east-1a");
    assert_eq!(
        s.spec.unwrap().provider_id.unwrap(),
        format!("aws:///us-east-1a/{server}")
    );
    assert_eq!(
        s.status.unwrap().node_info.unwrap().kubelet_version,
        "v1.36.0"
    );
    let a = by_id(&agent);
    assert!(!a
        .metadata
        .labels
        .unwrap()
        .contains_key("node-role.kubernetes.io/control-plane"));
    let agent_name = a.metadata.name.unwrap();
    // The other cluster got its own node.
    let other_nodes: Api<Node> = Api::all(client(&sb.cluster_url("other")));
    let on = other_nodes.list(&Default::default()).await.unwrap().items;
    assert_eq!(on.len(), 1);
    assert!(on[0]
        .spec
        .as_ref()
        .unwrap()
        .provider_id
        .as_ref()
        .unwrap()
        .ends_with(&other));
    // Now the deployment becomes available.
    tokio::time::timeout(
        Duration::from_secs(10),
        await_condition(deps.clone(), "web", conditions::is_deployment_completed()),
    )
    .await
    .expect("deployment available once nodes are Ready")
    .unwrap();

    // Stopping the instance makes the node NotReady; starting it makes it Ready again.
    ec2(
        &endpoint,
        &format!("Action=StopInstances&InstanceId.1={agent}"),
    )
    .await;
    eventually("agent NotReady", Duration::from_secs(10), || async {
        let n = nodes.get(&agent_name).await.unwrap();
        (!ready(&n)).then_some(())
    })
    .await;
    ec2(
        &endpoint,
        &format!("Action=StartInstances&InstanceId.1={agent}"),
    )
    .await;
    eventually("agent Ready again", Duration::from_secs(10), || async {
        let n = nodes.get(&agent_name).await.unwrap();
        ready(&n).then_some(())
    })
    .await;
    // Terminating it deletes the node.
    ec2(
        &endpoint,
        &format!("Action=TerminateInstances&InstanceId.1={agent}"),
    )
    .await;
    eventually("agent node deleted", Duration::from_secs(10), || async {
        nodes
            .get_opt(&agent_name)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert_eq!(
        nodes.list(&Default::default()).await.unwrap().items.len(),
        1
    );
    // The admin endpoint lists all three clusters.
    let (_, v) = raw("GET", &format!("{}/sandbox/clusters", sb.url()), "", "").await;
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["default", "demo", "other"]);
    // Terminating the last instance of a cluster takes its control plane (all its objects) with it.
    ec2(
        &endpoint,
        &format!("Action=TerminateInstances&InstanceId.1={server}"),
    )
    .await;
    eventually("cluster demo wiped", Duration::from_secs(10), || async {
        let (_, v) = raw("GET", &format!("{}/sandbox/clusters", sb.url()), "", "").await;
        let names: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect();
        (!names.contains(&"demo".to_string())).then_some(())
    })
    .await;
    assert!(
        deps.get_opt("web").await.unwrap().is_none(),
        "a rebuilt cluster starts empty"
    );
    assert!(nodes
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .is_empty());
    // The admin endpoint lists the remaining clusters (demo exists again: the requests above recreated it).
    let (_, v) = raw("GET", &format!("{}/sandbox/clusters", sb.url()), "", "").await;
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["default", "demo", "other"]);
}
