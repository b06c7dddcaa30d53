//! What else a deletion takes with it. Deleting a Namespace deletes every object in it; deleting a
//! CustomResourceDefinition deletes every object of its kind, in every namespace. Before phoenix
//! deletes one of its own Namespaces or CRDs it looks inside, and refuses when that would take
//! objects it does not own.

use std::collections::HashSet;

use serde_json::Value;

use super::component::{bounded, first_error};
use super::discovery::{KindMap, Target};
use super::error::KubeError;
use super::object::ObjectRef;
use super::ops;

/// How many foreign objects a refusal names before it counts the rest.
const NAMED: usize = 10;

/// Whether deleting `id` also deletes other objects (it is a Namespace or a CRD).
pub(crate) fn is_container(id: &ObjectRef) -> bool {
    (id.kind == "Namespace" && id.api_version == "v1")
        || (id.kind == "CustomResourceDefinition" && id.group() == "apiextensions.k8s.io")
}

/// Objects that deleting the container `live` (of identity `id`) would delete too and that
/// `spared` does not accept. Objects the cluster makes and removes by itself are not counted:
/// those with an owner reference (deleted with their owner anyway), Events, Endpoints, and what
/// every namespace gets (the `default` ServiceAccount, the `kube-root-ca.crt` ConfigMap).
pub(crate) async fn foreign_contents(
    client: &::kube::Client,
    map: &KindMap,
    id: &ObjectRef,
    live: &Value,
    spared: &(dyn Fn(&Value) -> bool + Sync),
    limit: usize,
) -> Result<Vec<ObjectRef>, KubeError> {
    let (targets, namespace): (Vec<Target>, Option<&str>) = if id.kind == "Namespace" {
        let mut seen = HashSet::new();
        let targets = map
            .all()
            .filter(|t| t.namespaced && t.listable)
            .filter(|t| !derived_kind(&t.resource.group, &t.resource.kind))
            .filter(|t| seen.insert((t.resource.group.clone(), t.resource.kind.clone())))
            .cloned()
            .collect();
        (targets, Some(id.name.as_str()))
    } else {
        let group = live["spec"]["group"].as_str().unwrap_or_default();
        let kind = live["spec"]["names"]["kind"].as_str().unwrap_or_default();
        let target = map
            .all()
            .find(|t| t.listable && t.resource.group == group && t.resource.kind == kind)
            .cloned();
        (target.into_iter().collect(), None)
    };
    let listed = bounded(targets, limit, |t| async move {
        ops::list_if_served(client, &t, namespace, "").await
    })
    .await;
    let mut foreign: Vec<ObjectRef> = first_error(listed)?
        .into_iter()
        .flatten()
        .filter(|o| !made_by_the_cluster(o) && !spared(o))
        .filter_map(|o| ObjectRef::of(&o))
        .collect();
    foreign.sort();
    Ok(foreign)
}

/// Kinds whose objects the cluster derives from others and deletes by itself.
fn derived_kind(group: &str, kind: &str) -> bool {
    matches!(
        (group, kind),
        ("", "Event") | ("events.k8s.io", "Event") | ("", "Endpoints")
    )
}

fn made_by_the_cluster(o: &Value) -> bool {
    let meta = &o["metadata"];
    if meta["ownerReferences"]
        .as_array()
        .is_some_and(|refs| !refs.is_empty())
    {
        return true;
    }
    let name = meta["name"].as_str().unwrap_or_default();
    matches!(
        (o["kind"].as_str().unwrap_or_default(), name),
        ("ServiceAccount", "default") | ("ConfigMap", "kube-root-ca.crt")
    )
}

/// The refusal for a container holding `foreign` objects.
pub(crate) fn refusal(id: &ObjectRef, foreign: &[ObjectRef]) -> KubeError {
    let mut named: Vec<String> = foreign
        .iter()
        .take(NAMED)
        .map(ToString::to_string)
        .collect();
    if foreign.len() > NAMED {
        named.push(format!("and {} more", foreign.len() - NAMED));
    }
    let what = if id.kind == "Namespace" {
        "every object in it"
    } else {
        "every object of its kind"
    };
    KubeError::HoldsForeign {
        object: Box::new(id.clone()),
        detail: format!(
            "deleting it would delete {what}, and {} of them {} not phoenix's to delete: {}",
            foreign.len(),
            if foreign.len() == 1 { "is" } else { "are" },
            named.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_the_cluster_makes_is_not_foreign() {
        assert!(made_by_the_cluster(
            &json!({"kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt"}})
        ));
        assert!(made_by_the_cluster(
            &json!({"kind": "ServiceAccount", "metadata": {"name": "default"}})
        ));
        assert!(made_by_the_cluster(&json!({
            "kind": "ReplicaSet",
            "metadata": {"name": "api-1", "ownerReferences": [{"kind": "Deployment", "name": "api"}]}
        })));
        assert!(!made_by_the_cluster(
            &json!({"kind": "ConfigMap", "metadata": {"name": "hand-made"}})
        ));
        assert!(derived_kind("", "Event") && !derived_kind("", "Secret"));
    }

    #[test]
    fn a_refusal_names_ten_and_counts_the_rest() {
        let ns = ObjectRef {
            api_version: "v1".into(),
            kind: "Namespace".into(),
            namespace: None,
            name: "shop".into(),
        };
        let foreign: Vec<ObjectRef> = (0..12)
            .map(|i| ObjectRef {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                namespace: Some("shop".into()),
                name: format!("cm-{i:02}"),
            })
            .collect();
        let text = refusal(&ns, &foreign).to_string();
        assert!(text.contains("ConfigMap shop/cm-09"), "{text}");
        assert!(!text.contains("cm-10"), "{text}");
        assert!(text.contains("and 2 more"), "{text}");
        assert!(
            text.starts_with("refusing to delete Namespace shop"),
            "{text}"
        );
    }
}
