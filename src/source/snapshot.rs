//! A read-only view of one commit's tree: repo-relative `/` paths in, blob bytes out; never the working tree.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use git2::{ObjectType, Oid, Repository};
use serde::Serialize;

use super::error::SourceError;

/// Blobs larger than this are refused: environment files, templates and manifests are small, and a huge blob is
/// far more likely a mistake (a committed binary or archive) than something phoenix should load into memory.
pub const MAX_BLOB_SIZE: u64 = 8 * 1024 * 1024;

const MODE_SYMLINK: i32 = 0o120000;

/// What the commit was, where it came from and whether its signature was verified; goes into every report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommitInfo {
    /// Full commit SHA, 40 hex digits.
    pub sha: String,
    /// Abbreviated SHA, unique in the repository (at least 7 hex digits).
    pub short_sha: String,
    /// First line of the commit message.
    pub summary: String,
    pub author_name: String,
    pub author_email: String,
    /// Committer time, Unix seconds.
    pub time: i64,
    /// The ref as given with `--ref`, or `HEAD` when none was given.
    pub reference: String,
    /// What the ref resolved to.
    pub resolved: ResolvedRef,
    /// The repository as the user named it: the local path (work tree or bare repo) or the URL.
    pub repo: String,
    /// The outcome of the signing policy for this commit.
    pub signature: SignatureStatus,
}

/// What a ref resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ResolvedRef {
    /// A branch (for a URL: the remote's branch); `name` is the short name, e.g. `main` or `origin/main`.
    Branch { name: String },
    /// A tag (annotated tags are peeled to their commit).
    Tag { name: String },
    /// A commit SHA (full or abbreviated), a detached HEAD, or a revision expression such as `HEAD~1`.
    Commit,
}

/// The signature outcome recorded for the commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SignatureStatus {
    /// The commit has no signature (and no policy required one).
    Unsigned,
    /// The commit's SSH signature verified against a trusted key.
    Verified {
        /// `SHA256:...` fingerprint of the signing key.
        fingerprint: String,
        /// The principal(s) of the matching allowed_signers entry, if the trusted keys file names one.
        principal: Option<String>,
    },
    /// The commit is signed, but no signing policy applies, so the signature was not verified.
    NotChecked,
}

/// The kind of an entry in the commit tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Submodule,
}

/// A direct child of a directory in the commit tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TreeEntry {
    /// The last path component.
    pub name: String,
    /// The repo-relative path with `/` separators.
    pub path: String,
    pub kind: EntryKind,
    /// Blob size in bytes for files and symlinks; 0 for directories and submodules.
    pub size: u64,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    oid: Oid,
    kind: EntryKind,
}

