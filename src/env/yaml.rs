//! A YAML document tree that remembers where every node came from.
//!
//! serde stops at the first error and forgets positions; validation must report every problem with
//! file, line and column, so configuration is parsed into this tree first and decoded by hand.
//! The builder is iterative (no recursion on input depth) and bounds nesting depth and alias
//! expansion, so hostile input (anchor bombs, 100k-deep nesting) ends in an error, not a hang.

use saphyr_parser::{Event, Parser, ScalarStyle};
use std::collections::HashMap;
use std::fmt;

/// Deepest nesting accepted; real environment files use fewer than 10 levels.
pub const MAX_DEPTH: usize = 64;
/// Most nodes one document may expand to, counting copies made by aliases.
pub const MAX_NODES: usize = 200_000;

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub kind: Kind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// A scalar with its text and whether it was written plain (unquoted).
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Entries in document order; duplicates are kept so the decoder can report them.
    Map(Vec<(Node, Node)>),
}

/// What a scalar means under the YAML 1.2 core schema.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
}

impl Node {
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
            Kind::Scalar { .. } => match self.scalar() {
                Some(Scalar::Null) => "null",
                Some(Scalar::Bool(_)) => "a boolean",
                Some(Scalar::Int(_)) => "an integer",
                Some(Scalar::Float(_)) => "a number",
                _ => "a string",
            },
        }
    }

    pub fn scalar(&self) -> Option<Scalar<'_>> {
        let Kind::Scalar { text, plain } = &self.kind else {
            return None;
        };
        if !plain {
            return Some(Scalar::Str(text));
        }
        Some(resolve_plain(text))
    }

    pub fn is_null(&self) -> bool {
        matches!(self.scalar(), Some(Scalar::Null))
    }

    /// Converts to JSON, resolving plain scalars by the core schema. Map keys become strings.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        // Depth is bounded by MAX_DEPTH at parse time, so recursion here is bounded too.
        match &self.kind {
            Kind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            Kind::Map(entries) => {
                let mut map = serde_json::Map::new();
                for (k, v) in entries {
                    map.insert(k.key_text(), v.to_json());
                }
                Value::Object(map)
            }
            Kind::Scalar { .. } => match self.scalar() {
                Some(Scalar::Null) | None => Value::Null,
                Some(Scalar::Bool(b)) => Value::Bool(b),
                Some(Scalar::Int(i)) => Value::from(i),
                Some(Scalar::Float(f)) => serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .unwrap_or(Value::Null),
                Some(Scalar::Str(s)) => Value::String(s.to_string()),
            },
        }
    }

    /// The text of a key as written (non-scalar keys are shown by their type).
    pub fn key_text(&self) -> String {
        match &self.kind {
            Kind::Scalar { text, .. } => text.clone(),
            _ => format!("<{}>", self.type_name()),
        }
    }
}

fn resolve_plain(text: &str) -> Scalar<'_> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Scalar::Null,
        "true" | "True" | "TRUE" => return Scalar::Bool(true),
        "false" | "False" | "FALSE" => return Scalar::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Scalar::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Scalar::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Scalar::Float(f64::NAN),
        _ => {}
    }
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !body.is_empty() && body.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = text.parse::<i64>() {
            return Scalar::Int(i);
        }
    }
    if let Some(hex) = text.strip_prefix("0x") {
        if let Ok(i) = i64::from_str_radix(hex, 16) {
            return Scalar::Int(i);
        }
    }
    if let Some(oct) = text.strip_prefix("0o") {
        if let Ok(i) = i64::from_str_radix(oct, 8) {
            return Scalar::Int(i);
        }
    }
    let looks_numeric = body
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit() || b == b'.')
        && body
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'));
    if looks_numeric {
        if let Ok(f) = text.parse::<f64>() {
            return Scalar::Float(f);
        }
    }
    Scalar::Str(text)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.pos, self.message)
    }
}

impl std::error::Error for YamlError {}

/// An open collection: where it started, its anchor id, what it holds so far and the height of
/// its tallest child (a scalar is 0 high, a collection one more than its tallest child).
enum Frame {
    Seq(Pos, usize, Vec<Node>, usize),
    Map(Pos, usize, Vec<(Node, Node)>, Option<Node>, usize),
}

