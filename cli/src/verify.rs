//! `mend verify`: compare groups and say exactly which ids differ.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use mend_engine::compare::{self, CompareReport, IterateFilter, Scope};
use mend_engine::reconcile::Config;
use mend_engine::ReplicaState;

use crate::common::{check_groups, runtime, ClusterArgs};

/// Arguments of `mend verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Groups to compare.
    #[arg(short = 'g', long = "groups", value_delimiter = ',', required = true)]
    pub groups: Vec<u32>,
    /// Only the ranges this node owns (its id or address).
    #[arg(short = 'o', long = "one-node", value_name = "NODE")]
    pub one_node: Option<String>,
    /// Write the differing ids as a dump file (input for `mend dc -f`).
    #[arg(long, value_name = "FILE")]
    pub dump_out: Option<PathBuf>,
    /// Print a JSON report instead of text.
    #[arg(long)]
    pub json: bool,
    /// Iterate every record of every replica instead of comparing fingerprints (the
    /// dnet_recovery way: the correctness oracle and the baseline).
    #[arg(long)]
    pub full_scan: bool,
    /// Differing ids printed in the text report (all go to --dump-out and --json).
    #[arg(long, default_value_t = 20)]
    pub show: usize,
}

/// Runs `mend verify`: exit 0 in sync, 1 differing (or a node failed), 2 bad input.
pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    check_groups(&args.groups)?;
    runtime()?.block_on(async {
        let client = args.cluster.connect().await?;
        let scope = Scope {
            groups: args.groups.clone(),
            only_node: args.one_node.clone(),
        };
        // Bad groups and nodes are input errors, found before any traffic.
        compare::plan(&client, &scope)?;
        let started = Instant::now();
        let result = if args.full_scan {
            compare::by_full_scan(&client, &scope, &IterateFilter::default()).await
        } else {
            compare::by_fingerprints(&client, &scope, Config::default()).await
        };
        let secs = started.elapsed().as_secs_f64();
        let (sent, received) = client.pool().traffic();
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                eprintln!("mend: verify failed: {e:#}");
                return Ok(ExitCode::from(1));
            }
        };
        if let Some(path) = &args.dump_out {
            mend_engine::dump::write(path, report.differences.iter().map(|d| d.id))?;
        }
        let mut out = std::io::stdout().lock();
        if args.json {
            serde_json::to_writer_pretty(
                &mut out,
                &json_report(&args, &report, secs, sent, received),
            )?;
            writeln!(out)?;
        } else {
            text_report(&mut out, &args, &report, secs, sent, received)?;
        }
        Ok(if report.differences.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}

fn replica_cell(record: &Option<mend_engine::Record>) -> String {
    match record {
        None => "absent".into(),
        Some(r) => format!(
            "{}@{}:{}",
            ReplicaState::of(Some(r)).as_str(),
            r.version.timestamp,
            &r.version.checksum_hex()[..8]
        ),
    }
}

fn text_report(
    out: &mut impl Write,
    args: &VerifyArgs,
    report: &CompareReport,
    secs: f64,
    sent: u64,
    received: u64,
) -> std::io::Result<()> {
    let groups: Vec<String> = args.groups.iter().map(u32::to_string).collect();
    writeln!(
        out,
        "verify groups {} ({}): {} ranges, {} round trips, {} bytes sent, {} bytes received, {:.3}s{}",
        groups.join(","),
        if args.full_scan { "full scan" } else { "fingerprints" },
        report.ranges,
        report.round_trips,
        sent,
        received,
        secs,
        if args.full_scan { format!(", {} records iterated", report.iterated) } else { String::new() }
    )?;
    if report.differences.is_empty() {
        return writeln!(out, "in sync");
    }
    writeln!(out, "{} ids differ", report.differences.len())?;
    for d in report.differences.iter().take(args.show) {
        let cells: Vec<String> = args
            .groups
            .iter()
            .zip(&d.replicas)
            .map(|(g, (_, r))| format!("g{g}={}", replica_cell(r)))
            .collect();
        writeln!(out, "{}  {}", d.id, cells.join("  "))?;
    }
    if report.differences.len() > args.show {
        writeln!(
            out,
            "… and {} more (all of them with --dump-out or --json)",
            report.differences.len() - args.show
        )?;
    }
    Ok(())
}

fn json_report(
    args: &VerifyArgs,
    report: &CompareReport,
    secs: f64,
    sent: u64,
    received: u64,
) -> serde_json::Value {
    let differences: Vec<serde_json::Value> = report
        .differences
        .iter()
        .map(|d| {
            let replicas: Vec<serde_json::Value> = args
                .groups
                .iter()
                .zip(&d.replicas)
                .map(|(g, (node, r))| {
                    serde_json::json!({
                        "group": g,
                        "node": node,
                        "state": ReplicaState::of(r.as_ref()).as_str(),
                        "timestamp": r.map(|r| r.version.timestamp),
                        "size": r.map(|r| r.version.size),
                        "checksum": r.map(|r| r.version.checksum_hex()),
                        "user_flags": r.map(|r| r.version.user_flags),
                    })
                })
                .collect();
            serde_json::json!({ "id": d.id.to_hex(), "replicas": replicas })
        })
        .collect();
    serde_json::json!({
        "in_sync": report.differences.is_empty(),
        "groups": args.groups,
        "mode": if args.full_scan { "full-scan" } else { "fingerprints" },
        "ranges": report.ranges,
        "round_trips": report.round_trips,
        "ranges_fingerprinted": report.stats.ranges_fingerprinted,
        "ranges_listed": report.stats.ranges_listed,
        "asks_spared": report.stats.asks_spared,
        "anchors": report.stats.anchors,
        "anchors_redone": report.stats.anchors_redone,
        "bytes_sent": sent,
        "bytes_received": received,
        "seconds": secs,
        "records_iterated": report.iterated,
        "differences": differences,
    })
}
