//! The conformance suite of the [`Store`] contract: one set of checks every backend must
//! pass ([`MemoryStore`](super::MemoryStore) and [`RedbStore`](super::RedbStore) both run it
//! in `engine/tests/store_conformance.rs`).
//!
//! Each check is a plain function over a fresh, empty `&dyn Store` that panics (with the
//! reason) on the first violation, so it runs from a unit test, an integration test or a
//! property test alike. [`run_all`] runs every check of [`CHECKS`] on fresh stores.
//!
//! [`check_history`] is the model-based law: after any history of writes, uploads,
//! deletes, corruption marks and removals, the store agrees with a plain `BTreeMap` model
//! on every record, on `scan`, and on every partition fingerprint — maintained write by
//! write, and rebuilt from scratch (incremental = rebuilt). The tests drive it with
//! random histories from proptest; this module itself needs no proptest.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::{PutItem, PutOutcome, Store, StoreError, CHUNK_SIZE};
use crate::fingerprint::Fingerprint;
use crate::id::{Id, IdRange};
use crate::version::{Record, Version};

/// A conformance check: runs on a fresh, empty store and panics on a violation.
pub type Check = fn(&dyn Store);

/// Every check, by name, in the order [`run_all`] runs them.
pub const CHECKS: &[(&str, Check)] = &[
    ("put_then_lookup_round_trips", put_then_lookup_round_trips),
    (
        "tombstone_is_a_version_without_value",
        tombstone_is_a_version_without_value,
    ),
    ("stale_write_is_refused", stale_write_is_refused),
    ("newer_write_replaces", newer_write_replaces),
    (
        "corrupt_record_counts_as_absent",
        corrupt_record_counts_as_absent,
    ),
    ("checksum_mismatch_is_refused", checksum_mismatch_is_refused),
    ("batch_items_are_independent", batch_items_are_independent),
    ("scan_pages_in_id_order", scan_pages_in_id_order),
    (
        "multi_chunk_upload_round_trips",
        multi_chunk_upload_round_trips,
    ),
    (
        "upload_longer_than_version_is_refused",
        upload_longer_than_version_is_refused,
    ),
    (
        "dropped_upload_leaves_no_trace",
        dropped_upload_leaves_no_trace,
    ),
    ("reader_sees_a_snapshot", reader_sees_a_snapshot),
    (
        "remove_exact_removes_only_that_version",
        remove_exact_removes_only_that_version,
    ),
    (
        "mark_corrupt_swaps_the_fingerprint_element",
        mark_corrupt_swaps_the_fingerprint_element,
    ),
    (
        "partition_fingerprints_cover_the_range",
        partition_fingerprints_cover_the_range,
    ),
    ("sample_history_matches_model", sample_history_matches_model),
];

