//! What the watch agent ([`crate::watch`]) checks and heals with: the drift check of the commit at
//! the configured ref, re-read for every check, and a converge of the drifted layers (each heal is
//! a `heal` run in the audit trail, shown by `phoenix history`).

use super::check::check;
use super::context::Context;
use super::converge::{converge, ConvergeSettings};
use super::deployment::Deployment;
use crate::drift::{DriftReport, LayerDrift};
use crate::engine::{BoxFuture, Layer};
use crate::watch::{Checker, Healer};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// Re-reads the commit at the configured ref for every check.
pub struct GitChecker {
    pub ctx: Context,
    pub env: String,
}

impl Checker for GitChecker {
    fn check(&self) -> BoxFuture<'static, DriftReport> {
        let ctx = self.ctx.clone();
        let env = self.env.clone();
        Box::pin(async move {
            let started = Instant::now();
            match Deployment::open(&ctx, &env, None).await {
                Ok(deployment) => check(&ctx, &deployment).await.report,
                Err(f) => DriftReport {
                    env,
                    commit: String::new(),
                    checked_at: SystemTime::now(),
                    duration: started.elapsed(),
                    layers: Layer::ALL
                        .iter()
                        .map(|&l| LayerDrift::error(l, f.summary(), started.elapsed()))
                        .collect(),
                },
            }
        })
    }
}

/// Heals by converging the drifted layers at the commit the check compared with.
pub struct RebuildHealer {
    pub ctx: Context,
}

impl Healer for RebuildHealer {
    fn heal(
        &self,
        report: Arc<DriftReport>,
        layers: Vec<Layer>,
    ) -> BoxFuture<'static, Result<(), String>> {
        let mut ctx = self.ctx.clone();
        Box::pin(async move {
            if !report.commit.is_empty() {
                ctx.source.reference = Some(report.commit.clone());
            }
            let deployment = Deployment::open(&ctx, &report.env, None)
                .await
                .map_err(|f| f.summary())?;
            let settings = ConvergeSettings {
                layers,
                concurrency: 16,
                force_conflicts: false,
                ..ConvergeSettings::default()
            };
            let summary = converge(&ctx, &deployment, &settings, "heal")
                .await
                .map_err(|f| f.summary())?;
            if summary.converged {
                Ok(())
            } else {
                let failed: Vec<String> = summary
                    .nodes
                    .iter()
                    .filter_map(|n| match &n.state {
                        crate::engine::NodeState::Failed { error, .. } => {
                            Some(format!("{}: {error}", n.id))
                        }
                        _ => None,
                    })
                    .collect();
                Err(format!("the heal did not converge: {}", failed.join("; ")))
            }
        })
    }
}

/// The fleet agent's source: the commit at the configured ref, read (and fetched, for a URL
/// remote) once per round; the environments in it whose `metadata.labels` carry every
/// `selector` pair. An environment that does not load is watched too when no selector is given
/// (its load error is its check result, so a broken definition shows on /metrics); with a
/// selector its labels cannot be read, so it is left out and named in the log.
pub struct GitFleet {
    pub ctx: Context,
    pub selector: Vec<(String, String)>,
}

struct GitRound {
    ctx: Context,
    snap: Arc<crate::source::Snapshot>,
    envs: std::collections::BTreeMap<String, Result<crate::env::Environment, String>>,
}

impl crate::watch::FleetSource for GitFleet {
    fn open(&self) -> BoxFuture<'static, Result<Arc<dyn crate::watch::FleetRound>, String>> {
        let ctx = self.ctx.clone();
        let selector = self.selector.clone();
        Box::pin(async move {
            let snap = ctx.open().await.map_err(|f| f.summary())?;
            let mut envs = std::collections::BTreeMap::new();
            for name in crate::env::load::names(&*snap) {
                match crate::env::load(&*snap, &name) {
                    Ok(env) => {
                        if selector
                            .iter()
                            .all(|(k, v)| env.labels.get(k).is_some_and(|have| have == v))
                        {
                            envs.insert(name, Ok(env));
                        }
                    }
                    Err(diags) => {
                        let first = diags
                            .first()
                            .map(|d| d.to_string())
                            .unwrap_or_else(|| "invalid".into());
                        if selector.is_empty() {
                            envs.insert(name, Err(first));
                        } else {
                            eprintln!("watch: {name} is left out: it does not load: {first}");
                        }
                    }
                }
            }
            Ok(Arc::new(GitRound { ctx, snap, envs }) as Arc<dyn crate::watch::FleetRound>)
        })
    }
}

impl crate::watch::FleetRound for GitRound {
    fn commit(&self) -> String {
        self.snap.commit().sha.clone()
    }

    fn envs(&self) -> Vec<String> {
        self.envs.keys().cloned().collect()
    }

    fn settings(&self, env: &str) -> crate::env::watch::WatchSettings {
        match self.envs.get(env) {
            Some(Ok(e)) => e.watch.clone(),
            _ => Default::default(),
        }
    }

    fn check(&self, env: &str) -> BoxFuture<'static, DriftReport> {
        let ctx = self.ctx.clone();
        let snap = self.snap.clone();
        let name = env.to_string();
        let loaded = self.envs.get(env).cloned();
        Box::pin(async move {
            let started = Instant::now();
            let failed = |message: String| DriftReport {
                env: name.clone(),
                commit: snap.commit().sha.clone(),
                checked_at: SystemTime::now(),
                duration: started.elapsed(),
                layers: Layer::ALL
                    .iter()
                    .map(|&l| LayerDrift::error(l, &message, started.elapsed()))
                    .collect(),
            };
            match loaded {
                Some(Ok(env)) => {
                    let deployment = Deployment {
                        name: env.name.clone(),
                        snap: snap.clone(),
                        env,
                        extra_tags: Default::default(),
                        // The fleet watches each env where it runs now, its primary region.
                        primary_region: None,
                    };
                    check(&ctx, &deployment).await.report
                }
                Some(Err(message)) => failed(message),
                None => failed(format!("{name} is not in the commit")),
            }
        })
    }
}
