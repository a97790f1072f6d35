//! `mend scan FILE`: inspect a metadata file (a run's temp file) or a dump file.
//!
//! A metadata file is read whole, checking every CRC, the id order and the footer; exit 0
//! when it checks out, 1 when it is corrupt or torn, 2 when it cannot be read. A file that
//! does not start with the metadata magic is read as a dump file (exit 2 if malformed,
//! naming file and line).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use mend_engine::metafile::{MetaError, MetaHeader, MetaReader, FORMAT_VERSION, MAGIC};
use mend_engine::{Id, IdRange};
use serde_json::{json, Value};

/// Arguments of `mend scan`.
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// A metadata file or a dump file.
    pub file: PathBuf,
    /// Print one JSON object per record (per id for a dump file), then a summary line
    /// `{"summary": {...}}`.
    #[arg(long)]
    pub json: bool,
}

/// Runs `mend scan`.
pub fn run(args: ScanArgs) -> anyhow::Result<ExitCode> {
    if is_metadata(&args.file)? {
        scan_metadata(&args.file, args.json)
    } else {
        scan_dump(&args.file, args.json)
    }
}

/// Whether the file starts with the metadata magic, or is a non-empty prefix of it (a
/// metadata file torn within its first bytes).
fn is_metadata(path: &Path) -> anyhow::Result<bool> {
    let mut start = Vec::with_capacity(MAGIC.len());
    File::open(path)
        .and_then(|f| f.take(MAGIC.len() as u64).read_to_end(&mut start))
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(!start.is_empty() && MAGIC.starts_with(&start))
}

fn scan_metadata(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut reader = match MetaReader::open(path) {
        Ok(r) => r,
        Err(e) if e.is_damage() => {
            report(&mut out, path, json, None, &Counts::default(), Some(&e))?;
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    let header = reader.header().clone();
    let mut counts = Counts::default();
    let mut failure = None;
    for item in &mut reader {
        match item {
            Ok((id, record)) => {
                counts.add(id);
                if json {
                    let v = record.version;
                    let line = json!({
                        "id": id.to_hex(),
                        "timestamp": v.timestamp,
                        "size": v.size,
                        "checksum": v.checksum_hex(),
                        "user_flags": v.user_flags,
                        "flags": v.flags,
                        "corrupt": record.corrupt,
                    });
                    writeln!(out, "{line}")?;
                }
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    match failure {
        Some(e) if !e.is_damage() => {
            // The file could not be read (an I/O error): not a verdict on its content.
            out.flush()?;
            Err(e.into())
        }
        failure => {
            report(
                &mut out,
                path,
                json,
                Some(&header),
                &counts,
                failure.as_ref(),
            )?;
            Ok(ExitCode::from(if failure.is_some() { 1 } else { 0 }))
        }
    }
}

/// Ids seen so far.
#[derive(Default)]
struct Counts {
    records: u64,
    first: Option<Id>,
    last: Option<Id>,
}

impl Counts {
    fn add(&mut self, id: Id) {
        self.records += 1;
        self.first.get_or_insert(id);
        self.last = Some(id);
    }
}

fn hex_or_null(id: Option<Id>) -> Value {
    id.map_or(Value::Null, |i| Value::String(i.to_hex()))
}

fn show(id: Option<Id>) -> String {
    id.map_or_else(|| "-".to_string(), |i| i.to_hex())
}

fn range_text(r: &IdRange) -> String {
    format!(
        "{} .. {}",
        r.start,
        r.end.map_or_else(|| "end".to_string(), |e| e.to_hex())
    )
}

/// Prints what was found in a metadata file and its verdict.
fn report(
    out: &mut impl Write,
    path: &Path,
    json: bool,
    header: Option<&MetaHeader>,
    counts: &Counts,
    failure: Option<&MetaError>,
) -> anyhow::Result<()> {
    if json {
        let summary = json!({
            "kind": "metadata",
            "path": path.display().to_string(),
            "format": FORMAT_VERSION,
            "slot": header.map(|h| h.slot),
            "group": header.map(|h| h.group),
            "node": header.map(|h| h.node.clone()),
            "range": header.map(|h| json!({
                "start": h.range.start.to_hex(),
                "end": hex_or_null(h.range.end),
            })),
            "created_ns": header.map(|h| h.created_ns),
            "records": counts.records,
            "first": hex_or_null(counts.first),
            "last": hex_or_null(counts.last),
            "status": if failure.is_some() { "error" } else { "ok" },
            "error": failure.map(|e| e.to_string()),
        });
        writeln!(out, "{}", json!({ "summary": summary }))?;
    } else {
        writeln!(out, "file     {}", path.display())?;
        writeln!(out, "kind     metadata (format {FORMAT_VERSION})")?;
        if let Some(h) = header {
            writeln!(out, "slot     {}", h.slot)?;
            writeln!(out, "group    {}", h.group)?;
            writeln!(out, "node     {}", h.node)?;
            writeln!(out, "range    {}", range_text(&h.range))?;
            writeln!(out, "created  {} ns", h.created_ns)?;
        }
        writeln!(out, "records  {}", counts.records)?;
        writeln!(out, "first    {}", show(counts.first))?;
        writeln!(out, "last     {}", show(counts.last))?;
        match failure {
            None => writeln!(out, "status   crc ok")?,
            Some(e) => writeln!(out, "status   {e}")?,
        }
    }
    out.flush()?;
    if let Some(e) = failure {
        eprintln!("mend: {e}");
    }
    Ok(())
}

fn scan_dump(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    // The error names the file and line; nothing to add.
    let ids = mend_engine::dump::read(path)?;
    let unique = ids.iter().collect::<std::collections::BTreeSet<_>>().len();
    let (first, last) = (ids.first().copied(), ids.last().copied());
    let mut out = BufWriter::new(std::io::stdout().lock());
    if json {
        for id in &ids {
            writeln!(out, "{}", json!({ "id": id.to_hex() }))?;
        }
        let summary = json!({
            "kind": "dump",
            "path": path.display().to_string(),
            "ids": ids.len(),
            "unique": unique,
            "first": hex_or_null(first),
            "last": hex_or_null(last),
            "status": "ok",
        });
        writeln!(out, "{}", json!({ "summary": summary }))?;
    } else {
        writeln!(out, "file     {}", path.display())?;
        writeln!(out, "kind     dump")?;
        writeln!(out, "ids      {} ({unique} unique)", ids.len())?;
        writeln!(out, "first    {}", show(first))?;
        writeln!(out, "last     {}", show(last))?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
