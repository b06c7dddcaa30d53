//! `phoenix watch ENV`: the agent. Every interval it re-reads Git at the configured ref and runs
//! the same check as `phoenix diff`; serves `/metrics` and `/healthz`; posts a webhook when drift
//! persists and when it clears; with `--heal`, re-converges the drifted layers (each heal is a
//! `heal` run in the audit trail, shown by `phoenix history`).

use super::Outcome;
use crate::cli::WatchArgs;
use crate::engine::CancelToken;
use crate::error::{ExitCode, Failure};
use crate::watch::lease::Leases;
use crate::watch::{self, FleetOptions, Healer, WatchOptions, Webhook};
use crate::workflow::heal::{GitChecker, GitFleet, RebuildHealer};
use crate::workflow::Context;
use std::sync::Arc;
use std::time::Duration;

pub async fn run(ctx: &Context, args: &WatchArgs) -> Outcome {
    let Some(env) = args.env.clone() else {
        return run_fleet(ctx, args).await;
    };
    // clap counts the --all flag's default (false) as present, so its `requires` cannot say this.
    if !args.selector.is_empty() || args.lease_namespace.is_some() {
        return Err(Failure::new(
            "--selector and --lease-namespace apply to `phoenix watch --all` only",
        )
        .help(format!(
            "watch {env} alone, or every environment with --all"
        )));
    }
    let mut opts = WatchOptions::new(env.clone(), args.interval, args.listen);
    opts.alert_after = args.alert_after;
    opts.webhook = webhook(args)?;
    if args.heal {
        opts.healer = Some(Arc::new(RebuildHealer { ctx: ctx.clone() }) as Arc<dyn Healer>);
    }
    // A check re-reads Git and every layer; it may take longer than a short interval.
    opts.check_timeout = args.interval.max(Duration::from_secs(60));
    let checker = Arc::new(GitChecker {
        ctx: ctx.clone(),
        env: env.clone(),
    });
    eprintln!(
        "watching {} every {} (alert after {}{}); metrics on http://{}/metrics",
        env,
        crate::report::format_duration(args.interval),
        crate::report::format_duration(args.alert_after),
        if args.heal { ", healing drift" } else { "" },
        args.listen,
    );
    // With --output json, stdout carries one JSON object per line for what the agent does (see
    // docs/json.md, "watch").
    let printer = ctx.json().then(|| {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        opts.events = Some(tx);
        tokio::spawn(print_events(rx))
    });
    let result = watch::run(opts, checker, CancelToken::on_ctrl_c()).await;
    if let Some(printer) = printer {
        // The agent's options (and so the sender) are gone once it returns.
        let _ = printer.await;
    }
    result.map_err(|e| Failure::from_error("the watch agent cannot start", &e))?;
    Ok(ExitCode::Ok)
}

/// `watch --all`: every selected env of the commit, alone or sharing the envs with other
/// replicas through Leases (`--lease-namespace`).
async fn run_fleet(ctx: &Context, args: &WatchArgs) -> Outcome {
    let webhook = webhook(args)?;
    let replica = args.replica_id.clone().unwrap_or_else(default_replica_id);
    if replica.trim().is_empty() {
        return Err(Failure::new("--replica-id is empty"));
    }
    let leases = match &args.lease_namespace {
        Some(ns) => {
            let client = lease_client(args.lease_kubeconfig.as_deref(), args.lease_duration)
                .await
                .map_err(|e| {
                    e.help("give --lease-kubeconfig FILE, or run in a pod with a service account")
                })?;
            Some(Leases::new(client, ns, &replica, args.lease_duration))
        }
        None => None,
    };
    let opts = FleetOptions {
        replica: replica.clone(),
        interval: args.interval,
        // A check re-reads every layer; it may take longer than a short interval.
        check_timeout: args.interval.max(Duration::from_secs(60)),
        alert_after: args.alert_after,
        listen: args.listen,
        webhook,
        delivery: Default::default(),
        // An env may turn healing on for itself (spec.watch.heal) even without --heal.
        healer: Some(Arc::new(RebuildHealer { ctx: ctx.clone() }) as Arc<dyn Healer>),
        heal: args.heal,
        heal_timeout: Duration::from_secs(1800),
        concurrency: usize::from(args.check_concurrency),
        leases,
        log: true,
    };
    let selector: Vec<String> = args
        .selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    eprintln!(
        "replica {replica} watching {} every {} (alert after {}{}){}; metrics on http://{}/metrics",
        if selector.is_empty() {
            "every environment".to_string()
        } else {
            format!("the environments labelled {}", selector.join(","))
        },
        crate::report::format_duration(args.interval),
        crate::report::format_duration(args.alert_after),
        if args.heal { ", healing drift" } else { "" },
        match &args.lease_namespace {
            Some(ns) => format!(
                ", sharing them through Leases in namespace {ns} (duration {})",
                crate::report::format_duration(args.lease_duration)
            ),
            None => String::new(),
        },
        args.listen,
    );
    let source = Arc::new(GitFleet {
        ctx: ctx.clone(),
        selector: args.selector.clone(),
    });
    let cancel = CancelToken::on_ctrl_c();
    cancel_on_sigterm(&cancel);
    watch::run_fleet(opts, source, cancel)
        .await
        .map_err(|e| Failure::from_error("the watch agent cannot start", &e))?;
    Ok(ExitCode::Ok)
}

