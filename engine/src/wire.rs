//! The wire protocol: messages and their framing. The only module that knows bytes on the
//! wire.
//!
//! Every request travels on its own QUIC bidirectional stream. A frame is a big-endian u32
//! length followed by a bincode 2 payload; the length is checked against [`MAX_FRAME`]
//! before anything is allocated, and decoding is limited to the same size. The first
//! stream of a connection carries [`Request::Hello`] with the protocol version.
//!
//! Values do not travel in frames: after a [`Request::Write`] header (or a
//! [`Response::Value`] header) exactly `version.size` raw bytes follow on the same stream,
//! so values of any size move with bounded memory and no framing overhead.

use bincode::{Decode, Encode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::fingerprint::Fingerprint;
use crate::id::{Id, IdRange};
use crate::reconcile::{CompareAnswer, CompareAsk, Round};
use crate::route::RouteList;
use crate::store::PutOutcome;
use crate::version::{Record, Version};

/// The protocol version spoken by this build; a peer with another one is refused.
pub const PROTOCOL_VERSION: u32 = 4;

/// The largest frame payload either side sends or accepts.
pub const MAX_FRAME: usize = 8 << 20;

/// Clients keep the values of one [`Request::WriteBatch`] under this many bytes.
pub const MAX_BATCH_BYTES: usize = 4 << 20;

/// Values up to this size go in a [`Request::WriteBatch`]; larger ones are streamed.
pub const SMALL_VALUE: u64 = 256 << 10;

/// Decodes with bincode's standard configuration, claiming at most `LIMIT` bytes; also
/// returns the bytes left over.
fn decode_limited<T: Decode<()>, const LIMIT: usize>(
    mut payload: Parts<'_>,
) -> Result<(T, usize), bincode::error::DecodeError> {
    let msg = bincode::decode_from_reader(
        &mut payload,
        bincode::config::standard().with_limit::<LIMIT>(),
    )?;
    Ok((msg, payload.left))
}

/// A frame's payload as the parts it arrived in, read as one sequence of bytes.
struct Parts<'a> {
    /// The parts not yet read; the first one from `at`.
    parts: &'a [&'a [u8]],
    at: usize,
    /// Bytes not yet read.
    left: usize,
}

impl<'a> Parts<'a> {
    fn new(parts: &'a [&'a [u8]]) -> Self {
        let left = parts.iter().map(|p| p.len()).sum();
        Parts { parts, at: 0, left }
    }

    /// The unread bytes of the current part (empty at the end), past exhausted parts.
    fn current(&mut self) -> &'a [u8] {
        while let Some((first, rest)) = self.parts.split_first() {
            if self.at < first.len() {
                return &first[self.at..];
            }
            self.parts = rest;
            self.at = 0;
        }
        &[]
    }
}

impl bincode::de::read::Reader for Parts<'_> {
    fn read(&mut self, bytes: &mut [u8]) -> Result<(), bincode::error::DecodeError> {
        if bytes.len() > self.left {
            return Err(bincode::error::DecodeError::UnexpectedEnd {
                additional: bytes.len() - self.left,
            });
        }
        let mut filled = 0;
        while filled < bytes.len() {
            let part = self.current();
            let n = part.len().min(bytes.len() - filled);
            bytes[filled..filled + n].copy_from_slice(&part[..n]);
            filled += n;
            self.consume(n);
        }
        Ok(())
    }

    fn peek_read(&mut self, n: usize) -> Option<&[u8]> {
        self.current().get(..n)
    }

    fn consume(&mut self, n: usize) {
        // Only ever called for bytes of the current part (by `read` and after `peek_read`).
        let n = n.min(self.current().len());
        self.at += n;
        self.left -= n;
    }
}

/// Bytes of containers a frame may claim while it is decoded, per byte of payload.
///
/// bincode allocates a container for the length its length field claims before reading
/// the elements, within the limit of its configuration; with one limit of [`MAX_FRAME`]
/// for every frame, a frame of 20 bytes claiming a vector of 8 MiB made the node allocate
/// (and zero) 8 MiB before finding the bytes missing. Honest messages claim far less per
/// byte: the worst is one `size_of` of an element per one-byte encoding (a `None` record
/// or a `Written` outcome: about 80 bytes for 1), so 256 leaves room, and the budget
/// only bites on small frames (a payload of 32 KiB or more gets [`MAX_FRAME`] as before).
const CLAIM_RATIO: usize = 256;

