//! Tests that need no server: phoenix's library and binary on in-memory input, temp dirs and real Git
//! repositories, and the external tools that check its output (cloud-init, shellcheck, promtool, bash, zsh, fish,
//! groff; `scripts/setup` installs them and a missing one fails its test).

mod completions;
mod containerfile;
mod docs;
mod engine;
mod env_adversarial;
mod env_corpus;
mod metrics;
mod source;
mod userdata;
mod watch;
