//! The review as a pull-request comment (`--output markdown`): a hidden marker a workflow finds
//! to update the comment in place, both commits, warnings, a table per layer, and collapsed
//! details per graph node. Deterministic: the same two commits give the same text.

use super::compare::Change;
use super::report::{counts_line, side, Review, Status};
use std::fmt::Write as _;

/// GitHub refuses comments longer than 65,536 characters; above this the diffs are left out.
const MAX_COMMENT: usize = 60_000;

/// The hidden first line of the comment for `env`: a workflow looks for it to update the
/// comment instead of adding another.
pub fn marker(env: &str) -> String {
    format!("<!-- phoenix-plan:{env} -->")
}

pub fn markdown(r: &Review) -> String {
    let full = render(r, true);
    if full.len() <= MAX_COMMENT {
        return full;
    }
    render(r, false)
}

/// Text for a table cell: no line breaks, no column separators.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn code(text: &str) -> String {
    format!("`{}`", text.replace('`', "'"))
}

fn render(r: &Review, diffs: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", marker(&r.env));
    let headline = match r.status {
        Status::Unchanged => "no changes".to_string(),
        Status::Changed => counts_line(&r.summary),
        Status::Added => format!("environment added — {}", counts_line(&r.summary)),
        Status::Removed => format!("environment removed — {}", counts_line(&r.summary)),
        Status::Invalid => "❌ invalid at the head commit".to_string(),
    };
    let _ = writeln!(out, "### phoenix plan {}: {headline}\n", code(&r.env));
    let _ = writeln!(
        out,
        "base {} ({}) → head {} ({})\n",
        code(Review::sha(&r.base)),
        cell(r.base["reference"].as_str().unwrap_or("")),
        code(Review::sha(&r.head)),
        cell(r.head["reference"].as_str().unwrap_or("")),
    );
    if !r.environments.added.is_empty() || !r.environments.removed.is_empty() {
        let list = |v: &[String]| v.iter().map(|e| code(e)).collect::<Vec<_>>().join(", ");
        if !r.environments.added.is_empty() {
            let _ = writeln!(out, "Environments added: {}  ", list(&r.environments.added));
        }
        if !r.environments.removed.is_empty() {
            let _ = writeln!(
                out,
                "Environments removed: {}  ",
                list(&r.environments.removed)
            );
        }
        out.push('\n');
    }
    if r.status == Status::Invalid {
        let _ = writeln!(
            out,
            "> [!CAUTION]\n> The definition of {} is invalid at the head commit ({} problem{}); there is no plan until it validates (`phoenix validate {}`).\n",
            code(&r.env),
            r.diagnostics.len(),
            if r.diagnostics.len() == 1 { "" } else { "s" },
            r.env
        );
        out.push_str("````\n");
        for d in &r.diagnostics {
            let _ = writeln!(out, "{d}");
        }
        out.push_str("````\n");
        return out;
    }
    if !r.base_diagnostics.is_empty() {
        let _ = writeln!(
            out,
            "> [!NOTE]\n> {} is invalid at the base commit: it is compared as if it did not exist.\n",
            code(&r.env)
        );
    }
    let i = &r.impact;
    let (loud, rest): (Vec<&String>, Vec<&String>) = i
        .warnings
        .iter()
        .partition(|w| i.server_replaced && w.starts_with("THE CLUSTER IS REBUILT"));
    if !loud.is_empty() {
        out.push_str("> [!CAUTION]\n");
        for w in loud {
            let _ = writeln!(out, "> **{}**", cell(w));
        }
        out.push('\n');
    }
    if !rest.is_empty() {
        out.push_str("> [!WARNING]\n");
        for w in rest {
            let _ = writeln!(out, "> - {}", cell(w));
        }
        out.push('\n');
    }
    if !r.layers.is_empty() {
        out.push_str("| layer | create | update | replace | delete |\n|---|---:|---:|---:|---:|\n");
        for l in &r.layers {
            let c = &l.counts;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                l.layer, c.create, c.update, c.replace, c.delete
            );
        }
        out.push('\n');
    }
    if !i.gates.is_empty()
        || i.recovery_objective.is_some()
        || i.protected.is_some()
        || !i.secrets.is_empty()
    {
        out.push_str("| setting | base | head |\n|---|---|---|\n");
        if let Some(p) = &i.protected {
            let _ = writeln!(
                out,
                "| protected (destroy refuses) | {} | {} |",
                side(&p.base),
                side(&p.head)
            );
        }
        if let Some(o) = &i.recovery_objective {
            let _ = writeln!(
                out,
                "| recovery objective (drills) | {} | {} |",
                cell(side(&o.base)),
                cell(side(&o.head))
            );
        }
        for g in &i.gates {
            let _ = writeln!(
                out,
                "| {} {} | {} | {} |",
                code(&g.id),
                cell(&g.field.path),
                cell(side(&g.field.base)),
                cell(side(&g.field.head))
            );
        }
        for s in &i.secrets {
            let _ = writeln!(
                out,
                "| secret reference {} | {} | {} |",
                cell(&s.path),
                cell(side(&s.base)),
                cell(side(&s.head))
            );
        }
        out.push('\n');
    }
    for l in &r.layers {
        // One collapsed section per graph node, in the order the changes are listed.
        let mut nodes: Vec<&str> = Vec::new();
        for c in &l.changes {
            if !nodes.contains(&c.id.as_str()) {
                nodes.push(&c.id);
            }
        }
        for node in nodes {
            let changes: Vec<&Change> = l.changes.iter().filter(|c| c.id == node).collect();
            details(&mut out, node, &changes, diffs);
        }
    }
    if let Some(live) = &r.live {
        out.push_str("#### Live state (against the head commit)\n\n");
        for e in &live.errors {
            let _ = writeln!(out, "- ❌ not compared: {}", cell(e));
        }
        for s in &live.unavailable_secrets {
            let _ = writeln!(
                out,
                "- secret {} is not available to the workflow: what is made from it is not compared",
                code(s)
            );
        }
        let drift: Vec<_> = r.drift().collect();
        if drift.is_empty() && live.errors.is_empty() {
            out.push_str("No drift: the live system matches Git besides this change.\n");
        } else if !drift.is_empty() {
            out.push_str(
                "> [!WARNING]\n> Drift that merging overwrites (the live system differs from Git where this change does not touch it):\n\n| layer | resource | action | detail |\n|---|---|---|---|\n",
            );
            for e in drift {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} |",
                    e.layer,
                    code(&e.resource),
                    e.action,
                    cell(e.detail.as_deref().unwrap_or(""))
                );
            }
        }
        out.push('\n');
    }
    if !diffs {
        out.push_str("_Diffs left out: the comment would exceed GitHub's size limit. `phoenix plan ENV --against REF` prints them._\n");
    }
    out
}

