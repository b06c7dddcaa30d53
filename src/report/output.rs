//! What commands print besides reports: the commit line, JSON documents and diagnostics.

use crate::env::Diagnostic;
use crate::source::{self, Snapshot};

/// The version of the small `{ files: [...] }` documents of `init` and `man --dir` (docs/json.md).
pub const FILES_SCHEMA_VERSION: u32 = 1;

/// `init --output json` and `man --dir DIR --output json`: the files written.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FilesDoc<'a> {
    schema_version: u32,
    /// The environment written (`init`); absent for `man`.
    #[serde(skip_serializing_if = "Option::is_none")]
    env: Option<&'a str>,
    files: Vec<String>,
}

impl<'a> FilesDoc<'a> {
    pub fn new(env: Option<&'a str>, files: Vec<String>) -> Self {
        FilesDoc {
            schema_version: FILES_SCHEMA_VERSION,
            env,
            files,
        }
    }
}

/// The version of the `validate --output json` document (docs/json.md), also printed by every
/// command that stops on an invalid environment.
pub const VALIDATE_SCHEMA_VERSION: u32 = 1;

/// `validate --output json`: whether the environment is valid at the commit, and every problem.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidateDoc<'a> {
    schema_version: u32,
    env: &'a str,
    commit: serde_json::Value,
    valid: bool,
    diagnostics: &'a [Diagnostic],
}

impl<'a> ValidateDoc<'a> {
    pub fn new(env: &'a str, snap: &Snapshot, valid: bool, diagnostics: &'a [Diagnostic]) -> Self {
        ValidateDoc {
            schema_version: VALIDATE_SCHEMA_VERSION,
            env,
            commit: commit_json_camel(snap),
            valid,
            diagnostics,
        }
    }
}

pub fn print_diagnostics(diags: &[Diagnostic]) {
    for d in diags {
        eprintln!("{d}");
    }
}

/// Prints a JSON document, pretty, on stdout. Typed documents keep their fields in declaration
/// order (serde_json's own maps sort their keys in this build).
pub fn print_json<T: serde::Serialize + ?Sized>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => crate::outln!("{s}"),
        Err(e) => eprintln!("error: cannot encode output as JSON: {e}"),
    }
}

/// The commit line every human report starts with.
pub fn commit_line(snap: &Snapshot) -> String {
    let c = snap.commit();
    let resolved = match &c.resolved {
        source::ResolvedRef::Branch { name } => format!("branch {name}"),
        source::ResolvedRef::Tag { name } => format!("tag {name}"),
        source::ResolvedRef::Commit => "commit".to_string(),
    };
    format!(
        "commit {} ({resolved}, {}): {}",
        c.sha, c.reference, c.summary
    )
}

/// The commit object of the documents of docs/json.md, in their camelCase (`shortSha`,
/// `authorEmail`).
pub fn commit_json_camel(snap: &Snapshot) -> serde_json::Value {
    camel_keys(serde_json::to_value(snap.commit()).unwrap_or_default())
}

fn camel_keys(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let mut out = String::with_capacity(k.len());
                    let mut upper = false;
                    for c in k.chars() {
                        if c == '_' {
                            upper = true;
                        } else if upper {
                            out.extend(c.to_uppercase());
                            upper = false;
                        } else {
                            out.push(c);
                        }
                    }
                    (out, camel_keys(v))
                })
                .collect(),
        ),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(camel_keys).collect())
        }
        other => other,
    }
}
