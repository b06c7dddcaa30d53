//! Watch, lifecycle, the simulated controllers and nodes, multiple clusters, TLS, CRDs — with kube-rs.

mod common;

use common::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, PersistentVolumeClaim, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::Discovery;
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::{json, Value};
use std::time::Duration;

fn cond<'a>(status: &'a Value, ty: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
}

async fn create_cm(c: &kube::Client, ns: &str, name: &str, labels: Value) -> ConfigMap {
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), ns);
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn watch_from_resource_version_with_selectors_bookmarks_and_timeout() {
    let sb = sandbox().await;
    let c = client(&sb.url());
    let first = create_cm(&c, "default", "a", json!({"w": "yes"})).await;
    let rv = first.metadata.resource_version.unwrap();
    create_cm(&c, "default", "b", json!({"w": "no"})).await;
    create_cm(&c, "default", "c", json!({"w": "yes"})).await;
    let base = format!("{}/api/v1/namespaces/default/configmaps", sb.url());
    // From a resourceVersion: only later events, filtered by the selector.
    let evs = raw_lines(
        &format!("{base}?watch=true&resourceVersion={rv}&labelSelector=w%3Dyes"),
        1,
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0]["type"], "ADDED");
    assert_eq!(evs[0]["object"]["metadata"]["name"], "c");
    // From 0: synthetic ADDED for the current state.
    let evs = raw_lines(
        &format!("{base}?watch=1&resourceVersion=0&fieldSelector=metadata.name%21%3Db"),
        2,
        Duration::from_secs(3),
    )
    .await;
    let names: Vec<&str> = evs
        .iter()
        .map(|e| e["object"]["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["a", "c"]);
    // Live events arrive, bookmarks are sent, and timeoutSeconds ends the stream.
    let url = format!("{base}?watch=true&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=2&labelSelector=w");
    let h = tokio::spawn(async move { raw_lines(&url, 100, Duration::from_secs(6)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"x": "1"}})),
    )
    .await
    .unwrap();
    cms.delete("b", &DeleteParams::default()).await.unwrap();
    let started = std::time::Instant::now();
    let evs = h.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "timeoutSeconds ended the stream"
    );
    let types: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(types.contains(&"MODIFIED"), "{types:?}");
    assert!(types.contains(&"DELETED"), "{types:?}");
    assert!(types.contains(&"BOOKMARK"), "{types:?}");
    let bm = evs.iter().find(|e| e["type"] == "BOOKMARK").unwrap();
    assert!(bm["object"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .is_ok());
    let modified = evs.iter().find(|e| e["type"] == "MODIFIED").unwrap();
    assert_eq!(modified["object"]["data"]["x"], "1");
}

#[tokio::test]
async fn watch_from_a_compacted_resource_version_is_gone() {
    let sb = sandbox_with(|c| c.watch_history = 20).await;
    let c = client(&sb.url());
    let first = create_cm(&c, "default", "first", json!({})).await;
    for i in 0..30 {
        create_cm(&c, "default", &format!("n{i}"), json!({})).await;
    }
    let rv = first.metadata.resource_version.unwrap();
    let evs = raw_lines(
        &format!(
            "{}/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}",
            sb.url()
        ),
        1,
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0]["type"], "ERROR");
    assert_eq!(evs[0]["object"]["code"], 410);
    assert_eq!(evs[0]["object"]["reason"], "Expired");
    // kube-rs watcher recovers from 410 by relisting and still sees everything.
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let seen = watcher(cms, watcher::Config::default())
        .applied_objects()
        .take(31)
        .try_collect::<Vec<_>>();
    let seen = tokio::time::timeout(Duration::from_secs(10), seen)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.len(), 31);
}

#[tokio::test]
async fn kube_runtime_watcher_and_await_condition() {
    let sb = sandbox().await;
    let c = client(&sb.url());
    let deps: Api<Deployment> = Api::namespaced(c.clone(), "default");
    // Watcher with streaming lists (sendInitialEvents + bookmarks) and classic list+watch both work.
    for cfg in [
        watcher::Config::default(),
        watcher::Config::default().streaming_lists(),
    ] {
        let stream = watcher(deps.clone(), cfg.labels("app=w")).applied_objects();
        let mut stream = Box::pin(stream);
        let dep: Deployment = serde_json::from_value(deployment("w", 1, "nginx:1.27")).unwrap();
        deps.patch("w", &PatchParams::apply("phoenix"), &Patch::Apply(&dep))
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got.metadata.name.as_deref(), Some("w"));
    }
    let done = await_condition(deps.clone(), "w", conditions::is_deployment_completed());
    let d = tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let st = serde_json::to_value(d.status.unwrap()).unwrap();
    assert_eq!(cond(&st, "Available").unwrap()["status"], "True");
    assert_eq!(
        cond(&st, "Progressing").unwrap()["reason"],
        "NewReplicaSetAvailable"
    );
    assert_eq!(st["observedGeneration"], 1);
    assert_eq!(st["readyReplicas"], 1);
    assert_eq!(st["updatedReplicas"], 1);
    assert_eq!(st["availableReplicas"], 1);
}

#[tokio::test]
async fn namespace_deletion_terminates_then_removes_contents() {
    let sb = sandbox().await;
    let c = client(&sb.url());
    let nss: Api<Namespace> = Api::all(c.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "gone"}})).unwrap(),
    )
    .await
    .unwrap();
    create_cm(&c, "gone", "x", json!({})).await;
    let deleted = nss.delete("gone", &DeleteParams::default()).await.unwrap();
    let ns = deleted.left().expect("the namespace object is returned");
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Terminating"));
    assert!(ns.metadata.deletion_timestamp.is_some());
    eventually("namespace removal", Duration::from_secs(5), || async {
        nss.get_opt("gone").await.unwrap().is_none().then_some(())
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "gone");
    assert!(
        cms.get_opt("x").await.unwrap().is_none(),
        "contents deleted"
    );
}