/// A request from a client (or the engine) to a node.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum Request {
    /// First stream of a connection: the protocol version the client speaks.
    Hello {
        /// The client's [`PROTOCOL_VERSION`].
        protocol: u32,
    },
    /// The node's route list.
    RouteList,
    /// The records of these ids (at most [`MAX_LOOKUP`]).
    Lookup {
        /// Ids to look up.
        ids: Vec<Id>,
    },
    /// Every record in `range`, in id order, streamed in batches, filtered.
    Iterate {
        /// The ids to iterate.
        range: IdRange,
        /// Only versions with a timestamp at or after this (ns).
        since: Option<u64>,
        /// Only versions whose user_flags share a bit with one of these (empty: all).
        user_flags: Vec<u64>,
    },
    /// Fingerprints of `ranges`, each split into `split` equal parts of the id space
    /// (all parts but the last when `split` > 1).
    Fingerprints {
        /// The ranges to fingerprint.
        ranges: Vec<IdRange>,
        /// Parts per range (1 = the range itself).
        split: u16,
    },
    /// One round of a comparison ([`crate::reconcile`]): asks about ranges located in
    /// `tops`, answered in order by [`Response::Compared`]. At most
    /// [`COMPARE_BUDGET`] in [`ask_cost`].
    Compare {
        /// The comparison's ranges, which the asks' locations start from.
        tops: Vec<IdRange>,
        /// Parts per level (2 to 256).
        split: u16,
        /// The questions.
        asks: Vec<CompareAsk>,
    },
    /// A value: answered with [`Response::Value`] then its raw bytes.
    Read {
        /// The object.
        id: Id,
    },
    /// Writes a value of any size: exactly `version.size` raw bytes follow this frame.
    Write {
        /// The object.
        id: Id,
        /// The version it is written with.
        version: Version,
    },
    /// Writes small values (and tombstones) in one transaction.
    WriteBatch {
        /// The values.
        items: Vec<BatchItem>,
    },
    /// Removes the copy of `id` if it is exactly `version` (a misplaced copy, after its
    /// owner confirmed it).
    Remove {
        /// The object.
        id: Id,
        /// The version the caller saw.
        version: Version,
    },
    /// Re-reads up to `limit` values in `range` after `after`, checks their checksums,
    /// and marks those that fail as corrupt.
    Scrub {
        /// The ids to scrub.
        range: IdRange,
        /// Resume after this id.
        after: Option<Id>,
        /// Records to check in this request (at most [`MAX_SCRUB_PAGE`]).
        limit: u32,
    },
    /// Installs a newer route list.
    PushRoute {
        /// The new route list.
        route: RouteList,
    },
    /// Copies versions this node holds to node `to`, node to node, as one write batch:
    /// the values cross the network once and the destination commits them in one
    /// transaction. At most [`MAX_PUSH_ITEMS`]; a value over [`MAX_PUSH_VALUE`] bytes, or
    /// one that would take the batch over [`MAX_PUSH_BYTES`], is answered
    /// [`PushOutcome::TooLarge`].
    Push {
        /// The destination node's id.
        to: String,
        /// Each object with the exact version to copy, named by its [`version_digest`].
        items: Vec<(Id, VersionDigest)>,
    },
}

/// Names one exact version of one id in 8 bytes where the version takes 46: the first 8
/// bytes of the element it contributes to fingerprints
/// ([`crate::Fingerprint::element`]).
pub type VersionDigest = [u8; 8];

/// The [`VersionDigest`] of `version` of `id`.
pub fn version_digest(id: &Id, version: &Version) -> VersionDigest {
    crate::Fingerprint::element(id, version)[..8]
        .try_into()
        .expect("8 bytes")
}

/// Items per [`Request::Push`].
pub const MAX_PUSH_ITEMS: usize = 4096;

/// The largest value a [`Request::Push`] carries (larger ones are streamed).
pub const MAX_PUSH_VALUE: u64 = 1 << 20;

/// Value bytes per [`Request::Push`]: its write batch stays well inside [`MAX_FRAME`].
pub const MAX_PUSH_BYTES: u64 = 4 << 20;

/// Ids per [`Request::Lookup`].
pub const MAX_LOOKUP: usize = 16 * 1024;

/// Records per [`Request::Scrub`].
pub const MAX_SCRUB_PAGE: u32 = 4096;

