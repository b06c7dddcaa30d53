//! JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch.

use crate::api::{list_type, ListType, ResourceType};
use crate::util::ApiError;
use serde_json::{Map, Value};

/// RFC 7386 merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("object ensured above");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn unescape(tok: &str) -> String {
    tok.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(ptr: &str) -> Result<Vec<String>, ApiError> {
    if ptr.is_empty() {
        return Ok(vec![]);
    }
    if !ptr.starts_with('/') {
        return Err(ApiError::bad_request(format!(
            "invalid JSON pointer {ptr:?}"
        )));
    }
    Ok(ptr[1..].split('/').map(unescape).collect())
}

fn parent_mut<'a>(doc: &'a mut Value, toks: &[String]) -> Result<&'a mut Value, ApiError> {
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m.get_mut(t).ok_or_else(|| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("doc is missing path: /{}", toks.join("/")),
                )
            })?,
            Value::Array(a) => {
                let i: usize = t.parse().map_err(|_| {
                    ApiError::new(422, "Invalid", format!("invalid array index {t:?}"))
                })?;
                a.get_mut(i).ok_or_else(|| {
                    ApiError::new(422, "Invalid", format!("array index {i} out of bounds"))
                })?
            }
            _ => {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!("doc is missing path: /{}", toks.join("/")),
                ))
            }
        };
    }
    Ok(cur)
}

fn get_ptr(doc: &Value, toks: &[String]) -> Option<Value> {
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m.get(t)?,
            Value::Array(a) => a.get(t.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur.clone())
}

fn remove_ptr(doc: &mut Value, toks: &[String]) -> Result<Value, ApiError> {
    let (last, parent) = toks
        .split_last()
        .ok_or_else(|| ApiError::new(422, "Invalid", "cannot remove the document root"))?;
    let p = parent_mut(doc, parent)?;
    let missing = || {
        ApiError::new(
            422,
            "Invalid",
            format!("unable to remove nonexistent key: {last}: missing value"),
        )
    };
    match p {
        Value::Object(m) => m.remove(last).ok_or_else(missing),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| missing())?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(missing())
            }
        }
        _ => Err(missing()),
    }
}

fn add_ptr(doc: &mut Value, toks: &[String], v: Value, replace: bool) -> Result<(), ApiError> {
    let Some((last, parent)) = toks.split_last() else {
        *doc = v;
        return Ok(());
    };
    let p = parent_mut(doc, parent)?;
    match p {
        Value::Object(m) => {
            if replace && !m.contains_key(last) {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!(
                        "replace operation does not apply: doc is missing key: /{}",
                        toks.join("/")
                    ),
                ));
            }
            m.insert(last.clone(), v);
            Ok(())
        }
        Value::Array(a) => {
            if last == "-" && !replace {
                a.push(v);
                return Ok(());
            }
            let i: usize = last.parse().map_err(|_| {
                ApiError::new(422, "Invalid", format!("invalid array index {last:?}"))
            })?;
            if replace {
                let slot = a.get_mut(i).ok_or_else(|| {
                    ApiError::new(422, "Invalid", format!("array index {i} out of bounds"))
                })?;
                *slot = v;
            } else {
                if i > a.len() {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        format!("array index {i} out of bounds"),
                    ));
                }
                a.insert(i, v);
            }
            Ok(())
        }
        _ => Err(ApiError::new(
            422,
            "Invalid",
            format!("doc is missing path: /{}", toks.join("/")),
        )),
    }
}

/// RFC 6902 JSON patch.
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| ApiError::bad_request("json patch must be an array of operations"))?;
    for op in ops {
        let name = op.get("op").and_then(Value::as_str).unwrap_or("");
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request("json patch operation is missing \"path\""))?;
        let toks = split_pointer(path)?;
        let value = || {
            op.get("value").cloned().ok_or_else(|| {
                ApiError::bad_request(format!("json patch {name} operation is missing \"value\""))
            })
        };
        let from = || -> Result<Vec<String>, ApiError> {
            split_pointer(op.get("from").and_then(Value::as_str).ok_or_else(|| {
                ApiError::bad_request(format!("json patch {name} operation is missing \"from\""))
            })?)
        };
        match name {
            "add" => add_ptr(doc, &toks, value()?, false)?,
            "replace" => add_ptr(doc, &toks, value()?, true)?,
            "remove" => {
                remove_ptr(doc, &toks)?;
            }
            "move" => {
                let v = remove_ptr(doc, &from()?)?;
                add_ptr(doc, &toks, v, false)?;
            }
            "copy" => {
                let f = from()?;
                let v = get_ptr(doc, &f).ok_or_else(|| {
                    ApiError::new(422, "Invalid", format!("doc is missing from path: {f:?}"))
                })?;
                add_ptr(doc, &toks, v, false)?;
            }
            "test" => {
                if get_ptr(doc, &toks) != Some(value()?) {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        format!("testing value {path} failed"),
                    ));
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unexpected json patch operation {other:?}"
                )));
            }
        }
    }
    Ok(())
}

/// Strategic merge patch for the shapes kubectl sends (merge keys from the kind's list types).
pub fn strategic_merge_patch(
    t: &ResourceType,
    target: &mut Value,
    patch: &Value,
) -> Result<(), ApiError> {
    let mut path = Vec::new();
    smp_value(t, &mut path, target, patch)
}

