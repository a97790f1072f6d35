//! Metadata files: the temp files a run gathers versions into (DESIGN, "The shape of a
//! run", step 3), one per node and range batch, sorted by id, then k-way merged
//! ([`crate::kmerge`]). They are CRC32-framed so that a torn or corrupt file is detected
//! and the run fails clearly instead of trusting it.
//!
//! # Layout, format version 1
//!
//! ```text
//! magic      8 bytes   b"MENDMETA"
//! version    u32 LE    FORMAT_VERSION (1)
//! frame      Header    exactly one, first
//! frame      Record    zero or more, ids strictly increasing
//! frame      Footer    exactly one, last; nothing may follow it
//!
//! frame   =  u32 LE payload length (at most MAX_FRAME)
//!            u32 LE CRC32 (IEEE, crc32fast) of the payload
//!            payload: one `Frame` in bincode 2 standard configuration
//! Frame   =  Header(MetaHeader { slot: u32, group: u32, node: String, range: IdRange,
//!                                created_ns: u64 })
//!         |  Record(Id, Record)
//!         |  Footer { count: u64 }      count = the number of Record frames
//! ```
//!
//! A reader checks the magic, the version, every length against [`MAX_FRAME`] before
//! allocating, every CRC, decodes with a size limit, requires the ids to strictly increase,
//! and requires a footer whose count matches, followed by the end of the file. A change of
//! this layout bumps [`FORMAT_VERSION`]; readers refuse versions they do not know.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bincode::{Decode, Encode};

use crate::id::{Id, IdRange};
use crate::version::Record;

/// The first 8 bytes of every metadata file.
pub const MAGIC: &[u8; 8] = b"MENDMETA";

/// The layout version written by this build, and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;

/// The largest frame payload written or accepted (1 MiB).
pub const MAX_FRAME: usize = 1 << 20;

/// Bytes of buffering on the write side.
const WRITE_BUFFER: usize = 256 << 10;

/// Bytes of buffering on the read side: a merge holds one reader per file, so keep it
/// modest.
const READ_BUFFER: usize = 64 << 10;

/// Bytes before the first frame: magic and version.
const PREAMBLE: u64 = 12;

/// Bytes of a frame before its payload: length and CRC.
const FRAME_HEAD: usize = 8;

/// The bincode configuration of every frame payload; decoding is limited to a frame.
fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// What a metadata file is about: its first frame.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct MetaHeader {
    /// The replica's index in the run (the position of its record in a merged key state).
    pub slot: u32,
    /// The replica group the records were gathered from.
    pub group: u32,
    /// The node the records were gathered from.
    pub node: String,
    /// The ids this file covers (every record lies in it).
    pub range: IdRange,
    /// When the file was created, ns since the Unix epoch.
    pub created_ns: u64,
}

/// One frame payload: the tag tells header, record and footer apart.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
enum Frame {
    Header(MetaHeader),
    Record(Id, Record),
    Footer { count: u64 },
}

impl Frame {
    fn kind(&self) -> &'static str {
        match self {
            Frame::Header(_) => "a header",
            Frame::Record(..) => "a record",
            Frame::Footer { .. } => "a footer",
        }
    }
}

