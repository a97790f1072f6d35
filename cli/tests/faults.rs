//! Fault injection, on loopback, bounded in time: storage nodes killed with `kill -9` at
//! random points of `dc` and `merge` runs (during gather, copy and remove), a node
//! restarted mid-run, packet loss, delay and a partition between the engine and one node
//! (a UDP relay in the test), a full disk on the destination, values rotting on disk, and
//! temp metadata files and run journals damaged between gather and merge.
//!
//! Every test keeps a model of what was written and acknowledged (each key's newest
//! version, tombstones included), injects its fault, and checks that the run ends within a
//! bound, non-zero, naming what failed (or rides through it, where the design says it
//! should, and says so); then it removes the fault and checks that a repeated run
//! converges with nothing lost: `mend verify` in sync and every replica holding exactly the
//! model's version of every key (so no delete is resurrected either).
//!
//! Random choices (victims, kill points, what is damaged where) come from a seeded RNG.
//! Each test prints its seed; `MEND_FAULT_SEED=N cargo test -p mend-cli --test faults`
//! repeats them. The scenarios that wait out a vanished node (QUIC's 15 s idle timeout) run
//! at once, in threads, each with its own cluster; `MEND_FAULT_ONLY=NAME` picks one.

mod support;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use mend_engine::{Id, Record, Version};
use support::{mend_bin, spawn_ready, Cluster, NodeProcs};

/// How long any run may take, faults included, before the test calls it a hang. A node
/// that vanished is given up on after QUIC's idle timeout (15 s), so this is far above
/// what a run needs.
const RUN_LIMIT: Duration = Duration::from_secs(90);

/// Seconds a run behind the lossy relay waits for a handshake: see `dc_through_a_lossy_link`.
const LOSSY_CONNECT_TIMEOUT: &str = "20";

/// How long the test waits for a signal it injects a fault on (a file, a report row).
const PATIENCE: Duration = Duration::from_secs(60);

/// A write that builds a case: (group, key, value, timestamp, tombstone).
type Write = (u32, String, Vec<u8>, u64, bool);

/// A write to one given node: (node, key, value, timestamp, tombstone).
type NodeWrite = (String, String, Vec<u8>, u64, bool);

/// What was acknowledged: each key's newest version.
type Model = BTreeMap<String, Version>;

// ---------------------------------------------------------------------------------------
// Seeded randomness

/// splitmix64: small, good enough to pick kill points, reproducible from a seed.
struct Rng(u64);

impl Rng {
    /// The RNG of one test: the run's seed (`MEND_FAULT_SEED`, else the clock) mixed with
    /// the test's name, printed so a failure can be repeated.
    fn for_test(name: &str) -> Rng {
        let seed = std::env::var("MEND_FAULT_SEED")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or_else(|| mend_engine::now_ns() % 1_000_000_007);
        eprintln!("{name}: seed {seed} (MEND_FAULT_SEED={seed} repeats it)");
        let mut rng = Rng(seed);
        for b in name.bytes() {
            rng.0 ^= u64::from(b);
            rng.next();
        }
        rng
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "empty range {lo}..={hi}");
        lo + self.next() % (hi - lo + 1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() as u64 - 1) as usize]
    }

    /// True with probability `per_mille`/1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
}

// ---------------------------------------------------------------------------------------
// Data and the model

/// The value of `key` at `ts`: the same wherever it is written, sizes varying with both.
fn value_of(key: &str, ts: u64) -> Vec<u8> {
    let reps =
        2 + (key.len() * 7 + ts as usize * 13 + key.bytes().map(usize::from).sum::<usize>()) % 40;
    format!("{key}@{ts};").repeat(reps).into_bytes()
}

fn version_of(key: &str, ts: u64, tomb: bool) -> Version {
    if tomb {
        Version::tombstone(ts)
    } else {
        Version::of_value(&value_of(key, ts), ts, 0)
    }
}

/// Notes that `v` of `key` was acknowledged: the model keeps the newest.
fn acknowledge(model: &mut Model, key: &str, v: Version) {
    let newest = model.entry(key.to_string()).or_insert(v);
    if v.is_newer_than(newest) {
        *newest = v;
    }
}

/// `n` keys whose replicas in `groups` differ at random: each group holds nothing, a value
/// or a tombstone at timestamp 1, 2 or 3 (one group at least holds something). The writes
/// that build them, and the model.
fn diverged(rng: &mut Rng, prefix: &str, n: usize, groups: &[u32]) -> (Vec<Write>, Model) {
    let (mut writes, mut model) = (Vec::new(), Model::new());
    for i in 0..n {
        let key = format!("{prefix}-{i}");
        let mut states: Vec<u64> = groups.iter().map(|_| rng.range(0, 6)).collect();
        if states.iter().all(|s| *s == 0) {
            states[0] = rng.range(1, 6);
        }
        for (g, s) in groups.iter().zip(states) {
            if s == 0 {
                continue;
            }
            let (ts, tomb) = ((s - 1) % 3 + 1, s > 3);
            let value = if tomb { Vec::new() } else { value_of(&key, ts) };
            writes.push((*g, key.clone(), value, ts, tomb));
            acknowledge(&mut model, &key, version_of(&key, ts, tomb));
        }
    }
    (writes, model)
}

/// `n` keys held by group 1 only (a value at 10, or every 10th a tombstone at 10).
fn one_sided(prefix: &str, n: usize) -> (Vec<Write>, Model) {
    let (mut writes, mut model) = (Vec::new(), Model::new());
    for i in 0..n {
        let key = format!("{prefix}-{i}");
        let tomb = i % 10 == 9;
        let value = if tomb { Vec::new() } else { value_of(&key, 10) };
        writes.push((1, key.clone(), value, 10, tomb));
        acknowledge(&mut model, &key, version_of(&key, 10, tomb));
    }
    (writes, model)
}

/// Writes exact versions to given nodes, whoever owns the keys, in batches (how misplaced
/// copies are made on purpose).
fn write_on_nodes(c: &Cluster, items: &[NodeWrite]) {
    use mend_engine::wire::BatchItem;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = c.engine_client().await;
        let mut by_node: BTreeMap<&str, Vec<BatchItem>> = BTreeMap::new();
        for (node, key, value, ts, tomb) in items {
            let version = if *tomb {
                Version::tombstone(*ts)
            } else {
                Version::of_value(value, *ts, 0)
            };
            by_node.entry(node).or_default().push(BatchItem {
                id: Id::from_key(key.as_bytes()),
                version,
                value: value.clone(),
            });
        }
        for (node, items) in by_node {
            let entry = client.route().node(node).unwrap().clone();
            for chunk in items.chunks(256) {
                let out = client.write_batch(&entry, chunk.to_vec()).await.unwrap();
                assert!(
                    out.iter()
                        .all(|o| *o == mend_engine::store::PutOutcome::Written),
                    "{node}: {out:?}"
                );
            }
        }
    });
}

