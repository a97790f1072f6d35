//! Test harness: a cluster dir in a temp dir, real `mend node` processes on loopback
//! ports chosen by the kernel (port 0), readiness awaited from their `ready` lines, and a
//! small `mend` runner (after ripgrep's TestCommand).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `mend` binary under test.
pub fn mend_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mend"))
}

/// A cluster dir made by `mend init --base-port 0`.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Option<Child>,
}

impl Cluster {
    /// `mend init` with `groups` × `per_group` nodes on port 0; nodes not started.
    pub fn init(groups: u32, per_group: u32) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new(mend_bin())
            .args(["init", "--base-port", "0", "--groups", &groups.to_string()])
            .args(["--nodes-per-group", &per_group.to_string(), "--dir"])
            .arg(dir.path().join("c"))
            .output()
            .expect("run mend init");
        assert!(
            out.status.success(),
            "mend init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Cluster { dir, nodes: None }
    }

    /// `init` then `mend node --all`, awaiting every node's ready line.
    pub fn start(groups: u32, per_group: u32) -> Cluster {
        let mut c = Cluster::init(groups, per_group);
        c.start_nodes(groups * per_group);
        c
    }

    /// The cluster dir.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("c")
    }

    /// Starts `mend node --all` and waits until `count` nodes said they are ready.
    pub fn start_nodes(&mut self, count: u32) {
        let child = spawn_ready(
            Command::new(mend_bin())
                .args(["node", "--all", "--cluster"])
                .arg(self.path()),
            count,
        );
        self.nodes = Some(child);
    }

    /// Kills the node process with SIGKILL (no clean shutdown).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.nodes.take() {
            c.kill().expect("kill -9");
            c.wait().expect("reap");
        }
    }

    /// Stops the node process with SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.nodes.take().expect("nodes running");
        let pid = c.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        c.wait().expect("reap")
    }

    /// A `mend` command with `--cluster` set through the environment.
    pub fn mend(&self) -> Command {
        let mut cmd = Command::new(mend_bin());
        cmd.env("MEND_CLUSTER", self.path());
        cmd
    }

    /// Runs `mend ARGS…` and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.mend().args(args).output().expect("run mend")
    }

    /// Runs `mend ARGS…`, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "mend {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// `mend stat --json` for `key` in `groups`, parsed.
    pub fn stat(&self, groups: &str, key: &str) -> Vec<serde_json::Value> {
        let out = self.ok(&["stat", "-g", groups, key, "--json"]);
        serde_json::from_str(&out).expect("stat --json is JSON")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut c) = self.nodes.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Spawns `cmd` and waits (at most 60 s) until it printed `count` lines starting with
/// "ready"; panics with its stderr if it exits first.
pub fn spawn_ready(cmd: &mut Command, count: u32) -> Child {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mend node");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("ready ") && tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = child.stderr.take().expect("stderr");
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let mut l = log2.lock().unwrap();
            if l.len() < 64 * 1024 {
                l.push_str(&line);
                l.push('\n');
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = 0;
    while seen < count {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(_) => seen += 1,
            Err(_) => {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("mend node exited with {status}: {}", log.lock().unwrap());
                }
                assert!(
                    Instant::now() < deadline,
                    "nodes not ready in 60 s: {}",
                    log.lock().unwrap()
                );
            }
        }
    }
    child
}

/// Bit rot, with the node stopped: in each of the store files of `node` (its shards), flips
/// the byte `at` bytes into every copy of each needle with `mask`; returns the flips.
pub fn rot_store(cluster: &Path, node: &str, needles: &[&[u8]], at: usize, mask: u8) -> usize {
    let store =
        mend_engine::store::RedbStore::open(&cluster.join("data").join(node).join("store.redb"))
            .expect("open the stopped node's store");
    let files = store.paths();
    drop(store);
    let mut flips = 0;
    for file in files {
        let mut bytes = std::fs::read(&file).expect("read a store file");
        for needle in needles {
            let mut i = 0;
            while let Some(p) = bytes[i..].windows(needle.len()).position(|w| w == *needle) {
                bytes[i + p + at] ^= mask;
                i += p + needle.len();
                flips += 1;
            }
        }
        std::fs::write(&file, bytes).expect("write a store file");
    }
    flips
}

/// Writes `bytes` to a new file under `dir`.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write test file");
    p
}

impl Cluster {
    /// A client of the cluster through the engine (certificates and route list from the
    /// cluster dir), for building and reading exact states faster than the CLI could.
    pub async fn engine_client(&self) -> mend_engine::client::Client {
        use mend_engine::client::{Bootstrap, Client};
        let creds = mend_engine::pki::Credentials::for_client(&self.path()).unwrap();
        let route = mend_engine::RouteList::load(&self.path()).unwrap();
        Client::connect(&creds, Bootstrap::Route(route))
            .await
            .unwrap()
    }
}

/// Nodes run one per process, so one can be killed alone.
pub struct NodeProcs {
    pub procs: std::collections::BTreeMap<String, Child>,
}

