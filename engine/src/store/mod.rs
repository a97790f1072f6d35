//! Node storage: objects by id, their versions, tombstones, and per-partition fingerprints.
//!
//! One contract ([`Store`]), two backends ([`RedbStore`] on disk, [`MemoryStore`] for
//! tests and models), one conformance suite ([`conformance`]) that both must pass.
//!
//! Every change (a value, its version and its partition's fingerprint) happens in one
//! write transaction, so they never disagree after a crash. A write that carries a version
//! not newer than the stored one is refused as stale, which is what makes recovery safe
//! against concurrent client writes; the single exception is a stored version that scrub
//! marked corrupt, which counts as absent and any version may replace.
//!
//! Stores are blocking; the node calls them from a blocking thread pool.

use std::fmt;

use crate::fingerprint::Fingerprint;
use crate::id::{Id, IdRange};
use crate::version::{Record, Version};

pub mod conformance;
mod memory;
mod redb_store;

pub use memory::MemoryStore;
pub use redb_store::RedbStore;

/// Values are stored, read and copied in chunks of at most this many bytes. Where a value
/// is cut is each store's choice (the redb store cuts chunks to fit its pages).
pub const CHUNK_SIZE: usize = 1 << 20;

/// Errors of a store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or created.
    #[error("cannot open store at {path}: {source}")]
    Open {
        /// The database file.
        path: std::path::PathBuf,
        /// What redb said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The underlying database failed (I/O, out of space, corruption of its own pages).
    #[error("storage failure during {op}: {source}")]
    Backend {
        /// The operation that failed.
        op: &'static str,
        /// What the backend said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stored record could not be decoded (wrong length or layout).
    #[error("stored record for {id} is malformed: {what}")]
    Malformed {
        /// The id whose record is bad.
        id: Id,
        /// What is wrong with it.
        what: &'static str,
    },
    /// The value changed or vanished while it was being read.
    #[error("value of {id} changed while it was being read")]
    ValueChanged {
        /// The id being read.
        id: Id,
    },
    /// A request asked for more than a bound allows.
    #[error("{what} is limited to {limit}")]
    LimitExceeded {
        /// What was counted.
        what: &'static str,
        /// The bound.
        limit: usize,
    },
    /// An upload received more bytes than its version's size.
    #[error("value of {id} is longer than its version says ({size} bytes)")]
    TooLong {
        /// The id being written.
        id: Id,
        /// The size the version declares.
        size: u64,
    },
}

impl StoreError {
    pub(crate) fn backend(
        op: &'static str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Backend {
            op,
            source: Box::new(e),
        }
    }
}

/// One whole value to write.
#[derive(Debug, Clone, Copy)]
pub struct PutItem<'a> {
    /// The object's id.
    pub id: Id,
    /// The version the value is written with.
    pub version: Version,
    /// The value (empty for a tombstone).
    pub value: &'a [u8],
}

impl<'a> PutItem<'a> {
    /// An item for each `(id, version, value)` of `records`, borrowing the values.
    pub fn each<V: AsRef<[u8]>>(records: &'a [(Id, Version, V)]) -> Vec<PutItem<'a>> {
        records
            .iter()
            .map(|(id, version, value)| PutItem {
                id: *id,
                version: *version,
                value: value.as_ref(),
            })
            .collect()
    }
}

/// The outcome of one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum PutOutcome {
    /// The version is now stored.
    Written,
    /// Refused: the store holds a version at least as new (`stored`).
    Stale {
        /// The version the store holds.
        stored: Version,
    },
    /// Refused: the value does not match the size or checksum its version declares.
    ChecksumMismatch,
}

/// A value being written in chunks. Dropping it without [`Upload::commit`] discards it.
pub trait Upload: Send {
    /// Appends the next chunk of the value.
    fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError>;
    /// Checks size and checksum, then stores value, version and fingerprint in one write
    /// transaction (or refuses as stale).
    fn commit(self: Box<Self>) -> Result<PutOutcome, StoreError>;
}

/// A stored value read in chunks, from a consistent snapshot.
pub trait ValueReader: Send {
    /// The version of the value being read.
    fn version(&self) -> Version;
    /// The next chunk (at most [`CHUNK_SIZE`] bytes), or `None` at the end.
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, StoreError>;
    /// Appends the rest of the value to `out`.
    fn read_to_end(&mut self, out: &mut Vec<u8>) -> Result<(), StoreError> {
        while let Some(chunk) = self.next_chunk()? {
            out.extend_from_slice(&chunk);
        }
        Ok(())
    }
}

/// The storage contract every backend meets; see the module docs for its rules.
pub trait Store: Send + Sync + fmt::Debug {
    /// The record of `id`, if the store has one.
    fn lookup(&self, id: &Id) -> Result<Option<Record>, StoreError>;

    /// Up to `limit` records with ids in `range` and greater than `after` (when given), in
    /// id order. Values are not read.
    fn scan(
        &self,
        range: &IdRange,
        after: Option<&Id>,
        limit: usize,
    ) -> Result<Vec<(Id, Record)>, StoreError>;

    /// Writes whole values (and tombstones) in one write transaction (one per shard of a
    /// sharded store, so a failed batch may have written some shards); one outcome per item,
    /// in order. An item refused (stale, checksum mismatch) does not affect the others.
    fn put_batch(&self, items: &[PutItem<'_>]) -> Result<Vec<PutOutcome>, StoreError>;

    /// Starts writing a value of any size in chunks, with bounded memory.
    fn begin_upload(&self, id: Id, version: Version) -> Result<Box<dyn Upload>, StoreError>;

    /// Opens the stored value of `id` for reading, or `None` if there is no record.
    fn open_value(&self, id: &Id) -> Result<Option<Box<dyn ValueReader>>, StoreError>;

    /// Removes `id` entirely (value, version, fingerprint contribution) if it holds exactly
    /// `version`; returns whether it did. Used to drop a misplaced copy once its owner has
    /// confirmed it.
    fn remove_exact(&self, id: &Id, version: &Version) -> Result<bool, StoreError>;

    /// Marks `id` corrupt if it holds exactly `version`; returns whether it did. A corrupt
    /// record leaves its partition's fingerprint.
    fn mark_corrupt(&self, id: &Id, version: &Version) -> Result<bool, StoreError>;

    /// The fingerprints of partitions `first..=last`, one per partition, in order.
    fn partition_fingerprints(&self, first: u16, last: u16)
        -> Result<Vec<Fingerprint>, StoreError>;

    /// Recomputes every fingerprint from the stored versions (after damage to that table).
    fn rebuild_fingerprints(&self) -> Result<(), StoreError>;
}

/// Whether a write of `incoming` may replace `stored`: it must be strictly newer than a
/// healthy stored version. A copy marked corrupt counts as absent ("corrupt never wins"):
/// its value is lost, and the newest healthy version from another replica replaces it even
/// if the corrupt one carried a larger timestamp.
pub fn accepts(stored: Option<&Record>, incoming: &Version) -> bool {
    match stored {
        None => true,
        Some(r) if r.corrupt => true,
        Some(r) => incoming.is_newer_than(&r.version),
    }
}
