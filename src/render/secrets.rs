//! Secret references (`env:NAME`, `file:PATH`) resolved only at run time, never shown.

use crate::env::model::{Environment, SecretSource};
use std::collections::BTreeMap;
use std::fmt;

/// What a redacted secret renders as in `phoenix render` and any other display.
pub const REDACTED: &str = "**redacted**";

/// What a secret that is not available where `plan` or `diff` runs renders as: `**unknown**(NAME)`.
/// A value containing it cannot be compared, and is reported as unknown rather than as drift.
pub const UNKNOWN: &str = "**unknown**";

/// Whether `text` holds a value made from a secret that was not available.
pub fn has_unknown(text: &str) -> bool {
    text.contains(UNKNOWN)
}

/// Whether templates see real secret values (to apply) or a redaction marker (to show).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Display,
    Apply,
}

/// Resolved secret values by name. Debug output never shows them.
#[derive(Clone, Default)]
pub struct SecretValues(BTreeMap<String, String>, Vec<Unavailable>);

/// A declared secret that could not be read here, and why (no value in it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unavailable {
    pub name: String,
    /// The reference and the reason, e.g. "env:TOKEN: environment variable TOKEN is not set".
    pub why: String,
}

impl fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl SecretValues {
    /// Markers only: what `render` and `plan` use, so they work without the secrets at hand.
    pub fn redacted(env: &Environment) -> Self {
        SecretValues(
            env.secrets
                .iter()
                .map(|s| (s.name.clone(), format!("{REDACTED}({})", s.name)))
                .collect(),
            Vec::new(),
        )
    }

    /// Every declared secret that can be read here; the others render as `**unknown**(NAME)` and
    /// are listed by [`SecretValues::unavailable`]. What `plan` and `diff` use: they compare what
    /// they can and mark what depends on a missing secret as unknown, never needing the value.
    pub fn resolve_available(env: &Environment) -> Self {
        let mut out = BTreeMap::new();
        let mut unavailable = Vec::new();
        for s in &env.secrets {
            match resolve_secret(&s.source) {
                Ok(v) => {
                    out.insert(s.name.clone(), v);
                }
                Err(why) => {
                    out.insert(s.name.clone(), format!("{UNKNOWN}({})", s.name));
                    unavailable.push(Unavailable {
                        name: s.name.clone(),
                        why: format!("{}: {why}", s.source),
                    });
                }
            }
        }
        SecretValues(out, unavailable)
    }

    /// The secrets [`SecretValues::resolve_available`] could not read.
    pub fn unavailable(&self) -> &[Unavailable] {
        &self.1
    }

    /// Reads every declared secret. The error names the secret and its reference, never a value.
    pub fn resolve(env: &Environment) -> Result<Self, String> {
        let mut out = BTreeMap::new();
        let mut missing = Vec::new();
        for s in &env.secrets {
            match resolve_secret(&s.source) {
                Ok(v) => {
                    out.insert(s.name.clone(), v);
                }
                Err(why) => missing.push(format!("{} ({}): {why}", s.name, s.source)),
            }
        }
        if missing.is_empty() {
            Ok(SecretValues(out, Vec::new()))
        } else {
            Err(format!("cannot read secret {}", missing.join("; secret ")))
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Every real value, for scanning output in tests and redacting messages.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        let unavailable = &self.1;
        self.0
            .iter()
            .filter(move |(name, _)| !unavailable.iter().any(|u| &u.name == *name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// Replaces any secret value found in `text` by the redaction marker.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (name, value) in &self.0 {
            if self.1.iter().any(|u| &u.name == name) {
                continue;
            }
            if value.len() >= 4 && out.contains(value.as_str()) {
                out = out.replace(value.as_str(), &format!("{REDACTED}({name})"));
            }
        }
        out
    }
}

/// Reads one secret reference. A trailing newline of a file is dropped (as `$(cat f)` would).
pub fn resolve_secret(source: &SecretSource) -> Result<String, String> {
    match source {
        SecretSource::Env(name) => std::env::var(name).map_err(|e| match e {
            std::env::VarError::NotPresent => format!("environment variable {name} is not set"),
            std::env::VarError::NotUnicode(_) => {
                format!("environment variable {name} is not valid UTF-8")
            }
        }),
        SecretSource::File(path) => {
            let expanded = match path.strip_prefix("~/") {
                Some(rest) => dirs::home_dir()
                    .ok_or_else(|| "cannot expand ~: no home directory".to_string())?
                    .join(rest),
                None => std::path::PathBuf::from(path),
            };
            let text = std::fs::read_to_string(&expanded)
                .map_err(|e| format!("cannot read {}: {e}", expanded.display()))?;
            Ok(text.strip_suffix('\n').unwrap_or(&text).to_string())
        }
    }
}
