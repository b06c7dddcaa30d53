//! The API surface, driven with kube-rs and raw HTTP: discovery, CRUD semantics, SSA, patches, errors,
//! selectors, dryRun, status subresource, generation, defaulting.

mod common;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiResource, Discovery};
use serde_json::{json, Value};
use std::time::Duration;

fn deploy_ar() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("apps", "v1", "Deployment"),
        "deployments",
    )
}

fn api_err(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn version_health_and_discovery_documents() {
    let sb = sandbox().await;
    let url = sb.url();
    for p in ["/healthz", "/readyz", "/livez"] {
        let (code, text) = raw_text("GET", &format!("{url}{p}"), "", "").await;
        assert_eq!((code, text.as_str()), (200, "ok"), "{p}");
    }
    let (code, v) = raw("GET", &format!("{url}/version"), "", "").await;
    assert_eq!(code, 200);
    assert_eq!(v["gitVersion"], "v1.36.0");
    assert_eq!(v["minor"], "36");
    let (_, v) = raw("GET", &format!("{url}/api"), "", "").await;
    assert_eq!(v["versions"], json!(["v1"]));
    let (_, v) = raw("GET", &format!("{url}/apis"), "", "").await;
    let groups: Vec<&str> = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    for g in [
        "apps",
        "batch",
        "networking.k8s.io",
        "rbac.authorization.k8s.io",
        "apiextensions.k8s.io",
    ] {
        assert!(groups.contains(&g), "{g} in {groups:?}");
    }
    let (code, v) = raw("GET", &format!("{url}/apis/apps"), "", "").await;
    assert_eq!(code, 200);
    assert_eq!(v["preferredVersion"]["groupVersion"], "apps/v1");
    let (_, v) = raw("GET", &format!("{url}/apis/apps/v1"), "", "").await;
    let d = v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "deployments")
        .unwrap();
    assert_eq!(d["singularName"], "deployment");
    assert_eq!(d["shortNames"], json!(["deploy"]));
    assert_eq!(d["namespaced"], true);
    assert_eq!(d["kind"], "Deployment");
    assert_eq!(d["categories"], json!(["all"]));
    assert!(d["verbs"].as_array().unwrap().contains(&json!("watch")));
    assert!(v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"] == "deployments/status"));
    assert!(v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"] == "deployments/scale"));
    let (_, v) = raw("GET", &format!("{url}/api/v1"), "", "").await;
    let ns = v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "namespaces")
        .unwrap();
    assert_eq!(ns["namespaced"], false);
    assert_eq!(ns["shortNames"], json!(["ns"]));

    let discovery = Discovery::new(client(&url))
        .run()
        .await
        .expect("discovery runs");
    for (g, v, k) in [
        ("", "v1", "Namespace"),
        ("", "v1", "ConfigMap"),
        ("", "v1", "Secret"),
        ("", "v1", "ServiceAccount"),
        ("", "v1", "Service"),
        ("", "v1", "Node"),
        ("", "v1", "Pod"),
        ("", "v1", "PersistentVolumeClaim"),
        ("apps", "v1", "Deployment"),
        ("apps", "v1", "ReplicaSet"),
        ("apps", "v1", "StatefulSet"),
        ("apps", "v1", "DaemonSet"),
        ("batch", "v1", "Job"),
        ("networking.k8s.io", "v1", "Ingress"),
        ("rbac.authorization.k8s.io", "v1", "Role"),
        ("rbac.authorization.k8s.io", "v1", "RoleBinding"),
        ("rbac.authorization.k8s.io", "v1", "ClusterRole"),
        ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding"),
        ("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
    ] {
        assert!(
            discovery
                .resolve_gvk(&GroupVersionKind::gvk(g, v, k))
                .is_some(),
            "{g}/{v} {k} discovered"
        );
    }
    let (code, v) = raw("GET", &format!("{url}/apis/nope.example/v1"), "", "").await;
    assert_eq!((code, v["reason"].as_str()), (404, Some("NotFound")));
}

#[tokio::test]
async fn openapi_v3_advertises_field_validation_for_patch() {
    let sb = sandbox().await;
    let (code, root) = raw("GET", &format!("{}/openapi/v3", sb.url()), "", "").await;
    assert_eq!(code, 200);
    let rel = root["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, doc) = raw("GET", &format!("{}{}", sb.url(), rel), "", "").await;
    assert_eq!(code, 200);
    let patch = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
    assert_eq!(
        patch["x-kubernetes-group-version-kind"]["kind"],
        "Deployment"
    );
    assert!(patch["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "fieldValidation"));
}

#[tokio::test]
async fn create_get_list_update_delete_with_metadata() {
    let sb = sandbox().await;
    let cms: Api<ConfigMap> = Api::namespaced(client(&sb.url()), "default");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "a"}, "data": {"k": "v"}})).unwrap();
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    let md = &created.metadata;
    assert!(md.uid.as_deref().is_some_and(|u| u.len() == 36));
    assert!(md.creation_timestamp.is_some());
    let rv1: u64 = md.resource_version.as_deref().unwrap().parse().unwrap();
    let err = api_err(cms.create(&PostParams::default(), &cm).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (409, "AlreadyExists"));
    let got = cms.get("a").await.unwrap();
    assert_eq!(got.data.unwrap()["k"], "v");
    assert!(cms.get_opt("missing").await.unwrap().is_none());

    let mut upd = created.clone();
    upd.data = Some([("k".to_string(), "w".to_string())].into());
    let replaced = cms
        .replace("a", &PostParams::default(), &upd)
        .await
        .unwrap();
    let rv2: u64 = replaced
        .metadata
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv2 > rv1, "resourceVersion increases");
    // A PUT carrying the old resourceVersion conflicts.
    let err = api_err(
        cms.replace("a", &PostParams::default(), &upd)
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert!(
        err.message.contains("the object has been modified"),
        "{}",
        err.message
    );

    let list = cms.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert!(
        list.metadata
            .resource_version
            .as_deref()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= rv2
    );

    cms.delete("a", &DeleteParams::default()).await.unwrap();
    let err = api_err(cms.get("a").await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
    assert_eq!(err.message, "configmaps \"a\" not found");

    // deletecollection with a selector.
    for (n, l) in [("x1", "x"), ("x2", "x"), ("y1", "y")] {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": n, "labels": {"g": l}}})).unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    cms.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("g=x"),
    )
    .await
    .unwrap();
    let names: Vec<String> = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| c.metadata.name.unwrap())
        .collect();
    assert_eq!(names, vec!["y1".to_string()]);
}

#[tokio::test]
async fn status_errors_have_real_reasons_and_codes() {
    let sb = sandbox().await;
    let url = sb.url();
    let cm = |name: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}).to_string()
    };
    // Invalid name → 422 with causes.
    let (code, v) = raw(
        "POST",
        &format!("{url}/api/v1/namespaces/default/configmaps"),
        "application/json",
        &cm("Bad_Name"),
    )
    .await;
    assert_eq!(
        (code, v["reason"].as_str(), v["kind"].as_str()),
        (422, Some("Invalid"), Some("Status"))
    );
    assert_eq!(v["details"]["causes"][0]["field"], "metadata.name");
    assert_eq!(v["details"]["causes"][0]["reason"], "FieldValueInvalid");
    // Namespace must exist.
    let (code, v) = raw(
        "POST",
        &format!("{url}/api/v1/namespaces/nope/configmaps"),
        "application/json",
        &cm("a"),
    )
    .await;
    assert_eq!((code, v["reason"].as_str()), (404, Some("NotFound")));
    assert_eq!(v["message"], "namespaces \"nope\" not found");
    // Malformed JSON → 400.
    let (code, v) = raw(
        "POST",
        &format!("{url}/api/v1/namespaces/default/configmaps"),
        "application/json",
        "{",
    )
    .await;
    assert_eq!((code, v["reason"].as_str()), (400, Some("BadRequest")));
    // Bad label selector → 400.
    let (code, v) = raw(
        "GET",
        &format!("{url}/api/v1/configmaps?labelSelector=a%20in%20(b"),
        "",
        "",
    )
    .await;
    assert_eq!((code, v["reason"].as_str()), (400, Some("BadRequest")));
    // Unknown method on a collection → 405.
    let (code, v) = raw(
        "PUT",
        &format!("{url}/api/v1/namespaces/default/configmaps"),
        "application/json",
        "{}",
    )
    .await;
    assert_eq!(
        (code, v["reason"].as_str()),
        (405, Some("MethodNotAllowed"))
    );
    // Unknown patch type → 415.
    let (code, v) = raw(
        "PATCH",
        &format!("{url}/api/v1/namespaces/kube-system/configmaps/x"),
        "application/vnd.kubernetes.protobuf",
        "{}",
    )
    .await;
    assert_eq!(
        (code, v["reason"].as_str()),
        (415, Some("UnsupportedMediaType"))
    );
    let (code, _) = raw(
        "POST",
        &format!("{url}/api/v1/namespaces/default/configmaps"),
        "application/vnd.kubernetes.protobuf",
        "x",
    )
    .await;
    assert_eq!(code, 415);
    // Kind mismatch → 400.
    let (code, _) = raw(
        "POST",
        &format!("{url}/api/v1/namespaces/default/configmaps"),
        "application/json",
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}).to_string(),
    )
    .await;
    assert_eq!(code, 400);
    // Deployment missing its selector → 422 naming the field.
    let mut d = deployment("bad", 1, "nginx");
    d["spec"].as_object_mut().unwrap().remove("selector");
    let (code, v) = raw(
        "POST",
        &format!("{url}/apis/apps/v1/namespaces/default/deployments"),
        "application/json",
        &d.to_string(),
    )
    .await;
    assert_eq!(code, 422);
    assert!(v["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["field"] == "spec.selector"));
    // Unknown resource → 404.
    let (code, _) = raw(
        "GET",
        &format!("{url}/api/v1/namespaces/default/widgets"),
        "",
        "",
    )
    .await;
    assert_eq!(code, 404);
    // YAML bodies are accepted for create.
    let (code, v) = raw(
        "POST",
        &format!("{url}/api/v1/namespaces/default/configmaps"),
        "application/yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  a: b\n",
    )
    .await;
    assert_eq!((code, v["data"]["a"].as_str()), (201, Some("b")));
    // generateName.
    let (code, v) = raw(
        "POST",
        &format!("{url}/api/v1/namespaces/default/configmaps"),
        "application/json",
        &json!({"metadata": {"generateName": "gen-"}}).to_string(),
    )
    .await;
    assert_eq!(code, 201);
    assert!(v["metadata"]["name"].as_str().unwrap().starts_with("gen-"));
}

#[tokio::test]
async fn ssa_creates_records_managed_fields_and_noop_keeps_resource_version() {
    let sb = sandbox().await;
    let api: Api<DynamicObject> = Api::namespaced_with(client(&sb.url()), "default", &deploy_ar());
    let pp = PatchParams::apply("phoenix");
    let obj = api
        .patch(
            "web",
            &pp,
            &Patch::Apply(deployment("web", 2, "nginx:1.27")),
        )
        .await
        .unwrap();
    let mf = obj.metadata.managed_fields.clone().unwrap();
    let mine = mf
        .iter()
        .find(|m| m.manager.as_deref() == Some("phoenix"))
        .expect("phoenix entry");
    assert_eq!(mine.operation.as_deref(), Some("Apply"));
    assert_eq!(mine.api_version.as_deref(), Some("apps/v1"));
    assert_eq!(mine.fields_type.as_deref(), Some("FieldsV1"));
    let fields = serde_json::to_value(&mine.fields_v1).unwrap();
    assert!(fields["f:spec"]["f:replicas"].is_object());
    assert!(
        fields["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"]["f:image"]
            .is_object()
    );
    // Defaulted fields exist but are not owned by the applier.
    assert_eq!(
        obj.data["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
        "IfNotPresent"
    );
    assert!(
        fields["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"]
            .get("f:imagePullPolicy")
            .is_none()
    );
    assert!(fields["f:spec"].get("f:strategy").is_none());
    let rv = obj.metadata.resource_version.clone();
    let time = mine.time.clone();
    assert_eq!(obj.metadata.generation, Some(1));

    // Wait for the controller to write status, then re-apply: nothing changes.
    let after_status = eventually("deployment status", Duration::from_secs(10), || async {
        let o = api.get("web").await.unwrap();
        let ready = o
            .data
            .get("status")
            .and_then(|s| s.get("availableReplicas"))
            .is_some();
        ready.then_some(o)
    })
    .await;
    let again = api
        .patch(
            "web",
            &pp,
            &Patch::Apply(deployment("web", 2, "nginx:1.27")),
        )
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version, after_status.metadata.resource_version,
        "no-op apply keeps resourceVersion"
    );
    let again_mine = again
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .find(|m| m.manager.as_deref() == Some("phoenix"))
        .unwrap();
    assert_eq!(
        again_mine.time, time,
        "no-op apply keeps the managedFields timestamp"
    );
    assert_ne!(rv, again.metadata.resource_version);

    // A spec change bumps generation; a label-only change does not.
    let changed = api
        .patch(
            "web",
            &pp,
            &Patch::Apply(deployment("web", 3, "nginx:1.27")),
        )
        .await
        .unwrap();
    assert_eq!(changed.metadata.generation, Some(2));
    let mut labelled = deployment("web", 3, "nginx:1.27");
    labelled["metadata"]["labels"]["extra"] = json!("1");
    let l = api
        .patch("web", &pp, &Patch::Apply(labelled))
        .await
        .unwrap();
    assert_eq!(l.metadata.generation, Some(2));

    // Dry-run apply of the same config returns the live object unchanged: no drift from defaults.
    let mut cfg = deployment("web", 3, "nginx:1.27");
    cfg["metadata"]["labels"]["extra"] = json!("1");
    let live = api.get("web").await.unwrap();
    let dry = api
        .patch(
            "web",
            &PatchParams::apply("phoenix").dry_run(),
            &Patch::Apply(cfg),
        )
        .await
        .unwrap();
    assert_eq!(dry.data["spec"], live.data["spec"]);
    assert_eq!(
        dry.metadata.resource_version,
        live.metadata.resource_version
    );
}

#[tokio::test]
async fn ssa_conflicts_name_the_manager_and_force_transfers_ownership() {
    let sb = sandbox().await;
    let c = client(&sb.url());
    let api: Api<DynamicObject> = Api::namespaced_with(c.clone(), "default", &deploy_ar());
    api.patch(
        "web",
        &PatchParams::apply("phoenix"),
        &Patch::Apply(deployment("web", 2, "nginx:1.27")),
    )
    .await
    .unwrap();
    // Someone edits replicas with an update (like kubectl edit).
    let pp = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..Default::default()
    };
    api.patch("web", &pp, &Patch::Merge(json!({"spec": {"replicas": 5}})))
        .await
        .unwrap();
    let err = api_err(
        api.patch(
            "web",
            &PatchParams::apply("phoenix"),
            &Patch::Apply(deployment("web", 2, "nginx:1.27")),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        err.message,
        "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using apps/v1: .spec.replicas"
    );
    let (code, v) = raw(
        "PATCH",
        &format!(
            "{}/apis/apps/v1/namespaces/default/deployments/web?fieldManager=phoenix",
            sb.url()
        ),
        "application/apply-patch+yaml",
        &deployment("web", 2, "nginx:1.27").to_string(),
    )
    .await;
    assert_eq!(code, 409);
    assert_eq!(v["details"]["causes"][0]["type"], "FieldManagerConflict");
    assert_eq!(v["details"]["causes"][0]["field"], ".spec.replicas");
    // Applying the same value co-owns without conflict.
    api.patch("web", &PatchParams::apply("other"), &Patch::Apply(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 5}})))
        .await
        .unwrap();
    // Force transfers ownership.
    let forced = api
        .patch(
            "web",
            &PatchParams::apply("phoenix").force(),
            &Patch::Apply(deployment("web", 2, "nginx:1.27")),
        )
        .await
        .unwrap();
    assert_eq!(forced.data["spec"]["replicas"], 2);
    let mf = forced.metadata.managed_fields.unwrap();
    assert!(
        !mf.iter()
            .any(|m| m.manager.as_deref() == Some("kubectl-edit")),
        "kubectl-edit lost its only field"
    );
    let other = mf.iter().find(|m| m.manager.as_deref() == Some("other"));
    assert!(
        other.is_none(),
        "other lost .spec.replicas to the forced apply: {other:?}"
    );
    // Manager from the User-Agent when fieldManager is absent.
    let (code, v) = raw(
        "PATCH",
        &format!(
            "{}/apis/apps/v1/namespaces/default/deployments/web",
            sb.url()
        ),
        "application/merge-patch+json",
        r#"{"metadata":{"annotations":{"x":"y"}}}"#,
    )
    .await;
    assert_eq!(code, 200);
    assert!(v["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["operation"] == "Update" && m["manager"] == "unknown"));
    // ... or the User-Agent up to its first '/', as kube-apiserver does.
    let (code, v) = raw_text_headers(
        "PATCH",
        &format!(
            "{}/apis/apps/v1/namespaces/default/deployments/web",
            sb.url()
        ),
        "application/merge-patch+json",
        r#"{"metadata":{"annotations":{"ua":"1"}}}"#,
        &[("user-agent", "kubectl/v1.37.1 (linux/amd64) kubernetes/abc")],
    )
    .await;
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&v).unwrap();
    let kubectl_entry = v["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["manager"] == "kubectl")
        .cloned();
    assert_eq!(
        kubectl_entry.expect("manager from User-Agent")["fieldsV1"]["f:metadata"]["f:annotations"]
            ["f:ua"],
        json!({})
    );
}

#[tokio::test]
async fn ssa_requires_field_manager_and_accepts_yaml() {
    let sb = sandbox().await;
    let url = format!("{}/api/v1/namespaces/default/configmaps/y", sb.url());
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: y\ndata:\n  a: \"1\"\n";
    let (code, v) = raw("PATCH", &url, "application/apply-patch+yaml", yaml).await;
    assert_eq!((code, v["reason"].as_str()), (400, Some("BadRequest")));
    let (code, v) = raw(
        "PATCH",
        &format!("{url}?fieldManager=phoenix"),
        "application/apply-patch+yaml",
        yaml,
    )
    .await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["data"]["a"], "1");
    let (code, _) = raw(
        "PATCH",
        &format!("{url}?fieldManager=phoenix"),
        "application/apply-patch+yaml",
        yaml,
    )
    .await;
    assert_eq!(code, 200);
    // A bare object (nothing but its name) is created too.
    let bare = format!(
        "{}/api/v1/namespaces/default/configmaps/bare?fieldManager=phoenix",
        sb.url()
    );
    let (code, v) = raw(
        "PATCH",
        &bare,
        "application/apply-patch+yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bare\n",
    )
    .await;
    assert_eq!(code, 201, "{v}");
    // apiVersion/kind are required in an applied configuration.
    let (code, _) = raw(
        "PATCH",
        &format!("{url}?fieldManager=phoenix"),
        "application/apply-patch+yaml",
        "metadata:\n  name: y\n",
    )
    .await;
    assert_eq!(code, 400);
}

