//! The store conformance suite (`mend_engine::store::conformance`) run against every
//! backend, the model law driven by proptest over random histories, and the redb store's
//! own promises: what is committed survives a reopen, and a damaged fingerprint table is
//! rebuilt identical.

use std::path::Path;
use std::sync::Arc;

use mend_engine::store::conformance::{self, check_history, Op, Write, HISTORY_KEYS};
use mend_engine::store::{MemoryStore, PutItem, PutOutcome, RedbStore, Store, CHUNK_SIZE};
use mend_engine::{Fingerprint, Id, IdRange, Version};
use proptest::collection::vec;
use proptest::prelude::*;

fn redb_in(dir: &Path) -> RedbStore {
    RedbStore::open(&dir.join("store.redb")).expect("open redb store")
}

/// One test per conformance check and backend, so a failure names both.
macro_rules! conformance_tests {
    ($($check:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(
                #[test]
                fn $check() {
                    conformance::$check(&MemoryStore::default());
                }
            )*
        }
        mod redb {
            use super::*;
            $(
                #[test]
                fn $check() {
                    let dir = tempfile::tempdir().expect("tempdir");
                    conformance::$check(&redb_in(dir.path()));
                }
            )*
        }
    };
}

conformance_tests!(
    put_then_lookup_round_trips,
    tombstone_is_a_version_without_value,
    stale_write_is_refused,
    newer_write_replaces,
    corrupt_record_counts_as_absent,
    checksum_mismatch_is_refused,
    batch_items_are_independent,
    scan_pages_in_id_order,
    multi_chunk_upload_round_trips,
    upload_longer_than_version_is_refused,
    dropped_upload_leaves_no_trace,
    reader_sees_a_snapshot,
    remove_exact_removes_only_that_version,
    mark_corrupt_swaps_the_fingerprint_element,
    partition_fingerprints_cover_the_range,
    sample_history_matches_model,
);

/// `run_all` itself (and so every check listed in `CHECKS`, including any the macro above
/// does not name yet).
#[test]
fn run_all_on_memory() {
    conformance::run_all(&|| Box::new(MemoryStore::default()));
}

#[test]
fn run_all_on_redb() {
    let dir = tempfile::tempdir().expect("tempdir");
    let made = std::cell::Cell::new(0u32);
    conformance::run_all(&|| {
        made.set(made.get() + 1);
        let path = dir.path().join(format!("store-{}.redb", made.get()));
        Box::new(RedbStore::open(&path).expect("open redb store"))
    });
}

