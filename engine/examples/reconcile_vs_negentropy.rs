//! Reconciliation bytes and round trips: mend's fingerprint exchange vs the `negentropy`
//! crate's protocol, on the same id sets.
//!
//! `cargo run --release -p mend-engine --example reconcile_vs_negentropy -- [N] [D,D,...]`
//! (defaults: N = 1,000,000; D = 10,1000,100000). Prints a CSV header and one row per D on
//! stdout, a readable table on stderr.
//!
//! Two sets of N items differ by D items, half on each side (A holds ceil(D/2) items B
//! lacks, B holds floor(D/2) items A lacks). Item i has the key `obj-i`; its mend id is the
//! 64-byte `Id::from_key`, its negentropy id the first 32 bytes of the same; its timestamp is
//! a unix second spread over a year (mend: the same instant in ns).
//!
//! - negentropy 0.5: `NegentropyStorageVector` per side, no frame-size limit, A initiates;
//!   bytes are every message's length summed, a round trip is one message from A answered
//!   by B (as in BASELINES.md).
//! - mend: the sans-io [`Reconcile`] driven exactly as `engine::compare` drives it (one
//!   coordinator asks both replicas every round; asks are cut into requests as
//!   `compare::ask` cuts them, `wire::compare_parts`), each replica answered by the
//!   node's own handler (`node::compare`) over an in-memory [`MemoryStore`].
//!   Bytes are the encoded wire frames (`wire::encode_frame`: 4-byte length + bincode) of
//!   every request and response, to both replicas: the protocol's bytes, without QUIC/TLS
//!   framing and handshakes (`mend verify --json` reports those, measured on real nodes).
//!   `mend_one_side_bytes` counts the exchange with replica B only: what crosses the network
//!   when the coordinator runs beside replica A (`mend dc -o`), the two-party layout
//!   negentropy has.
//!
//! mend ids are 64 bytes and negentropy's 32; mend also moves each differing item's full
//! version (timestamp, size, checksum, flags), which its repair needs, where negentropy
//! moves ids only.

use std::time::Instant;

use mend_engine::node;
use mend_engine::reconcile::{Answers, Config, Reconcile, Round};
use mend_engine::store::{MemoryStore, PutItem, Store};
use mend_engine::wire::{self, Request, Response};
use mend_engine::{Id, IdRange, Version};
use negentropy::{Negentropy, NegentropyStorageVector};

const YEAR_S: u64 = 365 * 24 * 3600;
const EPOCH_S: u64 = 1_700_000_000;

/// A fixed pseudo-random spread (splitmix64), so both sides and every run agree.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

struct Item {
    id: Id,
    seconds: u64,
    value: [u8; 8],
}

fn item(i: u64) -> Item {
    Item {
        id: Id::from_key(format!("obj-{i}").as_bytes()),
        seconds: EPOCH_S + mix(i) % YEAR_S,
        value: i.to_le_bytes(),
    }
}

/// Item indices of A and B: `0..common` shared, then A's own, then B's own.
fn sides(n: u64, d: u64) -> (Vec<u64>, Vec<u64>) {
    let (only_a, only_b) = (d.div_ceil(2), d / 2);
    let common = n - only_a;
    let a = (0..common).chain(common..common + only_a).collect();
    let b = (0..common)
        .chain(common + only_a..common + only_a + only_b)
        .collect();
    (a, b)
}

fn memory_store(items: &[Item]) -> MemoryStore {
    let store = MemoryStore::new();
    for chunk in items.chunks(4096) {
        let versions: Vec<Version> = chunk
            .iter()
            .map(|it| Version::of_value(&it.value, it.seconds * 1_000_000_000, 0))
            .collect();
        let puts: Vec<PutItem<'_>> = chunk
            .iter()
            .zip(&versions)
            .map(|(it, v)| PutItem {
                id: it.id,
                version: *v,
                value: &it.value,
            })
            .collect();
        store.put_batch(&puts).expect("memory store write");
    }
    store
}

fn neg_storage(items: &[Item]) -> NegentropyStorageVector {
    let mut s = NegentropyStorageVector::with_capacity(items.len());
    for it in items {
        let id: [u8; 32] = it.id.0[..32].try_into().expect("32 bytes");
        s.insert(it.seconds, negentropy::Id::from_byte_array(id))
            .expect("insert");
    }
    s.seal().expect("seal");
    s
}

struct Outcome {
    bytes: u64,
    one_side_bytes: u64,
    round_trips: u64,
    found: usize,
    seconds: f64,
}

fn frame_len<T: bincode::Encode>(msg: &T) -> u64 {
    wire::encode_frame(msg).expect("encodable").len() as u64
}

/// One replica's answers to a round, cut into requests as `compare::ask` cuts them;
/// returns the answers and the bytes of every request and response frame.
fn ask(store: &dyn Store, round: &Round) -> (Answers, u64) {
    let mut bytes = 0;
    let mut answers = Answers::new();
    for part in wire::compare_parts(round) {
        let resp = Response::Compared(node::compare(store, &part).expect("answers"));
        bytes += frame_len(&Request::from(part)) + frame_len(&resp);
        let Response::Compared(a) = resp else {
            unreachable!()
        };
        answers.extend(a);
    }
    (answers, bytes)
}

