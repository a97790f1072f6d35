//! `mend load`: bulk-load synthetic objects or a directory tree, batched and pipelined.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use mend_engine::client::{version_of_file, BatchWriter, Client, ValueSource};
use mend_engine::store::PutOutcome;
use mend_engine::wire::{BatchItem, SMALL_VALUE};
use mend_engine::{now_ns, Id, Version};

use crate::common::{check_groups, progress, runtime, ClusterArgs};

/// Arguments of `mend load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Groups to load into.
    #[arg(short = 'g', long = "groups", value_delimiter = ',', required = true)]
    pub groups: Vec<u32>,
    /// Load this many synthetic objects (keys PREFIX0, PREFIX1, …; values derived from
    /// the key, so every run writes the same bytes).
    #[arg(long, required_unless_present = "dir", conflicts_with = "dir")]
    pub count: Option<u64>,
    /// Size of each synthetic value in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: u64,
    /// Key prefix of synthetic objects.
    #[arg(long, default_value = "obj-")]
    pub prefix: String,
    /// First index of synthetic keys.
    #[arg(long, default_value_t = 0)]
    pub start: u64,
    /// Load every file under this directory (key = its path relative to DIR, with '/').
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Timestamp of every version written (ns since the epoch); default: now.
    #[arg(long)]
    pub timestamp: Option<u64>,
    /// Objects per request (a request also ends at 4 MiB of values). Large requests are
    /// what make loading fast: a node commits what it has received in one transaction, and
    /// the pages of its version index that a transaction rewrites are shared by more
    /// objects the more it holds (1 KiB objects: 512 per request loaded ~29k objects/s,
    /// 4096 ~39k, both with 8 in flight).
    #[arg(short = 'b', long = "batch", default_value_t = 4096)]
    pub batch: usize,
    /// Requests in flight per node. More requests waiting at a node make its commits
    /// larger, and so loading faster, at the cost of memory here (each request up to 4 MiB
    /// of values, held until the node answers) and at the node: with 1 KiB objects into
    /// three nodes, 8 loaded ~64k objects/s with a peak RSS of ~220 MiB, 32 ~100k objects/s
    /// with ~780 MiB. Lower it on a small machine.
    #[arg(short = 'n', long = "in-flight", default_value_t = 32)]
    pub in_flight: usize,
}

/// The synthetic value of `key`: `size` bytes of BLAKE3 XOF output.
pub fn synthetic_value(key: &[u8], size: u64) -> Vec<u8> {
    let mut value = vec![0u8; size as usize];
    blake3::Hasher::new_derive_key("mend load synthetic value")
        .update(key)
        .finalize_xof()
        .fill(&mut value);
    value
}

