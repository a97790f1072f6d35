//! The merge step of a run (DESIGN, "The shape of a run", step 4): a k-way merge of
//! metadata files by id into one stream of per-key states, with every replica's (slot's)
//! record of each id.
//!
//! Memory is bounded by the number of files, not keys: only the current head record of each
//! file is held (in a binary heap), and each file is read through its own small buffer.
//!
//! Laws (tested below against a `BTreeMap` model):
//! - every id present in any file is yielded exactly once, in increasing id order;
//! - a slot's entry is the record of that id from the files whose header names that slot,
//!   `None` if none of them has it;
//! - when several files of one slot hold the same id, the newest record wins
//!   ([`Version::newest_cmp`](crate::version::Version::newest_cmp); at an equal version
//!   the healthy record wins over a corrupt one), so the result does not depend on the
//!   order of `files`;
//! - a file error is yielded, and nothing follows it: a damaged file fails the merge, it is
//!   never silently cut short.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::path::PathBuf;

use crate::id::Id;
use crate::metafile::{MetaError, MetaReader};
use crate::version::Record;

/// The head record of one file, ordered so that [`BinaryHeap`] (a max-heap) pops the
/// smallest id first; ties between files go to the lower file index.
#[derive(Debug)]
struct Head {
    id: Id,
    record: Record,
    file: usize,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Head {}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.id, other.file).cmp(&(self.id, self.file))
    }
}

/// One merged id: the id and each slot's record of it.
type Merged = (Id, Vec<Option<Record>>);

/// The merged stream: `(id, one entry per slot)` in id order. See the module laws.
#[derive(Debug)]
pub struct KeyMerge {
    readers: Vec<MetaReader>,
    /// The slot of each reader.
    slot_of: Vec<usize>,
    slots: usize,
    heap: BinaryHeap<Head>,
    /// An error met while priming, yielded first.
    pending: Option<MetaError>,
    done: bool,
}

/// Opens `files` (checking each header) and merges them by id into `slots` entries per id.
/// A header whose slot is `>= slots` is an error naming the file; errors reading records
/// come out of the iterator.
pub fn merge_files(files: &[PathBuf], slots: usize) -> Result<KeyMerge, MetaError> {
    let mut readers = Vec::with_capacity(files.len());
    let mut slot_of = Vec::with_capacity(files.len());
    for path in files {
        let reader = MetaReader::open(path)?;
        let slot = reader.header().slot;
        if slot as usize >= slots {
            return Err(MetaError::SlotOutOfRange {
                path: path.clone(),
                slot,
                slots,
            });
        }
        slot_of.push(slot as usize);
        readers.push(reader);
    }
    let mut merge = KeyMerge {
        heap: BinaryHeap::with_capacity(readers.len()),
        readers,
        slot_of,
        slots,
        pending: None,
        done: false,
    };
    for file in 0..merge.readers.len() {
        if let Err(e) = merge.advance(file) {
            merge.pending = Some(e);
            break;
        }
    }
    Ok(merge)
}

impl KeyMerge {
    /// The number of entries in each yielded state.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Pushes the next record of `file` on the heap, if it has one.
    fn advance(&mut self, file: usize) -> Result<(), MetaError> {
        match self.readers[file].next() {
            Some(Ok((id, record))) => {
                self.heap.push(Head { id, record, file });
                Ok(())
            }
            Some(Err(e)) => Err(e),
            None => Ok(()),
        }
    }

    fn next_key(&mut self) -> Result<Option<Merged>, MetaError> {
        let Some(first) = self.heap.pop() else {
            return Ok(None);
        };
        let id = first.id;
        let mut state: Vec<Option<Record>> = vec![None; self.slots];
        let mut head = first;
        loop {
            let entry = &mut state[self.slot_of[head.file]];
            *entry = Some(match entry.take() {
                Some(held) => newer(held, head.record),
                None => head.record,
            });
            // The file's next id is larger than `id`, so it cannot belong to this key.
            self.advance(head.file)?;
            match self.heap.peek() {
                Some(next) if next.id == id => {
                    head = self.heap.pop().expect("peeked");
                }
                _ => break,
            }
        }
        Ok(Some((id, state)))
    }
}

/// Of two records of one id in one slot, the one to keep: the newest version; at an equal
/// version the healthy one (corrupt never wins).
fn newer(a: Record, b: Record) -> Record {
    match a.version.newest_cmp(&b.version) {
        Ordering::Greater => a,
        Ordering::Less => b,
        Ordering::Equal if a.corrupt => b,
        Ordering::Equal => a,
    }
}