#[tokio::test]
async fn creating_in_a_terminating_namespace_is_forbidden() {
    let sb = sandbox().await;
    let c = client(&sb.url());
    let nss: Api<Namespace> = Api::all(c.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "t"}})).unwrap(),
    )
    .await
    .unwrap();
    // A finalizer on a child keeps the namespace Terminating.
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "t");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    nss.delete("t", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let err = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "new"}})).unwrap(),
        )
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden")),
        e => panic!("{e:?}"),
    }
    assert!(
        nss.get_opt("t").await.unwrap().is_some(),
        "held by the child's finalizer"
    );
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    eventually("namespace removal", Duration::from_secs(5), || async {
        nss.get_opt("t").await.unwrap().is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let sb = sandbox().await;
    let c = client(&sb.url());
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "f", "finalizers": ["example.com/x"]}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    cms.delete("f", &DeleteParams::default()).await.unwrap();
    let held = cms.get("f").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    cms.patch(
        "f",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": []}})),
    )
    .await
    .unwrap();
    assert!(cms.get_opt("f").await.unwrap().is_none());
}

#[tokio::test]
async fn owner_reference_garbage_collection() {
    let sb = sandbox().await;
    let c = client(&sb.url());
    let deps: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let owner = deps
        .create(
            &PostParams::default(),
            &serde_json::from_value(deployment("owner", 1, "nginx:1.27")).unwrap(),
        )
        .await
        .unwrap();
    let uid = owner.metadata.uid.clone().unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    for name in ["dep1", "dep2"] {
        cms.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name, "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": "owner", "uid": uid}]}}))
            .unwrap(),
        )
        .await
        .unwrap();
    }
    deps.delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    assert!(cms.get_opt("dep1").await.unwrap().is_none());
    assert!(cms.get_opt("dep2").await.unwrap().is_none());
    // Orphan propagation leaves dependents, without the owner reference.
    let owner = deps
        .create(
            &PostParams::default(),
            &serde_json::from_value(deployment("owner", 1, "nginx:1.27")).unwrap(),
        )
        .await
        .unwrap();
    let uid = owner.metadata.uid.clone().unwrap();
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "kept", "ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "owner", "uid": uid}]}}))
        .unwrap(),
    )
    .await
    .unwrap();
    deps.delete("owner", &DeleteParams::orphan()).await.unwrap();
    let kept = cms.get("kept").await.unwrap();
    assert!(kept
        .metadata
        .owner_references
        .unwrap_or_default()
        .is_empty());
}

