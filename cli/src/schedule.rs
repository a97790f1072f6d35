//! `mend schedule`: verify, dc and merge jobs run periodically from a TOML file, each
//! incremental (versions written since its last successful run) with a full compare now
//! and then, resumable after a crash, exclusive (a lock per job), polite (rate and per-node
//! limits) and observable (stats, a history CSV, Prometheus metrics, `status`).
//!
//! Three ways to run it:
//! - `mend schedule --config FILE`: long-lived; each job runs at its times; SIGTERM or
//!   SIGINT lets the runs in progress finish their current batch of keys, records them as
//!   stopped and exits 0 (a second signal exits at once); the job's next run resumes an
//!   interrupted run where its journal ends;
//! - `mend schedule --config FILE --once JOB`: one run now, for cron or a systemd timer;
//! - `mend schedule --config FILE status`: the jobs, their last runs and next run times.
//!
//! Exit codes of `--once`: 0 the run converged (or verify found the groups in sync), 1 it
//! ran but something differs or failed, 2 the config or flags are wrong, 3 the job is
//! already running in another process (its lock is held), so this run did not start.

mod config;
mod job;
mod metrics;
mod state;
mod timing;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use mend_engine::run;

use config::{show_duration, ScheduleConfig};
use state::{Holder, JobLock, JobState, LockError};

/// Exit code of `--once` when the job is already running elsewhere.
pub const EXIT_BUSY: u8 = 3;

/// Arguments of `mend schedule`.
#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// The schedule file (TOML): state_dir, cluster, and [[job]] tables (README, "Running
    /// mend on a schedule").
    #[arg(long, env = "MEND_SCHEDULE_CONFIG", value_name = "FILE")]
    pub config: PathBuf,
    /// Run this job once now and exit (for cron or a systemd timer): 0 converged, 1
    /// something differs or failed, 3 the job is already running.
    #[arg(long, value_name = "JOB")]
    pub once: Option<String>,
    /// Write Prometheus text metrics of every job here after each run (overrides
    /// metrics_file in the config).
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
    #[command(subcommand)]
    pub action: Option<ScheduleAction>,
}

/// What `mend schedule` does other than run jobs.
#[derive(Debug, Subcommand)]
pub enum ScheduleAction {
    /// Show the jobs, their last runs and their next run times.
    Status(StatusArgs),
}

/// Arguments of `mend schedule status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `mend schedule`.
pub fn run(args: ScheduleArgs, registry: &mend_policies::Registry) -> anyhow::Result<ExitCode> {
    let config = ScheduleConfig::load(&args.config, registry)?;
    let metrics_file = args.metrics_file.clone().or(config.metrics_file.clone());
    match (&args.action, &args.once) {
        (Some(_), Some(_)) => anyhow::bail!("status does not take --once"),
        (Some(ScheduleAction::Status(s)), None) => status(&config, s),
        (None, Some(name)) => {
            let job = config.job(name)?;
            job.cluster.check_dir()?;
            crate::common::init_logging("info");
            let ran = crate::common::runtime()?.block_on(async {
                let stop = run::Stop::default();
                let stopping = stop.clone();
                crate::common::on_signals(move || {
                    tracing::info!("stopping after the current batch (signal again to stop now)");
                    stopping.request();
                })?;
                job::run_once(&config, job, registry, metrics_file.as_deref(), &stop).await
            });
            match ran {
                Ok(last) => Ok(ExitCode::from(last.exit_status)),
                Err(e) => match e.downcast_ref::<LockError>() {
                    Some(busy @ LockError::Busy { .. }) => {
                        eprintln!("mend: {busy}: not starting another run");
                        Ok(ExitCode::from(EXIT_BUSY))
                    }
                    _ => Err(e),
                },
            }
        }
        (None, None) => {
            for job in &config.jobs {
                job.cluster.check_dir()?;
            }
            crate::common::init_logging("info");
            crate::common::runtime()?.block_on(scheduler(&config, registry, metrics_file))
        }
    }
}

/// The long-lived scheduler: every job in its own loop (jobs run concurrently, each job
/// never twice at once), until a signal.
async fn scheduler(
    config: &ScheduleConfig,
    registry: &mend_policies::Registry,
    metrics_file: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let stop_runs = run::Stop::default();
    let stopping = stop_runs.clone();
    crate::common::on_signals(move || {
        tracing::info!(
            "stopping: runs in progress finish their current batch (signal again to stop now)"
        );
        stopping.request();
        let _ = stop_tx.send(true);
    })?;
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("cannot create the state dir {}", config.state_dir.display()))?;
    if let Some(path) = &metrics_file {
        metrics::write(config, path)?;
    }
    tracing::info!(
        jobs = config.jobs.len(),
        state_dir = %config.state_dir.display(),
        "scheduler started"
    );
    let host = timing::host_name();
    let loops = config.jobs.iter().map(|job| {
        let mut stop = stop.clone();
        let stop_runs = stop_runs.clone();
        let host = host.clone();
        let metrics_file = metrics_file.clone();
        async move {
            // After a skipped or failed attempt: not again before this.
            let mut not_before = jiff::Timestamp::UNIX_EPOCH;
            loop {
                if *stop.borrow() {
                    return;
                }
                let now = jiff::Timestamp::now();
                let due = match JobState::load(&job::job_dir(config, &job.name)) {
                    Ok(state) => timing::next_run(job, &state, now, &config.time_zone, &host),
                    Err(e) => {
                        tracing::error!(job = job.name, "{e:#}");
                        retry_after(job, now)
                    }
                }
                .max(not_before);
                tracing::info!(job = job.name, "next run {due:.0}");
                tokio::select! {
                    _ = tokio::time::sleep(timing::until(due, now)) => {}
                    _ = stop.changed() => return,
                }
                let started = jiff::Timestamp::now();
                let ran = job::run_once(config, job, registry, metrics_file.as_deref(), &stop_runs);
                match ran.await {
                    Ok(_) => not_before = jiff::Timestamp::UNIX_EPOCH,
                    Err(e) => {
                        match e.downcast_ref::<LockError>() {
                            Some(busy @ LockError::Busy { .. }) => {
                                tracing::info!(job = job.name, "skipped: {busy}")
                            }
                            _ => tracing::error!(job = job.name, "run not recorded: {e:#}"),
                        }
                        not_before = retry_after(job, started);
                    }
                }
            }
        }
    });
    futures_util::future::join_all(loops).await;
    tracing::info!("scheduler stopped");
    Ok(ExitCode::SUCCESS)
}

