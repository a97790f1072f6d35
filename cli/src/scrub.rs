//! `mend scrub`: re-hash stored values on nodes, mark those whose checksum fails as
//! corrupt (so they show up as differences and get repaired), and report them. Nothing is
//! deleted. Resumable through a state file; rate-limited.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use mend_engine::route::NodeEntry;
use mend_engine::wire::{Request, Response, MAX_SCRUB_PAGE};
use mend_engine::{Id, IdRange};

use crate::common::{check_groups, runtime, ClusterArgs};

/// Arguments of `mend scrub`.
#[derive(Debug, Args)]
pub struct ScrubArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Scrub every node of these groups.
    #[arg(
        short = 'g',
        long = "groups",
        value_delimiter = ',',
        required_unless_present = "one_node"
    )]
    pub groups: Vec<u32>,
    /// Scrub only this node (its id or address).
    #[arg(short = 'o', long = "one-node", value_name = "NODE")]
    pub one_node: Option<String>,
    /// Write the ids of corrupt values as a dump file (input for `mend dc -f`).
    #[arg(long, value_name = "FILE")]
    pub dump_out: Option<PathBuf>,
    /// Remember progress here: an interrupted scrub run again with the same file resumes
    /// where it stopped; a finished node's entry is cleared.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Re-read at most this many value bytes per second on each node (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub max_bytes_per_sec: u64,
    /// Records per request.
    #[arg(short = 'b', long = "batch", default_value_t = 1024)]
    pub batch: u32,
}

/// Progress kept in `--state`: per node, the last id scrubbed.
type ScrubState = BTreeMap<String, String>;

fn load_state(path: &Option<PathBuf>) -> anyhow::Result<ScrubState> {
    match path {
        Some(p) if p.exists() => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not a scrub state file", p.display()))
        }
        _ => Ok(ScrubState::new()),
    }
}

fn save_state(path: &Option<PathBuf>, state: &ScrubState) -> anyhow::Result<()> {
    if let Some(p) = path {
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, p).with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}

/// Runs `mend scrub`: exit 0 when every value is healthy, 1 when corrupt values were
/// found (or a node failed), 2 on bad input.
pub fn run(args: ScrubArgs) -> anyhow::Result<ExitCode> {
    if args.one_node.is_none() {
        check_groups(&args.groups)?;
    }
    if args.batch == 0 || args.batch > MAX_SCRUB_PAGE {
        bail!("--batch must be from 1 to {MAX_SCRUB_PAGE}");
    }
    let mut state = load_state(&args.state)?;
    runtime()?.block_on(async {
        let client = args.cluster.connect().await?;
        let route = client.route();
        let nodes: Vec<NodeEntry> = match &args.one_node {
            Some(n) => vec![route.node(n)?.clone()],
            None => {
                route.check_groups(&args.groups)?;
                args.groups
                    .iter()
                    .flat_map(|g| route.group(*g).cloned())
                    .collect()
            }
        };
        let bar = crate::common::progress(0, "scrub");
        bar.set_length(0);
        let mut corrupt: Vec<(String, Id)> = Vec::new();
        let (mut checked, mut bytes, mut failed) = (0u64, 0u64, Vec::new());
        for node in &nodes {
            let mut after: Option<Id> = match state.get(&node.id) {
                Some(hex) => Some(
                    hex.parse()
                        .with_context(|| format!("state file entry for {}", node.id))?,
                ),
                None => None,
            };
            let peer = match client.peer(node).await {
                Ok(p) => p,
                Err(e) => {
                    failed.push(format!("{}: {e}", node.id));
                    continue;
                }
            };
            loop {
                let started = Instant::now();
                let page = match peer
                    .call(&Request::Scrub {
                        range: IdRange::ALL,
                        after,
                        limit: args.batch,
                    })
                    .await
                {
                    Ok(Response::Scrubbed(p)) => p,
                    Ok(other) => {
                        failed.push(format!("{}: answered {}", node.id, other.kind()));
                        break;
                    }
                    Err(e) => {
                        failed.push(format!("{}: {e}", node.id));
                        break;
                    }
                };
                checked += page.checked;
                bytes += page.bytes;
                bar.inc(page.checked);
                corrupt.extend(
                    page.newly_corrupt
                        .iter()
                        .chain(&page.already_corrupt)
                        .map(|id| (node.id.clone(), *id)),
                );
                after = page.next;
                match after {
                    Some(id) => state.insert(node.id.clone(), id.to_hex()),
                    None => state.remove(&node.id),
                };
                save_state(&args.state, &state)?;
                if after.is_none() {
                    break;
                }
                if args.max_bytes_per_sec > 0 {
                    // Politeness: spread the re-reads so scrub never monopolises a disk.
                    let due =
                        Duration::from_secs_f64(page.bytes as f64 / args.max_bytes_per_sec as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        bar.finish_and_clear();
        if let Some(path) = &args.dump_out {
            mend_engine::dump::write(path, corrupt.iter().map(|(_, id)| *id))?;
        }
        println!(
            "scrubbed {} nodes: {checked} records checked, {bytes} value bytes re-read, {} corrupt",
            nodes.len(),
            corrupt.len()
        );
        for (node, id) in &corrupt {
            println!("corrupt {id} on {node}");
        }
        for f in &failed {
            eprintln!("mend: scrub failed on {f}");
        }
        Ok(if corrupt.is_empty() && failed.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}
