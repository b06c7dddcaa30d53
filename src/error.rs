//! The one top-level error: it knows its exit code and prints its cause chain.

use std::fmt;

/// Process exit codes. Part of the contract: scripts and CI depend on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    Ok = 0,
    /// Invalid input, a failed run, or a check that could not be made.
    Error = 1,
    /// Drift found, or changes pending (`plan --detailed-exitcode`).
    Changes = 2,
    /// A drill converged but took longer than the environment's recovery objective.
    OverObjective = 3,
}

impl ExitCode {
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// What a command ends with when it does not succeed.
#[derive(Debug)]
pub struct Failure {
    pub exit: ExitCode,
    pub message: String,
    pub causes: Vec<String>,
    pub help: Option<String>,
    /// Already printed (e.g. diagnostics, a report): only the exit code remains to be given.
    pub reported: bool,
}

impl Failure {
    pub fn new(message: impl Into<String>) -> Self {
        Failure {
            exit: ExitCode::Error,
            message: message.into(),
            causes: Vec::new(),
            help: None,
            reported: false,
        }
    }

    /// Builds a failure from an error and its `source()` chain.
    pub fn from_error(context: impl Into<String>, err: &(dyn std::error::Error + 'static)) -> Self {
        let mut f = Failure::new(context);
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = cur {
            f.causes.push(e.to_string());
            cur = e.source();
        }
        f
    }

    /// The exit code alone: the command has already told the user what happened.
    pub fn silent(exit: ExitCode) -> Self {
        Failure {
            exit,
            message: String::new(),
            causes: Vec::new(),
            help: None,
            reported: true,
        }
    }

    pub fn cause(mut self, cause: impl Into<String>) -> Self {
        self.causes.push(cause.into());
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Message and causes on one line, for reports that hold errors as text.
    pub fn summary(&self) -> String {
        let mut out = self.message.clone();
        for c in self.causes.iter().filter(|c| **c != self.message) {
            out.push_str(": ");
            out.push_str(c);
        }
        out
    }

    pub fn exit(mut self, exit: ExitCode) -> Self {
        self.exit = exit;
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.message)?;
        // Skip causes that only repeat the message.
        for c in self.causes.iter().filter(|c| **c != self.message) {
            write!(f, "\n  caused by: {c}")?;
        }
        if let Some(h) = &self.help {
            write!(f, "\n  help: {h}")?;
        }
        Ok(())
    }
}

/// The version of the error document printed on stdout with `--output json` (docs/json.md).
pub const ERROR_SCHEMA_VERSION: u32 = 1;

/// A failure for scripts: the last document (or line) on stdout with `--output json`.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorDoc<'a> {
    schema_version: u32,
    /// `error`, so a reader of a JSON lines stream tells it from the events by `type` alone.
    #[serde(rename = "type")]
    kind: &'static str,
    error: &'a str,
    causes: &'a [String],
    help: Option<&'a str>,
    exit_code: u8,
}

impl Failure {
    /// The error document, on one line.
    pub fn to_json(&self) -> String {
        let doc = ErrorDoc {
            schema_version: ERROR_SCHEMA_VERSION,
            kind: "error",
            error: &self.message,
            causes: &self.causes,
            help: self.help.as_deref(),
            exit_code: self.exit.code(),
        };
        // Strings and numbers only: encoding cannot fail; the fallback keeps this total.
        serde_json::to_string(&doc).unwrap_or_else(|_| "{}".into())
    }
}

/// An error and its causes on one line, joined with ": "; a cause whose text is already in the line
/// (many errors repeat their source in their own message) is not repeated.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

pub type Result<T, E = Failure> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_cause_chain_and_help() {
        let f = Failure::new("cannot read environment demo")
            .cause("environments/demo/environment.yaml does not exist in commit abc1234")
            .help("environments in this commit: prod");
        assert_eq!(
            f.to_string(),
            "error: cannot read environment demo\n  caused by: environments/demo/environment.yaml does not exist in commit abc1234\n  help: environments in this commit: prod"
        );
    }
}