/// A pod is stopped with SIGTERM: the fleet agent then releases its Leases like on Ctrl-C.
fn cancel_on_sigterm(cancel: &CancelToken) {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                if term.recv().await.is_some() {
                    cancel.cancel();
                }
            });
        }
        Err(e) => eprintln!("warning: SIGTERM handling unavailable: {e}"),
    }
}

/// The host name and process id: unique per process, readable in `kubectl get lease`.
fn default_replica_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "phoenix".into());
    format!("{host}-{}", std::process::id())
}

/// A client for the management cluster: the kubeconfig given, else kube's inference (the pod's
/// service account in-cluster, else $KUBECONFIG / ~/.kube/config); timeouts set explicitly.
async fn lease_client(
    kubeconfig: Option<&std::path::Path>,
    duration: Duration,
) -> Result<kube::Client, Failure> {
    crate::providers::cluster::install_crypto_provider();
    let mut config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                Failure::from_error(
                    format!("cannot read the lease kubeconfig {}", path.display()),
                    &e,
                )
            })?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .map_err(|e| {
                    Failure::from_error(
                        format!("cannot use the lease kubeconfig {}", path.display()),
                        &e,
                    )
                })?
        }
        None => kube::Config::infer().await.map_err(|e| {
            Failure::from_error("cannot find the management cluster for the Leases", &e)
        })?,
    };
    // A Lease call slower than a third of the duration is as good as a failed one.
    let call = (duration / 3).max(Duration::from_secs(2));
    config.connect_timeout = Some(call);
    config.read_timeout = Some(call);
    config.write_timeout = Some(call);
    kube::Client::try_from(config)
        .map_err(|e| Failure::from_error("cannot make a client for the management cluster", &e))
}

/// The JSON line of one agent event; `None` for events that carry nothing for a script.
pub fn event_json(event: &watch::WatchEvent) -> Option<serde_json::Value> {
    use serde_json::json;
    use watch::{NoticeKind, WatchEvent};
    let kind = |k: &NoticeKind| match k {
        NoticeKind::Alert => "alert",
        NoticeKind::Converged => "converged",
    };
    let body = match event {
        WatchEvent::Listening { addr } => {
            json!({ "type": "listening", "address": addr.to_string() })
        }
        WatchEvent::CheckFinished { report, verdict } => json!({
            "type": "check",
            "verdict": match verdict {
                watch::CheckVerdict::Drift => "drift",
                watch::CheckVerdict::InSync => "in-sync",
                watch::CheckVerdict::Unknown => "unknown",
            },
            "report": crate::drift::json_value(report),
        }),
        WatchEvent::Notice { kind: k, text } => {
            json!({ "type": "notice", "kind": kind(k), "text": text })
        }
        WatchEvent::WebhookDelivered { kind: k, attempts } => {
            json!({ "type": "webhookDelivered", "kind": kind(k), "attempts": attempts })
        }
        WatchEvent::WebhookFailed {
            kind: k,
            attempts,
            error,
        } => {
            json!({ "type": "webhookFailed", "kind": kind(k), "attempts": attempts, "error": error })
        }
        WatchEvent::WebhookDropped { kind: k } => {
            json!({ "type": "webhookDropped", "kind": kind(k) })
        }
        WatchEvent::HealStarted { layers } => json!({ "type": "healStarted", "layers": layers }),
        WatchEvent::HealFinished { record } => json!({
            "type": "healFinished",
            "commit": record.commit,
            "layers": record.layers,
            "durationSeconds": record.duration.as_millis() as f64 / 1000.0,
            "error": record.result.as_ref().err(),
        }),
    };
    let mut line = json!({ "schemaVersion": WATCH_SCHEMA_VERSION });
    if let (Some(line), serde_json::Value::Object(body)) = (line.as_object_mut(), body) {
        line.extend(body);
    }
    Some(line)
}

/// The version of `watch --output json` lines.
pub const WATCH_SCHEMA_VERSION: u32 = 1;

async fn print_events(mut rx: tokio::sync::mpsc::UnboundedReceiver<watch::WatchEvent>) {
    while let Some(event) = rx.recv().await {
        if let Some(line) = event_json(&event) {
            crate::outln!("{line}");
        }
    }
}

/// `--webhook-file` (first line) or `--webhook` / `PHOENIX_WEBHOOK_URL`.
/// The webhook of `--webhook` or `--webhook-file`, parsed.
fn webhook(args: &WatchArgs) -> Result<Option<Webhook>, Failure> {
    webhook_url(args)?
        .map(|url| Webhook::parse(&url))
        .transpose()
        .map_err(|e| {
            // The error never repeats the URL: it may carry a token.
            Failure::from_error("the webhook URL is not usable", &e)
                .help("give an http:// or https:// URL with a host")
        })
}

fn webhook_url(args: &WatchArgs) -> Result<Option<String>, Failure> {
    if let Some(path) = &args.webhook_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Failure::new(format!(
                "cannot read the webhook URL from {}",
                path.display()
            ))
            .cause(e.to_string())
        })?;
        let url = text.lines().next().unwrap_or("").trim().to_string();
        if url.is_empty() {
            return Err(Failure::new(format!(
                "{} is empty; it must hold the webhook URL on its first line",
                path.display()
            )));
        }
        return Ok(Some(url));
    }
    Ok(args.webhook.clone())
}