/// What one [`Request::Compare`] may ask, in [`ask_cost`].
pub const COMPARE_BUDGET: usize = 65_536;

/// Top ranges per [`Request::Compare`].
pub const MAX_COMPARE_TOPS: usize = 4096;

/// The cost of an ask against [`COMPARE_BUDGET`]: fingerprints computed, or a share of the
/// answer frame for lists (records are about 110 bytes each, so 1,024 record asks of a few
/// records each stay far inside [`MAX_FRAME`]).
pub fn ask_cost(ask: &CompareAsk, split: u16) -> usize {
    match ask {
        CompareAsk::Whole(_) => 1,
        CompareAsk::Fingerprints(_) | CompareAsk::Sums(_) => usize::from(split.max(1)),
        CompareAsk::Hashes(..) => 16,
        CompareAsk::Records(..) => 64,
    }
}

/// A round cut into parts within [`COMPARE_BUDGET`], one [`Request::Compare`] each (none
/// for an empty round).
pub fn compare_parts(round: &Round) -> Vec<Round> {
    let mut parts = Vec::new();
    let mut asks = Vec::new();
    let mut cost = 0;
    for ask in &round.asks {
        let c = ask_cost(ask, round.split);
        if cost + c > COMPARE_BUDGET && !asks.is_empty() {
            parts.push(std::mem::take(&mut asks));
            cost = 0;
        }
        cost += c;
        asks.push(ask.clone());
    }
    if !asks.is_empty() {
        parts.push(asks);
    }
    parts
        .into_iter()
        .map(|asks| Round {
            tops: round.tops.clone(),
            split: round.split,
            asks,
        })
        .collect()
}

impl From<Round> for Request {
    fn from(round: Round) -> Request {
        Request::Compare {
            tops: round.tops,
            split: round.split,
            asks: round.asks,
        }
    }
}

/// Ranges × `split` per [`Request::Fingerprints`].
pub const MAX_FINGERPRINT_PARTS: usize = 65_536;

/// Items a node visits to answer one [`Request::Compare`]; a request that would visit more
/// is refused (ask for smaller ranges).
pub const MAX_LIST_ITEMS: usize = 200_000;

/// One value of a [`Request::WriteBatch`].
#[derive(Debug, Clone, PartialEq, Encode)]
pub struct BatchItem {
    /// The object.
    pub id: Id,
    /// Its version.
    pub version: Version,
    /// Its value (empty for a tombstone).
    pub value: Vec<u8>,
}

/// Decodes as the derived decoder would, but copies the value straight from the frame's
/// bytes where the reader holds them in one piece, instead of zero-filling a buffer first
/// (bincode's `Vec<u8>`): megabytes per write batch.
impl<C> Decode<C> for BatchItem {
    fn decode<D: bincode::de::Decoder<Context = C>>(
        d: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        use bincode::de::read::Reader;
        let id = Id::decode(d)?;
        let version = Version::decode(d)?;
        let len = u64::decode(d)?;
        let len = usize::try_from(len)
            .map_err(|_| bincode::error::DecodeError::OutsideUsizeRange(len))?;
        d.claim_container_read::<u8>(len)?;
        let mut value = Vec::with_capacity(len);
        if let Some(bytes) = d.reader().peek_read(len) {
            value.extend_from_slice(bytes);
            d.reader().consume(len);
        } else {
            value.resize(len, 0);
            d.reader().read(&mut value)?;
        }
        Ok(BatchItem { id, version, value })
    }
}
bincode::impl_borrow_decode!(BatchItem);

/// A [`Request::WriteBatch`] frame written item by item, each value appended in place (a
/// node pushing values reads them from its store straight into the frame, instead of into
/// an item and then the item into the frame). [`BatchFrame::finish`] gives exactly the
/// bytes [`encode_frame`] would.
#[derive(Debug)]
pub struct BatchFrame {
    /// [`BATCH_HEADROOM`] bytes left for the header, then the items.
    buf: Vec<u8>,
    items: u64,
}

/// Room for a write batch's header: the length prefix, the variant (a u32 varint: at most
/// 5 bytes) and the item count (a u64 varint: at most 9).
const BATCH_HEADROOM: usize = 4 + 5 + 9;

impl BatchFrame {
    /// An empty batch with room for `value_bytes` of values.
    pub fn with_capacity(value_bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(BATCH_HEADROOM + value_bytes);
        buf.resize(BATCH_HEADROOM, 0);
        BatchFrame { buf, items: 0 }
    }