/// Why a metadata file cannot be written or trusted. Every variant names the file; `record`
/// is the number of records read or written before the fault, `offset` the byte offset of
/// the frame at fault.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The file could not be created, read, written or synced.
    #[error("{}: {source}", path.display())]
    Io {
        /// The metadata file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with [`MAGIC`]: it is not a metadata file.
    #[error("{}: not a metadata file (starts with {found:02x?}, not \"MENDMETA\")", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// Its first bytes (up to 8).
        found: Vec<u8>,
    },
    /// The file was written in a layout this build does not know.
    #[error(
        "{}: metadata format version {version}, this build reads version {FORMAT_VERSION}",
        path.display()
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version it says it has.
        version: u32,
    },
    /// A frame's payload does not match its CRC32: the file is corrupt.
    #[error(
        "{}: corrupt: CRC mismatch in the frame at byte {offset} after {record} records \
         (stored {stored:08x}, computed {computed:08x})",
        path.display()
    )]
    Crc {
        /// The file.
        path: PathBuf,
        /// Records read before the frame.
        record: u64,
        /// Byte offset of the frame.
        offset: u64,
        /// The CRC in the frame.
        stored: u32,
        /// The CRC of the payload read.
        computed: u32,
    },
    /// The file ends in the middle of a frame, or without a footer: it was not finished.
    #[error(
        "{}: torn: {expected} at byte {offset} is missing or cut short, after {record} records",
        path.display()
    )]
    Torn {
        /// The file.
        path: PathBuf,
        /// Records read before the end.
        record: u64,
        /// Byte offset where the missing part starts.
        offset: u64,
        /// What should have been there.
        expected: &'static str,
    },
    /// A frame passed its CRC but its payload is not a valid frame (a bug or another
    /// format).
    #[error(
        "{}: cannot decode the frame at byte {offset} after {record} records: {source}",
        path.display()
    )]
    Decode {
        /// The file.
        path: PathBuf,
        /// Records read before the frame.
        record: u64,
        /// Byte offset of the frame.
        offset: u64,
        /// Why.
        #[source]
        source: bincode::error::DecodeError,
    },
    /// A frame could not be encoded.
    #[error("{}: cannot encode a frame after {record} records: {source}", path.display())]
    Encode {
        /// The file.
        path: PathBuf,
        /// Records written before the frame.
        record: u64,
        /// Why.
        #[source]
        source: bincode::error::EncodeError,
    },
    /// A valid frame of the wrong kind (a record before the header, a second header...).
    #[error(
        "{}: expected {expected} at byte {offset} after {record} records, found {found}",
        path.display()
    )]
    UnexpectedFrame {
        /// The file.
        path: PathBuf,
        /// Records read before the frame.
        record: u64,
        /// Byte offset of the frame.
        offset: u64,
        /// The kind of frame allowed there.
        expected: &'static str,
        /// The kind found.
        found: &'static str,
    },
    /// Ids do not strictly increase: refused on write, detected on read.
    #[error(
        "{}: id {id} at byte {offset} after {record} records does not come after {previous} \
         (metadata files are sorted by id, each id once)",
        path.display()
    )]
    OutOfOrder {
        /// The file.
        path: PathBuf,
        /// Records before the offending one.
        record: u64,
        /// Byte offset of the offending frame.
        offset: u64,
        /// The id before it (boxed, like `id`, to keep the error small).
        previous: Box<Id>,
        /// The offending id.
        id: Box<Id>,
    },
    /// The footer's count is not the number of records in the file.
    #[error(
        "{}: the footer at byte {offset} counts {footer} records, the file holds {records}",
        path.display()
    )]
    CountMismatch {
        /// The file.
        path: PathBuf,
        /// Byte offset of the footer.
        offset: u64,
        /// The footer's count.
        footer: u64,
        /// Records read.
        records: u64,
    },
    /// A frame's length is over [`MAX_FRAME`] (on read: a corrupt length; on write: a
    /// header too large to be sane).
    #[error(
        "{}: the frame at byte {offset} after {record} records is {len} bytes, more than {max}",
        path.display()
    )]
    FrameTooLarge {
        /// The file.
        path: PathBuf,
        /// Records before the frame.
        record: u64,
        /// Byte offset of the frame.
        offset: u64,
        /// Its length.
        len: u64,
        /// [`MAX_FRAME`].
        max: usize,
    },
    /// Bytes follow the footer.
    #[error(
        "{}: data after the footer at byte {offset} (after {record} records)",
        path.display()
    )]
    Trailing {
        /// The file.
        path: PathBuf,
        /// Records read.
        record: u64,
        /// Byte offset just past the footer.
        offset: u64,
    },
    /// A file whose header is not what its place in a run calls for (another range batch,
    /// replica or node: swapped, copied over or left from elsewhere).
    #[error("{}: not the file this run gathered there: {what}", path.display())]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// What its header says, and what was expected.
        what: String,
    },
    /// A header names a slot outside the run's replicas (from [`crate::kmerge`]).
    #[error("{}: slot {slot} is out of range, the run has {slots} slots", path.display())]
    SlotOutOfRange {
        /// The file.
        path: PathBuf,
        /// The header's slot.
        slot: u32,
        /// Slots in the run.
        slots: usize,
    },
}

