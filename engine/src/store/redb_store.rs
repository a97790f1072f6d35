//! [`RedbStore`]: the [`Store`] contract on redb (pure Rust, ACID, crash-safe).
//!
//! Six tables, each named with a layout version (bump the suffix and migrate when a layout
//! changes; never reinterpret old bytes). Every write that changes what a node holds — a
//! value, its version row and its partition's fingerprint — commits in one durable write
//! transaction, so they never disagree after a crash.
//!
//! Values live in chunks under a *generation*: a number allocated per written value, so a
//! new value of an id is staged next to the old one and swapped in by rewriting the version
//! row; the old generation's chunks are deleted in that same transaction. A read holds a
//! snapshot, so it sees one generation from start to end whatever writers do.
//!
//! Large values arrive through an [`Upload`]: its chunks are staged in small non-durable
//! transactions, and the upload's generation is recorded in `uploads_v1` until it commits
//! or is dropped. Opening the store discards every upload still recorded there, so a crash
//! mid-upload leaves nothing behind.

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use redb::{
    Database, Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, Table, TableDefinition, WriteTransaction,
};

use super::memory::value_matches;
use super::{accepts, PutItem, PutOutcome, Store, StoreError, Upload, ValueReader, CHUNK_SIZE};
use crate::fingerprint::{Fingerprint, FINGERPRINT_BYTES};
use crate::id::{Id, IdRange, ID_LEN};
use crate::version::{Record, Version, VERSION_BYTES};

/// Bytes in a `versions_v1` value.
const VERSION_ROW_BYTES: usize = VERSION_BYTES + 1 + 8;
/// Bytes in a `chunks_v1` key.
const CHUNK_KEY_BYTES: usize = 8 + 4;

/// `versions_v1`: what the store holds for each id; iterated without touching values.
///
/// - key: the 64-byte id.
/// - value, 67 bytes: `[0..58]` [`Version::to_bytes`]; `[58]` 1 if scrub marked the value
///   corrupt, else 0; `[59..67]` the generation of the value's chunks in `chunks_v1`, u64
///   little-endian (0 when the value has no chunks: a tombstone or an empty value).
const VERSIONS: TableDefinition<&[u8; ID_LEN], &[u8; VERSION_ROW_BYTES]> =
    TableDefinition::new("versions_v1");

/// `chunks_v1`: the values, in chunks.
///
/// - key, 12 bytes: generation (u64 big-endian) ‖ chunk index (u32 big-endian). A
///   generation belongs to one value of one id (the version row, or the `uploads_v1` row,
///   that names it), so the id need not be in the key; leaving it out, and putting the
///   generation first, makes new chunks land at the end of the tree — a batch of writes
///   to random ids dirties a few pages here instead of one per value, which roughly
///   halves the cost of a commit. The chunks of one value are adjacent and in order.
/// - value: the chunk, 1 to [`CHUNK_SIZE`] bytes; the chunks of a value add up to its size.
///   Writers cut them with [`stored_chunk_len`] so each fills its pages; a reader takes any
///   cut (schema 1 cut every [`CHUNK_SIZE`] bytes).
const CHUNKS: TableDefinition<&[u8; CHUNK_KEY_BYTES], &[u8]> = TableDefinition::new("chunks_v1");

/// `uploads_v1`: uploads in progress, whose chunks are staged but not yet referenced by a
/// version row. Emptied on open (their chunks deleted): whoever was uploading is gone.
///
/// - key: the upload's generation (u64).
/// - value: the 64-byte id it uploads.
const UPLOADS: TableDefinition<u64, &[u8; ID_LEN]> = TableDefinition::new("uploads_v1");

/// `fingerprints_v1`: per-partition fingerprints of the records (a record marked corrupt
/// contributes a distinct element: [`Fingerprint::record_element`]).
///
/// - key: the partition (u16, the top 16 bits of the ids).
/// - value, 40 bytes: [`Fingerprint::to_bytes`]. Only non-empty partitions have a row; a
///   missing row means [`Fingerprint::EMPTY`].
const FINGERPRINTS: TableDefinition<u16, &[u8; FINGERPRINT_BYTES]> =
    TableDefinition::new("fingerprints_v1");

/// `fingerprint_log_v1`: the fingerprint rows each write transaction changed, appended in
/// that transaction instead of rewriting them in `fingerprints_v1`. A batch of writes to
/// random ids touches thousands of partitions, whose rows are spread over every page of
/// `fingerprints_v1`; rewriting them dirtied about 3 MB per commit, while one log row is
/// 42 bytes per partition and lands at the end of its tree. The fingerprints of a
/// partition are its `fingerprints_v1` row overridden by its latest log entry. Once the log
/// holds [`FOLD_AT`] entries, the next write transaction folds it: it writes the latest
/// fingerprint of every logged partition to `fingerprints_v1` and empties the log.
///
/// - key: a sequence number (u64), increasing with each write transaction.
/// - value: one or more entries of 42 bytes: the partition (u16 big-endian) ‖
///   [`Fingerprint::to_bytes`] ([`Fingerprint::EMPTY`] when the partition became empty).
const FINGERPRINT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("fingerprint_log_v1");

/// Bytes in one `fingerprint_log_v1` entry.
const LOG_ENTRY_BYTES: usize = 2 + FINGERPRINT_BYTES;

/// Log entries after which the next write folds the log into `fingerprints_v1`: about as
/// many bytes as the table itself, so folding costs at most what the log saved, and opening
/// replays at most this many entries.
const FOLD_AT: usize = 1 << 16;

/// `meta_v1`: counters, the schema version and the file's place in its store, by name
/// ([`SCHEMA_KEY`], [`NEXT_GENERATION_KEY`], [`SHARD_KEY`], [`SHARDS_KEY`]).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta_v1");

/// `meta_v1` key: the layout version of the whole database.
const SCHEMA_KEY: &str = "schema";
/// The layout this code reads and writes. Schema 1 had no `fingerprint_log_v1`, schema 2
/// no shards; opening either upgrades it in place to a store of one shard (there is nothing
/// to convert). A build that reads schema 2 refuses schema 3 rather than see one shard of
/// several as the whole store.
const SCHEMA: u64 = 3;
/// `meta_v1` key: which shard of its store this file is (0 is the first file).
const SHARD_KEY: &str = "shard";
/// `meta_v1` key: how many shards the store has (a power of two, at most 256).
const SHARDS_KEY: &str = "shards";
/// `meta_v1` key: the next unused chunk generation (generations start at 1; 0 means none).
const NEXT_GENERATION_KEY: &str = "next_generation";

type VersionsTable<'t> = Table<'t, &'static [u8; ID_LEN], &'static [u8; VERSION_ROW_BYTES]>;
type ChunksTable<'t> = Table<'t, &'static [u8; CHUNK_KEY_BYTES], &'static [u8]>;
type FingerprintsTable<'t> = Table<'t, u16, &'static [u8; FINGERPRINT_BYTES]>;
type FingerprintLogTable<'t> = Table<'t, u64, &'static [u8]>;

/// Why an existing database cannot be used.
#[derive(Debug, thiserror::Error)]
enum LayoutError {
    /// Written by a build with another layout.
    #[error("database schema is {found}, this build reads schema {SCHEMA} only")]
    Schema {
        /// The schema the file declares.
        found: u64,
    },
    /// The shard keys of `meta_v1` are missing or out of range.
    #[error("database records shard {index:?} of {count:?}: not a shard of a store")]
    ShardKeys {
        /// [`SHARD_KEY`]'s value.
        index: Option<u64>,
        /// [`SHARDS_KEY`]'s value.
        count: Option<u64>,
    },
    /// The file is another shard than its name says, or of a store of another size.
    #[error(
        "database is shard {} of {}, expected shard {} of {}: the store's files were mixed up",
        found.index, found.count, expected.index, expected.count
    )]
    Shard {
        /// What the file records.
        found: ShardLayout,
        /// What its name and the store's first file say.
        expected: ShardLayout,
    },
    /// A file of the store is gone while another still holds objects: opening would start
    /// its slice of the id space empty and hide the loss.
    #[error(
        "this file of the store is missing while {} holds objects; restore it, or move the \
         data dir aside to start the node empty and let `mend dc` refill it",
        holder.display()
    )]
    Missing {
        /// A file of the same store that holds objects.
        holder: PathBuf,
    },
}

/// An upload was used after one of its writes failed.
#[derive(Debug, thiserror::Error)]
#[error("an earlier write of this upload failed; the upload must be dropped")]
struct UploadBroken;

/// Adds the failed operation's name to a redb error.
trait During<T> {
    fn during(self, op: &'static str) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> During<T> for Result<T, E> {
    fn during(self, op: &'static str) -> Result<T, StoreError> {
        // One error type, so that an I/O error can be recognised ([`is_io_error`]).
        self.map_err(|e| StoreError::backend(op, e.into()))
    }
}

/// The decoded `versions_v1` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct VersionRow {
    record: Record,
    generation: u64,
}

impl VersionRow {
    fn encode(&self) -> [u8; VERSION_ROW_BYTES] {
        let mut out = [0u8; VERSION_ROW_BYTES];
        out[..VERSION_BYTES].copy_from_slice(&self.record.version.to_bytes());
        out[VERSION_BYTES] = u8::from(self.record.corrupt);
        out[VERSION_BYTES + 1..].copy_from_slice(&self.generation.to_le_bytes());
        out
    }

    fn decode(id: &Id, bytes: &[u8; VERSION_ROW_BYTES]) -> Result<VersionRow, StoreError> {
        let mut version = [0u8; VERSION_BYTES];
        version.copy_from_slice(&bytes[..VERSION_BYTES]);
        let corrupt = match bytes[VERSION_BYTES] {
            0 => false,
            1 => true,
            _ => {
                return Err(StoreError::Malformed {
                    id: *id,
                    what: "the corrupt flag is neither 0 nor 1",
                })
            }
        };
        let mut generation = [0u8; 8];
        generation.copy_from_slice(&bytes[VERSION_BYTES + 1..]);
        Ok(VersionRow {
            record: Record {
                version: Version::from_bytes(&version),
                corrupt,
            },
            generation: u64::from_le_bytes(generation),
        })
    }
}

