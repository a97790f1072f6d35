//! `mend merge` on real clusters: keys stored on a node that does not own them move to
//! their owner, newest wins, and the misplaced copy goes only once the owner has the key.

mod support;

use mend_engine::Record;
use support::{state, version_of, Cluster, GroupState};

/// The 48 cases with a misplaced copy (the improper node holds something), on a group of
/// two nodes: (key, improper state, owner state).
fn cases(c: &Cluster) -> Vec<(String, GroupState, GroupState)> {
    let mut out = Vec::new();
    for a in 1..7 {
        for b in 0..7 {
            out.push((format!("m-{a}{b}"), state(a), state(b)));
        }
    }
    let mut writes = Vec::new();
    for (key, misplaced, owned) in &out {
        let owner = c.owner_of(1, key);
        let other = if owner == "g1n1" { "g1n2" } else { "g1n1" };
        for (node, s) in [(other.to_string(), misplaced), (owner, owned)] {
            if let Some((tomb, ts)) = s {
                writes.push((
                    node,
                    key.clone(),
                    format!("value@{ts}").into_bytes(),
                    *ts,
                    *tomb,
                ));
            }
        }
    }
    c.write_on_nodes(&writes);
    out
}

fn merge(c: &Cluster, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut args = vec!["merge", "-g", "1", "--stats", "json"];
    args.extend_from_slice(extra);
    let out = c.run(&args);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "merge: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), json)
}

fn snapshot(c: &Cluster, keys: &[String]) -> Vec<Vec<Option<Record>>> {
    ["g1n1", "g1n2"]
        .iter()
        .map(|n| c.records_on(n, keys))
        .collect()
}

#[test]
fn every_combination_on_an_improper_node_and_its_owner_converges() {
    let c = Cluster::start(1, 2);
    let cases = cases(&c);
    let keys: Vec<String> = cases.iter().map(|k| k.0.clone()).collect();
    let (code, s) = merge(&c, &[]);
    assert_eq!(code, Some(0), "{s}");
    for (key, misplaced, owned) in &cases {
        let winner = [*misplaced, *owned]
            .into_iter()
            .filter_map(version_of)
            .reduce(|a, b| if b.is_newer_than(&a) { b } else { a })
            .unwrap();
        let owner = c.owner_of(1, key);
        let other = if owner == "g1n1" { "g1n2" } else { "g1n1" };
        let held = c.records_on(&owner, std::slice::from_ref(key))[0];
        assert_eq!(
            held,
            Some(Record {
                version: winner,
                corrupt: false
            }),
            "{key}: owner"
        );
        assert_eq!(
            c.records_on(other, std::slice::from_ref(key))[0],
            None,
            "{key}: misplaced copy left"
        );
    }
    assert_eq!(s["removed"].as_u64().unwrap() as usize, cases.len(), "{s}");
    // A second run changes nothing.
    let before = snapshot(&c, &keys);
    let (code, again) = merge(&c, &[]);
    assert_eq!(code, Some(0));
    assert_eq!(
        (again["copied"].as_u64(), again["removed"].as_u64()),
        (Some(0), Some(0)),
        "{again}"
    );
    assert_eq!(snapshot(&c, &keys), before);
}

#[test]
fn safe_removes_nothing_and_dry_run_changes_nothing() {
    let c = Cluster::start(1, 2);
    let cases = cases(&c);
    let keys: Vec<String> = cases.iter().map(|k| k.0.clone()).collect();
    let before = snapshot(&c, &keys);
    let (code, s) = merge(&c, &["--dry-run"]);
    assert_eq!(code, Some(0), "{s}");
    assert_eq!(snapshot(&c, &keys), before, "--dry-run changed something");

    let (code, s) = merge(&c, &["--safe"]);
    assert_eq!(code, Some(0), "{s}");
    assert_eq!(s["removed"], 0);
    for (key, misplaced, _) in &cases {
        let owner = c.owner_of(1, key);
        let other = if owner == "g1n1" { "g1n2" } else { "g1n1" };
        // The misplaced copy is still there, untouched.
        let held = c.records_on(other, std::slice::from_ref(key))[0].map(|r| r.version);
        assert_eq!(held, version_of(*misplaced), "{key}");
    }
}

#[test]
fn one_node_moves_only_its_own_misplaced_keys() {
    let c = Cluster::start(1, 3);
    let keys: Vec<String> = (0..60).map(|i| format!("o-{i}")).collect();
    // Every key also stored, misplaced, on both non-owners.
    let mut writes = Vec::new();
    for k in &keys {
        let owner = c.owner_of(1, k);
        for n in ["g1n1", "g1n2", "g1n3"] {
            if n != owner {
                writes.push((n.to_string(), k.clone(), b"v".to_vec(), 5, false));
            }
        }
    }
    c.write_on_nodes(&writes);
    let (code, s) = merge(&c, &["-o", "g1n2"]);
    assert_eq!(code, Some(0), "{s}");
    for k in &keys {
        let owner = c.owner_of(1, k);
        let on_owner = c.records_on(&owner, std::slice::from_ref(k))[0];
        // Keys g1n2 owns sit misplaced on the others only: -o g1n2 leaves them be.
        assert_eq!(on_owner.is_some(), owner != "g1n2", "{k}: owned by {owner}");
        if owner != "g1n2" {
            assert_eq!(
                c.records_on("g1n2", std::slice::from_ref(k))[0],
                None,
                "{k} left g1n2"
            );
        }
        if owner != "g1n1" {
            assert!(
                c.records_on("g1n1", std::slice::from_ref(k))[0].is_some(),
                "{k}: g1n1 untouched by -o g1n2"
            );
        }
    }
}
