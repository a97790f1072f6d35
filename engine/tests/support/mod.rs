//! What the engine's node tests share: a cluster dir of nodes on in-memory stores, each
//! owning the whole id space of its group, started on loopback port 0, and a client.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mend_engine::node::{self, NodeOptions, RunningNode};
use mend_engine::pki::{write_cluster_pki, Credentials};
use mend_engine::route::{NodeEntry, PartitionRange, RouteList};
use mend_engine::store::MemoryStore;
use mend_engine::transport::{client_endpoint, Peer};

/// A cluster dir named `name` with one node per `(id, group)`, each owning every partition,
/// started in order; returns the dir and each node with its store.
pub async fn start_nodes(
    name: &str,
    nodes: &[(&str, u32)],
) -> (tempfile::TempDir, Vec<(Arc<MemoryStore>, RunningNode)>) {
    start_nodes_with(name, nodes, NodeOptions::default()).await
}

/// [`start_nodes`] with other node options than the defaults.
pub async fn start_nodes_with(
    name: &str,
    nodes: &[(&str, u32)],
    options: NodeOptions,
) -> (tempfile::TempDir, Vec<(Arc<MemoryStore>, RunningNode)>) {
    let dir = tempfile::tempdir().unwrap();
    let route = RouteList {
        name: name.into(),
        epoch: 1,
        nodes: nodes
            .iter()
            .map(|&(id, group)| NodeEntry {
                id: id.into(),
                group,
                addr: "127.0.0.1:0".into(),
                data_dir: PathBuf::from(format!("data/{id}")),
                partitions: vec![PartitionRange {
                    first: 0,
                    last: u16::MAX,
                }],
            })
            .collect(),
    };
    let ids: Vec<&str> = nodes.iter().map(|(id, _)| *id).collect();
    write_cluster_pki(dir.path(), name, &ids).unwrap();
    route.save(dir.path()).unwrap();
    let mut running = Vec::new();
    for id in ids {
        let store = Arc::new(MemoryStore::default());
        let node = node::start_with(dir.path(), id, store.clone(), options.clone())
            .await
            .unwrap();
        running.push((store, node));
    }
    (dir, running)
}

/// One node, `g1n1`, owning the whole id space of group 1.
#[allow(dead_code)] // each test file uses its own part of this module
pub async fn one_node(name: &str) -> (tempfile::TempDir, RunningNode) {
    let (dir, mut nodes) = start_nodes(name, &[("g1n1", 1)]).await;
    let (_, node) = nodes.pop().unwrap();
    (dir, node)
}

/// A client of the cluster in `dir`, connected to `addr`.
pub async fn connect(dir: &Path, addr: SocketAddr) -> Peer {
    let ep = client_endpoint(&Credentials::for_client(dir).unwrap()).unwrap();
    Peer::connect(&ep, addr).await.unwrap()
}
