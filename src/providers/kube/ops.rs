//! The API calls the provider makes on one object: read, server-side apply (for real or as a dry
//! run), delete with an ownership precondition, and list by label.

use ::kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions,
};
use serde_json::Value;

use super::discovery::Target;
use super::error::{status_code, KubeError};
use super::object::ObjectRef;

/// The field manager phoenix applies as.
pub const FIELD_MANAGER: &str = "phoenix";

fn api(client: &::kube::Client, target: &Target, namespace: Option<&str>) -> Api<DynamicObject> {
    match (target.namespaced, namespace) {
        (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &target.resource),
        _ => Api::all_with(client.clone(), &target.resource),
    }
}

fn to_value(obj: &DynamicObject) -> Value {
    serde_json::to_value(obj).unwrap_or(Value::Null)
}

/// The live object, if it exists.
pub async fn get(
    client: &::kube::Client,
    target: &Target,
    id: &ObjectRef,
) -> Result<Option<Value>, KubeError> {
    api(client, target, id.namespace.as_deref())
        .get_opt(&id.name)
        .await
        .map(|o| o.as_ref().map(to_value))
        .map_err(|e| KubeError::api("reading", id, &e))
}

/// Server-side apply of `body` as [`FIELD_MANAGER`]; returns what the server stored (or, with
/// `dry_run`, would store). A 409 becomes [`KubeError::Conflict`] naming the other managers and
/// fields as the server reported them. Error text about a Secret is scrubbed of its values.
///
/// Field validation is strict: a real API server otherwise drops an unknown (misspelled) field with
/// only a warning header, so the apply "succeeds", the dry run agrees, and the field Git asked for
/// never takes effect.
pub async fn apply(
    client: &::kube::Client,
    target: &Target,
    id: &ObjectRef,
    body: &Value,
    force: bool,
    dry_run: bool,
) -> Result<Value, KubeError> {
    let mut params = PatchParams::apply(FIELD_MANAGER).validation_strict();
    if force {
        params = params.force();
    }
    if dry_run {
        params = params.dry_run();
    }
    match api(client, target, id.namespace.as_deref())
        .patch(&id.name, &params, &Patch::Apply(body))
        .await
    {
        Ok(obj) => Ok(to_value(&obj)),
        // The server's message about a Secret may quote its values.
        Err(::kube::Error::Api(status)) if is_immutable(&status) => Err(KubeError::Immutable {
            object: Box::new(id.clone()),
            detail: scrubbed(&status.message, id, body),
        }),
        Err(::kube::Error::Api(status)) if is_field_conflict(&status) => Err(KubeError::Conflict {
            object: Box::new(id.clone()),
            detail: scrubbed(&status.message, id, body),
        }),
        Err(e) => {
            let mut err = KubeError::api(
                if dry_run {
                    "dry-run applying"
                } else {
                    "applying"
                },
                id,
                &e,
            );
            if let KubeError::Api { detail, .. } = &mut err {
                *detail = scrubbed(detail, id, body);
            }
            Err(err)
        }
    }
}

/// `text` without the values of `body` when it is a Secret.
fn scrubbed(text: &str, id: &ObjectRef, body: &Value) -> String {
    if id.is_secret() {
        scrub(text, body)
    } else {
        text.to_string()
    }
}

/// Whether a 409 is server-side apply's field-manager conflict (other managers own fields the
/// apply sets) rather than the optimistic-concurrency "the object has been modified" that a write
/// racing another write gets (that one is worth retrying, and forcing would not help).
pub(crate) fn is_field_conflict(status: &::kube::core::Status) -> bool {
    status.code == 409
        && status.reason == "Conflict"
        && (status
            .details
            .as_ref()
            .is_some_and(|d| d.causes.iter().any(|c| c.reason == "FieldManagerConflict"))
            || status.message.starts_with("Apply failed with"))
}

/// Whether the server refused an update because it changes a field fixed at creation: a Job's
/// template, a workload's selector, an immutable ConfigMap's data, most of a StatefulSet's or a
/// PersistentVolumeClaim's spec. Only deleting and creating the object again applies such a change.
pub(crate) fn is_immutable(status: &::kube::core::Status) -> bool {
    status.code == 422
        && (status.message.contains("is immutable")
            || status
                .message
                .contains("updates to statefulset spec for fields other than"))
}

/// Deletes the object if its uid is still `uid` (so a replacement made meanwhile by someone else
/// is left alone). `Ok(false)` if it was already gone.
pub async fn delete(
    client: &::kube::Client,
    target: &Target,
    id: &ObjectRef,
    uid: Option<String>,
) -> Result<bool, KubeError> {
    delete_with(client, target, id, uid, DeleteParams::background()).await
}

/// [`delete`] in the foreground: the object stays (with a deletion timestamp) until the garbage
/// collector has deleted what it owns, so it is gone only once its Pods are.
pub async fn delete_foreground(
    client: &::kube::Client,
    target: &Target,
    id: &ObjectRef,
    uid: Option<String>,
) -> Result<bool, KubeError> {
    delete_with(client, target, id, uid, DeleteParams::foreground()).await
}

