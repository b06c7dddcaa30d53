//! Rendering: minijinja templates read from the commit, merged values, and secret references.

pub mod chart;
mod hooks;
mod secrets;
mod template;
mod values;
mod yaml_out;

pub use hooks::Stage;
pub use secrets::{
    default_secrets_dir, has_unknown, resolve_secret, Mode, SecretValues, Unavailable, REDACTED,
    UNKNOWN,
};
pub use template::{Manifest, RenderError, RenderedFile, Renderer};
pub use values::deep_merge;
pub use yaml_out::to_yaml;
