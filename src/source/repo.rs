//! Opening the source: find or clone the repository, resolve the ref to a commit, refuse a dirty working tree,
//! apply the signing policy, and hand back a [`Snapshot`] of that commit.

use std::path::{Path, PathBuf};

use git2::{BranchType, Commit, ErrorCode, Repository, Status, StatusOptions};

use super::cache;
use super::error::SourceError;
use super::signature;
use super::snapshot::{CommitInfo, ResolvedRef, SignatureStatus, Snapshot};

/// How many dirty paths the error lists, and how many branches and tags an unknown-ref error suggests.
const LIST_LIMIT: usize = 10;

/// Where to read from and what to require of it; built from the global CLI flags.
#[derive(Debug, Clone, Default)]
pub struct SourceOptions {
    /// `--repo PATH|URL`; `None` is the repository around the current directory (searched upward).
    pub repo: Option<String>,
    /// `--ref`: a branch, tag, full or abbreviated SHA, or any rev-parse expression; `None` is HEAD (for a URL:
    /// the remote's default branch).
    pub reference: Option<String>,
    /// `--allow-dirty`: read the commit even if the working tree has uncommitted changes.
    pub allow_dirty: bool,
    /// The state directory (`$PHOENIX_HOME`); URLs are mirrored under `home/cache/repos/`.
    pub home: PathBuf,
    /// `--trusted-keys FILE`: require an SSH signature by one of these keys; the in-repo list is then ignored.
    pub trusted_keys: Option<PathBuf>,
    /// `--require-signed`: refuse unsigned commits even when the commit has no `.phoenix/trusted-keys`.
    pub require_signed: bool,
}

/// Opens the repository, resolves the ref and checks the commit against the dirty-tree rule and the signing
/// policy. Blocking (git2): call it from `spawn_blocking` in async code.
pub fn open(opts: &SourceOptions) -> Result<Snapshot, SourceError> {
    let (repo, display) = match &opts.repo {
        Some(url) if cache::is_url(url) => {
            (cache::mirror(url, &opts.home)?, cache::display_url(url))
        }
        Some(path) => {
            let repo = Repository::open(path).map_err(|source| SourceError::NotARepository {
                path: PathBuf::from(path),
                source,
            })?;
            (repo, path.clone())
        }
        None => {
            let cwd = std::env::current_dir().map_err(SourceError::CurrentDir)?;
            let repo = Repository::discover(&cwd).map_err(|source| SourceError::NoRepository {
                cwd: cwd.clone(),
                source,
            })?;
            let display = display_path(repo.workdir().unwrap_or_else(|| repo.path()));
            (repo, display)
        }
    };

    let reference = opts.reference.clone().unwrap_or_else(|| "HEAD".to_string());
    let (commit_id, info) = {
        let (commit, resolved) = resolve(&repo, &reference, &display)?;
        (
            commit.id(),
            commit_info(&commit, reference, resolved, &display),
        )
    };

    if !opts.allow_dirty && !repo.is_bare() {
        check_clean(&repo, &display, &info.short_sha)?;
    }

    let mut snapshot = Snapshot::new(repo, commit_id, info)?;
    let status = signature::check(
        &snapshot,
        commit_id,
        opts.trusted_keys.as_deref(),
        opts.require_signed,
    )?;
    snapshot.set_signature(status);
    Ok(snapshot)
}

fn display_path(path: &Path) -> String {
    let s = path.display().to_string();
    // A work tree path from libgit2 ends in '/'; the bare name reads better in messages.
    match s.strip_suffix('/') {
        Some(trimmed) if !trimmed.is_empty() => trimmed.to_string(),
        _ => s,
    }
}

