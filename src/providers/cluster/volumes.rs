//! The data volumes offered to a phoenix-built k3s cluster, so an app's PVC in Git binds to
//! each by name (`volumeName`):
//! - a volume phoenix attaches to an instance is a local PersistentVolume on its mount path,
//!   pinned to that node by the `phoenix.dev/instance` label the k3s user-data gives it;
//! - a volume left in a zone is a static PersistentVolume of the EBS CSI driver, pinned to nodes
//!   of its zone. Its EBS volume id is known only once the cloud layer has made (or restored) the
//!   volume, so the object carries [`VOLUME_HANDLE_PENDING`] until it is applied or compared.
//!
//! Pure: the same commit gives the same objects.

use serde_json::{json, Value};

use crate::env::model::{Cluster, Environment, Placement};

/// The component the PersistentVolumes are applied as (an add-on of its own, so every app —
/// and every PVC — comes after them).
pub const VOLUMES_COMPONENT: &str = "volumes";

/// The storage class of the PersistentVolumes: none (`""`), so only a PVC that names the volume
/// (and `storageClassName: ""`) binds to one, never a dynamically provisioned claim.
pub const NO_STORAGE_CLASS: &str = "";

/// The EBS CSI driver's name (its CSIDriver object and `spec.csi.driver`).
pub const EBS_CSI_DRIVER: &str = "ebs.csi.aws.com";

/// The `volumeHandle` of an EBS CSI PersistentVolume before its volume id is filled in.
pub const VOLUME_HANDLE_PENDING: &str = "(the EBS volume id, filled in when applied)";

/// One PersistentVolume per data volume of a k3s env; none otherwise (an existing cluster brings
/// its own storage, and its nodes do not carry phoenix's labels).
pub fn persistent_volumes(env: &Environment) -> Vec<Value> {
    if !matches!(env.cluster, Some(Cluster::K3s(_))) {
        return Vec::new();
    }
    env.volumes
        .iter()
        .map(|v| {
            let (source, key, values) = match &v.placement {
                Placement::Instance(a) => (
                    json!({ "local": { "path": a.mount_path } }),
                    "phoenix.dev/instance",
                    format!("{}-{}", a.group, a.index),
                ),
                Placement::Zone(zone) => (
                    json!({ "csi": {
                        "driver": EBS_CSI_DRIVER,
                        "volumeHandle": VOLUME_HANDLE_PENDING,
                        "fsType": v.filesystem.as_str(),
                    } }),
                    "topology.kubernetes.io/zone",
                    zone.clone(),
                ),
            };
            let mut spec = json!({
                "capacity": { "storage": format!("{}Gi", v.size) },
                "accessModes": ["ReadWriteOnce"],
                "volumeMode": "Filesystem",
                // The data outlives a claim: deleting the PVC never wipes the volume.
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": NO_STORAGE_CLASS,
                "nodeAffinity": { "required": { "nodeSelectorTerms": [ {
                    "matchExpressions": [ {
                        "key": key,
                        "operator": "In",
                        "values": [values],
                    } ],
                } ] } },
            });
            if let (Some(spec), Value::Object(source)) = (spec.as_object_mut(), source) {
                spec.extend(source);
            }
            json!({
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {
                    "name": v.name,
                    "labels": { "phoenix.dev/volume": v.name },
                },
                "spec": spec,
            })
        })
        .collect()
}

/// Whether a PersistentVolume of [`persistent_volumes`] is one of the EBS CSI driver's, and the
/// name of its volume (`phoenix.dev/volume`).
pub fn csi_volume_of(object: &Value) -> Option<&str> {
    if object["kind"] != "PersistentVolume" || object["spec"]["csi"]["driver"] != EBS_CSI_DRIVER {
        return None;
    }
    object["metadata"]["labels"]["phoenix.dev/volume"].as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::{load, MemFiles};

    #[test]
    fn one_local_volume_pinned_to_its_node_per_volume_of_a_k3s_env() {
        let text = "apiVersion: phoenix/v1\nkind: Environment\nmetadata: { name: t }\nspec:\n  cloud:\n    region: us-east-1\n    network: { cidr: 10.0.0.0/16, subnets: [{ name: a, cidr: 10.0.1.0/24, zone: us-east-1a, public: true }] }\n    instances: [{ name: server, role: server, count: 1, type: t3.small, image: { id: ami-12345678 }, subnet: a }]\n  cluster: { distribution: k3s, version: v1.31.4+k3s1, secret: env:X }\n  volumes: [{ name: db, size: 20, instance: server/0, mountPath: /var/lib/db }]\n";
        let files = MemFiles::default()
            .with("environments/t/environment.yaml", text)
            .with("templates/cloud-init/k3s-server.yaml.j2", "#cloud-config\n");
        let env = load(&files, "t").unwrap_or_else(|d| panic!("{d:?}"));
        let pvs = persistent_volumes(&env);
        assert_eq!(pvs.len(), 1);
        let pv = &pvs[0];
        assert_eq!(pv["metadata"]["name"], "db");
        assert_eq!(pv["spec"]["capacity"]["storage"], "20Gi");
        assert_eq!(pv["spec"]["local"]["path"], "/var/lib/db");
        assert_eq!(pv["spec"]["storageClassName"], "");
        assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        let term = &pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0];
        assert_eq!(term["matchExpressions"][0]["key"], "phoenix.dev/instance");
        assert_eq!(term["matchExpressions"][0]["values"][0], "server-0");
    }

    #[test]
    fn a_volume_in_a_zone_is_an_ebs_csi_volume_pinned_to_its_zone() {
        let text = "apiVersion: phoenix/v1\nkind: Environment\nmetadata: { name: t }\nspec:\n  cloud:\n    region: us-east-1\n    network: { cidr: 10.0.0.0/16, subnets: [{ name: a, cidr: 10.0.1.0/24, zone: us-east-1a, public: true }] }\n    instances: [{ name: server, role: server, count: 1, type: t3.small, image: { id: ami-12345678 }, subnet: a }]\n  cluster: { distribution: k3s, version: v1.31.4+k3s1, secret: env:X }\n  volumes: [{ name: db, size: 20, zone: us-east-1b, filesystem: xfs }]\n";
        let files = MemFiles::default()
            .with("environments/t/environment.yaml", text)
            .with("templates/cloud-init/k3s-server.yaml.j2", "#cloud-config\n");
        let env = load(&files, "t").unwrap_or_else(|d| panic!("{d:?}"));
        let pvs = persistent_volumes(&env);
        let pv = &pvs[0];
        assert_eq!(pv["spec"]["csi"]["driver"], EBS_CSI_DRIVER);
        assert_eq!(pv["spec"]["csi"]["volumeHandle"], VOLUME_HANDLE_PENDING);
        assert_eq!(pv["spec"]["csi"]["fsType"], "xfs");
        assert!(pv["spec"].get("local").is_none(), "{pv:#}");
        let term = &pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0];
        assert_eq!(
            term["matchExpressions"][0]["key"],
            "topology.kubernetes.io/zone"
        );
        assert_eq!(term["matchExpressions"][0]["values"][0], "us-east-1b");
        assert_eq!(csi_volume_of(pv), Some("db"));
    }
}