/// Parses a stream into its documents. An empty stream yields no documents.
pub fn parse_documents(src: &str) -> Result<Vec<Node>, YamlError> {
    let mut parser = Parser::new_from_str(src);
    let mut docs = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    // Each anchored node with its height: an alias copies the whole subtree, so its height
    // counts against the nesting limit wherever the alias is used.
    let mut anchors: HashMap<usize, (Node, usize)> = HashMap::new();
    let mut budget = MAX_NODES;
    let mut doc_root: Option<Node> = None;

    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|e| YamlError {
            pos: Pos {
                line: e.marker().line(),
                col: e.marker().col() + 1,
            },
            message: e.info().to_string(),
        })?;
        let pos = Pos {
            line: span.start.line(),
            col: span.start.col() + 1,
        };
        let finished: Option<(Node, usize, usize)> = match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing => None,
            Event::DocumentStart(_) => {
                anchors.clear();
                None
            }
            Event::DocumentEnd => {
                docs.push(doc_root.take().unwrap_or(Node {
                    pos,
                    kind: Kind::Scalar {
                        text: String::new(),
                        plain: true,
                    },
                }));
                None
            }
            Event::Alias(id) => {
                let Some((target, height)) = anchors.get(&id) else {
                    return Err(YamlError {
                        pos,
                        message: "alias refers to an unknown anchor".into(),
                    });
                };
                let size = count_nodes(target);
                if size > budget {
                    return Err(YamlError {
                        pos,
                        message: format!(
                            "document expands to more than {MAX_NODES} nodes through aliases (an alias bomb?)"
                        ),
                    });
                }
                if stack.len() + height > MAX_DEPTH {
                    return Err(YamlError {
                        pos,
                        message: format!("nesting deeper than {MAX_DEPTH} levels through aliases"),
                    });
                }
                budget -= size;
                let mut copy = target.clone();
                copy.pos = pos;
                Some((copy, 0, *height))
            }
            Event::Scalar(text, style, anchor, _tag) => {
                take_budget(&mut budget, pos)?;
                let node = Node {
                    pos,
                    kind: Kind::Scalar {
                        text: text.into_owned(),
                        plain: style == ScalarStyle::Plain,
                    },
                };
                Some((node, anchor, 0))
            }
            Event::SequenceStart(anchor, _) => {
                take_budget(&mut budget, pos)?;
                if stack.len() >= MAX_DEPTH {
                    return Err(too_deep(pos));
                }
                stack.push(Frame::Seq(pos, anchor, Vec::new(), 0));
                None
            }
            Event::MappingStart(anchor, _) => {
                take_budget(&mut budget, pos)?;
                if stack.len() >= MAX_DEPTH {
                    return Err(too_deep(pos));
                }
                stack.push(Frame::Map(pos, anchor, Vec::new(), None, 0));
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq(p, anchor, items, tallest)) => Some((
                    Node {
                        pos: p,
                        kind: Kind::Seq(items),
                    },
                    anchor,
                    tallest + 1,
                )),
                _ => return Err(internal(pos)),
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map(p, anchor, entries, None, tallest)) => Some((
                    Node {
                        pos: p,
                        kind: Kind::Map(entries),
                    },
                    anchor,
                    tallest + 1,
                )),
                _ => return Err(internal(pos)),
            },
        };
        if let Some((node, anchor, height)) = finished {
            if anchor != 0 {
                anchors.insert(anchor, (node.clone(), height));
            }
            match stack.last_mut() {
                Some(Frame::Seq(_, _, items, tallest)) => {
                    *tallest = (*tallest).max(height);
                    items.push(node);
                }
                Some(Frame::Map(_, _, entries, pending, tallest)) => {
                    *tallest = (*tallest).max(height);
                    match pending.take() {
                        Some(key) => entries.push((key, node)),
                        None => *pending = Some(node),
                    }
                }
                None => doc_root = Some(node),
            }
        }
    }
    Ok(docs)
}

/// Parses a stream that must hold exactly one document (an empty stream is one null document).
pub fn parse_one(src: &str) -> Result<Node, YamlError> {
    let mut docs = parse_documents(src)?;
    match docs.len() {
        0 => Ok(Node {
            pos: Pos { line: 1, col: 1 },
            kind: Kind::Scalar {
                text: String::new(),
                plain: true,
            },
        }),
        1 => Ok(docs.remove(0)),
        _ => Err(YamlError {
            pos: docs[1].pos,
            message: "expected a single YAML document, found several (separated by ---)".into(),
        }),
    }
}