#[tokio::test]
async fn workloads_become_ready_after_the_delay_and_failures_are_injected() {
    let sb = sandbox_with(|c| c.ready_delay = Duration::from_millis(200)).await;
    let c = client(&sb.url());
    let deps: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let mk = |name: &str, ann: Value| {
        let mut d = deployment(name, 2, "nginx:1.27");
        d["metadata"]["annotations"] = ann;
        serde_json::from_value::<Deployment>(d).unwrap()
    };
    deps.create(&PostParams::default(), &mk("ok", json!({})))
        .await
        .unwrap();
    deps.create(
        &PostParams::default(),
        &mk("slow", json!({"sandbox.phoenix.dev/ready-delay": "2s"})),
    )
    .await
    .unwrap();
    deps.create(
        &PostParams::default(),
        &mk("never", json!({"sandbox.phoenix.dev/fail": "never-ready"})),
    )
    .await
    .unwrap();
    deps.create(
        &PostParams::default(),
        &mk(
            "deadline",
            json!({"sandbox.phoenix.dev/fail": "progress-deadline"}),
        ),
    )
    .await
    .unwrap();
    let status = |name: &'static str| {
        let deps = deps.clone();
        async move { serde_json::to_value(deps.get(name).await.unwrap().status).unwrap() }
    };
    // Before the delay: Progressing, not Available.
    eventually(
        "slow progressing but not available",
        Duration::from_secs(2),
        || async {
            let s = status("slow").await;
            (cond(&s, "Available").map(|c| c["status"] == "False") == Some(true)
                && cond(&s, "Progressing").map(|c| c["reason"] == "ReplicaSetUpdated")
                    == Some(true))
            .then_some(())
        },
    )
    .await;
    eventually("ok available", Duration::from_secs(5), || async {
        let s = status("ok").await;
        (cond(&s, "Available").map(|c| c["status"] == "True") == Some(true)).then_some(())
    })
    .await;
    let s = status("slow").await;
    assert_eq!(
        cond(&s, "Available").unwrap()["status"],
        "False",
        "the per-object delay holds it back"
    );
    eventually("slow available", Duration::from_secs(6), || async {
        let s = status("slow").await;
        (cond(&s, "Available").map(|c| c["status"] == "True") == Some(true)).then_some(())
    })
    .await;
    let s = status("never").await;
    assert_eq!(cond(&s, "Available").unwrap()["status"], "False");
    assert_eq!(cond(&s, "Progressing").unwrap()["status"], "True");
    let s = status("deadline").await;
    assert_eq!(cond(&s, "Progressing").unwrap()["status"], "False");
    assert_eq!(
        cond(&s, "Progressing").unwrap()["reason"],
        "ProgressDeadlineExceeded"
    );

    // Jobs complete or fail.
    let jobs: Api<Job> = Api::namespaced(c.clone(), "default");
    let job = |name: &str, fail: Option<&str>| {
        let mut j = json!({"metadata": {"name": name}, "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox:1.36"}]}}}});
        if let Some(f) = fail {
            j["metadata"]["annotations"] = json!({"sandbox.phoenix.dev/fail": f});
        }
        serde_json::from_value::<Job>(j).unwrap()
    };
    jobs.create(&PostParams::default(), &job("good", None))
        .await
        .unwrap();
    jobs.create(&PostParams::default(), &job("bad", Some("job-failed")))
        .await
        .unwrap();
    let done = tokio::time::timeout(
        Duration::from_secs(5),
        await_condition(jobs.clone(), "good", conditions::is_job_completed()),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    let s = serde_json::to_value(done.status.unwrap()).unwrap();
    assert_eq!(s["succeeded"], 1);
    assert_eq!(cond(&s, "Complete").unwrap()["status"], "True");
    let s = serde_json::to_value(jobs.get("bad").await.unwrap().status).unwrap();
    assert_eq!(cond(&s, "Failed").unwrap()["status"], "True");

    // StatefulSets, DaemonSets, PVCs, LoadBalancer Services.
    let sts: Api<StatefulSet> = Api::namespaced(c.clone(), "default");
    let mut s = deployment("db", 2, "postgres:16");
    s["spec"]["serviceName"] = json!("db");
    s["kind"] = json!("StatefulSet");
    sts.create(&PostParams::default(), &serde_json::from_value(s).unwrap())
        .await
        .unwrap();
    let dss: Api<DaemonSet> = Api::namespaced(c.clone(), "default");
    let mut d = deployment("agent", 1, "agent:1");
    d["spec"].as_object_mut().unwrap().remove("replicas");
    d["kind"] = json!("DaemonSet");
    dss.create(&PostParams::default(), &serde_json::from_value(d).unwrap())
        .await
        .unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), "default");
    pvcs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "data"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}))
        .unwrap(),
    )
    .await
    .unwrap();
    let svcs: Api<Service> = Api::namespaced(c.clone(), "default");
    svcs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "lb"}, "spec": {
        "type": "LoadBalancer", "ports": [{"port": 443}]}}))
        .unwrap(),
    )
    .await
    .unwrap();
    eventually(
        "statefulset, daemonset, pvc and lb ready",
        Duration::from_secs(5),
        || async {
            let s = serde_json::to_value(sts.get("db").await.unwrap().status).unwrap();
            let d = serde_json::to_value(dss.get("agent").await.unwrap().status).unwrap();
            let p = serde_json::to_value(pvcs.get("data").await.unwrap().status).unwrap();
            let l = serde_json::to_value(svcs.get("lb").await.unwrap().status).unwrap();
            (s["readyReplicas"] == 2
                && s["observedGeneration"] == 1
                && d["numberReady"] == 1
                && d["desiredNumberScheduled"] == 1
                && p["phase"] == "Bound"
                && p["capacity"]["storage"] == "1Gi"
                && l["loadBalancer"]["ingress"][0]["ip"].is_string())
            .then_some(())
        },
    )
    .await;
    // Defaults of the other workload kinds.
    let s = serde_json::to_value(sts.get("db").await.unwrap().spec).unwrap();
    assert_eq!(s["podManagementPolicy"], "OrderedReady");
    assert_eq!(
        s["updateStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
    );
    assert_eq!(
        s["template"]["spec"]["containers"][0]["imagePullPolicy"],
        "IfNotPresent"
    );
    let d = serde_json::to_value(dss.get("agent").await.unwrap().spec).unwrap();
    assert_eq!(d["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(d["revisionHistoryLimit"], 10);
    let j = serde_json::to_value(jobs.get("good").await.unwrap().spec).unwrap();
    assert_eq!(
        (
            j["backoffLimit"].as_i64(),
            j["completions"].as_i64(),
            j["parallelism"].as_i64()
        ),
        (Some(6), Some(1), Some(1))
    );
    assert_eq!(j["completionMode"], "NonIndexed");
    assert!(
        j["template"]["spec"]["restartPolicy"] == "Never",
        "a Job's restartPolicy is not defaulted to Always"
    );
    let lb = svcs.get("lb").await.unwrap();
    assert!(
        lb.spec.unwrap().ports.unwrap()[0].node_port.is_some(),
        "LoadBalancer gets a nodePort"
    );
}

#[tokio::test]
async fn workloads_wait_for_a_ready_node_and_admin_endpoints_toggle_nodes() {
    let sb = sandbox_with(|c| c.ready_delay = Duration::from_millis(100)).await;
    let c = client(&sb.url());
    let (code, v) = raw("GET", &format!("{}/sandbox/clusters", sb.url()), "", "").await;
    assert_eq!(code, 200);
    assert_eq!(v[0]["name"], "default");
    assert_eq!(
        v[0]["nodes"][0],
        json!({"name": "sandbox-node-1", "ready": true})
    );
    let (code, node) = raw(
        "POST",
        &format!(
            "{}/sandbox/clusters/default/nodes/sandbox-node-1/not-ready",
            sb.url()
        ),
        "",
        "",
    )
    .await;
    assert_eq!(code, 200);
    let ready = node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "False");
    let deps: Api<Deployment> = Api::namespaced(c.clone(), "default");
    deps.create(
        &PostParams::default(),
        &serde_json::from_value(deployment("web", 1, "nginx:1.27")).unwrap(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let s = serde_json::to_value(deps.get("web").await.unwrap().status).unwrap();
    assert_eq!(
        cond(&s, "Available").unwrap()["status"],
        "False",
        "no Ready node, no availability"
    );
    // It stays NotReady until reset.
    let nodes: Api<Node> = Api::all(c.clone());
    let n = serde_json::to_value(nodes.get("sandbox-node-1").await.unwrap()).unwrap();
    assert_eq!(cond(&n["status"], "Ready").unwrap()["status"], "False");
    let (code, _) = raw(
        "POST",
        &format!(
            "{}/sandbox/clusters/default/nodes/sandbox-node-1/ready",
            sb.url()
        ),
        "",
        "",
    )
    .await;
    assert_eq!(code, 200);
    let d = tokio::time::timeout(
        Duration::from_secs(5),
        await_condition(deps.clone(), "web", conditions::is_deployment_completed()),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(d.is_some());
    let (code, _) = raw(
        "POST",
        &format!("{}/sandbox/clusters/default/nodes/nope/ready", sb.url()),
        "",
        "",
    )
    .await;
    assert_eq!(code, 404);
    let (code, _) = raw(
        "POST",
        &format!("{}/sandbox/clusters/nope/nodes/x/ready", sb.url()),
        "",
        "",
    )
    .await;
    assert_eq!(code, 404);
    // Node facts.
    let n = nodes.get("sandbox-node-1").await.unwrap();
    assert_eq!(
        n.status.unwrap().node_info.unwrap().kubelet_version,
        "v1.36.0"
    );
}

#[tokio::test]
async fn coredns_becomes_available_and_is_managed_by_k3s() {
    let sb = sandbox().await;
    let deps: Api<Deployment> = Api::namespaced(client(&sb.url()), "kube-system");
    let d = tokio::time::timeout(
        Duration::from_secs(5),
        await_condition(deps, "coredns", conditions::is_deployment_completed()),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    assert_eq!(d.metadata.labels.unwrap()["k8s-app"], "kube-dns");
    assert!(d
        .metadata
        .managed_fields
        .unwrap()
        .iter()
        .any(|m| m.manager.as_deref() == Some("k3s")));
}

#[tokio::test]
async fn clusters_under_path_prefixes_are_independent() {
    let sb = sandbox().await;
    let a = client(&sb.cluster_url("a"));
    let b = client(&sb.cluster_url("b"));
    create_cm(&a, "default", "only-in-a", json!({})).await;
    let in_b: Api<ConfigMap> = Api::namespaced(b.clone(), "default");
    assert!(in_b.get_opt("only-in-a").await.unwrap().is_none());
    let root: Api<ConfigMap> = Api::namespaced(client(&sb.url()), "default");
    assert!(root.get_opt("only-in-a").await.unwrap().is_none());
    // A CRD in cluster a is discovered there only.
    let crds: Api<CustomResourceDefinition> = Api::all(a.clone());
    crds.patch(
        "widgets.example.com",
        &PatchParams::apply("phoenix"),
        &Patch::Apply(widget_crd()),
    )
    .await
    .unwrap();
    let da = Discovery::new(a.clone()).run().await.unwrap();
    let db = Discovery::new(b.clone()).run().await.unwrap();
    let gvk = GroupVersionKind::gvk("example.com", "v1", "Widget");
    assert!(da.resolve_gvk(&gvk).is_some());
    assert!(db.resolve_gvk(&gvk).is_none());
    let (_, list) = raw("GET", &format!("{}/sandbox/clusters", sb.url()), "", "").await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["a", "b", "default"]);
    assert_eq!(sb.clusters(), vec!["a", "b", "default"]);
    // Each cluster has its own nodes, namespaces and coredns.
    let nodes: Api<Node> = Api::all(b.clone());
    assert_eq!(
        nodes.list(&Default::default()).await.unwrap().items.len(),
        1
    );
}

fn widget_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com", "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "shortNames": ["wd"], "categories": ["all"]},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {
                        "size": {"type": "integer"},
                        "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                            "items": {"type": "object", "properties": {"name": {"type": "string"}, "port": {"type": "integer"}}}},
                        "tags": {"type": "array", "items": {"type": "string"}}
                    }},
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                }}}
            }]
        }
    })
}

