//! The schedule file: where job state goes, and the jobs (what each runs, when, how
//! incrementally and how politely).
//!
//! ```toml
//! state_dir = "/var/lib/mend/schedule"   # relative paths are relative to this file
//! cluster = "/etc/mend/cluster"          # default: $MEND_CLUSTER, then ./cluster beside this file
//!
//! [[job]]
//! name = "dc-hourly"
//! kind = "dc"                            # verify | dc | merge
//! groups = [1, 2, 3]
//! interval = "1h"                        # or cron = "0 * * * *"
//! jitter = "5m"
//! full_every = "1d"
//! max_bandwidth = 50_000_000
//! ```
//!
//! Every mistake is an error naming the file, line and column, and nothing runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::common::{ClusterArgs, ClusterDir};

/// What a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// `mend verify`: compare fingerprints, change nothing; exit 1 when groups differ.
    Verify,
    /// `mend dc`: recover across groups.
    Dc,
    /// `mend merge`: move misplaced keys to their owner inside each group.
    Merge,
}

impl JobKind {
    /// The name in the config file and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Verify => "verify",
            JobKind::Dc => "dc",
            JobKind::Merge => "merge",
        }
    }
}

/// When a job runs.
#[derive(Debug, Clone)]
pub enum When {
    /// Every so long, measured from one run's start to the next one's.
    Every(Duration),
    /// At the times of a 5-field cron expression, in the schedule's time zone.
    Cron(Box<croner::Cron>),
}

impl When {
    /// How the schedule reads in `status`.
    pub fn describe(&self) -> String {
        match self {
            When::Every(d) => format!("every {}", show_duration(*d)),
            When::Cron(c) => format!("cron \"{}\"", c.pattern),
        }
    }
}

/// How a `dc` or `merge` job runs incrementally: versions written since the start of the
/// last successful run (less `overlap`), with a full fingerprint compare now and then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incremental {
    /// Subtracted from the last success's start time: covers writes in flight when it
    /// started and clock skew between writers and this host.
    pub overlap: Duration,
    /// A full compare at the latest every this many runs (1: every run).
    pub full_every_runs: Option<u64>,
    /// A full compare at the latest when the last successful one started this long ago.
    pub full_every: Option<Duration>,
}

/// The engine settings of a `dc` or `merge` job: politeness and batching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSettings {
    /// Copy at most this many value bytes per second (0: no limit).
    pub max_bandwidth: u64,
    /// Recover at most this many keys per second (0: no limit).
    pub max_keys_per_sec: u64,
    /// Actions touching one node at once (0: as many as `concurrency`).
    pub per_node: usize,
    /// Keys recovered at once.
    pub concurrency: usize,
    /// Keys decided per batch.
    pub batch: usize,
    /// Never remove anything (merge).
    pub safe: bool,
    /// The recovery policy by registry name (default: the job's kind).
    pub policy: Option<String>,
}

/// One job of the schedule.
#[derive(Debug, Clone)]
pub struct Job {
    /// Its name: letters, digits, `-`, `_`, `.` (it names the job's state dir).
    pub name: String,
    /// What it runs.
    pub kind: JobKind,
    /// The groups it compares or recovers.
    pub groups: Vec<u32>,
    /// Only the ranges this node owns (`-o`).
    pub node: Option<String>,
    /// When it runs.
    pub when: When,
    /// Each run starts up to this much later than scheduled (spreads hosts and jobs).
    pub jitter: Duration,
    /// `None`: every run compares everything by fingerprints.
    pub incremental: Option<Incremental>,
    /// Engine settings (`dc` and `merge`).
    pub run: RunSettings,
    /// The cluster dir, `-r` and connect timeout.
    pub cluster: ClusterArgs,
}

/// A parsed and checked schedule file.
#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    /// The file it came from.
    pub path: PathBuf,
    /// Per-job state, locks, run dirs, stats, and `history.csv`.
    pub state_dir: PathBuf,
    /// Where to write Prometheus metrics after every run, if anywhere.
    pub metrics_file: Option<PathBuf>,
    /// The time zone cron expressions are read in.
    pub time_zone: jiff::tz::TimeZone,
    /// The jobs, in file order.
    pub jobs: Vec<Job>,
}

