//! `mend route`: show the route list with each node's key counts; change it (add a node,
//! remove one, rebalance, rebuild from a recovery file), showing the before/after diff and
//! writing `cluster.toml` only with `--yes`; push it to every node.
//!
//! Changes edit the cluster dir's `cluster.toml` (under the same lock nodes take to record
//! their port) and bump its epoch; nodes learn it from `mend route push` (they refuse a
//! route list older than theirs). Moving keys to their new owners is `mend merge`'s job.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use mend_engine::client::{Bootstrap, Client, ClientError};
use mend_engine::pki::Credentials;
use mend_engine::route::{NodeEntry, PartitionRange, RouteList, CLUSTER_FILE};
use mend_engine::transport::TransportError;
use mend_engine::wire::{ErrorKind, Request, Response};
use mend_engine::IdRange;

use crate::common::{parse_seconds, runtime, ClusterArgs, ClusterDir};

/// Arguments of `mend route`.
#[derive(Debug, Args)]
pub struct RouteArgs {
    #[command(subcommand)]
    pub command: RouteCommand,
}

/// The `mend route` subcommands.
#[derive(Debug, Subcommand)]
pub enum RouteCommand {
    /// Show the route list as a table: groups, nodes, addresses, partition ranges and
    /// counts, and per node its epoch and the keys it holds (in its own partitions, and in
    /// all: the difference is misplaced keys, which `mend merge` moves to their owners).
    Show(ShowArgs),
    /// Add a node to a group: it takes a fair share of the group's partitions from the
    /// others. Issues its certificate and creates its data dir (with --yes).
    AddNode(AddNodeArgs),
    /// Remove a node: its partitions are spread over the rest of its group. Refused if it
    /// is the group's last node.
    RemoveNode(RemoveNodeArgs),
    /// Split every group's partitions evenly over its nodes, moving as few as possible.
    Rebalance(ChangeArgs),
    /// Rebuild the route list from a recovery file listing the surviving nodes (after
    /// Dkron's peers.json): a JSON array of {"id", "group", "addr"[, "data_dir"]}, or TOML
    /// `[[node]]` tables when the file name ends in .toml. Each group that lost nodes has its
    /// partitions split evenly over its survivors.
    Recover(RecoverFileArgs),
    /// Send the cluster dir's route list to every node it lists; a node refuses one older
    /// than its own. Exit 1 naming every node that refused or could not be reached.
    Push(PushArgs),
}

/// Arguments of `mend route show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Do not ask the nodes for their epoch and key counts (the route list only).
    #[arg(long)]
    pub no_keys: bool,
    /// Print a JSON array, one object per node.
    #[arg(long)]
    pub json: bool,
}

/// What every change shares: the cluster dir and the confirmation.
#[derive(Debug, Args)]
pub struct ChangeArgs {
    #[command(flatten)]
    pub dir: ClusterDir,
    /// Write the new cluster.toml; without it, only show what would change.
    #[arg(long)]
    pub yes: bool,
}

/// Arguments of `mend route add-node`.
#[derive(Debug, Args)]
pub struct AddNodeArgs {
    #[command(flatten)]
    pub change: ChangeArgs,
    /// The group the node joins.
    #[arg(short = 'g', long)]
    pub group: u32,
    /// The node's id (letters, digits, '-', '_', '.').
    #[arg(long)]
    pub id: String,
    /// Where it will listen: host:port (port 0: it picks one when it first starts).
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: String,
    /// Its data dir, relative to the cluster dir unless absolute [default: data/ID].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// Arguments of `mend route remove-node`.
#[derive(Debug, Args)]
pub struct RemoveNodeArgs {
    #[command(flatten)]
    pub change: ChangeArgs,
    /// The node to remove: its id or its address.
    #[arg(long)]
    pub id: String,
}

/// Arguments of `mend route recover`.
#[derive(Debug, Args)]
pub struct RecoverFileArgs {
    #[command(flatten)]
    pub change: ChangeArgs,
    /// The recovery file: the surviving nodes.
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
}

/// Arguments of `mend route push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    #[command(flatten)]
    pub dir: ClusterDir,
    /// Seconds to wait for a node to answer a new connection.
    #[arg(
        long,
        env = "MEND_CONNECT_TIMEOUT",
        default_value = "5",
        value_name = "SECS",
        value_parser = parse_seconds
    )]
    pub connect_timeout: Duration,
}

