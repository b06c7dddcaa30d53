//! Rendering: minijinja templates read from the commit, merged values, and secret references.

mod secrets;
mod template;
mod values;
mod yaml_out;

pub use secrets::{default_secrets_dir, resolve_secret, Mode, SecretValues, REDACTED};
pub use template::{Manifest, RenderError, RenderedFile, Renderer};
pub use values::deep_merge;
pub use yaml_out::to_yaml;
