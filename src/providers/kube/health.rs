//! Health rules: pure predicates over a live object, one per kind that has a notion of "ready",
//! plus a generic rule for objects that report `status.conditions`.

use serde_json::Value;

/// What a live object says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// Not there yet; the reason reads after the object's name ("1 of 3 replicas available").
    Progressing(String),
    /// It will not get there without a change: waiting longer cannot help.
    Failed(String),
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }
}

/// Kinds whose objects have no status and are healthy once applied; the health wait does not
/// read them back.
pub fn needs_no_wait(api_version: &str, kind: &str) -> bool {
    let group = api_version.split_once('/').map_or("", |(g, _)| g);
    matches!(
        (group, kind),
        (
            "",
            "ConfigMap"
                | "Secret"
                | "ServiceAccount"
                | "Endpoints"
                | "LimitRange"
                | "ResourceQuota"
                | "PodTemplate"
        ) | (
            "rbac.authorization.k8s.io",
            "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding"
        ) | ("scheduling.k8s.io", "PriorityClass")
            | ("storage.k8s.io", "StorageClass")
            | ("networking.k8s.io", "NetworkPolicy" | "IngressClass")
            | ("policy", "PodDisruptionBudget")
    )
}

/// The health of a live object.
pub fn health(obj: &Value) -> Health {
    let api_version = obj["apiVersion"].as_str().unwrap_or("");
    let group = api_version.split_once('/').map_or("", |(g, _)| g);
    let kind = obj["kind"].as_str().unwrap_or("");
    match (group, kind) {
        ("apps", "Deployment") => deployment(obj),
        ("apps", "StatefulSet") => statefulset(obj),
        ("apps", "DaemonSet") => daemonset(obj),
        ("batch", "Job") => job(obj),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crd(obj),
        ("", "Namespace") => namespace(obj),
        ("", "PersistentVolumeClaim") => pvc(obj),
        ("", "Service") => service(obj),
        _ => generic(obj),
    }
}

fn int(v: &Value) -> Option<i64> {
    v.as_i64()
}

/// The controller has seen the current spec; until then the status describes an older one.
fn observed(obj: &Value) -> Option<Health> {
    let generation = int(&obj["metadata"]["generation"])?;
    let observed = int(&obj["status"]["observedGeneration"]).unwrap_or(0);
    (observed < generation).then(|| {
        Health::Progressing(format!(
            "controller has not observed generation {generation} yet (observed {observed})"
        ))
    })
}

fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"].as_str() == Some(kind))
}

fn condition_is(obj: &Value, kind: &str, status: &str) -> bool {
    condition(obj, kind).is_some_and(|c| c["status"].as_str() == Some(status))
}

fn condition_text(c: &Value) -> String {
    let reason = c["reason"].as_str().unwrap_or("");
    let message = c["message"].as_str().unwrap_or("");
    match (reason.is_empty(), message.is_empty()) {
        (false, false) => format!("{reason}: {message}"),
        (false, true) => reason.to_string(),
        (true, false) => message.to_string(),
        (true, true) => c["type"].as_str().unwrap_or("condition").to_string(),
    }
}

fn deployment(obj: &Value) -> Health {
    // A deadline condition about an older generation says nothing about the rollout just applied.
    if let Some(waiting) = observed(obj) {
        return waiting;
    }
    if let Some(c) = condition(obj, "Progressing") {
        if c["reason"].as_str() == Some("ProgressDeadlineExceeded") {
            return Health::Failed(format!("rollout failed: {}", condition_text(c)));
        }
    }
    if obj["spec"]["paused"].as_bool() == Some(true) {
        return Health::Progressing("rollout is paused".to_string());
    }
    let want = int(&obj["spec"]["replicas"]).unwrap_or(1);
    let status = &obj["status"];
    let updated = int(&status["updatedReplicas"]).unwrap_or(0);
    let total = int(&status["replicas"]).unwrap_or(0);
    let available = int(&status["availableReplicas"]).unwrap_or(0);
    if updated < want {
        return Health::Progressing(format!("{updated} of {want} replicas updated"));
    }
    if total > updated {
        return Health::Progressing(format!(
            "{} old replicas pending termination",
            total - updated
        ));
    }
    if available < want {
        return Health::Progressing(format!("{available} of {want} replicas available"));
    }
    Health::Healthy
}