    /// Items in the batch.
    pub fn len(&self) -> usize {
        self.items as usize
    }

    /// Whether the batch holds no item.
    pub fn is_empty(&self) -> bool {
        self.items == 0
    }

    /// Appends the item `id` at `version` with `len` bytes of value: `fill` appends the
    /// value to the buffer it is given, whose value starts at the offset it is given, and
    /// answers whether the item stays. An item that does not stay, or whose value is not
    /// `len` bytes, leaves nothing behind; the latter is an error.
    pub fn push<E>(
        &mut self,
        id: &Id,
        version: &Version,
        len: u64,
        fill: impl FnOnce(&mut Vec<u8>, usize) -> Result<bool, E>,
    ) -> Result<bool, E>
    where
        E: From<WireError>,
    {
        let mark = self.buf.len();
        let config = bincode::config::standard();
        let header = bincode::encode_into_std_write(id, &mut self.buf, config)
            .and_then(|_| bincode::encode_into_std_write(version, &mut self.buf, config))
            .and_then(|_| bincode::encode_into_std_write(len, &mut self.buf, config));
        if let Err(e) = header {
            self.buf.truncate(mark);
            return Err(WireError::Encode(e.to_string()).into());
        }
        let start = self.buf.len();
        let kept = fill(&mut self.buf, start);
        let got = self.buf.len().saturating_sub(start) as u64;
        match kept {
            Ok(true) if got == len => {
                self.items += 1;
                Ok(true)
            }
            Ok(true) => {
                self.buf.truncate(mark);
                Err(
                    WireError::Encode(format!("a value of {got} bytes in a batch item of {len}"))
                        .into(),
                )
            }
            other => {
                self.buf.truncate(mark);
                other
            }
        }
    }

    /// The frame: length prefix and payload, as [`encode_frame`] writes a
    /// [`Request::WriteBatch`] of the same items.
    pub fn finish(self) -> Result<bytes::Bytes, WireError> {
        let config = bincode::config::standard();
        let encode = |e: bincode::error::EncodeError| WireError::Encode(e.to_string());
        // The variant as the derived encoder writes it: an empty batch is the variant and a
        // count of 0, one byte.
        let mut head = bincode::encode_to_vec(Request::WriteBatch { items: Vec::new() }, config)
            .map_err(encode)?;
        head.pop();
        head.extend(bincode::encode_to_vec(self.items, config).map_err(encode)?);
        let len = head.len() + self.buf.len() - BATCH_HEADROOM;
        if len > MAX_FRAME {
            return Err(WireError::FrameTooLarge {
                len,
                max: MAX_FRAME,
            });
        }
        let start = BATCH_HEADROOM - 4 - head.len();
        let mut buf = self.buf;
        buf[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
        buf[start + 4..BATCH_HEADROOM].copy_from_slice(&head);
        Ok(bytes::Bytes::from(buf).slice(start..))
    }
}

/// A node's answer.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum Response {
    /// Answer to [`Request::Hello`].
    Hello {
        /// The node's [`PROTOCOL_VERSION`].
        protocol: u32,
        /// The node's id.
        node: String,
        /// The node's group.
        group: u32,
        /// The epoch of the node's route list.
        epoch: u64,
    },
    /// Answer to [`Request::RouteList`].
    RouteList(RouteList),
    /// Answer to [`Request::Lookup`]: one entry per id, in order.
    Records(Vec<Option<Record>>),
    /// A batch of [`Request::Iterate`]; more follow until [`Response::End`].
    Iterated(Vec<(Id, Record)>),
    /// Answer to [`Request::Fingerprints`]: per range, in order, the fingerprint of each
    /// part, but the last when `split` > 1 ([`crate::reconcile::parts_sent`]): the asker
    /// derives it from the range's own fingerprint.
    Fingerprints(Vec<Fingerprint>),
    /// Answer to [`Request::Compare`]: one answer per ask, in order.
    Compared(Vec<CompareAnswer>),
    /// The end of a streamed answer, with the number of records sent.
    End {
        /// Records sent.
        count: u64,
    },
    /// Answer to [`Request::Read`]: exactly `version.size` raw bytes follow.
    Value {
        /// The version being sent.
        version: Version,
    },
    /// Answer to [`Request::Read`] when the node has no record, or only a tombstone
    /// (then `version` says which).
    NoValue {
        /// The tombstone, if there is one.
        version: Option<Version>,
    },
    /// Answer to [`Request::Write`].
    Written(PutOutcome),
    /// Answer to [`Request::WriteBatch`]: one outcome per item, in order.
    BatchWritten(Vec<PutOutcome>),
    /// Answer to [`Request::Remove`]: whether the copy was removed.
    Removed(bool),
    /// Answer to [`Request::Scrub`].
    Scrubbed(crate::scrub::ScrubPage),
    /// Answer to [`Request::PushRoute`]: the epoch now in force.
    RouteAccepted {
        /// The node's epoch after the push.
        epoch: u64,
    },
    /// Answer to [`Request::Push`]: one outcome per item, in order.
    Pushed {
        /// The outcomes.
        outcomes: Vec<PushOutcome>,
        /// Bytes of the write batch frame sent to the destination (values included).
        bytes: u64,
    },
    /// The request failed; the stream ends here.
    Error(RemoteError),
}