fn healthy(v: Version) -> Option<Record> {
    Some(Record {
        version: v,
        corrupt: false,
    })
}

/// `mend verify -g GROUPS` says in sync, and every group's owner holds exactly the model's
/// version of every key.
fn assert_converged(c: &Cluster, groups: &[u32], model: &Model) {
    let list = groups
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let out = c.run(&["verify", "-g", &list]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "verify -g {list}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let keys: Vec<String> = model.keys().cloned().collect();
    for chunk in keys.chunks(2000) {
        for (key, recs) in chunk.iter().zip(c.records(groups, chunk)) {
            let want = healthy(model[key]);
            for (g, r) in groups.iter().zip(recs) {
                assert_eq!(
                    r, want,
                    "{key}: group {g} holds {r:?}, the model says {want:?}"
                );
            }
        }
    }
}

/// What each node of `nodes` holds of every model key.
fn holdings(c: &Cluster, nodes: &[&str], model: &Model) -> BTreeMap<String, Vec<Option<Record>>> {
    let keys: Vec<String> = model.keys().cloned().collect();
    let per_node: Vec<Vec<Option<Record>>> = nodes.iter().map(|n| c.records_on(n, &keys)).collect();
    keys.iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), per_node.iter().map(|n| n[i]).collect()))
        .collect()
}