/// One commit of one repository, ready to be read from. `Send + Sync`: the repository handle sits behind a mutex
/// and the tree is indexed once, so `exists`, `is_dir` and `walk_files` never touch git.
pub struct Snapshot {
    repo: Mutex<Repository>,
    info: CommitInfo,
    /// Every entry of the commit tree by repo-relative path (the root itself is not in it).
    entries: BTreeMap<String, Node>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("info", &self.info)
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl Snapshot {
    pub(super) fn new(
        repo: Repository,
        commit: Oid,
        info: CommitInfo,
    ) -> Result<Snapshot, SourceError> {
        let entries = index_tree(&repo, commit, &info)?;
        Ok(Snapshot {
            repo: Mutex::new(repo),
            info,
            entries,
        })
    }

    pub(super) fn set_signature(&mut self, status: SignatureStatus) {
        self.info.signature = status;
    }

    pub(super) fn with_repo<T>(&self, f: impl FnOnce(&Repository) -> T) -> T {
        f(&self.lock())
    }

    /// The commit this snapshot reads from.
    pub fn commit(&self) -> &CommitInfo {
        &self.info
    }

    /// The content of the file at `path` in the commit.
    pub fn read(&self, path: &str) -> Result<Vec<u8>, SourceError> {
        let norm = normalize(path)?;
        let node = self.lookup(&norm)?;
        match node.kind {
            EntryKind::File => {}
            EntryKind::Dir => return Err(self.err_is_dir(&norm)),
            EntryKind::Symlink => return Err(self.err_symlink(&norm)),
            EntryKind::Submodule => return Err(self.err_submodule(&norm)),
        }
        let repo = self.lock();
        let size = self.blob_size(&repo, &norm, node.oid)?;
        if size > MAX_BLOB_SIZE {
            return Err(SourceError::TooLarge {
                path: norm,
                commit: self.info.short_sha.clone(),
                size,
                limit: MAX_BLOB_SIZE,
            });
        }
        let blob = repo
            .find_blob(node.oid)
            .map_err(|source| self.err_git(&norm, source))?;
        Ok(blob.content().to_vec())
    }

    /// The content of the file at `path` in the commit, which must be UTF-8.
    pub fn read_to_string(&self, path: &str) -> Result<String, SourceError> {
        let bytes = self.read(path)?;
        String::from_utf8(bytes).map_err(|e| SourceError::NotUtf8 {
            path: normalize(path).unwrap_or_else(|_| path.to_string()),
            commit: self.info.short_sha.clone(),
            offset: e.utf8_error().valid_up_to(),
        })
    }

    /// Whether anything (file, directory, symlink, submodule) is at `path`; false for paths outside the commit.
    pub fn exists(&self, path: &str) -> bool {
        match normalize(path) {
            Ok(norm) => norm.is_empty() || self.entries.contains_key(&norm),
            Err(_) => false,
        }
    }

    /// Whether `path` is a directory in the commit (the root `""` is); symlinks to directories are not.
    pub fn is_dir(&self, path: &str) -> bool {
        match normalize(path) {
            Ok(norm) => {
                norm.is_empty()
                    || matches!(
                        self.entries.get(&norm),
                        Some(Node {
                            kind: EntryKind::Dir,
                            ..
                        })
                    )
            }
            Err(_) => false,
        }
    }

    /// The direct children of the directory `path` (`""` for the root), sorted by name.
    pub fn list_dir(&self, path: &str) -> Result<Vec<TreeEntry>, SourceError> {
        let norm = normalize(path)?;
        self.require_dir(&norm)?;
        let prefix = dir_prefix(&norm);
        let children: Vec<(&String, Node)> = self
            .entries
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .filter(|(p, _)| !p[prefix.len()..].contains('/'))
            .map(|(p, n)| (p, *n))
            .collect();
        let repo = self.lock();
        let mut out = Vec::with_capacity(children.len());
        for (p, node) in children {
            let size = match node.kind {
                EntryKind::File | EntryKind::Symlink => self.blob_size(&repo, p, node.oid)?,
                EntryKind::Dir | EntryKind::Submodule => 0,
            };
            out.push(TreeEntry {
                name: p[prefix.len()..].to_string(),
                path: p.clone(),
                kind: node.kind,
                size,
            });
        }
        Ok(out)
    }

    /// Every non-directory path under `dir` (`""` for the whole commit), recursively, sorted.
    ///
    /// Symlinks and submodules are included so that nothing under `dir` is silently skipped: reading one gives an
    /// error that says why phoenix does not follow it.
    pub fn walk_files(&self, dir: &str) -> Result<Vec<String>, SourceError> {
        let norm = normalize(dir)?;
        self.require_dir(&norm)?;
        let prefix = dir_prefix(&norm);
        Ok(self
            .entries
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .filter(|(_, n)| n.kind != EntryKind::Dir)
            .map(|(p, _)| p.clone())
            .collect())
    }

    fn lock(&self) -> MutexGuard<'_, Repository> {
        // A panic while holding the lock cannot leave the repository handle half-updated: every use is a read.
        self.repo
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn require_dir(&self, norm: &str) -> Result<(), SourceError> {
        if norm.is_empty() {
            return Ok(());
        }
        match self.lookup(norm)?.kind {
            EntryKind::Dir => Ok(()),
            EntryKind::File => Err(SourceError::NotADirectory {
                path: norm.to_string(),
                commit: self.info.short_sha.clone(),
            }),
            EntryKind::Symlink => Err(self.err_symlink(norm)),
            EntryKind::Submodule => Err(self.err_submodule(norm)),
        }
    }

    /// The node at a normalized, non-root path; on a miss, says which ancestor is in the way, if any.
    fn lookup(&self, norm: &str) -> Result<Node, SourceError> {
        if norm.is_empty() {
            return Err(self.err_is_dir(norm));
        }
        if let Some(node) = self.entries.get(norm) {
            return Ok(*node);
        }
        for (i, _) in norm.match_indices('/') {
            let ancestor = &norm[..i];
            match self.entries.get(ancestor).map(|n| n.kind) {
                Some(EntryKind::Symlink) => return Err(self.err_symlink(ancestor)),
                Some(EntryKind::Submodule) => return Err(self.err_submodule(ancestor)),
                Some(EntryKind::File) => {
                    return Err(SourceError::NotADirectory {
                        path: ancestor.to_string(),
                        commit: self.info.short_sha.clone(),
                    })
                }
                Some(EntryKind::Dir) => {}
                None => break,
            }
        }
        Err(SourceError::NotFound {
            path: norm.to_string(),
            commit: self.info.short_sha.clone(),
        })
    }

    fn blob_size(&self, repo: &Repository, path: &str, oid: Oid) -> Result<u64, SourceError> {
        let odb = repo.odb().map_err(|source| self.err_git(path, source))?;
        let (size, _) = odb
            .read_header(oid)
            .map_err(|source| self.err_git(path, source))?;
        Ok(size as u64)
    }

    fn err_is_dir(&self, norm: &str) -> SourceError {
        SourceError::IsADirectory {
            path: if norm.is_empty() {
                "/".to_string()
            } else {
                norm.to_string()
            },
            commit: self.info.short_sha.clone(),
        }
    }

    fn err_symlink(&self, norm: &str) -> SourceError {
        SourceError::Symlink {
            path: norm.to_string(),
            commit: self.info.short_sha.clone(),
        }
    }

    fn err_submodule(&self, norm: &str) -> SourceError {
        SourceError::Submodule {
            path: norm.to_string(),
            commit: self.info.short_sha.clone(),
        }
    }

    fn err_git(&self, path: &str, source: git2::Error) -> SourceError {
        SourceError::Git {
            what: format!("{path} of commit {}", self.info.short_sha),
            repo: self.info.repo.clone(),
            source,
        }
    }
}

fn dir_prefix(norm: &str) -> String {
    if norm.is_empty() {
        String::new()
    } else {
        format!("{norm}/")
    }
}

/// Checks that `path` stays inside the commit and returns it in canonical form: components joined by `/`, with
/// empty and `.` components dropped (`""` is the root).
pub(super) fn normalize(path: &str) -> Result<String, SourceError> {
    let outside = |reason| SourceError::PathOutsideCommit {
        path: path.to_string(),
        reason,
    };
    if path.contains('\0') {
        return Err(outside("it contains a NUL byte"));
    }
    if path.contains('\\') {
        return Err(outside("it contains a backslash; use '/' as the separator"));
    }
    if path.starts_with('/') {
        return Err(outside(
            "absolute paths are not allowed; use a path relative to the repository root",
        ));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(outside("'..' components are not allowed")),
            _ => parts.push(part),
        }
    }
    Ok(parts.join("/"))
}

