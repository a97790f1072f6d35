//! One run of one job: take its lock, resume its interrupted run or start a new one
//! (incremental or full), call the engine, then record what happened: the job's state,
//! its stats, a history line and the metrics.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use mend_engine::run::{self, KeySource, Phase, RunConfig, RunError, RunObserver, RunReport};

use super::config::{Job, JobKind, ScheduleConfig};
use super::state::{
    append_history, show_ns, write_atomically, CurrentRun, HistoryRow, JobLock, JobState, LastRun,
    Source, KEEP_STATS,
};
use super::timing::choose_source;

/// The state dir of `job`.
pub fn job_dir(config: &ScheduleConfig, job: &str) -> PathBuf {
    config.state_dir.join(job)
}

/// Runs `job` once. Fails with a [`super::state::LockError::Busy`] when another process
/// runs it now; otherwise the run's outcome is in the returned [`LastRun`] (exit status 0:
/// converged or in sync; 1: something differs, failed or could not be reached).
pub async fn run_once(
    config: &ScheduleConfig,
    job: &Job,
    registry: &mend_policies::Registry,
    metrics_file: Option<&Path>,
    stop: &run::Stop,
) -> anyhow::Result<LastRun> {
    let dir = job_dir(config, &job.name);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the job's state dir {}", dir.display()))?;
    let (lock, stale) = JobLock::acquire(&job.name, &dir.join("lock"))?;
    if let Some(pid) = stale {
        tracing::warn!(
            job = job.name,
            pid,
            "taking over a stale lock: pid {pid} died holding it ({})",
            lock.path().display()
        );
    }
    let mut state = JobState::load(&dir)?;
    let began_ns = mend_engine::now_ns();
    let began = Instant::now();
    let done = match job.kind {
        JobKind::Verify => verify(job, &dir).await,
        JobKind::Dc | JobKind::Merge => {
            recover(job, &dir, &mut state, registry, began_ns, stop).await
        }
    };
    let end_ns = mend_engine::now_ns();
    let last = LastRun {
        start_ns: done.started_ns.unwrap_or(began_ns),
        end_ns,
        duration_ns: began.elapsed().as_nanos() as u64,
        source: done.source.clone(),
        exit_status: done.exit_status(),
        keys: done.keys,
        differing: done.differing,
        copied: done.copied,
        failed: done.failed,
        bytes: done.bytes,
        wire_bytes: done.wire_bytes,
        error: done.error.clone(),
    };
    state.runs += 1;
    if last.exit_status == 0 {
        state.last_success_start_ns = Some(last.start_ns);
        state.last_success_end_ns = Some(end_ns);
    }
    if last.exit_status == 0 && done.full {
        state.last_full_start_ns = Some(last.start_ns);
        state.runs_since_full = 0;
    } else {
        state.runs_since_full += 1;
    }
    state.last_run = Some(last.clone());
    state.save(&dir)?;

    let mut stats = done.stats;
    stats["job"] = serde_json::json!(job.name);
    stats["kind"] = serde_json::json!(job.kind.as_str());
    stats["source"] = serde_json::json!(last.source);
    stats["start"] = serde_json::json!(show_ns(last.start_ns));
    stats["end"] = serde_json::json!(show_ns(end_ns));
    stats["seconds"] = serde_json::json!(began.elapsed().as_secs_f64());
    stats["exit_status"] = serde_json::json!(last.exit_status);
    stats["error"] = serde_json::json!(last.error);
    write_stats(&dir, began_ns, &stats)?;
    append_history(
        &config.state_dir,
        &HistoryRow {
            start: show_ns(last.start_ns),
            end: show_ns(end_ns),
            job: job.name.clone(),
            source: last.source.clone(),
            keys_compared: last.keys,
            differing: last.differing,
            copied: last.copied,
            failed: last.failed,
            bytes: last.bytes,
            wire_bytes: last.wire_bytes,
            exit_status: last.exit_status,
        },
    )?;
    if let Some(path) = metrics_file {
        super::metrics::write(config, path)?;
    }
    match &last.error {
        None => tracing::info!(
            job = job.name,
            source = last.source,
            keys = last.keys,
            differing = last.differing,
            copied = last.copied,
            failed = last.failed,
            exit = last.exit_status,
            "run finished in {:.3}s",
            began.elapsed().as_secs_f64()
        ),
        Some(e) => tracing::error!(job = job.name, source = last.source, "run failed: {e}"),
    }
    drop(lock);
    Ok(last)
}

/// What a run found and did, before it is recorded.
#[derive(Debug, Default)]
struct Done {
    /// When the run first started, if it was a resumed one or a recovery.
    started_ns: Option<u64>,
    source: String,
    full: bool,
    keys: u64,
    differing: u64,
    copied: u64,
    failed: u64,
    bytes: u64,
    wire_bytes: u64,
    /// Something differs or failed (the work ran).
    not_converged: bool,
    error: Option<String>,
    stats: serde_json::Value,
}