fn statefulset(obj: &Value) -> Health {
    if let Some(waiting) = observed(obj) {
        return waiting;
    }
    let want = int(&obj["spec"]["replicas"]).unwrap_or(1);
    let status = &obj["status"];
    let ready = int(&status["readyReplicas"]).unwrap_or(0);
    if ready < want {
        return Health::Progressing(format!("{ready} of {want} replicas ready"));
    }
    let strategy = obj["spec"]["updateStrategy"]["type"]
        .as_str()
        .unwrap_or("RollingUpdate");
    if strategy == "RollingUpdate" {
        let partition = int(&obj["spec"]["updateStrategy"]["rollingUpdate"]["partition"]);
        let updated = int(&status["updatedReplicas"]).unwrap_or(0);
        let expected = want - partition.unwrap_or(0).clamp(0, want);
        if updated < expected {
            return Health::Progressing(format!("{updated} of {expected} replicas updated"));
        }
        if partition.unwrap_or(0) == 0 {
            if let (Some(cur), Some(upd)) = (
                status["currentRevision"].as_str(),
                status["updateRevision"].as_str(),
            ) {
                if cur != upd {
                    return Health::Progressing(format!("rolling update to revision {upd}"));
                }
            }
        }
    }
    Health::Healthy
}

fn daemonset(obj: &Value) -> Health {
    if let Some(waiting) = observed(obj) {
        return waiting;
    }
    let status = &obj["status"];
    let Some(desired) = int(&status["desiredNumberScheduled"]) else {
        return Health::Progressing("no pods scheduled yet".to_string());
    };
    let strategy = obj["spec"]["updateStrategy"]["type"]
        .as_str()
        .unwrap_or("RollingUpdate");
    if strategy == "RollingUpdate" {
        let updated = int(&status["updatedNumberScheduled"]).unwrap_or(0);
        if updated < desired {
            return Health::Progressing(format!("{updated} of {desired} pods updated"));
        }
    }
    let available = int(&status["numberAvailable"]).unwrap_or(0);
    if available < desired {
        return Health::Progressing(format!("{available} of {desired} pods available"));
    }
    Health::Healthy
}

fn job(obj: &Value) -> Health {
    if let Some(c) = condition(obj, "Failed").filter(|c| c["status"].as_str() == Some("True")) {
        return Health::Failed(format!("job failed: {}", condition_text(c)));
    }
    if condition_is(obj, "Complete", "True") {
        return Health::Healthy;
    }
    if obj["spec"]["suspend"].as_bool() == Some(true) {
        return Health::Progressing("job is suspended".to_string());
    }
    let succeeded = int(&obj["status"]["succeeded"]).unwrap_or(0);
    let completions = int(&obj["spec"]["completions"]).unwrap_or(1);
    let active = int(&obj["status"]["active"]).unwrap_or(0);
    Health::Progressing(format!(
        "{succeeded} of {completions} completions ({active} active)"
    ))
}

fn crd(obj: &Value) -> Health {
    if condition_is(obj, "Established", "True") {
        return Health::Healthy;
    }
    if let Some(c) = condition(obj, "NamesAccepted").filter(|c| c["status"] == "False") {
        return Health::Failed(format!("names not accepted: {}", condition_text(c)));
    }
    Health::Progressing("not Established yet".to_string())
}

