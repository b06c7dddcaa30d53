//! phoenix: rebuild a whole environment from a Git commit, layer by layer.
pub mod env;
pub mod source;
pub mod render;
pub mod engine;
pub mod report;
pub mod providers;
pub mod cli;
pub mod commands;
pub mod error;
pub mod plan;
pub mod drift;
pub mod watch;