/// Runs `mend load`.
pub fn run(args: LoadArgs) -> anyhow::Result<ExitCode> {
    check_groups(&args.groups)?;
    if args.size > SMALL_VALUE && args.count.is_some() {
        bail!(
            "--size {} is over {SMALL_VALUE} bytes: load large values with `mend put`",
            args.size
        );
    }
    let files = match &args.dir {
        Some(dir) => Some(walk(dir)?),
        None => None,
    };
    runtime()?.block_on(async {
        let client = args.cluster.connect().await?;
        client.route().check_groups(&args.groups)?;
        let total = files.as_ref().map_or(args.count.unwrap_or(0), |f| f.len() as u64) * args.groups.len() as u64;
        let bar = progress(total, "load");
        let bar2 = bar.clone();
        // A node that cannot be reached has its items handed off to the next node of its group.
        let mut writer = BatchWriter::new(&client, args.batch, args.in_flight, Box::new(move |n| bar2.inc(n))).with_handoff();
        let started = Instant::now();
        let mut big = Vec::new();
        match &files {
            None => {
                let timestamp = args.timestamp.unwrap_or_else(now_ns);
                for i in args.start..args.start + args.count.unwrap_or(0) {
                    let key = format!("{}{i}", args.prefix);
                    let value = synthetic_value(key.as_bytes(), args.size);
                    queue(&client, &mut writer, &args.groups, key.as_bytes(), value, timestamp, 0).await?;
                }
            }
            Some(files) => {
                let dir = args.dir.as_ref().expect("files come from --dir");
                for rel in files {
                    let path = dir.join(rel);
                    let meta = std::fs::metadata(&path).with_context(|| format!("{}", path.display()))?;
                    let timestamp = args.timestamp.unwrap_or_else(now_ns);
                    if meta.len() > SMALL_VALUE {
                        big.push((rel.clone(), path, timestamp));
                        continue;
                    }
                    let value = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
                    queue(&client, &mut writer, &args.groups, rel.as_bytes(), value, timestamp, 0).await?;
                }
            }
        }
        let report = writer.finish_report().await?;
        let (mut stats, mut errors, mut handoffs) = (report.stats, report.errors, report.handoffs);
        for (key, path, timestamp) in big {
            let id = Id::from_key(key.as_bytes());
            let version = version_of_file(&path, timestamp, 0)?;
            for g in &args.groups {
                let written = client.write_with_handoff(*g, &id, version, ValueSource::File(&path)).await;
                if let Ok((served, _)) = &written {
                    if let Some(note) = served.note() {
                        stats.handed_off += 1;
                        handoffs.push(format!("{key}: {note}"));
                    }
                }
                match written {
                    Ok((_, PutOutcome::Written)) => {
                        stats.written += 1;
                        stats.bytes += version.size;
                    }
                    Ok((_, PutOutcome::Stale { .. })) => stats.stale += 1,
                    Ok((_, PutOutcome::ChecksumMismatch)) => stats.mismatched += 1,
                    Err(e) => {
                        stats.failed += 1;
                        errors.push(format!("{key} in group {g}: {e}"));
                    }
                }
                bar.inc(1);
            }
        }
        bar.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        println!(
            "loaded {} objects ({} bytes) in {:.2}s: {:.0} objects/s, {:.1} MB/s; stale {}, checksum mismatches {}, failed {}",
            stats.written,
            stats.bytes,
            secs,
            stats.written as f64 / secs,
            stats.bytes as f64 / secs / 1e6,
            stats.stale,
            stats.mismatched,
            stats.failed
        );
        if stats.handed_off > 0 {
            println!(
                "handed off {} objects to other nodes of their group (owner unreachable; `mend merge` moves them to their owner once it is back):",
                stats.handed_off
            );
            for h in &handoffs {
                println!("  {h}");
            }
        }
        for e in &errors {
            eprintln!("mend: {e}");
        }
        Ok(if stats.written == total { ExitCode::SUCCESS } else { ExitCode::from(1) })
    })
}

async fn queue(
    client: &Client,
    writer: &mut BatchWriter<'_>,
    groups: &[u32],
    key: &[u8],
    mut value: Vec<u8>,
    timestamp: u64,
    user_flags: u64,
) -> anyhow::Result<()> {
    let id = Id::from_key(key);
    let version = Version::of_value(&value, timestamp, user_flags);
    for (i, g) in groups.iter().enumerate() {
        let node = client.owner(*g, &id)?.clone();
        // The last group takes the value itself; the others a copy.
        let value = if i + 1 == groups.len() {
            std::mem::take(&mut value)
        } else {
            value.clone()
        };
        writer.push(&node, BatchItem { id, version, value }).await?;
    }
    Ok(())
}

/// Every regular file under `dir`, as paths relative to it with '/' separators, sorted.
fn walk(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = dir.join(&rel);
        let entries = std::fs::read_dir(&full)
            .with_context(|| format!("cannot read directory {}", full.display()))?;
        for entry in entries {
            let entry =
                entry.with_context(|| format!("cannot read directory {}", full.display()))?;
            let kind = entry.file_type()?;
            let name = rel.join(entry.file_name());
            if kind.is_dir() {
                stack.push(name);
            } else if kind.is_file() {
                let key = name
                    .to_str()
                    .with_context(|| format!("{} is not valid UTF-8", name.display()))?
                    .replace(std::path::MAIN_SEPARATOR, "/");
                out.push(key);
            }
        }
    }
    out.sort();
    Ok(out)
}
