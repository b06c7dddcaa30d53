//! Where each decoded field came from, so checks on the whole model can point at the exact value.
//!
//! The typed model keeps only what the later layers need; the positions of every field and the
//! original index of every list item live here instead, keyed by the dotted field path used in
//! diagnostics (`spec.apps[1].dependsOn[0]`).

use super::yaml::Pos;
use std::collections::HashMap;

#[derive(Clone, Debug, Default)]
pub struct Spans {
    /// Position of the value at a field path.
    values: HashMap<String, Pos>,
    /// Position of the key of a mapping entry at a field path.
    keys: HashMap<String, Pos>,
    /// For a list whose decoded form skips invalid or duplicate items: the index each decoded
    /// item had in the file.
    kept: HashMap<String, Vec<usize>>,
}

impl Spans {
    pub fn record_value(&mut self, path: &str, pos: Pos) {
        self.values.entry(path.to_string()).or_insert(pos);
    }

    pub fn record_key(&mut self, path: &str, pos: Pos) {
        self.keys.entry(path.to_string()).or_insert(pos);
    }

    /// Records the file index of each item the decoded list holds, in order.
    pub fn record_kept(&mut self, list: &str, indices: Vec<usize>) {
        self.kept.insert(list.to_string(), indices);
    }

    /// Where the value at `path` starts, if the file has one there.
    pub fn value(&self, path: &str) -> Option<Pos> {
        self.values.get(path).copied()
    }

    /// Where the key of the entry at `path` starts.
    pub fn key(&self, path: &str) -> Option<Pos> {
        self.keys.get(path).copied()
    }

    /// The value's position, else the closest enclosing field that has one, else 1:1.
    pub fn at(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = self.value(p) {
                return pos;
            }
            match parent(p) {
                Some(up) => p = up,
                None => return Pos { line: 1, col: 1 },
            }
        }
    }

    /// The field path of the `i`-th decoded item of `list`, with the index it has in the file.
    pub fn item(&self, list: &str, i: usize) -> String {
        let at = self
            .kept
            .get(list)
            .and_then(|k| k.get(i))
            .copied()
            .unwrap_or(i);
        format!("{list}[{at}]")
    }
}

/// The enclosing field path: `a.b[2]` → `a.b`, `a.b` → `a`, `a` → none.
fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    if path.ends_with(']') {
        if let Some(open) = path.rfind('[') {
            return Some(&path[..open]);
        }
    }
    match path.rfind('.') {
        Some(dot) => Some(&path[..dot]),
        None => Some(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_back_to_the_enclosing_field() {
        let mut s = Spans::default();
        s.record_value("spec", Pos { line: 5, col: 3 });
        s.record_value("spec.apps[0]", Pos { line: 7, col: 7 });
        assert_eq!(s.at("spec.apps[0].dependsOn[3]"), Pos { line: 7, col: 7 });
        assert_eq!(s.at("spec.cluster"), Pos { line: 5, col: 3 });
        assert_eq!(s.at("metadata"), Pos { line: 1, col: 1 });
    }

    #[test]
    fn items_keep_their_file_index() {
        let mut s = Spans::default();
        s.record_kept("spec.apps", vec![0, 2, 3]);
        assert_eq!(s.item("spec.apps", 1), "spec.apps[2]");
        assert_eq!(s.item("spec.addons", 1), "spec.addons[1]");
    }
}
