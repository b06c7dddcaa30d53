//! `phoenix history ENV`: past runs from the audit trail, newest first.

use super::Outcome;
use crate::error::{ExitCode, Failure};
use crate::report::audit::{self, AuditRecord};
use crate::report::output::print_json;
use crate::workflow::Context;
use serde::Serialize;

/// The version of the `history --output json` document (docs/json.md).
pub const HISTORY_SCHEMA_VERSION: u32 = 1;

/// `history --output json`: the audit records, newest first, in the current record format
/// (older records migrated on read).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HistoryDoc<'a> {
    schema_version: u32,
    env: &'a str,
    runs: &'a [AuditRecord],
}

fn ms(d: Option<u64>) -> String {
    match d {
        Some(ms) => crate::report::format_duration(std::time::Duration::from_millis(ms)),
        None => "-".into(),
    }
}

pub async fn run(ctx: &Context, name: &str, limit: usize) -> Outcome {
    crate::env::load::check_name(name).map_err(Failure::new)?;
    let home = ctx.home.clone();
    let env = name.to_string();
    let listing = tokio::task::spawn_blocking(move || audit::scan_runs(&home, &env))
        .await
        .map_err(|e| Failure::new(format!("reading the audit trail stopped unexpectedly: {e}")))?
        .map_err(|e| Failure::from_error(format!("cannot read the audit trail of {name}"), &e))?;
    for p in &listing.problems {
        eprintln!("warning: skipping {p}");
    }
    let records: Vec<_> = listing.records.into_iter().take(limit).collect();
    if ctx.json() {
        print_json(&HistoryDoc {
            schema_version: HISTORY_SCHEMA_VERSION,
            env: name,
            runs: &records,
        });
        return Ok(ExitCode::Ok);
    }
    if records.is_empty() {
        crate::outln!(
            "no runs of {name} recorded under {}",
            audit::runs_dir(&ctx.home, name).display()
        );
        return Ok(ExitCode::Ok);
    }
    crate::outln!(
        "{:<20}  {:<9}  {:<12}  {:<14}  {:<12}  {:<9}  {:>8}  LAYERS",
        "STARTED",
        "COMMAND",
        "COMMIT",
        "REGION",
        "ACTOR",
        "OUTCOME",
        "DURATION"
    );
    for r in &records {
        let layers: Vec<String> = r
            .layers
            .iter()
            // Layers the run had no node in (the env has none, or none was selected) are not shown.
            .filter(|l| r.nodes.iter().any(|n| n.layer == l.layer))
            .filter_map(|l| {
                let status = l.status?;
                Some(format!(
                    "{} {} {}",
                    l.layer,
                    status.as_str(),
                    ms(l.duration_ms)
                ))
            })
            .collect();
        let started = r
            .started_at
            .get(..19)
            .unwrap_or(&r.started_at)
            .replace('T', " ");
        crate::outln!(
            "{:<20}  {:<9}  {:<12}  {:<14}  {:<12}  {:<9}  {:>8}  {}",
            started,
            r.command,
            r.commit.get(..12).unwrap_or(&r.commit),
            r.region.as_deref().unwrap_or("-"),
            r.actor,
            r.outcome.as_str(),
            ms(r.duration_ms),
            layers.join(", ")
        );
        if let Some(e) = &r.error {
            crate::outln!("{:<20}  ↳ {e}", "");
        }
        for n in &r.nodes {
            for a in &n.audit {
                crate::outln!("{:<20}  ↳ {}: {a}", "", n.id);
            }
        }
    }
    Ok(ExitCode::Ok)
}
