//! What every client command shares: finding the cluster dir, connecting, parsing groups.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use mend_engine::client::{Bootstrap, Client};
use mend_engine::pki::Credentials;
use mend_engine::route::{parse_addr, RouteList, CLUSTER_FILE};

/// `--cluster DIR`: the cluster dir, with cluster.toml, the CA and the certificates. Every
/// command that needs one flattens this, so the flag, its variable and its default are
/// the same everywhere.
#[derive(Debug, Clone, Args)]
pub struct ClusterDir {
    /// Cluster dir with cluster.toml and certificates.
    #[arg(
        long,
        env = "MEND_CLUSTER",
        default_value = "cluster",
        value_name = "DIR"
    )]
    pub cluster: PathBuf,
}

impl ClusterDir {
    /// The dir, once it is known to hold a cluster file.
    pub fn checked(&self) -> anyhow::Result<&Path> {
        if !self.cluster.join(CLUSTER_FILE).is_file() {
            bail!(
                "cluster dir {} has no {CLUSTER_FILE} (give --cluster DIR or set MEND_CLUSTER; create one with `mend init`)",
                self.cluster.display()
            );
        }
        Ok(&self.cluster)
    }
}

/// Where to find the cluster and which node to bootstrap from.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub dir: ClusterDir,
    /// A node to learn the route list from: host:port or Elliptics' host:port:family.
    /// Default: the route list in the cluster dir's cluster.toml.
    #[arg(short = 'r', long = "remote", value_name = "HOST:PORT")]
    pub remote: Option<String>,
    /// Seconds to wait for a node to answer a new connection before it counts as
    /// unreachable (client writes then hand off to the next node of its group).
    #[arg(
        long,
        env = "MEND_CONNECT_TIMEOUT",
        default_value = "5",
        value_name = "SECS",
        value_parser = parse_seconds
    )]
    pub connect_timeout: Duration,
}

impl ClusterArgs {
    /// Checks the cluster dir exists and has a cluster file.
    pub fn check_dir(&self) -> anyhow::Result<()> {
        self.dir.checked().map(|_| ())
    }

    /// Connects a client: credentials from the cluster dir, route list from `-r` or the file.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let dir = self.dir.checked()?;
        // The cluster file first: a malformed one is the error to report.
        let bootstrap = match &self.remote {
            Some(r) => Bootstrap::Remote(parse_addr(r)?),
            None => Bootstrap::Route(RouteList::load(dir)?),
        };
        let creds = Credentials::for_client(dir)?;
        Ok(Client::connect_with_timeout(&creds, bootstrap, self.connect_timeout).await?)
    }
}

/// Parses `-g 1,2,3` values: groups are numbers ≥ 1, each given once.
pub fn check_groups(groups: &[u32]) -> anyhow::Result<()> {
    if groups.is_empty() {
        bail!("no groups given (-g 1,2,3)");
    }
    for (i, g) in groups.iter().enumerate() {
        if *g == 0 {
            bail!("group 0 does not exist: groups start at 1");
        }
        if groups[..i].contains(g) {
            bail!("group {g} is given twice");
        }
    }
    Ok(())
}

/// A runtime for a command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Logs to stderr, at `default` unless RUST_LOG says otherwise.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// A progress bar that draws only on a terminal.
pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr_with_hz(4),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>10} [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// Parses a duration in seconds (fractions allowed): `5`, `0.5`.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|secs| secs.is_finite() && *secs > 0.0 && *secs <= 3600.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{s:?} is not a number of seconds from 0 to 3600"))
}

/// Parses a user-flags number: decimal or 0x-hex.
pub fn parse_flags(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|_| format!("{s:?} is not a number (decimal or 0x-hex)"))
}

/// Peak resident set size of process `pid` in KiB (Linux `VmHWM`), if known.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Listens for SIGTERM and SIGINT (call inside the runtime). The first signal runs
/// `first` (which asks runs to stop after their current batch of keys); a second exits
/// at once with status 1, leaving what the run journaled for `--resume`.
pub fn on_signals(first: impl FnOnce() + Send + 'static) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Listen before anything runs, so a signal is never missed.
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        first();
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("stopping now: an interrupted run resumes from its journal");
        eprintln!("mend: stopping now (second signal)");
        std::process::exit(1);
    });
    Ok(())
}
