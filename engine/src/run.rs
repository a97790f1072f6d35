//! The sync pipeline of `mend dc` (and, with the merge policy, `mend merge`):
//! plan ranges → compare (fingerprints) or iterate → gather versions into temp metadata
//! files → k-way merge into [`KeyState`]s → decide (a [`RecoveryPolicy`]) → validate →
//! execute with bounded concurrency.
//!
//! Memory stays bounded whatever the key count: gathered versions go to files, the merge
//! holds one head per file, and keys are decided and executed a batch at a time.
//! Every failure is counted and named; a failed key's id lands in the failed list so the
//! run can be retried with `-f`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt, TryStreamExt};

use crate::client::{Client, ClientError};
use crate::compare::{self, IterateFilter, PlannedRange, Scope};
use crate::kmerge;
use crate::metafile::{MetaError, MetaHeader, MetaWriter};
use crate::policy::{self, Action, KeyState, RecoveryPolicy, Replica};
use crate::reconcile::Config;
use crate::route::NodeEntry;
use crate::store::PutOutcome;
use crate::version::FLAG_MERGEABLE;
use crate::wire::{Request, Response};
use crate::{Id, IdRange, Record, Version};

/// Where the keys of a run come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// Compare range fingerprints; only differing keys are gathered (the default).
    Fingerprints,
    /// Iterate every version of every replica (`--full-scan`).
    FullScan,
    /// Iterate versions written at or after this time (ns) (`-t`).
    Since(u64),
    /// Look these ids up in every group (`-f DUMP`).
    Ids(Vec<Id>),
}

/// Which recovery a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Across groups: each range's owner in every group is a replica.
    Dc,
    /// Inside each group: misplaced copies on nodes that do not own the range, and the
    /// owner; the first replica of every key is its owner.
    Merge,
}

/// How a run is carried out.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// dc or merge.
    pub mode: Mode,
    /// The groups, in the order replicas are listed in each [`KeyState`].
    pub groups: Vec<u32>,
    /// Only the ranges this node owns (`-o`).
    pub only_node: Option<String>,
    /// Where keys come from.
    pub source: KeySource,
    /// Keep only versions carrying one of these user flags (empty: all).
    pub user_flags: Vec<u64>,
    /// The run dir for temp metadata files (created; the caller removes it).
    pub run_dir: PathBuf,
    /// Never remove anything.
    pub safe: bool,
    /// Decide and report; change nothing.
    pub dry_run: bool,
    /// Keys executed at once (`-n`).
    pub concurrency: usize,
    /// Keys decided per batch (`-b`).
    pub batch: usize,
    /// Bytes per chunk when copying values.
    pub chunk_size: usize,
    /// Attempts per write before a key fails.
    pub attempts: u32,
    /// Continue the run in `run_dir`: skip the ranges its journal says are done.
    pub resume: bool,
    /// Copy at most this many value bytes per second (0: no limit).
    pub max_bytes_per_sec: u64,
    /// Recover at most this many keys per second (0: no limit).
    pub max_keys_per_sec: u64,
    /// Actions touching one node at once (0: as many as `concurrency`).
    pub per_node: usize,
    /// Asks the run to stop after the batch of keys in hand (SIGTERM).
    pub stop: Stop,
}

/// A request to stop a run early, shared with whoever receives the signal. The run
/// finishes the batch of keys it is executing, journals nothing for the range batch it
/// was in, and returns with [`RunReport::stopped`] set: `--resume` does the rest.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// Asks the run to stop.
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was asked for.
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Partitions per range batch: a run journals, gathers and recovers range batches, so an
/// interrupted run resumes at this granularity (16 batches cover the id space).
pub const RANGE_BATCH_PARTITIONS: u32 = 4096;

/// The journal of a run dir: one line per range batch that converged.
pub const JOURNAL: &str = "journal";

/// What a run dir was started with, so a resume continues the same run.
pub const RUN_FILE: &str = "run.json";

/// Cuts planned ranges into batches of at most [`RANGE_BATCH_PARTITIONS`].
fn batches(planned: Vec<PlannedRange>) -> Vec<PlannedRange> {
    let mut out = Vec::new();
    for p in planned {
        let mut first = u32::from(p.partitions.first);
        let last = u32::from(p.partitions.last);
        while first <= last {
            let end = (first + RANGE_BATCH_PARTITIONS - 1).min(last);
            out.push(PlannedRange {
                partitions: crate::route::PartitionRange {
                    first: first as u16,
                    last: end as u16,
                },
                owners: p.owners.clone(),
            });
            first = end + 1;
        }
    }
    out
}

/// A description of the plan, stored in `run.json` and compared on resume.
fn plan_text(config: &RunConfig, planned: &[PlannedRange]) -> String {
    let ranges: Vec<String> = planned
        .iter()
        .map(|p| {
            let owners: Vec<&str> = p.owners.iter().map(|n| n.id.as_str()).collect();
            format!("{} {}", p.partitions, owners.join(","))
        })
        .collect();
    let source = match &config.source {
        KeySource::Fingerprints => "fingerprints".to_string(),
        KeySource::FullScan => "full-scan".to_string(),
        KeySource::Since(t) => format!("since {t}"),
        KeySource::Ids(ids) => format!("{} ids", ids.len()),
    };
    format!(
        "{{\"mode\": \"{:?}\", \"groups\": {:?}, \"source\": \"{source}\", \"ranges\": {:?}}}\n",
        config.mode, config.groups, ranges
    )
}