impl Done {
    fn exit_status(&self) -> u8 {
        u8::from(self.not_converged || self.error.is_some())
    }

    fn failed_to(source: String, error: String) -> Done {
        Done {
            source,
            error: Some(error),
            stats: serde_json::json!({}),
            ..Done::default()
        }
    }
}

async fn verify(job: &Job, dir: &Path) -> Done {
    let source = "verify".to_string();
    let client = match job.cluster.connect().await {
        Ok(c) => c,
        Err(e) => return Done::failed_to(source, format!("{e:#}")),
    };
    let scope = mend_engine::compare::Scope {
        groups: job.groups.clone(),
        only_node: job.node.clone(),
    };
    let report = mend_engine::compare::by_fingerprints(
        &client,
        &scope,
        mend_engine::reconcile::Config::default(),
    )
    .await;
    let (sent, received) = client.pool().traffic();
    let report = match report {
        Ok(r) => r,
        Err(e) => return Done::failed_to(source, e.to_string()),
    };
    let differing = report.differences.len() as u64;
    let dump = dir.join("differences.dump");
    let mut error = None;
    if differing > 0 {
        if let Err(e) = mend_engine::dump::write(&dump, report.differences.iter().map(|d| d.id)) {
            error = Some(format!("cannot write {}: {e}", dump.display()));
        }
        tracing::warn!(
            job = job.name,
            "{differing} ids differ (listed in {}; `mend dc -f` repairs them)",
            dump.display()
        );
    } else {
        let _ = std::fs::remove_file(&dump);
    }
    Done {
        started_ns: None,
        source,
        full: true,
        keys: differing,
        differing,
        copied: 0,
        failed: 0,
        bytes: 0,
        wire_bytes: sent + received,
        not_converged: differing > 0,
        error,
        stats: serde_json::json!({
            "in_sync": differing == 0,
            "ranges": report.ranges,
            "round_trips": report.round_trips,
            "differing": differing,
            "bytes_sent": sent,
            "bytes_received": received,
        }),
    }
}

/// A dc or merge run: resumes the job's interrupted run if there is one, else starts a
/// new one.
async fn recover(
    job: &Job,
    dir: &Path,
    state: &mut JobState,
    registry: &mend_policies::Registry,
    now_ns: u64,
    stop: &run::Stop,
) -> Done {
    // Connect first: when the cluster cannot be reached, an interrupted run stays as it
    // is, to be resumed next time.
    let client = match job.cluster.connect().await {
        Ok(c) => c,
        Err(e) => {
            let source = match &state.current {
                Some(cur) => format!("{}, resumed", cur.source.describe()),
                None => choose_source(job, state, now_ns).describe(),
            };
            return Done::failed_to(source, format!("{e:#}"));
        }
    };
    let policy_name = job
        .run
        .policy
        .clone()
        .unwrap_or_else(|| job.kind.as_str().to_string());
    let policy = match registry.create(&policy_name) {
        Ok(p) => p,
        Err(e) => return Done::failed_to(format!("policy {policy_name}"), e.to_string()),
    };
    let mut resume = match state.current.clone() {
        Some(cur) if cur.run_dir.join(run::RUN_FILE).is_file() => {
            let done = run::journal_done(&cur.run_dir)
                .map(|d| d.len())
                .unwrap_or(0);
            tracing::info!(
                job = job.name,
                "resuming the run started {} by pid {} ({}): {done} range batches done",
                show_ns(cur.started_ns),
                cur.pid,
                cur.run_dir.display()
            );
            Some(cur)
        }
        _ => None,
    };
    loop {
        let current = match resume.take() {
            Some(cur) => (cur, true),
            None => {
                let source = choose_source(job, state, now_ns);
                let cur = CurrentRun {
                    run_dir: dir.join(format!("run-{now_ns}")),
                    started_ns: now_ns,
                    source,
                    pid: std::process::id(),
                };
                (cur, false)
            }
        };
        let (mut cur, resumed) = current;
        remove_other_run_dirs(dir, &cur.run_dir);
        cur.pid = std::process::id();
        state.current = Some(cur.clone());
        if let Err(e) = state.save(dir) {
            return Done::failed_to(cur.source.describe(), format!("{e:#}"));
        }
        let config = RunConfig {
            mode: match job.kind {
                JobKind::Merge => run::Mode::Merge,
                _ => run::Mode::Dc,
            },
            groups: job.groups.clone(),
            only_node: job.node.clone(),
            source: match cur.source {
                Source::Full => KeySource::Fingerprints,
                Source::Since(t) => KeySource::Since(t),
            },
            user_flags: Vec::new(),
            run_dir: cur.run_dir.clone(),
            safe: job.run.safe,
            dry_run: false,
            concurrency: job.run.concurrency,
            batch: job.run.batch,
            chunk_size: 1 << 20,
            attempts: 3,
            resume: resumed,
            max_bytes_per_sec: job.run.max_bandwidth,
            max_keys_per_sec: job.run.max_keys_per_sec,
            per_node: job.run.per_node,
            stop: stop.clone(),
        };
        let source = if resumed {
            format!("{}, resumed", cur.source.describe())
        } else {
            cur.source.describe()
        };
        tracing::info!(job = job.name, source, "run starts");
        let observer = LogObserver { job: &job.name };
        let result = run::run(&client, &config, policy.as_ref(), &observer).await;
        if let Err(RunError::Resume { why, .. }) = &result {
            // The route list or the job's settings changed since: its plan is gone.
            tracing::warn!(
                job = job.name,
                "cannot resume {}: {why}; starting a new run",
                cur.run_dir.display()
            );
            let _ = std::fs::remove_dir_all(&cur.run_dir);
            continue;
        }
        let stopped = matches!(&result, Ok(report) if report.stopped);
        let (sent, received) = client.pool().traffic();
        let mut done = match result {
            Ok(report) => finish(job, dir, &report),
            Err(e) => Done::failed_to(String::new(), e.to_string()),
        };
        if stopped {
            // Keep the run dir and the state's current run: the next run resumes it.
            done.error = Some(format!(
                "stopped by a signal; the next run resumes {}",
                cur.run_dir.display()
            ));
        } else {
            state.current = None;
            let _ = std::fs::remove_dir_all(&cur.run_dir);
        }
        done.started_ns = Some(cur.started_ns);
        done.source = source;
        done.full = cur.source == Source::Full;
        done.wire_bytes = sent + received + done.stats["node_to_node_bytes"].as_u64().unwrap_or(0);
        done.stats["bytes_sent"] = serde_json::json!(sent);
        done.stats["bytes_received"] = serde_json::json!(received);
        done.stats["resumed"] = serde_json::json!(resumed);
        return done;
    }
}

