//! Server-side defaulting: the fields kube-apiserver adds that drift detection has to live with.

use serde_json::{json, Map, Value};

/// Allocators the defaulting of Services needs.
pub trait Allocator {
    fn cluster_ip(&mut self) -> String;
    fn node_port(&mut self) -> i64;
}

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    let m = v.as_object_mut().expect("object ensured above");
    let e = m.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if !e.is_object() {
        *e = Value::Object(Map::new());
    }
    e.as_object_mut().expect("object ensured above")
}

fn set_default(m: &mut Map<String, Value>, k: &str, v: Value) {
    if m.get(k).is_none_or(Value::is_null) {
        m.insert(k.to_string(), v);
    }
}

/// Apply defaults for a kind in place.
pub fn apply_defaults(kind: &str, obj: &mut Value, alloc: &mut dyn Allocator) {
    match kind {
        "Deployment" => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            let strategy = spec.entry("strategy").or_insert_with(|| json!({}));
            if let Some(s) = strategy.as_object_mut() {
                set_default(s, "type", json!("RollingUpdate"));
                if s.get("type") == Some(&json!("RollingUpdate")) {
                    let ru = s.entry("rollingUpdate").or_insert_with(|| json!({}));
                    if let Some(ru) = ru.as_object_mut() {
                        set_default(ru, "maxUnavailable", json!("25%"));
                        set_default(ru, "maxSurge", json!("25%"));
                    }
                }
            }
            pod_template(spec, true);
        }
        "ReplicaSet" => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "replicas", json!(1));
            pod_template(spec, true);
        }
        "StatefulSet" => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "replicas", json!(1));
            set_default(spec, "podManagementPolicy", json!("OrderedReady"));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
            );
            set_default(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
            pod_template(spec, true);
        }
        "DaemonSet" => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}),
            );
            pod_template(spec, true);
        }
        "Job" => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "backoffLimit", json!(6));
            set_default(spec, "completions", json!(1));
            set_default(spec, "parallelism", json!(1));
            set_default(spec, "completionMode", json!("NonIndexed"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
            pod_template(spec, false);
        }
        "Pod" => {
            let spec = obj_mut(obj, "spec");
            pod_spec(spec, true);
        }
        "Service" => service(obj, alloc),
        "Namespace" => {
            let name = obj
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let md = obj_mut(obj, "metadata");
            let labels = md.entry("labels").or_insert_with(|| json!({}));
            if let Some(l) = labels.as_object_mut() {
                l.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
            let spec = obj_mut(obj, "spec");
            set_default(spec, "finalizers", json!(["kubernetes"]));
        }
        "PersistentVolumeClaim" => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "volumeMode", json!("Filesystem"));
        }
        "Secret" => {
            if let Some(m) = obj.as_object_mut() {
                set_default(m, "type", json!("Opaque"));
                // As the API server does: stringData is write-only, folded into data (base64)
                // and not stored.
                if let Some(Value::Object(plain)) = m.remove("stringData") {
                    use base64::Engine as _;
                    let data = m.entry("data").or_insert_with(|| json!({}));
                    if let Some(data) = data.as_object_mut() {
                        for (k, v) in plain {
                            if let Some(text) = v.as_str() {
                                let encoded =
                                    base64::engine::general_purpose::STANDARD.encode(text);
                                data.insert(k, Value::String(encoded));
                            }
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

fn pod_template(spec: &mut Map<String, Value>, default_restart: bool) {
    let tmpl = spec.entry("template").or_insert_with(|| json!({}));
    if let Some(t) = tmpl.as_object_mut() {
        let ps = t.entry("spec").or_insert_with(|| json!({}));
        if let Some(ps) = ps.as_object_mut() {
            pod_spec(ps, default_restart);
        }
    }
}

fn pod_spec(ps: &mut Map<String, Value>, default_restart: bool) {
    if default_restart {
        set_default(ps, "restartPolicy", json!("Always"));
    }
    set_default(ps, "dnsPolicy", json!("ClusterFirst"));
    set_default(ps, "schedulerName", json!("default-scheduler"));
    set_default(ps, "securityContext", json!({}));
    set_default(ps, "terminationGracePeriodSeconds", json!(30));
    for key in ["containers", "initContainers"] {
        if let Some(Value::Array(cs)) = ps.get_mut(key) {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                container(c);
            }
        }
    }
}

fn container(c: &mut Map<String, Value>) {
    let image = c.get("image").and_then(Value::as_str).unwrap_or("");
    // The tag is what follows the last ':' after the last '/'; a digest pins the image.
    let last = image.rsplit('/').next().unwrap_or(image);
    let policy = if image.contains('@') {
        "IfNotPresent"
    } else {
        match last.rsplit_once(':') {
            Some((_, "latest")) | None => "Always",
            Some(_) => "IfNotPresent",
        }
    };
    set_default(c, "imagePullPolicy", json!(policy));
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "resources", json!({}));
    if let Some(Value::Array(ports)) = c.get_mut("ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
        }
    }
}

fn service(obj: &mut Value, alloc: &mut dyn Allocator) {
    let spec = obj_mut(obj, "spec");
    set_default(spec, "type", json!("ClusterIP"));
    set_default(spec, "sessionAffinity", json!("None"));
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if ty == "ExternalName" {
        return;
    }
    if spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        let ip = alloc.cluster_ip();
        spec.insert("clusterIP".into(), json!(ip));
    }
    let ip = spec.get("clusterIP").cloned().unwrap_or(Value::Null);
    set_default(spec, "clusterIPs", json!([ip]));
    set_default(spec, "ipFamilies", json!(["IPv4"]));
    set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
    set_default(spec, "internalTrafficPolicy", json!("Cluster"));
    let node_ports = ty == "NodePort" || ty == "LoadBalancer";
    if node_ports {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                set_default(p, "targetPort", port);
            }
            if node_ports && p.get("nodePort").is_none_or(Value::is_null) {
                let np = alloc.node_port();
                p.insert("nodePort".into(), json!(np));
            }
        }
    }
}

