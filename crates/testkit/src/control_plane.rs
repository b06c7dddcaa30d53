//! The real Kubernetes control plane for tests: `testenv serve` (testenv/, built by scripts/setup) started by the
//! test on 127.0.0.1 with its own etcd, one kube-apiserver 1.37 + controller manager + scheduler + simulated
//! kubelet per cluster on first use, behind a plain-HTTP router at `/clusters/NAME`. Stopped when dropped. Also
//! clients for it with explicit timeouts, and kubectl 1.37.
//!

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How a control plane is started.
#[derive(Debug, Clone)]
pub struct Options {
    /// Nodes join as instances tagged `phoenix:env=CLUSTER` appear at this EC2 endpoint (moto).
    pub ec2_endpoint: Option<String>,
    pub region: String,
    /// Nodes `node-1..node-N` registered in every cluster regardless of EC2.
    pub static_nodes: usize,
    /// The kubeletVersion the nodes report (the env's k3s release in end-to-end tests).
    pub node_version: String,
    pub node_delay: Duration,
    pub ready_delay: Duration,
    /// Every cluster gets what a k3s server deploys at boot (CoreDNS, which phoenix's k3s gate waits for).
    pub k3s_addons: bool,
    /// Keep the Node of a terminated instance, as k3s without a cloud controller does (phoenix's
    /// cluster gate deletes the Nodes of instances it terminated); false: the kubelet removes it.
    pub keep_terminated_nodes: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ec2_endpoint: None,
            region: "us-east-1".into(),
            static_nodes: 1,
            node_version: "v1.37.2".into(),
            node_delay: Duration::from_millis(200),
            ready_delay: Duration::from_millis(200),
            k3s_addons: false,
            keep_terminated_nodes: false,
        }
    }
}

/// A running `testenv serve`.
pub struct ControlPlane {
    child: Child,
    base: String,
    port: u16,
    dir: tempfile::TempDir,
}

/// `$PHOENIX_TESTENV`, else `<repo>/testenv/bin/testenv` (built by scripts/setup).
pub fn testenv_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PHOENIX_TESTENV") {
        return PathBuf::from(p);
    }
    let built = crate::repo_root().join("testenv/bin/testenv");
    if built.is_file() {
        return built;
    }
    panic!(
        "the test control plane is not built: run scripts/setup (it builds testenv/bin/testenv with Go >= 1.26), \
         or set PHOENIX_TESTENV"
    );
}

impl ControlPlane {
    /// Starts a control plane with short delays and no EC2 source.
    pub fn start() -> ControlPlane {
        ControlPlane::start_with(Options::default())
    }