#[tokio::test]
async fn crds_are_established_and_their_kinds_served() {
    let sb = sandbox().await;
    let c = client(&sb.url());
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    crds.patch(
        "widgets.example.com",
        &PatchParams::apply("phoenix"),
        &Patch::Apply(widget_crd()),
    )
    .await
    .unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        await_condition(
            crds.clone(),
            "widgets.example.com",
            conditions::is_crd_established(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let crd = serde_json::to_value(crds.get("widgets.example.com").await.unwrap()).unwrap();
    assert_eq!(
        cond(&crd["status"], "NamesAccepted").unwrap()["status"],
        "True"
    );
    let (_, rl) = raw("GET", &format!("{}/apis/example.com/v1", sb.url()), "", "").await;
    let w = rl["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "widgets")
        .unwrap();
    assert_eq!(w["shortNames"], json!(["wd"]));
    assert_eq!(w["kind"], "Widget");
    let discovery = Discovery::new(c.clone()).run().await.unwrap();
    let (ar, _) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("example.com", "v1", "Widget"))
        .unwrap();
    let ws: Api<DynamicObject> = Api::namespaced_with(c.clone(), "default", &ar);
    let w = |ports: Value, tags: Value| {
        json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
        "spec": {"size": 1, "ports": ports, "tags": tags}})
    };
    ws.patch(
        "w",
        &PatchParams::apply("a"),
        &Patch::Apply(w(json!([{"name": "http", "port": 80}]), json!(["x"]))),
    )
    .await
    .unwrap();
    let o = ws
        .patch("w", &PatchParams::apply("b").force(), &Patch::Apply(json!({"apiVersion": "example.com/v1", "kind": "Widget",
            "metadata": {"name": "w"}, "spec": {"ports": [{"name": "grpc", "port": 90}], "tags": ["y"]}})))
        .await
        .unwrap();
    assert_eq!(
        o.data["spec"]["ports"].as_array().unwrap().len(),
        2,
        "list-map-keys from the CRD schema merge ports"
    );
    assert_eq!(
        o.data["spec"]["tags"],
        json!(["y"]),
        "lists without list-type are atomic"
    );
    assert_eq!(o.metadata.generation, Some(2));
    // Status subresource from the CRD.
    let s = ws
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ok": true}, "spec": {"size": 5}})),
        )
        .await
        .unwrap();
    assert_eq!(s.data["status"]["ok"], true);
    assert_eq!(s.data["spec"]["size"], 1);
    // Deleting the CRD removes the kind and its objects.
    crds.delete("widgets.example.com", &DeleteParams::default())
        .await
        .unwrap();
    let (code, _) = raw(
        "GET",
        &format!(
            "{}/apis/example.com/v1/namespaces/default/widgets/w",
            sb.url()
        ),
        "",
        "",
    )
    .await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn tls_with_client_certificate_or_token_and_401_without() {
    let sb = sandbox_with(|c| {
        c.tls = true;
        c.token = Some("s3cret".into());
    })
    .await;
    assert!(sb.url().starts_with("https://127.0.0.1:"));
    // Token auth via the generated kubeconfig (CA data + token).
    let kc = sb.kubeconfig(None);
    assert!(kc.contains("certificate-authority-data:"));
    assert!(kc.contains("token: s3cret"));
    let c = client_from_kubeconfig(&kc).await;
    let nss: Api<Namespace> = Api::all(c);
    assert!(nss.get_opt("default").await.unwrap().is_some());
    // Client certificate auth.
    let tls = sb.tls().unwrap();
    let cert_kc = kube_sandbox::kubeconfig_yaml(&sb.url(), "cert", Some(tls), None);
    assert!(cert_kc.contains("client-certificate-data:"));
    let c = client_from_kubeconfig(&cert_kc).await;
    let nss: Api<Namespace> = Api::all(c);
    assert!(nss.get_opt("default").await.unwrap().is_some());
    // Neither: 401.
    let mut cfg = kube::Config::new(sb.url().parse().unwrap());
    cfg.root_cert = Some(vec![pem_to_der(&tls.ca_pem)]);
    let nss: Api<Namespace> = Api::all(kube::Client::try_from(cfg).unwrap());
    match nss.get_opt("default").await.unwrap_err() {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (401, "Unauthorized")),
        e => panic!("expected 401, got {e:?}"),
    }
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