/// JSON type expectations for fields of built-in kinds, so malformed bodies get a 400 as they would from
/// kube-apiserver's decoder instead of being coerced. `*` walks every array element or map value.
const TYPES: &[(&str, &str, &str)] = &[
    ("*", "metadata", "object"),
    ("*", "metadata.labels", "object"),
    ("*", "metadata.labels.*", "string"),
    ("*", "metadata.annotations", "object"),
    ("*", "metadata.annotations.*", "string"),
    ("*", "metadata.finalizers", "array"),
    ("*", "metadata.finalizers.*", "string"),
    ("*", "metadata.ownerReferences", "array"),
    ("*", "spec", "object"),
    ("*", "status", "object"),
    ("ConfigMap", "data", "object"),
    ("ConfigMap", "data.*", "string"),
    ("ConfigMap", "binaryData", "object"),
    ("Secret", "data", "object"),
    ("Secret", "data.*", "string"),
    ("Secret", "stringData", "object"),
    ("Secret", "stringData.*", "string"),
    ("Secret", "type", "string"),
    ("Service", "spec.type", "string"),
    ("Service", "spec.selector", "object"),
    ("Service", "spec.ports", "array"),
    ("Service", "spec.ports.*", "object"),
    ("Service", "spec.ports.*.port", "integer"),
    ("Service", "spec.ports.*.name", "string"),
    ("Service", "spec.ports.*.protocol", "string"),
    ("Service", "spec.clusterIP", "string"),
    ("workload", "spec.replicas", "integer"),
    ("workload", "spec.selector", "object"),
    ("workload", "spec.template", "object"),
    ("workload", "spec.template.metadata", "object"),
    ("workload", "spec.template.spec", "object"),
    ("workload", "spec.template.spec.containers", "array"),
    ("workload", "spec.template.spec.containers.*", "object"),
    ("workload", "spec.template.spec.containers.*.name", "string"),
    (
        "workload",
        "spec.template.spec.containers.*.image",
        "string",
    ),
    ("workload", "spec.template.spec.containers.*.args", "array"),
    (
        "workload",
        "spec.template.spec.containers.*.command",
        "array",
    ),
    ("workload", "spec.template.spec.containers.*.env", "array"),
    (
        "workload",
        "spec.template.spec.containers.*.env.*",
        "object",
    ),
    ("workload", "spec.template.spec.containers.*.ports", "array"),
    (
        "workload",
        "spec.template.spec.containers.*.ports.*.containerPort",
        "integer",
    ),
    ("Pod", "spec.containers", "array"),
    ("Pod", "spec.containers.*", "object"),
    ("Pod", "spec.containers.*.name", "string"),
    ("Pod", "spec.containers.*.image", "string"),
    ("Namespace", "spec.finalizers", "array"),
];

