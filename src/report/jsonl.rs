//! JSON lines: every event as one JSON object per line (stdout in `--output json` mode), each
//! carrying the stream's `schemaVersion` (docs/json.md, "Run events").

use std::io::Write;

use serde::Serialize;

use super::events::{EventRecord, EventStream, EVENTS_SCHEMA_VERSION};

/// One line: the version first, then the record's own fields.
#[derive(Serialize)]
struct Line<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    // Output only: `flatten` keeps each line one flat object and costs no error message.
    #[serde(flatten)]
    record: &'a EventRecord,
}

/// Writes each event of `stream` as one line to `out`, flushing after each so a consumer sees
/// events as they happen. Returns when the stream ends, or on the first write error (e.g. a
/// closed pipe), after which the engine carries on without this reader.
pub async fn write<W: Write>(mut stream: EventStream, mut out: W) -> std::io::Result<()> {
    while let Some(record) = stream.next().await {
        // Lines are small; a blocking write to stdout or a file is shorter than a task hop.
        let line = Line {
            schema_version: EVENTS_SCHEMA_VERSION,
            record: &record,
        };
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
        out.flush()?;
    }
    Ok(())
}
