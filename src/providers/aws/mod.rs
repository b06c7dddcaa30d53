//! The cloud layer on AWS EC2: desired state from the environment model, live state found by
//! ownership tags (no state file), a pure plan, and engine nodes that converge or destroy.
//! See docs/cloud.md.

mod apply;
mod client;
mod compare;
mod desired;
mod error;
mod images;
mod keys;
mod live;
mod nodes;
mod plan;
mod rules;
mod tags;
mod volumes;

pub use apply::ConvergeOptions;
pub use client::{connect, AwsOptions, Ec2, SDK_RETRY};
pub use desired::{
    desired, DesiredCloud, DesiredInputs, DesiredResource, ImageSpec, InstanceSpec, KeyMaterial,
    LateUserData, RenderLate, ResourceSpec, Sensitive,
};
pub use error::AwsError;
pub use keys::{derived_private_key, key_material};
pub use live::{
    copies, gone_instances, observe, CopyInfo, LiveCloud, LiveMetadata, LiveResource, LiveState,
};
pub use nodes::{converge_nodes, converge_specs, destroy_nodes};
pub use plan::{plan, plan_live, ChangeAction, CloudPlan, FieldChange, ResourceChange};
pub use rules::{RuleKey, RulePeer};
pub use tags::{
    TAG_BASE_ENV, TAG_COMMIT, TAG_COPY, TAG_CREATED, TAG_ENV, TAG_EXPIRES, TAG_GROUP, TAG_NAME,
    TAG_PUBLIC_KEY_SHA256, TAG_REGION, TAG_RESOURCE, TAG_ROLE, TAG_USER_DATA_SHA256,
};
pub use volumes::{
    copy_snapshot, create_snapshot, delete_snapshot, delete_volume, observe_volumes,
    owned_snapshots, owned_volumes, pick_snapshot, snapshot, snapshot_tags, to_prune,
    volume_destroy_nodes, volume_node_id, volume_node_specs, volume_nodes, volume_specs,
    wait_snapshot, AttachSpec, LiveSnapshot, LiveVolume, ObservedVolume, RestorePoint,
    VolumeOptions, VolumeSpec, TAG_RESTORED_FROM, TAG_SNAPSHOT, TAG_TIME, TAG_VOLUME,
};
