//! `mend dc -C PLUGIN` on real clusters: each example plugin in `testdata/plugins/` ends
//! the cluster as it decided, and each broken plugin in `testdata/plugins/bad/` stops the
//! run with an error naming the plugin, the line of its output and the key, having
//! changed nothing.
//!
//! Exit codes: a plugin that fails (exits, hangs, answers garbage or a decision the engine
//! refuses) stops a run that has started: 1. Flags that do not go together: 2.

mod support;

use std::path::PathBuf;

use mend_engine::{Id, Record, Version};
use support::{state, version_of, Cluster};

fn plugin(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/plugins")
        .join(name);
    let path = path.canonicalize().expect("the plugin exists");
    let path = path.to_str().expect("a UTF-8 path");
    let runner = if name.ends_with(".py") {
        "python3"
    } else {
        "sh"
    };
    format!("{runner} '{path}'")
}

/// `mend dc -g GROUPS --stats json ARGS…`: exit code, stats (if printed), stderr.
fn dc(c: &Cluster, groups: &str, args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let mut all = vec!["dc", "-g", groups, "--stats", "json"];
    all.extend_from_slice(args);
    let out = c.run(&all);
    let stats = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), stats, stderr)
}

fn live(value: &str, ts: u64) -> Option<Version> {
    Some(Version::of_value(value.as_bytes(), ts, 0))
}

fn held(r: &Option<Record>) -> Option<Version> {
    r.filter(|r| !r.corrupt).map(|r| r.version)
}

#[test]
fn newest_wins_py_repairs_like_dc_except_in_a_protected_group() {
    // Every combination of three groups' states (342 keys).
    let (mut keys, mut states, mut writes) = (Vec::new(), Vec::new(), Vec::new());
    for a in 0..7 {
        for b in 0..7 {
            for d in 0..7 {
                if (a, b, d) == (0, 0, 0) {
                    continue;
                }
                let key = format!("case-{a}{b}{d}");
                let st = [state(a), state(b), state(d)];
                for (g, s) in st.iter().enumerate() {
                    if let Some((tomb, ts)) = s {
                        let value = format!("value@{ts}").into_bytes();
                        writes.push((g as u32 + 1, key.clone(), value, *ts, *tomb));
                    }
                }
                keys.push(key);
                states.push(st);
            }
        }
    }
    let c = Cluster::start(3, 1);
    c.write_versions(&writes);
    let command = format!("{} --protect 3", plugin("newest_wins.py"));
    let (code, stats, err) = dc(&c, "1,2,3", &["-C", &command]);
    assert_eq!(code, Some(0), "{stats} {err}");
    for ((key, st), recs) in keys.iter().zip(&states).zip(c.records(&[1, 2, 3], &keys)) {
        let winner = st.iter().filter_map(|s| version_of(*s)).reduce(|a, b| {
            if b.is_newer_than(&a) {
                b
            } else {
                a
            }
        });
        assert_eq!(held(&recs[0]), winner, "{key}: group 1");
        assert_eq!(held(&recs[1]), winner, "{key}: group 2");
        assert_eq!(
            held(&recs[2]),
            version_of(st[2]),
            "{key}: group 3 was written"
        );
    }
    // Again: nothing more to copy; the keys group 3 lacks are still reported skipped.
    let (code, again, err) = dc(&c, "1,2,3", &["-C", &command]);
    assert_eq!(code, Some(0), "{again} {err}");
    assert_eq!(again["copied"], 0, "{again}");
    assert!(again["skipped"].as_u64().unwrap() > 0, "{again}");
    // Without protection, the plugin finishes the job: the groups are in sync.
    let (code, last, err) = dc(&c, "1,2,3", &["-C", &plugin("newest_wins.py")]);
    assert_eq!(code, Some(0), "{last} {err}");
    c.ok(&["verify", "-g", "1,2,3"]);
}

