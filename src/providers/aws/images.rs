//! AMI resolution: an id is checked to exist; owner + name pattern → the newest match.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Mutex;

use super::client::Ec2;
use super::desired::ImageSpec;
use super::error::AwsError;
use super::tags::filter;

/// An image as phoenix needs it: its id and the device name its root volume is attached at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResolvedImage {
    pub id: String,
    pub name: Option<String>,
    pub root_device_name: Option<String>,
}

/// Resolves `spec` against EC2. For a lookup, the newest by CreationDate wins; equal dates are
/// broken by the greater name, then id, so the choice is deterministic.
pub(crate) async fn resolve(ec2: &Ec2, spec: &ImageSpec) -> Result<ResolvedImage, AwsError> {
    let doing = format!("resolving image {spec}");
    let req = ec2.client().describe_images();
    let req = match spec {
        ImageSpec::Id(id) => req.image_ids(id),
        // Only images that can be launched, of the architecture the instance type runs.
        ImageSpec::Lookup {
            owner,
            name,
            architecture,
        } => req
            .owners(owner)
            .filters(filter("name", name))
            .filters(filter("architecture", architecture))
            .filters(filter("state", "available")),
    };
    let out = match req.send().await {
        Ok(out) => out,
        // An unknown id is an answer, not a failure of the call.
        Err(e) => {
            let e = ec2.err(&doing)(e);
            if e.code().is_some_and(|c| c.starts_with("InvalidAMIID")) {
                return Err(AwsError::refused(
                    doing,
                    format!("image {spec} does not exist"),
                ));
            }
            return Err(e);
        }
    };
    let mut images: Vec<_> = out
        .images()
        .iter()
        .filter(|i| i.image_id().is_some())
        .collect();
    images.sort_by(|a, b| {
        (a.creation_date(), a.name(), a.image_id()).cmp(&(
            b.creation_date(),
            b.name(),
            b.image_id(),
        ))
    });
    let Some(best) = images.last() else {
        return Err(AwsError::refused(
            doing,
            format!("no image matches {spec} in region {}", ec2.region()),
        ));
    };
    Ok(ResolvedImage {
        id: best.image_id().unwrap_or_default().to_string(),
        name: best.name().map(str::to_string),
        root_device_name: best.root_device_name().map(str::to_string),
    })
}

/// Resolves each image spec once per run, however many instances use it.
#[derive(Clone, Default, Debug)]
pub(crate) struct ImageCache {
    inner: Arc<Mutex<HashMap<ImageSpec, ResolvedImage>>>,
}

impl ImageCache {
    pub(crate) async fn get(&self, ec2: &Ec2, spec: &ImageSpec) -> Result<ResolvedImage, AwsError> {
        // Holding the lock across the call makes concurrent instance nodes share one lookup.
        let mut map = self.inner.lock().await;
        if let Some(found) = map.get(spec) {
            return Ok(found.clone());
        }
        let found = resolve(ec2, spec).await?;
        map.insert(spec.clone(), found.clone());
        Ok(found)
    }
}
