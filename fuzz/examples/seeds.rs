//! Writes the seed corpora committed under `fuzz/seeds/<target>/`: a few valid inputs per
//! target, so a short fuzzing run starts from the interesting shapes instead of from
//! nothing. Run from the repository's top after a format change:
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds -- fuzz/seeds
//! ```

use std::path::{Path, PathBuf};

use mend_engine::reconcile::{CompareAnswer, CompareAsk, ItemHashes, Located, Width};
use mend_engine::fingerprint::Fingerprint;
use mend_engine::metafile::{MetaHeader, MetaWriter};
use mend_engine::route::{NodeEntry, PartitionRange};
use mend_engine::scrub::ScrubPage;
use mend_engine::store::PutOutcome;
use mend_engine::wire::{
    encode_frame, BatchItem, ErrorKind, RemoteError, Request, Response, PROTOCOL_VERSION,
};
use mend_engine::{Id, IdRange, Record, RouteList, Version};

fn main() {
    let top = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/seeds".into()),
    );
    wire_frame(&top.join("wire_frame"));
    dump_parse(&top.join("dump_parse"));
    metafile(&top.join("metafile_read"));
    metafile_mutate(&top.join("metafile_mutate"));
    plugin_decisions(&top.join("plugin_decisions"));
}

fn put(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn record(n: u8) -> Record {
    Record {
        version: Version::of_value(&[n], 1_700_000_000_000_000_000 + u64::from(n), 0),
        corrupt: n == 3,
    }
}

/// Payloads (the target decodes the input as one) and streams of whole frames (it also
/// reads the input as a stream).
fn wire_frame(dir: &Path) {
    let (a, b) = (Id::from_key(b"a"), Id::from_key(b"b"));
    let route = RouteList {
        name: "c".into(),
        epoch: 3,
        nodes: vec![NodeEntry {
            id: "g1n1".into(),
            group: 1,
            addr: "127.0.0.1:1".into(),
            data_dir: "g1n1".into(),
            partitions: vec![PartitionRange {
                first: 0,
                last: 0xffff,
            }],
        }],
    };
    let requests = [
        Request::Hello {
            protocol: PROTOCOL_VERSION,
        },
        Request::Lookup { ids: vec![a, b] },
        Request::Iterate {
            range: IdRange::partitions(1, 9),
            since: Some(5),
            user_flags: vec![1, 6],
        },
        Request::Fingerprints {
            ranges: vec![IdRange::ALL],
            split: 16,
        },
        Request::Compare {
            tops: vec![
                IdRange::ALL,
                IdRange {
                    start: a,
                    end: Some(b),
                },
            ],
            split: 8,
            asks: vec![
                CompareAsk::Whole(Located {
                    top: 1,
                    path: vec![],
                }),
                CompareAsk::Sums(Located {
                    top: 0,
                    path: vec![3, 7],
                }),
                CompareAsk::Hashes(
                    Located {
                        top: 0,
                        path: vec![3, 7, 1],
                    },
                    Width::Short,
                ),
                CompareAsk::Records(
                    Located {
                        top: 0,
                        path: vec![3, 7, 1],
                    },
                    ItemHashes::Full(vec![[1; 8], [0xff; 8]]),
                ),
            ],
        },
        Request::WriteBatch {
            items: vec![BatchItem {
                id: a,
                version: Version::of_value(b"v", 9, 0),
                value: b"v".to_vec(),
            }],
        },
        Request::Scrub {
            range: IdRange::ALL,
            after: Some(a),
            limit: 10,
        },
        Request::PushRoute {
            route: route.clone(),
        },
    ];
    let mut fp = Fingerprint::EMPTY;
    fp.insert_record(&a, &record(1));
    let responses = [
        Response::Hello {
            protocol: PROTOCOL_VERSION,
            node: "g1n1".into(),
            group: 1,
            epoch: 3,
        },
        Response::RouteList(route),
        Response::Records(vec![Some(record(1)), None]),
        Response::Fingerprints(vec![fp, Fingerprint::EMPTY]),
        Response::Compared(vec![
            CompareAnswer::Fingerprints(vec![fp]),
            CompareAnswer::Sums(vec![[1, 2, 3]; 7]),
            CompareAnswer::Hashes(ItemHashes::Short(vec![[9; 3], [7; 3]])),
            CompareAnswer::Records(vec![(a, record(2)), (b, record(3))]),
        ]),
        Response::BatchWritten(vec![
            PutOutcome::Written,
            PutOutcome::Stale {
                stored: Version::tombstone(4),
            },
        ]),
        Response::Scrubbed(ScrubPage {
            checked: 2,
            bytes: 9,
            newly_corrupt: vec![a],
            already_corrupt: vec![],
            next: Some(b),
        }),
        Response::Error(RemoteError {
            kind: ErrorKind::BadRequest,
            message: "no".into(),
        }),
    ];
    let mut stream = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let frame = encode_frame(r).unwrap();
        put(dir, &format!("request-{i}-{}", r.kind()), &frame[4..]);
        stream.extend_from_slice(&frame);
    }
    put(dir, "request-stream", &stream);
    stream.clear();
    for (i, r) in responses.iter().enumerate() {
        let frame = encode_frame(r).unwrap();
        put(dir, &format!("response-{i}-{}", r.kind()), &frame[4..]);
        stream.extend_from_slice(&frame);
    }
    put(dir, "response-stream", &stream);
}