/// Range batches the journal of `run_dir` records as done.
pub fn journal_done(run_dir: &Path) -> Result<std::collections::BTreeSet<usize>, std::io::Error> {
    match std::fs::read_to_string(run_dir.join(JOURNAL)) {
        Ok(text) => Ok(text
            .lines()
            .filter_map(|l| l.strip_prefix("done "))
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
        Err(e) => Err(e),
    }
}

/// The range batches the journal of `run_dir` records as done, for a resume of `planned`.
/// Every line must be a complete `done INDEX PARTITIONS` naming a range batch of this plan:
/// a line torn by a crash, overwritten or zero-filled could claim a batch that was never
/// done, so a journal with one is not trusted and the run is not resumed.
fn journal_check(
    run_dir: &Path,
    planned: &[PlannedRange],
) -> Result<std::collections::BTreeSet<usize>, RunError> {
    let path = run_dir.join(JOURNAL);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => {
            return Err(RunError::Resume {
                path,
                why: e.to_string(),
            })
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut done = std::collections::BTreeSet::new();
    let mut lines: Vec<&str> = text.split('\n').collect();
    // After the last newline: nothing, unless the last line was cut short.
    let tail = lines.pop().unwrap_or_default();
    for (n, line) in lines
        .iter()
        .chain((!tail.is_empty()).then_some(&tail))
        .enumerate()
    {
        let words: Vec<&str> = line.split(' ').collect();
        let index = match words[..] {
            ["done", index, partitions] => index.parse::<usize>().ok().filter(|i| {
                planned
                    .get(*i)
                    .is_some_and(|p| p.partitions.to_string() == partitions)
            }),
            _ => None,
        };
        match index {
            Some(i) if n < lines.len() => {
                done.insert(i);
            }
            _ => {
                let shown: String = line.chars().take(60).collect();
                return Err(RunError::Resume {
                    path,
                    why: format!(
                        "line {} ({shown:?}) is not a complete record of a range batch of this \
                         run's plan: the journal is damaged; start a new run",
                        n + 1
                    ),
                });
            }
        }
    }
    Ok(done)
}

/// Checks that the temp files of range batch `p` are the ones the run gathered there: each
/// header names this batch's range and one of its replicas (the node and its group), each
/// replica once. A file swapped, copied over or left from elsewhere passes every CRC, so
/// it is caught here rather than merged as if it were this batch's.
fn check_headers(paths: &[PathBuf], p: &PlannedRange) -> Result<(), MetaError> {
    let range = p.partitions.ids();
    let mut slots = std::collections::BTreeSet::new();
    for path in paths {
        let reader = crate::metafile::MetaReader::open(path)?;
        let h = reader.header();
        let expected = p.owners.get(h.slot as usize);
        let fits = h.range == range
            && expected.is_some_and(|n| n.id == h.node && n.group == h.group)
            && slots.insert(h.slot);
        if !fits {
            return Err(MetaError::Mismatch {
                path: path.clone(),
                what: format!(
                    "its header says partitions {} slot {} node {} (group {}); this range \
                     batch is partitions {} with replicas {}, one file each",
                    format_args!(
                        "{:04x}-{:04x}",
                        h.range.start.partition(),
                        h.range
                            .end
                            .map_or(u16::MAX, |e| e.partition().wrapping_sub(1))
                    ),
                    h.slot,
                    h.node,
                    h.group,
                    p.partitions,
                    p.owners
                        .iter()
                        .map(|n| n.id.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            });
        }
    }
    Ok(())
}

fn journal_append(run_dir: &Path, index: usize, p: &PlannedRange) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join(JOURNAL))?;
    writeln!(f, "done {index} {}", p.partitions)?;
    f.sync_all()
}

/// Maps an I/O error on the run dir `run_dir` (or a file in it) to a [`RunError`].
fn run_dir_error(run_dir: &Path) -> impl Fn(std::io::Error) -> RunError + '_ {
    |source| RunError::RunDir {
        path: run_dir.to_path_buf(),
        source,
    }
}

/// A shared rate: callers take units and wait until the rate allows them.
#[derive(Debug)]
struct Rate {
    per_sec: u64,
    state: std::sync::Mutex<(std::time::Instant, f64)>,
}

impl Rate {
    fn new(per_sec: u64) -> Option<Rate> {
        (per_sec > 0).then(|| Rate {
            per_sec,
            state: std::sync::Mutex::new((std::time::Instant::now(), 0.0)),
        })
    }

    async fn take(rate: &Option<Rate>, units: u64) {
        let Some(rate) = rate else { return };
        let wait = {
            let mut s = rate.state.lock().expect("rate lock");
            s.1 += units as f64;
            let due = Duration::from_secs_f64(s.1 / rate.per_sec as f64);
            due.checked_sub(s.0.elapsed())
        };
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The politeness of a run: rates and a bound on actions per node.
#[derive(Debug)]
struct Limits {
    bytes: Option<Rate>,
    keys: Option<Rate>,
    /// `-n`: keys executed at once, over all the range batches under way.
    at_once: tokio::sync::Semaphore,
    per_node: usize,
    nodes: std::sync::Mutex<BTreeMap<String, std::sync::Arc<tokio::sync::Semaphore>>>,
}

impl Limits {
    /// The per-node bounds of both ends of a copy, taken in node-id order so that two
    /// copies cannot deadlock.
    async fn pair(&self, a: &NodeEntry, b: &NodeEntry) -> Vec<tokio::sync::OwnedSemaphorePermit> {
        let (lo, hi) = if a.id <= b.id { (a, b) } else { (b, a) };
        let mut permits = Vec::with_capacity(2);
        for n in if lo.id == hi.id {
            vec![lo]
        } else {
            vec![lo, hi]
        } {
            if let Ok(p) = self.node(&n.id).acquire_owned().await {
                permits.push(p);
            }
        }
        permits
    }

    fn node(&self, id: &str) -> std::sync::Arc<tokio::sync::Semaphore> {
        self.nodes
            .lock()
            .expect("limits lock")
            .entry(id.to_string())
            .or_insert_with(|| {
                std::sync::Arc::new(tokio::sync::Semaphore::new(self.per_node.max(1)))
            })
            .clone()
    }
}

/// The phases a run reports progress in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Comparing ranges and gathering versions.
    Gather,
    /// Deciding and executing.
    Recover,
}

/// What a run did with one key, for the CSV report.
#[derive(Debug, Clone)]
pub struct KeyReport {
    /// The key.
    pub id: Id,
    /// The action.
    pub action: &'static str,
    /// The source replica (`group:node`), if any.
    pub source: String,
    /// The destinations (`group:node` …).
    pub destinations: Vec<String>,
    /// The version acted on (source's), if any.
    pub version: Option<Version>,
    /// `ok`, `dry-run`, `kept (--safe)`, `already current`, `failed: …`.
    pub result: String,
}

/// Receives progress and per-key reports; the CLI draws bars and writes the CSV.
pub trait RunObserver: Send + Sync {
    /// A phase starts with `total` units (ranges, then keys).
    fn phase(&self, _phase: Phase, _total: u64) {}
    /// `n` more units of the current phase are done.
    fn advance(&self, _n: u64) {}
    /// `n` more value bytes were copied.
    fn bytes(&self, _n: u64) {}
    /// One action on one key was carried out (or not).
    fn report(&self, _report: &KeyReport) {}
}

/// Counts of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunStats {
    /// Ranges planned.
    pub ranges: u64,
    /// Ranges whose comparison or iteration failed.
    pub ranges_failed: u64,
    /// Ranges skipped because a resumed run's journal says they are done.
    pub ranges_resumed: u64,
    /// Versions gathered into metadata files.
    pub gathered: u64,
    /// Keys decided.
    pub keys: u64,
    /// Keys the policy acted on.
    pub differing: u64,
    /// Writes of a version to a replica that succeeded.
    pub copied: u64,
    /// Writes refused because the destination already held that version or a newer one.
    pub already_current: u64,
    /// Misplaced copies removed.
    pub removed: u64,
    /// Keys merged.
    pub merged: u64,
    /// Actions not carried out because of `--dry-run` or `--safe`, or skipped by the policy.
    pub skipped: u64,
    /// Keys that could not be recovered (no healthy replica).
    pub unrecoverable: u64,
    /// Keys whose recovery failed.
    pub failed: u64,
    /// Value bytes copied.
    pub bytes: u64,
    /// Bytes nodes sent each other in pushes (write-batch frames, values included); not
    /// in the engine's own wire traffic.
    pub node_to_node_bytes: u64,
    /// Per group: writes received.
    pub copied_to_group: BTreeMap<u32, u64>,
    /// Per node: versions gathered from it.
    pub gathered_from_node: BTreeMap<String, u64>,
    /// Per node: failures involving it.
    pub failed_on_node: BTreeMap<String, u64>,
}

/// What a run found and did.
#[derive(Debug, Default)]
pub struct RunReport {
    /// The counts.
    pub stats: RunStats,
    /// Keys that failed or could not be recovered, with why.
    pub failed: Vec<(Id, String)>,
    /// Ranges that failed, with why (their keys are unknown).
    pub failed_ranges: Vec<String>,
    /// The run stopped early on request ([`Stop`]); range batches not journaled are left
    /// for a resumed run.
    pub stopped: bool,
}

impl RunReport {
    /// Whether every selected key converged (a stopped run has not).
    pub fn converged(&self) -> bool {
        self.failed.is_empty() && self.failed_ranges.is_empty() && !self.stopped
    }
}

/// Errors that stop a run before it starts, or a temp file that cannot be trusted.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The route list, groups or node named are wrong, or a node could not be reached
    /// to plan.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A temp metadata file is torn or corrupt: the run stops rather than trust it.
    #[error("temp metadata file cannot be trusted: {0}")]
    Meta(#[from] MetaError),
    /// The policy failed as a whole; keys not yet decided were left unchanged.
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    /// A run dir cannot be resumed.
    #[error("cannot resume {path}: {why}")]
    Resume {
        /// The run file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The run dir could not be created.
    #[error("cannot create run dir {path}: {source}")]
    RunDir {
        /// The run dir.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the pipeline with `policy`.
pub async fn run(
    client: &Client,
    config: &RunConfig,
    policy: &dyn RecoveryPolicy,
    observer: &dyn RunObserver,
) -> Result<RunReport, RunError> {
    let scope = Scope {
        groups: config.groups.clone(),
        only_node: config.only_node.clone(),
    };
    let planned = batches(match config.mode {
        Mode::Dc => compare::plan(client, &scope)?,
        Mode::Merge => plan_merge(client, &scope)?,
    });
    let dir_error = run_dir_error(&config.run_dir);
    std::fs::create_dir_all(&config.run_dir).map_err(&dir_error)?;
    let plan = plan_text(config, &planned);
    let run_file = config.run_dir.join(RUN_FILE);
    let done = if config.resume {
        let started = std::fs::read_to_string(&run_file).map_err(&dir_error)?;
        if started != plan {
            return Err(RunError::Resume {
                path: run_file,
                why: "the plan differs (other groups, flags or route list): start a new run".into(),
            });
        }
        journal_check(&config.run_dir, &planned)?
    } else {
        std::fs::write(&run_file, &plan).map_err(&dir_error)?;
        Default::default()
    };
    let mut report = RunReport::default();
    report.stats.ranges = planned.len() as u64;
    report.stats.ranges_resumed = done.len() as u64;
    let limits = Limits {
        bytes: Rate::new(config.max_bytes_per_sec),
        keys: Rate::new(config.max_keys_per_sec),
        at_once: tokio::sync::Semaphore::new(config.concurrency.max(1)),
        per_node: if config.per_node == 0 {
            config.concurrency
        } else {
            config.per_node
        },
        nodes: Default::default(),
    };
    let pending: Vec<usize> = (0..planned.len()).filter(|i| !done.contains(i)).collect();

    // Gather: every range's versions into metadata files, several ranges at once.
    observer.phase(Phase::Gather, pending.len() as u64);
    let gathered: Vec<(usize, Option<Gathered>)> =
        stream::iter(pending.iter().map(|i| (*i, &planned[*i])))
            .map(|(i, p)| async move {
                // Asked to stop: the range batches not begun are left for a resume.
                if config.stop.requested() {
                    return (i, None);
                }
                let r = gather(client, config, i, p).await;
                observer.advance(1);
                (i, Some(r))
            })
            .buffer_unordered(4)
            .collect()
            .await;
    let mut files: BTreeMap<usize, Vec<PathBuf>> = BTreeMap::new();
    for (i, result) in gathered {
        match result {
            Some(Ok((paths, counts))) => {
                for (node, n) in counts {
                    report.stats.gathered += n;
                    *report.stats.gathered_from_node.entry(node).or_default() += n;
                }
                files.insert(i, paths);
            }
            None => report.stopped = true,
            Some(Err(why)) => {
                report.stats.ranges_failed += 1;
                report.failed_ranges.push(format!(
                    "partitions {}: {}",
                    planned[i].partitions,
                    name_nodes(why, &planned[i].owners)
                ));
            }
        }
    }

    // Merge, decide, execute: a few range batches at once, each a batch of keys at a time.
    observer.phase(Phase::Recover, report.stats.gathered);
    let down = Down::default();
    let report = std::sync::Mutex::new(report);
    let ranges = RangeContext {
        keys: KeyContext {
            client,
            config,
            policy,
            observer,
            down: &down,
            limits: &limits,
        },
        report: &report,
        deciding: &tokio::sync::Mutex::new(()),
    };
    // The first error ends the run: the range batches under way are dropped, and those
    // not begun never start.
    stream::iter(far_apart(files.into_iter().collect()))
        .map(|(i, paths)| recover_range(ranges, i, &planned[i], paths))
        .buffer_unordered(RANGES_AT_ONCE)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(report.into_inner().expect("report lock"))
}

/// Range batches recovered at once. One range batch keeps one pair of nodes busy (its
/// owners are one node of each group) and, inside a node, one shard of its store, since
/// its keys come in id order; several at once, far apart in the id space
/// ([`far_apart`]), keep more of both busy: the destination's writer gets batches for
/// both shards, and commits them at once. A 2 GiB bulk `mend dc` on loopback went from
/// 338-375 MB/s to 405-417 with 2 (alternating scratch copies); 3 and 4 were no faster.
const RANGES_AT_ONCE: usize = 2;

/// `ranges` (in id order) reordered so that neighbours in the new order are half the id
/// space apart: the first of the lower half, the first of the upper half, the second of
/// the lower half, and so on. Range batches taken at once from this order are owned by
/// different nodes where the route list gives each node a run of partitions, and fall in
/// different shards of a node's store. It is the order a run takes its range batches in.
pub fn far_apart<T>(mut ranges: Vec<T>) -> Vec<T> {
    let mut upper = ranges.split_off(ranges.len().div_ceil(2)).into_iter();
    let mut out = Vec::with_capacity(ranges.len() + upper.len());
    for r in ranges {
        out.push(r);
        out.extend(upper.next());
    }
    out
}

/// What recovering a range batch needs from its run: what its keys need, and the report,
/// shared by the range batches under way, each locking it briefly to add outcomes.
#[derive(Clone, Copy)]
struct RangeContext<'a> {
    keys: KeyContext<'a>,
    report: &'a std::sync::Mutex<RunReport>,
    /// Taken to decide a batch, and kept while a batch with merges is executed: no other
    /// batch is decided between a batch's decisions and its merges (a policy may keep what
    /// it decided for [`RecoveryPolicy::merge_values`], as the exec adapter keeps the
    /// merged values a plugin gave).
    deciding: &'a tokio::sync::Mutex<()>,
}

/// Merges, decides and executes range batch `i` from its metadata files, a batch of keys
/// at a time, and journals it if every key of it converged.
async fn recover_range(
    r: RangeContext<'_>,
    i: usize,
    p: &PlannedRange,
    paths: Vec<PathBuf>,
) -> Result<(), RunError> {
    let ctx = r.keys;
    let (client, config, policy) = (ctx.client, ctx.config, ctx.policy);
    let lock = || r.report.lock().expect("report lock");
    let mut failed_here = 0;
    check_headers(&paths, p)?;
    let mut merged = kmerge::merge_files(&paths, p.owners.len())?;
    loop {
        if config.stop.requested() {
            lock().stopped = true;
            // A range batch is done only when every key of it converged: a resumed run
            // redoes the others, and the one a stop interrupted.
            return Ok(());
        }
        let mut batch = Vec::with_capacity(config.batch);
        for item in merged.by_ref().take(config.batch.max(1)) {
            let (id, records) = item?;
            batch.push(key_state(config.mode, id, p, records));
        }
        if batch.is_empty() {
            break;
        }
        let n = batch.len() as u64;
        let fetch = Fetch {
            client,
            owners: &p.owners,
            runtime: tokio::runtime::Handle::current(),
        };
        // Decide the whole batch before acting on any of it, off the async threads (a
        // policy may be an external process).
        let mut deciding = Some(r.deciding.lock().await);
        let decisions = tokio::task::block_in_place(|| policy.decide_batch(&batch, &fetch))?;
        if decisions.len() != batch.len() {
            return Err(RunError::Policy(policy::PolicyError {
                policy: policy.name().to_string(),
                message: format!("{} decisions for {} keys", decisions.len(), batch.len()),
            }));
        }
        let merges = decisions
            .iter()
            .flatten()
            .any(|a| matches!(a, Action::Merge { .. }));
        if !merges {
            deciding = None;
        }
        // Small values go node to node in batches first; each key then takes its
        // copies' outcomes from there.
        let (pushed, bytes) = push_copies(ctx, p, &batch, &decisions).await;
        lock().stats.node_to_node_bytes += bytes;
        let keys = batch.into_iter().zip(decisions).zip(pushed);
        let outcomes: Vec<KeyOutcome> = stream::iter(keys)
            .map(|((key, actions), pushed)| async move {
                let _permit = ctx.limits.at_once.acquire().await;
                recover_key(ctx, p, key, actions, pushed).await
            })
            .buffer_unordered(config.concurrency.max(1))
            .collect()
            .await;
        drop(deciding);
        let mut report = lock();
        for o in outcomes {
            let before = report.failed.len();
            o.add_to(&mut report);
            failed_here += report.failed.len() - before;
        }
        drop(report);
        ctx.observer.advance(n);
    }
    if failed_here == 0 {
        journal_append(&config.run_dir, i, p).map_err(run_dir_error(&config.run_dir))?;
    }
    Ok(())
}

/// Transport errors name a peer by its address only: prefixes `why` with the ids of the
/// `nodes` whose address it mentions, so a failed range names the node that failed.
fn name_nodes(why: String, nodes: &[NodeEntry]) -> String {
    let mut named: Vec<&str> = nodes
        .iter()
        .filter(|n| why.contains(n.addr.as_str()))
        .map(|n| n.id.as_str())
        .collect();
    named.dedup();
    if named.is_empty() {
        why
    } else {
        format!("node {}: {why}", named.join(", "))
    }
}

/// What recovering one key needs from its run.
#[derive(Clone, Copy)]
struct KeyContext<'a> {
    client: &'a Client,
    config: &'a RunConfig,
    policy: &'a dyn RecoveryPolicy,
    observer: &'a dyn RunObserver,
    down: &'a Down,
    limits: &'a Limits,
}

/// Values for policies that ask for them: read from the replica's node, checksum checked.
struct Fetch<'a> {
    client: &'a Client,
    owners: &'a [NodeEntry],
    runtime: tokio::runtime::Handle,
}

impl policy::ValueFetch for Fetch<'_> {
    fn fetch(&self, key: &KeyState, replica: usize) -> Result<Vec<u8>, String> {
        let node = self
            .owners
            .get(replica)
            .ok_or_else(|| format!("no replica {replica}"))?;
        let mut value = Vec::new();
        match self
            .runtime
            .block_on(self.client.read_from(node, &key.id, &mut value))
        {
            Ok(crate::client::ReadOutcome::Value(_)) => Ok(value),
            Ok(other) => Err(format!(
                "node {} holds no value of {}: {other:?}",
                node.id, key.id
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

fn key_state(mode: Mode, id: Id, p: &PlannedRange, records: Vec<Option<Record>>) -> KeyState {
    KeyState {
        id,
        replicas: p
            .owners
            .iter()
            .zip(records)
            .enumerate()
            .map(|(slot, (node, record))| Replica {
                group: node.group,
                node: node.id.clone(),
                proper: mode == Mode::Dc || slot == 0,
                record,
            })
            .collect(),
    }
}

/// Plans a merge run: for every group, every partition range of every node, the owner
/// first, then the nodes that may hold misplaced copies there (all others of the group,
/// or with `-o` only that node).
pub fn plan_merge(client: &Client, scope: &Scope) -> Result<Vec<PlannedRange>, ClientError> {
    let route = client.route();
    route.check_groups(&scope.groups)?;
    let only = scope
        .only_node
        .as_deref()
        .map(|n| route.node(n))
        .transpose()?;
    let mut planned = Vec::new();
    for g in &scope.groups {
        for owner in route.group(*g) {
            let others: Vec<NodeEntry> = route
                .group(*g)
                .filter(|n| n.id != owner.id && only.is_none_or(|o| o.id == n.id))
                .cloned()
                .collect();
            if others.is_empty() {
                continue;
            }
            for partitions in &owner.partitions {
                planned.push(PlannedRange {
                    partitions: *partitions,
                    owners: std::iter::once(owner.clone())
                        .chain(others.iter().cloned())
                        .collect(),
                });
            }
        }
    }
    Ok(planned)
}

fn slot_file(config: &RunConfig, range: usize, slot: usize, part: usize) -> PathBuf {
    config
        .run_dir
        .join(format!("range{range:05}-slot{slot}-{part:04}.meta"))
}

/// Gathers one range: the versions each owner holds of the keys to consider, one file per
/// owner (and per batch of differences). Returns the files and versions per node.
async fn gather(client: &Client, config: &RunConfig, index: usize, p: &PlannedRange) -> Gathered {
    let range = p.partitions.ids();
    let header = |slot: usize| MetaHeader {
        slot: slot as u32,
        group: p.owners[slot].group,
        node: p.owners[slot].id.clone(),
        range,
        created_ns: crate::now_ns(),
    };
    let mut counts = BTreeMap::new();
    let mut paths = Vec::new();
    if config.mode == Mode::Merge && !matches!(config.source, KeySource::Ids(_)) {
        gather_misplaced(client, config, index, p, &header, &mut paths, &mut counts).await?;
        return Ok((paths, counts));
    }
    match &config.source {
        KeySource::FullScan | KeySource::Since(_) => {
            let filter = IterateFilter {
                since: match config.source {
                    KeySource::Since(t) => Some(t),
                    _ => None,
                },
                user_flags: config.user_flags.clone(),
            };
            let results =
                futures_util::future::join_all(p.owners.iter().enumerate().map(|(slot, node)| {
                    let path = slot_file(config, index, slot, 0);
                    let header = header(slot);
                    let filter = filter.clone();
                    async move {
                        iterate_to_file(client, node, range, &filter, &path, &header)
                            .await
                            .map(|n| (path, n))
                    }
                }))
                .await;
            for (slot, r) in results.into_iter().enumerate() {
                let (path, n) = r?;
                counts.insert(p.owners[slot].id.clone(), n);
                paths.push(path);
            }
        }
        KeySource::Fingerprints => {
            let differences = compare::compare_range(client, p, Config::default())
                .await
                .map_err(|e| e.to_string())?
                .0;
            let differences: Vec<(Id, Vec<Option<Record>>)> = differences
                .into_iter()
                .filter(|(_, rs)| passes_flags(rs, &config.user_flags))
                .collect();
            write_slots(
                config,
                index,
                p,
                &header,
                &differences,
                &mut paths,
                &mut counts,
            )?;
        }
        KeySource::Ids(ids) => {
            let mut wanted: Vec<Id> = ids
                .iter()
                .copied()
                .filter(|id| range.contains(id))
                .collect();
            wanted.sort();
            wanted.dedup();
            let mut found: Vec<(Id, Vec<Option<Record>>)> =
                wanted.iter().map(|id| (*id, Vec::new())).collect();
            for node in &p.owners {
                let records = client
                    .lookup_on(node, &wanted)
                    .await
                    .map_err(|e| e.to_string())?;
                for (entry, r) in found.iter_mut().zip(records) {
                    entry.1.push(r);
                }
            }
            write_slots(config, index, p, &header, &found, &mut paths, &mut counts)?;
        }
    }
    Ok((paths, counts))
}

/// Gathers a merge range: each non-owner node's copies in the owner's range (skipping a
/// node whose fingerprint there is empty), then the owner's records of those keys.
#[allow(clippy::too_many_arguments)]
async fn gather_misplaced(
    client: &Client,
    config: &RunConfig,
    index: usize,
    p: &PlannedRange,
    header: &dyn Fn(usize) -> MetaHeader,
    paths: &mut Vec<PathBuf>,
    counts: &mut BTreeMap<String, u64>,
) -> Result<(), String> {
    let range = p.partitions.ids();
    let filter = IterateFilter {
        since: match config.source {
            KeySource::Since(t) => Some(t),
            _ => None,
        },
        user_flags: config.user_flags.clone(),
    };
    let mut misplaced = Vec::new();
    for (slot, node) in p.owners.iter().enumerate().skip(1) {
        let peer = client.peer(node).await.map_err(|e| e.to_string())?;
        let holds = match peer
            .call(&Request::Fingerprints {
                ranges: vec![range],
                split: 1,
            })
            .await
            .map_err(|e| e.to_string())?
        {
            Response::Fingerprints(f) => f.first().map_or(0, |f| f.count),
            other => {
                return Err(format!(
                    "node {} answered {} to fingerprints",
                    node.id,
                    other.kind()
                ))
            }
        };
        if holds == 0 {
            continue;
        }
        let path = slot_file(config, index, slot, 0);
        let n = iterate_to_file(client, node, range, &filter, &path, &header(slot)).await?;
        counts.insert(node.id.clone(), n);
        misplaced.push(path);
    }
    if misplaced.is_empty() {
        return Ok(());
    }
    // The owner's records of every misplaced id, in id order, a lookup batch at a time.
    let owner_path = slot_file(config, index, 0, 0);
    let mut owner_file = MetaWriter::create(&owner_path, &header(0)).map_err(|e| e.to_string())?;
    let mut ids = Vec::new();
    let mut owned = 0;
    let mut merge = kmerge::merge_files(&misplaced, p.owners.len()).map_err(|e| e.to_string())?;
    loop {
        let next = merge.next().transpose().map_err(|e| e.to_string())?;
        if let Some((id, _)) = &next {
            ids.push(*id);
        }
        if ids.len() >= crate::wire::MAX_LOOKUP || (next.is_none() && !ids.is_empty()) {
            let records = client
                .lookup_on(&p.owners[0], &ids)
                .await
                .map_err(|e| e.to_string())?;
            for (id, r) in ids.iter().zip(records) {
                if let Some(r) = r {
                    owner_file.append(id, &r).map_err(|e| e.to_string())?;
                    owned += 1;
                }
            }
            ids.clear();
        }
        if next.is_none() {
            break;
        }
    }
    owner_file.finish().map_err(|e| e.to_string())?;
    counts.insert(p.owners[0].id.clone(), owned);
    paths.extend(misplaced);
    paths.push(owner_path);
    Ok(())
}

fn passes_flags(records: &[Option<Record>], flags: &[u64]) -> bool {
    flags.is_empty()
        || records
            .iter()
            .flatten()
            .any(|r| flags.iter().any(|f| r.version.user_flags & f != 0))
}

/// Writes each slot's records of `keys` (sorted by id) to its file.
fn write_slots(
    config: &RunConfig,
    index: usize,
    p: &PlannedRange,
    header: &dyn Fn(usize) -> MetaHeader,
    keys: &[(Id, Vec<Option<Record>>)],
    paths: &mut Vec<PathBuf>,
    counts: &mut BTreeMap<String, u64>,
) -> Result<(), String> {
    for slot in 0..p.owners.len() {
        let path = slot_file(config, index, slot, 0);
        let mut w = MetaWriter::create(&path, &header(slot)).map_err(|e| e.to_string())?;
        let mut n = 0;
        for (id, records) in keys {
            if let Some(Some(r)) = records.get(slot) {
                w.append(id, r).map_err(|e| e.to_string())?;
                n += 1;
            }
        }
        w.finish().map_err(|e| e.to_string())?;
        counts.insert(p.owners[slot].id.clone(), n);
        paths.push(path);
    }
    Ok(())
}

async fn iterate_to_file(
    client: &Client,
    node: &NodeEntry,
    range: IdRange,
    filter: &IterateFilter,
    path: &Path,
    header: &MetaHeader,
) -> Result<u64, String> {
    let mut writer = MetaWriter::create(path, header).map_err(|e| e.to_string())?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let producer = compare::iterate(client, node, range, filter, tx);
    let consumer = async {
        while let Some(batch) = rx.recv().await {
            for (id, record) in batch {
                writer.append(&id, &record).map_err(|e| e.to_string())?;
            }
        }
        Ok::<_, String>(())
    };
    let (count, written) = tokio::join!(producer, consumer);
    let count = count.map_err(|e| format!("iterating node {}: {e}", node.id))?;
    written?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(count)
}

/// One range's temp files and versions per node, or why gathering it failed.
type Gathered = Result<(Vec<PathBuf>, BTreeMap<String, u64>), String>;

/// What happened to one key.
struct KeyOutcome {
    id: Id,
    differing: bool,
    copied: Vec<(u32, u64)>,
    already_current: u64,
    removed: u64,
    merged: bool,
    skipped: u64,
    unrecoverable: Option<String>,
    failed: Vec<(String, String)>,
}

impl KeyOutcome {
    fn add_to(self, report: &mut RunReport) {
        let s = &mut report.stats;
        s.keys += 1;
        s.differing += u64::from(self.differing);
        for (group, bytes) in &self.copied {
            s.copied += 1;
            s.bytes += bytes;
            *s.copied_to_group.entry(*group).or_default() += 1;
        }
        s.already_current += self.already_current;
        s.removed += self.removed;
        s.merged += u64::from(self.merged);
        s.skipped += self.skipped;
        if let Some(why) = self.unrecoverable {
            s.unrecoverable += 1;
            report.failed.push((self.id, why));
        }
        if !self.failed.is_empty() {
            s.failed += 1;
            for (node, _) in &self.failed {
                *s.failed_on_node.entry(node.clone()).or_default() += 1;
            }
            let why: Vec<String> = self
                .failed
                .iter()
                .map(|(n, e)| format!("{n}: {e}"))
                .collect();
            report.failed.push((self.id, why.join("; ")));
        }
    }
}

fn name(r: &Replica) -> String {
    format!("{}:{}", r.group, r.node)
}

/// Nodes found unreachable during a run: once a node failed every attempt and does not
/// answer a new connection, actions involving it fail at once (naming it) instead of each
/// waiting out timeouts.
#[derive(Debug, Default)]
struct Down(std::sync::Mutex<BTreeMap<String, String>>);

impl Down {
    fn check(&self, nodes: &[&NodeEntry]) -> Result<(), ClientError> {
        let down = self.0.lock().expect("down lock");
        for n in nodes {
            if let Some(why) = down.get(&n.id) {
                return Err(ClientError::NodeDown {
                    node: n.id.clone(),
                    why: why.clone(),
                });
            }
        }
        Ok(())
    }

    /// After a transport failure: marks whichever of `nodes` cannot be reached now.
    async fn mark_unreachable(&self, client: &Client, nodes: &[&NodeEntry], error: &ClientError) {
        for n in nodes {
            if let Err(e) = client.peer(n).await {
                tracing::warn!(
                    node = n.id,
                    "node unreachable, failing its remaining actions: {e}"
                );
                self.0
                    .lock()
                    .expect("down lock")
                    .entry(n.id.clone())
                    .or_insert_with(|| format!("{error}; then {e}"));
            }
        }
    }
}

async fn recover_key(
    ctx: KeyContext<'_>,
    p: &PlannedRange,
    key: KeyState,
    actions: Vec<Action>,
    mut pushed: Pushed,
) -> KeyOutcome {
    let KeyContext {
        client,
        config,
        policy,
        observer,
        down,
        limits,
    } = ctx;
    if !pushed.paced {
        Rate::take(&limits.keys, 1).await;
    }
    let mut out = KeyOutcome {
        id: key.id,
        differing: false,
        copied: Vec::new(),
        already_current: 0,
        removed: 0,
        merged: false,
        skipped: 0,
        unrecoverable: None,
        failed: Vec::new(),
    };
    if let Err(e) = policy::validate(&key, &actions) {
        out.failed.push((
            policy.name().to_string(),
            format!("policy decision refused: {e}"),
        ));
        return out;
    }
    out.differing = actions.iter().any(|a| !matches!(a, Action::Skip { .. }));
    let report = |action: &'static str,
                  source: Option<&Replica>,
                  to: &[usize],
                  version: Option<Version>,
                  result: String| {
        observer.report(&KeyReport {
            id: key.id,
            action,
            source: source.map(name).unwrap_or_default(),
            destinations: to.iter().map(|t| name(&key.replicas[*t])).collect(),
            version,
            result,
        });
    };
    for action in &actions {
        match action {
            Action::Skip { reason } => {
                out.skipped += 1;
                report("skip", None, &[], None, reason.clone());
            }
            Action::Unrecoverable { reason } => {
                report("unrecoverable", None, &[], None, reason.clone());
                out.unrecoverable = Some(reason.clone());
            }
            Action::Copy { from, to } => {
                let source = &key.replicas[*from];
                let version = source
                    .healthy()
                    .copied()
                    .expect("validated: a healthy source");
                if config.dry_run {
                    out.skipped += 1;
                    report("copy", Some(source), to, Some(version), "dry-run".into());
                    continue;
                }
                for t in to {
                    let dest = &key.replicas[*t];
                    let (result, paced) = match pushed.copies.remove(t) {
                        Some(result) => (result, true),
                        None => {
                            let (from, to) = (&p.owners[*from], &p.owners[*t]);
                            let _bounds = limits.pair(from, to).await;
                            let r = with_retries(client, config, down, &[from, to], || {
                                client.copy(from, to, &key.id, version, config.chunk_size)
                            })
                            .await;
                            (r, false)
                        }
                    };
                    let text = match result {
                        Ok(PutOutcome::Written) => {
                            out.copied.push((dest.group, version.size));
                            observer.bytes(version.size);
                            if !paced {
                                Rate::take(&limits.bytes, version.size).await;
                            }
                            "ok".to_string()
                        }
                        Ok(PutOutcome::Stale { stored }) => {
                            out.already_current += 1;
                            format!("already current (holds {})", stored.timestamp)
                        }
                        Ok(PutOutcome::ChecksumMismatch) => {
                            out.failed.push((
                                dest.node.clone(),
                                "refused the value: checksum mismatch".into(),
                            ));
                            "failed: checksum mismatch".into()
                        }
                        Err(e) => {
                            let node = match &e {
                                ClientError::Corrupt { node, .. }
                                | ClientError::SourceChanged { node, .. } => node.clone(),
                                _ => dest.node.clone(),
                            };
                            out.failed.push((node, e.to_string()));
                            format!("failed: {e}")
                        }
                    };
                    report("copy", Some(source), &[*t], Some(version), text);
                }
            }
            Action::Merge { sources, to } => {
                merge_key(ctx, p, &key, sources, to, &mut out).await;
            }
            Action::Remove { on, keep } => {
                // Removal is the merge run's business (and never with --safe/--dry-run).
                if config.safe || config.dry_run {
                    out.skipped += 1;
                    let why = if config.dry_run {
                        "dry-run"
                    } else {
                        "kept (--safe)"
                    };
                    report("remove", Some(&key.replicas[*keep]), on, None, why.into());
                    continue;
                }
                let owner = &p.owners[*keep];
                let kept = on_node(client, down, owner, client.lookup_on(owner, &[key.id])).await;
                for r in on {
                    let Some(gone) = key.replicas[*r].record.map(|rec| rec.version) else {
                        continue;
                    };
                    let confirmed = matches!(&kept, Ok(recs) if recs[0].is_some_and(|k| !k.corrupt && !gone.is_newer_than(&k.version)));
                    let text = if !confirmed {
                        let why = match &kept {
                            Err(e) => format!("did not confirm it holds the key ({e}); copy kept"),
                            Ok(_) => "did not confirm it holds the key; copy kept".into(),
                        };
                        out.failed.push((key.replicas[*keep].node.clone(), why));
                        "failed: not confirmed by the owner".to_string()
                    } else {
                        let node = &p.owners[*r];
                        match on_node(client, down, node, remove(client, node, &key.id, gone)).await
                        {
                            Ok(true) => {
                                out.removed += 1;
                                "ok".into()
                            }
                            Ok(false) => "changed meanwhile; kept".into(),
                            Err(e) => {
                                out.failed
                                    .push((key.replicas[*r].node.clone(), e.to_string()));
                                format!("failed: {e}")
                            }
                        }
                    };
                    report(
                        "remove",
                        Some(&key.replicas[*keep]),
                        &[*r],
                        Some(gone),
                        text,
                    );
                }
            }
        }
    }
    out
}

async fn merge_key(
    ctx: KeyContext<'_>,
    p: &PlannedRange,
    key: &KeyState,
    sources: &[usize],
    to: &[usize],
    out: &mut KeyOutcome,
) {
    let KeyContext {
        client,
        config,
        policy,
        observer,
        ..
    } = ctx;
    let report = |result: String, version: Option<Version>| {
        observer.report(&KeyReport {
            id: key.id,
            action: "merge",
            source: sources
                .iter()
                .map(|s| name(&key.replicas[*s]))
                .collect::<Vec<_>>()
                .join(" "),
            destinations: to.iter().map(|t| name(&key.replicas[*t])).collect(),
            version,
            result,
        })
    };
    if config.dry_run {
        out.skipped += 1;
        report("dry-run".into(), None);
        return;
    }
    let mut values = Vec::new();
    for s in sources {
        let mut buf = Vec::new();
        match client.read_from(&p.owners[*s], &key.id, &mut buf).await {
            Ok(crate::client::ReadOutcome::Value(_)) => values.push(buf),
            Ok(other) => {
                out.failed.push((
                    key.replicas[*s].node.clone(),
                    format!("value to merge is gone: {other:?}"),
                ));
                return report("failed: a source changed".into(), None);
            }
            Err(e) => {
                out.failed
                    .push((key.replicas[*s].node.clone(), e.to_string()));
                return report(format!("failed: {e}"), None);
            }
        }
    }
    let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    let Some(merged) = policy.merge_values(key, &refs) else {
        out.failed.push((
            policy.name().to_string(),
            "the policy cannot merge these values".into(),
        ));
        return report("failed: policy cannot merge".into(), None);
    };
    // Deterministic: the merged version is one nanosecond newer than its newest source,
    // so every run and every replica arrives at the same version.
    let newest = sources
        .iter()
        .filter_map(|s| key.replicas[*s].healthy())
        .map(|v| v.timestamp)
        .max()
        .unwrap_or(0);
    let flags = sources
        .iter()
        .filter_map(|s| key.replicas[*s].healthy())
        .fold(0, |f, v| f | v.user_flags);
    let mut version = Version::of_value(&merged, newest + 1, flags);
    version.flags |= FLAG_MERGEABLE;
    for t in to {
        let result = client
            .write_to(
                &p.owners[*t],
                &key.id,
                version,
                crate::client::ValueSource::Bytes(&merged),
            )
            .await;
        match result {
            Ok(PutOutcome::Written) => out.copied.push((key.replicas[*t].group, version.size)),
            Ok(PutOutcome::Stale { .. }) => out.already_current += 1,
            Ok(PutOutcome::ChecksumMismatch) => out
                .failed
                .push((key.replicas[*t].node.clone(), "checksum mismatch".into())),
            Err(e) => out
                .failed
                .push((key.replicas[*t].node.clone(), e.to_string())),
        }
    }
    out.merged = true;
    report(
        if out.failed.is_empty() {
            "ok".into()
        } else {
            "failed".into()
        },
        Some(version),
    );
}

/// Runs `op`, a request to `node`, unless the run already found `node` unreachable; after
/// a transport failure, marks `node` down if it does not answer a new connection either, so
/// the rest of its actions fail at once, by name, instead of each waiting out a timeout.
async fn on_node<T>(
    client: &Client,
    down: &Down,
    node: &NodeEntry,
    op: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    down.check(&[node])?;
    let result = op.await;
    if let Err(e @ ClientError::Transport(_)) = &result {
        down.mark_unreachable(client, &[node], e).await;
    }
    result
}

async fn remove(
    client: &Client,
    node: &NodeEntry,
    id: &Id,
    version: Version,
) -> Result<bool, ClientError> {
    let peer = client.peer(node).await?;
    match peer.call(&Request::Remove { id: *id, version }).await? {
        Response::Removed(done) => Ok(done),
        other => Err(ClientError::Unexpected {
            node: peer.node.clone(),
            request: "remove",
            what: other.kind().into(),
        }),
    }
}

/// Runs `op` (a copy or push between `nodes`), retrying transport failures with backoff;
/// when retries run out, marks whichever of `nodes` cannot be reached as down.
async fn with_retries<T, F, Fut>(
    client: &Client,
    config: &RunConfig,
    down: &Down,
    nodes: &[&NodeEntry],
    mut op: F,
) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    down.check(nodes)?;
    let mut delay = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e @ ClientError::Transport(_)) => {
                // A node that does not answer a new connection either will not answer a
                // retry: it is marked down at once, and this and its other actions fail now
                // instead of each retrying into timeouts.
                down.mark_unreachable(client, nodes, &e).await;
                if attempt >= config.attempts.max(1) || down.check(nodes).is_err() {
                    return Err(e);
                }
                tracing::debug!(attempt, "copy failed, retrying: {e}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The copies of one key already carried out by [`push_copies`].
#[derive(Default)]
struct Pushed {
    /// By destination replica: the outcome.
    copies: BTreeMap<usize, Result<PutOutcome, ClientError>>,
    /// The key was counted against `--max-keys-per-sec` already.
    paced: bool,
}

/// One copy of a small value waiting to be pushed: key index, destination replica, id,
/// version.
type PushItem = (usize, usize, Id, Version);

/// Carries out the copies of small values in `batch` node to node: grouped by source and
/// destination node into [`Request::Push`]es, several at once, each bounded by the
/// per-node limits and paced by the rate limits. Returns each key's outcomes and the bytes
/// the nodes sent each other. Keys whose decisions are invalid or include a merge are left
/// to [`recover_key`] whole.
async fn push_copies(
    ctx: KeyContext<'_>,
    p: &PlannedRange,
    batch: &[KeyState],
    decisions: &[Vec<Action>],
) -> (Vec<Pushed>, u64) {
    let mut out: Vec<Pushed> = batch.iter().map(|_| Pushed::default()).collect();
    if ctx.config.dry_run {
        return (out, 0);
    }
    let mut by_pair: BTreeMap<(usize, usize), Vec<PushItem>> = BTreeMap::new();
    for (k, (key, actions)) in batch.iter().zip(decisions).enumerate() {
        let merges = actions.iter().any(|a| matches!(a, Action::Merge { .. }));
        if merges || policy::validate(key, actions).is_err() {
            continue;
        }
        for action in actions {
            let Action::Copy { from, to } = action else {
                continue;
            };
            let Some(version) = key.replicas[*from].healthy().copied() else {
                continue;
            };
            if version.size > crate::wire::MAX_PUSH_VALUE {
                continue;
            }
            for t in to {
                let pair = by_pair.entry((*from, *t)).or_default();
                pair.push((k, *t, key.id, version));
            }
        }
    }
    // Cut each pair's items into pushes within the request's bounds.
    let mut pushes: Vec<(usize, usize, Vec<PushItem>)> = Vec::new();
    for ((from, to), items) in by_pair {
        let mut current: Vec<PushItem> = Vec::new();
        let mut bytes = 0;
        for item in items {
            let full = current.len() == crate::wire::MAX_PUSH_ITEMS
                || bytes + item.3.size > crate::wire::MAX_PUSH_BYTES;
            if full && !current.is_empty() {
                pushes.push((from, to, std::mem::take(&mut current)));
                bytes = 0;
            }
            bytes += item.3.size;
            current.push(item);
        }
        if !current.is_empty() {
            pushes.push((from, to, current));
        }
    }
    let done: Vec<PushDone> = stream::iter(pushes)
        .map(|(from, to, items)| push_one(ctx, p, from, to, items))
        .buffer_unordered(PUSHES_AT_ONCE)
        .collect()
        .await;
    let mut total = 0;
    for PushDone {
        items,
        results,
        bytes,
        paced,
    } in done
    {
        total += bytes;
        for k in paced {
            out[k].paced = true;
        }
        for ((k, t, _, _), r) in items.into_iter().zip(results) {
            out[k].copies.insert(t, r);
        }
    }
    (out, total)
}

/// Pushes a range batch has in flight at once (a source node carries out at most
/// [`crate::node`]'s own bound at a time, whichever run asks).
const PUSHES_AT_ONCE: usize = 4;

/// What one push did.
struct PushDone {
    /// The items pushed.
    items: Vec<PushItem>,
    /// Each item's outcome.
    results: Vec<Result<PutOutcome, ClientError>>,
    /// Bytes the source node sent the destination.
    bytes: u64,
    /// The keys counted against the key rate.
    paced: Vec<usize>,
}

/// One push from replica `from` to replica `to`.
async fn push_one(
    ctx: KeyContext<'_>,
    p: &PlannedRange,
    from: usize,
    to: usize,
    items: Vec<PushItem>,
) -> PushDone {
    let (src, dst) = (&p.owners[from], &p.owners[to]);
    let KeyContext {
        client,
        config,
        down,
        limits,
        ..
    } = ctx;
    let _bounds = limits.pair(src, dst).await;
    let keys: std::collections::BTreeSet<usize> = items.iter().map(|i| i.0).collect();
    Rate::take(&limits.keys, keys.len() as u64).await;
    Rate::take(&limits.bytes, items.iter().map(|i| i.3.size).sum()).await;
    let wanted: Vec<(Id, Version)> = items.iter().map(|i| (i.2, i.3)).collect();
    let pushed = with_retries(client, config, down, &[src, dst], || {
        client.push(src, dst, wanted.clone())
    })
    .await;
    let (results, bytes) = match pushed {
        Ok((outcomes, bytes)) => {
            let results = items
                .iter()
                .zip(outcomes)
                .map(|((_, _, id, _), o)| match o {
                    crate::wire::PushOutcome::Put(put) => Ok(put),
                    crate::wire::PushOutcome::SourceChanged => Err(ClientError::SourceChanged {
                        id: *id,
                        node: src.id.clone(),
                    }),
                    crate::wire::PushOutcome::Corrupt => Err(ClientError::Corrupt {
                        id: *id,
                        node: src.id.clone(),
                    }),
                    crate::wire::PushOutcome::TooLarge => Err(ClientError::Push {
                        from: src.id.clone(),
                        to: dst.id.clone(),
                        why: format!("{id}: its value is too large to push in one batch"),
                    }),
                })
                .collect();
            (results, bytes)
        }
        Err(e) => {
            let why = e.to_string();
            let results = items
                .iter()
                .map(|_| {
                    Err(down.check(&[src, dst]).err().unwrap_or(ClientError::Push {
                        from: src.id.clone(),
                        to: dst.id.clone(),
                        why: why.clone(),
                    }))
                })
                .collect();
            (results, 0)
        }
    };
    PushDone {
        items,
        results,
        bytes,
        paced: keys.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::PartitionRange;

    fn plan() -> Vec<PlannedRange> {
        let p = |first, last| PlannedRange {
            partitions: PartitionRange { first, last },
            owners: Vec::new(),
        };
        vec![p(0, 0x0fff), p(0x1000, 0x1fff), p(0x2000, 0x2fff)]
    }

    fn check(journal: &[u8]) -> Result<Vec<usize>, String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(JOURNAL), journal).unwrap();
        journal_check(dir.path(), &plan())
            .map(|d| d.into_iter().collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_resume_trusts_only_complete_journal_lines_of_its_plan() {
        assert_eq!(check(b""), Ok(vec![]));
        assert_eq!(
            check(b"done 0 0000-0fff\ndone 2 2000-2fff\n"),
            Ok(vec![0, 2])
        );
        for damaged in [
            &b"done 0 0000-0fff\ndone 2 2000-2f"[..],
            b"done 0 0000-0fff\ndone 1",
            b"done 1 2000-2fff\n",
            b"done 7 7000-7fff\n",
            b"done 0 0000-0fff\n\0\0\0\0",
            b"done 0 0000-0fff\n\n",
            b"done 0  0000-0fff\n",
        ] {
            let err = check(damaged).unwrap_err();
            assert!(
                err.contains("journal") && err.contains("start a new run"),
                "{damaged:?}: {err}"
            );
        }
    }

    #[test]
    fn range_batches_taken_together_are_half_the_id_space_apart() {
        assert_eq!(far_apart((0..8).collect()), vec![0, 4, 1, 5, 2, 6, 3, 7]);
        assert_eq!(far_apart((0..5).collect()), vec![0, 3, 1, 4, 2]);
        assert_eq!(far_apart(vec![7]), vec![7]);
        assert_eq!(far_apart(Vec::<u8>::new()), Vec::<u8>::new());
        // A resumed run's pending ranges: each once, in the same interleaving.
        assert_eq!(
            far_apart(vec![1, 2, 6, 9, 12, 15]),
            vec![1, 9, 2, 12, 6, 15]
        );
    }
}
