//! The clone cache: a bare mirror of each remote URL under `$PHOENIX_HOME/cache/repos/<hash of URL>`, cloned on
//! first use and fetched (all branches and tags, with prune) on every later use.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use git2::{AutotagOption, FetchOptions, FetchPrune, Repository};
use sha2::{Digest, Sha256};

use super::error::SourceError;

const REMOTE: &str = "origin";
const REFSPECS: [&str; 2] = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"];

/// Serializes cache updates within the process (e.g. the watch agent and a command sharing one process): two
/// concurrent fetches into one mirror would fail on git's ref locks. Another process fetching at the same moment
/// makes this one fail with a fetch error, never read a half-updated mirror silently.
static CACHE_LOCK: Mutex<()> = Mutex::new(());

/// Whether `--repo` names a URL to clone rather than a local path: `scheme://...` or scp-like `user@host:path`.
pub(super) fn is_url(repo: &str) -> bool {
    if repo.contains("://") {
        return true;
    }
    match repo.split_once(':') {
        Some((before, _)) => before.contains('@') && !before.contains('/'),
        None => false,
    }
}

/// The URL as shown in reports and errors: a password in the user-info part is replaced by `***`, since the
/// repository name goes into every report and audit record.
pub(super) fn display_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***{}", &rest[at..]),
        None => url.to_string(),
    }
}

/// Where the mirror of `url` lives.
pub fn cache_dir(home: &Path, url: &str) -> PathBuf {
    let digest = Sha256::digest(url.as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    home.join("cache").join("repos").join(hex)
}

/// Brings the mirror of `url` up to date and opens it. A failed fetch is an error even when a cached copy exists:
/// acting on stale commits without saying so would defeat "Git is the source of truth".
pub(super) fn mirror(url: &str, home: &Path) -> Result<Repository, SourceError> {
    let _guard = CACHE_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = cache_dir(home, url);
    let shown = display_url(url);
    if dir.exists() {
        let repo = Repository::open_bare(&dir).map_err(|source| SourceError::CacheCorrupt {
            url: shown.clone(),
            path: dir.clone(),
            source,
        })?;
        fetch(&repo, url).map_err(|source| SourceError::Fetch {
            url: shown.clone(),
            cache: dir.clone(),
            source,
        })?;
        return Ok(repo);
    }

    let parent = dir.parent().unwrap_or(home);
    std::fs::create_dir_all(parent).map_err(|source| SourceError::Cache {
        path: parent.to_path_buf(),
        source,
    })?;
    // Clone into a temporary directory and rename it into place, so that an interrupted clone never leaves a
    // half-filled cache that a later run would take for a good one.
    let tmp = tempdir_beside(&dir);
    let cloned = Repository::init_bare(&tmp).and_then(|repo| {
        repo.remote_with_fetch(REMOTE, url, REFSPECS[0])?;
        repo.remote_add_fetch(REMOTE, REFSPECS[1])?;
        fetch(&repo, url)?;
        Ok(repo)
    });
    if let Err(source) = cloned {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(SourceError::Clone {
            url: shown.clone(),
            source,
        });
    }
    drop(cloned);
    if let Err(source) = std::fs::rename(&tmp, &dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        // Another phoenix process may have cloned the same URL at the same time; its fresh mirror is as good.
        if !dir.exists() {
            return Err(SourceError::Cache { path: dir, source });
        }
    }
    Repository::open_bare(&dir).map_err(|source| SourceError::CacheCorrupt {
        url: shown.clone(),
        path: dir,
        source,
    })
}

fn tempdir_beside(dir: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.with_file_name(format!(".{name}.tmp-{}-{nanos}", std::process::id()))
}

fn fetch(repo: &Repository, url: &str) -> Result<(), git2::Error> {
    let mut remote = match repo.find_remote(REMOTE) {
        Ok(remote) if remote.url().ok() == Some(url) => remote,
        _ => {
            // The directory name is a hash of the URL, so this only repairs a hand-edited config.
            let _ = repo.remote_delete(REMOTE);
            repo.remote_with_fetch(REMOTE, url, REFSPECS[0])?;
            repo.remote_add_fetch(REMOTE, REFSPECS[1])?;
            repo.find_remote(REMOTE)?
        }
    };
    let mut options = FetchOptions::new();
    options.prune(FetchPrune::On);
    options.download_tags(AutotagOption::All);
    remote.fetch(&REFSPECS, Some(&mut options), Some("phoenix: fetch"))?;
    // Follow the remote's default branch, so that "no --ref" means what `git clone` would check out.
    if let Ok(default) = remote.default_branch() {
        if let Ok(name) = default.as_str() {
            if name.starts_with("refs/heads/") {
                repo.set_head(name)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_detection() {
        assert!(is_url("file:///tmp/x"));
        assert!(is_url("git://127.0.0.1:9418/r"));
        assert!(is_url("https://example.com/r.git"));
        assert!(is_url("git@example.com:org/r.git"));
        assert!(!is_url("/tmp/repo"));
        assert!(!is_url("repo"));
        assert!(!is_url("./a:b"));
        assert!(!is_url("dir/user@host:x"));
    }

    #[test]
    fn passwords_in_urls_are_not_displayed() {
        assert_eq!(display_url("git://u:secret@h/r"), "git://u:***@h/r");
        assert_eq!(display_url("git://u@h/r"), "git://u@h/r");
        assert_eq!(display_url("file:///a@b:c/r"), "file:///a@b:c/r");
        assert_eq!(display_url("git@h:r"), "git@h:r");
    }

    #[test]
    fn cache_dir_is_per_url() {
        let home = Path::new("/h");
        assert_ne!(cache_dir(home, "file:///a"), cache_dir(home, "file:///b"));
        assert!(cache_dir(home, "file:///a").starts_with("/h/cache/repos"));
    }
}
