//! The watch agent: a drift check every interval, `/metrics` and `/healthz`, webhook alerts per
//! drift episode with a converged notice, and optional heal of drifted layers; and the fleet
//! agent (`watch --all`), sharded across replicas by Kubernetes Leases.

mod agent;
mod episode;
mod fleet;
pub mod lease;
mod server;
mod webhook;

pub use agent::{
    run, Agent, Checker, HealRecord, Healer, NoticeKind, WatchError, WatchEvent, WatchOptions,
};
pub use episode::{alert_text, converged_text, CheckVerdict, Episodes, Notice, ALERT_ENTRIES};
pub use fleet::{run as run_fleet, FleetOptions, FleetRound, FleetSource};
pub use webhook::{DeliveryOptions, Webhook, WebhookClient, WebhookError};