fn write() -> impl Strategy<Value = Write> {
    (
        0..HISTORY_KEYS,
        0u64..5,
        prop::bool::weighted(0.2),
        0u8..4,
        prop::bool::weighted(0.1),
    )
        .prop_map(|(key, timestamp, tombstone, seed, bad_value)| Write {
            key,
            timestamp,
            tombstone,
            seed,
            bad_value,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => write().prop_map(Op::Put),
        2 => vec(write(), 1..6).prop_map(Op::Batch),
        2 => write().prop_map(Op::Upload),
        1 => write().prop_map(Op::AbandonUpload),
        2 => (0..HISTORY_KEYS, any::<bool>())
            .prop_map(|(key, exact)| Op::MarkCorrupt { key, exact }),
        2 => (0..HISTORY_KEYS, any::<bool>())
            .prop_map(|(key, exact)| Op::RemoveExact { key, exact }),
        1 => Just(Op::RebuildFingerprints),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Incremental fingerprints = the model's = rebuilt ones; scan = the model's.
    #[test]
    fn memory_store_matches_model(history in vec(op(), 0..40)) {
        check_history(&MemoryStore::default(), &history);
    }

    /// The same law on disk.
    #[test]
    fn redb_store_matches_model(history in vec(op(), 0..40)) {
        let dir = tempfile::tempdir().expect("tempdir");
        check_history(&redb_in(dir.path()), &history);
    }
}

/// Everything a store can tell about its contents: records, fingerprints and values.
type Contents = (
    Vec<(Id, mend_engine::Record)>,
    Vec<Fingerprint>,
    Vec<Vec<u8>>,
);

fn snapshot(store: &dyn Store) -> Contents {
    let records = store.scan(&IdRange::ALL, None, usize::MAX).expect("scan");
    let fps = store
        .partition_fingerprints(0, u16::MAX)
        .expect("fingerprints");
    let values = records
        .iter()
        .map(|(id, _)| {
            let mut reader = store.open_value(id).expect("open_value").expect("a value");
            let mut value = Vec::new();
            while let Some(chunk) = reader.next_chunk().expect("next_chunk") {
                value.extend_from_slice(&chunk);
            }
            value
        })
        .collect();
    (records, fps, values)
}

fn put(store: &dyn Store, id: Id, version: Version, value: &[u8]) -> PutOutcome {
    store
        .put_batch(&[PutItem { id, version, value }])
        .expect("put_batch")[0]
}

#[test]
fn redb_store_keeps_everything_committed_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = |seed: u8, len: usize| -> Vec<u8> { (0..len).map(|i| (i as u8) ^ seed).collect() };
    let before = {
        let store = redb_in(dir.path());
        let mut items = Vec::new();
        for i in 0u32..300 {
            let value = i.to_le_bytes().repeat(16);
            items.push((Id::from_key(&i.to_le_bytes()), value));
        }
        let batch: Vec<PutItem<'_>> = items
            .iter()
            .map(|(id, value)| PutItem {
                id: *id,
                version: Version::of_value(value, 10, 0),
                value,
            })
            .collect();
        assert!(store
            .put_batch(&batch)
            .expect("put_batch")
            .iter()
            .all(|o| *o == PutOutcome::Written));

        let large = Id::from_key(b"large");
        let value = big(1, 2 * CHUNK_SIZE + 3);
        let v = Version::of_value(&value, 10, 0);
        let mut up = store.begin_upload(large, v).expect("begin_upload");
        up.write(&value).expect("write");
        assert_eq!(up.commit().expect("commit"), PutOutcome::Written);

        let dead = items[0].0;
        assert_eq!(
            put(&store, dead, Version::tombstone(11), b""),
            PutOutcome::Written
        );
        let rotten = items[1].0;
        let rv = Version::of_value(&items[1].1, 10, 0);
        assert!(store.mark_corrupt(&rotten, &rv).expect("mark_corrupt"));
        let gone = items[2].0;
        let gv = Version::of_value(&items[2].1, 10, 0);
        assert!(store.remove_exact(&gone, &gv).expect("remove_exact"));

        // An upload in flight when the store goes away is not part of what was committed.
        let pending = Id::from_key(b"pending");
        let pv = Version::of_value(&value, 12, 0);
        let mut up = store.begin_upload(pending, pv).expect("begin_upload");
        up.write(&value[..CHUNK_SIZE + 1]).expect("write");
        drop(up);

        snapshot(&store)
    };
    let store = redb_in(dir.path());
    assert!(snapshot(&store) == before, "the reopened store differs");
    assert_eq!(
        store.lookup(&Id::from_key(b"pending")).expect("lookup"),
        None
    );

    // Writing goes on after a reopen: a new value of an existing id and of a new one.
    let large = Id::from_key(b"large");
    let value = big(2, CHUNK_SIZE + 9);
    let v = Version::of_value(&value, 20, 0);
    assert_eq!(put(&store, large, v, &value), PutOutcome::Written);
    let other = Id::from_key(b"other");
    let value2 = big(3, 3 * CHUNK_SIZE);
    let v2 = Version::of_value(&value2, 20, 0);
    let mut up = store.begin_upload(other, v2).expect("begin_upload");
    up.write(&value2).expect("write");
    assert_eq!(up.commit().expect("commit"), PutOutcome::Written);
    let (_, fps, _) = snapshot(&store);
    store.rebuild_fingerprints().expect("rebuild");
    let (records, rebuilt, values) = snapshot(&store);
    assert!(fps == rebuilt);
    let at = |id: &Id| records.iter().position(|(i, _)| i == id).expect("present");
    assert!(values[at(&large)] == value);
    assert!(values[at(&other)] == value2);
}

#[test]
fn redb_rebuild_restores_damaged_fingerprints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = redb_in(dir.path());
    let mut versions = Vec::new();
    for i in 0u32..500 {
        let id = Id::from_key(&i.to_be_bytes());
        let value = i.to_be_bytes();
        let v = Version::of_value(&value, u64::from(i), 0);
        assert_eq!(put(&store, id, v, &value), PutOutcome::Written);
        versions.push((id, v));
    }
    // Several records in one partition, one of them corrupt.
    let mut crowded = Vec::new();
    for n in 0u8..4 {
        let mut id = Id::from_key(&[n]);
        id.0[..2].copy_from_slice(&7u16.to_be_bytes());
        let v = Version::of_value(&[n], 1, 0);
        assert_eq!(put(&store, id, v, &[n]), PutOutcome::Written);
        crowded.push((id, v));
    }
    assert!(store
        .mark_corrupt(&crowded[0].0, &crowded[0].1)
        .expect("mark_corrupt"));

    let healthy = store
        .partition_fingerprints(0, u16::MAX)
        .expect("fingerprints");
    let mut total = Fingerprint::EMPTY;
    healthy.iter().for_each(|fp| total.add(fp));
    let mut want = Fingerprint::of(versions.iter().chain(&crowded[1..]).map(|(i, v)| (i, v)));
    want.insert_record(
        &crowded[0].0,
        &mend_engine::Record {
            version: crowded[0].1,
            corrupt: true,
        },
    );
    assert_eq!(total, want);

    store.debug_damage_fingerprints().expect("damage");
    let damaged = store
        .partition_fingerprints(0, u16::MAX)
        .expect("fingerprints");
    assert!(damaged != healthy, "the damage changed nothing");
    store.rebuild_fingerprints().expect("rebuild");
    assert!(
        store
            .partition_fingerprints(0, u16::MAX)
            .expect("fingerprints")
            == healthy
    );

    drop(store);
    let store = redb_in(dir.path());
    assert!(
        store
            .partition_fingerprints(0, u16::MAX)
            .expect("fingerprints")
            == healthy
    );
}