fn chunk_key(generation: u64, index: u32) -> [u8; CHUNK_KEY_BYTES] {
    let mut key = [0u8; CHUNK_KEY_BYTES];
    key[..8].copy_from_slice(&generation.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

fn read_row(
    versions: &impl ReadableTable<&'static [u8; ID_LEN], &'static [u8; VERSION_ROW_BYTES]>,
    id: &Id,
    op: &'static str,
) -> Result<Option<VersionRow>, StoreError> {
    match versions.get(&id.0).during(op)? {
        Some(row) => VersionRow::decode(id, row.value()).map(Some),
        None => Ok(None),
    }
}

/// Deletes every chunk of `generation` (a range delete: it does not trust the version's
/// size).
fn delete_chunks(
    chunks: &mut ChunksTable<'_>,
    generation: u64,
    op: &'static str,
) -> Result<(), StoreError> {
    if generation == 0 {
        return Ok(());
    }
    let first = chunk_key(generation, 0);
    let last = chunk_key(generation, u32::MAX);
    chunks
        .retain_in::<&[u8; CHUNK_KEY_BYTES], _>(&first..=&last, |_, _| false)
        .during(op)
}

/// redb's page: a leaf takes the smallest power-of-two number of pages that holds it.
const PAGE_BYTES: usize = 4096;

/// What redb adds to a chunk in a leaf of its own: the page header (4 bytes), the value's
/// end offset (4) and the key.
const LEAF_OVERHEAD: usize = 4 + 4 + CHUNK_KEY_BYTES;

/// The length of the next chunk of a value with `remaining` bytes left to store.
///
/// A chunk of exactly 64 KiB needs 20 bytes more than 64 KiB in its leaf, so redb would give
/// it 128 KiB: values of power-of-two sizes took twice their size on disk, and every byte
/// was written twice. So a chunk is the largest power of two less [`LEAF_OVERHEAD`] that is
/// not longer than what is left (at most [`CHUNK_SIZE`] less the overhead), and whatever
/// fits in part of a page goes whole: small leaves share pages. A 64 KiB value is a chunk
/// of 65,516 bytes in 64 KiB of pages and one of 20 bytes.
fn stored_chunk_len(remaining: u64) -> usize {
    let remaining = usize::try_from(remaining).unwrap_or(usize::MAX);
    let with_overhead = remaining.saturating_add(LEAF_OVERHEAD);
    if with_overhead <= PAGE_BYTES {
        return remaining;
    }
    let pages = 1usize << with_overhead.min(CHUNK_SIZE).ilog2();
    pages - LEAF_OVERHEAD
}

/// Writes `value` as the chunks of `generation`.
fn write_chunks(
    chunks: &mut ChunksTable<'_>,
    generation: u64,
    mut value: &[u8],
    op: &'static str,
) -> Result<(), StoreError> {
    let mut index = 0u32;
    while !value.is_empty() {
        let (chunk, rest) = value.split_at(stored_chunk_len(value.len() as u64));
        chunks
            .insert(&chunk_key(generation, index), chunk)
            .during(op)?;
        value = rest;
        index += 1;
    }
    Ok(())
}

/// The partition fingerprints one write transaction changes, kept in memory and written
/// once per partition at the end: a batch of a thousand writes reads and writes each
/// touched row once, not once per write.
#[derive(Default)]
struct FingerprintDelta(BTreeMap<u16, Fingerprint>);

/// What a write transaction did to the fingerprints, for the mirror once it commits.
#[derive(Default)]
struct FingerprintChanges {
    changed: BTreeMap<u16, Fingerprint>,
    /// The log was folded into `fingerprints_v1` (and emptied) by this transaction.
    folded: bool,
}

impl FingerprintDelta {
    /// The fingerprint of `partition` as this transaction leaves it, starting from the
    /// committed one in the mirror (no table read).
    fn entry(&mut self, mirror: &Fingerprints, partition: u16) -> &mut Fingerprint {
        self.0
            .entry(partition)
            .or_insert_with(|| mirror.all[usize::from(partition)])
    }

    /// Appends the changed fingerprints to the log, or folds the log when it is full
    /// (see [`FINGERPRINT_LOG`]).
    fn write(
        self,
        table: &mut FingerprintsTable<'_>,
        log: &mut FingerprintLogTable<'_>,
        mirror: &Fingerprints,
        op: &'static str,
    ) -> Result<FingerprintChanges, StoreError> {
        if self.0.is_empty() {
            return Ok(FingerprintChanges::default());
        }
        if mirror.logged + self.0.len() <= FOLD_AT {
            let mut entries = Vec::with_capacity(self.0.len() * LOG_ENTRY_BYTES);
            for (partition, fp) in &self.0 {
                entries.extend_from_slice(&partition.to_be_bytes());
                entries.extend_from_slice(&fp.to_bytes());
            }
            log.insert(mirror.next_sequence, entries.as_slice())
                .during(op)?;
            return Ok(FingerprintChanges {
                changed: self.0,
                folded: false,
            });
        }
        let latest = |p: u16| {
            self.0
                .get(&p)
                .copied()
                .unwrap_or(mirror.all[usize::from(p)])
        };
        // Each logged or changed partition once: most of this transaction's are logged too.
        let changed: std::collections::BTreeSet<u16> = self.0.keys().copied().collect();
        for partition in mirror.unfolded.union(&changed) {
            let fp = latest(*partition);
            if fp == Fingerprint::EMPTY {
                table.remove(*partition).during(op)?;
            } else {
                table.insert(*partition, &fp.to_bytes()).during(op)?;
            }
        }
        log.retain(|_, _| false).during(op)?;
        Ok(FingerprintChanges {
            changed: self.0,
            folded: true,
        })
    }
}

/// The tables a change to a record touches, open in one write transaction.
struct RecordTables<'t> {
    versions: VersionsTable<'t>,
    chunks: ChunksTable<'t>,
    fingerprints: FingerprintsTable<'t>,
    log: FingerprintLogTable<'t>,
    delta: FingerprintDelta,
    /// The committed fingerprints (the caller holds the mirror's lock for the transaction).
    mirror: &'t Fingerprints,
    /// False only in a store opened for measuring what fingerprints cost.
    maintain: bool,
}

impl<'t> RecordTables<'t> {
    fn open(
        txn: &'t WriteTransaction,
        op: &'static str,
        mirror: &'t Fingerprints,
        maintain: bool,
    ) -> Result<Self, StoreError> {
        Ok(RecordTables {
            versions: txn.open_table(VERSIONS).during(op)?,
            chunks: txn.open_table(CHUNKS).during(op)?,
            fingerprints: txn.open_table(FINGERPRINTS).during(op)?,
            log: txn.open_table(FINGERPRINT_LOG).during(op)?,
            delta: FingerprintDelta::default(),
            mirror,
            maintain,
        })
    }

    fn fingerprint_insert(
        &mut self,
        id: &Id,
        record: &Record,
        op: &'static str,
    ) -> Result<(), StoreError> {
        if !self.maintain {
            return Ok(());
        }
        let _ = op;
        self.delta
            .entry(self.mirror, id.partition())
            .insert_record(id, record);
        Ok(())
    }

    fn fingerprint_remove(
        &mut self,
        id: &Id,
        record: &Record,
        op: &'static str,
    ) -> Result<(), StoreError> {
        if !self.maintain {
            return Ok(());
        }
        let _ = op;
        self.delta
            .entry(self.mirror, id.partition())
            .remove_record(id, record);
        Ok(())
    }

    /// Makes `new` (whose chunks are already written) the record of `id` in place of `old`:
    /// deletes the old chunks, writes the version row, moves the fingerprint element.
    fn replace(
        &mut self,
        id: &Id,
        old: Option<VersionRow>,
        new: VersionRow,
        op: &'static str,
    ) -> Result<(), StoreError> {
        self.versions.insert(&id.0, &new.encode()).during(op)?;
        self.replaced(id, old, new, op)
    }

    /// What follows writing `new`'s version row over `old`'s: deletes the old chunks and
    /// moves the fingerprint element.
    fn replaced(
        &mut self,
        id: &Id,
        old: Option<VersionRow>,
        new: VersionRow,
        op: &'static str,
    ) -> Result<(), StoreError> {
        if let Some(old) = old {
            if old.generation != new.generation {
                delete_chunks(&mut self.chunks, old.generation, op)?;
            }
            self.fingerprint_remove(id, &old.record, op)?;
        }
        self.fingerprint_insert(id, &new.record, op)?;
        Ok(())
    }

    /// Writes `new`'s version row and returns the row it replaced: one descent of the
    /// version tree where a lookup and then an insert took two.
    fn swap_row(
        &mut self,
        id: &Id,
        new: &VersionRow,
        op: &'static str,
    ) -> Result<Option<VersionRow>, StoreError> {
        let old = self
            .versions
            .insert(&id.0, &new.encode())
            .during(op)?
            .map(|guard| *guard.value());
        old.map(|bytes| VersionRow::decode(id, &bytes)).transpose()
    }

    /// Writes the fingerprint changes; the tables close when this returns. The changes go
    /// to the mirror once the transaction commits ([`Mirror::apply`]).
    fn finish(mut self, op: &'static str) -> Result<FingerprintChanges, StoreError> {
        std::mem::take(&mut self.delta).write(
            &mut self.fingerprints,
            &mut self.log,
            self.mirror,
            op,
        )
    }
}

/// The committed fingerprints, as `fingerprints_v1` and `fingerprint_log_v1` together say.
#[derive(Debug, Clone)]
struct Fingerprints {
    /// Per partition (2.6 MB).
    all: Vec<Fingerprint>,
    /// The partitions with an entry in the log.
    unfolded: std::collections::BTreeSet<u16>,
    /// Entries in the log.
    logged: usize,
    /// The key of the next log row.
    next_sequence: u64,
}

/// The committed per-partition fingerprints, in memory: a write reads the fingerprints it
/// changes from here instead of the tables, and `partition_fingerprints` answers from here.
/// A writer holds the lock from before its transaction begins until the mirror has its
/// changes, so the mirror never lags a commit another writer could see.
#[derive(Debug, Clone)]
struct Mirror(Arc<std::sync::Mutex<Fingerprints>>);

impl Mirror {
    fn load(db: &Database) -> Result<Mirror, StoreError> {
        Ok(Mirror(Arc::new(std::sync::Mutex::new(Fingerprints::load(
            db,
        )?))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Fingerprints> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn apply(mirror: &mut Fingerprints, changes: FingerprintChanges) {
        if changes.folded {
            mirror.unfolded.clear();
            mirror.logged = 0;
        } else if !changes.changed.is_empty() {
            mirror.logged += changes.changed.len();
            mirror.next_sequence += 1;
            mirror.unfolded.extend(changes.changed.keys());
        }
        for (p, fp) in changes.changed {
            mirror.all[usize::from(p)] = fp;
        }
    }
}

impl Fingerprints {
    /// Reads `fingerprints_v1`, then replays the log over it in order.
    fn load(db: &Database) -> Result<Fingerprints, StoreError> {
        const OP: &str = "load fingerprints";
        let mut loaded = Fingerprints {
            all: vec![Fingerprint::EMPTY; 1 << 16],
            unfolded: Default::default(),
            logged: 0,
            next_sequence: 0,
        };
        let txn = db.begin_read().during(OP)?;
        let table = txn.open_table(FINGERPRINTS).during(OP)?;
        for row in table.iter().during(OP)? {
            let (k, v) = row.during(OP)?;
            loaded.all[usize::from(k.value())] = Fingerprint::from_bytes(v.value());
        }
        let log = txn.open_table(FINGERPRINT_LOG).during(OP)?;
        for row in log.iter().during(OP)? {
            let (sequence, entries) = row.during(OP)?;
            let entries = entries.value();
            if entries.len() % LOG_ENTRY_BYTES != 0 {
                return Err(StoreError::backend(
                    OP,
                    MalformedLog {
                        sequence: sequence.value(),
                        len: entries.len(),
                    },
                ));
            }
            for entry in entries.chunks_exact(LOG_ENTRY_BYTES) {
                let partition = u16::from_be_bytes([entry[0], entry[1]]);
                let mut fp = [0u8; FINGERPRINT_BYTES];
                fp.copy_from_slice(&entry[2..]);
                loaded.all[usize::from(partition)] = Fingerprint::from_bytes(&fp);
                loaded.unfolded.insert(partition);
                loaded.logged += 1;
            }
            loaded.next_sequence = sequence.value() + 1;
        }
        Ok(loaded)
    }
}

/// A `fingerprint_log_v1` row that is not a whole number of entries.
#[derive(Debug, thiserror::Error)]
#[error("fingerprint log row {sequence} is {len} bytes, not a multiple of {LOG_ENTRY_BYTES}; run `mend node --rebuild-fingerprints`")]
struct MalformedLog {
    sequence: u64,
    len: usize,
}

/// A [`Store`] in [`SHARDS`] redb database files, each holding the ids of one contiguous
/// slice of the id space (so of whole partitions), each written by its own transactions.
///
/// Why more than one: a commit is serial within a redb file — it writes its pages, then
/// fsyncs, and the next commit waits for both. A 2 GiB bulk copy into an empty node left the
/// disk idle while the one writer thread wrote pages into the page cache, and that thread
/// idle while the disk synced. With two files, a batch's halves commit at the same time on
/// two threads, so one file's fsync overlaps the other's page writes.
///
/// The number of shards is fixed when the store is created and recorded in the first
/// file; a store made by a build before shards (schema 2) opens as one shard.
#[derive(Debug)]
pub struct RedbStore {
    shards: Vec<ShardFile>,
    /// `shards.len().ilog2()`: a shard holds the ids whose top `bits` bits are its index.
    bits: u32,
}

/// One redb database file of a [`RedbStore`].
///
/// After an I/O error (a full disk, most often) redb refuses every later operation until the
/// database is closed and opened again. So a shard notes the error, and its next operation
/// first reopens the file (which succeeds once the handles of readers and uploads still
/// open are gone): a node whose disk filled up works again once there is room, without a
/// restart.
#[derive(Debug)]
struct ShardFile {
    path: PathBuf,
    /// Which shard of its store this file is.
    index: usize,
    maintain_fingerprints: bool,
    /// The open database; `None` only while a reopen has not succeeded yet.
    opened: std::sync::RwLock<Option<Arc<Opened>>>,
    /// An operation failed with an I/O error: reopen before the next one.
    broken: std::sync::atomic::AtomicBool,
}

/// One opening of a database file.
#[derive(Debug)]
struct Opened {
    db: Arc<Database>,
    maintain_fingerprints: bool,
    mirror: Mirror,
    shard: ShardLayout,
}

/// Where a file sits in its store: shard `index` of `count` (as recorded in its `meta_v1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ShardLayout {
    index: u64,
    count: u64,
}

impl ShardLayout {
    /// The layout `meta_v1`'s shard keys record, if they are present and make sense.
    fn recorded(index: Option<u64>, count: Option<u64>) -> Option<ShardLayout> {
        match (index, count) {
            (Some(index), Some(count))
                if count.is_power_of_two() && count <= 256 && index < count =>
            {
                Some(ShardLayout { index, count })
            }
            _ => None,
        }
    }
}

/// The shards of a store this build creates. Two: the machines it is measured on have two
/// cores, and one shard's fsync overlapping the other's page writes is what pays (see
/// [`RedbStore`]); more would split commits into smaller ones for no further overlap.
pub const SHARDS: usize = 2;

/// Whether `e` is (or follows) an I/O error of the database file.
fn is_io_error(e: &StoreError) -> bool {
    matches!(e, StoreError::Backend { source, .. }
    if source.downcast_ref::<redb::Error>().is_some_and(|e| {
        matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo)
    }))
}

/// The file of shard `index` of the store whose first file is `path`: `store.redb`,
/// `store-1.redb`, ...
fn shard_path(path: &Path, index: usize) -> PathBuf {
    if index == 0 {
        return path.to_path_buf();
    }
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{index}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{index}"),
    };
    path.with_file_name(name)
}

impl RedbStore {
    /// Opens the store whose first file is `path`, creating it if absent, and discards the
    /// chunks of every upload a previous process left unfinished.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        RedbStore::open_with(path, true)
    }

    /// Opens the store like [`RedbStore::open`] but does not maintain fingerprints: only
    /// for measuring what their maintenance costs (`scripts/bench-verify.sh`); its
    /// fingerprints are wrong until [`Store::rebuild_fingerprints`].
    pub fn open_for_measurement_without_fingerprints(path: &Path) -> Result<RedbStore, StoreError> {
        RedbStore::open_with(path, false)
    }

    fn open_with(path: &Path, maintain_fingerprints: bool) -> Result<RedbStore, StoreError> {
        // A missing file is created only where the store holds nothing it could have lost
        // (a new store, or a crash between creating its first file and the rest); checked
        // before anything is created, so that a refusal leaves the data dir as it was.
        if !exists(path)? {
            for index in 1..SHARDS {
                let other = shard_path(path, index);
                if exists(&other)? && holds_objects(&other)? {
                    return Err(open_error(path, LayoutError::Missing { holder: other }));
                }
            }
        }
        let first = ShardFile::open(path.to_path_buf(), maintain_fingerprints, 0)?;
        let count = first.layout()?.count;
        let mut shards = vec![first];
        for index in 1..count as usize {
            let file = shard_path(path, index);
            if !exists(&file)? && shards[0].with(|o| o.holds_objects())? {
                let holder = path.to_path_buf();
                return Err(open_error(&file, LayoutError::Missing { holder }));
            }
            let shard = ShardFile::open(file, maintain_fingerprints, index)?;
            let found = shard.layout()?;
            if found.count != count {
                let expected = ShardLayout {
                    index: index as u64,
                    count,
                };
                return Err(open_error(
                    &shard.path,
                    LayoutError::Shard { found, expected },
                ));
            }
            shards.push(shard);
        }
        Ok(RedbStore {
            bits: shards.len().ilog2(),
            shards,
        })
    }

    /// The store's first database file (it records how many there are).
    pub fn path(&self) -> &Path {
        &self.shards[0].path
    }

    /// Every database file of the store, in shard order.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.shards.iter().map(|s| s.path.clone()).collect()
    }

    /// The index of the shard that holds `id`.
    fn shard_of(&self, id: &Id) -> usize {
        shard_index(self.bits, id.partition())
    }

    /// The shard that holds `id`.
    fn shard(&self, id: &Id) -> &ShardFile {
        &self.shards[self.shard_of(id)]
    }

    /// The partitions of shard `index`, first and last.
    fn partitions_of(&self, index: usize) -> (u16, u16) {
        let span = 1u32 << (16 - self.bits);
        let first = index as u32 * span;
        (first as u16, (first + span - 1) as u16)
    }

    /// Debugging and tests: flips one byte of the first chunk of the stored value of `id`,
    /// leaving its version row and fingerprint alone, as bit rot on disk would. Returns
    /// false when `id` has no value bytes (absent, a tombstone, or empty).
    pub fn debug_corrupt_value(&self, id: &Id) -> Result<bool, StoreError> {
        self.shard(id).with(|o| o.debug_corrupt_value(id))
    }

    /// Debugging and tests: damages `fingerprints_v1` of every shard the ways a bad disk or
    /// a bug could — every other row overwritten with garbage, one row deleted, one row
    /// invented for a partition that holds nothing, the log lost — so that
    /// [`Store::rebuild_fingerprints`] can be shown to restore it.
    pub fn debug_damage_fingerprints(&self) -> Result<(), StoreError> {
        for shard in &self.shards {
            shard.with(Opened::debug_damage_fingerprints)?;
        }
        Ok(())
    }
}

