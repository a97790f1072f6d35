//! Comparing groups over the network: drives [`crate::reconcile`] against the owners of
//! each elementary range (the fingerprint way), or iterates every record of every replica
//! and merges them by id (`--full-scan`, the dnet_recovery way: the oracle and baseline).

use futures_util::future::try_join_all;
use tokio::sync::mpsc;

use crate::client::{Client, ClientError};
use crate::reconcile::{Answers, CompareStats, Config, Reconcile, Round};
use crate::route::{NodeEntry, PartitionRange};
use crate::transport::Peer;
use crate::wire::{self, Request, Response};
use crate::{Id, IdRange, Record};

/// Which replicas to compare.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The groups, in the order their records are reported.
    pub groups: Vec<u32>,
    /// Only the ranges this node (id or address) owns.
    pub only_node: Option<String>,
}

/// One range whose owner is the same in every compared group.
#[derive(Debug, Clone)]
pub struct PlannedRange {
    /// The partitions.
    pub partitions: PartitionRange,
    /// The owner in each group, in the scope's group order.
    pub owners: Vec<NodeEntry>,
}

/// Cuts the id space into elementary ranges for `scope`.
pub fn plan(client: &Client, scope: &Scope) -> Result<Vec<PlannedRange>, ClientError> {
    let route = client.route();
    route.check_groups(&scope.groups)?;
    let only = scope
        .only_node
        .as_deref()
        .map(|n| route.node(n))
        .transpose()?;
    Ok(route
        .elementary_ranges(&scope.groups)
        .into_iter()
        .filter(|(_, owners)| only.is_none_or(|o| owners.iter().any(|n| n.id == o.id)))
        .map(|(partitions, owners)| PlannedRange {
            partitions,
            owners: owners.into_iter().cloned().collect(),
        })
        .collect())
}

/// One id that differs, with each group's record (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The id.
    pub id: Id,
    /// One entry per group of the scope, in order: the owner's id and its record.
    pub replicas: Vec<(String, Option<Record>)>,
}

/// What a comparison found and what it cost.
#[derive(Debug, Clone, Default)]
pub struct CompareReport {
    /// Differing ids, in id order.
    pub differences: Vec<Difference>,
    /// Elementary ranges compared.
    pub ranges: usize,
    /// Round trips: the most rounds any range needed (ranges run in parallel).
    pub round_trips: u64,
    /// Counts summed over ranges.
    pub stats: CompareStats,
    /// Records iterated (full scan only).
    pub iterated: u64,
}

/// Compares the groups of `scope` by fingerprints.
pub async fn by_fingerprints(
    client: &Client,
    scope: &Scope,
    config: Config,
) -> Result<CompareReport, ClientError> {
    let planned = plan(client, scope)?;
    let ranges = planned.len();
    let results = try_join_all(planned.iter().map(|p| compare_range(client, p, config))).await?;
    let mut report = CompareReport {
        ranges,
        ..CompareReport::default()
    };
    for (p, (diffs, stats)) in planned.iter().zip(results) {
        report.round_trips = report.round_trips.max(stats.rounds);
        report.stats.rounds += stats.rounds;
        report.stats.ranges_fingerprinted += stats.ranges_fingerprinted;
        report.stats.ranges_listed += stats.ranges_listed;
        report.stats.asks_spared += stats.asks_spared;
        report.stats.anchors += stats.anchors;
        report.stats.anchors_redone += stats.anchors_redone;
        report
            .differences
            .extend(diffs.into_iter().map(|(id, records)| Difference {
                id,
                replicas: p.owners.iter().map(|n| n.id.clone()).zip(records).collect(),
            }));
    }
    report.differences.sort_by_key(|d| d.id);
    Ok(report)
}

/// Compares one planned range; returns its differences (in id order) and counts.
pub async fn compare_range(
    client: &Client,
    planned: &PlannedRange,
    config: Config,
) -> Result<(crate::reconcile::Differences, CompareStats), ClientError> {
    let peers = try_join_all(planned.owners.iter().map(|n| client.peer(n))).await?;
    let mut rec = Reconcile::new(vec![planned.partitions.ids()], peers.len(), config);
    while let Some(rounds) = rec.next_round() {
        let answers =
            try_join_all(peers.iter().zip(&rounds).map(|(p, round)| ask(p, round))).await?;
        rec.answer(answers).map_err(|e| ClientError::Unexpected {
            node: planned
                .owners
                .get(e.replica)
                .map_or_else(String::new, |n| n.id.clone()),
            request: "compare",
            what: e.to_string(),
        })?;
    }
    let stats = rec.stats();
    Ok((rec.into_differences(), stats))
}