async fn delete_with(
    client: &::kube::Client,
    target: &Target,
    id: &ObjectRef,
    uid: Option<String>,
    params: DeleteParams,
) -> Result<bool, KubeError> {
    let params = params.preconditions(Preconditions {
        uid,
        resource_version: None,
    });
    match api(client, target, id.namespace.as_deref())
        .delete(&id.name, &params)
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if status_code(&e) == Some(404) => Ok(false),
        Err(e) => Err(KubeError::api("deleting", id, &e)),
    }
}

/// Objects of one kind (in one namespace, or everywhere) matching a label selector.
pub async fn list(
    client: &::kube::Client,
    target: &Target,
    namespace: Option<&str>,
    selector: &str,
) -> Result<Vec<Value>, KubeError> {
    list_raw(client, target, namespace, selector)
        .await
        .map_err(|e| KubeError::api("listing", listed(target, namespace), &e))
}

/// [`list`] for a kind found by an earlier discovery that may no longer be served: a custom
/// resource whose CRD was deleted a moment ago (a teardown deletes the CRDs it applied) answers
/// 404, and has no objects left to list.
pub async fn list_if_served(
    client: &::kube::Client,
    target: &Target,
    namespace: Option<&str>,
    selector: &str,
) -> Result<Vec<Value>, KubeError> {
    match list_raw(client, target, namespace, selector).await {
        Err(::kube::Error::Api(status)) if status.code == 404 => Ok(Vec::new()),
        other => other.map_err(|e| KubeError::api("listing", listed(target, namespace), &e)),
    }
}

fn listed(target: &Target, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("{} in namespace {ns}", target.resource.plural),
        None => target.resource.plural.clone(),
    }
}

async fn list_raw(
    client: &::kube::Client,
    target: &Target,
    namespace: Option<&str>,
    selector: &str,
) -> Result<Vec<Value>, ::kube::Error> {
    api(client, target, namespace)
        .list(&ListParams::default().labels(selector))
        .await
        .map(|list| {
            list.items
                .iter()
                .map(|o| {
                    let mut v = to_value(o);
                    // Items of a list carry no type information of their own.
                    if let Some(map) = v.as_object_mut() {
                        map.entry("apiVersion")
                            .or_insert_with(|| target.resource.api_version.clone().into());
                        map.entry("kind")
                            .or_insert_with(|| target.resource.kind.clone().into());
                    }
                    v
                })
                .collect()
        })
}

/// The uid of a live object.
pub fn uid(live: &Value) -> Option<String> {
    live["metadata"]["uid"].as_str().map(str::to_string)
}

/// The resourceVersion of a live object.
pub fn resource_version(live: &Value) -> Option<&str> {
    live["metadata"]["resourceVersion"].as_str()
}

/// Replaces every value of a Secret's `data` (encoded and decoded) and `stringData` in `text`.
pub fn scrub(text: &str, secret: &Value) -> String {
    use base64::Engine as _;
    let mut values: Vec<String> = Vec::new();
    for field in ["data", "stringData"] {
        if let Some(map) = secret[field].as_object() {
            for v in map.values().filter_map(Value::as_str) {
                values.push(v.to_string());
                if field == "data" {
                    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(v) {
                        if let Ok(plain) = String::from_utf8(bytes) {
                            values.push(plain);
                        }
                    }
                }
            }
        }
    }
    // Longest first, so a value containing another is replaced whole.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    let mut out = text.to_string();
    for v in values.iter().filter(|v| v.len() >= 3) {
        out = out.replace(v.as_str(), crate::render::REDACTED);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(value: Value) -> ::kube::core::Status {
        serde_json::from_value(value).expect("status")
    }

    #[test]
    fn only_a_field_manager_conflict_is_a_conflict() {
        // What kube-apiserver 1.37 answers to an apply that sets a field another manager owns.
        let field = status(json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 409, "reason": "Conflict",
            "message": "Apply failed with 1 conflict: conflict with \"kube-controller-manager\" using apps/v1: .spec.replicas",
            "details": {"name": "api", "group": "apps", "kind": "deployments",
                        "causes": [{"reason": "FieldManagerConflict", "message": "conflict with \"kube-controller-manager\" using apps/v1", "field": ".spec.replicas"}]}
        }));
        // And to a write that raced another one.
        let modified = status(json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 409, "reason": "Conflict",
            "message": "Operation cannot be fulfilled on deployments.apps \"api\": the object has been modified; please apply your changes to the latest version and try again",
            "details": {"name": "api", "group": "apps", "kind": "deployments"}
        }));
        assert!(is_field_conflict(&field));
        assert!(!is_field_conflict(&modified));
        let (_, transient) = super::super::error::describe(&::kube::Error::Api(Box::new(modified)));
        assert!(transient, "a raced write is retried");
    }

    #[test]
    fn scrub_removes_encoded_and_plain_values() {
        let secret =
            json!({"data": {"password": "aHVudGVyMg=="}, "stringData": {"token": "s3cr3t-token"}});
        let text = "bad value aHVudGVyMg== (hunter2) and s3cr3t-token here";
        let out = scrub(text, &secret);
        assert!(!out.contains("hunter2"), "{out}");
        assert!(!out.contains("aHVudGVyMg=="), "{out}");
        assert!(!out.contains("s3cr3t-token"), "{out}");
    }
}
