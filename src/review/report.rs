//! The review document (`plan ENV --against REF --output json`, docs/json.md) and its human form.

use super::compare::{Comparison, Counts, Impact, LayerChanges};
use crate::env::Diagnostic;
use serde::Serialize;
use serde_json::Value;
use std::fmt::Write as _;

/// The version of the review document (docs/json.md, "plan --against").
pub const REVIEW_SCHEMA_VERSION: u32 = 1;

/// What the head commit says of the environment, compared with the base.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Valid at both commits; nothing a rebuild or a drill does changes.
    Unchanged,
    Changed,
    /// Not in the base commit (or invalid there): everything is created.
    Added,
    /// Not in the head commit: nothing of it is rebuilt any more.
    Removed,
    /// Invalid at the head commit: its diagnostics instead of a plan.
    Invalid,
}

/// Environments the change adds to or removes from the repository.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Environments {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// One thing a rebuild at the head commit would do to the live system (`--live`).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveEntry {
    pub layer: crate::engine::Layer,
    pub resource: String,
    /// As in the live plan: `create`, `update`, `replace`, `delete`, `start`, `wait`, `version`.
    pub action: String,
    pub detail: Option<String>,
    /// `false`: the resource is not changed by this change, so this is drift from Git that
    /// merging (and the rebuild after it) overwrites.
    pub changed_by_this: bool,
}

/// The live comparison of `--live`: live state against the head commit.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Live {
    pub entries: Vec<LiveEntry>,
    /// Layers that could not be compared, with why.
    pub errors: Vec<String>,
    /// Declared secrets not available where this ran: what is made from them is not compared.
    pub unavailable_secrets: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Review {
    pub schema_version: u32,
    pub env: String,
    /// The commit compared against (`--against`).
    pub base: Value,
    /// The commit read (`--ref`, default HEAD).
    pub head: Value,
    pub status: Status,
    /// The head commit's problems, when it is invalid (as `phoenix validate` prints them).
    pub diagnostics: Vec<Diagnostic>,
    /// The base commit's problems, when it is invalid (it is then compared as absent).
    pub base_diagnostics: Vec<Diagnostic>,
    pub environments: Environments,
    pub layers: Vec<LayerChanges>,
    pub impact: Impact,
    pub summary: Counts,
    /// With `--live`: live state against the head commit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<Live>,
}

impl Review {
    pub fn new(env: &str, base: Value, head: Value, status: Status) -> Review {
        Review {
            schema_version: REVIEW_SCHEMA_VERSION,
            env: env.to_string(),
            base,
            head,
            status,
            diagnostics: Vec::new(),
            base_diagnostics: Vec::new(),
            environments: Environments::default(),
            layers: Vec::new(),
            impact: Impact::default(),
            summary: Counts::default(),
            live: None,
        }
    }

    pub fn with(mut self, c: Comparison) -> Review {
        self.summary = c.counts();
        self.layers = c.layers;
        self.impact = c.impact;
        self
    }

    pub fn sha(commit: &Value) -> &str {
        commit["sha"].as_str().unwrap_or("")
    }

    pub fn short(commit: &Value) -> &str {
        commit["shortSha"].as_str().unwrap_or("")
    }

    /// Whether there is anything to review: the exit code is then 2.
    pub fn has_changes(&self) -> bool {
        match self.status {
            Status::Unchanged | Status::Invalid => false,
            Status::Changed | Status::Added | Status::Removed => true,
        }
    }

    /// Live entries that are not this change's: drift that merging overwrites.
    pub fn drift(&self) -> impl Iterator<Item = &LiveEntry> {
        self.live
            .iter()
            .flat_map(|l| &l.entries)
            .filter(|e| !e.changed_by_this)
    }
}

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

/// What the base/head sides of a field say, `(none)` where absent.
pub fn side(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("(none)")
}