fn namespace(obj: &Value) -> Health {
    match obj["status"]["phase"].as_str() {
        Some("Active") => Health::Healthy,
        Some("Terminating") => Health::Progressing("namespace is terminating".to_string()),
        Some(other) => Health::Progressing(format!("phase {other}")),
        None => Health::Progressing("no phase reported yet".to_string()),
    }
}

fn pvc(obj: &Value) -> Health {
    match obj["status"]["phase"].as_str() {
        Some("Bound") => Health::Healthy,
        Some("Lost") => Health::Failed("claim lost its volume".to_string()),
        Some(other) => Health::Progressing(format!("claim is {other}")),
        None => Health::Progressing("claim has no phase yet".to_string()),
    }
}

fn service(obj: &Value) -> Health {
    if obj["spec"]["type"].as_str() != Some("LoadBalancer") {
        return Health::Healthy;
    }
    let assigned = obj["status"]["loadBalancer"]["ingress"]
        .as_array()
        .is_some_and(|ingress| {
            ingress.iter().any(|i| {
                i["ip"].as_str().is_some_and(|s| !s.is_empty())
                    || i["hostname"].as_str().is_some_and(|s| !s.is_empty())
            })
        });
    if assigned {
        Health::Healthy
    } else {
        Health::Progressing("load balancer has no ingress address yet".to_string())
    }
}

/// Objects with conditions are healthy when `Ready` (or, lacking it, `Available`) is True; other
/// objects are healthy once applied.
fn generic(obj: &Value) -> Health {
    if let Some(waiting) = observed_if_reported(obj) {
        return waiting;
    }
    for kind in ["Ready", "Available"] {
        if let Some(c) = condition(obj, kind) {
            // A condition may say which generation it judged (metav1.Condition); one about an older
            // spec says nothing about this one.
            if let (Some(judged), Some(generation)) = (
                int(&c["observedGeneration"]),
                int(&obj["metadata"]["generation"]),
            ) {
                if judged < generation {
                    return Health::Progressing(format!(
                        "{kind} is about generation {judged}; waiting for the controller to judge \
                         generation {generation}"
                    ));
                }
            }
            return match c["status"].as_str() {
                Some("True") => Health::Healthy,
                _ => Health::Progressing(format!("{kind} is not True: {}", condition_text(c))),
            };
        }
    }
    Health::Healthy
}