#[tokio::test]
async fn ssa_removes_fields_a_manager_stops_applying_unless_shared() {
    let sb = sandbox().await;
    let cms: Api<DynamicObject> = Api::namespaced_with(
        client(&sb.url()),
        "default",
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("", "v1", "ConfigMap"),
            "configmaps",
        ),
    );
    let cm = |data: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data});
    cms.patch(
        "c",
        &PatchParams::apply("a"),
        &Patch::Apply(cm(json!({"x": "1", "y": "2", "z": "3"}))),
    )
    .await
    .unwrap();
    cms.patch(
        "c",
        &PatchParams::apply("b"),
        &Patch::Apply(cm(json!({"z": "3"}))),
    )
    .await
    .unwrap();
    let o = cms
        .patch(
            "c",
            &PatchParams::apply("a"),
            &Patch::Apply(cm(json!({"x": "1"}))),
        )
        .await
        .unwrap();
    assert_eq!(
        o.data["data"],
        json!({"x": "1", "z": "3"}),
        "y removed, z kept because b owns it"
    );
}

#[tokio::test]
async fn ssa_merges_associative_lists_by_key() {
    let sb = sandbox().await;
    let api: Api<DynamicObject> = Api::namespaced_with(client(&sb.url()), "default", &deploy_ar());
    let mut a = deployment("web", 1, "nginx:1.27");
    a["spec"]["template"]["spec"]["containers"][0]["env"] = json!([{"name": "A", "value": "1"}]);
    a["spec"]["template"]["spec"]["containers"][0]["ports"] = json!([{"containerPort": 80}]);
    api.patch("web", &PatchParams::apply("a"), &Patch::Apply(a))
        .await
        .unwrap();
    let b = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"template": {"spec": {"containers": [
            {"name": "web", "env": [{"name": "B", "value": "2"}], "ports": [{"containerPort": 80, "protocol": "TCP", "name": "http"}]},
            {"name": "sidecar", "image": "busybox:1.36"}]}}}});
    let o = api
        .patch("web", &PatchParams::apply("b"), &Patch::Apply(b))
        .await
        .unwrap();
    let cs = o.data["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(cs.len(), 2);
    assert_eq!(cs[0]["image"], "nginx:1.27");
    let env: Vec<&str> = cs[0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(env, vec!["A", "B"]);
    assert_eq!(
        cs[0]["ports"].as_array().unwrap().len(),
        1,
        "ports merged by containerPort+protocol"
    );
    assert_eq!(cs[0]["ports"][0]["name"], "http");
    assert_eq!(
        cs[1]["imagePullPolicy"], "IfNotPresent",
        "new container defaulted"
    );
    // Atomic lists are replaced whole: args.
    let mut c = deployment("web", 1, "nginx:1.27");
    c["spec"]["template"]["spec"]["containers"][0]["args"] = json!(["a", "b"]);
    api.patch("web", &PatchParams::apply("a"), &Patch::Apply(c.clone()))
        .await
        .unwrap();
    c["spec"]["template"]["spec"]["containers"][0]["args"] = json!(["c"]);
    let o = api
        .patch("web", &PatchParams::apply("a"), &Patch::Apply(c))
        .await
        .unwrap();
    assert_eq!(
        o.data["spec"]["template"]["spec"]["containers"][0]["args"],
        json!(["c"])
    );
}

#[tokio::test]
async fn json_merge_and_strategic_patches() {
    let sb = sandbox().await;
    let c = client(&sb.url());
    let deps: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let mut d = deployment("web", 1, "nginx:1.27");
    d["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "side", "image": "busybox:1.36"}));
    deps.create(&PostParams::default(), &serde_json::from_value(d).unwrap())
        .await
        .unwrap();
    let pp = PatchParams::default();
    // JSON patch (RFC 6902).
    let url = format!(
        "{}/apis/apps/v1/namespaces/default/deployments/web",
        sb.url()
    );
    let (code, o) = raw(
        "PATCH",
        &url,
        "application/json-patch+json",
        &json!([
            {"op": "replace", "path": "/spec/replicas", "value": 4},
            {"op": "add", "path": "/metadata/labels/jp", "value": "yes"},
            {"op": "test", "path": "/spec/replicas", "value": 4}
        ])
        .to_string(),
    )
    .await;
    assert_eq!(code, 200, "{o}");
    assert_eq!(o["spec"]["replicas"], 4);
    assert_eq!(o["metadata"]["labels"]["jp"], "yes");
    let (code, _) = raw(
        "PATCH",
        &url,
        "application/json-patch+json",
        &json!([{"op": "test", "path": "/spec/replicas", "value": 9}]).to_string(),
    )
    .await;
    assert_eq!(code, 422);
    // Merge patch: null removes.
    let o = deps
        .patch(
            "web",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"jp": null}}})),
        )
        .await
        .unwrap();
    assert!(!o.metadata.labels.unwrap().contains_key("jp"));
    // Strategic merge: containers merged by name (set image), $patch: delete, $setElementOrder tolerated.
    let o = deps
        .patch(
            "web",
            &pp,
            &Patch::Strategic(json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "web"}, {"name": "side"}],
                "containers": [{"name": "side", "image": "busybox:1.37"}]}}}})),
        )
        .await
        .unwrap();
    let cs = o.spec.unwrap().template.spec.unwrap().containers;
    assert_eq!(cs.len(), 2);
    assert_eq!(cs[0].image.as_deref(), Some("nginx:1.27"));
    assert_eq!(cs[1].image.as_deref(), Some("busybox:1.37"));
    let o = deps
        .patch(
            "web",
            &pp,
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}}})),
        )
        .await
        .unwrap();
    assert_eq!(o.spec.unwrap().template.spec.unwrap().containers.len(), 1);
    // A resourceVersion in a patch is a precondition.
    let err = api_err(
        deps.patch(
            "web",
            &pp,
            &Patch::Merge(json!({"metadata": {"resourceVersion": "1"}, "spec": {"replicas": 1}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 409);
}

#[tokio::test]
async fn dry_run_all_stores_nothing_on_every_write() {
    let sb = sandbox().await;
    let cms: Api<ConfigMap> = Api::namespaced(client(&sb.url()), "default");
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "d"}, "data": {"a": "1"}})).unwrap();
    let r = cms.create(&dry, &cm).await.unwrap();
    assert_eq!(r.data.unwrap()["a"], "1");
    assert!(
        cms.get_opt("d").await.unwrap().is_none(),
        "dry-run create stores nothing"
    );
    let live = cms.create(&PostParams::default(), &cm).await.unwrap();
    let mut changed = live.clone();
    changed.data = Some([("a".to_string(), "2".to_string())].into());
    cms.replace("d", &dry, &changed).await.unwrap();
    let pp = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    cms.patch("d", &pp, &Patch::Merge(json!({"data": {"a": "3"}})))
        .await
        .unwrap();
    let ap = PatchParams::apply("x").dry_run().force();
    cms.patch("d", &ap, &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d"}, "data": {"a": "4"}})))
        .await
        .unwrap();
    let dp = DeleteParams {
        dry_run: true,
        ..Default::default()
    };
    cms.delete("d", &dp).await.unwrap();
    let now = cms.get("d").await.unwrap();
    assert_eq!(now.data.unwrap()["a"], "1");
    assert_eq!(
        now.metadata.resource_version,
        live.metadata.resource_version
    );
    let (code, _) = raw(
        "DELETE",
        &format!(
            "{}/api/v1/namespaces/default/configmaps/d?dryRun=Bogus",
            sb.url()
        ),
        "",
        "",
    )
    .await;
    assert_eq!(code, 400);
}