#[test]
fn start_in_thread_serves_and_stops_on_drop() {
    let h = kube_sandbox::Sandbox::start_in_thread(kube_sandbox::Config::default()).unwrap();
    let addr = h.addr();
    let mut s = std::net::TcpStream::connect(addr).expect("serving");
    use std::io::{Read, Write};
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("ok"));
    drop(h);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(addr).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "still serving after drop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn a_rollout_keeps_an_available_deployment_available_while_progressing() {
    let sb = sandbox_with(|c| c.ready_delay = Duration::from_millis(100)).await;
    let deps: Api<Deployment> = Api::namespaced(client(&sb.url()), "default");
    let mut d = deployment("web", 2, "nginx:1.27");
    d["metadata"]["annotations"] = json!({"sandbox.phoenix.dev/ready-delay": "1500ms"});
    deps.patch("web", &PatchParams::apply("phoenix"), &Patch::Apply(&d))
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        await_condition(deps.clone(), "web", conditions::is_deployment_completed()),
    )
    .await
    .unwrap()
    .unwrap();
    d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:1.28");
    deps.patch("web", &PatchParams::apply("phoenix"), &Patch::Apply(&d))
        .await
        .unwrap();
    let s = eventually("rollout observed", Duration::from_secs(2), || async {
        let s = serde_json::to_value(deps.get("web").await.unwrap().status).unwrap();
        (s["observedGeneration"] == 2).then_some(s)
    })
    .await;
    assert_eq!(
        cond(&s, "Available").unwrap()["status"],
        "True",
        "old replicas keep serving: {s}"
    );
    assert_eq!(
        cond(&s, "Progressing").unwrap()["reason"],
        "ReplicaSetUpdated"
    );
    assert_eq!(s["updatedReplicas"], 0);
    assert_eq!(s["availableReplicas"], 2);
    tokio::time::timeout(
        Duration::from_secs(5),
        await_condition(deps.clone(), "web", conditions::is_deployment_completed()),
    )
    .await
    .unwrap()
    .unwrap();
    let s = serde_json::to_value(deps.get("web").await.unwrap().status).unwrap();
    assert_eq!(s["updatedReplicas"], 2);
}

