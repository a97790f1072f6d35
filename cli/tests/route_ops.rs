//! `mend route` and client hand-offs against real node processes on loopback.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use mend_engine::{Id, RouteList};
use support::{Cluster, NodeProcs};

/// A short connect timeout: a killed node is declared unreachable after it (a live node
/// on loopback answers in milliseconds).
const TIMEOUT: &str = "1";

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn cluster_file(c: &Cluster) -> String {
    std::fs::read_to_string(c.path().join("cluster.toml")).unwrap()
}

/// `mend route show --json`, by node id.
fn show(c: &Cluster, extra: &[&str]) -> BTreeMap<String, serde_json::Value> {
    let mut args = vec!["route", "show", "--json", "--connect-timeout", TIMEOUT];
    args.extend_from_slice(extra);
    let out = c.ok(&args);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("route show --json");
    rows.into_iter()
        .map(|r| (r["node"].as_str().unwrap().to_string(), r))
        .collect()
}

/// Keys `PREFIX0…` whose owner in group 1 is `node`, `n` of them.
fn keys_owned_by(dir: &Path, node: &str, prefix: &str, n: usize) -> Vec<String> {
    let route = RouteList::load(dir).unwrap();
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|k| route.owner_of(1, &Id::from_key(k.as_bytes())).unwrap().id == node)
        .take(n)
        .collect()
}

#[test]
fn route_show_lists_nodes_ranges_and_key_counts() {
    let c = Cluster::start(2, 2);
    c.ok(&["load", "-g", "1,2", "--count", "200", "--size", "64"]);
    let rows = show(&c, &[]);
    assert_eq!(rows.len(), 4);
    for g in ["g1", "g2"] {
        let total: u64 = rows
            .iter()
            .filter(|(id, _)| id.starts_with(g))
            .map(|(_, r)| r["keys_owned"].as_u64().unwrap())
            .sum();
        assert_eq!(total, 200, "{rows:?}");
    }
    for r in rows.values() {
        assert_eq!(r["keys_owned"], r["keys_held"], "{r}");
        assert_eq!(r["epoch"], 1);
        assert_eq!(r["partitions"], 32768);
    }
    assert_eq!(rows["g1n2"]["ranges"][0], "8000-ffff");
    let text = c.ok(&["route", "show"]);
    assert!(
        text.contains("epoch 1") && text.contains("2 groups, 4 nodes"),
        "{text}"
    );
    assert!(
        text.contains("keys owned") && text.contains("misplaced"),
        "{text}"
    );
    assert!(text.contains("0000-7fff"), "{text}");
}