#[tokio::test]
async fn status_subresource_is_separate_and_generation_tracks_spec() {
    let sb = sandbox_with(|c| c.nodes = 0).await;
    let deps: Api<Deployment> = Api::namespaced(client(&sb.url()), "default");
    let mut d: Deployment = serde_json::from_value(deployment("web", 1, "nginx:1.27")).unwrap();
    d.status = Some(serde_json::from_value(json!({"replicas": 99})).unwrap());
    let created = deps.create(&PostParams::default(), &d).await.unwrap();
    assert_ne!(
        created.status.as_ref().and_then(|s| s.replicas),
        Some(99),
        "status dropped on create"
    );
    // PUT to the main resource ignores status changes. (Unconditional writes: the status controller may
    // have written in between.)
    let mut upd = created.clone();
    upd.metadata.resource_version = None;
    upd.status = Some(serde_json::from_value(json!({"replicas": 77})).unwrap());
    let after = deps
        .replace("web", &PostParams::default(), &upd)
        .await
        .unwrap();
    assert_ne!(after.status.as_ref().and_then(|s| s.replicas), Some(77));
    assert_eq!(after.metadata.generation, Some(1));
    // /status ignores spec changes and does not bump generation.
    let mut st = after.clone();
    st.metadata.resource_version = None;
    st.spec.as_mut().unwrap().replicas = Some(9);
    st.status =
        Some(serde_json::from_value(json!({"replicas": 5, "observedGeneration": 1})).unwrap());
    let s = deps
        .replace_status("web", &PostParams::default(), &st)
        .await
        .unwrap();
    assert_eq!(s.status.as_ref().unwrap().replicas, Some(5));
    assert_eq!(s.spec.as_ref().unwrap().replicas, Some(1));
    assert_eq!(s.metadata.generation, Some(1));
    let s = deps
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 6}})),
        )
        .await
        .unwrap();
    assert_eq!(s.status.unwrap().replicas, Some(6));
    // Spec change bumps generation.
    let g = deps
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    assert_eq!(g.metadata.generation, Some(2));
    // Scale subresource.
    let scale = deps.get_scale("web").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(2));
    deps.patch_scale(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await
    .unwrap();
    assert_eq!(
        deps.get("web").await.unwrap().spec.unwrap().replicas,
        Some(3)
    );
}

