//! The metadata-file writer and reader (`engine/src/metafile.rs`), structure-aware: the
//! input describes a valid file (header and records, written with `MetaWriter`) and then
//! damage done to its bytes, optionally with every frame's CRC recomputed afterwards so
//! that damaged payloads reach the decoder.
//!
//! Properties:
//! - an undamaged file reads back exactly as written;
//! - one flipped byte, a truncation, or bytes inserted or appended, with the CRCs left
//!   as they are, is always detected: the read fails (CRC-32 catches every error burst of
//!   up to 32 bits);
//! - whatever the damage, the reader never panics and keeps its limits
//!   (`mend_fuzz::read_metafile`), and a file it accepts, written again with
//!   `MetaWriter`, reads back the same.

#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use mend_engine::metafile::{MetaHeader, MetaWriter};
use mend_engine::{Id, IdRange, Record, Version};
use mend_fuzz::{read_metafile, scratch_file};

#[derive(Debug, Arbitrary)]
struct Input {
    slot: u32,
    group: u32,
    node: String,
    start: IdSpec,
    end: Option<IdSpec>,
    created_ns: u64,
    records: Vec<(IdSpec, RecordSpec)>,
    damage: Vec<Damage>,
    /// Recompute every frame's CRC after the damage.
    recrc: bool,
}

/// An id: on a 64-bit prefix (as partition bounds are; compact on the wire) or hashed.
#[derive(Debug, Arbitrary)]
enum IdSpec {
    Prefix(u64),
    Key(u32),
}

impl IdSpec {
    fn id(&self) -> Id {
        match self {
            IdSpec::Prefix(p) => {
                let mut id = Id::MIN;
                id.0[..8].copy_from_slice(&p.to_be_bytes());
                id
            }
            IdSpec::Key(k) => Id::from_key(&k.to_le_bytes()),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct RecordSpec {
    timestamp: u64,
    size: u64,
    checksum: [u8; 32],
    user_flags: u64,
    flags: u8,
    corrupt: bool,
}

#[derive(Debug, Arbitrary)]
enum Damage {
    Flip { at: u32, mask: u8 },
    Truncate { to: u32 },
    Insert { at: u32, bytes: Vec<u8> },
    Append { bytes: Vec<u8> },
}

fuzz_target!(|input: Input| {
    let header = MetaHeader {
        slot: input.slot,
        group: input.group,
        node: input.node.clone(),
        range: IdRange {
            start: input.start.id(),
            end: input.end.as_ref().map(IdSpec::id),
        },
        created_ns: input.created_ns,
    };
    let mut records: Vec<(Id, Record)> = input
        .records
        .iter()
        .map(|(id, r)| {
            let version = Version {
                timestamp: r.timestamp,
                size: r.size,
                checksum: r.checksum,
                user_flags: r.user_flags,
                flags: r.flags,
            };
            let record = Record {
                version,
                corrupt: r.corrupt,
            };
            (id.id(), record)
        })
        .collect();
    records.sort_by_key(|(id, _)| *id);
    records.dedup_by_key(|(id, _)| *id);

    let written = write(&header, &records);
    let path = scratch_file(&written);
    let content = read_metafile(path);
    let (h, r) = content.expect("an undamaged file reads");
    assert_eq!(h, header);
    assert_eq!(r, records);

    let mut bytes = written.clone();
    let mut changes = 0;
    for damage in &input.damage {
        changes += apply(&mut bytes, damage);
    }
    if input.recrc {
        recrc(&mut bytes);
    }
    let content = read_metafile(scratch_file(&bytes));
    if bytes == written {
        let (h, r) = content.expect("an undamaged file reads");
        assert_eq!((h, r), (header, records));
        return;
    }
    if changes == 1 && !input.recrc {
        assert!(content.is_err(), "damage {:?} went unnoticed", input.damage);
    }
    if let Ok((header, records)) = content {
        // Accepted: it must survive another write and read unchanged.
        let again = write(&header, &records);
        let (h, r) = read_metafile(scratch_file(&again)).expect("a rewritten file reads");
        assert_eq!((h, r), (header, records));
    }
});

/// The bytes of a metadata file holding `records` under `header`.
fn write(header: &MetaHeader, records: &[(Id, Record)]) -> Vec<u8> {
    let path = scratch_file(b"");
    // Inputs are far smaller than a frame, so the header always fits.
    let mut w = MetaWriter::create(path, header).expect("the header is written");
    for (id, record) in records {
        w.append(id, record).expect("sorted records append");
    }
    assert_eq!(
        w.finish().expect("the file is finished"),
        records.len() as u64
    );
    std::fs::read(path).expect("the written file reads")
}

/// Applies one damage; returns 1 if it changed the bytes, else 0.
fn apply(bytes: &mut Vec<u8>, damage: &Damage) -> usize {
    let at = |i: u32, len: usize| i as usize % len.max(1);
    match damage {
        Damage::Flip { at: i, mask } if *mask != 0 && !bytes.is_empty() => {
            let i = at(*i, bytes.len());
            bytes[i] ^= mask;
            1
        }
        Damage::Truncate { to } if !bytes.is_empty() => {
            bytes.truncate(at(*to, bytes.len()));
            1
        }
        Damage::Insert { at: i, bytes: more } if !more.is_empty() => {
            let i = at(*i, bytes.len());
            bytes.splice(i..i, more.iter().copied());
            1
        }
        Damage::Append { bytes: more } if !more.is_empty() => {
            bytes.extend_from_slice(more);
            1
        }
        _ => 0,
    }
}

/// Recomputes the CRC of every frame whose length fits in the file, front to back.
fn recrc(bytes: &mut [u8]) {
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let Some(end) = (at + 8).checked_add(len).filter(|e| *e <= bytes.len()) else {
            return;
        };
        let crc = crc32fast::hash(&bytes[at + 8..end]);
        bytes[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
}
