//! The Kubernetes provider against the real control plane (testenv, one per test, on 127.0.0.1), through
//! the real engine; cross-checked with kubectl 1.37 where a second client makes the point.

use testkit::{control_plane, kube_proxy};

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, PatchParams};
use kube::discovery::ApiResource;
use phoenix::engine::{
    self, CancelToken, EngineOptions, Graph, Layer, NodeOutcome, NodeState, Policy, RunSummary,
};
use phoenix::providers::kube::{
    component_nodes, converge, destroy_all, diff_component, diff_component_with, inventory_name,
    prune_nodes, ApplyOptions, ComponentSpec, Connector, DriftState, FixedClient, HttpCheck,
    Resolver, SealStore,
};
use phoenix::render::Manifest;
use phoenix::report::events::EventSink;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Helpers

/// Manifests from a multi-document YAML string, each with its document's first line.
fn manifests(source: &str, yaml: &str) -> Vec<Manifest> {
    let mut out = Vec::new();
    let mut line = 1;
    for doc in yaml.split("\n---\n") {
        let object: Value = serde_yaml_ng::from_str(doc).expect("test YAML parses");
        if !object.is_null() {
            out.push(Manifest {
                source: source.to_string(),
                line,
                object,
                stage: Default::default(),
            });
        }
        line += doc.lines().count() + 1;
    }
    out
}

fn component(layer: Layer, name: &str, yaml: &str) -> ComponentSpec {
    ComponentSpec {
        env: "demo".into(),
        commit: "c0ffee1".into(),
        layer,
        name: name.into(),
        namespace: None,
        manifests: manifests(&format!("{}/{name}/all.yaml", layer.as_str()), yaml),
        depends_on: Vec::new(),
        wait: Duration::from_secs(20),
        force_conflicts: false,
        leave_fields: Vec::new(),
        checks: Vec::new(),
        completion: None,
    }
}

fn opts() -> ApplyOptions {
    ApplyOptions {
        poll_interval: Duration::from_millis(100),
        ..ApplyOptions::default()
    }
}

fn connector(client: &kube::Client) -> Arc<dyn Connector> {
    Arc::new(FixedClient::new(client.clone()))
}

struct Run {
    summary: RunSummary,
    events: Vec<String>,
}

/// Runs the components (and, with `prune`, the removal nodes) through the real engine.
async fn run(client: &kube::Client, specs: Vec<ComponentSpec>, prune: bool) -> Run {
    run_with(client, specs, prune, opts()).await
}

async fn run_with(
    client: &kube::Client,
    specs: Vec<ComponentSpec>,
    prune: bool,
    opts: ApplyOptions,
) -> Run {
    let mut graph = Graph::new();
    let mut nodes = Vec::new();
    if prune {
        nodes.extend(prune_nodes(
            connector(client),
            "demo",
            &specs,
            Duration::from_secs(20),
            8,
        ));
    }
    nodes.extend(component_nodes(connector(client), specs, &opts));
    for (spec, action) in nodes {
        graph.add(spec, action).expect("unique node ids");
    }
    let sink = EventSink::new();
    let stream = sink.subscribe();
    let engine_opts = EngineOptions {
        backoff: Policy::fast_for_tests(),
        ..EngineOptions::default()
    };
    let summary = engine::run(graph, engine_opts, sink, CancelToken::new()).await;
    let events = stream
        .collect()
        .await
        .iter()
        .map(|r| serde_json::to_string(&r.event).expect("event serializes"))
        .collect();
    Run { summary, events }
}

fn node<'a>(run: &'a Run, id: &str) -> &'a phoenix::engine::NodeResult {
    run.summary
        .nodes
        .iter()
        .find(|n| n.id == id)
        .unwrap_or_else(|| panic!("no node {id}"))
}

fn failure(run: &Run, id: &str) -> (String, bool) {
    match &node(run, id).state {
        NodeState::Failed { error, timed_out } => (error.clone(), *timed_out),
        other => panic!("{id} did not fail: {other:?}"),
    }
}

fn outcome(run: &Run, id: &str) -> NodeOutcome {
    match &node(run, id).state {
        NodeState::Succeeded { outcome } => *outcome,
        other => panic!("{id} did not succeed: {other:?}\nevents: {:#?}", run.events),
    }
}

fn ar(api_version: &str, kind: &str, plural: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// A live object as JSON, or None.
async fn get(
    client: &kube::Client,
    api_version: &str,
    kind: &str,
    plural: &str,
    ns: Option<&str>,
    name: &str,
) -> Option<Value> {
    let r = ar(api_version, kind, plural);
    let api: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &r),
        None => Api::all_with(client.clone(), &r),
    };
    api.get_opt(name)
        .await
        .expect("get succeeds")
        .map(|o| serde_json::to_value(o).expect("object serializes"))
}

/// kubectl `args` with `yaml` written to a file and passed as `-f FILE`; panics with kubectl's
/// error when it fails.
async fn kubectl_file(url: &str, args: &[&str], yaml: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("objects.yaml");
    std::fs::write(&file, yaml).expect("write the manifest");
    let file = file.display().to_string();
    let mut all = args.to_vec();
    all.extend(["-f", file.as_str()]);
    let (ok, _, err) = control_plane::kubectl_async(url, &all).await;
    assert!(ok, "kubectl {}: {err}", args.join(" "));
}

async fn cm(client: &kube::Client, ns: &str, name: &str) -> Option<Value> {
    get(client, "v1", "ConfigMap", "configmaps", Some(ns), name).await
}

fn rv(obj: &Value) -> String {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .expect("resourceVersion")
        .to_string()
}

