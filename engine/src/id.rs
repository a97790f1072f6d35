//! Object ids: 512-bit BLAKE3 XOF of the key, printed as 128 lowercase hex chars
//! (Elliptics' id size, so its dump files are valid input).

use std::fmt;
use std::str::FromStr;

use bincode::{Decode, Encode};

/// Bytes in an id.
pub const ID_LEN: usize = 64;

/// Number of partitions: the top 16 bits of an id.
pub const PARTITIONS: u32 = 1 << 16;

/// A 512-bit object id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct Id(pub [u8; ID_LEN]);

impl Id {
    /// The smallest id.
    pub const MIN: Id = Id([0; ID_LEN]);
    /// The largest id.
    pub const MAX: Id = Id([0xff; ID_LEN]);

    /// The id of a user key: BLAKE3 in XOF mode, 64 bytes.
    pub fn from_key(key: &[u8]) -> Id {
        let mut out = [0u8; ID_LEN];
        blake3::Hasher::new()
            .update(key)
            .finalize_xof()
            .fill(&mut out);
        Id(out)
    }

    /// The partition this id falls in (its top 16 bits).
    pub fn partition(&self) -> u16 {
        u16::from_be_bytes([self.0[0], self.0[1]])
    }

    /// The first id of a partition.
    pub fn partition_start(partition: u16) -> Id {
        let mut id = Id::MIN;
        id.0[..2].copy_from_slice(&partition.to_be_bytes());
        id
    }

    /// The id as 128 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The id right after this one, or `None` for [`Id::MAX`].
    pub fn successor(&self) -> Option<Id> {
        let mut next = *self;
        for byte in next.0.iter_mut().rev() {
            if *byte == 0xff {
                *byte = 0;
            } else {
                *byte += 1;
                return Some(next);
            }
        }
        None
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Sixteen hex chars are enough to tell ids apart in logs and test failures.
        write!(f, "Id({}…)", &self.to_hex()[..16])
    }
}

/// Why a string is not an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseIdError {
    /// The string is not 128 characters long.
    #[error("an id is 128 hex characters, this one has {0}")]
    Length(usize),
    /// A character is not a hex digit.
    #[error("an id is made of hex digits, found {0:?}")]
    NotHex(char),
}

impl FromStr for Id {
    type Err = ParseIdError;

    /// Parses 128 hex characters, upper or lower case.
    fn from_str(s: &str) -> Result<Id, ParseIdError> {
        if s.len() != ID_LEN * 2 {
            return Err(ParseIdError::Length(s.chars().count()));
        }
        if let Some(bad) = s.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(ParseIdError::NotHex(bad));
        }
        let mut out = [0u8; ID_LEN];
        hex::decode_to_slice(s, &mut out).map_err(|_| ParseIdError::Length(s.len()))?;
        Ok(Id(out))
    }
}

/// A half-open range of ids `[start, end)`; `end == None` means up to and including
/// [`Id::MAX`].
///
/// On the wire a bound whose low 56 bytes are zero (every partition bound and every part
/// [`split_range`] makes) travels as its top 64 bits: 9 bytes instead of 64.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct IdRange {
    /// First id in the range.
    pub start: Id,
    /// First id past the range, or `None` for "to the end of the id space".
    pub end: Option<Id>,
}

/// One bound of an [`IdRange`] on the wire: compact when it sits on a 64-bit prefix.
#[derive(Encode, Decode)]
enum WireBound {
    Prefix(u64),
    Full(Id),
}

impl WireBound {
    fn of(id: &Id) -> WireBound {
        if id.0[8..].iter().all(|b| *b == 0) {
            WireBound::Prefix(u64::from_be_bytes(id.0[..8].try_into().expect("8 bytes")))
        } else {
            WireBound::Full(*id)
        }
    }

    fn id(self) -> Id {
        match self {
            WireBound::Full(id) => id,
            WireBound::Prefix(p) => {
                let mut id = Id::MIN;
                id.0[..8].copy_from_slice(&p.to_be_bytes());
                id
            }
        }
    }
}

impl Encode for IdRange {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        e: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        WireBound::of(&self.start).encode(e)?;
        self.end.as_ref().map(WireBound::of).encode(e)
    }
}

