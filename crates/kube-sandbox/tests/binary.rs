//! The `kube-sandbox` binary: prints its address first, writes a working kubeconfig, honours its flags.

mod common;

use common::*;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::Api;
use tokio::io::{AsyncBufReadExt, BufReader};

async fn start(args: &[&str]) -> (tokio::process::Child, String, Vec<String>) {
    // The kube-rs clients these tests build need a rustls provider (see install_crypto_provider).
    kube_sandbox::install_crypto_provider();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kube-sandbox"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut out = Vec::new();
    let first = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
        .await
        .expect("first line in time")
        .unwrap()
        .expect("a first line");
    out.push(first.clone());
    if args.contains(&"--kubeconfig") {
        out.push(lines.next_line().await.unwrap().unwrap());
    }
    let url = first
        .strip_prefix("listening on ")
        .expect("first line names the address")
        .to_string();
    (child, url, out)
}

#[tokio::test]
async fn binary_prints_address_first_and_writes_kubeconfig() {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kc");
    let (_child, url, lines) = start(&[
        "--listen",
        "127.0.0.1:0",
        "--kubeconfig",
        kc.to_str().unwrap(),
        "--nodes",
        "3",
    ])
    .await;
    assert!(url.starts_with("http://127.0.0.1:"), "{lines:?}");
    assert!(lines[1].starts_with("kubeconfig written to"), "{lines:?}");
    let (code, v) = raw("GET", &format!("{url}/version"), "", "").await;
    assert_eq!((code, v["gitVersion"].as_str()), (200, Some("v1.36.0")));
    let yaml = std::fs::read_to_string(&kc).unwrap();
    assert!(yaml.contains(&format!("server: {url}")));
    let c = client_from_kubeconfig(&yaml).await;
    let nodes: Api<Node> = Api::all(c.clone());
    assert_eq!(
        nodes.list(&Default::default()).await.unwrap().items.len(),
        3,
        "--nodes 3"
    );
}

#[tokio::test]
async fn binary_with_tls_and_token_writes_matching_kubeconfig() {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kc");
    let (_child, url, _) = start(&[
        "--tls",
        "--token",
        "abc",
        "--kubeconfig",
        kc.to_str().unwrap(),
        "--kubernetes-version",
        "v1.31.4+k3s1",
    ])
    .await;
    assert!(url.starts_with("https://127.0.0.1:"));
    let yaml = std::fs::read_to_string(&kc).unwrap();
    assert!(yaml.contains("certificate-authority-data:") && yaml.contains("token: abc"));
    let c = client_from_kubeconfig(&yaml).await;
    let nss: Api<Namespace> = Api::all(c.clone());
    assert!(nss.get_opt("kube-system").await.unwrap().is_some());
    let v = c.apiserver_version().await.unwrap();
    assert_eq!(
        (v.major.as_str(), v.minor.as_str(), v.git_version.as_str()),
        ("1", "31", "v1.31.4+k3s1")
    );
}

#[tokio::test]
async fn binary_rejects_bad_flags() {
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_kube-sandbox"))
        .args(["--ready-delay", "soon"])
        .output()
        .await
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--ready-delay"));
}

#[tokio::test]
async fn binary_verbose_logs_requests_to_stderr() {
    let (mut child, url, _) = start(&["-v"]).await;
    let (code, _) = raw("GET", &format!("{url}/api/v1/namespaces/nope"), "", "").await;
    assert_eq!(code, 404);
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(5), err.next_line())
        .await
        .expect("a log line")
        .unwrap()
        .unwrap();
    assert!(
        line.starts_with("GET /api/v1/namespaces/nope -> 404"),
        "{line}"
    );
}
