//! `mend dc` and `mend merge`: recovery across groups (dc) or inside each group (merge)
//! through temp metadata files and a policy.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use mend_engine::run::{self, KeyReport, KeySource, Phase, RunConfig, RunObserver, RunReport};

use crate::common::{check_groups, parse_flags, runtime, ClusterArgs};

/// How stats are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatsFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object.
    Json,
}

/// Flags shared by `dc` and `merge`.
#[derive(Debug, Args)]
pub struct RecoverArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Groups to recover (dc: across them; merge: inside each).
    #[arg(short = 'g', long = "groups", value_delimiter = ',', required = true)]
    pub groups: Vec<u32>,
    /// Only the ranges this node owns (its id or address), so several runs can go in
    /// parallel, each near its node.
    #[arg(short = 'o', long = "one-node", value_name = "NODE")]
    pub one_node: Option<String>,
    /// Recover only the ids in this dump file (128 hex chars each, whitespace separated).
    #[arg(short = 'f', long = "dump-file", value_name = "DUMP", conflicts_with_all = ["since", "full_scan"])]
    pub dump_file: Option<PathBuf>,
    /// Iterate only versions newer than TIME: epoch seconds, or an age like `12h` or
    /// `3w 12h 57m` (units s, m, h, d, w).
    #[arg(
        short = 't',
        long = "timestamp",
        value_name = "TIME",
        conflicts_with = "full_scan"
    )]
    pub since: Option<String>,
    /// Iterate every version of every replica instead of comparing fingerprints.
    #[arg(long)]
    pub full_scan: bool,
    /// Keep only keys whose version carries one of these user flags (repeatable).
    #[arg(long = "user-flags", value_parser = parse_flags)]
    pub user_flags: Vec<u64>,
    /// The recovery policy (built-in: dc, merge, union; default: dc for `mend dc`, merge
    /// for `mend merge`).
    #[arg(long)]
    pub policy: Option<String>,
    /// Decide with an external program instead: COMMAND runs under `/bin/sh -c` and
    /// speaks mend's plugin protocol (JSON lines; README, "Writing a recovery policy").
    #[arg(short = 'C', long = "policy-plugin", value_name = "COMMAND")]
    pub policy_plugin: Option<String>,
    /// How long the plugin may take to decide one batch of keys (-b) before it is killed
    /// and the run stops.
    #[arg(
        long,
        value_name = "SECS",
        default_value = "30",
        value_parser = parse_secs,
        requires = "policy_plugin"
    )]
    pub plugin_timeout: std::time::Duration,
    /// Never remove anything.
    #[arg(long)]
    pub safe: bool,
    /// Decide and report, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Keys recovered at once.
    #[arg(short = 'n', long = "concurrency", default_value_t = 16)]
    pub concurrency: usize,
    /// Keys decided per batch.
    #[arg(short = 'b', long = "batch", default_value_t = 1024)]
    pub batch: usize,
    /// Bytes per chunk when copying values (4 KiB to 1 MiB).
    #[arg(long, default_value_t = 1 << 20)]
    pub chunk_size: usize,
    /// Attempts per write before a key is counted as failed.
    #[arg(long, default_value_t = 3)]
    pub attempts: u32,
    /// Where the run dir with temp metadata files goes (default: the system temp dir).
    #[arg(long, value_name = "DIR")]
    pub tmp_dir: Option<PathBuf>,
    /// Keep the run dir after a successful run (it is always kept after a failed one).
    #[arg(long)]
    pub keep_tmp: bool,
    /// Continue an interrupted run: its run dir (printed when it failed) holds the plan and
    /// a journal of the range batches already done, which are not done again.
    #[arg(long, value_name = "RUNDIR", conflicts_with = "tmp_dir")]
    pub resume: Option<PathBuf>,
    /// Copy at most this many value bytes per second (0: no limit).
    #[arg(long, value_name = "BYTES_PER_SEC", default_value_t = 0)]
    pub max_bandwidth: u64,
    /// Recover at most this many keys per second (0: no limit).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_keys_per_sec: u64,
    /// Actions touching one node at once, so recovery never monopolises a node (0: as many
    /// as -n).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub per_node: usize,
    /// How to print the stats.
    #[arg(long, value_enum, default_value = "text")]
    pub stats: StatsFormat,
    /// Write one CSV row per action (id, action, source, destinations, version, result).
    #[arg(long, value_name = "FILE.csv")]
    pub report: Option<PathBuf>,
    /// Where to write the ids that failed (default: failed.dump in the run dir).
    #[arg(long, value_name = "FILE")]
    pub failed_out: Option<PathBuf>,
}