fn rv_num(obj: &Value) -> u64 {
    rv(obj).parse().expect("numeric resourceVersion")
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: { name: api, namespace: web }
spec:
  replicas: 2
  selector: { matchLabels: { app: api } }
  template:
    metadata: { labels: { app: api } }
    spec: { containers: [{ name: api, image: "nginx:1.27" }] }
---
apiVersion: v1
kind: ConfigMap
metadata: { name: settings, namespace: web, labels: { team: blue } }
data: { mode: fast }
---
apiVersion: v1
kind: Service
metadata: { name: api, namespace: web }
spec: { selector: { app: api }, ports: [{ port: 80 }] }
---
apiVersion: v1
kind: Namespace
metadata: { name: web }
"#;

// ---------------------------------------------------------------------------------------------
// Apply order, marks, inventory

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resource_is_applied_after_its_crd_is_established_in_order() {
    let sb = control_plane::start().await;
    let client = control_plane::client(&sb.cluster_url("order"));
    // Written in the reverse of apply order on purpose.
    let yaml = r#"
apiVersion: example.com/v1
kind: Widget
metadata: { name: w1, namespace: shop }
spec: { size: 3 }
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: shop, namespace: shop }
spec:
  selector: { matchLabels: { app: shop } }
  template:
    metadata: { labels: { app: shop } }
    spec: { containers: [{ name: shop, image: "shop:1" }] }
---
apiVersion: v1
kind: ConfigMap
metadata: { name: shop, namespace: shop }
data: { a: "1" }
---
apiVersion: v1
kind: Namespace
metadata: { name: shop }
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: { name: widgets.example.com }
spec:
  group: example.com
  scope: Namespaced
  names: { plural: widgets, singular: widget, kind: Widget }
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: { type: object, properties: { size: { type: integer } } }
"#;
    let r = run(&client, vec![component(Layer::Addons, "shop", yaml)], false).await;
    assert!(r.summary.converged, "{:#?}", r.events);
    assert_eq!(outcome(&r, "addons/shop"), NodeOutcome::Created);

    let crd = get(
        &client,
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        None,
        "widgets.example.com",
    )
    .await
    .expect("CRD exists");
    let ns = get(&client, "v1", "Namespace", "namespaces", None, "shop")
        .await
        .expect("namespace exists");
    let config = cm(&client, "shop", "shop").await.expect("configmap exists");
    let deploy = get(
        &client,
        "apps/v1",
        "Deployment",
        "deployments",
        Some("shop"),
        "shop",
    )
    .await
    .expect("deployment exists");
    let widget = get(
        &client,
        "example.com/v1",
        "Widget",
        "widgets",
        Some("shop"),
        "w1",
    )
    .await
    .expect("custom resource exists");
    // One resourceVersion counter per cluster: creation order is readable from it for objects no
    // controller writes to (the Deployment's status moves its resourceVersion; it shares the last
    // phase with the Widget, whose objects are applied concurrently).
    let order = [&crd, &ns, &config, &widget].map(rv_num);
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "creation order {order:?}"
    );
    assert_eq!(widget["spec"]["size"], 3);

    // Marks and field manager on every object.
    for obj in [&crd, &ns, &config, &deploy, &widget] {
        let labels = &obj["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/managed-by"], "phoenix", "{obj}");
        assert_eq!(labels["phoenix.dev/env"], "demo");
        assert_eq!(labels["phoenix.dev/component"], "shop");
        assert_eq!(labels["phoenix.dev/layer"], "addons");
        assert_eq!(
            obj["metadata"]["annotations"]["phoenix.dev/commit"],
            "c0ffee1"
        );
        let managers: Vec<&str> = obj["metadata"]["managedFields"]
            .as_array()
            .expect("managedFields")
            .iter()
            .filter_map(|m| m["manager"].as_str())
            .collect();
        assert!(managers.contains(&"phoenix"), "{managers:?}");
    }

    // The inventory lists all five objects; kubectl reads the same ConfigMap.
    let inv = cm(
        &client,
        "kube-system",
        &inventory_name("demo", Layer::Addons, "shop"),
    )
    .await
    .expect("inventory exists");
    let listed = inv["data"]["objects"].as_str().expect("objects");
    assert_eq!(listed.lines().count(), 5, "{listed}");
    assert!(listed.contains(r#""kind":"Widget""#), "{listed}");
    let (ok, out, err) = control_plane::kubectl_async(
        &sb.cluster_url("order"),
        &["get", "widgets.example.com", "-n", "shop", "-o", "name"],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "widget.example.com/w1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reapply_of_the_same_commit_changes_nothing() {
    let sb = control_plane::start().await;
    let client = control_plane::client(&sb.cluster_url("noop"));
    let spec = component(Layer::Apps, "web", WEB);
    let first = run(&client, vec![spec.clone()], false).await;
    assert_eq!(outcome(&first, "apps/web"), NodeOutcome::Created);
    let snapshot = |c: kube::Client| async move {
        vec![
            get(
                &c,
                "apps/v1",
                "Deployment",
                "deployments",
                Some("web"),
                "api",
            )
            .await,
            cm(&c, "web", "settings").await,
            get(&c, "v1", "Service", "services", Some("web"), "api").await,
            get(&c, "v1", "Namespace", "namespaces", None, "web").await,
            cm(
                &c,
                "kube-system",
                &inventory_name("demo", Layer::Apps, "web"),
            )
            .await,
        ]
        .into_iter()
        .map(|o| rv(&o.expect("object exists")))
        .collect::<Vec<_>>()
    };
    let before = snapshot(client.clone()).await;
    let second = run(&client, vec![spec], false).await;
    assert_eq!(outcome(&second, "apps/web"), NodeOutcome::Unchanged);
    assert_eq!(snapshot(client.clone()).await, before);
}

// ---------------------------------------------------------------------------------------------
// Gating through the engine

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depends_on_gates_components_through_the_engine() {
    let sb = control_plane::start().await;
    let client = control_plane::client(&sb.cluster_url("gates"));
    let slow = r#"
apiVersion: v1
kind: Namespace
metadata: { name: base }
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: slow
  namespace: base
spec:
  selector: { matchLabels: { app: slow } }
  template:
    metadata: { labels: { app: slow }, annotations: { testenv.phoenix.dev/ready-delay: 1500ms } }
    spec: { containers: [{ name: slow, image: "slow:1" }] }
"#;
    let base = component(Layer::Addons, "base", slow);
    let mut first = component(
        Layer::Apps,
        "first",
        &slow
            .replace("name: base", "name: first")
            .replace("namespace: base", "namespace: first"),
    );
    first.depends_on = vec!["base".into()];
    let mut second = component(
        Layer::Apps,
        "second",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: second, namespace: first }\ndata: { a: b }\n",
    );
    second.depends_on = vec!["first".into()];
    let r = run(&client, vec![second, first, base], false).await;
    assert!(r.summary.converged, "{:#?}", r.events);
    let end = |id: &str| {
        let n = node(&r, id);
        n.start.expect("started") + n.duration.expect("finished")
    };
    let start = |id: &str| node(&r, id).start.expect("started");
    assert!(start("apps/first") >= end("addons/base"));
    assert!(start("apps/second") >= end("apps/first"));
    // The health gate held each node until its Deployment was Available (1.5s ready delay).
    assert!(node(&r, "addons/base").duration.unwrap() >= Duration::from_millis(1400));
    assert!(node(&r, "apps/first").duration.unwrap() >= Duration::from_millis(1400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_ready_deployment_fails_its_component_within_its_timeout() {
    let sb = control_plane::start().await;
    let client = control_plane::client(&sb.cluster_url("stuck"));
    let mut stuck = component(
        Layer::Addons,
        "ingress",
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: controller
  namespace: default
spec:
  replicas: 3
  selector: { matchLabels: { app: ingress } }
  template:
    metadata: { labels: { app: ingress }, annotations: { testenv.phoenix.dev/ready: never } }
    spec: { containers: [{ name: c, image: "ingress:1" }] }
"#,
    );
    stuck.wait = Duration::from_secs(2);
    let mut app = component(
        Layer::Apps,
        "web",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: web }\ndata: { a: b }\n",
    );
    app.depends_on = vec!["ingress".into()];
    let t0 = Instant::now();
    let r = run(&client, vec![stuck, app], false).await;
    let elapsed = t0.elapsed();
    assert!(!r.summary.converged);
    let (error, timed_out) = failure(&r, "addons/ingress");
    assert!(timed_out, "{error}");
    assert!(
        error.contains("Deployment default/controller: 0 of 3 replicas available"),
        "{error}"
    );
    assert!(elapsed < Duration::from_secs(6), "took {elapsed:?}");
    assert!(
        matches!(node(&r, "apps/web").state, NodeState::Skipped { .. }),
        "{:?}",
        node(&r, "apps/web").state
    );
    assert!(node(&r, "apps/web").start.is_none());
    assert!(
        cm(&client, "default", "web").await.is_none(),
        "the app never started"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_deadline_and_failed_job_fail_fast() {
    let sb = control_plane::start().await;
    let client = control_plane::client(&sb.cluster_url("fast"));
    let mut deploy = component(
        Layer::Apps,
        "deadline",
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
  namespace: default
spec:
  progressDeadlineSeconds: 2
  selector: { matchLabels: { app: api } }
  template:
    metadata: { labels: { app: api }, annotations: { testenv.phoenix.dev/ready: never } }
    spec: { containers: [{ name: c, image: "api:1" }] }
"#,
    );
    deploy.wait = Duration::from_secs(60);
    let mut job = component(
        Layer::Apps,
        "migrate",
        r#"
apiVersion: batch/v1
kind: Job
metadata:
  name: migrate
  namespace: default
spec:
  backoffLimit: 0
  template:
    metadata: { annotations: { testenv.phoenix.dev/exit-code: "1" } }
    spec: { restartPolicy: Never, containers: [{ name: m, image: "migrate:1" }] }
"#,
    );
    job.wait = Duration::from_secs(60);
    let t0 = Instant::now();
    let r = run(&client, vec![deploy, job], false).await;
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    let (error, timed_out) = failure(&r, "apps/deadline");
    assert!(!timed_out);
    assert!(error.contains("Deployment default/api failed"), "{error}");
    assert!(error.contains("ProgressDeadlineExceeded"), "{error}");
    let (error, timed_out) = failure(&r, "apps/migrate");
    assert!(!timed_out);
    assert!(error.contains("Job default/migrate failed"), "{error}");
    assert!(error.contains("BackoffLimitExceeded"), "{error}");
}

// ---------------------------------------------------------------------------------------------
// Ownership, conflicts, prune

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_without_marks_are_never_modified() {
    let sb = control_plane::start().await;
    let url = sb.cluster_url("foreign");
    let client = control_plane::client(&url);
    kubectl_file(
        &url,
        &["apply", "--server-side"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: shared, namespace: default }\ndata: { owner: someone-else }\n",
    )
    .await;
    let before = cm(&client, "default", "shared").await.unwrap();

    let spec = component(
        Layer::Apps,
        "web",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: shared, namespace: default }\ndata: { owner: phoenix }\n",
    );
    let mut forced = opts();
    forced.force_conflicts = true;
    let r = run_with(&client, vec![spec], false, forced).await;
    let (error, _) = failure(&r, "apps/web");
    assert!(
        error.contains("ConfigMap default/shared exists but is not managed by phoenix"),
        "{error}"
    );
    assert!(error.contains("it has no phoenix labels"), "{error}");
    let after = cm(&client, "default", "shared").await.unwrap();
    assert_eq!(rv(&after), rv(&before), "not even force touches it");
    assert_eq!(after["data"]["owner"], "someone-else");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_on_owned_objects_are_taken_back_by_default_naming_who_held_them() {
    let sb = control_plane::start().await;
    let url = sb.cluster_url("conflict");
    let client = control_plane::client(&url);
    let spec = component(
        Layer::Apps,
        "web",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: tuning, namespace: default }\ndata: { level: \"1\" }\n",
    );
    assert!(
        run(&client, vec![spec.clone()], false)
            .await
            .summary
            .converged
    );

    // Someone else takes the field over with their own server-side apply.
    let live = cm(&client, "default", "tuning").await.unwrap();
    let mut theirs = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "tuning", "namespace": "default", "labels": live["metadata"]["labels"]},
        "data": {"level": "9"}});
    theirs["metadata"]["labels"]["extra"] = "x".into();
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &ar("v1", "ConfigMap", "configmaps"),
    );
    api.patch(
        "tuning",
        &PatchParams::apply("ops-team").force(),
        &kube::api::Patch::Apply(&theirs),
    )
    .await
    .expect("other manager applies");

    let mut changed = spec.clone();
    changed.commit = "c0ffee2".into();
    changed.manifests = manifests(
        "apps/web/all.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: tuning, namespace: default }\ndata: { level: \"2\" }\n",
    );
    // A component that opted out of taking fields back (`forceConflicts: false`) fails, naming
    // the other manager and the field.
    changed.force_conflicts = false;
    let r = run(&client, vec![changed.clone()], false).await;
    let (error, _) = failure(&r, "apps/web");
    assert!(
        error.contains("ConfigMap default/tuning: field conflict"),
        "{error}"
    );
    assert!(error.contains("ops-team"), "{error}");
    assert!(error.contains(".data.level"), "{error}");
    assert!(error.contains("forceConflicts"), "{error}");
    assert_eq!(
        cm(&client, "default", "tuning").await.unwrap()["data"]["level"],
        "9"
    );

    // The default: the object is phoenix's, so the field is taken back, and the run says from whom.
    changed.force_conflicts = true;
    let r = run(&client, vec![changed], false).await;
    assert_eq!(outcome(&r, "apps/web"), NodeOutcome::Updated);
    assert_eq!(
        cm(&client, "default", "tuning").await.unwrap()["data"]["level"],
        "2"
    );
    assert!(
        r.events.iter().any(|e| e.contains(
            "ConfigMap default/tuning: taking back fields held by another field manager"
        ) && e.contains("ops-team")
            && e.contains(".data.level")),
        "{:#?}",
        r.events
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failed_object_of_a_batch_is_named() {
    let sb = control_plane::start().await;
    let url = sb.cluster_url("several");
    let client = control_plane::client(&url);
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: one, namespace: default }\ndata: { a: \"1\" }\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: { name: two, namespace: default }\ndata: { a: \"1\" }\n";
    let spec = component(Layer::Apps, "web", yaml);
    assert!(
        run(&client, vec![spec.clone()], false)
            .await
            .summary
            .converged
    );
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &ar("v1", "ConfigMap", "configmaps"),
    );
    for name in ["one", "two"] {
        let live = cm(&client, "default", name).await.unwrap();
        let theirs = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "default", "labels": live["metadata"]["labels"]},
            "data": {"a": "9"}});
        api.patch(
            name,
            &PatchParams::apply("ops-team").force(),
            &kube::api::Patch::Apply(&theirs),
        )
        .await
        .expect("other manager applies");
    }
    let mut changed = spec;
    changed.commit = "c0ffee2".into();
    changed.manifests = manifests("apps/web/all.yaml", &yaml.replace("\"1\"", "\"2\""));
    changed.force_conflicts = false;
    let r = run(&client, vec![changed], false).await;
    let (error, _) = failure(&r, "apps/web");
    assert!(error.contains("2 objects failed"), "{error}");
    assert!(
        error.contains("ConfigMap default/one: field conflict")
            && error.contains("ConfigMap default/two: field conflict"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_removed_from_git_are_pruned_and_others_left_alone() {
    let sb = control_plane::start().await;
    let url = sb.cluster_url("prune");
    let client = control_plane::client(&url);
    let spec = component(Layer::Apps, "web", WEB);
    assert!(
        run(&client, vec![spec.clone()], false)
            .await
            .summary
            .converged
    );

    // A foreign object in the same namespace, and one of ours whose marks someone removed.
    kubectl_file(
        &url,
        &["apply", "--server-side"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: foreign, namespace: web }\ndata: { a: b }\n",
    )
    .await;
    let (ok, _, err) = control_plane::kubectl_async(
        &url,
        &[
            "label",
            "service",
            "api",
            "-n",
            "web",
            "phoenix.dev/component-",
        ],
    )
    .await;
    assert!(ok, "{err}");

    // Git now has only the namespace and the ConfigMap.
    let mut smaller = spec.clone();
    smaller.commit = "c0ffee2".into();
    smaller.manifests.retain(|m| {
        let k = m.object["kind"].as_str().unwrap_or("");
        k == "Namespace" || k == "ConfigMap"
    });
    let r = run(&client, vec![smaller.clone()], false).await;
    assert_eq!(outcome(&r, "apps/web"), NodeOutcome::Updated);
    assert!(
        get(
            &client,
            "apps/v1",
            "Deployment",
            "deployments",
            Some("web"),
            "api"
        )
        .await
        .is_none(),
        "the deployment was pruned"
    );
    assert!(
        get(&client, "v1", "Service", "services", Some("web"), "api")
            .await
            .is_some(),
        "the service lost its marks, so it is not phoenix's to delete"
    );
    assert!(cm(&client, "web", "foreign").await.is_some());
    assert!(cm(&client, "web", "settings").await.is_some());
    let inv = cm(
        &client,
        "kube-system",
        &inventory_name("demo", Layer::Apps, "web"),
    )
    .await
    .unwrap();
    assert_eq!(inv["data"]["objects"].as_str().unwrap().lines().count(), 2);
    assert_eq!(
        inv["metadata"]["annotations"]["phoenix.dev/commit"],
        "c0ffee2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_that_left_git_are_removed_and_destroy_all_clears_the_env() {
    let sb = control_plane::start().await;
    let url = sb.cluster_url("gone");
    let client = control_plane::client(&url);
    let addon = component(
        Layer::Addons,
        "base",
        "apiVersion: v1\nkind: Namespace\nmetadata: { name: base }\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: { name: base, namespace: base }\ndata: { a: b }\n",
    );
    let app = component(Layer::Apps, "web", WEB);
    let mut other_env = component(
        Layer::Apps,
        "other",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: other-env, namespace: default }\ndata: { a: b }\n",
    );
    other_env.env = "prod".into();
    let r = run(&client, vec![addon.clone(), app, other_env], true).await;
    assert!(r.summary.converged, "{:#?}", r.events);
    assert_eq!(outcome(&r, "apps/.removed"), NodeOutcome::Unchanged);

    // The app left Git: the apps removal node deletes it and its inventory.
    let r = run(&client, vec![addon], true).await;
    assert!(r.summary.converged, "{:#?}", r.events);
    assert_eq!(outcome(&r, "apps/.removed"), NodeOutcome::Deleted);
    assert!(get(
        &client,
        "apps/v1",
        "Deployment",
        "deployments",
        Some("web"),
        "api"
    )
    .await
    .is_none());
    assert!(cm(
        &client,
        "kube-system",
        &inventory_name("demo", Layer::Apps, "web")
    )
    .await
    .is_none());
    assert!(cm(&client, "base", "base").await.is_some());

    // Teardown of "demo" leaves env "prod" and foreign objects alone.
    let deleted = destroy_all(&client, "demo")
        .await
        .expect("destroy succeeds");
    assert!(
        deleted
            .iter()
            .any(|o| o.kind == "Namespace" && o.name == "base"),
        "{deleted:?}"
    );
    assert!(cm(&client, "base", "base").await.is_none());
    assert!(cm(
        &client,
        "kube-system",
        &inventory_name("demo", Layer::Addons, "base")
    )
    .await
    .is_none());
    assert!(cm(&client, "default", "other-env").await.is_some());
    // The cluster's own objects (published by the controller manager) are not phoenix's.
    assert!(cm(&client, "kube-system", "kube-root-ca.crt")
        .await
        .is_some());
    assert!(get(
        &client,
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        Some("default"),
        "default"
    )
    .await
    .is_some());
}

fn immutable_yaml(version: u32) -> String {
    format!(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {{ name: migrate, namespace: default }}
spec:
  backoffLimit: 0
  template:
    spec: {{ restartPolicy: Never, containers: [{{ name: m, image: "migrate:{version}" }}] }}
---
apiVersion: v1
kind: ConfigMap
metadata: {{ name: frozen, namespace: default }}
immutable: true
data: {{ v: "{version}" }}
---
apiVersion: v1
kind: ConfigMap
metadata: {{ name: plain, namespace: default }}
data: {{ v: "{version}" }}
"#
    )
}

async fn uid_of(
    client: &kube::Client,
    api_version: &str,
    kind: &str,
    plural: &str,
    name: &str,
) -> String {
    get(client, api_version, kind, plural, Some("default"), name)
        .await
        .unwrap_or_else(|| panic!("{kind} {name} exists"))["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string()
}

/// A change to a field fixed at creation (a Job's template, an immutable ConfigMap's data) is one
/// object to re-create in a diff, next to the rest of the drift, and a rebuild re-creates it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immutable_change_is_an_object_to_recreate_and_rebuild_recreates_it() {
    let sb = control_plane::start().await;
    let client = control_plane::client(&sb.cluster_url("immutable"));
    let mut v1 = component(Layer::Apps, "batch", &immutable_yaml(1));
    v1.wait = Duration::from_secs(60);
    let r = run(&client, vec![v1.clone()], false).await;
    assert!(r.summary.converged, "{:#?}", r.events);
    let job_uid = uid_of(&client, "batch/v1", "Job", "jobs", "migrate").await;
    let frozen_uid = uid_of(&client, "v1", "ConfigMap", "configmaps", "frozen").await;

    let mut v2 = component(Layer::Apps, "batch", &immutable_yaml(2));
    v2.wait = Duration::from_secs(60);
    v2.commit = "c0ffee2".into();
    let d = diff_component(&client, &v2)
        .await
        .expect("the diff is not a failed layer");
    let state = |name: &str| {
        d.objects
            .iter()
            .find(|o| o.object.name == name)
            .map(|o| o.state.clone())
            .unwrap_or_else(|| panic!("{name} in the diff"))
    };
    for name in ["migrate", "frozen"] {
        match state(name) {
            DriftState::NeedsRecreate(why) => assert!(why.contains("immutable"), "{name}: {why}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    assert!(
        matches!(state("plain"), DriftState::Changed(_)),
        "{:?}",
        state("plain")
    );

    let r = run(&client, vec![v2.clone()], false).await;
    assert!(r.summary.converged, "{:#?}", r.events);
    assert_eq!(outcome(&r, "apps/batch"), NodeOutcome::Updated);
    assert!(
        r.events
            .iter()
            .any(|e| e.contains("deleting it and creating it again")),
        "{:#?}",
        r.events
    );
    assert_ne!(
        uid_of(&client, "batch/v1", "Job", "jobs", "migrate").await,
        job_uid
    );
    assert_ne!(
        uid_of(&client, "v1", "ConfigMap", "configmaps", "frozen").await,
        frozen_uid
    );
    assert_eq!(
        cm(&client, "default", "frozen").await.unwrap()["data"]["v"],
        "2"
    );
    let d = diff_component(&client, &v2).await.expect("diff");
    assert!(!d.has_drift(), "{:?}", d.objects);
}

/// k3s's default StorageClass (`local-path`) binds a claim only when a Pod using it is scheduled: a
/// claim Pending under WaitForFirstConsumer is as healthy as it gets, for the wait and for diff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_waiting_for_its_first_consumer_does_not_hold_the_component() {
    let sb = control_plane::start().await;
    let client = control_plane::client(&sb.cluster_url("claims"));
    let yaml = r#"
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: { name: local-path }
provisioner: rancher.io/local-path
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: { name: data, namespace: default }
spec:
  storageClassName: local-path
  accessModes: [ReadWriteOnce]
  resources: { requests: { storage: 1Gi } }
"#;
    let mut spec = component(Layer::Apps, "storage", yaml);
    spec.wait = Duration::from_secs(20);
    let r = run(&client, vec![spec.clone()], false).await;
    assert!(r.summary.converged, "{:#?}", r.events);
    let pvc = get(
        &client,
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        Some("default"),
        "data",
    )
    .await
    .expect("claim exists");
    assert_eq!(pvc["status"]["phase"], "Pending", "{pvc}");
    let d = diff_component(&client, &spec).await.expect("diff");
    assert!(d.unhealthy.is_empty() && !d.has_drift(), "{d:?}");
}

/// An aggregated API whose backend is down (metrics-server, the classic) makes its group
/// unavailable in discovery; apply, diff and teardown of everything else go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_api_group_does_not_stop_apply_diff_or_teardown() {
    let sb = control_plane::start().await;
    let url = sb.cluster_url("aggregated");
    let client = control_plane::client(&url);
    let apiservice = "apiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata: { name: v1beta1.metrics.k8s.io }\nspec: { service: { name: metrics-server, namespace: kube-system }, group: metrics.k8s.io, version: v1beta1, insecureSkipTLSVerify: true, groupPriorityMinimum: 100, versionPriority: 100 }\n";
    kubectl_file(&url, &["create"], apiservice).await;
    // The group is registered and unavailable.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, out, _) = control_plane::kubectl_async(
            &url,
            &[
                "get",
                "apiservice",
                "v1beta1.metrics.k8s.io",
                "-o",
                "jsonpath={.status.conditions[0].status}",
            ],
        )
        .await;
        if out.trim() == "False" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the APIService never turned unavailable: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let spec = component(
        Layer::Apps,
        "web",
        "apiVersion: v1\nkind: Namespace\nmetadata: { name: agg }\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: { name: c, namespace: agg }\ndata: { a: b }\n",
    );
    let r = run(&client, vec![spec.clone()], true).await;
    assert!(r.summary.converged, "{:#?}", r.events);
    let d = diff_component(&client, &spec).await.expect("diff");
    assert!(!d.has_drift(), "{d:?}");
    let deleted = destroy_all(&client, "demo").await.expect("teardown");
    assert!(
        deleted
            .iter()
            .any(|o| o.kind == "Namespace" && o.name == "agg"),
        "{deleted:?}"
    );
}

/// A throttled request (429 with the wait API Priority and Fairness asks for) is sent again after
/// that wait; a diff is not a failed layer because the server was busy for a moment. (kube-rs 5's
/// client does this itself: its default retry layer honours Retry-After for 429, 503 and 504. This
/// test keeps it so, should the client be built without it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_diff_waits_as_asked_and_finishes() {
    let sb = control_plane::start().await;
    let proxy = kube_proxy::KubeProxy::start(sb.addr().port());
    sb.ensure("throttled");
    let client = control_plane::client(&format!("{}/clusters/throttled", proxy.url()));
    let spec = component(Layer::Apps, "web", WEB);
    let r = run(&client, vec![spec.clone()], false).await;
    assert!(r.summary.converged, "{:#?}", r.events);
    proxy.inject(kube_proxy::KubeFault::Throttle, 3);
    let t0 = Instant::now();
    let d = diff_component(&client, &spec)
        .await
        .expect("the diff finishes once the server lets it");
    assert!(!d.has_drift(), "{d:?}");
    assert_eq!(proxy.injected(), 3);
    // Retry-After: 1 was honoured (the three throttled requests may have waited side by side).
    assert!(t0.elapsed() >= Duration::from_secs(1), "{:?}", t0.elapsed());
}

