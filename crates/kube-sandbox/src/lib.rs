//! kube-sandbox: a loopback Kubernetes API server with a simulated kubelet, controllers and nodes, for
//! phoenix's tests, demo and benchmarks.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kube_sandbox::Error> {
//! let sandbox = kube_sandbox::Sandbox::start(kube_sandbox::Config::default()).await?;
//! println!("{}", sandbox.url()); // http://127.0.0.1:PORT (cluster "default")
//! println!("{}", sandbox.cluster_url("demo")); // http://127.0.0.1:PORT/clusters/demo
//! sandbox.stop();
//! # Ok(()) }
//! ```

pub mod api;
pub mod cluster;
pub mod controller;
pub mod defaults;
pub mod ec2;
pub mod patch;
pub mod pods;
pub mod schema;
pub mod selectors;
pub mod server;
pub mod ssa;
pub mod table;
pub mod tls;
pub mod util;

pub use controller::{FAIL_ANNOTATION, READY_DELAY_ANNOTATION};
pub use ec2::Ec2Config;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::{AbortHandle, JoinSet};

/// How to run a sandbox.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to bind; port 0 picks a free port. Default 127.0.0.1:0.
    pub listen: SocketAddr,
    /// How long workloads take to become ready (overridable per object by annotation). Default 1s.
    pub ready_delay: Duration,
    /// How long an EC2-registered node takes to become Ready. Default 1s.
    pub node_delay: Duration,
    /// Ready nodes every cluster gets when it is created. Default 1.
    pub nodes: usize,
    /// Reported by /version and in nodes' kubeletVersion. Default v1.36.0.
    pub kubernetes_version: String,
    /// Register nodes from an EC2 endpoint (moto).
    pub ec2: Option<Ec2Config>,
    /// Serve HTTPS with a generated CA; clients authenticate with the client certificate or the token.
    pub tls: bool,
    /// Require `Authorization: Bearer TOKEN` (unless a valid client certificate was presented).
    pub token: Option<String>,
    /// Watch events retained per cluster for resuming watches; older resourceVersions get 410 Gone.
    /// Default 10,000.
    pub watch_history: usize,
    /// Log one line per request (method, path, status, duration) and EC2 poll errors to stderr.
    pub log_requests: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ready_delay: Duration::from_secs(1),
            node_delay: Duration::from_secs(1),
            nodes: 1,
            kubernetes_version: "v1.36.0".into(),
            ec2: None,
            tls: false,
            token: None,
            watch_history: cluster::DEFAULT_HISTORY,
            log_requests: false,
        }
    }
}

