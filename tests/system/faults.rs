//! API faults during `phoenix rebuild demo`: loopback fault proxies in front of moto (EC2) and
//! the real control plane (Kubernetes) inject 5xx bursts, throttling, dropped connections, a silent
//! endpoint and a restarted API server. Each run ends converged or with a clear failure within
//! its timeouts, and a re-run converges.

use testkit::{bed, fault_proxy, kube_proxy};

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bed::{report, text, Bed};
use fault_proxy::{Fault, FaultProxy};
use kube_proxy::{KubeFault, KubeProxy};

struct Proxied {
    bed: Bed,
    ec2: FaultProxy,
    kube: KubeProxy,
}

impl Proxied {
    fn new() -> Proxied {
        let bed = Bed::new();
        let ec2 = FaultProxy::start(bed.moto.port);
        let kube = KubeProxy::start(bed.kube.addr().port());
        Proxied { bed, ec2, kube }
    }

    fn command(&self, dir: &Path) -> Command {
        let mut cmd = self.bed.command(dir);
        cmd.env("AWS_ENDPOINT_URL", self.ec2.endpoint()).env(
            "PHOENIX_CLUSTER_ENDPOINT",
            format!("{}/clusters/{{env}}", self.kube.url()),
        );
        cmd
    }

    fn phoenix(&self, dir: &Path, args: &[&str]) -> Output {
        self.command(dir).args(args).output().expect("run phoenix")
    }
}

fn converged(out: &Output) {
    assert_eq!(out.status.code(), Some(0), "{}", text(out));
}

#[test]
fn bursts_of_5xx_and_throttling_are_retried_to_convergence() {
    let p = Proxied::new();
    let repo = p.bed.demo_repo();
    p.ec2.inject(Fault::ServerError, 4, None);
    p.ec2.inject(Fault::Throttle, 6, None);
    p.kube.inject(KubeFault::Unavailable, 6);
    let out = p.phoenix(&repo.dir, &["rebuild", "demo", "--output", "json"]);
    converged(&out);
    assert_eq!(report(&out)["summary"]["converged"], true);
    assert!(
        p.ec2.injected() >= 10,
        "EC2 faults were injected: {}",
        p.ec2.injected()
    );
    // Throttling and 500s from the API server during the add-on and app layers.
    p.kube.inject(KubeFault::Throttle, 5);
    let out = p.phoenix(&repo.dir, &["rebuild", "demo"]);
    converged(&out);
    p.kube.inject(KubeFault::ServerError, 5);
    let out = p.phoenix(&repo.dir, &["rebuild", "demo"]);
    converged(&out);
    assert!(
        p.kube.injected() >= 16,
        "kube faults injected: {}",
        p.kube.injected()
    );
    let out = p.phoenix(&repo.dir, &["diff", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn an_observation_throttled_past_the_sdk_retries_is_retried_as_a_whole() {
    let p = Proxied::new();
    let repo = p.bed.demo_repo();
    // The SDK makes 3 attempts per call: the first observation fails on the security groups,
    // the second one gets the last two throttles, then an answer.
    p.ec2
        .inject(Fault::Throttle, 5, Some("DescribeSecurityGroups"));
    let out = p.phoenix(&repo.dir, &["plan", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(p.ec2.injected(), 5, "every throttle was answered");
}

#[test]
fn dropped_connections_are_retried_to_convergence() {
    let p = Proxied::new();
    let repo = p.bed.demo_repo();
    p.ec2.inject(Fault::Drop, 5, None);
    p.kube.inject(KubeFault::Drop, 8);
    let out = p.phoenix(&repo.dir, &["rebuild", "demo"]);
    converged(&out);
    assert!(p.kube.injected() >= 8 && p.ec2.injected() >= 5);
}

#[test]
fn a_silent_api_server_fails_within_the_cluster_timeout_naming_it_then_a_rerun_converges() {
    let p = Proxied::new();
    let repo = p.bed.demo_repo();
    let env_file = repo.dir.join("environments/demo/environment.yaml");
    let env = std::fs::read_to_string(&env_file)
        .expect("read env")
        .replace(
            "  recoveryObjective: 5m\n",
            "  recoveryObjective: 5m\n  timeouts: { cluster: 15s }\n",
        );
    std::fs::write(&env_file, env).expect("write env");
    repo.commit("a short cluster timeout");
    p.kube.always(KubeFault::Silent);
    let started = Instant::now();
    let out = p.phoenix(&repo.dir, &["rebuild", "demo"]);
    let took = started.elapsed();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(took < Duration::from_secs(120), "bounded: {took:?}\n{all}");
    assert!(
        all.contains("cluster/control-plane") && all.contains(&p.kube.port.to_string()),
        "the failure names the gate and the endpoint:\n{all}"
    );
    assert!(
        all.contains("apps/web"),
        "the layers above are reported as skipped:\n{all}"
    );

    p.kube.pass();
    let out = p.phoenix(&repo.dir, &["rebuild", "demo"]);
    converged(&out);
}

#[test]
fn an_api_server_restarted_with_empty_state_mid_run_is_rebuilt_by_a_rerun() {
    let p = Proxied::new();
    let repo = p.bed.demo_repo();
    let out = p.phoenix(&repo.dir, &["rebuild", "demo"]);
    converged(&out);
    // A second sandbox on the same moto stands for the API server after a restart that lost
    // its state; the proxy switches to it while a rebuild runs.
    let restarted = Bed::control_plane_for(&p.bed.moto);
    let baseline = p.kube.requests();
    let mut child = p
        .command(&repo.dir)
        .args(["rebuild", "demo"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start rebuild");
    // Switch as soon as the run has reached the API server, so the switch lands inside it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while p.kube.requests() == baseline {
        assert!(
            std::time::Instant::now() < deadline,
            "the rebuild never reached the API server"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    p.kube.set_backend(restarted.addr().port());
    let at_switch = p.kube.requests();
    assert!(
        child.try_wait().expect("poll rebuild").is_none(),
        "the rebuild was still running when the server was switched"
    );
    let status = child.wait().expect("wait rebuild");
    assert!(
        status.code().is_some(),
        "the interrupted run exited on its own: {status:?}"
    );
    assert!(
        p.kube.requests() > at_switch,
        "the interrupted run went on talking to the restarted server"
    );
    let out = p.phoenix(&repo.dir, &["rebuild", "demo"]);
    converged(&out);
    let out = p.phoenix(&repo.dir, &["diff", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