impl<C> Decode<C> for IdRange {
    fn decode<D: bincode::de::Decoder<Context = C>>(
        d: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        let start = WireBound::decode(d)?.id();
        let end = Option::<WireBound>::decode(d)?.map(WireBound::id);
        Ok(IdRange { start, end })
    }
}

impl<'de, C> bincode::BorrowDecode<'de, C> for IdRange {
    fn borrow_decode<D: bincode::de::BorrowDecoder<'de, Context = C>>(
        d: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        Decode::decode(d)
    }
}

impl IdRange {
    /// The whole id space.
    pub const ALL: IdRange = IdRange {
        start: Id::MIN,
        end: None,
    };

    /// The ids of partitions `first..=last`.
    pub fn partitions(first: u16, last: u16) -> IdRange {
        IdRange {
            start: Id::partition_start(first),
            end: last.checked_add(1).map(Id::partition_start),
        }
    }

    /// Whether `id` lies in the range.
    pub fn contains(&self, id: &Id) -> bool {
        *id >= self.start && self.end.is_none_or(|end| *id < end)
    }

    /// Whether the range holds no id.
    pub fn is_empty(&self) -> bool {
        self.end.is_some_and(|end| end <= self.start)
    }

    /// How much of the id space the range spans, in units of the top 64 bits (the whole
    /// space is 2^64; a range inside one 64-bit prefix spans 0).
    pub fn width(&self) -> u128 {
        let end = self.end.map_or(1u128 << 64, |e| prefix(&e));
        end.saturating_sub(prefix(&self.start))
    }
}

/// An id range as the bounds of a `BTreeMap` range of ids.
impl std::ops::RangeBounds<Id> for IdRange {
    fn start_bound(&self) -> std::ops::Bound<&Id> {
        std::ops::Bound::Included(&self.start)
    }

    fn end_bound(&self) -> std::ops::Bound<&Id> {
        self.end
            .as_ref()
            .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded)
    }
}

/// The top 64 bits of an id, as a position in the id space.
fn prefix(id: &Id) -> u128 {
    u128::from(u64::from_be_bytes(id.0[..8].try_into().expect("8 bytes")))
}

/// The first id whose top 64 bits are `p` (`None` past the end of the space).
fn at_prefix(p: u128) -> Option<Id> {
    let p = u64::try_from(p).ok()?;
    let mut id = Id::MIN;
    id.0[..8].copy_from_slice(&p.to_be_bytes());
    Some(id)
}

/// Cuts `range` into `n` consecutive parts of near-equal width (at the resolution of the
/// top 64 bits of the id; parts narrower than that are empty). The parts cover exactly
/// `range`; there are always `n` of them.
pub fn split_range(range: &IdRange, n: u16) -> Vec<IdRange> {
    let n = u128::from(n.max(1));
    let lo = prefix(&range.start);
    let hi = range.end.map_or(1u128 << 64, |e| prefix(&e));
    let width = hi.saturating_sub(lo);
    let mut parts = Vec::with_capacity(n as usize);
    let mut start = range.start;
    for i in 1..=n {
        let end = if i == n {
            range.end
        } else {
            at_prefix(lo + width * i / n).map(|cut| cut.max(start))
        };
        let end = match (end, range.end) {
            (Some(e), Some(limit)) => Some(e.min(limit)),
            (e, _) => e,
        };
        parts.push(IdRange { start, end });
        if let Some(e) = end {
            start = e;
        }
    }
    parts
}

