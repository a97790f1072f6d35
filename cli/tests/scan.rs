//! `mend scan` on real files: a sound metadata file, a torn one, a corrupt one, dump files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mend_engine::metafile::{MetaHeader, MetaWriter};
use mend_engine::{Id, IdRange, Record, Version};

fn mend(args: &[&str], file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mend"))
        .arg("scan")
        .args(args)
        .arg(file)
        .output()
        .expect("run mend scan")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Ids of keys 0..n, sorted as a metadata file holds them.
fn ids(n: usize) -> Vec<Id> {
    let mut ids: Vec<Id> = (0..n)
        .map(|i| Id::from_key(format!("key-{i}").as_bytes()))
        .collect();
    ids.sort();
    ids
}

/// A finished metadata file of `n` records; returns its path and ids.
fn metadata_file(dir: &Path, n: usize) -> (PathBuf, Vec<Id>) {
    let path = dir.join("node-1.meta");
    let header = MetaHeader {
        slot: 1,
        group: 2,
        node: "127.0.0.1:1025".to_string(),
        range: IdRange::ALL,
        created_ns: 42,
    };
    let mut w = MetaWriter::create(&path, &header).unwrap();
    let ids = ids(n);
    for (i, id) in ids.iter().enumerate() {
        let record = Record {
            version: Version::of_value(format!("v{i}").as_bytes(), 1000 + i as u64, 3),
            corrupt: i == 1,
        };
        w.append(id, &record).unwrap();
    }
    assert_eq!(w.finish().unwrap(), n as u64);
    (path, ids)
}

#[test]
fn a_sound_metadata_file_is_described_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let (path, ids) = metadata_file(dir.path(), 5);
    let out = mend(&[], &path);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    for want in [
        "slot     1",
        "group    2",
        "node     127.0.0.1:1025",
        "records  5",
        "status   crc ok",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    assert!(stdout.contains(&format!("first    {}", ids[0])), "{stdout}");
    assert!(stdout.contains(&format!("last     {}", ids[4])), "{stdout}");
}

#[test]
fn json_prints_one_line_per_record_then_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let (path, ids) = metadata_file(dir.path(), 4);
    let out = mend(&["--json"], &path);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 5);
    for (line, id) in lines.iter().zip(&ids) {
        assert_eq!(line["id"], id.to_hex());
        assert_eq!(line["user_flags"], 3);
        assert_eq!(line["flags"], 0);
        assert_eq!(line["checksum"].as_str().unwrap().len(), 64);
        assert!(line["timestamp"].as_u64().unwrap() >= 1000);
        assert!(line["size"].as_u64().is_some());
    }
    assert_eq!(lines[1]["corrupt"], true);
    assert_eq!(lines[0]["corrupt"], false);
    let summary = &lines[4]["summary"];
    assert_eq!(summary["records"], 4);
    assert_eq!(summary["status"], "ok");
    assert_eq!(summary["slot"], 1);
    assert_eq!(summary["first"], ids[0].to_hex());
    assert_eq!(summary["last"], ids[3].to_hex());
}

#[test]
fn a_truncated_metadata_file_is_torn_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = metadata_file(dir.path(), 5);
    let bytes = std::fs::read(&path).unwrap();
    for len in [4, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..len]).unwrap();
        let out = mend(&[], &path);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "cut at {len}: {stdout}");
        assert!(stdout.contains("torn"), "{stdout}");
        assert!(!stdout.contains("crc ok"), "{stdout}");
        assert!(text(&out.stderr).contains(&path.display().to_string()));
    }
}

#[test]
fn a_corrupted_metadata_file_exits_1_naming_the_crc() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = metadata_file(dir.path(), 5);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 30; // inside the last record
    bytes[at] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let out = mend(&[], &path);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("CRC mismatch"), "{stdout}");
    assert!(stdout.contains("records  4"), "{stdout}");

    let out = mend(&["--json"], &path);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["summary"]["status"], "error");
    assert!(last["summary"]["error"].as_str().unwrap().contains("CRC"));
}

#[test]
fn a_dump_file_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ids.dump");
    let ids = ids(3);
    std::fs::write(
        &path,
        format!("{}\n{} {}\n\n{}\n", ids[2], ids[0], ids[1], ids[0]),
    )
    .unwrap();
    let out = mend(&[], &path);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("ids      4 (3 unique)"), "{stdout}");
    assert!(stdout.contains(&format!("first    {}", ids[2])), "{stdout}");
    assert!(stdout.contains(&format!("last     {}", ids[0])), "{stdout}");
}

#[test]
fn a_malformed_dump_file_exits_2_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.dump");
    std::fs::write(&path, format!("{}\nnot-an-id\n", ids(1)[0])).unwrap();
    let out = mend(&[], &path);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:2:", path.display())),
        "{stderr}"
    );
}

#[test]
fn a_missing_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = mend(&[], &dir.path().join("nope"));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("nope"));
}