/// A HorizontalPodAutoscaler owns its target's `spec.replicas` (it writes them through the scale
/// subresource): phoenix neither fights it on a rebuild nor calls its count drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_scaled_by_an_autoscaler_are_left_to_it() {
    let sb = control_plane::start().await;
    let client = control_plane::client(&sb.cluster_url("hpa"));
    let yaml = r#"
apiVersion: apps/v1
kind: Deployment
metadata: { name: api, namespace: default }
spec:
  replicas: 1
  selector: { matchLabels: { app: api } }
  template:
    metadata: { labels: { app: api } }
    spec: { containers: [{ name: api, image: "api:1", resources: { requests: { cpu: 100m } } }] }
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: { name: api, namespace: default }
spec:
  scaleTargetRef: { apiVersion: apps/v1, kind: Deployment, name: api }
  minReplicas: 3
  maxReplicas: 5
  metrics: [{ type: Resource, resource: { name: cpu, target: { type: Utilization, averageUtilization: 80 } } }]
"#;
    let mut spec = component(Layer::Apps, "web", yaml);
    spec.wait = Duration::from_secs(60);
    let r = run(&client, vec![spec.clone()], false).await;
    assert!(r.summary.converged, "{:#?}", r.events);
    // The autoscaler raises the count to its minimum (its controller syncs every 15 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    let replicas = || async {
        get(
            &client,
            "apps/v1",
            "Deployment",
            "deployments",
            Some("default"),
            "api",
        )
        .await
        .expect("deployment")["spec"]["replicas"]
            .as_i64()
    };
    while replicas().await != Some(3) {
        assert!(
            Instant::now() < deadline,
            "the autoscaler never scaled: {:?}",
            replicas().await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let d = diff_component(&client, &spec).await.expect("diff");
    assert!(!d.has_drift(), "{:?}", d.objects);
    let mut next = spec.clone();
    next.commit = "c0ffee2".into();
    let r = run(&client, vec![next], false).await;
    assert!(r.summary.converged, "{:#?}", r.events);
    assert_eq!(replicas().await, Some(3), "{:#?}", r.events);
    assert!(
        !r.events.iter().any(|e| e.contains("taking back")),
        "{:#?}",
        r.events
    );
}

fn gizmo_yaml(size: u32) -> String {
    format!(
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{ name: gizmos.example.com }}
spec:
  group: example.com
  scope: Namespaced
  names: {{ plural: gizmos, singular: gizmo, kind: Gizmo }}
  versions:
    - name: v1
      served: true
      storage: true
      subresources: {{ status: {{}} }}
      schema: {{ openAPIV3Schema: {{ type: object, x-kubernetes-preserve-unknown-fields: true }} }}
---
apiVersion: example.com/v1
kind: Gizmo
metadata: {{ name: g, namespace: default }}
spec: {{ size: {size} }}
"#
    )
}

