//! The EBS volume id of each CSI PersistentVolume (a data volume declared with a `zone`), filled
//! in when the `volumes` add-on is applied or compared: the cloud layer made or restored the
//! volume in this run, so the id is not in the commit. A restore makes a new volume; a
//! PersistentVolume's source cannot change, so an unbound one of phoenix's that points at another
//! volume is replaced, and a bound one is left for the operator with what to do.

use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::api::storage::v1::CSIDriver;
use kube::api::{Api, DeleteParams};

use crate::engine::{BoxFuture, NodeError};
use crate::providers::aws::{self, AwsOptions};
use crate::providers::cluster::{csi_volume_of, EBS_CSI_DRIVER};
use crate::providers::kube::{owned_by_env, Completion, CompletionFor};
use crate::render::Manifest;

/// How long a replaced PersistentVolume may take to go away.
const PV_GONE_TIMEOUT: Duration = Duration::from_secs(60);

/// Fills in `spec.csi.volumeHandle` from the volumes `env` owns in `region`.
#[derive(Debug)]
pub struct VolumeHandles {
    /// The deployed name the volumes are tagged with (a drill copy's own name).
    pub env: String,
    pub region: String,
}

impl Completion for VolumeHandles {
    fn complete<'a>(
        &'a self,
        client: &'a kube::Client,
        manifests: &'a mut [Manifest],
        purpose: CompletionFor,
        progress: &'a (dyn Fn(String) + Send + Sync),
    ) -> BoxFuture<'a, Result<(), NodeError>> {
        Box::pin(async move {
            let pending: Vec<(usize, String)> = manifests
                .iter()
                .enumerate()
                .filter_map(|(i, m)| csi_volume_of(&m.object).map(|v| (i, v.to_string())))
                .collect();
            if pending.is_empty() {
                return Ok(());
            }
            let ec2 = aws::connect(&self.region, &AwsOptions::default())
                .await
                .map_err(|e| {
                    NodeError::transient(format!(
                        "cannot connect to EC2 in {} to find the EBS volumes of the PersistentVolumes",
                        self.region
                    ))
                    .with_source(e)
                })?;
            for (i, volume) in pending {
                let live = aws::owned_volumes(&ec2, &self.env, Some(&volume))
                    .await
                    .map_err(NodeError::from)?;
                match live.as_slice() {
                    [v] => manifests[i].object["spec"]["csi"]["volumeHandle"] = v.id.clone().into(),
                    // Left as rendered: the comparison shows the PersistentVolume's volume as
                    // changed, next to the cloud layer's "volume missing".
                    [] if purpose == CompletionFor::Compare => {}
                    [] => {
                        return Err(NodeError::permanent(format!(
                            "volume/{volume} of {} does not exist in {}, so its PersistentVolume has no EBS volume to point at: the cloud layer creates or restores it (rebuild without --layers, or with cloud)",
                            self.env, self.region
                        )))
                    }
                    many => {
                        let ids: Vec<&str> = many.iter().map(|v| v.id.as_str()).collect();
                        return Err(NodeError::permanent(format!(
                            "volume/{volume} of {} is held by {} volumes ({}): its PersistentVolume can point at one; delete or untag the ones that hold no data you need",
                            self.env,
                            many.len(),
                            ids.join(", ")
                        )));
                    }
                }
            }
            if purpose == CompletionFor::Apply {
                require_driver(client).await?;
                for m in manifests.iter() {
                    if csi_volume_of(&m.object).is_some() {
                        replace_stale(client, &self.env, &m.object, progress).await?;
                    }
                }
            }
            Ok(())
        })
    }
}

/// The cluster serves the EBS CSI driver (its CSIDriver object): without it, nothing would
/// attach the volumes. Transient, so the node waits for an add-on that installs it.
async fn require_driver(client: &kube::Client) -> Result<(), NodeError> {
    let drivers: Api<CSIDriver> = Api::all(client.clone());
    match drivers.get_opt(EBS_CSI_DRIVER).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(NodeError::transient(format!(
            "waiting for the cluster's EBS CSI driver (CSIDriver {EBS_CSI_DRIVER}): the data volumes declared with a zone are attached by it; install it as an add-on (the volumes add-on comes after every other add-on)"
        ))),
        Err(e) => Err(NodeError::transient(format!(
            "cannot read CSIDriver {EBS_CSI_DRIVER}"
        ))
        .with_source(e)),
    }
}

/// A live PersistentVolume of this env pointing at another EBS volume (the one before a
/// restore) is deleted when no claim holds it; a bound one, or one that is not phoenix's, stops
/// the apply with what to do.
async fn replace_stale(
    client: &kube::Client,
    env: &str,
    desired: &serde_json::Value,
    progress: &(dyn Fn(String) + Send + Sync),
) -> Result<(), NodeError> {
    let Some(name) = desired["metadata"]["name"].as_str() else {
        return Ok(());
    };
    let want = desired["spec"]["csi"]["volumeHandle"]
        .as_str()
        .unwrap_or("");
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let read =
        |e| NodeError::transient(format!("cannot read PersistentVolume {name}")).with_source(e);
    let Some(live) = pvs.get_opt(name).await.map_err(read)? else {
        return Ok(());
    };
    let source = live.spec.as_ref().and_then(|s| s.csi.as_ref());
    let have = source.map(|c| c.volume_handle.as_str()).unwrap_or("");
    if have == want {
        return Ok(());
    }
    let live_json = serde_json::to_value(&live).unwrap_or_default();
    if !owned_by_env(&live_json, env) {
        return Err(NodeError::permanent(format!(
            "PersistentVolume {name} exists but is not phoenix's for {env}: phoenix does not change it; rename the volume in spec.volumes or delete that PersistentVolume"
        )));
    }
    let phase = live
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("");
    if phase == "Bound" {
        let claim = live
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .map(|c| {
                format!(
                    "{}/{}",
                    c.namespace.as_deref().unwrap_or("?"),
                    c.name.as_deref().unwrap_or("?")
                )
            })
            .unwrap_or_else(|| "its claim".into());
        return Err(NodeError::permanent(format!(
            "PersistentVolume {name} points at EBS volume {have}, but the volume is now {want} (restored from a snapshot), and a PersistentVolume's volume cannot be changed while claim {claim} holds it: scale down what mounts the claim, delete the claim and PersistentVolume {name} (the data is on {want}; the PersistentVolume's reclaim policy is Retain), then rebuild"
        )));
    }
    progress(format!(
        "replacing PersistentVolume {name}: its EBS volume is now {want} (was {})",
        if have.is_empty() { "none" } else { have }
    ));
    let gone =
        |e| NodeError::transient(format!("cannot delete PersistentVolume {name}")).with_source(e);
    pvs.delete(name, &DeleteParams::default())
        .await
        .map_err(gone)?;
    let deadline = tokio::time::Instant::now() + PV_GONE_TIMEOUT;
    loop {
        if pvs.get_opt(name).await.map_err(read)?.is_none() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(NodeError::transient(format!(
                "PersistentVolume {name} was deleted but is still there after {}s (a finalizer holds it)",
                PV_GONE_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