/// What became of one item of a [`Request::Push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum PushOutcome {
    /// The destination's answer to the write.
    Put(PutOutcome),
    /// The pushing node no longer holds that version (a newer write or a remove came):
    /// nothing was sent.
    SourceChanged,
    /// The pushing node's copy fails its checksum: nothing was sent.
    Corrupt,
    /// The value is over [`MAX_PUSH_VALUE`], or would take the push over
    /// [`MAX_PUSH_BYTES`]: nothing was sent (copy it by streaming).
    TooLarge,
}

/// A failure reported by a node.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct RemoteError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What the node says about it.
    pub message: String,
}

/// Kinds of [`RemoteError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum ErrorKind {
    /// The request was malformed or came before the handshake.
    Protocol,
    /// The request is well-formed but not acceptable (too many ids, bad range, …).
    BadRequest,
    /// The node's store failed.
    Storage,
    /// A pushed route list is older than the node's, or invalid.
    Route,
    /// The node could not reach another node it had to talk to (a push's destination).
    Unreachable,
}

impl Request {
    /// The name of the request's kind, for messages (never its contents, which can be
    /// large).
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "Hello",
            Request::RouteList => "RouteList",
            Request::Lookup { .. } => "Lookup",
            Request::Iterate { .. } => "Iterate",
            Request::Fingerprints { .. } => "Fingerprints",
            Request::Compare { .. } => "Compare",
            Request::Read { .. } => "Read",
            Request::Write { .. } => "Write",
            Request::WriteBatch { .. } => "WriteBatch",
            Request::Remove { .. } => "Remove",
            Request::Scrub { .. } => "Scrub",
            Request::PushRoute { .. } => "PushRoute",
            Request::Push { .. } => "Push",
        }
    }
}

impl Response {
    /// The name of the response's kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Response::Hello { .. } => "Hello",
            Response::RouteList(_) => "RouteList",
            Response::Records(_) => "Records",
            Response::Iterated(_) => "Iterated",
            Response::Fingerprints(_) => "Fingerprints",
            Response::Compared(_) => "Compared",
            Response::End { .. } => "End",
            Response::Value { .. } => "Value",
            Response::NoValue { .. } => "NoValue",
            Response::Written(_) => "Written",
            Response::BatchWritten(_) => "BatchWritten",
            Response::Removed(_) => "Removed",
            Response::Scrubbed(_) => "Scrubbed",
            Response::RouteAccepted { .. } => "RouteAccepted",
            Response::Pushed { .. } => "Pushed",
            Response::Error(_) => "Error",
        }
    }
}

/// Errors of framing and decoding.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A frame is larger than [`MAX_FRAME`].
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The length announced or encoded.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload is not a valid message.
    #[error("malformed frame: {0}")]
    Decode(String),
    /// The message could not be encoded.
    #[error("cannot encode frame: {0}")]
    Encode(String),
    /// The stream ended in the middle of a frame or a value.
    #[error("stream ended in the middle of a frame")]
    Truncated,
    /// The stream failed.
    #[error("stream failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `msg` as one frame: length prefix and payload.
