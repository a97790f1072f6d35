//! The example binary is a whole `mend`: it sets up a cluster, runs its nodes on loopback
//! port 0, and recovers it with `--policy prefer-primary`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A cluster dir and its nodes, run by the example binary; the nodes die with it.
struct Cluster {
    dir: tempfile::TempDir,
    nodes: Child,
}

impl Cluster {
    fn start(groups: u32) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let out = Command::new(env!("CARGO_BIN_EXE_mend-prefer-primary"))
            .args(["init", "--base-port", "0", "--nodes-per-group", "1"])
            .args(["--groups", &groups.to_string(), "--dir"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let mut nodes = Command::new(env!("CARGO_BIN_EXE_mend-prefer-primary"))
            .args(["node", "--all", "--cluster"])
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Ready when every node printed its `ready NODE ADDR` line.
        let (tx, rx) = mpsc::channel();
        let stdout = nodes.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("ready ") && tx.send(()).is_err() {
                    break;
                }
            }
        });
        for _ in 0..groups {
            rx.recv_timeout(Duration::from_secs(60))
                .expect("nodes ready in 60 s");
        }
        Cluster { dir, nodes }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("c")
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_mend-prefer-primary"))
            .env("MEND_CLUSTER", self.path())
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn stat(&self, key: &str) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["stat", "-g", "1,2,3", key, "--json"])).unwrap()
    }

    fn dc(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["dc", "-g", "1,2,3", "--stats", "json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.nodes.kill();
        let _ = self.nodes.wait();
    }
}

fn checksum(value: &str) -> [u8; 32] {
    mend_engine::Version::of_value(value.as_bytes(), 0, 0).checksum
}

#[test]
fn a_tie_goes_to_the_primary_group_and_the_rest_is_newest_wins() {
    let c = Cluster::start(3);
    // At timestamp 100, group 1 (the primary) and group 2 wrote different values; group
    // 2's has the larger checksum, so plain `dc` would make it win everywhere.
    let primary = "written in the primary";
    let other = (0..)
        .map(|i| format!("written elsewhere {i}"))
        .find(|v| checksum(v) > checksum(primary))
        .unwrap();
    c.ok(&[
        "put",
        "-g",
        "1",
        "tie",
        "--value",
        primary,
        "--timestamp",
        "100",
    ]);
    c.ok(&[
        "put",
        "-g",
        "2",
        "tie",
        "--value",
        &other,
        "--timestamp",
        "100",
    ]);
    // No tie: newest wins, whoever wrote it.
    c.ok(&[
        "put",
        "-g",
        "1",
        "plain",
        "--value",
        "old",
        "--timestamp",
        "100",
    ]);
    c.ok(&[
        "put",
        "-g",
        "3",
        "plain",
        "--value",
        "new",
        "--timestamp",
        "200",
    ]);

    let stats = c.dc(&["--policy", "prefer-primary"]);
    assert_eq!(stats["merged"], 1, "{stats}");
    for g in ["1", "2", "3"] {
        assert_eq!(c.ok(&["get", "-g", g, "tie"]), primary, "group {g}");
        assert_eq!(c.ok(&["get", "-g", g, "plain"]), "new", "group {g}");
    }
    for row in c.stat("tie") {
        assert_eq!(row["timestamp"], 101, "{row}");
    }
    // Converged: a second run finds nothing to do, and so does plain dc.
    let again = c.dc(&["--policy", "prefer-primary"]);
    assert_eq!(
        (again["copied"].as_u64(), again["merged"].as_u64()),
        (Some(0), Some(0)),
        "{again}"
    );
    c.ok(&["verify", "-g", "1,2,3"]);
}

#[test]
fn the_policy_is_listed_with_the_built_in_ones() {
    // Policies are looked up before any node is asked anything.
    let out = Command::new(env!("CARGO_BIN_EXE_mend-prefer-primary"))
        .args(["dc", "-g", "1,2", "--policy", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("known: dc, merge, prefer-primary, union"),
        "{err}"
    );
}
