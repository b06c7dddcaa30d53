//! The end-to-end test bed: moto, the real control plane (testenv) registering nodes from moto's
//! instances (so the cluster's nodes join only after the cloud layer launched them), and a git repo
//! with this project's demo environment; the real `phoenix` binary pointed at all three.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};

use crate::control_plane::{self, ControlPlane};
use crate::ec2;
use crate::git::{Repo, Sandbox as GitSandbox};
use crate::moto::Moto;

pub use crate::ec2::REGION;
pub const DB_PASSWORD: &str = "demo-db-password-for-tests";
/// The demo's cluster secret (`spec.cluster.secret`): every cluster credential derives from it.
pub const CLUSTER_SECRET: &str = "demo-cluster-secret-for-tests-0123456789abcdef";

/// moto + the real control plane fed by it + a git repo with the demo.
pub struct Bed {
    pub moto: Moto,
    pub kube: ControlPlane,
    pub git: GitSandbox,
    pub rt: tokio::runtime::Runtime,
}

impl Bed {
    pub fn new() -> Bed {
        let moto = Moto::start();
        let kube = Bed::control_plane_for(&moto);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // The demo's records go in a zone the organisation already has.
        rt.block_on(crate::route53::create_zone(
            &moto.endpoint(),
            crate::route53::DEMO_ZONE,
        ));
        Bed {
            moto,
            kube,
            git: GitSandbox::new(),
            rt,
        }
    }

    /// The real control plane registering nodes from `moto`'s instances, with short delays; the
    /// nodes report the demo's k3s release as their kubelet version.
    pub fn control_plane_for(moto: &Moto) -> ControlPlane {
        ControlPlane::start_with(control_plane::Options {
            ec2_endpoint: Some(moto.endpoint()),
            region: REGION.into(),
            node_version: "v1.37.2+k3s1".into(),
            node_delay: Duration::from_millis(300),
            ready_delay: Duration::from_millis(300),
            static_nodes: 0,
            k3s_addons: true,
            // As real k3s (no cloud controller): a terminated instance's Node stays until phoenix
            // deletes it.
            keep_terminated_nodes: true,
        })
    }

    /// A repo holding this project's demo environment and templates, committed.
    pub fn demo_repo(&self) -> Repo<'_> {
        let repo = self.git.repo("envs");
        let root = crate::repo_root();
        copy_tree(
            &root.join("environments/demo"),
            &repo.dir.join("environments/demo"),
        );
        copy_tree(&root.join("templates"), &repo.dir.join("templates"));
        repo.commit("the demo");
        repo
    }

    pub fn command(&self, dir: &Path) -> Command {
        let mut cmd = hermetic(&self.git, dir);
        cmd.env("AWS_ENDPOINT_URL", self.moto.endpoint())
            .env(
                "PHOENIX_CLUSTER_ENDPOINT",
                format!("{}/clusters/{{env}}", self.kube.url()),
            )
            .env("PHOENIX_DEMO_DB_PASSWORD", DB_PASSWORD)
            .env("PHOENIX_DEMO_CLUSTER_SECRET", CLUSTER_SECRET);
        // The demo's ingress add-on is a chart: Helm 4 as scripts/setup builds it, unless
        // PHOENIX_HELM names one.
        if std::env::var_os("PHOENIX_HELM").is_none() {
            cmd.env("PHOENIX_HELM", crate::repo_root().join("testenv/bin/helm"));
        }
        cmd
    }

    pub fn phoenix(&self, dir: &Path, args: &[&str]) -> Output {
        self.command(dir).args(args).output().expect("run phoenix")
    }

    pub fn client(&self, cluster: &str) -> kube::Client {
        let _guard = self.rt.enter();
        control_plane::client(&self.kube.cluster_url(cluster))
    }

    pub fn deployments(&self, cluster: &str, ns: &str) -> Vec<Deployment> {
        let api: Api<Deployment> = Api::namespaced(self.client(cluster), ns);
        self.rt
            .block_on(api.list(&ListParams::default()))
            .expect("list deployments")
            .items
    }

    pub fn nodes(&self, cluster: &str) -> Vec<Node> {
        let api: Api<Node> = Api::all(self.client(cluster));
        self.rt
            .block_on(api.list(&ListParams::default()))
            .expect("list nodes")
            .items
    }
}