/// A mistake in the schedule file, at a place in it.
#[derive(Debug)]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line and column, when the mistake has a place.
    pub at: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
    /// The text of the line, quoted in the message.
    pub line: Option<String>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.at {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.path.display(), self.message)?
            }
            None => write!(f, "{}: {}", self.path.display(), self.message)?,
        }
        match &self.line {
            Some(text) if !text.is_empty() && !self.message.contains(text.as_str()) => {
                write!(f, " (in `{text}`)")
            }
            _ => Ok(()),
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    state_dir: Spanned<PathBuf>,
    metrics_file: Option<PathBuf>,
    time_zone: Option<Spanned<String>>,
    cluster: Option<PathBuf>,
    remote: Option<String>,
    connect_timeout: Option<Spanned<String>>,
    #[serde(default)]
    job: Vec<Spanned<RawJob>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: Spanned<String>,
    kind: JobKind,
    groups: Spanned<Vec<u32>>,
    node: Option<String>,
    interval: Option<Spanned<String>>,
    cron: Option<Spanned<String>>,
    jitter: Option<Spanned<String>>,
    incremental: Option<Spanned<bool>>,
    overlap: Option<Spanned<String>>,
    full_every_runs: Option<Spanned<u64>>,
    full_every: Option<Spanned<String>>,
    max_bandwidth: Option<Spanned<u64>>,
    max_keys_per_sec: Option<Spanned<u64>>,
    per_node: Option<Spanned<usize>>,
    concurrency: Option<Spanned<usize>>,
    batch: Option<Spanned<usize>>,
    safe: Option<Spanned<bool>>,
    policy: Option<Spanned<String>>,
    cluster: Option<PathBuf>,
    remote: Option<String>,
    connect_timeout: Option<Spanned<String>>,
}

/// The safety overlap when none is given.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(600);

/// The full-compare cadence when neither `full_every` nor `full_every_runs` is given.
pub const DEFAULT_FULL_EVERY: Duration = Duration::from_secs(86_400);

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Parses a duration: `15m`, `1h`, `1h 30m`, `500ms`, `1d`, `2w` (jiff's friendly format;
/// days are 24 hours).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let span: jiff::Span = text.trim().parse().map_err(|e| {
        format!("{text:?} is not a duration (say \"90s\", \"15m\", \"1h 30m\", \"1d\"): {e}")
    })?;
    let signed = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|_| format!("{text:?}: use units up to weeks (ms, s, m, h, d, w)"))?;
    Duration::try_from(signed).map_err(|_| format!("{text:?} is negative"))
}

/// A duration as the config file would say it.
pub fn show_duration(d: Duration) -> String {
    match jiff::SignedDuration::try_from(d) {
        Ok(s) => format!("{s:#}"),
        Err(_) => format!("{}s", d.as_secs()),
    }
}

