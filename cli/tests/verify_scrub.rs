//! `mend verify` finds exactly the ids that differ, whatever the kind of divergence, and
//! agrees with `--full-scan`; `mend scrub` finds bit rot on disk.

mod support;

use std::collections::BTreeSet;

use support::Cluster;

fn id_of(key: &str) -> String {
    let mut out = [0u8; 64];
    blake3::Hasher::new()
        .update(key.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    hex::encode(out)
}

/// The ids `verify` reports, through its JSON output.
fn verify_ids(c: &Cluster, extra: &[&str]) -> (BTreeSet<String>, serde_json::Value) {
    let mut args = vec!["verify", "-g", "1,2,3", "--json"];
    args.extend_from_slice(extra);
    let out = c.run(&args);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("verify JSON: {}", String::from_utf8_lossy(&out.stderr)));
    let ids: BTreeSet<String> = report["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    let expected_code = if ids.is_empty() { 0 } else { 1 };
    assert_eq!(out.status.code(), Some(expected_code), "{report}");
    (ids, report)
}

/// Flips one byte of every stored copy of `needle` in a node's redb files (node stopped).
fn rot_on_disk(c: &Cluster, node: &str, needle: &[u8]) -> usize {
    support::rot_store(&c.path(), node, &[needle], needle.len() / 2, 0x55)
}

/// Groups that split the id space differently: group 1 one node, group 2 halves, group 3
/// a quarter and three quarters.
fn uneven_cluster() -> Cluster {
    let mut c = Cluster::init(3, 2);
    let split = [
        ("g1n1", "[\"0000-ffff\"]"),
        ("g1n2", "[]"),
        ("g2n1", "[\"0000-7fff\"]"),
        ("g2n2", "[\"8000-ffff\"]"),
        ("g3n1", "[\"0000-3fff\"]"),
        ("g3n2", "[\"4000-ffff\"]"),
    ];
    let path = c.path().join("cluster.toml");
    let mut node = "";
    let text: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|line| {
            if let Some(id) = line.strip_prefix("id = ") {
                node = split
                    .iter()
                    .find(|(n, _)| format!("\"{n}\"") == id)
                    .unwrap()
                    .0;
            }
            match (
                line.starts_with("partitions = "),
                split.iter().find(|(n, _)| *n == node),
            ) {
                (true, Some((_, parts))) => format!("partitions = {parts}"),
                _ => line.to_string(),
            }
        })
        .collect();
    std::fs::write(&path, text.join("\n")).unwrap();
    c.start_nodes(6);
    c
}

#[test]
fn verify_lists_exactly_the_divergent_ids_and_full_scan_agrees() {
    let mut c = uneven_cluster();
    c.ok(&[
        "load",
        "-g",
        "1,2,3",
        "--count",
        "3000",
        "--timestamp",
        "100",
    ]);
    let (ids, report) = verify_ids(&c, &[]);
    assert!(ids.is_empty(), "freshly loaded groups agree: {report}");
    assert!(report["round_trips"].as_u64().unwrap() <= 2, "{report}");

    let mut expected = BTreeSet::new();
    // Missing in one group.
    c.ok(&["put", "-g", "1,3", "missing-in-2", "--value", "m"]);
    expected.insert(id_of("missing-in-2"));
    // Older in one group.
    c.ok(&[
        "put",
        "-g",
        "1,2",
        "obj-10",
        "--value",
        "newer",
        "--timestamp",
        "200",
    ]);
    expected.insert(id_of("obj-10"));
    // Tombstoned in one group.
    c.ok(&["del", "-g", "2", "obj-20", "--timestamp", "300"]);
    expected.insert(id_of("obj-20"));
    // Different value, equal timestamp.
    c.ok(&[
        "put",
        "-g",
        "1",
        "obj-30",
        "--value",
        "left",
        "--timestamp",
        "400",
    ]);
    c.ok(&[
        "put",
        "-g",
        "2,3",
        "obj-30",
        "--value",
        "right",
        "--timestamp",
        "400",
    ]);
    expected.insert(id_of("obj-30"));
    // Only in one group.
    c.ok(&["put", "-g", "3", "only-in-3", "--value", "x"]);
    expected.insert(id_of("only-in-3"));
    // Bit rot on disk in group 3: invisible to verify until scrub finds it.
    let rotten: String = (0..40)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect::<String>()
        .repeat(30);
    c.ok(&["put", "-g", "1,2,3", "rotten", "--value", &rotten]);
    assert!(verify_ids(&c, &[]).0 == expected, "before the rot");
    let rotten_node = c.stat("3", "rotten")[0]["node"]
        .as_str()
        .unwrap()
        .to_string();
    c.stop();
    let hits = rot_on_disk(&c, &rotten_node, &rotten.as_bytes()[100..164]);
    assert!(hits > 0, "the value's bytes are in the store file");
    c.start_nodes(6);
    assert_eq!(
        verify_ids(&c, &[]).0,
        expected,
        "rot is not visible before scrub"
    );

    let dump = c.dir.path().join("corrupt.dump");
    let out = c.run(&["scrub", "-g", "3", "--dump-out", dump.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "scrub reports corruption");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains(&format!("corrupt {}", id_of("rotten"))),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(&dump).unwrap().trim(),
        id_of("rotten")
    );
    let rows = c.stat("3", "rotten");
    assert_eq!(rows[0]["state"], "corrupt");
    expected.insert(id_of("rotten"));

    let (ids, report) = verify_ids(&c, &[]);
    assert_eq!(ids, expected, "{report}");
    // Each id differs in one group only: below the ranges where they part, the two
    // groups that agree are asked once between them.
    assert!(report["asks_spared"].as_u64().unwrap() > 0, "{report}");
    // Below ranges small enough, the nodes answered with 24-bit sums and hashes.
    assert!(report["anchors"].as_u64().unwrap() > 0, "{report}");
    let (full, _) = verify_ids(&c, &["--full-scan"]);
    assert_eq!(full, expected, "--full-scan agrees");

    // The dump file of differences is a valid dump.
    let dump = c.dir.path().join("diff.dump");
    verify_ids(&c, &["--dump-out", dump.to_str().unwrap()]);
    let listed: BTreeSet<String> = std::fs::read_to_string(&dump)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(listed, expected);

    // Scrub again: the same value is still reported, nothing new is marked.
    let out = c.run(&["scrub", "-g", "3"]);
    assert_eq!(out.status.code(), Some(1));
    // Healthy groups scrub clean.
    c.ok(&["scrub", "-g", "1,2"]);
}

