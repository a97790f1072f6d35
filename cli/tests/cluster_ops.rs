//! Client operations against real node processes on loopback.

mod support;

use std::process::Command;

use support::{mend_bin, write_file, Cluster};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn put_get_del_stat_round_trip_across_groups() {
    let c = Cluster::start(3, 1);
    c.ok(&[
        "put",
        "-g",
        "1,2,3",
        "alpha",
        "--value",
        "hello world",
        "--user-flags",
        "6",
    ]);
    assert_eq!(c.ok(&["get", "-g", "2", "alpha"]), "hello world");

    let rows = c.stat("1,2,3", "alpha");
    assert_eq!(rows.len(), 3);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["group"], i as u64 + 1);
        assert_eq!(row["state"], "live");
        assert_eq!(row["size"], 11);
        assert_eq!(row["user_flags"], 6);
        assert_eq!(
            row["checksum"],
            blake3::hash(b"hello world").to_hex().as_str()
        );
    }
    // A write to a subset of groups is how replicas diverge.
    c.ok(&["put", "-g", "2", "alpha", "--value", "newer"]);
    assert_eq!(c.ok(&["get", "-g", "2", "alpha"]), "newer");
    assert_eq!(c.ok(&["get", "-g", "1", "alpha"]), "hello world");

    c.ok(&["del", "-g", "1,2,3", "alpha"]);
    let rows = c.stat("1,2,3", "alpha");
    assert!(rows.iter().all(|r| r["state"] == "tombstone"), "{rows:?}");
    let out = c.run(&["get", "-g", "1,2,3", "alpha"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("deleted"), "{}", stderr(&out));

    let rows = c.stat("1", "never-written");
    assert_eq!(rows[0]["state"], "absent");
}