fn mend_side(a: &MemoryStore, b: &MemoryStore) -> Outcome {
    let started = Instant::now();
    // MEND_SPLIT, MEND_LEAF_ITEMS and MEND_SHORT_BELOW (0: full width) try other tunings than the default.
    let tuning = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let default = Config::default();
    let config = Config {
        split: tuning("MEND_SPLIT").map_or(default.split, |s| s.clamp(2, 256) as u16),
        leaf_items: tuning("MEND_LEAF_ITEMS").unwrap_or(default.leaf_items),
        short_below: tuning("MEND_SHORT_BELOW").unwrap_or(default.short_below),
        ..default
    };
    let mut rec = Reconcile::new(vec![IdRange::partitions(0, u16::MAX)], 2, config);
    let (mut bytes, mut one_side_bytes) = (0, 0);
    while let Some(rounds) = rec.next_round() {
        let (ans_a, bytes_a) = ask(a, &rounds[0]);
        let (ans_b, bytes_b) = ask(b, &rounds[1]);
        bytes += bytes_a + bytes_b;
        one_side_bytes += bytes_b;
        rec.answer(vec![ans_a, ans_b])
            .expect("answers fit the round");
    }
    let round_trips = rec.stats().rounds;
    Outcome {
        bytes,
        one_side_bytes,
        round_trips,
        found: rec.into_differences().len(),
        seconds: started.elapsed().as_secs_f64(),
    }
}

fn negentropy_side(a: &NegentropyStorageVector, b: &NegentropyStorageVector) -> Outcome {
    let started = Instant::now();
    let mut client = Negentropy::borrowed(a, 0).expect("client");
    let mut server = Negentropy::borrowed(b, 0).expect("server");
    let mut msg = client.initiate().expect("initiate");
    let (mut bytes, mut round_trips) = (msg.len() as u64, 0u64);
    let (mut have, mut need) = (Vec::new(), Vec::new());
    loop {
        let reply = server.reconcile(&msg).expect("server reconcile");
        bytes += reply.len() as u64;
        round_trips += 1;
        match client
            .reconcile_with_ids(&reply, &mut have, &mut need)
            .expect("client reconcile")
        {
            Some(next) => {
                bytes += next.len() as u64;
                msg = next;
            }
            None => break,
        }
    }
    Outcome {
        bytes,
        one_side_bytes: bytes,
        round_trips,
        found: have.len() + need.len(),
        seconds: started.elapsed().as_secs_f64(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: u64 = args
        .first()
        .map(|a| a.replace('_', "").parse().expect("N"))
        .unwrap_or(1_000_000);
    let ds: Vec<u64> = args
        .get(1)
        .map(|a| {
            a.split(',')
                .map(|d| d.replace('_', "").parse().expect("D"))
                .collect()
        })
        .unwrap_or_else(|| vec![10, 1_000, 100_000]);
    println!(
        "n,d,negentropy_id_bytes,negentropy_bytes,negentropy_round_trips,mend_id_bytes,\
         mend_bytes,mend_round_trips,mend_one_side_bytes,mend_over_negentropy,\
         negentropy_seconds,mend_seconds"
    );
    eprintln!(
        "| d | negentropy bytes | rt | mend bytes (both replicas) | rt | mend one side | mend / negentropy |"
    );
    eprintln!("|---|---|---|---|---|---|---|");
    for d in ds {
        assert!(d <= n, "d = {d} is more than N = {n}");
        let (ia, ib) = sides(n, d);
        let items_a: Vec<Item> = ia.into_iter().map(item).collect();
        let items_b: Vec<Item> = ib.into_iter().map(item).collect();
        let neg = {
            let (sa, sb) = (neg_storage(&items_a), neg_storage(&items_b));
            negentropy_side(&sa, &sb)
        };
        let mend = {
            let (sa, sb) = (memory_store(&items_a), memory_store(&items_b));
            drop((items_a, items_b));
            mend_side(&sa, &sb)
        };
        // Both must find exactly the d differences, or the bytes mean nothing.
        assert_eq!(neg.found as u64, d, "negentropy found {} of {d}", neg.found);
        assert_eq!(mend.found as u64, d, "mend found {} of {d}", mend.found);
        let ratio = mend.bytes as f64 / neg.bytes as f64;
        println!(
            "{n},{d},32,{},{},64,{},{},{},{ratio:.3},{:.3},{:.3}",
            neg.bytes,
            neg.round_trips,
            mend.bytes,
            mend.round_trips,
            mend.one_side_bytes,
            neg.seconds,
            mend.seconds
        );
        eprintln!(
            "| {d} | {} | {} | {} | {} | {} | {ratio:.2} |",
            neg.bytes, neg.round_trips, mend.bytes, mend.round_trips, mend.one_side_bytes
        );
    }
}