/// Sends one round to one replica, cut into requests within the protocol's budget, on
/// parallel streams (nothing for an empty round).
async fn ask(peer: &Peer, round: &Round) -> Result<Answers, ClientError> {
    let answers = try_join_all(
        wire::compare_parts(round)
            .into_iter()
            .map(|part| async move {
                let asked = part.asks.len();
                match peer.call(&Request::from(part)).await? {
                    Response::Compared(a) if a.len() == asked => Ok(a),
                    other => Err(unexpected(peer, "compare", &other)),
                }
            }),
    )
    .await?;
    Ok(answers.into_iter().flatten().collect())
}

fn unexpected(peer: &Peer, request: &'static str, answer: &Response) -> ClientError {
    ClientError::Unexpected {
        node: peer.node.clone(),
        request,
        what: format!("{answer:?}").chars().take(120).collect(),
    }
}

/// Filters of an iteration.
#[derive(Debug, Clone, Default)]
pub struct IterateFilter {
    /// Only versions at or after this timestamp (ns).
    pub since: Option<u64>,
    /// Only versions carrying one of these user flags (empty: all).
    pub user_flags: Vec<u64>,
}

/// Streams every record of `range` on `node` into `tx`, batch by batch; returns the
/// number of records. Stops early (successfully) if the receiver goes away.
pub async fn iterate(
    client: &Client,
    node: &NodeEntry,
    range: IdRange,
    filter: &IterateFilter,
    tx: mpsc::Sender<Vec<(Id, Record)>>,
) -> Result<u64, ClientError> {
    let peer = client.peer(node).await?;
    let (mut send, mut recv) = peer
        .open(&Request::Iterate {
            range,
            since: filter.since,
            user_flags: filter.user_flags.clone(),
        })
        .await?;
    let _ = send.finish();
    let mut count = 0u64;
    let broken = |what: String| ClientError::Unexpected {
        node: peer.node.clone(),
        request: "iterate",
        what,
    };
    loop {
        match peer.next(&mut recv).await? {
            Some(Response::Iterated(batch)) => {
                count += batch.len() as u64;
                if tx.send(batch).await.is_err() {
                    return Ok(count);
                }
            }
            Some(Response::End { count: sent }) if sent == count => return Ok(count),
            Some(Response::End { count: sent }) => {
                return Err(broken(format!(
                    "an end after {count} records, claiming {sent}"
                )))
            }
            Some(other) => return Err(unexpected(&peer, "iterate", &other)),
            None => {
                return Err(broken(format!(
                    "a stream that ended after {count} records without its end mark"
                )))
            }
        }
    }
}

/// Merges streams of records sorted by id (one per replica) into one call of `f` per id
/// with every replica's record. Holds at most a few batches per replica.
pub async fn merge_sorted(
    mut streams: Vec<mpsc::Receiver<Vec<(Id, Record)>>>,
    mut f: impl FnMut(Id, Vec<Option<Record>>),
) {
    let n = streams.len();
    let mut heads: Vec<std::collections::VecDeque<(Id, Record)>> = vec![Default::default(); n];
    let mut open = vec![true; n];
    loop {
        for r in 0..n {
            while open[r] && heads[r].is_empty() {
                match streams[r].recv().await {
                    Some(batch) => heads[r].extend(batch),
                    None => open[r] = false,
                }
            }
        }
        let Some(min) = heads
            .iter()
            .filter_map(|h| h.front().map(|(id, _)| *id))
            .min()
        else {
            return;
        };
        let records = heads
            .iter_mut()
            .map(|h| match h.front() {
                Some((id, _)) if *id == min => h.pop_front().map(|(_, r)| r),
                _ => None,
            })
            .collect();
        f(min, records);
    }
}

/// Compares the groups of `scope` by iterating every record of every replica (the full
/// scan: what dnet_recovery does every run). Streams are merged as they arrive; memory
/// holds a few batches per replica plus the differences found.
pub async fn by_full_scan(
    client: &Client,
    scope: &Scope,
    filter: &IterateFilter,
) -> Result<CompareReport, ClientError> {
    let planned = plan(client, scope)?;
    let mut report = CompareReport {
        ranges: planned.len(),
        round_trips: 1,
        ..CompareReport::default()
    };
    for p in &planned {
        let range = p.partitions.ids();
        let (txs, rxs): (Vec<_>, Vec<_>) = p.owners.iter().map(|_| mpsc::channel(4)).unzip();
        let producers = try_join_all(
            p.owners
                .iter()
                .zip(txs)
                .map(|(node, tx)| iterate(client, node, range, filter, tx)),
        );
        let mut found = Vec::new();
        let consumer = merge_sorted(rxs, |id, records| {
            if crate::reconcile::differ(&records) {
                found.push(Difference {
                    id,
                    replicas: p.owners.iter().map(|n| n.id.clone()).zip(records).collect(),
                });
            }
        });
        let (counts, ()) = tokio::join!(producers, consumer);
        report.iterated += counts?.iter().sum::<u64>();
        report.differences.extend(found);
    }
    Ok(report)
}