#[tokio::test]
async fn label_and_field_selectors() {
    let sb = sandbox().await;
    let c = client(&sb.url());
    let nss: Api<Namespace> = Api::all(c.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "other"}})).unwrap(),
    )
    .await
    .unwrap();
    for (ns, name, labels) in [
        ("default", "a", json!({"app": "web", "tier": "fe"})),
        ("default", "b", json!({"app": "api", "tier": "be"})),
        ("default", "c", json!({"app": "db"})),
        ("other", "d", json!({"app": "web"})),
    ] {
        let cms: Api<ConfigMap> = Api::namespaced(c.clone(), ns);
        cms.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap(),
        )
        .await
        .unwrap();
    }
    let all: Api<ConfigMap> = Api::all(c.clone());
    let names = |l: ListParams| {
        let all = all.clone();
        async move {
            let mut v: Vec<String> = all
                .list(&l)
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|c| c.metadata.name.unwrap())
                .collect();
            v.sort();
            v.join(",")
        }
    };
    assert_eq!(names(ListParams::default().labels("app=web")).await, "a,d");
    assert_eq!(names(ListParams::default().labels("app==web")).await, "a,d");
    assert_eq!(
        names(ListParams::default().labels("app!=web,app")).await,
        "b,c"
    );
    assert_eq!(
        names(ListParams::default().labels("app in (api,db)")).await,
        "b,c"
    );
    assert_eq!(
        names(ListParams::default().labels("app notin (api,db),app")).await,
        "a,d"
    );
    assert_eq!(names(ListParams::default().labels("tier")).await, "a,b");
    assert_eq!(
        names(ListParams::default().labels("!tier,app")).await,
        "c,d"
    );
    assert_eq!(
        names(ListParams::default().fields("metadata.name=b")).await,
        "b"
    );
    assert_eq!(
        names(ListParams::default().fields("metadata.namespace=other")).await,
        "d"
    );
    assert_eq!(
        names(
            ListParams::default()
                .fields("metadata.namespace!=other,metadata.name!=a")
                .labels("app")
        )
        .await,
        "b,c"
    );
    // The label index follows relabels and deletes.
    let default_cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    default_cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app": "api"}}})),
        )
        .await
        .unwrap();
    assert_eq!(names(ListParams::default().labels("app=web")).await, "d");
    assert_eq!(
        names(ListParams::default().labels("app in (api)")).await,
        "a,b"
    );
    let other_cms: Api<ConfigMap> = Api::namespaced(c.clone(), "other");
    other_cms
        .delete("d", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(names(ListParams::default().labels("app=web")).await, "");
    default_cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app": "web"}}})),
        )
        .await
        .unwrap();
    other_cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "d", "labels": {"app": "web"}}}))
                .unwrap(),
        )
        .await
        .unwrap();
    // limit/continue.
    let page = all
        .list(&ListParams::default().labels("app").limit(3))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 3);
    let token = page.metadata.continue_.clone().expect("continue token");
    let rest = all
        .list(
            &ListParams::default()
                .labels("app")
                .limit(3)
                .continue_token(&token),
        )
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert!(rest.metadata.continue_.as_deref().is_none_or(str::is_empty));
}