fn type_ok(v: &Value, ty: &str) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        _ => true,
    }
}

fn check_path(v: &Value, segs: &[&str], path: String, ty: &str, errs: &mut Vec<String>) {
    let Some((first, rest)) = segs.split_first() else {
        if !v.is_null() && !type_ok(v, ty) {
            errs.push(format!("{}: expected {ty}", path.trim_start_matches('.')));
        }
        return;
    };
    if *first == "*" {
        match v {
            Value::Array(a) => {
                for (i, it) in a.iter().enumerate() {
                    check_path(it, rest, format!("{path}[{i}]"), ty, errs);
                }
            }
            Value::Object(m) => {
                for (k, it) in m {
                    check_path(it, rest, format!("{path}.{k}"), ty, errs);
                }
            }
            _ => {}
        }
    } else if let Some(child) = v.as_object().and_then(|m| m.get(*first)) {
        check_path(child, rest, format!("{path}.{first}"), ty, errs);
    }
}

/// Type errors in a built-in object's well-known fields (empty when it is well-formed).
pub fn type_errors(kind: &str, obj: &Value) -> Vec<String> {
    let workload = matches!(
        kind,
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job"
    );
    let mut errs = Vec::new();
    for (k, path, ty) in TYPES {
        let applies = *k == "*" || *k == kind || (*k == "workload" && workload);
        if applies {
            let segs: Vec<&str> = path.split('.').collect();
            check_path(obj, &segs, String::new(), ty, &mut errs);
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    struct A(u32);
    impl Allocator for A {
        fn cluster_ip(&mut self) -> String {
            self.0 += 1;
            format!("10.43.0.{}", self.0)
        }
        fn node_port(&mut self) -> i64 {
            30000
        }
    }

    #[test]
    fn secret_string_data_is_folded_into_data() {
        let mut s = json!({"data": {"a": "eA=="}, "stringData": {"b": "hunter2"}});
        apply_defaults("Secret", &mut s, &mut A(0));
        assert_eq!(s["data"]["a"], "eA==");
        assert_eq!(s["data"]["b"], "aHVudGVyMg==");
        assert!(s.get("stringData").is_none());
        assert_eq!(s["type"], "Opaque");
    }

    #[test]
    fn deployment_and_container_defaults() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "nginx"}, {"name": "b", "image": "nginx:1.27"},
            {"name": "c", "image": "reg:5000/x:latest"}, {"name": "d", "image": "reg:5000/x"}]}}}});
        apply_defaults("Deployment", &mut d, &mut A(0));
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        let cs = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs[0]["imagePullPolicy"], "Always");
        assert_eq!(cs[1]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(cs[2]["imagePullPolicy"], "Always");
        assert_eq!(cs[3]["imagePullPolicy"], "Always");
        assert_eq!(cs[0]["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(d["spec"]["template"]["spec"]["dnsPolicy"], "ClusterFirst");
    }

    #[test]
    fn service_defaults() {
        let mut s = json!({"spec": {"ports": [{"port": 80}]}});
        apply_defaults("Service", &mut s, &mut A(9));
        assert_eq!(s["spec"]["clusterIP"], "10.43.0.10");
        assert_eq!(s["spec"]["clusterIPs"], json!(["10.43.0.10"]));
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(s["spec"]["ports"][0]["protocol"], "TCP");
        assert_eq!(s["spec"]["sessionAffinity"], "None");
    }
}