fn index_tree(
    repo: &Repository,
    commit: Oid,
    info: &CommitInfo,
) -> Result<BTreeMap<String, Node>, SourceError> {
    let git_err = |source| SourceError::Git {
        what: format!("the tree of commit {}", info.short_sha),
        repo: info.repo.clone(),
        source,
    };
    let root = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(git_err)?;
    let mut entries = BTreeMap::new();
    // An explicit stack instead of recursion (a deep tree cannot overflow it) and instead of `Tree::walk` (which
    // aborts on a directory name that is not UTF-8).
    let mut pending = vec![(String::new(), root)];
    while let Some((prefix, tree)) = pending.pop() {
        for entry in tree.iter() {
            // Names that are not UTF-8 cannot be asked for by a `&str` path; they are indexed lossily so that they
            // at least show up in listings instead of vanishing.
            let path = format!("{prefix}{}", String::from_utf8_lossy(entry.name_bytes()));
            let kind = match entry.kind() {
                Some(ObjectType::Tree) => EntryKind::Dir,
                Some(ObjectType::Commit) => EntryKind::Submodule,
                _ if entry.filemode() == MODE_SYMLINK => EntryKind::Symlink,
                _ => EntryKind::File,
            };
            if kind == EntryKind::Dir {
                let subtree = repo.find_tree(entry.id()).map_err(git_err)?;
                pending.push((format!("{path}/"), subtree));
            }
            entries.insert(
                path,
                Node {
                    oid: entry.id(),
                    kind,
                },
            );
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn normalize_accepts_relative_paths() {
        assert_eq!(normalize("a/b.yaml").unwrap(), "a/b.yaml");
        assert_eq!(normalize("./a//b/").unwrap(), "a/b");
        assert_eq!(normalize("").unwrap(), "");
        assert_eq!(normalize(".").unwrap(), "");
        assert_eq!(normalize("a/..b").unwrap(), "a/..b");
    }

    #[test]
    fn normalize_rejects_escapes() {
        for bad in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/..",
            "a\\b",
            "a\0b",
            "//x",
        ] {
            assert!(normalize(bad).is_err(), "{bad:?} accepted");
        }
    }
}