pub fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for entry in std::fs::read_dir(src).expect("read dir") {
        let entry = entry.expect("dir entry");
        let to = dst.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).expect("copy file");
        }
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The last stdout line of `--output json`: the run report.
pub fn report(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("report line is JSON ({e}):\n{last}"))
}

pub fn node_outcome<'a>(report: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    report["summary"]["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["id"] == id))
        .unwrap_or_else(|| panic!("node {id} in the report: {report}"))
}

pub fn names(deployments: &[Deployment]) -> Vec<String> {
    let mut v: Vec<String> = deployments
        .iter()
        .filter_map(|d| d.metadata.name.clone())
        .collect();
    v.sort();
    v
}

impl Bed {
    /// The SDK's EC2 client on moto (for changing things behind phoenix's back).
    pub fn ec2_client(&self) -> aws_sdk_ec2::Client {
        self.rt.block_on(ec2::sdk_client(&self.moto.endpoint()))
    }

    /// phoenix's EC2 client on moto (to observe what phoenix sees).
    pub fn ec2(&self) -> phoenix::providers::aws::Ec2 {
        self.rt.block_on(ec2::client(&self.moto.endpoint()))
    }

    /// How many live cloud resources carry `env`'s ownership tags.
    pub fn live_cloud(&self, env: &str) -> usize {
        let ec2 = self.ec2();
        let live = self
            .rt
            .block_on(phoenix::providers::aws::observe(&ec2, env))
            .expect("observe");
        live.resources.values().map(Vec::len).sum()
    }

    /// kubectl with the kubeconfig phoenix wrote for `env`.
    pub fn kubectl(&self, env: &str, args: &[&str]) -> String {
        let kubeconfig = self
            .git
            .phoenix_home()
            .join(format!("clusters/{env}/kubeconfig"));
        let out = Command::new(control_plane::kubectl_binary())
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg("--request-timeout=20s")
            .args(args)
            .output()
            .expect("kubectl runs");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn phoenix_home_has(&self, rel: &str) -> bool {
        self.git.phoenix_home().join(rel).exists()
    }
}

/// The `phoenix` binary in `dir`, hermetic: the sandbox's HOME and PHOENIX_HOME, dummy AWS
/// credentials and the tests' region, no endpoint, profile or phoenix settings inherited from the
/// machine, no colour, no stdin. A test adds the endpoints it runs against.
pub fn hermetic(git: &GitSandbox, dir: &Path) -> Command {
    hermetic_program(&phoenix_binary(), git, dir)
}

/// [`hermetic`] for another program (a script that runs phoenix, say).
pub fn hermetic_program(program: &Path, git: &GitSandbox, dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir)
        .env("HOME", git.home())
        .env("PHOENIX_HOME", git.phoenix_home())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", REGION)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("PHOENIX_REPO")
        .env_remove("PHOENIX_CLUSTER_ENDPOINT")
        .env_remove("PHOENIX_TRUSTED_KEYS")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    cmd
}

/// The `phoenix` binary cargo built for this test run. Cargo names it to an integration test in
/// `CARGO_BIN_EXE_phoenix` at compile time only, which a library does not get; it is where that variable points:
/// next to the `deps/` directory holding the test binary.
pub fn phoenix_binary() -> std::path::PathBuf {
    let test = std::env::current_exe().expect("the test binary's path");
    let bin = test
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(format!("phoenix{}", std::env::consts::EXE_SUFFIX)))
        .expect("the test binary is in target/<profile>/deps");
    assert!(
        bin.is_file(),
        "{} not found: cargo builds it for integration tests",
        bin.display()
    );
    bin
}