/// Parses `-t`: epoch seconds, or an age before now.
pub fn parse_since(text: &str, now_ns: u64) -> anyhow::Result<u64> {
    let text = text.trim();
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
        let secs: u64 = text.parse().with_context(|| format!("-t {text:?}"))?;
        return secs
            .checked_mul(1_000_000_000)
            .with_context(|| format!("-t {text}: too large"));
    }
    let mut age = 0u64;
    for word in text.split_whitespace() {
        let (number, unit) = word.split_at(
            word.find(|c: char| !c.is_ascii_digit())
                .unwrap_or(word.len()),
        );
        let n: u64 = number.parse().map_err(|_| {
            anyhow::anyhow!("-t {text:?}: {word:?} is not NUMBER+UNIT (s, m, h, d, w)")
        })?;
        let unit_secs = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 604_800,
            _ => bail!("-t {text:?}: unknown unit {unit:?} in {word:?} (use s, m, h, d, w)"),
        };
        age += n * unit_secs;
    }
    if age == 0 {
        bail!("-t {text:?}: give epoch seconds or an age like 12h or \"3w 12h 57m\"");
    }
    Ok(now_ns.saturating_sub(age * 1_000_000_000))
}

/// Parses `--plugin-timeout`: seconds, fractions allowed.
fn parse_secs(text: &str) -> Result<std::time::Duration, String> {
    match text.trim().parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs <= 86_400.0 => Ok(std::time::Duration::from_secs_f64(secs)),
        _ => Err(format!(
            "{text:?} is not a number of seconds above 0, at most 86400 (say 30 or 0.5)"
        )),
    }
}

/// Draws progress bars (only on a terminal) and writes the CSV report.
struct Progress {
    bars: MultiProgress,
    current: Mutex<Option<ProgressBar>>,
    bytes: ProgressBar,
    csv: Option<Mutex<csv::Writer<std::fs::File>>>,
    csv_error: Mutex<Option<String>>,
}

impl RunObserver for Progress {
    fn phase(&self, phase: Phase, total: u64) {
        let (what, unit) = match phase {
            Phase::Gather => ("compare", "ranges"),
            Phase::Recover => ("recover", "keys"),
        };
        let bar = self.bars.add(ProgressBar::new(total));
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{prefix:>8}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}}"
            ))
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(what);
        if let Some(old) = self.current.lock().expect("bar lock").replace(bar) {
            old.finish();
        }
    }

    fn advance(&self, n: u64) {
        if let Some(bar) = &*self.current.lock().expect("bar lock") {
            bar.inc(n);
        }
    }

    fn bytes(&self, n: u64) {
        self.bytes.inc(n);
    }

    fn report(&self, r: &KeyReport) {
        let Some(csv) = &self.csv else { return };
        let version = r.version.map(|v| {
            format!(
                "{}{}:{}",
                if v.is_tombstone() { "tombstone@" } else { "" },
                v.timestamp,
                &v.checksum_hex()[..16]
            )
        });
        let row = [
            r.id.to_hex(),
            r.action.to_string(),
            r.source.clone(),
            r.destinations.join(" "),
            version.unwrap_or_default(),
            r.result.clone(),
        ];
        if let Err(e) = csv.lock().expect("csv lock").write_record(&row) {
            self.csv_error
                .lock()
                .expect("csv lock")
                .get_or_insert(e.to_string());
        }
    }
}

/// Runs `mend dc`.
pub fn dc(args: RecoverArgs, registry: &mend_policies::Registry) -> anyhow::Result<ExitCode> {
    recover(args, registry, run::Mode::Dc)
}

/// Runs `mend merge`.
pub fn merge(args: RecoverArgs, registry: &mend_policies::Registry) -> anyhow::Result<ExitCode> {
    recover(args, registry, run::Mode::Merge)
}

