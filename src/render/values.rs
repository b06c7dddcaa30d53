//! Template values: shared defaults, then the template's own defaults, then the environment.

use serde_json::Value;

/// Merges `over` into `base`: mappings merge key by key, anything else replaces.
pub fn deep_merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) => deep_merge(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn maps_merge_and_scalars_replace() {
        let mut base = json!({"a": {"x": 1, "y": 2}, "list": [1, 2], "keep": true});
        deep_merge(&mut base, &json!({"a": {"y": 3}, "list": [9]}));
        assert_eq!(
            base,
            json!({"a": {"x": 1, "y": 3}, "list": [9], "keep": true})
        );
    }
}
