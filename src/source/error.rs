//! The one error type of the Git source: every variant names what the user needs to act on (path, URL, ref, key).

use std::path::PathBuf;

/// An error opening a repository, resolving a ref, reading from a commit, or applying the signing policy.
///
/// Messages are lowercase and do not repeat their `#[source]`; a cause-chain printer shows both.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The current directory could not be determined (needed to find the repository around it).
    #[error("cannot determine the current directory to find the git repository around it")]
    CurrentDir(#[source] std::io::Error),

    /// No repository at or above the current directory, and no `--repo` was given.
    #[error("no git repository found at or above {}; run phoenix inside a repository or pass --repo PATH|URL", cwd.display())]
    NoRepository {
        cwd: PathBuf,
        #[source]
        source: git2::Error,
    },

    /// `--repo PATH` is not a git repository (a work tree root, a `.git` directory or a bare repository).
    #[error("{} is not a git repository", path.display())]
    NotARepository {
        path: PathBuf,
        #[source]
        source: git2::Error,
    },

    /// The repository has no commit to read (HEAD is unborn and no `--ref` was given).
    #[error("repository {repo} has no commits yet (HEAD points to an unborn branch)")]
    UnbornHead { repo: String },

    /// The clone cache directory could not be created or used.
    #[error("cannot use the clone cache at {}", path.display())]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The cached mirror of a URL exists but cannot be opened as a repository.
    #[error("the cached clone of {url} at {} is unusable; delete that directory to clone again", path.display())]
    CacheCorrupt {
        url: String,
        path: PathBuf,
        #[source]
        source: git2::Error,
    },

    /// The first clone of a URL into the cache failed.
    #[error("cannot clone {url}")]
    Clone {
        url: String,
        #[source]
        source: git2::Error,
    },

    /// Fetching a URL into an existing cache failed; the cached copy may be stale, so it is not used.
    #[error("cannot fetch {url} into the clone cache at {}; refusing to use the possibly stale cached copy", cache.display())]
    Fetch {
        url: String,
        cache: PathBuf,
        #[source]
        source: git2::Error,
    },

    /// The ref matches nothing in the repository.
    #[error(
        "unknown ref {reference:?} in {repo}{}",
        available_refs(branches, tags)
    )]
    UnknownRef {
        reference: String,
        repo: String,
        /// A few branch names that do exist (sorted, at most 10).
        branches: Vec<String>,
        /// A few tag names that do exist (sorted, at most 10).
        tags: Vec<String>,
    },

    /// An abbreviated SHA matches more than one object.
    #[error("ref {reference:?} is ambiguous in {repo}: it matches several objects; use more characters of the SHA")]
    AmbiguousRef { reference: String, repo: String },

    /// The ref resolves, but not to a commit (e.g. a tag of a tree or blob, or `HEAD:path`).
    #[error("ref {reference:?} in {repo} does not point to a commit")]
    NotACommit {
        reference: String,
        repo: String,
        #[source]
        source: git2::Error,
    },

    /// The working tree has changes that are not in the commit phoenix would read.
    #[error(
        "the working tree of {repo} has uncommitted changes: {}; phoenix reads commit {short_sha}, not the working tree: commit the changes or pass --allow-dirty",
        dirty_list(files, *total)
    )]
    Dirty {
        repo: String,
        short_sha: String,
        /// Up to 10 changed, staged or untracked paths.
        files: Vec<String>,
        /// How many paths are dirty in all.
        total: usize,
    },

    /// A path given to the reader could reach outside the commit, or is not a repo-relative `/` path.
    #[error("path {path:?} is outside the commit: {reason}")]
    PathOutsideCommit { path: String, reason: &'static str },

    /// Nothing at this path in the commit.
    #[error("{path} not found in commit {commit}")]
    NotFound { path: String, commit: String },

    /// A file was expected but the path is a directory.
    #[error("{path} is a directory in commit {commit}, not a file")]
    IsADirectory { path: String, commit: String },

    /// A directory was expected but the path is a file.
    #[error("{path} is not a directory in commit {commit}")]
    NotADirectory { path: String, commit: String },

    /// The path is (or goes through) a symlink stored in the commit.
    #[error("{path} is a symlink in the commit {commit}; phoenix does not follow symlinks")]
    Symlink { path: String, commit: String },

    /// The path is (or goes through) a submodule, whose content is not part of the commit.
    #[error("{path} is a submodule in commit {commit}; phoenix does not read submodules")]
    Submodule { path: String, commit: String },

    /// The blob is above the size limit for files read from a commit.
    #[error("{path} in commit {commit} is {size} bytes, above the limit of {limit} bytes for files phoenix reads")]
    TooLarge {
        path: String,
        commit: String,
        size: u64,
        limit: u64,
    },

    /// A text file is not valid UTF-8.
    #[error(
        "{path} in commit {commit} is not valid UTF-8 (first invalid byte at offset {offset})"
    )]
    NotUtf8 {
        path: String,
        commit: String,
        offset: usize,
    },

    /// A git object that the commit refers to could not be read (a damaged or incomplete repository).
    #[error("cannot read {what} from {repo}")]
    Git {
        what: String,
        repo: String,
        #[source]
        source: git2::Error,
    },

    /// The `--trusted-keys` file could not be read.
    #[error("cannot read the trusted keys file {}", path.display())]
    TrustedKeysRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A line of a trusted keys file is not a public key or an allowed_signers entry.
    #[error("{file}:{line}: {reason}")]
    TrustedKeysLine {
        file: String,
        line: usize,
        reason: String,
    },

    /// The signing policy applies but there is no key to verify against.
    #[error("the signing policy requires an SSH signature from a trusted key, but {keys_from}")]
    NoTrustedKeys { keys_from: String },

    /// The commit has no signature, and the signing policy requires one.
    #[error("commit {commit} is not signed; the signing policy requires an SSH signature from a trusted key (from {keys_from})")]
    Unsigned { commit: String, keys_from: String },

    /// The commit is signed with a key that is not in the trusted keys.
    #[error("commit {commit} is signed by key {fingerprint}, which is not a trusted key (from {keys_from})")]
    UntrustedKey {
        commit: String,
        fingerprint: String,
        keys_from: String,
    },

    /// The commit carries an SSH signature that does not verify.
    #[error("commit {commit} has an invalid SSH signature (key {fingerprint})")]
    BadSignature {
        commit: String,
        /// The fingerprint of the key named in the signature, or "unknown" if it could not be decoded.
        fingerprint: String,
        #[source]
        source: ssh_key::Error,
    },

    /// The commit is signed in a format the policy does not verify (PGP, X.509).
    #[error("commit {commit} has a {format} signature; the signing policy accepts only SSH signatures (git config gpg.format=ssh)")]
    UnsupportedSignature { commit: String, format: String },
}

fn available_refs(branches: &[String], tags: &[String]) -> String {
    let mut parts = Vec::new();
    if !branches.is_empty() {
        parts.push(format!("branches: {}", branches.join(", ")));
    }
    if !tags.is_empty() {
        parts.push(format!("tags: {}", tags.join(", ")));
    }
    if parts.is_empty() {
        "; the repository has no branches or tags".to_string()
    } else {
        format!("; available {}", parts.join("; "))
    }
}

fn dirty_list(files: &[String], total: usize) -> String {
    let mut s = files.join(", ");
    if total > files.len() {
        s.push_str(&format!(" and {} more", total - files.len()));
    }
    s
}
