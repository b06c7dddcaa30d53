//! `kube-sandbox`: run the sandbox API server until interrupted.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "kube-sandbox",
    about = "A loopback Kubernetes API server with simulated nodes and controllers"
)]
struct Cli {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write a kubeconfig for the default cluster to this path.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// How long workloads take to become ready.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    ready_delay: Duration,
    /// How long an EC2-registered node takes to become Ready.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    node_delay: Duration,
    /// Ready nodes each cluster gets when created (default 1, or 0 with --ec2-endpoint).
    #[arg(long)]
    nodes: Option<usize>,
    /// Register nodes from this EC2 endpoint (e.g. a moto server at http://127.0.0.1:5000).
    #[arg(long)]
    ec2_endpoint: Option<String>,
    /// Region for the EC2 endpoint.
    #[arg(long, default_value = "us-east-1")]
    ec2_region: String,
    /// How often to poll the EC2 endpoint.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    ec2_poll: Duration,
    /// Version reported by /version and by nodes.
    #[arg(long, default_value = "v1.36.0")]
    kubernetes_version: String,
    /// Serve HTTPS with a generated CA; clients need the client certificate or the token.
    #[arg(long)]
    tls: bool,
    /// Log every request (and EC2 poll errors) to stderr.
    #[arg(short, long)]
    verbose: bool,
    /// Watch events retained per cluster (older resourceVersions get 410 Gone).
    #[arg(long, default_value_t = 10_000)]
    watch_history: usize,
    /// Require this bearer token.
    #[arg(long, env = "KUBE_SANDBOX_TOKEN")]
    token: Option<String>,
}

fn main() -> std::process::ExitCode {
    kube_sandbox::install_crypto_provider();
    let cli = Cli::parse();
    let config = kube_sandbox::Config {
        listen: cli.listen,
        ready_delay: cli.ready_delay,
        node_delay: cli.node_delay,
        nodes: cli
            .nodes
            .unwrap_or(if cli.ec2_endpoint.is_some() { 0 } else { 1 }),
        kubernetes_version: cli.kubernetes_version,
        ec2: cli.ec2_endpoint.map(|endpoint| kube_sandbox::Ec2Config {
            endpoint,
            region: cli.ec2_region,
            poll_interval: cli.ec2_poll,
        }),
        tls: cli.tls,
        token: cli.token,
        watch_history: cli.watch_history,
        log_requests: cli.verbose,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: error starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let handle = match kube_sandbox::Sandbox::start(config).await {
            Ok(h) => h,
            Err(e) => {
                eprintln!("error: {e}");
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    eprintln!("  caused by: {s}");
                    src = s.source();
                }
                return std::process::ExitCode::FAILURE;
            }
        };
        println!("listening on {}", handle.url());
        if let Some(path) = &cli.kubeconfig {
            if let Err(e) = handle.write_kubeconfig(path, None) {
                eprintln!("error: {e}");
                return std::process::ExitCode::FAILURE;
            }
            println!("kubeconfig written to {}", path.display());
        }
        let _ = tokio::signal::ctrl_c().await;
        drop(handle);
        std::process::ExitCode::SUCCESS
    })
}
