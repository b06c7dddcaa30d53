//! Each component's inventory, kept in the cluster (there is no state file to lose): a ConfigMap
//! in `kube-system` listing the objects phoenix applied for it, carrying the component's marks.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::engine::Layer;

use super::discovery::Target;
use super::error::KubeError;
use super::object::{
    Marks, ObjectRef, ANNOTATION_COMMIT, LABEL_COMPONENT, LABEL_ENV, LABEL_LAYER, LABEL_MANAGED_BY,
    MANAGED_BY,
};
use super::ops;

/// Namespace holding the inventories (exists in every cluster).
pub const INVENTORY_NAMESPACE: &str = "kube-system";
/// Label that tells inventories apart from the component's own objects.
pub const LABEL_INVENTORY: &str = "phoenix.dev/inventory";
const KEY_OBJECTS: &str = "objects";
const KEY_FINISHED: &str = "finished";

/// The name of a component's inventory ConfigMap.
pub fn inventory_name(env: &str, layer: Layer, component: &str) -> String {
    format!("phoenix-inventory-{env}-{}-{component}", layer.as_str())
}

/// The identity of a component's inventory ConfigMap.
pub fn inventory_ref(env: &str, layer: Layer, component: &str) -> ObjectRef {
    ObjectRef {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: Some(INVENTORY_NAMESPACE.into()),
        name: inventory_name(env, layer, component),
    }
}

/// What one inventory says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inventory {
    pub env: String,
    pub layer: Layer,
    pub component: String,
    /// The commit of the last run that wrote it.
    pub commit: String,
    pub objects: Vec<ObjectRef>,
    /// Jobs with `ttlSecondsAfterFinished` that a run of this component saw through: once the TTL
    /// controller has deleted one, it is done, not missing (and is not run again).
    pub finished: Vec<ObjectRef>,
}

/// The ConfigMap kind, which every cluster serves.
pub fn configmaps() -> Target {
    Target::builtin("", "v1", "ConfigMap", "configmaps", true)
}

/// The ConfigMap body for an inventory. Sorted and without timestamps, so writing the same
/// inventory twice is a no-op on the server.
pub fn body(marks: &Marks, objects: &[ObjectRef], finished: &[ObjectRef]) -> Value {
    let lines = |objects: &[ObjectRef]| {
        let mut sorted: Vec<&ObjectRef> = objects.iter().collect();
        sorted.sort();
        sorted.dedup();
        sorted
            .iter()
            .filter_map(|o| serde_json::to_string(o).ok())
            .collect::<Vec<String>>()
            .join("\n")
    };
    let mut data = serde_json::Map::new();
    data.insert(KEY_OBJECTS.into(), lines(objects).into());
    if !finished.is_empty() {
        data.insert(KEY_FINISHED.into(), lines(finished).into());
    }
    let id = inventory_ref(&marks.env, marks.layer, &marks.component);
    let mut labels: BTreeMap<String, String> = marks
        .labels()
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    labels.insert(LABEL_INVENTORY.into(), "true".into());
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": id.name,
            "namespace": INVENTORY_NAMESPACE,
            "labels": labels,
            "annotations": { ANNOTATION_COMMIT: marks.commit },
        },
        // One object per line, so `kubectl get -o yaml` stays readable.
        "data": data,
    })
}

/// Reads an inventory ConfigMap; `None` for a ConfigMap that is not a phoenix inventory.
pub fn parse(cm: &Value) -> Result<Option<Inventory>, KubeError> {
    let labels = &cm["metadata"]["labels"];
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    if label(LABEL_MANAGED_BY) != Some(MANAGED_BY) || label(LABEL_INVENTORY) != Some("true") {
        return Ok(None);
    }
    let name = cm["metadata"]["name"].as_str().unwrap_or("").to_string();
    let bad = |problem: String| KubeError::Inventory {
        name: name.clone(),
        problem,
    };
    let (Some(env), Some(component), Some(layer)) =
        (label(LABEL_ENV), label(LABEL_COMPONENT), label(LABEL_LAYER))
    else {
        return Err(bad("missing its env, component or layer label".into()));
    };
    let layer: Layer = layer
        .parse()
        .map_err(|e: crate::engine::UnknownLayer| bad(e.to_string()))?;
    let read = |key: &str| -> Result<Vec<ObjectRef>, KubeError> {
        let text = cm["data"][key].as_str().unwrap_or("");
        let mut objects = Vec::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let obj: ObjectRef = serde_json::from_str(line)
                .map_err(|e| bad(format!("line {} of data.{key}: {e}", i + 1)))?;
            objects.push(obj);
        }
        Ok(objects)
    };
    let objects = read(KEY_OBJECTS)?;
    let finished = read(KEY_FINISHED)?;
    Ok(Some(Inventory {
        env: env.to_string(),
        layer,
        component: component.to_string(),
        commit: cm["metadata"]["annotations"][ANNOTATION_COMMIT]
            .as_str()
            .unwrap_or("")
            .to_string(),
        objects,
        finished,
    }))
}

