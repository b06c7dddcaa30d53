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
