//! The two situations `mend merge` exists for, end to end (dnet_recovery's article):
//! a node of a group was down while writes went on, and a group grew by two nodes.

mod support;

use std::collections::BTreeMap;

use support::{Cluster, NodeProcs};

const TIMEOUT: &str = "1";

/// `mend route show --json`: per node, keys held minus keys owned.
fn misplaced(c: &Cluster) -> BTreeMap<String, u64> {
    let out = c.ok(&["route", "show", "--json", "--connect-timeout", TIMEOUT]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    rows.iter()
        .map(|r| {
            let held = r["keys_held"].as_u64().unwrap();
            let owned = r["keys_owned"].as_u64().unwrap();
            (r["node"].as_str().unwrap().to_string(), held - owned)
        })
        .collect()
}

fn merge(c: &Cluster, groups: &str) -> serde_json::Value {
    let out = c.run(&["merge", "-g", groups, "--stats", "json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_node_down_during_writes_then_merge_puts_every_key_on_its_owner() {
    let c = Cluster::init(2, 3);
    let mut nodes = c.start_each();
    c.ok(&[
        "load",
        "-g",
        "1,2",
        "--count",
        "600",
        "--size",
        "100",
        "--timestamp",
        "10",
    ]);

    // g1n2 dies; writes go on in both groups (group 1's hand off to the next node).
    nodes.kill9("g1n2");
    let out = c.ok(&[
        "load",
        "-g",
        "1,2",
        "--count",
        "400",
        "--start",
        "600",
        "--size",
        "100",
        "--connect-timeout",
        TIMEOUT,
    ]);
    assert!(out.contains("handed off"), "{out}");
    let out = c.ok(&[
        "load",
        "-g",
        "1,2",
        "--count",
        "100",
        "--start",
        "0",
        "--size",
        "100",
        "--timestamp",
        "20",
        "--connect-timeout",
        TIMEOUT,
    ]);
    assert!(out.contains("handed off"), "{out}");

    // It comes back with its old data: outdated or missing keys, misplaced copies elsewhere.
    nodes.procs.insert("g1n2".into(), c.start_node("g1n2"));
    assert!(misplaced(&c).values().sum::<u64>() > 0);
    let s = merge(&c, "1");
    assert!(s["removed"].as_u64().unwrap() > 0, "{s}");
    assert!(
        misplaced(&c).values().all(|m| *m == 0),
        "{:?}",
        misplaced(&c)
    );
    // Nothing lost: every key readable, at its newest version, and the groups agree.
    for i in [0, 50, 99, 100, 599, 600, 999] {
        let key = format!("obj-{i}");
        let rows = c.stat("1,2", &key);
        assert_eq!(
            rows[0]["timestamp"], rows[1]["timestamp"],
            "{key}: {rows:?}"
        );
        assert_eq!(rows[0]["state"], "live", "{key}");
        if i < 100 {
            assert_eq!(rows[0]["timestamp"], 20, "{key} kept its newest version");
        }
    }
    c.ok(&["verify", "-g", "1,2"]);
    let again = merge(&c, "1");
    assert_eq!(
        (again["copied"].as_u64(), again["removed"].as_u64()),
        (Some(0), Some(0)),
        "{again}"
    );
}

#[test]
fn a_group_grown_by_two_nodes_moves_each_key_to_its_new_owner() {
    let c = Cluster::init(2, 1);
    let _nodes = c.start_each();
    c.ok(&["load", "-g", "1,2", "--count", "900", "--size", "100"]);
    for id in ["g1n2", "g1n3"] {
        c.ok(&[
            "route",
            "add-node",
            "-g",
            "1",
            "--id",
            id,
            "--addr",
            "127.0.0.1:0",
            "--yes",
        ]);
    }
    let mut added = NodeProcs {
        procs: BTreeMap::new(),
    };
    for id in ["g1n2", "g1n3"] {
        added.procs.insert(id.into(), c.start_node(id));
    }
    let out = c.ok(&["route", "push"]);
    assert_eq!(out.matches("accepted").count(), 4, "{out}");
    assert!(misplaced(&c)["g1n1"] > 0);
    // Reads work before the merge, through the fallback...
    for i in [0, 450, 899] {
        assert_eq!(
            c.run(&["get", "-g", "1", &format!("obj-{i}")])
                .status
                .code(),
            Some(0)
        );
    }
    let s = merge(&c, "1");
    assert!(s["copied"].as_u64().unwrap() > 0, "{s}");
    // ...and after it, from each key's new owner.
    let counts = misplaced(&c);
    assert!(counts.values().all(|m| *m == 0), "{counts:?}");
    for i in [0, 450, 899] {
        let key = format!("obj-{i}");
        let out = c.run(&["get", "-g", "1", &key]);
        assert_eq!(out.status.code(), Some(0));
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("read from"),
            "{key} served by its owner"
        );
    }
    c.ok(&["verify", "-g", "1,2"]);
}