impl Iterator for KeyMerge {
    type Item = Result<Merged, MetaError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if let Some(e) = self.pending.take() {
            self.done = true;
            return Some(Err(e));
        }
        match self.next_key() {
            Ok(Some(item)) => Some(Ok(item)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use proptest::prelude::*;

    use super::*;
    use crate::id::IdRange;
    use crate::metafile::{MetaHeader, MetaWriter};
    use crate::version::Version;

    fn header(slot: u32) -> MetaHeader {
        MetaHeader {
            slot,
            group: slot + 1,
            node: format!("node-{slot}"),
            range: IdRange::ALL,
            created_ns: 0,
        }
    }

    fn id(n: u8) -> Id {
        let mut id = Id::MIN;
        id.0[0] = n;
        id.0[63] = n.wrapping_mul(37);
        id
    }

    fn write(path: &Path, slot: u32, records: &BTreeMap<Id, Record>) {
        let mut w = MetaWriter::create(path, &header(slot)).unwrap();
        for (i, r) in records {
            w.append(i, r).unwrap();
        }
        w.finish().unwrap();
    }

    fn record() -> impl Strategy<Value = Record> {
        (0u64..3, any::<bool>(), 0u8..3, any::<bool>()).prop_map(|(ts, tomb, v, corrupt)| {
            let version = if tomb {
                Version::tombstone(ts)
            } else {
                Version::of_value(&[v], ts, 0)
            };
            Record { version, corrupt }
        })
    }

    /// The model: for each id, per slot, the newest record, healthy first at equal version.
    fn model(
        files: &[(u32, BTreeMap<Id, Record>)],
        slots: usize,
    ) -> BTreeMap<Id, Vec<Option<Record>>> {
        let mut out: BTreeMap<Id, Vec<Option<Record>>> = BTreeMap::new();
        for (slot, records) in files {
            for (i, r) in records {
                let entry = &mut out.entry(*i).or_insert_with(|| vec![None; slots])[*slot as usize];
                let keep = match entry {
                    None => *r,
                    Some(held) => *[*held, *r]
                        .iter()
                        .max_by(|a, b| {
                            a.version
                                .newest_cmp(&b.version)
                                .then(b.corrupt.cmp(&a.corrupt))
                        })
                        .unwrap(),
                };
                *entry = Some(keep);
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn merge_equals_the_model(
            slots in 1usize..4,
            entries in prop::collection::vec((0u32..4, 0usize..3, 0u8..40, record()), 0..120),
        ) {
            // (slot, file of that slot, id, record); slot folded into the run's slots.
            let mut files: BTreeMap<(u32, usize), BTreeMap<Id, Record>> = BTreeMap::new();
            for (slot, file, n, r) in entries {
                let slot = slot % slots as u32;
                files.entry((slot, file)).or_default().insert(id(n), r);
            }
            let dir = tempfile::tempdir().unwrap();
            let mut paths = Vec::new();
            let mut written = Vec::new();
            for ((slot, file), records) in &files {
                let path = dir.path().join(format!("s{slot}-f{file}"));
                write(&path, *slot, records);
                paths.push(path);
                written.push((*slot, records.clone()));
            }
            // A slot with an empty file, and the files in reverse order: neither changes
            // anything.
            let empty = dir.path().join("empty");
            write(&empty, 0, &BTreeMap::new());
            paths.push(empty);
            paths.reverse();
            let merged: Vec<_> = merge_files(&paths, slots)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let expected: Vec<_> = model(&written, slots).into_iter().collect();
            prop_assert_eq!(merged, expected);
        }
    }

    #[test]
    fn no_files_no_keys() {
        assert_eq!(merge_files(&[], 3).unwrap().count(), 0);
    }

    #[test]
    fn a_slot_out_of_range_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s3");
        write(&path, 3, &BTreeMap::new());
        let err = merge_files(std::slice::from_ref(&path), 3).unwrap_err();
        assert!(
            matches!(
                err,
                MetaError::SlotOutOfRange {
                    slot: 3,
                    slots: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn at_an_equal_version_the_healthy_record_wins() {
        let dir = tempfile::tempdir().unwrap();
        let v = Version::of_value(b"x", 5, 0);
        let bad = Record {
            version: v,
            corrupt: true,
        };
        let good = Record {
            version: v,
            corrupt: false,
        };
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        write(&a, 0, &BTreeMap::from([(id(1), bad)]));
        write(&b, 0, &BTreeMap::from([(id(1), good)]));
        for files in [vec![a.clone(), b.clone()], vec![b, a]] {
            let out: Vec<_> = merge_files(&files, 1)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert_eq!(out, vec![(id(1), vec![Some(good)])]);
        }
    }

    #[test]
    fn a_damaged_file_fails_the_merge_and_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        let torn = dir.path().join("torn");
        let rec = Record {
            version: Version::of_value(b"v", 1, 0),
            corrupt: false,
        };
        let many: BTreeMap<Id, Record> = (0..30).map(|n| (id(n), rec)).collect();
        write(&good, 0, &many);
        write(&torn, 1, &many);
        let bytes = std::fs::read(&torn).unwrap();
        std::fs::write(&torn, &bytes[..bytes.len() / 2]).unwrap();
        let out: Vec<_> = merge_files(&[good, torn.clone()], 2).unwrap().collect();
        let err = out.last().unwrap().as_ref().unwrap_err();
        assert!(matches!(err, MetaError::Torn { .. }), "{err}");
        assert_eq!(err.path(), torn);
        assert_eq!(out.iter().filter(|r| r.is_err()).count(), 1);
        assert!(out.len() < 30, "the merge stopped at the error");

        // An error in a file's first record comes out of the iterator too.
        let first_bad = dir.path().join("first");
        write(&first_bad, 0, &many);
        let mut bytes = std::fs::read(&first_bad).unwrap();
        // Cut inside the first record frame: magic and version, then the header frame's
        // head and payload.
        let header_end = 12 + 8 + u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        bytes.truncate(header_end + 3);
        std::fs::write(&first_bad, &bytes).unwrap();
        let mut merge = merge_files(&[first_bad], 1).unwrap();
        assert!(matches!(
            merge.next(),
            Some(Err(MetaError::Torn { record: 0, .. }))
        ));
        assert!(merge.next().is_none());
    }
}