impl MetaError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            MetaError::Io { path, .. }
            | MetaError::BadMagic { path, .. }
            | MetaError::UnsupportedVersion { path, .. }
            | MetaError::Crc { path, .. }
            | MetaError::Torn { path, .. }
            | MetaError::Decode { path, .. }
            | MetaError::Encode { path, .. }
            | MetaError::UnexpectedFrame { path, .. }
            | MetaError::OutOfOrder { path, .. }
            | MetaError::CountMismatch { path, .. }
            | MetaError::FrameTooLarge { path, .. }
            | MetaError::Trailing { path, .. }
            | MetaError::Mismatch { path, .. }
            | MetaError::SlotOutOfRange { path, .. } => path,
        }
    }

    /// Whether the error says the file's content is damaged (torn, corrupt or
    /// inconsistent), as opposed to the file being unreadable, of another version or
    /// kind, or misused.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            MetaError::Crc { .. }
                | MetaError::Torn { .. }
                | MetaError::Decode { .. }
                | MetaError::UnexpectedFrame { .. }
                | MetaError::OutOfOrder { .. }
                | MetaError::CountMismatch { .. }
                | MetaError::FrameTooLarge { .. }
                | MetaError::Trailing { .. }
                | MetaError::Mismatch { .. }
        )
    }
}

/// Writes one metadata file: header on create, records in id order, footer on finish.
/// A file that is never finished has no footer and is refused by [`MetaReader`].
#[derive(Debug)]
pub struct MetaWriter {
    path: PathBuf,
    out: BufWriter<File>,
    /// Scratch space for one encoded payload.
    payload: Vec<u8>,
    /// Bytes written so far.
    offset: u64,
    count: u64,
    last: Option<Id>,
}

impl MetaWriter {
    /// Creates (or truncates) `path` and writes the magic, the version and `header`.
    pub fn create(path: &Path, header: &MetaHeader) -> Result<MetaWriter, MetaError> {
        let io = |source| MetaError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::create(path).map_err(io)?;
        let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
        out.write_all(MAGIC).map_err(io)?;
        out.write_all(&FORMAT_VERSION.to_le_bytes()).map_err(io)?;
        let mut writer = MetaWriter {
            path: path.to_path_buf(),
            out,
            payload: Vec::new(),
            offset: PREAMBLE,
            count: 0,
            last: None,
        };
        writer.write_frame(&Frame::Header(header.clone()))?;
        Ok(writer)
    }

    /// Appends a record; `id` must be greater than every id appended before.
    pub fn append(&mut self, id: &Id, record: &Record) -> Result<(), MetaError> {
        if let Some(previous) = self.last {
            if *id <= previous {
                return Err(MetaError::OutOfOrder {
                    path: self.path.clone(),
                    record: self.count,
                    offset: self.offset,
                    previous: Box::new(previous),
                    id: Box::new(*id),
                });
            }
        }
        self.write_frame(&Frame::Record(*id, *record))?;
        self.last = Some(*id);
        self.count += 1;
        Ok(())
    }

    /// Records appended so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the footer, flushes and fsyncs; returns the number of records.
    pub fn finish(mut self) -> Result<u64, MetaError> {
        self.write_frame(&Frame::Footer { count: self.count })?;
        let path = self.path;
        let io = |source| MetaError::Io {
            path: path.clone(),
            source,
        };
        let file = self.out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        Ok(self.count)
    }

