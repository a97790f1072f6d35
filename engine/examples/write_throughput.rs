//! Store write throughput with and without fingerprint maintenance, same load, one run:
//! `cargo run --release -p mend-engine --example write_throughput -- [N] [BATCH]`.
//! Writes N values of 1 KiB with random ids in batches (as a node does under `mend load`),
//! alternating the two stores in rounds so machine noise hits both alike.

use std::time::{Duration, Instant};

use mend_engine::store::{PutItem, RedbStore, Store};
use mend_engine::{Id, Version};

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(200_000);
    let batch = args.get(1).copied().unwrap_or(4096) as usize;
    let dir = tempfile::tempdir().expect("temp dir");
    let with = RedbStore::open(&dir.path().join("with.redb")).expect("open");
    let without =
        RedbStore::open_for_measurement_without_fingerprints(&dir.path().join("without.redb"))
            .expect("open");
    let mut spent = [Duration::ZERO; 2];
    let rounds = 10;
    for round in 0..rounds {
        let items: Vec<(Id, Version, Vec<u8>)> = (0..n / rounds)
            .map(|i| {
                let key = format!("k{round}-{i}");
                let value = blake3::hash(key.as_bytes()).as_bytes().repeat(32);
                (
                    Id::from_key(key.as_bytes()),
                    Version::of_value(&value, 1, 0),
                    value,
                )
            })
            .collect();
        for (which, store) in [(0, &with), (1, &without)] {
            let started = Instant::now();
            for chunk in items.chunks(batch) {
                store.put_batch(&PutItem::each(chunk)).expect("put_batch");
            }
            spent[which] += started.elapsed();
        }
    }
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!("| store | objects | batch | objects/s |");
    println!("|---|---|---|---|");
    println!(
        "| with fingerprints | {n} | {batch} | {:.0} |",
        rate(spent[0])
    );
    println!(
        "| without fingerprints | {n} | {batch} | {:.0} |",
        rate(spent[1])
    );
    println!(
        "with / without: {:.1} %",
        100.0 * rate(spent[0]) / rate(spent[1])
    );
}