#[tokio::test]
async fn server_side_defaults_for_drift() {
    let sb = sandbox().await;
    let c = client(&sb.url());
    let deps: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let d = deps
        .create(
            &PostParams::default(),
            &serde_json::from_value(deployment("web", 1, "nginx")).unwrap(),
        )
        .await
        .unwrap();
    let v = serde_json::to_value(&d).unwrap();
    assert_eq!(
        v["spec"]["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
    );
    assert_eq!(v["spec"]["revisionHistoryLimit"], 10);
    assert_eq!(v["spec"]["progressDeadlineSeconds"], 600);
    let ps = &v["spec"]["template"]["spec"];
    assert_eq!(ps["restartPolicy"], "Always");
    assert_eq!(ps["dnsPolicy"], "ClusterFirst");
    assert_eq!(ps["schedulerName"], "default-scheduler");
    assert_eq!(ps["terminationGracePeriodSeconds"], 30);
    assert_eq!(ps["securityContext"], json!({}));
    assert_eq!(
        ps["containers"][0]["imagePullPolicy"], "Always",
        "untagged image pulls Always"
    );
    assert_eq!(
        ps["containers"][0]["terminationMessagePath"],
        "/dev/termination-log"
    );
    assert_eq!(ps["containers"][0]["terminationMessagePolicy"], "File");
    assert_eq!(ps["containers"][0]["resources"], json!({}));

    let svcs: Api<Service> = Api::namespaced(c.clone(), "default");
    let s = svcs
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}})).unwrap(),
        )
        .await
        .unwrap();
    let v = serde_json::to_value(&s).unwrap();
    let ip = v["spec"]["clusterIP"].as_str().unwrap().to_string();
    assert!(ip.starts_with("10.43."), "{ip}");
    assert_eq!(v["spec"]["clusterIPs"], json!([ip]));
    assert_eq!(v["spec"]["type"], "ClusterIP");
    assert_eq!(v["spec"]["sessionAffinity"], "None");
    assert_eq!(v["spec"]["ipFamilies"], json!(["IPv4"]));
    assert_eq!(v["spec"]["ports"][0]["protocol"], "TCP");
    assert_eq!(v["spec"]["ports"][0]["targetPort"], 80);
    // A replace that omits clusterIP keeps it.
    let mut s2 = s.clone();
    s2.spec.as_mut().unwrap().cluster_ip = None;
    s2.spec.as_mut().unwrap().cluster_ips = None;
    let s3 = svcs
        .replace("web", &PostParams::default(), &s2)
        .await
        .unwrap();
    assert_eq!(s3.spec.unwrap().cluster_ip.as_deref(), Some(ip.as_str()));

    let nss: Api<Namespace> = Api::all(c.clone());
    let n = nss
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        n.metadata.labels.clone().unwrap()["kubernetes.io/metadata.name"],
        "team"
    );
    let v = serde_json::to_value(&n).unwrap();
    assert_eq!(v["spec"]["finalizers"], json!(["kubernetes"]));
    assert_eq!(v["status"]["phase"], "Active");
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(
            nss.get_opt(ns).await.unwrap().is_some(),
            "{ns} exists at start"
        );
    }
    // The Services every cluster has, and a default ServiceAccount in every namespace.
    let k = Api::<Service>::namespaced(c.clone(), "default")
        .get("kubernetes")
        .await
        .unwrap();
    assert_eq!(k.spec.unwrap().cluster_ip.as_deref(), Some("10.43.0.1"));
    let dns = Api::<Service>::namespaced(c.clone(), "kube-system")
        .get("kube-dns")
        .await
        .unwrap();
    assert_eq!(dns.spec.unwrap().cluster_ip.as_deref(), Some("10.43.0.10"));
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(c.clone(), "team");
    eventually(
        "default ServiceAccount in a new namespace",
        Duration::from_secs(3),
        || async { sas.get_opt("default").await.unwrap().map(|_| ()) },
    )
    .await;
}

