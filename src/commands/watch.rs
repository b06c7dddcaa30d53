//! `phoenix watch ENV`: the agent. Every interval it re-reads Git at the configured ref and runs
//! the same check as `phoenix diff`; serves `/metrics` and `/healthz`; posts a webhook when drift
//! persists and when it clears; with `--heal`, re-converges the drifted layers (each heal is a
//! `heal` run in the audit trail, shown by `phoenix history`).

use super::Outcome;
use crate::cli::WatchArgs;
use crate::engine::CancelToken;
use crate::error::{ExitCode, Failure};
use crate::watch::{self, Healer, WatchOptions, Webhook};
use crate::workflow::heal::{GitChecker, RebuildHealer};
use crate::workflow::Context;
use std::sync::Arc;
use std::time::Duration;

pub async fn run(ctx: &Context, args: &WatchArgs) -> Outcome {
    let mut opts = WatchOptions::new(args.env.env.clone(), args.interval, args.listen);
    opts.alert_after = args.alert_after;
    opts.webhook = webhook_url(args)?
        .map(|url| Webhook::parse(&url))
        .transpose()
        .map_err(|e| {
            // The error never repeats the URL: it may carry a token.
            Failure::from_error("the webhook URL is not usable", &e)
                .help("give an http:// or https:// URL with a host")
        })?;
    if args.heal {
        opts.healer = Some(Arc::new(RebuildHealer { ctx: ctx.clone() }) as Arc<dyn Healer>);
    }
    // A check re-reads Git and every layer; it may take longer than a short interval.
    opts.check_timeout = args.interval.max(Duration::from_secs(60));
    let checker = Arc::new(GitChecker {
        ctx: ctx.clone(),
        env: args.env.env.clone(),
    });
    eprintln!(
        "watching {} every {} (alert after {}{}); metrics on http://{}/metrics",
        args.env.env,
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
