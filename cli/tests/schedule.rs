//! `mend schedule` on real clusters: the long-lived scheduler keeping groups in sync under
//! writes and stopping cleanly on SIGTERM, runs killed with kill -9 and resumed (by
//! `mend dc --resume` and by the scheduler itself), one run per job at a time, and the
//! Prometheus metrics read back by a parser.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mend_engine::{Id, Version};
use support::Cluster;

/// A write that builds a case: (group, key, value, timestamp, tombstone).
type Write = (u32, String, Vec<u8>, u64, bool);

/// How long any awaited progress may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// Writes a schedule file for `c` (state in `state/` beside it) and returns its path.
fn schedule_file(c: &Cluster, jobs: &str) -> PathBuf {
    let path = c.dir.path().join("schedule.toml");
    let text = format!(
        "state_dir = \"state\"\ncluster = {:?}\n{jobs}",
        c.path().display().to_string()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn state_dir(c: &Cluster) -> PathBuf {
    c.dir.path().join("state")
}

/// The rows of the history, as maps from column to value.
fn history(c: &Cluster) -> Vec<std::collections::BTreeMap<String, String>> {
    let path = state_dir(c).join("history.csv");
    if !path.exists() {
        return Vec::new();
    }
    csv::Reader::from_path(path)
        .unwrap()
        .deserialize()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Waits until `ready()` holds, polling; panics after [`PATIENCE`] or if `child` exits.
fn wait_for(what: &str, child: &mut Child, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !ready() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("exited with {status} while waiting for {what}");
        }
        assert!(Instant::now() < deadline, "no {what} in {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "did not exit in {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// `mend schedule --config FILE ARGS…` as a child, its stderr in `log`.
fn spawn_schedule(c: &Cluster, config: &Path, args: &[&str], log: &Path) -> Child {
    c.mend()
        .arg("schedule")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn status_json(c: &Cluster, config: &Path) -> serde_json::Value {
    let out = c.ok(&[
        "schedule",
        "--config",
        config.to_str().unwrap(),
        "status",
        "--json",
    ]);
    serde_json::from_str(&out).unwrap()
}

fn now_ns() -> u64 {
    mend_engine::now_ns()
}

fn verify_in_sync(c: &Cluster) {
    let out = c.run(&["verify", "-g", "1,2,3"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_scheduler_keeps_groups_in_sync_under_writes_and_stops_on_sigterm() {
    let c = Cluster::start(3, 1);
    let base: Vec<Write> = (0..150)
        .flat_map(|i| [1, 2, 3].map(|g| (g, format!("base-{i}"), b"base".to_vec(), 10, false)))
        .collect();
    c.write_versions(&base);
    let config = schedule_file(
        &c,
        r#"
[[job]]
name = "dc-often"
kind = "dc"
groups = [1, 2, 3]
interval = "150ms"
overlap = "5s"
full_every_runs = 3
"#,
    );
    let log = c.dir.path().join("scheduler.log");
    let mut scheduler = spawn_schedule(&c, &config, &[], &log);

    // The writer: five rounds, each after the scheduler finished one more run, each
    // writing to a single group (new keys, newer versions of old keys, deletes).
    let mut expected: Vec<(String, Version)> = Vec::new();
    for round in 0..5u32 {
        wait_for("a run", &mut scheduler, || {
            history(&c).len() > round as usize
        });
        let group = round % 3 + 1;
        let ts = now_ns();
        let mut writes: Vec<Write> = Vec::new();
        for i in 0..20 {
            let key = format!("new-{round}-{i}");
            writes.push((group, key, format!("v{round}").into_bytes(), ts, false));
        }
        for i in 0..10 {
            let key = format!("base-{}", round * 10 + i);
            writes.push((group, key, format!("newer{round}").into_bytes(), ts, false));
        }
        for i in 0..5 {
            let key = format!("base-{}", 100 + round * 5 + i);
            writes.push((group, key, Vec::new(), ts, true));
        }
        for (_, key, value, ts, tomb) in &writes {
            let v = if *tomb {
                Version::tombstone(*ts)
            } else {
                Version::of_value(value, *ts, 0)
            };
            expected.push((key.clone(), v));
        }
        c.write_versions(&writes);
    }
    // One more run that started after the last write was acknowledged: the run in
    // progress (if any) ends, then the next one starts and ends.
    let after_writes = history(&c).len() + 2;
    wait_for("the runs after the writes", &mut scheduler, || {
        history(&c).len() >= after_writes
    });
    sigterm(&scheduler);
    let status = wait_exit(&mut scheduler);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(text.contains("stopping"), "{text}");
    assert!(text.contains("scheduler stopped"), "{text}");

    verify_in_sync(&c);
    let keys: Vec<String> = expected.iter().map(|(k, _)| k.clone()).collect();
    for ((key, v), recs) in expected.iter().zip(c.records(&[1, 2, 3], &keys)) {
        assert!(
            recs.iter().all(|r| r.map(|r| r.version) == Some(*v)),
            "{key}: {recs:?}, expected {v:?} everywhere"
        );
    }

    // The history has one line per run, all converged (but the last one, if SIGTERM
    // stopped it), incremental between full ones.
    let rows = history(&c);
    let state = status_json(&c, &config);
    assert_eq!(state["jobs"][0]["runs"].as_u64(), Some(rows.len() as u64));
    assert!(rows.len() >= 7, "{rows:?}");
    let stopped = usize::from(rows.last().unwrap()["exit_status"] == "1");
    assert!(
        rows[..rows.len() - stopped]
            .iter()
            .all(|r| r["job"] == "dc-often" && r["exit_status"] == "0"),
        "{rows:?}"
    );
    assert_eq!(rows[0]["source"], "full");
    assert!(
        rows.iter().any(|r| r["source"].starts_with("since ")),
        "{rows:?}"
    );
    for (i, r) in rows.iter().enumerate() {
        let full = r["source"] == "full";
        assert_eq!(full, i % 3 == 0, "run {i} of F I I F I I …: {rows:?}");
    }
    let copied: u64 = rows
        .iter()
        .map(|r| r["copied"].parse::<u64>().unwrap())
        .sum();
    // Every key written to one group reached the two others.
    assert!(
        copied >= 2 * expected.len() as u64,
        "{copied} copies: {rows:?}"
    );
    // And the stats of every run are kept.
    let stats = std::fs::read_dir(state_dir(&c).join("dc-often/runs"))
        .unwrap()
        .count();
    assert_eq!(stats, rows.len());
}

/// Keys in group 1 only, spread over every range batch.
fn one_sided_keys(c: &Cluster, n: usize) -> Vec<String> {
    let keys: Vec<String> = (0..n).map(|i| format!("resume-{i}")).collect();
    let writes: Vec<Write> = keys
        .iter()
        .map(|k| (1, k.clone(), k.as_bytes().repeat(4), 10, false))
        .collect();
    c.write_versions(&writes);
    keys
}

fn journal(run_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(run_dir.join("journal"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// The range batch index of each journal line (`done INDEX PARTITIONS`).
fn journal_indexes(lines: &[String]) -> Vec<usize> {
    lines
        .iter()
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect()
}

fn assert_everywhere(c: &Cluster, keys: &[String]) {
    verify_in_sync(c);
    for (key, recs) in keys.iter().zip(c.records(&[1, 2, 3], keys)) {
        let v = Version::of_value(&key.as_bytes().repeat(4), 10, 0);
        assert!(
            recs.iter().all(|r| r.map(|r| r.version) == Some(v)),
            "{key}: {recs:?}"
        );
    }
}

#[test]
fn a_dc_run_killed_halfway_resumes_without_repeating_done_ranges() {
    let c = Cluster::start(3, 1);
    let keys = one_sided_keys(&c, 1000);
    let tmp = c.dir.path().join("runs");
    std::fs::create_dir(&tmp).unwrap();
    // Slowed down so that it is certainly still running once a range batch is journaled.
    let mut dc = c
        .mend()
        .args([
            "dc",
            "-g",
            "1,2,3",
            "-n",
            "1",
            "-b",
            "16",
            "--max-keys-per-sec",
            "500",
        ])
        .arg("--tmp-dir")
        .arg(&tmp)
        .arg("--keep-tmp")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run_dir = await_journaled_dir(&tmp, &mut dc);
    dc.kill().unwrap();
    dc.wait().unwrap();
    let before = journal(&run_dir);
    assert!((1..16).contains(&before.len()), "{before:?}");
    let done: BTreeSet<usize> = journal_indexes(&before).into_iter().collect();

    let out = c.run(&[
        "dc",
        "-g",
        "1,2,3",
        "--resume",
        run_dir.to_str().unwrap(),
        "--keep-tmp",
        "--stats",
        "json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["ranges"], 16, "{stats}");
    assert_eq!(
        stats["ranges_resumed"].as_u64(),
        Some(before.len() as u64),
        "{stats}"
    );
    // Only keys of the batches not done were looked at.
    let left = keys
        .iter()
        .filter(|k| !done.contains(&(Id::from_key(k.as_bytes()).partition() as usize / 4096)))
        .count() as u64;
    let decided = stats["keys"].as_u64().unwrap();
    assert!(
        decided > 0 && decided <= left,
        "{decided} keys decided, {left} left: {stats}"
    );

    let after = journal(&run_dir);
    assert_eq!(
        after[..before.len()],
        before[..],
        "the journal is appended to"
    );
    let indexes = journal_indexes(&after);
    let unique: BTreeSet<usize> = indexes.iter().copied().collect();
    assert_eq!(
        unique.len(),
        indexes.len(),
        "a range batch was done twice: {after:?}"
    );
    assert_eq!(unique, (0..16).collect(), "{after:?}");
    assert_everywhere(&c, &keys);
}

#[test]
fn sigterm_stops_a_dc_run_after_its_current_batch_and_it_resumes() {
    let c = Cluster::start(3, 1);
    let keys = one_sided_keys(&c, 1000);
    let tmp = c.dir.path().join("runs");
    std::fs::create_dir(&tmp).unwrap();
    let log = c.dir.path().join("dc.log");
    let mut dc = c
        .mend()
        .args(["dc", "-g", "1,2,3", "-b", "16", "--max-keys-per-sec", "200"])
        .arg("--tmp-dir")
        .arg(&tmp)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let run_dir = await_journaled_dir(&tmp, &mut dc);
    sigterm(&dc);
    let status = wait_exit(&mut dc);
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("--resume {}", run_dir.display())),
        "{err}"
    );
    let before = journal(&run_dir);
    assert!((1..16).contains(&before.len()), "{before:?}");

    let out = c.run(&["dc", "-g", "1,2,3", "--stats", "json", "--resume"]);
    assert_eq!(out.status.code(), Some(2), "--resume needs a run dir");
    let resume = run_dir.to_str().unwrap();
    let out = c.run(&["dc", "-g", "1,2,3", "--stats", "json", "--resume", resume]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        stats["ranges_resumed"].as_u64(),
        Some(before.len() as u64),
        "{stats}"
    );
    assert_everywhere(&c, &keys);
}

#[test]
fn the_scheduler_resumes_a_run_killed_halfway() {
    let c = Cluster::start(3, 1);
    let keys = one_sided_keys(&c, 1000);
    let job = r#"
[[job]]
name = "dc"
kind = "dc"
groups = [1, 2, 3]
interval = "1h"
"#;
    let config = schedule_file(&c, &format!("{job}max_keys_per_sec = 500\n"));
    let log = c.dir.path().join("once.log");
    let mut once = spawn_schedule(&c, &config, &["--once", "dc"], &log);
    let run_dir = await_journaled_run(&c, "dc", &mut once);
    let pid = once.id();
    once.kill().unwrap();
    once.wait().unwrap();
    let before = journal(&run_dir);
    assert!((1..16).contains(&before.len()), "{before:?}");

    // status sees the interrupted run and the stale lock.
    let status = status_json(&c, &config);
    let j = &status["jobs"][0];
    assert_eq!(
        j["interrupted_run"].as_str(),
        Some(run_dir.to_str().unwrap()),
        "{j}"
    );
    assert_eq!(j["stale_lock"].as_u64(), Some(u64::from(pid)), "{j}");
    assert_eq!(j["next_source"], "full, resumed", "{j}");
    assert!(history(&c).is_empty());

    // The next run, without the rate limit (politeness is not part of the plan), takes
    // the lock over and resumes the same run.
    let config = schedule_file(&c, job);
    let out = c.run(&[
        "schedule",
        "--config",
        config.to_str().unwrap(),
        "--once",
        "dc",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!("taking over a stale lock: pid {pid} died")),
        "{err}"
    );
    assert!(err.contains("resuming the run"), "{err}");
    let stats_dir = state_dir(&c).join("dc/runs");
    let stats: Vec<serde_json::Value> = std::fs::read_dir(&stats_dir)
        .unwrap()
        .flatten()
        .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
        .collect();
    assert_eq!(stats.len(), 1);
    assert_eq!(
        stats[0]["ranges_resumed"].as_u64(),
        Some(before.len() as u64),
        "{}",
        stats[0]
    );
    assert_eq!(stats[0]["resumed"], true);
    let rows = history(&c);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["source"], "full, resumed");
    assert_eq!(rows[0]["exit_status"], "0");
    assert!(!run_dir.exists(), "the finished run's dir is removed");
    let j = &status_json(&c, &config)["jobs"][0];
    assert!(
        j["interrupted_run"].is_null() && j["stale_lock"].is_null(),
        "{j}"
    );
    assert_everywhere(&c, &keys);
}

/// Waits until the run dir `dc` makes in `tmp` has journaled a range batch; that run dir.
fn await_journaled_dir(tmp: &Path, dc: &mut Child) -> PathBuf {
    let mut run_dir = None;
    wait_for("a journaled range batch", dc, || {
        run_dir = std::fs::read_dir(tmp)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .next();
        run_dir.as_deref().is_some_and(|d| !journal(d).is_empty())
    });
    run_dir.expect("a run dir")
}

/// Polls the job's state until its current run has journaled a range batch; its run dir.
fn await_journaled_run(c: &Cluster, job: &str, child: &mut Child) -> PathBuf {
    let state_file = state_dir(c).join(job).join("state.json");
    let mut run_dir = PathBuf::new();
    wait_for("a journaled range batch", child, || {
        let Ok(text) = std::fs::read_to_string(&state_file) else {
            return false;
        };
        let state: serde_json::Value = serde_json::from_str(&text).unwrap();
        match state["current"]["run_dir"].as_str() {
            Some(dir) => {
                run_dir = PathBuf::from(dir);
                !journal(&run_dir).is_empty()
            }
            None => false,
        }
    });
    run_dir
}

#[test]
fn sigterm_stops_the_scheduler_after_the_current_batch_and_the_next_run_resumes() {
    let c = Cluster::start(3, 1);
    let keys = one_sided_keys(&c, 1000);
    let job = r#"
[[job]]
name = "dc"
kind = "dc"
groups = [1, 2, 3]
interval = "1h"
batch = 16
"#;
    // Slow (5 s for the whole run), so SIGTERM certainly lands in the middle of it.
    let config = schedule_file(&c, &format!("{job}max_keys_per_sec = 200\n"));
    let log = c.dir.path().join("scheduler.log");
    let mut scheduler = spawn_schedule(&c, &config, &[], &log);
    let run_dir = await_journaled_run(&c, "dc", &mut scheduler);
    sigterm(&scheduler);
    let status = wait_exit(&mut scheduler);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(text.contains("finish their current batch"), "{text}");
    assert!(text.contains("scheduler stopped"), "{text}");

    // It stopped after a batch, not after the run: range batches are left, the run dir
    // is kept, and the run is recorded as stopped.
    let before = journal(&run_dir);
    assert!((1..16).contains(&before.len()), "{before:?}\n{text}");
    assert!(run_dir.join("run.json").is_file());
    let rows = history(&c);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["exit_status"], "1", "{rows:?}");
    let j = &status_json(&c, &config)["jobs"][0];
    assert_eq!(
        j["interrupted_run"].as_str(),
        Some(run_dir.to_str().unwrap()),
        "{j}"
    );
    assert!(
        j["last_run"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("stopped by a signal")),
        "{j}"
    );

    // The next run resumes where the journal ends and converges.
    let config = schedule_file(&c, job);
    let out = c.run(&[
        "schedule",
        "--config",
        config.to_str().unwrap(),
        "--once",
        "dc",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("resuming the run"), "{err}");
    let rows = history(&c);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1]["source"], "full, resumed");
    assert_eq!(rows[1]["exit_status"], "0");
    let indexes = journal_indexes(&before);
    assert_eq!(
        indexes.iter().copied().collect::<BTreeSet<usize>>().len(),
        indexes.len()
    );
    assert!(!run_dir.exists(), "the finished run's dir is removed");
    assert_everywhere(&c, &keys);
}

#[test]
fn two_runs_of_one_job_never_overlap() {
    let c = Cluster::start(3, 1);
    let keys = one_sided_keys(&c, 300);
    let config = schedule_file(
        &c,
        r#"
[[job]]
name = "dc"
kind = "dc"
groups = [1, 2, 3]
interval = "1h"
max_keys_per_sec = 300
"#,
    );
    let config_arg = config.to_str().unwrap();
    let lock = state_dir(&c).join("dc/lock");

    // A holder that is not a mend process: the lock file locked by this test.
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
            .unwrap();
        file.try_lock().unwrap();
        use std::io::Write as _;
        writeln!(file, "{}", std::process::id()).unwrap();
        let out = c.run(&["schedule", "--config", config_arg, "--once", "dc"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(
            err.contains(&format!(
                "job \"dc\" is already running (pid {}",
                std::process::id()
            )),
            "{err}"
        );
        assert!(err.contains("not starting another run"), "{err}");
        file.set_len(0).unwrap();
    }
    assert!(history(&c).is_empty(), "the refused run recorded nothing");

    // Two mend processes: the second starts while the first (slowed to 300 keys/s)
    // holds the lock.
    let log = c.dir.path().join("first.log");
    let mut first = spawn_schedule(&c, &config, &["--once", "dc"], &log);
    let pid = first.id().to_string();
    wait_for("the first run's lock", &mut first, || {
        std::fs::read_to_string(&lock).is_ok_and(|t| t.trim() == pid)
    });
    let out = c.run(&["schedule", "--config", config_arg, "--once", "dc"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!("already running (pid {pid}")),
        "{err}"
    );
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first run was still running when the second was refused"
    );
    let status = wait_exit(&mut first);
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    let rows = history(&c);
    assert_eq!(rows.len(), 1, "exactly one run: {rows:?}");
    assert_eq!(rows[0]["differing"], keys.len().to_string());
    assert_eq!(std::fs::read_to_string(&lock).unwrap(), "", "released");
    verify_in_sync(&c);
}

#[test]
fn metrics_parse_as_prometheus_text_and_status_shows_every_job() {
    let c = Cluster::start(3, 1);
    let keys = one_sided_keys(&c, 40);
    let config = schedule_file(
        &c,
        r#"
metrics_file = "mend.prom"

[[job]]
name = "check"
kind = "verify"
groups = [1, 2, 3]
cron = "*/10 * * * *"

[[job]]
name = "repair"
kind = "dc"
groups = [1, 2, 3]
interval = "1h"
jitter = "5m"
"#,
    );
    let config_arg = config.to_str().unwrap();
    let once = |job: &str| c.run(&["schedule", "--config", config_arg, "--once", job]);
    // verify finds the differences (exit 1), dc repairs them, verify agrees.
    assert_eq!(once("check").status.code(), Some(1));
    let dump = std::fs::read_to_string(state_dir(&c).join("check/differences.dump")).unwrap();
    assert_eq!(dump.lines().count(), keys.len());
    assert_eq!(once("repair").status.code(), Some(0));
    // --metrics-file overrides the config's file.
    let other = c.dir.path().join("other.prom");
    let out = c.run(&[
        "schedule",
        "--config",
        config_arg,
        "--once",
        "check",
        "--metrics-file",
        other.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(other.exists());

    let text = std::fs::read_to_string(c.dir.path().join("mend.prom")).unwrap();
    // Every line is a HELP, TYPE or sample line to the parser (it skips what it cannot
    // read, so that is checked line by line), and every sample has a parsable value.
    let mut sample_lines = 0;
    for line in text.lines() {
        match prometheus_parse::LineInfo::parse(line) {
            prometheus_parse::LineInfo::Sample { .. } => sample_lines += 1,
            prometheus_parse::LineInfo::Doc { .. } | prometheus_parse::LineInfo::Type { .. } => {}
            other => panic!("not a Prometheus text line: {line:?} ({other:?})"),
        }
    }
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert_eq!(scrape.samples.len(), sample_lines, "{text}");
    let value = |metric: &str, job: &str| -> prometheus_parse::Value {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == metric && s.labels.get("job") == Some(job))
            .unwrap_or_else(|| panic!("no {metric} for {job} in\n{text}"))
            .value
            .clone()
    };
    use prometheus_parse::Value::{Counter, Gauge};
    for s in &scrape.samples {
        assert!(
            scrape.docs.contains_key(&s.metric),
            "no HELP for {}",
            s.metric
        );
        assert!(
            matches!(s.value, Counter(_) | Gauge(_)),
            "no TYPE for {}",
            s.metric
        );
    }
    // The config's file was written after the dc run (the last --once wrote the other).
    assert_eq!(value("mend_schedule_runs_total", "check"), Counter(1.0));
    assert_eq!(value("mend_schedule_runs_total", "repair"), Counter(1.0));
    assert_eq!(
        value("mend_schedule_last_run_exit_status", "check"),
        Gauge(1.0)
    );
    assert_eq!(
        value("mend_schedule_last_run_keys_differing", "check"),
        Gauge(keys.len() as f64)
    );
    assert_eq!(
        value("mend_schedule_last_run_keys_differing", "repair"),
        Gauge(keys.len() as f64)
    );
    assert_eq!(
        value("mend_schedule_last_run_keys_copied", "repair"),
        Gauge(2.0 * keys.len() as f64)
    );
    assert_eq!(
        value("mend_schedule_last_run_keys_failed", "repair"),
        Gauge(0.0)
    );
    let Gauge(success) = value("mend_schedule_last_success_timestamp_seconds", "repair") else {
        panic!("a gauge")
    };
    let now = now_ns() as f64 / 1e9;
    assert!(success <= now && success > now - 60.0, "{success} vs {now}");
    let Gauge(duration) = value("mend_schedule_last_run_duration_seconds", "repair") else {
        panic!("a gauge")
    };
    assert!(duration > 0.0 && duration < 60.0);
    // verify never succeeded in the file read: no success time for it.
    assert!(!scrape.samples.iter().any(|s| {
        s.metric == "mend_schedule_last_success_timestamp_seconds"
            && s.labels.get("job") == Some("check")
    }));
    // Written by rename: no temp file is left.
    let leftovers: Vec<_> = std::fs::read_dir(c.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // status: every job, its last run and its next run.
    let out = c.ok(&["schedule", "--config", config_arg, "status"]);
    for needle in [
        "check (verify groups 1,2,3), cron \"*/10 * * * *\"",
        "repair (dc groups 1,2,3), every 1h, jitter 5m",
        "exit 0: 40 keys compared, 40 differing, 80 copied, 0 failed",
        "next run",
        "(since ",
    ] {
        assert!(out.contains(needle), "{needle:?} not in\n{out}");
    }
    let j = status_json(&c, &config);
    assert_eq!(j["jobs"][0]["runs"], 2);
    assert_eq!(j["jobs"][1]["last_run"]["copied"], 80);
    assert!(j["jobs"][1]["next_run"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn a_malformed_schedule_is_named_by_file_and_line_and_runs_nothing() {
    let c = Cluster::init(2, 1);
    let config = schedule_file(
        &c,
        "[[job]]\nname = \"x\"\nkind = \"dc\"\ngroups = [1, 2]\ninterval = \"every hour\"\n",
    );
    let out = c.run(&[
        "schedule",
        "--config",
        config.to_str().unwrap(),
        "--once",
        "x",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("schedule.toml:7:12:"), "{err}");
    assert!(err.contains("every hour"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!state_dir(&c).exists(), "nothing ran");
}