/// The component's inventory, if there is one. An object of that name that is not this
/// component's is refused rather than overwritten.
pub async fn read(client: &::kube::Client, marks: &Marks) -> Result<Option<Inventory>, KubeError> {
    let id = inventory_ref(&marks.env, marks.layer, &marks.component);
    let Some(live) = ops::get(client, &configmaps(), &id).await? else {
        return Ok(None);
    };
    if !marks.owns(&live) {
        return Err(KubeError::NotOwned {
            found: Marks::describe_found(&live),
            object: Box::new(id),
            env: marks.env.clone(),
            component: marks.component.clone(),
        });
    }
    parse(&live)
}

/// Writes the inventory (server-side apply; only phoenix writes it, so ownership is forced).
pub async fn write(
    client: &::kube::Client,
    marks: &Marks,
    objects: &[ObjectRef],
    finished: &[ObjectRef],
) -> Result<(), KubeError> {
    let id = inventory_ref(&marks.env, marks.layer, &marks.component);
    ops::apply(
        client,
        &configmaps(),
        &id,
        &body(marks, objects, finished),
        true,
        false,
    )
    .await?;
    Ok(())
}

/// Every inventory of `env` in the cluster.
pub async fn list(client: &::kube::Client, env: &str) -> Result<Vec<Inventory>, KubeError> {
    let selector =
        format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_ENV}={env},{LABEL_INVENTORY}=true");
    let items = ops::list(client, &configmaps(), Some(INVENTORY_NAMESPACE), &selector).await?;
    let mut out = Vec::new();
    for cm in &items {
        if let Some(inv) = parse(cm)? {
            out.push(inv);
        }
    }
    out.sort_by(|a, b| (a.layer, &a.component).cmp(&(b.layer, &b.component)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_round_trips() {
        let marks = Marks {
            env: "demo".into(),
            component: "web".into(),
            layer: Layer::Apps,
            commit: "c0ffee".into(),
        };
        let objects = vec![
            ObjectRef {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                namespace: Some("web".into()),
                name: "api".into(),
            },
            ObjectRef {
                api_version: "v1".into(),
                kind: "Namespace".into(),
                namespace: None,
                name: "web".into(),
            },
        ];
        let cm = body(&marks, &objects, &objects[..1]);
        assert_eq!(cm["metadata"]["name"], "phoenix-inventory-demo-apps-web");
        let inv = parse(&cm).unwrap().unwrap();
        assert_eq!(inv.component, "web");
        assert_eq!(inv.layer, Layer::Apps);
        assert_eq!(inv.commit, "c0ffee");
        let mut want = objects.clone();
        want.sort();
        assert_eq!(inv.objects, want);
        assert_eq!(inv.finished, objects[..1]);
        assert_eq!(
            body(&marks, &objects, &[]),
            body(
                &marks,
                &objects.iter().rev().cloned().collect::<Vec<_>>(),
                &[]
            )
        );
        // Without finished Jobs the ConfigMap is as before they existed.
        assert!(body(&marks, &objects, &[])["data"]
            .get("finished")
            .is_none());
    }

    #[test]
    fn damaged_inventory_is_an_error_naming_it() {
        let marks = Marks {
            env: "demo".into(),
            component: "web".into(),
            layer: Layer::Apps,
            commit: "c".into(),
        };
        let mut cm = body(&marks, &[], &[]);
        cm["data"]["objects"] = "{not json".into();
        let err = parse(&cm).unwrap_err().to_string();
        assert!(
            err.starts_with("inventory phoenix-inventory-demo-apps-web: line 1"),
            "{err}"
        );
    }
}