impl ScheduleConfig {
    /// Reads and checks `path`; `policies` says which policy names exist.
    pub fn load(path: &Path, policies: &mend_policies::Registry) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            at: None,
            message: format!("cannot read the schedule config: {e}"),
            line: None,
        })?;
        Ok(Self::parse(path, &text, policies)?)
    }

    /// Parses and checks the text of `path`.
    pub fn parse(
        path: &Path,
        text: &str,
        policies: &mend_policies::Registry,
    ) -> Result<Self, ConfigError> {
        let err = |span: Option<std::ops::Range<usize>>, message: String| ConfigError {
            path: path.to_path_buf(),
            at: span.clone().map(|s| line_col(text, s.start)),
            message,
            line: span.map(|s| line_text(text, s.start)),
        };
        let raw: RawFile =
            toml::from_str(text).map_err(|e| err(e.span(), e.message().to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let duration =
            |s: &Spanned<String>| parse_duration(s.get_ref()).map_err(|m| err(Some(s.span()), m));
        let time_zone = match &raw.time_zone {
            None => jiff::tz::TimeZone::try_system().unwrap_or(jiff::tz::TimeZone::UTC),
            Some(name) => jiff::tz::TimeZone::get(name.get_ref()).map_err(|e| {
                err(
                    Some(name.span()),
                    format!("unknown time zone {:?}: {e}", name.get_ref()),
                )
            })?,
        };
        let default_cluster = match &raw.cluster {
            Some(c) => resolve(c),
            None => std::env::var_os("MEND_CLUSTER")
                .map(PathBuf::from)
                .unwrap_or_else(|| base.join("cluster")),
        };
        let default_timeout = match &raw.connect_timeout {
            Some(t) => positive(duration(t)?, t, &err)?,
            None => DEFAULT_CONNECT_TIMEOUT,
        };
        if raw.job.is_empty() {
            return Err(err(None, "no jobs: add a [[job]] table".into()));
        }
        let mut jobs: Vec<(Job, usize)> = Vec::new();
        for spanned in &raw.job {
            let j = spanned.get_ref();
            let name = j.name.get_ref();
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                || name.starts_with('.')
            {
                return Err(err(
                    Some(j.name.span()),
                    format!("job name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'"),
                ));
            }
            if let Some((_, line)) = jobs.iter().find(|(o, _)| o.name == *name) {
                return Err(err(
                    Some(j.name.span()),
                    format!("job name {name:?} is used twice (first on line {line})"),
                ));
            }
            let groups = j.groups.get_ref();
            crate::common::check_groups(groups)
                .map_err(|e| err(Some(j.groups.span()), e.to_string()))?;
            if j.kind != JobKind::Merge && groups.len() < 2 {
                return Err(err(
                    Some(j.groups.span()),
                    format!(
                        "a {} job compares groups: give at least two",
                        j.kind.as_str()
                    ),
                ));
            }
            let when = match (&j.interval, &j.cron) {
                (Some(i), None) => When::Every(positive(duration(i)?, i, &err)?),
                (None, Some(c)) => {
                    let parser = croner::parser::CronParser::builder()
                        .seconds(croner::parser::Seconds::Disallowed)
                        .build();
                    let cron = parser.parse(c.get_ref()).map_err(|e| {
                        err(
                            Some(c.span()),
                            format!(
                                "cron {:?}: {e} (5 fields: minute hour day-of-month month day-of-week)",
                                c.get_ref()
                            ),
                        )
                    })?;
                    When::Cron(Box::new(cron))
                }
                (Some(_), Some(c)) => {
                    return Err(err(
                        Some(c.span()),
                        "give interval or cron, not both".into(),
                    ))
                }
                (None, None) => {
                    return Err(err(
                        Some(j.name.span()),
                        format!(
                            "job {name:?} has no interval = \"1h\" and no cron = \"0 * * * *\""
                        ),
                    ))
                }
            };
            let jitter = match &j.jitter {
                Some(s) => duration(s)?,
                None => Duration::ZERO,
            };
            if j.kind == JobKind::Verify {
                // Verify compares fingerprints (a few round trips) and copies nothing:
                // these settings would silently do nothing, so they are mistakes.
                let not_for_verify: [(&str, Option<std::ops::Range<usize>>); 11] = [
                    ("incremental", j.incremental.as_ref().map(Spanned::span)),
                    ("overlap", j.overlap.as_ref().map(Spanned::span)),
                    (
                        "full_every_runs",
                        j.full_every_runs.as_ref().map(Spanned::span),
                    ),
                    ("full_every", j.full_every.as_ref().map(Spanned::span)),
                    ("max_bandwidth", j.max_bandwidth.as_ref().map(Spanned::span)),
                    (
                        "max_keys_per_sec",
                        j.max_keys_per_sec.as_ref().map(Spanned::span),
                    ),
                    ("per_node", j.per_node.as_ref().map(Spanned::span)),
                    ("concurrency", j.concurrency.as_ref().map(Spanned::span)),
                    ("batch", j.batch.as_ref().map(Spanned::span)),
                    ("safe", j.safe.as_ref().map(Spanned::span)),
                    ("policy", j.policy.as_ref().map(Spanned::span)),
                ];
                if let Some((key, span)) = not_for_verify.into_iter().find(|(_, s)| s.is_some()) {
                    return Err(err(
                        span,
                        format!("{key} does not apply to a verify job (it compares fingerprints and changes nothing)"),
                    ));
                }
            }
            let incremental = if j.kind == JobKind::Verify
                || j.incremental.as_ref().is_some_and(|i| !*i.get_ref())
            {
                if let Some(key) = [
                    j.overlap.as_ref().map(|s| ("overlap", s.span())),
                    j.full_every.as_ref().map(|s| ("full_every", s.span())),
                    j.full_every_runs
                        .as_ref()
                        .map(|s| ("full_every_runs", s.span())),
                ]
                .into_iter()
                .flatten()
                .next()
                {
                    return Err(err(
                        Some(key.1),
                        format!("{} needs incremental = true", key.0),
                    ));
                }
                None
            } else {
                let full_every_runs = match &j.full_every_runs {
                    Some(n) if *n.get_ref() == 0 => {
                        return Err(err(
                            Some(n.span()),
                            "full_every_runs must be at least 1 (1: every run is full)".into(),
                        ))
                    }
                    Some(n) => Some(*n.get_ref()),
                    None => None,
                };
                let full_every = match &j.full_every {
                    Some(s) => Some(positive(duration(s)?, s, &err)?),
                    None if full_every_runs.is_none() => Some(DEFAULT_FULL_EVERY),
                    None => None,
                };
                Some(Incremental {
                    overlap: match &j.overlap {
                        Some(s) => duration(s)?,
                        None => DEFAULT_OVERLAP,
                    },
                    full_every_runs,
                    full_every,
                })
            };
            let at_least_one = |v: &Option<Spanned<usize>>, key: &str, default: usize| match v {
                Some(n) if *n.get_ref() == 0 => {
                    Err(err(Some(n.span()), format!("{key} must be at least 1")))
                }
                Some(n) => Ok(*n.get_ref()),
                None => Ok(default),
            };
            if let Some(p) = &j.policy {
                if !policies.contains(p.get_ref()) {
                    return Err(err(
                        Some(p.span()),
                        format!(
                            "unknown policy {:?} (known: {})",
                            p.get_ref(),
                            policies.names().join(", ")
                        ),
                    ));
                }
            }
            let run = RunSettings {
                max_bandwidth: j.max_bandwidth.as_ref().map_or(0, |v| *v.get_ref()),
                max_keys_per_sec: j.max_keys_per_sec.as_ref().map_or(0, |v| *v.get_ref()),
                per_node: j.per_node.as_ref().map_or(0, |v| *v.get_ref()),
                concurrency: at_least_one(&j.concurrency, "concurrency", 16)?,
                batch: at_least_one(&j.batch, "batch", 1024)?,
                safe: j.safe.as_ref().is_some_and(|v| *v.get_ref()),
                policy: j.policy.as_ref().map(|p| p.get_ref().clone()),
            };
            let cluster = ClusterArgs {
                dir: ClusterDir {
                    cluster: j
                        .cluster
                        .as_deref()
                        .map_or(default_cluster.clone(), resolve),
                },
                remote: j.remote.clone().or_else(|| raw.remote.clone()),
                connect_timeout: match &j.connect_timeout {
                    Some(t) => positive(duration(t)?, t, &err)?,
                    None => default_timeout,
                },
            };
            let line = line_col(text, spanned.span().start).0;
            jobs.push((
                Job {
                    name: name.clone(),
                    kind: j.kind,
                    groups: groups.clone(),
                    node: j.node.clone(),
                    when,
                    jitter,
                    incremental,
                    run,
                    cluster,
                },
                line,
            ));
        }
        Ok(ScheduleConfig {
            path: path.to_path_buf(),
            state_dir: resolve(raw.state_dir.get_ref()),
            metrics_file: raw.metrics_file.as_deref().map(resolve),
            time_zone,
            jobs: jobs.into_iter().map(|(j, _)| j).collect(),
        })
    }

    /// The job named `name`, or an error listing the jobs.
    pub fn job(&self, name: &str) -> anyhow::Result<&Job> {
        self.jobs.iter().find(|j| j.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.jobs.iter().map(|j| j.name.as_str()).collect();
            anyhow::anyhow!(
                "{}: no job named {name:?} (jobs: {})",
                self.path.display(),
                names.join(", ")
            )
        })
    }
}

