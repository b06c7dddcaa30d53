//! A real kubectl 1.37 against the sandbox. kubectl comes from $KUBECTL or <workspace>/.venv/bin/kubectl; a
//! missing kubectl fails these tests unless KUBE_SANDBOX_SKIP_KUBECTL=1.

mod common;

use common::*;
use kube_sandbox::SandboxHandle;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

struct Kubectl {
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl Kubectl {
    /// kubectl configured for `cluster` (None: the default cluster) of `sb`.
    fn new(sb: &SandboxHandle, cluster: Option<&str>) -> Option<Kubectl> {
        let bin = kubectl()?;
        let dir = tempfile::tempdir().expect("tempdir");
        sb.write_kubeconfig(&dir.path().join("kubeconfig"), cluster)
            .expect("kubeconfig");
        Some(Kubectl { bin, dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, content: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, content).expect("write manifest");
        p.display().to_string()
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.bin);
        c.args(args)
            .env("KUBECONFIG", self.path("kubeconfig"))
            .env("HOME", self.dir.path())
            .env_remove("KUBERNETES_SERVICE_HOST")
            .kill_on_drop(true);
        c
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[]).await
    }

    async fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = self.command(args);
        for (k, v) in env {
            c.env(k, v);
        }
        tokio::time::timeout(Duration::from_secs(60), c.output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
            .expect("kubectl runs")
    }

    /// Run, assert exit 0, return stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args).await;
        assert!(
            o.status.success(),
            "kubectl {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a).await).expect("kubectl -o json output")
    }
}