/// Its controller's verdict on the Gizmo: Ready, about `generation`.
async fn judge_gizmo(client: &kube::Client, generation: i64) {
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &ar("example.com/v1", "Gizmo", "gizmos"),
    );
    api.patch_status(
        "g",
        &PatchParams::apply("gizmo-controller").force(),
        &kube::api::Patch::Apply(json!({
            "apiVersion": "example.com/v1", "kind": "Gizmo", "metadata": {"name": "g", "namespace": "default"},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled", "message": "ok",
                                        "observedGeneration": generation, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        })),
    )
    .await
    .expect("status written");
}

/// A Ready condition carries the generation it judged: after a change, the Ready of the old spec
/// does not make the new one healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_condition_about_an_older_generation_is_waited_past() {
    let sb = control_plane::start().await;
    let client = control_plane::client(&sb.cluster_url("generations"));
    let mut v1 = component(Layer::Addons, "gizmo", &gizmo_yaml(1));
    v1.wait = Duration::from_secs(30);
    let r = run(&client, vec![v1.clone()], false).await;
    assert!(r.summary.converged, "{:#?}", r.events);
    judge_gizmo(&client, 1).await;

    // A new spec (generation 2): Ready about generation 1 is no answer; the controller's verdict on
    // generation 2 comes 3 s later, and only then is the component healthy.
    let mut v2 = component(Layer::Addons, "gizmo", &gizmo_yaml(2));
    v2.wait = Duration::from_secs(30);
    v2.commit = "c0ffee2".into();
    let c = client.clone();
    let judge = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        judge_gizmo(&c, 2).await;
    });
    let t0 = Instant::now();
    let r = run(&client, vec![v2], false).await;
    let took = t0.elapsed();
    judge.await.expect("judge");
    assert!(r.summary.converged, "{:#?}", r.events);
    assert!(
        took >= Duration::from_secs(3),
        "healthy after {took:?}, before the controller judged the new spec"
    );
}

