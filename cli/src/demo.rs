//! `mend demo`: a local 3-group cluster in a temp dir, loaded, diverged the way
//! datacenters drift apart, then compared and repaired by the real `mend verify` and
//! `mend dc`, before your eyes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use mend_engine::client::{BatchWriter, Bootstrap, Client};
use mend_engine::pki::Credentials;
use mend_engine::route::RouteList;
use mend_engine::wire::BatchItem;
use mend_engine::{now_ns, Id, ReplicaState, Version};

use crate::common::runtime;
use crate::init::InitArgs;
use crate::load::synthetic_value;

/// Arguments of `mend demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Objects loaded into every group before they diverge.
    #[arg(long, default_value_t = 20_000)]
    pub objects: u64,
    /// Keep the cluster dir here instead of a temp dir that is removed at the end.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
}

/// How the demo makes the groups diverge: (what, keys, groups written, delete?).
const DIVERGENCE: &[(&str, u64, &[u32], bool)] = &[
    (
        "written while group 2 was cut off (groups 1,3 only)",
        300,
        &[1, 3],
        false,
    ),
    ("updated in group 1 only", 200, &[1], false),
    ("deleted in group 3 only", 100, &[3], true),
    ("written to group 2 only", 50, &[2], false),
];

/// Runs the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let tmp = tempfile::tempdir().context("cannot create a temp dir")?;
    let dir = args
        .keep
        .clone()
        .unwrap_or_else(|| tmp.path().join("cluster"));
    let init = InitArgs {
        dir: dir.clone(),
        groups: 3,
        nodes_per_group: 1,
        base_port: 0,
        host: "127.0.0.1".into(),
        name: "demo".into(),
    };
    crate::init::run(init).map(|_| ())?;
    runtime()?.block_on(async {
        let nodes = mend_engine::node::start_all(&dir, Default::default()).await?;
        println!("\n== 3 groups started on loopback:");
        for n in &nodes {
            println!("  {} listening on {}", n.id, n.addr);
        }
        let client = Client::connect(
            &Credentials::for_client(&dir)?,
            Bootstrap::Route(RouteList::load(&dir)?),
        )
        .await?;

        println!(
            "\n== loading {} objects of 1 KiB into groups 1,2,3",
            args.objects
        );
        let t0 = now_ns();
        let started = std::time::Instant::now();
        write(&client, 0..args.objects, &[1, 2, 3], t0, false).await?;
        println!("  done in {:.2}s", started.elapsed().as_secs_f64());

        println!("\n== the groups diverge:");
        let mut next = args.objects;
        let mut samples = Vec::new();
        for (what, n, groups, delete) in DIVERGENCE {
            // New keys for writes to a subset; existing keys for updates and deletes.
            let keys = if *delete || what.starts_with("updated") {
                let start = samples.len() as u64 * 1000;
                start..start + n
            } else {
                next += n;
                next - n..next
            };
            samples.push(keys.start);
            write(&client, keys, groups, now_ns(), *delete).await?;
            println!("  {n:>4} keys {what}");
        }

        show_samples(&client, &samples, t0).await?;
        println!(
            "\n  {} keys now differ between the groups.",
            DIVERGENCE.iter().map(|d| d.1).sum::<u64>()
        );

        // The rest is the real `mend` an operator would run, against this cluster.
        mend(
            &dir,
            &["verify", "-g", "1,2,3", "--show", "5"],
            "find exactly what differs",
        )
        .await?;
        mend(
            &dir,
            &["dc", "-g", "1,2,3"],
            "repair: newest version wins, deletes stick",
        )
        .await?;
        let code = mend(
            &dir,
            &["verify", "-g", "1,2,3"],
            "check: every group agrees",
        )
        .await?;
        show_samples(&client, &samples, t0).await?;
        if code != Some(0) {
            anyhow::bail!("the groups still differ after dc");
        }
        println!("\n  converged. Try it yourself: mend demo --keep DIR, then mend --help.");
        for n in nodes {
            n.shutdown().await;
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Runs this `mend` binary with `args` against the demo cluster, showing its output.
async fn mend(dir: &std::path::Path, args: &[&str], why: &str) -> anyhow::Result<Option<i32>> {
    println!("\n== mend {}   # {why}", args.join(" "));
    let exe = std::env::current_exe().context("cannot find the mend binary")?;
    let status = tokio::process::Command::new(exe)
        .args(args)
        .env("MEND_CLUSTER", dir)
        .status()
        .await
        .context("cannot run mend")?;
    Ok(status.code())
}

/// What each group holds for the first key of every kind of divergence.
async fn show_samples(client: &Client, samples: &[u64], t0: u64) -> anyhow::Result<()> {
    println!("\n== what each group holds for a sample of keys:");
    println!(
        "  {:<12} {:>10} {:>10} {:>10}",
        "key", "group 1", "group 2", "group 3"
    );
    for start in samples {
        let key = format!("obj-{start}");
        let id = Id::from_key(key.as_bytes());
        let mut cells = Vec::new();
        for g in 1..=3 {
            let r = client.lookup(g, &[id]).await?.pop().flatten();
            cells.push(match r {
                Some(r) if !r.version.is_tombstone() && r.version.timestamp > t0 => {
                    "live:new".to_string()
                }
                other => ReplicaState::of(other.as_ref()).as_str().to_string(),
            });
        }
        println!(
            "  {:<12} {:>10} {:>10} {:>10}",
            key, cells[0], cells[1], cells[2]
        );
    }
    Ok(())
}

/// Writes synthetic objects `keys` (or tombstones) to `groups` at `timestamp`.
async fn write(
    client: &Client,
    keys: std::ops::Range<u64>,
    groups: &[u32],
    timestamp: u64,
    delete: bool,
) -> anyhow::Result<()> {
    let mut writer = BatchWriter::new(client, 512, 8, Box::new(|_| {}));
    for i in keys {
        let key = format!("obj-{i}");
        let id = Id::from_key(key.as_bytes());
        let (version, value) = if delete {
            (Version::tombstone(timestamp), Vec::new())
        } else {
            let value = synthetic_value(format!("{key}@{timestamp}").as_bytes(), 1024);
            (Version::of_value(&value, timestamp, 0), value)
        };
        for g in groups {
            let node = client.owner(*g, &id)?.clone();
            writer
                .push(
                    &node,
                    BatchItem {
                        id,
                        version,
                        value: value.clone(),
                    },
                )
                .await?;
        }
    }
    let (stats, errors) = writer.finish().await?;
    if stats.failed + stats.stale + stats.mismatched > 0 {
        anyhow::bail!("demo writes failed: {stats:?} {errors:?}");
    }
    Ok(())
}