/// Runs `mend route`.
pub fn run(args: RouteArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        RouteCommand::Show(a) => show(a),
        RouteCommand::AddNode(a) => {
            mend_engine::pki::check_name(&a.id)?;
            let dir = a.change.dir.cluster.clone();
            change(
                &a.change,
                &format!("add node {} to group {}", a.id, a.group),
                |old| Ok(old.add_node(a.group, &a.id, &a.addr, a.data_dir.clone())?),
                |new| prepare_nodes(&dir, new, &[a.id.as_str()]),
            )
        }
        RouteCommand::RemoveNode(a) => change(
            &a.change,
            &format!("remove node {}", a.id),
            |old| Ok(old.remove_node(&a.id)?),
            |_| Ok(()),
        ),
        RouteCommand::Rebalance(a) => {
            change(&a, "rebalance", |old| Ok(old.rebalance()?), |_| Ok(()))
        }
        RouteCommand::Recover(a) => {
            let dir = a.change.dir.cluster.clone();
            change(
                &a.change,
                &format!("rebuild from recovery file {}", a.from.display()),
                |old| {
                    let new = old.from_recovery_file(&a.from)?;
                    for n in &new.nodes {
                        mend_engine::pki::check_name(&n.id)
                            .with_context(|| format!("recovery file {}", a.from.display()))?;
                    }
                    Ok(new)
                },
                |new| {
                    // Survivors new to the cluster (a replacement host) get a certificate
                    // if they have none, and a data dir.
                    let fresh: Vec<&str> = new
                        .nodes
                        .iter()
                        .filter(|n| !dir.join("certs").join(format!("{}.pem", n.id)).exists())
                        .map(|n| n.id.as_str())
                        .collect();
                    prepare_nodes(&dir, new, &fresh)
                },
            )
        }
        RouteCommand::Push(a) => push(a),
    }
}

/// Holds the cluster dir's lock (the one nodes take to record their port) while alive.
struct ClusterLock(std::fs::File);

impl ClusterLock {
    fn take(dir: &Path) -> anyhow::Result<ClusterLock> {
        let path = dir.join(".cluster.lock");
        let file = std::fs::File::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        file.lock()
            .with_context(|| format!("cannot lock {}", path.display()))?;
        Ok(ClusterLock(file))
    }
}

impl Drop for ClusterLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// Shows the change `make` makes to the cluster dir's route list; with `--yes`, runs
/// `apply` (certificates, data dirs) and writes the new list atomically.
fn change(
    args: &ChangeArgs,
    what: &str,
    make: impl FnOnce(&RouteList) -> anyhow::Result<RouteList>,
    apply: impl FnOnce(&RouteList) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    let dir = args.dir.checked()?;
    let path = dir.join(CLUSTER_FILE);
    let _lock = ClusterLock::take(dir)?;
    let old = RouteList::load(dir)?;
    let new = make(&old)?;
    println!("{what} ({}):", path.display());
    if old.same_apart_from_epoch(&new) {
        println!(
            "  no change: {CLUSTER_FILE} left as it is (epoch {})",
            old.epoch
        );
        return Ok(ExitCode::SUCCESS);
    }
    for line in old.diff(&new) {
        println!("  {line}");
    }
    if !args.yes {
        println!("dry run: nothing changed; run again with --yes to write it");
        return Ok(ExitCode::SUCCESS);
    }
    apply(&new)?;
    new.save(dir)?;
    println!(
        "wrote {} (epoch {}); send it to the nodes with `mend route push`, then move keys to their new owners with `mend merge`",
        path.display(),
        new.epoch
    );
    Ok(ExitCode::SUCCESS)
}

/// Issues certificates for `ids` and creates their data dirs.
fn prepare_nodes(dir: &Path, route: &RouteList, ids: &[&str]) -> anyhow::Result<()> {
    for id in ids {
        let node = route.node(id)?;
        mend_engine::pki::issue_node_cert(dir, id)
            .with_context(|| format!("cannot issue a certificate for node {id}"))?;
        let data = route.data_dir(dir, node);
        std::fs::create_dir_all(&data)
            .with_context(|| format!("cannot create data dir {}", data.display()))?;
        println!(
            "issued certificate certs/{id}.pem, data dir {}",
            data.display()
        );
    }
    Ok(())
}