/// Only objects whose controller reports `observedGeneration` can be held to it.
fn observed_if_reported(obj: &Value) -> Option<Health> {
    obj["status"].get("observedGeneration")?;
    observed(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn y(text: &str) -> Value {
        serde_yaml_ng::from_str(text).expect("test YAML parses")
    }

    #[test]
    fn deployment_rules() {
        let ok = y(r#"
apiVersion: apps/v1
kind: Deployment
metadata: { name: api, generation: 2 }
spec: { replicas: 3 }
status: { observedGeneration: 2, replicas: 3, updatedReplicas: 3, availableReplicas: 3 }
"#);
        assert_eq!(health(&ok), Health::Healthy);

        let stale = y(r#"
apiVersion: apps/v1
kind: Deployment
metadata: { name: api, generation: 3 }
spec: { replicas: 3 }
status: { observedGeneration: 2, replicas: 3, updatedReplicas: 3, availableReplicas: 3 }
"#);
        assert!(matches!(health(&stale), Health::Progressing(r) if r.contains("generation 3")));

        let partial = y(r#"
apiVersion: apps/v1
kind: Deployment
metadata: { name: api, generation: 1 }
spec: { replicas: 3 }
status: { observedGeneration: 1, replicas: 3, updatedReplicas: 3, availableReplicas: 1 }
"#);
        assert_eq!(
            health(&partial),
            Health::Progressing("1 of 3 replicas available".into())
        );

        let old = y(r#"
apiVersion: apps/v1
kind: Deployment
metadata: { name: api, generation: 1 }
spec: { replicas: 2 }
status: { observedGeneration: 1, replicas: 3, updatedReplicas: 2, availableReplicas: 2 }
"#);
        assert_eq!(
            health(&old),
            Health::Progressing("1 old replicas pending termination".into())
        );

        let deadline = y(r#"
apiVersion: apps/v1
kind: Deployment
metadata: { name: api, generation: 1 }
spec: { replicas: 1 }
status:
  observedGeneration: 1
  conditions:
    - { type: Progressing, status: "False", reason: ProgressDeadlineExceeded, message: 'ReplicaSet "api-1" has timed out progressing.' }
"#);
        assert!(
            matches!(health(&deadline), Health::Failed(r) if r.contains("ProgressDeadlineExceeded"))
        );

        let defaulted = y(r#"
apiVersion: apps/v1
kind: Deployment
metadata: { name: api, generation: 1 }
spec: {}
status: { observedGeneration: 1 }
"#);
        assert_eq!(
            health(&defaulted),
            Health::Progressing("0 of 1 replicas updated".into())
        );
    }

    #[test]
    fn statefulset_and_daemonset_rules() {
        let sts = y(r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: { name: db, generation: 1 }
spec: { replicas: 2 }
status: { observedGeneration: 1, readyReplicas: 2, updatedReplicas: 2, currentRevision: db-1, updateRevision: db-2 }
"#);
        assert_eq!(
            health(&sts),
            Health::Progressing("rolling update to revision db-2".into())
        );
        let mut done = sts.clone();
        done["status"]["currentRevision"] = "db-2".into();
        assert_eq!(health(&done), Health::Healthy);
        let mut short = done.clone();
        short["status"]["readyReplicas"] = 1.into();
        assert_eq!(
            health(&short),
            Health::Progressing("1 of 2 replicas ready".into())
        );

        let ds = y(r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: { name: agent, generation: 1 }
status: { observedGeneration: 1, desiredNumberScheduled: 3, updatedNumberScheduled: 3, numberAvailable: 2 }
"#);
        assert_eq!(
            health(&ds),
            Health::Progressing("2 of 3 pods available".into())
        );
        let mut ok = ds.clone();
        ok["status"]["numberAvailable"] = 3.into();
        assert_eq!(health(&ok), Health::Healthy);
    }

    #[test]
    fn job_rules() {
        let running = y(r#"
apiVersion: batch/v1
kind: Job
metadata: { name: migrate }
spec: { completions: 1 }
status: { active: 1 }
"#);
        assert_eq!(
            health(&running),
            Health::Progressing("0 of 1 completions (1 active)".into())
        );
        let complete = y(r#"
apiVersion: batch/v1
kind: Job
metadata: { name: migrate }
status: { succeeded: 1, conditions: [{ type: Complete, status: "True" }] }
"#);
        assert_eq!(health(&complete), Health::Healthy);
        let failed = y(r#"
apiVersion: batch/v1
kind: Job
metadata: { name: migrate }
status:
  failed: 1
  conditions: [{ type: Failed, status: "True", reason: BackoffLimitExceeded, message: Job has reached the specified backoff limit }]
"#);
        assert_eq!(
            health(&failed),
            Health::Failed(
                "job failed: BackoffLimitExceeded: Job has reached the specified backoff limit"
                    .into()
            )
        );
    }

    #[test]
    fn crd_namespace_pvc_service_rules() {
        let crd = y(r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: { name: widgets.example.com }
status: { conditions: [{ type: NamesAccepted, status: "True" }, { type: Established, status: "True" }] }
"#);
        assert_eq!(health(&crd), Health::Healthy);
        let pending = y(r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: { name: widgets.example.com }
status: {}
"#);
        assert!(matches!(health(&pending), Health::Progressing(_)));

        let ns = y(
            "{apiVersion: v1, kind: Namespace, metadata: {name: a}, status: {phase: Terminating}}",
        );
        assert_eq!(
            health(&ns),
            Health::Progressing("namespace is terminating".into())
        );
        let ns =
            y("{apiVersion: v1, kind: Namespace, metadata: {name: a}, status: {phase: Active}}");
        assert_eq!(health(&ns), Health::Healthy);

        let pvc = y("{apiVersion: v1, kind: PersistentVolumeClaim, metadata: {name: d}, status: {phase: Pending}}");
        assert_eq!(health(&pvc), Health::Progressing("claim is Pending".into()));
        let pvc = y("{apiVersion: v1, kind: PersistentVolumeClaim, metadata: {name: d}, status: {phase: Bound}}");
        assert_eq!(health(&pvc), Health::Healthy);

        let svc =
            y("{apiVersion: v1, kind: Service, metadata: {name: s}, spec: {type: ClusterIP}}");
        assert_eq!(health(&svc), Health::Healthy);
        let lb = y("{apiVersion: v1, kind: Service, metadata: {name: s}, spec: {type: LoadBalancer}, status: {loadBalancer: {}}}");
        assert!(matches!(health(&lb), Health::Progressing(_)));
        let lb = y("{apiVersion: v1, kind: Service, metadata: {name: s}, spec: {type: LoadBalancer}, status: {loadBalancer: {ingress: [{ip: 172.18.0.2}]}}}");
        assert_eq!(health(&lb), Health::Healthy);
    }

    #[test]
    fn a_condition_about_an_older_generation_is_not_health() {
        let stale = y(r#"
apiVersion: example.com/v1
kind: Widget
metadata: { name: w, generation: 3 }
status: { conditions: [{ type: Ready, status: "True", observedGeneration: 2 }] }
"#);
        assert!(matches!(health(&stale), Health::Progressing(why) if why.contains("generation 2")));
        let fresh = y(r#"
apiVersion: example.com/v1
kind: Widget
metadata: { name: w, generation: 3 }
status: { conditions: [{ type: Ready, status: "True", observedGeneration: 3 }] }
"#);
        assert!(health(&fresh).is_healthy());
    }

    #[test]
    fn generic_conditions_rule() {
        let not_ready = y(r#"
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: { name: tls, generation: 1 }
status: { conditions: [{ type: Ready, status: "False", reason: Issuing, message: issuing certificate }] }
"#);
        assert_eq!(
            health(&not_ready),
            Health::Progressing("Ready is not True: Issuing: issuing certificate".into())
        );
        let ready = y(r#"
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: { name: tls, generation: 2 }
status: { observedGeneration: 2, conditions: [{ type: Ready, status: "True" }] }
"#);
        assert_eq!(health(&ready), Health::Healthy);
        let stale = y(r#"
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: { name: tls, generation: 3 }
status: { observedGeneration: 2, conditions: [{ type: Ready, status: "True" }] }
"#);
        assert!(matches!(health(&stale), Health::Progressing(_)));
        let plain =
            y("{apiVersion: example.com/v1, kind: Widget, metadata: {name: w}, spec: {size: 1}}");
        assert_eq!(health(&plain), Health::Healthy);
        let available = y(r#"
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: { name: v1.metrics.k8s.io }
status: { conditions: [{ type: Available, status: "False", reason: MissingEndpoints }] }
"#);
        assert_eq!(
            health(&available),
            Health::Progressing("Available is not True: MissingEndpoints".into())
        );
    }

    #[test]
    fn hostile_status_shapes_do_not_panic() {
        for text in [
            "{apiVersion: apps/v1, kind: Deployment, status: 7}",
            "{apiVersion: apps/v1, kind: Deployment, spec: {replicas: x}, status: {conditions: 3}}",
            "{apiVersion: batch/v1, kind: Job, status: {conditions: [1, null]}}",
            "{apiVersion: v1, kind: Service, spec: {type: LoadBalancer}, status: {loadBalancer: {ingress: 3}}}",
            "[]",
            "null",
        ] {
            let _ = health(&y(text));
        }
    }
}
