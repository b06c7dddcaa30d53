//! Secret references (`env:NAME`, `file:PATH`) resolved only at run time, never shown.

use crate::env::model::{Environment, SecretSource};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

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
    pub fn resolve_available(env: &Environment, secrets_dir: &Path) -> Self {
        let mut out = BTreeMap::new();
        let mut unavailable = Vec::new();
        for s in &env.secrets {
            match resolve_secret(&s.source, secrets_dir) {
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

    /// Reads every declared secret (`file:` ones under `secrets_dir`). The error names the
    /// secret and its reference, never a value.
    pub fn resolve(env: &Environment, secrets_dir: &Path) -> Result<Self, String> {
        let mut out = BTreeMap::new();
        let mut missing = Vec::new();
        for s in &env.secrets {
            match resolve_secret(&s.source, secrets_dir) {
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
/// A `file:` reference is read only from inside `secrets_dir`: the model already refuses absolute
/// paths, `~` and `..`, and here a symlink (of the file or a directory on the way) that leads out
/// of the directory is refused too.
pub fn resolve_secret(source: &SecretSource, secrets_dir: &Path) -> Result<String, String> {
    match source {
        SecretSource::Env(name) => std::env::var(name).map_err(|e| match e {
            std::env::VarError::NotPresent => format!("environment variable {name} is not set"),
            std::env::VarError::NotUnicode(_) => {
                format!("environment variable {name} is not valid UTF-8")
            }
        }),
        SecretSource::File(path) => {
            let inside = |p: &Path| {
                p.components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
            };
            if !inside(Path::new(path)) {
                return Err(format!(
                    "{path:?} is not a relative path inside the secrets directory {}",
                    secrets_dir.display()
                ));
            }
            let root = secrets_dir.canonicalize().map_err(|e| {
                format!(
                    "the secrets directory {} cannot be used: {e} (set --secrets-dir or PHOENIX_SECRETS_DIR)",
                    secrets_dir.display()
                )
            })?;
            let joined = root.join(path);
            let real = joined
                .canonicalize()
                .map_err(|e| format!("cannot read {}: {e}", joined.display()))?;
            if !real.starts_with(&root) {
                return Err(format!(
                    "{} leads out of the secrets directory {} (a symlink to {}): refused",
                    joined.display(),
                    root.display(),
                    real.display()
                ));
            }
            let text = std::fs::read_to_string(&real)
                .map_err(|e| format!("cannot read {}: {e}", joined.display()))?;
            Ok(text.strip_suffix('\n').unwrap_or(&text).to_string())
        }
    }
}

/// The secrets directory when none is given: `<config dir>/phoenix/secrets`
/// (`~/.config/phoenix/secrets` on Linux).
pub fn default_secrets_dir() -> Option<std::path::PathBuf> {
    dirs::config_dir()
        .or_else(|| dirs::home_dir().map(|h| h.join(".config")))
        .map(|d| d.join("phoenix").join("secrets"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> SecretSource {
        SecretSource::File(path.to_string())
    }

    #[test]
    fn file_references_are_read_only_inside_the_secrets_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("secrets");
        std::fs::create_dir_all(dir.join("shop")).unwrap();
        std::fs::write(dir.join("shop/db"), "s3cret\n").unwrap();
        assert_eq!(resolve_secret(&file("shop/db"), &dir).unwrap(), "s3cret");

        // Outside the directory: an absolute path or `..` (the model refuses both already;
        // this is the run-time guard) and a symlink, of the file or of a directory, leading out.
        std::fs::write(root.path().join("aws-credentials"), "AKIA...").unwrap();
        for bad in [
            "../aws-credentials",
            "/etc/hostname",
            "shop/../../aws-credentials",
        ] {
            let err = resolve_secret(&file(bad), &dir).unwrap_err();
            assert!(err.contains("secrets directory"), "{bad}: {err}");
        }
        std::os::unix::fs::symlink(root.path().join("aws-credentials"), dir.join("link")).unwrap();
        let err = resolve_secret(&file("link"), &dir).unwrap_err();
        assert!(err.contains("leads out of the secrets directory"), "{err}");
        assert!(!err.contains("AKIA"), "{err}");
        std::os::unix::fs::symlink(root.path(), dir.join("up")).unwrap();
        let err = resolve_secret(&file("up/aws-credentials"), &dir).unwrap_err();
        assert!(err.contains("leads out of the secrets directory"), "{err}");
        // A symlink that stays inside is fine.
        std::os::unix::fs::symlink(dir.join("shop/db"), dir.join("alias")).unwrap();
        assert_eq!(resolve_secret(&file("alias"), &dir).unwrap(), "s3cret");
        // A missing directory names itself and the way to set it.
        let err = resolve_secret(&file("shop/db"), &root.path().join("nope")).unwrap_err();
        assert!(err.contains("PHOENIX_SECRETS_DIR"), "{err}");
    }

    #[test]
    fn the_model_refuses_file_references_that_could_leave_the_directory() {
        for bad in [
            "/home/ops/.aws/credentials",
            "~/.ssh/id_ed25519",
            "../x",
            "a/../../x",
            "./x",
            "a//b",
            "a\\b",
        ] {
            let err = SecretSource::parse(&format!("file:{bad}")).unwrap_err();
            assert!(err.contains("secrets directory"), "{bad}: {err}");
        }
        assert_eq!(
            SecretSource::parse("file:shop/db-password").unwrap(),
            file("shop/db-password")
        );
    }
}