/// Resolves `reference` with `git rev-parse` semantics and says what kind of name it was.
fn resolve<'r>(
    repo: &'r Repository,
    reference: &str,
    display: &str,
) -> Result<(Commit<'r>, ResolvedRef), SourceError> {
    let not_a_commit = |source| SourceError::NotACommit {
        reference: reference.to_string(),
        repo: display.to_string(),
        source,
    };
    if reference == "HEAD" {
        let head = match repo.head() {
            Ok(head) => head,
            Err(e) if matches!(e.code(), ErrorCode::UnbornBranch | ErrorCode::NotFound) => {
                return Err(SourceError::UnbornHead {
                    repo: display.to_string(),
                })
            }
            Err(source) => {
                return Err(SourceError::Git {
                    what: "HEAD".to_string(),
                    repo: display.to_string(),
                    source,
                })
            }
        };
        let resolved = if head.is_branch() {
            ResolvedRef::Branch {
                name: String::from_utf8_lossy(head.shorthand_bytes()).into_owned(),
            }
        } else {
            ResolvedRef::Commit
        };
        let commit = head.peel_to_commit().map_err(not_a_commit)?;
        return Ok((commit, resolved));
    }

    // A plain name is looked up as git does (refs/<name>, refs/tags/<name>, refs/heads/<name>, refs/remotes/...),
    // which tells branch from tag; anything else (SHA, `main~2`, `v1^{commit}`) goes through rev-parse.
    if let Ok(found) = repo.resolve_reference_from_short_name(reference) {
        let name = String::from_utf8_lossy(found.shorthand_bytes()).into_owned();
        let resolved = if found.is_branch() || found.is_remote() {
            ResolvedRef::Branch { name }
        } else if found.is_tag() {
            ResolvedRef::Tag { name }
        } else {
            ResolvedRef::Commit
        };
        let commit = found.peel_to_commit().map_err(not_a_commit)?;
        return Ok((commit, resolved));
    }
    match repo.revparse_single(reference) {
        Ok(object) => {
            let commit = object.peel_to_commit().map_err(not_a_commit)?;
            Ok((commit, ResolvedRef::Commit))
        }
        Err(e) if e.code() == ErrorCode::Ambiguous => Err(SourceError::AmbiguousRef {
            reference: reference.to_string(),
            repo: display.to_string(),
        }),
        Err(_) => Err(unknown_ref(repo, reference, display)),
    }
}

fn unknown_ref(repo: &Repository, reference: &str, display: &str) -> SourceError {
    let mut branches: Vec<String> = repo
        .branches(Some(BranchType::Local))
        .map(|iter| {
            iter.filter_map(Result::ok)
                .filter_map(|(b, _)| {
                    b.name_bytes()
                        .ok()
                        .map(|n| String::from_utf8_lossy(n).into_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    branches.sort();
    branches.truncate(LIST_LIMIT);
    let mut tags: Vec<String> = repo
        .tag_names(None)
        .map(|names| {
            names
                .iter_bytes()
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    tags.truncate(LIST_LIMIT);
    SourceError::UnknownRef {
        reference: reference.to_string(),
        repo: display.to_string(),
        branches,
        tags,
    }
}

fn commit_info(
    commit: &Commit<'_>,
    reference: String,
    resolved: ResolvedRef,
    display: &str,
) -> CommitInfo {
    let sha = commit.id().to_string();
    let short_sha = commit
        .as_object()
        .short_id()
        .ok()
        .and_then(|buf| buf.as_str().ok().map(str::to_string))
        .unwrap_or_else(|| sha.chars().take(7).collect());
    let author = commit.author();
    CommitInfo {
        short_sha,
        summary: commit
            .summary_bytes()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .unwrap_or_default(),
        author_name: String::from_utf8_lossy(author.name_bytes()).into_owned(),
        author_email: String::from_utf8_lossy(author.email_bytes()).into_owned(),
        time: commit.time().seconds(),
        reference,
        resolved,
        repo: display.to_string(),
        signature: SignatureStatus::NotChecked,
        sha,
    }
}

/// Refuses a working tree with modified, staged or untracked (not ignored) files.
fn check_clean(repo: &Repository, display: &str, short_sha: &str) -> Result<(), SourceError> {
    let mut options = StatusOptions::new();
    options
        .include_untracked(true)
        .recurse_untracked_dirs(true)
        .include_ignored(false)
        .exclude_submodules(false);
    let statuses = repo
        .statuses(Some(&mut options))
        .map_err(|source| SourceError::Git {
            what: "the working tree status".to_string(),
            repo: display.to_string(),
            source,
        })?;
    let dirty: Vec<String> = statuses
        .iter()
        .filter(|e| !e.status().is_empty() && !e.status().contains(Status::IGNORED))
        .map(|e| String::from_utf8_lossy(e.path_bytes()).into_owned())
        .collect();
    if dirty.is_empty() {
        return Ok(());
    }
    Err(SourceError::Dirty {
        repo: display.to_string(),
        short_sha: short_sha.to_string(),
        total: dirty.len(),
        files: dirty.into_iter().take(LIST_LIMIT).collect(),
    })
}