#[tokio::test]
async fn selector_watches_see_objects_enter_and_leave_as_added_and_deleted() {
    let sb = sandbox().await;
    let c = client(&sb.url());
    let first = create_cm(&c, "default", "m", json!({"tier": "fe"})).await;
    let rv = first.metadata.resource_version.unwrap();
    let url = format!(
        "{}/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&labelSelector=tier%3Dbe",
        sb.url()
    );
    let h = tokio::spawn(async move { raw_lines(&url, 3, Duration::from_secs(5)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let relabel = |tier: &'static str| {
        let cms = cms.clone();
        async move {
            cms.patch(
                "m",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"tier": tier}}})),
            )
            .await
            .unwrap();
        }
    };
    relabel("be").await;
    cms.patch(
        "m",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "v"}})),
    )
    .await
    .unwrap();
    relabel("fe").await;
    relabel("fe2").await;
    let evs = h.await.unwrap();
    let types: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, vec!["ADDED", "MODIFIED", "DELETED"]);
    assert_eq!(evs[2]["object"]["metadata"]["labels"]["tier"], "fe");
}

#[test]
fn rust_admin_api_sets_node_readiness_and_cluster_version_from_any_thread() {
    let sb = kube_sandbox::Sandbox::start_in_thread(kube_sandbox::Config::default()).unwrap();
    sb.set_kubernetes_version("prod", "v1.31.4+k3s1").unwrap();
    assert!(matches!(
        sb.set_kubernetes_version("prod", "1.31"),
        Err(kube_sandbox::Error::InvalidVersion(_))
    ));
    assert!(matches!(
        sb.set_kubernetes_version("Bad_Name", "v1.31.0"),
        Err(kube_sandbox::Error::InvalidCluster(_))
    ));
    assert!(sb.set_node_ready("prod", "sandbox-node-1", false));
    assert!(!sb.set_node_ready("prod", "nope", false));
    assert!(!sb.set_node_ready("nope", "sandbox-node-1", false));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = client(&sb.cluster_url("prod"));
        let v = c.apiserver_version().await.unwrap();
        assert_eq!(
            (v.git_version.as_str(), v.minor.as_str()),
            ("v1.31.4+k3s1", "31")
        );
        let nodes: Api<Node> = Api::all(c.clone());
        let n = nodes.get("sandbox-node-1").await.unwrap();
        let st = n.status.unwrap();
        assert_eq!(st.node_info.unwrap().kubelet_version, "v1.31.4+k3s1");
        assert!(st
            .conditions
            .unwrap()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "False"));
        // The admin endpoint does the same over HTTP.
        let (code, v) = raw(
            "POST",
            &format!("{}/sandbox/clusters/prod/version", sb.url()),
            "application/json",
            r#"{"gitVersion":"v1.32.1"}"#,
        )
        .await;
        assert_eq!((code, v["gitVersion"].as_str()), (200, Some("v1.32.1")));
        let (code, _) = raw(
            "POST",
            &format!("{}/sandbox/clusters/prod/version", sb.url()),
            "application/json",
            r#"{"gitVersion":"latest"}"#,
        )
        .await;
        assert_eq!(code, 400);
    });
    assert!(sb.set_node_ready("prod", "sandbox-node-1", true));
}

fn pod_ready(p: &k8s_openapi::api::core::v1::Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test]
async fn deployments_get_replicasets_and_pods_that_follow_scale_rollout_and_deletion() {
    use k8s_openapi::api::apps::v1::ReplicaSet;
    use k8s_openapi::api::core::v1::Pod;
    let sb = sandbox_with(|c| c.ready_delay = Duration::from_millis(200)).await;
    let c = client(&sb.url());
    let deps: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let mut d = deployment("web", 2, "nginx:1.27");
    deps.patch("web", &PatchParams::apply("phoenix"), &Patch::Apply(&d))
        .await
        .unwrap();
    let lp = kube::api::ListParams::default().labels("app=web");
    let ready_pods = |n: usize| {
        let pods = pods.clone();
        let lp = lp.clone();
        async move {
            let l = pods.list(&lp).await.unwrap().items;
            (l.len() == n && l.iter().all(pod_ready)).then_some(l)
        }
    };
    let l = eventually("2 ready pods", Duration::from_secs(5), || ready_pods(2)).await;
    let rs_list = rss.list(&lp).await.unwrap().items;
    assert_eq!(rs_list.len(), 1);
    let rs = &rs_list[0];
    let dep_uid = deps.get("web").await.unwrap().metadata.uid.unwrap();
    assert_eq!(
        rs.metadata.owner_references.as_ref().unwrap()[0].uid,
        dep_uid
    );
    let hash = rs.metadata.labels.as_ref().unwrap()["pod-template-hash"].clone();
    assert!(rs.metadata.name.as_ref().unwrap().ends_with(&hash));
    for p in &l {
        assert_eq!(
            p.metadata.owner_references.as_ref().unwrap()[0].uid,
            rs.metadata.uid.clone().unwrap()
        );
        assert_eq!(
            p.spec.as_ref().unwrap().node_name.as_deref(),
            Some("sandbox-node-1")
        );
        assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
        assert_eq!(
            p.metadata.labels.as_ref().unwrap()["pod-template-hash"],
            hash
        );
    }
    // Scale up: one more pod; the ready ones stay ready.
    d["spec"]["replicas"] = json!(3);
    deps.patch("web", &PatchParams::apply("phoenix"), &Patch::Apply(&d))
        .await
        .unwrap();
    eventually("3 ready pods", Duration::from_secs(5), || ready_pods(3)).await;
    // Rollout: a new ReplicaSet; the old one keeps its pods until the new one is ready, then goes to 0.
    d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:1.28");
    deps.patch("web", &PatchParams::apply("phoenix"), &Patch::Apply(&d))
        .await
        .unwrap();
    let l = eventually(
        "3 ready pods of the new template",
        Duration::from_secs(8),
        || async {
            let l = ready_pods(3).await?;
            l.iter()
                .all(|p| {
                    p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("nginx:1.28")
                })
                .then_some(l)
        },
    )
    .await;
    let rs_list = rss.list(&lp).await.unwrap().items;
    assert_eq!(rs_list.len(), 2);
    let old = rs_list
        .iter()
        .find(|r| r.metadata.labels.as_ref().unwrap()["pod-template-hash"] == hash)
        .unwrap();
    assert_eq!(old.spec.as_ref().unwrap().replicas, Some(0));
    assert!(l
        .iter()
        .all(|p| p.metadata.labels.as_ref().unwrap()["pod-template-hash"] != hash));
    // Deleting the Deployment garbage-collects ReplicaSets and Pods.
    deps.delete("web", &DeleteParams::default()).await.unwrap();
    assert!(rss.list(&lp).await.unwrap().items.is_empty());
    assert!(pods.list(&lp).await.unwrap().items.is_empty());
}