const WEB: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
  labels: {app: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: nginx:1.27
        ports: [{containerPort: 80}]
        env: [{name: MODE, value: prod}]
";

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_and_api_resources() {
    let sb = sandbox().await;
    let Some(k) = Kubectl::new(&sb, None) else {
        return;
    };
    let out = k.ok(&["get", "namespaces"]).await;
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(out.contains(ns), "{out}");
    }
    let out = k.ok(&["get", "deploy", "-A"]).await;
    assert!(out.contains("coredns"), "{out}");
    assert!(
        out.starts_with("NAMESPACE     NAME      READY   UP-TO-DATE   AVAILABLE   AGE"),
        "server-side table columns:\n{out}"
    );
    let out = k.ok(&["get", "nodes"]).await;
    assert!(
        out.contains("STATUS")
            && out.contains("Ready")
            && out.contains("control-plane")
            && out.contains("v1.36.0"),
        "{out}"
    );
    let out = k.ok(&["api-resources"]).await;
    assert!(
        out.lines()
            .any(|l| l.starts_with("deployments") && l.contains("deploy") && l.contains("apps/v1")),
        "{out}"
    );
    let out = k.ok(&["get", "nodes", "-o", "name"]).await;
    assert_eq!(out.trim(), "node/sandbox-node-1");
    let v = k.json(&["get", "ns", "default"]).await;
    assert_eq!(
        v["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "default"
    );
    let o = k.run(&["get", "configmap", "missing"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("configmaps \"missing\" not found"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_server_side_create_update_conflict_force() {
    let sb = sandbox().await;
    let Some(k) = Kubectl::new(&sb, None) else {
        return;
    };
    let f = k.write("web.yaml", WEB);
    let out = k.ok(&["apply", "--server-side", "-f", &f]).await;
    assert!(
        out.contains("deployment.apps/web serverside-applied"),
        "{out}"
    );
    let v = k
        .json(&["get", "deploy", "web", "--show-managed-fields"])
        .await;
    assert_eq!(v["spec"]["replicas"], 2);
    let mf = v["metadata"]["managedFields"].as_array().unwrap();
    assert!(mf
        .iter()
        .any(|m| m["manager"] == "kubectl" && m["operation"] == "Apply"));
    // Update.
    let f3 = k.write("web3.yaml", &WEB.replace("replicas: 2", "replicas: 3"));
    k.ok(&["apply", "--server-side", "-f", &f3]).await;
    assert_eq!(
        k.json(&["get", "deploy", "web"]).await["spec"]["replicas"],
        3
    );
    // Someone edits replicas; applying a different value now conflicts.
    let o = k
        .run_env(
            &["edit", "deploy/web"],
            &[("KUBE_EDITOR", "sed -i s/replicas:\\ 3/replicas:\\ 5/")],
        )
        .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let o = k.run(&["apply", "--server-side", "-f", &f3]).await;
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("Apply failed with 1 conflict: conflict with \"kubectl-edit\" using apps/v1: .spec.replicas"),
        "{err}"
    );
    assert_eq!(
        k.json(&["get", "deploy", "web"]).await["spec"]["replicas"],
        5,
        "a failed apply changes nothing"
    );
    k.ok(&["apply", "--server-side", "--force-conflicts", "-f", &f3])
        .await;
    let v = k
        .json(&["get", "deploy", "web", "--show-managed-fields"])
        .await;
    assert_eq!(v["spec"]["replicas"], 3);
    assert!(!v["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["manager"] == "kubectl-edit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_diff_server_side_exit_codes_and_live_state_unchanged() {
    let sb = sandbox().await;
    let Some(k) = Kubectl::new(&sb, None) else {
        return;
    };
    let f = k.write("web.yaml", WEB);
    k.ok(&["apply", "--server-side", "-f", &f]).await;
    // Let the controller write status first, so "unchanged" is checked against a settled object.
    k.ok(&[
        "wait",
        "--for=condition=Available",
        "deploy/web",
        "--timeout=20s",
    ])
    .await;
    let before = k.json(&["get", "deploy", "web"]).await;
    let o = k.run(&["diff", "--server-side", "-f", &f]).await;
    assert_eq!(
        o.status.code(),
        Some(0),
        "no diff expected (server defaults are not drift):\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    let f4 = k.write(
        "web4.yaml",
        &WEB.replace("replicas: 2", "replicas: 4")
            .replace("nginx:1.27", "nginx:1.28"),
    );
    let o = k.run(&["diff", "--server-side", "-f", &f4]).await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("-  replicas: 2") && out.contains("+  replicas: 4"),
        "{out}"
    );
    assert!(out.contains("+        image: nginx:1.28"), "{out}");
    let after = k.json(&["get", "deploy", "web"]).await;
    assert_eq!(
        after["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"],
        "diff did not write"
    );
    assert_eq!(after["spec"], before["spec"]);
    // A new object diffs as an addition.
    let fnew = k.write(
        "new.yaml",
        &WEB.replace("name: web\n  namespace", "name: web2\n  namespace"),
    );
    let o = k.run(&["diff", "--server-side", "-f", &fnew]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        k.run(&["get", "deploy", "web2"]).await.status.code() == Some(1),
        "dry-run create stored nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_wait_scale_label_annotate_set_image_edit_delete() {
    let sb = sandbox().await;
    let Some(k) = Kubectl::new(&sb, None) else {
        return;
    };
    let f = k.write("web.yaml", WEB);
    k.ok(&["apply", "--server-side", "-f", &f]).await;
    let out = k
        .ok(&[
            "wait",
            "--for=condition=Available",
            "deploy/web",
            "--timeout=20s",
        ])
        .await;
    assert!(out.contains("condition met"), "{out}");
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod",
        "-l",
        "app=web",
        "--timeout=20s",
    ])
    .await;
    let out = k.ok(&["get", "pods", "-l", "app=web"]).await;
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("1/1") && l.contains("Running"))
            .count(),
        2,
        "{out}"
    );
    assert!(k
        .ok(&["scale", "deploy/web", "--replicas=4"])
        .await
        .contains("scaled"));
    k.ok(&["label", "deploy", "web", "tier=frontend"]).await;
    k.ok(&["annotate", "deploy", "web", "owner=team-a"]).await;
    k.ok(&["set", "image", "deploy/web", "web=nginx:1.28"])
        .await;
    let v = k.json(&["get", "deploy", "web"]).await;
    assert_eq!(v["spec"]["replicas"], 4);
    assert_eq!(v["metadata"]["labels"]["tier"], "frontend");
    assert_eq!(v["metadata"]["annotations"]["owner"], "team-a");
    let c = &v["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "nginx:1.28");
    assert_eq!(
        c["env"],
        json!([{"name": "MODE", "value": "prod"}]),
        "set image keeps the rest of the container"
    );
    assert_eq!(
        v["metadata"]["generation"], 3,
        "scale and set image bumped generation; label/annotate did not"
    );
    k.ok(&["label", "deploy", "web", "tier-"]).await;
    let v = k.json(&["get", "deploy", "web"]).await;
    assert!(v["metadata"]["labels"].get("tier").is_none());
    let o = k
        .run_env(
            &["edit", "deploy/web"],
            &[("KUBE_EDITOR", "sed -i s/value:\\ prod/value:\\ staging/")],
        )
        .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let v = k
        .json(&["get", "deploy", "web", "--show-managed-fields"])
        .await;
    assert_eq!(
        v["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
        "staging"
    );
    let managers: Vec<&str> = v["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["manager"].as_str().unwrap())
        .collect();
    for m in ["kubectl", "kubectl-edit", "kubectl-set"] {
        assert!(managers.contains(&m), "{m} in {managers:?}");
    }
    assert!(k.ok(&["delete", "deploy", "web"]).await.contains("deleted"));
    assert_eq!(
        k.run(&["get", "deploy", "web"]).await.status.code(),
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_watch_streams_changes() {
    let sb = sandbox().await;
    let Some(k) = Kubectl::new(&sb, None) else {
        return;
    };
    let cm = |name: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {{a: '1'}}\n")
    };
    let watched = k.write("watched.yaml", &cm("watched"));
    let second = k.write("second.yaml", &cm("second"));
    k.ok(&["apply", "--server-side", "-f", &watched]).await;
    let mut cmd = k.command(&[
        "get",
        "configmaps",
        "-w",
        "--request-timeout=4s",
        "--output-watch-events",
    ]);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("kubectl get -w");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    k.ok(&["label", "configmap", "watched", "x=y"]).await;
    k.ok(&["apply", "--server-side", "-f", &second]).await;
    k.ok(&["delete", "configmap", "watched"]).await;
    let o = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("get -w ends")
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let events: Vec<(String, String)> = out
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect();
    for (ev, name) in [
        ("ADDED", "watched"),
        ("MODIFIED", "watched"),
        ("ADDED", "second"),
        ("DELETED", "watched"),
    ] {
        assert!(
            events.contains(&(ev.to_string(), name.to_string())),
            "{ev} {name} in:\n{out}\nstderr: {}",
            stderr(&o)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_against_a_cluster_under_a_path_prefix() {
    let sb = sandbox().await;
    let Some(k) = Kubectl::new(&sb, Some("demo")) else {
        return;
    };
    let f = k.write("web.yaml", WEB);
    k.ok(&["apply", "--server-side", "-f", &f]).await;
    k.ok(&[
        "wait",
        "--for=condition=Available",
        "deploy/web",
        "--timeout=20s",
    ])
    .await;
    let o = k.run(&["diff", "--server-side", "-f", &f]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let Some(root) = Kubectl::new(&sb, None) else {
        return;
    };
    assert_eq!(
        root.run(&["get", "deploy", "web"]).await.status.code(),
        Some(1),
        "not in the default cluster"
    );
    let v = k.json(&["get", "deploy", "web"]).await;
    assert_eq!(v["metadata"]["name"], "web");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_with_tls_client_certificate_and_token() {
    let sb = sandbox_with(|c| c.tls = true).await;
    let Some(k) = Kubectl::new(&sb, None) else {
        return;
    };
    assert!(k
        .ok(&["get", "ns", "default", "-o", "name"])
        .await
        .contains("namespace/default"));
    let tok = sandbox_with(|c| {
        c.tls = true;
        c.token = Some("t0ken".into());
    })
    .await;
    let Some(k) = Kubectl::new(&tok, None) else {
        return;
    };
    assert!(k
        .ok(&["get", "ns", "default", "-o", "name"])
        .await
        .contains("namespace/default"));
    let o = k.run(&["get", "ns", "--token=wrong"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("Unauthorized") || stderr(&o).contains("provide credentials"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_a_crd_then_its_custom_resources() {
    let sb = sandbox().await;
    let Some(k) = Kubectl::new(&sb, None) else {
        return;
    };
    let crd = k.write(
        "crd.yaml",
        "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  names: {kind: Widget, plural: widgets, singular: widget, shortNames: [wd]}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
",
    );
    k.ok(&["apply", "--server-side", "-f", &crd]).await;
    k.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/widgets.example.com",
        "--timeout=10s",
    ])
    .await;
    let w = k.write(
        "w.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n",
    );
    k.ok(&["apply", "--server-side", "-f", &w]).await;
    let out = k.ok(&["get", "wd", "-o", "name"]).await;
    assert_eq!(out.trim(), "widget.example.com/w1");
    let o = k.run(&["diff", "--server-side", "-f", &w]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // A structural schema: kubectl's strict field validation rejects undeclared fields.
    let crd2 = k.write(
        "crd2.yaml",
        "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gadgets.example.com}
spec:
  group: example.com
  names: {kind: Gadget, plural: gadgets}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
              mode: {type: string, default: fast}
",
    );
    k.ok(&["apply", "--server-side", "-f", &crd2]).await;
    let bad = k.write("g.yaml", "apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: g1}\nspec: {size: 1, colour: red}\n");
    let o = k.run(&["apply", "--server-side", "-f", &bad]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("unknown field \"spec.colour\""),
        "{}",
        stderr(&o)
    );
    let good = k.write(
        "g2.yaml",
        "apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: g1}\nspec: {size: 1}\n",
    );
    k.ok(&["apply", "--server-side", "-f", &good]).await;
    let v = k.json(&["get", "gadget", "g1"]).await;
    assert_eq!(v["spec"]["mode"], "fast", "schema default filled in");
    let o = k.run(&["diff", "--server-side", "-f", &good]).await;
    assert_eq!(
        o.status.code(),
        Some(0),
        "defaults are not drift: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_rollout_status_history_and_undo() {
    let sb = sandbox().await;
    let Some(k) = Kubectl::new(&sb, None) else {
        return;
    };
    let f = k.write("web.yaml", WEB);
    k.ok(&["apply", "--server-side", "-f", &f]).await;
    k.ok(&["rollout", "status", "deploy/web", "--timeout=20s"])
        .await;
    k.ok(&["set", "image", "deploy/web", "web=nginx:1.28"])
        .await;
    let out = k
        .ok(&["rollout", "status", "deploy/web", "--timeout=20s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let out = k.ok(&["rollout", "history", "deploy/web"]).await;
    assert!(out.contains("1 ") && out.contains("2 "), "{out}");
    let out = k.ok(&["rollout", "undo", "deploy/web"]).await;
    assert!(out.contains("rolled back"), "{out}");
    k.ok(&["rollout", "status", "deploy/web", "--timeout=20s"])
        .await;
    let v = k.json(&["get", "deploy", "web"]).await;
    assert_eq!(
        v["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.27"
    );
    assert_eq!(
        v["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );
    let pods = k
        .ok(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].spec.containers[0].image}",
        ])
        .await;
    assert!(!pods.contains("nginx:1.28"), "old pods replaced: {pods}");
}
