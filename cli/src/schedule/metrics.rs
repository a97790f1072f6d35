//! Prometheus text exposition (format 0.0.4) of every job's last run, for node_exporter's
//! textfile collector. The file is rendered from the jobs' state files, so processes
//! running different jobs (from cron) each write a complete, consistent file, and written
//! by rename, so the collector never reads half of one.

use std::fmt::Write as _;
use std::path::Path;

use super::config::ScheduleConfig;
use super::job::job_dir;
use super::state::{write_atomically, JobState, LastRun};

/// One metric family: name, type, help, and the value for a job (if it has one).
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&JobState) -> Option<f64>,
);

fn last<F: Fn(&LastRun) -> f64>(s: &JobState, f: F) -> Option<f64> {
    s.last_run.as_ref().map(f)
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

const FAMILIES: &[Family] = &[
    (
        "mend_schedule_last_success_timestamp_seconds",
        "gauge",
        "When the last run that converged (or found the groups in sync) started, seconds since the epoch.",
        |s| s.last_success_start_ns.map(secs),
    ),
    (
        "mend_schedule_last_run_timestamp_seconds",
        "gauge",
        "When the last run ended, seconds since the epoch.",
        |s| last(s, |r| secs(r.end_ns)),
    ),
    (
        "mend_schedule_last_run_duration_seconds",
        "gauge",
        "Wall time of the last run, seconds.",
        |s| last(s, |r| secs(r.duration_ns)),
    ),
    (
        "mend_schedule_last_run_exit_status",
        "gauge",
        "Exit status of the last run: 0 converged or in sync, 1 something differs or failed.",
        |s| last(s, |r| f64::from(r.exit_status)),
    ),
    (
        "mend_schedule_last_run_full",
        "gauge",
        "1 if the last run compared everything by fingerprints, 0 if it was incremental.",
        |s| last(s, |r| f64::from(u8::from(r.source.starts_with("full") || r.source == "verify"))),
    ),
    (
        "mend_schedule_last_run_keys_compared",
        "gauge",
        "Keys the last run compared one by one.",
        |s| last(s, |r| r.keys as f64),
    ),
    (
        "mend_schedule_last_run_keys_differing",
        "gauge",
        "Keys that differed between replicas in the last run.",
        |s| last(s, |r| r.differing as f64),
    ),
    (
        "mend_schedule_last_run_keys_copied",
        "gauge",
        "Versions the last run copied to a replica.",
        |s| last(s, |r| r.copied as f64),
    ),
    (
        "mend_schedule_last_run_keys_failed",
        "gauge",
        "Keys the last run failed to recover (listed in the job's failed.dump).",
        |s| last(s, |r| r.failed as f64),
    ),
    (
        "mend_schedule_last_run_bytes_copied",
        "gauge",
        "Value bytes the last run copied.",
        |s| last(s, |r| r.bytes as f64),
    ),
    (
        "mend_schedule_last_run_wire_bytes",
        "gauge",
        "Bytes the last run sent and received on the wire.",
        |s| last(s, |r| r.wire_bytes as f64),
    ),
    (
        "mend_schedule_runs_total",
        "counter",
        "Runs of the job finished.",
        |s| Some(s.runs as f64),
    ),
];

/// Escapes a label value (backslash, double quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition of every job of `config`, from the state files.
pub fn render(config: &ScheduleConfig) -> anyhow::Result<String> {
    let mut states = Vec::new();
    for job in &config.jobs {
        states.push((job, JobState::load(&job_dir(config, &job.name))?));
    }
    let mut out = String::new();
    for (name, kind, help, value) in FAMILIES {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (job, state) in &states {
            if let Some(v) = value(state) {
                let _ = writeln!(
                    out,
                    "{name}{{job=\"{}\",kind=\"{}\"}} {v}",
                    label(&job.name),
                    job.kind.as_str()
                );
            }
        }
    }
    Ok(out)
}

/// Writes the exposition to `path` atomically.
pub fn write(config: &ScheduleConfig, path: &Path) -> anyhow::Result<()> {
    write_atomically(path, render(config)?.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
