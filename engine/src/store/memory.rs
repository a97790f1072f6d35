//! [`MemoryStore`]: the [`Store`] contract kept in memory, for tests and models.
//!
//! It follows the same rules as the redb backend (and passes the same
//! [`conformance`](super::conformance) suite), with a mutex in place of transactions: every
//! change takes the lock once, so a value, its version and its partition's fingerprint
//! change together.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{accepts, PutItem, PutOutcome, Store, StoreError, Upload, ValueReader, CHUNK_SIZE};
use crate::fingerprint::Fingerprint;
use crate::id::{Id, IdRange};
use crate::version::{Record, Version};

/// An in-memory store. Cloning is not offered on purpose: one store, one owner (share it
/// behind an `Arc` like any other store).
#[derive(Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `try_lock`: formatting must not deadlock when the caller already holds the lock.
        match self.state.try_lock() {
            Ok(state) => f
                .debug_struct("MemoryStore")
                .field("objects", &state.objects.len())
                .field("partitions", &state.fingerprints.len())
                .finish(),
            Err(_) => f.write_str("MemoryStore { <busy> }"),
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

#[derive(Default)]
struct State {
    /// Every record with its value. Values sit behind an `Arc` so a reader keeps the
    /// snapshot it opened while writers replace the entry.
    objects: BTreeMap<Id, (Record, Arc<[u8]>)>,
    /// One entry per non-empty partition (corrupt records under their own element).
    fingerprints: HashMap<u16, Fingerprint>,
}

/// Takes the lock even if a panicking thread poisoned it: every change under the lock is
/// made of steps that cannot panic halfway, so the state is still consistent.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether `len` bytes hashing to `checksum` are what `version` declares. A tombstone
/// declares the empty value.
pub(super) fn value_matches(version: &Version, len: u64, checksum: &[u8; 32]) -> bool {
    len == version.size && *checksum == version.checksum && !(version.is_tombstone() && len != 0)
}

impl State {
    fn fingerprint_insert(&mut self, id: &Id, record: &Record) {
        self.fingerprints
            .entry(id.partition())
            .or_insert(Fingerprint::EMPTY)
            .insert_record(id, record);
    }

    fn fingerprint_remove(&mut self, id: &Id, record: &Record) {
        let partition = id.partition();
        if let Some(fp) = self.fingerprints.get_mut(&partition) {
            fp.remove_record(id, record);
            if *fp == Fingerprint::EMPTY {
                self.fingerprints.remove(&partition);
            }
        }
    }

    /// The whole write rule: stale first, then the value against its version.
    fn put(&mut self, id: Id, version: Version, value: Arc<[u8]>, matches: bool) -> PutOutcome {
        let stored = self.objects.get(&id).map(|(r, _)| *r);
        if !accepts(stored.as_ref(), &version) {
            let stored = stored.map_or(version, |r| r.version);
            return PutOutcome::Stale { stored };
        }
        if !matches {
            return PutOutcome::ChecksumMismatch;
        }
        if let Some(old) = stored {
            self.fingerprint_remove(&id, &old);
        }
        let record = Record {
            version,
            corrupt: false,
        };
        self.fingerprint_insert(&id, &record);
        self.objects.insert(id, (record, value));
        PutOutcome::Written
    }
}

impl Store for MemoryStore {
    fn lookup(&self, id: &Id) -> Result<Option<Record>, StoreError> {
        Ok(lock(&self.state).objects.get(id).map(|(r, _)| *r))
    }

    fn scan(
        &self,
        range: &IdRange,
        after: Option<&Id>,
        limit: usize,
    ) -> Result<Vec<(Id, Record)>, StoreError> {
        let state = lock(&self.state);
        let out = state
            .objects
            .range(range.start..)
            .take_while(|(id, _)| range.contains(id))
            .filter(|(id, _)| after.is_none_or(|a| *id > a))
            .take(limit)
            .map(|(id, (r, _))| (*id, *r))
            .collect();
        Ok(out)
    }

    fn put_batch(&self, items: &[PutItem<'_>]) -> Result<Vec<PutOutcome>, StoreError> {
        let mut state = lock(&self.state);
        let outcomes = items
            .iter()
            .map(|item| {
                let matches = value_matches(
                    &item.version,
                    item.value.len() as u64,
                    blake3::hash(item.value).as_bytes(),
                );
                state.put(item.id, item.version, Arc::from(item.value), matches)
            })
            .collect();
        Ok(outcomes)
    }

    fn begin_upload(&self, id: Id, version: Version) -> Result<Box<dyn Upload>, StoreError> {
        Ok(Box::new(MemoryUpload {
            state: Arc::clone(&self.state),
            id,
            version,
            value: Vec::new(),
        }))
    }

    fn open_value(&self, id: &Id) -> Result<Option<Box<dyn ValueReader>>, StoreError> {
        let state = lock(&self.state);
        Ok(state.objects.get(id).map(|(r, value)| {
            Box::new(MemoryReader {
                version: r.version,
                value: Arc::clone(value),
                offset: 0,
            }) as Box<dyn ValueReader>
        }))
    }

    fn remove_exact(&self, id: &Id, version: &Version) -> Result<bool, StoreError> {
        let mut state = lock(&self.state);
        match state.objects.get(id) {
            Some((r, _)) if r.version == *version => {
                let record = *r;
                state.objects.remove(id);
                state.fingerprint_remove(id, &record);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn mark_corrupt(&self, id: &Id, version: &Version) -> Result<bool, StoreError> {
        let mut state = lock(&self.state);
        let Some((record, _)) = state.objects.get_mut(id) else {
            return Ok(false);
        };
        if record.version != *version {
            return Ok(false);
        }
        if !record.corrupt {
            let healthy = *record;
            record.corrupt = true;
            let marked = *record;
            state.fingerprint_remove(id, &healthy);
            state.fingerprint_insert(id, &marked);
        }
        Ok(true)
    }

    fn partition_fingerprints(
        &self,
        first: u16,
        last: u16,
    ) -> Result<Vec<Fingerprint>, StoreError> {
        let state = lock(&self.state);
        Ok((first..=last)
            .map(|p| {
                state
                    .fingerprints
                    .get(&p)
                    .copied()
                    .unwrap_or(Fingerprint::EMPTY)
            })
            .collect())
    }

    fn rebuild_fingerprints(&self) -> Result<(), StoreError> {
        let mut state = lock(&self.state);
        let mut fingerprints: HashMap<u16, Fingerprint> = HashMap::new();
        for (id, (record, _)) in state.objects.iter() {
            fingerprints
                .entry(id.partition())
                .or_insert(Fingerprint::EMPTY)
                .insert_record(id, record);
        }
        state.fingerprints = fingerprints;
        Ok(())
    }
}

/// An upload into a [`MemoryStore`]: the value is gathered in memory (this store is for
/// tests; the redb store stages chunks on disk instead) and nothing is visible before
/// [`Upload::commit`].
struct MemoryUpload {
    state: Arc<Mutex<State>>,
    id: Id,
    version: Version,
    value: Vec<u8>,
}

impl Upload for MemoryUpload {
    fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        if self.value.len() as u64 + chunk.len() as u64 > self.version.size {
            return Err(StoreError::TooLong {
                id: self.id,
                size: self.version.size,
            });
        }
        self.value.extend_from_slice(chunk);
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<PutOutcome, StoreError> {
        let this = *self;
        let matches = value_matches(
            &this.version,
            this.value.len() as u64,
            blake3::hash(&this.value).as_bytes(),
        );
        let mut state = lock(&this.state);
        Ok(state.put(this.id, this.version, Arc::from(this.value), matches))
    }
}

/// Reads a value from the snapshot taken when it was opened.
struct MemoryReader {
    version: Version,
    value: Arc<[u8]>,
    offset: usize,
}

impl ValueReader for MemoryReader {
    fn version(&self) -> Version {
        self.version
    }

    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        if self.offset >= self.value.len() {
            return Ok(None);
        }
        let end = self.value.len().min(self.offset + CHUNK_SIZE);
        let chunk = self.value[self.offset..end].to_vec();
        self.offset = end;
        Ok(Some(chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_memory_passes_conformance() {
        super::super::conformance::run_all(&|| Box::new(MemoryStore::new()));
    }
}
