//! The signed-commit policy: which keys are trusted, when a signature is required, and SSH signature verification
//! (git's `gpg.format=ssh`, an SSHSIG in the commit's `gpgsig` header, namespace "git").

use std::path::Path;

use git2::{ErrorCode, Oid};
use ssh_key::{HashAlg, PublicKey, SshSig};

use super::error::SourceError;
use super::snapshot::{SignatureStatus, Snapshot};

/// The in-repo list of trusted keys, read from the commit being checked.
pub const IN_REPO_TRUSTED_KEYS: &str = ".phoenix/trusted-keys";

/// The SSHSIG namespace git uses for commit and tag signatures.
const GIT_NAMESPACE: &str = "git";

/// One trusted key, from a bare public key line or an allowed_signers entry.
#[derive(Debug, Clone)]
pub(super) struct TrustedKey {
    key: PublicKey,
    principals: Option<String>,
    /// From the allowed_signers `namespaces="..."` option; `None` means every namespace.
    namespaces: Option<Vec<String>>,
}

impl TrustedKey {
    fn allows_git(&self) -> bool {
        match &self.namespaces {
            None => true,
            Some(patterns) => pattern_list_matches(patterns, GIT_NAMESPACE),
        }
    }
}

/// Where the signing policy comes from, if it applies at all.
struct Policy {
    /// `None`: the policy applies (`--require-signed`) but no keys are configured anywhere.
    keys: Option<Vec<TrustedKey>>,
    /// For messages: "FILE" or ".phoenix/trusted-keys in commit abc1234".
    keys_from: String,
}

/// Applies the signing policy to the snapshot's commit and returns the status to record, or refuses the commit.
pub(super) fn check(
    snapshot: &Snapshot,
    commit: Oid,
    trusted_keys: Option<&Path>,
    require_signed: bool,
) -> Result<SignatureStatus, SourceError> {
    let short = snapshot.commit().short_sha.clone();
    let policy = load_policy(snapshot, trusted_keys, require_signed)?;
    let extracted = snapshot.with_repo(|repo| match repo.extract_signature(&commit, None) {
        Ok((sig, data)) => Ok(Some((sig.to_vec(), data.to_vec()))),
        Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
        Err(source) => Err(SourceError::Git {
            what: format!("the signature of commit {short}"),
            repo: snapshot.commit().repo.clone(),
            source,
        }),
    })?;

    let Some(policy) = policy else {
        return Ok(match extracted {
            None => SignatureStatus::Unsigned,
            Some(_) => SignatureStatus::NotChecked,
        });
    };
    let keys = match policy.keys {
        Some(keys) if !keys.is_empty() => keys,
        Some(_) => {
            return Err(SourceError::NoTrustedKeys {
                keys_from: format!("{} lists no keys", policy.keys_from),
            })
        }
        None => {
            return Err(SourceError::NoTrustedKeys {
                keys_from: format!(
                    "no trusted keys are configured: pass --trusted-keys FILE or commit a {IN_REPO_TRUSTED_KEYS} file"
                ),
            })
        }
    };
    let Some((signature, signed_data)) = extracted else {
        return Err(SourceError::Unsigned {
            commit: short,
            keys_from: policy.keys_from,
        });
    };
    verify(&short, &signature, &signed_data, &keys, &policy.keys_from)
}

fn load_policy(
    snapshot: &Snapshot,
    trusted_keys: Option<&Path>,
    require_signed: bool,
) -> Result<Option<Policy>, SourceError> {
    if let Some(path) = trusted_keys {
        // Only the file outside the repository is trusted when it is given: the in-repo file is ignored, since anyone
        // who can push a commit could add their own key to it.
        let text =
            std::fs::read_to_string(path).map_err(|source| SourceError::TrustedKeysRead {
                path: path.to_path_buf(),
                source,
            })?;
        let from = path.display().to_string();
        let keys = parse_trusted_keys(&text, &from)?;
        return Ok(Some(Policy {
            keys: Some(keys),
            keys_from: from,
        }));
    }
    if snapshot.exists(IN_REPO_TRUSTED_KEYS) {
        let short = &snapshot.commit().short_sha;
        let text = snapshot.read_to_string(IN_REPO_TRUSTED_KEYS)?;
        let keys = parse_trusted_keys(&text, &format!("{short}:{IN_REPO_TRUSTED_KEYS}"))?;
        return Ok(Some(Policy {
            keys: Some(keys),
            keys_from: format!("{IN_REPO_TRUSTED_KEYS} in commit {short}"),
        }));
    }
    if require_signed {
        return Ok(Some(Policy {
            keys: None,
            keys_from: String::new(),
        }));
    }
    Ok(None)
}