/// Writers on several threads (batches and uploads of the same ids) leave the maintained
/// fingerprints equal to rebuilt ones and every id at the newest version written.
#[test]
fn redb_concurrent_writers_keep_fingerprints_consistent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(redb_in(dir.path()));
    let ids: Vec<Id> = (0u8..16).map(|k| Id::from_key(&[k])).collect();
    let threads: Vec<_> = (0u64..4)
        .map(|t| {
            let store = Arc::clone(&store);
            let ids = ids.clone();
            std::thread::spawn(move || {
                for round in 0u64..25 {
                    let ts = round * 4 + t;
                    let value = ts.to_le_bytes().repeat(100);
                    let v = Version::of_value(&value, ts, 0);
                    if round % 5 == 0 {
                        for id in &ids[..4] {
                            let mut up = store.begin_upload(*id, v).expect("begin_upload");
                            up.write(&value).expect("write");
                            up.commit().expect("commit");
                        }
                    }
                    let batch: Vec<PutItem<'_>> = ids
                        .iter()
                        .map(|id| PutItem {
                            id: *id,
                            version: v,
                            value: &value,
                        })
                        .collect();
                    store.put_batch(&batch).expect("put_batch");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer thread");
    }
    let newest = 24 * 4 + 3;
    for id in &ids {
        let r = store.lookup(id).expect("lookup").expect("stored");
        assert_eq!(r.version.timestamp, newest);
    }
    let maintained = store
        .partition_fingerprints(0, u16::MAX)
        .expect("fingerprints");
    store.rebuild_fingerprints().expect("rebuild");
    assert!(
        store
            .partition_fingerprints(0, u16::MAX)
            .expect("fingerprints")
            == maintained
    );
}

/// Throughput of `mend load`'s write path: 100k values of 1 KiB in batches of 1000.
/// Run with `cargo test --release -p mend-engine --test store_conformance -- --ignored
/// --nocapture redb_load_throughput`.
#[test]
#[ignore = "a measurement, not a check; run it in release"]
fn redb_load_throughput() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = redb_in(dir.path());
    let total = 100_000u32;
    let values: Vec<(Id, Vec<u8>)> = (0..total)
        .map(|i| (Id::from_key(&i.to_le_bytes()), i.to_le_bytes().repeat(256)))
        .collect();
    let start = std::time::Instant::now();
    for batch in values.chunks(1000) {
        let items: Vec<PutItem<'_>> = batch
            .iter()
            .map(|(id, value)| PutItem {
                id: *id,
                version: Version::of_value(value, 1, 0),
                value,
            })
            .collect();
        store.put_batch(&items).expect("put_batch");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{total} objects of 1 KiB in {secs:.2} s: {:.0} objects/s",
        f64::from(total) / secs
    );
}