/// The review for a terminal or a log.
pub fn human(r: &Review) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plan for {} from {} (base, {}) to {} (head, {}): {}",
        r.env,
        Review::short(&r.base),
        r.base["reference"].as_str().unwrap_or(""),
        Review::short(&r.head),
        r.head["reference"].as_str().unwrap_or(""),
        match r.status {
            Status::Unchanged => "no changes",
            Status::Changed => "changes",
            Status::Added => "environment added",
            Status::Removed => "environment removed",
            Status::Invalid => "invalid at head",
        }
    );
    for e in &r.environments.added {
        let _ = writeln!(out, "environment added by this change: {e}");
    }
    for e in &r.environments.removed {
        let _ = writeln!(out, "environment removed by this change: {e}");
    }
    if r.status == Status::Invalid {
        let _ = writeln!(
            out,
            "\n✗ environment {} is invalid at {}: {}",
            r.env,
            Review::short(&r.head),
            plural(r.diagnostics.len(), "problem")
        );
        for d in &r.diagnostics {
            let _ = writeln!(out, "{d}");
        }
        return out;
    }
    if !r.base_diagnostics.is_empty() {
        let _ = writeln!(
            out,
            "note: {} is invalid at the base commit ({}): compared as if it did not exist",
            r.env,
            plural(r.base_diagnostics.len(), "problem")
        );
    }
    for w in &r.impact.warnings {
        let _ = writeln!(out, "\n!!! {w}");
    }
    for l in &r.layers {
        if l.changes.is_empty() {
            let _ = writeln!(out, "\n{}: no changes", l.layer);
            continue;
        }
        let _ = writeln!(out, "\n{}: {}", l.layer, counts_line(&l.counts));
        for c in &l.changes {
            let node = if c.id.ends_with(&c.resource) {
                String::new()
            } else {
                format!(" ({})", c.id)
            };
            let _ = writeln!(out, "  {} {}{node}", c.action.symbol(), c.resource);
            if let Some(why) = &c.reason {
                let _ = writeln!(out, "      {why}");
            }
            for f in &c.fields {
                let _ = writeln!(
                    out,
                    "      {}: {} → {}",
                    f.path,
                    side(&f.base),
                    side(&f.head)
                );
            }
            if let Some(d) = &c.diff {
                for line in d.lines() {
                    let _ = writeln!(out, "      {line}");
                }
            }
        }
    }
    let i = &r.impact;
    if !i.gates.is_empty() {
        let _ = writeln!(out, "\nhealth gates and waits:");
        for g in &i.gates {
            let _ = writeln!(
                out,
                "  {} {}: {} → {}",
                g.id,
                g.field.path,
                side(&g.field.base),
                side(&g.field.head)
            );
        }
    }
    if let Some(o) = &i.recovery_objective {
        let _ = writeln!(
            out,
            "\nrecovery objective: {} → {} (drills are judged against it)",
            side(&o.base),
            side(&o.head)
        );
    }
    if let Some(p) = &i.protected {
        let _ = writeln!(
            out,
            "\nprotected: {} → {} (`phoenix destroy` refuses a protected environment)",
            side(&p.base),
            side(&p.head)
        );
    }
    for s in &i.secrets {
        let _ = writeln!(
            out,
            "\nsecret reference {}: {} → {}",
            s.path,
            side(&s.base),
            side(&s.head)
        );
    }
    if let Some(live) = &r.live {
        let _ = writeln!(out, "\nlive (against the head commit):");
        for e in &live.errors {
            let _ = writeln!(out, "  ✗ not compared: {e}");
        }
        for s in &live.unavailable_secrets {
            let _ = writeln!(
                out,
                "  secret {s} is not available here: what is made from it is not compared"
            );
        }
        if live.entries.is_empty() && live.errors.is_empty() {
            let _ = writeln!(out, "  in sync: nothing besides this change");
        }
        for e in &live.entries {
            let _ = writeln!(
                out,
                "  {} {} {}{}{}",
                e.layer,
                e.action,
                e.resource,
                e.detail
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default(),
                if e.changed_by_this {
                    ""
                } else {
                    " — drift merging overwrites"
                }
            );
        }
    }
    let _ = writeln!(
        out,
        "\n{}.",
        if r.has_changes() {
            counts_line(&r.summary)
        } else {
            "No changes".to_string()
        }
    );
    out
}

pub fn counts_line(c: &Counts) -> String {
    format!(
        "{} to create, {} to update, {} to replace, {} to delete",
        c.create, c.update, c.replace, c.delete
    )
}
