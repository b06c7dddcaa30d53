//! Reading an environment straight from a Git commit.

use super::load::CommitFiles;
use crate::source::Snapshot;

impl CommitFiles for Snapshot {
    fn read_text(&self, path: &str) -> Result<String, String> {
        self.read_to_string(path).map_err(|e| e.to_string())
    }
    fn is_file(&self, path: &str) -> bool {
        self.exists(path) && !self.is_dir(path)
    }
    fn is_dir(&self, path: &str) -> bool {
        Snapshot::is_dir(self, path)
    }
    fn files_under(&self, dir: &str) -> Result<Vec<String>, String> {
        if !Snapshot::is_dir(self, dir) {
            return Ok(Vec::new());
        }
        self.walk_files(dir).map_err(|e| e.to_string())
    }
}
