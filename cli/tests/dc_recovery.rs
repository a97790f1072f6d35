//! `mend dc` on real clusters: the 343 combinations of per-group states, dump files,
//! --safe and --dry-run, corruption, and a node killed mid-run.

mod support;

use std::collections::BTreeSet;

use mend_engine::{Record, Version};
use support::{state, version_of, Cluster, GroupState};

/// A write that builds a case: (group, key, value, timestamp, tombstone).
type Write = (u32, String, Vec<u8>, u64, bool);

/// The 343 cases: key name and per-group state; and the writes that create them.
fn cases() -> (Vec<String>, Vec<[GroupState; 3]>, Vec<Write>) {
    let (mut keys, mut states, mut writes) = (Vec::new(), Vec::new(), Vec::new());
    for a in 0..7 {
        for b in 0..7 {
            for c in 0..7 {
                if (a, b, c) == (0, 0, 0) {
                    // All absent: a key no group has cannot be recovered or even seen.
                    continue;
                }
                let key = format!("case-{a}{b}{c}");
                let st = [state(a), state(b), state(c)];
                for (g, s) in st.iter().enumerate() {
                    if let Some((tomb, ts)) = s {
                        writes.push((
                            g as u32 + 1,
                            key.clone(),
                            format!("value@{ts}").into_bytes(),
                            *ts,
                            *tomb,
                        ));
                    }
                }
                keys.push(key);
                states.push(st);
            }
        }
    }
    (keys, states, writes)
}

/// The winner of DESIGN's order among a case's versions.
fn winner(st: &[Option<(bool, u64)>; 3]) -> Version {
    st.iter()
        .filter_map(|s| version_of(*s))
        .reduce(|a, b| if b.is_newer_than(&a) { b } else { a })
        .unwrap()
}

fn stats(c: &Cluster, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut all = vec!["dc", "-g", "1,2,3", "--stats", "json"];
    all.extend_from_slice(args);
    let out = c.run(&all);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "dc stats: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), json)
}

fn assert_all_hold_winners(c: &Cluster, keys: &[String], states: &[[Option<(bool, u64)>; 3]]) {
    let records = c.records(&[1, 2, 3], keys);
    for ((key, st), recs) in keys.iter().zip(states).zip(records) {
        let w = winner(st);
        for (g, r) in recs.iter().enumerate() {
            assert_eq!(
                *r,
                Some(Record {
                    version: w,
                    corrupt: false
                }),
                "{key}: group {} holds {r:?}, the winner is {w:?} (states {st:?})",
                g + 1
            );
        }
    }
}

#[test]
fn every_combination_of_group_states_converges_to_the_newest() {
    let (keys, states, writes) = cases();
    assert_eq!(keys.len(), 342);
    for mode in [&[][..], &["--full-scan"][..]] {
        let c = Cluster::start(3, 1);
        c.write_versions(&writes);
        let (code, s) = stats(&c, mode);
        assert_eq!(code, Some(0), "{s}");
        assert_all_hold_winners(&c, &keys, &states);
        // Keys where every group already held the winner are not touched.
        let in_sync = states
            .iter()
            .filter(|st| st.iter().all(|s| version_of(*s) == Some(winner(st))))
            .count();
        assert_eq!(
            s["differing"].as_u64().unwrap() as usize,
            keys.len() - in_sync,
            "{s}"
        );
        // Deleted keys stay deleted: every tombstone winner is a tombstone everywhere.
        // A second run changes nothing.
        let (code, again) = stats(&c, mode);
        assert_eq!(code, Some(0));
        assert_eq!(again["copied"], 0, "{again}");
        assert_eq!(again["differing"], 0, "{again}");
        c.ok(&["verify", "-g", "1,2,3"]);
    }
}