/// Runs every check of [`CHECKS`], each on a fresh store from `make`; panics naming the
/// first check that fails.
pub fn run_all(make: &dyn Fn() -> Box<dyn Store>) {
    for (name, check) in CHECKS {
        let store = make();
        if catch_unwind(AssertUnwindSafe(|| check(&*store))).is_err() {
            panic!("store conformance check `{name}` failed on {store:?} (reason above)");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

/// A deterministic id in `partition`, the `n`th one.
fn id_in(partition: u16, n: u8) -> Id {
    let mut id = Id::from_key(&[n, 0x6d, 0x65, 0x6e, 0x64]);
    id.0[..2].copy_from_slice(&partition.to_be_bytes());
    id
}

/// `len` deterministic pseudo-random bytes.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// What `lookup` returns for a record.
fn held(corrupt: bool, version: Version) -> Option<Record> {
    Some(Record { version, corrupt })
}

fn put(store: &dyn Store, id: Id, version: Version, value: &[u8]) -> PutOutcome {
    let outcomes = store
        .put_batch(&[PutItem { id, version, value }])
        .expect("put_batch");
    assert_eq!(outcomes.len(), 1, "one outcome per item");
    outcomes[0]
}

fn put_value(store: &dyn Store, id: Id, value: &[u8], timestamp: u64) -> Version {
    let version = Version::of_value(value, timestamp, 0);
    assert_eq!(put(store, id, version, value), PutOutcome::Written);
    version
}

/// Uploads `value` in pieces of `piece` bytes and commits.
fn upload(store: &dyn Store, id: Id, version: Version, value: &[u8], piece: usize) -> PutOutcome {
    let mut up = store.begin_upload(id, version).expect("begin_upload");
    for part in value.chunks(piece.max(1)) {
        up.write(part).expect("upload write");
    }
    up.commit().expect("upload commit")
}

/// Reads the whole value of `id`, checking the chunking rules on the way.
fn read_value(store: &dyn Store, id: &Id) -> Option<(Version, Vec<u8>)> {
    let mut reader = store.open_value(id).expect("open_value")?;
    let version = reader.version();
    let mut value = Vec::new();
    while let Some(chunk) = reader.next_chunk().expect("next_chunk") {
        assert!(!chunk.is_empty(), "a reader yields no empty chunk");
        assert!(chunk.len() <= CHUNK_SIZE, "chunk of {} bytes", chunk.len());
        value.extend_from_slice(&chunk);
        assert!(
            value.len() as u64 <= version.size,
            "more bytes than the version says"
        );
    }
    assert_eq!(reader.next_chunk().expect("next_chunk after the end"), None);
    Some((version, value))
}

fn fingerprint_of(store: &dyn Store, partition: u16) -> Fingerprint {
    let fps = store
        .partition_fingerprints(partition, partition)
        .expect("partition_fingerprints");
    assert_eq!(fps.len(), 1);
    fps[0]
}

fn scan_all(store: &dyn Store, range: &IdRange) -> Vec<(Id, Record)> {
    store.scan(range, None, usize::MAX).expect("scan")
}

/// Scans `range` in pages of `page` records, following `after`.
fn scan_paged(store: &dyn Store, range: &IdRange, page: usize) -> Vec<(Id, Record)> {
    let mut out: Vec<(Id, Record)> = Vec::new();
    loop {
        let after = out.last().map(|(id, _)| *id);
        let batch = store.scan(range, after.as_ref(), page).expect("scan page");
        assert!(batch.len() <= page, "scan returned more than its limit");
        let done = batch.len() < page;
        out.extend(batch);
        if done {
            return out;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Checks

/// A written value reads back whole, with its version, and enters its partition's
/// fingerprint; an empty value and a multi-chunk value too.
pub fn put_then_lookup_round_trips(store: &dyn Store) {
    let a = id_in(1, 0);
    assert_eq!(store.lookup(&a).expect("lookup"), None);
    assert!(store.open_value(&a).expect("open_value").is_none());

    let value = bytes(1, 1000);
    let v = Version::of_value(&value, 10, 7);
    assert_eq!(put(store, a, v, &value), PutOutcome::Written);
    assert_eq!(store.lookup(&a).expect("lookup"), held(false, v));
    assert_eq!(read_value(store, &a), Some((v, value)));
    assert_eq!(fingerprint_of(store, 1), Fingerprint::of([(&a, &v)]));

    let empty = id_in(1, 1);
    let ev = put_value(store, empty, b"", 3);
    assert_eq!(read_value(store, &empty), Some((ev, Vec::new())));
    assert_eq!(
        fingerprint_of(store, 1),
        Fingerprint::of([(&a, &v), (&empty, &ev)])
    );

    let big = id_in(2, 0);
    let value = bytes(2, 2 * CHUNK_SIZE + 10);
    let bv = put_value(store, big, &value, 5);
    // read_value checks the chunks: none empty, none over CHUNK_SIZE, no more bytes than the
    // version says. Where a store cuts them is its own choice.
    assert_eq!(read_value(store, &big), Some((bv, value)));
}

/// A delete is a version without value: stored, read back with zero chunks, counted in the
/// fingerprint, and it wins at equal timestamp.
pub fn tombstone_is_a_version_without_value(store: &dyn Store) {
    let a = id_in(3, 0);
    let v = put_value(store, a, b"hello", 10);
    let dead = Version::tombstone(20);
    assert_eq!(put(store, a, dead, b""), PutOutcome::Written);
    assert_eq!(store.lookup(&a).expect("lookup"), held(false, dead));
    assert_eq!(read_value(store, &a), Some((dead, Vec::new())));
    assert_eq!(fingerprint_of(store, 3), Fingerprint::of([(&a, &dead)]));

    // A deleted key is never resurrected by an older write.
    assert_eq!(
        put(store, a, v, b"hello"),
        PutOutcome::Stale { stored: dead }
    );
    let older = Version::of_value(b"again", 15, 0);
    assert_eq!(
        put(store, a, older, b"again"),
        PutOutcome::Stale { stored: dead }
    );

    // At equal timestamp the delete wins.
    let b = id_in(3, 1);
    put_value(store, b, b"x", 30);
    assert_eq!(
        put(store, b, Version::tombstone(30), b""),
        PutOutcome::Written
    );
    assert_eq!(
        put(store, b, Version::of_value(b"y", 30, 0), b"y"),
        PutOutcome::Stale {
            stored: Version::tombstone(30)
        }
    );

    // A delete of a key never seen is stored, so it propagates.
    let c = id_in(3, 2);
    assert_eq!(
        put(store, c, Version::tombstone(5), b""),
        PutOutcome::Written
    );
    assert_eq!(
        store.lookup(&c).expect("lookup"),
        held(false, Version::tombstone(5))
    );

    // A tombstone carries no value.
    let d = id_in(3, 3);
    assert_eq!(
        put(store, d, Version::tombstone(5), b"x"),
        PutOutcome::ChecksumMismatch
    );
    let mut forged = Version::of_value(b"x", 5, 0);
    forged.flags |= crate::version::FLAG_TOMBSTONE;
    assert_eq!(put(store, d, forged, b"x"), PutOutcome::ChecksumMismatch);
    assert_eq!(store.lookup(&d).expect("lookup"), None);

    // A tombstone through an upload: no bytes at all.
    let e = id_in(3, 4);
    assert_eq!(
        upload(store, e, Version::tombstone(9), b"", 1),
        PutOutcome::Written
    );
    assert_eq!(
        read_value(store, &e),
        Some((Version::tombstone(9), Vec::new()))
    );
}

/// A write whose version is older than, or equal to, the stored one is refused with the
/// stored version, through a batch and through an upload, and changes nothing.
pub fn stale_write_is_refused(store: &dyn Store) {
    let a = id_in(4, 0);
    let value = bytes(4, 300);
    let v2 = put_value(store, a, &value, 20);
    let fp = fingerprint_of(store, 4);
    let stale = PutOutcome::Stale { stored: v2 };

    let v1 = Version::of_value(b"old", 10, 0);
    assert_eq!(put(store, a, v1, b"old"), stale);
    assert_eq!(put(store, a, v2, &value), stale);
    assert_eq!(upload(store, a, v1, b"old", 2), stale);
    assert_eq!(upload(store, a, v2, &value, 7), stale);
    // Stale wins over a bad value: the writer learns the store holds something newer.
    assert_eq!(put(store, a, v1, b"not the value"), stale);

    assert_eq!(store.lookup(&a).expect("lookup"), held(false, v2));
    assert_eq!(read_value(store, &a), Some((v2, value)));
    assert_eq!(fingerprint_of(store, 4), fp);
}

/// A strictly newer version replaces the stored one (larger timestamp, or at equal
/// timestamp the larger checksum), through a batch and through an upload.
pub fn newer_write_replaces(store: &dyn Store) {
    let a = id_in(5, 0);
    put_value(store, a, b"first", 10);
    let v2 = put_value(store, a, b"second", 11);
    assert_eq!(store.lookup(&a).expect("lookup"), held(false, v2));
    assert_eq!(read_value(store, &a), Some((v2, b"second".to_vec())));
    assert_eq!(fingerprint_of(store, 5), Fingerprint::of([(&a, &v2)]));

    let big = bytes(5, CHUNK_SIZE + 1);
    let v3 = Version::of_value(&big, 12, 0);
    assert_eq!(upload(store, a, v3, &big, 4096), PutOutcome::Written);
    assert_eq!(read_value(store, &a), Some((v3, big)));
    let v4 = put_value(store, a, b"small again", 13);
    assert_eq!(read_value(store, &a), Some((v4, b"small again".to_vec())));
    assert_eq!(fingerprint_of(store, 5), Fingerprint::of([(&a, &v4)]));

    // Equal timestamps: the larger checksum wins, whichever arrives first.
    let b = id_in(5, 1);
    let (x, y) = (
        Version::of_value(b"x", 50, 0),
        Version::of_value(b"y", 50, 0),
    );
    let (low, high, low_value, high_value): (_, _, &[u8], &[u8]) =
        if x.newest_cmp(&y) == Ordering::Less {
            (x, y, b"x", b"y")
        } else {
            (y, x, b"y", b"x")
        };
    assert_eq!(put(store, b, low, low_value), PutOutcome::Written);
    assert_eq!(put(store, b, high, high_value), PutOutcome::Written);
    assert_eq!(
        put(store, b, low, low_value),
        PutOutcome::Stale { stored: high }
    );
}

/// A record marked corrupt counts as absent ("corrupt never wins"): the same version from
/// a healthy replica repairs it, and so does an older one (the corrupt value is lost; the
/// newest healthy version elsewhere must be able to take its place).
pub fn corrupt_record_counts_as_absent(store: &dyn Store) {
    let a = id_in(6, 0);
    let value = bytes(6, 2000);
    let v = put_value(store, a, &value, 10);
    assert!(store.mark_corrupt(&a, &v).expect("mark_corrupt"));
    assert_eq!(store.lookup(&a).expect("lookup"), held(true, v));
    assert_eq!(fingerprint_of(store, 6), corrupt_fingerprint(&a, v));

    let older = Version::of_value(b"older", 9, 0);
    assert_eq!(put(store, a, older, b"older"), PutOutcome::Written);
    assert_eq!(store.lookup(&a).expect("lookup"), held(false, older));
    assert_eq!(fingerprint_of(store, 6), Fingerprint::of([(&a, &older)]));
    // Healthy again: the newer version replaces it as usual; then corrupt it once more and
    // repair it with the same version.
    assert_eq!(put(store, a, v, &value), PutOutcome::Written);
    assert!(store.mark_corrupt(&a, &v).expect("mark_corrupt"));
    assert_eq!(put(store, a, v, &value), PutOutcome::Written);
    assert_eq!(store.lookup(&a).expect("lookup"), held(false, v));
    assert_eq!(read_value(store, &a), Some((v, value.clone())));
    assert_eq!(fingerprint_of(store, 6), Fingerprint::of([(&a, &v)]));
    // Healthy again: the same version is stale once more.
    assert_eq!(put(store, a, v, &value), PutOutcome::Stale { stored: v });

    // Repair through an upload, of a multi-chunk value.
    let b = id_in(6, 1);
    let big = bytes(61, CHUNK_SIZE + 77);
    let bv = put_value(store, b, &big, 10);
    assert!(store.mark_corrupt(&b, &bv).expect("mark_corrupt"));
    assert_eq!(upload(store, b, bv, &big, 100_000), PutOutcome::Written);
    assert_eq!(store.lookup(&b).expect("lookup"), held(false, bv));
    assert_eq!(read_value(store, &b), Some((bv, big)));

    // A newer version replaces a corrupt one.
    let c = id_in(6, 2);
    let cv = put_value(store, c, b"c", 10);
    assert!(store.mark_corrupt(&c, &cv).expect("mark_corrupt"));
    let cv2 = put_value(store, c, b"c2", 11);
    assert_eq!(store.lookup(&c).expect("lookup"), held(false, cv2));
    assert_eq!(
        fingerprint_of(store, 6),
        Fingerprint::of([(&a, &v), (&b, &bv), (&c, &cv2)])
    );
}

/// A value that does not match its version's size or checksum is refused and stores
/// nothing, through a batch and through an upload.
pub fn checksum_mismatch_is_refused(store: &dyn Store) {
    let a = id_in(7, 0);
    let v = Version::of_value(b"right", 10, 0);
    assert_eq!(put(store, a, v, b"wrong"), PutOutcome::ChecksumMismatch);
    assert_eq!(put(store, a, v, b"right!"), PutOutcome::ChecksumMismatch);
    assert_eq!(put(store, a, v, b"righ"), PutOutcome::ChecksumMismatch);
    assert_eq!(put(store, a, v, b""), PutOutcome::ChecksumMismatch);
    assert_eq!(
        upload(store, a, v, b"wrong", 2),
        PutOutcome::ChecksumMismatch
    );
    assert_eq!(upload(store, a, v, b"rig", 2), PutOutcome::ChecksumMismatch);
    assert_eq!(store.lookup(&a).expect("lookup"), None);
    assert!(store.open_value(&a).expect("open_value").is_none());
    assert_eq!(fingerprint_of(store, 7), Fingerprint::EMPTY);

    // A bad newer value leaves the stored one alone.
    let stored = put_value(store, a, b"right", 10);
    let newer = Version::of_value(b"newer", 11, 0);
    assert_eq!(put(store, a, newer, b"bogus"), PutOutcome::ChecksumMismatch);
    let big = bytes(7, 2 * CHUNK_SIZE + 3);
    let big_v = Version::of_value(&big, 12, 0);
    let mut bad = big.clone();
    bad[CHUNK_SIZE + 5] ^= 1;
    assert_eq!(
        upload(store, a, big_v, &bad, 300_000),
        PutOutcome::ChecksumMismatch
    );
    assert_eq!(store.lookup(&a).expect("lookup"), held(false, stored));
    assert_eq!(read_value(store, &a), Some((stored, b"right".to_vec())));
    assert_eq!(fingerprint_of(store, 7), Fingerprint::of([(&a, &stored)]));
    // The refused upload left nothing that blocks the right bytes.
    assert_eq!(upload(store, a, big_v, &big, 300_000), PutOutcome::Written);
    assert_eq!(read_value(store, &a), Some((big_v, big)));
}

/// Items of one batch are decided one by one, in order: a refused item does not affect the
/// others, and a later item sees an earlier one of the same id.
pub fn batch_items_are_independent(store: &dyn Store) {
    let (a, b, c, d) = (id_in(8, 0), id_in(8, 1), id_in(9, 0), id_in(9, 1));
    let c_stored = put_value(store, c, b"c-new", 20);

    let a1 = Version::of_value(b"a1", 1, 0);
    let a2 = Version::of_value(b"a2", 2, 0);
    let b1 = Version::of_value(b"b1", 1, 0);
    let c_old = Version::of_value(b"c-old", 10, 0);
    let d1 = Version::tombstone(4);
    let items = [
        PutItem {
            id: a,
            version: a1,
            value: b"a1",
        },
        PutItem {
            id: b,
            version: b1,
            value: b"xx",
        },
        PutItem {
            id: c,
            version: c_old,
            value: b"c-old",
        },
        PutItem {
            id: d,
            version: d1,
            value: b"",
        },
        PutItem {
            id: a,
            version: a2,
            value: b"a2",
        },
        PutItem {
            id: a,
            version: a1,
            value: b"a1",
        },
    ];
    let outcomes = store.put_batch(&items).expect("put_batch");
    assert_eq!(
        outcomes,
        vec![
            PutOutcome::Written,
            PutOutcome::ChecksumMismatch,
            PutOutcome::Stale { stored: c_stored },
            PutOutcome::Written,
            PutOutcome::Written,
            PutOutcome::Stale { stored: a2 },
        ]
    );
    assert_eq!(store.lookup(&a).expect("lookup"), held(false, a2));
    assert_eq!(read_value(store, &a), Some((a2, b"a2".to_vec())));
    assert_eq!(store.lookup(&b).expect("lookup"), None);
    assert_eq!(store.lookup(&c).expect("lookup"), held(false, c_stored));
    assert_eq!(store.lookup(&d).expect("lookup"), held(false, d1));
    assert_eq!(fingerprint_of(store, 8), Fingerprint::of([(&a, &a2)]));
    assert_eq!(
        fingerprint_of(store, 9),
        Fingerprint::of([(&c, &c_stored), (&d, &d1)])
    );
    assert_eq!(store.put_batch(&[]).expect("empty batch"), Vec::new());
}

/// `scan` returns records (corrupt ones included, flagged) in id order, within the range
/// (end excluded), after `after`, at most `limit` of them; paging with `after` sees each
/// record once.
pub fn scan_pages_in_id_order(store: &dyn Store) {
    let mut expected: BTreeMap<Id, Record> = BTreeMap::new();
    for (partition, n) in [(0u16, 5u8), (1, 7), (2, 3), (0x8000, 4), (0xffff, 6)] {
        for i in 0..n {
            let id = id_in(partition, i);
            let version = if i == 1 {
                let dead = Version::tombstone(u64::from(i));
                assert_eq!(put(store, id, dead, b""), PutOutcome::Written);
                dead
            } else {
                put_value(store, id, &[i, n], u64::from(i) + 1)
            };
            let corrupt = i == 2;
            if corrupt {
                assert!(store.mark_corrupt(&id, &version).expect("mark_corrupt"));
            }
            expected.insert(id, Record { version, corrupt });
        }
    }
    // The extremes of the id space.
    for id in [Id::MIN, Id::MAX] {
        let version = put_value(store, id, b"edge", 1);
        expected.insert(
            id,
            Record {
                version,
                corrupt: false,
            },
        );
    }
    let all: Vec<(Id, Record)> = expected.iter().map(|(i, r)| (*i, *r)).collect();
    let in_range = |range: &IdRange| -> Vec<(Id, Record)> {
        all.iter()
            .filter(|(id, _)| range.contains(id))
            .copied()
            .collect()
    };

    assert_eq!(scan_all(store, &IdRange::ALL), all);
    for page in [1, 4, 7, 1000] {
        assert_eq!(
            scan_paged(store, &IdRange::ALL, page),
            all,
            "pages of {page}"
        );
    }

    let ranges = [
        IdRange::partitions(1, 2),
        IdRange::partitions(0xffff, 0xffff),
        IdRange::partitions(3, 0x7fff),
        // Starts and ends exactly on stored ids: start included, end excluded.
        IdRange {
            start: id_in(1, 3),
            end: Some(id_in(0x8000, 2)),
        },
        IdRange {
            start: id_in(2, 1),
            end: None,
        },
    ];
    for range in &ranges {
        let want = in_range(range);
        assert_eq!(scan_all(store, range), want, "range {range:?}");
        assert_eq!(
            scan_paged(store, range, 2),
            want,
            "range {range:?} in pages"
        );
    }
    let r = &ranges[3];
    assert_eq!(
        scan_all(store, r).first().map(|(i, _)| *i),
        Some(id_in(1, 3))
    );
    assert!(scan_all(store, r)
        .iter()
        .all(|(i, _)| *i != id_in(0x8000, 2)));

    // `after` before the range starts at the range; at the end, nothing.
    let p1 = IdRange::partitions(1, 1);
    assert_eq!(
        store.scan(&p1, Some(&Id::MIN), 100).expect("scan"),
        in_range(&p1)
    );
    assert_eq!(
        store.scan(&IdRange::ALL, Some(&Id::MAX), 10).expect("scan"),
        Vec::new()
    );
    assert_eq!(
        store.scan(&IdRange::ALL, None, 0).expect("scan"),
        Vec::new()
    );
    let empty = IdRange {
        start: id_in(2, 0),
        end: Some(id_in(2, 0)),
    };
    assert_eq!(store.scan(&empty, None, 10).expect("scan"), Vec::new());
    let backwards = IdRange {
        start: Id::MAX,
        end: Some(Id::MIN),
    };
    assert_eq!(store.scan(&backwards, None, 10).expect("scan"), Vec::new());
}

/// A value larger than a chunk, uploaded in pieces that do not line up with chunks, reads
/// back equal.
pub fn multi_chunk_upload_round_trips(store: &dyn Store) {
    let a = id_in(10, 0);
    let value = bytes(10, 3 * CHUNK_SIZE + CHUNK_SIZE / 2);
    let v = Version::of_value(&value, 10, 3);
    assert_eq!(upload(store, a, v, &value, 777_777), PutOutcome::Written);
    assert_eq!(store.lookup(&a).expect("lookup"), held(false, v));
    let reader = store.open_value(&a).expect("open_value").expect("stored");
    assert_eq!(reader.version(), v);
    drop(reader);
    assert!(
        read_value(store, &a) == Some((v, value)),
        "value read back differs"
    );
    assert_eq!(fingerprint_of(store, 10), Fingerprint::of([(&a, &v)]));

    // Exactly two chunks, written chunk by chunk, then in one call.
    for (b, piece) in [(id_in(10, 1), CHUNK_SIZE), (id_in(10, 2), 2 * CHUNK_SIZE)] {
        let value = bytes(11, 2 * CHUNK_SIZE);
        let v = Version::of_value(&value, 10, 0);
        assert_eq!(upload(store, b, v, &value, piece), PutOutcome::Written);
        assert_eq!(read_value(store, &b), Some((v, value)));
    }

    // Many tiny writes, and an empty value with no write at all.
    let c = id_in(10, 3);
    let small = bytes(12, 1000);
    let cv = Version::of_value(&small, 1, 0);
    assert_eq!(upload(store, c, cv, &small, 3), PutOutcome::Written);
    assert_eq!(read_value(store, &c), Some((cv, small)));
    let e = id_in(10, 4);
    let ev = Version::of_value(b"", 1, 0);
    assert_eq!(upload(store, e, ev, b"", 1), PutOutcome::Written);
    assert_eq!(read_value(store, &e), Some((ev, Vec::new())));
}

/// An upload refuses bytes past its version's size, and storing nothing.
pub fn upload_longer_than_version_is_refused(store: &dyn Store) {
    let a = id_in(11, 0);
    let v = Version::of_value(b"0123456789", 10, 0);
    let mut up = store.begin_upload(a, v).expect("begin_upload");
    up.write(b"012345").expect("within the size");
    match up.write(b"6789ab") {
        Err(StoreError::TooLong { id, size }) => {
            assert_eq!(id, a);
            assert_eq!(size, 10);
        }
        other => panic!("expected TooLong, got {other:?}"),
    }
    drop(up);
    assert_eq!(store.lookup(&a).expect("lookup"), None);

    let mut up = store.begin_upload(a, v).expect("begin_upload");
    let big = bytes(11, CHUNK_SIZE + 1);
    assert!(matches!(up.write(&big), Err(StoreError::TooLong { .. })));
    drop(up);
    assert_eq!(store.lookup(&a).expect("lookup"), None);
    assert_eq!(upload(store, a, v, b"0123456789", 4), PutOutcome::Written);
}

/// Dropping an upload before commit leaves the store as it was: the old version, its value
/// and its fingerprint; a later upload of the same id still works.
pub fn dropped_upload_leaves_no_trace(store: &dyn Store) {
    let a = id_in(12, 0);
    let v1 = put_value(store, a, b"keep me", 10);
    let fp = fingerprint_of(store, 12);

    let big = bytes(12, 2 * CHUNK_SIZE + CHUNK_SIZE / 2);
    let v2 = Version::of_value(&big, 11, 0);
    let mut up = store.begin_upload(a, v2).expect("begin_upload");
    up.write(&big[..2 * CHUNK_SIZE + 10]).expect("upload write");
    drop(up);
    assert_eq!(store.lookup(&a).expect("lookup"), held(false, v1));
    assert_eq!(read_value(store, &a), Some((v1, b"keep me".to_vec())));
    assert_eq!(fingerprint_of(store, 12), fp);

    let fresh = id_in(12, 1);
    let mut up = store.begin_upload(fresh, v2).expect("begin_upload");
    up.write(&big[..CHUNK_SIZE + 1]).expect("upload write");
    drop(up);
    let nothing = store.begin_upload(fresh, v2).expect("begin_upload");
    drop(nothing);
    assert_eq!(store.lookup(&fresh).expect("lookup"), None);
    assert_eq!(
        scan_all(store, &IdRange::ALL),
        vec![(
            a,
            Record {
                version: v1,
                corrupt: false
            }
        )]
    );
    assert_eq!(fingerprint_of(store, 12), fp);

    assert_eq!(upload(store, a, v2, &big, 500_000), PutOutcome::Written);
    assert_eq!(read_value(store, &a), Some((v2, big)));
}

/// A reader keeps reading the value it opened while a newer version replaces it, and while
/// the record is removed.
pub fn reader_sees_a_snapshot(store: &dyn Store) {
    let a = id_in(13, 0);
    let old = bytes(13, 2 * CHUNK_SIZE + 100);
    let v1 = put_value(store, a, &old, 10);
    let mut reader = store.open_value(&a).expect("open_value").expect("stored");
    let mut read = reader
        .next_chunk()
        .expect("next_chunk")
        .expect("first chunk");

    let new = bytes(14, 3 * CHUNK_SIZE);
    let v2 = put_value(store, a, &new, 11);
    while let Some(chunk) = reader.next_chunk().expect("next_chunk") {
        read.extend_from_slice(&chunk);
    }
    assert_eq!(reader.version(), v1);
    assert!(
        read == old,
        "the reader saw another value than the one it opened"
    );
    assert_eq!(read_value(store, &a), Some((v2, new.clone())));

    let mut reader = store.open_value(&a).expect("open_value").expect("stored");
    assert!(store.remove_exact(&a, &v2).expect("remove_exact"));
    let mut read = Vec::new();
    while let Some(chunk) = reader.next_chunk().expect("next_chunk") {
        read.extend_from_slice(&chunk);
    }
    assert!(read == new, "the reader lost its value to a removal");
    assert!(store.open_value(&a).expect("open_value").is_none());
}

/// `remove_exact` removes a record only when it holds exactly that version, with its
/// value and fingerprint contribution; corrupt records too.
pub fn remove_exact_removes_only_that_version(store: &dyn Store) {
    let (a, b) = (id_in(14, 0), id_in(14, 1));
    let v2 = put_value(store, a, &bytes(14, CHUNK_SIZE + 5), 20);
    let bv = put_value(store, b, b"neighbour", 20);
    let v1 = Version::of_value(b"older", 10, 0);
    let v3 = Version::of_value(b"newer", 30, 0);
    assert!(!store.remove_exact(&a, &v1).expect("remove_exact"));
    assert!(!store.remove_exact(&a, &v3).expect("remove_exact"));
    assert!(!store
        .remove_exact(&a, &Version::tombstone(20))
        .expect("remove_exact"));
    assert_eq!(store.lookup(&a).expect("lookup"), held(false, v2));

    assert!(store.remove_exact(&a, &v2).expect("remove_exact"));
    assert_eq!(store.lookup(&a).expect("lookup"), None);
    assert!(store.open_value(&a).expect("open_value").is_none());
    assert_eq!(fingerprint_of(store, 14), Fingerprint::of([(&b, &bv)]));
    assert!(!store.remove_exact(&a, &v2).expect("remove_exact again"));
    assert!(!store
        .remove_exact(&id_in(14, 9), &v2)
        .expect("remove_exact absent"));

    // Once removed, an older version is welcome again (the removal was of a misplaced copy).
    assert_eq!(put(store, a, v1, b"older"), PutOutcome::Written);

    // A corrupt record is removed with its (corrupt) element.
    assert!(store.mark_corrupt(&b, &bv).expect("mark_corrupt"));
    assert!(store.remove_exact(&b, &bv).expect("remove_exact corrupt"));
    assert_eq!(fingerprint_of(store, 14), Fingerprint::of([(&a, &v1)]));

    // Tombstones are removed the same way.
    let t = Version::tombstone(40);
    assert_eq!(put(store, a, t, b""), PutOutcome::Written);
    assert!(store.remove_exact(&a, &t).expect("remove_exact tombstone"));
    assert_eq!(fingerprint_of(store, 14), Fingerprint::EMPTY);
    assert_eq!(scan_all(store, &IdRange::ALL), Vec::new());
}

/// The fingerprint of one record marked corrupt.
fn corrupt_fingerprint(id: &Id, version: Version) -> Fingerprint {
    let mut fp = Fingerprint::EMPTY;
    fp.insert_record(
        id,
        &Record {
            version,
            corrupt: true,
        },
    );
    fp
}

/// `mark_corrupt` marks only the exact version, swaps its healthy element in its
/// partition's fingerprint for the corrupt one (maintained and rebuilt alike), and keeps
/// the record and its value.
pub fn mark_corrupt_swaps_the_fingerprint_element(store: &dyn Store) {
    let (a, b) = (id_in(15, 0), id_in(15, 1));
    let value = bytes(15, 4000);
    let av = put_value(store, a, &value, 10);
    let bv = put_value(store, b, b"b", 10);
    assert_eq!(
        fingerprint_of(store, 15),
        Fingerprint::of([(&a, &av), (&b, &bv)])
    );

    let other = Version::of_value(b"other", 10, 0);
    assert!(!store
        .mark_corrupt(&a, &other)
        .expect("mark_corrupt other version"));
    assert!(!store
        .mark_corrupt(&id_in(15, 9), &av)
        .expect("mark_corrupt absent"));
    assert_eq!(store.lookup(&a).expect("lookup"), held(false, av));

    assert!(store.mark_corrupt(&a, &av).expect("mark_corrupt"));
    assert_eq!(store.lookup(&a).expect("lookup"), held(true, av));
    let mut want = Fingerprint::of([(&b, &bv)]);
    want.add(&corrupt_fingerprint(&a, av));
    assert_eq!(fingerprint_of(store, 15), want);
    assert_ne!(want, Fingerprint::of([(&a, &av), (&b, &bv)]));
    assert_ne!(want, Fingerprint::of([(&b, &bv)]));
    // Marking twice changes nothing.
    assert!(store.mark_corrupt(&a, &av).expect("mark_corrupt again"));
    assert_eq!(fingerprint_of(store, 15), want);
    store.rebuild_fingerprints().expect("rebuild");
    assert_eq!(fingerprint_of(store, 15), want);

    // The record stays, flagged, for scan and for scrub to read.
    assert_eq!(scan_all(store, &IdRange::partitions(15, 15)), {
        let mut want = vec![
            (
                a,
                Record {
                    version: av,
                    corrupt: true,
                },
            ),
            (
                b,
                Record {
                    version: bv,
                    corrupt: false,
                },
            ),
        ];
        want.sort_by_key(|(id, _)| *id);
        want
    });
    assert_eq!(read_value(store, &a), Some((av, value)));

    // Both marked: the partition holds only corrupt elements, and differs from empty.
    assert!(store.mark_corrupt(&b, &bv).expect("mark_corrupt"));
    let mut both = corrupt_fingerprint(&a, av);
    both.add(&corrupt_fingerprint(&b, bv));
    assert_eq!(fingerprint_of(store, 15), both);
    assert_ne!(both, Fingerprint::EMPTY);
}

/// `partition_fingerprints(first, last)` has one entry per partition of `first..=last`, in
/// order, EMPTY where nothing is stored; their sum is the fingerprint of everything.
pub fn partition_fingerprints_cover_the_range(store: &dyn Store) {
    let all = store
        .partition_fingerprints(0, u16::MAX)
        .expect("partition_fingerprints");
    assert_eq!(all.len(), 1 << 16);
    assert!(all.iter().all(|fp| *fp == Fingerprint::EMPTY));
    assert_eq!(
        store.partition_fingerprints(7, 7).expect("one"),
        vec![Fingerprint::EMPTY]
    );
    assert_eq!(
        store.partition_fingerprints(8, 7).expect("none"),
        Vec::new()
    );

    let mut items = Vec::new();
    for (partition, n) in [(0u16, 0u8), (0, 1), (300, 0), (0xfffe, 0), (0xffff, 0)] {
        let id = id_in(partition, n);
        let v = put_value(store, id, &[n], u64::from(partition));
        items.push((id, v));
    }
    let all = store
        .partition_fingerprints(0, u16::MAX)
        .expect("partition_fingerprints");
    assert_eq!(all.len(), 1 << 16);
    for (p, fp) in all.iter().enumerate() {
        let want = Fingerprint::of(
            items
                .iter()
                .filter(|(id, _)| usize::from(id.partition()) == p)
                .map(|(i, v)| (i, v)),
        );
        assert_eq!(*fp, want, "partition {p}");
    }
    let mut sum = Fingerprint::EMPTY;
    for fp in &all {
        sum.add(fp);
    }
    assert_eq!(sum, Fingerprint::of(items.iter().map(|(i, v)| (i, v))));
    assert_eq!(
        store.partition_fingerprints(299, 301).expect("middle"),
        vec![Fingerprint::EMPTY, all[300], Fingerprint::EMPTY]
    );
    assert_eq!(
        store.partition_fingerprints(0xfffe, 0xffff).expect("end"),
        vec![all[0xfffe], all[0xffff]]
    );
}

/// A fixed history through [`check_history`], so `run_all` covers the model law without
/// proptest.
pub fn sample_history_matches_model(store: &dyn Store) {
    let w = |key, timestamp, tombstone, seed| Write {
        key,
        timestamp,
        tombstone,
        seed,
        bad_value: false,
    };
    let history = vec![
        Op::Put(w(0, 1, false, 1)),
        Op::Put(w(1, 1, false, 2)),
        Op::Batch(vec![
            w(2, 3, false, 3),
            w(0, 2, false, 0),
            w(0, 2, true, 0),
            w(6, 1, false, 1),
        ]),
        Op::MarkCorrupt {
            key: 1,
            exact: true,
        },
        Op::Upload(w(1, 1, false, 2)),
        Op::MarkCorrupt {
            key: 2,
            exact: false,
        },
        Op::AbandonUpload(w(2, 9, false, 3)),
        Op::RemoveExact {
            key: 6,
            exact: true,
        },
        Op::Put(Write {
            bad_value: true,
            ..w(3, 1, false, 3)
        }),
        Op::Upload(Write {
            bad_value: true,
            ..w(4, 1, false, 1)
        }),
        Op::Upload(Write {
            bad_value: true,
            ..w(4, 1, false, 0)
        }),
        Op::RebuildFingerprints,
        Op::Put(w(5, 4, true, 0)),
        Op::Put(w(0, 1, false, 1)),
        Op::RemoveExact {
            key: 5,
            exact: false,
        },
        Op::MarkCorrupt {
            key: 0,
            exact: true,
        },
        Op::Put(w(0, 2, true, 0)),
    ];
    check_history(store, &history);
}

// ---------------------------------------------------------------------------------------
// The model law

/// Keys of a history are taken modulo this: few keys, so writes collide.
pub const HISTORY_KEYS: u8 = 12;

/// The partitions history keys fall in (`key % 6`): several keys per partition, and both
/// ends of the partition space.
const HISTORY_PARTITIONS: [u16; 6] = [0, 0, 1, 0x8000, 0xfffe, 0xffff];

/// One write of a history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Write {
    /// Which id (modulo [`HISTORY_KEYS`]).
    pub key: u8,
    /// The version's timestamp; keep the range small so versions tie.
    pub timestamp: u64,
    /// A delete instead of a value.
    pub tombstone: bool,
    /// Picks the value (and so the checksum); keep the range small so versions repeat.
    pub seed: u8,
    /// Send bytes that do not match the version (for an upload of an empty value this
    /// means one byte too many: the upload must refuse it as too long).
    pub bad_value: bool,
}

/// One step of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// One write through `put_batch`.
    Put(Write),
    /// Several writes in one `put_batch`.
    Batch(Vec<Write>),
    /// One write through an upload, in small pieces.
    Upload(Write),
    /// An upload that writes part of its value and is dropped.
    AbandonUpload(Write),
    /// `mark_corrupt` with the held version (`exact`) or one the store does not hold.
    MarkCorrupt {
        /// Which id.
        key: u8,
        /// Whether to name the version the store holds.
        exact: bool,
    },
    /// `remove_exact` with the held version (`exact`) or one the store does not hold.
    RemoveExact {
        /// Which id.
        key: u8,
        /// Whether to name the version the store holds.
        exact: bool,
    },
    /// `rebuild_fingerprints` in the middle of the history.
    RebuildFingerprints,
}

/// The id of history key `key`.
pub fn history_id(key: u8) -> Id {
    let key = key % HISTORY_KEYS;
    id_in(
        HISTORY_PARTITIONS[usize::from(key) % HISTORY_PARTITIONS.len()],
        key,
    )
}

impl Write {
    /// The version this write carries and the bytes it sends.
    fn version_and_value(&self) -> (Version, Vec<u8>) {
        let (version, value) = if self.tombstone {
            (Version::tombstone(self.timestamp), Vec::new())
        } else {
            let len = [0usize, 1, 100, 3000][usize::from(self.seed % 4)];
            let value = bytes(u64::from(self.seed), len);
            (Version::of_value(&value, self.timestamp, 0), value)
        };
        let mut sent = value;
        if self.bad_value {
            match sent.first_mut() {
                Some(b) => *b ^= 0x5a,
                None => sent.push(0),
            }
        }
        (version, sent)
    }
}

/// The plain model: what each id holds, and its value.
type Model = BTreeMap<Id, (Record, Vec<u8>)>;

/// The write rule, phrased independently of [`super::accepts`]: a healthy record yields
/// only to a strictly newer version, a corrupt one to any version not older.
fn model_accepts(stored: Option<&Record>, incoming: &Version) -> bool {
    match stored {
        None => true,
        // A corrupt copy counts as absent.
        Some(r) if r.corrupt => true,
        Some(r) => incoming.newest_cmp(&r.version) == Ordering::Greater,
    }
}

/// Applies a write to the model; returns the outcome the store must report.
fn model_put(model: &mut Model, id: Id, version: Version, sent: &[u8]) -> PutOutcome {
    let stored = model.get(&id).map(|(r, _)| *r);
    if !model_accepts(stored.as_ref(), &version) {
        let stored = stored.expect("only a stored record refuses").version;
        return PutOutcome::Stale { stored };
    }
    let fits = sent.len() as u64 == version.size
        && *blake3::hash(sent).as_bytes() == version.checksum
        && (sent.is_empty() || !version.is_tombstone());
    if !fits {
        return PutOutcome::ChecksumMismatch;
    }
    let record = Record {
        version,
        corrupt: false,
    };
    model.insert(id, (record, sent.to_vec()));
    PutOutcome::Written
}

fn model_fingerprints(model: &Model, first: u16, last: u16) -> Vec<Fingerprint> {
    let mut out = vec![Fingerprint::EMPTY; usize::from(last - first) + 1];
    for (id, (record, _)) in model {
        let p = id.partition();
        if (first..=last).contains(&p) {
            out[usize::from(p - first)].insert_record(id, record);
        }
    }
    out
}

/// A version the model does not hold for `id`.
fn version_not_held(model: &Model, id: &Id) -> Version {
    match model.get(id) {
        Some((r, _)) => Version {
            timestamp: r.version.timestamp + 1000,
            ..r.version
        },
        None => Version::tombstone(1000),
    }
}

/// Runs `history` against `store` (fresh and empty) and a plain `BTreeMap` model, checking
/// every outcome on the way; then checks that the store agrees with the model on every
/// record and value, on `scan` (whole and paged), and on every partition fingerprint, both
/// maintained and after `rebuild_fingerprints`.
pub fn check_history(store: &dyn Store, history: &[Op]) {
    let mut model = Model::new();
    for (step, op) in history.iter().enumerate() {
        let ctx = format!("step {step}: {op:?}");
        match op {
            Op::Put(w) => {
                let id = history_id(w.key);
                let (version, sent) = w.version_and_value();
                let want = model_put(&mut model, id, version, &sent);
                assert_eq!(put(store, id, version, &sent), want, "{ctx}");
            }
            Op::Batch(writes) => {
                let prepared: Vec<(Id, Version, Vec<u8>)> = writes
                    .iter()
                    .map(|w| {
                        let (v, sent) = w.version_and_value();
                        (history_id(w.key), v, sent)
                    })
                    .collect();
                let items = PutItem::each(&prepared);
                let want: Vec<PutOutcome> = prepared
                    .iter()
                    .map(|(id, v, sent)| model_put(&mut model, *id, *v, sent))
                    .collect();
                assert_eq!(store.put_batch(&items).expect("put_batch"), want, "{ctx}");
            }
            Op::Upload(w) => {
                let id = history_id(w.key);
                let (version, sent) = w.version_and_value();
                let mut up = store.begin_upload(id, version).expect("begin_upload");
                if sent.len() as u64 > version.size {
                    let mut refused = false;
                    for piece in sent.chunks(777) {
                        if let Err(e) = up.write(piece) {
                            assert!(matches!(e, StoreError::TooLong { .. }), "{ctx}: {e}");
                            refused = true;
                            break;
                        }
                    }
                    assert!(refused, "{ctx}: an upload took more bytes than its size");
                } else {
                    for piece in sent.chunks(777) {
                        up.write(piece).expect("upload write");
                    }
                    let want = model_put(&mut model, id, version, &sent);
                    assert_eq!(up.commit().expect("upload commit"), want, "{ctx}");
                }
            }
            Op::AbandonUpload(w) => {
                let id = history_id(w.key);
                let (version, sent) = w.version_and_value();
                let mut up = store.begin_upload(id, version).expect("begin_upload");
                let half = (sent.len() / 2).min(version.size as usize);
                up.write(&sent[..half]).expect("upload write");
                drop(up);
            }
            Op::MarkCorrupt { key, exact } => {
                let id = history_id(*key);
                let version = match model.get(&id) {
                    Some((r, _)) if *exact => r.version,
                    _ => version_not_held(&model, &id),
                };
                let holds = match model.get_mut(&id) {
                    Some((r, _)) if r.version == version => {
                        r.corrupt = true;
                        true
                    }
                    _ => false,
                };
                assert_eq!(
                    store.mark_corrupt(&id, &version).expect("mark_corrupt"),
                    holds,
                    "{ctx}"
                );
            }
            Op::RemoveExact { key, exact } => {
                let id = history_id(*key);
                let version = match model.get(&id) {
                    Some((r, _)) if *exact => r.version,
                    _ => version_not_held(&model, &id),
                };
                let holds = model.get(&id).is_some_and(|(r, _)| r.version == version);
                if holds {
                    model.remove(&id);
                }
                assert_eq!(
                    store.remove_exact(&id, &version).expect("remove_exact"),
                    holds,
                    "{ctx}"
                );
            }
            Op::RebuildFingerprints => store.rebuild_fingerprints().expect("rebuild"),
        }
        // Cheap checks after every step: the records and the fingerprints of the history's
        // partitions.
        for key in 0..HISTORY_KEYS {
            let id = history_id(key);
            let want = model.get(&id).map(|(r, _)| *r);
            assert_eq!(
                store.lookup(&id).expect("lookup"),
                want,
                "{ctx}: lookup of key {key}"
            );
        }
        for (first, last) in [(0, 1), (0x8000, 0x8000), (0xfffe, 0xffff)] {
            assert_eq!(
                store
                    .partition_fingerprints(first, last)
                    .expect("partition_fingerprints"),
                model_fingerprints(&model, first, last),
                "{ctx}: fingerprints of partitions {first}..={last}"
            );
        }
    }
    assert_matches_model(store, &model);
}

fn assert_matches_model(store: &dyn Store, model: &Model) {
    let records: Vec<(Id, Record)> = model.iter().map(|(id, (r, _))| (*id, *r)).collect();
    assert_eq!(scan_all(store, &IdRange::ALL), records, "scan");
    assert_eq!(
        scan_paged(store, &IdRange::ALL, 3),
        records,
        "scan in pages"
    );
    for (first, last) in [(0, 0), (1, 0x8000), (0xfffe, 0xffff)] {
        let range = IdRange::partitions(first, last);
        let want: Vec<(Id, Record)> = records
            .iter()
            .filter(|(id, _)| range.contains(id))
            .copied()
            .collect();
        assert_eq!(scan_paged(store, &range, 2), want, "scan of {range:?}");
    }
    for (id, (record, value)) in model {
        assert_eq!(
            read_value(store, id),
            Some((record.version, value.clone())),
            "value of {id:?}"
        );
    }
    let want = model_fingerprints(model, 0, u16::MAX);
    assert!(
        store
            .partition_fingerprints(0, u16::MAX)
            .expect("partition_fingerprints")
            == want,
        "maintained fingerprints differ from the model's"
    );
    store.rebuild_fingerprints().expect("rebuild_fingerprints");
    assert!(
        store
            .partition_fingerprints(0, u16::MAX)
            .expect("partition_fingerprints")
            == want,
        "rebuilt fingerprints differ from the model's"
    );
}