#[tokio::test]
async fn hostile_inputs_get_status_errors_not_panics() {
    let sb = sandbox().await;
    let url = sb.url();
    let c = client(&url);
    let deps: Api<Deployment> = Api::namespaced(c.clone(), "default");
    deps.create(
        &PostParams::default(),
        &serde_json::from_value(deployment("web", 1, "nginx:1.27")).unwrap(),
    )
    .await
    .unwrap();
    let obj = format!("{url}/apis/apps/v1/namespaces/default/deployments/web");
    let coll = format!("{url}/apis/apps/v1/namespaces/default/deployments");
    let cases: Vec<(&str, String, &str, String)> = vec![
        (
            "PATCH",
            obj.clone(),
            "application/json-patch+json",
            r#"[{"op":"replace","path":"","value":5}]"#.into(),
        ),
        (
            "PATCH",
            obj.clone(),
            "application/json-patch+json",
            r#"{"op":"add"}"#.into(),
        ),
        (
            "PATCH",
            obj.clone(),
            "application/json-patch+json",
            r#"[{"op":"add","path":"/spec/template/spec/containers/99","value":1}]"#.into(),
        ),
        (
            "PATCH",
            obj.clone(),
            "application/json-patch+json",
            r#"[{"op":"replace","path":"/metadata","value":"x"}]"#.into(),
        ),
        (
            "PATCH",
            obj.clone(),
            "application/merge-patch+json",
            "[1,2]".into(),
        ),
        (
            "PATCH",
            obj.clone(),
            "application/merge-patch+json",
            r#"{"metadata":{"labels":{"a":5}}}"#.into(),
        ),
        (
            "PATCH",
            obj.clone(),
            "application/merge-patch+json",
            r#"{"spec":{"replicas":-1}}"#.into(),
        ),
        (
            "PATCH",
            obj.clone(),
            "application/strategic-merge-patch+json",
            r#"{"spec":{"template":{"spec":{"containers":"x"}}}}"#.into(),
        ),
        (
            "PATCH",
            obj.clone(),
            "application/strategic-merge-patch+json",
            r#"{"$patch":"delete"}"#.into(),
        ),
        (
            "PATCH",
            format!("{obj}?fieldManager=x"),
            "application/apply-patch+yaml",
            "- a\n- b\n".into(),
        ),
        (
            "PATCH",
            format!("{obj}?fieldManager=x"),
            "application/apply-patch+yaml",
            "{{{{".into(),
        ),
        (
            "PATCH",
            format!("{obj}?fieldManager=x"),
            "application/apply-patch+yaml",
            r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"other"}}"#.into(),
        ),
        (
            "PATCH",
            format!("{obj}?fieldManager=x&force=true"),
            "application/apply-patch+yaml",
            r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},"spec":"x"}"#
                .into(),
        ),
        (
            "PATCH",
            format!("{obj}/scale"),
            "application/merge-patch+json",
            r#"{"spec":{"replicas":"many"}}"#.into(),
        ),
        (
            "PUT",
            obj.clone(),
            "application/json",
            "\"just a string\"".into(),
        ),
        (
            "PUT",
            format!("{obj}/status"),
            "application/json",
            "[]".into(),
        ),
        ("POST", coll.clone(), "application/json", "[]".into()),
        (
            "POST",
            coll.clone(),
            "application/json",
            r#"{"metadata":"x"}"#.into(),
        ),
        (
            "POST",
            coll.clone(),
            "application/json",
            format!("{}{}", "[".repeat(5000), "]".repeat(5000)),
        ),
        ("DELETE", obj.clone(), "application/json", "not json".into()),
        (
            "POST",
            format!("{url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions"),
            "application/json",
            r#"{"metadata":{"name":"a.b"},"spec":{"names":"x","versions":5}}"#.into(),
        ),
        (
            "POST",
            format!("{url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions"),
            "application/json",
            r#"{"metadata":{"name":"a.b"},"spec":"x"}"#.into(),
        ),
        (
            "POST",
            coll.clone(),
            "application/json",
            r#"{"metadata":{"name":"s"},"spec":"x"}"#.into(),
        ),
        (
            "POST",
            format!("{url}/api/v1/namespaces/default/services"),
            "application/json",
            r#"{"metadata":{"name":"s"},"spec":{"ports":"x","type":5}}"#.into(),
        ),
        (
            "GET",
            format!("{coll}?watch=true&timeoutSeconds=18446744073709551615&resourceVersion=abc"),
            "",
            String::new(),
        ),
        ("GET", format!("{coll}?limit=x"), "", String::new()),
        ("GET", format!("{coll}?continue=%%%"), "", String::new()),
        (
            "GET",
            format!("{coll}?labelSelector=%ff%fe"),
            "",
            String::new(),
        ),
        (
            "GET",
            format!("{url}/clusters/UPPER/api"),
            "",
            String::new(),
        ),
        (
            "GET",
            format!("{url}/apis/apps/v1/namespaces/default/deployments/web/scale/extra/more"),
            "",
            String::new(),
        ),
        (
            "POST",
            format!("{url}/sandbox/clusters/default/nodes/sandbox-node-1/explode"),
            "",
            String::new(),
        ),
    ];
    for (method, u, ct, body) in cases {
        let (code, v) = raw(method, &u, ct, &body).await;
        assert!(
            (400..500).contains(&code),
            "{method} {u} {body:.60}: got {code} {v}"
        );
        assert_eq!(v["kind"], "Status", "{method} {u}: {v}");
    }
    // A bounded timeoutSeconds watch still works with a huge value (capped, no overflow).
    let evs = raw_lines(
        &format!("{coll}?watch=true&timeoutSeconds=18446744073709551615"),
        1,
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(evs[0]["type"], "ADDED");
    let d = deps.get("web").await.unwrap();
    assert_eq!(
        d.spec.unwrap().replicas,
        Some(1),
        "nothing above changed the object"
    );
    let (code, _) = raw_text("GET", &format!("{url}/healthz"), "", "").await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn table_responses_for_kubectl_get() {
    let sb = sandbox().await;
    let c = client(&sb.url());
    let deps: Api<Deployment> = Api::namespaced(c, "default");
    deps.create(
        &PostParams::default(),
        &serde_json::from_value(deployment("web", 2, "nginx:1.27")).unwrap(),
    )
    .await
    .unwrap();
    let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
    let get = |path: String| async move {
        let (code, text) = raw_text_headers("GET", &path, "", "", &[("accept", accept)]).await;
        assert_eq!(code, 200, "{text}");
        serde_json::from_str::<Value>(&text).unwrap()
    };
    let t = get(format!(
        "{}/apis/apps/v1/namespaces/default/deployments",
        sb.url()
    ))
    .await;
    assert_eq!(t["kind"], "Table");
    let cols: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        cols,
        vec!["Name", "Ready", "Up-to-date", "Available", "Age"]
    );
    assert_eq!(t["rows"][0]["cells"][0], "web");
    assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    assert!(t["metadata"]["resourceVersion"].is_string());
    let t = get(format!(
        "{}/api/v1/nodes/sandbox-node-1?includeObject=Object",
        sb.url()
    ))
    .await;
    assert_eq!(t["rows"][0]["cells"][1], "Ready");
    assert_eq!(t["rows"][0]["cells"][2], "control-plane");
    assert_eq!(t["rows"][0]["object"]["kind"], "Node");
    // Without the Table Accept header, plain lists.
    let (_, v) = raw(
        "GET",
        &format!("{}/apis/apps/v1/namespaces/default/deployments", sb.url()),
        "",
        "",
    )
    .await;
    assert_eq!(v["kind"], "DeploymentList");
}