#[test]
fn add_node_needs_yes_then_push_reaches_every_node_and_an_older_epoch_is_refused() {
    let c = Cluster::start(1, 2);
    c.ok(&["load", "-g", "1", "--count", "300", "--size", "32"]);
    let before = cluster_file(&c);
    let add = [
        "route",
        "add-node",
        "-g",
        "1",
        "--id",
        "g1n3",
        "--addr",
        "127.0.0.1:0",
    ];

    // Without --yes: the diff, and nothing changed.
    let out = c.ok(&add);
    assert!(out.contains("add node g1n3: group 1"), "{out}");
    assert!(out.contains("move g1n1 -> g1n3"), "{out}");
    assert!(out.contains("dry run"), "{out}");
    assert_eq!(cluster_file(&c), before);
    assert!(!c.path().join("certs/g1n3.pem").exists());
    assert!(!c.path().join("data/g1n3").exists());

    // With --yes: written, with a certificate and a data dir.
    let mut yes = add.to_vec();
    yes.push("--yes");
    let out = c.ok(&yes);
    assert!(out.contains("wrote"), "{out}");
    let route = RouteList::load(&c.path()).unwrap();
    assert_eq!(route.epoch, 2);
    assert_eq!(route.partition_counts()["g1n3"], 21845);
    assert!(c.path().join("certs/g1n3.pem").exists());
    assert!(c.path().join("data/g1n3").is_dir());

    // The new node starts with its certificate; the push reaches all three.
    let _g1n3 = NodeProcs {
        procs: BTreeMap::from([("g1n3".to_string(), c.start_node("g1n3"))]),
    };
    let out = c.ok(&["route", "push"]);
    assert_eq!(out.matches("accepted (epoch 2)").count(), 3, "{out}");
    let rows = show(&c, &[]);
    assert!(rows.values().all(|r| r["epoch"] == 2), "{rows:?}");
    // Keys whose partitions moved now sit on their old owners, misplaced; reads find them
    // through the fallback.
    assert_eq!(rows["g1n3"]["keys_held"], 0);
    let held: u64 = rows
        .values()
        .map(|r| r["keys_held"].as_u64().unwrap())
        .sum();
    let owned: u64 = rows
        .values()
        .map(|r| r["keys_owned"].as_u64().unwrap())
        .sum();
    assert_eq!(held, 300);
    assert!(owned < 300, "{rows:?}");
    let moved = keys_owned_by(&c.path(), "g1n3", "obj-", 1).remove(0);
    let out = c.run(&["get", "-g", "1", &moved]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout.len(), 32);
    assert!(
        stderr(&out).contains("owner g1n3 has no copy, read from"),
        "{}",
        stderr(&out)
    );

    // A hand-edited older epoch: every node refuses it, by name; nothing changes on them.
    let text = cluster_file(&c).replace("epoch = 2", "epoch = 1");
    std::fs::write(c.path().join("cluster.toml"), text).unwrap();
    let out = c.run(&["route", "push"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("3 of 3 nodes did not take epoch 1"), "{err}");
    for node in ["g1n1", "g1n2", "g1n3"] {
        assert!(err.contains(&format!("{node} (refused: ")), "{err}");
    }
    assert!(
        err.contains("pushed route list has epoch 1, this node is at epoch 2"),
        "{err}"
    );
    let rows = show(&c, &[]);
    assert!(rows.values().all(|r| r["epoch"] == 2), "{rows:?}");
}

#[test]
fn changes_that_would_empty_a_group_or_use_a_bad_recovery_file_change_nothing() {
    let c = Cluster::init(2, 1);
    let before = cluster_file(&c);
    let out = c.run(&["route", "remove-node", "--id", "g1n1", "--yes"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("would leave group 1 with no nodes"),
        "{}",
        stderr(&out)
    );
    let peers = c.dir.path().join("peers.json");
    std::fs::write(
        &peers,
        "[\n  {\"id\": \"g1n1\", \"group\": 1, \"addr\": \"127.0.0.1:0\"},\n  {\"id\": \"g2n1\", \"addr\": \"127.0.0.1:0\"}\n]\n",
    )
    .unwrap();
    let out = c.run(&[
        "route",
        "recover",
        "--from",
        peers.to_str().unwrap(),
        "--yes",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(peers.to_str().unwrap()) && err.contains("missing field `group`"),
        "{err}"
    );
    assert!(err.contains("line 3"), "{err}");
    let out = c.run(&[
        "route",
        "add-node",
        "-g",
        "1",
        "--id",
        "../evil",
        "--addr",
        "127.0.0.1:0",
        "--yes",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(cluster_file(&c), before);
}

#[test]
fn recovery_file_rebuilds_the_route_list_from_survivors() {
    // The group loses two of its three nodes.
    let c = Cluster::init(1, 3);
    let mut nodes = c.start_each();
    c.ok(&["load", "-g", "1", "--count", "150", "--size", "16"]);
    let survivor_keys = keys_owned_by(&c.path(), "g1n1", "obj-", 5);
    nodes.kill9("g1n2");
    nodes.kill9("g1n3");

    let route = RouteList::load(&c.path()).unwrap();
    let g1n1 = route.node("g1n1").unwrap().addr.clone();
    let peers = c.dir.path().join("peers.json");
    std::fs::write(
        &peers,
        format!("[{{\"id\": \"g1n1\", \"group\": 1, \"address\": \"{g1n1}\"}}]"),
    )
    .unwrap();
    let from = peers.to_str().unwrap();
    let before = cluster_file(&c);
    let out = c.ok(&["route", "recover", "--from", from]);
    assert!(
        out.contains("remove node g1n2") && out.contains("remove node g1n3"),
        "{out}"
    );
    assert!(
        out.contains("node g1n1: 21845 -> 65536 partitions"),
        "{out}"
    );
    assert!(out.contains("dry run"), "{out}");
    assert_eq!(cluster_file(&c), before);

    c.ok(&["route", "recover", "--from", from, "--yes"]);
    let route = RouteList::load(&c.path()).unwrap();
    assert_eq!(route.epoch, 2);
    assert_eq!(route.nodes.len(), 1);
    assert_eq!(route.nodes[0].data_dir, Path::new("data/g1n1"));
    assert_eq!(route.partition_counts()["g1n1"], 65536);
    let out = c.ok(&["route", "push"]);
    assert!(out.contains("every node is at epoch 2"), "{out}");
    let rows = show(&c, &[]);
    assert_eq!(rows["g1n1"]["epoch"], 2);
    assert_eq!(rows["g1n1"]["partitions"], 65536);
    // What the survivor held is still served, now with no hand-off at all.
    for key in &survivor_keys {
        let out = c.run(&["get", "-g", "1", key]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    }
}

#[test]
fn writes_hand_off_and_reads_fall_back_while_an_owner_is_down() {
    let c = Cluster::init(1, 3);
    let mut nodes = c.start_each();
    let keys = keys_owned_by(&c.path(), "g1n2", "k", 3);
    let home = keys_owned_by(&c.path(), "g1n1", "k", 1).remove(0);
    nodes.kill9("g1n2");

    // put: the owner g1n2 is down; g1n1 (next in route-list order) takes the write.
    for key in &keys {
        let out = c.ok(&[
            "put",
            "-g",
            "1",
            key,
            "--value",
            key,
            "--connect-timeout",
            TIMEOUT,
        ]);
        assert!(
            out.contains("group 1: owner g1n2 unreachable, handed off to g1n1"),
            "{out}"
        );
        assert!(out.contains("group 1 (g1n1): written"), "{out}");
    }
    let out = c.ok(&[
        "put",
        "-g",
        "1",
        &home,
        "--value",
        "home",
        "--connect-timeout",
        TIMEOUT,
    ]);
    assert!(!out.contains("handed off"), "{out}");

    // get and stat find the hand-off copies.
    for key in &keys {
        let out = c.run(&["get", "-g", "1", key, "--connect-timeout", TIMEOUT]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out), *key);
        assert!(
            stderr(&out).contains("owner g1n2 unreachable, read from g1n1"),
            "{}",
            stderr(&out)
        );
    }
    let out = c.ok(&[
        "stat",
        "-g",
        "1",
        &keys[0],
        "--json",
        "--connect-timeout",
        TIMEOUT,
    ]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows[0]["node"], "g1n1");
    assert_eq!(rows[0]["owner"], "g1n2");
    assert_eq!(rows[0]["state"], "live");

    // del hands off its tombstone the same way.
    let out = c.ok(&["del", "-g", "1", &keys[2], "--connect-timeout", TIMEOUT]);
    assert!(out.contains("handed off to g1n1"), "{out}");

    // load goes on with the node down, handing off its share.
    let route = RouteList::load(&c.path()).unwrap();
    let load_owned = (0..200)
        .filter(|i| {
            let id = Id::from_key(format!("L{i}").as_bytes());
            route.owner_of(1, &id).unwrap().id == "g1n2"
        })
        .count();
    let out = c.ok(&[
        "load",
        "-g",
        "1",
        "--count",
        "200",
        "--prefix",
        "L",
        "--size",
        "16",
        "--connect-timeout",
        TIMEOUT,
    ]);
    assert!(out.contains("loaded 200 objects"), "{out}");
    assert!(
        out.contains(&format!("handed off {load_owned} objects")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "owner g1n2 unreachable, handed off {load_owned} items to g1n1"
        )),
        "{out}"
    );

    // The owner comes back (empty of these keys): reads still work through the fallback,
    // and the delete still holds.
    nodes.procs.insert("g1n2".into(), c.start_node("g1n2"));
    for key in &keys[..2] {
        let out = c.run(&["get", "-g", "1", key]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out), *key);
        assert!(
            stderr(&out).contains("owner g1n2 has no copy, read from g1n1"),
            "{}",
            stderr(&out)
        );
    }
    let out = c.run(&["get", "-g", "1", &keys[2]]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("deleted"), "{}", stderr(&out));
    assert_eq!(c.ok(&["get", "-g", "1", &home]), "home");
    let rows = show(&c, &[]);
    let misplaced = |r: &serde_json::Value| {
        r["keys_held"].as_u64().unwrap() - r["keys_owned"].as_u64().unwrap()
    };
    assert_eq!(misplaced(&rows["g1n1"]) as usize, keys.len() + load_owned);
    assert_eq!(rows["g1n2"]["keys_held"], 0);
}
