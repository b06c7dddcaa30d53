//! What every command needs: the state dir, the commit, the environment, and output helpers.

use crate::cli::{Global, Output};
use crate::env::{self, Diagnostic, Environment};
use crate::error::{ExitCode, Failure};
use crate::source::{self, Snapshot, SourceOptions};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Clone)]
pub struct Context {
    pub output: Output,
    pub home: PathBuf,
    pub source: SourceOptions,
    pub verbose: u8,
    /// `--cluster-endpoint` / `PHOENIX_CLUSTER_ENDPOINT`, with its `{env}` placeholder unresolved.
    pub cluster_endpoint: Option<String>,
    /// `--secrets-dir` / `PHOENIX_SECRETS_DIR`: the only place `file:` references are read from.
    pub secrets_dir: PathBuf,
}

impl Context {
    pub fn from_global(g: &Global) -> Result<Self, Failure> {
        let home = match &g.home {
            Some(h) => h.clone(),
            None => dirs::data_dir()
                .or_else(|| dirs::home_dir().map(|h| h.join(".local/share")))
                .map(|d| d.join("phoenix"))
                .ok_or_else(|| {
                    Failure::new("cannot find a state directory")
                        .help("set PHOENIX_HOME or pass --home DIR")
                })?,
        };
        Ok(Context {
            output: g.output,
            source: SourceOptions {
                repo: g.repo.clone(),
                reference: g.reference.clone(),
                allow_dirty: g.allow_dirty,
                home: home.clone(),
                trusted_keys: g.trusted_keys.clone(),
                require_signed: g.require_signed,
            },
            home,
            verbose: g.verbose,
            cluster_endpoint: g.cluster_endpoint.clone(),
            secrets_dir: match &g.secrets_dir {
                Some(d) => d.clone(),
                None => crate::render::default_secrets_dir().ok_or_else(|| {
                    Failure::new("cannot find a secrets directory")
                        .help("set PHOENIX_SECRETS_DIR or pass --secrets-dir DIR")
                })?,
            },
        })
    }

    pub fn json(&self) -> bool {
        self.output == Output::Json
    }

    /// Opens the commit; git2 blocks, so it runs off the async workers.
    pub async fn open(&self) -> Result<Arc<Snapshot>, Failure> {
        let opts = self.source.clone();
        let snapshot = tokio::task::spawn_blocking(move || source::open(&opts))
            .await
            .map_err(|e| Failure::new(format!("reading the repository stopped unexpectedly: {e}")))?
            .map_err(|e| Failure::from_error("cannot read the environment from Git", &e))?;
        Ok(Arc::new(snapshot))
    }
}

/// Loads the environment, or prints its diagnostics and fails.
pub fn load_env(ctx: &Context, snap: &Snapshot, name: &str) -> Result<Environment, Failure> {
    env::load(snap, name).map_err(|diags| {
        if ctx.json() {
            print_json(&ValidateDoc::new(name, snap, false, &diags));
        } else {
            print_diagnostics(&diags);
        }
        Failure::new(format!(
            "environment {name} at commit {} is invalid ({} problem{})",
            snap.commit().short_sha,
            diags.len(),
            if diags.len() == 1 { "" } else { "s" }
        ))
        .help(format!("run `phoenix validate {name}` for the full list"))
    })
}

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

pub type Outcome = Result<ExitCode, Failure>;