    fn write_frame(&mut self, frame: &Frame) -> Result<(), MetaError> {
        self.payload.clear();
        bincode::encode_into_std_write(frame, &mut self.payload, config()).map_err(|source| {
            MetaError::Encode {
                path: self.path.clone(),
                record: self.count,
                source,
            }
        })?;
        let len = self.payload.len();
        if len > MAX_FRAME {
            return Err(MetaError::FrameTooLarge {
                path: self.path.clone(),
                record: self.count,
                offset: self.offset,
                len: len as u64,
                max: MAX_FRAME,
            });
        }
        let mut head = [0u8; FRAME_HEAD];
        head[..4].copy_from_slice(&(len as u32).to_le_bytes());
        head[4..].copy_from_slice(&crc32fast::hash(&self.payload).to_le_bytes());
        let io = |source| MetaError::Io {
            path: self.path.clone(),
            source,
        };
        self.out.write_all(&head).map_err(io)?;
        self.out.write_all(&self.payload).map_err(io)?;
        self.offset += (FRAME_HEAD + len) as u64;
        Ok(())
    }
}

/// Reads one metadata file: [`MetaReader::open`] checks the magic, version and header; the
/// iterator yields the records in id order and ends with `None` only after a valid footer
/// followed by the end of the file. After an error it yields `None`.
#[derive(Debug)]
pub struct MetaReader {
    path: PathBuf,
    input: BufReader<File>,
    header: MetaHeader,
    /// Scratch space for one payload.
    payload: Vec<u8>,
    /// Byte offset of the next frame.
    offset: u64,
    count: u64,
    last: Option<Id>,
    done: bool,
}

