//! Reading an environment straight from a Git commit, with the built-in templates (see
//! [`super::builtin`]) under every `templates/` path the commit does not have.

use super::builtin;
use super::load::CommitFiles;
use crate::source::Snapshot;

impl CommitFiles for Snapshot {
    fn read_text(&self, path: &str) -> Result<String, String> {
        if !self.exists(path) {
            if let Some(text) = builtin::get(path) {
                return Ok(text.to_string());
            }
        }
        self.read_to_string(path).map_err(|e| e.to_string())
    }
    fn read_bytes(&self, path: &str) -> Result<Vec<u8>, String> {
        if !self.exists(path) {
            if let Some(text) = builtin::get(path) {
                return Ok(text.as_bytes().to_vec());
            }
        }
        self.read(path).map_err(|e| e.to_string())
    }
    fn is_file(&self, path: &str) -> bool {
        (self.exists(path) && !Snapshot::is_dir(self, path))
            || (!self.exists(path) && builtin::get(path).is_some())
    }
    fn is_dir(&self, path: &str) -> bool {
        Snapshot::is_dir(self, path) || builtin::under(path).next().is_some()
    }
    fn files_under(&self, dir: &str) -> Result<Vec<String>, String> {
        let mut files = if Snapshot::is_dir(self, dir) {
            self.walk_files(dir).map_err(|e| e.to_string())?
        } else {
            Vec::new()
        };
        // A built-in file counts unless the commit has something at its path (a file overrides
        // it; so does a directory, which the walk lists).
        files.extend(
            builtin::under(dir)
                .filter(|p| !self.exists(p))
                .map(str::to_string),
        );
        files.sort();
        files.dedup();
        Ok(files)
    }
}
