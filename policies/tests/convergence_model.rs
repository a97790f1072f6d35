//! Model-based convergence test: random cluster shapes, random histories of puts, deletes,
//! hand-offs, divergences and corruptions against real in-process nodes (QUIC on loopback,
//! port 0, [`MemoryStore`]s), then the engine's own runs with the built-in policies, and the
//! outcome checked against a plain model.
//!
//! **Shape.** 2–3 groups of 1–3 nodes each; every group's 65,536 partitions are cut at
//! random points and the pieces dealt to its nodes in turn, so groups own the same key on
//! differently-shaped nodes (and a node may own several ranges).
//!
//! **History** over 20 keys, 30–80 operations (a few slots left empty), timestamps drawn from a small range so
//! equal timestamps (tombstone wins, then the larger checksum) and stale writes are common:
//! - `Put`: a value to the key's owner in every group, or in some groups only (divergence);
//! - `Delete`: a tombstone, likewise to all groups or some;
//! - `HandOff`: a value or tombstone written to a node of one group that does not own the
//!   key (what a client does while the owner is down; with a single-node group it goes to
//!   the owner);
//! - `Corrupt`: one node's healthy copy of a live value is marked corrupt, exactly the
//!   state `mend scrub` leaves when a value fails its checksum.
//!
//! Every write's outcome is checked against the model's prediction (`Written` when the
//! model's rule accepts it, `Stale` otherwise), and after the history every node's store
//! must equal the model's copy of it. A write answered `Written` is *acknowledged*; per key,
//! the model keeps the newest acknowledged version (DESIGN's order, recomputed here from
//! timestamp, tombstone flag and checksum, not with the engine's comparator).
//!
//! **What is modelled honestly about corruption.** A corrupt copy's value is gone: the
//! design (and the store) treats it as absent, so if *every* copy of the newest version
//! were corrupt, that version cannot come back and an older healthy one wins — that is
//! loss by definition, tested at the policy level (`tests/corruption.rs`), not here. The
//! generator therefore corrupts a copy only when another healthy copy of the key's newest
//! acknowledged version remains somewhere in the cluster (any group, owner or misplaced);
//! corrupting older versions is always allowed. Tombstones are never corrupted (scrub never
//! marks one: it has no value to re-hash).
//!
//! **Recovery, in this order**: `merge` over every group, then `dc` over all groups, then —
//! only when the model says the first `merge` left reported copies behind — a clean-up
//! `merge`. Why this order: `dc` compares only each group's owners, so a version that lives
//! only in a hand-off must first be moved to its owner by `merge`, or `dc` cannot see it.
//! The clean-up `merge` is needed for one case the model predicts exactly: a misplaced
//! *corrupt* copy newer than every healthy version in its group is, by the merge policy,
//! left in place and reported as unrecoverable (removing it would drop the last trace of a
//! newer write as far as that group can tell); once `dc` has brought the newest version
//! from another group to the owner, the next `merge` removes it.
//!
//! **Asserted:**
//! - the first `merge` fails exactly the keys the model predicts (above), `dc` fails none,
//!   the clean-up `merge` fails none and removes exactly the leftover misplaced copies;
//! - afterwards every group's owner holds exactly the newest acknowledged version of every
//!   key, healthy (a tombstone stays a tombstone; a key never written is absent
//!   everywhere), and reading it back gives the model's bytes: no acknowledged newest
//!   version is lost;
//! - no misplaced copy remains, except with `--safe`, where every misplaced copy is exactly
//!   what the history left there;
//! - a second `merge` + `dc` changes nothing: no copy, no removal, no failure, every store
//!   as before (and without `--safe`, no key even differs).
//!
//! `PROPTEST_CASES` overrides the number of cases (default 24); a failure prints the
//! shrunk shape and history.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mend_engine::client::{Bootstrap, Client, ReadOutcome, ValueSource};
use mend_engine::node::{self, RunningNode};
use mend_engine::pki::{write_cluster_pki, Credentials};
use mend_engine::route::{NodeEntry, PartitionRange, RouteList};
use mend_engine::run::{self, KeySource, Mode, RunConfig, RunObserver, RunReport};
use mend_engine::store::{MemoryStore, PutOutcome, Store};
use mend_engine::{Id, IdRange, Version};
use mend_policies::{DcPolicy, MergePolicy};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const KEYS: usize = 20;
const PARTITIONS: u32 = 65_536;
/// Timestamps come from `1..=MAX_TS`: small, so ties and stale writes happen.
const MAX_TS: u64 = 16;
/// A case that takes longer than this is a hang, not a slow run.
const CASE_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Shapes and histories.

