//! The `mend` command as a library, so that a crate with its own recovery policies can
//! build a `mend` that offers them: call [`main_with`] with a registry holding them.
//!
//! Thin: parses flags, builds engine objects, shows progress, and maps outcomes to exit
//! codes: 0 success / in sync, 1 the work ran but something differs or failed (named in
//! the output), 2 usage, configuration or input error.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod client_cmds;
mod common;
mod demo;
mod init;
mod load;
mod node;
mod recover;
mod route_cmd;
mod scan;
mod schedule;
mod scrub;
mod verify;

/// mend: replica anti-entropy sync for keyed objects in replica groups, over QUIC.
#[derive(Debug, Parser)]
#[command(name = "mend", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a cluster dir: cluster.toml (the route list), the cluster CA, node and client
    /// certificates, and one data dir per node.
    Init(init::InitArgs),
    /// Run one storage node of a cluster (or every node with --all) until SIGINT/SIGTERM.
    Node(node::NodeArgs),
    /// Write an object to groups (a file, stdin with '-', or --value).
    Put(client_cmds::PutArgs),
    /// Read an object from the first group that has it, checking its checksum.
    Get(client_cmds::GetArgs),
    /// Delete an object in groups: writes a tombstone, so the delete propagates and sticks.
    Del(client_cmds::DelArgs),
    /// Show each group's version of an object (state, timestamp, size, checksum, flags).
    Stat(client_cmds::StatArgs),
    /// Print the id (128 hex chars) of keys, for building dump files.
    Id(client_cmds::IdArgs),
    /// Bulk-load synthetic objects or a directory tree into groups, batched and pipelined.
    Load(load::LoadArgs),
    /// Recover across groups (dnet_recovery's dc): find what differs, let the policy
    /// decide (newest wins by default), copy it where it is missing or older.
    Dc(recover::RecoverArgs),
    /// Recover inside each group (dnet_recovery's merge): move keys stored on nodes that
    /// do not own them (after a node was down or added) to their owner, newest wins, and
    /// remove the misplaced copy once the owner confirms it (never with --safe/--dry-run).
    Merge(recover::RecoverArgs),
    /// Compare groups: in sync (exit 0) or exactly which ids differ (exit 1), by range
    /// fingerprints (a few round trips) or, with --full-scan, by iterating everything.
    Verify(verify::VerifyArgs),
    /// Re-hash stored values, mark those whose checksum fails as corrupt (they then show
    /// up as differences and get repaired), and report them. Nothing is deleted.
    Scrub(scrub::ScrubArgs),
    /// Inspect a metadata file (header, record count, first and last id, every CRC) or a
    /// dump file: exit 0 if sound, 1 if corrupt or torn, 2 if it cannot be read.
    Scan(scan::ScanArgs),
    /// The route list: show it with key counts per node, add or remove a node, rebalance,
    /// rebuild it from a recovery file of surviving nodes, push it to every node.
    Route(route_cmd::RouteArgs),
    /// A local 3-group cluster in a temp dir: loaded, diverged, verified, repaired by dc.
    Demo(demo::DemoArgs),
    /// Run verify, dc and merge jobs periodically from a TOML file: incremental, resumable,
    /// one run per job at a time, rate-limited, with stats, a history and metrics.
    Schedule(schedule::ScheduleArgs),
}

/// Runs `mend` with the built-in policies.
pub fn main() -> ExitCode {
    main_with(mend_policies::Registry::builtin())
}

/// Runs `mend` with the policies of `registry` (built-in ones and a user's own), selected by
/// `--policy NAME`.
pub fn main_with(registry: mend_policies::Registry) -> ExitCode {
    let cli = Cli::parse();
    let result = run(cli, &registry);
    if std::env::var_os("MEND_REPORT_RSS").is_some() {
        // For benchmarks and memory tests: the process's peak resident set size.
        if let Some(kib) = common::peak_rss_kib(std::process::id()) {
            eprintln!("mend: peak_rss_kib {kib}");
        }
    }
    match result {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("mend: {}", one_line(&err));
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli, registry: &mend_policies::Registry) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Init(args) => init::run(args),
        Command::Node(args) => node::run(args),
        Command::Put(args) => client_cmds::put(args),
        Command::Get(args) => client_cmds::get(args),
        Command::Del(args) => client_cmds::del(args),
        Command::Stat(args) => client_cmds::stat(args),
        Command::Id(args) => client_cmds::id(args),
        Command::Load(args) => load::run(args),
        Command::Dc(args) => recover::dc(args, registry),
        Command::Merge(args) => recover::merge(args, registry),
        Command::Verify(args) => verify::run(args),
        Command::Scrub(args) => scrub::run(args),
        Command::Scan(args) => scan::run(args),
        Command::Route(args) => route_cmd::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Schedule(args) => schedule::run(args, registry),
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The error and its causes on one line, skipping a cause whose text the message already
/// quotes (library errors often name their cause in their own text).
fn one_line(err: &anyhow::Error) -> String {
    let mut line = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
}