fn smp_value(
    t: &ResourceType,
    path: &mut Vec<String>,
    target: &mut Value,
    patch: &Value,
) -> Result<(), ApiError> {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut c = p.clone();
            c.remove("$patch");
            *target = Value::Object(c);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    // $retainKeys: drop keys of the target not listed (then merge the rest).
    if let Some(keep) = p.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        if let Some(t) = target.as_object_mut() {
            t.retain(|k, _| keep.contains(&k.as_str()));
        }
    }
    for (k, v) in p {
        if k.starts_with("$setElementOrder/") || k == "$retainKeys" || k == "$patch" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let remove: Vec<Value> = v.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(a)) = target.get_mut(field) {
                a.retain(|x| !remove.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        let tmap = target.as_object_mut().expect("object ensured above");
        if v.is_null() {
            tmap.remove(k);
            continue;
        }
        path.push(k.clone());
        match v {
            Value::Array(items) => {
                let refs: Vec<&str> = path.iter().map(String::as_str).collect();
                let lt = list_type(t, &refs);
                let cur = tmap.entry(k.clone()).or_insert(Value::Null);
                match lt {
                    ListType::Map(keys) => merge_list_by_key(t, path, cur, items, &keys[..1])?,
                    ListType::Set => {
                        if !cur.is_array() {
                            *cur = Value::Array(vec![]);
                        }
                        let a = cur.as_array_mut().expect("array ensured above");
                        for i in items {
                            if !a.contains(i) {
                                a.push(i.clone());
                            }
                        }
                    }
                    ListType::Atomic => {
                        let cleaned: Vec<Value> = items
                            .iter()
                            .filter(|i| i.get("$patch").is_none())
                            .cloned()
                            .collect();
                        *cur = Value::Array(cleaned);
                    }
                }
            }
            Value::Object(_) => {
                let cur = tmap.entry(k.clone()).or_insert(Value::Null);
                smp_value(t, path, cur, v)?;
                if cur.is_null() {
                    tmap.remove(k);
                }
            }
            _ => {
                tmap.insert(k.clone(), v.clone());
            }
        }
        path.pop();
    }
    Ok(())
}

fn key_matches(item: &Value, patch_item: &Value, keys: &[String]) -> bool {
    keys.iter().all(|k| item.get(k) == patch_item.get(k))
}

fn merge_list_by_key(
    t: &ResourceType,
    path: &mut Vec<String>,
    cur: &mut Value,
    items: &[Value],
    keys: &[String],
) -> Result<(), ApiError> {
    if !cur.is_array() {
        *cur = Value::Array(vec![]);
    }
    // A list-level {"$patch": "replace"} element replaces the whole list.
    if items.iter().any(|i| {
        i.get("$patch").and_then(Value::as_str) == Some("replace")
            && keys.iter().all(|k| i.get(k).is_none())
    }) {
        let cleaned: Vec<Value> = items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .cloned()
            .collect();
        *cur = Value::Array(cleaned);
        return Ok(());
    }
    let arr = cur.as_array_mut().expect("array ensured above");
    for pi in items {
        if !pi.is_object() {
            arr.push(pi.clone());
            continue;
        }
        let pos = arr.iter().position(|i| key_matches(i, pi, keys));
        if pi.get("$patch").and_then(Value::as_str) == Some("delete") {
            arr.retain(|i| !key_matches(i, pi, keys));
            continue;
        }
        match pos {
            Some(p) => smp_value(t, path, &mut arr[p], pi)?,
            None => {
                let mut n = Value::Null;
                smp_value(t, path, &mut n, pi)?;
                arr.push(n);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::builtin_types;
    use serde_json::json;

    fn deploy_type() -> ResourceType {
        builtin_types()
            .into_iter()
            .find(|t| t.kind == "Deployment")
            .unwrap()
    }

    #[test]
    fn merge_patch_removes_nulls() {
        let mut d = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge_patch(&mut d, &json!({"a": null, "b": {"c": 5}}));
        assert_eq!(d, json!({"b": {"c": 5, "d": 3}}));
    }

    #[test]
    fn json_patch_ops() {
        let mut d = json!({"a": [1, 2], "b": {"c": 1}});
        json_patch(
            &mut d,
            &json!([
                {"op": "add", "path": "/a/-", "value": 3},
                {"op": "replace", "path": "/b/c", "value": 2},
                {"op": "copy", "from": "/b/c", "path": "/d"},
                {"op": "move", "from": "/d", "path": "/e"},
                {"op": "remove", "path": "/a/0"},
                {"op": "test", "path": "/e", "value": 2}
            ]),
        )
        .unwrap();
        assert_eq!(d, json!({"a": [2, 3], "b": {"c": 2}, "e": 2}));
        assert!(json_patch(&mut d, &json!([{"op": "test", "path": "/e", "value": 9}])).is_err());
        assert!(json_patch(&mut d, &json!([{"op": "remove", "path": "/zz"}])).is_err());
    }

    #[test]
    fn smp_merges_containers_by_name() {
        let t = deploy_type();
        let mut d = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "x:1"}, {"name": "b", "image": "y:1"}]}}}});
        strategic_merge_patch(
            &t,
            &mut d,
            &json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                "containers": [{"name": "b", "image": "y:2"}]}}}}),
        )
        .unwrap();
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][1]["image"],
            "y:2"
        );
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["image"],
            "x:1"
        );
        strategic_merge_patch(
            &t,
            &mut d,
            &json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "$patch": "delete"}]}}}}),
        )
        .unwrap();
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn smp_directives() {
        let t = deploy_type();
        let mut d = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x", "y"]}});
        strategic_merge_patch(
            &t,
            &mut d,
            &json!({"metadata": {"labels": {"$patch": "replace", "c": "3"}, "$deleteFromPrimitiveList/finalizers": ["x"]}}),
        )
        .unwrap();
        assert_eq!(
            d,
            json!({"metadata": {"labels": {"c": "3"}, "finalizers": ["y"]}})
        );
    }
}