/// A Job with ttlSecondsAfterFinished is deleted by the TTL controller once finished: after a run
/// saw it through, it is done — not drift, and not run again by the next rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_deleted_by_its_ttl_is_done_not_missing() {
    let sb = control_plane::start().await;
    let client = control_plane::client(&sb.cluster_url("ttl"));
    let yaml = r#"
apiVersion: batch/v1
kind: Job
metadata: { name: seed, namespace: default }
spec:
  ttlSecondsAfterFinished: 0
  backoffLimit: 0
  template:
    spec: { restartPolicy: Never, containers: [{ name: s, image: "seed:1" }] }
---
apiVersion: v1
kind: ConfigMap
metadata: { name: seed-settings, namespace: default }
data: { rows: "10" }
"#;
    let mut spec = component(Layer::Apps, "seed", yaml);
    spec.wait = Duration::from_secs(60);
    let r = run(&client, vec![spec.clone()], false).await;
    assert!(r.summary.converged, "{:#?}", r.events);
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(&client, "batch/v1", "Job", "jobs", Some("default"), "seed")
        .await
        .is_some()
    {
        assert!(
            Instant::now() < deadline,
            "the TTL controller never deleted the Job"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let d = diff_component(&client, &spec).await.expect("diff");
    assert!(!d.has_drift(), "{:?}", d.objects);

    let mut next = spec.clone();
    next.commit = "c0ffee2".into();
    let r = run(&client, vec![next], false).await;
    assert!(r.summary.converged, "{:#?}", r.events);
    assert!(
        r.events.iter().any(|e| e.contains("not run again")),
        "{:#?}",
        r.events
    );
    assert!(
        !r.events
            .iter()
            .any(|e| e.contains("workloads and other objects")),
        "the Job was applied again: {:#?}",
        r.events
    );
}

/// A diff lists the objects, then dry-runs each: a write landing in between (here an annotation
/// someone adds, as a controller writes a revision or an autoscaler a count) is in the dry run's
/// answer and not in the list. It is not drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_between_the_list_and_the_dry_run_is_not_drift() {
    let sb = control_plane::start().await;
    let direct = sb.cluster_url("race");
    let proxy = kube_proxy::KubeProxy::start(sb.addr().port());
    let client = control_plane::client(&format!("{}/clusters/race", proxy.url()));
    let spec = component(Layer::Apps, "web", WEB);
    let r = run(&client, vec![spec.clone()], false).await;
    assert!(r.summary.converged, "{:#?}", r.events);
    settled(&client, "web", "api").await;
    proxy.before(&["PATCH", "/deployments/api", "dryRun=All"], move || {
        let (ok, _, err) = control_plane::kubectl(
            &direct,
            &["annotate", "deployment", "api", "-n", "web", "team=ops"],
        );
        assert!(ok, "{err}");
    });
    let d = diff_component_with(&client, &spec, &Resolver::new(), 8, &SealStore::none())
        .await
        .expect("diff");
    assert_eq!(
        proxy.count("dryRun=All"),
        d.dry_runs,
        "the hook ran before a dry run"
    );
    let deployment = get(
        &client,
        "apps/v1",
        "Deployment",
        "deployments",
        Some("web"),
        "api",
    )
    .await
    .expect("deployment");
    assert_eq!(deployment["metadata"]["annotations"]["team"], "ops");
    assert!(!d.has_drift(), "{:?}", d.objects);
}