/// The parts of the configuration the running server and its controllers read.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ready_delay: Duration,
    pub node_delay: Duration,
    pub nodes: usize,
    pub kubernetes_version: String,
    pub watch_history: usize,
    pub log_requests: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("error binding {0}")]
    Bind(SocketAddr, #[source] std::io::Error),
    #[error("error setting up TLS")]
    Tls(#[from] tls::TlsError),
    #[error("error writing kubeconfig {0}")]
    Kubeconfig(String, #[source] std::io::Error),
    #[error("error starting the sandbox runtime")]
    Runtime(#[source] std::io::Error),
    #[error("the sandbox thread stopped before it started serving")]
    ThreadExited,
    #[error("invalid Kubernetes version {0:?}: expected vMAJOR.MINOR[.PATCH][+meta]")]
    InvalidVersion(String),
    #[error("invalid cluster name {0:?}: must be a DNS-1123 subdomain")]
    InvalidCluster(String),
}

/// Entry point.
pub struct Sandbox;

/// A running sandbox; dropping it stops the server, its controllers and its EC2 poller.
pub struct SandboxHandle {
    addr: SocketAddr,
    shared: Arc<server::Shared>,
    tls: Option<tls::TlsMaterial>,
    token: Option<String>,
    tasks: Vec<AbortHandle>,
    thread_stop: Option<std::sync::mpsc::Sender<()>>,
}

/// Makes ring the process-wide rustls provider, once. When rustls is built with both ring and
/// aws-lc-rs (a workspace build that also compiles the AWS SDK unifies both features), rustls
/// cannot pick a default and panics on the first TLS config; the sandbox's TLS listener and the
/// kube-rs clients of its tests both need one.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    });
}

impl Sandbox {
    /// Start serving on the current tokio runtime.
    pub async fn start(config: Config) -> Result<SandboxHandle, Error> {
        install_crypto_provider();
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| Error::Bind(config.listen, e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Bind(config.listen, e))?;
        let material = if config.tls {
            Some(tls::TlsMaterial::generate()?)
        } else {
            None
        };
        let acceptor = match &material {
            Some(m) => Some(tokio_rustls::TlsAcceptor::from(m.server_config()?)),
            None => None,
        };
        let auth = if config.tls || config.token.is_some() {
            Some(tls::Auth {
                token: config.token.clone(),
            })
        } else {
            None
        };
        let settings = Settings {
            ready_delay: config.ready_delay,
            node_delay: config.node_delay,
            nodes: config.nodes,
            kubernetes_version: config.kubernetes_version.clone(),
            watch_history: config.watch_history,
            log_requests: config.log_requests,
        };
        let shared = Arc::new(server::Shared {
            clusters: std::sync::Mutex::new(Default::default()),
            settings,
            auth,
            tasks: std::sync::Mutex::new(Vec::new()),
            rt: tokio::runtime::Handle::current(),
        });
        shared.cluster("default");
        let mut tasks =
            vec![tokio::spawn(accept_loop(listener, shared.clone(), acceptor)).abort_handle()];
        if let Some(ec2) = config.ec2.clone() {
            tasks.push(
                tokio::spawn(ec2::run(
                    shared.clone(),
                    ec2,
                    config.node_delay,
                    config.log_requests,
                ))
                .abort_handle(),
            );
        }
        Ok(SandboxHandle {
            addr,
            shared,
            tls: material,
            token: config.token,
            tasks,
            thread_stop: None,
        })
    }

    /// Start on a dedicated thread with its own runtime (for synchronous tests and tools).
    pub fn start_in_thread(config: Config) -> Result<SandboxHandle, Error> {
        install_crypto_provider();
        let (tx, rx) = std::sync::mpsc::channel::<Result<SandboxHandle, Error>>();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("kube-sandbox".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(Error::Runtime(e)));
                        return;
                    }
                };
                let handle = rt.block_on(Sandbox::start(config));
                let keep = match handle {
                    Ok(h) => {
                        let inner = SandboxHandle {
                            addr: h.addr,
                            shared: h.shared.clone(),
                            tls: h.tls.clone(),
                            token: h.token.clone(),
                            tasks: Vec::new(),
                            thread_stop: None,
                        };
                        let _ = tx.send(Ok(inner));
                        h
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                // Wait until the handle is dropped (the sender side closes).
                let _ = stop_rx.recv();
                drop(keep);
                rt.shutdown_timeout(Duration::from_millis(100));
            })
            .map_err(Error::Runtime)?;
        let mut h = rx.recv().map_err(|_| Error::ThreadExited)??;
        h.thread_stop = Some(stop_tx);
        Ok(h)
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<server::Shared>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
) {
    // Connections live in the JoinSet, so aborting this task closes them all.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            // accept() is cancel-safe.
            r = listener.accept() => {
                let Ok((stream, _)) = r else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                conns.spawn(serve_conn(stream, shared.clone(), acceptor.clone()));
            }
            // join_next() is cancel-safe; it only reaps finished connections.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_conn(
    stream: tokio::net::TcpStream,
    shared: Arc<server::Shared>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    match acceptor {
        None => {
            let s = shared.clone();
            let svc = hyper::service::service_fn(move |req| server::handle(s.clone(), req, false));
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        }
        Some(acc) => {
            let Ok(tls) = acc.accept(stream).await else {
                return;
            };
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty());
            let s = shared.clone();
            let svc = hyper::service::service_fn(move |req| server::handle(s.clone(), req, cert));
            let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
        }
    }
}

