//! Deterministic decisions of the scheduler, with no I/O and no clock: when a job runs
//! next, by how much its start is spread (jitter), and whether a run is incremental or a
//! full compare. They take `now` and the job's state and return what to do.

use std::time::Duration;

use jiff::Timestamp;

use super::config::{Job, When};
use super::state::{JobState, Source};

/// How much later than scheduled run number `run` of `job` starts: a fraction of
/// `jitter` drawn from a hash of the host, the job and the run number. The same on every
/// call (so `status` shows the time the scheduler will use), different across hosts and
/// jobs (so they do not all hit the cluster at once) and across runs.
pub fn jitter(host: &str, job: &str, run: u64, jitter: Duration) -> Duration {
    let max = jitter.as_millis().min(u128::from(u64::MAX)) as u64;
    if max == 0 {
        return Duration::ZERO;
    }
    let mut h = blake3::Hasher::new();
    h.update(b"mend schedule jitter\0");
    h.update(host.as_bytes());
    h.update(b"\0");
    h.update(job.as_bytes());
    h.update(b"\0");
    h.update(&run.to_le_bytes());
    let bytes = h.finalize();
    let draw = u64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("8 bytes"));
    Duration::from_millis(draw % (max + 1))
}

/// This host's name, for the jitter (empty if unknown).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn ts(ns: u64) -> Timestamp {
    Timestamp::from_nanosecond(i128::from(ns)).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// When `job` runs next, given its state. An interrupted run is resumed at once. With an
/// interval, the next run starts that long after the last one (re)started; with a cron
/// expression, at its first time after that. A job that never ran starts now (interval) or
/// at the next cron time. A time missed (the scheduler was down) means now: one catch-up
/// run, not one per missed time. Then the jitter is added; never earlier than `now`.
pub fn next_run(
    job: &Job,
    state: &JobState,
    now: Timestamp,
    tz: &jiff::tz::TimeZone,
    host: &str,
) -> Timestamp {
    if state.current.is_some() {
        return now;
    }
    let last_began = state
        .last_run
        .as_ref()
        .map(|r| ts(r.end_ns.saturating_sub(r.duration_ns)));
    let base = match (&job.when, last_began) {
        (When::Every(d), Some(b)) => plus(b, *d),
        (When::Every(_), None) => now,
        (When::Cron(c), b) => {
            let after = b.unwrap_or(now).to_zoned(tz.clone());
            c.find_next_occurrence(&after, false)
                .map(|z| z.timestamp())
                .unwrap_or(Timestamp::MAX)
        }
    };
    plus(base, jitter(host, &job.name, state.runs + 1, job.jitter)).max(now)
}

/// Whether the next run of `job` compares everything (by fingerprints) or only versions
/// written since the last successful run started, less the overlap. Full when the job is
/// not incremental, has never succeeded, or its full-compare cadence is due.
pub fn choose_source(job: &Job, state: &JobState, now_ns: u64) -> Source {
    let Some(inc) = &job.incremental else {
        return Source::Full;
    };
    let (Some(last), Some(full)) = (state.last_success_start_ns, state.last_full_start_ns) else {
        return Source::Full;
    };
    let runs_due = inc
        .full_every_runs
        .is_some_and(|n| state.runs_since_full + 1 >= n);
    let age_due = inc
        .full_every
        .is_some_and(|d| u128::from(now_ns.saturating_sub(full)) >= d.as_nanos());
    if runs_due || age_due {
        return Source::Full;
    }
    let overlap = inc.overlap.as_nanos().min(u128::from(u64::MAX)) as u64;
    Source::Since(last.saturating_sub(overlap))
}

