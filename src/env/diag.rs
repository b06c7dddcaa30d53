//! Diagnostics: one problem in a file, with its place, the field path and what would be valid.

use super::yaml::Pos;
use serde::Serialize;
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Repo-relative path of the file in the commit.
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Dotted field path, e.g. `spec.cloud.network.subnets[1].cidr`; empty for the whole file.
    pub field: String,
    pub message: String,
    /// What would be valid, when there is something useful to say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(file: &str, pos: Pos, field: &str, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_string(),
            line: pos.line,
            column: pos.col,
            field: field.to_string(),
            message: message.into(),
            help: None,
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Sorts by file and position so output is stable and reads top to bottom.
pub fn sort(diags: &mut [Diagnostic]) {
    diags.sort_by(|a, b| {
        (&a.file, a.line, a.column, &a.field, &a.message)
            .cmp(&(&b.file, b.line, b.column, &b.field, &b.message))
    });
}

/// The closest candidate to `word` by edit distance, if it is close enough to be a likely typo.
///
/// A candidate must share most of the word: at most a third of it may differ (at least one edit
/// is always allowed, never as many edits as the word is long), so `c` does not suggest `b`.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    let len = word.chars().count();
    let limit = 1.max(len / 3);
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        // Lengths alone bound the distance from below; skipping early keeps thousands of
        // names cheap.
        if c.chars().count().abs_diff(len) > limit {
            continue;
        }
        let d = edit_distance(&word, &c.to_ascii_lowercase());
        if d <= limit && d < len && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// Most names a help line lists before it says how many more there are.
pub const MAX_LISTED: usize = 20;

/// `a, b, c`, or the first [`MAX_LISTED`] names and how many more there are.
pub fn listing(names: &[&str]) -> String {
    if names.len() <= MAX_LISTED {
        return names.join(", ");
    }
    format!(
        "{} and {} more",
        names[..MAX_LISTED].join(", "),
        names.len() - MAX_LISTED
    )
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
/// neighbouring characters (the commonest typo, `form` for `from`) each cost one.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut before: Vec<usize> = Vec::new();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 0..a.len() {
        let mut cur = vec![i + 1; b.len() + 1];
        for j in 0..b.len() {
            let cost = usize::from(a[i] != b[j]);
            let mut d = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
            if i > 0 && j > 0 && a[i] == b[j - 1] && a[i - 1] == b[j] {
                d = d.min(before[j - 1] + 1);
            }
            cur[j + 1] = d;
        }
        before = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

/// In a unit test: the diagnostics of an env that must be invalid, as (line, "field: message").
#[cfg(test)]
pub(crate) fn errors_of(
    loaded: Result<super::Environment, Vec<Diagnostic>>,
) -> Vec<(usize, String)> {
    loaded
        .expect_err("the env should be invalid")
        .iter()
        .map(|d| (d.line, format!("{}: {}", d.field, d.message)))
        .collect()
}

/// In a unit test: `errs` ((line, "field: message") of each diagnostic) are exactly one per
/// `expect` entry, each at its line and containing its text.
#[cfg(test)]
pub(crate) fn expect_errors(errs: &[(usize, String)], expect: &[(usize, &str)]) {
    for (line, text) in expect {
        assert!(
            errs.iter().any(|(l, m)| l == line && m.contains(text)),
            "no error {text:?} at line {line} in {errs:#?}"
        );
    }
    assert_eq!(errs.len(), expect.len(), "{errs:#?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names() {
        assert_eq!(
            suggest("subnet", ["subnets", "cidr", "zone"]),
            Some("subnets")
        );
        assert_eq!(suggest("xyz", ["subnets", "cidr"]), None);
        // A swap of two letters is one edit, closer than two substitutions.
        assert_eq!(suggest("form", ["port", "ports", "from"]), Some("from"));
        assert_eq!(suggest("wbe", ["web"]), Some("web"));
        // Replacing the whole word is not a typo.
        assert_eq!(suggest("c", ["b"]), None);
        assert_eq!(suggest("db", ["web"]), None);
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn long_listings_are_cut() {
        assert_eq!(listing(&["a", "b"]), "a, b");
        let many: Vec<String> = (0..25).map(|i| format!("n{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let shown = listing(&refs);
        assert!(shown.ends_with("n19 and 5 more"), "{shown}");
    }
}