/// One group: its node count and the cut points of its partition space.
#[derive(Debug, Clone)]
struct GroupShape {
    nodes: usize,
    cuts: Vec<u16>,
}

impl GroupShape {
    /// The partition ranges of each node: the space cut at `cuts` (0 and duplicates
    /// ignored), the pieces dealt to the nodes in turn; evenly split when there are fewer
    /// pieces than nodes.
    fn ranges(&self) -> Vec<Vec<PartitionRange>> {
        let points: BTreeSet<u32> = self
            .cuts
            .iter()
            .map(|c| u32::from(*c))
            .filter(|c| *c > 0)
            .collect();
        let mut bounds = vec![0u32];
        bounds.extend(points);
        bounds.push(PARTITIONS);
        let pieces: Vec<PartitionRange> = bounds
            .windows(2)
            .map(|w| PartitionRange {
                first: w[0] as u16,
                last: (w[1] - 1) as u16,
            })
            .collect();
        let mut out = vec![Vec::new(); self.nodes];
        if pieces.len() < self.nodes {
            for (i, r) in mend_engine::route::split_evenly(self.nodes as u32)
                .into_iter()
                .enumerate()
            {
                out[i].push(r);
            }
        } else {
            for (i, r) in pieces.into_iter().enumerate() {
                out[i % self.nodes].push(r);
            }
        }
        out
    }
}

/// A value: which of a few per key, and whether it is large (streamed in chunks rather
/// than sent whole). The same choice always gives the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Val {
    which: u8,
    big: bool,
}

fn value_bytes(key: usize, v: Val) -> Vec<u8> {
    let small = format!("key {key} value {}", v.which).into_bytes();
    if !v.big {
        return small;
    }
    // Larger than the node's small-value limit (256 KiB): goes through an upload.
    small.iter().copied().cycle().take(300_000).collect()
}

/// Which groups an operation goes to: bit `i` is the `i`-th group; no bit of an existing
/// group means every group.
#[derive(Debug, Clone, Copy)]
struct Groups(u8);

#[derive(Debug, Clone)]
enum Op {
    /// A value to the owner in the selected groups.
    Put {
        key: usize,
        groups: Groups,
        ts: u64,
        value: Val,
    },
    /// A tombstone to the owner in the selected groups.
    Delete { key: usize, groups: Groups, ts: u64 },
    /// A value (or, with `None`, a tombstone) to a node that does not own the key in one
    /// group (the `node`-th such node, modulo their number).
    HandOff {
        key: usize,
        group: usize,
        node: usize,
        ts: u64,
        value: Option<Val>,
    },
    /// Marks one node's healthy copy of a live value corrupt (the `node`-th node of the
    /// group holding one, modulo their number), when the model allows it (module docs).
    Corrupt {
        key: usize,
        group: usize,
        node: usize,
    },
}

/// A shape, a history and whether runs are `--safe`. The history is a list of slots, a
/// few of them empty: shrinking empties the slots a failure does not need, so a failing
/// case prints only the operations that matter (with their slot numbers).
#[derive(Clone)]
struct Case {
    groups: Vec<GroupShape>,
    ops: Vec<Option<Op>>,
    safe: bool,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ops: BTreeMap<usize, &Op> = self
            .ops
            .iter()
            .enumerate()
            .filter_map(|(i, op)| Some((i, op.as_ref()?)))
            .collect();
        f.debug_struct("Case")
            .field("groups", &self.groups)
            .field("safe", &self.safe)
            .field("ops", &ops)
            .finish()
    }
}