/// Nothing lost inside a group, whatever a failed run left: for every key some node of
/// `nodes` holds the model's version, healthy, and none holds a newer one.
fn assert_nothing_lost(c: &Cluster, nodes: &[&str], model: &Model) {
    for (key, recs) in holdings(c, nodes, model) {
        let want = model[&key];
        assert!(
            recs.contains(&healthy(want)),
            "{key}: no node of {nodes:?} holds its acknowledged version {want:?}: {recs:?}"
        );
        assert!(
            recs.iter()
                .flatten()
                .all(|r| !r.version.is_newer_than(&want)),
            "{key}: {recs:?} newer than the model's {want:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Runs as processes

/// A `mend` process whose output goes to files (so it never blocks on a full pipe while
/// the test waits for a signal), killed if the test ends first.
struct Run {
    child: Option<Child>,
    what: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// How a run ended.
struct Ended {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?} after {:.1?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.took, self.stdout, self.stderr
        )
    }
}

/// Starts `mend ARGS…` against the cluster dir `cluster`, its output (and any run dir not
/// placed by `--tmp-dir`) in `dir`.
fn spawn(cluster: &Path, dir: &Path, what: &str, args: &[&str]) -> Run {
    let stdout = dir.join(format!("{what}.stdout"));
    let stderr = dir.join(format!("{what}.stderr"));
    let child = Command::new(mend_bin())
        .env("MEND_CLUSTER", cluster)
        // Run dirs a failed run keeps go to the test's temp dir, not the system's.
        .env("TMPDIR", dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("spawn mend");
    Run {
        child: Some(child),
        what: what.to_string(),
        stdout,
        stderr,
    }
}

/// Runs `mend ARGS…` to its end (within [`RUN_LIMIT`]).
fn run_to_end(cluster: &Path, dir: &Path, what: &str, args: &[&str]) -> Ended {
    spawn(cluster, dir, what, args).wait()
}

impl Run {
    fn exited(&mut self) -> bool {
        let child = self.child.as_mut().expect("running");
        child.try_wait().unwrap().is_some()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits for the end; a run still going after [`RUN_LIMIT`] is a hang: killed, and the
    /// test fails.
    fn wait(mut self) -> Ended {
        let started = Instant::now();
        let mut child = self.child.take().expect("running");
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > RUN_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} hangs: still running after {RUN_LIMIT:?}; stderr:\n{}",
                    self.what,
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        eprintln!(
            "{}: exit {:?} after {:.1?}",
            self.what,
            status.code(),
            started.elapsed()
        );
        Ended {
            code: status.code(),
            stdout: std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.stderr).unwrap_or_default(),
            took: started.elapsed(),
        }
    }

    /// Polls `ready` until it holds; fails if the run ends first or [`PATIENCE`] runs out
    /// (the fault would then land somewhere else than meant).
    fn await_signal(&mut self, what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !ready() {
            if self.exited() {
                panic!(
                    "{} ended before {what}: the fault could not be injected where meant; stderr:\n{}",
                    self.what,
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "no {what} in {PATIENCE:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Complete rows of a CSV report so far (header excluded), as (action, result).
fn report_rows(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete
        .lines()
        .skip(1)
        .map(|l| {
            let fields: Vec<&str> = l.split(',').collect();
            (
                fields.get(1).unwrap_or(&"").to_string(),
                fields.last().unwrap_or(&"").to_string(),
            )
        })
        .collect()
}

/// The one run dir under `tmp`, once there is one.
fn run_dir(tmp: &Path) -> Option<PathBuf> {
    std::fs::read_dir(tmp)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
}

fn meta_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "meta"));
    files.sort();
    files
}

/// The range batch indexes a run dir's journal records as done.
fn journaled(run_dir: &Path) -> Vec<usize> {
    std::fs::read_to_string(run_dir.join("journal"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

fn dc_stats(end: &Ended) -> serde_json::Value {
    serde_json::from_str(&end.stdout).unwrap_or_else(|_| panic!("stats JSON expected: {end}"))
}

/// Stops node `id` with SIGTERM (a clean shutdown) and waits for it.
fn stop_node(nodes: &mut NodeProcs, id: &str) {
    let mut child = nodes.procs.remove(id).expect("node running");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    child.wait().unwrap();
}

fn restart(c: &Cluster, nodes: &mut NodeProcs, id: &str) {
    nodes.procs.insert(id.to_string(), c.start_node(id));
}

// ---------------------------------------------------------------------------------------
// Scenarios run at once

/// Runs scenarios at once, each in its own thread with its own cluster: a scenario whose
/// node vanished mostly waits out QUIC's idle timeout, so they overlap well. Fails naming
/// each scenario that failed (its panic, with its seed, is printed above).
/// `MEND_FAULT_ONLY=NAME` runs only the scenarios whose name contains NAME.
fn concurrently(scenarios: &[(&str, fn())]) {
    let only = std::env::var("MEND_FAULT_ONLY").ok();
    let running: Vec<_> = scenarios
        .iter()
        .filter(|(name, _)| only.as_deref().is_none_or(|o| name.contains(o)))
        .map(|(name, scenario)| {
            let thread = std::thread::Builder::new()
                .name(name.to_string())
                .spawn(*scenario)
                .unwrap();
            (*name, thread)
        })
        .collect();
    let failed: Vec<&str> = running
        .into_iter()
        .filter_map(|(name, thread)| thread.join().is_err().then_some(name))
        .collect();
    assert!(failed.is_empty(), "scenarios failed: {failed:?}");
}

#[test]
fn nodes_killed_at_random_points_of_dc_runs_are_named_and_repeated_runs_converge() {
    concurrently(&[
        ("dc-gather", dc_killed_during_gather),
        ("dc-copy", dc_killed_during_copy),
        ("dc-restart", dc_restarted_mid_run),
    ]);
}

#[test]
fn nodes_killed_at_random_points_of_merge_runs_lose_nothing_and_repeated_runs_converge() {
    concurrently(&[
        ("merge-copy", merge_killed_during_copy),
        ("merge-remove", merge_killed_during_remove),
    ]);
}

#[test]
fn a_lossy_link_is_ridden_through_and_a_partition_is_named_then_runs_converge() {
    concurrently(&[
        ("lossy", dc_through_a_lossy_link),
        ("partition", dc_partitioned_mid_run),
    ]);
}

// ---------------------------------------------------------------------------------------
// kill -9 at random points of dc runs

/// The common shape of a dc run that a fault interrupts: 3 groups of 1 node, each in its
/// own process, `n` keys diverged at random.
fn dc_cluster(rng: &mut Rng, prefix: &str, n: usize) -> (Cluster, NodeProcs, Model) {
    let c = Cluster::init(3, 1);
    let nodes = c.start_each();
    let (writes, model) = diverged(rng, prefix, n, &[1, 2, 3]);
    c.write_versions(&writes);
    (c, nodes, model)
}

/// A node killed while ranges are gathered: those ranges fail, named with the node; the
/// run resumes once the node is back, and converges.
fn dc_killed_during_gather() {
    let mut rng = Rng::for_test("dc-gather");
    let (c, mut nodes, model) = dc_cluster(&mut rng, "gather", 3000);
    let victim = format!("g{}n1", rng.range(1, 3));
    // Kill once the k-th temp metadata file is written: ranges are still being gathered.
    let after_files = rng.range(1, 6) as usize;
    eprintln!("killing {victim} after {after_files} metadata files");
    let tmp = c.dir.path().join("runs");
    std::fs::create_dir(&tmp).unwrap();
    let tmp_arg = tmp.to_str().unwrap();
    let args = [
        "dc",
        "-g",
        "1,2,3",
        "--connect-timeout",
        "1",
        "--tmp-dir",
        tmp_arg,
        "--stats",
        "json",
    ];
    let mut run = spawn(&c.path(), c.dir.path(), "dc-gather", &args);
    run.await_signal("metadata files", || {
        run_dir(&tmp).is_some_and(|d| meta_files(&d).len() >= after_files)
    });
    nodes.kill9(&victim);
    let end = run.wait();
    assert_eq!(end.code, Some(1), "{end}");
    assert!(
        end.stderr
            .lines()
            .any(|l| l.starts_with("mend: range failed") && l.contains(&victim)),
        "names the ranges whose gather failed, and the node: {end}"
    );
    let stats = dc_stats(&end);
    assert!(stats["ranges_failed"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(stats["converged"], false);
    let dir = run_dir(&tmp).expect("the run dir is kept");
    assert!(
        end.stderr.contains(dir.to_str().unwrap()),
        "names the run dir to resume: {end}"
    );

    // The node comes back with every write it acknowledged; the run resumes and converges.
    restart(&c, &mut nodes, &victim);
    let resume = [
        "dc",
        "-g",
        "1,2,3",
        "--resume",
        dir.to_str().unwrap(),
        "--stats",
        "json",
    ];
    let end = run_to_end(&c.path(), c.dir.path(), "dc-resume", &resume);
    assert_eq!(end.code, Some(0), "{end}");
    assert_converged(&c, &[1, 2, 3], &model);
    // And a new run finds nothing left to do.
    let end = run_to_end(
        &c.path(),
        c.dir.path(),
        "dc-again",
        &["dc", "-g", "1,2,3", "--stats", "json"],
    );
    assert_eq!(end.code, Some(0), "{end}");
    assert_eq!(dc_stats(&end)["differing"], 0, "{end}");
}

/// A node killed while keys are copied: its keys fail, named, their ids in the failed
/// dump; retrying them and a new run converge.
fn dc_killed_during_copy() {
    let mut rng = Rng::for_test("dc-copy");
    let (c, mut nodes, model) = dc_cluster(&mut rng, "copy", 3000);
    let victim = format!("g{}n1", rng.range(1, 3));
    let after_rows = rng.range(1, 300) as usize;
    eprintln!("killing {victim} after {after_rows} report rows");
    let tmp = c.dir.path().join("runs");
    std::fs::create_dir(&tmp).unwrap();
    let report = c.dir.path().join("copy.csv");
    let failed = c.dir.path().join("failed.dump");
    let args = [
        "dc",
        "-g",
        "1,2,3",
        "--connect-timeout",
        "1",
        "-b",
        "32",
        "--max-keys-per-sec",
        "500",
        "--tmp-dir",
        tmp.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--failed-out",
        failed.to_str().unwrap(),
        "--stats",
        "json",
    ];
    let mut run = spawn(&c.path(), c.dir.path(), "dc-copy", &args);
    run.await_signal("report rows", || report_rows(&report).len() >= after_rows);
    nodes.kill9(&victim);
    let end = run.wait();
    assert_eq!(end.code, Some(1), "{end}");
    assert!(end.stderr.contains(&victim), "names the node: {end}");
    let stats = dc_stats(&end);
    assert!(stats["failed"].as_u64().unwrap() > 0, "{stats}");
    let failed_ids = std::fs::read_to_string(&failed).unwrap();
    assert!(!failed_ids.trim().is_empty(), "failed ids are written");

    restart(&c, &mut nodes, &victim);
    let retry = [
        "dc",
        "-g",
        "1,2,3",
        "-f",
        failed.to_str().unwrap(),
        "--stats",
        "json",
    ];
    let end = run_to_end(&c.path(), c.dir.path(), "dc-retry", &retry);
    assert_eq!(end.code, Some(0), "{end}");
    let end = run_to_end(
        &c.path(),
        c.dir.path(),
        "dc-full",
        &["dc", "-g", "1,2,3", "--stats", "json"],
    );
    assert_eq!(end.code, Some(0), "{end}");
    assert_converged(&c, &[1, 2, 3], &model);
}

/// A node killed and restarted at once while keys are copied.
fn dc_restarted_mid_run() {
    let mut rng = Rng::for_test("dc-restart");
    let (c, mut nodes, model) = dc_cluster(&mut rng, "restart", 2000);
    let victim = format!("g{}n1", rng.range(1, 3));
    let after_rows = rng.range(1, 300) as usize;
    eprintln!("restarting {victim} after {after_rows} report rows");
    let tmp = c.dir.path().join("runs");
    std::fs::create_dir(&tmp).unwrap();
    let report = c.dir.path().join("restart.csv");
    let args = [
        "dc",
        "-g",
        "1,2,3",
        "-b",
        "32",
        "--max-keys-per-sec",
        "500",
        "--tmp-dir",
        tmp.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--stats",
        "json",
    ];
    let mut run = spawn(&c.path(), c.dir.path(), "dc-restart", &args);
    run.await_signal("report rows", || report_rows(&report).len() >= after_rows);
    nodes.kill9(&victim);
    restart(&c, &mut nodes, &victim);
    let end = run.wait();
    // The node is back on the same address within a moment, without the old connection's
    // state: the requests in flight are lost (its new process cannot even reset the old
    // connection, whose reset key died with it), so they time out (QUIC's idle timeout)
    // and are retried on a new connection: the run usually converges by itself. Whatever it
    // could not redo (a gather, a remove, a key out of attempts) must be named.
    match end.code {
        Some(0) => assert_eq!(dc_stats(&end)["converged"], true, "{end}"),
        Some(1) => assert!(end.stderr.contains(&victim), "names the node: {end}"),
        _ => panic!("{end}"),
    }
    let end = run_to_end(
        &c.path(),
        c.dir.path(),
        "dc-after",
        &["dc", "-g", "1,2,3", "--stats", "json"],
    );
    assert_eq!(end.code, Some(0), "{end}");
    assert_converged(&c, &[1, 2, 3], &model);
}

// ---------------------------------------------------------------------------------------
// kill -9 at random points of merge runs

/// 2 groups of 2 nodes: group 1 holds misplaced copies (on the node that does not own the
/// key), group 2 holds the model's version at each key's owner (so `verify -g 1,2` checks
/// the result). `copy_heavy`: most keys' owner lacks the newest version (the merge copies,
/// then removes); else most keys' owner already holds it (the merge only removes).
fn merge_cluster(
    rng: &mut Rng,
    prefix: &str,
    n: usize,
    copy_heavy: bool,
) -> (Cluster, NodeProcs, Model) {
    let c = Cluster::init(2, 2);
    let nodes = c.start_each();
    let route = mend_engine::RouteList::load(&c.path()).unwrap();
    let (mut on_nodes, mut group2, mut model) = (Vec::new(), Vec::new(), Model::new());
    for i in 0..n {
        let key = format!("{prefix}-{i}");
        let owner = owner_in_group1(&route, &key);
        let other = if owner == "g1n1" { "g1n2" } else { "g1n1" }.to_string();
        let mut put = |node: &str, ts: u64, tomb: bool| {
            let value = if tomb { Vec::new() } else { value_of(&key, ts) };
            on_nodes.push((node.to_string(), key.clone(), value, ts, tomb));
            acknowledge(&mut model, &key, version_of(&key, ts, tomb));
        };
        let tomb = rng.chance(200);
        let needs_copy = rng.chance(if copy_heavy { 800 } else { 200 });
        if needs_copy {
            // The misplaced copy is newest (a write handed off while the owner was down);
            // the owner has nothing or an older version.
            put(&other, 2, tomb);
            match rng.range(0, 2) {
                0 => {}
                1 => put(&owner, 1, false),
                _ => put(&owner, 1, true),
            }
        } else if rng.chance(500) {
            // Already copied: the same version on both; only the misplaced copy goes.
            put(&other, 2, tomb);
            put(&owner, 2, tomb);
        } else {
            // The owner holds a newer version than the misplaced copy.
            put(&owner, 3, tomb);
            put(&other, 2, rng.chance(500));
        }
        let v = model[&key];
        let value = if v.is_tombstone() {
            Vec::new()
        } else {
            value_of(&key, v.timestamp)
        };
        group2.push((2, key.clone(), value, v.timestamp, v.is_tombstone()));
    }
    write_on_nodes(&c, &on_nodes);
    c.write_versions(&group2);
    (c, nodes, model)
}

fn owner_in_group1(route: &mend_engine::RouteList, key: &str) -> String {
    let id = Id::from_key(key.as_bytes());
    route.owner_of(1, &id).unwrap().id.clone()
}

/// After a converged merge: each owner holds the model's version, the other node nothing,
/// the groups agree.
fn assert_merged(c: &Cluster, model: &Model) {
    let route = mend_engine::RouteList::load(&c.path()).unwrap();
    for (key, recs) in holdings(c, &["g1n1", "g1n2"], model) {
        let owner = owner_in_group1(&route, &key);
        let want = healthy(model[&key]);
        let (o, m) = if owner == "g1n1" {
            (recs[0], recs[1])
        } else {
            (recs[1], recs[0])
        };
        assert_eq!(o, want, "{key}: its owner {owner} holds {o:?}");
        assert_eq!(m, None, "{key}: a misplaced copy is left: {m:?}");
    }
    assert_converged(c, &[1, 2], model);
}

/// A merge of group 1 killed by `kill -9` of a node once the report has `after` rows of
/// `action`; then the run's end is checked, the node restarted, nothing lost, and a new
/// merge converges.
fn merge_killed(test: &str, copy_heavy: bool, action: &str) {
    let mut rng = Rng::for_test(test);
    let (c, mut nodes, model) = merge_cluster(&mut rng, test, 2000, copy_heavy);
    let victim = rng.pick(&["g1n1", "g1n2"]).to_string();
    let after = rng.range(1, 200) as usize;
    eprintln!("killing {victim} after {after} {action} rows");
    let tmp = c.dir.path().join("runs");
    std::fs::create_dir(&tmp).unwrap();
    let report = c.dir.path().join("merge.csv");
    let args = [
        "merge",
        "-g",
        "1",
        "--connect-timeout",
        "1",
        "-b",
        "32",
        "--max-keys-per-sec",
        "400",
        "--tmp-dir",
        tmp.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--stats",
        "json",
    ];
    let mut run = spawn(&c.path(), c.dir.path(), test, &args);
    run.await_signal("report rows", || {
        report_rows(&report)
            .iter()
            .filter(|(a, _)| a == action)
            .count()
            >= after
    });
    nodes.kill9(&victim);
    let end = run.wait();
    assert_eq!(end.code, Some(1), "{end}");
    assert!(end.stderr.contains(&victim), "names the node: {end}");
    // Removal happened only where the owner confirmed the copy: with the node back,
    // every key's acknowledged version is still somewhere in the group.
    restart(&c, &mut nodes, &victim);
    assert_nothing_lost(&c, &["g1n1", "g1n2"], &model);
    let rows = report_rows(&report);
    assert!(
        rows.iter().any(|(a, r)| a == action && r == "ok"),
        "the run got to {action} before the kill"
    );

    let again = ["merge", "-g", "1", "--stats", "json"];
    let end = run_to_end(&c.path(), c.dir.path(), "merge-again", &again);
    assert_eq!(end.code, Some(0), "{end}");
    assert_merged(&c, &model);
    let end = run_to_end(&c.path(), c.dir.path(), "merge-idle", &again);
    let stats = dc_stats(&end);
    assert_eq!(
        (
            end.code,
            stats["copied"].as_u64(),
            stats["removed"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{end}"
    );
}

/// A node of the group killed while misplaced keys are copied to their owners.
fn merge_killed_during_copy() {
    merge_killed("merge-copy", true, "copy");
}

/// A node of the group killed while misplaced copies are removed.
fn merge_killed_during_remove() {
    merge_killed("merge-remove", false, "remove");
}

// ---------------------------------------------------------------------------------------
// Packet loss, delay and a partition between the engine and one node

/// A UDP relay between the engine and one node: forwards datagrams both ways, dropping a
/// fraction of them and delaying each by up to a maximum (which reorders them).
struct Relay {
    addr: SocketAddr,
    drop_per_mille: Arc<AtomicU32>,
    max_delay_ms: Arc<AtomicU32>,
    dropped: Arc<AtomicU64>,
    passed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// A datagram waiting for its time: when, to the node (or the client), the bytes.
type Delayed = std::cmp::Reverse<(Instant, u64, bool, Vec<u8>)>;

impl Relay {
    fn start(target: SocketAddr, seed: u64) -> Relay {
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").unwrap();
        back.connect(target).unwrap();
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        }
        let mut relay = Relay {
            addr: front.local_addr().unwrap(),
            drop_per_mille: Arc::default(),
            max_delay_ms: Arc::default(),
            dropped: Arc::default(),
            passed: Arc::default(),
            stop: Arc::default(),
            threads: Vec::new(),
        };
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let queue: Arc<(Mutex<std::collections::BinaryHeap<Delayed>>, Condvar)> = Arc::default();
        let mut threads = Vec::new();
        // Receivers: one per direction.
        for to_node in [true, false] {
            let socket = if to_node {
                front.try_clone()
            } else {
                back.try_clone()
            }
            .unwrap();
            let (client, queue) = (client.clone(), queue.clone());
            let (drop, delay) = (relay.drop_per_mille.clone(), relay.max_delay_ms.clone());
            let (dropped, passed, stop) = (
                relay.dropped.clone(),
                relay.passed.clone(),
                relay.stop.clone(),
            );
            let mut rng = Rng(seed ^ u64::from(to_node));
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (n, from) = match socket.recv_from(&mut buf) {
                        Ok(got) => got,
                        Err(_) => continue,
                    };
                    if to_node {
                        *client.lock().unwrap() = Some(from);
                    }
                    if rng.chance(u64::from(drop.load(Ordering::Relaxed))) {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    passed.fetch_add(1, Ordering::Relaxed);
                    let max = u64::from(delay.load(Ordering::Relaxed));
                    let at = Instant::now() + Duration::from_millis(rng.range(0, max));
                    seq += 1;
                    let (heap, ready) = &*queue;
                    heap.lock().unwrap().push(std::cmp::Reverse((
                        at,
                        seq * 2 + u64::from(to_node),
                        to_node,
                        buf[..n].to_vec(),
                    )));
                    ready.notify_one();
                }
            }));
        }
        // The sender: each datagram at its time.
        let (front_tx, back_tx) = (front.try_clone().unwrap(), back.try_clone().unwrap());
        let stop = relay.stop.clone();
        threads.push(std::thread::spawn(move || {
            let (heap, ready) = &*queue;
            let mut heap = heap.lock().unwrap();
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                match heap.peek() {
                    Some(std::cmp::Reverse((at, ..))) if *at <= now => {
                        let std::cmp::Reverse((_, _, to_node, bytes)) = heap.pop().unwrap();
                        if to_node {
                            let _ = back_tx.send(&bytes);
                        } else if let Some(addr) = *client.lock().unwrap() {
                            let _ = front_tx.send_to(&bytes, addr);
                        }
                    }
                    Some(std::cmp::Reverse((at, ..))) => {
                        let wait = *at - now;
                        heap = ready.wait_timeout(heap, wait).unwrap().0;
                    }
                    None => {
                        heap = ready
                            .wait_timeout(heap, Duration::from_millis(20))
                            .unwrap()
                            .0;
                    }
                }
            }
        }));
        relay.threads = threads;
        relay
    }

    /// Drops `per_mille`/1000 of the datagrams and delays each by up to `max_delay_ms`.
    fn set(&self, per_mille: u32, max_delay_ms: u32) {
        self.drop_per_mille.store(per_mille, Ordering::Relaxed);
        self.max_delay_ms.store(max_delay_ms, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A cluster dir for the engine's side in which node `victim` is reached through a relay
/// (certificates verify the node's name, not its address, so the relay is transparent).
fn through_relay(c: &Cluster, victim: &str, seed: u64) -> (PathBuf, Relay) {
    let view = c.dir.path().join("engine-view");
    std::fs::create_dir_all(view.join("certs")).unwrap();
    for f in ["cluster.toml", "ca.pem"] {
        std::fs::copy(c.path().join(f), view.join(f)).unwrap();
    }
    for e in std::fs::read_dir(c.path().join("certs")).unwrap().flatten() {
        std::fs::copy(e.path(), view.join("certs").join(e.file_name())).unwrap();
    }
    let mut route = mend_engine::RouteList::load(&view).unwrap();
    let node = route.nodes.iter_mut().find(|n| n.id == victim).unwrap();
    let relay = Relay::start(node.addr.parse().unwrap(), seed);
    node.addr = relay.addr.to_string();
    route.save(&view).unwrap();
    (view, relay)
}

/// The link between the engine and one node loses and reorders datagrams.
fn dc_through_a_lossy_link() {
    let mut rng = Rng::for_test("lossy");
    let (c, _nodes, model) = dc_cluster(&mut rng, "lossy", 2000);
    let victim = format!("g{}n1", rng.range(1, 3));
    let loss = rng.range(50, 150) as u32;
    eprintln!("{victim} behind a link losing {loss}/1000 datagrams, delaying up to 10 ms");
    let (view, relay) = through_relay(&c, &victim, rng.next());
    relay.set(loss, 10);
    // QUIC retransmits what is lost and orders what is reordered: the run does not fail,
    // it converges through the loss (slower). A handshake whose first flight is lost waits
    // out a probe timeout that starts at 1 s and doubles, so three losses in a row pass
    // the default 5 s; an operator on such a link raises the timeout, and so does this.
    let end = run_to_end(
        &view,
        c.dir.path(),
        "dc-lossy",
        &[
            "dc",
            "-g",
            "1,2,3",
            "--stats",
            "json",
            "--connect-timeout",
            LOSSY_CONNECT_TIMEOUT,
        ],
    );
    assert_eq!(end.code, Some(0), "{end}");
    assert!(
        relay.dropped.load(Ordering::Relaxed) > 0,
        "the relay dropped nothing: {} passed",
        relay.passed.load(Ordering::Relaxed)
    );
    // So does verify through the same link.
    let out = Command::new(mend_bin())
        .env("MEND_CLUSTER", &view)
        .args([
            "verify",
            "-g",
            "1,2,3",
            "--connect-timeout",
            LOSSY_CONNECT_TIMEOUT,
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(relay);
    assert_converged(&c, &[1, 2, 3], &model);
}

/// The link between the engine and one node goes dead while keys are copied.
fn dc_partitioned_mid_run() {
    let mut rng = Rng::for_test("partition");
    let c = Cluster::init(3, 1);
    let _nodes = c.start_each();
    let victim = format!("g{}n1", rng.range(1, 3));
    let g: u32 = victim[1..2].parse().unwrap();
    // The victim holds the newest version of every key (a value, or every 5th a
    // tombstone), the others hold older ones at random: the engine must talk to the victim
    // to copy each key, whichever way copies travel (read from it, or pushed by it).
    let others: Vec<u32> = [1, 2, 3].into_iter().filter(|o| *o != g).collect();
    let (mut writes, mut model) = diverged(&mut rng, "partition", 1500, &others);
    for i in 0..1500 {
        let key = format!("partition-{i}");
        let tomb = i % 5 == 4;
        let value = if tomb { Vec::new() } else { value_of(&key, 4) };
        writes.push((g, key.clone(), value, 4, tomb));
        acknowledge(&mut model, &key, version_of(&key, 4, tomb));
    }
    c.write_versions(&writes);
    let after_rows = rng.range(1, 200) as usize;
    eprintln!("cutting {victim} off after {after_rows} report rows");
    let (view, relay) = through_relay(&c, &victim, rng.next());
    let tmp = c.dir.path().join("runs");
    std::fs::create_dir(&tmp).unwrap();
    let report = c.dir.path().join("partition.csv");
    let args = [
        "dc",
        "-g",
        "1,2,3",
        "--connect-timeout",
        "1",
        "-b",
        "32",
        "--max-keys-per-sec",
        "400",
        "--tmp-dir",
        tmp.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--stats",
        "json",
    ];
    let mut run = spawn(&view, c.dir.path(), "dc-partition", &args);
    run.await_signal("report rows", || report_rows(&report).len() >= after_rows);
    relay.set(1000, 0);
    let end = run.wait();
    assert_eq!(end.code, Some(1), "{end}");
    assert!(end.stderr.contains(&victim), "names the node: {end}");

    // The link heals: a new run through it converges.
    relay.set(0, 0);
    let end = run_to_end(
        &view,
        c.dir.path(),
        "dc-healed",
        &["dc", "-g", "1,2,3", "--stats", "json"],
    );
    assert_eq!(end.code, Some(0), "{end}");
    drop(relay);
    assert_converged(&c, &[1, 2, 3], &model);
}

// ---------------------------------------------------------------------------------------
// A full disk on the destination

/// How the destination's disk is made small.
enum SmallDisk {
    /// `RLIMIT_FSIZE` on the node process (SIGXFSZ ignored): writing its store past the
    /// limit fails with EFBIG. Needs no privilege, so it always runs.
    FileSizeLimit,
    /// A tmpfs of a few MiB mounted as its data dir: ENOSPC. Needs root.
    Tmpfs,
}

/// Unmounts a tmpfs when dropped (after the nodes, which are declared later).
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The bytes of one `ulimit -f` block in `sh` (512 in dash and POSIX shells, 1024 in bash).
fn ulimit_block() -> u64 {
    let out = Command::new("sh")
        .args(["-c", "ulimit -f 1000; cat /proc/self/limits"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("Max file size"))
        .unwrap();
    let bytes: u64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    bytes / 1000
}

fn full_disk(test: &str, disk: SmallDisk) {
    let mut rng = Rng::for_test(test);
    let c = Cluster::init(2, 1);
    let data = c.path().join("data/g2n1");
    let _mounted = match disk {
        SmallDisk::Tmpfs => {
            std::fs::create_dir_all(&data).unwrap();
            let ok = Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
                .arg(&data)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("{test}: skipped: cannot mount a tmpfs here (needs root); the file size limit variant covers a full disk");
                return;
            }
            Some(Mounted(data.clone()))
        }
        SmallDisk::FileSizeLimit => None,
    };
    let mut nodes = NodeProcs {
        procs: BTreeMap::new(),
    };
    restart(&c, &mut nodes, "g1n1");
    let limited = |c: &Cluster| -> Child {
        let mut cmd = Command::new("sh");
        match disk {
            SmallDisk::FileSizeLimit => {
                // 3 MiB: an empty store is 1 MiB; the copies need about 10. The soft limit
                // only, so that the test can give the node room again.
                let blocks = (3 << 20) / ulimit_block();
                cmd.arg("-c").arg(format!(
                    "trap '' XFSZ; ulimit -S -f {blocks}; exec \"$0\" \"$@\""
                ));
            }
            SmallDisk::Tmpfs => {
                cmd.arg("-c").arg("exec \"$0\" \"$@\"");
            }
        }
        cmd.arg(mend_bin())
            .args(["node", "--id", "g2n1", "--cluster"])
            .arg(c.path());
        spawn_ready(&mut cmd, 1)
    };
    nodes.procs.insert("g2n1".into(), limited(&c));

    // Group 2 already holds some keys, newer or deleted: the full disk must not cost them.
    let mut writes = Vec::new();
    let mut model = Model::new();
    for i in 0..160 {
        let key = format!("{test}-{i}");
        let mut big = format!("{key};")
            .repeat((64 << 10) / (key.len() + 1) + 1)
            .into_bytes();
        big.truncate(64 << 10);
        let v1 = Version::of_value(&big, 10, 0);
        writes.push((1, key.clone(), big, 10, false));
        acknowledge(&mut model, &key, v1);
        if rng.chance(150) {
            let tomb = rng.chance(500);
            let value = if tomb { Vec::new() } else { value_of(&key, 20) };
            writes.push((2, key.clone(), value, 20, tomb));
            acknowledge(&mut model, &key, version_of(&key, 20, tomb));
        }
    }
    c.write_versions(&writes);
    let keys: Vec<String> = model.keys().cloned().collect();
    let before = c.records(&[1, 2], &keys);

    let args = [
        "dc",
        "-g",
        "1,2",
        "--connect-timeout",
        "1",
        "--stats",
        "json",
    ];
    let end = run_to_end(&c.path(), c.dir.path(), "dc-full", &args);
    assert_eq!(end.code, Some(1), "{end}");
    assert!(
        end.stderr.contains("g2n1") && end.stderr.contains("storage failure"),
        "names the node and its storage failure: {end}"
    );
    let stats = dc_stats(&end);
    assert!(stats["failed"].as_u64().unwrap() > 0, "{stats}");
    // The node stays in `nodes`, so that it is killed however this test ends.
    let limited_node = nodes.procs.get_mut("g2n1").unwrap();
    assert!(
        limited_node.try_wait().unwrap().is_none(),
        "the node survives its full disk"
    );
    let limited_pid = limited_node.id();
    // Nothing lost: every replica holds what it held before or the model's version.
    for ((key, was), now) in keys.iter().zip(&before).zip(c.records(&[1, 2], &keys)) {
        for g in 0..2 {
            assert!(
                now[g] == was[g] || now[g] == healthy(model[key]),
                "{key}: group {} held {:?}, now {:?}",
                g + 1,
                was[g],
                now[g]
            );
        }
    }

    // Room again, for the same node process (its store reopens itself after the I/O
    // error; there is no restart): a new run converges.
    let room = match &_mounted {
        Some(m) => Command::new("mount")
            .args(["-o", "remount,size=64m"])
            .arg(&m.0)
            .status(),
        None => Command::new("prlimit")
            .arg("--pid")
            .arg(limited_pid.to_string())
            .arg("--fsize=unlimited:")
            .status(),
    };
    assert!(room.is_ok_and(|s| s.success()), "cannot give the node room");
    let end = run_to_end(
        &c.path(),
        c.dir.path(),
        "dc-room",
        &["dc", "-g", "1,2", "--stats", "json"],
    );
    assert_eq!(end.code, Some(0), "{end}");
    assert_converged(&c, &[1, 2], &model);
    drop(nodes);
}

#[test]
fn dc_onto_a_destination_whose_disk_fills_up_fails_by_name_and_converges_once_there_is_room() {
    full_disk("full-disk", SmallDisk::FileSizeLimit);
}

#[test]
fn dc_onto_a_full_tmpfs_fails_by_name_and_converges_once_there_is_room() {
    full_disk("full-tmpfs", SmallDisk::Tmpfs);
}

// ---------------------------------------------------------------------------------------
// Values corrupted on disk

#[test]
fn values_rotten_on_a_source_are_never_copied_and_are_repaired_after_scrub() {
    let mut rng = Rng::for_test("rot");
    let c = Cluster::init(3, 1);
    let mut nodes = c.start_each();
    // Groups 1 and 2 hold the newest version, group 3 an older one, a tombstone or
    // nothing. Then group 1's copies of the newest values rot.
    let (mut writes, mut model, mut rotten) = (Vec::new(), Model::new(), Vec::new());
    for i in 0..300 {
        let key = format!("rot-{i}");
        let new = format!("new value of {key}, to rot on disk;").repeat(8);
        for g in [1, 2] {
            writes.push((g, key.clone(), new.clone().into_bytes(), 20, false));
        }
        acknowledge(&mut model, &key, Version::of_value(new.as_bytes(), 20, 0));
        match rng.range(0, 2) {
            0 => {}
            s => {
                let tomb = s == 2;
                let value = if tomb { Vec::new() } else { value_of(&key, 10) };
                writes.push((3, key.clone(), value, 10, tomb));
            }
        }
        if rng.chance(500) {
            rotten.push(new);
        }
    }
    c.write_versions(&writes);
    stop_node(&mut nodes, "g1n1");
    let needles: Vec<&[u8]> = rotten.iter().map(|v| &v.as_bytes()[40..90]).collect();
    let flipped = support::rot_store(&c.path(), "g1n1", &needles, 7, 0x55);
    assert!(
        flipped >= rotten.len(),
        "{flipped} flips for {} values",
        rotten.len()
    );
    restart(&c, &mut nodes, "g1n1");

    // dc copies from the first replica holding the newest version: group 1's rotten copy is
    // caught by its checksum on the way, never written anywhere, and named.
    let args = ["dc", "-g", "1,2,3", "--stats", "json"];
    let end = run_to_end(&c.path(), c.dir.path(), "dc-rot", &args);
    assert_eq!(end.code, Some(1), "{end}");
    assert!(
        end.stderr.contains("g1n1") && end.stderr.contains("corrupt"),
        "names the node and the corruption: {end}"
    );
    let scrub3 = c.run(&["scrub", "-g", "3"]);
    assert_eq!(
        scrub3.status.code(),
        Some(0),
        "nothing rotten reached group 3: {}",
        String::from_utf8_lossy(&scrub3.stdout)
    );
    // Scrub marks the rotten copies; the next run repairs them from group 2.
    assert_eq!(c.run(&["scrub", "-g", "1"]).status.code(), Some(1));
    let end = run_to_end(&c.path(), c.dir.path(), "dc-repair", &args);
    assert_eq!(end.code, Some(0), "{end}");
    assert_converged(&c, &[1, 2, 3], &model);
    assert_eq!(c.run(&["scrub", "-g", "1,2,3"]).status.code(), Some(0));
}

// ---------------------------------------------------------------------------------------
// Temp metadata files and journals damaged

/// How a temp metadata file is damaged.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// One byte flipped anywhere.
    Flip,
    /// Cut short anywhere (down to nothing).
    Truncate,
    /// Replaced by another range's intact file.
    Swap,
    /// Gone.
    Delete,
}

#[test]
fn metadata_files_damaged_between_gather_and_merge_stop_the_run_by_name_and_resume_converges() {
    let mut rng = Rng::for_test("metafiles");
    let c = Cluster::init(3, 1);
    let _nodes = c.start_each();
    for (round, damage) in [Damage::Flip, Damage::Truncate, Damage::Swap, Damage::Delete]
        .into_iter()
        .enumerate()
    {
        // Keys in group 1 only, spread over all 16 range batches.
        let (writes, model) = one_sided(&format!("meta{round}"), 960);
        c.write_versions(&writes);
        let tmp = c.dir.path().join(format!("runs{round}"));
        std::fs::create_dir(&tmp).unwrap();
        let args = [
            "dc",
            "-g",
            "1,2,3",
            "-b",
            "16",
            "--max-keys-per-sec",
            "400",
            "--tmp-dir",
            tmp.to_str().unwrap(),
            "--stats",
            "json",
        ];
        let mut run = spawn(&c.path(), c.dir.path(), &format!("dc-meta{round}"), &args);
        // A journaled range batch: gathering is over, merging has begun.
        let mut dir = None;
        run.await_signal("a journaled range batch", || {
            dir = run_dir(&tmp);
            dir.as_deref().is_some_and(|d| !journaled(d).is_empty())
        });
        let dir = dir.unwrap();
        // A range batch a few places after those in hand (two at once, in the run's
        // order), not opened yet.
        let order = mend_engine::run::far_apart((0..16).collect::<Vec<usize>>());
        let place = |r: &usize| order.iter().position(|o| o == r).unwrap();
        let next = journaled(&dir).iter().map(place).max().unwrap() + 4;
        let range = order[rng.range(next as u64, 15) as usize];
        let slot = rng.range(0, 2);
        let victim = dir.join(format!("range{range:05}-slot{slot}-0000.meta"));
        let mut bytes = std::fs::read(&victim).unwrap();
        match damage {
            Damage::Flip => {
                let at = rng.range(0, bytes.len() as u64 - 1) as usize;
                bytes[at] ^= 1 << rng.range(0, 7);
                std::fs::write(&victim, &bytes).unwrap();
            }
            Damage::Truncate => {
                bytes.truncate(rng.range(0, bytes.len() as u64 - 1) as usize);
                std::fs::write(&victim, &bytes).unwrap();
            }
            Damage::Swap => {
                let other = (range + rng.range(1, 15) as usize) % 16;
                let from = dir.join(format!("range{other:05}-slot{slot}-0000.meta"));
                std::fs::copy(from, &victim).unwrap();
            }
            Damage::Delete => std::fs::remove_file(&victim).unwrap(),
        }
        eprintln!("{damage:?} on {}", victim.display());
        let end = run.wait();
        assert_eq!(end.code, Some(1), "{damage:?}: {end}");
        assert!(
            end.stderr.contains(victim.to_str().unwrap()),
            "{damage:?}: names the file: {end}"
        );
        assert!(
            !journaled(&dir).contains(&range),
            "{damage:?}: the damaged range batch is not journaled as done"
        );
        // The resumed run gathers that range again (a temp file is never trusted across
        // runs) and converges.
        let resume = [
            "dc",
            "-g",
            "1,2,3",
            "--resume",
            dir.to_str().unwrap(),
            "--stats",
            "json",
        ];
        let end = run_to_end(
            &c.path(),
            c.dir.path(),
            &format!("dc-meta{round}-resume"),
            &resume,
        );
        assert_eq!(end.code, Some(0), "{damage:?}: {end}");
        assert_converged(&c, &[1, 2, 3], &model);
    }
}

/// How a run dir's journal is damaged.
#[derive(Debug, Clone, Copy)]
enum JournalDamage {
    /// A line's range batch index changed (it now claims another batch).
    WrongIndex,
    /// The last line cut short.
    TornLine,
    /// Zeros appended (a file extended but not written, after a power loss).
    Zeros,
}

#[test]
fn a_run_killed_then_its_journal_or_plan_damaged_refuses_to_resume_by_name_and_a_new_run_converges()
{
    let mut rng = Rng::for_test("journal");
    let c = Cluster::init(3, 1);
    let _nodes = c.start_each();
    let damages = [
        JournalDamage::WrongIndex,
        JournalDamage::TornLine,
        JournalDamage::Zeros,
    ];
    let damage = *rng.pick(&damages);
    let (writes, model) = one_sided("journal", 960);
    c.write_versions(&writes);
    let tmp = c.dir.path().join("runs");
    std::fs::create_dir(&tmp).unwrap();
    let args = [
        "dc",
        "-g",
        "1,2,3",
        "-b",
        "16",
        "--max-keys-per-sec",
        "400",
        "--tmp-dir",
        tmp.to_str().unwrap(),
    ];
    // The run itself is killed with kill -9 after a random number of range batches.
    let after = rng.range(1, 4) as usize;
    eprintln!("killing the run after {after} range batches; then {damage:?}");
    let mut run = spawn(&c.path(), c.dir.path(), "dc-journal", &args);
    let mut dir = None;
    run.await_signal("journaled range batches", || {
        dir = run_dir(&tmp);
        dir.as_deref().is_some_and(|d| journaled(d).len() >= after)
    });
    Command::new("kill")
        .args(["-KILL", &run.pid().to_string()])
        .status()
        .unwrap();
    let end = run.wait();
    assert_eq!(end.code, None, "killed by a signal: {end}");
    let dir = dir.unwrap();
    let keys: Vec<String> = model.keys().cloned().collect();
    let before = c.records(&[1, 2, 3], &keys);

    let journal = dir.join("journal");
    let text = std::fs::read_to_string(&journal).unwrap();
    let damaged = match damage {
        JournalDamage::WrongIndex => {
            let mut lines: Vec<String> = text.lines().map(String::from).collect();
            let i = rng.range(0, lines.len() as u64 - 1) as usize;
            let mut words: Vec<String> = lines[i].split(' ').map(String::from).collect();
            let index: usize = words[1].parse().unwrap();
            words[1] = ((index + rng.range(1, 15) as usize) % 16).to_string();
            lines[i] = words.join(" ");
            format!("{}\n", lines.join("\n"))
        }
        JournalDamage::TornLine => {
            let trimmed = text.trim_end_matches('\n');
            let last = trimmed.rfind('\n').map_or(0, |p| p + 1);
            let cut = last + rng.range(1, (trimmed.len() - last - 1) as u64) as usize;
            trimmed[..cut].to_string()
        }
        JournalDamage::Zeros => format!("{text}{}", "\0".repeat(rng.range(1, 64) as usize)),
    };
    std::fs::write(&journal, &damaged).unwrap();
    let resume = ["dc", "-g", "1,2,3", "--resume", dir.to_str().unwrap()];
    let end = run_to_end(&c.path(), c.dir.path(), "dc-resume-journal", &resume);
    assert!(matches!(end.code, Some(1 | 2)), "{damage:?}: {end}");
    assert!(
        end.stderr.contains(journal.to_str().unwrap()),
        "{damage:?}: names the journal: {end}"
    );
    assert_eq!(
        c.records(&[1, 2, 3], &keys),
        before,
        "{damage:?} changed something"
    );

    // The plan cut short: refused the same way.
    std::fs::write(&journal, &text).unwrap();
    let plan = dir.join("run.json");
    let full = std::fs::read(&plan).unwrap();
    std::fs::write(&plan, &full[..rng.range(0, full.len() as u64 - 1) as usize]).unwrap();
    let end = run_to_end(&c.path(), c.dir.path(), "dc-resume-plan", &resume);
    assert!(matches!(end.code, Some(1 | 2)), "{end}");
    assert!(
        end.stderr.contains(plan.to_str().unwrap()),
        "names the plan: {end}"
    );
    assert_eq!(
        c.records(&[1, 2, 3], &keys),
        before,
        "a damaged plan changed something"
    );

    // Journal and plan restored, but every temp metadata file the killed run left is
    // damaged: the resume gathers the ranges it redoes again (a temp file is never trusted
    // across runs), does not redo the journaled ones, and converges.
    std::fs::write(&plan, &full).unwrap();
    for meta in meta_files(&dir) {
        let mut bytes = std::fs::read(&meta).unwrap();
        let at = rng.range(0, bytes.len() as u64 - 1) as usize;
        bytes[at] ^= 0xff;
        std::fs::write(&meta, &bytes).unwrap();
    }
    let mut resume = resume.to_vec();
    resume.extend(["--stats", "json"]);
    let end = run_to_end(&c.path(), c.dir.path(), "dc-resume", &resume);
    assert_eq!(end.code, Some(0), "{end}");
    assert_eq!(
        dc_stats(&end)["ranges_resumed"].as_u64(),
        Some(text.lines().count() as u64),
        "{end}"
    );
    assert_converged(&c, &[1, 2, 3], &model);
    // And a new run finds nothing to do.
    let again = ["dc", "-g", "1,2,3", "--stats", "json"];
    let end = run_to_end(&c.path(), c.dir.path(), "dc-new", &again);
    assert_eq!(end.code, Some(0), "{end}");
    assert_eq!(dc_stats(&end)["differing"], 0, "{end}");
}