#[test]
fn verify_with_one_node_compares_only_its_ranges() {
    let c = uneven_cluster();
    // Keys in both halves of the id space, missing from group 2.
    let mut low = None;
    let mut high = None;
    for i in 0..200 {
        let key = format!("k{i}");
        let first = u8::from_str_radix(&id_of(&key)[..2], 16).unwrap();
        if first < 0x40 && low.is_none() {
            low = Some(key);
        } else if first >= 0x80 && high.is_none() {
            high = Some(key);
        }
    }
    let (low, high) = (low.unwrap(), high.unwrap());
    c.ok(&["put", "-g", "1,3", &low, "--value", "l"]);
    c.ok(&["put", "-g", "1,3", &high, "--value", "h"]);
    // g3n1 owns 0000-3fff in group 3: only the low key is in its ranges.
    let (ids, _) = verify_ids(&c, &["-o", "g3n1"]);
    assert_eq!(ids, BTreeSet::from([id_of(&low)]));
    let (ids, _) = verify_ids(&c, &[]);
    assert_eq!(ids.len(), 2);
    let out = c.run(&["verify", "-g", "1,2,3", "-o", "g9n9"]);
    assert_eq!(out.status.code(), Some(2));
}

/// "N of M partitions were wrong" from each line of `mend node --rebuild-fingerprints`.
fn wrong_partitions(out: &str) -> Vec<usize> {
    out.lines()
        .map(|line| {
            let (_, rest) = line.split_once("; ").unwrap_or_else(|| panic!("{line}"));
            rest.split(' ').next().unwrap().parse().unwrap()
        })
        .collect()
}

#[test]
fn rebuild_fingerprints_restores_a_damaged_table_of_a_stopped_node() {
    let mut c = Cluster::start(3, 1);
    c.ok(&["load", "-g", "1,2,3", "--count", "3000", "--size", "16"]);
    assert!(verify_ids(&c, &[]).0.is_empty());

    // A running node's store is locked: refused, naming the file, nothing changed.
    let out = c.run(&["node", "--id", "g1n1", "--rebuild-fingerprints"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("store.redb"), "{err}");

    assert!(c.stop().success());
    let path = c.path().join("data").join("g1n1").join("store.redb");
    {
        let store = mend_engine::store::RedbStore::open(&path).unwrap();
        use mend_engine::store::Store;
        let before = store.partition_fingerprints(0, u16::MAX).unwrap();
        store.debug_damage_fingerprints().unwrap();
        assert_ne!(store.partition_fingerprints(0, u16::MAX).unwrap(), before);
    }
    let out = c.ok(&["node", "--id", "g1n1", "--rebuild-fingerprints"]);
    let wrong = wrong_partitions(&out);
    assert_eq!(wrong.len(), 1, "{out}");
    assert!(wrong[0] > 0, "{out}");
    // Every node, again: nothing left to repair.
    let out = c.ok(&["node", "--all", "--rebuild-fingerprints"]);
    assert_eq!(wrong_partitions(&out), vec![0, 0, 0], "{out}");

    c.start_nodes(3);
    assert!(verify_ids(&c, &[]).0.is_empty());
}
