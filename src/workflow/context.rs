//! What every workflow needs: the state directory, the commit and the environment read from it.

use crate::cli::{Global, Output};
use crate::env::{self, Environment};
use crate::error::Failure;
use crate::report::output::{print_diagnostics, print_json, ValidateDoc};
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
    /// `--failover`: this run deploys (plans, diffs, destroys, drills) the env in the region its
    /// `spec.failover` names. [`Context::deployed`] applies it; [`Context::region`] says which
    /// region a run of an env uses.
    pub failover: bool,
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
            failover: false,
            secrets_dir: match &g.secrets_dir {
                Some(d) => d.clone(),
                None => crate::render::default_secrets_dir().ok_or_else(|| {
                    Failure::new("cannot find a secrets directory")
                        .help("set PHOENIX_SECRETS_DIR or pass --secrets-dir DIR")
                })?,
            },
        })
    }

    /// The region this run uses for `env` as written in Git: its failover region with
    /// `--failover`, else `spec.cloud.region`; `None` without a cloud layer (or, with
    /// `--failover`, without a failover section). The env of a [`super::Deployment`] is already
    /// the deployed one: its `spec.cloud.region` is this region.
    pub fn region(&self, env: &Environment) -> Option<String> {
        if self.failover {
            env.failover.as_ref().map(|f| f.region.clone())
        } else {
            env.cloud.as_ref().map(|c| c.region.clone())
        }
    }

    /// `env` (as written in Git) as this run deploys it: moved to its failover region with
    /// `--failover`, else unchanged.
    pub fn deployed(&self, env: Environment) -> Result<Environment, Failure> {
        if !self.failover {
            return Ok(env);
        }
        crate::env::failover::in_failover_region(&env).map_err(|why| {
            Failure::new(format!("cannot fail {} over: {why}", env.name)).help(
                "declare spec.failover (region and a zone per subnet, docs/failover.md), or run without --failover",
            )
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