impl MetaReader {
    /// Opens `path` and reads its magic, version and header.
    pub fn open(path: &Path) -> Result<MetaReader, MetaError> {
        let file = File::open(path).map_err(|source| MetaError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut input = BufReader::with_capacity(READ_BUFFER, file);
        let mut magic = [0u8; 8];
        let got = read_full(&mut input, &mut magic).map_err(|source| MetaError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if magic[..got] != MAGIC[..got] {
            return Err(MetaError::BadMagic {
                path: path.to_path_buf(),
                found: magic[..got].to_vec(),
            });
        }
        let torn = |offset, expected| MetaError::Torn {
            path: path.to_path_buf(),
            record: 0,
            offset,
            expected,
        };
        if got < magic.len() {
            return Err(torn(0, "the magic"));
        }
        let mut version = [0u8; 4];
        let got = read_full(&mut input, &mut version).map_err(|source| MetaError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if got < version.len() {
            return Err(torn(8, "the format version"));
        }
        let version = u32::from_le_bytes(version);
        if version != FORMAT_VERSION {
            return Err(MetaError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
            });
        }
        let mut reader = MetaReader {
            path: path.to_path_buf(),
            input,
            header: MetaHeader {
                slot: 0,
                group: 0,
                node: String::new(),
                range: IdRange::ALL,
                created_ns: 0,
            },
            payload: Vec::new(),
            offset: PREAMBLE,
            count: 0,
            last: None,
            done: false,
        };
        let offset = reader.offset;
        match reader.read_frame("the header")? {
            Frame::Header(header) => reader.header = header,
            other => return Err(reader.unexpected(offset, "the header", &other)),
        }
        Ok(reader)
    }

    /// The file's header.
    pub fn header(&self) -> &MetaHeader {
        &self.header
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records yielded so far.
    pub fn records_read(&self) -> u64 {
        self.count
    }

    fn unexpected(&self, offset: u64, expected: &'static str, found: &Frame) -> MetaError {
        MetaError::UnexpectedFrame {
            path: self.path.clone(),
            record: self.count,
            offset,
            expected,
            found: found.kind(),
        }
    }

    /// Reads, checks and decodes the frame at `self.offset`; `expected` names it if the
    /// file ends there.
    fn read_frame(&mut self, expected: &'static str) -> Result<Frame, MetaError> {
        let start = self.offset;
        let torn = |path: &Path, count| MetaError::Torn {
            path: path.to_path_buf(),
            record: count,
            offset: start,
            expected,
        };
        let io = |path: &Path, source| MetaError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut head = [0u8; FRAME_HEAD];
        let got = read_full(&mut self.input, &mut head).map_err(|e| io(&self.path, e))?;
        if got < head.len() {
            return Err(torn(&self.path, self.count));
        }
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        let stored = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        if len as usize > MAX_FRAME {
            return Err(MetaError::FrameTooLarge {
                path: self.path.clone(),
                record: self.count,
                offset: start,
                len: u64::from(len),
                max: MAX_FRAME,
            });
        }
        self.payload.resize(len as usize, 0);
        let got = read_full(&mut self.input, &mut self.payload).map_err(|e| io(&self.path, e))?;
        if got < self.payload.len() {
            return Err(torn(&self.path, self.count));
        }
        let computed = crc32fast::hash(&self.payload);
        if computed != stored {
            return Err(MetaError::Crc {
                path: self.path.clone(),
                record: self.count,
                offset: start,
                stored,
                computed,
            });
        }
        let decode_err = |source| MetaError::Decode {
            path: self.path.clone(),
            record: self.count,
            offset: start,
            source,
        };
        let (frame, used): (Frame, usize) =
            bincode::decode_from_slice(&self.payload, config()).map_err(decode_err)?;
        if used != self.payload.len() {
            return Err(decode_err(bincode::error::DecodeError::OtherString(
                format!("{} bytes after the frame", self.payload.len() - used),
            )));
        }
        self.offset = start + (FRAME_HEAD + self.payload.len()) as u64;
        Ok(frame)
    }

    fn next_record(&mut self) -> Result<Option<(Id, Record)>, MetaError> {
        let start = self.offset;
        match self.read_frame("a record or the footer")? {
            Frame::Record(id, record) => {
                if let Some(previous) = self.last {
                    if id <= previous {
                        return Err(MetaError::OutOfOrder {
                            path: self.path.clone(),
                            record: self.count,
                            offset: start,
                            previous: Box::new(previous),
                            id: Box::new(id),
                        });
                    }
                }
                self.last = Some(id);
                self.count += 1;
                Ok(Some((id, record)))
            }
            Frame::Footer { count } => {
                if count != self.count {
                    return Err(MetaError::CountMismatch {
                        path: self.path.clone(),
                        offset: start,
                        footer: count,
                        records: self.count,
                    });
                }
                let rest = self.input.fill_buf().map_err(|source| MetaError::Io {
                    path: self.path.clone(),
                    source,
                })?;
                if !rest.is_empty() {
                    return Err(MetaError::Trailing {
                        path: self.path.clone(),
                        record: self.count,
                        offset: self.offset,
                    });
                }
                Ok(None)
            }
            header @ Frame::Header(_) => {
                Err(self.unexpected(start, "a record or the footer", &header))
            }
        }
    }
}

impl Iterator for MetaReader {
    type Item = Result<(Id, Record), MetaError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_record() {
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

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// What [`summarize`] found in a metadata file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaSummary {
    /// The header, if it could be read.
    pub header: Option<MetaHeader>,
    /// Records read (up to the first error).
    pub records: u64,
    /// The first record's id.
    pub first: Option<Id>,
    /// The last record's id read.
    pub last: Option<Id>,
    /// `Ok` if the whole file checked out (every CRC, the order, the footer), else the
    /// error.
    pub status: Result<(), String>,
}

/// Reads a whole metadata file and says what it holds and whether it is sound. Never
/// panics on bad input; memory stays bounded.
pub fn summarize(path: &Path) -> MetaSummary {
    let mut summary = MetaSummary {
        header: None,
        records: 0,
        first: None,
        last: None,
        status: Ok(()),
    };
    let reader = match MetaReader::open(path) {
        Ok(r) => r,
        Err(e) => {
            summary.status = Err(e.to_string());
            return summary;
        }
    };
    summary.header = Some(reader.header().clone());
    for item in reader {
        match item {
            Ok((id, _)) => {
                summary.first.get_or_insert(id);
                summary.last = Some(id);
                summary.records += 1;
            }
            Err(e) => {
                summary.status = Err(e.to_string());
                break;
            }
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::Version;

    pub(crate) fn header(slot: u32) -> MetaHeader {
        MetaHeader {
            slot,
            group: slot + 1,
            node: format!("node-{slot}"),
            range: IdRange::partitions(3, 9),
            created_ns: 1_700_000_000_000_000_000,
        }
    }

    fn id(n: u8) -> Id {
        let mut id = Id::partition_start(5);
        id.0[63] = n;
        id
    }

    fn record(n: u8) -> Record {
        Record {
            version: Version::of_value(&[n], 1000 + u64::from(n), u64::from(n) * 7),
            corrupt: n.is_multiple_of(5),
        }
    }

    fn write(path: &Path, ids: &[u8]) -> Vec<(Id, Record)> {
        let mut w = MetaWriter::create(path, &header(2)).unwrap();
        let records: Vec<_> = ids.iter().map(|&n| (id(n), record(n))).collect();
        for (i, r) in &records {
            w.append(i, r).unwrap();
        }
        assert_eq!(w.finish().unwrap(), records.len() as u64);
        records
    }

    fn read_all(path: &Path) -> Result<(MetaHeader, Vec<(Id, Record)>), MetaError> {
        let reader = MetaReader::open(path)?;
        let header = reader.header().clone();
        let records = reader.collect::<Result<Vec<_>, _>>()?;
        Ok((header, records))
    }

    /// Raw frames, for crafting files the writer refuses to produce.
    fn raw(frames: &[Frame]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        for f in frames {
            let payload = bincode::encode_to_vec(f, config()).unwrap();
            out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            out.extend_from_slice(&payload);
        }
        out
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let written = write(&path, &[1, 2, 5, 9, 200]);
        let (h, records) = read_all(&path).unwrap();
        assert_eq!(h, header(2));
        assert_eq!(records, written);
        let s = summarize(&path);
        assert_eq!(s.status, Ok(()));
        assert_eq!(s.header, Some(header(2)));
        assert_eq!(
            (s.records, s.first, s.last),
            (5, Some(id(1)), Some(id(200)))
        );
    }

    #[test]
    fn empty_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        write(&path, &[]);
        let (h, records) = read_all(&path).unwrap();
        assert_eq!(h, header(2));
        assert!(records.is_empty());
        let s = summarize(&path);
        assert_eq!(
            (s.records, s.first, s.last, s.status),
            (0, None, None, Ok(()))
        );
    }

    #[test]
    fn out_of_order_append_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let mut w = MetaWriter::create(&path, &header(0)).unwrap();
        w.append(&id(5), &record(5)).unwrap();
        for bad in [5, 4] {
            let err = w.append(&id(bad), &record(bad)).unwrap_err();
            assert!(
                matches!(err, MetaError::OutOfOrder { record: 1, .. }),
                "{err}"
            );
            assert!(err.to_string().contains(&path.display().to_string()));
        }
        w.append(&id(6), &record(6)).unwrap();
        assert_eq!(w.finish().unwrap(), 2);
        assert_eq!(read_all(&path).unwrap().1.len(), 2);
    }

    #[test]
    fn truncation_at_every_offset_is_torn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        write(&path, &[1, 2, 3]);
        let full = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut");
        for len in 0..full.len() {
            std::fs::write(&cut, &full[..len]).unwrap();
            let err = read_all(&cut).expect_err("a truncated file must not read cleanly");
            assert!(
                matches!(err, MetaError::Torn { .. } | MetaError::Crc { .. }),
                "cut at {len}: {err}"
            );
            assert!(err.is_damage());
            assert_eq!(err.path(), cut);
            assert!(summarize(&cut).status.is_err());
        }
    }

    #[test]
    fn a_flipped_byte_anywhere_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        write(&path, &[1, 2, 3]);
        let full = std::fs::read(&path).unwrap();
        let bad = dir.path().join("bad");
        for at in 0..full.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut bytes = full.clone();
                bytes[at] ^= mask;
                std::fs::write(&bad, &bytes).unwrap();
                let err = read_all(&bad).expect_err("a flipped byte must be detected");
                assert!(
                    err.to_string().contains(&bad.display().to_string()),
                    "byte {at}: {err}"
                );
                assert!(summarize(&bad).status.is_err());
            }
        }
    }