#[test]
fn a_dump_file_recovers_exactly_its_ids() {
    let (keys, states, writes) = cases();
    let c = Cluster::start(3, 1);
    c.write_versions(&writes);
    // A dump of half the cases, in upper case, several per line, with CRLF and blanks.
    let half: Vec<usize> = (0..keys.len()).step_by(2).collect();
    let mut text = String::new();
    for pair in half.chunks(2) {
        let ids: Vec<String> = pair
            .iter()
            .map(|i| c.ok(&["id", &keys[*i]]).trim().to_uppercase())
            .collect();
        text.push_str(&ids.join(" \t"));
        text.push_str("\r\n\r\n");
    }
    let dump = c.dir.path().join("half.dump");
    std::fs::write(&dump, text).unwrap();
    let (code, s) = stats(&c, &["-f", dump.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{s}");
    let chosen: Vec<String> = half.iter().map(|i| keys[*i].clone()).collect();
    let chosen_states: Vec<_> = half.iter().map(|i| states[*i]).collect();
    assert_all_hold_winners(&c, &chosen, &chosen_states);
    // The other half is untouched: still as written.
    let rest: Vec<usize> = (1..keys.len()).step_by(2).collect();
    let names: Vec<String> = rest.iter().map(|i| keys[*i].clone()).collect();
    for (i, recs) in rest.iter().zip(c.records(&[1, 2, 3], &names)) {
        let expect: Vec<Option<Version>> = states[*i].iter().map(|s| version_of(*s)).collect();
        let got: Vec<Option<Version>> = recs.iter().map(|r| r.map(|r| r.version)).collect();
        assert_eq!(got, expect, "{}", keys[*i]);
    }
    // Again with the same dump: nothing to do.
    let (code, s) = stats(&c, &["-f", dump.to_str().unwrap()]);
    assert_eq!((code, s["copied"].as_u64()), (Some(0), Some(0)), "{s}");
}

#[test]
fn a_malformed_dump_file_is_named_by_line_and_changes_nothing() {
    let c = Cluster::start(2, 1);
    c.ok(&["put", "-g", "1", "k", "--value", "v"]);
    let dump = c.dir.path().join("bad.dump");
    let good = c.ok(&["id", "k"]);
    std::fs::write(&dump, format!("{}\n{} zz\n", good.trim(), good.trim())).unwrap();
    let out = c.run(&["dc", "-g", "1,2", "-f", dump.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.dump:2"), "{err}");
    assert_eq!(c.stat("2", "k")[0]["state"], "absent");
}

#[test]
fn dry_run_changes_nothing_and_safe_removes_nothing() {
    let (keys, states, writes) = cases();
    let c = Cluster::start(3, 1);
    c.write_versions(&writes);
    let before = c.records(&[1, 2, 3], &keys);
    let report = c.dir.path().join("dry.csv");
    let (code, s) = stats(&c, &["--dry-run", "--report", report.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{s}");
    assert_eq!(s["copied"], 0);
    assert!(s["skipped"].as_u64().unwrap() > 0);
    assert_eq!(
        c.records(&[1, 2, 3], &keys),
        before,
        "--dry-run changed something"
    );
    let csv = std::fs::read_to_string(&report).unwrap();
    assert!(
        csv.lines().skip(1).all(|l| l.ends_with(",dry-run")),
        "{csv}"
    );
    assert_eq!(
        csv.lines().count() - 1,
        s["skipped"].as_u64().unwrap() as usize
    );

    let (code, s) = stats(&c, &["--safe"]);
    assert_eq!(code, Some(0), "{s}");
    assert_eq!(s["removed"], 0);
    assert_all_hold_winners(&c, &keys, &states);
}

#[test]
fn unknown_group_and_bad_flags_are_input_errors() {
    let c = Cluster::start(2, 1);
    for args in [
        &["dc", "-g", "1,7"][..],
        &["dc", "-g", "1"][..],
        &["dc", "-g", "1,2", "-t", "12 parsecs"][..],
        &["dc", "-g", "1,2", "--policy", "nonesuch"][..],
        &["dc", "-g", "1,2", "-o", "nonode"][..],
    ] {
        let out = c.run(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim().lines().count(),
            1,
            "{args:?}"
        );
    }
}

#[test]
fn a_corrupt_newest_copy_loses_to_the_next_newest_healthy_one() {
    let mut c = Cluster::start(3, 1);
    let old = "old value, healthy everywhere".repeat(20);
    let new = "new value that will rot on disk".repeat(20);
    let lonely = "the only copy, and it rots".repeat(20);
    c.ok(&[
        "put",
        "-g",
        "1,2,3",
        "k",
        "--value",
        &old,
        "--timestamp",
        "1000",
    ]);
    c.ok(&[
        "put",
        "-g",
        "1",
        "k",
        "--value",
        &new,
        "--timestamp",
        "2000",
    ]);
    c.ok(&[
        "put",
        "-g",
        "1",
        "lonely",
        "--value",
        &lonely,
        "--timestamp",
        "1000",
    ]);
    c.stop();
    let needles = [&new.as_bytes()[40..80], &lonely.as_bytes()[40..80]];
    assert!(support::rot_store(&c.path(), "g1n1", &needles, 5, 0xff) >= 2);
    c.start_nodes(3);
    assert_eq!(c.run(&["scrub", "-g", "1"]).status.code(), Some(1));

    let (code, s) = stats(&c, &[]);
    assert_eq!(
        code,
        Some(1),
        "the lonely corrupt copy is unrecoverable: {s}"
    );
    assert_eq!(s["unrecoverable"], 1, "{s}");
    // The next newest healthy version won everywhere, including over the corrupt copy.
    for g in ["1", "2", "3"] {
        assert_eq!(c.ok(&["get", "-g", g, "k"]), old, "group {g}");
    }
    // The only copy is reported, not removed.
    let rows = c.stat("1", "lonely");
    assert_eq!(rows[0]["state"], "corrupt");
}

#[test]
fn a_node_killed_mid_run_fails_the_run_by_name_and_a_retry_converges() {
    let c = Cluster::init(3, 1);
    let mut nodes = c.start_each();
    let keys: Vec<String> = (0..3000).map(|i| format!("kill-{i}")).collect();
    let writes: Vec<_> = keys
        .iter()
        .flat_map(|k| [1u32, 2].map(|g| (g, k.clone(), k.as_bytes().repeat(8), 10, false)))
        .collect();
    c.write_versions(&writes);

    let report = c.dir.path().join("progress.csv");
    let mut dc = c
        .mend()
        .args([
            "dc", "-g", "1,2,3", "-n", "1", "-b", "16", "--stats", "json", "--report",
        ])
        .arg(&report)
        .arg("--failed-out")
        .arg(c.dir.path().join("failed.dump"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill group 3's node once copies to it have begun (the CSV report fills up).
    loop {
        if std::fs::metadata(&report)
            .map(|m| m.len() > 4096)
            .unwrap_or(false)
        {
            break;
        }
        assert!(
            dc.try_wait().unwrap().is_none(),
            "dc finished before the kill"
        );
        std::thread::yield_now();
    }
    nodes.kill9("g3n1");
    let out = dc.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("g3n1"), "names the node: {err}");
    let failed = std::fs::read_to_string(c.dir.path().join("failed.dump")).unwrap();
    let failed_ids: BTreeSet<&str> = failed.lines().collect();
    assert!(!failed_ids.is_empty());

    // Restart; retry the failed ids, then a whole run: converged, nothing lost.
    nodes.procs.insert("g3n1".into(), c.start_node("g3n1"));
    let dump = c.dir.path().join("failed.dump");
    let (code, s) = stats(&c, &["-f", dump.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{s}");
    assert_eq!(s["keys"].as_u64().unwrap() as usize, failed_ids.len());
    let (code, s) = stats(&c, &[]);
    assert_eq!(code, Some(0), "{s}");
    c.ok(&["verify", "-g", "1,2,3"]);
    let sample: Vec<String> = keys.iter().step_by(97).cloned().collect();
    for (key, recs) in sample.iter().zip(c.records(&[1, 2, 3], &sample)) {
        let v = Version::of_value(&key.as_bytes().repeat(8), 10, 0);
        assert!(
            recs.iter().all(|r| r.map(|r| r.version) == Some(v)),
            "{key}: {recs:?}"
        );
    }
}