/// A sidecar added by hand (`kubectl edit`/`patch`) is a field another manager owns: applying Git
/// would leave it, so a server-side diff cannot call it drift — it is reported as an addition,
/// naming the manager and the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_added_by_hand_is_reported_as_an_addition() {
    let sb = control_plane::start().await;
    let url = sb.cluster_url("sidecar");
    let client = control_plane::client(&url);
    let spec = component(Layer::Apps, "web", WEB);
    let r = run(&client, vec![spec.clone()], false).await;
    assert!(r.summary.converged, "{:#?}", r.events);
    let d = diff_component(&client, &spec).await.expect("diff");
    assert!(d.additions.is_empty(), "{:?}", d.additions);
    let (ok, _, err) = control_plane::kubectl_async(
        &url,
        &[
            "patch",
            "deployment",
            "api",
            "-n",
            "web",
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","image":"envoy:1"}]}}}}"#,
        ],
    )
    .await;
    assert!(ok, "{err}");
    let d = diff_component(&client, &spec).await.expect("diff");
    assert!(!d.has_drift(), "{:?}", d.objects);
    let added: Vec<_> = d
        .additions
        .iter()
        .map(|a| (a.object.name.as_str(), a.manager.as_str(), a.paths.clone()))
        .collect();
    assert_eq!(
        added,
        vec![(
            "api",
            "kubectl-patch",
            vec![".spec.template.spec.containers[name=sidecar]".to_string()]
        )],
    );
}