/// Counts a finished engine run; names what failed and writes the failed ids.
fn finish(job: &Job, dir: &Path, report: &RunReport) -> Done {
    let s = &report.stats;
    let failed_path = dir.join("failed.dump");
    let mut error = None;
    if report.failed.is_empty() && report.failed_ranges.is_empty() {
        let _ = std::fs::remove_file(&failed_path);
    } else {
        for why in report.failed_ranges.iter().take(20) {
            tracing::warn!(job = job.name, "range failed: {why}");
        }
        for (id, why) in report.failed.iter().take(20) {
            tracing::warn!(job = job.name, "{id} failed: {why}");
        }
        if let Err(e) =
            mend_engine::dump::write(&failed_path, report.failed.iter().map(|(id, _)| *id))
        {
            error = Some(format!("cannot write {}: {e}", failed_path.display()));
        }
        tracing::warn!(
            job = job.name,
            "{} keys and {} ranges did not converge (ids in {}; the next run retries them)",
            report.failed.len(),
            report.failed_ranges.len(),
            failed_path.display()
        );
    }
    let mut stats = serde_json::to_value(s).unwrap_or_else(|_| serde_json::json!({}));
    stats["converged"] = serde_json::json!(report.converged());
    stats["failed_ranges"] = serde_json::json!(report.failed_ranges);
    Done {
        started_ns: None,
        source: String::new(),
        full: false,
        keys: s.keys,
        differing: s.differing,
        copied: s.copied,
        failed: s.failed + s.unrecoverable,
        bytes: s.bytes,
        wire_bytes: 0,
        not_converged: !report.converged(),
        error,
        stats,
    }
}

/// Removes run dirs left behind (by a crash between finishing a run and recording it)
/// other than `keep`.
fn remove_other_run_dirs(dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let is_run = e.file_name().to_string_lossy().starts_with("run-");
        if is_run && path != keep && path.is_dir() {
            tracing::info!("removing the leftover run dir {}", path.display());
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// Writes a run's stats as `runs/START.json`, keeping the last [`KEEP_STATS`].
fn write_stats(dir: &Path, began_ns: u64, stats: &serde_json::Value) -> anyhow::Result<()> {
    let runs = dir.join("runs");
    std::fs::create_dir_all(&runs).with_context(|| format!("cannot create {}", runs.display()))?;
    let mut bytes = serde_json::to_vec_pretty(stats)?;
    bytes.push(b'\n');
    write_atomically(&runs.join(format!("{began_ns}.json")), &bytes)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&runs)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    // Names are start times of equal width (19 digits until 2286): name order is time order.
    files.sort();
    let excess = files.len().saturating_sub(KEEP_STATS);
    for old in &files[..excess] {
        let _ = std::fs::remove_file(old);
    }
    Ok(())
}

/// Logs the phases of a run (at debug level: runs are logged when they start and end).
struct LogObserver<'a> {
    job: &'a str,
}

impl RunObserver for LogObserver<'_> {
    fn phase(&self, phase: Phase, total: u64) {
        let what = match phase {
            Phase::Gather => "ranges to compare",
            Phase::Recover => "versions gathered",
        };
        tracing::debug!(job = self.job, "{total} {what}");
    }
}
