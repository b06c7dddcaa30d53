//! Ownership tags: how phoenix marks what it created and finds it again (there is no state file).

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};

/// The environment (effective name: a drill copy has its own) that owns the resource.
pub const TAG_ENV: &str = "phoenix:env";
/// The stable resource id inside the environment, e.g. `subnet/public-a`.
pub const TAG_RESOURCE: &str = "phoenix:resource";
/// The commit that last created or changed the resource. Not compared: a new commit alone is not
/// a change.
pub const TAG_COMMIT: &str = "phoenix:commit";
/// Instances: `server`, `agent` or `none`.
pub const TAG_ROLE: &str = "phoenix:role";
/// Instances: the instance group.
pub const TAG_GROUP: &str = "phoenix:group";
/// Instances: SHA-256 of the rendered user-data (the content itself is never compared or shown).
pub const TAG_USER_DATA_SHA256: &str = "phoenix:user-data-sha256";
/// Key pairs: SHA-256 of the OpenSSH public key line.
pub const TAG_PUBLIC_KEY_SHA256: &str = "phoenix:public-key-sha256";
pub const TAG_NAME: &str = "Name";
/// On instances launched from an image lookup: the lookup (`owner/name (architecture)`).
pub const TAG_IMAGE_LOOKUP: &str = "phoenix:image-lookup";
/// Resources built by a `--failover` run: the failover region they were built in.
pub const TAG_REGION: &str = "phoenix:region";
/// Copies (drills, ephemeral environments): the environment definition they were made from.
pub const TAG_BASE_ENV: &str = "phoenix:base-env";
/// Copies: `drill` or `ephemeral`.
pub const TAG_COPY: &str = "phoenix:copy";
/// Copies: when the copy was (last) brought up, RFC 3339 UTC.
pub const TAG_CREATED: &str = "phoenix:created";
/// Copies: after this instant (RFC 3339 UTC) `phoenix gc` tears the copy down.
pub const TAG_EXPIRES: &str = "phoenix:expires";

/// Tags compared by plan: every desired tag except the commit; of the live tags only those the
/// desired set names plus any stale `phoenix:` key (tags people add by hand are left alone).
pub(crate) fn compared(key: &str) -> bool {
    key != TAG_COMMIT
}

pub(crate) fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

/// Filters selecting the resources of `env` (and of one resource id when given).
pub(crate) fn owner_filters(env: &str, resource: Option<&str>) -> Vec<Filter> {
    let mut filters = vec![filter(&format!("tag:{TAG_ENV}"), env)];
    if let Some(resource) = resource {
        filters.push(filter(&format!("tag:{TAG_RESOURCE}"), resource));
    }
    filters
}

pub(crate) fn to_sdk(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

/// Tags applied at creation, so that nothing phoenix creates ever exists untagged.
pub(crate) fn spec(kind: ResourceType, tags: &BTreeMap<String, String>) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(kind)
        .set_tags(Some(to_sdk(tags)))
        .build()
}

pub(crate) fn from_sdk(tags: Option<&[Tag]>) -> BTreeMap<String, String> {
    tags.unwrap_or_default()
        .iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_string(),
                t.value().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

/// The tag differences that matter: (key, desired, live) for keys to set or remove.
pub(crate) fn diff(
    desired: &BTreeMap<String, String>,
    live: &BTreeMap<String, String>,
) -> Vec<(String, Option<String>, Option<String>)> {
    let mut out = Vec::new();
    for (k, v) in desired {
        if !compared(k) {
            continue;
        }
        if live.get(k) != Some(v) {
            out.push((k.clone(), Some(v.clone()), live.get(k).cloned()));
        }
    }
    for (k, v) in live {
        if compared(k) && k.starts_with("phoenix:") && !desired.contains_key(k) {
            out.push((k.clone(), None, Some(v.clone())));
        }
    }
    out
}

/// Whether the resource carries the ownership tags of `env` (the safety check before any change).
pub(crate) fn owned_by(tags: &BTreeMap<String, String>, env: &str) -> bool {
    tags.get(TAG_ENV).map(String::as_str) == Some(env) && tags.contains_key(TAG_RESOURCE)
}