fn recover(
    args: RecoverArgs,
    registry: &mend_policies::Registry,
    mode: run::Mode,
) -> anyhow::Result<ExitCode> {
    check_groups(&args.groups)?;
    let name = match mode {
        run::Mode::Dc => "dc",
        run::Mode::Merge => "merge",
    };
    if mode == run::Mode::Dc && args.groups.len() < 2 {
        bail!("dc recovers across groups: give at least two (-g 1,2)");
    }
    if !(4096..=1 << 20).contains(&args.chunk_size) {
        bail!("--chunk-size must be from 4096 to 1048576 bytes");
    }
    let source = if let Some(path) = &args.dump_file {
        KeySource::Ids(mend_engine::dump::read(path)?)
    } else if let Some(t) = &args.since {
        KeySource::Since(parse_since(t, mend_engine::now_ns())?)
    } else if args.full_scan {
        KeySource::FullScan
    } else {
        KeySource::Fingerprints
    };
    let policy: Box<dyn mend_engine::policy::RecoveryPolicy> = match &args.policy_plugin {
        Some(command) => {
            if args.policy.is_some() {
                bail!("--policy-plugin replaces --policy: give one of them");
            }
            Box::new(mend_policies::ExecPolicy::new(mend_policies::ExecConfig {
                command: command.clone(),
                groups: args.groups.clone(),
                safe: args.safe,
                dry_run: args.dry_run,
                batch_timeout: args.plugin_timeout,
            }))
        }
        None => registry.create(args.policy.as_deref().unwrap_or(name))?,
    };
    let run_dir = match &args.resume {
        Some(dir) => {
            if !dir.join(run::RUN_FILE).is_file() {
                bail!(
                    "--resume {}: not a run dir (no {})",
                    dir.display(),
                    run::RUN_FILE
                );
            }
            dir.clone()
        }
        None => args
            .tmp_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir)
            .join(format!(
                "mend-run-{}-{}",
                std::process::id(),
                mend_engine::now_ns()
            )),
    };
    let csv = match &args.report {
        Some(path) => {
            let mut w = csv::Writer::from_path(path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            w.write_record([
                "id",
                "action",
                "source",
                "destinations",
                "version",
                "result",
            ])?;
            Some(Mutex::new(w))
        }
        None => None,
    };
    let config = RunConfig {
        mode,
        groups: args.groups.clone(),
        only_node: args.one_node.clone(),
        source,
        user_flags: args.user_flags.clone(),
        run_dir: run_dir.clone(),
        safe: args.safe,
        dry_run: args.dry_run,
        concurrency: args.concurrency.max(1),
        batch: args.batch.max(1),
        chunk_size: args.chunk_size,
        attempts: args.attempts.max(1),
        resume: args.resume.is_some(),
        max_bytes_per_sec: args.max_bandwidth,
        max_keys_per_sec: args.max_keys_per_sec,
        per_node: args.per_node,
        stop: run::Stop::default(),
    };
    let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
    let bytes = bars.add(ProgressBar::new_spinner());
    bytes.set_style(
        ProgressStyle::with_template("{prefix:>8} {bytes} {bytes_per_sec}")
            .expect("a valid template"),
    );
    bytes.set_prefix("copied");
    let progress = Progress {
        bars,
        current: Mutex::new(None),
        bytes,
        csv,
        csv_error: Mutex::new(None),
    };
    let started = std::time::Instant::now();
    let report = runtime()?.block_on(async {
        let stop = config.stop.clone();
        crate::common::on_signals(move || {
            eprintln!("mend: stopping after the current batch of keys (signal again to stop now)");
            stop.request();
        })?;
        let client = args.cluster.connect().await?;
        // Unknown groups and nodes are input errors, found before any traffic.
        let scope = mend_engine::compare::Scope {
            groups: args.groups.clone(),
            only_node: args.one_node.clone(),
        };
        match mode {
            run::Mode::Dc => mend_engine::compare::plan(&client, &scope)?,
            run::Mode::Merge => run::plan_merge(&client, &scope)?,
        };
        let report = run::run(&client, &config, policy.as_ref(), &progress).await;
        let traffic = client.pool().traffic();
        anyhow::Ok((report, traffic))
    })?;
    if let Some(bar) = progress.current.lock().expect("bar lock").take() {
        bar.finish_and_clear();
    }
    progress.bytes.finish_and_clear();
    if let Some(csv) = &progress.csv {
        csv.lock()
            .expect("csv lock")
            .flush()
            .context("writing the CSV report")?;
    }
    if let Some(e) = progress.csv_error.lock().expect("csv lock").take() {
        bail!("writing the CSV report failed: {e}");
    }
    let (report, (sent, received)) = report;
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "mend: {name} failed: {e}; the run dir is kept: {}",
                run_dir.display()
            );
            return Ok(ExitCode::from(1));
        }
    };
    print_stats(
        name,
        &args,
        &report,
        started.elapsed().as_secs_f64(),
        sent,
        received,
    )?;
    finish(&args, &report, &run_dir)
}

