//! `mend put | get | del | stat | id`: client operations across groups.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use mend_engine::client::{version_of_file, Client, ReadOutcome, ValueSource};
use mend_engine::store::PutOutcome;
use mend_engine::version::FLAG_MERGEABLE;
use mend_engine::{now_ns, Id, ReplicaState, Version};

use crate::common::{check_groups, parse_flags, runtime, ClusterArgs};

/// Arguments naming one object.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// The object's key (or, with --hex-id, its id as 128 hex chars).
    pub key: String,
    /// KEY is an id (128 hex chars), not a key.
    #[arg(long)]
    pub hex_id: bool,
}

impl KeyArgs {
    fn id(&self) -> anyhow::Result<Id> {
        if self.hex_id {
            self.key
                .parse()
                .with_context(|| format!("--hex-id {:?}", self.key))
        } else {
            Ok(Id::from_key(self.key.as_bytes()))
        }
    }
}

/// Arguments of `mend put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Groups to write to (a subset is how replicas diverge).
    #[arg(short = 'g', long = "groups", value_delimiter = ',', required = true)]
    pub groups: Vec<u32>,
    #[command(flatten)]
    pub key: KeyArgs,
    /// The value: a file, or '-' for standard input.
    #[arg(conflicts_with = "value")]
    pub file: Option<PathBuf>,
    /// The value as text on the command line.
    #[arg(long)]
    pub value: Option<String>,
    /// Write this version (ns since the epoch) instead of now.
    #[arg(long)]
    pub timestamp: Option<u64>,
    /// User flags stored with the version (decimal or 0x-hex).
    #[arg(long, value_parser = parse_flags, default_value = "0")]
    pub user_flags: u64,
    /// Mark the version mergeable: recovery merges its versions instead of picking one.
    #[arg(long)]
    pub mergeable: bool,
}

/// Arguments of `mend get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Groups to try, in order; the first with a live, healthy value answers.
    #[arg(short = 'g', long = "groups", value_delimiter = ',', required = true)]
    pub groups: Vec<u32>,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Write the value to this file instead of standard output.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
}

/// Arguments of `mend del`.
#[derive(Debug, Args)]
pub struct DelArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Groups to delete in.
    #[arg(short = 'g', long = "groups", value_delimiter = ',', required = true)]
    pub groups: Vec<u32>,
    #[command(flatten)]
    pub key: KeyArgs,
    /// The tombstone's timestamp (ns since the epoch) instead of now.
    #[arg(long)]
    pub timestamp: Option<u64>,
}

/// Arguments of `mend stat`.
#[derive(Debug, Args)]
pub struct StatArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Groups to ask.
    #[arg(short = 'g', long = "groups", value_delimiter = ',', required = true)]
    pub groups: Vec<u32>,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Print a JSON array, one object per group.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `mend id`.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// Keys to print ids of.
    #[arg(required = true)]
    pub keys: Vec<String>,
}

fn describe(outcome: &PutOutcome) -> String {
    match outcome {
        PutOutcome::Written => "written".into(),
        PutOutcome::Stale { stored } => format!(
            "refused as stale: the node holds {} at {}",
            if stored.is_tombstone() {
                "a tombstone"
            } else {
                "a version"
            },
            stored.timestamp
        ),
        PutOutcome::ChecksumMismatch => "refused: value does not match its checksum".into(),
    }
}

