//! `mend node`: run storage nodes until a signal.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use mend_engine::node::NodeOptions;
use mend_engine::route::RouteList;

use crate::common::{init_logging, parse_seconds, runtime, ClusterDir};

/// Arguments of `mend node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub dir: ClusterDir,
    /// The node to run (its id in cluster.toml, e.g. g1n1).
    #[arg(long, required_unless_present = "all", conflicts_with = "all")]
    pub id: Option<String>,
    /// Run every node of the cluster in this process (demos, tests, one machine).
    #[arg(long)]
    pub all: bool,
    /// Seconds a request stream may take to deliver its whole request once it holds one of
    /// the node's request slots; then it is reset and the slot freed, so a peer that opens
    /// streams and stalls cannot starve other clients. Values streamed after a request
    /// are not under this limit.
    #[arg(
        long,
        default_value = "30",
        value_name = "SECS",
        value_parser = parse_seconds
    )]
    pub request_timeout: Duration,
    /// Do not serve: rebuild the node's fingerprints (--all: every node's) from its stored
    /// versions, say how many partitions were wrong, and exit. For a fingerprint table
    /// damaged by a bad disk or a bug; the node must be stopped (its store is locked while
    /// it runs). Nothing but the fingerprints changes.
    #[arg(long)]
    pub rebuild_fingerprints: bool,
}

/// Runs `mend node`: prints `ready NODE ADDR` per node once it serves, then waits for
/// SIGINT or SIGTERM and shuts down cleanly.
pub fn run(args: NodeArgs) -> anyhow::Result<ExitCode> {
    init_logging("info");
    let rt = runtime()?;
    let dir = args.dir.checked()?;
    if args.rebuild_fingerprints {
        return rebuild_fingerprints(dir, args.id.as_deref());
    }
    let options = NodeOptions {
        request_read_timeout: args.request_timeout,
    };
    rt.block_on(async {
        let nodes = if args.all {
            mend_engine::node::start_all(dir, options).await?
        } else {
            let id = args
                .id
                .as_deref()
                .expect("clap requires --id without --all");
            let route = RouteList::load(dir)?;
            let store = mend_engine::node::open_store(dir, &route, id)?;
            vec![mend_engine::node::start_with(dir, id, store, options).await?]
        };
        {
            let mut out = std::io::stdout().lock();
            for n in &nodes {
                writeln!(out, "ready {} {}", n.id, n.addr)?;
            }
            out.flush()?;
        }
        wait_for_signal().await?;
        tracing::info!("shutting down");
        for n in nodes {
            n.shutdown().await;
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `mend node --rebuild-fingerprints`: one node, or every node of the cluster dir.
fn rebuild_fingerprints(dir: &std::path::Path, id: Option<&str>) -> anyhow::Result<ExitCode> {
    let route = RouteList::load(dir)?;
    let ids: Vec<&str> = match id {
        Some(id) => vec![id],
        None => route.nodes.iter().map(|n| n.id.as_str()).collect(),
    };
    for id in ids {
        let store = mend_engine::node::open_store(dir, &route, id)?;
        let before = store.partition_fingerprints(0, u16::MAX)?;
        store
            .rebuild_fingerprints()
            .with_context(|| format!("rebuilding the fingerprints of node {id}"))?;
        let after = store.partition_fingerprints(0, u16::MAX)?;
        let wrong = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        println!(
            "{id}: fingerprints rebuilt; {wrong} of {} partitions were wrong",
            after.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot listen for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}
