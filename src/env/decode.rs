//! Hand-written decoding of a [`yaml::Node`] tree into typed values, collecting every problem.
//!
//! Each helper returns `None` after recording a diagnostic, so one bad field never hides the next.

use super::diag::{suggest, Diagnostic};
use super::spans::Spans;
use super::yaml::{Kind, Node, Pos, Scalar};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

pub struct Decoder<'f> {
    pub file: &'f str,
    pub diags: Vec<Diagnostic>,
    /// Positions of everything decoded, for the checks that run on the whole model.
    pub spans: Spans,
}

/// A mapping whose keys were checked against the allowed set.
pub struct Obj<'n> {
    pub pos: Pos,
    pub path: String,
    entries: Vec<(&'n str, &'n Node)>,
}

impl<'n> Obj<'n> {
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, v)| *k == key && !v.is_null())
            .map(|(_, v)| *v)
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn child(&self, key: &str) -> String {
        join(&self.path, key)
    }
}

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

impl<'f> Decoder<'f> {
    pub fn new(file: &'f str) -> Self {
        Decoder {
            file,
            diags: Vec::new(),
            spans: Spans::default(),
        }
    }

    pub fn error_help(
        &mut self,
        pos: Pos,
        path: &str,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        let d = Diagnostic::new(self.file, pos, path, message).help(help);
        self.diags.push(d);
    }

    fn wrong_type(&mut self, node: &Node, path: &str, expected: &str) {
        self.error_help(
            node.pos,
            path,
            format!("expected {expected}, found {}", node.type_name()),
            format!("write {expected} here"),
        );
    }