#[test]
fn files_and_stdin_round_trip_and_output_file_is_written_whole() {
    let c = Cluster::start(1, 1);
    let tmp = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let src = write_file(tmp.path(), "src.bin", &data);
    c.ok(&["put", "-g", "1", "file-key", src.to_str().unwrap()]);
    let dst = tmp.path().join("dst.bin");
    c.ok(&["get", "-g", "1", "file-key", "-o", dst.to_str().unwrap()]);
    assert_eq!(std::fs::read(&dst).unwrap(), data);

    let mut child = c
        .mend()
        .args(["put", "-g", "1", "stdin-key", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"from stdin").unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(c.ok(&["get", "-g", "1", "stdin-key"]), "from stdin");
}

#[test]
fn stale_write_is_refused_and_changes_nothing() {
    let c = Cluster::start(1, 1);
    c.ok(&[
        "put",
        "-g",
        "1",
        "k",
        "--value",
        "new",
        "--timestamp",
        "2000",
    ]);
    for ts in ["1000", "2000"] {
        let out = c.run(&[
            "put",
            "-g",
            "1",
            "k",
            "--value",
            "zzz-other",
            "--timestamp",
            ts,
        ]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "older or equal version must be refused"
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("stale"));
    }
    assert_eq!(c.ok(&["get", "-g", "1", "k"]), "new");
    // A tombstone at the same timestamp is newer (DESIGN's order) and is taken.
    c.ok(&["del", "-g", "1", "k", "--timestamp", "2000"]);
    assert_eq!(c.stat("1", "k")[0]["state"], "tombstone");
    // And an older write cannot resurrect it.
    let out = c.run(&[
        "put",
        "-g",
        "1",
        "k",
        "--value",
        "again",
        "--timestamp",
        "1999",
    ]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn id_prints_blake3_xof_ids() {
    let out = Command::new(mend_bin())
        .args(["id", "a", "b"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    let mut expect = [0u8; 64];
    blake3::Hasher::new()
        .update(b"a")
        .finalize_xof()
        .fill(&mut expect);
    assert_eq!(lines[0], hex::encode(expect));
}

#[test]
fn kill_9_during_a_write_burst_loses_no_acknowledged_write() {
    let mut c = Cluster::start(1, 1);
    let mut acked = Vec::new();
    let mut killed = false;
    for i in 0..400 {
        let key = format!("burst-{i}");
        let out = c.run(&["put", "-g", "1", &key, "--value", &key]);
        if out.status.success() {
            acked.push(key);
        } else {
            assert!(killed, "put failed before the kill: {}", stderr(&out));
            break;
        }
        if acked.len() == 40 && !killed {
            // Kill while a writer races the kill: a put in flight is either acknowledged
            // (then it must survive) or fails.
            let racer = c
                .mend()
                .args(["put", "-g", "1", "racer", "--value", "r"])
                .spawn()
                .unwrap();
            c.kill9();
            killed = true;
            if racer.wait_with_output().unwrap().status.success() {
                acked.push("racer".into());
            }
        }
    }
    assert!(killed);
    c.start_nodes(1);
    for key in &acked {
        assert_eq!(
            c.ok(&["get", "-g", "1", key]),
            *key,
            "acknowledged write of {key} lost"
        );
    }
}

#[test]
fn a_node_restarted_after_kill_9_resets_the_connections_to_its_old_process() {
    let c = Cluster::init(1, 1);
    let mut nodes = c.start_each();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(c.engine_client());
    let node = client.route().nodes[0].clone();
    let id = mend_engine::Id::from_key(b"k");
    // A pooled connection to the first process, held here so that the request below goes
    // over it even if a keep-alive already met the reset (the pool would then redial).
    rt.block_on(client.lookup_on(&node, &[id])).unwrap();
    let old = rt.block_on(client.peer(&node)).unwrap();
    nodes.kill9("g1n1");
    let restarted = c.start_node("g1n1");
    nodes.procs.insert("g1n1".into(), restarted);
    // The new process (same address, same key) answers the old connection's packets with
    // a stateless reset: the request fails as reset, not after the idle timeout.
    let err = rt
        .block_on(old.call(&mend_engine::wire::Request::Lookup { ids: vec![id] }))
        .expect_err("the old connection is gone")
        .to_string();
    assert!(err.contains("reset"), "{err}");
    // And the next request connects afresh.
    assert_eq!(
        rt.block_on(client.lookup_on(&node, &[id])).unwrap(),
        vec![None]
    );
}

#[test]
fn sigterm_shuts_nodes_down_cleanly() {
    let mut c = Cluster::start(2, 1);
    c.ok(&["put", "-g", "1,2", "k", "--value", "v"]);
    let status = c.stop();
    assert!(status.success(), "{status}");
    c.start_nodes(2);
    assert_eq!(c.ok(&["get", "-g", "2", "k"]), "v");
}

#[test]
fn a_node_whose_data_dir_lost_a_store_file_refuses_to_start_and_names_it() {
    let mut c = Cluster::start(1, 1);
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    for key in &keys {
        c.ok(&["put", "-g", "1", key, "--value", "v"]);
    }
    assert!(c.stop().success());
    let data = c.path().join("data").join("g1n1");
    let (lost, kept) = (data.join("store-1.redb"), c.dir.path().join("kept"));
    std::fs::rename(&lost, &kept).unwrap();
    let out = c.run(&["node", "--all"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&lost.display().to_string()) && err.contains("store.redb holds objects"),
        "{err}"
    );
    assert!(
        !lost.exists(),
        "the refused start created {}",
        lost.display()
    );
    // Restored, the node starts with everything it held.
    std::fs::rename(&kept, &lost).unwrap();
    c.start_nodes(1);
    for key in &keys {
        assert_eq!(c.ok(&["get", "-g", "1", key]), "v", "{key}");
    }
}

#[test]
fn bad_input_is_a_one_line_error_with_exit_2() {
    let c = Cluster::start(2, 1);
    // Unknown group.
    let out = c.run(&["put", "-g", "1,9", "k", "--value", "v"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown group 9"), "{}", stderr(&out));
    assert_eq!(c.stat("1", "k")[0]["state"], "absent", "nothing written");

    // Unreachable -r (a port nothing listens on: bind one and drop it).
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = c.run(&["stat", "-g", "1", "k", "-r", &format!("127.0.0.1:{port}")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!("127.0.0.1:{port}")),
        "{}",
        stderr(&out)
    );

    // A malformed -r.
    let out = c.run(&["stat", "-g", "1", "k", "-r", "localhost"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("localhost"), "{}", stderr(&out));

    // Missing cert files.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("c");
    std::fs::create_dir(&copy).unwrap();
    std::fs::copy(c.path().join("cluster.toml"), copy.join("cluster.toml")).unwrap();
    let out = Command::new(mend_bin())
        .args(["stat", "-g", "1", "k", "--cluster"])
        .arg(&copy)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("ca.pem"), "{}", stderr(&out));

    // Malformed cluster.toml: named with its line.
    std::fs::write(
        copy.join("cluster.toml"),
        "name = \"x\"\nepoch = 1\n[[node]]\nid = 5\n",
    )
    .unwrap();
    let out = Command::new(mend_bin())
        .args(["stat", "-g", "1", "k", "--cluster"])
        .arg(&copy)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("cluster.toml") && err.contains("line 4"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    // No cluster dir at all.
    let out = Command::new(mend_bin())
        .args(["stat", "-g", "1", "k", "--cluster", "/nonexistent/mend"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/nonexistent/mend"));

    // A wrong flag is a usage error.
    let out = c.run(&["put", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));

    // Nodes: no cluster dir, and a request time limit that is not a number of seconds.
    for (args, named) in [
        (
            &["node", "--all", "--cluster", "/nonexistent/mend"][..],
            "/nonexistent/mend has no cluster.toml",
        ),
        (
            &[
                "node",
                "--all",
                "--cluster",
                "/nonexistent/mend",
                "--request-timeout",
                "0",
            ][..],
            "\"0\" is not a number of seconds",
        ),
    ] {
        let out = c.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(named), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn init_refuses_to_overwrite_a_cluster() {
    let c = Cluster::init(1, 1);
    let before = std::fs::read(c.path().join("cluster.toml")).unwrap();
    let out = c.run(&["init", "--dir", c.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("already holds a cluster"));
    assert_eq!(
        std::fs::read(c.path().join("cluster.toml")).unwrap(),
        before
    );
}

#[test]
fn a_client_with_a_certificate_from_another_ca_is_refused() {
    let c = Cluster::start(1, 1);
    c.ok(&["put", "-g", "1", "secret", "--value", "s"]);
    let other = Cluster::init(1, 1);
    for f in ["client.pem", "client.key"] {
        std::fs::copy(
            other.path().join("certs").join(f),
            c.path().join("certs").join(f),
        )
        .unwrap();
    }
    let out = c.run(&["get", "-g", "1", "secret"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no data to an outsider");
}