fn verify(
    commit: &str,
    signature: &[u8],
    signed_data: &[u8],
    keys: &[TrustedKey],
    keys_from: &str,
) -> Result<SignatureStatus, SourceError> {
    let text = String::from_utf8_lossy(signature);
    let armor = text.trim_start();
    if !armor.starts_with("-----BEGIN SSH SIGNATURE-----") {
        let format = if armor.starts_with("-----BEGIN PGP SIGNATURE-----") {
            "PGP"
        } else if armor.starts_with("-----BEGIN SIGNED MESSAGE-----") {
            "X.509"
        } else {
            "unrecognized"
        };
        return Err(SourceError::UnsupportedSignature {
            commit: commit.to_string(),
            format: format.to_string(),
        });
    }
    let sig = SshSig::from_pem(armor.trim_end()).map_err(|source| SourceError::BadSignature {
        commit: commit.to_string(),
        fingerprint: "unknown".to_string(),
        source,
    })?;
    let fingerprint = sig.public_key().fingerprint(HashAlg::Sha256).to_string();
    let Some(trusted) = keys
        .iter()
        .find(|k| k.key.key_data() == sig.public_key() && k.allows_git())
    else {
        return Err(SourceError::UntrustedKey {
            commit: commit.to_string(),
            fingerprint,
            keys_from: keys_from.to_string(),
        });
    };
    trusted
        .key
        .verify(GIT_NAMESPACE, signed_data, &sig)
        .map_err(|source| SourceError::BadSignature {
            commit: commit.to_string(),
            fingerprint: fingerprint.clone(),
            source,
        })?;
    Ok(SignatureStatus::Verified {
        fingerprint,
        principal: trusted.principals.clone(),
    })
}

/// Parses a trusted keys file: one key per line, either `keytype base64 [comment]` (authorized_keys style without
/// options) or allowed_signers `principals [options] keytype base64 [comment]`. `#` comments and blank lines are
/// skipped. `file` names the file in error messages (`file:line: reason`).
pub(super) fn parse_trusted_keys(text: &str, file: &str) -> Result<Vec<TrustedKey>, SourceError> {
    let mut keys = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: String| SourceError::TrustedKeysLine {
            file: file.to_string(),
            line: index + 1,
            reason,
        };
        keys.push(parse_line(line).map_err(bad)?);
    }
    Ok(keys)
}

fn parse_line(line: &str) -> Result<TrustedKey, String> {
    let tokens = tokenize(line)?;
    let (principals, options, key_at) = if looks_like_key_type(&tokens[0]) {
        (None, None, 0)
    } else if tokens.len() > 1 && looks_like_key_type(&tokens[1]) {
        (Some(tokens[0].clone()), None, 1)
    } else if tokens.len() > 2 && looks_like_key_type(&tokens[2]) {
        (Some(tokens[0].clone()), Some(tokens[1].as_str()), 2)
    } else {
        return Err(
            "expected `keytype base64-key [comment]` or `principals [options] keytype base64-key [comment]` \
             (keytype such as ssh-ed25519)"
                .to_string(),
        );
    };
    let key_type = &tokens[key_at];
    if key_type.contains("-cert-") {
        return Err(format!(
            "{key_type}: certificates are not supported; list the plain public key"
        ));
    }
    let Some(base64) = tokens.get(key_at + 1) else {
        return Err(format!("the {key_type} key data is missing"));
    };
    let key = PublicKey::from_openssh(&format!("{key_type} {base64}"))
        .map_err(|e| format!("invalid {key_type} public key: {e}"))?;
    let namespaces = match options {
        Some(options) => parse_options(options)?,
        None => None,
    };
    Ok(TrustedKey {
        key,
        principals,
        namespaces,
    })
}

fn looks_like_key_type(token: &str) -> bool {
    token.starts_with("ssh-") || token.starts_with("ecdsa-sha2-") || token.starts_with("sk-")
}

