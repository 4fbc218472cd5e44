//! `import` and `export`: JSON Lines, `{"id": ..., "data": ...}` per line.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};

use super::Failure;
use crate::crdt::Document;
use crate::storage::SqliteStorage;
use crate::{Database, ListOptions};

/// Progress on stderr: a rewritten line on a terminal, a line every few
/// seconds otherwise.
struct Progress {
    terminal: bool,
    total_bytes: Option<u64>,
    last: Instant,
}

impl Progress {
    fn report(&mut self, records: u64, bytes: u64, force: bool) {
        let interval = if self.terminal { 0.1 } else { 5.0 };
        if !force && self.last.elapsed().as_secs_f64() < interval {
            return;
        }
        self.last = Instant::now();
        let share = self
            .total_bytes
            .filter(|t| *t > 0)
            .map(|t| format!(" ({:.0}%)", bytes as f64 * 100.0 / t as f64))
            .unwrap_or_default();
        if self.terminal {
            eprint!("\rimport: {records} records read{share}   ");
        } else {
            eprintln!("import: {records} records read{share}");
        }
    }
}

struct Counts {
    read: u64,
    written: u64,
    unchanged: u64,
}

pub(super) async fn import(
    db: &Database<SqliteStorage>,
    file: &Path,
    batch: usize,
) -> Result<(), Failure> {
    let batch = batch.max(1);
    let (reader, total_bytes): (Box<dyn BufRead>, Option<u64>) = if file.as_os_str() == "-" {
        (Box::new(BufReader::new(std::io::stdin())), None)
    } else {
        let handle = std::fs::File::open(file)
            .map_err(|e| Failure::new(format!("cannot open {}: {e}", file.display())))?;
        let size = handle.metadata().ok().map(|m| m.len());
        (Box::new(BufReader::new(handle)), size)
    };
    let mut progress = Progress {
        terminal: std::io::stderr().is_terminal(),
        total_bytes,
        last: Instant::now(),
    };
    let started = Instant::now();
    let mut counts = Counts {
        read: 0,
        written: 0,
        unchanged: 0,
    };
    let mut bytes = 0u64;
    let mut pending: Vec<(String, Document)> = Vec::with_capacity(batch);
    for (index, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| Failure::new(format!("line {}: {e}", index + 1)))?;
        bytes += line.len() as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(&line)
            .map_err(|e| Failure::new(format!("line {}: not JSON: {e}", index + 1)))?;
        let (Some(id), Some(data)) = (value.get("id").and_then(Value::as_str), value.get("data"))
        else {
            return Err(Failure::new(format!(
                "line {}: expected {{\"id\": \"...\", \"data\": ...}}",
                index + 1
            )));
        };
        let document = Document::from_value(data)
            .map_err(|e| Failure::new(format!("line {}: {e}", index + 1)))?;
        counts.read += 1;
        // Idempotent: a record already holding this data is not written
        // again, so a re-run after an interruption only adds what is missing.
        if db.get_document(id).await?.as_ref() == Some(&document) {
            counts.unchanged += 1;
        } else {
            pending.push((id.to_owned(), document));
        }
        if pending.len() >= batch {
            counts.written += pending.len() as u64;
            db.put_many(std::mem::take(&mut pending)).await?;
        }
        progress.report(counts.read, bytes, false);
    }
    counts.written += pending.len() as u64;
    db.put_many(pending).await?;
    progress.report(counts.read, bytes, true);
    if progress.terminal {
        eprintln!();
    }
    eprintln!(
        "import: {} records read, {} written, {} already present, in {:.1} s",
        counts.read,
        counts.written,
        counts.unchanged,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub(super) async fn export(
    db: &Database<SqliteStorage>,
    file: Option<&Path>,
) -> Result<(), Failure> {
    let mut out: Box<dyn Write> = match file {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| Failure::new(format!("cannot create {}: {e}", path.display())))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut cursor = None;
    let mut count = 0u64;
    loop {
        let page = db
            .list(&ListOptions {
                prefix: String::new(),
                limit: Some(1000),
                cursor,
            })
            .await?;
        for (id, data) in &page.items {
            writeln!(out, "{}", json!({ "id": id, "data": data.to_value() }))?;
            count += 1;
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    out.flush()?;
    eprintln!("export: {count} records");
    Ok(())
}
