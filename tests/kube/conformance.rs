//! The conformance suite of the test bed: kubectl-driven and client-driven cases stating what a real API server
//! does, run against the real control plane (testenv: kube-apiserver 1.37 with its controllers and the simulated
//! kubelet). It was the differential suite that retired kube-sandbox (8 of its 14 cases failed there, see
//! docs/testing.md); now it guards the test bed itself: a testenv change that breaks what phoenix's tests assume of
//! a real cluster fails here first.

use testkit::control_plane;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, DynamicObject, WatchEvent, WatchParams};
use kube::discovery::ApiResource;

const CASES: &[&str] = &[
    "kubectl-create-protobuf",
    "ssa-two-managers-conflict",
    "ssa-force-takes-ownership",
    "ssa-keyed-list-merge",
    "defaulting",
    "server-dry-run-persists-nothing",
    "kubectl-diff-server-side",
    "kubectl-wait-available",
    "label-selectors",
    "crd-then-custom-resource",
    "watch-from-resource-version",
    "namespace-deletion-finalizes",
    "immutable-configmap",
    "strict-field-validation",
];

struct Kubectl {
    server: String,
    dir: tempfile::TempDir,
}

impl Kubectl {
    fn new(server: String) -> Kubectl {
        Kubectl {
            server,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Runs kubectl; Err carries stderr.
    async fn run(&self, args: &[&str]) -> Result<String, String> {
        let (ok, out, err) = control_plane::kubectl_async(&self.server, args).await;
        if ok {
            Ok(out)
        } else {
            Err(format!("kubectl {}: {}", args.join(" "), err.trim()))
        }
    }

    /// kubectl with `yaml` in a file passed as `-f FILE` after `args`.
    async fn with_file(&self, args: &[&str], yaml: &str) -> Result<String, String> {
        let path = self.dir.path().join(format!("m{}.yaml", rand_suffix()));
        std::fs::write(&path, yaml).map_err(|e| e.to_string())?;
        let path = path.display().to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-f", path.as_str()]);
        self.run(&all).await
    }
}

fn rand_suffix() -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).expect("random");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn expect(cond: bool, what: impl Into<String>) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what.into())
    }
}

