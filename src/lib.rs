//! phoenix: rebuild a whole environment from a Git commit, layer by layer.
pub mod cli;
pub mod commands;
pub mod drift;
pub mod engine;
pub mod env;
pub mod error;
pub mod http;
pub mod providers;
pub mod render;
pub mod report;
pub mod review;
pub mod source;
pub mod stdout;
pub mod watch;
pub mod workflow;
