//! Structural-schema handling for custom resources, as kube-apiserver does it: unknown fields are pruned
//! (or rejected with `fieldValidation=Strict`) and `default:` values are filled in.

use serde_json::{Map, Value};

/// Remove fields the schema does not declare; returns their paths (`.spec.foo`).
pub fn prune(schema: &Value, obj: &mut Value) -> Vec<String> {
    let mut unknown = Vec::new();
    if let Some(m) = obj.as_object_mut() {
        // apiVersion, kind and metadata are the server's; everything else follows the schema.
        let props = schema.get("properties").and_then(Value::as_object);
        let keys: Vec<String> = m.keys().cloned().collect();
        for k in keys {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            match props.and_then(|p| p.get(&k)) {
                Some(s) => {
                    if let Some(v) = m.get_mut(&k) {
                        walk_prune(s, v, &format!(".{k}"), &mut unknown);
                    }
                }
                None if preserves(schema) => {}
                None => {
                    m.remove(&k);
                    unknown.push(format!(".{k}"));
                }
            }
        }
    }
    unknown
}

fn preserves(s: &Value) -> bool {
    s.get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
}

fn walk_prune(schema: &Value, v: &mut Value, path: &str, unknown: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            let embedded = schema
                .get("x-kubernetes-embedded-resource")
                .and_then(Value::as_bool)
                == Some(true);
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                if embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let sub = props.and_then(|p| p.get(&k)).or(additional);
                match sub {
                    Some(s) => {
                        if let Some(child) = m.get_mut(&k) {
                            walk_prune(s, child, &format!("{path}.{k}"), unknown);
                        }
                    }
                    None if preserves(schema) => {}
                    None if schema.get("additionalProperties") == Some(&Value::Bool(true)) => {}
                    None => {
                        m.remove(&k);
                        unknown.push(format!("{path}.{k}"));
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, it) in items.iter_mut().enumerate() {
                    walk_prune(item_schema, it, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

/// Fill in `default:` values for absent properties (recursively, inside present objects and array items).
pub fn apply_defaults(schema: &Value, obj: &mut Value) {
    let Some(m) = obj.as_object_mut() else { return };
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (k, s) in props {
        if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        default_field(m, k, s);
    }
}

fn default_field(m: &mut Map<String, Value>, k: &str, s: &Value) {
    if !m.contains_key(k) {
        if let Some(d) = s.get("default") {
            m.insert(k.to_string(), d.clone());
        }
    }
    let Some(v) = m.get_mut(k) else { return };
    match v {
        Value::Object(child) => {
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                for (ck, cs) in props {
                    default_field(child, ck, cs);
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = s.get("items") {
                for it in items.iter_mut() {
                    if let (Some(child), Some(props)) = (
                        it.as_object_mut(),
                        is.get("properties").and_then(Value::as_object),
                    ) {
                        for (ck, cs) in props {
                            default_field(child, ck, cs);
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {
                "size": {"type": "integer", "default": 1},
                "mode": {"type": "string", "default": "fast"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "items": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string"}, "weight": {"type": "integer", "default": 5}}}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
            }},
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
        }})
    }

    #[test]
    fn prunes_unknown_fields_and_reports_paths() {
        let mut o = json!({"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "a"},
            "spec": {"size": 2, "bogus": 1, "labels": {"a": "b"}, "items": [{"name": "n", "extra": true}],
                "free": {"anything": {"goes": 1}}},
            "other": 1, "status": {"x": 1}});
        let mut unknown = prune(&schema(), &mut o);
        unknown.sort();
        assert_eq!(
            unknown,
            vec![".other", ".spec.bogus", ".spec.items[0].extra"]
        );
        assert_eq!(o["spec"]["free"]["anything"]["goes"], 1);
        assert_eq!(o["spec"]["labels"]["a"], "b");
        assert_eq!(o["status"]["x"], 1);
        assert_eq!(o["metadata"]["name"], "a");
    }

    #[test]
    fn fills_defaults() {
        let mut o = json!({"spec": {"size": 3, "items": [{"name": "n"}]}});
        apply_defaults(&schema(), &mut o);
        assert_eq!(o["spec"]["size"], 3);
        assert_eq!(o["spec"]["mode"], "fast");
        assert_eq!(o["spec"]["items"][0]["weight"], 5);
    }
}