async fn case(name: &str, k: &Kubectl, client: &kube::Client) -> Result<(), String> {
    let ns = format!("c-{}", &name[..name.len().min(40)])
        .trim_end_matches('-')
        .to_string();
    // The namespace through the JSON client, so a server that cannot take kubectl's protobuf creates still
    // gets every other case tried.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let body: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))
            .map_err(|e| e.to_string())?;
    namespaces
        .create(&Default::default(), &body)
        .await
        .map_err(|e| format!("creating namespace {ns}: {e}"))?;
    let n = ns.as_str();
    match name {
        // kubectl 1.37 sends creates as protobuf.
        "kubectl-create-protobuf" => {
            k.run(&["-n", n, "create", "configmap", "x", "--from-literal=a=b"])
                .await?;
            let out = k
                .run(&["-n", n, "get", "configmap", "x", "-o", "jsonpath={.data.a}"])
                .await?;
            expect(out == "b", format!("data.a = {out:?}"))
        }
        "ssa-two-managers-conflict" => {
            let cm = |v: &str| {
                format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: c, namespace: {n} }}\ndata: {{ k: {v} }}\n")
            };
            k.with_file(&["apply", "--server-side", "--field-manager=one"], &cm("a"))
                .await?;
            match k
                .with_file(&["apply", "--server-side", "--field-manager=two"], &cm("b"))
                .await
            {
                Ok(_) => Err("a second manager changed an owned field without a conflict".into()),
                Err(e) => expect(e.contains("conflict"), format!("not a conflict: {e}")),
            }
        }
        "ssa-force-takes-ownership" => {
            let cm = |v: &str| {
                format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: c, namespace: {n} }}\ndata: {{ k: {v} }}\n")
            };
            k.with_file(&["apply", "--server-side", "--field-manager=one"], &cm("a"))
                .await?;
            k.with_file(
                &[
                    "apply",
                    "--server-side",
                    "--field-manager=two",
                    "--force-conflicts",
                ],
                &cm("b"),
            )
            .await?;
            let out = k
                .run(&[
                    "-n",
                    n,
                    "get",
                    "configmap",
                    "c",
                    "--show-managed-fields",
                    "-o",
                    "json",
                ])
                .await?;
            let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
            let owners: Vec<&str> = v["metadata"]["managedFields"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["fieldsV1"]["f:data"]["f:k"].is_object())
                .filter_map(|m| m["manager"].as_str())
                .collect();
            expect(
                v["data"]["k"] == "b" && owners == ["two"],
                format!("data.k = {}, owners of data.k {owners:?}", v["data"]["k"]),
            )
        }
        "ssa-keyed-list-merge" => {
            let deploy = |c: &str| {
                format!(
                    "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{ name: d, namespace: {n} }}\nspec:\n  selector: {{ matchLabels: {{ app: d }} }}\n  template:\n    metadata: {{ labels: {{ app: d }} }}\n    spec: {{ containers: [{{ name: {c}, image: {c}:1 }}] }}\n"
                )
            };
            k.with_file(
                &["apply", "--server-side", "--field-manager=one"],
                &deploy("a"),
            )
            .await?;
            k.with_file(
                &["apply", "--server-side", "--field-manager=two"],
                &deploy("b"),
            )
            .await?;
            let out = k
                .run(&[
                    "-n",
                    n,
                    "get",
                    "deploy",
                    "d",
                    "-o",
                    "jsonpath={.spec.template.spec.containers[*].name}",
                ])
                .await?;
            expect(
                out == "a b",
                format!("containers {out:?}, want both managers' entries merged by name"),
            )
        }
        "defaulting" => {
            k.run(&["-n", n, "create", "deployment", "d", "--image=x:1"])
                .await?;
            let out = k
                .run(&["-n", n, "get", "deploy", "d", "-o", "json"])
                .await?;
            let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
            let spec = &v["spec"];
            let c = &spec["template"]["spec"]["containers"][0];
            expect(
                spec["strategy"]["type"] == "RollingUpdate"
                    && spec["revisionHistoryLimit"] == 10
                    && spec["progressDeadlineSeconds"] == 600
                    && c["imagePullPolicy"] == "IfNotPresent"
                    && c["terminationMessagePath"] == "/dev/termination-log"
                    && spec["template"]["spec"]["restartPolicy"] == "Always",
                format!("defaults missing: {spec}"),
            )
        }
        "server-dry-run-persists-nothing" => {
            let cm = format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: dry, namespace: {n} }}\n"
            );
            k.with_file(&["apply", "--server-side", "--dry-run=server"], &cm)
                .await?;
            match k.run(&["-n", n, "get", "configmap", "dry"]).await {
                Ok(_) => Err("a server dry run created the object".into()),
                Err(e) => expect(e.contains("NotFound") || e.contains("not found"), e),
            }
        }
        "kubectl-diff-server-side" => {
            let cm = |v: &str| {
                format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: c, namespace: {n} }}\ndata: {{ k: {v} }}\n")
            };
            k.with_file(&["apply", "--server-side"], &cm("a")).await?;
            k.with_file(&["diff", "--server-side"], &cm("a"))
                .await
                .map_err(|e| format!("no change must diff clean: {e}"))?;
            // kubectl diff exits 1 when there are differences and prints them on stdout.
            let path = k.dir.path().join("changed.yaml");
            std::fs::write(&path, cm("b")).map_err(|e| e.to_string())?;
            let file = path.display().to_string();
            let (ok, out, err) =
                control_plane::kubectl_async(&k.server, &["diff", "--server-side", "-f", &file])
                    .await;
            expect(
                !ok && out.contains("+  k: b") && out.contains("-  k: a"),
                format!("diff of a change: ok={ok} stdout={out} stderr={err}"),
            )
        }
        "kubectl-wait-available" => {
            k.run(&[
                "-n",
                n,
                "create",
                "deployment",
                "w",
                "--image=x:1",
                "--replicas=2",
            ])
            .await?;
            k.run(&[
                "-n",
                n,
                "wait",
                "--for=condition=Available",
                "deployment/w",
                "--timeout=60s",
            ])
            .await?;
            Ok(())
        }
        "label-selectors" => {
            for (name, labels) in [
                ("a", "env=prod,tier=web"),
                ("b", "env=dev,tier=web"),
                ("c", "env=prod"),
            ] {
                k.run(&["-n", n, "create", "configmap", name]).await?;
                let mut args = vec!["-n", n, "label", "configmap", name];
                args.extend(labels.split(','));
                k.run(&args).await?;
            }
            let get = |sel: String| async move {
                k.run(&[
                    "-n",
                    n,
                    "get",
                    "configmap",
                    "-l",
                    &sel,
                    "-o",
                    "jsonpath={.items[*].metadata.name}",
                ])
                .await
            };
            let eq = get("env=prod,tier=web".into()).await?;
            let neq = get("tier=web,env!=prod".into()).await?;
            let set = get("env in (prod,dev),!tier".into()).await?;
            expect(
                eq == "a" && neq == "b" && set == "c",
                format!("equality {eq:?}, inequality {neq:?}, set-based {set:?}"),
            )
        }
        "crd-then-custom-resource" => {
            let group = format!("{}.conformance.phoenix.dev", rand_suffix());
            let crd = format!(
                "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {{ name: gizmos.{group} }}\nspec:\n  group: {group}\n  scope: Namespaced\n  names: {{ plural: gizmos, singular: gizmo, kind: Gizmo }}\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema: {{ openAPIV3Schema: {{ type: object, properties: {{ spec: {{ type: object, properties: {{ size: {{ type: integer }} }} }} }} }} }}\n"
            );
            k.with_file(&["apply", "--server-side"], &crd).await?;
            k.run(&[
                "wait",
                "--for=condition=Established",
                &format!("crd/gizmos.{group}"),
                "--timeout=30s",
            ])
            .await?;
            let cr = format!("apiVersion: {group}/v1\nkind: Gizmo\nmetadata: {{ name: g, namespace: {n} }}\nspec: {{ size: 3 }}\n");
            // Discovery may lag the Established condition: retry for a bounded time, as phoenix does.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match k.with_file(&["apply", "--server-side"], &cr).await {
                    Ok(_) => break,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
            let out = k
                .run(&[
                    "-n",
                    n,
                    "get",
                    &format!("gizmos.{group}"),
                    "g",
                    "-o",
                    "jsonpath={.spec.size}",
                ])
                .await?;
            expect(out == "3", format!("spec.size {out:?}"))
        }
        // A watch from a list's resourceVersion delivers the changes made after it, and only those. (A real
        // server answers 410 Gone only for a version etcd has compacted away — minutes on the default
        // compaction interval — so that case is not part of the suite.)
        "watch-from-resource-version" => {
            k.run(&["-n", n, "create", "configmap", "before"]).await?;
            let api: Api<DynamicObject> = Api::namespaced_with(
                client.clone(),
                n,
                &ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
            );
            let list = api
                .list(&Default::default())
                .await
                .map_err(|e| format!("listing: {e}"))?;
            let rv = list.metadata.resource_version.unwrap_or_default();
            let stream = api
                .watch(&WatchParams::default().timeout(10), &rv)
                .await
                .map_err(|e| format!("starting the watch: {e}"))?;
            let mut stream = Box::pin(stream);
            k.run(&["-n", n, "create", "configmap", "after"]).await?;
            loop {
                match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
                    Ok(Some(Ok(WatchEvent::Added(o)))) => {
                        let name = o.metadata.name.unwrap_or_default();
                        if name == "after" {
                            return Ok(());
                        }
                        if name == "before" {
                            return Err(
                                "the watch replayed an object from before its resourceVersion"
                                    .into(),
                            );
                        }
                    }
                    Ok(Some(Ok(WatchEvent::Bookmark(_)))) => {}
                    other => return Err(format!("waiting for ADDED after: {other:?}")),
                }
            }
        }
        "namespace-deletion-finalizes" => {
            let gone = format!("{n}-gone");
            k.run(&["create", "namespace", &gone]).await?;
            k.run(&["-n", &gone, "create", "configmap", "x"]).await?;
            k.run(&["-n", &gone, "create", "deployment", "d", "--image=x:1"])
                .await?;
            k.run(&["delete", "namespace", &gone, "--timeout=90s"])
                .await?;
            match k.run(&["get", "namespace", &gone]).await {
                Ok(out) => Err(format!("namespace still there: {out}")),
                Err(e) => expect(e.contains("NotFound") || e.contains("not found"), e),
            }
        }
        "immutable-configmap" => {
            let cm = |v: &str| {
                format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: frozen, namespace: {n} }}\nimmutable: true\ndata: {{ k: {v} }}\n")
            };
            k.with_file(&["apply", "--server-side"], &cm("a")).await?;
            match k.with_file(&["apply", "--server-side"], &cm("b")).await {
                Ok(_) => Err("an immutable ConfigMap's data changed".into()),
                Err(e) => expect(e.contains("immutable") || e.contains("Invalid"), e),
            }
        }
        "strict-field-validation" => {
            let cm = format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: typo, namespace: {n} }}\ndatta: {{ k: v }}\n");
            match k
                .with_file(&["apply", "--server-side", "--validate=strict"], &cm)
                .await
            {
                Ok(_) => Err("an unknown field was accepted under strict validation".into()),
                Err(e) => expect(e.contains("datta"), e),
            }
        }
        other => Err(format!("no case {other}")),
    }
}

async fn run_all(url: String) -> BTreeMap<&'static str, Result<(), String>> {
    let k = Kubectl::new(url.clone());
    let client = control_plane::client(&url);
    let mut out = BTreeMap::new();
    for name in CASES {
        let started = Instant::now();
        let r = match tokio::time::timeout(Duration::from_secs(120), case(name, &k, &client)).await
        {
            Ok(r) => r,
            Err(_) => Err("timed out after 120 s".into()),
        };
        eprintln!(
            "{name}: {} ({} ms)",
            if r.is_ok() { "pass" } else { "FAIL" },
            started.elapsed().as_millis()
        );
        out.insert(*name, r);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_holds_on_the_real_api_server() {
    let cp = control_plane::start().await;
    let results = run_all(cp.cluster_url("conformance")).await;
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}")))
        .collect();
    assert!(
        failed.is_empty(),
        "on kube-apiserver 1.37:\n{}",
        failed.join("\n")
    );
}