/// Writes `version` (with the value from `source`) to every group, handing off to the next
/// node of a group whose owner is unreachable; prints one line per group (and one per
/// hand-off); exit 1 if any group did not take it.
async fn write_all_groups(
    client: &Client,
    groups: &[u32],
    id: &Id,
    version: Version,
    source: ValueSource<'_>,
) -> anyhow::Result<ExitCode> {
    let mut failed = 0;
    for g in groups {
        match client.write_with_handoff(*g, id, version, source).await {
            Ok((served, outcome)) => {
                if outcome != PutOutcome::Written {
                    failed += 1;
                }
                if let Some(note) = served.note() {
                    println!("{note}");
                }
                println!("group {g} ({}): {}", served.node, describe(&outcome));
            }
            Err(e) => {
                failed += 1;
                println!("group {g}: failed: {e:#}");
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs `mend put`.
pub fn put(args: PutArgs) -> anyhow::Result<ExitCode> {
    check_groups(&args.groups)?;
    let id = args.key.id()?;
    let timestamp = args.timestamp.unwrap_or_else(now_ns);
    // Standard input is spooled to a temp file so it can be hashed, then streamed.
    let mut spool = None;
    let value_path = match (&args.file, &args.value) {
        (_, Some(_)) => None,
        (Some(path), None) if path.as_os_str() == "-" => {
            let mut tmp = tempfile::NamedTempFile::new().context("cannot spool standard input")?;
            std::io::copy(&mut std::io::stdin().lock(), &mut tmp)
                .context("reading standard input")?;
            let path = tmp.path().to_path_buf();
            spool = Some(tmp);
            Some(path)
        }
        (Some(path), None) => Some(path.clone()),
        (None, None) => bail!("no value: give a FILE, '-' for standard input, or --value TEXT"),
    };
    let (version, source) = match (&value_path, &args.value) {
        (Some(path), _) => (
            version_of_file(path, timestamp, args.user_flags)?,
            ValueSource::File(path),
        ),
        (None, text) => {
            let text = text.as_deref().unwrap_or_default().as_bytes();
            (
                Version::of_value(text, timestamp, args.user_flags),
                ValueSource::Bytes(text),
            )
        }
    };
    let mut version = version;
    if args.mergeable {
        version.flags |= FLAG_MERGEABLE;
    }
    runtime()?.block_on(async {
        let client = args.cluster.connect().await?;
        client.route().check_groups(&args.groups)?;
        let code = write_all_groups(&client, &args.groups, &id, version, source).await;
        drop(spool);
        code
    })
}

/// Runs `mend del`.
pub fn del(args: DelArgs) -> anyhow::Result<ExitCode> {
    check_groups(&args.groups)?;
    let id = args.key.id()?;
    let version = Version::tombstone(args.timestamp.unwrap_or_else(now_ns));
    runtime()?.block_on(async {
        let client = args.cluster.connect().await?;
        client.route().check_groups(&args.groups)?;
        write_all_groups(&client, &args.groups, &id, version, ValueSource::Bytes(&[])).await
    })
}

/// Runs `mend get`.
pub fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    check_groups(&args.groups)?;
    let id = args.key.id()?;
    runtime()?.block_on(async {
        let client = args.cluster.connect().await?;
        client.route().check_groups(&args.groups)?;
        let mut notes = Vec::new();
        for g in &args.groups {
            // Read into memory-bounded temp storage first, so a failed or corrupt read
            // never leaves a partial value behind.
            let dir = args
                .output
                .as_ref()
                .and_then(|p| p.parent().map(|d| d.to_path_buf()))
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or_else(|| PathBuf::from("."));
            let tmp = match &args.output {
                Some(_) => tempfile::NamedTempFile::new_in(&dir),
                None => tempfile::NamedTempFile::new(),
            }
            .with_context(|| format!("cannot create a temp file in {}", dir.display()))?;
            let mut file = tokio::fs::File::from_std(tmp.reopen()?);
            match client.read_with_fallback(*g, &id, &mut file).await {
                Ok((served, ReadOutcome::Value(_))) => {
                    drop(file);
                    match &args.output {
                        Some(path) => {
                            tmp.persist(path)
                                .with_context(|| format!("cannot write {}", path.display()))?;
                        }
                        None => {
                            let mut f = tmp.reopen()?;
                            std::io::copy(&mut f, &mut std::io::stdout().lock())?;
                        }
                    }
                    notes.extend(served.note());
                    for n in &notes {
                        eprintln!("mend: {n}");
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                Ok((served, ReadOutcome::Tombstone(v))) => {
                    notes.extend(served.note());
                    notes.push(format!(
                        "group {g} ({}): deleted at {}",
                        served.node, v.timestamp
                    ))
                }
                Ok((served, ReadOutcome::Absent)) => {
                    notes.push(format!("group {g} ({}): absent", served.node))
                }
                Err(e) => notes.push(format!("group {g}: {e:#}")),
            }
        }
        bail!(
            "{}: no group has a healthy value ({})",
            args.key.key,
            notes.join("; ")
        )
    })
}

/// One group's answer for `stat`.
#[derive(Debug, serde::Serialize)]
struct StatRow {
    group: u32,
    /// The node that answered (the owner, or another node of the group holding a hand-off
    /// copy when the owner is unreachable or has none).
    node: String,
    owner: String,
    note: Option<String>,
    state: &'static str,
    timestamp: Option<u64>,
    size: Option<u64>,
    checksum: Option<String>,
    user_flags: Option<u64>,
    mergeable: bool,
    error: Option<String>,
}

/// Runs `mend stat`.
pub fn stat(args: StatArgs) -> anyhow::Result<ExitCode> {
    check_groups(&args.groups)?;
    let id = args.key.id()?;
    runtime()?.block_on(async {
        let client = args.cluster.connect().await?;
        client.route().check_groups(&args.groups)?;
        let mut rows = Vec::new();
        for g in &args.groups {
            let owner = client.owner(*g, &id)?.id.clone();
            let row = match client.lookup_with_fallback(*g, &id).await {
                Ok((served, r)) => StatRow {
                    group: *g,
                    note: served.note(),
                    node: served.node,
                    owner,
                    state: ReplicaState::of(r.as_ref()).as_str(),
                    timestamp: r.map(|r| r.version.timestamp),
                    size: r.map(|r| r.version.size),
                    checksum: r.map(|r| r.version.checksum_hex()),
                    user_flags: r.map(|r| r.version.user_flags),
                    mergeable: r.is_some_and(|r| r.version.is_mergeable()),
                    error: None,
                },
                Err(e) => StatRow {
                    group: *g,
                    node: owner.clone(),
                    owner,
                    note: None,
                    state: "unreachable",
                    timestamp: None,
                    size: None,
                    checksum: None,
                    user_flags: None,
                    mergeable: false,
                    error: Some(format!("{e:#}")),
                },
            };
            rows.push(row);
        }
        let failed = rows.iter().any(|r| r.error.is_some());
        let mut out = std::io::stdout().lock();
        if args.json {
            serde_json::to_writer_pretty(&mut out, &rows)?;
            writeln!(out)?;
        } else {
            writeln!(out, "{}  id {}", args.key.key, id)?;
            writeln!(
                out,
                "{:<6} {:<8} {:<10} {:>20} {:>10}  {:<16} user_flags",
                "group", "node", "state", "timestamp", "size", "checksum"
            )?;
            for r in &rows {
                let dash = || "-".to_string();
                writeln!(
                    out,
                    "{:<6} {:<8} {:<10} {:>20} {:>10}  {:<16} {}",
                    r.group,
                    r.node,
                    r.state,
                    r.timestamp.map_or_else(dash, |t| t.to_string()),
                    r.size.map_or_else(dash, |s| s.to_string()),
                    r.checksum
                        .as_ref()
                        .map_or_else(dash, |c| c[..16].to_string()),
                    r.user_flags.map_or_else(dash, |f| f.to_string()),
                )?;
                if let Some(note) = &r.note {
                    writeln!(out, "       {note}")?;
                }
                if let Some(e) = &r.error {
                    writeln!(out, "       {e}")?;
                }
            }
        }
        Ok(if failed {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        })
    })
}

/// Runs `mend id`.
pub fn id(args: IdArgs) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    for key in &args.keys {
        writeln!(out, "{}", Id::from_key(key.as_bytes()))?;
    }
    Ok(ExitCode::SUCCESS)
}