fn details(out: &mut String, node: &str, changes: &[&Change], diffs: bool) {
    let mut actions: Vec<&str> = changes.iter().map(|c| c.action.as_str()).collect();
    actions.sort();
    actions.dedup();
    let _ = writeln!(
        out,
        "<details><summary><code>{node}</code>: {}</summary>\n",
        actions
            .iter()
            .map(|a| {
                let n = changes.iter().filter(|c| c.action.as_str() == *a).count();
                format!("{n} {a}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    for c in changes {
        let _ = write!(out, "- **{}** {}", c.action.as_str(), code(&c.resource));
        if let Some(why) = &c.reason {
            let _ = write!(out, ": {}", cell(why));
        }
        out.push('\n');
        if !c.fields.is_empty() {
            out.push_str("\n  | field | base | head |\n  |---|---|---|\n");
            for f in &c.fields {
                let _ = writeln!(
                    out,
                    "  | {} | {} | {} |",
                    code(&f.path),
                    cell(side(&f.base)),
                    cell(side(&f.head))
                );
            }
        }
        if let (true, Some(d)) = (diffs, &c.diff) {
            out.push_str("\n  ````diff\n");
            for line in d.lines() {
                let _ = writeln!(out, "  {line}");
            }
            out.push_str("  ````\n");
        }
        out.push('\n');
    }
    out.push_str("</details>\n\n");
}