    /// A mapping with only `allowed` keys; unknown and duplicate keys are reported.
    pub fn obj<'n>(&mut self, node: &'n Node, path: &str, allowed: &[&str]) -> Option<Obj<'n>> {
        let Kind::Map(entries) = &node.kind else {
            self.wrong_type(node, path, "a mapping");
            return None;
        };
        self.spans.record_value(path, node.pos);
        let mut out: Vec<(&'n str, &'n Node)> = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            let Some(Scalar::Str(key)) = k.scalar() else {
                let text = k.key_text();
                if !allowed.contains(&text.as_str()) {
                    self.error_help(
                        k.pos,
                        path,
                        format!("mapping key {text:?} must be a string"),
                        format!("valid keys: {}", allowed.join(", ")),
                    );
                    continue;
                }
                // A plain key like `true` that happens to be allowed is fine as text.
                let key = key_str(k);
                if out.iter().any(|(seen, _)| *seen == key) {
                    self.duplicate_key(k, &join(path, key), key);
                    continue;
                }
                self.record_entry(path, key, k, v);
                out.push((key, v));
                continue;
            };
            if out.iter().any(|(seen, _)| *seen == key) {
                self.duplicate_key(k, &join(path, key), key);
                continue;
            }
            if !allowed.contains(&key) {
                let help = match suggest(key, allowed.iter().copied()) {
                    Some(s) => format!("did you mean {s:?}? valid keys: {}", allowed.join(", ")),
                    None => format!("valid keys: {}", allowed.join(", ")),
                };
                self.error_help(
                    k.pos,
                    &join(path, key),
                    format!("unknown field {key:?}"),
                    help,
                );
                continue;
            }
            self.record_entry(path, key, k, v);
            out.push((key, v));
        }
        Some(Obj {
            pos: node.pos,
            path: path.to_string(),
            entries: out,
        })
    }

    fn record_entry(&mut self, path: &str, key: &str, k: &Node, v: &Node) {
        let child = join(path, key);
        self.spans.record_key(&child, k.pos);
        self.spans.record_value(&child, v.pos);
    }

    fn duplicate_key(&mut self, k: &Node, path: &str, key: &str) {
        self.error_help(
            k.pos,
            path,
            format!("duplicate key {key:?}"),
            "each key may appear once in a mapping; remove or rename this one",
        );
    }

    /// Reports duplicate and non-scalar keys anywhere inside a free-form mapping (template
    /// values), which would otherwise be lost silently when it becomes JSON.
    pub fn free_form_keys(&mut self, node: &Node, path: &str) {
        // Explicit work list: the tree is bounded in depth, but nothing here needs recursion.
        let mut todo: Vec<(&Node, String)> = vec![(node, path.to_string())];
        while let Some((n, p)) = todo.pop() {
            match &n.kind {
                Kind::Map(entries) => {
                    let mut seen: HashSet<&str> = HashSet::with_capacity(entries.len());
                    for (k, v) in entries {
                        let Kind::Scalar { text, .. } = &k.kind else {
                            self.error_help(
                                k.pos,
                                &p,
                                format!("mapping key {:?} must be a string", k.key_text()),
                                "template values are keyed by plain strings",
                            );
                            continue;
                        };
                        let child = join(&p, text);
                        if !seen.insert(text) {
                            self.duplicate_key(k, &child, text);
                            continue;
                        }
                        todo.push((v, child));
                    }
                }
                Kind::Seq(items) => {
                    for (i, item) in items.iter().enumerate() {
                        todo.push((item, index(&p, i)));
                    }
                }
                Kind::Scalar { .. } => {}
            }
        }
    }

    /// A field that must be present.
    pub fn required<'n>(&mut self, obj: &Obj<'n>, key: &str, help: &str) -> Option<&'n Node> {
        let found = obj.get(key);
        if found.is_none() {
            self.error_help(
                obj.pos,
                &obj.child(key),
                format!("missing required field {key:?}"),
                help,
            );
        }
        found
    }

    pub fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match node.scalar() {
            Some(Scalar::Null) | None => {
                self.wrong_type(node, path, "a string");
                None
            }
            Some(_) => match &node.kind {
                Kind::Scalar { text, .. } => Some(text.clone()),
                _ => None,
            },
        }
    }

    pub fn bool(&mut self, node: &Node, path: &str) -> Option<bool> {
        match node.scalar() {
            Some(Scalar::Bool(b)) => Some(b),
            _ => {
                self.wrong_type(node, path, "true or false");
                None
            }
        }
    }

    pub fn int(&mut self, node: &Node, path: &str, min: i64, max: i64) -> Option<i64> {
        match node.scalar() {
            Some(Scalar::Int(i)) if (min..=max).contains(&i) => Some(i),
            Some(Scalar::Int(i)) => {
                self.error_help(
                    node.pos,
                    path,
                    format!("{i} is out of range"),
                    format!("use an integer from {min} to {max}"),
                );
                None
            }
            _ => {
                self.wrong_type(node, path, &format!("an integer from {min} to {max}"));
                None
            }
        }
    }

    pub fn duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let text = self.string(node, path)?;
        match parse_duration(&text) {
            Ok(d) => Some(d),
            Err(why) => {
                self.error_help(
                    node.pos,
                    path,
                    format!("{text:?} is not a valid duration: {why}"),
                    "write a duration like 30s, 5m, 1h30m",
                );
                None
            }
        }
    }

    pub fn list<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [Node]> {
        match &node.kind {
            Kind::Seq(items) => {
                self.spans.record_value(path, node.pos);
                for (i, item) in items.iter().enumerate() {
                    self.spans.record_value(&index(path, i), item.pos);
                }
                Some(items)
            }
            _ => {
                self.wrong_type(node, path, "a list");
                None
            }
        }
    }

    /// A list of strings.
    pub fn strings(&mut self, node: &Node, path: &str) -> Vec<(Pos, String)> {
        let Some(items) = self.list(node, path) else {
            return Vec::new();
        };
        let mut kept = Vec::with_capacity(items.len());
        let mut out = Vec::with_capacity(items.len());
        for (i, n) in items.iter().enumerate() {
            if let Some(s) = self.string(n, &index(path, i)) {
                kept.push(i);
                out.push((n.pos, s));
            }
        }
        self.spans.record_kept(path, kept);
        out
    }

    /// A mapping of string to string (tags, labels).
    pub fn string_map(&mut self, node: &Node, path: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Kind::Map(entries) = &node.kind else {
            self.wrong_type(node, path, "a mapping of strings");
            return out;
        };
        self.spans.record_value(path, node.pos);
        for (k, v) in entries {
            let Kind::Scalar { text, .. } = &k.kind else {
                self.error_help(
                    k.pos,
                    path,
                    format!("mapping key {:?} must be a string", k.key_text()),
                    "write each key as a plain string",
                );
                continue;
            };
            let key = text.clone();
            let child = join(path, &key);
            if out.contains_key(&key) {
                self.duplicate_key(k, &child, &key);
                continue;
            }
            self.spans.record_key(&child, k.pos);
            self.spans.record_value(&child, v.pos);
            if let Some(value) = self.string(v, &child) {
                out.insert(key, value);
            }
        }
        out
    }

    /// Decodes `key` with `f` if it is present.
    pub fn opt<'n, T>(
        &mut self,
        obj: &Obj<'n>,
        key: &str,
        f: impl FnOnce(&mut Self, &'n Node, &str) -> Option<T>,
    ) -> Option<T> {
        let node = obj.get(key)?;
        f(self, node, &obj.child(key))
    }

    /// Decodes a required `key` with `f`.
    pub fn req<'n, T>(
        &mut self,
        obj: &Obj<'n>,
        key: &str,
        help: &str,
        f: impl FnOnce(&mut Self, &'n Node, &str) -> Option<T>,
    ) -> Option<T> {
        let node = self.required(obj, key, help)?;
        f(self, node, &obj.child(key))
    }
}

fn key_str(node: &Node) -> &str {
    match &node.kind {
        Kind::Scalar { text, .. } => text,
        _ => "",
    }
}

/// Parses durations like `500ms`, `30s`, `5m`, `1h30m`, `2d`. Zero and bare numbers are refused.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("it is empty".into());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return Err("a unit is required (ms, s, m, h, d)".into());
    }
    let d = humantime::parse_duration(t).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("it must be longer than zero".into());
    }
    if d > Duration::from_secs(366 * 24 * 3600) {
        return Err("it must be at most a year".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::yaml::parse_one;

    #[test]
    fn unknown_and_duplicate_keys_are_all_reported() {
        let doc = parse_one("nme: a\nname: b\nname: c\n").unwrap();
        let mut d = Decoder::new("f.yaml");
        let obj = d.obj(&doc, "metadata", &["name", "labels"]).unwrap();
        assert_eq!(obj.get("name").unwrap().key_text(), "b");
        assert_eq!(d.diags.len(), 2);
        assert!(d.diags[0].message.contains("unknown field \"nme\""));
        assert!(d.diags[0]
            .help
            .as_deref()
            .unwrap()
            .contains("did you mean \"name\""));
        assert!(d.diags[1].message.contains("duplicate key"));
        assert_eq!(d.diags[1].line, 3);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("five minutes").is_err());
    }
}