/// The failure to open the store's file at `path`.
fn open_error(path: &Path, source: impl Into<Box<dyn StdError + Send + Sync>>) -> StoreError {
    StoreError::Open {
        path: path.to_path_buf(),
        source: source.into(),
    }
}

/// Whether the file at `path` exists (an error if that cannot be told).
fn exists(path: &Path) -> Result<bool, StoreError> {
    path.try_exists().map_err(|e| open_error(path, e))
}

/// Whether the database file at `path` (which exists) holds any object. Creates no file
/// and no table; redb repairs a file left by a crash, as opening it for use would.
fn holds_objects(path: &Path) -> Result<bool, StoreError> {
    let db = Database::open(path).map_err(|e| open_error(path, e))?;
    versions_held(&db).map_err(|e| open_error(path, e))
}

/// Whether `db`'s `versions_v1` holds a row (a file without the table holds none).
fn versions_held(db: &Database) -> Result<bool, redb::Error> {
    let txn = db.begin_read()?;
    match txn.open_table(VERSIONS) {
        Ok(versions) => Ok(!versions.is_empty()?),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The shard, of `1 << bits`, that holds `partition`: the top `bits` bits of the id.
fn shard_index(bits: u32, partition: u16) -> usize {
    if bits == 0 {
        0
    } else {
        usize::from(partition >> (16 - bits))
    }
}

impl ShardFile {
    fn open(
        path: PathBuf,
        maintain_fingerprints: bool,
        index: usize,
    ) -> Result<ShardFile, StoreError> {
        let opened = Opened::open(&path, maintain_fingerprints, index)?;
        Ok(ShardFile {
            path,
            index,
            maintain_fingerprints,
            opened: std::sync::RwLock::new(Some(Arc::new(opened))),
            broken: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Where this file sits in its store, as it records.
    fn layout(&self) -> Result<ShardLayout, StoreError> {
        self.with(|o| Ok(o.shard))
    }

    /// The open database, reopened first if an I/O error broke it.
    fn opened(&self) -> Result<Arc<Opened>, StoreError> {
        use std::sync::atomic::Ordering;
        if !self.broken.load(Ordering::Acquire) {
            if let Some(opened) = self.opened.read().expect("store lock").as_ref() {
                return Ok(Arc::clone(opened));
            }
        }
        let mut slot = self.opened.write().expect("store lock");
        if self.broken.load(Ordering::Acquire) {
            // Let go of the broken handle: the file's lock goes with the last one.
            *slot = None;
            self.broken.store(false, Ordering::Release);
        }
        if slot.is_none() {
            let opened = Opened::open(&self.path, self.maintain_fingerprints, self.index)?;
            tracing::warn!(path = %self.path.display(), "reopened the store after an I/O error");
            *slot = Some(Arc::new(opened));
        }
        Ok(Arc::clone(slot.as_ref().expect("just opened")))
    }

    /// Runs `op` on the open database; an I/O error makes the next operation reopen it.
    fn with<T>(&self, op: impl FnOnce(&Opened) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let opened = self.opened()?;
        let result = op(&opened);
        if let Err(e) = &result {
            if is_io_error(e) {
                self.broken
                    .store(true, std::sync::atomic::Ordering::Release);
            }
        }
        result
    }
}

impl Store for RedbStore {
    fn lookup(&self, id: &Id) -> Result<Option<Record>, StoreError> {
        self.shard(id).with(|o| o.lookup(id))
    }

    fn scan(
        &self,
        range: &IdRange,
        after: Option<&Id>,
        limit: usize,
    ) -> Result<Vec<(Id, Record)>, StoreError> {
        // Shards hold ascending slices of the id space: their scans, in order, are in order.
        let from = self.shard_of(&after.map_or(range.start, |a| *a.max(&range.start)));
        let mut out = Vec::new();
        for shard in &self.shards[from..] {
            if out.len() >= limit {
                break;
            }
            let found = shard.with(|o| o.scan(range, after, limit - out.len()))?;
            out.extend(found);
        }
        Ok(out)
    }

    fn put_batch(&self, items: &[PutItem<'_>]) -> Result<Vec<PutOutcome>, StoreError> {
        let mut mine: Vec<Vec<usize>> = vec![Vec::new(); self.shards.len()];
        for (i, item) in items.iter().enumerate() {
            mine[self.shard_of(&item.id)].push(i);
        }
        let busy: Vec<(usize, &Vec<usize>)> = mine
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.is_empty())
            .collect();
        if busy.len() <= 1 {
            let Some(&(index, _)) = busy.first() else {
                return Ok(Vec::new());
            };
            return self.shards[index].with(|o| o.put_batch(items));
        }
        // One transaction per shard, all at once: while one fsyncs, another writes pages.
        let commit = |(index, positions): (usize, &Vec<usize>)| {
            let part: Vec<PutItem<'_>> = positions.iter().map(|&i| items[i]).collect();
            self.shards[index].with(|o| o.put_batch(&part))
        };
        let results: Vec<Result<Vec<PutOutcome>, StoreError>> = std::thread::scope(|scope| {
            let (last, rest) = busy.split_last().expect("two or more");
            let others: Vec<_> = rest
                .iter()
                .map(|&job| scope.spawn(move || commit(job)))
                .collect();
            let last = commit(*last);
            let mut results: Vec<_> = others
                .into_iter()
                .map(|other| other.join().expect("a shard's commit panicked"))
                .collect();
            results.push(last);
            results
        });
        let mut outcomes = vec![PutOutcome::Written; items.len()];
        for ((_, positions), result) in busy.iter().zip(results) {
            for (&i, outcome) in positions.iter().zip(result?) {
                outcomes[i] = outcome;
            }
        }
        Ok(outcomes)
    }

    fn begin_upload(&self, id: Id, version: Version) -> Result<Box<dyn Upload>, StoreError> {
        self.shard(&id).with(|o| o.begin_upload(id, version))
    }

    fn open_value(&self, id: &Id) -> Result<Option<Box<dyn ValueReader>>, StoreError> {
        self.shard(id).with(|o| o.open_value(id))
    }

    fn remove_exact(&self, id: &Id, version: &Version) -> Result<bool, StoreError> {
        self.shard(id).with(|o| o.remove_exact(id, version))
    }

    fn mark_corrupt(&self, id: &Id, version: &Version) -> Result<bool, StoreError> {
        self.shard(id).with(|o| o.mark_corrupt(id, version))
    }

    fn partition_fingerprints(
        &self,
        first: u16,
        last: u16,
    ) -> Result<Vec<Fingerprint>, StoreError> {
        let mut out = Vec::new();
        if first > last {
            return Ok(out);
        }
        for index in shard_index(self.bits, first)..=shard_index(self.bits, last) {
            let (lo, hi) = self.partitions_of(index);
            let (lo, hi) = (lo.max(first), hi.min(last));
            out.extend(self.shards[index].with(|o| o.partition_fingerprints(lo, hi))?);
        }
        Ok(out)
    }

    fn rebuild_fingerprints(&self) -> Result<(), StoreError> {
        for shard in &self.shards {
            shard.with(Opened::rebuild_fingerprints)?;
        }
        Ok(())
    }
}

/// The page cache of a node's database.
pub const CACHE_BYTES: usize = 16 << 20;

impl Opened {
    /// Opens the file of shard `index` (a new file records `index` of [`SHARDS`]).
    fn open(path: &Path, maintain_fingerprints: bool, index: usize) -> Result<Opened, StoreError> {
        // redb caches up to 1 GiB by default; a node's memory must stay bounded and small
        // next to the values it moves, so the page cache is capped (for all shards).
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES / SHARDS)
            .create(path)
            .map_err(|e| open_error(path, e))?;
        let created = ShardLayout {
            index: index as u64,
            count: SHARDS as u64,
        };
        let shard = match prepared(&db).map_err(|e| open_error(path, e))? {
            Some(shard) => shard,
            None => prepare(&db, created).map_err(|e| open_error(path, e))?,
        };
        if shard.index != index as u64 {
            let mismatch = LayoutError::Shard {
                found: shard,
                expected: created,
            };
            return Err(open_error(path, mismatch));
        }
        let mirror = Mirror::load(&db)?;
        Ok(Opened {
            db: Arc::new(db),
            maintain_fingerprints,
            mirror,
            shard,
        })
    }

    /// Whether the file holds any object (a version row, tombstones included).
    fn holds_objects(&self) -> Result<bool, StoreError> {
        versions_held(&self.db).during("open: look for objects")
    }

    fn debug_corrupt_value(&self, id: &Id) -> Result<bool, StoreError> {
        const OP: &str = "debug_corrupt_value";
        let txn = self.db.begin_write().during(OP)?;
        let flipped = {
            let versions = txn.open_table(VERSIONS).during(OP)?;
            let mut chunks = txn.open_table(CHUNKS).during(OP)?;
            match read_row(&versions, id, OP)? {
                Some(row) if row.generation != 0 && row.record.version.size > 0 => {
                    let key = chunk_key(row.generation, 0);
                    let chunk = chunks.get(&key).during(OP)?.map(|c| c.value().to_vec());
                    let Some(mut chunk) = chunk.filter(|c| !c.is_empty()) else {
                        return Err(StoreError::Malformed {
                            id: *id,
                            what: "the first chunk of the value is missing",
                        });
                    };
                    let middle = chunk.len() / 2;
                    chunk[middle] ^= 0xff;
                    chunks.insert(&key, chunk.as_slice()).during(OP)?;
                    true
                }
                _ => false,
            }
        };
        if flipped {
            txn.commit().during(OP)?;
        } else {
            txn.abort().during(OP)?;
        }
        Ok(flipped)
    }

    fn debug_damage_fingerprints(&self) -> Result<(), StoreError> {
        const OP: &str = "debug_damage_fingerprints";
        let mut mirror = self.mirror.lock();
        let txn = self.db.begin_write().during(OP)?;
        {
            let mut table = txn.open_table(FINGERPRINTS).during(OP)?;
            let present = table
                .iter()
                .during(OP)?
                .map(|row| row.map(|(k, _)| k.value()))
                .collect::<Result<Vec<u16>, _>>()
                .during(OP)?;
            let garbage = [0xa5u8; FINGERPRINT_BYTES];
            for partition in present.iter().step_by(2) {
                table.insert(*partition, &garbage).during(OP)?;
            }
            if let Some(partition) = present.get(1) {
                table.remove(*partition).during(OP)?;
            }
            // `present` is sorted: the first gap is a partition with no row.
            if let Some(empty) = (0..=u16::MAX).find(|p| present.binary_search(p).is_err()) {
                table.insert(empty, &garbage).during(OP)?;
            }
            let mut log = txn.open_table(FINGERPRINT_LOG).during(OP)?;
            log.retain(|_, _| false).during(OP)?;
        }
        txn.commit().during(OP)?;
        // The mirror shows what the table holds, damage included.
        *mirror = Fingerprints::load(&self.db)?;
        Ok(())
    }
}

/// The value of `key` in `meta_v1`.
fn meta_value(
    meta: &impl ReadableTable<&'static str, u64>,
    key: &str,
) -> Result<Option<u64>, redb::StorageError> {
    Ok(meta.get(key)?.map(|g| g.value()))
}

/// Where the file sits in its store, if it needs nothing from [`prepare`]: its schema is
/// current and no upload is left. Read-only, so a store reopened on a full disk (after an
/// I/O error) can still serve reads.
fn prepared(db: &Database) -> Result<Option<ShardLayout>, Box<dyn StdError + Send + Sync>> {
    let txn = db.begin_read()?;
    let (meta, uploads) = match (txn.open_table(META), txn.open_table(UPLOADS)) {
        (Ok(meta), Ok(uploads)) => (meta, uploads),
        (Err(redb::TableError::TableDoesNotExist(_)), _)
        | (_, Err(redb::TableError::TableDoesNotExist(_))) => return Ok(None),
        (Err(e), _) | (_, Err(e)) => return Err(Box::new(e)),
    };
    let read = |key| meta_value(&meta, key);
    if read(SCHEMA_KEY)? != Some(SCHEMA) || read(NEXT_GENERATION_KEY)?.is_none() {
        return Ok(None);
    }
    if !uploads.is_empty()? {
        return Ok(None);
    }
    Ok(ShardLayout::recorded(read(SHARD_KEY)?, read(SHARDS_KEY)?))
}

/// Creates the tables, checks the schema, and discards unfinished uploads; returns where
/// the file sits in its store (`created` if the file is new).
fn prepare(
    db: &Database,
    created: ShardLayout,
) -> Result<ShardLayout, Box<dyn StdError + Send + Sync>> {
    let txn = db.begin_write()?;
    let shard;
    {
        let mut meta = txn.open_table(META)?;
        match meta_value(&meta, SCHEMA_KEY)? {
            None => {
                meta.insert(SCHEMA_KEY, SCHEMA)?;
                meta.insert(SHARD_KEY, created.index)?;
                meta.insert(SHARDS_KEY, created.count)?;
            }
            Some(SCHEMA) => {}
            Some(old @ (1 | 2)) => {
                // Before shards, a store was one file: it stays one shard.
                tracing::info!("upgrading the database from schema {old} to {SCHEMA}");
                meta.insert(SCHEMA_KEY, SCHEMA)?;
                meta.insert(SHARD_KEY, 0)?;
                meta.insert(SHARDS_KEY, 1)?;
            }
            Some(found) => return Err(Box::new(LayoutError::Schema { found })),
        }
        let (index, count) = (
            meta_value(&meta, SHARD_KEY)?,
            meta_value(&meta, SHARDS_KEY)?,
        );
        shard =
            ShardLayout::recorded(index, count).ok_or(LayoutError::ShardKeys { index, count })?;
        if meta_value(&meta, NEXT_GENERATION_KEY)?.is_none() {
            meta.insert(NEXT_GENERATION_KEY, 1)?;
        }
        txn.open_table(VERSIONS)?;
        txn.open_table(FINGERPRINTS)?;
        txn.open_table(FINGERPRINT_LOG)?;
        let mut uploads = txn.open_table(UPLOADS)?;
        let mut chunks = txn.open_table(CHUNKS)?;
        let pending = uploads
            .iter()?
            .map(|row| row.map(|(generation, id)| (generation.value(), Id(*id.value()))))
            .collect::<Result<Vec<_>, _>>()?;
        for (generation, id) in &pending {
            tracing::debug!(%id, generation, "discarding an unfinished upload");
            delete_chunks(&mut chunks, *generation, "open: discard unfinished uploads")?;
        }
        if !pending.is_empty() {
            tracing::info!(
                count = pending.len(),
                "discarded uploads left unfinished by a previous process"
            );
        }
        uploads.retain(|_, _| false)?;
    }
    txn.commit()?;
    Ok(shard)
}

/// Takes the next `count` generations from `meta_v1`; returns the first.
fn allocate_generations(
    meta: &mut Table<'_, &'static str, u64>,
    count: u64,
    op: &'static str,
) -> Result<u64, StoreError> {
    let first = meta_value(meta, NEXT_GENERATION_KEY)
        .during(op)?
        .unwrap_or(1);
    if count > 0 {
        meta.insert(NEXT_GENERATION_KEY, first + count).during(op)?;
    }
    Ok(first)
}

impl Store for Opened {
    fn lookup(&self, id: &Id) -> Result<Option<Record>, StoreError> {
        const OP: &str = "lookup";
        let txn = self.db.begin_read().during(OP)?;
        let versions = txn.open_table(VERSIONS).during(OP)?;
        Ok(read_row(&versions, id, OP)?.map(|row| row.record))
    }

    fn scan(
        &self,
        range: &IdRange,
        after: Option<&Id>,
        limit: usize,
    ) -> Result<Vec<(Id, Record)>, StoreError> {
        const OP: &str = "scan";
        let start = match after {
            None => range.start,
            Some(after) => match after.successor() {
                Some(next) => next.max(range.start),
                None => return Ok(Vec::new()),
            },
        };
        let end = range.end.map(|end| end.0);
        if limit == 0 || end.is_some_and(|end| end <= start.0) {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read().during(OP)?;
        let versions = txn.open_table(VERSIONS).during(OP)?;
        let bounds = (
            Bound::Included(&start.0),
            end.as_ref().map_or(Bound::Unbounded, Bound::Excluded),
        );
        let mut out = Vec::new();
        for row in versions
            .range::<&[u8; ID_LEN]>(bounds)
            .during(OP)?
            .take(limit)
        {
            let (key, value) = row.during(OP)?;
            let id = Id(*key.value());
            out.push((id, VersionRow::decode(&id, value.value())?.record));
        }
        Ok(out)
    }

    fn put_batch(&self, items: &[PutItem<'_>]) -> Result<Vec<PutOutcome>, StoreError> {
        const OP: &str = "put_batch";
        if items.is_empty() {
            return Ok(Vec::new());
        }
        // Hash before taking the write lock: it is the slow part of a batch of small values.
        // On rayon's pool, not the calling thread: that is a node's one writer thread, which
        // a bulk copy keeps busy (hashing there held a 2 GiB copy at 133-143 MB/s, 142-150
        // spread over both cores).
        let matches: Vec<bool> = items
            .par_iter()
            .map(|item| {
                let sum = blake3::hash(item.value);
                value_matches(&item.version, item.value.len() as u64, sum.as_bytes())
            })
            .collect();
        let with_chunks = items.iter().filter(|item| !item.value.is_empty()).count() as u64;
        let mut mirror = self.mirror.lock();
        let mut txn = self.db.begin_write().during(OP)?;
        txn.set_durability(Durability::Immediate).during(OP)?;
        // Visit the items in id order, so the version pages they touch are visited in order;
        // the sort is stable, so items of one id keep the order that decides their outcomes.
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by_key(|&i| items[i].id);
        let mut outcomes = vec![PutOutcome::Written; items.len()];
        let changes = {
            let mut meta = txn.open_table(META).during(OP)?;
            // One generation per item with a value, refused or not: unused numbers are free.
            let mut next_generation = allocate_generations(&mut meta, with_chunks, OP)?;
            let mut tables = RecordTables::open(&txn, OP, &mirror, self.maintain_fingerprints)?;
            for i in order {
                let item = &items[i];
                if !matches[i] {
                    // Rare: a lookup tells a stale write from a bad checksum; nothing is written.
                    outcomes[i] = match read_row(&tables.versions, &item.id, OP)? {
                        Some(stored) if !accepts(Some(&stored.record), &item.version) => {
                            PutOutcome::Stale {
                                stored: stored.record.version,
                            }
                        }
                        _ => PutOutcome::ChecksumMismatch,
                    };
                    continue;
                }
                let generation = if item.value.is_empty() {
                    0
                } else {
                    next_generation += 1;
                    next_generation - 1
                };
                let new = VersionRow {
                    record: Record {
                        version: item.version,
                        corrupt: false,
                    },
                    generation,
                };
                // The row is written first and the old one comes back from the write; a
                // refused (stale) write puts it back, and stale writes are the rare case.
                let old = tables.swap_row(&item.id, &new, OP)?;
                if let Some(stored) = old.filter(|s| !accepts(Some(&s.record), &item.version)) {
                    tables
                        .versions
                        .insert(&item.id.0, &stored.encode())
                        .during(OP)?;
                    outcomes[i] = PutOutcome::Stale {
                        stored: stored.record.version,
                    };
                    continue;
                }
                write_chunks(&mut tables.chunks, generation, item.value, OP)?;
                tables.replaced(&item.id, old, new, OP)?;
                outcomes[i] = PutOutcome::Written;
            }
            tables.finish(OP)?
        };
        txn.commit().during(OP)?;
        Mirror::apply(&mut mirror, changes);
        Ok(outcomes)
    }

    fn begin_upload(&self, id: Id, version: Version) -> Result<Box<dyn Upload>, StoreError> {
        const OP: &str = "begin_upload";
        let mut txn = self.db.begin_write().during(OP)?;
        // Not durable on its own, and need not be: redb makes commits durable in order, so
        // this row is on disk before (or with) any chunk staged under it or the commit that
        // uses it; a crash before then loses the row and the chunks together.
        txn.set_durability(Durability::None).during(OP)?;
        let generation;
        {
            let mut meta = txn.open_table(META).during(OP)?;
            generation = allocate_generations(&mut meta, 1, OP)?;
            let mut uploads = txn.open_table(UPLOADS).during(OP)?;
            uploads.insert(generation, &id.0).during(OP)?;
        }
        txn.commit().during(OP)?;
        Ok(Box::new(RedbUpload {
            db: Arc::clone(&self.db),
            mirror: self.mirror.clone(),
            maintain_fingerprints: self.maintain_fingerprints,
            id,
            version,
            generation,
            staged: 0,
            staged_bytes: 0,
            buffer: Vec::new(),
            received: 0,
            hasher: blake3::Hasher::new(),
            broken: false,
            finished: false,
        }))
    }

    fn open_value(&self, id: &Id) -> Result<Option<Box<dyn ValueReader>>, StoreError> {
        const OP: &str = "open_value";
        let txn = self.db.begin_read().during(OP)?;
        let versions = txn.open_table(VERSIONS).during(OP)?;
        let Some(row) = read_row(&versions, id, OP)? else {
            return Ok(None);
        };
        let chunks = txn.open_table(CHUNKS).during(OP)?;
        Ok(Some(Box::new(RedbValueReader {
            chunks,
            _snapshot: txn,
            id: *id,
            row,
            next_index: 0,
            remaining: row.record.version.size,
        })))
    }

    fn remove_exact(&self, id: &Id, version: &Version) -> Result<bool, StoreError> {
        const OP: &str = "remove_exact";
        let mut mirror = self.mirror.lock();
        let mut txn = self.db.begin_write().during(OP)?;
        txn.set_durability(Durability::Immediate).during(OP)?;
        let changes = {
            let mut tables = RecordTables::open(&txn, OP, &mirror, self.maintain_fingerprints)?;
            match read_row(&tables.versions, id, OP)? {
                Some(row) if row.record.version == *version => {
                    tables.versions.remove(&id.0).during(OP)?;
                    delete_chunks(&mut tables.chunks, row.generation, OP)?;
                    tables.fingerprint_remove(id, &row.record, OP)?;
                    Some(tables.finish(OP)?)
                }
                _ => None,
            }
        };
        let Some(changes) = changes else {
            txn.abort().during(OP)?;
            return Ok(false);
        };
        txn.commit().during(OP)?;
        Mirror::apply(&mut mirror, changes);
        Ok(true)
    }

    fn mark_corrupt(&self, id: &Id, version: &Version) -> Result<bool, StoreError> {
        const OP: &str = "mark_corrupt";
        let mut mirror = self.mirror.lock();
        let mut txn = self.db.begin_write().during(OP)?;
        txn.set_durability(Durability::Immediate).during(OP)?;
        let (holds, changed) = {
            let mut tables = RecordTables::open(&txn, OP, &mirror, self.maintain_fingerprints)?;
            match read_row(&tables.versions, id, OP)? {
                Some(row) if row.record.version == *version && !row.record.corrupt => {
                    let marked = VersionRow {
                        record: Record {
                            corrupt: true,
                            ..row.record
                        },
                        ..row
                    };
                    tables.replace(id, Some(row), marked, OP)?;
                    (true, Some(tables.finish(OP)?))
                }
                // Already marked: nothing to change.
                Some(row) if row.record.version == *version => (true, None),
                _ => (false, None),
            }
        };
        match changed {
            Some(changes) => {
                txn.commit().during(OP)?;
                Mirror::apply(&mut mirror, changes);
            }
            None => txn.abort().during(OP)?,
        }
        Ok(holds)
    }

    fn partition_fingerprints(
        &self,
        first: u16,
        last: u16,
    ) -> Result<Vec<Fingerprint>, StoreError> {
        if first > last {
            return Ok(Vec::new());
        }
        // The mirror holds exactly the committed table (see [`Mirror`]).
        Ok(self.mirror.lock().all[usize::from(first)..=usize::from(last)].to_vec())
    }

    fn rebuild_fingerprints(&self) -> Result<(), StoreError> {
        const OP: &str = "rebuild_fingerprints";
        let mut mirror = self.mirror.lock();
        let mut txn = self.db.begin_write().during(OP)?;
        txn.set_durability(Durability::Immediate).during(OP)?;
        {
            let versions = txn.open_table(VERSIONS).during(OP)?;
            let mut rebuilt: BTreeMap<u16, Fingerprint> = BTreeMap::new();
            for row in versions.iter().during(OP)? {
                let (key, value) = row.during(OP)?;
                let id = Id(*key.value());
                let row = VersionRow::decode(&id, value.value())?;
                rebuilt
                    .entry(id.partition())
                    .or_insert(Fingerprint::EMPTY)
                    .insert_record(&id, &row.record);
            }
            let mut table = txn.open_table(FINGERPRINTS).during(OP)?;
            table.retain(|_, _| false).during(OP)?;
            for (partition, fp) in &rebuilt {
                table.insert(*partition, &fp.to_bytes()).during(OP)?;
            }
            let mut log = txn.open_table(FINGERPRINT_LOG).during(OP)?;
            log.retain(|_, _| false).during(OP)?;
        }
        txn.commit().during(OP)?;
        *mirror = Fingerprints::load(&self.db)?;
        Ok(())
    }
}

/// A value being uploaded: full chunks are staged on disk as they fill, so it holds at most
/// one chunk in memory whatever the value's size.
struct RedbUpload {
    db: Arc<Database>,
    mirror: Mirror,
    maintain_fingerprints: bool,
    id: Id,
    version: Version,
    generation: u64,
    /// Chunks already staged in `chunks_v1`.
    staged: u32,
    /// Bytes in those chunks.
    staged_bytes: u64,
    /// The chunk being filled (shorter than the chunk it will be between calls).
    buffer: Vec<u8>,
    received: u64,
    hasher: blake3::Hasher,
    /// A write failed part-way: the staged chunks no longer match the hash, so the upload
    /// refuses to go on.
    broken: bool,
    /// Committed: nothing to discard on drop.
    finished: bool,
}

impl RedbUpload {
    /// Stages one full chunk in its own transaction. Not durable: it only matters once the
    /// commit that references it is, and that commit makes it durable too.
    fn stage(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        const OP: &str = "upload write";
        let mut txn = self.db.begin_write().during(OP)?;
        txn.set_durability(Durability::None).during(OP)?;
        {
            let mut chunks = txn.open_table(CHUNKS).during(OP)?;
            chunks
                .insert(&chunk_key(self.generation, self.staged), chunk)
                .during(OP)?;
        }
        txn.commit().during(OP)?;
        self.staged += 1;
        self.staged_bytes += chunk.len() as u64;
        Ok(())
    }

    fn write_all(&mut self, mut bytes: &[u8]) -> Result<(), StoreError> {
        while !bytes.is_empty() {
            let left = self.version.size - self.staged_bytes;
            let want = stored_chunk_len(left);
            if want as u64 == left {
                // The last chunk: the commit writes it, in its own transaction.
                self.buffer.extend_from_slice(bytes);
                return Ok(());
            }
            if self.buffer.is_empty() && bytes.len() >= want {
                // A whole chunk at hand: stage it without copying.
                let (chunk, rest) = bytes.split_at(want);
                self.stage(chunk)?;
                bytes = rest;
                continue;
            }
            let take = (want - self.buffer.len()).min(bytes.len());
            self.buffer.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buffer.len() == want {
                let chunk = std::mem::take(&mut self.buffer);
                self.stage(&chunk)?;
                self.buffer = chunk;
                self.buffer.clear();
            }
        }
        Ok(())
    }
}

impl Upload for RedbUpload {
    fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        if self.broken {
            return Err(StoreError::backend("upload write", UploadBroken));
        }
        if self.received + chunk.len() as u64 > self.version.size {
            return Err(StoreError::TooLong {
                id: self.id,
                size: self.version.size,
            });
        }
        self.received += chunk.len() as u64;
        self.hasher.update(chunk);
        let written = self.write_all(chunk);
        self.broken = written.is_err();
        written
    }

    fn commit(mut self: Box<Self>) -> Result<PutOutcome, StoreError> {
        const OP: &str = "upload commit";
        if self.broken {
            return Err(StoreError::backend(OP, UploadBroken));
        }
        let matches = value_matches(
            &self.version,
            self.received,
            self.hasher.finalize().as_bytes(),
        );
        let mirror_handle = self.mirror.clone();
        let mut mirror = mirror_handle.lock();
        let mut txn = self.db.begin_write().during(OP)?;
        txn.set_durability(Durability::Immediate).during(OP)?;
        let (outcome, changes) = {
            let mut tables = RecordTables::open(&txn, OP, &mirror, self.maintain_fingerprints)?;
            let mut uploads = txn.open_table(UPLOADS).during(OP)?;
            let old = read_row(&tables.versions, &self.id, OP)?;
            let outcome = match old {
                Some(stored) if !accepts(Some(&stored.record), &self.version) => {
                    PutOutcome::Stale {
                        stored: stored.record.version,
                    }
                }
                _ if !matches => PutOutcome::ChecksumMismatch,
                _ => PutOutcome::Written,
            };
            if outcome == PutOutcome::Written {
                if !self.buffer.is_empty() {
                    let key = chunk_key(self.generation, self.staged);
                    tables
                        .chunks
                        .insert(&key, self.buffer.as_slice())
                        .during(OP)?;
                }
                let new = VersionRow {
                    record: Record {
                        version: self.version,
                        corrupt: false,
                    },
                    generation: if self.version.size == 0 {
                        0
                    } else {
                        self.generation
                    },
                };
                tables.replace(&self.id, old, new, OP)?;
            } else {
                delete_chunks(&mut tables.chunks, self.generation, OP)?;
            }
            uploads.remove(self.generation).during(OP)?;
            (outcome, tables.finish(OP)?)
        };
        txn.commit().during(OP)?;
        Mirror::apply(&mut mirror, changes);
        self.finished = true;
        Ok(outcome)
    }
}

/// Deletes an abandoned upload's staged chunks and its `uploads_v1` row.
fn discard_upload(db: &Database, generation: u64) -> Result<(), StoreError> {
    const OP: &str = "discard upload";
    let mut txn = db.begin_write().during(OP)?;
    // If a crash loses this, the next open finds the upload row and discards it then.
    txn.set_durability(Durability::None).during(OP)?;
    {
        let mut chunks = txn.open_table(CHUNKS).during(OP)?;
        delete_chunks(&mut chunks, generation, OP)?;
        let mut uploads = txn.open_table(UPLOADS).during(OP)?;
        uploads.remove(generation).during(OP)?;
    }
    txn.commit().during(OP)
}

impl Drop for RedbUpload {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Err(e) = discard_upload(&self.db, self.generation) {
            tracing::warn!(
                id = %self.id,
                generation = self.generation,
                error = %e,
                "cannot discard an abandoned upload now; the next open will"
            );
        }
    }
}

/// Reads one generation of a value from the snapshot it was opened in.
struct RedbValueReader {
    chunks: ReadOnlyTable<&'static [u8; CHUNK_KEY_BYTES], &'static [u8]>,
    /// Keeps the snapshot the version row was read from alive while chunks are read.
    _snapshot: ReadTransaction,
    id: Id,
    row: VersionRow,
    next_index: u32,
    remaining: u64,
}

impl RedbValueReader {
    /// Appends the next chunk to `out` straight from its page; false at the end.
    fn append_chunk(&mut self, out: &mut Vec<u8>) -> Result<bool, StoreError> {
        const OP: &str = "read value";
        if self.remaining == 0 {
            return Ok(false);
        }
        let key = chunk_key(self.row.generation, self.next_index);
        let Some(chunk) = self.chunks.get(&key).during(OP)? else {
            return Err(StoreError::Malformed {
                id: self.id,
                what: "a chunk of the value is missing",
            });
        };
        let chunk = chunk.value();
        let len = chunk.len() as u64;
        if len == 0 || len > self.remaining || chunk.len() > CHUNK_SIZE {
            return Err(StoreError::Malformed {
                id: self.id,
                what: "a chunk of the value has the wrong length",
            });
        }
        out.extend_from_slice(chunk);
        self.remaining -= len;
        self.next_index += 1;
        Ok(true)
    }
}

impl ValueReader for RedbValueReader {
    fn version(&self) -> Version {
        self.row.record.version
    }

    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        let mut chunk = Vec::new();
        Ok(self.append_chunk(&mut chunk)?.then_some(chunk))
    }

    fn read_to_end(&mut self, out: &mut Vec<u8>) -> Result<(), StoreError> {
        while self.append_chunk(out)? {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    /// The open database of every shard.
    fn files(store: &RedbStore) -> Vec<Arc<Opened>> {
        store.shards.iter().map(|s| s.opened().unwrap()).collect()
    }

    fn chunk_rows(store: &RedbStore) -> Vec<[u8; CHUNK_KEY_BYTES]> {
        let mut rows = Vec::new();
        for file in files(store) {
            let txn = file.db.begin_read().expect("begin_read");
            let chunks = txn.open_table(CHUNKS).expect("chunks table");
            rows.extend(
                chunks
                    .iter()
                    .expect("iter")
                    .map(|row| *row.expect("row").0.value()),
            );
        }
        rows
    }

    fn upload_rows(store: &RedbStore) -> usize {
        let count = |file: Arc<Opened>| {
            let txn = file.db.begin_read().expect("begin_read");
            let uploads = txn.open_table(UPLOADS).expect("uploads table");
            uploads.iter().expect("iter").count()
        };
        files(store).into_iter().map(count).sum()
    }

    fn value(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn store_redb_passes_conformance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = std::cell::Cell::new(0);
        conformance::run_all(&|| {
            n.set(n.get() + 1);
            let path = dir.path().join(format!("{}.redb", n.get()));
            Box::new(RedbStore::open(&path).expect("open"))
        });
    }

    #[test]
    fn store_redb_version_row_round_trips_and_refuses_a_bad_flag() {
        let id = Id::from_key(b"k");
        let row = VersionRow {
            record: Record {
                version: Version::of_value(b"v", 7, 3),
                corrupt: true,
            },
            generation: 0x0102_0304_0506_0708,
        };
        let bytes = row.encode();
        assert_eq!(bytes[VERSION_BYTES], 1);
        assert_eq!(
            bytes[VERSION_BYTES + 1],
            0x08,
            "generation is little-endian"
        );
        assert_eq!(VersionRow::decode(&id, &bytes).expect("decode"), row);
        let mut bad = bytes;
        bad[VERSION_BYTES] = 2;
        assert!(matches!(
            VersionRow::decode(&id, &bad),
            Err(StoreError::Malformed { .. })
        ));
    }

    #[test]
    fn store_redb_overwrite_and_remove_delete_old_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(&dir.path().join("s.redb")).expect("open");
        let id = Id::from_key(b"big");
        let big = value(2 * CHUNK_SIZE + 1);
        let v1 = Version::of_value(&big, 1, 0);
        let put = |version, value: &[u8]| {
            store
                .put_batch(&[PutItem { id, version, value }])
                .expect("put_batch")
        };
        assert_eq!(put(v1, &big), vec![PutOutcome::Written]);
        assert_eq!(chunk_rows(&store).len(), 3);
        let v2 = Version::of_value(b"small", 2, 0);
        assert_eq!(put(v2, b"small"), vec![PutOutcome::Written]);
        assert_eq!(chunk_rows(&store).len(), 1);
        let v3 = Version::tombstone(3);
        assert_eq!(put(v3, b""), vec![PutOutcome::Written]);
        assert_eq!(chunk_rows(&store).len(), 0, "a tombstone has no chunks");
        let v4 = Version::of_value(&big, 4, 0);
        let mut up = store.begin_upload(id, v4).expect("begin_upload");
        up.write(&big).expect("write");
        assert_eq!(up.commit().expect("commit"), PutOutcome::Written);
        assert_eq!(chunk_rows(&store).len(), 3);
        assert_eq!(upload_rows(&store), 0);
        assert!(store.remove_exact(&id, &v4).expect("remove_exact"));
        assert!(chunk_rows(&store).is_empty());
    }

    #[test]
    fn store_redb_refused_and_dropped_uploads_leave_no_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(&dir.path().join("s.redb")).expect("open");
        let id = Id::from_key(b"up");
        let big = value(3 * CHUNK_SIZE);
        let v = Version::of_value(&big, 5, 0);

        let mut up = store.begin_upload(id, v).expect("begin_upload");
        up.write(&big[..2 * CHUNK_SIZE + 7]).expect("write");
        assert_eq!(
            chunk_rows(&store).len(),
            2,
            "full chunks are staged as they fill"
        );
        assert_eq!(upload_rows(&store), 1);
        drop(up);
        assert!(chunk_rows(&store).is_empty());
        assert_eq!(upload_rows(&store), 0);

        let mut wrong = big.clone();
        wrong[0] ^= 1;
        let mut up = store.begin_upload(id, v).expect("begin_upload");
        up.write(&wrong).expect("write");
        assert_eq!(up.commit().expect("commit"), PutOutcome::ChecksumMismatch);
        assert!(chunk_rows(&store).is_empty());
        assert_eq!(upload_rows(&store), 0);

        assert_eq!(
            store
                .put_batch(&[PutItem {
                    id,
                    version: v,
                    value: &big
                }])
                .expect("put_batch"),
            vec![PutOutcome::Written]
        );
        let mut up = store.begin_upload(id, v).expect("begin_upload");
        up.write(&big).expect("write");
        assert_eq!(
            up.commit().expect("commit"),
            PutOutcome::Stale { stored: v }
        );
        // Three of 1 MiB less LEAF_OVERHEAD, and the 60 bytes left.
        assert_eq!(
            chunk_rows(&store).len(),
            4,
            "only the stored value's chunks"
        );
        assert_eq!(upload_rows(&store), 0);
    }

    #[test]
    fn store_redb_open_discards_uploads_left_by_a_crash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        let id = Id::from_key(b"crash");
        {
            let store = RedbStore::open(&path).expect("open");
            let v = Version::of_value(b"kept", 1, 0);
            store
                .put_batch(&[PutItem {
                    id,
                    version: v,
                    value: b"kept",
                }])
                .expect("put_batch");
            // What a process killed mid-upload leaves: a recorded upload and staged chunks.
            let txn = store
                .shard(&id)
                .opened()
                .unwrap()
                .db
                .begin_write()
                .expect("begin_write");
            {
                let mut uploads = txn.open_table(UPLOADS).expect("uploads");
                uploads.insert(999, &id.0).expect("insert");
                let mut chunks = txn.open_table(CHUNKS).expect("chunks");
                for index in 0..3 {
                    chunks
                        .insert(&chunk_key(999, index), [7u8; 16].as_slice())
                        .expect("insert");
                }
            }
            txn.commit().expect("commit");
            assert_eq!(chunk_rows(&store).len(), 4);
        }
        let store = RedbStore::open(&path).expect("reopen");
        assert_eq!(upload_rows(&store), 0);
        let left = chunk_rows(&store);
        assert_eq!(left.len(), 1, "only the committed value's chunk is left");
        assert_ne!(left[0][..8], 999u64.to_be_bytes());
        assert_eq!(
            store.lookup(&id).expect("lookup").map(|r| r.version),
            Some(Version::of_value(b"kept", 1, 0))
        );
    }

    /// Entries in the log and rows in the table, read from the file.
    /// Per shard.
    fn log_and_table_rows(store: &RedbStore) -> Vec<(usize, usize)> {
        let rows = |file: Arc<Opened>| {
            let txn = file.db.begin_read().expect("begin_read");
            let log = txn.open_table(FINGERPRINT_LOG).expect("log");
            let entries = log
                .iter()
                .expect("iter")
                .map(|row| row.expect("row").1.value().len() / LOG_ENTRY_BYTES)
                .sum();
            let table = txn.open_table(FINGERPRINTS).expect("table");
            (entries, table.len().expect("len") as usize)
        };
        files(store).into_iter().map(rows).collect()
    }

    #[test]
    fn store_redb_logged_fingerprints_survive_reopening_and_fold_into_the_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        let batch = |round: usize, tombstone: bool| -> Vec<(Id, Version)> {
            (0..4096)
                .map(|i| {
                    let id = Id::from_key(format!("k{round}-{i}").as_bytes());
                    let version = if tombstone {
                        Version::tombstone(2)
                    } else {
                        Version::of_value(b"", 1, 0)
                    };
                    (id, version)
                })
                .collect()
        };
        let put = |store: &RedbStore, items: &[(Id, Version)]| {
            let puts: Vec<PutItem<'_>> = items
                .iter()
                .map(|(id, version)| PutItem {
                    id: *id,
                    version: *version,
                    value: b"",
                })
                .collect();
            store.put_batch(&puts).expect("put_batch");
        };
        let rebuilt = |store: &RedbStore| {
            let copies = dir.path().join("copy");
            std::fs::create_dir_all(&copies).expect("mkdir");
            for file in store.paths() {
                std::fs::copy(&file, copies.join(file.file_name().expect("name"))).expect("copy");
            }
            let copy = RedbStore::open(&copies.join("s.redb")).expect("open copy");
            copy.rebuild_fingerprints().expect("rebuild");
            copy.partition_fingerprints(0, u16::MAX).expect("fps")
        };
        let mut folded = false;
        let mut round = 0;
        while !folded {
            let store = RedbStore::open(&path).expect("open");
            for _ in 0..3 {
                put(&store, &batch(round, false));
                // Tombstoning half of the previous round moves elements out of logged rows.
                if round > 0 {
                    put(&store, &batch(round - 1, true)[..2048]);
                }
                round += 1;
            }
            let shards = log_and_table_rows(&store);
            folded = shards.iter().all(|&(_, rows)| rows > 0);
            for (entries, _) in shards {
                assert!(entries <= FOLD_AT, "{entries} entries in a shard's log");
            }
            let fps = store.partition_fingerprints(0, u16::MAX).expect("fps");
            drop(store);
            let reopened = RedbStore::open(&path).expect("reopen");
            assert_eq!(
                reopened.partition_fingerprints(0, u16::MAX).expect("fps"),
                fps,
                "round {round}: the log replayed over the table"
            );
            assert_eq!(fps, rebuilt(&reopened), "round {round}: rebuilt");
            assert!(round < 60, "the log never folded");
        }
    }

    #[test]
    fn store_redb_chunks_fill_their_pages() {
        for size in [
            1u64,
            4076,
            4077,
            65_516,
            65_536,
            100_000,
            1 << 20,
            (1 << 20) + 1,
            5 << 20,
        ] {
            let mut left = size;
            let mut cuts = Vec::new();
            while left > 0 {
                let len = stored_chunk_len(left);
                assert!(len > 0 && len <= CHUNK_SIZE && len as u64 <= left);
                cuts.push(len);
                left -= len as u64;
            }
            for (i, len) in cuts.iter().enumerate() {
                let leaf = len + LEAF_OVERHEAD;
                assert!(
                    leaf <= PAGE_BYTES || leaf.is_power_of_two(),
                    "{size} bytes: chunk {i} of {len} bytes takes a leaf of {leaf}"
                );
            }
        }
        assert_eq!(stored_chunk_len(65_536), 65_516);
        assert_eq!(stored_chunk_len(20), 20);
    }

    #[test]
    fn store_redb_values_of_power_of_two_sizes_take_little_more_than_their_size_in_pages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        let store = RedbStore::open(&path).expect("open");
        // Pages in use (the file itself grows ahead of them).
        let allocated = |store: &RedbStore| {
            let pages = |file: Arc<Opened>| {
                let txn = file.db.begin_write().expect("begin_write");
                let stats = txn.stats().expect("stats");
                stats.allocated_pages() * stats.page_size() as u64
            };
            files(store).into_iter().map(pages).sum::<u64>()
        };
        let before = allocated(&store);
        let count = 128u64;
        let values: Vec<(Id, Vec<u8>)> = (0..count)
            .map(|i| (Id::from_key(&i.to_be_bytes()), value(64 << 10)))
            .collect();
        for batch in values.chunks(16) {
            let puts: Vec<PutItem<'_>> = batch
                .iter()
                .map(|(id, v)| PutItem {
                    id: *id,
                    version: Version::of_value(v, 1, 0),
                    value: v,
                })
                .collect();
            store.put_batch(&puts).expect("put_batch");
        }
        // And through uploads, in pieces that do not line up with chunks.
        for i in 0..count {
            let v = value(64 << 10);
            let mut up = store
                .begin_upload(
                    Id::from_key(&(count + i).to_be_bytes()),
                    Version::of_value(&v, 1, 0),
                )
                .expect("begin_upload");
            for piece in v.chunks(10_000) {
                up.write(piece).expect("write");
            }
            assert_eq!(up.commit().expect("commit"), PutOutcome::Written);
        }
        let grown = allocated(&store) - before;
        let data = 2 * count * (64 << 10);
        // Cut at 64 KiB, each value took 128 KiB of pages: twice this.
        assert!(
            grown < data + data / 4,
            "{data} bytes of values took {grown} bytes of pages"
        );
        let mut read = Vec::new();
        store
            .open_value(&values[5].0)
            .expect("open")
            .expect("value")
            .read_to_end(&mut read)
            .expect("read");
        assert!(read == values[5].1);
    }

    #[test]
    fn store_redb_refuses_an_unknown_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        {
            let store = RedbStore::open(&path).expect("open");
            let txn = store.shards[0]
                .opened()
                .unwrap()
                .db
                .begin_write()
                .expect("begin_write");
            txn.open_table(META)
                .expect("meta")
                .insert(SCHEMA_KEY, 99)
                .expect("insert");
            txn.commit().expect("commit");
        }
        match RedbStore::open(&path) {
            Err(StoreError::Open { path: p, source }) => {
                assert_eq!(p, path);
                assert!(source.to_string().contains("schema is 99"), "{source}");
            }
            other => panic!("expected an open error, got {other:?}"),
        }
    }

    /// Records whose ids spread over the whole id space, with their 4-byte values.
    fn spread(keys: std::ops::Range<u32>) -> Vec<(Id, Version, [u8; 4])> {
        keys.map(|i| {
            let value = i.to_be_bytes();
            (Id::from_key(&value), Version::of_value(&value, 1, 0), value)
        })
        .collect()
    }

    /// How many ids `store` holds (tombstones included).
    fn held(store: &dyn Store) -> usize {
        store
            .scan(&IdRange::ALL, None, usize::MAX)
            .expect("scan")
            .len()
    }

    fn put_spread(store: &dyn Store, records: &[(Id, Version, [u8; 4])]) {
        let outcomes = store.put_batch(&PutItem::each(records)).expect("put_batch");
        assert!(outcomes.iter().all(|o| *o == PutOutcome::Written));
    }

    #[test]
    fn store_redb_shards_hold_their_slices_of_the_id_space() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        let store = RedbStore::open(&path).expect("open");
        assert_eq!(store.paths().len(), SHARDS);
        assert_eq!(store.paths()[1], dir.path().join("s-1.redb"));
        let records = spread(0..400);
        put_spread(&store, &records);
        // Each file holds exactly the ids of its slice, and a scan reads them in id order.
        for (index, file) in files(&store).iter().enumerate() {
            let held = file.scan(&IdRange::ALL, None, usize::MAX).expect("scan");
            assert!(held.len() > 100, "shard {index} holds {}", held.len());
            assert!(held.iter().all(|(id, _)| store.shard_of(id) == index));
        }
        let mut expected: Vec<Id> = records.iter().map(|(id, ..)| *id).collect();
        expected.sort();
        let scanned: Vec<Id> = store
            .scan(&IdRange::ALL, None, usize::MAX)
            .expect("scan")
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(scanned, expected);
        // Pages of a scan that cross from one shard to the next lose nothing.
        let mut paged = Vec::new();
        loop {
            let batch = store.scan(&IdRange::ALL, paged.last(), 7).expect("scan");
            if batch.is_empty() {
                break;
            }
            paged.extend(batch.into_iter().map(|(id, _)| id));
        }
        assert_eq!(paged, expected);
        // Fingerprints across the boundary are each shard's own.
        let fps = store
            .partition_fingerprints(0, u16::MAX)
            .expect("fingerprints");
        assert_eq!(fps.len(), 1 << 16);
        let (_, last_of_first) = store.partitions_of(0);
        let mut own = files(&store)[0]
            .partition_fingerprints(0, last_of_first)
            .expect("first");
        own.extend(
            files(&store)[1]
                .partition_fingerprints(last_of_first + 1, u16::MAX)
                .expect("second"),
        );
        assert_eq!(fps, own);
        assert!(fps.iter().filter(|f| **f != Fingerprint::EMPTY).count() > 300);
    }

    #[test]
    fn store_redb_of_schema_2_opens_as_one_shard_with_everything_it_held() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        let records = spread(0..100);
        {
            // A store written before shards: one file, every id, schema 2, no shard keys.
            let file = Opened::open(&path, true, 0).expect("open");
            put_spread(&file, &records);
            let txn = file.db.begin_write().expect("begin_write");
            {
                let mut meta = txn.open_table(META).expect("meta");
                meta.insert(SCHEMA_KEY, 2).expect("insert");
                meta.remove(SHARD_KEY).expect("remove");
                meta.remove(SHARDS_KEY).expect("remove");
            }
            txn.commit().expect("commit");
        }
        let store = RedbStore::open(&path).expect("open");
        assert_eq!(store.paths(), vec![path.clone()]);
        assert!(!dir.path().join("s-1.redb").exists());
        for (id, version, _) in &records {
            assert_eq!(
                store.lookup(id).expect("lookup").map(|r| r.version),
                Some(*version)
            );
        }
        let fps = store
            .partition_fingerprints(0, u16::MAX)
            .expect("fingerprints");
        assert!(fps.iter().filter(|f| **f != Fingerprint::EMPTY).count() > 90);
        // And later writes anywhere in the id space go to that one file.
        put_spread(&store, &spread(100..150));
        drop(store);
        let store = RedbStore::open(&path).expect("reopen");
        assert_eq!(held(&store), 150);
    }

    #[test]
    fn store_redb_refuses_mixed_up_shard_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        drop(RedbStore::open(&path).expect("open"));
        let second = dir.path().join("s-1.redb");
        std::fs::copy(&path, &second).expect("copy");
        match RedbStore::open(&path) {
            Err(StoreError::Open { path: p, source }) => {
                assert_eq!(p, second);
                let message = source.to_string();
                assert!(
                    message.contains("is shard 0 of 2, expected shard 1 of 2"),
                    "{message}"
                );
            }
            other => panic!("expected an open error, got {other:?}"),
        }
    }

    #[test]
    fn store_redb_refuses_a_store_with_a_file_missing_and_creates_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, second) = (dir.path().join("s.redb"), dir.path().join("s-1.redb"));
        put_spread(&RedbStore::open(&first).expect("open"), &spread(0..100));
        let kept = dir.path().join("kept");
        for (lost, holder) in [(&second, &first), (&first, &second)] {
            std::fs::rename(lost, &kept).expect("lose a file");
            match RedbStore::open(&first) {
                Err(StoreError::Open { path, source }) => {
                    assert_eq!(&path, lost);
                    let message = source.to_string();
                    let expected = format!("missing while {} holds objects", holder.display());
                    assert!(message.contains(&expected), "{message}");
                }
                other => panic!("expected an open error, got {other:?}"),
            }
            assert!(!lost.exists(), "the refusal created {}", lost.display());
            std::fs::rename(&kept, lost).expect("restore the file");
        }
        let store = RedbStore::open(&first).expect("open restored");
        assert_eq!(held(&store), 100);
    }

    #[test]
    fn store_redb_creates_a_missing_file_of_a_store_that_holds_nothing() {
        // A crash between creating a store's first file and its second leaves this.
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, second) = (dir.path().join("s.redb"), dir.path().join("s-1.redb"));
        drop(RedbStore::open(&first).expect("open"));
        std::fs::remove_file(&second).expect("remove");
        let store = RedbStore::open(&first).expect("reopen");
        assert_eq!(store.paths(), vec![first.clone(), second.clone()]);
        put_spread(&store, &spread(0..50));
        drop(store);
        // And the other way round: only the second file, empty.
        std::fs::remove_file(&first).expect("remove");
        std::fs::remove_file(&second).expect("remove");
        drop(RedbStore::open(&first).expect("new"));
        std::fs::remove_file(&first).expect("remove");
        assert!(RedbStore::open(&first).is_ok());
    }

    #[test]
    fn store_redb_debug_corrupt_value_changes_bytes_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(&dir.path().join("s.redb")).expect("open");
        let id = Id::from_key(b"rot");
        let v = Version::of_value(b"precious", 1, 0);
        store
            .put_batch(&[PutItem {
                id,
                version: v,
                value: b"precious",
            }])
            .expect("put_batch");
        let fp = store.partition_fingerprints(0, u16::MAX).expect("fps");
        assert!(store.debug_corrupt_value(&id).expect("corrupt"));
        assert_eq!(
            store.lookup(&id).expect("lookup").map(|r| r.version),
            Some(v)
        );
        assert_eq!(store.partition_fingerprints(0, u16::MAX).expect("fps"), fp);
        let mut reader = store.open_value(&id).expect("open").expect("value");
        let bytes = reader.next_chunk().expect("chunk").expect("one chunk");
        assert_eq!(bytes.len(), 8);
        assert_ne!(blake3::hash(&bytes).as_bytes(), &v.checksum);

        let dead = Id::from_key(b"dead");
        store
            .put_batch(&[PutItem {
                id: dead,
                version: Version::tombstone(1),
                value: b"",
            }])
            .expect("put_batch");
        assert!(!store.debug_corrupt_value(&dead).expect("tombstone"));
        assert!(!store
            .debug_corrupt_value(&Id::from_key(b"absent"))
            .expect("absent"));
    }
}