    /// Starts one; blocks until the router answers (clusters start on first use).
    pub fn start_with(opts: Options) -> ControlPlane {
        install_crypto();
        let dir = tempfile::Builder::new()
            .prefix("phoenix-testenv-")
            .tempdir()
            .expect("temp dir");
        let log = std::fs::File::create(dir.path().join("serve.log")).expect("serve log");
        let mut cmd = Command::new(testenv_binary());
        cmd.arg("serve")
            .arg(format!("--dir={}", dir.path().display()))
            .arg("--listen=127.0.0.1:0")
            .arg(format!("--node-version={}", opts.node_version))
            .arg(format!("--node-delay={}ms", opts.node_delay.as_millis()))
            .arg(format!("--ready-delay={}ms", opts.ready_delay.as_millis()))
            .arg(format!("--static-nodes={}", opts.static_nodes))
            .arg("--ec2-poll=200ms")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        if opts.keep_terminated_nodes {
            cmd.arg("--delete-terminated-nodes=false");
        }
        if opts.k3s_addons {
            cmd.arg("--k3s-addons");
        }
        if let Some(ep) = &opts.ec2_endpoint {
            cmd.arg(format!("--ec2-endpoint={ep}"))
                .arg(format!("--ec2-region={}", opts.region));
        }
        let mut child = cmd.spawn().expect("testenv serve starts");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut base = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("endpoint: ") => {
                    let ep = line.trim_start_matches("endpoint: ");
                    base = Some(ep.trim_end_matches("/clusters/{env}").to_string());
                }
                Ok(line) if line == "ready" => break,
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    let log =
                        std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
                    panic!("testenv serve did not become ready within 120 s; its log:\n{log}");
                }
            }
        }
        let base = base.expect("testenv printed its endpoint");
        let port = base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("endpoint has a port");
        ControlPlane {
            child,
            base,
            port,
            dir,
        }
    }

    /// [`ControlPlane::start_with`] off the async workers.
    pub async fn start_async(opts: Options) -> ControlPlane {
        tokio::task::spawn_blocking(move || ControlPlane::start_with(opts))
            .await
            .expect("start task")
    }

    /// `http://127.0.0.1:PORT` (the router).
    pub fn url(&self) -> String {
        self.base.clone()
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The router URL of one cluster (plain HTTP; the router authenticates for the caller). The
    /// cluster is started first, so a test's own timeouts do not include the control plane's boot.
    pub fn cluster_url(&self, cluster: &str) -> String {
        self.ensure(cluster);
        format!("{}/clusters/{cluster}", self.base)
    }

    /// Starts `cluster` if needed and waits until it serves.
    pub fn ensure(&self, cluster: &str) {
        let (status, body) = self.control("POST", &format!("/testenv/clusters/{cluster}"));
        assert_eq!(status, 200, "starting cluster {cluster}: {body}");
    }

    /// A kubeconfig with direct TLS + token access to the cluster's own kube-apiserver (no router); its
    /// cluster, user and context are all named after the cluster (`default` for None).
    pub fn kubeconfig(&self, cluster: Option<&str>) -> String {
        let cluster = cluster.unwrap_or("default");
        let (status, body) =
            self.control("GET", &format!("/testenv/clusters/{cluster}/kubeconfig"));
        assert_eq!(status, 200, "kubeconfig of {cluster}: {body}");
        body
    }

    pub fn write_kubeconfig(&self, path: &Path, cluster: Option<&str>) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig(cluster))
    }

    /// Makes the simulated kubelet report `node` Ready or NotReady, and waits until the Node shows it; false
    /// when there is no such node.
    pub fn set_node_ready(&self, cluster: &str, node: &str, ready: bool) -> bool {
        let (status, body) = self.control(
            "POST",
            &format!("/testenv/clusters/{cluster}/nodes/{node}/ready?value={ready}"),
        );
        match status {
            200 => true,
            404 => false,
            _ => panic!("setting {cluster}/{node} ready={ready}: HTTP {status}: {body}"),
        }
    }

    /// Stops a cluster's control plane and deletes its data, as losing its machines would.
    pub fn wipe_cluster(&self, cluster: &str) -> bool {
        let (status, _) = self.control("DELETE", &format!("/testenv/clusters/{cluster}"));
        status == 200
    }

    /// The clusters running now.
    pub fn clusters(&self) -> Vec<String> {
        let (status, body) = self.control("GET", "/testenv/clusters");
        assert_eq!(status, 200, "listing clusters: {body}");
        serde_json::from_str(&body).expect("cluster list is JSON")
    }

    /// The directory holding the components' logs (`clusters/NAME/*.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn control(&self, method: &str, path: &str) -> (u16, String) {
        http(self.addr(), method, path, Duration::from_secs(180))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // SIGKILL: the components die with it (they are started with a parent-death signal), and a test has no
        // use for a graceful shutdown.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One plain HTTP/1.1 request to the router's control API, bounded by `timeout`.
fn http(addr: std::net::SocketAddr, method: &str, path: &str, timeout: Duration) -> (u16, String) {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to testenv");
    stream
        .set_read_timeout(Some(timeout))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .expect("write timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A client for `url` with every timeout set: the provider adds none of its own.
pub fn client(url: &str) -> kube::Client {
    install_crypto();
    let mut cfg = kube::Config::new(url.parse().expect("cluster url parses"));
    cfg.connect_timeout = Some(Duration::from_secs(5));
    cfg.read_timeout = Some(Duration::from_secs(30));
    cfg.write_timeout = Some(Duration::from_secs(30));
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
    let venv = crate::repo_root().join(".venv/bin/kubectl");
    if venv.is_file() {
        return venv;
    }
    panic!("kubectl not found: set KUBECTL, or run scripts/setup (it installs kubectl 1.37 into .venv)");
}

/// Runs kubectl against `server` (a router cluster url); returns (success, stdout, stderr).
/// Blocking: call through `tokio::task::spawn_blocking` or `kubectl_async`.
pub fn kubectl(server: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(kubectl_binary())
        .arg(format!("--server={server}"))
        .arg("--request-timeout=30s")
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

/// [`kubectl`] off the async workers.
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

/// A control plane with short delays and no EC2 source, started off the async workers.
pub async fn start() -> ControlPlane {
    ControlPlane::start_async(Options::default()).await
}
