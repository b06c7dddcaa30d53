//! The domain workflows the commands call: converging an environment, checking it for drift,
//! tearing it down, copies of it, drills and the watch agent's check and heal.
//!
//! Layering: `commands` (argument handling and printing, one module per command; no command uses
//! another) → `workflow` → the engine, the providers and the reports. Nothing here reads the
//! command line beyond the global options that make a [`Context`].

pub mod backup;
pub mod check;
pub mod context;
pub mod converge;
pub mod copies;
pub mod csi_volumes;
pub mod deployment;
pub mod dns;
pub mod drill;
pub mod failover;
pub mod heal;
pub mod teardown;
pub mod vendor;

pub use context::{load_env, Context};
pub use deployment::Deployment;