/// One node's line of `mend route show`.
#[derive(Debug, serde::Serialize)]
struct NodeRow {
    group: u32,
    node: String,
    addr: String,
    data_dir: String,
    partitions: u32,
    ranges: Vec<String>,
    /// The epoch of the node's own route list.
    epoch: Option<u64>,
    /// Keys (tombstones included) in the node's own partitions.
    keys_owned: Option<u64>,
    /// Every key the node stores.
    keys_held: Option<u64>,
    error: Option<String>,
}

/// What a node says about itself: its epoch, and the keys in `owned` and in all.
async fn ask_node(client: &Client, node: &NodeEntry) -> Result<(u64, u64, u64), ClientError> {
    let peer = client.peer(node).await?;
    let unexpected = |request: &'static str, r: &Response| ClientError::Unexpected {
        node: node.id.clone(),
        request,
        what: r.kind().to_string(),
    };
    let epoch = match peer.call(&Request::RouteList).await? {
        Response::RouteList(r) => r.epoch,
        other => return Err(unexpected("route-list", &other)),
    };
    let mut ranges: Vec<IdRange> = node.partitions.iter().map(PartitionRange::ids).collect();
    ranges.push(IdRange::ALL);
    let n = ranges.len();
    let mut counts = Vec::with_capacity(n);
    // Bounded requests: a node's list of ranges can be long after many changes.
    for chunk in ranges.chunks(4096) {
        match peer
            .call(&Request::Fingerprints {
                ranges: chunk.to_vec(),
                split: 1,
            })
            .await?
        {
            Response::Fingerprints(f) if f.len() == chunk.len() => {
                counts.extend(f.iter().map(|f| f.count))
            }
            other => return Err(unexpected("fingerprints", &other)),
        }
    }
    let held = counts.pop().unwrap_or(0);
    Ok((epoch, counts.iter().sum(), held))
}

fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let client = Arc::new(args.cluster.connect().await?);
        let route = client.route().clone();
        let source = match &args.cluster.remote {
            Some(r) => format!("node {r}"),
            None => args
                .cluster
                .dir
                .cluster
                .join(CLUSTER_FILE)
                .display()
                .to_string(),
        };
        let mut rows: Vec<NodeRow> = route
            .nodes
            .iter()
            .map(|n| NodeRow {
                group: n.group,
                node: n.id.clone(),
                addr: n.addr.clone(),
                data_dir: n.data_dir.display().to_string(),
                partitions: n.partitions.iter().map(PartitionRange::len).sum(),
                ranges: n.partitions.iter().map(ToString::to_string).collect(),
                epoch: None,
                keys_owned: None,
                keys_held: None,
                error: None,
            })
            .collect();
        if !args.no_keys {
            let mut asks = tokio::task::JoinSet::new();
            for (i, node) in route.nodes.iter().enumerate() {
                let (client, node) = (client.clone(), node.clone());
                asks.spawn(async move { (i, ask_node(&client, &node).await) });
            }
            while let Some(done) = asks.join_next().await {
                let (i, answer) = done.context("a node query failed")?;
                match answer {
                    Ok((epoch, owned, held)) => {
                        rows[i].epoch = Some(epoch);
                        rows[i].keys_owned = Some(owned);
                        rows[i].keys_held = Some(held);
                    }
                    Err(e) => rows[i].error = Some(format!("{e:#}")),
                }
            }
        }
        rows.sort_by_key(|r| r.group);
        let failed = rows.iter().any(|r| r.error.is_some());
        if args.json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            print_table(&route, &source, &rows, args.no_keys);
        }
        Ok(if failed {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        })
    })
}