fn dump_parse(dir: &Path) {
    let (a, b) = (Id::from_key(b"a"), Id::from_key(b"b"));
    put(dir, "one-per-line", format!("{a}\n{b}\n").as_bytes());
    let mixed = format!("{a}  {}\t{a}\r\n\r\n\n{b}", b.to_hex().to_uppercase());
    put(dir, "mixed", mixed.as_bytes());
    put(dir, "malformed", format!("{a}\n{a} 1234\n").as_bytes());
}

fn write_metafile(records: &[(Id, Record)]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m");
    let header = MetaHeader {
        slot: 1,
        group: 2,
        node: "g2n1".into(),
        range: IdRange::partitions(3, 9),
        created_ns: 1_700_000_000_000_000_000,
    };
    let mut w = MetaWriter::create(&path, &header).unwrap();
    for (id, r) in records {
        w.append(id, r).unwrap();
    }
    w.finish().unwrap();
    std::fs::read(&path).unwrap()
}

fn metafile(dir: &Path) {
    let mut records: Vec<(Id, Record)> =
        (0..4u8).map(|n| (Id::from_key(&[n]), record(n))).collect();
    records.sort_by_key(|(id, _)| *id);
    put(dir, "empty", &write_metafile(&[]));
    let full = write_metafile(&records);
    put(dir, "four-records", &full);
    put(dir, "torn", &full[..full.len() - 3]);
}

/// The target reads its input through `arbitrary`, so any bytes are valid: these decode to
/// headers with records and some damage.
fn metafile_mutate(dir: &Path) {
    for (i, len) in [64usize, 300, 1200].into_iter().enumerate() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ len as u64;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        put(dir, &format!("random-{i}"), &bytes);
    }
}

/// A key spec (see the target: replica count, then state and timestamp per replica)
/// followed by a line.
fn plugin_decisions(dir: &Path) {
    let id = Id::from_key(b"fuzz");
    // Three replicas: live at 1, live mergeable at 2, absent.
    let spec = [3u8, 1, 1, 5, 2, 0, 0];
    let lines = [
        format!(
            r#"{{"id":"{id}","actions":[{{"copy":{{"from":1,"to":[0,2]}}}}],"reason":"newest wins"}}"#
        ),
        format!(r#"{{"id":"{id}","actions":[{{"remove":{{"on":[0],"keep":1}}}}]}}"#),
        format!(
            r#"{{"id":"{id}","actions":[{{"merge":{{"sources":[1],"to":[0,2],"value_hex":"6869"}}}}]}}"#
        ),
        format!(
            r#"{{"id":"{id}","actions":[{{"skip":{{}}}},{{"unrecoverable":{{"reason":"x"}}}}]}}"#
        ),
        format!(r#"{{"id":"{id}","actions":[],"reason":"later"}}"#),
        format!(r#"{{"request":"value","id":"{id}","replica":1}}"#),
    ];
    for (i, line) in lines.iter().enumerate() {
        let mut input = spec.to_vec();
        input.extend_from_slice(line.as_bytes());
        put(dir, &format!("line-{i}"), &input);
    }
}
