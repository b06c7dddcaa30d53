//! The data volumes offered to a phoenix-built k3s cluster: one local PersistentVolume per
//! volume, on its mount path, pinned to its instance's node by the `phoenix.dev/instance` label
//! the k3s user-data gives every node, so an app's PVC in Git binds to it by name
//! (`volumeName`). Pure: the same commit gives the same objects.

use serde_json::{json, Value};

use crate::env::model::{Cluster, Environment};

/// The component the PersistentVolumes are applied as (an add-on of its own, so every app —
/// and every PVC — comes after them).
pub const VOLUMES_COMPONENT: &str = "volumes";

/// The storage class of the PersistentVolumes: none (`""`), so only a PVC that names the volume
/// (and `storageClassName: ""`) binds to one, never a dynamically provisioned claim.
pub const NO_STORAGE_CLASS: &str = "";

/// One PersistentVolume per data volume of a k3s env; none otherwise (an existing cluster brings
/// its own storage, and its nodes do not carry phoenix's labels).
pub fn persistent_volumes(env: &Environment) -> Vec<Value> {
    if !matches!(env.cluster, Some(Cluster::K3s(_))) {
        return Vec::new();
    }
    env.volumes
        .iter()
        .map(|v| {
            json!({
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {
                    "name": v.name,
                    "labels": { "phoenix.dev/volume": v.name },
                },
                "spec": {
                    "capacity": { "storage": format!("{}Gi", v.size) },
                    "accessModes": ["ReadWriteOnce"],
                    "volumeMode": "Filesystem",
                    // The data outlives a claim: deleting the PVC never wipes the volume.
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": NO_STORAGE_CLASS,
                    "local": { "path": v.mount_path },
                    "nodeAffinity": { "required": { "nodeSelectorTerms": [ {
                        "matchExpressions": [ {
                            "key": "phoenix.dev/instance",
                            "operator": "In",
                            "values": [format!("{}-{}", v.instance, v.index)],
                        } ],
                    } ] } },
                },
            })
        })
        .collect()
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
}