impl Cluster {
    /// Starts every node of the cluster in its own `mend node --id` process, in order, each
    /// awaited ready (so each records its port before the next starts).
    pub fn start_each(&self) -> NodeProcs {
        let text = std::fs::read_to_string(self.path().join("cluster.toml")).unwrap();
        let ids: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("id = \""))
            .map(|l| l.trim_end_matches('"').to_string())
            .collect();
        let mut procs = std::collections::BTreeMap::new();
        for id in ids {
            let child = self.start_node(&id);
            procs.insert(id, child);
        }
        NodeProcs { procs }
    }

    /// Starts node `id` in its own process and waits until it is ready.
    pub fn start_node(&self, id: &str) -> Child {
        spawn_ready(
            Command::new(mend_bin())
                .args(["node", "--id", id, "--cluster"])
                .arg(self.path()),
            1,
        )
    }

    /// Writes exact versions through the engine's client (fast, for building hundreds of
    /// precisely divergent keys): (group, key, value, timestamp, tombstone).
    pub fn write_versions(&self, items: &[(u32, String, Vec<u8>, u64, bool)]) {
        use mend_engine::client::BatchWriter;
        use mend_engine::wire::BatchItem;
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let client = self.engine_client().await;
            let mut w = BatchWriter::new(&client, 256, 4, Box::new(|_| {}));
            for (group, key, value, ts, tomb) in items {
                let id = mend_engine::Id::from_key(key.as_bytes());
                let version = if *tomb {
                    mend_engine::Version::tombstone(*ts)
                } else {
                    mend_engine::Version::of_value(value, *ts, 0)
                };
                let node = client.owner(*group, &id).unwrap().clone();
                let value = if *tomb { Vec::new() } else { value.clone() };
                w.push(&node, BatchItem { id, version, value })
                    .await
                    .unwrap();
            }
            let (stats, errors) = w.finish().await.unwrap();
            assert_eq!(stats.written as usize, items.len(), "{stats:?} {errors:?}");
        });
    }

    /// Every group's record of `keys`, through the engine's client.
    pub fn records(
        &self,
        groups: &[u32],
        keys: &[String],
    ) -> Vec<Vec<Option<mend_engine::Record>>> {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let client = self.engine_client().await;
            let ids: Vec<mend_engine::Id> = keys
                .iter()
                .map(|k| mend_engine::Id::from_key(k.as_bytes()))
                .collect();
            let mut per_group = Vec::new();
            for g in groups {
                per_group.push(client.lookup(*g, &ids).await.unwrap());
            }
            (0..keys.len())
                .map(|i| per_group.iter().map(|g| g[i]).collect())
                .collect()
        })
    }
}

impl Drop for NodeProcs {
    fn drop(&mut self) {
        for c in self.procs.values_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl NodeProcs {
    /// Kills node `id` with SIGKILL.
    pub fn kill9(&mut self, id: &str) {
        let mut c = self.procs.remove(id).expect("node running");
        c.kill().unwrap();
        c.wait().unwrap();
    }
}

impl Cluster {
    /// Writes exact versions to a given node, whoever owns the key (how misplaced copies
    /// are made on purpose): (node, key, value, timestamp, tombstone).
    pub fn write_on_nodes(&self, items: &[(String, String, Vec<u8>, u64, bool)]) {
        use mend_engine::wire::BatchItem;
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let client = self.engine_client().await;
            for (node, key, value, ts, tomb) in items {
                let id = mend_engine::Id::from_key(key.as_bytes());
                let version = if *tomb {
                    mend_engine::Version::tombstone(*ts)
                } else {
                    mend_engine::Version::of_value(value, *ts, 0)
                };
                let value = if *tomb { Vec::new() } else { value.clone() };
                let entry = client.route().node(node).unwrap().clone();
                let out = client
                    .write_batch(&entry, vec![BatchItem { id, version, value }])
                    .await
                    .unwrap();
                assert_eq!(
                    out,
                    vec![mend_engine::store::PutOutcome::Written],
                    "{node} {key}"
                );
            }
        });
    }

    /// What `node` itself holds for each of `keys`.
    pub fn records_on(&self, node: &str, keys: &[String]) -> Vec<Option<mend_engine::Record>> {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let client = self.engine_client().await;
            let ids: Vec<mend_engine::Id> = keys
                .iter()
                .map(|k| mend_engine::Id::from_key(k.as_bytes()))
                .collect();
            let entry = client.route().node(node).unwrap().clone();
            client.lookup_on(&entry, &ids).await.unwrap()
        })
    }

    /// The owner of `key` in `group`, from the cluster file.
    pub fn owner_of(&self, group: u32, key: &str) -> String {
        let route = mend_engine::RouteList::load(&self.path()).unwrap();
        route
            .owner_of(group, &mend_engine::Id::from_key(key.as_bytes()))
            .unwrap()
            .id
            .clone()
    }
}

/// One replica's state of a key in the combination tests: absent, or (tombstone?, timestamp).
pub type GroupState = Option<(bool, u64)>;

/// The seven states of the combination tests: absent, or live/tombstone at timestamp 1, 2
/// or 3 (older, same, newer). The same (state, timestamp) is the same version everywhere.
pub fn state(i: usize) -> GroupState {
    match i {
        0 => None,
        i => Some((i > 3, ((i - 1) % 3 + 1) as u64)),
    }
}

/// The version a state stands for: a tombstone, or the value `value@TS`.
pub fn version_of(s: GroupState) -> Option<mend_engine::Version> {
    s.map(|(tomb, ts)| {
        if tomb {
            mend_engine::Version::tombstone(ts)
        } else {
            mend_engine::Version::of_value(format!("value@{ts}").as_bytes(), ts, 0)
        }
    })
}