/// How long until `t` (zero if past).
pub fn until(t: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(t.duration_since(now)).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::config::{Incremental, RunSettings};
    use crate::schedule::state::{CurrentRun, LastRun};

    const S: u64 = 1_000_000_000;
    const T0: u64 = 1_700_000_000 * S;

    fn job(when: When, jitter: Duration, incremental: Option<Incremental>) -> Job {
        Job {
            name: "j".into(),
            kind: super::super::config::JobKind::Dc,
            groups: vec![1, 2],
            node: None,
            when,
            jitter,
            incremental,
            run: RunSettings {
                max_bandwidth: 0,
                max_keys_per_sec: 0,
                per_node: 0,
                concurrency: 1,
                batch: 1,
                safe: false,
                policy: None,
            },
            cluster: crate::common::ClusterArgs {
                dir: crate::common::ClusterDir {
                    cluster: "c".into(),
                },
                remote: None,
                connect_timeout: Duration::from_secs(1),
            },
        }
    }

    fn ran(began_ns: u64, secs: u64, runs: u64) -> JobState {
        JobState {
            version: 1,
            runs,
            last_run: Some(LastRun {
                start_ns: began_ns,
                end_ns: began_ns + secs * S,
                duration_ns: secs * S,
                source: "full".into(),
                exit_status: 0,
                keys: 0,
                differing: 0,
                copied: 0,
                failed: 0,
                bytes: 0,
                wire_bytes: 0,
                error: None,
            }),
            ..JobState::default()
        }
    }

    #[test]
    fn jitter_is_bounded_deterministic_and_spread() {
        let max = Duration::from_secs(300);
        let draws: Vec<Duration> = (1..=200)
            .map(|run| jitter("host-a", "dc", run, max))
            .collect();
        assert!(draws.iter().all(|d| *d <= max));
        assert_eq!(
            draws,
            (1..=200)
                .map(|run| jitter("host-a", "dc", run, max))
                .collect::<Vec<_>>()
        );
        let distinct: std::collections::BTreeSet<_> = draws.iter().collect();
        assert!(distinct.len() > 190, "{} distinct of 200", distinct.len());
        // Spread over the whole window, not bunched at one end.
        assert!(draws.iter().any(|d| *d < max / 4) && draws.iter().any(|d| *d > max * 3 / 4));
        assert_ne!(
            jitter("host-a", "dc", 1, max),
            jitter("host-b", "dc", 1, max)
        );
        assert_ne!(
            jitter("host-a", "dc", 1, max),
            jitter("host-a", "verify", 1, max)
        );
        assert_eq!(jitter("host-a", "dc", 1, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn an_interval_counts_from_the_last_start_and_catches_up_once() {
        let tz = jiff::tz::TimeZone::UTC;
        let j = job(When::Every(Duration::from_secs(3600)), Duration::ZERO, None);
        let now = ts(T0);
        // Never ran: now.
        assert_eq!(next_run(&j, &JobState::default(), now, &tz, "h"), now);
        // Ran 10 minutes ago for 2 minutes: an hour after it began.
        let state = ran(T0 - 600 * S, 120, 1);
        assert_eq!(next_run(&j, &state, now, &tz, "h"), ts(T0 + 3000 * S));
        // Last began 5 hours ago (the scheduler was down): now, once.
        let state = ran(T0 - 5 * 3600 * S, 60, 1);
        assert_eq!(next_run(&j, &state, now, &tz, "h"), now);
        // An interrupted run is resumed at once, whatever the schedule.
        let mut state = ran(T0 - 600 * S, 120, 1);
        state.current = Some(CurrentRun {
            run_dir: "r".into(),
            started_ns: T0 - 60 * S,
            source: Source::Full,
            pid: 1,
        });
        assert_eq!(next_run(&j, &state, now, &tz, "h"), now);
    }

    #[test]
    fn jitter_delays_the_scheduled_time_by_the_next_runs_draw() {
        let tz = jiff::tz::TimeZone::UTC;
        let max = Duration::from_secs(300);
        let j = job(When::Every(Duration::from_secs(3600)), max, None);
        let state = ran(T0 - 600 * S, 120, 7);
        let expect =
            ts(T0 + 3000 * S) + jiff::SignedDuration::try_from(jitter("h", "j", 8, max)).unwrap();
        assert_eq!(next_run(&j, &state, ts(T0), &tz, "h"), expect);
    }

    #[test]
    fn a_cron_job_runs_at_its_next_time_in_its_time_zone() {
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .build()
            .parse("30 3 * * *")
            .unwrap();
        let j = job(When::Cron(Box::new(cron)), Duration::ZERO, None);
        // 2023-11-14T22:13:20Z.
        let now = ts(T0);
        let utc = jiff::tz::TimeZone::UTC;
        let never = JobState::default();
        assert_eq!(
            next_run(&j, &never, now, &utc, "h").to_string(),
            "2023-11-15T03:30:00Z"
        );
        let tokyo = jiff::tz::TimeZone::get("Asia/Tokyo").unwrap();
        // 07:13 in Tokyo: 03:30 Tokyo is the next day, 18:30Z.
        assert_eq!(
            next_run(&j, &never, now, &tokyo, "h").to_string(),
            "2023-11-15T18:30:00Z"
        );
        // Ran at 03:30Z today: next is tomorrow's 03:30Z.
        let state = ran(1_699_932_600 * S, 60, 1);
        assert_eq!(
            next_run(&j, &state, now, &utc, "h").to_string(),
            "2023-11-15T03:30:00Z"
        );
        // Last ran two days ago: the missed time means now.
        let state = ran(T0 - 2 * 86_400 * S, 60, 1);
        assert_eq!(next_run(&j, &state, now, &utc, "h"), now);
    }

    #[test]
    fn runs_are_incremental_between_full_compares() {
        let inc = |runs, every: Option<u64>| Incremental {
            overlap: Duration::from_secs(60),
            full_every_runs: runs,
            full_every: every.map(Duration::from_secs),
        };
        let state = |since_full, full_age: u64| JobState {
            last_success_start_ns: Some(T0 - 100 * S),
            last_full_start_ns: Some(T0 - full_age * S),
            runs_since_full: since_full,
            ..JobState::default()
        };
        let every_4 = job(
            When::Every(Duration::from_secs(60)),
            Duration::ZERO,
            Some(inc(Some(4), None)),
        );
        // Never succeeded: full.
        assert_eq!(
            choose_source(&every_4, &JobState::default(), T0),
            Source::Full
        );
        // F I I I F: three incremental runs after each full one.
        let pattern: Vec<Source> = (0..4)
            .map(|n| choose_source(&every_4, &state(n, 100), T0))
            .collect();
        let since = Source::Since(T0 - 160 * S);
        assert_eq!(pattern, [since, since, since, Source::Full]);
        // By age: a full compare once the last one is a day old.
        let daily = job(
            When::Every(Duration::from_secs(60)),
            Duration::ZERO,
            Some(inc(None, Some(86_400))),
        );
        assert_eq!(choose_source(&daily, &state(50, 86_399), T0), since);
        assert_eq!(choose_source(&daily, &state(50, 86_400), T0), Source::Full);
        // Not incremental: always full.
        let full = job(When::Every(Duration::from_secs(60)), Duration::ZERO, None);
        assert_eq!(choose_source(&full, &state(0, 1), T0), Source::Full);
        // An overlap larger than the epoch offset saturates instead of wrapping.
        let mut s = state(0, 1);
        s.last_success_start_ns = Some(5);
        assert_eq!(choose_source(&every_4, &s, T0), Source::Since(0));
    }
}
