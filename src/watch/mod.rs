//! The watch agent: a drift check every interval, `/metrics` and `/healthz`, webhook alerts per
//! drift episode with a converged notice, and optional heal of drifted layers.

mod agent;
mod episode;
mod server;
mod webhook;

pub use agent::{
    run, Agent, Checker, HealRecord, Healer, NoticeKind, WatchError, WatchEvent, WatchOptions,
};
pub use episode::{alert_text, converged_text, CheckVerdict, Episodes, Notice, ALERT_ENTRIES};
pub use webhook::{DeliveryOptions, Webhook, WebhookClient, WebhookError};