    #[test]
    fn footer_count_mismatch_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let frames = [
            Frame::Header(header(0)),
            Frame::Record(id(1), record(1)),
            Frame::Record(id(2), record(2)),
            Frame::Footer { count: 3 },
        ];
        std::fs::write(&path, raw(&frames)).unwrap();
        let err = read_all(&path).unwrap_err();
        assert!(
            matches!(
                err,
                MetaError::CountMismatch {
                    footer: 3,
                    records: 2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn crafted_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let check = |frames: &[Frame], extra: &[u8]| {
            let mut bytes = raw(frames);
            bytes.extend_from_slice(extra);
            std::fs::write(&path, bytes).unwrap();
            read_all(&path).unwrap_err()
        };
        let h = Frame::Header(header(0));
        let r = |n| Frame::Record(id(n), record(n));
        let footer = |count| Frame::Footer { count };
        let e = check(&[h.clone(), r(2), r(1), footer(2)], &[]);
        assert!(matches!(e, MetaError::OutOfOrder { record: 1, .. }), "{e}");
        let e = check(&[h.clone(), r(2), r(2), footer(2)], &[]);
        assert!(matches!(e, MetaError::OutOfOrder { .. }), "{e}");
        let e = check(&[r(1), footer(1)], &[]);
        assert!(matches!(e, MetaError::UnexpectedFrame { .. }), "{e}");
        let e = check(&[h.clone(), h.clone(), footer(0)], &[]);
        assert!(matches!(e, MetaError::UnexpectedFrame { .. }), "{e}");
        let e = check(&[h.clone(), footer(0)], b"x");
        assert!(matches!(e, MetaError::Trailing { .. }), "{e}");
        let e = check(&[h.clone(), footer(0), footer(0)], &[]);
        assert!(matches!(e, MetaError::Trailing { .. }), "{e}");
        // A frame claiming more than MAX_FRAME is refused before anything is allocated.
        let mut head = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
        head.extend_from_slice(&[0; 4]);
        let e = check(std::slice::from_ref(&h), &head);
        assert!(matches!(e, MetaError::FrameTooLarge { .. }), "{e}");
        // A payload with a valid CRC but garbage inside.
        let mut junk = 3u32.to_le_bytes().to_vec();
        junk.extend_from_slice(&crc32fast::hash(&[9, 9, 9]).to_le_bytes());
        junk.extend_from_slice(&[9, 9, 9]);
        let e = check(&[h], &junk);
        assert!(matches!(e, MetaError::Decode { .. }), "{e}");
        // Another version, another kind of file.
        let mut bytes = raw(&[Frame::Header(header(0)), footer(0)]);
        bytes[8] = 2;
        std::fs::write(&path, &bytes).unwrap();
        let e = read_all(&path).unwrap_err();
        assert!(
            matches!(e, MetaError::UnsupportedVersion { version: 2, .. }),
            "{e}"
        );
        assert!(!e.is_damage());
        std::fs::write(&path, b"0123456789abcdef\n").unwrap();
        let e = read_all(&path).unwrap_err();
        assert!(matches!(e, MetaError::BadMagic { .. }), "{e}");
    }

    #[test]
    fn an_oversized_header_is_refused_on_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = header(0);
        h.node = "n".repeat(MAX_FRAME + 1);
        let err = MetaWriter::create(&dir.path().join("m"), &h).unwrap_err();
        assert!(matches!(err, MetaError::FrameTooLarge { .. }), "{err}");
    }

    #[test]
    fn an_unfinished_file_is_torn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let mut w = MetaWriter::create(&path, &header(0)).unwrap();
        w.append(&id(1), &record(1)).unwrap();
        drop(w); // flushed by BufWriter's drop, but no footer
        let err = read_all(&path).unwrap_err();
        assert!(matches!(err, MetaError::Torn { record: 1, .. }), "{err}");
    }

    #[test]
    fn a_missing_file_is_an_io_error_naming_it() {
        let path = Path::new("/nonexistent/mend-meta");
        let err = MetaReader::open(path).unwrap_err();
        assert!(matches!(err, MetaError::Io { .. }));
        assert!(!err.is_damage());
        assert!(err.to_string().contains("/nonexistent/mend-meta"));
        let s = summarize(path);
        assert!(s.header.is_none() && s.status.is_err());
    }
}