/// The whole partitions inside `range`, and the partial ranges at its edges; `None` if no
/// partition lies wholly inside.
pub fn whole_partitions(range: &IdRange) -> Option<(u16, u16, Vec<IdRange>)> {
    let first = if range.start == Id::partition_start(range.start.partition()) {
        u32::from(range.start.partition())
    } else {
        u32::from(range.start.partition()) + 1
    };
    // One past the last whole partition.
    let end = match range.end {
        None => PARTITIONS,
        Some(e) => u32::from(e.partition()),
    };
    if first >= end {
        return None;
    }
    let (first16, last16) = (u16::try_from(first).ok()?, u16::try_from(end - 1).ok()?);
    let mut edges = Vec::new();
    let head = IdRange {
        start: range.start,
        end: Some(Id::partition_start(first16)),
    };
    if !head.is_empty() {
        edges.push(head);
    }
    if let Some(e) = range.end {
        let tail = IdRange {
            start: Id::partition_start(e.partition()),
            end: Some(e),
        };
        if !tail.is_empty() {
            edges.push(tail);
        }
    }
    Some((first16, last16, edges))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_in_either_case() {
        let id = Id::from_key(b"hello");
        assert_eq!(id.to_hex().parse::<Id>().unwrap(), id);
        assert_eq!(id.to_hex().to_uppercase().parse::<Id>().unwrap(), id);
    }

    #[test]
    fn malformed_ids_are_refused_with_a_reason() {
        assert_eq!("abc".parse::<Id>(), Err(ParseIdError::Length(3)));
        let bad = format!("{}g", "0".repeat(127));
        assert_eq!(bad.parse::<Id>(), Err(ParseIdError::NotHex('g')));
    }

    #[test]
    fn partition_ranges_cover_their_partitions_only() {
        let r = IdRange::partitions(5, 6);
        assert!(r.contains(&Id::partition_start(5)));
        assert!(r.contains(&Id::partition_start(7).0.into_pred()));
        assert!(!r.contains(&Id::partition_start(7)));
        assert!(!r.contains(&Id::partition_start(4)));
        assert!(IdRange::partitions(0, u16::MAX).contains(&Id::MAX));
    }

    trait Pred {
        fn into_pred(self) -> Id;
    }
    impl Pred for [u8; ID_LEN] {
        fn into_pred(self) -> Id {
            let mut v = self;
            for b in v.iter_mut().rev() {
                if *b == 0 {
                    *b = 0xff;
                } else {
                    *b -= 1;
                    break;
                }
            }
            Id(v)
        }
    }

    #[test]
    fn split_range_covers_the_range_in_order() {
        for range in [
            IdRange::ALL,
            IdRange::partitions(3, 9),
            IdRange::partitions(7, 7),
        ] {
            let parts = split_range(&range, 16);
            assert_eq!(parts.len(), 16);
            assert_eq!(parts[0].start, range.start);
            assert_eq!(parts[15].end, range.end);
            for w in parts.windows(2) {
                assert_eq!(w[0].end, Some(w[1].start));
            }
            let id = Id::from_key(b"k");
            if range.contains(&id) {
                assert_eq!(parts.iter().filter(|p| p.contains(&id)).count(), 1);
            }
        }
    }

    #[test]
    fn whole_partitions_and_edges() {
        let (a, b, edges) = whole_partitions(&IdRange::partitions(3, 9)).unwrap();
        assert_eq!((a, b, edges.len()), (3, 9, 0));
        let mut start = Id::partition_start(3);
        start.0[5] = 1;
        let mut end = Id::partition_start(9);
        end.0[9] = 1;
        let (a, b, edges) = whole_partitions(&IdRange {
            start,
            end: Some(end),
        })
        .unwrap();
        assert_eq!((a, b, edges.len()), (4, 8, 2));
        assert!(whole_partitions(&IdRange {
            start,
            end: Some(Id::partition_start(4))
        })
        .is_none());
    }

    #[test]
    fn ranges_round_trip_on_the_wire_and_aligned_ones_are_small() {
        let cfg = bincode::config::standard();
        let mut odd = Id::from_key(b"x");
        odd.0[63] |= 1;
        for r in [
            IdRange::ALL,
            IdRange::partitions(3, 9),
            IdRange {
                start: odd,
                end: Some(Id::MAX),
            },
        ] {
            let bytes = bincode::encode_to_vec(r, cfg).unwrap();
            let (back, _): (IdRange, usize) = bincode::decode_from_slice(&bytes, cfg).unwrap();
            assert_eq!(back, r);
        }
        let aligned = bincode::encode_to_vec(IdRange::partitions(3, 9), cfg).unwrap();
        // Two prefix bounds instead of two 64-byte ids (about 130 bytes).
        assert!(aligned.len() < 32, "{} bytes", aligned.len());
    }

    #[test]
    fn successor_carries() {
        let mut id = Id::MIN;
        id.0[63] = 0xff;
        let next = id.successor().unwrap();
        assert_eq!(next.0[62], 1);
        assert_eq!(next.0[63], 0);
        assert_eq!(Id::MAX.successor(), None);
    }
}