#[test]
fn max_number_py_reads_values_and_merges_counters_to_their_largest() {
    let c = Cluster::start(3, 1);
    c.write_versions(&[
        // Newest wins would keep 13; the plugin keeps 42.
        (1, "counter".into(), b"7".to_vec(), 1, false),
        (2, "counter".into(), b"42".to_vec(), 2, false),
        (3, "counter".into(), b"13".to_vec(), 3, false),
        // Not numbers: newest wins.
        (1, "text".into(), b"x".to_vec(), 1, false),
        (2, "text".into(), b"y".to_vec(), 2, false),
        // One value: copied.
        (1, "single".into(), b"5".to_vec(), 1, false),
    ]);
    let command = plugin("max_number.py");
    let (code, stats, err) = dc(&c, "1,2,3", &["-C", &command]);
    assert_eq!(code, Some(0), "{stats} {err}");
    assert_eq!(stats["merged"], 1, "{stats}");
    let keys = ["counter", "text", "single"].map(String::from);
    let recs = c.records(&[1, 2, 3], &keys);
    let mut counter = Version::of_value(b"42", 4, 0);
    counter.flags |= mend_engine::version::FLAG_MERGEABLE;
    for (key, expected) in keys.iter().zip([Some(counter), live("y", 2), live("5", 1)]) {
        let i = keys.iter().position(|k| k == key).unwrap();
        for (g, r) in recs[i].iter().enumerate() {
            assert_eq!(held(r), expected, "{key}: group {}", g + 1);
        }
    }
    assert_eq!(c.ok(&["get", "-g", "3", "counter"]), "42");
    let (code, again, err) = dc(&c, "1,2,3", &["-C", &command]);
    assert_eq!(code, Some(0), "{again} {err}");
    assert_eq!(
        (again["copied"].as_u64(), again["merged"].as_u64()),
        (Some(0), Some(0)),
        "{again}"
    );
}