/// Deleting a Namespace deletes what is in it, and deleting a CRD every object of its kind: phoenix
/// deletes its own Namespace or CRD only when nothing it does not own would go with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_or_crd_holding_foreign_objects_is_not_deleted() {
    let sb = control_plane::start().await;
    let url = sb.cluster_url("holds");
    let client = control_plane::client(&url);
    let base = component(
        Layer::Addons,
        "base",
        "apiVersion: v1\nkind: Namespace\nmetadata: { name: keep }\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: { name: base, namespace: keep }\ndata: { a: b }\n",
    );
    let crds = component(
        Layer::Addons,
        "crds",
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: { name: gadgets.example.com }
spec:
  group: example.com
  scope: Namespaced
  names: { plural: gadgets, singular: gadget, kind: Gadget }
  versions:
    - name: v1
      served: true
      storage: true
      schema: { openAPIV3Schema: { type: object, x-kubernetes-preserve-unknown-fields: true } }
"#,
    );
    let r = run(&client, vec![base.clone(), crds.clone()], true).await;
    assert!(r.summary.converged, "{:#?}", r.events);
    // Someone else's objects: a ConfigMap in the Namespace, a Gadget of the CRD.
    let (ok, _, err) = control_plane::kubectl_async(
        &url,
        &[
            "create",
            "configmap",
            "hand-made",
            "-n",
            "keep",
            "--from-literal=k=v",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let gadget = "apiVersion: example.com/v1\nkind: Gadget\nmetadata: { name: g1, namespace: default }\nspec: { size: 1 }\n";
    kubectl_file(&url, &["create"], gadget).await;

    // Both components leave Git: the removal is refused, naming what would have gone.
    let r = run(&client, vec![], true).await;
    assert!(!r.summary.converged);
    let (error, _) = failure(&r, "addons/.removed");
    assert!(
        error.contains("refusing to delete") && error.contains("ConfigMap keep/hand-made"),
        "{error}"
    );
    let ns = get(&client, "v1", "Namespace", "namespaces", None, "keep")
        .await
        .expect("the namespace is still there");
    assert!(
        ns["metadata"]["deletionTimestamp"].is_null(),
        "the namespace is not being deleted: {ns}"
    );
    assert!(cm(&client, "keep", "hand-made").await.is_some());

    // destroy_all refuses too, and names the Gadget that the CRD would take with it.
    let err = destroy_all(&client, "demo")
        .await
        .expect_err("destroy refuses")
        .to_string();
    assert!(err.contains("refusing to delete"), "{err}");
    let crd = get(
        &client,
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        None,
        "gadgets.example.com",
    )
    .await;
    let gadget_left = get(
        &client,
        "example.com/v1",
        "Gadget",
        "gadgets",
        Some("default"),
        "g1",
    )
    .await;
    assert!(crd.is_some() && gadget_left.is_some(), "{err}");
    assert!(cm(&client, "keep", "hand-made").await.is_some());

    // Once the foreign objects are gone, the same teardown finishes.
    for args in [
        &["delete", "configmap", "hand-made", "-n", "keep"][..],
        &["delete", "gadget", "g1", "-n", "default"][..],
    ] {
        let (ok, _, err) = control_plane::kubectl_async(&url, args).await;
        assert!(ok, "{err}");
    }
    let deleted = destroy_all(&client, "demo")
        .await
        .expect("destroy succeeds");
    assert!(
        deleted
            .iter()
            .any(|o| o.kind == "Namespace" && o.name == "keep")
            && deleted.iter().any(|o| o.kind == "CustomResourceDefinition"),
        "{deleted:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Errors, secrets, checks

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kind_names_the_manifest_file_and_line() {
    let sb = control_plane::start().await;
    let client = control_plane::client(&sb.cluster_url("unknown"));
    let spec = component(
        Layer::Apps,
        "web",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: a }\n---\napiVersion: example.com/v1\nkind: Gizmo\nmetadata: { name: g }\n",
    );
    let r = run(&client, vec![spec], false).await;
    let (error, timed_out) = failure(&r, "apps/web");
    assert!(!timed_out);
    assert!(
        error
            .starts_with("apps/web/all.yaml:5: the cluster serves no kind Gizmo in example.com/v1"),
        "{error}"
    );
    assert!(
        cm(&client, "default", "a").await.is_none(),
        "nothing applied before the check"
    );
}

/// Regression (real API server): without strict field validation a misspelled field was dropped
/// with only a warning header, the component "converged", and the replicas Git asked for never
/// took effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelled_field_fails_the_component_naming_object_and_field() {
    let sb = control_plane::start().await;
    let client = control_plane::client(&sb.cluster_url("strict"));
    let spec = component(
        Layer::Apps,
        "web",
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: { name: typo, namespace: default }
spec:
  replica: 3
  selector: { matchLabels: { app: typo } }
  template:
    metadata: { labels: { app: typo } }
    spec: { containers: [{ name: c, image: "typo:1" }] }
"#,
    );
    let r = run(&client, vec![spec.clone()], false).await;
    let (error, timed_out) = failure(&r, "apps/web");
    assert!(!timed_out, "{error}");
    assert!(error.contains("Deployment default/typo"), "{error}");
    assert!(error.contains("replica"), "{error}");
    assert!(
        get(
            &client,
            "apps/v1",
            "Deployment",
            "deployments",
            Some("default"),
            "typo"
        )
        .await
        .is_none(),
        "nothing half-applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_never_reach_errors_or_progress() {
    let sb = control_plane::start().await;
    let client = control_plane::client(&sb.cluster_url("secrets"));
    // "hunter2-very-secret" in base64.
    let encoded = "aHVudGVyMi12ZXJ5LXNlY3JldA==";
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{ name: db, namespace: default }}\ndata: {{ password: {encoded} }}\n"
    );
    let spec = component(Layer::Apps, "web", &yaml);
    let r = run(&client, vec![spec.clone()], false).await;
    assert!(r.summary.converged);
    // Another manager takes the value over, so the next apply conflicts on it.
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &ar("v1", "Secret", "secrets"));
    let live = get(&client, "v1", "Secret", "secrets", Some("default"), "db")
        .await
        .unwrap();
    api.patch(
        "db",
        &PatchParams::apply("rotator").force(),
        &kube::api::Patch::Apply(&json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "db", "namespace": "default", "labels": live["metadata"]["labels"]},
            "data": {"password": "cm90YXRlZA=="}})),
    )
    .await
    .unwrap();
    let mut next = spec;
    next.commit = "c0ffee2".into();
    let r = run(&client, vec![next.clone()], false).await;
    let (error, _) = failure(&r, "apps/web");
    assert!(
        error.contains("Secret default/db: field conflict"),
        "{error}"
    );
    // A client-side `kubectl apply` of the Secret writes the whole of it, values included, into
    // the last-applied-configuration annotation, which a diff shows with the live object.
    let labels = serde_json::to_string(&live["metadata"]["labels"]).unwrap();
    let applied = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{ name: db, namespace: default, labels: {labels} }}\ndata: {{ password: dG9wLXNlY3JldC12YWx1ZQ== }}\n"
    );
    kubectl_file(&sb.cluster_url("secrets"), &["apply"], &applied).await;
    let d = diff_component(&client, &next).await.unwrap();
    let diff_text = serde_json::to_string(&d).unwrap();
    assert!(diff_text.contains(".data.password"), "{diff_text}");
    let shown: Vec<String> = d
        .objects
        .iter()
        .flat_map(|o| [Some(&o.desired), o.live.as_ref()])
        .flatten()
        .map(|v| v.to_string())
        .collect();
    assert!(
        shown
            .iter()
            .any(|s| s.contains("last-applied-configuration")),
        "the annotation is shown, without its value: {shown:?}"
    );
    for text in r.events.iter().chain([&error, &diff_text]).chain(&shown) {
        for needle in [
            encoded,
            "hunter2-very-secret",
            "cm90YXRlZA==",
            "rotated",
            "dG9wLXNlY3JldC12YWx1ZQ==",
            "top-secret-value",
        ] {
            assert!(!text.contains(needle), "{needle} leaked: {text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_checks_gate_the_component() {
    let sb = control_plane::start().await;
    let client = control_plane::client(&sb.cluster_url("checks"));
    let mut ok = component(
        Layer::Apps,
        "ok",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: ok }\ndata: { a: b }\n",
    );
    ok.checks = vec![HttpCheck {
        url: format!("{}/healthz", sb.url()),
        expect: 200,
        timeout: Duration::from_secs(2),
        ca_pem: None,
    }];
    let mut bad = component(
        Layer::Apps,
        "bad",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: bad }\ndata: { a: b }\n",
    );
    bad.wait = Duration::from_secs(2);
    bad.checks = vec![HttpCheck {
        url: format!("{}/healthz", sb.url()),
        expect: 204,
        timeout: Duration::from_secs(1),
        ca_pem: None,
    }];
    let r = run(&client, vec![ok, bad], false).await;
    assert_eq!(outcome(&r, "apps/ok"), NodeOutcome::Created);
    let (error, timed_out) = failure(&r, "apps/bad");
    assert!(timed_out);
    assert!(error.contains("/healthz to answer 204"), "{error}");
    assert!(error.contains("answered 200"), "{error}");
}