fn group_shape() -> impl Strategy<Value = GroupShape> {
    (1usize..=3).prop_flat_map(|nodes| {
        proptest::collection::vec(any::<u16>(), 0..=2 * nodes)
            .prop_map(move |cuts| GroupShape { nodes, cuts })
    })
}

fn groups_sel() -> impl Strategy<Value = Groups> {
    prop_oneof![2 => Just(Groups(0)), 1 => (1u8..8).prop_map(Groups)]
}

fn val() -> impl Strategy<Value = Val> {
    (0u8..3, proptest::bool::weighted(0.08)).prop_map(|(which, big)| Val { which, big })
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEYS;
    let ts = 1..=MAX_TS;
    prop_oneof![
        5 => (key.clone(), groups_sel(), ts.clone(), val())
            .prop_map(|(key, groups, ts, value)| Op::Put { key, groups, ts, value }),
        2 => (key.clone(), groups_sel(), ts.clone())
            .prop_map(|(key, groups, ts)| Op::Delete { key, groups, ts }),
        3 => (key.clone(), 0usize..3, 0usize..3, ts, proptest::option::weighted(0.8, val()))
            .prop_map(|(key, group, node, ts, value)| Op::HandOff { key, group, node, ts, value }),
        2 => (key, 0usize..3, 0usize..3)
            .prop_map(|(key, group, node)| Op::Corrupt { key, group, node }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec(group_shape(), 2..=3),
        proptest::collection::vec(proptest::option::weighted(0.95, op()), 30..=80),
        proptest::bool::weighted(0.25),
    )
        .prop_map(|(groups, ops, safe)| Case { groups, ops, safe })
}

// ---------------------------------------------------------------------------------------
// The model.

/// DESIGN's "newest", written out again: larger timestamp, then a tombstone over live data,
/// then the larger checksum. (Two versions equal in these are equal in every field here:
/// the checksum fixes the value and so its size; user flags are always 0.)
fn newer(a: &Version, b: &Version) -> bool {
    (a.timestamp, a.is_tombstone(), a.checksum) > (b.timestamp, b.is_tombstone(), b.checksum)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    version: Version,
    corrupt: bool,
}

/// What every node holds, per key, and what was acknowledged.
#[derive(Debug, Clone)]
struct Model {
    /// `nodes[g][n]`: key → what node `n` of group `g` holds.
    nodes: Vec<Vec<BTreeMap<usize, Held>>>,
    /// Per key, the newest version a node answered `Written` to.
    acked: Vec<Option<Version>>,
    /// Values by checksum, to check what is read back.
    values: BTreeMap<[u8; 32], Vec<u8>>,
    /// Operations that changed nothing in the model (corruptions it did not allow, …),
    /// for the failure message.
    skipped: Vec<usize>,
}

impl Model {
    /// The store's rule: a write is taken if nothing is stored, the stored copy is
    /// corrupt, or it is strictly newer.
    fn accepts(held: Option<&Held>, v: &Version) -> bool {
        match held {
            None => true,
            Some(h) => h.corrupt || newer(v, &h.version),
        }
    }

    fn write(&mut self, g: usize, n: usize, key: usize, v: Version) -> bool {
        let slot = self.nodes[g][n].get(&key);
        if !Model::accepts(slot, &v) {
            return false;
        }
        self.nodes[g][n].insert(
            key,
            Held {
                version: v,
                corrupt: false,
            },
        );
        if self.acked[key].is_none_or(|a| newer(&v, &a)) {
            self.acked[key] = Some(v);
        }
        true
    }

    /// Healthy copies of `v` of `key` anywhere, but on node `(g, n)`.
    fn healthy_elsewhere(&self, key: usize, v: &Version, g: usize, n: usize) -> usize {
        self.nodes
            .iter()
            .enumerate()
            .flat_map(|(gi, ns)| ns.iter().enumerate().map(move |(ni, m)| (gi, ni, m)))
            .filter(|(gi, ni, _)| (*gi, *ni) != (g, n))
            .filter(|(_, _, m)| m.get(&key).is_some_and(|h| !h.corrupt && h.version == *v))
            .count()
    }
}

// ---------------------------------------------------------------------------------------
// The cluster.

struct Cluster {
    dir: tempfile::TempDir,
    route: RouteList,
    /// `stores[g][n]`, shared with the running node.
    stores: Vec<Vec<Arc<MemoryStore>>>,
    nodes: Vec<RunningNode>,
    client: Client,
    ids: Vec<Id>,
}

/// A temp dir on tmpfs where there is one: the run journal's fsyncs are not what this test
/// is about, and nodes that start within one tick of the file system's clock are.
fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::Builder::new()
            .prefix("mend-model")
            .tempdir_in(shm)
        {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

fn node_name(g: usize, n: usize) -> String {
    format!("g{}n{}", g + 1, n + 1)
}

impl Cluster {
    async fn start(shape: &[GroupShape]) -> Cluster {
        let dir = scratch_dir();
        let mut entries = Vec::new();
        for (g, group) in shape.iter().enumerate() {
            for (n, partitions) in group.ranges().into_iter().enumerate() {
                entries.push(NodeEntry {
                    id: node_name(g, n),
                    group: g as u32 + 1,
                    addr: "127.0.0.1:0".into(),
                    data_dir: PathBuf::from(format!("data/{}", node_name(g, n))),
                    partitions,
                });
            }
        }
        let names: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        write_cluster_pki(dir.path(), "model", &names).unwrap();
        RouteList {
            name: "model".into(),
            epoch: 1,
            nodes: entries,
        }
        .save(dir.path())
        .unwrap();
        let mut stores = Vec::new();
        let mut nodes = Vec::new();
        for (g, group) in shape.iter().enumerate() {
            let mut in_group = Vec::new();
            for n in 0..group.nodes {
                let store = Arc::new(MemoryStore::new());
                let shared: Arc<dyn Store> = store.clone();
                nodes.push(
                    node::start(dir.path(), &node_name(g, n), shared)
                        .await
                        .unwrap(),
                );
                in_group.push(store);
            }
            stores.push(in_group);
        }
        // Every node recorded its port: the client uses the final list.
        let route = RouteList::load(dir.path()).unwrap();
        let client = Client::connect(
            &Credentials::for_client(dir.path()).unwrap(),
            Bootstrap::Route(route.clone()),
        )
        .await
        .unwrap();
        let ids = (0..KEYS)
            .map(|k| Id::from_key(format!("key-{k}").as_bytes()))
            .collect();
        Cluster {
            dir,
            route,
            stores,
            nodes,
            client,
            ids,
        }
    }

    fn entry(&self, g: usize, n: usize) -> &NodeEntry {
        self.route.node(&node_name(g, n)).unwrap()
    }

    /// The index of the owner of `key` in group `g`.
    fn owner(&self, g: usize, key: usize) -> usize {
        let owner = self
            .route
            .owner_of(g as u32 + 1, &self.ids[key])
            .unwrap()
            .id
            .clone();
        (0..self.stores[g].len())
            .find(|n| node_name(g, *n) == owner)
            .unwrap()
    }

    /// Every node's store as key → record, checked to hold only the model's ids.
    fn snapshot(&self) -> Vec<Vec<BTreeMap<usize, Held>>> {
        self.stores
            .iter()
            .map(|group| {
                group
                    .iter()
                    .map(|store| {
                        store
                            .scan(&IdRange::ALL, None, 10_000)
                            .unwrap()
                            .into_iter()
                            .map(|(id, r)| {
                                let key = self
                                    .ids
                                    .iter()
                                    .position(|k| *k == id)
                                    .unwrap_or_else(|| panic!("a store holds unknown id {id}"));
                                (
                                    key,
                                    Held {
                                        version: r.version,
                                        corrupt: r.corrupt,
                                    },
                                )
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect()
    }

    async fn run(&self, mode: Mode, safe: bool, name: &str) -> RunReport {
        let config = RunConfig {
            mode,
            groups: (1..=self.stores.len() as u32).collect(),
            only_node: None,
            source: KeySource::Fingerprints,
            user_flags: Vec::new(),
            run_dir: self.dir.path().join("runs").join(name),
            safe,
            dry_run: false,
            concurrency: 8,
            batch: 64,
            chunk_size: 64 << 10,
            attempts: 3,
            resume: false,
            max_bytes_per_sec: 0,
            max_keys_per_sec: 0,
            per_node: 0,
            stop: run::Stop::default(),
        };
        let policy: Box<dyn mend_engine::policy::RecoveryPolicy> = match mode {
            Mode::Merge => Box::new(MergePolicy::new()),
            Mode::Dc => Box::new(DcPolicy::default()),
        };
        run::run(&self.client, &config, &*policy, &Quiet)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// Closes the client's connections, then stops every node at once (each waits for
    /// its connections to drain).
    async fn shutdown(self) {
        self.client
            .pool()
            .endpoint()
            .close(0u32.into(), b"test over");
        let stopping: Vec<_> = self
            .nodes
            .into_iter()
            .map(|n| tokio::spawn(n.shutdown()))
            .collect();
        for s in stopping {
            s.await.unwrap();
        }
    }
}

struct Quiet;
impl RunObserver for Quiet {}

// ---------------------------------------------------------------------------------------
// The property.

/// Fails the case with a message (proptest then shrinks).
macro_rules! check {
    ($cond:expr, $($fmt:tt)*) => {
        if !$cond {
            return Err(TestCaseError::fail(format!($($fmt)*)));
        }
    };
}

fn selected(groups: Groups, count: usize) -> Vec<usize> {
    let picked: Vec<usize> = (0..count).filter(|g| groups.0 & (1 << g) != 0).collect();
    if picked.is_empty() {
        (0..count).collect()
    } else {
        picked
    }
}

/// Applies the history to the cluster and the model; every write's outcome must be the
/// one the model predicts.
async fn apply(c: &Cluster, ops: &[Option<Op>]) -> Result<Model, TestCaseError> {
    let groups = c.stores.len();
    let mut m = Model {
        nodes: c
            .stores
            .iter()
            .map(|g| vec![BTreeMap::new(); g.len()])
            .collect(),
        acked: vec![None; KEYS],
        values: BTreeMap::new(),
        skipped: Vec::new(),
    };
    for (i, op) in ops.iter().enumerate() {
        let Some(op) = op else { continue };
        let mut writes: Vec<(usize, usize, usize, Version, Vec<u8>)> = Vec::new();
        match op {
            Op::Put {
                key,
                groups: sel,
                ts,
                value,
            } => {
                let bytes = value_bytes(*key, *value);
                let v = Version::of_value(&bytes, *ts, 0);
                for g in selected(*sel, groups) {
                    writes.push((g, c.owner(g, *key), *key, v, bytes.clone()));
                }
            }
            Op::Delete {
                key,
                groups: sel,
                ts,
            } => {
                for g in selected(*sel, groups) {
                    writes.push((g, c.owner(g, *key), *key, Version::tombstone(*ts), vec![]));
                }
            }
            Op::HandOff {
                key,
                group,
                node,
                ts,
                value,
            } => {
                let g = group % groups;
                let owner = c.owner(g, *key);
                let others: Vec<usize> = (0..c.stores[g].len()).filter(|n| *n != owner).collect();
                let n = if others.is_empty() {
                    owner
                } else {
                    others[node % others.len()]
                };
                let (v, bytes) = match value {
                    Some(val) => {
                        let bytes = value_bytes(*key, *val);
                        (Version::of_value(&bytes, *ts, 0), bytes)
                    }
                    None => (Version::tombstone(*ts), vec![]),
                };
                writes.push((g, n, *key, v, bytes));
            }
            Op::Corrupt { key, group, node } => {
                let g = group % groups;
                let holders: Vec<usize> = (0..c.stores[g].len())
                    .filter(|n| {
                        m.nodes[g][*n]
                            .get(key)
                            .is_some_and(|h| !h.corrupt && !h.version.is_tombstone())
                    })
                    .collect();
                if holders.is_empty() {
                    m.skipped.push(i);
                    continue;
                }
                let n = holders[node % holders.len()];
                let held = m.nodes[g][n][key];
                let newest = m.acked[*key].expect("a held key was acknowledged");
                if held.version == newest && m.healthy_elsewhere(*key, &newest, g, n) == 0 {
                    // The last healthy copy of the newest version: not modelled (see the
                    // module docs).
                    m.skipped.push(i);
                    continue;
                }
                let marked = c.stores[g][n]
                    .mark_corrupt(&c.ids[*key], &held.version)
                    .unwrap();
                check!(marked, "op {i}: {} did not hold {held:?}", node_name(g, n));
                m.nodes[g][n].get_mut(key).unwrap().corrupt = true;
            }
        }
        for (g, n, key, v, bytes) in writes {
            m.values.insert(v.checksum, bytes.clone());
            let outcome = c
                .client
                .write_to(c.entry(g, n), &c.ids[key], v, ValueSource::Bytes(&bytes))
                .await
                .unwrap_or_else(|e| panic!("op {i}: write to {}: {e}", node_name(g, n)));
            let expected = m.write(g, n, key, v);
            check!(
                (outcome == PutOutcome::Written) == expected,
                "op {i} ({op:?}): {} answered {outcome:?}, the model expected {}",
                node_name(g, n),
                if expected { "Written" } else { "Stale" }
            );
        }
    }
    let actual = c.snapshot();
    check!(
        actual == m.nodes,
        "after the history the stores differ from the model:\nstores {actual:?}\nmodel {:?}",
        m.nodes
    );
    Ok(m)
}

/// What the first merge must report and leave behind, from the state before it: in every
/// group with misplaced copies of a key, the group's winner is its newest healthy copy;
/// a misplaced copy newer than it (only a corrupt one can be), or any misplaced copy when
/// the group holds nothing healthy, is reported and left in place.
fn merge_leftovers(c: &Cluster, m: &Model) -> (Vec<Id>, usize) {
    let mut failed = Vec::new();
    let mut left = 0;
    for (g, nodes) in m.nodes.iter().enumerate() {
        for key in 0..KEYS {
            let owner = c.owner(g, key);
            let misplaced: Vec<&Held> = nodes
                .iter()
                .enumerate()
                .filter(|(n, _)| *n != owner)
                .filter_map(|(_, held)| held.get(&key))
                .collect();
            if misplaced.is_empty() {
                continue;
            }
            let winner = nodes
                .iter()
                .filter_map(|held| held.get(&key))
                .filter(|h| !h.corrupt)
                .map(|h| h.version)
                .reduce(|a, b| if newer(&b, &a) { b } else { a });
            let stuck = misplaced
                .iter()
                .filter(|h| winner.is_none_or(|w| newer(&h.version, &w)))
                .count();
            if stuck > 0 {
                failed.push(c.ids[key]);
                left += stuck;
            }
        }
    }
    failed.sort();
    (failed, left)
}

fn failed_ids(report: &RunReport) -> Vec<Id> {
    let mut ids: Vec<Id> = report.failed.iter().map(|(id, _)| *id).collect();
    ids.sort();
    ids
}

async fn converges(case: &Case) -> Result<(), TestCaseError> {
    let c = Cluster::start(&case.groups).await;
    let result = check_case(&c, case).await;
    c.shutdown().await;
    result
}

async fn check_case(c: &Cluster, case: &Case) -> Result<(), TestCaseError> {
    let m = apply(c, &case.ops).await?;
    let before = m.nodes.clone();
    let (expect_failed, leftovers) = merge_leftovers(c, &m);
    let misplaced_before: usize = (0..c.stores.len())
        .map(|g| {
            (0..KEYS)
                .map(|k| {
                    let owner = c.owner(g, k);
                    (0..c.stores[g].len())
                        .filter(|n| *n != owner && before[g][*n].contains_key(&k))
                        .count()
                })
                .sum::<usize>()
        })
        .sum();

    // Recovery: merge, dc, clean-up merge.
    let merge = c.run(Mode::Merge, case.safe, "merge-1").await;
    check!(
        merge.failed_ranges.is_empty() && !merge.stopped,
        "merge: {:?}",
        merge.failed_ranges
    );
    check!(
        failed_ids(&merge) == expect_failed,
        "merge failed {:?}, the model expected {expect_failed:?}",
        merge.failed
    );
    if !case.safe {
        check!(
            merge.stats.removed as usize == misplaced_before - leftovers,
            "merge removed {} misplaced copies, the model expected {}",
            merge.stats.removed,
            misplaced_before - leftovers
        );
    }
    let dc = c.run(Mode::Dc, case.safe, "dc-1").await;
    check!(dc.converged(), "dc: {:?} {:?}", dc.failed, dc.failed_ranges);
    // The clean-up merge, when the model says the first one left reported copies behind
    // (otherwise it is the second pass's merge below, and must be a no-op there).
    if leftovers > 0 {
        let cleanup = c.run(Mode::Merge, case.safe, "merge-2").await;
        check!(
            cleanup.converged(),
            "clean-up merge: {:?} {:?}",
            cleanup.failed,
            cleanup.failed_ranges
        );
        check!(
            cleanup.stats.copied == 0,
            "clean-up merge copied {} versions",
            cleanup.stats.copied
        );
        let expect_removed = if case.safe { 0 } else { leftovers };
        check!(
            cleanup.stats.removed as usize == expect_removed,
            "clean-up merge removed {}, the model expected {expect_removed}",
            cleanup.stats.removed
        );
    }

    // The final state.
    let after = c.snapshot();
    for (g, nodes) in after.iter().enumerate() {
        for key in 0..KEYS {
            let owner = c.owner(g, key);
            let want = m.acked[key];
            let got = nodes[owner].get(&key);
            check!(
                got.map(|h| h.version) == want && got.is_none_or(|h| !h.corrupt),
                "key {key} in group {}: owner {} holds {got:?}, the newest acknowledged is {want:?}",
                g + 1,
                node_name(g, owner)
            );
            for (n, held) in nodes.iter().enumerate().filter(|(n, _)| *n != owner) {
                let expect = if case.safe {
                    before[g][n].get(&key)
                } else {
                    None
                };
                check!(
                    held.get(&key) == expect,
                    "key {key}: misplaced copy on {} is {:?}, expected {expect:?}",
                    node_name(g, n),
                    held.get(&key)
                );
            }
            // The bytes arrived too, not only the version.
            if let Some(v) = want {
                let mut value = Vec::new();
                let read = c
                    .client
                    .read_from(c.entry(g, owner), &c.ids[key], &mut value)
                    .await
                    .unwrap();
                if v.is_tombstone() {
                    check!(
                        read == ReadOutcome::Tombstone(v),
                        "key {key}: {read:?}, expected the tombstone {v:?}"
                    );
                } else {
                    check!(
                        read == ReadOutcome::Value(v) && value == m.values[&v.checksum],
                        "key {key} on {}: read {read:?} of {} bytes, expected {v:?}",
                        node_name(g, owner),
                        value.len()
                    );
                }
            }
        }
    }

    // A second pass is a no-op.
    let merge2 = c.run(Mode::Merge, case.safe, "merge-3").await;
    let dc2 = c.run(Mode::Dc, case.safe, "dc-2").await;
    for (name, r) in [("merge", &merge2), ("dc", &dc2)] {
        check!(
            r.converged()
                && r.stats.copied == 0
                && r.stats.removed == 0
                && r.stats.already_current == 0
                && r.stats.merged == 0,
            "second {name} was not a no-op: {:?} {:?}",
            r.stats,
            r.failed
        );
        if !case.safe {
            check!(
                r.stats.differing == 0,
                "second {name} found {} keys differing",
                r.stats.differing
            );
        }
    }
    check!(c.snapshot() == after, "the second pass changed the stores");
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        // Each case starts a cluster (about 0.2 s a step): shrink within 4 minutes.
        max_shrink_iters: 2_000,
        max_shrink_time: 240_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn dc_and_merge_converge_to_the_model(case in case()) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::time::timeout(CASE_TIMEOUT, converges(&case))
                .await
                .unwrap_or_else(|_| panic!("the case did not finish within {CASE_TIMEOUT:?}"))
        })?;
    }
}