#[test]
fn report_only_sh_changes_nothing_and_reports_every_key_with_its_states() {
    let c = Cluster::start(3, 1);
    c.write_versions(&[
        (1, "a".into(), b"1".to_vec(), 1, false),
        (2, "a".into(), b"2".to_vec(), 2, false),
        (3, "b".into(), Vec::new(), 5, true),
    ]);
    let keys = ["a", "b"].map(String::from);
    let before = c.records(&[1, 2, 3], &keys);
    let report = c.dir.path().join("audit.csv");
    let (code, stats, err) = dc(
        &c,
        "1,2,3",
        &[
            "-C",
            &plugin("report_only.sh"),
            "--report",
            report.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{stats} {err}");
    assert_eq!(stats["skipped"], 2, "{stats}");
    assert_eq!(stats["copied"], 0, "{stats}");
    assert_eq!(c.records(&[1, 2, 3], &keys), before);
    let csv = std::fs::read_to_string(&report).unwrap();
    for (key, states) in [("a", "live live absent"), ("b", "absent absent tombstone")] {
        let id = Id::from_key(key.as_bytes());
        assert!(
            csv.contains(&format!("{id},skip,,,,report only: {states}")),
            "{key}: {csv}"
        );
    }
}

/// Keys held in group 1 only: `dc` would copy each to group 2.
fn one_sided(c: &Cluster) -> Vec<String> {
    let keys: Vec<String> = (0..5).map(|i| format!("key-{i}")).collect();
    let writes: Vec<_> = keys
        .iter()
        .map(|k| (1, k.clone(), k.clone().into_bytes(), 1, false))
        .collect();
    c.write_versions(&writes);
    keys
}

/// The key a run decides first: the lowest id of the first range batch holding any of
/// `keys`, in the order the run takes its range batches (a cluster of one node per group,
/// so the range batches are the id space's, in order).
fn decided_first(keys: &[String]) -> Id {
    let batches = (1u32 << 16) / mend_engine::run::RANGE_BATCH_PARTITIONS;
    let order = mend_engine::run::far_apart((0..batches).collect());
    let place = |id: &Id| {
        let batch = u32::from(id.partition()) / mend_engine::run::RANGE_BATCH_PARTITIONS;
        order.iter().position(|&b| b == batch).unwrap()
    };
    keys.iter()
        .map(|k| Id::from_key(k.as_bytes()))
        .min_by_key(|id| (place(id), *id))
        .unwrap()
}

/// The run fails with exit code 1, naming the plugin, `line` and the first key decided
/// ([`decided_first`]), and the cluster is as it was.
fn assert_stops(c: &Cluster, keys: &[String], command: &str, extra: &[&str], expected: &[&str]) {
    let before = c.records(&[1, 2], keys);
    // A failed run keeps its run dir: keep it in the test's temp dir.
    let tmp = c.dir.path().to_str().unwrap();
    let mut args = vec!["-C", command, "--tmp-dir", tmp];
    args.extend_from_slice(extra);
    let (code, stats, err) = dc(c, "1,2", &args);
    assert_eq!(code, Some(1), "{command}: {stats} {err}");
    let first = decided_first(keys);
    assert!(
        err.contains(&format!(
            "mend: dc failed: policy exec plugin `{command}`: "
        )),
        "{err}"
    );
    assert!(err.contains(&format!("key {first}")), "{command}: {err}");
    for text in expected {
        assert!(err.contains(text), "{command}: wanted {text:?} in {err}");
    }
    assert_eq!(
        c.records(&[1, 2], keys),
        before,
        "{command} changed something"
    );
}

#[test]
fn broken_plugins_stop_the_run_by_name_line_and_key_and_change_nothing() {
    let c = Cluster::start(2, 1);
    let keys = one_sided(&c);
    assert_stops(
        &c,
        &keys,
        &plugin("bad/exit_nonzero.sh"),
        &[],
        &["exited with exit status: 3 while waiting for output line 1"],
    );
    assert_stops(
        &c,
        &keys,
        &plugin("bad/malformed.py"),
        &[],
        &["output line 1", "not a JSON object"],
    );
    assert_stops(
        &c,
        &keys,
        &plugin("bad/unknown_id.py"),
        &[],
        &[
            "output line 1",
            &format!("decision for id {}", "0".repeat(128)),
        ],
    );
    assert_stops(
        &c,
        &keys,
        &plugin("bad/copy_from_absent.py"),
        &[],
        &[
            "output line 1",
            "decision refused: copy from replica 1 (g2n1), which holds no healthy version",
        ],
    );
    assert_stops(
        &c,
        &keys,
        &plugin("bad/remove_only_copy.py"),
        &[],
        &[
            "output line 1",
            "decision refused: remove on replica 0 (g1n1) would lose its version",
        ],
    );
    // The plugins were right to be refused: the built-in policy repairs every key.
    let (code, stats, err) = dc(&c, "1,2", &[]);
    assert_eq!(
        (code, stats["copied"].as_u64()),
        (Some(0), Some(5)),
        "{stats} {err}"
    );
}

#[test]
fn a_plugin_past_its_time_limit_is_killed_and_the_run_stops() {
    let c = Cluster::start(2, 1);
    let keys = one_sided(&c);
    let pid_file = c.dir.path().join("plugin.pid");
    let command = format!("{} '{}'", plugin("bad/hang.py"), pid_file.display());
    let started = std::time::Instant::now();
    assert_stops(
        &c,
        &keys,
        &command,
        &["--plugin-timeout", "0.5"],
        &["took longer than 500ms", "waiting for output line 1"],
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    // The plugin (a grandchild: sh, then python) does not outlive the run. SIGKILL is
    // delivered asynchronously, so this waits (5 s at most) for it to take effect.
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let stat_file = format!("/proc/{}/stat", pid.trim());
    let running = || {
        std::fs::read_to_string(&stat_file)
            .is_ok_and(|s| !s.rsplit(')').next().unwrap().trim_start().starts_with('Z'))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while running() {
        assert!(
            std::time::Instant::now() < deadline,
            "the plugin still runs"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn a_plugin_replaces_the_policy_and_its_flags_need_it() {
    let c = Cluster::init(2, 1);
    for args in [
        &["dc", "-g", "1,2", "-C", "true", "--policy", "union"][..],
        &["dc", "-g", "1,2", "--plugin-timeout", "5"][..],
        &["dc", "-g", "1,2", "-C", "true", "--plugin-timeout", "0"][..],
    ] {
        let out = c.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}