fn print_table(route: &RouteList, source: &str, rows: &[NodeRow], no_keys: bool) {
    println!(
        "route list {:?}, epoch {} (from {source}): {} groups, {} nodes",
        route.name,
        route.epoch,
        route.groups().len(),
        route.nodes.len()
    );
    let dash = || "-".to_string();
    let num = |v: Option<u64>| v.map_or_else(dash, |v| v.to_string());
    print!(
        "{:<6} {:<10} {:<22} {:>10}  {:<30}",
        "group", "node", "address", "partitions", "ranges"
    );
    if no_keys {
        println!();
    } else {
        println!(
            " {:>6} {:>12} {:>12} {:>10}",
            "epoch", "keys owned", "keys held", "misplaced"
        );
    }
    let mut behind = Vec::new();
    for r in rows {
        let ranges = if r.ranges.len() > 3 {
            format!("{} (+{} more)", r.ranges[..3].join(","), r.ranges.len() - 3)
        } else {
            r.ranges.join(",")
        };
        print!(
            "{:<6} {:<10} {:<22} {:>10}  {:<30}",
            r.group, r.node, r.addr, r.partitions, ranges
        );
        if no_keys {
            println!();
            continue;
        }
        let misplaced = r.keys_held.zip(r.keys_owned).map(|(h, o)| h - o.min(h));
        println!(
            " {:>6} {:>12} {:>12} {:>10}",
            num(r.epoch),
            num(r.keys_owned),
            num(r.keys_held),
            num(misplaced)
        );
        if let Some(e) = &r.error {
            println!("       unreachable: {e}");
        }
        if r.epoch.is_some_and(|e| e != route.epoch) {
            behind.push(format!("{} (epoch {})", r.node, num(r.epoch)));
        }
    }
    if !no_keys {
        println!(
            "keys owned: keys (tombstones included) in the node's own partitions; keys held: every key it stores; misplaced = held - owned (moved to their owners by `mend merge`)"
        );
    }
    if !behind.is_empty() {
        println!(
            "not at epoch {}: {} (send the route list with `mend route push`)",
            route.epoch,
            behind.join(", ")
        );
    }
}

/// One node's answer to a push.
enum Pushed {
    Accepted(u64),
    Refused(String),
    Unreachable(String),
    Failed(String),
}

fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let dir = args.dir.checked()?;
    let route = RouteList::load(dir)?;
    let creds = Credentials::for_client(dir)?;
    runtime()?.block_on(async {
        let client = Arc::new(
            Client::connect_with_timeout(
                &creds,
                Bootstrap::Route(route.clone()),
                args.connect_timeout,
            )
            .await?,
        );
        let mut pushes = tokio::task::JoinSet::new();
        for (i, node) in route.nodes.iter().enumerate() {
            let (client, node, route) = (client.clone(), node.clone(), route.clone());
            pushes.spawn(async move { (i, push_to(&client, &node, route).await) });
        }
        let mut answers: Vec<Option<Pushed>> = route.nodes.iter().map(|_| None).collect();
        while let Some(done) = pushes.join_next().await {
            let (i, answer) = done.context("a push task failed")?;
            answers[i] = Some(answer);
        }
        println!(
            "pushing route list {:?} epoch {} to {} nodes:",
            route.name,
            route.epoch,
            route.nodes.len()
        );
        let mut not_taken = Vec::new();
        for (node, answer) in route.nodes.iter().zip(answers) {
            let answer = answer.unwrap_or(Pushed::Failed("no answer".into()));
            let line = match &answer {
                Pushed::Accepted(epoch) => format!("accepted (epoch {epoch})"),
                Pushed::Refused(why) => format!("refused: {why}"),
                Pushed::Unreachable(why) => format!("unreachable: {why}"),
                Pushed::Failed(why) => format!("failed: {why}"),
            };
            println!("  {:<10} {:<22} {line}", node.id, node.addr);
            match answer {
                Pushed::Accepted(_) => {}
                Pushed::Refused(why) => not_taken.push(format!("{} (refused: {why})", node.id)),
                Pushed::Unreachable(_) => not_taken.push(format!("{} (unreachable)", node.id)),
                Pushed::Failed(why) => not_taken.push(format!("{} (failed: {why})", node.id)),
            }
        }
        if not_taken.is_empty() {
            println!("every node is at epoch {}", route.epoch);
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!(
            "mend: route push: {} of {} nodes did not take epoch {}: {}",
            not_taken.len(),
            route.nodes.len(),
            route.epoch,
            not_taken.join("; ")
        );
        Ok(ExitCode::from(1))
    })
}

async fn push_to(client: &Client, node: &NodeEntry, route: RouteList) -> Pushed {
    let peer = match client.peer(node).await {
        Ok(p) => p,
        Err(e) => return Pushed::Unreachable(format!("{e:#}")),
    };
    match peer.call(&Request::PushRoute { route }).await {
        Ok(Response::RouteAccepted { epoch }) => Pushed::Accepted(epoch),
        Ok(other) => Pushed::Failed(format!("unexpected answer {}", other.kind())),
        Err(TransportError::Remote { source, .. }) if source.kind == ErrorKind::Route => {
            Pushed::Refused(source.message)
        }
        Err(e) => Pushed::Failed(format!("{e:#}")),
    }
}