pub fn encode_frame<T: Encode>(msg: &T) -> Result<Vec<u8>, WireError> {
    // Sized first (a walk that copies nothing), so a frame of megabytes of values is
    // written into one allocation instead of being copied at every doubling of its buffer.
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::encode_into_writer(msg, &mut size, bincode::config::standard())
        .map_err(|e| WireError::Encode(e.to_string()))?;
    if size.bytes_written > MAX_FRAME {
        return Err(WireError::FrameTooLarge {
            len: size.bytes_written,
            max: MAX_FRAME,
        });
    }
    let mut out = Vec::with_capacity(4 + size.bytes_written);
    out.extend_from_slice(&[0u8; 4]);
    bincode::encode_into_std_write(msg, &mut out, bincode::config::standard())
        .map_err(|e| WireError::Encode(e.to_string()))?;
    let len = out.len() - 4;
    if len > MAX_FRAME {
        return Err(WireError::FrameTooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    out[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Decodes one frame's payload (without its length prefix); trailing bytes are an error.
pub fn decode_payload<T: Decode<()>>(payload: &[u8]) -> Result<T, WireError> {
    decode_parts(&[payload])
}

/// [`decode_payload`] of a payload in parts.
fn decode_parts<T: Decode<()>>(parts: &[&[u8]]) -> Result<T, WireError> {
    let payload = Parts::new(parts);
    let len = payload.left;
    if len > MAX_FRAME {
        return Err(WireError::FrameTooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    // The limit is a constant of bincode's configuration: a few rungs of budget.
    let decoded = match len.saturating_mul(CLAIM_RATIO) {
        n if n <= 64 << 10 => decode_limited::<T, { 64 << 10 }>(payload),
        n if n <= 1 << 20 => decode_limited::<T, { 1 << 20 }>(payload),
        n if n <= 4 << 20 => decode_limited::<T, { 4 << 20 }>(payload),
        _ => decode_limited::<T, MAX_FRAME>(payload),
    };
    let (msg, left) = decoded.map_err(|e| WireError::Decode(e.to_string()))?;
    if left != 0 {
        return Err(WireError::Decode(format!(
            "{left} trailing bytes after the message"
        )));
    }
    Ok(msg)
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Encode>(
    w: &mut W,
    msg: &T,
) -> Result<(), WireError> {
    w.write_all(&encode_frame(msg)?).await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` when the stream ends cleanly before a frame starts.
pub async fn read_frame<R: AsyncRead + Unpin, T: Decode<()>>(
    r: &mut R,
) -> Result<Option<T>, WireError> {
    read_frame_limited(r, MAX_FRAME).await
}

/// The first part of a frame's payload read before more is allocated: the payload buffer
/// grows with the bytes that arrive (at most doubling), never with the length announced.
const FIRST_READ: usize = 64 << 10;

/// Reads one frame of at most `max` bytes (and at most [`MAX_FRAME`]); `Ok(None)` when the
/// stream ends cleanly before a frame starts.
///
/// Memory follows the bytes that actually arrive, not the length prefix: a peer that
/// announces a large frame and stalls (on as many streams as it may open) costs at most
/// [`FIRST_READ`] per stream, not the length it announced.
pub async fn read_frame_limited<R: AsyncRead + Unpin, T: Decode<()>>(
    r: &mut R,
    max: usize,
) -> Result<Option<T>, WireError> {
    let max = max.min(MAX_FRAME);
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(WireError::Truncated)
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(WireError::FrameTooLarge { len, max });
    }
    // In parts, each as large as all before it: memory at most twice what arrived, and no
    // part copied again (a growing buffer copies the payload once more in reallocations).
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let mut got = 0;
    while got < len {
        let step = (len - got).min(got.max(FIRST_READ));
        // Into the spare capacity: no zero-filling of a buffer about to be overwritten.
        let mut part = Vec::with_capacity(step);
        let mut from = (&mut *r).take(step as u64);
        while part.len() < step {
            if from.read_buf(&mut part).await? == 0 {
                return Err(WireError::Truncated);
            }
        }
        got += step;
        parts.push(part);
    }
    let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    decode_parts(&parts).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let req = Request::Lookup {
            ids: vec![Id::from_key(b"a"), Id::from_key(b"b")],
        };
        let frame = encode_frame(&req).unwrap();
        let back: Request = decode_payload(&frame[4..]).unwrap();
        assert_eq!(back, req);
    }

    fn batch(n: usize, size: usize) -> Vec<BatchItem> {
        (0..n)
            .map(|i| {
                let value: Vec<u8> = (0..size + i % 3).map(|b| (b * 7 + i) as u8).collect();
                BatchItem {
                    id: Id::from_key(format!("k{i}").as_bytes()),
                    version: Version::of_value(&value, i as u64 + 1, 0),
                    value,
                }
            })
            .collect()
    }

    /// A batch written in place is byte for byte the encoded request, around the item
    /// counts where the count's varint grows, with items refused along the way.
    #[test]
    fn batch_frames_are_the_encoded_request() {
        for (n, size) in [
            (0, 0),
            (1, 0),
            (3, 100),
            (250, 10),
            (251, 10),
            (300, 3),
            (5, 70_000),
        ] {
            let items = batch(n, size);
            let mut frame = BatchFrame::with_capacity(0);
            for (i, item) in items.iter().enumerate() {
                // A refused item (every fourth) leaves nothing behind.
                let refused = frame
                    .push(
                        &item.id,
                        &item.version,
                        item.value.len() as u64,
                        |buf, _| {
                            buf.extend_from_slice(&item.value);
                            Ok::<_, WireError>(i % 4 != 3)
                        },
                    )
                    .unwrap();
                assert_eq!(refused, i % 4 != 3);
            }
            let kept: Vec<BatchItem> = items
                .into_iter()
                .enumerate()
                .filter(|(i, _)| i % 4 != 3)
                .map(|(_, item)| item)
                .collect();
            assert_eq!(frame.len(), kept.len());
            let expected = encode_frame(&Request::WriteBatch { items: kept }).unwrap();
            assert_eq!(
                frame.finish().unwrap().as_ref(),
                expected.as_slice(),
                "{n} items"
            );
        }
    }

    #[test]
    fn batch_items_of_the_wrong_length_leave_nothing_behind() {
        let items = batch(2, 10);
        let mut frame = BatchFrame::with_capacity(0);
        let short = frame.push(&items[0].id, &items[0].version, 10, |buf, _| {
            buf.extend_from_slice(&items[0].value[..5]);
            Ok::<_, WireError>(true)
        });
        assert!(matches!(short, Err(WireError::Encode(_))), "{short:?}");
        frame
            .push(&items[1].id, &items[1].version, 11, |buf, _| {
                buf.extend_from_slice(&items[1].value);
                Ok::<_, WireError>(true)
            })
            .unwrap();
        let expected = encode_frame(&Request::WriteBatch {
            items: vec![items[1].clone()],
        });
        assert_eq!(
            frame.finish().unwrap().as_ref(),
            expected.unwrap().as_slice()
        );
    }

    /// A payload decodes the same whichever parts it arrived in, values cut across parts
    /// included; a payload cut short, or with bytes over, is refused in parts as whole.
    #[test]
    fn payloads_in_parts_decode_as_whole() {
        let req = Request::WriteBatch {
            items: batch(6, 300),
        };
        let frame = encode_frame(&req).unwrap();
        let payload = &frame[4..];
        for cut in (0..payload.len())
            .step_by(37)
            .chain([1, 2, payload.len() - 1])
        {
            let (a, b) = payload.split_at(cut);
            let back: Request = decode_parts(&[a, &[], b]).unwrap();
            assert_eq!(back, req, "cut at {cut}");
            let three: Vec<&[u8]> = payload.chunks(cut.max(1)).collect();
            assert_eq!(
                decode_parts::<Request>(&three).unwrap(),
                req,
                "chunks of {cut}"
            );
        }
        let (a, b) = payload.split_at(100);
        assert!(decode_parts::<Request>(&[a, &b[..b.len() - 1]]).is_err());
        assert!(decode_parts::<Request>(&[a, b, &[0]]).is_err());
    }

    #[tokio::test]
    async fn frames_arriving_in_pieces_decode() {
        let req = Request::WriteBatch {
            items: batch(40, 9_000),
        };
        let frame = encode_frame(&req).unwrap();
        assert!(
            frame.len() > 4 * FIRST_READ,
            "the payload spans several parts"
        );
        let mut r: &[u8] = &frame;
        let back: Option<Request> = read_frame(&mut r).await.unwrap();
        assert_eq!(back, Some(req));
    }

    #[test]
    fn oversized_frames_are_refused_on_encode() {
        let req = Request::WriteBatch {
            items: vec![BatchItem {
                id: Id::MIN,
                version: Version::tombstone(1),
                value: vec![7; MAX_FRAME + 1],
            }],
        };
        assert!(matches!(
            encode_frame(&req),
            Err(WireError::FrameTooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn oversized_length_prefix_is_refused_before_allocating() {
        let mut bytes: &[u8] = &u32::MAX.to_be_bytes();
        let got = read_frame::<_, Request>(&mut bytes).await;
        assert!(
            matches!(got, Err(WireError::FrameTooLarge { .. })),
            "{got:?}"
        );
    }

    #[test]
    fn garbage_and_trailing_bytes_are_refused() {
        assert!(decode_payload::<Request>(&[0xff, 0xff, 0xff]).is_err());
        let mut frame = encode_frame(&Request::RouteList).unwrap();
        frame.push(0);
        assert!(decode_payload::<Request>(&frame[4..]).is_err());
    }

    /// Honest messages that claim the most container bytes per encoded byte (one-byte
    /// elements of large types, empty inner lists) decode within the claim budget of
    /// their size, from one element up to the protocol's bounds.
    #[test]
    fn honest_messages_fit_the_claim_budget() {
        let round_trip = |r: Response| {
            let frame = encode_frame(&r).unwrap();
            let back: Response = decode_payload(&frame[4..])
                .unwrap_or_else(|e| panic!("{} of {} bytes: {e}", r.kind(), frame.len() - 4));
            assert_eq!(back, r);
        };
        for n in [1, 2, 7, 100, 1000, MAX_LOOKUP] {
            round_trip(Response::Records(vec![None; n]));
            round_trip(Response::BatchWritten(vec![PutOutcome::Written; n]));
            round_trip(Response::Pushed {
                outcomes: vec![PushOutcome::SourceChanged; n.min(MAX_PUSH_ITEMS)],
                bytes: 0,
            });
        }
        for n in [1, 3, 100, COMPARE_BUDGET] {
            round_trip(Response::Compared(vec![
                CompareAnswer::Records(Vec::new());
                n
            ]));
            round_trip(Response::Compared(vec![
                CompareAnswer::Hashes(
                    crate::reconcile::ItemHashes::Short(Vec::new())
                );
                n
            ]));
        }
        let empty = crate::route::NodeEntry {
            id: String::new(),
            group: 1,
            addr: String::new(),
            data_dir: Default::default(),
            partitions: Vec::new(),
        };
        for n in [1, 50, 1000] {
            round_trip(Response::RouteList(RouteList {
                name: String::new(),
                epoch: 1,
                nodes: vec![empty.clone(); n],
            }));
        }
    }

    #[test]
    fn a_small_frame_cannot_claim_a_large_container() {
        // A write batch of one item whose value claims 1 MiB, in a frame of 120 bytes:
        // refused on the claim, before a byte is allocated for it.
        let mut payload = encode_frame(&Request::WriteBatch {
            items: vec![BatchItem {
                id: Id::MIN,
                version: Version::tombstone(1),
                value: vec![],
            }],
        })
        .unwrap()[4..]
            .to_vec();
        assert_eq!(payload.pop(), Some(0));
        payload.push(252);
        payload.extend_from_slice(&(1u32 << 20).to_le_bytes());
        match decode_payload::<Request>(&payload) {
            Err(WireError::Decode(e)) => assert!(e.contains("LimitExceeded"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_stalled_frame_is_read_as_it_arrives() {
        // The largest frame announced, 3 bytes sent: truncated, not allocated up front
        // (tests/alloc_limits.rs measures the allocation).
        let mut bytes = (MAX_FRAME as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&[1, 2, 3]);
        let got = read_frame::<_, Request>(&mut bytes.as_slice()).await;
        assert!(matches!(got, Err(WireError::Truncated)), "{got:?}");
        // A frame over a smaller limit is refused on its length.
        let frame = encode_frame(&Request::Lookup {
            ids: vec![Id::MIN; 20],
        })
        .unwrap();
        let got = read_frame_limited::<_, Request>(&mut frame.as_slice(), 1024).await;
        assert!(
            matches!(got, Err(WireError::FrameTooLarge { max: 1024, .. })),
            "{got:?}"
        );
        let got = read_frame_limited::<_, Request>(&mut frame.as_slice(), 4096).await;
        assert!(matches!(got, Ok(Some(Request::Lookup { .. }))), "{got:?}");
    }

    #[test]
    fn a_huge_vec_length_inside_a_small_frame_is_refused() {
        // Variant Lookup followed by a varint length of 2^60 ids: the limit stops it.
        let mut payload = vec![2u8, 0xff];
        payload.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode_payload::<Request>(&payload).is_err());
    }
}