fn positive<E>(
    d: Duration,
    at: &Spanned<String>,
    err: &impl Fn(Option<std::ops::Range<usize>>, String) -> E,
) -> Result<Duration, E> {
    if d.is_zero() {
        return Err(err(
            Some(at.span()),
            format!("{:?} must be above zero", at.get_ref()),
        ));
    }
    Ok(d)
}

/// The line of `text` holding byte `offset`, trimmed and cut to 80 characters.
fn line_text(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    text[start..end].trim().chars().take(80).collect()
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ScheduleConfig, ConfigError> {
        ScheduleConfig::parse(
            Path::new("/etc/mend/schedule.toml"),
            text,
            &mend_policies::Registry::builtin(),
        )
    }

    fn error(text: &str) -> String {
        parse(text).expect_err("a config error").to_string()
    }

    const GOOD: &str = r#"
state_dir = "state"
cluster = "/srv/cluster"
remote = "10.0.0.1:1025"
time_zone = "UTC"

[[job]]
name = "dc-hourly"
kind = "dc"
groups = [1, 2, 3]
node = "g1n1"
interval = "1h"
jitter = "5m"
overlap = "2m"
full_every_runs = 24
max_bandwidth = 50_000_000
max_keys_per_sec = 2000
per_node = 2
concurrency = 8
batch = 256

[[job]]
name = "verify.nightly"
kind = "verify"
groups = [1, 2]
cron = "30 3 * * *"
remote = "10.0.0.2:1025"

[[job]]
name = "merge_g1"
kind = "merge"
groups = [1]
interval = "15m"
incremental = false
safe = true
cluster = "other"
"#;

    #[test]
    fn a_full_config_parses_with_defaults_filled_in() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.state_dir, Path::new("/etc/mend/state"));
        assert_eq!(c.metrics_file, None);
        assert_eq!(c.jobs.len(), 3);
        let dc = &c.jobs[0];
        assert_eq!((dc.name.as_str(), dc.kind), ("dc-hourly", JobKind::Dc));
        assert_eq!(dc.groups, [1, 2, 3]);
        assert_eq!(dc.node.as_deref(), Some("g1n1"));
        assert!(matches!(dc.when, When::Every(d) if d == Duration::from_secs(3600)));
        assert_eq!(dc.jitter, Duration::from_secs(300));
        assert_eq!(
            dc.incremental,
            Some(Incremental {
                overlap: Duration::from_secs(120),
                full_every_runs: Some(24),
                full_every: None,
            })
        );
        assert_eq!(
            dc.run,
            RunSettings {
                max_bandwidth: 50_000_000,
                max_keys_per_sec: 2000,
                per_node: 2,
                concurrency: 8,
                batch: 256,
                safe: false,
                policy: None,
            }
        );
        assert_eq!(dc.cluster.dir.cluster, Path::new("/srv/cluster"));
        assert_eq!(dc.cluster.remote.as_deref(), Some("10.0.0.1:1025"));
        assert_eq!(dc.cluster.connect_timeout, Duration::from_secs(5));

        let verify = &c.jobs[1];
        assert!(matches!(&verify.when, When::Cron(c) if c.pattern.to_string() == "30 3 * * *"));
        assert_eq!(verify.incremental, None);
        assert_eq!(verify.cluster.remote.as_deref(), Some("10.0.0.2:1025"));

        let merge = &c.jobs[2];
        assert_eq!(merge.incremental, None);
        assert!(merge.run.safe);
        assert_eq!(merge.cluster.dir.cluster, Path::new("/etc/mend/other"));
        assert!(c.job("merge_g1").is_ok());
        let daily = GOOD.replace("30 3 * * *", "@daily");
        let c2 = parse(&daily).unwrap();
        assert!(matches!(&c2.jobs[1].when, When::Cron(_)));
        let missing = c.job("nope").unwrap_err().to_string();
        assert!(
            missing.contains("dc-hourly, verify.nightly, merge_g1"),
            "{missing}"
        );
    }

    #[test]
    fn the_shipped_example_parses() {
        let c = ScheduleConfig::parse(
            Path::new("scripts/schedule.example.toml"),
            include_str!("../../../scripts/schedule.example.toml"),
            &mend_policies::Registry::builtin(),
        )
        .unwrap();
        let names: Vec<&str> = c.jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["dc-hourly", "merge-all", "verify-nightly"]);
        assert_eq!(c.state_dir, Path::new("/var/lib/mend/schedule"));
        assert_eq!(c.jobs[0].run.max_bandwidth, 50_000_000);
        assert_eq!(
            c.jobs[1].incremental.as_ref().unwrap().full_every_runs,
            Some(4)
        );
    }

    #[test]
    fn incremental_defaults_to_a_daily_full_compare_and_a_ten_minute_overlap() {
        let c = parse(
            "state_dir = \"/s\"\n[[job]]\nname = \"a\"\nkind = \"dc\"\ngroups = [1, 2]\ninterval = \"10m\"\n",
        )
        .unwrap();
        assert_eq!(
            c.jobs[0].incremental,
            Some(Incremental {
                overlap: DEFAULT_OVERLAP,
                full_every_runs: None,
                full_every: Some(DEFAULT_FULL_EVERY),
            })
        );
    }

    #[test]
    fn durations_take_friendly_units() {
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("1mo").is_err());
        assert!(parse_duration("-5m").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(show_duration(Duration::from_secs(5400)), "1h 30m");
    }

    #[test]
    fn mistakes_name_the_file_line_and_column() {
        let job = "[[job]]\nname = \"a\"\nkind = \"dc\"\ngroups = [1, 2]\ninterval = \"1h\"\n";
        let cases = [
            // TOML syntax.
            (
                format!("state_dir = \"/s\"\n{job}jitter = \n"),
                ":7:",
                "string",
            ),
            // Unknown keys and kinds, wrong types.
            (
                format!("state_dir = \"/s\"\n{job}intervall = \"1h\"\n"),
                ":7:1:",
                "intervall",
            ),
            (
                format!(
                    "state_dir = \"/s\"\n{}",
                    job.replace("\"dc\"", "\"repair\"")
                ),
                ":4:8:",
                "repair",
            ),
            (
                format!("state_dir = \"/s\"\n{job}max_bandwidth = -1\n"),
                ":7:",
                "max_bandwidth",
            ),
            // Bad values.
            (
                format!(
                    "state_dir = \"/s\"\n{}",
                    job.replace("\"1h\"", "\"soonish\"")
                ),
                ":6:12:",
                "not a duration",
            ),
            (
                format!(
                    "state_dir = \"/s\"\n{}",
                    job.replace("interval = \"1h\"", "cron = \"61 * * * *\"")
                ),
                ":6:8:",
                "5 fields",
            ),
            (
                format!(
                    "state_dir = \"/s\"\n{}",
                    job.replace("interval = \"1h\"", "cron = \"0 0 * * * *\"")
                ),
                ":6:8:",
                "5 fields",
            ),
            (
                format!("state_dir = \"/s\"\n{job}cron = \"0 * * * *\"\n"),
                ":7:8:",
                "not both",
            ),
            (
                format!(
                    "state_dir = \"/s\"\n{}",
                    job.replace("interval = \"1h\"\n", "")
                ),
                ":3:8:",
                "no interval",
            ),
            (
                format!("state_dir = \"/s\"\n{}", job.replace("[1, 2]", "[1]")),
                ":5:10:",
                "at least two",
            ),
            (
                format!("state_dir = \"/s\"\n{}", job.replace("[1, 2]", "[1, 1]")),
                ":5:10:",
                "twice",
            ),
            (
                format!("state_dir = \"/s\"\n{}", job.replace("[1, 2]", "[0, 1]")),
                ":5:10:",
                "group 0",
            ),
            (
                format!("state_dir = \"/s\"\n{}", job.replace("\"a\"", "\"../up\"")),
                ":3:8:",
                "job name",
            ),
            (
                format!("state_dir = \"/s\"\n{job}{job}"),
                ":8:8:",
                "used twice (first on line 2)",
            ),
            (
                format!("state_dir = \"/s\"\n{job}full_every_runs = 0\n"),
                ":7:19:",
                "at least 1",
            ),
            (
                format!("state_dir = \"/s\"\n{job}incremental = false\noverlap = \"1m\"\n"),
                ":8:11:",
                "needs incremental",
            ),
            (
                format!("state_dir = \"/s\"\n{job}policy = \"nonesuch\"\n"),
                ":7:10:",
                "unknown policy",
            ),
            (
                format!("state_dir = \"/s\"\n{job}concurrency = 0\n"),
                ":7:15:",
                "at least 1",
            ),
            (
                format!(
                    "state_dir = \"/s\"\n{}max_keys_per_sec = 5\n",
                    job.replace("\"dc\"", "\"verify\"")
                ),
                ":7:20:",
                "does not apply to a verify job",
            ),
            (
                format!("state_dir = \"/s\"\ntime_zone = \"Mars/Olympus\"\n{job}"),
                ":2:13:",
                "time zone",
            ),
            // The file as a whole.
            (job.to_string(), "schedule.toml:", "state_dir"),
            (
                "state_dir = \"/s\"\n".to_string(),
                "schedule.toml: ",
                "no jobs",
            ),
        ];
        for (text, place, what) in cases {
            let e = error(&text);
            assert!(e.starts_with("/etc/mend/schedule.toml:"), "{e}\n{text}");
            assert!(e.contains(place), "expected {place} in {e}\n{text}");
            assert!(e.contains(what), "expected {what:?} in {e}\n{text}");
        }
    }

    #[test]
    fn line_and_column_count_characters() {
        let text = "ab\ncdé\nf";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 3), (2, 1));
        assert_eq!(line_col(text, 8), (3, 1));
        assert_eq!(line_col(text, 7), (2, 4));
    }
}
