//! The Git source: open a repository (local path or cached clone of a URL), resolve a ref to a commit, read files
//! from that commit's tree (never the working tree), and apply the signed-commit policy. See docs/source.md.

mod cache;
mod error;
mod repo;
mod signature;
mod snapshot;

pub use cache::cache_dir;
pub use error::SourceError;
pub use repo::{open, SourceOptions};
pub use signature::IN_REPO_TRUSTED_KEYS;
pub use snapshot::{
    CommitInfo, EntryKind, ResolvedRef, SignatureStatus, Snapshot, TreeEntry, MAX_BLOB_SIZE,
};