#[tokio::test]
async fn statefulset_daemonset_job_pods_and_unschedulable_pods() {
    use k8s_openapi::api::core::v1::Pod;
    let sb = sandbox_with(|c| {
        c.ready_delay = Duration::from_millis(200);
        c.nodes = 2;
    })
    .await;
    let c = client(&sb.url());
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let sts: Api<StatefulSet> = Api::namespaced(c.clone(), "default");
    let mut s = deployment("db", 2, "postgres:16");
    s["kind"] = json!("StatefulSet");
    s["spec"]["serviceName"] = json!("db");
    sts.create(&PostParams::default(), &serde_json::from_value(s).unwrap())
        .await
        .unwrap();
    let dss: Api<DaemonSet> = Api::namespaced(c.clone(), "default");
    let mut d = deployment("agent", 1, "agent:1");
    d["kind"] = json!("DaemonSet");
    d["spec"].as_object_mut().unwrap().remove("replicas");
    dss.create(&PostParams::default(), &serde_json::from_value(d).unwrap())
        .await
        .unwrap();
    let jobs: Api<Job> = Api::namespaced(c.clone(), "default");
    jobs.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "once"}, "spec": {"template": {
        "metadata": {"labels": {"app": "once"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1.36"}]}}}})).unwrap())
        .await
        .unwrap();
    let deps: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let mut bad = deployment("crash", 1, "bad:1");
    bad["metadata"]["annotations"] = json!({"sandbox.phoenix.dev/fail": "never-ready"});
    deps.create(
        &PostParams::default(),
        &serde_json::from_value(bad).unwrap(),
    )
    .await
    .unwrap();
    let names = |sel: &'static str| {
        let pods = pods.clone();
        async move {
            let mut l = pods
                .list(&kube::api::ListParams::default().labels(sel))
                .await
                .unwrap()
                .items;
            l.sort_by_key(|p| p.metadata.name.clone());
            l
        }
    };
    eventually(
        "statefulset, daemonset, job and crashing pods",
        Duration::from_secs(6),
        || async {
            let db = names("app=db").await;
            let agent = names("app=agent").await;
            let once = names("app=once").await;
            let crash = names("app=crash").await;
            let ok = db.len() == 2
                && db.iter().all(pod_ready)
                && agent.len() == 2
                && agent.iter().all(pod_ready)
                && once.len() == 1
                && once[0].status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")
                && crash.len() == 1
                && crash[0]
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|cs| {
                        cs[0]
                            .state
                            .as_ref()
                            .and_then(|s| s.waiting.as_ref())
                            .and_then(|w| w.reason.as_deref())
                            == Some("CrashLoopBackOff")
                    });
            ok.then_some(())
        },
    )
    .await;
    // Controllers and the kubelet record Events.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(c.clone(), "default");
    let reasons = |obj: String| {
        let events = events.clone();
        async move {
            events
                .list(
                    &kube::api::ListParams::default().fields(&format!("involvedObject.name={obj}")),
                )
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|e| {
                    format!(
                        "{}/{}",
                        e.type_.unwrap_or_default(),
                        e.reason.unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let crash_pod = names("app=crash").await[0].metadata.name.clone().unwrap();
    eventually("BackOff event", Duration::from_secs(3), || async {
        reasons(crash_pod.clone())
            .await
            .contains(&"Warning/BackOff".to_string())
            .then_some(())
    })
    .await;
    let r = reasons("crash".into()).await;
    assert!(r.contains(&"Normal/ScalingReplicaSet".to_string()), "{r:?}");
    let r = reasons("once".into()).await;
    assert!(
        r.contains(&"Normal/Completed".to_string())
            && r.contains(&"Normal/SuccessfulCreate".to_string()),
        "{r:?}"
    );
    let r = reasons("db-0".into()).await;
    assert!(
        r.contains(&"Normal/Scheduled".to_string()) && r.contains(&"Normal/Started".to_string()),
        "{r:?}"
    );
    let db = names("app=db").await;
    let db_names: Vec<String> = db
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(db_names, vec!["db-0", "db-1"]);
    let agent_nodes: Vec<String> = names("app=agent")
        .await
        .iter()
        .map(|p| p.spec.as_ref().unwrap().node_name.clone().unwrap())
        .collect();
    assert_eq!(agent_nodes.len(), 2);
    assert_ne!(agent_nodes[0], agent_nodes[1], "one DaemonSet pod per node");
    // Scale the StatefulSet down: the highest ordinal goes.
    sts.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    eventually("db-1 removed", Duration::from_secs(3), || async {
        let n: Vec<String> = names("app=db")
            .await
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        (n == vec!["db-0".to_string()]).then_some(())
    })
    .await;

    // Without a Ready node, pods stay Pending/Unschedulable, then get bound when a node is Ready.
    let sb = sandbox_with(|c| c.ready_delay = Duration::from_millis(100)).await;
    assert!(sb.set_node_ready("default", "sandbox-node-1", false));
    let c = client(&sb.url());
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let deps: Api<Deployment> = Api::namespaced(c.clone(), "default");
    deps.create(
        &PostParams::default(),
        &serde_json::from_value(deployment("web", 1, "nginx:1.27")).unwrap(),
    )
    .await
    .unwrap();
    let p = eventually("pending pod", Duration::from_secs(3), || async {
        pods.list(&kube::api::ListParams::default().labels("app=web"))
            .await
            .unwrap()
            .items
            .into_iter()
            .next()
    })
    .await;
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(c.clone(), "default");
    let pname = p.metadata.name.clone().unwrap();
    eventually("FailedScheduling event", Duration::from_secs(3), || async {
        let l = events
            .list(&kube::api::ListParams::default().fields(&format!("involvedObject.name={pname}")))
            .await
            .unwrap()
            .items;
        l.iter()
            .any(|e| e.reason.as_deref() == Some("FailedScheduling"))
            .then_some(())
    })
    .await;
    let st = p.status.unwrap();
    assert_eq!(st.phase.as_deref(), Some("Pending"));
    assert_eq!(
        st.conditions.unwrap()[0].reason.as_deref(),
        Some("Unschedulable")
    );
    assert!(sb.set_node_ready("default", "sandbox-node-1", true));
    eventually("pod bound and ready", Duration::from_secs(5), || async {
        let l = pods
            .list(&kube::api::ListParams::default().labels("app=web"))
            .await
            .unwrap()
            .items;
        (l.len() == 1 && pod_ready(&l[0]) && l[0].spec.as_ref().unwrap().node_name.is_some())
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn custom_resources_are_pruned_defaulted_and_strictly_validated() {
    let sb = sandbox().await;
    let c = client(&sb.url());
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    let mut crd = widget_crd();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["mode"] = json!({"type": "string", "default": "fast"});
    crds.patch(
        "widgets.example.com",
        &PatchParams::apply("phoenix"),
        &Patch::Apply(crd),
    )
    .await
    .unwrap();
    let url = format!(
        "{}/apis/example.com/v1/namespaces/default/widgets",
        sb.url()
    );
    let body = |name: &str| {
        json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name},
        "spec": {"size": 2, "bogus": true}, "extra": 1})
        .to_string()
    };
    let (code, v) = raw(
        "POST",
        &format!("{url}?fieldValidation=Strict"),
        "application/json",
        &body("strict"),
    )
    .await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("unknown field \"spec.bogus\""),
        "{v}"
    );
    let (code, v) = raw("POST", &url, "application/json", &body("pruned")).await;
    assert_eq!(code, 201, "{v}");
    assert!(
        v["spec"].get("bogus").is_none() && v.get("extra").is_none(),
        "{v}"
    );
    assert_eq!(v["spec"]["mode"], "fast", "schema default");
    assert_eq!(v["spec"]["size"], 2);
    // Apply: unknown fields are neither stored nor owned; Strict rejects them.
    let (code, _) = raw(
        "PATCH",
        &format!("{url}/applied?fieldManager=phoenix&fieldValidation=Strict"),
        "application/apply-patch+yaml",
        &body("applied"),
    )
    .await;
    assert_eq!(code, 400);
    let (code, v) = raw(
        "PATCH",
        &format!("{url}/applied?fieldManager=phoenix"),
        "application/apply-patch+yaml",
        &body("applied"),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    assert!(v["spec"].get("bogus").is_none());
    let mf = &v["metadata"]["managedFields"][0]["fieldsV1"];
    assert!(
        mf["f:spec"].get("f:bogus").is_none() && mf["f:spec"].get("f:mode").is_none(),
        "{mf}"
    );
    let (code, _) = raw(
        "POST",
        &format!("{url}?fieldValidation=Sometimes"),
        "application/json",
        &body("x"),
    )
    .await;
    assert_eq!(code, 400);
}

#[tokio::test]
async fn wiping_a_cluster_ends_its_watches_and_starts_it_afresh() {
    let sb = sandbox().await;
    let c = client(&sb.cluster_url("w"));
    create_cm(&c, "default", "old", json!({})).await;
    let url = format!(
        "{}/api/v1/namespaces/default/configmaps?watch=true",
        sb.cluster_url("w")
    );
    let h = tokio::spawn(async move { raw_lines(&url, 100, Duration::from_secs(10)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let (code, _) = raw(
        "DELETE",
        &format!("{}/sandbox/clusters/w", sb.url()),
        "",
        "",
    )
    .await;
    assert_eq!(code, 200);
    let (code, _) = raw(
        "DELETE",
        &format!("{}/sandbox/clusters/w", sb.url()),
        "",
        "",
    )
    .await;
    assert_eq!(code, 404);
    let evs = h.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the watch ended with the cluster"
    );
    assert_eq!(evs.len(), 1, "only the initial ADDED");
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    assert!(
        cms.get_opt("old").await.unwrap().is_none(),
        "a fresh cluster"
    );
    let nss: Api<Namespace> = Api::all(c.clone());
    assert!(nss.get_opt("kube-system").await.unwrap().is_some());
    assert!(sb.wipe_cluster("w"));
    assert!(!sb.wipe_cluster("w"));
}