// ---------------------------------------------------------------------------------------------
// Diff

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_is_in_sync_after_apply_and_reports_scale_label_and_delete() {
    let sb = control_plane::start().await;
    let url = sb.cluster_url("drift");
    let client = control_plane::client(&url);
    let spec = component(Layer::Apps, "web", WEB);
    assert!(
        run(&client, vec![spec.clone()], false)
            .await
            .summary
            .converged
    );

    let d = diff_component(&client, &spec).await.expect("diff runs");
    assert!(!d.has_drift(), "server defaults are not drift: {d:#?}");
    assert!(d.objects.iter().all(|o| o.state == DriftState::InSync));
    assert!(d.unhealthy.is_empty(), "{:?}", d.unhealthy);
    // kubectl agrees there is nothing to change (exit 0 = no differences).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("desired.yaml");
    let desired: Vec<String> = spec
        .manifests
        .iter()
        .map(|m| {
            let mut o = m.object.clone();
            spec.marks().stamp(&mut o);
            serde_json::to_string(&o).unwrap()
        })
        .collect();
    std::fs::write(&file, desired.join("\n---\n")).unwrap();
    let (same, out, err) = control_plane::kubectl_async(
        &url,
        &[
            "diff",
            "--server-side",
            "--field-manager=phoenix",
            "-f",
            file.to_str().unwrap(),
        ],
    )
    .await;
    assert!(same, "kubectl diff found changes: {out}{err}");

    for args in [
        vec!["scale", "deployment", "api", "-n", "web", "--replicas=4"],
        vec![
            "label",
            "configmap",
            "settings",
            "-n",
            "web",
            "team=red",
            "--overwrite",
        ],
        vec!["delete", "service", "api", "-n", "web"],
    ] {
        let (ok, _, err) = control_plane::kubectl_async(&url, &args).await;
        assert!(ok, "kubectl {args:?}: {err}");
    }
    let d = diff_component(&client, &spec).await.expect("diff runs");
    assert!(d.has_drift());
    let state = |kind: &str| {
        &d.objects
            .iter()
            .find(|o| o.object.kind == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
            .state
    };
    let DriftState::Changed(fields) = state("Deployment") else {
        panic!("deployment: {:?}", state("Deployment"));
    };
    assert_eq!(fields.len(), 1, "{fields:?}");
    assert_eq!(fields[0].path, ".spec.replicas");
    assert_eq!(fields[0].desired, Some(json!(2)));
    assert_eq!(fields[0].live, Some(json!(4)));
    let DriftState::Changed(fields) = state("ConfigMap") else {
        panic!("configmap: {:?}", state("ConfigMap"));
    };
    assert_eq!(fields[0].path, ".metadata.labels.team");
    assert_eq!(fields[0].live, Some(json!("red")));
    assert_eq!(state("Service"), &DriftState::Missing);
    assert_eq!(state("Namespace"), &DriftState::InSync);

    // An object that left Git but still exists is extra.
    let mut smaller = spec.clone();
    smaller
        .manifests
        .retain(|m| m.object["kind"] != "ConfigMap");
    let d = diff_component(&client, &smaller).await.expect("diff runs");
    assert_eq!(d.extra.len(), 1, "{:?}", d.extra);
    assert_eq!(d.extra[0].name, "settings");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_lists_unhealthy_objects_and_clusters_are_independent() {
    let sb = control_plane::start().await;
    let a = control_plane::client(&sb.cluster_url("alpha"));
    let b = control_plane::client(&sb.cluster_url("beta"));
    let mut spec = component(
        Layer::Apps,
        "web",
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
  namespace: default
spec:
  selector: { matchLabels: { app: api } }
  template:
    metadata: { labels: { app: api }, annotations: { testenv.phoenix.dev/ready: never } }
    spec: { containers: [{ name: c, image: "api:1" }] }
"#,
    );
    spec.wait = Duration::from_secs(1);
    // Converge once against alpha directly, without the health wait being satisfiable.
    let sink = EventSink::new();
    let ctx =
        phoenix::engine::NodeCtx::standalone("apps/web", Layer::Apps, sink, CancelToken::new());
    let attempt = tokio::time::timeout(
        Duration::from_secs(1),
        converge(&a, &spec, &opts(), &Resolver::new(), &ctx),
    )
    .await;
    assert!(attempt.is_err(), "a never-ready deployment cannot converge");
    let d = diff_component(&a, &spec).await.unwrap();
    assert!(!d.has_drift(), "{d:#?}");
    assert_eq!(d.unhealthy.len(), 1);
    assert!(
        d.unhealthy[0].reason.contains("replicas"),
        "{:?}",
        d.unhealthy
    );
    // beta is another cluster: nothing of it is there.
    let d = diff_component(&b, &spec).await.unwrap();
    assert_eq!(d.objects[0].state, DriftState::Missing);
}

/// Waits until the Deployment is rolled out and its resourceVersion stays put for 300ms.
async fn settled(client: &kube::Client, ns: &str, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let read = || {
            get(
                client,
                "apps/v1",
                "Deployment",
                "deployments",
                Some(ns),
                name,
            )
        };
        let a = read().await.expect("deployment exists");
        let done = a["status"]["readyReplicas"] == a["spec"]["replicas"]
            && a["status"]["observedGeneration"] == a["metadata"]["generation"];
        tokio::time::sleep(Duration::from_millis(300)).await;
        let b = read().await.expect("deployment exists");
        if done && rv(&a) == rv(&b) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Deployment {ns}/{name} did not settle: {b}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_objects_skip_the_dry_run_until_anything_writes_them() {
    let sb = control_plane::start().await;
    let proxy = kube_proxy::KubeProxy::start(sb.addr().port());
    let url = format!("{}/clusters/sealed", proxy.url());
    let client = control_plane::client(&url);
    let dir = tempfile::tempdir().unwrap();
    let seals = SealStore::in_dir(dir.path());
    let spec = component(Layer::Apps, "web", WEB);
    let applied = run_with(
        &client,
        vec![spec.clone()],
        false,
        ApplyOptions {
            seals: seals.clone(),
            ..opts()
        },
    )
    .await;
    assert!(applied.summary.converged);
    let dry_runs = || proxy.count("dryRun=All");
    let diff = || async { diff_component_with(&client, &spec, &Resolver::new(), 8, &seals).await };

    // The rebuild sealed what it applied (the Deployment's status moved after the apply; only
    // status): no dry run at all, and in sync.
    let d = diff().await.expect("diff runs");
    assert!(!d.has_drift(), "{d:#?}");
    assert_eq!(
        dry_runs(),
        0,
        "every object was sealed by the rebuild: {:?}",
        proxy.lines()
    );
    assert_eq!(d.dry_runs, 0, "the diff counts what it sends");

    // A write by someone else moves the resourceVersion: that object goes through the dry run
    // and its drift is found; the others stay sealed.
    let (ok, _, err) = control_plane::kubectl_async(
        &url,
        &["scale", "deployment", "api", "-n", "web", "--replicas=4"],
    )
    .await;
    assert!(ok, "{err}");
    let d = diff().await.expect("diff runs");
    assert!(d.has_drift());
    let changed: Vec<_> = d
        .objects
        .iter()
        .filter(|o| o.state != DriftState::InSync)
        .map(|o| o.object.kind.as_str())
        .collect();
    assert_eq!(changed, ["Deployment"]);
    assert_eq!(dry_runs(), 1);
    assert_eq!(d.dry_runs, 1);
    // Still drifted on the next diff: a drifted object is never sealed.
    assert!(diff().await.unwrap().has_drift());
    assert_eq!(dry_runs(), 2);

    // Scaled back by hand (a write that ends in sync): the dry run proves it once, then it is
    // sealed again.
    let (ok, _, err) = control_plane::kubectl_async(
        &url,
        &["scale", "deployment", "api", "-n", "web", "--replicas=2"],
    )
    .await;
    assert!(ok, "{err}");
    // The sandbox's controller writes status after a scale; a seal made before its last write
    // would (rightly) not hold.
    settled(&client, "web", "api").await;
    assert!(!diff().await.unwrap().has_drift());
    assert_eq!(dry_runs(), 3);
    assert!(!diff().await.unwrap().has_drift());
    assert_eq!(dry_runs(), 3);

    // A change in Git (another body) is not covered by the seals.
    let mut next = spec.clone();
    for m in &mut next.manifests {
        if m.object["kind"] == "ConfigMap" {
            m.object["data"]["mode"] = json!("slow");
        }
    }
    let d = diff_component_with(&client, &next, &Resolver::new(), 8, &seals)
        .await
        .unwrap();
    assert!(d.has_drift());
    assert_eq!(dry_runs(), 4, "only the ConfigMap's body changed");

    // Without seals every object goes through the dry run.
    let before = dry_runs();
    let d = diff_component_with(&client, &spec, &Resolver::new(), 8, &SealStore::none())
        .await
        .unwrap();
    assert!(!d.has_drift());
    assert_eq!(dry_runs() - before, spec.manifests.len());
}