/// Splits on whitespace outside double quotes (allowed_signers options may quote values).
fn tokenize(line: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !current.is_empty() {
                    tokens.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if quoted {
        return Err("unterminated double quote".to_string());
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    if tokens.is_empty() {
        return Err("empty line".to_string());
    }
    Ok(tokens)
}

/// The allowed_signers options; returns the `namespaces` patterns if given. Options that would restrict a key in a
/// way phoenix does not check (validity dates, certificate authorities) are refused rather than ignored, so a
/// restriction is never silently dropped.
fn parse_options(options: &str) -> Result<Option<Vec<String>>, String> {
    let mut namespaces = None;
    for option in split_outside_quotes(options, ',') {
        let (name, value) = match option.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (option.as_str(), None),
        };
        match name.to_ascii_lowercase().as_str() {
            "namespaces" => {
                let value =
                    value.ok_or("namespaces option needs a value, e.g. namespaces=\"git\"")?;
                let value = value.trim_matches('"');
                namespaces = Some(value.split(',').map(|s| s.trim().to_string()).collect());
            }
            "cert-authority" => {
                return Err(
                    "cert-authority entries are not supported; list the signers' plain public keys"
                        .into(),
                )
            }
            "valid-after" | "valid-before" => {
                let hint = "remove the key instead of letting it expire";
                return Err(format!("the {name} option is not supported; {hint}"));
            }
            _ => return Err(format!("unknown option {name:?}")),
        }
    }
    Ok(namespaces)
}

fn split_outside_quotes(s: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in s.chars() {
        if c == '"' {
            quoted = !quoted;
        }
        if c == sep && !quoted {
            parts.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    parts.push(current);
    parts
}

/// OpenSSH pattern-list semantics: comma-separated globs (`*`, `?`), a `!` prefix negates and wins.
fn pattern_list_matches(patterns: &[String], name: &str) -> bool {
    let mut matched = false;
    for pattern in patterns {
        if let Some(negated) = pattern.strip_prefix('!') {
            if glob(negated.as_bytes(), name.as_bytes()) {
                return false;
            }
        } else if glob(pattern.as_bytes(), name.as_bytes()) {
            matched = true;
        }
    }
    matched
}

fn glob(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative matcher with one backtrack point for the last `*`: linear in practice, no recursion.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti";

    #[test]
    fn parses_plain_and_allowed_signers_lines() {
        let text = format!(
            "# comment\n\n{KEY} alice@laptop\nalice@example.com {KEY}\nbob,carol namespaces=\"git,file\" {KEY} c\n"
        );
        let keys = parse_trusted_keys(&text, "f").unwrap();
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[0].principals, None);
        assert_eq!(keys[1].principals.as_deref(), Some("alice@example.com"));
        assert_eq!(keys[2].namespaces.as_ref().unwrap(), &["git", "file"]);
        assert!(keys.iter().all(TrustedKey::allows_git));
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        for (text, needle) in [
            ("\n\nnot a key\n", "f:3:"),
            ("ssh-ed25519\n", "missing"),
            (
                "ssh-ed25519 AAAAnotbase64!!\n",
                "invalid ssh-ed25519 public key",
            ),
            (&*format!("a cert-authority {KEY}\n"), "cert-authority"),
            (
                &*format!("a valid-before=\"20300101\" {KEY}\n"),
                "valid-before",
            ),
            (&*format!("a frobnicate {KEY}\n"), "unknown option"),
            (&*format!("a namespaces=\"git {KEY}\n"), "unterminated"),
        ] {
            let err = parse_trusted_keys(text, "f").unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
            assert!(err.starts_with("f:"), "{err}");
        }
    }

    #[test]
    fn namespaces_restrict_git() {
        let keys = parse_trusted_keys(&format!("a namespaces=\"file\" {KEY}\n"), "f").unwrap();
        assert!(!keys[0].allows_git());
        let keys = parse_trusted_keys(&format!("a namespaces=\"g*\" {KEY}\n"), "f").unwrap();
        assert!(keys[0].allows_git());
        let keys = parse_trusted_keys(&format!("a namespaces=\"*,!git\" {KEY}\n"), "f").unwrap();
        assert!(!keys[0].allows_git());
    }

    #[test]
    fn glob_matches() {
        assert!(glob(b"*", b"git"));
        assert!(glob(b"g?t", b"git"));
        assert!(glob(b"*i*", b"git"));
        assert!(!glob(b"gi", b"git"));
        assert!(!glob(b"*x*", b"git"));
        assert!(glob(b"", b""));
    }
}