fn print_stats(
    name: &str,
    args: &RecoverArgs,
    report: &RunReport,
    secs: f64,
    sent: u64,
    received: u64,
) -> anyhow::Result<()> {
    let s = &report.stats;
    match args.stats {
        StatsFormat::Json => {
            let mut value = serde_json::to_value(s)?;
            value["seconds"] = serde_json::json!(secs);
            value["bytes_sent"] = serde_json::json!(sent);
            value["bytes_received"] = serde_json::json!(received);
            value["converged"] = serde_json::json!(report.converged());
            value["dry_run"] = serde_json::json!(args.dry_run);
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        StatsFormat::Text => {
            println!(
                "{}",
                if args.dry_run {
                    format!("{name} (dry run: nothing changed)")
                } else {
                    name.to_string()
                }
            );
            println!(
                "  ranges           {:>10}  ({} failed)",
                s.ranges, s.ranges_failed
            );
            println!("  versions gathered{:>10}", s.gathered);
            println!(
                "  keys             {:>10}  ({} differing)",
                s.keys, s.differing
            );
            println!("  copied           {:>10}  ({} bytes)", s.copied, s.bytes);
            println!("  already current  {:>10}", s.already_current);
            println!("  merged           {:>10}", s.merged);
            println!("  removed          {:>10}", s.removed);
            println!("  skipped          {:>10}", s.skipped);
            println!("  unrecoverable    {:>10}", s.unrecoverable);
            println!("  failed           {:>10}", s.failed);
            println!(
                "  wire             {:>10} bytes sent, {} received, {:.2}s",
                sent, received, secs
            );
            println!(
                "  node to node     {:>10} bytes pushed",
                s.node_to_node_bytes
            );
            for (g, n) in &s.copied_to_group {
                println!("  group {g:<4} received {n} writes");
            }
            for (node, n) in &s.failed_on_node {
                println!("  node {node:<8} failures {n}");
            }
        }
    }
    Ok(())
}

/// Writes the failed ids, removes or keeps the run dir, and picks the exit code.
fn finish(
    args: &RecoverArgs,
    report: &RunReport,
    run_dir: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    if report.stopped {
        eprintln!(
            "mend: stopped by a signal; the rest of the run resumes with --resume {}",
            run_dir.display()
        );
        if report.failed.is_empty() && report.failed_ranges.is_empty() {
            return Ok(ExitCode::from(1));
        }
    }
    if report.converged() {
        if !args.keep_tmp {
            let _ = std::fs::remove_dir_all(run_dir);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let failed_path = args
        .failed_out
        .clone()
        .unwrap_or_else(|| run_dir.join("failed.dump"));
    mend_engine::dump::write(&failed_path, report.failed.iter().map(|(id, _)| *id))?;
    for why in &report.failed_ranges {
        eprintln!("mend: range failed: {why}");
    }
    for (id, why) in report.failed.iter().take(20) {
        eprintln!("mend: {id} failed: {why}");
    }
    if report.failed.len() > 20 {
        eprintln!("mend: … and {} more", report.failed.len() - 20);
    }
    eprintln!(
        "mend: {} keys and {} ranges did not converge; retry the keys with -f {} (run dir kept: {})",
        report.failed.len(),
        report.failed_ranges.len(),
        failed_path.display(),
        run_dir.display()
    );
    Ok(ExitCode::from(1))
}

#[cfg(test)]
mod tests {
    use super::parse_since;

    #[test]
    fn since_takes_epoch_seconds_or_ages() {
        let now = 10_000_000 * 1_000_000_000;
        assert_eq!(
            parse_since("1700000000", now).unwrap(),
            1_700_000_000 * 1_000_000_000
        );
        assert_eq!(
            parse_since("12h", now).unwrap(),
            now - 12 * 3600 * 1_000_000_000
        );
        let age = (3 * 604_800 + 12 * 3600 + 57 * 60) * 1_000_000_000;
        assert_eq!(parse_since("3w 12h 57m", now).unwrap(), now - age);
        assert!(parse_since("12x", now).is_err());
        assert!(parse_since("", now).is_err());
        assert!(parse_since("h", now).is_err());
    }
}
