//! The environment definition: YAML with positions, typed model, loading and validation.

pub mod builtin;
pub mod cidr;
mod commit;
pub mod decode;
pub mod diag;
pub mod dns;
pub mod failover;
pub mod load;
pub mod model;
pub mod spans;
pub mod validate;
pub mod volumes;
pub mod watch;
pub mod yaml;

pub use diag::Diagnostic;
pub use load::{load, CommitFiles, MemFiles};
pub use model::Environment;
