//! JSON lines: every event as one JSON object per line (stdout in `--output json` mode).

use std::io::Write;

use super::events::EventStream;

/// Writes each event of `stream` as one line to `out`, flushing after each so a consumer sees
/// events as they happen. Returns when the stream ends, or on the first write error (e.g. a
/// closed pipe), after which the engine carries on without this reader.
pub async fn write<W: Write>(mut stream: EventStream, mut out: W) -> std::io::Result<()> {
    while let Some(record) = stream.next().await {
        // Lines are small; a blocking write to stdout or a file is shorter than a task hop.
        serde_json::to_writer(&mut out, &*record)?;
        out.write_all(b"\n")?;
        out.flush()?;
    }
    Ok(())
}