#[tokio::test]
async fn aggregated_discovery_v2_for_kube_rs_and_kubectl() {
    let sb = sandbox().await;
    let c = client(&sb.url());
    let crds: Api<DynamicObject> = Api::all_with(
        c.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    crds.patch(
        "gadgets.example.com",
        &PatchParams::apply("phoenix"),
        &Patch::Apply(json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "gadgets.example.com"},
            "spec": {"group": "example.com", "scope": "Cluster", "names": {"kind": "Gadget", "plural": "gadgets"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}})),
    )
    .await
    .unwrap();
    let d = Discovery::new(c.clone())
        .run_aggregated()
        .await
        .expect("aggregated discovery");
    let (ar, caps) = d
        .resolve_gvk(&GroupVersionKind::gvk("apps", "v1", "Deployment"))
        .unwrap();
    assert_eq!(ar.plural, "deployments");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    assert!(caps.operations.iter().any(|o| o == "patch"));
    assert!(caps
        .subresources
        .iter()
        .any(|(s, _)| s.plural == "deployments/status" || s.plural == "status"));
    let (_, caps) = d
        .resolve_gvk(&GroupVersionKind::gvk("", "v1", "Namespace"))
        .unwrap();
    assert_eq!(caps.scope, kube::discovery::Scope::Cluster);
    let (ar, caps) = d
        .resolve_gvk(&GroupVersionKind::gvk("example.com", "v1", "Gadget"))
        .unwrap();
    assert_eq!(
        (ar.plural.as_str(), caps.scope.clone()),
        ("gadgets", kube::discovery::Scope::Cluster)
    );
    // The response carries the aggregated content type; plain Accept still gets the legacy documents.
    let (code, text) = raw_text_headers(
        "GET",
        &format!("{}/apis", sb.url()),
        "",
        "",
        &[(
            "accept",
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
        )],
    )
    .await;
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["kind"], "APIGroupDiscoveryList");
    let apps = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["metadata"]["name"] == "apps")
        .unwrap();
    let dep = apps["versions"][0]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"] == "deployments")
        .unwrap();
    assert_eq!(dep["shortNames"], json!(["deploy"]));
    assert_eq!(dep["singularResource"], "deployment");
    let (_, v) = raw("GET", &format!("{}/apis", sb.url()), "", "").await;
    assert_eq!(v["kind"], "APIGroupList");
}
