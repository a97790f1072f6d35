//! Scrub: re-read stored values, recompute their checksums, and mark those that fail as
//! corrupt. A corrupt record leaves its partition's fingerprint, so it shows up as a
//! difference and recovery repairs it from a healthy replica. Nothing is deleted.

use bincode::{Decode, Encode};

use crate::store::{Store, StoreError};
use crate::{Id, IdRange};

/// What one scrub request did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct ScrubPage {
    /// Records looked at.
    pub checked: u64,
    /// Value bytes re-read.
    pub bytes: u64,
    /// Values whose checksum failed in this page, now marked corrupt.
    pub newly_corrupt: Vec<Id>,
    /// Records already marked corrupt by an earlier scrub.
    pub already_corrupt: Vec<Id>,
    /// Where to resume, or `None` when the range is done.
    pub next: Option<Id>,
}

/// Scrubs up to `limit` records of `range` after `after`.
pub fn scrub_page(
    store: &dyn Store,
    range: &IdRange,
    after: Option<&Id>,
    limit: usize,
) -> Result<ScrubPage, StoreError> {
    let records = store.scan(range, after, limit)?;
    let mut page = ScrubPage {
        next: if records.len() == limit {
            records.last().map(|(id, _)| *id)
        } else {
            None
        },
        ..ScrubPage::default()
    };
    for (id, record) in records {
        page.checked += 1;
        if record.corrupt {
            page.already_corrupt.push(id);
            continue;
        }
        if record.version.is_tombstone() {
            continue;
        }
        let Some(mut reader) = store.open_value(&id)? else {
            continue; // removed meanwhile
        };
        if reader.version() != record.version {
            continue; // rewritten meanwhile: the new value was checked when written
        }
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        let healthy = loop {
            match reader.next_chunk() {
                Ok(Some(chunk)) => {
                    size += chunk.len() as u64;
                    hasher.update(&chunk);
                }
                Ok(None) => {
                    break size == record.version.size
                        && hasher.finalize().as_bytes() == &record.version.checksum
                }
                // Missing or unreadable chunks are corruption too.
                Err(StoreError::Malformed { .. }) => break false,
                Err(e) => return Err(e),
            }
        };
        page.bytes += size;
        if !healthy && store.mark_corrupt(&id, &record.version)? {
            page.newly_corrupt.push(id);
        }
    }
    Ok(page)
}