fn count_nodes(node: &Node) -> usize {
    let mut count = 0;
    let mut todo = vec![node];
    while let Some(n) = todo.pop() {
        count += 1;
        match &n.kind {
            Kind::Seq(items) => todo.extend(items.iter()),
            Kind::Map(entries) => {
                for (k, v) in entries {
                    todo.push(k);
                    todo.push(v);
                }
            }
            Kind::Scalar { .. } => {}
        }
    }
    count
}

fn take_budget(budget: &mut usize, pos: Pos) -> Result<(), YamlError> {
    if *budget == 0 {
        return Err(YamlError {
            pos,
            message: format!("document has more than {MAX_NODES} nodes"),
        });
    }
    *budget -= 1;
    Ok(())
}

fn too_deep(pos: Pos) -> YamlError {
    YamlError {
        pos,
        message: format!("nesting deeper than {MAX_DEPTH} levels"),
    }
}

fn internal(pos: Pos) -> YamlError {
    YamlError {
        pos,
        message: "malformed YAML event stream".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let doc = parse_one("a:\n  b: 1\n").unwrap();
        let Kind::Map(entries) = &doc.kind else {
            panic!("not a map")
        };
        let (_, inner) = &entries[0];
        let Kind::Map(inner) = &inner.kind else {
            panic!("not a map")
        };
        assert_eq!(inner[0].0.pos, Pos { line: 2, col: 3 });
        assert_eq!(inner[0].1.scalar(), Some(Scalar::Int(1)));
    }

    #[test]
    fn quoted_scalars_stay_strings() {
        let doc = parse_one("- '1'\n- 1\n- true\n- \"null\"\n- ~\n- 1.5\n- v1.31\n").unwrap();
        let Kind::Seq(items) = &doc.kind else {
            panic!()
        };
        let got: Vec<_> = items.iter().map(|n| n.scalar().unwrap()).collect();
        assert_eq!(
            got,
            vec![
                Scalar::Str("1"),
                Scalar::Int(1),
                Scalar::Bool(true),
                Scalar::Str("null"),
                Scalar::Null,
                Scalar::Float(1.5),
                Scalar::Str("v1.31"),
            ]
        );
    }

    #[test]
    fn alias_bomb_is_refused() {
        let mut src = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = i - 1;
            src.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let err = parse_one(&src).unwrap_err();
        assert!(err.message.contains("alias"), "{err}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        // Past our own limit, and far past the scanner's: both end in an error, not a crash.
        let src = "[".repeat(100) + &"]".repeat(100);
        let err = parse_one(&src).unwrap_err();
        assert!(err.message.contains("nesting"), "{err}");
        let src = "[".repeat(100_000) + &"]".repeat(100_000);
        assert!(parse_one(&src).is_err());
    }

    #[test]
    fn aliases_cannot_nest_past_the_limit() {
        // Each anchor wraps the previous one 20 levels deeper; the fourth passes 64 levels.
        let mut src = format!("x0: &x0 {}1{}\n", "[".repeat(20), "]".repeat(20));
        for i in 1..4 {
            src.push_str(&format!(
                "x{i}: &x{i} {}*x{}{}\n",
                "[".repeat(20),
                i - 1,
                "]".repeat(20)
            ));
        }
        let err = parse_one(&src).unwrap_err();
        assert!(err.message.contains("through aliases"), "{err}");
        assert_eq!(err.pos.line, 4);
        // Three levels of the same stay within the limit.
        let ok: String = src.lines().take(3).map(|l| format!("{l}\n")).collect();
        assert!(parse_one(&ok).is_ok());
    }

    #[test]
    fn multiple_documents() {
        let docs = parse_documents("a: 1\n---\nb: 2\n---\n").unwrap();
        assert_eq!(docs.len(), 3);
        assert!(docs[2].is_null());
        assert!(parse_one("a: 1\n---\nb: 2\n").is_err());
    }

    #[test]
    fn syntax_error_has_position() {
        let err = parse_one("a: [1, 2\nb: c\n").unwrap_err();
        assert!(err.pos.line >= 1);
    }
}