/// When to try again after an attempt that could not run or be recorded: one interval
/// later (at most a minute), so a held lock or a full disk does not spin.
fn retry_after(job: &config::Job, from: jiff::Timestamp) -> jiff::Timestamp {
    let wait = match &job.when {
        config::When::Every(d) => (*d).min(std::time::Duration::from_secs(60)),
        config::When::Cron(_) => std::time::Duration::from_secs(60),
    };
    from.checked_add(jiff::SignedDuration::try_from(wait).unwrap_or_default())
        .unwrap_or(from)
}

/// `mend schedule status`: every job's schedule, last run, last success, next run.
fn status(config: &ScheduleConfig, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let now = jiff::Timestamp::now();
    let host = timing::host_name();
    let mut jobs = Vec::new();
    for job in &config.jobs {
        let dir = job::job_dir(config, &job.name);
        let state = JobState::load(&dir)?;
        let holder = JobLock::holder(&dir.join("lock"));
        let next = timing::next_run(job, &state, now, &config.time_zone, &host);
        let next_source = match job.kind {
            config::JobKind::Verify => "verify".to_string(),
            _ => match &state.current {
                Some(cur) => format!("{}, resumed", cur.source.describe()),
                None => timing::choose_source(job, &state, mend_engine::now_ns()).describe(),
            },
        };
        jobs.push(serde_json::json!({
            "job": job.name,
            "kind": job.kind.as_str(),
            "groups": job.groups,
            "node": job.node,
            "schedule": job.when.describe(),
            "jitter": show_duration(job.jitter),
            "runs": state.runs,
            "running": match holder {
                Holder::Running(pid) => serde_json::json!(pid),
                _ => serde_json::Value::Null,
            },
            "stale_lock": match holder {
                Holder::Stale(pid) => serde_json::json!(pid),
                _ => serde_json::Value::Null,
            },
            "interrupted_run": state.current.as_ref().map(|c| c.run_dir.display().to_string()),
            "last_run": state.last_run.as_ref().map(|r| serde_json::json!({
                "start": state::show_ns(r.start_ns),
                "end": state::show_ns(r.end_ns),
                "seconds": r.duration_ns as f64 / 1e9,
                "source": r.source,
                "exit_status": r.exit_status,
                "keys_compared": r.keys,
                "differing": r.differing,
                "copied": r.copied,
                "failed": r.failed,
                "bytes": r.bytes,
                "wire_bytes": r.wire_bytes,
                "error": r.error,
            })),
            "last_success": state.last_success_start_ns.map(state::show_ns),
            "last_full_compare": state.last_full_start_ns.map(state::show_ns),
            "next_run": format!("{next:.0}"),
            "next_source": next_source,
        }));
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &serde_json::json!({ "jobs": jobs }))?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "schedule {} (state in {})",
        config.path.display(),
        config.state_dir.display()
    )?;
    for j in &jobs {
        let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
        writeln!(out)?;
        writeln!(
            out,
            "{} ({} groups {}{}), {}, jitter {}",
            text(&j["job"]),
            text(&j["kind"]),
            j["groups"]
                .as_array()
                .map(|g| g
                    .iter()
                    .map(|g| g.to_string())
                    .collect::<Vec<_>>()
                    .join(","))
                .unwrap_or_default(),
            j["node"]
                .as_str()
                .map(|n| format!(" -o {n}"))
                .unwrap_or_default(),
            text(&j["schedule"]),
            text(&j["jitter"]),
        )?;
        match j["last_run"].as_object() {
            None => writeln!(out, "  last run      never")?,
            Some(r) => {
                writeln!(
                    out,
                    "  last run      {} ({:.1}s, {}) exit {}: {} keys compared, {} differing, {} copied, {} failed{}",
                    text(&r["start"]),
                    r["seconds"].as_f64().unwrap_or(0.0),
                    text(&r["source"]),
                    r["exit_status"],
                    r["keys_compared"],
                    r["differing"],
                    r["copied"],
                    r["failed"],
                    r["error"].as_str().map(|e| format!("; error: {e}")).unwrap_or_default(),
                )?;
            }
        }
        writeln!(
            out,
            "  last success  {}",
            j["last_success"].as_str().unwrap_or("never")
        )?;
        writeln!(out, "  runs          {}", j["runs"])?;
        if let Some(pid) = j["running"].as_u64() {
            writeln!(out, "  running now   pid {pid}")?;
        }
        if let Some(pid) = j["stale_lock"].as_u64() {
            writeln!(
                out,
                "  stale lock    pid {pid} died holding it; the next run takes it over"
            )?;
        }
        if let Some(dir) = j["interrupted_run"].as_str() {
            if j["running"].is_null() {
                writeln!(out, "  interrupted   {dir} (the next run resumes it)")?;
            }
        }
        writeln!(
            out,
            "  next run      {} ({})",
            text(&j["next_run"]),
            text(&j["next_source"])
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