impl SandboxHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The default cluster's server URL, e.g. `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        // A wildcard bind is reached through loopback (the serving certificate names 127.0.0.1).
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        }
        format!("{scheme}://{addr}")
    }

    /// The server URL of a named cluster, e.g. `http://127.0.0.1:PORT/clusters/demo`.
    pub fn cluster_url(&self, cluster: &str) -> String {
        format!("{}/clusters/{cluster}", self.url())
    }

    /// Generated TLS material (with `Config::tls`).
    pub fn tls(&self) -> Option<&tls::TlsMaterial> {
        self.tls.as_ref()
    }

    /// A kubeconfig for the default cluster (None) or a named cluster.
    pub fn kubeconfig(&self, cluster: Option<&str>) -> String {
        kubeconfig_yaml(
            &match cluster {
                Some(c) => self.cluster_url(c),
                None => self.url(),
            },
            cluster.unwrap_or("sandbox"),
            self.tls.as_ref(),
            self.token.as_deref(),
        )
    }

    pub fn write_kubeconfig(&self, path: &Path, cluster: Option<&str>) -> Result<(), Error> {
        std::fs::write(path, self.kubeconfig(cluster))
            .map_err(|e| Error::Kubeconfig(path.display().to_string(), e))
    }

    /// Names of the clusters that exist so far.
    pub fn clusters(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .shared
            .clusters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// Force a node NotReady (`ready: false`, it stays so until reset) or clear the override (`ready: true`).
    /// Returns false when the cluster or node does not exist. Same as the admin endpoints.
    pub fn set_node_ready(&self, cluster: &str, node: &str, ready: bool) -> bool {
        let Some(c) = self.shared.existing(cluster) else {
            return false;
        };
        let mut st = c.lock();
        if st.get(&(String::new(), "nodes".into()), "", node).is_none() {
            return false;
        }
        if ready {
            st.forced_not_ready.remove(node);
        } else {
            st.forced_not_ready.insert(node.to_string());
        }
        controller::refresh_node(&mut st, node);
        true
    }

    /// Set a cluster's Kubernetes version (creating the cluster if needed): `/version` and nodes follow.
    pub fn set_kubernetes_version(&self, cluster: &str, version: &str) -> Result<(), Error> {
        if !server::valid_version(version) {
            return Err(Error::InvalidVersion(version.to_string()));
        }
        if util::validate_dns1123_subdomain(cluster).is_some() {
            return Err(Error::InvalidCluster(cluster.to_string()));
        }
        self.shared.cluster(cluster).set_version(version);
        Ok(())
    }

    /// Wipe a cluster (objects, nodes, controller; watches end); it is created afresh on next use.
    /// False when it does not exist.
    pub fn wipe_cluster(&self, cluster: &str) -> bool {
        self.shared.remove_cluster(cluster)
    }

    /// Stop serving (also done on drop).
    pub fn stop(self) {}
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if !self.tasks.is_empty() {
            for t in self
                .shared
                .tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..)
            {
                t.abort();
            }
        }
        if let Some(s) = self.thread_stop.take() {
            let _ = s.send(());
        }
    }
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A kubeconfig YAML document for a server URL.
pub fn kubeconfig_yaml(
    server: &str,
    name: &str,
    tls: Option<&tls::TlsMaterial>,
    token: Option<&str>,
) -> String {
    let mut cluster = format!("    server: {server}\n");
    if let Some(t) = tls {
        cluster.push_str(&format!(
            "    certificate-authority-data: {}\n",
            b64(&t.ca_pem)
        ));
    }
    let mut user = String::new();
    if let Some(tok) = token {
        user.push_str(&format!("    token: {tok}\n"));
    } else if let Some(t) = tls {
        user.push_str(&format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(&t.client_cert_pem),
            b64(&t.client_key_pem)
        ));
    }
    if user.is_empty() {
        user.push_str("    {}\n");
        user = "  user: {}\n".to_string();
    } else {
        user = format!("  user:\n{user}");
    }
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n{cluster}contexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\n    namespace: default\ncurrent-context: {name}\nusers:\n- name: {name}\n{user}preferences: {{}}\n"
    )
}
