//! `mend init`: a new cluster dir.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use mend_engine::route::{split_evenly, NodeEntry, RouteList, CLUSTER_FILE};

/// Arguments of `mend init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The cluster dir to create (must not hold a cluster already).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Replica groups (one per datacenter, typically).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub groups: u32,
    /// Nodes in each group; partitions are split evenly between them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub nodes_per_group: u32,
    /// Port of the first node; the others count up from it. 0: each node picks a free port
    /// when it first starts and records it in cluster.toml.
    #[arg(long, default_value_t = 1025)]
    pub base_port: u16,
    /// Host or IP address the nodes listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The cluster's name (appears in the CA certificate).
    #[arg(long, default_value = "mend")]
    pub name: String,
}

/// Builds the route list `mend init` writes.
pub fn route_list(args: &InitArgs) -> anyhow::Result<RouteList> {
    let mut nodes = Vec::new();
    let parts = split_evenly(args.nodes_per_group);
    for g in 1..=args.groups {
        for (n, range) in parts.iter().enumerate() {
            let index = nodes.len() as u32;
            let port = if args.base_port == 0 {
                0
            } else {
                u16::try_from(u32::from(args.base_port) + index).with_context(|| {
                    format!(
                        "--base-port {} leaves no room for {} nodes",
                        args.base_port,
                        index + 1
                    )
                })?
            };
            let id = format!("g{g}n{}", n + 1);
            nodes.push(NodeEntry {
                data_dir: PathBuf::from("data").join(&id),
                id,
                group: g,
                addr: format!("{}:{port}", args.host),
                partitions: vec![*range],
            });
        }
    }
    let route = RouteList {
        name: args.name.clone(),
        epoch: 1,
        nodes,
    };
    route.validate("the new route list")?;
    Ok(route)
}

/// Runs `mend init`.
pub fn run(args: InitArgs) -> anyhow::Result<ExitCode> {
    if args.dir.join(CLUSTER_FILE).exists() {
        bail!(
            "{} already holds a cluster ({CLUSTER_FILE} exists); nothing written",
            args.dir.display()
        );
    }
    // Everything is checked before anything is written.
    let route = route_list(&args)?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let ids: Vec<&str> = route.nodes.iter().map(|n| n.id.as_str()).collect();
    mend_engine::pki::write_cluster_pki(&args.dir, &args.name, &ids)?;
    for node in &route.nodes {
        let dir = route.data_dir(&args.dir, node);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    route.save(&args.dir)?;
    println!(
        "created cluster {:?} in {}: {} groups x {} nodes",
        args.name,
        args.dir.display(),
        args.groups,
        args.nodes_per_group
    );
    for node in &route.nodes {
        println!(
            "  {:<8} group {:<3} {:<22} partitions {}",
            node.id, node.group, node.addr, node.partitions[0]
        );
    }
    println!(
        "start the nodes with: mend node --cluster {} --all",
        args.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
